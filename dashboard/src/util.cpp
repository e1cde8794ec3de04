#include "util.hpp"

#include <charconv>

namespace whd {

namespace {

bool take_value(const std::vector<std::string>& args, std::size_t& i, std::string_view name,
                std::string& value, std::string& error) {
  const std::string& a = args[i];
  if (a.size() > name.size() && a.compare(0, name.size(), name) == 0 && a[name.size()] == '=') {
    value = a.substr(name.size() + 1);
    return true;
  }
  if (i + 1 >= args.size()) {
    error = std::string(name) + " needs a value";
    return false;
  }
  value = args[++i];
  return true;
}

bool matches(const std::string& arg, std::string_view name) {
  return arg == name || (arg.size() > name.size() && arg.compare(0, name.size(), name) == 0 &&
                         arg[name.size()] == '=');
}

}  // namespace

bool parse_listen(std::string_view spec, std::string& host, int& port, std::string& error) {
  std::size_t colon = spec.rfind(':');
  if (colon == std::string_view::npos) {
    error = "--listen wants HOST:PORT, got \"" + std::string(spec) + "\"";
    return false;
  }
  std::string_view h = spec.substr(0, colon);
  std::string_view p = spec.substr(colon + 1);
  if (!h.empty() && h.front() == '[') {
    if (h.size() < 3 || h.back() != ']') {
      error = "--listen: bad IPv6 address \"" + std::string(h) + "\"";
      return false;
    }
    h = h.substr(1, h.size() - 2);
  } else if (h.find(':') != std::string_view::npos) {
    error = "--listen: write an IPv6 address in brackets, e.g. [::1]:8080";
    return false;
  }
  int value = -1;
  auto [ptr, ec] = std::from_chars(p.data(), p.data() + p.size(), value);
  if (p.empty() || ec != std::errc() || ptr != p.data() + p.size() || value < 0 || value > 65535) {
    error = "--listen: bad port \"" + std::string(p) + "\"";
    return false;
  }
  host = h.empty() ? "127.0.0.1" : std::string(h);
  port = value;
  return true;
}

bool is_loopback_host(std::string_view host) {
  return host == "localhost" || host == "::1" || host.substr(0, 4) == "127.";
}

bool host_header_allowed(std::string_view host_header, std::string_view listen_host, int port) {
  const std::string p = std::to_string(port);
  const std::string listen = listen_host.find(':') != std::string_view::npos
                                 ? "[" + std::string(listen_host) + "]"
                                 : std::string(listen_host);
  for (const std::string& h :
       {std::string("localhost"), std::string("127.0.0.1"), std::string("[::1]"), listen}) {
    if (host_header == h || host_header == h + ":" + p) return true;
  }
  return false;
}

ParseResult parse_args(const std::vector<std::string>& args) {
  ParseResult r;
  Options o;
  std::string listen;
  bool have_listen = false;
  for (std::size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    std::string v;
    if (a == "--help" || a == "-h") {
      o.help = true;
      r.options = o;
      return r;
    } else if (matches(a, "--conninfo")) {
      if (!take_value(args, i, "--conninfo", v, r.error)) return r;
      o.conninfo = v;
    } else if (matches(a, "--listen")) {
      if (!take_value(args, i, "--listen", v, r.error)) return r;
      listen = v;
      have_listen = true;
    } else if (matches(a, "--schema")) {
      if (!take_value(args, i, "--schema", v, r.error)) return r;
      if (v.empty()) {
        r.error = "--schema must not be empty";
        return r;
      }
      o.schema = v;
    } else {
      r.error = "unknown argument \"" + a + "\"";
      return r;
    }
  }
  if (o.conninfo.empty()) {
    r.error = "--conninfo is required";
    return r;
  }
  if (have_listen && !parse_listen(listen, o.listen_host, o.listen_port, r.error)) return r;
  r.options = o;
  return r;
}

std::string json_quote(std::string_view s) {
  static const char* hex = "0123456789abcdef";
  std::string out;
  out.reserve(s.size() + 2);
  out += '"';
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const std::size_t n = s.size();
  for (std::size_t i = 0; i < n;) {
    unsigned char c = p[i];
    if (c < 0x80) {
      switch (c) {
        case '"':
          out += "\\\"";
          break;
        case '\\':
          out += "\\\\";
          break;
        case '\b':
          out += "\\b";
          break;
        case '\f':
          out += "\\f";
          break;
        case '\n':
          out += "\\n";
          break;
        case '\r':
          out += "\\r";
          break;
        case '\t':
          out += "\\t";
          break;
        default:
          if (c < 0x20 || c == 0x7f) {
            out += "\\u00";
            out += hex[c >> 4];
            out += hex[c & 0xf];
          } else {
            out += static_cast<char>(c);
          }
      }
      ++i;
      continue;
    }
    // Multi-byte UTF-8: validate (no overlongs, no surrogates, <= U+10FFFF).
    std::size_t len = 0;
    std::uint32_t cp = 0;
    if (c >= 0xc2 && c <= 0xdf) {
      len = 2;
      cp = c & 0x1f;
    } else if (c >= 0xe0 && c <= 0xef) {
      len = 3;
      cp = c & 0x0f;
    } else if (c >= 0xf0 && c <= 0xf4) {
      len = 4;
      cp = c & 0x07;
    }
    bool ok = len != 0 && i + len <= n;
    for (std::size_t k = 1; ok && k < len; ++k) {
      if ((p[i + k] & 0xc0) != 0x80) ok = false;
      cp = (cp << 6) | (p[i + k] & 0x3f);
    }
    if (ok) {
      if ((len == 3 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))) ||
          (len == 4 && (cp < 0x10000 || cp > 0x10ffff)))
        ok = false;
    }
    if (!ok) {
      out += "\\ufffd";
      ++i;
      continue;
    }
    if (cp == 0x2028 || cp == 0x2029) {  // valid JSON, but not valid in older JS source
      out += cp == 0x2028 ? "\\u2028" : "\\u2029";
    } else {
      out.append(s.data() + i, len);
    }
    i += len;
  }
  out += '"';
  return out;
}

std::string sse_frame(std::string_view event, std::string_view data,
                      std::optional<std::uint64_t> id) {
  std::string out;
  out.reserve(data.size() + event.size() + 32);
  if (id) out += "id: " + std::to_string(*id) + "\n";
  if (!event.empty()) {
    out += "event: ";
    for (char c : event) out += (c == '\n' || c == '\r') ? ' ' : c;
    out += '\n';
  }
  std::size_t start = 0;
  for (;;) {
    std::size_t end = data.find_first_of("\r\n", start);
    out += "data: ";
    out.append(
        data.substr(start, end == std::string_view::npos ? std::string_view::npos : end - start));
    out += '\n';
    if (end == std::string_view::npos) break;
    start = end + 1;
    if (data[end] == '\r' && start < data.size() && data[start] == '\n') ++start;
  }
  out += '\n';
  return out;
}

std::string sse_comment(std::string_view text) {
  std::string out = ":";
  for (char c : text) out += (c == '\n' || c == '\r') ? ' ' : c;
  out += "\n\n";
  return out;
}

std::string quote_ident(std::string_view ident) {
  std::string out = "\"";
  for (char c : ident) {
    if (c == '"') out += '"';
    out += c;
  }
  out += '"';
  return out;
}

std::string usage() {
  return "Usage: worker-heartbeat-dashboard --conninfo CONNINFO [--listen HOST:PORT] "
         "[--schema NAME]\n"
         "\n"
         "Serves a live page of the worker_heartbeat fleet, /metrics (Prometheus text),\n"
         "/api/summary (get_worker_health_summary()) and /events (server-sent events\n"
         "relayed from LISTEN worker_heartbeat).\n"
         "\n"
         "  --conninfo  libpq connection string or URI; connect as the monitoring role.\n"
         "              The session is forced read-only (default_transaction_read_only=on).\n"
         "  --listen    address to listen on (default 127.0.0.1:8080; port 0 = any free port)\n"
         "  --schema    the extension's schema (default: looked up in pg_extension)\n";
}

}  // namespace whd
