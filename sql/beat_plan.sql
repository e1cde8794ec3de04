-- A heartbeat that is not absorbed in shared memory first tries the cheap
-- timestamp UPDATE (TouchUnchangedRow). After five calls its plan is generic;
-- made while worker_heartbeats was empty and never analyzed, that plan took
-- the index on owner_role instead of the primary key, so each beat read every
-- row of its role: 100,000 first beats in one transaction took minutes. Here
-- 300 new workers in one statement: the rows fetched through indexes must
-- stay proportional to the beats (the old plan fetched ~45,000).
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS worker_heartbeat CASCADE;
DROP SCHEMA IF EXISTS pm_pipeline CASCADE;
RESET client_min_messages;
CREATE SCHEMA pm_pipeline;
CREATE EXTENSION worker_heartbeat SCHEMA pm_pipeline;
SELECT pm_pipeline.stop_reaper() IS NOT NULL AS reaper_stopped;
-- The per-role limit counts the role's rows for each new worker (by
-- design): off here, so that only the heartbeat's own statements count.
SET worker_heartbeat.max_workers_per_role = 0;
BEGIN;
SELECT idx_tup_fetch AS fetched_before
  FROM pg_stat_xact_user_tables WHERE relid = 'pm_pipeline.worker_heartbeats'::regclass \gset
SELECT count(*) FROM (SELECT pm_pipeline.upsert_worker_heartbeat('bp-' || g, 'bp')
    FROM generate_series(1, 300) g) s;
SELECT idx_tup_fetch - :fetched_before <= 3 * 300 AS fetches_proportional_to_beats
  FROM pg_stat_xact_user_tables WHERE relid = 'pm_pipeline.worker_heartbeats'::regclass;
COMMIT;
RESET worker_heartbeat.max_workers_per_role;
SET client_min_messages = warning;
DROP EXTENSION worker_heartbeat CASCADE;
DROP SCHEMA pm_pipeline CASCADE;
RESET client_min_messages;
