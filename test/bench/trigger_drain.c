/*
 * test/bench/trigger_drain.c: the drain loop of the trigger-based baseline.
 *
 *   trigger_drain CONNINFO URL MAX_EVENTS MAX_SECONDS
 *
 * The model behind trigger webhooks: an AFTER ROW trigger writes each change
 * to a queue table (test/bench/trigger.sql); this loop takes the oldest rows
 * of the queue, 100 at a time under FOR UPDATE SKIP LOCKED, POSTs one
 * request per row (in queue order, on one keep-alive connection, as
 * {"eventId":"0:<queue id>","data":<row>}), deletes the rows it sent and
 * commits: at least once, in order.  It stops after MAX_EVENTS rows or
 * MAX_SECONDS, and prints how many rows it sent.  libpq and libcurl only.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>
#include <libpq-fe.h>

static size_t
discard(char *data, size_t size, size_t nmemb, void *userdata)
{
	return size * nmemb;
}

static double
now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void
must(PGconn *conn, PGresult *res, ExecStatusType want)
{
	if (PQresultStatus(res) != want)
	{
		fprintf(stderr, "trigger_drain: %s", PQerrorMessage(conn));
		exit(1);
	}
}

int
main(int argc, char **argv)
{
	PGconn	   *conn;
	CURL	   *curl;
	struct curl_slist *headers = NULL;
	long		max_events, sent = 0;
	double		deadline;
	char	   *body = NULL;
	size_t		body_cap = 0;

	if (argc != 5)
	{
		fprintf(stderr, "usage: %s CONNINFO URL MAX_EVENTS MAX_SECONDS\n", argv[0]);
		return 2;
	}
	max_events = atol(argv[3]);
	deadline = now_s() + atof(argv[4]);

	conn = PQconnectdb(argv[1]);
	if (PQstatus(conn) != CONNECTION_OK)
	{
		fprintf(stderr, "trigger_drain: %s", PQerrorMessage(conn));
		return 1;
	}
	curl_global_init(CURL_GLOBAL_ALL);
	curl = curl_easy_init();
	headers = curl_slist_append(headers, "Content-Type: application/json");
	headers = curl_slist_append(headers, "Expect:");
	curl_easy_setopt(curl, CURLOPT_URL, argv[2]);
	curl_easy_setopt(curl, CURLOPT_HTTPHEADER, headers);
	curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, discard);
	curl_easy_setopt(curl, CURLOPT_TCP_NODELAY, 1L);
	curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS, 30000L);

	while (sent < max_events && now_s() < deadline)
	{
		PGresult   *res;
		int			n;
		char		ids[100 * 24 + 4];
		size_t		off = 0;

		PQclear(PQexec(conn, "BEGIN"));
		res = PQexec(conn, "SELECT id, payload FROM bench_queue ORDER BY id LIMIT 100 "
					 "FOR UPDATE SKIP LOCKED");
		must(conn, res, PGRES_TUPLES_OK);
		n = PQntuples(res);
		if (n == 0)
		{
			PQclear(res);
			PQclear(PQexec(conn, "COMMIT"));
			usleep(10000);
			continue;
		}
		ids[off++] = '{';
		for (int i = 0; i < n; i++)
		{
			const char *id = PQgetvalue(res, i, 0);
			const char *payload = PQgetvalue(res, i, 1);
			size_t		need = strlen(payload) + strlen(id) + 64;
			long		status = 0;
			CURLcode	rc;

			if (need > body_cap)
			{
				body_cap = need * 2;
				body = realloc(body, body_cap);
			}
			snprintf(body, body_cap, "{\"eventId\":\"0:%s\",\"data\":%s}", id, payload);
			curl_easy_setopt(curl, CURLOPT_POSTFIELDS, body);
			/* Retry a row until its POST gets a 2xx: in order, at least once. */
			while ((rc = curl_easy_perform(curl)) != CURLE_OK ||
				   (curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &status), status / 100 != 2))
			{
				if (now_s() >= deadline)
					break;
				usleep(100000);
			}
			off += snprintf(ids + off, sizeof(ids) - off, "%s%s", i > 0 ? "," : "", id);
		}
		ids[off++] = '}';
		ids[off] = '\0';
		PQclear(res);
		{
			const char *params[1] = {ids};

			res = PQexecParams(conn, "DELETE FROM bench_queue WHERE id = ANY($1::bigint[])",
							   1, NULL, params, NULL, NULL, 0);
			must(conn, res, PGRES_COMMAND_OK);
			PQclear(res);
		}
		PQclear(PQexec(conn, "COMMIT"));
		sent += n;
	}
	printf("%ld\n", sent);
	curl_easy_cleanup(curl);
	PQfinish(conn);
	return 0;
}
