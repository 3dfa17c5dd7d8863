-- Named events (DESIGN 9.5): the json and cloudevents formats, connector
-- filters and transforms, byte for byte as the delivery worker makes them
-- (_event_body runs the worker's code on a range of a shard's records).
CREATE EXTENSION event_bridge;
\set SHOW_CONTEXT never

CREATE TABLE orders (id bigint PRIMARY KEY, status text, amount numeric(10,2), paid boolean,
                     meta jsonb, score double precision, note text);
ALTER TABLE orders REPLICA IDENTITY FULL;
CREATE TABLE tags (id int PRIMARY KEY, label text, big text);
ALTER TABLE tags REPLICA IDENTITY FULL;
SELECT event_bridge.create_stream('ev', ARRAY['orders', 'tags']::regclass[], 1);
-- Without before images, on a table with the default replica identity.
CREATE TABLE plain (id int PRIMARY KEY, label text, big text);
ALTER TABLE plain ALTER COLUMN big SET STORAGE EXTERNAL;
SELECT event_bridge.create_stream('nb', ARRAY['plain']::regclass[], 1, before_images => false);

INSERT INTO orders VALUES (1, 'new', 12.50, false, '{"b": [1, "x"], "a": null}', 'NaN',
                           E'quote " backslash \\ tab \t end');
UPDATE orders SET status = 'paid', paid = true, score = 1.5e30 WHERE id = 1;
DELETE FROM orders WHERE id = 1;
-- DDL mid-stream: later events show the new columns, by name.
ALTER TABLE orders ADD COLUMN region text;
INSERT INTO orders VALUES (2, 'paid', 99, true, NULL, -0.25, NULL, 'eu');
ALTER TABLE orders DROP COLUMN note;
UPDATE orders SET region = 'us' WHERE id = 2;
INSERT INTO tags VALUES (7, 'red');
DELETE FROM tags WHERE id = 7;
INSERT INTO plain VALUES (1, 'a', repeat('x', 10000));
-- An UPDATE is one event without before; an unchanged TOASTed value is the marker.
UPDATE plain SET label = 'b' WHERE id = 1;
-- A DELETE carries the key only: the other columns are the marker.
DELETE FROM plain WHERE id = 1;
SELECT event_bridge.wait_for_capture();

-- The times differ per run: they are masked, the rest is exact.
CREATE FUNCTION masked(body text) RETURNS text LANGUAGE sql AS $$
    SELECT regexp_replace(regexp_replace(regexp_replace(body,
        '"systemTime":[0-9]+', '"systemTime":T', 'g'),
        '"commitTime":[0-9]+', '"commitTime":C', 'g'),
        '"time":"[0-9T:.-]+Z"', '"time":"RFC3339"', 'g')
$$;
CREATE FUNCTION pretty(body text) RETURNS SETOF text LANGUAGE sql AS $$
    SELECT masked(e::text) FROM json_array_elements(
        CASE WHEN left(body, 1) = '[' THEN body::json ELSE body::json -> 'events' END) e
$$;

-- json: an UPDATE is one event with both images; typed values; the key by name.
SELECT records, events, filtered, masked(left(body, 40)) AS envelope
  FROM event_bridge._event_body('ev', 0, 0, 100, 'json');
SELECT pretty(body) FROM event_bridge._event_body('ev', 0, 0, 100, 'json');
-- The time is the commit time, in RFC 3339.
SELECT bool_and((e ->> 'time')::timestamptz =
                to_timestamp((SELECT (r.data ->> 5)::bigint / 1000.0
                                FROM event_bridge.get_records('ev', 0, 0, 100) r
                               WHERE r.event_id = e ->> 'id'))) AS time_is_commit_time
  FROM event_bridge._event_body('ev', 0, 0, 100, 'cloudevents') b, json_array_elements(b.body::json) e;
-- cloudevents: structured batch mode, CloudEvents 1.0.
SELECT pretty(body) FROM event_bridge._event_body('ev', 0, 0, 100, 'cloudevents');

-- A filter: the events it leaves out are counted, and use no place in the body.
SELECT records, events, filtered, pretty(body)
  FROM event_bridge._event_body('ev', 0, 0, 100, 'json',
       filter => '{"after": {"status": [{"op": "StringIn", "values": ["paid"]}]}}');
SELECT records, events, filtered
  FROM event_bridge._event_body('ev', 0, 0, 100, 'json',
       filter => '{"op": [{"op": "StringIn", "values": ["DELETE"]}], "table": [{"op": "StringEndsWith", "values": [".tags"]}]}');
-- Every event left out: no body, and every record done with.
SELECT records, events, filtered, body IS NULL AS no_body
  FROM event_bridge._event_body('ev', 0, 0, 100, 'json',
       filter => '{"op": [{"op": "StringIn", "values": ["TRUNCATE"]}]}');
-- A filter on a datahub connector keeps both records of a kept UPDATE.
SELECT records, events, filtered,
       ARRAY(SELECT r ->> 'eventId' FROM json_array_elements(body::json -> 'records') r) AS event_ids
  FROM event_bridge._event_body('ev', 0, 0, 100, 'datahub',
       filter => '{"op": [{"op": "StringIn", "values": ["UPDATE"]}]}');

-- Transforms: VARIABLE renders the template per event; CONSTANT replaces it.
SELECT records, events, body
  FROM event_bridge._event_body('ev', 0, 0, 100, 'json',
       transform => '{"type": "VARIABLE", "value": "{\"id\": \"$.key.id\", \"op\": \"$.op\", \"was\": \"$.before.status\"}", "template": "{\"order\": ${id}, \"what\": \"${op} (was ${was})\"}"}');
SELECT body FROM event_bridge._event_body('ev', 0, 0, 3, 'json',
       transform => '{"type": "CONSTANT", "value": "{\"ping\": true}"}');

-- max_bytes: the body stops before the first event that does not fit,
-- and an UPDATE's two records are never cut apart.
SELECT m, records, events, octet_length(body) <= m AS fits
  FROM generate_series(300, 1500, 300) m,
       LATERAL event_bridge._event_body('ev', 0, 0, 100, 'json', max_bytes => m);

SELECT replace(pretty(body), repeat('x', 10000), 'x...')
  FROM event_bridge._event_body('nb', 0, 0, 100, 'json');

-- A record captured by 0.1 has no table version: columns by position, values as text.
UPDATE event_bridge.records SET table_version = NULL WHERE sequence = 0;
SELECT pretty(body) FROM event_bridge._event_body('ev', 0, 0, 0, 'json');

-- Connectors take a format, a filter and a transform; status shows them.
SELECT event_bridge.create_connector('c_json', 'ev', 'http://127.0.0.1:9/', format => 'json',
       filter => '{"after": {"paid": [{"op": "IsTrue"}]}}');
SELECT event_bridge.create_connector('c_ce', 'ev', 'http://127.0.0.1:9/', format => 'cloudevents',
       transform => '{"type": "ORIGINAL"}');
SELECT connector_name, format, filter, transform, filtered FROM event_bridge.connector_status
 ORDER BY 1;
-- alter_connector: '{}' removes the filter; a transform needs format json.
SELECT event_bridge.alter_connector('c_json', filter => '{}',
       transform => '{"type": "CONSTANT", "value": "x"}');
SELECT connector_name, filter, transform FROM event_bridge.connector_status WHERE connector_name = 'c_json';

-- Bad rules are refused at creation, pointing at the bad part.
-- an operator that does not exist
SELECT event_bridge.create_connector('bad', 'ev', 'http://127.0.0.1:9/',
       filter => '{"after": {"id": [{"op": "NumberEquals", "value": 1}]}}');
-- a JSONPath that does not parse
SELECT event_bridge.create_connector('bad', 'ev', 'http://127.0.0.1:9/', format => 'json',
       transform => '{"type": "VARIABLE", "value": "{\"x\": \"$.after[\"}", "template": "${x}"}');
-- a template naming an undefined variable
SELECT event_bridge.create_connector('bad', 'ev', 'http://127.0.0.1:9/', format => 'json',
       transform => '{"type": "VARIABLE", "value": "{\"x\": \"$.op\"}", "template": "{\"y\": \"${y}\"}"}');
-- a transform with the datahub format, whose body it would replace
SELECT event_bridge.create_connector('bad', 'ev', 'http://127.0.0.1:9/',
       transform => '{"type": "CONSTANT", "value": "x"}');
-- an unknown format
SELECT event_bridge.create_connector('bad', 'ev', 'http://127.0.0.1:9/', format => 'avro');
SELECT count(*) AS connectors FROM event_bridge.connectors;

-- Called many times in one statement on a big range, _event_body makes the
-- same body each time (its result once lived in memory SPI had freed: a
-- crash, or garbage).
CREATE TABLE many (id int PRIMARY KEY, label text);
SELECT event_bridge.create_stream('many', ARRAY['many']::regclass[], 1, before_images => false);
INSERT INTO many SELECT g, md5(g::text) FROM generate_series(1, 1500) g;
SELECT event_bridge.wait_for_capture();
SELECT count(*) AS calls, count(DISTINCT md5(b.body)) AS distinct_bodies, min(b.events) AS events
  FROM generate_series(1, 20) g,
       LATERAL event_bridge._event_body('many', 0, 0 * g, 1499, 'json') b;

-- A json value jsonb cannot hold (\u0000, a lone surrogate) does not stop
-- a connector with a filter: it is sent as its text; other values stay JSON.
CREATE TABLE docs (id int PRIMARY KEY, doc json);
SELECT event_bridge.create_stream('docs', ARRAY['docs']::regclass[], 1, before_images => false);
INSERT INTO docs VALUES (1, '{"a": "\u0000"}'), (2, '{"b": "\ud800x"}'), (3, '{"c": "\udc00"}'),
                        (4, '{"d": "\ud83d\ude00"}'), (5, '{"e": "\\u0000"}'), (6, '{"f": [1, "\u00e9"]}');
SELECT event_bridge.wait_for_capture();
SELECT records, events, filtered FROM event_bridge._event_body('docs', 0, 0, 10, 'json',
       '{"op": [{"op": "StringIn", "values": ["INSERT"]}]}');
SELECT e -> 'after' ->> 'id' AS id, e -> 'after' -> 'doc' AS doc, json_typeof(e -> 'after' -> 'doc') AS type
  FROM event_bridge._event_body('docs', 0, 0, 10, 'json',
       '{"op": [{"op": "StringIn", "values": ["INSERT"]}]}') b,
       json_array_elements(b.body::json -> 'events') e;

DROP EXTENSION event_bridge;
DROP FUNCTION masked(text);
DROP FUNCTION pretty(text);
DROP TABLE orders, tags, plain, many, docs;
