-- The release UPDATE of a reaping pass fetches each picked row by its ctid
-- (issue 17, item 2). Left to its estimates, the planner switched to a hash
-- join over a sequential scan of the whole table once the picked rows cost
-- more as random page reads than the table as a sequential scan: at 250,000
-- rows from ~2,500 released rows on (120-215 ms instead of 10). Here 500 of
-- 20,000 rows, which took the sequential scan before: the release must not
-- scan the table (pg_stat_xact_user_tables.seq_scan stays 0). Nobody holds
-- those rows locked: the direct release updates each once (500 updates; a
-- fallback to the careful path after a first attempt would count 1000).
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS worker_heartbeat CASCADE;
DROP SCHEMA IF EXISTS pm_pipeline CASCADE;
DROP TABLE IF EXISTS public.rp_queue;
RESET client_min_messages;
CREATE SCHEMA pm_pipeline;
CREATE EXTENSION worker_heartbeat SCHEMA pm_pipeline;
SELECT pm_pipeline.stop_reaper() IS NOT NULL AS reaper_stopped;
CREATE TABLE public.rp_queue (id int PRIMARY KEY, claimed_by text, lease_expires_at timestamptz,
    state text NOT NULL DEFAULT 'pending');
CREATE INDEX ON public.rp_queue (claimed_by);
CREATE INDEX ON public.rp_queue (lease_expires_at);
SELECT pm_pipeline.register_lease_table('public.rp_queue', 'claimed_by', 'lease_expires_at',
    '{"state": "pending"}');
SELECT count(*) FROM (SELECT pm_pipeline.upsert_worker_heartbeat('rp-' || g, 'rp')
    FROM generate_series(1, 40) g) s;
INSERT INTO public.rp_queue SELECT g, 'rp-' || (g % 40 + 1), now() + interval '1 hour', 'claimed'
  FROM generate_series(1, 20000) g;
ANALYZE public.rp_queue;
-- pg_stat_xact_user_tables also shows this backend's counts not yet flushed
-- (up to a second old: the INSERT, the registration's checks): the release
-- is judged by the difference across the call.
BEGIN;
SELECT seq_scan AS seq_before, n_tup_upd AS upd_before
  FROM pg_stat_xact_user_tables WHERE relid = 'public.rp_queue'::regclass \gset
SELECT pm_pipeline.stop_worker('rp-1');
SELECT seq_scan - :seq_before AS seq_scans, n_tup_upd - :upd_before AS rows_updated
  FROM pg_stat_xact_user_tables WHERE relid = 'public.rp_queue'::regclass;
SELECT count(*) AS still_held FROM public.rp_queue WHERE claimed_by = 'rp-1';
SELECT released_count FROM pm_pipeline.worker_events
 WHERE event = 'leases_released' AND worker_id = 'rp-1';
ROLLBACK;
-- Rows leased the usual way, locked FOR UPDATE and updated by one
-- transaction, keep that lock in their xmax after it commits. A finished
-- locker holds nothing: the direct release still runs (one index scan, the
-- read; the careful path makes two, the pick and the count of rows left).
UPDATE public.rp_queue q SET lease_expires_at = now() + interval '2 hours'
  FROM (SELECT id FROM public.rp_queue WHERE claimed_by = 'rp-4' FOR UPDATE) s WHERE q.id = s.id;
BEGIN;
SELECT idx_scan AS idx_before, n_tup_upd AS upd_before
  FROM pg_stat_xact_user_tables WHERE relid = 'public.rp_queue'::regclass \gset
SELECT pm_pipeline.stop_worker('rp-4');
SELECT idx_scan - :idx_before AS index_scans, n_tup_upd - :upd_before AS rows_updated
  FROM pg_stat_xact_user_tables WHERE relid = 'public.rp_queue'::regclass;
SELECT count(*) AS still_held FROM public.rp_queue WHERE claimed_by = 'rp-4';
ROLLBACK;
-- Rows someone locked go the careful path (lock SKIP LOCKED, then update),
-- all of them still released and counted: a lock-only xmax left by a
-- committed FOR SHARE, and the releasing transaction's own FOR UPDATE.
SELECT count(*) AS locked_for_share FROM (SELECT id FROM public.rp_queue
  WHERE claimed_by = 'rp-2' AND id % 80 = 1 FOR SHARE) s;
BEGIN;
SELECT pm_pipeline.stop_worker('rp-2');
SELECT count(*) AS still_held FROM public.rp_queue WHERE claimed_by = 'rp-2';
SELECT released_count FROM pm_pipeline.worker_events
 WHERE event = 'leases_released' AND worker_id = 'rp-2';
ROLLBACK;
BEGIN;
SELECT count(*) AS locked_for_update FROM (SELECT id FROM public.rp_queue
  WHERE claimed_by = 'rp-3' FOR UPDATE) s;
SELECT pm_pipeline.stop_worker('rp-3');
SELECT count(*) AS still_held FROM public.rp_queue WHERE claimed_by = 'rp-3';
SELECT released_count FROM pm_pipeline.worker_events
 WHERE event = 'leases_released' AND worker_id = 'rp-3';
ROLLBACK;
SET client_min_messages = warning;
DROP TABLE public.rp_queue;
DROP EXTENSION worker_heartbeat CASCADE;
DROP SCHEMA pm_pipeline CASCADE;
RESET client_min_messages;
