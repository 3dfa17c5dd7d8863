/* ---------------------------------------------------------------------
 * Credentials
 *
 * A credential signs or authenticates the requests of the connectors that
 * name it (DESIGN 9.4): an Alibaba Cloud, Huawei Cloud or AWS access key,
 * a Standard Webhooks secret, or a token header.  Secrets are taken as
 * text and parsed here, so that no error quotes them, and the functions
 * that take them never log their statement.  Only the extension's owner
 * reads the table; event_bridge.credential_secrets shows the rest.  A credential
 * is used and changed by members of the role that created it.
 * ------------------------------------------------------------------- */

/*
 * Parses a credential's secret for its provider into the columns it is
 * kept in.  Errors name keys, never values.
 */
CREATE OR REPLACE FUNCTION event_bridge._parse_secret(
    provider          text,
    secret            text,
    OUT key_id        text,
    OUT secret_value  text,
    OUT session_token text,
    OUT region        text,
    OUT options       jsonb)
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    j        jsonb;
    k        text;
    v        text;
    keys     text[];
    required int := 2;      -- the first keys of keys are required
    example  text;
BEGIN
    CASE provider
        WHEN 'aliyun' THEN
            keys := ARRAY['access_key_id', 'access_key_secret', 'security_token'];
            example := '{"access_key_id": "LTAI...", "access_key_secret": "..."}';
        WHEN 'huaweicloud' THEN
            keys := ARRAY['access_key', 'secret_key', 'security_token'];
            example := '{"access_key": "...", "secret_key": "..."}';
        WHEN 'aws' THEN
            keys := ARRAY['access_key_id', 'secret_access_key', 'session_token', 'region'];
            example := '{"access_key_id": "AKIA...", "secret_access_key": "...", "region": "us-east-1"}';
        WHEN 'webhook' THEN
            keys := ARRAY['secret'];
            required := 1;
            example := '{"secret": "whsec_<base64 of 24 to 64 random bytes>"}';
        WHEN 'token' THEN
            keys := ARRAY['header', 'value'];
            example := '{"header": "X-Auth-Token", "value": "..."}';
        WHEN 'kafka' THEN
            keys := ARRAY['security_protocol', 'sasl_mechanism', 'username', 'password', 'ca_pem'];
            required := 1;
            example := '{"security_protocol": "sasl_ssl", "sasl_mechanism": "SCRAM-SHA-512", "username": "...", "password": "..."}';
        ELSE
            RAISE EXCEPTION 'unknown credential provider "%"', provider
                USING ERRCODE = 'invalid_parameter_value',
                      HINT = 'The providers are aliyun, huaweicloud, aws, webhook (Standard Webhooks), token and kafka.';
    END CASE;

    BEGIN
        j := secret::jsonb;
    EXCEPTION WHEN invalid_text_representation THEN
        RAISE EXCEPTION 'secret is not valid JSON'
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = format('A secret of provider %s looks like ''%s''.', provider, example);
    END;
    IF jsonb_typeof(j) <> 'object' THEN
        RAISE EXCEPTION 'secret must be a JSON object'
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = format('A secret of provider %s looks like ''%s''.', provider, example);
    END IF;
    -- A key that is not expected is not named: it may be a secret pasted in the wrong place.
    IF EXISTS (SELECT FROM jsonb_object_keys(j) o WHERE o <> ALL (keys)) THEN
        RAISE EXCEPTION 'secret has a key that provider % does not take', provider
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = format('The keys are %s.', array_to_string(keys, ', ')),
                  HINT = format('A secret of provider %s looks like ''%s''.', provider, example);
    END IF;
    FOR i IN 1 .. array_length(keys, 1) LOOP
        k := keys[i];
        IF NOT j ? k THEN
            IF i <= required THEN
                RAISE EXCEPTION 'secret lacks "%"', k
                    USING ERRCODE = 'invalid_parameter_value',
                          HINT = format('A secret of provider %s looks like ''%s''.', provider, example);
            END IF;
            CONTINUE;
        END IF;
        IF jsonb_typeof(j -> k) <> 'string' THEN
            RAISE EXCEPTION '"%" of the secret must be a JSON string', k
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        v := j ->> k;
        IF k = 'ca_pem' THEN
            -- PEM: lines of base64 between BEGIN and END lines.
            IF v !~ '^-----BEGIN CERTIFICATE-----' OR v ~ '[^[:print:]\r\n]' OR length(v) > 65536 THEN
                RAISE EXCEPTION '"ca_pem" of the secret must be PEM certificates (-----BEGIN CERTIFICATE-----...), at most 65536 characters'
                    USING ERRCODE = 'invalid_parameter_value';
            END IF;
        ELSIF v = '' OR v ~ '[[:cntrl:]]' OR length(v) > 8192 THEN
            RAISE EXCEPTION '"%" of the secret must be 1 to 8192 characters without control characters', k
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
    END LOOP;

    CASE provider
        WHEN 'aliyun' THEN
            key_id := j ->> 'access_key_id';
            secret_value := j ->> 'access_key_secret';
            session_token := j ->> 'security_token';
        WHEN 'huaweicloud' THEN
            key_id := j ->> 'access_key';
            secret_value := j ->> 'secret_key';
            session_token := j ->> 'security_token';
        WHEN 'aws' THEN
            key_id := j ->> 'access_key_id';
            secret_value := j ->> 'secret_access_key';
            session_token := j ->> 'session_token';
            region := j ->> 'region';
            IF region !~ '^[a-z0-9-]{1,64}$' THEN
                RAISE EXCEPTION 'invalid AWS region "%"', region
                    USING ERRCODE = 'invalid_parameter_value',
                          HINT = 'A region looks like us-east-1.';
            END IF;
        WHEN 'webhook' THEN
            secret_value := j ->> 'secret';
            IF secret_value !~ '^whsec_' THEN
                RAISE EXCEPTION 'a Standard Webhooks secret must start with "whsec_"'
                    USING ERRCODE = 'invalid_parameter_value',
                          HINT = 'Make one with: SELECT ''whsec_'' || encode(gen_random_bytes(32), ''base64''); (pgcrypto).';
            END IF;
            BEGIN
                k := length(decode(substr(secret_value, 7), 'base64'))::text;
            EXCEPTION WHEN OTHERS THEN
                k := NULL;
            END;
            IF k IS NULL OR k::int NOT BETWEEN 24 AND 64 THEN
                RAISE EXCEPTION 'a Standard Webhooks secret must be "whsec_" and the base64 of 24 to 64 bytes'
                    USING ERRCODE = 'invalid_parameter_value';
            END IF;
        WHEN 'kafka' THEN
            key_id := j ->> 'username';
            secret_value := coalesce(j ->> 'password', '');
            options := jsonb_strip_nulls(jsonb_build_object(
                'security_protocol', lower(j ->> 'security_protocol'),
                'sasl_mechanism', upper(j ->> 'sasl_mechanism'),
                'ca_pem', j ->> 'ca_pem'));
            IF options ->> 'security_protocol' NOT IN ('plaintext', 'ssl', 'sasl_plaintext', 'sasl_ssl') THEN
                -- The value is not quoted: it may be a secret put under the wrong key.
                RAISE EXCEPTION 'unknown Kafka "security_protocol"'
                    USING ERRCODE = 'invalid_parameter_value',
                          HINT = 'It is plaintext, ssl, sasl_plaintext or sasl_ssl.';
            END IF;
            IF options ->> 'security_protocol' LIKE 'sasl%' THEN
                IF coalesce(options ->> 'sasl_mechanism', '') NOT IN ('PLAIN', 'SCRAM-SHA-256', 'SCRAM-SHA-512')
                   OR key_id IS NULL OR secret_value = '' THEN
                    RAISE EXCEPTION 'a Kafka credential with SASL needs "sasl_mechanism" (PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512), "username" and "password"'
                        USING ERRCODE = 'invalid_parameter_value';
                END IF;
            ELSIF options ? 'sasl_mechanism' OR key_id IS NOT NULL OR secret_value <> '' THEN
                RAISE EXCEPTION 'security_protocol % takes no "sasl_mechanism", "username" or "password"',
                    options ->> 'security_protocol'
                    USING ERRCODE = 'invalid_parameter_value';
            END IF;
            IF options ? 'ca_pem' AND options ->> 'security_protocol' NOT LIKE '%ssl' THEN
                RAISE EXCEPTION '"ca_pem" is for security_protocol ssl or sasl_ssl'
                    USING ERRCODE = 'invalid_parameter_value';
            END IF;
        WHEN 'token' THEN
            key_id := j ->> 'header';
            secret_value := j ->> 'value';
            PERFORM event_bridge._check_header_name(key_id);
    END CASE;
    IF provider IN ('aliyun', 'huaweicloud', 'aws') AND key_id !~ '^[A-Za-z0-9._-]{1,128}$' THEN
        RAISE EXCEPTION 'the access key id must be 1 to 128 letters, digits, ".", "_" or "-"'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
END
$$;
COMMENT ON FUNCTION event_bridge._parse_secret(text, text) IS
    'Internal: checks a credential''s secret for its provider and returns the parts it is kept in';

CREATE OR REPLACE FUNCTION event_bridge.create_credential(
    credential_name text,
    provider        text,
    secret          text)
RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
-- secret is a secret: a refused call must not log its statement.
SET log_min_error_statement = panic
AS $$
DECLARE
    p record;
BEGIN
    PERFORM event_bridge._hide_statement();
    PERFORM event_bridge._check_admin();
    IF credential_name IS NULL OR provider IS NULL OR secret IS NULL THEN
        RAISE EXCEPTION 'arguments of create_credential must not be null'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF credential_name !~ '^[A-Za-z_][A-Za-z0-9_.-]{0,127}$' THEN
        RAISE EXCEPTION 'invalid credential name "%"', credential_name
            USING ERRCODE = 'invalid_name',
                  DETAIL = 'A credential name starts with a letter or underscore and holds at most 128 letters, digits, "_", "." or "-".';
    END IF;
    p := event_bridge._parse_secret(provider, secret);
    INSERT INTO event_bridge.credential_secrets (credential_id, credential_name, provider, owner,
        key_id, secret, session_token, region, options)
    VALUES (nextval('event_bridge.credential_id_seq'), credential_name, provider,
        event_bridge._caller(), p.key_id, p.secret_value, p.session_token, p.region, p.options);
EXCEPTION
    WHEN unique_violation THEN
        RAISE EXCEPTION 'credential "%" already exists', credential_name
            USING ERRCODE = 'duplicate_object';
END
$$;
COMMENT ON FUNCTION event_bridge.create_credential(text, text, text) IS
    'Keeps a secret (provider aliyun, huaweicloud, aws, webhook or token) that connectors name to sign or authenticate their requests; only the extension''s owner can read it back';

/*
 * Finds a credential by name for a change, locking its row, and checks that
 * the caller may change it.  Returns its row.
 */
CREATE OR REPLACE FUNCTION event_bridge._lock_credential(credential_name text)
RETURNS event_bridge.credential_secrets
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    cr event_bridge.credential_secrets;
BEGIN
    PERFORM event_bridge._check_admin();
    IF credential_name IS NULL THEN
        RAISE EXCEPTION 'credential name must not be null'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    SELECT * INTO cr FROM event_bridge.credential_secrets c
     WHERE c.credential_name = _lock_credential.credential_name FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'credential "%" does not exist', credential_name
            USING ERRCODE = 'undefined_object';
    END IF;
    PERFORM event_bridge._check_credential_use(cr.owner, cr.credential_name);
    RETURN cr;
END
$$;
COMMENT ON FUNCTION event_bridge._lock_credential(text) IS
    'Internal: checks rights, finds and locks a credential by name, returns its row';

CREATE OR REPLACE FUNCTION event_bridge.alter_credential(
    credential_name text,
    secret          text)
RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
-- secret is a secret: a refused call must not log its statement.
SET log_min_error_statement = panic
AS $$
DECLARE
    cr event_bridge.credential_secrets;
    p  record;
BEGIN
    PERFORM event_bridge._hide_statement();
    cr := event_bridge._lock_credential(alter_credential.credential_name);
    IF secret IS NULL THEN
        RAISE EXCEPTION 'secret must not be null'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    p := event_bridge._parse_secret(cr.provider, secret);
    UPDATE event_bridge.credential_secrets c
       SET key_id = p.key_id, secret = p.secret_value, session_token = p.session_token,
           region = p.region, options = p.options, rotated_at = now()
     WHERE c.credential_id = cr.credential_id;
    -- The delivery worker reloads these connectors: their next attempt is signed with the new secret.
    UPDATE event_bridge.connectors co SET version = co.version + 1
     WHERE co.credential_id = cr.credential_id;
    PERFORM event_bridge._wake_delivery();
END
$$;
COMMENT ON FUNCTION event_bridge.alter_credential(text, text) IS
    'Replaces a credential''s secret (rotation): the next attempt of every connector that uses it is signed with the new one, and nothing is lost';

CREATE OR REPLACE FUNCTION event_bridge.drop_credential(credential_name text)
RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    cr    event_bridge.credential_secrets;
    users text;
BEGIN
    cr := event_bridge._lock_credential(drop_credential.credential_name);
    SELECT string_agg(format('"%s"', co.connector_name), ', ' ORDER BY co.connector_name) INTO users
      FROM event_bridge.connectors co WHERE co.credential_id = cr.credential_id;
    IF users IS NOT NULL THEN
        RAISE EXCEPTION 'credential "%" is used by connectors', cr.credential_name
            USING ERRCODE = 'dependent_objects_still_exist',
                  DETAIL = format('Connectors using it: %s.', users),
                  HINT = 'Drop those connectors, or give them another credential with alter_connector(..., credential => ...).';
    END IF;
    DELETE FROM event_bridge.credential_secrets c WHERE c.credential_id = cr.credential_id;
END
$$;
COMMENT ON FUNCTION event_bridge.drop_credential(text) IS
    'Drops a credential that no connector uses';
