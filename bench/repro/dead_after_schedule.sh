#!/bin/bash
# Reproduction (run as root): a worker whose type has a short dead_after, starting
# after the reaper computed its death schedule from longer deadlines, is never
# declared dead by a reaping pass (v_dead_workers lists it; the pass returns 0).
D=$(mktemp -d /tmp/whrepro.XXXX); chown postgres $D
B=/usr/lib/postgresql/15/bin
runuser -u postgres -- $B/initdb -D $D/data -U bench --auth=trust >/dev/null
cat >> $D/data/postgresql.conf <<CONF
port = 5499
listen_addresses = ''
unix_socket_directories = '$D'
shared_preload_libraries = 'worker_heartbeat'
CONF
runuser -u postgres -- $B/pg_ctl -D $D/data -l $D/log -w start >/dev/null
P="psql -X -q -h $D -p 5499 -U bench postgres"
$P -c "CREATE SCHEMA pm_pipeline; CREATE EXTENSION worker_heartbeat SCHEMA pm_pipeline"
$P -c "SELECT pm_pipeline.set_worker_type_dead_after('slow', '1 hour')" -c "SELECT pm_pipeline.upsert_worker_heartbeat('w_slow', 'slow')"
sleep 1.5
$P -c "SELECT pm_pipeline.set_worker_type_dead_after('fast', '1 second')" -c "SELECT pm_pipeline.upsert_worker_heartbeat('w_fast', 'fast')"
sleep 3
$P -c "SELECT worker_id, status, round(seconds_since_heartbeat,1) AS silent_s FROM pm_pipeline.v_dead_workers" -c "SELECT pm_pipeline.release_dead_worker_leases()" -c "SELECT worker_id, worker_type, status, death_cause FROM pm_pipeline.worker_heartbeats ORDER BY 1"
runuser -u postgres -- $B/pg_ctl -D $D/data -m immediate stop >/dev/null; rm -rf $D
