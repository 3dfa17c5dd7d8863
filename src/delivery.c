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
 * The files: this one has the loop and the model of connectors and shards
 * in memory; delivery_catalog.c the statements that load connectors and
 * record outcomes; delivery_read.c the reading of batches.
 *
 * IDENTIFICATION
 *	  src/delivery.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "commands/dbcommands.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "replication/origin.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "common/pg_prng.h"

#include "catalog.h"
#include "delivery.h"

/* Milliseconds between two looks at the catalog when nothing happens. */
#define EB_DELIVERY_CHECK_MS	1000

/* A request that finished, waiting to be recorded. */
typedef struct Finished
{
	Shard	   *shard;
	HttpOutcome outcome;
} Finished;

static DeliveryWorker worker;

/* ---------------------------------------------------------------------
 * Connectors in memory
 * ------------------------------------------------------------------- */

/*
 * Forgets the batch in hand of a shard, stopping its request if in flight.
 * Both kinds are stopped: a batch in flight finishes under the settings it
 * was sent with, and the connector's target may have changed since.
 */
void
delivery_drop_batch(Shard *sh)
{
	if (sh->in_flight)
	{
		kafka_cancel(sh);
		http_request_cancel(sh->request);
	}
	sh->in_flight = false;
	sh->slices = NULL;
	sh->nslices = 0;
	sh->has_batch = false;
	sh->redelivery = false;
	sh->sequences = NULL;
	sh->nfiltered = 0;
	sh->filtered = NULL;
	sh->not_before = 0;
	MemoryContextReset(sh->batch_context);
	memset(&sh->body, 0, sizeof(sh->body));
}

void
delivery_remove_connector(Connector *c)
{
	for (int i = 0; i < c->nshards; i++)
	{
		delivery_drop_batch(&c->shards[i]);
		http_request_free(c->shards[i].request);
		MemoryContextDelete(c->shards[i].batch_context);
	}
	if (c->shards != NULL)
		pfree(c->shards);
	kafka_producer_destroy(c->producer, 0);
	MemoryContextDelete(c->context);
	pfree(c);
}

void
delivery_create_shards(Connector *c, int nshards)
{
	c->nshards = nshards;
	c->shards = MemoryContextAllocZero(c->worker->context, sizeof(Shard) * nshards);
	for (int i = 0; i < nshards; i++)
	{
		Shard	   *sh = &c->shards[i];

		sh->connector = c;
		sh->shard_id = i;
		sh->retry_last = -1;
		sh->bisect_last = -1;
		sh->request = http_request_create(sh);
		sh->batch_context = AllocSetContextCreate(c->worker->context, "event_bridge batch",
												  ALLOCSET_DEFAULT_SIZES);
	}
}

/*
 * Milliseconds to wait before trying a batch again after its failures-th
 * consecutive failure: retry_interval ('fixed', DataHub's behaviour), or
 * with 'exponential' a random wait up to retry_interval * 2^(failures-1)
 * (full jitter), at most max_retry_interval.  A Retry-After the endpoint
 * sent (retry_after_ms, or -1) lengthens the wait, up to max_retry_interval.
 */
int64
delivery_retry_delay_ms(Connector *c, int failures, int64 retry_after_ms)
{
	int64		delay = c->retry_interval_ms;

	if (c->exponential)
	{
		int64		ceiling = c->retry_interval_ms;

		for (int i = 1; i < failures && ceiling < c->max_retry_interval_ms; i++)
			ceiling *= 2;
		ceiling = Min(ceiling, c->max_retry_interval_ms);
		delay = (int64) pg_prng_uint64_range(&pg_global_prng_state,
											 EB_MIN_RETRY_MS, Max(ceiling, EB_MIN_RETRY_MS));
	}
	if (retry_after_ms > delay)
		delay = Min(retry_after_ms, c->max_retry_interval_ms);
	return delay;
}

/* ---------------------------------------------------------------------
 * The loop
 * ------------------------------------------------------------------- */

/*
 * Produces a batch of a kafka connector, one message per slice of its body;
 * makes the connector's producer first if it has none (librdkafka refusing
 * its settings, say a CA that is no certificate, fails the batch as the
 * endpoint's fault).
 */
static void
send_kafka_batch(Shard *sh)
{
	Connector  *c = sh->connector;
	KafkaMessage *messages = palloc(sizeof(KafkaMessage) * Max(sh->nslices, 1));

	KafkaConfig config = {0};

	config.brokers = c->target.kafka_brokers;
	config.topic = c->target.kafka_topic;
	config.timeout_ms = c->timeout_ms;
	if (c->target.credential.provider != NULL)
	{
		const Credential *cr = &c->target.credential;

		config.security_protocol = cr->security_protocol;
		config.sasl_mechanism = cr->sasl_mechanism;
		config.username = cr->key_id;
		config.password = (cr->secret && cr->secret[0]) ? cr->secret : NULL;
		config.ca_pem = cr->ca_pem;
	}
	/*
	 * Changed by alter_connector, or broken: a new producer takes the new
	 * batches; the old one finishes those in flight, then is closed.
	 */
	if (c->producer != NULL && !kafka_producer_usable(c->producer, &config))
	{
		kafka_producer_retire(c->producer);
		c->producer = NULL;
	}
	if (c->producer == NULL)
	{
		char		error[256];

		c->producer = kafka_producer_create(&config, error, sizeof(error));
		if (c->producer == NULL)
		{
			/* Its settings are wrong: the connector is suspended, saying why. */
			kafka_fail(sh, psprintf("librdkafka refused the settings: %s", error));
			sh->in_flight = true;
			return;
		}
	}
	for (int i = 0; i < sh->nslices; i++)
	{
		EventSlice *sl = &sh->slices[i];
		KafkaMessage *m = &messages[i];

		m->key = sl->key;
		m->value = sh->body.data + sl->start;
		m->value_len = sl->len;
		m->event_id = psprintf("%d:" INT64_FORMAT, sh->shard_id, sl->sequence);
		m->stream = c->stream_name;
		m->shard_id = sh->shard_id;
		m->sequence = sl->sequence;
		m->op = event_op_name(sl->op);
		m->table = sl->table;
	}
	kafka_send(c->producer, sh, messages, sh->nslices);
	sh->in_flight = true;
}

/* Starts sending a shard's batch by HTTP. */
static void
send_http_batch(Shard *sh)
{
	Connector  *c = sh->connector;

	char	   *id = psprintf("msg_%d_%d_%d_" INT64_FORMAT "_" INT64_FORMAT, c->connector_id,
							  sh->generation, sh->shard_id, sh->first_sequence, sh->last_sequence);
	int			nsigned;
	char	  **signed_headers = target_headers(&c->target, id, sh->body.data, sh->body.len,
												GetCurrentTimestamp(), &nsigned);
	char	  **headers = palloc(sizeof(char *) * (c->nheaders + nsigned));

	/* Signed afresh for every attempt; the connector's own headers first. */
	memcpy(headers, c->headers, sizeof(char *) * c->nheaders);
	memcpy(headers + c->nheaders, signed_headers, sizeof(char *) * nsigned);

	/* The answer is read with the settings the batch was sent with. */
	http_request_keep_body(sh->request, c->partial_batch_response ? EB_PARTIAL_RESPONSE_MAX : 0);
	http_request_start(sh->request, &c->target.endpoint, headers, c->nheaders + nsigned,
					   sh->body.data, sh->body.len, c->timeout_ms);
	sh->in_flight = true;
}

/* Sends a shard's batch, by HTTP or to Kafka. */
static void
send_batch(Shard *sh)
{
	if (sh->connector->target.kind == TARGET_KAFKA)
		send_kafka_batch(sh);
	else
		send_http_batch(sh);
}

/* Flushes the Kafka producers as the worker exits (their batches are sent again later). */
static void
flush_producers(int code, Datum arg)
{
	ListCell   *lc;

	foreach(lc, worker.connectors)
	{
		Connector  *c = (Connector *) lfirst(lc);

		kafka_producer_destroy(c->producer, EB_KAFKA_FLUSH_MS);
		c->producer = NULL;
	}
	kafka_close_retired(EB_KAFKA_FLUSH_MS);
}

/* Appends the shards whose requests next_finished reports done, with their outcomes. */
static List *
collect_finished(List *finished, void *(*next_finished) (HttpOutcome *outcome))
{
	for (;;)
	{
		Finished   *f = palloc(sizeof(Finished));

		f->shard = (Shard *) next_finished(&f->outcome);
		if (f->shard == NULL)
			return finished;
		finished = lappend(finished, f);
	}
}

/* Does a connector in memory wait for a reload (version -1)? */
static bool
reload_pending(void)
{
	ListCell   *lc;

	foreach(lc, worker.connectors)
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
	if (sh->redeliver_pending && sh->retry_last < 0 && sh->bisect_last < 0)
		return true;
	if (sh->not_before != 0 && sh->not_before <= now)
		return true;
	return !(sh->drained && sh->drained_epoch == worker.turn_epoch);
}

/* delivery_read_batch's call, for eb_run_isolated. */
typedef struct ReadCall
{
	Shard	   *shard;
	TimestampTz now;
} ReadCall;

/*
 * Dead letters asked for again go first, between two batches of the shard
 * (not while a failed batch waits for its retry or is bisected).
 */
static void
read_call(void *arg)
{
	ReadCall   *call = (ReadCall *) arg;
	Shard	   *sh = call->shard;

	if (sh->redeliver_pending && sh->retry_last < 0 && sh->bisect_last < 0 &&
		delivery_read_redelivery(sh, call->now))
		return;
	delivery_read_batch(sh, call->now);
}

/*
 * Reads a shard's next batch in a subtransaction: a connector whose request
 * cannot be built goes to state ERROR, and the others keep delivering.
 * Must be called inside a transaction.
 */
static void
read_batch_isolated(Shard *sh, TimestampTz now)
{
	ReadCall	call = {sh, now};
	ErrorData  *edata = eb_run_isolated(read_call, &call);

	if (edata == NULL)
		return;
	delivery_drop_batch(sh);
	delivery_connector_failed(sh->connector, sh->connector->version, edata->message);
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
	uint32		connectors_epoch = pg_atomic_read_u32(&worker.db->connectors_epoch);
	bool		sync = connectors_epoch != worker.synced_connectors_epoch ||
		TimestampDifferenceExceeds(*last_sync, now, EB_DELIVERY_CHECK_MS) ||
		reload_pending();
	bool		read = false;
	ListCell   *lc;

	finished = collect_finished(finished, http_next_finished);
	kafka_poll();
	finished = collect_finished(finished, kafka_next_finished);

	/* Read before any snapshot of this turn: see Shard.drained. */
	worker.turn_epoch = pg_atomic_read_u32(&worker.db->records_epoch);
	pg_memory_barrier();
	foreach(lc, worker.connectors)
	{
		Connector  *c = (Connector *) lfirst(lc);

		for (int i = 0; i < c->nshards && !read; i++)
			read = wants_read(&c->shards[i], now);
	}

	if (sync || read || finished != NIL)
	{
		MemoryContext turn_context = CurrentMemoryContext;

		worker.turn_again = false;
		StartTransactionCommand();
		SPI_connect();
		PushActiveSnapshot(GetTransactionSnapshot());

		foreach(lc, finished)
		{
			f = (Finished *) lfirst(lc);
			delivery_record_outcome(f->shard, &f->outcome);
			http_request_forget_body(f->shard->request);
		}
		if (sync || reload_pending())
		{
			delivery_sync_connectors(&worker);
			worker.synced_connectors_epoch = connectors_epoch;
			*last_sync = now;
		}
		foreach(lc, worker.connectors)
		{
			Connector  *c = (Connector *) lfirst(lc);

			for (int i = 0; i < c->nshards; i++)
			{
				Shard	   *sh = &c->shards[i];

				if (wants_read(sh, now))
					read_batch_isolated(sh, now);
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
	foreach(lc, worker.connectors)
	{
		Connector  *c = (Connector *) lfirst(lc);

		/*
		 * A stopped connector, or one no longer sending to Kafka, keeps no
		 * connection to its brokers, once its batches are done.
		 */
		if (c->producer != NULL && (c->stopped || c->unusable || c->target.kind != TARGET_KAFKA))
		{
			kafka_producer_retire(c->producer);
			c->producer = NULL;
		}

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

	if (worker.turn_again)
		return 0;
	foreach(lc, worker.connectors)
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
		if (!eb_extension_installed(&worker.extension_oid, "delivery"))
			eb_exit_without_extension(worker.db, "delivery");
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

	worker.db = eb_worker_start(main_arg, EB_WORKER_DELIVERY);
	eb_wait_for_sql_version(worker.db, &worker.extension_oid, "delivery");
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

	worker.context = AllocSetContextCreate(TopMemoryContext, "event_bridge delivery",
										   ALLOCSET_DEFAULT_SIZES);
	loop_context = AllocSetContextCreate(TopMemoryContext, "event_bridge delivery turn",
										 ALLOCSET_DEFAULT_SIZES);
	StartTransactionCommand();
	worker.database_name = MemoryContextStrdup(worker.context, get_database_name(dboid));
	delivery_find_records_table();
	CommitTransactionCommand();
	http_init();
	before_shmem_exit(flush_producers, (Datum) 0);
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
			if (!eb_extension_installed(&worker.extension_oid, "delivery"))
				eb_exit_without_extension(worker.db, "delivery");
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

		/* librdkafka wakes the wait (kafka.c); a bound in case a wake-up is missed. */
		(void) http_wait(kafka_in_flight() ? Min(next_turn_ms(last_sync), EB_KAFKA_POLL_MS) :
						 next_turn_ms(last_sync), PG_WAIT_EXTENSION);
	}
}

