#include "heartbeats.hpp"

#include "boundary.hpp"
#include "core/digest.hpp"
#include "core/worker_status.hpp"
#include "directives.hpp"
#include "death_forensics.hpp"
#include "events.hpp"
#include "heartbeat_cache.hpp"
#include "leases.hpp"
#include "reaper.hpp"
#include "reaper_registry.hpp"
#include "session_watch.hpp"
#include "settings.hpp"
#include "spi_plans.hpp"

#include <cstring>
#include <string_view>

extern "C" {
#include "access/genam.h"
#include "access/table.h"
#include "catalog/indexing.h"
#include "catalog/pg_extension.h"
#include "catalog/pg_type.h"
#include "miscadmin.h"
#include "storage/ipc.h"
#include "utils/acl.h"
#include "utils/fmgroids.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/uuid.h"
}

namespace wh::heartbeats
{

namespace
{

constexpr const char *kLiveStatuses = "ARRAY['active','idle','processing']::pg_catalog.text[]";

std::string_view View(text *value)
{
	return std::string_view(VARDATA_ANY(value), VARSIZE_ANY_EXHDR(value));
}

uint64 DigestOf(const HeartbeatArgs &a)
{
	core::ArgumentDigest digest;
	digest.AddText(View(a.worker_type));
	digest.AddText(View(a.status));
	if (a.run_id)
		digest.AddBytes(a.run_id->data, UUID_LEN);
	else
		digest.AddNull();
	if (a.task)
		digest.AddText(View(a.task));
	else
		digest.AddNull();
	if (a.has_lease_expires)
		digest.AddInt64(a.lease_expires);
	else
		digest.AddNull();
	if (a.metadata)
		digest.AddBytes(VARDATA_ANY(a.metadata), VARSIZE_ANY_EXHDR(a.metadata));
	else
		digest.AddNull();
	digest.AddBool(a.session_bound);
	// The calling role: another role's heartbeat never takes the fast path,
	// so it always meets the ownership check of the slow one.
	digest.AddInt64(static_cast<int64>(GetUserId()));
	return digest.Value();
}

bool own_insert_in_progress = false;

// --- the session hook ---------------------------------------------------------
bool session_hook_installed = false;

void OnSessionEnd(int, Datum)
{
	// What pg_stat_activity shows of us, for the died event (before the
	// reaper can look: it wakes below).
	forensics::CaptureAtSessionEnd();
	// The session is ending: wake the reaper, telling it which session it was,
	// because pg_stat_activity may still list us for a few more moments.
	registry::NoteSessionEnded(MyDatabaseId, MyProcPid, MyStartTimestamp, GetCurrentTimestamp());
}

void InstallSessionHook()
{
	if (session_hook_installed)
		return;
	(void)forensics::Attach(); // not preloaded: now, not while exiting
	before_shmem_exit(OnSessionEnd, (Datum)0);
	session_hook_installed = true;
}

void EnsureReaper(TimestampTz now)
{
	if (registry::ShouldStartReaper(MyDatabaseId, now))
		reaper::StartForDatabase(MyDatabaseId, false);
}

// --- who called, and acting as the extension's owner -------------------------
// upsert_worker_heartbeat and stop_worker are SECURITY INVOKER from 1.2 on:
// they note their caller, then switch to the extension's owner themselves to
// write our tables (which have no write policies). Under the 1.0/1.1
// declarations (SECURITY DEFINER, no owner_role column) the caller is the
// definer and ownership is not checked.
struct Caller {
	Oid role;        // GetUserId() on entry
	Oid ext_owner;   // pg_extension.extowner
	bool owned_rows; // worker_heartbeats has owner_role (1.2)
	Oid saved_user;
	int saved_context;
};

Oid ExtensionOwner(Oid ext_oid)
{
	Relation rel = table_open(ExtensionRelationId, AccessShareLock);
	ScanKeyData key;
	ScanKeyInit(&key, Anum_pg_extension_oid, BTEqualStrategyNumber, F_OIDEQ, ObjectIdGetDatum(ext_oid));
	SysScanDesc scan = systable_beginscan(rel, ExtensionOidIndexId, true, nullptr, 1, &key);
	HeapTuple tuple = systable_getnext(scan);
	Oid owner = HeapTupleIsValid(tuple) ? reinterpret_cast<Form_pg_extension>(GETSTRUCT(tuple))->extowner : InvalidOid;
	systable_endscan(scan);
	table_close(rel, AccessShareLock);
	if (!OidIsValid(owner))
		elog(ERROR, "worker_heartbeat: extension %u not found", ext_oid);
	return owner;
}

Caller BecomeExtensionOwner(const catalog::Extension &ext)
{
	Caller c{};
	GetUserIdAndSecContext(&c.saved_user, &c.saved_context);
	c.role = c.saved_user;
	c.ext_owner = ExtensionOwner(ext.oid);
	Oid rel = get_relname_relid("worker_heartbeats", ext.schema);
	c.owned_rows = OidIsValid(rel) && get_attnum(rel, "owner_role") != InvalidAttrNumber;
	if (c.role != c.ext_owner)
		SetUserIdAndSecContext(c.ext_owner, c.saved_context | SECURITY_LOCAL_USERID_CHANGE);
	return c;
}

// On error, the (sub)transaction's abort restores the user.
void RestoreCaller(const Caller &c)
{
	SetUserIdAndSecContext(c.saved_user, c.saved_context);
}

const char *RoleName(Oid role)
{
	char *name = GetUserNameFromId(role, true);
	return name ? name : psprintf("(dropped role %u)", role);
}

// A worker is acted on (beaten, stopped, retyped, revived, rewritten) only by
// its owner role, a member of it, or a member of the extension's owner.
void CheckMayActOn(const Caller &c, text *worker_id, Oid owner, const char *action)
{
	if (!c.owned_rows || settings::shared_worker_ids || !OidIsValid(owner))
		return;
	if (has_privs_of_role(c.role, owner) || has_privs_of_role(c.role, c.ext_owner))
		return;
	const char *owner_name = RoleName(owner);
	const char *caller_name = RoleName(c.role);
	ereport(ERROR,
	        (errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
	         errmsg("worker \"%s\" belongs to role \"%s\"", text_to_cstring(worker_id), owner_name),
	         errdetail("Role \"%s\" may not %s it: only its owner role, members of that role and superusers may.",
	                   caller_name, action),
	         errhint("Use a worker_id of your own, or GRANT %s TO %s. A superuser can set "
	                 "worker_heartbeat.shared_worker_ids = on to let every role act on every worker.",
	                 quote_identifier(owner_name), quote_identifier(caller_name))));
}

void CheckWorkersPerRole(const catalog::Extension &ext, const Caller &c)
{
	if (!c.owned_rows || settings::max_workers_per_role <= 0)
		return;
	static const Oid types[1] = {OIDOID};
	Datum values[1] = {ObjectIdGetDatum(c.role)};
	char *sql = psprintf("SELECT pg_catalog.count(*) FROM %s WHERE owner_role OPERATOR(pg_catalog.=) $1",
	                     catalog::Qualified(ext, "worker_heartbeats"));
	// Not read-only: it must see the workers this statement has just created
	// (SELECT upsert_worker_heartbeat(...) FROM generate_series(...)).
	spi::Run(spi::Plan(sql, 1, types), values, nullptr, false);
	bool isnull = false;
	int64 n = DatumGetInt64(spi::Column(0, 1, &isnull));
	if (n >= settings::max_workers_per_role)
		ereport(ERROR, (errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
		                errmsg("role \"%s\" already owns %lld workers", RoleName(c.role), static_cast<long long>(n)),
		                errdetail("worker_heartbeat.max_workers_per_role is %d; stopped and dead workers count "
		                          "until they are removed.",
		                          settings::max_workers_per_role),
		                errhint("Reuse worker ids, remove old workers with cleanup_stale_workers(), or ask a "
		                        "superuser to raise worker_heartbeat.max_workers_per_role.")));
}

void CheckMetadataSize(int64 bytes, bool merged)
{
	if (bytes <= settings::max_metadata_bytes)
		return;
	ereport(ERROR, (errcode(ERRCODE_STRING_DATA_RIGHT_TRUNCATION),
	                merged ? errmsg("metadata would grow to %lld bytes", static_cast<long long>(bytes))
	                       : errmsg("metadata is too large (%lld bytes)", static_cast<long long>(bytes)),
	                errdetail("worker_heartbeat.max_metadata_bytes is %d (jsonb size, after merging with the stored "
	                          "metadata).",
	                          settings::max_metadata_bytes),
	                errhint("Keep metadata small (versions, host names) and large data in a table of your own.")));
}

struct Previous {
	bool found;
	bool inserted;
	char *status;
	char *worker_type;
	bool bound_elsewhere;
	int32 bound_pid;
	Oid owner;            // owner_role before the write (InvalidOid: none, or no such column)
	int64 metadata_bytes; // size of the merged metadata when p_metadata was given, else -1
};

// $1 id, $2 type, $3 status, $4 run, $5 task, $6 lease deadline, $7 metadata,
// $8 pid and $9 backend start when session-bound (else NULL), $10 the time.
constexpr int kBeatArgs = 10;
const Oid kBeatArgTypes[kBeatArgs] = {TEXTOID,        TEXTOID,  TEXTOID, UUIDOID,        TEXTOID,
                                      TIMESTAMPTZOID, JSONBOID, INT4OID, TIMESTAMPTZOID, TIMESTAMPTZOID};

void FillBeatArgs(const HeartbeatArgs &a, TimestampTz now, Datum *values, char *nulls)
{
	values[0] = PointerGetDatum(a.worker_id);
	values[1] = PointerGetDatum(a.worker_type);
	values[2] = PointerGetDatum(a.status);
	values[3] = a.run_id ? UUIDPGetDatum(a.run_id) : (Datum)0;
	values[4] = a.task ? PointerGetDatum(a.task) : (Datum)0;
	values[5] = TimestampTzGetDatum(a.lease_expires);
	values[6] = a.metadata ? JsonbPGetDatum(a.metadata) : (Datum)0;
	values[7] = Int32GetDatum(MyProcPid);
	values[8] = TimestampTzGetDatum(MyStartTimestamp);
	values[9] = TimestampTzGetDatum(now);
	for (int i = 0; i < kBeatArgs; ++i)
		nulls[i] = ' ';
	nulls[kBeatArgs] = '\0';
	if (!a.run_id)
		nulls[3] = 'n';
	if (!a.task)
		nulls[4] = 'n';
	if (!a.has_lease_expires)
		nulls[5] = 'n';
	if (!a.metadata)
		nulls[6] = 'n';
	if (!a.session_bound)
		nulls[7] = nulls[8] = 'n';
}

// The table's counterpart of the cache's fast path: only the timestamp moves,
// and only when every other argument equals what the row already holds (a
// live worker, bound to this very session if p_session_bound). Anything else
// is left to WriteRow(). A plain statement, cheap to plan and HOT to apply.
// The owner test is written so that no index can serve it ("IS TRUE" is not
// an index condition): the plan is generic after five calls, and a generic
// plan made while the table was empty and never analyzed took the index on
// owner_role over the primary key, so each beat read every row of its role
// (100,000 first beats in one transaction took minutes, not seconds).
bool TouchUnchangedRow(const catalog::Extension &ext, const Caller &c, const HeartbeatArgs &a, TimestampTz now)
{
	// $1-$10 as in FillBeatArgs; $11: the caller, who must own the row.
	constexpr int kArgs = kBeatArgs + 1;
	static const Oid types[kArgs] = {TEXTOID,  TEXTOID, TEXTOID,        UUIDOID,        TEXTOID, TIMESTAMPTZOID,
	                                 JSONBOID, INT4OID, TIMESTAMPTZOID, TIMESTAMPTZOID, OIDOID};
	Datum values[kArgs];
	char nulls[kArgs + 1];
	FillBeatArgs(a, now, values, nulls);
	values[10] = ObjectIdGetDatum(c.role);
	nulls[10] = ' ';
	nulls[11] = '\0';
	char *sql = psprintf(
	    "UPDATE %s SET last_heartbeat_at = $10 WHERE worker_id OPERATOR(pg_catalog.=) $1 "
	    "AND worker_type OPERATOR(pg_catalog.=) $2 AND status OPERATOR(pg_catalog.=) $3 "
	    "AND current_run_id IS NOT DISTINCT FROM $4 AND current_task IS NOT DISTINCT FROM $5 "
	    "AND lease_expires_at IS NOT DISTINCT FROM $6 "
	    "AND ($7::pg_catalog.jsonb IS NULL OR (metadata OPERATOR(pg_catalog.||) $7) OPERATOR(pg_catalog.=) metadata) "
	    "AND session_pid IS NOT DISTINCT FROM $8 AND session_started_at IS NOT DISTINCT FROM $9%s",
	    catalog::Qualified(ext, "worker_heartbeats"),
	    c.owned_rows ? " AND (owner_role OPERATOR(pg_catalog.=) $11) IS TRUE" : "");
	spi::Run(spi::Plan(sql, kArgs, types), values, nulls, false);
	return SPI_processed > 0;
}

// One row written, or found bound to another session. Returns what was there
// before. The caller checks ownership and sizes from it and raises, which
// undoes the write.
Previous WriteRow(const catalog::Extension &ext, const Caller &c, const HeartbeatArgs &a, TimestampTz now)
{
	// $1-$10 as in FillBeatArgs; $11, $12: this session, to compare with the
	// bound one; $13: the caller, owner of a new (or not yet adopted) worker.
	constexpr int kArgs = kBeatArgs + 3;
	static const Oid types[kArgs] = {TEXTOID,        TEXTOID,        TEXTOID, UUIDOID,        TEXTOID,
	                                 TIMESTAMPTZOID, JSONBOID,       INT4OID, TIMESTAMPTZOID, TIMESTAMPTZOID,
	                                 INT4OID,        TIMESTAMPTZOID, OIDOID};
	Datum values[kArgs];
	char nulls[kArgs + 1];
	FillBeatArgs(a, now, values, nulls);
	values[10] = Int32GetDatum(MyProcPid);
	values[11] = TimestampTzGetDatum(MyStartTimestamp);
	values[12] = ObjectIdGetDatum(c.role);
	nulls[10] = nulls[11] = nulls[12] = ' ';
	nulls[13] = '\0';

	const char *table = catalog::Qualified(ext, "worker_heartbeats");
	// The self-join returns the row as it was: its status (revived? restarted?),
	// the session it was bound to and its owner.
	char *update_sql = psprintf(
	    "UPDATE %s AS w SET worker_type = $2, status = $3, current_run_id = $4, current_task = $5, "
	    "lease_expires_at = $6, "
	    "metadata = CASE WHEN $7::pg_catalog.jsonb IS NULL THEN w.metadata ELSE w.metadata "
	    "OPERATOR(pg_catalog.||) $7 END, "
	    "session_pid = $8, session_started_at = $9, last_heartbeat_at = $10, "
	    "started_at = CASE WHEN old.status OPERATOR(pg_catalog.=) 'stopped' THEN $10 ELSE w.started_at END, "
	    "died_at = NULL, death_cause = NULL%s "
	    "FROM (SELECT o.status, o.worker_type, o.session_pid, o.session_started_at, %s AS owner_role FROM %s o "
	    "      WHERE o.worker_id OPERATOR(pg_catalog.=) $1 FOR UPDATE) AS old "
	    "WHERE w.worker_id OPERATOR(pg_catalog.=) $1 "
	    "RETURNING old.status, old.worker_type, "
	    "CASE WHEN old.session_pid IS NOT NULL AND (old.session_pid, old.session_started_at) IS DISTINCT FROM "
	    "($11, $12) "
	    "THEN EXISTS (SELECT 1 FROM pg_catalog.pg_stat_get_activity(old.session_pid) s "
	    "             WHERE s.backend_start OPERATOR(pg_catalog.=) old.session_started_at) ELSE false END, "
	    "old.session_pid, old.owner_role, "
	    "CASE WHEN $7::pg_catalog.jsonb IS NULL THEN NULL ELSE w.metadata END",
	    table, c.owned_rows ? ", owner_role = COALESCE(w.owner_role, $13::pg_catalog.regrole)" : "",
	    c.owned_rows ? "o.owner_role::pg_catalog.oid" : "NULL::pg_catalog.oid", table);
	char *insert_sql =
	    psprintf("INSERT INTO %s AS w (worker_id, worker_type, status, current_run_id, current_task, lease_expires_at, "
	             "metadata, session_pid, session_started_at, last_heartbeat_at, started_at%s) "
	             "VALUES ($1, $2, $3, $4, $5, $6, COALESCE($7, '{}'::pg_catalog.jsonb), $8, $9, $10, $10%s) "
	             "ON CONFLICT (worker_id) DO NOTHING RETURNING 1",
	             table, c.owned_rows ? ", owner_role" : "", c.owned_rows ? ", $13::pg_catalog.regrole" : "");

	Previous prev{};
	prev.metadata_bytes = -1;
	for (int attempt = 0; attempt < 3; ++attempt) {
		spi::Run(spi::Plan(update_sql, kArgs, types), values, nulls, false);
		if (SPI_processed > 0) {
			prev.found = true;
			prev.status = spi::ColumnText(0, 1);
			prev.worker_type = spi::ColumnText(0, 2);
			bool isnull = false;
			prev.bound_elsewhere = DatumGetBool(spi::Column(0, 3, &isnull));
			Datum pid = spi::Column(0, 4, &isnull);
			prev.bound_pid = isnull ? 0 : DatumGetInt32(pid);
			Datum owner = spi::Column(0, 5, &isnull);
			prev.owner = isnull ? InvalidOid : DatumGetObjectId(owner);
			Datum metadata = spi::Column(0, 6, &isnull);
			if (!isnull)
				prev.metadata_bytes = VARSIZE_ANY_EXHDR(DatumGetJsonbP(metadata));
			return prev;
		}
		if (attempt == 0)
			CheckWorkersPerRole(ext, c);
		own_insert_in_progress = true;
		PG_TRY();
		{
			spi::Run(spi::Plan(insert_sql, kArgs, types), values, nulls, false);
		}
		PG_FINALLY();
		{
			own_insert_in_progress = false;
		}
		PG_END_TRY();
		if (SPI_processed > 0) {
			prev.inserted = true;
			return prev;
		}
		// Another session inserted the same worker in between: update it.
	}
	elog(ERROR, "worker_heartbeat: worker \"%s\" kept changing during its heartbeat", text_to_cstring(a.worker_id));
}

// The worker is stopped: no run, task, lease deadline or session; its leases
// are released at once. Returns false when there is no such worker. SPI is
// connected and we act as the extension's owner.
bool StopRow(const catalog::Extension &ext, const Caller &c, text *worker_id, TimestampTz now, bool emit_event)
{
	static const Oid types[2] = {TEXTOID, TIMESTAMPTZOID};
	Datum values[2] = {PointerGetDatum(worker_id), TimestampTzGetDatum(now)};
	char *sql = psprintf("UPDATE %s SET status = 'stopped', current_run_id = NULL, current_task = NULL, "
	                     "lease_expires_at = NULL, session_pid = NULL, session_started_at = NULL, "
	                     "last_heartbeat_at = $2, died_at = NULL, death_cause = NULL "
	                     "WHERE worker_id OPERATOR(pg_catalog.=) $1 RETURNING worker_type, %s",
	                     catalog::Qualified(ext, "worker_heartbeats"),
	                     c.owned_rows ? "owner_role::pg_catalog.oid" : "NULL::pg_catalog.oid");
	spi::Run(spi::Plan(sql, 2, types), values, nullptr, false);
	if (SPI_processed == 0)
		return false;
	char *worker_type = spi::ColumnText(0, 1);
	bool isnull = false;
	Datum owner = spi::Column(0, 2, &isnull);
	// Before anything is released; the error undoes the update.
	CheckMayActOn(c, worker_id, isnull ? InvalidOid : DatumGetObjectId(owner), "stop");
	char *id = text_to_cstring(worker_id);
	events::Batch *batch = events::Batch::Create();
	directives::NoteStop(ext, id, worker_type, batch); // 1.3: 'drained', before the release
	if (emit_event) {
		events::Event e{};
		e.event = "stopped";
		e.worker_id = id;
		e.worker_type = worker_type;
		batch->Add(e);
	}
	leases::Holder holder{id, -1, -1};
	leases::ReleaseOptions options{&holder, 1, false, true, "worker_stopped"};
	leases::ReleaseResult released = leases::ReleaseLeases(ext, options, batch);
	batch->Flush(ext, now);
	if (released.released > 0)
		registry::RecordPass(MyDatabaseId, registry::PassRecord{now, 0, 0, static_cast<uint64>(released.released)});
	cache::Forget(MyDatabaseId, VARDATA_ANY(worker_id), VARSIZE_ANY_EXHDR(worker_id));
	return true;
}

} // namespace

bool OwnInsertInProgress()
{
	return own_insert_in_progress;
}

void CheckIdentifierArg(text *value, const char *what)
{
	if (!value)
		ereport(ERROR, (errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED), errmsg("%s must not be null", what)));
	switch (core::CheckIdentifier(View(value))) {
	case core::IdentifierProblem::None:
		return;
	case core::IdentifierProblem::Empty:
	case core::IdentifierProblem::Blank:
		ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE), errmsg("%s must not be empty", what)));
		break;
	case core::IdentifierProblem::TooLong:
		ereport(ERROR, (errcode(ERRCODE_STRING_DATA_RIGHT_TRUNCATION),
		                errmsg("%s is too long (%d bytes)", what, static_cast<int>(VARSIZE_ANY_EXHDR(value))),
		                errdetail("At most %d bytes are allowed.", static_cast<int>(core::kMaxIdentifierBytes))));
		break;
	}
}

void Validate(const HeartbeatArgs &a)
{
	CheckIdentifierArg(a.worker_id, "worker_id");
	CheckIdentifierArg(a.worker_type, "worker_type");
	if (!a.status)
		ereport(ERROR, (errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED), errmsg("status must not be null"),
		                errhint("Use one of active, idle, processing, stopped.")));
	auto status = core::ParseStatus(View(a.status));
	if (!status)
		ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE),
		                errmsg("unknown worker status \"%s\"", text_to_cstring(a.status)),
		                errhint("Use one of active, idle, processing, stopped.")));
	if (!core::IsReportable(*status))
		ereport(ERROR,
		        (errcode(ERRCODE_INVALID_PARAMETER_VALUE), errmsg("a worker cannot report itself dead"),
		         errhint("Only the reaper declares workers dead; call stop_worker() when a worker shuts down.")));
	if (a.metadata && !JB_ROOT_IS_OBJECT(a.metadata))
		ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE), errmsg("metadata must be a JSON object"),
		                errhint("For example '{\"version\": \"1.2\"}'.")));
	// Sizes (issue 12 item 9): bounded by superuser settings.
	if (a.task && static_cast<int64>(VARSIZE_ANY_EXHDR(a.task)) > settings::max_task_bytes)
		ereport(ERROR, (errcode(ERRCODE_STRING_DATA_RIGHT_TRUNCATION),
		                errmsg("current_task is too long (%d bytes)", static_cast<int>(VARSIZE_ANY_EXHDR(a.task))),
		                errdetail("worker_heartbeat.max_task_bytes is %d.", settings::max_task_bytes),
		                errhint("Put a short description or an id of the task here, and details in a table of your "
		                        "own.")));
	if (a.metadata)
		CheckMetadataSize(VARSIZE_ANY_EXHDR(a.metadata), false);
}

void Beat(const HeartbeatArgs &a)
{
	TimestampTz now = GetCurrentTransactionStartTimestamp();
	auto status = *core::ParseStatus(View(a.status));
	bool live = core::IsLive(status);
	cache::Beat beat{MyDatabaseId,
	                 VARDATA_ANY(a.worker_id),
	                 static_cast<int>(VARSIZE_ANY_EXHDR(a.worker_id)),
	                 a.function_oid,
	                 DigestOf(a),
	                 a.session_bound ? MyProcPid : 0,
	                 now};

	// Fast path: nothing but the time changed since the last heartbeat.
	bool changed = false; // the cache knows other arguments: the full write
	if (live && cache::TryFastBeat(beat, &changed)) {
		registry::NoteHeartbeatsPending(MyDatabaseId);
		EnsureReaper(now);
		return;
	}

	catalog::Extension ext = catalog::RequireExtension();
	Caller caller = BecomeExtensionOwner(ext);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "worker_heartbeat: SPI_connect failed");
	// Not absorbed (no cache before 17 without preload, the cache full, no
	// flushing reaper, no entry yet), most heartbeats still change nothing but
	// the time. The row then holds exactly these arguments: cache them.
	if (live && !changed && TouchUnchangedRow(ext, caller, a, now)) {
		SPI_finish();
		RestoreCaller(caller);
		cache::RememberAtCommit(beat);
		EnsureReaper(now);
		return;
	}
	Previous prev = WriteRow(ext, caller, a, now);
	// Each of these errors undoes the write.
	if (prev.found)
		CheckMayActOn(caller, a.worker_id, prev.owner, "heartbeat for");
	if (prev.bound_elsewhere)
		ereport(ERROR,
		        (errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
		         errmsg("worker \"%s\" is bound to another database session", text_to_cstring(a.worker_id)),
		         errdetail("It was registered with p_session_bound => true by the session with pid %d, which is "
		                   "still open.",
		                   prev.bound_pid),
		         errhint("Behind a transaction-mode pooler (PgBouncer, Supavisor) every call may land on another "
		                 "server session: heartbeat with p_session_bound => false there. Otherwise two processes "
		                 "share this worker_id.")));
	if (prev.metadata_bytes >= 0)
		CheckMetadataSize(prev.metadata_bytes, true);

	bool was_live =
	    prev.found && prev.status && core::ParseStatus(prev.status) && core::IsLive(*core::ParseStatus(prev.status));
	events::Batch *batch = events::Batch::Create();
	events::Event e{};
	e.worker_id = text_to_cstring(a.worker_id);
	e.worker_type = text_to_cstring(a.worker_type);
	if (prev.inserted || (prev.found && prev.status && strcmp(prev.status, "stopped") == 0 && live)) {
		e.event = "started";
		batch->Add(e);
	} else if (prev.found && prev.status && strcmp(prev.status, "dead") == 0 && live) {
		e.event = "revived";
		batch->Add(e);
	}
	batch->Flush(ext, now);
	// 'stopped' through the heartbeat is stop_worker(): no run, task or
	// deadline, and its leases released at once (issue 12).
	if (status == core::WorkerStatus::Stopped)
		(void)StopRow(ext, caller, a.worker_id, now,
		              !(prev.found && prev.status && strcmp(prev.status, "stopped") == 0));
	SPI_finish();
	RestoreCaller(caller);

	if (live && (!was_live || (prev.worker_type && strcmp(prev.worker_type, e.worker_type) != 0)))
		registry::WorkerBecameLive(MyDatabaseId, now);
	if (a.session_bound)
		InstallSessionHook();
	if (a.session_bound)
		session_watch::WatchThisSession(); // a busy session notices a lost client too
	if (live)
		cache::RememberAtCommit(beat);
	else
		cache::Forget(MyDatabaseId, beat.worker_id, beat.worker_id_len);
	EnsureReaper(now);
}

bool Stop(text *worker_id)
{
	CheckIdentifierArg(worker_id, "worker_id");
	catalog::Extension ext = catalog::RequireExtension();
	TimestampTz now = GetCurrentTransactionStartTimestamp();
	Caller caller = BecomeExtensionOwner(ext);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "worker_heartbeat: SPI_connect failed");
	bool found = StopRow(ext, caller, worker_id, now, true);
	SPI_finish();
	RestoreCaller(caller);
	return found;
}

int CleanupStale(const catalog::Extension &ext, int64 threshold_us)
{
	TimestampTz now = GetCurrentTransactionStartTimestamp();
	TimestampTz cutoff = now - threshold_us;
	static const Oid types[1] = {TIMESTAMPTZOID};
	Datum values[1] = {TimestampTzGetDatum(cutoff)};
	const char *table = catalog::Qualified(ext, "worker_heartbeats");
	char *candidates_sql =
	    psprintf("SELECT worker_id FROM %s WHERE status OPERATOR(pg_catalog.=) ANY (ARRAY['stopped','dead']) "
	             "AND COALESCE(died_at, last_heartbeat_at) OPERATOR(pg_catalog.<) $1",
	             table);
	spi::Run(spi::Plan(candidates_sql, 1, types), values, nullptr, true);
	int n = static_cast<int>(SPI_processed);
	if (n == 0)
		return 0;
	auto *ids = static_cast<Datum *>(palloc(sizeof(Datum) * n));
	for (int i = 0; i < n; ++i)
		ids[i] = CStringGetTextDatum(spi::ColumnText(i, 1));
	bool *holds = leases::HoldsAnyLease(ext, ids, n);
	int keep = 0;
	for (int i = 0; i < n; ++i)
		if (!holds[i])
			ids[keep++] = ids[i];
	if (keep == 0)
		return 0;
	static const Oid delete_types[2] = {TEXTARRAYOID, TIMESTAMPTZOID};
	Datum delete_values[2] = {PointerGetDatum(construct_array(ids, keep, TEXTOID, -1, false, TYPALIGN_INT)),
	                          TimestampTzGetDatum(cutoff)};
	// SKIP LOCKED: a row another transaction holds (a worker coming back, a
	// stop in flight) is left for the next cleanup; the reaper never waits.
	char *delete_sql = psprintf("WITH doomed AS (SELECT ctid FROM %s WHERE worker_id OPERATOR(pg_catalog.=) ANY ($1) "
	                            "AND status OPERATOR(pg_catalog.=) ANY (ARRAY['stopped','dead']) "
	                            "AND COALESCE(died_at, last_heartbeat_at) OPERATOR(pg_catalog.<) $2 "
	                            "FOR UPDATE SKIP LOCKED) "
	                            "DELETE FROM %s w USING doomed WHERE w.ctid OPERATOR(pg_catalog.=) doomed.ctid "
	                            "RETURNING w.worker_id, w.worker_type",
	                            table, table);
	spi::Run(spi::Plan(delete_sql, 2, delete_types, keep > spi::kCustomPlanAbove), delete_values, nullptr, false);
	int removed = static_cast<int>(SPI_processed);
	events::Batch *batch = events::Batch::Create();
	for (int i = 0; i < removed; ++i) {
		events::Event e{};
		e.event = "removed";
		e.worker_id = spi::ColumnText(i, 1);
		e.worker_type = spi::ColumnText(i, 2);
		batch->Add(e);
		cache::Forget(MyDatabaseId, e.worker_id, static_cast<int>(strlen(e.worker_id)));
	}
	batch->Flush(ext, now);
	return removed;
}

} // namespace wh::heartbeats
