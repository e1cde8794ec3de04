// The launcher's scheduling policy (issue 18, docs/scaleout.md): which
// databases get one of the max_reapers places, which reapers give theirs up,
// and when each database without a reaper next needs one.
//
// Plain C++: the registry (src/reaper_registry.cpp) copies each slot into a
// DatabaseState under its spinlock and applies the decisions; nothing here
// allocates or throws. Times are microseconds (PostgreSQL's TimestampTz).
#pragma once

#include <cstdint>
#include <limits>

namespace wh::core
{

// What the policy reads of one registry slot.
struct DatabaseState {
	bool in_use = false;                 // the slot holds a database
	bool reaper_running = false;         // a reaper claimed the slot
	bool start_reserved = false;         // a start counts in the budget, not claimed yet (nor timed out)
	bool stopped = false;                // stop_reaper()
	bool wants_now = false;              // a session ended, a full check asked for, beats only in shared memory
	std::int64_t death_check = 0;        // the death schedule's next check (kNever: no live worker)
	std::int64_t lease_due = 0;          // the earliest lease expiry known (kNever: no lease held)
	std::int64_t visit_due = 0;          // the next safety visit (0: none asked for)
	std::int64_t last_start_attempt = 0; // 0: none to back off from
	bool start_failing = false;          // the last starts found no background worker slot
	// The running reaper (reaper_running):
	bool yield_requested = false;    // already asked to give its place
	bool can_be_asked = false;       // it has a latch to be woken with
	bool passed_since_start = false; // one pass of its own since it started
	std::int64_t last_work_at = 0;   // its start or its last pass that declared a death or released a lease
};

class Rotation
{
  public:
	static constexpr std::int64_t kNever = std::numeric_limits<std::int64_t>::max();
	// How long a database waits between two attempts to start its reaper.
	static constexpr std::int64_t kStartBackoffUs = 5'000'000;
	// A start that found no background worker slot (a reaper that just left
	// holds its slot until the postmaster saw it exit) is retried sooner.
	static constexpr std::int64_t kNoWorkerRetryUs = 250'000;
	// Due for longer than this without a reaper: "waiting for a reaper slot".
	static constexpr std::int64_t kOverdueUs = 1'000'000;
	// At most this many reapers asked to leave in one round.
	static constexpr int kMaxYieldsPerRound = 8;

	// A reaper runs or is about to: it holds one of the budget's places.
	static bool HoldsPlace(const DatabaseState &db) { return db.in_use && (db.reaper_running || db.start_reserved); }

	// When a database without a reaper needs one: now for an ended session,
	// else the earliest of its death check, lease expiry and safety visit
	// (kNever: not before something happens).
	static std::int64_t DueAt(const DatabaseState &db)
	{
		if (db.wants_now)
			return 0;
		std::int64_t due = Earlier(db.death_check, db.lease_due);
		if (db.visit_due != 0)
			due = Earlier(due, db.visit_due);
		return due < 0 ? 0 : due; // an invalidated schedule (its minimum value) is due now
	}

	// DueAt, but not before the back-off after the last start attempt.
	static std::int64_t StartableAt(const DatabaseState &db)
	{
		std::int64_t due = DueAt(db);
		if (db.last_start_attempt != 0) {
			std::int64_t backoff = db.start_failing ? kNoWorkerRetryUs : kStartBackoffUs;
			if (due < db.last_start_attempt + backoff)
				due = db.last_start_attempt + backoff;
		}
		return due;
	}

	// A database the launcher may start a reaper for (when it is due).
	static bool Candidate(const DatabaseState &db) { return db.in_use && !HoldsPlace(db) && !db.stopped; }

	// reaper_status()'s 'waiting for a reaper slot' (else 'scheduled'): it
	// could have been started (due, back-off over) more than a second ago.
	static bool Overdue(const DatabaseState &db, std::int64_t now)
	{
		std::int64_t due = StartableAt(db);
		return due != kNever && now - due > kOverdueUs;
	}

	// One round of the launcher.
	struct Plan {
		int starts = 0;                 // start_out[0..starts): most overdue first
		int yields = 0;                 // yield_out[0..yields): reapers asked to leave
		int waiting = 0;                // due databases left without a place
		std::int64_t next_due = kNever; // the earliest future moment a database needs a reaper
	};

	// get(i) returns the DatabaseState of slot i (0 <= i < n). budget <= 0:
	// no limit. looks_waiting: databases the launcher has not looked at yet
	// (each look is a reaper start), which also want a place.
	// start_out must hold max_starts entries, yield_out kMaxYieldsPerRound.
	template <class Get>
	static Plan Decide(int n, Get get, std::int64_t now, int budget, int max_starts, int looks_waiting, int *start_out,
	                   int *yield_out)
	{
		Plan plan;
		int running = 0, yielding = 0;
		for (int i = 0; i < n; ++i) {
			const DatabaseState db = get(i);
			if (HoldsPlace(db)) {
				running++;
				yielding += db.yield_requested ? 1 : 0;
			}
		}
		// Places free now (and the caller's array): the most overdue first.
		int room = budget > 0 ? Larger(0, Smaller(max_starts, budget - running)) : max_starts;
		std::int64_t due_of[kMaxKept];
		int due_count = 0;
		if (room > kMaxKept)
			room = kMaxKept;
		int candidates = 0;
		for (int i = 0; i < n; ++i) {
			const DatabaseState db = get(i);
			if (!Candidate(db))
				continue;
			std::int64_t due = StartableAt(db);
			if (due > now) {
				plan.next_due = Earlier(plan.next_due, due);
				continue;
			}
			candidates++;
			KeepSmallest(start_out, due_of, &due_count, room, i, due);
		}
		plan.starts = due_count;
		plan.waiting = candidates - due_count;
		running += due_count;
		// More waiting than places: ask the reapers idle longest to leave,
		// each after a pass of its own since it started.
		int to_yield = plan.waiting + (budget > 0 && running >= budget ? Smaller(looks_waiting, 1) : 0) - yielding;
		if (to_yield > kMaxYieldsPerRound)
			to_yield = kMaxYieldsPerRound;
		std::int64_t idle_since[kMaxYieldsPerRound];
		int kept = 0;
		for (int i = 0; i < n && to_yield > 0; ++i) {
			const DatabaseState db = get(i);
			if (!db.in_use || !db.reaper_running || db.yield_requested || !db.can_be_asked || !db.passed_since_start)
				continue;
			KeepSmallest(yield_out, idle_since, &kept, to_yield, i, db.last_work_at);
		}
		plan.yields = kept;
		return plan;
	}

	// A pooled reaper that found nothing to do for idle_us leaves, but only
	// when databases (not stopped) outnumber the budget: with at most
	// max_reapers databases every one keeps a dedicated reaper.
	static bool ShouldLeaveIdle(const DatabaseState &self, int databases, std::int64_t now, std::int64_t idle_us,
	                            int budget)
	{
		return budget > 0 && self.passed_since_start && now - self.last_work_at >= idle_us && databases > budget;
	}

	// Starts reserved in one round at most (the launcher's array).
	static constexpr int kMaxKept = 64;

  private:
	// Keeps in index[0..*count) / key[...] the `capacity` entries with the
	// smallest keys seen so far, in order; an equal key goes after those kept
	// (slot order). No allocation: the caller's arrays hold capacity entries.
	static void KeepSmallest(int *index, std::int64_t *key, int *count, int capacity, int i, std::int64_t k)
	{
		int at = *count;
		while (at > 0 && key[at - 1] > k)
			at--;
		if (at >= capacity)
			return;
		for (int j = (*count < capacity ? *count : capacity - 1); j > at; --j) {
			index[j] = index[j - 1];
			key[j] = key[j - 1];
		}
		index[at] = i;
		key[at] = k;
		if (*count < capacity)
			(*count)++;
	}

	// (not Min / Max: PostgreSQL's macros of those names)
	static std::int64_t Earlier(std::int64_t a, std::int64_t b) { return a < b ? a : b; }
	static int Smaller(int a, int b) { return a < b ? a : b; }
	static int Larger(int a, int b) { return a > b ? a : b; }
};

} // namespace wh::core
