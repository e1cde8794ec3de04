#include "core/effect_fate.hpp"

#include <gtest/gtest.h>

using wh::core::EffectFate;
using wh::core::EffectWhen;
using wh::core::FateOf;
using wh::core::XactEnd;

TEST(EffectFate, CommitAppliesCommitAndEndEffectsDropsUndos)
{
	EXPECT_EQ(FateOf(XactEnd::Commit, 1, 1, EffectWhen::Commit), EffectFate::Apply);
	EXPECT_EQ(FateOf(XactEnd::Commit, 1, 1, EffectWhen::End), EffectFate::Apply);
	EXPECT_EQ(FateOf(XactEnd::Commit, 1, 1, EffectWhen::Abort), EffectFate::Drop);
}

TEST(EffectFate, AbortRunsUndosDropsCommitEffects)
{
	EXPECT_EQ(FateOf(XactEnd::Abort, 1, 1, EffectWhen::Commit), EffectFate::Drop);
	EXPECT_EQ(FateOf(XactEnd::Abort, 1, 3, EffectWhen::Commit), EffectFate::Drop);
	EXPECT_EQ(FateOf(XactEnd::Abort, 1, 1, EffectWhen::Abort), EffectFate::Apply);
	EXPECT_EQ(FateOf(XactEnd::Abort, 1, 1, EffectWhen::End), EffectFate::Apply);
}

TEST(EffectFate, SubAbortTouchesOnlyItsOwnLevelAndDeeper)
{
	EXPECT_EQ(FateOf(XactEnd::SubAbort, 2, 1, EffectWhen::Commit), EffectFate::Keep);
	EXPECT_EQ(FateOf(XactEnd::SubAbort, 2, 1, EffectWhen::Abort), EffectFate::Keep);
	EXPECT_EQ(FateOf(XactEnd::SubAbort, 2, 2, EffectWhen::Commit), EffectFate::Drop);
	EXPECT_EQ(FateOf(XactEnd::SubAbort, 2, 2, EffectWhen::Abort), EffectFate::Apply);
	EXPECT_EQ(FateOf(XactEnd::SubAbort, 2, 3, EffectWhen::Commit), EffectFate::Drop);
}

TEST(EffectFate, SubCommitHandsEffectsToTheParent)
{
	EXPECT_EQ(FateOf(XactEnd::SubCommit, 2, 2, EffectWhen::Commit), EffectFate::ToParent);
	EXPECT_EQ(FateOf(XactEnd::SubCommit, 2, 2, EffectWhen::Abort), EffectFate::ToParent);
	EXPECT_EQ(FateOf(XactEnd::SubCommit, 2, 1, EffectWhen::Commit), EffectFate::Keep);
}

TEST(EffectFate, PrepareRefusesSharedEffects)
{
	EXPECT_EQ(FateOf(XactEnd::Prepare, 1, 1, EffectWhen::Commit), EffectFate::Refuse);
	EXPECT_EQ(FateOf(XactEnd::Prepare, 1, 2, EffectWhen::Abort), EffectFate::Refuse);
	EXPECT_EQ(FateOf(XactEnd::Prepare, 1, 1, EffectWhen::End), EffectFate::Apply);
}
