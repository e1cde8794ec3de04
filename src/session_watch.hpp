// Busy sessions that bound a worker: noticing that their client is gone.
//
// A session-bound worker (p_session_bound => true) is declared dead when its
// session ends. The server notices a lost client only when it next talks to
// it: a session running a long statement (pg_sleep(60), a long query on the
// heartbeat's connection) whose client was SIGKILLed would stay alive until
// the statement ends. PostgreSQL (14+, Linux) can poll the client socket
// while a statement runs: client_connection_check_interval. When a session
// binds a worker we set it for that session (SET semantics: it survives the
// transaction, and a transaction that rolls back leaves no trace), so the
// backend exits with "connection to client lost" and the session-end hook
// tells the reaper. Cost: one poll() per interval per busy bound session.
#pragma once

#include "pg.hpp"

namespace wh::session_watch
{

// Called where a heartbeat binds a worker to this session. Sets
// client_connection_check_interval to worker_heartbeat.session_check_interval
// unless that is 0, or the session already checks at least as often.
void WatchThisSession();

} // namespace wh::session_watch
