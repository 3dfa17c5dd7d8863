/*-------------------------------------------------------------------------
 *
 * http.c
 *	  The HTTP transport of the delivery worker: POST requests on one libcurl
 *	  multi handle, whose sockets are waited for in a WaitEventSet together
 *	  with the process latch.  Knows no catalog and no SPI.
 *
 * A request slot (HttpRequest) owns one easy handle and is reused for every
 * request of its owner (a shard), so that libcurl keeps the connection
 * alive between requests.  Requests run concurrently; each finished one is
 * handed back, with its owner, by http_next_finished.
 *
 * libcurl's socket and timer callbacks only note what libcurl wants watched
 * and when it wants to be called again; http_wait builds the WaitEventSet
 * from that, waits for a socket, the latch or a timeout, and lets libcurl
 * act.  So the worker sleeps in one place, and a latch wake-up (new records)
 * interrupts a wait for the network at once.  No callback raises an error
 * or allocates palloc memory: failures are recorded and reported after the
 * curl_multi_* call has returned.
 *
 * IDENTIFICATION
 *	  src/http.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <time.h>

#include <curl/curl.h>

#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "storage/latch.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "event_bridge.h"
#include "http.h"

struct HttpRequest
{
	CURL	   *easy;
	void	   *owner;
	struct curl_slist *headers;
	bool		active;			/* added to the multi handle */
	bool		failed_to_start;	/* on the not_started list */
	HttpRequest *next_not_started;
	TimestampTz started_at;
	size_t		response_len;
	char		response[EB_HTTP_RESPONSE_KEEP + 1];
	size_t		body_keep;		/* keep this much of the whole body; 0: none */
	StringInfoData body;		/* what is kept, in http_context; data NULL: nothing */
	bool		body_cut;		/* the body was longer than body_keep */
	char		retry_after[64];	/* the Retry-After header's value, or "" */
	char		error_headers[EB_HTTP_ERROR_HEADERS][64];	/* "name:" each, or "" */
	char		function_error[128];	/* "name: value" of one that said so, or "" */
	char		error[CURL_ERROR_SIZE];
};

/* A socket libcurl wants watched, and for what (CURL_POLL_*). */
typedef struct WatchedSocket
{
	curl_socket_t fd;
	int			what;
} WatchedSocket;

/* Most events one http_wait handles; more wait for the next call. */
#define EB_HTTP_MAX_EVENTS	64

static CURLM *multi = NULL;
static MemoryContext http_context = NULL;

/* Kept by socket_callback, in malloc'd memory. */
static WatchedSocket *sockets = NULL;
static int	nsockets = 0;
static int	max_sockets = 0;
static bool sockets_changed = true;

/* Kept by timer_callback. */
static bool timer_set = false;
static TimestampTz timer_deadline = 0;

static WaitEventSet *wait_set = NULL;

/* Another descriptor whose readability ends a wait (http_watch_fd); -1: none. */
static int	extra_fd = -1;

/* Requests that failed before libcurl got them, to be reported as finished. */
static HttpRequest *not_started = NULL;

/* A part of a parsed URL, palloc'd; "" if it has none. */
static char *
url_part(CURLU *u, CURLUPart what)
{
	char	   *part;
	char	   *copy;

	if (curl_url_get(u, what, &part, 0) != CURLUE_OK)
		return pstrdup("");
	copy = pstrdup(part);
	curl_free(part);
	return copy;
}

/*
 * Parses an endpoint URL into endpoint, with the userinfo taken out of the
 * URL.  Returns NULL, or a sentence saying why the URL cannot be used; the
 * sentence never quotes the URL.  The scheme is not checked here.
 */
const char *
http_parse_endpoint(const char *url, HttpEndpoint *endpoint)
{
	CURLU	   *u = curl_url();
	CURLUcode	rc;
	char	   *part;

	memset(endpoint, 0, sizeof(HttpEndpoint));
	if (u == NULL)
		return "Out of memory.";
	rc = curl_url_set(u, CURLUPART_URL, url, CURLU_NON_SUPPORT_SCHEME);
	if (rc != CURLUE_OK)
	{
		curl_url_cleanup(u);
		return psprintf("libcurl: %s.", curl_url_strerror(rc));
	}

	if (curl_url_get(u, CURLUPART_USER, &part, CURLU_URLDECODE) == CURLUE_OK)
	{
		endpoint->username = pstrdup(part);
		curl_free(part);
	}
	if (curl_url_get(u, CURLUPART_PASSWORD, &part, CURLU_URLDECODE) == CURLUE_OK)
	{
		endpoint->password = pstrdup(part);
		curl_free(part);
	}
	if (curl_url_get(u, CURLUPART_SCHEME, &part, 0) == CURLUE_OK)
	{
		endpoint->scheme = pstrdup(part);
		curl_free(part);
	}
	endpoint->host = url_part(u, CURLUPART_HOST);
	endpoint->path = url_part(u, CURLUPART_PATH);
	endpoint->query = url_part(u, CURLUPART_QUERY);
	if (curl_url_get(u, CURLUPART_PORT, &part, 0) == CURLUE_OK)
	{
		/* libcurl leaves the scheme's own port out of the Host header. */
		if (!((strcmp(part, "80") == 0 && endpoint->scheme && strcmp(endpoint->scheme, "http") == 0) ||
			  (strcmp(part, "443") == 0 && endpoint->scheme && strcmp(endpoint->scheme, "https") == 0)))
			endpoint->host = psprintf("%s:%s", endpoint->host, part);
		curl_free(part);
	}

	rc = curl_url_set(u, CURLUPART_USER, NULL, 0);
	if (rc == CURLUE_OK)
		rc = curl_url_set(u, CURLUPART_PASSWORD, NULL, 0);
	if (rc == CURLUE_OK)
		rc = curl_url_get(u, CURLUPART_URL, &part, 0);
	curl_url_cleanup(u);
	if (rc != CURLUE_OK)
		return psprintf("libcurl: %s.", curl_url_strerror(rc));
	endpoint->url = pstrdup(part);
	curl_free(part);
	return NULL;
}

/* libcurl tells which sockets to watch: keep the list for http_wait. */
static int
socket_callback(CURL *easy, curl_socket_t fd, int what, void *userp, void *socketp)
{
	int			i;

	for (i = 0; i < nsockets; i++)
		if (sockets[i].fd == fd)
			break;

	if (what == CURL_POLL_REMOVE)
	{
		if (i < nsockets)
			sockets[i] = sockets[--nsockets];
	}
	else
	{
		if (i == nsockets)
		{
			if (nsockets == max_sockets)
			{
				int			n = Max(16, max_sockets * 2);
				WatchedSocket *grown = realloc(sockets, sizeof(WatchedSocket) * n);

				if (grown == NULL)
					return -1;	/* libcurl fails the transfer */
				sockets = grown;
				max_sockets = n;
			}
			sockets[nsockets++].fd = fd;
		}
		sockets[i].what = what;
	}
	sockets_changed = true;
	return 0;
}

/* libcurl tells when it wants to be called again, whatever the sockets do. */
static int
timer_callback(CURLM *m, long timeout_ms, void *userp)
{
	timer_set = (timeout_ms >= 0);
	if (timer_set)
		timer_deadline = GetCurrentTimestamp() + (int64) timeout_ms * 1000;
	return 0;
}

/* Keeps the start of a response body; the rest is read and dropped. */
static size_t
write_callback(char *data, size_t size, size_t nmemb, void *userdata)
{
	HttpRequest *request = (HttpRequest *) userdata;
	size_t		n = size * nmemb;
	size_t		copy = Min(n, EB_HTTP_RESPONSE_KEEP - request->response_len);

	memcpy(request->response + request->response_len, data, copy);
	request->response_len += copy;
	request->response[request->response_len] = '\0';
	if (request->body_keep > 0 && !request->body_cut)
	{
		if (request->body.len + n > request->body_keep)
			request->body_cut = true;
		else
		{
			MemoryContext old = MemoryContextSwitchTo(http_context);

			if (request->body.data == NULL)
				initStringInfo(&request->body);
			appendBinaryStringInfo(&request->body, data, n);
			MemoryContextSwitchTo(old);
		}
	}
	return n;
}

/*
 * If a header line (not NUL-terminated) has the given name ("name:", any
 * case), copies its trimmed value into value (size bytes, cut to fit) and
 * returns true.
 */
static bool
header_value(const char *data, size_t n, const char *name, char *value, size_t size)
{
	size_t		name_len = strlen(name);
	size_t		start = name_len;
	size_t		end = n;

	if (n <= name_len || pg_strncasecmp(data, name, name_len) != 0)
		return false;
	while (start < end && (data[start] == ' ' || data[start] == '\t'))
		start++;
	while (end > start && (data[end - 1] == '\r' || data[end - 1] == '\n' ||
						   data[end - 1] == ' '))
		end--;
	end = Min(end, start + size - 1);
	memcpy(value, data + start, end - start);
	value[end - start] = '\0';
	return true;
}

/* Keeps the values of Retry-After and of a function error header. */
static size_t
header_callback(char *data, size_t size, size_t nitems, void *userdata)
{
	HttpRequest *request = (HttpRequest *) userdata;
	size_t		n = size * nitems;
	char		value[64];

	if (header_value(data, n, "retry-after:", request->retry_after, sizeof(request->retry_after)))
		return n;
	for (int i = 0; i < EB_HTTP_ERROR_HEADERS && request->function_error[0] == '\0'; i++)
	{
		if (request->error_headers[i][0] == '\0' ||
			!header_value(data, n, request->error_headers[i], value, sizeof(value)))
			continue;
		if (strcmp(value, "0") != 0 && pg_strcasecmp(value, "false") != 0)
			snprintf(request->function_error, sizeof(request->function_error), "%s %s",
					 request->error_headers[i], value);
	}
	return n;
}

/*
 * Milliseconds a Retry-After value asks to wait, in seconds or as an HTTP
 * date; -1 for none or one that cannot be read.
 */
static int64
retry_after_ms(const char *value)
{
	char	   *end;
	long		seconds;
	time_t		date;

	if (value[0] == '\0')
		return -1;
	errno = 0;
	seconds = strtol(value, &end, 10);
	if (end != value && *end == '\0' && errno == 0 && seconds >= 0)
		return Min(seconds, (long) (INT64CONST(86400) * 365)) * 1000;
	date = curl_getdate(value, NULL);
	if (date == -1)
		return -1;
	return Max((int64) (date - time(NULL)) * 1000, 0);
}

/* Sets up libcurl and the multi handle; called once by the worker. */
void
http_init(void)
{
	if (multi != NULL)
		return;
	if (curl_global_init(CURL_GLOBAL_ALL) != CURLE_OK)
		ereport(ERROR,
				(errcode(ERRCODE_SYSTEM_ERROR),
				 errmsg("could not initialize libcurl")));
	multi = curl_multi_init();
	if (multi == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OUT_OF_MEMORY),
				 errmsg("could not create a libcurl multi handle")));
	curl_multi_setopt(multi, CURLMOPT_SOCKETFUNCTION, socket_callback);
	curl_multi_setopt(multi, CURLMOPT_TIMERFUNCTION, timer_callback);
	http_context = AllocSetContextCreate(TopMemoryContext, "event_bridge http",
										 ALLOCSET_SMALL_SIZES);
}

/* Creates a request slot for owner, which finished requests are tagged with. */
HttpRequest *
http_request_create(void *owner)
{
	HttpRequest *request = MemoryContextAllocZero(http_context, sizeof(HttpRequest));
	CURL	   *easy = curl_easy_init();

	if (easy == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OUT_OF_MEMORY),
				 errmsg("could not create a libcurl handle")));
	request->easy = easy;
	request->owner = owner;
	curl_easy_setopt(easy, CURLOPT_PRIVATE, request);
	curl_easy_setopt(easy, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(easy, CURLOPT_ERRORBUFFER, request->error);
	curl_easy_setopt(easy, CURLOPT_WRITEFUNCTION, write_callback);
	curl_easy_setopt(easy, CURLOPT_WRITEDATA, request);
	curl_easy_setopt(easy, CURLOPT_HEADERFUNCTION, header_callback);
	curl_easy_setopt(easy, CURLOPT_HEADERDATA, request);
	curl_easy_setopt(easy, CURLOPT_TCP_KEEPALIVE, 1L);
	curl_easy_setopt(easy, CURLOPT_TCP_NODELAY, 1L);
	curl_easy_setopt(easy, CURLOPT_PROTOCOLS_STR, "http,https");
	curl_easy_setopt(easy, CURLOPT_USERAGENT, "event_bridge/" EB_EXTVERSION);
	curl_easy_setopt(easy, CURLOPT_POST, 1L);
	return request;
}

/* Removes a request from the not_started list, if it is there. */
static void
forget_not_started(HttpRequest *request)
{
	HttpRequest **p = &not_started;

	if (!request->failed_to_start)
		return;
	while (*p != request)
		p = &(*p)->next_not_started;
	*p = request->next_not_started;
	request->failed_to_start = false;
}

/*
 * Has a request keep its whole response body, up to max_bytes (0: only the
 * start kept for the log), for the requests it starts from now on.
 */
void
http_request_keep_body(HttpRequest *request, size_t max_bytes)
{
	request->body_keep = max_bytes;
}

/* Frees the body a finished request kept, once its outcome is recorded. */
void
http_request_forget_body(HttpRequest *request)
{
	if (request->body.data != NULL)
		pfree(request->body.data);
	request->body.data = NULL;
	request->body.len = 0;
}

/* Stops a running request; it will not be reported as finished. */
void
http_request_cancel(HttpRequest *request)
{
	forget_not_started(request);
	if (request->active)
	{
		curl_multi_remove_handle(multi, request->easy);
		request->active = false;
	}
}

void
http_request_free(HttpRequest *request)
{
	http_request_cancel(request);
	curl_easy_cleanup(request->easy);
	curl_slist_free_all(request->headers);
	if (request->body.data != NULL)
		pfree(request->body.data);
	pfree(request);
}

/* Records that a request could not start; http_next_finished reports it. */
static void
fail_to_start(HttpRequest *request, const char *error)
{
	strlcpy(request->error, error, sizeof(request->error));
	request->failed_to_start = true;
	request->next_not_started = not_started;
	not_started = request;
}

/*
 * Starts POSTing body to endpoint with the given header lines ("Name:
 * value"), giving up after timeout_ms.  body must stay valid until the
 * request has finished or been cancelled.  The request runs in http_wait.
 */
void
http_request_start(HttpRequest *request, const HttpEndpoint *endpoint,
				   char *const *headers, int nheaders,
				   const char *body, size_t body_len, int64 timeout_ms)
{
	CURL	   *easy = request->easy;
	struct curl_slist *list = NULL;
	bool		content_type = false;

	Assert(!request->active && !request->failed_to_start);
	request->started_at = GetCurrentTimestamp();
	request->response_len = 0;
	request->response[0] = '\0';
	http_request_forget_body(request);
	request->body_cut = false;
	request->retry_after[0] = '\0';
	request->function_error[0] = '\0';
	for (int i = 0; i < EB_HTTP_ERROR_HEADERS; i++)
	{
		request->error_headers[i][0] = '\0';
		if (endpoint->error_headers[i] != NULL)
			snprintf(request->error_headers[i], sizeof(request->error_headers[i]), "%s:",
					 endpoint->error_headers[i]);
	}
	request->error[0] = '\0';

	for (int i = 0; i < nheaders; i++)
		content_type |= (pg_strncasecmp(headers[i], "content-type:", 13) == 0);
	/*
	 * No 100-continue round trip.  Not with SigV4: libcurl 7.88 would sign
	 * the removed header as if it were sent empty.  libcurl adds Expect only
	 * to bodies over 1 MB, and does not sign it.
	 */
	if (endpoint->aws_sigv4 == NULL)
		list = curl_slist_append(list, "Expect:");
	for (int i = 0; i < nheaders && (list != NULL || i == 0); i++)
		list = curl_slist_append(list, headers[i]);
	if ((list != NULL || nheaders == 0) && !content_type)
		list = curl_slist_append(list, "Content-Type: application/json");
	if (list == NULL)
	{
		fail_to_start(request, "out of memory");
		return;
	}
	curl_slist_free_all(request->headers);
	request->headers = list;

	curl_easy_setopt(easy, CURLOPT_URL, endpoint->url);
	curl_easy_setopt(easy, CURLOPT_USERNAME, endpoint->username);
	curl_easy_setopt(easy, CURLOPT_PASSWORD, endpoint->password);
	/* Setting CURLOPT_AWS_SIGV4 makes it the authentication; unset, Basic. */
	curl_easy_setopt(easy, CURLOPT_AWS_SIGV4, endpoint->aws_sigv4);
	if (endpoint->aws_sigv4 == NULL)
		curl_easy_setopt(easy, CURLOPT_HTTPAUTH, (long) CURLAUTH_BASIC);
	curl_easy_setopt(easy, CURLOPT_HTTPHEADER, list);
	curl_easy_setopt(easy, CURLOPT_POSTFIELDS, body);
	curl_easy_setopt(easy, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t) body_len);
	curl_easy_setopt(easy, CURLOPT_TIMEOUT_MS, (long) timeout_ms);
	curl_easy_setopt(easy, CURLOPT_CONNECTTIMEOUT_MS, (long) timeout_ms);

	if (curl_multi_add_handle(multi, easy) != CURLM_OK)
	{
		fail_to_start(request, "could not add the request to the libcurl multi handle");
		return;
	}
	request->active = true;
}

/* Replaces bytes that are not printable ASCII, so the text can be stored. */
void
http_make_printable(char *s)
{
	for (; *s; s++)
		if ((unsigned char) *s < 0x20 ? (*s != '\n' && *s != '\t') : (unsigned char) *s >= 0x7f)
			*s = '?';
}

/*
 * Returns the owner of a finished request and fills outcome, or returns NULL
 * if no request has finished since the last call.  The request slot may be
 * started again at once.
 */
void *
http_next_finished(HttpOutcome *outcome)
{
	HttpRequest *request = NULL;
	CURLcode	code = CURLE_OK;
	CURLMsg    *msg;
	int			left;

	memset(outcome, 0, sizeof(HttpOutcome));
	outcome->retry_after_ms = -1;
	if (not_started != NULL)
	{
		request = not_started;
		forget_not_started(request);
		strlcpy(outcome->error, request->error, sizeof(outcome->error));
		outcome->started_at = request->started_at;
		return request->owner;
	}

	while ((msg = curl_multi_info_read(multi, &left)) != NULL)
	{
		if (msg->msg != CURLMSG_DONE)
			continue;
		curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **) &request);
		code = msg->data.result;
		break;
	}
	if (request == NULL)
		return NULL;

	curl_easy_getinfo(request->easy, CURLINFO_RESPONSE_CODE, &outcome->status);
	{
		curl_off_t	total_us = 0;

		curl_easy_getinfo(request->easy, CURLINFO_TOTAL_TIME_T, &total_us);
		outcome->elapsed_us = total_us;
	}
	curl_multi_remove_handle(multi, request->easy);
	request->active = false;

	outcome->started_at = request->started_at;
	outcome->answered = (code == CURLE_OK);
	outcome->ok = (code == CURLE_OK && outcome->status >= 200 && outcome->status < 300);
	if (code != CURLE_OK)
		strlcpy(outcome->error, request->error[0] ? request->error : curl_easy_strerror(code),
				sizeof(outcome->error));
	else if (!outcome->ok)
		snprintf(outcome->error, sizeof(outcome->error), "HTTP status %ld", outcome->status);
	else if (request->function_error[0] != '\0')
	{
		/* The platform ran the function, and the function failed. */
		outcome->ok = false;
		outcome->function_error = true;
		snprintf(outcome->error, sizeof(outcome->error), "HTTP status %ld with %s",
				 outcome->status, request->function_error);
	}
	memcpy(outcome->response, request->response, request->response_len + 1);
	outcome->body = NULL;
	outcome->body_len = 0;
	outcome->body_complete = !request->body_cut;
	if (request->body_keep > 0)
	{
		outcome->body = request->body.data != NULL ? request->body.data : "";
		outcome->body_len = request->body.len;
	}
	outcome->retry_after_ms = retry_after_ms(request->retry_after);
	http_make_printable(outcome->response);
	http_make_printable(outcome->error);
	return request->owner;
}

/* Builds the wait set: the latch, postmaster death and libcurl's sockets. */
static void
rebuild_wait_set(void)
{
	if (wait_set != NULL)
		FreeWaitEventSet(wait_set);
	wait_set = CreateWaitEventSet(http_context, 3 + nsockets);
	AddWaitEventToSet(wait_set, WL_LATCH_SET, PGINVALID_SOCKET, MyLatch, NULL);
	AddWaitEventToSet(wait_set, WL_EXIT_ON_PM_DEATH, PGINVALID_SOCKET, NULL, NULL);
	if (extra_fd >= 0)
		AddWaitEventToSet(wait_set, WL_SOCKET_READABLE, extra_fd, NULL, NULL);
	for (int i = 0; i < nsockets; i++)
	{
		uint32		events = 0;

		if (sockets[i].what & CURL_POLL_IN)
			events |= WL_SOCKET_READABLE;
		if (sockets[i].what & CURL_POLL_OUT)
			events |= WL_SOCKET_WRITEABLE;
		if (events != 0)
			AddWaitEventToSet(wait_set, events, sockets[i].fd, NULL, NULL);
	}
	sockets_changed = false;
}

/*
 * Makes http_wait also end when fd is readable (another library's wake-up
 * descriptor, kafka.c's); its owner reads it.  -1 stops watching.
 */
void
http_watch_fd(int fd)
{
	extra_fd = fd;
	sockets_changed = true;
}

/*
 * Waits up to timeout_ms for the latch or for network activity, and lets
 * libcurl move the running requests on.  Returns true if the latch was set
 * (it is reset).  Exits the process if the postmaster dies.
 */
bool
http_wait(long timeout_ms, uint32 wait_event_info)
{
	WaitEvent	events[EB_HTTP_MAX_EVENTS];
	bool		latch_set = false;
	int			running;
	int			n;

	if (timer_set)
	{
		int64		until_us = timer_deadline - GetCurrentTimestamp();

		timeout_ms = Min(timeout_ms, Max((until_us + 999) / 1000, 0));
	}
	if (wait_set == NULL || sockets_changed)
		rebuild_wait_set();

	n = WaitEventSetWait(wait_set, timeout_ms, events, lengthof(events), wait_event_info);
	for (int i = 0; i < n; i++)
	{
		int			flags = 0;

		if (events[i].events & WL_LATCH_SET)
		{
			latch_set = true;
			continue;
		}
		if (events[i].fd == extra_fd)
			continue;			/* its owner reads it */
		if (events[i].events & WL_SOCKET_READABLE)
			flags |= CURL_CSELECT_IN;
		if (events[i].events & WL_SOCKET_WRITEABLE)
			flags |= CURL_CSELECT_OUT;
		if (flags != 0)
			curl_multi_socket_action(multi, events[i].fd, flags, &running);
		if ((flags & CURL_CSELECT_OUT) && running > 0)
			EB_FAULT_POINT("delivery-mid-send");
	}
	if (timer_set && GetCurrentTimestamp() >= timer_deadline)
	{
		timer_set = false;
		curl_multi_socket_action(multi, CURL_SOCKET_TIMEOUT, 0, &running);
	}
	if (latch_set)
		ResetLatch(MyLatch);
	return latch_set;
}
