// 1.3 drain and pause (issue 16, section 1): the rules of worker_directives,
// kept in each backend's memory and reloaded when a relcache invalidation of
// that table arrives (sent at commit by its statement trigger), so a heartbeat
// with no rule in force costs nothing more than before: no SQL, no lock.
#pragma once

#include "catalog.hpp"
#include "events.hpp"
#include "pg.hpp"

namespace wh::directives
{

enum class Directive { Run, Drain, Pause };

const char *Name(Directive d); // "run", "drain", "pause"

// heartbeat(): the directive of a worker that has just beaten (its row is
// written or cached). worker_type and metadata are the heartbeat's arguments
// (metadata may be NULL); the stored row is read only when a rule needs it. A
// draining worker that holds no lease gets its 'drained' event here (once per
// drain; not when live is false: a heartbeat with status 'stopped').
Directive ForHeartbeat(text *worker_id, text *worker_type, Jsonb *metadata, bool live);

// claim_leases(): true when the worker is draining or paused (the claim
// returns no row). Takes RowExclusiveLock on worker_directives, which
// drain_workers() and pause_workers() wait for (ShareRowExclusiveLock): a
// claim concurrent with a drain either commits before it or sees it. SPI is
// connected.
bool RefusesClaims(const catalog::Extension &ext, text *worker_id);

// stop_worker(): a draining worker that holds no lease when it stops gets its
// 'drained' event (added to batch) unless it had one since the drain. SPI is
// connected, we act as the extension's owner.
void NoteStop(const catalog::Extension &ext, const char *worker_id, const char *worker_type, events::Batch *batch);

} // namespace wh::directives
