/*
 * test/kafka/mock_cluster.c: a Kafka cluster for tests, librdkafka's own
 * mock cluster (rdkafka_mock.h) run as a program.
 *
 *   mock_cluster --brokers N --topic T --partitions P --bootstrap-file F
 *
 * Starts N brokers on 127.0.0.1 (ids 1..N), creates topic T (or the topics
 * of a comma-separated list) with P partitions (replication factor
 * min(N, 3)), writes the bootstrap servers
 * ("127.0.0.1:port,...") to F (a temporary file renamed, so a reader never
 * sees a partial one), then reads commands from standard input, one per
 * line, and answers "ok" or "error ..." on standard output:
 *
 *   down B              broker B stops answering (its connections close)
 *   up B                broker B is back
 *   rtt B MS            broker B answers after MS milliseconds
 *   errors API N ERR    the next N requests of API key API (0 = Produce)
 *                       fail with error code ERR (e.g. 19
 *                       NOT_ENOUGH_REPLICAS, 10 MSG_SIZE_TOO_LARGE, 29
 *                       TOPIC_AUTHORIZATION_FAILED); with N = 0, the
 *                       errors still queued for API are cleared
 *   topic-error T ERR   topic T's metadata says error ERR (0: clear)
 *   quit                stop
 *
 * It also stops at the end of standard input and on SIGTERM.  Only for
 * tests: no security, data in memory.
 */
#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static volatile sig_atomic_t stop = 0;

static void
on_signal(int sig)
{
	(void) sig;
	stop = 1;
}

static void
usage(void)
{
	fprintf(stderr, "usage: mock_cluster --brokers N --topic T --partitions P --bootstrap-file F\n");
	exit(2);
}

/* Runs one command line; returns 0 to go on, 1 to stop. */
static int
command(rd_kafka_mock_cluster_t *mc, char *line)
{
	char		what[32] = "";
	char		name[256] = "";
	int			a = 0, b = 0, c = 0;
	rd_kafka_resp_err_t err = RD_KAFKA_RESP_ERR_NO_ERROR;

	if (sscanf(line, "%31s", what) != 1)
		return 0;
	if (strcmp(what, "quit") == 0)
		return 1;
	if (strcmp(what, "down") == 0 && sscanf(line, "%*s %d", &a) == 1)
		err = rd_kafka_mock_broker_set_down(mc, a);
	else if (strcmp(what, "up") == 0 && sscanf(line, "%*s %d", &a) == 1)
		err = rd_kafka_mock_broker_set_up(mc, a);
	else if (strcmp(what, "rtt") == 0 && sscanf(line, "%*s %d %d", &a, &b) == 2)
		err = rd_kafka_mock_broker_set_rtt(mc, a, b);
	else if (strcmp(what, "errors") == 0 && sscanf(line, "%*s %d %d %d", &a, &b, &c) == 3)
	{
		if (b == 0)
			rd_kafka_mock_clear_request_errors(mc, (int16_t) a);
		for (int i = 0; i < b; i++)
			rd_kafka_mock_push_request_errors(mc, (int16_t) a, 1, (rd_kafka_resp_err_t) c);
	}
	else if (strcmp(what, "topic-error") == 0 && sscanf(line, "%*s %255s %d", name, &a) == 2)
		rd_kafka_mock_topic_set_error(mc, name, (rd_kafka_resp_err_t) a);
	else
	{
		printf("error unknown command: %s", line);
		fflush(stdout);
		return 0;
	}
	if (err != RD_KAFKA_RESP_ERR_NO_ERROR)
		printf("error %s\n", rd_kafka_err2str(err));
	else
		printf("ok\n");
	fflush(stdout);
	return 0;
}

int
main(int argc, char **argv)
{
	int			brokers = 1, partitions = 1;
	const char *topic = NULL, *file = NULL;
	char		errstr[512];
	char		tmp[4096];
	char		line[1024];
	rd_kafka_conf_t *conf;
	rd_kafka_t *rk;
	rd_kafka_mock_cluster_t *mc;
	FILE	   *f;

	for (int i = 1; i + 1 < argc; i += 2)
	{
		if (strcmp(argv[i], "--brokers") == 0)
			brokers = atoi(argv[i + 1]);
		else if (strcmp(argv[i], "--topic") == 0)
			topic = argv[i + 1];
		else if (strcmp(argv[i], "--partitions") == 0)
			partitions = atoi(argv[i + 1]);
		else if (strcmp(argv[i], "--bootstrap-file") == 0)
			file = argv[i + 1];
		else
			usage();
	}
	if (topic == NULL || file == NULL || brokers < 1 || partitions < 1)
		usage();

	/* The mock cluster runs on the threads of a client handle of its own. */
	conf = rd_kafka_conf_new();
	rd_kafka_conf_set(conf, "log_level", "3", errstr, sizeof(errstr));
	/* Replies go out at once: no 40 ms wait for delayed ACKs. */
	rd_kafka_conf_set(conf, "socket.nagle.disable", "true", errstr, sizeof(errstr));
	rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof(errstr));
	if (rk == NULL)
	{
		fprintf(stderr, "mock_cluster: %s\n", errstr);
		return 1;
	}
	mc = rd_kafka_mock_cluster_new(rk, brokers);
	if (mc == NULL)
	{
		fprintf(stderr, "mock_cluster: could not start the cluster\n");
		return 1;
	}
	{
		char	   *topics = strdup(topic);
		char	   *save = NULL;

		for (char *t = strtok_r(topics, ",", &save); t != NULL; t = strtok_r(NULL, ",", &save))
		{
			if (rd_kafka_mock_topic_create(mc, t, partitions, brokers < 3 ? brokers : 3))
			{
				fprintf(stderr, "mock_cluster: could not create topic %s\n", t);
				return 1;
			}
		}
		free(topics);
	}

	snprintf(tmp, sizeof(tmp), "%s.tmp.%d", file, (int) getpid());
	f = fopen(tmp, "w");
	if (f == NULL || fprintf(f, "%s\n", rd_kafka_mock_cluster_bootstraps(mc)) < 0 ||
		fclose(f) != 0 || rename(tmp, file) != 0)
	{
		perror("mock_cluster: bootstrap file");
		return 1;
	}

	{
		/* No SA_RESTART: a signal ends the wait for a command. */
		struct sigaction sa;

		memset(&sa, 0, sizeof(sa));
		sa.sa_handler = on_signal;
		sigaction(SIGTERM, &sa, NULL);
		sigaction(SIGINT, &sa, NULL);
	}
	while (!stop && fgets(line, sizeof(line), stdin) != NULL)
		if (command(mc, line))
			break;
	rd_kafka_mock_cluster_destroy(mc);
	rd_kafka_destroy(rk);
	return 0;
}
