/*-------------------------------------------------------------------------
 *
 * connector_api.c
 *	  SQL-callable C functions behind the PL/pgSQL connector API: the check
 *	  of an endpoint URL, the delivery worker's wake-up at commit, and, for
 *	  tests, event bodies built from given records and request signatures
 *	  made from given inputs.
 *
 * IDENTIFICATION
 *	  src/connector_api.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "commands/dbcommands.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "utils/lsyscache.h"

#include "catalog.h"
#include "event.h"
#include "event_bridge.h"
#include "format.h"
#include "http.h"
#include "signing.h"

PG_FUNCTION_INFO_V1(event_bridge_check_endpoint);
PG_FUNCTION_INFO_V1(event_bridge_wake_delivery);
PG_FUNCTION_INFO_V1(event_bridge_format_batch);
PG_FUNCTION_INFO_V1(event_bridge_signature);
PG_FUNCTION_INFO_V1(event_bridge_event_body);

/*
 * Refuses an endpoint that is not an http or https URL.  Errors name the
 * scheme at most: a URL may carry a password in its userinfo.
 */
Datum
event_bridge_check_endpoint(PG_FUNCTION_ARGS)
{
	char	   *url = text_to_cstring(PG_GETARG_TEXT_PP(0));
	HttpEndpoint endpoint;
	const char *problem = http_parse_endpoint(url, &endpoint);

	if (problem != NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("endpoint is not a valid URL"),
				 errdetail("%s", problem),
				 errhint("An endpoint is an http:// or https:// URL, such as https://fc.example.com/invoke.")));
	if (endpoint.scheme == NULL ||
		(strcmp(endpoint.scheme, "http") != 0 && strcmp(endpoint.scheme, "https") != 0))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("endpoint must be an http or https URL"),
				 endpoint.scheme ? errdetail("Its scheme is \"%s\".", endpoint.scheme) : 0));
	PG_RETURN_VOID();
}

/*
 * Has this database's delivery worker woken when the calling transaction
 * commits, so that it reloads the connectors at once.
 */
Datum
event_bridge_wake_delivery(PG_FUNCTION_ARGS)
{
	eb_wake_at_commit(EB_WORKER_DELIVERY);
	PG_RETURN_VOID();
}

/* The elements of a one-dimensional array argument, and their count. */
static int
array_arg(FunctionCallInfo fcinfo, int argno, Oid elemtype, Datum **elems, bool **nulls)
{
	ArrayType  *arr = PG_GETARG_ARRAYTYPE_P(argno);
	int16		typlen;
	bool		typbyval;
	char		typalign;
	int			n;

	get_typlenbyvalalign(elemtype, &typlen, &typbyval, &typalign);
	deconstruct_array(arr, elemtype, typlen, typbyval, typalign, elems, nulls, &n);
	return n;
}

/*
 * The body the delivery worker would send for the given records of one
 * shard (parallel arrays), at the time now_ms.  Only partition keys may be
 * null.  For byte-exact tests of the event formats.
 */
Datum
event_bridge_format_batch(PG_FUNCTION_ARGS)
{
	FormatBatch batch;
	FormatRecord *records;
	Datum	   *sequences;
	Datum	   *times;
	Datum	   *keys;
	Datum	   *data;
	bool	   *sequence_nulls;
	bool	   *time_nulls;
	bool	   *key_nulls;
	bool	   *data_nulls;
	char	   *format;
	int			n;
	StringInfoData body;

	for (int i = 0; i < PG_NARGS(); i++)
		if (PG_ARGISNULL(i))
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("arguments of _format_batch must not be null")));

	format = text_to_cstring(PG_GETARG_TEXT_PP(0));
	if (!format_by_name(format, &batch.format) ||
		(batch.format != EB_FORMAT_DATAHUB && batch.format != EB_FORMAT_DIS))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("_format_batch makes datahub and dis bodies, not \"%s\"", format),
				 errhint("Named formats read table versions: use _event_body.")));
	batch.database = text_to_cstring(PG_GETARG_TEXT_PP(1));
	batch.stream = text_to_cstring(PG_GETARG_TEXT_PP(2));
	batch.region = text_to_cstring(PG_GETARG_TEXT_PP(3));
	batch.shard_id = PG_GETARG_INT32(4);
	batch.now_ms = PG_GETARG_INT64(9);

	n = array_arg(fcinfo, 5, INT8OID, &sequences, &sequence_nulls);
	if (n == 0 ||
		array_arg(fcinfo, 6, INT8OID, &times, &time_nulls) != n ||
		array_arg(fcinfo, 7, TEXTOID, &keys, &key_nulls) != n ||
		array_arg(fcinfo, 8, TEXTOID, &data, &data_nulls) != n)
		ereport(ERROR,
				(errcode(ERRCODE_ARRAY_SUBSCRIPT_ERROR),
				 errmsg("the record arrays of _format_batch must have the same, non-zero length")));

	records = palloc(sizeof(FormatRecord) * n);
	for (int i = 0; i < n; i++)
	{
		if (sequence_nulls[i] || time_nulls[i] || data_nulls[i])
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("only partition keys of _format_batch may be null")));
		records[i].sequence = DatumGetInt64(sequences[i]);
		records[i].system_time = DatumGetInt64(times[i]);
		records[i].partition_key = key_nulls[i] ? NULL : TextDatumGetCString(keys[i]);
		records[i].data = TextDatumGetCString(data[i]);
		records[i].table_version = -1;
	}
	batch.nrecords = n;
	batch.records = records;

	initStringInfo(&body);
	format_body(&body, &batch);
	PG_RETURN_TEXT_P(cstring_to_text_with_len(body.data, body.len));
}

/*
 * The signature the delivery worker would make, from given inputs, for
 * byte-exact tests against the platforms' own signers.  algorithm: 'acs3'
 * or 'sdk-hmac' (the Authorization header of a POST of body to path?query
 * with the given signed "name:value" headers; date is X-Sdk-Date), or
 * 'webhook' (webhook-signature: key_id is the message id, date the
 * timestamp, secret the whsec_ secret).
 */
Datum
event_bridge_signature(PG_FUNCTION_ARGS)
{
	char	   *algorithm;
	text	   *body_text;
	char	   *key_id;
	char	   *secret;
	char	   *date;
	char	   *result;

	for (int i = 0; i < PG_NARGS(); i++)
		if (PG_ARGISNULL(i))
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("arguments of _signature must not be null")));
	algorithm = text_to_cstring(PG_GETARG_TEXT_PP(0));
	body_text = PG_GETARG_TEXT_PP(4);
	key_id = text_to_cstring(PG_GETARG_TEXT_PP(5));
	secret = text_to_cstring(PG_GETARG_TEXT_PP(6));
	date = text_to_cstring(PG_GETARG_TEXT_PP(7));

	if (strcmp(algorithm, "webhook") == 0)
	{
		uint8		key[64];
		int			len = eb_webhook_key(secret, key, sizeof(key));

		if (len <= 0)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("secret is not \"whsec_\" and base64")));
		result = eb_webhook_signature(key, len, key_id, strtoll(date, NULL, 10),
									  VARDATA_ANY(body_text), VARSIZE_ANY_EXHDR(body_text));
	}
	else if (strcmp(algorithm, "acs3") == 0 || strcmp(algorithm, "sdk-hmac") == 0)
	{
		CanonicalRequest req;
		Datum	   *lines;
		bool	   *nulls;
		int			n = array_arg(fcinfo, 3, TEXTOID, &lines, &nulls);
		char		hash[EB_SHA256_HEX_LEN + 1];

		req.method = "POST";
		req.query = text_to_cstring(PG_GETARG_TEXT_PP(2));
		req.headers = palloc(sizeof(SignedHeader) * Max(n, 1));
		req.nheaders = n;
		for (int i = 0; i < n; i++)
		{
			char	   *line = nulls[i] ? "" : TextDatumGetCString(lines[i]);
			char	   *colon = strchr(line, ':');

			if (colon == NULL)
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 errmsg("a signed header must be \"name:value\"")));
			*colon = '\0';
			req.headers[i].name = line;
			req.headers[i].value = colon + 1;
		}
		eb_sha256_hex(VARDATA_ANY(body_text), VARSIZE_ANY_EXHDR(body_text), hash);
		req.payload_hash = hash;
		if (strcmp(algorithm, "acs3") == 0)
		{
			req.path = text_to_cstring(PG_GETARG_TEXT_PP(1));
			result = eb_acs3_authorization(&req, key_id, secret);
		}
		else
		{
			req.path = eb_canonical_path(text_to_cstring(PG_GETARG_TEXT_PP(1)));
			result = eb_sdk_hmac_authorization(&req, date, key_id, secret);
		}
	}
	else
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("unknown signature algorithm \"%s\"", algorithm)));
	PG_RETURN_TEXT_P(cstring_to_text(result));
}

/* A stream's records in a range of one shard, for _event_body. */
static EbStatement range_statement = {
	"SELECT r.sequence, r.system_time, r.partition_key, r.data, r.table_version"
	" FROM event_bridge.records r JOIN event_bridge.streams s ON s.stream_id = r.stream_id"
	" WHERE s.stream_name = $1 AND r.shard_id = $2 AND r.sequence BETWEEN $3 AND $4"
	" ORDER BY r.sequence",
	4, {TEXTOID, INT4OID, INT8OID, INT8OID}
};

/*
 * The body the delivery worker would make of a stream's records from_sequence
 * to to_sequence of one shard, in a format, with a filter and a transform
 * (NULL: none), for byte-exact tests: (body, records it holds, events,
 * filtered records).  body is NULL when there are no events.
 */
Datum
event_bridge_event_body(PG_FUNCTION_ARGS)
{
	EventBatch	b = {0};
	EventBody	result;
	Datum		args[4];
	FormatRecord *records;
	char	   *format;
	uint64		n;
	StringInfoData body;
	TupleDesc	desc;
	Datum		values[4];
	bool		nulls[4] = {false, false, false, false};
	MemoryContext caller;

	for (int i = 0; i < 5; i++)
		if (PG_ARGISNULL(i))
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("only filter and transform of _event_body may be null")));
	if (get_call_result_type(fcinfo, NULL, &desc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "_event_body must return a record");
	format = text_to_cstring(PG_GETARG_TEXT_PP(4));
	if (!format_by_name(format, &b.batch.format))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("unknown event format \"%s\"", format)));
	if (!PG_ARGISNULL(5))
	{
		b.filter = PG_GETARG_JSONB_P(5);
		rules_check_filter(b.filter);
	}
	if (!PG_ARGISNULL(6))
		b.transform = rules_prepare_transform(PG_GETARG_JSONB_P(6));
	b.max_bytes = PG_ARGISNULL(7) ? 6291456 : (size_t) Max(PG_GETARG_INT32(7), 1);
	b.batch.database = get_database_name(MyDatabaseId);
	b.batch.stream = text_to_cstring(PG_GETARG_TEXT_PP(0));
	b.batch.region = eb_region;
	b.batch.shard_id = PG_GETARG_INT32(1);

	caller = CurrentMemoryContext;
	SPI_connect();
	for (int i = 0; i < 4; i++)
		args[i] = PG_GETARG_DATUM(i);
	n = eb_run(&range_statement, args, NULL);
	/* What is made from here on outlives SPI_finish (eb_run leaves SPI's memory current). */
	MemoryContextSwitchTo(caller);
	records = palloc(sizeof(FormatRecord) * Max(n, 1));
	for (uint64 i = 0; i < n; i++)
	{
		bool		isnull;
		Datum		d;

		records[i].sequence = DatumGetInt64(eb_result(i, 1, &isnull));
		records[i].system_time = DatumGetInt64(eb_result(i, 2, &isnull));
		d = eb_result(i, 3, &isnull);
		records[i].partition_key = isnull ? NULL : TextDatumGetCString(d);
		records[i].data = TextDatumGetCString(eb_result(i, 4, &isnull));
		d = eb_result(i, 5, &isnull);
		records[i].table_version = isnull ? -1 : DatumGetInt64(d);
	}
	b.batch.nrecords = (int) n;
	b.batch.records = records;
	initStringInfo(&body);
	event_body(&body, &b, &result);
	SPI_finish();

	values[0] = CStringGetTextDatum(body.data);
	nulls[0] = (body.len == 0);
	values[1] = Int32GetDatum(result.consumed);
	values[2] = Int32GetDatum(result.nevents);
	values[3] = Int32GetDatum(result.nfiltered);
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(BlessTupleDesc(desc), values, nulls)));
}
