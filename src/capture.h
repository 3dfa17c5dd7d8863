/*-------------------------------------------------------------------------
 *
 * capture.h
 *	  The interface between the output plugin (decoder.c), which turns
 *	  decoded changes into records, and the capture worker (capture.c), which
 *	  keeps the streams' state and appends the records to storage.
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

/* Column numbers of event_bridge.streams, as the plugin decodes them. */
#define Anum_eb_streams_stream_id		1
#define Anum_eb_streams_tables			3
#define Anum_eb_streams_shard_count		4
#define Anum_eb_streams_before_images	6

/* Column numbers of event_bridge.shards. */
#define Anum_eb_shards_stream_id		1
#define Anum_eb_shards_shard_id			2
#define Anum_eb_shards_next_sequence	3

/* Set in the capture worker only; the plugin writes text output otherwise. */
extern bool eb_capture_active;

/* The OIDs of event_bridge.streams and event_bridge.shards in this database. */
extern Oid	eb_streams_relid;
extern Oid	eb_shards_relid;

/* Replication origins of the workers; their transactions are not decoded. */
extern RepOriginId eb_capture_origin_id;
extern RepOriginId eb_delivery_origin_id;

/* Bumped whenever the set of streams changes, so routing caches rebuild. */
extern uint64 eb_streams_generation;

extern List *capture_streams_for_relation(Oid relid);
extern void capture_add_stream(int32 stream_id, int32 shard_count, bool before_images,
							   int nrelids, Oid *relids, XLogRecPtr lsn);
extern void capture_set_stream_tables(int32 stream_id, int nrelids, Oid *relids);
extern void capture_remove_stream(int32 stream_id);
extern void capture_restore_sequence(int32 stream_id, int32 shard_id, int64 next_sequence);
extern int64 capture_next_record_id(void);
extern void capture_catalog_changed(void);
extern void capture_append(CaptureStream *stream, int32 shard_id, int64 record_id,
						   char operation, const char *table_name,
						   const char *key, int keylen,
						   const char *data, int datalen);

#endif							/* EVENT_BRIDGE_CAPTURE_H */
