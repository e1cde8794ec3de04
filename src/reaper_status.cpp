// reaper_status() from version 1.2 on: the 1.0 columns plus
// leases_released_by_sql (releases made by stop_worker() and
// release_dead_worker_leases(), which are not reaper passes). Installs still
// at 1.0 / 1.1 call wh_reaper_status (sql_functions.cpp), ten columns.
#include "boundary.hpp"
#include "reaper_registry.hpp"

extern "C" {
#include "commands/dbcommands.h"
#include "mb/pg_wchar.h"

PG_FUNCTION_INFO_V1(wh_reaper_status_1_2);
}

namespace
{

// Text of a shared-memory string field: only its valid prefix in the
// database encoding (SetLastError clips on a character boundary; this holds
// whatever the memory contains).
Datum ValidText(const char *s)
{
	int len = static_cast<int>(strlen(s));
	int valid = pg_encoding_verifymbstr(GetDatabaseEncoding(), s, len);
	return PointerGetDatum(cstring_to_text_with_len(s, valid));
}

} // namespace

extern "C" {

Datum wh_reaper_status_1_2(PG_FUNCTION_ARGS)
{
	WH_GUARDED({
		InitMaterializedSRF(fcinfo, 0);
		auto *rsinfo = reinterpret_cast<ReturnSetInfo *>(fcinfo->resultinfo);
		int capacity = wh::registry::Capacity();
		auto *views = static_cast<wh::registry::SlotView *>(palloc(sizeof(wh::registry::SlotView) * (capacity + 1)));
		int n = wh::registry::Snapshot(views, capacity);
		// This database has the extension (we run in it) but no slot, and
		// every slot is taken: it is not reaped, and says so (never silent).
		bool listed = false;
		for (int i = 0; i < n && !listed; ++i)
			listed = views[i].dboid == MyDatabaseId;
		if (!listed && n >= capacity) {
			wh::registry::SlotView &v = views[n++];
			memset(&v, 0, sizeof v);
			v.dboid = MyDatabaseId;
			strlcpy(v.state, wh::registry::kStateRegistryFull, sizeof v.state);
		}
		for (int i = 0; i < n; ++i) {
			const wh::registry::SlotView &v = views[i];
			constexpr int kColumns = 11;
			Datum values[kColumns];
			bool nulls[kColumns] = {false};
			char *dbname = get_database_name(v.dboid);
			nulls[0] = dbname == nullptr;
			values[0] = dbname ? DirectFunctionCall1(namein, CStringGetDatum(dbname)) : (Datum)0;
			nulls[1] = v.pid == 0;
			values[1] = Int32GetDatum(v.pid);
			values[2] = v.stop_requested && v.pid == 0 ? CStringGetTextDatum("stopped") : ValidText(v.state);
			nulls[3] = v.started_at == 0;
			values[3] = TimestampTzGetDatum(v.started_at);
			nulls[4] = v.last_pass_at == 0;
			values[4] = TimestampTzGetDatum(v.last_pass_at);
			nulls[5] = v.last_pass_at == 0;
			values[5] = Float8GetDatum(v.last_pass_ms);
			values[6] = Int64GetDatum(static_cast<int64>(v.passes));
			values[7] = Int64GetDatum(static_cast<int64>(v.workers_declared_dead));
			values[8] = Int64GetDatum(static_cast<int64>(v.leases_released));
			nulls[9] = v.last_error[0] == '\0';
			values[9] = nulls[9] ? (Datum)0 : ValidText(v.last_error);
			values[10] = Int64GetDatum(static_cast<int64>(v.leases_released_by_sql));
			tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
		}
		return (Datum)0;
	});
}
}
