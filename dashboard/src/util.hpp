// Pure helpers of the dashboard (no libpq, no sockets): argument parsing, JSON
// escaping, server-sent-event framing and the Host check. Unit-tested in
// test/unit_tests.cpp.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace whd {

struct Options {
  std::string conninfo;
  std::string listen_host = "127.0.0.1";
  int listen_port = 8080;
  std::optional<std::string> schema;  // found in the catalog when not given
  bool help = false;
};

struct ParseResult {
  std::optional<Options> options;
  std::string error;  // set when options is empty
};

// Parses argv (without argv[0]): --conninfo STR, --listen HOST:PORT, --schema NAME, --help.
// "--opt=value" and "--opt value" are both accepted.
ParseResult parse_args(const std::vector<std::string>& args);

// "127.0.0.1:8080", "localhost:0", "[::1]:8080", ":8080" (loopback). Port 0 = any free port.
bool parse_listen(std::string_view spec, std::string& host, int& port, std::string& error);

bool is_loopback_host(std::string_view host);

// Whether a request's Host header names this server (DNS-rebinding guard for a
// loopback listener): localhost, 127.0.0.1, [::1] or the listening address,
// with or without the listening port.
bool host_header_allowed(std::string_view host_header, std::string_view listen_host, int port);

// JSON string literal (with the quotes). Invalid UTF-8 becomes U+FFFD.
std::string json_quote(std::string_view s);

// A server-sent event: optional id and event name, data split into one "data:"
// line per line of the payload (\n, \r\n or \r), terminated by a blank line.
std::string sse_frame(std::string_view event, std::string_view data,
                      std::optional<std::uint64_t> id = std::nullopt);

// An SSE comment line (keeps proxies and the browser's connection alive).
std::string sse_comment(std::string_view text);

// Quotes a SQL identifier the way quote_ident() does, always with quotes.
std::string quote_ident(std::string_view ident);

std::string usage();

}  // namespace whd
