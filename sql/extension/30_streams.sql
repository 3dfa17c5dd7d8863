/* ---------------------------------------------------------------------
 * Streams
 * ------------------------------------------------------------------- */

CREATE OR REPLACE FUNCTION event_bridge.create_stream(
    stream_name   text,
    tables        regclass[],
    shard_count   int      DEFAULT 1,
    retention     interval DEFAULT '3 days',
    before_images boolean  DEFAULT true)
RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
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
        PERFORM event_bridge._check_readable(ARRAY[t]);
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

CREATE OR REPLACE FUNCTION event_bridge.drop_stream(stream_name text)
RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
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


CREATE OR REPLACE FUNCTION event_bridge.get_records(
    stream_name   text,
    shard_id      int,
    from_sequence bigint,
    max_records   int DEFAULT 100)
RETURNS TABLE (event_id text, shard_id int, sequence bigint, system_time bigint,
               operation char, table_name text, data jsonb)
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
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

CREATE OR REPLACE FUNCTION event_bridge.wait_for_capture(timeout interval DEFAULT '30 seconds')
RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
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
COMMENT ON FUNCTION event_bridge.wait_for_capture(interval) IS
    'Waits until every transaction committed before the call is in the streams; false if timeout passed first';


CREATE OR REPLACE FUNCTION event_bridge.recover_capture()
RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
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

/*
 * The key of a table as records carry it: the replica identity index's
 * columns, else the primary key's, in attribute order; none without either.
 */
CREATE OR REPLACE FUNCTION event_bridge._key_columns(table_name regclass)
RETURNS name[]
LANGUAGE sql STABLE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT coalesce(array_agg(a.attname ORDER BY a.attnum), '{}')
      FROM pg_index i
      JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
     WHERE i.indrelid = table_name
       AND i.indexrelid = coalesce(
             (SELECT x.indexrelid FROM pg_index x JOIN pg_class c ON c.oid = x.indrelid
               WHERE x.indrelid = table_name AND x.indisreplident AND c.relreplident = 'i'),
             (SELECT x.indexrelid FROM pg_index x WHERE x.indrelid = table_name AND x.indisprimary))
$$;
COMMENT ON FUNCTION event_bridge._key_columns(regclass) IS
    'Internal: the key columns of a table as records carry them (replica identity index, else primary key)';

/* Derives what the capture worker applies from a capture filter as given. */
CREATE OR REPLACE FUNCTION event_bridge._prepare_table_filter()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    NEW.row_filter_tree := CASE WHEN NEW.row_filter IS NOT NULL
        THEN event_bridge._check_row_filter(NEW.table_name, NEW.row_filter) END;
    NEW.column_numbers := CASE WHEN NEW.columns IS NOT NULL
        THEN ARRAY(SELECT a.attnum FROM pg_attribute a
                    WHERE a.attrelid = NEW.table_name AND a.attname = ANY (NEW.columns)
                      AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum) END;
    RETURN NEW;
END
$$;
COMMENT ON FUNCTION event_bridge._prepare_table_filter() IS
    'Internal: checks a capture filter and derives its expression tree and column numbers';

CREATE OR REPLACE FUNCTION event_bridge.set_table_filter(
    stream_name text,
    table_name  regclass,
    row_filter  text   DEFAULT NULL,
    columns     name[] DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    s   record;
    bad name;
BEGIN
    PERFORM event_bridge._check_admin();
    IF stream_name IS NULL OR table_name IS NULL THEN
        RAISE EXCEPTION 'stream_name and table_name of set_table_filter must not be null'
            USING ERRCODE = 'null_value_not_allowed',
                  DETAIL = 'A NULL row_filter keeps every row, NULL columns keep every column.';
    END IF;
    SELECT st.stream_id, st.tables INTO s FROM event_bridge.streams st
     WHERE st.stream_name = set_table_filter.stream_name FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'stream "%" does not exist', stream_name
            USING ERRCODE = 'undefined_object';
    END IF;
    PERFORM event_bridge._check_readable(s.tables);
    IF table_name <> ALL (s.tables) THEN
        RAISE EXCEPTION 'table % is not captured by stream "%"', table_name, stream_name
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- The capture worker evaluates it for every change: it stays small.
    IF octet_length(row_filter) > 4096 THEN
        RAISE EXCEPTION 'the row filter of table % is longer than 4096 bytes', table_name
            USING ERRCODE = 'program_limit_exceeded';
    END IF;
    IF columns IS NOT NULL THEN
        IF cardinality(columns) = 0 THEN
            RAISE EXCEPTION 'the column list of table % must not be empty', table_name
                USING ERRCODE = 'invalid_parameter_value',
                      HINT = 'Pass NULL to keep every column.';
        END IF;
        SELECT c INTO bad FROM unnest(columns) c GROUP BY c HAVING count(*) > 1 LIMIT 1;
        IF FOUND THEN
            RAISE EXCEPTION 'column "%" is listed twice', bad
                USING ERRCODE = 'duplicate_column';
        END IF;
        SELECT c INTO bad FROM unnest(columns) c
         WHERE NOT EXISTS (SELECT FROM pg_attribute a WHERE a.attrelid = table_name
                              AND a.attname = c AND a.attnum > 0 AND NOT a.attisdropped)
         LIMIT 1;
        IF FOUND THEN
            RAISE EXCEPTION 'column "%" of table % does not exist', bad, table_name
                USING ERRCODE = 'undefined_column';
        END IF;
        SELECT k INTO bad FROM unnest(event_bridge._key_columns(table_name)) k
         WHERE k <> ALL (columns) LIMIT 1;
        IF FOUND THEN
            RAISE EXCEPTION 'the column list of table % must keep its key column "%"', table_name, bad
                USING ERRCODE = 'invalid_parameter_value',
                      DETAIL = 'Records are sharded by their key, and events name it.';
        END IF;
    END IF;
    IF row_filter IS NULL AND columns IS NULL THEN
        DELETE FROM event_bridge.table_filter_rules f
         WHERE f.stream_id = s.stream_id AND f.table_name = set_table_filter.table_name;
    ELSE
        INSERT INTO event_bridge.table_filter_rules AS f (stream_id, table_name, row_filter, columns)
        VALUES (s.stream_id, table_name, row_filter, columns)
        ON CONFLICT ON CONSTRAINT table_filter_rules_pkey DO UPDATE
           SET row_filter = excluded.row_filter, columns = excluded.columns;
    END IF;
END
$$;
COMMENT ON FUNCTION event_bridge.set_table_filter(text, regclass, text, name[]) IS
    'Sets which rows (row_filter, a PostgreSQL 15 publication row filter) and columns (the key kept) of a table a stream captures, from the transactions that commit after it on; NULL and NULL capture everything again';
