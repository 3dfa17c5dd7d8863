#!/usr/bin/env node
/* CloudEvents test endpoint for event_bridge (Node 20, CommonJS).
 *
 * Usage:
 *   node test/events/cloudevents_endpoint.js --port 0 --port-file F --log L
 *
 * Listens on 127.0.0.1 only (HTTP/1.1 keep-alive).  --port 0 picks a free
 * port; --port-file then gets that port number once the server listens.
 * Dependencies: run `npm ci` in test/ first.
 *
 * Every POST is read with the official CloudEvents SDK (`cloudevents` from
 * the npm registry): HTTP.toEvent must find a structured batch (Content-Type
 * application/cloudevents-batch+json), and every event must pass the SDK's
 * validate() and be one of event_bridge's: specversion 1.0, id
 * "<shard>:<sequence>", source "/projects/<db>/topics/<stream>", type
 * event_bridge.row.inserted|updated|deleted, subject the table, an RFC 3339
 * time, data {"op","table","key","before","after"} with op matching type.
 * A batch that passes is answered 200 {"ok":true}; one that does not, 400
 * {"error": reason}.
 *
 * Log L: one JSON line per POST, appended before the reply, in the shape of
 * test/receiver.py's (so its readers and check_invariants.py work):
 *   {"t_ms", "path", "format": "cloudevents", "status", "fault", "error",
 *    "shard", "event_ids", "records": [{"event_id", "data": event}], "bytes"}
 * where an UPDATE event with both images stands for its before and after
 * records, n and n + 1 (both ids are listed).  SIGTERM: close and exit 0.
 */
'use strict';
const http = require('node:http');
const fs = require('node:fs');
const { HTTP } = require('cloudevents');

const TYPES = { 'event_bridge.row.inserted': 'INSERT', 'event_bridge.row.updated': 'UPDATE',
                'event_bridge.row.deleted': 'DELETE' };

function parseArgs(argv) {
  const a = {};
  for (let i = 0; i < argv.length; i += 2) {
    const key = { '--port': 'port', '--port-file': 'portFile', '--log': 'log' }[argv[i]];
    if (!key || argv[i + 1] === undefined) {
      process.stderr.write(`cloudevents_endpoint: bad argument ${argv[i]}\n`);
      process.exit(2);
    }
    a[key] = argv[i + 1];
  }
  if (a.port === undefined || !a.log) {
    process.stderr.write('usage: node cloudevents_endpoint.js --port 0 --port-file F --log L\n');
    process.exit(2);
  }
  return a;
}

const ARGS = parseArgs(process.argv.slice(2));

/* Why an event is not one of event_bridge's, or null. */
function problem(e) {
  try {
    e.validate();
  } catch (err) {
    return `invalid CloudEvent ${e.id}: ${err.message} ${JSON.stringify(err.errors || '')}`;
  }
  const d = e.data;
  if (e.specversion !== '1.0') return `specversion ${e.specversion}`;
  if (!/^\d+:\d+$/.test(e.id)) return `id ${e.id}`;
  if (!/^\/projects\/[^/]+\/topics\/[^/]+$/.test(e.source)) return `source ${e.source}`;
  if (!TYPES[e.type]) return `type ${e.type}`;
  if (e.datacontenttype !== 'application/json') return `datacontenttype ${e.datacontenttype}`;
  if (!e.time || Number.isNaN(Date.parse(e.time))) return `time ${e.time}`;
  if (typeof d !== 'object' || d === null) return `data of ${e.id} is no object`;
  if (d.op !== TYPES[e.type]) return `op ${d.op} with type ${e.type}`;
  if (d.table !== e.subject) return `table ${d.table}, subject ${e.subject}`;
  if ((d.op === 'INSERT') !== (d.before === null) || (d.op === 'DELETE') !== (d.after === null))
    return `images of ${e.id} do not fit ${d.op}`;
  return null;
}

/* The records a batch's events stand for. */
function records(events) {
  const out = [];
  for (const e of events) {
    out.push({ event_id: e.id, data: e });
    if (e.data.op === 'UPDATE' && e.data.before !== null && e.data.after !== null) {
      const [shard, seq] = e.id.split(':');
      out.push({ event_id: `${shard}:${Number(seq) + 1}`, data: e });
    }
  }
  return out;
}

function handle(req, body, res) {
  const entry = { t_ms: Date.now(), path: req.url, format: 'cloudevents', status: 200,
                  fault: null, shard: null, event_ids: [], records: [], bytes: body.length };
  let events = [];
  let why = null;
  try {
    const got = HTTP.toEvent({ headers: req.headers, body: body.toString('utf8') });
    events = Array.isArray(got) ? got : [got];
    if (!Array.isArray(got)) why = 'not a structured batch';
    for (const e of events) why = why || problem(e);
  } catch (err) {
    why = `not CloudEvents: ${err.message}`;
  }
  if (why === null) {
    entry.records = records(events);
    entry.event_ids = entry.records.map((r) => r.event_id);
    entry.shard = Number(entry.event_ids[0].split(':')[0]);
  } else {
    entry.status = 400;
    entry.fault = 'invalid';
    entry.error = why;
    entry.format = 'unknown';
  }
  fs.appendFileSync(ARGS.log, JSON.stringify(entry) + '\n');
  const reply = why === null ? '{"ok":true}' : JSON.stringify({ error: why });
  res.writeHead(entry.status, { 'Content-Type': 'application/json' });
  res.end(reply);
}

const server = http.createServer((req, res) => {
  const chunks = [];
  req.on('data', (c) => chunks.push(c));
  req.on('end', () => handle(req, Buffer.concat(chunks), res));
});
server.keepAliveTimeout = 60 * 1000;
server.headersTimeout = 65 * 1000;
server.listen(Number(ARGS.port), '127.0.0.1', () => {
  if (ARGS.portFile) {
    const tmp = `${ARGS.portFile}.tmp.${process.pid}`;
    fs.writeFileSync(tmp, String(server.address().port));
    fs.renameSync(tmp, ARGS.portFile);
  }
});
process.on('SIGTERM', () => server.close(() => process.exit(0)));
process.on('SIGINT', () => server.close(() => process.exit(0)));
