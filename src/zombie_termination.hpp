// Zombie termination (1.3, issue 16 section 4; opt-in): when the reaper
// declares a session-bound worker dead by timeout while the backend it was
// bound to still runs, it terminates that backend (SIGTERM, as
// pg_terminate_backend: its open transaction rolls back, its locks go),
// waits for it to exit (bounded), and only then are the worker's leases
// released. docs/fleet-control.md, "Zombie termination"; docs/security.md
// for the permission boundary.
//
// Only with worker_heartbeat.terminate_zombies (or the worker type's
// worker_types.terminate_zombies, which overrides it) on; only from the
// reaper (a pass run from SQL terminates nothing); only the backend whose pid
// AND backend start the worker row recorded, in this database, a client
// backend, and only one the worker's owner role could terminate itself with
// pg_terminate_backend() (same role or a member of it, or pg_signal_backend;
// a superuser's backend only for a superuser's worker). Otherwise a
// `termination_refused` event says why.
#pragma once

#include "catalog.hpp"
#include "death_forensics.hpp"
#include "events.hpp"
#include "pg.hpp"

namespace wh::zombies
{

// The longest a pass waits, over all its terminations, for terminated
// backends to exit; past it a backend is signalled without waiting (its
// leases are then released by a later pass if its locks still hold them).
inline constexpr int64 kPassBudgetUs = 2 * USECS_PER_SEC;

// SPI connected, in the reaper's pass; adds `terminated` or
// `termination_refused` to batch. deadline: see kPassBudgetUs.
void TerminateIfZombie(const catalog::Extension &ext, const char *worker_id, const char *worker_type,
                       const forensics::Facts &facts, TimestampTz deadline, events::Batch *batch);

} // namespace wh::zombies
