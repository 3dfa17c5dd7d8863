/*-------------------------------------------------------------------------
 *
 * launcher.c
 *	  The launcher: a background worker, connected to no database, that keeps
 *	  a capture worker running in every database that has event_bridge.
 *
 * Once a second, or when create_stream wakes it, the launcher lists the
 * databases and starts the worker of each one that has none.  A worker that
 * finds no extension marks its database and exits; the launcher then frees
 * the database's shared entry and remembers it in its own memory, which has
 * no limit, so that the EB_MAX_DATABASES entries serve databases that have
 * the extension.  CREATE EXTENSION or a stream takes an entry again.  DROP
 * DATABASE marks the database as dropping so that no worker is started
 * while it goes.
 *
 * IDENTIFICATION
 *	  src/launcher.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/pg_database.h"

#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "tcop/tcopprot.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "utils/hsearch.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"

#include "event_bridge.h"

/* A database the launcher knows, with its workers' handles. */
typedef struct LauncherDb
{
	Oid			dboid;			/* hash key */
	bool		no_extension;	/* its workers found none, nobody asked since */
	bool		full_warned;	/* said that every shared entry is taken */
	BackgroundWorkerHandle *handles[EB_NUM_WORKER_KINDS];
	TimestampTz started_at[EB_NUM_WORKER_KINDS];
} LauncherDb;

static HTAB *launcher_dbs = NULL;

/* Milliseconds between two starts of the same worker (crash loops). */
#define EB_RESTART_DELAY_MS	1000

/* Registers the launcher; called from _PG_init in the postmaster. */
void
eb_register_launcher(void)
{
	BackgroundWorker worker;

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker.bgw_restart_time = 5;
	snprintf(worker.bgw_library_name, BGW_MAXLEN, "event_bridge");
	snprintf(worker.bgw_function_name, BGW_MAXLEN, "event_bridge_launcher_main");
	snprintf(worker.bgw_name, BGW_MAXLEN, "event_bridge launcher");
	snprintf(worker.bgw_type, BGW_MAXLEN, "event_bridge launcher");
	RegisterBackgroundWorker(&worker);
}

/* Lists the OIDs of databases that accept connections and are no templates. */
static List *
list_databases(void)
{
	List	   *result = NIL;
	Relation	rel;
	TableScanDesc scan;
	HeapTuple	tup;
	MemoryContext caller = CurrentMemoryContext;

	StartTransactionCommand();
	(void) GetTransactionSnapshot();
	rel = table_open(DatabaseRelationId, AccessShareLock);
	scan = table_beginscan_catalog(rel, 0, NULL);
	while (HeapTupleIsValid(tup = heap_getnext(scan, ForwardScanDirection)))
	{
		Form_pg_database db = (Form_pg_database) GETSTRUCT(tup);
		MemoryContext old;

		if (!db->datallowconn || db->datistemplate)
			continue;
		old = MemoryContextSwitchTo(caller);
		result = lappend_oid(result, db->oid);
		MemoryContextSwitchTo(old);
	}
	table_endscan(scan);
	table_close(rel, AccessShareLock);
	CommitTransactionCommand();
	return result;
}

static LauncherDb *
launcher_db(Oid dboid)
{
	LauncherDb *ldb;
	bool		found;

	if (launcher_dbs == NULL)
	{
		HASHCTL		ctl;

		ctl.keysize = sizeof(Oid);
		ctl.entrysize = sizeof(LauncherDb);
		launcher_dbs = hash_create("event_bridge launcher databases", 64, &ctl,
								   HASH_ELEM | HASH_BLOBS);
	}
	ldb = hash_search(launcher_dbs, &dboid, HASH_ENTER, &found);
	if (!found)
		memset((char *) ldb + sizeof(Oid), 0, sizeof(LauncherDb) - sizeof(Oid));
	return ldb;
}

/* Starts one worker of the given kind for a database. */
static BackgroundWorkerHandle *
start_worker(Oid dboid, EbWorkerKind kind)
{
	BackgroundWorker worker;
	BackgroundWorkerHandle *handle;
	const char *what = (kind == EB_WORKER_CAPTURE) ? "capture" : "delivery";
	MemoryContext old;
	bool		registered;

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker.bgw_restart_time = BGW_NEVER_RESTART;
	snprintf(worker.bgw_library_name, BGW_MAXLEN, "event_bridge");
	snprintf(worker.bgw_function_name, BGW_MAXLEN, "event_bridge_%s_main", what);
	snprintf(worker.bgw_name, BGW_MAXLEN, "event_bridge %s %u", what, dboid);
	snprintf(worker.bgw_type, BGW_MAXLEN, "event_bridge %s", what);
	worker.bgw_main_arg = ObjectIdGetDatum(dboid);
	worker.bgw_notify_pid = MyProcPid;

	/* The handle outlives the launcher's turn, whose memory is reset. */
	old = MemoryContextSwitchTo(TopMemoryContext);
	registered = RegisterDynamicBackgroundWorker(&worker, &handle);
	MemoryContextSwitchTo(old);
	if (!registered)
	{
		ereport(WARNING,
				(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
				 errmsg("could not start event_bridge %s worker for database %u", what, dboid),
				 errhint("Raise max_worker_processes.")));
		return NULL;
	}
	return handle;
}

/*
 * Starts the workers a database is missing.  A database whose workers found
 * no extension gets none until someone asks (eb_database_want_workers).
 */
static void
ensure_workers(Oid dboid)
{
	LauncherDb *ldb = launcher_db(dboid);
	EbDatabase *db = eb_database_entry(dboid, false);

	if (db != NULL && db->no_extension)
	{
		if (eb_database_release(db))
			ldb->no_extension = true;
		return;
	}
	if (db == NULL)
	{
		if (ldb->no_extension)
			return;
		db = eb_database_entry(dboid, true);
		if (db == NULL)
		{
			if (!ldb->full_warned)
				ereport(WARNING,
						(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
						 errmsg("event_bridge serves at most %d databases; database %u waits for one to drop the extension",
								EB_MAX_DATABASES, dboid)));
			ldb->full_warned = true;
			return;
		}
	}
	ldb->no_extension = false;
	ldb->full_warned = false;
	if (db->dropping_pid != 0)
		return;

	for (int k = 0; k < EB_NUM_WORKER_KINDS; k++)
	{
		pid_t		pid;

		if (ldb->handles[k] != NULL &&
			GetBackgroundWorkerPid(ldb->handles[k], &pid) != BGWH_STOPPED)
			continue;
		if (!TimestampDifferenceExceeds(ldb->started_at[k], GetCurrentTimestamp(),
										EB_RESTART_DELAY_MS))
			continue;
		if (ldb->handles[k] != NULL)
			pfree(ldb->handles[k]);
		ldb->handles[k] = start_worker(dboid, (EbWorkerKind) k);
		ldb->started_at[k] = GetCurrentTimestamp();
	}
}

/* Forgets databases that no longer exist. */
static void
forget_dropped(List *dboids)
{
	HASH_SEQ_STATUS status;
	LauncherDb *ldb;

	if (launcher_dbs == NULL)
		return;
	hash_seq_init(&status, launcher_dbs);
	while ((ldb = hash_seq_search(&status)) != NULL)
	{
		Oid			dboid = ldb->dboid;

		if (list_member_oid(dboids, dboid))
			continue;
		for (int k = 0; k < EB_NUM_WORKER_KINDS; k++)
			if (ldb->handles[k] != NULL)
				pfree(ldb->handles[k]);
		(void) hash_search(launcher_dbs, &dboid, HASH_REMOVE, NULL);
		LWLockAcquire(eb_shared->lock, LW_EXCLUSIVE);
		for (int j = 0; j < EB_MAX_DATABASES; j++)
			if (eb_shared->dbs[j].dboid == dboid)
				eb_shared->dbs[j].dboid = InvalidOid;
		LWLockRelease(eb_shared->lock);
	}
}

void
event_bridge_launcher_main(Datum main_arg)
{
	MemoryContext loop_context;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnection(NULL, NULL, 0);

	eb_worker_attach(&eb_shared->launcher);

	loop_context = AllocSetContextCreate(TopMemoryContext, "event_bridge launcher",
										 ALLOCSET_DEFAULT_SIZES);
	for (;;)
	{
		List	   *dboids;
		ListCell   *lc;
		MemoryContext old;

		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}

		old = MemoryContextSwitchTo(loop_context);
		dboids = list_databases();
		forget_dropped(dboids);
		foreach(lc, dboids)
			ensure_workers(lfirst_oid(lc));
		MemoryContextSwitchTo(old);
		MemoryContextReset(loop_context);
		pgstat_report_stat(true);

		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 1000L, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
	}
}
