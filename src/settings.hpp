// The worker_heartbeat.* settings (GUCs). See docs/design.md for the table.
#pragma once

#include "pg.hpp"

namespace wh::settings
{

void Define(); // from _PG_init

extern int dead_after_ms;        // worker_heartbeat.dead_after
extern int reap_interval_ms;     // worker_heartbeat.reap_interval
extern int stale_after_ms;       // worker_heartbeat.stale_after
extern int pass_lock_timeout_ms; // worker_heartbeat.pass_lock_timeout
extern int launcher_interval_ms; // worker_heartbeat.launcher_interval
extern int max_workers;          // worker_heartbeat.max_workers (postmaster)
// Limits on what one role may store (superuser settings, see docs/security.md).
extern int max_task_bytes;       // worker_heartbeat.max_task_bytes
extern int max_metadata_bytes;   // worker_heartbeat.max_metadata_bytes
extern int max_workers_per_role; // worker_heartbeat.max_workers_per_role (0: no limit)
extern bool shared_worker_ids;   // worker_heartbeat.shared_worker_ids

} // namespace wh::settings
