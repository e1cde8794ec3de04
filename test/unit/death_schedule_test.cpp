#include "core/death_schedule.hpp"

#include <gtest/gtest.h>

using wh::core::DeathSchedule;

TEST(DeathSchedule, StartsDue)
{
	DeathSchedule s;
	EXPECT_TRUE(s.CheckDue(0));
	EXPECT_TRUE(s.CheckDue(-1000));
}

TEST(DeathSchedule, NotDueBeforeTheEarliestDeadline)
{
	DeathSchedule s;
	s.Checked(1000);
	EXPECT_FALSE(s.CheckDue(999));
	EXPECT_TRUE(s.CheckDue(1000));
}

TEST(DeathSchedule, ANewLiveWorkerPullsTheCheckIn)
{
	DeathSchedule s;
	s.Checked(1000);
	s.EarliestAt(500);
	EXPECT_TRUE(s.CheckDue(500));
	s.EarliestAt(800); // later than the current check: no effect
	EXPECT_EQ(s.NextCheck(), 500);
}

TEST(DeathSchedule, NeverMeansNoLiveWorker)
{
	DeathSchedule s;
	s.Checked(DeathSchedule::kNever);
	EXPECT_FALSE(s.CheckDue(1'000'000'000'000));
	s.Invalidate();
	EXPECT_TRUE(s.CheckDue(0));
}
