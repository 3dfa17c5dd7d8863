/*-------------------------------------------------------------------------
 *
 * kafka.h
 *	  The Kafka target (DESIGN 9.6): librdkafka producers that the delivery
 *	  worker drives from its own loop, one batch of messages per shard in
 *	  flight, with outcomes like those of http.c.
 *
 * IDENTIFICATION
 *	  src/kafka.h
 *
 *-------------------------------------------------------------------------
 */
#ifndef EVENT_BRIDGE_KAFKA_H
#define EVENT_BRIDGE_KAFKA_H

#include "postgres.h"

#include "http.h"

/* What a producer connects to and how; strings belong to the caller. */
typedef struct KafkaConfig
{
	const char *brokers;		/* host:port,... */
	const char *topic;
	const char *security_protocol;	/* NULL: plaintext */
	const char *sasl_mechanism; /* NULL: none */
	const char *username;
	const char *password;
	const char *ca_pem;
	int64		timeout_ms;		/* a message not acknowledged by then fails */
} KafkaConfig;

/* One message; the strings belong to the caller until kafka_send returns. */
typedef struct KafkaMessage
{
	const char *key;			/* NULL: none */
	const char *value;
	size_t		value_len;
	const char *event_id;
	const char *stream;
	int32		shard_id;
	int64		sequence;
	const char *op;
	const char *table;
} KafkaMessage;

typedef struct KafkaProducer KafkaProducer;

extern KafkaProducer *kafka_producer_create(const KafkaConfig *config, char *error,
											size_t errlen);
extern void kafka_producer_destroy(KafkaProducer *p, int flush_ms);
extern void kafka_producer_retire(KafkaProducer *p);
extern void kafka_close_retired(int flush_ms);
extern bool kafka_producer_usable(KafkaProducer *p, const KafkaConfig *config);
extern void kafka_send(KafkaProducer *p, void *owner, const KafkaMessage *messages, int n);
extern void kafka_fail(void *owner, const char *why);
extern void kafka_cancel(void *owner);
extern void kafka_poll(void);
extern bool kafka_in_flight(void);
extern void *kafka_next_finished(HttpOutcome *outcome);

#endif							/* EVENT_BRIDGE_KAFKA_H */
