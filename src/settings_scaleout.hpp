// The scale-out settings: how many databases the registry holds, how many
// reapers may run at once, how often a database served in rotation is
// visited. See docs/scaleout.md.
#pragma once

#include "pg.hpp"

namespace wh::settings
{

void DefineScaleout(); // from _PG_init, before Define() reserves the prefix

extern int max_databases;          // worker_heartbeat.max_databases (postmaster when preloaded)
extern int max_reapers;            // worker_heartbeat.max_reapers (preloaded: the launcher's budget)
extern int pool_visit_interval_ms; // worker_heartbeat.pool_visit_interval

inline constexpr int kMaxDatabasesPreloaded = 256;
// Without preload the registry comes out of the server's spare shared memory
// (about 100 kB on PostgreSQL 15): a smaller default.
inline constexpr int kMaxDatabasesNotPreloaded = 64;

} // namespace wh::settings
