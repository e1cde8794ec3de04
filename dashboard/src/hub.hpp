// EventHub: fans the notifications of one LISTEN connection out to every open
// server-sent-event stream. Keeps the last `capacity` events so that a browser
// that reconnects with Last-Event-ID gets what it missed (or is told it missed
// too much and must reload its state). Thread-safe; no I/O.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <mutex>
#include <string>
#include <vector>

namespace whd {

struct HubEvent {
  std::uint64_t id;
  std::string name;  // SSE event name
  std::string data;  // JSON
};

struct HubBatch {
  std::vector<HubEvent> events;
  bool gap = false;     // events after the cursor were already dropped
  bool closed = false;  // the hub is shutting down
};

class EventHub {
 public:
  explicit EventHub(std::size_t capacity = 512) : capacity_(capacity == 0 ? 1 : capacity) {}

  std::uint64_t publish(std::string name, std::string data) {
    std::uint64_t id;
    {
      std::lock_guard<std::mutex> lock(mu_);
      id = ++last_id_;
      ring_.push_back(HubEvent{id, std::move(name), std::move(data)});
      while (ring_.size() > capacity_) ring_.pop_front();
    }
    cv_.notify_all();
    return id;
  }

  // Events with id > after; waits up to `timeout` when there are none yet.
  HubBatch wait_after(std::uint64_t after, std::chrono::milliseconds timeout) {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait_for(lock, timeout, [&] { return closed_ || last_id_ > after; });
    HubBatch b;
    b.closed = closed_;
    if (last_id_ <= after) return b;
    std::uint64_t oldest = ring_.empty() ? last_id_ + 1 : ring_.front().id;
    if (after + 1 < oldest) b.gap = true;
    for (const HubEvent& e : ring_) {
      if (e.id > after) b.events.push_back(e);
    }
    return b;
  }

  std::uint64_t last_id() const {
    std::lock_guard<std::mutex> lock(mu_);
    return last_id_;
  }

  void close() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      closed_ = true;
    }
    cv_.notify_all();
  }

  // Bounds the number of open streams (each holds a server thread).
  bool try_subscribe(std::size_t max) {
    std::lock_guard<std::mutex> lock(mu_);
    if (subscribers_ >= max) return false;
    ++subscribers_;
    return true;
  }
  void unsubscribe() {
    std::lock_guard<std::mutex> lock(mu_);
    if (subscribers_ > 0) --subscribers_;
  }
  std::size_t subscribers() const {
    std::lock_guard<std::mutex> lock(mu_);
    return subscribers_;
  }

 private:
  const std::size_t capacity_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<HubEvent> ring_;
  std::uint64_t last_id_ = 0;
  std::size_t subscribers_ = 0;
  bool closed_ = false;
};

}  // namespace whd
