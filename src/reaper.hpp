// The reaper background worker (one per database with the extension) and,
// when preloaded, the launcher that starts reapers at server start.
// src/README.md draws their state machine.
#pragma once

#include "pg.hpp"

namespace wh::reaper
{

enum class StartResult {
	Started,        // a reaper was registered (and has started, with wait)
	AlreadyRunning, // one runs or is starting
	Stopped,        // stop_reaper() said so
	Queued,         // preloaded, max_reapers run: the launcher makes room (rotation)
	NoWorkerSlot,   // RegisterDynamicBackgroundWorker failed (max_worker_processes)
	RegistryFull,   // no slot in the registry (worker_heartbeat.max_databases)
};
// Starts a reaper for dboid within the budget (worker_heartbeat.max_reapers
// when the launcher runs). wait: block until it has started.
StartResult Start(Oid dboid, bool wait);
// Start() == Started.
bool StartForDatabase(Oid dboid, bool wait);
// start_reaper(): starts this database's reaper or says why it cannot run,
// as a WARNING during CREATE / ALTER EXTENSION, else as an ERROR (insufficient_resources).
bool StartFromSql();
void RegisterLauncher(); // from _PG_init when preloaded

} // namespace wh::reaper

extern "C" {
PGDLLEXPORT void worker_heartbeat_reaper_main(Datum main_arg);
PGDLLEXPORT void worker_heartbeat_launcher_main(Datum main_arg);
}
