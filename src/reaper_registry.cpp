#include "reaper_registry.hpp"

#include "core/rotation.hpp"
#include "settings_scaleout.hpp"
#include "shared_state.hpp"

#include <cstring>
#include <type_traits>

extern "C" {
#include "access/xact.h"
#include "utils/fmgrprotos.h"
#include "mb/pg_wchar.h"
#include "storage/ipc.h"
#include "storage/procarray.h"
}

namespace wh::registry
{

namespace
{

constexpr uint32 kMagic = 0x57485247; // "WHRG"
// A start reserved for a reaper that never claimed its slot (the postmaster
// could not fork it, it failed before connecting) is given back after this.
constexpr int64 kReserveTimeoutUs = 10 * USECS_PER_SEC;
// A reaper that just left holds its background worker slot until the
// postmaster has seen it exit: a start that finds none is retried soon
// (core::Rotation::kNoWorkerRetryUs), and is shown as 'no worker slot' only
// when it keeps failing.
constexpr int64 kNoWorkerRetryUs = core::Rotation::kNoWorkerRetryUs;
constexpr int64 kNoWorkerShownAfterUs = 2 * USECS_PER_SEC;

struct Slot {
	Oid dboid; // InvalidOid: free
	int32 pid; // running reaper, 0: none
	Latch *latch;
	bool stop_requested;
	bool pass_failing; // the reaper's last pass aborted
	bool cannot_flush; // read-only or standby
	TimestampTz last_start_attempt;
	char state[48];
	TimestampTz started_at;
	TimestampTz last_pass_at;
	double last_pass_ms;
	uint64 passes;
	uint64 workers_declared_dead;
	uint64 leases_released;
	uint64 leases_released_by_sql;
	char last_error[192];
	core::DeathSchedule schedule;
	uint64 schedule_generation; // bumped by every change applied to schedule
	int64 shortest_dead_after_us;
	bool heartbeats_pending;
	bool session_check_requested;
	int ended_count;
	EndedSession ended[kEndedSessions];
	// scale-out
	TimestampTz start_reserved_at; // a start counted in the budget, not claimed yet
	TimestampTz visit_due;         // the next visit of a database without a reaper (0: none)
	TimestampTz last_work_at;      // the reaper's start or its last pass that did something
	TimestampTz failed_since;      // no background worker slot at every attempt since (0: none)
	bool yield_requested;          // the launcher wants this reaper's place
	bool asked_while_starting;     // start_reaper() came while a first look was starting
	// The earliest lease expiry in the database's registered tables, as
	// the last pass of a leaving reaper saw it, pulled in by claim_leases()
	// and extend_lease() at commit (same rules as schedule: Checked /
	// EarliestAt, with a generation of its own). kNever: no lease held.
	core::DeathSchedule leases;
	uint64 leases_generation;
};

// The header; the slots are a second shared structure of nslots entries.
struct Registry {
	uint32 magic;
	uint32 layout_version;
	uint64 size; // sizeof(Registry)
	uint64 slot_size;
	int32 nslots;
	slock_t mutex;
	int32 launcher_pid;
	Latch *launcher_latch;
	uint64 refused; // databases refused a slot (registry full)
};

// Shared memory holds these as raw bytes, set with memset/memcpy.
static_assert(std::is_trivially_copyable<Slot>::value && std::is_standard_layout<Registry>::value);
static_assert(sizeof(SlotView::state) == sizeof(Slot::state) &&
              sizeof(SlotView::last_error) == sizeof(Slot::last_error));
#if SIZEOF_VOID_P == 8
// A change of the layout must bump kLayoutVersion; then update these sizes.
static_assert(kLayoutVersion == 4 && sizeof(EndedSession) == 24 && sizeof(Slot) == 800,
              "the registry layout changed: bump kLayoutVersion and update this check");
#endif

Registry *registry = nullptr;
Slot *slots = nullptr;
int nslots = 0;

// for (Slot &slot : AllSlots())
struct SlotRange {
	Slot *b, *e;
	Slot *begin() const { return b; }
	Slot *end() const { return e; }
};
SlotRange AllSlots()
{
	return SlotRange{slots, slots + nslots};
}
// Set in the reaper process once it owns its database's slot.
bool this_process_is_reaper = false;

// Lock guard for the spinlock. Nothing inside may ereport (spinlocks are not
// released by error recovery), so the guarded blocks below only copy fields.
class Locked
{
  public:
	Locked() { SpinLockAcquire(&registry->mutex); }
	~Locked() { SpinLockRelease(&registry->mutex); }
	Locked(const Locked &) = delete;
	Locked &operator=(const Locked &) = delete;
};

Slot *Find(Oid dboid)
{
	for (Slot &slot : AllSlots())
		if (slot.dboid == dboid)
			return &slot;
	return nullptr;
}

Slot *FindOrCreate(Oid dboid)
{
	if (Slot *slot = Find(dboid))
		return slot;
	for (Slot &slot : AllSlots())
		if (slot.dboid == InvalidOid) {
			memset(static_cast<void *>(&slot), 0, sizeof slot);
			slot.dboid = dboid;
			slot.schedule.Invalidate();
			slot.leases.Invalidate();
			strlcpy(slot.state, "not running", sizeof slot.state);
			return &slot;
		}
	registry->refused++;
	return nullptr;
}

bool ReaperAlive(const Slot &slot)
{
	return slot.pid != 0;
}

bool StartReserved(const Slot &slot, TimestampTz now)
{
	return slot.start_reserved_at != 0 && now - slot.start_reserved_at < kReserveTimeoutUs;
}

// What the scheduling policy (core/rotation.hpp) reads of a slot. Caller
// holds the lock.
core::DatabaseState PolicyState(const Slot &slot, TimestampTz now)
{
	core::DatabaseState db;
	db.in_use = slot.dboid != InvalidOid;
	db.reaper_running = ReaperAlive(slot);
	db.start_reserved = StartReserved(slot, now);
	db.stopped = slot.stop_requested;
	// an ended session, beats only in shared memory: now
	db.wants_now = slot.session_check_requested || slot.ended_count > 0 || slot.heartbeats_pending;
	db.death_check = slot.schedule.NextCheck();
	db.lease_due = slot.leases.NextCheck();
	db.visit_due = slot.visit_due;
	db.last_start_attempt = slot.last_start_attempt;
	db.start_failing = slot.failed_since != 0;
	db.yield_requested = slot.yield_requested;
	db.can_be_asked = slot.latch != nullptr;
	db.passed_since_start = slot.passes > 0 && slot.last_pass_at >= slot.started_at;
	db.last_work_at = slot.last_work_at;
	return db;
}

int64 DueAt(const Slot &slot)
{
	return core::Rotation::DueAt(PolicyState(slot, 0));
}

// Copies a NUL-terminated string field out of shared memory, terminated
// whatever the memory holds.
template <size_t N> void CopyField(char (&to)[N], const char (&from)[N])
{
	memcpy(to, from, N);
	to[N - 1] = '\0';
}

// --- effects applied at the end of the transaction (see shared_state.hpp) ------

// The generation read by BeginPass() in the current transaction.
bool pass_generation_valid = false;
Oid pass_dboid = InvalidOid;
uint64 pass_generation = 0;
uint64 pass_leases_generation = 0;

void ApplyEndOfPass(const effects::Effect &)
{
	pass_generation_valid = false;
}

void ApplyBecameLive(const effects::Effect &e)
{
	Locked lock;
	if (Slot *slot = Find(e.dboid)) {
		slot->schedule_generation++;
		if (slot->shortest_dead_after_us > 0)
			slot->schedule.EarliestAt(e.i[0] + slot->shortest_dead_after_us);
		else
			slot->schedule.Invalidate();
	}
}

// i[0] the earliest lease expiry a claim_leases() / extend_lease() committed.
// A database without a reaper due sooner wakes the launcher.
void ApplyLeaseHeld(const effects::Effect &e)
{
	bool wake = false;
	{
		Locked lock;
		if (Slot *slot = Find(e.dboid)) {
			slot->leases_generation++;
			wake = !ReaperAlive(*slot) && e.i[0] < slot->leases.NextCheck();
			slot->leases.EarliestAt(e.i[0]);
		}
	}
	if (wake)
		WakeLauncher();
}

// A pass's result for a schedule: our snapshot saw every change applied
// before BeginPass(); one applied since (the generation moved) may be
// invisible to it and must not be lost, so the result can then only bring
// the schedule closer.
void ApplyChecked(core::DeathSchedule *schedule, uint64 generation_now, bool generation_valid, int64 generation_then,
                  TimestampTz next)
{
	if (generation_valid && generation_now == static_cast<uint64>(generation_then))
		schedule->Checked(next);
	else
		schedule->EarliestAt(next);
}

// i[0] earliest expiry, i[1] generation valid, i[2] generation.
void ApplyLeasesChecked(const effects::Effect &e)
{
	Locked lock;
	if (Slot *slot = Find(e.dboid))
		ApplyChecked(&slot->leases, slot->leases_generation, e.i[1] != 0, e.i[2], e.i[0]);
}

void ApplyInvalidate(const effects::Effect &e)
{
	Locked lock;
	if (Slot *slot = Find(e.dboid)) {
		slot->schedule_generation++;
		slot->schedule.Invalidate();
	}
}

void ApplyWake(const effects::Effect &e)
{
	Latch *latch = nullptr;
	{
		Locked lock;
		if (Slot *slot = Find(e.dboid))
			latch = slot->latch;
	}
	if (latch)
		SetLatch(latch);
}

// i[0] next deadline, i[1] shortest dead_after, i[2] generation valid, i[3] generation.
void ApplyDeathChecked(const effects::Effect &e)
{
	Locked lock;
	if (Slot *slot = FindOrCreate(e.dboid)) {
		ApplyChecked(&slot->schedule, slot->schedule_generation, e.i[2] != 0, e.i[3], e.i[0]);
		slot->shortest_dead_after_us = e.i[1];
	}
}

// i[0] at, f duration, i[1] deaths, i[2] released, i[3] pid of the reaper (0: a session).
void ApplyPass(const effects::Effect &e)
{
	Locked lock;
	Slot *slot = Find(e.dboid);
	if (!slot)
		return;
	slot->workers_declared_dead += static_cast<uint64>(e.i[1]);
	if (e.i[3] != 0 && slot->pid == e.i[3]) {
		slot->last_pass_at = e.i[0];
		slot->last_pass_ms = e.f;
		slot->passes++;
		slot->leases_released += static_cast<uint64>(e.i[2]);
		slot->pass_failing = false;
	} else {
		slot->leases_released_by_sql += static_cast<uint64>(e.i[2]);
	}
}

void ApplyHeartbeatsPendingBack(const effects::Effect &e)
{
	Locked lock;
	if (Slot *slot = Find(e.dboid))
		slot->heartbeats_pending = true;
}

void ApplySessionCheckBack(const effects::Effect &e)
{
	Locked lock;
	if (Slot *slot = Find(e.dboid))
		slot->session_check_requested = true;
}

// i[0] pid, i[1] backend start, i[2] ended at: leaves the ring.
void ApplyEndedConsumed(const effects::Effect &e)
{
	Locked lock;
	Slot *slot = Find(e.dboid);
	if (!slot)
		return;
	int n = Min(Max(slot->ended_count, 0), kEndedSessions);
	int keep = 0;
	bool removed = false;
	for (int i = 0; i < n; ++i) {
		const EndedSession &s = slot->ended[i];
		if (!removed && s.pid == e.i[0] && s.backend_start == e.i[1] && s.ended_at == e.i[2]) {
			removed = true;
			continue;
		}
		slot->ended[keep++] = s;
	}
	slot->ended_count = keep;
}

effects::Effect MakeEffect(effects::ApplyFn apply, core::EffectWhen when, Oid dboid)
{
	effects::Effect e;
	memset(&e, 0, sizeof e);
	e.apply = apply;
	e.when = when;
	e.dboid = dboid;
	return e;
}

// Queues a schedule change or a wake-up, merged with the same change queued
// earlier by this (sub)transaction.
void QueueChange(effects::ApplyFn apply, Oid dboid, TimestampTz at)
{
	if (effects::Effect *earlier = effects::FindMergeable(apply, dboid)) {
		if (at < earlier->i[0])
			earlier->i[0] = at;
		return;
	}
	effects::Effect e = MakeEffect(apply, core::EffectWhen::Commit, dboid);
	e.i[0] = at;
	effects::Queue(e);
}

} // namespace

Size ShmemSize()
{
	return add_size(MAXALIGN(sizeof(Registry)),
	                MAXALIGN(mul_size(sizeof(Slot), static_cast<Size>(Max(settings::max_databases, 1)))));
}

int Capacity()
{
	Attach();
	return nslots;
}

void Attach()
{
	// The postmaster runs the shared-memory startup hook again after a crash
	// reset, with a new segment: there the old pointer must not be kept.
	if (registry && IsUnderPostmaster)
		return;
	// The layout is in the names: another build's registry is another segment.
	// The header's name does not carry the number of slots: every backend
	// finds the same registry whatever max_databases says in it (without
	// preload the setting may change after the registry was made).
	char name[SHMEM_INDEX_KEYSIZE];
	snprintf(name, sizeof name, "worker_heartbeat registry v%u/%zu/%zu", kLayoutVersion, sizeof(Registry),
	         sizeof(Slot));
	char slots_name[SHMEM_INDEX_KEYSIZE];
	snprintf(slots_name, sizeof slots_name, "worker_heartbeat registry v%u slots", kLayoutVersion);
	bool found = false;
	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	auto *shared = static_cast<Registry *>(ShmemInitStruct(name, MAXALIGN(sizeof(Registry)), &found));
	if (!found) {
		memset(static_cast<void *>(shared), 0, sizeof *shared);
		SpinLockInit(&shared->mutex);
		shared->magic = kMagic;
		shared->layout_version = kLayoutVersion;
		shared->size = sizeof(Registry);
		shared->slot_size = sizeof(Slot);
		shared->nslots = Max(settings::max_databases, 1);
	}
	bool ours = shared->magic == kMagic && shared->layout_version == kLayoutVersion &&
	            shared->size == sizeof(Registry) && shared->slot_size == sizeof(Slot) && shared->nslots > 0;
	Slot *shared_slots = nullptr;
	if (ours) {
		bool slots_found = false;
		Size bytes = mul_size(sizeof(Slot), static_cast<Size>(shared->nslots));
		// Without preload this may fail for want of spare shared memory: a
		// clear ERROR ("out of shared memory"), the header stays and the
		// next attempt asks again. errfinish() zeroed InterruptHoldoffCount
		// before the jump; the lock we still hold expects its count back.
		uint32 holdoff = InterruptHoldoffCount;
		PG_TRY();
		{
			shared_slots = static_cast<Slot *>(ShmemInitStruct(slots_name, bytes, &slots_found));
		}
		PG_CATCH();
		{
			InterruptHoldoffCount = holdoff;
			LWLockRelease(AddinShmemInitLock);
			PG_RE_THROW();
		}
		PG_END_TRY();
		if (!slots_found)
			memset(static_cast<void *>(shared_slots), 0, bytes);
	}
	LWLockRelease(AddinShmemInitLock);
	if (!ours)
		ereport(ERROR, (errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
		                errmsg("worker_heartbeat: the shared memory of the reaper registry was made by another build "
		                       "of the library"),
		                errdetail("Found magic %08x, layout %u, %llu bytes; this build uses layout %u, %zu bytes.",
		                          shared->magic, shared->layout_version, static_cast<unsigned long long>(shared->size),
		                          kLayoutVersion, sizeof(Registry)),
		                errhint("Restart the server after installing a new version of worker_heartbeat.")));
	slots = shared_slots;
	nslots = shared->nslots;
	registry = shared;
}

ClaimResult ClaimForReaper(Oid dboid, int32 pid, Latch *latch)
{
	Attach();
	Locked lock;
	Slot *slot = FindOrCreate(dboid);
	if (!slot)
		return ClaimResult::NoFreeSlot;
	if (ReaperAlive(*slot) && slot->pid != pid)
		return ClaimResult::AlreadyRunning;
	// stop_requested stays: a stop_reaper() that came before we got here wins,
	// and the main loop exits at once. start_reaper() clears it first.
	slot->pid = pid;
	slot->latch = latch;
	slot->started_at = GetCurrentTimestamp();
	slot->schedule.Invalidate();
	slot->session_check_requested = true;
	slot->pass_failing = false;
	slot->cannot_flush = false;
	slot->last_error[0] = '\0';
	slot->start_reserved_at = 0;
	slot->failed_since = 0;
	slot->yield_requested = false;
	slot->visit_due = 0;
	slot->last_work_at = slot->started_at;
	strlcpy(slot->state, "starting", sizeof slot->state);
	this_process_is_reaper = true;
	return ClaimResult::Claimed;
}

void ReleaseReaper(Oid dboid, int32 pid, bool forget)
{
	if (!registry)
		return;
	WakeLauncher(); // our place in the budget is free
	Locked lock;
	Slot *slot = Find(dboid);
	if (!slot || slot->pid != pid)
		return;
	if (forget) {
		memset(static_cast<void *>(slot), 0, sizeof *slot);
		return;
	}
	slot->pid = 0;
	slot->latch = nullptr;
	slot->yield_requested = false;
	strlcpy(slot->state, slot->stop_requested ? "stopped" : "not running", sizeof slot->state);
}

bool StopRequested(Oid dboid)
{
	Attach();
	Locked lock;
	Slot *slot = Find(dboid);
	return slot && slot->stop_requested;
}

void SetState(Oid dboid, const char *state)
{
	Attach();
	bool cannot_flush = strcmp(state, "read-only") == 0 || strcmp(state, "standby") == 0;
	Locked lock;
	if (Slot *slot = Find(dboid)) {
		strlcpy(slot->state, state, sizeof slot->state);
		slot->cannot_flush = cannot_flush;
	}
}

void SetLastError(Oid dboid, const char *message)
{
	Attach();
	char clipped[sizeof(Slot::last_error)];
	int len = static_cast<int>(strlen(message));
	// Never cut a multibyte character: reaper_status() must stay readable.
	len = pg_mbcliplen(message, len, static_cast<int>(sizeof clipped) - 1);
	memcpy(clipped, message, len);
	clipped[len] = '\0';
	Locked lock;
	if (Slot *slot = Find(dboid))
		memcpy(slot->last_error, clipped, sizeof clipped);
}

void RecordPass(Oid dboid, const PassRecord &pass)
{
	Attach();
	effects::Effect e = MakeEffect(ApplyPass, core::EffectWhen::Commit, dboid);
	e.i[0] = pass.at;
	e.f = pass.duration_ms;
	e.i[1] = static_cast<int64>(pass.workers_declared_dead);
	e.i[2] = static_cast<int64>(pass.leases_released);
	e.i[3] = this_process_is_reaper ? MyProcPid : 0;
	if (e.i[3] == 0 && e.i[1] == 0 && e.i[2] == 0)
		return; // nothing a session's call would count
	effects::Queue(e);
}

void PassFailed(Oid dboid)
{
	Attach();
	Locked lock;
	if (Slot *slot = Find(dboid))
		slot->pass_failing = true;
}

bool ReaperFlushing(Oid dboid)
{
	Attach();
	Locked lock;
	Slot *slot = Find(dboid);
	return slot && ReaperAlive(*slot) && !slot->stop_requested && !slot->pass_failing && !slot->cannot_flush;
}

bool ReaperRunning(Oid dboid)
{
	Attach();
	Locked lock;
	Slot *slot = Find(dboid);
	return slot && ReaperAlive(*slot);
}

bool ShouldStartReaper(Oid dboid, TimestampTz now, bool create_slot)
{
	Attach();
	bool wake_launcher = false;
	{
		Locked lock;
		Slot *slot = create_slot ? FindOrCreate(dboid) : Find(dboid);
		// With a launcher, it alone starts reapers (within max_reapers): a
		// database it does not know yet is due now (its schedule is unknown).
		// Only when the database is due: a heartbeat in a database served in
		// rotation must not call for a reaper it does not need.
		if (slot && registry->launcher_pid != 0)
			wake_launcher =
			    !ReaperAlive(*slot) && !StartReserved(*slot, now) && !slot->stop_requested && DueAt(*slot) <= now &&
			    (slot->last_start_attempt == 0 || now - slot->last_start_attempt >= core::Rotation::kStartBackoffUs);
	}
	if (wake_launcher)
		WakeLauncher();
	if (registry->launcher_pid != 0)
		return false;
	Locked lock;
	Slot *slot = create_slot ? FindOrCreate(dboid) : Find(dboid);
	if (!slot || ReaperAlive(*slot) || StartReserved(*slot, now) || slot->stop_requested)
		return false;
	if (slot->last_start_attempt != 0 && now - slot->last_start_attempt < core::Rotation::kStartBackoffUs)
		return false;
	slot->last_start_attempt = now;
	return true;
}

void ForgetIdleSlot(Oid dboid)
{
	Attach();
	{
		Locked lock;
		Slot *slot = Find(dboid);
		if (slot && slot->pid == 0) {
			if (slot->asked_while_starting) {
				// CREATE EXTENSION ran while this look was starting: its
				// transaction may commit after we looked. Look again soon.
				slot->asked_while_starting = false;
				slot->start_reserved_at = 0;
				slot->visit_due = GetCurrentTimestamp() + kNoWorkerRetryUs;
				slot->last_start_attempt = 0;
			} else
				memset(static_cast<void *>(slot), 0, sizeof *slot);
		}
	}
}

void ForgetDatabasesExcept(const Oid *existing, int count)
{
	Attach();
	Locked lock;
	for (Slot &slot : AllSlots()) {
		if (slot.dboid == InvalidOid || slot.pid != 0)
			continue;
		bool exists = false;
		for (int i = 0; i < count && !exists; ++i)
			exists = existing[i] == slot.dboid;
		if (!exists)
			memset(static_cast<void *>(&slot), 0, sizeof slot);
	}
}

void ForgetStartAttempt(Oid dboid)
{
	Attach();
	Locked lock;
	if (Slot *slot = Find(dboid))
		slot->last_start_attempt = 0;
}

bool RequestStop(Oid dboid)
{
	Attach();
	Latch *latch = nullptr;
	bool running = false;
	{
		Locked lock;
		Slot *slot = FindOrCreate(dboid);
		if (!slot)
			return false;
		slot->stop_requested = true;
		running = ReaperAlive(*slot);
		latch = slot->latch;
	}
	if (latch)
		SetLatch(latch);
	return running;
}

void ClearStop(Oid dboid)
{
	Attach();
	Locked lock;
	if (Slot *slot = Find(dboid)) {
		slot->stop_requested = false;
		slot->last_start_attempt = 0;
	}
}

void Wake(Oid dboid)
{
	Attach();
	QueueChange(ApplyWake, dboid, 0);
}

ReserveResult ReserveStart(Oid dboid, TimestampTz now, int budget, bool create_slot)
{
	Attach();
	Locked lock;
	Slot *slot = create_slot ? FindOrCreate(dboid) : Find(dboid);
	if (!slot)
		return ReserveResult::NoSlot;
	if (ReaperAlive(*slot))
		return ReserveResult::AlreadyRunning;
	if (StartReserved(*slot, now)) {
		slot->asked_while_starting = true; // see ForgetIdleSlot
		return ReserveResult::Starting;
	}
	if (slot->stop_requested)
		return ReserveResult::Stopped;
	if (budget > 0) {
		int running = 0;
		for (const Slot &other : AllSlots())
			if (other.dboid != InvalidOid && (ReaperAlive(other) || StartReserved(other, now)))
				running++;
		if (running >= budget)
			return ReserveResult::NoBudget;
	}
	// Not an attempt for the back-off (ShouldStartReaper and PlanStarts note
	// theirs): a start asked for by SQL, or a first look, is not a retry.
	slot->start_reserved_at = now;
	return ReserveResult::Reserved;
}

void StartFailed(Oid dboid)
{
	Attach();
	Locked lock;
	if (Slot *slot = Find(dboid)) {
		slot->start_reserved_at = 0;
		if (slot->failed_since == 0)
			slot->failed_since = GetCurrentTimestamp();
	}
}

void RequestVisit(Oid dboid, TimestampTz at)
{
	Attach();
	{
		Locked lock;
		Slot *slot = Find(dboid);
		if (!slot)
			return;
		if (slot->visit_due == 0 || at < slot->visit_due)
			slot->visit_due = at;
		slot->last_start_attempt = 0;
	}
	WakeLauncher();
}

bool LauncherRunning()
{
	Attach();
	Locked lock;
	return registry->launcher_pid != 0;
}

void SetLauncher(int32 pid, Latch *latch)
{
	Attach();
	Locked lock;
	registry->launcher_pid = pid;
	registry->launcher_latch = latch;
}

void WakeLauncher()
{
	if (!registry)
		return;
	Latch *latch = nullptr;
	{
		Locked lock;
		latch = registry->launcher_latch;
	}
	if (latch)
		SetLatch(latch);
}

int PlanStarts(TimestampTz now, int budget, Oid *out, int max, TimestampTz *next_due, int *waiting, int looks_waiting)
{
	Attach();
	int starts[core::Rotation::kMaxKept];
	int yields[core::Rotation::kMaxYieldsPerRound];
	Latch *wake[core::Rotation::kMaxYieldsPerRound];
	core::Rotation::Plan plan;
	{
		Locked lock;
		// The decision is core::Rotation's (src/core/rotation.hpp); here it
		// is applied: starts reserved, reapers asked to leave.
		plan = core::Rotation::Decide(
		    nslots, [&](int i) { return PolicyState(slots[i], now); }, now, budget, Min(max, core::Rotation::kMaxKept),
		    looks_waiting, starts, yields);
		for (int i = 0; i < plan.starts; ++i) {
			Slot &slot = slots[starts[i]];
			slot.start_reserved_at = now;
			slot.last_start_attempt = now;
			out[i] = slot.dboid;
		}
		for (int i = 0; i < plan.yields; ++i) {
			slots[yields[i]].yield_requested = true;
			wake[i] = slots[yields[i]].latch;
		}
	}
	for (int i = 0; i < plan.yields; ++i)
		SetLatch(wake[i]);
	*next_due = plan.next_due;
	*waiting = plan.waiting;
	return plan.starts;
}

void NoteWork(Oid dboid, TimestampTz now)
{
	Attach();
	Locked lock;
	if (Slot *slot = Find(dboid))
		slot->last_work_at = now;
}

bool ShouldLeaveIdle(Oid dboid, TimestampTz now, int64 idle_us, int budget)
{
	Attach();
	Locked lock;
	if (registry->launcher_pid == 0)
		return false;
	Slot *slot = Find(dboid);
	if (!slot)
		return false;
	int databases = 0;
	for (const Slot &other : AllSlots())
		if (other.dboid != InvalidOid && !other.stop_requested)
			databases++;
	return core::Rotation::ShouldLeaveIdle(PolicyState(*slot, now), databases, now, idle_us, budget);
}

bool YieldRequested(Oid dboid)
{
	Attach();
	Locked lock;
	Slot *slot = Find(dboid);
	return slot && slot->yield_requested;
}

void ReleaseReaperForVisit(Oid dboid, int32 pid, TimestampTz next_visit, bool orderly)
{
	if (!registry)
		return;
	{
		Locked lock;
		Slot *slot = Find(dboid);
		if (slot && slot->pid == pid) {
			slot->visit_due = next_visit;
			// A lease expiry already past was this reaper's to release (a
			// table that failed comes back with next_visit): not due again.
			if (slot->leases.NextCheck() <= GetCurrentTimestamp())
				slot->leases.Checked(next_visit);
			// Left in good order (gave its place): no back-off. Any other exit
			// (terminated, crashed, its database wanted): the next start waits
			// kStartBackoffUs, so a reaper that keeps failing is no fork loop.
			// Without a launcher the next heartbeat starts one (as before 1.2).
			if (orderly)
				slot->last_start_attempt = 0;
			else if (registry->launcher_pid != 0)
				slot->last_start_attempt = GetCurrentTimestamp();
		}
	}
	ReleaseReaper(dboid, pid, false);
}

uint64 RefusedCount()
{
	Attach();
	Locked lock;
	return registry->refused;
}

bool Known(Oid dboid)
{
	Attach();
	Locked lock;
	return Find(dboid) != nullptr;
}

void BeginPass(Oid dboid)
{
	Attach();
	{
		Locked lock;
		Slot *slot = Find(dboid);
		pass_generation_valid = slot != nullptr;
		pass_dboid = dboid;
		pass_generation = slot ? slot->schedule_generation : 0;
		pass_leases_generation = slot ? slot->leases_generation : 0;
	}
	// The generation is forgotten when the transaction ends.
	effects::Queue(MakeEffect(ApplyEndOfPass, core::EffectWhen::End, dboid));
}

bool DeathCheckDue(Oid dboid, TimestampTz now)
{
	Attach();
	Locked lock;
	Slot *slot = Find(dboid);
	return !slot || slot->schedule.CheckDue(now);
}

void DeathChecked(Oid dboid, TimestampTz next_deadline, int64 shortest_dead_after_us)
{
	Attach();
	// Applied when the pass commits: a pass that fails changes no schedule,
	// and the next one checks again.
	effects::Effect e = MakeEffect(ApplyDeathChecked, core::EffectWhen::Commit, dboid);
	e.i[0] = next_deadline;
	e.i[1] = shortest_dead_after_us;
	e.i[2] = pass_generation_valid && pass_dboid == dboid;
	e.i[3] = static_cast<int64>(pass_generation);
	effects::Queue(e);
}

void WorkerBecameLive(Oid dboid, TimestampTz now)
{
	Attach();
	QueueChange(ApplyBecameLive, dboid, now);
}

void InvalidateDeathSchedule(Oid dboid)
{
	Attach();
	QueueChange(ApplyInvalidate, dboid, 0);
}

void LeasesChecked(Oid dboid, TimestampTz earliest_expiry)
{
	Attach();
	effects::Effect e = MakeEffect(ApplyLeasesChecked, core::EffectWhen::Commit, dboid);
	e.i[0] = earliest_expiry;
	e.i[1] = pass_generation_valid && pass_dboid == dboid;
	e.i[2] = static_cast<int64>(pass_leases_generation);
	effects::Queue(e);
}

void LeaseHeldUntil(Oid dboid, TimestampTz expires)
{
	// Without preload there is no launcher, every reaper is dedicated and
	// nothing reads it: a claim does not create the registry for it.
	if (!registry)
		return;
	Attach();
	QueueChange(ApplyLeaseHeld, dboid, expires);
}

void LeaseHeldFor(Oid dboid, Datum lease)
{
	if (!registry)
		return;
	Datum start = TimestampTzGetDatum(GetCurrentTransactionStartTimestamp()); // now(), as the claim saw it
	LeaseHeldUntil(dboid, DatumGetTimestampTz(DirectFunctionCall2(timestamptz_pl_interval, start, lease)));
}

void NoteHeartbeatsPending(Oid dboid)
{
	Attach();
	Locked lock;
	Slot *slot = Find(dboid);
	if (slot)
		slot->heartbeats_pending = true;
}

bool TakeHeartbeatsPending(Oid dboid)
{
	Attach();
	bool pending = true; // unknown database: flush to be safe
	{
		Locked lock;
		if (Slot *slot = Find(dboid)) {
			pending = slot->heartbeats_pending;
			slot->heartbeats_pending = false;
		}
	}
	if (pending) // an aborted flush leaves the beats for the next pass
		effects::Queue(MakeEffect(ApplyHeartbeatsPendingBack, core::EffectWhen::Abort, dboid));
	return pending;
}

void NoteSessionEnded(Oid dboid, int32 pid, TimestampTz backend_start, TimestampTz ended_at)
{
	Attach();
	Latch *latch = nullptr;
	{
		Locked lock;
		Slot *slot = FindOrCreate(dboid);
		if (!slot)
			return;
		if (slot->ended_count >= 0 && slot->ended_count < kEndedSessions)
			slot->ended[slot->ended_count++] = EndedSession{pid, backend_start, ended_at};
		slot->session_check_requested = true;
		latch = slot->latch;
	}
	if (latch)
		SetLatch(latch);
	else
		WakeLauncher(); // no reaper in this database now: the launcher starts one
}

namespace
{
// Copies out the slot's ended sessions; with take, they leave the ring when
// the transaction commits, and the request for a full check is taken now
// (returned in *check_all) and put back if the transaction aborts.
int CopyEndedSessions(Oid dboid, EndedSession *out, int max, bool take, bool *check_all)
{
	Attach();
	int n = 0;
	bool requested = false;
	{
		Locked lock;
		Slot *slot = Find(dboid);
		if (!slot)
			return 0;
		n = Min(Min(Max(slot->ended_count, 0), kEndedSessions), max);
		memcpy(out, slot->ended, sizeof(EndedSession) * n);
		if (take) {
			requested = slot->session_check_requested;
			slot->session_check_requested = false;
		}
	}
	if (!take)
		return n;
	*check_all = requested;
	if (requested)
		effects::Queue(MakeEffect(ApplySessionCheckBack, core::EffectWhen::Abort, dboid));
	for (int i = 0; i < n; ++i) {
		effects::Effect e = MakeEffect(ApplyEndedConsumed, core::EffectWhen::Commit, dboid);
		e.i[0] = out[i].pid;
		e.i[1] = out[i].backend_start;
		e.i[2] = out[i].ended_at;
		effects::Queue(e);
	}
	return n;
}
} // namespace

int TakeEndedSessions(Oid dboid, EndedSession *out, int max, bool *check_all)
{
	*check_all = false;
	return CopyEndedSessions(dboid, out, max, true, check_all);
}

int PeekEndedSessions(Oid dboid, EndedSession *out, int max)
{
	return CopyEndedSessions(dboid, out, max, false, nullptr);
}

void RequestSessionCheck(Oid dboid)
{
	Attach();
	Locked lock;
	if (Slot *slot = Find(dboid))
		slot->session_check_requested = true;
}

int Snapshot(SlotView *out, int max)
{
	Attach();
	Locked lock;
	int n = 0;
	TimestampTz now = GetCurrentTimestamp();
	bool launcher = registry->launcher_pid != 0;
	for (const Slot &slot : AllSlots()) {
		if (slot.dboid == InvalidOid || n >= max)
			continue;
		SlotView &view = out[n++];
		view.dboid = slot.dboid;
		view.pid = slot.pid;
		view.stop_requested = slot.stop_requested;
		CopyField(view.state, slot.state);
		if (slot.pid == 0 && !slot.stop_requested) {
			// Why this database has no reaper now.
			const char *why = nullptr;
			if (slot.failed_since != 0 && (now - slot.failed_since > kNoWorkerShownAfterUs || !launcher))
				why = kStateNoWorker;
			else if (StartReserved(slot, now))
				why = kStateStarting;
			else if (launcher)
				why = core::Rotation::Overdue(PolicyState(slot, now), now) ? kStateWaiting : kStateScheduled;
			if (why)
				strlcpy(view.state, why, sizeof view.state);
		}
		view.started_at = slot.started_at;
		view.last_pass_at = slot.last_pass_at;
		view.last_pass_ms = slot.last_pass_ms;
		view.passes = slot.passes;
		view.workers_declared_dead = slot.workers_declared_dead;
		view.leases_released = slot.leases_released;
		view.leases_released_by_sql = slot.leases_released_by_sql;
		CopyField(view.last_error, slot.last_error);
	}
	return n;
}

} // namespace wh::registry
