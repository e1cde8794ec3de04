// Fenced leases (1.1): claim_leases, extend_lease, complete_lease, fail_lease
// and check_lease on a registered table that has a token column.
//
// Every claim hands out a new token (a random value in [2^62, 2^63), never
// confusable with a row id; lease_token_seq of 1.1 is no longer used); every
// later call
// names the lease by that token, and acts only while a row still holds it
// (token column = token and worker column not NULL). Otherwise it raises
// SQLSTATE WH001 and changes nothing: a worker that lost its lease (the reaper
// released it, another worker claimed the row since) can never overwrite the
// work of the one that holds it now. Releasing a lease (complete, fail, the
// reaper) clears its token, so an old token never becomes valid again, even
// when the row is claimed later by a plain UPDATE instead of claim_leases.
//
// The functions are SECURITY INVOKER: they read and write the user's table
// with the caller's privileges and row-level security. Only the extension's
// own objects (the registration, the token sequence, the event history) are
// used as the extension's owner. Identifiers come from the catalog and are
// quoted; every value is a parameter.
#pragma once

#include "catalog.hpp"
#include "leases.hpp"
#include "pg.hpp"

extern "C" {
Datum wh_claim_leases(PG_FUNCTION_ARGS);
Datum wh_claim_leases_by_name(PG_FUNCTION_ARGS);
Datum wh_extend_lease(PG_FUNCTION_ARGS);
Datum wh_complete_lease(PG_FUNCTION_ARGS);
Datum wh_fail_lease(PG_FUNCTION_ARGS);
Datum wh_check_lease(PG_FUNCTION_ARGS);
}

namespace wh::fencing
{

// p_lease (argument n): not NULL (22004) and positive (22023).
Datum LeaseArg(FunctionCallInfo fcinfo, int n);
// The registration of relid, which must have a token column and still
// qualify: 42P01, 42704 (not registered) or 55000 otherwise.
const leases::Table *RequireFencedTable(const catalog::Extension &ext, Oid relid);
// SQLSTATE WH001: no row holds a lease with this token.
[[noreturn]] void StaleToken(const leases::Table &t, int64 token);

} // namespace wh::fencing
