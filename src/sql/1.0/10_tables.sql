-- Tables. RLS is on everywhere, with a read-everything policy: GRANTs decide
-- who reads; nobody writes except through our SECURITY DEFINER functions.

CREATE TABLE @extschema@.worker_heartbeats (
    worker_id          text        NOT NULL PRIMARY KEY,
    worker_type        text        NOT NULL,
    last_heartbeat_at  timestamptz NOT NULL DEFAULT pg_catalog.now(),
    status             text        NOT NULL DEFAULT 'active'
        CONSTRAINT worker_heartbeats_status_check
        CHECK (status OPERATOR(pg_catalog.=) ANY (ARRAY['active', 'idle', 'processing', 'stopped', 'dead'])),
    current_run_id     uuid,
    current_task       text,
    lease_expires_at   timestamptz,
    started_at         timestamptz NOT NULL DEFAULT pg_catalog.now(),
    metadata           jsonb       NOT NULL DEFAULT '{}'
        CONSTRAINT worker_heartbeats_metadata_check CHECK (pg_catalog.jsonb_typeof(metadata) OPERATOR(pg_catalog.=) 'object'),
    session_pid        integer,
    session_started_at timestamptz,
    died_at            timestamptz,
    death_cause        text
        CONSTRAINT worker_heartbeats_death_cause_check
        CHECK (death_cause OPERATOR(pg_catalog.=) ANY (ARRAY['heartbeat_timeout', 'session_ended']))
) WITH (fillfactor = 50);
-- No index on last_heartbeat_at: heartbeats stay HOT updates.
COMMENT ON TABLE @extschema@.worker_heartbeats IS
    'One row per worker: its last heartbeat, what it is doing, and whether it is alive.';
CREATE INDEX worker_heartbeats_session_idx
    ON @extschema@.worker_heartbeats (session_pid) WHERE session_pid IS NOT NULL;

CREATE TABLE @extschema@.worker_types (
    worker_type text     NOT NULL PRIMARY KEY,
    dead_after  interval NOT NULL
        CONSTRAINT worker_types_dead_after_check CHECK (dead_after OPERATOR(pg_catalog.>) interval '0')
);
COMMENT ON TABLE @extschema@.worker_types IS
    'Per worker type override of worker_heartbeat.dead_after.';

CREATE TABLE @extschema@.lease_tables (
    table_name     regclass    NOT NULL PRIMARY KEY,
    worker_column  name        NOT NULL,
    expires_column name        NOT NULL,
    on_release     jsonb       NOT NULL DEFAULT '{}',
    registered_as  text        NOT NULL,
    registered_at  timestamptz NOT NULL DEFAULT pg_catalog.now()
);
COMMENT ON TABLE @extschema@.lease_tables IS
    'Tables whose rows workers lease; the reaper releases leases of dead workers there.';

CREATE SEQUENCE @extschema@.worker_events_event_id_seq;
CREATE TABLE @extschema@.worker_events (
    event_id          bigint      NOT NULL PRIMARY KEY
        DEFAULT pg_catalog.nextval('@extschema@.worker_events_event_id_seq'::pg_catalog.regclass),
    occurred_at       timestamptz NOT NULL DEFAULT pg_catalog.now(),
    worker_id         text,
    worker_type       text,
    event             text        NOT NULL,
    table_name        text,
    released_count    integer,
    silent_for        interval,
    detection_latency interval,
    details           jsonb
);
ALTER SEQUENCE @extschema@.worker_events_event_id_seq OWNED BY @extschema@.worker_events.event_id;
COMMENT ON TABLE @extschema@.worker_events IS
    'History: workers started, stopped, died, revived and removed; leases released.';
CREATE INDEX worker_events_occurred_at_idx ON @extschema@.worker_events (occurred_at);

-- pg_dump keeps what users put here.
SELECT pg_catalog.pg_extension_config_dump('@extschema@.worker_heartbeats', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.worker_types', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.lease_tables', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.worker_events', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.worker_events_event_id_seq', '');

ALTER TABLE @extschema@.worker_heartbeats ENABLE ROW LEVEL SECURITY;
ALTER TABLE @extschema@.worker_types ENABLE ROW LEVEL SECURITY;
ALTER TABLE @extschema@.lease_tables ENABLE ROW LEVEL SECURITY;
ALTER TABLE @extschema@.worker_events ENABLE ROW LEVEL SECURITY;
CREATE POLICY read_granted ON @extschema@.worker_heartbeats FOR SELECT USING (true);
CREATE POLICY read_granted ON @extschema@.worker_types FOR SELECT USING (true);
CREATE POLICY read_granted ON @extschema@.lease_tables FOR SELECT USING (true);
CREATE POLICY read_granted ON @extschema@.worker_events FOR SELECT USING (true);
