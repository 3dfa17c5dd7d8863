#!/usr/bin/env python3
"""Test HTTP "function endpoint" for event_bridge (Python 3.11 stdlib only).

Usage:
  python3 test/receiver.py --port 8401 --log /tmp/x.jsonl [--print]
      [--delay-ms N] [--fail-first N] [--fail-status 500]
      [--schedule SPEC --seed S] [--slow-ms 5000] [--port-file PATH]
      [--poison S ... [--poison-status 400 | --partial-response]]

Listens on 127.0.0.1 only, HTTP/1.1 keep-alive.  --port 0 picks a free port;
--port-file then gets that port number once the server is listening (written
to a temp file and renamed, so readers never see a partial file).

POST on any path is accepted.  The body is parsed as one of four formats:
  datahub  {"eventSourceARN": "/projects/<db>/topics/<stream>",
            "records": [{"eventId": "<shard>:<seq>", "systemTime": ms,
                         "data": "<JSON array as a string>"}], ...}
  dis      {"ShardID": "shardId-0000000003", "StreamName": ...,
            "Message": {"records": [{"sequence_number": "12",
                         "data": "<base64 of the JSON array>"}], ...}}
            (event id = "<number from ShardID>:<sequence_number>")
  json     {"stream": ..., "shard": 0, "events": [{"eventId": "0:12", "op": ...,
            "before": {...}|null, "after": {...}|null, ...}]}
  cloudevents  [{"specversion": "1.0", "id": "0:12", "data": {"op": ...,
            "before": ..., "after": ...}, ...}]
            (an UPDATE event with both images holds two records, the before
            and after records n and n+1: both event ids are logged; a
            record's "data" is the event)
Anything else is logged as format "unknown".  GET /stats returns
{"requests": n, "records": m, "unique_event_ids": k}: requests counts every
POST, records/unique_event_ids only those answered with 2xx (of a reply
with batchItemFailures, only the records before the first one listed).

Log: one JSON line per POST, appended and flushed BEFORE the reply (and
before any delay), also for injected errors, so a test can count attempts:
  {"t_ms": receive time (epoch ms, float), "path": "/...",
   "format": "datahub"|"dis"|"json"|"cloudevents"|"unknown", "status": status answered or null,
   "fault": fault name or null, "shard": int or null, "event_ids": [...],
   "body_sha256": hex of the raw body, "bytes": its length,
   "records": [{"event_id": "0:12",
   "system_time": int or null, "data": decoded JSON array}, ...]}
A request whose body was cut off by the client gets no reply and is logged
with status null plus an extra "error" key.  Fault "reset" logs status null;
"partial" logs 200 (the status in its truncated reply).  A reply that lists
batchItemFailures (--partial-response) adds "item_failures": [eventIds, in
the order listed].

Faults (the request number / random draw is taken under the lock in arrival
order; cut-off requests do not count):
  --poison S        (repeatable) a request holding a record whose decoded data
                    (DataHub: the data string; DIS: the base64-decoded data;
                    i.e. the text of the record's JSON array) contains S is a
                    poison request.  It is decided first: a poison request is
                    always answered --poison-status (default 400, a short
                    text body naming the poison eventIds; fault "poison"),
                    and neither counts for --fail-first nor draws from
                    --schedule, so the other faults hit only the other
                    requests, in the same order whatever the bisection does.
  --poison-event-id ID  (repeatable) the record with this eventId is poison too.
  --partial-response  poison requests are answered 200 instead, with the
                    JSON body {"batchItemFailures": [{"itemIdentifier":
                    "<eventId>"}, ...]} listing the poison records in batch
                    order (fault "item-failures"; Lambda's partial batch
                    response): the records before the first one listed are
                    acknowledged, the rest is not.
  --reply-body TEXT the body of every other 200 reply (default {"ok":true}),
                    e.g. a malformed batchItemFailures answer.
  --delay-ms N      sleep N ms before answering every POST.
  --fail-first N    the first N POSTs get --fail-status (fault "fail-first").
  --retry-after V   the Retry-After header of 429 and 503 replies (default:
                    "1" on 429, none on 503).
  --schedule SPEC   later POSTs draw an outcome from random.Random(--seed),
                    weighted, e.g. 200:70,500:10,503:5,429:5,slow:4,reset:3
                    NNN = that status, 200..599, e.g. 400, 401, 403, 404,
                    410 for the failure classes (429 adds "Retry-After: 1");
                    slow = sleep --slow-ms then 200; reset = close the socket
                    with SO_LINGER 0 (client sees a TCP reset); partial =
                    headers promise more body than is sent, then close.
--print writes one line per record to stdout: "<event_id>  <op> <table>
<columns>" for event_bridge's TUPLE records (op and table are fields 1 and
4 of the data array, the columns follow its eight metadata fields), else
"<event_id>  <data>".
--keep-body adds the raw request body to each log line as "body".
--webhook-secret whsec_... verifies every POST's Standard Webhooks headers
(webhook-id, webhook-timestamp within 5 minutes, webhook-signature "v1,"
base64 HMAC-SHA256 of "id.timestamp.body"), decided before any fault: a
request that fails is answered 401 (fault "bad-signature"); the log line
gets "webhook_id" and, with --print, a line "<webhook-id>: signature
verified".
"""
import argparse, base64, hashlib, hmac, http.server, json, os, random
import signal, socket, struct, sys, threading, time

ARGS = None                     # parsed command line, set in main()
LOCK = threading.Lock()         # guards the log file, counters and the RNG
STATE = {"requests": 0, "complete": 0, "records": 0, "ids": set(),
         "log": None, "rng": None, "schedule": []}
OK = b'{"ok":true}'


def parse_json(text):
    """Decode JSON from str/bytes; if that fails return the input as text."""
    try:
        return json.loads(text)
    except (TypeError, ValueError):
        return text.decode("latin-1") if isinstance(text, bytes) else text


def to_int(s):
    return int(s) if isinstance(s, str) and s.isdigit() else None


def as_text(data):
    """The text of a record's data as sent: a str as is, bytes as UTF-8."""
    if isinstance(data, bytes):
        return data.decode("utf-8", "replace")
    return data if isinstance(data, str) else json.dumps(data)


def event_records(event_id, change, event):
    """The records a named event holds: an UPDATE with both images is the
    before and after records, n and n+1."""
    ids = [event_id]
    if (isinstance(event_id, str) and isinstance(change, dict)
            and change.get("op") == "UPDATE" and change.get("before") is not None
            and change.get("after") is not None):
        shard, seq = event_id.split(":")
        ids.append(f"{shard}:{int(seq) + 1}")
    return [{"event_id": i, "system_time": event.get("systemTime"), "data": event}
            for i in ids]


def decode_events(doc):
    """(format, shard, records, texts) of a json or cloudevents body."""
    if isinstance(doc, dict) and isinstance(doc.get("events"), list):
        fmt, events = "json", doc["events"]
        pairs = [(e.get("eventId"), e, e) for e in events if isinstance(e, dict)]
    elif isinstance(doc, list) and doc and all(isinstance(e, dict) and "specversion" in e
                                               for e in doc):
        fmt = "cloudevents"
        pairs = [(e.get("id"), e.get("data"), e) for e in doc]
    else:
        return "unknown", None, [], []
    recs, texts = [], []
    for event_id, change, event in pairs:
        for r in event_records(event_id, change, event):
            recs.append(r)
            texts.append(json.dumps(event))
    first = recs[0]["event_id"] if recs else None
    shard = to_int(first.split(":")[0]) if isinstance(first, str) else None
    return fmt, shard, recs, texts


def decode(body):
    """Return (format, shard, records, texts) for a raw request body; texts
    holds each record's data as sent (the text of its JSON array)."""
    doc = parse_json(body)
    if not isinstance(doc, dict) or "events" in doc:
        return decode_events(doc)
    if "eventSource" in doc or "eventSourceARN" in doc:            # DataHub
        raw = doc.get("records") or []
        recs = [{"event_id": r.get("eventId"),
                 "system_time": r.get("systemTime"),
                 "data": parse_json(r.get("data"))}
                for r in raw]
        first = recs[0]["event_id"] if recs else None
        shard = to_int(first.split(":")[0]) if isinstance(first, str) else None
        return "datahub", shard, recs, [as_text(r.get("data")) for r in raw]
    if "ShardID" in doc and isinstance(doc.get("Message"), dict):   # DIS
        shard = to_int(str(doc["ShardID"]).rsplit("-", 1)[-1])  # "0..03"
        recs, texts = [], []
        for r in doc["Message"].get("records") or []:
            try:
                raw = base64.b64decode(r.get("data") or "")
                data = parse_json(raw)
            except ValueError:                      # not valid base64
                raw = data = r.get("data")
            recs.append({"event_id": f"{shard}:{r.get('sequence_number')}",
                         "system_time": None, "data": data})
            texts.append(as_text(raw))
        return "dis", shard, recs, texts
    return "unknown", None, [], []


def poison_ids(recs, texts):
    """The eventIds of the records whose data text holds a --poison
    string, or that --poison-event-id names, in batch order."""
    return [r["event_id"] for r, text in zip(recs, texts)
            if any(s in text for s in ARGS.poison) or r["event_id"] in ARGS.poison_event_id]


def choose_fault():
    """Outcome for the next complete request: "fail-first", "200", "503",
    "slow", "reset" or "partial".  Must be called with LOCK held."""
    STATE["complete"] += 1
    if STATE["complete"] <= ARGS.fail_first:
        return "fail-first"
    if STATE["schedule"]:
        names, weights = zip(*STATE["schedule"])
        return STATE["rng"].choices(names, weights)[0]
    return "200"


def summary(data, width=120):
    """Short text for --print: operation, table and columns of a record."""
    if isinstance(data, list) and len(data) >= 8 \
            and isinstance(data[1], str) and isinstance(data[4], str):
        flags = "before" if data[6] == "Y" else "after"
        text = f"{data[1]} {data[4]} {flags:6} {json.dumps(data[8:], ensure_ascii=False)}"
    else:
        text = json.dumps(data)
    return text if len(text) <= width else text[:width - 3] + "..."


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"   # keep-alive: always send Content-Length
    disable_nagle_algorithm = True  # else keep-alive replies stall ~40 ms

    def log_message(self, *args):   # silence the default stderr access log
        pass

    def reply(self, status, body, ctype="text/plain", extra=()):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for name, value in extra:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def reply_status(self, status, body):
        """A text reply with a non-200 status; 429 and 503 carry
        Retry-After as --retry-after says."""
        if ARGS.retry_after is not None and status in (429, 503):
            extra = [("Retry-After", ARGS.retry_after)]
        else:
            extra = [("Retry-After", "1")] if status == 429 else []
        self.reply(status, body, extra=extra)

    def do_GET(self):
        if self.path.split("?")[0] != "/stats":
            return self.reply(404, b"not found\n")
        with LOCK:
            stats = {"requests": STATE["requests"], "records": STATE["records"],
                     "unique_event_ids": len(STATE["ids"])}
        self.reply(200, json.dumps(stats).encode(), "application/json")

    def read_body(self):
        """Return (body bytes, error text or None if the body is complete)."""
        self.connection.settimeout(30)   # don't wait forever for a lost body
        try:
            if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                body, size = b"", -1
                while size != 0:          # <hex size>\r\n<data>\r\n ... 0\r\n
                    size = int(self.rfile.readline().split(b";")[0], 16)
                    body += self.rfile.read(size + 2)[:size]
                return body, None
            want = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(want)
            if len(body) < want:
                return body, f"body cut off: got {len(body)} of {want} bytes"
            return body, None
        except (OSError, ValueError) as e:
            return b"", f"body read failed: {e}"
        finally:
            self.connection.settimeout(None)   # idle keep-alive may wait

    def webhook_problem(self, body):
        """Why the Standard Webhooks headers do not verify, or None."""
        msg_id = self.headers.get("webhook-id", "")
        stamp = self.headers.get("webhook-timestamp", "")
        if not msg_id or not stamp.isdigit():
            return "no webhook-id or webhook-timestamp"
        if abs(time.time() - int(stamp)) > 300:
            return "webhook-timestamp is more than 5 minutes away"
        key = base64.b64decode(ARGS.webhook_secret.removeprefix("whsec_"))
        mac = hmac.new(key, f"{msg_id}.{stamp}.".encode() + body, hashlib.sha256).digest()
        want = "v1," + base64.b64encode(mac).decode()
        given = self.headers.get("webhook-signature", "").split(" ")
        return None if any(hmac.compare_digest(want, g) for g in given) else "signature mismatch"

    def do_POST(self):
        t_ms = time.time() * 1000.0
        body, error = self.read_body()
        try:
            fmt, shard, recs, texts = decode(body)
        except Exception:              # odd shapes, e.g. records not objects
            fmt, shard, recs, texts = "unknown", None, [], []
        poisoned = [] if error else poison_ids(recs, texts)
        bad_signature = None if error or not ARGS.webhook_secret else self.webhook_problem(body)
        entry = {"t_ms": t_ms, "path": self.path, "format": fmt,
                 "status": None, "fault": None, "shard": shard,
                 "event_ids": [r["event_id"] for r in recs],
                 "body_sha256": hashlib.sha256(body).hexdigest(),
                 "bytes": len(body),
                 "records": recs}
        if ARGS.keep_body:
            entry["body"] = body.decode("utf-8", "replace")
        if ARGS.webhook_secret:
            entry["webhook_id"] = self.headers.get("webhook-id")
        acked = len(recs)              # records a 2xx acknowledges
        with LOCK:                     # decide, count and log atomically
            # Poison first: it neither counts for --fail-first nor draws.
            fault = (None if error else "bad-signature" if bad_signature
                     else "poison" if poisoned else choose_fault())
            if error:
                entry["error"] = error
            elif fault == "bad-signature":
                entry["status"], entry["fault"], entry["error"] = 401, fault, bad_signature
            elif fault == "poison" and ARGS.partial_response:
                entry["status"], entry["fault"] = 200, "item-failures"
                entry["item_failures"] = poisoned
                acked = entry["event_ids"].index(poisoned[0])
            elif fault == "poison":
                entry["status"], entry["fault"] = ARGS.poison_status, fault
            elif fault == "fail-first":
                entry["status"], entry["fault"] = ARGS.fail_status, fault
            elif fault.isdigit():
                entry["status"] = int(fault)
                entry["fault"] = None if fault == "200" else fault
            else:                      # slow / reset / partial
                entry["status"] = None if fault == "reset" else 200
                entry["fault"] = fault
            STATE["requests"] += 1
            if 200 <= (entry["status"] or 0) < 300 and fault != "partial":
                STATE["records"] += acked
                STATE["ids"].update(entry["event_ids"][:acked])
            STATE["log"].write(json.dumps(entry) + "\n")
            STATE["log"].flush()
            if ARGS.print and ARGS.webhook_secret:
                print(f"{entry['webhook_id']}: " + (bad_signature or "signature verified"), flush=True)
            if ARGS.print:
                for r in recs:
                    print(f"{r['event_id']}  {summary(r['data'])}", flush=True)

        if error:                      # the client went away mid-body
            self.close_connection = True
            return
        time.sleep(ARGS.delay_ms / 1000.0)
        if fault == "slow":
            time.sleep(ARGS.slow_ms / 1000.0)
        if fault == "reset":
            # SO_LINGER 0 + close => the kernel sends RST instead of FIN.
            # rfile holds a reference to the socket, so close it first.
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                       struct.pack("ii", 1, 0))
            self.rfile.close()
            self.connection.close()
            self.close_connection = True
        elif fault == "partial":       # promise 100 more bytes than we send
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(OK) + 100))
            self.end_headers()
            self.wfile.write(OK[:5])
            self.close_connection = True
        elif fault == "poison" and ARGS.partial_response:
            failures = [{"itemIdentifier": i} for i in poisoned]
            self.reply(200, json.dumps({"batchItemFailures": failures}).encode(),
                       "application/json")
        elif fault == "bad-signature":
            self.reply_status(401, f"{bad_signature}\n".encode())
        elif fault == "poison":
            shown = ", ".join(map(str, poisoned[:5])) + (", ..." if len(poisoned) > 5 else "")
            self.reply_status(entry["status"], f"poison record(s) {shown}\n".encode())
        elif entry["status"] == 200:
            self.reply(200, ARGS.reply_body.encode() if ARGS.reply_body is not None else OK,
                       "application/json")
        else:
            status = entry["status"]
            self.reply_status(status, f"injected {status}\n".encode())


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True           # don't wait for open connections on exit
    request_queue_size = 128        # listen backlog (default 5 drops SYNs)


def parse_schedule(spec):
    """'200:70,reset:3' -> [("200", 70.0), ("reset", 3.0)]"""
    out = []
    for item in filter(None, (s.strip() for s in spec.split(","))):
        name, _, weight = item.partition(":")
        if not (name.isdigit() and 200 <= int(name) <= 599
                or name in ("slow", "reset", "partial")):
            sys.exit(f"receiver: bad schedule outcome {name!r} (a status 200..599, "
                     "slow, reset or partial)")
        out.append((name, float(weight or 1)))
    return out


def main():
    global ARGS
    p = argparse.ArgumentParser(description="event_bridge test endpoint")
    p.add_argument("--port", type=int, required=True, help="0 = a free port")
    p.add_argument("--log", required=True, help="JSON-lines file to append")
    p.add_argument("--print", action="store_true", help="print each record")
    p.add_argument("--keep-body", action="store_true",
                   help="log the raw request body too")
    p.add_argument("--delay-ms", type=int, default=0)
    p.add_argument("--fail-first", type=int, default=0)
    p.add_argument("--fail-status", type=int, default=500)
    p.add_argument("--retry-after", help="Retry-After value of 429 and 503 replies")
    p.add_argument("--schedule", default="", help="e.g. 200:90,503:5,reset:5")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--slow-ms", type=int, default=5000)
    p.add_argument("--port-file", help="write the listening port here")
    p.add_argument("--poison", action="append", default=[], metavar="S",
                   help="fail requests holding a record whose data contains S")
    p.add_argument("--poison-event-id", action="append", default=[], metavar="ID",
                   help="fail requests holding the record with this eventId")
    p.add_argument("--poison-status", type=int, default=400,
                   help="the status of poison requests (default 400)")
    p.add_argument("--partial-response", action="store_true",
                   help="answer poison requests 200 with batchItemFailures")
    p.add_argument("--webhook-secret", metavar="WHSEC",
                   help="verify Standard Webhooks signatures made with this secret")
    p.add_argument("--reply-body", help="the body of 200 replies (default {\"ok\":true})")
    ARGS = p.parse_args()
    if ARGS.partial_response and not (ARGS.poison or ARGS.poison_event_id):
        p.error("--partial-response needs --poison")
    if "" in ARGS.poison:
        p.error("--poison needs a non-empty string")
    if not 200 <= ARGS.poison_status <= 599:
        p.error("--poison-status must be a status 200..599")
    STATE["schedule"] = parse_schedule(ARGS.schedule)
    STATE["rng"] = random.Random(ARGS.seed)
    STATE["log"] = open(ARGS.log, "a", encoding="utf-8")

    server = Server(("127.0.0.1", ARGS.port), Handler)  # binds + listens
    port = server.server_address[1]
    if ARGS.port_file:                 # atomic: write a temp file, rename
        tmp = f"{ARGS.port_file}.tmp.{os.getpid()}"
        with open(tmp, "w") as f:
            f.write(f"{port}\n")
        os.replace(tmp, ARGS.port_file)

    def stop(signum, frame):           # shutdown() blocks: call it off-thread
        threading.Thread(target=server.shutdown).start()
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    print(f"receiver: listening on 127.0.0.1:{port}", file=sys.stderr)
    server.serve_forever(poll_interval=0.1)
    server.server_close()              # log lines are already flushed


if __name__ == "__main__":
    main()
