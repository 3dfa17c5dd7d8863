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
#include "catalog/pg_type.h"
#include "executor/tuptable.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"

#include "catalog.h"
#include "delivery.h"

/*
 * event_bridge.records, which batches are read from directly through its
 * primary key (stream_id, shard_id, sequence), and the numbers of the
 * columns a batch needs; find_records_table checks them.
 */
static Oid	records_relid = InvalidOid;
#define RECORDS_NATTS		5
static const char *const records_columns[RECORDS_NATTS] = {
	"sequence", "system_time", "partition_key", "data", "table_version"
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
		d = slot_getattr(slot, records_attnums[4], &isnull);
		r->table_version = isnull ? -1 : DatumGetInt64(d);
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
 * The first count records of a batch (records) fail without being sent, a
 * record failure (for the reason in error): on_failure at once.  With
 * 'dead_letter' they become dead letters; with 'suspend' the shard is
 * suspended on the first.  Must be called inside a transaction.
 */
static void
fail_unsent(Shard *sh, const FormatRecord *records, int count, TimestampTz now,
			const char *error)
{
	HttpOutcome o;

	memset(&o, 0, sizeof(o));
	o.retry_after_ms = -1;
	o.started_at = now;
	strlcpy(o.error, error, sizeof(o.error));
	sh->first_sequence = records[0].sequence;
	sh->in_flight = false;
	if (sh->connector->dead_letter)
	{
		sh->last_sequence = records[count - 1].sequence;
		sh->nrecords = count;
		delivery_record_dead_letters(sh, &o, 0);
		return;
	}
	sh->last_sequence = records[0].sequence;
	sh->nrecords = 1;
	delivery_record_failure(sh, &o, FAILURE_GIVE_UP, false);
}

/* A record too big for any body of its connector (see fail_unsent). */
static void
fail_big_record(Shard *sh, const FormatRecord *r, int64 big_bytes, TimestampTz now)
{
	fail_unsent(sh, r, 1, now,
				psprintf("record %d:" INT64_FORMAT " is too big for a request of at most %d bytes (max_request_bytes)%s",
						 sh->shard_id, r->sequence, sh->connector->max_request_bytes,
						 r->data == NULL ?
						 psprintf(": its data alone is " INT64_FORMAT " bytes", big_bytes) : ""));
}

/* Records older than the connector's max_record_age (see fail_unsent). */
static void
fail_old_records(Shard *sh, const FormatRecord *records, int count, TimestampTz now)
{
	fail_unsent(sh, records, count, now,
				psprintf("record %d:" INT64_FORMAT " is older than max_record_age (" INT64_FORMAT " ms): it was appended " INT64_FORMAT " ms ago",
						 sh->shard_id, records[0].sequence, sh->connector->max_record_age_ms,
						 epoch_ms(now) - records[0].system_time));
}

/* Builds in sh->body the body of a batch of named events (event.c). */
static void
build_events(Shard *sh, const FormatBatch *batch, EventBody *result)
{
	Connector  *c = sh->connector;
	EventBatch	b = {0};

	b.batch = *batch;
	b.filter = c->filter;
	b.transform = c->transform;
	b.max_bytes = c->max_request_bytes;
	if (c->target.kind == TARGET_KAFKA)
	{
		/* One message per event; the slices live as long as the batch. */
		MemoryContext old = MemoryContextSwitchTo(sh->batch_context);

		b.messages = true;
		b.key_transform = c->key_transform;
		event_body(&sh->body, &b, result);
		MemoryContextSwitchTo(old);
		sh->slices = result->slices;
		sh->nslices = result->nslices;
		return;
	}
	event_body(&sh->body, &b, result);
}

/*
 * Builds the body of a batch of named events (event.c) in sh->body, and
 * returns how many of the batch's records it holds; the filtered ones among
 * them are kept in the shard.  A batch whose every record the filter left
 * out moves the offset past them at once, with no body.  Must be called
 * inside a transaction.
 */
static int
read_events(Shard *sh, const FormatBatch *batch)
{
	Connector  *c = sh->connector;
	EventBody	result;

	build_events(sh, batch, &result);
	if (result.nevents == 0)
	{
		if (result.consumed > 0)
		{
			delivery_skip_records(sh, batch->records[result.consumed - 1].sequence,
								  result.nfiltered);
			c->worker->turn_again = true;
		}
		return result.consumed;
	}
	sh->nfiltered = result.nfiltered;
	sh->filtered = MemoryContextAlloc(sh->batch_context, sizeof(int64) * Max(result.nfiltered, 1));
	memcpy(sh->filtered, result.filtered, sizeof(int64) * result.nfiltered);
	return result.consumed;
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
	int			limit = c->batch_size;
	int64		upto = sh->retry_last >= 0 ? sh->retry_last : PG_INT64_MAX;
	bool		whole;
	bool		full;
	int64		read_bytes;
	int64		big_bytes = 0;
	MemoryContext old;

	/* A bisection's part: at most bisect_size records of the failed batch. */
	if (sh->bisect_last >= 0)
	{
		limit = Min(limit, sh->bisect_size);
		upto = Min(upto, sh->bisect_last);
	}
	whole = (sh->retry_last < 0 && sh->bisect_last < 0);

	/* One more: an event is not cut from an UPDATE's before image. */
	records = palloc(sizeof(FormatRecord) * (limit + 1));
	n = read_records(c->stream_id, sh->shard_id, sh->delivered_sequence, upto,
					 limit, c->max_request_bytes, records, &full, &read_bytes,
					 &big_bytes);
	if (c->named_events && n > 0 && event_is_update_before(&records[n - 1]))
	{
		bool		more_full;
		int64		more_bytes;

		n += read_records(c->stream_id, sh->shard_id, records[n - 1].sequence, PG_INT64_MAX,
						  1, c->max_request_bytes, &records[n], &more_full, &more_bytes,
						  &big_bytes);
		read_bytes += more_bytes;
	}

	/*
	 * Fewer than asked for, and not for their size: every record there was
	 * (a batch window that holds them back reads again when it ends: see
	 * wants_read).
	 */
	sh->drained = (whole && n < limit && !full);
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
		delivery_skip_records(sh, records[first - 1].sequence, 0);
		if (first == n)
		{
			c->worker->turn_again = (n == limit);
			return;
		}
	}

	/* Records older than max_record_age fail without being sent. */
	if (c->max_record_age_ms >= 0)
	{
		int64		oldest = epoch_ms(now) - c->max_record_age_ms;
		int			old_end = first;

		while (old_end < n && records[old_end].system_time < oldest)
			old_end++;
		if (old_end > first)
		{
			fail_old_records(sh, &records[first], old_end - first, now);
			return;
		}
		/* One behind a younger one (clocks): the batch ends before it. */
		for (int i = first + 1; i < n; i++)
		{
			if (records[i].system_time < oldest)
			{
				n = i;
				sh->drained = false;
				break;
			}
		}
	}

	/* A batch window waits for a full batch, up to the window's end. */
	if (whole && n - first < c->batch_size && !full && c->batch_window_ms > 0)
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
	old = MemoryContextSwitchTo(sh->batch_context);
	initStringInfo(&sh->body);
	MemoryContextSwitchTo(old);
	if (c->named_events)
		batch.nrecords = read_events(sh, &batch);
	else
	{
		batch.nrecords = records_that_fit(c, &batch, read_bytes);
		if (batch.nrecords > 0)
			format_body(&sh->body, &batch);
	}
	if (batch.nrecords == 0 || sh->body.len == 0)
	{
		/* Nothing to send: too big for any body, or every event filtered (read_events). */
		MemoryContextReset(sh->batch_context);
		memset(&sh->body, 0, sizeof(sh->body));
		if (batch.nrecords == 0)
			fail_big_record(sh, &records[first], big_bytes, now);
		return;
	}
	if (batch.nrecords < n - first)
		sh->drained = false;
	n = first + batch.nrecords;

	sh->has_batch = true;
	sh->first_sequence = records[first].sequence;
	sh->last_sequence = records[n - 1].sequence;
	sh->nrecords = n - first;
	if (sh->retry_last < 0 || sh->not_before <= now)
		sh->not_before = 0;		/* else a retry's wait is not over */
}


/*
 * The next dead letters of a shard that redeliver_dead_letters asked to
 * send again, in sequence order: at most batch_size, and only what starts
 * within max_request_bytes, so that a huge dead letter is not read whole.
 */
static EbStatement redelivery_statement = {
	"SELECT x.sequence, x.system_time, x.partition_key, x.data, x.size, x.table_version"
	" FROM (SELECT d.sequence, d.system_time, d.partition_key, d.table_version,"
	" CASE WHEN octet_length(d.data) <= $4 THEN d.data END AS data,"
	" octet_length(d.data) AS size,"
	" sum(octet_length(d.data)) OVER (ORDER BY d.sequence) - octet_length(d.data) AS before"
	" FROM event_bridge.dead_letter_records d"
	" WHERE d.connector_id = $1 AND d.shard_id = $2 AND d.redeliver"
	" ORDER BY d.sequence LIMIT $3) x"
	" WHERE x.before < $4 ORDER BY x.sequence",
	4, {INT4OID, INT4OID, INT4OID, INT4OID}
};

/*
 * Reads dead letters of a shard to send again as a batch of their own.
 * Returns false if there are none (any more).  Must be called inside a
 * transaction.
 */
bool
delivery_read_redelivery(Shard *sh, TimestampTz now)
{
	Connector  *c = sh->connector;
	Datum		values[4];
	FormatRecord *records;
	FormatBatch batch;
	int64		read_bytes = 0;
	uint64		n;
	MemoryContext old;

	values[0] = Int32GetDatum(c->connector_id);
	values[1] = Int32GetDatum(sh->shard_id);
	values[2] = Int32GetDatum(c->batch_size);
	values[3] = Int32GetDatum(c->max_request_bytes);
	n = eb_run(&redelivery_statement, values, NULL);
	if (n == 0)
	{
		sh->redeliver_pending = false;
		return false;
	}

	records = palloc(sizeof(FormatRecord) * n);
	for (uint64 i = 0; i < n; i++)
	{
		FormatRecord *r = &records[i];
		bool		isnull;
		Datum		d;

		r->sequence = DatumGetInt64(eb_result(i, 1, &isnull));
		r->system_time = DatumGetInt64(eb_result(i, 2, &isnull));
		d = eb_result(i, 3, &isnull);
		r->partition_key = isnull ? NULL : TextDatumGetCString(d);
		d = eb_result(i, 4, &isnull);
		r->data = isnull ? NULL : TextDatumGetCString(d);
		read_bytes += DatumGetInt32(eb_result(i, 5, &isnull)) +
			(r->partition_key ? strlen(r->partition_key) : 0);
		d = eb_result(i, 6, &isnull);
		r->table_version = isnull ? -1 : DatumGetInt64(d);
	}

	batch.format = c->format;
	batch.database = c->worker->database_name;
	batch.stream = c->stream_name;
	batch.region = eb_region;
	batch.shard_id = sh->shard_id;
	batch.now_ms = epoch_ms(now);
	batch.nrecords = (int) n;
	batch.records = records;
	old = MemoryContextSwitchTo(sh->batch_context);
	initStringInfo(&sh->body);
	MemoryContextSwitchTo(old);
	if (c->named_events)
	{
		EventBody	result;

		/* Those the filter leaves out are done with when the batch is. */
		build_events(sh, &batch, &result);
		batch.nrecords = result.consumed;
	}
	else
	{
		batch.nrecords = records_that_fit(c, &batch, read_bytes);
		if (batch.nrecords > 0)
			format_body(&sh->body, &batch);
	}

	/* The batch in hand; a first record too big for any body is alone in it. */
	sh->redelivery = true;
	sh->nrecords = Max(batch.nrecords, 1);
	sh->sequences = MemoryContextAlloc(sh->batch_context, sizeof(int64) * sh->nrecords);
	for (int i = 0; i < sh->nrecords; i++)
		sh->sequences[i] = records[i].sequence;
	sh->first_sequence = records[0].sequence;
	sh->last_sequence = records[sh->nrecords - 1].sequence;
	if (batch.nrecords == 0)
	{
		HttpOutcome o;

		/* Too big for any body of the connector: it stays a dead letter. */
		memset(&o, 0, sizeof(o));
		snprintf(o.error, sizeof(o.error),
				 "record %d:" INT64_FORMAT " is too big for a request of at most %d bytes (max_request_bytes)",
				 sh->shard_id, records[0].sequence, c->max_request_bytes);
		delivery_record_redelivery(sh, &o, 0, o.error);
		return true;
	}
	if (sh->body.len == 0)
	{
		HttpOutcome o;

		/* The filter left every one out: they are done with. */
		memset(&o, 0, sizeof(o));
		delivery_record_redelivery(sh, &o, sh->nrecords, "");
		return true;
	}
	sh->has_batch = true;
	sh->not_before = 0;
	return true;
}
