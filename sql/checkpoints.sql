-- Progress checkpoints (1.3, issue 16 section 2): set_lease_checkpoint_column,
-- checkpoint_lease, the checkpoint kept across releases (fail_lease, the
-- reaper's pass, stop_worker) with the attempts count, cleared by
-- complete_lease unless p_set names it; every error changes nothing.
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS worker_heartbeat CASCADE;
DROP SCHEMA IF EXISTS pm_pipeline CASCADE;
DROP SCHEMA IF EXISTS ckpt CASCADE;
DROP ROLE IF EXISTS wh_ckpt_worker;
DROP ROLE IF EXISTS wh_ckpt_other;
RESET client_min_messages;
-- error_of(sql): the SQLSTATE, message and hint of the error a statement raises.
CREATE FUNCTION pg_temp.error_of(p_sql text, OUT code text, OUT message text, OUT hint text)
LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE p_sql;
    code := 'none';
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS code = RETURNED_SQLSTATE, message = MESSAGE_TEXT, hint = PG_EXCEPTION_HINT;
    -- Lease tokens are random (19 digits): masked so that the output is stable.
    message := regexp_replace(message, '\m\d{19}\M', '<token>', 'g');
END
$$;
CREATE SCHEMA pm_pipeline;
CREATE EXTENSION worker_heartbeat SCHEMA pm_pipeline;
SELECT pm_pipeline.stop_reaper() IS NOT NULL AS reaper_stopped;

CREATE SCHEMA ckpt;
CREATE TABLE ckpt.jobs (
    id               integer PRIMARY KEY,
    state            text NOT NULL DEFAULT 'pending',
    result           text,
    notes            text,
    progress         jsonb,
    derived          jsonb GENERATED ALWAYS AS (progress) STORED,
    claimed_by       text,
    lease_expires_at timestamptz,
    lease_token      bigint,
    attempts         integer NOT NULL DEFAULT 0
);
CREATE INDEX ON ckpt.jobs (claimed_by);
CREATE INDEX ON ckpt.jobs (lease_expires_at);
CREATE INDEX ON ckpt.jobs (lease_token);
INSERT INTO ckpt.jobs (id) VALUES (1), (2), (3), (4);
CREATE TABLE ckpt.unfenced (id int PRIMARY KEY, claimed_by text, lease_expires_at timestamptz, progress jsonb);
CREATE TABLE ckpt.wiped (id int PRIMARY KEY, claimed_by text, lease_expires_at timestamptz, lease_token bigint,
                         progress jsonb);
SET client_min_messages = warning;
SELECT pm_pipeline.register_lease_table('ckpt.jobs', p_on_release => '{"state": "pending"}',
    p_token_column => 'lease_token', p_attempts_column => 'attempts',
    p_max_attempts => 3, p_on_exhausted => '{"state": "failed"}');
SELECT pm_pipeline.register_lease_table('ckpt.unfenced');
SELECT pm_pipeline.register_lease_table('ckpt.wiped', p_on_release => '{"progress": null}',
    p_token_column => 'lease_token');
RESET client_min_messages;

-- set_lease_checkpoint_column: every error registers nothing.
SELECT * FROM pg_temp.error_of($$SELECT pm_pipeline.set_lease_checkpoint_column(NULL, 'progress')$$);
SELECT * FROM pg_temp.error_of($$SELECT pm_pipeline.set_lease_checkpoint_column('ckpt.nope', 'progress')$$);
SELECT * FROM pg_temp.error_of($$SELECT pm_pipeline.set_lease_checkpoint_column('pg_catalog.pg_class', 'progress')$$);
SELECT * FROM pg_temp.error_of($$SELECT pm_pipeline.set_lease_checkpoint_column('ckpt.unfenced', 'progress')$$);
SELECT * FROM pg_temp.error_of($$SELECT pm_pipeline.set_lease_checkpoint_column('ckpt.jobs', 'nope')$$);
SELECT * FROM pg_temp.error_of($$SELECT pm_pipeline.set_lease_checkpoint_column('ckpt.jobs', '')$$);
SELECT * FROM pg_temp.error_of($$SELECT pm_pipeline.set_lease_checkpoint_column('ckpt.jobs', 'notes')$$);
SELECT * FROM pg_temp.error_of($$SELECT pm_pipeline.set_lease_checkpoint_column('ckpt.jobs', 'lease_token')$$);
SELECT * FROM pg_temp.error_of($$SELECT pm_pipeline.set_lease_checkpoint_column('ckpt.jobs', 'derived')$$);
SELECT * FROM pg_temp.error_of($$SELECT pm_pipeline.set_lease_checkpoint_column('ckpt.jobs', 'ctid')$$);
-- A release that assigns the column would wipe the checkpoint: refused.
SELECT * FROM pg_temp.error_of($$SELECT pm_pipeline.set_lease_checkpoint_column('ckpt.wiped', 'progress')$$);
SELECT table_name, checkpoint_column FROM pm_pipeline.lease_tables ORDER BY 1::text;
-- checkpoint_lease on a table without a checkpoint column.
SELECT * FROM pg_temp.error_of($$SELECT pm_pipeline.checkpoint_lease('ckpt.jobs', 4611686018427387904, '{}')$$);

SELECT pm_pipeline.set_lease_checkpoint_column('ckpt.jobs', 'progress');
SELECT table_name, checkpoint_column FROM pm_pipeline.lease_tables WHERE checkpoint_column IS NOT NULL;

-- A first claim: no checkpoint yet, attempt 1.
SELECT id, progress, attempts FROM pm_pipeline.claim_leases(NULL::ckpt.jobs, 'w1', 1, '1 hour');
CREATE TEMP TABLE tok AS SELECT id, lease_token AS t, lease_expires_at AS e FROM ckpt.jobs WHERE id = 1;
-- Without p_lease the deadline is unchanged (and returned); with it, extended.
SELECT pm_pipeline.checkpoint_lease('ckpt.jobs', (SELECT t FROM tok), '{"page": 1}') = (SELECT e FROM tok) AS same_deadline;
SELECT progress FROM ckpt.jobs WHERE id = 1;
SELECT pm_pipeline.checkpoint_lease('ckpt.jobs', (SELECT t FROM tok), '{"page": 2, "found": ["a"]}', '2 hours')
       BETWEEN now() + interval '2 hours' - interval '1 second' AND now() + interval '2 hours' AS extended;
SELECT progress, lease_expires_at > (SELECT e FROM tok) AS later FROM ckpt.jobs WHERE id = 1;
-- A JSON scalar or null is a checkpoint too.
SELECT pm_pipeline.checkpoint_lease('ckpt.jobs', (SELECT t FROM tok), '"step-3"') IS NOT NULL AS stored;
SELECT progress FROM ckpt.jobs WHERE id = 1;
SELECT pm_pipeline.checkpoint_lease('ckpt.jobs', (SELECT t FROM tok), '{"page": 3}') IS NOT NULL AS stored;

-- Bad input: each changes nothing.
CREATE TEMP TABLE before AS SELECT * FROM ckpt.jobs;
SELECT * FROM pg_temp.error_of($$SELECT pm_pipeline.checkpoint_lease(NULL, 1, '{}')$$);
SELECT * FROM pg_temp.error_of($$SELECT pm_pipeline.checkpoint_lease('ckpt.jobs', NULL, '{}')$$);
SELECT * FROM pg_temp.error_of(format($$SELECT pm_pipeline.checkpoint_lease('ckpt.jobs', %s, NULL)$$, (SELECT t FROM tok)));
SELECT * FROM pg_temp.error_of(format($$SELECT pm_pipeline.checkpoint_lease('ckpt.jobs', %s, '{}', '0 seconds')$$, (SELECT t FROM tok)));
SELECT * FROM pg_temp.error_of(format($$SELECT pm_pipeline.checkpoint_lease('ckpt.jobs', %s, '{}', '-1 minute')$$, (SELECT t FROM tok)));
SELECT * FROM pg_temp.error_of($$SELECT pm_pipeline.checkpoint_lease('ckpt.nope', 1, '{}')$$);
SELECT * FROM pg_temp.error_of($$SELECT pm_pipeline.checkpoint_lease('ckpt.unfenced', 1, '{}')$$);
SELECT * FROM pg_temp.error_of($$SELECT pm_pipeline.checkpoint_lease('ckpt.wiped', 1, '{}')$$);
-- A stale token (never handed out, or a row id): WH001.
SELECT * FROM pg_temp.error_of($$SELECT pm_pipeline.checkpoint_lease('ckpt.jobs', 4611686018427387904, '{"page": 99}')$$);
SELECT * FROM pg_temp.error_of($$SELECT pm_pipeline.checkpoint_lease('ckpt.jobs', 1, '{"page": 99}', '1 minute')$$);
-- Oversize (worker_heartbeat.max_checkpoint_bytes, jsonb size): 54000.
SHOW worker_heartbeat.max_checkpoint_bytes;
SET worker_heartbeat.max_checkpoint_bytes = 100;
SELECT * FROM pg_temp.error_of(format($$SELECT pm_pipeline.checkpoint_lease('ckpt.jobs', %s, %L)$$, (SELECT t FROM tok),
    jsonb_build_object('blob', repeat('x', 200))));
RESET worker_heartbeat.max_checkpoint_bytes;
SELECT count(*) AS changed FROM (SELECT * FROM ckpt.jobs EXCEPT SELECT * FROM before) c;
DROP TABLE before;

-- fail_lease keeps the checkpoint: the next claimer gets it, with attempt 2.
SELECT pm_pipeline.fail_lease('ckpt.jobs', (SELECT t FROM tok), '{"notes": "crashed"}');
SELECT id, state, notes, progress, claimed_by, attempts FROM ckpt.jobs WHERE id = 1;
SELECT * FROM pg_temp.error_of(format($$SELECT pm_pipeline.checkpoint_lease('ckpt.jobs', %s, '{"page": 98}')$$, (SELECT t FROM tok)));
SELECT id, progress, attempts, attempts - 1 AS prior_attempts
  FROM pm_pipeline.claim_leases(NULL::ckpt.jobs, 'w2', 1, '1 hour', '{"id": 1}');
-- The jsonb form carries it too.
SELECT pm_pipeline.fail_lease('ckpt.jobs', (SELECT lease_token FROM ckpt.jobs WHERE id = 1));
UPDATE ckpt.jobs SET attempts = 1 WHERE id = 1;
SELECT c->'progress' AS progress, c->'attempts' AS attempts
  FROM pm_pipeline.claim_leases('ckpt.jobs', 'w2', 1, '1 hour', '{"id": 1}') c;
UPDATE tok SET t = (SELECT lease_token FROM ckpt.jobs WHERE id = 1);

-- The reaper's pass (an expired lease) keeps it; on_release applies.
SELECT pm_pipeline.checkpoint_lease('ckpt.jobs', (SELECT t FROM tok), '{"page": 4}') IS NOT NULL AS stored;
UPDATE ckpt.jobs SET lease_expires_at = now() - interval '1 second', state = 'running' WHERE id = 1;
SELECT pm_pipeline.release_dead_worker_leases();
SELECT id, state, progress, claimed_by, lease_token, attempts FROM ckpt.jobs WHERE id = 1;
-- ... and the token of the released lease is stale: nothing written.
SELECT * FROM pg_temp.error_of(format($$SELECT pm_pipeline.checkpoint_lease('ckpt.jobs', %s, '{"page": 97}')$$, (SELECT t FROM tok)));
SELECT progress FROM ckpt.jobs WHERE id = 1;

-- A dead (stopped) worker's release keeps it; on the last attempt on_exhausted
-- applies and the checkpoint stays for inspection.
SELECT pm_pipeline.upsert_worker_heartbeat('mortal', 'ckpt_test');
SELECT id, progress, attempts FROM pm_pipeline.claim_leases(NULL::ckpt.jobs, 'mortal', 1, '1 hour', '{"id": 1}');
SELECT pm_pipeline.checkpoint_lease('ckpt.jobs', (SELECT lease_token FROM ckpt.jobs WHERE id = 1), '{"page": 5}') IS NOT NULL AS stored;
SELECT pm_pipeline.stop_worker('mortal');
SELECT id, state, progress, claimed_by, attempts FROM ckpt.jobs WHERE id = 1;

-- complete_lease clears it...
SELECT id, progress FROM pm_pipeline.claim_leases(NULL::ckpt.jobs, 'w3', 1, '1 hour', '{"id": 2}');
SELECT pm_pipeline.checkpoint_lease('ckpt.jobs', (SELECT lease_token FROM ckpt.jobs WHERE id = 2), '{"page": 1}') IS NOT NULL AS stored;
SELECT pm_pipeline.complete_lease('ckpt.jobs', (SELECT lease_token FROM ckpt.jobs WHERE id = 2), '{"state": "done"}');
SELECT id, state, progress, claimed_by FROM ckpt.jobs WHERE id = 2;
-- ... unless p_set names the column.
SELECT id FROM pm_pipeline.claim_leases(NULL::ckpt.jobs, 'w3', 1, '1 hour', '{"id": 3}');
SELECT pm_pipeline.checkpoint_lease('ckpt.jobs', (SELECT lease_token FROM ckpt.jobs WHERE id = 3), '{"page": 1}') IS NOT NULL AS stored;
SELECT pm_pipeline.complete_lease('ckpt.jobs', (SELECT lease_token FROM ckpt.jobs WHERE id = 3), '{"state": "done", "progress": {"final": true}}');
SELECT id, state, progress, claimed_by FROM ckpt.jobs WHERE id = 3;

-- The column dropped or retyped: checkpoint_lease refuses (55000), completion still works.
SELECT id FROM pm_pipeline.claim_leases(NULL::ckpt.jobs, 'w4', 1, '1 hour', '{"id": 4}');
ALTER TABLE ckpt.jobs DROP COLUMN derived;
ALTER TABLE ckpt.jobs ALTER COLUMN progress TYPE text;
SELECT * FROM pg_temp.error_of(format($$SELECT pm_pipeline.checkpoint_lease('ckpt.jobs', %s, '{}')$$, (SELECT lease_token FROM ckpt.jobs WHERE id = 4)));
SELECT pm_pipeline.complete_lease('ckpt.jobs', (SELECT lease_token FROM ckpt.jobs WHERE id = 4));
ALTER TABLE ckpt.jobs ALTER COLUMN progress TYPE jsonb USING progress::jsonb;
-- NULL unsets it.
SELECT pm_pipeline.set_lease_checkpoint_column('ckpt.jobs', NULL);
SELECT table_name, checkpoint_column FROM pm_pipeline.lease_tables WHERE table_name = 'ckpt.jobs'::regclass;
SELECT pm_pipeline.set_lease_checkpoint_column('ckpt.jobs', 'progress');

-- Privileges: nothing for PUBLIC; checkpoint_lease runs with the caller's
-- rights (UPDATE on the table, its row-level security); only the table's
-- owner names the column.
SELECT p.proname, p.prosecdef, p.proconfig, has_function_privilege('public', p.oid, 'EXECUTE') AS public_execute
  FROM pg_proc p WHERE p.pronamespace = 'pm_pipeline'::regnamespace
   AND p.proname IN ('checkpoint_lease', 'set_lease_checkpoint_column')
 ORDER BY 1;
CREATE ROLE wh_ckpt_worker;
CREATE ROLE wh_ckpt_other;
GRANT USAGE ON SCHEMA pm_pipeline, ckpt TO wh_ckpt_worker, wh_ckpt_other;
GRANT EXECUTE ON FUNCTION pm_pipeline.claim_leases(anyelement, text, integer, interval, jsonb, jsonb),
    pm_pipeline.checkpoint_lease(regclass, bigint, jsonb, interval),
    pm_pipeline.set_lease_checkpoint_column(regclass, name) TO wh_ckpt_worker;
GRANT SELECT, UPDATE ON ckpt.jobs TO wh_ckpt_worker, wh_ckpt_other;
UPDATE ckpt.jobs SET state = 'pending', attempts = 0, progress = NULL WHERE id = 4;
SET ROLE wh_ckpt_worker;
SELECT id, progress FROM pm_pipeline.claim_leases(NULL::ckpt.jobs, 'role-w', 1, '1 hour', '{"id": 4}');
SELECT pm_pipeline.checkpoint_lease('ckpt.jobs', (SELECT lease_token FROM ckpt.jobs WHERE id = 4), '{"by": "worker"}') IS NOT NULL AS stored;
SELECT * FROM pg_temp.error_of($$SELECT pm_pipeline.set_lease_checkpoint_column('ckpt.jobs', NULL)$$);
RESET ROLE;
SET ROLE wh_ckpt_other;
SELECT * FROM pg_temp.error_of(format($$SELECT pm_pipeline.checkpoint_lease('ckpt.jobs', %s, '{"by": "other"}')$$, (SELECT lease_token FROM ckpt.jobs WHERE id = 4)));
RESET ROLE;
REVOKE UPDATE ON ckpt.jobs FROM wh_ckpt_worker;
SET ROLE wh_ckpt_worker;
SELECT * FROM pg_temp.error_of(format($$SELECT pm_pipeline.checkpoint_lease('ckpt.jobs', %s, '{"by": "no update"}')$$, (SELECT lease_token FROM ckpt.jobs WHERE id = 4)));
RESET ROLE;
-- Row-level security: a row the worker may not update is as good as stale to it.
GRANT UPDATE ON ckpt.jobs TO wh_ckpt_worker;
ALTER TABLE ckpt.jobs ENABLE ROW LEVEL SECURITY;
CREATE POLICY see_all ON ckpt.jobs FOR SELECT USING (true);
CREATE POLICY update_none ON ckpt.jobs FOR UPDATE USING (id <> 4);
SET ROLE wh_ckpt_worker;
SELECT * FROM pg_temp.error_of(format($$SELECT pm_pipeline.checkpoint_lease('ckpt.jobs', %s, '{"by": "rls"}')$$, (SELECT lease_token FROM ckpt.jobs WHERE id = 4)));
RESET ROLE;
SELECT id, progress, claimed_by FROM ckpt.jobs WHERE id = 4;

SET client_min_messages = warning;
DROP SCHEMA ckpt CASCADE;
RESET client_min_messages;
DROP OWNED BY wh_ckpt_worker, wh_ckpt_other;
DROP ROLE wh_ckpt_worker;
DROP ROLE wh_ckpt_other;
