#include "boundary.hpp"

#include <cstring>

namespace wh
{

namespace
{
char cxx_error_text[512];
}

const char *RememberCxxError(const std::exception &e)
{
	std::strncpy(cxx_error_text, e.what(), sizeof(cxx_error_text) - 1);
	cxx_error_text[sizeof(cxx_error_text) - 1] = '\0';
	return cxx_error_text;
}

void ReportCxxError(const char *function, const char *message, bool out_of_memory)
{
	ereport(ERROR, (errcode(out_of_memory ? ERRCODE_OUT_OF_MEMORY : ERRCODE_INTERNAL_ERROR),
	                errmsg("worker_heartbeat: %s failed: %s", function, message)));
	pg_unreachable();
}

} // namespace wh
