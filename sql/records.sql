-- Records: the exact TUPLE layout of DESIGN section 4, value by value.
CREATE EXTENSION event_bridge;
\set SHOW_CONTEXT never
SET timezone = 'UTC';

CREATE TABLE typed (
    id        int PRIMARY KEY,
    t         text,
    n         numeric,
    f         float8,
    b         boolean,
    ts        timestamptz,
    d         date,
    j         jsonb,
    arr       int[],
    by        bytea,
    dropped   int,
    u         uuid
);
ALTER TABLE typed DROP COLUMN dropped;
ALTER TABLE typed REPLICA IDENTITY FULL;

CREATE TABLE keyless (a int, b text);
ALTER TABLE keyless REPLICA IDENTITY FULL;

CREATE TABLE multi_key (region text, id int, v text, PRIMARY KEY (region, id));
ALTER TABLE multi_key REPLICA IDENTITY FULL;

CREATE TABLE big (id int PRIMARY KEY, small text, large text);
ALTER TABLE big REPLICA IDENTITY FULL;
ALTER TABLE big ALTER COLUMN large SET STORAGE EXTERNAL;

CREATE TABLE no_before (id int PRIMARY KEY, v text, large text);
ALTER TABLE no_before ALTER COLUMN large SET STORAGE EXTERNAL;

SELECT event_bridge.create_stream('full', ARRAY['typed', 'keyless', 'multi_key', 'big']::regclass[]);
SELECT event_bridge.create_stream('lean', ARRAY['no_before']::regclass[], before_images => false);

-- Shows records without the fields that differ per run (instance id, commit
-- time); strings longer than 100 characters are shown as their length.
CREATE FUNCTION show(stream text) RETURNS TABLE (event_id text, op char, tbl text, data jsonb)
LANGUAGE sql AS $$
    SELECT r.event_id, r.operation, r.table_name,
           (SELECT jsonb_agg(CASE WHEN jsonb_typeof(x) = 'string' AND length(x #>> '{}') > 100
                                  THEN to_jsonb(length(x #>> '{}') || ' chars') ELSE x END
                             ORDER BY i)
              FROM jsonb_array_elements(r.data) WITH ORDINALITY e(x, i) WHERE i NOT IN (3, 6))
      FROM event_bridge.streams s, generate_series(0, s.shard_count - 1) g,
           event_bridge.get_records(stream, g, 0, 1000) r
     WHERE s.stream_name = stream
     ORDER BY (r.data->>0)::bigint, r.shard_id, r.sequence
$$;

-- Values in their text output form, NULL as JSON null, special characters escaped.
INSERT INTO typed VALUES
  (1, 'plain', 1.50, 0.25, true, '2026-01-02 03:04:05.678+00', '2026-01-02',
   '{"k": [1, "two"]}', '{1,2,NULL}', '\x00ff', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'),
  (2, E'quote " backslash \\ newline \n tab \t unicode é 😀', NULL, 'NaN', false, NULL, NULL,
   'null', '{}', '', NULL),
  (3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL);
-- A table without a key sends every row to shard 0 (one shard here anyway).
INSERT INTO keyless VALUES (1, 'x'), (NULL, NULL);
UPDATE keyless SET b = 'y' WHERE a = 1;
INSERT INTO multi_key VALUES ('eu', 1, 'a');
UPDATE multi_key SET id = 2 WHERE region = 'eu';
-- An UPDATE that leaves a TOASTed value unchanged carries it from the old row.
INSERT INTO big VALUES (1, 's', repeat('L', 100000));
UPDATE big SET small = 't' WHERE id = 1;
-- Without before images, UPDATE is one record and values logical decoding
-- did not carry are the documented marker, never a silent NULL.
INSERT INTO no_before VALUES (1, 'v', repeat('M', 100000));
UPDATE no_before SET v = 'w' WHERE id = 1;
DELETE FROM no_before WHERE id = 1;
DELETE FROM typed WHERE id = 3;
SELECT event_bridge.wait_for_capture();

SELECT * FROM show('full');
SELECT * FROM show('lean');

-- Field 2 is the cluster's system identifier, field 5 the commit time in
-- epoch milliseconds, field 3 the database; system_time is epoch milliseconds.
SELECT bool_and(r.data->>2 = (SELECT system_identifier::text FROM pg_control_system())) AS instance_id,
       bool_and((r.data->>5)::bigint BETWEEN extract(epoch FROM now() - interval '5 minutes') * 1000
                                         AND extract(epoch FROM now() + interval '5 minutes') * 1000) AS commit_ms,
       bool_and(r.system_time >= (r.data->>5)::bigint) AS appended_after_commit,
       bool_and(r.data->>3 = current_database()) AS db_name
  FROM event_bridge.get_records('full', 0, 0, 1000) r;

-- ADD COLUMN mid-stream: later records carry the new column; DROP COLUMN
-- removes it from later records.
ALTER TABLE multi_key ADD COLUMN extra text DEFAULT 'dflt';
INSERT INTO multi_key VALUES ('us', 1, 'b', 'given');
INSERT INTO multi_key (region, id, v) VALUES ('us', 2, 'c');
ALTER TABLE multi_key DROP COLUMN v;
INSERT INTO multi_key VALUES ('us', 3, 'after drop');
SELECT event_bridge.wait_for_capture();
SELECT event_id, op, data FROM show('full') WHERE tbl = 'public.multi_key';

-- Clean up: DROP EXTENSION stops the workers and drops the slot.
DROP EXTENSION event_bridge;
DROP FUNCTION show(text);
DROP TABLE typed, keyless, multi_key, big, no_before;
