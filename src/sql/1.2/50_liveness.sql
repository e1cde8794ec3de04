-- 1.2 part 50 (reaping pass and views): one definition of liveness
-- (issue "Reliability 1.2", found by reading; items 10 and 12.5, pass side).
--
-- A worker that is neither stopped nor already dead is dead once
--     _deadline(last_heartbeat_at, _dead_after(<its type's dead_after>)) <= now()
-- The reaper's statements, these views and metrics() all use these two
-- functions (the reaper calls the same C code in-process):
--   * _dead_after(p_override interval) RETURNS interval: p_override, else the
--     setting worker_heartbeat.dead_after as the reaper reads it. It is C, so
--     calling it loads the library, which defines the setting with its unit:
--     a session that never loaded the library no longer reads a
--     postgresql.conf "300000" (milliseconds) as 300000 seconds.
--   * _deadline(p_last_heartbeat_at timestamptz, p_dead_after interval)
--     RETURNS timestamptz: GREATEST(p_last_heartbeat_at,
--     pg_postmaster_start_time()) + p_dead_after, saturated to infinity
--     instead of raising 22008 for an out-of-range dead_after. Silence is
--     measured from the server's start at the earliest: a heartbeat
--     acknowledged just before a restart may have been held in shared memory
--     and lost with it, and must not turn into a death.
-- Both are harmless computations: EXECUTE is granted to PUBLIC, because a
-- function called inside a view is checked against the role reading the
-- view (a monitor role with SELECT on the views only).

CREATE FUNCTION @extschema@._dead_after(p_override interval DEFAULT NULL)
RETURNS interval
LANGUAGE c STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'wh_dead_after';
COMMENT ON FUNCTION @extschema@._dead_after(interval) IS
    'The dead_after in force: the argument (a worker type''s override), else worker_heartbeat.dead_after.';

CREATE FUNCTION @extschema@._deadline(p_last_heartbeat_at timestamptz, p_dead_after interval)
RETURNS timestamptz
LANGUAGE c STABLE STRICT PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'wh_deadline';
COMMENT ON FUNCTION @extschema@._deadline(timestamptz, interval) IS
    'When a worker silent since p_last_heartbeat_at counts as dead: GREATEST(p_last_heartbeat_at, server start) + p_dead_after, infinity when out of range.';

REVOKE ALL ON FUNCTION @extschema@._dead_after(interval) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@._deadline(timestamptz, interval) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION @extschema@._dead_after(interval) TO PUBLIC;
GRANT EXECUTE ON FUNCTION @extschema@._deadline(timestamptz, interval) TO PUBLIC;

-- Same columns as in 1.0 (v_active_workers and v_dead_workers read this view
-- and are unchanged).
CREATE OR REPLACE VIEW @extschema@.worker_liveness AS
SELECT w.worker_id, w.worker_type, w.last_heartbeat_at, w.status, w.current_run_id,
       w.current_task, w.lease_expires_at, w.started_at, w.metadata, w.session_pid,
       w.session_started_at, w.died_at, w.death_cause,
       EXTRACT(EPOCH FROM (pg_catalog.now() OPERATOR(pg_catalog.-) w.last_heartbeat_at)) AS seconds_since_heartbeat,
       d.dead_after,
       (w.status OPERATOR(pg_catalog.=) 'dead'
        OR (w.status OPERATOR(pg_catalog.<>) 'stopped'
            AND @extschema@._deadline(w.last_heartbeat_at, d.dead_after) OPERATOR(pg_catalog.<=) pg_catalog.now())) AS is_dead
  FROM @extschema@.worker_heartbeats w
  LEFT JOIN @extschema@.worker_types t ON t.worker_type OPERATOR(pg_catalog.=) w.worker_type
  CROSS JOIN LATERAL (SELECT @extschema@._dead_after(t.dead_after) AS dead_after) d;
COMMENT ON VIEW @extschema@.worker_liveness IS
    'Every worker with its dead_after and whether it counts as dead (the reaper''s definition: _deadline()).';
