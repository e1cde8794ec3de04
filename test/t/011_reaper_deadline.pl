# A worker that stops heartbeating is declared dead and its leases released
# within dead_after + one reap interval (and not before dead_after), with the
# library preloaded and without.
#
# Two silent workers: 'fast-1' of a type whose dead_after is set to 2 s with
# set_worker_type_dead_after(), and 'plain-1' that follows the setting
# worker_heartbeat.dead_after = 3s. Each holds a lease whose deadline is an hour
# away, so only its death can release it. Meanwhile 'steady' heartbeats every
# ~100 ms and holds a lease too: it must stay alive and keep it.
# reap_interval is 500 ms. Bounds are checked on the database's clock: from the
# last heartbeat to the commit of the release (track_commit_timestamp), and to
# the death the reaper recorded (died_at - last_heartbeat_at); the time seen
# by polling is printed too.
use strict;
use warnings;
use Time::HiRes qw(time usleep);
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $INTERVAL = 0.5;
my $SLACK = 0.4;    # the pass itself, on 2 busy cores

sub run_mode
{
	my ($preload) = @_;
	my $mode = $preload ? 'preloaded' : 'not preloaded';

	my $node = PostgreSQL::Test::Cluster->new($preload ? 'deadline_preloaded' : 'deadline_on_demand');
	$node->init;
	$node->append_conf('postgresql.conf', qq{
max_worker_processes = 16
track_commit_timestamp = on
worker_heartbeat.reap_interval = '500ms'
worker_heartbeat.dead_after = '3s'
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
		INSERT INTO app.queue (id) SELECT g FROM generate_series(1, 3) g;
		SELECT pm_pipeline.register_lease_table('app.queue', p_on_release => '{"state": "pending"}');
		SELECT pm_pipeline.set_worker_type_dead_after('fast', '2 seconds');
	});
	ok( $node->poll_query_until('postgres',
			"SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'worker_heartbeat reaper'"),
		"$mode: the reaper runs");

	my $beat_steady = q{SELECT pm_pipeline.upsert_worker_heartbeat('steady', 'fast', 'processing')};
	$node->safe_psql('postgres', $beat_steady);
	my $t_beat = {};
	for my $w ([ 'fast-1', 'fast', 1, 2.0 ], [ 'plain-1', 'plain', 2, 3.0 ])
	{
		my ($id, $type, $row) = @$w;
		$node->safe_psql('postgres', qq{
			UPDATE app.queue SET state = 'claimed', claimed_by = '$id',
			       lease_expires_at = now() + interval '1 hour' WHERE id = $row;
			SELECT pm_pipeline.upsert_worker_heartbeat('$id', '$type', 'processing');
		});
		$t_beat->{$id} = time;    # its last heartbeat committed before this
	}
	$node->safe_psql('postgres', q{
		UPDATE app.queue SET state = 'claimed', claimed_by = 'steady',
		       lease_expires_at = now() + interval '1 hour' WHERE id = 3;
	});

	my %released_after;
	my $t0 = time;
	while (keys %released_after < 2 && time - $t0 < 30)
	{
		$node->safe_psql('postgres', $beat_steady);
		my $rows = $node->safe_psql('postgres',
			"SELECT string_agg(id || '=' || coalesce(claimed_by, ''), ',' ORDER BY id) FROM app.queue WHERE id < 3");
		my $now = time;
		for my $pair (split /,/, $rows)
		{
			my ($id, $holder) = split /=/, $pair, 2;
			my $w = $id == 1 ? 'fast-1' : 'plain-1';
			$released_after{$w} //= $now - $t_beat->{$w} if ($holder // '') eq '';
		}
		usleep(50_000);
	}

	for my $w ([ 'fast-1', 2.0 ], [ 'plain-1', 3.0 ])
	{
		my ($id, $dead_after) = @$w;
		# 'steady' keeps beating through the checks too (its dead_after is 2 s;
		# on a loaded machine the checks below can take longer than that).
		$node->safe_psql('postgres', $beat_steady);
		ok(defined $released_after{$id}, "$mode: $id released");
		my $row = $id eq 'fast-1' ? 1 : 2;
		# From the last heartbeat to the commit of the release, both on the
		# database's clock (track_commit_timestamp).
		my $after = $node->safe_psql('postgres', qq{
			SELECT extract(epoch FROM pg_xact_commit_timestamp(q.xmin) - w.last_heartbeat_at)
			  FROM app.queue q, pm_pipeline.worker_heartbeats w WHERE q.id = $row AND w.worker_id = '$id'});
		$after = 99 if $after eq '';
		diag(sprintf("%s: %s (dead_after %.0f s, reap_interval %.1f s): release committed %.0f ms after its last "
			  . "heartbeat (seen by polling after %.0f ms)",
			$mode, $id, $dead_after, $INTERVAL, $after * 1000, ($released_after{$id} // 99) * 1000));
		cmp_ok($after, '<=', $dead_after + $INTERVAL + $SLACK,
			"$mode: $id released within dead_after + one reap interval (+${SLACK}s for the pass itself)");
		cmp_ok($after, '>=', $dead_after, "$mode: $id not released before its dead_after");
		# What the reaper recorded, on the database's clock.
		my ($silent, $latency, $cause) = split /\|/, $node->safe_psql('postgres', qq{
			SELECT extract(epoch FROM died_at - last_heartbeat_at), extract(epoch FROM e.detection_latency), death_cause
			  FROM pm_pipeline.worker_heartbeats w
			  JOIN pm_pipeline.worker_events e USING (worker_id)
			 WHERE worker_id = '$id' AND e.event = 'died'});
		diag(sprintf("%s: %s recorded silent for %.3f s, detection latency %.3f s", $mode, $id, $silent // -1,
			$latency // -1));
		is($cause, 'heartbeat_timeout', "$mode: $id died of heartbeat_timeout");
		cmp_ok($silent, '>=', $dead_after, "$mode: $id not declared dead before its dead_after");
		cmp_ok($silent, '<=', $dead_after + $INTERVAL + 0.2, "$mode: $id declared dead within one reap interval of its deadline");
	}
	$node->safe_psql('postgres', $beat_steady);
	note $node->safe_psql('postgres', q{SELECT occurred_at, event, worker_id, detection_latency FROM pm_pipeline.worker_events ORDER BY 1});
	note $node->safe_psql('postgres', q{SELECT worker_id, last_heartbeat_at, died_at FROM pm_pipeline.worker_heartbeats});
	is( $node->safe_psql('postgres', q{
			SELECT w.status || ':' || q.claimed_by FROM pm_pipeline.worker_heartbeats w, app.queue q
			 WHERE w.worker_id = 'steady' AND q.id = 3}),
		'processing:steady', "$mode: the worker that kept heartbeating is alive and keeps its lease");
	is( $node->safe_psql('postgres', q{
			SELECT string_agg(state, ',' ORDER BY id) FROM app.queue WHERE id < 3}),
		'pending,pending', "$mode: on_release applied to the released rows");
	$node->stop;
}

run_mode(1);
run_mode(0);

done_testing();
