-- 1.3: fleet control (issue "Fleet control 1.3"): drain and pause, progress
-- checkpoints carried across a death, death forensics, zombie termination.
-- Parts of this update script are concatenated in file-name order; each part
-- says what it adds. An existing 1.2 installation gets them with
-- ALTER EXTENSION worker_heartbeat UPDATE.

\echo Use "ALTER EXTENSION worker_heartbeat UPDATE TO '1.3'" to load this file. \quit

-- This update alters worker_types (50) and lease_tables (30). A reaping pass
-- reads worker_types (the timeout scan) before lease_tables (the release) and
-- keeps both locks until it commits: altering them in the other order
-- deadlocked with a pass (TAP 030, PostgreSQL 17). Both are locked first, in
-- the pass's order, so the update waits for a running pass instead.
LOCK TABLE @extschema@.worker_types, @extschema@.lease_tables IN ACCESS EXCLUSIVE MODE;

