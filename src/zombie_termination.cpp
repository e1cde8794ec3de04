#include "zombie_termination.hpp"

#include "settings.hpp"
#include "spi_plans.hpp"

#include <cstring>

extern "C" {
#include "catalog/pg_authid.h"
#include "catalog/pg_type.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/json.h"
#include "utils/lsyscache.h"
}

namespace wh::zombies
{

namespace
{

bool HasColumn(const catalog::Extension &ext, const char *table, const char *column)
{
	Oid rel = get_relname_relid(table, ext.schema);
	return OidIsValid(rel) && get_attnum(rel, column) != InvalidAttrNumber;
}

// The worker type's override, else the setting.
bool Enabled(const catalog::Extension &ext, const char *worker_type)
{
	if (worker_type && HasColumn(ext, "worker_types", "terminate_zombies")) {
		static const Oid types[1] = {TEXTOID};
		Datum values[1] = {CStringGetTextDatum(worker_type)};
		char *sql = psprintf("SELECT t.terminate_zombies FROM %s t WHERE t.worker_type OPERATOR(pg_catalog.=) $1",
		                     catalog::Qualified(ext, "worker_types"));
		spi::Run(spi::Plan(sql, 1, types), values, nullptr, true);
		bool isnull = true;
		if (SPI_processed > 0) {
			Datum value = spi::Column(0, 1, &isnull);
			if (!isnull)
				return DatumGetBool(value);
		}
	}
	return settings::terminate_zombies;
}

// The role the worker belongs to (1.2 owner_role); InvalidOid when the row
// has none (a worker from before 1.2 that no role has beaten since): such a
// worker's backend is not terminated. Falling back to the extension's owner
// (a superuser) would let it terminate any client backend.
Oid OwnerRole(const catalog::Extension &ext, const char *worker_id)
{
	if (!HasColumn(ext, "worker_heartbeats", "owner_role"))
		return InvalidOid;
	static const Oid types[1] = {TEXTOID};
	Datum values[1] = {CStringGetTextDatum(worker_id)};
	char *sql = psprintf("SELECT w.owner_role::pg_catalog.oid FROM %s w WHERE w.worker_id OPERATOR(pg_catalog.=) $1",
	                     catalog::Qualified(ext, "worker_heartbeats"));
	spi::Run(spi::Plan(sql, 1, types), values, nullptr, true);
	bool isnull = true;
	Datum owner = SPI_processed > 0 ? spi::Column(0, 1, &isnull) : (Datum)0;
	return isnull ? InvalidOid : DatumGetObjectId(owner);
}

struct Backend {
	Oid role;
	Oid database;
	char *backend_type;
};

// The backend with this pid and start, as it is now (a fresh read of the
// activity table, not this transaction's snapshot of it).
bool FindBackend(int32 pid, TimestampTz backend_start, Backend *out)
{
	pgstat_clear_snapshot();
	static const Oid types[2] = {INT4OID, TIMESTAMPTZOID};
	Datum values[2] = {Int32GetDatum(pid), TimestampTzGetDatum(backend_start)};
	const char *sql = "SELECT s.usesysid, s.datid, s.backend_type FROM pg_catalog.pg_stat_get_activity($1) s "
	                  "WHERE s.backend_start OPERATOR(pg_catalog.=) $2";
	spi::Run(spi::Plan(sql, 2, types), values, nullptr, true);
	if (SPI_processed == 0)
		return false;
	bool isnull = false;
	Datum role = spi::Column(0, 1, &isnull);
	out->role = isnull ? InvalidOid : DatumGetObjectId(role);
	Datum database = spi::Column(0, 2, &isnull);
	out->database = isnull ? InvalidOid : DatumGetObjectId(database);
	out->backend_type = spi::ColumnText(0, 3);
	return true;
}

// Why the reaper may not terminate this backend (nullptr: it may).
const char *Refusal(const Backend &b, Oid owner)
{
	if (b.database != MyDatabaseId)
		return "the backend is connected to another database";
	if (!b.backend_type || strcmp(b.backend_type, "client backend") != 0)
		return "not a client backend";
	if (!OidIsValid(owner) || !OidIsValid(b.role))
		return "the worker's owner role or the backend's role is unknown";
	// What pg_terminate_backend() would allow the worker's owner role.
	if (superuser_arg(owner))
		return nullptr;
	if (superuser_arg(b.role))
		return "the backend belongs to a superuser and the worker does not";
	if (has_privs_of_role(owner, b.role) || has_privs_of_role(owner, ROLE_PG_SIGNAL_BACKEND))
		return nullptr;
	return "the worker's owner role may not terminate the backend's role";
}

char *Members(const forensics::Facts &f, const char *more)
{
	StringInfoData buf;
	initStringInfo(&buf);
	appendStringInfo(&buf, "\"pid\":%d,\"backend_start\":", f.session_pid);
	escape_json(&buf, JsonEncodeDateTime(nullptr, TimestampTzGetDatum(f.backend_start), TIMESTAMPTZOID, nullptr));
	if (more)
		appendStringInfo(&buf, ",%s", more);
	return buf.data;
}

void AddEvent(events::Batch *batch, const char *event, const char *worker_id, const char *worker_type,
              const char *reason, const char *members)
{
	events::Event e{};
	e.event = event;
	e.worker_id = worker_id;
	e.worker_type = worker_type;
	e.reason = reason;
	e.extra_details = members;
	e.extra_notify = members;
	batch->Add(e);
}

} // namespace

void TerminateIfZombie(const catalog::Extension &ext, const char *worker_id, const char *worker_type,
                       const forensics::Facts &facts, TimestampTz deadline, events::Batch *batch)
{
	if (!facts.cause || strcmp(facts.cause, "heartbeat_timeout") != 0 || facts.session_pid == 0 ||
	    !facts.has_backend_start || !worker_id)
		return; // only a session-bound worker dead by timeout
	if (!Enabled(ext, worker_type))
		return;
	Backend backend{};
	if (!FindBackend(facts.session_pid, facts.backend_start, &backend))
		return; // its backend is gone already (or the pid is another session's now)
	if (const char *refusal = Refusal(backend, OwnerRole(ext, worker_id))) {
		AddEvent(batch, "termination_refused", worker_id, worker_type, refusal, Members(facts, nullptr));
		return;
	}
	int64 wait_ms = Max(static_cast<int64>(0), (deadline - GetCurrentTimestamp()) / 1000);
	// pg_terminate_backend() as the reaper (a superuser): the checks above are
	// the boundary. It waits up to wait_ms for the process to exit (a WARNING
	// in the log when it does not).
	// The start is checked again in the same statement: the pid alone could
	// be another session's by now.
	static const Oid types[3] = {INT4OID, INT8OID, TIMESTAMPTZOID};
	Datum values[3] = {Int32GetDatum(facts.session_pid), Int64GetDatum(wait_ms),
	                   TimestampTzGetDatum(facts.backend_start)};
	spi::Run(spi::Plan("SELECT pg_catalog.pg_terminate_backend(s.pid, $2) "
	                   "FROM pg_catalog.pg_stat_get_activity($1) s "
	                   "WHERE s.backend_start OPERATOR(pg_catalog.=) $3",
	                   3, types),
	         values, nullptr, false);
	bool isnull = true;
	bool exited = SPI_processed > 0 && DatumGetBool(spi::Column(0, 1, &isnull)) && !isnull && wait_ms > 0;
	elog(LOG, "worker_heartbeat reaper: terminated backend %d of worker \"%s\", dead by timeout%s", facts.session_pid,
	     worker_id, exited ? "" : " (not seen exiting yet)");
	AddEvent(batch, "terminated", worker_id, worker_type, nullptr,
	         Members(facts, exited ? "\"exited\":true" : "\"exited\":false"));
}

} // namespace wh::zombies
