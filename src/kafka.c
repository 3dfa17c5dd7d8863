/*-------------------------------------------------------------------------
 *
 * kafka.c
 *	  The Kafka target (DESIGN 9.6): librdkafka producers driven by the
 *	  delivery worker from its own loop.
 *
 * A connector with target 'kafka' has one producer: idempotent
 * (enable.idempotence, acks=all), so that librdkafka's own retries neither
 * duplicate nor reorder the messages of a partition.  A batch of a shard is
 * produced as one message per event and is done when every message has its
 * delivery report; it succeeds only if every one succeeded, and only then
 * does the shard's offset move (delivery_catalog.c).  A batch that failed is
 * produced again whole, with the same event ids (at least once).
 *
 * librdkafka runs threads of its own; none of them calls back into this
 * process's code.  Delivery reports, errors and log lines go to the
 * producer's main queue (log.queue) and are served by kafka_poll, which the
 * worker calls from its loop; librdkafka writes a byte to a pipe when the
 * queue has something, which wakes the worker's wait.  The threads start with every signal
 * blocked, so PostgreSQL's signal handlers run in the worker's thread only.
 * Callbacks never raise an error: they record what happened in malloc'd
 * memory, and kafka_next_finished reports it.
 *
 * Failure classes (DESIGN 9.3): a message too large or invalid is a record
 * failure; an unknown topic, a refused authorization or authentication is
 * an endpoint failure; everything else (brokers down, not enough replicas,
 * a timeout) is transient and is retried by librdkafka, then by the worker.
 *
 * IDENTIFICATION
 *	  src/kafka.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <fcntl.h>
#include <signal.h>
#include <pthread.h>
#include <unistd.h>

#include <librdkafka/rdkafka.h>

#include "utils/timestamp.h"

#include "kafka.h"

/* A batch of messages in flight, in malloc'd memory. */
typedef struct KafkaBatch
{
	void	   *owner;			/* NULL: cancelled, forgotten when done */
	KafkaProducer *producer;
	int			pending;		/* messages without a delivery report yet */
	bool		failed;
	rd_kafka_resp_err_t err;	/* the first failure */
	char		error[EB_HTTP_ERROR_SIZE];
	TimestampTz started_at;
	struct KafkaBatch *next;	/* all batches in flight, or the finished ones */
} KafkaBatch;

struct KafkaProducer
{
	rd_kafka_t *rk;
	char	   *topic;
	char	   *settings;		/* every setting it was made with, for kafka_producer_usable */
	bool		refused;		/* a batch failed for the endpoint: make it anew to try again */
	bool		retired;		/* replaced: closed once its batches are done */
	KafkaProducer *next;
};

static KafkaProducer *producers = NULL;

/*
 * A pipe that librdkafka writes to when a producer's main queue gets
 * something to serve (rd_kafka_queue_io_event_enable): the worker's wait
 * watches its read end (http_watch_fd), so a delivery report wakes it.
 */
static int	wake_pipe[2] = {-1, -1};
static KafkaBatch *in_flight = NULL;

/* Set while a producer is destroyed: its batches were failed and may be freed. */
static bool destroying = false;
static KafkaBatch *finished = NULL;
static KafkaBatch *finished_tail = NULL;

/*
 * librdkafka's log lines, served by kafka_poll: warnings and worse go to the
 * server log, at most one a second (brokers that are down make one per
 * connection attempt); the count of those left out goes with the next.
 */
static void
log_callback(const rd_kafka_t *rk, int level, const char *facility, const char *message)
{
	static TimestampTz last = 0;
	static int	left_out = 0;
	TimestampTz now;
	char		line[512];

	if (level > 4)
		return;
	now = GetCurrentTimestamp();
	if (last != 0 && !TimestampDifferenceExceeds(last, now, 1000))
	{
		left_out++;
		return;
	}
	/* Brokers write some of it (names, SASL errors): one printable line, bounded. */
	snprintf(line, sizeof(line), "%s: %s", facility, message);
	http_make_printable(line);
	for (char *c = line; *c; c++)
		if (*c == '\n' || *c == '\t')
			*c = ' ';
	ereport(LOG,
			(errmsg("event_bridge kafka: %s", line),
			 left_out > 0 ? errdetail("%d more lines of librdkafka were left out in the second before.",
									  left_out) : 0));
	last = now;
	left_out = 0;
}

/* Moves a batch whose every message has its report to the finished list. */
static void
finish(KafkaBatch *b)
{
	KafkaBatch **p = &in_flight;

	while (*p != NULL && *p != b)
		p = &(*p)->next;
	if (*p == b)
		*p = b->next;
	b->next = NULL;
	if (b->owner == NULL)
	{
		free(b);
		return;
	}
	if (finished_tail != NULL)
		finished_tail->next = b;
	else
		finished = b;
	finished_tail = b;
}

static OutcomeClass error_class(rd_kafka_resp_err_t err);

/* Records a failure of some messages of a batch: the first one says why. */
static void
fail_messages(KafkaBatch *b, int count, rd_kafka_resp_err_t err, const char *why)
{
	/*
	 * librdkafka remembers a topic it was refused (authorization, unknown):
	 * after resume_connector a producer made anew asks again.
	 */
	if (error_class(err) == OUTCOME_ENDPOINT && b->producer != NULL)
		b->producer->refused = true;
	if (!b->failed)
	{
		b->failed = true;
		b->err = err;
		snprintf(b->error, sizeof(b->error), "Kafka: %s (%s)", why, rd_kafka_err2name(err));
	}
	b->pending -= count;
	if (b->pending <= 0)
		finish(b);
}

/* A delivery report, served by kafka_poll. */
static void
delivery_report(rd_kafka_t *rk, const rd_kafka_message_t *message, void *opaque)
{
	KafkaBatch *b = (KafkaBatch *) message->_private;

	if (b == NULL || destroying)
		return;
	if (message->err == RD_KAFKA_RESP_ERR__UNKNOWN_TOPIC ||
		message->err == RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART)
	{
		char		why[EB_HTTP_ERROR_SIZE];

		snprintf(why, sizeof(why), "topic \"%s\" does not exist", rd_kafka_topic_name(message->rkt));
		fail_messages(b, 1, message->err, why);
		return;
	}
	if (message->err != RD_KAFKA_RESP_ERR_NO_ERROR)
	{
		fail_messages(b, 1, message->err, rd_kafka_err2str(message->err));
		return;
	}
	if (--b->pending <= 0)
		finish(b);
}

/*
 * Every setting of a configuration in one malloc'd string (NULL if out of
 * memory), to tell whether a producer was made with it.
 */
static char *
settings_of(const KafkaConfig *c)
{
	const char *parts[] = {c->brokers, c->topic, c->security_protocol, c->sasl_mechanism,
	c->username, c->password, c->ca_pem};
	size_t		len = 32;
	char	   *s;

	for (int i = 0; i < lengthof(parts); i++)
		len += (parts[i] ? strlen(parts[i]) : 0) + 2;
	s = malloc(len);
	if (s == NULL)
		return NULL;
	snprintf(s, len, INT64_FORMAT, c->timeout_ms);
	for (int i = 0; i < lengthof(parts); i++)
	{
		strcat(s, parts[i] ? "\x01" : "\x02");
		if (parts[i])
			strcat(s, parts[i]);
	}
	return s;
}

/* Sets a configuration property; false and the reason in error if refused. */
static bool
set(rd_kafka_conf_t *conf, const char *name, const char *value, char *error, size_t errlen)
{
	if (value == NULL)
		return true;
	return rd_kafka_conf_set(conf, name, value, error, errlen) == RD_KAFKA_CONF_OK;
}

/*
 * Creates a producer; NULL and the reason in error if librdkafka refuses
 * the configuration.  Connects in the background.
 */
KafkaProducer *
kafka_producer_create(const KafkaConfig *config, char *error, size_t errlen)
{
	rd_kafka_conf_t *conf = rd_kafka_conf_new();
	char		timeout[32];
	char		propagation[32];
	KafkaProducer *p;
	rd_kafka_t *rk;
	sigset_t	all;
	sigset_t	old;

	snprintf(timeout, sizeof(timeout), INT64_FORMAT, Max(config->timeout_ms, 1));
	/*
	 * A topic the cluster does not know fails its messages with
	 * _UNKNOWN_TOPIC (an endpoint failure) after this long, before the
	 * message timeout (a transient one); the worker never waits for
	 * metadata itself.
	 */
	snprintf(propagation, sizeof(propagation), INT64_FORMAT,
			 Max(Min(config->timeout_ms / 2, 5000), 1));
	if (!set(conf, "bootstrap.servers", config->brokers, error, errlen) ||
		!set(conf, "client.id", "event_bridge", error, errlen) ||
		!set(conf, "enable.idempotence", "true", error, errlen) ||
		!set(conf, "acks", "all", error, errlen) ||
		!set(conf, "message.timeout.ms", timeout, error, errlen) ||
		!set(conf, "allow.auto.create.topics", "false", error, errlen) ||
		!set(conf, "topic.metadata.propagation.max.ms", propagation, error, errlen) ||
		/* A batch is produced at once: no need to wait for more, nor for ACKs. */
		!set(conf, "linger.ms", "1", error, errlen) ||
		!set(conf, "socket.nagle.disable", "true", error, errlen) ||
		/* bounded: one batch per shard is in flight */
		!set(conf, "queue.buffering.max.kbytes", "262144", error, errlen) ||
		/* the bytes bound it, not the count (100,000 by default: 16 shards of 10,000) */
		!set(conf, "queue.buffering.max.messages", "10000000", error, errlen) ||
		!set(conf, "log.queue", "true", error, errlen) ||
		!set(conf, "security.protocol", config->security_protocol, error, errlen) ||
		!set(conf, "sasl.mechanisms", config->sasl_mechanism, error, errlen) ||
		!set(conf, "sasl.username", config->username, error, errlen) ||
		!set(conf, "sasl.password", config->password, error, errlen) ||
		!set(conf, "ssl.ca.pem", config->ca_pem, error, errlen))
	{
		rd_kafka_conf_destroy(conf);
		return NULL;
	}
	rd_kafka_conf_set_dr_msg_cb(conf, delivery_report);
	rd_kafka_conf_set_log_cb(conf, log_callback);

	/* librdkafka's threads inherit this mask: no signal is handled on them. */
	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, &old);
	rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, error, errlen);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (rk == NULL)
		return NULL;			/* conf was freed */
	rd_kafka_set_log_queue(rk, NULL);
	if (wake_pipe[0] < 0)
	{
		if (pipe(wake_pipe) != 0)
			wake_pipe[0] = wake_pipe[1] = -1;
		else
		{
			fcntl(wake_pipe[0], F_SETFL, O_NONBLOCK);
			fcntl(wake_pipe[1], F_SETFL, O_NONBLOCK);
			http_watch_fd(wake_pipe[0]);
		}
	}
	if (wake_pipe[1] >= 0)
	{
		rd_kafka_queue_t *main_queue = rd_kafka_queue_get_main(rk);

		rd_kafka_queue_io_event_enable(main_queue, wake_pipe[1], "1", 1);
		rd_kafka_queue_destroy(main_queue);
	}

	p = calloc(1, sizeof(KafkaProducer));
	if (p == NULL || (p->topic = strdup(config->topic)) == NULL ||
		(p->settings = settings_of(config)) == NULL)
	{
		rd_kafka_destroy(rk);
		if (p != NULL)
			free(p->topic);
		free(p);
		snprintf(error, errlen, "out of memory");
		return NULL;
	}
	p->rk = rk;
	p->next = producers;
	producers = p;
	return p;
}

/*
 * Waits up to flush_ms for the messages in flight, then closes the producer.
 * Batches still in flight fail.
 */
void
kafka_producer_destroy(KafkaProducer *p, int flush_ms)
{
	KafkaProducer **pp = &producers;
	KafkaBatch *b;
	KafkaBatch *next;

	if (p == NULL)
		return;
	rd_kafka_flush(p->rk, flush_ms);
	rd_kafka_poll(p->rk, 0);
	for (b = in_flight; b != NULL; b = next)
	{
		next = b->next;
		if (b->producer == p)
			fail_messages(b, b->pending, RD_KAFKA_RESP_ERR__DESTROY,
						  "the producer was closed with messages in flight");
	}
	destroying = true;
	rd_kafka_destroy(p->rk);
	destroying = false;
	while (*pp != NULL && *pp != p)
		pp = &(*pp)->next;
	if (*pp == p)
		*pp = p->next;
	free(p->topic);
	free(p->settings);
	free(p);
}

/*
 * Can the producer go on sending for this configuration?  Not if it was made
 * for another (alter_connector, a rotated credential), nor after the
 * endpoint refused it (see fail_messages), nor after a fatal error (an idempotent producer that lost
 * track of its sequence numbers): then it must be made anew.
 */
bool
kafka_producer_usable(KafkaProducer *p, const KafkaConfig *config)
{
	char		why[256];
	char	   *settings = settings_of(config);
	bool		same = settings != NULL && strcmp(settings, p->settings) == 0;

	free(settings);
	if (!same || p->refused)
		return false;
	if (rd_kafka_fatal_error(p->rk, why, sizeof(why)) != RD_KAFKA_RESP_ERR_NO_ERROR)
	{
		ereport(LOG,
				(errmsg("event_bridge kafka: the producer of topic \"%s\" failed and is made anew: %s",
						p->topic, why)));
		return false;
	}
	return true;
}

/* A batch of owner's, of pending messages, now in flight. */
static KafkaBatch *
new_batch(void *owner, KafkaProducer *p, int pending)
{
	KafkaBatch *b = calloc(1, sizeof(KafkaBatch));

	if (b == NULL)
		elog(ERROR, "out of memory");
	b->owner = owner;
	b->producer = p;
	b->pending = pending;
	b->started_at = GetCurrentTimestamp();
	b->next = in_flight;
	in_flight = b;
	return b;
}

/*
 * Produces a batch of messages for owner; its outcome comes from
 * kafka_next_finished once every message has its delivery report (or at
 * once if producing failed).
 */
void
kafka_send(KafkaProducer *p, void *owner, const KafkaMessage *messages, int n)
{
	KafkaBatch *b = new_batch(owner, p, n);
	rd_kafka_resp_err_t err;

	for (int i = 0; i < n; i++)
	{
		const KafkaMessage *m = &messages[i];
		char		shard[16];
		char		sequence[24];

		snprintf(shard, sizeof(shard), "%d", m->shard_id);
		snprintf(sequence, sizeof(sequence), INT64_FORMAT, m->sequence);
		err = rd_kafka_producev(p->rk,
								RD_KAFKA_V_TOPIC(p->topic),
								RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
								RD_KAFKA_V_KEY(m->key, m->key ? strlen(m->key) : 0),
								RD_KAFKA_V_VALUE((void *) m->value, m->value_len),
								RD_KAFKA_V_HEADER("event_id", m->event_id, -1),
								RD_KAFKA_V_HEADER("stream", m->stream, -1),
								RD_KAFKA_V_HEADER("shard", shard, -1),
								RD_KAFKA_V_HEADER("sequence", sequence, -1),
								RD_KAFKA_V_HEADER("op", m->op, -1),
								RD_KAFKA_V_HEADER("table", m->table, -1),
								RD_KAFKA_V_OPAQUE(b),
								RD_KAFKA_V_END);
		if (err != RD_KAFKA_RESP_ERR_NO_ERROR)
		{
			/* Not queued: these and the rest fail now. */
			fail_messages(b, n - i, err, rd_kafka_err2str(err));
			return;
		}
	}
}

/*
 * Reports that owner's batch could not be sent at all (no producer could be
 * made: librdkafka refused its settings), as an endpoint failure.
 */
void
kafka_fail(void *owner, const char *why)
{
	fail_messages(new_batch(owner, NULL, 1), 1, RD_KAFKA_RESP_ERR__INVALID_ARG, why);
}

/* Forgets what owner sent: its outcome will not be reported. */
void
kafka_cancel(void *owner)
{
	for (KafkaBatch *b = in_flight; b != NULL; b = b->next)
		if (b->owner == owner)
			b->owner = NULL;
	for (KafkaBatch *b = finished; b != NULL; b = b->next)
		if (b->owner == owner)
			b->owner = NULL;
}

/*
 * Puts a producer aside (its connector's settings changed): it takes no
 * new batch, and kafka_poll closes it once its batches in flight are done,
 * so that they finish under the settings they were sent with.
 */
void
kafka_producer_retire(KafkaProducer *p)
{
	if (p != NULL)
		p->retired = true;
}

/* Has a producer batches in flight? */
static bool
producer_busy(const KafkaProducer *p)
{
	for (KafkaBatch *b = in_flight; b != NULL; b = b->next)
		if (b->producer == p)
			return true;
	return false;
}

/*
 * Closes the retired producers: those whose batches are done, or (at exit,
 * all) every one, waiting up to flush_ms for each one's batches.
 */
static void
close_retired(bool all, int flush_ms)
{
	KafkaProducer *next;

	for (KafkaProducer *p = producers; p != NULL; p = next)
	{
		next = p->next;
		if (p->retired && (all || !producer_busy(p)))
			kafka_producer_destroy(p, flush_ms);
	}
}

/*
 * Serves every producer's delivery reports, errors and log lines, without
 * waiting; closes the retired producers that are done.
 */
void
kafka_poll(void)
{
	char		drain[64];

	if (wake_pipe[0] >= 0)
		while (read(wake_pipe[0], drain, sizeof(drain)) > 0)
			;
	for (KafkaProducer *p = producers; p != NULL; p = p->next)
		rd_kafka_poll(p->rk, 0);
	close_retired(false, 0);
}

/* Closes every retired producer, waiting up to flush_ms for each one's batches (at exit). */
void
kafka_close_retired(int flush_ms)
{
	close_retired(true, flush_ms);
}

/* Is a batch waiting for delivery reports? */
bool
kafka_in_flight(void)
{
	return in_flight != NULL;
}

/* What the failure of a batch says (DESIGN 9.3). */
static OutcomeClass
error_class(rd_kafka_resp_err_t err)
{
	switch (err)
	{
		case RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE:
		case RD_KAFKA_RESP_ERR_INVALID_MSG:
		case RD_KAFKA_RESP_ERR_INVALID_RECORD:
		case RD_KAFKA_RESP_ERR_INVALID_MSG_SIZE:
			return OUTCOME_RECORD;
		case RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART:
		case RD_KAFKA_RESP_ERR__UNKNOWN_TOPIC:
		case RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED:
		case RD_KAFKA_RESP_ERR_CLUSTER_AUTHORIZATION_FAILED:
		case RD_KAFKA_RESP_ERR_TRANSACTIONAL_ID_AUTHORIZATION_FAILED:
		case RD_KAFKA_RESP_ERR_SASL_AUTHENTICATION_FAILED:
		case RD_KAFKA_RESP_ERR__AUTHENTICATION:
		case RD_KAFKA_RESP_ERR_TOPIC_EXCEPTION:
		case RD_KAFKA_RESP_ERR__INVALID_ARG:
			return OUTCOME_ENDPOINT;
		default:
			return OUTCOME_TRANSIENT;
	}
}

/*
 * The owner of a finished batch, and how it went in outcome; NULL when no
 * batch has finished.
 */
void *
kafka_next_finished(HttpOutcome *outcome)
{
	KafkaBatch *b = finished;
	void	   *owner;

	/* Cancelled after they finished: forgotten. */
	while (b != NULL && b->owner == NULL)
	{
		finished = b->next;
		free(b);
		b = finished;
	}
	if (b == NULL)
	{
		finished_tail = NULL;
		return NULL;
	}
	finished = b->next;
	if (finished == NULL)
		finished_tail = NULL;

	memset(outcome, 0, sizeof(HttpOutcome));
	outcome->ok = !b->failed;
	outcome->retry_after_ms = -1;
	outcome->started_at = b->started_at;
	outcome->elapsed_us = GetCurrentTimestamp() - b->started_at;
	if (b->failed)
	{
		outcome->class = error_class(b->err);
		outcome->answered = (outcome->class != OUTCOME_TRANSIENT);
		strlcpy(outcome->error, b->error, sizeof(outcome->error));
	}
	else
		outcome->answered = true;
	owner = b->owner;
	free(b);
	return owner;
}
