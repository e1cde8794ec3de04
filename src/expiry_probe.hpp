// The idle pass's one statement: which registered tables have a lease past
// its deadline (only those get a release statement), and whether the
// registrations changed since they were loaded.
//
// A pass with no dead worker to release used to run, per registered table, a
// subtransaction with its settings and a release statement, plus the
// statement that loads the registrations. On a quiet fleet all of them find
// nothing, and on a quiet machine each costs milliseconds of cold caches. The
// probe asks all of it in one statement, against registrations kept between
// passes (reloaded when the probe's fingerprint of lease_tables changes, or an
// invalidation touches a registered table, lease_tables or a schema).
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

} // namespace wh::leases
