#!/usr/bin/env python3
"""The soak run behind test/soak.sh (which builds and installs first, as
root, then runs this as the non-root server user).  Python 3.11 stdlib.

  python3 test/soak.py [--minutes 5] [--seed S] [--rate 40] [--keep]
      [--dir /tmp/event_bridge-soak.XXXX] [--port P] [--drain-seconds 120]

A throw-away cluster (own data directory, 127.0.0.1 and a port in
57000-57999) with event_bridge built with FAULT_INJECTION=1; one receiver
(test/receiver.py) that injects a seeded schedule of endpoint faults; three
streams with 4, 7 and 1 shards over four tables; four connectors, DataHub and
DIS, with small timeouts, and a fifth, json events to a Kafka topic of
librdkafka's mock cluster (test/kafka/mock_cluster.c, 3 brokers); pgbench at a fixed rate: inserts, updates,
deletes, hot keys, TOASTed values, bulk inserts, transactions it rolls back
and savepoints it rolls back, both writing the marker ABORTED-MARKER, and
poison rows (POISON-MARKER) that the receiver refuses with 400, which the
three connectors that see them (on_failure 'dead_letter') set aside.
While the load runs, a seeded random sequence of faults: immediate stop and
restart, fast restart, kill -9 of the capture, delivery and launcher
workers, each fault point of the extension (once per arming), an endpoint
outage, brokers down (one, or all three), stop/start of a connector, a
column added under load.  At the end: the load stops, delivery drains
(bounded), then test/check_invariants.py checks every HTTP connector against
the receiver's log and the Kafka connector against its topic, read back with
kafkajs (test/kafka/consume.js), and SQL checks capture
exactly once against the tables (every committed row version once, in
order, in one shard; nothing rolled back).  Prints what was injected and
what held; exit 0 if everything held, 1 if not, 2 if the run itself broke.
Every wait is bounded.  The directory is removed unless --keep or a failure.
"""
import argparse
import hashlib
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
MARKER = "ABORTED-MARKER"
POISON = "POISON-MARKER"         # the receiver refuses records that hold it
SLOW_MS = 1500
SCHEDULE = "200:76,500:5,503:4,429:3,slow:3,reset:4,partial:5"
FAULT_POINTS = ["capture-before-commit", "capture-after-commit",
                "delivery-before-offset-commit", "delivery-mid-send"]
FAULT_KINDS = (["immediate-stop", "fast-restart", "kill9-capture", "kill9-delivery",
                "kill9-launcher"] + ["fault:" + p for p in FAULT_POINTS]
               + ["endpoint-outage", "broker-outage", "connector-stop-start", "add-column"])
BROKERS = 3
TOPIC = "soak"
KAFKA_CONNECTOR = "s7_kafka"
DB = "soak"


def pg_bin():
    if os.environ.get("PG_BIN"):
        return os.environ["PG_BIN"]
    try:
        return subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "/usr/lib/postgresql/15/bin"


BIN = pg_bin()
T0 = time.monotonic()


def say(msg):
    print(f"[{time.monotonic() - T0:6.1f}s] {msg}", flush=True)


def free_port(avoid=()):
    """A port of 57000-57999 free on 127.0.0.1 (tried in random order)."""
    ports = list(range(57000, 58000))
    random.SystemRandom().shuffle(ports)
    for port in ports:
        if port in avoid:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port in 57000-57999")


def stop_process(p):
    """SIGTERM, then SIGKILL after 10 s."""
    if p and p.poll() is None:
        p.terminate()
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(10)


class Soak:
    def __init__(self, args):
        self.args = args
        self.rng = random.Random(args.seed)
        self.dir = args.dir
        self.data = os.path.join(self.dir, "data")
        self.port = args.port or free_port()
        self.rport = free_port({self.port})
        self.log = os.path.join(self.dir, "receiver.jsonl")
        self.receiver = None
        self.receiver_starts = 0
        self.kafka = None           # the mock cluster
        self.bootstrap = None
        self.kafka_error = None
        self.stop_load = threading.Event()
        self.pgbench = None
        self.load_thread = None
        self.load_runs = 0
        self.load_counts = {}
        self.injected = {k: {"done": 0, "fired": 0, "not_fired": 0, "max_recovery": 0.0}
                         for k in FAULT_KINDS}
        self.columns_added = 0
        self.problems = []          # the run itself went wrong (exit 2)
        self.last_error = ""
        self.library = None
        self.fault_points_gone = None
        self.failures = []          # an invariant did not hold (exit 1)
        self.warnings = []
        self.disruptions = []       # [start_ms, end_ms] of crashes, restarts, outages

    # -- processes -------------------------------------------------------

    def run(self, cmd, timeout=120, check=True, **kw):
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
        if check and r.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({r.returncode}): {r.stderr.strip()}")
        return r

    def psql_cmd(self, db=DB):
        return [os.path.join(BIN, "psql"), "-X", "-q", "-A", "-t", "-F", "|",
                "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p", str(self.port), "-d", db]

    def sql(self, query, db=DB, timeout=120):
        return self.run(self.psql_cmd(db) + ["-c", query], timeout=timeout).stdout.strip()

    def try_sql(self, query, db=DB, timeout=10):
        """Like sql(), but None if it fails (the reason in last_error)."""
        try:
            r = self.run(self.psql_cmd(db) + ["-c", query], timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            self.last_error = f"psql timed out after {timeout} s"
            return None
        self.last_error = r.stderr.strip()
        return r.stdout.strip() if r.returncode == 0 else None

    def pg_ctl(self, *args, timeout=120, check=True):
        return self.run([os.path.join(BIN, "pg_ctl"), "-D", self.data,
                         "-l", os.path.join(self.dir, "server.log")] + list(args),
                        timeout=timeout, check=check)

    def server_running(self):
        return self.pg_ctl("status", check=False).returncode == 0

    def start_receiver(self):
        port_file = os.path.join(self.dir, "receiver.port")
        if os.path.exists(port_file):
            os.unlink(port_file)
        self.receiver_starts += 1
        out = open(os.path.join(self.dir, "receiver.out"), "a")
        self.receiver = subprocess.Popen(
            [sys.executable, os.path.join(HERE, "receiver.py"), "--port", str(self.rport),
             "--port-file", port_file, "--log", self.log, "--keep-body",
             "--poison", POISON,
             "--schedule", SCHEDULE, "--seed", str(self.args.seed * 1000 + self.receiver_starts),
             "--slow-ms", str(SLOW_MS)],
            stdout=out, stderr=out, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while not os.path.exists(port_file):
            if time.monotonic() > deadline or self.receiver.poll() is not None:
                raise RuntimeError("the receiver did not start (see receiver.out)")
            time.sleep(0.05)

    def stop_receiver(self):
        stop_process(self.receiver)
        self.receiver = None

    def start_kafka(self):
        """Builds test/kafka/mock_cluster.c and starts it: BROKERS brokers and
        the topic TOPIC with 8 partitions."""
        binary = os.path.join(self.dir, "mock_cluster")
        self.run(["cc", "-O2", "-Wall", "-Werror", "-o", binary,
                  os.path.join(HERE, "kafka", "mock_cluster.c"), "-lrdkafka"])
        bootstrap_file = os.path.join(self.dir, "kafka.bootstrap")
        out = open(os.path.join(self.dir, "kafka.out"), "a")
        self.kafka = subprocess.Popen(
            [binary, "--brokers", str(BROKERS), "--topic", TOPIC, "--partitions", "8",
             "--bootstrap-file", bootstrap_file],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=out, text=True)
        deadline = time.monotonic() + 30
        while not os.path.exists(bootstrap_file):
            if time.monotonic() > deadline or self.kafka.poll() is not None:
                raise RuntimeError("the Kafka mock cluster did not start (see kafka.out)")
            time.sleep(0.05)
        with open(bootstrap_file) as f:
            self.bootstrap = f.read().strip()

    def kafka_command(self, command):
        self.kafka.stdin.write(command + "\n")
        self.kafka.stdin.flush()
        answer = self.kafka.stdout.readline().strip()
        if answer != "ok":
            raise RuntimeError(f"the Kafka mock cluster refused {command!r}: {answer!r}")

    def stop_kafka(self):
        stop_process(self.kafka)
        self.kafka = None

    # -- set-up ----------------------------------------------------------

    def library_fingerprint(self):
        """sha256 of the installed event_bridge.so: other builds on the
        machine may replace it, and a restart then loads theirs."""
        try:
            libdir = self.run([os.path.join(BIN, "pg_config"), "--pkglibdir"]).stdout.strip()
            with open(os.path.join(libdir, "event_bridge.so"), "rb") as f:
                return hashlib.sha256(f.read()).hexdigest()
        except (OSError, RuntimeError):
            return None

    def setup(self):
        self.library = self.library_fingerprint()
        self.run([os.path.join(BIN, "initdb"), "-A", "trust", "-N", "-E", "UTF8",
                  "--locale=C", "-D", self.data])
        with open(os.path.join(HERE, "regress.conf")) as f:
            conf = f.read()
        conf += f"""
port = {self.port}
listen_addresses = '127.0.0.1'
unix_socket_directories = '{self.dir}'
restart_after_crash = on
max_connections = 50
log_line_prefix = '%m [%p] %b '
log_min_messages = log
"""
        with open(os.path.join(self.data, "postgresql.conf"), "a") as f:
            f.write(conf)
        self.pg_ctl("-w", "-t", "60", "start")
        if self.sql("SELECT count(*) FROM pg_settings WHERE name = 'event_bridge.fault_point'",
                    db="postgres") != "1":
            raise RuntimeError("event_bridge was built without FAULT_INJECTION=1 "
                               "(run as root: bash test/soak.sh, which builds it)")
        self.sql(f"CREATE DATABASE {DB}", db="postgres")
        self.start_receiver()
        self.start_kafka()
        url = f"http://127.0.0.1:{self.rport}"
        self.sql(f"""
CREATE EXTENSION event_bridge;
CREATE TABLE accounts (id bigserial PRIMARY KEY, k int NOT NULL, v int NOT NULL, note text);
CREATE INDEX ON accounts (k);
CREATE TABLE hot (k int PRIMARY KEY, v int NOT NULL);
CREATE TABLE docs (id int PRIMARY KEY, v int NOT NULL, body text);
CREATE TABLE nokey (id bigint NOT NULL, k int);
CREATE SEQUENCE nokey_id;
-- committed deletes, written in the deleting transaction; not captured
CREATE TABLE deleted (tbl text NOT NULL, id bigint NOT NULL, v int NOT NULL);
ALTER TABLE accounts REPLICA IDENTITY FULL;
ALTER TABLE hot REPLICA IDENTITY FULL;
ALTER TABLE docs REPLICA IDENTITY FULL;
ALTER TABLE nokey REPLICA IDENTITY FULL;
ALTER TABLE docs ALTER COLUMN body SET STORAGE EXTERNAL;   -- TOASTed out of line
INSERT INTO hot SELECT g, 0 FROM generate_series(1, 20) g;
INSERT INTO docs SELECT g, 0, (SELECT string_agg(md5(g::text || i::text), '')
                               FROM generate_series(1, 200) i)
  FROM generate_series(1, 20) g;
""")
        for stream, tables, shards in (("s4", "accounts, hot", 4),
                                       ("s7", "accounts, hot, docs, nokey", 7),
                                       ("s1", "hot, docs, nokey", 1)):
            arr = ", ".join(f"'{t.strip()}'" for t in tables.split(","))
            self.sql(f"SELECT event_bridge.create_stream('{stream}', ARRAY[{arr}]::regclass[], "
                     f"shard_count => {shards})")
        # Timeouts: 1 s (the receiver's slow replies, 1.5 s, time out) and
        # 3 s for s7_datahub (they arrive in time).  Poison rows go to
        # accounts, which s1 does not capture; the Kafka connector takes
        # them like any other row.  Its timeout (librdkafka's
        # message.timeout.ms) is shorter than the longer broker outages.
        self.connectors = [
            ("s4_datahub", "s4", f"{url}/s4_datahub",
             "format => 'datahub', batch_size => 20, timeout => '1 s', "
             "retry_interval => '100 ms', on_failure => 'dead_letter'"),
            ("s4_dis", "s4", f"{url}/s4_dis",
             "format => 'dis', batch_size => 50, batch_window => '20 ms', "
             "timeout => '1 s', retry_interval => '200 ms', on_failure => 'dead_letter'"),
            ("s7_datahub", "s7", f"{url}/s7_datahub",
             "format => 'datahub', batch_size => 100, timeout => '3 s', "
             "retry_interval => '150 ms', on_failure => 'dead_letter'"),
            ("s1_dis", "s1", f"{url}/s1_dis",
             "format => 'dis', batch_size => 10, timeout => '1 s', retry_interval => '100 ms'"),
            (KAFKA_CONNECTOR, "s7", f"kafka://{self.bootstrap}/{TOPIC}",
             "target => 'kafka', format => 'json', batch_size => 100, timeout => '2 s', "
             "retry_interval => '200 ms'"),
        ]
        for name, stream, endpoint, opts in self.connectors:
            self.sql(f"SELECT event_bridge.create_connector('{name}', '{stream}', "
                     f"'{endpoint}', {opts})")
        self.write_scripts()

    def write_scripts(self):
        scripts = {
            "insert": (30, r"""\set k random(1, 500)
BEGIN;
INSERT INTO accounts (k, v, note) VALUES (:k, 1, 'i');
INSERT INTO nokey (id, k) VALUES (nextval('nokey_id'), :k);
COMMIT;
"""),
            "update": (25, r"""\set k random(1, 500)
UPDATE accounts SET v = v + 1, note = 'u' WHERE id = (SELECT id FROM accounts WHERE k = :k ORDER BY id LIMIT 1);
"""),
            "hot": (20, r"""\set k random(1, 20)
UPDATE hot SET v = v + 1 WHERE k = :k;
"""),
            "delete": (8, r"""\set k random(1, 500)
WITH d AS (DELETE FROM accounts WHERE id = (SELECT min(id) FROM accounts WHERE k = :k) RETURNING id, v)
INSERT INTO deleted (tbl, id, v) SELECT 'accounts', id, v FROM d;
"""),
            "toast": (5, r"""\set d random(1, 20)
UPDATE docs SET v = v + 1 WHERE id = :d;
"""),
            "toast_new": (1, r"""\set d random(1, 20)
UPDATE docs SET v = v + 1, body = (SELECT string_agg(md5(random()::text), '') FROM generate_series(1, 200)) WHERE id = :d;
"""),
            "poison": (1, r"""\set k random(1, 500)
INSERT INTO accounts (k, v, note) VALUES (:k, 1, 'POISON-MARKER');
"""),
            "bulk": (1, r"""\set k random(1, 500)
INSERT INTO accounts (k, v, note) SELECT :k, 1, 'bulk' FROM generate_series(1, 300);
"""),
            "rollback": (6, r"""\set k random(1, 500)
BEGIN;
INSERT INTO accounts (k, v, note) VALUES (:k, 1, 'ABORTED-MARKER');
UPDATE hot SET v = v + 1 WHERE k = 1 + :k % 20;
UPDATE accounts SET v = v + 1, note = 'ABORTED-MARKER' WHERE id = (SELECT id FROM accounts WHERE k = :k ORDER BY id LIMIT 1);
DELETE FROM accounts WHERE id = (SELECT max(id) FROM accounts WHERE k = :k);
INSERT INTO nokey (id, k) VALUES (nextval('nokey_id'), -1);
UPDATE docs SET v = v + 1, body = 'ABORTED-MARKER' WHERE id = 1 + :k % 20;
ROLLBACK;
"""),
            "savepoint": (4, r"""\set k random(1, 500)
BEGIN;
INSERT INTO accounts (k, v, note) VALUES (:k, 1, 'sp-kept');
SAVEPOINT a;
INSERT INTO accounts (k, v, note) VALUES (:k, 1, 'ABORTED-MARKER');
UPDATE accounts SET v = v + 1, note = 'ABORTED-MARKER' WHERE id = (SELECT id FROM accounts WHERE k = :k ORDER BY id LIMIT 1);
ROLLBACK TO SAVEPOINT a;
SAVEPOINT b;
INSERT INTO nokey (id, k) VALUES (nextval('nokey_id'), :k);
RELEASE SAVEPOINT b;
COMMIT;
"""),
        }
        self.scripts = []
        for name, (weight, text) in scripts.items():
            path = os.path.join(self.dir, f"{name}.sql")
            with open(path, "w") as f:
                f.write(text)
            self.scripts.append((name, path, weight))

    # -- load ------------------------------------------------------------

    def load_loop(self, deadline):
        """pgbench at a fixed rate, started again whenever a crash or a
        restart ended it, until the deadline or stop_load."""
        while not self.stop_load.is_set() and time.monotonic() < deadline - 1:
            if self.try_sql("SELECT 1", timeout=5) != "1":
                time.sleep(0.2)
                continue
            seconds = max(1, min(20, int(deadline - time.monotonic())))
            cmd = [os.path.join(BIN, "pgbench"), "-n", "-c", "4", "-j", "2",
                   "-R", str(self.args.rate), "-T", str(seconds), "--max-tries", "5",
                   "-h", "127.0.0.1", "-p", str(self.port)]
            for _, path, weight in self.scripts:
                cmd += ["-f", f"{path}@{weight}"]
            cmd.append(DB)
            self.pgbench = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, text=True)
            self.load_runs += 1
            try:
                out, _ = self.pgbench.communicate(timeout=seconds + 60)
            except subprocess.TimeoutExpired:
                self.pgbench.kill()
                out, _ = self.pgbench.communicate()
            for num, count in re.findall(r"SQL script (\d+): .*\n - weight: .*\n - (\d+) transactions",
                                         out):
                name = self.scripts[int(num) - 1][0]
                self.load_counts[name] = self.load_counts.get(name, 0) + int(count)
            with open(os.path.join(self.dir, "pgbench.out"), "a") as f:
                f.write(out)

    def stop_pgbench(self):
        self.stop_load.set()
        p = self.pgbench
        if p and p.poll() is None:
            p.send_signal(signal.SIGINT)
        if self.load_thread:
            self.load_thread.join(90)
            if self.load_thread.is_alive() and self.pgbench and self.pgbench.poll() is None:
                self.pgbench.kill()
                self.load_thread.join(30)

    # -- faults ----------------------------------------------------------

    def workers(self):
        out = self.try_sql("SELECT backend_type, pid FROM pg_stat_activity"
                           " WHERE backend_type LIKE 'event_bridge %'"
                           f" AND (datname = '{DB}' OR datname IS NULL)", db="postgres")
        if out is None:
            return None
        w = {}
        for line in filter(None, out.split("\n")):
            kind, pid = line.split("|")
            w[kind.split()[-1]] = int(pid)
        return w

    def wait_recovered(self, what, old=None, timeout=90):
        """Until the server accepts connections and the launcher, capture
        and delivery workers run (new ones, none of the pids in old, after a
        crash); returns the seconds it took."""
        start = time.monotonic()
        old = set((old or {}).values())
        while time.monotonic() - start < timeout:
            w = self.workers()
            if w and {"launcher", "capture", "delivery"} <= set(w) and not old & set(w.values()):
                return time.monotonic() - start
            time.sleep(0.1)
        self.problems.append(f"{what}: the server and its workers were not back within {timeout} s")
        raise RuntimeError(self.problems[-1])

    def set_fault_point(self, name):
        """Arms (or with None disarms) a fault point; tries again while the
        server restarts."""
        value = f"'{name}'" if name else "DEFAULT"
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if name is None and self.try_sql("SELECT count(*) FROM pg_settings WHERE name ="
                                             " 'event_bridge.fault_point'", db="postgres") == "0":
                return          # a build without fault points: nothing to disarm
            if self.try_sql(f"ALTER SYSTEM SET event_bridge.fault_point = {value}",
                            db="postgres", timeout=30) is not None \
                    and self.try_sql("SELECT pg_reload_conf()", db="postgres") is not None:
                return
            time.sleep(0.2)
        error = self.last_error
        activity = self.try_sql("SELECT pid, backend_type, state, wait_event_type, wait_event,"
                                " now() - query_start, left(query, 60) FROM pg_stat_activity",
                                db="postgres", timeout=30)
        raise RuntimeError(f"could not set event_bridge.fault_point to {value} within 90 s: "
                           f"{error}\npg_stat_activity:\n{activity or self.last_error}")

    def inject(self, kind):
        rec = self.injected[kind]
        detail = ""
        start = time.monotonic()
        start_ms = time.time() * 1000
        old = self.workers()
        fired_file = os.path.join(self.data, "event_bridge.fault_fired")
        if kind == "immediate-stop":
            self.pg_ctl("-m", "immediate", "stop")
            time.sleep(self.rng.uniform(0, 1.5))
            self.pg_ctl("-w", "-t", "90", "start")
        elif kind == "fast-restart":
            self.pg_ctl("-m", "fast", "-w", "-t", "90", "restart")
        elif kind.startswith("kill9-"):
            w = self.workers() or {}
            which = kind.split("-", 1)[1]
            pid = w.get(which)
            if pid is None:
                rec["not_fired"] += 1
                say(f"{kind}: no {which} worker to kill")
                return
            os.kill(pid, signal.SIGKILL)   # a child of our own postmaster
            detail = f" (pid {pid})"
        elif kind.startswith("fault:"):
            point = kind.split(":", 1)[1]
            if self.try_sql("SELECT count(*) FROM pg_settings"
                            " WHERE name = 'event_bridge.fault_point'", db="postgres") == "0":
                # A restart loaded another build: see the summary.
                self.fault_points_gone = self.fault_points_gone or f"{time.monotonic() - T0:.0f} s"
                rec["not_fired"] += 1
                say(f"{kind}: skipped, the server's event_bridge has no fault points any more")
                return
            if os.path.exists(fired_file):
                os.unlink(fired_file)
            self.set_fault_point(point)
            fired = False
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                try:
                    with open(fired_file) as f:
                        fired = f.read().strip() == point
                except FileNotFoundError:
                    pass
                if fired:
                    break
                time.sleep(0.05)
            rec["fired" if fired else "not_fired"] += 1
            if fired:        # the server restarts: wait for new workers
                self.wait_recovered(kind, old)
            self.set_fault_point(None)
            detail = "" if fired else " (did not fire within 20 s)"
            if not fired:
                old = None
        elif kind == "endpoint-outage":
            self.stop_receiver()
            down = self.rng.uniform(1, 4)
            time.sleep(down)
            self.start_receiver()
            detail = f" ({down:.1f} s down)"
        elif kind == "broker-outage":
            brokers = self.rng.choice([[self.rng.randint(1, BROKERS)], list(range(1, BROKERS + 1))])
            for b in brokers:
                self.kafka_command(f"down {b}")
            down = self.rng.uniform(1, 4)
            time.sleep(down)
            for b in brokers:
                self.kafka_command(f"up {b}")
            detail = f" (broker{'s' if len(brokers) > 1 else ''} {','.join(map(str, brokers))}," \
                     f" {down:.1f} s down)"
        elif kind == "connector-stop-start":
            name = self.rng.choice(self.connectors)[0]
            self.sql(f"SELECT event_bridge.stop_connector('{name}')")
            time.sleep(self.rng.uniform(0.2, 2))
            self.sql(f"SELECT event_bridge.start_connector('{name}')")
            detail = f" ({name})"
        elif kind == "add-column":
            self.columns_added += 1
            table = self.rng.choice(["accounts", "hot", "docs"])
            self.sql(f"ALTER TABLE {table} ADD COLUMN extra_{self.columns_added} text "
                     f"DEFAULT 'x{self.columns_added}'", timeout=60)
            detail = f" ({table})"
        rec["done"] += 1
        crashed = kind in ("immediate-stop", "fast-restart") or kind.startswith("kill9-") \
            or (kind.startswith("fault:") and old is not None)
        self.wait_recovered(kind, old if crashed else None)
        took = time.monotonic() - start
        if crashed or kind == "endpoint-outage":     # a batch may be acked twice
            self.disruptions.append([start_ms, time.time() * 1000])
        rec["max_recovery"] = max(rec["max_recovery"], took)
        say(f"{kind}{detail}: back in {took:.1f} s")

    def fault_loop(self, deadline):
        bag = []
        lo, hi = self.args.fault_gap
        while True:
            gap = self.rng.uniform(lo, hi)
            if time.monotonic() + gap > deadline - 2:
                break
            time.sleep(gap)
            if not bag:                      # every kind once per round
                bag = list(FAULT_KINDS)
                self.rng.shuffle(bag)
            self.inject(bag.pop())

    # -- the end ---------------------------------------------------------

    def drain(self):
        self.stop_pgbench()
        say("load stopped")
        if not self.server_running():
            self.pg_ctl("-w", "-t", "90", "start")
        self.wait_recovered("before draining")
        self.set_fault_point(None)
        if self.receiver is None or self.receiver.poll() is not None:
            self.start_receiver()
        deadline = time.monotonic() + self.args.drain_seconds
        if self.sql(f"SELECT event_bridge.wait_for_capture('{self.args.drain_seconds} s')",
                    timeout=self.args.drain_seconds + 30) != "t":
            self.failures.append("capture did not catch up within the drain time")
        last = None
        while time.monotonic() < deadline:
            out = self.sql("SELECT coalesce(sum(pending), 0), count(*) FILTER (WHERE state <> 'RUNNING')"
                           " FROM event_bridge.shard_status")
            pending, not_running = map(int, out.split("|"))
            if pending == 0:
                say(f"drained in {self.args.drain_seconds - (deadline - time.monotonic()):.1f} s")
                return True
            if not_running:
                self.failures.append(f"{not_running} connector shard(s) not RUNNING after the run")
                break
            if last is None or time.monotonic() - last > 10:
                say(f"draining: {pending} records pending")
                last = time.monotonic()
            time.sleep(0.5)
        self.failures.append("delivery did not drain within "
                             f"{self.args.drain_seconds} s: "
                             + self.sql("SELECT string_agg(connector_name || ' ' || pending, ', ')"
                                        " FROM event_bridge.connector_status WHERE pending > 0"))
        return False

    def check_delivery(self):
        disruptions = os.path.join(self.dir, "disruptions.json")
        with open(disruptions, "w") as f:
            json.dump(self.disruptions, f)
        http = [a for name, _, _, _ in self.connectors if name != KAFKA_CONNECTOR
                for a in ("--connector", name)]
        report = self.checker([
            "--log", self.log, "--poison", POISON, "--slow-ms", str(SLOW_MS),
            "--disruptions", disruptions] + http)
        topic = self.read_topic()
        kafka = topic and self.checker(["--log", topic, "--kafka", "--connector", KAFKA_CONNECTOR])
        if report is None or kafka is None:
            return None
        self.kafka_error = self.sql("SELECT coalesce(last_error, 'none') FROM"
                                    " event_bridge.connector_status WHERE connector_name ="
                                    f" '{KAFKA_CONNECTOR}'")
        report["connectors"].update(kafka["connectors"])
        report["violations"] += kafka["violations"]
        report["ok"] = report["ok"] and kafka["ok"]
        sys.path.insert(0, HERE)
        import check_invariants
        check_invariants.print_text(report, sys.stdout)
        if not report["ok"]:
            self.failures.append(f"{len(report['violations'])} delivery invariant(s) violated")
        return report

    def checker(self, args):
        """test/check_invariants.py's JSON report, or None if it broke."""
        cmd = [sys.executable, os.path.join(HERE, "check_invariants.py"), "--json",
               "-h", "127.0.0.1", "-p", str(self.port), "-d", DB,
               "--forbid-substring", MARKER, "--require-quiescent"] + args
        self.checker_cmd += ("; python3 " if self.checker_cmd else "") + " ".join(cmd[1:2] + cmd[3:])
        r = self.run(cmd, timeout=900, check=False)
        if r.returncode not in (0, 1):
            self.problems.append(f"check_invariants.py failed: {r.stderr.strip()}")
            return None
        return json.loads(r.stdout)

    def read_topic(self):
        """Reads the whole topic back with kafkajs (test/kafka/consume.js)
        until no message came for 5 s; returns the file of its lines."""
        path = os.path.join(self.dir, "topic.jsonl")
        with open(path, "w") as out, open(os.path.join(self.dir, "kafka.out"), "a") as err:
            try:
                subprocess.run(["node", os.path.join(HERE, "kafka", "consume.js"),
                                "--brokers", self.bootstrap, "--topic", TOPIC,
                                "--count", "1000000000", "--timeout-ms", "300000",
                                "--idle-ms", "5000"],
                               stdout=out, stderr=err, stdin=subprocess.DEVNULL, timeout=330)
            except (OSError, subprocess.TimeoutExpired) as e:
                self.problems.append(f"could not read the Kafka topic back: {e}")
                return None
        return path

    def check_capture(self):
        """Every committed row version captured once, in order, in one shard,
        per stream and table; nothing of a rolled-back transaction."""
        results = []
        streams = self.sql("SELECT stream_id, stream_name, array_to_string(tables, ',')"
                           " FROM event_bridge.streams ORDER BY stream_name")
        # table: (key position, version position, first before-image
        # version, the table's first columns in data order)
        versioned = {"accounts": (8, 10, 1, ["id", "k", "v", "note"]),
                     "hot": (8, 9, 0, ["k", "v"]),
                     "docs": (8, 9, 0, ["id", "v", "body"])}
        for line in streams.split("\n"):
            sid, sname, tables = line.split("|")
            for table in tables.split(","):
                table = table.strip()
                if table in versioned:
                    kpos, vpos, vfirst, cols = versioned[table]
                    differs = " OR ".join(f"l.d->>{8 + i} IS DISTINCT FROM t.{c}::text"
                                          for i, c in enumerate(cols))
                    q = f"""
WITH r AS MATERIALIZED (
  SELECT r.shard_id, r.sequence, r.operation, d->>6 AS bf, d->>7 AS af,
         (d->>{kpos})::bigint AS id, (d->>{vpos})::int AS v, d
    FROM event_bridge.records r, LATERAL (SELECT r.data::jsonb AS d) j
   WHERE r.stream_id = {sid} AND r.table_name = 'public.{table}'),
truth AS (SELECT {'id' if table != 'hot' else 'k'}::bigint AS id, v AS vmax, false AS deleted FROM {table}
          UNION ALL SELECT id, v, true FROM deleted WHERE tbl = '{table}'),
want_after AS (SELECT id, g AS v FROM truth, generate_series(1, vmax) g),
got_after AS (SELECT id, v, count(*) AS n FROM r WHERE af = 'Y' GROUP BY 1, 2),
want_before AS (SELECT id, g AS v FROM truth, generate_series({vfirst}, vmax - 1) g),
got_before AS (SELECT id, v, count(*) AS n FROM r WHERE operation = 'U' AND bf = 'Y' GROUP BY 1, 2),
got_del AS (SELECT id, v, count(*) AS n FROM r WHERE operation = 'D' GROUP BY 1, 2)
SELECT (SELECT count(*) FROM want_after w FULL JOIN got_after g USING (id, v)
         WHERE g.n IS DISTINCT FROM 1 OR w.id IS NULL),
       (SELECT count(*) FROM want_before w FULL JOIN got_before g USING (id, v)
         WHERE g.n IS DISTINCT FROM 1 OR w.id IS NULL),
       (SELECT count(*) FROM (SELECT id, vmax FROM truth WHERE deleted) t FULL JOIN got_del g USING (id)
         WHERE g.n IS DISTINCT FROM 1 OR t.id IS NULL OR g.v <> t.vmax),
       (SELECT count(*) FROM (SELECT id FROM r GROUP BY id HAVING count(DISTINCT shard_id) > 1) x),
       (SELECT count(*) FROM (SELECT v, row_number() OVER (PARTITION BY id ORDER BY sequence) AS n
                                FROM r WHERE af = 'Y') x WHERE v <> n),
       (SELECT count(*) FROM (SELECT DISTINCT ON (id) id, d FROM r WHERE af = 'Y'
                                ORDER BY id, sequence DESC) l
                JOIN {table} t ON t.{'k' if table == 'hot' else 'id'} = l.id WHERE {differs}),
       (SELECT count(*) FROM r),
       (SELECT count(*) FROM want_after),
       (SELECT count(*) FROM truth WHERE deleted)"""
                    vals = list(map(int, self.sql(q, timeout=600).split("|")))
                    bad = dict(zip(["after images not exactly once", "before images not exactly once",
                                    "deletes not exactly once", "keys in more than one shard",
                                    "keys out of order", "rows whose latest after image differs from the table"],
                                   vals[:6]))
                    n_records, n_versions, n_deleted = vals[6:9]
                    what = (f"stream {sname} table {table}: {n_versions} committed row versions"
                            f" ({n_deleted} deleted rows), {n_records} records")
                else:        # nokey: inserts only, no key: shard 0
                    q = f"""
WITH c AS (SELECT (r.data::jsonb->>8)::bigint AS id, count(*) AS n, max(r.shard_id) AS shard
             FROM event_bridge.records r
            WHERE r.stream_id = {sid} AND r.table_name = 'public.{table}' GROUP BY 1)
SELECT (SELECT count(*) FROM {table} t FULL JOIN c USING (id) WHERE c.n IS DISTINCT FROM 1 OR t.id IS NULL),
       (SELECT count(*) FROM c WHERE shard <> 0), (SELECT count(*) FROM {table})"""
                    vals = list(map(int, self.sql(q, timeout=600).split("|")))
                    bad = {"rows not captured exactly once": vals[0],
                           "rows of a keyless table outside shard 0": vals[1]}
                    what = f"stream {sname} table {table}: {vals[2]} committed rows"
                held = all(v == 0 for v in bad.values())
                results.append((held, what, {k: v for k, v in bad.items() if v}))
                if not held:
                    self.failures.append(f"capture: {what}: {bad}")
        gaps = self.sql("""
SELECT coalesce(string_agg(format('%s shard %s', s.stream_name, h.shard_id), ', '), '')
  FROM event_bridge.streams s JOIN event_bridge.shards h USING (stream_id)
  LEFT JOIN LATERAL (SELECT count(*) n, max(sequence) mx, min(sequence) mn FROM event_bridge.records r
                      WHERE r.stream_id = h.stream_id AND r.shard_id = h.shard_id) r ON true
 WHERE NOT (r.n = h.next_sequence AND coalesce(r.mx, -1) = h.next_sequence - 1 AND coalesce(r.mn, 0) = 0)""")
        results.append((gaps == "", "sequences gapless from 0 in every shard of every stream",
                        {"shards with gaps": gaps} if gaps else {}))
        if gaps:
            self.failures.append(f"capture: gaps in {gaps}")
        return results

    def check_library(self):
        if self.fault_points_gone:
            self.problems.append(
                f"from {self.fault_points_gone} on the server ran an event_bridge without fault "
                "points: another build (without FAULT_INJECTION=1) was installed meanwhile and a "
                "restart loaded it; the fault points after that were skipped")
        now = self.library_fingerprint()
        if self.library and now and now != self.library:
            self.warnings.append("the installed event_bridge.so changed during the run (another "
                                 "build on this machine); restarts after that ran the new build")

    def summary(self, report, capture):
        print("\n== soak summary: seed %d, %.1f minutes of load at %d transactions/s, port %d"
              % (self.args.seed, self.args.minutes, self.args.rate, self.port))
        print("injected:")
        total = 0
        for kind, r in self.injected.items():
            total += r["done"]
            extra = ""
            if kind.startswith("fault:"):
                extra = f", fired {r['fired']}" + (f", did not fire {r['not_fired']}"
                                                    if r["not_fired"] else "")
            elif r["not_fired"]:
                extra = f", skipped {r['not_fired']}"
            print(f"  {kind:38} {r['done']:3}{extra}"
                  + (f"  (back within {r['max_recovery']:.1f} s)" if r["done"] else ""))
        print(f"  {'total':38} {total:3}")
        if report:
            faults = {}
            for c in report["connectors"].values():
                for k, v in c["stats"]["faults"].items():
                    faults[k] = faults.get(k, 0) + v
            reqs = sum(c["stats"]["requests"] for c in report["connectors"].values())
            print(f"  endpoint replies of the seeded schedule ({SCHEDULE}, slow = {SLOW_MS} ms):"
                  f" {reqs} requests, " + ", ".join(f"{k} {v}" for k, v in sorted(faults.items())))
        print("load (pgbench transactions completed, %d runs): " % self.load_runs
              + ", ".join(f"{k} {v}" for k, v in self.load_counts.items()))
        print("held:" if not self.failures and not self.problems else "results:")
        for held, what, bad in capture or []:
            print(f"  {'ok  ' if held else 'FAIL'} capture exactly once: {what}"
                  + (f": {bad}" if bad else ""))
        if report:
            for name, c in report["connectors"].items():
                s = c["stats"]
                bad = [k for k, v in c["checks"].items() if v == "fail"]
                if name == KAFKA_CONNECTOR:
                    copies = (f"{s['messages']} messages in the topic, {s['distinct_messages']}"
                              f" distinct (last error: {self.kafka_error})")
                else:
                    copies = (f"{s['duplicate_batches']} duplicate batches ({s['resent_after_lost_ack']}"
                              f" after a lost ack, {s['acked_twice']} acked twice)")
                print(f"  {'FAIL' if bad else 'ok  '} delivery {name} ({c['format']}, "
                      f"{c['shards']} shards): {s['distinct_acked']} records, {copies}"
                      + (f"; failed: {', '.join(bad)}" if bad else "; "
                         + ", ".join(k for k, v in c["checks"].items() if v.startswith("ok"))))
        for f in self.failures:
            print(f"  FAIL {f}")
        for p in self.problems:
            print(f"  BROKEN {p}")
        for w in self.warnings:
            print(f"  WARNING {w}")

    def cleanup(self, keep):
        self.stop_load.set()
        if self.pgbench and self.pgbench.poll() is None:
            self.pgbench.kill()
        self.stop_receiver()
        self.stop_kafka()
        if os.path.exists(os.path.join(self.data, "postmaster.pid")):
            self.pg_ctl("-m", "fast", "-t", "60", "stop", check=False)
            if self.server_running():
                self.pg_ctl("-m", "immediate", "stop", check=False)
        if keep:
            print(f"kept {self.dir}; to look again: {BIN}/pg_ctl -D {self.data} -l "
                  f"{self.dir}/server.log start; python3 {self.checker_cmd}")
        else:
            shutil.rmtree(self.dir, ignore_errors=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--minutes", type=float, default=5)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--rate", type=int, default=40, help="pgbench transactions per second")
    p.add_argument("--dir", help="work directory (default: a new /tmp/event_bridge-soak.*)")
    p.add_argument("--port", type=int, help="server port (default: a free one of 57000-57999)")
    p.add_argument("--drain-seconds", type=int, default=120)
    p.add_argument("--fault-gap", default="2,6", help="min,max seconds between faults")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    args = p.parse_args()
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(1, 100000)
    args.fault_gap = tuple(float(x) for x in args.fault_gap.split(","))
    if not args.dir:
        args.dir = tempfile.mkdtemp(prefix="event_bridge-soak.", dir="/tmp")
    os.makedirs(args.dir, exist_ok=True)

    soak = Soak(args)
    soak.checker_cmd = ""
    status = 2
    signal.signal(signal.SIGTERM, lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))
    say(f"soak: seed {args.seed}, {args.minutes} minutes, directory {args.dir}, "
        f"server port {soak.port}, receiver port {soak.rport}")
    report = capture = None
    try:
        soak.setup()
        say("cluster, receiver, Kafka mock cluster, 3 streams and 5 connectors ready;"
            " load and faults start")
        deadline = time.monotonic() + args.minutes * 60
        soak.load_thread = threading.Thread(target=soak.load_loop, args=(deadline,), daemon=True)
        soak.load_thread.start()
        soak.fault_loop(deadline)
        while time.monotonic() < deadline:
            time.sleep(0.2)
        soak.drain()
        report = soak.check_delivery()
        capture = soak.check_capture()
        soak.check_library()
        status = 1 if soak.failures else 2 if soak.problems else 0
    except (RuntimeError, subprocess.TimeoutExpired, OSError) as e:
        soak.problems.append(str(e))
    except KeyboardInterrupt:
        soak.problems.append("interrupted")
    finally:
        soak.summary(report, capture)
        if status == 0:
            print("== soak passed: every invariant held")
        else:
            print("== soak FAILED" if status == 1 else "== soak BROKEN (the run itself failed)")
        soak.cleanup(args.keep or status != 0)
    return status


if __name__ == "__main__":
    sys.exit(main())
