-- DDL on captured tables while a stream runs: what later records look like.
CREATE EXTENSION event_bridge;
\set SHOW_CONTEXT never

CREATE TABLE items (id int PRIMARY KEY, name text, price int);
ALTER TABLE items REPLICA IDENTITY FULL;
CREATE TABLE other (id int PRIMARY KEY);
ALTER TABLE other REPLICA IDENTITY FULL;
CREATE SCHEMA shop;
CREATE TABLE shop.stock (id int PRIMARY KEY);
ALTER TABLE shop.stock REPLICA IDENTITY FULL;
SELECT event_bridge.create_stream('ddl', ARRAY['items', 'other', 'shop.stock']::regclass[]);

CREATE FUNCTION show() RETURNS TABLE (event_id text, op char, tbl text, columns jsonb)
LANGUAGE sql AS $$
    SELECT r.event_id, r.operation, r.table_name,
           (SELECT jsonb_agg(x ORDER BY i) FROM jsonb_array_elements(r.data) WITH ORDINALITY e(x, i) WHERE i > 8)
      FROM event_bridge.get_records('ddl', 0, 0, 1000) r ORDER BY r.sequence
$$;

INSERT INTO items VALUES (1, 'pen', 10);
-- RENAME: later records carry the new table name.
ALTER TABLE items RENAME TO products;
INSERT INTO products VALUES (2, 'ink', 20);
-- RENAME COLUMN changes nothing in the record, which is positional.
ALTER TABLE products RENAME COLUMN name TO title;
-- ALTER COLUMN TYPE: later values in the new type's text form.
ALTER TABLE products ALTER COLUMN price TYPE numeric(10,2);
UPDATE products SET price = 21 WHERE id = 2;
-- ALTER SCHEMA RENAME: later records carry the new schema name.
INSERT INTO shop.stock VALUES (1);
ALTER SCHEMA shop RENAME TO store;
INSERT INTO store.stock VALUES (2);
-- ADD COLUMN: later records carry it; DROP COLUMN: later records lack it.
ALTER TABLE store.stock ADD COLUMN qty int;
INSERT INTO store.stock VALUES (3, 30);
ALTER TABLE store.stock DROP COLUMN qty;
INSERT INTO store.stock VALUES (4);
-- SET UNLOGGED of a captured table is refused: its changes would go unseen.
ALTER TABLE other SET UNLOGGED;
SELECT relpersistence FROM pg_class WHERE oid = 'other'::regclass;
-- TRUNCATE is not captured.
TRUNCATE other;
INSERT INTO other VALUES (1);
TRUNCATE products;
-- DROP TABLE: the table leaves the stream, which goes on with its other
-- tables; a new table of the same name is not captured.
DROP TABLE products;
CREATE TABLE products (id int PRIMARY KEY);
INSERT INTO products VALUES (3);
INSERT INTO other VALUES (2);
SELECT event_bridge.wait_for_capture();
SELECT * FROM show();
SELECT stream_name, tables, records, capture_state FROM event_bridge.stream_status;
SELECT tables FROM event_bridge.streams;
-- Each record names its table's version: the columns the record carries
-- (names and types, in data order) and the key.  DDL makes a new version;
-- a shape seen before (stock without qty again) keeps its version.
SELECT r.sequence, r.table_name, r.table_version, v.columns, v.key_columns
  FROM event_bridge.records r JOIN event_bridge.table_versions v USING (table_version)
 ORDER BY r.sequence;

DROP EXTENSION event_bridge;
DROP FUNCTION show();
DROP TABLE products, other, store.stock;
DROP SCHEMA store;
