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
	const char *event;       // started, stopped, died, revived, leases_released, removed, lease_exhausted
	const char *worker_id;   // may be NULL
	const char *worker_type; // may be NULL
	const char *table_name;  // may be NULL
	int released_count;      // < 0: NULL
	int64 silent_for_us;     // < 0: NULL
	int64 latency_us;        // < 0: NULL
	const char *cause;       // for "died": heartbeat_timeout / session_ended; else NULL
	const char *reason;      // details.reason, may be NULL
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
