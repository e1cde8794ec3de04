// The heartbeat cache's table: a fixed-capacity hash table keyed by
// (database, worker_id), laid out in one block of memory that holds no
// pointer. Every reference inside it is an index or an offset from the
// block's start, so the same bytes work wherever each process maps them: in
// the main shared memory (preloaded) or in a DSM segment (not preloaded,
// PostgreSQL 17+), mapped at a different address in every backend.
//
// Layout: Header, then the buckets (open addressing, linear probing, a power
// of two at least twice the capacity, so a probe is short), then the
// entries. A bucket holds the key's hash and the entry's index + 1 (0:
// empty); entries never move while they are in the table (a caller may keep
// a pointer to one for as long as it holds the lock), a removed one goes on a
// free list. Removal shifts the following buckets back (no tombstones: the
// probe length never grows with churn).
//
// Plain C++: no locking here. The caller holds a lock: shared for Find (and
// whatever it does to the Value under its own finer lock), exclusive for
// Insert, Remove and RemoveIf. Value must be trivially copyable; Insert
// hands out a new entry's Value zeroed.
#pragma once

#include "core/worker_status.hpp"

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <new>
#include <type_traits>

namespace wh::core
{

struct BeatKey {
	std::uint32_t dboid;
	std::uint32_t len;
	char id[kMaxIdentifierBytes];
};

// FNV-1a over the database and the id's bytes, folded to 32 bits.
inline std::uint32_t HashBeatKey(std::uint32_t dboid, const char *id, std::size_t len)
{
	std::uint64_t h = 0xcbf29ce484222325ULL;
	for (int shift = 0; shift < 32; shift += 8) {
		h ^= (dboid >> shift) & 0xffU;
		h *= 0x100000001b3ULL;
	}
	for (std::size_t i = 0; i < len; ++i) {
		h ^= static_cast<unsigned char>(id[i]);
		h *= 0x100000001b3ULL;
	}
	return static_cast<std::uint32_t>(h ^ (h >> 32));
}

template <typename Value> class BeatTable
{
	static_assert(std::is_trivially_copyable<Value>::value, "the table lives in shared memory as raw bytes");

  public:
	struct Entry {
		BeatKey key;
		std::uint32_t next_free; // index + 1 of the next free entry (0: none); unused while in the table
		Value value;
	};

	// Bytes needed for capacity entries (capacity >= 1), header included.
	static std::size_t BytesFor(std::uint32_t capacity)
	{
		return EntriesOffset(capacity) + sizeof(Entry) * static_cast<std::size_t>(capacity);
	}

	// Formats memory (BytesFor(capacity) bytes, aligned for Value) as an empty
	// table and returns it. tag is stored in the header and checked by Attach.
	static BeatTable *Create(void *memory, std::uint32_t capacity, std::uint32_t tag)
	{
		if (capacity < 1)
			capacity = 1;
		auto *t = static_cast<BeatTable *>(memory);
		std::memset(memory, 0, BytesFor(capacity));
		t->magic_ = kMagic;
		t->tag_ = tag;
		t->entry_size_ = sizeof(Entry);
		t->capacity_ = capacity;
		t->nbuckets_ = BucketsFor(capacity);
		t->count_ = 0;
		// Free list: 1 -> 2 -> ... -> capacity.
		for (std::uint32_t i = 0; i < capacity; ++i)
			t->EntryAt(i)->next_free = i + 1 < capacity ? i + 2 : 0;
		t->free_head_ = 1;
		return t;
	}

	// The table made by Create at memory, or nullptr if memory holds another
	// layout (another build, another Value) or another tag.
	static BeatTable *Attach(void *memory, std::uint32_t tag)
	{
		auto *t = static_cast<BeatTable *>(memory);
		if (t->magic_ != kMagic || t->tag_ != tag || t->entry_size_ != sizeof(Entry) || t->capacity_ < 1 ||
		    t->nbuckets_ != BucketsFor(t->capacity_))
			return nullptr;
		return t;
	}

	std::uint32_t Capacity() const { return capacity_; }
	std::uint32_t Count() const { return count_; }

	// False for a key the table cannot hold (id longer than kMaxIdentifierBytes).
	static bool Fits(std::size_t len) { return len <= kMaxIdentifierBytes; }

	Value *Find(std::uint32_t dboid, const char *id, std::size_t len)
	{
		if (!Fits(len))
			return nullptr;
		bool hit = false;
		std::uint32_t b = Probe(dboid, id, len, &hit);
		return hit ? &EntryAt(Buckets()[b].slot - 1)->value : nullptr;
	}

	// The entry of the key, created (Value zeroed, *found false) if missing;
	// nullptr when the key does not fit or the table is full.
	Value *Insert(std::uint32_t dboid, const char *id, std::size_t len, bool *found)
	{
		*found = false;
		if (!Fits(len))
			return nullptr;
		std::uint32_t b = Probe(dboid, id, len, found);
		if (*found)
			return &EntryAt(Buckets()[b].slot - 1)->value;
		if (free_head_ == 0)
			return nullptr; // full
		std::uint32_t index = free_head_ - 1;
		Entry *e = EntryAt(index);
		free_head_ = e->next_free;
		std::memset(static_cast<void *>(e), 0, sizeof *e);
		e->key.dboid = dboid;
		e->key.len = static_cast<std::uint32_t>(len);
		std::memcpy(e->key.id, id, len);
		Buckets()[b] = Bucket{HashBeatKey(dboid, id, len), index + 1};
		++count_;
		return &e->value;
	}

	bool Remove(std::uint32_t dboid, const char *id, std::size_t len)
	{
		if (!Fits(len))
			return false;
		bool hit = false;
		std::uint32_t b = Probe(dboid, id, len, &hit);
		if (hit)
			RemoveBucket(b);
		return hit;
	}

	// Calls visit(const BeatKey &, Value &) for every entry, in no order.
	template <typename Visit> void ForEach(Visit visit)
	{
		for (std::uint32_t b = 0; b < nbuckets_; ++b) {
			const Bucket &bucket = Buckets()[b];
			if (bucket.slot != 0) {
				Entry *e = EntryAt(bucket.slot - 1);
				visit(static_cast<const BeatKey &>(e->key), e->value);
			}
		}
	}

	// Removes every entry for which doomed(const BeatKey &, const Value &) is
	// true; returns how many.
	template <typename Doomed> std::uint32_t RemoveIf(Doomed doomed)
	{
		std::uint32_t removed = 0;
		// A removal shifts later buckets back into b: look at b again then.
		for (std::uint32_t b = 0; b < nbuckets_;) {
			const Bucket &bucket = Buckets()[b];
			if (bucket.slot != 0) {
				Entry *e = EntryAt(bucket.slot - 1);
				if (doomed(static_cast<const BeatKey &>(e->key), static_cast<const Value &>(e->value))) {
					RemoveBucket(b);
					++removed;
					continue;
				}
			}
			++b;
		}
		return removed;
	}

  private:
	static constexpr std::uint32_t kMagic = 0x57484254; // "WHBT"

	struct Bucket {
		std::uint32_t hash;
		std::uint32_t slot; // entry index + 1; 0: empty
	};

	static std::uint32_t BucketsFor(std::uint32_t capacity)
	{
		std::uint32_t n = 8;
		while (n < 2ULL * capacity)
			n <<= 1;
		return n;
	}
	static constexpr std::size_t Align(std::size_t n)
	{
		constexpr std::size_t a = alignof(Entry) > 8 ? alignof(Entry) : 8;
		return (n + a - 1) / a * a;
	}
	static std::size_t BucketsOffset() { return Align(sizeof(BeatTable)); }
	static std::size_t EntriesOffset(std::uint32_t capacity)
	{
		return Align(BucketsOffset() +
		             sizeof(Bucket) * static_cast<std::size_t>(BucketsFor(capacity < 1 ? 1 : capacity)));
	}

	char *Base() { return reinterpret_cast<char *>(this); }
	Bucket *Buckets() { return reinterpret_cast<Bucket *>(Base() + BucketsOffset()); }
	Entry *EntryAt(std::uint32_t index) { return reinterpret_cast<Entry *>(Base() + EntriesOffset(capacity_)) + index; }

	static bool Matches(const BeatKey &key, std::uint32_t dboid, const char *id, std::size_t len)
	{
		return key.dboid == dboid && key.len == len && std::memcmp(key.id, id, len) == 0;
	}

	// The bucket holding the key (*hit), else the empty bucket that ends its
	// probe, where it would go. There is always an empty bucket: at least
	// twice as many buckets as entries.
	std::uint32_t Probe(std::uint32_t dboid, const char *id, std::size_t len, bool *hit)
	{
		std::uint32_t hash = HashBeatKey(dboid, id, len);
		std::uint32_t mask = nbuckets_ - 1;
		const Bucket *buckets = Buckets();
		for (std::uint32_t b = hash & mask;; b = (b + 1) & mask) {
			if (buckets[b].slot == 0) {
				*hit = false;
				return b;
			}
			if (buckets[b].hash == hash && Matches(EntryAt(buckets[b].slot - 1)->key, dboid, id, len)) {
				*hit = true;
				return b;
			}
		}
	}

	// Empties bucket b, frees its entry and moves back the buckets after it
	// that would no longer be reachable from their home bucket.
	void RemoveBucket(std::uint32_t b)
	{
		Bucket *buckets = Buckets();
		std::uint32_t mask = nbuckets_ - 1;
		std::uint32_t index = buckets[b].slot - 1;
		EntryAt(index)->next_free = free_head_;
		free_head_ = index + 1;
		--count_;
		std::uint32_t hole = b;
		for (std::uint32_t next = (hole + 1) & mask; buckets[next].slot != 0; next = (next + 1) & mask) {
			std::uint32_t home = buckets[next].hash & mask;
			// Moves back unless its home lies cyclically in (hole, next].
			bool stays = hole <= next ? (hole < home && home <= next) : (hole < home || home <= next);
			if (!stays) {
				buckets[hole] = buckets[next];
				hole = next;
			}
		}
		buckets[hole] = Bucket{0, 0};
	}

	std::uint32_t magic_;
	std::uint32_t tag_;
	std::uint32_t entry_size_;
	std::uint32_t capacity_;
	std::uint32_t nbuckets_;
	std::uint32_t count_;
	std::uint32_t free_head_; // index + 1 of the first free entry; 0: full
	std::uint32_t reserved_;
};

} // namespace wh::core
