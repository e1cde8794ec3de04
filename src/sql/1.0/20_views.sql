-- Views. A worker is dead when the reaper said so, or when it is not stopped
-- and has been silent for longer than its dead_after (the type's override,
-- else the setting worker_heartbeat.dead_after, else 5 minutes).

CREATE VIEW @extschema@.worker_liveness AS
SELECT w.worker_id, w.worker_type, w.last_heartbeat_at, w.status, w.current_run_id,
       w.current_task, w.lease_expires_at, w.started_at, w.metadata, w.session_pid,
       w.session_started_at, w.died_at, w.death_cause,
       EXTRACT(EPOCH FROM (pg_catalog.now() OPERATOR(pg_catalog.-) w.last_heartbeat_at)) AS seconds_since_heartbeat,
       d.dead_after,
       (w.status OPERATOR(pg_catalog.=) 'dead'
        OR (w.status OPERATOR(pg_catalog.<>) 'stopped'
            AND w.last_heartbeat_at OPERATOR(pg_catalog.<=) (pg_catalog.now() OPERATOR(pg_catalog.-) d.dead_after))) AS is_dead
  FROM @extschema@.worker_heartbeats w
  LEFT JOIN @extschema@.worker_types t ON t.worker_type OPERATOR(pg_catalog.=) w.worker_type
  CROSS JOIN LATERAL (SELECT COALESCE(t.dead_after,
                                      pg_catalog.current_setting('worker_heartbeat.dead_after', true)::interval,
                                      interval '5 minutes') AS dead_after) d;
COMMENT ON VIEW @extschema@.worker_liveness IS
    'Every worker with its dead_after and whether it counts as dead.';

CREATE VIEW @extschema@.v_active_workers AS
SELECT l.worker_id, l.worker_type, l.last_heartbeat_at, l.status, l.current_run_id,
       l.current_task, l.lease_expires_at, l.started_at, l.metadata, l.session_pid,
       l.session_started_at, l.died_at, l.death_cause, l.seconds_since_heartbeat
  FROM @extschema@.worker_liveness l
 WHERE l.status OPERATOR(pg_catalog.<>) 'stopped' AND NOT l.is_dead;
COMMENT ON VIEW @extschema@.v_active_workers IS 'Workers alive: heartbeat within dead_after, not stopped.';

CREATE VIEW @extschema@.v_dead_workers AS
SELECT l.worker_id, l.worker_type, l.last_heartbeat_at, l.status, l.current_run_id,
       l.current_task, l.lease_expires_at, l.started_at, l.metadata, l.session_pid,
       l.session_started_at, l.died_at, l.death_cause, l.seconds_since_heartbeat
  FROM @extschema@.worker_liveness l
 WHERE l.is_dead;
COMMENT ON VIEW @extschema@.v_dead_workers IS 'Workers declared dead, or silent for longer than dead_after.';
