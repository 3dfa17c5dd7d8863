/*-------------------------------------------------------------------------
 *
 * event_bridge.c
 *	  Module load: GUCs, shared memory, the launcher's registration and the
 *	  hooks every backend runs (commit wake-ups, DROP DATABASE).
 *
 * A backend that commits sets the capture worker's latch, at most once per
 * worker wake-up, so captured changes are decoded within milliseconds
 * instead of after a polling period.
 *
 * IDENTIFICATION
 *	  src/event_bridge.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <signal.h>

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/stratnum.h"
#include "access/table.h"
#include "access/xact.h"
#include "catalog/indexing.h"
#include "commands/dbcommands.h"
#include "executor/spi.h"
#include "pgstat.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
#include "catalog/objectaccess.h"
#include "catalog/pg_database.h"
#include "catalog/pg_extension.h"
#include "commands/extension.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/proc.h"
#include "storage/shmem.h"
#include "tcop/utility.h"
#include "tcop/tcopprot.h"
#include "utils/guc.h"

#include "event_bridge.h"

PG_MODULE_MAGIC;

void		_PG_init(void);

EbShared   *eb_shared = NULL;
bool		eb_preloaded = false;

char	   *eb_region = NULL;
int			eb_capture_buffer_kb = 8192;
int			eb_cleanup_interval_ms = 10000;

static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;
static object_access_hook_type prev_object_access_hook = NULL;
static ProcessUtility_hook_type prev_process_utility_hook = NULL;

/* The entry whose workers this transaction stopped to drop something. */
static EbDatabase *dropping_db = NULL;

/* Entry of this backend's database, looked up once. */
static EbDatabase *my_db_entry = NULL;

/* A worker's view of the installed SQL (see eb_wait_for_sql_version). */
static bool sql_version_matches = false;
static bool sql_version_checked = false;

static void
eb_shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RequestAddinShmemSpace(MAXALIGN(sizeof(EbShared)));
	RequestNamedLWLockTranche("event_bridge", 1);
}

static void
eb_shmem_startup(void)
{
	bool		found;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	eb_shared = ShmemInitStruct("event_bridge", sizeof(EbShared), &found);
	if (!found)
	{
		memset(eb_shared, 0, sizeof(EbShared));
		eb_shared->lock = &(GetNamedLWLockTranche("event_bridge"))->lock;
		for (int i = 0; i < EB_MAX_DATABASES; i++)
		{
			pg_atomic_init_u32(&eb_shared->dbs[i].wal_pending, 0);
			pg_atomic_init_u32(&eb_shared->dbs[i].records_epoch, 0);
			pg_atomic_init_u32(&eb_shared->dbs[i].connectors_epoch, 0);
		}
	}
	LWLockRelease(AddinShmemInitLock);
}

/*
 * The shared entry of a database, or NULL; with take, a free entry is taken
 * for it (NULL when all are in use).  The caller holds eb_shared->lock,
 * exclusively to take.
 */
static EbDatabase *
find_entry(Oid dboid, bool take)
{
	EbDatabase *free_entry = NULL;

	for (int i = 0; i < EB_MAX_DATABASES; i++)
	{
		EbDatabase *db = &eb_shared->dbs[i];

		if (db->dboid == dboid)
			return db;
		if (db->dboid == InvalidOid && free_entry == NULL)
			free_entry = db;
	}
	if (!take || free_entry == NULL)
		return NULL;
	memset(free_entry->workers, 0, sizeof(free_entry->workers));
	free_entry->slot_ready = false;
	free_entry->no_extension = false;
	free_entry->dropping_pid = 0;
	free_entry->sql_version_logged = false;
	pg_atomic_write_u32(&free_entry->wal_pending, 0);
	pg_atomic_write_u32(&free_entry->records_epoch, 0);
	pg_atomic_write_u32(&free_entry->connectors_epoch, 0);
	free_entry->dboid = dboid;
	return free_entry;
}

/*
 * Returns the shared entry of a database, or NULL.  With create, a free
 * entry is taken (NULL when all are in use).  Takes the lock itself.
 */
EbDatabase *
eb_database_entry(Oid dboid, bool create)
{
	EbDatabase *found;

	LWLockAcquire(eb_shared->lock, create ? LW_EXCLUSIVE : LW_SHARED);
	found = find_entry(dboid, create);
	LWLockRelease(eb_shared->lock);
	return found;
}

/*
 * Asks the launcher for a database's workers (CREATE EXTENSION, the first
 * stream): finds or takes the database's entry and clears no_extension in
 * one step, so that the launcher cannot free the entry in between, and wakes
 * the launcher.  Returns the entry, or NULL when every entry is taken.
 */
EbDatabase *
eb_database_want_workers(Oid dboid)
{
	EbDatabase *db;

	LWLockAcquire(eb_shared->lock, LW_EXCLUSIVE);
	db = find_entry(dboid, true);
	if (db != NULL)
		db->no_extension = false;
	LWLockRelease(eb_shared->lock);
	eb_wake_worker(&eb_shared->launcher);
	return db;
}

/*
 * Frees the entry of a database without the extension once its workers are
 * gone, so that the entries serve databases that have it.  Returns whether
 * it did.  Called by the launcher, which remembers such databases itself.
 */
bool
eb_database_release(EbDatabase *db)
{
	bool		released = false;

	LWLockAcquire(eb_shared->lock, LW_EXCLUSIVE);
	if (db->no_extension && db->dropping_pid == 0)
	{
		released = true;
		for (int k = 0; k < EB_NUM_WORKER_KINDS; k++)
			released &= (db->workers[k].pid == 0);
		if (released)
			db->dboid = InvalidOid;
	}
	LWLockRelease(eb_shared->lock);
	return released;
}

/* Sets the latch of a running worker; does nothing if it is not running. */
void
eb_wake_worker(EbWorkerSlot *slot)
{
	int			procno = slot->procno;

	if (slot->pid != 0)
		SetLatch(&ProcGlobal->allProcs[procno].procLatch);
}

static void
eb_worker_detach(int code, Datum arg)
{
	EbWorkerSlot *slot = (EbWorkerSlot *) DatumGetPointer(arg);

	LWLockAcquire(eb_shared->lock, LW_EXCLUSIVE);
	if (slot->pid == MyProcPid)
		slot->pid = 0;
	LWLockRelease(eb_shared->lock);
}

/* Publishes the calling process in a worker slot until it exits. */
void
eb_worker_attach(EbWorkerSlot *slot)
{
	LWLockAcquire(eb_shared->lock, LW_EXCLUSIVE);
	slot->pid = MyProcPid;
	slot->procno = MyProc->pgprocno;
	LWLockRelease(eb_shared->lock);
	before_shmem_exit(eb_worker_detach, PointerGetDatum(slot));
}

/*
 * Starts a worker of a database: signal handlers, the connection to the
 * database whose OID is the worker's argument, an empty search_path, and its
 * shared slot.  Returns the database's entry; exits quietly if every entry
 * is taken.
 */
EbDatabase *
eb_worker_start(Datum main_arg, EbWorkerKind kind)
{
	Oid			dboid = DatumGetObjectId(main_arg);
	EbDatabase *db;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnectionByOid(dboid, InvalidOid, 0);

	/*
	 * The workers run as a superuser in a database whose owner may be
	 * hostile: with an empty search_path, every name in their SQL resolves
	 * in pg_catalog or is qualified, never in a schema a user can write.
	 */
	SetConfigOption("search_path", "", PGC_SUSET, PGC_S_OVERRIDE);

	db = eb_database_entry(dboid, true);
	if (db == NULL)
		proc_exit(0);
	eb_worker_attach(&db->workers[kind]);
	return db;
}

/* The version of the extension's SQL installed in this database, or NULL. */
static char *
installed_sql_version(Oid extension_oid)
{
	Relation	rel;
	ScanKeyData key;
	SysScanDesc scan;
	HeapTuple	tup;
	char	   *version = NULL;

	rel = table_open(ExtensionRelationId, AccessShareLock);
	ScanKeyInit(&key, Anum_pg_extension_oid, BTEqualStrategyNumber, F_OIDEQ,
				ObjectIdGetDatum(extension_oid));
	scan = systable_beginscan(rel, ExtensionOidIndexId, true, NULL, 1, &key);
	tup = systable_getnext(scan);
	if (HeapTupleIsValid(tup))
	{
		bool		isnull;
		Datum		d = heap_getattr(tup, Anum_pg_extension_extversion,
									 RelationGetDescr(rel), &isnull);

		if (!isnull)
			version = TextDatumGetCString(d);
	}
	systable_endscan(scan);
	table_close(rel, AccessShareLock);
	return version;
}

/*
 * Checks, in a transaction of its own, that event_bridge is still installed
 * in this database, and notes the version of its SQL; *extension_oid
 * remembers the OID seen first.  Returns false if the extension is gone.
 * If it was dropped and created again, or its SQL changed version under a
 * worker that had waited for it (eb_wait_for_sql_version), the worker errors
 * out, to restart with fresh state.
 */
bool
eb_extension_installed(Oid *extension_oid, const char *worker)
{
	Oid			current;
	bool		matches = false;

	StartTransactionCommand();
	current = get_extension_oid("event_bridge", true);
	if (OidIsValid(current))
	{
		char	   *version = installed_sql_version(current);

		matches = (version != NULL && strcmp(version, EB_EXTVERSION) == 0);
	}
	CommitTransactionCommand();
	if (!OidIsValid(current))
		return false;
	if (OidIsValid(*extension_oid) && current != *extension_oid)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("event_bridge was dropped and created again; %s worker restarts", worker)));
	if (sql_version_checked && !matches)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("the SQL of event_bridge changed version; %s worker restarts", worker)));
	*extension_oid = current;
	sql_version_matches = matches;
	return true;
}

/*
 * Waits until the extension's SQL in this database is the version this
 * library was built for: after a new library is installed, the catalog
 * stays as it was until ALTER EXTENSION event_bridge UPDATE, and the
 * workers touch none of it before.  Says so once per database in the log.
 * Exits the worker if the extension is dropped meanwhile.
 */
void
eb_wait_for_sql_version(EbDatabase *db, Oid *extension_oid, const char *worker)
{
	bool		logged = false;

	for (;;)
	{
		if (!eb_extension_installed(extension_oid, worker))
			eb_exit_without_extension(db, worker);
		if (sql_version_matches)
			break;
		if (!logged)
		{
			bool		first;

			LWLockAcquire(eb_shared->lock, LW_EXCLUSIVE);
			first = !db->sql_version_logged;
			db->sql_version_logged = true;
			LWLockRelease(eb_shared->lock);
			if (first)
			{
				char	   *dbname;

				StartTransactionCommand();
				dbname = pstrdup(get_database_name(MyDatabaseId));
				CommitTransactionCommand();
				ereport(LOG,
						(errmsg("event_bridge in database \"%s\" waits for its SQL to be updated to version %s",
								dbname, EB_EXTVERSION),
						 errdetail("The event_bridge library is version %s and the extension's SQL in this database is older or newer; nothing is captured or delivered until they match.",
								   EB_EXTVERSION),
						 errhint("Run ALTER EXTENSION event_bridge UPDATE; in database \"%s\".", dbname)));
			}
			pgstat_report_activity(STATE_IDLE, "waiting for ALTER EXTENSION event_bridge UPDATE");
			logged = true;
		}
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 1000L, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
	}
	sql_version_checked = true;
}

/*
 * Marks a database as having no event_bridge, so that the launcher starts no
 * more workers there, and exits the calling worker for good.
 */
void
eb_exit_without_extension(EbDatabase *db, const char *worker)
{
	LWLockAcquire(eb_shared->lock, LW_EXCLUSIVE);
	db->no_extension = true;
	LWLockRelease(eb_shared->lock);
	ereport(DEBUG1,
			(errmsg("event_bridge is not installed in this database; %s worker exits", worker)));
	proc_exit(0);
}

/*
 * Starts a worker's transaction: statement time now (for now()), a snapshot
 * and SPI.  eb_worker_xact_commit() ends it.
 */
void
eb_worker_xact_begin(void)
{
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	SPI_connect();
}

/* Commits a transaction started by eb_worker_xact_begin(). */
void
eb_worker_xact_commit(void)
{
	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();
}

/* Wake-ups asked for by this transaction, done when it commits. */
static bool start_workers_at_commit = false;
static bool wake_delivery_at_commit = false;

/*
 * Has this database's workers started (after CREATE EXTENSION) or its
 * delivery worker woken (after a connector changed) when the calling
 * transaction commits: before, they would not see its changes.
 */
void
eb_wake_at_commit(EbWorkerKind kind)
{
	if (kind == EB_WORKER_DELIVERY)
		wake_delivery_at_commit = true;
	else
		start_workers_at_commit = true;
}

/*
 * At commit: the wake-ups the transaction asked for, and, if it wrote, a
 * wake-up of this database's capture worker unless one is already pending
 * (one atomic exchange).
 */
static void
eb_xact_callback(XactEvent event, void *arg)
{
	bool		start_workers = start_workers_at_commit;
	bool		wake_delivery = wake_delivery_at_commit;

	if (event == XACT_EVENT_COMMIT || event == XACT_EVENT_ABORT ||
		event == XACT_EVENT_PREPARE)
	{
		start_workers_at_commit = wake_delivery_at_commit = false;
		if (dropping_db != NULL)
		{
			/* The drop is over: the launcher may start workers again. */
			LWLockAcquire(eb_shared->lock, LW_EXCLUSIVE);
			if (dropping_db->dropping_pid == MyProcPid)
				dropping_db->dropping_pid = 0;
			LWLockRelease(eb_shared->lock);
			eb_wake_worker(&eb_shared->launcher);
			dropping_db = NULL;
		}
	}

	if (event != XACT_EVENT_COMMIT || eb_shared == NULL || !OidIsValid(MyDatabaseId))
		return;

	if (start_workers)
		(void) eb_database_want_workers(MyDatabaseId);

	if (my_db_entry == NULL || my_db_entry->dboid != MyDatabaseId)
	{
		my_db_entry = NULL;
		for (int i = 0; i < EB_MAX_DATABASES; i++)
			if (eb_shared->dbs[i].dboid == MyDatabaseId)
				my_db_entry = &eb_shared->dbs[i];
		if (my_db_entry == NULL)
			return;
	}

	/* Counted first: the delivery worker looks at its connectors when it moves. */
	if (wake_delivery)
	{
		pg_atomic_fetch_add_u32(&my_db_entry->connectors_epoch, 1);
		eb_wake_worker(&my_db_entry->workers[EB_WORKER_DELIVERY]);
	}

	if (GetTopTransactionIdIfAny() != InvalidTransactionId &&
		my_db_entry->workers[EB_WORKER_CAPTURE].pid != 0 &&
		my_db_entry->workers[EB_WORKER_CAPTURE].pid != MyProcPid &&
		pg_atomic_exchange_u32(&my_db_entry->wal_pending, 1) == 0)
		eb_wake_worker(&my_db_entry->workers[EB_WORKER_CAPTURE]);
}

/*
 * Asks a database's workers to exit and waits up to ten seconds until those
 * have; they release the replication slot as they go.  The launcher starts
 * no new ones until the calling transaction ends: then a worker finds the
 * database gone, or the extension gone (and drops the slot), or the drop
 * rolled back and it goes on.
 */
static void
stop_workers(EbDatabase *db)
{
	pid_t		pids[EB_NUM_WORKER_KINDS];

	LWLockAcquire(eb_shared->lock, LW_EXCLUSIVE);
	db->dropping_pid = MyProcPid;
	dropping_db = db;
	for (int k = 0; k < EB_NUM_WORKER_KINDS; k++)
	{
		pids[k] = db->workers[k].pid;
		if (pids[k] != 0)
			kill(pids[k], SIGTERM);
	}
	LWLockRelease(eb_shared->lock);

	for (int i = 0; i < 1000; i++)
	{
		bool		running = false;

		for (int k = 0; k < EB_NUM_WORKER_KINDS; k++)
			running |= (pids[k] != 0 && db->workers[k].pid == pids[k]);
		if (!running)
			break;
		CHECK_FOR_INTERRUPTS();
		pg_usleep(10000L);
	}
}

/*
 * DROP DATABASE waits for no background worker and refuses a database with
 * an active slot, so its workers are stopped before it checks.  DROP
 * EXTENSION stops them too: they restart, find no extension once the drop
 * has committed, drop the slot and exit for good.
 */
static void
eb_object_access(ObjectAccessType access, Oid classId, Oid objectId,
				 int subId, void *arg)
{
	EbDatabase *db;

	if (prev_object_access_hook)
		prev_object_access_hook(access, classId, objectId, subId, arg);

	if (access != OAT_DROP || eb_shared == NULL)
		return;

	if (classId == DatabaseRelationId)
	{
		db = eb_database_entry(objectId, false);
		if (db != NULL)
			stop_workers(db);
	}
	else if (classId == ExtensionRelationId &&
			 objectId == get_extension_oid("event_bridge", true))
	{
		db = eb_database_entry(MyDatabaseId, false);
		if (db != NULL)
			stop_workers(db);
	}
}

/*
 * DROP EXTENSION event_bridge (or DROP SCHEMA event_bridge) locks every
 * member object before it drops any, while the workers lock some of the
 * same tables: stop the workers first, or the two can deadlock.
 */
static void
eb_process_utility(PlannedStmt *pstmt, const char *queryString, bool readOnlyTree,
				   ProcessUtilityContext context, ParamListInfo params,
				   QueryEnvironment *queryEnv, DestReceiver *dest, QueryCompletion *qc)
{
	Node	   *parsetree = pstmt->utilityStmt;

	if (eb_shared != NULL && IsA(parsetree, DropStmt) &&
		(((DropStmt *) parsetree)->removeType == OBJECT_EXTENSION ||
		 ((DropStmt *) parsetree)->removeType == OBJECT_SCHEMA))
	{
		ListCell   *lc;

		foreach(lc, ((DropStmt *) parsetree)->objects)
		{
			Node	   *name = (Node *) lfirst(lc);
			EbDatabase *db;

			if (IsA(name, String) && strcmp(strVal(name), "event_bridge") == 0 &&
				(db = eb_database_entry(MyDatabaseId, false)) != NULL)
				stop_workers(db);
		}
	}

	if (prev_process_utility_hook)
		prev_process_utility_hook(pstmt, queryString, readOnlyTree, context,
								  params, queryEnv, dest, qc);
	else
		standard_ProcessUtility(pstmt, queryString, readOnlyTree, context,
								params, queryEnv, dest, qc);
}

void
_PG_init(void)
{
	DefineCustomStringVariable("event_bridge.region",
							   "Region written into the events' region field.",
							   NULL,
							   &eb_region,
							   "local",
							   PGC_SIGHUP,
							   0,
							   NULL, NULL, NULL);

	DefineCustomIntVariable("event_bridge.capture_buffer_kb",
							"Decoded records the capture worker keeps in memory before it spills them to a temporary file.",
							NULL,
							&eb_capture_buffer_kb,
							8192, 64, 1024 * 1024,
							PGC_SIGHUP,
							GUC_UNIT_KB,
							NULL, NULL, NULL);

	DefineCustomIntVariable("event_bridge.cleanup_interval",
							"Time between two passes that remove records past their stream's retention.",
							NULL,
							&eb_cleanup_interval_ms,
							10000, 100, 3600 * 1000,
							PGC_SIGHUP,
							GUC_UNIT_MS,
							NULL, NULL, NULL);

#ifdef EB_FAULT_INJECTION
	eb_define_fault_guc();
#endif

	MarkGUCPrefixReserved("event_bridge");

	if (!process_shared_preload_libraries_in_progress)
		return;

	eb_preloaded = true;

	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = eb_shmem_request;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = eb_shmem_startup;
	prev_object_access_hook = object_access_hook;
	object_access_hook = eb_object_access;
	prev_process_utility_hook = ProcessUtility_hook;
	ProcessUtility_hook = eb_process_utility;
	RegisterXactCallback(eb_xact_callback, NULL);
	eb_caller_init();

	eb_register_launcher();
}
