-- Registered lease tables, the reaping pass, and stop_worker's releases.
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS worker_heartbeat CASCADE;
DROP SCHEMA IF EXISTS pm_pipeline CASCADE;
DROP SCHEMA IF EXISTS app CASCADE;
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
SELECT pm_pipeline.stop_reaper() IS NOT NULL AS reaper_stopped;

CREATE SCHEMA app;
CREATE TABLE app.company_research_queue (
    id               bigserial PRIMARY KEY,
    domain           text NOT NULL,
    state            text NOT NULL DEFAULT 'pending',
    priority         integer NOT NULL DEFAULT 0,
    claimed_by       text,
    lease_expires_at timestamptz
);
CREATE INDEX ON app.company_research_queue (claimed_by);
CREATE INDEX ON app.company_research_queue (lease_expires_at);
CREATE TABLE app."Other Queue" (
    id       integer PRIMARY KEY,
    "Owner"  varchar(200),
    deadline timestamptz,
    tries    integer NOT NULL DEFAULT 0
);

-- Registration: with the seed's column names by default...
SELECT pm_pipeline.register_lease_table('app.company_research_queue', p_on_release => '{"state": "pending"}');
-- ... or any names (a NOTICE suggests the indexes a pass needs).
SELECT pm_pipeline.register_lease_table('app."Other Queue"', 'Owner', 'deadline', '{"tries": 0}');
SELECT table_name, worker_column, expires_column, on_release, registered_as
  FROM pm_pipeline.lease_tables ORDER BY registered_as;

-- Registration errors: nothing is registered by any of them.
SELECT * FROM pg_temp.error_of($$SELECT pm_pipeline.register_lease_table('app.company_research_queue')$$);
SELECT * FROM pg_temp.error_of($$SELECT pm_pipeline.register_lease_table(NULL)$$);
SELECT * FROM pg_temp.error_of($$SELECT pm_pipeline.register_lease_table('app.nope')$$);
CREATE TABLE app.bad (id int, claimed_by integer, lease_expires_at timestamp, holder text, until timestamptz, state text NOT NULL DEFAULT 'x');
SELECT * FROM pg_temp.error_of($$SELECT pm_pipeline.register_lease_table('app.bad', 'missing')$$);
SELECT * FROM pg_temp.error_of($$SELECT pm_pipeline.register_lease_table('app.bad')$$);
SELECT * FROM pg_temp.error_of($$SELECT pm_pipeline.register_lease_table('app.bad', 'holder')$$);
SELECT * FROM pg_temp.error_of($$SELECT pm_pipeline.register_lease_table('app.bad', 'holder', 'missing')$$);
SELECT * FROM pg_temp.error_of($$SELECT pm_pipeline.register_lease_table('app.bad', 'holder', 'until', '[]')$$);
SELECT * FROM pg_temp.error_of($$SELECT pm_pipeline.register_lease_table('app.bad', 'holder', 'until', '{"nope": 1}')$$);
SELECT * FROM pg_temp.error_of($$SELECT pm_pipeline.register_lease_table('app.bad', 'holder', 'until', '{"claimed_by": "abc"}')$$);
SELECT * FROM pg_temp.error_of($$SELECT pm_pipeline.register_lease_table('app.bad', 'holder', 'until', '{"holder": "x"}')$$);
SELECT * FROM pg_temp.error_of($$SELECT pm_pipeline.register_lease_table('app.bad', 'holder', 'until', '{"state": null}')$$);
SELECT * FROM pg_temp.error_of($$SELECT pm_pipeline.register_lease_table('app.bad', NULL, 'until')$$);
SELECT * FROM pg_temp.error_of($$SELECT pm_pipeline.register_lease_table('app.bad', 'holder', 'holder')$$);
SELECT * FROM pg_temp.error_of($$SELECT pm_pipeline.register_lease_table('app.bad', 'holder', 'until', '{"id": "not a number"}')$$);
-- Issue 12 item 8: a temporary table, and assignments to columns that cannot
-- be assigned (generated, identity GENERATED ALWAYS), are refused.
CREATE TEMP TABLE temp_queue (id int, claimed_by text, lease_expires_at timestamptz);
SELECT * FROM pg_temp.error_of($$SELECT pm_pipeline.register_lease_table('pg_temp.temp_queue')$$);
CREATE TABLE app.gen (id int GENERATED ALWAYS AS IDENTITY, n int, doubled int GENERATED ALWAYS AS (n * 2) STORED,
                      claimed_by text, lease_expires_at timestamptz,
                      gen_worker text GENERATED ALWAYS AS ('w' || n) STORED);
SELECT * FROM pg_temp.error_of($$SELECT pm_pipeline.register_lease_table('app.gen', p_on_release => '{"doubled": 0}')$$);
SELECT * FROM pg_temp.error_of($$SELECT pm_pipeline.register_lease_table('app.gen', p_on_release => '{"id": 0}')$$);
SELECT * FROM pg_temp.error_of($$SELECT pm_pipeline.register_lease_table('app.gen', 'gen_worker')$$);
CREATE VIEW app.v AS SELECT * FROM app.bad;
SELECT * FROM pg_temp.error_of($$SELECT pm_pipeline.register_lease_table('app.v', 'holder', 'until')$$);
SELECT * FROM pg_temp.error_of($$SELECT pm_pipeline.unregister_lease_table('app.bad')$$);
SELECT * FROM pg_temp.error_of($$SELECT pm_pipeline.unregister_lease_table(NULL)$$);
SELECT count(*) AS registered FROM pm_pipeline.lease_tables;

-- Only the table's owner may register it.
CREATE ROLE wh_regress_stranger;
GRANT USAGE ON SCHEMA pm_pipeline, app TO wh_regress_stranger;
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA pm_pipeline TO wh_regress_stranger;
SET ROLE wh_regress_stranger;
SELECT * FROM pg_temp.error_of($$SELECT pm_pipeline.register_lease_table('app.bad', 'holder', 'until')$$);
RESET ROLE;
DROP OWNED BY wh_regress_stranger;
DROP ROLE wh_regress_stranger;

-- Workers and their leases.
SELECT pm_pipeline.upsert_worker_heartbeat('alive', 'company_research');
SELECT pm_pipeline.upsert_worker_heartbeat('doomed', 'doomed_type');
SELECT pm_pipeline.upsert_worker_heartbeat('stopping', 'company_research');
INSERT INTO app.company_research_queue (domain, state, claimed_by, lease_expires_at) VALUES
    ('a.example', 'claimed', 'alive', now() + interval '1 hour'),     -- live, unexpired: kept
    ('b.example', 'claimed', 'alive', now() - interval '1 second'),   -- expired: released
    ('c.example', 'claimed', 'doomed', now() + interval '1 hour'),    -- dead worker: released
    ('d.example', 'claimed', 'doomed', NULL),                         -- dead worker, no deadline: released
    ('e.example', 'claimed', 'stopping', now() + interval '1 hour'),  -- released by stop_worker
    ('f.example', 'claimed', 'unknown', now() + interval '1 hour'),   -- not a worker we know: kept
    ('g.example', 'pending', NULL, NULL);                             -- free: untouched
INSERT INTO app."Other Queue" VALUES (1, 'doomed', now() + interval '1 hour', 3), (2, 'alive', NULL, 1);
CREATE TABLE app.unregistered (claimed_by text, lease_expires_at timestamptz);
INSERT INTO app.unregistered VALUES ('doomed', now() - interval '1 hour');

SELECT pm_pipeline.stop_worker('stopping');
SELECT domain, state, claimed_by FROM app.company_research_queue ORDER BY id;

SELECT pm_pipeline.set_worker_type_dead_after('doomed_type', '1 microsecond');
SELECT pm_pipeline.release_dead_worker_leases();
SELECT domain, state, claimed_by, lease_expires_at IS NULL AS no_deadline
  FROM app.company_research_queue ORDER BY id;
SELECT * FROM app."Other Queue" ORDER BY id;
SELECT claimed_by FROM app.unregistered;
-- Nothing left to do: a second pass releases nothing.
SELECT pm_pipeline.release_dead_worker_leases();

SELECT worker_id, event, table_name, released_count, details - 'forensics' AS details -- 1.3: forensics in 110
  FROM pm_pipeline.worker_events WHERE event IN ('died', 'stopped', 'leases_released') ORDER BY event_id;

-- Workers that still hold a lease are never removed as stale.
UPDATE pm_pipeline.worker_heartbeats SET died_at = now() - interval '2 hours' WHERE worker_id = 'doomed';
UPDATE app.company_research_queue SET claimed_by = 'doomed' WHERE domain = 'g.example';
SELECT pm_pipeline.cleanup_stale_workers(60);
UPDATE app.company_research_queue SET claimed_by = NULL WHERE domain = 'g.example';
SELECT pm_pipeline.cleanup_stale_workers(60);
SELECT worker_id FROM pm_pipeline.worker_heartbeats ORDER BY worker_id;

-- A registered table dropped behind our back is reported and skipped; the
-- other tables are still released.
SELECT pm_pipeline.upsert_worker_heartbeat('doomed-2', 'doomed_type');
UPDATE app.company_research_queue SET claimed_by = 'doomed-2', state = 'claimed' WHERE domain = 'a.example';
DROP TABLE app."Other Queue";
\set VERBOSITY terse
SELECT pm_pipeline.release_dead_worker_leases();
\set VERBOSITY default
SELECT domain, state, claimed_by FROM app.company_research_queue WHERE domain = 'a.example';

-- Unregistering.
SELECT pm_pipeline.unregister_lease_table(table_name) FROM pm_pipeline.lease_tables
 WHERE registered_as = 'app."Other Queue"';
SELECT pm_pipeline.unregister_lease_table('app.company_research_queue');
SELECT count(*) AS registered FROM pm_pipeline.lease_tables;
DROP SCHEMA app CASCADE;
