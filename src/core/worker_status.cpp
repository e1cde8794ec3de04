#include "core/worker_status.hpp"

#include <array>

namespace wh::core
{

namespace
{
constexpr std::array<std::string_view, 5> kNames = {"active", "idle", "processing", "stopped", "dead"};
}

std::optional<WorkerStatus> ParseStatus(std::string_view text)
{
	for (std::size_t i = 0; i < kNames.size(); ++i)
		if (kNames[i] == text)
			return static_cast<WorkerStatus>(i);
	return std::nullopt;
}

std::string_view StatusName(WorkerStatus status)
{
	return kNames[static_cast<std::size_t>(status)];
}

bool IsReportable(WorkerStatus status)
{
	return status != WorkerStatus::Dead;
}

bool IsLive(WorkerStatus status)
{
	return status == WorkerStatus::Active || status == WorkerStatus::Idle || status == WorkerStatus::Processing;
}

IdentifierProblem CheckIdentifier(std::string_view text)
{
	if (text.empty())
		return IdentifierProblem::Empty;
	if (text.size() > kMaxIdentifierBytes)
		return IdentifierProblem::TooLong;
	for (char c : text)
		if (c != ' ' && c != '\t' && c != '\n' && c != '\r')
			return IdentifierProblem::None;
	return IdentifierProblem::Blank;
}

} // namespace wh::core
