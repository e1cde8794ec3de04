-- A registered table with inheritance children. The statements of a pass and
-- of the lease functions find rows again by ctid, which is unique within one
-- table only: without ONLY, the release of a parent's row also updated a
-- child's row at the same ctid, however it was held. Every statement names
-- the registered table ONLY: a child's rows are the child's registration's
-- business, and registering the parent says so.
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS worker_heartbeat CASCADE;
DROP SCHEMA IF EXISTS pm_pipeline CASCADE;
DROP TABLE IF EXISTS public.ih_queue CASCADE;
RESET client_min_messages;
CREATE SCHEMA pm_pipeline;
CREATE EXTENSION worker_heartbeat SCHEMA pm_pipeline;
SELECT pm_pipeline.stop_reaper() IS NOT NULL AS reaper_stopped;
CREATE TABLE public.ih_queue (id int, claimed_by text, lease_expires_at timestamptz,
    state text NOT NULL DEFAULT 'pending', lease_token bigint, attempts int NOT NULL DEFAULT 0);
CREATE TABLE public.ih_child () INHERITS (public.ih_queue);
CREATE INDEX ON public.ih_queue (claimed_by);
CREATE INDEX ON public.ih_queue (lease_expires_at);
CREATE INDEX ON public.ih_queue (lease_token);
CREATE INDEX ON public.ih_child (claimed_by);
CREATE INDEX ON public.ih_child (lease_expires_at);
SELECT pm_pipeline.register_lease_table('public.ih_queue', 'claimed_by', 'lease_expires_at',
    '{"state": "pending"}', p_token_column => 'lease_token', p_attempts_column => 'attempts');
SELECT pm_pipeline.upsert_worker_heartbeat(w, 'ih') FROM unnest(ARRAY['ih-dead', 'ih-live']) w;
-- One row in each table: both at ctid (0,1). The parent's is the dead
-- worker's, the child's a live worker's.
INSERT INTO public.ih_queue VALUES (1, 'ih-dead', now() + interval '1 hour', 'claimed', 11, 1);
INSERT INTO public.ih_child VALUES (2, 'ih-live', now() + interval '1 hour', 'claimed', 22, 1);
SELECT tableoid::regclass, ctid, id, claimed_by FROM public.ih_queue ORDER BY id;
-- The direct release, then the careful one (a row this transaction holds
-- locked sends the table there).
BEGIN;
SELECT pm_pipeline.stop_worker('ih-dead');
SELECT tableoid::regclass, id, claimed_by, state FROM public.ih_queue ORDER BY id;
ROLLBACK;
BEGIN;
SELECT id FROM ONLY public.ih_queue FOR UPDATE;
SELECT pm_pipeline.stop_worker('ih-dead');
SELECT tableoid::regclass, id, claimed_by, state FROM public.ih_queue ORDER BY id;
SELECT worker_id, table_name, released_count FROM pm_pipeline.worker_events
 WHERE event = 'leases_released' ORDER BY event_id;
ROLLBACK;
-- An expired lease in the parent, the child's row at the same ctid still
-- leased: the pass (expired leases take the careful path) releases the
-- parent's only.
TRUNCATE public.ih_queue;
INSERT INTO public.ih_queue VALUES (1, 'ih-live', now() - interval '1 minute', 'claimed', 11, 1);
INSERT INTO public.ih_child VALUES (2, 'ih-live', now() + interval '1 hour', 'claimed', 22, 1);
SELECT tableoid::regclass, ctid, id, claimed_by FROM public.ih_queue ORDER BY id;
SELECT pm_pipeline.release_dead_worker_leases() AS released;
SELECT tableoid::regclass, id, claimed_by, state FROM public.ih_queue ORDER BY id;
-- claim_leases and fail_lease of the parent, with the child's rows (leases
-- of another worker) at the ctids the parent's row has before and after its
-- claim: neither is claimed nor failed.
TRUNCATE public.ih_queue;
INSERT INTO public.ih_queue VALUES (1, NULL, NULL, 'pending', NULL, 0);
INSERT INTO public.ih_child VALUES (2, 'ih-live', now() + interval '1 hour', 'claimed', 22, 1),
    (3, 'ih-live', now() + interval '1 hour', 'claimed', 33, 1);
SELECT id, claimed_by, attempts FROM pm_pipeline.claim_leases(NULL::public.ih_queue, 'ih-new', 10);
SELECT tableoid::regclass, ctid, id, claimed_by, lease_token IN (22, 33) AS own_token
  FROM public.ih_queue ORDER BY id;
SELECT pm_pipeline.fail_lease('public.ih_queue', (SELECT lease_token FROM ONLY public.ih_queue));
SELECT tableoid::regclass, ctid, id, claimed_by, state, lease_token IS NULL AS token_cleared
  FROM public.ih_queue ORDER BY id;
-- Registering the child covers its rows.
SELECT pm_pipeline.register_lease_table('public.ih_child', 'claimed_by', 'lease_expires_at',
    '{"state": "pending"}');
SELECT pm_pipeline.stop_worker('ih-live');
SELECT tableoid::regclass, id, claimed_by, state FROM public.ih_queue ORDER BY id;
SET client_min_messages = warning;
DROP TABLE public.ih_queue CASCADE;
DROP EXTENSION worker_heartbeat CASCADE;
DROP SCHEMA pm_pipeline CASCADE;
