// Worker statuses and the rules on identifiers that every SQL entry point
// applies before it touches a table. Plain C++: unit-tested without a server.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>

namespace wh::core
{

enum class WorkerStatus : std::uint8_t { Active, Idle, Processing, Stopped, Dead };

// "active" -> Active ...; nullopt for anything else (case-sensitive, like the
// CHECK constraint on worker_heartbeats.status).
std::optional<WorkerStatus> ParseStatus(std::string_view text);
std::string_view StatusName(WorkerStatus status);

// A status a worker may report about itself: dead is the reaper's verdict.
bool IsReportable(WorkerStatus status);
// Alive statuses: the worker counts as active while its heartbeat is fresh.
bool IsLive(WorkerStatus status);

// worker_id and worker_type: non-empty, at most kMaxIdentifierBytes bytes.
inline constexpr std::size_t kMaxIdentifierBytes = 200;

enum class IdentifierProblem : std::uint8_t { None, Empty, TooLong, Blank };
IdentifierProblem CheckIdentifier(std::string_view text);

} // namespace wh::core
