-- Grants for the two kinds of roles that use worker_heartbeat.
-- Nothing of the extension is granted to PUBLIC; run this as the extension's
-- owner (or a superuser) with psql, naming the schema and the roles:
--
--   psql -v ON_ERROR_STOP=1 -v schema=pm_pipeline -v worker_role=app_worker \
--        -v monitor_role=app_monitor -f docs/grants.sql
--
-- The file stops at the first error (it sets ON_ERROR_STOP itself). The roles
-- must exist; create them first, for example:
--
--   CREATE ROLE app_worker LOGIN;    -- your workers connect as this role
--   CREATE ROLE app_monitor LOGIN;   -- dashboards, exporters, psql sessions that only read
--
-- or add -v create_roles=1 and this file creates the two roles (LOGIN, no
-- password: set one, or use peer/cert authentication) when they do not exist.
-- On Supabase: -v worker_role=service_role -v monitor_role=service_role
-- (anon and authenticated get nothing).
\set ON_ERROR_STOP on
\if :{?create_roles}
SELECT pg_catalog.format('CREATE ROLE %I LOGIN', r)
  FROM pg_catalog.unnest(ARRAY[:'worker_role', :'monitor_role']) AS r
 WHERE NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname OPERATOR(pg_catalog.=) r)
 GROUP BY r
\gexec
\endif

-- Workers: heartbeat, stop, and (1.1) claim / extend / complete / fail leases.
-- The fenced-lease functions run with the worker's own privileges, so the
-- worker also needs SELECT and UPDATE on its queue tables (granted by you).
GRANT USAGE ON SCHEMA :"schema" TO :"worker_role";
GRANT EXECUTE ON FUNCTION
    :"schema".upsert_worker_heartbeat(text, text, text, uuid, text, timestamptz, jsonb, boolean),
    :"schema".stop_worker(text)
    TO :"worker_role";
SELECT pg_catalog.format('GRANT EXECUTE ON FUNCTION %s TO %I', p.oid::regprocedure, :'worker_role')
  FROM pg_catalog.pg_proc p
 WHERE p.pronamespace OPERATOR(pg_catalog.=) (:'schema')::regnamespace
   AND p.proname OPERATOR(pg_catalog.=) ANY (ARRAY['claim_leases', 'extend_lease', 'complete_lease', 'fail_lease', 'check_lease', 'checkpoint_lease'])
\gexec
SELECT pg_catalog.format('GRANT SELECT ON %s.lease_tables TO %I', pg_catalog.quote_ident(:'schema'), :'worker_role'),
       pg_catalog.format('GRANT USAGE ON SEQUENCE %s.lease_token_seq TO %I', pg_catalog.quote_ident(:'schema'), :'worker_role')
 WHERE pg_catalog.to_regclass(pg_catalog.quote_ident(:'schema') || '.lease_token_seq') IS NOT NULL
\gexec
-- 1.3: heartbeat(), which answers with the worker's directive (drain, pause).
SELECT pg_catalog.format('GRANT EXECUTE ON FUNCTION %s TO %I', p.oid::regprocedure, :'worker_role')
  FROM pg_catalog.pg_proc p
 WHERE p.pronamespace OPERATOR(pg_catalog.=) (:'schema')::regnamespace
   AND p.proname OPERATOR(pg_catalog.=) 'heartbeat'
\gexec

-- Monitoring (read-only): views, tables, summaries, metrics.
GRANT USAGE ON SCHEMA :"schema" TO :"monitor_role";
GRANT SELECT ON
    :"schema".worker_heartbeats, :"schema".worker_types, :"schema".lease_tables, :"schema".worker_events,
    :"schema".worker_liveness, :"schema".v_active_workers, :"schema".v_dead_workers
    TO :"monitor_role";
-- 1.2: metrics() reads the totals kept beside worker_events.
SELECT pg_catalog.format('GRANT SELECT ON %s.worker_event_totals TO %I', pg_catalog.quote_ident(:'schema'), :'monitor_role')
 WHERE pg_catalog.to_regclass(pg_catalog.quote_ident(:'schema') || '.worker_event_totals') IS NOT NULL
\gexec
-- 1.3: the drain and pause rules, and the fleet with each worker's directive.
SELECT pg_catalog.format('GRANT SELECT ON %1$s.worker_directives, %1$s.worker_fleet TO %2$I',
                         pg_catalog.quote_ident(:'schema'), :'monitor_role')
 WHERE pg_catalog.to_regclass(pg_catalog.quote_ident(:'schema') || '.worker_fleet') IS NOT NULL
\gexec
GRANT EXECUTE ON FUNCTION
    :"schema".get_active_workers(), :"schema".get_dead_workers(), :"schema".get_worker_stats(),
    :"schema".get_worker_health_summary(), :"schema".reaper_status(), :"schema".metrics()
    TO :"monitor_role";

-- Operators (registering tables, manual passes, the reaper switch) are the
-- extension's owner by default; grant these to an operator role if needed:
--   register_lease_table, unregister_lease_table, release_dead_worker_leases,
--   cleanup_stale_workers, set_worker_type_dead_after, start_reaper, stop_reaper,
--   (1.3) drain_workers, pause_workers, resume_workers
