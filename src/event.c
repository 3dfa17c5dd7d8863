/*-------------------------------------------------------------------------
 *
 * event.c
 *	  Named events (DESIGN 9.5): a shard's TUPLE records turned into events
 *	  whose columns have names, for the json and cloudevents formats and for
 *	  connector filters and transforms.
 *
 * A record's data is the JSON array the decoder wrote: eight metadata
 * fields, then the row's values in attribute order as text.  Its table
 * version (event_bridge.table_versions) names the columns and their types;
 * the worker keeps the versions it has read in a cache.  An event is one
 * change: an INSERT or DELETE record, or an UPDATE's before and after
 * records (same record id, adjacent sequences) together.  Its eventId and
 * sequence are those of its first record.
 *
 * Values are typed as to_json would type them, from their text: numbers
 * (smallint, integer, bigint, real, double precision, numeric; not NaN or
 * infinities), booleans, json and jsonb as JSON; every other type, and the
 * marker of a value logical decoding did not carry, a JSON string.  A
 * record captured by 0.1 has no version: its columns are named by their
 * position ("1", "2", ...) and its values are strings.
 *
 * The json event is {"eventId","sequence","systemTime","commitTime","op",
 * "table","key","before","after"}; filters see it (their keys are eventId,
 * op, table, before and after) and transforms read it.  The cloudevents
 * event is a CloudEvents 1.0 event whose data is {"op","table","key",
 * "before","after"}.
 *
 * IDENTIFICATION
 *	  src/event.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "pgtime.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/hsearch.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "mb/pg_wchar.h"
#include "utils/memutils.h"

#include "catalog.h"
#include "event.h"

/* The marker of a value logical decoding did not carry (decoder.c). */
#define EB_UNAVAILABLE_JSON		"\"__event_bridge_unavailable__\""

/* Metadata fields before a record's columns, and the ones read here. */
#define FIELD_OPERATION		1
#define FIELD_TABLE			4
#define FIELD_COMMIT_TIME	5
#define FIELD_BEFORE_FLAG	6
#define FIELD_COLUMNS		8

/* A cache of this many table versions at most; then it starts again. */
#define EB_TABLE_VERSIONS_CACHED	4096

/* How a column's text becomes JSON. */
typedef enum ValueKind
{
	VALUE_STRING,
	VALUE_NUMBER,
	VALUE_BOOL,
	VALUE_JSON
} ValueKind;

/* A table version: the names (as JSON strings and a colon) and kinds of its columns. */
typedef struct TableShape
{
	int64		version;		/* hash key */
	int			ncolumns;		/* 0: unknown, columns go by position */
	char	  **names;
	ValueKind  *kinds;
	int			nkeys;
	int		   *keys;			/* column indexes */
} TableShape;

/* A JSON token of a record's data: a string with its quotes, or null. */
typedef struct Field
{
	const char *p;
	int			len;
} Field;

/* A record's data split into fields. */
typedef struct Image
{
	Field	   *fields;
	int			nfields;
} Image;

/* One event: a record, or an UPDATE's two. */
typedef struct Unit
{
	const FormatRecord *first;
	int			nrecords;
	char		op;				/* I, U or D */
	TableShape *shape;
	Image		before;			/* nfields 0: none */
	Image		after;
} Unit;

static HTAB *shapes = NULL;
static MemoryContext shapes_context = NULL;
static MemoryContext scratch_context = NULL;

static EbStatement version_statement = {
	"SELECT ARRAY(SELECT c.value ->> 'name' FROM jsonb_array_elements(v.columns)"
	" WITH ORDINALITY c(value, n) ORDER BY c.n),"
	" ARRAY(SELECT c.value ->> 'type' FROM jsonb_array_elements(v.columns)"
	" WITH ORDINALITY c(value, n) ORDER BY c.n),"
	" ARRAY(SELECT k.value FROM jsonb_array_elements_text(v.key_columns)"
	" WITH ORDINALITY k(value, n) ORDER BY k.n)"
	" FROM event_bridge.table_versions v WHERE v.table_version = $1",
	1, {INT8OID}
};

/* Forgets the table versions read (the extension was dropped). */
void
event_forget_tables(void)
{
	if (shapes_context != NULL)
		MemoryContextDelete(shapes_context);
	shapes_context = NULL;
	shapes = NULL;
}

static ValueKind
kind_of_type(const char *type)
{
	static const char *const numbers[] = {
		"smallint", "integer", "bigint", "real", "double precision", "numeric"
	};

	for (int i = 0; i < lengthof(numbers); i++)
		if (strcmp(type, numbers[i]) == 0)
			return VALUE_NUMBER;
	if (strncmp(type, "numeric(", 8) == 0)
		return VALUE_NUMBER;
	if (strcmp(type, "boolean") == 0)
		return VALUE_BOOL;
	if (strcmp(type, "json") == 0 || strcmp(type, "jsonb") == 0)
		return VALUE_JSON;
	return VALUE_STRING;
}

/* The elements of a text[] result column, as C strings. */
static char **
text_array(uint64 row, int attno, int *n)
{
	bool		isnull;
	Datum		d = eb_result(row, attno, &isnull);
	Datum	   *elems;
	bool	   *nulls;
	char	  **out;

	deconstruct_array(DatumGetArrayTypeP(d), TEXTOID, -1, false, TYPALIGN_INT,
					  &elems, &nulls, n);
	out = palloc(sizeof(char *) * Max(*n, 1));
	for (int i = 0; i < *n; i++)
		out[i] = nulls[i] ? "" : TextDatumGetCString(elems[i]);
	return out;
}

/*
 * Reads a table version from the catalog into shape (allocated in
 * shapes_context).  A version that is not there leaves it unknown.  Must be
 * called inside a transaction.
 */
static void
load_shape(TableShape *shape)
{
	Datum		arg = Int64GetDatum(shape->version);
	char	  **names;
	char	  **types;
	char	  **keys;
	int			ntypes;
	int			nkeys;
	MemoryContext old;
	StringInfoData buf;

	shape->ncolumns = 0;
	shape->nkeys = 0;
	if (shape->version < 0 || eb_run(&version_statement, &arg, NULL) != 1)
		return;
	names = text_array(0, 1, &shape->ncolumns);
	types = text_array(0, 2, &ntypes);
	keys = text_array(0, 3, &nkeys);

	old = MemoryContextSwitchTo(shapes_context);
	shape->names = palloc(sizeof(char *) * Max(shape->ncolumns, 1));
	shape->kinds = palloc(sizeof(ValueKind) * Max(shape->ncolumns, 1));
	shape->keys = palloc(sizeof(int) * Max(nkeys, 1));
	for (int i = 0; i < shape->ncolumns; i++)
	{
		initStringInfo(&buf);
		escape_json(&buf, names[i]);
		appendStringInfoChar(&buf, ':');
		shape->names[i] = buf.data;
		shape->kinds[i] = i < ntypes ? kind_of_type(types[i]) : VALUE_STRING;
	}
	for (int k = 0; k < nkeys; k++)
		for (int i = 0; i < shape->ncolumns; i++)
			if (strcmp(keys[k], names[i]) == 0)
				shape->keys[shape->nkeys++] = i;
	MemoryContextSwitchTo(old);
}

/* The shape of a table version, read once.  Must be called inside a transaction. */
static TableShape *
find_shape(int64 version)
{
	TableShape *shape;
	bool		found;

	if (shapes != NULL && hash_get_num_entries(shapes) >= EB_TABLE_VERSIONS_CACHED)
		event_forget_tables();
	if (shapes == NULL)
	{
		HASHCTL		ctl;

		shapes_context = AllocSetContextCreate(TopMemoryContext, "event_bridge table versions",
											   ALLOCSET_DEFAULT_SIZES);
		ctl.keysize = sizeof(int64);
		ctl.entrysize = sizeof(TableShape);
		ctl.hcxt = shapes_context;
		shapes = hash_create("event_bridge table versions", 64, &ctl,
							 HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	}
	shape = hash_search(shapes, &version, HASH_ENTER, &found);
	if (!found)
	{
		MemoryContext caller = CurrentMemoryContext;

		PG_TRY();
		{
			load_shape(shape);
			/* SPI leaves its own memory current: the caller's again. */
			MemoryContextSwitchTo(caller);
		}
		PG_CATCH();
		{
			hash_search(shapes, &version, HASH_REMOVE, NULL);
			PG_RE_THROW();
		}
		PG_END_TRY();
	}
	return shape;
}

/* Splits a record's data (a JSON array of strings and nulls) into its tokens. */
static void
split_fields(const char *data, int expected, Image *image)
{
	const char *s = data;
	int			room = expected + FIELD_COLUMNS;

	image->fields = palloc(sizeof(Field) * room);
	image->nfields = 0;
	if (*s == '[')
		s++;
	while (*s != '\0' && *s != ']')
	{
		const char *start = s;

		if (*s == '"')
		{
			for (s++; *s != '\0' && *s != '"'; s++)
				if (*s == '\\' && s[1] != '\0')
					s++;
			if (*s == '"')
				s++;
		}
		else
			while (*s != '\0' && *s != ',' && *s != ']')
				s++;
		if (image->nfields == room)
		{
			room *= 2;
			image->fields = repalloc(image->fields, sizeof(Field) * room);
		}
		image->fields[image->nfields].p = start;
		image->fields[image->nfields].len = s - start;
		image->nfields++;
		if (*s == ',')
			s++;
	}
}

/* Is a token this quoted string? */
static bool
field_is(const Field *f, const char *quoted)
{
	return f->len == (int) strlen(quoted) && memcmp(f->p, quoted, f->len) == 0;
}

/* The one character of a metadata field like "U", or '\0'. */
static char
field_char(const Image *image, int i)
{
	const Field *f = &image->fields[i];

	return (i < image->nfields && f->len == 3) ? f->p[1] : '\0';
}

/*
 * Is a record the before image of an UPDATE, which the after image follows
 * and which an event cannot be cut from?
 */
bool
event_is_update_before(const FormatRecord *r)
{
	Image		image;
	bool		result;

	if (r->data == NULL)
		return false;
	split_fields(r->data, 0, &image);
	result = field_char(&image, FIELD_OPERATION) == 'U' &&
		field_char(&image, FIELD_BEFORE_FLAG) == 'Y';
	pfree(image.fields);
	return result;
}

/* Appends the JSON text inside a string token (a json or jsonb value). */
static void
append_unescaped(StringInfo out, const Field *f)
{
	const char *s = f->p + 1;
	const char *end = f->p + f->len - 1;

	for (; s < end; s++)
	{
		if (*s != '\\' || s + 1 >= end)
		{
			appendStringInfoChar(out, *s);
			continue;
		}
		switch (*++s)
		{
			case 'b':
				appendStringInfoChar(out, '\b');
				break;
			case 'f':
				appendStringInfoChar(out, '\f');
				break;
			case 'n':
				appendStringInfoChar(out, '\n');
				break;
			case 'r':
				appendStringInfoChar(out, '\r');
				break;
			case 't':
				appendStringInfoChar(out, '\t');
				break;
			case 'u':
				/* escape_json writes \u only for control characters */
				if (end - s > 4)
				{
					char		hex[5];

					memcpy(hex, s + 1, 4);
					hex[4] = '\0';
					appendStringInfoChar(out, (char) strtol(hex, NULL, 16));
					s += 4;
				}
				break;
			default:
				appendStringInfoChar(out, *s);
				break;
		}
	}
}

/* The value of the 4 hex digits at s, or -1. */
static int
hex4(const char *s, const char *end)
{
	int			v = 0;

	if (end - s < 4)
		return -1;
	for (int i = 0; i < 4; i++)
	{
		int			c = (unsigned char) s[i];

		v <<= 4;
		if (c >= '0' && c <= '9')
			v |= c - '0';
		else if (c >= 'a' && c <= 'f')
			v |= c - 'a' + 10;
		else if (c >= 'A' && c <= 'F')
			v |= c - 'A' + 10;
		else
			return -1;
	}
	return v;
}

/*
 * Can jsonb hold this JSON text?  A json column takes \u escapes that jsonb
 * refuses: \u0000, a surrogate not in a pair, and (in a database not in
 * UTF8) any non-ASCII one.  An event must parse as jsonb for filters and
 * transforms, so such a value is sent as its text instead.
 */
static bool
jsonb_can_hold(const char *s, const char *end)
{
	bool		utf8 = GetDatabaseEncoding() == PG_UTF8;

	while ((s = memchr(s, '\\', end - s)) != NULL)
	{
		int			code;

		if (end - s < 2)
			return false;
		if (s[1] != 'u')
		{
			s += 2;
			continue;
		}
		code = hex4(s + 2, end);
		s += 6;
		if (code == 0 || (code > 0x7f && !utf8) || (code >= 0xdc00 && code <= 0xdfff))
			return false;
		if (code >= 0xd800 && code <= 0xdbff)
		{
			int			low = (end - s >= 6 && s[0] == '\\' && s[1] == 'u') ? hex4(s + 2, end) : -1;

			if (low < 0xdc00 || low > 0xdfff)
				return false;
			s += 6;
		}
		else if (code < 0)
			return false;
	}
	return true;
}

/* Is the text inside a string token a JSON number? */
static bool
is_json_number(const Field *f)
{
	const char *s = f->p + 1;
	const char *end = f->p + f->len - 1;

	if (s < end && *s == '-')
		s++;
	if (s >= end || !isdigit((unsigned char) *s))
		return false;
	for (; s < end; s++)
		if (!isdigit((unsigned char) *s) && *s != '.' && *s != 'e' && *s != 'E' &&
			*s != '+' && *s != '-')
			return false;
	return true;
}

/* Appends a column's value as JSON of its kind. */
static void
append_value(StringInfo out, ValueKind kind, const Field *f)
{
	if (f->p[0] != '"' || field_is(f, EB_UNAVAILABLE_JSON))
		kind = VALUE_STRING;	/* null, or the marker */
	switch (kind)
	{
		case VALUE_NUMBER:
			if (is_json_number(f))
			{
				appendBinaryStringInfo(out, f->p + 1, f->len - 2);
				return;
			}
			break;
		case VALUE_BOOL:
			if (field_is(f, "\"t\"") || field_is(f, "\"f\""))
			{
				appendStringInfoString(out, f->p[1] == 't' ? "true" : "false");
				return;
			}
			break;
		case VALUE_JSON:
			{
				int			start = out->len;

				append_unescaped(out, f);
				if (jsonb_can_hold(out->data + start, out->data + out->len))
					return;
				out->len = start;	/* as text, below */
				out->data[start] = '\0';
			}
			break;
		case VALUE_STRING:
			break;
	}
	appendBinaryStringInfo(out, f->p, f->len);
}

/* Appends the name of column i and a colon. */
static void
append_name(StringInfo out, const TableShape *shape, int i)
{
	if (i < shape->ncolumns)
		appendStringInfoString(out, shape->names[i]);
	else
		appendStringInfo(out, "\"%d\":", i + 1);
}

/* Appends a row image as a JSON object, or null. */
static void
append_image(StringInfo out, const TableShape *shape, const Image *image)
{
	if (image->nfields == 0)
	{
		appendStringInfoString(out, "null");
		return;
	}
	appendStringInfoChar(out, '{');
	for (int i = FIELD_COLUMNS; i < image->nfields; i++)
	{
		int			column = i - FIELD_COLUMNS;

		if (i > FIELD_COLUMNS)
			appendStringInfoChar(out, ',');
		append_name(out, shape, column);
		append_value(out, column < shape->ncolumns ? shape->kinds[column] : VALUE_STRING,
					 &image->fields[i]);
	}
	appendStringInfoChar(out, '}');
}

/* Appends the event's key, its key columns as an object, or null. */
static void
append_key(StringInfo out, const Unit *u)
{
	const Image *image = u->after.nfields > 0 ? &u->after : &u->before;

	if (u->shape->nkeys == 0 || image->nfields == 0)
	{
		appendStringInfoString(out, "null");
		return;
	}
	appendStringInfoChar(out, '{');
	for (int k = 0; k < u->shape->nkeys; k++)
	{
		int			i = FIELD_COLUMNS + u->shape->keys[k];

		if (k > 0)
			appendStringInfoChar(out, ',');
		append_name(out, u->shape, u->shape->keys[k]);
		if (i < image->nfields)
			append_value(out, u->shape->kinds[u->shape->keys[k]], &image->fields[i]);
		else
			appendStringInfoString(out, "null");
	}
	appendStringInfoChar(out, '}');
}

const char *
event_op_name(char op)
{
	return op == 'I' ? "INSERT" : op == 'D' ? "DELETE" : "UPDATE";
}

/* The image the unit's metadata comes from. */
static const Image *
meta(const Unit *u)
{
	return u->before.nfields > 0 ? &u->before : &u->after;
}

/* Appends a metadata field's token, its quotes taken off when bare. */
static void
append_field(StringInfo out, const Image *image, int i, bool bare)
{
	const Field *f = &image->fields[i];

	if (i >= image->nfields)
		appendStringInfoString(out, "null");
	else if (bare && f->len >= 2 && f->p[0] == '"')
		appendBinaryStringInfo(out, f->p + 1, f->len - 2);
	else
		appendBinaryStringInfo(out, f->p, f->len);
}

/* Appends "op", "table", "key", "before" and "after", the part every event shares. */
static void
append_change(StringInfo out, const Unit *u)
{
	appendStringInfo(out, "\"op\":\"%s\",\"table\":", event_op_name(u->op));
	append_field(out, meta(u), FIELD_TABLE, false);
	appendStringInfoString(out, ",\"key\":");
	append_key(out, u);
	appendStringInfoString(out, ",\"before\":");
	append_image(out, u->shape, &u->before);
	appendStringInfoString(out, ",\"after\":");
	append_image(out, u->shape, &u->after);
}

/* Appends the json event of a unit. */
static void
append_json_event(StringInfo out, const EventBatch *b, const Unit *u)
{
	appendStringInfo(out, "{\"eventId\":\"%d:", b->batch.shard_id);
	format_append_int64(out, u->first->sequence);
	appendStringInfoString(out, "\",\"sequence\":");
	format_append_int64(out, u->first->sequence);
	appendStringInfoString(out, ",\"systemTime\":");
	format_append_int64(out, u->first->system_time);
	appendStringInfoString(out, ",\"commitTime\":");
	append_field(out, meta(u), FIELD_COMMIT_TIME, true);
	appendStringInfoChar(out, ',');
	append_change(out, u);
	appendStringInfoChar(out, '}');
}

/* Appends a time in epoch milliseconds as RFC 3339, in UTC. */
static void
append_rfc3339(StringInfo out, int64 ms)
{
	pg_time_t	seconds = (pg_time_t) (ms >= 0 ? ms / 1000 : (ms - 999) / 1000);
	struct pg_tm *tm = pg_gmtime(&seconds);

	appendStringInfo(out, "\"%04d-%02d-%02dT%02d:%02d:%02d.%03dZ\"",
					 tm->tm_year + 1900, tm->tm_mon + 1, tm->tm_mday, tm->tm_hour,
					 tm->tm_min, tm->tm_sec, (int) (ms - (int64) seconds * 1000));
}

/* Appends the CloudEvents 1.0 event of a unit. */
static void
append_cloudevent(StringInfo out, const EventBatch *b, const Unit *u)
{
	const Image *m = meta(u);

	appendStringInfo(out, "{\"specversion\":\"1.0\",\"id\":\"%d:", b->batch.shard_id);
	format_append_int64(out, u->first->sequence);
	appendStringInfoString(out, "\",\"source\":");
	escape_json(out, psprintf("/projects/%s/topics/%s", b->batch.database, b->batch.stream));
	appendStringInfo(out, ",\"type\":\"event_bridge.row.%s\",\"subject\":",
					 u->op == 'I' ? "inserted" : u->op == 'D' ? "deleted" : "updated");
	append_field(out, m, FIELD_TABLE, false);
	appendStringInfoString(out, ",\"time\":");
	if (FIELD_COMMIT_TIME < m->nfields)
		append_rfc3339(out, strtoi64(m->fields[FIELD_COMMIT_TIME].p + 1, NULL, 10));
	else
		appendStringInfoString(out, "null");
	appendStringInfoString(out, ",\"datacontenttype\":\"application/json\",\"data\":{");
	append_change(out, u);
	appendStringInfoString(out, "}}");
}

/*
 * Reads the event that starts at records[i]: the record, and the next one
 * too if they are an UPDATE's before and after images.  Must be called
 * inside a transaction.
 */
static void
read_unit(const EventBatch *b, int i, Unit *u)
{
	const FormatRecord *r = &b->batch.records[i];
	Image		image;

	memset(u, 0, sizeof(Unit));
	u->first = r;
	u->nrecords = 1;
	u->shape = find_shape(r->table_version);
	split_fields(r->data, u->shape->ncolumns, &image);
	u->op = field_char(&image, FIELD_OPERATION);
	if (field_char(&image, FIELD_BEFORE_FLAG) == 'Y')
		u->before = image;
	else
		u->after = image;

	if (u->op == 'U' && u->before.nfields > 0 && i + 1 < b->batch.nrecords &&
		b->batch.records[i + 1].data != NULL)
	{
		const FormatRecord *next = &b->batch.records[i + 1];
		Image		after;

		split_fields(next->data, u->shape->ncolumns, &after);
		/* The after image: an UPDATE's, with the same record id. */
		if (field_char(&after, FIELD_OPERATION) == 'U' &&
			field_char(&after, FIELD_BEFORE_FLAG) == 'N' && after.nfields > 0 &&
			image.nfields > 0 && after.fields[0].len == image.fields[0].len &&
			memcmp(after.fields[0].p, image.fields[0].p, image.fields[0].len) == 0)
		{
			u->after = after;
			u->nrecords = 2;
			if (next->table_version != r->table_version)
				u->shape = find_shape(next->table_version);
		}
	}
}

/*
 * The event of a unit as jsonb, for a filter or a transform; its json text
 * is left in text (initialized), for a json body to reuse.
 */
static Jsonb *
unit_jsonb(const EventBatch *b, const Unit *u, StringInfo text)
{
	append_json_event(text, b, u);
	return DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(text->data)));
}

/*
 * Appends a unit's event as the body shows it: transformed, a CloudEvent,
 * or the json event (json_text when the filter already made it).
 */
static void
append_event(StringInfo out, const EventBatch *b, const Unit *u, Jsonb *event,
			 StringInfo json_text)
{
	if (b->transform != NULL)
		rules_transform_append(out, b->transform, event, b->max_bytes);
	else if (b->batch.format == EB_FORMAT_CLOUDEVENTS)
		append_cloudevent(out, b, u);
	else if (json_text->len > 0)
		appendBinaryStringInfo(out, json_text->data, json_text->len);
	else
		append_json_event(out, b, u);
}

/* The Content-Type of a body. */
const char *
event_content_type(EbFormat format, bool transformed)
{
	if (format == EB_FORMAT_CLOUDEVENTS && !transformed)
		return "application/cloudevents-batch+json";
	return "application/json";
}

/*
 * The body of a datahub or dis batch whose filter kept the records in kept
 * (nkept of them; unit_end[k] is the index in b->batch.records after the unit
 * kept[k] ends): as many whole units as fit in max_bytes.
 */
static void
records_body(StringInfo out, const EventBatch *b, FormatRecord *kept, int nkept,
			 const int *unit_end, EventBody *result)
{
	FormatBatch batch = b->batch;
	size_t		used;
	int			fit = 0;
	int			k = 0;

	batch.records = kept;
	used = format_envelope_max(&batch);
	while (k < nkept)
	{
		int			end = k + 1;
		size_t		size = format_record_size(b->batch.format, b->batch.shard_id, &kept[k]);

		/* the after image of an UPDATE is in the same unit */
		while (end < nkept && unit_end[end] == unit_end[k])
			size += format_record_size(b->batch.format, b->batch.shard_id, &kept[end++]);
		if (used + size > b->max_bytes)
			break;
		used += size;
		fit = end;
		k = end;
	}
	if (fit < nkept)
	{
		/* The first unit that does not fit is not done with, nor what follows it. */
		const FormatRecord *stop = &kept[fit];

		result->consumed = 0;
		for (int i = 0; i < b->batch.nrecords; i++)
			if (b->batch.records[i].sequence == stop->sequence)
				result->consumed = i;
		while (result->nfiltered > 0 &&
			   result->filtered[result->nfiltered - 1] > stop->sequence)
			result->nfiltered--;
	}
	result->nevents = fit;
	if (fit == 0)
		return;
	batch.nrecords = fit;
	format_body(out, &batch);
}

/* The text of a metadata field that is a JSON string (the table), unescaped. */
static char *
field_text(const Image *image, int i)
{
	StringInfoData buf;

	initStringInfo(&buf);
	if (i < image->nfields && image->fields[i].len >= 2)
		append_unescaped(&buf, &image->fields[i]);
	return buf.data;
}

/*
 * The key of a message: the row's (a record's partition key), or what the
 * connector's key_transform makes of the event, a JSON string taken as its
 * text.
 */
static char *
message_key(const EventBatch *b, const FormatRecord *r, Jsonb *event)
{
	StringInfoData buf;
	Jsonb	   *j;
	JsonbValue	v;

	if (b->key_transform == NULL)
		return r->partition_key ? pstrdup(r->partition_key) : NULL;
	initStringInfo(&buf);
	rules_transform_append(&buf, b->key_transform, event, EB_KAFKA_MESSAGE_MAX);
	if (buf.len > EB_KAFKA_MESSAGE_MAX)
		return buf.data;		/* too big: librdkafka refuses the message */
	j = DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(buf.data)));
	if (JB_ROOT_IS_SCALAR(j) && JsonbExtractScalar(&j->root, &v) && v.type == jbvString)
		return pnstrdup(v.val.string.val, v.val.string.len);
	return buf.data;
}

/* Records a message of the unit u that was just appended from start on. */
static void
add_slice(StringInfo out, const EventBatch *b, EventBody *result, const Unit *u,
		  const FormatRecord *r, Jsonb *event, int start)
{
	EventSlice *sl = &result->slices[result->nslices++];

	format_convert_body(out, start);
	sl->start = start;
	sl->len = out->len - start;
	sl->sequence = r->sequence;
	sl->op = u->op;
	sl->table = field_text(meta(u), FIELD_TABLE);
	sl->key = message_key(b, r, event);
}

/*
 * Appends the messages of a unit (batch made with EventBatch.messages):
 * each record of a datahub or dis batch, or the event.
 */
static void
append_messages(StringInfo out, const EventBatch *b, EventBody *result, const Unit *u,
				Jsonb *event, StringInfo json_text, bool records)
{
	if (records)
	{
		for (int k = 0; k < u->nrecords; k++)
		{
			int			start = out->len;

			format_record_object(out, b->batch.format, b->batch.shard_id, &u->first[k]);
			add_slice(out, b, result, u, &u->first[k], event, start);
		}
		return;
	}
	{
		int			start = out->len;

		append_event(out, b, u, event, json_text);
		add_slice(out, b, result, u, u->first, event, start);
	}
}

/*
 * Appends to out the body of a batch's first events that fit in max_bytes,
 * in the batch's format or as transformed, and says in result which records
 * it is done with.  A record whose data was not read (NULL) ends the batch.
 * result->nevents is 0 when the filter left every consumed record out, or
 * when the first event alone does not fit (then nothing is consumed).  Must
 * be called inside a transaction.
 */
void
event_body(StringInfo out, const EventBatch *b, EventBody *result)
{
	bool		records = (b->batch.format == EB_FORMAT_DATAHUB || b->batch.format == EB_FORMAT_DIS) &&
		b->transform == NULL;
	bool		need_jsonb = b->filter != NULL ||
		(b->transform != NULL && rules_transform_reads_event(b->transform)) ||
		(b->messages && b->key_transform != NULL &&
		 rules_transform_reads_event(b->key_transform));
	int			start = out->len;
	FormatRecord *kept = NULL;
	int		   *unit_end = NULL;
	int			nkept = 0;
	const char *close = "]";
	MemoryContext old;

	memset(result, 0, sizeof(EventBody));
	result->filtered = palloc(sizeof(int64) * Max(b->batch.nrecords, 1));
	if (scratch_context == NULL)
		scratch_context = AllocSetContextCreate(TopMemoryContext, "event_bridge events",
												ALLOCSET_DEFAULT_SIZES);
	if (b->messages)
	{
		result->slices = palloc(sizeof(EventSlice) * Max(b->batch.nrecords, 1));
		close = "";
	}
	else if (records)
	{
		kept = palloc(sizeof(FormatRecord) * Max(b->batch.nrecords, 1));
		unit_end = palloc(sizeof(int) * Max(b->batch.nrecords, 1));
	}
	else if (b->batch.format == EB_FORMAT_JSON && b->transform == NULL)
	{
		appendStringInfoString(out, "{\"stream\":");
		escape_json(out, b->batch.stream);
		appendStringInfo(out, ",\"shard\":%d,\"events\":[", b->batch.shard_id);
		close = "]}";
	}
	else
		appendStringInfoChar(out, '[');

	for (int i = 0; i < b->batch.nrecords && b->batch.records[i].data != NULL;)
	{
		Unit		u;
		Jsonb	   *event = NULL;
		StringInfoData json_text;
		int			mark = out->len;

		old = MemoryContextSwitchTo(scratch_context);
		json_text.len = 0;		/* made only for a filter or transform */
		read_unit(b, i, &u);
		if (need_jsonb)
		{
			initStringInfo(&json_text);
			event = unit_jsonb(b, &u, &json_text);
		}
		if (b->filter != NULL && !rules_filter_matches(b->filter, event))
		{
			for (int k = 0; k < u.nrecords; k++)
				result->filtered[result->nfiltered++] = b->batch.records[i + k].sequence;
			MemoryContextSwitchTo(old);
			MemoryContextReset(scratch_context);
			i += u.nrecords;
			result->consumed = i;
			continue;
		}
		MemoryContextSwitchTo(old);

		if (records && !b->messages)
		{
			for (int k = 0; k < u.nrecords; k++)
			{
				kept[nkept] = b->batch.records[i + k];
				unit_end[nkept++] = i + u.nrecords;
			}
		}
		else if (b->messages)
		{
			int			nslices = result->nslices;

			append_messages(out, b, result, &u, event, &json_text, records);
			if ((size_t) (out->len - start) > b->max_bytes && result->nevents > 0)
			{
				out->len = mark;
				out->data[mark] = '\0';
				result->nslices = nslices;
				MemoryContextReset(scratch_context);
				break;
			}
			result->nevents++;
		}
		else
		{
			if (result->nevents > 0)
				appendStringInfoChar(out, ',');
			append_event(out, b, &u, event, &json_text);
			if ((size_t) (out->len - start) + strlen(close) > b->max_bytes)
			{
				out->len = mark;
				out->data[mark] = '\0';
				MemoryContextReset(scratch_context);
				break;
			}
			result->nevents++;
		}
		MemoryContextReset(scratch_context);
		i += u.nrecords;
		result->consumed = i;
	}

	if (b->messages)
		return;
	if (records)
		records_body(out, b, kept, nkept, unit_end, result);
	else if (result->nevents == 0)
	{
		out->len = start;
		out->data[start] = '\0';
	}
	else
	{
		appendStringInfoString(out, close);
		format_convert_body(out, start);
	}
}
