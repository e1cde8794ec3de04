// What becomes of an effect outside the tables (a shared-memory counter, a
// cache entry, a consumed ring entry...) when the transaction, or the
// subtransaction that queued it, ends. Plain C++: unit-tested without a server.
//
// Every effect is queued with the nesting level of the (sub)transaction that
// made it and with when it must happen:
//   * Commit: applied when the top transaction commits (a counter, a flush mark);
//   * Abort:  an undo, applied when the (sub)transaction that queued it aborts
//             (a flag taken from shared memory is put back);
//   * End:    backend-local bookkeeping, applied whenever the level ends.
// A subtransaction that commits hands its effects to its parent.
#pragma once

#include <cstdint>

namespace wh::core
{

enum class EffectWhen : std::uint8_t { Commit, Abort, End };
enum class XactEnd : std::uint8_t { Commit, Abort, SubCommit, SubAbort, Prepare };
enum class EffectFate : std::uint8_t {
	Keep,     // untouched (queued by an outer level)
	Apply,    // run it now, then remove it
	Drop,     // remove it without running it
	ToParent, // keep it, now owned by the parent level
	Refuse    // PREPARE of a transaction holding it is refused
};

// ending_level: the nesting level that ends (1 for the top transaction).
constexpr EffectFate FateOf(XactEnd end, int ending_level, int effect_level, EffectWhen when)
{
	switch (end) {
	case XactEnd::Commit:
		return when == EffectWhen::Abort ? EffectFate::Drop : EffectFate::Apply;
	case XactEnd::Abort:
		return when == EffectWhen::Commit ? EffectFate::Drop : EffectFate::Apply;
	case XactEnd::Prepare:
		// Nothing runs at COMMIT PREPARED in this backend (it may not even be
		// this server's lifetime): a transaction with shared effects cannot be
		// prepared. Backend-local bookkeeping just ends.
		return when == EffectWhen::End ? EffectFate::Apply : EffectFate::Refuse;
	case XactEnd::SubCommit:
		return effect_level >= ending_level ? EffectFate::ToParent : EffectFate::Keep;
	case XactEnd::SubAbort:
		if (effect_level < ending_level)
			return EffectFate::Keep;
		return when == EffectWhen::Commit ? EffectFate::Drop : EffectFate::Apply;
	}
	return EffectFate::Keep;
}

} // namespace wh::core
