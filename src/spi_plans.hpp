// Prepared statements kept for the life of the backend, keyed by their text.
// Callers must be connected to SPI.
#pragma once

#include "pg.hpp"

namespace wh::spi
{

SPIPlanPtr Plan(const char *sql, int nargs, const Oid *argtypes);
// Runs a kept plan; raises an ERROR naming the statement if SPI fails.
int Run(SPIPlanPtr plan, const Datum *values, const char *nulls, bool read_only, long count = 0);

// Value helpers for SPI_tuptable rows.
Datum Column(int row, int column, bool *isnull);
char *ColumnText(int row, int column); // NULL when SQL NULL

} // namespace wh::spi
