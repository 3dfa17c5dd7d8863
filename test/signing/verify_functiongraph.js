'use strict';
/*
 * verify.js - verify an incoming Huawei Cloud SDK-HMAC-SHA256 signed request
 * using the OFFICIAL signer code of @huaweicloud/huaweicloud-sdk-core
 * (auth/AKSKSigner.js, AKSKSigner.sign). Nothing of the algorithm is
 * re-implemented here: the incoming request is turned back into the
 * IHttpRequest shape the SDK signs, AKSKSigner.sign() recomputes the full
 * Authorization header, and the two strings are compared byte for byte.
 *
 * The only adaptation: AKSKSigner.buildPayloadHash() hashes
 * JSON.stringify(request.data) (the SDK's body is an object that axios then
 * serialises with JSON.stringify). A server only has the raw bytes, so we call
 * the SDK's sign() with `this` = an object inheriting from AKSKSigner whose
 * buildPayloadHash returns AKSKSigner.Hex(rawBody) (same SDK hash helper).
 * When the raw body round-trips through JSON.parse/JSON.stringify unchanged,
 * the pristine AKSKSigner.sign() (data = parsed body) is also run and must
 * give the identical header (sanity check that the adaptation is neutral).
 *
 * verify({method, path, query, headers, body}, {access_key, secret_key, security_token?}, opts?)
 *   -> {ok: boolean, reason: string}
 *   path    : request path as received (may contain %XX escapes; query not included)
 *   query   : raw query string without '?', or ''
 *   headers : object with lower-case names (Node's req.headers)
 *   body    : Buffer (or string)
 *   opts    : { now?: Date|number (ms), maxSkewMs?: 900000, allowUnsignedPayload?: false,
 *               requireSignedHeaders?: ['content-type', 'x-project-id', ...] (host and x-sdk-date always required) }
 *
 * Credential may instead be {auth_token}: then only X-Auth-Token is checked.
 */
const crypto = require('crypto');
const querystring = require('querystring');
const { AKSKSigner } = require('@huaweicloud/huaweicloud-sdk-core/auth/AKSKSigner');
const { BasicCredentials } = require('@huaweicloud/huaweicloud-sdk-core/auth/BasicCredentials');

const AUTH_RE = /^SDK-HMAC-SHA256 Access=([^,\s]+), SignedHeaders=([^,\s]+), Signature=([0-9a-f]{64})$/;
const DATE_RE = /^(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})Z$/;
// header names whose exact spelling the SDK looks up in request.headers
const SDK_HEADER_SPELLING = { 'x-sdk-date': 'X-Sdk-Date', 'x-sdk-content-sha256': 'X-Sdk-Content-Sha256', host: 'host' };

function fail(reason) { return { ok: false, reason }; }

function headerValue(headers, name) {
  const v = headers[name];
  if (v === undefined) return undefined;
  return Array.isArray(v) ? v.join(', ') : String(v);
}

function safeEqual(a, b) {
  const ba = Buffer.from(a, 'utf8');
  const bb = Buffer.from(b, 'utf8');
  return ba.length === bb.length && crypto.timingSafeEqual(ba, bb);
}

function decodePath(path) {
  // The SDK escapes each path segment itself (AKSKSigner.CanonicalURI), so it must
  // be given the unescaped path. Accept both raw ':' and '%3A' on the wire.
  return path.split('/').map((seg) => decodeURIComponent(seg)).join('/');
}

function verify(req, cred, opts = {}) {
  try {
    return verifyInner(req, cred || {}, opts);
  } catch (e) {
    return fail(`verifier error: ${e && e.message ? e.message : e}`);
  }
}

function verifyInner(req, cred, opts) {
  const headers = req.headers || {};
  const body = req.body === undefined || req.body === null ? Buffer.alloc(0)
    : (Buffer.isBuffer(req.body) ? req.body : Buffer.from(String(req.body), 'utf8'));

  // ---- token (X-Auth-Token) mode -------------------------------------------------
  if (cred.auth_token && !cred.access_key) {
    const tok = headerValue(headers, 'x-auth-token');
    if (tok === undefined) return fail('missing X-Auth-Token header');
    if (!safeEqual(tok, cred.auth_token)) return fail('X-Auth-Token mismatch');
    return { ok: true, reason: 'X-Auth-Token matches' };
  }
  if (!cred.access_key || !cred.secret_key) return fail('credential needs access_key and secret_key');

  // ---- Authorization header shape ---------------------------------------------
  const auth = headerValue(headers, 'authorization');
  if (auth === undefined) return fail('missing Authorization header');
  const m = AUTH_RE.exec(auth);
  if (!m) return fail(`malformed Authorization header: ${JSON.stringify(auth)}`);
  const [, access, signedHeadersStr] = m;
  if (access !== cred.access_key) return fail(`Access=${access} does not match access_key`);
  const signed = signedHeadersStr.split(';');
  if (signed.some((h) => h === '' || h !== h.toLowerCase())) return fail('SignedHeaders must be non-empty lower-case names');
  if (new Set(signed).size !== signed.length) return fail('duplicate name in SignedHeaders');
  const mustSign = ['host', 'x-sdk-date'].concat((opts.requireSignedHeaders || []).map((h) => h.toLowerCase()));
  for (const must of mustSign) {
    if (!signed.includes(must)) return fail(`${must} is not in SignedHeaders`);
  }

  // ---- date ----------------------------------------------------------------------
  const date = headerValue(headers, 'x-sdk-date');
  if (date === undefined) return fail('missing X-Sdk-Date header');
  const dm = DATE_RE.exec(date);
  if (!dm) return fail(`X-Sdk-Date not in YYYYMMDDTHHMMSSZ form: ${JSON.stringify(date)}`);
  const t = Date.UTC(+dm[1], +dm[2] - 1, +dm[3], +dm[4], +dm[5], +dm[6]);
  if (Number.isNaN(t)) return fail('X-Sdk-Date is not a valid date');
  const now = opts.now === undefined ? Date.now() : +opts.now;
  const skew = opts.maxSkewMs === undefined ? 15 * 60 * 1000 : opts.maxSkewMs;
  if (Math.abs(now - t) > skew) return fail(`X-Sdk-Date ${date} is more than ${skew / 60000} minutes from now`);

  // ---- security token --------------------------------------------------------
  const stok = headerValue(headers, 'x-security-token');
  if (cred.security_token) {
    if (stok === undefined) return fail('missing X-Security-Token header');
    if (!safeEqual(stok, cred.security_token)) return fail('X-Security-Token mismatch');
    if (!signed.includes('x-security-token')) return fail('x-security-token is not in SignedHeaders');
  } else if (stok !== undefined) {
    return fail('X-Security-Token sent but credential has no security_token');
  }

  // ---- payload hash header (SDK uses it instead of hashing when present) ----------
  const csha = headerValue(headers, 'x-sdk-content-sha256');
  if (csha !== undefined) {
    if (!signed.includes('x-sdk-content-sha256')) return fail('X-Sdk-Content-Sha256 present but not signed');
    if (csha === 'UNSIGNED-PAYLOAD') {
      if (!opts.allowUnsignedPayload) return fail('UNSIGNED-PAYLOAD not accepted');
    } else if (csha !== AKSKSigner.Hex(body)) {
      return fail('X-Sdk-Content-Sha256 does not match sha256(body)');
    }
  }

  // ---- rebuild the request object the SDK signs ---------------------------------
  const host = headerValue(headers, 'host');
  if (host === undefined) return fail('missing Host header');
  const sdkHeaders = {};
  for (const h of signed) {
    const v = headerValue(headers, h);
    if (v === undefined) return fail(`signed header ${h} missing from request`);
    sdkHeaders[SDK_HEADER_SPELLING[h] || h] = v;
  }
  let path = req.path || '/';
  const qpos = path.indexOf('?');
  let rawQuery = req.query || '';
  if (qpos >= 0) { if (!rawQuery) rawQuery = path.slice(qpos + 1); path = path.slice(0, qpos); }
  const decoded = decodePath(path);
  if (/[?#\\]/.test(decoded)) return fail('path contains ?, # or \\ after decoding; not representable for the SDK signer');
  const queryParams = rawQuery ? querystring.parse(rawQuery) : {};

  const sdkRequest = {
    method: req.method,
    endpoint: `http://${host}${decoded}`,
    headers: sdkHeaders,
    queryParams,
    data: undefined,
  };
  const credential = new BasicCredentials().withAk(cred.access_key).withSk(cred.secret_key);

  // SDK sign() with payload hash taken from the raw bytes received
  const rawBodySigner = Object.create(AKSKSigner, {
    buildPayloadHash: {
      value(request) {
        if (request.headers[AKSKSigner.HeaderContentSha256]) return request.headers[AKSKSigner.HeaderContentSha256];
        return body.length ? AKSKSigner.Hex(body) : AKSKSigner.EMPTY_BODY_SHA256;
      },
    },
  });
  const expected = AKSKSigner.sign.call(rawBodySigner, { ...sdkRequest, headers: { ...sdkHeaders } }, credential).Authorization;

  // sanity: pristine SDK sign() with data = parsed JSON when the body is in JSON.stringify form
  if (body.length && csha === undefined) {
    let parsed;
    try { parsed = JSON.parse(body.toString('utf8')); } catch (e) { parsed = undefined; }
    if (parsed !== undefined && parsed !== null && typeof parsed === 'object'
        && JSON.stringify(parsed) === body.toString('utf8')) {
      const pristine = AKSKSigner.sign({ ...sdkRequest, headers: { ...sdkHeaders }, data: parsed }, credential).Authorization;
      if (pristine !== expected) return fail('internal: pristine SDK signature differs from raw-body signature');
    }
  }

  if (!safeEqual(auth, expected)) {
    return fail(`signature mismatch: got ${JSON.stringify(auth)}, SDK computes ${JSON.stringify(expected)}`);
  }
  return { ok: true, reason: 'signature verified with official AKSKSigner.sign' };
}

module.exports = { verify };
