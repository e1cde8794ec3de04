#include "worker_heartbeat/util.hpp"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdlib>
#include <stdexcept>

namespace worker_heartbeat {

EnvLookup process_env() {
  return [](const std::string& name) -> std::optional<std::string> {
    const char* v = std::getenv(name.c_str());
    if (v == nullptr) return std::nullopt;
    return std::string(v);
  };
}

std::string worker_id_env_var(std::string_view worker_type) {
  std::string out;
  out.reserve(worker_type.size() + 10);
  for (char c : worker_type) {
    auto u = static_cast<unsigned char>(c);
    if (std::isalpha(u))
      out.push_back(static_cast<char>(std::toupper(u)));
    else if (std::isdigit(u))
      out.push_back(c);
    else
      out.push_back('_');
  }
  return out + "_WORKER_ID";
}

std::string default_worker_id(std::string_view worker_type, std::string_view host, long pid) {
  std::string type(worker_type);
  std::replace(type.begin(), type.end(), '_', '-');
  std::string h(host.empty() ? std::string_view("localhost") : host);
  return type + "-" + h + "-" + std::to_string(pid);
}

std::string resolve_worker_id(std::string_view explicit_id, std::string_view worker_type,
                              std::string_view host, long pid, const EnvLookup& env) {
  if (!explicit_id.empty()) return std::string(explicit_id);
  if (env) {
    auto v = env(worker_id_env_var(worker_type));
    if (v && !v->empty()) return *v;
  }
  return default_worker_id(worker_type, host, pid);
}

namespace {
std::string_view trim(std::string_view s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.front()))) s.remove_prefix(1);
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.remove_suffix(1);
  return s;
}
}  // namespace

std::optional<std::chrono::milliseconds> parse_interval(std::string_view text) {
  text = trim(text);
  if (text.empty()) return std::nullopt;
  // Split the number from the unit.
  size_t i = 0;
  bool digits = false, dot = false;
  for (; i < text.size(); ++i) {
    char c = text[i];
    if (std::isdigit(static_cast<unsigned char>(c))) {
      digits = true;
    } else if (c == '.' && !dot) {
      dot = true;
    } else {
      break;
    }
  }
  if (!digits) return std::nullopt;
  double value = std::strtod(std::string(text.substr(0, i)).c_str(), nullptr);
  std::string_view unit = trim(text.substr(i));
  double factor_ms;
  if (unit.empty() || unit == "s" || unit == "sec" || unit == "secs" || unit == "seconds" ||
      unit == "second")
    factor_ms = 1000.0;
  else if (unit == "ms")
    factor_ms = 1.0;
  else if (unit == "min" || unit == "m" || unit == "minutes" || unit == "minute")
    factor_ms = 60000.0;
  else
    return std::nullopt;
  double ms = value * factor_ms;
  if (!(ms >= 1.0) || ms > 86400000.0 * 7) return std::nullopt;
  return std::chrono::milliseconds(static_cast<long long>(std::llround(ms)));
}

std::chrono::milliseconds resolve_interval(std::chrono::milliseconds configured,
                                           const EnvLookup& env) {
  if (configured.count() > 0) return configured;
  if (env) {
    auto v = env("WORKER_HEARTBEAT_INTERVAL");
    if (v && !trim(*v).empty()) {
      auto parsed = parse_interval(*v);
      if (!parsed)
        throw std::invalid_argument("WORKER_HEARTBEAT_INTERVAL=\"" + *v +
                                    "\" is not a positive number of seconds");
      return *parsed;
    }
  }
  return std::chrono::seconds(30);
}

std::chrono::milliseconds Backoff::delay(unsigned attempt, double unit_random) const {
  double base = static_cast<double>(initial.count());
  double cap = static_cast<double>(max.count());
  double d = base * std::pow(2.0, static_cast<double>(std::min(attempt, 62u)));
  if (d > cap) d = cap;
  double u = std::clamp(unit_random, 0.0, 1.0);
  double j = std::clamp(jitter, 0.0, 1.0);
  d *= (1.0 - j) + j * u;
  if (d < 1.0) d = 1.0;
  return std::chrono::milliseconds(static_cast<long long>(d));
}

ErrorKind error_kind_for_sqlstate(std::string_view s) {
  if (s == "WH001") return ErrorKind::StaleLease;
  if (s.size() != 5) return ErrorKind::Other;
  std::string_view cls = s.substr(0, 2);
  if (cls == "08" || s == "57P01" || s == "57P02" || s == "57P03" || s == "53300")
    return ErrorKind::Connection;
  if (cls == "22" || cls == "42") return ErrorKind::InvalidInput;
  return ErrorKind::Other;
}

bool is_transient(ErrorKind kind) { return kind == ErrorKind::Connection; }

std::string quote_ident(std::string_view ident) {
  std::string out = "\"";
  for (char c : ident) {
    if (c == '"') out.push_back('"');
    out.push_back(c);
  }
  out.push_back('"');
  return out;
}

bool is_uuid(std::string_view t) {
  if (t.size() != 36) return false;
  for (size_t i = 0; i < t.size(); ++i) {
    if (i == 8 || i == 13 || i == 18 || i == 23) {
      if (t[i] != '-') return false;
    } else if (!std::isxdigit(static_cast<unsigned char>(t[i]))) {
      return false;
    }
  }
  return true;
}

std::string interval_literal(std::chrono::milliseconds d) {
  return std::to_string(d.count()) + " milliseconds";
}

}  // namespace worker_heartbeat
