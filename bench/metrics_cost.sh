#!/bin/bash
# metrics() cost against the size of worker_events (issue 13, item 6).
#
#   bench/metrics_cost.sh [SIZES...]      default: 0 100000 1000000
#
# Starts a throwaway preloaded cluster with the worker_heartbeat installed for
# $PG_CONFIG (default pg_config), as an unprivileged user when run as root,
# and removes it at exit. Fills worker_events up to each size (a third of the
# events are deaths with a detection latency, spread over the last 7 days;
# events_retention = 0 so nothing is deleted), then times 20 calls of
#   1.0: the 1.0 definition of metrics() (src/sql/1.0/60_metrics.sql, which
#        scans every death of the history), installed beside as bench.metrics_1_0()
#   1.2: metrics() (totals kept by triggers; quantiles from the last hour)
# and prints milliseconds per call (median of 3 rounds of 20 calls). 50
# workers of 5 types are registered, 5 of them dead.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
sizes=("$@")
[ ${#sizes[@]} -gt 0 ] || sizes=(0 100000 1000000)
PG_CONFIG=${PG_CONFIG:-pg_config}
bindir=$($PG_CONFIG --bindir)
tmp=$(mktemp -d /tmp/whmetrics.XXXXXX)
chmod 755 "$tmp"
run=()
if [ "$(id -u)" = 0 ]; then
    user=${BENCH_USER:-postgres}
    id "$user" >/dev/null 2>&1 || user=nobody
    chown "$user" "$tmp"
    run=(runuser -u "$user" --)
fi
port=$((20000 + RANDOM % 20000))
cleanup() {
    "${run[@]}" "$bindir/pg_ctl" -D "$tmp/data" -m immediate -w stop >/dev/null 2>&1 || true
    rm -rf "$tmp"
}
trap cleanup EXIT
"${run[@]}" "$bindir/initdb" -D "$tmp/data" -U bench --auth=trust -E UTF8 --no-sync --locale=C >/dev/null
cat >>"$tmp/data/postgresql.conf" <<EOF
port = $port
listen_addresses = ''
unix_socket_directories = '$tmp'
shared_buffers = 256MB
max_wal_size = 4GB
shared_preload_libraries = 'worker_heartbeat'
worker_heartbeat.events_retention = 0
EOF
"${run[@]}" "$bindir/pg_ctl" -D "$tmp/data" -l "$tmp/log" -w start >/dev/null
psql() { "$bindir/psql" -X -q -v ON_ERROR_STOP=1 -h "$tmp" -p "$port" -U bench -d postgres "$@"; }

psql >/dev/null <<'EOF'
CREATE SCHEMA pm_pipeline;
CREATE EXTENSION worker_heartbeat SCHEMA pm_pipeline;
SELECT pm_pipeline.stop_reaper();
CREATE SCHEMA bench;
SELECT pm_pipeline.upsert_worker_heartbeat('w' || g, 'type' || (g % 5), 'processing') FROM generate_series(1, 50) g;
UPDATE pm_pipeline.worker_heartbeats SET status = 'dead', died_at = now(), death_cause = 'heartbeat_timeout'
 WHERE worker_id IN ('w1', 'w2', 'w3', 'w4', 'w5');
EOF
# The 1.0 definition, beside.
sed -e 's/@extschema@\.metrics()/bench.metrics_1_0()/g' -e 's/@extschema@/pm_pipeline/g' \
    "$repo/src/sql/1.0/60_metrics.sql" | psql >/dev/null

have=0
printf '| events in worker_events | 1.0 metrics() | 1.2 metrics() | worker_events size |\n'
printf '|---:|---:|---:|---:|\n'
for n in "${sizes[@]}"; do
    if [ "$n" -gt "$have" ]; then
        psql <<EOF
INSERT INTO pm_pipeline.worker_events (occurred_at, event, worker_id, worker_type, detection_latency, silent_for)
SELECT now() - (g % 604800) * interval '1 second',
       (ARRAY['started', 'died', 'stopped'])[1 + g % 3],
       'w' || (g % 5000), 'type' || (g % 5),
       CASE WHEN g % 3 = 1 THEN (g % 1000) * interval '1 millisecond' END,
       CASE WHEN g % 3 = 1 THEN interval '300 seconds' END
  FROM generate_series($have + 1, $n) g;
VACUUM ANALYZE pm_pipeline.worker_events;
EOF
        have=$n
    fi
    time_of() {
        psql -At 2>&1 <<EOF | sed -n 's/.*ms \([0-9.]*\).*/\1/p'
DO \$\$
DECLARE t0 timestamptz; r float8[] := '{}';
BEGIN
    PERFORM $1;  -- warm
    FOR k IN 1 .. 3 LOOP
        t0 := clock_timestamp();
        FOR i IN 1 .. 20 LOOP PERFORM $1; END LOOP;
        r := r || extract(epoch FROM clock_timestamp() - t0)::float8 * 1000 / 20;
    END LOOP;
    RAISE NOTICE 'ms %', (SELECT round(percentile_cont(0.5) WITHIN GROUP (ORDER BY x)::numeric, 2) FROM unnest(r) x);
END \$\$;
EOF
    }
    old=$(time_of 'bench.metrics_1_0()')
    new=$(time_of 'pm_pipeline.metrics()')
    size=$(psql -At -c "SELECT pg_size_pretty(pg_total_relation_size('pm_pipeline.worker_events'))")
    printf '| %s | %s ms | %s ms | %s |\n' "$n" "$old" "$new" "$size"
done
# Both definitions return the same samples, but for the summary's HELP text
# and _sum, which 1.2 adds up exactly (1.0's sum of floats differs in its
# last digits: 99.4999999999999 for 99.5).
strip="regexp_replace(regexp_replace(%s, '# HELP worker_heartbeat_detection_latency_seconds [^\n]*', ''), 'worker_heartbeat_detection_latency_seconds_sum[^\n]*', '', 'g')"
psql -At -c "SELECT $(printf "$strip" 'bench.metrics_1_0()') = $(printf "$strip" 'pm_pipeline.metrics()')" |
    sed 's/^t$/(1.0 and 1.2 return the same samples but _sum)/; s/^f$/(1.0 and 1.2 samples DIFFER)/'
if [ -n "${SHOW_DIFF:-}" ]; then
    diff <(psql -At -c 'SELECT bench.metrics_1_0()') <(psql -At -c 'SELECT pm_pipeline.metrics()') || true
fi
