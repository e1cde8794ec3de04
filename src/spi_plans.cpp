#include "spi_plans.hpp"

#include <cstring>

extern "C" {
#include "utils/memutils.h"
}

namespace wh::spi
{

namespace
{
struct KeptPlan {
	char *sql;
	SPIPlanPtr plan;
	KeptPlan *next;
};
KeptPlan *kept = nullptr;
} // namespace

SPIPlanPtr Plan(const char *sql, int nargs, const Oid *argtypes)
{
	for (KeptPlan *p = kept; p; p = p->next)
		if (strcmp(p->sql, sql) == 0)
			return p->plan;
	SPIPlanPtr plan = SPI_prepare(sql, nargs, const_cast<Oid *>(argtypes));
	if (!plan)
		elog(ERROR, "worker_heartbeat: could not prepare statement: %s", SPI_result_code_string(SPI_result));
	SPI_keepplan(plan);
	auto *entry = static_cast<KeptPlan *>(MemoryContextAlloc(TopMemoryContext, sizeof(KeptPlan)));
	entry->sql = MemoryContextStrdup(TopMemoryContext, sql);
	entry->plan = plan;
	entry->next = kept;
	kept = entry;
	return plan;
}

int Run(SPIPlanPtr plan, const Datum *values, const char *nulls, bool read_only, long count)
{
	int rc = SPI_execute_plan(plan, const_cast<Datum *>(values), nulls, read_only, count);
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
