#include "expiry_probe.hpp"

#include "compat.hpp"

#include "reaper_registry.hpp"
#include "spi_plans.hpp"

#include <cstring>

extern "C" {
#include "access/genam.h"
#include "access/heapam.h"
#include "access/relation.h"
#include "access/stratnum.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/pg_am_d.h"
#include "catalog/pg_index.h"
#include "commands/defrem.h"
#include "common/hashfn.h"
#include "catalog/pg_class.h"
#include "executor/tuptable.h"
#include "nodes/primnodes.h"
#include "postmaster/bgworker.h"
#include "storage/lmgr.h"
#include "utils/fmgroids.h"
#include "utils/guc.h"
#include "utils/inval.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/relcache.h"
#include "utils/resowner.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"
}

namespace wh::leases
{

namespace
{

// The registrations as last loaded, in a context of their own.
struct KeptTables {
	MemoryContext context;
	bool valid;
	uint64 invalidations; // counted even while reloading (see Reload)
	Oid lease_tables;     // the relid they were read from (a new extension: reload)
	Table *tables;
	int count;
	uint64 fingerprint; // of lease_tables' rows, taken before they were read
	Oid *expires_index; // per table: a btree on its expires column, InvalidOid: none
	const char **unfit; // per table: why it no longer qualifies (NULL: it does)
	bool all_indexed;   // every existing table that qualifies has one: the direct probe can run
	char **probe_sql;   // otherwise, per table, this statement (run as the table's owner)
};
KeptTables kept{};

void Forget()
{
	kept.valid = false;
	kept.invalidations++;
}

// Names, owners and column types are copied into Table: a change to a
// registered table (DROP, RENAME, ALTER ... OWNER / TYPE) or to lease_tables
// itself (ALTER EXTENSION UPDATE) sends a relcache invalidation for it.
void OnRelcacheInvalidation(Datum, Oid relid)
{
	if (relid == InvalidOid || relid == kept.lease_tables) {
		Forget();
		return;
	}
	for (int i = 0; i < kept.count; ++i)
		if (kept.tables[i].relid == relid)
			Forget();
}

// ALTER SCHEMA ... RENAME changes no relation, only the qualified names.
void OnNamespaceInvalidation(Datum, int, uint32)
{
	Forget();
}

// One statement per table, run as its owner: the comparison may run the
// owner's code (a cast, an operator), never as us.
char *BuildProbeSql(const Table &t)
{
	return psprintf("SELECT EXISTS (SELECT 1 FROM %s s WHERE s.%s OPERATOR(pg_catalog.<) pg_catalog.now())",
	                t.relation, t.expires_column);
}

// A hash of the (ctid, xmin) of every row of lease_tables, which the caller
// has locked: any INSERT, UPDATE or DELETE (a registration, a restore) changes
// it. False when the table is gone.
bool Fingerprint(Oid relid, uint64 *out)
{
	Relation rel = try_relation_open(relid, NoLock);
	if (!rel)
		return false;
	TableScanDesc scan = wh_table_beginscan(rel, GetActiveSnapshot(), 0, nullptr);
	uint64 hash = 0;
	uint64 rows = 0;
	HeapTuple tuple;
	while ((tuple = heap_getnext(scan, ForwardScanDirection)) != nullptr) {
		uint64 position = (static_cast<uint64>(ItemPointerGetBlockNumber(&tuple->t_self)) << 16) |
		                  ItemPointerGetOffsetNumber(&tuple->t_self);
		hash = hash_combine64(hash, position);
		hash = hash_combine64(hash, HeapTupleHeaderGetRawXmin(tuple->t_data));
		rows++;
	}
	table_endscan(scan);
	relation_close(rel, NoLock);
	*out = hash_combine64(hash, rows);
	return true;
}

// "WHERE expires IS NOT NULL", the partial index register_lease_table()'s
// users tend to create: it holds every row with a deadline. Read from
// pg_index.indpred as stored, never evaluated: RelationGetIndexPredicate()
// const-folds it, which runs the table owner's IMMUTABLE functions as us. Any
// other predicate makes the index unusable here.
bool PredicateKeepsAllDeadlines(Oid index_relid, AttrNumber expires)
{
	HeapTuple tuple = SearchSysCache1(INDEXRELID, ObjectIdGetDatum(index_relid));
	if (!HeapTupleIsValid(tuple))
		return false;
	bool isnull = true;
	Datum stored = SysCacheGetAttr(INDEXRELID, tuple, Anum_pg_index_indpred, &isnull);
	bool keeps = isnull;
	if (!isnull) {
		char *stored_text = TextDatumGetCString(stored);
		Node *predicate = static_cast<Node *>(stringToNode(stored_text));
		if (predicate && IsA(predicate, NullTest)) {
			auto *test = reinterpret_cast<NullTest *>(predicate);
			keeps = test->nulltesttype == IS_NOT_NULL && !test->argisrow && test->arg && IsA(test->arg, Var) &&
			        reinterpret_cast<Var *>(test->arg)->varattno == expires &&
			        reinterpret_cast<Var *>(test->arg)->varlevelsup == 0;
		}
		pfree(stored_text);
	}
	ReleaseSysCache(tuple);
	return keeps;
}

// A valid btree, ascending, on the expires column first, with the default
// timestamptz operators and no predicate that could hide an expired row: the
// direct probe reads its first entry below now().
Oid FindExpiresIndex(Oid relid, AttrNumber expires)
{
	if (expires == InvalidAttrNumber)
		return InvalidOid;
	Oid opfamily = get_opclass_family(GetDefaultOpClass(TIMESTAMPTZOID, BTREE_AM_OID));
	Relation rel = table_open(relid, AccessShareLock);
	List *indexes = RelationGetIndexList(rel);
	Oid found = InvalidOid;
	ListCell *cell;
	foreach (cell, indexes) {
		Relation index = index_open(lfirst_oid(cell), AccessShareLock);
		Form_pg_index form = index->rd_index;
		if (found == InvalidOid && index->rd_rel->relam == BTREE_AM_OID && form->indisvalid && form->indisready &&
		    form->indislive && form->indnkeyatts >= 1 && form->indkey.values[0] == expires &&
		    index->rd_opfamily[0] == opfamily && (index->rd_indoption[0] & INDOPTION_DESC) == 0 &&
		    PredicateKeepsAllDeadlines(RelationGetRelid(index), expires))
			found = RelationGetRelid(index);
		index_close(index, AccessShareLock);
	}
	list_free(indexes);
	table_close(rel, AccessShareLock);
	return found;
}

// A quoted identifier (quote_identifier) back to the name.
char *Unquote(const char *quoted)
{
	if (quoted[0] != '"')
		return pstrdup(quoted);
	StringInfoData name;
	initStringInfo(&name);
	for (const char *p = quoted + 1; *p; ++p) {
		if (*p == '"') {
			if (p[1] != '"')
				break;
			++p;
		}
		appendStringInfoChar(&name, *p);
	}
	return name.data;
}

Oid ColumnTypeOf(Oid relid, const char *quoted)
{
	if (!quoted)
		return InvalidOid;
	AttrNumber attnum = get_attnum(relid, Unquote(quoted));
	return attnum == InvalidAttrNumber ? InvalidOid : get_atttype(relid, attnum);
}

} // namespace

const char *Unfit(const Table &t)
{
	if (!t.exists)
		return nullptr; // reported as missing by the release
	// On PostgreSQL 15 CREATE RULE "_RETURN" turns an empty table into a view:
	// reading it would run the view's functions.
	if (get_rel_relkind(t.relid) != RELKIND_RELATION)
		return psprintf("registered table %s is no longer a plain table; skipping it", t.label);
	Oid expires = ColumnTypeOf(t.relid, t.expires_column);
	if (expires != TIMESTAMPTZOID)
		return psprintf("column %s of registered table %s is %s, not timestamp with time zone; skipping it",
		                t.expires_column, t.label, expires == InvalidOid ? "gone" : format_type_be(expires));
	Oid worker = ColumnTypeOf(t.relid, t.worker_column);
	Oid worker_base = worker == InvalidOid ? InvalidOid : getBaseType(worker);
	if (worker_base != TEXTOID && worker_base != VARCHAROID)
		return psprintf("column %s of registered table %s is %s, not text; skipping it", t.worker_column, t.label,
		                worker == InvalidOid ? "gone" : format_type_be(worker));
	if (t.token_column) {
		Oid token = ColumnTypeOf(t.relid, t.token_column);
		if (token != INT8OID)
			return psprintf("column %s of registered table %s is %s, not bigint; skipping it", t.token_column, t.label,
			                token == InvalidOid ? "gone" : format_type_be(token));
	}
	return nullptr;
}

namespace
{

const char *Keep(const char *text)
{
	return text ? MemoryContextStrdup(kept.context, text) : nullptr;
}

Assignment *KeepAssignments(const Assignment *list, int count)
{
	auto *copy = static_cast<Assignment *>(MemoryContextAllocZero(kept.context, sizeof(Assignment) * (count + 1)));
	for (int i = 0; i < count; ++i)
		copy[i] = Assignment{Keep(list[i].column), Keep(list[i].type), Keep(list[i].value), list[i].type_oid};
	return copy;
}

// LoadTables allocates in SPI's procedure context (every SPI call switches
// back to it), which ends with the pass: the registrations are copied out.
Table *KeepTables(const Table *tables, int count)
{
	auto *copy = static_cast<Table *>(MemoryContextAllocZero(kept.context, sizeof(Table) * (count + 1)));
	for (int i = 0; i < count; ++i) {
		Table &t = copy[i];
		t = tables[i];
		t.label = Keep(t.label);
		t.relation = Keep(t.relation);
		t.worker_column = Keep(t.worker_column);
		t.expires_column = Keep(t.expires_column);
		t.token_column = Keep(t.token_column);
		t.attempts_column = Keep(t.attempts_column);
		t.order_column = Keep(t.order_column);
		t.assignments = KeepAssignments(t.assignments, t.assignment_count);
		t.exhausted = KeepAssignments(t.exhausted, t.exhausted_count);
	}
	return copy;
}

void Reload(const catalog::Extension &ext, Oid lease_tables)
{
	if (!kept.context) {
		kept.context = AllocSetContextCreate(TopMemoryContext, "worker_heartbeat registrations", ALLOCSET_SMALL_SIZES);
		CacheRegisterRelcacheCallback(OnRelcacheInvalidation, (Datum)0);
		CacheRegisterSyscacheCallback(NAMESPACEOID, OnNamespaceInvalidation, (Datum)0);
	}
	kept.valid = false;
	MemoryContextReset(kept.context);
	kept.lease_tables = InvalidOid;
	kept.tables = nullptr;
	kept.count = 0;
	// An invalidation processed while loading (at any lock the statement
	// takes) may be about a name or owner already copied: then the result is
	// used for this pass only and loaded again at the next.
	uint64 invalidations = kept.invalidations;
	// The fingerprint before the rows: a change in between only costs
	// another reload at the next pass.
	LockRelationOid(lease_tables, AccessShareLock);
	uint64 fingerprint = 0;
	if (!Fingerprint(lease_tables, &fingerprint))
		return;
	int count = 0;
	Table *tables = LoadTables(ext, &count, InvalidOid);
	kept.tables = KeepTables(tables, count);
	kept.count = count;
	kept.fingerprint = fingerprint;
	kept.expires_index = static_cast<Oid *>(MemoryContextAllocZero(kept.context, sizeof(Oid) * (count + 1)));
	kept.unfit = static_cast<const char **>(MemoryContextAllocZero(kept.context, sizeof(char *) * (count + 1)));
	kept.probe_sql = static_cast<char **>(MemoryContextAllocZero(kept.context, sizeof(char *) * (count + 1)));
	kept.all_indexed = true;
	for (int i = 0; i < count; ++i) {
		const Table &t = kept.tables[i];
		if (!t.exists)
			continue;
		// Checked again at every reload: a column's type or the relation's
		// kind may have changed since registration.
		if (const char *why = Unfit(t)) {
			kept.unfit[i] = Keep(why);
			if (wh_am_background_worker())
				registry::SetLastError(MyDatabaseId, why); // reaper_status() shows it
			ereport(wh_am_background_worker() ? LOG : DEBUG1, (errmsg("worker_heartbeat: %s", why)));
			continue;
		}
		kept.expires_index[i] = FindExpiresIndex(t.relid, t.expires_attnum);
		kept.all_indexed = kept.all_indexed && kept.expires_index[i] != InvalidOid;
		kept.probe_sql[i] = MemoryContextStrdup(kept.context, BuildProbeSql(t));
	}
	kept.lease_tables = lease_tables;
	kept.valid = kept.invalidations == invalidations;
}

// The first row visible in this index whose deadline is below now()
// (later: at or after now()); *deadline is its deadline when asked for.
// 1 found, 0 none, -1 cannot tell without waiting for a lock (or the table is gone).
int FirstInIndex(Oid relid, Oid index_relid, TimestampTz now, bool later, AttrNumber expires, TimestampTz *deadline)
{
	if (!ConditionalLockRelationOid(relid, AccessShareLock))
		return -1;
	Relation rel = try_relation_open(relid, NoLock);
	if (!rel)
		return -1;
	if (!ConditionalLockRelationOid(index_relid, AccessShareLock)) {
		relation_close(rel, NoLock);
		return -1;
	}
	// REINDEX CONCURRENTLY swaps in a new index and marks this one dead: it
	// stops receiving entries (its table's invalidation reloads us next pass).
	Relation index = try_relation_open(index_relid, NoLock);
	if (!index || index->rd_rel->relkind != RELKIND_INDEX || !index->rd_index->indisvalid ||
	    !index->rd_index->indisready || !index->rd_index->indislive) {
		if (index)
			relation_close(index, NoLock);
		relation_close(rel, NoLock);
		return -1;
	}
	ScanKeyData key;
	if (later)
		ScanKeyInit(&key, 1, BTGreaterEqualStrategyNumber, F_TIMESTAMPTZ_GE, TimestampTzGetDatum(now));
	else
		ScanKeyInit(&key, 1, BTLessStrategyNumber, F_TIMESTAMPTZ_LT, TimestampTzGetDatum(now));
	IndexScanDesc scan = wh_index_beginscan(rel, index, GetActiveSnapshot(), 1, 0);
	index_rescan(scan, &key, 1, nullptr, 0);
	TupleTableSlot *slot = table_slot_create(rel, nullptr);
	bool found = index_getnext_slot(scan, ForwardScanDirection, slot);
	if (found && deadline) {
		bool isnull = true;
		Datum value = slot_getattr(slot, expires, &isnull);
		*deadline = isnull ? now : DatumGetTimestampTz(value); // a key >= now() is not NULL
	}
	ExecDropSingleTupleTableSlot(slot);
	index_endscan(scan);
	relation_close(index, NoLock);
	relation_close(rel, NoLock);
	return found ? 1 : 0;
}

// Is any row's deadline below now() in this index?
int ProbeIndex(Oid relid, Oid index_relid, TimestampTz now)
{
	return FirstInIndex(relid, index_relid, now, false, InvalidAttrNumber, nullptr);
}

// The registrations kept are those of lease_tables now (its fingerprint).
bool KeptCurrent()
{
	if (!kept.valid || !kept.all_indexed)
		return false;
	if (!ConditionalLockRelationOid(kept.lease_tables, AccessShareLock) || !kept.valid)
		return false; // taking a lock processes invalidations: look again
	uint64 fingerprint = 0;
	if (!Fingerprint(kept.lease_tables, &fingerprint))
		return false;
	if (fingerprint != kept.fingerprint) {
		Forget();
		return false;
	}
	return true;
}

// The idle pass's usual way: no statement, no subtransaction, no waiting
// (every lock is taken only if free). NULL when it cannot tell: the
// registrations changed, a lock is taken, a table has no usable index.
bool *ProbeDirect()
{
	if (!KeptCurrent())
		return nullptr;
	// now(), as the release statements see it.
	TimestampTz now = GetCurrentTransactionStartTimestamp();
	auto *expired = static_cast<bool *>(palloc0(sizeof(bool) * (kept.count + 1)));
	for (int i = 0; i < kept.count; ++i) {
		if (!kept.tables[i].exists || kept.unfit[i])
			continue;
		int found = ProbeIndex(kept.tables[i].relid, kept.expires_index[i], now);
		if (found < 0 || !kept.valid)
			return nullptr;
		expired[i] = found > 0;
	}
	return expired;
}

// Each table asked in SQL as its owner, under SECURITY_RESTRICTED_OPERATION
// (as VACUUM or REFRESH MATERIALIZED VIEW run the code of a table's owner):
// a cast or an operator on the expires column, the planner folding an index
// predicate, all run with the owner's rights, never ours. The caller's
// subtransaction has lock_timeout set.
void RunProbeStatements(bool *expired)
{
	Oid saved_user = InvalidOid;
	int saved_context = 0;
	GetUserIdAndSecContext(&saved_user, &saved_context);
	for (int i = 0; i < kept.count; ++i) {
		const Table &t = kept.tables[i];
		expired[i] = false;
		if (!t.exists || kept.unfit[i] || !kept.probe_sql[i])
			continue;
		SetUserIdAndSecContext(t.owner, saved_context | SECURITY_LOCAL_USERID_CHANGE | SECURITY_RESTRICTED_OPERATION);
		spi::Run(spi::Plan(kept.probe_sql[i], 0, nullptr), nullptr, nullptr, true);
		SetUserIdAndSecContext(saved_user, saved_context);
		bool isnull = true;
		Datum value = spi::Column(0, 1, &isnull);
		expired[i] = !isnull && DatumGetBool(value);
	}
}

// The registrations are still the ones kept (lease_tables locked, waiting
// at most lock_timeout).
bool StillCurrent(Oid lease_tables)
{
	if (!kept.valid || kept.lease_tables != lease_tables)
		return false;
	LockRelationOid(lease_tables, AccessShareLock);
	uint64 fingerprint = 0;
	return kept.valid && Fingerprint(lease_tables, &fingerprint) && fingerprint == kept.fingerprint;
}

} // namespace

const bool *ProbeExpired(const catalog::Extension &ext, const Table **tables, int *count)
{
	// The direct probe reads an indexed timestamptz with the built-in
	// operator (no user code runs; the index predicate is checked as stored,
	// never evaluated); row-level security never hides a row from a
	// superuser, so "no expired row" holds for the table's owner too. The SQL
	// probe runs as each table's owner.
	if (!superuser())
		return nullptr;
	Oid lease_tables = get_relname_relid("lease_tables", ext.schema);
	if (lease_tables == InvalidOid)
		return nullptr;
	if (kept.lease_tables == lease_tables) {
		if (bool *direct = ProbeDirect()) {
			*tables = kept.tables;
			*count = kept.count;
			return direct;
		}
	}
	// Load the registrations again if they changed (checking again that each
	// table still qualifies), and ask in SQL, each table as its owner, in a
	// subtransaction that waits for a lock at most pass_lock_timeout.
	MemoryContext outer_context = CurrentMemoryContext;
	ResourceOwner outer_owner = CurrentResourceOwner;
	bool *volatile expired = nullptr;
	BeginInternalSubTransaction(nullptr);
	MemoryContextSwitchTo(outer_context);
	PG_TRY();
	{
		int nest = EnterPassSettings(true); // the owner's casts and operators run under it
		if (!StillCurrent(lease_tables))
			Reload(ext, lease_tables);
		bool *result = nullptr;
		if (kept.lease_tables == lease_tables) { // loaded (lease_tables still exists)
			result = static_cast<bool *>(palloc0(sizeof(bool) * (kept.count + 1)));
			RunProbeStatements(result);
		}
		expired = result;
		AtEOXact_GUC(true, nest);
		CommitSubtransaction(outer_context, outer_owner);
	}
	PG_CATCH();
	{
		// Not worth a line in the log: the release statements that run
		// instead report what is wrong with a table.
		ErrorData *error = AbandonSubtransaction(outer_context, outer_owner);
		elog(DEBUG1, "worker_heartbeat: expiry probe failed, releasing every table: %s", error->message);
		FreeErrorData(error);
		Forget();
		expired = nullptr;
	}
	PG_END_TRY();
	*tables = kept.tables;
	*count = kept.count;
	return expired;
}

bool EarliestExpiry(const catalog::Extension &ext, TimestampTz *earliest)
{
	*earliest = core::DeathSchedule::kNever;
	if (!superuser())
		return false;
	Oid lease_tables = get_relname_relid("lease_tables", ext.schema);
	if (lease_tables == InvalidOid)
		return true; // no registered table, no lease
	if (kept.lease_tables != lease_tables || !kept.valid) {
		const Table *tables = nullptr;
		int count = 0;
		(void)ProbeExpired(ext, &tables, &count); // loads the registrations
	}
	if (kept.lease_tables != lease_tables || !KeptCurrent())
		return false;
	// Deadlines below now() were the pass's to release (a table it could
	// not release is retried by reaper.cpp); the next is the first from now().
	TimestampTz now = GetCurrentTransactionStartTimestamp();
	for (int i = 0; i < kept.count; ++i) {
		if (!kept.tables[i].exists || kept.unfit[i])
			continue;
		TimestampTz deadline = 0;
		int found = FirstInIndex(kept.tables[i].relid, kept.expires_index[i], now, true, kept.tables[i].expires_attnum,
		                         &deadline);
		if (found < 0 || !kept.valid)
			return false;
		if (found > 0 && deadline < *earliest)
			*earliest = deadline;
	}
	return true;
}

} // namespace wh::leases
