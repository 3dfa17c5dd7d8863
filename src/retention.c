/*-------------------------------------------------------------------------
 *
 * retention.c
 *	  Removes records that are older than their stream's retention and that
 *	  every connector of the stream has delivered.
 *
 * The delivery worker calls this between its turns, at most once per
 * event_bridge.cleanup_interval (eb_maintenance), and an error here is
 * logged and does not stop it.  Records go in small batches, each its own
 * transaction, oldest first along each shard, so there is never a DELETE
 * storm and autovacuum keeps the table's size steady.  The shards' sequence
 * counters live in event_bridge.shards and are untouched: sequences keep
 * counting after cleanup.
 *
 * The same pass drops the replication origins of databases that no longer
 * exist (DROP DATABASE drops a database's slot, not its origins, which are
 * cluster-wide and count against max_replication_slots).
 *
 * IDENTIFICATION
 *	  src/retention.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "miscadmin.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "replication/origin.h"
#include "utils/builtins.h"
#include "pgstat.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "catalog.h"
#include "event_bridge.h"

/* Records deleted per transaction, and the time one pass may take. */
#define EB_TRIM_BATCH		5000
#define EB_TRIM_PASS_MS		500

/*
 * One batch from the oldest end of a shard: records appended before the
 * cutoff (epoch ms), delivered by every connector of the stream.
 */
static EbStatement trim_batch = {
	"WITH lo AS ("
	"  SELECT min(sequence) AS lo FROM event_bridge.records"
	"   WHERE stream_id = $1 AND shard_id = $2),"
	" needed AS ("
	"  SELECT min(cs.delivered_sequence) AS delivered"
	"    FROM event_bridge.connector_shards cs"
	"    JOIN event_bridge.connectors c USING (connector_id)"
	"   WHERE c.stream_id = $1 AND cs.shard_id = $2)"
	" DELETE FROM event_bridge.records r USING lo, needed"
	"  WHERE r.stream_id = $1 AND r.shard_id = $2"
	"    AND r.sequence >= lo.lo AND r.sequence < lo.lo + $4"
	"    AND r.system_time < $3"
	"    AND (needed.delivered IS NULL OR r.sequence <= needed.delivered)",
	4, {INT4OID, INT4OID, INT8OID, INT8OID}
};

/* Every shard that has records, with the cutoff of its stream's retention. */
static EbStatement list_shards = {
	"SELECT h.stream_id, h.shard_id,"
	"       (extract(epoch FROM now() - s.retention) * 1000)::bigint"
	"  FROM event_bridge.shards h JOIN event_bridge.streams s USING (stream_id)"
	" WHERE h.next_sequence > 0", 0
};

/* The replication origins of databases that no longer exist. */
static EbStatement list_orphan_origins = {
	"SELECT roname FROM pg_catalog.pg_replication_origin"
	" WHERE roname ~ '^event_bridge_(capture|delivery)_[0-9]+$'"
	"   AND substring(roname FROM '[0-9]+$')::oid"
	"       NOT IN (SELECT oid FROM pg_catalog.pg_database)", 0
};

/*
 * Deletes one batch from the oldest end of a shard (trim_batch).  Returns
 * the number of records deleted.  Must be called inside a transaction,
 * connected to SPI.
 */
static uint64
trim_shard_batch(int32 stream_id, int32 shard_id, int64 cutoff_ms)
{
	Datum		values[4];

	values[0] = Int32GetDatum(stream_id);
	values[1] = Int32GetDatum(shard_id);
	values[2] = Int64GetDatum(cutoff_ms);
	values[3] = Int64GetDatum(EB_TRIM_BATCH);
	return eb_run(&trim_batch, values, NULL);
}

/* Lists (stream_id, shard_id, cutoff) of every shard that has records. */
static List *
shards_to_trim(void)
{
	List	   *result = NIL;
	MemoryContext caller = CurrentMemoryContext;
	uint64		n;

	eb_worker_xact_begin();
	n = eb_run(&list_shards, NULL, NULL);
	for (uint64 i = 0; i < n; i++)
	{
		bool		isnull;
		MemoryContext old = MemoryContextSwitchTo(caller);
		int64	   *item = palloc(sizeof(int64) * 3);

		item[0] = DatumGetInt32(eb_result(i, 1, &isnull));
		item[1] = DatumGetInt32(eb_result(i, 2, &isnull));
		item[2] = DatumGetInt64(eb_result(i, 3, &isnull));
		result = lappend(result, item);
		MemoryContextSwitchTo(old);
	}
	eb_worker_xact_commit();
	return result;
}

/*
 * The maintenance step of the delivery worker: a retention pass and the
 * cleanup of orphan origins, each in transactions of its own.  An error is
 * logged and the worker goes on: maintenance never stops delivery, and the
 * next pass tries again.  Must be called outside a transaction.
 */
void
eb_maintenance(void)
{
	MemoryContext caller = CurrentMemoryContext;

	PG_TRY();
	{
		EB_FAULT_ERROR("maintenance-error");
		eb_trim_records();
		eb_drop_orphan_origins();
	}
	PG_CATCH();
	{
		HOLD_INTERRUPTS();
		MemoryContextSwitchTo(caller);
		EmitErrorReport();
		AbortOutOfAnyTransaction();
		FlushErrorState();
		RESUME_INTERRUPTS();
	}
	PG_END_TRY();
}

/*
 * One cleanup pass over every shard, bounded in time.  Runs its own
 * transactions; must be called outside a transaction.
 */
void
eb_trim_records(void)
{
	TimestampTz start = GetCurrentTimestamp();
	List	   *shards = shards_to_trim();
	ListCell   *lc;

	foreach(lc, shards)
	{
		int64	   *item = (int64 *) lfirst(lc);
		uint64		deleted;

		do
		{
			eb_worker_xact_begin();
			deleted = trim_shard_batch((int32) item[0], (int32) item[1], item[2]);
			eb_worker_xact_commit();
			pgstat_report_stat(false);
			if (TimestampDifferenceExceeds(start, GetCurrentTimestamp(), EB_TRIM_PASS_MS))
				return;
		} while (deleted == EB_TRIM_BATCH);
	}
	list_free_deep(shards);
}

/*
 * Drops the replication origins of databases that no longer exist.  Runs its
 * own transaction; must be called outside a transaction.
 */
void
eb_drop_orphan_origins(void)
{
	List	   *orphans = NIL;
	ListCell   *lc;
	uint64		n;

	eb_worker_xact_begin();
	n = eb_run(&list_orphan_origins, NULL, NULL);
	for (uint64 i = 0; i < n; i++)
		orphans = lappend(orphans, SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1));
	/* The names live in SPI's memory: drop before SPI_finish. */
	foreach(lc, orphans)
	{
		replorigin_drop_by_name((char *) lfirst(lc), true, true);
		ereport(LOG, (errmsg("event_bridge dropped replication origin \"%s\" of a dropped database",
							 (char *) lfirst(lc))));
	}
	eb_worker_xact_commit();
}
