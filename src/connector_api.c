/*-------------------------------------------------------------------------
 *
 * connector_api.c
 *	  SQL-callable C functions behind the PL/pgSQL connector API: the check
 *	  of an endpoint URL, the delivery worker's wake-up at commit, and event
 *	  bodies built from given records, for tests.
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
#include "utils/lsyscache.h"

#include "event_bridge.h"
#include "format.h"
#include "http.h"

PG_FUNCTION_INFO_V1(event_bridge_check_endpoint);
PG_FUNCTION_INFO_V1(event_bridge_wake_delivery);
PG_FUNCTION_INFO_V1(event_bridge_format_batch);

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
	if (!format_by_name(format, &batch.format))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("unknown event format \"%s\"", format)));
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
	}
	batch.nrecords = n;
	batch.records = records;

	initStringInfo(&body);
	format_body(&body, &batch);
	PG_RETURN_TEXT_P(cstring_to_text_with_len(body.data, body.len));
}
