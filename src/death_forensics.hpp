// Death forensics (1.3, issue 16 section 3): why a worker died and what it
// was doing, in the `died` event's details ("forensics") and, without the
// free texts, in its NOTIFY payload. docs/fleet-control.md lists the fields.
//
// A session-bound worker's backend is gone when the reaper looks, so the
// backend takes its own snapshot as it ends (the session-end hook of
// heartbeats.cpp, a before_shmem_exit callback: it runs before
// ShutdownPostgres aborts the open transaction, so the transaction is still
// seen) and leaves it in a small ring in shared memory, keyed by (database,
// pid, backend start). The reaper reads it when it declares the worker dead
// (session_ended). For a timeout death the reaper reads pg_stat_activity of
// the bound backend if it still runs.
//
// The ring is kRingEntries snapshots (~20 kB): requested at startup when
// preloaded, else carved from the server's spare shared memory when a
// session first binds a worker. When it cannot be had, forensics say
// "snapshot": "none". Snapshots are never consumed: a newer one overwrites
// the oldest, so the ring holds no transactional state.
#pragma once

#include "pg.hpp"

namespace wh::forensics
{

inline constexpr int kRingEntries = 64;
inline constexpr int kQueryBytes = 256; // query text and current_task, at most (bytes)

Size ShmemSize();
// At startup (preloaded) or on first use; false when the ring cannot be had
// (never raises: no spare shared memory means "no snapshot").
bool Attach();

// From the session-end hook of a session that bound a worker: copies what
// pg_stat_activity shows of this backend into the ring. Never raises.
void CaptureAtSessionEnd();

// What the reaper knows of a death from the worker's row.
struct Facts {
	const char *cause;   // session_ended / heartbeat_timeout
	int64 silent_for_us; // < 0: unknown
	const char *last_status;
	const char *current_task;
	bool has_lease_expires;
	TimestampTz lease_expires_at;
	int32 session_pid; // 0: not session-bound
	bool has_backend_start;
	TimestampTz backend_start;
};

// JSON object members: "forensics":{...}, for events::Event::extra_details
// (everything) and extra_notify (no query text, no current_task).
struct Json {
	char *details;
	char *notify;
};

// For a session_ended death: the snapshot the backend left (if any).
// For a heartbeat_timeout death: pg_stat_activity of the bound backend if it
// still runs (SPI connected; overwrites SPI_tuptable).
Json Describe(const Facts &facts);

} // namespace wh::forensics
