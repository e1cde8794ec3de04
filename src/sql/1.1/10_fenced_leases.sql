-- 1.1: fenced leases (claim / extend / complete / fail with tokens, poison pills).
-- See docs/fenced-leases.md.

\echo Use "ALTER EXTENSION worker_heartbeat UPDATE TO '1.1'" to load this file. \quit

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

ALTER TABLE @extschema@.lease_tables
    ADD COLUMN token_column    name,
    ADD COLUMN attempts_column name,
    ADD COLUMN order_column    name,
    ADD COLUMN max_attempts    integer CHECK (max_attempts > 0),
    ADD COLUMN on_exhausted    jsonb;
COMMENT ON COLUMN @extschema@.lease_tables.token_column IS
    'bigint column that holds the token of the current lease (fenced leases), NULL: none';
COMMENT ON COLUMN @extschema@.lease_tables.max_attempts IS
    'a lease released on attempt max_attempts applies on_exhausted instead of on_release';

-- Lease tokens: one sequence for every registered table, so that a token
-- never comes back (pg_dump keeps its position).
CREATE SEQUENCE @extschema@.lease_token_seq AS bigint;
COMMENT ON SEQUENCE @extschema@.lease_token_seq IS 'Lease tokens handed out by claim_leases().';
SELECT pg_catalog.pg_extension_config_dump('@extschema@.lease_token_seq', '');

-- Registration gains the fencing columns; 1.0 callers are unchanged (the
-- same C function serves both declarations).
DROP FUNCTION @extschema@.register_lease_table(regclass, name, name, jsonb);
CREATE FUNCTION @extschema@.register_lease_table(
    p_table           regclass,
    p_worker_column   name    DEFAULT 'claimed_by',
    p_expires_column  name    DEFAULT 'lease_expires_at',
    p_on_release      jsonb   DEFAULT '{}',
    p_token_column    name    DEFAULT NULL,
    p_attempts_column name    DEFAULT NULL,
    p_max_attempts    integer DEFAULT NULL,
    p_on_exhausted    jsonb   DEFAULT NULL,
    p_order_column    name    DEFAULT NULL)
RETURNS void
LANGUAGE c VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'wh_register_lease_table';
COMMENT ON FUNCTION @extschema@.register_lease_table(regclass, name, name, jsonb, name, name, integer, jsonb, name) IS
    'Lets the reaper release leases of dead workers in this table (the caller must own it); with a token column, the fenced-lease functions work on it.';

-- The fencing functions run with the caller's rights: the worker's own
-- privileges and row-level security on its table apply.
CREATE FUNCTION @extschema@.claim_leases(
    p_table     anyelement,
    p_worker_id text,
    p_limit     integer  DEFAULT 1,
    p_lease     interval DEFAULT '5 minutes',
    p_filter    jsonb    DEFAULT NULL,
    p_set       jsonb    DEFAULT NULL)
RETURNS SETOF anyelement
LANGUAGE c VOLATILE SECURITY INVOKER
SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'wh_claim_leases';
COMMENT ON FUNCTION @extschema@.claim_leases(anyelement, text, integer, interval, jsonb, jsonb) IS
    'Claims up to p_limit free rows (FOR UPDATE SKIP LOCKED, oldest first), each with a new lease token; returns them.';

CREATE FUNCTION @extschema@.extend_lease(p_table regclass, p_token bigint, p_lease interval DEFAULT '5 minutes')
RETURNS timestamptz
LANGUAGE c VOLATILE SECURITY INVOKER
SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'wh_extend_lease';
COMMENT ON FUNCTION @extschema@.extend_lease(regclass, bigint, interval) IS
    'Moves the deadline of the lease with this token to now() + p_lease; SQLSTATE WH001 when the token is stale.';

CREATE FUNCTION @extschema@.complete_lease(p_table regclass, p_token bigint, p_set jsonb DEFAULT NULL)
RETURNS void
LANGUAGE c VOLATILE SECURITY INVOKER
SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'wh_complete_lease';
COMMENT ON FUNCTION @extschema@.complete_lease(regclass, bigint, jsonb) IS
    'Ends the lease with this token and applies p_set; SQLSTATE WH001 (nothing changed) when the token is stale.';

CREATE FUNCTION @extschema@.fail_lease(p_table regclass, p_token bigint, p_set jsonb DEFAULT NULL)
RETURNS boolean
LANGUAGE c VOLATILE SECURITY INVOKER
SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'wh_fail_lease';
COMMENT ON FUNCTION @extschema@.fail_lease(regclass, bigint, jsonb) IS
    'Releases the lease with this token now (on_release, or on_exhausted on its last attempt: then returns false).';

CREATE FUNCTION @extschema@.check_lease(p_table regclass, p_token bigint)
RETURNS boolean
LANGUAGE c VOLATILE SECURITY INVOKER
SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'wh_check_lease';
COMMENT ON FUNCTION @extschema@.check_lease(regclass, bigint) IS
    'True when the lease with this token still holds its row (locked until commit); else SQLSTATE WH001.';

-- Nothing of ours is executable by PUBLIC (90_privileges.sql of 1.0 saw only 1.0's functions).
REVOKE ALL ON FUNCTION @extschema@.register_lease_table(regclass, name, name, jsonb, name, name, integer, jsonb, name)
    FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.claim_leases(anyelement, text, integer, interval, jsonb, jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.extend_lease(regclass, bigint, interval) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.complete_lease(regclass, bigint, jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.fail_lease(regclass, bigint, jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.check_lease(regclass, bigint) FROM PUBLIC;
REVOKE ALL ON SEQUENCE @extschema@.lease_token_seq FROM PUBLIC;
