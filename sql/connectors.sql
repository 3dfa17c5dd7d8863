-- Connectors: create, positions from a start time, stop / start / resume /
-- reset / drop, the status views, and the exact event bodies of both
-- formats.  Delivery itself is tested with a live endpoint in test/t/.
CREATE EXTENSION event_bridge;
\set SHOW_CONTEXT never
SET timezone = 'UTC';

CREATE TABLE orders (id int PRIMARY KEY, v text);
ALTER TABLE orders REPLICA IDENTITY FULL;
SELECT event_bridge.create_stream('orders', ARRAY['orders']::regclass[], shard_count => 2);
CREATE TABLE unused (id int PRIMARY KEY);
SELECT event_bridge.create_stream('quiet', ARRAY['unused']::regclass[], shard_count => 3,
    before_images => false);

-- A connector with the defaults, on a stream that stays empty (nothing is
-- ever sent, so nothing below changes behind the test's back).
SELECT event_bridge.create_connector('quiet_fc', 'quiet', 'https://fc.example.com/invoke',
    headers => '{"X-Auth-Token": "s3cret", "X-Tenant": "t1"}');
SELECT connector_name, stream_name, endpoint, state, delivered, pending, lag_ms,
       last_event_id, failures, last_error, last_http_status, header_names, format,
       batch_size, batch_window, retry_interval, max_retries, timeout, shard_count,
       max_request_bytes, retry_strategy, max_retry_interval
  FROM event_bridge.connector_status;
SELECT connector_name, shard_id, state, delivered_sequence, next_sequence, pending,
       failures, last_error
  FROM event_bridge.shard_status ORDER BY 1, 2;

-- Every parameter given; the views never show the password of the endpoint.
SELECT event_bridge.create_connector('quiet_dis', 'quiet', 'http://user:s3cret@127.0.0.1:1/fg',
    start_time => NULL, format => 'dis', batch_size => 500, batch_window => '2 seconds',
    retry_interval => '250 milliseconds', max_retries => 3, timeout => '5 seconds',
    max_request_bytes => 65536, retry_strategy => 'exponential', max_retry_interval => '1 minute');
SELECT connector_name, endpoint, format, batch_size, batch_window, retry_interval,
       max_retries, timeout, header_names, max_request_bytes, retry_strategy, max_retry_interval
  FROM event_bridge.connector_status ORDER BY 1;

-- alter_connector changes what it is given and keeps the rest, and the
-- offsets; the new headers replace the old ones.
SELECT delivered_sequence AS offsets_before
  FROM event_bridge.shard_status WHERE connector_name = 'quiet_fc' AND shard_id = 0 \gset
SELECT event_bridge.alter_connector('quiet_fc', batch_size => 7, retry_strategy => 'exponential',
    max_retry_interval => '10 seconds', headers => '{"X-Auth-Token": "n3w"}');
SELECT connector_name, endpoint, format, batch_size, batch_window, retry_interval, max_retries,
       timeout, header_names, max_request_bytes, retry_strategy, max_retry_interval
  FROM event_bridge.connector_status WHERE connector_name = 'quiet_fc';
SELECT headers->>'X-Auth-Token' AS token FROM event_bridge.connectors WHERE connector_name = 'quiet_fc';
SELECT delivered_sequence = :offsets_before AS offsets_kept
  FROM event_bridge.shard_status WHERE connector_name = 'quiet_fc' AND shard_id = 0;
SELECT event_bridge.alter_connector('quiet_fc', batch_size => 100, retry_strategy => 'fixed',
    max_retry_interval => '5 minutes', headers => '{"X-Auth-Token": "s3cret", "X-Tenant": "t1"}');

-- Stop and start.
SELECT event_bridge.stop_connector('quiet_fc');
SELECT connector_name, state FROM event_bridge.connector_status ORDER BY 1;
SELECT DISTINCT state FROM event_bridge.shard_status WHERE connector_name = 'quiet_fc';
SELECT event_bridge.stop_connector('quiet_fc');
SELECT event_bridge.start_connector('quiet_fc');
SELECT connector_name, state FROM event_bridge.connector_status ORDER BY 1;

-- A suspended shard (as the worker leaves it after max_retries failures)
-- makes the connector SUSPENDED; resume clears it.
UPDATE event_bridge.connector_shards SET suspended = true, failures = 3
 WHERE shard_id = 1 AND connector_id =
       (SELECT connector_id FROM event_bridge.connectors WHERE connector_name = 'quiet_dis');
SELECT connector_name, state, failures FROM event_bridge.connector_status ORDER BY 1;
SELECT shard_id, state, failures FROM event_bridge.shard_status
 WHERE connector_name = 'quiet_dis' ORDER BY 1;
SELECT event_bridge.resume_connector('quiet_dis');
SELECT connector_name, state, failures FROM event_bridge.connector_status ORDER BY 1;
-- resuming again finds nothing to resume
SELECT event_bridge.resume_connector('quiet_dis');
-- a stopped connector stays STOPPED while a shard is suspended
SELECT event_bridge.stop_connector('quiet_dis');
UPDATE event_bridge.connector_shards SET suspended = true
 WHERE shard_id = 0 AND connector_id =
       (SELECT connector_id FROM event_bridge.connectors WHERE connector_name = 'quiet_dis');
SELECT connector_name, state, suspended_shards FROM event_bridge.connector_status ORDER BY 1;
SELECT event_bridge.start_connector('quiet_dis');
SELECT connector_name, state, suspended_shards FROM event_bridge.connector_status ORDER BY 1;

-- Positions.  Records appended before the connector was created are not
-- delivered by default; start_time => NULL starts at the earliest record.
INSERT INTO orders SELECT g, 'v' || g FROM generate_series(1, 20) g;
SELECT event_bridge.wait_for_capture();
SELECT pg_sleep(0.01);
SELECT event_bridge.create_connector('from_now', 'orders', 'http://127.0.0.1:1/');
SELECT event_bridge.create_connector('from_start', 'orders', 'http://127.0.0.1:1/', start_time => NULL);
SELECT event_bridge.create_connector('from_future', 'orders', 'http://127.0.0.1:1/',
    start_time => now() + interval '1 hour');
SELECT s.connector_name, s.shard_id, s.delivered_sequence, s.next_sequence, s.pending,
       s.delivered_sequence = s.next_sequence - 1 AS at_head
  FROM event_bridge.shard_status s
 WHERE s.connector_name IN ('from_now', 'from_start', 'from_future')
 ORDER BY 1, 2;
SELECT c.connector_name, cs.shard_id, cs.skip_before > 0 AS skips_older
  FROM event_bridge.connector_shards cs JOIN event_bridge.connectors c USING (connector_id)
 WHERE c.connector_name IN ('from_now', 'from_start', 'from_future')
 ORDER BY 1, 2;
SELECT connector_name, pending FROM event_bridge.connector_status
 WHERE connector_name IN ('from_now', 'from_start', 'from_future') ORDER BY 1;

-- A second batch of records, appended later: a start time between the two
-- batches starts every shard at its first record of the second batch.
SELECT pg_sleep(0.01);
SELECT clock_timestamp() AS between_batches \gset
SELECT pg_sleep(0.01);
INSERT INTO orders SELECT g, 'w' || g FROM generate_series(21, 30) g;
SELECT event_bridge.wait_for_capture();
SELECT event_bridge.reset_connector('from_now', :'between_batches');
SELECT s.shard_id,
       s.delivered_sequence + 1 = (SELECT min(r.sequence) FROM event_bridge.records r
                                    JOIN event_bridge.streams st USING (stream_id)
                                   WHERE st.stream_name = 'orders' AND r.shard_id = s.shard_id
                                     AND r.data::jsonb->>9 LIKE 'w%') AS at_second_batch
  FROM event_bridge.shard_status s WHERE s.connector_name = 'from_now' ORDER BY 1;
SELECT connector_name, pending FROM event_bridge.connector_status WHERE connector_name = 'from_now';

-- Reset to the earliest record, and to a time after the last one.
SELECT event_bridge.reset_connector('from_now', NULL);
SELECT shard_id, delivered_sequence, pending FROM event_bridge.shard_status
 WHERE connector_name = 'from_now' ORDER BY 1;
SELECT event_bridge.reset_connector('from_now', now() + interval '1 day');
SELECT shard_id, delivered_sequence = next_sequence - 1 AS at_head, pending
  FROM event_bridge.shard_status WHERE connector_name = 'from_now' ORDER BY 1;
-- every reset moved the position generation
SELECT cs.shard_id, cs.position_generation
  FROM event_bridge.connector_shards cs JOIN event_bridge.connectors c USING (connector_id)
 WHERE c.connector_name = 'from_now' ORDER BY 1;

-- Drop a connector: its shards and attempts log go too.  Dropping a stream
-- drops its connectors.  (The attempts here are made up, numbered far above
-- any the worker logs.)
INSERT INTO event_bridge.connector_attempts (connector_id, shard_id, attempt, attempted_at,
       duration_ms, first_sequence, last_sequence, http_status)
SELECT connector_id, shard_id, 1000000, now(), 1, 1, 1, 200 FROM event_bridge.connector_shards;
SELECT event_bridge.drop_connector('from_future');
SELECT connector_name FROM event_bridge.connector_status ORDER BY 1;
SELECT event_bridge.drop_stream('quiet');
SELECT connector_name FROM event_bridge.connector_status ORDER BY 1;
SELECT count(*) AS orphan_shards FROM event_bridge.connector_shards cs
 WHERE NOT EXISTS (SELECT FROM event_bridge.connectors c WHERE c.connector_id = cs.connector_id);
SELECT count(*) AS orphan_attempts FROM event_bridge.connector_attempts a
 WHERE NOT EXISTS (SELECT FROM event_bridge.connector_shards cs
                    WHERE cs.connector_id = a.connector_id AND cs.shard_id = a.shard_id);
SELECT c.connector_name, count(*) AS attempts_kept
  FROM event_bridge.connector_attempts a JOIN event_bridge.connectors c USING (connector_id)
 WHERE a.attempt = 1000000 GROUP BY 1 ORDER BY 1;

-- Event bodies, byte for byte (design section 5).  DataHub: data is the JSON
-- array as a JSON string; records keep their order and eventIds.
\pset format unaligned
SELECT event_bridge._format_batch('datahub', 'shop', 'orders', 'cn-hangzhou', 0,
    '{12344,12345}', '{1463000123000,1463000123001}', '{7,NULL}',
    ARRAY['["1","I","42","shop","public.orders","1463000122999","N","Y","7","a"]',
          '["2","U","42","shop","public.orders","1463000123000","N","Y","8","say \"hi\"\\n"]'],
    1463000123500);
-- DIS: zero-padded ShardID, base64 data, string sequence numbers, the
-- partition key (empty when the row has none), millis_behind_latest from
-- the last record, and a cursor shaped as DIS's: the unpadded base64 of an
-- iterator naming the stream, the shard, the cursor type and the next sequence.
SELECT event_bridge._format_batch('dis', 'shop', 'orders', 'cn-north-4', 3,
    '{9,10}', '{1463000123000,1463000123001}', '{7,NULL}',
    ARRAY['["1","I","42","shop","public.orders","1463000122999","N","Y","7","a"]',
          '["2","D","42","shop","public.orders","1463000123000","Y","N","8","b"]'],
    1463000123500) AS body \gset
SELECT :'body' AS body;
SELECT convert_from(decode(rpad(c, (length(c) + 3) / 4 * 4, '='), 'base64'), 'UTF8') AS cursor,
       c LIKE '%=' AS padded,
       convert_from(decode(r->>'data', 'base64'), 'UTF8')::jsonb = (r->>'data_expected')::jsonb AS data_matches
  FROM (SELECT :'body'::jsonb AS b, :'body'::jsonb #>> '{Message,next_partition_cursor}' AS c) x,
       LATERAL (SELECT (b #> '{Message,records,0}') || jsonb_build_object('data_expected',
                '["1","I","42","shop","public.orders","1463000122999","N","Y","7","a"]') AS r) y;
-- Names and text are escaped as JSON; non-ASCII text stays UTF-8.
SELECT event_bridge._format_batch('datahub', 'd"b', 'st/re\am', E'r\u00e9gion', 12,
    '{0}', '{1}', '{NULL}', ARRAY[E'["caf\u00e9","\\t"]'], 1);
-- A clock behind the record gives 0, not a negative lag.
SELECT event_bridge._format_batch('dis', 'd', 's', 'r', 255, '{0}', '{2000}', '{k}', '{[]}', 1000);
\pset format aligned

-- Every public function and view of connectors is commented.
SELECT p.proname, obj_description(p.oid, 'pg_proc') IS NOT NULL AS commented
  FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
 WHERE n.nspname = 'event_bridge' AND p.proname LIKE '%connector%'
 ORDER BY 1;
SELECT c.relname, obj_description(c.oid, 'pg_class') IS NOT NULL AS commented
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = 'event_bridge' AND c.relkind IN ('r', 'v')
   AND (c.relname LIKE '%connector%' OR c.relname = 'shard_status')
 ORDER BY 1;

-- Clean up: DROP EXTENSION stops the workers and drops the slot.
DROP EXTENSION event_bridge;
DROP TABLE orders, unused;
