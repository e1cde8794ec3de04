#include "settings_scaleout.hpp"

extern "C" {
#include "utils/guc.h"
}

namespace wh::settings
{

int max_databases = kMaxDatabasesPreloaded;
int max_reapers = 4;
int pool_visit_interval_ms = 60 * 60 * 1000;

void DefineScaleout()
{
	// A postmaster setting can only be defined while the postmaster loads us;
	// without preload the registry is sized from the value in force when the
	// first backend creates it, and later changes wait for a restart.
	bool preloaded = process_shared_preload_libraries_in_progress;
	max_databases = preloaded ? kMaxDatabasesPreloaded : kMaxDatabasesNotPreloaded;
	DefineCustomIntVariable(
	    "worker_heartbeat.max_databases", "Databases the reaper registry in shared memory can hold.",
	    "A database beyond it is not reaped: reaper_status() says 'registry full (max_databases)'. Read at server "
	    "start when preloaded, else when the registry is first created.",
	    &max_databases, max_databases, 1, 100000, preloaded ? PGC_POSTMASTER : PGC_SIGHUP, 0, nullptr, nullptr,
	    nullptr);
	DefineCustomIntVariable("worker_heartbeat.max_reapers",
	                        "Reapers that may run at once (with shared_preload_libraries); databases beyond it are "
	                        "served in rotation.",
	                        "Each reaper is one background worker (max_worker_processes).", &max_reapers, max_reapers,
	                        1, 10000, PGC_SIGHUP, 0, nullptr, nullptr, nullptr);
	DefineCustomIntVariable("worker_heartbeat.pool_visit_interval",
	                        "Longest time between two visits of a database served in rotation when nothing calls "
	                        "for one: the safety visit.",
	                        "Ended sessions, death deadlines and the expiry of leases taken with claim_leases() or "
	                        "extend_lease() call for a visit themselves; leases set by plain SQL UPDATEs, stale "
	                        "workers and event retention wait for the next visit.",
	                        &pool_visit_interval_ms, pool_visit_interval_ms, 1000, 24 * 3600 * 1000, PGC_SIGHUP,
	                        GUC_UNIT_MS, nullptr, nullptr, nullptr);
}

} // namespace wh::settings
