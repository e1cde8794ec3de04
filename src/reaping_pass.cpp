#include "reaping_pass.hpp"

#include "events.hpp"
#include "heartbeat_cache.hpp"
#include "leases.hpp"
#include "reaper_registry.hpp"
#include "settings.hpp"
#include "spi_plans.hpp"

#include <cstdlib>
#include <cstring>

extern "C" {
#include "portability/instr_time.h"
#include "utils/array.h"
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

int64 IntervalMicroseconds(Datum value)
{
	auto *interval = DatumGetIntervalP(value);
	return interval->time + static_cast<int64>(interval->day) * USECS_PER_DAY +
	       static_cast<int64>(interval->month) * 30 * USECS_PER_DAY;
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

void FlushHeartbeats(const catalog::Extension &ext)
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
	char *sql = psprintf("UPDATE %s w SET last_heartbeat_at = v.beat "
	                     "FROM ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2)) AS v(worker_id, beat) "
	                     "WHERE w.worker_id OPERATOR(pg_catalog.=) v.worker_id "
	                     "AND w.last_heartbeat_at OPERATOR(pg_catalog.<) v.beat "
	                     "AND w.status OPERATOR(pg_catalog.=) ANY (%s)",
	                     catalog::Qualified(ext, "worker_heartbeats"), kLive);
	spi::Run(spi::Plan(sql, 2, types), values, nullptr, false);
}

// A session that ends tells its reaper (the ended-session ring). Sessions
// that ended without telling (the ring overflowed; a row restored with a pid)
// are found by the reaper's sweep this often, and on every full pass.
constexpr int64 kSessionSweepUs = 10 * USECS_PER_SEC;
TimestampTz next_session_sweep = 0; // the reaper's first pass sweeps

// Workers bound to sessions that ended (or no longer exist) are dead.
void FindSessionDeaths(const catalog::Extension &ext, TimestampTz pass_start, const PassOptions &options,
                       Deaths *deaths)
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
	// pg_stat_activity still lists it for a moment.
	char *sql = psprintf(
	    "WITH ended AS (SELECT * FROM ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2)) AS e(pid, "
	    "backend_start)), "
	    "gone AS (SELECT w.worker_id, w.session_pid FROM %s w "
	    "  WHERE w.session_pid IS NOT NULL AND w.status OPERATOR(pg_catalog.=) ANY (%s) "
	    "  AND (EXISTS (SELECT 1 FROM ended e WHERE e.pid OPERATOR(pg_catalog.=) w.session_pid "
	    "               AND e.backend_start OPERATOR(pg_catalog.=) w.session_started_at) "
	    "       OR NOT EXISTS (SELECT 1 FROM pg_catalog.pg_stat_get_activity(w.session_pid) s "
	    "                      WHERE s.backend_start OPERATOR(pg_catalog.=) w.session_started_at))) "
	    "UPDATE %s w SET status = 'dead', died_at = $3, death_cause = 'session_ended', "
	    "session_pid = NULL, session_started_at = NULL "
	    "FROM gone WHERE w.worker_id OPERATOR(pg_catalog.=) gone.worker_id "
	    // Checked again on the row as it is now: a stop_worker() that committed
	    // while we waited for the row wins.
	    "AND w.status OPERATOR(pg_catalog.=) ANY (%s) AND w.session_pid IS NOT NULL " // the partial index
	    "AND w.session_pid OPERATOR(pg_catalog.=) gone.session_pid "
	    "RETURNING w.worker_id, w.worker_type, $3 OPERATOR(pg_catalog.-) w.last_heartbeat_at, gone.session_pid",
	    table, kLive, table, kLive);
	spi::Run(spi::Plan(sql, 3, types), values, nullptr, false);
	// A session that ended after the ring was taken, and whose backend was
	// gone by the time the statement looked, is found dead here too: its
	// entry is in the ring now (its latency: found as soon as it ended).
	registry::EndedSession later[registry::kEndedSessions];
	int n_later = -1; // not looked yet
	for (uint64 row = 0; row < SPI_processed; ++row) {
		int r = static_cast<int>(row);
		bool isnull = false;
		Death d = ReadDeath(r, "session_ended");
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
void FindTimeoutDeaths(const catalog::Extension &ext, TimestampTz now, bool full, Deaths *deaths)
{
	if (!full && !registry::DeathCheckDue(MyDatabaseId, now))
		return;
	const char *table = catalog::Qualified(ext, "worker_heartbeats");
	const char *types_table = catalog::Qualified(ext, "worker_types");
	static const Oid types[2] = {TIMESTAMPTZOID, INTERVALOID};
	Datum values[2] = {TimestampTzGetDatum(now), DeadAfterInterval()};
	char *scan_sql =
	    psprintf("WITH d AS (SELECT w.worker_id, COALESCE(t.dead_after, $2) AS dead_after, "
	             "  w.last_heartbeat_at OPERATOR(pg_catalog.+) COALESCE(t.dead_after, $2) AS deadline "
	             "  FROM %s w LEFT JOIN %s t ON t.worker_type OPERATOR(pg_catalog.=) w.worker_type "
	             "  WHERE w.status OPERATOR(pg_catalog.=) ANY (%s)) "
	             "SELECT pg_catalog.array_agg(worker_id) FILTER (WHERE deadline OPERATOR(pg_catalog.<=) $1), "
	             "pg_catalog.array_agg($1 OPERATOR(pg_catalog.-) dead_after) FILTER (WHERE deadline "
	             "OPERATOR(pg_catalog.<=) $1), "
	             "pg_catalog.min(deadline) FILTER (WHERE deadline OPERATOR(pg_catalog.>) $1), "
	             "LEAST((SELECT pg_catalog.min(t2.dead_after) FROM %s t2), $2) "
	             "FROM d",
	             table, types_table, kLive, types_table);
	// Not read-only: under READ COMMITTED that gives the scan a snapshot of its
	// own, taken after the caller's BeginPass() (see reaper_registry.hpp).
	spi::Run(spi::Plan(scan_sql, 2, types), values, nullptr, false);
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
	static const Oid mark_types[3] = {TEXTARRAYOID, TIMESTAMPTZOID, INTERVALOID};
	Datum mark_values[3] = {PointerGetDatum(construct_array(id_items, dead, TEXTOID, -1, false, TYPALIGN_INT)),
	                        TimestampTzGetDatum(now), DeadAfterInterval()};
	// Checked again row by row: a worker may have come back since the scan.
	char *mark_sql =
	    psprintf("WITH d AS (SELECT w.worker_id, COALESCE(t.dead_after, $3) AS dead_after FROM %s w "
	             "  LEFT JOIN %s t ON t.worker_type OPERATOR(pg_catalog.=) w.worker_type "
	             "  WHERE w.worker_id OPERATOR(pg_catalog.=) ANY ($1)) "
	             "UPDATE %s w SET status = 'dead', died_at = $2, death_cause = 'heartbeat_timeout', "
	             "session_pid = NULL, session_started_at = NULL "
	             "FROM d WHERE w.worker_id OPERATOR(pg_catalog.=) d.worker_id "
	             "AND w.worker_id OPERATOR(pg_catalog.=) ANY ($1) " // probe the key, not a join over everyone
	             "AND w.status OPERATOR(pg_catalog.=) ANY (%s) "
	             "AND (w.last_heartbeat_at OPERATOR(pg_catalog.+) d.dead_after) OPERATOR(pg_catalog.<=) $2 "
	             "RETURNING w.worker_id, w.worker_type, $2 OPERATOR(pg_catalog.-) w.last_heartbeat_at, "
	             "$2 OPERATOR(pg_catalog.-) (w.last_heartbeat_at OPERATOR(pg_catalog.+) d.dead_after)",
	             table, types_table, table, kLive);
	spi::Run(spi::Plan(mark_sql, 3, mark_types), mark_values, nullptr, false);
	for (uint64 row = 0; row < SPI_processed; ++row) {
		int r = static_cast<int>(row);
		bool isnull = false;
		Death d = ReadDeath(r, "heartbeat_timeout");
		d.latency_us = IntervalMicroseconds(spi::Column(r, 4, &isnull));
		deaths->Add(d);
	}
}

// Every worker already dead: swept on full passes, in case an earlier pass
// had to skip some of their rows.
void AddEarlierDeaths(const catalog::Extension &ext, Deaths *deaths, leases::Holder **holders, int *holder_count)
{
	char *sql = psprintf("SELECT worker_id FROM %s WHERE status OPERATOR(pg_catalog.=) 'dead'",
	                     catalog::Qualified(ext, "worker_heartbeats"));
	spi::Run(spi::Plan(sql, 0, nullptr), nullptr, nullptr, true);
	int extra = static_cast<int>(SPI_processed);
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

PassResult RunPass(const catalog::Extension &ext, const PassOptions &options)
{
	instr_time start;
	INSTR_TIME_SET_CURRENT(start);
	TimestampTz now = GetCurrentTimestamp();
	PassResult result{0, 0, 0, 0};

	FlushHeartbeats(ext);
	Deaths deaths{nullptr, 0, 0};
	FindSessionDeaths(ext, now, options, &deaths);
	FindTimeoutDeaths(ext, now, options.full, &deaths);

	leases::Holder *holders = nullptr;
	int holder_count = 0;
	if (options.full) {
		AddEarlierDeaths(ext, &deaths, &holders, &holder_count);
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
		batch->Add(e);
	}
	leases::ReleaseOptions release{holders, holder_count, true, !options.from_reaper, "worker_dead"};
	leases::ReleaseResult released = leases::ReleaseLeases(ext, release, batch);
	batch->Flush(ext, now);

	result.declared_dead = deaths.count;
	result.released = released.released;
	result.tables_failed = released.tables_failed;
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
