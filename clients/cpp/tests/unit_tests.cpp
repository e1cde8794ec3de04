// Unit tests of the pure parts of the C++ client: worker ids, environment
// parsing, reconnect backoff, SQLSTATE mapping, quoting.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <map>
#include <thread>

#include "worker_heartbeat/client.hpp"

using namespace worker_heartbeat;
using namespace std::chrono_literals;

namespace {
EnvLookup fake_env(std::map<std::string, std::string> vars) {
  return [vars](const std::string& name) -> std::optional<std::string> {
    auto it = vars.find(name);
    if (it == vars.end()) return std::nullopt;
    return it->second;
  };
}
}  // namespace

TEST(WorkerId, EnvVarNameFollowsTheSeed) {
  EXPECT_EQ(worker_id_env_var("company_research"), "COMPANY_RESEARCH_WORKER_ID");
  EXPECT_EQ(worker_id_env_var("lead_list"), "LEAD_LIST_WORKER_ID");
  EXPECT_EQ(worker_id_env_var("queue-worker2"), "QUEUE_WORKER2_WORKER_ID");
  EXPECT_EQ(worker_id_env_var("a.b c"), "A_B_C_WORKER_ID");
}

TEST(WorkerId, DefaultIsTypeHostPid) {
  EXPECT_EQ(default_worker_id("company_research", "db1", 12345), "company-research-db1-12345");
  EXPECT_EQ(default_worker_id("x", "", 7), "x-localhost-7");
}

TEST(WorkerId, ExplicitBeatsEnvBeatsDefault) {
  auto env = fake_env({{"COMPANY_RESEARCH_WORKER_ID", "company-research-prod-1"}});
  EXPECT_EQ(resolve_worker_id("given", "company_research", "h", 1, env), "given");
  EXPECT_EQ(resolve_worker_id("", "company_research", "h", 1, env), "company-research-prod-1");
  EXPECT_EQ(resolve_worker_id("", "lead_list", "h", 1, env), "lead-list-h-1");
  auto empty = fake_env({{"COMPANY_RESEARCH_WORKER_ID", ""}});
  EXPECT_EQ(resolve_worker_id("", "company_research", "h", 9, empty), "company-research-h-9");
  EXPECT_EQ(resolve_worker_id("", "company_research", "h", 9, nullptr), "company-research-h-9");
}

TEST(Interval, ParsesSecondsAndUnits) {
  EXPECT_EQ(parse_interval("30"), std::optional<std::chrono::milliseconds>(30s));
  EXPECT_EQ(parse_interval(" 2.5 "), std::optional<std::chrono::milliseconds>(2500ms));
  EXPECT_EQ(parse_interval("500ms"), std::optional<std::chrono::milliseconds>(500ms));
  EXPECT_EQ(parse_interval("10s"), std::optional<std::chrono::milliseconds>(10s));
  EXPECT_EQ(parse_interval("1 min"), std::optional<std::chrono::milliseconds>(60s));
  EXPECT_EQ(parse_interval(".25"), std::optional<std::chrono::milliseconds>(250ms));
}

TEST(Interval, RejectsGarbageAndNonPositive) {
  for (const char* bad : {"", "abc", "0", "-5", "0.0001", "5 parsecs", "1.2.3", "s", "10 days"})
    EXPECT_FALSE(parse_interval(bad).has_value()) << bad;
}

TEST(Interval, ResolveOrder) {
  EXPECT_EQ(resolve_interval(0ms, fake_env({})), 30s);
  EXPECT_EQ(resolve_interval(0ms, nullptr), 30s);
  EXPECT_EQ(resolve_interval(0ms, fake_env({{"WORKER_HEARTBEAT_INTERVAL", "5"}})), 5s);
  EXPECT_EQ(resolve_interval(0ms, fake_env({{"WORKER_HEARTBEAT_INTERVAL", " "}})), 30s);
  EXPECT_EQ(resolve_interval(700ms, fake_env({{"WORKER_HEARTBEAT_INTERVAL", "5"}})), 700ms);
  EXPECT_THROW(resolve_interval(0ms, fake_env({{"WORKER_HEARTBEAT_INTERVAL", "soon"}})),
               std::invalid_argument);
}

TEST(Backoff, DoublesUpToTheCap) {
  Backoff b{100ms, 1000ms, 0.0};
  EXPECT_EQ(b.delay(0, 0.3), 100ms);
  EXPECT_EQ(b.delay(1, 0.3), 200ms);
  EXPECT_EQ(b.delay(3, 0.3), 800ms);
  EXPECT_EQ(b.delay(4, 0.3), 1000ms);
  EXPECT_EQ(b.delay(1000, 0.3), 1000ms);
}

TEST(Backoff, JitterStaysWithinItsBand) {
  Backoff b{100ms, 10000ms, 0.5};
  EXPECT_EQ(b.delay(2, 0.0), 200ms);    // 400 * (1 - 0.5)
  EXPECT_EQ(b.delay(2, 0.999), 399ms);  // just under 400
  for (double u = 0.0; u < 1.0; u += 0.05) {
    auto d = b.delay(5, u);
    EXPECT_GE(d, 1600ms);
    EXPECT_LE(d, 3200ms);
  }
  EXPECT_GE(Backoff({0ms, 0ms, 0.5}).delay(0, 0.0), 1ms);  // never a busy loop
}

TEST(Sqlstate, Mapping) {
  EXPECT_EQ(error_kind_for_sqlstate("WH001"), ErrorKind::StaleLease);
  EXPECT_EQ(error_kind_for_sqlstate("08006"), ErrorKind::Connection);
  EXPECT_EQ(error_kind_for_sqlstate("08001"), ErrorKind::Connection);
  EXPECT_EQ(error_kind_for_sqlstate("57P01"), ErrorKind::Connection);
  EXPECT_EQ(error_kind_for_sqlstate("53300"), ErrorKind::Connection);
  EXPECT_EQ(error_kind_for_sqlstate("22023"), ErrorKind::InvalidInput);
  EXPECT_EQ(error_kind_for_sqlstate("42704"), ErrorKind::InvalidInput);
  EXPECT_EQ(error_kind_for_sqlstate("55000"), ErrorKind::Other);
  EXPECT_EQ(error_kind_for_sqlstate("XX000"), ErrorKind::Other);
  EXPECT_EQ(error_kind_for_sqlstate(""), ErrorKind::Other);
  EXPECT_TRUE(is_transient(ErrorKind::Connection));
  EXPECT_FALSE(is_transient(ErrorKind::StaleLease));
}

TEST(Sqlstate, ThrowsTheMatchingType) {
  try {
    throw_error("lease token is stale", "WH001");
    FAIL() << "no throw";
  } catch (const StaleLeaseError& e) {
    EXPECT_EQ(e.sqlstate(), "WH001");
    EXPECT_STREQ(e.what(), "lease token is stale");
  }
  EXPECT_THROW(throw_error("gone", "08006"), ConnectionError);
  EXPECT_THROW(throw_error("no libpq connection", ""), ConnectionError);
  try {
    throw_error("bad", "22023");
    FAIL() << "no throw";
  } catch (const StaleLeaseError&) {
    FAIL() << "22023 is not a stale lease";
  } catch (const ConnectionError&) {
    FAIL() << "22023 is not a connection error";
  } catch (const Error& e) {
    EXPECT_EQ(e.sqlstate(), "22023");
  }
}

TEST(Quoting, Identifiers) {
  EXPECT_EQ(quote_ident("pm_pipeline"), "\"pm_pipeline\"");
  EXPECT_EQ(quote_ident("My \"Schema\""), "\"My \"\"Schema\"\"\"");
  EXPECT_EQ(quote_ident(""), "\"\"");
}

TEST(Uuid, Recognised) {
  EXPECT_TRUE(is_uuid("123e4567-e89b-12d3-a456-426614174000"));
  EXPECT_TRUE(is_uuid("123E4567-E89B-12D3-A456-426614174000"));
  EXPECT_FALSE(is_uuid("abc123"));
  EXPECT_FALSE(is_uuid("123e4567e89b12d3a456426614174000"));
  EXPECT_FALSE(is_uuid("123e4567-e89b-12d3-a456-42661417400g"));
}

TEST(Channel, QueueChannelName) {
  EXPECT_EQ(queue_channel("public", "tasks"), "worker_heartbeat:public.tasks");
}

TEST(Interval, Literal) { EXPECT_EQ(interval_literal(1500ms), "1500 milliseconds"); }

TEST(Heartbeat, RejectsBadOptionsBeforeStartingAThread) {
  HeartbeatOptions o;
  EXPECT_THROW(Heartbeat{o}, std::invalid_argument);  // no worker_type
}

TEST(Connection, UnreachableServerIsAConnectionError) {
  // Port 1 on loopback: refused at once, no server needed.
  EXPECT_THROW(Connection("host=127.0.0.1 port=1 connect_timeout=2"), ConnectionError);
}

// The behaviours below need no server: an unreachable one (port 1 on loopback
// refuses at once) is the point.
namespace {
HeartbeatOptions unreachable(OnSignal on_signal) {
  HeartbeatOptions o;
  o.worker_type = "unit_test";
  o.worker_id = "unit-test-1";
  o.conninfo = "host=127.0.0.1 port=1 connect_timeout=2";
  o.interval = 50ms;
  o.backoff = Backoff{10ms, 40ms, 0.0};
  o.on_signal = on_signal;
  o.log = [](const std::string&) {};
  return o;
}

template <class Pred>
bool eventually(Pred p, std::chrono::milliseconds limit = 5000ms) {
  auto end = std::chrono::steady_clock::now() + limit;
  while (std::chrono::steady_clock::now() < end) {
    if (p()) return true;
    std::this_thread::sleep_for(5ms);
  }
  return p();
}
}  // namespace

TEST(Heartbeat, FailuresNeverReachTheWorker) {
  auto t0 = std::chrono::steady_clock::now();
  {
    Heartbeat hb(unreachable(OnSignal::Ignore));
    EXPECT_EQ(hb.worker_id(), "unit-test-1");
    EXPECT_EQ(hb.interval(), 50ms);
    EXPECT_TRUE(eventually([&] { return hb.failures() >= 3; }));  // retried with backoff
    EXPECT_FALSE(hb.connected());
    EXPECT_EQ(hb.beats(), 0u);
    hb.update_task("123e4567-e89b-12d3-a456-426614174000", "still working");
    hb.mark_idle();
    EXPECT_THROW(hb.update_task("not-a-uuid", "x"), std::invalid_argument);
    EXPECT_FALSE(hb.stop_requested());
  }  // destructor: stop() returns although stop_worker cannot be sent
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 5s);
}

TEST(Heartbeat, SigtermInFlagModeOnlySetsTheFlag) {
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    Heartbeat hb(unreachable(OnSignal::Flag));
    ::kill(::getpid(), SIGTERM);
    bool flagged = eventually([&] { return hb.stop_requested(); });
    _exit(flagged ? 0 : 3);  // still alive: the worker decides when to return
  }
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status)) << "child died of signal " << WTERMSIG(status);
  EXPECT_EQ(WEXITSTATUS(status), 0);
}

TEST(Heartbeat, SigtermInExitModeEndsTheProcessWithTheSignal) {
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    Heartbeat hb(unreachable(OnSignal::Exit));
    ::kill(::getpid(), SIGTERM);
    std::this_thread::sleep_for(10s);  // the heartbeat thread must end us first
    _exit(4);
  }
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFSIGNALED(status)) << "exit status " << WEXITSTATUS(status);
  EXPECT_EQ(WTERMSIG(status), SIGTERM);
}

TEST(Heartbeat, AnOldSignalDoesNotStopANewHeartbeat) {
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    {
      Heartbeat first(unreachable(OnSignal::Flag));
      ::kill(::getpid(), SIGINT);
      if (!eventually([&] { return first.stop_requested(); })) _exit(3);
    }
    Heartbeat second(unreachable(OnSignal::Flag));
    std::this_thread::sleep_for(200ms);
    _exit(second.stop_requested() ? 4 : 0);
  }
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status)) << "child died of signal " << WTERMSIG(status);
  EXPECT_EQ(WEXITSTATUS(status), 0);
}

TEST(Heartbeat, HandlersAreRestoredWhenTheLastHeartbeatGoes) {
  struct sigaction before, after;
  sigaction(SIGTERM, nullptr, &before);
  { Heartbeat hb(unreachable(OnSignal::Flag)); }
  sigaction(SIGTERM, nullptr, &after);
  EXPECT_EQ(before.sa_handler, after.sa_handler);
}

TEST(Directive, Names) {
  EXPECT_STREQ(worker_heartbeat::directive_name(worker_heartbeat::Directive::Run), "run");
  EXPECT_STREQ(worker_heartbeat::directive_name(worker_heartbeat::Directive::Drain), "drain");
  EXPECT_STREQ(worker_heartbeat::directive_name(worker_heartbeat::Directive::Pause), "pause");
}
