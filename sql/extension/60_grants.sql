/* ---------------------------------------------------------------------
 * Grants.  The whole security model in one place:
 *  - nobody but the extension's owner (a superuser) has any privilege on
 *    the tables, sequences and internal functions;
 *  - event_bridge_admin may EXECUTE the API, which runs as the owner
 *    (SECURITY DEFINER) and checks the caller's rights itself, and may
 *    SELECT the views;
 *  - the view helpers may be executed by anyone: they read no table of
 *    event_bridge.
 * Run by a fresh install and by every upgrade, so both end the same.
 * ------------------------------------------------------------------- */

REVOKE ALL ON ALL TABLES IN SCHEMA event_bridge FROM PUBLIC, event_bridge_admin;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA event_bridge FROM PUBLIC, event_bridge_admin;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA event_bridge FROM PUBLIC, event_bridge_admin;
GRANT USAGE ON SCHEMA event_bridge TO PUBLIC;

GRANT EXECUTE ON FUNCTION
    event_bridge.create_stream(text, regclass[], int, interval, boolean),
    event_bridge.drop_stream(text),
    event_bridge.set_table_filter(text, regclass, text, name[]),
    event_bridge.get_records(text, int, bigint, int),
    event_bridge.wait_for_capture(interval),
    event_bridge.recover_capture(),
    event_bridge.create_connector(text, text, text, timestamptz, text, int, interval, interval, int, interval, text, int, text, interval, text, interval, boolean, text, text, text, jsonb, jsonb, jsonb),
    event_bridge.alter_connector(text, text, text, int, interval, interval, int, interval, text, int, text, interval, text, interval, boolean, text, text, text, jsonb, jsonb, jsonb),
    event_bridge.stop_connector(text),
    event_bridge.start_connector(text),
    event_bridge.resume_connector(text),
    event_bridge.reset_connector(text, timestamptz),
    event_bridge.drop_connector(text),
    event_bridge.skip_batch(text, int),
    event_bridge.redeliver_dead_letters(text, text[]),
    event_bridge.purge_dead_letters(text, interval),
    event_bridge.create_credential(text, text, text),
    event_bridge.alter_credential(text, text),
    event_bridge.drop_credential(text)
TO event_bridge_admin;

GRANT SELECT ON
    event_bridge.stream_status,
    event_bridge.capture_filters,
    event_bridge.connector_status,
    event_bridge.shard_status,
    event_bridge.connector_attempts_log,
    event_bridge.dead_letters,
    event_bridge.credentials
TO event_bridge_admin;

GRANT EXECUTE ON FUNCTION
    event_bridge._capture_lag_bytes(),
    event_bridge._endpoint_without_secrets(text),
    event_bridge._may_read_record(regclass[], text)
TO PUBLIC;
