#include "lease_fencing.hpp"

#include "boundary.hpp"
#include "catalog.hpp"
#include "directives.hpp"
#include "events.hpp"
#include "lease_checkpoints.hpp"
#include "leases.hpp"
#include "reaper_registry.hpp"
#include "spi_plans.hpp"

#include <cstring>

extern "C" {
#include "access/table.h"
#include "catalog/pg_index.h"
#include "catalog/pg_operator.h"
#include "catalog/namespace.h"
#include "utils/guc.h"
#include "utils/varlena.h"
#include "utils/rel.h"
#include "utils/syscache.h"
#include "utils/tuplestore.h"
#include "utils/typcache.h"

PG_FUNCTION_INFO_V1(wh_claim_leases);
PG_FUNCTION_INFO_V1(wh_claim_leases_by_name);
PG_FUNCTION_INFO_V1(wh_extend_lease);
PG_FUNCTION_INFO_V1(wh_complete_lease);
PG_FUNCTION_INFO_V1(wh_fail_lease);
PG_FUNCTION_INFO_V1(wh_check_lease);
}

namespace
{

using wh::leases::Assignment;
using wh::leases::Table;

constexpr int kMaxWorkerIdBytes = 200;

void ConnectSpi()
{
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "worker_heartbeat: SPI_connect failed");
}

void RequireNotNull(FunctionCallInfo fcinfo, int n, const char *what)
{
	if (PG_ARGISNULL(n))
		ereport(ERROR, (errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED), errmsg("%s must not be null", what)));
}

Oid RegclassArg(FunctionCallInfo fcinfo)
{
	RequireNotNull(fcinfo, 0, "p_table");
	return PG_GETARG_OID(0);
}

int64 TokenArg(FunctionCallInfo fcinfo)
{
	RequireNotNull(fcinfo, 1, "p_token");
	return PG_GETARG_INT64(1);
}

Jsonb *OptionalJsonb(FunctionCallInfo fcinfo, int n)
{
	return PG_ARGISNULL(n) ? nullptr : PG_GETARG_JSONB_P(n);
}

} // namespace

// Shared with the checkpoint functions (lease_checkpoints.cpp).
namespace wh::fencing
{

using wh::leases::Table;

Datum LeaseArg(FunctionCallInfo fcinfo, int n)
{
	RequireNotNull(fcinfo, n, "p_lease");
	Datum lease = PG_GETARG_DATUM(n);
	auto *zero = static_cast<Interval *>(palloc0(sizeof(Interval)));
	if (!DatumGetBool(DirectFunctionCall2(interval_gt, lease, PointerGetDatum(zero))))
		ereport(ERROR,
		        (errcode(ERRCODE_INVALID_PARAMETER_VALUE),
		         errmsg("p_lease must be positive, not %s", DatumGetCString(DirectFunctionCall1(interval_out, lease))),
		         errhint("For example '30 seconds'.")));
	return lease;
}

// The registration of relid, which must have a token column.
const Table *RequireFencedTable(const wh::catalog::Extension &ext, Oid relid)
{
	if (wh::catalog::RelationOwner(relid) == InvalidOid)
		ereport(ERROR, (errcode(ERRCODE_UNDEFINED_TABLE), errmsg("table with OID %u does not exist", relid)));
	const Table *t = wh::leases::FindTable(ext, relid);
	const char *name = quote_qualified_identifier(get_namespace_name(get_rel_namespace(relid)), get_rel_name(relid));
	if (!t)
		ereport(ERROR, (errcode(ERRCODE_UNDEFINED_OBJECT), errmsg("table %s is not registered", name),
		                errhint("Register it with register_lease_table(..., p_token_column => 'lease_token').")));
	if (!t->token_column)
		ereport(ERROR, (errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
		                errmsg("table %s is registered without a token column", t->label),
		                errhint("Fenced leases need one: unregister_lease_table() it, then register it again with "
		                        "p_token_column.")));
	if (t->unfit)
		ereport(ERROR, (errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
		                errmsg("table %s no longer qualifies for leases: %s", t->label, t->unfit),
		                errhint("Change the table back, or unregister it and register it again.")));
	return t;
}

[[noreturn]] void StaleToken(const Table &t, int64 token)
{
	ereport(ERROR,
	        (errcode(WH_ERRCODE_STALE_LEASE_TOKEN),
	         errmsg("lease token %lld of table %s is stale", static_cast<long long>(token), t.label),
	         errdetail("No row holds a lease with this token: it was released, completed or claimed again since."),
	         errhint("Stop working on this row (another worker may own it now); claim again with claim_leases().")));
	pg_unreachable();
}

} // namespace wh::fencing

namespace
{

using wh::fencing::LeaseArg;
using wh::fencing::RequireFencedTable;
using wh::fencing::StaleToken;

// p_set may not touch the columns the fencing functions keep.
void RefuseManaged(const Table &t, const Assignment *list, int count, const char *parameter)
{
	const char *managed[4] = {t.worker_column, t.expires_column, t.token_column, t.attempts_column};
	for (int i = 0; i < count; ++i)
		for (const char *column : managed)
			if (column && strcmp(list[i].column, column) == 0)
				ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				                errmsg("%s cannot assign column %s", parameter, list[i].column),
				                errdetail("The worker, expires, token and attempts columns are kept by the lease "
				                          "functions.")));
}

Assignment *OptionalAssignments(const Table &t, Jsonb *object, const char *parameter, int *count)
{
	*count = 0;
	if (!object)
		return nullptr;
	return wh::leases::ParseAssignments(t.relid, object, parameter, count);
}

// ", col = CAST($n AS type)" for each assignment, parameters from first on.
void AppendAssignments(StringInfo buf, const Assignment *list, int count, int first)
{
	for (int i = 0; i < count; ++i)
		appendStringInfo(buf, ", %s = CAST($%d AS %s)", list[i].column, first + i, list[i].type);
}

void FillParams(const Assignment *list, int count, Oid *types, Datum *values, char *nulls)
{
	for (int i = 0; i < count; ++i) {
		types[i] = TEXTOID;
		values[i] = list[i].value ? CStringGetTextDatum(list[i].value) : (Datum)0;
		nulls[i] = list[i].value ? ' ' : 'n';
	}
}

// 1.3: completing a lease clears its checkpoint (the work is done; a row
// queued again later starts afresh), unless p_set assigns the column. A
// checkpoint column that was dropped since is left alone.
void ClearCheckpoint(StringInfo buf, const wh::catalog::Extension &ext, const Table &t, const Assignment *set,
                     int set_count)
{
	const char *unfit = nullptr;
	const char *column = wh::checkpoints::Column(ext, t.relid, &unfit);
	if (!column || unfit)
		return;
	const char *quoted = quote_identifier(column);
	for (int i = 0; i < set_count; ++i)
		if (strcmp(set[i].column, quoted) == 0)
			return;
	appendStringInfo(buf, ", %s = NULL", quoted);
}

// OPERATOR(schema.=) of the column's type (its default equality, wherever it lives).
const char *EqualityOperator(const Assignment &a)
{
	TypeCacheEntry *entry = lookup_type_cache(a.type_oid, TYPECACHE_EQ_OPR);
	HeapTuple tuple = OidIsValid(entry->eq_opr) ? SearchSysCache1(OPEROID, ObjectIdGetDatum(entry->eq_opr)) : nullptr;
	if (!HeapTupleIsValid(tuple))
		ereport(ERROR, (errcode(ERRCODE_UNDEFINED_FUNCTION),
		                errmsg("p_filter cannot compare column %s: type %s has no equality operator", a.column,
		                       format_type_be(a.type_oid)),
		                errhint("Filter on another column (claim_leases compares with =).")));
	auto *form = reinterpret_cast<Form_pg_operator>(GETSTRUCT(tuple));
	const char *op =
	    psprintf("OPERATOR(%s.%s)", quote_identifier(get_namespace_name(form->oprnamespace)), NameStr(form->oprname));
	ReleaseSysCache(tuple);
	return op;
}

// "ORDER BY s.order, s.pk..." (oldest first), or "" when the table has neither.
const char *ClaimOrder(const Table &t)
{
	StringInfoData order;
	initStringInfo(&order);
	if (t.order_column)
		appendStringInfo(&order, "s.%s", t.order_column);
	Relation rel = table_open(t.relid, AccessShareLock);
	List *indexes = RelationGetIndexList(rel);
	ListCell *cell;
	foreach (cell, indexes) {
		HeapTuple tuple = SearchSysCache1(INDEXRELID, ObjectIdGetDatum(lfirst_oid(cell)));
		if (!HeapTupleIsValid(tuple))
			continue;
		auto *index = reinterpret_cast<Form_pg_index>(GETSTRUCT(tuple));
		if (index->indisprimary)
			for (int k = 0; k < index->indnkeyatts; ++k) {
				char *column = get_attname(t.relid, index->indkey.values[k], true);
				if (column)
					appendStringInfo(&order, "%ss.%s", order.len > 0 ? ", " : "", quote_identifier(column));
			}
		ReleaseSysCache(tuple);
	}
	list_free(indexes);
	table_close(rel, AccessShareLock);
	return order.len > 0 ? psprintf(" ORDER BY %s", order.data) : "";
}

// An alias for the claimed row that no column of the table shadows.
const char *RowAlias(Oid relid)
{
	const char *alias = "wh_claimed";
	for (int i = 0; get_attnum(relid, alias) != InvalidAttrNumber; ++i)
		alias = psprintf("wh_claimed_%d", i);
	return alias;
}

// A new lease token: 62 random bits with bit 62 set, so every token is in
// [2^62, 2^63): never a small number that a row id (or a count, or a
// sequence value) could be mistaken for, and a wrong number is refused with
// WH001 with overwhelming probability.
int64 RandomToken()
{
	uint64 bits = 0;
	if (!pg_strong_random(&bits, sizeof bits))
		ereport(ERROR, (errcode(ERRCODE_SYSTEM_ERROR), errmsg("could not generate a random lease token")));
	return static_cast<int64>((bits & UINT64CONST(0x3FFFFFFFFFFFFFFF)) | UINT64CONST(0x4000000000000000));
}

int CompareInt64(const void *a, const void *b)
{
	int64 x = *static_cast<const int64 *>(a);
	int64 y = *static_cast<const int64 *>(b);
	return x < y ? -1 : x > y ? 1 : 0;
}

// n new tokens, distinct from each other and from every token the table
// holds now (a collision is astronomically rare; it is checked anyway).
Datum *NewTokens(const Table &t, int n)
{
	auto *tokens = static_cast<int64 *>(palloc(sizeof(int64) * n));
	auto *datums = static_cast<Datum *>(palloc(sizeof(Datum) * n));
	for (int i = 0; i < n; ++i)
		tokens[i] = RandomToken();
	char *sql = psprintf("SELECT s.%s FROM %s s WHERE s.%s OPERATOR(pg_catalog.=) ANY ($1)", t.token_column,
	                     t.relation, t.token_column);
	Oid types[1] = {INT8ARRAYOID};
	for (int attempt = 0;; ++attempt) {
		if (attempt == 8)
			ereport(ERROR, (errcode(ERRCODE_SYSTEM_ERROR), errmsg("could not generate unique lease tokens")));
		bool changed = false;
		auto *sorted = static_cast<int64 *>(palloc(sizeof(int64) * n));
		memcpy(sorted, tokens, sizeof(int64) * n);
		qsort(sorted, n, sizeof(int64), CompareInt64);
		for (int i = 1; i < n; ++i)
			if (sorted[i] == sorted[i - 1])
				for (int k = 0; k < n; ++k)
					if (tokens[k] == sorted[i]) {
						tokens[k] = RandomToken();
						changed = true;
						break;
					}
		for (int i = 0; i < n; ++i)
			datums[i] = Int64GetDatum(tokens[i]);
		Datum values[1] = {PointerGetDatum(construct_array(datums, n, INT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE))};
		wh::spi::Run(wh::spi::Plan(sql, 1, types), values, nullptr, false);
		for (uint64 row = 0; row < SPI_processed; ++row) {
			bool isnull = false;
			int64 taken = DatumGetInt64(wh::spi::Column(static_cast<int>(row), 1, &isnull));
			for (int k = 0; !isnull && k < n; ++k)
				if (tokens[k] == taken) {
					tokens[k] = RandomToken();
					changed = true;
				}
		}
		if (!changed)
			return datums;
	}
}

// Runs fn as the owner of the extension's tables (for its own objects only).
template <typename Fn> void AsExtensionOwner(const wh::catalog::Extension &ext, Fn fn)
{
	Oid saved_user = InvalidOid;
	int saved_context = 0;
	GetUserIdAndSecContext(&saved_user, &saved_context);
	Oid owner = wh::catalog::RelationOwner(get_relname_relid("worker_events", ext.schema));
	if (owner != InvalidOid)
		SetUserIdAndSecContext(owner, saved_context | SECURITY_LOCAL_USERID_CHANGE);
	fn();
	// An error above leaves through the (sub)transaction abort, which restores the user.
	SetUserIdAndSecContext(saved_user, saved_context);
}

// Locks the row that holds the lease (FOR UPDATE or FOR NO KEY UPDATE) and
// returns the number of rows found (0: stale). Columns: ctid, holder,
// exhausted (this was the last attempt).
uint64 LockLease(const Table &t, int64 token, const char *strength)
{
	bool exhaust = t.attempts_column && t.max_attempts > 0;
	char *sql =
	    psprintf("SELECT s.ctid, s.%s::pg_catalog.text, %s FROM %s s "
	             "WHERE s.%s OPERATOR(pg_catalog.=) $1 AND s.%s IS NOT NULL FOR %s OF s",
	             t.worker_column,
	             exhaust ? psprintf("COALESCE(s.%s OPERATOR(pg_catalog.>=) $2, false)", t.attempts_column) : "false",
	             t.relation, t.token_column, t.worker_column, strength);
	Oid types[2] = {INT8OID, INT4OID};
	Datum values[2] = {Int64GetDatum(token), Int32GetDatum(t.max_attempts)};
	wh::spi::Run(wh::spi::Plan(sql, exhaust ? 2 : 1, types), values, nullptr, false);
	return SPI_processed;
}

// The bodies of the SQL-callable functions, each run through WH_GUARDED below.

// claim_leases(NULL::table, ...) returns rows of the table's type (argtype);
// claim_leases('table', ...) returns them as jsonb (argtype InvalidOid).
Datum ClaimLeases(FunctionCallInfo fcinfo, Oid relid, Oid argtype)
{
	{
		bool as_jsonb = argtype == InvalidOid;
		RequireNotNull(fcinfo, 1, "p_worker_id");
		text *worker = PG_GETARG_TEXT_PP(1);
		int worker_len = VARSIZE_ANY_EXHDR(worker);
		if (worker_len == 0)
			ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE), errmsg("p_worker_id must not be empty")));
		if (worker_len > kMaxWorkerIdBytes)
			ereport(ERROR, (errcode(ERRCODE_STRING_DATA_RIGHT_TRUNCATION),
			                errmsg("p_worker_id is %d bytes long; the limit is %d", worker_len, kMaxWorkerIdBytes)));
		RequireNotNull(fcinfo, 2, "p_limit");
		int32 limit = PG_GETARG_INT32(2);
		if (limit <= 0)
			ereport(ERROR,
			        (errcode(ERRCODE_INVALID_PARAMETER_VALUE), errmsg("p_limit must be positive, not %d", limit)));
		Datum lease = LeaseArg(fcinfo, 3);
		Jsonb *filter_json = OptionalJsonb(fcinfo, 4);
		Jsonb *set_json = OptionalJsonb(fcinfo, 5);
		wh::catalog::Extension ext = wh::catalog::RequireExtension();
		// Checks the call context and the row type before any work.
		InitMaterializedSRF(fcinfo, as_jsonb ? MAT_SRF_USE_EXPECTED_DESC : 0);
		auto *rsinfo = reinterpret_cast<ReturnSetInfo *>(fcinfo->resultinfo);
		ConnectSpi();
		const Table *t = RequireFencedTable(ext, relid);
		int filter_count = 0;
		int set_count = 0;
		Assignment *filter = OptionalAssignments(*t, filter_json, "p_filter", &filter_count);
		Assignment *set = OptionalAssignments(*t, set_json, "p_set", &set_count);
		RefuseManaged(*t, set, set_count, "p_set");
		// 1.3 (issue 16): nothing for a draining or paused worker.
		if (wh::directives::RefusesClaims(ext, worker)) {
			SPI_finish();
			return (Datum)0;
		}

		// 1. Pick and lock free rows, oldest first, skipping rows others hold locked.
		StringInfoData pick;
		initStringInfo(&pick);
		appendStringInfo(&pick, "SELECT s.ctid FROM %s s WHERE s.%s IS NULL", t->relation, t->worker_column);
		for (int i = 0; i < filter_count; ++i)
			if (filter[i].value)
				appendStringInfo(&pick, " AND s.%s %s CAST($%d AS %s)", filter[i].column, EqualityOperator(filter[i]),
				                 i + 2, filter[i].type);
			else
				appendStringInfo(&pick, " AND s.%s IS NULL AND $%d IS NULL", filter[i].column, i + 2);
		appendStringInfo(&pick, "%s LIMIT $1 FOR UPDATE OF s SKIP LOCKED", ClaimOrder(*t));
		int pick_args = 1 + filter_count;
		auto *pick_types = static_cast<Oid *>(palloc(sizeof(Oid) * pick_args));
		auto *pick_values = static_cast<Datum *>(palloc(sizeof(Datum) * pick_args));
		auto *pick_nulls = static_cast<char *>(palloc(pick_args + 1));
		pick_types[0] = INT4OID;
		pick_values[0] = Int32GetDatum(limit);
		pick_nulls[0] = ' ';
		FillParams(filter, filter_count, pick_types + 1, pick_values + 1, pick_nulls + 1);
		pick_nulls[pick_args] = '\0';
		wh::spi::Run(wh::spi::Plan(pick.data, pick_args, pick_types), pick_values, pick_nulls, false);
		int n = static_cast<int>(SPI_processed);
		if (n == 0) {
			SPI_finish();
			return (Datum)0;
		}
		auto *ctids = static_cast<Datum *>(palloc(sizeof(Datum) * n));
		for (int i = 0; i < n; ++i) {
			bool isnull = false;
			auto *tid = static_cast<ItemPointer>(palloc(sizeof(ItemPointerData)));
			ItemPointerCopy(reinterpret_cast<ItemPointer>(DatumGetPointer(wh::spi::Column(i, 1, &isnull))), tid);
			ctids[i] = PointerGetDatum(tid);
		}
		Datum *tokens = NewTokens(*t, n);

		// 2. Lease them: worker, deadline, a new token each, attempts + 1, p_set.
		const char *alias = RowAlias(relid);
		StringInfoData claim;
		initStringInfo(&claim);
		appendStringInfo(&claim,
		                 "WITH claimed AS (UPDATE %s %s SET %s = $1, %s = pg_catalog.now() OPERATOR(pg_catalog.+) $2, "
		                 "%s = u.token",
		                 t->relation, alias, t->worker_column, t->expires_column, t->token_column);
		if (t->attempts_column)
			appendStringInfo(&claim, ", %s = COALESCE(%s.%s, 0) OPERATOR(pg_catalog.+) 1", t->attempts_column, alias,
			                 t->attempts_column);
		AppendAssignments(&claim, set, set_count, 5);
		appendStringInfo(&claim,
		                 " FROM ROWS FROM (pg_catalog.unnest($3), pg_catalog.unnest($4)) WITH ORDINALITY"
		                 " AS u(row_ctid, token, ord)"
		                 " WHERE %s.ctid OPERATOR(pg_catalog.=) u.row_ctid RETURNING %s, u.ord)"
		                 " SELECT %s FROM claimed c ORDER BY c.ord",
		                 alias, alias,
		                 as_jsonb ? psprintf("pg_catalog.to_jsonb(c.%s)", alias) : psprintf("c.%s", alias));
		int claim_args = 4 + set_count;
		auto *types = static_cast<Oid *>(palloc(sizeof(Oid) * claim_args));
		auto *values = static_cast<Datum *>(palloc(sizeof(Datum) * claim_args));
		auto *nulls = static_cast<char *>(palloc(claim_args + 1));
		types[0] = TEXTOID;
		values[0] = PointerGetDatum(worker);
		types[1] = INTERVALOID;
		values[1] = lease;
		types[2] = TIDARRAYOID;
		values[2] = PointerGetDatum(construct_array(ctids, n, TIDOID, sizeof(ItemPointerData), false, TYPALIGN_SHORT));
		types[3] = INT8ARRAYOID;
		values[3] = PointerGetDatum(construct_array(tokens, n, INT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
		memset(nulls, ' ', 4);
		FillParams(set, set_count, types + 4, values + 4, nulls + 4);
		nulls[claim_args] = '\0';
		wh::spi::Run(wh::spi::Plan(claim.data, claim_args, types), values, nulls, false);
		if (SPI_processed > 0) // at commit: a database served in rotation is visited when it expires
			wh::registry::LeaseHeldFor(MyDatabaseId, lease);
		if (as_jsonb) {
			for (uint64 row = 0; row < SPI_processed; ++row) {
				bool isnull = false;
				Datum value = wh::spi::Column(static_cast<int>(row), 1, &isnull);
				tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, &value, &isnull);
			}
			SPI_finish();
			return (Datum)0;
		}
		if (SPI_processed > 0 && SPI_gettypeid(SPI_tuptable->tupdesc, 1) != argtype)
			ereport(ERROR, (errcode(ERRCODE_DATATYPE_MISMATCH), errmsg("claimed rows have an unexpected type")));
		for (uint64 row = 0; row < SPI_processed; ++row) {
			bool isnull = false;
			Datum value = wh::spi::Column(static_cast<int>(row), 1, &isnull);
			if (isnull)
				continue;
			HeapTupleHeader header = DatumGetHeapTupleHeader(value);
			HeapTupleData tuple;
			tuple.t_len = HeapTupleHeaderGetDatumLength(header);
			ItemPointerSetInvalid(&tuple.t_self);
			tuple.t_tableOid = InvalidOid;
			tuple.t_data = header;
			tuplestore_puttuple(rsinfo->setResult, &tuple);
		}
		SPI_finish();
		return (Datum)0;
	}
}

Datum ExtendLease(FunctionCallInfo fcinfo)
{
	{
		Oid relid = RegclassArg(fcinfo);
		int64 token = TokenArg(fcinfo);
		Datum lease = LeaseArg(fcinfo, 2);
		wh::catalog::Extension ext = wh::catalog::RequireExtension();
		ConnectSpi();
		const Table *t = RequireFencedTable(ext, relid);
		char *sql = psprintf("UPDATE %s t SET %s = pg_catalog.now() OPERATOR(pg_catalog.+) $2 "
		                     "WHERE t.%s OPERATOR(pg_catalog.=) $1 AND t.%s IS NOT NULL RETURNING t.%s",
		                     t->relation, t->expires_column, t->token_column, t->worker_column, t->expires_column);
		Oid types[2] = {INT8OID, INTERVALOID};
		Datum values[2] = {Int64GetDatum(token), lease};
		wh::spi::Run(wh::spi::Plan(sql, 2, types), values, nullptr, false);
		if (SPI_processed == 0)
			StaleToken(*t, token);
		bool isnull = false;
		TimestampTz deadline = DatumGetTimestampTz(wh::spi::Column(0, 1, &isnull));
		wh::registry::LeaseHeldUntil(MyDatabaseId, deadline); // at commit (issue 18)
		SPI_finish();
		PG_RETURN_TIMESTAMPTZ(deadline);
	}
}

Datum CompleteLease(FunctionCallInfo fcinfo)
{
	{
		Oid relid = RegclassArg(fcinfo);
		int64 token = TokenArg(fcinfo);
		Jsonb *set_json = OptionalJsonb(fcinfo, 2);
		wh::catalog::Extension ext = wh::catalog::RequireExtension();
		ConnectSpi();
		const Table *t = RequireFencedTable(ext, relid);
		int set_count = 0;
		Assignment *set = OptionalAssignments(*t, set_json, "p_set", &set_count);
		RefuseManaged(*t, set, set_count, "p_set");
		StringInfoData sql;
		initStringInfo(&sql);
		// The token is cleared with the lease: it never becomes valid again.
		appendStringInfo(&sql, "UPDATE %s t SET %s = NULL, %s = NULL, %s = NULL", t->relation, t->worker_column,
		                 t->expires_column, t->token_column);
		AppendAssignments(&sql, set, set_count, 2);
		ClearCheckpoint(&sql, ext, *t, set, set_count);
		appendStringInfo(&sql, " WHERE t.%s OPERATOR(pg_catalog.=) $1 AND t.%s IS NOT NULL", t->token_column,
		                 t->worker_column);
		int nargs = 1 + set_count;
		auto *types = static_cast<Oid *>(palloc(sizeof(Oid) * nargs));
		auto *values = static_cast<Datum *>(palloc(sizeof(Datum) * nargs));
		auto *nulls = static_cast<char *>(palloc(nargs + 1));
		types[0] = INT8OID;
		values[0] = Int64GetDatum(token);
		nulls[0] = ' ';
		FillParams(set, set_count, types + 1, values + 1, nulls + 1);
		nulls[nargs] = '\0';
		wh::spi::Run(wh::spi::Plan(sql.data, nargs, types), values, nulls, false);
		if (SPI_processed == 0)
			StaleToken(*t, token);
		SPI_finish();
		PG_RETURN_VOID();
	}
}

Datum FailLease(FunctionCallInfo fcinfo)
{
	{
		Oid relid = RegclassArg(fcinfo);
		int64 token = TokenArg(fcinfo);
		Jsonb *set_json = OptionalJsonb(fcinfo, 2);
		wh::catalog::Extension ext = wh::catalog::RequireExtension();
		ConnectSpi();
		const Table *t = RequireFencedTable(ext, relid);
		int set_count = 0;
		Assignment *set = OptionalAssignments(*t, set_json, "p_set", &set_count);
		RefuseManaged(*t, set, set_count, "p_set");
		if (LockLease(*t, token, "UPDATE") == 0)
			StaleToken(*t, token);
		bool isnull = false;
		auto *ctid = static_cast<ItemPointer>(palloc(sizeof(ItemPointerData)));
		ItemPointerCopy(reinterpret_cast<ItemPointer>(DatumGetPointer(wh::spi::Column(0, 1, &isnull))), ctid);
		char *holder = wh::spi::ColumnText(0, 2);
		bool exhausted = DatumGetBool(wh::spi::Column(0, 3, &isnull));

		// Last attempt: on_exhausted wins over p_set; otherwise p_set wins over on_release.
		const Assignment *first = exhausted ? t->exhausted : set;
		int first_count = exhausted ? t->exhausted_count : set_count;
		const Assignment *second = exhausted ? set : t->assignments;
		int second_count = exhausted ? set_count : t->assignment_count;
		auto *merged = static_cast<Assignment *>(palloc(sizeof(Assignment) * (first_count + second_count + 1)));
		int count = 0;
		for (int i = 0; i < first_count; ++i)
			merged[count++] = first[i];
		for (int i = 0; i < second_count; ++i) {
			bool taken = false;
			for (int k = 0; k < first_count && !taken; ++k)
				taken = strcmp(first[k].column, second[i].column) == 0;
			if (!taken)
				merged[count++] = second[i];
		}
		StringInfoData sql;
		initStringInfo(&sql);
		// The token is cleared with the lease: it never becomes valid again.
		appendStringInfo(&sql, "UPDATE %s t SET %s = NULL, %s = NULL, %s = NULL", t->relation, t->worker_column,
		                 t->expires_column, t->token_column);
		AppendAssignments(&sql, merged, count, 2);
		appendStringInfoString(&sql, " WHERE t.ctid OPERATOR(pg_catalog.=) $1");
		int nargs = 1 + count;
		auto *types = static_cast<Oid *>(palloc(sizeof(Oid) * nargs));
		auto *values = static_cast<Datum *>(palloc(sizeof(Datum) * nargs));
		auto *nulls = static_cast<char *>(palloc(nargs + 1));
		types[0] = TIDOID;
		values[0] = PointerGetDatum(ctid);
		nulls[0] = ' ';
		FillParams(merged, count, types + 1, values + 1, nulls + 1);
		nulls[nargs] = '\0';
		wh::spi::Run(wh::spi::Plan(sql.data, nargs, types), values, nulls, false);

		if (exhausted) {
			wh::events::Batch *batch = wh::events::Batch::Create();
			wh::events::Event e{};
			e.event = "lease_exhausted";
			e.worker_id = holder;
			e.table_name = t->label;
			e.released_count = 1;
			e.silent_for_us = -1;
			e.latency_us = -1;
			e.reason = "failed";
			batch->Add(e);
			AsExtensionOwner(ext, [&]() { batch->Flush(ext, GetCurrentTimestamp()); });
		} else {
			wh::leases::NotifyQueue(relid, 1);
		}
		SPI_finish();
		PG_RETURN_BOOL(!exhausted);
	}
}

Datum CheckLease(FunctionCallInfo fcinfo)
{
	{
		Oid relid = RegclassArg(fcinfo);
		int64 token = TokenArg(fcinfo);
		wh::catalog::Extension ext = wh::catalog::RequireExtension();
		ConnectSpi();
		const Table *t = RequireFencedTable(ext, relid);
		// Holds the row until commit: no reaping pass can release it meanwhile.
		if (LockLease(*t, token, "NO KEY UPDATE") == 0)
			StaleToken(*t, token);
		SPI_finish();
		PG_RETURN_BOOL(true);
	}
}

} // namespace

extern "C" {

Datum wh_claim_leases(PG_FUNCTION_ARGS)
{
	WH_GUARDED({
		Oid argtype = get_fn_expr_argtype(fcinfo->flinfo, 0);
		Oid relid = argtype != InvalidOid ? get_typ_typrelid(argtype) : InvalidOid;
		if (relid == InvalidOid)
			ereport(ERROR, (errcode(ERRCODE_DATATYPE_MISMATCH),
			                errmsg("p_table must be a row of a registered table, not %s",
			                       argtype != InvalidOid ? format_type_be(argtype) : "unknown"),
			                errhint("Pass NULL cast to the table's row type: claim_leases(NULL::app.queue, "
			                        "'worker-1') returns rows of app.queue; or the table's name as text: "
			                        "claim_leases('app.queue', 'worker-1') returns them as jsonb.")));
		return ClaimLeases(fcinfo, relid, argtype);
	});
}

// claim_leases(p_table text, ...): the table by name, the rows as jsonb. The
// name is looked up under the function's search_path (pg_catalog, pg_temp),
// not the caller's: it must be schema-qualified ('app.jobs'), which the error
// for an unqualified name says.
Datum wh_claim_leases_by_name(PG_FUNCTION_ARGS)
{
	WH_GUARDED({
		RequireNotNull(fcinfo, 0, "p_table");
		char *given = text_to_cstring(PG_GETARG_TEXT_PP(0));
		List *names = textToQualifiedNameList(PG_GETARG_TEXT_PP(0));
		RangeVar *range = makeRangeVarFromNameList(names);
		Oid relid = RangeVarGetRelid(range, NoLock, true);
		if (relid == InvalidOid)
			ereport(ERROR, (errcode(ERRCODE_UNDEFINED_TABLE), errmsg("table \"%s\" does not exist", given),
			                range->schemaname
			                    ? 0
			                    : errhint("claim_leases() looks a table name up without your search_path: qualify it "
			                              "with its schema, claim_leases('public.%s', ...), or pass its row type, "
			                              "claim_leases(NULL::%s, ...), which returns typed rows.",
			                              given, given)));
		return ClaimLeases(fcinfo, relid, InvalidOid);
	});
}

Datum wh_extend_lease(PG_FUNCTION_ARGS)
{
	WH_GUARDED({ return ExtendLease(fcinfo); });
}

Datum wh_complete_lease(PG_FUNCTION_ARGS)
{
	WH_GUARDED({ return CompleteLease(fcinfo); });
}

Datum wh_fail_lease(PG_FUNCTION_ARGS)
{
	WH_GUARDED({ return FailLease(fcinfo); });
}

Datum wh_check_lease(PG_FUNCTION_ARGS)
{
	WH_GUARDED({ return CheckLease(fcinfo); });
}

} // extern "C"
