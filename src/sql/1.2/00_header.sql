-- 1.2: security and reliability (issues "Security 1.2" and "Reliability 1.2").
-- Parts of this update script are concatenated in file-name order; each part
-- says what it fixes. An existing 1.1 installation is fixed by
-- ALTER EXTENSION worker_heartbeat UPDATE.

\echo Use "ALTER EXTENSION worker_heartbeat UPDATE TO '1.2'" to load this file. \quit

-- This update alters worker_heartbeats and worker_types and adds triggers to
-- worker_events. A reaping pass reads worker_heartbeats, worker_types, then
-- lease_tables, and writes worker_events last, keeping each lock until it
-- commits. Every table a pass touches is locked first, in the pass's order, so
-- that the update waits for a running pass instead of deadlocking with it
-- (see the same lock in 1.1's script).
LOCK TABLE @extschema@.worker_heartbeats, @extschema@.worker_types, @extschema@.lease_tables,
    @extschema@.worker_events IN ACCESS EXCLUSIVE MODE;
