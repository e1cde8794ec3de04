-- 1.2: security and reliability (issues "Security 1.2" and "Reliability 1.2").
-- Parts of this update script are concatenated in file-name order; each part
-- says what it fixes. An existing 1.1 installation is fixed by
-- ALTER EXTENSION worker_heartbeat UPDATE.

\echo Use "ALTER EXTENSION worker_heartbeat UPDATE TO '1.2'" to load this file. \quit

-- A reaping pass holds worker_heartbeats (a flush, the silence scan) when it
-- reads lease_tables, and waits for lease_tables with no time limit, while
-- its statements on the other tables wait at most pass_lock_timeout. An
-- update that altered lease_tables (1.1) and then worker_heartbeats (1.2)
-- deadlocked with a pass (TAP 030, an update from 1.0 on PostgreSQL 17). The
-- tables a pass and the update both touch are locked first, worker_heartbeats
-- first, so the update waits for a running pass instead. (The order is the
-- update scripts' own; other code need not follow it.)
LOCK TABLE @extschema@.worker_heartbeats, @extschema@.worker_types, @extschema@.lease_tables,
    @extschema@.worker_events IN ACCESS EXCLUSIVE MODE;
