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

-- 1.2: a worker belongs to the role that created it (issue 12, "worker ids
-- are one namespace"). Another role cannot beat, revive, retype, rewrite or
-- stop it (42501 with a hint, nothing changed); a member of the owner role and
-- a superuser can.
CREATE FUNCTION pg_temp.error_of(p_sql text, OUT code text, OUT message text, OUT hint text)
LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE p_sql;
    code := 'none';
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS code = RETURNED_SQLSTATE, message = MESSAGE_TEXT, hint = PG_EXCEPTION_HINT;
END
$$;
GRANT EXECUTE ON FUNCTION pg_temp.error_of(text) TO PUBLIC;
CREATE ROLE wh_regress_team_a;
CREATE ROLE wh_regress_team_b;
CREATE ROLE wh_regress_a_ops IN ROLE wh_regress_team_a;
GRANT USAGE ON SCHEMA pm_pipeline TO wh_regress_team_a, wh_regress_team_b, wh_regress_a_ops;
GRANT EXECUTE ON FUNCTION pm_pipeline.upsert_worker_heartbeat(text, text, text, uuid, text, timestamptz, jsonb, boolean),
    pm_pipeline.stop_worker(text) TO wh_regress_team_a, wh_regress_team_b, wh_regress_a_ops;
CREATE TABLE public.sec_jobs (id int PRIMARY KEY, claimed_by text, lease_expires_at timestamptz);
SELECT pm_pipeline.register_lease_table('public.sec_jobs');
SET ROLE wh_regress_team_a;
SELECT pm_pipeline.upsert_worker_heartbeat('a-1', 'crawler', p_metadata => '{"team": "a"}');
RESET ROLE;
INSERT INTO public.sec_jobs VALUES (1, 'a-1', now() + interval '1 hour');
SELECT worker_id, owner_role FROM pm_pipeline.worker_heartbeats WHERE worker_id = 'a-1';
SET ROLE wh_regress_team_b;
SELECT * FROM pg_temp.error_of($$SELECT pm_pipeline.stop_worker('a-1')$$);
SELECT * FROM pg_temp.error_of($$SELECT pm_pipeline.upsert_worker_heartbeat('a-1', 'crawler', p_metadata => '{"team": "a"}')$$);
SELECT * FROM pg_temp.error_of($$SELECT pm_pipeline.upsert_worker_heartbeat('a-1', 'other-type')$$);
SELECT * FROM pg_temp.error_of($$SELECT pm_pipeline.upsert_worker_heartbeat('a-1', 'crawler', p_metadata => '{"team": "b"}')$$);
SELECT * FROM pg_temp.error_of($$SELECT pm_pipeline.upsert_worker_heartbeat('a-1', 'crawler', 'stopped')$$);
RESET ROLE;
SELECT worker_id, worker_type, status, metadata, owner_role FROM pm_pipeline.worker_heartbeats WHERE worker_id = 'a-1';
SELECT id, claimed_by FROM public.sec_jobs;
-- Revive: dead, and still not B's.
UPDATE pm_pipeline.worker_heartbeats SET status = 'dead', died_at = now() WHERE worker_id = 'a-1';
SET ROLE wh_regress_team_b;
SELECT * FROM pg_temp.error_of($$SELECT pm_pipeline.upsert_worker_heartbeat('a-1', 'crawler')$$);
RESET ROLE;
SELECT status FROM pm_pipeline.worker_heartbeats WHERE worker_id = 'a-1';
-- A member of the owner role may act on it; the worker stays A's.
SET ROLE wh_regress_a_ops;
SELECT pm_pipeline.upsert_worker_heartbeat('a-1', 'crawler');
SELECT pm_pipeline.stop_worker('a-1');
RESET ROLE;
SELECT worker_id, status, owner_role FROM pm_pipeline.worker_heartbeats WHERE worker_id = 'a-1';
SELECT id, claimed_by FROM public.sec_jobs;
-- B's own worker is B's; a superuser may act on any worker.
SET ROLE wh_regress_team_b;
SELECT pm_pipeline.upsert_worker_heartbeat('b-1', 'crawler');
RESET ROLE;
SELECT pm_pipeline.stop_worker('b-1');
SELECT worker_id, status, owner_role FROM pm_pipeline.worker_heartbeats WHERE worker_id LIKE '_-1' ORDER BY 1;
-- The caller is the role in effect, not the session user: a SECURITY DEFINER
-- wrapper acts as its owner.
CREATE FUNCTION public.beat_as_a(text) RETURNS void LANGUAGE sql SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    AS $$ SELECT pm_pipeline.upsert_worker_heartbeat($1, 'wrapped') $$;
ALTER FUNCTION public.beat_as_a(text) OWNER TO wh_regress_team_a;
GRANT EXECUTE ON FUNCTION public.beat_as_a(text) TO wh_regress_team_b;
SET ROLE wh_regress_team_b;
SELECT public.beat_as_a('a-2');
RESET ROLE;
SELECT worker_id, owner_role FROM pm_pipeline.worker_heartbeats WHERE worker_id = 'a-2';
-- worker_heartbeat.shared_worker_ids = on: one namespace again (a superuser
-- setting, for databases where every worker role is trusted alike).
SET worker_heartbeat.shared_worker_ids = on;
SET ROLE wh_regress_team_b;
SELECT pm_pipeline.upsert_worker_heartbeat('a-2', 'wrapped', 'idle');
RESET ROLE;
RESET worker_heartbeat.shared_worker_ids;
SELECT worker_id, status, owner_role FROM pm_pipeline.worker_heartbeats WHERE worker_id = 'a-2';
SET ROLE wh_regress_team_b;
SELECT * FROM pg_temp.error_of($$SET worker_heartbeat.shared_worker_ids = on$$);
SELECT * FROM pg_temp.error_of($$SET worker_heartbeat.max_task_bytes = '1MB'$$);
RESET ROLE;
-- Workers from before 1.2 (owner_role NULL) are adopted by the next role
-- that beats them.
UPDATE pm_pipeline.worker_heartbeats SET owner_role = NULL WHERE worker_id = 'b-1';
SET ROLE wh_regress_team_a;
SELECT pm_pipeline.upsert_worker_heartbeat('b-1', 'crawler');
RESET ROLE;
SELECT worker_id, owner_role FROM pm_pipeline.worker_heartbeats WHERE worker_id = 'b-1';
-- worker_heartbeat.max_workers_per_role (54000): a role cannot fill the
-- table; stopped and dead workers count until removed.
SET worker_heartbeat.max_workers_per_role = 3;
SET ROLE wh_regress_team_a;
SELECT * FROM pg_temp.error_of($$SELECT pm_pipeline.upsert_worker_heartbeat('a-3', 'crawler')$$);
SELECT pm_pipeline.upsert_worker_heartbeat('a-1', 'crawler');
RESET ROLE;
SELECT pm_pipeline.upsert_worker_heartbeat('b-2', 'crawler');
RESET worker_heartbeat.max_workers_per_role;
SELECT pm_pipeline.unregister_lease_table('public.sec_jobs');
DROP TABLE public.sec_jobs;
DROP FUNCTION public.beat_as_a(text);
DELETE FROM pm_pipeline.worker_heartbeats;
DROP OWNED BY wh_regress_team_a, wh_regress_team_b, wh_regress_a_ops;
DROP ROLE wh_regress_a_ops;
DROP ROLE wh_regress_team_a;
DROP ROLE wh_regress_team_b;

DROP OWNED BY wh_regress_nobody, wh_regress_worker, wh_regress_monitor;
DROP ROLE wh_regress_nobody;
DROP ROLE wh_regress_worker;
DROP ROLE wh_regress_monitor;
