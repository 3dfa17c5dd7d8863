/*-------------------------------------------------------------------------
 *
 * format.h
 *	  Event bodies: a batch of records of one shard turned into the JSON
 *	  body of one HTTP POST, in one of the supported event formats.
 *
 * IDENTIFICATION
 *	  src/format.h
 *
 *-------------------------------------------------------------------------
 */
#ifndef EVENT_BRIDGE_FORMAT_H
#define EVENT_BRIDGE_FORMAT_H

#include "postgres.h"

#include "lib/stringinfo.h"

/* The event formats a connector can deliver in (connectors.format). */
typedef enum EbFormat
{
	EB_FORMAT_DATAHUB = 0,		/* Alibaba DataHub -> Function Compute */
	EB_FORMAT_DIS,				/* Huawei FunctionGraph DIS trigger */
	EB_FORMAT_JSON,				/* named events (event.c) */
	EB_FORMAT_CLOUDEVENTS		/* CloudEvents 1.0, structured batch mode (event.c) */
} EbFormat;

/* One record, as a body needs it; the strings belong to the caller. */
typedef struct FormatRecord
{
	int64		sequence;
	int64		system_time;	/* epoch milliseconds */
	const char *partition_key;	/* NULL: the row has no key */
	const char *data;			/* the record's JSON array, as text */
	int64		table_version;	/* -1: none (a record of 0.1) */
} FormatRecord;

/*
 * A batch: consecutive records of one shard, and what the envelope names.
 * now_ms is the sending time, for DIS's millis_behind_latest.
 */
typedef struct FormatBatch
{
	EbFormat	format;
	const char *database;
	const char *stream;
	const char *region;
	int32		shard_id;
	int64		now_ms;
	int			nrecords;
	const FormatRecord *records;
} FormatBatch;

extern bool format_by_name(const char *name, EbFormat *format);
extern void format_body(StringInfo out, const FormatBatch *batch);
extern void format_convert_body(StringInfo out, int start);
extern void format_record_object(StringInfo out, EbFormat format, int32 shard_id,
								 const FormatRecord *r);
/*
 * At most the bytes a record with data and key of these lengths adds to a
 * body of any format: six per byte (a \u escape; base64 of text converted
 * to UTF-8 takes less), and the fixed parts.
 */
#define FORMAT_RECORD_MAX(data_len, key_len) \
	(6 * ((size_t) (data_len) + (size_t) (key_len)) + 128)

extern size_t format_record_size(EbFormat format, int32 shard_id, const FormatRecord *r);
extern size_t format_envelope_max(const FormatBatch *b);
extern void format_append_int64(StringInfo out, int64 v);

#endif							/* EVENT_BRIDGE_FORMAT_H */
