/*-------------------------------------------------------------------------
 *
 * api.c
 *	  SQL-callable C functions behind the PL/pgSQL API: checks of the server
 *	  settings capture needs, and starting a database's capture worker.
 *
 * IDENTIFICATION
 *	  src/api.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "access/xlog.h"
#include "commands/dbcommands.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "storage/latch.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/varlena.h"

#include "event_bridge.h"

PG_FUNCTION_INFO_V1(event_bridge_prepare_capture);
PG_FUNCTION_INFO_V1(event_bridge_extension_created);

/* Seconds create_stream waits for the capture worker's slot. */
#define EB_SLOT_WAIT_SECONDS	60

/* Does a comma-separated setting name the library event_bridge? */
static bool
setting_lists_event_bridge(const char *value)
{
	char	   *copy = pstrdup(value ? value : "");
	List	   *names;
	ListCell   *lc;

	if (!SplitDirectoriesString(copy, ',', &names))
		return false;
	foreach(lc, names)
	{
		char	   *name = (char *) lfirst(lc);

		if (strcmp(name, "event_bridge") == 0 || strcmp(name, "$libdir/event_bridge") == 0)
			return true;
	}
	return false;
}

/* The postgresql.conf line that adds event_bridge to a list setting. */
static char *
line_with_event_bridge(const char *setting, const char *value)
{
	if (value == NULL || value[0] == '\0')
		return psprintf("%s = 'event_bridge'", setting);
	return psprintf("%s = '%s, event_bridge'", setting, value);
}

/* Refuses, with the exact line to add, when the library is not preloaded. */
void
eb_check_preloaded(void)
{
	if (!eb_preloaded)
	{
		const char *spl = GetConfigOption("shared_preload_libraries", false, false);

		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("event_bridge is not loaded by shared_preload_libraries"),
				 errhint("Add %s to postgresql.conf and restart the server.",
						 line_with_event_bridge("shared_preload_libraries", spl))));
	}
}

/* Refuses, with the exact line to add, when a setting capture needs is missing. */
static void
check_settings(void)
{
	const char *opl;

	eb_check_preloaded();
	if (wal_level < WAL_LEVEL_LOGICAL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("event_bridge needs wal_level logical"),
				 errhint("Add wal_level = logical to postgresql.conf and restart the server.")));

	opl = GetConfigOption("output_plugin_libraries", true, false);
	if (opl != NULL && !setting_lists_event_bridge(opl))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("output_plugin_libraries does not allow the event_bridge output plugin"),
				 errhint("Add %s to postgresql.conf and reload the server.",
						 line_with_event_bridge("output_plugin_libraries", opl))));
}

/* Does the database's capture worker run and hold its slot? */
static bool
capture_ready(EbDatabase *db)
{
	return db->slot_ready && db->workers[EB_WORKER_CAPTURE].pid != 0;
}

/*
 * Checks the settings, has the launcher start this database's capture worker
 * and waits until that worker holds its replication slot.  A stream created
 * afterwards captures the changes made after it in its own transaction and
 * every transaction that commits later, because the slot's start point
 * precedes the stream's creation.  The worker starts when CREATE EXTENSION
 * commits, so the slot normally exists by the first create_stream; if not,
 * a transaction that has already written cannot wait for it (the slot's
 * creation waits for every transaction that has written) and is refused.
 */
Datum
event_bridge_prepare_capture(PG_FUNCTION_ARGS)
{
	EbDatabase *db;

	check_settings();

	/* Ready: no need to wake the launcher (it frees no entry with a worker). */
	db = eb_database_entry(MyDatabaseId, false);
	if (db != NULL && capture_ready(db))
		PG_RETURN_VOID();

	db = eb_database_want_workers(MyDatabaseId);
	if (db == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
				 errmsg("event_bridge serves at most %d databases", EB_MAX_DATABASES)));

	if (capture_ready(db))
		PG_RETURN_VOID();

	/*
	 * The slot's creation waits for every transaction that has written, so
	 * this one cannot wait for it.  Capture is started when CREATE EXTENSION
	 * commits, so this happens only in that transaction or just after it.
	 */
	if (GetTopTransactionIdIfAny() != InvalidTransactionId)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("the replication slot of event_bridge in database \"%s\" is still being created",
						get_database_name(MyDatabaseId)),
				 errdetail("The capture worker starts when CREATE EXTENSION commits, and creating its slot waits for every transaction that has written, this one included."),
				 errhint("Run SELECT event_bridge.wait_for_capture(); once after CREATE EXTENSION has committed, then run this transaction again.")));

	for (int i = 0; i < EB_SLOT_WAIT_SECONDS * 100; i++)
	{
		if (capture_ready(db))
			PG_RETURN_VOID();
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 10L, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
	}

	ereport(ERROR,
			(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
			 errmsg("event_bridge capture worker of database \"%s\" did not start",
					get_database_name(MyDatabaseId)),
			 errhint("Check max_worker_processes, max_replication_slots and the server log.")));
	PG_RETURN_VOID();
}

/*
 * Called at the end of CREATE EXTENSION: once it commits, the launcher
 * starts this database's workers, so that a restored or new database
 * captures without waiting for its first create_stream.
 */
Datum
event_bridge_extension_created(PG_FUNCTION_ARGS)
{
	eb_wake_at_commit(EB_WORKER_CAPTURE);
	PG_RETURN_VOID();
}
