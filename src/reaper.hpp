// The reaper background worker (one per database with the extension) and,
// when preloaded, the launcher that starts reapers at server start.
// src/README.md draws their state machine.
#pragma once

#include "pg.hpp"

namespace wh::reaper
{

// Registers a dynamic reaper for dboid. wait: block until it has started.
// Returns false when no background-worker slot was free.
bool StartForDatabase(Oid dboid, bool wait);
void RegisterLauncher(); // from _PG_init when preloaded

} // namespace wh::reaper

extern "C" {
PGDLLEXPORT void worker_heartbeat_reaper_main(Datum main_arg);
PGDLLEXPORT void worker_heartbeat_launcher_main(Datum main_arg);
}
