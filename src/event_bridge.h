/*-------------------------------------------------------------------------
 *
 * event_bridge.h
 *	  Declarations shared by the files of event_bridge: shared memory, the
 *	  workers' entry points and the capture state the output plugin fills.
 *
 * IDENTIFICATION
 *	  src/event_bridge.h
 *
 *-------------------------------------------------------------------------
 */
#ifndef EVENT_BRIDGE_H
#define EVENT_BRIDGE_H

#include "postgres.h"

#include "access/xlogdefs.h"
#include "port/atomics.h"
#include "storage/lwlock.h"
#include "utils/timestamp.h"

/* Databases that may have event_bridge workers at the same time. */
#define EB_MAX_DATABASES	64

/* Names derived from the database OID (slots and origins are cluster-wide). */
#define EB_SLOT_FORMAT				"event_bridge_%u"
#define EB_CAPTURE_ORIGIN_FORMAT	"event_bridge_capture_%u"
#define EB_DELIVERY_ORIGIN_FORMAT	"event_bridge_delivery_%u"

/* What a worker is, for the launcher and for wake-ups. */
typedef enum EbWorkerKind
{
	EB_WORKER_CAPTURE = 0,
	EB_WORKER_DELIVERY,
	EB_NUM_WORKER_KINDS
} EbWorkerKind;

/*
 * Shared memory, and who may touch what.  One LWLock, EbShared.lock, guards
 * the table of databases:
 *  - dboid is written under the lock held exclusively (an entry is taken by
 *    find_entry, freed by eb_database_release or the launcher); readers that
 *    hold no lock (a committing backend looking for its entry) check it again
 *    before they use an entry;
 *  - a worker slot's pid and procno are written under the lock held
 *    exclusively (eb_worker_attach, the exit callback); eb_wake_worker reads
 *    them without it: a stale pid at worst sets a latch for nothing;
 *  - no_extension, dropping_pid and sql_version_logged are read and written
 *    under the lock, except that the launcher and the workers read
 *    dropping_pid without it, a flag they look at again a second later;
 *  - slot_ready is written only by the database's capture worker (and its
 *    exit callback), a single byte; create_stream polls it without the lock.
 * The counters (wal_pending, records_epoch, connectors_epoch) are atomics and
 * need no lock; see their users for what each ordering relies on.
 */

/* One running worker: only its pid and PGPROC number live here. */
typedef struct EbWorkerSlot
{
	pid_t		pid;
	int			procno;
} EbWorkerSlot;

/*
 * Shared state of one database.  dboid is InvalidOid for a free entry.
 * no_extension is set by a worker that found no event_bridge extension; the
 * launcher then frees the entry once the workers are gone, and starts none
 * until CREATE EXTENSION or create_stream takes an entry again.  While
 * dropping_pid is set, a transaction is dropping the extension or the
 * database, and the launcher starts no workers there.
 */
typedef struct EbDatabase
{
	Oid			dboid;
	EbWorkerSlot workers[EB_NUM_WORKER_KINDS];
	bool		slot_ready;
	bool		no_extension;
	pid_t		dropping_pid;	/* a backend dropping the extension or database */
	bool		sql_version_logged; /* a worker said the SQL needs an update */
	pg_atomic_uint32 wal_pending;	/* a commit happened since the last read */
	pg_atomic_uint32 records_epoch; /* counts the capture worker's flushes */
	pg_atomic_uint32 connectors_epoch;	/* counts commits that changed connectors */
} EbDatabase;

typedef struct EbShared
{
	LWLock	   *lock;
	EbWorkerSlot launcher;
	EbDatabase	dbs[EB_MAX_DATABASES];
} EbShared;

extern EbShared *eb_shared;

/* GUCs */
extern char *eb_region;
extern int	eb_capture_buffer_kb;
extern int	eb_cleanup_interval_ms;

/* event_bridge.c */
extern bool eb_preloaded;
extern EbDatabase *eb_database_entry(Oid dboid, bool create);
extern EbDatabase *eb_database_want_workers(Oid dboid);
extern bool eb_database_release(EbDatabase *db);
extern void eb_wake_worker(EbWorkerSlot *slot);
extern void eb_worker_attach(EbWorkerSlot *slot);
extern void eb_wake_at_commit(EbWorkerKind kind);
extern void eb_worker_xact_begin(void);
extern void eb_worker_xact_commit(void);

/* fault.c: fault points of test builds */
#ifdef EB_FAULT_INJECTION
extern void eb_define_fault_guc(void);
extern void eb_fault(const char *name);
extern void eb_fault_error(const char *name, const char *subject);
#define EB_FAULT_POINT(name)	eb_fault(name)
#define EB_FAULT_ERROR(name)	eb_fault_error(name, NULL)
#define EB_FAULT_ERROR_FOR(name, subject)	eb_fault_error(name, subject)
#else
#define EB_FAULT_POINT(name)	((void) 0)
#define EB_FAULT_ERROR(name)	((void) 0)
#define EB_FAULT_ERROR_FOR(name, subject)	((void) 0)
#endif

/* retention.c: maintenance, run by the delivery worker */
extern void eb_maintenance(void);
extern void eb_trim_records(void);
extern void eb_drop_orphan_origins(void);

/* launcher.c */
extern PGDLLEXPORT void event_bridge_launcher_main(Datum main_arg);
extern void eb_register_launcher(void);

/* capture.c */
extern PGDLLEXPORT void event_bridge_capture_main(Datum main_arg);

/* event_bridge.c: shared by the workers of a database */
extern EbDatabase *eb_worker_start(Datum main_arg, EbWorkerKind kind);
extern bool eb_extension_installed(Oid *extension_oid, const char *worker);
extern void eb_wait_for_sql_version(EbDatabase *db, Oid *extension_oid, const char *worker);
extern void eb_exit_without_extension(EbDatabase *db, const char *worker) pg_attribute_noreturn();

/* api.c */
extern void eb_check_preloaded(void);

/* caller.c */
extern void eb_caller_init(void);
extern Oid	eb_api_caller(void);

/* delivery.c */
extern PGDLLEXPORT void event_bridge_delivery_main(Datum main_arg);

#endif							/* EVENT_BRIDGE_H */
