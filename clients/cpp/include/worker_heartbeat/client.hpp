// worker_heartbeat C++ client: the seed's WorkerHeartbeat as an RAII object,
// plus a thin typed API for the extension's fenced leases (1.1).
//
//   worker_heartbeat::HeartbeatOptions o;
//   o.worker_type = "company_research";      // id: $COMPANY_RESEARCH_WORKER_ID
//   o.session_bound = true;                  //  or company-research-<host>-<pid>
//   worker_heartbeat::Heartbeat hb(o);       // beats every $WORKER_HEARTBEAT_INTERVAL s
//   hb.update_task(run_id, "Researching example.com");
//   hb.mark_idle();                          // ~Heartbeat() calls stop_worker
//
// Every statement is sent with parameters (PQexecParams); the extension's schema
// is configurable and always quoted. Link with pkg-config worker_heartbeat_client.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "worker_heartbeat/util.hpp"

struct pg_conn;  // libpq's PGconn

namespace worker_heartbeat {

// Any failure reported by the server or libpq. sqlstate() is empty when libpq
// itself failed (no connection, timeout).
class Error : public std::runtime_error {
 public:
  Error(const std::string& message, std::string sqlstate);
  const std::string& sqlstate() const noexcept { return sqlstate_; }

 private:
  std::string sqlstate_;
};

// The connection is gone or could not be made (class 08, server shutdown, timeout).
class ConnectionError : public Error {
 public:
  using Error::Error;
};

// SQLSTATE WH001: the lease token is stale (the row was released, completed or
// claimed again since the token was handed out). Nothing was changed.
class StaleLeaseError : public Error {
 public:
  using Error::Error;
};

// Throws the Error subclass that fits `sqlstate` (see error_kind_for_sqlstate).
[[noreturn]] void throw_error(const std::string& message, const std::string& sqlstate);

// One result row: column name -> text value (nullopt for SQL NULL).
class Row {
 public:
  Row(std::shared_ptr<const std::vector<std::string>> names,
      std::vector<std::optional<std::string>> values);
  const std::vector<std::string>& columns() const { return *names_; }
  bool has(std::string_view column) const;
  const std::optional<std::string>& get(std::string_view column) const;  // throws if unknown
  const std::string& at(std::string_view column) const;  // throws if unknown or NULL

 private:
  std::shared_ptr<const std::vector<std::string>> names_;
  std::vector<std::optional<std::string>> values_;
};

using Params = std::vector<std::optional<std::string>>;

struct Notification {
  std::string channel;
  std::string payload;
  int backend_pid = 0;
};

// The channel on which the extension (1.1) announces released leases of a
// registered table: "worker_heartbeat:<schema>.<table>".
std::string queue_channel(const std::string& schema, const std::string& table);

// An owned libpq connection. `conninfo` is a libpq connection string or URI;
// empty means the PG* environment variables. Not thread-safe: one per thread.
class Connection {
 public:
  explicit Connection(const std::string& conninfo = "", const std::string& application_name = "");
  ~Connection();
  Connection(Connection&& other) noexcept;
  Connection& operator=(Connection&& other) noexcept;
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;

  // Runs one statement with text parameters ($1, $2, ...); throws Error.
  std::vector<Row> exec(const std::string& sql, const Params& params = {});
  bool ok() const;
  pg_conn* native() const { return conn_; }

  // LISTEN on `channel` (quoted), then wait for notifications: the next one,
  // or nullopt after `timeout`. Throws ConnectionError if the connection drops.
  void listen(const std::string& channel);
  std::optional<Notification> wait_notification(std::chrono::milliseconds timeout);

 private:
  pg_conn* conn_ = nullptr;
};

// What a SIGTERM / SIGINT does to a process that has a Heartbeat.
enum class OnSignal {
  Exit,    // the seed's behaviour: stop_worker, then die of the signal as usual
  Flag,    // stop_requested() becomes true and beats go on; the worker finishes
           // its task, returns, and ~Heartbeat() calls stop_worker
  Ignore,  // install no handler
};

struct HeartbeatOptions {
  std::string worker_type;                // required, e.g. "company_research"
  std::string worker_id;                  // empty: $<TYPE>_WORKER_ID or <type>-<host>-<pid>
  std::string conninfo;                   // empty: PG* environment variables
  std::string schema = "pm_pipeline";     // the extension's schema
  std::chrono::milliseconds interval{0};  // 0: $WORKER_HEARTBEAT_INTERVAL seconds, else 30 s
  bool session_bound = false;  // the worker dies with the heartbeat's session (p_session_bound)
  std::string metadata_json;   // JSON object merged into metadata on each (re)connect
  OnSignal on_signal = OnSignal::Exit;
  Backoff backoff;                                 // reconnect delays
  std::chrono::milliseconds query_timeout{10000};  // per statement on the heartbeat connection
  std::function<void(const std::string&)> log;     // default: one line on stderr
};

// What the operators want of this worker (extension 1.3: drain_workers(),
// pause_workers(), resume_workers()), as the last heartbeat() answered.
enum class Directive {
  Run,    // claim and work
  Drain,  // claim nothing more, finish what you hold, then stop (stop_worker)
  Pause,  // claim nothing until the directive is Run again; keep running
};

// "run", "drain", "pause".
const char* directive_name(Directive d) noexcept;

// A background thread that keeps the worker's heartbeat row fresh on its own
// connection. Heartbeat failures never throw into the worker: the thread logs,
// reconnects with backoff and beats again. Thread-safe.
class Heartbeat {
 public:
  explicit Heartbeat(HeartbeatOptions options);  // starts the thread; throws on bad options
  ~Heartbeat();                                  // stop()
  Heartbeat(const Heartbeat&) = delete;
  Heartbeat& operator=(const Heartbeat&) = delete;

  const std::string& worker_id() const;
  const std::string& worker_type() const;
  std::chrono::milliseconds interval() const;

  // Records the current task and beats at once. `run_id` is a UUID or empty;
  // std::invalid_argument otherwise.
  void update_task(const std::string& run_id, const std::string& task,
                   const std::string& status = "processing");
  void mark_idle();

  // Ends the thread and calls stop_worker (releasing the worker's leases).
  // Idempotent; waits at most about two query_timeouts.
  void stop();

  // The directive of the last heartbeat (1.3 heartbeat(); always Run against
  // an older extension, or a role granted only upsert_worker_heartbeat).
  // claim_leases() hands nothing to a draining or paused worker anyway.
  Directive directive() const;
  bool draining() const { return directive() == Directive::Drain; }
  bool paused() const { return directive() == Directive::Pause; }

  bool stop_requested() const;  // stop() was called or a signal arrived
  bool connected() const;       // the last beat went through
  std::uint64_t beats() const;  // heartbeats sent successfully
  std::uint64_t failures() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

struct Lease {
  std::int64_t token;
  Row row;  // every column of the claimed row
};

// The fenced-lease functions (extension 1.1) on one registered table, through a
// connection the caller owns. The table name is resolved like a regclass.
class LeaseTable {
 public:
  LeaseTable(Connection& conn, const std::string& table, const std::string& schema = "pm_pipeline");

  // claim_leases: up to `limit` rows, oldest first, each with a new token.
  // filter_json / set_json: JSON objects or empty for NULL.
  std::vector<Lease> claim(const std::string& worker_id, int limit = 1,
                           std::chrono::milliseconds lease = std::chrono::minutes(5),
                           const std::string& filter_json = "", const std::string& set_json = "");
  // extend_lease: the new deadline (timestamptz text). Throws StaleLeaseError.
  std::string extend(std::int64_t token, std::chrono::milliseconds lease = std::chrono::minutes(5));
  // complete_lease. Throws StaleLeaseError.
  void complete(std::int64_t token, const std::string& set_json = "");
  // fail_lease: false when that was the last attempt. Throws StaleLeaseError.
  bool fail(std::int64_t token, const std::string& set_json = "");
  // check_lease: true, or throws StaleLeaseError.
  bool check(std::int64_t token);

  const std::string& qualified_name() const { return table_; }
  // queue_channel() of this table: LISTEN on it to wake when leases come back.
  const std::string& channel() const { return channel_; }
  const std::string& token_column() const { return token_column_; }

 private:
  Connection& conn_;
  std::string schema_;        // quoted
  std::string table_;         // regclass output, quoted as needed
  std::string token_column_;  // from lease_tables
  std::string channel_;
};

}  // namespace worker_heartbeat
