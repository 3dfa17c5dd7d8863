/*-------------------------------------------------------------------------
 *
 * event.h
 *	  Named events: a shard's TUPLE records read with their table version's
 *	  column names and types, as the json and cloudevents formats, connector
 *	  filters and transforms need them.
 *
 * IDENTIFICATION
 *	  src/event.h
 *
 *-------------------------------------------------------------------------
 */
#ifndef EVENT_BRIDGE_EVENT_H
#define EVENT_BRIDGE_EVENT_H

#include "postgres.h"

#include "lib/stringinfo.h"
#include "utils/jsonb.h"

#include "format.h"
#include "rules.h"

/*
 * The largest Kafka message: librdkafka's message.max.bytes, left at its
 * default.  A key_transform stops rendering past it, and librdkafka then
 * refuses the message as too large (a record failure).
 */
#define EB_KAFKA_MESSAGE_MAX	1000000

/*
 * A batch of records to turn into events (batch: consecutive records of one
 * shard, each with its table version), and the connector's rules.
 */
typedef struct EventBatch
{
	FormatBatch batch;
	Jsonb	   *filter;			/* NULL: every event is kept */
	const RuleTransform *transform; /* NULL: ORIGINAL */
	size_t		max_bytes;		/* no body is larger */
	bool		messages;		/* one value per event (Kafka), no envelope: see EventSlice */
	const RuleTransform *key_transform; /* messages: NULL keeps the row's key */
} EventBatch;

/*
 * A message of a batch made with EventBatch.messages: its value is
 * out->data[start .. start + len).  A datahub or dis message is one record
 * (an UPDATE is two), a json or cloudevents one an event.  Strings are
 * allocated in the caller's memory context.
 */
typedef struct EventSlice
{
	int			start;
	int			len;
	int64		sequence;		/* of its (first) record */
	char		op;				/* I, U or D */
	char	   *table;			/* schema.table */
	char	   *key;			/* NULL: none */
} EventSlice;

/* What event_body made of a batch. */
typedef struct EventBody
{
	int			consumed;		/* the first records it is done with */
	int			nevents;		/* events in the body; 0: no body */
	int			nfiltered;		/* records of the consumed ones that the filter left out */
	int64	   *filtered;		/* their sequences */
	EventSlice *slices;			/* messages: one per message */
	int			nslices;
} EventBody;

extern bool event_is_update_before(const FormatRecord *r);
extern void event_body(StringInfo out, const EventBatch *b, EventBody *result);
extern const char *event_content_type(EbFormat format, bool transformed);
extern void event_forget_tables(void);
extern const char *event_op_name(char op);

#endif							/* EVENT_BRIDGE_EVENT_H */
