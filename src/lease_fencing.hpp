// Fenced leases (1.1): claim_leases, extend_lease, complete_lease, fail_lease
// and check_lease on a registered table that has a token column.
//
// Every claim hands out a new token (S.lease_token_seq); every later call
// names the lease by that token, and acts only while a row still holds it
// (token column = token and worker column not NULL). Otherwise it raises
// SQLSTATE WH001 and changes nothing: a worker that lost its lease (the reaper
// released it, another worker claimed the row since) can never overwrite the
// work of the one that holds it now.
//
// The functions are SECURITY INVOKER: they read and write the user's table
// with the caller's privileges and row-level security. Only the extension's
// own objects (the registration, the token sequence, the event history) are
// used as the extension's owner. Identifiers come from the catalog and are
// quoted; every value is a parameter.
#pragma once

#include "pg.hpp"

extern "C" {
Datum wh_claim_leases(PG_FUNCTION_ARGS);
Datum wh_extend_lease(PG_FUNCTION_ARGS);
Datum wh_complete_lease(PG_FUNCTION_ARGS);
Datum wh_fail_lease(PG_FUNCTION_ARGS);
Datum wh_check_lease(PG_FUNCTION_ARGS);
}
