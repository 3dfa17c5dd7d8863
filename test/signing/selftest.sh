#!/usr/bin/env bash
# Self-test of test/signing/endpoint.js: the verifiers must accept what the
# real signers make and refuse a wrong secret or a tampered body.
#
# Usage: bash test/signing/selftest.sh        (exit 0 = all checks passed)
#
# Runs `npm ci` in test/ if test/node_modules is missing, starts the endpoint
# for lambda and webhook (plus one lambda endpoint with injected faults) on
# free ports with temp key files, and checks answers and log lines:
#   lambda   signed by curl --aws-sigv4 "aws:amz:us-east-1:lambda" (libcurl's
#            CURLOPT_AWS_SIGV4, as event_bridge uses); the tampered request
#            replays curl's Authorization / X-Amz-Date with another body.
#   webhook  Standard Webhooks signature made here with openssl:
#            v1,base64(HMAC-SHA256(base64dec(secret after whsec_), "id.ts.body")).
# The endpoints are stopped (SIGTERM, must exit 0) in an EXIT trap.
set -uo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
TESTDIR=$(dirname "$HERE")
if [ ! -d "$TESTDIR/node_modules" ]; then
    (cd "$TESTDIR" && npm ci --no-audit --no-fund) || { echo "selftest: npm ci failed" >&2; exit 1; }
fi

TMP=$(mktemp -d -t eb-signing-selftest.XXXXXX)
PIDS=()
PASSED=0 FAILED=0

cleanup() {
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; done
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

ok()   { PASSED=$((PASSED + 1)); echo "ok   $1"; }
bad()  { FAILED=$((FAILED + 1)); echo "FAIL $1" >&2; }
same() { if [ "$2" = "$3" ]; then ok "$1"; else bad "$1: expected '$2', got '$3'"; fi; }

# start NAME PLATFORM [ARGS...]: start an endpoint; sets PORT, LOG (= $TMP/NAME.log).
start() {
    local name=$1 platform=$2; shift 2
    LOG=$TMP/$name.log
    node "$HERE/endpoint.js" --port 0 --port-file "$TMP/$name.port" --log "$LOG" \
        --platform "$platform" --keys "$TMP/$name.keys" "$@" 2>>"$TMP/$name.err" &
    PIDS+=($!)
    for _ in $(seq 100); do [ -s "$TMP/$name.port" ] && break; sleep 0.1; done
    PORT=$(cat "$TMP/$name.port" 2>/dev/null) || { cat "$TMP/$name.err" >&2; echo "selftest: $name did not start" >&2; exit 1; }
}

# logline NAME N JS-EXPR: line N (1-based) of the log, as `e`, must make EXPR true.
logline() {
    local line
    line=$(sed -n "$2p" "$LOG")
    if node -e 'const e = JSON.parse(process.argv[1]); process.exit(eval(process.argv[2]) ? 0 : 1)' \
            "${line:-null}" "$3" 2>/dev/null; then
        ok "$1: log line $2"
    else
        bad "$1: log line $2 fails ($3): ${line:-<none>}"
    fi
}

# post ARGS...: curl; prints "<status> <body>".
post() { curl -sS -o "$TMP/body" -w '%{http_code}' "$@"; echo " $(cat "$TMP/body")"; }

DATAHUB='{"eventSourceARN":"/projects/db/topics/s","records":[{"eventId":"2:10","systemTime":1,"data":"[]"},{"eventId":"2:11","systemTime":1,"data":"[]"}]}'
DIS='{"ShardID":"shardId-0000000003","StreamName":"s","Message":{"records":[{"sequence_number":"12","data":"W10="},{"sequence_number":"13","data":"W10="}]}}'
sha() { printf '%s' "$1" | sha256sum | cut -d' ' -f1; }

# ---- lambda -----------------------------------------------------------------
echo "== lambda"
echo '[{"access_key_id":"AKOLD","secret_access_key":"old"},
       {"access_key_id":"AKTEST","secret_access_key":"SECRET","region":"us-east-1"}]' > "$TMP/lambda.keys"
start lambda lambda
URL=http://127.0.0.1:$PORT/2015-03-31/functions/f/invocations
SIGN=(--aws-sigv4 "aws:amz:us-east-1:lambda" -H 'Content-Type: application/json')

same "lambda signed" "200 {\"ok\":true}" \
     "$(post "${SIGN[@]}" --user AKTEST:SECRET -d "$DATAHUB" -v "$URL" 2>"$TMP/curl.v")"
logline lambda 1 "e.status===200 && e.verified && e.key_index===1 && e.reason===null && e.fault===null
    && !e.async && e.shard===2 && e.event_ids.join()==='2:10,2:11' && e.bytes===${#DATAHUB}
    && e.body_sha256==='$(sha "$DATAHUB")' && Math.abs(e.signed_at - Date.now()) < 60000 && e.path==='/2015-03-31/functions/f/invocations'"

same "lambda wrong secret" 403 "$(post "${SIGN[@]}" --user AKTEST:WRONG -d "$DATAHUB" "$URL" | cut -d' ' -f1)"
logline lambda 2 "e.status===403 && !e.verified && e.key_index===null && /key 1: signature mismatch/.test(e.reason)"

# Replay curl's signature: with the same body it verifies, with another it must not.
AUTH=$(sed -n 's/^> Authorization: //p' "$TMP/curl.v" | tr -d '\r')
DATE=$(sed -n 's/^> X-Amz-Date: //p' "$TMP/curl.v" | tr -d '\r')
REPLAY=(-H "Authorization: $AUTH" -H "X-Amz-Date: $DATE" -H 'Content-Type: application/json')
same "lambda replayed signature, same body" 200 "$(post "${REPLAY[@]}" -d "$DATAHUB" "$URL" | cut -d' ' -f1)"
logline lambda 3 "e.verified && e.key_index===1"
same "lambda tampered body" 403 "$(post "${REPLAY[@]}" -d "${DATAHUB/2:11/2:12}" "$URL" | cut -d' ' -f1)"
logline lambda 4 "e.status===403 && !e.verified && /signature mismatch/.test(e.reason) && e.event_ids.join()==='2:10,2:12'"

same "lambda async" "202 " "$(post "${SIGN[@]}" --user AKTEST:SECRET -H 'X-Amz-Invocation-Type: Event' -d "$DATAHUB" "$URL")"
logline lambda 5 "e.status===202 && e.async && e.verified"

echo '[{"access_key_id":"AKTEST","secret_access_key":"SECRET","session_token":"TOKEN"}]' > "$TMP/lambda.keys"
same "lambda session token" 200 "$(post "${SIGN[@]}" --user AKTEST:SECRET -H 'x-amz-security-token: TOKEN' -d "$DATAHUB" "$URL" | cut -d' ' -f1)"
logline lambda 6 "e.verified && e.key_index===0"
same "lambda missing session token" 403 "$(post "${SIGN[@]}" --user AKTEST:SECRET -d "$DATAHUB" "$URL" | cut -d' ' -f1)"
logline lambda 7 "!e.verified && /x-amz-security-token/.test(e.reason)"

echo '[{"access_key_id":"AKTEST","secret_access_key":"ROTATED"}]' > "$TMP/lambda.keys"   # key rotation
same "lambda rotated key refuses the old secret" 403 "$(post "${SIGN[@]}" --user AKTEST:SECRET -d "$DATAHUB" "$URL" | cut -d' ' -f1)"
same "lambda rotated key accepts the new secret" 200 "$(post "${SIGN[@]}" --user AKTEST:ROTATED -d "$DATAHUB" "$URL" | cut -d' ' -f1)"
# A correct signature for 2020: curl signs with a given x-amz-date (but also
# sends that header twice), so replay its Authorization with the date once.
curl -s -o /dev/null -v --aws-sigv4 "aws:amz:us-east-1:lambda" --user AKTEST:ROTATED \
     -H 'X-Amz-Date: 20200101T000000Z' -H 'Content-Type: application/json' -d "$DATAHUB" "$URL" 2>"$TMP/curl.v"
AUTH=$(sed -n 's/^> Authorization: //p' "$TMP/curl.v" | tr -d '\r')
same "lambda stale x-amz-date" 403 "$(post -H "Authorization: $AUTH" -H 'X-Amz-Date: 20200101T000000Z' \
     -H 'Content-Type: application/json' -d "$DATAHUB" "$URL" | cut -d' ' -f1)"
logline lambda 11 "!e.verified && /15 minutes/.test(e.reason) && e.signed_at===Date.UTC(2020,0,1)"
same "lambda stats" '200 {"requests":11,"verified":5,"refused":6}' "$(post "http://127.0.0.1:$PORT/stats")"

# ---- lambda faults ----------------------------------------------------------
echo "== lambda faults"
echo '[{"access_key_id":"AKTEST","secret_access_key":"SECRET"}]' > "$TMP/faults.keys"
start faults lambda --fail-first 1 --fail-status 503 --function-error-first 1
URL=http://127.0.0.1:$PORT/2015-03-31/functions/f/invocations
same "faults: refused does not count" 403 "$(post "${SIGN[@]}" --user AKTEST:WRONG -d "$DIS" "$URL" | cut -d' ' -f1)"
same "faults: fail-first" 503 "$(post "${SIGN[@]}" --user AKTEST:SECRET -d "$DIS" "$URL" | cut -d' ' -f1)"
logline faults 2 "e.status===503 && e.fault==='fail' && e.verified && e.shard===3 && e.event_ids.join()==='3:12,3:13'"
same "faults: function error" '200 {"errorMessage":"boom","errorType":"Error"}' \
     "$(post "${SIGN[@]}" --user AKTEST:SECRET -D "$TMP/headers" -d "$DIS" "$URL")"
same "faults: X-Amz-Function-Error" "Unhandled" "$(sed -n 's/^X-Amz-Function-Error: //Ip' "$TMP/headers" | tr -d '\r')"
logline faults 3 "e.status===200 && e.fault==='function-error'"
same "faults: then success" '200 {"ok":true}' "$(post "${SIGN[@]}" --user AKTEST:SECRET -d "$DIS" "$URL")"
logline faults 4 "e.status===200 && e.fault===null"

# ---- webhook ----------------------------------------------------------------
echo "== webhook"
SECRET="whsec_$(openssl rand -base64 24)"
OTHER="whsec_$(openssl rand -base64 24)"
echo "[{\"secret\":\"$SECRET\"}]" > "$TMP/webhook.keys"
start webhook webhook
URL=http://127.0.0.1:$PORT/hook

# whsig SECRET ID TS BODY: the Standard Webhooks v1 signature.
whsig() {
    local key
    key=$(printf '%s' "${1#whsec_}" | base64 -d | od -An -v -tx1 | tr -d ' \n')
    printf '%s.%s.%s' "$2" "$3" "$4" | openssl dgst -sha256 -mac HMAC -macopt "hexkey:$key" -binary | base64 -w0
}
# whpost SECRET ID TS SIGNED-BODY SENT-BODY
whpost() {
    post -H 'Content-Type: application/json' -H "webhook-id: $2" -H "webhook-timestamp: $3" \
         -H "webhook-signature: v1,$(whsig "$1" "$2" "$3" "$4")" --data-binary "$5" "$URL"
}
NOW=$(date +%s)
same "webhook signed" '200 {"ok":true}' "$(whpost "$SECRET" msg_1 "$NOW" "$DIS" "$DIS")"
logline webhook 1 "e.verified && e.key_index===0 && e.webhook_id==='msg_1' && e.signed_at===$NOW*1000
    && e.shard===3 && e.event_ids.join()==='3:12,3:13' && e.body_sha256==='$(sha "$DIS")' && !e.async"
same "webhook wrong secret" 403 "$(whpost "$OTHER" msg_2 "$NOW" "$DIS" "$DIS" | cut -d' ' -f1)"
logline webhook 2 "e.status===403 && !e.verified && e.reason==='No matching signature found'"
same "webhook tampered body" 403 "$(whpost "$SECRET" msg_3 "$NOW" "$DIS" "${DIS/\"13\"/\"14\"}" | cut -d' ' -f1)"
logline webhook 3 "!e.verified && e.event_ids.join()==='3:12,3:14'"
same "webhook stale timestamp" 403 "$(whpost "$SECRET" msg_4 "$((NOW - 600))" "$DIS" "$DIS" | cut -d' ' -f1)"
logline webhook 4 "!e.verified && e.reason==='Message timestamp too old'"
echo "[{\"secret\":\"$OTHER\"},{\"secret\":\"$SECRET\"}]" > "$TMP/webhook.keys"
same "webhook second key" 200 "$(whpost "$SECRET" msg_5 "$NOW" "$DIS" "$DIS" | cut -d' ' -f1)"
logline webhook 5 "e.verified && e.key_index===1"
same "webhook stats" '200 {"requests":5,"verified":2,"refused":3}' "$(post "http://127.0.0.1:$PORT/stats")"

# ---- stop -------------------------------------------------------------------
for pid in "${PIDS[@]}"; do
    kill -TERM "$pid"; wait "$pid"
    same "endpoint $pid exits 0 on SIGTERM" 0 $?
done
PIDS=()

echo "$PASSED passed, $FAILED failed"
[ "$FAILED" -eq 0 ]
