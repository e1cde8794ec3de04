// The SQL behind /api/state: the whole page state in one round trip. What the
// query may read depends on the catalog (an extension not yet updated to 1.3
// has no worker_directives) and on the role's privileges (reaper_status() may
// not be granted): the server probes both (probe_sql) and builds the query for
// what is there. Pure string building, unit-tested in test/unit_tests.cpp.
#pragma once

#include <string>

namespace whd {

struct StateFeatures {
  // worker_directives (1.3, drain / pause) exists and the role may read it.
  bool directives = false;
  // reaper_status() may be called (every database's reaper, issue 18).
  bool reapers = false;
};

// One row, one column: "directives,reapers" (the features present, comma
// separated, possibly empty). $1 = the quoted schema.
std::string probe_sql();

// Parses probe_sql()'s answer.
StateFeatures parse_features(const std::string& probe);

// The state query for schema `s` (already quoted). $1 = the schema's name.
std::string state_sql(const std::string& s, const StateFeatures& f);

// reaper_status().state values of a database that is being reaped (a reaper
// runs or it is served in rotation); any other state means it is not.
extern const char* const kReapedStates[];

}  // namespace whd
