-- worker_heartbeat 1.0
-- Assembled by make from src/sql/1.0/*.sql in name order. @extschema@ is the
-- schema named in CREATE EXTENSION ... SCHEMA; every object is created there
-- and every reference is schema-qualified.

\echo Use "CREATE EXTENSION worker_heartbeat SCHEMA your_schema" to load this file. \quit

DO $install_guard$
BEGIN
    -- During CREATE EXTENSION the search path is the target schema.
    IF pg_catalog.current_schema() OPERATOR(pg_catalog.=) 'public' THEN
        RAISE EXCEPTION 'worker_heartbeat cannot be installed in schema public'
            USING ERRCODE = 'invalid_schema_name',
                  DETAIL = 'Its tables, views and functions need a schema of their own, so that their names cannot clash with yours and access can be granted on the schema.',
                  HINT = 'CREATE SCHEMA pm_pipeline; CREATE EXTENSION worker_heartbeat SCHEMA pm_pipeline;';
    END IF;
END
$install_guard$;
