// Registered lease tables: registration (with its checks) and the two
// release statements of a reaping pass.
//
// A registered table is one whose rows are leased by workers: its worker
// column holds a worker_id, its expires column the lease deadline (NULL:
// none). Releasing a lease sets both to NULL and applies the table's
// on_release assignments. Each table is released in its own subtransaction,
// as the table's owner, with a short lock_timeout, skipping rows that others
// hold locked: one bad table is logged and skipped, never stops the others,
// and a live worker never waits on a pass for more than a moment.
#pragma once

#include "catalog.hpp"
#include "events.hpp"
#include "pg.hpp"

namespace wh::leases {

struct Registration {
	Oid p_table;
	const char *worker_column;
	const char *expires_column;
	Jsonb *on_release;
};
void Register(const catalog::Extension &ext, const Registration &registration);
bool Unregister(const catalog::Extension &ext, Oid relid);

// The holders whose leases to release, and how they died (for events).
struct Holder {
	const char *worker_id;
	int64 silent_for_us; // < 0: unknown
	int64 latency_us;    // < 0: unknown
};

struct ReleaseOptions {
	const Holder *holders; // release every lease of these workers
	int holder_count;
	bool expired;         // and every lease past its deadline
	bool warn_each_call;  // SQL callers: WARNING per failing table; the reaper logs once per table
	const char *reason;   // details.reason of the leases_released events
};

struct ReleaseResult {
	int released;
	int tables_failed;
};

ReleaseResult ReleaseLeases(const catalog::Extension &ext, const ReleaseOptions &options, events::Batch *batch);

// Workers among candidates that still hold a lease in some registered table.
bool *HoldsAnyLease(const catalog::Extension &ext, Datum *worker_ids, int count);

} // namespace wh::leases
