/*-------------------------------------------------------------------------
 *
 * delivery.h
 *	  The delivery worker's model of connectors and shards, shared by its
 *	  loop (delivery.c), its catalog statements (delivery_catalog.c) and its
 *	  batch reading (delivery_read.c).
 *
 * IDENTIFICATION
 *	  src/delivery.h
 *
 *-------------------------------------------------------------------------
 */
#ifndef EVENT_BRIDGE_DELIVERY_H
#define EVENT_BRIDGE_DELIVERY_H

#include "postgres.h"

#include "lib/stringinfo.h"
#include "nodes/pg_list.h"
#include "utils/timestamp.h"

#include "event_bridge.h"
#include "event.h"
#include "format.h"
#include "http.h"
#include "kafka.h"
#include "target.h"

/* Milliseconds from 1970-01-01 to PostgreSQL's epoch, 2000-01-01. */
#define EB_EPOCH_OFFSET_MS \
	((int64) (POSTGRES_EPOCH_JDATE - UNIX_EPOCH_JDATE) * SECS_PER_DAY * 1000)

/*
 * How often the worker looks for Kafka delivery reports while messages are
 * in flight, besides when librdkafka wakes it (kafka.c).
 */
#define EB_KAFKA_POLL_MS	50

/* How long the worker waits for Kafka messages in flight as it exits. */
#define EB_KAFKA_FLUSH_MS	2000

/* The least retry interval, as create_connector allows it. */
#define EB_MIN_RETRY_MS		10

/*
 * The longest answer read for batchItemFailures: 10,000 records' eventIds
 * take about 450 kB.  A longer answer fails the batch.
 */
#define EB_PARTIAL_RESPONSE_MAX	(1024 * 1024)

typedef struct Connector Connector;

/* A shard of a connector, as the worker drives it. */
typedef struct Shard
{
	Connector  *connector;
	int32		shard_id;
	bool		loaded;			/* the fields below come from the catalog */
	int64		delivered_sequence; /* the committed offset */
	int32		generation;		/* connector_shards.position_generation */
	int64		skip_before;	/* epoch ms; earlier records are skipped */
	int64		retry_last;		/* last sequence of the failed batch, or -1 */
	int			failures;		/* consecutive failed attempts of that batch */
	bool		suspended;
	HttpRequest *request;

	/*
	 * Bisection (on_failure 'dead_letter'): while the offset is below
	 * bisect_last, batches hold at most bisect_size records, halved at each
	 * failure, until a failing record is alone and becomes a dead letter;
	 * then batches are whole again.  bisect_failures counts the failed
	 * attempts since the failing began.
	 * Kept in memory only: after a restart the failed batch is retried
	 * whole and bisected again.
	 */
	int64		bisect_last;	/* -1: not bisecting */
	int			bisect_size;
	int			bisect_failures;

	/* Dead letters wait to be sent again (redeliver_dead_letters). */
	bool		redeliver_pending;

	/* The batch in hand: read, in flight, or waiting for its retry. */
	bool		has_batch;
	bool		in_flight;
	int64		first_sequence;
	int64		last_sequence;
	int			nrecords;
	int			nfiltered;		/* of them, left out by the connector's filter */
	int64	   *filtered;		/* their sequences, in order (in batch_context) */
	bool		redelivery;		/* dead letters sent again (redeliver_dead_letters) */
	int64	   *sequences;		/* of a redelivery, which may have gaps */
	StringInfoData body;		/* in batch_context */
	EventSlice *slices;			/* kafka: the messages of body, in batch_context */
	int			nslices;
	MemoryContext batch_context;

	/* Not before this: the retry time, or the end of the batch window. */
	TimestampTz not_before;

	/*
	 * The last read took every record there was when the capture worker's
	 * flushes numbered drained_epoch: no read is needed until they number
	 * more, or until a failure or a reload clears it.
	 */
	bool		drained;
	uint32		drained_epoch;
} Shard;

/* A connector's configuration and shards. */
struct Connector
{
	int32		connector_id;
	int64		version;		/* -1: reload at the next turn */
	bool		seen;
	char	   *name;
	int32		stream_id;
	char	   *stream_name;
	Target		target;			/* the endpoint, and how attempts are signed */
	char	  **headers;		/* "Name: value" lines */
	int			nheaders;
	EbFormat	format;
	Jsonb	   *filter;			/* NULL: none */
	RuleTransform *transform;	/* NULL: ORIGINAL */
	bool		named_events;	/* bodies are made by event.c (format, filter or transform) */
	RuleTransform *key_transform;	/* kafka: NULL keeps the row's key */
	KafkaProducer *producer;	/* kafka: made at the first batch sent; malloc'd */
	int			batch_size;
	int64		batch_window_ms;
	int64		retry_interval_ms;
	bool		exponential;	/* retry_strategy 'exponential' */
	int64		max_retry_interval_ms;	/* cap of waits and of Retry-After */
	int			max_retries;
	int64		timeout_ms;
	int			max_request_bytes;	/* no body is larger */
	bool		dead_letter;	/* on_failure 'dead_letter' (else 'suspend') */
	int64		max_record_age_ms;	/* older records fail at once; -1: no limit */
	bool		partial_batch_response; /* honour batchItemFailures */
	bool		stopped;
	bool		unusable;		/* could not be loaded: state ERROR */
	int			nshards;
	Shard	   *shards;
	MemoryContext context;		/* the configuration; reset at reload */
	struct DeliveryWorker *worker;
};

/* The worker: its database, its connectors, and what a turn found. */
typedef struct DeliveryWorker
{
	EbDatabase *db;
	Oid			extension_oid;
	char	   *database_name;
	MemoryContext context;		/* connectors, shards and batches */
	List	   *connectors;		/* Connector */

	/* The capture worker's flush count, read as a turn starts (see Shard.drained). */
	uint32		turn_epoch;

	/* Set when a shard has more to read at once: the next wait does not sleep. */
	bool		turn_again;

	/* The count of connector changes when the worker last looked at them. */
	uint32		synced_connectors_epoch;
} DeliveryWorker;

static inline int64
epoch_ms(TimestampTz t)
{
	return t / 1000 + EB_EPOCH_OFFSET_MS;
}

static inline TimestampTz
from_epoch_ms(int64 ms)
{
	return (ms - EB_EPOCH_OFFSET_MS) * 1000;
}

/* What a failed attempt leads to (delivery_record_failure). */
typedef enum FailureAction
{
	FAILURE_RETRY,				/* retried; after max_retries, on_failure */
	FAILURE_GIVE_UP,			/* on_failure at once */
	FAILURE_SUSPEND				/* the shard is suspended, whatever on_failure says */
} FailureAction;

/* delivery.c: the model */
extern void delivery_drop_batch(Shard *sh);
extern void delivery_create_shards(Connector *c, int nshards);
extern void delivery_remove_connector(Connector *c);
extern int64 delivery_retry_delay_ms(Connector *c, int failures, int64 retry_after_ms);

/* delivery_catalog.c */
extern void delivery_sync_connectors(DeliveryWorker *w);
extern void delivery_skip_records(Shard *sh, int64 last_skipped, int filtered);
extern void delivery_record_outcome(Shard *sh, const HttpOutcome *o);
extern void delivery_record_failure(Shard *sh, const HttpOutcome *o, FailureAction action,
									bool named);
extern void delivery_record_dead_letters(Shard *sh, const HttpOutcome *o, int attempts);
extern void delivery_record_redelivery(Shard *sh, const HttpOutcome *o, int acked,
									   const char *error);
extern void delivery_connector_failed(Connector *c, int64 version, const char *error);

/* delivery_read.c */
extern void delivery_find_records_table(void);
extern void delivery_read_batch(Shard *sh, TimestampTz now);
extern bool delivery_read_redelivery(Shard *sh, TimestampTz now);
extern int	delivery_acknowledged(Shard *sh, const HttpOutcome *o, bool *named,
								  char *why, size_t whylen);

#endif							/* EVENT_BRIDGE_DELIVERY_H */
