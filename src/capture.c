/*-------------------------------------------------------------------------
 *
 * capture.c
 *	  The capture worker: one per database, it decodes the WAL through its
 *	  own logical decoding context, and stores the records that the output
 *	  plugin produces (capture_store.c) in rounds.
 *
 * The loop: read a WAL record, decode it (the plugin hands records to the
 * store), and flush the store at least every EB_FLUSH_INTERVAL_MS while WAL
 * keeps coming.  When all flushed WAL is read, the WAL reader asks for more
 * in page_read(): the worker flushes, and waits there for the next round,
 * which keeps the reader's open segment and page across waits.  Nothing
 * else runs in that callback but the check that the extension still exists;
 * retention and other maintenance run in the delivery worker, so that their
 * failure never stops capture.
 *
 * Exactly once: the worker's transactions run under a replication origin,
 * and each flush commits the records with the origin's position (see
 * capture_store.c).  After a crash, decoding resumes at that position, so
 * every committed change is appended once.  The origin also keeps the
 * worker's own writes out of the decoder.
 *
 * IDENTIFICATION
 *	  src/capture.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "access/xlog.h"
#include "access/xlogreader.h"
#include "access/xlogutils.h"
#include "catalog/namespace.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "replication/decode.h"
#include "replication/logical.h"
#include "replication/origin.h"
#include "replication/slot.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/proc.h"
#include "tcop/tcopprot.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/resowner.h"
#include "utils/snapmgr.h"

#include "capture.h"
#include "event_bridge.h"

/* Flush at least this often while WAL keeps coming, for latency. */
#define EB_FLUSH_INTERVAL_MS	100

/* ... and at least every this many records. */
#define EB_FLUSH_RECORDS		100000

/*
 * A round (read all flushed WAL, store, sleep; see wait_for_wal()) starts at
 * most this often: a flush costs about the same for one record as for
 * thousands, so under many small transactions this turns dozens of flushes
 * into one, while a change after a quiet spell is stored at once.
 */
#define EB_ROUND_INTERVAL_MS	10

/* The worker's state, for the WAL reader's callback. */
typedef struct CaptureWorker
{
	EbDatabase *db;
	Oid			extension_oid;
	char		slot_name[NAMEDATALEN];
	CaptureTarget target;
	XLogRecPtr	decoded_upto;	/* the end of the last record decoded */
	TimestampTz round_start;	/* see wait_for_wal() */
	TimestampTz last_check;		/* that the extension still exists */
} CaptureWorker;

static CaptureWorker worker;

/*
 * Called by the WAL reader when the WAL it needs is not flushed yet, so all
 * flushed WAL is decoded: stores the pending records and sleeps until the
 * next round.
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
	TimestampTz next_round = TimestampTzPlusMilliseconds(worker.round_start, EB_ROUND_INTERVAL_MS);
	long		wait_ms;

	if (capture_store_dirty(worker.target.store))
		capture_store_flush(worker.target.store, worker.decoded_upto);
	else if (worker.decoded_upto > MyReplicationSlot->data.confirmed_flush)
		LogicalConfirmReceivedLocation(worker.decoded_upto);

	if (TimestampDifferenceExceeds(worker.last_check, now, 1000))
	{
		capture_exit_if_dropped(worker.db, &worker.extension_oid, worker.slot_name, true);
		worker.last_check = now;
	}

	now = GetCurrentTimestamp();
	if (now < next_round)
		wait_ms = Max(1, (next_round - now + 999) / 1000);
	else
	{
		pg_atomic_write_u32(&worker.db->wal_pending, 0);
		wait_ms = (GetFlushRecPtr(NULL) < needed) ? 1000L : 0;
	}
	if (wait_ms > 0)
	{
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 wait_ms, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
	}
	if (GetFlushRecPtr(NULL) >= needed)
		worker.round_start = GetCurrentTimestamp();
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

static void
slot_not_ready(int code, Datum arg)
{
	worker.db->slot_ready = false;
}

/*
 * Finds the extension's tables and the database's origins, and runs this
 * session's transactions under the capture origin.  Returns the origin's
 * position: where decoding resumes.
 */
static XLogRecPtr
prepare_origins(Oid *records_relid)
{
	Oid			dboid = MyDatabaseId;
	Oid			schema;
	XLogRecPtr	origin_lsn;

	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	schema = get_namespace_oid("event_bridge", false);
	worker.target.streams_relid = get_relname_relid("streams", schema);
	worker.target.shards_relid = get_relname_relid("shards", schema);
	worker.target.filters_relid = get_relname_relid("table_filter_rules", schema);
	*records_relid = get_relname_relid("records", schema);
	worker.target.capture_origin = capture_origin(psprintf(EB_CAPTURE_ORIGIN_FORMAT, dboid));
	worker.target.delivery_origin = capture_origin(psprintf(EB_DELIVERY_ORIGIN_FORMAT, dboid));
	replorigin_session_setup(worker.target.capture_origin);
	replorigin_session_origin = worker.target.capture_origin;
	origin_lsn = replorigin_session_get_progress(false);
	PopActiveSnapshot();
	CommitTransactionCommand();
	return origin_lsn;
}

void
event_bridge_capture_main(Datum main_arg)
{
	LogicalDecodingContext *ctx;
	XLogRecPtr	origin_lsn;
	Oid			records_relid;
	bool		slot_lost;

	worker.db = eb_worker_start(main_arg, EB_WORKER_CAPTURE);
	before_shmem_exit(slot_not_ready, (Datum) 0);
	snprintf(worker.slot_name, sizeof(worker.slot_name), EB_SLOT_FORMAT, MyDatabaseId);
	CurrentResourceOwner = ResourceOwnerCreate(NULL, "event_bridge capture");

	capture_exit_if_dropped(worker.db, &worker.extension_oid, worker.slot_name, false);
	origin_lsn = prepare_origins(&records_relid);

	if (SearchNamedReplicationSlot(worker.slot_name, true) == NULL)
		capture_create_slot(worker.slot_name);
	ReplicationSlotAcquire(worker.slot_name, true);
	slot_lost = (MyReplicationSlot->data.invalidated_at != InvalidXLogRecPtr &&
				 MyReplicationSlot->data.restart_lsn == InvalidXLogRecPtr);

	/*
	 * A stream created from now on is decoded, even while the worker waits
	 * for the extension's SQL to match the library: the slot keeps the WAL.
	 */
	if (!slot_lost)
		worker.db->slot_ready = true;
	eb_wait_for_sql_version(worker.db, &worker.extension_oid, "capture");
	if (slot_lost)
		capture_recover_lost_slot(worker.db, &worker.extension_oid, worker.slot_name);

	/*
	 * The captured state, read only now that the slot exists: a stream that
	 * committed before this snapshot is loaded here, and one that commits
	 * after the slot's start point is decoded; a stream both loaded and
	 * decoded is taken once.  (Read before the slot, a stream restored by
	 * pg_dump in between would be neither.)
	 */
	worker.target.store = capture_store_create(worker.db, records_relid);
	eb_worker_xact_begin();
	capture_store_load(worker.target.store);
	eb_worker_xact_commit();
	worker.db->slot_ready = true;
	pgstat_report_activity(STATE_RUNNING, "capturing");

	ctx = CreateDecodingContext(origin_lsn, NIL, false,
								XL_ROUTINE(.page_read = page_read,
										   .segment_open = wal_segment_open,
										   .segment_close = wal_segment_close),
								prepare_write, do_write, NULL);
	decoder_set_target(ctx, &worker.target);
	worker.decoded_upto = MyReplicationSlot->data.restart_lsn;
	XLogBeginRead(ctx->reader, worker.decoded_upto);
	InvalidateSystemCaches();

	/* The reader waits for WAL in page_read(), which also stores the records. */
	for (;;)
	{
		char	   *errm = NULL;
		TimestampTz pending_since;
		int64		pending;

		if (XLogReadRecord(ctx->reader, &errm) == NULL)
			elog(ERROR, "could not read WAL at %X/%X: %s",
				 LSN_FORMAT_ARGS(worker.decoded_upto), errm ? errm : "unknown error");
		LogicalDecodingProcessRecord(ctx, ctx->reader);
		worker.decoded_upto = ctx->reader->EndRecPtr;

		/* While WAL keeps coming, store at least every EB_FLUSH_INTERVAL_MS. */
		pending = capture_store_pending(worker.target.store, &pending_since);
		if (pending > 0 &&
			(pending >= EB_FLUSH_RECORDS ||
			 TimestampDifferenceExceeds(pending_since, GetCurrentTimestamp(),
										EB_FLUSH_INTERVAL_MS)))
			capture_store_flush(worker.target.store, worker.decoded_upto);
		CHECK_FOR_INTERRUPTS();
	}
}
