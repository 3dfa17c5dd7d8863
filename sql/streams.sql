-- Streams: create, capture INSERT / UPDATE / DELETE in commit order, drop.
CREATE EXTENSION event_bridge;
\set SHOW_CONTEXT never

CREATE TABLE orders (id int PRIMARY KEY, customer text, amount numeric(10,2));
ALTER TABLE orders REPLICA IDENTITY FULL;

SELECT event_bridge.create_stream('orders', ARRAY['orders']::regclass[], shard_count => 4);

-- A helper that shows a record without the fields that differ per run
-- (instance id, commit time).
CREATE FUNCTION show(stream text) RETURNS TABLE (event_id text, op char, data jsonb)
LANGUAGE sql AS $$
    SELECT r.event_id, r.operation, r.data #- '{5}' #- '{2}'
      FROM event_bridge.streams s, generate_series(0, s.shard_count - 1) g,
           event_bridge.get_records(stream, g, 0, 1000) r
     WHERE s.stream_name = stream
     ORDER BY (r.data->>0)::bigint, r.shard_id, r.sequence
$$;

INSERT INTO orders VALUES (1, 'alice', 10.50), (2, 'bob', 20), (3, 'carol', NULL);
UPDATE orders SET amount = 11 WHERE id = 1;
DELETE FROM orders WHERE id = 2;

-- An aborted transaction and a rolled-back subtransaction leave no record.
BEGIN;
INSERT INTO orders VALUES (100, 'aborted', 1);
ROLLBACK;
BEGIN;
INSERT INTO orders VALUES (4, 'dave', 4);
SAVEPOINT s1;
INSERT INTO orders VALUES (101, 'rolled back', 1);
UPDATE orders SET customer = 'rolled back' WHERE id = 1;
ROLLBACK TO SAVEPOINT s1;
INSERT INTO orders VALUES (5, 'erin', 5);
COMMIT;

SELECT event_bridge.wait_for_capture();
SELECT * FROM show('orders');

-- Every change of one row lands in one shard, in order, with gapless sequences.
SELECT data->>6 AS id, count(DISTINCT split_part(event_id, ':', 1)) AS shards
  FROM show('orders') GROUP BY 1 ORDER BY 1;
SELECT s.shard_id, s.next_sequence,
       (SELECT count(*) FROM event_bridge.records r
         WHERE r.stream_id = s.stream_id AND r.shard_id = s.shard_id) AS stored,
       (SELECT coalesce(max(sequence) + 1, 0) FROM event_bridge.records r
         WHERE r.stream_id = s.stream_id AND r.shard_id = s.shard_id) AS max_plus_one
  FROM event_bridge.shards s ORDER BY 1;

-- get_records pages through one shard from a sequence on.
SELECT event_id, sequence FROM event_bridge.get_records('orders', 0, 1, 2);

SELECT stream_name, tables, shard_count, records, capture_lag_bytes IS NOT NULL AS has_lag,
       oldest_system_time <= newest_system_time AS ordered, appended, retention, before_images, capturing
  FROM event_bridge.stream_status;

-- Tables that are not captured produce nothing; a second stream on the same
-- table gets its own shards and sequences, starting from its creation.
CREATE TABLE other (id int PRIMARY KEY);
INSERT INTO other VALUES (1);
SELECT event_bridge.create_stream('orders_one_shard', ARRAY['orders']::regclass[]);
INSERT INTO orders VALUES (6, 'frank', 6);
SELECT event_bridge.wait_for_capture();
SELECT * FROM show('orders_one_shard');
SELECT stream_name, records FROM event_bridge.stream_status ORDER BY 1;

-- Dropping a stream removes its records; the other stream goes on.
SELECT event_bridge.drop_stream('orders_one_shard');
INSERT INTO orders VALUES (7, 'grace', 7);
SELECT event_bridge.wait_for_capture();
SELECT stream_name, records FROM event_bridge.stream_status ORDER BY 1;
SELECT count(*) FROM event_bridge.records r
 WHERE NOT EXISTS (SELECT FROM event_bridge.streams s WHERE s.stream_id = r.stream_id);

-- The API documents itself.
SELECT p.proname, obj_description(p.oid, 'pg_proc') IS NOT NULL AS commented
  FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
 WHERE n.nspname = 'event_bridge' AND p.proname NOT LIKE '\_%'
 ORDER BY 1;
SELECT obj_description('event_bridge.stream_status'::regclass, 'pg_class') IS NOT NULL AS view_commented;

-- Clean up: DROP EXTENSION stops the workers and drops the slot.
DROP EXTENSION event_bridge;
DROP FUNCTION show(text);
DROP TABLE orders, other;
