#include "state.hpp"

namespace whd {

const char* const kReapedStates[] = {"starting", "idle",      "reaping", "read-only",
                                     "standby",  "scheduled", nullptr};

std::string probe_sql() {
  // has_*_privilege(oid, ...) is NULL for a NULL oid: no error for what is missing.
  return R"SQL(
SELECT pg_catalog.concat_ws(',',
  CASE WHEN COALESCE(pg_catalog.has_table_privilege(
         pg_catalog.to_regclass($1 || '.worker_directives')::pg_catalog.oid, 'SELECT'), false)
       THEN 'directives' END,
  CASE WHEN COALESCE(pg_catalog.has_function_privilege(
         pg_catalog.to_regprocedure($1 || '.reaper_status()')::pg_catalog.oid, 'EXECUTE'), false)
       THEN 'reapers' END)
)SQL";
}

StateFeatures parse_features(const std::string& probe) {
  StateFeatures f;
  std::string::size_type start = 0;
  while (start <= probe.size()) {
    std::string::size_type end = probe.find(',', start);
    if (end == std::string::npos) end = probe.size();
    const std::string item = probe.substr(start, end - start);
    if (item == "directives") f.directives = true;
    if (item == "reapers") f.reapers = true;
    start = end + 1;
  }
  return f;
}

namespace {

std::string reaped_states_list() {
  std::string out;
  for (const char* const* p = kReapedStates; *p; ++p) {
    if (!out.empty()) out += ", ";
    out += "'" + std::string(*p) + "'";
  }
  return out;
}

// A worker's directive from the rules (drain wins over pause), as the
// extension's worker_fleet view computes it. `w` is a worker_heartbeats row.
std::string directive_expr(const std::string& s, const std::string& w) {
  return "COALESCE((SELECT r.directive FROM " + s +
         ".worker_directives AS r"
         " WHERE (r.worker_id IS NULL OR r.worker_id = " +
         w + ".worker_id) AND (r.worker_type IS NULL OR r.worker_type = " + w +
         ".worker_type) AND (r.metadata IS NULL OR " + w +
         ".metadata OPERATOR(pg_catalog.@>) r.metadata)"
         " ORDER BY r.directive = 'drain' DESC LIMIT 1), 'run')";
}

}  // namespace

std::string state_sql(const std::string& s, const StateFeatures& f) {
  const std::string directive =
      f.directives ? directive_expr(s, "h") : std::string("'run'::pg_catalog.text");
  std::string q = R"SQL(
WITH ev AS (
  SELECT e.occurred_at, e.event, e.released_count, e.detection_latency
    FROM )SQL" + s +
                  R"SQL(.worker_events AS e
   WHERE e.occurred_at >= pg_catalog.date_trunc('minute', pg_catalog.now()) - interval '59 minutes'
), buckets AS (
  SELECT b.t FROM pg_catalog.generate_series(
      pg_catalog.date_trunc('minute', pg_catalog.now()) - interval '59 minutes',
      pg_catalog.date_trunc('minute', pg_catalog.now()), interval '1 minute') AS b(t)
), counts AS (
  SELECT pg_catalog.date_trunc('minute', ev.occurred_at) AS t,
         pg_catalog.count(*) FILTER (WHERE ev.event IN ('started', 'revived')) AS started,
         pg_catalog.count(*) FILTER (WHERE ev.event = 'died') AS died,
         pg_catalog.count(*) FILTER (WHERE ev.event = 'stopped') AS stopped,
         COALESCE(pg_catalog.sum(ev.released_count) FILTER (WHERE ev.event = 'leases_released'), 0) AS released
    FROM ev GROUP BY 1
)
SELECT pg_catalog.json_build_object(
  'now', pg_catalog.now(),
  'database', pg_catalog.current_database(),
  'schema', $1::text,
  'extversion', (SELECT x.extversion FROM pg_catalog.pg_extension AS x WHERE x.extname = 'worker_heartbeat'),
  'features', pg_catalog.json_build_object('directives', )SQL" +
                  (f.directives ? "true" : "false") + ", 'reapers', " +
                  (f.reapers ? "true" : "false") + R"SQL(),
  'summary', )SQL" +
                  s +
                  R"SQL(.get_worker_health_summary(),
  'workers', (SELECT COALESCE(pg_catalog.jsonb_agg(w.j ORDER BY w.worker_type, w.worker_id), '[]')
                FROM (SELECT h.worker_type, h.worker_id,
                             (pg_catalog.to_jsonb(h) - 'metadata') || pg_catalog.jsonb_build_object(
                               'dead', EXISTS (SELECT FROM )SQL" +
                  s + R"SQL(.v_dead_workers AS d
                                                WHERE d.worker_id = h.worker_id),
                               'directive', )SQL" +
                  directive + R"SQL() AS j
                        FROM )SQL" +
                  s + R"SQL(.worker_heartbeats AS h
                       ORDER BY h.worker_type, h.worker_id LIMIT 1000) AS w),
  'dead', (SELECT COALESCE(pg_catalog.jsonb_agg(x.j ORDER BY x.last_heartbeat_at DESC), '[]')
             FROM (SELECT v.last_heartbeat_at,
                          (pg_catalog.to_jsonb(v) - 'metadata') || pg_catalog.jsonb_build_object(
                            'detection_latency_s', pg_catalog.date_part('epoch', died.detection_latency),
                            'forensics', died.details -> 'forensics',
                            'leases_released',
                            (SELECT COALESCE(pg_catalog.sum(e.released_count), 0)
                               FROM )SQL" +
                  s + R"SQL(.worker_events AS e
                              WHERE e.worker_id = v.worker_id AND e.event = 'leases_released'
                                AND e.occurred_at >= v.last_heartbeat_at)) AS j
                     FROM )SQL" +
                  s + R"SQL(.v_dead_workers AS v
                     -- the last died event: detection latency and (1.3) forensics
                     LEFT JOIN LATERAL (SELECT e.detection_latency, e.details
                                          FROM )SQL" +
                  s + R"SQL(.worker_events AS e
                                         WHERE e.worker_id = v.worker_id AND e.event = 'died'
                                         ORDER BY e.event_id DESC LIMIT 1) AS died ON true
                    ORDER BY v.last_heartbeat_at DESC LIMIT 200) AS x),
  'directives', )SQL";
  if (f.directives) {
    q +=
        R"SQL((SELECT COALESCE(pg_catalog.jsonb_agg(pg_catalog.to_jsonb(r) ORDER BY r.created_at), '[]')
                    FROM )SQL" +
        s + R"SQL(.worker_directives AS r),)SQL";
  } else {
    q += "NULL,";
  }
  q += R"SQL(
  'reapers', )SQL";
  if (f.reapers) {
    q +=
        R"SQL((SELECT COALESCE(pg_catalog.jsonb_agg(pg_catalog.to_jsonb(r) || pg_catalog.jsonb_build_object(
                     'reaped', r.state IN ()SQL" +
        reaped_states_list() + R"SQL()) ORDER BY r.database), '[]')
                 FROM )SQL" +
        s + R"SQL(.reaper_status() AS r),)SQL";
  } else {
    q += "NULL,";
  }
  q += R"SQL(
  'chart', (SELECT pg_catalog.json_agg(pg_catalog.json_build_object(
                     't', b.t, 'started', COALESCE(c.started, 0), 'died', COALESCE(c.died, 0),
                     'stopped', COALESCE(c.stopped, 0), 'released', COALESCE(c.released, 0))
                   ORDER BY b.t)
              FROM buckets AS b LEFT JOIN counts AS c ON c.t = b.t),
  'hour', (SELECT pg_catalog.json_build_object(
                    'died', pg_catalog.count(*) FILTER (WHERE ev.event = 'died'),
                    'released', COALESCE(pg_catalog.sum(ev.released_count) FILTER (WHERE ev.event = 'leases_released'), 0),
                    'latency_p50_s', pg_catalog.percentile_cont(0.5) WITHIN GROUP (
                        ORDER BY pg_catalog.date_part('epoch', ev.detection_latency))
                        FILTER (WHERE ev.event = 'died' AND ev.detection_latency IS NOT NULL))
             FROM ev WHERE ev.occurred_at >= pg_catalog.now() - interval '1 hour'),
  'recent', (SELECT COALESCE(pg_catalog.jsonb_agg(pg_catalog.to_jsonb(r) ORDER BY r.event_id DESC), '[]')
               FROM (SELECT e.event_id, e.occurred_at, e.worker_id, e.worker_type, e.event,
                            e.table_name, e.released_count, e.details,
                            pg_catalog.date_part('epoch', e.silent_for) AS silent_for_s,
                            pg_catalog.date_part('epoch', e.detection_latency) AS detection_latency_s
                       FROM )SQL" +
       s + R"SQL(.worker_events AS e
                      ORDER BY e.event_id DESC LIMIT 50) AS r)
)::text
)SQL";
  return q;
}

}  // namespace whd
