// The reaper registry: one slot per database, in shared memory, shared by
// the reapers, the launcher and every backend.
//
// It exists whether or not the library is preloaded: when it is not, the
// first backend that needs it carves it out of the server's spare shared
// memory (ShmemInitStruct after startup), so hosted PostgreSQL without
// shared_preload_libraries still gets "never two reapers", a reaper status,
// and sessions that wake their reaper when they end.
//
// Every field of a slot is read and written under the registry's spinlock,
// in the short functions below; nothing in them can ereport.
//
// The segment is versioned: its name carries kLayoutVersion and its size, and
// its header a magic number checked on every attach, so a new build of the
// library loaded into a running server gets a segment of its own (or a clear
// ERROR), never another build's layout.
//
// Changes made by a transaction (pass counters, the death schedule, the
// ended sessions a pass consumed, wake-ups) go through the effects queue
// (shared_state.hpp): applied when it commits, dropped when it aborts.
#pragma once

#include "core/death_schedule.hpp"
#include "pg.hpp"

extern "C" {
#include "storage/latch.h"
}

namespace wh::registry
{

// One slot per database with the extension (a named constant: scale-out
// beyond it is a later change of this number or of the storage).
inline constexpr int kSlots = 32;
// Bump when Slot or Registry changes (reaper_registry.cpp static_asserts it).
inline constexpr uint32 kLayoutVersion = 2;
inline constexpr int kEndedSessions = 16;

struct EndedSession {
	int32 pid;
	TimestampTz backend_start;
	TimestampTz ended_at;
};

// A copy of one slot, for reaper_status() and the launcher.
struct SlotView {
	Oid dboid;
	int32 pid;
	bool stop_requested;
	char state[32];
	TimestampTz started_at;
	TimestampTz last_pass_at;
	double last_pass_ms;
	uint64 passes;
	uint64 workers_declared_dead;
	uint64 leases_released;
	char last_error[192];
	uint64 leases_released_by_sql; // stop_worker(), release_dead_worker_leases()
};

struct PassRecord {
	TimestampTz at;
	double duration_ms;
	uint64 workers_declared_dead;
	uint64 leases_released;
};

Size ShmemSize();
// Creates the registry on first use (at startup when preloaded). Errors with
// a hint to preload the library if the server has no spare shared memory.
void Attach();

// --- reapers -------------------------------------------------------------
enum class ClaimResult { Claimed, AlreadyRunning, NoFreeSlot };
ClaimResult ClaimForReaper(Oid dboid, int32 pid, Latch *latch);
// forget: the database or the extension is gone, drop the slot entirely.
void ReleaseReaper(Oid dboid, int32 pid, bool forget);
bool StopRequested(Oid dboid);
void SetState(Oid dboid, const char *state);
// Clipped to the slot on a character boundary (pg_mbcliplen).
void SetLastError(Oid dboid, const char *message);
// Applied when the transaction commits. From the database's reaper: a pass
// (passes, last_pass_*, deaths, leases_released). From any other session
// (stop_worker(), release_dead_worker_leases()): not a pass; its deaths count
// in workers_declared_dead and its releases in leases_released_by_sql.
void RecordPass(Oid dboid, const PassRecord &pass);
// The reaper's pass failed (its transaction aborted): until one commits, the
// reaper is not flushing heartbeats.
void PassFailed(Oid dboid);
// A reaper runs, is not stopped, and its passes commit (it flushes the
// heartbeat cache): only then may a heartbeat stay in shared memory.
bool ReaperFlushing(Oid dboid);

// --- starting and stopping ------------------------------------------------
bool ReaperRunning(Oid dboid);
// True (and notes the attempt) when this database has no running reaper, the
// operator did not stop it, and no start was attempted in the last few seconds.
// create_slot: also for a database the registry does not know yet.
bool ShouldStartReaper(Oid dboid, TimestampTz now, bool create_slot = true);
// Drops the slot of a database without the extension (no reaper running).
void ForgetIdleSlot(Oid dboid);
// Drops the slots of databases that no longer exist (launcher).
void ForgetDatabasesExcept(const Oid *existing, int count);
void ForgetStartAttempt(Oid dboid);
// Returns whether a reaper was running; it will exit at its next wake-up.
bool RequestStop(Oid dboid);
void ClearStop(Oid dboid);
// Sets the reaper's latch; inside a transaction, when it commits.
void Wake(Oid dboid);

// --- the schedule of the next overdue check (see core/death_schedule.hpp) --
// A check computes the next deadline from its snapshot; a change that its
// snapshot cannot see must not be overwritten by it. So:
//  * WorkerBecameLive, InvalidateDeathSchedule and Wake called inside a
//    transaction take effect when it commits (after its rows are visible),
//    and are dropped if it aborts;
//  * each applied change bumps a generation; the reaper reads it with
//    BeginPass() before taking its snapshot, and DeathChecked() replaces the
//    schedule only if no change came in between (otherwise, and for passes
//    run without BeginPass(), it can only bring the next check closer).
void BeginPass(Oid dboid);
bool DeathCheckDue(Oid dboid, TimestampTz now);
void DeathChecked(Oid dboid, TimestampTz next_deadline, int64 shortest_dead_after_us);
void WorkerBecameLive(Oid dboid, TimestampTz now);
void InvalidateDeathSchedule(Oid dboid);

// --- heartbeats waiting in shared memory -----------------------------------
void NoteHeartbeatsPending(Oid dboid);
// Takes the flag; put back if the transaction aborts.
bool TakeHeartbeatsPending(Oid dboid);

// --- sessions that ended ----------------------------------------------------
void NoteSessionEnded(Oid dboid, int32 pid, TimestampTz backend_start, TimestampTz ended_at);
// Copies out the sessions that ended; they leave the ring when the
// transaction commits (an aborted pass leaves them for the next one).
// *check_all is set when some were lost (ring full) or a full check was asked
// for; that request is put back if the transaction aborts.
int TakeEndedSessions(Oid dboid, EndedSession *out, int max, bool *check_all);
// The same without taking them: sessions that ended while a pass was running
// stay for the next pass.
int PeekEndedSessions(Oid dboid, EndedSession *out, int max);
void RequestSessionCheck(Oid dboid);

// --- views -------------------------------------------------------------------
int Snapshot(SlotView *out, int max);

} // namespace wh::registry
