/* event_bridge--0.1.sql: catalog, SQL API and views of event_bridge 0.1 */

\echo Use "CREATE EXTENSION event_bridge" to load this file. \quit

/*
 * Role that may create, change and drop streams and connectors.  Created
 * once per cluster; a later CREATE EXTENSION in another database reuses it.
 */
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'event_bridge_admin') THEN
        CREATE ROLE event_bridge_admin NOLOGIN;
    END IF;
END
$$;

/* ---------------------------------------------------------------------
 * Catalog
 * ------------------------------------------------------------------- */

/*
 * One row per stream.  The capture worker decodes changes of this table
 * (REPLICA IDENTITY FULL) in commit order, so a stream captures exactly the
 * transactions that commit after the one that created it.  capture_lsn is
 * set by the capture worker once it has decoded that creation.
 */
CREATE TABLE event_bridge.streams (
    stream_id     int PRIMARY KEY,
    stream_name   text NOT NULL UNIQUE,
    tables        oid[] NOT NULL,
    shard_count   int NOT NULL CHECK (shard_count BETWEEN 1 AND 256),
    retention     interval NOT NULL,
    before_images boolean NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    capture_lsn   pg_lsn
);
ALTER TABLE event_bridge.streams REPLICA IDENTITY FULL;
CREATE SEQUENCE event_bridge.stream_id_seq AS int OWNED BY event_bridge.streams.stream_id;
COMMENT ON TABLE event_bridge.streams IS
    'Streams (DataHub topics): which tables each captures, into how many shards';

/* The next sequence number of every shard; written by the capture worker. */
CREATE TABLE event_bridge.shards (
    stream_id     int NOT NULL REFERENCES event_bridge.streams ON DELETE CASCADE,
    shard_id      int NOT NULL,
    next_sequence bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (stream_id, shard_id)
);
COMMENT ON TABLE event_bridge.shards IS
    'Per-shard sequence counters; sequences keep counting after retention cleanup';

/*
 * The records of all streams.  Only the capture worker inserts here, under
 * its replication origin, so its own writes are never decoded again.  data
 * is the TUPLE record's JSON array, kept as text exactly as it is delivered.
 */
CREATE TABLE event_bridge.records (
    stream_id     int NOT NULL,
    shard_id      int NOT NULL,
    sequence      bigint NOT NULL,
    system_time   bigint NOT NULL,
    record_id     bigint NOT NULL,
    operation     "char" NOT NULL,
    table_name    text NOT NULL,
    partition_key text,
    data          text NOT NULL,
    PRIMARY KEY (stream_id, shard_id, sequence)
);
COMMENT ON TABLE event_bridge.records IS
    'TUPLE records of every stream, per shard in gapless sequence order';

/*
 * Capture progress of this database: the next record id (field 0 of every
 * record).  Written by the capture worker in the transaction that appends.
 */
CREATE TABLE event_bridge.capture_state (
    singleton      boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    next_record_id bigint NOT NULL DEFAULT 1
);
INSERT INTO event_bridge.capture_state DEFAULT VALUES;

SELECT pg_catalog.pg_extension_config_dump('event_bridge.streams', '');
SELECT pg_catalog.pg_extension_config_dump('event_bridge.stream_id_seq', '');

REVOKE ALL ON ALL TABLES IN SCHEMA event_bridge FROM PUBLIC;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA event_bridge FROM PUBLIC;
GRANT USAGE ON SCHEMA event_bridge TO PUBLIC;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA event_bridge TO event_bridge_admin;
GRANT USAGE ON ALL SEQUENCES IN SCHEMA event_bridge TO event_bridge_admin;

/* ---------------------------------------------------------------------
 * Internal C helpers
 * ------------------------------------------------------------------- */

CREATE FUNCTION event_bridge._prepare_capture()
RETURNS void
LANGUAGE C VOLATILE STRICT
AS 'MODULE_PATHNAME', 'event_bridge_prepare_capture';
COMMENT ON FUNCTION event_bridge._prepare_capture() IS
    'Internal: checks the server settings capture needs, starts this database''s capture worker and waits until its slot exists';
REVOKE ALL ON FUNCTION event_bridge._prepare_capture() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION event_bridge._prepare_capture() TO event_bridge_admin;

CREATE FUNCTION event_bridge._check_admin()
RETURNS void
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog
AS $$
BEGIN
    IF NOT (pg_has_role(current_user, 'event_bridge_admin', 'MEMBER')
            OR (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)) THEN
        RAISE EXCEPTION 'permission denied to manage event_bridge streams and connectors'
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'Only superusers and members of role "event_bridge_admin" may do this.';
    END IF;
END
$$;

/* ---------------------------------------------------------------------
 * Streams
 * ------------------------------------------------------------------- */

CREATE FUNCTION event_bridge.create_stream(
    stream_name   text,
    tables        regclass[],
    shard_count   int      DEFAULT 1,
    retention     interval DEFAULT '3 days',
    before_images boolean  DEFAULT true)
RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog
AS $$
DECLARE
    t        regclass;
    rel      record;
    sid      int;
BEGIN
    PERFORM event_bridge._check_admin();

    IF stream_name IS NULL OR tables IS NULL OR shard_count IS NULL
       OR retention IS NULL OR before_images IS NULL THEN
        RAISE EXCEPTION 'arguments of create_stream must not be null'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF stream_name !~ '^[A-Za-z_][A-Za-z0-9_.-]{0,127}$' THEN
        RAISE EXCEPTION 'invalid stream name "%"', stream_name
            USING ERRCODE = 'invalid_name',
                  DETAIL = 'A stream name starts with a letter or underscore and holds at most 128 letters, digits, "_", "." or "-".';
    END IF;
    IF cardinality(tables) = 0 THEN
        RAISE EXCEPTION 'stream "%" must capture at least one table', stream_name
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF shard_count < 1 OR shard_count > 256 THEN
        RAISE EXCEPTION 'shard_count % is out of range', shard_count
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'shard_count must be between 1 and 256.';
    END IF;
    IF retention <= interval '0' THEN
        RAISE EXCEPTION 'retention "%" must be positive', retention
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF array_position(tables, NULL) IS NOT NULL THEN
        RAISE EXCEPTION 'tables of stream "%" must not contain null', stream_name
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF (SELECT count(DISTINCT x) FROM unnest(tables) x) <> cardinality(tables) THEN
        RAISE EXCEPTION 'a table is listed twice in stream "%"', stream_name
            USING ERRCODE = 'duplicate_object';
    END IF;

    FOREACH t IN ARRAY tables LOOP
        SELECT c.relkind, c.relreplident, c.relpersistence, n.nspname
          INTO rel
          FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE c.oid = t;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'relation with OID % does not exist', t::oid
                USING ERRCODE = 'undefined_table';
        END IF;
        IF rel.relkind <> 'r' THEN
            RAISE EXCEPTION '"%" is not a table', t
                USING ERRCODE = 'wrong_object_type',
                      DETAIL = 'Streams capture ordinary tables only.';
        END IF;
        IF rel.relpersistence <> 'p' OR rel.nspname IN ('event_bridge', 'pg_catalog', 'information_schema') THEN
            RAISE EXCEPTION 'table "%" cannot be captured', t
                USING ERRCODE = 'wrong_object_type',
                      DETAIL = 'Temporary, unlogged and system tables are not written to the logical WAL.';
        END IF;
        IF NOT has_table_privilege(t, 'SELECT') THEN
            RAISE EXCEPTION 'permission denied for table %', t
                USING ERRCODE = 'insufficient_privilege',
                      DETAIL = 'Capturing a table needs the SELECT privilege on it.';
        END IF;
        IF before_images AND rel.relreplident <> 'f' THEN
            RAISE EXCEPTION 'table "%" needs REPLICA IDENTITY FULL for before images', t
                USING ERRCODE = 'object_not_in_prerequisite_state',
                      HINT = format('Run ALTER TABLE %s REPLICA IDENTITY FULL, or create the stream with before_images => false.', t);
        END IF;
    END LOOP;

    IF EXISTS (SELECT FROM event_bridge.streams s WHERE s.stream_name = create_stream.stream_name) THEN
        RAISE EXCEPTION 'stream "%" already exists', stream_name
            USING ERRCODE = 'duplicate_object';
    END IF;

    /* Settings, worker and slot: before anything is written. */
    PERFORM event_bridge._prepare_capture();

    sid := nextval('event_bridge.stream_id_seq');
    INSERT INTO event_bridge.streams (stream_id, stream_name, tables, shard_count, retention, before_images)
    VALUES (sid, stream_name, tables::oid[], shard_count, retention, before_images);
    INSERT INTO event_bridge.shards (stream_id, shard_id)
    SELECT sid, g FROM generate_series(0, shard_count - 1) g;
EXCEPTION
    WHEN unique_violation THEN
        RAISE EXCEPTION 'stream "%" already exists', stream_name
            USING ERRCODE = 'duplicate_object';
END
$$;
COMMENT ON FUNCTION event_bridge.create_stream(text, regclass[], int, interval, boolean) IS
    'Creates a stream (a DataHub topic) that captures every change of the given tables committed from now on, into shard_count shards';
REVOKE ALL ON FUNCTION event_bridge.create_stream(text, regclass[], int, interval, boolean) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION event_bridge.create_stream(text, regclass[], int, interval, boolean) TO event_bridge_admin;

CREATE FUNCTION event_bridge.drop_stream(stream_name text)
RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog
AS $$
DECLARE
    sid int;
BEGIN
    PERFORM event_bridge._check_admin();
    IF stream_name IS NULL THEN
        RAISE EXCEPTION 'stream name must not be null'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    SELECT s.stream_id INTO sid FROM event_bridge.streams s
     WHERE s.stream_name = drop_stream.stream_name FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'stream "%" does not exist', stream_name
            USING ERRCODE = 'undefined_object';
    END IF;
    DELETE FROM event_bridge.streams WHERE stream_id = sid;
    DELETE FROM event_bridge.records WHERE stream_id = sid;
END
$$;
COMMENT ON FUNCTION event_bridge.drop_stream(text) IS
    'Drops a stream and all its records; transactions committed after this are no longer captured';
REVOKE ALL ON FUNCTION event_bridge.drop_stream(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION event_bridge.drop_stream(text) TO event_bridge_admin;

/* Validates get_records' arguments; returns the stream's id. */
CREATE FUNCTION event_bridge._get_records_stream(
    stream_name   text,
    shard_id      int,
    from_sequence bigint,
    max_records   int)
RETURNS int
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog
AS $$
DECLARE
    s record;
BEGIN
    PERFORM event_bridge._check_admin();
    IF stream_name IS NULL OR shard_id IS NULL OR from_sequence IS NULL OR max_records IS NULL THEN
        RAISE EXCEPTION 'arguments of get_records must not be null'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    SELECT st.stream_id, st.shard_count INTO s FROM event_bridge.streams st
     WHERE st.stream_name = _get_records_stream.stream_name;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'stream "%" does not exist', stream_name
            USING ERRCODE = 'undefined_object';
    END IF;
    IF shard_id < 0 OR shard_id >= s.shard_count THEN
        RAISE EXCEPTION 'shard % does not exist in stream "%"', shard_id, stream_name
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = format('Stream "%s" has shards 0 to %s.', stream_name, s.shard_count - 1);
    END IF;
    IF from_sequence < 0 THEN
        RAISE EXCEPTION 'from_sequence % must not be negative', from_sequence
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF max_records < 1 OR max_records > 10000 THEN
        RAISE EXCEPTION 'max_records % is out of range', max_records
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'max_records must be between 1 and 10000.';
    END IF;
    RETURN s.stream_id;
END
$$;

CREATE FUNCTION event_bridge.get_records(
    stream_name   text,
    shard_id      int,
    from_sequence bigint,
    max_records   int DEFAULT 100)
RETURNS TABLE (event_id text, shard_id int, sequence bigint, system_time bigint,
               operation char, table_name text, data jsonb)
LANGUAGE sql STABLE
SET search_path = pg_catalog
AS $$
    WITH s AS MATERIALIZED (
        SELECT event_bridge._get_records_stream($1, $2, $3, $4) AS stream_id)
    SELECT r.shard_id || ':' || r.sequence, r.shard_id, r.sequence, r.system_time,
           r.operation::char, r.table_name, r.data::jsonb
      FROM s JOIN event_bridge.records r ON r.stream_id = s.stream_id
     WHERE r.shard_id = $2 AND r.sequence >= $3
     ORDER BY r.sequence
     LIMIT (SELECT $4 FROM s)   -- evaluated even for LIMIT 0, so the checks run
$$;
COMMENT ON FUNCTION event_bridge.get_records(text, int, bigint, int) IS
    'Reads up to max_records records of one shard from from_sequence on (DataHub GetRecords)';
REVOKE ALL ON FUNCTION event_bridge.get_records(text, int, bigint, int) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION event_bridge.get_records(text, int, bigint, int) TO event_bridge_admin;

CREATE FUNCTION event_bridge.wait_for_capture(timeout interval DEFAULT '30 seconds')
RETURNS boolean
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog
AS $$
DECLARE
    target   pg_lsn := pg_current_wal_lsn();
    deadline timestamptz := clock_timestamp() + timeout;
    slot     name := 'event_bridge_' || (SELECT oid FROM pg_database WHERE datname = current_database());
BEGIN
    IF timeout IS NULL OR timeout < interval '0' THEN
        RAISE EXCEPTION 'timeout "%" must not be negative', timeout
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    LOOP
        IF EXISTS (SELECT FROM pg_replication_slots
                    WHERE slot_name = slot AND confirmed_flush_lsn >= target) THEN
            RETURN true;
        END IF;
        IF clock_timestamp() >= deadline THEN
            RETURN false;
        END IF;
        PERFORM pg_sleep(0.01);
    END LOOP;
END
$$;
COMMENT ON FUNCTION event_bridge.wait_for_capture(interval) IS
    'Waits until every transaction committed before the call is in the streams; false if timeout passed first';

CREATE FUNCTION event_bridge._capture_lag_bytes()
RETURNS bigint
LANGUAGE sql STABLE
SET search_path = pg_catalog
AS $$
    SELECT (pg_current_wal_lsn() - confirmed_flush_lsn)::bigint
      FROM pg_replication_slots
     WHERE slot_name = 'event_bridge_' || (SELECT oid FROM pg_database WHERE datname = current_database())
$$;

CREATE VIEW event_bridge.stream_status AS
SELECT s.stream_name,
       ARRAY(SELECT t::regclass FROM unnest(s.tables) t) AS tables,
       s.shard_count,
       (SELECT count(*) FROM event_bridge.records r WHERE r.stream_id = s.stream_id) AS records,
       (SELECT to_timestamp(min(r.system_time) / 1000.0) FROM event_bridge.records r
         WHERE r.stream_id = s.stream_id) AS oldest_system_time,
       (SELECT to_timestamp(max(r.system_time) / 1000.0) FROM event_bridge.records r
         WHERE r.stream_id = s.stream_id) AS newest_system_time,
       event_bridge._capture_lag_bytes() AS capture_lag_bytes,
       (SELECT sum(h.next_sequence) FROM event_bridge.shards h WHERE h.stream_id = s.stream_id) AS appended,
       s.retention,
       s.before_images,
       s.capture_lsn IS NOT NULL AS capturing,
       s.created_at
  FROM event_bridge.streams s;
COMMENT ON VIEW event_bridge.stream_status IS
    'One row per stream: its tables, shards, stored records, their time range and how far capture lags behind the WAL';
GRANT SELECT ON event_bridge.stream_status TO event_bridge_admin;
