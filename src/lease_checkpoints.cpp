#include "lease_checkpoints.hpp"

#include "boundary.hpp"
#include "lease_fencing.hpp"
#include "leases.hpp"
#include "settings.hpp"
#include "spi_plans.hpp"

#include <cstring>

extern "C" {
#include "catalog/pg_attribute.h"
#include "utils/syscache.h"

PG_FUNCTION_INFO_V1(wh_set_lease_checkpoint_column);
PG_FUNCTION_INFO_V1(wh_checkpoint_lease);
}

namespace
{

using wh::leases::Table;

void ConnectSpi()
{
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "worker_heartbeat: SPI_connect failed");
}

Oid LeaseTablesRelid(const wh::catalog::Extension &ext)
{
	return get_relname_relid("lease_tables", ext.schema);
}

// Runs fn as the owner of lease_tables (the registration is ours; the
// functions run with the caller's rights). An error in fn leaves through the
// transaction abort, which restores the user.
template <typename Fn> void AsCatalogOwner(const wh::catalog::Extension &ext, Fn fn)
{
	Oid saved_user = InvalidOid;
	int saved_context = 0;
	GetUserIdAndSecContext(&saved_user, &saved_context);
	Oid owner = wh::catalog::RelationOwner(LeaseTablesRelid(ext));
	if (owner != InvalidOid)
		SetUserIdAndSecContext(owner, saved_context | SECURITY_LOCAL_USERID_CHANGE);
	fn();
	SetUserIdAndSecContext(saved_user, saved_context);
}

// Why column cannot carry checkpoints (NULL: it can).
const char *UnfitColumn(Oid relid, const char *column)
{
	AttrNumber attnum = get_attnum(relid, column);
	if (attnum == InvalidAttrNumber)
		return psprintf("its checkpoint column \"%s\" is gone", column);
	if (get_atttype(relid, attnum) != JSONBOID)
		return psprintf("its checkpoint column \"%s\" is no longer jsonb", column);
	return nullptr;
}

bool IsManaged(const Table &t, const char *quoted)
{
	const char *managed[4] = {t.worker_column, t.expires_column, t.token_column, t.attempts_column};
	for (const char *column : managed)
		if (column && strcmp(column, quoted) == 0)
			return true;
	return false;
}

// The checks of set_lease_checkpoint_column for a column name (not NULL).
void CheckColumn(const Table &t, const char *column)
{
	Oid relid = t.relid;
	AttrNumber attnum = get_attnum(relid, column);
	if (attnum == InvalidAttrNumber || attnum < 0)
		ereport(ERROR,
		        (errcode(ERRCODE_UNDEFINED_COLUMN), errmsg("column \"%s\" of table %s does not exist", column, t.label),
		         errhint("Add it first: ALTER TABLE %s ADD COLUMN %s jsonb;", t.label, quote_identifier(column))));
	const char *quoted = quote_identifier(column);
	if (IsManaged(t, quoted))
		ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE),
		                errmsg("column \"%s\" of table %s is a lease column", column, t.label),
		                errdetail("The worker, expires, token and attempts columns are kept by the lease functions."),
		                errhint("Name a jsonb column of its own for checkpoints.")));
	Oid type = get_atttype(relid, attnum);
	if (type != JSONBOID)
		ereport(ERROR,
		        (errcode(ERRCODE_DATATYPE_MISMATCH),
		         errmsg("column \"%s\" of table %s has type %s, not jsonb", column, t.label, format_type_be(type)),
		         errhint("A checkpoint is a JSON value: use a jsonb column.")));
	HeapTuple tuple = SearchSysCacheAttNum(relid, attnum);
	bool generated = false;
	if (HeapTupleIsValid(tuple)) {
		generated = reinterpret_cast<Form_pg_attribute>(GETSTRUCT(tuple))->attgenerated != '\0';
		ReleaseSysCache(tuple);
	}
	if (generated)
		ereport(ERROR, (errcode(ERRCODE_GENERATED_ALWAYS),
		                errmsg("column \"%s\" of table %s is a generated column", column, t.label),
		                errdetail("checkpoint_lease() assigns the checkpoint column.")));
	for (int i = 0; i < t.assignment_count; ++i)
		if (strcmp(t.assignments[i].column, quoted) == 0)
			ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			                errmsg("the on_release of table %s assigns column \"%s\"", t.label, column),
			                errdetail("Every release would overwrite the checkpoint that the next worker should "
			                          "resume from."),
			                errhint("Register the table again without this column in p_on_release, or name another "
			                        "column.")));
}

Datum SetCheckpointColumn(FunctionCallInfo fcinfo)
{
	if (PG_ARGISNULL(0))
		ereport(ERROR, (errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED), errmsg("p_table must not be null")));
	Oid relid = PG_GETARG_OID(0);
	const char *column = PG_ARGISNULL(1) ? nullptr : NameStr(*PG_GETARG_NAME(1));
	if (column && column[0] == '\0')
		ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE), errmsg("p_checkpoint_column must not be empty"),
		                errhint("Pass NULL to remove the checkpoint column.")));
	wh::catalog::Extension ext = wh::catalog::RequireExtension();
	if (get_attnum(LeaseTablesRelid(ext), "checkpoint_column") == InvalidAttrNumber)
		ereport(ERROR, (errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
		                errmsg("the catalog of worker_heartbeat is older than 1.3"),
		                errhint("ALTER EXTENSION worker_heartbeat UPDATE;")));
	ConnectSpi();
	const Table *t = wh::fencing::RequireFencedTable(ext, relid);
	if (!wh::catalog::IsOwner(relid, GetOuterUserId()))
		ereport(ERROR, (errcode(ERRCODE_INSUFFICIENT_PRIVILEGE), errmsg("must be owner of table %s", t->label),
		                errdetail("The checkpoint column is part of the table's registration.")));
	if (column)
		CheckColumn(*t, column);
	AsCatalogOwner(ext, [&]() {
		char *sql = psprintf("UPDATE %s SET checkpoint_column = $2 "
		                     "WHERE table_name::pg_catalog.oid OPERATOR(pg_catalog.=) $1",
		                     wh::catalog::Qualified(ext, "lease_tables"));
		Oid types[2] = {OIDOID, NAMEOID};
		Datum values[2] = {ObjectIdGetDatum(relid), column ? PG_GETARG_DATUM(1) : (Datum)0};
		const char nulls[3] = {' ', column ? ' ' : 'n', '\0'};
		wh::spi::Run(wh::spi::Plan(sql, 2, types), values, nulls, false);
	});
	SPI_finish();
	PG_RETURN_VOID();
}

Datum CheckpointLease(FunctionCallInfo fcinfo)
{
	if (PG_ARGISNULL(0))
		ereport(ERROR, (errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED), errmsg("p_table must not be null")));
	if (PG_ARGISNULL(1))
		ereport(ERROR, (errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED), errmsg("p_token must not be null")));
	if (PG_ARGISNULL(2))
		ereport(ERROR, (errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED), errmsg("p_checkpoint must not be null"),
		                errhint("Pass a JSON value, e.g. '{\"page\": 3}'; 'null'::jsonb stores a JSON null.")));
	Oid relid = PG_GETARG_OID(0);
	int64 token = PG_GETARG_INT64(1);
	Jsonb *checkpoint = PG_GETARG_JSONB_P(2);
	bool extend = !PG_ARGISNULL(3);
	Datum lease = extend ? wh::fencing::LeaseArg(fcinfo, 3) : (Datum)0;
	int64 bytes = VARSIZE(checkpoint);
	if (bytes > wh::settings::max_checkpoint_bytes)
		ereport(ERROR, (errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
		                errmsg("checkpoint is too large (%lld bytes)", static_cast<long long>(bytes)),
		                errdetail("worker_heartbeat.max_checkpoint_bytes is %d (jsonb size).",
		                          wh::settings::max_checkpoint_bytes),
		                errhint("Checkpoint where you are (ids, offsets, a cursor) and keep large results in a table "
		                        "of your own.")));
	wh::catalog::Extension ext = wh::catalog::RequireExtension();
	ConnectSpi();
	const Table *t = wh::fencing::RequireFencedTable(ext, relid);
	const char *unfit = nullptr;
	const char *column = wh::checkpoints::Column(ext, relid, &unfit);
	if (!column)
		ereport(ERROR,
		        (errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
		         errmsg("table %s has no checkpoint column", t->label),
		         errhint("Name a jsonb column with set_lease_checkpoint_column('%s', 'checkpoint').", t->label)));
	if (unfit)
		ereport(ERROR, (errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
		                errmsg("table %s cannot take checkpoints: %s", t->label, unfit),
		                errhint("Change the table back, or name another column with set_lease_checkpoint_column().")));
	// The lease's own row only, and only while it holds the lease: a release
	// that committed first leaves no row here (WH001); one that comes later
	// waits for this row lock, or skips the row and retries.
	char *sql = psprintf("UPDATE %s t SET %s = $2%s WHERE t.%s OPERATOR(pg_catalog.=) $1 AND t.%s IS NOT NULL "
	                     "RETURNING t.%s",
	                     t->relation, quote_identifier(column),
	                     extend ? psprintf(", %s = pg_catalog.now() OPERATOR(pg_catalog.+) $3", t->expires_column) : "",
	                     t->token_column, t->worker_column, t->expires_column);
	Oid types[3] = {INT8OID, JSONBOID, INTERVALOID};
	Datum values[3] = {Int64GetDatum(token), JsonbPGetDatum(checkpoint), lease};
	wh::spi::Run(wh::spi::Plan(sql, extend ? 3 : 2, types), values, nullptr, false);
	if (SPI_processed == 0)
		wh::fencing::StaleToken(*t, token);
	bool isnull = false;
	Datum deadline = wh::spi::Column(0, 1, &isnull);
	SPI_finish();
	if (isnull)
		PG_RETURN_NULL();
	PG_RETURN_TIMESTAMPTZ(DatumGetTimestampTz(deadline));
}

} // namespace

namespace wh::checkpoints
{

const char *Column(const catalog::Extension &ext, Oid relid, const char **unfit)
{
	*unfit = nullptr;
	Oid catalog_relid = LeaseTablesRelid(ext);
	// The same library serves a 1.0-1.2 catalog, which has no such column.
	if (catalog_relid == InvalidOid || get_attnum(catalog_relid, "checkpoint_column") == InvalidAttrNumber)
		return nullptr;
	char *column = nullptr;
	AsCatalogOwner(ext, [&]() {
		char *sql = psprintf("SELECT checkpoint_column::pg_catalog.text FROM %s "
		                     "WHERE table_name::pg_catalog.oid OPERATOR(pg_catalog.=) $1",
		                     catalog::Qualified(ext, "lease_tables"));
		Oid types[1] = {OIDOID};
		Datum values[1] = {ObjectIdGetDatum(relid)};
		spi::Run(spi::Plan(sql, 1, types), values, nullptr, true);
		column = SPI_processed > 0 ? spi::ColumnText(0, 1) : nullptr;
	});
	if (column)
		*unfit = UnfitColumn(relid, column);
	return column;
}

} // namespace wh::checkpoints

extern "C" {

Datum wh_set_lease_checkpoint_column(PG_FUNCTION_ARGS)
{
	WH_GUARDED({ return SetCheckpointColumn(fcinfo); });
}

Datum wh_checkpoint_lease(PG_FUNCTION_ARGS)
{
	WH_GUARDED({ return CheckpointLease(fcinfo); });
}

} // extern "C"
