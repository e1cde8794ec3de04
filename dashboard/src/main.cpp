// worker-heartbeat-dashboard: a read-only web page, /metrics and a JSON API
// over the worker_heartbeat extension. One libpq connection answers requests,
// another LISTENs on channel worker_heartbeat and relays every notification to
// the open pages as server-sent events.
#include <httplib.h>
#include <signal.h>

#include <atomic>
#include <charconv>
#include <cstdio>
#include <memory>
#include <thread>

#include "hub.hpp"
#include "index_html.hpp"
#include "pg.hpp"
#include "state.hpp"
#include "util.hpp"

namespace {

using whd::json_quote;

constexpr std::size_t kMaxStreams = 24;  // open /events streams (each holds a thread)
constexpr std::size_t kThreads = kMaxStreams + 8;

void set_common_headers(httplib::Response& res) {
  res.set_header("Cache-Control", "no-store");
  res.set_header("X-Content-Type-Options", "nosniff");
  res.set_header("Referrer-Policy", "no-referrer");
}

void send_error(httplib::Response& res, int status, const std::string& message) {
  res.status = status;
  set_common_headers(res);
  res.set_content("{\"error\":" + json_quote(message) + "}\n", "application/json");
}

std::string discover_schema(whd::QueryConn& db, std::string& error) {
  auto v = db.value(
      "SELECT n.nspname FROM pg_catalog.pg_extension AS e "
      "JOIN pg_catalog.pg_namespace AS n ON n.oid = e.extnamespace "
      "WHERE e.extname = 'worker_heartbeat'",
      {}, error);
  if (!v) return "";
  if (v->empty()) error = "the extension worker_heartbeat is not installed in this database";
  return *v;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  whd::ParseResult parsed = whd::parse_args(args);
  if (!parsed.options) {
    std::fprintf(stderr, "worker-heartbeat-dashboard: %s\n\n%s", parsed.error.c_str(),
                 whd::usage().c_str());
    return 2;
  }
  const whd::Options opt = *parsed.options;
  if (opt.help) {
    std::fputs(whd::usage().c_str(), stdout);
    return 0;
  }

  std::string error;
  auto params = whd::readonly_params(opt.conninfo, error);
  if (!params) {
    std::fprintf(stderr, "worker-heartbeat-dashboard: %s\n", error.c_str());
    return 2;
  }

  // Signals are handled by one thread with sigwait; block them everywhere else.
  sigset_t sigs;
  sigemptyset(&sigs);
  sigaddset(&sigs, SIGINT);
  sigaddset(&sigs, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &sigs, nullptr);
  signal(SIGPIPE, SIG_IGN);

  whd::QueryConn db(*params);
  std::string schema;
  if (opt.schema) {
    schema = *opt.schema;
  } else {
    schema = discover_schema(db, error);
    if (schema.empty()) {
      std::fprintf(stderr, "worker-heartbeat-dashboard: %s\n", error.c_str());
      return 1;
    }
  }
  // Fail early on a wrong schema or missing privileges, with the server's words.
  const std::string s = whd::quote_ident(schema);
  if (!db.value("SELECT " + s + ".get_worker_health_summary()::text", {}, error)) {
    std::fprintf(stderr, "worker-heartbeat-dashboard: %s\n", error.c_str());
    return 1;
  }
  auto can_write = db.value(
      "SELECT pg_catalog.bool_or(r.rolsuper) OR pg_catalog.has_table_privilege("
      "$1, 'INSERT, UPDATE, DELETE') FROM pg_catalog.pg_roles AS r WHERE r.rolname = current_user",
      {s + ".worker_heartbeats"}, error);
  if (can_write && *can_write == "t") {
    std::fprintf(stderr,
                 "worker-heartbeat-dashboard: warning: role can write to %s.worker_heartbeats; "
                 "connect as the read-only monitoring role (the session is read-only anyway)\n",
                 s.c_str());
  }

  whd::EventHub hub;
  std::atomic<bool> stop{false};
  std::thread listener([&] { whd::listen_loop(*params, hub, stop); });

  httplib::Server svr;
  svr.new_task_queue = [] { return new httplib::ThreadPool(kThreads); };
  svr.set_keep_alive_timeout(5);

  int port = opt.listen_port;
  const bool loopback = whd::is_loopback_host(opt.listen_host);
  svr.set_pre_routing_handler([&](const httplib::Request& req, httplib::Response& res) {
    // A page on another site could reach a loopback server through DNS rebinding;
    // only answer requests addressed to this machine by name.
    if (loopback &&
        !whd::host_header_allowed(req.get_header_value("Host"), opt.listen_host, port)) {
      send_error(res, 421, "unexpected Host header");
      return httplib::Server::HandlerResponse::Handled;
    }
    return httplib::Server::HandlerResponse::Unhandled;
  });

  svr.Get("/", [&](const httplib::Request&, httplib::Response& res) {
    set_common_headers(res);
    res.set_header("Content-Security-Policy",
                   "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
                   "img-src data:; connect-src 'self'; base-uri 'none'; form-action 'none'");
    res.set_content(whd::kIndexHtml, "text/html; charset=utf-8");
  });

  svr.Get("/metrics", [&](const httplib::Request&, httplib::Response& res) {
    std::string err;
    auto v = db.value("SELECT " + s + ".metrics()", {}, err);
    if (!v) return send_error(res, 503, err);
    set_common_headers(res);
    res.set_content(*v, "text/plain; version=0.0.4; charset=utf-8");
  });

  svr.Get("/api/summary", [&](const httplib::Request&, httplib::Response& res) {
    std::string err;
    auto v = db.value("SELECT " + s + ".get_worker_health_summary()::text", {}, err);
    if (!v) return send_error(res, 503, err);
    set_common_headers(res);
    res.set_content(*v + "\n", "application/json");
  });

  const std::string probe_query = whd::probe_sql();
  svr.Get("/api/state", [&](const httplib::Request&, httplib::Response& res) {
    std::string err;
    // What this catalog has (1.3's worker_directives) and what the role may call
    // (reaper_status()): asked each time, so an ALTER EXTENSION UPDATE or a
    // GRANT shows without a restart.
    auto features = db.value(probe_query, {s}, err);
    if (!features) return send_error(res, 503, err);
    auto v = db.value(whd::state_sql(s, whd::parse_features(*features)), {schema}, err);
    if (!v) return send_error(res, 503, err);
    set_common_headers(res);
    res.set_content(*v + "\n", "application/json");
  });

  svr.Get("/healthz", [&](const httplib::Request&, httplib::Response& res) {
    set_common_headers(res);
    res.set_content("{\"streams\":" + std::to_string(hub.subscribers()) + "}\n",
                    "application/json");
  });

  svr.Get("/events", [&](const httplib::Request& req, httplib::Response& res) {
    if (!hub.try_subscribe(kMaxStreams)) return send_error(res, 503, "too many open streams");
    struct Stream {
      std::uint64_t cursor;
      bool greeted = false;
    };
    auto st = std::make_shared<Stream>(Stream{hub.last_id()});
    // A reconnecting EventSource sends the id of the last event it saw.
    const std::string last = req.get_header_value("Last-Event-ID");
    std::uint64_t seen = 0;
    auto [ptr, ec] = std::from_chars(last.data(), last.data() + last.size(), seen);
    if (!last.empty() && ec == std::errc() && ptr == last.data() + last.size() &&
        seen <= st->cursor) {
      st->cursor = seen;
    }
    set_common_headers(res);
    res.set_header("X-Accel-Buffering", "no");
    res.set_chunked_content_provider(
        "text/event-stream",
        [&hub, st](std::size_t, httplib::DataSink& sink) {
          std::string out;
          if (!st->greeted) {
            st->greeted = true;
            out = "retry: 1000\n\n" + whd::sse_frame("hello", "{\"event\":\"hello\"}");
            return sink.write(out.data(), out.size());
          }
          whd::HubBatch b = hub.wait_after(st->cursor, std::chrono::seconds(10));
          if (b.closed) {
            sink.done();
            return true;
          }
          if (b.gap) out += whd::sse_frame("status", "{\"event\":\"dashboard\",\"state\":\"gap\"}");
          for (const whd::HubEvent& e : b.events) {
            out += whd::sse_frame(e.name, e.data, e.id);
            st->cursor = e.id;
          }
          if (out.empty()) out = whd::sse_comment("ping");
          return sink.write(out.data(), out.size());
        },
        [&hub](bool) { hub.unsubscribe(); });
  });

  if (port == 0) {
    port = svr.bind_to_any_port(opt.listen_host);
    if (port <= 0) {
      std::fprintf(stderr, "worker-heartbeat-dashboard: cannot listen on %s\n",
                   opt.listen_host.c_str());
      stop = true;
      listener.join();
      return 1;
    }
  } else if (!svr.bind_to_port(opt.listen_host, port)) {
    std::fprintf(stderr, "worker-heartbeat-dashboard: cannot listen on %s:%d\n",
                 opt.listen_host.c_str(), port);
    stop = true;
    listener.join();
    return 1;
  }
  if (!loopback) {
    std::fprintf(stderr,
                 "worker-heartbeat-dashboard: warning: listening on %s, not loopback; the page "
                 "has no authentication\n",
                 opt.listen_host.c_str());
  }
  const bool v6 = opt.listen_host.find(':') != std::string::npos;
  std::printf("worker-heartbeat-dashboard: schema %s, listening on http://%s%s%s:%d/\n",
              schema.c_str(), v6 ? "[" : "", opt.listen_host.c_str(), v6 ? "]" : "", port);
  std::fflush(stdout);

  std::thread signals([&] {
    int sig = 0;
    sigwait(&sigs, &sig);
    stop = true;
    hub.close();
    svr.stop();
  });
  signals.detach();

  svr.listen_after_bind();
  stop = true;
  hub.close();
  listener.join();
  return 0;
}
