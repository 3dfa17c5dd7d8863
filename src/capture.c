/*-------------------------------------------------------------------------
 *
 * capture.c
 *	  The capture worker: one per database, it decodes the WAL through its
 *	  own logical decoding context and appends the records the output plugin
 *	  produces to event_bridge.records.
 *
 * Exactly once: the worker's transactions run under a replication origin.
 * Each flush commits the records, the shards' sequence counters and the
 * origin's position (the end of the last WAL record decoded) atomically;
 * only then is the slot's confirmed position advanced.  After a crash,
 * decoding resumes at the origin's position, so every committed change is
 * appended once.  The origin also keeps the worker's own writes out of the
 * decoder.
 *
 * Pending records: records decoded but not yet flushed, kept in memory and
 * spilled to a temporary file beyond event_bridge.capture_buffer_kb, so a
 * huge transaction needs no more memory than that.
 *
 * IDENTIFICATION
 *	  src/capture.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/heapam.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "access/xlog.h"
#include "access/xlogreader.h"
#include "access/xlogutils.h"
#include "catalog/namespace.h"
#include "catalog/pg_extension.h"
#include "commands/extension.h"
#include "executor/executor.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "replication/decode.h"
#include "replication/logical.h"
#include "replication/origin.h"
#include "replication/slot.h"
#include "storage/buffile.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/proc.h"
#include "tcop/tcopprot.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/resowner.h"
#include "utils/snapmgr.h"

#include "capture.h"
#include "event_bridge.h"

/* How a pending record is laid out: this header, then the three strings. */
typedef struct PendingHeader
{
	int32		stream_id;
	int32		shard_id;
	int64		sequence;
	int64		record_id;
	char		operation;
	int32		table_len;
	int32		key_len;		/* -1: no key */
	int32		data_len;
} PendingHeader;

/* Records per table_multi_insert call. */
#define EB_INSERT_BATCH		1000

/* Flush at least this often while WAL keeps coming, for latency. */
#define EB_FLUSH_INTERVAL_MS	100

/*
 * A round (read all flushed WAL, store, sleep; see wait_for_wal()) starts at
 * most this often: a flush costs about the same for one record as for
 * thousands, so under many small transactions this turns dozens of flushes
 * into one, while a change after a quiet spell is stored at once.
 */
#define EB_ROUND_INTERVAL_MS	10

static MemoryContext capture_context = NULL;
static List *streams = NIL;
static int64 next_record_id = 1;
static bool state_dirty = false;	/* something to store besides records */

static StringInfoData pending;
static BufFile *spill = NULL;
static int64 pending_count = 0;
static TimestampTz pending_since = 0;
static TimestampTz round_start = 0;	/* see wait_for_wal() */

/* The end of the last record decoded: what the next flush stores and confirms. */
static XLogRecPtr decoded_upto = InvalidXLogRecPtr;

/* For the periodic work done while waiting for WAL. */
static char my_slot_name[NAMEDATALEN];
static TimestampTz last_check = 0;
static TimestampTz last_cleanup = 0;

/*
 * Tuple slots for multi-inserts, made on first need and kept for the
 * worker's life: virtual slots over a private copy of the records table's
 * descriptor, so that they hold no pin across transactions.
 */
static TupleTableSlot *insert_slots[EB_INSERT_BATCH];
static int	insert_slots_made = 0;
static TupleDesc insert_desc = NULL;

/* A decoded transaction changed the catalogs since the last flush. */
static bool catalog_changed = true;
static Oid	extension_oid = InvalidOid;
static Oid	records_relid = InvalidOid;
static EbDatabase *my_db = NULL;

/* ---------------------------------------------------------------------
 * Stream state, called by the output plugin
 * ------------------------------------------------------------------- */

static CaptureStream *
find_stream(int32 stream_id)
{
	ListCell   *lc;

	foreach(lc, streams)
	{
		CaptureStream *s = (CaptureStream *) lfirst(lc);

		if (s->stream_id == stream_id)
			return s;
	}
	return NULL;
}

/* The streams that capture a relation, in a list the caller owns. */
List *
capture_streams_for_relation(Oid relid)
{
	List	   *result = NIL;
	ListCell   *lc;

	foreach(lc, streams)
	{
		CaptureStream *s = (CaptureStream *) lfirst(lc);

		if (s->removed)
			continue;
		for (int i = 0; i < s->nrelids; i++)
			if (s->relids[i] == relid)
				result = lappend(result, s);
	}
	return result;
}

static CaptureStream *
new_stream(int32 stream_id, int32 shard_count, bool before_images,
		   int nrelids, Oid *relids)
{
	MemoryContext old = MemoryContextSwitchTo(capture_context);
	CaptureStream *s = palloc0(sizeof(CaptureStream));

	s->stream_id = stream_id;
	s->shard_count = shard_count;
	s->before_images = before_images;
	s->nrelids = nrelids;
	s->relids = palloc(sizeof(Oid) * Max(nrelids, 1));
	memcpy(s->relids, relids, sizeof(Oid) * nrelids);
	s->next_sequence = palloc0(sizeof(int64) * shard_count);
	s->shard_dirty = palloc0(sizeof(bool) * shard_count);
	streams = lappend(streams, s);
	MemoryContextSwitchTo(old);
	eb_streams_generation++;
	return s;
}

/* A stream's creation was decoded: it captures from the next change on. */
void
capture_add_stream(int32 stream_id, int32 shard_count, bool before_images,
				   int nrelids, Oid *relids, XLogRecPtr lsn)
{
	CaptureStream *s;

	if (find_stream(stream_id) != NULL)
		return;
	s = new_stream(stream_id, shard_count, before_images, nrelids, relids);
	s->activated_lsn = lsn;
	state_dirty = true;
}

/*
 * A row of event_bridge.shards was decoded (create_stream writes 0, a
 * restore from pg_dump writes the dumped counters): a shard's sequence never
 * goes back, so take the larger.
 */
void
capture_restore_sequence(int32 stream_id, int32 shard_id, int64 next_sequence)
{
	CaptureStream *s = find_stream(stream_id);

	if (s == NULL || s->removed || shard_id < 0 || shard_id >= s->shard_count ||
		next_sequence <= s->next_sequence[shard_id])
		return;
	s->next_sequence[shard_id] = next_sequence;
	s->shard_dirty[shard_id] = true;
	state_dirty = true;
}

/*
 * A change of a stream's tables was decoded (a captured table was dropped):
 * from the next change on, it captures these.
 */
void
capture_set_stream_tables(int32 stream_id, int nrelids, Oid *relids)
{
	CaptureStream *s = find_stream(stream_id);
	MemoryContext old;

	if (s == NULL || s->removed)
		return;
	old = MemoryContextSwitchTo(capture_context);
	pfree(s->relids);
	s->relids = palloc(sizeof(Oid) * Max(nrelids, 1));
	memcpy(s->relids, relids, sizeof(Oid) * nrelids);
	s->nrelids = nrelids;
	MemoryContextSwitchTo(old);
	eb_streams_generation++;
}

/* A stream's drop was decoded: it captures nothing more. */
void
capture_remove_stream(int32 stream_id)
{
	CaptureStream *s = find_stream(stream_id);

	if (s == NULL)
		return;
	s->removed = true;
	state_dirty = true;
	eb_streams_generation++;
}

/* A decoded transaction changed the catalogs (DDL). */
void
capture_catalog_changed(void)
{
	catalog_changed = true;
}

int64
capture_next_record_id(void)
{
	state_dirty = true;
	return next_record_id++;
}

static void
spill_pending(void)
{
	MemoryContext old = MemoryContextSwitchTo(capture_context);

	if (spill == NULL)
		spill = BufFileCreateTemp(true);
	BufFileWrite(spill, pending.data, pending.len);
	resetStringInfo(&pending);
	MemoryContextSwitchTo(old);
}

/* Queues one record; called by the plugin in commit order. */
void
capture_append(CaptureStream *stream, int32 shard_id, int64 record_id,
			   char operation, const char *table_name,
			   const char *key, int keylen, const char *data, int datalen)
{
	PendingHeader h;

	h.stream_id = stream->stream_id;
	h.shard_id = shard_id;
	h.sequence = stream->next_sequence[shard_id]++;
	h.record_id = record_id;
	h.operation = operation;
	h.table_len = strlen(table_name);
	h.key_len = key ? keylen : -1;
	h.data_len = datalen;
	stream->shard_dirty[shard_id] = true;

	appendBinaryStringInfo(&pending, (char *) &h, sizeof(h));
	appendBinaryStringInfo(&pending, table_name, h.table_len);
	if (key)
		appendBinaryStringInfo(&pending, key, keylen);
	appendBinaryStringInfo(&pending, data, datalen);

	if (pending_count++ == 0)
		pending_since = GetCurrentTimestamp();
	if (pending.len >= eb_capture_buffer_kb * 1024L)
		spill_pending();
}

/* ---------------------------------------------------------------------
 * Flushing pending records to storage
 * ------------------------------------------------------------------- */

/* Inserts the records described by some slots, and their index entries. */
static void
insert_batch(Relation rel, ResultRelInfo *rri, EState *estate,
			 TupleTableSlot **slots, int n, BulkInsertState bistate)
{
	table_multi_insert(rel, slots, n, GetCurrentCommandId(true), 0, bistate);
	for (int i = 0; i < n; i++)
	{
		List	   *recheck;

		recheck = ExecInsertIndexTuples(rri, slots[i], estate, false, false, NULL, NIL);
		list_free(recheck);
		ResetPerTupleExprContext(estate);
		ExecClearTuple(slots[i]);
	}
}

/*
 * Reads the next pending record into buf (header first), from the spill file
 * and then from memory.  Returns false when there are no more.
 */
static bool
next_pending(StringInfo buf, size_t *mem_offset)
{
	PendingHeader h;
	size_t		payload;

	resetStringInfo(buf);
	if (spill != NULL)
	{
		size_t		got = BufFileRead(spill, &h, sizeof(h));

		if (got == sizeof(h))
		{
			payload = h.table_len + Max(h.key_len, 0) + h.data_len;
			appendBinaryStringInfo(buf, (char *) &h, sizeof(h));
			enlargeStringInfo(buf, payload);
			if (BufFileRead(spill, buf->data + buf->len, payload) != payload)
				elog(ERROR, "could not read event_bridge spill file");
			buf->len += payload;
			return true;
		}
		if (got != 0)
			elog(ERROR, "could not read event_bridge spill file");
	}
	if (*mem_offset >= (size_t) pending.len)
		return false;
	memcpy(&h, pending.data + *mem_offset, sizeof(h));
	payload = sizeof(h) + h.table_len + Max(h.key_len, 0) + h.data_len;
	appendBinaryStringInfo(buf, pending.data + *mem_offset, payload);
	*mem_offset += payload;
	return true;
}

static void
insert_pending(int64 system_time)
{
	Relation	rel = table_open(records_relid, RowExclusiveLock);
	EState	   *estate = CreateExecutorState();
	ResultRelInfo *rri = makeNode(ResultRelInfo);
	BulkInsertState bistate = GetBulkInsertState();
	TupleTableSlot **slots = insert_slots;
	MemoryContext batch_context;
	MemoryContext old;
	StringInfoData buf;
	size_t		mem_offset = 0;
	int			n = 0;

	InitResultRelInfo(rri, rel, 1, NULL, 0);
	ExecOpenIndices(rri, false);
	if (insert_desc == NULL)
	{
		MemoryContext old_context = MemoryContextSwitchTo(capture_context);

		insert_desc = CreateTupleDescCopy(RelationGetDescr(rel));
		MemoryContextSwitchTo(old_context);
	}
	batch_context = AllocSetContextCreate(CurrentMemoryContext, "event_bridge insert batch",
										  ALLOCSET_DEFAULT_SIZES);
	initStringInfo(&buf);
	if (spill != NULL && BufFileSeek(spill, 0, 0, SEEK_SET) != 0)
		elog(ERROR, "could not rewind event_bridge spill file");

	old = MemoryContextSwitchTo(batch_context);
	for (;;)
	{
		PendingHeader h;
		const char *p;
		TupleTableSlot *slot;
		CaptureStream *s;
		bool		more;

		MemoryContextSwitchTo(old);
		more = next_pending(&buf, &mem_offset);
		MemoryContextSwitchTo(batch_context);
		if (!more)
			break;

		memcpy(&h, buf.data, sizeof(h));
		s = find_stream(h.stream_id);
		if (s == NULL || s->removed)
			continue;

		p = buf.data + sizeof(h);
		if (n == insert_slots_made)
		{
			MemoryContext old_context = MemoryContextSwitchTo(capture_context);

			insert_slots[insert_slots_made++] =
				MakeSingleTupleTableSlot(insert_desc, &TTSOpsVirtual);
			MemoryContextSwitchTo(old_context);
		}
		slot = slots[n];
		ExecClearTuple(slot);
		slot->tts_values[0] = Int32GetDatum(h.stream_id);
		slot->tts_values[1] = Int32GetDatum(h.shard_id);
		slot->tts_values[2] = Int64GetDatum(h.sequence);
		slot->tts_values[3] = Int64GetDatum(system_time);
		slot->tts_values[4] = Int64GetDatum(h.record_id);
		slot->tts_values[5] = CharGetDatum(h.operation);
		slot->tts_values[6] = PointerGetDatum(cstring_to_text_with_len(p, h.table_len));
		p += h.table_len;
		if (h.key_len >= 0)
		{
			slot->tts_values[7] = PointerGetDatum(cstring_to_text_with_len(p, h.key_len));
			p += h.key_len;
		}
		slot->tts_values[8] = PointerGetDatum(cstring_to_text_with_len(p, h.data_len));
		memset(slot->tts_isnull, 0, sizeof(bool) * 9);
		slot->tts_isnull[7] = (h.key_len < 0);
		ExecStoreVirtualTuple(slot);

		if (++n == EB_INSERT_BATCH)
		{
			insert_batch(rel, rri, estate, slots, n, bistate);
			n = 0;
			MemoryContextReset(batch_context);
		}
	}
	if (n > 0)
		insert_batch(rel, rri, estate, slots, n, bistate);
	MemoryContextSwitchTo(old);

	MemoryContextDelete(batch_context);
	FreeBulkInsertState(bistate);
	table_finish_bulk_insert(rel, 0);
	ExecCloseIndices(rri);
	FreeExecutorState(estate);
	table_close(rel, NoLock);
	pfree(buf.data);
}

/*
 * Stores the shards' counters, the record id and newly decoded streams.
 * The counters and the record id go in one statement: a flush under many
 * small transactions costs mostly per statement.
 */
static void
store_state(void)
{
	static SPIPlanPtr update_state = NULL;
	ListCell   *lc;
	int			nshards = 0;
	int			ndirty = 0;
	Datum	   *stream_ids;
	Datum	   *shard_ids;
	Datum	   *next_sequences;
	Datum		values[4];

	if (update_state == NULL)
	{
		Oid			argtypes[4] = {INT4ARRAYOID, INT4ARRAYOID, INT8ARRAYOID, INT8OID};

		/*
		 * A generic plan: with arrays for parameters, the plan cache would
		 * otherwise plan each execution anew.  Whatever join it picks suits
		 * a table of one row per shard.  (Not for statements on tables that
		 * start empty and grow: a plan made while one is empty scans it
		 * whole ever after.)
		 */
		update_state = SPI_prepare_cursor("WITH s AS (UPDATE event_bridge.shards s SET next_sequence = d.next_sequence"
										  "   FROM unnest($1, $2, $3) AS d(stream_id, shard_id, next_sequence)"
										  "  WHERE s.stream_id = d.stream_id AND s.shard_id = d.shard_id)"
										  " UPDATE event_bridge.capture_state SET next_record_id = $4",
										  4, argtypes, CURSOR_OPT_GENERIC_PLAN);
		if (update_state == NULL || SPI_keepplan(update_state) != 0)
			elog(ERROR, "could not prepare event_bridge capture state update");
	}

	foreach(lc, streams)
		nshards += ((CaptureStream *) lfirst(lc))->shard_count;
	stream_ids = palloc(sizeof(Datum) * Max(nshards, 1));
	shard_ids = palloc(sizeof(Datum) * Max(nshards, 1));
	next_sequences = palloc(sizeof(Datum) * Max(nshards, 1));

	foreach(lc, streams)
	{
		CaptureStream *s = (CaptureStream *) lfirst(lc);

		if (s->removed)
			continue;
		for (int i = 0; i < s->shard_count; i++)
		{
			if (!s->shard_dirty[i])
				continue;
			stream_ids[ndirty] = Int32GetDatum(s->stream_id);
			shard_ids[ndirty] = Int32GetDatum(i);
			next_sequences[ndirty] = Int64GetDatum(s->next_sequence[i]);
			ndirty++;
		}
		if (s->activated_lsn != InvalidXLogRecPtr)
		{
			char	   *sql = psprintf("UPDATE event_bridge.streams SET capture_lsn = '%X/%X' "
									   "WHERE stream_id = %d",
									   LSN_FORMAT_ARGS(s->activated_lsn), s->stream_id);

			if (SPI_execute(sql, false, 0) != SPI_OK_UPDATE)
				elog(ERROR, "could not update event_bridge stream");
		}
	}

	values[0] = PointerGetDatum(construct_array(stream_ids, ndirty, INT4OID, sizeof(int32), true, TYPALIGN_INT));
	values[1] = PointerGetDatum(construct_array(shard_ids, ndirty, INT4OID, sizeof(int32), true, TYPALIGN_INT));
	values[2] = PointerGetDatum(construct_array(next_sequences, ndirty, INT8OID, sizeof(int64), FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
	values[3] = Int64GetDatum(next_record_id);
	if (SPI_execute_plan(update_state, values, NULL, false, 0) != SPI_OK_UPDATE)
		elog(ERROR, "could not update event_bridge capture state");
}

/* Forgets what a committed flush made durable. */
static void
reset_after_flush(void)
{
	ListCell   *lc;
	List	   *kept = NIL;

	foreach(lc, streams)
	{
		CaptureStream *s = (CaptureStream *) lfirst(lc);

		if (s->removed)
		{
			/*
			 * Its records are discarded and no routing list points here any
			 * more: removing it bumped eb_streams_generation, so every
			 * relation's list is rebuilt before it is used again.
			 */
			pfree(s->relids);
			pfree(s->next_sequence);
			pfree(s->shard_dirty);
			pfree(s);
			continue;
		}
		memset(s->shard_dirty, 0, sizeof(bool) * s->shard_count);
		s->activated_lsn = InvalidXLogRecPtr;
		kept = lappend(kept, s);
	}
	list_free(streams);
	streams = kept;
	resetStringInfo(&pending);
	if (spill != NULL)
	{
		BufFileClose(spill);
		spill = NULL;
	}
	pending_count = 0;
	state_dirty = false;
}

/*
 * Sets or clears this process's PROC_IN_LOGICAL_DECODING flag.  Snapshots of
 * other backends leave out the transactions of a process with the flag set,
 * as if they had ended: a reader of event_bridge.records would then take a
 * flush that is still running for an aborted one and mark its rows invalid
 * for good (HEAP_XMIN_INVALID).  So the flag is off while a flush writes.
 */
static void
set_in_logical_decoding(bool on)
{
	LWLockAcquire(ProcArrayLock, LW_EXCLUSIVE);
	if (on)
		MyProc->statusFlags |= PROC_IN_LOGICAL_DECODING;
	else
		MyProc->statusFlags &= ~PROC_IN_LOGICAL_DECODING;
	ProcGlobal->statusFlags[MyProc->pgxactoff] = MyProc->statusFlags;
	LWLockRelease(ProcArrayLock);
}

/*
 * Appends the pending records and the capture state in one transaction that
 * also moves the origin to upto, then lets the slot advance to upto.
 */
static void
flush(XLogRecPtr upto)
{
	int64		now_ms;
	bool		decoding = (MyProc->statusFlags & PROC_IN_LOGICAL_DECODING) != 0;
	bool		invalidate = catalog_changed;

	/*
	 * Caches filled while decoding hold catalog rows as of the decoded past,
	 * and this transaction's fill them as of now: they differ only where a
	 * catalog changed in between, so they are thrown away only then.
	 */
	if (invalidate)
		InvalidateSystemCaches();
	if (decoding)
		set_in_logical_decoding(false);
	eb_worker_xact_begin();

	now_ms = (GetCurrentTimestamp() / 1000) +
		((int64) (POSTGRES_EPOCH_JDATE - UNIX_EPOCH_JDATE) * SECS_PER_DAY * 1000);
	if (pending_count > 0)
		insert_pending(now_ms);
	store_state();

	replorigin_session_origin_lsn = upto;
	replorigin_session_origin_timestamp = GetCurrentTimestamp();
	EB_FAULT_POINT("capture-before-commit");

	eb_worker_xact_commit();
	if (decoding)
		set_in_logical_decoding(true);
	pgstat_report_stat(false);
	if (invalidate)
	{
		InvalidateSystemCaches();
		catalog_changed = false;
	}

	EB_FAULT_POINT("capture-after-commit");
	reset_after_flush();
	LogicalConfirmReceivedLocation(upto);
	pg_atomic_fetch_add_u32(&my_db->records_epoch, 1);
	eb_wake_worker(&my_db->workers[EB_WORKER_DELIVERY]);
}

/* ---------------------------------------------------------------------
 * The worker
 * ------------------------------------------------------------------- */

static void exit_if_extension_dropped(const char *slot_name, bool holding_slot);

/*
 * Called by the WAL reader when the WAL it needs is not flushed yet, so all
 * flushed WAL is decoded: stores the pending records, does the periodic
 * work, and sleeps.  Waiting here rather than returning to the worker's loop
 * keeps the reader's open segment and page across waits.
 *
 * The worker works in rounds: read all flushed WAL, store what it held,
 * sleep.  A round starts at most every EB_ROUND_INTERVAL_MS.  Before that, the
 * worker sleeps without being woken by commits; after it, committing
 * backends wake it (the first to find wal_pending at 0 sets it to 1 and the
 * latch).  Under a stream of small transactions the worker so reads and
 * stores many in one round instead of waking for each, and the first change
 * after a quiet spell is stored at once.
 */
static void
wait_for_wal(XLogRecPtr needed)
{
	TimestampTz now = GetCurrentTimestamp();
	TimestampTz next_round = TimestampTzPlusMilliseconds(round_start, EB_ROUND_INTERVAL_MS);
	long		wait_ms;

	if (pending_count > 0 || state_dirty)
		flush(decoded_upto);
	else if (decoded_upto > MyReplicationSlot->data.confirmed_flush)
		LogicalConfirmReceivedLocation(decoded_upto);

	if (TimestampDifferenceExceeds(last_check, now, 1000))
	{
		exit_if_extension_dropped(my_slot_name, true);
		last_check = now;
	}
	if (TimestampDifferenceExceeds(last_cleanup, now, eb_cleanup_interval_ms))
	{
		set_in_logical_decoding(false);		/* it writes, see flush() */
		eb_trim_records();
		eb_drop_orphan_origins();
		set_in_logical_decoding(true);
		last_cleanup = GetCurrentTimestamp();
	}

	now = GetCurrentTimestamp();
	if (now < next_round)
		wait_ms = Max(1, (next_round - now + 999) / 1000);
	else
	{
		pg_atomic_write_u32(&my_db->wal_pending, 0);
		wait_ms = (GetFlushRecPtr(NULL) < needed) ? 1000L : 0;
	}
	if (wait_ms > 0)
	{
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 wait_ms, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
	}
	if (GetFlushRecPtr(NULL) >= needed)
		round_start = GetCurrentTimestamp();
	CHECK_FOR_INTERRUPTS();
	if (ConfigReloadPending)
	{
		ConfigReloadPending = false;
		ProcessConfigFile(PGC_SIGHUP);
	}
}

/* Reads a WAL page once it is flushed far enough, waiting (as above) until then. */
static int
page_read(XLogReaderState *state, XLogRecPtr targetPagePtr, int reqLen,
		  XLogRecPtr targetRecPtr, char *cur_page)
{
	while (targetPagePtr + reqLen > GetFlushRecPtr(NULL))
		wait_for_wal(targetPagePtr + reqLen);
	return read_local_xlog_page(state, targetPagePtr, reqLen, targetRecPtr, cur_page);
}

static void
prepare_write(LogicalDecodingContext *ctx, XLogRecPtr lsn, TransactionId xid, bool last_write)
{
}

static void
do_write(LogicalDecodingContext *ctx, XLogRecPtr lsn, TransactionId xid, bool last_write)
{
}

/* Creates the database's slot; its start point is consistent once this returns. */
static void
create_slot(const char *name)
{
	LogicalDecodingContext *ctx;

	CheckLogicalDecodingRequirements();
	ReplicationSlotCreate(name, true, RS_EPHEMERAL, false);
	ctx = CreateInitDecodingContext("event_bridge", NIL, false, InvalidXLogRecPtr,
									XL_ROUTINE(.page_read = read_local_xlog_page,
											   .segment_open = wal_segment_open,
											   .segment_close = wal_segment_close),
									NULL, NULL, NULL);
	DecodingContextFindStartpoint(ctx);
	FreeDecodingContext(ctx);
	ReplicationSlotPersist();
	ReplicationSlotRelease();
	ereport(LOG, (errmsg("event_bridge created replication slot \"%s\"", name)));
}

static RepOriginId
origin_by_name(const char *name)
{
	RepOriginId id = replorigin_by_name(name, true);

	if (id == InvalidRepOriginId)
		id = replorigin_create(name);
	return id;
}

/* Loads the streams whose creation has been captured, and the counters. */
static void
load_state(void)
{
	uint64		n;

	if (SPI_execute("SELECT stream_id, tables, shard_count, before_images "
					"FROM event_bridge.streams WHERE capture_lsn IS NOT NULL", true, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not read event_bridge streams");
	n = SPI_processed;
	for (uint64 i = 0; i < n; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull;
		Datum	   *elems;
		int			nelems;
		Oid		   *relids;
		ArrayType  *arr;

		arr = DatumGetArrayTypeP(SPI_getbinval(tup, desc, 2, &isnull));
		deconstruct_array(arr, REGCLASSOID, sizeof(Oid), true, TYPALIGN_INT, &elems, NULL, &nelems);
		relids = palloc(sizeof(Oid) * nelems);
		for (int j = 0; j < nelems; j++)
			relids[j] = DatumGetObjectId(elems[j]);
		new_stream(DatumGetInt32(SPI_getbinval(tup, desc, 1, &isnull)),
				   DatumGetInt32(SPI_getbinval(tup, desc, 3, &isnull)),
				   DatumGetBool(SPI_getbinval(tup, desc, 4, &isnull)),
				   nelems, relids);
	}

	if (SPI_execute("SELECT stream_id, shard_id, next_sequence FROM event_bridge.shards",
					true, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not read event_bridge shards");
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull;
		CaptureStream *s = find_stream(DatumGetInt32(SPI_getbinval(tup, desc, 1, &isnull)));
		int32		shard = DatumGetInt32(SPI_getbinval(tup, desc, 2, &isnull));

		if (s != NULL && shard >= 0 && shard < s->shard_count)
			s->next_sequence[shard] = DatumGetInt64(SPI_getbinval(tup, desc, 3, &isnull));
	}

	if (SPI_execute("SELECT next_record_id FROM event_bridge.capture_state", true, 0) != SPI_OK_SELECT ||
		SPI_processed != 1)
		elog(ERROR, "could not read event_bridge capture state");
	{
		bool		isnull;

		next_record_id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
													 SPI_tuptable->tupdesc, 1, &isnull));
	}
}

/*
 * Checks that the extension still exists.  If it is gone, drops the slot and
 * the origins and exits for good.
 */
static void
exit_if_extension_dropped(const char *slot_name, bool holding_slot)
{
	char	   *name;

	if (eb_extension_installed(&extension_oid, "capture"))
		return;

	if (holding_slot)
		ReplicationSlotRelease();
	if (SearchNamedReplicationSlot(slot_name, true) != NULL)
		ReplicationSlotDrop(slot_name, true);

	StartTransactionCommand();
	if (replorigin_session_origin != InvalidRepOriginId)
		replorigin_session_reset();
	name = psprintf(EB_CAPTURE_ORIGIN_FORMAT, MyDatabaseId);
	replorigin_drop_by_name(name, true, true);
	name = psprintf(EB_DELIVERY_ORIGIN_FORMAT, MyDatabaseId);
	replorigin_drop_by_name(name, true, true);
	CommitTransactionCommand();

	LWLockAcquire(eb_shared->lock, LW_EXCLUSIVE);
	my_db->slot_ready = false;
	LWLockRelease(eb_shared->lock);
	eb_exit_without_extension(my_db, "capture");
}

/* Runs one statement of the lost-slot protocol in a transaction of its own. */
static uint64
run_state_statement(const char *sql, bool read_only)
{
	uint64		processed;

	eb_worker_xact_begin();
	if (SPI_execute(sql, read_only, 0) < 0)
		elog(ERROR, "could not run \"%s\"", sql);
	processed = SPI_processed;
	eb_worker_xact_commit();
	return processed;
}

/*
 * The slot was invalidated (max_slot_wal_keep_size): changes it no longer
 * holds are gone, so capture must not go on as if nothing happened.  Marks
 * the database's capture as lost, where stream_status shows it, and waits
 * until an admin calls recover_capture(); then replaces the slot and
 * records the gap in capture_gaps.  Returns holding the new slot.
 */
static void
recover_lost_slot(const char *slot_name)
{
	XLogRecPtr	lost_lsn = MyReplicationSlot->data.invalidated_at;

	run_state_statement(psprintf("UPDATE event_bridge.capture_state"
								 "   SET slot_lost_at = coalesce(slot_lost_at, now()),"
								 "       slot_lost_lsn = coalesce(slot_lost_lsn, '%X/%X')",
								 LSN_FORMAT_ARGS(lost_lsn)), false);
	ereport(WARNING,
			(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
			 errmsg("event_bridge stopped capturing: replication slot \"%s\" was invalidated", slot_name),
			 errdetail("Changes the slot no longer held, from %X/%X on, cannot be captured.",
					   LSN_FORMAT_ARGS(lost_lsn)),
			 errhint("Run SELECT event_bridge.recover_capture(); to capture again from now on; the gap is recorded in event_bridge.capture_gaps.")));
	pgstat_report_activity(STATE_IDLE, "slot lost, waiting for recover_capture()");

	while (run_state_statement("SELECT FROM event_bridge.capture_state WHERE recover_requested",
							   true) == 0)
	{
		exit_if_extension_dropped(slot_name, true);
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 1000L, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
	}

	ReplicationSlotRelease();
	ReplicationSlotDrop(slot_name, true);
	create_slot(slot_name);
	ReplicationSlotAcquire(slot_name, true);
	run_state_statement(psprintf("WITH s AS (UPDATE event_bridge.capture_state"
								 "   SET slot_lost_at = NULL, slot_lost_lsn = NULL, recover_requested = false"
								 " RETURNING slot_lost_at, slot_lost_lsn)"
								 " INSERT INTO event_bridge.capture_gaps"
								 " SELECT c.slot_lost_at, c.slot_lost_lsn, now(), '%X/%X'"
								 "   FROM event_bridge.capture_state c",
								 LSN_FORMAT_ARGS(MyReplicationSlot->data.confirmed_flush)), false);
	ereport(LOG,
			(errmsg("event_bridge captures again with a new replication slot \"%s\" from %X/%X",
					slot_name, LSN_FORMAT_ARGS(MyReplicationSlot->data.confirmed_flush))));
}

static void
slot_not_ready(int code, Datum arg)
{
	my_db->slot_ready = false;
}

void
event_bridge_capture_main(Datum main_arg)
{
	Oid			dboid = DatumGetObjectId(main_arg);
	LogicalDecodingContext *ctx;
	XLogRecPtr	origin_lsn;
	Oid			schema;
	bool		slot_lost;

	my_db = eb_worker_start(main_arg, EB_WORKER_CAPTURE);
	before_shmem_exit(slot_not_ready, (Datum) 0);
	snprintf(my_slot_name, sizeof(my_slot_name), EB_SLOT_FORMAT, dboid);

	CurrentResourceOwner = ResourceOwnerCreate(NULL, "event_bridge capture");
	capture_context = AllocSetContextCreate(TopMemoryContext, "event_bridge capture",
											ALLOCSET_DEFAULT_SIZES);
	{
		MemoryContext old = MemoryContextSwitchTo(capture_context);

		initStringInfo(&pending);
		MemoryContextSwitchTo(old);
	}

	exit_if_extension_dropped(my_slot_name, false);

	/* Origins and catalog OIDs. */
	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	schema = get_namespace_oid("event_bridge", false);
	eb_streams_relid = get_relname_relid("streams", schema);
	eb_shards_relid = get_relname_relid("shards", schema);
	records_relid = get_relname_relid("records", schema);
	eb_capture_origin_id = origin_by_name(psprintf(EB_CAPTURE_ORIGIN_FORMAT, dboid));
	eb_delivery_origin_id = origin_by_name(psprintf(EB_DELIVERY_ORIGIN_FORMAT, dboid));
	replorigin_session_setup(eb_capture_origin_id);
	replorigin_session_origin = eb_capture_origin_id;
	origin_lsn = replorigin_session_get_progress(false);
	PopActiveSnapshot();
	CommitTransactionCommand();

	if (SearchNamedReplicationSlot(my_slot_name, true) == NULL)
		create_slot(my_slot_name);
	ReplicationSlotAcquire(my_slot_name, true);
	slot_lost = (MyReplicationSlot->data.invalidated_at != InvalidXLogRecPtr &&
				 MyReplicationSlot->data.restart_lsn == InvalidXLogRecPtr);

	/*
	 * A stream created from now on is decoded, even while the worker waits
	 * for the extension's SQL to match the library: the slot keeps the WAL.
	 */
	if (!slot_lost)
		my_db->slot_ready = true;
	eb_wait_for_sql_version(my_db, &extension_oid, "capture");
	if (slot_lost)
		recover_lost_slot(my_slot_name);

	/*
	 * The captured state, read only now that the slot exists: a stream that
	 * committed before this snapshot is loaded here, and one that commits
	 * after the slot's start point is decoded; a stream both loaded and
	 * decoded is taken once.  (Read before the slot, a stream restored by
	 * pg_dump in between would be neither.)
	 */
	eb_worker_xact_begin();
	load_state();
	eb_worker_xact_commit();
	my_db->slot_ready = true;
	pgstat_report_activity(STATE_RUNNING, "capturing");

	ctx = CreateDecodingContext(origin_lsn, NIL, false,
								XL_ROUTINE(.page_read = page_read,
										   .segment_open = wal_segment_open,
										   .segment_close = wal_segment_close),
								prepare_write, do_write, NULL);
	eb_capture_active = true;
	decoded_upto = MyReplicationSlot->data.restart_lsn;
	XLogBeginRead(ctx->reader, decoded_upto);
	InvalidateSystemCaches();

	/* The reader waits for WAL in page_read(), which also stores the records. */
	for (;;)
	{
		char	   *errm = NULL;

		if (XLogReadRecord(ctx->reader, &errm) == NULL)
			elog(ERROR, "could not read WAL at %X/%X: %s",
				 LSN_FORMAT_ARGS(decoded_upto), errm ? errm : "unknown error");
		LogicalDecodingProcessRecord(ctx, ctx->reader);
		decoded_upto = ctx->reader->EndRecPtr;

		/* While WAL keeps coming, store at least every EB_FLUSH_INTERVAL_MS. */
		if (pending_count > 0 &&
			(pending_count >= 100000 ||
			 TimestampDifferenceExceeds(pending_since, GetCurrentTimestamp(),
										EB_FLUSH_INTERVAL_MS)))
			flush(decoded_upto);
		CHECK_FOR_INTERRUPTS();
	}
}
