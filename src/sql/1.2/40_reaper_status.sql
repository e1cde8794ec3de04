
-- reaper_status() gains leases_released_by_sql (issue "Reliability 1.2",
-- item 4): releases made by stop_worker() and release_dead_worker_leases()
-- are not reaper passes and are counted apart; the other columns keep their
-- meaning (passes, last_pass_*, leases_released: the reaper's own passes).
-- Counters change only for work that committed.
-- A new result type needs DROP + CREATE: the EXECUTE grants given on the old
-- function are given again on the new one, PUBLIC gets nothing (90_privileges).
DO $reaper_status$
DECLARE
    grantees pg_catalog.text[];
    g pg_catalog.text;
BEGIN
    SELECT pg_catalog.array_agg(DISTINCT pg_catalog.quote_ident(r.rolname))
      INTO grantees
      FROM pg_catalog.pg_proc AS p,
           LATERAL pg_catalog.aclexplode(p.proacl) AS a
      JOIN pg_catalog.pg_roles AS r ON r.oid OPERATOR(pg_catalog.=) a.grantee
     WHERE p.oid OPERATOR(pg_catalog.=) '@extschema@.reaper_status()'::pg_catalog.regprocedure
       AND a.privilege_type OPERATOR(pg_catalog.=) 'EXECUTE'
       AND a.grantee OPERATOR(pg_catalog.<>) p.proowner;

    DROP FUNCTION @extschema@.reaper_status();
    CREATE FUNCTION @extschema@.reaper_status()
    RETURNS TABLE (database name, pid integer, state text, started_at timestamptz, last_pass_at timestamptz,
                   last_pass_ms double precision, passes bigint, workers_declared_dead bigint,
                   leases_released bigint, last_error text, leases_released_by_sql bigint)
    LANGUAGE c VOLATILE
    SET search_path = pg_catalog, pg_temp
    AS 'MODULE_PATHNAME', 'wh_reaper_status_1_2';
    COMMENT ON FUNCTION @extschema@.reaper_status() IS
        'One row per database known to the reaper registry; counters run since the server started and count only committed work. passes, last_pass_*, leases_released: the reaper''s passes; leases_released_by_sql: releases by stop_worker() and release_dead_worker_leases().';
    REVOKE ALL ON FUNCTION @extschema@.reaper_status() FROM PUBLIC;
    FOREACH g IN ARRAY COALESCE(grantees, ARRAY[]::pg_catalog.text[]) LOOP
        EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION @extschema@.reaper_status() TO %s', g);
    END LOOP;
END
$reaper_status$;
