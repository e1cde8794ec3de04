// PostgreSQL's C headers, included with C linkage for the C++ files that
// talk to the server. Files under src/core/ never include this: they are
// plain C++ and are unit-tested without a server.
#pragma once

extern "C" {
#include "postgres.h"

#include "access/htup_details.h"
#include "access/xact.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "storage/spin.h"
#include "utils/builtins.h"
#include "utils/elog.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/timestamp.h"
}

// PostgreSQL 15 is the oldest version we build for.
#if PG_VERSION_NUM < 150000
#error "worker_heartbeat needs PostgreSQL 15 or newer"
#endif
