// Heartbeats and the lifecycle of a worker row: upsert (fast path in shared
// memory, slow path in the table), stop, removal of stale workers, and the
// hook that wakes the reaper when a session with bound workers ends.
#pragma once

#include "catalog.hpp"
#include "pg.hpp"

extern "C" {
#include "utils/uuid.h"
}

namespace wh::heartbeats
{

struct HeartbeatArgs {
	text *worker_id;
	text *worker_type;
	text *status;
	pg_uuid_t *run_id; // may be NULL
	text *task;        // may be NULL
	bool has_lease_expires;
	TimestampTz lease_expires;
	Jsonb *metadata; // may be NULL: keep the stored metadata
	bool session_bound;
	Oid function_oid; // of the SQL function called
};

// Checks every argument (NULL, empty, too long, unknown status, metadata not
// an object) and raises a clear ERROR before anything is written.
void Validate(const HeartbeatArgs &args);
void Beat(const HeartbeatArgs &args);

bool Stop(text *worker_id);
int CleanupStale(const catalog::Extension &ext, int64 threshold_us);

// True while Beat() inserts a new worker (the insert trigger need not tell the reaper).
bool OwnInsertInProgress();

// Raises 22004/22023/22001 for a bad worker_id / worker_type.
void CheckIdentifierArg(text *value, const char *what);

} // namespace wh::heartbeats
