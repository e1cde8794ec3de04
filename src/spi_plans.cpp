#include "spi_plans.hpp"

#include <cstring>

extern "C" {
#include "common/hashfn.h"
#include "utils/memutils.h"
}

namespace wh::spi
{

namespace
{
struct KeptPlan {
	char *sql;
	uint32 hash;
	int options; // CURSOR_OPT_CUSTOM_PLAN, CURSOR_OPT_GENERIC_PLAN or 0
	SPIPlanPtr plan;
	TimestampTz last_used;
	KeptPlan *next;
};
KeptPlan *kept = nullptr;
int kept_count = 0;
int running = 0; // our plans executing now (nested calls included)
TimestampTz next_sweep = 0;
constexpr int64 kUnusedUs = 10 * 60 * USECS_PER_SEC; // a plan unused this long is freed
constexpr int64 kSweepEveryUs = 60 * USECS_PER_SEC;
} // namespace

namespace
{
SPIPlanPtr KeptOrPrepared(const char *sql, int nargs, const Oid *argtypes, int options)
{
	uint32 hash = hash_bytes(reinterpret_cast<const unsigned char *>(sql), static_cast<int>(strlen(sql)));
	TimestampTz now = GetCurrentTransactionStartTimestamp();
	for (KeptPlan *p = kept; p; p = p->next)
		if (p->hash == hash && p->options == options && strcmp(p->sql, sql) == 0) {
			p->last_used = now;
			return p->plan;
		}
	SPIPlanPtr plan = SPI_prepare_cursor(sql, nargs, const_cast<Oid *>(argtypes), options);
	if (!plan)
		elog(ERROR, "worker_heartbeat: could not prepare statement: %s", SPI_result_code_string(SPI_result));
	SPI_keepplan(plan);
	auto *entry = static_cast<KeptPlan *>(MemoryContextAlloc(TopMemoryContext, sizeof(KeptPlan)));
	entry->sql = MemoryContextStrdup(TopMemoryContext, sql);
	entry->hash = hash;
	entry->options = options;
	entry->plan = plan;
	entry->last_used = now;
	entry->next = kept;
	kept = entry;
	kept_count++;
	return plan;
}
} // namespace

SPIPlanPtr Plan(const char *sql, int nargs, const Oid *argtypes, bool custom)
{
	return KeptOrPrepared(sql, nargs, argtypes, custom ? CURSOR_OPT_CUSTOM_PLAN : 0);
}

SPIPlanPtr PlanGeneric(const char *sql, int nargs, const Oid *argtypes)
{
	return KeptOrPrepared(sql, nargs, argtypes, CURSOR_OPT_GENERIC_PLAN);
}

void ForgetUnusedPlans()
{
	// Only where none of our plans runs: a plan is never freed under its
	// own execution (a trigger of a registered table may call us).
	if (running > 0)
		return;
	TimestampTz now = GetCurrentTransactionStartTimestamp();
	if (now < next_sweep)
		return;
	next_sweep = now + kSweepEveryUs;
	KeptPlan **link = &kept;
	while (KeptPlan *p = *link) {
		if (p->last_used < now - kUnusedUs) {
			*link = p->next;
			SPI_freeplan(p->plan);
			pfree(p->sql);
			pfree(p);
			kept_count--;
		} else {
			link = &p->next;
		}
	}
}

int KeptPlans()
{
	return kept_count;
}

int Run(SPIPlanPtr plan, const Datum *values, const char *nulls, bool read_only, long count)
{
	int rc = 0;
	running++;
	PG_TRY();
	{
		rc = SPI_execute_plan(plan, const_cast<Datum *>(values), nulls, read_only, count);
	}
	PG_FINALLY();
	{
		running--;
	}
	PG_END_TRY();
	if (rc < 0)
		elog(ERROR, "worker_heartbeat: statement failed: %s", SPI_result_code_string(rc));
	return rc;
}

Datum Column(int row, int column, bool *isnull)
{
	return SPI_getbinval(SPI_tuptable->vals[row], SPI_tuptable->tupdesc, column, isnull);
}

char *ColumnText(int row, int column)
{
	bool isnull = false;
	Datum value = Column(row, column, &isnull);
	return isnull ? nullptr : TextDatumGetCString(value);
}

} // namespace wh::spi
