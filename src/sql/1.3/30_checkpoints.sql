-- 1.3: progress checkpoints carried across a death (issue 16, section 2).
-- A fenced table may name a jsonb checkpoint column; checkpoint_lease()
-- stores a checkpoint under a live lease token (WH001 when the token is
-- stale). Releases (the reaper, stop_worker, fail_lease) keep it, so the next
-- claimer gets the row with the last checkpoint and its attempts count;
-- complete_lease clears it unless its p_set names the column.
-- See docs/fenced-leases.md, "Checkpoints (1.3)".

-- The registration gains the column. lease_tables is already dumped by
-- pg_extension_config_dump (all rows, every column) and has row-level
-- security (read_granted for SELECT; written as its owner only).
ALTER TABLE @extschema@.lease_tables ADD COLUMN checkpoint_column name;
COMMENT ON COLUMN @extschema@.lease_tables.checkpoint_column IS
    'jsonb column that carries a lease''s progress checkpoint across releases (1.3), NULL: none';

-- Runs with the caller's rights, like register_lease_table: the caller must
-- own the table; only the lease_tables row is written as its owner.
CREATE FUNCTION @extschema@.set_lease_checkpoint_column(p_table regclass, p_checkpoint_column name)
RETURNS void
LANGUAGE c VOLATILE SECURITY INVOKER
SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'wh_set_lease_checkpoint_column';
COMMENT ON FUNCTION @extschema@.set_lease_checkpoint_column(regclass, name) IS
    'Names the jsonb checkpoint column of a table registered with a token column (NULL: none).';

-- The worker's own rights: UPDATE on its table, its row-level security.
CREATE FUNCTION @extschema@.checkpoint_lease(
    p_table      regclass,
    p_token      bigint,
    p_checkpoint jsonb,
    p_lease      interval DEFAULT NULL)
RETURNS timestamptz
LANGUAGE c VOLATILE SECURITY INVOKER
SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'wh_checkpoint_lease';
COMMENT ON FUNCTION @extschema@.checkpoint_lease(regclass, bigint, jsonb, interval) IS
    'Stores a progress checkpoint with the lease of this token (and extends it by p_lease); returns the deadline; SQLSTATE WH001 when the token is stale.';

REVOKE ALL ON FUNCTION @extschema@.set_lease_checkpoint_column(regclass, name) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.checkpoint_lease(regclass, bigint, jsonb, interval) FROM PUBLIC;
