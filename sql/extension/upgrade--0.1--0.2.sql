/* event_bridge upgrade from 0.1 to 0.2: the catalog changes of 0.2 */

\echo Use "ALTER EXTENSION event_bridge UPDATE TO '0.2'" to load this file. \quit

/*
 * What follows this part are the area scripts of 0.2 (functions, views,
 * triggers, grants), which create or replace their objects; the build
 * (Makefile) appends them.  Here: what they cannot do in place.
 */

/* headers is taken as text and parsed inside, so that no error quotes it. */
DROP FUNCTION event_bridge.create_connector(text, text, text, timestamptz, text, int,
    interval, interval, int, interval, jsonb);

/* A bound on every request body (9.1 of the design: bounded work). */
ALTER TABLE event_bridge.connectors
    ADD COLUMN max_request_bytes int NOT NULL DEFAULT 6291456
               CHECK (max_request_bytes BETWEEN 1024 AND 268435456);

/* Why the delivery worker cannot use a connector (state ERROR). */
ALTER TABLE event_bridge.connectors ADD COLUMN error text;

/* How failed batches are retried (DESIGN 9.3). */
ALTER TABLE event_bridge.connectors
    ADD COLUMN retry_strategy text NOT NULL DEFAULT 'fixed'
               CHECK (retry_strategy IN ('fixed', 'exponential')),
    ADD COLUMN max_retry_interval interval NOT NULL DEFAULT '5 minutes';

/* 0.1 granted admins DML on the tables; 60_grants.sql revokes it. */
/*
 * 0.1 kept dropped tables in streams.tables as bare OIDs; 0.2 removes a
 * table from its streams when it is dropped (70_triggers.sql).
 */
UPDATE event_bridge.streams s
   SET tables = ARRAY(SELECT t FROM unnest(s.tables) WITH ORDINALITY u(t, i)
                       WHERE EXISTS (SELECT FROM pg_catalog.pg_class c WHERE c.oid = t) ORDER BY i)
 WHERE EXISTS (SELECT FROM unnest(s.tables) t
                WHERE NOT EXISTS (SELECT FROM pg_catalog.pg_class c WHERE c.oid = t));

/* The failure policy (DESIGN 9.3). */
ALTER TABLE event_bridge.connectors
    ADD COLUMN on_failure text NOT NULL DEFAULT 'suspend'
               CHECK (on_failure IN ('suspend', 'dead_letter')),
    ADD COLUMN max_record_age interval,
    ADD COLUMN partial_batch_response boolean NOT NULL DEFAULT false;
ALTER TABLE event_bridge.connector_shards ADD COLUMN next_attempt_at timestamptz;

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

/* Targets and credentials (DESIGN 9.4). */
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
ALTER TABLE event_bridge.connectors
    ADD COLUMN target text NOT NULL DEFAULT 'http'
               CHECK (target IN ('http', 'fc', 'functiongraph', 'lambda')),
    ADD COLUMN credential_id int REFERENCES event_bridge.credential_secrets,
    ADD COLUMN invocation text NOT NULL DEFAULT 'sync' CHECK (invocation IN ('sync', 'async'));

/* Column names per table version (DESIGN 9.5). */
ALTER TABLE event_bridge.records ADD COLUMN table_version bigint;
CREATE TABLE event_bridge.table_versions (
    table_version bigint PRIMARY KEY,
    table_name    text NOT NULL,
    columns       jsonb NOT NULL,
    key_columns   jsonb NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE event_bridge.table_versions IS
    'The shapes of captured tables (name, columns, key) that records name';

/* Connector rules and named formats (DESIGN 9.5). */
ALTER TABLE event_bridge.connectors DROP CONSTRAINT connectors_format_check;
ALTER TABLE event_bridge.connectors
    ADD CONSTRAINT connectors_format_check
        CHECK (format IN ('datahub', 'dis', 'json', 'cloudevents')),
    ADD COLUMN filter jsonb,
    ADD COLUMN transform jsonb;
ALTER TABLE event_bridge.connector_shards ADD COLUMN filtered bigint NOT NULL DEFAULT 0;


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

/* The Kafka target (DESIGN 9.6). */
ALTER TABLE event_bridge.connectors DROP CONSTRAINT connectors_target_check;
ALTER TABLE event_bridge.connectors
    ADD CONSTRAINT connectors_target_check
        CHECK (target IN ('http', 'fc', 'functiongraph', 'lambda', 'kafka')),
    ADD COLUMN key_transform jsonb;
