#include "core/worker_status.hpp"

#include <gtest/gtest.h>
#include <string>

using namespace wh::core;

TEST(WorkerStatus, ParsesEveryStatusAndRoundTrips)
{
	for (const char *name : {"active", "idle", "processing", "stopped", "dead"}) {
		auto status = ParseStatus(name);
		ASSERT_TRUE(status.has_value()) << name;
		EXPECT_EQ(StatusName(*status), name);
	}
}

TEST(WorkerStatus, RejectsUnknownAndCaseVariants)
{
	EXPECT_FALSE(ParseStatus("").has_value());
	EXPECT_FALSE(ParseStatus("Active").has_value());
	EXPECT_FALSE(ParseStatus("running").has_value());
	EXPECT_FALSE(ParseStatus("active ").has_value());
}

TEST(WorkerStatus, OnlyTheReaperDeclaresDeath)
{
	EXPECT_FALSE(IsReportable(WorkerStatus::Dead));
	EXPECT_TRUE(IsReportable(WorkerStatus::Stopped));
	EXPECT_TRUE(IsReportable(WorkerStatus::Active));
}

TEST(WorkerStatus, LiveStatuses)
{
	EXPECT_TRUE(IsLive(WorkerStatus::Active));
	EXPECT_TRUE(IsLive(WorkerStatus::Idle));
	EXPECT_TRUE(IsLive(WorkerStatus::Processing));
	EXPECT_FALSE(IsLive(WorkerStatus::Stopped));
	EXPECT_FALSE(IsLive(WorkerStatus::Dead));
}

TEST(Identifier, EmptyBlankAndTooLong)
{
	EXPECT_EQ(CheckIdentifier(""), IdentifierProblem::Empty);
	EXPECT_EQ(CheckIdentifier(" \t\n"), IdentifierProblem::Blank);
	EXPECT_EQ(CheckIdentifier("company-research-1"), IdentifierProblem::None);
	EXPECT_EQ(CheckIdentifier(std::string(kMaxIdentifierBytes, 'x')), IdentifierProblem::None);
	EXPECT_EQ(CheckIdentifier(std::string(kMaxIdentifierBytes + 1, 'x')), IdentifierProblem::TooLong);
}
