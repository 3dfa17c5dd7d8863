/*-------------------------------------------------------------------------
 *
 * delivery_catalog.c
 *	  The delivery worker's statements: loading connectors and their shards'
 *	  positions, and recording every attempt's outcome (a success moves the
 *	  offset, a failure schedules the retry or suspends the shard).
 *
 * Each statement changes a shard's row only while its position_generation
 * is the one the worker loaded: reset_connector bumps it, so a batch in
 * flight cannot undo a reset.  An attempt whose shard was reset meanwhile is
 * counted and logged but moves nothing ("stale").
 *
 * IDENTIFICATION
 *	  src/delivery_catalog.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/resowner.h"

#include "catalog.h"
#include "delivery.h"

/* Attempts kept per connector shard in event_bridge.connector_attempts. */
#define EB_ATTEMPTS_KEPT	100

static void set_connector_error(Connector *c, const char *error);

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
	STMT_SUSPEND_CONNECTOR,
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
		" c.stopped, c.version, c.max_request_bytes, c.error, c.retry_strategy,"
		" ceil(extract(epoch FROM c.max_retry_interval) * 1000)::bigint"
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
		" suspended = suspended OR failures + 1 >= $4, retry_last_sequence = $5,"
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
	/*
	 * The endpoint refused (401, 403, 404, 410, 3xx): every shard of the
	 * connector is suspended, with the reason.
	 */
	[STMT_SUSPEND_CONNECTOR] = {
		"UPDATE event_bridge.connector_shards SET suspended = true,"
		" last_error = $2, last_error_at = now()"
		" WHERE connector_id = $1 AND NOT suspended",
		2, {INT4OID, TEXTOID}
	},
	/* Why the worker cannot use a connector (NULL: it can), where the views show it. */
	[STMT_SET_ERROR] = {
		"UPDATE event_bridge.connectors SET error = $2"
		" WHERE connector_id = $1 AND error IS DISTINCT FROM $2",
		2, {INT4OID, TEXTOID}
	},
};


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
		delivery_drop_batch(sh);
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
	c->exponential = (strcmp(column_text(0, 17), "exponential") == 0);
	c->max_retry_interval_ms = Max(column_int64(0, 18), c->retry_interval_ms);
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
		delivery_create_shards(c, column_int32(0, 4));
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

/* load_connector's call, for eb_run_isolated. */
typedef struct LoadCall
{
	Connector  *connector;
	bool		exists;
} LoadCall;

static void
load_call(void *arg)
{
	LoadCall   *call = (LoadCall *) arg;

	call->exists = load_connector(call->connector);
}

/*
 * Puts a connector that the worker cannot use in state ERROR: the error goes
 * to the catalog, where the views show it, and the connector sends nothing
 * until its version moves (a connector function changed it).  Must be called
 * inside a transaction.
 */
void
delivery_connector_failed(Connector *c, int64 version, const char *error)
{
	c->unusable = true;
	c->version = version;
	if (c->name == NULL)
		c->name = MemoryContextStrdup(c->context, psprintf("%d", c->connector_id));
	ereport(WARNING,
			(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
			 errmsg("event_bridge connector \"%s\" cannot be used: %s", c->name, error),
			 errdetail("Its state is ERROR until it is changed; the other connectors go on.")));
	set_connector_error(c, error);
}

/*
 * Loads a connector (see load_connector) in a subtransaction, so that one
 * the worker cannot use (a forged row) goes to state ERROR and the others of
 * the database keep delivering.  Returns false if the connector no longer
 * exists.  Must be called inside a transaction.
 */
static bool
load_connector_isolated(Connector *c, int64 version)
{
	LoadCall	call = {c, true};
	ErrorData  *edata = eb_run_isolated(load_call, &call);

	if (edata == NULL)
		return call.exists;
	delivery_connector_failed(c, version, edata->message);
	return true;
}

/*
 * Brings the connectors in memory in line with the catalog: new ones are
 * loaded, changed ones reloaded, dropped ones removed with their requests.
 * Must be called inside a transaction.
 */
void
delivery_sync_connectors(DeliveryWorker *w)
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

	foreach(lc, w->connectors)
		((Connector *) lfirst(lc))->seen = false;
	for (uint64 i = 0; i < n; i++)
	{
		Connector  *c = NULL;

		foreach(lc, w->connectors)
		{
			if (((Connector *) lfirst(lc))->connector_id == ids[i])
				c = (Connector *) lfirst(lc);
		}
		if (c == NULL)
		{
			MemoryContext old = MemoryContextSwitchTo(w->context);

			c = palloc0(sizeof(Connector));
			c->connector_id = ids[i];
			c->version = -1;
			c->context = AllocSetContextCreate(w->context, "event_bridge connector",
											   ALLOCSET_SMALL_SIZES);
			c->worker = w;
			w->connectors = lappend(w->connectors, c);
			MemoryContextSwitchTo(old);
		}
		c->seen = (c->version == versions[i] || load_connector_isolated(c, versions[i]));
	}

	foreach(lc, w->connectors)
	{
		Connector  *c = (Connector *) lfirst(lc);

		if (!c->seen)
		{
			delivery_remove_connector(c);
			w->connectors = foreach_delete_current(w->connectors, lc);
		}
	}
}

/* Moves a shard's offset over records it skips.  Must be called inside a transaction. */
void
delivery_skip_records(Shard *sh, int64 last_skipped)
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
	delivery_drop_batch(sh);
}

/*
 * Records a shard's failed attempt: schedules the retry of the same batch,
 * or suspends the shard after max_retries consecutive failures, or at once
 * with suspend_now.  Must be called inside a transaction.
 */
void
delivery_record_failure(Shard *sh, const HttpOutcome *o, bool suspend_now)
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
		delivery_drop_batch(sh);
		return;
	}

	attempt = column_int64(0, 1);
	sh->suspended = column_bool(0, 2);
	sh->retry_last = sh->last_sequence;
	sh->drained = false;		/* the retry reads the batch again */
	sh->not_before = TimestampTzPlusMilliseconds(now, delivery_retry_delay_ms(c, column_int32(0, 3),
																			  o->retry_after_ms));
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
 * What a failed attempt says (DESIGN 9.3).  Transient: no whole answer, 408, 425,
 * 429 or 5xx, retried.  Endpoint: 3xx, 401, 403, 404, 410, the endpoint or
 * its credentials are wrong and no retry helps.  Record: any other 4xx, the
 * function refused what it was sent.
 */
typedef enum FailureClass
{
	FAILURE_TRANSIENT,
	FAILURE_ENDPOINT,
	FAILURE_RECORD
} FailureClass;

static FailureClass
failure_class(const HttpOutcome *o)
{
	long		status = o->status;

	/* No whole answer (a reset, a cut-off body, a timeout): transient. */
	if (!o->answered)
		return FAILURE_TRANSIENT;
	if (status == 0 || status == 408 || status == 425 || status == 429 || status >= 500)
		return FAILURE_TRANSIENT;
	if ((status >= 300 && status < 400) || status == 401 || status == 403 ||
		status == 404 || status == 410)
		return FAILURE_ENDPOINT;
	return FAILURE_RECORD;
}

/*
 * The endpoint refused: suspends every shard of the connector at once (the
 * failing shard through its attempt), with the reason in last_error.  Must
 * be called inside a transaction.
 */
static void
suspend_connector(Shard *sh, const HttpOutcome *o)
{
	Connector  *c = sh->connector;
	HttpOutcome failed = *o;
	Datum		values[2];

	snprintf(failed.error, sizeof(failed.error),
			 "%s: the endpoint refuses, so every shard is suspended", o->error);
	delivery_record_failure(sh, &failed, true);
	values[0] = Int32GetDatum(c->connector_id);
	values[1] = CStringGetTextDatum(failed.error);
	run(STMT_SUSPEND_CONNECTOR, values, NULL);
	for (int i = 0; i < c->nshards; i++)
		c->shards[i].suspended = true;
}

/*
 * Records how a shard's attempt went: a success, or a failure by its class.
 * Must be called inside a transaction.
 */
void
delivery_record_outcome(Shard *sh, const HttpOutcome *o)
{
	HttpOutcome failed;

	sh->in_flight = false;
	if (o->ok)
	{
		record_success(sh, o);
		return;
	}
	switch (failure_class(o))
	{
		case FAILURE_TRANSIENT:
			failed = *o;
			if (o->status != 429 && o->status != 503)
				failed.retry_after_ms = -1;		/* honoured on these only */
			delivery_record_failure(sh, &failed, false);
			break;
		case FAILURE_ENDPOINT:
			suspend_connector(sh, o);
			break;
		case FAILURE_RECORD:
			failed = *o;
			snprintf(failed.error, sizeof(failed.error),
					 "%s: the function refused the batch, so the shard is suspended", o->error);
			delivery_record_failure(sh, &failed, true);
			break;
	}
}

