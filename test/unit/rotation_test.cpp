#include "core/rotation.hpp"

#include <gtest/gtest.h>

#include <limits>
#include <vector>

using wh::core::DatabaseState;
using wh::core::Rotation;

namespace
{

constexpr std::int64_t kSec = 1'000'000;
constexpr std::int64_t kNow = 1000 * kSec;

// A database without a reaper, nothing due.
DatabaseState Quiet()
{
	DatabaseState db;
	db.in_use = true;
	db.death_check = Rotation::kNever;
	db.lease_due = Rotation::kNever;
	return db;
}

DatabaseState DueAt(std::int64_t at)
{
	DatabaseState db = Quiet();
	db.visit_due = at;
	return db;
}

// A running reaper that has passed once, last busy at last_work_at.
DatabaseState Running(std::int64_t last_work_at)
{
	DatabaseState db = Quiet();
	db.reaper_running = true;
	db.can_be_asked = true;
	db.passed_since_start = true;
	db.last_work_at = last_work_at;
	return db;
}

struct Round {
	Rotation::Plan plan;
	std::vector<int> starts, yields;
};

Round Decide(const std::vector<DatabaseState> &dbs, int budget, int max_starts = 64, int looks_waiting = 0)
{
	int start_out[64], yield_out[Rotation::kMaxYieldsPerRound];
	Round r;
	r.plan = Rotation::Decide(
	    static_cast<int>(dbs.size()), [&](int i) { return dbs[i]; }, kNow, budget, max_starts, looks_waiting, start_out,
	    yield_out);
	r.starts.assign(start_out, start_out + r.plan.starts);
	r.yields.assign(yield_out, yield_out + r.plan.yields);
	return r;
}

} // namespace

TEST(Rotation, NothingDueNeedsNoReaperAndNoWakeUp)
{
	DatabaseState db = Quiet();
	EXPECT_EQ(Rotation::DueAt(db), Rotation::kNever);
	Round r = Decide({db, db}, 2);
	EXPECT_EQ(r.plan.starts, 0);
	EXPECT_EQ(r.plan.next_due, Rotation::kNever);
}

TEST(Rotation, DueIsTheEarliestOfDeathCheckLeaseExpiryAndVisit)
{
	DatabaseState db = Quiet();
	db.visit_due = kNow + 300 * kSec;
	EXPECT_EQ(Rotation::DueAt(db), kNow + 300 * kSec);
	db.lease_due = kNow + 30 * kSec; // a lease claimed through claim_leases()
	EXPECT_EQ(Rotation::DueAt(db), kNow + 30 * kSec);
	db.death_check = kNow + 10 * kSec; // a live worker's dead_after
	EXPECT_EQ(Rotation::DueAt(db), kNow + 10 * kSec);
	db.wants_now = true; // a session-bound worker's session ended
	EXPECT_EQ(Rotation::DueAt(db), 0);
}

TEST(Rotation, NoVisitAskedForIsNotDueAtZero)
{
	DatabaseState db = Quiet();
	db.visit_due = 0; // 0 means "none", not "the epoch"
	EXPECT_EQ(Rotation::DueAt(db), Rotation::kNever);
}

TEST(Rotation, MostOverdueFirstWithinTheBudget)
{
	std::vector<DatabaseState> dbs = {DueAt(kNow - 1 * kSec), DueAt(kNow - 9 * kSec), Quiet(), DueAt(kNow - 5 * kSec),
	                                  DueAt(kNow + 7 * kSec)};
	Round r = Decide(dbs, 2);
	ASSERT_EQ(r.plan.starts, 2);
	EXPECT_EQ(r.starts[0], 1);
	EXPECT_EQ(r.starts[1], 3);
	EXPECT_EQ(r.plan.waiting, 1); // database 0 is due but has no place
	EXPECT_EQ(r.plan.next_due, kNow + 7 * kSec);
}

TEST(Rotation, EqualDuesKeepSlotOrder)
{
	std::vector<DatabaseState> dbs = {DueAt(kNow - kSec), DueAt(kNow - kSec), DueAt(kNow - kSec)};
	Round r = Decide(dbs, 0, 2); // no budget, but only 2 in the caller's array
	ASSERT_EQ(r.plan.starts, 2);
	EXPECT_EQ(r.starts[0], 0);
	EXPECT_EQ(r.starts[1], 1);
}

TEST(Rotation, RunningAndStartingReapersHoldPlaces)
{
	DatabaseState starting = Quiet();
	starting.start_reserved = true;
	std::vector<DatabaseState> dbs = {Running(kNow), starting, DueAt(kNow - kSec)};
	Round r = Decide(dbs, 2);
	EXPECT_EQ(r.plan.starts, 0);
	EXPECT_EQ(r.plan.waiting, 1);
	r = Decide(dbs, 3);
	ASSERT_EQ(r.plan.starts, 1);
	EXPECT_EQ(r.starts[0], 2);
}

TEST(Rotation, TheReaperIdleLongestYields)
{
	std::vector<DatabaseState> dbs = {Running(kNow - 2 * kSec), Running(kNow - 60 * kSec), Running(kNow - 30 * kSec),
	                                  DueAt(kNow - kSec)};
	Round r = Decide(dbs, 3);
	EXPECT_EQ(r.plan.starts, 0);
	EXPECT_EQ(r.plan.waiting, 1);
	ASSERT_EQ(r.plan.yields, 1);
	EXPECT_EQ(r.yields[0], 1); // busy last 60 s ago: the longest idle
}

TEST(Rotation, NoReaperAskedTwiceNorBeforeItsFirstPass)
{
	DatabaseState asked = Running(kNow - 90 * kSec);
	asked.yield_requested = true;
	DatabaseState fresh = Running(kNow - 80 * kSec);
	fresh.passed_since_start = false;
	std::vector<DatabaseState> dbs = {asked, fresh, Running(kNow - 10 * kSec), DueAt(kNow - kSec), DueAt(kNow - kSec)};
	// Two waiting, one already yielding: one more asked, and not the fresh one.
	Round r = Decide(dbs, 3);
	EXPECT_EQ(r.plan.waiting, 2);
	ASSERT_EQ(r.plan.yields, 1);
	EXPECT_EQ(r.yields[0], 2);
}

TEST(Rotation, DatabasesNotLookedAtYetAskForAPlaceToo)
{
	std::vector<DatabaseState> dbs = {Running(kNow - 5 * kSec), Running(kNow - 50 * kSec)};
	EXPECT_EQ(Decide(dbs, 2, 64, 0).plan.yields, 0);
	Round r = Decide(dbs, 2, 64, 7);
	ASSERT_EQ(r.plan.yields, 1);
	EXPECT_EQ(r.yields[0], 1);
}

TEST(Rotation, BackOffAfterAStartAttempt)
{
	DatabaseState db = DueAt(kNow - 10 * kSec);
	db.last_start_attempt = kNow - 1 * kSec;
	EXPECT_EQ(Rotation::StartableAt(db), kNow - kSec + Rotation::kStartBackoffUs);
	Round r = Decide({db}, 4);
	EXPECT_EQ(r.plan.starts, 0);
	EXPECT_EQ(r.plan.waiting, 0);
	EXPECT_EQ(r.plan.next_due, kNow - kSec + Rotation::kStartBackoffUs);
	db.start_failing = true; // no worker slot: retried sooner
	EXPECT_EQ(Rotation::StartableAt(db), kNow - kSec + Rotation::kNoWorkerRetryUs);
}

TEST(Rotation, StoppedDatabasesAreNeverStarted)
{
	DatabaseState db = DueAt(kNow - kSec);
	db.stopped = true;
	EXPECT_EQ(Decide({db}, 4).plan.starts, 0);
}

TEST(Rotation, OverdueAfterOneSecond)
{
	EXPECT_FALSE(Rotation::Overdue(Quiet(), kNow));
	EXPECT_FALSE(Rotation::Overdue(DueAt(kNow - kSec / 2), kNow));
	EXPECT_TRUE(Rotation::Overdue(DueAt(kNow - 2 * kSec), kNow));
	DatabaseState backing_off = DueAt(kNow - 10 * kSec);
	backing_off.last_start_attempt = kNow - kSec; // not startable for 4 s more: not waiting for a place
	EXPECT_FALSE(Rotation::Overdue(backing_off, kNow));
}

TEST(Rotation, AnInvalidatedScheduleIsDueNowWithoutOverflow)
{
	DatabaseState db = Quiet();
	db.death_check = std::numeric_limits<std::int64_t>::min(); // core::DeathSchedule::Invalidate()
	EXPECT_EQ(Rotation::DueAt(db), 0);
	EXPECT_TRUE(Rotation::Overdue(db, kNow));
	Round r = Decide({db}, 1);
	EXPECT_EQ(r.plan.starts, 1);
}

TEST(Rotation, APooledReaperLeavesOnlyWhenDatabasesOutnumberTheBudget)
{
	DatabaseState self = Running(kNow - 6 * kSec);
	EXPECT_TRUE(Rotation::ShouldLeaveIdle(self, 5, kNow, 5 * kSec, 4));
	EXPECT_FALSE(Rotation::ShouldLeaveIdle(self, 4, kNow, 5 * kSec, 4));  // dedicated
	EXPECT_FALSE(Rotation::ShouldLeaveIdle(self, 5, kNow, 10 * kSec, 4)); // not idle long enough
	EXPECT_FALSE(Rotation::ShouldLeaveIdle(self, 5, kNow, 5 * kSec, 0));  // no launcher budget
	self.passed_since_start = false;
	EXPECT_FALSE(Rotation::ShouldLeaveIdle(self, 5, kNow, 5 * kSec, 4));
}

TEST(Rotation, TheSmallestDuesOfManyInOrder)
{
	std::vector<DatabaseState> dbs;
	const std::int64_t overdue[] = {4, 9, 1, 7, 3, 8, 2, 6, 5, 0}; // seconds overdue
	for (std::int64_t s : overdue)
		dbs.push_back(DueAt(kNow - s * kSec));
	Round r = Decide(dbs, 3);
	ASSERT_EQ(r.plan.starts, 3);
	EXPECT_EQ(r.starts[0], 1); // 9 s overdue
	EXPECT_EQ(r.starts[1], 5); // 8 s
	EXPECT_EQ(r.starts[2], 3); // 7 s
	EXPECT_EQ(r.plan.waiting, 7);
}
