-- Nothing of ours is executable by PUBLIC (see README, "Roles and grants").
DO $revoke$
DECLARE
    f regprocedure;
BEGIN
    FOR f IN
        SELECT p.oid::regprocedure
          FROM pg_catalog.pg_proc p
          JOIN pg_catalog.pg_depend d ON d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_proc'::pg_catalog.regclass
                                     AND d.objid OPERATOR(pg_catalog.=) p.oid
                                     AND d.deptype OPERATOR(pg_catalog.=) 'e'
          JOIN pg_catalog.pg_extension e ON e.oid OPERATOR(pg_catalog.=) d.refobjid
         WHERE e.extname OPERATOR(pg_catalog.=) 'worker_heartbeat'
    LOOP
        EXECUTE pg_catalog.format('REVOKE ALL ON FUNCTION %s FROM PUBLIC', f);
    END LOOP;
END
$revoke$;

-- The reaper of this database starts now (and again at server start when
-- preloaded, or at the first heartbeat after a restart when not). No free
-- background worker slot must not make the installation fail.
DO $start_reaper$
BEGIN
    PERFORM @extschema@.start_reaper();
EXCEPTION WHEN insufficient_resources THEN
    RAISE WARNING 'worker_heartbeat: the reaper could not be started: %', SQLERRM
        USING HINT = 'Raise max_worker_processes, then call start_reaper(). Until then call release_dead_worker_leases() yourself (for example from pg_cron).';
END
$start_reaper$;
