/*-------------------------------------------------------------------------
 *
 * signing.c
 *	  The request signatures of the function platforms and of Standard
 *	  Webhooks, as pure functions of their inputs: what is signed, how, and
 *	  the header that carries it.  Knows no catalog, no libcurl.
 *
 * Hashes and HMACs are PostgreSQL's (common/cryptohash.h, common/hmac.h,
 * OpenSSL underneath).  In the backend those register with the current
 * resource owner, and the delivery worker signs outside any transaction,
 * so they run under a resource owner of this file's own.
 *
 * Secrets go into HMAC keys only: no function here puts one in a string it
 * returns or in an error.
 *
 * AWS Signature Version 4 (Lambda) is not here: libcurl makes it
 * (CURLOPT_AWS_SIGV4, see target.c).
 *
 * IDENTIFICATION
 *	  src/signing.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "common/base64.h"
#include "common/cryptohash.h"
#include "common/hmac.h"
#include "lib/stringinfo.h"
#include "utils/builtins.h"
#include "utils/resowner.h"

#include "signing.h"

static ResourceOwner signing_owner = NULL;

/* Switches to the resource owner that hashes register with; returns the old one. */
static ResourceOwner
enter_signing(void)
{
	ResourceOwner old = CurrentResourceOwner;

	if (old != NULL)
		return old;
	if (signing_owner == NULL)
		signing_owner = ResourceOwnerCreate(NULL, "event_bridge signing");
	CurrentResourceOwner = signing_owner;
	return old;
}

/* Writes the hex SHA-256 of data into hex (EB_SHA256_HEX_LEN + 1 bytes). */
void
eb_sha256_hex(const char *data, size_t len, char *hex)
{
	ResourceOwner old = enter_signing();
	pg_cryptohash_ctx *ctx = pg_cryptohash_create(PG_SHA256);
	uint8		digest[EB_SHA256_LEN];

	if (ctx == NULL || pg_cryptohash_init(ctx) < 0 ||
		pg_cryptohash_update(ctx, (const uint8 *) data, len) < 0 ||
		pg_cryptohash_final(ctx, digest, sizeof(digest)) < 0)
		elog(ERROR, "could not compute a SHA-256 hash: %s", pg_cryptohash_error(ctx));
	pg_cryptohash_free(ctx);
	CurrentResourceOwner = old;
	hex_encode((const char *) digest, EB_SHA256_LEN, hex);
	hex[EB_SHA256_HEX_LEN] = '\0';
}

/* Writes the HMAC-SHA256 of data keyed by key into digest (EB_SHA256_LEN bytes). */
void
eb_hmac_sha256(const uint8 *key, size_t key_len, const char *data, size_t len, uint8 *digest)
{
	ResourceOwner old = enter_signing();
	pg_hmac_ctx *ctx = pg_hmac_create(PG_SHA256);

	if (ctx == NULL || pg_hmac_init(ctx, key, key_len) < 0 ||
		pg_hmac_update(ctx, (const uint8 *) data, len) < 0 ||
		pg_hmac_final(ctx, digest, EB_SHA256_LEN) < 0)
		elog(ERROR, "could not compute an HMAC: %s", pg_hmac_error(ctx));
	pg_hmac_free(ctx);
	CurrentResourceOwner = old;
}

/* The hex HMAC-SHA256 of data keyed by a text secret, palloc'd. */
static char *
hmac_hex(const char *secret, const char *data, size_t len)
{
	uint8		digest[EB_SHA256_LEN];
	char	   *hex = palloc(EB_SHA256_HEX_LEN + 1);

	eb_hmac_sha256((const uint8 *) secret, strlen(secret), data, len, digest);
	hex_encode((const char *) digest, EB_SHA256_LEN, hex);
	hex[EB_SHA256_HEX_LEN] = '\0';
	return hex;
}

/*
 * Decodes a Standard Webhooks secret ("whsec_" and base64) into key.
 * Returns the key's length, or -1 if the secret is malformed or longer
 * than max_len.
 */
int
eb_webhook_key(const char *secret, uint8 *key, size_t max_len)
{
	const char *b64;
	int			len;

	if (strncmp(secret, "whsec_", 6) != 0)
		return -1;
	b64 = secret + 6;
	if (pg_b64_dec_len(strlen(b64)) > (int) max_len)
		return -1;
	len = pg_b64_decode(b64, strlen(b64), (char *) key, max_len);
	return len <= 0 ? -1 : len;
}

/*
 * The webhook-signature header value of Standard Webhooks: "v1," and the
 * base64 HMAC-SHA256 of "<id>.<timestamp>.<body>".  palloc'd.
 */
char *
eb_webhook_signature(const uint8 *key, size_t key_len, const char *id, int64 timestamp,
					 const char *body, size_t body_len)
{
	StringInfoData content;
	uint8		digest[EB_SHA256_LEN];
	char	   *out = palloc(3 + pg_b64_enc_len(EB_SHA256_LEN) + 1);
	int			n;

	initStringInfo(&content);
	appendStringInfo(&content, "%s." INT64_FORMAT ".", id, timestamp);
	appendBinaryStringInfo(&content, body, body_len);
	eb_hmac_sha256(key, key_len, content.data, content.len, digest);
	pfree(content.data);

	memcpy(out, "v1,", 3);
	n = pg_b64_encode((const char *) digest, EB_SHA256_LEN, out + 3,
					  pg_b64_enc_len(EB_SHA256_LEN));
	out[3 + n] = '\0';
	return out;
}

/* Orders signed headers by name. */
static int
header_cmp(const void *a, const void *b)
{
	return strcmp(((const SignedHeader *) a)->name, ((const SignedHeader *) b)->name);
}

/*
 * Builds a canonical request: the method, the path (with a "/" appended if
 * asked and missing), the query, each signed header as "name:value" in name
 * order, an empty line, the signed header names joined by ";", and the
 * payload hash; lines end with "\n", the last one not.  Sorts req->headers.
 * Fills signed_names with the joined names.
 */
static char *
canonical_request(const CanonicalRequest *req, bool slash_at_end, StringInfo signed_names)
{
	StringInfoData out;
	size_t		path_len = strlen(req->path);

	qsort(req->headers, req->nheaders, sizeof(SignedHeader), header_cmp);
	initStringInfo(&out);
	appendStringInfo(&out, "%s\n%s%s\n%s\n", req->method, req->path,
					 slash_at_end && (path_len == 0 || req->path[path_len - 1] != '/') ? "/" : "",
					 req->query);
	for (int i = 0; i < req->nheaders; i++)
	{
		appendStringInfo(&out, "%s:%s\n", req->headers[i].name, req->headers[i].value);
		appendStringInfo(signed_names, "%s%s", i > 0 ? ";" : "", req->headers[i].name);
	}
	appendStringInfo(&out, "\n%s\n%s", signed_names->data, req->payload_hash);
	return out.data;
}

/*
 * The hex HMAC-SHA256, keyed by secret, of prefix followed by the hex
 * SHA-256 of the canonical request: the signature of both Alibaba's and
 * Huawei's schemes.  Fills names with the signed header names.
 */
static char *
canonical_signature(const CanonicalRequest *req, bool slash_at_end, const char *prefix,
					const char *secret, StringInfo names)
{
	char	   *canonical = canonical_request(req, slash_at_end, names);
	char		hash[EB_SHA256_HEX_LEN + 1];
	char	   *to_sign;

	eb_sha256_hex(canonical, strlen(canonical), hash);
	to_sign = psprintf("%s%s", prefix, hash);
	return hmac_hex(secret, to_sign, strlen(to_sign));
}

/*
 * The Authorization header value of Alibaba Cloud's V3 signature
 * (ACS3-HMAC-SHA256), as the OpenAPI SDK signs Function Compute 3.0 calls:
 * the string to sign is "ACS3-HMAC-SHA256\n" and the hash of the canonical
 * request.  The signed headers are host, content-type and the x-acs-* ones.
 */
char *
eb_acs3_authorization(const CanonicalRequest *req, const char *key_id, const char *secret)
{
	StringInfoData names;
	char	   *signature;

	initStringInfo(&names);
	signature = canonical_signature(req, false, "ACS3-HMAC-SHA256\n", secret, &names);
	return psprintf("ACS3-HMAC-SHA256 Credential=%s,SignedHeaders=%s,Signature=%s",
					key_id, names.data, signature);
}

/*
 * The Authorization header value of Huawei Cloud's SDK-HMAC-SHA256, as its
 * SDK signer makes it: the string to sign is "SDK-HMAC-SHA256\n", the
 * X-Sdk-Date, "\n" and the hash of the canonical request, whose path is
 * percent-encoded segment by segment (the caller's part, eb_canonical_path)
 * and ends with "/".
 */
char *
eb_sdk_hmac_authorization(const CanonicalRequest *req, const char *sdk_date,
						  const char *key_id, const char *secret)
{
	StringInfoData names;
	char	   *signature;

	initStringInfo(&names);
	signature = canonical_signature(req, true, psprintf("SDK-HMAC-SHA256\n%s\n", sdk_date),
									secret, &names);
	return psprintf("SDK-HMAC-SHA256 Access=%s, SignedHeaders=%s, Signature=%s",
					key_id, names.data, signature);
}

/*
 * A URL path with each segment percent-decoded and encoded again as
 * RFC 3986 asks (all but letters, digits and "-._~" as %XX, upper case),
 * as Huawei Cloud's signer puts it in the canonical request.  palloc'd.
 */
char *
eb_canonical_path(const char *path)
{
	StringInfoData out;

	initStringInfo(&out);
	for (const char *p = path; *p; p++)
	{
		unsigned char c = (unsigned char) *p;

		if (c == '%' && isxdigit((unsigned char) p[1]) && isxdigit((unsigned char) p[2]))
		{
			char		hex[3] = {p[1], p[2], '\0'};

			c = (unsigned char) strtol(hex, NULL, 16);
			p += 2;
		}
		else if (c == '/')
		{
			appendStringInfoChar(&out, '/');
			continue;
		}
		if (isalnum(c) || c == '-' || c == '.' || c == '_' || c == '~')
			appendStringInfoChar(&out, (char) c);
		else
			appendStringInfo(&out, "%%%02X", c);
	}
	return out.data;
}
