# Drain with real worker processes (1.3, issue 16 section 1): C++ example
# workers (clients/cpp/examples/queue_worker, heartbeat() every 0.5 s) share a
# queue; drain_workers() on one worker type: those workers see 'drain' in
# their heartbeat, claim nothing more, finish the task they hold, call
# stop_worker and exit 0; the other type keeps working until it is drained
# by metadata. Events drain_requested, drained, stopped. Once preloaded, once
# not (two clusters in this file).
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/../../examples/tap";
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use WorkerTap;

my $src = "$WorkerTap::ROOT/clients/cpp";
my $build = PostgreSQL::Test::Utils::tempdir('drain_cpp');
ok(run_log([ 'cmake', '-S', $src, '-B', $build, '-DCMAKE_BUILD_TYPE=RelWithDebInfo', '-DWH_CLIENT_TESTS=OFF' ]),
	'cmake configures the C++ client');
ok(run_log([ 'cmake', '--build', $build, '-j2', '--target', 'queue_worker' ]), 'the example queue worker builds')
  or BAIL_OUT('cannot build the C++ queue worker');
my $worker = "$build/worker_heartbeat_queue_worker";

sub drain_scenario
{
	my ($node, $label) = @_;
	my %env = WorkerTap::worker_env($node, WORKER_HEARTBEAT_INTERVAL => '0.5');
	WorkerTap::add_tasks($node, 400, "$label drain");
	my @a_ids = map { "$label-a$_" } 1 .. 3;
	my %pid;
	for my $id (@a_ids, "$label-b1")
	{
		my $type = $id =~ /-a\d$/ ? 'drain_a' : 'drain_b';
		$pid{$id} = WorkerTap::spawn(
			cmd => [ $worker, '--id', $id, '--type', $type, '--work-ms', '100', '--idle-ms', '200' ],
			env => \%env,
			log => "$PostgreSQL::Test::Utils::tmp_check/drain_${id}.log");
	}
	my $a_list = join(',', map { "'$_'" } @a_ids);
	ok(defined WorkerTap::poll_seconds($node,
			"SELECT count(DISTINCT done_by) = 4 FROM tasks WHERE done_by LIKE '$label-%'"),
		"$label: the four workers complete tasks");

	# The drain, and in the same transaction (after its lock: no claim of
	# theirs commits until we do) what the drained workers have claimed so far.
	my $at_drain = $node->safe_psql('postgres', qq{
		BEGIN;
		SELECT pm_pipeline.drain_workers(p_worker_type => 'drain_a');
		SELECT count(*) FROM tasks WHERE done_by IN ($a_list) OR claimed_by IN ($a_list);
		COMMIT;});
	my ($matched, $claimed_before) = split /\n/, $at_drain;
	is($matched, 3, "$label: drain_workers matched the three drain_a workers");

	for my $id (@a_ids)
	{
		is(WorkerTap::wait_exit($pid{$id}), 0, "$label: $id sees the drain, stops and exits 0")
		  or diag(slurp_file("$PostgreSQL::Test::Utils::tmp_check/drain_${id}.log"));
	}
	like(slurp_file("$PostgreSQL::Test::Utils::tmp_check/drain_$a_ids[0].log"), qr/directive: drain/,
		"$label: the C++ Heartbeat reported the directive");
	is($node->safe_psql('postgres',
			"SELECT count(*) FROM tasks WHERE done_by IN ($a_list) OR claimed_by IN ($a_list)"),
		$claimed_before, "$label: the drained workers claimed nothing after the drain");
	is($node->safe_psql('postgres', "SELECT count(*) FROM tasks WHERE claimed_by IN ($a_list)"),
		0, "$label: they finished (or released) what they held");
	is($node->safe_psql('postgres',
			"SELECT count(*) FROM pm_pipeline.worker_heartbeats WHERE worker_id IN ($a_list) AND status = 'stopped'"),
		3, "$label: they called stop_worker");
	for my $event (qw(drain_requested drained stopped))
	{
		is($node->safe_psql('postgres',
				"SELECT count(DISTINCT worker_id) FROM pm_pipeline.worker_events WHERE worker_id IN ($a_list) AND event = '$event'"),
			3, "$label: a '$event' event per drained worker");
	}
	is($node->safe_psql('postgres',
			"SELECT count(*) FROM pm_pipeline.worker_events WHERE worker_id IN ($a_list) AND event = 'drained'"),
		3, "$label: 'drained' once per worker");

	# The other type kept working.
	ok(kill(0, $pid{"$label-b1"}), "$label: the drain_b worker still runs");
	my $b_done = $node->safe_psql('postgres', "SELECT count(*) FROM tasks WHERE done_by = '$label-b1'");
	ok(defined WorkerTap::poll_seconds($node,
			"SELECT count(*) > $b_done FROM tasks WHERE done_by = '$label-b1'"),
		"$label: and keeps completing tasks");
	is($node->safe_psql('postgres',
			"SELECT directive FROM pm_pipeline.worker_fleet WHERE worker_id = '$label-b1'"),
		'run', "$label: its directive is run");

	# Every worker whose metadata says it is an example queue worker.
	is($node->safe_psql('postgres', q{SELECT pm_pipeline.drain_workers(p_metadata => '{"example": "queue_worker"}')}),
		1, "$label: a drain by metadata matches the remaining worker");
	is(WorkerTap::wait_exit($pid{"$label-b1"}), 0, "$label: it drains and exits 0 too");
	is($node->safe_psql('postgres',
			"SELECT string_agg(event, ',' ORDER BY event_id) FROM pm_pipeline.worker_events WHERE worker_id = '$label-b1' AND event <> 'started'"),
		'drain_requested,drained,stopped', "$label: its events");
	is($node->safe_psql('postgres', "SELECT count(*) FROM tasks WHERE state = 'claimed'"),
		0, "$label: no task is left claimed");

	# A worker started while the rule holds stops at once, claiming nothing.
	my $late = WorkerTap::spawn(
		cmd => [ $worker, '--id', "$label-late", '--type', 'drain_c', '--work-ms', '100' ],
		env => \%env,
		log => "$PostgreSQL::Test::Utils::tmp_check/drain_${label}_late.log");
	is(WorkerTap::wait_exit($late), 0, "$label: a worker that appears later is drained as well");
	is($node->safe_psql('postgres', "SELECT count(*) FROM tasks WHERE done_by = '$label-late'"),
		0, "$label: without claiming anything");
	$node->safe_psql('postgres', q{
		SELECT pm_pipeline.resume_workers(p_worker_type => 'drain_a');
		SELECT pm_pipeline.resume_workers(p_metadata => '{"example": "queue_worker"}');});
	is($node->safe_psql('postgres', 'SELECT count(*) FROM pm_pipeline.worker_directives'), 0,
		"$label: resumed");
}

# Preloaded: unchanged heartbeats are absorbed in shared memory.
my $preloaded = WorkerTap::cluster('drain_preloaded');
drain_scenario($preloaded, 'pre');
$preloaded->stop;

# Not preloaded: every heartbeat goes through the table.
my $plain = PostgreSQL::Test::Cluster->new('drain_plain');
$plain->init;
$plain->append_conf('postgresql.conf', "max_worker_processes = 16\n");
$plain->start;
$plain->safe_psql('postgres', 'CREATE SCHEMA pm_pipeline; CREATE EXTENSION worker_heartbeat SCHEMA pm_pipeline;');
$plain->safe_psql('postgres', slurp_file("$WorkerTap::ROOT/examples/sql/queue.sql"));
is($plain->safe_psql('postgres', "SELECT count(*) FROM pg_settings WHERE name = 'shared_preload_libraries' AND setting LIKE '%worker_heartbeat%'"),
	0, 'the second cluster does not preload the library');
drain_scenario($plain, 'plain');

# The C++ client against a 1.2 extension (no heartbeat()): it falls back to
# upsert_worker_heartbeat, its directive stays run, and it works as before.
$plain->safe_psql('postgres', 'CREATE DATABASE old12');
$plain->safe_psql('old12', q{CREATE SCHEMA pm_pipeline; CREATE EXTENSION worker_heartbeat SCHEMA pm_pipeline VERSION '1.2';});
$plain->safe_psql('old12', slurp_file("$WorkerTap::ROOT/examples/sql/queue.sql"));
$plain->safe_psql('old12', "INSERT INTO tasks (payload) SELECT 'old ' || g FROM generate_series(1, 3) g");
my %old_env = (WorkerTap::worker_env($plain, WORKER_HEARTBEAT_INTERVAL => '0.5'), PGDATABASE => 'old12');
my $old_log = "$PostgreSQL::Test::Utils::tmp_check/drain_old12.log";
my $old = WorkerTap::spawn(cmd => [ $worker, '--id', 'old-1', '--work-ms', '10', '--exit-when-empty' ],
	env => \%old_env, log => $old_log);
is(WorkerTap::wait_exit($old), 0, '1.2 extension: the C++ worker exits 0');
like(slurp_file($old_log), qr/heartbeat\(\) unavailable \(42883\): using upsert_worker_heartbeat/,
	'1.2 extension: the client falls back to upsert_worker_heartbeat');
is($plain->safe_psql('old12', "SELECT count(*) FROM tasks WHERE state = 'done' AND done_by = 'old-1'"), 3,
	'1.2 extension: and completes the queue');
$plain->stop;

done_testing();
