-- Credentials (DESIGN 9.4): create, rotate, drop, the view; who may use
-- them; targets and the credentials they take; and the request signatures,
-- byte for byte against the platforms' own signers.
CREATE EXTENSION event_bridge;
\set SHOW_CONTEXT never
CREATE TABLE t (id int PRIMARY KEY, v text);
ALTER TABLE t REPLICA IDENTITY FULL;
SELECT event_bridge.create_stream('s', ARRAY['t']::regclass[]);

-- One credential of each provider.
SELECT event_bridge.create_credential('ali', 'aliyun',
    '{"access_key_id": "LTAI_TEST", "access_key_secret": "hunter2-ali"}');
SELECT event_bridge.create_credential('hw', 'huaweicloud',
    '{"access_key": "HWAK_TEST", "secret_key": "hunter2-hw", "security_token": "hunter2-sts"}');
SELECT event_bridge.create_credential('aws', 'aws',
    '{"access_key_id": "AKIDEXAMPLE", "secret_access_key": "hunter2-aws", "region": "us-east-1"}');
SELECT event_bridge.create_credential('hook', 'webhook',
    '{"secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"}');
SELECT event_bridge.create_credential('tok', 'token', '{"header": "X-Auth-Token", "value": "hunter2-tok"}');
SELECT credential_name, provider, key_id, owner, rotated_at IS NULL AS never_rotated, connectors
  FROM event_bridge.credentials ORDER BY 1;

-- Targets take the credentials of their platform.
SELECT event_bridge.create_connector('to_fc', 's',
    'https://1234.cn-hangzhou.fc.aliyuncs.com/2023-03-30/functions/my-func/invocations',
    target => 'fc', credential => 'ali');
SELECT event_bridge.create_connector('to_fg', 's',
    'https://functiongraph.cn-north-4.myhuaweicloud.com/v2/0123456789abcdef/fgs/functions/urn:fss:cn-north-4:0123456789abcdef:function:default:fn:latest/invocations',
    target => 'functiongraph', credential => 'hw', invocation => 'async');
SELECT event_bridge.create_connector('to_lambda', 's',
    'https://lambda.eu-west-1.amazonaws.com/2015-03-31/functions/my-fn/invocations',
    target => 'lambda', credential => 'aws');
SELECT event_bridge.create_connector('to_hook', 's', 'http://127.0.0.1:9/', credential => 'hook');
SELECT connector_name, target, credential, invocation FROM event_bridge.connector_status ORDER BY 1;
SELECT credential_name, connectors FROM event_bridge.credentials ORDER BY 1;

-- a credential of another platform
SELECT event_bridge.create_connector('bad', 's',
    'https://1234.cn-hangzhou.fc.aliyuncs.com/2023-03-30/functions/f/invocations',
    target => 'fc', credential => 'aws');
-- a platform target without a credential
SELECT event_bridge.create_connector('bad', 's',
    'https://lambda.eu-west-1.amazonaws.com/2015-03-31/functions/f/invocations', target => 'lambda');
-- an access key credential on a plain http target
SELECT event_bridge.create_connector('bad', 's', 'http://127.0.0.1:9/', credential => 'ali');
-- an endpoint that is not Function Compute's InvokeFunction
SELECT event_bridge.create_connector('bad', 's', 'https://example.com/invoke',
    target => 'fc', credential => 'ali');
-- a query Function Compute does not take
SELECT event_bridge.create_connector('bad', 's',
    'https://1234.cn-hangzhou.fc.aliyuncs.com/2023-03-30/functions/f/invocations?x=1',
    target => 'fc', credential => 'ali');
-- a user name in a platform endpoint
SELECT event_bridge.create_connector('bad', 's',
    'https://me:hunter2@1234.cn-hangzhou.fc.aliyuncs.com/2023-03-30/functions/f/invocations',
    target => 'fc', credential => 'ali');
-- a FunctionGraph endpoint without its project id and URN
SELECT event_bridge.create_connector('bad', 's', 'https://functiongraph.example.com/invoke',
    target => 'functiongraph', credential => 'tok');
-- a Lambda endpoint whose region cannot be told, with a credential without one
SELECT event_bridge.create_credential('aws_noregion', 'aws',
    '{"access_key_id": "AKIDEXAMPLE", "secret_access_key": "hunter2-aws"}');
SELECT event_bridge.create_connector('bad', 's', 'http://127.0.0.1:9/2015-03-31/functions/f/invocations',
    target => 'lambda', credential => 'aws_noregion');
-- a header of the connector's own that the platform's signature covers
SELECT event_bridge.create_connector('bad', 's',
    'https://1234.cn-hangzhou.fc.aliyuncs.com/2023-03-30/functions/f/invocations',
    target => 'fc', credential => 'ali', headers => '{"Authorization": "hunter2"}');
-- async on a plain http target
SELECT event_bridge.create_connector('bad', 's', 'http://127.0.0.1:9/', invocation => 'async');
-- an unknown target
SELECT event_bridge.create_connector('bad', 's', 'http://127.0.0.1:9/', target => 'sqs');
-- a credential that does not exist
SELECT event_bridge.create_connector('bad', 's', 'http://127.0.0.1:9/', credential => 'nope');
-- alter_connector checks the result as a whole: fc with a webhook credential
SELECT event_bridge.alter_connector('to_hook', target => 'fc');
-- '' removes a credential
SELECT event_bridge.alter_connector('to_hook', credential => '');
SELECT connector_name, credential FROM event_bridge.connector_status WHERE connector_name = 'to_hook';
SELECT event_bridge.alter_connector('to_hook', credential => 'tok');

-- Secrets: each provider's shape is checked, and no error quotes a value.
-- not JSON
SELECT event_bridge.create_credential('x', 'aliyun', '{"access_key_id": "hunter2');
-- a JSON array
SELECT event_bridge.create_credential('x', 'aliyun', '["hunter2"]');
-- a required key missing
SELECT event_bridge.create_credential('x', 'aliyun', '{"access_key_id": "LTAI"}');
-- a key the provider does not take (it is not named: it may be a secret)
SELECT event_bridge.create_credential('x', 'aliyun',
    '{"access_key_id": "LTAI", "access_key_secret": "s", "hunter2": "x"}');
-- a value that is not a string
SELECT event_bridge.create_credential('x', 'huaweicloud', '{"access_key": "A", "secret_key": 12345}');
-- a value with a line break
SELECT event_bridge.create_credential('x', 'token', '{"header": "X-Auth-Token", "value": "a\nhunter2"}');
-- a token header that frames the request
SELECT event_bridge.create_credential('x', 'token', '{"header": "Content-Length", "value": "hunter2"}');
-- a webhook secret without its prefix
SELECT event_bridge.create_credential('x', 'webhook', '{"secret": "hunter2"}');
-- a webhook secret that is not base64
SELECT event_bridge.create_credential('x', 'webhook', '{"secret": "whsec_hunter2!!"}');
-- a webhook secret too short
SELECT event_bridge.create_credential('x', 'webhook', '{"secret": "whsec_aHVudGVyMg=="}');
-- an access key id with a space
SELECT event_bridge.create_credential('x', 'aws', '{"access_key_id": "AK ID", "secret_access_key": "s"}');
-- an AWS region that is not one
SELECT event_bridge.create_credential('x', 'aws',
    '{"access_key_id": "AKID", "secret_access_key": "s", "region": "Mars/1"}');
-- an unknown provider
SELECT event_bridge.create_credential('x', 'gcp', '{}');
-- a kafka credential without security_protocol
SELECT event_bridge.create_credential('x', 'kafka', '{"username": "u", "password": "hunter2"}');
-- an unknown Kafka security_protocol, not quoted (a password under the wrong key)
SELECT event_bridge.create_credential('x', 'kafka', '{"security_protocol": "hunter2"}');
-- SASL without a mechanism
SELECT event_bridge.create_credential('x', 'kafka',
    '{"security_protocol": "sasl_ssl", "username": "u", "password": "hunter2"}');
-- SASL with a mechanism it does not take
SELECT event_bridge.create_credential('x', 'kafka',
    '{"security_protocol": "sasl_ssl", "sasl_mechanism": "GSSAPI", "username": "u", "password": "hunter2"}');
-- a password without SASL
SELECT event_bridge.create_credential('x', 'kafka', '{"security_protocol": "ssl", "password": "hunter2"}');
-- a CA for plaintext
SELECT event_bridge.create_credential('x', 'kafka',
    '{"security_protocol": "plaintext", "ca_pem": "-----BEGIN CERTIFICATE-----\\nMIIB\\n-----END CERTIFICATE-----\\n"}');
-- a CA that is not PEM
SELECT event_bridge.create_credential('x', 'kafka', '{"security_protocol": "ssl", "ca_pem": "hunter2"}');
-- a kafka credential for an http target, and a platform's for kafka
SELECT event_bridge.create_credential('kaf', 'kafka',
    '{"security_protocol": "sasl_ssl", "sasl_mechanism": "SCRAM-SHA-512", "username": "u", "password": "hunter2-kafka",
      "ca_pem": "-----BEGIN CERTIFICATE-----\\nMIIB\\n-----END CERTIFICATE-----\\n"}');
SELECT event_bridge.create_connector('bad', 's', 'http://127.0.0.1:9/', credential => 'kaf');
SELECT event_bridge.create_connector('bad', 's', 'kafka://127.0.0.1:9092/t', target => 'kafka',
    credential => 'ali');
SELECT credential_name, provider, key_id FROM event_bridge.credentials WHERE provider = 'kafka';
SELECT event_bridge.drop_credential('kaf');
-- a name taken
SELECT event_bridge.create_credential('ali', 'aliyun', '{"access_key_id": "L", "access_key_secret": "s"}');
-- a bad name
SELECT event_bridge.create_credential('a b', 'aliyun', '{"access_key_id": "L", "access_key_secret": "s"}');
-- rotation with the wrong shape for the provider
SELECT event_bridge.alter_credential('ali', '{"access_key": "HW", "secret_key": "hunter2"}');
-- dropping a credential in use
SELECT event_bridge.drop_credential('ali');

-- Rotation: the secret changes, the view shows when, and connectors reload.
SELECT version AS v0 FROM event_bridge.connectors WHERE connector_name = 'to_fc' \gset
SELECT event_bridge.alter_credential('ali', '{"access_key_id": "LTAI_NEW", "access_key_secret": "hunter3"}');
SELECT key_id, rotated_at IS NOT NULL AS rotated FROM event_bridge.credentials WHERE credential_name = 'ali';
SELECT version > :v0 AS reloads FROM event_bridge.connectors WHERE connector_name = 'to_fc';

-- No view shows a secret.
SELECT count(*) AS rows_with_secret
  FROM (SELECT row_to_json(c)::text AS j FROM event_bridge.credentials c
        UNION ALL SELECT row_to_json(c)::text FROM event_bridge.connector_status c) v
 WHERE j LIKE '%hunter%';

-- Admins: they manage credentials, but read no secret, and use, change or
-- drop only the credentials of roles they are members of.
CREATE ROLE eb_alice LOGIN IN ROLE event_bridge_admin;
CREATE ROLE eb_mallory LOGIN IN ROLE event_bridge_admin;
GRANT SELECT ON t TO eb_alice, eb_mallory;
SET ROLE eb_alice;
SELECT event_bridge.create_credential('alice_tok', 'token', '{"header": "X-Auth-Token", "value": "hunter2-alice"}');
SELECT event_bridge.create_connector('alice_c', 's', 'https://alice.example.com/', credential => 'alice_tok');
SELECT credential_name, owner FROM event_bridge.credentials WHERE credential_name = 'alice_tok';
-- an admin reads no secret
SELECT secret FROM event_bridge.credential_secrets;
SET ROLE eb_mallory;
-- another admin sends alice's token to an endpoint of theirs: refused
SELECT event_bridge.create_connector('steal', 's', 'https://mallory.example.com/', credential => 'alice_tok');
SELECT event_bridge.alter_connector('alice_c', endpoint => 'https://mallory.example.com/');
-- nor may they rotate or drop it
SELECT event_bridge.alter_credential('alice_tok', '{"header": "X-Auth-Token", "value": "x"}');
SELECT event_bridge.drop_credential('alice_tok');
-- settings that leave the endpoint and credential alone are theirs to change
SELECT event_bridge.alter_connector('alice_c', batch_size => 5);
RESET ROLE;
SELECT connector_name, endpoint, credential, batch_size FROM event_bridge.connector_status
 WHERE connector_name = 'alice_c';
SELECT event_bridge.drop_connector('alice_c');
SET ROLE eb_alice;
SELECT event_bridge.drop_credential('alice_tok');
RESET ROLE;
SELECT count(*) AS alice_credentials FROM event_bridge.credentials WHERE credential_name = 'alice_tok';

-- Signatures, byte for byte.  Alibaba ACS3-HMAC-SHA256: a request that
-- @alicloud/fc20230330 signed (Function Compute's InvokeFunction).
SELECT event_bridge._signature('acs3', '/2023-03-30/functions/my-func/invocations', '',
    ARRAY['x-acs-version:2023-03-30', 'host:1234567890123456.cn-hangzhou.fc.aliyuncs.com',
          'content-type:application/octet-stream', 'x-acs-action:InvokeFunction',
          'x-acs-content-sha256:015abd7f5cc57a2dd94b7590f04ad8084273905ee33ec5cebeae62276a97f862',
          'x-acs-credentials-provider:static_ak', 'x-acs-date:2025-01-02T03:04:05Z',
          'x-acs-signature-nonce:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef'],
    '{"a":1}', 'LTAI_TEST', 'secret_test', '');
-- the same with an STS token and a qualifier
SELECT event_bridge._signature('acs3', '/2023-03-30/functions/my-func/invocations', 'qualifier=LATEST',
    ARRAY['x-acs-version:2023-03-30', 'host:1234567890123456.cn-hangzhou.fc.aliyuncs.com',
          'content-type:application/octet-stream', 'x-acs-action:InvokeFunction',
          'x-acs-content-sha256:015abd7f5cc57a2dd94b7590f04ad8084273905ee33ec5cebeae62276a97f862',
          'x-acs-credentials-provider:static_sts', 'x-acs-date:2025-01-02T03:04:05Z',
          'x-acs-signature-nonce:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef',
          'x-acs-accesskey-id:LTAI_TEST', 'x-acs-security-token:sts_token_test'],
    '{"a":1}', 'LTAI_TEST', 'secret_test', '');
-- Huawei SDK-HMAC-SHA256: a request that @huaweicloud/huaweicloud-sdk-core
-- signed (FunctionGraph's invocation, the URN's ":" encoded in the
-- canonical path only).
SELECT event_bridge._signature('sdk-hmac',
    '/v2/0123456789abcdef0123456789abcdef/fgs/functions/urn:fss:cn-north-4:0123456789abcdef0123456789abcdef:function:default:event_bridge_fn:latest/invocations',
    '', ARRAY['content-type:application/json', 'host:functiongraph.cn-north-4.myhuaweicloud.com',
              'x-project-id:0123456789abcdef0123456789abcdef', 'x-sdk-date:20240115T080910Z'],
    '{"events":[{"id":1,"op":"INSERT","payload":{"a":"x y","b":[1,2]}}]}',
    'HWAK_TEST', 'hwsk_test', '20240115T080910Z');
SELECT event_bridge._signature('sdk-hmac',
    '/v2/0123456789abcdef0123456789abcdef/fgs/functions/urn:fss:cn-north-4:0123456789abcdef0123456789abcdef:function:default:event_bridge_fn:latest/invocations',
    '', ARRAY['content-type:application/json', 'host:functiongraph.cn-north-4.myhuaweicloud.com',
              'x-project-id:0123456789abcdef0123456789abcdef', 'x-sdk-date:20240115T080910Z',
              'x-security-token:HWSECTOKEN_TEST=='],
    '{"events":[{"id":1,"op":"INSERT","payload":{"a":"x y","b":[1,2]}}]}',
    'HWAK_TEST', 'hwsk_test', '20240115T080910Z');
-- Standard Webhooks: the test vector of the specification's libraries.
SELECT event_bridge._signature('webhook', '', '', '{}', '{"test": 2432232314}',
    'msg_p5jXN8AQM9LWM0D4loKWxJek', 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw', '1614265330');

DROP EXTENSION event_bridge;
DROP TABLE t;
DROP ROLE eb_alice;
DROP ROLE eb_mallory;
