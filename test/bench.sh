#!/usr/bin/env bash
# test/bench.sh: event_bridge side by side with the alternatives, on one
# machine in one run, printed as a table whose ratios compare each figure
# with a baseline measured in the same run.
#
#   bash test/bench.sh [--quick] [--only SECTION[,SECTION...]]
#
# Builds and installs event_bridge, builds a fast C endpoint
# (test/bench/receiver.c) and the drain loop of the trigger baseline
# (test/bench/trigger_drain.c), and runs everything on loopback in two
# throw-away clusters under /tmp/event_bridge-bench.*:
#
#  1. ceilings: pg_recvlogical to /dev/null with test_decoding and with
#     wal2json format-version 2; the endpoint's own request rate (wrk);
#  2. capture rate on three workloads (1,000-row transactions, single-row
#     transactions, mixed INSERT/UPDATE/DELETE), each reader decoding the
#     same WAL (event_bridge is held back by a lock while the workload writes);
#     and with a capture filter keeping 10 % beside none;
#  3. delivered events/s for batch_size 1, 100, 1,000 with 1 and 4 shards, to
#     the endpoint and to the endpoint answering after 20 ms; and the whole
#     pipeline (WAL -> capture -> delivery -> endpoint) at batch_size 100;
#     signed targets, the json and cloudevents formats, a transform and a
#     filter, each beside datahub; Kafka (librdkafka's mock cluster) beside
#     HTTP;
#  4. commit -> receipt latency under pgbench -R (open loop) at 1,000 and
#     5,000 single-row transactions/s, and to a Kafka consumer at 1,000/s;
#  5. write-path cost: pgbench TPS (TPC-B and a single-row INSERT) with
#     wal_level = replica, logical, + pg_recvlogical, + event_bridge stream
#     and connector; the order of configurations rotates between repetitions
#     (run last, in a second cluster);
#  6. memory: peak RSS of the workers during one big transaction, beside the
#     walsender of pg_recvlogical decoding the same transaction;
#  7. the trigger baseline: an AFTER ROW trigger into a queue table, drained
#     by a loop that POSTs one request per row.
#
# --quick runs smaller workloads and one repetition (about 4 minutes; the
# full run takes about 20).  --only runs some sections and prints their rows:
# ceiling, capture, delivery (with capture, the baseline of its ratios),
# latency, memory, trigger, write-path.  Ports: PORT (56432) and PORT_B (56433) for the
# clusters, RECV_PORT (56480) and SLOW_PORT (56481) for the endpoints.

source "$(dirname "$0")/setup.sh"
eb_need_root

QUICK=0
ONLY=""
SECTIONS="ceiling capture delivery latency memory trigger write-path"
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) QUICK=1 ;;
        --only) ONLY=",${2:-},"; shift ;;
        *) echo "usage: $0 [--quick] [--only SECTION[,SECTION...]]  (sections: $SECTIONS)" >&2; exit 2 ;;
    esac
    shift
done
for sec in ${ONLY//,/ }; do
    [[ " $SECTIONS " == *" $sec "* ]] || { echo "unknown section \"$sec\" (sections: $SECTIONS)" >&2; exit 2; }
done
# want SECTION: is it part of this run?  Delivery's ratios are to the
# capture rate, so delivery brings capture along.
want() { [ -z "$ONLY" ] || [[ "$ONLY" == *",$1,"* ]] || { [ "$1" = capture ] && [[ "$ONLY" == *",delivery,"* ]]; }; }

if [ $QUICK = 1 ]; then
    CAP_BULK=200000 CAP_SINGLE=20000 CAP_MIXED=60000
    DLV_ROWS=50000 DLV_SECONDS=3 PIPE_ROWS=100000
    LAT_SECONDS=8 BIG_ROWS=200000 TRG_ROWS=5000 TRG_SECONDS=4
    WP_REPS=1 WP_SECONDS=4 WRK_SECONDS=2
else
    CAP_BULK=1000000 CAP_SINGLE=100000 CAP_MIXED=300000
    DLV_ROWS=200000 DLV_SECONDS=8 PIPE_ROWS=300000
    LAT_SECONDS=20 BIG_ROWS=1000000 TRG_ROWS=20000 TRG_SECONDS=10
    WP_REPS=5 WP_SECONDS=10 WRK_SECONDS=5
fi

PORT=${PORT:-56432}            # cluster A: capture, delivery, latency, memory, trigger
PORT_B=${PORT_B:-56433}        # cluster B: write path
RECV_PORT=${RECV_PORT:-56480}  # fast endpoint
SLOW_PORT=${SLOW_PORT:-56481}  # the same answering after 20 ms
POISON_PORT=${POISON_PORT:-56482}  # the same refusing (400) batches with a poison record

eb_install_packages postgresql-15-wal2json wrk libpq-dev
eb_ensure_user
eb_build_install

DIR=$(mktemp -d /tmp/event_bridge-bench.XXXXXX)
chown "$EB_USER" "$DIR"
BG_PIDS=()
# On success, failure or Ctrl-C: every helper this script started (the
# endpoints, pg_recvlogical, the memory sampler, the capture hold) and both
# clusters stop, and the directory goes.
cleanup() {
    set +e
    for p in "${BG_PIDS[@]}" $(jobs -p); do kill "$p" 2>/dev/null; done
    for d in "$DIR/a" "$DIR/b"; do
        [ -d "$d" ] && eb_as_user pg_ctl -D "$d" -m immediate stop >/dev/null 2>&1
    done
    rm -rf "$DIR"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# How much the machine itself was disturbed: CPU time stolen by the host
# (/proc/stat) and time some task stalled on I/O (/proc/pressure/io), as
# shares of the run.  Noisy neighbours move single figures by tens of %.
# cpu_ticks: all CPU time, the share stolen by the host, and the busy share
# (user, nice, system, irq, softirq), in clock ticks since boot.
cpu_ticks() { awk '/^cpu / { print $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9, $9, $2 + $3 + $4 + $7 + $8 }' /proc/stat; }
io_stall_us() { awk '/^some/ { sub("total=", "", $5); print $5 }' /proc/pressure/io 2>/dev/null || echo 0; }
read -r RUN_TICKS0 RUN_STEAL0 _ < <(cpu_ticks)
RUN_IO0=$(io_stall_us)
RUN_T0=$(date +%s.%N)
# Microseconds per synchronous 8 kB overwrite of a preallocated file on the
# clusters' disk, like a WAL flush: each commit that moves a delivery offset
# waits for one, so the delivery figures follow it.
sync_write_us() {
    local t0 t1
    dd if=/dev/zero of="$DIR/sync_probe" bs=8k count=500 status=none
    t0=$(date +%s.%N)
    dd if=/dev/zero of="$DIR/sync_probe" bs=8k count=500 conv=notrunc oflag=dsync status=none
    t1=$(date +%s.%N)
    rm -f "$DIR/sync_probe"
    awk "BEGIN { printf \"%.0f\", ($t1 - $t0) * 1e6 / 500 }"
}
SYNC_US0=$(sync_write_us)

echo "== building the benchmark endpoint and the trigger drain loop"
gcc -O2 -Wall -Wextra -o "$DIR/receiver" "$EB_ROOT/test/bench/receiver.c"
gcc -O2 -Wall -Wextra -Wno-unused-parameter -I"$(pg_config --includedir)" \
    -o "$DIR/trigger_drain" "$EB_ROOT/test/bench/trigger_drain.c" -lpq -lcurl

# ---------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------

now() { date +%s.%N; }
calc() { awk "BEGIN { printf \"$1\", $2 }"; }
# A field of the endpoint's flat JSON answers.
jget() { sed -n "s/.*\"$1\":\(-\?[0-9.]*\).*/\1/p"; }
rget() { curl -s "http://127.0.0.1:$1/$2"; }

# Starts a cluster as the server user in $DIR/<name> on a port.
start_cluster() {
    local name=$1 port=$2
    eb_as_user initdb -D "$DIR/$name" -A trust -U postgres >/dev/null
    cat "$EB_ROOT/test/regress.conf" >> "$DIR/$name/postgresql.conf"
    cat >> "$DIR/$name/postgresql.conf" <<CONF
port = $port
unix_socket_directories = '$DIR'
listen_addresses = ''
output_plugin_libraries = 'pgoutput, test_decoding, event_bridge, wal2json'
shared_buffers = '512MB'
max_wal_size = '8GB'
checkpoint_timeout = '30min'
max_wal_senders = 10
CONF
    eb_as_user pg_ctl -D "$DIR/$name" -l "$DIR/$name.log" -w start >/dev/null ||
        { tail -20 "$DIR/$name.log" >&2; exit 1; }
}

# psql on cluster A (database bench unless DB says otherwise).
Q() { psql -X -q -A -t -v ON_ERROR_STOP=1 -h "$DIR" -p "$PORT" -U postgres -d "${DB:-bench}" "$@"; }
QB() { psql -X -q -A -t -v ON_ERROR_STOP=1 -h "$DIR" -p "$PORT_B" -U postgres -d pgb "$@"; }

# Holds event_bridge's capture worker back (it waits on its first flush)
# while a workload writes, so that every reader then decodes the same WAL.
hold_capture() {
    PGAPPNAME=eb_bench_hold Q -c "BEGIN; LOCK event_bridge.records IN SHARE MODE; SELECT pg_sleep(100000);" >/dev/null 2>&1 &
    until [ "$(Q -c "SELECT count(*) FROM pg_locks WHERE relation = 'event_bridge.records'::regclass AND mode = 'ShareLock' AND granted")" = 1 ]; do
        sleep 0.05
    done
}
release_capture() {
    Q -c "SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE application_name = 'eb_bench_hold'" >/dev/null
}
capture_done() {   # true once event_bridge's slot has confirmed $1
    [ "$(Q -c "SELECT confirmed_flush_lsn >= '$1' FROM pg_replication_slots WHERE slot_name LIKE 'event_bridge_%' AND database = current_database()")" = t ]
}

# pg_recvlogical from a slot to /dev/null up to an LSN; prints seconds taken.
recvlogical_time() {
    local slot=$1 endpos=$2; shift 2
    local t0 t1
    t0=$(now)
    pg_recvlogical -h "$DIR" -p "$PORT" -U postgres -d bench -S "$slot" --start \
        --endpos="$endpos" -f /dev/null --no-loop "$@"
    t1=$(now)
    calc "%.3f" "$t1 - $t0"
}

# SQL that inserts rows 1..$2 into table $1 in 1,000-row transactions; with
# $3 = N, every Nth row's customer is "poison ..." (test/bench/receiver.c
# --poison refuses them); with $4, ids start after $4.
bulk_sql() {
    local customer="'customer '" offset=${4:-0}
    [ -n "${3:-}" ] && customer="CASE WHEN g % $3 = 0 THEN 'poison ' ELSE 'customer ' END"
    cat <<SQL
SET synchronous_commit = off;
DO \$\$
BEGIN
  FOR i IN 0 .. ($2 / 1000) - 1 LOOP
    INSERT INTO $1 (id, customer, amount)
      SELECT g, $customer || (g % 1000),
             (g % 10000) / 100.0
        FROM generate_series($offset + i * 1000 + 1, $offset + (i + 1) * 1000) g;
    COMMIT;
  END LOOP;
END
\$\$;
SQL
}
# CREATE TABLE for the workloads' tables.
table_sql() {
    echo "CREATE TABLE $1 (id int PRIMARY KEY, customer text, amount numeric(10,2), created timestamptz DEFAULT now());"
    echo "ALTER TABLE $1 REPLICA IDENTITY FULL;"
}

# Results, printed at the end as rows of a Markdown table.
ROWS=()
row() { ROWS+=("| $1 | $2 | $3 | $4 | $5 |"); }
ratio() { calc "%.2f" "$1 / $2"; }
median() { tr ' ' '\n' | grep . | sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
verdict() {   # value op limit -> met / MISSED
    if awk "BEGIN { exit !($1 $2 $3) }"; then echo "met"; else echo "**missed**"; fi
}
fmt() { awk -v n="$1" 'BEGIN { s = sprintf("%.0f", n); r = ""; while (length(s) > 3) { r = "," substr(s, length(s) - 2) r; s = substr(s, 1, length(s) - 3) } print s r }'; }

# ---------------------------------------------------------------------
# Cluster A and the endpoints
# ---------------------------------------------------------------------

echo "== cluster A on port $PORT"
start_cluster a "$PORT"
DB=postgres Q -c "CREATE DATABASE bench"
Q <<SQL >/dev/null
CREATE EXTENSION event_bridge;
$(table_sql cap_t)
$(table_sql capf_t)
SELECT event_bridge.create_stream('cap', ARRAY['cap_t', 'capf_t']::regclass[], shard_count => 4);
SQL

"$DIR/receiver" --port "$RECV_PORT" >/dev/null 2>"$DIR/receiver.err" &
ENDPOINT_PID=$!
BG_PIDS+=($!)
"$DIR/receiver" --port "$SLOW_PORT" --delay-ms 20 >/dev/null 2>"$DIR/slow.err" &
BG_PIDS+=($!)
"$DIR/receiver" --port "$POISON_PORT" --poison '"poison ' >/dev/null 2>"$DIR/poison.err" &
BG_PIDS+=($!)
sleep 0.3
rget "$RECV_PORT" stats >/dev/null && rget "$SLOW_PORT" stats >/dev/null && rget "$POISON_PORT" stats >/dev/null || {
    echo "the endpoints did not start (ports $RECV_PORT, $SLOW_PORT, $POISON_PORT in use?)" >&2; cat "$DIR"/*.err >&2; exit 1; }
URL="http://127.0.0.1:$RECV_PORT/fc"
SLOW_URL="http://127.0.0.1:$SLOW_PORT/fc"

# ---------------------------------------------------------------------
# 1. The endpoint's ceiling (wrk, 4 connections like 4 shards)
# ---------------------------------------------------------------------

if want ceiling; then
echo "== 1. endpoint ceiling (wrk)"
python3 - "$DIR" <<'EOF'
import json, sys
for n in (1, 100):
    recs = [{"eventId": "0:%d" % i, "systemTime": 1700000000001,
             "data": json.dumps([str(i), "I", "7301234567890123456", "bench", "public.cap_t",
                                 "1700000000000", "N", "Y", str(i), "customer %d" % (i % 1000),
                                 "12.34", "2024-01-01 00:00:00.123456+00"], separators=(",", ":"))}
            for i in range(n)]
    body = json.dumps({"eventSource": "acs:datahub", "eventName": "acs:datahub:putRecord",
                       "eventSourceARN": "/projects/bench/topics/cap", "region": "local",
                       "records": recs}, separators=(",", ":"))
    with open("%s/post%d.lua" % (sys.argv[1], n), "w") as f:
        f.write('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
                'wrk.body = %s\n' % json.dumps(body))
EOF
for n in 1 100; do
    rate=$(wrk -t1 -c4 -d"${WRK_SECONDS}s" -s "$DIR/post$n.lua" "$URL" | awk '/Requests\/sec/ { print $2 }')
    eval "WRK_$n=$rate"
done
rget "$RECV_PORT" reset >/dev/null
echo "   $WRK_1 req/s with 1 record, $WRK_100 req/s with 100 records"
fi

# kafka_start: librdkafka's mock cluster (test/kafka/mock_cluster.c), 3
# brokers, topics bench and lat of 16 partitions, once; sets KAFKA_BOOT.
kafka_start() {
    [ -n "${KAFKA_BOOT:-}" ] && return
    cc -O2 -o "$DIR/mock_cluster" "$EB_ROOT/test/kafka/mock_cluster.c" -lrdkafka
    (cd "$EB_ROOT/test" && npm ci --ignore-scripts --no-audit --no-fund >/dev/null)
    sleep 100000 | "$DIR/mock_cluster" --brokers 3 --topic bench,lat --partitions 16 \
        --bootstrap-file "$DIR/kafka.boot" >/dev/null &
    BG_PIDS+=($!)
    for _ in $(seq 100); do [ -s "$DIR/kafka.boot" ] && break; sleep 0.1; done
    KAFKA_BOOT=$(cat "$DIR/kafka.boot")
}

# ---------------------------------------------------------------------
# 4. Latency, commit -> receipt, open loop (first, while the records table
#    is small: later sections leave millions of rows for autovacuum)
# ---------------------------------------------------------------------

if want latency; then
echo "== 4. latency"
Q <<SQL >/dev/null
CREATE TABLE lat_t (id bigserial PRIMARY KEY, v text, n int);
ALTER TABLE lat_t REPLICA IDENTITY FULL;
SELECT event_bridge.create_stream('lat', ARRAY['lat_t']::regclass[], shard_count => 4);
SELECT event_bridge.create_connector('lat_c', 'lat', '$URL', batch_size => 100);
SQL
echo "INSERT INTO lat_t (v, n) VALUES ('x', 1);" > "$DIR/insert.sql"
for rate in 1000 5000; do
    rget "$RECV_PORT" reset >/dev/null
    before=$(Q -c "SELECT count(*) FROM lat_t")
    rm -f "$DIR"/txlog.*
    out=$(cd "$DIR" && pgbench -h "$DIR" -p "$PORT" -U postgres -n -f "$DIR/insert.sql" -R "$rate" \
        -T "$LAT_SECONDS" -c 16 -j 2 -l --log-prefix=txlog bench 2>&1)
    # The inserts' own latency, begin to commit (pgbench's per-transaction
    # log: field 3 is from the scheduled start, field 7 the schedule lag).
    eval "LAT_${rate}_TX99=$(cat "$DIR"/txlog.* | awk '{ print ($3 - $7) / 1000 }' | sort -n |
        awk '{ v[NR] = $1 } END { i = int(NR * 0.99); if (i < 1) i = 1; printf "%.1f", v[i] }')"
    n=$(( $(Q -c "SELECT count(*) FROM lat_t") - before ))
    t0=$(now)
    until [ "$(rget "$RECV_PORT" stats | jget unique)" -ge "$n" ]; do
        sleep 0.1
        awk "BEGIN { exit !($(now) - $t0 > 120) }" && { echo "latency: not everything arrived" >&2; exit 1; }
    done
    lat=$(rget "$RECV_PORT" latency)
    eval "LAT_${rate}_TPS=$(echo "$out" | awk '/^tps/ { printf "%.0f", $3 }')"
    for k in p50 p95 p99 max append_p50 append_p99; do
        eval "LAT_${rate}_$k=$(echo "$lat" | jget "$k")"
    done
    eval "LAT_${rate}_PGB=$(echo "$out" | awk '/latency average/ { print $4 }')"
    eval "echo \"   $rate/s (achieved \$LAT_${rate}_TPS/s): p50 \$LAT_${rate}_p50 ms, p95 \$LAT_${rate}_p95, p99 \$LAT_${rate}_p99, max \$LAT_${rate}_max (commit -> append p50 \$LAT_${rate}_append_p50, p99 \$LAT_${rate}_append_p99; the inserts' own p99 \$LAT_${rate}_TX99)\""
done
Q -c "SELECT event_bridge.drop_connector('lat_c')" >/dev/null

# The same at 1,000/s to Kafka (batch_size 100, 4 shards), commit -> receipt
# by a kafkajs consumer.
kafka_start
Q -c "SELECT event_bridge.create_connector('lat_k', 'lat', 'kafka://$KAFKA_BOOT/lat', target => 'kafka', batch_size => 100)" >/dev/null
node "$EB_ROOT/test/kafka/consume.js" --brokers "$KAFKA_BOOT" --topic lat --count 100000000 \
    --timeout-ms $(( (LAT_SECONDS + 120) * 1000 )) --idle-ms 5000 --latency lat \
    > "$DIR/kafka_latency.json" 2> "$DIR/kafka_latency.err" &
KAFKA_CONSUMER=$!
for _ in $(seq 300); do grep -q ready "$DIR/kafka_latency.err" && break; sleep 0.1; done
sleep 2
out=$(cd "$DIR" && pgbench -h "$DIR" -p "$PORT" -U postgres -n -f "$DIR/insert.sql" -R 1000 \
    -T "$LAT_SECONDS" -c 16 -j 2 bench 2>&1)
LATK_TPS=$(echo "$out" | awk '/^tps/ { printf "%.0f", $3 }')
wait "$KAFKA_CONSUMER" || true
for k in count p50 p95 p99 max; do
    eval "LATK_$k=$(jget "$k" < "$DIR/kafka_latency.json")"
done
Q -c "SELECT event_bridge.drop_connector('lat_k')" >/dev/null
echo "   kafka, 1000/s (achieved $LATK_TPS/s): p50 $LATK_p50 ms, p95 $LATK_p95, p99 $LATK_p99, max $LATK_max ($LATK_count messages)"

fi

# ---------------------------------------------------------------------
# 2. Capture rate beside pg_recvlogical, three workloads over the same WAL
# ---------------------------------------------------------------------

# capture_run NAME CHANGES RECORDS SQL: writes the workload while capture is
# held back, then times each reader over the same WAL.
capture_run() {
    local name=$1 changes=$2 records=$3 sql=$4
    local before end td wj sq t0 t1 eb appended
    Q -c "SELECT 's' FROM pg_create_logical_replication_slot('td_$name', 'test_decoding')" >/dev/null
    Q -c "SELECT 's' FROM pg_create_logical_replication_slot('wj_$name', 'wal2json')" >/dev/null
    Q -c "SELECT 's' FROM pg_create_logical_replication_slot('sq_$name', 'test_decoding')" >/dev/null
    before=$(Q -c "SELECT appended FROM event_bridge.stream_status WHERE stream_name = 'cap'")
    # What the previous workload left to vacuum and write out is done
    # before, not while the readers run; so is this workload's.
    Q -c "VACUUM ANALYZE" >/dev/null
    hold_capture
    printf 'SET synchronous_commit = off;\n%s\n' "$sql" | Q >/dev/null
    end=$(Q -c "SELECT pg_current_wal_lsn()")
    Q -c "VACUUM ANALYZE cap_t" >/dev/null
    Q -c "CHECKPOINT" >/dev/null
    echo "   $name: $changes changes, $(Q -c "SELECT round((pg_current_wal_lsn() - restart_lsn) / 1048576.0) FROM pg_replication_slots WHERE slot_name = 'td_$name'") MB of WAL"
    td=$(recvlogical_time "td_$name" "$end")
    wj=$(recvlogical_time "wj_$name" "$end" -o format-version=2)
    # The in-process ceiling: one SQL call decoding it all inside a backend.
    t0=$(now)
    Q -c "SELECT count(*) FROM pg_logical_slot_get_binary_changes('sq_$name', '$end', NULL)" >/dev/null
    t1=$(now)
    sq=$(calc "%.3f" "$t1 - $t0")
    t0=$(now)
    release_capture
    until capture_done "$end"; do sleep 0.02; done
    t1=$(now)
    eb=$(calc "%.3f" "$t1 - $t0")
    appended=$(Q -c "SELECT appended - $before FROM event_bridge.stream_status WHERE stream_name = 'cap'")
    [ "$appended" = "$records" ] || { echo "event_bridge appended $appended records, expected $records" >&2; exit 1; }
    Q -c "SELECT pg_drop_replication_slot('td_$name'), pg_drop_replication_slot('wj_$name'), pg_drop_replication_slot('sq_$name')" >/dev/null
    eval "CAP_${name}_TD=$(calc "%.0f" "$changes / $td")"
    eval "CAP_${name}_WJ=$(calc "%.0f" "$changes / $wj")"
    eval "CAP_${name}_EB=$(calc "%.0f" "$changes / $eb")"
    eval "CAP_${name}_SQ=$(calc "%.0f" "$changes / $sq")"
    eval "echo \"     changes/s: test_decoding \$CAP_${name}_TD, wal2json \$CAP_${name}_WJ, event_bridge \$CAP_${name}_EB\""
}

if want capture; then
echo "== 2. capture"
capture_run bulk "$CAP_BULK" "$CAP_BULK" "$(bulk_sql cap_t "$CAP_BULK")"

capture_run single "$CAP_SINGLE" "$CAP_SINGLE" "
DO \$\$
BEGIN
  FOR g IN 2000001 .. 2000000 + $CAP_SINGLE LOOP
    INSERT INTO cap_t (id, customer, amount) VALUES (g, 'customer ' || (g % 1000), (g % 10000) / 100.0);
    COMMIT;
  END LOOP;
END
\$\$;"

# Mixed: transactions of 100 changes, 40 INSERTs, 40 UPDATEs (two records
# each: before and after image), 20 DELETEs, over rows of the bulk workload.
capture_run mixed "$CAP_MIXED" "$((CAP_MIXED / 100 * 140))" "
DO \$\$
BEGIN
  FOR i IN 0 .. ($CAP_MIXED / 100) - 1 LOOP
    INSERT INTO cap_t (id, customer, amount)
      SELECT g, 'customer ' || (g % 1000), 1.00 FROM generate_series(3000001 + i * 40, 3000040 + i * 40) g;
    UPDATE cap_t SET amount = amount + 1 WHERE id BETWEEN 1 + i * 60 AND 40 + i * 60;
    DELETE FROM cap_t WHERE id BETWEEN 41 + i * 60 AND 60 + i * 60;
    COMMIT;
  END LOOP;
END
\$\$;"

# A capture filter (set_table_filter) keeping 10 % of the rows, beside the
# same workload on the same table without it, alternating.
for rep in $(seq 1 $((QUICK ? 1 : 3))); do
    base=$(( (rep - 1) * 2 * CAP_BULK ))
    Q -c "SELECT event_bridge.set_table_filter('cap', 'capf_t')" >/dev/null
    capture_run nofilter "$CAP_BULK" "$CAP_BULK" "$(bulk_sql capf_t "$CAP_BULK" '' "$base")"
    CAP_NOFILTER+=" $CAP_nofilter_EB"
    Q -c "SELECT event_bridge.set_table_filter('cap', 'capf_t', 'id % 10 = 0')" >/dev/null
    capture_run filter "$CAP_BULK" "$((CAP_BULK / 10))" "$(bulk_sql capf_t "$CAP_BULK" '' "$((base + CAP_BULK))")"
    CAP_FILTER+=" $CAP_filter_EB"
done
CAP_NOFILTER=$(echo "$CAP_NOFILTER" | median)
CAP_FILTER=$(echo "$CAP_FILTER" | median)
echo "   a row filter keeping 10 %: $CAP_FILTER changes/s (no filter, alternating: $CAP_NOFILTER)"

fi

# ---------------------------------------------------------------------
# 3. Delivery: batch sizes, shards, a fast and a 20 ms endpoint
# ---------------------------------------------------------------------

if want delivery; then
echo "== 3. delivery"
Q <<SQL >/dev/null
$(table_sql dlv_t)
SELECT event_bridge.create_stream('d1', ARRAY['dlv_t']::regclass[], shard_count => 1);
SELECT event_bridge.create_stream('d4', ARRAY['dlv_t']::regclass[], shard_count => 4);
$(bulk_sql dlv_t "$DLV_ROWS")
SELECT event_bridge.wait_for_capture('300 seconds');
SQL
# The capture section left 1.4 million new rows: vacuum them now and write
# the dirty buffers out, so that autovacuum and the checkpointer do not
# share the disk with the offset commits timed here.
Q -c "VACUUM ANALYZE" >/dev/null
Q -c "CHECKPOINT" >/dev/null
SYNC_US_DLV=$(sync_write_us)
echo "   a synchronous 8 kB write takes $SYNC_US_DLV µs now"

declare -A SIGN_PLAIN SIGN_DLV
# deliver_run PORT URL SHARDS BATCH [STREAM [OPTIONS]]: a connector from the
# earliest record of the stream's backlog (d1 or d4 by SHARDS); delivered/s
# between the first and the last receipt, until everything arrived or
# DLV_SECONDS passed.
deliver_run() {
    local port=$1 url=$2 shards=$3 batch=$4 stream=${5:-d$3} opts=${6:-}
    local t0 stats unique first last recs
    rget "$port" reset >/dev/null
    Q -c "SELECT event_bridge.create_connector('bench_c', '$stream', '$url', start_time => NULL, batch_size => $batch $opts)" >/dev/null
    t0=$(now)
    while :; do
        sleep 0.2
        unique=$(rget "$port" stats | jget unique)
        [ "$unique" -ge "$DLV_ROWS" ] && break
        awk "BEGIN { exit !($(now) - $t0 > $DLV_SECONDS) }" && break
    done
    Q -c "SELECT event_bridge.drop_connector('bench_c')" >/dev/null
    stats=$(rget "$port" stats)
    first=$(echo "$stats" | jget first_us)
    last=$(echo "$stats" | jget last_us)
    recs=$(echo "$stats" | jget unique)
    calc "%.0f" "$recs / (($last - $first) / 1e6)"
    sleep 0.3   # let a cancelled request settle before the next reset
}

for shards in 1 4; do
    for batch in 1 100 1000; do
        eval "DLV_${shards}_${batch}=$(deliver_run "$RECV_PORT" "$URL" "$shards" "$batch")"
        eval "SLOW_${shards}_${batch}=$(deliver_run "$SLOW_PORT" "$SLOW_URL" "$shards" "$batch")"
        eval "echo \"   $shards shards, batch_size $batch: \$DLV_${shards}_${batch} events/s (20 ms endpoint: \$SLOW_${shards}_${batch})\""
    done
done

# 1 % poison records: the endpoint refuses (400) every batch that holds one;
# with on_failure => 'dead_letter' they are bisected out.  Beside the same
# records delivered to the endpoint that takes everything.
Q <<SQL >/dev/null
$(table_sql dlv_p)
SELECT event_bridge.create_stream('dp', ARRAY['dlv_p']::regclass[], shard_count => 4);
$(bulk_sql dlv_p "$DLV_ROWS" 100)
SELECT event_bridge.wait_for_capture('300 seconds');
SQL
POISON_CLEAN=$(deliver_run "$RECV_PORT" "$URL" 4 100 dp)
POISON_DLV=$(deliver_run "$POISON_PORT" "http://127.0.0.1:$POISON_PORT/fc" 4 100 dp ", on_failure => 'dead_letter'")
echo "   4 shards, batch_size 100, 1 % poison records: $POISON_DLV events/s acknowledged (all accepted: $POISON_CLEAN)"

SIGN_SECRET="whsec_$(printf '%032d' 0 | base64 -w0)"
# Signed invocations (batch_size 100, 4 shards): each target signs every
# request as its platform wants (the endpoint takes any path and does not
# check); each beside an unsigned http run just before it.
Q <<SQL >/dev/null
SELECT event_bridge.create_credential('b_ali', 'aliyun', '{"access_key_id": "LTAI_BENCH", "access_key_secret": "s"}');
SELECT event_bridge.create_credential('b_hw', 'huaweicloud', '{"access_key": "HWAK_BENCH", "secret_key": "s"}');
SELECT event_bridge.create_credential('b_aws', 'aws', '{"access_key_id": "AKID_BENCH", "secret_access_key": "s", "region": "us-east-1"}');
SELECT event_bridge.create_credential('b_hook', 'webhook', '{"secret": "$SIGN_SECRET"}');
SQL
declare -A SIGN_PATH=(
    [fc]="/2023-03-30/functions/f/invocations|target => 'fc', credential => 'b_ali'"
    [functiongraph]="/v2/p/fgs/functions/urn:fss:r:p:function:default:f:latest/invocations|target => 'functiongraph', credential => 'b_hw'"
    [lambda]="/2015-03-31/functions/f/invocations|target => 'lambda', credential => 'b_aws'"
    [webhook]="/hook|credential => 'b_hook'")
# alternate PLAIN DLV RUN KEYS...: short runs are noisy, so three rounds in
# which, for each key, "RUN base KEY" (the baseline) runs just before
# "RUN test KEY"; the medians go into the associative arrays named PLAIN
# and DLV.  RUN may carry words of its own.
alternate() {
    local -n plain=$1 dlv=$2
    local run=$3 rep t
    shift 3
    for rep in 1 2 3; do
        for t in "$@"; do
            plain[$t]+=" $($run base "$t")"
            dlv[$t]+=" $($run test "$t")"
        done
    done
    for t in "$@"; do
        plain[$t]=$(echo "${plain[$t]}" | median)
        dlv[$t]=$(echo "${dlv[$t]}" | median)
    done
}
# path_run PATHS base|test KEY: an unsigned datahub run to $URL, or one to
# the path with the options of PATHS[KEY] ("path|options"); batch_size 100,
# 4 shards.
path_run() {
    local -n paths=$1
    if [ "$2" = base ]; then
        deliver_run "$RECV_PORT" "$URL" 4 100
    else
        deliver_run "$RECV_PORT" "http://127.0.0.1:$RECV_PORT${paths[$3]%%|*}" 4 100 d4 ", ${paths[$3]#*|}"
    fi
}
alternate SIGN_PLAIN SIGN_DLV "path_run SIGN_PATH" fc functiongraph lambda webhook
for t in fc functiongraph lambda webhook; do
    echo "   4 shards, batch_size 100, signed for $t: ${SIGN_DLV[$t]} events/s (unsigned http, alternating: ${SIGN_PLAIN[$t]}; medians of 3)"
done
# Named formats and rules (batch_size 100, 4 shards), each beside a datahub
# run just before it, three rounds, medians.  The transform renders a
# template from three JSONPaths; the filter keeps every event (what it
# costs to decide, not what it saves).
Q <<'SQL' >/dev/null
CREATE TABLE bench_rules AS SELECT
  jsonb_build_object('type', 'VARIABLE',
    'value', '{"id": "$.eventId", "c": "$.after.customer", "a": "$.after.amount"}',
    'template', '{"eventId":"${id}","customer":"${c}","amount":${a}}') AS transform,
  '{"after": {"amount": [{"op": "NumberNotLessThan", "value": 0}]}}'::jsonb AS filter;
SQL
declare -A RULE_OPTS=(
    [json]="/fc|format => 'json'"
    [cloudevents]="/fc|format => 'cloudevents'"
    [transform]="/fc|format => 'json', transform => (SELECT transform FROM bench_rules)"
    [filter]="/fc|format => 'json', filter => (SELECT filter FROM bench_rules)")
declare -A RULE_PLAIN RULE_DLV
alternate RULE_PLAIN RULE_DLV "path_run RULE_OPTS" json cloudevents transform filter
for t in json cloudevents transform filter; do
    echo "   4 shards, batch_size 100, $t: ${RULE_DLV[$t]} events/s (datahub, alternating: ${RULE_PLAIN[$t]}; medians of 3)"
done

# Kafka (librdkafka's mock cluster, 3 brokers, 16 partitions): the 4-shard
# backlog produced at batch_size 100 and 1,000, timed from the connector's
# creation until its offsets reach the head, beside the same to the HTTP
# endpoint timed the same way; three alternating rounds, medians.
kafka_start
# catalog_run ENDPOINT BATCH OPTIONS: events/s until the connector delivered the backlog of d4.
catalog_run() {
    local t0 t1 n
    Q -c "SELECT event_bridge.create_connector('bench_k', 'd4', '$1', start_time => NULL, batch_size => $2 $3)" >/dev/null
    t0=$(now)
    while :; do
        n=$(Q -c "SELECT delivered FROM event_bridge.connector_status WHERE connector_name = 'bench_k'")
        [ "$n" -ge "$DLV_ROWS" ] && break
        awk "BEGIN { exit !($(now) - $t0 > 120) }" && break
        sleep 0.02
    done
    t1=$(now)
    Q -c "SELECT event_bridge.drop_connector('bench_k')" >/dev/null
    calc "%.0f" "$n / ($t1 - $t0)"
}
# kafka_run base|test BATCH: catalog_run to the HTTP endpoint, or to Kafka.
kafka_run() {
    if [ "$1" = base ]; then
        catalog_run "$URL" "$2" ""
    else
        catalog_run "kafka://$KAFKA_BOOT/bench" "$2" ", target => 'kafka'"
    fi
}
declare -A KAFKA_DLV KAFKA_HTTP
alternate KAFKA_HTTP KAFKA_DLV kafka_run 100 1000
for batch in 100 1000; do
    echo "   kafka, 4 shards, batch_size $batch: ${KAFKA_DLV[$batch]} messages/s (http, alternating: ${KAFKA_HTTP[$batch]}; medians of 3)"
done

# What signing one request costs: the signature of a 100-record body
# (~20 kB, as the runs above send), minus the same loop without it.  The
# body is a value in memory, as in the worker; g keeps each call apart.
SIGN_BODY=$(Q -At -c "SELECT length(event_bridge._format_batch('datahub', 'db', 's', 'r', 0,
    array_agg(g::bigint), array_agg(g::bigint), array_agg(NULL::text),
    array_agg('[\"' || g || '\",\"I\",\"1\",\"db\",\"public.t\",\"1\",\"N\",\"Y\",\"' || g || '\",\"' || repeat('x', 120) || '\"]'), 0))
    FROM generate_series(1, 100) g")
SIGN_N=5000
sign_ms() {   # sign_ms EXPR: milliseconds of SIGN_N evaluations of EXPR, with b a body of SIGN_BODY bytes
    Q -At <<SQL | tail -1
SELECT count($1) FROM (SELECT repeat('x', $SIGN_BODY) AS b) sb, generate_series(1, 500) g;   -- warm up
SELECT extract(epoch FROM clock_timestamp()) \gset t0_
SELECT count($1) FROM (SELECT repeat('x', $SIGN_BODY) AS b) sb, generate_series(1, $SIGN_N) g;
SELECT round(((extract(epoch FROM clock_timestamp()) - :t0_extract) * 1000)::numeric, 1);
SQL
}
SIGN_BASE=$(sign_ms "length(g || 'x')")
SIGN_ACS3=$(sign_ms "event_bridge._signature('acs3', '/2023-03-30/functions/f/invocations', '', ARRAY['host:h', 'content-type:application/json', 'x-acs-date:' || g], b, 'k', 's', '')")
SIGN_HW=$(sign_ms "event_bridge._signature('sdk-hmac', '/v2/p/fgs/functions/urn:fss:r:p:function:default:f:latest/invocations', '', ARRAY['host:h', 'content-type:application/json'], b, 'k', 's', g::text)")
SIGN_HOOK=$(sign_ms "event_bridge._signature('webhook', '', '', '{}', b, 'msg_1', '$SIGN_SECRET', g::text)")
for v in ACS3 HW HOOK; do
    eval "SIGN_US_$v=\$(calc '%.1f' \"(\$SIGN_$v - \$SIGN_BASE) * 1000 / \$SIGN_N\")"
done
echo "   signing one request of $SIGN_BODY bytes: ACS3 $SIGN_US_ACS3 µs, SDK-HMAC $SIGN_US_HW µs, Standard Webhooks $SIGN_US_HOOK µs"

# The whole pipeline: WAL written while capture is held back, then capture
# and delivery (batch_size 100, 4 shards) run together until the last receipt.
Q <<SQL >/dev/null
$(table_sql pipe_t)
SELECT event_bridge.create_stream('p4', ARRAY['pipe_t']::regclass[], shard_count => 4);
SELECT event_bridge.create_connector('pipe_c', 'p4', '$URL', batch_size => 100);
SQL
rget "$RECV_PORT" reset >/dev/null
hold_capture
bulk_sql pipe_t "$PIPE_ROWS" | Q >/dev/null
t0=$(now)
release_capture
until [ "$(rget "$RECV_PORT" stats | jget unique)" -ge "$PIPE_ROWS" ]; do
    sleep 0.05
    awk "BEGIN { exit !($(now) - $t0 > 300) }" && { echo "pipeline: not everything arrived" >&2; exit 1; }
done
last=$(rget "$RECV_PORT" stats | jget last_us)
PIPE=$(calc "%.0f" "$PIPE_ROWS / ($last / 1e6 - $t0)")
Q -c "SELECT event_bridge.drop_connector('pipe_c')" >/dev/null
echo "   pipeline (capture + delivery, batch_size 100, 4 shards): $PIPE events/s"

fi

# ---------------------------------------------------------------------
# 5. Memory: one big transaction
# ---------------------------------------------------------------------

if want memory; then
echo "== 6. memory: one transaction of $BIG_ROWS rows"
# sample_rss OUT PID...: the largest RssAnon and VmHWM (kB) of the processes
# until $DIR/stop_sampling exists.
sample_rss() {
    local out=$1; shift
    rm -f "$DIR/stop_sampling"
    (
        declare -A anon hwm
        while [ ! -e "$DIR/stop_sampling" ]; do
            for p in "$@"; do
                read -r a h < <(awk '/^RssAnon/ { a = $2 } /^VmHWM/ { h = $2 } END { print a + 0, h + 0 }' "/proc/$p/status" 2>/dev/null)
                [ "${a:-0}" -gt "${anon[$p]:-0}" ] && anon[$p]=$a
                [ "${h:-0}" -gt "${hwm[$p]:-0}" ] && hwm[$p]=$h
            done
            sleep 0.1
        done
        for p in "$@"; do echo "$p ${anon[$p]:-0} ${hwm[$p]:-0}"; done > "$out"
    ) &
    SAMPLER=$!
}
stop_sampling() { touch "$DIR/stop_sampling"; wait "$SAMPLER"; }

Q <<SQL >/dev/null
$(table_sql big_t)
SELECT event_bridge.create_stream('big', ARRAY['big_t']::regclass[], shard_count => 4);
SELECT event_bridge.create_connector('big_c', 'big', '$URL', batch_size => 100);
SELECT 's' FROM pg_create_logical_replication_slot('td_big', 'test_decoding');
SQL
CAP_PID=$(Q -c "SELECT pid FROM pg_stat_activity WHERE backend_type LIKE 'event_bridge capture%' AND datname = 'bench'")
DLV_PID=$(Q -c "SELECT pid FROM pg_stat_activity WHERE backend_type LIKE 'event_bridge delivery%' AND datname = 'bench'")
echo 5 > "/proc/$CAP_PID/clear_refs"; echo 5 > "/proc/$DLV_PID/clear_refs"
rget "$RECV_PORT" reset >/dev/null
sample_rss "$DIR/rss_eb" "$CAP_PID" "$DLV_PID"
t0=$(now)
Q -c "INSERT INTO big_t (id, customer, amount) SELECT g, 'customer ' || (g % 1000), (g % 10000) / 100.0 FROM generate_series(1, $BIG_ROWS) g"
BIG_END=$(Q -c "SELECT pg_current_wal_lsn()")
t1=$(now)
until capture_done "$BIG_END"; do sleep 0.05; done
t2=$(now)
until [ "$(rget "$RECV_PORT" stats | jget unique)" -ge "$BIG_ROWS" ]; do sleep 0.1; done
t3=$(now)
stop_sampling
BIG_EB_CAP=$(calc "%.0f" "$BIG_ROWS / ($t2 - $t1)")
read -r _ CAP_ANON CAP_HWM < <(grep "^$CAP_PID " "$DIR/rss_eb")
read -r _ DLV_ANON DLV_HWM < <(grep "^$DLV_PID " "$DIR/rss_eb")
Q -c "SELECT event_bridge.drop_connector('big_c')" >/dev/null

# The same transaction through pg_recvlogical: its walsender's memory.
pg_recvlogical -h "$DIR" -p "$PORT" -U postgres -d bench -S td_big --start \
    --endpos="$BIG_END" -f /dev/null --no-loop &
RECV_PID=$!
t0=$(now)
until WS_PID=$(Q -c "SELECT pid FROM pg_stat_replication WHERE application_name = 'pg_recvlogical'") && [ -n "$WS_PID" ]; do
    kill -0 "$RECV_PID" 2>/dev/null || break
    sleep 0.02
done
if [ -n "$WS_PID" ]; then
    sample_rss "$DIR/rss_ws" "$WS_PID"
    wait "$RECV_PID"
    stop_sampling
    read -r _ WS_ANON WS_HWM < <(grep "^$WS_PID " "$DIR/rss_ws")
else
    wait "$RECV_PID"; WS_ANON=0 WS_HWM=0
fi
t1=$(now)
BIG_TD=$(calc "%.0f" "$BIG_ROWS / ($t1 - $t0)")
Q -c "SELECT pg_drop_replication_slot('td_big')" >/dev/null
WORK_MEM_KB=$(Q -c "SELECT setting FROM pg_settings WHERE name = 'logical_decoding_work_mem'")
BUF_KB=$(Q -c "SELECT setting FROM pg_settings WHERE name = 'event_bridge.capture_buffer_kb'")
echo "   capture worker: RssAnon peak $CAP_ANON kB (VmHWM $CAP_HWM kB); delivery worker: $DLV_ANON kB ($DLV_HWM kB)"
echo "   pg_recvlogical's walsender: $WS_ANON kB ($WS_HWM kB); bound: logical_decoding_work_mem $WORK_MEM_KB kB + capture_buffer $BUF_KB kB"
echo "   capture of the transaction: $BIG_EB_CAP changes/s, pg_recvlogical $BIG_TD changes/s"

fi

# ---------------------------------------------------------------------
# 6. The trigger baseline
# ---------------------------------------------------------------------

if want trigger; then
echo "== 7. trigger baseline"
Q -f "$EB_ROOT/test/bench/trigger.sql" >/dev/null
t0=$(now)
Q -c "INSERT INTO trg_t (id, customer, amount) SELECT g, 'customer ' || (g % 1000), (g % 10000) / 100.0 FROM generate_series(1, $TRG_ROWS) g"
rget "$RECV_PORT" reset >/dev/null
sent=$("$DIR/trigger_drain" "host=$DIR port=$PORT user=postgres dbname=bench" "$URL" "$TRG_ROWS" "$TRG_SECONDS")
stats=$(rget "$RECV_PORT" stats)
TRG=$(calc "%.0f" "$(echo "$stats" | jget unique) / (($(echo "$stats" | jget last_us) - $(echo "$stats" | jget first_us)) / 1e6)")
echo "   trigger + queue + drain loop: $TRG events/s ($sent sent)"
# The same loop to the endpoint that takes 20 ms per call.
Q -c "INSERT INTO trg_t (id, customer, amount) SELECT g, 'customer ' || (g % 1000), 1.00 FROM generate_series($TRG_ROWS + 1, $TRG_ROWS + 2000) g"
rget "$SLOW_PORT" reset >/dev/null
"$DIR/trigger_drain" "host=$DIR port=$PORT user=postgres dbname=bench" "$SLOW_URL" 2000 "$TRG_SECONDS" >/dev/null
stats=$(rget "$SLOW_PORT" stats)
TRG_SLOW=$(calc "%.0f" "$(echo "$stats" | jget unique) / (($(echo "$stats" | jget last_us) - $(echo "$stats" | jget first_us)) / 1e6)")
echo "   the same to the 20 ms endpoint: $TRG_SLOW events/s"

fi

eb_as_user pg_ctl -D "$DIR/a" -m fast stop >/dev/null

# ---------------------------------------------------------------------
# 7. Write path: pgbench TPS per configuration, rotating the order
# ---------------------------------------------------------------------

if want write-path; then
echo "== 5. write path (cluster B on port $PORT_B)"
start_cluster b "$PORT_B"
psql -X -q -h "$DIR" -p "$PORT_B" -U postgres -d postgres -c "CREATE DATABASE pgb"
pgbench -h "$DIR" -p "$PORT_B" -U postgres -i -s 10 -q pgb >/dev/null 2>&1
QB -c "CREATE TABLE ins_t (id bigserial PRIMARY KEY, v text, n int, created timestamptz DEFAULT now())"
echo "INSERT INTO ins_t (v, n) VALUES ('x', 1);" > "$DIR/ins.sql"

CONFIGS=(replica logical recvlogical event_bridge)
wp_setup() {
    local level=logical
    [ "$1" = replica ] && level=replica
    QB -c "ALTER SYSTEM SET wal_level = $level" >/dev/null
    eb_as_user pg_ctl -D "$DIR/b" -l "$DIR/b.log" -m fast -w restart >/dev/null
    case "$1" in
        recvlogical)
            QB -c "SELECT 's' FROM pg_create_logical_replication_slot('wp', 'test_decoding')" >/dev/null
            pg_recvlogical -h "$DIR" -p "$PORT_B" -U postgres -d pgb -S wp --start -f /dev/null &
            WP_RECV=$!
            BG_PIDS+=("$WP_RECV")
            ;;
        event_bridge)
            QB <<SQL >/dev/null
CREATE EXTENSION event_bridge;
SELECT event_bridge.create_stream('wp', ARRAY['pgbench_accounts', 'pgbench_branches', 'pgbench_tellers',
    'pgbench_history', 'ins_t']::regclass[], shard_count => 4, before_images => false);
SELECT event_bridge.create_connector('wp_c', 'wp', '$URL', batch_size => 100);
SQL
            ;;
    esac
}
wp_teardown() {
    case "$1" in
        recvlogical)
            kill "$WP_RECV"; wait "$WP_RECV" 2>/dev/null || true
            QB -c "SELECT pg_drop_replication_slot('wp')" >/dev/null ;;
        event_bridge)
            # Did capture and delivery keep up?  Lag when the run ended.
            WP_EB_PENDING+=("$(QB -c "SELECT pending FROM event_bridge.connector_status")")
            QB -c "DROP EXTENSION event_bridge" >/dev/null ;;
    esac
}
tps() { awk '/^tps/ { printf "%.0f", $3 }'; }
ntx() { awk '/^number of transactions actually processed/ { split($NF, a, "/"); print a[1] }'; }
# CPU time of processes, utime + stime in clock ticks (after the command
# name, which may hold spaces, utime and stime are fields 12 and 13).
proc_ticks() {
    local p sum=0
    for p in "$@"; do
        [ -r "/proc/$p/stat" ] && sum=$((sum + $(sed 's/.*) //' "/proc/$p/stat" | awk '{ print $12 + $13 }')))
    done
    echo "$sum"
}
busy_ticks() { cpu_ticks | awk '{ print $3 }'; }
# The consumers' processes of a configuration, as "label:pid ...".
consumer_pids() {
    case "$1" in
        recvlogical)
            echo "walsender:$(QB -c "SELECT pid FROM pg_stat_replication WHERE application_name = 'pg_recvlogical'") pg_recvlogical:$WP_RECV" ;;
        event_bridge)
            echo "capture:$(QB -c "SELECT pid FROM pg_stat_activity WHERE backend_type LIKE 'event_bridge capture%' AND datname = 'pgb'")" \
                 "delivery:$(QB -c "SELECT pid FROM pg_stat_activity WHERE backend_type LIKE 'event_bridge delivery%' AND datname = 'pgb'")" \
                 "endpoint:$ENDPOINT_PID" ;;
    esac
}
# CPU per INSERT transaction, summed over repetitions: WP_CPU[config:label]
# (ticks of a consumer's process), WP_BUSY[config] (busy ticks of the whole
# machine), WP_TX[config] (transactions).
declare -A TPCB INS WP_CPU WP_TX WP_BUSY
WP_EB_PENDING=()
for ((r = 0; r < WP_REPS; r++)); do
    for ((k = 0; k < ${#CONFIGS[@]}; k++)); do
        c=${CONFIGS[$(( (k + r) % ${#CONFIGS[@]} ))]}
        wp_setup "$c"
        t=$(pgbench -h "$DIR" -p "$PORT_B" -U postgres -n -c 4 -j 2 -T "$WP_SECONDS" pgb 2>&1 | tps)
        pids=$(consumer_pids "$c")
        declare -A before=()
        for lp in $pids; do before[${lp%%:*}]=$(proc_ticks "${lp#*:}"); done
        b0=$(busy_ticks)
        out=$(pgbench -h "$DIR" -p "$PORT_B" -U postgres -n -f "$DIR/ins.sql" -c 4 -j 2 -T "$WP_SECONDS" pgb 2>&1)
        WP_BUSY[$c]=$(( ${WP_BUSY[$c]:-0} + $(busy_ticks) - b0 ))
        for lp in $pids; do
            WP_CPU[$c:${lp%%:*}]=$(( ${WP_CPU[$c:${lp%%:*}]:-0} + $(proc_ticks "${lp#*:}") - ${before[${lp%%:*}]} ))
        done
        i=$(echo "$out" | tps)
        WP_TX[$c]=$(( ${WP_TX[$c]:-0} + $(echo "$out" | ntx) ))
        wp_teardown "$c"
        TPCB[$c]+="$t "
        INS[$c]+="$i "
        echo "   repetition $((r + 1)), $c: TPC-B $t tps, INSERT $i tps"
    done
done
for c in "${CONFIGS[@]}"; do
    eval "TPCB_${c}=$(echo "${TPCB[$c]}" | median)"
    eval "INS_${c}=$(echo "${INS[$c]}" | median)"
done
eb_as_user pg_ctl -D "$DIR/b" -m fast stop >/dev/null

fi

# ---------------------------------------------------------------------
# The table
# ---------------------------------------------------------------------

CPU=$(lscpu | sed -n 's/^Model name: *//p' | head -1)
echo
read -r RUN_TICKS1 RUN_STEAL1 _ < <(cpu_ticks)
RUN_IO1=$(io_stall_us)
STEAL=$(calc "%.1f" "100 * ($RUN_STEAL1 - $RUN_STEAL0) / ($RUN_TICKS1 - $RUN_TICKS0)")
IO_STALL=$(calc "%.1f" "100 * ($RUN_IO1 - $RUN_IO0) / 1e6 / ($(date +%s.%N) - $RUN_T0)")
echo "Machine: $(nproc) cores ($CPU), $(free -g | awk '/^Mem/ { print $2 }') GiB, $(. /etc/os-release; echo "$PRETTY_NAME"), PostgreSQL $(pg_config --version | awk '{ print $2 }'); mode: $([ $QUICK = 1 ] && echo quick || echo full); during the run, CPU stolen by the host $STEAL %, some task stalled on I/O $IO_STALL % of the time; a synchronous 8 kB write took $SYNC_US0 µs at the start, ${SYNC_US_DLV:+$SYNC_US_DLV µs before the delivery section, }$(sync_write_us) µs at the end"
echo
row "what" "figure" "baseline (same run)" "ratio" "target"
row "---" "---:" "---" "---:" "---"
if want capture; then
row "1a. pg_recvlogical + test_decoding -> /dev/null, $(fmt $CAP_BULK) rows in 1,000-row tx" "$(fmt $CAP_bulk_TD) changes/s" "(ceiling)" "1.00" ""
row "1b. pg_recvlogical + wal2json v2 -> /dev/null, same WAL" "$(fmt $CAP_bulk_WJ) changes/s" "test_decoding" "$(ratio $CAP_bulk_WJ $CAP_bulk_TD)" ""
row "1c. pg_logical_slot_get_binary_changes + test_decoding, one call (in-process ceiling), same WAL" "$(fmt $CAP_bulk_SQ) changes/s" "pg_recvlogical + test_decoding" "$(ratio $CAP_bulk_SQ $CAP_bulk_TD)" ""
fi
if want ceiling; then
row "1d. endpoint (test/bench/receiver.c) alone, wrk, 4 connections" "$(fmt $WRK_1) req/s; $(fmt $(calc %.0f "$WRK_100 * 100")) records/s in 100-record bodies" "(ceiling)" "" ""
fi
if want capture; then
for w in bulk single mixed; do
    case $w in
        bulk) what="$(fmt $CAP_BULK) rows in 1,000-row transactions" ;;
        single) what="$(fmt $CAP_SINGLE) single-row transactions" ;;
        mixed) what="$(fmt $CAP_MIXED) changes, 40 % INSERT / 40 % UPDATE / 20 % DELETE, 100 per tx" ;;
    esac
    eval "td=\$CAP_${w}_TD wj=\$CAP_${w}_WJ eb=\$CAP_${w}_EB"
    row "2. capture, $what, 4 shards, stored" "$(fmt $eb) changes/s" "test_decoding $(fmt $td); wal2json $(fmt $wj)" "$(ratio $eb $td) ($(ratio $eb $wj) × wal2json)" "≥ 0.80: $(verdict "$eb / $td" '>=' 0.8)"
done
row "2. capture with a row filter keeping 10 % (set_table_filter), $(fmt $CAP_BULK) rows in 1,000-row tx" "$(fmt $CAP_FILTER) changes/s" "the same without the filter, alternating $(fmt $CAP_NOFILTER)" "$(ratio $CAP_FILTER $CAP_NOFILTER)" ""
fi
if want delivery; then
for shards in 1 4; do
    for batch in 1 100 1000; do
        eval "d=\$DLV_${shards}_${batch}"
        t=""
        [ "$batch" = 100 ] && t="≥ 0.80: $(verdict "$d / $CAP_bulk_EB" '>=' 0.8)"
        row "3. delivered, batch_size $batch, $shards shard(s), backlog of $(fmt $DLV_ROWS)" "$(fmt $d) events/s" "capture (2, bulk) $(fmt $CAP_bulk_EB)" "$(ratio $d $CAP_bulk_EB)" "$t"
    done
done
row "3. delivered with 1 % poison records (400, on_failure dead_letter), batch_size 100, 4 shards" "$(fmt $POISON_DLV) events/s" "the same records, all accepted $(fmt $POISON_CLEAN)" "$(ratio $POISON_DLV $POISON_CLEAN)" ""
for t in fc functiongraph lambda webhook; do
    row "3. delivered signed for $t, batch_size 100, 4 shards (median of 3)" "$(fmt "${SIGN_DLV[$t]}") events/s" "unsigned http, alternating $(fmt "${SIGN_PLAIN[$t]}")" "$(ratio "${SIGN_DLV[$t]}" "${SIGN_PLAIN[$t]}")" ""
done
declare -A RULE_WHAT=([json]="format json" [cloudevents]="format cloudevents" [transform]="format json with a VARIABLE transform (3 JSONPaths)" [filter]="format json with a filter keeping every event")
for t in json cloudevents transform filter; do
    row "3. delivered in ${RULE_WHAT[$t]}, batch_size 100, 4 shards (median of 3)" "$(fmt "${RULE_DLV[$t]}") events/s" "datahub, alternating $(fmt "${RULE_PLAIN[$t]}")" "$(ratio "${RULE_DLV[$t]}" "${RULE_PLAIN[$t]}")" ""
done
for batch in 100 1000; do
    row "3. delivered to Kafka (librdkafka's mock cluster, 3 brokers), batch_size $batch, 4 shards (median of 3)" "$(fmt "${KAFKA_DLV[$batch]}") messages/s" "http to the C endpoint, alternating, timed alike $(fmt "${KAFKA_HTTP[$batch]}")" "$(ratio "${KAFKA_DLV[$batch]}" "${KAFKA_HTTP[$batch]}")" ""
done
row "3. signing one request of $(fmt "$SIGN_BODY") bytes (100 records)" "ACS3 $SIGN_US_ACS3 µs, SDK-HMAC $SIGN_US_HW µs, webhook $SIGN_US_HOOK µs" "" "" ""
row "3. pipeline: WAL -> capture -> delivery, batch_size 100, 4 shards, $(fmt $PIPE_ROWS) rows" "$(fmt $PIPE) events/s" "capture (2, bulk) $(fmt $CAP_bulk_EB)" "$(ratio $PIPE $CAP_bulk_EB)" ""
for shards in 1 4; do
    for batch in 1 100 1000; do
        eval "d=\$SLOW_${shards}_${batch}"
        lim=$(( shards * batch * 50 ))
        row "3. delivered to an endpoint taking 20 ms, batch_size $batch, $shards shard(s)" "$(fmt $d) events/s" "limit shards × batch / 20 ms = $(fmt $lim)" "$(ratio $d $lim)" ""
    done
done
fi
if want latency; then
for rate in 1000 5000; do
    eval "p50=\$LAT_${rate}_p50 p95=\$LAT_${rate}_p95 p99=\$LAT_${rate}_p99 a50=\$LAT_${rate}_append_p50 a99=\$LAT_${rate}_append_p99 tps=\$LAT_${rate}_TPS pgb=\$LAT_${rate}_PGB"
    t=""
    [ "$rate" = 1000 ] && t="p99 ≤ 50 ms: $(verdict "$p99" '<=' 50)"
    eval "tx99=\$LAT_${rate}_TX99"
    row "4. commit -> receipt, pgbench -R $rate single-row tx/s (achieved $(fmt $tps)), batch_size 100, 4 shards" "p50 $p50 / p95 $p95 / p99 $p99 ms" "commit -> append p50 $a50 / p99 $a99 ms; the inserts' own latency p99 $tx99 ms (average from scheduled start $pgb ms)" "" "$t"
done
row "4. commit -> Kafka consumer (kafkajs), pgbench -R 1000 (achieved $(fmt $LATK_TPS)), batch_size 100, 4 shards" "p50 $LATK_p50 / p95 $LATK_p95 / p99 $LATK_p99 ms" "HTTP at 1,000/s: p99 $LAT_1000_p99 ms" "" ""
fi
if want write-path; then
for c in replica recvlogical event_bridge; do
    eval "t=\$TPCB_$c i=\$INS_$c"
    case $c in
        replica) what="wal_level = replica" ;;
        recvlogical) what="+ pg_recvlogical (test_decoding) consuming" ;;
        event_bridge) what="+ event_bridge stream (5 tables, 4 shards) and connector delivering" ;;
    esac
    tt=""; ti=""
    if [ $c = event_bridge ]; then
        tt="≥ 0.85: $(verdict "$t / $TPCB_logical" '>=' 0.85)"
        ti="≥ 0.85: $(verdict "$i / $INS_logical" '>=' 0.85)"
    fi
    row "5. pgbench TPC-B (scale 10, 4 clients), $what" "$(fmt $t) tps" "wal_level = logical, no consumer: $(fmt $TPCB_logical)" "$(ratio $t $TPCB_logical)" "$tt"
    row "5. pgbench single-row INSERT (4 clients), $what" "$(fmt $i) tps" "wal_level = logical, no consumer: $(fmt $INS_logical)" "$(ratio $i $INS_logical)" "$ti"
done
# CPU per inserted row, over all INSERT runs of a configuration.
us_per_tx() { calc "%.1f" "$1 * 1e6 / $(getconf CLK_TCK) / ${WP_TX[$2]}"; }
for c in logical recvlogical event_bridge; do
    case $c in
        logical) row "5. CPU per inserted row, all processes (INSERT runs, wal_level = logical, no consumer)" "$(us_per_tx "${WP_BUSY[$c]}" $c) µs" "" "" "" ;;
        recvlogical) row "5. CPU per inserted row, pg_recvlogical consuming" "$(us_per_tx $(( WP_CPU[$c:walsender] + WP_CPU[$c:pg_recvlogical] )) $c) µs" "walsender $(us_per_tx "${WP_CPU[$c:walsender]}" $c), pg_recvlogical $(us_per_tx "${WP_CPU[$c:pg_recvlogical]}" $c); all processes $(us_per_tx "${WP_BUSY[$c]}" $c)" "" "" ;;
        event_bridge) row "5. CPU per inserted row, event_bridge workers and endpoint" "$(us_per_tx $(( WP_CPU[$c:capture] + WP_CPU[$c:delivery] + WP_CPU[$c:endpoint] )) $c) µs" "capture $(us_per_tx "${WP_CPU[$c:capture]}" $c), delivery $(us_per_tx "${WP_CPU[$c:delivery]}" $c), endpoint $(us_per_tx "${WP_CPU[$c:endpoint]}" $c); all processes $(us_per_tx "${WP_BUSY[$c]}" $c)" "" "" ;;
    esac
done
fi
if want memory; then
row "6. capture worker, peak private RSS (RssAnon) during one $(fmt $BIG_ROWS)-row transaction" "$(fmt $((CAP_ANON / 1024))) MB (VmHWM $(fmt $((CAP_HWM / 1024))) MB)" "pg_recvlogical's walsender $(fmt $((WS_ANON / 1024))) MB (VmHWM $(fmt $((WS_HWM / 1024))) MB)" "$(ratio $CAP_ANON $WS_ANON)" "bounded, ≤ walsender + capture_buffer $(( BUF_KB / 1024 )) MB + 16 MB: $(verdict "$CAP_ANON" '<=' "$WS_ANON + $BUF_KB + 16384")"
row "6. delivery worker, peak private RSS, same transaction" "$(fmt $((DLV_ANON / 1024))) MB (VmHWM $(fmt $((DLV_HWM / 1024))) MB)" "" "" ""
row "6. capture rate of that transaction" "$(fmt $BIG_EB_CAP) changes/s" "pg_recvlogical + test_decoding $(fmt $BIG_TD)" "$(ratio $BIG_EB_CAP $BIG_TD)" ""
fi
if want trigger; then
row "7. trigger -> queue table -> loop POSTing one request per row" "$(fmt $TRG) events/s" "" "" ""
fi
if want trigger && want delivery; then
row "7. event_bridge delivered (batch_size 100, 4 shards) vs the trigger baseline" "$(fmt $DLV_4_100) events/s" "trigger baseline $(fmt $TRG)" "$(ratio $DLV_4_100 $TRG)" "≥ 20: $(verdict "$DLV_4_100 / $TRG" '>=' 20)"
fi
if want trigger; then
row "7. trigger baseline to the endpoint taking 20 ms" "$(fmt $TRG_SLOW) events/s" "" "" ""
fi
if want trigger && want delivery; then
row "7. event_bridge to the 20 ms endpoint (batch_size 100, 4 shards) vs the trigger baseline" "$(fmt $SLOW_4_100) events/s" "trigger baseline, 20 ms endpoint $(fmt $TRG_SLOW)" "$(ratio $SLOW_4_100 $TRG_SLOW)" "≥ 20: $(verdict "$SLOW_4_100 / $TRG_SLOW" '>=' 20)"
row "7. event_bridge batch_size 1, 1 shard (one request per change, like the trigger)" "$(fmt $DLV_1_1) events/s" "trigger baseline $(fmt $TRG)" "$(ratio $DLV_1_1 $TRG)" ""
fi
printf '%s\n' "${ROWS[@]}"
echo
if want write-path; then
    echo "event_bridge pending at the end of each write-path run (records not yet delivered): ${WP_EB_PENDING[*]}"
fi
