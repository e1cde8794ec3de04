-- The seed's "Verify" and "Monitoring Queries" sections, verbatim.
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS worker_heartbeat CASCADE;
DROP SCHEMA IF EXISTS pm_pipeline CASCADE;
RESET client_min_messages;
CREATE SCHEMA pm_pipeline;
CREATE EXTENSION worker_heartbeat SCHEMA pm_pipeline;
SELECT pm_pipeline.stop_reaper() IS NOT NULL AS reaper_stopped;
SELECT pm_pipeline.upsert_worker_heartbeat('company-research-1', 'company_research', 'processing',
    'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', 'Researching company: example.com');
SELECT pm_pipeline.upsert_worker_heartbeat('lead-list-1', 'lead_list', 'idle');
SELECT pm_pipeline.upsert_worker_heartbeat('contact-research-1', 'contact_research');
SELECT pm_pipeline.stop_worker('contact-research-1');
SELECT pm_pipeline.upsert_worker_heartbeat('company-research-2', 'company_research', 'processing',
    'b0eebc99-9c0b-4ef8-bb6d-6bb9bd380a22', 'Researching company: example.org');
SELECT pm_pipeline.set_worker_type_dead_after('company_research', '1 microsecond');
SELECT pm_pipeline.release_dead_worker_leases();
SELECT pm_pipeline.set_worker_type_dead_after('company_research', NULL);
SELECT pm_pipeline.upsert_worker_heartbeat('company-research-1', 'company_research', 'processing',
    'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', 'Researching company: example.com');

-- Verify
-- Check table exists
SELECT count(*) FROM (
SELECT * FROM pm_pipeline.worker_heartbeats LIMIT 1
) verify;

-- Check views exist
SELECT count(*) FROM (
SELECT * FROM pm_pipeline.v_active_workers
) verify;
SELECT count(*) FROM (
SELECT * FROM pm_pipeline.v_dead_workers
) verify;

-- Check functions exist
SELECT count(*) FROM (
SELECT pm_pipeline.get_worker_stats()
) verify;

-- Check Active Workers (seconds_ago varies: checked, not printed)
SELECT worker_id, worker_type, status, current_run_id, current_task, seconds_ago BETWEEN 0 AND 60 AS recent
FROM (
SELECT
    worker_id,
    worker_type,
    status,
    current_run_id,
    current_task,
    ROUND(seconds_since_heartbeat::numeric, 1) as seconds_ago
FROM pm_pipeline.v_active_workers
ORDER BY worker_type, worker_id
) q;

-- Find Dead Workers
SELECT worker_id, worker_type, current_run_id, current_task, minutes_ago < 1 AS recent
FROM (
SELECT
    worker_id,
    worker_type,
    last_heartbeat_at,
    current_run_id,
    current_task,
    ROUND(seconds_since_heartbeat::numeric / 60, 1) as minutes_ago
FROM pm_pipeline.v_dead_workers
) q;

-- Worker Statistics
SELECT worker_type, total_workers, active_workers, idle_workers, processing_workers, dead_workers, stopped_workers
FROM (
SELECT * FROM pm_pipeline.get_worker_stats()
) q;

-- Cleanup Old Workers
SELECT * FROM pm_pipeline.cleanup_stale_workers(60);  -- 60 minutes threshold

-- The seed's UI section reads the health summary.
SELECT key, jsonb_typeof(value) FROM jsonb_each(pm_pipeline.get_worker_health_summary()) ORDER BY key;
SELECT s->>'total_active_workers' AS active, s->>'total_dead_workers' AS dead,
       s->'dead_workers'->0->>'worker_id' AS first_dead, s->'dead_workers'->0->>'current_task' AS was_doing
  FROM pm_pipeline.get_worker_health_summary() s;
