#include "reaper.hpp"

#include "boundary.hpp"
#include "catalog.hpp"
#include "event_retention.hpp"
#include "heartbeat_cache.hpp"
#include "heartbeats.hpp"
#include "reaper_registry.hpp"
#include "reaping_pass.hpp"
#include "settings.hpp"

#include <cstring>

extern "C" {
#include "access/table.h"
#include "access/heapam.h"
#include "access/tableam.h"
#include "access/xlog.h"
#include "catalog/pg_database.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/lmgr.h"
#include "storage/lock.h"
#include "storage/proc.h"
#include "tcop/tcopprot.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
}

namespace wh::reaper
{

namespace
{

constexpr const char *kReaperType = "worker_heartbeat reaper";
constexpr const char *kLauncherType = "worker_heartbeat launcher";
// The reaper looks at least this often whether someone wants its database
// (DROP/RENAME DATABASE, CREATE DATABASE ... TEMPLATE): they wait 5 s for us.
constexpr long kMaxNapMs = 1000;
constexpr int64 kCleanupEveryUs = 60 * USECS_PER_SEC;
// A pass that skipped a table (lock timeout, a value that no longer casts, a
// dropped table) left leases of dead workers behind: an ordinary pass only
// looks for workers that died since the last one, so a full pass retries
// them, first after 1 s, then backing off to 30 s while tables keep failing.
constexpr int64 kRetryFirstUs = 1 * USECS_PER_SEC;
constexpr int64 kRetryMaxUs = 30 * USECS_PER_SEC;

Oid reaper_database = InvalidOid;
// Read by the exit callback: true when the extension is gone and the slot
// is to be dropped rather than left "not running". A flag, not a
// cancel_before_shmem_exit() of the callback (which only works for the
// callback registered last).
bool forget_slot_at_exit = false;

void ReleaseSlotAtExit(int, Datum)
{
	registry::ReleaseReaper(reaper_database, MyProcPid, forget_slot_at_exit);
}

// Someone is dropping, renaming or copying our database and waits for us to
// leave: a conflicting lock on the database object is held or requested.
bool DatabaseWanted()
{
	LOCKTAG tag;
	SET_LOCKTAG_OBJECT(tag, InvalidOid, DatabaseRelationId, MyDatabaseId, 0);
	if (LockAcquire(&tag, RowExclusiveLock, false, true) == LOCKACQUIRE_NOT_AVAIL)
		return true;
	LockRelease(&tag, RowExclusiveLock, false);
	return false;
}

enum class Step { Continue, ExtensionGone, DatabaseWanted };

// One transaction: check that we are still wanted, then reap.
Step RunOneTick(bool reap, bool full, int64 *cleanup_due, int *tables_failed)
{
	*tables_failed = 0;
	Step step = Step::Continue;
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	if (DatabaseWanted()) {
		CommitTransactionCommand();
		return Step::DatabaseWanted;
	}
	if (!reap) {
		CommitTransactionCommand();
		return step;
	}
	registry::BeginPass(MyDatabaseId); // before the snapshot: see reaper_registry.hpp
	PushActiveSnapshot(GetTransactionSnapshot());
	catalog::Extension ext;
	if (!catalog::FindExtensionCached(&ext)) {
		PopActiveSnapshot();
		CommitTransactionCommand();
		return Step::ExtensionGone;
	}
	if (XactReadOnly) {
		// default_transaction_read_only: a platform's read-only mode. Wait.
		registry::SetState(MyDatabaseId, "read-only");
		PopActiveSnapshot();
		CommitTransactionCommand();
		return step;
	}
	registry::SetState(MyDatabaseId, "reaping");
	pgstat_report_activity(STATE_RUNNING, "worker_heartbeat reaping pass");
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "worker_heartbeat: SPI_connect failed");
	reaping::PassResult result = reaping::RunPass(ext, reaping::PassOptions{true, full});
	*tables_failed = result.tables_failed;
	int removed = 0;
	TimestampTz now = GetCurrentTimestamp();
	if (now >= *cleanup_due) {
		removed = heartbeats::CleanupStale(ext, static_cast<int64>(settings::stale_after_ms) * 1000);
		*cleanup_due = now + kCleanupEveryUs;
	}
	retention::RunIfDue(ext); // worker_heartbeat.events_retention, in its own subtransaction
	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();
	pgstat_report_stat(false);
	pgstat_report_activity(STATE_IDLE, nullptr);
	registry::SetState(MyDatabaseId, "idle");
	if (result.declared_dead > 0 || result.released > 0 || removed > 0)
		ereport(LOG, (errmsg("worker_heartbeat reaper: declared %d worker(s) dead, released %d lease(s), removed %d "
		                     "stale worker(s) in %.1f ms",
		                     result.declared_dead, result.released, removed, result.duration_ms)));
	return step;
}

// A failing pass is reported and the loop goes on: no crash loop.
Step RunOneTickCatchingErrors(bool reap, bool full, int64 *cleanup_due, int *tables_failed)
{
	MemoryContext loop_context = CurrentMemoryContext;
	volatile Step step = Step::Continue;
	PG_TRY();
	{
		step = RunOneTick(reap, full, cleanup_due, tables_failed);
	}
	PG_CATCH();
	{
		*tables_failed = 1; // the whole pass failed: retry it in full
		MemoryContextSwitchTo(loop_context);
		ErrorData *error = CopyErrorData();
		FlushErrorState();
		AbortCurrentTransaction();          // drops the pass's effects (shared_state.hpp)
		SPI_finish();                       // no-op when not connected
		registry::PassFailed(MyDatabaseId); // heartbeats write through until a pass commits
		registry::SetLastError(MyDatabaseId, error->message);
		registry::SetState(MyDatabaseId, "idle");
		ereport(LOG, (errcode(error->sqlerrcode), errmsg("worker_heartbeat reaper: pass failed: %s", error->message),
		              errhint("The next pass will try again.")));
		FreeErrorData(error);
		pgstat_report_activity(STATE_IDLE, nullptr);
	}
	PG_END_TRY();
	return step;
}

// Waits for the transaction that started us (CREATE EXTENSION) to end, so we
// see its outcome.
void WaitForStarter()
{
	TransactionId starter = InvalidTransactionId;
	memcpy(&starter, MyBgworkerEntry->bgw_extra, sizeof starter);
	if (!TransactionIdIsValid(starter))
		return;
	StartTransactionCommand();
	XactLockTableWait(starter, nullptr, nullptr, XLTW_None);
	CommitTransactionCommand();
}

[[noreturn]] void ReaperMain(Oid dboid)
{
	reaper_database = dboid;
	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnectionByOid(dboid, InvalidOid, 0);
	pgstat_report_appname(kReaperType);

	WaitForStarter();
	StartTransactionCommand();
	catalog::Extension ext;
	bool installed = catalog::FindExtension(&ext);
	CommitTransactionCommand();
	if (!installed) {
		registry::ForgetIdleSlot(dboid);
		proc_exit(0); // nothing to do in this database
	}

	switch (registry::ClaimForReaper(dboid, MyProcPid, MyLatch)) {
	case registry::ClaimResult::AlreadyRunning:
		proc_exit(0); // never two reapers for one database
	case registry::ClaimResult::NoFreeSlot:
		ereport(LOG,
		        (errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
		         errmsg("worker_heartbeat reaper: too many databases with a reaper (at most %d)", registry::kSlots)));
		proc_exit(0);
	case registry::ClaimResult::Claimed:
		break;
	}
	before_shmem_exit(ReleaseSlotAtExit, (Datum)0);
	registry::SetState(dboid, "idle");

	bool full = true; // the first pass after a start looks at everything
	int64 cleanup_due = 0;
	TimestampTz next_pass = 0;
	TimestampTz retry_full_at = 0; // 0: nothing to retry
	int64 retry_backoff_us = kRetryFirstUs;
	for (;;) {
		TimestampTz now = GetCurrentTimestamp();
		long nap = Min(kMaxNapMs, Max(0L, static_cast<long>((next_pass - now) / 1000)));
		int events = WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH, nap, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending) {
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
			full = true; // dead_after may have changed
		}
		if (registry::StopRequested(dboid))
			proc_exit(0); // stop_reaper(): exit 0, so the postmaster does not restart us
		if (RecoveryInProgress()) {
			registry::SetState(dboid, "standby");
			continue;
		}
		// A latch set by a session that ended asks for a pass right now; a
		// timeout short of the next pass only checks the database lock.
		bool reap = full || (events & WL_LATCH_SET) || GetCurrentTimestamp() >= next_pass;
		if (reap && retry_full_at != 0 && GetCurrentTimestamp() >= retry_full_at)
			full = true;
		int tables_failed = 0;
		Step step = RunOneTickCatchingErrors(reap, full, &cleanup_due, &tables_failed);
		if (reap) {
			TimestampTz done = GetCurrentTimestamp();
			if (tables_failed == 0) {
				if (full) { // a full pass that went through: nothing left behind
					retry_full_at = 0;
					retry_backoff_us = kRetryFirstUs;
				}
			} else if (full || retry_full_at == 0) {
				retry_full_at = done + retry_backoff_us;
				if (full)
					retry_backoff_us = Min(retry_backoff_us * 2, kRetryMaxUs);
			}
			full = false;
			next_pass = done + static_cast<int64>(settings::reap_interval_ms) * 1000;
		}
		if (step == Step::ExtensionGone) {
			cache::ForgetDatabase(dboid);
			forget_slot_at_exit = true;
			proc_exit(0);
		}
		if (step == Step::DatabaseWanted) {
			ereport(LOG, (errmsg("worker_heartbeat reaper: leaving database %u, which another session wants "
			                     "exclusively (DROP, RENAME or copy)",
			                     dboid)));
			proc_exit(0);
		}
	}
}

// --- the launcher (preloaded only) -------------------------------------------

struct DatabaseList {
	Oid *oids;
	int count;
};

// Allocated in context, which must outlive the transaction that reads pg_database.
DatabaseList ConnectableDatabases(MemoryContext context)
{
	DatabaseList list{nullptr, 0};
	int capacity = 16;
	list.oids = static_cast<Oid *>(MemoryContextAlloc(context, sizeof(Oid) * capacity));
	Relation rel = table_open(DatabaseRelationId, AccessShareLock);
	TableScanDesc scan = table_beginscan_catalog(rel, 0, nullptr);
	HeapTuple tuple;
	while ((tuple = heap_getnext(scan, ForwardScanDirection)) != nullptr) {
		auto *db = reinterpret_cast<Form_pg_database>(GETSTRUCT(tuple));
		if (!db->datallowconn || db->datistemplate)
			continue;
		if (list.count == capacity) {
			capacity *= 2;
			list.oids = static_cast<Oid *>(repalloc(list.oids, sizeof(Oid) * capacity));
		}
		list.oids[list.count++] = db->oid;
	}
	table_endscan(scan);
	table_close(rel, AccessShareLock);
	return list;
}

bool Contains(const Oid *oids, int count, Oid oid)
{
	for (int i = 0; i < count; ++i)
		if (oids[i] == oid)
			return true;
	return false;
}

[[noreturn]] void LauncherMain()
{
	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnection(nullptr, nullptr, 0);
	pgstat_report_appname(kLauncherType);

	// Databases already given a chance: a reaper that finds no extension
	// exits, and we do not start it again until it is asked for (CREATE
	// EXTENSION or a heartbeat start it themselves).
	// Both lists live in launcher_context (a round's list is reset each
	// round), never in the memory of the transaction that read pg_database.
	MemoryContext launcher_context =
	    AllocSetContextCreate(TopMemoryContext, "worker_heartbeat launcher", ALLOCSET_DEFAULT_SIZES);
	MemoryContext round_context =
	    AllocSetContextCreate(launcher_context, "worker_heartbeat launcher round", ALLOCSET_DEFAULT_SIZES);
	Oid *seen = nullptr; // no limit: as many as pg_database lists
	int seen_count = 0;
	for (;;) {
		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending) {
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}
		MemoryContextReset(round_context);
		StartTransactionCommand();
		DatabaseList databases = ConnectableDatabases(round_context);
		CommitTransactionCommand();
		// seen keeps only databases that still exist, in the order listed.
		Oid *next_seen = static_cast<Oid *>(MemoryContextAlloc(launcher_context, sizeof(Oid) * (databases.count + 1)));
		int next_seen_count = 0;
		TimestampTz now = GetCurrentTimestamp();
		for (int i = 0; i < databases.count; ++i) {
			Oid db = databases.oids[i];
			bool first_time = !Contains(seen, seen_count, db);
			next_seen[next_seen_count++] = db;
			// A new database gets one look (its reaper exits at once if the
			// extension is not there); a known one gets its reaper back if it
			// had one that ended (a slot without a pid, not stopped on purpose).
			if (registry::ShouldStartReaper(db, now, first_time))
				StartForDatabase(db, false);
		}
		if (seen)
			pfree(seen);
		seen = next_seen;
		seen_count = next_seen_count;
		registry::ForgetDatabasesExcept(databases.oids, databases.count);
		cache::ForgetDatabasesExcept(databases.oids, databases.count); // a dropped database's heartbeats
		(void)WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH, settings::launcher_interval_ms,
		                PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
	}
}

} // namespace

bool StartForDatabase(Oid dboid, bool wait)
{
	BackgroundWorker worker;
	memset(&worker, 0, sizeof worker);
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
	// Never restarted by the postmaster: a reaper whose database was dropped
	// would fail to connect forever. The launcher (preloaded) or the next
	// heartbeat (not preloaded) starts a new one.
	worker.bgw_restart_time = BGW_NEVER_RESTART;
	strlcpy(worker.bgw_library_name, "worker_heartbeat", sizeof worker.bgw_library_name);
	strlcpy(worker.bgw_function_name, "worker_heartbeat_reaper_main", sizeof worker.bgw_function_name);
	snprintf(worker.bgw_name, sizeof worker.bgw_name, "%s for database %u", kReaperType, dboid);
	strlcpy(worker.bgw_type, kReaperType, sizeof worker.bgw_type);
	worker.bgw_main_arg = ObjectIdGetDatum(dboid);
	worker.bgw_notify_pid = wait ? MyProcPid : 0;
	TransactionId starter = IsTransactionState() ? GetTopTransactionIdIfAny() : InvalidTransactionId;
	memcpy(worker.bgw_extra, &starter, sizeof starter);
	BackgroundWorkerHandle *handle = nullptr;
	if (!RegisterDynamicBackgroundWorker(&worker, wait ? &handle : nullptr)) {
		registry::ForgetStartAttempt(dboid);
		return false;
	}
	if (wait) {
		pid_t pid;
		if (WaitForBackgroundWorkerStartup(handle, &pid) != BGWH_STARTED)
			return false;
	}
	return true;
}

void RegisterLauncher()
{
	BackgroundWorker worker;
	memset(&worker, 0, sizeof worker);
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker.bgw_restart_time = 10;
	strlcpy(worker.bgw_library_name, "worker_heartbeat", sizeof worker.bgw_library_name);
	strlcpy(worker.bgw_function_name, "worker_heartbeat_launcher_main", sizeof worker.bgw_function_name);
	strlcpy(worker.bgw_name, kLauncherType, sizeof worker.bgw_name);
	strlcpy(worker.bgw_type, kLauncherType, sizeof worker.bgw_type);
	RegisterBackgroundWorker(&worker);
}

} // namespace wh::reaper

extern "C" {

void worker_heartbeat_reaper_main(Datum main_arg)
{
	wh::RunGuarded("worker_heartbeat_reaper_main", [&] { wh::reaper::ReaperMain(DatumGetObjectId(main_arg)); });
}

void worker_heartbeat_launcher_main(Datum)
{
	wh::RunGuarded("worker_heartbeat_launcher_main", [&] { wh::reaper::LauncherMain(); });
}
}
