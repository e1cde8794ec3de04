#include "shared_state.hpp"

#include <cstring>

extern "C" {
#include "access/xact.h"
#include "utils/memutils.h"
}

namespace wh::effects
{

namespace
{

Effect *queue = nullptr;
int count = 0;
int capacity = 0;
bool callbacks_registered = false;

// Runs or drops the effects per their fate; keeps the others in order.
// Apply functions do not ereport (shared_state.hpp), so this cannot fail
// half-way through.
void Settle(core::XactEnd end, int ending_level)
{
	int keep = 0;
	for (int i = 0; i < count; ++i) {
		Effect &e = queue[i];
		switch (core::FateOf(end, ending_level, e.nest_level, e.when)) {
		case core::EffectFate::Apply:
			e.apply(e);
			break;
		case core::EffectFate::Drop:
		case core::EffectFate::Refuse: // not reached: refused at PRE_PREPARE
			break;
		case core::EffectFate::ToParent:
			e.nest_level = ending_level - 1;
			queue[keep++] = e;
			break;
		case core::EffectFate::Keep:
			queue[keep++] = e;
			break;
		}
	}
	count = keep;
	// A big transaction (a flush of many beats) does not keep its queue's
	// memory for the life of the backend.
	constexpr int kKeepCapacity = 256;
	if (count == 0 && capacity > kKeepCapacity) {
		pfree(queue);
		queue = nullptr;
		capacity = 0;
	}
}

void OnXact(XactEvent event, void *)
{
	switch (event) {
	case XACT_EVENT_PRE_PREPARE:
		for (int i = 0; i < count; ++i)
			if (core::FateOf(core::XactEnd::Prepare, 1, queue[i].nest_level, queue[i].when) == core::EffectFate::Refuse)
				ereport(ERROR,
				        (errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				         errmsg("cannot PREPARE a transaction that has sent a worker heartbeat, stopped a worker or "
				                "run a reaping pass"),
				         errdetail("worker_heartbeat keeps state in shared memory that must change when the "
				                   "transaction commits, and nothing of it can run at COMMIT PREPARED."),
				         errhint("Call the worker_heartbeat functions in a transaction of their own, outside the "
				                 "two-phase commit.")));
		break;
	case XACT_EVENT_COMMIT:
	case XACT_EVENT_PARALLEL_COMMIT:
		Settle(core::XactEnd::Commit, 1);
		break;
	case XACT_EVENT_ABORT:
	case XACT_EVENT_PARALLEL_ABORT:
		Settle(core::XactEnd::Abort, 1);
		break;
	case XACT_EVENT_PREPARE:
		Settle(core::XactEnd::Prepare, 1); // only End effects are left
		count = 0;
		break;
	default:
		break;
	}
}

void OnSubXact(SubXactEvent event, SubTransactionId, SubTransactionId, void *)
{
	// The ending subtransaction is still the current one here.
	if (event == SUBXACT_EVENT_COMMIT_SUB)
		Settle(core::XactEnd::SubCommit, GetCurrentTransactionNestLevel());
	else if (event == SUBXACT_EVENT_ABORT_SUB)
		Settle(core::XactEnd::SubAbort, GetCurrentTransactionNestLevel());
}

} // namespace

bool SetId(Effect *e, const char *id, int len)
{
	if (len < 0 || static_cast<size_t>(len) > core::kMaxIdentifierBytes)
		return false;
	memcpy(e->id, id, len);
	e->id[len] = '\0';
	e->id_len = len;
	return true;
}

void Queue(const Effect &e)
{
	if (!IsTransactionState()) {
		if (e.when != core::EffectWhen::Abort)
			e.apply(e);
		return;
	}
	if (!callbacks_registered) {
		RegisterXactCallback(OnXact, nullptr);
		RegisterSubXactCallback(OnSubXact, nullptr);
		callbacks_registered = true;
	}
	if (count == capacity) {
		int grown = capacity ? capacity * 2 : 16;
		Size bytes = sizeof(Effect) * grown;
		queue = static_cast<Effect *>(queue ? repalloc(queue, bytes) : MemoryContextAlloc(TopMemoryContext, bytes));
		capacity = grown;
	}
	queue[count] = e;
	queue[count].nest_level = GetCurrentTransactionNestLevel();
	++count;
}

Effect *FindMergeable(ApplyFn apply, Oid dboid)
{
	if (!IsTransactionState())
		return nullptr;
	int level = GetCurrentTransactionNestLevel();
	// A short look back: a transaction of many heartbeats must not pay a scan
	// of its whole queue per call; a missed merge only costs a queue entry.
	constexpr int kLookBack = 16;
	for (int i = count - 1; i >= 0 && i >= count - kLookBack && queue[i].nest_level == level; --i)
		if (queue[i].apply == apply && queue[i].dboid == dboid)
			return &queue[i];
	return nullptr;
}

int PendingCount()
{
	int n = 0;
	for (int i = 0; i < count; ++i)
		if (queue[i].when != core::EffectWhen::End)
			++n;
	return n;
}

} // namespace wh::effects
