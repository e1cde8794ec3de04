-- Fenced leases (1.1): registration with token / attempts / order columns,
-- claim_leases, extend_lease, complete_lease, fail_lease, check_lease, poison
-- pills, and every error (nothing changes on any of them).
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS worker_heartbeat CASCADE;
DROP SCHEMA IF EXISTS pm_pipeline CASCADE;
DROP SCHEMA IF EXISTS app CASCADE;
DROP ROLE IF EXISTS wh_fenced_worker;
DROP ROLE IF EXISTS wh_fenced_nobody;
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

CREATE SCHEMA app;
CREATE TABLE app.tasks (
    id               integer PRIMARY KEY,
    kind             text NOT NULL DEFAULT 'a',
    state            text NOT NULL DEFAULT 'pending',
    priority         integer,
    result           text,
    claimed_by       text,
    lease_expires_at timestamptz,
    lease_token      bigint,
    attempts         integer NOT NULL DEFAULT 0
);
CREATE INDEX ON app.tasks (claimed_by);
CREATE INDEX ON app.tasks (lease_expires_at);
CREATE INDEX ON app.tasks (lease_token);
INSERT INTO app.tasks (id, kind, priority) VALUES
    (1, 'a', 30), (2, 'b', 10), (3, 'a', 20), (4, 'a', NULL), (5, 'b', 5);

-- Registration errors: nothing is registered by any of them.
SELECT * FROM pg_temp.error_of($$SELECT pm_pipeline.register_lease_table('app.tasks', p_token_column => 'nope')$$);
SELECT * FROM pg_temp.error_of($$SELECT pm_pipeline.register_lease_table('app.tasks', p_token_column => 'attempts')$$);
SELECT * FROM pg_temp.error_of($$SELECT pm_pipeline.register_lease_table('app.tasks', p_token_column => '')$$);
SELECT * FROM pg_temp.error_of($$SELECT pm_pipeline.register_lease_table('app.tasks', p_token_column => 'lease_token', p_attempts_column => 'state')$$);
SELECT * FROM pg_temp.error_of($$SELECT pm_pipeline.register_lease_table('app.tasks', p_token_column => 'lease_token', p_attempts_column => 'nope')$$);
SELECT * FROM pg_temp.error_of($$SELECT pm_pipeline.register_lease_table('app.tasks', p_token_column => 'lease_token', p_order_column => 'nope')$$);
SELECT * FROM pg_temp.error_of($$SELECT pm_pipeline.register_lease_table('app.tasks', p_token_column => 'lease_token', p_attempts_column => 'attempts', p_max_attempts => 0)$$);
SELECT * FROM pg_temp.error_of($$SELECT pm_pipeline.register_lease_table('app.tasks', p_token_column => 'lease_token', p_max_attempts => 3)$$);
SELECT * FROM pg_temp.error_of($$SELECT pm_pipeline.register_lease_table('app.tasks', p_token_column => 'lease_token', p_attempts_column => 'attempts', p_on_exhausted => '{"state": "failed"}')$$);
SELECT * FROM pg_temp.error_of($$SELECT pm_pipeline.register_lease_table('app.tasks', p_token_column => 'lease_token', p_attempts_column => 'attempts', p_max_attempts => 3, p_on_exhausted => '["failed"]')$$);
SELECT * FROM pg_temp.error_of($$SELECT pm_pipeline.register_lease_table('app.tasks', p_token_column => 'lease_token', p_attempts_column => 'attempts', p_max_attempts => 3, p_on_exhausted => '{"nope": 1}')$$);
SELECT * FROM pg_temp.error_of($$SELECT pm_pipeline.register_lease_table('app.tasks', p_token_column => 'lease_token', p_attempts_column => 'attempts', p_max_attempts => 3, p_on_exhausted => '{"lease_token": 1}')$$);
SELECT * FROM pg_temp.error_of($$SELECT pm_pipeline.register_lease_table('app.tasks', p_token_column => 'lease_token', p_attempts_column => 'attempts', p_max_attempts => 3, p_on_exhausted => '{"priority": "high"}')$$);
SELECT * FROM pg_temp.error_of($$SELECT pm_pipeline.register_lease_table('app.tasks', p_token_column => 'lease_token', p_attempts_column => 'attempts', p_max_attempts => 3, p_on_exhausted => '{"state": null}')$$);
SELECT * FROM pg_temp.error_of($$SELECT pm_pipeline.register_lease_table('app.tasks', p_on_release => '{"attempts": 0}', p_token_column => 'lease_token', p_attempts_column => 'attempts')$$);
SELECT * FROM pg_temp.error_of($$SELECT pm_pipeline.register_lease_table('app.tasks', p_token_column => 'claimed_by')$$);
SELECT count(*) AS registered FROM pm_pipeline.lease_tables;

-- A fenced registration: at most 2 attempts, then the row is "failed".
SELECT pm_pipeline.register_lease_table('app.tasks', p_on_release => '{"state": "pending"}',
    p_token_column => 'lease_token', p_attempts_column => 'attempts', p_max_attempts => 2,
    p_on_exhausted => '{"state": "failed", "result": "gave up"}', p_order_column => 'priority');
SELECT table_name, worker_column, expires_column, on_release, token_column, attempts_column, order_column,
       max_attempts, on_exhausted
  FROM pm_pipeline.lease_tables;
-- The token sequence of 1.1 is still kept by pg_dump (unused since 1.2: tokens are random).
SELECT c.relname FROM pg_extension e, unnest(e.extconfig) AS x(oid) JOIN pg_class c ON c.oid = x.oid
 WHERE e.extname = 'worker_heartbeat' AND c.relkind = 'S' ORDER BY 1;

-- claim_leases: oldest first by the order column (NULLs last), filtered,
-- each row with a new token and attempts + 1, p_set applied.
SELECT id, kind, state, claimed_by, lease_expires_at > now() AS leased, lease_token > 0 AS has_token, attempts
  FROM pm_pipeline.claim_leases(NULL::app.tasks, 'w1', 2, '1 minute', '{"kind": "a"}', '{"state": "claimed"}');
-- Held rows are skipped; the limit is respected; no filter takes any kind.
SELECT id, claimed_by, attempts FROM pm_pipeline.claim_leases(NULL::app.tasks, 'w2', 2);
-- Tokens are distinct, and never confusable with a row id (13.7): random
-- values in [2^62, 2^63).
SELECT count(DISTINCT lease_token) AS tokens, bool_and(lease_token IS NOT NULL) AS all_set,
       bool_and(lease_token >= 4611686018427387904) AS all_large
  FROM app.tasks WHERE claimed_by IS NOT NULL;
-- A row id where the token belongs is refused (WH001), whatever the row.
SELECT * FROM pg_temp.error_of($$SELECT pm_pipeline.complete_lease('app.tasks', 1)$$);
SELECT * FROM pg_temp.error_of($$SELECT pm_pipeline.extend_lease('app.tasks', 2)$$);
-- Nothing left but row 4: it comes back in the target list too.
SELECT (pm_pipeline.claim_leases(NULL::app.tasks, 'w3', 10)).id;
SELECT count(*) AS nothing FROM pm_pipeline.claim_leases(NULL::app.tasks, 'w4', 10);
-- A NULL filter value matches NULL.
UPDATE app.tasks SET claimed_by = NULL, lease_expires_at = NULL WHERE id = 4;
SELECT id FROM pm_pipeline.claim_leases(NULL::app.tasks, 'w3', 10, p_filter => '{"priority": null}');

-- Remember each row's token.
CREATE TEMP TABLE tok AS SELECT id, lease_token AS t FROM app.tasks;

-- extend_lease: the new deadline; only while the lease holds.
SELECT pm_pipeline.extend_lease('app.tasks', (SELECT t FROM tok WHERE id = 3), '1 hour')
       BETWEEN now() + interval '59 minutes' AND now() + interval '61 minutes' AS extended;
SELECT lease_expires_at > now() + interval '59 minutes' AS stored FROM app.tasks WHERE id = 3;

-- complete_lease: lease cleared, assignments applied.
SELECT pm_pipeline.complete_lease('app.tasks', (SELECT t FROM tok WHERE id = 3), '{"state": "done", "result": "42"}');
SELECT id, state, result, claimed_by, lease_expires_at, attempts FROM app.tasks WHERE id = 3;
-- The same token again: WH001, nothing changed.
SELECT * FROM pg_temp.error_of(format($$SELECT pm_pipeline.complete_lease('app.tasks', %s, '{"result": "again"}')$$, (SELECT t FROM tok WHERE id = 3)));
SELECT * FROM pg_temp.error_of(format($$SELECT pm_pipeline.extend_lease('app.tasks', %s)$$, (SELECT t FROM tok WHERE id = 3)));
SELECT * FROM pg_temp.error_of(format($$SELECT pm_pipeline.fail_lease('app.tasks', %s)$$, (SELECT t FROM tok WHERE id = 3)));
SELECT * FROM pg_temp.error_of(format($$SELECT pm_pipeline.check_lease('app.tasks', %s)$$, (SELECT t FROM tok WHERE id = 3)));
SELECT * FROM pg_temp.error_of($$SELECT pm_pipeline.complete_lease('app.tasks', -1)$$);
SELECT id, state, result, claimed_by FROM app.tasks WHERE id = 3;

-- check_lease inside the worker's own UPDATE: true while held...
UPDATE app.tasks SET result = 'partial'
 WHERE id = 1 AND pm_pipeline.check_lease('app.tasks', (SELECT t FROM tok WHERE id = 1));
SELECT id, result FROM app.tasks WHERE id = 1;
-- (that it keeps the row locked until commit is shown by the isolation spec fenced_leases).

-- fail_lease: released now with p_set and on_release; true while attempts remain.
SELECT pm_pipeline.fail_lease('app.tasks', (SELECT t FROM tok WHERE id = 1), '{"result": "timeout"}');
SELECT id, state, result, claimed_by, lease_expires_at, attempts FROM app.tasks WHERE id = 1;
-- Second attempt of row 1: on its last attempt, fail_lease applies on_exhausted (over p_set) and returns false.
SELECT id, attempts FROM pm_pipeline.claim_leases(NULL::app.tasks, 'w5', 1, '1 minute', '{"state": "pending"}');
SELECT pm_pipeline.fail_lease('app.tasks', (SELECT lease_token FROM app.tasks WHERE id = 1), '{"state": "pending", "result": "again"}');
SELECT id, state, result, claimed_by, attempts FROM app.tasks WHERE id = 1;
SELECT event, worker_id, table_name, released_count, details FROM pm_pipeline.worker_events
 WHERE event = 'lease_exhausted' ORDER BY event_id;

-- The reaper's pass: an expired lease goes back to the queue (on_release), or,
-- on its last attempt, gets on_exhausted and a lease_exhausted event.
UPDATE app.tasks SET lease_expires_at = now() - interval '1 second' WHERE id IN (2, 5);
UPDATE app.tasks SET attempts = 2 WHERE id = 5;
SELECT pm_pipeline.release_dead_worker_leases();
SELECT id, state, result, claimed_by, lease_expires_at, attempts FROM app.tasks WHERE id IN (2, 5) ORDER BY id;
SELECT event, worker_id, released_count, details FROM pm_pipeline.worker_events
 WHERE table_name = 'app.tasks' AND details->>'reason' = 'lease_expired' ORDER BY event_id;
-- The old tokens of released rows are stale.
SELECT * FROM pg_temp.error_of(format($$SELECT pm_pipeline.complete_lease('app.tasks', %s)$$, (SELECT t FROM tok WHERE id = 2)));
-- A dead worker's leases are released by the pass too (on its last attempt: exhausted).
SELECT pm_pipeline.upsert_worker_heartbeat('mortal', 'fenced_test');
SELECT id, attempts FROM pm_pipeline.claim_leases(NULL::app.tasks, 'mortal', 1, '1 hour', '{"id": 2}');
SELECT pm_pipeline.stop_worker('mortal');
SELECT id, state, result, claimed_by, attempts FROM app.tasks WHERE id = 2;

-- Argument errors: each changes nothing.
CREATE TEMP TABLE before AS SELECT * FROM app.tasks;
CREATE TABLE app.plain (id int PRIMARY KEY, claimed_by text, lease_expires_at timestamptz);
SELECT pm_pipeline.register_lease_table('app.plain');
CREATE TABLE app.unregistered (id int PRIMARY KEY);
SELECT * FROM pg_temp.error_of($$SELECT * FROM pm_pipeline.claim_leases(NULL::app.unregistered, 'w')$$);
SELECT * FROM pg_temp.error_of($$SELECT * FROM pm_pipeline.claim_leases(NULL::app.plain, 'w')$$);
SELECT * FROM pg_temp.error_of($$SELECT * FROM pm_pipeline.claim_leases(1, 'w')$$);
SELECT * FROM pg_temp.error_of($$SELECT * FROM pm_pipeline.claim_leases(NULL::app.tasks, NULL)$$);
SELECT * FROM pg_temp.error_of($$SELECT * FROM pm_pipeline.claim_leases(NULL::app.tasks, '')$$);
SELECT * FROM pg_temp.error_of($$SELECT * FROM pm_pipeline.claim_leases(NULL::app.tasks, repeat('x', 201))$$);
SELECT * FROM pg_temp.error_of($$SELECT * FROM pm_pipeline.claim_leases(NULL::app.tasks, 'w', 0)$$);
SELECT * FROM pg_temp.error_of($$SELECT * FROM pm_pipeline.claim_leases(NULL::app.tasks, 'w', NULL)$$);
SELECT * FROM pg_temp.error_of($$SELECT * FROM pm_pipeline.claim_leases(NULL::app.tasks, 'w', 1, '0 seconds')$$);
SELECT * FROM pg_temp.error_of($$SELECT * FROM pm_pipeline.claim_leases(NULL::app.tasks, 'w', 1, NULL)$$);
SELECT * FROM pg_temp.error_of($$SELECT * FROM pm_pipeline.claim_leases(NULL::app.tasks, 'w', 1, '1 minute', '[1]')$$);
SELECT * FROM pg_temp.error_of($$SELECT * FROM pm_pipeline.claim_leases(NULL::app.tasks, 'w', 1, '1 minute', '"x"')$$);
SELECT * FROM pg_temp.error_of($$SELECT * FROM pm_pipeline.claim_leases(NULL::app.tasks, 'w', 1, '1 minute', '{"nope": 1}')$$);
SELECT * FROM pg_temp.error_of($$SELECT * FROM pm_pipeline.claim_leases(NULL::app.tasks, 'w', 1, '1 minute', '{"priority": "high"}')$$);
SELECT * FROM pg_temp.error_of($$SELECT * FROM pm_pipeline.claim_leases(NULL::app.tasks, 'w', 1, '1 minute', NULL, '{"lease_token": 1}')$$);
SELECT * FROM pg_temp.error_of($$SELECT * FROM pm_pipeline.claim_leases(NULL::app.tasks, 'w', 1, '1 minute', NULL, '{"attempts": 0}')$$);
SELECT * FROM pg_temp.error_of($$SELECT * FROM pm_pipeline.claim_leases(NULL::app.tasks, 'w', 1, '1 minute', NULL, '{"claimed_by": "x"}')$$);
SELECT * FROM pg_temp.error_of($$SELECT * FROM pm_pipeline.claim_leases(NULL::app.tasks, 'w', 1, '1 minute', NULL, '{"priority": "high"}')$$);
SELECT * FROM pg_temp.error_of($$SELECT * FROM pm_pipeline.claim_leases(NULL::app.tasks, 'w', 1, '1 minute', NULL, '{"state": null}')$$);
SELECT * FROM pg_temp.error_of($$SELECT * FROM pm_pipeline.claim_leases(NULL::app.tasks, 'w', 1, '1000000 years')$$);
SELECT * FROM pg_temp.error_of($$SELECT * FROM pm_pipeline.extend_lease(NULL, 1)$$);
SELECT * FROM pg_temp.error_of($$SELECT * FROM pm_pipeline.extend_lease('app.tasks', NULL)$$);
SELECT * FROM pg_temp.error_of($$SELECT * FROM pm_pipeline.extend_lease('app.tasks', 1, '-1 minute')$$);
SELECT * FROM pg_temp.error_of($$SELECT * FROM pm_pipeline.extend_lease('app.plain', 1)$$);
SELECT * FROM pg_temp.error_of($$SELECT * FROM pm_pipeline.extend_lease(12345678, 1)$$);
SELECT * FROM pg_temp.error_of($$SELECT * FROM pm_pipeline.complete_lease('app.unregistered', 1)$$);
SELECT * FROM pg_temp.error_of($$SELECT * FROM pm_pipeline.complete_lease('app.tasks', 1, '{"nope": 1}')$$);
SELECT * FROM pg_temp.error_of($$SELECT * FROM pm_pipeline.complete_lease('app.tasks', 1, '{"lease_expires_at": null}')$$);
SELECT * FROM pg_temp.error_of($$SELECT * FROM pm_pipeline.complete_lease('app.tasks', 1, 'null')$$);
SELECT * FROM pg_temp.error_of($$SELECT * FROM pm_pipeline.fail_lease('app.tasks', NULL)$$);
SELECT * FROM pg_temp.error_of($$SELECT * FROM pm_pipeline.fail_lease('app.tasks', 1, '{"attempts": 0}')$$);
SELECT * FROM pg_temp.error_of($$SELECT * FROM pm_pipeline.check_lease(NULL, 1)$$);
SELECT * FROM pg_temp.error_of($$SELECT * FROM pm_pipeline.check_lease('app.tasks', NULL)$$);
-- Row 4 is held (by w3): a value that does not cast refuses the whole call.
SELECT id, claimed_by FROM app.tasks WHERE id = 4;
SELECT * FROM pg_temp.error_of($$SELECT pm_pipeline.complete_lease('app.tasks', (SELECT lease_token FROM app.tasks WHERE id = 4), '{"priority": "high"}')$$);
SELECT * FROM pg_temp.error_of($$SELECT pm_pipeline.fail_lease('app.tasks', (SELECT lease_token FROM app.tasks WHERE id = 4), '{"priority": "high"}')$$);
SELECT count(*) AS changed_rows FROM (SELECT * FROM app.tasks EXCEPT SELECT * FROM before) d;

-- Quoted identifiers everywhere.
CREATE TABLE app."Odd Queue" ("Key" text PRIMARY KEY, "Who" varchar(50), "Until" timestamptz, "Tok" bigint,
                              "Tries" bigint, "State" text);
INSERT INTO app."Odd Queue" VALUES ('b', NULL, NULL, NULL, 0, 'new'), ('a', NULL, NULL, NULL, 0, 'new');
SELECT pm_pipeline.register_lease_table('app."Odd Queue"', 'Who', 'Until', '{"State": "new"}', 'Tok', 'Tries', 1,
                                        '{"State": "dead"}');
SELECT "Key", "Who", "Tries", "State" FROM pm_pipeline.claim_leases(NULL::app."Odd Queue", 'w', 5, p_set => '{"State": "busy"}');
SELECT pm_pipeline.fail_lease('app."Odd Queue"', (SELECT "Tok" FROM app."Odd Queue" WHERE "Key" = 'a'));
SELECT pm_pipeline.complete_lease('app."Odd Queue"', (SELECT "Tok" FROM app."Odd Queue" WHERE "Key" = 'b'), '{"State": "ok"}');
SELECT * FROM app."Odd Queue" ORDER BY "Key";

-- Releasing a lease clears its token (issue 12, fencing decision): a row
-- claimed again by a plain UPDATE (not through claim_leases) never makes an
-- old token valid again. Released three ways: complete, fail, the pass.
CREATE TABLE app.fence (id int PRIMARY KEY, claimed_by text, lease_expires_at timestamptz, lease_token bigint);
CREATE INDEX ON app.fence (claimed_by);
CREATE INDEX ON app.fence (lease_expires_at);
CREATE INDEX ON app.fence (lease_token);
INSERT INTO app.fence (id) VALUES (1), (2), (3);
SELECT pm_pipeline.register_lease_table('app.fence', p_token_column => 'lease_token');
CREATE TEMP TABLE ftok AS SELECT id, lease_token AS t FROM pm_pipeline.claim_leases(NULL::app.fence, 'old', 3, '1 hour');
SELECT pm_pipeline.complete_lease('app.fence', (SELECT t FROM ftok WHERE id = 1));
SELECT pm_pipeline.fail_lease('app.fence', (SELECT t FROM ftok WHERE id = 2));
UPDATE app.fence SET lease_expires_at = now() - interval '1 second' WHERE id = 3;
SELECT pm_pipeline.release_dead_worker_leases() >= 1 AS released;
SELECT id, claimed_by, lease_token FROM app.fence ORDER BY id;
UPDATE app.fence SET claimed_by = 'new', lease_expires_at = now() + interval '1 hour';
SELECT f.id, e.code, e.message
  FROM ftok f, pg_temp.error_of(format('SELECT pm_pipeline.extend_lease(%L, %s)', 'app.fence', f.t)) e ORDER BY f.id;
SELECT id, claimed_by FROM app.fence ORDER BY id;

-- claim_leases by name (issue 15 item 4): an untyped literal resolves to
-- claim_leases(text, ...), which returns the claimed rows as jsonb; the name
-- must be schema-qualified (an unqualified one is refused with a hint).
UPDATE app.fence SET claimed_by = NULL, lease_expires_at = NULL, lease_token = NULL;
SELECT c->>'id' AS id, c->>'claimed_by' AS claimed_by,
       (c->>'lease_token')::bigint >= 4611686018427387904 AS has_token
  FROM pm_pipeline.claim_leases('app.fence', 'byname', 2) AS c;
SELECT pm_pipeline.claim_leases('app.fence', 'byname', 5)->>'id' AS id;
SELECT count(*) AS nothing_left FROM pm_pipeline.claim_leases('app.fence', 'byname');
SELECT * FROM pg_temp.error_of($$SELECT * FROM pm_pipeline.claim_leases('fence', 'w1', 1)$$);
SELECT * FROM pg_temp.error_of($$SELECT * FROM pm_pipeline.claim_leases('app.nope', 'w1', 1)$$);
SELECT * FROM pg_temp.error_of($$SELECT * FROM pm_pipeline.claim_leases('app.unregistered', 'w1', 1)$$);
SELECT * FROM pg_temp.error_of($$SELECT * FROM pm_pipeline.claim_leases(NULL::text, 'w1', 1)$$);

-- Filters compare with the column type's own equality operator, wherever it
-- lives (citext's is case-insensitive); a type without one is refused.
CREATE EXTENSION citext SCHEMA app;
CREATE TABLE app.names (id int PRIMARY KEY, name app.citext, meta json, claimed_by text,
                        lease_expires_at timestamptz, tok bigint);
CREATE INDEX ON app.names (claimed_by);
CREATE INDEX ON app.names (lease_expires_at);
CREATE INDEX ON app.names (tok);
INSERT INTO app.names VALUES (1, 'Alice', '{}'), (2, 'Bob', '{}');
SELECT pm_pipeline.register_lease_table('app.names', p_token_column => 'tok');
SELECT id, name FROM pm_pipeline.claim_leases(NULL::app.names, 'w', 5, p_filter => '{"name": "ALICE"}');
SELECT * FROM pg_temp.error_of($$SELECT * FROM pm_pipeline.claim_leases(NULL::app.names, 'w', 1, p_filter => '{"meta": {}}')$$);

-- Privileges: SECURITY INVOKER with a fixed search_path, nothing for PUBLIC.
SELECT p.proname, p.prosecdef, p.proconfig, has_function_privilege('public', p.oid, 'EXECUTE') AS public_execute
  FROM pg_proc p WHERE p.pronamespace = 'pm_pipeline'::regnamespace
   AND p.proname IN ('claim_leases', 'extend_lease', 'complete_lease', 'fail_lease', 'check_lease', 'register_lease_table')
 ORDER BY 1, 2;
-- A worker role needs EXECUTE and its own rights on the table, nothing on our
-- catalog or sequence; row-level security on the table applies.
CREATE ROLE wh_fenced_worker;
CREATE ROLE wh_fenced_nobody;
GRANT USAGE ON SCHEMA pm_pipeline, app TO wh_fenced_worker, wh_fenced_nobody;
GRANT EXECUTE ON FUNCTION pm_pipeline.claim_leases(anyelement, text, integer, interval, jsonb, jsonb),
    pm_pipeline.complete_lease(regclass, bigint, jsonb) TO wh_fenced_worker;
GRANT SELECT, UPDATE ON app.tasks TO wh_fenced_worker, wh_fenced_nobody;
ALTER TABLE app.tasks ENABLE ROW LEVEL SECURITY;
CREATE POLICY only_b ON app.tasks USING (kind = 'b');
UPDATE app.tasks SET state = 'pending', claimed_by = NULL, lease_expires_at = NULL, attempts = 0;
SET ROLE wh_fenced_worker;
SELECT id, kind FROM pm_pipeline.claim_leases(NULL::app.tasks, 'rls', 10);
SELECT pm_pipeline.complete_lease('app.tasks', (SELECT lease_token FROM app.tasks WHERE id = 2));
RESET ROLE;
SET ROLE wh_fenced_nobody;
SELECT * FROM pg_temp.error_of($$SELECT * FROM pm_pipeline.claim_leases(NULL::app.tasks, 'x')$$);
RESET ROLE;
REVOKE UPDATE ON app.tasks FROM wh_fenced_worker;
SET ROLE wh_fenced_worker;
SELECT * FROM pg_temp.error_of($$SELECT * FROM pm_pipeline.claim_leases(NULL::app.tasks, 'x')$$);
RESET ROLE;
SELECT id, kind, claimed_by FROM app.tasks WHERE claimed_by IS NOT NULL ORDER BY id;

DROP SCHEMA app CASCADE;
DROP OWNED BY wh_fenced_worker, wh_fenced_nobody;
DROP ROLE wh_fenced_worker;
DROP ROLE wh_fenced_nobody;
