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

// One slot per database with the extension: worker_heartbeat.max_databases
// of them (read when the registry is created: at server start when
// preloaded, else at first use). Capacity() is the number in force.
// Bump when Slot or Registry changes (reaper_registry.cpp static_asserts it).
inline constexpr uint32 kLayoutVersion = 4;
inline constexpr int kEndedSessions = 16;

struct EndedSession {
	int32 pid;
	TimestampTz backend_start;
	TimestampTz ended_at;
};

// A copy of one slot, for reaper_status() and the launcher.
// reaper_status().state of a database whose reaper does not run (besides
// 'not running' and 'stopped'): see src/README.md, "Scale-out".
inline constexpr const char *kStateScheduled = "scheduled";
inline constexpr const char *kStateWaiting = "waiting for a reaper slot";
inline constexpr const char *kStateNoWorker = "no worker slot (max_worker_processes)";
inline constexpr const char *kStateRegistryFull = "registry full (max_databases)";
inline constexpr const char *kStateStarting = "starting";

struct SlotView {
	Oid dboid;
	int32 pid;
	bool stop_requested;
	char state[48];
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
// Slots in the registry (worker_heartbeat.max_databases when it was created).
int Capacity();
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

// --- the budget of reapers and the launcher (scale-out) ---------------------
// A start is reserved under the registry's lock before the background worker
// is registered, so that at most `budget` reapers run or are starting at once
// (budget <= 0: no limit, without preload). A reservation ends when the
// reaper claims its slot, exits, or after kReserveTimeoutUs.
// Starting: a start is reserved but no reaper claimed the slot yet (a first
// look may be on its way out, not seeing an extension still being created).
enum class ReserveResult { Reserved, AlreadyRunning, Starting, Stopped, NoBudget, NoSlot };
ReserveResult ReserveStart(Oid dboid, TimestampTz now, int budget, bool create_slot);
// RegisterDynamicBackgroundWorker failed: shown as kStateNoWorker until a
// reaper claims the slot.
void StartFailed(Oid dboid);
// The database needs a visit now (a start that found no budget): wakes the launcher.
void RequestVisit(Oid dboid, TimestampTz at);
bool LauncherRunning();
void SetLauncher(int32 pid, Latch *latch); // pid 0: gone
void WakeLauncher();
// The launcher's round: reserves starts for the most overdue databases while
// the budget allows (written to out, at most max), asks the longest-idle
// reapers to make room when more are waiting, and returns in *next_due the
// earliest future moment a database without a reaper needs one.
// looks_waiting: databases never looked at (the launcher's list) also want a place.
int PlanStarts(TimestampTz now, int budget, Oid *out, int max, TimestampTz *next_due, int *waiting, int looks_waiting);
// A reaper's pass did something (deaths, releases): it is a busy one.
void NoteWork(Oid dboid, TimestampTz now);
// More databases than the budget and this reaper found nothing to do for
// idle_us: it leaves (the launcher brings one back when the database is due).
bool ShouldLeaveIdle(Oid dboid, TimestampTz now, int64 idle_us, int budget);
// The launcher asked this reaper to give its place to another database.
bool YieldRequested(Oid dboid);
// How the reaper leaves: its slot says when the database needs the next visit.
// orderly (it gave its place away): the next start needs no back-off.
void ReleaseReaperForVisit(Oid dboid, int32 pid, TimestampTz next_visit, bool orderly);
// Databases refused a slot because the registry was full (since server start).
uint64 RefusedCount();

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

// --- the earliest lease expiry (so that a database served in rotation is
// visited when a lease expires, not only every pool_visit_interval) -------
// A leaving reaper's last pass: the earliest expiry in the registered tables
// its snapshot saw (kNever: none; when it cannot tell, a time to look again).
// Applied at commit; a claim applied since BeginPass() is not overwritten.
void LeasesChecked(Oid dboid, TimestampTz earliest_expiry);
// claim_leases() / extend_lease(): a lease held until expires (or now() +
// lease), applied when the transaction commits. Leases set by plain SQL
// UPDATEs are not seen: they wait for a pass (docs/scaleout.md).
void LeaseHeldUntil(Oid dboid, TimestampTz expires);
void LeaseHeldFor(Oid dboid, Datum lease_interval);

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
// The state of a slot without a running reaper is computed at read time
// (scheduled / waiting / no worker slot / not running / stopped).
int Snapshot(SlotView *out, int max);
// True when dboid has a slot.
bool Known(Oid dboid);

} // namespace wh::registry
