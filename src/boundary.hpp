// The C++ / PostgreSQL error boundary.
//
// PostgreSQL reports errors with ereport(ERROR), which longjmps to the nearest
// PG_TRY or to the top of the backend. C++ reports errors with exceptions.
// Neither may cross the other's frames:
//   * an exception unwinding through a PostgreSQL C frame leaves
//     PG_exception_stack pointing at a dead frame;
//   * a longjmp over a C++ frame skips the destructors of its live objects.
//
// The rule in this code base:
//   1. Files that include pg.hpp (src/*.cpp) talk to PostgreSQL. They keep no
//      object with a non-trivial destructor alive across a call that can
//      ereport: their memory is palloc'd, their strings are StringInfo.
//   2. Files in src/core/ are plain C++. They never call PostgreSQL, so they
//      never longjmp; they may throw (std::bad_alloc at least).
//   3. Every SQL-callable function and every background-worker entry point runs
//      its body through WH_GUARDED (below). The body calls into src/core only
//      through this guard, so any C++ exception is caught here, inside the C++
//      frame, and turned into an ereport(ERROR) *after* the catch block has
//      ended (no C++ object is alive when the longjmp starts).
//
// grep WH_GUARDED to find every place where the two worlds meet.
#pragma once

#include "pg.hpp"

#include <exception>
#include <new>

namespace wh
{

// Copies what() into static storage: the exception object dies with the
// catch block, and we must leave the catch block before ereport longjmps.
const char *RememberCxxError(const std::exception &e);

[[noreturn]] void ReportCxxError(const char *function, const char *message, bool out_of_memory);

template <typename Body> inline auto RunGuarded(const char *function, Body &&body) -> decltype(body())
{
	const char *message = nullptr;
	bool out_of_memory = false;
	try {
		return body();
	} catch (const std::bad_alloc &) {
		out_of_memory = true;
		message = "out of memory";
	} catch (const std::exception &e) {
		message = RememberCxxError(e);
	} catch (...) {
		message = "unknown C++ exception";
	}
	// The catch block is over: no C++ object is alive in this frame.
	ReportCxxError(function, message, out_of_memory);
}

} // namespace wh

// Body of an SQL-callable function: WH_GUARDED(fcinfo-using code returning Datum)
#define WH_GUARDED(body) return wh::RunGuarded(__func__, [&]() -> Datum { body })
