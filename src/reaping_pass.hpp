// One reaping pass: the work behind release_dead_worker_leases() and behind
// every tick of the reaper.
//
//   1. flush heartbeats waiting in shared memory to worker_heartbeats;
//   2. sessions that ended -> their bound workers are dead (session_ended);
//   3. if the death schedule says someone may be overdue: overdue workers are
//      dead (heartbeat_timeout), and the schedule is set to the next deadline;
//   4. release the leases of the workers declared dead, and every lease past its
//      deadline, in every registered table (leases.cpp);
//   5. write the events, queue the NOTIFYs, count it all in the registry.
//
// Runs in the caller's transaction, connected to SPI. No statement of a pass
// waits for a lock longer than pass_lock_timeout: rows of worker_heartbeats
// that another transaction holds are skipped (FOR UPDATE SKIP LOCKED) and
// each statement runs in a subtransaction with lock_timeout; what was skipped
// is looked at again by the next pass (PassResult.rows_skipped).
//
// "Dead" has one definition, here: see DeadAfterSql() / DeadlineSql() in
// reaping_pass.cpp; the view worker_liveness is generated from them.
#pragma once

#include "catalog.hpp"

namespace wh::reaping
{

struct PassOptions {
	bool from_reaper; // log a summary line instead of WARNINGs to a client
	bool full;        // check every worker and sweep every dead worker's leases
};

struct PassResult {
	int declared_dead;
	int released;
	int tables_failed;
	// Candidate rows of worker_heartbeats left because another transaction
	// held them locked (and statements given up on a lock): the pass asked
	// for the next one to look again; no wait beyond pass_lock_timeout.
	int rows_skipped;
	double duration_ms;
};

PassResult RunPass(const catalog::Extension &ext, const PassOptions &options);

// CREATE OR REPLACE VIEW <schema>.worker_liveness, built from the one
// definition of liveness the pass uses (schema: a quoted identifier).
char *LivenessViewSql(const char *schema);

} // namespace wh::reaping
