// Progress checkpoints (1.3): a fenced table may name a jsonb checkpoint
// column. checkpoint_lease() stores a checkpoint with a live lease (WH001
// when its token is stale, nothing changed); the releases (the reaper,
// stop_worker, fail_lease) keep it, so the next claimer receives the row with
// the last checkpoint and its attempts count and can resume; complete_lease
// clears it unless its p_set assigns the column. The column is named with
// set_lease_checkpoint_column() and kept in lease_tables.checkpoint_column.
// See docs/fenced-leases.md, "Checkpoints (1.3)".
#pragma once

#include "catalog.hpp"
#include "pg.hpp"

namespace wh::checkpoints
{

// The checkpoint column of a registered table, unquoted; NULL when it has
// none (or the catalog is older than 1.3). *unfit says why the column cannot
// be used any more (dropped, no longer jsonb), NULL when it can. Read as the
// owner of lease_tables; needs SPI.
const char *Column(const catalog::Extension &ext, Oid relid, const char **unfit);

} // namespace wh::checkpoints

extern "C" {
Datum wh_set_lease_checkpoint_column(PG_FUNCTION_ARGS);
Datum wh_checkpoint_lease(PG_FUNCTION_ARGS);
}
