// worker_heartbeat.events_retention: the reaper deletes old worker_events.
//
// At most every kEverySeconds (sooner while a backlog remains), in a
// subtransaction of the reaper's tick: up to kStatements DELETEs of at most
// kBatch rows each, oldest first, rows locked by someone else skipped, under
// lock_timeout = worker_heartbeat.pass_lock_timeout. A failure (lock timeout,
// anything) is logged and rolled back alone; the pass is not affected.
// metrics() counters do not change: the AFTER DELETE trigger on worker_events
// moves the deleted deaths to the retired totals (src/sql/1.2/30_*.sql).
#pragma once

#include "catalog.hpp"
#include "pg.hpp"

namespace wh::retention
{

constexpr int kBatch = 1000;
constexpr int kStatements = 4;
constexpr int kEverySeconds = 10;

// From the reaper's tick: inside its transaction, connected to SPI, with an
// active snapshot. Returns the number of events deleted.
int RunIfDue(const catalog::Extension &ext);

} // namespace wh::retention
