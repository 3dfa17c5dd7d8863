/*-------------------------------------------------------------------------
 *
 * target.c
 *	  Where a connector's requests go and how each attempt is authenticated
 *	  (DESIGN 9.4): the checks of a target, its endpoint and credential, and
 *	  the headers of every attempt, signed afresh.
 *
 * Targets.  'http': a POST to the endpoint, with Standard Webhooks headers
 * (a 'webhook' credential) or a header of a 'token' credential.  'fc':
 * Function Compute 3.0's InvokeFunction, signed with an 'aliyun' AccessKey
 * (ACS3-HMAC-SHA256, signing.c).  'functiongraph': FunctionGraph's
 * invocation API, signed with a 'huaweicloud' AK/SK (SDK-HMAC-SHA256) or
 * authenticated by a 'token' credential (X-Auth-Token).  'lambda': Lambda's
 * Invoke API or a function URL, signed with SigV4 by libcurl
 * (CURLOPT_AWS_SIGV4).  Each platform's "the function failed" signal in a
 * 2xx is a header that http.c looks for (HttpEndpoint.error_header).
 *
 * The same target_prepare checks a connector at create_connector (with the
 * credential's provider and region only) and loads it in the delivery
 * worker (with its secrets), so that what one accepts the other can use.
 * Its sentences never quote a secret.
 *
 * IDENTIFICATION
 *	  src/target.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <time.h>

#include "common/base64.h"
#include "fmgr.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

#include "signing.h"
#include "target.h"

PG_FUNCTION_INFO_V1(event_bridge_check_target);

/* The most headers target_headers adds. */
#define EB_TARGET_MAX_HEADERS	16

/* Does s consist of 1 or more of the characters in allowed (and letters and digits)? */
static bool
only_chars(const char *s, size_t len, const char *allowed)
{
	if (len == 0)
		return false;
	for (size_t i = 0; i < len; i++)
		if (!isalnum((unsigned char) s[i]) && strchr(allowed, s[i]) == NULL)
			return false;
	return true;
}

/*
 * Does path match prefix, then a name of the allowed characters, then
 * suffix?
 */
static bool
path_matches(const char *path, const char *prefix, const char *allowed, const char *suffix)
{
	size_t		len = strlen(path);
	size_t		pre = strlen(prefix);
	size_t		suf = strlen(suffix);

	return len > pre + suf &&
		strncmp(path, prefix, pre) == 0 &&
		strcmp(path + len - suf, suffix) == 0 &&
		only_chars(path + pre, len - pre - suf, allowed);
}

/* The region in a Lambda host name (lambda.R.amazonaws.com, X.lambda-url.R.on.aws), or NULL. */
static char *
lambda_region(const char *host)
{
	const char *start = NULL;
	const char *end = NULL;

	if (strncmp(host, "lambda.", 7) == 0)
	{
		start = host + 7;
		end = strstr(start, ".amazonaws.com");
	}
	else if ((start = strstr(host, ".lambda-url.")) != NULL)
	{
		start += strlen(".lambda-url.");
		end = strstr(start, ".on.aws");
	}
	if (start == NULL || end == NULL || !only_chars(start, end - start, "-"))
		return NULL;
	return pnstrdup(start, end - start);
}

/* Which credential providers a target takes. */
static const char *
check_provider(TargetKind kind, const char *provider)
{
	switch (kind)
	{
		case TARGET_HTTP:
			if (provider != NULL && strcmp(provider, "webhook") != 0 &&
				strcmp(provider, "token") != 0)
				return "Target http takes a webhook or token credential, or none.";
			break;
		case TARGET_FC:
			if (provider == NULL || strcmp(provider, "aliyun") != 0)
				return "Target fc needs an aliyun credential.";
			break;
		case TARGET_FUNCTIONGRAPH:
			if (provider == NULL ||
				(strcmp(provider, "huaweicloud") != 0 && strcmp(provider, "token") != 0))
				return "Target functiongraph needs a huaweicloud or token credential.";
			break;
		case TARGET_LAMBDA:
			if (provider == NULL || strcmp(provider, "aws") != 0)
				return "Target lambda needs an aws credential.";
			break;
		case TARGET_KAFKA:
			if (provider != NULL && strcmp(provider, "kafka") != 0)
				return "Target kafka takes a kafka credential, or none.";
			break;
		case TARGET_UNKNOWN:
			break;
	}
	return NULL;
}

/*
 * Parses a Kafka endpoint, kafka://host:port[,host:port...]/topic, into t.
 * Host names and IPv4 addresses only; a topic as Kafka allows them.
 */
static const char *
parse_kafka_endpoint(const char *url, Target *t)
{
	const char *usage = "A Kafka endpoint is kafka://host:port[,host:port...]/topic.";
	const char *hosts;
	const char *slash;
	const char *topic;
	char	   *list;
	char	   *item;
	char	   *save;
	int			nbrokers = 0;

	if (strncmp(url, "kafka://", 8) != 0)
		return usage;
	hosts = url + 8;
	slash = strchr(hosts, '/');
	if (slash == NULL || slash == hosts)
		return usage;
	topic = slash + 1;
	if (strlen(topic) > 249 || !only_chars(topic, strlen(topic), "._-") ||
		strcmp(topic, ".") == 0 || strcmp(topic, "..") == 0)
		return "A Kafka topic is 1 to 249 letters, digits, \".\", \"_\" or \"-\" (and not \".\" or \"..\").";
	list = pnstrdup(hosts, slash - hosts);
	if (strstr(list, ",,") != NULL || hosts[0] == ',' || slash[-1] == ',')
		return usage;
	for (item = strtok_r(list, ",", &save); item != NULL; item = strtok_r(NULL, ",", &save))
	{
		char	   *colon = strrchr(item, ':');
		char	   *end;
		long		port;

		/* librdkafka starts a thread per broker it is given. */
		if (++nbrokers > EB_KAFKA_MAX_BROKERS)
			return psprintf("A Kafka endpoint names at most %d brokers (the cluster tells the producer of the others).",
							EB_KAFKA_MAX_BROKERS);
		if (colon == NULL || colon == item || colon - item > 253 ||
			!only_chars(item, colon - item, ".-"))
			return usage;
		port = strtol(colon + 1, &end, 10);
		if (*end != '\0' || colon[1] == '\0' || port < 1 || port > 65535)
			return "A Kafka broker's port is 1 to 65535.";
	}
	t->kafka_brokers = pnstrdup(hosts, slash - hosts);
	t->kafka_topic = pstrdup(topic);
	return NULL;
}

/* Checks the endpoint's path and query for the target; sets up Lambda's signing. */
static const char *
check_endpoint(Target *t)
{
	HttpEndpoint *e = &t->endpoint;
	char	   *region;

	if (t->kind != TARGET_HTTP && (e->username != NULL || e->password != NULL))
		return "The endpoint of a function platform carries no user name or password: the credential authenticates.";
	switch (t->kind)
	{
		case TARGET_HTTP:
			if (t->async)
				return "Invocation async needs a function platform target: fc, functiongraph or lambda.";
			break;
		case TARGET_FC:
			if (!path_matches(e->path, "/2023-03-30/functions/", "_-", "/invocations"))
				return "A Function Compute endpoint is https://<account id>.<region>.fc.aliyuncs.com/2023-03-30/functions/<function name>/invocations.";
			if (e->query[0] != '\0' && !path_matches(e->query, "qualifier=", "_.-", ""))
				return "The only query a Function Compute endpoint takes is qualifier=<version or alias>.";
			e->error_headers[0] = "x-fc-error-type";
			break;
		case TARGET_FUNCTIONGRAPH:
			if (!path_matches(e->path, "/v2/", "/_:.-", "/invocations") ||
				strstr(e->path, "/fgs/functions/") == NULL)
				return "A FunctionGraph endpoint is https://functiongraph.<region>.myhuaweicloud.com/v2/<project id>/fgs/functions/<function urn>/invocations.";
			if (e->query[0] != '\0')
				return "A FunctionGraph endpoint takes no query.";
			t->project_id = pnstrdup(e->path + 4, strcspn(e->path + 4, "/"));
			e->error_headers[0] = "X-Is-Func-Err";
			e->error_headers[1] = "X-Func-Err-Code";
			if (t->async)
			{
				/* The same function, invoked asynchronously. */
				e->path = psprintf("%s-async", e->path);
				e->url = psprintf("%s-async", e->url);
			}
			break;
		case TARGET_LAMBDA:
			/* libcurl signs the path and query as sent: nothing that AWS would encode. */
			if (!path_matches(e->path, "/2015-03-31/functions/", "_.-", "/invocations") &&
				strstr(e->host, ".lambda-url.") == NULL)
				return "A Lambda endpoint is https://lambda.<region>.amazonaws.com/2015-03-31/functions/<function name>/invocations or a function URL.";
			if (e->query[0] != '\0' && !path_matches(e->query, "Qualifier=", "_-", ""))
				return "The only query a Lambda endpoint takes is Qualifier=<version or alias>.";
			region = (char *) t->credential.region;
			if (region == NULL)
				region = lambda_region(e->host);
			if (region == NULL)
				return "The AWS region cannot be told from the endpoint: put \"region\" in the aws credential.";
			e->aws_sigv4 = psprintf("aws:amz:%s:lambda", region);
			e->username = (char *) t->credential.key_id;
			e->password = (char *) t->credential.secret;
			e->error_headers[0] = "X-Amz-Function-Error";
			break;
		case TARGET_KAFKA:
		case TARGET_UNKNOWN:
			break;
	}
	return NULL;
}

/*
 * Fills t for a connector's target, endpoint URL, invocation and credential
 * (whose provider is NULL for none).  Returns NULL, or a sentence saying
 * what is wrong; the sentence never quotes the URL or a secret.  Secrets
 * may be missing (at create_connector's check): then nothing is decoded.
 */
const char *
target_prepare(const char *target, const char *url, bool async, const Credential *credential,
			   Target *t)
{
	const char *problem;

	memset(t, 0, sizeof(Target));
	if (strcmp(target, "http") == 0)
		t->kind = TARGET_HTTP;
	else if (strcmp(target, "fc") == 0)
		t->kind = TARGET_FC;
	else if (strcmp(target, "functiongraph") == 0)
		t->kind = TARGET_FUNCTIONGRAPH;
	else if (strcmp(target, "lambda") == 0)
		t->kind = TARGET_LAMBDA;
	else if (strcmp(target, "kafka") == 0)
		t->kind = TARGET_KAFKA;
	else
	{
		t->kind = TARGET_UNKNOWN;
		return "The targets are http, fc (Alibaba Function Compute), functiongraph (Huawei FunctionGraph), lambda (AWS Lambda) and kafka.";
	}
	t->async = async;
	t->credential = *credential;

	problem = check_provider(t->kind, credential->provider);
	if (t->kind == TARGET_KAFKA)
	{
		if (problem == NULL && async)
			problem = "Invocation async needs a function platform target: fc, functiongraph or lambda.";
		return problem ? problem : parse_kafka_endpoint(url, t);
	}
	if (problem == NULL)
		problem = http_parse_endpoint(url, &t->endpoint);
	if (problem == NULL)
		problem = check_endpoint(t);
	if (problem != NULL)
		return problem;

	if (credential->provider != NULL && strcmp(credential->provider, "webhook") == 0 &&
		credential->secret != NULL)
	{
		t->webhook_key_len = eb_webhook_key(credential->secret, t->webhook_key,
											sizeof(t->webhook_key));
		if (t->webhook_key_len <= 0)
			return "The webhook credential's secret is not \"whsec_\" and base64.";
	}
	return NULL;
}

/* Appends a header line "Name: value" to headers. */
static void
add_header(char **headers, int *n, const char *name, const char *value)
{
	Assert(*n < EB_TARGET_MAX_HEADERS);
	headers[(*n)++] = psprintf("%s: %s", name, value);
}

/*
 * Adds the signed headers to the request's headers, but the first, host,
 * which libcurl sends from the URL; returns the canonical request of a POST
 * with them.
 */
static CanonicalRequest
send_signed(const char *path, const char *query, SignedHeader *signed_headers, int ns,
			const char *payload_hash, char **headers, int *n)
{
	CanonicalRequest req;

	Assert(strcmp(signed_headers[0].name, "host") == 0);
	for (int i = 1; i < ns; i++)
		add_header(headers, n, signed_headers[i].name, signed_headers[i].value);
	req.method = "POST";
	req.path = path;
	req.query = query;
	req.headers = signed_headers;
	req.nheaders = ns;
	req.payload_hash = payload_hash;
	return req;
}

/* The headers of Function Compute's InvokeFunction, signed (ACS3-HMAC-SHA256). */
static void
fc_headers(const Target *t, const char *body, size_t body_len, struct pg_tm *tm,
		   char **headers, int *n)
{
	const Credential *cr = &t->credential;
	char		date[32];
	char		hash[EB_SHA256_HEX_LEN + 1];
	uint8		random[16];
	char		nonce[sizeof(random) * 2 + 1];
	SignedHeader signed_headers[10];
	int			ns = 0;
	CanonicalRequest req;

	snprintf(date, sizeof(date), "%04d-%02d-%02dT%02d:%02d:%02dZ",
			 tm->tm_year + 1900, tm->tm_mon + 1, tm->tm_mday, tm->tm_hour, tm->tm_min, tm->tm_sec);
	eb_sha256_hex(body, body_len, hash);
	if (!pg_strong_random(random, sizeof(random)))
		elog(ERROR, "could not generate a random nonce");
	hex_encode((const char *) random, sizeof(random), nonce);
	nonce[sizeof(nonce) - 1] = '\0';

	signed_headers[ns++] = (SignedHeader) {"host", t->endpoint.host};
	signed_headers[ns++] = (SignedHeader) {"content-type", "application/json"};
	signed_headers[ns++] = (SignedHeader) {"x-acs-action", "InvokeFunction"};
	signed_headers[ns++] = (SignedHeader) {"x-acs-version", "2023-03-30"};
	signed_headers[ns++] = (SignedHeader) {"x-acs-date", pstrdup(date)};
	signed_headers[ns++] = (SignedHeader) {"x-acs-signature-nonce", pstrdup(nonce)};
	signed_headers[ns++] = (SignedHeader) {"x-acs-content-sha256", pstrdup(hash)};
	if (cr->session_token != NULL)
	{
		signed_headers[ns++] = (SignedHeader) {"x-acs-accesskey-id", cr->key_id};
		signed_headers[ns++] = (SignedHeader) {"x-acs-security-token", cr->session_token};
	}
	req = send_signed(t->endpoint.path, t->endpoint.query, signed_headers, ns, hash, headers, n);
	add_header(headers, n, "Authorization",
			   eb_acs3_authorization(&req, cr->key_id, cr->secret));
	if (t->async)
		add_header(headers, n, "x-fc-invocation-type", "Async");
}

/* The headers of FunctionGraph's invocation API, signed (SDK-HMAC-SHA256). */
static void
functiongraph_headers(const Target *t, const char *body, size_t body_len, struct pg_tm *tm,
					  char **headers, int *n)
{
	const Credential *cr = &t->credential;
	char		date[32];
	char		hash[EB_SHA256_HEX_LEN + 1];
	SignedHeader signed_headers[5];
	int			ns = 0;
	CanonicalRequest req;

	snprintf(date, sizeof(date), "%04d%02d%02dT%02d%02d%02dZ",
			 tm->tm_year + 1900, tm->tm_mon + 1, tm->tm_mday, tm->tm_hour, tm->tm_min, tm->tm_sec);
	eb_sha256_hex(body, body_len, hash);

	signed_headers[ns++] = (SignedHeader) {"host", t->endpoint.host};
	signed_headers[ns++] = (SignedHeader) {"content-type", "application/json"};
	signed_headers[ns++] = (SignedHeader) {"x-project-id", t->project_id};
	signed_headers[ns++] = (SignedHeader) {"x-sdk-date", pstrdup(date)};
	if (cr->session_token != NULL)
		signed_headers[ns++] = (SignedHeader) {"x-security-token", cr->session_token};
	req = send_signed(eb_canonical_path(t->endpoint.path), "", signed_headers, ns, hash,
					  headers, n);
	add_header(headers, n, "Authorization",
			   eb_sdk_hmac_authorization(&req, date, cr->key_id, cr->secret));
}

/*
 * The headers that authenticate one attempt of a request with body, made
 * at now: signatures are made afresh for every attempt.  message_id names
 * the batch the same way in every attempt (Standard Webhooks' webhook-id).
 * Returns palloc'd "Name: value" lines.  Must be given a Target prepared
 * with its secrets.
 */
char **
target_headers(const Target *t, const char *message_id, const char *body, size_t body_len,
			   TimestampTz now, int *nheaders)
{
	char	  **headers = palloc(sizeof(char *) * EB_TARGET_MAX_HEADERS);
	const Credential *cr = &t->credential;
	pg_time_t	seconds = timestamptz_to_time_t(now);
	struct pg_tm *tm = pg_gmtime(&seconds);
	int			n = 0;

	if (cr->provider != NULL && strcmp(cr->provider, "token") == 0)
		add_header(headers, &n, cr->key_id, cr->secret);

	switch (t->kind)
	{
		case TARGET_HTTP:
			if (t->webhook_key_len > 0)
			{
				add_header(headers, &n, "webhook-id", message_id);
				add_header(headers, &n, "webhook-timestamp", psprintf(INT64_FORMAT, (int64) seconds));
				add_header(headers, &n, "webhook-signature",
						   eb_webhook_signature(t->webhook_key, t->webhook_key_len, message_id,
												(int64) seconds, body, body_len));
			}
			break;
		case TARGET_FC:
			fc_headers(t, body, body_len, tm, headers, &n);
			break;
		case TARGET_FUNCTIONGRAPH:
			if (strcmp(cr->provider, "huaweicloud") == 0)
				functiongraph_headers(t, body, body_len, tm, headers, &n);
			else
				add_header(headers, &n, "Content-Type", "application/json");
			break;
		case TARGET_LAMBDA:
			/* libcurl signs, with every header given here. */
			add_header(headers, &n, "Content-Type", "application/json");
			if (cr->session_token != NULL)
				add_header(headers, &n, "X-Amz-Security-Token", cr->session_token);
			if (t->async)
				add_header(headers, &n, "X-Amz-Invocation-Type", "Event");
			break;
		case TARGET_KAFKA:
		case TARGET_UNKNOWN:
			break;
	}
	*nheaders = n;
	return headers;
}

/*
 * SQL: refuses a connector's target, endpoint and invocation that do not go
 * together, or with the credential's provider and region (NULL: none).
 */
Datum
event_bridge_check_target(PG_FUNCTION_ARGS)
{
	Credential	credential = {0};
	Target		t;
	const char *problem;

	if (PG_ARGISNULL(0) || PG_ARGISNULL(1) || PG_ARGISNULL(2))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("target, endpoint and invocation must not be null")));
	if (!PG_ARGISNULL(3))
		credential.provider = text_to_cstring(PG_GETARG_TEXT_PP(3));
	if (!PG_ARGISNULL(4))
		credential.region = text_to_cstring(PG_GETARG_TEXT_PP(4));
	problem = target_prepare(text_to_cstring(PG_GETARG_TEXT_PP(0)),
							 text_to_cstring(PG_GETARG_TEXT_PP(1)),
							 strcmp(text_to_cstring(PG_GETARG_TEXT_PP(2)), "async") == 0,
							 &credential, &t);
	if (problem != NULL && t.kind == TARGET_UNKNOWN)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("unknown target \"%s\"", text_to_cstring(PG_GETARG_TEXT_PP(0))),
				 errhint("%s", problem)));
	if (problem != NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid %s target", text_to_cstring(PG_GETARG_TEXT_PP(0))),
				 errdetail("%s", problem)));
	PG_RETURN_VOID();
}
