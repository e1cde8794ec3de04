#include "death_forensics.hpp"

#include "settings.hpp"
#include "spi_plans.hpp"

#include <cstring>
#include <type_traits>

extern "C" {
#include "access/xact.h"
#include "catalog/pg_type.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "storage/lwlock.h"
#include "storage/proc.h"
#include "storage/shmem.h"
#include "storage/spin.h"
#include "utils/backend_status.h"
#include "utils/builtins.h"
#include "utils/json.h"
#include "utils/wait_event.h"
}

namespace wh::forensics
{

namespace
{

constexpr uint32 kMagic = 0x57484653; // "WHFS"
constexpr uint32 kLayoutVersion = 1;

struct Snapshot {
	Oid dboid; // InvalidOid: free
	int32 pid;
	TimestampTz backend_start;
	TimestampTz ended_at;
	TimestampTz xact_start;  // 0: none
	TimestampTz query_start; // 0: none
	uint32 wait_event_info;
	int32 state; // BackendState
	bool open_transaction;
	bool has_query;
	char query[kQueryBytes + 1];
};

struct Ring {
	uint32 magic;
	uint32 layout_version;
	uint64 size;
	slock_t mutex;
	uint32 next;
	Snapshot items[kRingEntries];
};
static_assert(std::is_trivially_copyable<Snapshot>::value && std::is_standard_layout<Ring>::value);

Ring *ring = nullptr;
bool attach_failed = false; // tried once in this process: no spare shared memory

// Nothing inside may ereport (a spinlock).
class Locked
{
  public:
	Locked() { SpinLockAcquire(&ring->mutex); }
	~Locked() { SpinLockRelease(&ring->mutex); }
	Locked(const Locked &) = delete;
	Locked &operator=(const Locked &) = delete;
};

const char *StateName(int state)
{
	switch (state) {
	case STATE_IDLE:
		return "idle";
	case STATE_RUNNING:
		return "active";
	case STATE_IDLEINTRANSACTION:
		return "idle in transaction";
	case STATE_FASTPATH:
		return "fastpath function call";
	case STATE_IDLEINTRANSACTION_ABORTED:
		return "idle in transaction (aborted)";
	case STATE_DISABLED:
		return "disabled";
	default:
		return nullptr;
	}
}

// Longest prefix of value (len bytes, maybe cut inside a character) of at
// most max bytes that ends on a character boundary.
int ClipLength(const char *value, int len, int max)
{
	if (len <= 0)
		return 0;
	return pg_mbcliplen(value, len, Min(len, max));
}

void Key(StringInfo buf, bool *first, const char *key)
{
	appendStringInfo(buf, "%s\"%s\":", *first ? "" : ",", key);
	*first = false;
}

void Text(StringInfo buf, bool *first, const char *key, const char *value)
{
	Key(buf, first, key);
	if (value)
		escape_json(buf, value);
	else
		appendStringInfoString(buf, "null");
}

void Time(StringInfo buf, bool *first, const char *key, bool known, TimestampTz value)
{
	Key(buf, first, key);
	if (known)
		escape_json(buf, JsonEncodeDateTime(nullptr, TimestampTzGetDatum(value), TIMESTAMPTZOID, nullptr));
	else
		appendStringInfoString(buf, "null");
}

// What pg_stat_activity shows of a backend.
struct Backend {
	const char *state;
	const char *query; // nullptr: not recorded
	const char *wait_event_type;
	const char *wait_event;
	bool has_xact_start;
	TimestampTz xact_start;
	bool has_query_start;
	TimestampTz query_start;
	bool open_transaction;
};

void BackendJson(StringInfo buf, const Backend &b, bool with_query)
{
	bool first = true;
	appendStringInfoChar(buf, '{');
	Text(buf, &first, "state", b.state);
	if (with_query)
		Text(buf, &first, "query", b.query);
	Text(buf, &first, "wait_event_type", b.wait_event_type);
	Text(buf, &first, "wait_event", b.wait_event);
	Time(buf, &first, "xact_start", b.has_xact_start, b.xact_start);
	Time(buf, &first, "query_start", b.has_query_start, b.query_start);
	Key(buf, &first, "open_transaction");
	appendStringInfoString(buf, b.open_transaction ? "true" : "false");
	appendStringInfoChar(buf, '}');
}

// "forensics":{...}; full: with the free texts (query, current_task).
char *Build(const Facts &f, const char *snapshot, const Backend *b, bool full)
{
	StringInfoData buf;
	initStringInfo(&buf);
	bool first = true;
	appendStringInfoString(&buf, "\"forensics\":{");
	Text(&buf, &first, "cause", f.cause);
	Key(&buf, &first, "silent_for");
	if (f.silent_for_us >= 0)
		appendStringInfo(&buf, "%.3f", static_cast<double>(f.silent_for_us) / 1e6);
	else
		appendStringInfoString(&buf, "null");
	Text(&buf, &first, "last_status", f.last_status);
	if (full) {
		const char *task = f.current_task;
		if (task) {
			int len = static_cast<int>(strlen(task));
			int keep = ClipLength(task, len, kQueryBytes);
			task = keep < len ? psprintf("%.*s", keep, task) : task;
		}
		Text(&buf, &first, "current_task", task);
	}
	Time(&buf, &first, "lease_expires_at", f.has_lease_expires, f.lease_expires_at);
	if (f.session_pid != 0) {
		Key(&buf, &first, "session_pid");
		appendStringInfo(&buf, "%d", f.session_pid);
		Time(&buf, &first, "backend_start", f.has_backend_start, f.backend_start);
	}
	Text(&buf, &first, "snapshot", snapshot);
	Key(&buf, &first, "backend");
	if (b)
		BackendJson(&buf, *b, full);
	else
		appendStringInfoString(&buf, "null");
	appendStringInfoChar(&buf, '}');
	return buf.data;
}

// The snapshot a backend left as it ended.
bool FindSnapshot(Oid dboid, int32 pid, TimestampTz backend_start, Snapshot *out)
{
	if (!Attach())
		return false;
	Locked lock;
	for (const Snapshot &s : ring->items)
		if (s.dboid == dboid && s.pid == pid && s.backend_start == backend_start) {
			memcpy(static_cast<void *>(out), &s, sizeof s);
			return true;
		}
	return false;
}

Backend FromSnapshot(const Snapshot &s)
{
	Backend b{};
	b.state = StateName(s.state);
	if (s.has_query) {
		char *query = static_cast<char *>(palloc(kQueryBytes + 1));
		memcpy(query, s.query, kQueryBytes + 1);
		query[kQueryBytes] = '\0';
		b.query = query;
	}
	if (s.wait_event_info != 0) {
		b.wait_event_type = pgstat_get_wait_event_type(s.wait_event_info);
		b.wait_event = pgstat_get_wait_event(s.wait_event_info);
	}
	b.has_xact_start = s.xact_start != 0;
	b.xact_start = s.xact_start;
	b.has_query_start = s.query_start != 0;
	b.query_start = s.query_start;
	b.open_transaction = s.open_transaction;
	return b;
}

// pg_stat_activity of a backend that still runs, with this pid and start.
bool ReadLiveBackend(int32 pid, TimestampTz backend_start, Backend *out)
{
	static const Oid types[3] = {INT4OID, TIMESTAMPTZOID, OIDOID};
	Datum values[3] = {Int32GetDatum(pid), TimestampTzGetDatum(backend_start), ObjectIdGetDatum(MyDatabaseId)};
	const char *sql = "SELECT s.state, s.query, s.wait_event_type, s.wait_event, s.xact_start, s.query_start "
	                  "FROM pg_catalog.pg_stat_get_activity($1) s "
	                  "WHERE s.backend_start OPERATOR(pg_catalog.=) $2 AND s.datid OPERATOR(pg_catalog.=) $3";
	spi::Run(spi::Plan(sql, 3, types), values, nullptr, true);
	if (SPI_processed == 0)
		return false;
	bool isnull = false;
	Backend b{};
	b.state = spi::ColumnText(0, 1);
	if (settings::forensics_query_text) {
		const char *query = spi::ColumnText(0, 2);
		if (query) {
			int len = static_cast<int>(strlen(query));
			int keep = ClipLength(query, len, kQueryBytes);
			b.query = keep < len ? psprintf("%.*s", keep, query) : query;
		}
	}
	b.wait_event_type = spi::ColumnText(0, 3);
	b.wait_event = spi::ColumnText(0, 4);
	Datum xact = spi::Column(0, 5, &isnull);
	b.has_xact_start = !isnull;
	b.xact_start = isnull ? 0 : DatumGetTimestampTz(xact);
	Datum query_start = spi::Column(0, 6, &isnull);
	b.has_query_start = !isnull;
	b.query_start = isnull ? 0 : DatumGetTimestampTz(query_start);
	b.open_transaction = b.has_xact_start;
	*out = b;
	return true;
}

} // namespace

Size ShmemSize()
{
	return MAXALIGN(sizeof(Ring));
}

bool Attach()
{
	if (ring && IsUnderPostmaster)
		return true;
	if (attach_failed)
		return false;
	char name[SHMEM_INDEX_KEYSIZE];
	snprintf(name, sizeof name, "worker_heartbeat forensics v%u/%zu", kLayoutVersion, sizeof(Ring));
	bool found = false;
	Ring *shared = nullptr;
	MemoryContext context = CurrentMemoryContext;
	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	// Without preload the server's spare shared memory may be too small:
	// then forensics say "no snapshot", nothing fails. ShmemInitStruct
	// releases its own lock before it raises. errfinish() zeroes
	// InterruptHoldoffCount before it jumps, and we still hold
	// AddinShmemInitLock (whose release decrements it): restore the count.
	uint32 holdoff = InterruptHoldoffCount;
	PG_TRY();
	{
		shared = static_cast<Ring *>(ShmemInitStruct(name, ShmemSize(), &found));
	}
	PG_CATCH();
	{
		InterruptHoldoffCount = holdoff;
		MemoryContextSwitchTo(context);
		FlushErrorState();
		shared = nullptr;
	}
	PG_END_TRY();
	if (shared && !found) {
		memset(static_cast<void *>(shared), 0, sizeof *shared);
		SpinLockInit(&shared->mutex);
		shared->magic = kMagic;
		shared->layout_version = kLayoutVersion;
		shared->size = sizeof(Ring);
	}
	LWLockRelease(AddinShmemInitLock);
	if (!shared || shared->magic != kMagic || shared->layout_version != kLayoutVersion ||
	    shared->size != sizeof(Ring)) {
		attach_failed = IsUnderPostmaster;
		return false;
	}
	ring = shared;
	return true;
}

void CaptureAtSessionEnd()
{
	if (!ring || MyBEEntry == nullptr)
		return; // never attached in this backend: nothing to do while exiting
	volatile PgBackendStatus *be = MyBEEntry;
	Snapshot s{};
	s.dboid = MyDatabaseId;
	s.pid = MyProcPid;
	s.backend_start = MyStartTimestamp;
	s.ended_at = GetCurrentTimestamp();
	s.state = static_cast<int32>(be->st_state);
	s.xact_start = be->st_xact_start_timestamp;
	s.query_start = be->st_activity_start_timestamp;
	s.wait_event_info = MyProc ? MyProc->wait_event_info : 0;
	// Still inside the transaction the session ended in: ShutdownPostgres,
	// which aborts it, is an earlier before_shmem_exit callback (they run in
	// reverse order).
	s.open_transaction = IsTransactionOrTransactionBlock();
	if (settings::forensics_query_text && be->st_activity_raw && s.state != STATE_DISABLED) {
		const char *raw = const_cast<const char *>(be->st_activity_raw);
		int len = static_cast<int>(strnlen(raw, pgstat_track_activity_query_size));
		int keep = ClipLength(raw, len, kQueryBytes);
		memcpy(s.query, raw, keep);
		s.query[keep] = '\0';
		s.has_query = true;
	}
	Locked lock;
	ring->items[ring->next % kRingEntries] = s;
	ring->next = (ring->next + 1) % kRingEntries;
}

Json Describe(const Facts &f)
{
	Backend b{};
	const Backend *backend = nullptr;
	const char *snapshot = "none";
	if (f.session_pid != 0 && f.has_backend_start) {
		if (strcmp(f.cause, "session_ended") == 0) {
			Snapshot s;
			if (FindSnapshot(MyDatabaseId, f.session_pid, f.backend_start, &s)) {
				b = FromSnapshot(s);
				backend = &b;
				snapshot = "session_end";
			}
		} else if (ReadLiveBackend(f.session_pid, f.backend_start, &b)) {
			backend = &b;
			snapshot = "live";
		}
	}
	return Json{Build(f, snapshot, backend, true), Build(f, snapshot, backend, false)};
}

} // namespace wh::forensics
