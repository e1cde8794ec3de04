
-- 1.3 part 10 (issue 16, section 1): drain and pause, from SQL.
--
-- An operator marks workers (by worker_id, worker_type, metadata containment,
-- or any combination: all given selectors must match) as draining or paused.
-- A mark is a rule in worker_directives, not a flag on existing rows: it also
-- applies to matching workers that appear later, until resume_workers()
-- removes it. A worker learns its directive from heartbeat() (the same
-- arguments as upsert_worker_heartbeat, which keeps returning void), and
-- claim_leases() hands nothing to a draining or paused worker.
--
-- Every backend keeps the rules in memory (src/directives.cpp): with no rule
-- the heartbeat costs what it cost before. The statement trigger below sends
-- a relcache invalidation of worker_directives at commit, whatever changed
-- the table (our functions, a manual DML, a restore), and every backend
-- reloads the rules at its next transaction.

CREATE TABLE @extschema@.worker_directives (
    directive   text        NOT NULL CHECK (directive OPERATOR(pg_catalog.=) ANY (ARRAY['drain', 'pause'])),
    worker_id   text        CHECK (worker_id OPERATOR(pg_catalog.<>) ''),
    worker_type text        CHECK (worker_type OPERATOR(pg_catalog.<>) ''),
    metadata    jsonb       CHECK (pg_catalog.jsonb_typeof(metadata) OPERATOR(pg_catalog.=) 'object'),
    created_at  timestamptz NOT NULL DEFAULT pg_catalog.now(),
    CONSTRAINT worker_directives_selector CHECK (worker_id IS NOT NULL OR worker_type IS NOT NULL OR metadata IS NOT NULL)
);
-- One rule per set of selectors: drain_workers() on the selectors of a pause
-- turns it into a drain (and the other way round).
CREATE UNIQUE INDEX worker_directives_selectors_key ON @extschema@.worker_directives
    ((COALESCE(worker_id, '')), (COALESCE(worker_type, '')), (COALESCE(metadata, 'null'::pg_catalog.jsonb)));
COMMENT ON TABLE @extschema@.worker_directives IS
    'Drain and pause rules (drain_workers, pause_workers, resume_workers): a worker matching every non-null selector of a rule gets its directive; drain wins over pause.';
SELECT pg_catalog.pg_extension_config_dump('@extschema@.worker_directives', '');
ALTER TABLE @extschema@.worker_directives ENABLE ROW LEVEL SECURITY;
CREATE POLICY read_granted ON @extschema@.worker_directives FOR SELECT USING (true);
REVOKE ALL ON TABLE @extschema@.worker_directives FROM PUBLIC;

CREATE FUNCTION @extschema@._worker_directives_changed()
RETURNS trigger
LANGUAGE c VOLATILE
SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'wh_worker_directives_changed';
REVOKE ALL ON FUNCTION @extschema@._worker_directives_changed() FROM PUBLIC;
CREATE TRIGGER directives_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON @extschema@.worker_directives
    FOR EACH STATEMENT EXECUTE FUNCTION @extschema@._worker_directives_changed();

-- The heartbeat that answers with the directive. SECURITY INVOKER, like
-- upsert_worker_heartbeat since 1.2 (it notes its caller, then acts as the
-- extension's owner itself).
CREATE FUNCTION @extschema@.heartbeat(
    p_worker_id        text,
    p_worker_type      text,
    p_status           text        DEFAULT 'active',
    p_current_run_id   uuid        DEFAULT NULL,
    p_current_task     text        DEFAULT NULL,
    p_lease_expires_at timestamptz DEFAULT NULL,
    p_metadata         jsonb       DEFAULT NULL,
    p_session_bound    boolean     DEFAULT false)
RETURNS text
LANGUAGE c VOLATILE SECURITY INVOKER
SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'wh_heartbeat';
COMMENT ON FUNCTION @extschema@.heartbeat(text, text, text, uuid, text, timestamptz, jsonb, boolean) IS
    'upsert_worker_heartbeat that returns the worker''s directive: run, drain (stop claiming, finish, stop_worker) or pause (stop claiming until resumed).';

-- Operators' functions: the extension's owner (and superusers) only, unless
-- granted (docs/fleet-control.md). They return how many current (live)
-- workers match the selectors.
CREATE FUNCTION @extschema@.drain_workers(p_worker_id text DEFAULT NULL, p_worker_type text DEFAULT NULL,
                                          p_metadata jsonb DEFAULT NULL)
RETURNS bigint
LANGUAGE c VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'wh_drain_workers';
COMMENT ON FUNCTION @extschema@.drain_workers(text, text, jsonb) IS
    'Matching workers (now and later) drain: claim nothing more, finish, stop. Returns how many live workers match.';

CREATE FUNCTION @extschema@.pause_workers(p_worker_id text DEFAULT NULL, p_worker_type text DEFAULT NULL,
                                          p_metadata jsonb DEFAULT NULL)
RETURNS bigint
LANGUAGE c VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'wh_pause_workers';
COMMENT ON FUNCTION @extschema@.pause_workers(text, text, jsonb) IS
    'Matching workers (now and later) claim nothing until resume_workers(). Returns how many live workers match.';

CREATE FUNCTION @extschema@.resume_workers(p_worker_id text DEFAULT NULL, p_worker_type text DEFAULT NULL,
                                           p_metadata jsonb DEFAULT NULL)
RETURNS bigint
LANGUAGE c VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'wh_resume_workers';
COMMENT ON FUNCTION @extschema@.resume_workers(text, text, jsonb) IS
    'Removes the drain or pause rule with exactly these selectors. Returns how many live workers it matched (0: no such rule).';

REVOKE ALL ON FUNCTION @extschema@.heartbeat(text, text, text, uuid, text, timestamptz, jsonb, boolean),
    @extschema@.drain_workers(text, text, jsonb), @extschema@.pause_workers(text, text, jsonb),
    @extschema@.resume_workers(text, text, jsonb) FROM PUBLIC;

-- Every worker with its directive (worker_liveness's columns, then directive).
CREATE VIEW @extschema@.worker_fleet AS
SELECT l.*, COALESCE(d.directive, 'run') AS directive
  FROM @extschema@.worker_liveness AS l
  LEFT JOIN LATERAL (
      SELECT r.directive
        FROM @extschema@.worker_directives AS r
       WHERE (r.worker_id IS NULL OR r.worker_id OPERATOR(pg_catalog.=) l.worker_id)
         AND (r.worker_type IS NULL OR r.worker_type OPERATOR(pg_catalog.=) l.worker_type)
         AND (r.metadata IS NULL OR l.metadata OPERATOR(pg_catalog.@>) r.metadata)
       ORDER BY r.directive OPERATOR(pg_catalog.=) 'drain' DESC
       LIMIT 1) AS d ON true;
COMMENT ON VIEW @extschema@.worker_fleet IS
    'worker_liveness with each worker''s directive: run, drain or pause (worker_directives).';
REVOKE ALL ON TABLE @extschema@.worker_fleet FROM PUBLIC;

-- Grants carried over on update: whoever may call upsert_worker_heartbeat may
-- call heartbeat(); whoever reads worker_liveness reads worker_fleet and
-- worker_directives.
DO $grants$
DECLARE
    r record;
BEGIN
    FOR r IN
        SELECT DISTINCT a.grantee
          FROM pg_catalog.pg_proc AS p, LATERAL pg_catalog.aclexplode(p.proacl) AS a
         WHERE p.oid OPERATOR(pg_catalog.=)
               '@extschema@.upsert_worker_heartbeat(text, text, text, uuid, text, timestamptz, jsonb, boolean)'::pg_catalog.regprocedure
           AND a.privilege_type OPERATOR(pg_catalog.=) 'EXECUTE'
           AND a.grantee OPERATOR(pg_catalog.<>) p.proowner
           AND a.grantee OPERATOR(pg_catalog.<>) 0
    LOOP
        EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION @extschema@.heartbeat(text, text, text, uuid, text, '
                                  'timestamptz, jsonb, boolean) TO %s', r.grantee::pg_catalog.regrole);
    END LOOP;
    FOR r IN
        SELECT DISTINCT a.grantee
          FROM pg_catalog.pg_class AS c, LATERAL pg_catalog.aclexplode(c.relacl) AS a
         WHERE c.oid OPERATOR(pg_catalog.=) '@extschema@.worker_liveness'::pg_catalog.regclass
           AND a.privilege_type OPERATOR(pg_catalog.=) 'SELECT'
           AND a.grantee OPERATOR(pg_catalog.<>) c.relowner
           AND a.grantee OPERATOR(pg_catalog.<>) 0
    LOOP
        EXECUTE pg_catalog.format('GRANT SELECT ON @extschema@.worker_fleet, @extschema@.worker_directives TO %s',
                                  r.grantee::pg_catalog.regrole);
    END LOOP;
END
$grants$;

-- get_worker_stats() gains draining_workers and paused_workers (live workers
-- with that directive), at the end. A new result type needs DROP + CREATE:
-- the EXECUTE grants of the old function are given again. Still invoker's
-- rights: a role that may read worker_fleet gets the counts; a role granted
-- only what 1.2 needed (worker_liveness) gets them as NULL, and the other
-- columns as before.
DO $stats$
DECLARE
    grantees pg_catalog.text[];
    g pg_catalog.text;
BEGIN
    SELECT pg_catalog.array_agg(DISTINCT pg_catalog.quote_ident(r.rolname))
      INTO grantees
      FROM pg_catalog.pg_proc AS p,
           LATERAL pg_catalog.aclexplode(p.proacl) AS a
      JOIN pg_catalog.pg_roles AS r ON r.oid OPERATOR(pg_catalog.=) a.grantee
     WHERE p.oid OPERATOR(pg_catalog.=) '@extschema@.get_worker_stats()'::pg_catalog.regprocedure
       AND a.privilege_type OPERATOR(pg_catalog.=) 'EXECUTE'
       AND a.grantee OPERATOR(pg_catalog.<>) p.proowner;

    DROP FUNCTION @extschema@.get_worker_stats();
    CREATE FUNCTION @extschema@.get_worker_stats()
    RETURNS TABLE (worker_type text, total_workers bigint, active_workers bigint, idle_workers bigint,
                   processing_workers bigint, dead_workers bigint, stopped_workers bigint,
                   oldest_heartbeat timestamptz, draining_workers bigint, paused_workers bigint)
    LANGUAGE plpgsql STABLE
    SET search_path = pg_catalog, pg_temp
    AS $body$
    BEGIN
        IF pg_catalog.has_table_privilege('@extschema@.worker_fleet', 'SELECT') THEN
            RETURN QUERY
            SELECT l.worker_type,
                   pg_catalog.count(*),
                   pg_catalog.count(*) FILTER (WHERE l.status OPERATOR(pg_catalog.<>) 'stopped' AND NOT l.is_dead),
                   pg_catalog.count(*) FILTER (WHERE l.status OPERATOR(pg_catalog.=) 'idle' AND NOT l.is_dead),
                   pg_catalog.count(*) FILTER (WHERE l.status OPERATOR(pg_catalog.=) 'processing' AND NOT l.is_dead),
                   pg_catalog.count(*) FILTER (WHERE l.is_dead),
                   pg_catalog.count(*) FILTER (WHERE l.status OPERATOR(pg_catalog.=) 'stopped'),
                   pg_catalog.min(l.last_heartbeat_at),
                   pg_catalog.count(*) FILTER (WHERE l.directive OPERATOR(pg_catalog.=) 'drain'
                                                 AND l.status OPERATOR(pg_catalog.<>) 'stopped' AND NOT l.is_dead),
                   pg_catalog.count(*) FILTER (WHERE l.directive OPERATOR(pg_catalog.=) 'pause'
                                                 AND l.status OPERATOR(pg_catalog.<>) 'stopped' AND NOT l.is_dead)
              FROM @extschema@.worker_fleet l
             GROUP BY l.worker_type
             ORDER BY l.worker_type;
        ELSE
            RETURN QUERY
            SELECT l.worker_type,
                   pg_catalog.count(*),
                   pg_catalog.count(*) FILTER (WHERE l.status OPERATOR(pg_catalog.<>) 'stopped' AND NOT l.is_dead),
                   pg_catalog.count(*) FILTER (WHERE l.status OPERATOR(pg_catalog.=) 'idle' AND NOT l.is_dead),
                   pg_catalog.count(*) FILTER (WHERE l.status OPERATOR(pg_catalog.=) 'processing' AND NOT l.is_dead),
                   pg_catalog.count(*) FILTER (WHERE l.is_dead),
                   pg_catalog.count(*) FILTER (WHERE l.status OPERATOR(pg_catalog.=) 'stopped'),
                   pg_catalog.min(l.last_heartbeat_at),
                   NULL::bigint, NULL::bigint
              FROM @extschema@.worker_liveness l
             GROUP BY l.worker_type
             ORDER BY l.worker_type;
        END IF;
    END
    $body$;
    REVOKE ALL ON FUNCTION @extschema@.get_worker_stats() FROM PUBLIC;
    FOREACH g IN ARRAY COALESCE(grantees, ARRAY[]::pg_catalog.text[]) LOOP
        EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION @extschema@.get_worker_stats() TO %s', g);
    END LOOP;
END
$stats$;

-- metrics(): the 1.2 body (30_event_totals.sql), with the gauges
-- worker_heartbeat_workers_draining and worker_heartbeat_workers_paused per
-- worker type at the end. CREATE OR REPLACE keeps its grants; still
-- invoker's rights.
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
           s.idle_workers, s.processing_workers, s.dead_workers, s.stopped_workers,
           s.draining_workers, s.paused_workers
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
       FROM latency AS l),
    -- 1.3: NULL (no sample) for a role that may not read worker_fleet.
    '# HELP worker_heartbeat_workers_draining Live workers told to drain (drain_workers()), by type.',
    '# TYPE worker_heartbeat_workers_draining gauge',
    (SELECT pg_catalog.string_agg(pg_catalog.format(
                'worker_heartbeat_workers_draining{worker_type="%s"} %s', s.lt, s.draining_workers),
                E'\n' ORDER BY s.worker_type)
       FROM stats AS s WHERE s.draining_workers IS NOT NULL),
    '# HELP worker_heartbeat_workers_paused Live workers told to pause (pause_workers()), by type.',
    '# TYPE worker_heartbeat_workers_paused gauge',
    (SELECT pg_catalog.string_agg(pg_catalog.format(
                'worker_heartbeat_workers_paused{worker_type="%s"} %s', s.lt, s.paused_workers),
                E'\n' ORDER BY s.worker_type)
       FROM stats AS s WHERE s.paused_workers IS NOT NULL)
) OPERATOR(pg_catalog.||) E'\n'
$metrics$;
COMMENT ON FUNCTION @extschema@.metrics() IS
    'The fleet (workers by type and state, draining and paused workers, heartbeat age, reaper totals, detection latency) in the Prometheus text exposition format; its cost does not grow with worker_events';
