#include "worker_heartbeat/client.hpp"

#include <fcntl.h>
#include <libpq-fe.h>
#include <poll.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <iostream>
#include <mutex>
#include <random>
#include <thread>

namespace worker_heartbeat {

// ---------------------------------------------------------------- errors

Error::Error(const std::string& message, std::string sqlstate)
    : std::runtime_error(message), sqlstate_(std::move(sqlstate)) {}

void throw_error(const std::string& message, const std::string& sqlstate) {
  if (sqlstate.empty()) throw ConnectionError(message, sqlstate);
  switch (error_kind_for_sqlstate(sqlstate)) {
    case ErrorKind::StaleLease:
      throw StaleLeaseError(message, sqlstate);
    case ErrorKind::Connection:
      throw ConnectionError(message, sqlstate);
    default:
      throw Error(message, sqlstate);
  }
}

namespace {

// libpq messages span lines ("server closed the connection unexpectedly\n\tThis
// probably means..."): one line each, for logs.
std::string trim_message(const char* m) {
  std::string s;
  bool space = false;
  for (const char* p = m ? m : ""; *p; ++p) {
    if (*p == '\n' || *p == '\t' || *p == ' ') {
      space = true;
      continue;
    }
    if (space && !s.empty()) s.push_back(' ');
    space = false;
    s.push_back(*p);
  }
  return s;
}

// Turns a finished PGresult into rows, or throws. Takes ownership of `res`.
std::vector<Row> consume_result(PGconn* conn, PGresult* res) {
  std::unique_ptr<PGresult, decltype(&PQclear)> guard(res, &PQclear);
  if (res == nullptr) throw ConnectionError(trim_message(PQerrorMessage(conn)), "");
  ExecStatusType st = PQresultStatus(res);
  if (st != PGRES_TUPLES_OK && st != PGRES_COMMAND_OK) {
    const char* state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
    std::string msg = trim_message(PQresultErrorMessage(res));
    if (msg.empty()) msg = trim_message(PQerrorMessage(conn));
    // A lost connection can come back as a result without SQLSTATE.
    if ((state == nullptr || *state == '\0') && PQstatus(conn) == CONNECTION_BAD)
      throw ConnectionError(msg, "");
    throw_error(msg, state ? state : "XX000");
  }
  std::vector<Row> rows;
  int nf = PQnfields(res), nt = PQntuples(res);
  auto names = std::make_shared<std::vector<std::string>>();
  for (int f = 0; f < nf; ++f) names->emplace_back(PQfname(res, f));
  rows.reserve(static_cast<size_t>(nt));
  for (int t = 0; t < nt; ++t) {
    std::vector<std::optional<std::string>> values;
    values.reserve(static_cast<size_t>(nf));
    for (int f = 0; f < nf; ++f) {
      if (PQgetisnull(res, t, f))
        values.emplace_back(std::nullopt);
      else
        values.emplace_back(std::string(PQgetvalue(res, t, f), PQgetlength(res, t, f)));
    }
    rows.emplace_back(names, std::move(values));
  }
  return rows;
}

struct ParamArrays {
  std::vector<const char*> values;
  explicit ParamArrays(const Params& p) {
    values.reserve(p.size());
    for (auto& v : p) values.push_back(v ? v->c_str() : nullptr);
  }
};

PGconn* open_connection(const std::string& conninfo, const std::string& application_name) {
  // Defaults first: a later keyword wins, so the caller's conninfo (expanded from
  // "dbname") overrides them.
  std::string app = application_name.substr(0, 63);
  const char* keys[] = {
      "fallback_application_name", "connect_timeout",  "keepalives", "keepalives_idle",
      "keepalives_interval",       "keepalives_count", "dbname",     nullptr};
  const char* vals[] = {
      app.empty() ? nullptr : app.c_str(), "10", "1", "15", "5", "3", conninfo.c_str(), nullptr};
  PGconn* conn = PQconnectdbParams(keys, vals, 1);
  if (conn == nullptr) throw ConnectionError("out of memory allocating a connection", "");
  if (PQstatus(conn) != CONNECTION_OK) {
    std::string msg = trim_message(PQerrorMessage(conn));
    PQfinish(conn);
    throw ConnectionError(msg, "");
  }
  return conn;
}

// PQexecParams with a deadline: a hung network never blocks the heartbeat
// thread for longer than `timeout`.
std::vector<Row> exec_with_timeout(PGconn* conn, const std::string& sql, const Params& params,
                                   std::chrono::milliseconds timeout) {
  using clock = std::chrono::steady_clock;
  auto deadline = clock::now() + timeout;
  ParamArrays pa(params);
  if (!PQsendQueryParams(conn, sql.c_str(), static_cast<int>(pa.values.size()), nullptr,
                         pa.values.data(), nullptr, nullptr, 0))
    throw ConnectionError(trim_message(PQerrorMessage(conn)), "");
  auto wait = [&](short events) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - clock::now());
    if (left.count() <= 0) throw ConnectionError("heartbeat statement timed out", "");
    pollfd p{PQsocket(conn), events, 0};
    int r = ::poll(&p, 1, static_cast<int>(left.count()));
    if (r < 0 && errno != EINTR) throw ConnectionError(std::strerror(errno), "");
  };
  for (;;) {
    int f = PQflush(conn);
    if (f == 0) break;
    if (f < 0) throw ConnectionError(trim_message(PQerrorMessage(conn)), "");
    wait(POLLOUT | POLLIN);
    if (!PQconsumeInput(conn)) throw ConnectionError(trim_message(PQerrorMessage(conn)), "");
  }
  std::vector<Row> rows;
  PGresult* last = nullptr;
  for (;;) {
    while (PQisBusy(conn)) {
      wait(POLLIN);
      if (!PQconsumeInput(conn)) {
        if (last) PQclear(last);
        throw ConnectionError(trim_message(PQerrorMessage(conn)), "");
      }
    }
    PGresult* r = PQgetResult(conn);
    if (r == nullptr) break;
    if (last) PQclear(last);
    last = r;
  }
  return consume_result(conn, last);
}

}  // namespace

// ---------------------------------------------------------------- Row

Row::Row(std::shared_ptr<const std::vector<std::string>> names,
         std::vector<std::optional<std::string>> values)
    : names_(std::move(names)), values_(std::move(values)) {}

bool Row::has(std::string_view column) const {
  for (auto& n : *names_)
    if (n == column) return true;
  return false;
}

const std::optional<std::string>& Row::get(std::string_view column) const {
  for (size_t i = 0; i < names_->size(); ++i)
    if ((*names_)[i] == column) return values_[i];
  throw std::out_of_range("no column \"" + std::string(column) + "\" in the row");
}

const std::string& Row::at(std::string_view column) const {
  auto& v = get(column);
  if (!v) throw std::out_of_range("column \"" + std::string(column) + "\" is NULL");
  return *v;
}

// ---------------------------------------------------------------- Connection

Connection::Connection(const std::string& conninfo, const std::string& application_name)
    : conn_(open_connection(conninfo, application_name)) {}

Connection::~Connection() {
  if (conn_) PQfinish(conn_);
}

Connection::Connection(Connection&& other) noexcept : conn_(other.conn_) { other.conn_ = nullptr; }

Connection& Connection::operator=(Connection&& other) noexcept {
  if (this != &other) {
    if (conn_) PQfinish(conn_);
    conn_ = other.conn_;
    other.conn_ = nullptr;
  }
  return *this;
}

bool Connection::ok() const { return conn_ != nullptr && PQstatus(conn_) == CONNECTION_OK; }

std::vector<Row> Connection::exec(const std::string& sql, const Params& params) {
  if (conn_ == nullptr) throw ConnectionError("connection was moved from", "");
  ParamArrays pa(params);
  PGresult* res = PQexecParams(conn_, sql.c_str(), static_cast<int>(pa.values.size()), nullptr,
                               pa.values.data(), nullptr, nullptr, 0);
  return consume_result(conn_, res);
}

std::string queue_channel(const std::string& schema, const std::string& table) {
  return "worker_heartbeat:" + schema + "." + table;
}

void Connection::listen(const std::string& channel) { exec("LISTEN " + quote_ident(channel)); }

std::optional<Notification> Connection::wait_notification(std::chrono::milliseconds timeout) {
  using clock = std::chrono::steady_clock;
  if (conn_ == nullptr) throw ConnectionError("connection was moved from", "");
  auto deadline = clock::now() + timeout;
  for (;;) {
    if (PGnotify* n = PQnotifies(conn_)) {
      Notification out{n->relname ? n->relname : "", n->extra ? n->extra : "", n->be_pid};
      PQfreemem(n);
      return out;
    }
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - clock::now());
    if (left.count() <= 0) return std::nullopt;
    pollfd p{PQsocket(conn_), POLLIN, 0};
    int r = ::poll(&p, 1, static_cast<int>(left.count()));
    if (r < 0 && errno != EINTR) throw ConnectionError(std::strerror(errno), "");
    if (r > 0 && !PQconsumeInput(conn_))
      throw ConnectionError(trim_message(PQerrorMessage(conn_)), "");
  }
}

// ---------------------------------------------------------------- signals
//
// One process-wide handler for SIGTERM and SIGINT: it records the signal and
// writes a byte to a self-pipe (both async-signal-safe). Heartbeat threads poll
// the pipe's read end; it is never drained, so every thread sees it.

namespace {

std::atomic<int> g_signal{0};
int g_sig_pipe[2] = {-1, -1};
std::mutex g_sig_mutex;
int g_sig_users = 0;
struct sigaction g_old_term, g_old_int;

extern "C" void wh_signal_handler(int sig) {
  int saved = errno;
  g_signal.store(sig);
  if (g_sig_pipe[1] >= 0) {
    ssize_t r = ::write(g_sig_pipe[1], "s", 1);
    (void)r;
  }
  errno = saved;
}

void make_pipe(int fds[2]) {
  if (::pipe(fds) != 0) throw std::system_error(errno, std::generic_category(), "pipe");
  for (int i = 0; i < 2; ++i) {
    ::fcntl(fds[i], F_SETFL, ::fcntl(fds[i], F_GETFL) | O_NONBLOCK);
    ::fcntl(fds[i], F_SETFD, FD_CLOEXEC);
  }
}

void acquire_signal_handlers() {
  std::lock_guard<std::mutex> lock(g_sig_mutex);
  if (g_sig_pipe[0] < 0) make_pipe(g_sig_pipe);
  if (g_sig_users++ == 0) {
    // A signal from an earlier generation of Heartbeats is history.
    g_signal.store(0);
    char buf[64];
    while (::read(g_sig_pipe[0], buf, sizeof buf) > 0) {
    }
    struct sigaction sa;
    std::memset(&sa, 0, sizeof sa);
    sa.sa_handler = wh_signal_handler;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    ::sigaction(SIGTERM, &sa, &g_old_term);
    ::sigaction(SIGINT, &sa, &g_old_int);
  }
}

void release_signal_handlers() {
  std::lock_guard<std::mutex> lock(g_sig_mutex);
  if (--g_sig_users == 0) {
    ::sigaction(SIGTERM, &g_old_term, nullptr);
    ::sigaction(SIGINT, &g_old_int, nullptr);
  }
}

std::string host_name() {
  char buf[256] = {0};
  if (::gethostname(buf, sizeof buf - 1) != 0) return "localhost";
  std::string h(buf);
  auto dot = h.find('.');
  if (dot != std::string::npos) h.resize(dot);
  return h.empty() ? "localhost" : h;
}

}  // namespace

// ---------------------------------------------------------------- Heartbeat

struct Heartbeat::Impl {
  HeartbeatOptions opt;
  std::string worker_id;
  std::string schema;  // quoted
  std::string host;
  std::chrono::milliseconds interval;
  bool signals = false;

  int wake[2] = {-1, -1};
  std::thread thread;

  std::mutex mu;  // guards the task state and `stopping`
  std::string status = "active";
  std::string run_id, task;
  bool dirty = false;
  bool stopping = false;
  bool stopped = false;  // stop() finished

  std::atomic<bool> stop_requested{false};
  std::atomic<bool> connected{false};
  std::atomic<std::uint64_t> beats{0}, failures{0};
  std::atomic<int> directive{static_cast<int>(Directive::Run)};
  bool legacy = false;  // heartbeat() missing or not granted: upsert_worker_heartbeat

  PGconn* conn = nullptr;  // owned by the thread
  bool send_metadata = true;
  std::mt19937_64 rng{std::random_device{}()};

  void log(const std::string& line) {
    try {
      if (opt.log)
        opt.log(line);
      else
        std::cerr << "worker_heartbeat[" << worker_id << "]: " << line << std::endl;
    } catch (...) {
    }
  }

  void poke() {
    ssize_t r = ::write(wake[1], "w", 1);
    (void)r;
  }

  void drain() {
    char buf[64];
    while (::read(wake[0], buf, sizeof buf) > 0) {
    }
  }

  void disconnect() {
    if (conn) PQfinish(conn);
    conn = nullptr;
    connected = false;
    send_metadata = true;
    legacy = false;
  }

  // Server notices on the heartbeat connection go to the log, not to stderr.
  static void on_notice(void* arg, const char* message) {
    static_cast<Impl*>(arg)->log("server: " + trim_message(message));
  }

  void ensure_connection() {
    if (conn && PQstatus(conn) == CONNECTION_OK) return;
    disconnect();
    conn = open_connection(opt.conninfo, "worker_heartbeat " + worker_id);
    PQsetNoticeProcessor(conn, &Impl::on_notice, this);
  }

  void beat() {
    std::string st, rid, tk;
    {
      std::lock_guard<std::mutex> lock(mu);
      st = status;
      rid = run_id;
      tk = task;
      dirty = false;
    }
    ensure_connection();
    // 1.3: heartbeat() answers with the directive; before 1.3 (or when only
    // upsert_worker_heartbeat is granted) the same call returns void.
    static const char* kTemplate =
        "SELECT %s.%s(p_worker_id => $1, p_worker_type => $2, "
        "p_status => $3, p_current_run_id => $4::uuid, p_current_task => $5, "
        "p_metadata => CASE WHEN $6::boolean THEN jsonb_build_object('client', "
        "'worker_heartbeat-cpp', 'host', $7::text, 'pid', $8::integer) || "
        "COALESCE($9::jsonb, '{}') END, p_session_bound => $10::boolean) AS directive";
    auto statement = [&](const char* function) {
      std::string sql(kTemplate);
      sql.replace(sql.find("%s"), 2, schema);
      sql.replace(sql.find("%s"), 2, function);
      return sql;
    };
    Params p{
        worker_id,
        opt.worker_type,
        st,
        rid.empty() ? std::nullopt : std::optional<std::string>(rid),
        tk.empty() ? std::nullopt : std::optional<std::string>(tk),
        send_metadata ? "true" : "false",
        host,
        std::to_string(::getpid()),
        opt.metadata_json.empty() ? std::nullopt : std::optional<std::string>(opt.metadata_json),
        opt.session_bound ? "true" : "false"};
    std::vector<Row> rows;
    if (!legacy) {
      try {
        rows = exec_with_timeout(conn, statement("heartbeat"), p, opt.query_timeout);
      } catch (const Error& e) {
        if (e.sqlstate() != "42883" && e.sqlstate() != "42501") throw;
        legacy = true;  // until the next connection
        log("heartbeat() unavailable (" + e.sqlstate() + "): using upsert_worker_heartbeat");
      }
    }
    if (legacy)
      rows = exec_with_timeout(conn, statement("upsert_worker_heartbeat"), p, opt.query_timeout);
    Directive d = Directive::Run;
    if (!legacy && !rows.empty()) {
      const auto& value = rows.front().get("directive");
      if (value && *value == "drain")
        d = Directive::Drain;
      else if (value && *value == "pause")
        d = Directive::Pause;
    }
    int previous = directive.exchange(static_cast<int>(d));
    if (previous != static_cast<int>(d)) log(std::string("directive: ") + directive_name(d));
    send_metadata = false;
    connected = true;
    ++beats;
  }

  // Calls stop_worker once, on a fresh connection if need be. Never throws.
  void call_stop_worker() {
    try {
      ensure_connection();
      exec_with_timeout(conn, "SELECT " + schema + ".stop_worker($1)", Params{worker_id},
                        opt.query_timeout);
      log("stopped");
    } catch (const std::exception& e) {
      log(std::string("stop_worker failed: ") + e.what());
    }
    disconnect();
  }

  void run() {
    using clock = std::chrono::steady_clock;
    unsigned attempt = 0;
    auto next = clock::now();  // first beat at once
    bool watch_signals = signals;
    for (;;) {
      bool do_beat = false;
      {
        std::lock_guard<std::mutex> lock(mu);
        if (stopping) break;
        do_beat = clock::now() >= next || (dirty && attempt == 0);
      }
      if (watch_signals && g_signal.load() != 0) {
        watch_signals = false;  // the pipe stays readable: stop polling it
        stop_requested = true;
        int sig = g_signal.load();
        log("received signal " + std::to_string(sig));
        if (opt.on_signal == OnSignal::Exit) {
          call_stop_worker();
          // Die of the signal as the process would have without us: put back
          // the disposition it had before the first Heartbeat, and resend.
          {
            std::lock_guard<std::mutex> lock(g_sig_mutex);
            ::sigaction(sig, sig == SIGTERM ? &g_old_term : &g_old_int, nullptr);
          }
          ::kill(::getpid(), sig);
          return;
        }
      }
      if (do_beat) {
        try {
          beat();
          if (attempt > 0) log("heartbeat connection restored");
          attempt = 0;
          next = clock::now() + interval;
        } catch (const std::exception& e) {
          ++failures;
          disconnect();
          std::uniform_real_distribution<double> u(0.0, 1.0);
          auto d = opt.backoff.delay(attempt, u(rng));
          if (attempt < 62) ++attempt;
          log(std::string("heartbeat failed (") + e.what() + "); retrying in " +
              std::to_string(d.count()) + " ms");
          next = clock::now() + d;
        }
      }
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(next - clock::now());
      if (left.count() < 0) left = std::chrono::milliseconds(0);
      pollfd fds[2] = {{wake[0], POLLIN, 0}, {g_sig_pipe[0], POLLIN, 0}};
      int n = watch_signals ? 2 : 1;
      int r = ::poll(fds, static_cast<nfds_t>(n), static_cast<int>(left.count()));
      if (r > 0 && (fds[0].revents & POLLIN)) drain();
    }
    call_stop_worker();
  }
};

Heartbeat::Heartbeat(HeartbeatOptions options) : impl_(std::make_unique<Impl>()) {
  Impl& m = *impl_;
  m.opt = std::move(options);
  if (m.opt.worker_type.empty()) throw std::invalid_argument("worker_type is required");
  if (m.opt.schema.empty()) throw std::invalid_argument("schema is required");
  m.host = host_name();
  m.worker_id =
      resolve_worker_id(m.opt.worker_id, m.opt.worker_type, m.host, ::getpid(), process_env());
  m.interval = resolve_interval(m.opt.interval, process_env());
  m.schema = quote_ident(m.opt.schema);
  make_pipe(m.wake);
  if (m.opt.on_signal != OnSignal::Ignore) {
    acquire_signal_handlers();
    m.signals = true;
  }
  m.thread = std::thread([this] { impl_->run(); });
}

Heartbeat::~Heartbeat() {
  stop();
  if (impl_->signals) release_signal_handlers();
  ::close(impl_->wake[0]);
  ::close(impl_->wake[1]);
}

const std::string& Heartbeat::worker_id() const { return impl_->worker_id; }
const std::string& Heartbeat::worker_type() const { return impl_->opt.worker_type; }
std::chrono::milliseconds Heartbeat::interval() const { return impl_->interval; }

void Heartbeat::update_task(const std::string& run_id, const std::string& task,
                            const std::string& status) {
  if (!run_id.empty() && !is_uuid(run_id))
    throw std::invalid_argument("run_id \"" + run_id + "\" is not a UUID");
  {
    std::lock_guard<std::mutex> lock(impl_->mu);
    impl_->run_id = run_id;
    impl_->task = task;
    impl_->status = status;
    impl_->dirty = true;
  }
  impl_->poke();
}

void Heartbeat::mark_idle() { update_task("", "", "idle"); }

void Heartbeat::stop() {
  {
    std::lock_guard<std::mutex> lock(impl_->mu);
    if (impl_->stopped) return;
    impl_->stopping = true;
    impl_->stopped = true;
  }
  impl_->stop_requested = true;
  impl_->poke();
  if (impl_->thread.joinable()) {
    if (impl_->thread.get_id() == std::this_thread::get_id())
      impl_->thread.detach();
    else
      impl_->thread.join();
  }
}

Directive Heartbeat::directive() const { return static_cast<Directive>(impl_->directive.load()); }

const char* directive_name(Directive d) noexcept {
  switch (d) {
    case Directive::Drain:
      return "drain";
    case Directive::Pause:
      return "pause";
    case Directive::Run:
      break;
  }
  return "run";
}

bool Heartbeat::stop_requested() const { return impl_->stop_requested.load(); }
bool Heartbeat::connected() const { return impl_->connected.load(); }
std::uint64_t Heartbeat::beats() const { return impl_->beats.load(); }
std::uint64_t Heartbeat::failures() const { return impl_->failures.load(); }

// ---------------------------------------------------------------- LeaseTable

LeaseTable::LeaseTable(Connection& conn, const std::string& table, const std::string& schema)
    : conn_(conn), schema_(quote_ident(schema)) {
  // regclass output is the table's name quoted as needed (and qualified when it
  // is not on the search_path): safe to splice as a type name.
  auto rows = conn_.exec(
      "SELECT $1::regclass::text AS name, (SELECT token_column::text FROM " + schema_ +
          ".lease_tables WHERE table_name = $1::regclass) AS token, (SELECT n.nspname || '.' || "
          "c.relname FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = "
          "c.relnamespace WHERE c.oid = $1::regclass) AS channel",
      Params{table});
  channel_ = "worker_heartbeat:" + rows.at(0).at("channel");
  table_ = rows.at(0).at("name");
  auto& tok = rows.at(0).get("token");
  if (!tok) throw Error("table " + table_ + " is not registered with a token column", "42704");
  token_column_ = *tok;
}

namespace {
std::optional<std::string> opt_json(const std::string& s) {
  if (s.empty()) return std::nullopt;
  return s;
}
}  // namespace

std::vector<Lease> LeaseTable::claim(const std::string& worker_id, int limit,
                                     std::chrono::milliseconds lease,
                                     const std::string& filter_json, const std::string& set_json) {
  auto rows = conn_.exec("SELECT * FROM " + schema_ + ".claim_leases(NULL::" + table_ +
                             ", $1, $2::integer, $3::interval, $4::jsonb, $5::jsonb)",
                         Params{worker_id, std::to_string(limit), interval_literal(lease),
                                opt_json(filter_json), opt_json(set_json)});
  std::vector<Lease> out;
  out.reserve(rows.size());
  for (auto& r : rows) {
    std::int64_t token = std::stoll(r.at(token_column_));
    out.push_back(Lease{token, std::move(r)});
  }
  return out;
}

std::string LeaseTable::extend(std::int64_t token, std::chrono::milliseconds lease) {
  auto rows =
      conn_.exec("SELECT " + schema_ + ".extend_lease($1::regclass, $2::bigint, $3::interval)",
                 Params{table_, std::to_string(token), interval_literal(lease)});
  return rows.at(0).get(rows.at(0).columns().at(0)).value_or("");
}

void LeaseTable::complete(std::int64_t token, const std::string& set_json) {
  conn_.exec("SELECT " + schema_ + ".complete_lease($1::regclass, $2::bigint, $3::jsonb)",
             Params{table_, std::to_string(token), opt_json(set_json)});
}

bool LeaseTable::fail(std::int64_t token, const std::string& set_json) {
  auto rows = conn_.exec("SELECT " + schema_ + ".fail_lease($1::regclass, $2::bigint, $3::jsonb)",
                         Params{table_, std::to_string(token), opt_json(set_json)});
  return rows.at(0).get(rows.at(0).columns().at(0)).value_or("f") == "t";
}

bool LeaseTable::check(std::int64_t token) {
  auto rows = conn_.exec("SELECT " + schema_ + ".check_lease($1::regclass, $2::bigint)",
                         Params{table_, std::to_string(token)});
  return rows.at(0).get(rows.at(0).columns().at(0)).value_or("f") == "t";
}

}  // namespace worker_heartbeat
