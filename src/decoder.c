/*-------------------------------------------------------------------------
 *
 * decoder.c
 *	  The event_bridge logical decoding output plugin: turns each decoded row
 *	  change into TUPLE records, one per stream that captures the table.
 *
 * A record's data is a JSON array of strings: eight DTS metadata fields, then
 * the table's columns in attribute order in their text output form, SQL NULL
 * as JSON null.  A row's shard is a hash of its key (the replica identity
 * index, else the primary key) modulo the stream's shard count.
 *
 * In the capture worker the plugin hands records to the record store that
 * the worker gives it through the decoding context (decoder_set_target).
 * Anywhere else (pg_logical_slot_get_changes on a slot of this plugin) it
 * writes one text line per change, which is handy to look at what would be
 * captured.
 *
 * Changes of event_bridge.streams are decoded too: they create and drop
 * streams in commit order, so a stream captures the changes made after it
 * in its own transaction and every transaction that commits later.  Rows
 * written to event_bridge.shards by others than the capture worker
 * (create_stream, a restore) set the shards' sequence counters.
 *
 * IDENTIFICATION
 *	  src/decoder.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/detoast.h"
#include "access/htup_details.h"
#include "access/xlog.h"
#include "catalog/pg_type.h"
#include "commands/dbcommands.h"
#include "common/hashfn.h"
#include "fmgr.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "replication/logical.h"
#include "replication/origin.h"
#include "replication/output_plugin.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/hsearch.h"
#include "utils/inval.h"
#include "utils/json.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/relcache.h"
#include "utils/syscache.h"

#include "capture.h"
#include "catalog.h"
#include "format.h"

/* Marker for a column value that logical decoding did not carry. */
#define EB_UNAVAILABLE	"__event_bridge_unavailable__"

extern PGDLLEXPORT void _PG_output_plugin_init(OutputPluginCallbacks *cb);

/* Per decoding context, in ctx->output_plugin_private. */
typedef struct PluginState
{
	MemoryContext change_context;	/* reset after every change */
	char	   *instance_id;
	char	   *source_json;	/* "instance id",database (JSON), fields 2-3 */
	CaptureTarget *target;		/* the capture worker's; NULL: text output */
} PluginState;

/* What the plugin keeps of a relation, rebuilt when the relcache says so. */
typedef struct RelInfo
{
	Oid			relid;			/* hash key */
	bool		valid;
	uint64		generation;		/* the store's streams generation of streams */
	List	   *streams;		/* CaptureStream pointers capturing it */
	char	   *name;			/* schema.table */
	char	   *name_json;		/* the same as a JSON string */
	char		replident;
	char	   *columns_json;	/* [{"name": ..., "type": ...}, ...] as jsonb writes it */
	char	   *keys_json;		/* ["key column", ...] */
	int64		version;		/* the store's table version; 0: not asked yet */
	uint64		serial;			/* this description's number (capture filters) */
	int			natts;
	FmgrInfo   *out;			/* output function per attribute */
	int			nkeys;
	AttrNumber *keys;			/* key attributes, attribute order */
	MemoryContext context;		/* holds all of the above */
} RelInfo;

/* Relations seen by the decoding contexts of this process, by OID. */
static HTAB *relinfo_hash = NULL;

/* The number of the last description built (RelInfo.serial). */
static uint64 relinfo_serial = 0;

/* Some entry was invalidated since the last relinfo_free_invalid(). */
static bool relinfo_some_invalid = false;

static void
relinfo_invalidate(Datum arg, Oid relid)
{
	HASH_SEQ_STATUS status;
	RelInfo    *ri;

	if (relinfo_hash == NULL)
		return;
	hash_seq_init(&status, relinfo_hash);
	while ((ri = hash_seq_search(&status)) != NULL)
		if (relid == InvalidOid || ri->relid == relid)
			ri->valid = false;
	relinfo_some_invalid = true;
}

/* A schema was renamed (or changed): every cached schema.table may be stale. */
static void
relinfo_namespace_changed(Datum arg, int cacheid, uint32 hashvalue)
{
	relinfo_invalidate(arg, InvalidOid);
}

/*
 * Frees the entries invalidated since the last call: a dropped table's
 * entry is never asked for again.  An entry in use must not be freed, so
 * this runs where none is, at the start of a decoded transaction.
 */
static void
relinfo_free_invalid(void)
{
	HASH_SEQ_STATUS status;
	RelInfo    *ri;

	if (relinfo_hash == NULL || !relinfo_some_invalid)
		return;
	hash_seq_init(&status, relinfo_hash);
	while ((ri = hash_seq_search(&status)) != NULL)
	{
		if (ri->valid)
			continue;
		if (ri->context != NULL)
			MemoryContextDelete(ri->context);
		(void) hash_search(relinfo_hash, &ri->relid, HASH_REMOVE, NULL);
	}
	relinfo_some_invalid = false;
}

/*
 * The columns of a table version, [{"name": ..., "type": ...}, ...] as
 * jsonb writes it: those a capture filter keeps (NULL: all).
 */
static char *
columns_json(TupleDesc desc, const TableFilter *f)
{
	StringInfoData json;

	initStringInfo(&json);
	appendStringInfoChar(&json, '[');
	for (int i = 0; i < desc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);

		if (att->attisdropped || !capture_filter_keeps_column(f, att->attnum))
			continue;
		appendStringInfoString(&json, json.len > 1 ? ", {\"name\": " : "{\"name\": ");
		escape_json(&json, NameStr(att->attname));
		appendStringInfoString(&json, ", \"type\": ");
		escape_json(&json, format_type_with_typemod(att->atttypid, att->atttypmod));
		appendStringInfoChar(&json, '}');
	}
	appendStringInfoChar(&json, ']');
	return json.data;
}

/* Builds the cached description of a relation.  Runs under the historic snapshot. */
static void
relinfo_build(RelInfo *ri, Relation rel)
{
	TupleDesc	desc = RelationGetDescr(rel);
	Bitmapset  *keyattrs;
	Oid			keyindex;
	int			attno;
	StringInfoData json;
	MemoryContext old;

	if (ri->context == NULL)
		ri->context = AllocSetContextCreate(CacheMemoryContext, "event_bridge relinfo",
											ALLOCSET_SMALL_SIZES);
	else
		MemoryContextReset(ri->context);
	ri->streams = NIL;			/* was in the context just reset */
	old = MemoryContextSwitchTo(ri->context);

	ri->name = psprintf("%s.%s",
						get_namespace_name(RelationGetNamespace(rel)),
						RelationGetRelationName(rel));
	initStringInfo(&json);
	escape_json(&json, ri->name);
	ri->name_json = json.data;
	ri->replident = rel->rd_rel->relreplident;
	ri->natts = desc->natts;
	ri->out = palloc0(sizeof(FmgrInfo) * desc->natts);
	for (int i = 0; i < desc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);
		Oid			typoutput;
		bool		typisvarlena;

		if (att->attisdropped)
			continue;
		getTypeOutputInfo(att->atttypid, &typoutput, &typisvarlena);
		fmgr_info_cxt(typoutput, &ri->out[i], ri->context);
	}
	ri->columns_json = columns_json(desc, NULL);
	ri->version = 0;
	ri->serial = ++relinfo_serial;

	/* The key: replica identity index, else primary key, else none. */
	(void) RelationGetIndexList(rel);
	keyindex = OidIsValid(rel->rd_replidindex) ? rel->rd_replidindex : rel->rd_pkindex;
	keyattrs = NULL;
	if (OidIsValid(keyindex))
		keyattrs = RelationGetIndexAttrBitmap(rel,
											  OidIsValid(rel->rd_replidindex) ?
											  INDEX_ATTR_BITMAP_IDENTITY_KEY :
											  INDEX_ATTR_BITMAP_PRIMARY_KEY);
	ri->nkeys = 0;
	ri->keys = palloc(sizeof(AttrNumber) * Max(1, bms_num_members(keyattrs)));
	attno = -1;
	initStringInfo(&json);
	appendStringInfoChar(&json, '[');
	while ((attno = bms_next_member(keyattrs, attno)) >= 0)
	{
		AttrNumber	key = attno + FirstLowInvalidHeapAttributeNumber;

		ri->keys[ri->nkeys++] = key;
		if (json.len > 1)
			appendStringInfoString(&json, ", ");
		escape_json(&json, NameStr(TupleDescAttr(desc, key - 1)->attname));
	}
	appendStringInfoChar(&json, ']');
	ri->keys_json = json.data;

	MemoryContextSwitchTo(old);
	ri->valid = true;
	ri->generation = 0;
}

static RelInfo *
relinfo_get(PluginState *st, Relation rel)
{
	Oid			relid = RelationGetRelid(rel);
	RelInfo    *ri;
	bool		found;

	if (relinfo_hash == NULL)
	{
		HASHCTL		ctl;

		ctl.keysize = sizeof(Oid);
		ctl.entrysize = sizeof(RelInfo);
		ctl.hcxt = CacheMemoryContext;
		relinfo_hash = hash_create("event_bridge relinfo", 64, &ctl,
								   HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
		CacheRegisterRelcacheCallback(relinfo_invalidate, (Datum) 0);
		CacheRegisterSyscacheCallback(NAMESPACEOID, relinfo_namespace_changed, (Datum) 0);
	}

	ri = hash_search(relinfo_hash, &relid, HASH_ENTER, &found);
	if (!found)
	{
		ri->valid = false;
		ri->context = NULL;
		ri->streams = NIL;
		ri->generation = 0;
	}
	if (!ri->valid)
		relinfo_build(ri, rel);
	if (st->target != NULL &&
		ri->generation != capture_streams_generation(st->target->store))
	{
		MemoryContext old = MemoryContextSwitchTo(ri->context);

		list_free(ri->streams);
		ri->streams = capture_streams_for_relation(st->target->store, relid);
		ri->generation = capture_streams_generation(st->target->store);
		MemoryContextSwitchTo(old);
	}
	return ri;
}

static bool
is_unchanged_toast(Form_pg_attribute att, Datum value)
{
	return att->attlen == -1 && VARATT_IS_EXTERNAL_ONDISK(DatumGetPointer(value));
}

/* Appends one column value as a JSON string, or null. */
static void
append_value(StringInfo buf, RelInfo *ri, int i, Datum value)
{
	char	   *text = OutputFunctionCall(&ri->out[i], value);

	escape_json(buf, text);
}

/*
 * Formats the JSON array of a record.  tuple is the row (new or old);
 * fill is the old row, to take unchanged TOASTed values from; carried says
 * whether tuple holds every column (false: only key columns were logged);
 * filter, if not NULL, says which columns to keep.
 */
static void
format_record(StringInfo buf, PluginState *st, RelInfo *ri, TupleDesc desc,
			  int64 record_id, char operation, TimestampTz commit_time,
			  bool before, HeapTuple tuple, HeapTuple fill, bool carried,
			  const TableFilter *filter)
{
	Datum	   *values = palloc(sizeof(Datum) * desc->natts);
	bool	   *nulls = palloc(sizeof(bool) * desc->natts);
	Datum	   *fvalues = NULL;
	bool	   *fnulls = NULL;
	int64		commit_ms = commit_time / 1000 +
		((int64) (POSTGRES_EPOCH_JDATE - UNIX_EPOCH_JDATE) * SECS_PER_DAY * 1000);

	resetStringInfo(buf);
	appendStringInfoString(buf, "[\"");
	format_append_int64(buf, record_id);
	appendStringInfoString(buf, "\",\"");
	appendStringInfoChar(buf, operation);
	appendStringInfoString(buf, "\",");
	appendStringInfoString(buf, st->source_json);
	appendStringInfoChar(buf, ',');
	appendStringInfoString(buf, ri->name_json);
	appendStringInfoString(buf, ",\"");
	format_append_int64(buf, commit_ms);
	appendStringInfoString(buf, before ? "\",\"Y\",\"N\"" : "\",\"N\",\"Y\"");

	if (tuple != NULL)
		heap_deform_tuple(tuple, desc, values, nulls);
	if (fill != NULL)
	{
		fvalues = palloc(sizeof(Datum) * desc->natts);
		fnulls = palloc(sizeof(bool) * desc->natts);
		heap_deform_tuple(fill, desc, fvalues, fnulls);
	}

	for (int i = 0; i < desc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);
		bool		is_key = false;

		if (att->attisdropped || !capture_filter_keeps_column(filter, att->attnum))
			continue;
		appendStringInfoChar(buf, ',');

		for (int k = 0; k < ri->nkeys; k++)
			is_key |= (ri->keys[k] == att->attnum);

		if (tuple == NULL || (!carried && !is_key))
			escape_json(buf, EB_UNAVAILABLE);
		else if (nulls[i])
			appendStringInfoString(buf, "null");
		else if (is_unchanged_toast(att, values[i]))
		{
			if (fvalues != NULL && !fnulls[i] && !is_unchanged_toast(att, fvalues[i]))
				append_value(buf, ri, i, fvalues[i]);
			else
				escape_json(buf, EB_UNAVAILABLE);
		}
		else
			append_value(buf, ri, i, values[i]);
	}
	appendStringInfoChar(buf, ']');
}

/* Text of the key columns, comma-separated; NULL when the table has no key. */
static char *
format_key(RelInfo *ri, TupleDesc desc, HeapTuple tuple)
{
	StringInfoData buf;

	if (ri->nkeys == 0 || tuple == NULL)
		return NULL;
	initStringInfo(&buf);
	for (int k = 0; k < ri->nkeys; k++)
	{
		bool		isnull;
		Datum		value = heap_getattr(tuple, ri->keys[k], desc, &isnull);

		if (k > 0)
			appendStringInfoChar(&buf, ',');
		if (!isnull)
			appendStringInfoString(&buf, OutputFunctionCall(&ri->out[ri->keys[k] - 1], value));
	}
	return buf.data;
}

/*
 * Creates, changes (its tables: a dropped table leaves) or drops a stream
 * from a decoded change of event_bridge.streams.
 */
static void
apply_streams_change(CaptureStore *store, ReorderBufferTXN *txn, Relation rel,
					 ReorderBufferChange *change)
{
	TupleDesc	desc = RelationGetDescr(rel);
	AttrNumber	stream_id_att = eb_column(desc, "stream_id");
	HeapTuple	tuple;
	Datum	   *values = palloc(sizeof(Datum) * desc->natts);
	bool	   *nulls = palloc(sizeof(bool) * desc->natts);

	if ((change->action == REORDER_BUFFER_CHANGE_INSERT ||
		 change->action == REORDER_BUFFER_CHANGE_UPDATE) && change->data.tp.newtuple)
	{
		ArrayType  *arr;
		Datum	   *elems;
		int			nelems;
		Oid		   *relids;
		int32		stream_id;

		tuple = &change->data.tp.newtuple->tuple;
		heap_deform_tuple(tuple, desc, values, nulls);
		arr = DatumGetArrayTypeP(values[eb_column(desc, "tables") - 1]);
		deconstruct_array(arr, REGCLASSOID, sizeof(Oid), true, TYPALIGN_INT,
						  &elems, NULL, &nelems);
		relids = palloc(sizeof(Oid) * Max(nelems, 1));
		for (int i = 0; i < nelems; i++)
			relids[i] = DatumGetObjectId(elems[i]);
		stream_id = DatumGetInt32(values[stream_id_att - 1]);
		if (change->action == REORDER_BUFFER_CHANGE_INSERT)
			capture_add_stream(store, stream_id,
							   DatumGetInt32(values[eb_column(desc, "shard_count") - 1]),
							   DatumGetBool(values[eb_column(desc, "before_images") - 1]),
							   nelems, relids, txn->end_lsn);
		else
			capture_set_stream_tables(store, stream_id, nelems, relids);
	}
	else if (change->action == REORDER_BUFFER_CHANGE_DELETE && change->data.tp.oldtuple)
	{
		tuple = &change->data.tp.oldtuple->tuple;
		heap_deform_tuple(tuple, desc, values, nulls);
		capture_remove_stream(store, DatumGetInt32(values[stream_id_att - 1]));
	}
}

/* Takes the sequence counter of a shard from a decoded event_bridge.shards row. */
static void
apply_shards_change(CaptureStore *store, Relation rel, ReorderBufferChange *change)
{
	TupleDesc	desc = RelationGetDescr(rel);
	Datum	   *values = palloc(sizeof(Datum) * desc->natts);
	bool	   *nulls = palloc(sizeof(bool) * desc->natts);

	if ((change->action != REORDER_BUFFER_CHANGE_INSERT &&
		 change->action != REORDER_BUFFER_CHANGE_UPDATE) || change->data.tp.newtuple == NULL)
		return;
	heap_deform_tuple(&change->data.tp.newtuple->tuple, desc, values, nulls);
	capture_restore_sequence(store,
							 DatumGetInt32(values[eb_column(desc, "stream_id") - 1]),
							 DatumGetInt32(values[eb_column(desc, "shard_id") - 1]),
							 DatumGetInt64(values[eb_column(desc, "next_sequence") - 1]));
}

/* Hands one record to the capture worker, or writes it as a text line. */
static void
emit(LogicalDecodingContext *ctx, CaptureStream *stream, const char *key,
	 int64 record_id, char operation, RelInfo *ri, int64 version, StringInfo data)
{
	PluginState *st = ctx->output_plugin_private;

	if (stream != NULL)
	{
		int32		shard = 0;
		int			keylen = key ? strlen(key) : 0;

		if (key != NULL && stream->shard_count > 1)
			shard = hash_bytes((const unsigned char *) key, keylen) % stream->shard_count;
		if (version == 0)
		{
			if (ri->version == 0)
				ri->version = capture_table_version(st->target->store, ri->name,
													ri->columns_json, ri->keys_json);
			version = ri->version;
		}
		capture_append(st->target->store, stream, shard, record_id, operation, ri->name,
					   version, key, keylen, data->data, data->len);
	}
	else
	{
		OutputPluginPrepareWrite(ctx, true);
		appendStringInfo(ctx->out, "%s %c %s", ri->name, operation, data->data);
		OutputPluginWrite(ctx, true);
	}
}

/* A decoded row change, as emit_filtered needs it. */
typedef struct Change
{
	ReorderBufferTXN *txn;
	Relation	relation;
	RelInfo    *ri;
	int64		record_id;
	char		operation;
	HeapTuple	oldtup;			/* NULL: not logged (the key did not change) */
	HeapTuple	newtup;
	bool		old_carried;	/* oldtup holds every column */
} Change;

/*
 * Emits the records of a change to a stream that has a capture filter for
 * its table, as a PostgreSQL 15 publication would: a row the row filter
 * leaves out makes no record; an UPDATE whose old row matches and new row
 * does not becomes a DELETE of the old row, the other way round an INSERT
 * of the new row.  Records hold the columns of the column list only.
 */
static void
emit_filtered(LogicalDecodingContext *ctx, CaptureStream *stream, TableFilter *f, Change *c)
{
	PluginState *st = ctx->output_plugin_private;
	RelInfo    *ri = c->ri;
	TupleDesc	desc = RelationGetDescr(c->relation);
	char		op = c->operation;
	bool		old_ok = true;
	bool		new_ok = true;
	HeapTuple	old_row = c->oldtup ? c->oldtup : c->newtup;
	StringInfoData data;
	char	   *key;

	capture_filter_prepare(f, c->relation, ri->serial);
	if (op != 'I')
		old_ok = capture_filter_matches(f, old_row, NULL);
	if (op != 'D')
		new_ok = capture_filter_matches(f, c->newtup, c->oldtup);
	if (op == 'U' && old_ok != new_ok)
		op = old_ok ? 'D' : 'I';
	else if (!old_ok || !new_ok)
		return;

	if (f->version == 0)
		f->version = capture_table_version(st->target->store, ri->name,
										   f->ncolumns > 0 ? columns_json(desc, f) : ri->columns_json,
										   ri->keys_json);
	key = format_key(ri, desc, op == 'D' ? old_row : c->newtup);
	initStringInfo(&data);
	if (op == 'D' || (op == 'U' && stream->before_images))
	{
		/* Without the old row logged (key unchanged), only the key is known. */
		format_record(&data, st, ri, desc, c->record_id, op, c->txn->xact_time.commit_time,
					  true, old_row, NULL, c->oldtup != NULL && c->old_carried, f);
		emit(ctx, stream, key, c->record_id, op, ri, f->version, &data);
	}
	if (op != 'D')
	{
		format_record(&data, st, ri, desc, c->record_id, op, c->txn->xact_time.commit_time,
					  false, c->newtup, c->oldtup, true, f);
		emit(ctx, stream, key, c->record_id, op, ri, f->version, &data);
	}
}

/*
 * Sets or removes a stream's capture filter for a table from a decoded
 * change of event_bridge.table_filter_rules.
 */
static void
apply_filters_change(CaptureStore *store, Relation rel, ReorderBufferChange *change)
{
	TupleDesc	desc = RelationGetDescr(rel);
	Datum	   *values = palloc(sizeof(Datum) * desc->natts);
	bool	   *nulls = palloc(sizeof(bool) * desc->natts);
	int32		stream_id;
	Oid			relid;
	AttrNumber	tree_att = eb_column(desc, "row_filter_tree");
	AttrNumber	columns_att = eb_column(desc, "column_numbers");
	Datum	   *elems = NULL;
	int			nelems = 0;
	AttrNumber *columns;
	HeapTuple	tuple;

	if (change->action == REORDER_BUFFER_CHANGE_DELETE && change->data.tp.oldtuple)
	{
		tuple = &change->data.tp.oldtuple->tuple;
		heap_deform_tuple(tuple, desc, values, nulls);
		capture_set_table_filter(store, DatumGetInt32(values[eb_column(desc, "stream_id") - 1]),
								 DatumGetObjectId(values[eb_column(desc, "table_name") - 1]),
								 NULL, 0, NULL);
		return;
	}
	if ((change->action != REORDER_BUFFER_CHANGE_INSERT &&
		 change->action != REORDER_BUFFER_CHANGE_UPDATE) || change->data.tp.newtuple == NULL)
		return;
	tuple = &change->data.tp.newtuple->tuple;
	heap_deform_tuple(tuple, desc, values, nulls);
	stream_id = DatumGetInt32(values[eb_column(desc, "stream_id") - 1]);
	relid = DatumGetObjectId(values[eb_column(desc, "table_name") - 1]);
	/* An UPDATE that changed the key leaves the old one. */
	if (change->data.tp.oldtuple != NULL)
	{
		Datum	   *ovalues = palloc(sizeof(Datum) * desc->natts);
		bool	   *onulls = palloc(sizeof(bool) * desc->natts);

		heap_deform_tuple(&change->data.tp.oldtuple->tuple, desc, ovalues, onulls);
		capture_set_table_filter(store, DatumGetInt32(ovalues[eb_column(desc, "stream_id") - 1]),
								 DatumGetObjectId(ovalues[eb_column(desc, "table_name") - 1]),
								 NULL, 0, NULL);
	}
	if (!nulls[columns_att - 1])
		deconstruct_array(DatumGetArrayTypeP(values[columns_att - 1]), INT2OID, sizeof(int16),
						  true, TYPALIGN_SHORT, &elems, NULL, &nelems);
	columns = palloc(sizeof(AttrNumber) * Max(nelems, 1));
	for (int i = 0; i < nelems; i++)
		columns[i] = DatumGetInt16(elems[i]);
	capture_set_table_filter(store, stream_id, relid,
							 nulls[tree_att - 1] ? NULL : TextDatumGetCString(values[tree_att - 1]),
							 nelems, columns);
}

static void
eb_startup(LogicalDecodingContext *ctx, OutputPluginOptions *opt, bool is_init)
{
	PluginState *st = palloc0(sizeof(PluginState));

	st->change_context = AllocSetContextCreate(ctx->context, "event_bridge change",
											   ALLOCSET_DEFAULT_SIZES);
	st->instance_id = psprintf(UINT64_FORMAT, GetSystemIdentifier());
	ctx->output_plugin_private = st;
	opt->output_type = OUTPUT_PLUGIN_TEXTUAL_OUTPUT;
	opt->receive_rewrites = false;
}

static void
eb_shutdown(LogicalDecodingContext *ctx)
{
	PluginState *st = ctx->output_plugin_private;

	MemoryContextDelete(st->change_context);
}

static void
eb_begin(LogicalDecodingContext *ctx, ReorderBufferTXN *txn)
{
	relinfo_free_invalid();
}

/* Tells the capture worker about DDL, whose caches it must then renew. */
static void
eb_commit(LogicalDecodingContext *ctx, ReorderBufferTXN *txn, XLogRecPtr commit_lsn)
{
	PluginState *st = ctx->output_plugin_private;

	if (st->target != NULL && rbtxn_has_catalog_changes(txn))
		capture_catalog_changed(st->target->store);
}

/* The capture worker's own writes (records, offsets) are never decoded. */
static bool
eb_filter_by_origin(LogicalDecodingContext *ctx, RepOriginId origin_id)
{
	PluginState *st = ctx->output_plugin_private;

	return st->target != NULL && origin_id != InvalidRepOriginId &&
		(origin_id == st->target->capture_origin || origin_id == st->target->delivery_origin);
}

static void
eb_change(LogicalDecodingContext *ctx, ReorderBufferTXN *txn,
		  Relation relation, ReorderBufferChange *change)
{
	PluginState *st = ctx->output_plugin_private;
	CaptureTarget *target = st->target;
	MemoryContext old = MemoryContextSwitchTo(st->change_context);
	TupleDesc	desc = RelationGetDescr(relation);
	HeapTuple	newtup = NULL;
	HeapTuple	oldtup = NULL;
	RelInfo    *ri;
	char		operation;
	char	   *key;
	int64		record_id = 0;
	bool		old_carried;
	StringInfoData before;
	StringInfoData after;
	ListCell   *lc;

	if (target != NULL && RelationGetRelid(relation) == target->streams_relid)
	{
		apply_streams_change(target->store, txn, relation, change);
		goto done;
	}
	if (target != NULL && RelationGetRelid(relation) == target->shards_relid)
	{
		apply_shards_change(target->store, relation, change);
		goto done;
	}
	if (target != NULL && RelationGetRelid(relation) == target->filters_relid)
	{
		apply_filters_change(target->store, relation, change);
		goto done;
	}

	ri = relinfo_get(st, relation);
	if (target != NULL && ri->streams == NIL)
		goto done;

	switch (change->action)
	{
		case REORDER_BUFFER_CHANGE_INSERT:
			operation = 'I';
			break;
		case REORDER_BUFFER_CHANGE_UPDATE:
			operation = 'U';
			break;
		case REORDER_BUFFER_CHANGE_DELETE:
			operation = 'D';
			break;
		default:
			goto done;
	}
	if (change->data.tp.newtuple)
		newtup = &change->data.tp.newtuple->tuple;
	if (change->data.tp.oldtuple)
		oldtup = &change->data.tp.oldtuple->tuple;
	old_carried = (ri->replident == REPLICA_IDENTITY_FULL);

	if (st->source_json == NULL)
	{
		MemoryContext old_context = MemoryContextSwitchTo(ctx->context);
		StringInfoData json;

		initStringInfo(&json);
		appendStringInfo(&json, "\"%s\",", st->instance_id);
		escape_json(&json, get_database_name(MyDatabaseId));
		st->source_json = json.data;
		MemoryContextSwitchTo(old_context);
	}

	key = format_key(ri, desc, operation == 'D' ? oldtup : newtup);
	if (target != NULL)
		record_id = capture_next_record_id(target->store);

	initStringInfo(&before);
	initStringInfo(&after);
	if (operation != 'I')
		format_record(&before, st, ri, desc, record_id, operation,
					  txn->xact_time.commit_time, true, oldtup, NULL, old_carried, NULL);
	if (operation != 'D')
		format_record(&after, st, ri, desc, record_id, operation,
					  txn->xact_time.commit_time, false, newtup, oldtup, true, NULL);

	if (target == NULL)
	{
		if (operation != 'I')
			emit(ctx, NULL, key, record_id, operation, ri, 0, &before);
		if (operation != 'D')
			emit(ctx, NULL, key, record_id, operation, ri, 0, &after);
		goto done;
	}

	foreach(lc, ri->streams)
	{
		CaptureStream *stream = (CaptureStream *) lfirst(lc);
		TableFilter *filter = capture_table_filter(target->store, stream->stream_id, ri->relid);
		Change		c = {txn, relation, ri, record_id, operation, oldtup, newtup, old_carried};

		if (filter != NULL)
		{
			emit_filtered(ctx, stream, filter, &c);
			continue;
		}
		if (operation == 'D' || (operation == 'U' && stream->before_images))
			emit(ctx, stream, key, record_id, operation, ri, 0, &before);
		if (operation != 'D')
			emit(ctx, stream, key, record_id, operation, ri, 0, &after);
	}

done:
	MemoryContextSwitchTo(old);
	MemoryContextReset(st->change_context);
}

/*
 * Makes a decoding context hand its records to the capture worker's store
 * instead of writing text.  Called by the worker once the context exists.
 */
void
decoder_set_target(LogicalDecodingContext *ctx, CaptureTarget *target)
{
	PluginState *st = ctx->output_plugin_private;

	st->target = target;
}

void
_PG_output_plugin_init(OutputPluginCallbacks *cb)
{
	cb->startup_cb = eb_startup;
	cb->begin_cb = eb_begin;
	cb->change_cb = eb_change;
	cb->commit_cb = eb_commit;
	cb->filter_by_origin_cb = eb_filter_by_origin;
	cb->shutdown_cb = eb_shutdown;
}
