/* ---------------------------------------------------------------------
 * Connectors
 *
 * A connector delivers one stream to one HTTP endpoint (a DataHub
 * DataConnector).  The database's delivery worker reads each shard's
 * records after the connector's offset, POSTs them in batches, one batch
 * in flight per shard, and moves the offset only after a 2xx answer.
 * ------------------------------------------------------------------- */

/*
 * Checks a connector's settings as create_connector and alter_connector take
 * them, and returns the headers parsed.  headers is parsed here, not by the
 * call: a parse error would quote the text.  Errors name a header, never its
 * value, which is a secret.
 */
CREATE OR REPLACE FUNCTION event_bridge._check_connector_settings(
    endpoint           text,
    format             text,
    batch_size         int,
    batch_window       interval,
    retry_interval     interval,
    max_retries        int,
    timeout            interval,
    headers            text,
    max_request_bytes  int,
    retry_strategy     text,
    max_retry_interval interval,
    on_failure         text,
    max_record_age     interval,
    target             text,
    invocation         text,
    provider           text,
    region             text,
    filter             jsonb,
    transform          jsonb,
    key_transform      jsonb)
RETURNS jsonb
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    h  record;
    hj jsonb;
BEGIN
    IF target <> 'kafka' THEN
        PERFORM event_bridge._check_endpoint(endpoint);
    END IF;
    IF invocation NOT IN ('sync', 'async') THEN
        RAISE EXCEPTION 'unknown invocation "%"', invocation
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'invocation is sync (the function''s answer acknowledges the batch) or async (the platform queues the batch and answers 202).';
    END IF;
    PERFORM event_bridge._check_target(target, endpoint, invocation, provider, region);
    IF format NOT IN ('datahub', 'dis', 'json', 'cloudevents') THEN
        RAISE EXCEPTION 'unknown event format "%"', format
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'The formats are datahub (Alibaba Function Compute), dis (Huawei FunctionGraph), json (events with named columns) and cloudevents (CloudEvents 1.0).';
    END IF;
    IF filter IS NOT NULL AND filter <> '{}' THEN
        PERFORM event_bridge._check_filter(filter);
    END IF;
    IF transform IS NOT NULL THEN
        PERFORM event_bridge._check_transform(transform);
        IF transform ->> 'type' <> 'ORIGINAL' AND format <> 'json' THEN
            RAISE EXCEPTION 'a % transform needs format json', transform ->> 'type'
                USING ERRCODE = 'invalid_parameter_value',
                      DETAIL = format('The body is a JSON array of the transformed json events, not %s events.', format),
                      HINT = 'Pass format => ''json''.';
        END IF;
    END IF;
    IF key_transform IS NOT NULL THEN
        IF target <> 'kafka' THEN
            RAISE EXCEPTION 'key_transform is for target kafka'
                USING ERRCODE = 'invalid_parameter_value',
                      DETAIL = 'It makes the key of each Kafka message.';
        END IF;
        PERFORM event_bridge._check_transform(key_transform);
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
    IF retry_interval < interval '10 milliseconds' OR retry_interval > interval '1 day' THEN
        RAISE EXCEPTION 'retry_interval "%" is out of range', retry_interval
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'retry_interval must be between 10 milliseconds and 1 day.';
    END IF;
    IF timeout <= interval '0' OR timeout > interval '1 day' THEN
        RAISE EXCEPTION 'timeout "%" is out of range', timeout
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'timeout must be positive and at most 1 day.';
    END IF;
    IF retry_strategy NOT IN ('fixed', 'exponential') THEN
        RAISE EXCEPTION 'unknown retry_strategy "%"', retry_strategy
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'The strategies are fixed (every retry_interval) and exponential (retry_interval doubled at each failure, with jitter, up to max_retry_interval).';
    END IF;
    IF max_retry_interval < retry_interval OR max_retry_interval > interval '1 day' THEN
        RAISE EXCEPTION 'max_retry_interval "%" is out of range', max_retry_interval
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'max_retry_interval must be at least retry_interval and at most 1 day.';
    END IF;
    IF on_failure NOT IN ('suspend', 'dead_letter') THEN
        RAISE EXCEPTION 'unknown on_failure "%"', on_failure
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'on_failure is suspend (the shard stops until resume_connector) or dead_letter (the failing records go to event_bridge.dead_letters and delivery goes on).';
    END IF;
    IF max_record_age <= interval '0' THEN
        RAISE EXCEPTION 'max_record_age "%" must be positive', max_record_age
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'NULL means no limit.';
    END IF;
    IF max_request_bytes < 1024 OR max_request_bytes > 268435456 THEN
        RAISE EXCEPTION 'max_request_bytes % is out of range', max_request_bytes
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'max_request_bytes must be between 1024 (1 kB) and 268435456 (256 MB).';
    END IF;
    IF max_retries < 0 THEN
        RAISE EXCEPTION 'max_retries % must not be negative', max_retries
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    BEGIN
        hj := headers::jsonb;
    EXCEPTION WHEN invalid_text_representation THEN
        RAISE EXCEPTION 'headers are not valid JSON'
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Pass headers like ''{"X-Auth-Token": "..."}''.';
    END;
    IF jsonb_typeof(hj) <> 'object' THEN
        RAISE EXCEPTION 'headers must be a JSON object'
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = format('headers is a JSON %s.', jsonb_typeof(hj)),
                  HINT = 'Pass headers like ''{"X-Auth-Token": "..."}''.';
    END IF;
    FOR h IN SELECT e.key, e.value FROM jsonb_each(hj) e ORDER BY e.key LOOP
        PERFORM event_bridge._check_header_name(h.key);
        IF jsonb_typeof(h.value) <> 'string' THEN
            RAISE EXCEPTION 'value of header "%" must be a JSON string', h.key
                USING ERRCODE = 'invalid_parameter_value',
                      DETAIL = format('It is a JSON %s.', jsonb_typeof(h.value));
        END IF;
        IF (h.value #>> '{}') ~ '[\r\n]' THEN
            RAISE EXCEPTION 'value of header "%" must not contain a line break', h.key
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        -- What a platform target signs is set by event_bridge alone.
        IF target <> 'http' AND (lower(h.key) IN ('content-type', 'host', 'authorization')
                                 OR lower(h.key) ~ '^x-(acs|sdk|amz|fc)-') THEN
            RAISE EXCEPTION 'header "%" cannot be set for target %', h.key, target
                USING ERRCODE = 'invalid_parameter_value',
                      DETAIL = 'event_bridge sets the headers that sign the request itself.';
        END IF;
    END LOOP;

    RETURN hj;
END
$$;
COMMENT ON FUNCTION event_bridge._check_connector_settings(text, text, int, interval, interval, int, interval, text, int, text, interval, text, interval, text, text, text, text, jsonb, jsonb, jsonb) IS
    'Internal: refuses connector settings out of range, and returns the headers parsed';

/*
 * Finds the credential a connector is to use and checks that the caller may
 * use it; a NULL name is no credential (a row of NULLs).
 */
CREATE OR REPLACE FUNCTION event_bridge._use_credential(
    credential_name   text,
    OUT credential_id int,
    OUT provider      text,
    OUT region        text)
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    owner regrole;
BEGIN
    IF credential_name IS NULL THEN
        RETURN;
    END IF;
    SELECT cs.credential_id, cs.provider, cs.region, cs.owner INTO credential_id, provider, region, owner
      FROM event_bridge.credential_secrets cs WHERE cs.credential_name = _use_credential.credential_name
       FOR KEY SHARE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'credential "%" does not exist', credential_name
            USING ERRCODE = 'undefined_object',
                  HINT = 'Create it with event_bridge.create_credential.';
    END IF;
    PERFORM event_bridge._check_credential_use(owner, credential_name);
END
$$;
COMMENT ON FUNCTION event_bridge._use_credential(text) IS
    'Internal: finds a credential for a connector and checks that the caller may use it';

CREATE OR REPLACE FUNCTION event_bridge.create_connector(
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
    headers        text     DEFAULT '{}',
    max_request_bytes int   DEFAULT 6291456,
    retry_strategy text     DEFAULT 'fixed',
    max_retry_interval interval DEFAULT '5 minutes',
    on_failure     text     DEFAULT 'suspend',
    max_record_age interval DEFAULT NULL,
    partial_batch_response boolean DEFAULT false,
    target         text     DEFAULT 'http',
    credential     text     DEFAULT NULL,
    invocation     text     DEFAULT 'sync',
    filter         jsonb    DEFAULT NULL,
    transform      jsonb    DEFAULT NULL,
    key_transform  jsonb    DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
-- headers holds secrets: a refused call must not log its statement.
SET log_min_error_statement = panic
AS $$
DECLARE
    s        record;
    cid      int;
    start_ms bigint := event_bridge._start_ms(start_time);
    hj       jsonb;
    cr       record;
BEGIN
    PERFORM event_bridge._hide_statement();
    PERFORM event_bridge._check_admin();

    IF connector_name IS NULL OR stream_name IS NULL OR endpoint IS NULL OR format IS NULL
       OR batch_size IS NULL OR batch_window IS NULL OR retry_interval IS NULL
       OR max_retries IS NULL OR timeout IS NULL OR headers IS NULL
       OR max_request_bytes IS NULL OR retry_strategy IS NULL OR max_retry_interval IS NULL
       OR on_failure IS NULL OR partial_batch_response IS NULL OR target IS NULL
       OR invocation IS NULL THEN
        RAISE EXCEPTION 'arguments of create_connector must not be null'
            USING ERRCODE = 'null_value_not_allowed',
                  DETAIL = 'Only start_time (then the earliest retained record), max_record_age (then no limit), credential (then none), filter (then every event), transform and key_transform (then ORIGINAL) may be null.';
    END IF;
    IF connector_name !~ '^[A-Za-z_][A-Za-z0-9_.-]{0,127}$' THEN
        RAISE EXCEPTION 'invalid connector name "%"', connector_name
            USING ERRCODE = 'invalid_name',
                  DETAIL = 'A connector name starts with a letter or underscore and holds at most 128 letters, digits, "_", "." or "-".';
    END IF;
    SELECT st.stream_id, st.shard_count, st.tables INTO s FROM event_bridge.streams st
     WHERE st.stream_name = create_connector.stream_name;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'stream "%" does not exist', stream_name
            USING ERRCODE = 'undefined_object';
    END IF;
    PERFORM event_bridge._check_readable(s.tables);
    IF EXISTS (SELECT FROM event_bridge.connectors c WHERE c.connector_name = create_connector.connector_name) THEN
        RAISE EXCEPTION 'connector "%" already exists', connector_name
            USING ERRCODE = 'duplicate_object';
    END IF;
    cr := event_bridge._use_credential(credential);
    hj := event_bridge._check_connector_settings(endpoint, format, batch_size, batch_window,
        retry_interval, max_retries, timeout, headers, max_request_bytes, retry_strategy,
        max_retry_interval, on_failure, max_record_age, target, invocation, cr.provider, cr.region,
        filter, transform, key_transform);

    cid := nextval('event_bridge.connector_id_seq');
    INSERT INTO event_bridge.connectors (connector_id, connector_name, stream_id, endpoint, format,
        batch_size, batch_window, retry_interval, max_retries, timeout, headers, max_request_bytes,
        retry_strategy, max_retry_interval, on_failure, max_record_age, partial_batch_response,
        target, credential_id, invocation, filter, transform, key_transform)
    VALUES (cid, connector_name, s.stream_id, endpoint, format,
        batch_size, batch_window, retry_interval, max_retries, timeout, hj, max_request_bytes,
        retry_strategy, max_retry_interval, on_failure, max_record_age, partial_batch_response,
        target, cr.credential_id, invocation, event_bridge._stored_filter(filter),
        event_bridge._stored_transform(transform), event_bridge._stored_transform(key_transform));
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
COMMENT ON FUNCTION event_bridge.create_connector(text, text, text, timestamptz, text, int, interval, interval, int, interval, text, int, text, interval, text, interval, boolean, text, text, text, jsonb, jsonb, jsonb) IS
    'Creates a connector that sends the records of a stream appended from start_time on to an http(s) endpoint, a function platform (target, signed with credential) or a Kafka topic (key_transform makes the keys), in order per shard, in the datahub, dis, json or cloudevents event format, keeping the events that match filter and reshaped by transform (EventGrid''s rule syntax), retrying failed batches by retry_strategy and then suspending the shard or dead-lettering the failing records (on_failure)';

CREATE OR REPLACE FUNCTION event_bridge.alter_connector(
    connector_name     text,
    endpoint           text     DEFAULT NULL,
    format             text     DEFAULT NULL,
    batch_size         int      DEFAULT NULL,
    batch_window       interval DEFAULT NULL,
    retry_interval     interval DEFAULT NULL,
    max_retries        int      DEFAULT NULL,
    timeout            interval DEFAULT NULL,
    headers            text     DEFAULT NULL,
    max_request_bytes  int      DEFAULT NULL,
    retry_strategy     text     DEFAULT NULL,
    max_retry_interval interval DEFAULT NULL,
    on_failure         text     DEFAULT NULL,
    max_record_age     interval DEFAULT NULL,
    partial_batch_response boolean DEFAULT NULL,
    target             text     DEFAULT NULL,
    credential         text     DEFAULT NULL,
    invocation         text     DEFAULT NULL,
    filter             jsonb    DEFAULT NULL,
    transform          jsonb    DEFAULT NULL,
    key_transform      jsonb    DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
-- headers holds secrets: a refused call must not log its statement.
SET log_min_error_statement = panic
AS $$
DECLARE
    cid int;
    c   record;
    hj  jsonb;
    cr  record;
BEGIN
    PERFORM event_bridge._hide_statement();
    cid := event_bridge._lock_connector(alter_connector.connector_name);
    SELECT co.*, st.tables, cs.credential_name INTO c
      FROM event_bridge.connectors co JOIN event_bridge.streams st ON st.stream_id = co.stream_id
      LEFT JOIN event_bridge.credential_secrets cs ON cs.credential_id = co.credential_id
     WHERE co.connector_id = cid;
    PERFORM event_bridge._check_readable(c.tables);
    -- '' removes the credential.  Whoever sends a credential somewhere new must be allowed to use it.
    IF alter_connector.credential IS NOT NULL OR alter_connector.endpoint IS NOT NULL
       OR alter_connector.target IS NOT NULL THEN
        cr := event_bridge._use_credential(nullif(coalesce(alter_connector.credential, c.credential_name), ''));
    ELSE
        SELECT cs.credential_id, cs.provider, cs.region INTO cr
          FROM event_bridge.credential_secrets cs WHERE cs.credential_id = c.credential_id;
    END IF;
    hj := event_bridge._check_connector_settings(
        coalesce(alter_connector.endpoint, c.endpoint),
        coalesce(alter_connector.format, c.format),
        coalesce(alter_connector.batch_size, c.batch_size),
        coalesce(alter_connector.batch_window, c.batch_window),
        coalesce(alter_connector.retry_interval, c.retry_interval),
        coalesce(alter_connector.max_retries, c.max_retries),
        coalesce(alter_connector.timeout, c.timeout),
        coalesce(alter_connector.headers, c.headers::text),
        coalesce(alter_connector.max_request_bytes, c.max_request_bytes),
        coalesce(alter_connector.retry_strategy, c.retry_strategy),
        coalesce(alter_connector.max_retry_interval, c.max_retry_interval),
        coalesce(alter_connector.on_failure, c.on_failure),
        nullif(coalesce(alter_connector.max_record_age, c.max_record_age), interval '0'),
        coalesce(alter_connector.target, c.target),
        coalesce(alter_connector.invocation, c.invocation),
        cr.provider, cr.region,
        coalesce(alter_connector.filter, c.filter),
        coalesce(alter_connector.transform, c.transform),
        coalesce(alter_connector.key_transform, c.key_transform));
    UPDATE event_bridge.connectors co
       SET endpoint = coalesce(alter_connector.endpoint, co.endpoint),
           format = coalesce(alter_connector.format, co.format),
           batch_size = coalesce(alter_connector.batch_size, co.batch_size),
           batch_window = coalesce(alter_connector.batch_window, co.batch_window),
           retry_interval = coalesce(alter_connector.retry_interval, co.retry_interval),
           max_retries = coalesce(alter_connector.max_retries, co.max_retries),
           timeout = coalesce(alter_connector.timeout, co.timeout),
           headers = hj,
           max_request_bytes = coalesce(alter_connector.max_request_bytes, co.max_request_bytes),
           retry_strategy = coalesce(alter_connector.retry_strategy, co.retry_strategy),
           max_retry_interval = coalesce(alter_connector.max_retry_interval, co.max_retry_interval),
           on_failure = coalesce(alter_connector.on_failure, co.on_failure),
           -- '0' removes the limit: NULL leaves it as it is
           max_record_age = nullif(coalesce(alter_connector.max_record_age, co.max_record_age),
                                   interval '0'),
           partial_batch_response = coalesce(alter_connector.partial_batch_response,
                                             co.partial_batch_response),
           target = coalesce(alter_connector.target, co.target),
           credential_id = cr.credential_id,
           invocation = coalesce(alter_connector.invocation, co.invocation),
           filter = event_bridge._stored_filter(coalesce(alter_connector.filter, co.filter)),
           transform = event_bridge._stored_transform(coalesce(alter_connector.transform,
                                                               co.transform)),
           key_transform = event_bridge._stored_transform(coalesce(alter_connector.key_transform,
                                                                   co.key_transform))
     WHERE co.connector_id = cid;
    PERFORM event_bridge._wake_delivery();
END
$$;
COMMENT ON FUNCTION event_bridge.alter_connector(text, text, text, int, interval, interval, int, interval, text, int, text, interval, text, interval, boolean, text, text, text, jsonb, jsonb, jsonb) IS
    'Changes a connector''s settings (NULL: unchanged; max_record_age ''0'': no limit; credential '''': none; filter ''{}'': none; transform ''{"type": "ORIGINAL"}'': none); its offsets are kept, and a batch in flight finishes under the old settings';

CREATE OR REPLACE FUNCTION event_bridge.stop_connector(name text)
RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
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

CREATE OR REPLACE FUNCTION event_bridge.start_connector(name text)
RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
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

CREATE OR REPLACE FUNCTION event_bridge.resume_connector(name text)
RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
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

CREATE OR REPLACE FUNCTION event_bridge.reset_connector(name text, start_time timestamptz)
RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    cid      int := event_bridge._lock_connector(reset_connector.name);
    start_ms bigint := event_bridge._start_ms(start_time);
BEGIN
    PERFORM event_bridge._check_readable(s.tables)
       FROM event_bridge.connectors c JOIN event_bridge.streams s ON s.stream_id = c.stream_id
      WHERE c.connector_id = cid;
    UPDATE event_bridge.connector_shards cs
       SET delivered_sequence = event_bridge._start_sequence(c.stream_id, cs.shard_id, start_ms) - 1,
           skip_before = coalesce(start_ms, 0),
           position_generation = cs.position_generation + 1,
           suspended = false,
           failures = 0,
           retry_last_sequence = NULL,
           next_attempt_at = NULL
      FROM event_bridge.connectors c
     WHERE c.connector_id = cid AND cs.connector_id = cid;
    PERFORM event_bridge._wake_delivery();
END
$$;
COMMENT ON FUNCTION event_bridge.reset_connector(text, timestamptz) IS
    'Moves every shard of a connector to its first record appended at or after start_time (NULL: the earliest retained), to replay or to skip ahead; clears suspensions';

CREATE OR REPLACE FUNCTION event_bridge.drop_connector(name text)
RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
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


/* ---------------------------------------------------------------------
 * Dead letters (on_failure 'dead_letter', skip_batch)
 * ------------------------------------------------------------------- */

CREATE OR REPLACE FUNCTION event_bridge.skip_batch(connector_name text, shard_id int)
RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    cid int := event_bridge._lock_connector(skip_batch.connector_name);
    sh  record;
    n   bigint;
BEGIN
    IF shard_id IS NULL THEN
        RAISE EXCEPTION 'shard_id must not be null'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    SELECT cs.*, c.stream_id INTO sh
      FROM event_bridge.connector_shards cs
      JOIN event_bridge.connectors c ON c.connector_id = cs.connector_id
     WHERE cs.connector_id = cid AND cs.shard_id = skip_batch.shard_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'connector "%" has no shard %', connector_name, shard_id
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF NOT sh.suspended THEN
        RAISE EXCEPTION 'shard % of connector "%" is not suspended', shard_id, connector_name
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'skip_batch moves the batch that suspended a shard to the dead letters.';
    END IF;
    IF sh.retry_last_sequence IS NULL THEN
        RAISE EXCEPTION 'shard % of connector "%" has no failed batch', shard_id, connector_name
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = 'It was suspended because the endpoint refused another shard''s batch.',
                  HINT = format('Fix the endpoint, then run SELECT event_bridge.resume_connector(%L).',
                                connector_name);
    END IF;
    n := event_bridge._add_dead_letters(cid, sh.stream_id, sh.shard_id, sh.delivered_sequence + 1,
        sh.retry_last_sequence, now(), greatest(sh.failures, 1), sh.last_http_status,
        coalesce(sh.last_error, 'skipped by skip_batch'), '{}');
    UPDATE event_bridge.connector_shards cs
       SET delivered_sequence = cs.retry_last_sequence,
           retry_last_sequence = NULL,
           position_generation = cs.position_generation + 1,
           suspended = false,
           failures = 0,
           next_attempt_at = NULL
     WHERE cs.connector_id = cid AND cs.shard_id = skip_batch.shard_id;
    PERFORM event_bridge._wake_delivery();
    RETURN n;
END
$$;
COMMENT ON FUNCTION event_bridge.skip_batch(text, int) IS
    'Moves the batch that suspended a connector''s shard to the dead letters and resumes the shard after it; returns the number of records moved';

/* Checks a list of eventIds ("<shard>:<sequence>"). */
CREATE OR REPLACE FUNCTION event_bridge._check_event_ids(event_ids text[])
RETURNS void
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    bad text;
BEGIN
    SELECT e INTO bad FROM unnest(event_ids) e
     WHERE e IS NULL OR e !~ '^[0-9]{1,9}:[0-9]{1,18}$' LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'invalid eventId "%"', bad
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'An eventId is "<shard>:<sequence>", as in event_bridge.dead_letters.event_id.';
    END IF;
END
$$;
COMMENT ON FUNCTION event_bridge._check_event_ids(text[]) IS
    'Internal: refuses an eventId that is not "<shard>:<sequence>"';

CREATE OR REPLACE FUNCTION event_bridge.redeliver_dead_letters(
    connector_name text,
    event_ids      text[] DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    cid int := event_bridge._find_connector(redeliver_dead_letters.connector_name);
    n   bigint;
BEGIN
    PERFORM event_bridge._check_readable(s.tables)
       FROM event_bridge.connectors c JOIN event_bridge.streams s ON s.stream_id = c.stream_id
      WHERE c.connector_id = cid;
    PERFORM event_bridge._check_event_ids(event_ids);
    UPDATE event_bridge.dead_letter_records d SET redeliver = true
     WHERE d.connector_id = cid AND NOT d.redeliver
       AND (redeliver_dead_letters.event_ids IS NULL
            OR (d.shard_id, d.sequence) IN (SELECT split_part(e, ':', 1)::int, split_part(e, ':', 2)::bigint
                                              FROM unnest(redeliver_dead_letters.event_ids) e));
    GET DIAGNOSTICS n = ROW_COUNT;
    -- the worker looks for dead letters to send when it reloads the connector
    UPDATE event_bridge.connectors c SET version = c.version + 1 WHERE c.connector_id = cid;
    PERFORM event_bridge._wake_delivery();
    RETURN n;
END
$$;
COMMENT ON FUNCTION event_bridge.redeliver_dead_letters(text, text[]) IS
    'Has the delivery worker send a connector''s dead letters (all, or those of event_ids) again, in batches of their own, once each; the ones acknowledged leave the dead letters; returns how many were queued';

CREATE OR REPLACE FUNCTION event_bridge.purge_dead_letters(
    connector_name text,
    older_than     interval DEFAULT '0')
RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    cid int := event_bridge._find_connector(purge_dead_letters.connector_name);
    n   bigint;
BEGIN
    IF older_than IS NULL THEN
        RAISE EXCEPTION 'older_than must not be null'
            USING ERRCODE = 'null_value_not_allowed',
                HINT = 'Pass ''0'' to purge every dead letter of the connector.';
    END IF;
    IF older_than < interval '0' THEN
        RAISE EXCEPTION 'older_than must be an interval of at least 0'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    DELETE FROM event_bridge.dead_letter_records d
     WHERE d.connector_id = cid AND d.failed_at <= now() - older_than;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$$;
COMMENT ON FUNCTION event_bridge.purge_dead_letters(text, interval) IS
    'Deletes a connector''s dead letters that failed at least older_than ago (default: all); returns how many';
