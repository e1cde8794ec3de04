-- Lease tables and the reaping pass.

CREATE FUNCTION @extschema@.register_lease_table(
    p_table          regclass,
    p_worker_column  name  DEFAULT 'claimed_by',
    p_expires_column name  DEFAULT 'lease_expires_at',
    p_on_release     jsonb DEFAULT '{}')
RETURNS void
LANGUAGE c VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'wh_register_lease_table';
COMMENT ON FUNCTION @extschema@.register_lease_table(regclass, name, name, jsonb) IS
    'Lets the reaper release leases of dead workers in this table (the caller must own it).';

CREATE FUNCTION @extschema@.unregister_lease_table(p_table regclass)
RETURNS boolean
LANGUAGE c VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'wh_unregister_lease_table';

CREATE FUNCTION @extschema@.release_dead_worker_leases()
RETURNS integer
LANGUAGE c VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'wh_release_dead_worker_leases';
COMMENT ON FUNCTION @extschema@.release_dead_worker_leases() IS
    'One reaping pass (what the reaper does every reap_interval): returns the number of leases released.';
