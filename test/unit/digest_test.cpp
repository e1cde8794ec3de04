#include "core/digest.hpp"

#include <gtest/gtest.h>

using wh::core::ArgumentDigest;

namespace
{
std::uint64_t Digest(std::initializer_list<const char *> fields)
{
	ArgumentDigest d;
	for (const char *f : fields) {
		if (f)
			d.AddText(f);
		else
			d.AddNull();
	}
	return d.Value();
}
} // namespace

TEST(ArgumentDigest, SameArgumentsSameDigest)
{
	EXPECT_EQ(Digest({"company_research", "active", nullptr}), Digest({"company_research", "active", nullptr}));
}

TEST(ArgumentDigest, AnyChangedFieldChangesTheDigest)
{
	auto base = Digest({"company_research", "active", "task"});
	EXPECT_NE(base, Digest({"company_research", "idle", "task"}));
	EXPECT_NE(base, Digest({"company_research", "active", "task2"}));
	EXPECT_NE(base, Digest({"lead_list", "active", "task"}));
}

TEST(ArgumentDigest, NullDiffersFromEmpty)
{
	EXPECT_NE(Digest({"t", nullptr}), Digest({"t", ""}));
}

TEST(ArgumentDigest, FieldBoundariesMatter)
{
	EXPECT_NE(Digest({"ab", "c"}), Digest({"a", "bc"}));
}

TEST(ArgumentDigest, BooleansAndIntegers)
{
	ArgumentDigest a, b, c;
	a.AddBool(true);
	b.AddBool(false);
	EXPECT_NE(a.Value(), b.Value());
	a.AddInt64(1);
	c.AddBool(true);
	c.AddInt64(2);
	EXPECT_NE(a.Value(), c.Value());
}
