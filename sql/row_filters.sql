-- Capture row filters (DESIGN 9.5): PostgreSQL 15 publication row filter
-- rules, checked for a table, the expression tree returned for capture.
CREATE EXTENSION event_bridge;
\set SHOW_CONTEXT never
CREATE TABLE orders (id int PRIMARY KEY, status text, amount numeric, placed timestamptz);
ALTER TABLE orders REPLICA IDENTITY FULL;
CREATE TABLE keyed (id int PRIMARY KEY, status text);
CREATE FUNCTION my_func(int) RETURNS bool LANGUAGE sql IMMUTABLE AS 'SELECT $1 > 0';
CREATE TYPE mood AS ENUM ('sad', 'ok');
CREATE TABLE moody (id int PRIMARY KEY, m mood);
ALTER TABLE moody REPLICA IDENTITY FULL;
CREATE FUNCTION my_eq(int, int) RETURNS bool LANGUAGE sql IMMUTABLE AS 'SELECT $1 = $2';
CREATE OPERATOR === (LEFTARG = int, RIGHTARG = int, PROCEDURE = my_eq);

-- Accepted: columns, constants, built-in operators and immutable functions.
SELECT event_bridge._check_row_filter('orders', 'status = ''paid'' AND amount > 100') LIKE '{BOOLEXPR :boolop and%' AS accepted;
SELECT event_bridge._check_row_filter('orders', 'status IN (''a'', ''b'') OR lower(status) LIKE ''x%'' OR amount IS NULL') LIKE '{BOOLEXPR%' AS accepted;
SELECT event_bridge._check_row_filter('keyed', 'id > 10') LIKE '{OPEXPR%' AS accepted;
-- a user-defined function
SELECT event_bridge._check_row_filter('orders', 'my_func(id)');
-- a built-in mutable function
SELECT event_bridge._check_row_filter('orders', 'placed > now()');
-- a system column
SELECT event_bridge._check_row_filter('orders', 'xmin <> 0');
-- a subquery
SELECT event_bridge._check_row_filter('orders', 'id IN (SELECT 1)');
-- an aggregate
SELECT event_bridge._check_row_filter('orders', 'count(*) > 1');
-- a user-defined type
SELECT event_bridge._check_row_filter('moody', 'm = ''ok''');
-- a user-defined operator
SELECT event_bridge._check_row_filter('orders', 'id === 1');
-- a cast through text (an I/O coercion)
SELECT event_bridge._check_row_filter('orders', 'id::text = ''1''');
-- another table
SELECT event_bridge._check_row_filter('orders', 'keyed.id = 1');
-- not boolean
SELECT event_bridge._check_row_filter('orders', 'amount + 1');
-- more than an expression, smuggled around the WHERE clause
SELECT event_bridge._check_row_filter('orders', 'true) UNION SELECT (1');
SELECT event_bridge._check_row_filter('orders', 'true) FROM pg_authid WHERE (true');
SELECT event_bridge._check_row_filter('orders', 'true); DROP TABLE orders; SELECT (true');
-- a column outside the replica identity of a table that is not FULL
SELECT event_bridge._check_row_filter('keyed', 'status = ''paid''');
SELECT count(*) AS orders_still_there FROM orders;

DROP EXTENSION event_bridge;
DROP TABLE orders, keyed, moody;
DROP OPERATOR === (int, int);
DROP FUNCTION my_eq(int, int);
DROP FUNCTION my_func(int);
DROP TYPE mood;
