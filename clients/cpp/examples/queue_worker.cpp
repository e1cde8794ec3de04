// Example worker: claims rows from a registered queue table (examples/sql/queue.sql),
// "works" on each for --work-ms, completes it, and heartbeats all the while.
//
//   worker_heartbeat_queue_worker --table tasks --work-ms 200 --exit-when-empty
//
// Connection: --db CONNINFO, else $DATABASE_URL, else the PG* variables.
// Claims use the fenced-lease functions (extension 1.1) when they exist
// (--mode auto, the default), or a plain UPDATE ... FOR UPDATE SKIP LOCKED on
// the 1.0 API (--mode plain). SIGTERM / SIGINT: the current task is finished,
// then the worker stops (stop_worker) and exits 0 (--on-signal exit: the
// seed's behaviour, stop_worker at once and die of the signal).
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <iostream>
#include <optional>
#include <string>
#include <thread>
#include <worker_heartbeat/client.hpp>

namespace wh = worker_heartbeat;
using namespace std::chrono;

namespace {

struct Args {
  std::string db, schema = "pm_pipeline", table = "tasks", type = "queue_worker", id;
  std::string mode = "auto";
  long work_ms = 200, lease_ms = 30000, idle_ms = 500, max_tasks = -1;
  int batch = 1;
  bool session_bound = true, exit_when_empty = false, extend = true;
  wh::OnSignal on_signal = wh::OnSignal::Flag;
};

[[noreturn]] void usage(const char* msg) {
  std::cerr << "queue_worker: " << msg << "\n"
            << "usage: worker_heartbeat_queue_worker [--db CONNINFO] [--schema S] [--table T]\n"
               "  [--type TYPE] [--id ID] [--mode auto|fenced|plain] [--work-ms N] [--lease-ms N]\n"
               "  [--idle-ms N] [--batch N] [--max-tasks N] [--exit-when-empty]\n"
               "  [--no-session-bound] [--no-extend] [--on-signal flag|exit]\n";
  std::exit(2);
}

Args parse(int argc, char** argv) {
  Args a;
  if (const char* u = std::getenv("DATABASE_URL")) a.db = u;
  auto value = [&](int& i) -> std::string {
    if (i + 1 >= argc) usage((std::string(argv[i]) + " needs a value").c_str());
    return argv[++i];
  };
  auto number = [&](int& i) -> long {
    std::string v = value(i);
    char* end = nullptr;
    long n = std::strtol(v.c_str(), &end, 10);
    if (v.empty() || *end != '\0' || n < 0) usage(("bad number: " + v).c_str());
    return n;
  };
  for (int i = 1; i < argc; ++i) {
    std::string k = argv[i];
    if (k == "--db")
      a.db = value(i);
    else if (k == "--schema")
      a.schema = value(i);
    else if (k == "--table")
      a.table = value(i);
    else if (k == "--type")
      a.type = value(i);
    else if (k == "--id")
      a.id = value(i);
    else if (k == "--mode")
      a.mode = value(i);
    else if (k == "--work-ms")
      a.work_ms = number(i);
    else if (k == "--lease-ms")
      a.lease_ms = number(i);
    else if (k == "--idle-ms")
      a.idle_ms = number(i);
    else if (k == "--batch")
      a.batch = static_cast<int>(number(i));
    else if (k == "--max-tasks")
      a.max_tasks = number(i);
    else if (k == "--exit-when-empty")
      a.exit_when_empty = true;
    else if (k == "--no-session-bound")
      a.session_bound = false;
    else if (k == "--no-extend")
      a.extend = false;
    else if (k == "--on-signal") {
      std::string v = value(i);
      if (v == "flag")
        a.on_signal = wh::OnSignal::Flag;
      else if (v == "exit")
        a.on_signal = wh::OnSignal::Exit;
      else
        usage("--on-signal is flag or exit");
    } else if (k == "--help" || k == "-h")
      usage("help");
    else
      usage(("unknown option " + k).c_str());
  }
  if (a.mode != "auto" && a.mode != "fenced" && a.mode != "plain") usage("bad --mode");
  if (a.batch < 1 || a.lease_ms < 1000) usage("--batch >= 1 and --lease-ms >= 1000");
  return a;
}

std::string json_string(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (static_cast<unsigned char>(c) < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\u%04x", c);
      out += buf;
    } else {
      out += c;
    }
  }
  return out + "\"";
}

void say(const std::string& id, const std::string& line) {
  std::cout << "[" << id << "] " << line << std::endl;
}

struct Task {
  std::string id, run_id, payload;
  std::int64_t token = 0;  // fenced mode
};

class Queue {
 public:
  Queue(wh::Connection& conn, const Args& a, const std::string& worker_id)
      : conn_(conn), a_(a), worker_id_(worker_id) {
    table_ = conn_.exec("SELECT $1::regclass::text AS t", wh::Params{a.table}).at(0).at("t");
    bool have_fenced = conn_
                           .exec("SELECT to_regprocedure($1) IS NOT NULL AS f",
                                 wh::Params{wh::quote_ident(a.schema) +
                                            ".claim_leases(anyelement,text,integer,interval,"
                                            "jsonb,jsonb)"})
                           .at(0)
                           .at("f") == "t";
    fenced_ = a.mode == "fenced" || (a.mode == "auto" && have_fenced);
    if (fenced_) leases_.emplace(conn_, a.table, a.schema);
  }
  bool fenced() const { return fenced_; }

  // With fenced leases the extension NOTIFYs the table's channel when leases
  // come back: idle workers wait for that instead of polling.
  void listen() {
    if (fenced_) conn_.listen(leases_->channel());
  }

  // Waits up to `ms` for work: a notification (fenced), or just the time (plain).
  void idle_wait(long ms, const std::function<bool()>& stop) {
    auto end = steady_clock::now() + milliseconds(ms);
    while (!stop() && steady_clock::now() < end) {
      auto slice = std::min<milliseconds>(milliseconds(250),
                                          duration_cast<milliseconds>(end - steady_clock::now()));
      if (!fenced_) {
        std::this_thread::sleep_for(slice);
      } else if (auto n = conn_.wait_notification(slice)) {
        return;  // {"event":"leases_released","count":n}
      }
    }
  }

  std::vector<Task> claim() {
    std::vector<Task> out;
    if (fenced_) {
      for (auto& l : leases_->claim(worker_id_, a_.batch, milliseconds(a_.lease_ms),
                                    R"({"state": "pending"})", R"({"state": "claimed"})"))
        out.push_back(Task{l.row.at("id"), l.row.at("run_id"), l.row.at("payload"), l.token});
      return out;
    }
    auto rows = conn_.exec(
        "UPDATE " + table_ +
            " SET claimed_by = $1, lease_expires_at = now() + $2::interval, state = 'claimed',"
            " attempts = attempts + 1 WHERE id IN (SELECT id FROM " +
            table_ +
            " WHERE state = 'pending' AND claimed_by IS NULL ORDER BY id"
            " LIMIT $3::integer FOR UPDATE SKIP LOCKED) RETURNING id, run_id, payload",
        wh::Params{worker_id_, wh::interval_literal(milliseconds(a_.lease_ms)),
                   std::to_string(a_.batch)});
    for (auto& r : rows) out.push_back(Task{r.at("id"), r.at("run_id"), r.at("payload"), 0});
    return out;
  }

  void extend(const Task& t) {
    if (fenced_) {
      leases_->extend(t.token, milliseconds(a_.lease_ms));
      return;
    }
    auto r =
        conn_.exec("UPDATE " + table_ +
                       " SET lease_expires_at = now() + $3::interval"
                       " WHERE id = $1 AND claimed_by = $2 RETURNING id",
                   wh::Params{t.id, worker_id_, wh::interval_literal(milliseconds(a_.lease_ms))});
    if (r.empty()) throw wh::StaleLeaseError("lease of task " + t.id + " was lost", "WH001");
  }

  void complete(const Task& t) {
    if (fenced_) {
      leases_->complete(t.token, R"({"state": "done", "done_at": "now", "done_by": )" +
                                     json_string(worker_id_) + "}");
      return;
    }
    auto r = conn_.exec("UPDATE " + table_ +
                            " SET state = 'done', claimed_by = NULL, lease_expires_at = NULL,"
                            " done_by = $2, done_at = now() WHERE id = $1 AND claimed_by = $2"
                            " RETURNING id",
                        wh::Params{t.id, worker_id_});
    if (r.empty()) throw wh::StaleLeaseError("lease of task " + t.id + " was lost", "WH001");
  }

 private:
  wh::Connection& conn_;
  const Args& a_;
  std::string worker_id_, table_;
  bool fenced_ = false;
  std::optional<wh::LeaseTable> leases_;
};

// "Works" for --work-ms in small steps, extending the lease every half lease.
// A lost connection does not interrupt the work: `reconnect` is retried at the
// next extension, and the caller completes the task afterwards.
void work_on(Queue& q, const Task& t, const Args& a, const std::function<bool()>& reconnect) {
  auto start = steady_clock::now();
  auto end = start + milliseconds(a.work_ms);
  auto next_extend = start + milliseconds(a.lease_ms / 2);
  while (steady_clock::now() < end) {
    std::this_thread::sleep_for(std::min<milliseconds>(
        milliseconds(50), duration_cast<milliseconds>(end - steady_clock::now())));
    if (a.extend && steady_clock::now() >= next_extend) {
      next_extend += milliseconds(a.lease_ms / 2);
      try {
        q.extend(t);
      } catch (const wh::ConnectionError&) {
        reconnect();
      }
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  Args a = parse(argc, argv);
  wh::HeartbeatOptions o;
  o.worker_type = a.type;
  o.worker_id = a.id;
  o.conninfo = a.db;
  o.schema = a.schema;
  o.session_bound = a.session_bound;
  o.on_signal = a.on_signal;  // flag (default): finish the current task, then stop
  o.metadata_json = R"({"example": "queue_worker"})";
  try {
    wh::Heartbeat hb(o);
    const std::string& me = hb.worker_id();
    wh::Connection conn(a.db, "queue_worker " + me);
    Queue q(conn, a, me);
    q.listen();
    say(me, "started pid=" + std::to_string(::getpid()) +
                " mode=" + (q.fenced() ? "fenced" : "plain") +
                " interval=" + std::to_string(hb.interval().count()) +
                "ms session_bound=" + (a.session_bound ? "yes" : "no"));
    auto reconnect = [&]() -> bool {
      try {
        conn = wh::Connection(a.db, "queue_worker " + me);
        q.listen();
        return true;
      } catch (const wh::ConnectionError& e) {
        say(me, std::string("reconnect failed: ") + e.what());
        return false;
      }
    };
    // The first heartbeat before the first claim: a drain or pause rule by
    // type or metadata matches a worker by its heartbeat row (1.3).
    for (int i = 0; i < 500 && hb.beats() == 0 && hb.failures() == 0; ++i)
      std::this_thread::sleep_for(milliseconds(10));
    long done = 0, handled = 0;
    while (!hb.stop_requested() && (a.max_tasks < 0 || handled < a.max_tasks)) {
      // 1.3: drain_workers() -> finish (nothing is held here), stop, exit;
      // pause_workers() -> claim nothing until resumed.
      if (hb.draining()) {
        say(me, "draining: stopping");
        break;
      }
      if (hb.paused()) {
        hb.mark_idle();
        std::this_thread::sleep_for(milliseconds(a.idle_ms));
        continue;
      }
      std::vector<Task> tasks;
      try {
        tasks = q.claim();
      } catch (const wh::ConnectionError& e) {
        say(me, std::string("claim failed, reconnecting: ") + e.what());
        std::this_thread::sleep_for(milliseconds(a.idle_ms));
        reconnect();
        continue;
      }
      if (tasks.empty()) {
        hb.mark_idle();
        if (a.exit_when_empty) break;
        try {
          q.idle_wait(a.idle_ms, [&] { return hb.stop_requested(); });
        } catch (const wh::ConnectionError& e) {
          say(me, std::string("connection lost while idle: ") + e.what());
          reconnect();
        }
        continue;
      }
      for (auto& t : tasks) {
        hb.update_task(t.run_id, "task " + t.id + ": " + t.payload, "processing");
        say(me, "claimed task " + t.id + (q.fenced() ? " token " + std::to_string(t.token) : ""));
        work_on(q, t, a, reconnect);
        ++handled;
        // Complete it; after a lost connection, reconnect and try again: the
        // result still counts if the lease is still ours, and the fence (or
        // the claimed_by check) refuses it if it is not.
        for (int attempt = 0;; ++attempt) {
          try {
            q.complete(t);
            ++done;
            say(me, "completed task " + t.id);
          } catch (const wh::StaleLeaseError& e) {
            // Someone else owns the row now (we were declared dead, or the
            // lease expired): drop the result, never overwrite theirs.
            say(me, "lost the lease of task " + t.id + ": " + e.what());
          } catch (const wh::ConnectionError& e) {
            say(me, "connection lost completing task " + t.id + ": " + e.what());
            if (attempt < 20 && !hb.stop_requested()) {
              std::this_thread::sleep_for(milliseconds(std::min(250L * (attempt + 1), 2000L)));
              reconnect();
              continue;
            }
          }
          break;
        }
      }
      hb.mark_idle();
    }
    say(me, "exiting after " + std::to_string(done) + " task(s)");
    hb.stop();
    return 0;
  } catch (const std::exception& e) {
    std::cerr << "queue_worker: " << e.what() << std::endl;
    return 1;
  }
}
