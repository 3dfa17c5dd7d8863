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
 *	  and sequence_number a string.  next_partition_cursor is the position
 *	  after the batch as DIS's cursors are (its sample event shows one): the
 *	  unpadded base64 of {"getIteratorParam":{"stream-name","partition-id",
 *	  "cursor-type":"AT_SEQUENCE_NUMBER","starting-sequence-number":"<next
 *	  sequence>"},"generateTimestamp":<ms>}.
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
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/json.h"

#include "format.h"

/* Names of EbFormat values, as create_connector accepts them. */
static const char *const format_names[] = {"datahub", "dis", "json", "cloudevents"};

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
 * Writes the escape of a byte that needs one in a JSON string, as
 * escape_json writes it, and returns its length.
 */
static inline int
json_escape(unsigned char c, char *esc)
{
	static const char hex[] = "0123456789abcdef";
	char		letter;

	switch (c)
	{
		case '"':
		case '\\':
			letter = c;
			break;
		case '\b':
			letter = 'b';
			break;
		case '\f':
			letter = 'f';
			break;
		case '\n':
			letter = 'n';
			break;
		case '\r':
			letter = 'r';
			break;
		case '\t':
			letter = 't';
			break;
		default:
			memcpy(esc, "\\u00", 4);
			esc[4] = hex[c >> 4];
			esc[5] = hex[c & 0xf];
			return 6;
	}
	esc[0] = '\\';
	esc[1] = letter;
	return 2;
}

static inline bool
json_needs_escape(unsigned char c)
{
	return c < ' ' || c == '"' || c == '\\';
}

/*
 * Strings up to this long are escaped in one pass, into room for the worst
 * case (every byte a six-byte \u escape); longer ones are measured first, so
 * that a big record does not reserve six times its size.
 */
#define EB_JSON_ONE_PASS_MAX	(64 * 1024)

/*
 * Appends s as a JSON string, byte for byte what escape_json appends, but
 * faster: the buffer grows once, and a record's data (a JSON array as text,
 * full of quotes, most of a DataHub body) is read once.
 */
static void
append_json_string(StringInfo out, const char *s)
{
	size_t		len = strlen(s);
	size_t		size = len * 6 + 2;
	char		esc[6];
	char	   *d;

	if (len > EB_JSON_ONE_PASS_MAX)
	{
		size = len + 2;
		for (size_t i = 0; i < len; i++)
			if (unlikely(json_needs_escape((unsigned char) s[i])))
				size += json_escape((unsigned char) s[i], esc) - 1;
	}
	/* Too big for a body: enlargeStringInfo reports it. */
	enlargeStringInfo(out, (int) Min(size, (size_t) MaxAllocSize));

	d = out->data + out->len;
	*d++ = '"';
	for (size_t i = 0; i < len; i++)
	{
		unsigned char c = (unsigned char) s[i];

		if (likely(!json_needs_escape(c)))
			*d++ = c;
		else
			d += json_escape(c, d);
	}
	*d++ = '"';
	*d = '\0';
	out->len = d - out->data;
}

/* Bytes s takes as a JSON string, quotes included. */
static size_t
json_string_size(const char *s)
{
	size_t		size = 2;
	char		esc[6];

	for (; *s; s++)
	{
		if (unlikely(json_needs_escape((unsigned char) *s)))
			size += json_escape((unsigned char) *s, esc);
		else
			size++;
	}
	return size;
}

/* Decimal digits of an int64, sign included. */
static size_t
int64_size(int64 v)
{
	char		buf[MAXINT8LEN + 1];

	return pg_lltoa(v, buf);
}

/*
 * Bytes a record adds to a body of the given format, exactly, with the comma
 * before it.  Never more than FORMAT_RECORD_MAX().
 */
size_t
format_record_size(EbFormat format, int32 shard_id, const FormatRecord *r)
{
	if (format == EB_FORMAT_DIS)
	{
		const char *data = to_utf8(r->data);

		return strlen(",{\"partition_key\":,\"data\":\"\",\"sequence_number\":\"\"}") +
			json_string_size(r->partition_key ? r->partition_key : "") +
			pg_b64_enc_len(strlen(data)) + int64_size(r->sequence);
	}
	return strlen(",{\"eventId\":\":\",\"systemTime\":,\"data\":}") +
		int64_size(shard_id) + int64_size(r->sequence) + int64_size(r->system_time) +
		json_string_size(r->data);
}

/*
 * Bytes a body of the batch takes besides its records, at most (the
 * strings it names counted as if each byte needed a six-byte escape).
 */
size_t
format_envelope_max(const FormatBatch *b)
{
	size_t		names = strlen(b->database) + strlen(b->stream) + strlen(b->region);

	return 256 + 6 * names;
}

/* Appends an integer in decimal, without printf's cost. */
void
format_append_int64(StringInfo out, int64 v)
{
	char		buf[MAXINT8LEN + 1];
	int			len = pg_lltoa(v, buf);

	appendBinaryStringInfo(out, buf, len);
}

/* Appends a DataHub record object; shard is "<shard id>:". */
static void
append_datahub_record(StringInfo out, const char *shard, int shard_len, const FormatRecord *r)
{
	appendStringInfoString(out, "{\"eventId\":\"");
	appendBinaryStringInfo(out, shard, shard_len);
	format_append_int64(out, r->sequence);
	appendStringInfoString(out, "\",\"systemTime\":");
	format_append_int64(out, r->system_time);
	appendStringInfoString(out, ",\"data\":");
	append_json_string(out, r->data);
	appendStringInfoChar(out, '}');
}

/* Appends a DIS record object. */
static void
append_dis_record(StringInfo out, const FormatRecord *r)
{
	const char *data = to_utf8(r->data);

	appendStringInfoString(out, "{\"partition_key\":");
	escape_json(out, r->partition_key ? r->partition_key : "");
	appendStringInfoString(out, ",\"data\":\"");
	append_base64(out, data, strlen(data));
	appendStringInfoString(out, "\",\"sequence_number\":\"");
	format_append_int64(out, r->sequence);
	appendStringInfoString(out, "\"}");
}

/*
 * Appends one record as the record object of a datahub or dis body (a Kafka
 * message's value, DESIGN 9.6).
 */
void
format_record_object(StringInfo out, EbFormat format, int32 shard_id, const FormatRecord *r)
{
	char		shard[12 + 1];
	int			shard_len = pg_ltoa(shard_id, shard);
	int			start = out->len;

	shard[shard_len++] = ':';
	if (format == EB_FORMAT_DIS)
		append_dis_record(out, r);
	else
		append_datahub_record(out, shard, shard_len, r);
	format_convert_body(out, start);
}

static void
format_datahub(StringInfo out, const FormatBatch *b)
{
	char		shard[12 + 1];	/* an int32 and the colon */
	int			shard_len = pg_ltoa(b->shard_id, shard);

	shard[shard_len++] = ':';
	appendStringInfoString(out, "{\"eventSource\":\"acs:datahub\","
						   "\"eventName\":\"acs:datahub:putRecord\","
						   "\"eventSourceARN\":");
	escape_json(out, psprintf("/projects/%s/topics/%s", b->database, b->stream));
	appendStringInfoString(out, ",\"region\":");
	escape_json(out, b->region);
	appendStringInfoString(out, ",\"records\":[");
	for (int i = 0; i < b->nrecords; i++)
	{
		if (i > 0)
			appendStringInfoChar(out, ',');
		append_datahub_record(out, shard, shard_len, &b->records[i]);
	}
	appendStringInfoString(out, "]}");
}

static void
format_dis(StringInfo out, const FormatBatch *b)
{
	const FormatRecord *last = &b->records[b->nrecords - 1];
	StringInfoData cursor;
	const char *utf8;

	/* The position after the batch, as DIS's own cursors say it. */
	initStringInfo(&cursor);
	appendStringInfoString(&cursor, "{\"getIteratorParam\":{\"stream-name\":");
	escape_json(&cursor, b->stream);
	appendStringInfo(&cursor, ",\"partition-id\":\"shardId-%010d\","
					 "\"cursor-type\":\"AT_SEQUENCE_NUMBER\","
					 "\"starting-sequence-number\":\"" INT64_FORMAT "\"},"
					 "\"generateTimestamp\":" INT64_FORMAT "}",
					 b->shard_id, last->sequence + 1, b->now_ms);
	utf8 = to_utf8(cursor.data);

	appendStringInfo(out, "{\"ShardID\":\"shardId-%010d\","
					 "\"Message\":{\"next_partition_cursor\":\"", b->shard_id);
	append_base64(out, utf8, strlen(utf8));
	/* Unpadded, as in DIS's sample. */
	while (out->data[out->len - 1] == '=')
		out->data[--out->len] = '\0';
	appendStringInfoString(out, "\",\"records\":[");
	for (int i = 0; i < b->nrecords; i++)
	{
		if (i > 0)
			appendStringInfoChar(out, ',');
		append_dis_record(out, &b->records[i]);
	}
	appendStringInfo(out, "],\"millis_behind_latest\":\"" INT64_FORMAT "\"},"
					 "\"Tag\":\"latest\",\"StreamName\":",
					 Max(b->now_ms - last->system_time, 0));
	escape_json(out, b->stream);
	appendStringInfoChar(out, '}');
}

/*
 * Appends the body of a datahub or dis batch of at least one record to out.  Allocates
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

	format_convert_body(out, start);
}

/* Converts the body that starts at out->data[start] to UTF-8, if it is not. */
void
format_convert_body(StringInfo out, int start)
{
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
