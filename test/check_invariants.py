#!/usr/bin/env python3
"""Invariant checker: a receiver's log against event_bridge's catalog.

Compares what test/receiver.py logged (one JSON line per POST) with the
source of truth in the database (event_bridge.records, the shards' counters
and the status views) for one or more connectors, and reports every
violation (exit 1) or a short summary (exit 0).  Python 3.11 stdlib only; it
talks to the database by running psql with the connection options given.

Usage:
  python3 test/check_invariants.py --log RECEIVER.jsonl
      [-h HOST] [-p PORT] [-d DBNAME] [-U USER] [--psql PATH]
      [--connector NAME ...] [--forbid-substring S ...]
      [--slow-ms 5000] [--delay-ms 0] [--log-not-fresh]
      [--require-quiescent] [--disruptions FILE] [--max-examples 5] [--json]

  e.g. after a TAP run:
    python3 test/check_invariants.py -h /tmp/xyz -p 5432 -d postgres \\
        --log tmp_check/.../receiver.jsonl --connector crash_fc
  by hand against a running soak (test/soak.sh --keep prints the command):
    python3 test/check_invariants.py -h 127.0.0.1 -p 57001 -d soak \\
        --log /tmp/event_bridge-soak.XXXX/receiver.jsonl \\
        --forbid-substring ABORTED-MARKER --require-quiescent

Connectors and log lines.  Without --connector every connector of the
database is checked.  A connector's requests are the log lines whose path
(with its query) is the path of the connector's endpoint, so connectors that
share one receiver need distinct endpoint paths (http://127.0.0.1:P/<name>);
two checked connectors with the same path are refused.  Check connectors
with their own receivers (their own logs) in separate runs.

Outcome of a request, as the client (the delivery worker) saw it:
  ack     a 2xx the client received: status 2xx and not an injected
          "partial" reply, nor a "slow" one that took --slow-ms + --delay-ms
          at or past the connector's timeout;
  lost    the receiver answered 2xx (and so processed the records) but the
          client could not have seen it (partial, or slow past the timeout):
          the client must send the same batch again;
  failed  anything else (non-2xx, reset, body cut off).
"answered" below means ack or lost.

Invariants (ids in brackets, as in --json):
  [missing]    every record of the connector's stream, per shard, from the
               connector's first position (the first record appended at or
               after its start time, skip_before) to delivered_sequence (so
               everything once pending = 0), was acked at least once.
  [content]    every decoded request (any outcome) carries the records'
               data as stored in event_bridge.records (DataHub: the data
               string; DIS: the base64-decoded data) and, for DataHub,
               their systemTime; an eventId that is not stored though its
               shard's records around it are, or (at rest) beyond its shard's
               head, is a violation; records removed by retention are
               counted as not verifiable.  With bodies in the log (receiver
               --keep-body) the data strings are compared byte for byte, and
               the envelope is checked too: eventSourceARN and region;
               ShardID, next_partition_cursor, partition_key, StreamName.
  [aborted]    --forbid-substring S (e.g. a marker the load writes only in
               transactions or savepoints it rolls back) appears in no
               delivered record and in no stored record of the database.
  [shard_order] per shard, no request starts beyond the highest answered
               sequence + 1 (nothing is sent before the previous batch got
               its 2xx), the first request starts at the first position,
               and so the answered sequences, deduplicated, are gapless and
               first arrive in increasing order.
  [key_order]  per partition key (event_bridge.records.partition_key, the
               DIS partition_key): all records in one shard, first answers
               in increasing sequence order.
  [duplicates] a request that repeats answered eventIds is a resend of the
               shard's latest answered batch: same first eventId and the
               same eventIds (DataHub: the same body hash; DIS: the same
               body but millis_behind_latest, compared when bodies are
               logged), or, after a restart re-read it, that batch extended
               by later records.  The number of duplicate batches is
               reported, split into resends after a lost ack and batches
               acked twice (offset commit lost in a crash).  With
               --disruptions FILE (a JSON list of [start_ms, end_ms] epoch
               windows of crashes, restarts and endpoint outages, as
               test/soak.py writes it) a batch acked twice must have a
               window between its two sendings.
  [batch_shape] a request holds 1..batch_size consecutive records of the
               shard it names, in the connector's format.
  [status]     shard_status.pending = max(next_sequence - 1 -
               delivered_sequence, 0) and delivered_sequence <= next_sequence
               - 1; when quiescent (see below): delivered_sequence = the
               highest acked sequence of the shard (first position - 1 if
               none), nothing acked beyond it, and connector_status.delivered
               = the number of distinct acked eventIds, unless
               --log-not-fresh or a reset_connector happened
               (position_generation > 0).
  [storage]    per shard of the connector's stream, the stored sequences
               are contiguous and end at next_sequence - 1, and record ids
               never decrease along the sequence.

Quiescence.  The checker reads the status views, then the records and the
log, then the views again.  Every offset committed before the first read was
logged before, so [missing] is sound on a live system.  The exact [status]
comparisons need a connector at rest: both reads equal (offsets, counters,
attempts) and pending = 0 in every shard.  Otherwise they are skipped with a
note, or are a violation with --require-quiescent.

Output: one line per connector and invariant ("ok", "FAIL" with up to
--max-examples examples, "skip" with the reason), or with --json one JSON
document: {"ok", "violations": [{"connector", "invariant", "message",
"examples"}], "connectors": {name: {"checks": {id: "ok"|"fail"|"skip: ..."},
"stats": {...}}}}.  Exit 0 if every invariant held, 1 if one did not, 2 on
a usage or database error.
"""
import argparse
import base64
import csv
import hashlib
import io
import json
import os
import subprocess
import sys
import urllib.parse

csv.field_size_limit(1 << 30)


class UsageError(Exception):
    pass


def digest(text):
    """A short digest of a str (UTF-8) or bytes."""
    if isinstance(text, str):
        text = text.encode("utf-8", "surrogatepass")
    return hashlib.blake2b(text, digest_size=16).digest()


def canonical(value):
    """Digest of a decoded JSON value, independent of its JSON spelling."""
    return digest(json.dumps(value, ensure_ascii=False, separators=(",", ":")))


def data_digest(raw):
    """Digest of the canonical form of a stored record's data text."""
    try:
        return canonical(json.loads(raw))
    except ValueError:
        return digest(raw)


def sql_literal(s):
    if "\0" in s:
        raise UsageError("a string for SQL must not contain NUL")
    return "'" + s.replace("'", "''") + "'"


class Db:
    """Runs queries through psql; rows come back as lists of strings."""

    def __init__(self, args):
        self.cmd = [args.psql, "-X", "-q", "--csv", "-v", "ON_ERROR_STOP=1"]
        for opt, val in (("-h", args.host), ("-p", args.port),
                         ("-d", args.dbname), ("-U", args.user)):
            if val:
                self.cmd += [opt, str(val)]
        self.env = dict(os.environ, PGCLIENTENCODING="UTF8", PGOPTIONS="-c statement_timeout=0")

    def rows(self, sql):
        """Yields the rows of a query (header skipped), streaming."""
        p = subprocess.Popen(self.cmd + ["-c", sql], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, env=self.env)
        out = io.TextIOWrapper(p.stdout, encoding="utf-8", newline="")
        reader = csv.reader(out)
        header = None
        try:
            for row in reader:
                if header is None:
                    header = row
                    continue
                yield row
        finally:
            err = p.stderr.read().decode("utf-8", "replace")
            rc = p.wait()
        if rc != 0:
            raise UsageError(f"psql failed ({rc}): {err.strip()}\nquery: {sql}")

    def all(self, sql):
        return list(self.rows(sql))


def nint(s):
    return None if s is None or s == "" else int(s)


# ---------------------------------------------------------------------------
# The catalog
# ---------------------------------------------------------------------------

class Shard:
    def __init__(self, shard_id):
        self.shard_id = shard_id
        self.first = None          # first position (sequence)
        # log-derived
        self.answered_max = None   # highest answered sequence
        self.last_batch = None     # (ids tuple, body key, outcome) of the latest answered batch
        self.acked = set()         # sequences acked (client-visible)
        self.answered = set()      # sequences answered (ack or lost)
        self.first_order_ok = True


class Connector:
    def __init__(self, row):
        (self.connector_id, self.name, self.stream_id, self.stream_name,
         endpoint, self.format, batch_size, timeout_ms, self.shard_count) = row
        self.connector_id = int(self.connector_id)
        self.stream_id = int(self.stream_id)
        self.batch_size = int(batch_size)
        self.timeout_ms = int(timeout_ms)
        self.shard_count = int(self.shard_count)
        u = urllib.parse.urlsplit(endpoint)
        self.path = (u.path or "/") + ("?" + u.query if u.query else "")
        self.shards = {i: Shard(i) for i in range(self.shard_count)}
        self.stats = {"requests": 0, "acked_requests": 0, "lost_acks": 0,
                      "failed_requests": 0, "undecodable_requests": 0,
                      "records_received": 0, "distinct_acked": 0,
                      "duplicate_batches": 0, "resent_after_lost_ack": 0,
                      "acked_twice": 0, "extended_resends": 0,
                      "unverifiable_records": 0, "faults": {}}
        self.violations = {}       # invariant -> [messages]
        self.checks = {}           # invariant -> "ok" / "fail" / "skip: ..."
        self.key_last = {}         # partition key -> (shard, sequence)
        self.beyond_head = []      # eventIds past the heads read at the start
        self.acked_twice = []      # (first t_ms, second t_ms, where, shard, first, last)

    def fail(self, inv, msg):
        self.violations.setdefault(inv, []).append(msg)


STATUS_SQL = """
SELECT c.connector_name, cs.shard_id, ss.state, cs.delivered_sequence,
       ss.next_sequence, ss.pending, cs.delivered, cs.failures, cs.attempts,
       cs.position_generation, cs.skip_before, st.delivered AS connector_delivered,
       st.pending AS connector_pending
  FROM event_bridge.connectors c
  JOIN event_bridge.connector_shards cs USING (connector_id)
  JOIN event_bridge.shard_status ss
    ON ss.connector_name = c.connector_name AND ss.shard_id = cs.shard_id
  JOIN event_bridge.connector_status st ON st.connector_name = c.connector_name
 ORDER BY 1, 2"""


def status_snapshot(db, names):
    snap = {}
    for row in db.rows(STATUS_SQL):
        if row[0] in names:
            snap[(row[0], int(row[1]))] = tuple(row[2:])
    return snap


def load_records(db, stream_id):
    """{(shard, seq): (system_time, record_id, partition_key, raw digest,
    canonical digest)} of a stream, plus per-shard storage facts."""
    recs = {}
    for shard, seq, st, rid, pkey, data in db.rows(
            "SELECT shard_id, sequence, system_time, record_id,"
            " partition_key, data FROM event_bridge.records"
            f" WHERE stream_id = {int(stream_id)} ORDER BY shard_id, sequence"):
        # psql --csv writes NULL as an empty unquoted field, '' as "" ;
        # both arrive as "" here, and both mean "no key" on the wire.
        recs[(int(shard), int(seq))] = (int(st), int(rid), pkey,
                                        digest(data), data_digest(data))
    return recs


def first_positions(conn, recs, snap, lowest):
    """The first sequence of each shard the connector is to deliver: the
    first record appended at or after its start time (skip_before).  Exact
    unless retention removed records before it (then it is an upper bound)."""
    by_shard = {}
    for (shard, seq), rec in recs.items():
        skip_before = int(snap[(conn.name, shard)][8])
        if rec[0] >= skip_before:
            cur = by_shard.get(shard)
            if cur is None or seq < cur:
                by_shard[shard] = seq
    for shard, sh in conn.shards.items():
        nxt = int(snap[(conn.name, shard)][2])
        sh.first = by_shard.get(shard, nxt)
        lo = lowest.get((conn.stream_id, shard), nxt)
        sh.first_exact = not (sh.first == lo and lo > 0)


# ---------------------------------------------------------------------------
# The log
# ---------------------------------------------------------------------------

def read_log(path):
    """Yields (line number, entry) for each complete line; a last line
    without its newline is being written and is left out."""
    with open(path, "rb") as f:
        for n, line in enumerate(f, 1):
            if not line.endswith(b"\n"):
                return
            try:
                yield n, json.loads(line)
            except ValueError as e:
                yield n, {"_corrupt": str(e)}


def outcome(e, conn, args):
    status = e.get("status")
    if e.get("error") or status is None or not (200 <= status < 300):
        return "failed"
    fault = e.get("fault")
    if fault == "partial":
        return "lost"
    if fault == "slow" and args.slow_ms + args.delay_ms >= conn.timeout_ms:
        return "lost"
    return "ack"


def parse_ids(e):
    out = []
    for eid in e.get("event_ids") or []:
        try:
            s, q = str(eid).split(":")
            out.append((int(s), int(q)))
        except ValueError:
            return None
    return out


def body_key(e, conn):
    """What must be equal between two sendings of the same batch."""
    if conn.format == "datahub" or "body" not in e:
        return e.get("body_sha256") if conn.format == "datahub" else None
    try:
        doc = json.loads(e["body"])
        doc["Message"].pop("millis_behind_latest", None)
        return json.dumps(doc, sort_keys=True)
    except (ValueError, KeyError, TypeError, AttributeError):
        return e.get("body_sha256")


def check_envelope(e, conn, ids, recs, ctx, where):
    """Byte-exact data and the envelope, from a logged raw body."""
    try:
        doc = json.loads(e["body"])
    except ValueError:
        conn.fail("content", f"{where}: body is not JSON")
        return
    shard = ids[0][0]
    if conn.format == "datahub":
        want_arn = f"/projects/{ctx['database']}/topics/{conn.stream_name}"
        if doc.get("eventSourceARN") != want_arn or doc.get("region") != ctx["region"] \
                or doc.get("eventSource") != "acs:datahub" \
                or doc.get("eventName") != "acs:datahub:putRecord":
            conn.fail("content", f"{where}: DataHub envelope "
                      f"{ {k: doc.get(k) for k in ('eventSource', 'eventName', 'eventSourceARN', 'region')} }"
                      f" is not for {want_arn} in region {ctx['region']}")
        raw = [(r.get("data"), r.get("eventId")) for r in doc.get("records") or []]
        for (data, eid), key in zip(raw, ids):
            rec = recs.get(key)
            if rec is not None and (not isinstance(data, str) or digest(data) != rec[3]):
                conn.fail("content", f"{where}: eventId {eid}: data string differs "
                          "byte for byte from event_bridge.records.data")
        return
    msg = doc.get("Message") or {}
    last = ids[-1][1]
    want_cursor = base64.b64encode(f"{shard}:{last + 1}".encode()).decode()
    problems = []
    if doc.get("ShardID") != "shardId-%010d" % shard:
        problems.append(f"ShardID {doc.get('ShardID')!r}")
    if doc.get("StreamName") != conn.stream_name:
        problems.append(f"StreamName {doc.get('StreamName')!r}")
    if doc.get("Tag") != "latest":
        problems.append(f"Tag {doc.get('Tag')!r}")
    if msg.get("next_partition_cursor") != want_cursor:
        problems.append(f"next_partition_cursor {msg.get('next_partition_cursor')!r}, "
                        f"not base64 of {shard}:{last + 1}")
    mbl = msg.get("millis_behind_latest")
    if not (isinstance(mbl, str) and mbl.isdigit()):
        problems.append(f"millis_behind_latest {mbl!r}")
    for r, key in zip(msg.get("records") or [], ids):
        rec = recs.get(key)
        if rec is None:
            continue
        try:
            data = base64.b64decode(r.get("data") or "", validate=True)
        except ValueError:
            problems.append(f"{key[0]}:{key[1]}: data is not base64")
            continue
        if digest(data) != rec[3]:
            problems.append(f"{key[0]}:{key[1]}: decoded data differs byte for byte")
        if r.get("partition_key") != (rec[2] or ""):
            problems.append(f"{key[0]}:{key[1]}: partition_key {r.get('partition_key')!r}, "
                            f"stored {rec[2]!r}")
    for p in problems:
        conn.fail("content", f"{where}: DIS {p}")


def check_entry(n, e, conn, recs, ctx, args):
    st = conn.stats
    st["requests"] += 1
    where = f"log line {n}"
    fault = e.get("fault")
    if fault:
        st["faults"][fault] = st["faults"].get(fault, 0) + 1
    res = outcome(e, conn, args)
    st[{"ack": "acked_requests", "lost": "lost_acks", "failed": "failed_requests"}[res]] += 1

    fmt = e.get("format")
    if fmt == "unknown" or not e.get("event_ids"):
        st["undecodable_requests"] += 1
        if res != "failed":
            conn.fail("batch_shape", f"{where}: a body that is not a {conn.format} batch was answered "
                      f"{e.get('status')}")
        return
    ids = parse_ids(e)
    if fmt != conn.format or ids is None:
        conn.fail("batch_shape", f"{where}: format {fmt} with eventIds "
                  f"{e.get('event_ids')[:3]}..., the connector sends {conn.format}")
        return
    shard = ids[0][0]
    seqs = [q for _, q in ids]
    if any(s != shard for s, _ in ids) or (e.get("shard") is not None and e.get("shard") != shard) \
            or shard not in conn.shards:
        conn.fail("batch_shape", f"{where}: eventIds of other shards in a batch of shard "
                  f"{e.get('shard')}: {e.get('event_ids')[:5]}")
        return
    if seqs != list(range(seqs[0], seqs[0] + len(seqs))) or len(seqs) > conn.batch_size:
        conn.fail("batch_shape", f"{where}: shard {shard}: not 1..{conn.batch_size} consecutive "
                  f"sequences: {seqs[:5]}{'...' if len(seqs) > 5 else ''} ({len(seqs)})")
        return
    sh = conn.shards[shard]

    # [content] and [aborted]: every decoded request, whatever its outcome.
    for r, key in zip(e.get("records") or [], ids):
        st["records_received"] += 1
        data = r.get("data")
        for s in args.forbid_substring:
            if isinstance(data, list) and any(isinstance(x, str) and s in x for x in data) \
                    or isinstance(data, str) and s in data:
                conn.fail("aborted", f"{where}: eventId {key[0]}:{key[1]} carries {s!r}")
        rec = recs.get(key)
        if rec is None:
            lo = ctx["lowest"].get((conn.stream_id, shard))
            nxt = ctx["next"].get((conn.stream_id, shard))
            if lo is not None and key[1] < lo:
                st["unverifiable_records"] += 1          # removed by retention
            elif key[1] >= nxt:
                # Appended after the records were read, or never: decided
                # once it is known whether the stream stood still.
                conn.beyond_head.append(f"{where}: eventId {key[0]}:{key[1]} is beyond the "
                                        f"shard's head {nxt - 1}")
            else:
                conn.fail("content", f"{where}: eventId {key[0]}:{key[1]} is not stored, "
                          f"though the shard's records {lo}..{nxt - 1} are")
            continue
        got = digest(data) if isinstance(data, str) else canonical(data)
        if got != rec[4] and got != rec[3]:
            conn.fail("content", f"{where}: eventId {key[0]}:{key[1]}: data differs from "
                      f"event_bridge.records")
        if conn.format == "datahub" and r.get("system_time") != rec[0]:
            conn.fail("content", f"{where}: eventId {key[0]}:{key[1]}: systemTime "
                      f"{r.get('system_time')}, stored {rec[0]}")
    if "body" in e:
        check_envelope(e, conn, ids, recs, ctx, where)

    # [shard_order] and [duplicates]: against the answered history.
    first = seqs[0]
    expected = sh.first if sh.answered_max is None else sh.answered_max + 1
    if first > expected:
        conn.fail("shard_order", f"{where}: shard {shard}: a batch from {first} was sent while "
                  f"{expected} had no 2xx answer (status {e.get('status')})")
    elif first < expected:
        if sh.answered_max is None and not sh.first_exact:
            pass        # retention removed the records before: start unknown
        elif sh.answered_max is None:
            conn.fail("shard_order", f"{where}: shard {shard}: sequence {first} is before the "
                      f"connector's first position {sh.first}")
        elif any(q not in sh.answered for q in seqs if q <= sh.answered_max):
            conn.fail("shard_order", f"{where}: shard {shard}: sequences {first}..{seqs[-1]} "
                      f"first arrive after {sh.answered_max}")
        else:
            prev_ids, prev_key, prev_res, prev_t = sh.last_batch
            cur = tuple(seqs)
            if cur[0] != prev_ids[0] or cur[:len(prev_ids)] != prev_ids[:len(cur)] \
                    or len(cur) < len(prev_ids):
                conn.fail("duplicates", f"{where}: shard {shard}: sequences {cur[0]}..{cur[-1]} "
                          f"sent again, but the latest answered batch is {prev_ids[0]}..{prev_ids[-1]}")
            elif len(cur) == len(prev_ids) and prev_key is not None \
                    and body_key(e, conn) not in (None, prev_key):
                conn.fail("duplicates", f"{where}: shard {shard}: batch {cur[0]}..{cur[-1]} "
                          "sent again with a different body")
            elif res != "failed":
                st["duplicate_batches"] += 1
                if len(cur) > len(prev_ids):
                    st["extended_resends"] += 1
                if prev_res == "lost":
                    st["resent_after_lost_ack"] += 1
                else:
                    st["acked_twice"] += 1
                    conn.acked_twice.append((prev_t, e.get("t_ms") or 0, where, shard,
                                             prev_ids[0], prev_ids[-1]))

    if res == "failed":
        return
    # Answered: record history and first arrivals.
    key = body_key(e, conn)
    t_ms = e.get("t_ms") or 0
    if sh.last_batch is None or seqs[0] != sh.last_batch[0][0] or len(seqs) >= len(sh.last_batch[0]):
        sh.last_batch = (tuple(seqs), key, res, t_ms)
    else:
        sh.last_batch = (sh.last_batch[0], sh.last_batch[1], res, t_ms)
    for q in seqs:
        if q not in sh.answered:
            sh.answered.add(q)
            rec = recs.get((shard, q))
            pkey = rec[2] if rec else None
            if pkey:
                prev = conn.key_last.get(pkey)
                if prev is not None and (prev[0] != shard or prev[1] >= q):
                    conn.fail("key_order", f"{where}: key {pkey!r}: {shard}:{q} arrived after "
                              f"{prev[0]}:{prev[1]}")
                conn.key_last[pkey] = (shard, q)
    if sh.answered_max is None or seqs[-1] > sh.answered_max:
        sh.answered_max = seqs[-1]
    if res == "ack":
        sh.acked.update(seqs)


# ---------------------------------------------------------------------------
# After the log: offsets, counters, storage
# ---------------------------------------------------------------------------

def ranges(nums):
    """[1,2,3,7] -> '1..3, 7'"""
    out, start, prev = [], None, None
    for x in sorted(nums):
        if start is None:
            start = prev = x
        elif x == prev + 1:
            prev = x
        else:
            out.append(f"{start}..{prev}" if prev > start else f"{start}")
            start = prev = x
    if start is not None:
        out.append(f"{start}..{prev}" if prev > start else f"{start}")
    return ", ".join(out)


def check_after(conn, snap1, snap2, quiescent, args):
    st = conn.stats
    distinct = 0
    fresh = not args.log_not_fresh
    for shard, sh in conn.shards.items():
        (state, dseq, nxt, pending, delivered, failures, attempts, gen, skip_before,
         c_delivered, c_pending) = snap1[(conn.name, shard)]
        dseq, nxt, pending, gen = int(dseq), int(nxt), int(pending), int(gen)
        fresh = fresh and gen == 0
        distinct += len(sh.acked)
        start = sh.first if sh.first_exact or not sh.acked else min(sh.first, min(sh.acked))
        missing = [q for q in range(start, dseq + 1) if q not in sh.acked]
        if missing:
            lost_only = [q for q in missing if q in sh.answered]
            conn.fail("missing", f"shard {shard}: {len(missing)} record(s) up to the offset "
                      f"{dseq} never acked: {ranges(missing)}"
                      + (f" ({len(lost_only)} only answered by a reply the client could not "
                         "see)" if lost_only else ""))
        if pending != max(nxt - 1 - dseq, 0):
            conn.fail("status", f"shard {shard}: pending {pending}, but next_sequence {nxt} - 1 - "
                      f"delivered_sequence {dseq} = {nxt - 1 - dseq}")
        if dseq > nxt - 1:
            conn.fail("status", f"shard {shard}: delivered_sequence {dseq} is beyond the head "
                      f"{nxt - 1}")
        if quiescent:
            top = max(sh.acked) if sh.acked else sh.first - 1
            if top != dseq:
                conn.fail("status", f"shard {shard}: delivered_sequence {dseq}, but the highest "
                          f"acked sequence is {top}")
    st["distinct_acked"] = distinct
    any_row = snap1[(conn.name, 0)]
    if quiescent and fresh:
        if int(any_row[9]) != distinct:
            conn.fail("status", f"connector_status.delivered {any_row[9]}, but {distinct} "
                      "distinct eventIds were acked")
    elif quiescent:
        conn.checks.setdefault("status", "ok (delivered count not compared: "
                               + ("reset_connector happened)" if not args.log_not_fresh
                                  else "--log-not-fresh)"))


def check_storage(conn, recs, snap):
    by_shard = {}
    for (shard, seq), rec in recs.items():
        by_shard.setdefault(shard, []).append((seq, rec[1]))
    for shard in conn.shards:
        nxt = int(snap[(conn.name, shard)][2])
        items = sorted(by_shard.get(shard, []))
        if not items:
            continue
        lo, hi = items[0][0], items[-1][0]
        if hi - lo + 1 != len(items):
            have = {q for q, _ in items}
            holes = [q for q in range(lo, hi + 1) if q not in have]
            conn.fail("storage", f"stream {conn.stream_name} shard {shard}: stored sequences "
                      f"have holes: {ranges(holes)[:200]}")
        if hi > nxt - 1:
            conn.fail("storage", f"stream {conn.stream_name} shard {shard}: stored sequence {hi} "
                      f"is beyond next_sequence {nxt}")
        bad = [items[i][0] for i in range(1, len(items)) if items[i][1] < items[i - 1][1]]
        if bad:
            conn.fail("storage", f"stream {conn.stream_name} shard {shard}: record id decreases "
                      f"at sequences {ranges(bad)[:200]}")


# ---------------------------------------------------------------------------

INVARIANTS = ("missing", "content", "aborted", "shard_order", "key_order",
              "duplicates", "batch_shape", "status", "storage")


def run(args):
    db = Db(args)
    ctx = {}
    row = db.all("SELECT current_database(), current_setting('event_bridge.region', true)")[0]
    ctx["database"], ctx["region"] = row[0], row[1]
    conns = [Connector(r) for r in db.rows("""
        SELECT c.connector_id, c.connector_name, c.stream_id, s.stream_name, c.endpoint,
               c.format, c.batch_size, ceil(extract(epoch FROM c.timeout) * 1000)::bigint,
               s.shard_count
          FROM event_bridge.connectors c JOIN event_bridge.streams s USING (stream_id)
         ORDER BY c.connector_name""")]
    if args.connector:
        unknown = set(args.connector) - {c.name for c in conns}
        if unknown:
            raise UsageError(f"no connector named {', '.join(sorted(unknown))}")
        conns = [c for c in conns if c.name in args.connector]
    if not conns:
        raise UsageError("no connector to check")
    by_path = {}
    for c in conns:
        if c.path in by_path:
            raise UsageError(f"connectors {by_path[c.path].name} and {c.name} share the endpoint "
                             f"path {c.path}: give each its own path, or check them one by one "
                             "with their own logs")
        by_path[c.path] = c
    names = {c.name for c in conns}

    snap1 = status_snapshot(db, names)
    ctx["next"] = {}
    for c in conns:
        for shard in c.shards:
            ctx["next"][(c.stream_id, shard)] = int(snap1[(c.name, shard)][2])
    records = {}
    ctx["lowest"] = {}
    for c in conns:
        if c.stream_id not in records:
            records[c.stream_id] = load_records(db, c.stream_id)
            for (shard, seq) in records[c.stream_id]:
                k = (c.stream_id, shard)
                if k not in ctx["lowest"] or seq < ctx["lowest"][k]:
                    ctx["lowest"][k] = seq
        first_positions(c, records[c.stream_id], snap1, ctx["lowest"])

    other_paths, corrupt = {}, []
    for n, e in read_log(args.log):
        if "_corrupt" in e:
            corrupt.append(f"log line {n}: not JSON ({e['_corrupt']})")
            continue
        c = by_path.get(e.get("path"))
        if c is None:
            other_paths[e.get("path")] = other_paths.get(e.get("path"), 0) + 1
            continue
        check_entry(n, e, c, records[c.stream_id], ctx, args)

    stored_forbidden = {}
    for s in args.forbid_substring:
        rows = db.all("SELECT count(*), string_agg(shard_id || ':' || sequence, ', ')"
                      " FILTER (WHERE n <= 5) FROM (SELECT shard_id, sequence, row_number()"
                      " OVER () n FROM event_bridge.records WHERE strpos(data, "
                      f"{sql_literal(s)}) > 0) x")
        stored_forbidden[s] = (int(rows[0][0]), rows[0][1])

    snap2 = status_snapshot(db, names)
    report = {"ok": True, "violations": [], "connectors": {},
              "log": {"path": args.log, "other_paths": other_paths}}
    for c in conns:
        rows1 = {k: v for k, v in snap1.items() if k[0] == c.name}
        rows2 = {k: v for k, v in snap2.items() if k[0] == c.name}
        quiescent = rows1 == rows2 and all(int(v[3]) == 0 for v in rows1.values())
        c.stats["quiescent"] = quiescent
        for s, (count, where) in stored_forbidden.items():
            if count:
                c.fail("aborted", f"{count} stored record(s) carry {s!r}: {where}")
        if quiescent:
            for msg in c.beyond_head:
                c.fail("content", msg)
        else:
            c.stats["unverifiable_records"] += len(c.beyond_head)
        if args.disruptions is not None:
            for t1, t2, where, shard, lo, hi in c.acked_twice:
                if not any(start <= t2 and end >= t1 for start, end in args.disruptions):
                    c.fail("duplicates", f"{where}: shard {shard}: batch {lo}..{hi}, acked at "
                           f"{t1:.0f}, was sent again at {t2:.0f} ({t2 - t1:.0f} ms later) "
                           "with no crash, restart or outage in between")
        check_after(c, snap1, snap2, quiescent, args)
        check_storage(c, records[c.stream_id], snap1)
        if not quiescent:
            why = "not at rest (pending > 0 or the views moved during the check)"
            if args.require_quiescent:
                c.fail("status", f"{why}; --require-quiescent")
            else:
                c.checks.setdefault("status", f"skip: exact comparisons, {why}")
        if not args.forbid_substring:
            c.checks.setdefault("aborted", "skip: no --forbid-substring")
        notes, c.checks = c.checks, {}
        for inv in INVARIANTS:
            if inv in notes:
                c.checks[inv] = notes[inv]
            if inv in c.violations:
                c.checks[inv] = "fail"
                report["ok"] = False
                report["violations"].append({
                    "connector": c.name, "invariant": inv,
                    "message": f"{len(c.violations[inv])} violation(s)",
                    "examples": c.violations[inv][:args.max_examples]})
            else:
                c.checks.setdefault(inv, "ok")
        c.stats["first_positions"] = {s: sh.first for s, sh in c.shards.items()}
        c.stats["delivered_sequences"] = {s: int(snap1[(c.name, s)][1]) for s in c.shards}
        report["connectors"][c.name] = {
            "format": c.format, "stream": c.stream_name, "path": c.path,
            "shards": c.shard_count, "checks": c.checks, "stats": c.stats}
    if corrupt:
        report["ok"] = False
        report["violations"].append({"connector": None, "invariant": "log",
                                     "message": f"{len(corrupt)} corrupt log line(s)",
                                     "examples": corrupt[:args.max_examples]})
    return report


def print_text(report, out):
    for name, c in report["connectors"].items():
        s = c["stats"]
        faults = ", ".join(f"{k} {v}" for k, v in sorted(s["faults"].items())) or "none"
        print(f"connector {name} ({c['format']}, stream {c['stream']}, {c['shards']} shards, "
              f"path {c['path']}): {s['requests']} requests ({s['acked_requests']} acked, "
              f"{s['lost_acks']} lost acks, {s['failed_requests']} failed; faults: {faults}), "
              f"{s['distinct_acked']} distinct records acked, {s['duplicate_batches']} duplicate "
              f"batches ({s['resent_after_lost_ack']} after a lost ack, {s['acked_twice']} acked "
              f"twice, {s['extended_resends']} extended)"
              + (f", {s['unverifiable_records']} records not verifiable" if s["unverifiable_records"] else "")
              + ("" if s["quiescent"] else ", not at rest"), file=out)
        for inv, res in c["checks"].items():
            tag = "FAIL" if res == "fail" else "skip" if res.startswith("skip") else "ok  "
            text = "" if res in ("ok", "fail") else res[2:] if tag == "ok  " else ": " + res[6:]
            print(f"  {tag} {inv}{text}", file=out)
            if res == "fail":
                for v in report["violations"]:
                    if v["connector"] == name and v["invariant"] == inv:
                        print(f"       {v['message']}", file=out)
                        for ex in v["examples"]:
                            print(f"       - {ex}", file=out)
    for v in report["violations"]:
        if v["connector"] is None:
            print(f"FAIL {v['invariant']}: {v['message']}", file=out)
            for ex in v["examples"]:
                print(f"  - {ex}", file=out)
    if report["log"]["other_paths"]:
        print("log lines of other paths (not checked): " + ", ".join(
            f"{p} {n}" for p, n in sorted(report["log"]["other_paths"].items(), key=str)), file=out)
    n = len(report["violations"])
    print("all invariants held" if report["ok"] else f"{n} invariant(s) violated", file=out)


def main(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        add_help=False)
    p.add_argument("--help", action="help")
    p.add_argument("--log", required=True, help="the receiver's JSON-lines log")
    p.add_argument("-h", "--host")
    p.add_argument("-p", "--port")
    p.add_argument("-d", "--dbname")
    p.add_argument("-U", "--user")
    p.add_argument("--psql", default="psql")
    p.add_argument("--connector", action="append", default=[],
                   help="a connector to check (repeatable); default all")
    p.add_argument("--forbid-substring", action="append", default=[],
                   help="must appear in no delivered and no stored record (repeatable)")
    p.add_argument("--slow-ms", type=int, default=5000, help="the receiver's --slow-ms")
    p.add_argument("--delay-ms", type=int, default=0, help="the receiver's --delay-ms")
    p.add_argument("--log-not-fresh", action="store_true",
                   help="the log has requests from before the connectors' history")
    p.add_argument("--require-quiescent", action="store_true",
                   help="a connector not at rest is a violation")
    p.add_argument("--disruptions", metavar="FILE",
                   help="JSON [[start_ms, end_ms], ...]: when crashes, restarts, outages were")
    p.add_argument("--max-examples", type=int, default=5)
    p.add_argument("--json", action="store_true", help="print a JSON report")
    args = p.parse_args(argv)
    try:
        if args.disruptions:
            with open(args.disruptions) as f:
                args.disruptions = [(float(a), float(b)) for a, b in json.load(f)]
        report = run(args)
    except (UsageError, OSError) as e:
        print(f"check_invariants: {e}", file=sys.stderr)
        return 2
    if args.json:
        json.dump(report, sys.stdout, indent=1, default=str)
        print()
    else:
        print_text(report, sys.stdout)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
