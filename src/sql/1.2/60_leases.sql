-- Leases (issues "Security 1.2" items 1, 12 decision on fencing, and
-- "first hour" item 4).

-- register_lease_table runs with the caller's rights (it was SECURITY
-- DEFINER): checking p_on_release / p_on_exhausted calls the column types'
-- input functions (a domain's CHECK: any function of the caller), which must
-- never run as the extension's owner. The C code runs those checks as the
-- table's owner under SECURITY_RESTRICTED_OPERATION, and only the read and
-- the insert of lease_tables as the owner of lease_tables, after the caller's
-- ownership of the table was checked.
CREATE OR REPLACE FUNCTION @extschema@.register_lease_table(
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
LANGUAGE c VOLATILE SECURITY INVOKER
SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'wh_register_lease_table';

-- Lease tokens are random values in [2^62, 2^63) now (never confusable with a
-- row id); the sequence of 1.1 is kept (pg_dump keeps it) but no longer used.
COMMENT ON SEQUENCE @extschema@.lease_token_seq IS 'Unused since 1.2 (lease tokens are random); kept for compatibility.';

-- claim_leases('app.jobs', 'w1'): the table by its schema-qualified name,
-- the claimed rows as jsonb. An untyped literal ('jobs') resolves to this
-- declaration (the string category wins over anyelement), so the call no
-- longer fails with "could not determine polymorphic type"; an unqualified
-- name is refused with a hint (the function's search_path is pg_catalog,
-- pg_temp, so the name cannot be looked up in the caller's).
CREATE FUNCTION @extschema@.claim_leases(
    p_table     text,
    p_worker_id text,
    p_limit     integer  DEFAULT 1,
    p_lease     interval DEFAULT '5 minutes',
    p_filter    jsonb    DEFAULT NULL,
    p_set       jsonb    DEFAULT NULL)
RETURNS SETOF jsonb
LANGUAGE c VOLATILE SECURITY INVOKER
SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'wh_claim_leases_by_name';
COMMENT ON FUNCTION @extschema@.claim_leases(text, text, integer, interval, jsonb, jsonb) IS
    'claim_leases by table name: the claimed rows as jsonb (claim_leases(NULL::table, ...) returns typed rows).';
REVOKE ALL ON FUNCTION @extschema@.claim_leases(text, text, integer, interval, jsonb, jsonb) FROM PUBLIC;
