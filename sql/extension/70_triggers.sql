/* ---------------------------------------------------------------------
 * Triggers on the catalog
 * ------------------------------------------------------------------- */

CREATE OR REPLACE TRIGGER prepare_table_filter
    BEFORE INSERT OR UPDATE ON event_bridge.table_filter_rules
    FOR EACH ROW EXECUTE FUNCTION event_bridge._prepare_table_filter();

CREATE OR REPLACE TRIGGER drop_attempts AFTER DELETE ON event_bridge.connector_shards
    REFERENCING OLD TABLE AS gone
    FOR EACH STATEMENT EXECUTE FUNCTION event_bridge._drop_attempts();

/*
 * DDL guards.  Event triggers run their functions as the user who ran the
 * DDL, so these are SECURITY DEFINER: they read and change the catalog.
 * They take nothing from that user but what PostgreSQL reports of the
 * command.
 */

/* An unlogged table writes no WAL, so a stream of it would stop in silence. */
CREATE OR REPLACE FUNCTION event_bridge._refuse_unlogged()
RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    t record;
BEGIN
    FOR t IN SELECT c.oid::regclass AS rel, s.stream_name
               FROM pg_event_trigger_ddl_commands() d
               JOIN pg_class c ON c.oid = d.objid
               JOIN event_bridge.streams s ON c.oid::regclass = ANY (s.tables)
              WHERE d.classid = 'pg_class'::regclass AND c.relpersistence <> 'p'
              LIMIT 1 LOOP
        RAISE EXCEPTION 'table % is captured by stream "%" and must stay logged', t.rel, t.stream_name
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = 'Changes of an unlogged table are not written to the WAL: the stream would miss them.',
                  HINT = 'Drop the stream first, or keep the table logged.';
    END LOOP;
END
$$;
COMMENT ON FUNCTION event_bridge._refuse_unlogged() IS
    'Internal: refuses ALTER TABLE ... SET UNLOGGED of a captured table';

/*
 * A dropped table leaves its streams in the same transaction, so no stream
 * names an OID that a later table could take, and pg_dump names only
 * tables that exist.
 */
CREATE OR REPLACE FUNCTION event_bridge._forget_dropped_tables()
RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    gone regclass[];
BEGIN
    IF to_regclass('event_bridge.streams') IS NULL THEN
        RETURN;                 -- the extension itself is being dropped
    END IF;
    gone := ARRAY(SELECT d.objid::regclass FROM pg_event_trigger_dropped_objects() d
                   WHERE d.classid = 'pg_class'::regclass AND d.objsubid = 0);
    UPDATE event_bridge.streams s
       SET tables = ARRAY(SELECT t FROM unnest(s.tables) WITH ORDINALITY u(t, i)
                           WHERE t <> ALL (gone) ORDER BY i)
     WHERE s.tables && gone;
    DELETE FROM event_bridge.table_filter_rules f WHERE f.table_name = ANY (gone);
END
$$;
COMMENT ON FUNCTION event_bridge._forget_dropped_tables() IS
    'Internal: removes dropped tables from the streams that capture them, and their capture filters';

DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_event_trigger WHERE evtname = 'event_bridge_refuse_unlogged') THEN
        CREATE EVENT TRIGGER event_bridge_refuse_unlogged ON ddl_command_end
            WHEN TAG IN ('ALTER TABLE')
            EXECUTE FUNCTION event_bridge._refuse_unlogged();
    END IF;
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_event_trigger WHERE evtname = 'event_bridge_forget_dropped_tables') THEN
        CREATE EVENT TRIGGER event_bridge_forget_dropped_tables ON sql_drop
            EXECUTE FUNCTION event_bridge._forget_dropped_tables();
    END IF;
END
$$;
