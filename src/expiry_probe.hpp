// The idle pass's question: which registered tables have a lease past its
// deadline (only those get a release statement).
//
// A pass with no dead worker to release used to run, per registered table, a
// subtransaction with its settings and a release statement, plus the
// statement that loads the registrations. On a quiet fleet all of them find
// nothing. Now the registrations are kept between passes (reloaded when a
// fingerprint of lease_tables' rows changes, or an invalidation touches a
// registered table, lease_tables or a schema), and the question is answered
// by reading the first entry below now() of each table's btree index on its
// expires column: no statement, no subtransaction, no lock waited for. When
// that cannot be done (a table without a usable index, a lock taken by
// someone, the registrations changed) SQL asks instead: one statement per
// table, run as the table's owner under SECURITY_RESTRICTED_OPERATION (its
// casts, operators and index predicates are its owner's code, never run as
// us). A table that no longer qualifies (Unfit) is skipped.
#pragma once

#include "leases.hpp"

namespace wh::leases
{

// On success: *tables / *count are the (kept) registrations and the result
// says, per table, whether it has a lease past its deadline. NULL when the
// probe cannot tell (not a superuser, a lock timeout, a changed column...):
// the caller then loads and releases every table as usual, which reports
// any failure itself.
const bool *ProbeExpired(const catalog::Extension &ext, const Table **tables, int *count);

// The earliest lease deadline at or after now() in the registered tables,
// read from the same indexes without running any user code (*earliest =
// kNever: none). False when it cannot tell (a table without a usable index,
// a lock taken, not a superuser). The launcher visits a database served in
// rotation at that moment (reaper.cpp, docs/scaleout.md).
bool EarliestExpiry(const catalog::Extension &ext, TimestampTz *earliest);

// Why a registered table no longer qualifies (not a plain table any more:
// on PostgreSQL 15 CREATE RULE "_RETURN" makes it a view; its expires column
// not timestamptz, its worker column not text, its token column not bigint),
// palloc'd; NULL when it does (or is gone). The probe skips such a table and
// sets reaper_status().last_error at each reload of the registrations.
const char *Unfit(const Table &t);

} // namespace wh::leases
