#include "reaping_pass.hpp"

#include "boundary.hpp"
#include "death_forensics.hpp"
#include "events.hpp"
#include "heartbeat_cache.hpp"
#include "leases.hpp"
#include "reaper_registry.hpp"
#include "settings.hpp"
#include "spi_plans.hpp"
#include "zombie_termination.hpp"

#include <cstdlib>
#include <cstring>

extern "C" {
#include "common/int.h"
#include "portability/instr_time.h"
#include "utils/array.h"
#include "utils/guc.h"

PG_FUNCTION_INFO_V1(wh_liveness_view_sql);
}

namespace wh::reaping
{

namespace
{

constexpr const char *kLive = "ARRAY['active','idle','processing']::pg_catalog.text[]";

struct Death {
	char *worker_id;
	char *worker_type;
	int64 silent_for_us;
	int64 latency_us;
	const char *cause;
	forensics::Facts facts; // 1.3: what the row said (death_forensics.hpp)
	forensics::Json forensics;
};

struct Deaths {
	Death *items;
	int count;
	int capacity;
	void Add(const Death &d)
	{
		if (count == capacity) {
			capacity = capacity ? capacity * 2 : 16;
			items = static_cast<Death *>(items ? repalloc(items, sizeof(Death) * capacity)
			                                   : palloc(sizeof(Death) * capacity));
		}
		items[count++] = d;
	}
};

Datum DeadAfterInterval()
{
	auto *interval = static_cast<Interval *>(palloc0(sizeof(Interval)));
	interval->time = static_cast<int64>(settings::dead_after_ms) * 1000;
	return PointerGetDatum(interval);
}

// Microseconds in an interval (a month counts 30 days), saturated: an
// interval of a hundred million years must not overflow.
int64 IntervalMicroseconds(Datum value)
{
	auto *interval = DatumGetIntervalP(value);
	int64 days = static_cast<int64>(interval->month) * 30 + interval->day; // cannot overflow
	int64 day_us = 0;
	int64 total = 0;
	if (pg_mul_s64_overflow(days, USECS_PER_DAY, &day_us) || pg_add_s64_overflow(day_us, interval->time, &total))
		return days > 0 || (days == 0 && interval->time > 0) ? PG_INT64_MAX : PG_INT64_MIN;
	return total;
}

// --- the one definition of "dead" ----------------------------------------
//
// A worker that is neither stopped nor already dead is dead once
//     deadline <= now()
// with
//     dead_after = its type's override, else worker_heartbeat.dead_after,
//                  else 5 minutes                                 (DeadAfterSql)
//     deadline   = GREATEST(last_heartbeat_at, pg_postmaster_start_time())
//                  + dead_after, saturated to +/-infinity            (DeadlineSql)
//
// These two SQL fragments are the only definition: the reaper's statements
// below are built from them, and so is the view worker_liveness (which
// v_active_workers, v_dead_workers and metrics() read): the install/update
// script creates it from _liveness_view_sql(), which returns the view's text
// built from the same fragments. A change here needs an update script that
// calls _liveness_view_sql() again.
//
// - The setting is read as text with current_setting() and a number without
//   unit means milliseconds, as the library reads it: a session that never
//   loaded the library (no preload) sees postgresql.conf's raw "300000", and
//   must not read it as 300000 seconds.
// - Silence counts from the server's start at the earliest: a heartbeat
//   acknowledged just before a restart may have been held in shared memory
//   and lost with it, and must not turn into a death by timeout.
// - A dead_after out of range (100 million years was accepted once) means
//   "never", not 22008 in every pass and every view.
// - Only built-in functions: a role that may read the views needs no EXECUTE
//   on any function of ours.
char *DeadAfterSql(const char *type_dead_after)
{
	return psprintf("COALESCE(%s, (SELECT CASE "
	                "WHEN s.v OPERATOR(pg_catalog.~) '^\\s*[0-9]+\\s*$' "
	                "THEN (s.v OPERATOR(pg_catalog.||) ' ms')::pg_catalog.interval "
	                "WHEN s.v OPERATOR(pg_catalog.~) '^\\s*[0-9]+(\\.[0-9]+)?\\s*(us|ms|s|min|h|d)\\s*$' "
	                "THEN s.v::pg_catalog.interval END "
	                "FROM (SELECT pg_catalog.current_setting('worker_heartbeat.dead_after', true) AS v) s), "
	                "interval '5 minutes')",
	                type_dead_after);
}

char *DeadlineSql(const char *last, const char *dead_after)
{
	return psprintf("(CASE WHEN %s OPERATOR(pg_catalog.>) interval '10000 years' "
	                "OR %s OPERATOR(pg_catalog.>) '9999-12-31'::pg_catalog.timestamptz "
	                "THEN 'infinity'::pg_catalog.timestamptz "
	                "WHEN %s OPERATOR(pg_catalog.<) interval '-10000 years' THEN '-infinity'::pg_catalog.timestamptz "
	                "ELSE GREATEST(%s, pg_catalog.pg_postmaster_start_time()) OPERATOR(pg_catalog.+) %s END)",
	                dead_after, last, dead_after, last, dead_after);
}

// --- bounded statements ----------------------------------------------------
//
// No statement of a pass waits for a lock longer than pass_lock_timeout: the
// candidates are locked FOR UPDATE SKIP LOCKED (a row someone holds is left
// for a later pass), and each statement runs in a subtransaction with
// lock_timeout (a table lock: the statement is given up). Either way the pass
// reports it (PassResult.rows_skipped) and asks for the work to be done
// again at the next pass.

struct Bounded {
	int skipped; // statements given up plus rows skipped
};

// Runs plan in a subtransaction with lock_timeout = pass_lock_timeout. False
// when it gave up on a lock; any other error is raised again. The results
// (SPI_tuptable) outlive the subtransaction.
bool RunBounded(SPIPlanPtr plan, const Datum *values, bool read_only)
{
	bool done = false;
	ErrorData *error = leases::TrySubtransaction(&done, [&]() {
		int nest = leases::EnterPassSettings(false); // our statements are fully qualified
		spi::Run(plan, values, nullptr, read_only);
		AtEOXact_GUC(true, nest);
		return true;
	});
	if (error) {
		if (error->sqlerrcode != ERRCODE_LOCK_NOT_AVAILABLE)
			ReThrowError(error);
		elog(DEBUG1, "worker_heartbeat: pass statement gave up waiting for a lock: %s", error->message);
		FreeErrorData(error);
	}
	return done;
}

// The statements below end in
//     SELECT <rows> FROM changed UNION ALL SELECT NULL, ..., <skipped>
// the last row (its last column not NULL) says how many candidates were left
// because someone held them locked.
int TakeSkippedRow(int last_column, uint64 *rows)
{
	int skipped = 0;
	uint64 kept = 0;
	for (uint64 row = 0; row < SPI_processed; ++row) {
		bool isnull = true;
		Datum value = spi::Column(static_cast<int>(row), last_column, &isnull);
		if (!isnull)
			skipped += static_cast<int>(Max(static_cast<int64>(0), DatumGetInt64(value)));
		else
			kept++;
	}
	*rows = kept;
	return skipped;
}

// Columns 1-3 of a RETURNING worker_id, worker_type, silence.
Death ReadDeath(int row, const char *cause)
{
	bool isnull = false;
	Death d{};
	d.worker_id = spi::ColumnText(row, 1);
	d.worker_type = spi::ColumnText(row, 2);
	d.silent_for_us = IntervalMicroseconds(spi::Column(row, 3, &isnull));
	d.latency_us = -1;
	d.cause = cause;
	return d;
}

// 1.3: the row as it was, for death forensics: from `first` on,
// last_status, current_task, lease_expires_at, session_pid, backend start.
void ReadFacts(int row, int first, Death *d)
{
	bool isnull = false;
	forensics::Facts &f = d->facts;
	f.cause = d->cause;
	f.silent_for_us = d->silent_for_us;
	f.last_status = spi::ColumnText(row, first);
	f.current_task = spi::ColumnText(row, first + 1);
	Datum lease = spi::Column(row, first + 2, &isnull);
	f.has_lease_expires = !isnull;
	f.lease_expires_at = isnull ? 0 : DatumGetTimestampTz(lease);
	Datum pid = spi::Column(row, first + 3, &isnull);
	f.session_pid = isnull ? 0 : DatumGetInt32(pid);
	Datum start = spi::Column(row, first + 4, &isnull);
	f.has_backend_start = !isnull;
	f.backend_start = isnull ? 0 : DatumGetTimestampTz(start);
}

void FlushHeartbeats(const catalog::Extension &ext, Bounded *bounded)
{
	if (!cache::Available() || !registry::TakeHeartbeatsPending(MyDatabaseId))
		return;
	cache::Pending pending = cache::CollectUnflushed(MyDatabaseId);
	if (pending.count == 0)
		return;
	static const Oid types[2] = {TEXTARRAYOID, TIMESTAMPTZARRAYOID};
	Datum values[2] = {
	    PointerGetDatum(construct_array(pending.worker_ids, pending.count, TEXTOID, -1, false, TYPALIGN_INT)),
	    PointerGetDatum(construct_array(pending.beats, pending.count, TIMESTAMPTZOID, 8, true, TYPALIGN_DOUBLE))};
	const char *table = catalog::Qualified(ext, "worker_heartbeats");
	// A row someone holds locked (its worker changing its task in a long
	// transaction) is skipped, not waited for: that worker's beat still
	// counts for the reaper (the timeout check asks shared memory too), and
	// reaches the table with its next beat. Not counted as skipped: it needs
	// no retry (and counting it would cost a second join).
	char *sql = psprintf(
	    "WITH v AS (SELECT * FROM ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2)) AS v(worker_id, beat)), "
	    "l AS (SELECT w.worker_id, v.beat FROM %s w JOIN v ON w.worker_id OPERATOR(pg_catalog.=) v.worker_id "
	    "  WHERE w.worker_id OPERATOR(pg_catalog.=) ANY ($1) "
	    "  AND w.last_heartbeat_at OPERATOR(pg_catalog.<) v.beat AND w.status OPERATOR(pg_catalog.=) ANY (%s) "
	    "  FOR UPDATE OF w SKIP LOCKED) "
	    "UPDATE %s w SET last_heartbeat_at = l.beat FROM l "
	    "WHERE w.worker_id OPERATOR(pg_catalog.=) l.worker_id AND w.last_heartbeat_at OPERATOR(pg_catalog.<) l.beat",
	    table, kLive, table);
	if (!RunBounded(spi::Plan(sql, 2, types, pending.count > spi::kCustomPlanAbove), values, false))
		bounded->skipped++;
}

// A session that ends tells its reaper (the ended-session ring). Sessions
// that ended without telling (the ring overflowed; a row restored with a pid)
// are found by the reaper's sweep this often, and on every full pass.
constexpr int64 kSessionSweepUs = 10 * USECS_PER_SEC;
TimestampTz next_session_sweep = 0; // the reaper's first pass sweeps

// Workers bound to sessions that ended (or no longer exist) are dead.
void FindSessionDeaths(const catalog::Extension &ext, TimestampTz pass_start, const PassOptions &options,
                       Deaths *deaths, Bounded *bounded)
{
	registry::EndedSession ended[registry::kEndedSessions];
	bool requested = false;
	int n = registry::TakeEndedSessions(MyDatabaseId, ended, registry::kEndedSessions, &requested);
	// The statement is cheap (the partial index on session_pid holds only live
	// session-bound workers, at most one per connection), but the reaper's
	// idle pass runs nothing it can skip. A pass called from SQL always looks.
	bool sweep = !options.from_reaper || options.full || requested || pass_start >= next_session_sweep;
	if (n == 0 && !sweep)
		return;
	if (sweep && options.from_reaper)
		next_session_sweep = pass_start + kSessionSweepUs;
	// Read the clock after the ring: a session may have ended since the pass
	// began, and its death must not be dated before its end.
	TimestampTz now = Max(pass_start, GetCurrentTimestamp());
	int32 pids[registry::kEndedSessions];
	Datum pid_datums[registry::kEndedSessions];
	Datum start_datums[registry::kEndedSessions];
	for (int i = 0; i < n; ++i) {
		pids[i] = ended[i].pid;
		pid_datums[i] = Int32GetDatum(ended[i].pid);
		start_datums[i] = TimestampTzGetDatum(ended[i].backend_start);
	}
	static const Oid types[3] = {INT4ARRAYOID, TIMESTAMPTZARRAYOID, TIMESTAMPTZOID};
	Datum values[3] = {PointerGetDatum(construct_array(pid_datums, n, INT4OID, 4, true, TYPALIGN_INT)),
	                   PointerGetDatum(construct_array(start_datums, n, TIMESTAMPTZOID, 8, true, TYPALIGN_DOUBLE)),
	                   TimestampTzGetDatum(now)};
	const char *table = catalog::Qualified(ext, "worker_heartbeats");
	// A session we were told has ended counts as gone even if
	// pg_stat_activity still lists it for a moment. A row someone holds
	// locked (a stop_worker() or a heartbeat in flight) is skipped, not
	// waited for: the next pass sweeps again.
	char *sql = psprintf(
	    "WITH ended AS (SELECT * FROM ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2)) AS e(pid, "
	    "backend_start)), "
	    "gone AS (SELECT w.worker_id, w.session_pid FROM %s w "
	    "  WHERE w.session_pid IS NOT NULL AND w.status OPERATOR(pg_catalog.=) ANY (%s) "
	    "  AND (EXISTS (SELECT 1 FROM ended e WHERE e.pid OPERATOR(pg_catalog.=) w.session_pid "
	    "               AND e.backend_start OPERATOR(pg_catalog.=) w.session_started_at) "
	    "       OR NOT EXISTS (SELECT 1 FROM pg_catalog.pg_stat_get_activity(w.session_pid) s "
	    "                      WHERE s.backend_start OPERATOR(pg_catalog.=) w.session_started_at))), "
	    // Checked again on the row as it is now: a stop_worker() that
	    // committed since the snapshot wins.
	    "locked AS (SELECT w.worker_id, gone.session_pid, w.status AS last_status, w.current_task, "
	    "  w.lease_expires_at, w.session_started_at FROM %s w JOIN gone "
	    "  ON w.worker_id OPERATOR(pg_catalog.=) gone.worker_id "
	    "  WHERE w.status OPERATOR(pg_catalog.=) ANY (%s) AND w.session_pid IS NOT NULL " // the partial index
	    "  AND w.session_pid OPERATOR(pg_catalog.=) gone.session_pid "
	    "  FOR UPDATE OF w SKIP LOCKED), "
	    "dead AS (UPDATE %s w SET status = 'dead', died_at = $3, death_cause = 'session_ended', "
	    "  session_pid = NULL, session_started_at = NULL "
	    "  FROM locked WHERE w.worker_id OPERATOR(pg_catalog.=) locked.worker_id "
	    "  AND w.status OPERATOR(pg_catalog.=) ANY (%s) AND w.session_pid IS NOT NULL "
	    "  AND w.session_pid OPERATOR(pg_catalog.=) locked.session_pid "
	    "  RETURNING w.worker_id, w.worker_type, $3 OPERATOR(pg_catalog.-) w.last_heartbeat_at, locked.session_pid, "
	    "  locked.last_status, locked.current_task, locked.lease_expires_at, locked.session_pid AS pid, "
	    "  locked.session_started_at) "
	    "SELECT d.*, NULL::pg_catalog.int8 FROM dead d "
	    "UNION ALL SELECT NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, "
	    "(SELECT pg_catalog.count(*) FROM gone) OPERATOR(pg_catalog.-) "
	    "(SELECT pg_catalog.count(*) FROM locked)",
	    table, kLive, table, kLive, table, kLive);
	int skipped = 1;
	uint64 rows = 0;
	if (RunBounded(spi::Plan(sql, 3, types), values, false))
		skipped = TakeSkippedRow(10, &rows);
	if (skipped > 0) {
		// The sessions taken from the ring are not lost: the next pass sweeps.
		bounded->skipped += skipped;
		registry::RequestSessionCheck(MyDatabaseId);
	}
	// A session that ended after the ring was taken, and whose backend was
	// gone by the time the statement looked, is found dead here too: its
	// entry is in the ring now (its latency: found as soon as it ended).
	registry::EndedSession later[registry::kEndedSessions];
	int n_later = -1; // not looked yet
	for (uint64 row = 0; row < rows; ++row) {
		int r = static_cast<int>(row);
		bool isnull = false;
		Death d = ReadDeath(r, "session_ended");
		ReadFacts(r, 5, &d);
		int32 pid = DatumGetInt32(spi::Column(r, 4, &isnull));
		for (int i = 0; i < n; ++i)
			if (pids[i] == pid)
				d.latency_us = Max(static_cast<int64>(0), now - ended[i].ended_at);
		if (d.latency_us < 0) {
			if (n_later < 0)
				n_later = registry::PeekEndedSessions(MyDatabaseId, later, registry::kEndedSessions);
			for (int i = 0; i < n_later; ++i)
				if (later[i].pid == pid)
					d.latency_us = Max(static_cast<int64>(0), now - later[i].ended_at);
		}
		cache::TryMarkDead(MyDatabaseId, d.worker_id, static_cast<int>(strlen(d.worker_id)), PG_INT64_MAX);
		deaths->Add(d);
	}
}

// Workers silent for longer than their dead_after are dead.
void FindTimeoutDeaths(const catalog::Extension &ext, TimestampTz now, bool full, Deaths *deaths, Bounded *bounded)
{
	if (!full && !registry::DeathCheckDue(MyDatabaseId, now))
		return;
	const char *table = catalog::Qualified(ext, "worker_heartbeats");
	const char *types_table = catalog::Qualified(ext, "worker_types");
	static const Oid types[2] = {TIMESTAMPTZOID, INTERVALOID};
	Datum values[2] = {TimestampTzGetDatum(now), DeadAfterInterval()};
	// $1 OPERATOR(-) dead_after is only computed for the dead, whose
	// dead_after is shorter than their silence: it cannot overflow. ($2, the
	// setting, only bounds the schedule's shortest dead_after.) OFFSET 0 keeps
	// d a subquery of its own, so that each worker's deadline is computed once,
	// not once per aggregate that reads it (a third of the scan's CPU at
	// 100,000 workers).
	char *scan_sql =
	    psprintf("WITH d AS (SELECT w.worker_id, d0.dead_after, %s AS deadline "
	             "  FROM %s w LEFT JOIN %s t ON t.worker_type OPERATOR(pg_catalog.=) w.worker_type "
	             "  CROSS JOIN LATERAL (SELECT %s AS dead_after) d0 "
	             "  WHERE w.status OPERATOR(pg_catalog.=) ANY (%s) OFFSET 0) "
	             "SELECT pg_catalog.array_agg(worker_id) FILTER (WHERE deadline OPERATOR(pg_catalog.<=) $1), "
	             "pg_catalog.array_agg(CASE WHEN deadline OPERATOR(pg_catalog.<=) $1 "
	             "  THEN $1 OPERATOR(pg_catalog.-) dead_after END) FILTER (WHERE deadline OPERATOR(pg_catalog.<=) $1), "
	             "pg_catalog.min(deadline) FILTER (WHERE deadline OPERATOR(pg_catalog.>) $1), "
	             "LEAST((SELECT pg_catalog.min(t2.dead_after) FROM %s t2), $2) "
	             "FROM d",
	             DeadlineSql("w.last_heartbeat_at", "d0.dead_after"), table, types_table, DeadAfterSql("t.dead_after"),
	             kLive, types_table);
	// Not read-only: under READ COMMITTED that gives the scan a snapshot of its
	// own, taken after the caller's BeginPass() (see reaper_registry.hpp).
	if (!RunBounded(spi::Plan(scan_sql, 2, types), values, false)) {
		bounded->skipped++;
		registry::InvalidateDeathSchedule(MyDatabaseId); // look again at the next pass
		return;
	}
	bool ids_null = true, cutoffs_null = true, next_null = true, shortest_null = true;
	Datum ids = spi::Column(0, 1, &ids_null);
	Datum cutoffs = spi::Column(0, 2, &cutoffs_null);
	Datum next = spi::Column(0, 3, &next_null);
	Datum shortest = spi::Column(0, 4, &shortest_null);
	registry::DeathChecked(MyDatabaseId, next_null ? core::DeathSchedule::kNever : DatumGetTimestampTz(next),
	                       shortest_null ? 0 : IntervalMicroseconds(shortest));
	if (ids_null)
		return;

	// Heartbeats that reached shared memory after the flush still count.
	Datum *id_items = nullptr;
	Datum *cutoff_items = nullptr;
	int count = 0;
	deconstruct_array(DatumGetArrayTypeP(ids), TEXTOID, -1, false, TYPALIGN_INT, &id_items, nullptr, &count);
	deconstruct_array(DatumGetArrayTypeP(cutoffs), TIMESTAMPTZOID, 8, true, TYPALIGN_DOUBLE, &cutoff_items, nullptr,
	                  &count);
	int dead = 0;
	for (int i = 0; i < count; ++i) {
		text *id = DatumGetTextPP(id_items[i]);
		if (cache::TryMarkDead(MyDatabaseId, VARDATA_ANY(id), VARSIZE_ANY_EXHDR(id),
		                       DatumGetTimestampTz(cutoff_items[i])))
			id_items[dead++] = id_items[i];
	}
	if (dead == 0)
		return;
	static const Oid mark_types[4] = {TEXTARRAYOID, TIMESTAMPTZOID, INTERVALOID, INT8OID};
	Datum mark_values[4] = {PointerGetDatum(construct_array(id_items, dead, TEXTOID, -1, false, TYPALIGN_INT)),
	                        TimestampTzGetDatum(now), DeadAfterInterval(), Int64GetDatum(dead)};
	// Checked again row by row, on the row as it is now: a worker may have
	// come back since the scan. A row someone holds locked is left for the
	// next pass.
	char *deadline = DeadlineSql("w.last_heartbeat_at", "d.dead_after");
	char *mark_sql = psprintf(
	    "WITH d AS (SELECT w.worker_id, d0.dead_after, w.status AS last_status, w.session_pid, w.session_started_at "
	    "  FROM %s w "
	    "  LEFT JOIN %s t ON t.worker_type OPERATOR(pg_catalog.=) w.worker_type "
	    "  CROSS JOIN LATERAL (SELECT %s AS dead_after) d0 "
	    "  WHERE w.worker_id OPERATOR(pg_catalog.=) ANY ($1) " // probe the key, not a join over everyone
	    "  AND w.status OPERATOR(pg_catalog.=) ANY (%s) AND %s OPERATOR(pg_catalog.<=) $2 "
	    "  FOR UPDATE OF w SKIP LOCKED), "
	    "dead AS (UPDATE %s w SET status = 'dead', died_at = $2, death_cause = 'heartbeat_timeout', "
	    "  session_pid = NULL, session_started_at = NULL "
	    "  FROM d WHERE w.worker_id OPERATOR(pg_catalog.=) d.worker_id "
	    "  AND w.worker_id OPERATOR(pg_catalog.=) ANY ($1) "
	    "  AND w.status OPERATOR(pg_catalog.=) ANY (%s) "
	    "  AND %s OPERATOR(pg_catalog.<=) $2 "
	    "  RETURNING w.worker_id, w.worker_type, $2 OPERATOR(pg_catalog.-) w.last_heartbeat_at, "
	    "  $2 OPERATOR(pg_catalog.-) %s, "
	    "  d.last_status, w.current_task, w.lease_expires_at, d.session_pid, d.session_started_at) "
	    "SELECT x.*, NULL::pg_catalog.int8 FROM dead x "
	    "UNION ALL SELECT NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, $4 OPERATOR(pg_catalog.-) "
	    "(SELECT pg_catalog.count(*) FROM d)",
	    table, types_table, DeadAfterSql("t.dead_after"), kLive, DeadlineSql("w.last_heartbeat_at", "d0.dead_after"),
	    table, kLive, deadline, deadline);
	int skipped = 1;
	uint64 rows = 0;
	if (RunBounded(spi::Plan(mark_sql, 4, mark_types, dead > spi::kCustomPlanAbove), mark_values, false))
		skipped = TakeSkippedRow(10, &rows);
	if (skipped > 0) {
		bounded->skipped += skipped;
		registry::InvalidateDeathSchedule(MyDatabaseId); // the next pass checks again
	}
	for (uint64 row = 0; row < rows; ++row) {
		int r = static_cast<int>(row);
		bool isnull = false;
		Death d = ReadDeath(r, "heartbeat_timeout");
		d.latency_us = IntervalMicroseconds(spi::Column(r, 4, &isnull));
		ReadFacts(r, 5, &d);
		deaths->Add(d);
	}
}

// Every worker already dead or stopped: swept on full passes, in case an
// earlier pass (or stop_worker) had to skip some of their rows for a lock.
void AddEarlierDeaths(const catalog::Extension &ext, Deaths *deaths, leases::Holder **holders, int *holder_count,
                      Bounded *bounded)
{
	char *sql = psprintf("SELECT worker_id FROM %s WHERE status OPERATOR(pg_catalog.=) ANY "
	                     "(ARRAY['dead','stopped']::pg_catalog.text[])",
	                     catalog::Qualified(ext, "worker_heartbeats"));
	int extra = 0;
	if (RunBounded(spi::Plan(sql, 0, nullptr), nullptr, true))
		extra = static_cast<int>(SPI_processed);
	else
		bounded->skipped++;
	auto *all = static_cast<leases::Holder *>(palloc(sizeof(leases::Holder) * (deaths->count + extra + 1)));
	int n = 0;
	for (int i = 0; i < deaths->count; ++i)
		all[n++] =
		    leases::Holder{deaths->items[i].worker_id, deaths->items[i].silent_for_us, deaths->items[i].latency_us};
	// This pass's deaths, sorted, so that each earlier death is one lookup.
	int this_pass = n;
	qsort(all, this_pass, sizeof(leases::Holder), leases::CompareHolders);
	for (int i = 0; i < extra; ++i) {
		leases::Holder earlier{spi::ColumnText(i, 1), -1, -1};
		if (!bsearch(&earlier, all, this_pass, sizeof(leases::Holder), leases::CompareHolders))
			all[n++] = earlier;
	}
	*holders = all;
	*holder_count = n;
}

} // namespace

char *LivenessViewSql(const char *schema)
{
	// Same columns, in the same order, as the 1.0 view.
	return psprintf(
	    "CREATE OR REPLACE VIEW %s.worker_liveness AS "
	    "SELECT w.worker_id, w.worker_type, w.last_heartbeat_at, w.status, w.current_run_id, "
	    "w.current_task, w.lease_expires_at, w.started_at, w.metadata, w.session_pid, "
	    "w.session_started_at, w.died_at, w.death_cause, "
	    "EXTRACT(EPOCH FROM (pg_catalog.now() OPERATOR(pg_catalog.-) w.last_heartbeat_at)) AS seconds_since_heartbeat, "
	    "d.dead_after, "
	    "(w.status OPERATOR(pg_catalog.=) 'dead' "
	    " OR (w.status OPERATOR(pg_catalog.<>) 'stopped' "
	    "     AND %s OPERATOR(pg_catalog.<=) pg_catalog.now())) AS is_dead "
	    "FROM %s.worker_heartbeats w "
	    "LEFT JOIN %s.worker_types t ON t.worker_type OPERATOR(pg_catalog.=) w.worker_type "
	    "CROSS JOIN LATERAL (SELECT %s AS dead_after) d",
	    schema, DeadlineSql("w.last_heartbeat_at", "d.dead_after"), schema, schema, DeadAfterSql("t.dead_after"));
}

PassResult RunPass(const catalog::Extension &ext, const PassOptions &options)
{
	instr_time start;
	INSTR_TIME_SET_CURRENT(start);
	TimestampTz now = GetCurrentTimestamp();
	PassResult result{0, 0, 0, 0, 0};
	spi::ForgetUnusedPlans(); // the long-lived reaper keeps only the plans it still uses

	Bounded bounded{0};
	FlushHeartbeats(ext, &bounded);
	Deaths deaths{nullptr, 0, 0};
	FindSessionDeaths(ext, now, options, &deaths, &bounded);
	FindTimeoutDeaths(ext, now, options.full, &deaths, &bounded);
	// 1.3: what each was doing (read before a zombie is terminated).
	for (int i = 0; i < deaths.count; ++i)
		deaths.items[i].forensics = forensics::Describe(deaths.items[i].facts);

	leases::Holder *holders = nullptr;
	int holder_count = 0;
	if (options.full) {
		AddEarlierDeaths(ext, &deaths, &holders, &holder_count, &bounded);
	} else if (deaths.count > 0) {
		holders = static_cast<leases::Holder *>(palloc(sizeof(leases::Holder) * deaths.count));
		for (int i = 0; i < deaths.count; ++i)
			holders[holder_count++] =
			    leases::Holder{deaths.items[i].worker_id, deaths.items[i].silent_for_us, deaths.items[i].latency_us};
	}

	events::Batch *batch = events::Batch::Create();
	for (int i = 0; i < deaths.count; ++i) {
		const Death &d = deaths.items[i];
		events::Event e{};
		e.event = "died";
		e.worker_id = d.worker_id;
		e.worker_type = d.worker_type;
		e.silent_for_us = d.silent_for_us;
		e.latency_us = d.latency_us;
		e.cause = d.cause;
		e.extra_details = d.forensics.details;
		e.extra_notify = d.forensics.notify;
		batch->Add(e);
	}
	// 1.3: the still running backend of a zombie is terminated (opt-in)
	// before its leases are released, so that its row locks are gone.
	TimestampTz zombie_deadline = GetCurrentTimestamp() + zombies::kPassBudgetUs;
	for (int i = 0; options.from_reaper && i < deaths.count; ++i)
		zombies::TerminateIfZombie(ext, deaths.items[i].worker_id, deaths.items[i].worker_type, deaths.items[i].facts,
		                           zombie_deadline, batch);
	leases::ReleaseOptions release{holders, holder_count, true, !options.from_reaper, "worker_dead"};
	leases::ReleaseResult released = leases::ReleaseLeases(ext, release, batch);
	batch->Flush(ext, now);

	result.declared_dead = deaths.count;
	result.released = released.released;
	result.tables_failed = released.tables_failed;
	result.rows_skipped = bounded.skipped;
	if (options.from_reaper && released.last_failure)
		registry::SetLastError(MyDatabaseId, released.last_failure); // reaper_status() shows it
	instr_time elapsed;
	INSTR_TIME_SET_CURRENT(elapsed);
	INSTR_TIME_SUBTRACT(elapsed, start);
	result.duration_ms = INSTR_TIME_GET_MILLISEC(elapsed);
	registry::RecordPass(MyDatabaseId,
	                     registry::PassRecord{now, result.duration_ms, static_cast<uint64>(result.declared_dead),
	                                          static_cast<uint64>(result.released)});
	return result;
}

} // namespace wh::reaping

// @extschema@._liveness_view_sql(p_schema text): CREATE OR REPLACE VIEW of
// worker_liveness in p_schema (a quoted identifier, as @extschema@ is), built
// from the one definition above. Run by the install / update scripts.
extern "C" Datum wh_liveness_view_sql(PG_FUNCTION_ARGS)
{
	WH_GUARDED({
		if (PG_ARGISNULL(0))
			ereport(ERROR, (errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED), errmsg("p_schema must not be null")));
		PG_RETURN_TEXT_P(cstring_to_text(wh::reaping::LivenessViewSql(text_to_cstring(PG_GETARG_TEXT_PP(0)))));
	});
}
