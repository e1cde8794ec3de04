#include "leases.hpp"

#include "settings.hpp"
#include "spi_plans.hpp"

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
#include "utils/syscache.h"
}

namespace wh::leases {

namespace {

struct Assignment {
	const char *column;      // quoted
	const char *type;        // format_type_with_typemod
	const char *value;       // text, NULL for SQL NULL
};

struct Table {
	Oid relid;
	bool exists;
	Oid owner;
	const char *label;          // current qualified name, or the name it was registered under
	const char *qualified;      // quoted schema.table
	const char *worker_column;  // quoted
	const char *expires_column; // quoted
	Assignment *assignments;
	int assignment_count;
};

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
	return format_type_with_typemod(type, typmod);
}

const char *QualifiedName(Oid relid)
{
	char *schema = get_namespace_name(get_rel_namespace(relid));
	char *name = get_rel_name(relid);
	if (!schema || !name)
		return nullptr;
	return quote_qualified_identifier(schema, name);
}

// Loads every registration, with its assignments, in one statement.
Table *LoadTables(const catalog::Extension &ext, int *count)
{
	char *sql = psprintf("SELECT l.table_name::pg_catalog.oid, l.worker_column::pg_catalog.text, "
	                     "l.expires_column::pg_catalog.text, l.registered_as, a.key, a.value OPERATOR(pg_catalog.#>>) '{}' "
	                     "FROM %s l LEFT JOIN LATERAL pg_catalog.jsonb_each(l.on_release) a ON true "
	                     "ORDER BY 1, a.key",
	                     catalog::Qualified(ext, "lease_tables"));
	spi::Run(spi::Plan(sql, 0, nullptr), nullptr, nullptr, true);
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
			t.qualified = current;
			t.worker_column = quote_identifier(spi::ColumnText(row, 2));
			t.expires_column = quote_identifier(spi::ColumnText(row, 3));
			t.assignments = static_cast<Assignment *>(palloc0(sizeof(Assignment) * rows));
		}
		Table &t = tables[n - 1];
		char *key = spi::ColumnText(row, 5);
		if (!key || !t.exists)
			continue;
		AttrNumber attnum = get_attnum(relid, key);
		Assignment &a = t.assignments[t.assignment_count++];
		a.column = quote_identifier(key);
		// A column dropped since registration makes the statement fail, and
		// the table is reported and skipped like any other failure.
		a.type = attnum == InvalidAttrNumber ? "pg_catalog.text" : ColumnType(relid, attnum);
		a.value = spi::ColumnText(row, 6);
	}
	*count = n;
	return tables;
}

// SET list shared by both release statements: parameters from $2 on.
char *ReleaseSetList(const Table &t)
{
	StringInfoData set;
	initStringInfo(&set);
	appendStringInfo(&set, "%s = NULL, %s = NULL", t.worker_column, t.expires_column);
	for (int i = 0; i < t.assignment_count; ++i)
		appendStringInfo(&set, ", %s = CAST($%d AS %s)", t.assignments[i].column, i + 2, t.assignments[i].type);
	return set.data;
}

char *ReleaseStatement(const Table &t, bool by_worker)
{
	const char *condition = by_worker
	                            ? psprintf("s.%s::pg_catalog.text OPERATOR(pg_catalog.=) ANY ($1)", t.worker_column)
	                            : psprintf("s.%s OPERATOR(pg_catalog.<) pg_catalog.now()", t.expires_column);
	return psprintf("WITH picked AS MATERIALIZED ("
	                " SELECT s.ctid AS row_ctid, s.%s::pg_catalog.text AS holder FROM %s s WHERE %s"
	                " FOR UPDATE OF s SKIP LOCKED),"
	                " released AS (UPDATE %s t SET %s"
	                " WHERE t.ctid OPERATOR(pg_catalog.=) ANY (ARRAY(SELECT row_ctid FROM picked)) RETURNING 1)"
	                " SELECT holder, pg_catalog.count(*)::pg_catalog.int4 FROM picked GROUP BY holder",
	                t.worker_column, t.qualified, condition, t.qualified, ReleaseSetList(t));
}

const Holder *FindHolder(const ReleaseOptions &options, const char *worker_id)
{
	for (int i = 0; worker_id && i < options.holder_count; ++i)
		if (strcmp(options.holders[i].worker_id, worker_id) == 0)
			return &options.holders[i];
	return nullptr;
}

int RunRelease(const Table &t, bool by_worker, Datum holders, const ReleaseOptions &options, events::Batch *batch)
{
	int nargs = 1 + t.assignment_count;
	auto *types = static_cast<Oid *>(palloc(sizeof(Oid) * nargs));
	auto *values = static_cast<Datum *>(palloc(sizeof(Datum) * nargs));
	auto *nulls = static_cast<char *>(palloc(nargs + 1));
	types[0] = TEXTARRAYOID;
	values[0] = holders;
	nulls[0] = holders == (Datum)0 ? 'n' : ' ';
	for (int i = 0; i < t.assignment_count; ++i) {
		types[i + 1] = TEXTOID;
		values[i + 1] = t.assignments[i].value ? CStringGetTextDatum(t.assignments[i].value) : (Datum)0;
		nulls[i + 1] = t.assignments[i].value ? ' ' : 'n';
	}
	nulls[nargs] = '\0';
	spi::Run(spi::Plan(ReleaseStatement(t, by_worker), nargs, types), values, nulls, false);
	int released = 0;
	for (uint64 row = 0; row < SPI_processed; ++row) {
		char *holder = spi::ColumnText(static_cast<int>(row), 1);
		bool isnull = false;
		int count = DatumGetInt32(spi::Column(static_cast<int>(row), 2, &isnull));
		released += count;
		if (!holder && !by_worker)
			continue; // an expired deadline on a row nobody held: cleared, not an event
		const Holder *h = FindHolder(options, holder);
		events::Event e{};
		e.event = "leases_released";
		e.worker_id = holder;
		e.table_name = t.label;
		e.released_count = count;
		e.silent_for_us = h ? h->silent_for_us : -1;
		e.latency_us = h ? h->latency_us : -1;
		e.reason = by_worker ? options.reason : "lease_expired";
		batch->Add(e);
	}
	return released;
}

// Releases one table inside a subtransaction, as its owner. Returns -1 when
// the table failed (reported, rolled back, skipped).
int ReleaseOneTable(const Table &t, Datum holders, const ReleaseOptions &options, events::Batch *batch)
{
	MemoryContext outer_context = CurrentMemoryContext;
	ResourceOwner outer_owner = CurrentResourceOwner;
	volatile int released = 0;
	BeginInternalSubTransaction(nullptr);
	MemoryContextSwitchTo(outer_context);
	PG_TRY();
	{
		int nest = NewGUCNestLevel();
		char timeout[32];
		snprintf(timeout, sizeof timeout, "%dms", settings::pass_lock_timeout_ms);
		(void)set_config_option("lock_timeout", timeout, PGC_USERSET, PGC_S_SESSION, GUC_ACTION_SAVE, true, 0, false);
		(void)set_config_option("search_path", "pg_catalog, pg_temp", PGC_USERSET, PGC_S_SESSION, GUC_ACTION_SAVE,
		                        true, 0, false);
		Oid saved_user = InvalidOid;
		int saved_context = 0;
		GetUserIdAndSecContext(&saved_user, &saved_context);
		// Triggers on the user's table run as its owner, never as us.
		SetUserIdAndSecContext(t.owner,
		                       saved_context | SECURITY_LOCAL_USERID_CHANGE | SECURITY_RESTRICTED_OPERATION);
		int n = 0;
		if (holders != (Datum)0)
			n += RunRelease(t, true, holders, options, batch);
		if (options.expired)
			n += RunRelease(t, false, holders, options, batch);
		released = n;
		SetUserIdAndSecContext(saved_user, saved_context);
		AtEOXact_GUC(true, nest);
		ReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(outer_context);
		CurrentResourceOwner = outer_owner;
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(outer_context);
		ErrorData *error = CopyErrorData();
		FlushErrorState();
		RollbackAndReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(outer_context);
		CurrentResourceOwner = outer_owner;
		ereport(options.warn_each_call ? WARNING : LOG,
		        (errcode(error->sqlerrcode),
		         errmsg("worker_heartbeat: skipped releasing leases in table %s: %s", t.label, error->message),
		         error->detail ? errdetail_internal("%s", error->detail) : 0,
		         errhint("The next pass will try again.")));
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
	reported_missing = static_cast<Oid *>(
	    reported_missing ? repalloc(reported_missing, sizeof(Oid) * (reported_missing_count + 1))
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

void ErrorContextForAssignment(void *arg)
{
	errcontext("checking p_on_release for column \"%s\"", static_cast<const char *>(arg));
}

// The cast a release will apply, tried now: a value that does not cast is
// refused at registration rather than at every pass.
void CheckAssignment(Oid relid, const char *column, const char *value, AttrNumber attnum)
{
	Oid type = InvalidOid;
	int32 typmod = -1;
	Oid collation = InvalidOid;
	get_atttypetypmodcoll(relid, attnum, &type, &typmod, &collation);
	ErrorContextCallback callback;
	callback.callback = ErrorContextForAssignment;
	callback.arg = const_cast<char *>(column);
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
			                errmsg("p_on_release sets column \"%s\" to null, but it is NOT NULL", column)));
	}
	error_context_stack = callback.previous;
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
		                errmsg("column \"%s\" of table %s has type %s, not timestamp with time zone",
		                       r.expires_column, name, format_type_be(get_atttype(relid, expires_attnum))),
		                errhint("The expires column holds the lease deadline: use timestamptz.")));
	if (worker_attnum == expires_attnum)
		ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE),
		                errmsg("the worker column and the expires column must differ")));

	// p_on_release: an object of column -> value, each value castable now.
	JsonbIterator *it = JsonbIteratorInit(&r.on_release->root);
	JsonbValue value;
	JsonbIteratorToken token = JsonbIteratorNext(&it, &value, false);
	if (token != WJB_BEGIN_OBJECT)
		ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE), errmsg("p_on_release must be a JSON object"),
		                errhint("For example '{\"state\": \"pending\"}'.")));
	while ((token = JsonbIteratorNext(&it, &value, true)) != WJB_DONE) {
		if (token != WJB_KEY)
			continue;
		char *column = pnstrdup(value.val.string.val, value.val.string.len);
		token = JsonbIteratorNext(&it, &value, true);
		AttrNumber attnum = RequireColumn(relid, column, "the keys of p_on_release");
		if (attnum == worker_attnum || attnum == expires_attnum)
			ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			                errmsg("p_on_release cannot assign column \"%s\"", column),
			                errdetail("Releasing a lease always sets the worker and expires columns to NULL.")));
		const char *text = nullptr;
		switch (value.type) {
		case jbvNull:
			break;
		case jbvString:
			text = pnstrdup(value.val.string.val, value.val.string.len);
			break;
		case jbvNumeric:
			text = DatumGetCString(DirectFunctionCall1(numeric_out, NumericGetDatum(value.val.numeric)));
			break;
		case jbvBool:
			text = value.val.boolean ? "true" : "false";
			break;
		default:
			text = JsonbToCString(nullptr, value.val.binary.data, value.val.binary.len);
			break;
		}
		CheckAssignment(relid, column, text, attnum);
	}

	Oid check_types[1] = {OIDOID};
	Datum check_values[1] = {ObjectIdGetDatum(relid)};
	char *exists_sql = psprintf("SELECT 1 FROM %s WHERE table_name OPERATOR(pg_catalog.=) $1::pg_catalog.regclass",
	                            catalog::Qualified(ext, "lease_tables"));
	spi::Run(spi::Plan(exists_sql, 1, check_types), check_values, nullptr, true);
	if (SPI_processed > 0)
		ereport(ERROR, (errcode(ERRCODE_DUPLICATE_OBJECT), errmsg("table %s is already registered", name),
		                errhint("Call unregister_lease_table() first to change its registration.")));

	Oid insert_types[5] = {OIDOID, TEXTOID, TEXTOID, JSONBOID, TEXTOID};
	Datum insert_values[5] = {ObjectIdGetDatum(relid), CStringGetTextDatum(r.worker_column),
	                          CStringGetTextDatum(r.expires_column), JsonbPGetDatum(r.on_release),
	                          CStringGetTextDatum(name)};
	char *insert_sql = psprintf("INSERT INTO %s (table_name, worker_column, expires_column, on_release, registered_as) "
	                            "VALUES ($1::pg_catalog.regclass, $2, $3, $4, $5)",
	                            catalog::Qualified(ext, "lease_tables"));
	spi::Run(spi::Plan(insert_sql, 5, insert_types), insert_values, nullptr, false);

	for (auto [attnum, column] : {std::pair<AttrNumber, const char *>{worker_attnum, r.worker_column},
	                              {expires_attnum, r.expires_column}})
		if (!HasIndexLedBy(relid, attnum))
			ereport(NOTICE, (errmsg("table %s has no index on column \"%s\"", name, column),
			                 errdetail("Every reaping pass will scan the whole table."),
			                 errhint("CREATE INDEX ON %s (%s);", name, quote_identifier(column))));
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

ReleaseResult ReleaseLeases(const catalog::Extension &ext, const ReleaseOptions &options, events::Batch *batch)
{
	ReleaseResult result{0, 0};
	if (options.holder_count == 0 && !options.expired)
		return result;
	int count = 0;
	Table *tables = LoadTables(ext, &count);
	Datum holders = HolderArray(options);
	for (int i = 0; i < count; ++i) {
		const Table &t = tables[i];
		if (!t.exists) {
			if (options.warn_each_call || FirstReportOfMissing(t.relid))
				ereport(options.warn_each_call ? WARNING : LOG,
				        (errcode(ERRCODE_UNDEFINED_TABLE),
				         errmsg("worker_heartbeat: registered table %s no longer exists; skipping it", t.label),
				         errhint("SELECT unregister_lease_table(%u);", t.relid)));
			result.tables_failed++;
			continue;
		}
		int released = ReleaseOneTable(t, holders, options, batch);
		if (released < 0)
			result.tables_failed++;
		else
			result.released += released;
	}
	return result;
}

bool *HoldsAnyLease(const catalog::Extension &ext, Datum *worker_ids, int count)
{
	auto *holds = static_cast<bool *>(palloc0(sizeof(bool) * (count > 0 ? count : 1)));
	if (count == 0)
		return holds;
	int table_count = 0;
	Table *tables = LoadTables(ext, &table_count);
	Datum ids = PointerGetDatum(construct_array(worker_ids, count, TEXTOID, -1, false, TYPALIGN_INT));
	Oid types[1] = {TEXTARRAYOID};
	for (int i = 0; i < table_count; ++i) {
		const Table &t = tables[i];
		if (!t.exists)
			continue;
		char *sql = psprintf("SELECT DISTINCT s.%s::pg_catalog.text FROM %s s "
		                     "WHERE s.%s::pg_catalog.text OPERATOR(pg_catalog.=) ANY ($1)",
		                     t.worker_column, t.qualified, t.worker_column);
		Datum values[1] = {ids};
		spi::Run(spi::Plan(sql, 1, types), values, nullptr, true);
		for (uint64 row = 0; row < SPI_processed; ++row) {
			char *holder = spi::ColumnText(static_cast<int>(row), 1);
			for (int k = 0; holder && k < count; ++k)
				if (!holds[k] && strcmp(TextDatumGetCString(worker_ids[k]), holder) == 0)
					holds[k] = true;
		}
	}
	return holds;
}

} // namespace wh::leases
