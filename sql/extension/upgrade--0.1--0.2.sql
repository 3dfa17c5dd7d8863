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
    PRIMARY KEY (connector_id, shard_id, sequence)
);
CREATE INDEX dead_letter_records_redeliver ON event_bridge.dead_letter_records
    (connector_id, shard_id, sequence) WHERE redeliver;
COMMENT ON TABLE event_bridge.dead_letter_records IS
    'Records that connectors with on_failure dead_letter gave up on, with their last status and error';
