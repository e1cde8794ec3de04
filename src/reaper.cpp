#include "reaper.hpp"

#include "boundary.hpp"
#include "catalog.hpp"
#include "event_retention.hpp"
#include "expiry_probe.hpp"
#include "heartbeat_cache.hpp"
#include "heartbeats.hpp"
#include "reaper_registry.hpp"
#include "reaping_pass.hpp"
#include "settings.hpp"
#include "settings_scaleout.hpp"

#include <cstring>
#include <sys/resource.h>

extern "C" {
#include "access/table.h"
#include "access/heapam.h"
#include "access/tableam.h"
#include "access/xlog.h"
#include "catalog/pg_database.h"
#include "commands/dbcommands.h"
#include "commands/extension.h"
#include "miscadmin.h"
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
// When databases outnumber max_reapers, a reaper whose passes found nothing
// to do for this long leaves: an idle server runs no reaper at all, and a
// database is visited when it is due (docs/scaleout.md).
constexpr int64 kPooledIdleExitUs = 5 * USECS_PER_SEC;
// A leaving reaper that cannot tell its database's earliest lease expiry (a
// registered table without a btree index on its expires column, a lock
// taken) has it visited again after this (the pool_visit_interval of 1.2).
constexpr int64 kUnknownLeasesVisitUs = 5 * 60 * USECS_PER_SEC;

Oid reaper_database = InvalidOid;

// CPU this process has used (user + system), in microseconds: the reaper's
// DEBUG1 line at exit splits a visit's cost (docs/benchmarks.md).
int64 CpuUs()
{
	struct rusage usage;
	if (getrusage(RUSAGE_SELF, &usage) != 0)
		return 0;
	return static_cast<int64>(usage.ru_utime.tv_sec + usage.ru_stime.tv_sec) * 1000000 + usage.ru_utime.tv_usec +
	       usage.ru_stime.tv_usec;
}
// Milestones of this reaper's life: connected, extension found, first pass done.
int64 cpu_connected_us = 0, cpu_found_us = 0, cpu_first_pass_us = 0;
// Within the first pass: RunPass, CleanupStale + retention, the lease expiry.
int64 cpu_first_run_us = 0, cpu_first_cleanup_us = 0, cpu_first_expiry_us = 0;
int passes_run = 0;
// Read by the exit callback: true when the extension is gone and the slot
// is to be dropped rather than left "not running". A flag, not a
// cancel_before_shmem_exit() of the callback (which only works for the
// callback registered last).
bool forget_slot_at_exit = false;
// Set when the reaper gives its place to another database (the launcher
// asked): the database's next visit is then due at this time at the latest.
TimestampTz next_visit_at_exit = 0;

void ReleaseSlotAtExit(int, Datum)
{
	ereport(
	    DEBUG1,
	    (errmsg("worker_heartbeat reaper: CPU %.1f ms: connect %.1f, catalog %.1f, first pass %.1f (pass %.1f, "
	            "cleanup and retention %.1f, lease expiry %.1f), %d later passes %.1f",
	            CpuUs() / 1000.0, cpu_connected_us / 1000.0, (cpu_found_us - cpu_connected_us) / 1000.0,
	            (cpu_first_pass_us - cpu_found_us) / 1000.0, cpu_first_run_us / 1000.0, cpu_first_cleanup_us / 1000.0,
	            cpu_first_expiry_us / 1000.0, Max(passes_run - 1, 0), (CpuUs() - cpu_first_pass_us) / 1000.0)));
	if (forget_slot_at_exit)
		registry::ReleaseReaper(reaper_database, MyProcPid, true);
	else if (next_visit_at_exit != 0)
		registry::ReleaseReaperForVisit(reaper_database, MyProcPid, next_visit_at_exit, true);
	else // any other exit: the launcher may start a reaper again after its back-off
		registry::ReleaseReaperForVisit(reaper_database, MyProcPid, GetCurrentTimestamp(), false);
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
// leaving: the last pass before the reaper gives its place; it leaves in its
// slot the earliest lease expiry (the launcher visits the database then).
Step RunOneTick(bool reap, bool full, bool leaving, int64 *cleanup_due, int *tables_failed)
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
	int64 cpu_at = CpuUs();
	reaping::PassResult result = reaping::RunPass(ext, reaping::PassOptions{true, full});
	if (passes_run == 0)
		cpu_first_run_us = CpuUs() - cpu_at;
	cpu_at = CpuUs();
	*tables_failed = result.tables_failed;
	int removed = 0;
	TimestampTz now = GetCurrentTimestamp();
	if (now >= *cleanup_due) {
		removed = heartbeats::CleanupStale(ext, static_cast<int64>(settings::stale_after_ms) * 1000);
		*cleanup_due = now + kCleanupEveryUs;
	}
	retention::RunIfDue(ext); // worker_heartbeat.events_retention, in its own subtransaction
	if (passes_run == 0)
		cpu_first_cleanup_us = CpuUs() - cpu_at;
	cpu_at = CpuUs();
	if (leaving) {
		TimestampTz earliest = core::DeathSchedule::kNever;
		if (!leases::EarliestExpiry(ext, &earliest))
			earliest = GetCurrentTimestamp() + kUnknownLeasesVisitUs;
		registry::LeasesChecked(MyDatabaseId, earliest);
		if (passes_run == 0)
			cpu_first_expiry_us = CpuUs() - cpu_at;
	}
	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();
	pgstat_report_stat(false);
	pgstat_report_activity(STATE_IDLE, nullptr);
	registry::SetState(MyDatabaseId, "idle");
	if (result.declared_dead > 0 || result.released > 0)
		registry::NoteWork(MyDatabaseId, GetCurrentTimestamp()); // a busy database keeps its reaper longer
	if (result.declared_dead > 0 || result.released > 0 || removed > 0)
		ereport(LOG, (errmsg("worker_heartbeat reaper: declared %d worker(s) dead, released %d lease(s), removed %d "
		                     "stale worker(s) in %.1f ms",
		                     result.declared_dead, result.released, removed, result.duration_ms)));
	return step;
}

// A failing pass is reported and the loop goes on: no crash loop.
Step RunOneTickCatchingErrors(bool reap, bool full, bool leaving, int64 *cleanup_due, int *tables_failed)
{
	MemoryContext loop_context = CurrentMemoryContext;
	volatile Step step = Step::Continue;
	PG_TRY();
	{
		step = RunOneTick(reap, full, leaving, cleanup_due, tables_failed);
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
	cpu_connected_us = CpuUs();

	WaitForStarter();
	StartTransactionCommand();
	catalog::Extension ext;
	bool installed = catalog::FindExtension(&ext);
	CommitTransactionCommand();
	if (!installed) {
		registry::ForgetIdleSlot(dboid);
		registry::WakeLauncher(); // a look that found no extension: its place is free
		proc_exit(0);             // nothing to do in this database
	}

	switch (registry::ClaimForReaper(dboid, MyProcPid, MyLatch)) {
	case registry::ClaimResult::AlreadyRunning:
		proc_exit(0); // never two reapers for one database
	case registry::ClaimResult::NoFreeSlot:
		ereport(WARNING,
		        (errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
		         errmsg("worker_heartbeat reaper: database %u is not reaped: the registry is full (%d databases)",
		                dboid, registry::Capacity()),
		         errhint("Raise worker_heartbeat.max_databases (needs a restart).")));
		proc_exit(0);
	case registry::ClaimResult::Claimed:
		break;
	}
	before_shmem_exit(ReleaseSlotAtExit, (Datum)0);
	registry::SetState(dboid, "idle");
	cpu_found_us = CpuUs();

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
		// The launcher wants our place for a database that waits: one last
		// pass (beats still in shared memory, sessions that just ended), then
		// leave; the database is visited again when its schedule says.
		bool yielding =
		    registry::YieldRequested(dboid) ||
		    registry::ShouldLeaveIdle(dboid, GetCurrentTimestamp(), kPooledIdleExitUs, settings::max_reapers);
		if (yielding)
			events |= WL_LATCH_SET;
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
		Step step = RunOneTickCatchingErrors(reap, full, yielding, &cleanup_due, &tables_failed);
		if (reap) {
			if (passes_run++ == 0)
				cpu_first_pass_us = CpuUs();
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
		if (yielding && step == Step::Continue && !RecoveryInProgress()) {
			next_visit_at_exit = GetCurrentTimestamp() + static_cast<int64>(settings::pool_visit_interval_ms) * 1000;
			if (retry_full_at != 0) // a table failed: come back for it as a dedicated reaper would
				next_visit_at_exit = Min(next_visit_at_exit, retry_full_at);
			proc_exit(0);
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

void ClearLauncherAtExit(int, Datum)
{
	registry::SetLauncher(0, nullptr);
}

// Registers the background worker of a start already counted in the budget.
bool RegisterReaper(Oid dboid, bool wait);

// The launcher: starts reapers within worker_heartbeat.max_reapers, the most
// overdue database first (src/README.md draws it).
[[noreturn]] void LauncherMain()
{
	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnection(nullptr, nullptr, 0);
	pgstat_report_appname(kLauncherType);
	registry::SetLauncher(MyProcPid, MyLatch);
	before_shmem_exit(ClearLauncherAtExit, (Datum)0);

	// Databases already given a look: a reaper that finds no extension
	// exits, and we do not look again until it is asked for (CREATE
	// EXTENSION or a heartbeat ask themselves). A database not looked at yet
	// waits in `unseen` until the budget has room (a look is a reaper).
	// The lists live in launcher_context (a round's list is reset each
	// round), never in the memory of the transaction that read pg_database.
	MemoryContext launcher_context =
	    AllocSetContextCreate(TopMemoryContext, "worker_heartbeat launcher", ALLOCSET_DEFAULT_SIZES);
	MemoryContext round_context =
	    AllocSetContextCreate(launcher_context, "worker_heartbeat launcher round", ALLOCSET_DEFAULT_SIZES);
	Oid *seen = nullptr; // no limit: as many as pg_database lists
	int seen_count = 0;
	DatabaseList databases{nullptr, 0};
	TimestampTz next_scan = 0;
	constexpr int kMaxStartsPerRound = 64;
	Oid starts[kMaxStartsPerRound];
	uint64 refused_logged = 0; // at most one WARNING a minute
	TimestampTz refused_logged_at = 0;
	int waiting_logged = 0; // at most one LOG a minute
	TimestampTz waiting_logged_at = 0;
	for (;;) {
		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending) {
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
			next_scan = 0;
		}
		TimestampTz now = GetCurrentTimestamp();
		if (now >= next_scan) {
			MemoryContextReset(round_context);
			StartTransactionCommand();
			databases = ConnectableDatabases(round_context);
			CommitTransactionCommand();
			registry::ForgetDatabasesExcept(databases.oids, databases.count);
			cache::ForgetDatabasesExcept(databases.oids, databases.count); // a dropped database's heartbeats
			next_scan = GetCurrentTimestamp() + static_cast<int64>(settings::launcher_interval_ms) * 1000;
		}
		// 1. Databases with the extension that need a reaper, most overdue first.
		now = GetCurrentTimestamp();
		TimestampTz next_due = 0;
		int waiting = 0;
		int n = registry::PlanStarts(now, settings::max_reapers, starts, kMaxStartsPerRound, &next_due, &waiting,
		                             databases.count - seen_count);
		for (int i = 0; i < n; ++i)
			(void)RegisterReaper(starts[i], false);
		if (waiting > 0 && waiting_logged == 0 && GetCurrentTimestamp() - waiting_logged_at >= 60 * USECS_PER_SEC) {
			waiting_logged_at = GetCurrentTimestamp();
			ereport(LOG, (errmsg("worker_heartbeat launcher: %d database(s) wait for a reaper (max_reapers = %d); "
			                     "the reapers idle longest are asked to make room",
			                     waiting, settings::max_reapers)));
		}
		waiting_logged = waiting;
		// 2. A look at databases never seen, while the budget has room.
		Oid *next_seen = static_cast<Oid *>(MemoryContextAlloc(launcher_context, sizeof(Oid) * (databases.count + 1)));
		int next_seen_count = 0;
		for (int i = 0; i < databases.count; ++i) {
			Oid db = databases.oids[i];
			bool known = Contains(seen, seen_count, db) || registry::Known(db);
			if (!known && waiting == 0) {
				switch (registry::ReserveStart(db, GetCurrentTimestamp(), settings::max_reapers, true)) {
				case registry::ReserveResult::Reserved:
					// A look that could not start keeps no slot (the database
					// may not have the extension); it is tried again.
					known = RegisterReaper(db, false);
					if (!known)
						registry::ForgetIdleSlot(db);
					break;
				case registry::ReserveResult::NoBudget:
					break; // next round
				case registry::ReserveResult::NoSlot:
					// Logged below; not looked at again (its own CREATE
					// EXTENSION or heartbeats ask for a slot themselves).
					known = true;
					break;
				default:
					known = true;
					break;
				}
			}
			if (known)
				next_seen[next_seen_count++] = db;
		}
		if (seen)
			pfree(seen);
		seen = next_seen;
		seen_count = next_seen_count;
		uint64 refused = registry::RefusedCount();
		if (refused != refused_logged && GetCurrentTimestamp() - refused_logged_at >= 60 * USECS_PER_SEC) {
			refused_logged_at = GetCurrentTimestamp();
			ereport(WARNING, (errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
			                  errmsg("worker_heartbeat launcher: the registry is full (%d databases): some databases "
			                         "are not reaped",
			                         registry::Capacity()),
			                  errhint("Raise worker_heartbeat.max_databases (needs a restart).")));
			refused_logged = refused;
		}
		now = GetCurrentTimestamp();
		int64 wait_us = next_scan - now;
		if (next_due != 0 && next_due != core::DeathSchedule::kNever)
			wait_us = Min(wait_us, next_due - now);
		if (seen_count < databases.count || waiting > 0)
			wait_us = Min(wait_us, static_cast<int64>(100 * 1000)); // looks or evictions pending
		long wait_ms = static_cast<long>(Max(wait_us, static_cast<int64>(1000)) / 1000);
		(void)WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH, wait_ms, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
	}
}

bool RegisterReaper(Oid dboid, bool wait)
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
		registry::StartFailed(dboid);
		return false;
	}
	if (wait) {
		pid_t pid;
		if (WaitForBackgroundWorkerStartup(handle, &pid) != BGWH_STARTED)
			return false;
	}
	return true;
}

} // namespace

bool StartForDatabase(Oid dboid, bool wait)
{
	return Start(dboid, wait) == StartResult::Started;
}

StartResult Start(Oid dboid, bool wait)
{
	bool launcher = registry::LauncherRunning();
	switch (registry::ReserveStart(dboid, GetCurrentTimestamp(), launcher ? settings::max_reapers : 0, true)) {
	case registry::ReserveResult::Reserved:
		break;
	case registry::ReserveResult::AlreadyRunning:
		return StartResult::AlreadyRunning;
	case registry::ReserveResult::Starting:
		// A reaper of our own that waits for our transaction (CREATE
		// EXTENSION) and sees it; the look that started first exits or
		// finds this one holding the slot (never two).
		return RegisterReaper(dboid, wait) ? StartResult::Started : StartResult::NoWorkerSlot;
	case registry::ReserveResult::Stopped:
		return StartResult::Stopped;
	case registry::ReserveResult::NoSlot:
		return StartResult::RegistryFull;
	case registry::ReserveResult::NoBudget:
		// Served in rotation: due now, the launcher makes room.
		registry::RequestVisit(dboid, GetCurrentTimestamp());
		return StartResult::Queued;
	}
	return RegisterReaper(dboid, wait) ? StartResult::Started : StartResult::NoWorkerSlot;
}

bool StartFromSql()
{
	bool wait = !IsBinaryUpgrade && GetTopTransactionIdIfAny() == InvalidTransactionId;
	StartResult result = Start(MyDatabaseId, wait);
	// During CREATE / ALTER EXTENSION a database without a reaper must not
	// make the installation fail: a WARNING that says why and what to set.
	int level = creating_extension ? WARNING : ERROR;
	switch (result) {
	case StartResult::Started:
		return true;
	case StartResult::AlreadyRunning:
	case StartResult::Stopped:
		return false;
	case StartResult::Queued:
		ereport(NOTICE, (errmsg("worker_heartbeat: %d reapers run already (worker_heartbeat.max_reapers); this "
		                        "database is served in rotation",
		                        settings::max_reapers),
		                 errdetail("A reaper is started for it when a session ends, a deadline comes, or every "
		                           "worker_heartbeat.pool_visit_interval."),
		                 errhint("Raise worker_heartbeat.max_reapers to give every database a reaper of its own.")));
		return true;
	case StartResult::NoWorkerSlot:
		ereport(level, (errcode(ERRCODE_INSUFFICIENT_RESOURCES),
		                errmsg("worker_heartbeat: no reaper for database \"%s\": no background worker slot is free",
		                       get_database_name(MyDatabaseId)),
		                errdetail("reaper_status() says '%s' until one starts.", registry::kStateNoWorker),
		                errhint(registry::LauncherRunning()
		                            ? "Raise max_worker_processes (restart) above worker_heartbeat.max_reapers plus "
		                              "the other background workers; the launcher retries every few seconds."
		                            : "Raise max_worker_processes (restart): without shared_preload_libraries every "
		                              "database with worker_heartbeat needs one background worker. Until then call "
		                              "release_dead_worker_leases() yourself (for example from pg_cron).")));
		return false;
	case StartResult::RegistryFull:
		ereport(level, (errcode(ERRCODE_INSUFFICIENT_RESOURCES),
		                errmsg("worker_heartbeat: no reaper for database \"%s\": the reaper registry is full (%d "
		                       "databases)",
		                       get_database_name(MyDatabaseId), registry::Capacity()),
		                errdetail("reaper_status() says '%s' in this database.", registry::kStateRegistryFull),
		                errhint("Raise worker_heartbeat.max_databases and restart the server. Until then call "
		                        "release_dead_worker_leases() yourself (for example from pg_cron).")));
		return false;
	}
	return false;
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
