#include "expiry_probe.hpp"

#include "spi_plans.hpp"

#include <cstring>

extern "C" {
#include "access/xact.h"
#include "utils/guc.h"
#include "utils/inval.h"
#include "utils/memutils.h"
#include "utils/resowner.h"
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
	char *fingerprint;
	char *probe_sql;
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

char *BuildProbeSql(const catalog::Extension &ext)
{
	StringInfoData sql;
	initStringInfo(&sql);
	appendStringInfo(&sql, "SELECT %s", RegistrationsFingerprintSql(ext));
	for (int i = 0; i < kept.count; ++i) {
		const Table &t = kept.tables[i];
		if (!t.exists)
			appendStringInfoString(&sql, ", false");
		else
			appendStringInfo(&sql, ", EXISTS (SELECT 1 FROM %s s WHERE s.%s OPERATOR(pg_catalog.<) pg_catalog.now())",
			                 t.qualified, t.expires_column);
	}
	return sql.data;
}

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
		t.qualified = Keep(t.qualified);
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
	kept.tables = nullptr;
	kept.count = 0;
	// An invalidation processed while loading (at any lock the statement
	// takes) may be about a name or owner already copied: then the result is
	// used for this pass only and loaded again at the next.
	uint64 invalidations = kept.invalidations;
	char *fingerprint = nullptr;
	int count = 0;
	Table *tables = LoadTables(ext, &count, InvalidOid, &fingerprint);
	kept.tables = KeepTables(tables, count);
	kept.count = count;
	kept.fingerprint = MemoryContextStrdup(kept.context, fingerprint ? fingerprint : "");
	kept.probe_sql = MemoryContextStrdup(kept.context, BuildProbeSql(ext));
	kept.lease_tables = lease_tables;
	kept.valid = kept.invalidations == invalidations;
}

// Runs the probe; false when the registrations changed since they were loaded.
bool RunProbe(bool *expired)
{
	spi::Run(spi::Plan(kept.probe_sql, 0, nullptr), nullptr, nullptr, true);
	char *fingerprint = spi::ColumnText(0, 1);
	if (!fingerprint || strcmp(fingerprint, kept.fingerprint) != 0)
		return false;
	for (int i = 0; i < kept.count; ++i) {
		bool isnull = true;
		Datum value = spi::Column(0, i + 2, &isnull);
		expired[i] = !isnull && DatumGetBool(value);
	}
	return true;
}

} // namespace

const bool *ProbeExpired(const catalog::Extension &ext, const Table **tables, int *count)
{
	// Row-level security never hides a row from a superuser, so "no expired
	// row" holds for the table's owner too. The probe reads an indexed
	// timestamptz with the built-in operator: no user code runs.
	if (!superuser())
		return nullptr;
	Oid lease_tables = get_relname_relid("lease_tables", ext.schema);
	if (lease_tables == InvalidOid)
		return nullptr;
	MemoryContext outer_context = CurrentMemoryContext;
	ResourceOwner outer_owner = CurrentResourceOwner;
	bool *volatile expired = nullptr;
	BeginInternalSubTransaction(nullptr);
	MemoryContextSwitchTo(outer_context);
	PG_TRY();
	{
		int nest = EnterPassSettings(false); // the probe's SQL is fully qualified
		if (!kept.valid || kept.lease_tables != lease_tables)
			Reload(ext, lease_tables);
		bool *result = static_cast<bool *>(palloc0(sizeof(bool) * (kept.count + 1)));
		if (!RunProbe(result)) {
			// Registered or unregistered since: load them again (the new
			// fingerprint is read in the same snapshot as the rows).
			Reload(ext, lease_tables);
			result = static_cast<bool *>(repalloc(result, sizeof(bool) * (kept.count + 1)));
			if (!RunProbe(result))
				result = nullptr; // changing under us: do it the long way
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

} // namespace wh::leases
