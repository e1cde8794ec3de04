// When can the next worker die of silence?
//
// A full check (one scan of the live workers) tells the earliest moment at
// which any of them can pass its dead-after deadline. Until then a reaping
// pass need not look: heartbeats only push deadlines later. Three things
// make a deadline come sooner, and each of them pulls the schedule in:
//   * a worker becomes live (new, revived, restarted): EarliestAt(now + shortest dead_after);
//   * a dead_after setting or override shrinks:           Invalidate();
//   * the reaper starts:                                  Invalidate() (the initial state).
// Times are microseconds on any monotonic-enough clock (PostgreSQL's TimestampTz).
#pragma once

#include <cstdint>
#include <limits>

namespace wh::core
{

class DeathSchedule
{
  public:
	static constexpr std::int64_t kNever = std::numeric_limits<std::int64_t>::max();

	bool CheckDue(std::int64_t now) const { return now >= next_check_; }
	// After a full check: next_deadline is the earliest deadline of a worker still live.
	void Checked(std::int64_t next_deadline) { next_check_ = next_deadline; }
	void EarliestAt(std::int64_t deadline)
	{
		if (deadline < next_check_)
			next_check_ = deadline;
	}
	void Invalidate() { next_check_ = std::numeric_limits<std::int64_t>::min(); }
	std::int64_t NextCheck() const { return next_check_; }

  private:
	std::int64_t next_check_ = std::numeric_limits<std::int64_t>::min();
};

} // namespace wh::core
