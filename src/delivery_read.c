/*-------------------------------------------------------------------------
 *
 * delivery_read.c
 *	  Batch reading of the delivery worker: the next records of a shard,
 *	  read straight from the records' primary key, bounded by batch_size and
 *	  by the connector's max_request_bytes, and turned into a request body.
 *
 * IDENTIFICATION
 *	  src/delivery_read.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/detoast.h"
#include "access/genam.h"
#include "access/relscan.h"
#include "access/stratnum.h"
#include "access/table.h"
#include "access/tableam.h"
#include "catalog/namespace.h"
#include "executor/tuptable.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"

#include "delivery.h"

/*
 * event_bridge.records, which batches are read from directly through its
 * primary key (stream_id, shard_id, sequence), and the numbers of the
 * columns a batch needs; find_records_table checks them.
 */
static Oid	records_relid = InvalidOid;
#define RECORDS_NATTS		4
static const char *const records_columns[RECORDS_NATTS] = {
	"sequence", "system_time", "partition_key", "data"
};
static AttrNumber records_attnums[RECORDS_NATTS];

/*
 * Finds event_bridge.records and the columns a batch needs, by name.  Must
 * be called inside a transaction.
 */
void
delivery_find_records_table(void)
{
	Oid			relid = get_relname_relid("records", get_namespace_oid("event_bridge", false));

	if (!OidIsValid(relid))
		elog(ERROR, "event_bridge.records does not exist");
	for (int i = 0; i < RECORDS_NATTS; i++)
	{
		records_attnums[i] = get_attnum(relid, records_columns[i]);
		if (records_attnums[i] == InvalidAttrNumber)
			elog(ERROR, "event_bridge.records has no column \"%s\"", records_columns[i]);
	}
	records_relid = relid;
}

/*
 * Reads up to limit records of a shard whose sequence is in (after, upto],
 * in order, into records; the strings are allocated in the current memory
 * context.  Returns how many it read, and in *bytes the bytes of their data
 * and keys.
 *
 * What it reads is bounded by max_bytes, not by what users insert: it stops
 * after the record whose data and key take the total to max_bytes or more
 * (*full says so), and a record whose data alone is larger is not read at
 * all: its data is NULL and its size in *big_bytes.
 *
 * A plain scan of the primary key under the turn's snapshot, not a
 * statement: a batch is a range of one index, and delivery reads one after
 * every batch, so the executor's per-statement work cost more than the
 * reading.  Measured when it came in (backlog of 200,000, batch_size 100):
 * 4 shards 158k -> 225-243k events/s, delivery CPU 5 -> 3.1-3.8 us per
 * event.  Must be called inside a transaction, with the turn's snapshot
 * active.
 */
static int
read_records(int32 stream_id, int32 shard_id, int64 after, int64 upto, int limit,
			 int64 max_bytes, FormatRecord *records, bool *full, int64 *bytes,
			 int64 *big_bytes)
{
	Relation	rel;
	Relation	index;
	IndexScanDesc scan;
	TupleTableSlot *slot;
	ScanKeyData keys[4];
	int			n = 0;

	*full = false;
	*bytes = 0;

	/* Dropped with the extension: the worker exits at its next check. */
	rel = try_table_open(records_relid, AccessShareLock);
	if (rel == NULL)
		return 0;
	index = index_open(RelationGetPrimaryKeyIndex(rel), AccessShareLock);

	ScanKeyInit(&keys[0], 1, BTEqualStrategyNumber, F_INT4EQ, Int32GetDatum(stream_id));
	ScanKeyInit(&keys[1], 2, BTEqualStrategyNumber, F_INT4EQ, Int32GetDatum(shard_id));
	ScanKeyInit(&keys[2], 3, BTGreaterStrategyNumber, F_INT8GT, Int64GetDatum(after));
	ScanKeyInit(&keys[3], 3, BTLessEqualStrategyNumber, F_INT8LE, Int64GetDatum(upto));
	slot = table_slot_create(rel, NULL);
	scan = index_beginscan(rel, index, GetActiveSnapshot(), lengthof(keys), 0);
	index_rescan(scan, keys, lengthof(keys), NULL, 0);

	while (n < limit && index_getnext_slot(scan, ForwardScanDirection, slot))
	{
		FormatRecord *r = &records[n++];
		bool		isnull;
		Datum		d;
		int64		data_bytes;

		r->sequence = DatumGetInt64(slot_getattr(slot, records_attnums[0], &isnull));
		r->system_time = DatumGetInt64(slot_getattr(slot, records_attnums[1], &isnull));
		d = slot_getattr(slot, records_attnums[2], &isnull);
		r->partition_key = isnull ? NULL : TextDatumGetCString(d);
		*bytes += r->partition_key ? strlen(r->partition_key) : 0;
		d = slot_getattr(slot, records_attnums[3], &isnull);
		data_bytes = toast_raw_datum_size(d) - VARHDRSZ;
		if (data_bytes > max_bytes)
		{
			r->data = NULL;
			*big_bytes = data_bytes;
			*full = true;
			break;
		}
		r->data = TextDatumGetCString(d);
		*bytes += data_bytes;
		if (*bytes >= max_bytes)
		{
			*full = true;
			break;
		}
	}

	index_endscan(scan);
	ExecDropSingleTupleTableSlot(slot);
	index_close(index, AccessShareLock);
	table_close(rel, AccessShareLock);
	return n;
}

/*
 * How many of a batch's first records fit in a body of at most the
 * connector's max_request_bytes; 0 if the first alone does not.  read_bytes,
 * the data and keys that read_records read (the batch's and any skipped
 * before it), bounds the body, so bytes are counted exactly only for a
 * batch that could be too big.
 */
static int
records_that_fit(Connector *c, const FormatBatch *batch, int64 read_bytes)
{
	size_t		room = c->max_request_bytes - Min(format_envelope_max(batch),
												  (size_t) c->max_request_bytes);
	size_t		bound = FORMAT_RECORD_MAX(read_bytes, 0) +
		(size_t) (batch->nrecords - 1) * FORMAT_RECORD_MAX(0, 0);
	size_t		used = 0;

	if (bound <= room && batch->records[batch->nrecords - 1].data != NULL)
		return batch->nrecords;

	for (int i = 0; i < batch->nrecords; i++)
	{
		const FormatRecord *r = &batch->records[i];

		if (r->data == NULL)
			return i;
		used += format_record_size(batch->format, batch->shard_id, r);
		if (used > room)
			return i;
	}
	return batch->nrecords;
}

/*
 * A record too big for any body of its connector: the shard is suspended
 * at once, with an error that says so.  Must be called inside a transaction.
 */
static void
fail_big_record(Shard *sh, const FormatRecord *r, int64 big_bytes, TimestampTz now)
{
	Connector  *c = sh->connector;
	HttpOutcome o;

	memset(&o, 0, sizeof(o));
	o.retry_after_ms = -1;
	snprintf(o.error, sizeof(o.error),
			 "record %d:" INT64_FORMAT " is too big for a request of at most %d bytes (max_request_bytes)%s",
			 sh->shard_id, r->sequence, c->max_request_bytes,
			 r->data == NULL ? psprintf(": its data alone is " INT64_FORMAT " bytes", big_bytes) : "");
	o.started_at = now;
	sh->first_sequence = sh->last_sequence = r->sequence;
	sh->nrecords = 1;
	sh->in_flight = false;
	delivery_record_failure(sh, &o, true);
}

/*
 * Reads the next batch of an idle shard and builds its body.  Leaves the
 * shard idle if there are no records yet, or if the batch window asks to
 * wait for more.  Must be called inside a transaction.
 */
void
delivery_read_batch(Shard *sh, TimestampTz now)
{
	Connector  *c = sh->connector;
	FormatRecord *records;
	FormatBatch batch;
	int			n;
	int			first = 0;
	bool		full;
	int64		read_bytes;
	int64		big_bytes = 0;
	MemoryContext old;

	records = palloc(sizeof(FormatRecord) * c->batch_size);
	n = read_records(c->stream_id, sh->shard_id, sh->delivered_sequence,
					 sh->retry_last >= 0 ? sh->retry_last : PG_INT64_MAX,
					 c->batch_size, c->max_request_bytes, records, &full, &read_bytes,
					 &big_bytes);

	/*
	 * Fewer than asked for, and not for their size: every record there was
	 * (a batch window that holds them back reads again when it ends: see
	 * wants_read).
	 */
	sh->drained = (sh->retry_last < 0 && n < c->batch_size && !full);
	sh->drained_epoch = c->worker->turn_epoch;
	if (n == 0)
		return;

	if (records[0].sequence != sh->delivered_sequence + 1)
		ereport(WARNING,
				(errcode(ERRCODE_DATA_CORRUPTED),
				 errmsg("event_bridge connector \"%s\" shard %d misses records " INT64_FORMAT " to " INT64_FORMAT,
						c->name, sh->shard_id, sh->delivered_sequence + 1, records[0].sequence - 1),
				 errdetail("They were removed before the connector delivered them.")));

	EB_FAULT_ERROR_FOR("read-batch-error", c->name);

	/* Records appended before the start time are skipped, not sent. */
	while (first < n && records[first].system_time < sh->skip_before)
		first++;
	if (first > 0)
	{
		delivery_skip_records(sh, records[first - 1].sequence);
		if (first == n)
		{
			c->worker->turn_again = (n == c->batch_size);
			return;
		}
	}

	/* A batch window waits for a full batch, up to the window's end. */
	if (sh->retry_last < 0 && n - first < c->batch_size && !full && c->batch_window_ms > 0)
	{
		TimestampTz window_end = from_epoch_ms(records[first].system_time + c->batch_window_ms);

		if (now < window_end)
		{
			sh->not_before = window_end;
			return;
		}
	}

	batch.format = c->format;
	batch.database = c->worker->database_name;
	batch.stream = c->stream_name;
	batch.region = eb_region;
	batch.shard_id = sh->shard_id;
	batch.now_ms = epoch_ms(now);
	batch.nrecords = n - first;
	batch.records = records + first;
	batch.nrecords = records_that_fit(c, &batch, read_bytes);
	if (batch.nrecords == 0)
	{
		fail_big_record(sh, &records[first], big_bytes, now);
		return;
	}
	if (batch.nrecords < n - first)
		sh->drained = false;
	n = first + batch.nrecords;

	old = MemoryContextSwitchTo(sh->batch_context);
	initStringInfo(&sh->body);
	MemoryContextSwitchTo(old);
	format_body(&sh->body, &batch);

	sh->has_batch = true;
	sh->first_sequence = records[first].sequence;
	sh->last_sequence = records[n - 1].sequence;
	sh->nrecords = n - first;
	sh->not_before = 0;
}

