-- Which changes a new stream captures, and the migration that users write:
-- a table, its stream and a seed row in one transaction, in a database
-- whose extension was created earlier (its slot exists by then).
\set SHOW_CONTEXT never
-- In the transaction that creates the extension, capture cannot have
-- started: the error says why and what to do.
BEGIN;
CREATE EXTENSION event_bridge;
CREATE TABLE early (id int PRIMARY KEY);
ALTER TABLE early REPLICA IDENTITY FULL;
SELECT event_bridge.create_stream('early', ARRAY['early']::regclass[]);
ROLLBACK;

CREATE EXTENSION event_bridge;
-- The capture worker creates the database's slot once CREATE EXTENSION
-- commits; wait_for_capture returns once it exists and has caught up.
SELECT event_bridge.wait_for_capture('60 seconds') AS capture_ready;

BEGIN;
CREATE TABLE accounts (id int PRIMARY KEY, owner text);
ALTER TABLE accounts REPLICA IDENTITY FULL;
INSERT INTO accounts VALUES (1, 'before the stream, same transaction');
SELECT event_bridge.create_stream('accounts', ARRAY['accounts']::regclass[]);
INSERT INTO accounts VALUES (2, 'seed row, after create_stream');
COMMIT;
INSERT INTO accounts VALUES (3, 'a later transaction');
SELECT event_bridge.wait_for_capture('60 seconds') AS captured;
-- The change made before create_stream in its transaction is not captured;
-- the seed row after it and every later transaction are.
SELECT sequence, data->>8 AS id, data->>9 AS owner
  FROM event_bridge.get_records('accounts', 0, 0, 10);

DROP EXTENSION event_bridge;
DROP TABLE accounts;
