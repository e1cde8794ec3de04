#include "leases.hpp"

#include "expiry_probe.hpp"

#include "settings.hpp"
#include "spi_plans.hpp"

#include <cstdlib>
#include <cstring>
#include <utility>

extern "C" {
#include "access/xact.h"
#include "catalog/pg_class.h"
#include "utils/acl.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/resowner.h"
#include "access/table.h"
#include "catalog/pg_attribute.h"
#include "catalog/pg_index.h"
#include "catalog/pg_inherits.h"
#include "utils/syscache.h"
#include "commands/async.h"
#include "access/transam.h"
#include "storage/procarray.h"
#include "utils/snapmgr.h"
}

namespace wh::leases
{

namespace
{

bool IsTextLike(Oid type)
{
	Oid base = getBaseType(type);
	return base == TEXTOID || base == VARCHAROID;
}

const char *ColumnType(Oid relid, AttrNumber attnum)
{
	Oid type = InvalidOid;
	int32 typmod = -1;
	Oid collation = InvalidOid;
	get_atttypetypmodcoll(relid, attnum, &type, &typmod, &collation);
	// Always schema-qualified: the statements run under search_path =
	// pg_catalog, pg_temp, where a type of another schema is not found.
	return format_type_extended(type, typmod, FORMAT_TYPE_TYPEMOD_GIVEN | FORMAT_TYPE_FORCE_QUALIFY);
}

const char *QualifiedName(Oid relid)
{
	char *schema = get_namespace_name(get_rel_namespace(relid));
	char *name = get_rel_name(relid);
	if (!schema || !name)
		return nullptr;
	return quote_qualified_identifier(schema, name);
}

Oid LeaseTablesRelid(const catalog::Extension &ext)
{
	return get_relname_relid("lease_tables", ext.schema);
}

// The 1.1 columns of lease_tables exist (the same library serves a 1.0 catalog).
bool CatalogHasFencing(const catalog::Extension &ext)
{
	Oid relid = LeaseTablesRelid(ext);
	return relid != InvalidOid && get_attnum(relid, "token_column") != InvalidAttrNumber;
}

const char *QuotedOrNull(const char *name)
{
	return name ? quote_identifier(name) : nullptr;
}

// Why a registered table no longer qualifies (its owner changed it since the
// registration), NULL when it still does: the statements of a pass are only
// built for an ordinary table with a text worker column and a timestamptz
// expires column (and a bigint token column).
const char *Unfit(Oid relid, const char *worker, const char *expires, const char *token)
{
	char relkind = get_rel_relkind(relid);
	if (relkind != RELKIND_RELATION)
		return "it is no longer an ordinary table";
	AttrNumber attnum = get_attnum(relid, worker);
	if (attnum == InvalidAttrNumber)
		return psprintf("its worker column \"%s\" is gone", worker);
	if (!IsTextLike(get_atttype(relid, attnum)))
		return psprintf("its worker column \"%s\" is no longer text", worker);
	attnum = get_attnum(relid, expires);
	if (attnum == InvalidAttrNumber)
		return psprintf("its expires column \"%s\" is gone", expires);
	if (get_atttype(relid, attnum) != TIMESTAMPTZOID)
		return psprintf("its expires column \"%s\" is no longer timestamptz", expires);
	if (token) {
		attnum = get_attnum(relid, token);
		if (attnum == InvalidAttrNumber)
			return psprintf("its token column \"%s\" is gone", token);
		if (get_atttype(relid, attnum) != INT8OID)
			return psprintf("its token column \"%s\" is no longer bigint", token);
	}
	return nullptr;
}

// Runs fn as role (SECURITY_LOCAL_USERID_CHANGE, plus flags), then switches
// back. An error in fn leaves through the (sub)transaction abort, which
// restores the user.
template <typename Fn> void AsRole(Oid role, int flags, Fn fn)
{
	Oid saved_user = InvalidOid;
	int saved_context = 0;
	GetUserIdAndSecContext(&saved_user, &saved_context);
	if (role != InvalidOid)
		SetUserIdAndSecContext(role, saved_context | SECURITY_LOCAL_USERID_CHANGE | flags);
	fn();
	SetUserIdAndSecContext(saved_user, saved_context);
}

} // namespace

Table *LoadTables(const catalog::Extension &ext, int *count, Oid only)
{
	bool fenced = CatalogHasFencing(ext);
	char *sql = psprintf(
	    "SELECT l.table_name::pg_catalog.oid, l.worker_column::pg_catalog.text, "
	    "l.expires_column::pg_catalog.text, l.registered_as, a.key, a.value OPERATOR(pg_catalog.#>>) '{}', a.kind, %s "
	    "FROM %s l LEFT JOIN LATERAL ("
	    " SELECT 'r'::pg_catalog.text AS kind, e.key, e.value FROM pg_catalog.jsonb_each(l.on_release) e"
	    " UNION ALL SELECT 'x'::pg_catalog.text, e.key, e.value FROM pg_catalog.jsonb_each(%s) e) a ON true %s "
	    "ORDER BY 1, a.kind, a.key",
	    fenced ? "l.token_column::pg_catalog.text, l.attempts_column::pg_catalog.text, "
	             "l.order_column::pg_catalog.text, l.max_attempts"
	           : "NULL::pg_catalog.text, NULL::pg_catalog.text, NULL::pg_catalog.text, NULL::pg_catalog.int4",
	    catalog::Qualified(ext, "lease_tables"), fenced ? "l.on_exhausted" : "'{}'::pg_catalog.jsonb",
	    only != InvalidOid ? "WHERE l.table_name::pg_catalog.oid OPERATOR(pg_catalog.=) $1" : "");
	Oid types[1] = {OIDOID};
	Datum values[1] = {ObjectIdGetDatum(only)};
	spi::Run(spi::Plan(sql, only != InvalidOid ? 1 : 0, types), values, nullptr, true);
	int rows = static_cast<int>(SPI_processed);
	auto *tables = static_cast<Table *>(palloc0(sizeof(Table) * (rows > 0 ? rows : 1)));
	int n = 0;
	for (int row = 0; row < rows; ++row) {
		bool isnull = false;
		Oid relid = DatumGetObjectId(spi::Column(row, 1, &isnull));
		if (n == 0 || tables[n - 1].relid != relid) {
			Table &t = tables[n++];
			t.relid = relid;
			t.owner = catalog::RelationOwner(relid);
			t.exists = t.owner != InvalidOid;
			const char *current = t.exists ? QualifiedName(relid) : nullptr;
			t.label = current ? current : spi::ColumnText(row, 4);
			t.relation = current ? psprintf("ONLY %s", current) : nullptr;
			t.worker_column = quote_identifier(spi::ColumnText(row, 2));
			char *expires = spi::ColumnText(row, 3);
			t.expires_column = quote_identifier(expires);
			t.expires_attnum = t.exists ? get_attnum(relid, expires) : InvalidAttrNumber;
			t.token_column = QuotedOrNull(spi::ColumnText(row, 8));
			t.attempts_column = QuotedOrNull(spi::ColumnText(row, 9));
			t.order_column = QuotedOrNull(spi::ColumnText(row, 10));
			bool max_null = true;
			Datum max = spi::Column(row, 11, &max_null);
			t.max_attempts = max_null ? 0 : DatumGetInt32(max);
			t.unfit = t.exists ? Unfit(relid, spi::ColumnText(row, 2), expires, spi::ColumnText(row, 8)) : nullptr;
			t.assignments = static_cast<Assignment *>(palloc0(sizeof(Assignment) * rows));
			t.exhausted = static_cast<Assignment *>(palloc0(sizeof(Assignment) * rows));
		}
		Table &t = tables[n - 1];
		char *key = spi::ColumnText(row, 5);
		if (!key || !t.exists)
			continue;
		bool exhausted = strcmp(spi::ColumnText(row, 7), "x") == 0;
		AttrNumber attnum = get_attnum(relid, key);
		Assignment &a = exhausted ? t.exhausted[t.exhausted_count++] : t.assignments[t.assignment_count++];
		a.column = quote_identifier(key);
		// A column dropped since registration makes the statement fail, and
		// the table is reported and skipped like any other failure.
		a.type = attnum == InvalidAttrNumber ? "pg_catalog.text" : ColumnType(relid, attnum);
		a.value = spi::ColumnText(row, 6);
	}
	*count = n;
	return tables;
}

// lock_timeout and search_path for the statements of a pass, undone by
// AtEOXact_GUC(true, <the returned level>).
int EnterPassSettings(bool safe_search_path)
{
	int nest = NewGUCNestLevel();
	char timeout[32];
	snprintf(timeout, sizeof timeout, "%dms", settings::pass_lock_timeout_ms);
	(void)set_config_option("lock_timeout", timeout, PGC_USERSET, PGC_S_SESSION, GUC_ACTION_SAVE, true, 0, false);
	// A role's or database's plan_cache_mode = force_generic_plan would
	// override the custom plans of statements with long arrays (spi_plans.hpp).
	(void)set_config_option("plan_cache_mode", "auto", PGC_USERSET, PGC_S_SESSION, GUC_ACTION_SAVE, true, 0, false);
	if (safe_search_path)
		(void)set_config_option("search_path", "pg_catalog, pg_temp", PGC_USERSET, PGC_S_SESSION, GUC_ACTION_SAVE, true,
		                        0, false);
	return nest;
}

namespace
{

bool CanExhaust(const Table &t)
{
	return t.attempts_column && t.max_attempts > 0;
}

const Assignment *FindAssignment(const Assignment *list, int count, const char *column)
{
	for (int i = 0; i < count; ++i)
		if (strcmp(list[i].column, column) == 0)
			return &list[i];
	return nullptr;
}

// Parameters of a release statement: $1 the holders, then the on_release
// values, then the on_exhausted values, then max_attempts.
int ExhaustedParam(const Table &t)
{
	return 2 + t.assignment_count + t.exhausted_count;
}

// SET list shared by both release statements. A row released on its last
// attempt (a poison pill) gets on_exhausted instead of on_release.
char *ReleaseSetList(const Table &t)
{
	StringInfoData set;
	initStringInfo(&set);
	appendStringInfo(&set, "%s = NULL, %s = NULL", t.worker_column, t.expires_column);
	// The token of a released row is cleared: it can never become valid
	// again, even when the row is claimed by a plain UPDATE later.
	if (t.token_column)
		appendStringInfo(&set, ", %s = NULL", t.token_column);
	if (!CanExhaust(t)) {
		for (int i = 0; i < t.assignment_count; ++i)
			appendStringInfo(&set, ", %s = CAST($%d AS %s)", t.assignments[i].column, i + 2, t.assignments[i].type);
		return set.data;
	}
	const char *exhausted = psprintf("(t.%s IS NOT NULL AND t.%s OPERATOR(pg_catalog.>=) $%d)", t.worker_column,
	                                 t.attempts_column, ExhaustedParam(t));
	for (int i = 0; i < t.assignment_count; ++i) {
		const Assignment &a = t.assignments[i];
		const Assignment *x = FindAssignment(t.exhausted, t.exhausted_count, a.column);
		const char *when_exhausted =
		    x ? psprintf("CAST($%d AS %s)", static_cast<int>(2 + t.assignment_count + (x - t.exhausted)), x->type)
		      : psprintf("t.%s", a.column);
		appendStringInfo(&set, ", %s = CASE WHEN %s THEN %s ELSE CAST($%d AS %s) END", a.column, exhausted,
		                 when_exhausted, i + 2, a.type);
	}
	for (int i = 0; i < t.exhausted_count; ++i) {
		const Assignment &x = t.exhausted[i];
		if (FindAssignment(t.assignments, t.assignment_count, x.column))
			continue;
		appendStringInfo(&set, ", %s = CASE WHEN %s THEN CAST($%d AS %s) ELSE t.%s END", x.column, exhausted,
		                 2 + t.assignment_count + i, x.type, x.column);
	}
	return set.data;
}

const char *ReleaseCondition(const Table &t, bool by_worker)
{
	return by_worker ? psprintf("s.%s::pg_catalog.text OPERATOR(pg_catalog.=) ANY ($1)", t.worker_column)
	                 : psprintf("s.%s OPERATOR(pg_catalog.<) pg_catalog.now()", t.expires_column);
}

// 1. Lock the rows to release (skipping rows others hold locked), with their
// holder and whether this was their last attempt.
char *PickStatement(const Table &t, bool by_worker)
{
	const char *exhausted = CanExhaust(t) ? psprintf("(s.%s IS NOT NULL AND s.%s OPERATOR(pg_catalog.>=) $%d)",
	                                                 t.worker_column, t.attempts_column, ExhaustedParam(t))
	                                      : "false";
	return psprintf("SELECT s.ctid, s.%s::pg_catalog.text, %s FROM %s s WHERE %s FOR UPDATE OF s SKIP LOCKED",
	                t.worker_column, exhausted, t.relation, ReleaseCondition(t, by_worker));
}

// 2. Release them, as a statement of its own: its snapshot sees the version
// of each row that the lock above found (a row updated concurrently is locked
// in its new version, which a single statement could not update). Counted
// from RETURNING: what is reported is what was released. Parameters first +
// 0..2: the ctids, holders and exhausted flags of the picked rows. Run with
// enable_seqscan off (RunRelease): each row is fetched by its ctid. Left to
// its estimates, the planner chose a hash join over a sequential scan of the
// whole table from about 2,500 rows on (120 ms instead of 10 at 250,000 rows).
char *UpdateStatement(const Table &t, int first)
{
	return psprintf("WITH released AS (UPDATE %s t SET %s"
	                " FROM ROWS FROM (pg_catalog.unnest($%d), pg_catalog.unnest($%d), pg_catalog.unnest($%d))"
	                " AS u(row_ctid, holder, exhausted)"
	                " WHERE t.ctid OPERATOR(pg_catalog.=) u.row_ctid RETURNING u.holder, u.exhausted)"
	                " SELECT holder, pg_catalog.count(*)::pg_catalog.int4,"
	                " (pg_catalog.count(*) FILTER (WHERE exhausted))::pg_catalog.int4 FROM released GROUP BY holder",
	                t.relation, ReleaseSetList(t), first, first + 1, first + 2);
}

// 3. Rows still to release after 2: those another transaction held locked.
// Run with read_only = false, so that its snapshot sees the update above.
char *LeftStatement(const Table &t, bool by_worker)
{
	return psprintf("SELECT pg_catalog.count(*)::pg_catalog.int4 FROM %s s WHERE %s", t.relation,
	                ReleaseCondition(t, by_worker));
}

// options.holders is sorted by ReleaseLeases: a pass with 1000 dead workers
// looks up each (holder, table) group of its release statements.
const Holder *FindHolder(const ReleaseOptions &options, const char *worker_id)
{
	if (!worker_id || options.holder_count == 0)
		return nullptr;
	Holder key{worker_id, -1, -1};
	return static_cast<const Holder *>(
	    bsearch(&key, options.holders, options.holder_count, sizeof(Holder), CompareHolders));
}

void FillAssignmentParams(const Assignment *list, int count, Oid *types, Datum *values, char *nulls)
{
	for (int i = 0; i < count; ++i) {
		types[i] = TEXTOID;
		values[i] = list[i].value ? CStringGetTextDatum(list[i].value) : (Datum)0;
		nulls[i] = list[i].value ? ' ' : 'n';
	}
}

// The leases_released event of one holder's rows in t (and lease_exhausted
// for those released on their last attempt). h: the holder's entry in
// options, NULL when not among them (an expired lease).
void AddReleaseEvents(const Table &t, bool by_worker, const ReleaseOptions &options, const Holder *h,
                      const char *holder, int count, int exhausted, events::Batch *batch)
{
	events::Event e{};
	e.event = "leases_released";
	e.worker_id = holder;
	e.table_name = t.label;
	e.released_count = count;
	e.silent_for_us = h ? h->silent_for_us : -1;
	e.latency_us = h ? h->latency_us : -1;
	e.reason = by_worker ? options.reason : "lease_expired";
	batch->Add(e);
	if (exhausted > 0) {
		e.event = "lease_exhausted";
		e.released_count = exhausted;
		e.silent_for_us = -1;
		e.latency_us = -1;
		batch->Add(e);
	}
}

// --- the direct release of dead holders' rows ------------------------------
//
// The careful path below (lock the rows SKIP LOCKED, update them by ctid
// joined to what the lock found, count the rows left) makes three passes over
// the rows and writes a lock record for each before its update. When nobody
// else holds those rows, which is nearly always (their holders are dead), two
// statements do: read the rows (no lock), then update exactly those ctids,
// still held by a holder:
//  - a row whose xmax names a transaction still running (a locker or an
//    updater) sends the table to the careful path before anything is
//    written, which skips it exactly as before. A finished one is no locker:
//    a claim locks its row FOR UPDATE and then updates it, and PostgreSQL
//    keeps that lock in the new version's xmax after the commit, so nearly
//    every leased row has one;
//  - a row locked between the read and the update is waited for at most
//    kDirectLockTimeoutMs, after which the update is rolled back (its own
//    subtransaction) and the careful path runs instead;
//  - the counts per holder come from the read; if the update did not update
//    every row read (one changed in between, or a trigger or policy of the
//    table skipped it), it is rolled back and the careful path runs, so that
//    the events stay exact.
// After a lock timeout or a short count the table takes the careful path for
// a minute (BlockDirect): a table whose triggers skip rows would otherwise
// run its triggers twice in every pass. The tables with an attempt limit need
// the exhausted flag of each row, which the read gives as well.
constexpr int kDirectLockTimeoutMs = 10;

char *DirectReadStatement(const Table &t)
{
	const char *exhausted =
	    CanExhaust(t) ? psprintf("(s.%s OPERATOR(pg_catalog.>=) $%d)", t.attempts_column, ExhaustedParam(t)) : "false";
	return psprintf("SELECT s.ctid, s.%s::pg_catalog.text, %s, s.xmax FROM %s s WHERE %s", t.worker_column, exhausted,
	                t.relation, ReleaseCondition(t, true));
}

// Parameter first: the ctids read.
char *DirectUpdateStatement(const Table &t, int first)
{
	return psprintf("UPDATE %s t SET %s WHERE t.ctid OPERATOR(pg_catalog.=) ANY ($%d) AND t.%s::pg_catalog.text "
	                "OPERATOR(pg_catalog.=) ANY ($1)",
	                t.relation, ReleaseSetList(t), first, t.worker_column);
}

// Tables whose direct release hit a lock recently: the careful path for a
// minute, rather than a wait in every pass (reaper-local, a few entries).
struct DirectBlocked {
	Oid relid;
	TimestampTz until;
};
constexpr int kDirectBlockedSlots = 16;
DirectBlocked direct_blocked[kDirectBlockedSlots];

bool DirectAllowed(Oid relid, TimestampTz now)
{
	for (const DirectBlocked &b : direct_blocked)
		if (b.relid == relid && now < b.until)
			return false;
	return true;
}

void BlockDirect(Oid relid, TimestampTz now)
{
	DirectBlocked *slot = &direct_blocked[0];
	for (DirectBlocked &b : direct_blocked) {
		if (b.relid == relid) {
			slot = &b;
			break;
		}
		if (b.until < slot->until)
			slot = &b; // the oldest entry makes room
	}
	*slot = DirectBlocked{relid, now + 60 * USECS_PER_SEC};
}

// A row's xmax (read from SQL, without its infomask) names a transaction
// that may still lock or update it. xmax may also be a MultiXactId, which
// SQL does not tell apart: a value past the next transaction id is taken as
// running (careful path); one that looks finished makes the update meet the
// lock, wait kDirectLockTimeoutMs and fall back.
bool LockerMayBeRunning(TransactionId xmax)
{
	if (!TransactionIdIsValid(xmax))
		return false;
	if (TransactionIdPrecedes(xmax, TransactionXmin))
		return false; // finished before this transaction's first snapshot
	if (!TransactionIdPrecedes(xmax, XidFromFullTransactionId(ReadNextFullTransactionId())))
		return true; // no transaction id yet: a MultiXactId
	return TransactionIdIsInProgress(xmax);
}

// Releases the holders' rows of t directly. Returns -1 when the careful path
// must run instead (nothing changed then), else the number released, with
// their events added to batch. types/values/nulls: the statement parameters
// of RunRelease ($1 the holders, nargs of them), with room for one more.
int ReleaseDirect(const Table &t, const ReleaseOptions &options, int nargs, Oid *types, Datum *values, char *nulls,
                  events::Batch *batch, int *requeued)
{
	TimestampTz now = GetCurrentTimestamp();
	if (!DirectAllowed(t.relid, now))
		return -1;
	const bool custom = options.holder_count > spi::kCustomPlanAbove;
	spi::Run(spi::Plan(DirectReadStatement(t), nargs, types, custom), values, nulls, false);
	int rows = static_cast<int>(SPI_processed);
	if (rows == 0)
		return 0;
	// Per holder (options.holders is sorted): rows and exhausted rows.
	auto *counts = static_cast<int *>(palloc0(sizeof(int) * options.holder_count * 2));
	auto *ctids = static_cast<Datum *>(palloc(sizeof(Datum) * rows));
	auto *tids = static_cast<ItemPointerData *>(palloc(sizeof(ItemPointerData) * rows));
	for (int row = 0; row < rows; ++row) {
		bool isnull = false;
		ItemPointerCopy(reinterpret_cast<ItemPointer>(DatumGetPointer(spi::Column(row, 1, &isnull))), &tids[row]);
		ctids[row] = PointerGetDatum(&tids[row]);
		Datum xmax = spi::Column(row, 4, &isnull);
		if (!isnull && LockerMayBeRunning(DatumGetTransactionId(xmax)))
			return -1; // someone holds it: the careful path skips it
		const Holder *h = FindHolder(options, spi::ColumnText(row, 2));
		if (!h)
			return -1; // cannot happen (the read matched a holder); be careful anyway
		int index = static_cast<int>(h - options.holders);
		counts[index * 2]++;
		Datum exhausted = spi::Column(row, 3, &isnull);
		if (!isnull && DatumGetBool(exhausted))
			counts[index * 2 + 1]++;
	}
	types[nargs] = TIDARRAYOID;
	values[nargs] =
	    PointerGetDatum(construct_array(ctids, rows, TIDOID, sizeof(ItemPointerData), false, TYPALIGN_SHORT));
	nulls[nargs] = ' ';
	nulls[nargs + 1] = '\0';
	SPIPlanPtr update = spi::Plan(DirectUpdateStatement(t, nargs + 1), nargs + 1, types, custom);

	bool complete = false;
	ErrorData *error = TrySubtransaction(&complete, [&]() {
		int nest = NewGUCNestLevel();
		char timeout[32];
		snprintf(timeout, sizeof timeout, "%dms", Min(kDirectLockTimeoutMs, settings::pass_lock_timeout_ms));
		(void)set_config_option("lock_timeout", timeout, PGC_USERSET, PGC_S_SESSION, GUC_ACTION_SAVE, true, 0, false);
		// Each row fetched by its ctid (as in UpdateStatement), not found again
		// through the worker column's index: a TID scan is always possible here.
		for (const char *scan : {"enable_seqscan", "enable_indexscan", "enable_bitmapscan"})
			(void)set_config_option(scan, "off", PGC_USERSET, PGC_S_SESSION, GUC_ACTION_SAVE, true, 0, false);
		spi::Run(update, values, nulls, false);
		AtEOXact_GUC(true, nest);
		return SPI_processed == static_cast<uint64>(rows); // else undone: the careful path runs
	});
	if (error) {
		if (error->sqlerrcode != ERRCODE_LOCK_NOT_AVAILABLE)
			ReThrowError(error);
		FreeErrorData(error);
	}
	if (!complete)
		BlockDirect(t.relid, now);
	nulls[nargs] = '\0';
	if (!complete)
		return -1;
	for (int i = 0; i < options.holder_count; ++i) {
		int count = counts[i * 2];
		if (count == 0)
			continue;
		*requeued += count - counts[i * 2 + 1];
		AddReleaseEvents(t, true, options, &options.holders[i], options.holders[i].worker_id, count, counts[i * 2 + 1],
		                 batch);
	}
	return rows;
}

// Returns the number of leases released; *requeued counts those that went
// back to the queue (held by someone, not exhausted), *skipped those left
// because another transaction held them locked (a later pass retries them).
int RunRelease(const Table &t, bool by_worker, Datum holders, const ReleaseOptions &options, events::Batch *batch,
               int *requeued, int *skipped)
{
	int nargs = 1 + t.assignment_count + (CanExhaust(t) ? t.exhausted_count + 1 : 0);
	// The update statement takes three more: the picked rows.
	auto *types = static_cast<Oid *>(palloc(sizeof(Oid) * (nargs + 3)));
	auto *values = static_cast<Datum *>(palloc(sizeof(Datum) * (nargs + 3)));
	auto *nulls = static_cast<char *>(palloc(nargs + 4));
	types[0] = TEXTARRAYOID;
	values[0] = holders;
	nulls[0] = holders == (Datum)0 ? 'n' : ' ';
	FillAssignmentParams(t.assignments, t.assignment_count, types + 1, values + 1, nulls + 1);
	if (CanExhaust(t)) {
		int x = 1 + t.assignment_count;
		FillAssignmentParams(t.exhausted, t.exhausted_count, types + x, values + x, nulls + x);
		types[nargs - 1] = INT4OID;
		values[nargs - 1] = Int32GetDatum(t.max_attempts);
		nulls[nargs - 1] = ' ';
	}
	nulls[nargs] = '\0';
	if (by_worker) {
		int released = ReleaseDirect(t, options, nargs, types, values, nulls, batch, requeued);
		if (released >= 0)
			return released;
	}
	// The holders' array is tested per row: planned with its values when long.
	const bool custom = by_worker && options.holder_count > spi::kCustomPlanAbove;
	spi::Run(spi::Plan(PickStatement(t, by_worker), nargs, types, custom), values, nulls, false);
	int picked = static_cast<int>(SPI_processed);
	int released = 0;
	if (picked > 0) {
		auto *ctids = static_cast<Datum *>(palloc(sizeof(Datum) * picked));
		auto *holder_values = static_cast<Datum *>(palloc(sizeof(Datum) * picked));
		auto *holder_nulls = static_cast<bool *>(palloc(sizeof(bool) * picked));
		auto *exhausted_values = static_cast<Datum *>(palloc(sizeof(Datum) * picked));
		for (int row = 0; row < picked; ++row) {
			bool isnull = false;
			auto *tid = static_cast<ItemPointer>(palloc(sizeof(ItemPointerData)));
			ItemPointerCopy(reinterpret_cast<ItemPointer>(DatumGetPointer(spi::Column(row, 1, &isnull))), tid);
			ctids[row] = PointerGetDatum(tid);
			char *holder = spi::ColumnText(row, 2);
			holder_nulls[row] = holder == nullptr;
			holder_values[row] = holder ? CStringGetTextDatum(holder) : (Datum)0;
			Datum exhausted = spi::Column(row, 3, &isnull);
			exhausted_values[row] = BoolGetDatum(!isnull && DatumGetBool(exhausted));
		}
		int dims[1] = {picked};
		int lbs[1] = {1};
		types[nargs] = TIDARRAYOID;
		values[nargs] =
		    PointerGetDatum(construct_array(ctids, picked, TIDOID, sizeof(ItemPointerData), false, TYPALIGN_SHORT));
		types[nargs + 1] = TEXTARRAYOID;
		values[nargs + 1] = PointerGetDatum(
		    construct_md_array(holder_values, holder_nulls, 1, dims, lbs, TEXTOID, -1, false, TYPALIGN_INT));
		types[nargs + 2] = BOOLARRAYOID;
		values[nargs + 2] = PointerGetDatum(construct_array(exhausted_values, picked, BOOLOID, 1, true, TYPALIGN_CHAR));
		memset(nulls + nargs, ' ', 3);
		nulls[nargs + 3] = '\0';
		int nest = NewGUCNestLevel();
		(void)set_config_option("enable_seqscan", "off", PGC_USERSET, PGC_S_SESSION, GUC_ACTION_SAVE, true, 0, false);
		spi::Run(spi::Plan(UpdateStatement(t, nargs + 1), nargs + 3, types), values, nulls, false);
		AtEOXact_GUC(true, nest);
		for (uint64 row = 0; row < SPI_processed; ++row) {
			char *holder = spi::ColumnText(static_cast<int>(row), 1);
			bool isnull = false;
			int count = DatumGetInt32(spi::Column(static_cast<int>(row), 2, &isnull));
			int exhausted = DatumGetInt32(spi::Column(static_cast<int>(row), 3, &isnull));
			released += count;
			if (!holder && !by_worker)
				continue; // an expired deadline on a row nobody held: cleared, not an event
			*requeued += count - exhausted;
			AddReleaseEvents(t, by_worker, options, FindHolder(options, holder), holder, count, exhausted, batch);
		}
	}
	nulls[nargs] = '\0';
	spi::Run(spi::Plan(LeftStatement(t, by_worker), nargs, types, custom), values, nulls, false);
	bool isnull = true;
	int left = SPI_processed > 0 ? DatumGetInt32(spi::Column(0, 1, &isnull)) : 0;
	*skipped += isnull ? 0 : left;
	return released;
}

} // namespace

int CompareHolders(const void *a, const void *b)
{
	return strcmp(static_cast<const Holder *>(a)->worker_id, static_cast<const Holder *>(b)->worker_id);
}

void CommitSubtransaction(MemoryContext outer_context, ResourceOwner outer_owner)
{
	ReleaseCurrentSubTransaction();
	MemoryContextSwitchTo(outer_context);
	CurrentResourceOwner = outer_owner;
}

ErrorData *AbandonSubtransaction(MemoryContext outer_context, ResourceOwner outer_owner)
{
	MemoryContextSwitchTo(outer_context);
	ErrorData *error = CopyErrorData();
	FlushErrorState();
	RollbackAndReleaseCurrentSubTransaction();
	MemoryContextSwitchTo(outer_context);
	CurrentResourceOwner = outer_owner;
	return error;
}

namespace
{

// Releases one table inside a subtransaction, as its owner. Returns -1 when
// the table failed (reported, rolled back, skipped).
int ReleaseOneTable(const Table &t, Datum holders, const ReleaseOptions &options, events::Batch *batch,
                    const char **failure, int *skipped)
{
	MemoryContext outer_context = CurrentMemoryContext;
	ResourceOwner outer_owner = CurrentResourceOwner;
	volatile int released = 0;
	// The events of this table are dropped with its subtransaction.
	const int mark = batch->Mark();
	BeginInternalSubTransaction(nullptr);
	MemoryContextSwitchTo(outer_context);
	PG_TRY();
	{
		int nest = EnterPassSettings(true); // the triggers and casts of the user's table run under it
		Oid saved_user = InvalidOid;
		int saved_context = 0;
		GetUserIdAndSecContext(&saved_user, &saved_context);
		// Triggers on the user's table run as its owner, never as us.
		SetUserIdAndSecContext(t.owner, saved_context | SECURITY_LOCAL_USERID_CHANGE | SECURITY_RESTRICTED_OPERATION);
		int n = 0;
		int requeued = 0;
		int left = 0;
		if (holders != (Datum)0)
			n += RunRelease(t, true, holders, options, batch, &requeued, &left);
		if (options.expired)
			n += RunRelease(t, false, holders, options, batch, &requeued, &left);
		*skipped = left;
		if (requeued > 0)
			NotifyQueue(t.relid, requeued);
		released = n;
		SetUserIdAndSecContext(saved_user, saved_context);
		AtEOXact_GUC(true, nest);
		CommitSubtransaction(outer_context, outer_owner);
	}
	PG_CATCH();
	{
		ErrorData *error = AbandonSubtransaction(outer_context, outer_owner);
		batch->Truncate(mark);
		*skipped = 0;
		ereport(options.warn_each_call ? WARNING : LOG,
		        (errcode(error->sqlerrcode),
		         errmsg("worker_heartbeat: skipped releasing leases in table %s: %s", t.label, error->message),
		         error->detail ? errdetail_internal("%s", error->detail) : 0,
		         errhint("The next pass will try again.")));
		*failure = psprintf("skipped releasing leases in table %s: %s", t.label, error->message);
		FreeErrorData(error);
		released = -1;
	}
	PG_END_TRY();
	return released;
}

// Reaper-local memory of tables already reported missing, so that a dropped
// table is logged once, not on every pass.
Oid *reported_missing = nullptr;
int reported_missing_count = 0;

bool FirstReportOfMissing(Oid relid)
{
	for (int i = 0; i < reported_missing_count; ++i)
		if (reported_missing[i] == relid)
			return false;
	reported_missing =
	    static_cast<Oid *>(reported_missing ? repalloc(reported_missing, sizeof(Oid) * (reported_missing_count + 1))
	                                        : MemoryContextAlloc(TopMemoryContext, sizeof(Oid)));
	reported_missing[reported_missing_count++] = relid;
	return true;
}

Datum HolderArray(const ReleaseOptions &options)
{
	if (options.holder_count == 0)
		return (Datum)0;
	auto *ids = static_cast<Datum *>(palloc(sizeof(Datum) * options.holder_count));
	for (int i = 0; i < options.holder_count; ++i)
		ids[i] = CStringGetTextDatum(options.holders[i].worker_id);
	return PointerGetDatum(construct_array(ids, options.holder_count, TEXTOID, -1, false, TYPALIGN_INT));
}

struct AssignmentContext {
	const char *parameter;
	const char *column;
};

void ErrorContextForAssignment(void *arg)
{
	auto *context = static_cast<AssignmentContext *>(arg);
	errcontext("checking %s for column \"%s\"", context->parameter, context->column);
}

// A JSON value as the text a cast to the column's type reads; NULL for null.
const char *JsonValueText(const JsonbValue &value)
{
	switch (value.type) {
	case jbvNull:
		return nullptr;
	case jbvString:
		return pnstrdup(value.val.string.val, value.val.string.len);
	case jbvNumeric:
		return DatumGetCString(DirectFunctionCall1(numeric_out, NumericGetDatum(value.val.numeric)));
	case jbvBool:
		return value.val.boolean ? "true" : "false";
	default:
		return JsonbToCString(nullptr, value.val.binary.data, value.val.binary.len);
	}
}

// "worker_heartbeat:<schema>.<table>", NULL when the table is gone.
const char *QueueChannel(Oid relid)
{
	char *schema = get_namespace_name(get_rel_namespace(relid));
	char *name = get_rel_name(relid);
	if (!schema || !name)
		return nullptr;
	return psprintf("%s:%s.%s", events::kChannel, schema, name);
}

// The cast a release will apply, tried now: a value that does not cast is
// refused at registration rather than at every pass. The type's input
// function (a domain's CHECK) is code of the table's owner: the caller runs it
// as that owner, restricted (Register).
void CheckAssignment(Oid relid, const char *column, const char *value, AttrNumber attnum, const char *parameter)
{
	AssignmentContext context{parameter, column};
	Oid type = InvalidOid;
	int32 typmod = -1;
	Oid collation = InvalidOid;
	get_atttypetypmodcoll(relid, attnum, &type, &typmod, &collation);
	ErrorContextCallback callback;
	callback.callback = ErrorContextForAssignment;
	callback.arg = &context;
	callback.previous = error_context_stack;
	error_context_stack = &callback;
	if (value) {
		Oid input = InvalidOid;
		Oid ioparam = InvalidOid;
		getTypeInputInfo(type, &input, &ioparam);
		(void)OidInputFunctionCall(input, const_cast<char *>(value), ioparam, typmod);
	} else {
		HeapTuple tuple = SearchSysCacheAttNum(relid, attnum);
		bool not_null = HeapTupleIsValid(tuple) && reinterpret_cast<Form_pg_attribute>(GETSTRUCT(tuple))->attnotnull;
		if (HeapTupleIsValid(tuple))
			ReleaseSysCache(tuple);
		if (not_null)
			ereport(ERROR, (errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
			                errmsg("%s sets column \"%s\" to null, but it is NOT NULL", parameter, column)));
	}
	error_context_stack = callback.previous;
}

// A column a release or a claim assigns must be assignable: not generated,
// not GENERATED ALWAYS AS IDENTITY.
void RequireAssignable(Oid relid, AttrNumber attnum, const char *column, const char *what)
{
	HeapTuple tuple = SearchSysCacheAttNum(relid, attnum);
	if (!HeapTupleIsValid(tuple))
		return;
	auto *attr = reinterpret_cast<Form_pg_attribute>(GETSTRUCT(tuple));
	bool generated = attr->attgenerated != '\0';
	bool identity = attr->attidentity == ATTRIBUTE_IDENTITY_ALWAYS;
	ReleaseSysCache(tuple);
	if (generated || identity)
		ereport(ERROR, (errcode(ERRCODE_GENERATED_ALWAYS),
		                errmsg("column \"%s\" of table %s is %s", column, QualifiedName(relid),
		                       generated ? "a generated column" : "an identity column GENERATED ALWAYS"),
		                errdetail("%s", what), errhint("Name a column that can be assigned, or leave this one out.")));
}

AttrNumber RequireColumn(Oid relid, const char *column, const char *parameter)
{
	AttrNumber attnum = get_attnum(relid, column);
	if (attnum == InvalidAttrNumber || attnum < 0)
		ereport(ERROR, (errcode(ERRCODE_UNDEFINED_COLUMN),
		                errmsg("column \"%s\" of table %s does not exist", column, QualifiedName(relid)),
		                errhint("Name an existing column with %s.", parameter)));
	return attnum;
}

bool HasIndexLedBy(Oid relid, AttrNumber attnum)
{
	Relation rel = table_open(relid, AccessShareLock);
	List *indexes = RelationGetIndexList(rel);
	bool found = false;
	ListCell *cell;
	foreach (cell, indexes) {
		HeapTuple tuple = SearchSysCache1(INDEXRELID, ObjectIdGetDatum(lfirst_oid(cell)));
		if (!HeapTupleIsValid(tuple))
			continue;
		auto *index = reinterpret_cast<Form_pg_index>(GETSTRUCT(tuple));
		if (index->indnatts > 0 && index->indkey.values[0] == attnum)
			found = true;
		ReleaseSysCache(tuple);
	}
	list_free(indexes);
	table_close(rel, AccessShareLock);
	return found;
}

} // namespace

void Register(const catalog::Extension &ext, const Registration &r)
{
	Oid relid = r.p_table;
	char relkind = get_rel_relkind(relid);
	if (relkind == '\0')
		ereport(ERROR, (errcode(ERRCODE_UNDEFINED_TABLE), errmsg("table with OID %u does not exist", relid)));
	const char *name = QualifiedName(relid);
	if (relkind != RELKIND_RELATION)
		ereport(ERROR, (errcode(ERRCODE_WRONG_OBJECT_TYPE), errmsg("%s is not a plain table", name),
		                errdetail("Leases can be registered on ordinary tables only (not views, foreign or "
		                          "partitioned tables).")));
	if (get_rel_persistence(relid) == RELPERSISTENCE_TEMP)
		ereport(ERROR,
		        (errcode(ERRCODE_WRONG_OBJECT_TYPE), errmsg("table \"%s\" is a temporary table", get_rel_name(relid)),
		         errdetail("A temporary table is seen by its own session only, and goes with it: the "
		                   "reaper could never release its leases."),
		         errhint("Register an ordinary (permanent or unlogged) table.")));
	if (!catalog::IsOwner(relid, GetOuterUserId()))
		ereport(ERROR, (errcode(ERRCODE_INSUFFICIENT_PRIVILEGE), errmsg("must be owner of table %s", name),
		                errdetail("The reaper releases leases in a registered table as the table's owner.")));

	AttrNumber worker_attnum = RequireColumn(relid, r.worker_column, "p_worker_column");
	if (!IsTextLike(get_atttype(relid, worker_attnum)))
		ereport(ERROR, (errcode(ERRCODE_DATATYPE_MISMATCH),
		                errmsg("column \"%s\" of table %s has type %s, not text", r.worker_column, name,
		                       format_type_be(get_atttype(relid, worker_attnum))),
		                errhint("The worker column holds a worker_id: use text or varchar.")));
	AttrNumber expires_attnum = RequireColumn(relid, r.expires_column, "p_expires_column");
	if (get_atttype(relid, expires_attnum) != TIMESTAMPTZOID)
		ereport(ERROR, (errcode(ERRCODE_DATATYPE_MISMATCH),
		                errmsg("column \"%s\" of table %s has type %s, not timestamp with time zone", r.expires_column,
		                       name, format_type_be(get_atttype(relid, expires_attnum))),
		                errhint("The expires column holds the lease deadline: use timestamptz.")));
	if (worker_attnum == expires_attnum)
		ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE),
		                errmsg("the worker column and the expires column must differ")));
	RequireAssignable(relid, worker_attnum, r.worker_column,
	                  "Claiming and releasing a lease assign the worker column.");
	RequireAssignable(relid, expires_attnum, r.expires_column,
	                  "Claiming and releasing a lease assign the expires column.");

	// 1.1: token, attempts and order columns, the attempt limit.
	AttrNumber token_attnum = InvalidAttrNumber;
	AttrNumber attempts_attnum = InvalidAttrNumber;
	if (r.token_column) {
		token_attnum = RequireColumn(relid, r.token_column, "p_token_column");
		if (get_atttype(relid, token_attnum) != INT8OID)
			ereport(ERROR, (errcode(ERRCODE_DATATYPE_MISMATCH),
			                errmsg("column \"%s\" of table %s has type %s, not bigint", r.token_column, name,
			                       format_type_be(get_atttype(relid, token_attnum))),
			                errhint("The token column holds lease tokens (random bigint values): use bigint.")));
		RequireAssignable(relid, token_attnum, r.token_column, "Claiming a lease assigns the token column.");
	}
	if (r.attempts_column) {
		attempts_attnum = RequireColumn(relid, r.attempts_column, "p_attempts_column");
		Oid type = get_atttype(relid, attempts_attnum);
		if (type != INT4OID && type != INT8OID)
			ereport(ERROR, (errcode(ERRCODE_DATATYPE_MISMATCH),
			                errmsg("column \"%s\" of table %s has type %s, not integer", r.attempts_column, name,
			                       format_type_be(type)),
			                errhint("The attempts column counts claims: use integer or bigint.")));
		RequireAssignable(relid, attempts_attnum, r.attempts_column, "Claiming a lease counts in the attempts column.");
	}
	if (r.order_column)
		(void)RequireColumn(relid, r.order_column, "p_order_column");
	AttrNumber managed[4] = {worker_attnum, expires_attnum, token_attnum, attempts_attnum};
	for (int i = 0; i < 4; ++i)
		for (int k = i + 1; k < 4; ++k)
			if (managed[i] != InvalidAttrNumber && managed[i] == managed[k])
				ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				                errmsg("the worker, expires, token and attempts columns must differ")));
	if (r.has_max_attempts && r.max_attempts <= 0)
		ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE),
		                errmsg("p_max_attempts must be positive, not %d", r.max_attempts)));
	if (r.max_attempts > 0 && !r.attempts_column)
		ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE), errmsg("p_max_attempts needs an attempts column"),
		                errhint("Name the column that counts claims with p_attempts_column.")));
	if (r.on_exhausted && r.max_attempts == 0)
		ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE), errmsg("p_on_exhausted needs p_max_attempts"),
		                errhint("on_exhausted is applied when a lease is released on its last attempt.")));

	// p_on_release and p_on_exhausted: objects of column -> value, each value
	// castable now. The casts (a domain's CHECK, a type's input function) are
	// code of the table's owner: run as the owner, restricted, never as the
	// extension's owner.
	Oid table_owner = catalog::RelationOwner(relid);
	Oid saved_user = InvalidOid;
	int saved_context = 0;
	GetUserIdAndSecContext(&saved_user, &saved_context);
	SetUserIdAndSecContext(table_owner, saved_context | SECURITY_LOCAL_USERID_CHANGE | SECURITY_RESTRICTED_OPERATION);
	for (int pass = 0; pass < 2; ++pass) {
		Jsonb *object = pass == 0 ? r.on_release : r.on_exhausted;
		const char *parameter = pass == 0 ? "p_on_release" : "p_on_exhausted";
		if (!object)
			continue;
		JsonbIterator *it = JsonbIteratorInit(&object->root);
		JsonbValue value;
		JsonbIteratorToken token = JsonbIteratorNext(&it, &value, false);
		if (token != WJB_BEGIN_OBJECT || JB_ROOT_IS_SCALAR(object))
			ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE), errmsg("%s must be a JSON object", parameter),
			                errhint(pass == 0 ? "For example '{\"state\": \"pending\"}'."
			                                  : "For example '{\"state\": \"failed\"}'.")));
		while ((token = JsonbIteratorNext(&it, &value, true)) != WJB_DONE) {
			if (token != WJB_KEY)
				continue;
			char *column = pnstrdup(value.val.string.val, value.val.string.len);
			token = JsonbIteratorNext(&it, &value, true);
			AttrNumber attnum =
			    RequireColumn(relid, column, pass == 0 ? "the keys of p_on_release" : "the keys of p_on_exhausted");
			if (attnum == worker_attnum || attnum == expires_attnum)
				ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				                errmsg("%s cannot assign column \"%s\"", parameter, column),
				                errdetail("Releasing a lease always sets the worker and expires columns to NULL.")));
			if (attnum == token_attnum || attnum == attempts_attnum)
				ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				                errmsg("%s cannot assign column \"%s\"", parameter, column),
				                errdetail("The token and attempts columns are kept by the fencing functions.")));
			RequireAssignable(relid, attnum, column,
			                  pass == 0 ? "Releasing a lease assigns the columns of p_on_release."
			                            : "Releasing a lease on its last attempt assigns the columns of "
			                              "p_on_exhausted.");
			CheckAssignment(relid, column, JsonValueText(value), attnum, parameter);
		}
	}
	SetUserIdAndSecContext(saved_user, saved_context);

	// The registration itself is ours: lease_tables is read and written as
	// its owner (register_lease_table runs with the caller's rights).
	SetUserIdAndSecContext(catalog::RelationOwner(LeaseTablesRelid(ext)), saved_context | SECURITY_LOCAL_USERID_CHANGE);

	Oid check_types[1] = {OIDOID};
	Datum check_values[1] = {ObjectIdGetDatum(relid)};
	char *exists_sql = psprintf("SELECT 1 FROM %s WHERE table_name OPERATOR(pg_catalog.=) $1::pg_catalog.regclass",
	                            catalog::Qualified(ext, "lease_tables"));
	spi::Run(spi::Plan(exists_sql, 1, check_types), check_values, nullptr, true);
	if (SPI_processed > 0)
		ereport(ERROR, (errcode(ERRCODE_DUPLICATE_OBJECT), errmsg("table %s is already registered", name),
		                errhint("Call unregister_lease_table() first to change its registration.")));

	if (!r.fenced_signature) {
		Oid insert_types[5] = {OIDOID, TEXTOID, TEXTOID, JSONBOID, TEXTOID};
		Datum insert_values[5] = {ObjectIdGetDatum(relid), CStringGetTextDatum(r.worker_column),
		                          CStringGetTextDatum(r.expires_column), JsonbPGetDatum(r.on_release),
		                          CStringGetTextDatum(name)};
		char *insert_sql =
		    psprintf("INSERT INTO %s (table_name, worker_column, expires_column, on_release, registered_as) "
		             "VALUES ($1::pg_catalog.regclass, $2, $3, $4, $5)",
		             catalog::Qualified(ext, "lease_tables"));
		spi::Run(spi::Plan(insert_sql, 5, insert_types), insert_values, nullptr, false);
	} else {
		Oid insert_types[10] = {OIDOID,  TEXTOID, TEXTOID, JSONBOID, TEXTOID,
		                        TEXTOID, TEXTOID, TEXTOID, INT4OID,  JSONBOID};
		Datum insert_values[10] = {ObjectIdGetDatum(relid),
		                           CStringGetTextDatum(r.worker_column),
		                           CStringGetTextDatum(r.expires_column),
		                           JsonbPGetDatum(r.on_release),
		                           CStringGetTextDatum(name),
		                           r.token_column ? CStringGetTextDatum(r.token_column) : (Datum)0,
		                           r.attempts_column ? CStringGetTextDatum(r.attempts_column) : (Datum)0,
		                           r.order_column ? CStringGetTextDatum(r.order_column) : (Datum)0,
		                           Int32GetDatum(r.max_attempts),
		                           r.on_exhausted ? JsonbPGetDatum(r.on_exhausted) : (Datum)0};
		char insert_nulls[11] = "          ";
		insert_nulls[5] = r.token_column ? ' ' : 'n';
		insert_nulls[6] = r.attempts_column ? ' ' : 'n';
		insert_nulls[7] = r.order_column ? ' ' : 'n';
		insert_nulls[8] = r.max_attempts > 0 ? ' ' : 'n';
		insert_nulls[9] = r.on_exhausted ? ' ' : 'n';
		char *insert_sql = psprintf(
		    "INSERT INTO %s (table_name, worker_column, expires_column, on_release, registered_as, token_column, "
		    "attempts_column, order_column, max_attempts, on_exhausted) "
		    "VALUES ($1::pg_catalog.regclass, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
		    catalog::Qualified(ext, "lease_tables"));
		spi::Run(spi::Plan(insert_sql, 10, insert_types), insert_values, insert_nulls, false);
	}
	SetUserIdAndSecContext(saved_user, saved_context);

	for (auto [attnum, column] : {std::pair<AttrNumber, const char *>{worker_attnum, r.worker_column},
	                              {expires_attnum, r.expires_column},
	                              {token_attnum, r.token_column}})
		if (attnum != InvalidAttrNumber && !HasIndexLedBy(relid, attnum))
			ereport(NOTICE, (errmsg("table %s has no index on column \"%s\"", name, column),
			                 errdetail(attnum == token_attnum ? "Every extend, complete, fail and check will scan "
			                                                    "the whole table."
			                                                  : "Every reaping pass will scan the whole table."),
			                 errhint("CREATE INDEX ON %s (%s);", name, quote_identifier(column))));
	// Every statement names the table ONLY (Table::relation): say so to whoever
	// expects a parent to cover its children, as a query on it would.
	if (find_inheritance_children(relid, NoLock) != NIL)
		ereport(NOTICE, (errmsg("table %s has inheritance children", name),
		                 errdetail("Leases are claimed, released and reaped in the rows of %s itself, never in "
		                           "those of its children.",
		                           name),
		                 errhint("Register each child table that holds leases as well.")));
	if (r.token_column && strlen(QueueChannel(relid)) >= NAMEDATALEN)
		ereport(NOTICE, (errmsg("the name of table %s is too long for its NOTIFY channel", name),
		                 errdetail("Channel names are limited to %d bytes: nothing is sent on \"%s\".", NAMEDATALEN - 1,
		                           QueueChannel(relid))));
}

const Table *FindTable(const catalog::Extension &ext, Oid relid)
{
	// lease_tables is ours: read it as its owner, whoever calls.
	Oid saved_user = InvalidOid;
	int saved_context = 0;
	GetUserIdAndSecContext(&saved_user, &saved_context);
	Oid owner = catalog::RelationOwner(LeaseTablesRelid(ext));
	if (owner != InvalidOid)
		SetUserIdAndSecContext(owner, saved_context | SECURITY_LOCAL_USERID_CHANGE);
	int count = 0;
	Table *tables = LoadTables(ext, &count, relid);
	SetUserIdAndSecContext(saved_user, saved_context);
	return count > 0 ? &tables[0] : nullptr;
}

Assignment *ParseAssignments(Oid relid, Jsonb *object, const char *parameter, int *count)
{
	*count = 0;
	if (!JB_ROOT_IS_OBJECT(object))
		ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE), errmsg("%s must be a JSON object", parameter),
		                errhint("For example '{\"state\": \"pending\"}'.")));
	int capacity = JB_ROOT_COUNT(object);
	auto *list = static_cast<Assignment *>(palloc0(sizeof(Assignment) * (capacity > 0 ? capacity : 1)));
	JsonbIterator *it = JsonbIteratorInit(&object->root);
	JsonbValue value;
	JsonbIteratorToken token;
	const char *hint = psprintf("the keys of %s", parameter);
	while ((token = JsonbIteratorNext(&it, &value, true)) != WJB_DONE) {
		if (token != WJB_KEY)
			continue;
		char *column = pnstrdup(value.val.string.val, value.val.string.len);
		token = JsonbIteratorNext(&it, &value, true);
		AttrNumber attnum = RequireColumn(relid, column, hint);
		Assignment &a = list[(*count)++];
		a.column = quote_identifier(column);
		a.type = ColumnType(relid, attnum);
		a.type_oid = get_atttype(relid, attnum);
		a.value = JsonValueText(value);
	}
	return list;
}

void NotifyQueue(Oid relid, int count)
{
	const char *channel = QueueChannel(relid);
	if (!channel || strlen(channel) >= NAMEDATALEN)
		return;
	Async_Notify(channel, psprintf("{\"event\":\"leases_released\",\"count\":%d}", count));
}

bool Unregister(const catalog::Extension &ext, Oid relid)
{
	Oid types[1] = {OIDOID};
	Datum values[1] = {ObjectIdGetDatum(relid)};
	char *sql = psprintf("DELETE FROM %s WHERE table_name::pg_catalog.oid OPERATOR(pg_catalog.=) $1",
	                     catalog::Qualified(ext, "lease_tables"));
	spi::Run(spi::Plan(sql, 1, types), values, nullptr, false);
	return SPI_processed > 0;
}

ReleaseResult ReleaseLeases(const catalog::Extension &ext, const ReleaseOptions &unsorted, events::Batch *batch)
{
	ReleaseResult result{};
	if (unsorted.holder_count == 0 && !unsorted.expired)
		return result;
	ReleaseOptions options = unsorted;
	if (options.holder_count > 1) {
		auto *sorted = static_cast<Holder *>(palloc(sizeof(Holder) * options.holder_count));
		memcpy(sorted, unsorted.holders, sizeof(Holder) * options.holder_count);
		qsort(sorted, options.holder_count, sizeof(Holder), CompareHolders);
		options.holders = sorted;
	}
	int count = 0;
	const Table *tables = nullptr;
	const bool *expired = nullptr; // NULL: release every table
	Datum holders = HolderArray(options);
	if (holders == (Datum)0)
		expired = ProbeExpired(ext, &tables, &count);
	if (!expired)
		tables = LoadTables(ext, &count, InvalidOid);
	for (int i = 0; i < count; ++i) {
		const Table &t = tables[i];
		if (expired && t.exists && !expired[i])
			continue; // nobody to release, and no lease past its deadline
		if (!t.exists) {
			if (options.warn_each_call || FirstReportOfMissing(t.relid))
				ereport(options.warn_each_call ? WARNING : LOG,
				        (errcode(ERRCODE_UNDEFINED_TABLE),
				         errmsg("worker_heartbeat: registered table %s no longer exists; skipping it", t.label),
				         errhint("SELECT unregister_lease_table(%u);", t.relid)));
			result.tables_failed++;
			result.last_failure = psprintf("registered table %s no longer exists", t.label);
			continue;
		}
		if (t.unfit) {
			if (options.warn_each_call || FirstReportOfMissing(t.relid))
				ereport(
				    options.warn_each_call ? WARNING : LOG,
				    (errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				     errmsg("worker_heartbeat: skipped releasing leases in table %s: %s", t.label, t.unfit),
				     errhint("Change the table back, or unregister it: SELECT unregister_lease_table(%u);", t.relid)));
			result.tables_failed++;
			result.last_failure = psprintf("skipped releasing leases in table %s: %s", t.label, t.unfit);
			continue;
		}
		int skipped = 0;
		int released = ReleaseOneTable(t, holders, options, batch, &result.last_failure, &skipped);
		if (released < 0)
			result.tables_failed++;
		else
			result.released += released;
		if (skipped > 0) {
			// Rows another transaction held locked: counted as a table that
			// failed, so that the reaper retries with a full pass soon.
			result.skipped += skipped;
			if (released >= 0)
				result.tables_failed++;
		}
	}
	return result;
}

bool *HoldsAnyLease(const catalog::Extension &ext, Datum *worker_ids, int count)
{
	auto *holds = static_cast<bool *>(palloc0(sizeof(bool) * (count > 0 ? count : 1)));
	if (count == 0)
		return holds;
	int table_count = 0;
	Table *tables = LoadTables(ext, &table_count, InvalidOid);
	Datum ids = PointerGetDatum(construct_array(worker_ids, count, TEXTOID, -1, false, TYPALIGN_INT));
	auto *id_strings = static_cast<char **>(palloc(sizeof(char *) * count));
	for (int k = 0; k < count; ++k)
		id_strings[k] = TextDatumGetCString(worker_ids[k]);
	Oid types[1] = {TEXTARRAYOID};
	for (int i = 0; i < table_count; ++i) {
		const Table &t = tables[i];
		if (!t.exists)
			continue;
		if (t.unfit) {
			// Cannot be read safely: nobody is removed while it is so.
			for (int k = 0; k < count; ++k)
				holds[k] = true;
			continue;
		}
		// The user's table is read as its owner, restricted, with a bounded
		// lock wait (casts of its worker column are the owner's code), in a
		// subtransaction of its own: a table that fails keeps every candidate.
		MemoryContext outer_context = CurrentMemoryContext;
		ResourceOwner outer_owner = CurrentResourceOwner;
		BeginInternalSubTransaction(nullptr);
		MemoryContextSwitchTo(outer_context);
		PG_TRY();
		{
			int nest = EnterPassSettings(true);
			AsRole(t.owner, SECURITY_RESTRICTED_OPERATION, [&]() {
				char *sql = psprintf("SELECT DISTINCT s.%s::pg_catalog.text FROM %s s "
				                     "WHERE s.%s::pg_catalog.text OPERATOR(pg_catalog.=) ANY ($1)",
				                     t.worker_column, t.relation, t.worker_column);
				Datum values[1] = {ids};
				spi::Run(spi::Plan(sql, 1, types, count > spi::kCustomPlanAbove), values, nullptr, true);
				for (uint64 row = 0; row < SPI_processed; ++row) {
					char *holder = spi::ColumnText(static_cast<int>(row), 1);
					for (int k = 0; holder && k < count; ++k)
						if (!holds[k] && strcmp(id_strings[k], holder) == 0)
							holds[k] = true;
				}
			});
			AtEOXact_GUC(true, nest);
			CommitSubtransaction(outer_context, outer_owner);
		}
		PG_CATCH();
		{
			ErrorData *error = AbandonSubtransaction(outer_context, outer_owner);
			ereport(LOG, (errcode(error->sqlerrcode),
			              errmsg("worker_heartbeat: could not check leases in table %s: %s", t.label, error->message),
			              errdetail("No stale worker is removed while its leases cannot be checked.")));
			FreeErrorData(error);
			for (int k = 0; k < count; ++k)
				holds[k] = true;
		}
		PG_END_TRY();
	}
	return holds;
}

} // namespace wh::leases
