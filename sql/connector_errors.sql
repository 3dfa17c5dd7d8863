-- Connectors: bad input is refused with a specific SQLSTATE (printed after
-- each case) and a message that names the bad value but never a secret;
-- a refused call changes nothing.
CREATE EXTENSION event_bridge;
\set SHOW_CONTEXT never
CREATE TABLE t (id int PRIMARY KEY, v text);
ALTER TABLE t REPLICA IDENTITY FULL;
SELECT event_bridge.create_stream('s', ARRAY['t']::regclass[], shard_count => 2);
SELECT event_bridge.create_connector('taken', 's', 'http://127.0.0.1:1/');

-- a NULL connector name
SELECT event_bridge.create_connector(NULL, 's', 'http://127.0.0.1:1/'); \echo :SQLSTATE
-- a NULL endpoint
SELECT event_bridge.create_connector('c', 's', NULL); \echo :SQLSTATE
-- a NULL batch_size
SELECT event_bridge.create_connector('c', 's', 'http://127.0.0.1:1/', batch_size => NULL); \echo :SQLSTATE
-- a connector name with a space
SELECT event_bridge.create_connector('my connector', 's', 'http://127.0.0.1:1/'); \echo :SQLSTATE
-- an unknown stream
SELECT event_bridge.create_connector('c', 'no_such_stream', 'http://127.0.0.1:1/'); \echo :SQLSTATE
-- a name that is taken
SELECT event_bridge.create_connector('taken', 's', 'http://127.0.0.1:1/'); \echo :SQLSTATE
-- an ftp URL
SELECT event_bridge.create_connector('c', 's', 'ftp://fc.example.com/invoke'); \echo :SQLSTATE
-- a URL without a scheme
SELECT event_bridge.create_connector('c', 's', 'fc.example.com/invoke'); \echo :SQLSTATE
-- no URL at all
SELECT event_bridge.create_connector('c', 's', 'http://'); \echo :SQLSTATE
-- a URL with a space
SELECT event_bridge.create_connector('c', 's', 'http://fc.example.com/in voke'); \echo :SQLSTATE
-- a bad scheme whose userinfo holds a password: the error does not quote it
SELECT event_bridge.create_connector('c', 's', 'gopher://user:s3cret@fc.example.com/'); \echo :SQLSTATE
-- an unknown format
SELECT event_bridge.create_connector('c', 's', 'http://127.0.0.1:1/', format => 'xml'); \echo :SQLSTATE
-- a format in the wrong case
SELECT event_bridge.create_connector('c', 's', 'http://127.0.0.1:1/', format => 'DIS'); \echo :SQLSTATE
-- batch_size below and above 1..10000
SELECT event_bridge.create_connector('c', 's', 'http://127.0.0.1:1/', batch_size => 0); \echo :SQLSTATE
SELECT event_bridge.create_connector('c', 's', 'http://127.0.0.1:1/', batch_size => 10001); \echo :SQLSTATE
-- a negative batch_window
SELECT event_bridge.create_connector('c', 's', 'http://127.0.0.1:1/', batch_window => '-1 second'); \echo :SQLSTATE
-- a batch_window over a day
SELECT event_bridge.create_connector('c', 's', 'http://127.0.0.1:1/', batch_window => '25 hours'); \echo :SQLSTATE
-- a zero retry_interval
SELECT event_bridge.create_connector('c', 's', 'http://127.0.0.1:1/', retry_interval => '0'); \echo :SQLSTATE
-- a retry_interval under the 10 ms floor, which would hammer the endpoint
SELECT event_bridge.create_connector('c', 's', 'http://127.0.0.1:1/', retry_interval => '1 ms'); \echo :SQLSTATE
-- an unknown retry_strategy
SELECT event_bridge.create_connector('c', 's', 'http://127.0.0.1:1/', retry_strategy => 'linear'); \echo :SQLSTATE
-- alter_connector of a connector that does not exist
SELECT event_bridge.alter_connector('nope', batch_size => 10); \echo :SQLSTATE
-- alter_connector with a batch_size out of range
SELECT event_bridge.alter_connector('taken', batch_size => 0); \echo :SQLSTATE
-- alter_connector with a retry_interval above the connector's max_retry_interval
SELECT event_bridge.alter_connector('taken', retry_interval => '10 minutes'); \echo :SQLSTATE
-- alter_connector with headers that are not JSON
SELECT event_bridge.alter_connector('taken', headers => '{"X-Token": "hunter2'); \echo :SQLSTATE
-- alter_connector with a NULL name
SELECT event_bridge.alter_connector(NULL, batch_size => 10); \echo :SQLSTATE
-- a max_retry_interval shorter than retry_interval
SELECT event_bridge.create_connector('c', 's', 'http://127.0.0.1:1/', retry_interval => '2 seconds',
    max_retry_interval => '1 second'); \echo :SQLSTATE
-- a negative timeout
SELECT event_bridge.create_connector('c', 's', 'http://127.0.0.1:1/', timeout => '-5 seconds'); \echo :SQLSTATE
-- a zero timeout
SELECT event_bridge.create_connector('c', 's', 'http://127.0.0.1:1/', timeout => '0'); \echo :SQLSTATE
-- a negative max_retries
SELECT event_bridge.create_connector('c', 's', 'http://127.0.0.1:1/', max_retries => -1); \echo :SQLSTATE
-- headers that are an array
SELECT event_bridge.create_connector('c', 's', 'http://127.0.0.1:1/', headers => '["X-Auth-Token"]'); \echo :SQLSTATE
-- headers that are a string
SELECT event_bridge.create_connector('c', 's', 'http://127.0.0.1:1/', headers => '"token"'); \echo :SQLSTATE
-- a header whose value is a number
SELECT event_bridge.create_connector('c', 's', 'http://127.0.0.1:1/', headers => '{"X-Auth-Token": 42}'); \echo :SQLSTATE
-- a header whose value is an object
SELECT event_bridge.create_connector('c', 's', 'http://127.0.0.1:1/', headers => '{"X-Auth-Token": {"v": "s3cret"}}'); \echo :SQLSTATE
-- a header value with a line break (header injection): the error does not quote it
SELECT event_bridge.create_connector('c', 's', 'http://127.0.0.1:1/', headers => '{"X-Auth-Token": "s3cret\r\nX-Evil: 1"}'); \echo :SQLSTATE
-- a header name with a space
SELECT event_bridge.create_connector('c', 's', 'http://127.0.0.1:1/', headers => '{"X Auth": "s3cret"}'); \echo :SQLSTATE
-- an empty header name
SELECT event_bridge.create_connector('c', 's', 'http://127.0.0.1:1/', headers => '{"": "s3cret"}'); \echo :SQLSTATE
-- a header that frames the request
SELECT event_bridge.create_connector('c', 's', 'http://127.0.0.1:1/', headers => '{"Content-Length": "5"}'); \echo :SQLSTATE

-- Nothing of the refused calls is left.
SELECT connector_name FROM event_bridge.connectors ORDER BY 1;
SELECT count(*) AS shard_rows FROM event_bridge.connector_shards;

-- stop, start, resume, reset and drop of an unknown connector
SELECT event_bridge.stop_connector('nope'); \echo :SQLSTATE
SELECT event_bridge.start_connector('nope'); \echo :SQLSTATE
SELECT event_bridge.resume_connector('nope'); \echo :SQLSTATE
SELECT event_bridge.reset_connector('nope', now()); \echo :SQLSTATE
SELECT event_bridge.drop_connector('nope'); \echo :SQLSTATE
-- a NULL name
SELECT event_bridge.stop_connector(NULL); \echo :SQLSTATE
SELECT event_bridge.drop_connector(NULL); \echo :SQLSTATE

-- _format_batch with arrays of different lengths
SELECT event_bridge._format_batch('datahub', 'd', 's', 'r', 0, '{1,2}', '{1}', '{a}', '{x}', 0); \echo :SQLSTATE
-- _format_batch with no records
SELECT event_bridge._format_batch('datahub', 'd', 's', 'r', 0, '{}', '{}', '{}', '{}', 0); \echo :SQLSTATE
-- _format_batch with a NULL record
SELECT event_bridge._format_batch('dis', 'd', 's', 'r', 0, '{1}', '{1}', '{a}', '{NULL}', 0); \echo :SQLSTATE

-- Rights: only superusers and event_bridge_admin members manage connectors;
-- nobody below superuser reads header values, the views show names only.
CREATE ROLE eb_connector_nobody;
CREATE ROLE eb_connector_admin IN ROLE event_bridge_admin;
SET ROLE eb_connector_nobody;
-- a user who is no admin creates a connector
SELECT event_bridge.create_connector('c', 's', 'http://127.0.0.1:1/'); \echo :SQLSTATE
-- a user who is no admin stops one
SELECT event_bridge.stop_connector('taken'); \echo :SQLSTATE
-- a user who is no admin reads the headers
SELECT headers FROM event_bridge.connectors; \echo :SQLSTATE
-- a user who is no admin reads the status
SELECT state FROM event_bridge.connector_status; \echo :SQLSTATE
RESET ROLE;
SET ROLE eb_connector_admin;
-- an admin without SELECT on the stream's table creates a connector
SELECT event_bridge.create_connector('by_member', 's', 'https://fc.example.com/invoke'); \echo :SQLSTATE
RESET ROLE;
GRANT SELECT ON t TO eb_connector_admin;
SET ROLE eb_connector_admin;
SELECT event_bridge.create_connector('by_member', 's', 'https://fc.example.com/invoke',
    headers => '{"X-Auth-Token": "s3cret", "X-Tenant": "t1"}');
SELECT connector_name, header_names FROM event_bridge.connector_status ORDER BY 1;
-- an admin alters a connector over a table it may not SELECT
RESET ROLE;
REVOKE SELECT ON t FROM eb_connector_admin;
SET ROLE eb_connector_admin;
SELECT event_bridge.alter_connector('by_member', batch_size => 5); \echo :SQLSTATE
RESET ROLE;
GRANT SELECT ON t TO eb_connector_admin;
SET ROLE eb_connector_admin;
SELECT event_bridge.alter_connector('by_member', batch_size => 5);
-- an admin reads the headers from the catalog
SELECT headers->>'X-Auth-Token' AS token FROM event_bridge.connectors WHERE connector_name = 'by_member'; \echo :SQLSTATE
SELECT event_bridge.drop_connector('by_member');
RESET ROLE;
REVOKE SELECT ON t FROM eb_connector_admin;

-- Failure policy settings (DESIGN 9.3)
SELECT event_bridge.create_connector('dl', 's', 'http://127.0.0.1:9/', on_failure => 'dead_letter',
    max_record_age => '1 hour', partial_batch_response => true);
SELECT on_failure, max_record_age, partial_batch_response, dead_letters
  FROM event_bridge.connector_status WHERE connector_name = 'dl';
-- an unknown policy
SELECT event_bridge.alter_connector('dl', on_failure => 'retry_forever'); \echo :SQLSTATE
-- a max_record_age of no time
SELECT event_bridge.create_connector('dl2', 's', 'http://127.0.0.1:9/', max_record_age => '0'); \echo :SQLSTATE
-- '0' removes the limit in alter_connector, NULL leaves it
SELECT event_bridge.alter_connector('dl', max_record_age => NULL, partial_batch_response => false);
SELECT max_record_age, partial_batch_response FROM event_bridge.connector_status WHERE connector_name = 'dl';
SELECT event_bridge.alter_connector('dl', max_record_age => '0');
SELECT max_record_age IS NULL AS no_limit FROM event_bridge.connector_status WHERE connector_name = 'dl';
-- skip_batch of a shard that is not suspended
SELECT event_bridge.skip_batch('dl', 0); \echo :SQLSTATE
-- skip_batch of a shard the stream does not have
SELECT event_bridge.skip_batch('dl', 7); \echo :SQLSTATE
-- a suspended shard without a failed batch (the endpoint refused another shard's)
UPDATE event_bridge.connector_shards SET suspended = true
 WHERE connector_id = (SELECT connector_id FROM event_bridge.connectors WHERE connector_name = 'dl');
SELECT event_bridge.skip_batch('dl', 0); \echo :SQLSTATE
SELECT event_bridge.resume_connector('dl');
-- nothing to redeliver or purge yet
SELECT event_bridge.redeliver_dead_letters('dl') AS queued, event_bridge.purge_dead_letters('dl') AS purged;
-- an eventId that is not "<shard>:<sequence>"
SELECT event_bridge.redeliver_dead_letters('dl', ARRAY['0:1', '0-2']); \echo :SQLSTATE
SELECT event_bridge.purge_dead_letters('dl', '-1 day'); \echo :SQLSTATE

-- Dead letters show record data: a row shows only to a role that may SELECT
-- every table of its stream, and a function of the reader's cannot see the
-- rows the view hides (security_barrier).  Stopped, so that the worker
-- leaves the dead letter alone.
SELECT event_bridge.stop_connector('dl');
INSERT INTO event_bridge.dead_letter_records (connector_id, shard_id, sequence, system_time,
    record_id, operation, table_name, data, failed_at, attempts, http_status, error)
SELECT connector_id, 0, 41, 0, 1, 'I', 'public.t', '["secret row"]', now(), 3, 400, 'HTTP status 400'
  FROM event_bridge.connectors WHERE connector_name = 'dl';
-- a dead letter of a table that left the stream (dropped, or renamed)
INSERT INTO event_bridge.dead_letter_records (connector_id, shard_id, sequence, system_time,
    record_id, operation, table_name, data, failed_at, attempts, http_status, error)
SELECT connector_id, 0, 42, 0, 2, 'I', 'public.gone', '["row of a dropped table"]', now(), 1, 400, 'HTTP status 400'
  FROM event_bridge.connectors WHERE connector_name = 'dl';
SELECT connector_name, event_id, data, attempts, http_status, error FROM event_bridge.dead_letters;
SELECT dead_letters FROM event_bridge.shard_status WHERE connector_name = 'dl' AND shard_id = 0;
CREATE FUNCTION leak(jsonb) RETURNS boolean LANGUAGE plpgsql COST 0.0000001 AS
$$ BEGIN RAISE NOTICE 'leaked %', $1; RETURN true; END $$;
GRANT EXECUTE ON FUNCTION leak(jsonb) TO eb_connector_admin;
SET ROLE eb_connector_admin;
SELECT count(*) AS visible_without_select FROM event_bridge.dead_letters WHERE leak(data);
RESET ROLE;
GRANT SELECT ON t TO eb_connector_admin;
SET ROLE eb_connector_admin;
-- the dropped table's dead letter shows to superusers only
SELECT event_id, data FROM event_bridge.dead_letters;
-- redeliver needs SELECT too, and asks the worker to send it again
SELECT event_bridge.redeliver_dead_letters('dl', ARRAY['0:41']) AS queued;
SELECT event_id, redelivery_pending FROM event_bridge.dead_letters;
RESET ROLE;
REVOKE SELECT ON t FROM eb_connector_admin;
SET ROLE eb_connector_admin;
SELECT event_bridge.redeliver_dead_letters('dl'); \echo :SQLSTATE
SELECT event_bridge.purge_dead_letters('dl') AS purged;
RESET ROLE;
SELECT count(*) AS left_after_purge FROM event_bridge.dead_letters;
DROP FUNCTION leak(jsonb);
SELECT event_bridge.drop_connector('dl');

-- Clean up: DROP EXTENSION stops the workers and drops the slot.
DROP EXTENSION event_bridge;
DROP ROLE eb_connector_nobody, eb_connector_admin;
DROP TABLE t;
