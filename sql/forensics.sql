-- Death forensics and zombie termination (1.3, issue 16 sections 3 and 4):
-- the settings and set_worker_type_terminate_zombies, bad input and
-- permissions. The real deaths are TAP tests 110 and 111.
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS worker_heartbeat CASCADE;
DROP SCHEMA IF EXISTS pm_pipeline CASCADE;
DROP ROLE IF EXISTS forensics_worker;
RESET client_min_messages;
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
SELECT pm_pipeline.stop_reaper() IS NOT NULL AS reaper_stopped;

-- The settings: off by default / on by default; terminate_zombies only in
-- postgresql.conf; forensics_query_text only for superusers.
SHOW worker_heartbeat.terminate_zombies;
SHOW worker_heartbeat.forensics_query_text;
SELECT * FROM pg_temp.error_of('SET worker_heartbeat.terminate_zombies = on');
SELECT name, context, vartype FROM pg_settings
 WHERE name IN ('worker_heartbeat.terminate_zombies', 'worker_heartbeat.forensics_query_text') ORDER BY name;
SELECT * FROM pg_temp.error_of('SET worker_heartbeat.forensics_query_text = sometimes');

-- Per worker type: on, off, back to the setting (NULL).
SELECT pm_pipeline.set_worker_type_terminate_zombies('scraper', true);
SELECT worker_type, dead_after, terminate_zombies FROM pm_pipeline.worker_types ORDER BY 1;
SELECT pm_pipeline.set_worker_type_dead_after('scraper', '45 seconds');
SELECT pm_pipeline.set_worker_type_terminate_zombies('scraper', false);
SELECT worker_type, dead_after, terminate_zombies FROM pm_pipeline.worker_types ORDER BY 1;
-- NULL dead_after keeps the row while it overrides terminate_zombies ...
SELECT pm_pipeline.set_worker_type_dead_after('scraper', NULL);
SELECT worker_type, dead_after, terminate_zombies FROM pm_pipeline.worker_types ORDER BY 1;
-- ... and NULL terminate_zombies removes a row that overrides nothing else.
SELECT pm_pipeline.set_worker_type_terminate_zombies('scraper', NULL);
SELECT count(*) AS rows_left FROM pm_pipeline.worker_types;
SELECT pm_pipeline.set_worker_type_dead_after('crawler', '1 minute');
SELECT pm_pipeline.set_worker_type_terminate_zombies('crawler', NULL);
SELECT worker_type, dead_after, terminate_zombies FROM pm_pipeline.worker_types ORDER BY 1;
-- The liveness views still read a type without its own dead_after.
SELECT pm_pipeline.set_worker_type_terminate_zombies('scraper', true);
SELECT pm_pipeline.upsert_worker_heartbeat('s-1', 'scraper');
SELECT worker_id, dead_after, is_dead FROM pm_pipeline.worker_liveness;

-- Bad input: clear errors, nothing changed.
SELECT * FROM pg_temp.error_of($$SELECT pm_pipeline.set_worker_type_terminate_zombies(NULL, true)$$);
SELECT * FROM pg_temp.error_of($$SELECT pm_pipeline.set_worker_type_terminate_zombies('  ', true)$$);
SELECT * FROM pg_temp.error_of($$SELECT pm_pipeline.set_worker_type_terminate_zombies(repeat('x', 201), true)$$);
-- A row overriding nothing is refused by the table too.
SELECT * FROM pg_temp.error_of($$INSERT INTO pm_pipeline.worker_types (worker_type) VALUES ('empty')$$);
SELECT worker_type, dead_after, terminate_zombies FROM pm_pipeline.worker_types ORDER BY 1;

-- Permissions: not executable by PUBLIC; a role cannot turn the settings on.
CREATE ROLE forensics_worker;
GRANT USAGE ON SCHEMA pm_pipeline TO forensics_worker;
SET ROLE forensics_worker;
SELECT * FROM pg_temp.error_of($$SELECT pm_pipeline.set_worker_type_terminate_zombies('scraper', true)$$);
SELECT * FROM pg_temp.error_of('SET worker_heartbeat.forensics_query_text = off');
SELECT * FROM pg_temp.error_of($$UPDATE pm_pipeline.worker_types SET terminate_zombies = true$$);
RESET ROLE;
SELECT has_function_privilege('public', 'pm_pipeline.set_worker_type_terminate_zombies(text, boolean)', 'EXECUTE')
    AS public_may_execute;

-- A death by timeout found by a pass run from SQL: the died event's
-- forensics (last status, task, lease deadline, silence; no backend: not
-- session-bound). Session deaths and terminations: TAP 110 and 111.
SELECT pm_pipeline.upsert_worker_heartbeat('t-1', 'quick', 'processing', p_current_task => 'task-1',
       p_lease_expires_at => '2030-01-01 00:00:00+00');
SELECT pm_pipeline.set_worker_type_dead_after('quick', '1 microsecond');
SELECT pm_pipeline.release_dead_worker_leases() >= 0 AS pass_ran;
SELECT details->>'cause' AS cause,
       details->'forensics'->>'last_status' AS last_status,
       details->'forensics'->>'current_task' AS current_task,
       details->'forensics'->>'lease_expires_at' AS lease_expires_at,
       details->'forensics'->>'snapshot' AS snapshot,
       (details->'forensics'->>'silent_for')::numeric >= 0 AS has_silent_for,
       details->'forensics'->'backend' AS backend
  FROM pm_pipeline.worker_events WHERE event = 'died' AND worker_id = 't-1';

DROP EXTENSION worker_heartbeat CASCADE;
DROP SCHEMA pm_pipeline CASCADE;
DROP ROLE forensics_worker;
