#include "event_retention.hpp"

#include "settings.hpp"
#include "spi_plans.hpp"

extern "C" {
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/resowner.h"
}

namespace wh::retention
{

namespace
{

TimestampTz next_due = 0; // this reaper process only

int DeleteBatches(const catalog::Extension &ext, double retention_ms)
{
	char timeout[32];
	snprintf(timeout, sizeof timeout, "%dms", settings::pass_lock_timeout_ms);
	// Local to the subtransaction: undone when it ends either way.
	(void)set_config_option("lock_timeout", timeout, PGC_USERSET, PGC_S_SESSION, GUC_ACTION_LOCAL, true, 0, false);
	const char *events = catalog::Qualified(ext, "worker_events");
	char *sql = psprintf("DELETE FROM %s WHERE event_id OPERATOR(pg_catalog.=) ANY (ARRAY("
	                     "SELECT e.event_id FROM %s e WHERE e.occurred_at OPERATOR(pg_catalog.<) "
	                     "(pg_catalog.now() OPERATOR(pg_catalog.-) ($1 OPERATOR(pg_catalog.*) "
	                     "pg_catalog.interval '1 millisecond')) "
	                     "ORDER BY e.occurred_at LIMIT %d FOR UPDATE SKIP LOCKED))",
	                     events, events, kBatch);
	static const Oid types[1] = {FLOAT8OID};
	SPIPlanPtr plan = spi::Plan(sql, 1, types);
	Datum args[1] = {Float8GetDatum(retention_ms)};
	int deleted = 0;
	for (int i = 0; i < kStatements; ++i) {
		spi::Run(plan, args, nullptr, false);
		int n = static_cast<int>(SPI_processed);
		deleted += n;
		if (n < kBatch)
			return deleted;
		CommandCounterIncrement();
	}
	return -deleted - 1; // more left: come back at the next tick
}

} // namespace

int RunIfDue(const catalog::Extension &ext)
{
	double retention_ms = settings::events_retention_ms;
	TimestampTz now = GetCurrentTimestamp();
	if (retention_ms <= 0 || now < next_due)
		return 0;
	next_due = now + static_cast<int64>(kEverySeconds) * USECS_PER_SEC;

	MemoryContext context = CurrentMemoryContext;
	ResourceOwner owner = CurrentResourceOwner;
	volatile int result = 0;
	BeginInternalSubTransaction(nullptr);
	MemoryContextSwitchTo(context);
	PG_TRY();
	{
		result = DeleteBatches(ext, retention_ms);
		ReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(context);
		CurrentResourceOwner = owner;
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(context);
		ErrorData *error = CopyErrorData();
		FlushErrorState();
		RollbackAndReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(context);
		CurrentResourceOwner = owner;
		ereport(LOG, (errcode(error->sqlerrcode),
		              errmsg("worker_heartbeat reaper: deleting old worker_events failed: %s", error->message),
		              errhint("The reaper tries again in %d s.", kEverySeconds)));
		FreeErrorData(error);
		result = 0;
	}
	PG_END_TRY();
	int deleted = result;
	if (deleted < 0) {
		deleted = -deleted - 1;
		next_due = 0; // a backlog: the next tick goes on with it
	}
	return deleted;
}

} // namespace wh::retention
