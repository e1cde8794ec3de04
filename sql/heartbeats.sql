-- The heartbeat API: upsert_worker_heartbeat, stop_worker, the views and
-- functions over them, and every way to call them wrongly.
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS worker_heartbeat CASCADE;
DROP SCHEMA IF EXISTS pm_pipeline CASCADE;
RESET client_min_messages;
-- error_of(sql): the SQLSTATE, message and hint of the error a statement
-- raises (the same on every PostgreSQL version, unlike VERBOSITY verbose).
CREATE FUNCTION pg_temp.error_of(p_sql text, OUT code text, OUT message text, OUT hint text)
LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE p_sql;
    code := 'none';
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS code = RETURNED_SQLSTATE, message = MESSAGE_TEXT, hint = PG_EXCEPTION_HINT;
END
$$;
CREATE SCHEMA pm_pipeline;
CREATE EXTENSION worker_heartbeat SCHEMA pm_pipeline;
-- Passes run only when this test asks for them.
SELECT pm_pipeline.stop_reaper() IS NOT NULL AS reaper_stopped;

-- A first heartbeat creates the worker, with the defaults.
SELECT pm_pipeline.upsert_worker_heartbeat('company-research-1', 'company_research');
SELECT worker_id, worker_type, status, current_run_id, current_task, lease_expires_at, metadata,
       session_pid, died_at, death_cause,
       last_heartbeat_at = started_at AS fresh
  FROM pm_pipeline.worker_heartbeats;

-- Every argument, by name; metadata is merged; NULL metadata keeps it.
SELECT pm_pipeline.upsert_worker_heartbeat(
    p_worker_id => 'company-research-1', p_worker_type => 'company_research',
    p_status => 'processing', p_current_run_id => 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
    p_current_task => 'Researching company: example.com',
    p_lease_expires_at => '2030-01-01 00:00:00+00', p_metadata => '{"host": "box-1", "version": 1}');
SELECT pm_pipeline.upsert_worker_heartbeat('company-research-1', 'company_research', 'processing',
    'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', 'Researching company: example.com',
    '2030-01-01 00:00:00+00', '{"version": 2}');
SELECT pm_pipeline.upsert_worker_heartbeat('company-research-1', 'company_research', 'processing',
    'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', 'Researching company: example.com',
    '2030-01-01 00:00:00+00', NULL);
SELECT status, current_run_id, current_task, lease_expires_at, metadata
  FROM pm_pipeline.worker_heartbeats WHERE worker_id = 'company-research-1';

-- Free-text worker types; a second worker.
SELECT pm_pipeline.upsert_worker_heartbeat('scraper-α', 'web scraper ✓', 'idle');
SELECT worker_id, worker_type, status FROM pm_pipeline.v_active_workers ORDER BY worker_id;
SELECT worker_id FROM pm_pipeline.v_dead_workers;

-- The views carry every column of the table plus seconds_since_heartbeat.
SELECT attname FROM pg_attribute
 WHERE attrelid = 'pm_pipeline.v_active_workers'::regclass AND attnum > 0 ORDER BY attnum;
SELECT (SELECT array_agg(attname ORDER BY attnum) FROM pg_attribute
         WHERE attrelid = 'pm_pipeline.v_dead_workers'::regclass AND attnum > 0)
     = (SELECT array_agg(attname ORDER BY attnum) FROM pg_attribute
         WHERE attrelid = 'pm_pipeline.v_active_workers'::regclass AND attnum > 0) AS same_columns;
-- (owner_role, 1.2, stays in the table: the views keep the seed's columns.)
SELECT string_agg(t.attname, ', ') AS table_columns_missing_from_view
  FROM pg_attribute t
 WHERE t.attrelid = 'pm_pipeline.worker_heartbeats'::regclass AND t.attnum > 0 AND NOT t.attisdropped
   AND NOT EXISTS (SELECT 1 FROM pg_attribute v
                    WHERE v.attrelid = 'pm_pipeline.v_dead_workers'::regclass AND v.attname = t.attname);

-- Bad input: a clear error with its SQLSTATE, and nothing changes.
SELECT * FROM pg_temp.error_of($$SELECT pm_pipeline.upsert_worker_heartbeat(NULL, 'company_research')$$);
SELECT * FROM pg_temp.error_of($$SELECT pm_pipeline.upsert_worker_heartbeat('', 'company_research')$$);
SELECT * FROM pg_temp.error_of($$SELECT pm_pipeline.upsert_worker_heartbeat('   ', 'company_research')$$);
SELECT * FROM pg_temp.error_of($$SELECT pm_pipeline.upsert_worker_heartbeat(repeat('x', 201), 'company_research')$$);
SELECT * FROM pg_temp.error_of($$SELECT pm_pipeline.upsert_worker_heartbeat('w', NULL)$$);
SELECT * FROM pg_temp.error_of($$SELECT pm_pipeline.upsert_worker_heartbeat('w', '')$$);
SELECT * FROM pg_temp.error_of($$SELECT pm_pipeline.upsert_worker_heartbeat('w', repeat('t', 201))$$);
SELECT * FROM pg_temp.error_of($$SELECT pm_pipeline.upsert_worker_heartbeat('w', 't', NULL)$$);
SELECT * FROM pg_temp.error_of($$SELECT pm_pipeline.upsert_worker_heartbeat('w', 't', 'running')$$);
SELECT * FROM pg_temp.error_of($$SELECT pm_pipeline.upsert_worker_heartbeat('w', 't', 'ACTIVE')$$);
SELECT * FROM pg_temp.error_of($$SELECT pm_pipeline.upsert_worker_heartbeat('w', 't', 'dead')$$);
SELECT * FROM pg_temp.error_of($$SELECT pm_pipeline.upsert_worker_heartbeat('w', 't', p_metadata => '[1, 2]')$$);
SELECT * FROM pg_temp.error_of($$SELECT pm_pipeline.upsert_worker_heartbeat('w', 't', p_metadata => '"text"')$$);
SELECT * FROM pg_temp.error_of($$SELECT pm_pipeline.stop_worker(NULL)$$);
SELECT * FROM pg_temp.error_of($$SELECT pm_pipeline.stop_worker('')$$);
SELECT * FROM pg_temp.error_of($$SELECT pm_pipeline.cleanup_stale_workers(0)$$);
SELECT * FROM pg_temp.error_of($$SELECT pm_pipeline.cleanup_stale_workers(-5)$$);
SELECT * FROM pg_temp.error_of($$SELECT pm_pipeline.cleanup_stale_workers(NULL)$$);
SELECT * FROM pg_temp.error_of($$SELECT pm_pipeline.set_worker_type_dead_after('company_research', '0 seconds')$$);
SELECT * FROM pg_temp.error_of($$SELECT pm_pipeline.set_worker_type_dead_after('company_research', '-1 minute')$$);
SELECT * FROM pg_temp.error_of($$SELECT pm_pipeline.set_worker_type_dead_after('', '1 minute')$$);
-- 200 bytes is the limit, not 200 characters.
SELECT pm_pipeline.upsert_worker_heartbeat(repeat('é', 101), 't');
SELECT pm_pipeline.upsert_worker_heartbeat(repeat('é', 100), 't');
SELECT count(*) AS workers, count(*) FILTER (WHERE worker_id = repeat('é', 100)) AS long_id
  FROM pm_pipeline.worker_heartbeats;
SELECT pm_pipeline.stop_worker(repeat('é', 100));

-- stop_worker: graceful; false for an unknown worker.
SELECT pm_pipeline.stop_worker('scraper-α');
SELECT pm_pipeline.stop_worker('nobody');
SELECT worker_id, status, current_task FROM pm_pipeline.worker_heartbeats WHERE worker_id = 'scraper-α';

-- A stopped worker that beats again has started again.
SELECT pm_pipeline.upsert_worker_heartbeat('scraper-α', 'web scraper ✓', 'idle');
SELECT worker_id, status FROM pm_pipeline.v_active_workers ORDER BY worker_id;

-- Death by silence: a per-type dead_after, then one reaping pass.
SELECT pm_pipeline.set_worker_type_dead_after('web scraper ✓', '1 microsecond');
SELECT worker_id, status FROM pm_pipeline.v_dead_workers;
SELECT pm_pipeline.release_dead_worker_leases();
SELECT worker_id, status, death_cause, died_at IS NOT NULL AS has_died_at
  FROM pm_pipeline.worker_heartbeats ORDER BY worker_id;
-- A dead worker that beats again comes back to life.
SELECT pm_pipeline.set_worker_type_dead_after('web scraper ✓', NULL);
SELECT pm_pipeline.upsert_worker_heartbeat('scraper-α', 'web scraper ✓', 'idle');
SELECT worker_id, status, death_cause, died_at FROM pm_pipeline.worker_heartbeats WHERE worker_id = 'scraper-α';

-- The history of all that.
SELECT event_id, worker_id, worker_type, event, details - 'forensics' AS details, -- 1.3: forensics in 110
       silent_for IS NOT NULL AS has_silent_for, detection_latency IS NOT NULL AS has_latency
  FROM pm_pipeline.worker_events ORDER BY event_id;

-- Statistics per type and the JSON summary.
SELECT worker_type, total_workers, active_workers, idle_workers, processing_workers, dead_workers, stopped_workers,
       oldest_heartbeat <= now() AS oldest_in_past
  FROM pm_pipeline.get_worker_stats();
SELECT worker_id FROM pm_pipeline.get_active_workers();
SELECT worker_id FROM pm_pipeline.get_dead_workers();
SELECT jsonb_pretty(pm_pipeline.get_worker_health_summary() - 'stats_by_type');
SELECT jsonb_array_length(pm_pipeline.get_worker_health_summary() -> 'stats_by_type') AS types;

-- cleanup_stale_workers removes only what is stopped or dead for longer than
-- the threshold.
SELECT pm_pipeline.stop_worker('scraper-α');
SELECT pm_pipeline.cleanup_stale_workers(60);
UPDATE pm_pipeline.worker_heartbeats SET last_heartbeat_at = now() - interval '2 hours'
 WHERE worker_id = 'scraper-α';
SELECT pm_pipeline.cleanup_stale_workers(60);
SELECT worker_id FROM pm_pipeline.worker_heartbeats ORDER BY worker_id;
SELECT event, worker_id FROM pm_pipeline.worker_events WHERE event = 'removed';

-- Session binding: the session that binds a worker may beat for it; a
-- worker bound to a session that has ended is dead.
SELECT pm_pipeline.upsert_worker_heartbeat('bound-1', 'binder', p_session_bound => true);
SELECT session_pid = pg_backend_pid() AS bound_here,
       session_started_at = (SELECT backend_start FROM pg_stat_activity WHERE pid = pg_backend_pid()) AS same_session
  FROM pm_pipeline.worker_heartbeats WHERE worker_id = 'bound-1';
SELECT pm_pipeline.upsert_worker_heartbeat('bound-1', 'binder', p_session_bound => true);
-- A session that no longer exists:
UPDATE pm_pipeline.worker_heartbeats SET session_pid = 0 WHERE worker_id = 'bound-1';
SELECT pm_pipeline.release_dead_worker_leases();
SELECT worker_id, status, death_cause, session_pid FROM pm_pipeline.worker_heartbeats WHERE worker_id = 'bound-1';
-- ... and it can come back, bound to this session again.
SELECT pm_pipeline.upsert_worker_heartbeat('bound-1', 'binder', p_session_bound => true);
SELECT worker_id, status, session_pid = pg_backend_pid() AS bound_here
  FROM pm_pipeline.worker_heartbeats WHERE worker_id = 'bound-1';
-- Unbinding is a heartbeat without p_session_bound.
SELECT pm_pipeline.upsert_worker_heartbeat('bound-1', 'binder');
SELECT session_pid FROM pm_pipeline.worker_heartbeats WHERE worker_id = 'bound-1';

-- Rows written behind the API's back (a restore, a COPY) are looked at too:
-- the reaper's schedule of the next overdue worker is reset by a trigger.
-- (Silence counts from the server's start at the earliest, so the type's
-- dead_after is shorter than the server has been up.)
SELECT pm_pipeline.set_worker_type_dead_after('restored', '1 microsecond');
SELECT pm_pipeline.release_dead_worker_leases() >= 0 AS passed;
INSERT INTO pm_pipeline.worker_heartbeats (worker_id, worker_type, last_heartbeat_at, started_at)
VALUES ('restored-1', 'restored', now() - interval '1 day', now() - interval '2 days');
SELECT pm_pipeline.release_dead_worker_leases();
SELECT worker_id, status, death_cause FROM pm_pipeline.worker_heartbeats WHERE worker_id = 'restored-1';
SELECT tgname, tgrelid::regclass FROM pg_trigger WHERE tgfoid = 'pm_pipeline._worker_rows_changed'::regproc ORDER BY tgrelid::regclass::text;

-- A heartbeat rolled back leaves nothing behind.
BEGIN;
SELECT pm_pipeline.upsert_worker_heartbeat('ghost', 'ghosts');
ROLLBACK;
SELECT count(*) AS ghosts FROM pm_pipeline.worker_heartbeats WHERE worker_id = 'ghost';
SELECT pm_pipeline.upsert_worker_heartbeat('ghost', 'ghosts');
SELECT count(*) AS ghosts FROM pm_pipeline.worker_heartbeats WHERE worker_id = 'ghost';

-- 1.2 limits (issue 13 item 1, issue 12 items 5 and 9). Every refusal is a
-- clear error that changes nothing.
-- Ids and types: at most 200 bytes, not blank, also for rows written behind
-- the API's back (the reaper's shared-memory cache relies on it).
SELECT * FROM pg_temp.error_of($$INSERT INTO pm_pipeline.worker_heartbeats (worker_id, worker_type)
                                VALUES (repeat('x', 201), 't')$$);
SELECT * FROM pg_temp.error_of($$INSERT INTO pm_pipeline.worker_heartbeats (worker_id, worker_type)
                                VALUES ('ok', E' \t')$$);
SELECT * FROM pg_temp.error_of($$INSERT INTO pm_pipeline.worker_types VALUES (repeat('é', 101), '1 minute')$$);
SELECT * FROM pg_temp.error_of($$SELECT pm_pipeline.set_worker_type_dead_after(repeat('t', 201), '1 minute')$$);
INSERT INTO pm_pipeline.worker_heartbeats (worker_id, worker_type) VALUES (repeat('ü', 100), 't');
DELETE FROM pm_pipeline.worker_heartbeats WHERE worker_id = repeat('ü', 100);

-- dead_after: positive and at most 10 years; beyond, deadlines overflow.
SELECT * FROM pg_temp.error_of($$SELECT pm_pipeline.set_worker_type_dead_after('t', '100000000 years')$$);
SELECT * FROM pg_temp.error_of($$SELECT pm_pipeline.set_worker_type_dead_after('t', '10 years 1 second')$$);
SELECT * FROM pg_temp.error_of($$INSERT INTO pm_pipeline.worker_types VALUES ('t', '11 years')$$);
SELECT pm_pipeline.set_worker_type_dead_after('t', '10 years');
SELECT dead_after FROM pm_pipeline.worker_types WHERE worker_type = 't';
SELECT pm_pipeline.set_worker_type_dead_after('t', NULL);
SELECT count(*) AS views_still_work FROM pm_pipeline.worker_liveness;

-- current_task: worker_heartbeat.max_task_bytes (1 kB); metadata:
-- worker_heartbeat.max_metadata_bytes (64 kB, jsonb size, after merging).
SHOW worker_heartbeat.max_task_bytes;
SHOW worker_heartbeat.max_metadata_bytes;
SELECT pm_pipeline.upsert_worker_heartbeat('sized', 'sizes', p_current_task => repeat('t', 1024));
SELECT * FROM pg_temp.error_of($$SELECT pm_pipeline.upsert_worker_heartbeat('sized', 'sizes', p_current_task => repeat('t', 2 * 1024 * 1024))$$);
SELECT * FROM pg_temp.error_of($$SELECT pm_pipeline.upsert_worker_heartbeat('sized', 'sizes', p_metadata => jsonb_build_object('blob', repeat('m', 2 * 1024 * 1024)))$$);
-- Each part small, the merged whole too large:
SELECT pm_pipeline.upsert_worker_heartbeat('sized', 'sizes', p_metadata => jsonb_build_object('a', repeat('m', 40000)));
SELECT * FROM pg_temp.error_of($$SELECT pm_pipeline.upsert_worker_heartbeat('sized', 'sizes', p_metadata => jsonb_build_object('b', repeat('m', 40000)))$$);
SELECT octet_length(current_task) AS task_bytes, metadata ? 'a' AS has_a, metadata ? 'b' AS has_b
  FROM pm_pipeline.worker_heartbeats WHERE worker_id = 'sized';
-- A superuser setting (a worker role cannot lift it for itself).
SELECT context FROM pg_settings WHERE name IN ('worker_heartbeat.max_task_bytes', 'worker_heartbeat.max_metadata_bytes',
    'worker_heartbeat.max_workers_per_role', 'worker_heartbeat.shared_worker_ids') ORDER BY name;
SET worker_heartbeat.max_task_bytes = '4kB';
SELECT pm_pipeline.upsert_worker_heartbeat('sized', 'sizes', p_current_task => repeat('t', 4096));
RESET worker_heartbeat.max_task_bytes;

-- 'stopped' through the heartbeat is stop_worker(): its leases are released
-- at once, and it no longer holds a run, a task or a deadline.
CREATE TABLE public.hb_jobs (id int PRIMARY KEY, claimed_by text, lease_expires_at timestamptz);
SELECT pm_pipeline.register_lease_table('public.hb_jobs');
SELECT pm_pipeline.upsert_worker_heartbeat('stopper', 'sizes', 'processing', p_current_task => 'job 1',
                                           p_lease_expires_at => now() + interval '1 hour');
INSERT INTO public.hb_jobs VALUES (1, 'stopper', now() + interval '1 hour'), (2, 'other', now() + interval '1 hour');
SELECT pm_pipeline.upsert_worker_heartbeat('stopper', 'sizes', 'stopped', p_current_task => 'job 1');
SELECT status, current_task, lease_expires_at, session_pid FROM pm_pipeline.worker_heartbeats WHERE worker_id = 'stopper';
SELECT id, claimed_by, lease_expires_at IS NULL AS no_deadline FROM public.hb_jobs ORDER BY id;
SELECT event, worker_id, table_name, released_count FROM pm_pipeline.worker_events
 WHERE worker_id = 'stopper' ORDER BY event_id;
-- Stopped again: no second 'stopped' event.
SELECT pm_pipeline.upsert_worker_heartbeat('stopper', 'sizes', 'stopped');
SELECT count(*) AS stopped_events FROM pm_pipeline.worker_events WHERE worker_id = 'stopper' AND event = 'stopped';
SELECT pm_pipeline.unregister_lease_table('public.hb_jobs');
DROP TABLE public.hb_jobs;
