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
      [--poison S ...] [--redelivered-ok]
      [--slow-ms 5000] [--delay-ms 0] [--log-not-fresh] [--kafka]
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
"answered" below means ack or lost.  A 2xx whose log line lists
"item_failures" (receiver --partial-response: the reply's batchItemFailures)
answers, for a connector with partial_batch_response, only the records
before the first eventId listed (in batch order); the rest of the request
failed (all of it if that is the first record, or if an eventId listed is
not in the request).  Without partial_batch_response it answers them all.

Dead letters (release 0.2, on_failure 'dead_letter') are the rows of the
view event_bridge.dead_letters, read once after the first status read; none
if the view does not exist (an older install).  The view shows a row only to
a role that may read every table of its stream: check as a superuser or as
such a role.  purge_dead_letters during or before the logged history makes
the purged records [missing].

Named formats and filters (release 0.2).  A json or cloudevents request
holds events; test/receiver.py logs an UPDATE event with both images as its
two records, n and n + 1.  Their [content] is the event's op and table
against the stored record's.  A connector with a filter leaves records out:
the checker computes which with event_bridge._event_body (the events the
filter keeps, over the stored records of each shard) and treats those like
records passed over: they need no answer, may lie in the gaps of a batch,
and count toward the offset.  A batch of events may hold one record more
than batch_size (an UPDATE is not cut apart).

Kafka (--kafka): --log is then a topic as test/kafka/consume.js prints it,
produced by the one connector checked (any format, with or without a
filter); see kafka_log for what is checked and what cannot be.

Invariants (ids in brackets, as in --json):
  [missing]    every record of the connector's stream, per shard, from the
               connector's first position (the first record appended at or
               after its start time, skip_before) to delivered_sequence (so
               everything once pending = 0), was acked at least once or is
               a dead letter of the connector.
  [content]    every decoded request (any outcome) carries the records'
               data as stored in event_bridge.records (DataHub: the data
               string; DIS: the base64-decoded data) and, for DataHub,
               their systemTime; an eventId that is not stored though its
               shard's records around it are, or (at rest) beyond its shard's
               head, is a violation; records removed by retention are
               counted as not verifiable.  With bodies in the log (receiver
               --keep-body) the data strings are compared byte for byte, and
               the envelope is checked too: eventSourceARN and region;
               ShardID, next_partition_cursor (DIS's iterator JSON naming the
               stream, shard and next sequence), partition_key, StreamName.
  [aborted]    --forbid-substring S (e.g. a marker the load writes only in
               transactions or savepoints it rolls back) appears in no
               delivered record and in no stored record of the database.
  [shard_order] per shard, no request starts beyond the highest answered
               sequence + 1, or beyond the dead letters right after it
               (nothing is sent before the previous batch got its 2xx or its
               failing records became dead letters; the sub-batches of a
               bisection start there too), the first request starts at the
               first position, and so the answered sequences and dead
               letters, deduplicated, are gapless and first arrive in
               increasing order.  Dead letters sent again
               (redeliver_dead_letters) are out of order by nature: with
               --redelivered-ok a request of increasing sequences (gaps
               allowed) from at or below the highest answered one, each a
               dead letter or passed over unanswered, none acked before, is
               a redelivery, exempt from [shard_order], [key_order] and
               [duplicates]; and since the view forgets a dead letter once a
               redelivery acks it, a request may also pass over records that
               are no dead letters if each failed before and a later
               redelivery acks it.  Without the option such requests are
               violations.
  [key_order]  per partition key (event_bridge.records.partition_key, the
               DIS partition_key): all records in one shard, first answers
               in increasing sequence order.
  [duplicates] a request that repeats answered eventIds is a resend of the
               shard's latest answered batch: same first eventId and the
               same eventIds (DataHub: the same body hash; DIS: the same
               body but millis_behind_latest, compared when bodies are
               logged), or, after a restart re-read it, that batch extended
               by later records.  Of a partial reply only the records
               acknowledged (before the first item failure) count as that
               batch, and a correct worker sends none of them again: that
               is a violation unless a --disruptions window lies between the
               two sendings.  Records that were never acknowledged are no
               duplicates: after a lost ack and a failed retry the worker
               may cut them anew (bisection), from its offset + 1; and with
               --disruptions, the records of the latest answered batch may
               come back cut anew after a restart (a bisection begun
               again), with a window between.  The
               number of duplicate batches is
               reported, split into resends after a lost ack and batches
               acked twice (offset commit lost in a crash).  With
               --disruptions FILE (a JSON list of [start_ms, end_ms] epoch
               windows of crashes, restarts and endpoint outages, as
               test/soak.py writes it) a batch acked twice must have a
               window between its two sendings.
  [batch_shape] a request holds 1..batch_size consecutive records of the
               shard it names, in the connector's format (a redelivery,
               --redelivered-ok, increasing ones).
  [status]     shard_status.pending = max(next_sequence - 1 -
               delivered_sequence, 0) and delivered_sequence <= next_sequence
               - 1; when quiescent (see below): delivered_sequence = the
               highest acked or dead-lettered sequence of the shard (first
               position - 1 if none), and connector_status.delivered = the
               number of distinct acked eventIds (dead letters and records
               acked by a redelivery not counted: delivered counts what the
               offset passed with a 2xx), unless
               --log-not-fresh or a reset_connector happened
               (position_generation > 0).
  [storage]    per shard of the connector's stream, the stored sequences
               are contiguous and end at next_sequence - 1, and record ids
               never decrease along the sequence.
  [dead_letters] every dead letter of the connector has event_id
               "<shard>:<sequence>" and, while stored, the data of its
               record in event_bridge.records; at rest none lies beyond
               delivered_sequence.  With --poison S (the receiver's --poison,
               repeatable): every dead letter holds S in its data (nothing
               healthy was dead-lettered); no record holding S (stored, or
               as logged if not stored) was ever acked; and every stored
               record holding S from the first position to
               delivered_sequence is a dead letter.  The summary counts the
               dead letters (stats "dead_letters", null without the view).

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
        self.dead = set()          # sequences that are dead letters (the view, read once)
        self.dead_rows = []        # (sequence, event_id, data text) of those
        self.filtered = set()      # stored sequences the connector's filter leaves out
        self.poison = set()        # stored sequences whose data holds a --poison string
        # log-derived
        self.answered_max = None   # highest answered sequence
        self.acked_max = None      # highest acked sequence (redeliveries aside)
        # The next request may start from base + 1 (base: the highest
        # answered sequence; None: not known, retention removed the records
        # before the first) up to reach + 1 (reach: base moved on over the
        # dead letters right after it).  ack_base and ack_reach are the same
        # for the acked sequences: the worker's offset.
        self.base = self.reach = None
        self.ack_base = self.ack_reach = None
        self.skipped = set()       # unanswered sequences a request passed over
        self.last_batch = None     # (ids, body key, outcome, t_ms): the latest answered batch
        self.acked = set()         # sequences acked (client-visible)
        self.answered = set()      # sequences answered (ack or lost)
        self.answered_at = {}      # sequence -> t_ms of its first answer
        self.tried = set()         # sequences sent in a request that did not answer them
        self.redelivered = set()   # sequences acked by a redelivery (--redelivered-ok)
        self.jumps = []            # (where, first, sequences) skipped, --redelivered-ok


class Connector:
    def __init__(self, row):
        (self.connector_id, self.name, self.stream_id, self.stream_name,
         endpoint, self.format, batch_size, timeout_ms, self.shard_count,
         partial, self.on_failure, self.filter) = row
        self.filter = self.filter or None        # '' (NULL): keeps every event
        self.partial_response = partial == "t"   # honours batchItemFailures
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
                      "unverifiable_records": 0, "partial_replies": 0,
                      "bisected_resends": 0, "redeliveries": 0,
                      "dead_letters": None, "faults": {}}
        self.violations = {}       # invariant -> [messages]
        self.checks = {}           # invariant -> "ok" / "fail" / "skip: ..."
        self.key_last = {}         # partition key -> (shard, sequence)
        self.beyond_head = []      # eventIds past the heads read at the start
        self.acked_twice = []      # (first t_ms, second t_ms, where, shard, first, last)
        self.has_dead_letters = False  # the view event_bridge.dead_letters exists

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
    for shard, seq, st, rid, pkey, data, op, table in db.rows(
            "SELECT shard_id, sequence, system_time, record_id,"
            " partition_key, data, operation, table_name FROM event_bridge.records"
            f" WHERE stream_id = {int(stream_id)} ORDER BY shard_id, sequence"):
        # psql --csv writes NULL as an empty unquoted field, '' as "" ;
        # both arrive as "" here, and both mean "no key" on the wire.
        recs[(int(shard), int(seq))] = (int(st), int(rid), pkey,
                                        digest(data), data_digest(data), op, table)
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


def load_dead_letters(db, conns, args):
    """Reads the connectors' dead letters (none if the view
    event_bridge.dead_letters does not exist, as before release 0.2), and
    with --poison the stored records whose data holds a poison string; sets
    each shard's bases and reaches.  Read after the first status snapshot: a dead
    letter is added in the transaction that moves the offset past it, so
    every one below an offset read before is seen here, unless a redelivery
    acknowledged it, which the log then holds."""
    exists = db.all("SELECT to_regclass('event_bridge.dead_letters') IS NOT NULL")[0][0] == "t"
    poison = {}
    for c in conns:
        c.has_dead_letters = exists
        if exists:
            c.stats["dead_letters"] = 0
            for shard, seq, eid, text in db.rows(
                    "SELECT shard_id, sequence, event_id, data::text"
                    " FROM event_bridge.dead_letters"
                    f" WHERE connector_name = {sql_literal(c.name)} ORDER BY 1, 2"):
                c.stats["dead_letters"] += 1
                sh = c.shards.get(int(shard))
                if sh is None:
                    c.fail("dead_letters", f"dead letter {eid}: shard {shard}, but the stream "
                           f"has {c.shard_count} shards")
                    continue
                sh.dead.add(int(seq))
                sh.dead_rows.append((int(seq), eid, text))
        if args.poison and c.stream_id not in poison:
            cond = " OR ".join(f"strpos(data, {sql_literal(s)}) > 0" for s in args.poison)
            poison[c.stream_id] = db.all("SELECT shard_id, sequence FROM event_bridge.records"
                                         f" WHERE stream_id = {int(c.stream_id)} AND ({cond})")
        for shard, seq in poison.get(c.stream_id, []):
            if int(shard) in c.shards:
                c.shards[int(shard)].poison.add(int(seq))
        if c.filter:
            load_filtered(db, c)
        for sh in c.shards.values():
            if sh.first_exact:
                sh.base = sh.ack_base = sh.first - 1
            advance(sh)


def load_filtered(db, c):
    """The stored records the connector's filter leaves out, per shard: those
    of no event that event_bridge._event_body keeps (an UPDATE event holds
    its before and after records, n and n + 1)."""
    for shard, sh in c.shards.items():
        stored = [int(q) for (q,) in db.rows(
            "SELECT sequence FROM event_bridge.records"
            f" WHERE stream_id = {c.stream_id} AND shard_id = {shard}")]
        if not stored:
            continue
        body = db.all(
            f"SELECT body FROM event_bridge._event_body({sql_literal(c.stream_name)}, {shard},"
            f" {min(stored)}, {max(stored)}, 'json', {sql_literal(c.filter)}::jsonb,"
            " max_bytes => 2147483647)")[0][0]
        kept = set()
        for ev in (json.loads(body)["events"] if body else []):
            q = int(ev["eventId"].split(":")[1])
            kept.add(q)
            if ev["op"] == "UPDATE" and ev["before"] is not None and ev["after"] is not None:
                kept.add(q + 1)
        sh.filtered = set(stored) - kept


def advance(sh):
    """Moves a shard's bases up to the highest answered (acked) sequence,
    and their reaches over the dead letters right after them."""
    if sh.answered_max is not None and (sh.base is None or sh.answered_max > sh.base):
        sh.base = sh.answered_max
    if sh.acked_max is not None and (sh.ack_base is None or sh.acked_max > sh.ack_base):
        sh.ack_base = sh.acked_max
    for name in ("", "ack_"):
        top = getattr(sh, name + "base")
        while top is not None and (top + 1 in sh.dead or top + 1 in sh.filtered):
            top += 1
        setattr(sh, name + "reach", top)


def next_range(sh, name=""):
    """(lo, hi): a request of the shard in order starts at lo..hi; name
    "ack_" for the worker's view (acked sequences only)."""
    base, reach = getattr(sh, name + "base"), getattr(sh, name + "reach")
    return ((sh.first - 1 if base is None else base) + 1,
            (sh.first - 1 if reach is None else reach) + 1)


# ---------------------------------------------------------------------------
# The log
# ---------------------------------------------------------------------------

def kafka_log(path, by_path):
    """Yields (line number, entry) like read_log, from the messages of a Kafka
    topic (test/kafka/consume.js's lines) that one checked connector
    produced: each distinct message once, as an acked request of its records
    (one, or an UPDATE event's two), per shard in sequence order.  Kafka keeps order per
    partition, not per shard, and delivery is at least once: so
    [shard_order] and [duplicates] say nothing here.  [key_order] is checked
    on the topic itself instead: per partition and key, the first copies
    arrive in sequence order."""
    if len(by_path) != 1:
        raise UsageError("--kafka checks one connector: name it with --connector")
    conn = next(iter(by_path.values()))
    seen, entries, key_last, messages = set(), [], {}, 0
    with open(path, "rb") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            m = json.loads(line)
            messages += 1
            eid = (m.get("headers") or {}).get("event_id")
            if eid in seen:
                continue
            seen.add(eid)
            shard, seq = (int(x) for x in eid.split(":"))
            key = (m.get("partition"), m.get("key"))
            if key[1] is not None:
                if key in key_last and key_last[key] >= seq:
                    conn.fail("key_order", f"topic line {n}: key {key[1]!r} in partition {key[0]}: "
                              f"sequence {seq} arrived after {key_last[key]}")
                key_last[key] = seq
            value = json.loads(m.get("value") or "null")
            if conn.format in NAMED_FORMATS:
                # An event: an UPDATE with both images holds records n and n + 1.
                change = value.get("data") if conn.format == "cloudevents" else value
                records = [{"event_id": eid, "system_time": value.get("systemTime"),
                            "data": value}]
                if change.get("op") == "UPDATE" and change.get("before") is not None \
                        and change.get("after") is not None:
                    records.append({"event_id": f"{shard}:{seq + 1}",
                                    "system_time": value.get("systemTime"), "data": value})
            else:
                data = value.get("data") if isinstance(value, dict) else None
                records = [{"event_id": eid, "system_time": value.get("systemTime"),
                            "data": json.loads(data) if isinstance(data, str) else value}]
            entries.append((shard, seq, n, {
                "t_ms": float(n), "path": conn.path, "status": 200, "format": conn.format,
                "shard": shard, "event_ids": [r["event_id"] for r in records],
                "records": records}))
    conn.stats["distinct_messages"] = len(seen)
    conn.stats["messages"] = messages
    for shard, seq, n, e in sorted(entries, key=lambda x: x[:3]):
        yield n, e


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


def reply_prefix(e, conn):
    """How many records of a request answered 2xx its reply acknowledges,
    from the first: all, unless the connector honours partial batch
    responses and the reply listed batchItemFailures (logged as
    "item_failures"); then those before the first eventId listed, in batch
    order, or none if an eventId listed is not in the request."""
    ids = [str(x) for x in e.get("event_ids") or []]
    failures = e.get("item_failures")
    if not conn.partial_response or not failures:
        return len(ids)
    if not isinstance(failures, list):
        return 0
    pos = {}
    for i, eid in enumerate(ids):
        pos.setdefault(eid, i)
    if any(str(f) not in pos for f in failures):
        return 0
    return min(pos[str(f)] for f in failures)


def has_poison(data, args):
    """Does a record's data, as the receiver logged it, hold a --poison string?"""
    text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    return any(s in text for s in args.poison)


def is_redelivery(sh, seqs):
    """Could a request be dead letters sent again (redeliver_dead_letters)?
    Increasing sequences from at or below the base, each a dead letter or
    passed over unanswered, none acked before."""
    return sh.base is not None and seqs[0] <= sh.base \
        and all(a < b for a, b in zip(seqs, seqs[1:])) \
        and all((q in sh.dead or q in sh.skipped) and q not in sh.acked for q in seqs)


def parse_ids(e):
    out = []
    for eid in e.get("event_ids") or []:
        try:
            s, q = str(eid).split(":")
            out.append((int(s), int(q)))
        except ValueError:
            return None
    return out


def decode_cursor(cursor):
    """A DIS next_partition_cursor (unpadded base64 of a JSON object), decoded; None if it is not one."""
    try:
        doc = json.loads(base64.b64decode(cursor + "=" * (-len(cursor) % 4), validate=True))
        return doc if isinstance(doc, dict) else None
    except (ValueError, TypeError):
        return None


def body_key(e, conn):
    """What must be equal between two sendings of the same batch."""
    exact = conn.format == "datahub" or conn.format in NAMED_FORMATS
    if exact or "body" not in e:
        return e.get("body_sha256") if exact else None
    try:
        doc = json.loads(e["body"])
        doc["Message"].pop("millis_behind_latest", None)
        cursor = decode_cursor(doc["Message"].get("next_partition_cursor"))
        if cursor is not None:
            cursor.pop("generateTimestamp", None)
            doc["Message"]["next_partition_cursor"] = cursor
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
    if conn.format in NAMED_FORMATS:
        source = f"/projects/{ctx['database']}/topics/{conn.stream_name}"
        if conn.format == "json" and (doc.get("stream") != conn.stream_name
                                      or doc.get("shard") != shard):
            conn.fail("content", f"{where}: json envelope names stream {doc.get('stream')} "
                      f"shard {doc.get('shard')}, not {conn.stream_name} {shard}")
        if conn.format == "cloudevents" and any(ev.get("source") != source for ev in doc):
            conn.fail("content", f"{where}: a CloudEvent's source is not {source}")
        return
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
    want_cursor = {"stream-name": conn.stream_name, "partition-id": "shardId-%010d" % shard,
                   "cursor-type": "AT_SEQUENCE_NUMBER", "starting-sequence-number": str(last + 1)}
    cursor = decode_cursor(msg.get("next_partition_cursor") or "")
    problems = []
    if doc.get("ShardID") != "shardId-%010d" % shard:
        problems.append(f"ShardID {doc.get('ShardID')!r}")
    if doc.get("StreamName") != conn.stream_name:
        problems.append(f"StreamName {doc.get('StreamName')!r}")
    if doc.get("Tag") != "latest":
        problems.append(f"Tag {doc.get('Tag')!r}")
    if (cursor is None or cursor.get("getIteratorParam") != want_cursor
            or not isinstance(cursor.get("generateTimestamp"), int)
            or msg["next_partition_cursor"].endswith("=")):
        problems.append(f"next_partition_cursor {msg.get('next_partition_cursor')!r} decodes to "
                        f"{cursor!r}, not the unpadded base64 of {{\"getIteratorParam\": "
                        f"{want_cursor!r}, \"generateTimestamp\": <ms>}}")
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
    acked = reply_prefix(e, conn) if res != "failed" else 0
    if res != "failed" and acked < len(e.get("event_ids") or []):
        st["partial_replies"] += 1
        if acked == 0:
            res = "failed"
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
    sh = conn.shards[shard]
    redelivery = args.redelivered_ok and is_redelivery(sh, seqs)
    gapless = all(q in seqs or q in sh.filtered for q in range(seqs[0], seqs[-1] + 1)) \
        and seqs == sorted(set(seqs))
    # A batch of named events may read one record more, not to cut an UPDATE apart.
    limit = conn.batch_size + (1 if conn.format in NAMED_FORMATS or conn.filter else 0)
    if len(seqs) > limit or not (gapless or redelivery):
        conn.fail("batch_shape", f"{where}: shard {shard}: not 1..{conn.batch_size} consecutive "
                  f"sequences: {seqs[:5]}{'...' if len(seqs) > 5 else ''} ({len(seqs)})")
        return

    check_records(where, e, conn, ids, recs, ctx, args, acked if res == "ack" else 0)
    if "body" in e:
        check_envelope(e, conn, ids, recs, ctx, where)
    check_order(where, e, conn, sh, seqs, res, redelivery, args)

    if res == "failed":
        sh.tried.update(seqs)
        return
    sh.tried.update(seqs[acked:])
    if acked < len(seqs) and res == "ack":
        res = "partial"
    record_answer(where, e, conn, sh, seqs[:acked], res, recs, redelivery)


NAMED_FORMATS = ("json", "cloudevents")
OPS = {"INSERT": "I", "UPDATE": "U", "DELETE": "D"}


def check_event(where, conn, key, event, rec):
    """[content] of a named event (json, cloudevents): its eventId, op and
    table are the stored record's."""
    change = event.get("data") if conn.format == "cloudevents" else event
    eid = event.get("id") if conn.format == "cloudevents" else event.get("eventId")
    if not isinstance(change, dict) or OPS.get(change.get("op")) != rec[5] \
            or change.get("table") != rec[6]:
        conn.fail("content", f"{where}: eventId {key[0]}:{key[1]}: op or table differs from "
                  f"event_bridge.records ({rec[5]} {rec[6]})")
    first = f"{key[0]}:{key[1]}"
    if eid != first and eid != f"{key[0]}:{key[1] - 1}":
        conn.fail("content", f"{where}: eventId {first} is in an event named {eid}")


def check_records(where, e, conn, ids, recs, ctx, args, acked):
    """[content] and [aborted] for every decoded request, whatever its
    outcome; [dead_letters] for the first acked records that are not stored
    (the stored ones are compared after the log)."""
    st = conn.stats
    shard = ids[0][0]
    for i, (r, key) in enumerate(zip(e.get("records") or [], ids)):
        st["records_received"] += 1
        data = r.get("data")
        for s in args.forbid_substring:
            if isinstance(data, list) and any(isinstance(x, str) and s in x for x in data) \
                    or isinstance(data, str) and s in data:
                conn.fail("aborted", f"{where}: eventId {key[0]}:{key[1]} carries {s!r}")
        rec = recs.get(key)
        if rec is None:
            if i < acked and args.poison and has_poison(data, args):
                conn.fail("dead_letters", f"{where}: eventId {key[0]}:{key[1]} carries the "
                          "poison and was acked")
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
        if conn.format in NAMED_FORMATS:
            check_event(where, conn, key, data if isinstance(data, dict) else {}, rec)
            continue
        got = digest(data) if isinstance(data, str) else canonical(data)
        if got != rec[4] and got != rec[3]:
            conn.fail("content", f"{where}: eventId {key[0]}:{key[1]}: data differs from "
                      f"event_bridge.records")
        if conn.format == "datahub" and r.get("system_time") != rec[0]:
            conn.fail("content", f"{where}: eventId {key[0]}:{key[1]}: systemTime "
                      f"{r.get('system_time')}, stored {rec[0]}")


def check_order(where, e, conn, sh, seqs, res, redelivery, args):
    """[shard_order] and [duplicates]: a request against the shard's
    answered history, before its own answer counts."""
    st = conn.stats
    shard, first = sh.shard_id, seqs[0]
    lo, hi = next_range(sh)
    if redelivery:
        st["redeliveries"] += 1
    elif first > hi:
        skipped = {q for q in range(lo, first) if q not in sh.dead}
        if args.redelivered_ok and all(q in sh.tried for q in skipped):
            # Dead letters since redelivered, acknowledged and so gone
            # from the view?  Only if a redelivery acks them later.
            sh.jumps.append((where, first, skipped))
            sh.skipped.update(range(lo, first))
            sh.base = first - 1
            if sh.ack_base is None or sh.ack_base < first - 1:
                sh.ack_base = first - 1
            advance(sh)
        else:
            conn.fail("shard_order", f"{where}: shard {shard}: a batch from {first} was sent while "
                      f"{min(skipped)} had no 2xx answer and is no dead letter (status "
                      f"{e.get('status')})")
    elif first >= lo:
        sh.skipped.update(range(lo, first))     # dead letters passed over
    elif sh.answered_max is None and not sh.first_exact:
        pass            # retention removed the records before: start unknown
    elif sh.first_exact and first < sh.first:
        conn.fail("shard_order", f"{where}: shard {shard}: sequence {first} is before the "
                  f"connector's first position {sh.first}")
    elif any(q not in sh.answered for q in seqs if q <= sh.base):
        hint = ""
        if not args.redelivered_ok and is_redelivery(sh, seqs):
            hint = " (dead letters sent again? see --redelivered-ok)"
        conn.fail("shard_order", f"{where}: shard {shard}: sequences {first}..{seqs[-1]} "
                  f"first arrive after {sh.base}{hint}")
    else:
        check_resend(where, e, conn, sh, seqs, res, args)


def check_resend(where, e, conn, sh, seqs, res, args):
    """[duplicates]: a request that repeats answered records, starting
    below the base."""
    st = conn.stats
    shard, cur = sh.shard_id, tuple(seqs)
    if sh.last_batch is None:
        conn.fail("duplicates", f"{where}: shard {shard}: sequences {cur[0]}..{cur[-1]} sent "
                  "again, but only a redelivery answered them")
        return
    prev_ids, prev_key, prev_res, prev_t = sh.last_batch
    ack_lo, ack_hi = next_range(sh, "ack_")
    if cur[0] != prev_ids[0] or cur[:len(prev_ids)] != prev_ids[:len(cur)] \
            or len(cur) < len(prev_ids):
        if ack_lo <= cur[0] <= ack_hi and all(q in sh.tried and q not in sh.acked for q in cur):
            # The answer was lost, and a retry failed since: the worker may
            # cut the records anew (bisection), from its offset on.
            st["bisected_resends"] += 1
        elif args.disruptions is not None and (
                (cur[0] in prev_ids and all(q in prev_ids for q in cur if q in sh.acked))
                or cur[0] == prev_ids[-1] + 1):
            # A crash lost the answer of a half of a bisected batch: after
            # the restart the failed batch is read and bisected again, so
            # the half's records come back cut differently.  Or a crash
            # lost the offset of a batch acked just before it: after the
            # restart the batch is read again, extended, and if that
            # fails it is bisected, so a later half (starting right after
            # the latest answered one) repeats records acked before the
            # crash.  A window must lie between (checked at the end, as
            # for a batch acked twice).
            st["bisected_resends"] += 1
            first_t = min(sh.answered_at.get(q, prev_t) for q in cur if q in sh.answered)
            conn.acked_twice.append((first_t, e.get("t_ms") or 0, where, shard,
                                     cur[0], cur[-1]))
        else:
            conn.fail("duplicates", f"{where}: shard {shard}: sequences {cur[0]}..{cur[-1]} "
                      f"sent again, but the latest answered batch is {prev_ids[0]}..{prev_ids[-1]}")
        return
    if len(cur) == len(prev_ids) and prev_key is not None \
            and body_key(e, conn) not in (None, prev_key):
        conn.fail("duplicates", f"{where}: shard {shard}: batch {cur[0]}..{cur[-1]} "
                  "sent again with a different body")
        return
    if res != "failed":
        st["duplicate_batches"] += 1
        if len(cur) > len(prev_ids):
            st["extended_resends"] += 1
        if prev_res == "lost":
            st["resent_after_lost_ack"] += 1
        else:
            st["acked_twice"] += 1
    if prev_res == "partial" and args.disruptions is None:
        conn.fail("duplicates", f"{where}: shard {shard}: sequences {prev_ids[0]}..{prev_ids[-1]} "
                  "sent again, though a partial reply (item failures) acknowledged them; only "
                  "the records from the first item failure on are to be sent again (a crash "
                  "in between would explain it: --disruptions FILE)")
    elif prev_res != "lost" and (res != "failed" or prev_res == "partial"):
        conn.acked_twice.append((prev_t, e.get("t_ms") or 0, where, shard,
                                 prev_ids[0], prev_ids[-1]))


def record_answer(where, e, conn, sh, seqs, res, recs, redelivery):
    """Adds the answered records of a request (res "ack", "lost", or
    "partial" = acked, but not the whole request) to the shard's history;
    [key_order] on their first arrivals."""
    shard = sh.shard_id
    acked = res != "lost"
    if redelivery:              # out of order by nature: no history, no key order
        sh.answered.update(seqs)
        if acked:
            sh.acked.update(seqs)
            sh.redelivered.update(seqs)
        return
    key = body_key(e, conn) if res != "partial" else None
    t_ms = e.get("t_ms") or 0
    if sh.last_batch is None or seqs[0] != sh.last_batch[0][0] or len(seqs) >= len(sh.last_batch[0]):
        sh.last_batch = (tuple(seqs), key, res, t_ms)
    else:
        sh.last_batch = (sh.last_batch[0], sh.last_batch[1], res, t_ms)
    for q in seqs:
        if q not in sh.answered:
            sh.answered.add(q)
            sh.answered_at[q] = t_ms
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
    if acked:
        sh.acked.update(seqs)
        if sh.acked_max is None or seqs[-1] > sh.acked_max:
            sh.acked_max = seqs[-1]
    advance(sh)


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


def check_after(conn, recs, snap1, snap2, quiescent, args):
    st = conn.stats
    distinct = 0
    fresh = not args.log_not_fresh
    for shard, sh in conn.shards.items():
        (state, dseq, nxt, pending, delivered, failures, attempts, gen, skip_before,
         c_delivered, c_pending) = snap1[(conn.name, shard)]
        dseq, nxt, pending, gen = int(dseq), int(nxt), int(pending), int(gen)
        fresh = fresh and gen == 0
        distinct += len(sh.acked - sh.redelivered)
        done = sh.acked | sh.dead | sh.filtered
        start = sh.first if sh.first_exact or not done else min(sh.first, min(done))
        missing = [q for q in range(start, dseq + 1) if q not in done]
        if missing:
            lost_only = [q for q in missing if q in sh.answered]
            conn.fail("missing", f"shard {shard}: {len(missing)} record(s) up to the offset "
                      f"{dseq} never acked and no dead letters: {ranges(missing)}"
                      + (f" ({len(lost_only)} only answered by a reply the client could not "
                         "see)" if lost_only else ""))
        for where, first, skipped in sh.jumps:
            left = skipped - sh.redelivered
            if left:
                conn.fail("shard_order", f"{where}: shard {shard}: a batch from {first} was sent "
                          f"while {ranges(left)} had no 2xx answer, and they are no dead letters "
                          "nor acked by a later redelivery")
        check_dead_letters(conn, sh, recs, start, dseq, quiescent, args)
        if pending != max(nxt - 1 - dseq, 0):
            conn.fail("status", f"shard {shard}: pending {pending}, but next_sequence {nxt} - 1 - "
                      f"delivered_sequence {dseq} = {nxt - 1 - dseq}")
        if dseq > nxt - 1:
            conn.fail("status", f"shard {shard}: delivered_sequence {dseq} is beyond the head "
                      f"{nxt - 1}")
        if quiescent:
            done = sh.acked | {q for q in sh.dead | sh.filtered if q <= dseq}
            top = max(done) if done else sh.first - 1
            if top != dseq:
                conn.fail("status", f"shard {shard}: delivered_sequence {dseq}, but the highest "
                          f"acked or dead-lettered sequence is {top}")
    st["distinct_acked"] = distinct
    any_row = snap1[(conn.name, 0)]
    if quiescent and fresh:
        if int(any_row[9]) != distinct:
            conn.fail("status", f"connector_status.delivered {any_row[9]}, but {distinct} "
                      "distinct eventIds were acked (redeliveries aside)")
    elif quiescent:
        conn.checks.setdefault("status", "ok (delivered count not compared: "
                               + ("reset_connector happened)" if not args.log_not_fresh
                                  else "--log-not-fresh)"))


def check_dead_letters(conn, sh, recs, start, dseq, quiescent, args):
    """[dead_letters] of one shard: each dead letter is a stored record's
    copy, with --poison one that holds the poison; each poison record is
    never acked and, once the offset passed it, a dead letter; at rest none
    lies beyond the offset."""
    shard = sh.shard_id
    healthy = []
    for seq, eid, text in sh.dead_rows:
        if eid != f"{shard}:{seq}":
            conn.fail("dead_letters", f"dead letter {shard}:{seq}: event_id {eid!r}")
        rec = recs.get((shard, seq))
        if rec is not None and data_digest(text) != rec[4]:
            conn.fail("dead_letters", f"dead letter {shard}:{seq}: data differs from "
                      "event_bridge.records")
        if args.poison and seq not in sh.poison and not any(s in text for s in args.poison):
            healthy.append(seq)
        if quiescent and seq > dseq:
            conn.fail("dead_letters", f"dead letter {shard}:{seq} is beyond the offset "
                      f"{dseq} of a connector at rest")
    if healthy:
        conn.fail("dead_letters", f"shard {shard}: {len(healthy)} dead letter(s) without the "
                  f"poison: {ranges(healthy)[:200]}")
    acked = sorted(q for q in sh.poison if q in sh.acked)
    if acked:
        conn.fail("dead_letters", f"shard {shard}: {len(acked)} poison record(s) acked: "
                  f"{ranges(acked)[:200]}")
    passed = sorted(q for q in sh.poison if start <= q <= dseq and q not in sh.dead
                    and q not in sh.acked)
    if passed:
        conn.fail("dead_letters", f"shard {shard}: {len(passed)} poison record(s) up to the "
                  f"offset {dseq} are no dead letters: {ranges(passed)[:200]}")


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
              "duplicates", "batch_shape", "status", "storage", "dead_letters")


def run(args):
    db = Db(args)
    ctx = {}
    row = db.all("SELECT current_database(), current_setting('event_bridge.region', true)")[0]
    ctx["database"], ctx["region"] = row[0], row[1]
    conns = [Connector(r) for r in db.rows("""
        SELECT c.connector_id, c.connector_name, c.stream_id, s.stream_name, c.endpoint,
               c.format, c.batch_size, ceil(extract(epoch FROM c.timeout) * 1000)::bigint,
               s.shard_count,
               -- settings of 0.2, absent from an older install
               coalesce((to_jsonb(c) ->> 'partial_batch_response')::boolean, false),
               coalesce(to_jsonb(c) ->> 'on_failure', 'suspend'),
               to_jsonb(c) ->> 'filter'
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
    load_dead_letters(db, conns, args)

    other_paths, corrupt = {}, []
    entries = kafka_log(args.log, by_path) if args.kafka else read_log(args.log)
    for n, e in entries:
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
        check_after(c, records[c.stream_id], snap1, snap2, quiescent, args)
        check_storage(c, records[c.stream_id], snap1)
        if not quiescent:
            why = "not at rest (pending > 0 or the views moved during the check)"
            if args.require_quiescent:
                c.fail("status", f"{why}; --require-quiescent")
            else:
                c.checks.setdefault("status", f"skip: exact comparisons, {why}")
        if not args.forbid_substring:
            c.checks.setdefault("aborted", "skip: no --forbid-substring")
        if not c.has_dead_letters:
            c.checks.setdefault("dead_letters", "skip: no view event_bridge.dead_letters (an "
                                "install before 0.2): no dead letters")
        elif not args.poison:
            c.checks.setdefault("dead_letters", "ok (no --poison: not compared with the poison)")
        elif not quiescent:
            c.checks.setdefault("dead_letters", "ok (not at rest: dead letters beyond the "
                                "offset not looked for)")
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
            "on_failure": c.on_failure, "partial_batch_response": c.partial_response,
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
              + (f", {s['dead_letters']} dead letters" if s["dead_letters"] is not None else "")
              + (f", {s['partial_replies']} partial replies" if s["partial_replies"] else "")
              + (f", {s['bisected_resends']} resends cut anew" if s["bisected_resends"] else "")
              + (f", {s['redeliveries']} redeliveries" if s["redeliveries"] else "")
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
    p.add_argument("--kafka", action="store_true",
                   help="--log is a Kafka topic read back by test/kafka/consume.js")
    p.add_argument("-h", "--host")
    p.add_argument("-p", "--port")
    p.add_argument("-d", "--dbname")
    p.add_argument("-U", "--user")
    p.add_argument("--psql", default="psql")
    p.add_argument("--connector", action="append", default=[],
                   help="a connector to check (repeatable); default all")
    p.add_argument("--forbid-substring", action="append", default=[],
                   help="must appear in no delivered and no stored record (repeatable)")
    p.add_argument("--poison", action="append", default=[], metavar="S",
                   help="the receiver's --poison: records holding S are to be dead letters, "
                   "and only they (repeatable)")
    p.add_argument("--redelivered-ok", action="store_true",
                   help="dead letters may be sent again (redeliver_dead_letters)")
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
    if "" in args.poison:
        p.error("--poison needs a non-empty string")
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
