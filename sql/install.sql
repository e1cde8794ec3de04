-- Installing: a schema of the user's choice, never public, not relocatable.
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS worker_heartbeat CASCADE;
RESET client_min_messages;
-- error_of(sql): the SQLSTATE, message and hint of the error a statement
-- raises (the same on every PostgreSQL version, unlike VERBOSITY verbose).
CREATE FUNCTION pg_temp.error_of(p_sql text, OUT code text, OUT message text, OUT hint text)
LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE p_sql;
    code := 'none';
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS code = RETURNED_SQLSTATE, message = MESSAGE_TEXT, hint = PG_EXCEPTION_HINT;
END
$$;

-- Without SCHEMA the extension would land in public: refused, with the two
-- lines to run instead.
SELECT * FROM pg_temp.error_of($$CREATE EXTENSION worker_heartbeat$$);
SELECT * FROM pg_temp.error_of($$CREATE EXTENSION worker_heartbeat SCHEMA public$$);

-- A schema name that needs quotes works.
CREATE SCHEMA "Fleet Ops";
CREATE EXTENSION worker_heartbeat SCHEMA "Fleet Ops";
SELECT extnamespace::regnamespace AS schema, extrelocatable, extversion
  FROM pg_extension WHERE extname = 'worker_heartbeat';
SELECT "Fleet Ops".stop_reaper() IS NOT NULL AS reaper_stopped;
SELECT "Fleet Ops".upsert_worker_heartbeat('crawler-1', 'crawler');
SELECT worker_id, worker_type, status FROM "Fleet Ops".worker_heartbeats;
SELECT worker_id FROM "Fleet Ops".v_active_workers;

-- Not relocatable afterwards.
ALTER EXTENSION worker_heartbeat SET SCHEMA public;

-- Everything the extension owns, all in its schema.
SELECT pg_describe_object(d.classid, d.objid, 0) AS object
  FROM pg_depend d
 WHERE d.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'worker_heartbeat')
   AND d.deptype = 'e'
   AND d.classid <> 'pg_type'::regclass  -- row types: listed by PostgreSQL 17, not 15
 ORDER BY 1;

DROP EXTENSION worker_heartbeat;
DROP SCHEMA "Fleet Ops";
