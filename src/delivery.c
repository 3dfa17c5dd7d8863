/*-------------------------------------------------------------------------
 *
 * delivery.c
 *	  The delivery worker: one per database, it POSTs the records of every
 *	  connector's stream to the connector's endpoint, in order per shard, and
 *	  keeps each shard's offset, failures and attempts in the catalog.
 *
 * Terms.  A batch is up to batch_size consecutive records of one shard,
 * sent as one HTTP POST.  An attempt is one sending of a batch; it succeeds
 * with a 2xx answer.  A shard's offset (connector_shards.delivered_sequence)
 * is the last sequence it is done with.  Each shard has at most one batch
 * in hand, so at most one in flight; the shards of all connectors run
 * concurrently on one libcurl multi handle (http.c).
 *
 * Between turns, at most once per event_bridge.cleanup_interval, the worker
 * runs the maintenance of retention.c; its failure is logged and changes
 * nothing else.
 *
 * A turn of the loop: collect the finished requests; in one transaction,
 * record their outcomes (a success moves the offset), reload the connectors
 * whose version moved (when a connector function says one did), and read
 * the next batch of every idle shard that may have records; commit; then
 * start the requests.  A turn with nothing to record or read opens no
 * transaction.  Between turns the worker waits in http_wait for
 * the network, a timer or its latch, which the capture worker sets after
 * every commit of new records: new records are on their way within
 * milliseconds.  No transaction is open while requests run.
 *
 * No loss: batches are read from committed records after the committed
 * offset, and the offset moves only in the transaction that records the
 * 2xx.  After a crash the batch that was in flight is sent again, with the
 * same eventIds; it is the only possible duplicate.  The worker's
 * transactions run under the database's delivery replication origin, so
 * the capture worker never decodes them.
 *
 * Failures: a failed attempt (non-2xx, connection error, timeout) is tried
 * again with the same body after retry_interval; after max_retries
 * consecutive failures the shard is SUSPENDED until resume_connector.  The
 * failed batch's last sequence is stored with the failure, so that a retry
 * after a restart sends the same records.
 *
 * IDENTIFICATION
 *	  src/delivery.c
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
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "commands/dbcommands.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "replication/origin.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "tcop/tcopprot.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "catalog.h"
#include "event_bridge.h"
#include "format.h"
#include "http.h"

/* Attempts kept per connector shard in event_bridge.connector_attempts. */
#define EB_ATTEMPTS_KEPT	100

/* The least retry interval, as create_connector allows it. */
#define EB_MIN_RETRY_MS		10

/* Milliseconds between two looks at the catalog when nothing happens. */
#define EB_DELIVERY_CHECK_MS	1000

/* Milliseconds from 1970-01-01 to PostgreSQL's epoch, 2000-01-01. */
#define EB_EPOCH_OFFSET_MS \
	((int64) (POSTGRES_EPOCH_JDATE - UNIX_EPOCH_JDATE) * SECS_PER_DAY * 1000)

typedef struct Connector Connector;

/* A shard of a connector, as the worker drives it. */
typedef struct Shard
{
	Connector  *connector;
	int32		shard_id;
	bool		loaded;			/* the fields below come from the catalog */
	int64		delivered_sequence; /* the committed offset */
	int32		generation;		/* connector_shards.position_generation */
	int64		skip_before;	/* epoch ms; earlier records are skipped */
	int64		retry_last;		/* last sequence of the failed batch, or -1 */
	bool		suspended;
	HttpRequest *request;

	/* The batch in hand: read, in flight, or waiting for its retry. */
	bool		has_batch;
	bool		in_flight;
	int64		first_sequence;
	int64		last_sequence;
	int			nrecords;
	StringInfoData body;		/* in batch_context */
	MemoryContext batch_context;

	/* Not before this: the retry time, or the end of the batch window. */
	TimestampTz not_before;

	/*
	 * The last read took every record there was when the capture worker's
	 * flushes numbered drained_epoch: no read is needed until they number
	 * more, or until a failure or a reload clears it.
	 */
	bool		drained;
	uint32		drained_epoch;
} Shard;

/* A connector's configuration and shards. */
struct Connector
{
	int32		connector_id;
	int64		version;		/* -1: reload at the next turn */
	bool		seen;
	char	   *name;
	int32		stream_id;
	char	   *stream_name;
	HttpEndpoint endpoint;
	char	  **headers;		/* "Name: value" lines */
	int			nheaders;
	EbFormat	format;
	int			batch_size;
	int64		batch_window_ms;
	int64		retry_interval_ms;
	int			max_retries;
	int64		timeout_ms;
	int			max_request_bytes;	/* no body is larger */
	bool		stopped;
	bool		unusable;		/* could not be loaded: state ERROR */
	int			nshards;
	Shard	   *shards;
	MemoryContext context;		/* the configuration; reset at reload */
};

static void record_failure(Shard *sh, const HttpOutcome *o, bool suspend_now);
static void set_connector_error(Connector *c, const char *error);

/* A request that finished, waiting to be recorded. */
typedef struct Finished
{
	Shard	   *shard;
	HttpOutcome outcome;
} Finished;

/* The statements the worker runs, as saved SPI plans. */
typedef enum CatalogStatementId
{
	STMT_VERSIONS,
	STMT_CONNECTOR,
	STMT_SHARDS,
	STMT_SKIP,
	STMT_SUCCESS,
	STMT_FAILURE,
	STMT_STALE,
	STMT_LOG_ATTEMPT,
	STMT_SET_ERROR,
	NUM_STATEMENTS
} CatalogStatementId;

static EbStatement statements[NUM_STATEMENTS] = {
	[STMT_VERSIONS] = {
		"SELECT connector_id, version FROM event_bridge.connectors", 0
	},
	[STMT_CONNECTOR] = {
		"SELECT c.connector_name, c.stream_id, s.stream_name, s.shard_count, c.endpoint,"
		" c.format, c.batch_size,"
		" ceil(extract(epoch FROM c.batch_window) * 1000)::bigint,"
		" ceil(extract(epoch FROM c.retry_interval) * 1000)::bigint,"
		" c.max_retries,"
		" ceil(extract(epoch FROM c.timeout) * 1000)::bigint,"
		" ARRAY(SELECT e.key || ': ' || e.value FROM jsonb_each_text(c.headers) e ORDER BY e.key),"
		" c.stopped, c.version, c.max_request_bytes, c.error"
		" FROM event_bridge.connectors c JOIN event_bridge.streams s ON s.stream_id = c.stream_id"
		" WHERE c.connector_id = $1",
		1, {INT4OID}
	},
	[STMT_SHARDS] = {
		"SELECT shard_id, delivered_sequence, position_generation, skip_before, suspended,"
		" retry_last_sequence"
		" FROM event_bridge.connector_shards WHERE connector_id = $1",
		1, {INT4OID}
	},
	[STMT_SKIP] = {
		"UPDATE event_bridge.connector_shards SET delivered_sequence = $4"
		" WHERE connector_id = $1 AND shard_id = $2 AND position_generation = $3",
		4, {INT4OID, INT4OID, INT4OID, INT8OID}
	},
	/*
	 * A success moves the offset and logs the attempt in one statement: the
	 * cost of a batch is mostly per statement.
	 */
	[STMT_SUCCESS] = {
		"WITH s AS (UPDATE event_bridge.connector_shards SET delivered_sequence = $4,"
		" delivered = delivered + $5, failures = 0, retry_last_sequence = NULL,"
		" attempts = attempts + 1, last_attempt_at = $6, last_http_status = $7,"
		" last_success_at = $6, last_event_id = $8"
		" WHERE connector_id = $1 AND shard_id = $2 AND position_generation = $3"
		" RETURNING attempts),"
		" t AS (DELETE FROM event_bridge.connector_attempts"
		" WHERE connector_id = $1 AND shard_id = $2"
		" AND attempt = (SELECT attempts - " CppAsString2(EB_ATTEMPTS_KEPT) " FROM s))"
		" INSERT INTO event_bridge.connector_attempts (connector_id, shard_id, attempt,"
		" attempted_at, duration_ms, first_sequence, last_sequence, http_status, response)"
		" SELECT $1, $2, attempts, $9, $10, $11, $4, $7, $12 FROM s"
		" RETURNING attempt",
		12, {INT4OID, INT4OID, INT4OID, INT8OID, INT4OID, TIMESTAMPTZOID, INT4OID, TEXTOID,
		TIMESTAMPTZOID, FLOAT8OID, INT8OID, TEXTOID}
	},
	[STMT_FAILURE] = {
		"UPDATE event_bridge.connector_shards SET failures = failures + 1,"
		" suspended = (failures + 1 >= $4), retry_last_sequence = $5,"
		" attempts = attempts + 1, failed_attempts = failed_attempts + 1,"
		" last_attempt_at = $6, last_http_status = $7, last_error = $8, last_error_at = $6"
		" WHERE connector_id = $1 AND shard_id = $2 AND position_generation = $3"
		" RETURNING attempts, suspended, failures",
		8, {INT4OID, INT4OID, INT4OID, INT4OID, INT8OID, TIMESTAMPTZOID, INT4OID, TEXTOID}
	},
	[STMT_STALE] = {
		"UPDATE event_bridge.connector_shards SET attempts = attempts + 1,"
		" failed_attempts = failed_attempts + $3, last_attempt_at = $4, last_http_status = $5"
		" WHERE connector_id = $1 AND shard_id = $2"
		" RETURNING attempts",
		5, {INT4OID, INT4OID, INT4OID, TIMESTAMPTZOID, INT4OID}
	},
	/* Adds an attempt to the log and drops the oldest one kept. */
	[STMT_LOG_ATTEMPT] = {
		"WITH t AS (DELETE FROM event_bridge.connector_attempts"
		" WHERE connector_id = $1 AND shard_id = $2"
		" AND attempt = $3 - " CppAsString2(EB_ATTEMPTS_KEPT) ")"
		" INSERT INTO event_bridge.connector_attempts (connector_id, shard_id, attempt,"
		" attempted_at, duration_ms, first_sequence, last_sequence, http_status, error, response)"
		" VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
		10, {INT4OID, INT4OID, INT8OID, TIMESTAMPTZOID, FLOAT8OID, INT8OID, INT8OID, INT4OID,
		TEXTOID, TEXTOID}
	},
	/* Why the worker cannot use a connector (NULL: it can), where the views show it. */
	[STMT_SET_ERROR] = {
		"UPDATE event_bridge.connectors SET error = $2"
		" WHERE connector_id = $1 AND error IS DISTINCT FROM $2",
		2, {INT4OID, TEXTOID}
	},
};


static MemoryContext worker_context = NULL;
static List *connectors = NIL;
static EbDatabase *my_db = NULL;
static Oid	extension_oid = InvalidOid;
static char *database_name = NULL;

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

/* Set when a shard has more to read at once: the next wait does not sleep. */
static bool turn_again = false;

/* The capture worker's flush count, read as a turn starts (see Shard.drained). */
static uint32 turn_epoch = 0;

/* The count of connector changes when the worker last looked at them. */
static uint32 synced_connectors_epoch = 0;

/* ---------------------------------------------------------------------
 * Small helpers
 * ------------------------------------------------------------------- */

static int64
epoch_ms(TimestampTz t)
{
	return t / 1000 + EB_EPOCH_OFFSET_MS;
}

static TimestampTz
from_epoch_ms(int64 ms)
{
	return (ms - EB_EPOCH_OFFSET_MS) * 1000;
}

/* Runs one of the worker's statements (see eb_run). */
static uint64
run(CatalogStatementId id, Datum *values, const char *nulls)
{
	return eb_run(&statements[id], values, nulls);
}

/* A column of a row that SPI returned. */
static Datum
column(uint64 row, int attno, bool *isnull)
{
	return eb_result(row, attno, isnull);
}

static int64
column_int64(uint64 row, int attno)
{
	bool		isnull;
	Datum		d = column(row, attno, &isnull);

	return isnull ? -1 : DatumGetInt64(d);
}

static int32
column_int32(uint64 row, int attno)
{
	bool		isnull;
	Datum		d = column(row, attno, &isnull);

	return isnull ? -1 : DatumGetInt32(d);
}

static bool
column_isnull(uint64 row, int attno)
{
	bool		isnull;

	(void) column(row, attno, &isnull);
	return isnull;
}

static bool
column_bool(uint64 row, int attno)
{
	bool		isnull;
	Datum		d = column(row, attno, &isnull);

	return !isnull && DatumGetBool(d);
}

/* A text column as a string in the current memory context, or NULL. */
static char *
column_text(uint64 row, int attno)
{
	bool		isnull;
	Datum		d = column(row, attno, &isnull);

	return isnull ? NULL : TextDatumGetCString(d);
}

/* ---------------------------------------------------------------------
 * Connectors in memory
 * ------------------------------------------------------------------- */

/* Forgets the batch in hand of a shard, stopping its request if in flight. */
static void
drop_batch(Shard *sh)
{
	if (sh->in_flight)
		http_request_cancel(sh->request);
	sh->in_flight = false;
	sh->has_batch = false;
	sh->not_before = 0;
	MemoryContextReset(sh->batch_context);
	memset(&sh->body, 0, sizeof(sh->body));
}

static void
remove_connector(Connector *c)
{
	for (int i = 0; i < c->nshards; i++)
	{
		drop_batch(&c->shards[i]);
		http_request_free(c->shards[i].request);
		MemoryContextDelete(c->shards[i].batch_context);
	}
	if (c->shards != NULL)
		pfree(c->shards);
	MemoryContextDelete(c->context);
	pfree(c);
}

static void
create_shards(Connector *c, int nshards)
{
	c->nshards = nshards;
	c->shards = MemoryContextAllocZero(worker_context, sizeof(Shard) * nshards);
	for (int i = 0; i < nshards; i++)
	{
		Shard	   *sh = &c->shards[i];

		sh->connector = c;
		sh->shard_id = i;
		sh->retry_last = -1;
		sh->request = http_request_create(sh);
		sh->batch_context = AllocSetContextCreate(worker_context, "event_bridge batch",
												  ALLOCSET_DEFAULT_SIZES);
	}
}

/* Takes a shard's catalog row (STMT_SHARDS, row i) into memory. */
static void
load_shard(Connector *c, uint64 i)
{
	int32		shard_id = column_int32(i, 1);
	int32		generation = column_int32(i, 3);
	bool		suspended = column_bool(i, 5);
	Shard	   *sh;

	if (shard_id < 0 || shard_id >= c->nshards)
		return;
	sh = &c->shards[shard_id];
	if (!sh->loaded || generation != sh->generation)
	{
		/* Created or reset: start from the catalog's position. */
		drop_batch(sh);
		sh->delivered_sequence = column_int64(i, 2);
		sh->generation = generation;
		sh->retry_last = column_int64(i, 6);
		sh->loaded = true;
	}
	sh->skip_before = column_int64(i, 4);
	sh->drained = false;
	if (sh->suspended && !suspended)
		sh->not_before = 0;		/* resumed: retry at once */
	sh->suspended = suspended;
}

/*
 * Reads a connector's configuration and shards from the catalog.  Returns
 * false if the connector no longer exists.  Must be called inside a
 * transaction.
 */
static bool
load_connector(Connector *c)
{
	Datum		arg = Int32GetDatum(c->connector_id);
	MemoryContext old;
	ArrayType  *headers;
	Datum	   *lines;
	bool	   *line_nulls;
	int			nlines;
	bool		isnull;
	char	   *endpoint;
	char	   *format;
	const char *problem;
	bool		had_error;
	uint64		n;

	if (run(STMT_CONNECTOR, &arg, NULL) != 1)
		return false;

	MemoryContextReset(c->context);
	old = MemoryContextSwitchTo(c->context);
	c->name = column_text(0, 1);
	c->stream_id = column_int32(0, 2);
	c->stream_name = column_text(0, 3);
	endpoint = column_text(0, 5);
	format = column_text(0, 6);
	c->batch_size = column_int32(0, 7);
	c->batch_window_ms = column_int64(0, 8);
	c->retry_interval_ms = Max(column_int64(0, 9), EB_MIN_RETRY_MS);
	c->max_retries = column_int32(0, 10);
	c->timeout_ms = Max(column_int64(0, 11), 1);
	headers = DatumGetArrayTypeP(column(0, 12, &isnull));
	deconstruct_array(headers, TEXTOID, -1, false, TYPALIGN_INT, &lines, &line_nulls, &nlines);
	c->nheaders = nlines;
	c->headers = palloc(sizeof(char *) * Max(nlines, 1));
	for (int i = 0; i < nlines; i++)
	{
		/* A value that is no string; its name only: the value is a secret. */
		if (line_nulls[i])
			ereport(ERROR,
					(errcode(ERRCODE_DATA_CORRUPTED),
					 errmsg("a header value is not a string")));
		c->headers[i] = TextDatumGetCString(lines[i]);
	}
	c->stopped = column_bool(0, 13);
	c->version = column_int64(0, 14);
	c->max_request_bytes = column_int32(0, 15);
	had_error = !column_isnull(0, 16);
	if (!format_by_name(format, &c->format))
		ereport(ERROR,
				(errcode(ERRCODE_DATA_CORRUPTED),
				 errmsg("unknown event format \"%s\"", format)));
	problem = http_parse_endpoint(endpoint, &c->endpoint);
	if (problem != NULL)
		ereport(ERROR,
				(errcode(ERRCODE_DATA_CORRUPTED),
				 errmsg("the endpoint is not a valid URL: %s", problem)));
	if (c->shards != NULL && c->nshards != column_int32(0, 4))
		ereport(ERROR,
				(errcode(ERRCODE_DATA_CORRUPTED),
				 errmsg("the stream has %d shards, not %d", column_int32(0, 4), c->nshards)));
	if (c->shards == NULL)
		create_shards(c, column_int32(0, 4));
	MemoryContextSwitchTo(old);

	n = run(STMT_SHARDS, &arg, NULL);
	for (uint64 i = 0; i < n; i++)
		load_shard(c, i);
	c->unusable = false;
	if (had_error)
		set_connector_error(c, NULL);
	return true;
}

/* Stores why the worker cannot use a connector, or NULL when it can again. */
static void
set_connector_error(Connector *c, const char *error)
{
	Datum		values[2];
	char		nulls[2] = {' ', ' '};

	values[0] = Int32GetDatum(c->connector_id);
	values[1] = error ? CStringGetTextDatum(error) : (Datum) 0;
	nulls[1] = error ? ' ' : 'n';
	run(STMT_SET_ERROR, values, nulls);
}

/*
 * Loads a connector (see load_connector) in a subtransaction, so that one
 * the worker cannot use (a forged row, a request that cannot be built) goes
 * to state ERROR, with the error in the catalog, and the others of the
 * database keep delivering.  It is tried again when its version moves.
 * Returns false if the connector no longer exists.  Must be called inside a
 * transaction.
 */
static bool
load_connector_isolated(Connector *c, int64 version)
{
	MemoryContext caller = CurrentMemoryContext;
	ResourceOwner owner = CurrentResourceOwner;
	ErrorData  *volatile edata = NULL;
	volatile bool exists = true;

	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(caller);
	PG_TRY();
	{
		exists = load_connector(c);
		ReleaseCurrentSubTransaction();
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(caller);
		edata = CopyErrorData();
		FlushErrorState();
		RollbackAndReleaseCurrentSubTransaction();
	}
	PG_END_TRY();
	MemoryContextSwitchTo(caller);
	CurrentResourceOwner = owner;
	if (edata == NULL)
		return exists;

	c->unusable = true;
	c->version = version;
	c->name = MemoryContextStrdup(c->context, psprintf("%d", c->connector_id));
	ereport(WARNING,
			(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
			 errmsg("event_bridge connector %d cannot be used: %s", c->connector_id, edata->message),
			 errdetail("Its state is ERROR until it is changed; the other connectors go on.")));
	set_connector_error(c, edata->message);
	return true;
}

/*
 * Brings the connectors in memory in line with the catalog: new ones are
 * loaded, changed ones reloaded, dropped ones removed with their requests.
 * Must be called inside a transaction.
 */
static void
sync_connectors(void)
{
	uint64		n = run(STMT_VERSIONS, NULL, NULL);
	int32	   *ids = palloc(sizeof(int32) * Max(n, 1));
	int64	   *versions = palloc(sizeof(int64) * Max(n, 1));
	ListCell   *lc;

	/* Copy the rows: loading runs other statements. */
	for (uint64 i = 0; i < n; i++)
	{
		ids[i] = column_int32(i, 1);
		versions[i] = column_int64(i, 2);
	}

	foreach(lc, connectors)
		((Connector *) lfirst(lc))->seen = false;
	for (uint64 i = 0; i < n; i++)
	{
		Connector  *c = NULL;

		foreach(lc, connectors)
		{
			if (((Connector *) lfirst(lc))->connector_id == ids[i])
				c = (Connector *) lfirst(lc);
		}
		if (c == NULL)
		{
			MemoryContext old = MemoryContextSwitchTo(worker_context);

			c = palloc0(sizeof(Connector));
			c->connector_id = ids[i];
			c->version = -1;
			c->context = AllocSetContextCreate(worker_context, "event_bridge connector",
											   ALLOCSET_SMALL_SIZES);
			connectors = lappend(connectors, c);
			MemoryContextSwitchTo(old);
		}
		c->seen = (c->version == versions[i] || load_connector_isolated(c, versions[i]));
	}

	foreach(lc, connectors)
	{
		Connector  *c = (Connector *) lfirst(lc);

		if (!c->seen)
		{
			remove_connector(c);
			connectors = foreach_delete_current(connectors, lc);
		}
	}
}

/* ---------------------------------------------------------------------
 * Batches
 * ------------------------------------------------------------------- */

/* Moves a shard's offset over records it skips.  Must be called inside a transaction. */
static void
skip_records(Shard *sh, int64 last_skipped)
{
	Datum		values[4];

	values[0] = Int32GetDatum(sh->connector->connector_id);
	values[1] = Int32GetDatum(sh->shard_id);
	values[2] = Int32GetDatum(sh->generation);
	values[3] = Int64GetDatum(last_skipped);
	if (run(STMT_SKIP, values, NULL) == 1)
		sh->delivered_sequence = last_skipped;
	else
		sh->connector->version = -1;	/* reset meanwhile: reload */
}

/*
 * Finds event_bridge.records and the columns a batch needs, by name.  Must
 * be called inside a transaction.
 */
static void
find_records_table(void)
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
 * context.  Returns how many it read.
 *
 * What it reads is bounded by max_bytes, not by what users insert: it stops
 * after the record whose data and key take the total to max_bytes or more
 * (*full says so), and a record whose data alone is larger is not read at
 * all: its data is NULL and its size in *big_bytes.
 *
 * A plain scan of the primary key under the turn's snapshot: a batch is a
 * range of one index, and delivery reads one after every batch, so the
 * executor's per-statement work would cost more than the reading.  Must be
 * called inside a transaction, with the turn's snapshot active.
 */
static int
read_records(int32 stream_id, int32 shard_id, int64 after, int64 upto, int limit,
			 int64 max_bytes, FormatRecord *records, bool *full, int64 *big_bytes)
{
	Relation	rel;
	Relation	index;
	IndexScanDesc scan;
	TupleTableSlot *slot;
	ScanKeyData keys[4];
	int			n = 0;
	int64		bytes = 0;

	*full = false;

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

		r->sequence = DatumGetInt64(slot_getattr(slot, records_attnums[0], &isnull));
		r->system_time = DatumGetInt64(slot_getattr(slot, records_attnums[1], &isnull));
		d = slot_getattr(slot, records_attnums[2], &isnull);
		r->partition_key = isnull ? NULL : TextDatumGetCString(d);
		bytes += r->partition_key ? strlen(r->partition_key) : 0;
		d = slot_getattr(slot, records_attnums[3], &isnull);
		if ((int64) toast_raw_datum_size(d) > max_bytes)
		{
			r->data = NULL;
			*big_bytes = toast_raw_datum_size(d);
			*full = true;
			break;
		}
		r->data = TextDatumGetCString(d);
		bytes += strlen(r->data);
		if (bytes >= max_bytes)
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
 * connector's max_request_bytes; 0 if the first alone does not.  Counts
 * bytes exactly only for a batch that could be too big.
 */
static int
records_that_fit(Connector *c, const FormatBatch *batch)
{
	size_t		room = c->max_request_bytes - Min(format_envelope_max(batch),
												  (size_t) c->max_request_bytes);
	size_t		bound = 0;
	size_t		used = 0;

	for (int i = 0; i < batch->nrecords; i++)
	{
		const FormatRecord *r = &batch->records[i];

		if (r->data == NULL)
			break;
		bound += FORMAT_RECORD_MAX(strlen(r->data),
								   r->partition_key ? strlen(r->partition_key) : 0);
	}
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
	snprintf(o.error, sizeof(o.error),
			 "record %d:" INT64_FORMAT " is too big for a request of at most %d bytes (max_request_bytes)%s",
			 sh->shard_id, r->sequence, c->max_request_bytes,
			 r->data == NULL ? psprintf(": its data alone is " INT64_FORMAT " bytes", big_bytes) : "");
	o.started_at = now;
	sh->first_sequence = sh->last_sequence = r->sequence;
	sh->nrecords = 1;
	sh->in_flight = false;
	record_failure(sh, &o, true);
}

/*
 * Reads the next batch of an idle shard and builds its body.  Leaves the
 * shard idle if there are no records yet, or if the batch window asks to
 * wait for more.  Must be called inside a transaction.
 */
static void
read_batch(Shard *sh, TimestampTz now)
{
	Connector  *c = sh->connector;
	FormatRecord *records;
	FormatBatch batch;
	int			n;
	int			first = 0;
	bool		full;
	int64		big_bytes = 0;
	MemoryContext old;

	records = palloc(sizeof(FormatRecord) * c->batch_size);
	n = read_records(c->stream_id, sh->shard_id, sh->delivered_sequence,
					 sh->retry_last >= 0 ? sh->retry_last : PG_INT64_MAX,
					 c->batch_size, c->max_request_bytes, records, &full, &big_bytes);

	/*
	 * Fewer than asked for, and not for their size: every record there was
	 * (a batch window that holds them back reads again when it ends: see
	 * wants_read).
	 */
	sh->drained = (sh->retry_last < 0 && n < c->batch_size && !full);
	sh->drained_epoch = turn_epoch;
	if (n == 0)
		return;

	if (records[0].sequence != sh->delivered_sequence + 1)
		ereport(WARNING,
				(errcode(ERRCODE_DATA_CORRUPTED),
				 errmsg("event_bridge connector \"%s\" shard %d misses records " INT64_FORMAT " to " INT64_FORMAT,
						c->name, sh->shard_id, sh->delivered_sequence + 1, records[0].sequence - 1),
				 errdetail("They were removed before the connector delivered them.")));

	/* Records appended before the start time are skipped, not sent. */
	while (first < n && records[first].system_time < sh->skip_before)
		first++;
	if (first > 0)
	{
		skip_records(sh, records[first - 1].sequence);
		if (first == n)
		{
			turn_again = (n == c->batch_size);
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
	batch.database = database_name;
	batch.stream = c->stream_name;
	batch.region = eb_region;
	batch.shard_id = sh->shard_id;
	batch.now_ms = epoch_ms(now);
	batch.nrecords = n - first;
	batch.records = records + first;
	batch.nrecords = records_that_fit(c, &batch);
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

/* Starts sending a shard's batch. */
static void
send_batch(Shard *sh)
{
	Connector  *c = sh->connector;

	http_request_start(sh->request, &c->endpoint, c->headers, c->nheaders,
					   sh->body.data, sh->body.len, c->timeout_ms);
	sh->in_flight = true;
}

/*
 * Milliseconds to wait before trying a batch again after its failures-th
 * consecutive failure.  Constant for now; backoff would go here.
 */
static int64
retry_delay_ms(Connector *c, int failures)
{
	return c->retry_interval_ms;
}

/* ---------------------------------------------------------------------
 * Outcomes
 * ------------------------------------------------------------------- */

/* Adds an attempt to the attempts log and drops the oldest one kept. */
static void
log_attempt(Shard *sh, int64 attempt, const HttpOutcome *o)
{
	Datum		values[10];
	char		nulls[10];

	memset(nulls, ' ', sizeof(nulls));
	values[0] = Int32GetDatum(sh->connector->connector_id);
	values[1] = Int32GetDatum(sh->shard_id);
	values[2] = Int64GetDatum(attempt);
	values[3] = TimestampTzGetDatum(o->started_at);
	values[4] = Float8GetDatum(o->elapsed_us / 1000.0);
	values[5] = Int64GetDatum(sh->first_sequence);
	values[6] = Int64GetDatum(sh->last_sequence);
	values[7] = Int32GetDatum((int32) o->status);
	nulls[7] = (o->status == 0) ? 'n' : ' ';
	values[8] = CStringGetTextDatum(o->error);
	nulls[8] = (o->error[0] == '\0') ? 'n' : ' ';
	values[9] = CStringGetTextDatum(o->response);
	nulls[9] = (o->response[0] == '\0') ? 'n' : ' ';
	run(STMT_LOG_ATTEMPT, values, nulls);
}

/*
 * Records an attempt whose shard was reset (or dropped) while it ran: it
 * counts and is logged, but moves nothing.
 */
static int64
record_stale_outcome(Shard *sh, const HttpOutcome *o)
{
	Datum		values[5];
	char		nulls[5] = {' ', ' ', ' ', ' ', ' '};

	sh->connector->version = -1;
	values[0] = Int32GetDatum(sh->connector->connector_id);
	values[1] = Int32GetDatum(sh->shard_id);
	values[2] = Int32GetDatum(o->ok ? 0 : 1);
	values[3] = TimestampTzGetDatum(GetCurrentTimestamp());
	values[4] = Int32GetDatum((int32) o->status);
	nulls[4] = (o->status == 0) ? 'n' : ' ';
	return run(STMT_STALE, values, nulls) == 1 ? column_int64(0, 1) : 0;
}

/*
 * Records a shard's successful attempt: moves the offset and frees the shard
 * for its next batch.  Must be called inside a transaction.
 */
static void
record_success(Shard *sh, const HttpOutcome *o)
{
	Connector  *c = sh->connector;
	Datum		values[12];
	char		nulls[12];
	int64		attempt;

	memset(nulls, ' ', sizeof(nulls));
	values[0] = Int32GetDatum(c->connector_id);
	values[1] = Int32GetDatum(sh->shard_id);
	values[2] = Int32GetDatum(sh->generation);
	values[3] = Int64GetDatum(sh->last_sequence);
	values[4] = Int32GetDatum(sh->nrecords);
	values[5] = TimestampTzGetDatum(GetCurrentTimestamp());
	values[6] = Int32GetDatum((int32) o->status);
	nulls[6] = (o->status == 0) ? 'n' : ' ';
	values[7] = CStringGetTextDatum(psprintf("%d:" INT64_FORMAT,
											 sh->shard_id, sh->last_sequence));
	values[8] = TimestampTzGetDatum(o->started_at);
	values[9] = Float8GetDatum(o->elapsed_us / 1000.0);
	values[10] = Int64GetDatum(sh->first_sequence);
	values[11] = CStringGetTextDatum(o->response);
	nulls[11] = (o->response[0] == '\0') ? 'n' : ' ';
	if (run(STMT_SUCCESS, values, nulls) == 1)
	{
		sh->delivered_sequence = sh->last_sequence;
		sh->retry_last = -1;
	}
	else
	{
		attempt = record_stale_outcome(sh, o);
		if (attempt > 0)
			log_attempt(sh, attempt, o);
	}
	drop_batch(sh);
}

/*
 * Records a shard's failed attempt: schedules the retry of the same batch,
 * or suspends the shard after max_retries consecutive failures, or at once
 * with suspend_now.  Must be called inside a transaction.
 */
static void
record_failure(Shard *sh, const HttpOutcome *o, bool suspend_now)
{
	Connector  *c = sh->connector;
	Datum		values[8];
	char		nulls[8];
	TimestampTz now = GetCurrentTimestamp();
	int64		attempt;

	memset(nulls, ' ', sizeof(nulls));
	values[0] = Int32GetDatum(c->connector_id);
	values[1] = Int32GetDatum(sh->shard_id);
	values[2] = Int32GetDatum(sh->generation);
	values[3] = Int32GetDatum(suspend_now ? 0 : c->max_retries);
	values[4] = Int64GetDatum(sh->last_sequence);
	values[5] = TimestampTzGetDatum(now);
	values[6] = Int32GetDatum((int32) o->status);
	nulls[6] = (o->status == 0) ? 'n' : ' ';
	values[7] = CStringGetTextDatum(o->error);
	if (run(STMT_FAILURE, values, nulls) != 1)
	{
		attempt = record_stale_outcome(sh, o);
		if (attempt > 0)
			log_attempt(sh, attempt, o);
		drop_batch(sh);
		return;
	}

	attempt = column_int64(0, 1);
	sh->suspended = column_bool(0, 2);
	sh->retry_last = sh->last_sequence;
	sh->drained = false;		/* the retry reads the batch again */
	sh->not_before = TimestampTzPlusMilliseconds(now, retry_delay_ms(c, column_int32(0, 3)));
	if (sh->suspended)
		ereport(LOG,
				(suspend_now ?
				 errmsg("event_bridge connector \"%s\" shard %d is suspended",
						c->name, sh->shard_id) :
				 errmsg("event_bridge connector \"%s\" shard %d is suspended after %d consecutive failures",
						c->name, sh->shard_id, column_int32(0, 3)),
				 errdetail("The last error was: %s.", o->error),
				 errhint("Run SELECT event_bridge.resume_connector('%s') to retry.", c->name)));
	log_attempt(sh, attempt, o);
}

/*
 * Records how a shard's attempt went.  Must be called inside a transaction.
 */
static void
record_outcome(Shard *sh, const HttpOutcome *o)
{
	sh->in_flight = false;
	if (o->ok)
		record_success(sh, o);
	else
		record_failure(sh, o, false);
}

/* ---------------------------------------------------------------------
 * The loop
 * ------------------------------------------------------------------- */

/* Does a connector in memory wait for a reload (version -1)? */
static bool
reload_pending(void)
{
	ListCell   *lc;

	foreach(lc, connectors)
		if (((Connector *) lfirst(lc))->version == -1)
			return true;
	return false;
}

/* May a shard send (or read) now, as far as its connector and state go? */
static bool
shard_active(Shard *sh)
{
	Connector  *c = sh->connector;

	return sh->loaded && !sh->suspended && !c->stopped && !c->unusable;
}

/*
 * Does an idle shard need a read this turn?  Not if its last read took
 * every record there was and the capture worker has flushed none since,
 * unless its batch window has ended.
 */
static bool
wants_read(Shard *sh, TimestampTz now)
{
	if (sh->has_batch || !shard_active(sh))
		return false;
	if (sh->not_before != 0 && sh->not_before <= now)
		return true;
	return !(sh->drained && sh->drained_epoch == turn_epoch);
}

/*
 * One turn: record finished requests, read new batches, send what is due.
 * A turn opens a transaction only when it has something to record or read,
 * and looks at the connectors' catalog only when a connector changed (its
 * function counted a commit in connectors_epoch), when a stale outcome
 * asks for a reload, or every EB_DELIVERY_CHECK_MS.
 */
static void
delivery_turn(TimestampTz *last_sync)
{
	List	   *finished = NIL;
	Finished   *f;
	TimestampTz now = GetCurrentTimestamp();
	uint32		connectors_epoch = pg_atomic_read_u32(&my_db->connectors_epoch);
	bool		sync = connectors_epoch != synced_connectors_epoch ||
		TimestampDifferenceExceeds(*last_sync, now, EB_DELIVERY_CHECK_MS) ||
		reload_pending();
	bool		read = false;
	ListCell   *lc;

	for (;;)
	{
		f = palloc(sizeof(Finished));
		f->shard = (Shard *) http_next_finished(&f->outcome);
		if (f->shard == NULL)
			break;
		finished = lappend(finished, f);
	}

	/* Read before any snapshot of this turn: see Shard.drained. */
	turn_epoch = pg_atomic_read_u32(&my_db->records_epoch);
	pg_memory_barrier();
	foreach(lc, connectors)
	{
		Connector  *c = (Connector *) lfirst(lc);

		for (int i = 0; i < c->nshards && !read; i++)
			read = wants_read(&c->shards[i], now);
	}

	if (sync || read || finished != NIL)
	{
		MemoryContext turn_context = CurrentMemoryContext;

		turn_again = false;
		StartTransactionCommand();
		SPI_connect();
		PushActiveSnapshot(GetTransactionSnapshot());

		foreach(lc, finished)
		{
			f = (Finished *) lfirst(lc);
			record_outcome(f->shard, &f->outcome);
		}
		if (sync || reload_pending())
		{
			sync_connectors();
			synced_connectors_epoch = connectors_epoch;
			*last_sync = now;
		}
		foreach(lc, connectors)
		{
			Connector  *c = (Connector *) lfirst(lc);

			for (int i = 0; i < c->nshards; i++)
			{
				Shard	   *sh = &c->shards[i];

				if (wants_read(sh, now))
					read_batch(sh, now);
			}
		}

		SPI_finish();
		PopActiveSnapshot();
		if (finished != NIL)
			EB_FAULT_POINT("delivery-before-offset-commit");
		CommitTransactionCommand();
		MemoryContextSwitchTo(turn_context);
		pgstat_report_stat(false);
	}

	/* Committed: now the network. */
	now = GetCurrentTimestamp();
	foreach(lc, connectors)
	{
		Connector  *c = (Connector *) lfirst(lc);

		for (int i = 0; i < c->nshards; i++)
		{
			Shard	   *sh = &c->shards[i];

			if (sh->has_batch && !sh->in_flight && shard_active(sh) && sh->not_before <= now)
				send_batch(sh);
		}
	}
}

/* Milliseconds until the next turn is due without a wake-up. */
static long
next_turn_ms(TimestampTz last_sync)
{
	TimestampTz next = TimestampTzPlusMilliseconds(last_sync, EB_DELIVERY_CHECK_MS);
	TimestampTz now = GetCurrentTimestamp();
	ListCell   *lc;

	if (turn_again)
		return 0;
	foreach(lc, connectors)
	{
		Connector  *c = (Connector *) lfirst(lc);

		for (int i = 0; i < c->nshards; i++)
		{
			Shard	   *sh = &c->shards[i];

			if (sh->not_before != 0 && !sh->in_flight && shard_active(sh))
				next = Min(next, sh->not_before);
		}
	}
	return (long) Max((next - now + 999) / 1000, 0);
}

/*
 * Waits until the database's delivery origin exists (the capture worker
 * creates it) and runs this session's transactions under it, so that the
 * capture worker does not decode them.
 */
static void
use_delivery_origin(void)
{
	char	   *name = psprintf(EB_DELIVERY_ORIGIN_FORMAT, MyDatabaseId);

	for (;;)
	{
		RepOriginId origin;

		StartTransactionCommand();
		origin = replorigin_by_name(name, true);
		if (origin != InvalidRepOriginId)
		{
			replorigin_session_setup(origin);
			replorigin_session_origin = origin;
		}
		CommitTransactionCommand();
		if (origin != InvalidRepOriginId)
			return;

		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 EB_DELIVERY_CHECK_MS, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
		if (!eb_extension_installed(&extension_oid, "delivery"))
			eb_exit_without_extension(my_db, "delivery");
	}
}

void
event_bridge_delivery_main(Datum main_arg)
{
	Oid			dboid = DatumGetObjectId(main_arg);
	MemoryContext loop_context;
	TimestampTz last_sync = 0;
	TimestampTz last_check = GetCurrentTimestamp();
	TimestampTz last_maintenance = 0;

	my_db = eb_worker_start(main_arg, EB_WORKER_DELIVERY);
	eb_wait_for_sql_version(my_db, &extension_oid, "delivery");
	use_delivery_origin();

	/*
	 * Every statement of the worker looks rows up by key.  A plan made when
	 * the attempts log was small would trim it with a sequential scan, which
	 * then reads all its dead rows after every batch until vacuum comes.
	 *
	 * No JIT either: a scan that has to be sequential (the connectors'
	 * versions) now costs more than jit_above_cost, and compiling it took a
	 * fifth of the worker's CPU.  No statement here is big enough to gain.
	 */
	SetConfigOption("enable_seqscan", "off", PGC_SUSET, PGC_S_OVERRIDE);
	SetConfigOption("jit", "off", PGC_SUSET, PGC_S_OVERRIDE);

	worker_context = AllocSetContextCreate(TopMemoryContext, "event_bridge delivery",
										   ALLOCSET_DEFAULT_SIZES);
	loop_context = AllocSetContextCreate(TopMemoryContext, "event_bridge delivery turn",
										 ALLOCSET_DEFAULT_SIZES);
	StartTransactionCommand();
	database_name = MemoryContextStrdup(worker_context, get_database_name(dboid));
	find_records_table();
	CommitTransactionCommand();
	http_init();
	pgstat_report_activity(STATE_RUNNING, "delivering");

	for (;;)
	{
		MemoryContext old;

		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}
		if (TimestampDifferenceExceeds(last_check, GetCurrentTimestamp(), EB_DELIVERY_CHECK_MS))
		{
			if (!eb_extension_installed(&extension_oid, "delivery"))
				eb_exit_without_extension(my_db, "delivery");
			last_check = GetCurrentTimestamp();
		}

		old = MemoryContextSwitchTo(loop_context);
		delivery_turn(&last_sync);
		if (TimestampDifferenceExceeds(last_maintenance, GetCurrentTimestamp(),
									   eb_cleanup_interval_ms))
		{
			eb_maintenance();
			last_maintenance = GetCurrentTimestamp();
		}
		MemoryContextSwitchTo(old);
		MemoryContextReset(loop_context);

		(void) http_wait(next_turn_ms(last_sync), PG_WAIT_EXTENSION);
	}
}
