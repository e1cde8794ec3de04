// worker_events rows and NOTIFY payloads on channel "worker_heartbeat".
// Events are gathered in a batch and written with one INSERT ... unnest(),
// so that a pass that buries a thousand workers is still one statement.
#pragma once

#include "catalog.hpp"
#include "pg.hpp"

namespace wh::events
{

inline constexpr const char *kChannel = "worker_heartbeat";

struct Event {
	const char *event = nullptr;       // started, stopped, died, revived, leases_released, removed, lease_exhausted
	const char *worker_id = nullptr;   // may be NULL
	const char *worker_type = nullptr; // may be NULL
	const char *table_name = nullptr;  // may be NULL
	int released_count = -1;           // < 0: NULL
	int64 silent_for_us = -1;          // < 0: NULL
	int64 latency_us = -1;             // < 0: NULL
	const char *cause = nullptr;       // for "died": heartbeat_timeout / session_ended
	const char *reason = nullptr;      // details.reason
};

class Batch
{
  public:
	// Palloc'd state; lives in the caller's memory context.
	static Batch *Create();
	void Add(const Event &event);
	int Size() const { return count_; }
	// Writes the rows and queues one NOTIFY per event (sent at commit).
	void Flush(const catalog::Extension &ext, TimestampTz at);

  private:
	Event *items_;
	int count_;
	int capacity_;
};

} // namespace wh::events
