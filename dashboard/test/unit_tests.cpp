// Unit tests of the dashboard's pure parts: argument parsing, JSON escaping,
// SSE framing, the Host check, the event hub and the read-only conninfo.
#include <gtest/gtest.h>

#include <thread>

#include "hub.hpp"
#include "pg.hpp"
#include "state.hpp"
#include "util.hpp"

using namespace whd;

namespace {

std::string param(const ConnParams& p, const std::string& key) {
  for (const auto& [k, v] : p.kv)
    if (k == key) return v;
  return "<absent>";
}

}  // namespace

TEST(Args, Defaults) {
  auto r = parse_args({"--conninfo", "dbname=x"});
  ASSERT_TRUE(r.options) << r.error;
  EXPECT_EQ(r.options->conninfo, "dbname=x");
  EXPECT_EQ(r.options->listen_host, "127.0.0.1");
  EXPECT_EQ(r.options->listen_port, 8080);
  EXPECT_FALSE(r.options->schema);
}

TEST(Args, EqualsFormAndAll) {
  auto r = parse_args({"--conninfo=host=/tmp dbname=x", "--listen=[::1]:0", "--schema", "pm x"});
  ASSERT_TRUE(r.options) << r.error;
  EXPECT_EQ(r.options->conninfo, "host=/tmp dbname=x");
  EXPECT_EQ(r.options->listen_host, "::1");
  EXPECT_EQ(r.options->listen_port, 0);
  EXPECT_EQ(*r.options->schema, "pm x");
}

TEST(Args, Errors) {
  EXPECT_EQ(parse_args({}).error, "--conninfo is required");
  EXPECT_EQ(parse_args({"--conninfo"}).error, "--conninfo needs a value");
  EXPECT_EQ(parse_args({"--conninfo", "x", "--bogus"}).error, "unknown argument \"--bogus\"");
  EXPECT_EQ(parse_args({"--conninfo", "x", "--schema="}).error, "--schema must not be empty");
  EXPECT_FALSE(parse_args({"--conninfo", "x", "--listen", "8080"}).options);
  EXPECT_FALSE(parse_args({"--conninfo", "x", "--listen", "h:99999"}).options);
  EXPECT_FALSE(parse_args({"--conninfo", "x", "--listen", "h:80x"}).options);
  EXPECT_FALSE(parse_args({"--conninfo", "x", "--listen", "::1:80"}).options);
  EXPECT_FALSE(parse_args({"--conninfo", "x", "--listen", "[::1:80"}).options);
  // --conninfox is not --conninfo
  EXPECT_FALSE(parse_args({"--conninfox=1"}).options);
}

TEST(Args, Help) {
  auto r = parse_args({"--help"});
  ASSERT_TRUE(r.options);
  EXPECT_TRUE(r.options->help);
}

TEST(Listen, Forms) {
  std::string h, e;
  int p = -1;
  ASSERT_TRUE(parse_listen(":9000", h, p, e));
  EXPECT_EQ(h, "127.0.0.1");
  EXPECT_EQ(p, 9000);
  ASSERT_TRUE(parse_listen("0.0.0.0:1", h, p, e));
  EXPECT_EQ(h, "0.0.0.0");
  EXPECT_TRUE(is_loopback_host("127.0.0.1"));
  EXPECT_TRUE(is_loopback_host("127.1.2.3"));
  EXPECT_TRUE(is_loopback_host("::1"));
  EXPECT_TRUE(is_loopback_host("localhost"));
  EXPECT_FALSE(is_loopback_host("0.0.0.0"));
  EXPECT_FALSE(is_loopback_host("10.0.0.1"));
}

TEST(HostHeader, OnlyThisMachine) {
  EXPECT_TRUE(host_header_allowed("127.0.0.1:8080", "127.0.0.1", 8080));
  EXPECT_TRUE(host_header_allowed("localhost:8080", "127.0.0.1", 8080));
  EXPECT_TRUE(host_header_allowed("[::1]:8080", "127.0.0.1", 8080));
  EXPECT_TRUE(host_header_allowed("localhost", "127.0.0.1", 8080));
  EXPECT_TRUE(host_header_allowed("127.0.0.2:8080", "127.0.0.2", 8080));  // the listen address
  EXPECT_TRUE(host_header_allowed("[::1]:9", "::1", 9));
  EXPECT_FALSE(host_header_allowed("127.0.0.2:8080", "127.0.0.1", 8080));
  EXPECT_FALSE(host_header_allowed("127.0.0.1:8081", "127.0.0.1", 8080));
  EXPECT_FALSE(host_header_allowed("evil.example:8080", "127.0.0.1", 8080));
  EXPECT_FALSE(host_header_allowed("localhost.evil.example:8080", "127.0.0.1", 8080));
  EXPECT_FALSE(host_header_allowed("", "127.0.0.1", 8080));
}

TEST(Json, Escapes) {
  EXPECT_EQ(json_quote(""), "\"\"");
  EXPECT_EQ(json_quote("a\"b\\c"), "\"a\\\"b\\\\c\"");
  EXPECT_EQ(json_quote("\n\r\t\b\f"), "\"\\n\\r\\t\\b\\f\"");
  EXPECT_EQ(json_quote(std::string("\x01\x1f\x7f", 3)), "\"\\u0001\\u001f\\u007f\"");
  EXPECT_EQ(json_quote(std::string("a\0b", 3)), "\"a\\u0000b\"");
  EXPECT_EQ(json_quote("</script>"), "\"</script>\"");
}

TEST(Json, Utf8) {
  EXPECT_EQ(json_quote("héllo €𝄞"), "\"héllo €𝄞\"");
  EXPECT_EQ(json_quote("\xe2\x80\xa8"), "\"\\u2028\"");
  EXPECT_EQ(json_quote("a\xff"
                       "b"),
            "\"a\\ufffdb\"");                                          // invalid byte
  EXPECT_EQ(json_quote("\xc0\xaf"), "\"\\ufffd\\ufffd\"");             // overlong '/'
  EXPECT_EQ(json_quote("\xed\xa0\x80"), "\"\\ufffd\\ufffd\\ufffd\"");  // surrogate
  EXPECT_EQ(json_quote("\xe2\x82"), "\"\\ufffd\\ufffd\"");             // truncated
}

TEST(Sse, Framing) {
  EXPECT_EQ(sse_frame("wh", "{\"a\":1}", 7), "id: 7\nevent: wh\ndata: {\"a\":1}\n\n");
  EXPECT_EQ(sse_frame("", "x"), "data: x\n\n");
  EXPECT_EQ(sse_frame("e", ""), "event: e\ndata: \n\n");
  // Every kind of line break starts a new data line; none is left in a field.
  EXPECT_EQ(sse_frame("e", "a\nb\r\nc\rd"), "event: e\ndata: a\ndata: b\ndata: c\ndata: d\n\n");
  EXPECT_EQ(sse_frame("e", "a\n"), "event: e\ndata: a\ndata: \n\n");
  EXPECT_EQ(sse_frame("bad\nname", "x"), "event: bad name\ndata: x\n\n");
  EXPECT_EQ(sse_comment("ping"), ":ping\n\n");
  EXPECT_EQ(sse_comment("a\nb"), ":a b\n\n");
}

TEST(Ident, Quote) {
  EXPECT_EQ(quote_ident("pm_pipeline"), "\"pm_pipeline\"");
  EXPECT_EQ(quote_ident("we\"ird"), "\"we\"\"ird\"");
}

TEST(Hub, DeliversInOrder) {
  EventHub hub(4);
  EXPECT_EQ(hub.publish("wh", "1"), 1u);
  EXPECT_EQ(hub.publish("wh", "2"), 2u);
  HubBatch b = hub.wait_after(0, std::chrono::milliseconds(0));
  ASSERT_EQ(b.events.size(), 2u);
  EXPECT_EQ(b.events[0].data, "1");
  EXPECT_EQ(b.events[1].id, 2u);
  EXPECT_FALSE(b.gap);
  EXPECT_TRUE(hub.wait_after(2, std::chrono::milliseconds(1)).events.empty());
}

TEST(Hub, ReportsGap) {
  EventHub hub(2);
  for (int i = 0; i < 5; ++i) hub.publish("wh", std::to_string(i));
  HubBatch b = hub.wait_after(1, std::chrono::milliseconds(0));
  EXPECT_TRUE(b.gap);
  ASSERT_EQ(b.events.size(), 2u);
  EXPECT_EQ(b.events[0].id, 4u);
  EXPECT_FALSE(hub.wait_after(3, std::chrono::milliseconds(0)).gap);
}

TEST(Hub, WakesWaiter) {
  EventHub hub;
  std::thread t([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    hub.publish("wh", "x");
  });
  auto start = std::chrono::steady_clock::now();
  HubBatch b = hub.wait_after(0, std::chrono::seconds(5));
  t.join();
  ASSERT_EQ(b.events.size(), 1u);
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(2));
}

TEST(Hub, CloseWakesWaiter) {
  EventHub hub;
  std::thread t([&] { hub.close(); });
  HubBatch b = hub.wait_after(0, std::chrono::seconds(5));
  t.join();
  EXPECT_TRUE(b.closed);
}

TEST(Hub, BoundsSubscribers) {
  EventHub hub;
  EXPECT_TRUE(hub.try_subscribe(2));
  EXPECT_TRUE(hub.try_subscribe(2));
  EXPECT_FALSE(hub.try_subscribe(2));
  hub.unsubscribe();
  EXPECT_TRUE(hub.try_subscribe(2));
}

TEST(ConnInfo, ForcesReadOnly) {
  std::string err;
  auto p = readonly_params("host=/tmp dbname=app user=monitor", err);
  ASSERT_TRUE(p) << err;
  EXPECT_EQ(param(*p, "dbname"), "app");
  EXPECT_EQ(param(*p, "user"), "monitor");
  EXPECT_EQ(param(*p, "options"), "-c default_transaction_read_only=on -c statement_timeout=5s");
  EXPECT_EQ(param(*p, "application_name"), "worker_heartbeat dashboard");
}

TEST(ConnInfo, KeepsUserOptionsAndUri) {
  std::string err;
  auto p = readonly_params(
      "postgresql://monitor@localhost:5433/app?options=-c%20work_mem%3D1MB&application_name=x",
      err);
  ASSERT_TRUE(p) << err;
  EXPECT_EQ(param(*p, "port"), "5433");
  EXPECT_EQ(param(*p, "application_name"), "x");
  // Ours come last, so a user's "-c default_transaction_read_only=off" cannot win.
  EXPECT_EQ(param(*p, "options"),
            "-c work_mem=1MB -c default_transaction_read_only=on -c statement_timeout=5s");
}

TEST(ConnInfo, Invalid) {
  std::string err;
  EXPECT_FALSE(readonly_params("host=/tmp bogus_key=1", err));
  EXPECT_NE(err.find("invalid --conninfo"), std::string::npos);
}

// The state query reads only what the catalog has and the role may use: a 1.2
// catalog has no worker_directives; reaper_status() may not be granted.
TEST(State, Features) {
  EXPECT_FALSE(parse_features("").directives);
  EXPECT_FALSE(parse_features("").reapers);
  StateFeatures both = parse_features("directives,reapers");
  EXPECT_TRUE(both.directives);
  EXPECT_TRUE(both.reapers);
  StateFeatures one = parse_features("reapers");
  EXPECT_FALSE(one.directives);
  EXPECT_TRUE(one.reapers);
  EXPECT_FALSE(parse_features("directivesx").directives);
}

TEST(State, QueryFollowsFeatures) {
  const std::string old = state_sql("\"pm_pipeline\"", StateFeatures{});
  EXPECT_EQ(old.find("worker_directives"), std::string::npos);
  EXPECT_EQ(old.find("reaper_status"), std::string::npos);
  EXPECT_NE(old.find("'forensics'"), std::string::npos);  // details->'forensics': NULL before 1.3
  const std::string all = state_sql("\"pm_pipeline\"", StateFeatures{true, true});
  EXPECT_NE(all.find("\"pm_pipeline\".worker_directives"), std::string::npos);
  EXPECT_NE(all.find("\"pm_pipeline\".reaper_status()"), std::string::npos);
  EXPECT_NE(all.find("'scheduled'"), std::string::npos);
  EXPECT_NE(probe_sql().find("to_regclass"), std::string::npos);
}
