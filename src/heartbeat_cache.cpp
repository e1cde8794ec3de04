#include "heartbeat_cache.hpp"

#include "core/worker_status.hpp"
#include "settings.hpp"

#include <cstring>

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

HTAB *table = nullptr;
LWLock *lock = nullptr;
bool requested = false;

Key MakeKey(Oid dboid, const char *worker_id, int len)
{
	Key key;
	memset(&key, 0, sizeof key);
	key.dboid = dboid;
	memcpy(key.worker_id, worker_id, len);
	return key;
}

// Entries written by this transaction, applied when it commits, dropped when
// it (or the subtransaction that wrote them) aborts.
struct PendingBeat {
	Beat beat;
	char id[core::kMaxIdentifierBytes + 1];
	int nest_level;
};
PendingBeat *pending = nullptr;
int pending_count = 0;
int pending_capacity = 0;
bool callbacks_registered = false;

void ApplyPending()
{
	LWLockAcquire(lock, LW_EXCLUSIVE);
	for (int i = 0; i < pending_count; ++i) {
		const Beat &beat = pending[i].beat;
		Key key = MakeKey(beat.dboid, pending[i].id, beat.worker_id_len);
		bool found = false;
		auto *entry = static_cast<Entry *>(hash_search(table, &key, HASH_ENTER_NULL, &found));
		if (!entry)
			continue; // cache full: this worker keeps writing the table
		if (!found)
			SpinLockInit(&entry->mutex);
		SpinLockAcquire(&entry->mutex);
		entry->live = true;
		entry->function_oid = beat.function_oid;
		entry->digest = beat.digest;
		entry->bound_pid = beat.bound_pid;
		if (!found || beat.at > entry->last_beat)
			entry->last_beat = beat.at;
		entry->flushed_beat = entry->last_beat;
		SpinLockRelease(&entry->mutex);
	}
	LWLockRelease(lock);
}

void OnXact(XactEvent event, void *)
{
	switch (event) {
	case XACT_EVENT_COMMIT:
	case XACT_EVENT_PARALLEL_COMMIT:
		if (pending_count > 0)
			ApplyPending();
		pending_count = 0;
		break;
	case XACT_EVENT_ABORT:
	case XACT_EVENT_PARALLEL_ABORT:
		pending_count = 0;
		break;
	default:
		break;
	}
}

void OnSubXact(SubXactEvent event, SubTransactionId, SubTransactionId, void *)
{
	if (event != SUBXACT_EVENT_ABORT_SUB)
		return;
	int level = GetCurrentTransactionNestLevel();
	while (pending_count > 0 && pending[pending_count - 1].nest_level >= level)
		--pending_count;
}

Size TableSize()
{
	return hash_estimate_size(settings::max_workers, sizeof(Entry));
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
	table = ShmemInitHash("worker_heartbeat heartbeat cache", settings::max_workers, settings::max_workers, &info,
	                      HASH_ELEM | HASH_BLOBS);
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
	Key key = MakeKey(beat.dboid, beat.worker_id, beat.worker_id_len);
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
	if (!callbacks_registered) {
		RegisterXactCallback(OnXact, nullptr);
		RegisterSubXactCallback(OnSubXact, nullptr);
		callbacks_registered = true;
	}
	if (pending_count == pending_capacity) {
		int capacity = pending_capacity ? pending_capacity * 2 : 8;
		Size bytes = sizeof(PendingBeat) * capacity;
		pending = static_cast<PendingBeat *>(pending ? repalloc(pending, bytes)
		                                             : MemoryContextAlloc(TopMemoryContext, bytes));
		pending_capacity = capacity;
	}
	PendingBeat &slot = pending[pending_count++];
	slot.beat = beat;
	memset(slot.id, 0, sizeof slot.id);
	memcpy(slot.id, beat.worker_id, beat.worker_id_len);
	slot.beat.worker_id = nullptr; // the copy in slot.id is the one to use
	slot.nest_level = GetCurrentTransactionNestLevel();
}

void Forget(Oid dboid, const char *worker_id, int worker_id_len)
{
	if (!table)
		return;
	Key key = MakeKey(dboid, worker_id, worker_id_len);
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
		if (dirty && n < capacity) {
			times[n] = entry->last_beat;
			entry->flushed_beat = entry->last_beat;
		}
		SpinLockRelease(&entry->mutex);
		if (dirty && n < capacity) {
			memcpy(ids[n], entry->key.worker_id, sizeof ids[n]);
			++n;
		}
	}
	LWLockRelease(lock);
	for (int i = 0; i < n; ++i) {
		result.worker_ids[i] = PointerGetDatum(cstring_to_text(ids[i]));
		result.beats[i] = TimestampTzGetDatum(times[i]);
	}
	result.count = n;
	pfree(ids);
	pfree(times);
	return result;
}

bool TryMarkDead(Oid dboid, const char *worker_id, int worker_id_len, TimestampTz cutoff)
{
	if (!table)
		return true;
	Key key = MakeKey(dboid, worker_id, worker_id_len);
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
