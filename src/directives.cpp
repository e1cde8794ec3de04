#include "directives.hpp"

#include "boundary.hpp"
#include "heartbeats.hpp"
#include "leases.hpp"
#include "spi_plans.hpp"

extern "C" {
#include "access/heapam.h"
#include "access/table.h"
#include "access/tableam.h"
#include "commands/trigger.h"
#include "storage/lmgr.h"
#include "utils/fmgrprotos.h"
#include "utils/inval.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"

PG_FUNCTION_INFO_V1(wh_drain_workers);
PG_FUNCTION_INFO_V1(wh_pause_workers);
PG_FUNCTION_INFO_V1(wh_resume_workers);
PG_FUNCTION_INFO_V1(wh_worker_directives_changed);
}

#include <cstring>

namespace wh::directives
{

namespace
{

constexpr const char *kTable = "worker_directives";

// --- the rules, kept per backend ---------------------------------------------
struct Rule {
	Directive directive;
	text *worker_id;   // NULL: any
	text *worker_type; // NULL: any
	Jsonb *metadata;   // NULL: any; else the worker's metadata must contain it
	TimestampTz created_at;
};

MemoryContext rules_context = nullptr;
Rule *rules = nullptr;
int rule_count = 0;
bool rules_valid = false;
bool callback_registered = false;
Oid rules_relid = InvalidOid; // worker_directives; InvalidOid: not there (yet)

// A relcache invalidation of worker_directives (its trigger, at commit), or
// of everything (a cache reset). Without the table (extension not installed
// or not updated to 1.3) any relcache invalidation may be its creation.
void OnRelcacheInvalidation(Datum, Oid relid)
{
	if (relid == InvalidOid || relid == rules_relid || rules_relid == InvalidOid)
		rules_valid = false;
}

AttrNumber Column(Oid relid, const char *name)
{
	AttrNumber attnum = get_attnum(relid, name);
	if (attnum == InvalidAttrNumber)
		ereport(ERROR,
		        (errcode(ERRCODE_UNDEFINED_COLUMN), errmsg("worker_heartbeat: %s has no column \"%s\"", kTable, name),
		         errhint("Reinstall or update the extension: ALTER EXTENSION worker_heartbeat UPDATE.")));
	return attnum;
}

// Reads every rule into rules_context (see EnsureLoaded).
void LoadRules()
{
	MemoryContextReset(rules_context);
	rules = nullptr;
	rule_count = 0;
	rules_relid = InvalidOid;
	catalog::Extension ext{};
	if (!catalog::FindExtension(&ext))
		return;
	Oid relid = get_relname_relid(kTable, ext.schema);
	if (!OidIsValid(relid))
		return;
	rules_relid = relid;
	AttrNumber a_directive = Column(relid, "directive");
	AttrNumber a_id = Column(relid, "worker_id");
	AttrNumber a_type = Column(relid, "worker_type");
	AttrNumber a_metadata = Column(relid, "metadata");
	AttrNumber a_created = Column(relid, "created_at");

	// Read directly (no SQL, no permission check: the caller may be a worker
	// role without SELECT), with the latest snapshot: a claim that waited for
	// a drain's lock sees the drain's rule.
	Relation rel = table_open(relid, AccessShareLock);
	Snapshot snapshot = RegisterSnapshot(GetLatestSnapshot());
	TableScanDesc scan = table_beginscan(rel, snapshot, 0, nullptr);
	TupleDesc desc = RelationGetDescr(rel);
	int capacity = 0;
	MemoryContext outer = MemoryContextSwitchTo(rules_context);
	HeapTuple tuple;
	while ((tuple = heap_getnext(scan, ForwardScanDirection)) != nullptr) {
		bool isnull = false;
		Datum directive = heap_getattr(tuple, a_directive, desc, &isnull);
		if (isnull)
			continue;
		if (rule_count == capacity) {
			capacity = capacity ? capacity * 2 : 8;
			rules =
			    static_cast<Rule *>(rules ? repalloc(rules, sizeof(Rule) * capacity) : palloc(sizeof(Rule) * capacity));
		}
		// Filled before it is counted: a load that fails half-way never
		// leaves a rule with unset fields behind.
		Rule r{};
		char *name = TextDatumGetCString(directive);
		r.directive = strcmp(name, "drain") == 0 ? Directive::Drain : Directive::Pause;
		Datum value = heap_getattr(tuple, a_id, desc, &isnull);
		r.worker_id = isnull ? nullptr : DatumGetTextPCopy(value);
		value = heap_getattr(tuple, a_type, desc, &isnull);
		r.worker_type = isnull ? nullptr : DatumGetTextPCopy(value);
		value = heap_getattr(tuple, a_metadata, desc, &isnull);
		r.metadata = isnull ? nullptr : DatumGetJsonbPCopy(value);
		value = heap_getattr(tuple, a_created, desc, &isnull);
		r.created_at = isnull ? 0 : DatumGetTimestampTz(value);
		rules[rule_count++] = r;
	}
	MemoryContextSwitchTo(outer);
	table_endscan(scan);
	UnregisterSnapshot(snapshot);
	table_close(rel, AccessShareLock);
}

void EnsureLoaded()
{
	if (rules_valid)
		return;
	if (!callback_registered) {
		CacheRegisterRelcacheCallback(OnRelcacheInvalidation, (Datum)0);
		callback_registered = true;
	}
	if (!rules_context)
		rules_context = AllocSetContextCreate(TopMemoryContext, "worker_heartbeat directives", ALLOCSET_SMALL_SIZES);
	// Valid from here: an invalidation that arrives during the load (at the
	// lock in LoadRules) makes the next call load again. A load that fails
	// (a cancel, out of memory) leaves no rules and not valid: the next call
	// loads again instead of trusting a partial set (a paused worker would
	// claim).
	rules_valid = true;
	PG_TRY();
	{
		LoadRules();
	}
	PG_CATCH();
	{
		rules_valid = false;
		rule_count = 0;
		PG_RE_THROW();
	}
	PG_END_TRY();
}

bool SameText(text *a, text *b)
{
	int len = VARSIZE_ANY_EXHDR(a);
	return len == static_cast<int>(VARSIZE_ANY_EXHDR(b)) && memcmp(VARDATA_ANY(a), VARDATA_ANY(b), len) == 0;
}

bool Contains(Jsonb *container, Jsonb *contained)
{
	return DatumGetBool(DirectFunctionCall2(jsonb_contains, JsonbPGetDatum(container), JsonbPGetDatum(contained)));
}

// A worker as far as the rules need it. The stored row (type, merged
// metadata) is read only when a rule cannot be decided from what we have.
struct Worker {
	text *id;
	text *type;      // NULL: unknown until looked up
	Jsonb *metadata; // the call's metadata (a heartbeat), may be NULL
	bool looked_up;
	text *stored_type; // after the look-up; NULL: no such worker
	Jsonb *stored_metadata;
};

struct AsOwner {
	Oid saved_user;
	int saved_context;
};

AsOwner BecomeOwnerOf(Oid relid)
{
	AsOwner a{};
	GetUserIdAndSecContext(&a.saved_user, &a.saved_context);
	Oid owner = catalog::RelationOwner(relid);
	if (OidIsValid(owner) && owner != a.saved_user)
		SetUserIdAndSecContext(owner, a.saved_context | SECURITY_LOCAL_USERID_CHANGE);
	return a;
}

void Restore(const AsOwner &a)
{
	SetUserIdAndSecContext(a.saved_user, a.saved_context);
}

void LookUp(Worker &w)
{
	if (w.looked_up)
		return;
	w.looked_up = true;
	catalog::Extension ext = catalog::RequireExtension();
	Oid table = get_relname_relid("worker_heartbeats", ext.schema);
	if (!OidIsValid(table))
		return;
	MemoryContext outer = CurrentMemoryContext;
	AsOwner owner = BecomeOwnerOf(table);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "worker_heartbeat: SPI_connect failed");
	static const Oid types[1] = {TEXTOID};
	Datum values[1] = {PointerGetDatum(w.id)};
	char *sql = psprintf("SELECT worker_type, metadata FROM %s WHERE worker_id OPERATOR(pg_catalog.=) $1",
	                     catalog::Qualified(ext, "worker_heartbeats"));
	// Not read-only: the heartbeat's own write must be seen.
	spi::Run(spi::Plan(sql, 1, types), values, nullptr, false);
	if (SPI_processed > 0) {
		bool type_null = false;
		bool metadata_null = false;
		Datum type = spi::Column(0, 1, &type_null);
		Datum metadata = spi::Column(0, 2, &metadata_null);
		MemoryContext spi_context = MemoryContextSwitchTo(outer);
		w.stored_type = type_null ? nullptr : DatumGetTextPCopy(type);
		w.stored_metadata = metadata_null ? nullptr : DatumGetJsonbPCopy(metadata);
		MemoryContextSwitchTo(spi_context);
	}
	SPI_finish();
	Restore(owner);
}

bool Matches(const Rule &r, Worker &w)
{
	if (r.worker_id && !SameText(r.worker_id, w.id))
		return false;
	if (r.worker_type) {
		text *type = w.type;
		if (!type) {
			LookUp(w);
			type = w.stored_type;
		}
		if (!type || !SameText(r.worker_type, type))
			return false;
	}
	if (r.metadata) {
		// The stored metadata is the stored one merged with the call's
		// (top-level keys replaced): it contains whatever the call's contains.
		if (w.metadata && Contains(w.metadata, r.metadata))
			return true;
		LookUp(w);
		if (!w.stored_metadata || !Contains(w.stored_metadata, r.metadata))
			return false;
	}
	return true;
}

// drain wins over pause. *drain_since: the latest drain rule that matches.
Directive Compute(Worker &w, TimestampTz *drain_since)
{
	Directive result = Directive::Run;
	TimestampTz since = 0;
	for (int i = 0; i < rule_count; ++i) {
		const Rule &r = rules[i];
		if (result == Directive::Pause && r.directive == Directive::Pause)
			continue;
		if (!Matches(r, w))
			continue;
		if (r.directive == Directive::Drain) {
			result = Directive::Drain;
			since = Max(since, r.created_at);
		} else if (result == Directive::Run) {
			result = Directive::Pause;
		}
	}
	if (drain_since)
		*drain_since = since;
	return result;
}

// The 'drained' event of a draining worker, unless it has one since the drain
// began or still holds a lease. SPI connected, acting as the extension's owner.
void NoteDrainedIfIdle(const catalog::Extension &ext, const char *worker_id, const char *worker_type, TimestampTz since,
                       events::Batch *batch)
{
	static const Oid types[2] = {TEXTOID, TIMESTAMPTZOID};
	Datum values[2] = {CStringGetTextDatum(worker_id), TimestampTzGetDatum(since)};
	// A range of the occurred_at index: the events since the drain.
	char *sql =
	    psprintf("SELECT 1 FROM %s e WHERE e.occurred_at OPERATOR(pg_catalog.>=) $2 "
	             "AND e.event OPERATOR(pg_catalog.=) 'drained' AND e.worker_id OPERATOR(pg_catalog.=) $1 LIMIT 1",
	             catalog::Qualified(ext, "worker_events"));
	spi::Run(spi::Plan(sql, 2, types), values, nullptr, false);
	if (SPI_processed > 0)
		return;
	bool *holds = leases::HoldsAnyLease(ext, values, 1);
	if (holds[0])
		return;
	events::Event e{};
	e.event = "drained";
	e.worker_id = worker_id;
	e.worker_type = worker_type;
	batch->Add(e);
}

// --- drain_workers, pause_workers, resume_workers ---------------------------

text *OptionalIdentifier(FunctionCallInfo fcinfo, int n, const char *what)
{
	if (PG_ARGISNULL(n))
		return nullptr;
	text *value = PG_GETARG_TEXT_PP(n);
	heartbeats::CheckIdentifierArg(value, what);
	return value;
}

// directive: "drain", "pause", or NULL for resume; event: the event of each
// matched worker.
int64 SetRule(FunctionCallInfo fcinfo, const char *directive, const char *event, const char *function)
{
	text *worker_id = OptionalIdentifier(fcinfo, 0, "p_worker_id");
	text *worker_type = OptionalIdentifier(fcinfo, 1, "p_worker_type");
	Jsonb *metadata = PG_ARGISNULL(2) ? nullptr : PG_GETARG_JSONB_P(2);
	if (metadata && !JB_ROOT_IS_OBJECT(metadata))
		ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE), errmsg("p_metadata must be a JSON object"),
		                errhint("For example '{\"host\": \"web-3\"}': the workers whose metadata contains it.")));
	if (!worker_id && !worker_type && !metadata)
		ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE),
		                errmsg("%s() needs at least one of p_worker_id, p_worker_type, p_metadata", function),
		                errhint("For example %s(p_worker_type => 'mailer') or %s(p_metadata => '{\"host\": "
		                        "\"web-3\"}'); p_metadata => '{}' matches every worker.",
		                        function, function)));
	catalog::Extension ext = catalog::RequireExtension();
	Oid relid = get_relname_relid(kTable, ext.schema);
	if (!OidIsValid(relid))
		ereport(ERROR,
		        (errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE), errmsg("worker_heartbeat is not updated to 1.3"),
		         errhint("ALTER EXTENSION worker_heartbeat UPDATE")));
	// Waits for the claims in flight (RowExclusiveLock, RefusesClaims) and
	// for other drains; claims that start now wait for our commit.
	LockRelationOid(relid, ShareRowExclusiveLock);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "worker_heartbeat: SPI_connect failed");
	static const Oid types[4] = {TEXTOID, TEXTOID, JSONBOID, TEXTOID};
	Datum values[4] = {PointerGetDatum(worker_id), PointerGetDatum(worker_type), JsonbPGetDatum(metadata),
	                   directive ? CStringGetTextDatum(directive) : (Datum)0};
	char nulls[5] = {worker_id ? ' ' : 'n', worker_type ? ' ' : 'n', metadata ? ' ' : 'n', directive ? ' ' : 'n', '\0'};
	const char *table = catalog::Qualified(ext, kTable);
	char *sql;
	if (directive)
		sql = psprintf("INSERT INTO %s AS d (directive, worker_id, worker_type, metadata, created_at) "
		               "VALUES ($4, $1, $2, $3, pg_catalog.statement_timestamp()) "
		               "ON CONFLICT ((COALESCE(worker_id, '')), (COALESCE(worker_type, '')), "
		               "(COALESCE(metadata, 'null'::pg_catalog.jsonb))) "
		               "DO UPDATE SET directive = EXCLUDED.directive, created_at = EXCLUDED.created_at",
		               table);
	else
		sql = psprintf("DELETE FROM %s d WHERE d.worker_id IS NOT DISTINCT FROM $1 "
		               "AND d.worker_type IS NOT DISTINCT FROM $2 AND d.metadata IS NOT DISTINCT FROM $3 "
		               "AND $4::pg_catalog.text IS NULL",
		               table);
	spi::Run(spi::Plan(sql, 4, types), values, nulls, false);
	if (SPI_processed == 0) {
		SPI_finish();
		return 0; // resume: no such rule
	}
	char *match_sql = psprintf("SELECT w.worker_id, w.worker_type FROM %s w "
	                           "WHERE w.status OPERATOR(pg_catalog.=) ANY (ARRAY['active','idle','processing']) "
	                           "AND ($1::pg_catalog.text IS NULL OR w.worker_id OPERATOR(pg_catalog.=) $1) "
	                           "AND ($2::pg_catalog.text IS NULL OR w.worker_type OPERATOR(pg_catalog.=) $2) "
	                           "AND ($3::pg_catalog.jsonb IS NULL OR w.metadata OPERATOR(pg_catalog.@>) $3) "
	                           "ORDER BY w.worker_id",
	                           catalog::Qualified(ext, "worker_heartbeats"));
	spi::Run(spi::Plan(match_sql, 3, types), values, nulls, false);
	int64 matched = static_cast<int64>(SPI_processed);
	events::Batch *batch = events::Batch::Create();
	for (int64 i = 0; i < matched; ++i) {
		events::Event e{};
		e.event = event;
		e.worker_id = spi::ColumnText(static_cast<int>(i), 1);
		e.worker_type = spi::ColumnText(static_cast<int>(i), 2);
		batch->Add(e);
	}
	batch->Flush(ext, GetCurrentTransactionStartTimestamp());
	SPI_finish();
	return matched;
}

} // namespace

const char *Name(Directive d)
{
	switch (d) {
	case Directive::Drain:
		return "drain";
	case Directive::Pause:
		return "pause";
	case Directive::Run:
		break;
	}
	return "run";
}

Directive ForHeartbeat(text *worker_id, text *worker_type, Jsonb *metadata, bool live)
{
	EnsureLoaded();
	if (rule_count == 0)
		return Directive::Run;
	Worker w{worker_id, worker_type, metadata, false, nullptr, nullptr};
	TimestampTz since = 0;
	Directive d = Compute(w, &since);
	if (d != Directive::Drain || !live)
		return d;
	catalog::Extension ext = catalog::RequireExtension();
	Oid events_table = get_relname_relid("worker_events", ext.schema);
	AsOwner owner = BecomeOwnerOf(events_table);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "worker_heartbeat: SPI_connect failed");
	events::Batch *batch = events::Batch::Create();
	NoteDrainedIfIdle(ext, text_to_cstring(worker_id), text_to_cstring(worker_type), since, batch);
	// The clock, not the transaction's start: never before the drain itself.
	batch->Flush(ext, GetCurrentTimestamp());
	SPI_finish();
	Restore(owner);
	return d;
}

bool RefusesClaims(const catalog::Extension &, text *worker_id)
{
	EnsureLoaded();
	if (!OidIsValid(rules_relid))
		return false;
	// A drain committed while we waited for this lock is seen: taking it
	// reads the pending invalidations, and the load uses the latest snapshot.
	LockRelationOid(rules_relid, RowExclusiveLock);
	EnsureLoaded();
	if (rule_count == 0)
		return false;
	Worker w{worker_id, nullptr, nullptr, false, nullptr, nullptr};
	return Compute(w, nullptr) != Directive::Run;
}

void NoteStop(const catalog::Extension &ext, const char *worker_id, const char *worker_type, events::Batch *batch)
{
	EnsureLoaded();
	if (rule_count == 0)
		return;
	Worker w{cstring_to_text(worker_id), cstring_to_text(worker_type), nullptr, false, nullptr, nullptr};
	TimestampTz since = 0;
	if (Compute(w, &since) == Directive::Drain)
		NoteDrainedIfIdle(ext, worker_id, worker_type, since, batch);
}

} // namespace wh::directives

extern "C" {

Datum wh_drain_workers(PG_FUNCTION_ARGS)
{
	WH_GUARDED({ PG_RETURN_INT64(wh::directives::SetRule(fcinfo, "drain", "drain_requested", "drain_workers")); });
}

Datum wh_pause_workers(PG_FUNCTION_ARGS)
{
	WH_GUARDED({ PG_RETURN_INT64(wh::directives::SetRule(fcinfo, "pause", "paused", "pause_workers")); });
}

Datum wh_resume_workers(PG_FUNCTION_ARGS)
{
	WH_GUARDED({ PG_RETURN_INT64(wh::directives::SetRule(fcinfo, nullptr, "resumed", "resume_workers")); });
}

// Statement trigger of worker_directives: every backend reloads the rules
// after this transaction commits (nothing is sent if it aborts).
Datum wh_worker_directives_changed(PG_FUNCTION_ARGS)
{
	WH_GUARDED({
		if (!CALLED_AS_TRIGGER(fcinfo))
			ereport(ERROR, (errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
			                errmsg("_worker_directives_changed() is a trigger function")));
		auto *trigger = reinterpret_cast<TriggerData *>(fcinfo->context);
		CacheInvalidateRelcacheByRelid(RelationGetRelid(trigger->tg_relation));
		return PointerGetDatum(nullptr);
	});
}

} // extern "C"
