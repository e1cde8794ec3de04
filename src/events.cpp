#include "events.hpp"

#include "settings.hpp"
#include "spi_plans.hpp"

#include <utility>

extern "C" {
#include "catalog/pg_type.h"
#include "commands/async.h"
#include "mb/pg_wchar.h"
#include "utils/array.h"
#include "utils/json.h"
}

namespace wh::events
{

namespace
{

Datum IntervalFromMicroseconds(int64 us)
{
	auto *interval = static_cast<Interval *>(palloc0(sizeof(Interval)));
	interval->time = us;
	return PointerGetDatum(interval);
}

void JsonKey(StringInfo buf, const char *key)
{
	appendStringInfoString(buf, ",\"");
	appendStringInfoString(buf, key);
	appendStringInfoString(buf, "\":");
}

void JsonField(StringInfo buf, const char *key, const char *value)
{
	if (!value)
		return;
	JsonKey(buf, key);
	escape_json(buf, value);
}

void JsonSeconds(StringInfo buf, const char *key, int64 us)
{
	if (us < 0)
		return;
	JsonKey(buf, key);
	appendStringInfo(buf, "%.3f", static_cast<double>(us) / 1e6);
}

// The NOTIFY payload of an event, written into buf (reset first; one buffer
// serves a whole batch: a thousand deaths must not cost a thousand
// allocations). Every text field was clipped by Add, so a full payload stays
// far below kMaxPayloadBytes; should it not (escaping can multiply a field's
// length by 6), the minimal payload is sent instead. at_json: the time of the
// events, as a JSON string (the same for a batch: encoded once).
const char *Payload(StringInfo buf, const Event &e, int64 event_id, const char *at_json, bool minimal)
{
	resetStringInfo(buf);
	appendStringInfoString(buf, "{\"event\":");
	escape_json(buf, e.event);
	if (event_id > 0)
		appendStringInfo(buf, ",\"event_id\":" INT64_FORMAT, event_id);
	if (minimal) {
		const char *id = e.worker_id ? Clip(e.worker_id, 200) : nullptr;
		if (id && strlen(id) * 6 + 200 > static_cast<size_t>(kMaxPayloadBytes))
			id = Clip(id, (kMaxPayloadBytes - 200) / 6);
		JsonField(buf, "worker_id", id);
		JsonKey(buf, "at");
		appendStringInfoString(buf, at_json);
		appendStringInfoChar(buf, '}');
		return buf->data;
	}
	JsonField(buf, "worker_id", e.worker_id);
	JsonField(buf, "worker_type", e.worker_type);
	JsonField(buf, "cause", e.cause);
	JsonField(buf, "table", e.table_name);
	if (e.released_count >= 0) {
		JsonKey(buf, "count");
		appendStringInfo(buf, "%d", e.released_count);
	}
	JsonField(buf, "reason", e.reason);
	JsonSeconds(buf, "silent_for_s", e.silent_for_us);
	JsonSeconds(buf, "detection_latency_s", e.latency_us);
	JsonKey(buf, "at");
	appendStringInfoString(buf, at_json);
	if (e.extra_notify && buf->len + strlen(e.extra_notify) + 2 < static_cast<size_t>(kMaxPayloadBytes)) {
		appendStringInfoChar(buf, ',');
		appendStringInfoString(buf, e.extra_notify);
	}
	appendStringInfoChar(buf, '}');
	if (buf->len >= kMaxPayloadBytes)
		return Payload(buf, e, event_id, at_json, true);
	return buf->data;
}

// details of an event, as JSON text (buf reset first); NULL when it has none.
text *Details(StringInfo buf, const Event &e)
{
	if (!e.cause && !e.reason && !e.extra_details)
		return nullptr;
	resetStringInfo(buf);
	appendStringInfoChar(buf, '{');
	bool first = true;
	for (auto [key, value] : {std::pair<const char *, const char *>{"cause", e.cause}, {"reason", e.reason}}) {
		if (!value)
			continue;
		if (!first)
			appendStringInfoChar(buf, ',');
		appendStringInfoChar(buf, '"');
		appendStringInfoString(buf, key);
		appendStringInfoString(buf, "\":");
		escape_json(buf, value);
		first = false;
	}
	if (e.extra_details) {
		if (!first)
			appendStringInfoChar(buf, ',');
		appendStringInfoString(buf, e.extra_details);
	}
	appendStringInfoChar(buf, '}');
	return cstring_to_text_with_len(buf->data, buf->len);
}

ArrayType *TextArray(Datum *values, bool *nulls, int n)
{
	int dims[1] = {n};
	int lbs[1] = {1};
	return construct_md_array(values, nulls, 1, dims, lbs, TEXTOID, -1, false, TYPALIGN_INT);
}

} // namespace

const char *Clip(const char *value, int max_bytes)
{
	if (!value)
		return nullptr;
	int len = static_cast<int>(strlen(value));
	if (len <= max_bytes)
		return value;
	int marker = static_cast<int>(strlen(kClipMarker));
	int keep = pg_mbcliplen(value, len, Max(0, max_bytes - marker));
	return psprintf("%.*s%s", keep, value, kClipMarker);
}

Batch *Batch::Create()
{
	auto *batch = static_cast<Batch *>(palloc(sizeof(Batch)));
	batch->capacity_ = 16;
	batch->count_ = 0;
	batch->items_ = static_cast<Event *>(palloc(sizeof(Event) * batch->capacity_));
	return batch;
}

void Batch::Add(const Event &event)
{
	if (count_ == capacity_) {
		capacity_ *= 2;
		items_ = static_cast<Event *>(repalloc(items_, sizeof(Event) * capacity_));
	}
	Event &copy = items_[count_++];
	copy = event;
	// Keep our own copies: callers' strings may live in SPI memory.
	// Clipped: a worker column of a user's table can hold 8 kB of anything,
	// which must neither fail the INSERT (index row size) nor the NOTIFY.
	copy.worker_id = event.worker_id ? pstrdup(Clip(event.worker_id, kMaxFieldBytes)) : nullptr;
	copy.worker_type = event.worker_type ? pstrdup(Clip(event.worker_type, kMaxFieldBytes)) : nullptr;
	copy.table_name = event.table_name ? pstrdup(Clip(event.table_name, kMaxNameBytes)) : nullptr;
	copy.cause = event.cause ? pstrdup(Clip(event.cause, kMaxNameBytes)) : nullptr;
	copy.reason = event.reason ? pstrdup(Clip(event.reason, kMaxNameBytes)) : nullptr;
	copy.extra_details = event.extra_details ? pstrdup(event.extra_details) : nullptr;
	copy.extra_notify = event.extra_notify ? pstrdup(event.extra_notify) : nullptr;
}

void Batch::Flush(const catalog::Extension &ext, TimestampTz at)
{
	if (count_ == 0)
		return;
	int n = count_;
	auto *text_values = static_cast<Datum *>(palloc(sizeof(Datum) * n * 5));
	auto *text_nulls = static_cast<bool *>(palloc(sizeof(bool) * n * 5));
	auto *counts = static_cast<Datum *>(palloc(sizeof(Datum) * n));
	auto *count_nulls = static_cast<bool *>(palloc(sizeof(bool) * n));
	auto *silent = static_cast<Datum *>(palloc(sizeof(Datum) * n));
	auto *silent_nulls = static_cast<bool *>(palloc(sizeof(bool) * n));
	auto *latency = static_cast<Datum *>(palloc(sizeof(Datum) * n));
	auto *latency_nulls = static_cast<bool *>(palloc(sizeof(bool) * n));
	StringInfoData buf;
	initStringInfo(&buf);
	for (int i = 0; i < n; ++i) {
		const Event &e = items_[i];
		const char *texts[4] = {e.event, e.worker_id, e.worker_type, e.table_name};
		for (int f = 0; f < 4; ++f) {
			text_nulls[f * n + i] = texts[f] == nullptr;
			text_values[f * n + i] = texts[f] ? CStringGetTextDatum(texts[f]) : (Datum)0;
		}
		text *details = Details(&buf, e);
		text_nulls[4 * n + i] = details == nullptr;
		text_values[4 * n + i] = PointerGetDatum(details);
		count_nulls[i] = e.released_count < 0;
		counts[i] = Int32GetDatum(e.released_count);
		silent_nulls[i] = e.silent_for_us < 0;
		silent[i] = e.silent_for_us < 0 ? (Datum)0 : IntervalFromMicroseconds(e.silent_for_us);
		latency_nulls[i] = e.latency_us < 0;
		latency[i] = e.latency_us < 0 ? (Datum)0 : IntervalFromMicroseconds(e.latency_us);
	}
	int dims[1] = {n};
	int lbs[1] = {1};
	Datum args[9];
	args[0] = TimestampTzGetDatum(at);
	for (int f = 0; f < 5; ++f)
		args[1 + f] = PointerGetDatum(TextArray(text_values + f * n, text_nulls + f * n, n));
	args[6] = PointerGetDatum(construct_md_array(counts, count_nulls, 1, dims, lbs, INT4OID, 4, true, TYPALIGN_INT));
	args[7] = PointerGetDatum(
	    construct_md_array(silent, silent_nulls, 1, dims, lbs, INTERVALOID, sizeof(Interval), false, TYPALIGN_DOUBLE));
	args[8] = PointerGetDatum(construct_md_array(latency, latency_nulls, 1, dims, lbs, INTERVALOID, sizeof(Interval),
	                                             false, TYPALIGN_DOUBLE));
	static const Oid types[9] = {TIMESTAMPTZOID, TEXTARRAYOID, TEXTARRAYOID,     TEXTARRAYOID,    TEXTARRAYOID,
	                             TEXTARRAYOID,   INT4ARRAYOID, INTERVALARRAYOID, INTERVALARRAYOID};
	char *sql = psprintf(
	    "INSERT INTO %s (occurred_at, event, worker_id, worker_type, table_name, details, "
	    "released_count, silent_for, detection_latency) "
	    "SELECT $1, pg_catalog.unnest($2), pg_catalog.unnest($3), pg_catalog.unnest($4), pg_catalog.unnest($5), "
	    "pg_catalog.unnest($6)::pg_catalog.jsonb, pg_catalog.unnest($7), pg_catalog.unnest($8), "
	    "pg_catalog.unnest($9) RETURNING event_id",
	    catalog::Qualified(ext, "worker_events"));
	spi::Run(spi::PlanGeneric(sql, 9, types), args, nullptr, false);
	// The unnest()s of the select list run in step (arrays of one length)
	// and stream their rows, where ROWS FROM in FROM first copied all of
	// them into a tuplestore. INSERT ... SELECT returns its rows in the order
	// of the unnest().
	bool ids_known = SPI_processed == static_cast<uint64>(n);
	bool minimal = settings::notify_payload == settings::kNotifyMinimal;
	// ISO 8601, as to_json() writes it, so that any client parses it.
	StringInfoData at_json;
	initStringInfo(&at_json);
	escape_json(&at_json, JsonEncodeDateTime(nullptr, TimestampTzGetDatum(at), TIMESTAMPTZOID, nullptr));
	for (int i = 0; i < n; ++i) {
		if (strcmp(items_[i].event, "removed") == 0)
			continue;
		bool isnull = true;
		int64 id = ids_known ? DatumGetInt64(spi::Column(i, 1, &isnull)) : 0;
		Async_Notify(kChannel, Payload(&buf, items_[i], isnull ? 0 : id, at_json.data, minimal));
	}
	count_ = 0;
}

} // namespace wh::events
