/* ---------------------------------------------------------------------
 * Catalog: the extension's tables, created by a fresh install only (an
 * upgrade script changes them in place).  Only the extension's owner may
 * read or write them: admins go through the API and the views.
 * ------------------------------------------------------------------- */

/*
 * One row per stream.  The capture worker decodes changes of this table
 * (REPLICA IDENTITY FULL) in commit order, so a stream captures the changes
 * made after it in its own transaction and every transaction that commits
 * later.  capture_lsn is set by the capture worker once it has decoded that
 * creation.
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
    PRIMARY KEY (stream_id, shard_id, sequence),
    table_version bigint
);
COMMENT ON TABLE event_bridge.records IS
    'TUPLE records of every stream, per shard in gapless sequence order';

/*
 * One row per shape of a captured table: its name, its columns (names and
 * types, in the order the record's data array has them after the eight
 * metadata fields) and its key columns.  The capture worker adds a version,
 * in the transaction that stores the records naming it
 * (records.table_version), when it decodes a change of a table whose shape
 * it has not stored: DDL makes a new version.  Records captured by 0.1 name
 * none.
 */
CREATE TABLE event_bridge.table_versions (
    table_version bigint PRIMARY KEY,
    table_name    text NOT NULL,
    columns       jsonb NOT NULL,
    key_columns   jsonb NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE event_bridge.table_versions IS
    'The shapes of captured tables (name, columns, key) that records name';

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

/* Credentials (see 45_credentials.sql). */

/*
 * One row per credential: what signs or authenticates a connector's
 * requests.  secret and session_token are secrets: only the extension's
 * owner reads this table, and the credentials view shows key_id (an access
 * key id or a header name, never a secret).  owner is the role that created
 * the credential; only its members (and superusers) may use it in a
 * connector, so that no other admin can point it at an endpoint of theirs.
 */
CREATE TABLE event_bridge.credential_secrets (
    credential_id   int PRIMARY KEY,
    credential_name text NOT NULL UNIQUE,
    provider        text NOT NULL
                    CHECK (provider IN ('aliyun', 'huaweicloud', 'aws', 'webhook', 'token', 'kafka')),
    owner           regrole NOT NULL,
    key_id          text,
    secret          text NOT NULL,
    session_token   text,
    region          text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    rotated_at      timestamptz,
    options         jsonb
);
CREATE SEQUENCE event_bridge.credential_id_seq AS int OWNED BY event_bridge.credential_secrets.credential_id;
COMMENT ON TABLE event_bridge.credential_secrets IS
    'Credentials that sign or authenticate connectors'' requests; readable by the extension''s owner only';
SELECT pg_catalog.pg_extension_config_dump('event_bridge.credential_secrets', '');
SELECT pg_catalog.pg_extension_config_dump('event_bridge.credential_id_seq', '');

/* Connectors (see 40_connectors.sql). */

/*
 * One row per connector.  Every API call that changes a connector bumps
 * version; the delivery worker reloads a connector when its version moved.
 * headers holds secrets (tokens): the status views show only their names.
 * error is set by the delivery worker when it cannot use the connector
 * (state ERROR), and cleared when it can again.
 */
CREATE TABLE event_bridge.connectors (
    connector_id   int PRIMARY KEY,
    connector_name text NOT NULL UNIQUE,
    stream_id      int NOT NULL REFERENCES event_bridge.streams ON DELETE CASCADE,
    endpoint       text NOT NULL,
    format         text NOT NULL CHECK (format IN ('datahub', 'dis', 'json', 'cloudevents')),
    batch_size     int NOT NULL CHECK (batch_size BETWEEN 1 AND 10000),
    batch_window   interval NOT NULL,
    retry_interval interval NOT NULL,
    max_retries    int NOT NULL CHECK (max_retries >= 0),
    timeout        interval NOT NULL,
    headers        jsonb NOT NULL DEFAULT '{}',
    stopped        boolean NOT NULL DEFAULT false,
    version        bigint NOT NULL DEFAULT 1,
    created_at     timestamptz NOT NULL DEFAULT now(),
    max_request_bytes int NOT NULL DEFAULT 6291456
                   CHECK (max_request_bytes BETWEEN 1024 AND 268435456),
    error          text,
    retry_strategy text NOT NULL DEFAULT 'fixed' CHECK (retry_strategy IN ('fixed', 'exponential')),
    max_retry_interval interval NOT NULL DEFAULT '5 minutes',
    on_failure     text NOT NULL DEFAULT 'suspend' CHECK (on_failure IN ('suspend', 'dead_letter')),
    max_record_age interval,
    partial_batch_response boolean NOT NULL DEFAULT false,
    target         text NOT NULL DEFAULT 'http'
                   CHECK (target IN ('http', 'fc', 'functiongraph', 'lambda', 'kafka')),
    credential_id  int REFERENCES event_bridge.credential_secrets,
    invocation     text NOT NULL DEFAULT 'sync' CHECK (invocation IN ('sync', 'async')),
    filter         jsonb,
    transform      jsonb,
    key_transform  jsonb
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
 * after a restart; next_attempt_at is when that retry is due.
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
    next_attempt_at     timestamptz,
    filtered            bigint NOT NULL DEFAULT 0,
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

/*
 * Dead letters: records a connector with on_failure 'dead_letter' gave up
 * on, copied from event_bridge.records (which retention empties) with their
 * last status and error.  The delivery worker adds them and moves the
 * shard's offset past them in one transaction; redeliver asks the worker to
 * send them again, and it deletes the ones acknowledged.  attempts counts
 * the failed attempts of the batches that held the record since the failing
 * began.  Admins see them through the view dead_letters.
 */
CREATE TABLE event_bridge.dead_letter_records (
    connector_id  int NOT NULL REFERENCES event_bridge.connectors ON DELETE CASCADE,
    shard_id      int NOT NULL,
    sequence      bigint NOT NULL,
    system_time   bigint NOT NULL,
    record_id     bigint NOT NULL,
    operation     "char" NOT NULL,
    table_name    text NOT NULL,
    partition_key text,
    data          text NOT NULL,
    failed_at     timestamptz NOT NULL,
    attempts      int NOT NULL,
    http_status   int,
    error         text,
    redeliver     boolean NOT NULL DEFAULT false,
    table_version bigint,
    PRIMARY KEY (connector_id, shard_id, sequence)
);
CREATE INDEX dead_letter_records_redeliver ON event_bridge.dead_letter_records
    (connector_id, shard_id, sequence) WHERE redeliver;
COMMENT ON TABLE event_bridge.dead_letter_records IS
    'Records that connectors with on_failure dead_letter gave up on, with their last status and error';

/*
 * Capture filters (DESIGN 9.5): per stream and table, a row filter and a
 * column list with PostgreSQL 15 publication semantics.  row_filter and
 * columns are what set_table_filter was given (and what pg_dump keeps);
 * row_filter_tree and column_numbers are derived from them by a trigger
 * (also when pg_dump's copy is restored) and are what the capture worker
 * applies, in commit order.
 */
CREATE TABLE event_bridge.table_filter_rules (
    stream_id       int NOT NULL REFERENCES event_bridge.streams ON DELETE CASCADE,
    table_name      regclass NOT NULL,
    row_filter      text,
    columns         name[],
    row_filter_tree text,
    column_numbers  int2[],
    PRIMARY KEY (stream_id, table_name)
);
COMMENT ON TABLE event_bridge.table_filter_rules IS
    'Capture filters: the rows and columns of a table that a stream keeps';
SELECT pg_catalog.pg_extension_config_dump('event_bridge.table_filter_rules', '');

SELECT pg_catalog.pg_extension_config_dump('event_bridge.connectors', '');
SELECT pg_catalog.pg_extension_config_dump('event_bridge.connector_id_seq', '');
-- Offsets go with the connectors: a restored connector goes on from them.
SELECT pg_catalog.pg_extension_config_dump('event_bridge.connector_shards', '');
