-- Bad input sweep: every public SQL function, each argument in turn set to
-- NULL, empty, huge, SQL-looking or naming nothing, and every function
-- called without privilege.  Each call must fail with a clear error (no
-- internal error, no crash) and leave the catalog as it was.
CREATE EXTENSION event_bridge;
\set SHOW_CONTEXT never
CREATE TABLE t (id int PRIMARY KEY, v text);
ALTER TABLE t REPLICA IDENTITY FULL;
SELECT event_bridge.create_stream('sweep', ARRAY['t']::regclass[]);
SELECT event_bridge.create_credential('sweep_tok', 'token', '{"header": "X-Auth-Token", "value": "hunter2"}');
SELECT event_bridge.create_credential('sweep_unused', 'webhook', '{"secret": "whsec_' || repeat('A', 32) || '"}');
SELECT event_bridge.create_connector('sweep_c', 'sweep', 'http://127.0.0.1:9/', credential => 'sweep_tok');
SELECT event_bridge.stop_connector('sweep_c');

CREATE TEMP TABLE fingerprint AS
SELECT (SELECT count(*) FROM event_bridge.streams) AS streams,
       (SELECT count(*) FROM event_bridge.shards) AS shards,
       (SELECT count(*) FROM event_bridge.connectors) AS connectors,
       (SELECT string_agg(connector_name || ':' || version || ':' || stopped, ',') FROM event_bridge.connectors) AS connector_versions,
       (SELECT count(*) FROM event_bridge.connector_shards) AS connector_shards,
       (SELECT string_agg(credential_name || ':' || secret || ':' || coalesce(rotated_at::text, ''), ',')
          FROM event_bridge.credential_secrets) AS credentials;

-- Valid arguments, by type, and the bad values to try in their place.
CREATE TEMP TABLE good (fn text, pos int, val text);
INSERT INTO good VALUES
  ('create_stream', 1, $$'sweep2'$$), ('create_stream', 2, $$ARRAY['t']::regclass[]$$),
  ('create_stream', 3, '2'), ('create_stream', 4, $$'1 day'::interval$$), ('create_stream', 5, 'true'),
  ('drop_stream', 1, $$'sweep'$$),
  ('get_records', 1, $$'sweep'$$), ('get_records', 2, '0'), ('get_records', 3, '0'), ('get_records', 4, '10'),
  ('wait_for_capture', 1, $$'1 second'::interval$$),
  ('create_connector', 1, $$'sweep_c2'$$), ('create_connector', 2, $$'sweep'$$),
  ('create_connector', 3, $$'http://127.0.0.1:9/'$$), ('create_connector', 4, 'now()'),
  ('create_connector', 5, $$'datahub'$$), ('create_connector', 6, '10'),
  ('create_connector', 7, $$'0'::interval$$), ('create_connector', 8, $$'1 second'::interval$$),
  ('create_connector', 9, '3'), ('create_connector', 10, $$'5 seconds'::interval$$),
  ('create_connector', 11, $$'{}'$$), ('create_connector', 12, '6291456'),
  ('create_connector', 13, $$'fixed'$$), ('create_connector', 14, $$'5 minutes'::interval$$),
  ('create_connector', 15, $$'dead_letter'$$), ('create_connector', 16, $$'1 hour'::interval$$),
  ('create_connector', 17, 'true'), ('create_connector', 18, $$'http'$$),
  ('create_connector', 19, $$'sweep_tok'$$), ('create_connector', 20, $$'sync'$$),
  ('create_connector', 21, $$'{"op": [{"op": "StringIn", "values": ["INSERT"]}]}'::jsonb$$),
  ('create_connector', 22, $$'{"type": "ORIGINAL"}'::jsonb$$),
  ('create_connector', 23, 'NULL::jsonb'),
  ('alter_connector', 1, $$'sweep_c'$$), ('alter_connector', 2, $$'http://127.0.0.1:9/'$$),
  ('alter_connector', 3, $$'datahub'$$), ('alter_connector', 4, '10'),
  ('alter_connector', 5, $$'0'::interval$$), ('alter_connector', 6, $$'1 second'::interval$$),
  ('alter_connector', 7, '3'), ('alter_connector', 8, $$'5 seconds'::interval$$),
  ('alter_connector', 9, $$'{}'$$), ('alter_connector', 10, '6291456'),
  ('alter_connector', 11, $$'fixed'$$), ('alter_connector', 12, $$'5 minutes'::interval$$),
  ('alter_connector', 13, $$'dead_letter'$$), ('alter_connector', 14, $$'1 hour'::interval$$),
  ('alter_connector', 15, 'true'), ('alter_connector', 16, $$'http'$$),
  ('alter_connector', 17, $$'sweep_tok'$$), ('alter_connector', 18, $$'sync'$$),
  ('alter_connector', 19, $$'{"op": [{"op": "StringIn", "values": ["INSERT"]}]}'::jsonb$$),
  ('alter_connector', 20, $$'{"type": "ORIGINAL"}'::jsonb$$),
  ('alter_connector', 21, 'NULL::jsonb'),
  ('set_table_filter', 1, $$'sweep'$$), ('set_table_filter', 2, $$'t'::regclass$$),
  ('set_table_filter', 3, $$'id > 0'$$), ('set_table_filter', 4, $$ARRAY['id']::name[]$$),
  ('create_credential', 1, $$'sweep_tok2'$$), ('create_credential', 2, $$'token'$$),
  ('create_credential', 3, $$'{"header": "X-Auth-Token", "value": "hunter2"}'$$),
  ('alter_credential', 1, $$'sweep_tok'$$),
  ('alter_credential', 2, $$'{"header": "X-Auth-Token", "value": "hunter3"}'$$),
  ('drop_credential', 1, $$'sweep_unused'$$),
  ('skip_batch', 1, $$'sweep_c'$$), ('skip_batch', 2, '0'),
  ('redeliver_dead_letters', 1, $$'sweep_c'$$), ('redeliver_dead_letters', 2, $$ARRAY['0:1']$$),
  ('purge_dead_letters', 1, $$'sweep_c'$$), ('purge_dead_letters', 2, $$'1 day'::interval$$),
  ('stop_connector', 1, $$'sweep_c'$$), ('start_connector', 1, $$'sweep_c'$$),
  ('resume_connector', 1, $$'sweep_c'$$), ('drop_connector', 1, $$'sweep_c'$$),
  ('reset_connector', 1, $$'sweep_c'$$), ('reset_connector', 2, 'now()');

CREATE TEMP TABLE bad (kind text, typ text, val text);
INSERT INTO bad VALUES
  ('null', 'any', 'NULL'),
  ('empty', 'text', $$''$$),
  ('huge', 'text', $$repeat('x', 100000)$$),
  ('sql-looking', 'text', $$'x''; DROP TABLE t; --'$$),
  ('unknown', 'text', $$'no_such_object'$$),
  ('negative', 'int', '-1'),
  ('huge', 'int', '2147483647'),
  ('negative', 'bigint', '-1'),
  ('negative', 'interval', $$'-1 second'::interval$$),
  ('huge', 'interval', $$'1000 years'::interval$$),
  ('empty', 'regclass[]', $$ARRAY[]::regclass[]$$),
  ('empty', 'text[]', $$ARRAY['']$$),
  ('malformed', 'text[]', $$ARRAY['0:1', 'x:y']$$),
  ('null element', 'text[]', $$ARRAY[NULL]::text[]$$),
  ('not an object', 'headers', $$'[1]'$$),
  ('not strings', 'headers', $$'{"a": 1}'$$),
  ('malformed', 'headers', $$'{"X-Token": "hunter2'$$),
  ('infinite', 'timestamptz', $$'infinity'::timestamptz$$),
  ('not an object', 'jsonb', $$'[1]'::jsonb$$),
  ('unknown', 'jsonb', $$'{"op": [{"op": "NoSuchOperator"}]}'::jsonb$$),
  ('empty', 'name[]', $$ARRAY[]::name[]$$),
  ('unknown', 'name[]', $$ARRAY['no_such_column']::name[]$$);

-- Arguments where the value tried is allowed by the API itself.
CREATE TEMP TABLE allowed (fn text, pos int, kind text);
INSERT INTO allowed VALUES
  ('create_connector', 4, 'null'),        -- start_time NULL: earliest retained
  ('reset_connector', 2, 'null'),         -- NULL: from the earliest retained
  ('create_stream', 1, 'unknown'),        -- a new name is fine to create
  ('create_connector', 1, 'unknown'),
  ('wait_for_capture', 1, 'huge'),        -- a long timeout, returns at once
  ('create_stream', 4, 'huge'),           -- a long retention
  ('create_connector', 9, 'huge'),        -- many retries
  ('alter_connector', 7, 'huge'),
  ('create_connector', 16, 'null'),       -- max_record_age NULL: no limit
  ('create_connector', 19, 'null'),       -- credential NULL: none
  ('alter_connector', 17, 'empty'),       -- credential '': none
  ('create_credential', 1, 'unknown'),
  ('create_connector', 16, 'huge'),       -- a long max_record_age
  ('alter_connector', 14, 'huge'),
  ('redeliver_dead_letters', 2, 'null'),  -- NULL: all of them
  ('purge_dead_letters', 2, 'huge'),      -- only the older ones
  ('create_connector', 21, 'null'),       -- filter NULL: every event
  ('create_connector', 22, 'null'),       -- transform NULL: ORIGINAL
  ('create_connector', 23, 'null'),       -- key_transform NULL: the row's key
  ('set_table_filter', 3, 'null'),        -- row_filter NULL: every row
  ('set_table_filter', 4, 'null');        -- columns NULL: every column
-- alter_connector: NULL leaves a setting as it is.
INSERT INTO allowed SELECT 'alter_connector', g, 'null' FROM generate_series(2, 21) g;

CREATE TEMP TABLE outcome (fn text, pos int, kind text, sqlstate text, message text);

DO $$
DECLARE
    f record;
    b record;
    args text[];
    sql text;
    state text;
    msg text;
BEGIN
    FOR f IN SELECT DISTINCT g.fn, p.oid, p.pronargs,
                    (SELECT array_agg(format_type(t, NULL) ORDER BY o)
                       FROM unnest(p.proargtypes) WITH ORDINALITY u(t, o)) AS types
               FROM good g JOIN pg_proc p ON p.proname = g.fn
               JOIN pg_namespace n ON n.oid = p.pronamespace AND n.nspname = 'event_bridge'
              ORDER BY 1 LOOP
        FOR i IN 1 .. f.pronargs LOOP
            FOR b IN SELECT * FROM bad
                      WHERE typ = 'any'
                         OR (typ = 'text' AND f.types[i] = 'text')
                         OR typ = f.types[i]
                         OR (typ = 'headers' AND f.fn = 'create_connector' AND i = 11)
                         OR (typ = 'headers' AND f.fn = 'alter_connector' AND i = 9)
                         OR (typ = 'int' AND f.types[i] = 'integer')
                         OR (typ = 'text[]' AND f.types[i] = 'text[]')
                         OR (typ = 'timestamptz' AND f.types[i] = 'timestamp with time zone')
                      ORDER BY kind LOOP
                SELECT array_agg(CASE WHEN g.pos = i THEN b.val ELSE g.val END ORDER BY g.pos)
                  INTO args FROM good g WHERE g.fn = f.fn;
                sql := format('SELECT * FROM event_bridge.%I(%s)', f.fn, array_to_string(args, ', '));
                BEGIN
                    EXECUTE sql;
                    state := 'OK';
                    msg := NULL;
                    RAISE EXCEPTION USING ERRCODE = 'EB000';   -- roll the call back
                EXCEPTION
                    WHEN SQLSTATE 'EB000' THEN NULL;
                    WHEN OTHERS THEN
                        state := SQLSTATE;
                        msg := SQLERRM;
                END;
                INSERT INTO outcome VALUES (f.fn, i, b.kind, state, msg);
            END LOOP;
        END LOOP;
    END LOOP;
END
$$;

-- Every refused call failed with a user-facing errcode; nothing internal.
SELECT fn, pos, kind, sqlstate, left(message, 90) AS message
  FROM outcome o
 WHERE NOT EXISTS (SELECT FROM allowed a WHERE (a.fn, a.pos, a.kind) = (o.fn, o.pos, o.kind))
 ORDER BY fn, pos, kind;
SELECT count(*) AS internal_errors FROM outcome WHERE sqlstate LIKE 'XX%';
-- No refusal quotes a secret.
SELECT count(*) AS errors_with_secret FROM outcome WHERE message LIKE '%hunter%';
SELECT fn, pos, kind, sqlstate, message FROM outcome o
 WHERE EXISTS (SELECT FROM allowed a WHERE (a.fn, a.pos, a.kind) = (o.fn, o.pos, o.kind))
 ORDER BY fn, pos, kind;

-- No error message echoes the connector's secret header value.
SELECT event_bridge.create_connector('secret_c', 'sweep', 'http://user:hunter2@127.0.0.1:9/',
                                     headers => '{"X-Token": "hunter2"}');
SELECT event_bridge.create_connector('secret_c', 'sweep', 'http://user:hunter2@127.0.0.1:9/',
                                     headers => '{"X-Token": "hunter2"}');
SELECT event_bridge.create_connector('x', 'sweep', 'ftp://user:hunter2@127.0.0.1:9/');
SELECT count(*) AS views_with_secret
  FROM (SELECT row_to_json(c)::text AS j FROM event_bridge.connector_status c
        UNION ALL SELECT row_to_json(s)::text FROM event_bridge.shard_status s
        UNION ALL SELECT row_to_json(cr)::text FROM event_bridge.credentials cr) v
 WHERE j LIKE '%hunter2%';
SELECT event_bridge.drop_connector('secret_c');

-- Nothing changed.
SELECT f = (SELECT row(streams, shards, connectors, connector_versions, connector_shards, credentials)::text
              FROM (SELECT (SELECT count(*) FROM event_bridge.streams) AS streams,
                           (SELECT count(*) FROM event_bridge.shards) AS shards,
                           (SELECT count(*) FROM event_bridge.connectors) AS connectors,
                           (SELECT string_agg(connector_name || ':' || version || ':' || stopped, ',')
                              FROM event_bridge.connectors) AS connector_versions,
                           (SELECT count(*) FROM event_bridge.connector_shards) AS connector_shards,
                           (SELECT string_agg(credential_name || ':' || secret || ':' || coalesce(rotated_at::text, ''), ',')
                              FROM event_bridge.credential_secrets) AS credentials) now)
       AS catalog_unchanged
  FROM (SELECT row(streams, shards, connectors, connector_versions, connector_shards, credentials)::text AS f FROM fingerprint) x;

-- Without privilege, every function is refused.
CREATE ROLE eb_sweep_nobody;
GRANT SELECT ON good TO eb_sweep_nobody;
SET ROLE eb_sweep_nobody;
DO $$
DECLARE
    f record;
    args text;
    n int := 0;
BEGIN
    FOR f IN SELECT DISTINCT fn FROM good ORDER BY 1 LOOP
        SELECT string_agg(val, ', ' ORDER BY pos) INTO args FROM good WHERE good.fn = f.fn;
        BEGIN
            EXECUTE format('SELECT * FROM event_bridge.%I(%s)', f.fn, args);
            RAISE NOTICE '% succeeded without privilege', f.fn;
        EXCEPTION WHEN insufficient_privilege THEN
            n := n + 1;
        END;
    END LOOP;
    RAISE NOTICE '% of % functions refused with insufficient_privilege', n, (SELECT count(DISTINCT fn) FROM good);
END
$$;
RESET ROLE;
REVOKE SELECT ON good FROM eb_sweep_nobody;

DROP EXTENSION event_bridge;
DROP TABLE t;
DROP ROLE eb_sweep_nobody;
