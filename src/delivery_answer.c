/*-------------------------------------------------------------------------
 *
 * delivery_answer.c
 *	  What a 2xx answer acknowledges when the connector has
 *	  partial_batch_response: Lambda's batchItemFailures body,
 *	  {"batchItemFailures": [{"itemIdentifier": "<eventId>"}, ...]}.
 *
 * As Lambda does: an empty answer, an object without the key, or a null or
 * empty list acknowledge the whole batch; records before the first listed
 * eventId (in the batch's order) are acknowledged and the rest of the batch
 * failed; an answer that is no JSON, is cut off, or lists an eventId that
 * is not a string of the batch fails the whole batch.
 *
 * IDENTIFICATION
 *	  src/delivery_answer.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <ctype.h>

#include "common/jsonapi.h"
#include "mb/pg_wchar.h"

#include "delivery.h"

/* The parser's state: where it is in the answer, and what it found. */
typedef struct AnswerParse
{
	int			depth;			/* objects and arrays open */
	bool		in_failures;	/* inside the batchItemFailures value */
	bool		at_identifier;	/* the next scalar is an itemIdentifier */
	const Shard *shard;
	int64		first_failed;	/* least sequence listed; PG_INT64_MAX: none */
	const char *problem;		/* why the answer fails the batch, or NULL */
	char	   *bad_identifier;
} AnswerParse;

static void
open_nested(void *state)
{
	((AnswerParse *) state)->depth++;
}

static void
close_nested(void *state)
{
	AnswerParse *p = (AnswerParse *) state;

	p->depth--;
	if (p->depth <= 1)
		p->in_failures = false;
}

static void
field_start(void *state, char *fname, bool isnull)
{
	AnswerParse *p = (AnswerParse *) state;

	if (p->depth == 1)
		p->in_failures = (strcmp(fname, "batchItemFailures") == 0);
	p->at_identifier = (p->in_failures && p->depth == 3 &&
						strcmp(fname, "itemIdentifier") == 0);
}

/* An itemIdentifier: "<shard>:<sequence>" of a record of the batch. */
static void
scalar(void *state, char *token, JsonTokenType tokentype)
{
	AnswerParse *p = (AnswerParse *) state;
	const Shard *sh = p->shard;
	int			shard_id;
	long long	sequence;
	int			end = 0;

	if (!p->at_identifier)
		return;
	p->at_identifier = false;
	if (p->problem != NULL)
		return;
	if (tokentype != JSON_TOKEN_STRING ||
		sscanf(token, "%d:%lld%n", &shard_id, &sequence, &end) != 2 || token[end] != '\0' ||
		shard_id != sh->shard_id || sequence < sh->first_sequence ||
		sequence > sh->last_sequence)
	{
		p->problem = "it lists an itemIdentifier that is no eventId of the batch";
		p->bad_identifier = pstrdup(token);
		return;
	}
	p->first_failed = Min(p->first_failed, (int64) sequence);
}

/*
 * How many of the batch's first records a 2xx answer with a kept body (o)
 * acknowledges.  *named says that the record after them is the first one the
 * function listed; when the answer fails the batch or lists records, why
 * gets the error to record.
 */
int
delivery_acknowledged(Shard *sh, const HttpOutcome *o, bool *named, char *why, size_t whylen)
{
	AnswerParse p;
	JsonSemAction sem;
	JsonLexContext *lex;
	JsonParseErrorType rc;
	size_t		i = 0;

	*named = false;
	while (i < o->body_len && isspace((unsigned char) o->body[i]))
		i++;
	if (i == o->body_len && o->body_complete)
		return sh->nrecords;	/* no answer body: all done */
	if (!o->body_complete)
	{
		snprintf(why, whylen,
				 "HTTP status %ld, but the answer is longer than %d bytes, so its batchItemFailures cannot be read",
				 o->status, EB_PARTIAL_RESPONSE_MAX);
		return 0;
	}

	memset(&p, 0, sizeof(p));
	p.shard = sh;
	p.first_failed = PG_INT64_MAX;
	memset(&sem, 0, sizeof(sem));
	sem.semstate = &p;
	sem.object_start = open_nested;
	sem.object_end = close_nested;
	sem.array_start = open_nested;
	sem.array_end = close_nested;
	sem.object_field_start = field_start;
	sem.scalar = scalar;
	lex = makeJsonLexContextCstringLen(pstrdup(o->body), (int) o->body_len, PG_UTF8, true);
	rc = pg_parse_json(lex, &sem);
	if (rc != JSON_SUCCESS)
	{
		snprintf(why, whylen, "HTTP status %ld, but the answer is no valid JSON, so the batch failed",
				 o->status);
		return 0;
	}
	if (p.problem != NULL)
	{
		snprintf(why, whylen, "HTTP status %ld, but %s (\"%.64s\"), so the batch failed",
				 o->status, p.problem, p.bad_identifier);
		return 0;
	}
	if (p.first_failed == PG_INT64_MAX)
		return sh->nrecords;
	*named = true;
	snprintf(why, whylen, "the function reported eventId %d:" INT64_FORMAT " as failed (batchItemFailures)",
			 sh->shard_id, p.first_failed);
	if (sh->redelivery)
	{
		/* Dead letters sent again may have gaps between them. */
		int			k = 0;

		while (k < sh->nrecords && sh->sequences[k] < p.first_failed)
			k++;
		return k;
	}
	return (int) (p.first_failed - sh->first_sequence);
}
