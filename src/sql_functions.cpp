// The SQL surface: every function the install scripts declare LANGUAGE C.
// Each one checks its arguments, then does its work through WH_GUARDED
// (boundary.hpp).
#include "boundary.hpp"
#include "catalog.hpp"
#include "core/worker_status.hpp"
#include "directives.hpp"
#include "heartbeats.hpp"
#include "leases.hpp"
#include "reaper.hpp"
#include "reaper_registry.hpp"
#include "reaping_pass.hpp"

extern "C" {
#include "access/xlog.h"
#include "commands/dbcommands.h"
#include "commands/trigger.h"
#include "pgstat.h"
#include "storage/latch.h"
#include "utils/uuid.h"

PG_FUNCTION_INFO_V1(wh_upsert_worker_heartbeat);
PG_FUNCTION_INFO_V1(wh_heartbeat);
PG_FUNCTION_INFO_V1(wh_stop_worker);
PG_FUNCTION_INFO_V1(wh_cleanup_stale_workers);
PG_FUNCTION_INFO_V1(wh_register_lease_table);
PG_FUNCTION_INFO_V1(wh_unregister_lease_table);
PG_FUNCTION_INFO_V1(wh_release_dead_worker_leases);
PG_FUNCTION_INFO_V1(wh_reaper_status);
PG_FUNCTION_INFO_V1(wh_start_reaper);
PG_FUNCTION_INFO_V1(wh_stop_reaper);
PG_FUNCTION_INFO_V1(wh_worker_rows_changed);
}

namespace
{

text *TextArg(FunctionCallInfo fcinfo, int n)
{
	return PG_ARGISNULL(n) ? nullptr : PG_GETARG_TEXT_PP(n);
}

const char *NameArg(FunctionCallInfo fcinfo, int n, const char *what)
{
	if (PG_ARGISNULL(n))
		ereport(ERROR, (errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED), errmsg("%s must not be null", what)));
	const char *name = NameStr(*PG_GETARG_NAME(n));
	if (name[0] == '\0')
		ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE), errmsg("%s must not be empty", what)));
	return name;
}

const char *OptionalNameArg(FunctionCallInfo fcinfo, int n, const char *what)
{
	return PG_ARGISNULL(n) ? nullptr : NameArg(fcinfo, n, what);
}

Oid TableArg(FunctionCallInfo fcinfo)
{
	if (PG_ARGISNULL(0))
		ereport(ERROR, (errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED), errmsg("p_table must not be null")));
	return PG_GETARG_OID(0);
}

void ConnectSpi()
{
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "worker_heartbeat: SPI_connect failed");
}

wh::heartbeats::HeartbeatArgs BeatFromArgs(FunctionCallInfo fcinfo)
{
	wh::heartbeats::HeartbeatArgs args{};
	args.worker_id = TextArg(fcinfo, 0);
	args.worker_type = TextArg(fcinfo, 1);
	args.status = TextArg(fcinfo, 2);
	args.run_id = PG_ARGISNULL(3) ? nullptr : PG_GETARG_UUID_P(3);
	args.task = TextArg(fcinfo, 4);
	args.has_lease_expires = !PG_ARGISNULL(5);
	args.lease_expires = args.has_lease_expires ? PG_GETARG_TIMESTAMPTZ(5) : 0;
	args.metadata = PG_ARGISNULL(6) ? nullptr : PG_GETARG_JSONB_P(6);
	args.session_bound = !PG_ARGISNULL(7) && PG_GETARG_BOOL(7);
	args.function_oid = fcinfo->flinfo->fn_oid;
	wh::heartbeats::Validate(args);
	wh::heartbeats::Beat(args);
	return args;
}

} // namespace

extern "C" {

Datum wh_upsert_worker_heartbeat(PG_FUNCTION_ARGS)
{
	WH_GUARDED({
		BeatFromArgs(fcinfo);
		PG_RETURN_VOID();
	});
}

// 1.3: the same heartbeat, answered with the worker's directive.
Datum wh_heartbeat(PG_FUNCTION_ARGS)
{
	WH_GUARDED({
		wh::heartbeats::HeartbeatArgs args = BeatFromArgs(fcinfo);
		auto status = wh::core::ParseStatus(std::string_view(VARDATA_ANY(args.status), VARSIZE_ANY_EXHDR(args.status)));
		bool live = status && wh::core::IsLive(*status);
		wh::directives::Directive d =
		    wh::directives::ForHeartbeat(args.worker_id, args.worker_type, args.metadata, live);
		PG_RETURN_TEXT_P(cstring_to_text(wh::directives::Name(d)));
	});
}

Datum wh_stop_worker(PG_FUNCTION_ARGS)
{
	WH_GUARDED({ PG_RETURN_BOOL(wh::heartbeats::Stop(TextArg(fcinfo, 0))); });
}

Datum wh_cleanup_stale_workers(PG_FUNCTION_ARGS)
{
	WH_GUARDED({
		if (PG_ARGISNULL(0))
			ereport(ERROR, (errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED), errmsg("p_threshold_minutes must not be null")));
		int32 minutes = PG_GETARG_INT32(0);
		if (minutes <= 0)
			ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			                errmsg("p_threshold_minutes must be positive, not %d", minutes)));
		wh::catalog::Extension ext = wh::catalog::RequireExtension();
		ConnectSpi();
		int removed = wh::heartbeats::CleanupStale(ext, static_cast<int64>(minutes) * USECS_PER_MINUTE);
		SPI_finish();
		PG_RETURN_INT32(removed);
	});
}

Datum wh_register_lease_table(PG_FUNCTION_ARGS)
{
	WH_GUARDED({
		wh::leases::Registration r{};
		r.p_table = TableArg(fcinfo);
		r.worker_column = NameArg(fcinfo, 1, "p_worker_column");
		r.expires_column = NameArg(fcinfo, 2, "p_expires_column");
		r.on_release = PG_ARGISNULL(3) ? DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum("{}")))
		                               : PG_GETARG_JSONB_P(3);
		// The 1.1 declaration adds five optional parameters; the 1.0 one has four.
		if (PG_NARGS() >= 9) {
			r.fenced_signature = true;
			r.token_column = OptionalNameArg(fcinfo, 4, "p_token_column");
			r.attempts_column = OptionalNameArg(fcinfo, 5, "p_attempts_column");
			r.has_max_attempts = !PG_ARGISNULL(6);
			r.max_attempts = r.has_max_attempts ? PG_GETARG_INT32(6) : 0;
			r.on_exhausted = PG_ARGISNULL(7) ? nullptr : PG_GETARG_JSONB_P(7);
			r.order_column = OptionalNameArg(fcinfo, 8, "p_order_column");
		}
		wh::catalog::Extension ext = wh::catalog::RequireExtension();
		ConnectSpi();
		wh::leases::Register(ext, r);
		SPI_finish();
		PG_RETURN_VOID();
	});
}

Datum wh_unregister_lease_table(PG_FUNCTION_ARGS)
{
	WH_GUARDED({
		Oid relid = TableArg(fcinfo);
		wh::catalog::Extension ext = wh::catalog::RequireExtension();
		Oid owner = wh::catalog::RelationOwner(relid);
		// A dropped table can be unregistered by anyone allowed to call us.
		if (owner != InvalidOid && !wh::catalog::IsOwner(relid, GetOuterUserId()))
			ereport(ERROR, (errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
			                errmsg("must be owner of table %s", get_rel_name(relid))));
		ConnectSpi();
		bool removed = wh::leases::Unregister(ext, relid);
		SPI_finish();
		if (!removed)
			ereport(ERROR, (errcode(ERRCODE_UNDEFINED_OBJECT),
			                errmsg("table %s is not registered", owner ? get_rel_name(relid) : "(dropped)"),
			                errhint("SELECT table_name FROM lease_tables lists the registered tables.")));
		PG_RETURN_BOOL(true);
	});
}

Datum wh_release_dead_worker_leases(PG_FUNCTION_ARGS)
{
	WH_GUARDED({
		wh::catalog::Extension ext = wh::catalog::RequireExtension();
		// Under READ COMMITTED the pass's scan takes a snapshot after this, so
		// its check may set the reaper's schedule like the reaper's own does.
		if (!IsolationUsesXactSnapshot())
			wh::registry::BeginPass(MyDatabaseId);
		ConnectSpi();
		wh::reaping::PassResult result = wh::reaping::RunPass(ext, wh::reaping::PassOptions{false, false});
		SPI_finish();
		PG_RETURN_INT32(result.released);
	});
}

Datum wh_reaper_status(PG_FUNCTION_ARGS)
{
	WH_GUARDED({
		InitMaterializedSRF(fcinfo, 0);
		auto *rsinfo = reinterpret_cast<ReturnSetInfo *>(fcinfo->resultinfo);
		wh::registry::SlotView *views =
		    static_cast<wh::registry::SlotView *>(palloc(sizeof(wh::registry::SlotView) * wh::registry::Capacity()));
		int n = wh::registry::Snapshot(views, wh::registry::Capacity());
		for (int i = 0; i < n; ++i) {
			const wh::registry::SlotView &v = views[i];
			Datum values[10];
			bool nulls[10] = {false};
			char *dbname = get_database_name(v.dboid);
			nulls[0] = dbname == nullptr;
			values[0] = dbname ? DirectFunctionCall1(namein, CStringGetDatum(dbname)) : (Datum)0;
			nulls[1] = v.pid == 0;
			values[1] = Int32GetDatum(v.pid);
			values[2] = CStringGetTextDatum(v.stop_requested && v.pid == 0 ? "stopped" : v.state);
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
			values[9] = CStringGetTextDatum(v.last_error);
			tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
		}
		return (Datum)0;
	});
}

Datum wh_start_reaper(PG_FUNCTION_ARGS)
{
	WH_GUARDED({
		if (RecoveryInProgress())
			ereport(ERROR, (errcode(ERRCODE_READ_ONLY_SQL_TRANSACTION), errmsg("the reaper does not run on a standby"),
			                errdetail("It starts by itself after promotion.")));
		(void)wh::catalog::RequireExtension();
		wh::registry::ClearStop(MyDatabaseId);
		PG_RETURN_BOOL(wh::reaper::StartFromSql()); // within max_reapers; says why when it cannot
	});
}

Datum wh_stop_reaper(PG_FUNCTION_ARGS)
{
	WH_GUARDED({
		(void)wh::catalog::RequireExtension();
		bool was_running = wh::registry::RequestStop(MyDatabaseId);
		// Wait (briefly) until it has gone, so that the caller sees it stopped.
		for (int i = 0; was_running && i < 100 && wh::registry::ReaperRunning(MyDatabaseId); ++i) {
			(void)WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH, 50, PG_WAIT_EXTENSION);
			ResetLatch(MyLatch);
			CHECK_FOR_INTERRUPTS();
		}
		PG_RETURN_BOOL(was_running);
	});
}

// Statement trigger on worker_types and on inserts into worker_heartbeats:
// deadlines may now come sooner than the reaper's schedule says. The
// heartbeat's own insert has already told the registry (WorkerBecameLive).
Datum wh_worker_rows_changed(PG_FUNCTION_ARGS)
{
	WH_GUARDED({
		if (!CALLED_AS_TRIGGER(fcinfo))
			ereport(ERROR, (errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
			                errmsg("_worker_rows_changed() is a trigger function")));
		auto *trigger = reinterpret_cast<TriggerData *>(fcinfo->context);
		bool own_heartbeat = TRIGGER_FIRED_BY_INSERT(trigger->tg_event) && wh::heartbeats::OwnInsertInProgress();
		if (!own_heartbeat) {
			wh::registry::InvalidateDeathSchedule(MyDatabaseId);
			wh::registry::Wake(MyDatabaseId);
		}
		return PointerGetDatum(nullptr);
	});
}

} // extern "C"
