#!/usr/bin/env node
/* Signed-invocation test endpoint for event_bridge (Node 20, CommonJS).
 *
 * Usage:
 *   node test/signing/endpoint.js --port 0 --port-file F --log L --platform P
 *        --keys K [--function-error-first N] [--fail-first N] [--fail-status S]
 *
 * Listens on 127.0.0.1 only (HTTP/1.1 keep-alive, keepAliveTimeout 60 s).
 * --port 0 picks a free port; --port-file then gets that port number once the
 * server listens (written to a temp file and renamed).  Dependencies: run
 * `npm ci` in test/ first.
 *
 * Every POST is verified with the platform's official signing code against
 * each credential secret of K (a JSON array, re-read on every request, so a
 * test rotates keys by rewriting the file); the first that verifies matches.
 *   lambda         {"access_key_id","secret_access_key"[,"session_token"][,"region"]}
 *                  SigV4 as libcurl's CURLOPT_AWS_SIGV4 "aws:amz:<region>:lambda"
 *                  makes it, recomputed with @smithy/signature-v4.
 *   webhook        {"secret":"whsec_<base64>"}: standardwebhooks' Webhook.verify
 *                  (checks the 5-minute timestamp tolerance).
 *   token          {"header":"X-Auth-Token","value":"..."}: the header equals value.
 *   fc, functiongraph  ./verify_fc.js, ./verify_functiongraph.js, each exporting
 *                  verify({method, path, query, headers, body}, secret)
 *                  -> {ok, reason} (or a promise of it).  path: as sent, without
 *                  the query; query: the raw query string without '?' ('' if
 *                  none); headers: Node's lower-cased object; body: Buffer.
 *
 * Answers: no key verifies -> 403 {"error": reason}.  Verified: the first
 * --fail-first N get --fail-status (default 500); then the first
 * --function-error-first N get the platform's function error inside a 2xx
 * (lambda, fc, functiongraph; none for webhook/token); else success: 202 and
 * an empty body for an async invocation, otherwise 200 {"ok":true}.
 * GET /stats -> {"requests": n, "verified": v, "refused": r}.
 *
 * Log L: one JSON line per POST, appended (fs.appendFileSync) BEFORE the reply:
 *   {"t_ms", "path", "status", "verified", "reason", "key_index", "fault",
 *    "async", "shard", "event_ids", "body_sha256", "bytes", "signed_at",
 *    "webhook_id"}
 * A request whose body was cut off gets no reply and is logged with status null.
 * SIGTERM / SIGINT: close and exit 0.
 */
'use strict';
const http = require('node:http');
const fs = require('node:fs');
const path = require('node:path');
const crypto = require('node:crypto');

const PLATFORMS = ['lambda', 'webhook', 'token', 'fc', 'functiongraph'];
const BOOM = '{"errorMessage":"boom","errorType":"Error"}';

// ---- command line ---------------------------------------------------------
function parseArgs(argv) {
  const a = { port: null, portFile: null, log: null, platform: null, keys: null,
              functionErrorFirst: 0, failFirst: 0, failStatus: 500 };
  const names = { '--port': 'port', '--port-file': 'portFile', '--log': 'log',
                  '--platform': 'platform', '--keys': 'keys',
                  '--function-error-first': 'functionErrorFirst',
                  '--fail-first': 'failFirst', '--fail-status': 'failStatus' };
  const numeric = ['port', 'functionErrorFirst', 'failFirst', 'failStatus'];
  for (let i = 0; i < argv.length; i += 2) {
    const key = names[argv[i]];
    if (!key || argv[i + 1] === undefined) usage(`bad argument ${argv[i]}`);
    a[key] = numeric.includes(key) ? Number(argv[i + 1]) : argv[i + 1];
    if (numeric.includes(key) && !Number.isInteger(a[key])) usage(`${argv[i]} needs an integer`);
  }
  if (a.port === null || !a.log || !a.keys) usage('--port, --log and --keys are required');
  if (!PLATFORMS.includes(a.platform)) usage(`--platform must be one of ${PLATFORMS.join(', ')}`);
  if (a.failStatus < 100 || a.failStatus > 599) usage('--fail-status must be 100..599');
  return a;
}

function usage(msg) {
  process.stderr.write(`endpoint: ${msg}\nusage: node endpoint.js --port 0 --port-file F --log L ` +
    `--platform ${PLATFORMS.join('|')} --keys K [--function-error-first N] ` +
    '[--fail-first N] [--fail-status S]\n');
  process.exit(2);
}

const ARGS = parseArgs(process.argv.slice(2));
const STATS = { requests: 0, verified: 0, refused: 0, functionErrors: 0 };

// ---- helpers --------------------------------------------------------------
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** The accepted secrets: K is re-read on every request.  A test may be
 *  rewriting it right now, so an unparsable file is retried briefly. */
async function readKeys() {
  let err;
  for (let attempt = 0; attempt < 5; attempt++) {
    try {
      const keys = JSON.parse(fs.readFileSync(ARGS.keys, 'utf8'));
      if (!Array.isArray(keys)) throw new Error('not a JSON array');
      return { keys };
    } catch (e) { err = e; }
    await sleep(20);
  }
  return { error: `keys file ${ARGS.keys}: ${err.message}` };
}

/** "?a=1&b=x%20y&a=2" -> {a: ["1", "2"], b: "x y"} (no '+' decoding). */
function parseQuery(raw) {
  const query = {};
  const dec = (s) => { try { return decodeURIComponent(s); } catch { return s; } };
  for (const part of raw.split('&')) {
    if (part === '') continue;
    const eq = part.indexOf('=');
    const name = dec(eq < 0 ? part : part.slice(0, eq));
    const value = eq < 0 ? '' : dec(part.slice(eq + 1));
    if (!(name in query)) query[name] = value;
    else query[name] = [].concat(query[name], value);
  }
  return query;
}

/** "20240102T030405Z" (x-amz-date, X-Sdk-Date) -> epoch ms, or null. */
function parseBasicIso(s) {
  const m = /^(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})Z$/.exec(s || '');
  return m ? Date.UTC(m[1], m[2] - 1, m[3], m[4], m[5], m[6]) : null;
}

/** The request's own signing time as epoch ms, or null. */
function signedAt(headers) {
  let t = null;
  if (ARGS.platform === 'lambda') t = parseBasicIso(headers['x-amz-date']);
  else if (ARGS.platform === 'webhook') {
    const s = headers['webhook-timestamp'];
    t = /^\d+$/.test(s || '') ? Number(s) * 1000 : null;
  } else if (ARGS.platform === 'fc') {
    const s = headers['x-acs-date'] || headers.date;
    t = s ? (parseBasicIso(s) ?? Date.parse(s)) : null;
  } else if (ARGS.platform === 'functiongraph') t = parseBasicIso(headers['x-sdk-date']);
  return Number.isFinite(t) ? t : null;
}

/** Shard and event ids of a datahub or dis body (as test/receiver.py). */
function eventIds(body) {
  let doc;
  try { doc = JSON.parse(body.toString('utf8')); } catch { return { shard: null, ids: [] }; }
  const toInt = (s) => (/^\d+$/.test(s) ? Number(s) : null);
  if (doc && Array.isArray(doc.records)) {                              // datahub
    const ids = doc.records.map((r) => (r && r.eventId !== undefined ? r.eventId : null));
    const first = typeof ids[0] === 'string' ? ids[0] : null;
    return { shard: first === null ? null : toInt(first.split(':')[0]), ids };
  }
  if (doc && doc.ShardID !== undefined && doc.Message && typeof doc.Message === 'object') {  // dis
    const shard = toInt(String(doc.ShardID).split('-').pop());        // "shardId-0000000003"
    const recs = Array.isArray(doc.Message.records) ? doc.Message.records : [];
    return { shard, ids: recs.map((r) => `${shard}:${r && r.sequence_number}`) };
  }
  return { shard: null, ids: [] };
}

// ---- verifiers: (req, body, key) -> {ok, reason} ---------------------------
const fail = (reason) => ({ ok: false, reason });
const OK = { ok: true, reason: null };

const AUTH_RE = /^AWS4-HMAC-SHA256 Credential=([^/,\s]+)\/(\d{8})\/([^/,\s]+)\/([^/,\s]+)\/aws4_request, ?SignedHeaders=([a-z0-9;_.-]+), ?Signature=([0-9a-f]{64})$/;

async function verifyLambda(req, body, key) {
  const { SignatureV4 } = require('@smithy/signature-v4');
  const { Hash } = require('@smithy/hash-node');
  if (!key || typeof key.access_key_id !== 'string' || typeof key.secret_access_key !== 'string') {
    return fail('key has no access_key_id / secret_access_key');
  }
  const auth = req.headers.authorization;
  if (!auth) return fail('missing Authorization header');
  const m = AUTH_RE.exec(auth);
  if (!m) return fail('malformed Authorization header');
  const [, akid, , scopeRegion, service, signedList] = m;
  if (akid !== key.access_key_id) return fail(`access key id ${akid} is not the key's`);
  if (service !== 'lambda') return fail(`credential scope service ${service}, expected lambda`);
  if (key.region && key.region !== scopeRegion) return fail(`credential scope region ${scopeRegion}, expected ${key.region}`);
  const t = parseBasicIso(req.headers['x-amz-date']);
  if (t === null) return fail('missing or malformed x-amz-date');
  if (Math.abs(Date.now() - t) > 15 * 60 * 1000) return fail(`x-amz-date ${req.headers['x-amz-date']} is more than 15 minutes from now`);
  const token = req.headers['x-amz-security-token'];
  if (key.session_token && token !== key.session_token) return fail('x-amz-security-token is not the key\'s session_token');
  if (!key.session_token && token !== undefined) return fail('x-amz-security-token sent, the key has no session_token');

  // Sign exactly the headers the request says it signed (SignedHeaders).
  const names = signedList.split(';');
  if (!names.includes('host') || !names.includes('x-amz-date')) return fail('SignedHeaders lacks host or x-amz-date');
  const headers = {};
  for (const n of names) {
    if (req.headers[n] === undefined) return fail(`signed header ${n} is missing`);
    headers[n] = req.headers[n];
  }
  const [target, rawQuery = ''] = req.url.split(/\?(.*)/s);
  const [hostname, port] = headers.host.split(/:(?=\d+$)/);
  const signer = new SignatureV4({
    service: 'lambda', region: key.region || scopeRegion, sha256: Hash.bind(null, 'sha256'),
    credentials: { accessKeyId: key.access_key_id, secretAccessKey: key.secret_access_key,
                   sessionToken: key.session_token },
    applyChecksum: false,            // don't add x-amz-content-sha256 (curl doesn't)
  });
  const signed = await signer.sign(
    { method: req.method, protocol: 'http:', hostname, port: port && Number(port),
      path: target, query: parseQuery(rawQuery), headers, body },
    { signingDate: new Date(t), signableHeaders: new Set(names) });
  if (signed.headers.authorization !== auth) return fail('signature mismatch');
  return OK;
}

function verifyWebhook(req, body, key) {
  const { Webhook } = require('standardwebhooks');
  if (!key || typeof key.secret !== 'string') return fail('key has no secret');
  try {
    new Webhook(key.secret).verify(body, req.headers, { jsonParse: false });
    return OK;
  } catch (e) {
    return fail(e.message);
  }
}

function verifyToken(req, body, key) {
  if (!key || typeof key.header !== 'string' || typeof key.value !== 'string') return fail('key has no header / value');
  const got = req.headers[key.header.toLowerCase()];
  if (got === undefined) return fail(`missing ${key.header} header`);
  const a = Buffer.from(String(got)), b = Buffer.from(key.value);
  return a.length === b.length && crypto.timingSafeEqual(a, b) ? OK : fail(`${key.header} mismatch`);
}

/** fc / functiongraph: modules written separately, required on first use. */
function externalVerifier(file) {
  return async (req, body, key) => {
    const { verify } = require(path.join(__dirname, file));
    const [p, rawQuery = ''] = req.url.split(/\?(.*)/s);
    const r = await verify({ method: req.method, path: p, query: rawQuery, headers: req.headers, body }, key);
    return r && r.ok ? OK : fail((r && r.reason) || 'refused');
  };
}

const VERIFY = {
  lambda: verifyLambda, webhook: verifyWebhook, token: verifyToken,
  fc: externalVerifier('verify_fc.js'), functiongraph: externalVerifier('verify_functiongraph.js'),
};

/** Try every key in turn: {key_index, reason}. */
async function verifyRequest(req, body) {
  const { keys, error } = await readKeys();
  if (error) return { key_index: null, reason: error };
  if (keys.length === 0) return { key_index: null, reason: 'no keys' };
  const reasons = [];
  for (let i = 0; i < keys.length; i++) {
    let r;
    try { r = await VERIFY[ARGS.platform](req, body, keys[i]); } catch (e) { r = fail(`verifier error: ${e.message}`); }
    if (r.ok) return { key_index: i, reason: null };
    reasons.push(r.reason);
  }
  return { key_index: null,
           reason: keys.length === 1 ? reasons[0] : reasons.map((r, i) => `key ${i}: ${r}`).join('; ') };
}

// ---- platform answers -----------------------------------------------------
const json = (status, body, headers = {}) => ({ status, headers, body });

function isAsync(req) {
  const h = req.headers;
  switch (ARGS.platform) {
    case 'lambda': return h['x-amz-invocation-type'] === 'Event';
    case 'fc': return h['x-fc-invocation-type'] === 'Async';
    case 'functiongraph': return req.url.split('?')[0].endsWith('/invocations-async');
    default: return false;
  }
}

// FunctionGraph answers a synchronous invocation whose function failed with
// 200, X-Is-Func-Err: true and a non-zero X-Func-Err-Code (both "false"/"0"
// when it succeeded), and the function's error as the body.
function functionError() {
  return json(200, BOOM, { 'X-Is-Func-Err': 'true', 'X-Func-Err-Code': '200011' });
}

const FUNCTION_ERROR = {
  lambda: () => json(200, BOOM, { 'X-Amz-Function-Error': 'Unhandled' }),
  fc: () => json(200, BOOM, { 'x-fc-error-type': 'UnhandledInvocationError' }),
  functiongraph: functionError,
};

function success(async) {
  if (async) return { status: 202, headers: {}, body: '' };
  if (ARGS.platform === 'functiongraph') {
    return json(200, '{"ok":true}', { 'X-Is-Func-Err': 'false', 'X-Func-Err-Code': '0' });
  }
  return json(200, '{"ok":true}');
}

// ---- server ---------------------------------------------------------------
function send(res, { status, headers, body }) {
  const h = { ...headers, 'Content-Length': Buffer.byteLength(body) };
  if (body !== '') h['Content-Type'] = 'application/json';
  res.writeHead(status, h);
  res.end(body);
}

async function handlePost(req, res, t_ms) {
  const chunks = [];
  let complete = true;
  try {
    for await (const c of req) chunks.push(c);
  } catch { complete = false; }
  if (!req.complete) complete = false;
  const body = Buffer.concat(chunks);
  const { shard, ids } = eventIds(body);
  const entry = {
    t_ms, path: req.url, status: null, verified: false, reason: null, key_index: null,
    fault: null, async: isAsync(req), shard, event_ids: ids,
    body_sha256: crypto.createHash('sha256').update(body).digest('hex'), bytes: body.length,
    signed_at: signedAt(req.headers), webhook_id: req.headers['webhook-id'] ?? null,
  };
  STATS.requests++;
  if (!complete) {                           // the client went away mid-body
    entry.reason = 'body cut off';
    fs.appendFileSync(ARGS.log, JSON.stringify(entry) + '\n');
    return;
  }

  const v = await verifyRequest(req, body);
  let answer;
  if (v.key_index === null) {
    STATS.refused++;
    entry.reason = v.reason;
    answer = json(403, JSON.stringify({ error: v.reason }));
  } else {
    entry.verified = true;
    entry.key_index = v.key_index;
    const served = STATS.verified++;          // verified requests answered before this one
    if (served < ARGS.failFirst) {
      entry.fault = 'fail';
      answer = json(ARGS.failStatus, JSON.stringify({ error: `injected ${ARGS.failStatus}` }));
    } else if (FUNCTION_ERROR[ARGS.platform] && STATS.functionErrors < ARGS.functionErrorFirst) {
      STATS.functionErrors++;
      entry.fault = 'function-error';
      answer = FUNCTION_ERROR[ARGS.platform]();
    } else {
      answer = success(entry.async);
    }
  }
  entry.status = answer.status;
  fs.appendFileSync(ARGS.log, JSON.stringify(entry) + '\n');   // before the reply
  send(res, answer);
}

const server = http.createServer((req, res) => {
  const t_ms = Date.now();
  if (req.method === 'GET' && req.url.split('?')[0] === '/stats') {
    req.resume();
    return send(res, json(200, JSON.stringify(
      { requests: STATS.requests, verified: STATS.verified, refused: STATS.refused })));
  }
  if (req.method !== 'POST') {
    req.resume();
    return send(res, json(404, '{"error":"not found"}'));
  }
  handlePost(req, res, t_ms).catch((e) => {
    process.stderr.write(`endpoint: ${e.stack}\n`);
    if (!res.headersSent) send(res, json(500, JSON.stringify({ error: e.message })));
  });
});
server.keepAliveTimeout = 60 * 1000;
server.headersTimeout = 65 * 1000;           // must exceed keepAliveTimeout

server.listen(ARGS.port, '127.0.0.1', () => {
  const port = server.address().port;
  if (ARGS.portFile) {                       // atomic: temp file, then rename
    const tmp = `${ARGS.portFile}.tmp.${process.pid}`;
    fs.writeFileSync(tmp, `${port}\n`);
    fs.renameSync(tmp, ARGS.portFile);
  }
  process.stderr.write(`endpoint: ${ARGS.platform} listening on 127.0.0.1:${port}\n`);
});

function stop() {
  server.close();
  server.closeAllConnections();
  process.exit(0);
}
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
