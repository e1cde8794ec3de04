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

namespace wh::leases
{

// SQLSTATE WH001: a lease token that no longer holds its row.
#define WH_ERRCODE_STALE_LEASE_TOKEN MAKE_SQLSTATE('W', 'H', '0', '0', '1')

struct Assignment {
	const char *column; // quoted
	const char *type;   // format_type_with_typemod
	const char *value;  // text, NULL for SQL NULL
	Oid type_oid;       // set by ParseAssignments only
};

// One registration, as loaded from lease_tables (identifiers quoted).
struct Table {
	Oid relid;
	bool exists;
	Oid owner;
	const char *label; // current qualified name, or the name it was registered under
	// "ONLY schema.table" (quoted), as every statement names the table. ONLY:
	// the statements find rows again by ctid, which is unique within one
	// table, and a registration covers the table's own rows, never those of
	// an inheritance child (a child is registered on its own).
	const char *relation;
	const char *worker_column;   // quoted
	const char *expires_column;  // quoted
	AttrNumber expires_attnum;   // InvalidAttrNumber: the table or the column is gone
	const char *token_column;    // quoted, NULL: none (or a 1.0 catalog)
	const char *attempts_column; // quoted, NULL: none
	const char *order_column;    // quoted, NULL: none
	int32 max_attempts;          // 0: no limit
	Assignment *assignments;     // on_release
	int assignment_count;
	Assignment *exhausted; // on_exhausted
	int exhausted_count;
	// Why the table no longer qualifies (not an ordinary table any more, a
	// managed column gone or of another type): nothing of a pass touches it.
	// NULL: it does.
	const char *unfit;
};

// Every registration (or only relid's, InvalidOid: all), with its
// assignments, in one statement.
Table *LoadTables(const catalog::Extension &ext, int *count, Oid only);
// lock_timeout = pass_lock_timeout, plan_cache_mode = auto (and, when asked, search_path =
// pg_catalog, pg_temp: triggers and casts of the user's table run under it)
// for the statements of a pass, undone by AtEOXact_GUC(true, <the returned
// nest level>).
int EnterPassSettings(bool safe_search_path);

// The two ends of an internal subtransaction (BeginInternalSubTransaction,
// then PG_TRY): commit it, or roll it back from PG_CATCH and take its error
// (in the outer context; FreeErrorData it). Both restore the outer memory
// context and resource owner.
void CommitSubtransaction(MemoryContext outer_context, ResourceOwner outer_owner);
ErrorData *AbandonSubtransaction(MemoryContext outer_context, ResourceOwner outer_owner);

// Runs fn() in an internal subtransaction, committed when fn returns true and
// rolled back when it returns false (*kept tells which). Returns the error
// fn raised, the subtransaction rolled back (in the caller's memory context:
// FreeErrorData it), nullptr when fn returned. fn's SPI results outlive the
// subtransaction only when it is committed (a rollback frees them).
template <typename Fn> ErrorData *TrySubtransaction(bool *kept, Fn fn)
{
	MemoryContext outer_context = CurrentMemoryContext;
	ResourceOwner outer_owner = CurrentResourceOwner;
	ErrorData *volatile error = nullptr;
	volatile bool keep = false;
	BeginInternalSubTransaction(nullptr);
	MemoryContextSwitchTo(outer_context);
	PG_TRY();
	{
		keep = fn();
		if (keep) {
			CommitSubtransaction(outer_context, outer_owner);
		} else {
			RollbackAndReleaseCurrentSubTransaction();
			MemoryContextSwitchTo(outer_context);
			CurrentResourceOwner = outer_owner;
		}
	}
	PG_CATCH();
	{
		keep = false;
		error = AbandonSubtransaction(outer_context, outer_owner);
	}
	PG_END_TRY();
	*kept = keep;
	return error;
}

// The registration of relid, NULL when it is not registered. Read as the
// extension's owner (the fencing functions run with the caller's rights).
const Table *FindTable(const catalog::Extension &ext, Oid relid);

// A JSON object of column -> value, as text (NULL for JSON null), each column
// checked to exist (42703, the hint names the parameter); types filled in.
Assignment *ParseAssignments(Oid relid, Jsonb *object, const char *parameter, int *count);

// NOTIFY on the table's own channel "worker_heartbeat:<schema>.<table>" with
// {"event":"leases_released","count":n} (sent at commit; not when the name
// is too long for a channel).
void NotifyQueue(Oid relid, int count);

struct Registration {
	Oid p_table;
	const char *worker_column;
	const char *expires_column;
	Jsonb *on_release;
	// 1.1 (fenced leases); all NULL / 0 when called through the 1.0 declaration.
	bool fenced_signature;       // the 1.1 declaration: the catalog has the 1.1 columns
	const char *token_column;    // bigint, NULL: none
	const char *attempts_column; // integer or bigint, NULL: none
	bool has_max_attempts;       // p_max_attempts was not NULL
	int32 max_attempts;          // 0: no limit
	Jsonb *on_exhausted;         // NULL: none
	const char *order_column;    // NULL: the primary key
};
void Register(const catalog::Extension &ext, const Registration &registration);
bool Unregister(const catalog::Extension &ext, Oid relid);

// The holders whose leases to release, and how they died (for events).
struct Holder {
	const char *worker_id;
	int64 silent_for_us; // < 0: unknown
	int64 latency_us;    // < 0: unknown
};

// qsort / bsearch order of Holder by worker_id.
int CompareHolders(const void *a, const void *b);

struct ReleaseOptions {
	const Holder *holders; // release every lease of these workers
	int holder_count;
	bool expired;        // and every lease past its deadline
	bool warn_each_call; // SQL callers: WARNING per failing table; the reaper logs once per table
	const char *reason;  // details.reason of the leases_released events
};

struct ReleaseResult {
	int released;
	int tables_failed;        // tables skipped, or with rows skipped (below): the reaper retries soon
	const char *last_failure; // the last table skipped, and why; NULL: none
	int skipped;              // leases left because another transaction held their row locked
};

ReleaseResult ReleaseLeases(const catalog::Extension &ext, const ReleaseOptions &options, events::Batch *batch);

// Workers among candidates that still hold a lease in some registered table
// (each table read as its owner, restricted, with pass_lock_timeout; a table
// that cannot be read counts as holding every candidate).
bool *HoldsAnyLease(const catalog::Extension &ext, Datum *worker_ids, int count);

} // namespace wh::leases
