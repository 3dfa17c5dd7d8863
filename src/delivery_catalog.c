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
	STMT_PARTIAL,
	STMT_DEAD_LETTER,
	STMT_REDELIVERED,
	STMT_REDELIVERY_FAILED,
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
		" ceil(extract(epoch FROM c.max_retry_interval) * 1000)::bigint,"
		" c.on_failure, floor(extract(epoch FROM c.max_record_age) * 1000)::bigint,"
		" c.partial_batch_response, c.target, c.invocation = 'async',"
		" cr.provider, cr.key_id, cr.secret, cr.session_token, cr.region,"
		" c.filter, c.transform, c.key_transform,"
		" cr.options ->> 'security_protocol', cr.options ->> 'sasl_mechanism', cr.options ->> 'ca_pem'"
		" FROM event_bridge.connectors c JOIN event_bridge.streams s ON s.stream_id = c.stream_id"
		" LEFT JOIN event_bridge.credential_secrets cr ON cr.credential_id = c.credential_id"
		" WHERE c.connector_id = $1",
		1, {INT4OID}
	},
	[STMT_SHARDS] = {
		"SELECT cs.shard_id, cs.delivered_sequence, cs.position_generation, cs.skip_before,"
		" cs.suspended, cs.retry_last_sequence, cs.failures,"
		" EXISTS (SELECT FROM event_bridge.dead_letter_records d"
		" WHERE d.connector_id = cs.connector_id AND d.shard_id = cs.shard_id AND d.redeliver)"
		" FROM event_bridge.connector_shards cs WHERE cs.connector_id = $1",
		1, {INT4OID}
	},
	[STMT_SKIP] = {
		"UPDATE event_bridge.connector_shards SET delivered_sequence = $4,"
		" filtered = filtered + $5"
		" WHERE connector_id = $1 AND shard_id = $2 AND position_generation = $3",
		5, {INT4OID, INT4OID, INT4OID, INT8OID, INT4OID}
	},
	/*
	 * A success moves the offset and logs the attempt in one statement: the
	 * cost of a batch is mostly per statement.
	 */
	[STMT_SUCCESS] = {
		"WITH s AS (UPDATE event_bridge.connector_shards SET delivered_sequence = $4,"
		" delivered = delivered + $5, filtered = filtered + $13, failures = 0,"
		" retry_last_sequence = NULL, next_attempt_at = NULL, attempts = attempts + 1, last_attempt_at = $6, last_http_status = $7,"
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
		13, {INT4OID, INT4OID, INT4OID, INT8OID, INT4OID, TIMESTAMPTZOID, INT4OID, TEXTOID,
		TIMESTAMPTZOID, FLOAT8OID, INT8OID, TEXTOID, INT4OID}
	},
	/*
	 * A failure schedules the retry of the same batch, or suspends the shard
	 * after $4 consecutive ones; or, when the batch is split ($10), its
	 * halves start with no failures.
	 */
	[STMT_FAILURE] = {
		"UPDATE event_bridge.connector_shards"
		" SET failures = CASE WHEN $10 THEN 0 ELSE failures + 1 END,"
		" suspended = suspended OR failures + 1 >= $4,"
		" retry_last_sequence = CASE WHEN $10 THEN NULL ELSE $5 END,"
		" attempts = attempts + 1, failed_attempts = failed_attempts + 1,"
		" last_attempt_at = $6, last_http_status = $7, last_error = $8, last_error_at = $6,"
		" next_attempt_at = CASE WHEN $10 OR suspended OR failures + 1 >= $4 THEN NULL ELSE $9 END"
		" WHERE connector_id = $1 AND shard_id = $2 AND position_generation = $3"
		" RETURNING attempts, suspended, failures",
		10, {INT4OID, INT4OID, INT4OID, INT4OID, INT8OID, TIMESTAMPTZOID, INT4OID, TEXTOID,
		TIMESTAMPTZOID, BOOLOID}
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
	/*
	 * A partial batch response acknowledged the batch's first records: the
	 * offset moves past them; the attempt is recorded with the rest.
	 */
	[STMT_PARTIAL] = {
		"UPDATE event_bridge.connector_shards SET delivered_sequence = $4,"
		" delivered = delivered + $5, last_success_at = $6, last_event_id = $7, failures = 0,"
		" filtered = filtered + $8"
		" WHERE connector_id = $1 AND shard_id = $2 AND position_generation = $3",
		8, {INT4OID, INT4OID, INT4OID, INT8OID, INT4OID, TIMESTAMPTZOID, TEXTOID, INT4OID}
	},
	/*
	 * Records $4..$5 become dead letters (_add_dead_letters) and the offset
	 * moves past them, in one statement; nothing happens if the shard was
	 * reset meanwhile.
	 */
	[STMT_DEAD_LETTER] = {
		"WITH s AS (UPDATE event_bridge.connector_shards SET delivered_sequence = $5,"
		" failures = 0, retry_last_sequence = NULL, next_attempt_at = NULL,"
		" filtered = filtered + cardinality($11)"
		" WHERE connector_id = $1 AND shard_id = $2 AND position_generation = $3"
		" RETURNING 1)"
		" SELECT event_bridge._add_dead_letters($1, $10, $2, $4, $5, $6, $7, $8, $9, $11) FROM s",
		11, {INT4OID, INT4OID, INT4OID, INT8OID, INT8OID, TIMESTAMPTZOID, INT4OID, INT4OID,
		TEXTOID, INT4OID, INT8ARRAYOID}
	},
	/* Dead letters sent again and acknowledged leave. */
	[STMT_REDELIVERED] = {
		"DELETE FROM event_bridge.dead_letter_records"
		" WHERE connector_id = $1 AND shard_id = $2 AND sequence = ANY ($3) AND redeliver",
		3, {INT4OID, INT4OID, INT8ARRAYOID}
	},
	/* Dead letters sent again and refused stay, with the new outcome. */
	[STMT_REDELIVERY_FAILED] = {
		"UPDATE event_bridge.dead_letter_records SET redeliver = false,"
		" attempts = attempts + 1, failed_at = $4, http_status = $5, error = $6"
		" WHERE connector_id = $1 AND shard_id = $2 AND sequence = ANY ($3) AND redeliver",
		6, {INT4OID, INT4OID, INT8ARRAYOID, TIMESTAMPTZOID, INT4OID, TEXTOID}
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
		sh->bisect_last = -1;
		sh->bisect_failures = 0;
		sh->loaded = true;
	}
	sh->failures = column_int32(i, 7);
	sh->redeliver_pending = column_bool(i, 8);
	sh->skip_before = column_int64(i, 4);
	sh->drained = false;
	if (sh->suspended && !suspended)
		sh->not_before = 0;		/* resumed: retry at once */
	sh->suspended = suspended;
}

/*
 * Reads a connector's filter, transform and key transform (columns 29 to 31
 * of STMT_CONNECTOR's row), checked again, and gives a cloudevents body its
 * Content-Type.  Allocates in the current memory context.
 */
static void
load_rules(Connector *c)
{
	bool		isnull;
	Datum		d;

	c->filter = NULL;
	c->transform = NULL;
	d = column(0, 29, &isnull);
	if (!isnull)
	{
		c->filter = DatumGetJsonbPCopy(d);
		rules_check_filter(c->filter);
	}
	d = column(0, 30, &isnull);
	if (!isnull)
		c->transform = rules_prepare_transform(DatumGetJsonbPCopy(d));
	c->key_transform = NULL;
	d = column(0, 31, &isnull);
	if (!isnull)
		c->key_transform = rules_prepare_transform(DatumGetJsonbPCopy(d));
	/* Kafka messages are made one per event by event.c. */
	c->named_events = (c->format == EB_FORMAT_JSON || c->format == EB_FORMAT_CLOUDEVENTS ||
					   c->filter != NULL || c->transform != NULL ||
					   c->target.kind == TARGET_KAFKA);

	if (c->target.kind == TARGET_HTTP)
	{
		const char *type = event_content_type(c->format, c->transform != NULL);

		for (int i = 0; i < c->nheaders; i++)
			if (pg_strncasecmp(c->headers[i], "content-type:", 13) == 0)
				return;
		c->headers = repalloc(c->headers, sizeof(char *) * (c->nheaders + 1));
		c->headers[c->nheaders++] = psprintf("Content-Type: %s", type);
	}
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
	Credential	credential;
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
	c->dead_letter = (strcmp(column_text(0, 19), "dead_letter") == 0);
	c->max_record_age_ms = column_int64(0, 20);
	c->partial_batch_response = column_bool(0, 21);
	if (!format_by_name(format, &c->format))
		ereport(ERROR,
				(errcode(ERRCODE_DATA_CORRUPTED),
				 errmsg("unknown event format \"%s\"", format)));
	credential.provider = column_text(0, 24);
	credential.key_id = column_text(0, 25);
	credential.secret = column_text(0, 26);
	credential.session_token = column_text(0, 27);
	credential.region = column_text(0, 28);
	credential.security_protocol = column_text(0, 32);
	credential.sasl_mechanism = column_text(0, 33);
	credential.ca_pem = column_text(0, 34);
	problem = target_prepare(column_text(0, 22), endpoint, column_bool(0, 23), &credential,
							 &c->target);
	if (problem != NULL)
		ereport(ERROR,
				(errcode(ERRCODE_DATA_CORRUPTED),
				 errmsg("the connector's target cannot be used: %s", problem)));
	load_rules(c);
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
delivery_skip_records(Shard *sh, int64 last_skipped, int filtered)
{
	Datum		values[5];

	values[0] = Int32GetDatum(sh->connector->connector_id);
	values[1] = Int32GetDatum(sh->shard_id);
	values[2] = Int32GetDatum(sh->generation);
	values[3] = Int64GetDatum(last_skipped);
	values[4] = Int32GetDatum(filtered);
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
 * Ends a bisection once the offset has passed the batch that failed: the
 * shard goes back to whole batches.
 */
static void
end_bisection_if_done(Shard *sh)
{
	if (sh->bisect_last >= 0 && sh->delivered_sequence >= sh->bisect_last)
		sh->bisect_last = -1;
	if (sh->bisect_last < 0)
		sh->bisect_failures = 0;
}

/*
 * Records a shard's successful attempt: moves the offset and frees the shard
 * for its next batch.  Must be called inside a transaction.
 */
static void
record_success(Shard *sh, const HttpOutcome *o)
{
	Connector  *c = sh->connector;
	Datum		values[13];
	char		nulls[13];
	int64		attempt;

	memset(nulls, ' ', sizeof(nulls));
	values[0] = Int32GetDatum(c->connector_id);
	values[1] = Int32GetDatum(sh->shard_id);
	values[2] = Int32GetDatum(sh->generation);
	values[3] = Int64GetDatum(sh->last_sequence);
	values[4] = Int32GetDatum(sh->nrecords - sh->nfiltered);
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
	values[12] = Int32GetDatum(sh->nfiltered);
	if (run(STMT_SUCCESS, values, nulls) == 1)
	{
		sh->delivered_sequence = sh->last_sequence;
		sh->retry_last = -1;
		sh->failures = 0;
		end_bisection_if_done(sh);
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
 * A partial batch response acknowledged the first acked records of the
 * batch: the offset moves past them, the batch in hand becomes the rest,
 * and its failures start again (it made progress).  Returns false if the
 * shard was reset meanwhile.  Must be called inside a transaction.
 */
static bool
record_partial_success(Shard *sh, int acked)
{
	Connector  *c = sh->connector;
	int64		last = sh->first_sequence + acked - 1;
	Datum		values[8];
	int			filtered = 0;

	/* The filtered records among the acknowledged ones count as filtered. */
	while (filtered < sh->nfiltered && sh->filtered[filtered] <= last)
		filtered++;

	values[0] = Int32GetDatum(c->connector_id);
	values[1] = Int32GetDatum(sh->shard_id);
	values[2] = Int32GetDatum(sh->generation);
	values[3] = Int64GetDatum(last);
	values[4] = Int32GetDatum(acked - filtered);
	values[5] = TimestampTzGetDatum(GetCurrentTimestamp());
	values[6] = CStringGetTextDatum(psprintf("%d:" INT64_FORMAT, sh->shard_id, last));
	values[7] = Int32GetDatum(filtered);
	if (run(STMT_PARTIAL, values, NULL) != 1)
		return false;
	sh->nfiltered -= filtered;
	sh->filtered += filtered;
	sh->delivered_sequence = last;
	sh->first_sequence = last + 1;
	sh->nrecords -= acked;
	sh->failures = 0;
	return true;
}

/*
 * Records $first..$last of a shard (the batch in hand) as dead letters with
 * the outcome that failed them, and moves the offset past them.  attempts:
 * the failed attempts of the batches that held them.  Must be called inside
 * a transaction.
 */
void
delivery_record_dead_letters(Shard *sh, const HttpOutcome *o, int attempts)
{
	Connector  *c = sh->connector;
	Datum		values[11];
	char		nulls[11];
	Datum	   *filtered = palloc(sizeof(Datum) * Max(sh->nfiltered, 1));

	memset(nulls, ' ', sizeof(nulls));
	values[0] = Int32GetDatum(c->connector_id);
	values[1] = Int32GetDatum(sh->shard_id);
	values[2] = Int32GetDatum(sh->generation);
	values[3] = Int64GetDatum(sh->first_sequence);
	values[4] = Int64GetDatum(sh->last_sequence);
	values[5] = TimestampTzGetDatum(GetCurrentTimestamp());
	values[6] = Int32GetDatum(attempts);
	values[7] = Int32GetDatum((int32) o->status);
	nulls[7] = (o->status == 0) ? 'n' : ' ';
	values[8] = CStringGetTextDatum(o->error);
	values[9] = Int32GetDatum(c->stream_id);
	/* What the filter left out is no dead letter. */
	for (int i = 0; i < sh->nfiltered; i++)
		filtered[i] = Int64GetDatum(sh->filtered[i]);
	values[10] = PointerGetDatum(construct_array(filtered, sh->nfiltered, INT8OID, 8, true,
												 TYPALIGN_DOUBLE));
	if (run(STMT_DEAD_LETTER, values, nulls) != 1)
	{
		c->version = -1;		/* reset meanwhile: reload */
		delivery_drop_batch(sh);
		return;
	}
	ereport(LOG,
			(errmsg("event_bridge connector \"%s\" moved " INT64_FORMAT " record(s) of shard %d to the dead letters, from eventId %d:" INT64_FORMAT,
					c->name, column_int64(0, 1), sh->shard_id,
					sh->shard_id, sh->first_sequence),
			 errdetail("%s", o->error)));
	sh->delivered_sequence = sh->last_sequence;
	sh->retry_last = -1;
	sh->failures = 0;
	sh->drained = false;
	c->worker->turn_again = true;

	/*
	 * The failing record is found: whole batches again.  Another failing
	 * record among the rest fails its batch, which is bisected in turn.
	 */
	sh->bisect_last = -1;
	sh->bisect_failures = 0;
	delivery_drop_batch(sh);
}

/*
 * on_failure 'dead_letter' splits a failed batch of more than one record:
 * its first half is read and sent at once (the catalog's side is in the
 * failure's statement).
 */
static void
split_batch(Shard *sh)
{
	if (sh->bisect_last < sh->last_sequence)
		sh->bisect_last = sh->last_sequence;
	sh->bisect_size = (sh->nrecords + 1) / 2;
	sh->retry_last = -1;
	sh->connector->worker->turn_again = true;
	delivery_drop_batch(sh);
}

/*
 * Records a shard's failed attempt and what follows (see FailureAction): the
 * retry of the same batch after the strategy's wait, or on_failure: the
 * shard SUSPENDED, or the batch given up (split, or its record a dead
 * letter).  named: the function named the batch's first record as the one
 * that failed (a partial batch response).  Must be called inside a
 * transaction.
 */
void
delivery_record_failure(Shard *sh, const HttpOutcome *o, FailureAction action, bool named)
{
	Connector  *c = sh->connector;
	Datum		values[10];
	char		nulls[10];
	TimestampTz now = GetCurrentTimestamp();
	int32		suspend_after;
	int64		attempt;
	bool		give_up;
	bool		split;

	if (action == FAILURE_SUSPEND || (!c->dead_letter && action == FAILURE_GIVE_UP))
		suspend_after = 0;
	else if (!c->dead_letter)
		suspend_after = c->max_retries;
	else
		suspend_after = PG_INT32_MAX;	/* dead letters instead */

	/*
	 * With 'dead_letter', a batch given up on is split, or, a record alone
	 * (or the one the function named), becomes a dead letter.
	 */
	give_up = c->dead_letter && action != FAILURE_SUSPEND &&
		(action == FAILURE_GIVE_UP || sh->failures + 1 >= c->max_retries);
	split = give_up && sh->nrecords > 1 && !named;

	sh->not_before = TimestampTzPlusMilliseconds(now, delivery_retry_delay_ms(c, sh->failures + 1,
																			  o->retry_after_ms));
	memset(nulls, ' ', sizeof(nulls));
	values[0] = Int32GetDatum(c->connector_id);
	values[1] = Int32GetDatum(sh->shard_id);
	values[2] = Int32GetDatum(sh->generation);
	values[3] = Int32GetDatum(suspend_after);
	values[4] = Int64GetDatum(sh->last_sequence);
	values[5] = TimestampTzGetDatum(now);
	values[6] = Int32GetDatum((int32) o->status);
	nulls[6] = (o->status == 0) ? 'n' : ' ';
	values[7] = CStringGetTextDatum(o->error);
	values[8] = TimestampTzGetDatum(sh->not_before);
	values[9] = BoolGetDatum(split);
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
	sh->failures = column_int32(0, 3);
	sh->bisect_failures++;
	sh->retry_last = sh->last_sequence;
	sh->drained = false;		/* the retry reads the batch again */
	if (sh->suspended)
		ereport(LOG,
				(suspend_after == 0 ?
				 errmsg("event_bridge connector \"%s\" shard %d is suspended",
						c->name, sh->shard_id) :
				 errmsg("event_bridge connector \"%s\" shard %d is suspended after %d consecutive failures",
						c->name, sh->shard_id, sh->failures),
				 errdetail("The last error was: %s.", o->error),
				 errhint("Run SELECT event_bridge.resume_connector('%s') to retry.", c->name)));
	log_attempt(sh, attempt, o);

	if (split)
		split_batch(sh);
	else if (give_up)
	{
		sh->last_sequence = sh->first_sequence;
		sh->nrecords = 1;
		delivery_record_dead_letters(sh, o, Max(sh->bisect_failures, 1));
	}
}

/*
 * What a failed attempt says (DESIGN 9.3).  Transient: no whole answer, 408, 425,
 * 429, 5xx, or a function error in a 2xx (target.c), retried.  Endpoint: 3xx, 401, 403, 404, 410, the endpoint or
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

	switch (o->class)
	{
		case OUTCOME_TRANSIENT:
			return FAILURE_TRANSIENT;
		case OUTCOME_ENDPOINT:
			return FAILURE_ENDPOINT;
		case OUTCOME_RECORD:
			return FAILURE_RECORD;
		case OUTCOME_BY_STATUS:
			break;
	}

	/*
	 * No whole answer (a reset, a cut-off body, a timeout), or the platform
	 * ran the function and the function failed: transient.
	 */
	if (!o->answered || o->function_error)
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
 * failing shard through its attempt), with the reason in last_error.
 * Nothing becomes a dead letter for it.  Must be called inside a
 * transaction.
 */
static void
suspend_connector(Shard *sh, const HttpOutcome *o)
{
	Connector  *c = sh->connector;
	HttpOutcome failed = *o;
	Datum		values[2];

	snprintf(failed.error, sizeof(failed.error),
			 "%s: the endpoint refuses, so every shard is suspended", o->error);
	delivery_record_failure(sh, &failed, FAILURE_SUSPEND, false);
	values[0] = Int32GetDatum(c->connector_id);
	values[1] = CStringGetTextDatum(failed.error);
	run(STMT_SUSPEND_CONNECTOR, values, NULL);
	for (int i = 0; i < c->nshards; i++)
		c->shards[i].suspended = true;
}

/*
 * Records how dead letters sent again went: the acknowledged ones (the
 * first acked) leave, the others stay with the new outcome.  Must be called
 * inside a transaction.
 */
void
delivery_record_redelivery(Shard *sh, const HttpOutcome *o, int acked, const char *error)
{
	Connector  *c = sh->connector;
	Datum		values[6];
	char		nulls[6] = {' ', ' ', ' ', ' ', ' ', ' '};
	Datum	   *seqs = palloc(sizeof(Datum) * sh->nrecords);

	for (int i = 0; i < sh->nrecords; i++)
		seqs[i] = Int64GetDatum(sh->sequences[i]);
	values[0] = Int32GetDatum(c->connector_id);
	values[1] = Int32GetDatum(sh->shard_id);
	if (acked > 0)
	{
		values[2] = PointerGetDatum(construct_array(seqs, acked, INT8OID, 8, true, TYPALIGN_DOUBLE));
		run(STMT_REDELIVERED, values, NULL);
	}
	if (acked < sh->nrecords)
	{
		values[2] = PointerGetDatum(construct_array(seqs + acked, sh->nrecords - acked, INT8OID,
													8, true, TYPALIGN_DOUBLE));
		values[3] = TimestampTzGetDatum(GetCurrentTimestamp());
		values[4] = Int32GetDatum((int32) o->status);
		nulls[4] = (o->status == 0) ? 'n' : ' ';
		values[5] = CStringGetTextDatum(error);
		run(STMT_REDELIVERY_FAILED, values, nulls);
	}
	ereport(LOG,
			(errmsg("event_bridge connector \"%s\" sent %d dead letter(s) of shard %d again: %d acknowledged",
					c->name, sh->nrecords, sh->shard_id, acked)));
	sh->drained = false;
	delivery_drop_batch(sh);
}

/*
 * Records how a shard's attempt went: a success, a partial success (a
 * batchItemFailures answer), or a failure by its class.  Must be called
 * inside a transaction.
 */
void
delivery_record_outcome(Shard *sh, const HttpOutcome *o)
{
	HttpOutcome failed = *o;
	int			acked = o->ok ? sh->nrecords : 0;
	bool		named = false;

	sh->in_flight = false;
	/* A body kept: the batch was sent with partial_batch_response. */
	if (o->ok && o->body != NULL)
		acked = delivery_acknowledged(sh, o, &named, failed.error, sizeof(failed.error));
	if (sh->redelivery)
	{
		delivery_record_redelivery(sh, o, acked, failed.error);
		return;
	}
	if (o->ok && acked == sh->nrecords)
	{
		record_success(sh, o);
		return;
	}
	if (o->ok)
	{
		/* The function reported failed records: the rest is a failed batch. */
		if (acked > 0 && !record_partial_success(sh, acked))
		{
			sh->connector->version = -1;	/* reset meanwhile: reload */
			delivery_drop_batch(sh);
			return;
		}
		failed.retry_after_ms = -1;
		delivery_record_failure(sh, &failed, FAILURE_RETRY, named);
		/* Its body held the acknowledged records too: read the rest again. */
		if (acked > 0 && sh->has_batch)
		{
			TimestampTz not_before = sh->not_before;

			delivery_drop_batch(sh);
			sh->not_before = not_before;
		}
		return;
	}
	switch (failure_class(o))
	{
		case FAILURE_TRANSIENT:
			if (o->status != 429 && o->status != 503)
				failed.retry_after_ms = -1;		/* honoured on these only */
			delivery_record_failure(sh, &failed, FAILURE_RETRY, false);
			break;
		case FAILURE_ENDPOINT:
			suspend_connector(sh, o);
			break;
		case FAILURE_RECORD:
			snprintf(failed.error, sizeof(failed.error),
					 "%s: the function refused the batch", o->error);
			delivery_record_failure(sh, &failed, FAILURE_GIVE_UP, false);
			break;
	}
}
