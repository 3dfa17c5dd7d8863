/* ---------------------------------------------------------------------
 * Views: what admins may see of streams and connectors.  They run with
 * the owner's rights and show no header value and no endpoint password.
 * ------------------------------------------------------------------- */

CREATE OR REPLACE VIEW event_bridge.stream_status AS
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


CREATE OR REPLACE VIEW event_bridge.capture_filters AS
SELECT s.stream_name, f.table_name, f.row_filter, f.columns
  FROM event_bridge.table_filter_rules f
  JOIN event_bridge.streams s ON s.stream_id = f.stream_id;
COMMENT ON VIEW event_bridge.capture_filters IS
    'The capture filters of streams (set_table_filter): the rows and columns of a table a stream keeps';

CREATE OR REPLACE VIEW event_bridge.shard_status AS
SELECT c.connector_name,
       cs.shard_id,
       CASE WHEN c.stopped THEN 'STOPPED'
            WHEN c.error IS NOT NULL THEN 'ERROR'
            WHEN cs.suspended THEN 'SUSPENDED'
            ELSE 'RUNNING' END AS state,
       cs.delivered_sequence,
       h.next_sequence,
       greatest(h.next_sequence - cs.delivered_sequence - 1, 0) AS pending,
       cs.failures,
       coalesce(c.error, cs.last_error) AS last_error,
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
       cs.last_attempt_at,
       CASE WHEN NOT (c.stopped OR cs.suspended OR c.error IS NOT NULL)
            THEN cs.next_attempt_at END AS next_attempt_at,
       (SELECT count(*) FROM event_bridge.dead_letter_records d
         WHERE d.connector_id = c.connector_id AND d.shard_id = cs.shard_id) AS dead_letters,
       cs.filtered
  FROM event_bridge.connectors c
  JOIN event_bridge.connector_shards cs ON cs.connector_id = c.connector_id
  JOIN event_bridge.shards h ON h.stream_id = c.stream_id AND h.shard_id = cs.shard_id;
COMMENT ON VIEW event_bridge.shard_status IS
    'One row per connector and shard: state, offset (delivered_sequence, -1 = none), the stream''s next sequence, pending records, consecutive failures, the last error, when a failed batch is retried, the dead letters, and the records the filter left out';

CREATE OR REPLACE VIEW event_bridge.connector_status AS
SELECT c.connector_name,
       s.stream_name,
       event_bridge._endpoint_without_secrets(c.endpoint) AS endpoint,
       CASE WHEN c.stopped THEN 'STOPPED'
            WHEN c.error IS NOT NULL THEN 'ERROR'
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
       c.created_at,
       c.max_request_bytes,
       c.retry_strategy,
       c.max_retry_interval,
       sum(ss.dead_letters)::bigint AS dead_letters,
       c.on_failure,
       c.max_record_age,
       c.partial_batch_response,
       c.target,
       (SELECT cs.credential_name FROM event_bridge.credential_secrets cs
         WHERE cs.credential_id = c.credential_id) AS credential,
       c.invocation,
       sum(ss.filtered)::bigint AS filtered,
       c.filter,
       c.transform,
       c.key_transform
  FROM event_bridge.connectors c
  JOIN event_bridge.streams s ON s.stream_id = c.stream_id
  JOIN event_bridge.shard_status ss ON ss.connector_name = c.connector_name
 GROUP BY c.connector_id, s.stream_name;
COMMENT ON VIEW event_bridge.connector_status IS
    'One row per connector: state (RUNNING, STOPPED, SUSPENDED if any shard is), records delivered, filtered out and pending, lag, the last success and the last error; header names but never their values';

CREATE OR REPLACE VIEW event_bridge.connector_attempts_log AS
SELECT c.connector_name, a.shard_id, a.attempt, a.attempted_at, a.duration_ms,
       a.first_sequence, a.last_sequence, a.last_sequence - a.first_sequence + 1 AS records,
       a.http_status, a.error, a.response
  FROM event_bridge.connector_attempts a
  JOIN event_bridge.connectors c ON c.connector_id = a.connector_id;
COMMENT ON VIEW event_bridge.connector_attempts_log IS
    'The last delivery attempts of every connector shard, newest attempt numbers last';

/*
 * Dead letters show record data, so each row shows only to a role that may
 * read every table of its stream (SELECT, no row-level security, as
 * get_records asks) while its table is still one of them; a dropped or
 * renamed table's dead letters show to superusers only
 * (_may_read_record).  security_barrier: the reader's own conditions run
 * after that test, so a function of theirs never sees a row it hides.
 */
CREATE OR REPLACE VIEW event_bridge.dead_letters WITH (security_barrier) AS
SELECT c.connector_name,
       d.shard_id,
       d.sequence,
       d.shard_id || ':' || d.sequence AS event_id,
       to_timestamp(d.system_time / 1000.0) AS system_time,
       d.operation::char AS operation,
       d.table_name,
       d.data::jsonb AS data,
       d.failed_at,
       d.attempts,
       d.http_status,
       d.error,
       d.redeliver AS redelivery_pending
  FROM event_bridge.dead_letter_records d
  JOIN event_bridge.connectors c ON c.connector_id = d.connector_id
  JOIN event_bridge.streams s ON s.stream_id = c.stream_id
 WHERE event_bridge._may_read_record(s.tables, d.table_name);
COMMENT ON VIEW event_bridge.dead_letters IS
    'Records that connectors with on_failure dead_letter gave up on, with the last status and error; a row shows only to roles that may read every table of its stream, while its table is one of them';

/* Credentials without their secrets: key_id is an access key id or a header name. */
CREATE OR REPLACE VIEW event_bridge.credentials AS
SELECT cr.credential_name,
       cr.provider,
       cr.key_id,
       cr.owner,
       cr.created_at,
       cr.rotated_at,
       ARRAY(SELECT co.connector_name FROM event_bridge.connectors co
              WHERE co.credential_id = cr.credential_id ORDER BY 1) AS connectors
  FROM event_bridge.credential_secrets cr;
COMMENT ON VIEW event_bridge.credentials IS
    'One row per credential: its provider, key_id (the access key id or the token''s header name, never a secret), the role that created it, when it was created and last rotated, and the connectors that use it';
