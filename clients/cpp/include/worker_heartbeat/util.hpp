// Pure helpers of the worker_heartbeat C++ client: no libpq, no threads, no
// globals. They are public so that workers can reuse them, and they are what
// the unit tests cover.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>

namespace worker_heartbeat {

// Reads an environment variable; returns nullopt when it is unset.
using EnvLookup = std::function<std::optional<std::string>(const std::string&)>;

// The process environment (std::getenv).
EnvLookup process_env();

// "company_research" -> "COMPANY_RESEARCH_WORKER_ID" (letters upper-cased, every
// other character that is not a digit becomes '_').
std::string worker_id_env_var(std::string_view worker_type);

// "company_research", "db1", 4242 -> "company-research-db1-4242" (the seed's
// "company-research-12345" with the host added).
std::string default_worker_id(std::string_view worker_type, std::string_view host, long pid);

// The worker id to use: `explicit_id` if not empty, else the environment
// variable worker_id_env_var(type) if set and not empty, else
// default_worker_id(type, host, pid).
std::string resolve_worker_id(std::string_view explicit_id, std::string_view worker_type,
                              std::string_view host, long pid, const EnvLookup& env);

// Parses a heartbeat interval such as "30" (seconds, as in the seed), "2.5",
// "500ms", "10s" or "1min". Returns nullopt for anything else, and for values
// that are not positive.
std::optional<std::chrono::milliseconds> parse_interval(std::string_view text);

// The interval to use: `configured` if positive, else WORKER_HEARTBEAT_INTERVAL
// from `env`, else 30 s. Throws std::invalid_argument when the variable is set
// but does not parse.
std::chrono::milliseconds resolve_interval(std::chrono::milliseconds configured,
                                           const EnvLookup& env);

// Exponential reconnect backoff: initial * 2^attempt, capped at `max`, then
// scaled by a jitter factor in [1 - jitter, 1]. `unit_random` is a number in
// [0, 1) supplied by the caller (so the function stays deterministic).
struct Backoff {
  std::chrono::milliseconds initial{250};
  std::chrono::milliseconds max{30000};
  double jitter = 0.5;

  std::chrono::milliseconds delay(unsigned attempt, double unit_random) const;
};

// What a SQLSTATE means to a worker.
enum class ErrorKind {
  StaleLease,    // WH001: the lease token is stale; nothing was changed
  Connection,    // class 08, admin shutdown / crash (57P01..57P03), too many connections
  InvalidInput,  // classes 22 and 42 (bad argument, unknown table or column, privileges)
  Other,
};
ErrorKind error_kind_for_sqlstate(std::string_view sqlstate);

// True for errors worth retrying on a new connection.
bool is_transient(ErrorKind kind);

// Double-quoted SQL identifier: ab"c -> "ab""c".
std::string quote_ident(std::string_view ident);

// True for the textual form of a UUID (8-4-4-4-12 hex digits, any case).
bool is_uuid(std::string_view text);

// The PostgreSQL interval literal for a duration, in milliseconds: "1500 milliseconds".
std::string interval_literal(std::chrono::milliseconds d);

}  // namespace worker_heartbeat
