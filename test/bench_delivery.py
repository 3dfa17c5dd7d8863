#!/usr/bin/env python3
"""Connector benchmark: delivery throughput and commit-to-receipt latency.

Runs against a started server that has event_bridge in shared_preload_libraries
(see test/regress.conf), as a user that may create databases:

  python3 test/bench_delivery.py --host /tmp/sock --port 5432 [--rows 200000]
      [--rate 1000 --seconds 30]

1. Throughput: a 4-shard stream and a connector (batch_size 100) to the local
   receiver (test/receiver.py); --rows rows are inserted in 10,000-row
   transactions.  Reports the capture rate (records appended per second,
   from the records' system_time) and the delivery rate (records received
   per second, from the receiver's log), both over the same run, and their
   ratio.
2. Latency: pgbench inserts one row per transaction at a steady --rate for
   --seconds; for every record the receiver got, latency = receipt time minus
   commit time (field 5 of the record), split at the record's systemTime
   (append) into capture and delivery.  Reports p50, p90, p99 and max.

Each phase uses a fresh database, dropped at the end.  --endpoint null
replaces test/receiver.py with a minimal asyncio endpoint in this process
that only counts eventIds, to tell the worker's capacity from the
endpoint's (throughput phase only).
"""
import argparse, asyncio, json, os, subprocess, sys, tempfile, threading, time

HERE = os.path.dirname(os.path.abspath(__file__))


def psql(args, db, sql):
    out = subprocess.run(["psql", "-h", args.host, "-p", str(args.port), "-X", "-qAt",
                          "-v", "ON_ERROR_STOP=1", "-d", db, "-c", sql],
                         check=True, capture_output=True, text=True)
    return out.stdout.strip()


def start_receiver(workdir):
    log = os.path.join(workdir, "receiver.jsonl")
    port_file = os.path.join(workdir, "port")
    proc = subprocess.Popen([sys.executable, os.path.join(HERE, "receiver.py"), "--port", "0",
                             "--port-file", port_file, "--log", log],
                            stderr=subprocess.DEVNULL)
    for _ in range(500):
        if os.path.exists(port_file):
            break
        time.sleep(0.01)
    return proc, int(open(port_file).read()), log


class NullEndpoint:
    """An HTTP/1.1 keep-alive endpoint that answers 200 at once and counts
    the eventIds of the bodies it gets, with the first and last receipt time."""

    def __init__(self):
        self.records = 0
        self.requests = 0
        self.first = self.last = None
        ready = threading.Event()
        threading.Thread(target=self._run, args=(ready,), daemon=True).start()
        ready.wait()

    def _run(self, ready):
        loop = asyncio.new_event_loop()
        server = loop.run_until_complete(asyncio.start_server(self._serve, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        ready.set()
        loop.run_forever()

    async def _serve(self, reader, writer):
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                return                 # the client closed the connection
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            body = await reader.readexactly(length)
            now = time.time() * 1000.0
            self.first = self.first or now
            self.last = now
            self.requests += 1
            self.records += body.count(b'"eventId"')
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n{\"ok\":true}")


def read_log(log):
    with open(log) as f:
        return [json.loads(line) for line in f if line.endswith("\n")]


def setup(args, db, port, batch_size=100):
    psql(args, "postgres", f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
    psql(args, "postgres", f"CREATE DATABASE {db}")
    for sql in ["CREATE EXTENSION event_bridge",
                "CREATE TABLE bench (id bigserial PRIMARY KEY, v text, n int)",
                "ALTER TABLE bench REPLICA IDENTITY FULL",
                "SELECT event_bridge.create_stream('bench', ARRAY['bench']::regclass[], shard_count => 4)",
                f"SELECT event_bridge.create_connector('bench_fc', 'bench', "
                f"'http://127.0.0.1:{port}/fc', batch_size => {batch_size})"]:
        psql(args, db, sql)


def wait_delivered(args, db, total, timeout=600):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if psql(args, db, "SELECT coalesce(sum(delivered), 0) FROM event_bridge.shard_status") == str(total):
            return True
        time.sleep(0.2)
    return False


def throughput(args, workdir):
    db = "eb_bench_tput"
    proc = None
    if args.endpoint == "null":
        null = NullEndpoint()
        port = null.port
    else:
        proc, port, log = start_receiver(workdir)
    try:
        setup(args, db, port)
        t0 = time.time()
        for start in range(0, args.rows, 10000):
            psql(args, db, f"INSERT INTO bench (v, n) SELECT 'value ' || g, g "
                           f"FROM generate_series({start + 1}, {min(start + 10000, args.rows)}) g")
        t_inserted = time.time()
        if not wait_delivered(args, db, args.rows):
            sys.exit("throughput: not everything was delivered")
        t_done = time.time()
        first_ms, last_ms = map(int, psql(args, db,
            "SELECT min(system_time) || ' ' || max(system_time) FROM event_bridge.records").split())
        if proc is None:
            requests, got, recv_first, recv_last = null.requests, null.records, null.first, null.last
        else:
            entries = [e for e in read_log(log) if e["status"] == 200]
            requests = len(entries)
            got = sum(len(e["event_ids"]) for e in entries)
            recv_first = min(e["t_ms"] for e in entries)
            recv_last = max(e["t_ms"] for e in entries)
        capture_rate = args.rows / max((last_ms - first_ms) / 1000.0, 1e-3)
        delivery_rate = got / max((recv_last - recv_first) / 1000.0, 1e-3)
        print(f"throughput ({args.endpoint} endpoint): {args.rows} rows in {requests} requests "
              f"(mean batch {got / requests:.1f} records)")
        print(f"  inserts took {t_inserted - t0:.2f} s; all delivered after {t_done - t0:.2f} s")
        print(f"  capture rate : {capture_rate:10.0f} records/s "
              f"(first to last append {(last_ms - first_ms) / 1000.0:.2f} s)")
        print(f"  delivery rate: {delivery_rate:10.0f} records/s "
              f"(first to last receipt {(recv_last - recv_first) / 1000.0:.2f} s)")
        print(f"  end to end   : {args.rows / ((recv_last / 1000.0) - t0):10.0f} records/s "
              f"(first insert to last receipt)")
        print(f"  delivery / capture = {delivery_rate / capture_rate:.2f}")
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait()
        psql(args, "postgres", f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")


def latency(args, workdir):
    db = "eb_bench_lat"
    proc, port, log = start_receiver(workdir)
    try:
        setup(args, db, port)
        script = os.path.join(workdir, "insert.sql")
        with open(script, "w") as f:
            f.write("INSERT INTO bench (v, n) VALUES ('x', 1);\n")
        subprocess.run(["pgbench", "-h", args.host, "-p", str(args.port), "-n", "-f", script,
                        "-R", str(args.rate), "-T", str(args.seconds), "-c", "4", "-j", "2", db],
                       check=True, capture_output=True)
        total = int(psql(args, db, "SELECT count(*) FROM bench"))
        if not wait_delivered(args, db, total):
            sys.exit("latency: not everything was delivered")
        recs = [(e["t_ms"], r["system_time"], int(r["data"][5]))
                for e in read_log(log) if e["status"] == 200 for r in e["records"]]
        print(f"latency: {len(recs)} records at {args.rate}/s for {args.seconds} s (ms):")
        for name, values in [("commit to receipt", [t - c for t, s, c in recs]),
                             ("  commit to append (capture)", [s - c for t, s, c in recs]),
                             ("  append to receipt (delivery)", [t - s for t, s, c in recs])]:
            values.sort()
            pct = lambda p: values[min(len(values) - 1, int(p / 100.0 * len(values)))]
            print(f"  {name:31s} p50 {pct(50):6.1f}  p90 {pct(90):6.1f}  "
                  f"p99 {pct(99):6.1f}  max {values[-1]:6.1f}")
    finally:
        proc.terminate()
        proc.wait()
        psql(args, "postgres", f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--host", default=os.environ.get("PGHOST", "/tmp"))
    p.add_argument("--port", type=int, default=int(os.environ.get("PGPORT", 5432)))
    p.add_argument("--rows", type=int, default=200000)
    p.add_argument("--rate", type=int, default=1000)
    p.add_argument("--seconds", type=int, default=30)
    p.add_argument("--only", choices=["throughput", "latency"])
    p.add_argument("--endpoint", choices=["receiver", "null"], default="receiver")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        if args.only != "latency":
            throughput(args, workdir)
        if args.only != "throughput":
            latency(args, workdir)


if __name__ == "__main__":
    main()
