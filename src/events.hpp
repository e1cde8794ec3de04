// worker_events rows and NOTIFY payloads on channel "worker_heartbeat".
// Events are gathered in a batch and written with one INSERT ... unnest(),
// so that a pass that buries a thousand workers is still one statement.
#pragma once

#include "catalog.hpp"
#include "pg.hpp"

namespace wh::events
{

inline constexpr const char *kChannel = "worker_heartbeat";
// worker_id and worker_type of an event, at most (bytes): a real one is at
// most 200 bytes (the API refuses longer ones), but a worker column of a
// user's table can hold anything. Table names, causes and reasons: at most
// kMaxNameBytes.
inline constexpr int kMaxFieldBytes = 200;
inline constexpr int kMaxNameBytes = 512;
// The longest NOTIFY payload sent (PostgreSQL's limit is 7999 bytes).
inline constexpr int kMaxPayloadBytes = 2000;
// The marker that ends a clipped value.
inline constexpr const char *kClipMarker = "...(truncated)";

// value clipped to at most max_bytes bytes (on a character boundary), ended by
// kClipMarker when something was cut; value itself when it fits.
const char *Clip(const char *value, int max_bytes);

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
	// 1.3 (death forensics, zombie termination): JSON object members, e.g.
	// "forensics":{...}, added to details (extra_details) and to a full NOTIFY
	// payload (extra_notify, left out when the payload would grow past
	// kMaxPayloadBytes; never in a minimal one). Built by their owners with
	// escape_json; copied by Add.
	const char *extra_details = nullptr;
	const char *extra_notify = nullptr;
};

class Batch
{
  public:
	// Palloc'd state; lives in the caller's memory context.
	static Batch *Create();
	void Add(const Event &event);
	int Size() const { return count_; }
	// A mark taken before a subtransaction, and dropping every event added
	// since: the events of a release that was rolled back are never written
	// nor sent.
	int Mark() const { return count_; }
	void Truncate(int mark)
	{
		if (mark >= 0 && mark < count_)
			count_ = mark;
	}
	// Writes the rows and queues one NOTIFY per event (sent at commit). Never
	// raises on the content of an event: text fields are clipped to
	// kMaxFieldBytes (a marker ends a clipped value) and a payload never
	// exceeds kMaxPayloadBytes (PostgreSQL refuses NOTIFY payloads of 8000
	// bytes or more).
	void Flush(const catalog::Extension &ext, TimestampTz at);

  private:
	Event *items_;
	int count_;
	int capacity_;
};

} // namespace wh::events
