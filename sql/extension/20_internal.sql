/* ---------------------------------------------------------------------
 * Internal C helpers
 * ------------------------------------------------------------------- */

CREATE OR REPLACE FUNCTION event_bridge._prepare_capture()
RETURNS void
LANGUAGE C VOLATILE STRICT
AS 'MODULE_PATHNAME', 'event_bridge_prepare_capture';
COMMENT ON FUNCTION event_bridge._prepare_capture() IS
    'Internal: checks the server settings capture needs, starts this database''s capture worker and waits until its slot exists';

CREATE OR REPLACE FUNCTION event_bridge._extension_created()
RETURNS void
LANGUAGE C VOLATILE
AS 'MODULE_PATHNAME', 'event_bridge_extension_created';
COMMENT ON FUNCTION event_bridge._extension_created() IS
    'Internal: has the launcher start this database''s workers once CREATE EXTENSION commits';

/*
 * The API functions run as the extension's owner (SECURITY DEFINER), so
 * their checks concern the role that called them, which these helpers find
 * in C (src/caller.c): current_user is the owner there.
 */
CREATE OR REPLACE FUNCTION event_bridge._check_admin()
RETURNS void
LANGUAGE C STABLE
AS 'MODULE_PATHNAME', 'event_bridge_check_admin';
COMMENT ON FUNCTION event_bridge._check_admin() IS
    'Internal: refuses a caller that is neither a superuser nor a member of event_bridge_admin';

CREATE OR REPLACE FUNCTION event_bridge._check_readable(tables regclass[])
RETURNS void
LANGUAGE C STABLE STRICT
AS 'MODULE_PATHNAME', 'event_bridge_check_readable';
COMMENT ON FUNCTION event_bridge._check_readable(regclass[]) IS
    'Internal: refuses a caller without SELECT on every table, or subject to row-level security on one; superusers pass';

/* The same rule as a test, row by row, for views that show record data. */
CREATE OR REPLACE FUNCTION event_bridge._may_read_record(tables regclass[], table_name text)
RETURNS boolean
LANGUAGE C STABLE STRICT
AS 'MODULE_PATHNAME', 'event_bridge_may_read_record';
COMMENT ON FUNCTION event_bridge._may_read_record(regclass[], text) IS
    'Internal: may the caller see a kept record of table_name: a superuser, or a role that may read every table of the stream while table_name is still one of them?';

CREATE OR REPLACE FUNCTION event_bridge._caller()
RETURNS regrole
LANGUAGE C STABLE
AS 'MODULE_PATHNAME', 'event_bridge_caller';
COMMENT ON FUNCTION event_bridge._caller() IS
    'Internal: the role that called the API function running, whose rights it checks';

CREATE OR REPLACE FUNCTION event_bridge._check_credential_use(owner regrole, credential_name text)
RETURNS void
LANGUAGE C STABLE STRICT
AS 'MODULE_PATHNAME', 'event_bridge_check_credential_use';
COMMENT ON FUNCTION event_bridge._check_credential_use(regrole, text) IS
    'Internal: refuses a caller that is neither a superuser nor a member of the role that created the credential';

CREATE OR REPLACE FUNCTION event_bridge._hide_statement()
RETURNS void
LANGUAGE C VOLATILE
AS 'MODULE_PATHNAME', 'event_bridge_hide_statement';
COMMENT ON FUNCTION event_bridge._hide_statement() IS
    'Internal: replaces the running statement''s text in pg_stat_activity, for calls whose arguments hold secrets';

/* Validates get_records' arguments and the caller's rights; returns the stream's id. */
CREATE OR REPLACE FUNCTION event_bridge._get_records_stream(
    stream_name   text,
    shard_id      int,
    from_sequence bigint,
    max_records   int)
RETURNS int
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    s record;
BEGIN
    PERFORM event_bridge._check_admin();
    IF stream_name IS NULL OR shard_id IS NULL OR from_sequence IS NULL OR max_records IS NULL THEN
        RAISE EXCEPTION 'arguments of get_records must not be null'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    SELECT st.stream_id, st.shard_count, st.tables INTO s FROM event_bridge.streams st
     WHERE st.stream_name = _get_records_stream.stream_name;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'stream "%" does not exist', stream_name
            USING ERRCODE = 'undefined_object';
    END IF;
    PERFORM event_bridge._check_readable(s.tables);
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


CREATE OR REPLACE FUNCTION event_bridge._capture_lag_bytes()
RETURNS bigint
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT (pg_current_wal_lsn() - confirmed_flush_lsn)::bigint
      FROM pg_replication_slots
     WHERE slot_name = 'event_bridge_' || (SELECT oid FROM pg_database WHERE datname = current_database())
$$;


/* Internal C helpers of connectors. */

CREATE OR REPLACE FUNCTION event_bridge._check_endpoint(endpoint text)
RETURNS void
LANGUAGE C IMMUTABLE STRICT
AS 'MODULE_PATHNAME', 'event_bridge_check_endpoint';
COMMENT ON FUNCTION event_bridge._check_endpoint(text) IS
    'Internal: refuses an endpoint that is not an http or https URL, without quoting it';

CREATE OR REPLACE FUNCTION event_bridge._check_target(
    target     text,
    endpoint   text,
    invocation text,
    provider   text,
    region     text)
RETURNS void
LANGUAGE C IMMUTABLE
AS 'MODULE_PATHNAME', 'event_bridge_check_target';
COMMENT ON FUNCTION event_bridge._check_target(text, text, text, text, text) IS
    'Internal: refuses a target whose endpoint, invocation or credential provider (NULL: none) do not go together, without quoting the endpoint';

/* Refuses a header name that is not an HTTP token, or that frames the request. */
CREATE OR REPLACE FUNCTION event_bridge._check_header_name(name text)
RETURNS void
LANGUAGE plpgsql IMMUTABLE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF name !~ '^[!#$%&''*+.^_`|~0-9A-Za-z-]+$' THEN
        RAISE EXCEPTION 'invalid header name "%"', name
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'A header name is a token of letters, digits and !#$%&''*+.^_`|~-.';
    END IF;
    IF lower(name) IN ('content-length', 'transfer-encoding', 'connection', 'expect') THEN
        RAISE EXCEPTION 'header "%" cannot be set', name
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'event_bridge sets the headers that frame the request itself.';
    END IF;
END
$$;
COMMENT ON FUNCTION event_bridge._check_header_name(text) IS
    'Internal: refuses a header name that is not an HTTP token or that frames the request';

CREATE OR REPLACE FUNCTION event_bridge._check_filter(filter jsonb)
RETURNS void
LANGUAGE C IMMUTABLE STRICT
AS 'MODULE_PATHNAME', 'event_bridge_check_filter';
COMMENT ON FUNCTION event_bridge._check_filter(jsonb) IS
    'Internal: refuses a connector filter (EventGrid''s event-rule syntax) that is not one, naming the part at fault';

CREATE OR REPLACE FUNCTION event_bridge._filter_matches(filter jsonb, event jsonb)
RETURNS boolean
LANGUAGE C IMMUTABLE STRICT
AS 'MODULE_PATHNAME', 'event_bridge_filter_matches';
COMMENT ON FUNCTION event_bridge._filter_matches(jsonb, jsonb) IS
    'Internal: does an event {"eventId","op","table","before","after"} match a connector filter, as the delivery worker decides; for tests';

CREATE OR REPLACE FUNCTION event_bridge._check_transform(transform jsonb)
RETURNS void
LANGUAGE C IMMUTABLE STRICT
AS 'MODULE_PATHNAME', 'event_bridge_check_transform';
COMMENT ON FUNCTION event_bridge._check_transform(jsonb) IS
    'Internal: refuses a connector transform (EventGrid''s TransForm object) that is not one, naming the part at fault';

CREATE OR REPLACE FUNCTION event_bridge._transform_event(transform jsonb, event jsonb)
RETURNS text
LANGUAGE C IMMUTABLE STRICT
AS 'MODULE_PATHNAME', 'event_bridge_transform_event';
COMMENT ON FUNCTION event_bridge._transform_event(jsonb, jsonb) IS
    'Internal: what a connector transform makes of an event, as the delivery worker would; for tests';

/* A connector filter as stored: the empty filter, which keeps every event, is none. */
CREATE OR REPLACE FUNCTION event_bridge._stored_filter(filter jsonb)
RETURNS jsonb
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT nullif(filter, '{}') $$;
COMMENT ON FUNCTION event_bridge._stored_filter(jsonb) IS
    'Internal: a connector filter as stored (NULL for {}, which keeps every event)';

/* A connector transform as stored: ORIGINAL, which leaves events as they are, is none. */
CREATE OR REPLACE FUNCTION event_bridge._stored_transform(transform jsonb)
RETURNS jsonb
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT CASE WHEN transform ->> 'type' = 'ORIGINAL' THEN NULL ELSE transform END $$;
COMMENT ON FUNCTION event_bridge._stored_transform(jsonb) IS
    'Internal: a connector transform as stored (NULL for ORIGINAL, which leaves events as they are)';

CREATE OR REPLACE FUNCTION event_bridge._check_row_filter(table_name regclass, row_filter text)
RETURNS text
LANGUAGE C VOLATILE STRICT
AS 'MODULE_PATHNAME', 'event_bridge_check_row_filter';
COMMENT ON FUNCTION event_bridge._check_row_filter(regclass, text) IS
    'Internal: refuses a capture row filter that a PostgreSQL 15 publication would refuse for the table, or that uses a column outside its replica identity; returns the expression tree';

CREATE OR REPLACE FUNCTION event_bridge._wake_delivery()
RETURNS void
LANGUAGE C VOLATILE
AS 'MODULE_PATHNAME', 'event_bridge_wake_delivery';
COMMENT ON FUNCTION event_bridge._wake_delivery() IS
    'Internal: wakes this database''s delivery worker when the calling transaction commits';

CREATE OR REPLACE FUNCTION event_bridge._format_batch(
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

CREATE OR REPLACE FUNCTION event_bridge._event_body(
    stream_name   text,
    shard_id      int,
    from_sequence bigint,
    to_sequence   bigint,
    format        text,
    filter        jsonb DEFAULT NULL,
    transform     jsonb DEFAULT NULL,
    max_bytes     int   DEFAULT 6291456,
    OUT body      text,
    OUT records   int,
    OUT events    int,
    OUT filtered  int)
LANGUAGE C VOLATILE
AS 'MODULE_PATHNAME', 'event_bridge_event_body';
COMMENT ON FUNCTION event_bridge._event_body(text, int, bigint, bigint, text, jsonb, jsonb, int) IS
    'Internal: the HTTP body the delivery worker makes of a range of a shard''s records in a format, with a filter and a transform, and how many records it holds, events it has and records it left out; for tests';

CREATE OR REPLACE FUNCTION event_bridge._signature(
    algorithm text,
    path      text,
    query     text,
    headers   text[],
    body      text,
    key_id    text,
    secret    text,
    date      text)
RETURNS text
LANGUAGE C IMMUTABLE
AS 'MODULE_PATHNAME', 'event_bridge_signature';
COMMENT ON FUNCTION event_bridge._signature(text, text, text, text[], text, text, text, text) IS
    'Internal: a request signature (acs3, sdk-hmac, webhook) made from given inputs as the delivery worker makes it, for tests';


/*
 * The first sequence of a shard whose record was appended at or after
 * start_ms (epoch milliseconds), or the shard's next sequence if there is
 * none yet; NULL start_ms means the earliest retained record.  A binary
 * search: inside a shard, system_time grows with the sequence.
 */
CREATE OR REPLACE FUNCTION event_bridge._start_sequence(stream_id int, shard_id int, start_ms bigint)
RETURNS bigint
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
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
CREATE OR REPLACE FUNCTION event_bridge._lock_offsets()
RETURNS void
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$ LOCK TABLE event_bridge.connector_shards IN SHARE ROW EXCLUSIVE MODE $$;
COMMENT ON FUNCTION event_bridge._lock_offsets() IS
    'Internal: waits for the delivery worker''s turn in progress and holds its next one back until the calling transaction ends';

/*
 * Checks the caller's rights and finds a connector by name, locking its row
 * against concurrent API calls, without _lock_offsets: for calls that leave
 * the offsets alone and so need not hold the delivery worker back.
 */
CREATE OR REPLACE FUNCTION event_bridge._find_connector(connector_name text)
RETURNS int
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    cid int;
BEGIN
    PERFORM event_bridge._check_admin();
    IF connector_name IS NULL THEN
        RAISE EXCEPTION 'connector name must not be null'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    SELECT c.connector_id INTO cid FROM event_bridge.connectors c
     WHERE c.connector_name = _find_connector.connector_name FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'connector "%" does not exist', connector_name
            USING ERRCODE = 'undefined_object';
    END IF;
    RETURN cid;
END
$$;
COMMENT ON FUNCTION event_bridge._find_connector(text) IS
    'Internal: checks rights, finds and locks a connector by name (not the offsets), returns its id';

/*
 * Checks the caller's rights, takes _lock_offsets, locks a connector against
 * concurrent API calls, bumps its version so that the worker reloads it, and
 * returns its id.
 */
CREATE OR REPLACE FUNCTION event_bridge._lock_connector(connector_name text)
RETURNS int
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    cid int;
BEGIN
    PERFORM event_bridge._check_admin();    -- before any lock is taken
    PERFORM event_bridge._lock_offsets();
    cid := event_bridge._find_connector(connector_name);
    UPDATE event_bridge.connectors c SET version = c.version + 1 WHERE c.connector_id = cid;
    RETURN cid;
END
$$;
COMMENT ON FUNCTION event_bridge._lock_connector(text) IS
    'Internal: checks rights, locks a connector by name, bumps its version so the delivery worker reloads it, returns its id';

/*
 * Copies records from_sequence..to_sequence of a stream's shard into a
 * connector's dead letters with the outcome that failed them; a record that
 * is a dead letter already (a replay after reset_connector) gets the new
 * outcome.  Returns how many.  The delivery worker (on_failure 'dead_letter')
 * and skip_batch both call it.
 */
CREATE OR REPLACE FUNCTION event_bridge._add_dead_letters(
    connector_id  int,
    stream_id     int,
    shard_id      int,
    from_sequence bigint,
    to_sequence   bigint,
    failed_at     timestamptz,
    attempts      int,
    http_status   int,
    error         text,
    filtered      bigint[])
RETURNS bigint
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
    WITH added AS (
        INSERT INTO event_bridge.dead_letter_records AS d (connector_id, shard_id, sequence,
            system_time, record_id, operation, table_name, partition_key, data, failed_at,
            attempts, http_status, error, table_version)
        SELECT _add_dead_letters.connector_id, r.shard_id, r.sequence, r.system_time, r.record_id,
               r.operation, r.table_name, r.partition_key, r.data, _add_dead_letters.failed_at,
               _add_dead_letters.attempts, _add_dead_letters.http_status, _add_dead_letters.error,
               r.table_version
          FROM event_bridge.records r
         WHERE r.stream_id = _add_dead_letters.stream_id AND r.shard_id = _add_dead_letters.shard_id
           AND r.sequence BETWEEN from_sequence AND to_sequence
           AND r.sequence <> ALL (_add_dead_letters.filtered)
        ON CONFLICT ON CONSTRAINT dead_letter_records_pkey DO UPDATE
           SET failed_at = excluded.failed_at, attempts = d.attempts + excluded.attempts,
               http_status = excluded.http_status, error = excluded.error, redeliver = false
        RETURNING 1)
    SELECT count(*) FROM added
$$;
COMMENT ON FUNCTION event_bridge._add_dead_letters(int, int, int, bigint, bigint, timestamptz, int, int, text, bigint[]) IS
    'Internal: copies a shard''s records, but those the connector''s filter left out, into a connector''s dead letters with the outcome that failed them, returns how many';

/* A start time in epoch milliseconds (NULL stays NULL: the earliest retained). */
CREATE OR REPLACE FUNCTION event_bridge._start_ms(start_time timestamptz)
RETURNS bigint
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
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


/* An endpoint as the views show it: without the password of its userinfo. */
CREATE OR REPLACE FUNCTION event_bridge._endpoint_without_secrets(endpoint text)
RETURNS text
LANGUAGE sql IMMUTABLE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT regexp_replace(endpoint, '^([A-Za-z][A-Za-z0-9+.-]*://)[^/?#@]*@', '\1***@')
$$;
COMMENT ON FUNCTION event_bridge._endpoint_without_secrets(text) IS
    'Internal: an endpoint URL with its userinfo masked, as the status views show it';

CREATE OR REPLACE FUNCTION event_bridge._drop_attempts()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
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
