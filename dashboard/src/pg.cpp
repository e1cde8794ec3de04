#include "pg.hpp"

#include <poll.h>

#include <chrono>
#include <cstdio>
#include <memory>
#include <thread>

#include "util.hpp"

namespace whd {

namespace {

const char* const kReadOnlyOptions = "-c default_transaction_read_only=on -c statement_timeout=5s";

struct ResultDeleter {
  void operator()(PGresult* r) const { PQclear(r); }
};
using Result = std::unique_ptr<PGresult, ResultDeleter>;

std::string trim_error(const char* msg) {
  std::string s = msg ? msg : "";
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s;
}

std::string status_json(const char* state, const std::string& detail) {
  return std::string("{\"event\":\"dashboard\",\"state\":") + json_quote(state) +
         ",\"detail\":" + json_quote(detail) + "}";
}

}  // namespace

std::optional<ConnParams> readonly_params(const std::string& conninfo, std::string& error) {
  char* err = nullptr;
  PQconninfoOption* opts = PQconninfoParse(conninfo.c_str(), &err);
  if (opts == nullptr) {
    error = "invalid --conninfo: " + trim_error(err ? err : "out of memory");
    if (err) PQfreemem(err);
    return std::nullopt;
  }
  ConnParams p;
  bool have_options = false, have_appname = false;
  for (PQconninfoOption* o = opts; o->keyword != nullptr; ++o) {
    std::string key = o->keyword;
    if (key == "options") {
      std::string v = o->val ? o->val : "";
      p.kv.emplace_back(key, v.empty() ? kReadOnlyOptions : v + " " + kReadOnlyOptions);
      have_options = true;
    } else if (o->val != nullptr) {
      if (key == "application_name") have_appname = true;
      p.kv.emplace_back(key, o->val);
    }
  }
  PQconninfoFree(opts);
  if (!have_options) p.kv.emplace_back("options", kReadOnlyOptions);
  if (!have_appname) p.kv.emplace_back("application_name", "worker_heartbeat dashboard");
  return p;
}

PGconn* connect_readonly(const ConnParams& params, std::string& error) {
  std::vector<const char*> keys, values;
  for (const auto& [k, v] : params.kv) {
    keys.push_back(k.c_str());
    values.push_back(v.c_str());
  }
  keys.push_back(nullptr);
  values.push_back(nullptr);
  PGconn* c = PQconnectdbParams(keys.data(), values.data(), 0);
  if (c == nullptr || PQstatus(c) != CONNECTION_OK) {
    error = c ? trim_error(PQerrorMessage(c)) : "out of memory";
    if (c) PQfinish(c);
    return nullptr;
  }
  // Belt and braces: refuse to work on a session that could write.
  Result r(PQexec(c, "SHOW default_transaction_read_only"));
  if (PQresultStatus(r.get()) != PGRES_TUPLES_OK || PQntuples(r.get()) != 1 ||
      std::string(PQgetvalue(r.get(), 0, 0)) != "on") {
    error = "the session is not read-only (default_transaction_read_only is not on)";
    PQfinish(c);
    return nullptr;
  }
  return c;
}

QueryConn::~QueryConn() {
  if (conn_) PQfinish(conn_);
}

std::optional<std::string> QueryConn::run_once(const std::string& sql,
                                               const std::vector<std::string>& args,
                                               std::string& error, bool& connection_lost) {
  connection_lost = false;
  if (conn_ == nullptr) {
    conn_ = connect_readonly(params_, error);
    if (conn_ == nullptr) return std::nullopt;
  }
  std::vector<const char*> values;
  for (const auto& a : args) values.push_back(a.c_str());
  Result r(PQexecParams(conn_, sql.c_str(), static_cast<int>(values.size()), nullptr, values.data(),
                        nullptr, nullptr, 0));
  if (PQresultStatus(r.get()) != PGRES_TUPLES_OK) {
    error = trim_error(PQresultErrorMessage(r.get()));
    if (error.empty()) error = trim_error(PQerrorMessage(conn_));
    if (PQstatus(conn_) != CONNECTION_OK) {
      PQfinish(conn_);
      conn_ = nullptr;
      connection_lost = true;
    }
    return std::nullopt;
  }
  if (PQntuples(r.get()) < 1 || PQnfields(r.get()) < 1 || PQgetisnull(r.get(), 0, 0)) {
    return std::string();
  }
  return std::string(PQgetvalue(r.get(), 0, 0),
                     static_cast<std::size_t>(PQgetlength(r.get(), 0, 0)));
}

std::optional<std::string> QueryConn::value(const std::string& sql,
                                            const std::vector<std::string>& args,
                                            std::string& error) {
  std::lock_guard<std::mutex> lock(mu_);
  bool lost = false;
  auto v = run_once(sql, args, error, lost);
  if (!v && lost) v = run_once(sql, args, error, lost);  // one retry on a fresh connection
  return v;
}

void listen_loop(const ConnParams& params, EventHub& hub, const std::atomic<bool>& stop) {
  using namespace std::chrono_literals;
  auto backoff = 250ms;
  bool was_connected = false;
  while (!stop) {
    std::string error;
    PGconn* c = connect_readonly(params, error);
    if (c != nullptr) {
      Result r(PQexec(c, "LISTEN worker_heartbeat"));
      if (PQresultStatus(r.get()) != PGRES_COMMAND_OK) {
        error = trim_error(PQresultErrorMessage(r.get()));
        PQfinish(c);
        c = nullptr;
      }
    }
    if (c == nullptr) {
      if (was_connected) hub.publish("status", status_json("disconnected", error));
      was_connected = false;
      std::fprintf(stderr, "worker-heartbeat-dashboard: LISTEN connection failed: %s\n",
                   error.c_str());
      auto until = std::chrono::steady_clock::now() + backoff;
      while (!stop && std::chrono::steady_clock::now() < until) std::this_thread::sleep_for(50ms);
      backoff = std::min<std::chrono::milliseconds>(backoff * 2, 5000ms);
      continue;
    }
    backoff = 250ms;
    was_connected = true;
    // Events may have been missed while disconnected: tell pages to reload.
    hub.publish("status", status_json("listening", ""));
    while (!stop) {
      pollfd pfd{PQsocket(c), POLLIN, 0};
      int n = ::poll(&pfd, 1, 250);
      if (n < 0) continue;
      if (n > 0 && PQconsumeInput(c) == 0) break;
      while (PGnotify* note = PQnotifies(c)) {
        hub.publish("wh", note->extra ? note->extra : "{}");
        PQfreemem(note);
      }
      if (PQstatus(c) != CONNECTION_OK) break;
    }
    if (!stop) {
      std::string why = trim_error(PQerrorMessage(c));
      std::fprintf(stderr, "worker-heartbeat-dashboard: LISTEN connection lost: %s\n", why.c_str());
      hub.publish("status", status_json("disconnected", why));
      was_connected = false;
    }
    PQfinish(c);
  }
}

}  // namespace whd
