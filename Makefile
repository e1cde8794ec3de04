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
SQL_13_PARTS := $(sort $(wildcard src/sql/1.3/*.sql))
DATA_built   = worker_heartbeat--1.0.sql worker_heartbeat--1.0--1.1.sql worker_heartbeat--1.1--1.2.sql \
               worker_heartbeat--1.2--1.3.sql

REGRESS      = $(patsubst sql/%.sql,%,$(sort $(wildcard sql/*.sql)))
REGRESS_OPTS = --inputdir=. --load-extension=plpgsql
ISOLATION    = $(patsubst test/isolation/specs/%.spec,%,$(sort $(wildcard test/isolation/specs/*.spec)))
ISOLATION_OPTS = --inputdir=test/isolation --outputdir=output_iso
TAP_TESTS    = 1
# prove looks for t/ under the current directory; ours live in test/t.
PROVE_TESTS  = $(sort $(wildcard test/t/*.pl))

EXTRA_CLEAN  = output_iso results regression.diffs regression.out tmp_check tmp_check_temp

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

worker_heartbeat--1.2--1.3.sql: $(SQL_13_PARTS)
	cat $^ > $@

# PGXS links C++ objects with the C compiler's rules; make sure C++ objects
# are rebuilt when a header changes.
$(OBJS): $(wildcard src/*.hpp src/core/*.hpp)

# `make installcheck` runs pg_regress, isolation and TAP against an installed
# server (PGHOST/PGPORT). `make check-temp` runs pg_regress and isolation
# against a temporary cluster of their own (pg_regress --temp-instance, the
# way pg_cron's suite uses --temp-config), started with test/temp.conf: the
# library preloaded. PGXS has no temporary installation for extensions (its
# `make check` says so), so install into the PG_CONFIG installation first, and
# run it as a user that may run initdb (not root):
#   make && sudo make install && make check-temp
TEMP_CHECK_CONF = --temp-config=test/temp.conf
.PHONY: check-temp check-temp-regress check-temp-isolation
check-temp: check-temp-regress check-temp-isolation
check-temp-regress: all
	rm -rf ./tmp_check_temp/regress && mkdir -p ./tmp_check_temp
	$(pg_regress_installcheck) $(REGRESS_OPTS) --temp-instance=./tmp_check_temp/regress $(TEMP_CHECK_CONF) $(REGRESS)
check-temp-isolation: all
	rm -rf ./tmp_check_temp/isolation && mkdir -p ./tmp_check_temp
	$(pg_isolation_regress_installcheck) $(ISOLATION_OPTS) --temp-instance=./tmp_check_temp/isolation $(TEMP_CHECK_CONF) $(ISOLATION)

.PHONY: format
format:
	clang-format -i src/*.cpp src/*.hpp src/core/*.cpp src/core/*.hpp test/unit/*.cpp
