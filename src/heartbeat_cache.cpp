#include "heartbeat_cache.hpp"

#include "core/worker_status.hpp"
#include "reaper_registry.hpp"
#include "settings.hpp"
#include "shared_state.hpp"

#include <cstring>
#include <type_traits>

extern "C" {
#include "access/xact.h"
#include "storage/ipc.h"
#include "utils/hsearch.h"
#include "utils/memutils.h"
}

namespace wh::cache
{

namespace
{

struct Key {
	Oid dboid;
	char worker_id[core::kMaxIdentifierBytes + 1];
};

struct Entry {
	Key key; // must come first (dynahash)
	slock_t mutex;
	bool live;
	Oid function_oid;
	uint64 digest;
	int32 bound_pid;
	TimestampTz last_beat;
	TimestampTz flushed_beat;
};

// Shared memory holds these as raw bytes; the key is hashed as a blob.
static_assert(std::is_trivially_copyable<Entry>::value && offsetof(Entry, key) == 0);
// Bump when Key or Entry changes: the segment's name carries it.
constexpr int kLayoutVersion = 2;

HTAB *table = nullptr;
LWLock *lock = nullptr;
bool requested = false;

// False for an id the cache cannot hold (longer than any valid worker_id: a
// row restored or written around the CHECK): such a worker is never cached
// and always goes to the table.
bool MakeKey(Oid dboid, const char *worker_id, int len, Key *key)
{
	if (len < 0 || static_cast<size_t>(len) > core::kMaxIdentifierBytes)
		return false;
	memset(key, 0, sizeof *key);
	key->dboid = dboid;
	memcpy(key->worker_id, worker_id, len);
	return true;
}

// The effects below run when the transaction ends (shared_state.hpp): they
// take the cache's LWLock and an entry's spinlock, and cannot ereport.

// A beat written to the table: i[0] function oid, i[1] digest, i[2] bound pid, i[3] time.
void ApplyRemember(const effects::Effect &e)
{
	Key key;
	if (!MakeKey(e.dboid, e.id, e.id_len, &key))
		return;
	LWLockAcquire(lock, LW_EXCLUSIVE);
	bool found = false;
	auto *entry = static_cast<Entry *>(hash_search(table, &key, HASH_ENTER_NULL, &found));
	if (entry) { // else the cache is full: this worker keeps writing the table
		if (!found)
			SpinLockInit(&entry->mutex);
		SpinLockAcquire(&entry->mutex);
		TimestampTz at = e.i[3];
		entry->live = true;
		entry->function_oid = static_cast<Oid>(e.i[0]);
		entry->digest = static_cast<uint64>(e.i[1]);
		entry->bound_pid = static_cast<int32>(e.i[2]);
		if (!found || at > entry->last_beat)
			entry->last_beat = at;
		if (!found || at > entry->flushed_beat)
			entry->flushed_beat = at;
		SpinLockRelease(&entry->mutex);
	}
	LWLockRelease(lock);
}

// A flush committed: i[0] the beat it wrote.
void ApplyFlushed(const effects::Effect &e)
{
	Key key;
	if (!MakeKey(e.dboid, e.id, e.id_len, &key))
		return;
	LWLockAcquire(lock, LW_SHARED);
	auto *entry = static_cast<Entry *>(hash_search(table, &key, HASH_FIND, nullptr));
	if (entry) {
		SpinLockAcquire(&entry->mutex);
		if (e.i[0] > entry->flushed_beat)
			entry->flushed_beat = e.i[0];
		SpinLockRelease(&entry->mutex);
	}
	LWLockRelease(lock);
}

Size TableSize()
{
	return hash_estimate_size(settings::max_workers, sizeof(Entry));
}

void TableName(char (&name)[SHMEM_INDEX_KEYSIZE])
{
	snprintf(name, sizeof name, "worker_heartbeat heartbeat cache v%d/%zu", kLayoutVersion, sizeof(Entry));
}

} // namespace

void RequestShmem()
{
	RequestAddinShmemSpace(TableSize());
	RequestNamedLWLockTranche("worker_heartbeat cache", 1);
	requested = true;
}

void InitShmem()
{
	if (!requested)
		return;
	HASHCTL info;
	memset(&info, 0, sizeof info);
	info.keysize = sizeof(Key);
	info.entrysize = sizeof(Entry);
	char name[SHMEM_INDEX_KEYSIZE];
	TableName(name);
	// Fixed size: a full cache never takes the server's spare shared memory;
	// a worker that finds no room keeps writing the table.
	table = ShmemInitHash(name, settings::max_workers, settings::max_workers, &info,
	                      HASH_ELEM | HASH_BLOBS | HASH_FIXED_SIZE);
	lock = &(GetNamedLWLockTranche("worker_heartbeat cache"))->lock;
}

bool Available()
{
	return table != nullptr;
}

bool TryFastBeat(const Beat &beat)
{
	if (!table)
		return false;
	Key key;
	if (!MakeKey(beat.dboid, beat.worker_id, beat.worker_id_len, &key))
		return false;
	// Only a reaper that flushes makes an absorbed beat reach the table; with
	// none (stopped, not started yet, failing, read-only) the beat writes
	// through, so that the views see every accepted beat.
	if (!registry::ReaperFlushing(beat.dboid))
		return false;
	bool absorbed = false;
	LWLockAcquire(lock, LW_SHARED);
	auto *entry = static_cast<Entry *>(hash_search(table, &key, HASH_FIND, nullptr));
	if (entry) {
		SpinLockAcquire(&entry->mutex);
		if (entry->live && entry->digest == beat.digest && entry->function_oid == beat.function_oid &&
		    entry->bound_pid == beat.bound_pid) {
			if (beat.at > entry->last_beat)
				entry->last_beat = beat.at;
			absorbed = true;
		}
		SpinLockRelease(&entry->mutex);
	}
	LWLockRelease(lock);
	return absorbed;
}

void RememberAtCommit(const Beat &beat)
{
	if (!table)
		return;
	effects::Effect e;
	memset(&e, 0, sizeof e);
	e.apply = ApplyRemember;
	e.when = core::EffectWhen::Commit;
	e.dboid = beat.dboid;
	if (!effects::SetId(&e, beat.worker_id, beat.worker_id_len))
		return; // not cacheable
	e.i[0] = beat.function_oid;
	e.i[1] = static_cast<int64>(beat.digest);
	e.i[2] = beat.bound_pid;
	e.i[3] = beat.at;
	effects::Queue(e);
}

void Forget(Oid dboid, const char *worker_id, int worker_id_len)
{
	Key key;
	if (!table || !MakeKey(dboid, worker_id, worker_id_len, &key))
		return;
	LWLockAcquire(lock, LW_EXCLUSIVE);
	hash_search(table, &key, HASH_REMOVE, nullptr);
	LWLockRelease(lock);
}

void ForgetDatabase(Oid dboid)
{
	if (!table)
		return;
	LWLockAcquire(lock, LW_EXCLUSIVE);
	HASH_SEQ_STATUS scan;
	hash_seq_init(&scan, table);
	while (auto *entry = static_cast<Entry *>(hash_seq_search(&scan)))
		if (entry->key.dboid == dboid)
			hash_search(table, &entry->key, HASH_REMOVE, nullptr);
	LWLockRelease(lock);
}

void ForgetDatabasesExcept(const Oid *existing, int count)
{
	if (!table)
		return;
	LWLockAcquire(lock, LW_EXCLUSIVE);
	HASH_SEQ_STATUS scan;
	hash_seq_init(&scan, table);
	while (auto *entry = static_cast<Entry *>(hash_seq_search(&scan))) {
		bool exists = false;
		for (int i = 0; i < count && !exists; ++i)
			exists = existing[i] == entry->key.dboid;
		if (!exists)
			hash_search(table, &entry->key, HASH_REMOVE, nullptr);
	}
	LWLockRelease(lock);
}

Pending CollectUnflushed(Oid dboid)
{
	Pending result{0, nullptr, nullptr};
	if (!table)
		return result;
	// Sized before taking the lock: palloc may ereport.
	long capacity = hash_get_num_entries(table) + 16;
	result.worker_ids = static_cast<Datum *>(palloc(sizeof(Datum) * capacity));
	result.beats = static_cast<Datum *>(palloc(sizeof(Datum) * capacity));
	// Ids are copied into one buffer under the lock, turned into text after.
	auto *ids = static_cast<char(*)[core::kMaxIdentifierBytes + 1]>(
	    palloc(sizeof(char[core::kMaxIdentifierBytes + 1]) * capacity));
	auto *times = static_cast<TimestampTz *>(palloc(sizeof(TimestampTz) * capacity));
	int n = 0;
	LWLockAcquire(lock, LW_SHARED);
	HASH_SEQ_STATUS scan;
	hash_seq_init(&scan, table);
	while (auto *entry = static_cast<Entry *>(hash_seq_search(&scan))) {
		if (entry->key.dboid != dboid)
			continue;
		SpinLockAcquire(&entry->mutex);
		bool dirty = entry->live && entry->last_beat > entry->flushed_beat;
		if (dirty && n < capacity)
			times[n] = entry->last_beat;
		SpinLockRelease(&entry->mutex);
		if (dirty && n < capacity) {
			memcpy(ids[n], entry->key.worker_id, sizeof ids[n]);
			ids[n][core::kMaxIdentifierBytes] = '\0';
			++n;
		}
	}
	LWLockRelease(lock);
	for (int i = 0; i < n; ++i) {
		result.worker_ids[i] = PointerGetDatum(cstring_to_text(ids[i]));
		result.beats[i] = TimestampTzGetDatum(times[i]);
		// Marked flushed only when the flush commits; an aborted pass leaves
		// the beat for the next one.
		effects::Effect e;
		memset(&e, 0, sizeof e);
		e.apply = ApplyFlushed;
		e.when = core::EffectWhen::Commit;
		e.dboid = dboid;
		(void)effects::SetId(&e, ids[i], static_cast<int>(strlen(ids[i])));
		e.i[0] = times[i];
		effects::Queue(e);
	}
	result.count = n;
	pfree(ids);
	pfree(times);
	return result;
}

bool TryMarkDead(Oid dboid, const char *worker_id, int worker_id_len, TimestampTz cutoff)
{
	Key key;
	if (!table || !MakeKey(dboid, worker_id, worker_id_len, &key))
		return true; // not cacheable: dead per the table
	bool dead = true;
	LWLockAcquire(lock, LW_SHARED);
	auto *entry = static_cast<Entry *>(hash_search(table, &key, HASH_FIND, nullptr));
	if (entry) {
		SpinLockAcquire(&entry->mutex);
		if (entry->live && entry->last_beat > cutoff)
			dead = false;
		else
			entry->live = false;
		SpinLockRelease(&entry->mutex);
	}
	LWLockRelease(lock);
	return dead;
}

} // namespace wh::cache
