# SIGKILL of a session-bound worker's client process: its lease is back in the
# queue within a second, with the library preloaded and without.
#
# The worker is a real psql process (IPC::Run) that heartbeats with
# p_session_bound => true and holds a lease in a registered table whose
# deadline is an hour away, with dead_after at its default of 5 minutes: only
# the end of its session can release the lease that fast. We kill the psql
# process with SIGKILL (the server sees its connection drop), then poll from
# another connection until the row is seen released, and measure the time from
# the kill to the commit of the release (track_commit_timestamp; the polling
# figure, which adds a psql round trip, is printed too). reap_interval is 10 s, so only the wake-up sent by the
# ending session can make it in under a second. A worker of another session that holds a lease stays
# untouched.
use strict;
use warnings;
use Time::HiRes qw(time usleep);
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $KILLS = 3;    # per mode

sub kill_and_measure
{
	my ($node, $worker_id, $row) = @_;

	my $client = $node->background_psql('postgres');
	$client->query_safe(qq{
		SELECT pm_pipeline.upsert_worker_heartbeat('$worker_id', 'kill-test', 'processing',
		                                           p_session_bound => true);
		UPDATE app.queue SET state = 'claimed', claimed_by = '$worker_id',
		       lease_expires_at = now() + interval '1 hour' WHERE id = $row;
	});
	my $backend = $client->query_safe('SELECT pg_backend_pid()');
	chomp $backend;
	is( $node->safe_psql('postgres',
			"SELECT session_pid FROM pm_pipeline.worker_heartbeats WHERE worker_id = '$worker_id'"),
		$backend, "$worker_id is bound to its session (pid $backend)");

	# The client process itself, not its backend.
	my $t0 = time;
	$client->{run}->signal('KILL');
	my $released = 0;
	my $elapsed;
	while (time - $t0 < 30)
	{
		my $holder = $node->safe_psql('postgres',
			"SELECT coalesce(claimed_by, '<none>') || ':' || state FROM app.queue WHERE id = $row");
		if ($holder eq '<none>:pending')
		{
			$elapsed = time - $t0;
			$released = 1;
			last;
		}
		usleep(5_000);
	}
	eval { $client->{run}->finish };
	ok($released, "$worker_id: lease released after its client was killed");
	# When the release committed (track_commit_timestamp), on the same clock:
	# independent of how fast the polling happened to be on a loaded machine.
	my $committed = $node->safe_psql('postgres',
		"SELECT extract(epoch FROM pg_xact_commit_timestamp(xmin)) FROM app.queue WHERE id = $row");
	my $back = $committed - $t0;
	diag(sprintf("%s: SIGKILL of the client -> release committed after %.0f ms (seen by polling after %.0f ms)",
		$worker_id, $back * 1000, ($elapsed // 30) * 1000));
	return $back;
}

sub run_mode
{
	my ($preload) = @_;
	my $mode = $preload ? 'preloaded' : 'not preloaded';

	my $node = PostgreSQL::Test::Cluster->new($preload ? 'kill_preloaded' : 'kill_on_demand');
	$node->init;
	$node->append_conf('postgresql.conf', qq{
max_worker_processes = 16
track_commit_timestamp = on
worker_heartbeat.reap_interval = '10s'
worker_heartbeat.launcher_interval = '1s'
});
	$node->append_conf('postgresql.conf', "shared_preload_libraries = 'worker_heartbeat'\n") if $preload;
	$node->start;
	$node->safe_psql('postgres', q{
		CREATE SCHEMA pm_pipeline;
		CREATE EXTENSION worker_heartbeat SCHEMA pm_pipeline;
		CREATE SCHEMA app;
		CREATE TABLE app.queue (id int PRIMARY KEY, state text NOT NULL DEFAULT 'pending',
		                        claimed_by text, lease_expires_at timestamptz);
		CREATE INDEX ON app.queue (claimed_by);
		CREATE INDEX ON app.queue (lease_expires_at);
		INSERT INTO app.queue (id) SELECT g FROM generate_series(1, 10) g;
		SELECT pm_pipeline.register_lease_table('app.queue', p_on_release => '{"state": "pending"}');
	});
	ok( $node->poll_query_until('postgres', q{
			SELECT count(*) = 1 FROM pg_stat_activity
			 WHERE backend_type = 'worker_heartbeat reaper' AND datname = 'postgres'}),
		"$mode: the reaper runs");
	my $reaper_pid = $node->safe_psql('postgres', 'SELECT pid FROM pm_pipeline.reaper_status()');

	# A live worker of another (still open) session holds row 10.
	my $other = $node->background_psql('postgres');
	$other->query_safe(q{
		SELECT pm_pipeline.upsert_worker_heartbeat('bystander', 'kill-test', 'processing', p_session_bound => true);
		UPDATE app.queue SET state = 'claimed', claimed_by = 'bystander',
		       lease_expires_at = now() + interval '1 hour' WHERE id = 10;
	});

	my @times;
	for my $i (1 .. $KILLS)
	{
		push @times, kill_and_measure($node, "victim-$i", $i);
	}
	my ($max) = sort { $b <=> $a } @times;
	cmp_ok($max, '<', 1.0, sprintf("$mode: every lease back within 1 s (slowest %.0f ms)", $max * 1000));

	is( $node->safe_psql('postgres', q{
			SELECT string_agg(worker_id || ':' || status || ':' || death_cause, ',' ORDER BY worker_id)
			  FROM pm_pipeline.worker_heartbeats WHERE worker_id LIKE 'victim-%'}),
		join(',', map { "victim-$_:dead:session_ended" } 1 .. $KILLS),
		"$mode: each victim is dead with cause session_ended");
	# The reaper's own measure: from the session's end to its pass.
	my $latency = $node->safe_psql('postgres', q{
		SELECT round(1000 * max(extract(epoch FROM detection_latency)))
		  FROM pm_pipeline.worker_events WHERE event = 'died' AND worker_id LIKE 'victim-%'});
	diag("$mode: largest detection_latency recorded by the reaper: $latency ms");
	cmp_ok($latency, '<', 1000, "$mode: recorded detection latency under 1 s");
	is( $node->safe_psql('postgres', q{
			SELECT count(*) FROM pm_pipeline.worker_events
			 WHERE event = 'leases_released' AND worker_id LIKE 'victim-%'
			   AND table_name = 'app.queue' AND released_count = 1}),
		$KILLS, "$mode: one leases_released event per victim, table named");

	# One summary line per pass that released something, not one per row.
	my $offset = -s $node->logfile;
	my $multi = $node->background_psql('postgres');
	$multi->query_safe(q{
		SELECT pm_pipeline.upsert_worker_heartbeat('victim-multi', 'kill-test', 'processing', p_session_bound => true);
		UPDATE app.queue SET state = 'claimed', claimed_by = 'victim-multi',
		       lease_expires_at = now() + interval '1 hour' WHERE id IN (6, 7, 8);
	});
	$multi->{run}->signal('KILL');
	eval { $multi->{run}->finish };
	ok($node->poll_query_until('postgres', "SELECT count(*) = 0 FROM app.queue WHERE claimed_by = 'victim-multi'"),
		"$mode: a worker holding three leases: all released");
	ok($node->wait_for_log(qr/worker_heartbeat reaper: declared 1 worker\(s\) dead, released 3 lease\(s\)/, $offset),
		"$mode: one summary line: 1 dead, 3 leases");
	my $lines = () = slurp_file($node->logfile, $offset) =~ /worker_heartbeat reaper:/g;
	is($lines, 1, "$mode: and no other reaper line (not one per row)");

	is( $node->safe_psql('postgres',
			"SELECT claimed_by || ':' || state FROM app.queue WHERE id = 10"),
		'bystander:claimed', "$mode: the live worker's lease is untouched");
	is( $node->safe_psql('postgres', 'SELECT pid FROM pm_pipeline.reaper_status()'),
		$reaper_pid, "$mode: the same reaper did all of it (not a fresh one)");
	$other->quit;
	$node->stop;
}

run_mode(1);
run_mode(0);

done_testing();
