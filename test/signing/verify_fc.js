'use strict';
// Verifies an incoming Alibaba Function Compute 3.0 InvokeFunction request the way the
// official SDK signs it (ACS3-HMAC-SHA256, "V3 signature").
//
// The signature is recomputed with the official SDK's OWN function:
//   require('@alicloud/openapi-core').OpenApiUtil.getAuthorization   (and .hash)
// which is exactly what @alicloud/fc20230330 -> openapi-core Client.doRequest calls.
//
// verify(req, cred[, opts]) -> { ok: boolean, reason: string }
//   req  = { method, path, query (raw string, '' if none), headers (lower-case names, as Node gives them), body (Buffer) }
//   cred = { access_key_id, access_key_secret, security_token? }
//   opts = { now?: Date|number (default Date.now()), maxSkewMs?: number (default 15 min),
//            seenNonces?: Set (if given: reject a nonce already in it, then add it),
//            checkAction?: boolean (default true: require x-acs-action InvokeFunction / x-acs-version 2023-03-30) }

const crypto = require('crypto');
const { OpenApiUtil } = require('@alicloud/openapi-core');

const ALGO = 'ACS3-HMAC-SHA256';
const AUTH_RE = /^ACS3-HMAC-SHA256 Credential=([^,]*),SignedHeaders=([^,]*),Signature=([0-9a-f]{64})$/;
const DATE_RE = /^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})Z$/;

function fail(reason) { return { ok: false, reason }; }

function headerValue(headers, name) {
  const v = headers[name];
  if (v === undefined || v === null) return undefined;
  return Array.isArray(v) ? v.join(',') : String(v);
}

// raw query string -> { key: decodedValue } (the form the SDK holds before signing; it
// re-encodes values itself in getAuthorization). Duplicate keys are rejected.
function parseQuery(raw) {
  const out = {};
  if (!raw) return out;
  for (const part of raw.split('&')) {
    if (part === '') continue;
    const i = part.indexOf('=');
    const k = decodeURIComponent((i < 0 ? part : part.slice(0, i)).replace(/\+/g, ' '));
    const v = i < 0 ? '' : decodeURIComponent(part.slice(i + 1).replace(/\+/g, ' '));
    if (Object.prototype.hasOwnProperty.call(out, k)) throw new Error(`duplicate query key "${k}"`);
    out[k] = v;
  }
  return out;
}

function verify(req, cred, opts = {}) {
  try {
    const headers = req.headers || {};
    const body = Buffer.isBuffer(req.body) ? req.body : Buffer.from(req.body || '');
    const now = opts.now === undefined ? Date.now() : +opts.now;
    const maxSkew = opts.maxSkewMs === undefined ? 15 * 60 * 1000 : opts.maxSkewMs;
    const checkAction = opts.checkAction === undefined ? true : opts.checkAction;

    if (!cred || !cred.access_key_id || !cred.access_key_secret) return fail('credential incomplete');

    // --- Authorization header -------------------------------------------------------
    const auth = headerValue(headers, 'authorization');
    if (!auth) return fail('missing Authorization header');
    const m = AUTH_RE.exec(auth);
    if (!m) return fail(`malformed Authorization header: ${JSON.stringify(auth)}`);
    const [, akInAuth, signedHeadersInAuth] = m;
    if (akInAuth !== cred.access_key_id) return fail(`access key id mismatch: got "${akInAuth}"`);

    // --- required headers -----------------------------------------------------------
    for (const h of ['host', 'x-acs-date', 'x-acs-signature-nonce', 'x-acs-content-sha256', 'x-acs-action', 'x-acs-version']) {
      if (!headerValue(headers, h)) return fail(`missing header ${h}`);
    }
    if (checkAction) {
      if (headerValue(headers, 'x-acs-action') !== 'InvokeFunction') return fail(`x-acs-action is "${headerValue(headers, 'x-acs-action')}", expected "InvokeFunction"`);
      if (headerValue(headers, 'x-acs-version') !== '2023-03-30') return fail(`x-acs-version is "${headerValue(headers, 'x-acs-version')}", expected "2023-03-30"`);
    }

    // --- date (x-acs-date: YYYY-MM-DDTHH:MM:SSZ, UTC) within the allowed skew ----------
    const dateStr = headerValue(headers, 'x-acs-date');
    const dm = DATE_RE.exec(dateStr);
    if (!dm) return fail(`bad x-acs-date format: "${dateStr}" (want YYYY-MM-DDTHH:MM:SSZ)`);
    const t = Date.UTC(+dm[1], +dm[2] - 1, +dm[3], +dm[4], +dm[5], +dm[6]);
    if (Number.isNaN(t) || new Date(t).toISOString().slice(0, 19) + 'Z' !== dateStr) return fail(`invalid x-acs-date "${dateStr}"`);
    if (Math.abs(now - t) > maxSkew) return fail(`x-acs-date "${dateStr}" is more than ${maxSkew / 60000} min away from now`);

    // --- nonce ------------------------------------------------------------------------
    const nonce = headerValue(headers, 'x-acs-signature-nonce');
    if (opts.seenNonces) {
      if (opts.seenNonces.has(nonce)) return fail(`replayed x-acs-signature-nonce "${nonce}"`);
      opts.seenNonces.add(nonce);
    }

    // --- body hash (SDK: OpenApiUtil.hash(body, ALGO).toString('hex')) ------------------
    const payloadHex = OpenApiUtil.hash(body, ALGO).toString('hex');
    if (headerValue(headers, 'x-acs-content-sha256') !== payloadHex) {
      return fail(`x-acs-content-sha256 does not match sha256(body) (${payloadHex})`);
    }

    // --- security token ---------------------------------------------------------------
    const tok = headerValue(headers, 'x-acs-security-token');
    if (cred.security_token) {
      if (tok === undefined) return fail('missing x-acs-security-token');
      if (tok !== cred.security_token) return fail('x-acs-security-token mismatch');
      const akHdr = headerValue(headers, 'x-acs-accesskey-id');
      if (akHdr !== undefined && akHdr !== cred.access_key_id) return fail('x-acs-accesskey-id mismatch');
    } else if (tok !== undefined) {
      return fail('unexpected x-acs-security-token (credential has none)');
    }

    // --- recompute with the SDK's own signer ----------------------------------------
    const signHeaders = {};
    for (const [k, v] of Object.entries(headers)) {
      if (k.toLowerCase() === 'authorization') continue;
      signHeaders[k] = Array.isArray(v) ? v.join(',') : String(v);
    }
    const sdkRequest = { method: req.method, pathname: req.path, query: parseQuery(req.query || ''), headers: signHeaders };
    const expected = OpenApiUtil.getAuthorization(sdkRequest, ALGO, payloadHex, cred.access_key_id, cred.access_key_secret);
    const em = AUTH_RE.exec(expected);
    if (em[2] !== signedHeadersInAuth) {
      return fail(`SignedHeaders mismatch: request signed "${signedHeadersInAuth}", SDK would sign "${em[2]}"`);
    }
    const a = Buffer.from(auth), b = Buffer.from(expected);
    if (a.length !== b.length || !crypto.timingSafeEqual(a, b)) {
      return fail('signature mismatch');
    }
    return { ok: true, reason: 'ok' };
  } catch (e) {
    return fail(`verify error: ${e.message}`);
  }
}

module.exports = { verify, parseQuery };
