
-- Reliability 1.2, item 6: worker_events gets a retention
-- (worker_heartbeat.events_retention: the reaper deletes older events in
-- small batches) and metrics() no longer scans the history.
--
-- worker_event_totals keeps the detection-latency summary's _sum and _count
-- per worker type, maintained by statement-level triggers on worker_events
-- (one statement per batch of events, transition tables):
--   * live rows (retired = false): the deaths with a detection latency that
--     are in worker_events now; INSERT adds, DELETE and UPDATE subtract;
--   * retired rows (retired = true): deaths whose events were deleted
--     (retention, a manual DELETE, TRUNCATE): the counters never go down.
-- A dump keeps only the retired rows (they are user data that exists nowhere
-- else); the live rows are rebuilt by the triggers as pg_restore loads
-- worker_events, whatever the order of the two tables in the dump.

CREATE TABLE @extschema@.worker_event_totals (
    worker_type text    NOT NULL,  -- '' for events without a type
    retired     boolean NOT NULL,
    deaths      bigint  NOT NULL DEFAULT 0,
    latency_us  bigint  NOT NULL DEFAULT 0,  -- sum of detection_latency, microseconds
    PRIMARY KEY (worker_type, retired)
);
COMMENT ON TABLE @extschema@.worker_event_totals IS
    'Deaths and summed detection latency per worker type, kept by triggers on worker_events for metrics(); retired rows count events deleted since.';
SELECT pg_catalog.pg_extension_config_dump('@extschema@.worker_event_totals', 'WHERE retired');
ALTER TABLE @extschema@.worker_event_totals ENABLE ROW LEVEL SECURITY;
CREATE POLICY read_granted ON @extschema@.worker_event_totals FOR SELECT USING (true);
REVOKE ALL ON TABLE @extschema@.worker_event_totals FROM PUBLIC;

-- Roles that read worker_events (the monitoring role of docs/grants.sql) need
-- the totals for metrics(): same SELECT grants.
DO $grants$
DECLARE
    r record;
BEGIN
    FOR r IN
        SELECT DISTINCT a.grantee
          FROM pg_catalog.pg_class c,
               LATERAL pg_catalog.aclexplode(c.relacl) a
         WHERE c.oid OPERATOR(pg_catalog.=) '@extschema@.worker_events'::pg_catalog.regclass
           AND a.privilege_type OPERATOR(pg_catalog.=) 'SELECT'
           AND a.grantee OPERATOR(pg_catalog.<>) c.relowner
    LOOP
        IF r.grantee OPERATOR(pg_catalog.=) 0 THEN
            EXECUTE 'GRANT SELECT ON @extschema@.worker_event_totals TO PUBLIC';
        ELSE
            EXECUTE pg_catalog.format('GRANT SELECT ON @extschema@.worker_event_totals TO %s',
                                      r.grantee::pg_catalog.regrole);
        END IF;
    END LOOP;
END
$grants$;

-- The triggers' function. SECURITY DEFINER: whoever may write worker_events
-- (our functions, the reaper, a role granted DELETE) keeps the totals right
-- without a grant on them. Rows are applied in worker_type order, so two
-- transactions never wait for each other in a cycle.
CREATE FUNCTION @extschema@._worker_events_totals()
RETURNS trigger
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $totals$
BEGIN
    -- The totals table is found through the schema of the table that fired
    -- the trigger, not by a name fixed at install time: the extension's schema
    -- may be renamed (ALTER SCHEMA ... RENAME), and the reaper's events must
    -- keep flowing. pg_catalog first, so that nothing in that schema can
    -- stand in for a built-in; the function's own SET restores the path.
    PERFORM pg_catalog.set_config('search_path',
        'pg_catalog, ' OPERATOR(pg_catalog.||) pg_catalog.quote_ident(TG_TABLE_SCHEMA) OPERATOR(pg_catalog.||) ', pg_temp',
        true);
    IF TG_OP OPERATOR(pg_catalog.=) 'INSERT' THEN
        INSERT INTO worker_event_totals AS t (worker_type, retired, deaths, latency_us)
        SELECT COALESCE(n.worker_type, ''), false, pg_catalog.count(*),
               pg_catalog.sum((EXTRACT(EPOCH FROM n.detection_latency) OPERATOR(pg_catalog.*) 1000000)::bigint)
          FROM new_rows AS n
         WHERE n.event OPERATOR(pg_catalog.=) 'died' AND n.detection_latency IS NOT NULL
         GROUP BY 1 ORDER BY 1
        ON CONFLICT (worker_type, retired) DO UPDATE
           SET deaths = t.deaths OPERATOR(pg_catalog.+) excluded.deaths,
               latency_us = t.latency_us OPERATOR(pg_catalog.+) excluded.latency_us;
    ELSIF TG_OP OPERATOR(pg_catalog.=) 'DELETE' THEN
        -- Deleted deaths move from live to retired: the sum of the two stays.
        INSERT INTO worker_event_totals AS t (worker_type, retired, deaths, latency_us)
        SELECT d.worker_type, v.retired,
               CASE WHEN v.retired THEN d.n ELSE OPERATOR(pg_catalog.-) d.n END,
               CASE WHEN v.retired THEN d.us ELSE OPERATOR(pg_catalog.-) d.us END
          FROM (SELECT COALESCE(o.worker_type, '') AS worker_type, pg_catalog.count(*) AS n,
                       pg_catalog.sum((EXTRACT(EPOCH FROM o.detection_latency)
                                       OPERATOR(pg_catalog.*) 1000000)::bigint) AS us
                  FROM old_rows AS o
                 WHERE o.event OPERATOR(pg_catalog.=) 'died' AND o.detection_latency IS NOT NULL
                 GROUP BY 1) AS d,
               (VALUES (false), (true)) AS v(retired)
         ORDER BY 1, 2
        ON CONFLICT (worker_type, retired) DO UPDATE
           SET deaths = t.deaths OPERATOR(pg_catalog.+) excluded.deaths,
               latency_us = t.latency_us OPERATOR(pg_catalog.+) excluded.latency_us;
    ELSIF TG_OP OPERATOR(pg_catalog.=) 'UPDATE' THEN
        -- An edited event counts as what it says now.
        INSERT INTO worker_event_totals AS t (worker_type, retired, deaths, latency_us)
        SELECT c.worker_type, false, pg_catalog.sum(c.n), pg_catalog.sum(c.us)
          FROM (SELECT COALESCE(n.worker_type, '') AS worker_type, 1 AS n,
                       (EXTRACT(EPOCH FROM n.detection_latency) OPERATOR(pg_catalog.*) 1000000)::bigint AS us
                  FROM new_rows AS n
                 WHERE n.event OPERATOR(pg_catalog.=) 'died' AND n.detection_latency IS NOT NULL
                UNION ALL
                SELECT COALESCE(o.worker_type, ''), -1,
                       OPERATOR(pg_catalog.-) (EXTRACT(EPOCH FROM o.detection_latency)
                                               OPERATOR(pg_catalog.*) 1000000)::bigint
                  FROM old_rows AS o
                 WHERE o.event OPERATOR(pg_catalog.=) 'died' AND o.detection_latency IS NOT NULL) AS c
         GROUP BY 1 ORDER BY 1
        ON CONFLICT (worker_type, retired) DO UPDATE
           SET deaths = t.deaths OPERATOR(pg_catalog.+) excluded.deaths,
               latency_us = t.latency_us OPERATOR(pg_catalog.+) excluded.latency_us;
    ELSE -- TRUNCATE: everything live is retired
        INSERT INTO worker_event_totals AS t (worker_type, retired, deaths, latency_us)
        SELECT l.worker_type, true, l.deaths, l.latency_us
          FROM worker_event_totals AS l
         WHERE NOT l.retired
         ORDER BY 1
        ON CONFLICT (worker_type, retired) DO UPDATE
           SET deaths = t.deaths OPERATOR(pg_catalog.+) excluded.deaths,
               latency_us = t.latency_us OPERATOR(pg_catalog.+) excluded.latency_us;
        DELETE FROM worker_event_totals WHERE NOT retired;
    END IF;
    RETURN NULL;
END
$totals$;
REVOKE ALL ON FUNCTION @extschema@._worker_events_totals() FROM PUBLIC;

CREATE TRIGGER totals_insert AFTER INSERT ON @extschema@.worker_events
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION @extschema@._worker_events_totals();
CREATE TRIGGER totals_delete AFTER DELETE ON @extschema@.worker_events
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION @extschema@._worker_events_totals();
CREATE TRIGGER totals_update AFTER UPDATE ON @extschema@.worker_events
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION @extschema@._worker_events_totals();
CREATE TRIGGER totals_truncate AFTER TRUNCATE ON @extschema@.worker_events
    FOR EACH STATEMENT EXECUTE FUNCTION @extschema@._worker_events_totals();

-- Seeded from the history as it is (after the triggers exist: CREATE TRIGGER
-- locks worker_events against writers until this script commits, and this
-- statement sees every event committed before).
INSERT INTO @extschema@.worker_event_totals (worker_type, retired, deaths, latency_us)
SELECT COALESCE(e.worker_type, ''), false, pg_catalog.count(*),
       pg_catalog.sum((EXTRACT(EPOCH FROM e.detection_latency) OPERATOR(pg_catalog.*) 1000000)::bigint)
  FROM @extschema@.worker_events AS e
 WHERE e.event OPERATOR(pg_catalog.=) 'died' AND e.detection_latency IS NOT NULL
 GROUP BY 1;

-- metrics(): as in 1.0, except the detection-latency summary: _sum and _count
-- come from worker_event_totals, the quantiles from the last hour's deaths
-- (a range of the occurred_at index). Its cost no longer grows with the
-- history. Every metric name and label is unchanged.
CREATE OR REPLACE FUNCTION @extschema@.metrics()
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
-- _sum and _count: every death recorded (live + retired totals).
totals AS (
    SELECT t.worker_type, pg_catalog.sum(t.deaths) AS n, pg_catalog.sum(t.latency_us) AS us
      FROM @extschema@.worker_event_totals AS t
     GROUP BY t.worker_type
    HAVING pg_catalog.sum(t.deaths) OPERATOR(pg_catalog.<>) 0
),
-- Quantiles: the deaths of the last hour.
recent AS (
    SELECT COALESCE(e.worker_type, '') AS worker_type,
           pg_catalog.percentile_cont(ARRAY[0.5, 0.9, 0.99]::float8[])
               WITHIN GROUP (ORDER BY pg_catalog.date_part('epoch', e.detection_latency)) AS q
      FROM @extschema@.worker_events AS e
     WHERE e.occurred_at OPERATOR(pg_catalog.>=) (pg_catalog.now() OPERATOR(pg_catalog.-) pg_catalog.interval '1 hour')
       AND e.event OPERATOR(pg_catalog.=) 'died'
       AND e.detection_latency IS NOT NULL
     GROUP BY 1
),
latency AS (
    SELECT pg_catalog.replace(pg_catalog.replace(pg_catalog.replace(
               COALESCE(t.worker_type, r.worker_type), E'\\', E'\\\\'), '"', E'\\"'), E'\n', E'\\n') AS lt,
           r.q,
           COALESCE(t.us, 0)::float8 OPERATOR(pg_catalog./) 1000000::float8 AS sum_s,
           COALESCE(t.n, 0) AS n
      FROM totals AS t
      FULL JOIN recent AS r ON r.worker_type OPERATOR(pg_catalog.=) t.worker_type
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
    '# HELP worker_heartbeat_reaper_up 1 if this database is reaped (a reaper runs, or it is served in rotation: reaper_status().state scheduled), else 0 (waiting for a reaper slot, no worker slot, registry full, not running, stopped).',
    '# TYPE worker_heartbeat_reaper_up gauge',
    (SELECT pg_catalog.format('worker_heartbeat_reaper_up %s',
                CASE WHEN EXISTS (SELECT FROM reaper AS r
                                   WHERE r.pid IS NOT NULL
                                      OR r.state OPERATOR(pg_catalog.=) ANY (ARRAY['scheduled', 'starting']))
                     THEN 1 ELSE 0 END)),
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
    '# HELP worker_heartbeat_detection_latency_seconds Time from a worker''s death to the reaper acting on it; quantiles over the last hour, sum and count over every death recorded (events deleted by the retention included).',
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
    'The fleet (workers by type and state, heartbeat age, reaper totals, detection latency) in the Prometheus text exposition format; its cost does not grow with worker_events';
