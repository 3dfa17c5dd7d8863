/*-------------------------------------------------------------------------
 *
 * capture.h
 *	  The capture side of event_bridge: the output plugin (decoder.c), which
 *	  turns decoded changes into records, the record store that keeps the
 *	  streams' state and stores the records (capture_store.c), the slot and
 *	  origins (capture_slot.c), and the worker that drives them (capture.c).
 *
 * IDENTIFICATION
 *	  src/capture.h
 *
 *-------------------------------------------------------------------------
 */
#ifndef EVENT_BRIDGE_CAPTURE_H
#define EVENT_BRIDGE_CAPTURE_H

#include "postgres.h"

#include "access/xlogdefs.h"
#include "nodes/pg_list.h"
#include "replication/logical.h"

#include "event_bridge.h"

/*
 * A stream as the capture worker knows it.  next_sequence[] holds the next
 * sequence of each shard; a sequence is given to a record when the plugin
 * produces it, which happens in commit order.
 */
typedef struct CaptureStream
{
	int32		stream_id;
	int32		shard_count;
	bool		before_images;
	bool		removed;		/* dropped: its pending records are discarded */
	int			nrelids;
	Oid		   *relids;
	int64	   *next_sequence;
	bool	   *shard_dirty;	/* next_sequence changed since the last flush */
	XLogRecPtr	activated_lsn;	/* creation decoded at; to store at the next flush */
} CaptureStream;

/*
 * A stream's capture filter for one table (capture_filter.c): which rows
 * and columns it keeps.  The store keeps them in commit order; the fields
 * after columns are made by capture_filter_prepare.
 */
typedef struct TableFilter
{
	int32		stream_id;
	Oid			relid;
	char	   *tree;			/* the row filter (nodeToString); NULL: every row */
	int			ncolumns;		/* 0: every column */
	AttrNumber *columns;		/* the column list */
	uint64		prepared_for;	/* the table description it was made for; 0: none */
	MemoryContext context;
	struct EState *estate;
	struct ExprState *state;	/* NULL: no row filter, or a broken one */
	struct TupleTableSlot *slot;
	bool		broken;			/* the row filter no longer fits the table */
	int64		version;		/* the table version of the column list; 0: not known */
} TableFilter;

/* The record store of one capture worker (capture_store.c). */
typedef struct CaptureStore CaptureStore;

/*
 * What the capture worker hands the output plugin through the decoding
 * context (decoder_set_target): the tables whose changes configure streams,
 * the origins whose transactions are not decoded, and the store that takes
 * the records.  A decoding context without one (a slot read by
 * pg_logical_slot_get_changes) writes text lines instead.
 */
typedef struct CaptureTarget
{
	Oid			streams_relid;
	Oid			shards_relid;
	Oid			filters_relid;	/* event_bridge.table_filter_rules */
	RepOriginId capture_origin;
	RepOriginId delivery_origin;
	CaptureStore *store;
} CaptureTarget;

/* decoder.c */
extern void decoder_set_target(LogicalDecodingContext *ctx, CaptureTarget *target);

/* capture_store.c, called by the plugin in commit order */
extern uint64 capture_streams_generation(CaptureStore *store);
extern List *capture_streams_for_relation(CaptureStore *store, Oid relid);
extern void capture_add_stream(CaptureStore *store, int32 stream_id, int32 shard_count,
							   bool before_images, int nrelids, Oid *relids, XLogRecPtr lsn);
extern void capture_set_stream_tables(CaptureStore *store, int32 stream_id,
									  int nrelids, Oid *relids);
extern void capture_remove_stream(CaptureStore *store, int32 stream_id);
extern void capture_set_table_filter(CaptureStore *store, int32 stream_id, Oid relid,
									 const char *tree, int ncolumns, const AttrNumber *columns);
extern TableFilter *capture_table_filter(CaptureStore *store, int32 stream_id, Oid relid);
extern void capture_restore_sequence(CaptureStore *store, int32 stream_id, int32 shard_id,
									 int64 next_sequence);
extern int64 capture_next_record_id(CaptureStore *store);
extern void capture_catalog_changed(CaptureStore *store);
extern int64 capture_table_version(CaptureStore *store, const char *table_name,
								   const char *columns, const char *key_columns);
extern void capture_append(CaptureStore *store, CaptureStream *stream, int32 shard_id,
						   int64 record_id, char operation, const char *table_name,
						   int64 table_version, const char *key, int keylen,
						   const char *data, int datalen);

/* capture_store.c, called by the worker */
extern CaptureStore *capture_store_create(EbDatabase *db, Oid records_relid);
extern void capture_store_load(CaptureStore *store);
extern int64 capture_store_pending(CaptureStore *store, TimestampTz *since);
extern bool capture_store_dirty(CaptureStore *store);
extern void capture_store_flush(CaptureStore *store, XLogRecPtr upto);

/* capture_filter.c */
extern void capture_filter_prepare(TableFilter *f, Relation rel, uint64 serial);
extern bool capture_filter_matches(TableFilter *f, HeapTuple tuple, HeapTuple fill);
extern bool capture_filter_keeps_column(const TableFilter *f, AttrNumber attnum);
extern void capture_filter_release(TableFilter *f);

/* capture_slot.c */
extern void capture_create_slot(const char *name);
extern RepOriginId capture_origin(const char *name);
extern void capture_exit_if_dropped(EbDatabase *db, Oid *extension_oid,
									const char *slot_name, bool holding_slot);
extern void capture_recover_lost_slot(EbDatabase *db, Oid *extension_oid,
									  const char *slot_name);

#endif							/* EVENT_BRIDGE_CAPTURE_H */
