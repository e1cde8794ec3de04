
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
                                  'timestamptz, jsonb, boolean) TO %I', r.grantee::pg_catalog.regrole);
    END LOOP;
    FOR r IN
        SELECT DISTINCT a.grantee
          FROM pg_catalog.pg_class AS c, LATERAL pg_catalog.aclexplode(c.relacl) AS a
         WHERE c.oid OPERATOR(pg_catalog.=) '@extschema@.worker_liveness'::pg_catalog.regclass
           AND a.privilege_type OPERATOR(pg_catalog.=) 'SELECT'
           AND a.grantee OPERATOR(pg_catalog.<>) c.relowner
           AND a.grantee OPERATOR(pg_catalog.<>) 0
    LOOP
        EXECUTE pg_catalog.format('GRANT SELECT ON @extschema@.worker_fleet, @extschema@.worker_directives TO %I',
                                  r.grantee::pg_catalog.regrole);
    END LOOP;
END
$grants$;

-- get_worker_stats() gains draining_workers and paused_workers (live workers
-- with that directive), at the end. A new result type needs DROP + CREATE:
-- the EXECUTE grants of the old function are given again. SECURITY DEFINER:
-- a role granted EXECUTE on it (docs/grants.sql) keeps getting the counts
-- without a new grant on worker_fleet (the tables' read policies are
-- USING (true), so the rows counted are the same).
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
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    AS $body$
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
         ORDER BY l.worker_type
    $body$;
    REVOKE ALL ON FUNCTION @extschema@.get_worker_stats() FROM PUBLIC;
    FOREACH g IN ARRAY COALESCE(grantees, ARRAY[]::pg_catalog.text[]) LOOP
        EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION @extschema@.get_worker_stats() TO %s', g);
    END LOOP;
END
$stats$;

-- metrics() gains worker_heartbeat_workers_draining and
-- worker_heartbeat_workers_paused (per type). The 1.2 body is kept as
-- _metrics_1_2() and metrics() appends the new gauges. SECURITY DEFINER, so
-- that a role granted EXECUTE on metrics() needs no grant on _metrics_1_2()
-- (the grants of 1.2's metrics() are given again to the new one).
ALTER FUNCTION @extschema@.metrics() RENAME TO _metrics_1_2;
CREATE FUNCTION @extschema@.metrics()
RETURNS text
LANGUAGE sql
STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $metrics$
WITH st AS (
    SELECT s.worker_type, s.draining_workers, s.paused_workers,
           pg_catalog.replace(pg_catalog.replace(pg_catalog.replace(
               s.worker_type, E'\\', E'\\\\'), '"', E'\\"'), E'\n', E'\\n') AS lt
      FROM @extschema@.get_worker_stats() AS s
)
SELECT @extschema@._metrics_1_2() OPERATOR(pg_catalog.||) pg_catalog.concat_ws(E'\n',
    '# HELP worker_heartbeat_workers_draining Live workers told to drain (drain_workers()), by type.',
    '# TYPE worker_heartbeat_workers_draining gauge',
    (SELECT pg_catalog.string_agg(pg_catalog.format('worker_heartbeat_workers_draining{worker_type="%s"} %s',
                                                    s.lt, s.draining_workers), E'\n' ORDER BY s.worker_type)
       FROM st AS s),
    '# HELP worker_heartbeat_workers_paused Live workers told to pause (pause_workers()), by type.',
    '# TYPE worker_heartbeat_workers_paused gauge',
    (SELECT pg_catalog.string_agg(pg_catalog.format('worker_heartbeat_workers_paused{worker_type="%s"} %s',
                                                    s.lt, s.paused_workers), E'\n' ORDER BY s.worker_type)
       FROM st AS s)) OPERATOR(pg_catalog.||) E'\n'
$metrics$;
COMMENT ON FUNCTION @extschema@.metrics() IS
    'The fleet (workers by type and state, draining and paused workers, heartbeat age, reaper totals, detection latency) in the Prometheus text exposition format; its cost does not grow with worker_events';
COMMENT ON FUNCTION @extschema@._metrics_1_2() IS 'metrics() of 1.2, which metrics() extends (draining and paused workers).';
REVOKE ALL ON FUNCTION @extschema@.metrics() FROM PUBLIC;
DO $metrics_grants$
DECLARE
    r record;
BEGIN
    FOR r IN
        SELECT DISTINCT a.grantee
          FROM pg_catalog.pg_proc AS p, LATERAL pg_catalog.aclexplode(p.proacl) AS a
         WHERE p.oid OPERATOR(pg_catalog.=) '@extschema@._metrics_1_2()'::pg_catalog.regprocedure
           AND a.privilege_type OPERATOR(pg_catalog.=) 'EXECUTE'
           AND a.grantee OPERATOR(pg_catalog.<>) p.proowner
           AND a.grantee OPERATOR(pg_catalog.<>) 0
    LOOP
        EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION @extschema@.metrics() TO %I', r.grantee::pg_catalog.regrole);
    END LOOP;
END
$metrics_grants$;
