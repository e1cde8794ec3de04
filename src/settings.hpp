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

// worker_heartbeat.notify_payload: what a NOTIFY on channel "worker_heartbeat"
// says. Full: every field of the event; Minimal: event, event_id, worker_id
// and at only (no worker type, table name or cause: any role that can connect
// may LISTEN).
enum NotifyPayload { kNotifyFull = 0, kNotifyMinimal = 1 };
extern int notify_payload;
// 1.2 (issue 13, items 5 and 6)
extern int session_check_interval_ms; // worker_heartbeat.session_check_interval (0: off)
extern double events_retention_ms;    // worker_heartbeat.events_retention (0: keep everything)
// 1.3 (issue 16, checkpoints)
extern int max_checkpoint_bytes; // worker_heartbeat.max_checkpoint_bytes
// 1.3 (issue 16, sections 3 and 4): docs/fleet-control.md
extern bool forensics_query_text; // worker_heartbeat.forensics_query_text
extern bool terminate_zombies;    // worker_heartbeat.terminate_zombies

} // namespace wh::settings
