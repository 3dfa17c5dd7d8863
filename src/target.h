/*-------------------------------------------------------------------------
 *
 * target.h
 *	  Where a connector's requests go and how they are authenticated: plain
 *	  HTTP (with a Standard Webhooks signature or a token header), Function
 *	  Compute, FunctionGraph or Lambda, with a credential.
 *
 * IDENTIFICATION
 *	  src/target.h
 *
 *-------------------------------------------------------------------------
 */
#ifndef EVENT_BRIDGE_TARGET_H
#define EVENT_BRIDGE_TARGET_H

#include "postgres.h"

#include "datatype/timestamp.h"

#include "http.h"

typedef enum TargetKind
{
	TARGET_HTTP,
	TARGET_FC,
	TARGET_FUNCTIONGRAPH,
	TARGET_LAMBDA,
	TARGET_KAFKA,
	TARGET_UNKNOWN				/* target_prepare failed: not a target */
} TargetKind;

/*
 * A credential as the catalog keeps it (event_bridge.credential_secrets).
 * At create_connector's check only provider and region are known.
 */
typedef struct Credential
{
	const char *provider;		/* NULL: no credential */
	const char *key_id;			/* access key id, or the token's header name */
	const char *secret;			/* secret key, webhook secret, or token value */
	const char *session_token;	/* NULL: none */
	const char *region;			/* aws only; NULL: none */
	/* kafka: key_id is the SASL user name, secret its password ("" none) */
	const char *security_protocol;	/* NULL: none */
	const char *sasl_mechanism;
	const char *ca_pem;
} Credential;

/* Bytes of the longest Standard Webhooks key (the secret's decoded base64). */
#define EB_WEBHOOK_KEY_MAX	64
/* The brokers a Kafka endpoint may name: librdkafka starts a thread for each. */
#define EB_KAFKA_MAX_BROKERS	32

/* A connector's target, ready to sign requests.  Strings are palloc'd. */
typedef struct Target
{
	TargetKind	kind;
	bool		async;
	Credential	credential;
	HttpEndpoint endpoint;		/* where requests go, with libcurl's part of the signing */
	char	   *project_id;		/* functiongraph: the path's project id */
	char	   *kafka_brokers;	/* kafka: host:port,... */
	char	   *kafka_topic;	/* kafka */
	uint8		webhook_key[EB_WEBHOOK_KEY_MAX];
	int			webhook_key_len;	/* 0: no webhook credential */
} Target;

extern const char *target_prepare(const char *target, const char *url, bool async,
								  const Credential *credential, Target *t);
extern char **target_headers(const Target *t, const char *message_id, const char *body,
							 size_t body_len, TimestampTz now, int *nheaders);

#endif							/* EVENT_BRIDGE_TARGET_H */
