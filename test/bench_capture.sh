#!/usr/bin/env bash
# test/bench_capture.sh: capture rate of event_bridge beside pg_recvlogical
# with test_decoding (to /dev/null) and the in-process ceiling (one
# pg_logical_slot_get_binary_changes call on a test_decoding slot), all over
# the same WAL in one throw-away cluster.
#
#   sudo bash test/bench_capture.sh [rows] [rows_per_transaction] [shards]
#
# The workload is written first while event_bridge's worker is held back by
# a lock on its records table, so each reader then decodes the same WAL
# from the same start; each figure is changes per second.

source "$(dirname "$0")/setup.sh"
eb_need_root
eb_install_packages
eb_ensure_user
eb_build_install

ROWS=${1:-1000000}
PER_TX=${2:-1000}
SHARDS=${3:-4}
PORT=${PORT:-55432}
DIR=$(mktemp -d /tmp/event_bridge-bench.XXXXXX)
chown "$EB_USER" "$DIR"
trap 'eb_as_user pg_ctl -D "$DIR/data" -m immediate stop >/dev/null 2>&1; rm -rf "$DIR"' EXIT

eb_as_user initdb -D "$DIR/data" -A trust -U postgres >/dev/null
cat "$EB_ROOT/test/regress.conf" >> "$DIR/data/postgresql.conf"
cat >> "$DIR/data/postgresql.conf" <<CONF
port = $PORT
unix_socket_directories = '$DIR'
listen_addresses = ''
shared_buffers = '512MB'
max_wal_size = '8GB'
checkpoint_timeout = '30min'
CONF
eb_as_user pg_ctl -D "$DIR/data" -l "$DIR/log" -w start >/dev/null
PSQL="psql -X -q -A -t -h $DIR -p $PORT -U postgres -d postgres"

$PSQL <<SQL
CREATE EXTENSION event_bridge;
CREATE TABLE bench (id int PRIMARY KEY, customer text, amount numeric(10,2), created timestamptz DEFAULT now());
ALTER TABLE bench REPLICA IDENTITY FULL;
SELECT event_bridge.create_stream('bench', ARRAY['bench']::regclass[], shard_count => $SHARDS);
SELECT 'slot' FROM pg_create_logical_replication_slot('td_recv', 'test_decoding');
SELECT 'slot' FROM pg_create_logical_replication_slot('td_sql', 'test_decoding');
SQL

# Hold event_bridge back while the workload writes its WAL.
$PSQL -c "BEGIN; LOCK event_bridge.records IN SHARE MODE; SELECT pg_sleep(100000);" >/dev/null 2>&1 &
until [ "$($PSQL -c "SELECT count(*) FROM pg_locks WHERE relation = 'event_bridge.records'::regclass AND mode = 'ShareLock' AND granted")" = 1 ]; do
    sleep 0.1
done

echo "== writing $ROWS rows in transactions of $PER_TX"
$PSQL -c "
DO \$\$
BEGIN
  FOR i IN 0 .. ($ROWS / $PER_TX) - 1 LOOP
    INSERT INTO bench (id, customer, amount)
      SELECT g, 'customer ' || (g % 1000), (g % 10000) / 100.0
        FROM generate_series(i * $PER_TX + 1, (i + 1) * $PER_TX) g;
    COMMIT;
  END LOOP;
END
\$\$;"
END_LSN=$($PSQL -c "SELECT pg_current_wal_lsn()")
WAL_MB=$($PSQL -c "SELECT round((pg_current_wal_lsn() - restart_lsn) / 1048576.0) FROM pg_replication_slots WHERE slot_name = 'td_recv'")
echo "   WAL to decode: ${WAL_MB} MB"

now() { date +%s.%N; }
rate() { awk -v n="$ROWS" -v a="$1" -v b="$2" 'BEGIN { printf "%.0f", n / (b - a) }'; }

t0=$(now)
eb_as_user pg_recvlogical -h "$DIR" -p "$PORT" -U postgres -d postgres -S td_recv --start \
    --endpos="$END_LSN" -f /dev/null --no-loop
t1=$(now)
RECV=$(rate "$t0" "$t1")

t0=$(now)
$PSQL -c "SELECT count(*) FROM pg_logical_slot_get_binary_changes('td_sql', '$END_LSN', NULL)" >/dev/null
t1=$(now)
CEIL=$(rate "$t0" "$t1")

t0=$(now)
$PSQL -c "SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE query LIKE '%LOCK event_bridge.records%' AND pid <> pg_backend_pid()" >/dev/null
until [ "$($PSQL -c "SELECT confirmed_flush_lsn >= '$END_LSN' FROM pg_replication_slots WHERE slot_name LIKE 'event_bridge_%'")" = t ]; do
    sleep 0.05
done
t1=$(now)
EB=$(rate "$t0" "$t1")
STORED=$($PSQL -c "SELECT records FROM event_bridge.stream_status")
[ "$STORED" = "$ROWS" ] || { echo "event_bridge stored $STORED records, expected $ROWS" >&2; exit 1; }

echo
printf "%-52s %12s %8s\n" "reader (same WAL, $ROWS rows, $PER_TX per tx)" "changes/s" "ratio"
printf "%-52s %12s %8s\n" "pg_recvlogical + test_decoding -> /dev/null" "$RECV" "1.00"
printf "%-52s %12s %8s\n" "pg_logical_slot_get_binary_changes (in-process)" "$CEIL" \
    "$(awk -v a="$CEIL" -v b="$RECV" 'BEGIN { printf "%.2f", a / b }')"
printf "%-52s %12s %8s\n" "event_bridge capture ($SHARDS shards, stored)" "$EB" \
    "$(awk -v a="$EB" -v b="$RECV" 'BEGIN { printf "%.2f", a / b }')"
