#include "settings.hpp"

extern "C" {
#include "utils/guc.h"
}

namespace wh::settings
{

int dead_after_ms = 5 * 60 * 1000;
int reap_interval_ms = 1000;
int stale_after_ms = 60 * 60 * 1000;
int pass_lock_timeout_ms = 100;
int launcher_interval_ms = 10 * 1000;
int max_workers = 10000;
int notify_payload = kNotifyFull;

namespace
{
const struct config_enum_entry kNotifyPayloadOptions[] = {
    {"full", kNotifyFull, false}, {"minimal", kNotifyMinimal, false}, {nullptr, 0, false}};
} // namespace
int session_check_interval_ms = 1000;
double events_retention_ms = 7.0 * 24 * 3600 * 1000;
int max_task_bytes = 1024;
int max_metadata_bytes = 64 * 1024;
int max_workers_per_role = 10000;
bool shared_worker_ids = false;
int max_checkpoint_bytes = 1024 * 1024;
bool forensics_query_text = true;
bool terminate_zombies = false;

void Define()
{
	// Readable by every role (no GUC_SUPERUSER_ONLY): the views read dead_after.
	DefineCustomIntVariable("worker_heartbeat.dead_after", "Silence after which a worker is declared dead.",
	                        "Overridden per worker type with set_worker_type_dead_after().", &dead_after_ms,
	                        dead_after_ms, 1000, INT_MAX, PGC_SIGHUP, GUC_UNIT_MS, nullptr, nullptr, nullptr);
	DefineCustomIntVariable("worker_heartbeat.reap_interval", "Time between two passes of the reaper.", nullptr,
	                        &reap_interval_ms, reap_interval_ms, 10, 3600 * 1000, PGC_SIGHUP, GUC_UNIT_MS, nullptr,
	                        nullptr, nullptr);
	DefineCustomIntVariable(
	    "worker_heartbeat.stale_after", "The reaper removes workers stopped or dead for longer than this.", nullptr,
	    &stale_after_ms, stale_after_ms, 60 * 1000, INT_MAX, PGC_SIGHUP, GUC_UNIT_MS, nullptr, nullptr, nullptr);
	DefineCustomIntVariable("worker_heartbeat.pass_lock_timeout",
	                        "Longest lock wait of a reaping pass on one table before it skips that table.", nullptr,
	                        &pass_lock_timeout_ms, pass_lock_timeout_ms, 1, 60 * 1000, PGC_SIGHUP, GUC_UNIT_MS, nullptr,
	                        nullptr, nullptr);
	DefineCustomIntVariable("worker_heartbeat.launcher_interval",
	                        "How often the launcher looks for databases that need a reaper.", nullptr,
	                        &launcher_interval_ms, launcher_interval_ms, 100, 3600 * 1000, PGC_SIGHUP, GUC_UNIT_MS,
	                        nullptr, nullptr, nullptr);
	DefineCustomEnumVariable("worker_heartbeat.notify_payload",
	                         "What the NOTIFYs on channel worker_heartbeat say: full or minimal (ids only).",
	                         "Any role that can connect may LISTEN: minimal leaves worker types, table names and "
	                         "causes out of the payloads (listeners read them from worker_events by event_id).",
	                         &notify_payload, notify_payload, kNotifyPayloadOptions, PGC_SUSET, 0, nullptr, nullptr,
	                         nullptr);
	// Sessions that bind a worker (p_session_bound => true) poll their client
	// socket this often while they run a statement: see session_watch.hpp.
	DefineCustomIntVariable("worker_heartbeat.session_check_interval",
	                        "How often a session that bound a worker checks, while it runs a statement, that its "
	                        "client is still connected (sets client_connection_check_interval; 0: off).",
	                        "Without it, a busy session whose client died is noticed only when its statement ends.",
	                        &session_check_interval_ms, session_check_interval_ms, 0, INT_MAX, PGC_USERSET, GUC_UNIT_MS,
	                        nullptr, nullptr, nullptr);
	// The reaper deletes older events in small batches: see event_retention.hpp.
	DefineCustomRealVariable("worker_heartbeat.events_retention",
	                         "Age after which the reaper deletes rows of worker_events (0: keep everything).",
	                         "metrics() counters keep counting the deleted events.", &events_retention_ms,
	                         events_retention_ms, 0, 100.0 * 365 * 24 * 3600 * 1000, PGC_SIGHUP, GUC_UNIT_MS, nullptr,
	                         nullptr, nullptr);
	// Limits and the ownership rule: PGC_SUSET, so that a worker role cannot
	// lift them for itself (a superuser can, or GRANT SET ON PARAMETER).
	DefineCustomIntVariable("worker_heartbeat.max_task_bytes", "Longest current_task a heartbeat may store, in bytes.",
	                        nullptr, &max_task_bytes, max_task_bytes, 0, 1024 * 1024, PGC_SUSET, GUC_UNIT_BYTE, nullptr,
	                        nullptr, nullptr);
	DefineCustomIntVariable("worker_heartbeat.max_metadata_bytes",
	                        "Largest metadata a worker may store (jsonb size after merging), in bytes.", nullptr,
	                        &max_metadata_bytes, max_metadata_bytes, 64, 64 * 1024 * 1024, PGC_SUSET, GUC_UNIT_BYTE,
	                        nullptr, nullptr, nullptr);
	DefineCustomIntVariable("worker_heartbeat.max_workers_per_role",
	                        "Most worker ids one role may own (live, stopped or dead); 0 means no limit.", nullptr,
	                        &max_workers_per_role, max_workers_per_role, 0, INT_MAX, PGC_SUSET, 0, nullptr, nullptr,
	                        nullptr);
	DefineCustomBoolVariable("worker_heartbeat.shared_worker_ids",
	                         "Every role that may call the heartbeat functions may act on every worker.",
	                         "Off: a worker belongs to the role that created it, its members and superusers.",
	                         &shared_worker_ids, shared_worker_ids, PGC_SUSET, 0, nullptr, nullptr, nullptr);
	// 1.3: the largest checkpoint checkpoint_lease() stores (docs/fenced-leases.md).
	DefineCustomIntVariable("worker_heartbeat.max_checkpoint_bytes",
	                        "Largest checkpoint checkpoint_lease() stores (jsonb size), in bytes.", nullptr,
	                        &max_checkpoint_bytes, max_checkpoint_bytes, 64, 256 * 1024 * 1024, PGC_SUSET,
	                        GUC_UNIT_BYTE, nullptr, nullptr, nullptr);
	// Death forensics and zombie termination (docs/fleet-control.md). Query
	// texts may hold secrets: only a superuser decides whether they go into
	// worker_events (never into NOTIFY payloads).
	DefineCustomBoolVariable("worker_heartbeat.forensics_query_text",
	                         "The died event's forensics keep the dead worker's last query text (256 bytes at most).",
	                         "Off: the query is left out; state, wait event and transaction times are kept.",
	                         &forensics_query_text, forensics_query_text, PGC_SUSET, 0, nullptr, nullptr, nullptr);
	DefineCustomBoolVariable("worker_heartbeat.terminate_zombies",
	                         "The reaper terminates the still running backend of a session-bound worker it declares "
	                         "dead by timeout.",
	                         "Overridden per worker type with set_worker_type_terminate_zombies().", &terminate_zombies,
	                         terminate_zombies, PGC_SIGHUP, 0, nullptr, nullptr, nullptr);
	// A postmaster setting can only be defined while the postmaster loads us:
	// without shared_preload_libraries there is no cache to size anyway.
	if (process_shared_preload_libraries_in_progress)
		DefineCustomIntVariable("worker_heartbeat.max_workers",
		                        "Workers the shared-memory heartbeat cache can hold (needs shared_preload_libraries).",
		                        "Workers beyond this write every heartbeat to the table.", &max_workers, max_workers,
		                        16, 10 * 1000 * 1000, PGC_POSTMASTER, 0, nullptr, nullptr, nullptr);
	MarkGUCPrefixReserved("worker_heartbeat");
}

} // namespace wh::settings
