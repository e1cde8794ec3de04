// Prepared statements kept by the backend, keyed by their text. Callers must
// be connected to SPI.
//
// A kept plan unused for ten minutes is freed (ForgetUnusedPlans, called at
// the start of each reaping pass): statements built from the registrations
// change with them, and the long-lived reaper must not keep one plan per
// change forever.
#pragma once

#include "pg.hpp"

namespace wh::spi
{

//
// custom: planned again at each execution with the parameters' values. For
// statements given a large array: a generic plan (what a kept plan becomes
// after five executions) tests "x = ANY ($1)" against a parameter by a linear
// search per row, where a planned constant array gets a hash table. In the
// long-lived reaper a pass declaring 40,000 workers dead took 16 minutes so.
SPIPlanPtr Plan(const char *sql, int nargs, const Oid *argtypes, bool custom = false);
// Arrays longer than this are planned with their values (custom).
constexpr int kCustomPlanAbove = 32;
// generic: planned once, not with the parameters' values (unless a role's or
// database's plan_cache_mode = force_custom_plan says otherwise). For statements
// whose arrays are only unnested (the event rows of a pass): a custom plan
// would copy each array into the plan as a constant, several times over, for
// nothing to gain (5,000 events: ~3% of a 1000-dead pass).
SPIPlanPtr PlanGeneric(const char *sql, int nargs, const Oid *argtypes);
// Frees the plans unused for a while (at most once a minute; never while one
// of our plans is running).
void ForgetUnusedPlans();
int KeptPlans(); // how many are kept (tests, debugging)
// Runs a kept plan; raises an ERROR naming the statement if SPI fails.
int Run(SPIPlanPtr plan, const Datum *values, const char *nulls, bool read_only, long count = 0);

// Value helpers for SPI_tuptable rows.
Datum Column(int row, int column, bool *isnull);
char *ColumnText(int row, int column); // NULL when SQL NULL

} // namespace wh::spi
