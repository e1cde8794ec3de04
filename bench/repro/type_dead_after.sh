#!/bin/bash
# Reproduction (run as root) of a worker_heartbeat bug found by the benchmark:
# a worker whose type has a per-type dead_after (set_worker_type_dead_after) is
# never declared dead by the reaper nor by release_dead_worker_leases(), although
# v_dead_workers lists it. With the same value as the global setting
# worker_heartbeat.dead_after it is declared dead within a second.
#   bench/repro/type_dead_after.sh   -> prints both cases; expected: 'dead' twice
# Seen with the build installed at 06:56 UTC on 2026-11-29 ('active' in the first
# case); the build of 07:37 prints 'dead' twice. Kept as a quick check.
set -e
B=$(pg_config --bindir)
run_case() {  # $1 = type | global
    local D; D=$(mktemp -d /tmp/whrepro.XXXX); chown postgres "$D"
    runuser -u postgres -- "$B/initdb" -D "$D/data" -U bench --auth=trust >/dev/null
    printf "port = 5497\nlisten_addresses = ''\nunix_socket_directories = '%s'\nshared_preload_libraries = 'worker_heartbeat'\n" "$D" >>"$D/data/postgresql.conf"
    runuser -u postgres -- "$B/pg_ctl" -D "$D/data" -l "$D/log" -w start >/dev/null
    local P="psql -X -q -At -h $D -p 5497 -U bench postgres"
    $P -c "CREATE SCHEMA pm_pipeline" -c "CREATE EXTENSION worker_heartbeat SCHEMA pm_pipeline"
    if [ "$1" = type ]; then
        $P -c "SELECT pm_pipeline.set_worker_type_dead_after('fast', '1 second')" >/dev/null
    else
        $P -c "ALTER SYSTEM SET worker_heartbeat.dead_after = '1s'" -c "SELECT pg_reload_conf()" >/dev/null
    fi
    sleep 2
    $P -c "SELECT pm_pipeline.upsert_worker_heartbeat('w_fast', 'fast')" >/dev/null
    sleep 3
    $P -c "SELECT pm_pipeline.release_dead_worker_leases()" >/dev/null
    echo "$1 dead_after 1 s, 3 s of silence: in v_dead_workers: $($P -c "SELECT count(*) FROM pm_pipeline.v_dead_workers WHERE worker_id = 'w_fast'"), status: $($P -c "SELECT status FROM pm_pipeline.worker_heartbeats WHERE worker_id = 'w_fast'")"
    runuser -u postgres -- "$B/pg_ctl" -D "$D/data" -m immediate stop >/dev/null
    rm -rf "$D"
}
run_case type
run_case global
