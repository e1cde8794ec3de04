-- Drain and pause (1.3, issue 16 section 1): heartbeat() answers with the
-- directive, drain_workers / pause_workers / resume_workers, claim_leases
-- hands nothing to a draining or paused worker, views, stats, metrics, events,
-- bad input (nothing changes on any error) and who may do what.
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS worker_heartbeat CASCADE;
DROP SCHEMA IF EXISTS pm_pipeline CASCADE;
DROP SCHEMA IF EXISTS app CASCADE;
DROP ROLE IF EXISTS wh_drain_worker;
DROP ROLE IF EXISTS wh_drain_monitor;
DROP ROLE IF EXISTS wh_drain_oldmon;
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
CREATE SCHEMA app;
CREATE TABLE app.jobs (id integer PRIMARY KEY, claimed_by text, lease_expires_at timestamptz, lease_token bigint);
INSERT INTO app.jobs (id) SELECT g FROM generate_series(1, 6) g;
SELECT pm_pipeline.register_lease_table('app.jobs', p_token_column => 'lease_token');
-- Events of this test, without times.
CREATE VIEW pg_temp.ev AS
SELECT event, worker_id, worker_type FROM pm_pipeline.worker_events
 WHERE event IN ('drain_requested', 'paused', 'resumed', 'drained') ORDER BY event_id;

-- No rule: every heartbeat is told to run, claims work.
SELECT pm_pipeline.heartbeat('m1', 'mailer', p_metadata => '{"host": "web-1"}') AS m1,
       pm_pipeline.heartbeat('m2', 'mailer', p_metadata => '{"host": "web-2"}') AS m2,
       pm_pipeline.heartbeat('r1', 'resizer', p_metadata => '{"host": "web-2"}') AS r1;
SELECT pm_pipeline.heartbeat('m1', 'mailer', p_metadata => '{"host": "web-1"}') AS unchanged;
SELECT count(*) AS claimed FROM pm_pipeline.claim_leases(NULL::app.jobs, 'm1', 1);
-- upsert_worker_heartbeat keeps working and returning void.
SELECT pg_typeof(pm_pipeline.upsert_worker_heartbeat('m1', 'mailer', p_metadata => '{"host": "web-1"}')) AS returns;

-- Bad input: a clear error, nothing changed.
SELECT * FROM pg_temp.error_of($$SELECT pm_pipeline.drain_workers()$$);
SELECT * FROM pg_temp.error_of($$SELECT pm_pipeline.pause_workers(NULL, NULL, NULL)$$);
SELECT * FROM pg_temp.error_of($$SELECT pm_pipeline.resume_workers()$$);
SELECT * FROM pg_temp.error_of($$SELECT pm_pipeline.drain_workers(p_metadata => '["web-1"]')$$);
SELECT * FROM pg_temp.error_of($$SELECT pm_pipeline.drain_workers(p_worker_id => '')$$);
SELECT * FROM pg_temp.error_of($$SELECT pm_pipeline.drain_workers(p_worker_type => ' ')$$);
SELECT * FROM pg_temp.error_of($$SELECT pm_pipeline.drain_workers(p_worker_type => repeat('x', 201))$$);
SELECT * FROM pg_temp.error_of($$INSERT INTO pm_pipeline.worker_directives (directive) VALUES ('drain')$$);
SELECT * FROM pg_temp.error_of($$INSERT INTO pm_pipeline.worker_directives (directive, worker_id) VALUES ('stop', 'm1')$$);
SELECT count(*) AS rules FROM pm_pipeline.worker_directives;
SELECT * FROM pg_temp.ev;

-- Drain a type: both mailers match; the resizer is not concerned.
SELECT pm_pipeline.drain_workers(p_worker_type => 'mailer') AS matched;
SELECT directive, worker_id, worker_type, metadata FROM pm_pipeline.worker_directives;
SELECT * FROM pg_temp.ev;
SELECT pm_pipeline.heartbeat('m1', 'mailer', p_metadata => '{"host": "web-1"}') AS m1,
       pm_pipeline.heartbeat('r1', 'resizer') AS r1;
-- A draining worker claims nothing (no error); others still claim.
SELECT count(*) AS m2_claimed FROM pm_pipeline.claim_leases(NULL::app.jobs, 'm2', 5);
SELECT count(*) AS m2_claimed_by_name FROM pm_pipeline.claim_leases('app.jobs', 'm2', 5);
SELECT count(*) AS r1_claimed FROM pm_pipeline.claim_leases(NULL::app.jobs, 'r1', 1);
-- m1 still holds its lease: not drained yet. Finishing it, then the next
-- heartbeat, says drained (once).
SELECT * FROM pg_temp.ev WHERE event = 'drained';
SELECT pm_pipeline.complete_lease('app.jobs', lease_token) FROM app.jobs WHERE claimed_by = 'm1';
SELECT pm_pipeline.heartbeat('m1', 'mailer', p_metadata => '{"host": "web-1"}') AS m1;
SELECT pm_pipeline.heartbeat('m1', 'mailer', p_metadata => '{"host": "web-1"}') AS m1_again;
SELECT * FROM pg_temp.ev WHERE event = 'drained';
-- m2 holds nothing and stops without another heartbeat: drained at its stop.
SELECT pm_pipeline.stop_worker('m2');
SELECT * FROM pg_temp.ev WHERE event = 'drained';
-- The rule holds for a mailer that appears later.
SELECT pm_pipeline.heartbeat('m3', 'mailer') AS m3_new;
SELECT worker_id, status, directive FROM pm_pipeline.worker_fleet ORDER BY worker_id;
SELECT worker_type, draining_workers, paused_workers FROM pm_pipeline.get_worker_stats();
SELECT line FROM regexp_split_to_table(pm_pipeline.metrics(), E'\n') AS line
 WHERE line ~ '^worker_heartbeat_workers_(draining|paused)';

-- Pause by metadata (every worker of host web-2); drain wins over pause.
SELECT pm_pipeline.pause_workers(p_metadata => '{"host": "web-2"}') AS matched;
SELECT pm_pipeline.heartbeat('r1', 'resizer') AS r1_stored_metadata,
       pm_pipeline.heartbeat('m2', 'mailer', p_metadata => '{"host": "web-2"}') AS m2_drain_and_pause;
SELECT count(*) AS r1_claimed FROM pm_pipeline.claim_leases(NULL::app.jobs, 'r1', 1);
-- Drain on the same selectors replaces the pause.
SELECT pm_pipeline.drain_workers(p_metadata => '{"host": "web-2"}') AS matched;
SELECT directive, worker_id, worker_type, metadata FROM pm_pipeline.worker_directives ORDER BY directive;
SELECT pm_pipeline.pause_workers(p_metadata => '{"host": "web-2"}') AS matched;

-- Resume removes exactly the rule with these selectors.
SELECT pm_pipeline.resume_workers(p_worker_type => 'resizer') AS no_such_rule;
SELECT pm_pipeline.resume_workers(p_metadata => '{"host": "web-2"}') AS matched;
SELECT pm_pipeline.heartbeat('r1', 'resizer') AS r1;
SELECT count(*) AS r1_claimed FROM pm_pipeline.claim_leases(NULL::app.jobs, 'r1', 1);
SELECT pm_pipeline.resume_workers(p_worker_type => 'mailer') AS matched;
SELECT pm_pipeline.heartbeat('m1', 'mailer') AS m1;
SELECT count(*) AS rules FROM pm_pipeline.worker_directives;
SELECT * FROM pg_temp.ev;

-- Transactional: a drain rolled back never happened, in this session too.
BEGIN;
SELECT pm_pipeline.drain_workers(p_worker_id => 'm1') AS matched;
SELECT pm_pipeline.heartbeat('m1', 'mailer') AS m1_inside;
ROLLBACK;
SELECT pm_pipeline.heartbeat('m1', 'mailer') AS m1_after_rollback;
-- A rule written by hand (a restore, a manual INSERT) is seen too.
INSERT INTO pm_pipeline.worker_directives (directive, worker_id) VALUES ('pause', 'm1');
SELECT pm_pipeline.heartbeat('m1', 'mailer') AS m1_manual_rule;
DELETE FROM pm_pipeline.worker_directives;
SELECT pm_pipeline.heartbeat('m1', 'mailer') AS m1_rule_deleted;
-- '{}' is a selector that matches every worker.
SELECT pm_pipeline.pause_workers(p_metadata => '{}') AS everyone;
SELECT pm_pipeline.heartbeat('r1', 'resizer') AS r1;
SELECT pm_pipeline.resume_workers(p_metadata => '{}') AS everyone;

-- Who may do what: nothing for PUBLIC; a worker role granted heartbeat()
-- cannot drain; a monitoring role reads the rules and the fleet.
CREATE ROLE wh_drain_worker;
CREATE ROLE wh_drain_monitor;
GRANT USAGE ON SCHEMA pm_pipeline TO wh_drain_worker, wh_drain_monitor;
GRANT EXECUTE ON FUNCTION pm_pipeline.heartbeat(text, text, text, uuid, text, timestamptz, jsonb, boolean)
    TO wh_drain_worker;
GRANT SELECT ON pm_pipeline.worker_directives, pm_pipeline.worker_fleet TO wh_drain_monitor;
SELECT pm_pipeline.drain_workers(p_worker_id => 'wk1') AS matched;
SET ROLE wh_drain_worker;
SELECT pm_pipeline.heartbeat('wk1', 'mailer') AS wk1;
SELECT * FROM pg_temp.error_of($$SELECT pm_pipeline.drain_workers(p_worker_type => 'mailer')$$);
SELECT * FROM pg_temp.error_of($$SELECT pm_pipeline.resume_workers(p_worker_id => 'wk1')$$);
SELECT * FROM pg_temp.error_of($$DELETE FROM pm_pipeline.worker_directives$$);
SELECT * FROM pg_temp.error_of($$SELECT * FROM pm_pipeline.worker_directives$$);
RESET ROLE;
SET ROLE wh_drain_monitor;
SELECT directive, worker_id FROM pm_pipeline.worker_directives;
SELECT worker_id, directive FROM pm_pipeline.worker_fleet WHERE worker_id = 'wk1';
SELECT * FROM pg_temp.error_of($$SELECT pm_pipeline.pause_workers(p_worker_id => 'wk1')$$);
SELECT * FROM pg_temp.error_of($$INSERT INTO pm_pipeline.worker_directives (directive, worker_id) VALUES ('pause', 'x')$$);
RESET ROLE;
-- get_worker_stats() and metrics() keep the invoker's rights: a monitoring
-- role granted only what 1.2 needed gets NULL counts and no drain samples; a
-- role that may read worker_fleet gets the counts.
CREATE ROLE wh_drain_oldmon;
GRANT USAGE ON SCHEMA pm_pipeline TO wh_drain_oldmon;
GRANT SELECT ON ALL TABLES IN SCHEMA pm_pipeline TO wh_drain_oldmon;
REVOKE SELECT ON pm_pipeline.worker_fleet, pm_pipeline.worker_directives FROM wh_drain_oldmon;
GRANT EXECUTE ON FUNCTION pm_pipeline.get_worker_stats(), pm_pipeline.metrics(), pm_pipeline.reaper_status()
    TO wh_drain_oldmon, wh_drain_monitor;
GRANT SELECT ON ALL TABLES IN SCHEMA pm_pipeline TO wh_drain_monitor;
SET ROLE wh_drain_oldmon;
SELECT worker_type, active_workers, draining_workers, paused_workers FROM pm_pipeline.get_worker_stats();
SELECT count(*) AS drain_samples FROM regexp_split_to_table(pm_pipeline.metrics(), E'\n') AS line
 WHERE line ~ '^worker_heartbeat_workers_(draining|paused)\{';
RESET ROLE;
SET ROLE wh_drain_monitor;
SELECT worker_type, active_workers, draining_workers, paused_workers FROM pm_pipeline.get_worker_stats();
SELECT line FROM regexp_split_to_table(pm_pipeline.metrics(), E'\n') AS line
 WHERE line ~ '^worker_heartbeat_workers_draining\{';
RESET ROLE;
SELECT pm_pipeline.resume_workers(p_worker_id => 'wk1') AS matched;

-- pg_dump keeps the rules.
SELECT c.relname FROM pg_extension e, unnest(e.extconfig) AS x(oid) JOIN pg_class c ON c.oid = x.oid
 WHERE e.extname = 'worker_heartbeat' AND c.relname = 'worker_directives';

DROP EXTENSION worker_heartbeat CASCADE;
DROP SCHEMA pm_pipeline CASCADE;
DROP SCHEMA app CASCADE;
DROP OWNED BY wh_drain_oldmon;
DROP ROLE wh_drain_worker;
DROP ROLE wh_drain_monitor;
DROP ROLE wh_drain_oldmon;
