-- The reaper background worker.

CREATE FUNCTION @extschema@.reaper_status()
RETURNS TABLE (database name, pid integer, state text, started_at timestamptz, last_pass_at timestamptz,
               last_pass_ms double precision, passes bigint, workers_declared_dead bigint,
               leases_released bigint, last_error text)
LANGUAGE c VOLATILE
SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'wh_reaper_status';
COMMENT ON FUNCTION @extschema@.reaper_status() IS
    'One row per database known to the reaper registry; counters run since the server started.';

CREATE FUNCTION @extschema@.start_reaper()
RETURNS boolean
LANGUAGE c VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'wh_start_reaper';

CREATE FUNCTION @extschema@.stop_reaper()
RETURNS boolean
LANGUAGE c VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'wh_stop_reaper';
