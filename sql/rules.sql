-- Connector filters (DESIGN 9.5): Huawei EventGrid's event-rule filter
-- syntax, on events {"eventId","op","table","before","after"}.  Every
-- operator matching and not matching, missing fields and other types,
-- arrays, nesting, AND and OR; then each kind of bad filter, refused with
-- where it is at fault.
CREATE EXTENSION event_bridge;
\set SHOW_CONTEXT never

CREATE TEMP TABLE ev (name text, event jsonb);
INSERT INTO ev VALUES
  ('insert', '{"eventId": "0:1", "op": "INSERT", "table": "public.orders", "before": null,
               "after": {"id": 9007199254740993, "status": "paid", "amount": 12.50,
                         "vip": true, "tags": ["a", "b"], "note": null}}'),
  ('update', '{"eventId": "1:7", "op": "UPDATE", "table": "public.orders",
               "before": {"id": 2, "status": "new", "amount": 5, "vip": false},
               "after": {"id": 2, "status": "paid", "amount": 5, "vip": false}}'),
  ('delete', '{"eventId": "0:2", "op": "DELETE", "table": "shop.items",
               "before": {"id": 3, "status": "gone", "amount": "7"}, "after": null}');

CREATE TEMP TABLE f (n serial, rule text, filter jsonb);
INSERT INTO f (rule, filter) VALUES
  ('StringIn op', '{"op": [{"op": "StringIn", "values": ["INSERT", "UPDATE"]}]}'),
  ('StringNotIn op', '{"op": [{"op": "StringNotIn", "values": ["DELETE"]}]}'),
  ('StringStartsWith table', '{"table": [{"op": "StringStartsWith", "values": ["public."]}]}'),
  ('StringNotStartsWith table', '{"table": [{"op": "StringNotStartsWith", "values": ["public."]}]}'),
  ('StringEndsWith eventId', '{"eventId": [{"op": "StringEndsWith", "values": [":1", ":2"]}]}'),
  ('StringNotEndsWith eventId', '{"eventId": [{"op": "StringNotEndsWith", "values": [":1"]}]}'),
  ('StringIn on a number', '{"after": {"id": [{"op": "StringIn", "values": ["2"]}]}}'),
  ('StringNotIn on a missing field', '{"after": {"status": [{"op": "StringNotIn", "values": ["x"]}]}}'),
  ('NumberIn bigint exactly', '{"after": {"id": [{"op": "NumberIn", "values": [9007199254740993]}]}}'),
  ('NumberIn near bigint', '{"after": {"id": [{"op": "NumberIn", "values": [9007199254740992]}]}}'),
  ('NumberNotIn', '{"after": {"id": [{"op": "NumberNotIn", "values": [2]}]}}'),
  ('NumberIn 12.5 = 12.50', '{"after": {"amount": [{"op": "NumberIn", "values": [12.5]}]}}'),
  ('NumberLessThan 10', '{"before": {"amount": [{"op": "NumberLessThan", "value": 10}]}}'),
  ('NumberNotLessThan 5', '{"before": {"amount": [{"op": "NumberNotLessThan", "value": 5}]}}'),
  ('NumberGreaterThan 5', '{"after": {"amount": [{"op": "NumberGreaterThan", "value": 5}]}}'),
  ('NumberNotGreaterThan 5', '{"after": {"amount": [{"op": "NumberNotGreaterThan", "value": 5}]}}'),
  ('NumberInRange [5, 12.5]', '{"after": {"amount": [{"op": "NumberInRange", "values": [[5, 12.5]]}]}}'),
  ('NumberNotInRange [6, 100]', '{"after": {"amount": [{"op": "NumberNotInRange", "values": [[6, 100]]}]}}'),
  ('IsNull before', '{"before": [{"op": "IsNull"}]}'),
  ('IsNull under a null parent', '{"before": {"id": [{"op": "IsNull"}]}}'),
  ('IsNull of a null value', '{"after": {"note": [{"op": "IsNull"}]}}'),
  ('IsNotNull after.id', '{"after": {"id": [{"op": "IsNotNull"}]}}'),
  ('IsTrue vip', '{"after": {"vip": [{"op": "IsTrue"}]}}'),
  ('IsNotTrue vip', '{"after": {"vip": [{"op": "IsNotTrue"}]}}'),
  ('array: StringIn any tag', '{"after": {"tags": [{"op": "StringIn", "values": ["b"]}]}}'),
  ('array: StringNotIn no tag', '{"after": {"tags": [{"op": "StringNotIn", "values": ["b"]}]}}'),
  ('OR of conditions', '{"op": [{"op": "StringIn", "values": ["DELETE"]}, {"op": "StringStartsWith", "values": ["UP"]}]}'),
  ('AND of conditions', '{"op": {"and": [{"op": "StringStartsWith", "values": ["IN"]}, {"op": "StringEndsWith", "values": ["ERT"]}]}}'),
  ('AND of fields', '{"op": [{"op": "StringIn", "values": ["UPDATE"]}], "before": {"status": [{"op": "StringIn", "values": ["new"]}]}, "after": {"status": [{"op": "StringIn", "values": ["paid"]}]}}');

-- Which events each filter lets through.
SELECT f.rule, string_agg(ev.name, ', ' ORDER BY ev.name) FILTER (WHERE event_bridge._filter_matches(f.filter, ev.event)) AS matches
  FROM f CROSS JOIN ev GROUP BY f.n, f.rule ORDER BY f.n;

-- Bad filters: each refused, naming the part at fault.
-- not an object
SELECT event_bridge._check_filter('[1]');
-- a field the event does not have
SELECT event_bridge._check_filter('{"source": [{"op": "StringIn", "values": ["x"]}]}');
-- an operator EventGrid does not have
SELECT event_bridge._check_filter('{"after": {"name": [{"op": "StringContains", "values": ["x"]}]}}');
-- a condition without op
SELECT event_bridge._check_filter('{"op": [{"values": ["x"]}]}');
-- a condition that is not an object
SELECT event_bridge._check_filter('{"op": ["INSERT"]}');
-- values of the wrong type
SELECT event_bridge._check_filter('{"after": {"id": [{"op": "NumberIn", "values": [1, "2"]}]}}');
-- empty values
SELECT event_bridge._check_filter('{"op": [{"op": "StringIn", "values": []}]}');
-- value missing for a comparison
SELECT event_bridge._check_filter('{"after": {"id": [{"op": "NumberLessThan", "values": [1]}]}}');
-- an operand where none is taken
SELECT event_bridge._check_filter('{"after": {"id": [{"op": "IsNull", "values": [1]}]}}');
-- a range that is not [low, high]
SELECT event_bridge._check_filter('{"after": {"id": [{"op": "NumberInRange", "values": [[1, 2, 3]]}]}}');
-- a range upside down
SELECT event_bridge._check_filter('{"after": {"id": [{"op": "NumberInRange", "values": [[5, 1]]}]}}');
-- six conditions on a field
SELECT event_bridge._check_filter('{"op": [{"op": "IsNull"}, {"op": "IsNull"}, {"op": "IsNull"}, {"op": "IsNull"}, {"op": "IsNull"}, {"op": "IsNull"}]}');
-- no condition
SELECT event_bridge._check_filter('{"op": []}');
-- nested too deep
SELECT event_bridge._check_filter('{"after": {"a": {"b": {"c": {"d": {"e": [{"op": "IsNull"}]}}}}}}');
-- an empty level
SELECT event_bridge._check_filter('{"after": {}}');
-- eleven fields
SELECT event_bridge._check_filter(jsonb_build_object('after',
    (SELECT jsonb_object_agg('c' || g, '[{"op": "IsNull"}]'::jsonb) FROM generate_series(1, 11) g)));
-- over 2048 bytes
SELECT event_bridge._check_filter(jsonb_build_object('op',
    jsonb_build_array(jsonb_build_object('op', 'StringIn', 'values', jsonb_build_array(repeat('x', 3000))))));
-- A good filter passes.
SELECT event_bridge._check_filter('{"op": [{"op": "StringIn", "values": ["INSERT"]}], "after": {"amount": [{"op": "NumberGreaterThan", "value": 0}]}}');

-- Transforms: EventGrid's TransForm object, what each makes of an event.
SELECT ev.name, t.transform ->> 'type' AS type, event_bridge._transform_event(t.transform, ev.event)
  FROM (VALUES (1, '{"type": "ORIGINAL"}'::jsonb),
               (2, '{"type": "CONSTANT", "value": "{\"ping\": 1}"}'),
               (3, '{"type": "CONSTANT", "value": "ping"}'),
               (4, jsonb_build_object('type', 'VARIABLE',
                     'value', '{"id": "$.after.id", "who": "$.after.status", "op": "$.op", "row": "$.after", "tag": "$.after.tags[1]", "from": "$[''before''][''status'']", "src": "pg"}',
                     'template', '{"id": ${id}, "who": "${who}", "op": "${op}", "row": ${row}, "tag": ${tag}, "from": ${from}, "src": "${src}", "say": "status \"${who}\" of ${row}"}'))
       ) t(n, transform)
  CROSS JOIN ev WHERE ev.name IN ('insert', 'update') ORDER BY t.n, ev.name;
-- Bad transforms: each refused, naming the part at fault.
-- an unknown type
SELECT event_bridge._check_transform('{"type": "TEMPLATE"}');
-- CONSTANT without value
SELECT event_bridge._check_transform('{"type": "CONSTANT"}');
-- VARIABLE value that is not JSON
SELECT event_bridge._check_transform('{"type": "VARIABLE", "value": "{id: $.after.id}", "template": "{}"}');
-- a variable name EventGrid refuses
SELECT event_bridge._check_transform('{"type": "VARIABLE", "value": "{\"HC.id\": \"$.after.id\"}", "template": "{}"}');
-- a nested variable
SELECT event_bridge._check_transform('{"type": "VARIABLE", "value": "{\"id\": {\"a\": 1}}", "template": "{}"}');
-- a JSONPath that is not supported
SELECT event_bridge._check_transform('{"type": "VARIABLE", "value": "{\"ids\": \"$..id\"}", "template": "{}"}');
SELECT event_bridge._check_transform('{"type": "VARIABLE", "value": "{\"ids\": \"$.after[*]\"}", "template": "{}"}');
-- a template naming an undefined variable
SELECT event_bridge._check_transform('{"type": "VARIABLE", "value": "{\"id\": \"$.after.id\"}", "template": "{\"id\": ${ID}}"}');
-- a template that is not JSON once rendered
SELECT event_bridge._check_transform('{"type": "VARIABLE", "value": "{\"id\": \"$.after.id\"}", "template": "My id is ${id}"}');
-- 101 variables
SELECT event_bridge._check_transform(jsonb_build_object('type', 'VARIABLE', 'template', '{}',
    'value', (SELECT jsonb_object_agg('v' || g, '$.op') FROM generate_series(1, 101) g)::text));
-- a template over 2048 characters
SELECT event_bridge._check_transform(jsonb_build_object('type', 'VARIABLE', 'value', '{}',
    'template', '"' || repeat('x', 2050) || '"'));

DROP EXTENSION event_bridge;
