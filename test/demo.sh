#!/usr/bin/env bash
# test/demo.sh: the main job, end to end, on a fresh Debian 12 machine.
# Installs what it needs, builds and installs event_bridge, starts a
# throw-away PostgreSQL with the extension and a local function endpoint
# (test/receiver.py), creates a stream and a connector, makes changes, and
# shows the records, the events the function received and the status views;
# then dead letters, json events with a filter, a Kafka topic (librdkafka's
# mock cluster, read with kcat) and what an admin may see.  Everything is
# removed at the end.
#
#   bash test/demo.sh

source "$(dirname "$0")/setup.sh"
eb_need_root
eb_install_packages kcat
eb_ensure_user
eb_build_install

PORT=${PORT:-55433}
DIR=$(mktemp -d /tmp/event_bridge-demo.XXXXXX)
chown "$EB_USER" "$DIR"
# On success, failure or Ctrl-C: stop both endpoints (their whole process
# groups) and the server, and remove the directory.
cleanup() {
    eb_stop_group "$DIR/receiver.pid"
    eb_stop_group "$DIR/strict.pid"
    eb_stop_group "$DIR/kafka.pid"
    [ -f "$DIR/data/postmaster.pid" ] && eb_as_user pg_ctl -D "$DIR/data" -m fast stop >/dev/null 2>&1
    rm -rf "$DIR"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "== starting a throw-away PostgreSQL 15 in $DIR"
eb_as_user initdb -D "$DIR/data" -A trust -U postgres >/dev/null
cat >> "$DIR/data/postgresql.conf" <<CONF
# event_bridge needs these three lines:
shared_preload_libraries = 'event_bridge'
wal_level = logical
output_plugin_libraries = 'pgoutput, test_decoding, event_bridge'

port = $PORT
unix_socket_directories = '$DIR'
listen_addresses = ''
CONF
eb_as_user pg_ctl -D "$DIR/data" -l "$DIR/server.log" -w start >/dev/null

# The function endpoint verifies Standard Webhooks signatures with this secret.
HOOK_SECRET="whsec_$(head -c 32 /dev/urandom | base64 -w0)"
echo "== starting a local function endpoint (test/receiver.py), which checks signatures"
eb_spawn_as_user "$DIR/receiver.pid" python3 "$EB_ROOT/test/receiver.py" --port 0 \
    --port-file "$DIR/receiver.port" --log "$DIR/received.jsonl" --print --keep-body \
    --webhook-secret "$HOOK_SECRET" > "$DIR/received.txt" 2>&1
for _ in $(seq 100); do [ -s "$DIR/receiver.port" ] && break; sleep 0.1; done
ENDPOINT="http://127.0.0.1:$(cat "$DIR/receiver.port")/invoke"

PSQL="psql -X -h $DIR -p $PORT -U postgres -d postgres -v ON_ERROR_STOP=1"
run() { echo; echo "postgres=# $1"; $PSQL -c "$1"; }
# Waits (up to 30 s) until a connector has nothing pending (and $2 holds).
wait_delivered() {
    for _ in $(seq 300); do
        [ "$($PSQL -At -c "SELECT pending = 0 ${2:-} FROM event_bridge.connector_status
                            WHERE connector_name = '$1'")" = t ] && return
        sleep 0.1
    done
}

run "CREATE EXTENSION event_bridge"
run "CREATE TABLE orders (id int PRIMARY KEY, customer text, amount numeric(10,2));
ALTER TABLE orders REPLICA IDENTITY FULL"
run "SELECT event_bridge.create_stream('orders', ARRAY['orders']::regclass[], shard_count => 2)"
run "SELECT event_bridge.create_credential('orders_hook', 'webhook', '{\"secret\": \"$HOOK_SECRET\"}')"
run "SELECT event_bridge.create_connector('orders_fc', 'orders', '$ENDPOINT', credential => 'orders_hook')"
run "INSERT INTO orders VALUES (1, 'alice', 10.50), (2, 'bob', 20.00), (3, 'carol', 30.00)"
run "UPDATE orders SET amount = 12.00 WHERE id = 1"
run "DELETE FROM orders WHERE id = 2"

# Wait until the connector has delivered everything.
wait_delivered orders_fc "AND delivered = 6"

run "SELECT event_id, operation, data FROM event_bridge.get_records('orders', 0, 0)
UNION ALL
SELECT event_id, operation, data FROM event_bridge.get_records('orders', 1, 0)"
echo
echo "== the function received (each request's webhook-id, then eventId, operation, table, image, columns):"
grep -v '^receiver:' "$DIR/received.txt"
echo
echo "== the first request body, as the function got it:"
python3 -c 'import json, sys; print(json.dumps(json.loads(json.loads(open(sys.argv[1]).readline())["body"]), indent=1))' "$DIR/received.jsonl"
run "SELECT * FROM event_bridge.stream_status"
run "SELECT connector_name, stream_name, endpoint, state, delivered, pending, lag_ms, last_event_id,
       failures, last_error, last_http_status, target, credential
  FROM event_bridge.connector_status"
run "SELECT * FROM event_bridge.credentials"
run "SELECT connector_name, shard_id, state, delivered_sequence, next_sequence, pending, failures, last_error
  FROM event_bridge.shard_status ORDER BY shard_id"

echo
echo "== a function that refuses one record (400): with on_failure => 'dead_letter' the batch"
echo "   is bisected, that record is set aside, and every other record is delivered"
eb_spawn_as_user "$DIR/strict.pid" python3 "$EB_ROOT/test/receiver.py" --port 0 \
    --port-file "$DIR/strict.port" --log "$DIR/strict.jsonl" --poison mallory --keep-body \
    > "$DIR/strict.txt" 2>&1
for _ in $(seq 100); do [ -s "$DIR/strict.port" ] && break; sleep 0.1; done
run "SELECT event_bridge.create_connector('orders_strict', 'orders',
       'http://127.0.0.1:$(cat "$DIR/strict.port")/strict', on_failure => 'dead_letter')"
run "INSERT INTO orders SELECT g, CASE WHEN g = 15 THEN 'mallory' ELSE 'dave' END, g FROM generate_series(10, 29) g"
wait_delivered orders_strict
run "SELECT connector_name, state, delivered, pending, dead_letters FROM event_bridge.connector_status"
run "SELECT event_id, operation, data, attempts, http_status, error FROM event_bridge.dead_letters"

echo
echo "== events with named columns (format json), and a filter in EventGrid's syntax:"
echo "   only orders over 25 are sent, the others are counted as filtered"
run "SELECT event_bridge.create_connector('orders_big', 'orders',
       'http://127.0.0.1:$(cat "$DIR/strict.port")/big', start_time => NULL, format => 'json',
       filter => '{\"after\": {\"amount\": [{\"op\": \"NumberGreaterThan\", \"value\": 25}]}}')"
wait_delivered orders_big
echo
echo "== the function received these requests (one per shard):"
python3 -c '
import json, sys
for line in open(sys.argv[1]):
    e = json.loads(line)
    if e["path"] == "/big" and e["status"] == 200:
        print(e["body"])' "$DIR/strict.jsonl"
run "SELECT connector_name, format, filter, delivered, filtered, pending FROM event_bridge.connector_status
 WHERE connector_name = 'orders_big'"

echo
echo "== a Kafka topic: one message per event, keyed by the row's key, with the eventId"
echo "   in the headers (the brokers: librdkafka's mock cluster, test/kafka/mock_cluster.c)"
cc -O2 -Wall -o "$DIR/mock_cluster" "$EB_ROOT/test/kafka/mock_cluster.c" -lrdkafka
# It reads commands on standard input and stops at its end: keep one open.
eb_spawn_as_user "$DIR/kafka.pid" bash -c "sleep 3600 | exec '$DIR/mock_cluster' --brokers 3 \
    --topic orders --partitions 4 --bootstrap-file '$DIR/kafka.bootstrap'" > "$DIR/kafka.txt" 2>&1
for _ in $(seq 100); do [ -s "$DIR/kafka.bootstrap" ] && break; sleep 0.1; done
BROKERS=$(cat "$DIR/kafka.bootstrap")
run "SELECT event_bridge.create_connector('orders_kafka', 'orders', 'kafka://$BROKERS/orders',
       target => 'kafka', format => 'json', start_time => NULL,
       filter => '{\"after\": {\"id\": [{\"op\": \"NumberLessThan\", \"value\": 12}]}}')"
wait_delivered orders_kafka
echo
echo "\$ kcat -C -b $BROKERS -t orders -e -q -f 'partition %p, key %k, headers %h\\n%s\\n'"
kcat -C -b "$BROKERS" -t orders -e -q -f 'partition %p, key %k, headers %h\n%s\n'
run "SELECT connector_name, target, endpoint, state, delivered, filtered, pending, last_event_id
  FROM event_bridge.connector_status WHERE connector_name = 'orders_kafka'"

echo
echo "== an event_bridge admin who may not SELECT orders: sees the status, not the rows"
run "CREATE ROLE ops LOGIN IN ROLE event_bridge_admin"
as_ops() { echo; echo "ops=> $1"; psql -X -h "$DIR" -p "$PORT" -U ops -d postgres -c "$1" 2>&1 || true; }
as_ops "SELECT connector_name, state, delivered FROM event_bridge.connector_status"
as_ops "SELECT * FROM event_bridge.get_records('orders', 0, 0)"
as_ops "SELECT count(*) AS dead_letters_ops_may_see FROM event_bridge.dead_letters"
as_ops "SELECT secret FROM event_bridge.credential_secrets"
echo
echo "== a captured table must stay logged"
run "ALTER TABLE orders SET UNLOGGED" || true
