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
    tables        regclass[] NOT NULL,   -- names in a dump, so a restore maps them
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
 * Capture state of this database: the next record id (field 0 of every
 * record), written by the capture worker in the transaction that appends.
 * slot_lost_at is set when the replication slot was invalidated (for
 * example by max_slot_wal_keep_size): capture stops until recover_capture().
 */
CREATE TABLE event_bridge.capture_state (
    singleton         boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    next_record_id    bigint NOT NULL DEFAULT 1,
    slot_lost_at      timestamptz,
    slot_lost_lsn     pg_lsn,
    recover_requested boolean NOT NULL DEFAULT false
);
INSERT INTO event_bridge.capture_state DEFAULT VALUES;

/*
 * Gaps in capture: changes committed between lost_lsn and resumed_lsn were
 * not captured, because the slot was lost and capture was recovered.
 */
CREATE TABLE event_bridge.capture_gaps (
    lost_at     timestamptz NOT NULL,
    lost_lsn    pg_lsn,
    resumed_at  timestamptz NOT NULL,
    resumed_lsn pg_lsn NOT NULL
);
COMMENT ON TABLE event_bridge.capture_gaps IS
    'Stretches of WAL whose changes were not captured because the replication slot was lost';

SELECT pg_catalog.pg_extension_config_dump('event_bridge.streams', '');
SELECT pg_catalog.pg_extension_config_dump('event_bridge.stream_id_seq', '');
-- Sequence counters go with the streams, so that a restored stream goes on
-- counting instead of handing out eventIds a consumer has already seen.
SELECT pg_catalog.pg_extension_config_dump('event_bridge.shards', '');

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

CREATE FUNCTION event_bridge._extension_created()
RETURNS void
LANGUAGE C VOLATILE
AS 'MODULE_PATHNAME', 'event_bridge_extension_created';
COMMENT ON FUNCTION event_bridge._extension_created() IS
    'Internal: has the launcher start this database''s workers once CREATE EXTENSION commits';
REVOKE ALL ON FUNCTION event_bridge._extension_created() FROM PUBLIC;

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

    IF (SELECT slot_lost_at FROM event_bridge.capture_state) IS NOT NULL THEN
        RAISE EXCEPTION 'capture of database "%" is stopped: its replication slot was lost', current_database()
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'Run SELECT event_bridge.recover_capture(); first.';
    END IF;

    /* Settings, worker and slot: before anything is written. */
    PERFORM event_bridge._prepare_capture();

    sid := nextval('event_bridge.stream_id_seq');
    INSERT INTO event_bridge.streams (stream_id, stream_name, tables, shard_count, retention, before_images)
    VALUES (sid, stream_name, tables, shard_count, retention, before_images);
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
    -- Its connectors' offsets go with it (see _lock_offsets).
    PERFORM event_bridge._lock_offsets();
    SELECT s.stream_id INTO sid FROM event_bridge.streams s
     WHERE s.stream_name = drop_stream.stream_name FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'stream "%" does not exist', stream_name
            USING ERRCODE = 'undefined_object';
    END IF;
    DELETE FROM event_bridge.streams WHERE stream_id = sid;
    DELETE FROM event_bridge.records WHERE stream_id = sid;
    -- Its connectors went with it.
    PERFORM event_bridge._wake_delivery();
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
    IF timeout IS NULL THEN
        RAISE EXCEPTION 'timeout must not be null'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF timeout < interval '0' THEN
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
REVOKE ALL ON FUNCTION event_bridge.wait_for_capture(interval) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION event_bridge.wait_for_capture(interval) TO event_bridge_admin;
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
       s.created_at,
       CASE WHEN c.slot_lost_at IS NOT NULL THEN 'SLOT LOST'
            WHEN s.capture_lsn IS NULL THEN 'STARTING'
            ELSE 'RUNNING' END AS capture_state,
       c.slot_lost_at,
       (SELECT count(*) FROM event_bridge.capture_gaps g WHERE g.resumed_at > s.created_at) AS capture_gaps
  FROM event_bridge.streams s, event_bridge.capture_state c;
COMMENT ON VIEW event_bridge.stream_status IS
    'One row per stream: its tables, shards, stored records, their time range, how far capture lags behind the WAL, and whether capture runs (SLOT LOST: see recover_capture)';

CREATE FUNCTION event_bridge.recover_capture()
RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog
AS $$
DECLARE
    lost timestamptz;
BEGIN
    PERFORM event_bridge._check_admin();
    SELECT slot_lost_at INTO lost FROM event_bridge.capture_state FOR UPDATE;
    IF lost IS NULL THEN
        RAISE EXCEPTION 'capture of database "%" has not lost its replication slot', current_database()
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = 'recover_capture() only restarts capture after its slot was invalidated.';
    END IF;
    UPDATE event_bridge.capture_state SET recover_requested = true;
    PERFORM event_bridge._extension_created();   -- wakes the launcher at commit
END
$$;
COMMENT ON FUNCTION event_bridge.recover_capture() IS
    'After the replication slot was lost: starts capture again from now on with a new slot, and records the gap in capture_gaps';
REVOKE ALL ON FUNCTION event_bridge.recover_capture() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION event_bridge.recover_capture() TO event_bridge_admin;
GRANT SELECT ON event_bridge.stream_status TO event_bridge_admin;

/* =====================================================================
 * Connectors
 *
 * A connector delivers one stream to one HTTP endpoint (a DataHub
 * DataConnector).  The database's delivery worker reads each shard's
 * records after the connector's offset, POSTs them in batches, one batch
 * in flight per shard, and moves the offset only after a 2xx answer.
 * ===================================================================== */

/*
 * One row per connector.  Every API call that changes a connector bumps
 * version; the delivery worker reloads a connector when its version moved.
 * headers holds secrets (tokens): the status views show only their names.
 */
CREATE TABLE event_bridge.connectors (
    connector_id   int PRIMARY KEY,
    connector_name text NOT NULL UNIQUE,
    stream_id      int NOT NULL REFERENCES event_bridge.streams ON DELETE CASCADE,
    endpoint       text NOT NULL,
    format         text NOT NULL CHECK (format IN ('datahub', 'dis')),
    batch_size     int NOT NULL CHECK (batch_size BETWEEN 1 AND 10000),
    batch_window   interval NOT NULL,
    retry_interval interval NOT NULL,
    max_retries    int NOT NULL CHECK (max_retries >= 0),
    timeout        interval NOT NULL,
    headers        jsonb NOT NULL DEFAULT '{}',
    stopped        boolean NOT NULL DEFAULT false,
    version        bigint NOT NULL DEFAULT 1,
    created_at     timestamptz NOT NULL DEFAULT now()
);
CREATE SEQUENCE event_bridge.connector_id_seq AS int OWNED BY event_bridge.connectors.connector_id;
COMMENT ON TABLE event_bridge.connectors IS
    'Connectors (DataHub DataConnectors): which stream goes to which endpoint, in which format, with which batching and retries';

/*
 * Position and health of every shard of every connector, written by the
 * delivery worker after each attempt.  delivered_sequence is the offset:
 * every record up to it is done (acknowledged with a 2xx, or skipped by the
 * start time); -1 = none.  Records appended before skip_before (epoch ms)
 * are skipped, for a start time that was not reached when the position was
 * set.  reset_connector bumps position_generation, and the worker moves the
 * offset only while it is unchanged, so a batch in flight cannot undo a
 * reset.  failures counts consecutive failed attempts; retry_last_sequence
 * ends the batch that failed, so that a retry sends the same records, also
 * after a restart.
 */
CREATE TABLE event_bridge.connector_shards (
    connector_id        int NOT NULL REFERENCES event_bridge.connectors ON DELETE CASCADE,
    shard_id            int NOT NULL,
    delivered_sequence  bigint NOT NULL,
    skip_before         bigint NOT NULL DEFAULT 0,
    position_generation int NOT NULL DEFAULT 0,
    suspended           boolean NOT NULL DEFAULT false,
    failures            int NOT NULL DEFAULT 0,
    retry_last_sequence bigint,
    delivered           bigint NOT NULL DEFAULT 0,
    attempts            bigint NOT NULL DEFAULT 0,
    failed_attempts     bigint NOT NULL DEFAULT 0,
    last_attempt_at     timestamptz,
    last_http_status    int,
    last_success_at     timestamptz,
    last_event_id       text,
    last_error          text,
    last_error_at       timestamptz,
    PRIMARY KEY (connector_id, shard_id)
);
COMMENT ON TABLE event_bridge.connector_shards IS
    'Per connector and shard: the delivery offset, consecutive failures, suspension and the last outcome';

/*
 * The attempts log: the last attempts of every connector shard, numbered by
 * connector_shards.attempts.  The worker deletes the oldest as it adds one.
 * Rows go with their connector shard by the trigger below rather than by a
 * foreign key, whose check would cost every delivered batch a row lock.
 */
CREATE TABLE event_bridge.connector_attempts (
    connector_id   int NOT NULL,
    shard_id       int NOT NULL,
    attempt        bigint NOT NULL,
    attempted_at   timestamptz NOT NULL,
    duration_ms    double precision NOT NULL,
    first_sequence bigint NOT NULL,
    last_sequence  bigint NOT NULL,
    http_status    int,
    error          text,
    response       text,
    PRIMARY KEY (connector_id, shard_id, attempt)
);
COMMENT ON TABLE event_bridge.connector_attempts IS
    'The last delivery attempts of every connector shard: HTTP status, error, start of the response body, time';

CREATE FUNCTION event_bridge._drop_attempts()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog
AS $$
BEGIN
    DELETE FROM event_bridge.connector_attempts a
     USING gone g
     WHERE a.connector_id = g.connector_id AND a.shard_id = g.shard_id;
    RETURN NULL;
END
$$;
COMMENT ON FUNCTION event_bridge._drop_attempts() IS
    'Internal: deletes the attempts log of connector shards as they are deleted';

CREATE TRIGGER drop_attempts AFTER DELETE ON event_bridge.connector_shards
    REFERENCING OLD TABLE AS gone
    FOR EACH STATEMENT EXECUTE FUNCTION event_bridge._drop_attempts();

SELECT pg_catalog.pg_extension_config_dump('event_bridge.connectors', '');
SELECT pg_catalog.pg_extension_config_dump('event_bridge.connector_id_seq', '');
-- Offsets go with the connectors: a restored connector goes on from them.
SELECT pg_catalog.pg_extension_config_dump('event_bridge.connector_shards', '');

REVOKE ALL ON event_bridge.connectors, event_bridge.connector_shards,
    event_bridge.connector_attempts FROM PUBLIC;
REVOKE ALL ON SEQUENCE event_bridge.connector_id_seq FROM PUBLIC;
GRANT SELECT, INSERT, UPDATE, DELETE ON event_bridge.connectors, event_bridge.connector_shards,
    event_bridge.connector_attempts TO event_bridge_admin;
GRANT USAGE ON SEQUENCE event_bridge.connector_id_seq TO event_bridge_admin;

/* Internal C helpers of connectors. */

CREATE FUNCTION event_bridge._check_endpoint(endpoint text)
RETURNS void
LANGUAGE C IMMUTABLE STRICT
AS 'MODULE_PATHNAME', 'event_bridge_check_endpoint';
COMMENT ON FUNCTION event_bridge._check_endpoint(text) IS
    'Internal: refuses an endpoint that is not an http or https URL, without quoting it';

CREATE FUNCTION event_bridge._wake_delivery()
RETURNS void
LANGUAGE C VOLATILE
AS 'MODULE_PATHNAME', 'event_bridge_wake_delivery';
COMMENT ON FUNCTION event_bridge._wake_delivery() IS
    'Internal: wakes this database''s delivery worker when the calling transaction commits';

CREATE FUNCTION event_bridge._format_batch(
    format         text,
    database_name  text,
    stream_name    text,
    region         text,
    shard_id       int,
    sequences      bigint[],
    system_times   bigint[],
    partition_keys text[],
    data           text[],
    now_ms         bigint)
RETURNS text
LANGUAGE C IMMUTABLE
AS 'MODULE_PATHNAME', 'event_bridge_format_batch';
COMMENT ON FUNCTION event_bridge._format_batch(text, text, text, text, int, bigint[], bigint[], text[], text[], bigint) IS
    'Internal: the HTTP body the delivery worker sends for a batch of records, for tests';

REVOKE ALL ON FUNCTION event_bridge._check_endpoint(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION event_bridge._wake_delivery() FROM PUBLIC;
REVOKE ALL ON FUNCTION event_bridge._format_batch(text, text, text, text, int, bigint[], bigint[], text[], text[], bigint) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION event_bridge._check_endpoint(text) TO event_bridge_admin;
GRANT EXECUTE ON FUNCTION event_bridge._wake_delivery() TO event_bridge_admin;
GRANT EXECUTE ON FUNCTION event_bridge._format_batch(text, text, text, text, int, bigint[], bigint[], text[], text[], bigint) TO event_bridge_admin;

/*
 * The first sequence of a shard whose record was appended at or after
 * start_ms (epoch milliseconds), or the shard's next sequence if there is
 * none yet; NULL start_ms means the earliest retained record.  A binary
 * search: inside a shard, system_time grows with the sequence.
 */
CREATE FUNCTION event_bridge._start_sequence(stream_id int, shard_id int, start_ms bigint)
RETURNS bigint
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog
AS $$
DECLARE
    lo    bigint;
    hi    bigint;
    mid   bigint;
    seq   bigint;
    t     bigint;
BEGIN
    SELECT h.next_sequence INTO hi FROM event_bridge.shards h
     WHERE h.stream_id = $1 AND h.shard_id = $2;
    SELECT r.sequence INTO lo FROM event_bridge.records r
     WHERE r.stream_id = $1 AND r.shard_id = $2 ORDER BY r.sequence LIMIT 1;
    IF lo IS NULL OR start_ms IS NULL THEN
        RETURN coalesce(lo, hi, 0);
    END IF;
    /* Every record before lo is older than start_ms; the answer is in [lo, hi]. */
    WHILE lo < hi LOOP
        mid := lo + (hi - lo) / 2;
        seq := NULL;
        SELECT r.sequence, r.system_time INTO seq, t FROM event_bridge.records r
         WHERE r.stream_id = $1 AND r.shard_id = $2 AND r.sequence >= mid
         ORDER BY r.sequence LIMIT 1;
        IF seq IS NULL OR seq >= hi THEN
            hi := mid;
        ELSIF t >= start_ms THEN
            hi := seq;
        ELSE
            lo := seq + 1;
        END IF;
    END LOOP;
    RETURN lo;
END
$$;
COMMENT ON FUNCTION event_bridge._start_sequence(int, int, bigint) IS
    'Internal: the first sequence of a shard appended at or after a time (epoch ms), or the shard''s next sequence';

/*
 * The delivery worker records the outcomes of several shards in one
 * transaction, in the order they finished; a function that changes several
 * shards' rows at once (reset, resume, drop, and drop_stream through the
 * cascade) would lock them in another order and could deadlock with it.
 * Such functions first take this lock, which waits for the worker's turn in
 * progress and holds its next one back until they commit: delivery in the
 * database pauses for as long as their transaction lasts.
 */
CREATE FUNCTION event_bridge._lock_offsets()
RETURNS void
LANGUAGE sql VOLATILE
SET search_path = pg_catalog
AS $$ LOCK TABLE event_bridge.connector_shards IN SHARE ROW EXCLUSIVE MODE $$;
COMMENT ON FUNCTION event_bridge._lock_offsets() IS
    'Internal: waits for the delivery worker''s turn in progress and holds its next one back until the calling transaction ends';

/*
 * Checks the caller's rights, takes _lock_offsets, locks a connector against
 * concurrent API calls, bumps its version so that the worker reloads it, and
 * returns its id.
 */
CREATE FUNCTION event_bridge._lock_connector(connector_name text)
RETURNS int
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog
AS $$
DECLARE
    cid int;
BEGIN
    PERFORM event_bridge._check_admin();
    IF connector_name IS NULL THEN
        RAISE EXCEPTION 'connector name must not be null'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    PERFORM event_bridge._lock_offsets();
    UPDATE event_bridge.connectors c SET version = c.version + 1
     WHERE c.connector_name = _lock_connector.connector_name
    RETURNING c.connector_id INTO cid;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'connector "%" does not exist', connector_name
            USING ERRCODE = 'undefined_object';
    END IF;
    RETURN cid;
END
$$;
COMMENT ON FUNCTION event_bridge._lock_connector(text) IS
    'Internal: checks rights, locks a connector by name, bumps its version so the delivery worker reloads it, returns its id';

/* A start time in epoch milliseconds (NULL stays NULL: the earliest retained). */
CREATE FUNCTION event_bridge._start_ms(start_time timestamptz)
RETURNS bigint
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog
AS $$
BEGIN
    IF isfinite(start_time) IS FALSE THEN
        RAISE EXCEPTION 'start_time "%" must be a finite time', start_time
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Use NULL for the earliest retained record.';
    END IF;
    RETURN floor(extract(epoch FROM start_time) * 1000)::bigint;
END
$$;

CREATE FUNCTION event_bridge.create_connector(
    connector_name text,
    stream_name    text,
    endpoint       text,
    start_time     timestamptz DEFAULT now(),
    format         text     DEFAULT 'datahub',
    batch_size     int      DEFAULT 100,
    batch_window   interval DEFAULT '0',
    retry_interval interval DEFAULT '1 second',
    max_retries    int      DEFAULT 512,
    timeout        interval DEFAULT '30 seconds',
    headers        jsonb    DEFAULT '{}')
RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog
AS $$
DECLARE
    s        record;
    h        record;
    cid      int;
    start_ms bigint := event_bridge._start_ms(start_time);
BEGIN
    PERFORM event_bridge._check_admin();

    IF connector_name IS NULL OR stream_name IS NULL OR endpoint IS NULL OR format IS NULL
       OR batch_size IS NULL OR batch_window IS NULL OR retry_interval IS NULL
       OR max_retries IS NULL OR timeout IS NULL OR headers IS NULL THEN
        RAISE EXCEPTION 'arguments of create_connector must not be null'
            USING ERRCODE = 'null_value_not_allowed',
                  DETAIL = 'Only start_time may be null: it then means the earliest retained record.';
    END IF;
    IF connector_name !~ '^[A-Za-z_][A-Za-z0-9_.-]{0,127}$' THEN
        RAISE EXCEPTION 'invalid connector name "%"', connector_name
            USING ERRCODE = 'invalid_name',
                  DETAIL = 'A connector name starts with a letter or underscore and holds at most 128 letters, digits, "_", "." or "-".';
    END IF;
    SELECT st.stream_id, st.shard_count INTO s FROM event_bridge.streams st
     WHERE st.stream_name = create_connector.stream_name;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'stream "%" does not exist', stream_name
            USING ERRCODE = 'undefined_object';
    END IF;
    IF EXISTS (SELECT FROM event_bridge.connectors c WHERE c.connector_name = create_connector.connector_name) THEN
        RAISE EXCEPTION 'connector "%" already exists', connector_name
            USING ERRCODE = 'duplicate_object';
    END IF;
    PERFORM event_bridge._check_endpoint(endpoint);
    IF format NOT IN ('datahub', 'dis') THEN
        RAISE EXCEPTION 'unknown event format "%"', format
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'The formats are datahub (Alibaba Function Compute) and dis (Huawei FunctionGraph).';
    END IF;
    IF batch_size < 1 OR batch_size > 10000 THEN
        RAISE EXCEPTION 'batch_size % is out of range', batch_size
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'batch_size must be between 1 and 10000.';
    END IF;
    IF batch_window < interval '0' OR batch_window > interval '1 day' THEN
        RAISE EXCEPTION 'batch_window "%" is out of range', batch_window
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'batch_window must be between 0 and 1 day.';
    END IF;
    IF retry_interval <= interval '0' OR retry_interval > interval '1 day' THEN
        RAISE EXCEPTION 'retry_interval "%" is out of range', retry_interval
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'retry_interval must be positive and at most 1 day.';
    END IF;
    IF timeout <= interval '0' OR timeout > interval '1 day' THEN
        RAISE EXCEPTION 'timeout "%" is out of range', timeout
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'timeout must be positive and at most 1 day.';
    END IF;
    IF max_retries < 0 THEN
        RAISE EXCEPTION 'max_retries % must not be negative', max_retries
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF jsonb_typeof(headers) <> 'object' THEN
        RAISE EXCEPTION 'headers must be a JSON object'
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = format('headers is a JSON %s.', jsonb_typeof(headers)),
                  HINT = 'Pass headers like ''{"X-Auth-Token": "..."}''.';
    END IF;
    /* Header values are secrets: errors name the header, never its value. */
    FOR h IN SELECT e.key, e.value FROM jsonb_each(headers) e ORDER BY e.key LOOP
        IF h.key !~ '^[!#$%&''*+.^_`|~0-9A-Za-z-]+$' THEN
            RAISE EXCEPTION 'invalid header name "%"', h.key
                USING ERRCODE = 'invalid_parameter_value',
                      DETAIL = 'A header name is a token of letters, digits and !#$%&''*+.^_`|~-.';
        END IF;
        IF jsonb_typeof(h.value) <> 'string' THEN
            RAISE EXCEPTION 'value of header "%" must be a JSON string', h.key
                USING ERRCODE = 'invalid_parameter_value',
                      DETAIL = format('It is a JSON %s.', jsonb_typeof(h.value));
        END IF;
        IF (h.value #>> '{}') ~ '[\r\n]' THEN
            RAISE EXCEPTION 'value of header "%" must not contain a line break', h.key
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        IF lower(h.key) IN ('content-length', 'transfer-encoding', 'connection', 'expect') THEN
            RAISE EXCEPTION 'header "%" cannot be set', h.key
                USING ERRCODE = 'invalid_parameter_value',
                      DETAIL = 'event_bridge sets the headers that frame the request itself.';
        END IF;
    END LOOP;

    cid := nextval('event_bridge.connector_id_seq');
    INSERT INTO event_bridge.connectors (connector_id, connector_name, stream_id, endpoint, format,
        batch_size, batch_window, retry_interval, max_retries, timeout, headers)
    VALUES (cid, connector_name, s.stream_id, endpoint, format,
        batch_size, batch_window, retry_interval, max_retries, timeout, headers);
    INSERT INTO event_bridge.connector_shards (connector_id, shard_id, delivered_sequence, skip_before)
    SELECT cid, g, event_bridge._start_sequence(s.stream_id, g, start_ms) - 1, coalesce(start_ms, 0)
      FROM generate_series(0, s.shard_count - 1) g;
    PERFORM event_bridge._wake_delivery();
EXCEPTION
    WHEN unique_violation THEN
        RAISE EXCEPTION 'connector "%" already exists', connector_name
            USING ERRCODE = 'duplicate_object';
END
$$;
COMMENT ON FUNCTION event_bridge.create_connector(text, text, text, timestamptz, text, int, interval, interval, int, interval, jsonb) IS
    'Creates a connector that POSTs the records of a stream appended from start_time on to an http(s) endpoint, in order per shard, in the datahub or dis event format';

CREATE FUNCTION event_bridge.stop_connector(name text)
RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog
AS $$
DECLARE
    cid int := event_bridge._lock_connector(stop_connector.name);
BEGIN
    UPDATE event_bridge.connectors SET stopped = true
     WHERE connector_id = cid;
    PERFORM event_bridge._wake_delivery();
END
$$;
COMMENT ON FUNCTION event_bridge.stop_connector(text) IS
    'Stops a connector (state STOPPED): no batch is sent after the ones in flight; start_connector continues from its offsets';

CREATE FUNCTION event_bridge.start_connector(name text)
RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog
AS $$
DECLARE
    cid int := event_bridge._lock_connector(start_connector.name);
BEGIN
    UPDATE event_bridge.connectors SET stopped = false
     WHERE connector_id = cid;
    PERFORM event_bridge._wake_delivery();
END
$$;
COMMENT ON FUNCTION event_bridge.start_connector(text) IS
    'Starts a stopped connector again: delivery continues from its offsets';

CREATE FUNCTION event_bridge.resume_connector(name text)
RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog
AS $$
DECLARE
    cid int := event_bridge._lock_connector(resume_connector.name);
BEGIN
    UPDATE event_bridge.connector_shards SET suspended = false, failures = 0
     WHERE connector_id = cid AND suspended;
    IF NOT FOUND THEN
        RAISE NOTICE 'connector "%" has no suspended shard', name;
    END IF;
    PERFORM event_bridge._wake_delivery();
END
$$;
COMMENT ON FUNCTION event_bridge.resume_connector(text) IS
    'Clears the suspension of a connector''s SUSPENDED shards: each retries the batch that failed at once';

CREATE FUNCTION event_bridge.reset_connector(name text, start_time timestamptz)
RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog
AS $$
DECLARE
    cid      int := event_bridge._lock_connector(reset_connector.name);
    start_ms bigint := event_bridge._start_ms(start_time);
BEGIN
    UPDATE event_bridge.connector_shards cs
       SET delivered_sequence = event_bridge._start_sequence(c.stream_id, cs.shard_id, start_ms) - 1,
           skip_before = coalesce(start_ms, 0),
           position_generation = cs.position_generation + 1,
           suspended = false,
           failures = 0,
           retry_last_sequence = NULL
      FROM event_bridge.connectors c
     WHERE c.connector_id = cid AND cs.connector_id = cid;
    PERFORM event_bridge._wake_delivery();
END
$$;
COMMENT ON FUNCTION event_bridge.reset_connector(text, timestamptz) IS
    'Moves every shard of a connector to its first record appended at or after start_time (NULL: the earliest retained), to replay or to skip ahead; clears suspensions';

CREATE FUNCTION event_bridge.drop_connector(name text)
RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog
AS $$
DECLARE
    cid int := event_bridge._lock_connector(drop_connector.name);
BEGIN
    DELETE FROM event_bridge.connectors
     WHERE connector_id = cid;
    PERFORM event_bridge._wake_delivery();
END
$$;
COMMENT ON FUNCTION event_bridge.drop_connector(text) IS
    'Drops a connector, its offsets and its attempts log; a batch in flight is abandoned';

DO $$
DECLARE
    f text;
BEGIN
    FOREACH f IN ARRAY ARRAY[
        'event_bridge._start_sequence(int, int, bigint)',
        'event_bridge._lock_offsets()',
        'event_bridge._lock_connector(text)',
        'event_bridge.create_connector(text, text, text, timestamptz, text, int, interval, interval, int, interval, jsonb)',
        'event_bridge.stop_connector(text)',
        'event_bridge.start_connector(text)',
        'event_bridge.resume_connector(text)',
        'event_bridge.reset_connector(text, timestamptz)',
        'event_bridge.drop_connector(text)']
    LOOP
        EXECUTE format('REVOKE ALL ON FUNCTION %s FROM PUBLIC', f);
        EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO event_bridge_admin', f);
    END LOOP;
END
$$;

/* An endpoint as the views show it: without the password of its userinfo. */
CREATE FUNCTION event_bridge._endpoint_without_secrets(endpoint text)
RETURNS text
LANGUAGE sql IMMUTABLE STRICT
SET search_path = pg_catalog
AS $$
    SELECT regexp_replace(endpoint, '^([A-Za-z][A-Za-z0-9+.-]*://)[^/?#@]*@', '\1***@')
$$;
COMMENT ON FUNCTION event_bridge._endpoint_without_secrets(text) IS
    'Internal: an endpoint URL with its userinfo masked, as the status views show it';

CREATE VIEW event_bridge.shard_status AS
SELECT c.connector_name,
       cs.shard_id,
       CASE WHEN c.stopped THEN 'STOPPED'
            WHEN cs.suspended THEN 'SUSPENDED'
            ELSE 'RUNNING' END AS state,
       cs.delivered_sequence,
       h.next_sequence,
       greatest(h.next_sequence - cs.delivered_sequence - 1, 0) AS pending,
       cs.failures,
       cs.last_error,
       cs.last_error_at,
       cs.last_http_status,
       cs.last_event_id,
       cs.last_success_at,
       cs.delivered,
       coalesce(greatest(floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint -
           (SELECT r.system_time FROM event_bridge.records r
             WHERE r.stream_id = c.stream_id AND r.shard_id = cs.shard_id
               AND r.sequence > cs.delivered_sequence
             ORDER BY r.sequence LIMIT 1), 0), 0) AS lag_ms,
       cs.attempts,
       cs.failed_attempts,
       cs.last_attempt_at
  FROM event_bridge.connectors c
  JOIN event_bridge.connector_shards cs ON cs.connector_id = c.connector_id
  JOIN event_bridge.shards h ON h.stream_id = c.stream_id AND h.shard_id = cs.shard_id;
COMMENT ON VIEW event_bridge.shard_status IS
    'One row per connector and shard: state, offset (delivered_sequence, -1 = none), the stream''s next sequence, pending records, consecutive failures and the last error';
GRANT SELECT ON event_bridge.shard_status TO event_bridge_admin;

CREATE VIEW event_bridge.connector_status AS
SELECT c.connector_name,
       s.stream_name,
       event_bridge._endpoint_without_secrets(c.endpoint) AS endpoint,
       CASE WHEN c.stopped THEN 'STOPPED'
            WHEN bool_or(ss.state = 'SUSPENDED') THEN 'SUSPENDED'
            ELSE 'RUNNING' END AS state,
       sum(ss.delivered)::bigint AS delivered,
       sum(ss.pending)::bigint AS pending,
       max(ss.lag_ms) AS lag_ms,
       (array_agg(ss.last_event_id ORDER BY ss.last_success_at DESC NULLS LAST))[1] AS last_event_id,
       max(ss.last_success_at) AS last_success_at,
       sum(ss.failures)::bigint AS failures,
       (array_agg(ss.last_error ORDER BY ss.last_error_at DESC NULLS LAST))[1] AS last_error,
       max(ss.last_error_at) AS last_error_at,
       (array_agg(ss.last_http_status ORDER BY ss.last_attempt_at DESC NULLS LAST))[1] AS last_http_status,
       ARRAY(SELECT jsonb_object_keys(c.headers) ORDER BY 1) AS header_names,
       c.format,
       c.batch_size,
       c.batch_window,
       c.retry_interval,
       c.max_retries,
       c.timeout,
       count(*)::int AS shard_count,
       count(*) FILTER (WHERE ss.state = 'SUSPENDED')::int AS suspended_shards,
       sum(ss.attempts)::bigint AS attempts,
       sum(ss.failed_attempts)::bigint AS failed_attempts,
       c.created_at
  FROM event_bridge.connectors c
  JOIN event_bridge.streams s ON s.stream_id = c.stream_id
  JOIN event_bridge.shard_status ss ON ss.connector_name = c.connector_name
 GROUP BY c.connector_id, s.stream_name;
COMMENT ON VIEW event_bridge.connector_status IS
    'One row per connector: state (RUNNING, STOPPED, SUSPENDED if any shard is), records delivered and pending, lag, the last success and the last error; header names but never their values';
GRANT SELECT ON event_bridge.connector_status TO event_bridge_admin;

CREATE VIEW event_bridge.connector_attempts_log AS
SELECT c.connector_name, a.shard_id, a.attempt, a.attempted_at, a.duration_ms,
       a.first_sequence, a.last_sequence, a.last_sequence - a.first_sequence + 1 AS records,
       a.http_status, a.error, a.response
  FROM event_bridge.connector_attempts a
  JOIN event_bridge.connectors c ON c.connector_id = a.connector_id;
COMMENT ON VIEW event_bridge.connector_attempts_log IS
    'The last delivery attempts of every connector shard, newest attempt numbers last';
GRANT SELECT ON event_bridge.connector_attempts_log TO event_bridge_admin;

/* Last: start this database's workers once CREATE EXTENSION commits. */
SELECT event_bridge._extension_created();
