/*
 * test/bench/receiver.c: a fast function endpoint for benchmarks.
 *
 *   receiver [--port N] [--port-file PATH] [--delay-ms N] [--poison S]
 *
 * One thread, epoll, HTTP/1.1 keep-alive, 127.0.0.1 only; no dependencies
 * beyond libc.  Every POST is answered 200 {"ok":true}, after --delay-ms if
 * given (the connection waits, the others go on); with --poison, a POST
 * whose body holds S is answered 400 and its records are not counted.  For each POST it counts
 * the records of the body: every "eventId":"<shard>:<sequence>" is one (in
 * a CloudEvents body, every "specversion":"1.0","id":"<shard>:<sequence>").  A
 * record whose sequence is above the highest seen for its shard counts as
 * unique (delivery is in order per shard, so a lower one is a redelivery).
 *
 * For latency, each record of an event_bridge DataHub body also gives
 *   commit -> receipt = receive time - field 5 of the data array (commit ms)
 *   commit -> append  = systemTime - commit ms
 * kept in memory (up to MAX_SAMPLES records).
 *
 * GET /stats    {"requests":n,"records":m,"unique":u,"first_us":t,"last_us":t}
 *               (first and last receive time, epoch microseconds)
 * GET /latency  {"count":n,"p50":..,"p95":..,"p99":..,"max":..,
 *                "append_p50":..,"append_p99":..}  (milliseconds)
 * GET /reset    zeroes everything.
 *
 * --port 0 picks a free port; --port-file gets it once listening.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#define MAX_SHARDS	4096
#define MAX_SAMPLES	4000000
#define MAX_CONNS	1024

typedef struct Conn
{
	int			fd;
	char	   *buf;
	size_t		len;
	size_t		cap;
	int64_t		reply_at;		/* us; 0 = not waiting */
	size_t		consume;		/* bytes of the request being delayed */
} Conn;

static int64_t requests, records, unique_records, first_us, last_us;
static const char *poison = NULL;	/* refuse bodies that hold it */
static int64_t max_seq[MAX_SHARDS];
static int32_t *lat_us;			/* commit -> receipt */
static int32_t *append_us;		/* commit -> append */
static int64_t nsamples;
static int	delay_ms = 0;
static Conn *conns[MAX_CONNS];
static int	epfd;

static int64_t
now_us(void)
{
	struct timeval tv;

	gettimeofday(&tv, NULL);
	return (int64_t) tv.tv_sec * 1000000 + tv.tv_usec;
}

static void
reset_all(void)
{
	requests = records = unique_records = first_us = last_us = nsamples = 0;
	for (int i = 0; i < MAX_SHARDS; i++)
		max_seq[i] = -1;
}

/* Parses a decimal number at p; returns the position after it. */
static const char *
parse_int(const char *p, const char *end, int64_t *v)
{
	int64_t		x = 0;
	int			neg = 0;

	if (p < end && *p == '-')
	{
		neg = 1;
		p++;
	}
	while (p < end && *p >= '0' && *p <= '9')
		x = x * 10 + (*p++ - '0');
	*v = neg ? -x : x;
	return p;
}

/*
 * The key that starts a record of a body: "eventId":" or, in a CloudEvents
 * body, "specversion":"1.0","id":" (looked for once per body).
 */
static const char *
record_key(const char *body, const char *end, size_t *keylen)
{
	static const char key[] = "\"eventId\":\"";
	static const char ce_key[] = "\"specversion\":\"1.0\",\"id\":\"";

	if (end - body > 0 && body[0] == '[' &&
		memmem(body, end - body, ce_key, sizeof(ce_key) - 1) != NULL)
	{
		*keylen = sizeof(ce_key) - 1;
		return ce_key;
	}
	*keylen = sizeof(key) - 1;
	return key;
}

/* Counts the records of one body and takes their latency samples. */
static void
take_body(const char *body, size_t n, int64_t t)
{
	const char *end = body + n;
	const char *p = body;
	size_t		keylen;
	const char *key = record_key(body, end, &keylen);

	requests++;
	if (first_us == 0)
		first_us = t;
	last_us = t;
	while ((p = memmem(p, end - p, key, keylen)) != NULL)
	{
		int64_t		shard, seq, systime = -1, commit = -1;
		const char *next;
		const char *q;

		p += keylen;
		p = parse_int(p, end, &shard);
		if (p < end && *p == ':')
			p = parse_int(p + 1, end, &seq);
		else
			seq = -1;
		records++;
		if (shard >= 0 && shard < MAX_SHARDS)
		{
			if (seq > max_seq[shard])
			{
				unique_records++;
				max_seq[shard] = seq;
			}
		}
		else
			unique_records++;

		/* The record ends where the next one starts. */
		next = memmem(p, end - p, key, keylen);
		if (next == NULL)
			next = end;
		q = memmem(p, next - p, "\"systemTime\":", 13);
		if (q != NULL)
			parse_int(q + 13, next, &systime);
		q = memmem(p, next - p, "\"data\":\"[", 9);
		if (q != NULL)
		{
			/* Fields are separated by \",\" inside the escaped string: skip five. */
			q += 9;
			for (int i = 0; i < 5 && q != NULL; i++)
			{
				q = memmem(q, next - q, "\\\",\\\"", 5);
				if (q != NULL)
					q += 5;
			}
			if (q != NULL)
				parse_int(q, next, &commit);
		}
		if (commit > 0 && nsamples < MAX_SAMPLES)
		{
			lat_us[nsamples] = (int32_t) (t - commit * 1000);
			append_us[nsamples] = systime > 0 ? (int32_t) ((systime - commit) * 1000) : 0;
			nsamples++;
		}
		p = next;
	}
}

static int
cmp_int32(const void *a, const void *b)
{
	int32_t		x = *(const int32_t *) a, y = *(const int32_t *) b;

	return (x > y) - (x < y);
}

static double
pct(int32_t *v, int64_t n, double p)
{
	int64_t		i;

	if (n == 0)
		return -1;
	i = (int64_t) (p / 100.0 * n);
	if (i >= n)
		i = n - 1;
	return v[i] / 1000.0;
}

static int
reply(Conn *c, int status, const char *ctype, const char *body)
{
	char		out[2048];
	int			n = snprintf(out, sizeof(out),
							 "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n\r\n%s",
							 status, status == 200 ? "OK" : status == 400 ? "Bad Request" : "Not Found", ctype, strlen(body), body);
	ssize_t		off = 0;

	while (off < n)
	{
		ssize_t		w = write(c->fd, out + off, n - off);

		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return -1;			/* a client that does not read: drop it */
		off += w;
	}
	return 0;
}

static int
handle_get(Conn *c, const char *path)
{
	char		body[1024];

	if (strncmp(path, "/stats", 6) == 0)
	{
		snprintf(body, sizeof(body),
				 "{\"requests\":%lld,\"records\":%lld,\"unique\":%lld,\"first_us\":%lld,\"last_us\":%lld}",
				 (long long) requests, (long long) records, (long long) unique_records,
				 (long long) first_us, (long long) last_us);
		return reply(c, 200, "application/json", body);
	}
	if (strncmp(path, "/latency", 8) == 0)
	{
		double		p50, p95, p99, mx, a50, a99;

		qsort(lat_us, nsamples, sizeof(int32_t), cmp_int32);
		qsort(append_us, nsamples, sizeof(int32_t), cmp_int32);
		p50 = pct(lat_us, nsamples, 50);
		p95 = pct(lat_us, nsamples, 95);
		p99 = pct(lat_us, nsamples, 99);
		mx = pct(lat_us, nsamples, 100);
		a50 = pct(append_us, nsamples, 50);
		a99 = pct(append_us, nsamples, 99);
		snprintf(body, sizeof(body),
				 "{\"count\":%lld,\"p50\":%.1f,\"p95\":%.1f,\"p99\":%.1f,\"max\":%.1f,"
				 "\"append_p50\":%.1f,\"append_p99\":%.1f}",
				 (long long) nsamples, p50, p95, p99, mx, a50, a99);
		return reply(c, 200, "application/json", body);
	}
	if (strncmp(path, "/reset", 6) == 0)
	{
		reset_all();
		return reply(c, 200, "application/json", "{\"ok\":true}");
	}
	return reply(c, 404, "text/plain", "not found\n");
}

static void
close_conn(Conn *c)
{
	epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
	close(c->fd);
	conns[c->fd] = NULL;
	free(c->buf);
	free(c);
}

/* Drops the first n bytes of the connection's buffer. */
static void
consume(Conn *c, size_t n)
{
	memmove(c->buf, c->buf + n, c->len - n);
	c->len -= n;
}

/*
 * Handles the complete requests in a connection's buffer.  Returns -1 if the
 * connection is to be closed.
 */
static int
process(Conn *c)
{
	while (c->reply_at == 0)
	{
		char	   *head_end = memmem(c->buf, c->len, "\r\n\r\n", 4);
		size_t		head_len;
		size_t		body_len = 0;
		char	   *line;
		char		method[16], path[256];

		if (head_end == NULL)
			return c->len > 65536 ? -1 : 0;
		head_len = head_end + 4 - c->buf;
		*head_end = '\0';
		if (sscanf(c->buf, "%15s %255s", method, path) != 2)
			return -1;
		for (line = strstr(c->buf, "\r\n"); line != NULL; line = strstr(line + 2, "\r\n"))
			if (strncasecmp(line + 2, "content-length:", 15) == 0)
				body_len = strtoull(line + 17, NULL, 10);
		*head_end = '\r';
		if (c->len < head_len + body_len)
			return 0;			/* the body is still coming */

		if (strcmp(method, "POST") == 0 && poison != NULL &&
			memmem(c->buf + head_len, body_len, poison, strlen(poison)) != NULL)
		{
			if (reply(c, 400, "text/plain", "refused") < 0)
				return -1;
		}
		else if (strcmp(method, "POST") == 0)
		{
			take_body(c->buf + head_len, body_len, now_us());
			if (delay_ms > 0)
			{
				c->reply_at = now_us() + (int64_t) delay_ms * 1000;
				c->consume = head_len + body_len;
				return 0;
			}
			if (reply(c, 200, "application/json", "{\"ok\":true}") < 0)
				return -1;
		}
		else if (handle_get(c, path) < 0)
			return -1;
		consume(c, head_len + body_len);
	}
	return 0;
}

static int
read_conn(Conn *c)
{
	for (;;)
	{
		ssize_t		r;

		if (c->cap - c->len < 65536)
		{
			c->cap = c->cap * 2 + 65536;
			c->buf = realloc(c->buf, c->cap);
			if (c->buf == NULL)
				return -1;
		}
		r = read(c->fd, c->buf + c->len, c->cap - c->len - 1);
		if (r > 0)
		{
			c->len += r;
			continue;
		}
		if (r == 0)
			return -1;
		if (errno == EAGAIN || errno == EWOULDBLOCK)
			return 0;
		if (errno != EINTR)
			return -1;
	}
}

int
main(int argc, char **argv)
{
	int			port = 0;
	const char *port_file = NULL;
	int			lfd;
	int			one = 1;
	struct sockaddr_in addr;
	socklen_t	alen = sizeof(addr);

	for (int i = 1; i < argc; i++)
	{
		if (strcmp(argv[i], "--port") == 0 && i + 1 < argc)
			port = atoi(argv[++i]);
		else if (strcmp(argv[i], "--port-file") == 0 && i + 1 < argc)
			port_file = argv[++i];
		else if (strcmp(argv[i], "--delay-ms") == 0 && i + 1 < argc)
			delay_ms = atoi(argv[++i]);
		else if (strcmp(argv[i], "--poison") == 0 && i + 1 < argc)
			poison = argv[++i];
		else
		{
			fprintf(stderr, "usage: %s [--port N] [--port-file PATH] [--delay-ms N] [--poison S]\n", argv[0]);
			return 2;
		}
	}
	signal(SIGPIPE, SIG_IGN);
	lat_us = malloc(sizeof(int32_t) * MAX_SAMPLES);
	append_us = malloc(sizeof(int32_t) * MAX_SAMPLES);
	if (lat_us == NULL || append_us == NULL)
		return 1;
	reset_all();

	lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
	setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	memset(&addr, 0, sizeof(addr));
	addr.sin_family = AF_INET;
	addr.sin_port = htons(port);
	addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (bind(lfd, (struct sockaddr *) &addr, sizeof(addr)) < 0 || listen(lfd, 512) < 0)
	{
		perror("receiver: bind/listen");
		return 1;
	}
	getsockname(lfd, (struct sockaddr *) &addr, &alen);
	if (port_file != NULL)
	{
		char		tmp[4096];
		FILE	   *f;

		snprintf(tmp, sizeof(tmp), "%s.tmp", port_file);
		f = fopen(tmp, "w");
		if (f == NULL || fprintf(f, "%d\n", ntohs(addr.sin_port)) < 0 || fclose(f) != 0 ||
			rename(tmp, port_file) != 0)
		{
			perror("receiver: port file");
			return 1;
		}
	}

	epfd = epoll_create1(0);
	{
		struct epoll_event ev = {.events = EPOLLIN, .data.fd = lfd};

		epoll_ctl(epfd, EPOLL_CTL_ADD, lfd, &ev);
	}

	for (;;)
	{
		struct epoll_event events[64];
		int			timeout = -1;
		int64_t		t = now_us();
		int			n;

		/* The nearest delayed reply decides the timeout. */
		if (delay_ms > 0)
			for (int fd = 0; fd < MAX_CONNS; fd++)
				if (conns[fd] != NULL && conns[fd]->reply_at != 0)
				{
					int64_t		ms = (conns[fd]->reply_at - t + 999) / 1000;

					if (ms < 0)
						ms = 0;
					if (timeout < 0 || ms < timeout)
						timeout = (int) ms;
				}

		n = epoll_wait(epfd, events, 64, timeout);
		for (int i = 0; i < n; i++)
		{
			int			fd = events[i].data.fd;

			if (fd == lfd)
			{
				int			cfd;

				while ((cfd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK)) >= 0)
				{
					struct epoll_event ev = {.events = EPOLLIN, .data.fd = cfd};
					Conn	   *c;

					if (cfd >= MAX_CONNS)
					{
						close(cfd);
						continue;
					}
					setsockopt(cfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
					c = calloc(1, sizeof(Conn));
					c->fd = cfd;
					conns[cfd] = c;
					epoll_ctl(epfd, EPOLL_CTL_ADD, cfd, &ev);
				}
				continue;
			}
			if (conns[fd] == NULL)
				continue;
			if (read_conn(conns[fd]) < 0 || process(conns[fd]) < 0)
				close_conn(conns[fd]);
		}

		if (delay_ms > 0)
		{
			t = now_us();
			for (int fd = 0; fd < MAX_CONNS; fd++)
			{
				Conn	   *c = conns[fd];

				if (c == NULL || c->reply_at == 0 || c->reply_at > t)
					continue;
				c->reply_at = 0;
				if (reply(c, 200, "application/json", "{\"ok\":true}") < 0)
				{
					close_conn(c);
					continue;
				}
				consume(c, c->consume);
				if (process(c) < 0)
					close_conn(c);
			}
		}
	}
}
