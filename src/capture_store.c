/*-------------------------------------------------------------------------
 *
 * capture_store.c
 *	  The record store of the capture worker: the streams as decoded so far,
 *	  the records decoded but not yet stored, and the flush that stores them
 *	  with the capture state and the decoded position in one transaction.
 *
 * The output plugin (decoder.c) reaches the store through the CaptureTarget
 * the worker hangs on its decoding context; the worker (capture.c) flushes
 * it.
 *
 * Pending records: records decoded but not yet flushed, kept in memory and
 * spilled to a temporary file beyond event_bridge.capture_buffer_kb, so a
 * huge transaction needs no more memory than that.
 *
 * Exactly once: the flush commits the records, the shards' sequence
 * counters and the origin's position (the end of the last WAL record
 * decoded) atomically; only then is the slot's confirmed position advanced.
 *
 * IDENTIFICATION
 *	  src/capture_store.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/heapam.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/pg_type.h"
#include "executor/executor.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "replication/logical.h"
#include "replication/origin.h"
#include "storage/buffile.h"
#include "storage/proc.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/inval.h"
#include "utils/memutils.h"
#include "utils/pg_lsn.h"
#include "utils/rel.h"

#include "capture.h"
#include "catalog.h"
#include "event_bridge.h"

/* How a pending record is laid out: this header, then the three strings. */
typedef struct PendingHeader
{
	int32		stream_id;
	int32		shard_id;
	int64		sequence;
	int64		record_id;
	int64		table_version;
	char		operation;
	int32		table_len;
	int32		key_len;		/* -1: no key */
	int32		data_len;
} PendingHeader;

/* Records per table_multi_insert call. */
#define EB_INSERT_BATCH		1000

/* The columns of event_bridge.records an insert fills, found by name. */
typedef enum RecordsColumn
{
	RC_STREAM_ID,
	RC_SHARD_ID,
	RC_SEQUENCE,
	RC_SYSTEM_TIME,
	RC_RECORD_ID,
	RC_OPERATION,
	RC_TABLE_NAME,
	RC_PARTITION_KEY,
	RC_DATA,
	RC_TABLE_VERSION,
	RC_NUM
} RecordsColumn;

static const char *const records_columns[RC_NUM] = {
	"stream_id", "shard_id", "sequence", "system_time", "record_id",
	"operation", "table_name", "partition_key", "data", "table_version"
};

/*
 * A shape of a captured table (event_bridge.table_versions): its name, and
 * its columns and key as JSON text, written as jsonb writes them, so that
 * the ones loaded from the catalog compare equal with the decoder's.
 */
typedef struct TableVersion
{
	int64		id;
	char	   *table_name;
	char	   *columns;
	char	   *key_columns;
	bool		stored;			/* in the catalog, or stored at the next flush */
} TableVersion;

struct CaptureStore
{
	MemoryContext context;		/* everything below lives here */
	EbDatabase *db;
	Oid			records_relid;
	List	   *streams;		/* CaptureStream */
	List	   *filters;		/* TableFilter */
	uint64		streams_generation; /* bumped when the set of streams changes */
	int64		next_record_id;
	List	   *versions;		/* TableVersion; a few per table, one per shape */
	int64		next_version;
	bool		state_dirty;	/* something to store besides records */
	bool		catalog_changed;	/* a decoded transaction changed catalogs */

	StringInfoData pending;
	BufFile    *spill;
	int64		pending_count;
	TimestampTz pending_since;

	/*
	 * Tuple slots for multi-inserts, made on first need and kept: virtual
	 * slots over a private copy of the records table's descriptor, so that
	 * they hold no pin across transactions.  attnums are its columns.
	 */
	TupleTableSlot *insert_slots[EB_INSERT_BATCH];
	int			insert_slots_made;
	TupleDesc	insert_desc;
	AttrNumber	attnums[RC_NUM];
};

static EbStatement update_state = {
	/*
	 * The counters and the record id go in one statement: a flush under many
	 * small transactions costs mostly per statement.  A generic plan: with
	 * arrays for parameters, the plan cache would otherwise plan each
	 * execution anew, and whatever join it picks suits a table of one row
	 * per shard.  (Not for statements on tables that start empty and grow: a
	 * plan made while one is empty scans it whole ever after.)
	 */
	"WITH s AS (UPDATE event_bridge.shards s SET next_sequence = d.next_sequence"
	"   FROM unnest($1, $2, $3) AS d(stream_id, shard_id, next_sequence)"
	"  WHERE s.stream_id = d.stream_id AND s.shard_id = d.shard_id)"
	" UPDATE event_bridge.capture_state SET next_record_id = $4",
	4, {INT4ARRAYOID, INT4ARRAYOID, INT8ARRAYOID, INT8OID}, CURSOR_OPT_GENERIC_PLAN
};

static EbStatement update_capture_lsn = {
	"UPDATE event_bridge.streams SET capture_lsn = $2 WHERE stream_id = $1",
	2, {INT4OID, PG_LSNOID}
};

static EbStatement select_streams = {
	"SELECT stream_id, tables, shard_count, before_images"
	"  FROM event_bridge.streams WHERE capture_lsn IS NOT NULL", 0
};

static EbStatement select_shards = {
	"SELECT stream_id, shard_id, next_sequence FROM event_bridge.shards", 0
};

static EbStatement select_filters = {
	"SELECT stream_id, table_name::oid, row_filter_tree, column_numbers"
	"  FROM event_bridge.table_filter_rules", 0
};

static EbStatement select_record_id = {
	"SELECT next_record_id FROM event_bridge.capture_state", 0
};

static EbStatement select_versions = {
	"SELECT table_version, table_name, columns::text, key_columns::text"
	"  FROM event_bridge.table_versions", 0
};

static EbStatement insert_version = {
	"INSERT INTO event_bridge.table_versions (table_version, table_name, columns, key_columns)"
	" VALUES ($1, $2, $3::jsonb, $4::jsonb)",
	4, {INT8OID, TEXTOID, TEXTOID, TEXTOID}
};

/* ---------------------------------------------------------------------
 * Streams, called by the output plugin in commit order
 * ------------------------------------------------------------------- */

static CaptureStream *
find_stream(CaptureStore *store, int32 stream_id)
{
	ListCell   *lc;

	foreach(lc, store->streams)
	{
		CaptureStream *s = (CaptureStream *) lfirst(lc);

		if (s->stream_id == stream_id)
			return s;
	}
	return NULL;
}

/* Changes whenever the set of streams or their tables does. */
uint64
capture_streams_generation(CaptureStore *store)
{
	return store->streams_generation;
}

/* The streams that capture a relation, in a list the caller owns. */
List *
capture_streams_for_relation(CaptureStore *store, Oid relid)
{
	List	   *result = NIL;
	ListCell   *lc;

	foreach(lc, store->streams)
	{
		CaptureStream *s = (CaptureStream *) lfirst(lc);

		if (s->removed)
			continue;
		for (int i = 0; i < s->nrelids; i++)
			if (s->relids[i] == relid)
				result = lappend(result, s);
	}
	return result;
}

static CaptureStream *
new_stream(CaptureStore *store, int32 stream_id, int32 shard_count, bool before_images,
		   int nrelids, Oid *relids)
{
	MemoryContext old = MemoryContextSwitchTo(store->context);
	CaptureStream *s = palloc0(sizeof(CaptureStream));

	s->stream_id = stream_id;
	s->shard_count = shard_count;
	s->before_images = before_images;
	s->nrelids = nrelids;
	s->relids = palloc(sizeof(Oid) * Max(nrelids, 1));
	memcpy(s->relids, relids, sizeof(Oid) * nrelids);
	s->next_sequence = palloc0(sizeof(int64) * shard_count);
	s->shard_dirty = palloc0(sizeof(bool) * shard_count);
	store->streams = lappend(store->streams, s);
	MemoryContextSwitchTo(old);
	store->streams_generation++;
	return s;
}

/* A stream's creation was decoded: it captures from the next change on. */
void
capture_add_stream(CaptureStore *store, int32 stream_id, int32 shard_count,
				   bool before_images, int nrelids, Oid *relids, XLogRecPtr lsn)
{
	CaptureStream *s;

	if (find_stream(store, stream_id) != NULL)
		return;
	s = new_stream(store, stream_id, shard_count, before_images, nrelids, relids);
	s->activated_lsn = lsn;
	store->state_dirty = true;
}

/*
 * A row of event_bridge.shards was decoded (create_stream writes 0, a
 * restore from pg_dump writes the dumped counters): a shard's sequence never
 * goes back, so take the larger.
 */
void
capture_restore_sequence(CaptureStore *store, int32 stream_id, int32 shard_id,
						 int64 next_sequence)
{
	CaptureStream *s = find_stream(store, stream_id);

	if (s == NULL || s->removed || shard_id < 0 || shard_id >= s->shard_count ||
		next_sequence <= s->next_sequence[shard_id])
		return;
	s->next_sequence[shard_id] = next_sequence;
	s->shard_dirty[shard_id] = true;
	store->state_dirty = true;
}

/*
 * A change of a stream's tables was decoded (a captured table was dropped):
 * from the next change on, it captures these.
 */
void
capture_set_stream_tables(CaptureStore *store, int32 stream_id, int nrelids, Oid *relids)
{
	CaptureStream *s = find_stream(store, stream_id);
	MemoryContext old;

	if (s == NULL || s->removed)
		return;
	old = MemoryContextSwitchTo(store->context);
	pfree(s->relids);
	s->relids = palloc(sizeof(Oid) * Max(nrelids, 1));
	memcpy(s->relids, relids, sizeof(Oid) * nrelids);
	s->nrelids = nrelids;
	MemoryContextSwitchTo(old);
	store->streams_generation++;
}

/*
 * A stream's capture filter for a table was set (decoded in commit order, or
 * read at the start): from the next change on, it applies.  No row filter
 * and no column list remove it.
 */
void
capture_set_table_filter(CaptureStore *store, int32 stream_id, Oid relid, const char *tree,
						 int ncolumns, const AttrNumber *columns)
{
	TableFilter *f = capture_table_filter(store, stream_id, relid);
	MemoryContext old;

	if (f != NULL)
	{
		capture_filter_release(f);
		store->filters = list_delete_ptr(store->filters, f);
		if (f->tree != NULL)
			pfree(f->tree);
		if (f->columns != NULL)
			pfree(f->columns);
		pfree(f);
	}
	if (tree == NULL && ncolumns == 0)
		return;
	old = MemoryContextSwitchTo(store->context);
	f = palloc0(sizeof(TableFilter));
	f->stream_id = stream_id;
	f->relid = relid;
	f->tree = tree ? pstrdup(tree) : NULL;
	f->ncolumns = ncolumns;
	f->columns = palloc(sizeof(AttrNumber) * Max(ncolumns, 1));
	memcpy(f->columns, columns, sizeof(AttrNumber) * ncolumns);
	store->filters = lappend(store->filters, f);
	MemoryContextSwitchTo(old);
}

/* A stream's capture filter for a table, or NULL. */
TableFilter *
capture_table_filter(CaptureStore *store, int32 stream_id, Oid relid)
{
	ListCell   *lc;

	foreach(lc, store->filters)
	{
		TableFilter *f = (TableFilter *) lfirst(lc);

		if (f->stream_id == stream_id && f->relid == relid)
			return f;
	}
	return NULL;
}

/* A stream's drop was decoded: it captures nothing more. */
void
capture_remove_stream(CaptureStore *store, int32 stream_id)
{
	CaptureStream *s = find_stream(store, stream_id);

	if (s == NULL)
		return;
	s->removed = true;
	store->state_dirty = true;
	store->streams_generation++;
}

/* A decoded transaction changed the catalogs (DDL). */
void
capture_catalog_changed(CaptureStore *store)
{
	store->catalog_changed = true;
}

/* The next record id (field 0 of a record): one per decoded row change. */
int64
capture_next_record_id(CaptureStore *store)
{
	store->state_dirty = true;
	return store->next_record_id++;
}

static void
spill_pending(CaptureStore *store)
{
	MemoryContext old = MemoryContextSwitchTo(store->context);

	if (store->spill == NULL)
		store->spill = BufFileCreateTemp(true);
	BufFileWrite(store->spill, store->pending.data, store->pending.len);
	resetStringInfo(&store->pending);
	MemoryContextSwitchTo(old);
}

/*
 * The version of a table of this name, columns and key (JSON text as jsonb
 * writes it): a known one, or a new one, stored with the next flush.
 */
int64
capture_table_version(CaptureStore *store, const char *table_name, const char *columns,
					  const char *key_columns)
{
	ListCell   *lc;
	TableVersion *v;
	MemoryContext old;

	foreach(lc, store->versions)
	{
		v = (TableVersion *) lfirst(lc);
		if (strcmp(v->table_name, table_name) == 0 && strcmp(v->columns, columns) == 0 &&
			strcmp(v->key_columns, key_columns) == 0)
			return v->id;
	}
	old = MemoryContextSwitchTo(store->context);
	v = palloc0(sizeof(TableVersion));
	v->id = store->next_version++;
	v->table_name = pstrdup(table_name);
	v->columns = pstrdup(columns);
	v->key_columns = pstrdup(key_columns);
	store->versions = lappend(store->versions, v);
	MemoryContextSwitchTo(old);
	return v->id;
}

/* Queues one record; called by the plugin in commit order. */
void
capture_append(CaptureStore *store, CaptureStream *stream, int32 shard_id,
			   int64 record_id, char operation, const char *table_name, int64 table_version,
			   const char *key, int keylen, const char *data, int datalen)
{
	PendingHeader h;

	h.stream_id = stream->stream_id;
	h.shard_id = shard_id;
	h.sequence = stream->next_sequence[shard_id]++;
	h.record_id = record_id;
	h.table_version = table_version;
	h.operation = operation;
	h.table_len = strlen(table_name);
	h.key_len = key ? keylen : -1;
	h.data_len = datalen;
	stream->shard_dirty[shard_id] = true;

	appendBinaryStringInfo(&store->pending, (char *) &h, sizeof(h));
	appendBinaryStringInfo(&store->pending, table_name, h.table_len);
	if (key)
		appendBinaryStringInfo(&store->pending, key, keylen);
	appendBinaryStringInfo(&store->pending, data, datalen);

	if (store->pending_count++ == 0)
		store->pending_since = GetCurrentTimestamp();
	if (store->pending.len >= eb_capture_buffer_kb * 1024L)
		spill_pending(store);
}

/* ---------------------------------------------------------------------
 * The store and its flush, called by the worker
 * ------------------------------------------------------------------- */

/* A store for a database's capture worker, empty until capture_store_load. */
CaptureStore *
capture_store_create(EbDatabase *db, Oid records_relid)
{
	MemoryContext context = AllocSetContextCreate(TopMemoryContext, "event_bridge capture",
												  ALLOCSET_DEFAULT_SIZES);
	CaptureStore *store = MemoryContextAllocZero(context, sizeof(CaptureStore));
	MemoryContext old = MemoryContextSwitchTo(context);

	store->context = context;
	store->db = db;
	store->records_relid = records_relid;
	store->streams_generation = 1;
	store->next_record_id = 1;
	store->catalog_changed = true;
	initStringInfo(&store->pending);
	MemoryContextSwitchTo(old);
	return store;
}

/* Records decoded but not stored, and since when (0: none). */
int64
capture_store_pending(CaptureStore *store, TimestampTz *since)
{
	if (since != NULL)
		*since = store->pending_since;
	return store->pending_count;
}

/* Is there anything to flush: records or changed state? */
bool
capture_store_dirty(CaptureStore *store)
{
	return store->pending_count > 0 || store->state_dirty;
}

/*
 * Loads the streams whose creation has been captured, and the counters.
 * Must be called inside a transaction, connected to SPI.
 */
void
capture_store_load(CaptureStore *store)
{
	uint64		n = eb_run(&select_streams, NULL, NULL);
	bool		isnull;

	for (uint64 i = 0; i < n; i++)
	{
		Datum	   *elems;
		int			nelems;
		Oid		   *relids;
		ArrayType  *arr;

		arr = DatumGetArrayTypeP(eb_result(i, 2, &isnull));
		deconstruct_array(arr, REGCLASSOID, sizeof(Oid), true, TYPALIGN_INT, &elems, NULL, &nelems);
		relids = palloc(sizeof(Oid) * Max(nelems, 1));
		for (int j = 0; j < nelems; j++)
			relids[j] = DatumGetObjectId(elems[j]);
		new_stream(store, DatumGetInt32(eb_result(i, 1, &isnull)),
				   DatumGetInt32(eb_result(i, 3, &isnull)),
				   DatumGetBool(eb_result(i, 4, &isnull)),
				   nelems, relids);
	}

	n = eb_run(&select_shards, NULL, NULL);
	for (uint64 i = 0; i < n; i++)
	{
		CaptureStream *s = find_stream(store, DatumGetInt32(eb_result(i, 1, &isnull)));
		int32		shard = DatumGetInt32(eb_result(i, 2, &isnull));

		if (s != NULL && shard >= 0 && shard < s->shard_count)
			s->next_sequence[shard] = DatumGetInt64(eb_result(i, 3, &isnull));
	}

	n = eb_run(&select_filters, NULL, NULL);
	for (uint64 i = 0; i < n; i++)
	{
		Datum		d = eb_result(i, 4, &isnull);
		Datum	   *elems = NULL;
		int			nelems = 0;
		AttrNumber *columns;
		char	   *tree;

		if (!isnull)
			deconstruct_array(DatumGetArrayTypeP(d), INT2OID, sizeof(int16), true,
							  TYPALIGN_SHORT, &elems, NULL, &nelems);
		columns = palloc(sizeof(AttrNumber) * Max(nelems, 1));
		for (int j = 0; j < nelems; j++)
			columns[j] = DatumGetInt16(elems[j]);
		d = eb_result(i, 3, &isnull);
		tree = isnull ? NULL : TextDatumGetCString(d);
		capture_set_table_filter(store, DatumGetInt32(eb_result(i, 1, &isnull)),
								 DatumGetObjectId(eb_result(i, 2, &isnull)),
								 tree, nelems, columns);
	}

	if (eb_run(&select_record_id, NULL, NULL) != 1)
		elog(ERROR, "could not read event_bridge capture state");
	store->next_record_id = DatumGetInt64(eb_result(0, 1, &isnull));

	store->next_version = 1;
	n = eb_run(&select_versions, NULL, NULL);
	for (uint64 i = 0; i < n; i++)
	{
		MemoryContext old = MemoryContextSwitchTo(store->context);
		TableVersion *v = palloc0(sizeof(TableVersion));

		v->id = DatumGetInt64(eb_result(i, 1, &isnull));
		v->table_name = TextDatumGetCString(eb_result(i, 2, &isnull));
		v->columns = TextDatumGetCString(eb_result(i, 3, &isnull));
		v->key_columns = TextDatumGetCString(eb_result(i, 4, &isnull));
		v->stored = true;
		store->versions = lappend(store->versions, v);
		store->next_version = Max(store->next_version, v->id + 1);
		MemoryContextSwitchTo(old);
	}
}

/* Stores the table versions that records of this flush name for the first time. */
static void
store_versions(CaptureStore *store)
{
	ListCell   *lc;

	foreach(lc, store->versions)
	{
		TableVersion *v = (TableVersion *) lfirst(lc);
		Datum		values[4];

		if (v->stored)
			continue;
		values[0] = Int64GetDatum(v->id);
		values[1] = CStringGetTextDatum(v->table_name);
		values[2] = CStringGetTextDatum(v->columns);
		values[3] = CStringGetTextDatum(v->key_columns);
		eb_run(&insert_version, values, NULL);
		v->stored = true;
	}
}

/* Inserts the records described by some slots, and their index entries. */
static void
insert_batch(Relation rel, ResultRelInfo *rri, EState *estate,
			 TupleTableSlot **slots, int n, BulkInsertState bistate)
{
	table_multi_insert(rel, slots, n, GetCurrentCommandId(true), 0, bistate);
	for (int i = 0; i < n; i++)
	{
		List	   *recheck;

		recheck = ExecInsertIndexTuples(rri, slots[i], estate, false, false, NULL, NIL);
		list_free(recheck);
		ResetPerTupleExprContext(estate);
		ExecClearTuple(slots[i]);
	}
}

/*
 * Reads the next pending record into buf (header first), from the spill file
 * and then from memory.  Returns false when there are no more.
 */
static bool
next_pending(CaptureStore *store, StringInfo buf, size_t *mem_offset)
{
	PendingHeader h;
	size_t		payload;

	resetStringInfo(buf);
	if (store->spill != NULL)
	{
		size_t		got = BufFileRead(store->spill, &h, sizeof(h));

		if (got == sizeof(h))
		{
			payload = h.table_len + Max(h.key_len, 0) + h.data_len;
			appendBinaryStringInfo(buf, (char *) &h, sizeof(h));
			enlargeStringInfo(buf, payload);
			if (BufFileRead(store->spill, buf->data + buf->len, payload) != payload)
				elog(ERROR, "could not read event_bridge spill file");
			buf->len += payload;
			return true;
		}
		if (got != 0)
			elog(ERROR, "could not read event_bridge spill file");
	}
	if (*mem_offset >= (size_t) store->pending.len)
		return false;
	memcpy(&h, store->pending.data + *mem_offset, sizeof(h));
	payload = sizeof(h) + h.table_len + Max(h.key_len, 0) + h.data_len;
	appendBinaryStringInfo(buf, store->pending.data + *mem_offset, payload);
	*mem_offset += payload;
	return true;
}

/*
 * Do two descriptors have the same columns (names, types, dropped ones)?
 * Unlike equalTupleDescs, blind to constraints, which a copy does not keep.
 */
static bool
same_columns(TupleDesc a, TupleDesc b)
{
	if (a->natts != b->natts)
		return false;
	for (int i = 0; i < a->natts; i++)
	{
		Form_pg_attribute x = TupleDescAttr(a, i);
		Form_pg_attribute y = TupleDescAttr(b, i);

		if (x->atttypid != y->atttypid || x->attisdropped != y->attisdropped ||
			strcmp(NameStr(x->attname), NameStr(y->attname)) != 0)
			return false;
	}
	return true;
}

/*
 * Makes the insert slots fit the records table as it is now, its columns
 * found by name: an upgrade may have added some.  (A column that an upgrade
 * adds must be nullable or be filled here: a multi-insert applies no
 * defaults.)
 */
static void
prepare_insert_slots(CaptureStore *store, Relation rel)
{
	MemoryContext old;

	if (store->insert_desc != NULL && same_columns(store->insert_desc, RelationGetDescr(rel)))
		return;
	for (int i = 0; i < store->insert_slots_made; i++)
		ExecDropSingleTupleTableSlot(store->insert_slots[i]);
	store->insert_slots_made = 0;
	if (store->insert_desc != NULL)
		FreeTupleDesc(store->insert_desc);

	old = MemoryContextSwitchTo(store->context);
	store->insert_desc = CreateTupleDescCopy(RelationGetDescr(rel));
	MemoryContextSwitchTo(old);
	for (int i = 0; i < RC_NUM; i++)
		store->attnums[i] = eb_column(store->insert_desc, records_columns[i]);
}

/* Sets a column of a slot whose values start all null. */
static inline void
set_column(CaptureStore *store, TupleTableSlot *slot, RecordsColumn column, Datum value)
{
	AttrNumber	attnum = store->attnums[column];

	slot->tts_values[attnum - 1] = value;
	slot->tts_isnull[attnum - 1] = false;
}

/*
 * Inserts the pending records, EB_INSERT_BATCH at a time with
 * table_multi_insert: the one place capture writes a table without a
 * statement.  Capture stores up to hundreds of thousands of records a
 * second, where a statement per record, or a statement's executor per
 * batch, would cost more than the writing (bench.sh section 2: capture
 * keeps pace with pg_recvlogical's decoding of the same WAL, 1.04-1.40).
 */
static void
insert_pending(CaptureStore *store, int64 system_time)
{
	Relation	rel = table_open(store->records_relid, RowExclusiveLock);
	EState	   *estate = CreateExecutorState();
	ResultRelInfo *rri = makeNode(ResultRelInfo);
	BulkInsertState bistate = GetBulkInsertState();
	TupleTableSlot **slots = store->insert_slots;
	MemoryContext batch_context;
	MemoryContext old;
	StringInfoData buf;
	size_t		mem_offset = 0;
	int			n = 0;

	InitResultRelInfo(rri, rel, 1, NULL, 0);
	ExecOpenIndices(rri, false);
	prepare_insert_slots(store, rel);
	batch_context = AllocSetContextCreate(CurrentMemoryContext, "event_bridge insert batch",
										  ALLOCSET_DEFAULT_SIZES);
	initStringInfo(&buf);
	if (store->spill != NULL && BufFileSeek(store->spill, 0, 0, SEEK_SET) != 0)
		elog(ERROR, "could not rewind event_bridge spill file");

	old = MemoryContextSwitchTo(batch_context);
	for (;;)
	{
		PendingHeader h;
		const char *p;
		TupleTableSlot *slot;
		CaptureStream *s;
		bool		more;

		MemoryContextSwitchTo(old);
		more = next_pending(store, &buf, &mem_offset);
		MemoryContextSwitchTo(batch_context);
		if (!more)
			break;

		memcpy(&h, buf.data, sizeof(h));
		s = find_stream(store, h.stream_id);
		if (s == NULL || s->removed)
			continue;

		p = buf.data + sizeof(h);
		if (n == store->insert_slots_made)
		{
			MemoryContext old_context = MemoryContextSwitchTo(store->context);

			store->insert_slots[store->insert_slots_made++] =
				MakeSingleTupleTableSlot(store->insert_desc, &TTSOpsVirtual);
			MemoryContextSwitchTo(old_context);
		}
		slot = slots[n];
		ExecClearTuple(slot);
		memset(slot->tts_isnull, true, sizeof(bool) * store->insert_desc->natts);
		set_column(store, slot, RC_STREAM_ID, Int32GetDatum(h.stream_id));
		set_column(store, slot, RC_SHARD_ID, Int32GetDatum(h.shard_id));
		set_column(store, slot, RC_SEQUENCE, Int64GetDatum(h.sequence));
		set_column(store, slot, RC_SYSTEM_TIME, Int64GetDatum(system_time));
		set_column(store, slot, RC_RECORD_ID, Int64GetDatum(h.record_id));
		set_column(store, slot, RC_OPERATION, CharGetDatum(h.operation));
		set_column(store, slot, RC_TABLE_NAME,
				   PointerGetDatum(cstring_to_text_with_len(p, h.table_len)));
		p += h.table_len;
		if (h.key_len >= 0)
		{
			set_column(store, slot, RC_PARTITION_KEY,
					   PointerGetDatum(cstring_to_text_with_len(p, h.key_len)));
			p += h.key_len;
		}
		set_column(store, slot, RC_DATA, PointerGetDatum(cstring_to_text_with_len(p, h.data_len)));
		set_column(store, slot, RC_TABLE_VERSION, Int64GetDatum(h.table_version));
		ExecStoreVirtualTuple(slot);

		if (++n == EB_INSERT_BATCH)
		{
			insert_batch(rel, rri, estate, slots, n, bistate);
			n = 0;
			MemoryContextReset(batch_context);
		}
	}
	if (n > 0)
		insert_batch(rel, rri, estate, slots, n, bistate);
	MemoryContextSwitchTo(old);

	MemoryContextDelete(batch_context);
	FreeBulkInsertState(bistate);
	table_finish_bulk_insert(rel, 0);
	ExecCloseIndices(rri);
	FreeExecutorState(estate);
	table_close(rel, NoLock);
	pfree(buf.data);
}

/* Stores the shards' counters, the record id and newly decoded streams. */
static void
store_state(CaptureStore *store)
{
	ListCell   *lc;
	int			nshards = 0;
	int			ndirty = 0;
	Datum	   *stream_ids;
	Datum	   *shard_ids;
	Datum	   *next_sequences;
	Datum		values[4];

	foreach(lc, store->streams)
		nshards += ((CaptureStream *) lfirst(lc))->shard_count;
	stream_ids = palloc(sizeof(Datum) * Max(nshards, 1));
	shard_ids = palloc(sizeof(Datum) * Max(nshards, 1));
	next_sequences = palloc(sizeof(Datum) * Max(nshards, 1));

	foreach(lc, store->streams)
	{
		CaptureStream *s = (CaptureStream *) lfirst(lc);

		if (s->removed)
			continue;
		for (int i = 0; i < s->shard_count; i++)
		{
			if (!s->shard_dirty[i])
				continue;
			stream_ids[ndirty] = Int32GetDatum(s->stream_id);
			shard_ids[ndirty] = Int32GetDatum(i);
			next_sequences[ndirty] = Int64GetDatum(s->next_sequence[i]);
			ndirty++;
		}
		if (s->activated_lsn != InvalidXLogRecPtr)
		{
			Datum		args[2] = {Int32GetDatum(s->stream_id), LSNGetDatum(s->activated_lsn)};

			if (eb_run(&update_capture_lsn, args, NULL) != 1)
				elog(ERROR, "could not update event_bridge stream %d", s->stream_id);
		}
	}

	values[0] = PointerGetDatum(construct_array(stream_ids, ndirty, INT4OID, sizeof(int32), true, TYPALIGN_INT));
	values[1] = PointerGetDatum(construct_array(shard_ids, ndirty, INT4OID, sizeof(int32), true, TYPALIGN_INT));
	values[2] = PointerGetDatum(construct_array(next_sequences, ndirty, INT8OID, sizeof(int64), FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
	values[3] = Int64GetDatum(store->next_record_id);
	if (eb_run(&update_state, values, NULL) != 1)
		elog(ERROR, "could not update event_bridge capture state");
}

/* Forgets what a committed flush made durable. */
static void
reset_after_flush(CaptureStore *store)
{
	ListCell   *lc;
	List	   *kept = NIL;
	MemoryContext old = MemoryContextSwitchTo(store->context);

	foreach(lc, store->streams)
	{
		CaptureStream *s = (CaptureStream *) lfirst(lc);

		if (s->removed)
		{
			/*
			 * Its records are discarded and no routing list points here any
			 * more: removing it bumped streams_generation, so every
			 * relation's list is rebuilt before it is used again.
			 */
			pfree(s->relids);
			pfree(s->next_sequence);
			pfree(s->shard_dirty);
			pfree(s);
			continue;
		}
		memset(s->shard_dirty, 0, sizeof(bool) * s->shard_count);
		s->activated_lsn = InvalidXLogRecPtr;
		kept = lappend(kept, s);
	}
	list_free(store->streams);
	store->streams = kept;
	MemoryContextSwitchTo(old);
	resetStringInfo(&store->pending);
	if (store->spill != NULL)
	{
		BufFileClose(store->spill);
		store->spill = NULL;
	}
	store->pending_count = 0;
	store->state_dirty = false;
}

/*
 * Sets or clears this process's PROC_IN_LOGICAL_DECODING flag.  Snapshots of
 * other backends leave out the transactions of a process with the flag set,
 * as if they had ended: a reader of event_bridge.records would then take a
 * flush that is still running for an aborted one and mark its rows invalid
 * for good (HEAP_XMIN_INVALID).  So the flag is off while a flush writes.
 */
static void
set_in_logical_decoding(bool on)
{
	LWLockAcquire(ProcArrayLock, LW_EXCLUSIVE);
	if (on)
		MyProc->statusFlags |= PROC_IN_LOGICAL_DECODING;
	else
		MyProc->statusFlags &= ~PROC_IN_LOGICAL_DECODING;
	ProcGlobal->statusFlags[MyProc->pgxactoff] = MyProc->statusFlags;
	LWLockRelease(ProcArrayLock);
}

/*
 * Appends the pending records and the capture state in one transaction that
 * also moves the origin to upto, then lets the slot advance to upto and
 * wakes the delivery worker.
 */
void
capture_store_flush(CaptureStore *store, XLogRecPtr upto)
{
	int64		now_ms;
	bool		decoding = (MyProc->statusFlags & PROC_IN_LOGICAL_DECODING) != 0;
	bool		invalidate = store->catalog_changed;

	/*
	 * Caches filled while decoding hold catalog rows as of the decoded past,
	 * and this transaction's fill them as of now: they differ only where a
	 * catalog changed in between, so they are thrown away only then.
	 */
	if (invalidate)
		InvalidateSystemCaches();
	if (decoding)
		set_in_logical_decoding(false);
	eb_worker_xact_begin();

	now_ms = (GetCurrentTimestamp() / 1000) +
		((int64) (POSTGRES_EPOCH_JDATE - UNIX_EPOCH_JDATE) * SECS_PER_DAY * 1000);
	store_versions(store);
	if (store->pending_count > 0)
		insert_pending(store, now_ms);
	store_state(store);

	replorigin_session_origin_lsn = upto;
	replorigin_session_origin_timestamp = GetCurrentTimestamp();
	EB_FAULT_POINT("capture-before-commit");

	eb_worker_xact_commit();
	if (decoding)
		set_in_logical_decoding(true);
	pgstat_report_stat(false);
	if (invalidate)
	{
		InvalidateSystemCaches();
		store->catalog_changed = false;
	}

	EB_FAULT_POINT("capture-after-commit");
	reset_after_flush(store);
	LogicalConfirmReceivedLocation(upto);
	pg_atomic_fetch_add_u32(&store->db->records_epoch, 1);
	eb_wake_worker(&store->db->workers[EB_WORKER_DELIVERY]);
}
