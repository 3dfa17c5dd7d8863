-- Streams: bad input is refused with a clear error and changes nothing.
CREATE EXTENSION event_bridge;
\set SHOW_CONTEXT never
CREATE TABLE t (id int PRIMARY KEY, v text);
ALTER TABLE t REPLICA IDENTITY FULL;
CREATE TABLE t_default (id int PRIMARY KEY);
CREATE VIEW v AS SELECT 1 AS x;
CREATE TEMP TABLE temp_t (id int);
CREATE UNLOGGED TABLE unlogged_t (id int);

-- a NULL stream name
SELECT event_bridge.create_stream(NULL, ARRAY['t']::regclass[]);
-- a NULL table list
SELECT event_bridge.create_stream('s', NULL);
-- an empty table list
SELECT event_bridge.create_stream('s', ARRAY[]::regclass[]);
-- a NULL element in the table list
SELECT event_bridge.create_stream('s', ARRAY['t', NULL]::regclass[]);
-- the same table twice
SELECT event_bridge.create_stream('s', ARRAY['t', 't']::regclass[]);
-- an unknown table (refused by regclass itself)
SELECT event_bridge.create_stream('s', ARRAY['no_such_table']::regclass[]);
-- an OID that is no relation
SELECT event_bridge.create_stream('s', ARRAY[12345678::oid]::regclass[]);
-- a view
SELECT event_bridge.create_stream('s', ARRAY['v']::regclass[]);
-- a temporary and an unlogged table
SELECT event_bridge.create_stream('s', ARRAY['temp_t']::regclass[], before_images => false);
SELECT event_bridge.create_stream('s', ARRAY['unlogged_t']::regclass[], before_images => false);
-- the extension's own tables
SELECT event_bridge.create_stream('s', ARRAY['event_bridge.records']::regclass[], before_images => false);
-- a system catalog
SELECT event_bridge.create_stream('s', ARRAY['pg_class']::regclass[], before_images => false);
-- shard_count below and above 1..256, and NULL
SELECT event_bridge.create_stream('s', ARRAY['t']::regclass[], shard_count => 0);
SELECT event_bridge.create_stream('s', ARRAY['t']::regclass[], shard_count => 257);
SELECT event_bridge.create_stream('s', ARRAY['t']::regclass[], shard_count => NULL);
-- a retention that is not positive
SELECT event_bridge.create_stream('s', ARRAY['t']::regclass[], retention => '0');
SELECT event_bridge.create_stream('s', ARRAY['t']::regclass[], retention => '-1 day');
-- before images of a table without REPLICA IDENTITY FULL
SELECT event_bridge.create_stream('s', ARRAY['t_default']::regclass[]);
-- names that are empty, too long, or look like SQL
SELECT event_bridge.create_stream('', ARRAY['t']::regclass[]);
SELECT event_bridge.create_stream(repeat('x', 200), ARRAY['t']::regclass[]);
SELECT event_bridge.create_stream('x''; DROP TABLE t; --', ARRAY['t']::regclass[]);

-- Nothing of the above was created.
SELECT count(*) AS streams FROM event_bridge.streams;
SELECT count(*) AS shards FROM event_bridge.shards;

-- a duplicate name
SELECT event_bridge.create_stream('s', ARRAY['t']::regclass[]);
SELECT event_bridge.create_stream('s', ARRAY['t_default']::regclass[], before_images => false);
SELECT stream_name, tables FROM event_bridge.stream_status;

-- dropping an unknown stream, or NULL
SELECT event_bridge.drop_stream('no_such_stream');
SELECT event_bridge.drop_stream(NULL);

-- get_records: unknown stream, shard out of range, negative sequence, bad limit, NULLs
SELECT * FROM event_bridge.get_records('no_such_stream', 0, 0);
SELECT * FROM event_bridge.get_records('s', 1, 0);
SELECT * FROM event_bridge.get_records('s', -1, 0);
SELECT * FROM event_bridge.get_records('s', 0, -5);
SELECT * FROM event_bridge.get_records('s', 0, 0, 0);
SELECT * FROM event_bridge.get_records('s', 0, 0, 10001);
SELECT * FROM event_bridge.get_records('s', NULL, 0);

-- wait_for_capture with a negative timeout
SELECT event_bridge.wait_for_capture('-1 second');

-- Only superusers and members of event_bridge_admin manage streams.
CREATE ROLE eb_nobody;
CREATE ROLE eb_admin_member IN ROLE event_bridge_admin;
SET ROLE eb_nobody;
-- no privilege: create, drop, read
SELECT event_bridge.create_stream('s2', ARRAY['t']::regclass[]);
SELECT event_bridge.drop_stream('s');
SELECT * FROM event_bridge.get_records('s', 0, 0);
SELECT * FROM event_bridge.stream_status;
SELECT count(*) FROM event_bridge.records;
RESET ROLE;
GRANT SELECT ON t_default TO eb_admin_member;
SET ROLE eb_admin_member;
SELECT event_bridge.create_stream('s2', ARRAY['t_default']::regclass[], before_images => false);
SELECT stream_name FROM event_bridge.stream_status ORDER BY 1;
SELECT event_bridge.drop_stream('s2');
RESET ROLE;
SELECT stream_name FROM event_bridge.stream_status ORDER BY 1;

-- Clean up: DROP EXTENSION stops the workers and drops the slot.
DROP EXTENSION event_bridge;
DROP TABLE t, t_default, unlogged_t;
DROP VIEW v;
DROP ROLE eb_nobody, eb_admin_member;
