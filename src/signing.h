/*-------------------------------------------------------------------------
 *
 * signing.h
 *	  The request signatures of the function platforms and of Standard
 *	  Webhooks, as pure functions of their inputs.
 *
 * IDENTIFICATION
 *	  src/signing.h
 *
 *-------------------------------------------------------------------------
 */
#ifndef EVENT_BRIDGE_SIGNING_H
#define EVENT_BRIDGE_SIGNING_H

#include "postgres.h"

/* Bytes of a SHA-256 digest, and of its hex. */
#define EB_SHA256_LEN		32
#define EB_SHA256_HEX_LEN	64

/* A header as a signature sees it: name in lower case, value trimmed. */
typedef struct SignedHeader
{
	const char *name;
	const char *value;
} SignedHeader;

/* What a canonical request (Alibaba ACS3, Huawei SDK-HMAC-SHA256) is made of. */
typedef struct CanonicalRequest
{
	const char *method;
	const char *path;			/* as in the URL, percent-encoded as sent */
	const char *query;			/* raw, without "?"; "" for none */
	SignedHeader *headers;		/* the signed ones, any order */
	int			nheaders;
	const char *payload_hash;	/* hex SHA-256 of the body */
} CanonicalRequest;

extern void eb_sha256_hex(const char *data, size_t len, char *hex);
extern void eb_hmac_sha256(const uint8 *key, size_t key_len, const char *data, size_t len,
						   uint8 *digest);
extern char *eb_webhook_signature(const uint8 *key, size_t key_len, const char *id,
								  int64 timestamp, const char *body, size_t body_len);
extern int	eb_webhook_key(const char *secret, uint8 *key, size_t max_len);
extern char *eb_acs3_authorization(const CanonicalRequest *req, const char *key_id,
								   const char *secret);
extern char *eb_canonical_path(const char *path);
extern char *eb_sdk_hmac_authorization(const CanonicalRequest *req, const char *sdk_date,
									   const char *key_id, const char *secret);

#endif							/* EVENT_BRIDGE_SIGNING_H */
