#include "session_watch.hpp"

#include "settings.hpp"

#include <poll.h>

extern "C" {
#include "tcop/tcopprot.h"
#include "utils/guc.h"
}

namespace wh::session_watch
{

void WatchThisSession()
{
#ifdef POLLRDHUP // what PostgreSQL needs for client_connection_check_interval (Linux)
	int want = settings::session_check_interval_ms;
	if (want <= 0 || MyProcPort == nullptr) // off, or not a client backend
		return;
	if (client_connection_check_interval > 0 && client_connection_check_interval <= want)
		return; // the session (or the server's configuration) already checks as often
	char value[32];
	snprintf(value, sizeof value, "%d", want);
	// GUC_ACTION_SET at session level: kept when the transaction commits,
	// undone when it rolls back (then the binding is undone too). A failure
	// is a WARNING: the heartbeat itself went through.
	(void)set_config_option("client_connection_check_interval", value, PGC_USERSET, PGC_S_SESSION, GUC_ACTION_SET, true,
	                        WARNING, false);
#endif
}

} // namespace wh::session_watch
