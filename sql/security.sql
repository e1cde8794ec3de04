-- Safe to install on shared / Supabase-compatible servers: nothing for
-- PUBLIC, fixed search_path everywhere, RLS on every table, and objects an
-- untrusted user creates cannot hijack our functions.
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS worker_heartbeat CASCADE;
DROP SCHEMA IF EXISTS pm_pipeline CASCADE;
RESET client_min_messages;
CREATE SCHEMA pm_pipeline;
CREATE EXTENSION worker_heartbeat SCHEMA pm_pipeline;
SELECT pm_pipeline.stop_reaper() IS NOT NULL AS reaper_stopped;

-- Every function has a fixed search_path.
SELECT p.oid::regprocedure AS function_without_search_path
  FROM pg_proc p
 WHERE p.pronamespace = 'pm_pipeline'::regnamespace
   AND NOT EXISTS (SELECT 1 FROM unnest(p.proconfig) c WHERE c LIKE 'search_path=%');

-- Nothing is executable by PUBLIC.
SELECT p.oid::regprocedure AS executable_by_public
  FROM pg_proc p
 WHERE p.pronamespace = 'pm_pipeline'::regnamespace
   AND has_function_privilege('public', p.oid, 'EXECUTE');

-- SECURITY DEFINER exactly where a function writes our tables.
SELECT p.oid::regprocedure AS security_definer
  FROM pg_proc p
 WHERE p.pronamespace = 'pm_pipeline'::regnamespace AND p.prosecdef
 ORDER BY p.proname;

-- RLS on every table; no privileges for PUBLIC on tables, views, sequences.
SELECT c.relname, c.relrowsecurity
  FROM pg_class c WHERE c.relnamespace = 'pm_pipeline'::regnamespace AND c.relkind = 'r' ORDER BY 1;
SELECT c.relname AS public_can_read
  FROM pg_class c
 WHERE c.relnamespace = 'pm_pipeline'::regnamespace AND c.relkind IN ('r', 'v', 'S')
   AND (has_table_privilege('public', c.oid, 'SELECT') OR has_table_privilege('public', c.oid, 'INSERT'));

-- Registrations, workers and history are kept by pg_dump.
SELECT c::regclass AS dumped FROM pg_extension, unnest(extconfig) c WHERE extname = 'worker_heartbeat' ORDER BY c::regclass::text;

-- A role with no grants can do nothing.
CREATE ROLE wh_regress_nobody;
SET ROLE wh_regress_nobody;
SELECT pm_pipeline.upsert_worker_heartbeat('intruder', 't');
SELECT * FROM pm_pipeline.worker_heartbeats;
SELECT pm_pipeline.release_dead_worker_leases();
RESET ROLE;

-- With the README's grants a worker role can heartbeat but not read, and a
-- monitoring role can read but not write; neither can write the tables.
CREATE ROLE wh_regress_worker;
CREATE ROLE wh_regress_monitor;
GRANT USAGE ON SCHEMA pm_pipeline TO wh_regress_worker, wh_regress_monitor;
GRANT EXECUTE ON FUNCTION pm_pipeline.upsert_worker_heartbeat(text, text, text, uuid, text, timestamptz, jsonb, boolean),
    pm_pipeline.stop_worker(text) TO wh_regress_worker;
GRANT SELECT ON pm_pipeline.worker_heartbeats, pm_pipeline.worker_liveness, pm_pipeline.v_active_workers,
    pm_pipeline.v_dead_workers TO wh_regress_monitor;
GRANT EXECUTE ON FUNCTION pm_pipeline.get_worker_stats(), pm_pipeline.get_worker_health_summary()
    TO wh_regress_monitor;
SET ROLE wh_regress_worker;
SELECT pm_pipeline.upsert_worker_heartbeat('w1', 'crawler');
SELECT * FROM pm_pipeline.v_active_workers;
UPDATE pm_pipeline.worker_heartbeats SET status = 'dead';
RESET ROLE;
SET ROLE wh_regress_monitor;
SELECT worker_id, status FROM pm_pipeline.worker_heartbeats;
SELECT worker_id FROM pm_pipeline.v_active_workers;
SELECT (pm_pipeline.get_worker_health_summary())->>'total_active_workers' AS active;
SELECT pm_pipeline.upsert_worker_heartbeat('w2', 'crawler');
-- RLS: even with a table privilege, there is no policy to write with.
RESET ROLE;
GRANT UPDATE ON pm_pipeline.worker_heartbeats TO wh_regress_monitor;
SET ROLE wh_regress_monitor;
UPDATE pm_pipeline.worker_heartbeats SET status = 'dead' RETURNING worker_id;
RESET ROLE;
SELECT worker_id, status FROM pm_pipeline.worker_heartbeats;

-- Objects planted in public (the default search_path of a careless caller)
-- do not change what our functions do.
CREATE TABLE public.worker_heartbeats (worker_id text);
CREATE FUNCTION public.now() RETURNS timestamptz LANGUAGE sql AS $$ SELECT '2000-01-01'::timestamptz $$;
CREATE FUNCTION public.jsonb_typeof(jsonb) RETURNS text LANGUAGE sql AS $$ SELECT 'object'::text $$;
SET search_path = public, pg_catalog;
SELECT pm_pipeline.upsert_worker_heartbeat('w1', 'crawler', p_metadata => '{"k": 1}');
SELECT pm_pipeline.release_dead_worker_leases();
SELECT count(*) AS planted_rows FROM public.worker_heartbeats;
RESET search_path;
SELECT worker_id, status, last_heartbeat_at > '2001-01-01' AS real_clock, metadata FROM pm_pipeline.worker_heartbeats;
DROP TABLE public.worker_heartbeats;
DROP FUNCTION public.now();
DROP FUNCTION public.jsonb_typeof(jsonb);

DROP OWNED BY wh_regress_nobody, wh_regress_worker, wh_regress_monitor;
DROP ROLE wh_regress_nobody;
DROP ROLE wh_regress_worker;
DROP ROLE wh_regress_monitor;
