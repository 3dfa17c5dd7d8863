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

/* Deepest nesting of an answer that is read: Lambda's format needs 3. */
#define EB_ANSWER_MAX_DEPTH		16

/* The parser's state: where it is in the answer, and what it found. */
typedef struct AnswerParse
{
	int			depth;			/* objects and arrays open */
	bool		in_failures;	/* inside the batchItemFailures value */
	bool		at_identifier;	/* the next value is an itemIdentifier */
	bool		item_has_id;	/* the item object open has one */
	const Shard *shard;
	int64		first_failed;	/* least sequence listed; PG_INT64_MAX: none */
	const char *problem;		/* why the answer fails the batch, or NULL */
	char		bad_identifier[65];
} AnswerParse;

/*
 * Lambda's shape: a top-level object (or null) whose batchItemFailures is
 * null or an array of objects, each with a string itemIdentifier.  Anything
 * else fails the batch.
 */
static void
set_problem(AnswerParse *p, const char *problem)
{
	if (p->problem == NULL)
		p->problem = problem;
}

static void
container_start(AnswerParse *p, bool object)
{
	if (p->depth == 0 && !object)
		set_problem(p, "it is not a JSON object");
	if (p->at_identifier)
		set_problem(p, "an itemIdentifier is not a string");
	p->at_identifier = false;
	if (p->in_failures)
	{
		if (p->depth == 1 && object)
			set_problem(p, "batchItemFailures is not a list");
		if (p->depth == 2 && !object)
			set_problem(p, "an item of batchItemFailures is not an object");
		if (p->depth == 2 && object)
			p->item_has_id = false;
	}
	p->depth++;
}

static void
object_start(void *state)
{
	container_start((AnswerParse *) state, true);
}

static void
array_start(void *state)
{
	container_start((AnswerParse *) state, false);
}

static void
object_end(void *state)
{
	AnswerParse *p = (AnswerParse *) state;

	p->depth--;
	if (p->in_failures && p->depth == 2 && !p->item_has_id)
		set_problem(p, "an item of batchItemFailures has no itemIdentifier");
	if (p->depth <= 1)
		p->in_failures = false;
}

static void
array_end(void *state)
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

/* Is sequence a record of the batch in hand? */
static bool
in_batch(const Shard *sh, int64 sequence)
{
	if (sequence < sh->first_sequence || sequence > sh->last_sequence)
		return false;
	if (!sh->redelivery)
		return true;
	/* Dead letters sent again may have gaps between them. */
	for (int i = 0; i < sh->nrecords; i++)
		if (sh->sequences[i] == sequence)
			return true;
	return false;
}

/* A scalar: an itemIdentifier, "<shard>:<sequence>" of a record of the batch. */
static void
scalar(void *state, char *token, JsonTokenType tokentype)
{
	AnswerParse *p = (AnswerParse *) state;
	const Shard *sh = p->shard;
	int			shard_id;
	long long	sequence;
	int			end = 0;

	if (p->depth == 0 && tokentype != JSON_TOKEN_NULL)
		set_problem(p, "it is not a JSON object");
	if (p->in_failures && p->depth == 1 && tokentype != JSON_TOKEN_NULL)
		set_problem(p, "batchItemFailures is not a list");
	if (p->in_failures && p->depth == 2)
		set_problem(p, "an item of batchItemFailures is not an object");
	if (!p->at_identifier)
		return;
	p->at_identifier = false;
	if (tokentype != JSON_TOKEN_STRING ||
		sscanf(token, "%d:%lld%n", &shard_id, &sequence, &end) != 2 || token[end] != '\0' ||
		shard_id != sh->shard_id || !in_batch(sh, (int64) sequence))
	{
		if (p->problem == NULL)
		{
			strlcpy(p->bad_identifier, token, sizeof(p->bad_identifier));
			http_make_printable(p->bad_identifier);
		}
		set_problem(p, "it lists an itemIdentifier that is no eventId of the batch");
		return;
	}
	p->item_has_id = true;
	p->first_failed = Min(p->first_failed, (int64) sequence);
}

/*
 * How deep the answer nests, counted outside strings, up to a bound: the
 * parser recurses, so a deeper answer is refused before it is parsed.
 */
static int
nesting(const char *s, size_t len)
{
	int			depth = 0;
	int			deepest = 0;
	bool		in_string = false;

	for (size_t i = 0; i < len && deepest <= EB_ANSWER_MAX_DEPTH; i++)
	{
		if (in_string)
		{
			if (s[i] == '\\')
				i++;
			else if (s[i] == '"')
				in_string = false;
		}
		else if (s[i] == '"')
			in_string = true;
		else if (s[i] == '{' || s[i] == '[')
			deepest = Max(deepest, ++depth);
		else if (s[i] == '}' || s[i] == ']')
			depth--;
	}
	return deepest;
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
	if (nesting(o->body, o->body_len) > EB_ANSWER_MAX_DEPTH)
	{
		snprintf(why, whylen,
				 "HTTP status %ld, but the answer nests deeper than %d levels, so the batch failed",
				 o->status, EB_ANSWER_MAX_DEPTH);
		return 0;
	}

	memset(&p, 0, sizeof(p));
	p.shard = sh;
	p.first_failed = PG_INT64_MAX;
	memset(&sem, 0, sizeof(sem));
	sem.semstate = &p;
	sem.object_start = object_start;
	sem.object_end = object_end;
	sem.array_start = array_start;
	sem.array_end = array_end;
	sem.object_field_start = field_start;
	sem.scalar = scalar;
	/* The lexer only reads the text; the body is NUL-terminated. */
	lex = makeJsonLexContextCstringLen(unconstify(char *, o->body), (int) o->body_len,
									   PG_UTF8, true);
	if (pg_parse_json(lex, &sem) != JSON_SUCCESS)
	{
		snprintf(why, whylen, "HTTP status %ld, but the answer is no valid JSON, so the batch failed",
				 o->status);
		return 0;
	}
	if (p.problem != NULL)
	{
		snprintf(why, whylen, "HTTP status %ld, but %s%s%s%s, so the batch failed",
				 o->status, p.problem, p.bad_identifier[0] ? " (\"" : "",
				 p.bad_identifier, p.bad_identifier[0] ? "\")" : "");
		return 0;
	}
	if (p.first_failed == PG_INT64_MAX)
		return sh->nrecords;
	*named = true;
	snprintf(why, whylen, "the function reported eventId %d:" INT64_FORMAT " as failed (batchItemFailures)",
			 sh->shard_id, p.first_failed);
	if (sh->redelivery)
	{
		int			k = 0;

		while (k < sh->nrecords && sh->sequences[k] < p.first_failed)
			k++;
		return k;
	}
	return (int) (p.first_failed - sh->first_sequence);
}
