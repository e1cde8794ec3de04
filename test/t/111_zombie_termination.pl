# Zombie termination (issue 16, section 4), preloaded and not.
#
# A session-bound worker heartbeats, locks a leased row (the lease of the
# registered table app.jobs) and gets stuck in pg_sleep: its client lives,
# so only the timeout (dead_after 1 s for its type) declares it dead.
# - worker_heartbeat.terminate_zombies off: it is declared dead, its backend
#   is not touched (still running, still holding the row lock);
# - on (reload): the reaper terminates the backend; the row lock is gone, the
#   lease released, a `terminated` event with pid and backend_start;
# - the per-type override: off for a type while the setting is on;
# - never touched: an unbound backend (same role, same database, a worker
#   that is not session-bound), and the backend of a worker with the same id
#   that is not bound to it (the worker row records another session);
# - a worker owned by another, non-superuser role bound to a superuser's
#   backend (a forged row): termination_refused.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $S = 'pm_pipeline';

sub send_nowait
{
	my ($c, $sql) = @_;
	$c->{stdin} .= "$sql\n";
	$c->{run}->pump_nb;
}

# A stuck session-bound worker holding the lease of row $row; returns
# (client, pid, backend_start). With terminate_zombies on it may be declared
# dead and terminated before we look: wait until it sleeps or is gone.
sub zombie
{
	my ($node, $id, $type, $row, $bind) = @_;
	$bind //= 'true';
	my $c = $node->background_psql('postgres', on_error_stop => 0);
	$c->query_safe(qq{
		SELECT $S.upsert_worker_heartbeat('$id', '$type', 'processing', p_session_bound => $bind);
		UPDATE app.jobs SET claimed_by = '$id', lease_expires_at = now() + interval '1 hour' WHERE id = $row;
	});
	my ($pid, $start) = split /\|/,
	  $c->query_safe('SELECT pid, backend_start FROM pg_stat_activity WHERE pid = pg_backend_pid()');
	chomp $start;
	send_nowait($c, "BEGIN; SELECT id FROM app.jobs WHERE id = $row FOR UPDATE; SELECT pg_sleep(600);");
	$node->poll_query_until('postgres',
		"SELECT NOT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = $pid AND wait_event IS DISTINCT FROM 'PgSleep')")
	  or die "$id is not sleeping";
	return ($c, $pid, $start);
}

sub alive
{
	my ($node, $pid) = @_;
	return $node->safe_psql('postgres', "SELECT count(*) FROM pg_stat_activity WHERE pid = $pid");
}

sub died
{
	my ($node, $id) = @_;
	return $node->poll_query_until('postgres',
		"SELECT count(*) > 0 FROM $S.worker_events WHERE event = 'died' AND worker_id = '$id'");
}

sub events_of
{
	my ($node, $id) = @_;
	return $node->safe_psql('postgres',
		"SELECT string_agg(event, ',' ORDER BY event_id) FROM $S.worker_events WHERE worker_id = '$id'");
}

sub run_mode
{
	my ($preload) = @_;
	my $mode = $preload ? 'preloaded' : 'not preloaded';
	my $node = PostgreSQL::Test::Cluster->new($preload ? 'zombie_pre' : 'zombie_nopre');
	$node->init;
	$node->append_conf('postgresql.conf', qq{
max_worker_processes = 16
worker_heartbeat.reap_interval = '200ms'
worker_heartbeat.launcher_interval = '1s'
});
	$node->append_conf('postgresql.conf', "shared_preload_libraries = 'worker_heartbeat'\n") if $preload;
	$node->start;
	$node->safe_psql('postgres', qq{
		CREATE SCHEMA $S;
		CREATE EXTENSION worker_heartbeat SCHEMA $S;
		CREATE SCHEMA app;
		CREATE TABLE app.jobs (id int PRIMARY KEY, state text NOT NULL DEFAULT 'pending',
		                       claimed_by text, lease_expires_at timestamptz);
		INSERT INTO app.jobs (id) SELECT g FROM generate_series(1, 10) g;
		SELECT $S.register_lease_table('app.jobs', p_on_release => '{"state": "pending"}');
		SELECT $S.set_worker_type_dead_after('stuck', '2 seconds');
		SELECT $S.set_worker_type_dead_after('kept', '2 seconds');
	});

	# --- the setting off: nothing is terminated --------------------------------
	my ($z1, $pid1) = zombie($node, 'z-off', 'stuck', 1);
	ok(died($node, 'z-off'), "$mode: off: the stuck worker is declared dead by timeout");
	is(alive($node, $pid1), '1', "$mode: off: its backend is not terminated");
	is($node->safe_psql('postgres', "SELECT count(*) FROM $S.worker_events WHERE event LIKE 'terminat%'"),
		'0', "$mode: off: no termination event");
	is($node->safe_psql('postgres', "SELECT claimed_by FROM app.jobs WHERE id = 1"),
		'z-off', "$mode: off: its locked row keeps its lease (the release skips a locked row)");
	$node->safe_psql('postgres', "SELECT pg_terminate_backend($pid1)");
	eval { $z1->{run}->finish };

	# --- on ---------------------------------------------------------------------
	$node->safe_psql('postgres', q{
		LOAD 'worker_heartbeat';
		ALTER SYSTEM SET worker_heartbeat.terminate_zombies = on; SELECT pg_reload_conf();});
	$node->poll_query_until('postgres', "SELECT current_setting('worker_heartbeat.terminate_zombies', true) = 'on'");
	$node->safe_psql('postgres', qq{
		SELECT $S.set_worker_type_terminate_zombies('kept', false);
		-- nobody dies while the scene is set up
		SELECT $S.set_worker_type_dead_after('stuck', '1 hour');
		SELECT $S.set_worker_type_dead_after('kept', '1 hour');});

	# Bystanders: an unbound worker stuck the same way, and a session running
	# with the same worker id as a bound worker but not bound to it.
	my ($u, $upid) = zombie($node, 'z-unbound', 'stuck', 3, 'false');
	my ($k, $kpid) = zombie($node, 'z-kept', 'kept', 4);

	my ($z2, $pid2, $start2) = zombie($node, 'z-on', 'stuck', 2);
	# Another session of the same role that heartbeats as z-on: refused while
	# z-on is bound to its live session (55000), it must not become the
	# target (the row keeps the bound session's pid and start).
	my $same = $node->background_psql('postgres', on_error_stop => 0);
	my $samepid = $same->query_safe('SELECT pg_backend_pid()');
	chomp $samepid;
	$same->query(qq{SELECT $S.upsert_worker_heartbeat('z-on', 'stuck', 'processing', p_session_bound => true)});
	like($same->{stderr}, qr/bound to another database session/, "$mode: a second session cannot take z-on");
	send_nowait($same, 'SELECT pg_sleep(600);');
	$node->safe_psql('postgres', qq{
		SELECT $S.set_worker_type_dead_after('stuck', '1 second');
		SELECT $S.set_worker_type_dead_after('kept', '1 second');});

	ok(died($node, 'z-on'), "$mode: on: the stuck worker is declared dead");
	ok($node->poll_query_until('postgres', "SELECT count(*) = 0 FROM pg_stat_activity WHERE pid = $pid2"),
		"$mode: on: its backend is terminated");
	ok($node->poll_query_until('postgres', "SELECT claimed_by IS NULL AND state = 'pending' FROM app.jobs WHERE id = 2"),
		"$mode: on: its lease is released");
	is($node->safe_psql('postgres', "SELECT id FROM app.jobs WHERE id = 2 FOR UPDATE NOWAIT"),
		'2', "$mode: on: its row lock is gone");
	is($node->safe_psql('postgres', qq{
			SELECT details->>'pid' || ' ' || ((details->>'backend_start')::timestamptz = '$start2') || ' ' || (details->>'exited') FROM $S.worker_events
			 WHERE event = 'terminated' AND worker_id = 'z-on'}),
		"$pid2 true true", "$mode: on: a terminated event with its pid and backend_start; it exited");
	like(events_of($node, 'z-on'), qr/died,terminated,leases_released/, "$mode: died, terminated, then released");

	ok(died($node, 'z-unbound'), "$mode: the unbound worker is dead too");
	ok(died($node, 'z-kept'), "$mode: the worker of a type with terminate_zombies off is dead too");
	is(alive($node, $upid), '1', "$mode: an unbound worker's backend is never touched");
	is(alive($node, $kpid), '1', "$mode: a type with terminate_zombies off: not touched");
	is(alive($node, $samepid), '1', "$mode: a session not bound to the worker is never touched");
	is($node->safe_psql('postgres', "SELECT count(*) FROM $S.worker_events WHERE event LIKE 'terminat%'"),
		'1', "$mode: one termination in all");

	# --- a forged binding to a superuser's backend: refused ---------------------
	$node->safe_psql('postgres', qq{
		CREATE ROLE plain_worker LOGIN;
		GRANT USAGE ON SCHEMA $S TO plain_worker;
		GRANT EXECUTE ON FUNCTION $S.upsert_worker_heartbeat(text, text, text, uuid, text, timestamptz, jsonb, boolean)
		      TO plain_worker;});
	my $su = $node->background_psql('postgres', on_error_stop => 0);
	my $supid = $su->query_safe('SELECT pg_backend_pid()');
	chomp $supid;
	send_nowait($su, 'SELECT pg_sleep(600);');
	$node->safe_psql('postgres', qq{SELECT $S.upsert_worker_heartbeat('z-forged', 'stuck', p_metadata => NULL)},
		extra_params => [ '-U', 'plain_worker' ]);
	$node->safe_psql('postgres', qq{
		UPDATE $S.worker_heartbeats SET session_pid = $supid,
		       session_started_at = (SELECT backend_start FROM pg_stat_activity WHERE pid = $supid),
		       last_heartbeat_at = now(), status = 'processing', died_at = NULL, death_cause = NULL
		 WHERE worker_id = 'z-forged'});
	ok(died($node, 'z-forged'), "$mode: a worker bound (forged) to a superuser's backend is dead");
	ok($node->poll_query_until('postgres',
			"SELECT count(*) > 0 FROM $S.worker_events WHERE event = 'termination_refused' AND worker_id = 'z-forged'"),
		"$mode: termination_refused");
	like($node->safe_psql('postgres', qq{
			SELECT details->>'reason' FROM $S.worker_events WHERE event = 'termination_refused' AND worker_id = 'z-forged'}),
		qr/superuser/, "$mode: the reason names the superuser");
	is(alive($node, $supid), '1', "$mode: the superuser's backend is not touched");

	for my $pid ($upid, $kpid, $samepid, $supid)
	{
		$node->safe_psql('postgres', "SELECT pg_terminate_backend($pid)");
	}
	eval { $_->{run}->finish } for ($u, $k, $same, $su, $z2);
	$node->stop;
}

run_mode(1);
run_mode(0);

done_testing();
