/* event_bridge extension script: the role that administers streams and connectors */

\echo Use "CREATE EXTENSION event_bridge" to load this file. \quit

/*
 * Role that may create, change and drop streams and connectors.  Created
 * once per cluster; a later CREATE EXTENSION in another database reuses it.
 */
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'event_bridge_admin') THEN
        CREATE ROLE event_bridge_admin NOLOGIN;
    END IF;
END
$$;

