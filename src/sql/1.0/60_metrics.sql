-- metrics(): the fleet in the Prometheus text exposition format (version 0.0.4).
--
-- Scraped by the dashboard's /metrics endpoint, by a node_exporter textfile
-- collector (psql -Atc 'SELECT S.metrics()' > file) or parsed by a
-- postgres_exporter custom query (docs/metrics.md). Everything is about the
-- current database only. Label values are escaped as the format requires
-- (backslash, double quote, newline); an empty family keeps its HELP/TYPE lines.
--
-- Invoker's rights: the caller needs SELECT on the tables and EXECUTE on
-- get_worker_stats() and reaper_status() (the monitoring role of the README).
CREATE FUNCTION @extschema@.metrics()
RETURNS text
LANGUAGE sql
STABLE
SET search_path = pg_catalog, pg_temp
AS $metrics$
WITH
stats AS (
    SELECT s.worker_type,
           pg_catalog.replace(pg_catalog.replace(pg_catalog.replace(
               s.worker_type, E'\\', E'\\\\'), '"', E'\\"'), E'\n', E'\\n') AS lt,
           -- get_worker_stats().active_workers counts every live worker; the
           -- state "active" here is only those whose status is 'active', so
           -- that the five states partition the workers of a type.
           s.active_workers OPERATOR(pg_catalog.-) s.idle_workers
               OPERATOR(pg_catalog.-) s.processing_workers AS active_workers,
           s.idle_workers, s.processing_workers, s.dead_workers, s.stopped_workers
      FROM @extschema@.get_worker_stats() AS s
),
-- Oldest heartbeat among workers that are neither stopped nor dead: the one
-- closest to being declared dead.
oldest AS (
    SELECT w.worker_type,
           pg_catalog.replace(pg_catalog.replace(pg_catalog.replace(
               w.worker_type, E'\\', E'\\\\'), '"', E'\\"'), E'\n', E'\\n') AS lt,
           GREATEST(0, pg_catalog.date_part('epoch',
               pg_catalog.now() OPERATOR(pg_catalog.-) pg_catalog.min(w.last_heartbeat_at))) AS age_s
      FROM @extschema@.worker_heartbeats AS w
     WHERE w.status OPERATOR(pg_catalog.<>) ALL (ARRAY['stopped', 'dead'])
     GROUP BY w.worker_type
),
-- dead_after in force per known type (override, else the setting).
dead_after AS (
    SELECT s.lt,
           pg_catalog.date_part('epoch', COALESCE(
               (SELECT t.dead_after FROM @extschema@.worker_types AS t
                 WHERE t.worker_type OPERATOR(pg_catalog.=) s.worker_type),
               pg_catalog.current_setting('worker_heartbeat.dead_after', true)::pg_catalog.interval,
               pg_catalog.interval '5 minutes')) AS secs
      FROM stats AS s
),
reaper AS (
    SELECT r.state, r.pid, r.last_pass_at, r.last_pass_ms, r.passes,
           r.workers_declared_dead, r.leases_released
      FROM @extschema@.reaper_status() AS r
     WHERE r.database OPERATOR(pg_catalog.=) pg_catalog.current_database()
     ORDER BY r.last_pass_at DESC NULLS LAST
     LIMIT 1
),
deaths AS (
    SELECT COALESCE(e.worker_type, '') AS worker_type,
           pg_catalog.date_part('epoch', e.detection_latency) AS latency_s,
           e.occurred_at OPERATOR(pg_catalog.>=)
               (pg_catalog.now() OPERATOR(pg_catalog.-) pg_catalog.interval '1 hour') AS recent
      FROM @extschema@.worker_events AS e
     WHERE e.event OPERATOR(pg_catalog.=) 'died'
       AND e.detection_latency IS NOT NULL
),
latency AS (
    SELECT pg_catalog.replace(pg_catalog.replace(pg_catalog.replace(
               d.worker_type, E'\\', E'\\\\'), '"', E'\\"'), E'\n', E'\\n') AS lt,
           pg_catalog.percentile_cont(ARRAY[0.5, 0.9, 0.99]::float8[])
               WITHIN GROUP (ORDER BY d.latency_s) FILTER (WHERE d.recent) AS q,
           pg_catalog.sum(d.latency_s) AS sum_s,
           pg_catalog.count(*) AS n
      FROM deaths AS d
     GROUP BY d.worker_type
)
SELECT pg_catalog.concat_ws(E'\n',
    '# HELP worker_heartbeat_workers Workers by type and state.',
    '# TYPE worker_heartbeat_workers gauge',
    (SELECT pg_catalog.string_agg(pg_catalog.format(
                'worker_heartbeat_workers{worker_type="%s",state="%s"} %s', s.lt, v.state, v.n),
                E'\n' ORDER BY s.worker_type, v.ord)
       FROM stats AS s,
            LATERAL (VALUES (1, 'active', s.active_workers), (2, 'idle', s.idle_workers),
                            (3, 'processing', s.processing_workers), (4, 'dead', s.dead_workers),
                            (5, 'stopped', s.stopped_workers)) AS v(ord, state, n)),
    '# HELP worker_heartbeat_oldest_heartbeat_age_seconds Seconds since the oldest heartbeat of a worker of this type that is neither stopped nor dead.',
    '# TYPE worker_heartbeat_oldest_heartbeat_age_seconds gauge',
    (SELECT pg_catalog.string_agg(pg_catalog.format(
                'worker_heartbeat_oldest_heartbeat_age_seconds{worker_type="%s"} %s', o.lt, o.age_s),
                E'\n' ORDER BY o.worker_type)
       FROM oldest AS o),
    '# HELP worker_heartbeat_dead_after_seconds Silence after which a worker of this type is declared dead.',
    '# TYPE worker_heartbeat_dead_after_seconds gauge',
    (SELECT pg_catalog.string_agg(pg_catalog.format(
                'worker_heartbeat_dead_after_seconds{worker_type="%s"} %s', d.lt, d.secs),
                E'\n' ORDER BY d.lt)
       FROM dead_after AS d),
    '# HELP worker_heartbeat_reaper_up 1 if a reaper process runs for this database (reaper_status().pid is set), else 0.',
    '# TYPE worker_heartbeat_reaper_up gauge',
    (SELECT pg_catalog.format('worker_heartbeat_reaper_up %s',
                CASE WHEN EXISTS (SELECT FROM reaper AS r WHERE r.pid IS NOT NULL) THEN 1 ELSE 0 END)),
    '# HELP worker_heartbeat_reaper_passes_total Reaping passes of this database''s reaper since server start.',
    '# TYPE worker_heartbeat_reaper_passes_total counter',
    (SELECT pg_catalog.format('worker_heartbeat_reaper_passes_total %s', COALESCE(r.passes, 0))
       FROM reaper AS r),
    '# HELP worker_heartbeat_deaths_total Workers declared dead by the reaper since server start.',
    '# TYPE worker_heartbeat_deaths_total counter',
    (SELECT pg_catalog.format('worker_heartbeat_deaths_total %s', COALESCE(r.workers_declared_dead, 0))
       FROM reaper AS r),
    '# HELP worker_heartbeat_leases_released_total Leases released by the reaper since server start.',
    '# TYPE worker_heartbeat_leases_released_total counter',
    (SELECT pg_catalog.format('worker_heartbeat_leases_released_total %s', COALESCE(r.leases_released, 0))
       FROM reaper AS r),
    '# HELP worker_heartbeat_reaper_last_pass_duration_seconds Duration of the reaper''s last pass.',
    '# TYPE worker_heartbeat_reaper_last_pass_duration_seconds gauge',
    (SELECT pg_catalog.format('worker_heartbeat_reaper_last_pass_duration_seconds %s',
                r.last_pass_ms OPERATOR(pg_catalog./) 1000.0::float8)
       FROM reaper AS r WHERE r.last_pass_ms IS NOT NULL),
    '# HELP worker_heartbeat_reaper_last_pass_timestamp_seconds Unix time of the end of the reaper''s last pass.',
    '# TYPE worker_heartbeat_reaper_last_pass_timestamp_seconds gauge',
    (SELECT pg_catalog.format('worker_heartbeat_reaper_last_pass_timestamp_seconds %s',
                pg_catalog.date_part('epoch', r.last_pass_at))
       FROM reaper AS r WHERE r.last_pass_at IS NOT NULL),
    '# HELP worker_heartbeat_detection_latency_seconds Time from a worker''s death to the reaper acting on it; quantiles over the last hour, sum and count over the recorded history.',
    '# TYPE worker_heartbeat_detection_latency_seconds summary',
    (SELECT pg_catalog.string_agg(pg_catalog.concat_ws(E'\n',
                pg_catalog.format('worker_heartbeat_detection_latency_seconds{worker_type="%s",quantile="0.5"} %s',
                                  l.lt, COALESCE(l.q[1]::text, 'NaN')),
                pg_catalog.format('worker_heartbeat_detection_latency_seconds{worker_type="%s",quantile="0.9"} %s',
                                  l.lt, COALESCE(l.q[2]::text, 'NaN')),
                pg_catalog.format('worker_heartbeat_detection_latency_seconds{worker_type="%s",quantile="0.99"} %s',
                                  l.lt, COALESCE(l.q[3]::text, 'NaN')),
                pg_catalog.format('worker_heartbeat_detection_latency_seconds_sum{worker_type="%s"} %s', l.lt, l.sum_s),
                pg_catalog.format('worker_heartbeat_detection_latency_seconds_count{worker_type="%s"} %s', l.lt, l.n)),
                E'\n' ORDER BY l.lt)
       FROM latency AS l)
) OPERATOR(pg_catalog.||) E'\n'
$metrics$;

COMMENT ON FUNCTION @extschema@.metrics() IS
    'The fleet (workers by type and state, heartbeat age, reaper totals, detection latency) in the Prometheus text exposition format';

REVOKE ALL ON FUNCTION @extschema@.metrics() FROM PUBLIC;
