// libpq side of the dashboard: read-only connections, one-value queries, and
// the LISTEN loop that feeds the EventHub.
#pragma once

#include <libpq-fe.h>

#include <atomic>
#include <mutex>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "hub.hpp"

namespace whd {

// Keyword/value pairs for PQconnectdbParams: the user's conninfo (string or URI)
// with "-c default_transaction_read_only=on -c statement_timeout=5s" appended
// to its options, and an application_name unless it sets one.
struct ConnParams {
  std::vector<std::pair<std::string, std::string>> kv;
};
std::optional<ConnParams> readonly_params(const std::string& conninfo, std::string& error);

// Opens a connection and checks that it is really read-only.
PGconn* connect_readonly(const ConnParams& params, std::string& error);

// A connection shared by request handlers, one query at a time; reconnects
// when the server went away.
class QueryConn {
 public:
  explicit QueryConn(ConnParams params) : params_(std::move(params)) {}
  ~QueryConn();
  QueryConn(const QueryConn&) = delete;
  QueryConn& operator=(const QueryConn&) = delete;

  // First column of the first row as text. Returns nullopt and sets error on failure.
  std::optional<std::string> value(const std::string& sql, const std::vector<std::string>& args,
                                   std::string& error);

 private:
  std::optional<std::string> run_once(const std::string& sql, const std::vector<std::string>& args,
                                      std::string& error, bool& connection_lost);
  ConnParams params_;
  std::mutex mu_;
  PGconn* conn_ = nullptr;
};

// LISTEN worker_heartbeat on a connection of its own until `stop` is set;
// publishes each payload as an SSE event "wh", and "status" events when the
// connection is lost or back (the page reloads its state then).
void listen_loop(const ConnParams& params, EventHub& hub, const std::atomic<bool>& stop);

}  // namespace whd
