#include "reaper_registry.hpp"

#include <cstring>
#include <utility>

extern "C" {
#include "access/xact.h"
#include "storage/ipc.h"
#include "storage/procarray.h"
}

namespace wh::registry
{

namespace
{

// How long a database waits between two attempts to start its reaper.
constexpr int64 kStartBackoffUs = 5 * USECS_PER_SEC;

struct Slot {
	Oid dboid; // InvalidOid: free
	int32 pid; // running reaper, 0: none
	Latch *latch;
	bool stop_requested;
	TimestampTz last_start_attempt;
	char state[32];
	TimestampTz started_at;
	TimestampTz last_pass_at;
	double last_pass_ms;
	uint64 passes;
	uint64 workers_declared_dead;
	uint64 leases_released;
	char last_error[192];
	core::DeathSchedule schedule;
	uint64 schedule_generation; // bumped by every change applied to schedule
	int64 shortest_dead_after_us;
	bool heartbeats_pending;
	bool session_check_requested;
	int ended_count;
	EndedSession ended[kEndedSessions];
};

struct Registry {
	slock_t mutex;
	Slot slots[kSlots];
};

Registry *registry = nullptr;

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
	for (Slot &slot : registry->slots)
		if (slot.dboid == dboid)
			return &slot;
	return nullptr;
}

Slot *FindOrCreate(Oid dboid)
{
	if (Slot *slot = Find(dboid))
		return slot;
	for (Slot &slot : registry->slots)
		if (slot.dboid == InvalidOid) {
			memset(static_cast<void *>(&slot), 0, sizeof slot);
			slot.dboid = dboid;
			slot.schedule.Invalidate();
			strlcpy(slot.state, "not running", sizeof slot.state);
			return &slot;
		}
	return nullptr;
}

bool ReaperAlive(const Slot &slot)
{
	return slot.pid != 0;
}

// --- changes that wait for the end of the transaction (backend-local) ---------
enum class Change { BecameLive, Invalidate, Wake };
struct DeferredChange {
	Change change;
	Oid dboid;
	TimestampTz at;
};
constexpr int kDeferred = 8;
DeferredChange deferred[kDeferred];
int deferred_count = 0;
bool xact_callback_registered = false;

// The generation read by BeginPass() in the current transaction.
bool pass_generation_valid = false;
Oid pass_dboid = InvalidOid;
uint64 pass_generation = 0;

void ApplyBecameLive(Oid dboid, TimestampTz now)
{
	Locked lock;
	if (Slot *slot = Find(dboid)) {
		slot->schedule_generation++;
		if (slot->shortest_dead_after_us > 0)
			slot->schedule.EarliestAt(now + slot->shortest_dead_after_us);
		else
			slot->schedule.Invalidate();
	}
}

void ApplyInvalidate(Oid dboid)
{
	Locked lock;
	if (Slot *slot = Find(dboid)) {
		slot->schedule_generation++;
		slot->schedule.Invalidate();
	}
}

void ApplyWake(Oid dboid)
{
	Latch *latch = nullptr;
	{
		Locked lock;
		if (Slot *slot = Find(dboid))
			latch = slot->latch;
	}
	if (latch)
		SetLatch(latch);
}

void Apply(const DeferredChange &c)
{
	switch (c.change) {
	case Change::BecameLive:
		ApplyBecameLive(c.dboid, c.at);
		break;
	case Change::Invalidate:
		ApplyInvalidate(c.dboid);
		break;
	case Change::Wake:
		ApplyWake(c.dboid);
		break;
	}
}

void AtTransactionEnd(XactEvent event, void *)
{
	switch (event) {
	case XACT_EVENT_COMMIT:
	case XACT_EVENT_PARALLEL_COMMIT:
	case XACT_EVENT_PREPARE:
		for (int i = 0; i < deferred_count; ++i)
			Apply(deferred[i]);
		deferred_count = 0;
		pass_generation_valid = false;
		break;
	case XACT_EVENT_ABORT:
	case XACT_EVENT_PARALLEL_ABORT:
		deferred_count = 0;
		pass_generation_valid = false;
		break;
	default:
		break;
	}
}

void EnsureXactCallback()
{
	if (xact_callback_registered)
		return;
	RegisterXactCallback(AtTransactionEnd, nullptr);
	xact_callback_registered = true;
}

// Applies c now outside a transaction, else when the transaction commits.
void ApplyAtCommit(const DeferredChange &c)
{
	if (!IsTransactionState()) {
		Apply(c);
		return;
	}
	EnsureXactCallback();
	for (int i = 0; i < deferred_count; ++i) {
		DeferredChange &d = deferred[i];
		if (d.dboid != c.dboid || d.change != c.change)
			continue;
		if (c.change == Change::BecameLive && c.at < d.at)
			d.at = c.at;
		return;
	}
	if (deferred_count < kDeferred) {
		deferred[deferred_count++] = c;
		return;
	}
	// Full (several databases in one transaction?): the safe summary of
	// anything is "check everything", and a wake-up.
	deferred[kDeferred - 2] = DeferredChange{Change::Invalidate, c.dboid, 0};
	deferred[kDeferred - 1] = DeferredChange{Change::Wake, c.dboid, 0};
}

} // namespace

Size ShmemSize()
{
	return MAXALIGN(sizeof(Registry));
}

void Attach()
{
	// The postmaster runs the shared-memory startup hook again after a crash
	// reset, with a new segment: there the old pointer must not be kept.
	if (registry && IsUnderPostmaster)
		return;
	bool found = false;
	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	auto *shared = static_cast<Registry *>(ShmemInitStruct("worker_heartbeat reaper registry", ShmemSize(), &found));
	if (!found) {
		memset(static_cast<void *>(shared), 0, sizeof *shared);
		SpinLockInit(&shared->mutex);
	}
	LWLockRelease(AddinShmemInitLock);
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
	slot->last_error[0] = '\0';
	strlcpy(slot->state, "starting", sizeof slot->state);
	return ClaimResult::Claimed;
}

void ReleaseReaper(Oid dboid, int32 pid, bool forget)
{
	if (!registry)
		return;
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
	Locked lock;
	if (Slot *slot = Find(dboid))
		strlcpy(slot->state, state, sizeof slot->state);
}

void SetLastError(Oid dboid, const char *message)
{
	Attach();
	Locked lock;
	if (Slot *slot = Find(dboid))
		strlcpy(slot->last_error, message, sizeof slot->last_error);
}

void RecordPass(Oid dboid, const PassRecord &pass)
{
	Attach();
	Locked lock;
	Slot *slot = Find(dboid);
	if (!slot)
		return;
	slot->last_pass_at = pass.at;
	slot->last_pass_ms = pass.duration_ms;
	slot->passes++;
	slot->workers_declared_dead += pass.workers_declared_dead;
	slot->leases_released += pass.leases_released;
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
	for (const Slot &slot : registry->slots) // most calls: the reaper runs
		if (slot.dboid == dboid && slot.pid != 0)
			return false;
	Locked lock;
	Slot *slot = create_slot ? FindOrCreate(dboid) : Find(dboid);
	if (!slot || ReaperAlive(*slot) || slot->stop_requested)
		return false;
	if (slot->last_start_attempt != 0 && now - slot->last_start_attempt < kStartBackoffUs)
		return false;
	slot->last_start_attempt = now;
	return true;
}

void ForgetIdleSlot(Oid dboid)
{
	Attach();
	Locked lock;
	Slot *slot = Find(dboid);
	if (slot && slot->pid == 0)
		memset(static_cast<void *>(slot), 0, sizeof *slot);
}

void ForgetDatabasesExcept(const Oid *existing, int count)
{
	Attach();
	Locked lock;
	for (Slot &slot : registry->slots) {
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
	ApplyAtCommit(DeferredChange{Change::Wake, dboid, 0});
}

void BeginPass(Oid dboid)
{
	Attach();
	EnsureXactCallback(); // forgets the generation when the transaction ends
	Locked lock;
	Slot *slot = Find(dboid);
	pass_generation_valid = slot != nullptr;
	pass_dboid = dboid;
	pass_generation = slot ? slot->schedule_generation : 0;
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
	Locked lock;
	if (Slot *slot = FindOrCreate(dboid)) {
		// Our snapshot saw every change applied before BeginPass(); one
		// applied since may be invisible to it and must not be lost.
		bool complete = pass_generation_valid && pass_dboid == dboid && slot->schedule_generation == pass_generation;
		if (complete)
			slot->schedule.Checked(next_deadline);
		else
			slot->schedule.EarliestAt(next_deadline);
		slot->shortest_dead_after_us = shortest_dead_after_us;
	}
}

void WorkerBecameLive(Oid dboid, TimestampTz now)
{
	Attach();
	ApplyAtCommit(DeferredChange{Change::BecameLive, dboid, now});
}

void InvalidateDeathSchedule(Oid dboid)
{
	Attach();
	ApplyAtCommit(DeferredChange{Change::Invalidate, dboid, 0});
}

void NoteHeartbeatsPending(Oid dboid)
{
	// Called on every fast heartbeat. Look without the lock first: once the
	// flag is up nothing needs doing, and most beats find it up. A stale read
	// only costs taking the lock.
	Attach();
	for (const Slot &slot : registry->slots)
		if (slot.dboid == dboid && slot.heartbeats_pending)
			return;
	Locked lock;
	Slot *slot = Find(dboid);
	if (slot && !slot->heartbeats_pending)
		slot->heartbeats_pending = true;
}

bool TakeHeartbeatsPending(Oid dboid)
{
	Attach();
	Locked lock;
	Slot *slot = Find(dboid);
	if (!slot)
		return true; // unknown: flush to be safe
	bool pending = slot->heartbeats_pending;
	slot->heartbeats_pending = false;
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
		if (slot->ended_count < kEndedSessions)
			slot->ended[slot->ended_count++] = EndedSession{pid, backend_start, ended_at};
		slot->session_check_requested = true;
		latch = slot->latch;
	}
	if (latch)
		SetLatch(latch);
}

namespace
{
// Copies out the slot's ended sessions; with take, clears them (and the
// request for a full check, returned in *check_all).
int CopyEndedSessions(Oid dboid, EndedSession *out, int max, bool take, bool *check_all)
{
	Attach();
	Locked lock;
	Slot *slot = Find(dboid);
	if (!slot)
		return 0;
	int n = slot->ended_count < max ? slot->ended_count : max;
	memcpy(out, slot->ended, sizeof(EndedSession) * n);
	if (take) {
		*check_all = slot->session_check_requested;
		slot->ended_count = 0;
		slot->session_check_requested = false;
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
	for (const Slot &slot : registry->slots) {
		if (slot.dboid == InvalidOid || n >= max)
			continue;
		SlotView &view = out[n++];
		view.dboid = slot.dboid;
		view.pid = slot.pid;
		view.stop_requested = slot.stop_requested;
		memcpy(view.state, slot.state, sizeof view.state);
		view.started_at = slot.started_at;
		view.last_pass_at = slot.last_pass_at;
		view.last_pass_ms = slot.last_pass_ms;
		view.passes = slot.passes;
		view.workers_declared_dead = slot.workers_declared_dead;
		view.leases_released = slot.leases_released;
		memcpy(view.last_error, slot.last_error, sizeof view.last_error);
	}
	return n;
}

} // namespace wh::registry
