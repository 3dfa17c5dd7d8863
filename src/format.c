/*-------------------------------------------------------------------------
 *
 * format.c
 *	  Event bodies: pure functions that turn a batch (consecutive records of
 *	  one shard) into the JSON body of one HTTP POST.
 *
 * Two formats, byte for byte as the design's section 5 shows them, compact
 * and with a fixed key order:
 *
 * datahub: Alibaba DataHub -> Function Compute.  Each record is {"eventId",
 *	  "systemTime", "data"}, where data is the record's JSON array serialised
 *	  as a JSON string.
 * dis: Huawei FunctionGraph DIS trigger.  Each record is {"partition_key",
 *	  "data", "sequence_number"}, where data is the base64 of the JSON array
 *	  and sequence_number a string.  next_partition_cursor is the base64 of
 *	  "<shard>:<next sequence>", an opaque position after the batch.
 *
 * Bodies are UTF-8 whatever the database encoding.
 *
 * IDENTIFICATION
 *	  src/format.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "common/base64.h"
#include "mb/pg_wchar.h"
#include "utils/json.h"

#include "format.h"

/* Names of EbFormat values, as create_connector accepts them. */
static const char *const format_names[] = {"datahub", "dis"};

/* Looks a format up by its SQL name; returns false for an unknown name. */
bool
format_by_name(const char *name, EbFormat *format)
{
	for (int i = 0; i < lengthof(format_names); i++)
	{
		if (strcmp(name, format_names[i]) == 0)
		{
			*format = (EbFormat) i;
			return true;
		}
	}
	return false;
}

/* Does text need converting to become UTF-8? */
static bool
needs_conversion(void)
{
	int			encoding = GetDatabaseEncoding();

	return encoding != PG_UTF8 && encoding != PG_SQL_ASCII;
}

/* A string in UTF-8: itself when no conversion is needed. */
static const char *
to_utf8(const char *s)
{
	return needs_conversion() ? pg_server_to_any(s, strlen(s), PG_UTF8) : s;
}

/* Appends the base64 of len bytes, with no line breaks. */
static void
append_base64(StringInfo out, const char *src, int len)
{
	int			encoded_len = pg_b64_enc_len(len);
	int			n;

	enlargeStringInfo(out, encoded_len);
	n = pg_b64_encode(src, len, out->data + out->len, encoded_len);
	if (n < 0)
		elog(ERROR, "could not encode event data as base64");
	out->len += n;
	out->data[out->len] = '\0';
}

/*
 * Appends s as a JSON string, byte for byte what escape_json appends, but
 * faster: the runs of bytes that need no escape are copied whole.  Records'
 * data (a JSON array as text) is most of a DataHub body.
 */
static void
append_json_string(StringInfo out, const char *s)
{
	const char *run = s;
	const char *p;

	appendStringInfoCharMacro(out, '"');
	for (p = s; *p; p++)
	{
		unsigned char c = (unsigned char) *p;
		const char *esc;
		char		u[8];

		if (c >= ' ' && c != '"' && c != '\\')
			continue;
		if (p > run)
			appendBinaryStringInfo(out, run, p - run);
		run = p + 1;
		switch (c)
		{
			case '"':
				esc = "\\\"";
				break;
			case '\\':
				esc = "\\\\";
				break;
			case '\b':
				esc = "\\b";
				break;
			case '\f':
				esc = "\\f";
				break;
			case '\n':
				esc = "\\n";
				break;
			case '\r':
				esc = "\\r";
				break;
			case '\t':
				esc = "\\t";
				break;
			default:
				snprintf(u, sizeof(u), "\\u%04x", (int) c);
				esc = u;
				break;
		}
		appendBinaryStringInfo(out, esc, strlen(esc));
	}
	if (p > run)
		appendBinaryStringInfo(out, run, p - run);
	appendStringInfoCharMacro(out, '"');
}

static void
format_datahub(StringInfo out, const FormatBatch *b)
{
	appendStringInfoString(out, "{\"eventSource\":\"acs:datahub\","
						   "\"eventName\":\"acs:datahub:putRecord\","
						   "\"eventSourceARN\":");
	escape_json(out, psprintf("/projects/%s/topics/%s", b->database, b->stream));
	appendStringInfoString(out, ",\"region\":");
	escape_json(out, b->region);
	appendStringInfoString(out, ",\"records\":[");
	for (int i = 0; i < b->nrecords; i++)
	{
		const FormatRecord *r = &b->records[i];

		appendStringInfo(out, "%s{\"eventId\":\"%d:" INT64_FORMAT "\","
						 "\"systemTime\":" INT64_FORMAT ",\"data\":",
						 i > 0 ? "," : "", b->shard_id, r->sequence, r->system_time);
		append_json_string(out, r->data);
		appendStringInfoChar(out, '}');
	}
	appendStringInfoString(out, "]}");
}

static void
format_dis(StringInfo out, const FormatBatch *b)
{
	const FormatRecord *last = &b->records[b->nrecords - 1];
	char	   *cursor = psprintf("%d:" INT64_FORMAT, b->shard_id, last->sequence + 1);

	appendStringInfo(out, "{\"ShardID\":\"shardId-%010d\","
					 "\"Message\":{\"next_partition_cursor\":\"", b->shard_id);
	append_base64(out, cursor, strlen(cursor));
	appendStringInfoString(out, "\",\"records\":[");
	for (int i = 0; i < b->nrecords; i++)
	{
		const FormatRecord *r = &b->records[i];
		const char *data = to_utf8(r->data);

		appendStringInfoString(out, i > 0 ? ",{\"partition_key\":" : "{\"partition_key\":");
		escape_json(out, r->partition_key ? r->partition_key : "");
		appendStringInfoString(out, ",\"data\":\"");
		append_base64(out, data, strlen(data));
		appendStringInfo(out, "\",\"sequence_number\":\"" INT64_FORMAT "\"}", r->sequence);
	}
	appendStringInfo(out, "],\"millis_behind_latest\":\"" INT64_FORMAT "\"},"
					 "\"Tag\":\"latest\",\"StreamName\":",
					 Max(b->now_ms - last->system_time, 0));
	escape_json(out, b->stream);
	appendStringInfoChar(out, '}');
}

/*
 * Appends the body of a batch of at least one record to out.  Allocates
 * temporary memory in the current memory context.
 */
void
format_body(StringInfo out, const FormatBatch *batch)
{
	int			start = out->len;

	Assert(batch->nrecords > 0);
	if (batch->format == EB_FORMAT_DIS)
		format_dis(out, batch);
	else
		format_datahub(out, batch);

	if (needs_conversion())
	{
		char	   *utf8 = pg_server_to_any(out->data + start, out->len - start, PG_UTF8);

		if (utf8 != out->data + start)
		{
			out->len = start;
			appendStringInfoString(out, utf8);
		}
	}
}
