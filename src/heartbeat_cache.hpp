// The shared-memory heartbeat cache.
//
// Where it lives:
//  * preloaded (shared_preload_libraries, any major): in the main shared
//    memory, sized by worker_heartbeat.max_workers at server start;
//  * not preloaded, PostgreSQL 17 and later: in a DSM segment created on
//    first use through the DSM registry (GetNamedDSMSegment), with the
//    default max_workers entries (the setting is a postmaster one, defined
//    only when preloaded); its LWLock gets a tranche id at run time;
//  * not preloaded before 17: nowhere. Available() is false and every beat
//    goes to the table (heartbeats.cpp: TouchUnchangedRow, else the upsert).
// Both homes hold the same table (core/beat_table.hpp: indices, no pointers,
// so a segment mapped at another address in each backend works alike).
//
// Key: (database, worker_id). A heartbeat whose other arguments hash to the
// digest stored here, from the same session binding and the same installed
// extension, is only a new timestamp: it is stored here and the reaper
// flushes it to worker_heartbeats at the start of its next pass. Everything
// else goes to the table (heartbeats.cpp) and refreshes the entry once that
// transaction commits.
//
// The table has a fixed size (max_workers entries): a worker that finds it
// full keeps writing the table; an id longer than kMaxIdentifierBytes is
// never cached. Everything a transaction changes here (entries it wrote,
// flush marks) goes through the effects queue (shared_state.hpp): applied
// when it commits, dropped when it aborts. A beat is absorbed only while the
// database's reaper flushes (registry::ReaperFlushing). A crash reset
// empties both homes alike (the DSM registry is in the main shared memory).
#pragma once

#include "pg.hpp"

namespace wh::cache
{

void RequestShmem(); // shmem_request_hook
void InitShmem();    // shmem_startup_hook
bool Available();    // preloaded, or attached to (created) the DSM segment on 17+

struct Beat {
	Oid dboid;
	const char *worker_id;
	int worker_id_len;
	Oid function_oid; // the upsert function's OID: changes when the extension is re-created
	uint64 digest;
	int32 bound_pid; // 0 when not session-bound
	TimestampTz at;
};

// True when the beat was absorbed (nothing else to do). *changed (optional)
// is set when the cache holds this worker with other arguments: the row
// needs the full write, a plain touch of its timestamp cannot match.
bool TryFastBeat(const Beat &beat, bool *changed = nullptr);
// After the table was written: refresh the entry when this transaction commits.
void RememberAtCommit(const Beat &beat);
void Forget(Oid dboid, const char *worker_id, int worker_id_len);
void ForgetDatabase(Oid dboid);
// Drops the entries of databases that no longer exist (launcher).
void ForgetDatabasesExcept(const Oid *existing, int count);

// The reaper's side.
struct Pending {
	int count;
	Datum *worker_ids; // text
	Datum *beats;      // timestamptz
};
// Beats of dboid not yet written to the table (palloc'd in the current
// context); marked flushed when the current transaction commits.
Pending CollectUnflushed(Oid dboid);
// Marks the worker dead unless it beat after cutoff. Workers not in the cache
// are left to the table's verdict (returns true).
bool TryMarkDead(Oid dboid, const char *worker_id, int worker_id_len, TimestampTz cutoff);

} // namespace wh::cache
