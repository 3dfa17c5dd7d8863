/*-------------------------------------------------------------------------
 *
 * http.h
 *	  The HTTP transport of the delivery worker: POST requests driven by one
 *	  libcurl multi handle, waited for together with the process latch.
 *
 * IDENTIFICATION
 *	  src/http.h
 *
 *-------------------------------------------------------------------------
 */
#ifndef EVENT_BRIDGE_HTTP_H
#define EVENT_BRIDGE_HTTP_H

#include "postgres.h"

#include "datatype/timestamp.h"

/* Bytes of a response body kept for the attempts log. */
#define EB_HTTP_RESPONSE_KEEP	256

/* The most headers that can say a function failed (HttpEndpoint). */
#define EB_HTTP_ERROR_HEADERS	2

/* Bytes of an error text, libcurl's CURL_ERROR_SIZE. */
#define EB_HTTP_ERROR_SIZE		256

/*
 * An endpoint as requests use it: the URL without its userinfo, which goes
 * apart so that no error text can echo it.  Strings are palloc'd.
 */
typedef struct HttpEndpoint
{
	char	   *url;
	char	   *scheme;			/* lower case; NULL if the URL has none */
	char	   *username;		/* NULL: none */
	char	   *password;		/* NULL: none */
	char	   *host;			/* as the Host header says it: with a port that is not the scheme's */
	char	   *path;			/* percent-encoded as sent; "/" at least */
	char	   *query;			/* without "?"; "" for none */

	/* Set by the caller, not by http_parse_endpoint: */
	char	   *aws_sigv4;		/* libcurl signs with username and password; NULL: no */
	/*
	 * A 2xx with one of these headers, of a value other than "0" or
	 * "false", is a function error; NULL: none.
	 */
	const char *error_headers[EB_HTTP_ERROR_HEADERS];
} HttpEndpoint;

/* One reusable request slot; it keeps its libcurl handle and connection. */
typedef struct HttpRequest HttpRequest;

/*
 * The failure class of an outcome (DESIGN 9.3), when the transport knows it
 * (kafka.c); OUTCOME_BY_STATUS: decided from the HTTP status.
 */
typedef enum OutcomeClass
{
	OUTCOME_BY_STATUS = 0,
	OUTCOME_TRANSIENT,
	OUTCOME_ENDPOINT,
	OUTCOME_RECORD
} OutcomeClass;

/* How a finished request went. */
typedef struct HttpOutcome
{
	bool		ok;				/* answered with a 2xx status */
	bool		answered;		/* a whole answer came, whatever its status */
	long		status;			/* HTTP status, 0 if there was no answer */
	char		error[EB_HTTP_ERROR_SIZE];	/* "" when ok */
	char		response[EB_HTTP_RESPONSE_KEEP + 1];	/* start of the body */
	int64		retry_after_ms; /* what a Retry-After header asked for; -1: none */
	bool		function_error; /* a 2xx with the endpoint's error_header: not ok */
	OutcomeClass class;			/* of a failure */
	/* The whole body, if the request was asked to keep it (http_request_keep_body). */
	const char *body;			/* NULL: not kept; valid until the request starts again */
	size_t		body_len;
	bool		body_complete;	/* false: longer than the bytes kept */
	TimestampTz started_at;
	int64		elapsed_us;
} HttpOutcome;

extern const char *http_parse_endpoint(const char *url, HttpEndpoint *endpoint);
extern void http_init(void);
extern HttpRequest *http_request_create(void *owner);
extern void http_request_free(HttpRequest *request);
extern void http_request_start(HttpRequest *request, const HttpEndpoint *endpoint,
							   char *const *headers, int nheaders,
							   const char *body, size_t body_len, int64 timeout_ms);
extern void http_request_keep_body(HttpRequest *request, size_t max_bytes);
extern void http_request_forget_body(HttpRequest *request);
extern void http_make_printable(char *s);
extern void http_request_cancel(HttpRequest *request);
extern void *http_next_finished(HttpOutcome *outcome);
extern bool http_wait(long timeout_ms, uint32 wait_event_info);
extern void http_watch_fd(int fd);

#endif							/* EVENT_BRIDGE_HTTP_H */
