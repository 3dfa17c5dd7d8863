-- Capture filters (set_table_filter): PostgreSQL 15 publication row filters
-- and column lists per stream and table, applied by the capture worker.
CREATE EXTENSION event_bridge;
\set SHOW_CONTEXT never

CREATE TABLE orders (id int PRIMARY KEY, status text, amount int, note text);
ALTER TABLE orders REPLICA IDENTITY FULL;
CREATE TABLE other (id int PRIMARY KEY, v text);
SELECT event_bridge.create_stream('paid', ARRAY['orders']::regclass[]);
SELECT event_bridge.create_stream('all_orders', ARRAY['orders']::regclass[]);

CREATE FUNCTION show(stream text) RETURNS TABLE (seq bigint, op char, flags text, columns jsonb)
LANGUAGE sql AS $$
    SELECT r.sequence, r.operation, (r.data ->> 6) || (r.data ->> 7),
           (SELECT jsonb_agg(x ORDER BY i) FROM jsonb_array_elements(r.data) WITH ORDINALITY e(x, i) WHERE i > 8)
      FROM event_bridge.get_records(stream, 0, 0, 1000) r ORDER BY r.sequence
$$;

-- Only paid orders, and only their id, status and amount.
SELECT event_bridge.set_table_filter('paid', 'orders', 'status = ''paid'' AND amount > 0',
                                     '{id,status,amount}');
SELECT stream_name, table_name, row_filter, columns FROM event_bridge.capture_filters;

INSERT INTO orders VALUES (1, 'paid', 10, 'a'), (2, 'new', 20, 'b'), (3, 'paid', 0, 'c');
-- new -> paid: an INSERT; paid -> new: a DELETE; paid -> paid: an UPDATE.
UPDATE orders SET status = 'paid' WHERE id = 2;
UPDATE orders SET status = 'new' WHERE id = 1;
UPDATE orders SET amount = 25 WHERE id = 2;
-- new -> new: nothing.
UPDATE orders SET note = 'z' WHERE id = 1;
DELETE FROM orders WHERE id IN (1, 2);
SELECT event_bridge.wait_for_capture();
-- Gapless sequences, only what matches, only the listed columns.
SELECT * FROM show('paid');
-- The other stream of the same table keeps everything.
SELECT count(*) AS all_records FROM event_bridge.get_records('all_orders', 0, 0, 1000);
-- The records name a table version with the listed columns.
SELECT DISTINCT v.columns FROM event_bridge.records r
  JOIN event_bridge.streams s USING (stream_id)
  JOIN event_bridge.table_versions v USING (table_version)
 WHERE s.stream_name = 'paid';

-- A column list alone; then no filter at all: every row and column again.
SELECT event_bridge.set_table_filter('paid', 'orders', columns => '{id,note}');
INSERT INTO orders VALUES (4, 'new', 1, 'only id and note');
SELECT event_bridge.set_table_filter('paid', 'orders');
INSERT INTO orders VALUES (5, 'new', 1, 'everything');
SELECT event_bridge.wait_for_capture();
SELECT * FROM show('paid') WHERE seq > 5;
SELECT count(*) AS filters FROM event_bridge.capture_filters;

-- Without REPLICA IDENTITY FULL a row filter may use key columns only.
CREATE TABLE plain (id int PRIMARY KEY, v text);
SELECT event_bridge.create_stream('plain', ARRAY['plain']::regclass[], before_images => false);
SELECT event_bridge.set_table_filter('plain', 'plain', 'id % 2 = 0');
INSERT INTO plain SELECT g, 'v' || g FROM generate_series(1, 6) g;
UPDATE plain SET v = 'w' WHERE id <= 2;
DELETE FROM plain WHERE id <= 4;
SELECT event_bridge.wait_for_capture();
SELECT * FROM show('plain');

-- A column the row filter uses is dropped: the filter no longer fits, and
-- every row is kept (a WARNING in the server log says so).
SELECT event_bridge.set_table_filter('all_orders', 'orders', 'amount > 100');
INSERT INTO orders VALUES (6, 'new', 1, 'left out'), (7, 'new', 500, 'kept');
ALTER TABLE orders DROP COLUMN amount;
INSERT INTO orders VALUES (8, 'new', 'kept, the filter no longer fits');
SELECT event_bridge.wait_for_capture();
SELECT columns FROM show('all_orders') WHERE seq >= 11;

-- Bad filters are refused and change nothing.
-- a volatile function
SELECT event_bridge.set_table_filter('paid', 'orders', 'random() > 0.5');
-- a user-defined function
CREATE FUNCTION is_big(int) RETURNS boolean LANGUAGE sql IMMUTABLE AS 'SELECT $1 > 10';
SELECT event_bridge.set_table_filter('paid', 'orders', 'public.is_big(id)');
-- a subquery
SELECT event_bridge.set_table_filter('paid', 'orders', 'id IN (SELECT 1)');
-- not boolean
SELECT event_bridge.set_table_filter('paid', 'orders', 'id + 1');
-- a column outside the replica identity of a table without FULL
SELECT event_bridge.set_table_filter('plain', 'plain', 'v = ''x''');
-- a column list without the key
SELECT event_bridge.set_table_filter('paid', 'orders', columns => '{status}');
-- a column that does not exist
SELECT event_bridge.set_table_filter('paid', 'orders', columns => '{id,nope}');
-- a column listed twice
SELECT event_bridge.set_table_filter('paid', 'orders', columns => '{id,id}');
-- an empty column list
SELECT event_bridge.set_table_filter('paid', 'orders', columns => '{}');
-- a table the stream does not capture
SELECT event_bridge.set_table_filter('paid', 'other', 'id > 1');
-- a stream that does not exist
SELECT event_bridge.set_table_filter('nope', 'orders', 'id > 1');
SELECT stream_name, table_name, row_filter, columns FROM event_bridge.capture_filters ORDER BY 1;

-- Dropping a table drops its filters.
DROP TABLE plain;
SELECT count(*) AS filters_of_plain FROM event_bridge.table_filter_rules f
  JOIN event_bridge.streams s USING (stream_id) WHERE s.stream_name = 'plain';

DROP EXTENSION event_bridge;
DROP FUNCTION show(text);
DROP FUNCTION is_big(int);
DROP TABLE orders, other;
