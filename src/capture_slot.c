/*-------------------------------------------------------------------------
 *
 * capture_slot.c
 *	  The life of a database's replication slot and origins: created by the
 *	  capture worker, replaced after the slot is lost (recover_capture), and
 *	  dropped with the extension.
 *
 * The slot (event_bridge_<database oid>) is the capture worker's only reader
 * of the WAL.  The two replication origins mark the transactions of the
 * capture and delivery workers, so that the decoder skips them, and the
 * capture origin's position is the exactly-once position of capture.
 *
 * IDENTIFICATION
 *	  src/capture_slot.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "access/xlogutils.h"
#include "catalog/pg_type.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "replication/logical.h"
#include "replication/origin.h"
#include "replication/slot.h"
#include "storage/latch.h"
#include "utils/pg_lsn.h"

#include "capture.h"
#include "catalog.h"
#include "event_bridge.h"

static EbStatement mark_slot_lost = {
	"UPDATE event_bridge.capture_state"
	"   SET slot_lost_at = coalesce(slot_lost_at, now()),"
	"       slot_lost_lsn = coalesce(slot_lost_lsn, $1)",
	1, {PG_LSNOID}
};

static EbStatement recover_requested = {
	"SELECT FROM event_bridge.capture_state WHERE recover_requested", 0
};

/* The stretch the slot lost goes to capture_gaps; capture is marked running. */
static EbStatement record_gap = {
	"WITH s AS (UPDATE event_bridge.capture_state"
	"   SET slot_lost_at = NULL, slot_lost_lsn = NULL, recover_requested = false"
	" RETURNING slot_lost_at, slot_lost_lsn)"
	" INSERT INTO event_bridge.capture_gaps"
	" SELECT c.slot_lost_at, c.slot_lost_lsn, now(), $1"
	"   FROM event_bridge.capture_state c",
	1, {PG_LSNOID}
};

/* Creates the database's slot; its start point is consistent once this returns. */
void
capture_create_slot(const char *name)
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

/* The replication origin of this name, created if need be.  Inside a transaction. */
RepOriginId
capture_origin(const char *name)
{
	RepOriginId id = replorigin_by_name(name, true);

	if (id == InvalidRepOriginId)
		id = replorigin_create(name);
	return id;
}

/*
 * Checks that the extension still exists.  If it is gone, drops the slot and
 * the origins and exits for good.
 */
void
capture_exit_if_dropped(EbDatabase *db, Oid *extension_oid, const char *slot_name,
						bool holding_slot)
{
	char	   *name;

	if (eb_extension_installed(extension_oid, "capture"))
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
	db->slot_ready = false;
	LWLockRelease(eb_shared->lock);
	eb_exit_without_extension(db, "capture");
}

/* Runs one statement of the lost-slot protocol in a transaction of its own. */
static uint64
run_state_statement(EbStatement *stmt, XLogRecPtr lsn)
{
	Datum		arg = LSNGetDatum(lsn);
	uint64		processed;

	eb_worker_xact_begin();
	processed = eb_run(stmt, &arg, NULL);
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
void
capture_recover_lost_slot(EbDatabase *db, Oid *extension_oid, const char *slot_name)
{
	XLogRecPtr	lost_lsn = MyReplicationSlot->data.invalidated_at;

	run_state_statement(&mark_slot_lost, lost_lsn);
	ereport(WARNING,
			(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
			 errmsg("event_bridge stopped capturing: replication slot \"%s\" was invalidated", slot_name),
			 errdetail("Changes the slot no longer held, from %X/%X on, cannot be captured.",
					   LSN_FORMAT_ARGS(lost_lsn)),
			 errhint("Run SELECT event_bridge.recover_capture(); to capture again from now on; the gap is recorded in event_bridge.capture_gaps.")));
	pgstat_report_activity(STATE_IDLE, "slot lost, waiting for recover_capture()");

	while (run_state_statement(&recover_requested, InvalidXLogRecPtr) == 0)
	{
		capture_exit_if_dropped(db, extension_oid, slot_name, true);
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 1000L, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
	}

	ReplicationSlotRelease();
	ReplicationSlotDrop(slot_name, true);
	capture_create_slot(slot_name);
	ReplicationSlotAcquire(slot_name, true);
	run_state_statement(&record_gap, MyReplicationSlot->data.confirmed_flush);
	ereport(LOG,
			(errmsg("event_bridge captures again with a new replication slot \"%s\" from %X/%X",
					slot_name, LSN_FORMAT_ARGS(MyReplicationSlot->data.confirmed_flush))));
}
