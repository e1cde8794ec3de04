# PGXS build of the worker_heartbeat extension (C++17, compiled with g++).
# Sources are found by wildcard; CMakeLists.txt globs the same folders, so there
# is no second list to keep in sync.
EXTENSION  = worker_heartbeat
MODULE_big = worker_heartbeat

CXX_SOURCES := $(sort $(wildcard src/*.cpp src/core/*.cpp))
OBJS        = $(CXX_SOURCES:.cpp=.o)

# Install scripts are assembled from the parts under src/sql/<version>/.
SQL_10_PARTS := $(sort $(wildcard src/sql/1.0/*.sql))
SQL_11_PARTS := $(sort $(wildcard src/sql/1.1/*.sql))
SQL_12_PARTS := $(sort $(wildcard src/sql/1.2/*.sql))
DATA_built   = worker_heartbeat--1.0.sql worker_heartbeat--1.0--1.1.sql worker_heartbeat--1.1--1.2.sql

REGRESS      = $(patsubst sql/%.sql,%,$(sort $(wildcard sql/*.sql)))
REGRESS_OPTS = --inputdir=. --load-extension=plpgsql
ISOLATION    = $(patsubst test/isolation/specs/%.spec,%,$(sort $(wildcard test/isolation/specs/*.spec)))
ISOLATION_OPTS = --inputdir=test/isolation --outputdir=output_iso
TAP_TESTS    = 1
# prove looks for t/ under the current directory; ours live in test/t.
PROVE_TESTS  = $(sort $(wildcard test/t/*.pl))

EXTRA_CLEAN  = output_iso results regression.diffs regression.out tmp_check

PG_CONFIG ?= pg_config
# The library's version, from the control file: PG_MODULE_MAGIC_EXT (PG 18+)
# records it, pg_get_loaded_modules() shows it (src/compat.hpp).
WH_VERSION := $(shell sed -n "s/^default_version *= *'\(.*\)'.*/\1/p" $(EXTENSION).control)
PG_CPPFLAGS += -DWH_VERSION='"$(WH_VERSION)"'
PG_CXXFLAGS += -std=c++17 -Wall -Wextra -Wno-unused-parameter -Wno-missing-field-initializers \
               -Wno-register -fno-rtti -Isrc
SHLIB_LINK  += -lstdc++

# No LLVM bitcode for JIT inlining: it would be built by clang without our
# C++ flags, and nothing of ours is worth inlining into JIT-compiled queries.
override with_llvm = no

PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)

worker_heartbeat--1.0.sql: $(SQL_10_PARTS)
	cat $^ > $@

worker_heartbeat--1.0--1.1.sql: $(SQL_11_PARTS)
	cat $^ > $@

worker_heartbeat--1.1--1.2.sql: $(SQL_12_PARTS)
	cat $^ > $@

# PGXS links C++ objects with the C compiler's rules; make sure C++ objects
# are rebuilt when a header changes.
$(OBJS): $(wildcard src/*.hpp src/core/*.hpp)

.PHONY: format
format:
	clang-format -i src/*.cpp src/*.hpp src/core/*.cpp src/core/*.hpp test/unit/*.cpp
