// The transactional effects queue: one place for every side effect that lives
// outside the tables (shared-memory counters, the heartbeat cache, the
// ended-session ring, flush marks, the death schedule, latches).
//
// An effect queued inside a transaction runs when that transaction commits,
// or, for an undo, when it (or the subtransaction that queued it) aborts; see
// core/effect_fate.hpp for the rules. Outside a transaction a Commit effect
// runs at once and an undo is not needed. PREPARE TRANSACTION of a
// transaction holding a shared effect is refused (ERROR 0A000, like core's
// temporary tables): nothing of ours could run at COMMIT PREPARED.
//
// Apply functions run inside the transaction-end callbacks: they must not
// ereport. They take a spinlock or an LWLock, copy fields and return.
#pragma once

#include "core/effect_fate.hpp"
#include "core/worker_status.hpp"
#include "pg.hpp"

namespace wh::effects
{

struct Effect;
using ApplyFn = void (*)(const Effect &);

struct Effect {
	ApplyFn apply;
	core::EffectWhen when;
	int nest_level; // set by Queue()
	Oid dboid;
	int64 i[4];
	double f;
	int id_len; // worker_id in id[], NUL-terminated, at most kMaxIdentifierBytes
	char id[core::kMaxIdentifierBytes + 1];
};

// Copies id into e (false, and nothing copied, when it is too long).
bool SetId(Effect *e, const char *id, int len);

// Queues e (at commit / at abort / at end, per e.when). Outside a transaction
// a Commit or End effect runs now and an Abort effect is dropped.
void Queue(const Effect &e);
// The last effect queued by the current (sub)transaction with this apply
// function and database, to merge into (nullptr: none).
Effect *FindMergeable(ApplyFn apply, Oid dboid);
// Shared effects waiting for the end of the transaction.
int PendingCount();

} // namespace wh::effects
