-- 1.2 part 50 (reaping pass and views): one definition of liveness
-- (issue "Reliability 1.2", found by reading, and items 10 and 12.5, pass side).
--
-- "Dead" was defined three times (reaping pass, views, metrics()), and the
-- views read worker_heartbeat.dead_after = 300000 (postgresql.conf, no unit)
-- as 300000 seconds in a session that had not loaded the library. Now the
-- reaper's statements and worker_liveness (read by v_active_workers,
-- v_dead_workers and metrics()) are built from the same two SQL fragments in
-- the library (src/reaping_pass.cpp, DeadAfterSql / DeadlineSql):
--   dead_after = the type's override, else worker_heartbeat.dead_after (a
--                number without unit: milliseconds), else 5 minutes;
--   is_dead    = status = 'dead' OR (status <> 'stopped' AND
--                GREATEST(last_heartbeat_at, pg_postmaster_start_time())
--                + dead_after <= now()), saturated: a dead_after out of range
--                means never, not 22008.
-- The view uses built-in functions only, so a role that may read it needs no
-- EXECUTE on anything of ours. _liveness_view_sql() returns the view's text;
-- it is for the install and update scripts (nobody else may execute it).

CREATE FUNCTION @extschema@._liveness_view_sql(p_schema text)
RETURNS text
LANGUAGE c STABLE
SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'wh_liveness_view_sql';
COMMENT ON FUNCTION @extschema@._liveness_view_sql(text) IS
    'CREATE OR REPLACE VIEW of worker_liveness, built from the reaper''s definition of liveness (install and update scripts only).';
REVOKE ALL ON FUNCTION @extschema@._liveness_view_sql(text) FROM PUBLIC;

-- Same columns as in 1.0 (v_active_workers and v_dead_workers read this view
-- and are unchanged).
DO $liveness$
BEGIN
    EXECUTE @extschema@._liveness_view_sql('@extschema@');
END
$liveness$;
COMMENT ON VIEW @extschema@.worker_liveness IS
    'Every worker with its dead_after and whether it counts as dead (the reaper''s definition).';
