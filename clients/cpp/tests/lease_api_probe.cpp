// Integration check of the typed fenced-lease API against a real server (run by
// test/t/050_client_cpp.pl; needs a database with worker_heartbeat 1.1 and the
// queue table of examples/sql/queue.sql holding at least 2 pending rows).
// Prints one "ok <step>" line per check and exits non-zero on the first failure.
#include <cstdlib>
#include <iostream>
#include <string>
#include <worker_heartbeat/client.hpp>

namespace wh = worker_heartbeat;

namespace {
int step = 0;

void ok(bool cond, const std::string& what) {
  ++step;
  if (!cond) {
    std::cout << "not ok " << step << " " << what << std::endl;
    std::exit(1);
  }
  std::cout << "ok " << step << " " << what << std::endl;
}

template <class E, class F>
void throws(F f, const std::string& what, const std::string& sqlstate) {
  try {
    f();
  } catch (const E& e) {
    ok(e.sqlstate() == sqlstate, what + " (" + e.sqlstate() + ": " + e.what() + ")");
    return;
  } catch (const std::exception& e) {
    ok(false, what + ": wrong exception: " + e.what());
  }
  ok(false, what + ": no exception");
}
}  // namespace

int main(int argc, char** argv) {
  std::string conninfo = argc > 1 ? argv[1] : "";
  wh::Connection db(conninfo, "lease_api_probe");
  wh::LeaseTable tasks(db, "tasks");
  ok(tasks.qualified_name() == "tasks",
     "table resolved through regclass: " + tasks.qualified_name());
  ok(tasks.token_column() == "lease_token", "token column read from lease_tables");

  auto claimed = tasks.claim("probe", 2, std::chrono::seconds(60), R"({"state": "pending"})",
                             R"({"state": "claimed"})");
  ok(claimed.size() == 2, "claim returned 2 rows");
  const wh::Lease& a = claimed[0];
  const wh::Lease& b = claimed[1];
  ok(a.token != b.token && a.token > 0, "each row has its own token");
  ok(a.row.at("claimed_by") == "probe" && a.row.at("state") == "claimed",
     "claimed rows come back with the claim applied");
  ok(a.row.at("attempts") == "1", "attempts counted");

  std::string deadline = tasks.extend(a.token, std::chrono::minutes(10));
  ok(!deadline.empty(), "extend returns the new deadline: " + deadline);
  ok(tasks.check(a.token), "check_lease accepts a live token");

  tasks.complete(a.token, R"({"state": "done", "done_by": "probe"})");
  auto row = db.exec("SELECT state, claimed_by FROM tasks WHERE id = $1", {a.row.at("id")});
  ok(row.at(0).at("state") == "done" && !row.at(0).get("claimed_by"),
     "complete cleared the lease and applied the assignments");

  throws<wh::StaleLeaseError>([&] { tasks.complete(a.token); }, "second complete is stale",
                              "WH001");
  throws<wh::StaleLeaseError>([&] { tasks.extend(a.token); }, "extend after complete is stale",
                              "WH001");

  ok(tasks.fail(b.token, R"({"state": "pending"})"), "fail: not the last attempt");
  throws<wh::StaleLeaseError>([&] { tasks.check(b.token); }, "check after fail is stale", "WH001");
  row = db.exec("SELECT state, claimed_by FROM tasks WHERE id = $1", {b.row.at("id")});
  ok(row.at(0).at("state") == "pending" && !row.at(0).get("claimed_by"),
     "fail released the row at once");

  throws<wh::Error>([&] { tasks.claim("probe", 1, std::chrono::seconds(10), "[1]"); },
                    "a filter that is not an object is invalid input", "22023");
  throws<wh::Error>([&] { wh::LeaseTable(db, "no_such_table"); }, "unknown table", "42P01");
  throws<wh::ConnectionError>([&] { wh::Connection("host=127.0.0.1 port=1 connect_timeout=2"); },
                              "unreachable server", "");
  std::cout << "all " << step << " checks passed" << std::endl;
  return 0;
}
