# Upgrade path and dump/restore.
#
# - install version 1.0, fill it (workers, a per-type setting, a registered
#   table with leases, events), ALTER EXTENSION ... UPDATE to the current
#   version, and check that data, registrations and behaviour survived and the
#   new version's functions are there;
# - pg_dump the database and restore it into a fresh one: registrations,
#   workers, settings and history come back, and the restored database reaps.
use strict;
use warnings;
use FindBin;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('upgrade');
$node->init;
$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'worker_heartbeat'
max_worker_processes = 16
worker_heartbeat.reap_interval = '200ms'
worker_heartbeat.launcher_interval = '1s'
});
$node->start;

my $default_version = $node->safe_psql('postgres',
	"SELECT default_version FROM pg_available_extensions WHERE name = 'worker_heartbeat'");

$node->safe_psql('postgres', q{
	CREATE SCHEMA pm_pipeline;
	CREATE EXTENSION worker_heartbeat SCHEMA pm_pipeline VERSION '1.0';
	CREATE SCHEMA app;
	CREATE TABLE app.queue (id int PRIMARY KEY, state text NOT NULL DEFAULT 'pending',
	                        claimed_by text, lease_expires_at timestamptz);
	CREATE INDEX ON app.queue (claimed_by);
	CREATE INDEX ON app.queue (lease_expires_at);
	SELECT pm_pipeline.register_lease_table('app.queue', p_on_release => '{"state": "pending"}');
	SELECT pm_pipeline.set_worker_type_dead_after('slow', '1 hour');
	SELECT pm_pipeline.upsert_worker_heartbeat('keeper', 'slow', 'processing', p_current_task => 'long job');
	SELECT pm_pipeline.upsert_worker_heartbeat('goner', 'fast', 'processing');
	SELECT pm_pipeline.upsert_worker_heartbeat('quitter', 'fast');
	SELECT pm_pipeline.stop_worker('quitter');
	INSERT INTO app.queue VALUES
	    (1, 'claimed', 'keeper', now() + interval '1 day'),
	    (2, 'claimed', 'goner', now() + interval '1 day'),
	    (3, 'pending', NULL, NULL);
});
is($node->safe_psql('postgres', "SELECT extversion FROM pg_extension WHERE extname = 'worker_heartbeat'"),
	'1.0', 'version 1.0 installed');

my $before = $node->safe_psql('postgres', q{
	SELECT (SELECT string_agg(worker_id || ':' || status || ':' || coalesce(current_task, ''), ',' ORDER BY worker_id)
	          FROM pm_pipeline.worker_heartbeats)
	    || '|' || (SELECT string_agg(table_name::text || ':' || on_release::text, ',') FROM pm_pipeline.lease_tables)
	    || '|' || (SELECT string_agg(worker_type || ':' || dead_after, ',') FROM pm_pipeline.worker_types)
	    || '|' || (SELECT count(*) FROM pm_pipeline.worker_events)
});

$node->safe_psql('postgres', 'ALTER EXTENSION worker_heartbeat UPDATE');
is($node->safe_psql('postgres', "SELECT extversion FROM pg_extension WHERE extname = 'worker_heartbeat'"),
	$default_version, "updated to $default_version");

my $after = $node->safe_psql('postgres', q{
	SELECT (SELECT string_agg(worker_id || ':' || status || ':' || coalesce(current_task, ''), ',' ORDER BY worker_id)
	          FROM pm_pipeline.worker_heartbeats)
	    || '|' || (SELECT string_agg(table_name::text || ':' || on_release::text, ',') FROM pm_pipeline.lease_tables)
	    || '|' || (SELECT string_agg(worker_type || ':' || dead_after, ',') FROM pm_pipeline.worker_types)
	    || '|' || (SELECT count(*) FROM pm_pipeline.worker_events)
});
is($after, $before, 'workers, registrations, settings and events survived the update');

is($node->safe_psql('postgres', q{
	SELECT count(DISTINCT proname) FROM pg_proc
	 WHERE pronamespace = 'pm_pipeline'::regnamespace
	   AND proname IN ('claim_leases', 'extend_lease', 'complete_lease', 'fail_lease', 'check_lease')
}), '5', 'the fenced-lease functions of 1.1 are there');
is($node->safe_psql('postgres', q{
	SELECT count(*) FROM pg_proc p
	 WHERE p.pronamespace = 'pm_pipeline'::regnamespace
	   AND (has_function_privilege('public', p.oid, 'EXECUTE')
	        OR NOT EXISTS (SELECT 1 FROM unnest(p.proconfig) c WHERE c LIKE 'search_path=%'))
}), '0', 'after the update still nothing for PUBLIC and every search_path fixed');

# Behaviour survived: the 1.0 registration still drives the reaper, which
# releases the lease of a worker that dies after the update.
$node->safe_psql('postgres', q{SELECT pm_pipeline.set_worker_type_dead_after('fast', '1 second')});
ok($node->poll_query_until('postgres',
	q{SELECT state = 'pending' AND claimed_by IS NULL FROM app.queue WHERE id = 2}),
	'the reaper releases a dead worker\'s lease after the update');
is($node->safe_psql('postgres', q{SELECT claimed_by FROM app.queue WHERE id = 1}), 'keeper',
	'a live worker keeps its lease');
is($node->safe_psql('postgres', q{SELECT status FROM pm_pipeline.worker_heartbeats WHERE worker_id = 'goner'}),
	'dead', 'the silent worker is dead');

# 1.3 checkpoints (issue 16.2): from 1.2, a lease claimed before the update
# takes a checkpoint after it; a checkpoint column registered in the updated
# database is dumped and restored (below) with the row's checkpoint.
$node->safe_psql('postgres', q{
	CREATE DATABASE v12;
	CREATE TABLE app.ckjobs (id int PRIMARY KEY, claimed_by text, lease_expires_at timestamptz,
	                         lease_token bigint, attempts int NOT NULL DEFAULT 0, progress jsonb);
	SELECT pm_pipeline.register_lease_table('app.ckjobs', p_token_column => 'lease_token', p_attempts_column => 'attempts');
	SELECT pm_pipeline.set_lease_checkpoint_column('app.ckjobs', 'progress');
	INSERT INTO app.ckjobs (id) VALUES (1);
	SELECT pm_pipeline.checkpoint_lease('app.ckjobs', lease_token, '{"step": 7}')
	  FROM pm_pipeline.claim_leases(NULL::app.ckjobs, 'keeper');
});
$node->safe_psql('v12', q{
	CREATE SCHEMA pm_pipeline;
	CREATE EXTENSION worker_heartbeat SCHEMA pm_pipeline VERSION '1.2';
	CREATE TABLE jobs (id int PRIMARY KEY, claimed_by text, lease_expires_at timestamptz,
	                   lease_token bigint, progress jsonb);
	SELECT pm_pipeline.register_lease_table('public.jobs', p_token_column => 'lease_token');
	INSERT INTO jobs (id) VALUES (1);
	SELECT count(*) FROM pm_pipeline.claim_leases(NULL::jobs, 'w12');
	ALTER EXTENSION worker_heartbeat UPDATE TO '1.3';
	SELECT pm_pipeline.set_lease_checkpoint_column('public.jobs', 'progress');
	SELECT pm_pipeline.checkpoint_lease('public.jobs', lease_token, '{"step": 1}') FROM jobs;
});
is($node->safe_psql('v12', q{SELECT progress->>'step' || ':' || claimed_by FROM jobs}), '1:w12',
	'1.2 -> 1.3: a lease claimed under 1.2 takes a checkpoint after the update');
# 1.3 drain (issue 16): the updated database drains; the rule is dumped.
is($node->safe_psql('postgres', q{SELECT pm_pipeline.drain_workers(p_worker_type => 'slow')}), '1',
	'drain_workers after the update');
is($node->safe_psql('postgres', q{SELECT pm_pipeline.heartbeat('keeper', 'slow', 'processing', p_current_task => 'long job')}),
	'drain', 'heartbeat() answers drain after the update');

# --- dump and restore -------------------------------------------------------
my $dump = $node->basedir . '/worker_heartbeat.dump';
$node->command_ok([ 'pg_dump', '-Fc', '-f', $dump, '-d', $node->connstr('postgres') ], 'pg_dump');
$node->safe_psql('postgres', 'CREATE DATABASE restored');
$node->command_ok([ 'pg_restore', '--exit-on-error', '-d', $node->connstr('restored'), $dump ], 'pg_restore');

my $snapshot = q{
	SELECT (SELECT string_agg(worker_id || ':' || status, ',' ORDER BY worker_id) FROM pm_pipeline.worker_heartbeats)
	    || '|' || (SELECT string_agg(table_name::text || ':' || worker_column || ':' || expires_column || ':' || on_release::text, ',')
	                 FROM pm_pipeline.lease_tables)
	    || '|' || (SELECT string_agg(worker_type || ':' || dead_after, ',' ORDER BY worker_type) FROM pm_pipeline.worker_types)
	    || '|' || (SELECT count(*) FROM pm_pipeline.worker_events)
	    || '|' || (SELECT string_agg(id || ':' || state || ':' || coalesce(claimed_by, '-'), ',' ORDER BY id) FROM app.queue)
};
is($node->safe_psql('restored', $snapshot), $node->safe_psql('postgres', $snapshot),
	'workers, registrations, per-type settings, events and the queue are restored');
is($node->safe_psql('restored', "SELECT extversion FROM pg_extension WHERE extname = 'worker_heartbeat'"),
	$default_version, 'the restored extension has the current version');

my $checkpoints = q{
	SELECT string_agg(table_name::text || ':' || coalesce(checkpoint_column, '-'), ',' ORDER BY table_name::text)
	    || '|' || (SELECT progress::text || ':' || claimed_by FROM app.ckjobs)
	  FROM pm_pipeline.lease_tables
};
is($node->safe_psql('restored', $checkpoints), 'app.ckjobs:progress,app.queue:-|{"step": 7}:keeper',
	'the checkpoint column and a row\'s checkpoint are restored');
is($node->safe_psql('restored', q{
	SELECT pm_pipeline.checkpoint_lease('app.ckjobs', lease_token, '{"step": 8}') IS NOT NULL FROM app.ckjobs
}), 't', 'the restored lease takes a checkpoint');
is($node->safe_psql('restored', q{SELECT directive || ':' || worker_type FROM pm_pipeline.worker_directives}),
	'drain:slow', 'the drain rule is restored (pg_extension_config_dump)');
is($node->safe_psql('restored', q{SELECT pm_pipeline.heartbeat('keeper', 'slow', 'processing', p_current_task => 'long job')}),
	'drain', 'and applies in the restored database');

# The restored database works: new events continue the sequence, and its own
# reaper releases the lease of a worker that dies there.
$node->safe_psql('restored', q{
	SELECT pm_pipeline.upsert_worker_heartbeat('newcomer', 'fast');
	UPDATE app.queue SET state = 'claimed', claimed_by = 'newcomer' WHERE id = 3;
});
is($node->safe_psql('restored', q{
	SELECT (SELECT event_id FROM pm_pipeline.worker_events WHERE worker_id = 'newcomer' AND event = 'started')
	     > (SELECT max(event_id) FROM pm_pipeline.worker_events WHERE worker_id <> 'newcomer')
}), 't', 'new events continue after the restored ones (the id sequence is restored too)');
ok($node->poll_query_until('restored',
	q{SELECT state = 'pending' AND claimed_by IS NULL FROM app.queue WHERE id = 3}),
	'the restored database has a reaper that releases leases');
ok($node->poll_query_until('postgres', q{
	SELECT count(*) = 1 FROM pm_pipeline.reaper_status() WHERE database = 'restored' AND pid IS NOT NULL
}), 'exactly one reaper for the restored database');

# --- 1.2 -> 1.3 with roles granted on 1.2 (issue 16) ---------------------------
# docs/grants.sql on 1.2, then the update: the worker role may call heartbeat(),
# the monitoring role reads worker_fleet, worker_directives, get_worker_stats()
# and metrics() with the drain counts; neither may drain.
$node->safe_psql('postgres', 'CREATE DATABASE from12');
$node->safe_psql('from12', q{
	CREATE SCHEMA pm_pipeline;
	CREATE EXTENSION worker_heartbeat SCHEMA pm_pipeline VERSION '1.2';
});
$node->command_ok([ 'psql', '-X', '-q', '-d', $node->connstr('from12'), '-v', 'schema=pm_pipeline',
		'-v', 'worker_role=wh_up_worker', '-v', 'monitor_role=wh_up_monitor', '-v', 'create_roles=1',
		'-f', "$FindBin::Bin/../../docs/grants.sql" ], 'docs/grants.sql on 1.2');
# A role whose name needs quotes: the update copies its grants by name
# (regrole's output is already quoted; quoting it again named no role and
# ALTER EXTENSION UPDATE failed).
$node->safe_psql('from12', q{
	CREATE ROLE "Ops-Worker";
	GRANT USAGE ON SCHEMA pm_pipeline TO "Ops-Worker";
	GRANT EXECUTE ON FUNCTION pm_pipeline.upsert_worker_heartbeat(text, text, text, uuid, text, timestamptz, jsonb, boolean)
	    TO "Ops-Worker";
	GRANT SELECT ON pm_pipeline.worker_liveness TO "Ops-Worker";
});
$node->safe_psql('from12', 'ALTER EXTENSION worker_heartbeat UPDATE');
is($node->safe_psql('from12', q{
	SELECT has_function_privilege('Ops-Worker',
	           'pm_pipeline.heartbeat(text, text, text, uuid, text, timestamptz, jsonb, boolean)', 'EXECUTE')
	    AND has_table_privilege('Ops-Worker', 'pm_pipeline.worker_fleet', 'SELECT')}), 't',
	'1.2 -> 1.3: grants copied to a role whose name needs quotes');
is($node->safe_psql('from12', q{SET ROLE wh_up_worker; SELECT pm_pipeline.heartbeat('up-1', 'up')}), 'run',
	'1.2 -> 1.3: the worker role may call heartbeat()');
is($node->safe_psql('from12', q{SELECT pm_pipeline.drain_workers(p_worker_id => 'up-1')}), '1',
	'1.2 -> 1.3: drain_workers');
is($node->safe_psql('from12', q{SET ROLE wh_up_worker; SELECT pm_pipeline.heartbeat('up-1', 'up')}), 'drain',
	'1.2 -> 1.3: the worker is told to drain');
is($node->safe_psql('from12', q{SET ROLE wh_up_monitor;
	SELECT (SELECT directive FROM pm_pipeline.worker_fleet WHERE worker_id = 'up-1')
	    || ':' || (SELECT count(*) FROM pm_pipeline.worker_directives)
	    || ':' || (SELECT draining_workers FROM pm_pipeline.get_worker_stats() WHERE worker_type = 'up')
	    || ':' || (pm_pipeline.metrics() LIKE '%worker_heartbeat_workers_draining{worker_type="up"} 1%')}),
	'drain:1:1:true', '1.2 -> 1.3: the monitoring role reads the fleet, the rules, the stats and the metrics');
for my $role (qw(wh_up_worker wh_up_monitor))
{
	my ($ret, $out, $err) = $node->psql('from12', qq{SET ROLE $role; SELECT pm_pipeline.resume_workers(p_worker_id => 'up-1')});
	like($err, qr/permission denied for function resume_workers/, "1.2 -> 1.3: $role may not resume");
}
$node->safe_psql('postgres', 'DROP DATABASE from12 WITH (FORCE)');
$node->safe_psql('postgres', 'DROP ROLE wh_up_worker; DROP ROLE wh_up_monitor; DROP ROLE "Ops-Worker";');

$node->stop;
done_testing();
