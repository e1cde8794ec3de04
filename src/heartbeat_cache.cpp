#include "heartbeat_cache.hpp"

#include "core/beat_table.hpp"
#include "core/worker_status.hpp"
#include "reaper_registry.hpp"
#include "settings.hpp"
#include "shared_state.hpp"

#include <cstring>

extern "C" {
#include "access/xact.h"
#include "storage/ipc.h"
#include "utils/memutils.h"
}

namespace wh::cache
{

namespace
{

struct Value {
	slock_t mutex;
	bool live;
	Oid function_oid;
	uint64 digest;
	int32 bound_pid;
	TimestampTz last_beat;
	TimestampTz flushed_beat;
};
using Table = core::BeatTable<Value>;

// Bump when Value or the table's layout changes: the segment's name and the
// table's header carry it.
constexpr uint32 kLayoutVersion = 3;
constexpr const char *kTrancheName = "worker_heartbeat cache";

Table *table = nullptr;
LWLock *lock = nullptr;
bool requested = false;   // preloaded: the main shared memory holds the table
bool dsm_refused = false; // not preloaded: no DSM registry (before 17), or another build's segment

// Not preloaded (PostgreSQL 17+): the segment found by name in the DSM
// registry. The lock and its tranche id come first, the table after; the
// table holds no pointer (core/beat_table.hpp), since every backend maps the
// segment at an address of its own.
struct DsmHeader {
	LWLock lock;
	int tranche_id;
	uint32 layout_version;
};
constexpr Size kDsmTableOffset = MAXALIGN(sizeof(DsmHeader));

// Without preload worker_heartbeat.max_workers is not defined (a postmaster
// setting): its default sizes the segment, the same in every backend.
uint32 Capacity()
{
	return static_cast<uint32>(Max(settings::max_workers, 1));
}

Size DsmSize()
{
	return add_size(kDsmTableOffset, Table::BytesFor(Capacity()));
}

// Runs once per server lifetime, in the backend that creates the segment
// (zeroed), under the DSM registry's lock: it cannot be interrupted half-way.
void InitDsm(void *segment)
{
	auto *header = static_cast<DsmHeader *>(segment);
	header->tranche_id = wh_lwlock_new_tranche_id(kTrancheName);
	header->layout_version = kLayoutVersion;
	LWLockInitialize(&header->lock, header->tranche_id);
	Table::Create(static_cast<char *>(segment) + kDsmTableOffset, Capacity(), kLayoutVersion);
}

// The table, attached on first use when not preloaded (nullptr: no cache in
// this server, every beat writes the table).
Table *Get()
{
	if (table || requested || dsm_refused)
		return table;
	if (!IsUnderPostmaster) { // single-user mode: no reaper to flush anyway
		dsm_refused = true;
		return nullptr;
	}
	char name[64];
	snprintf(name, sizeof name, "worker_heartbeat cache v%u/%zu/%u", kLayoutVersion, sizeof(Table::Entry), Capacity());
	bool found = false;
	void *segment = wh_get_named_dsm_segment(name, DsmSize(), InitDsm, &found);
	if (!segment) {
		dsm_refused = true;
		return nullptr;
	}
	auto *header = static_cast<DsmHeader *>(segment);
	Table *attached = Table::Attach(static_cast<char *>(segment) + kDsmTableOffset, kLayoutVersion);
	if (!attached || header->layout_version != kLayoutVersion) {
		dsm_refused = true;
		return nullptr;
	}
	wh_lwlock_register_tranche(header->tranche_id, kTrancheName);
	lock = &header->lock;
	table = attached;
	return table;
}

// The effects below run when the transaction ends (shared_state.hpp): they
// take the cache's LWLock and an entry's spinlock, and cannot ereport. They
// are queued only once the table is attached.

// A beat written to the table: i[0] function oid, i[1] digest, i[2] bound pid, i[3] time.
void ApplyRemember(const effects::Effect &e)
{
	LWLockAcquire(lock, LW_EXCLUSIVE);
	bool found = false;
	Value *entry = table->Insert(e.dboid, e.id, e.id_len, &found);
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
	LWLockAcquire(lock, LW_SHARED);
	if (Value *entry = table->Find(e.dboid, e.id, e.id_len)) {
		SpinLockAcquire(&entry->mutex);
		if (e.i[0] > entry->flushed_beat)
			entry->flushed_beat = e.i[0];
		SpinLockRelease(&entry->mutex);
	}
	LWLockRelease(lock);
}

Size TableSize()
{
	return Table::BytesFor(Capacity());
}

void TableName(char (&name)[SHMEM_INDEX_KEYSIZE])
{
	snprintf(name, sizeof name, "worker_heartbeat heartbeat cache v%u/%zu", kLayoutVersion, sizeof(Table::Entry));
}

} // namespace

void RequestShmem()
{
	RequestAddinShmemSpace(TableSize());
	RequestNamedLWLockTranche(kTrancheName, 1);
	requested = true;
}

void InitShmem()
{
	if (!requested)
		return;
	char name[SHMEM_INDEX_KEYSIZE];
	TableName(name);
	// Fixed size: a full cache never takes the server's spare shared memory;
	// a worker that finds no room keeps writing the table.
	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	bool found = false;
	void *memory = ShmemInitStruct(name, TableSize(), &found);
	table = found ? Table::Attach(memory, kLayoutVersion) : Table::Create(memory, Capacity(), kLayoutVersion);
	lock = &(GetNamedLWLockTranche(kTrancheName))->lock;
	LWLockRelease(AddinShmemInitLock);
}

bool Available()
{
	return Get() != nullptr;
}

bool TryFastBeat(const Beat &beat, bool *changed)
{
	if (changed)
		*changed = false;
	if (!Get() || !Table::Fits(beat.worker_id_len))
		return false;
	// Only a reaper that flushes makes an absorbed beat reach the table; with
	// none (stopped, not started yet, failing, read-only) the beat writes
	// through, so that the views see every accepted beat.
	if (!registry::ReaperFlushing(beat.dboid))
		return false;
	bool absorbed = false;
	LWLockAcquire(lock, LW_SHARED);
	if (Value *entry = table->Find(beat.dboid, beat.worker_id, beat.worker_id_len)) {
		SpinLockAcquire(&entry->mutex);
		if (entry->live && entry->digest == beat.digest && entry->function_oid == beat.function_oid &&
		    entry->bound_pid == beat.bound_pid) {
			if (beat.at > entry->last_beat)
				entry->last_beat = beat.at;
			absorbed = true;
		} else if (changed && entry->live) {
			*changed = true;
		}
		SpinLockRelease(&entry->mutex);
	}
	LWLockRelease(lock);
	return absorbed;
}

void RememberAtCommit(const Beat &beat)
{
	if (!Get())
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
	if (!Get() || worker_id_len < 0 || !Table::Fits(worker_id_len))
		return;
	LWLockAcquire(lock, LW_EXCLUSIVE);
	table->Remove(dboid, worker_id, worker_id_len);
	LWLockRelease(lock);
}

void ForgetDatabase(Oid dboid)
{
	if (!Get())
		return;
	LWLockAcquire(lock, LW_EXCLUSIVE);
	table->RemoveIf([dboid](const core::BeatKey &key, const Value &) { return key.dboid == dboid; });
	LWLockRelease(lock);
}

void ForgetDatabasesExcept(const Oid *existing, int count)
{
	if (!Get())
		return;
	LWLockAcquire(lock, LW_EXCLUSIVE);
	table->RemoveIf([existing, count](const core::BeatKey &key, const Value &) {
		for (int i = 0; i < count; ++i)
			if (existing[i] == key.dboid)
				return false;
		return true;
	});
	LWLockRelease(lock);
}

Pending CollectUnflushed(Oid dboid)
{
	Pending result{0, nullptr, nullptr};
	if (!Get())
		return result;
	// Sized before taking the lock: palloc may ereport.
	long capacity = static_cast<long>(table->Count()) + 16;
	result.worker_ids = static_cast<Datum *>(palloc(sizeof(Datum) * capacity));
	result.beats = static_cast<Datum *>(palloc(sizeof(Datum) * capacity));
	// Ids are copied into one buffer under the lock, turned into text after.
	auto *ids = static_cast<core::BeatKey *>(palloc(sizeof(core::BeatKey) * capacity));
	auto *times = static_cast<TimestampTz *>(palloc(sizeof(TimestampTz) * capacity));
	int n = 0;
	LWLockAcquire(lock, LW_SHARED);
	table->ForEach([&](const core::BeatKey &key, Value &entry) {
		if (key.dboid != dboid || n >= capacity)
			return;
		SpinLockAcquire(&entry.mutex);
		bool dirty = entry.live && entry.last_beat > entry.flushed_beat;
		if (dirty)
			times[n] = entry.last_beat;
		SpinLockRelease(&entry.mutex);
		if (dirty)
			memcpy(&ids[n++], &key, sizeof key);
	});
	LWLockRelease(lock);
	for (int i = 0; i < n; ++i) {
		int len = static_cast<int>(Min(ids[i].len, static_cast<uint32>(core::kMaxIdentifierBytes)));
		result.worker_ids[i] = PointerGetDatum(cstring_to_text_with_len(ids[i].id, len));
		result.beats[i] = TimestampTzGetDatum(times[i]);
		// Marked flushed only when the flush commits; an aborted pass leaves
		// the beat for the next one.
		effects::Effect e;
		memset(&e, 0, sizeof e);
		e.apply = ApplyFlushed;
		e.when = core::EffectWhen::Commit;
		e.dboid = dboid;
		(void)effects::SetId(&e, ids[i].id, len);
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
	if (!Get() || worker_id_len < 0 || !Table::Fits(worker_id_len))
		return true; // not cacheable: dead per the table
	bool dead = true;
	LWLockAcquire(lock, LW_SHARED);
	if (Value *entry = table->Find(dboid, worker_id, worker_id_len)) {
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
