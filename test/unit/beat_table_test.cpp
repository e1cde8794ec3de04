#include "core/beat_table.hpp"

#include <gtest/gtest.h>

#include <cstdlib>
#include <map>
#include <random>
#include <string>
#include <vector>

using wh::core::BeatKey;
using wh::core::BeatTable;

namespace
{

struct Value {
	std::int64_t beat;
	std::uint64_t digest;
};
using Table = BeatTable<Value>;

// Memory for a table, 16-byte aligned, freed at the end of the test.
struct Block {
	explicit Block(std::size_t bytes) : bytes_(bytes), memory_(std::aligned_alloc(16, (bytes + 15) / 16 * 16)) {}
	~Block() { std::free(memory_); }
	void *get() const { return memory_; }
	std::size_t bytes_;
	void *memory_;
};

Value *Put(Table *t, std::uint32_t db, const std::string &id, std::int64_t beat)
{
	bool found = false;
	Value *v = t->Insert(db, id.data(), id.size(), &found);
	if (v)
		v->beat = beat;
	return v;
}

} // namespace

TEST(BeatTable, InsertFindRemove)
{
	Block block(Table::BytesFor(4));
	Table *t = Table::Create(block.get(), 4, 7);
	EXPECT_EQ(t->Capacity(), 4u);
	EXPECT_EQ(t->Find(1, "w1", 2), nullptr);
	bool found = true;
	Value *v = t->Insert(1, "w1", 2, &found);
	ASSERT_NE(v, nullptr);
	EXPECT_FALSE(found);
	EXPECT_EQ(v->beat, 0); // zeroed
	v->beat = 42;
	Value *again = t->Insert(1, "w1", 2, &found);
	EXPECT_TRUE(found);
	EXPECT_EQ(again, v);
	EXPECT_EQ(t->Find(1, "w1", 2)->beat, 42);
	// Database and id both make the key; a prefix is another id.
	EXPECT_EQ(t->Find(2, "w1", 2), nullptr);
	EXPECT_EQ(t->Find(1, "w", 1), nullptr);
	EXPECT_EQ(t->Find(1, "w12", 3), nullptr);
	EXPECT_TRUE(t->Remove(1, "w1", 2));
	EXPECT_FALSE(t->Remove(1, "w1", 2));
	EXPECT_EQ(t->Find(1, "w1", 2), nullptr);
	EXPECT_EQ(t->Count(), 0u);
}

TEST(BeatTable, FullTableRefusesNewKeysButFindsOldOnes)
{
	Block block(Table::BytesFor(3));
	Table *t = Table::Create(block.get(), 3, 1);
	ASSERT_NE(Put(t, 1, "a", 1), nullptr);
	ASSERT_NE(Put(t, 1, "b", 2), nullptr);
	ASSERT_NE(Put(t, 1, "c", 3), nullptr);
	EXPECT_EQ(Put(t, 1, "d", 4), nullptr); // full: the caller writes the table
	EXPECT_EQ(t->Count(), 3u);
	bool found = false;
	EXPECT_NE(t->Insert(1, "b", 1, &found), nullptr); // an existing key still updates
	EXPECT_TRUE(found);
	EXPECT_TRUE(t->Remove(1, "a", 1));
	EXPECT_NE(Put(t, 1, "d", 4), nullptr); // room again
	EXPECT_EQ(t->Find(1, "d", 1)->beat, 4);
}

TEST(BeatTable, IdsTooLongAreNeverHeld)
{
	Block block(Table::BytesFor(2));
	Table *t = Table::Create(block.get(), 2, 1);
	std::string longest(wh::core::kMaxIdentifierBytes, 'x');
	std::string too_long(wh::core::kMaxIdentifierBytes + 1, 'x');
	EXPECT_NE(Put(t, 1, longest, 1), nullptr);
	EXPECT_EQ(Put(t, 1, too_long, 1), nullptr);
	EXPECT_EQ(t->Find(1, too_long.data(), too_long.size()), nullptr);
	EXPECT_FALSE(t->Remove(1, too_long.data(), too_long.size()));
}

TEST(BeatTable, AttachChecksTheLayoutAndTag)
{
	Block block(Table::BytesFor(8));
	Table *t = Table::Create(block.get(), 8, 5);
	Put(t, 3, "w", 9);
	EXPECT_EQ(Table::Attach(block.get(), 5), t);
	EXPECT_EQ(Table::Attach(block.get(), 6), nullptr); // another tag
	// Another Value type is another layout.
	struct Other {
		char bytes[40];
	};
	EXPECT_EQ(BeatTable<Other>::Attach(block.get(), 5), nullptr);
	Block zeroed(Table::BytesFor(8));
	std::memset(zeroed.get(), 0, Table::BytesFor(8));
	EXPECT_EQ(Table::Attach(zeroed.get(), 5), nullptr);
}

// No pointer inside: a copy of the bytes at another address is the same table.
TEST(BeatTable, AddressIndependent)
{
	std::size_t bytes = Table::BytesFor(64);
	Block a(bytes), b(bytes);
	Table *t = Table::Create(a.get(), 64, 1);
	for (int i = 0; i < 50; ++i)
		Put(t, 1, "worker-" + std::to_string(i), i);
	t->Remove(1, "worker-7", 8);
	std::memcpy(b.get(), a.get(), bytes);
	std::memset(a.get(), 0xdb, bytes); // the original mapping is gone
	Table *copy = Table::Attach(b.get(), 1);
	ASSERT_NE(copy, nullptr);
	EXPECT_EQ(copy->Count(), 49u);
	for (int i = 0; i < 50; ++i) {
		std::string id = "worker-" + std::to_string(i);
		Value *v = copy->Find(1, id.data(), id.size());
		if (i == 7) {
			EXPECT_EQ(v, nullptr);
		} else {
			ASSERT_NE(v, nullptr) << id;
			EXPECT_EQ(v->beat, i);
		}
	}
	EXPECT_NE(Put(copy, 1, "late", 99), nullptr);
	EXPECT_EQ(copy->Find(1, "late", 4)->beat, 99);
}

TEST(BeatTable, ForEachAndRemoveIf)
{
	Block block(Table::BytesFor(32));
	Table *t = Table::Create(block.get(), 32, 1);
	for (int i = 0; i < 30; ++i)
		Put(t, i % 3 + 1, "w" + std::to_string(i), i);
	int seen = 0;
	t->ForEach([&](const BeatKey &key, Value &v) {
		++seen;
		EXPECT_EQ(static_cast<std::int64_t>(key.dboid), v.beat % 3 + 1);
	});
	EXPECT_EQ(seen, 30);
	EXPECT_EQ(t->RemoveIf([](const BeatKey &key, const Value &) { return key.dboid == 2; }), 10u);
	EXPECT_EQ(t->Count(), 20u);
	for (int i = 0; i < 30; ++i) {
		std::string id = "w" + std::to_string(i);
		EXPECT_EQ(t->Find(i % 3 + 1, id.data(), id.size()) != nullptr, i % 3 + 1 != 2) << id;
	}
	// Everything removed: every entry is free again.
	EXPECT_EQ(t->RemoveIf([](const BeatKey &, const Value &) { return true; }), 20u);
	for (int i = 0; i < 32; ++i)
		EXPECT_NE(Put(t, 9, "n" + std::to_string(i), i), nullptr);
	EXPECT_EQ(Put(t, 9, "one-too-many", 0), nullptr);
}

// Random inserts and removals against std::map, with a table kept nearly
// full (long probe chains, removals shifting buckets back across the wrap).
TEST(BeatTable, MatchesAMapUnderChurn)
{
	constexpr std::uint32_t kCapacity = 97;
	Block block(Table::BytesFor(kCapacity));
	Table *t = Table::Create(block.get(), kCapacity, 1);
	std::map<std::pair<std::uint32_t, std::string>, std::int64_t> model;
	std::mt19937 rng(12345);
	for (int step = 0; step < 200000; ++step) {
		std::uint32_t db = rng() % 3;
		std::string id = "id" + std::to_string(rng() % 150);
		auto key = std::make_pair(db, id);
		switch (rng() % 3) {
		case 0:
		case 1: {
			Value *v = Put(t, db, id, step);
			if (model.count(key) || model.size() < kCapacity) {
				ASSERT_NE(v, nullptr);
				model[key] = step;
			} else {
				ASSERT_EQ(v, nullptr);
			}
			break;
		}
		case 2:
			ASSERT_EQ(t->Remove(db, id.data(), id.size()), model.erase(key) == 1);
			break;
		}
		ASSERT_EQ(t->Count(), model.size());
		if (step % 1000 == 0)
			for (const auto &[k, beat] : model) {
				Value *v = t->Find(k.first, k.second.data(), k.second.size());
				ASSERT_NE(v, nullptr);
				ASSERT_EQ(v->beat, beat);
			}
	}
}
