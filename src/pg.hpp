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

// What differs between PostgreSQL majors (and the oldest one we build for).
#include "compat.hpp"
