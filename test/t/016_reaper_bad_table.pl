# One bad table never stops the others and never crash-loops the reaper
# (preloaded; reap_interval 200 ms, pass_lock_timeout 100 ms).
#
# Four registered tables: app.t_gone (dropped behind the reaper's back),
# app.t_cast (its on_release value 'pending' no longer casts after ALTER COLUMN
# TYPE integer), app.t_locked (another session holds ACCESS EXCLUSIVE on it) and
# app.t_good. Session-bound workers holding leases in them are killed:
# - the leases in t_good come back at once, and the log names each bad table
#   with the reason; the reaper keeps its pid and keeps making passes;
# - reaper_status().last_error names the last table skipped and why;
# - the locked table is skipped after the lock timeout while the lock is held,
#   a live worker is not held up meanwhile (heartbeat and an UPDATE of t_good
#   finish quickly), and its lease is released once the lock is gone;
# - once t_cast is fixed, its lease is released too (a pass that skipped a
#   table is retried as a full pass after 1 s, backing off to 30 s).
use strict;
use warnings;
use Time::HiRes qw(time usleep);
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('bad_table');
$node->init;
$node->append_conf('postgresql.conf', q{
shared_preload_libraries = 'worker_heartbeat'
max_worker_processes = 16
worker_heartbeat.reap_interval = '200ms'
worker_heartbeat.pass_lock_timeout = '100ms'
worker_heartbeat.launcher_interval = '500ms'
});
$node->start;
$node->safe_psql('postgres', q{
	CREATE SCHEMA pm_pipeline;
	CREATE EXTENSION worker_heartbeat SCHEMA pm_pipeline;
	CREATE SCHEMA app;
	DO $$
	DECLARE t text;
	BEGIN
	  FOREACH t IN ARRAY ARRAY['t_gone', 't_cast', 't_locked', 't_good'] LOOP
	    EXECUTE format('CREATE TABLE app.%I (id int PRIMARY KEY, state text NOT NULL DEFAULT ''pending'',
	                    claimed_by text, lease_expires_at timestamptz)', t);
	    EXECUTE format('CREATE INDEX ON app.%I (claimed_by)', t);
	    EXECUTE format('CREATE INDEX ON app.%I (lease_expires_at)', t);
	    EXECUTE format('INSERT INTO app.%I (id) SELECT g FROM generate_series(1, 5) g', t);
	    PERFORM pm_pipeline.register_lease_table(format('app.%I', t)::regclass,
	                                             p_on_release => '{"state": "pending"}');
	  END LOOP;
	END $$;
});
ok($node->poll_query_until('postgres',
		"SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'worker_heartbeat reaper'"),
	'the reaper runs');
my $reaper = $node->safe_psql('postgres', 'SELECT pid FROM pm_pipeline.reaper_status()');

sub bound_worker
{
	my ($id, $row, @tables) = @_;
	my $client = $node->background_psql('postgres');
	my $claims = join '', map {
		"UPDATE app.$_ SET state = 'claimed', claimed_by = '$id', lease_expires_at = now() + interval '1 hour' WHERE id = $row;\n"
	} @tables;
	$client->query_safe(qq{
		SELECT pm_pipeline.upsert_worker_heartbeat('$id', 'w', 'processing', p_session_bound => true);
		$claims
	});
	return $client;
}

sub kill_client
{
	my ($client) = @_;
	$client->{run}->signal('KILL');
	eval { $client->{run}->finish };
}

sub holder
{
	my ($table, $row) = @_;
	return $node->safe_psql('postgres', "SELECT coalesce(claimed_by, '<none>') FROM app.$table WHERE id = $row");
}

# --- a dropped table and a value that no longer casts ---------------------------
my $v1 = bound_worker('victim-1', 1, 't_gone', 't_cast', 't_good');
# Taken before the DROP: a pass that runs between the DROP and the kill
# (reap_interval is 200 ms) already names the dropped table, once.
my $log_offset = -s $node->logfile;
$node->safe_psql('postgres', q{
	DROP TABLE app.t_gone;
	ALTER TABLE app.t_cast ALTER COLUMN state DROP DEFAULT;
	ALTER TABLE app.t_cast ALTER COLUMN state TYPE integer USING 0;
});
kill_client($v1);
ok($node->poll_query_until('postgres', "SELECT claimed_by IS NULL AND state = 'pending' FROM app.t_good WHERE id = 1"),
	'dropped and broken tables: the lease in the good table is released');
ok($node->wait_for_log(qr/registered table app\.t_gone no longer exists; skipping it/, $log_offset),
	'the log names the dropped table');
ok( $node->wait_for_log(
		qr/skipped releasing leases in table app\.t_cast: invalid input syntax for type integer: "pending"/,
		$log_offset),
	'the log names the table whose on_release value no longer casts, and why');
is(holder('t_cast', 1), 'victim-1', 'the broken table was left as it was (its update rolled back)');
like(
	$node->safe_psql('postgres', 'SELECT last_error FROM pm_pipeline.reaper_status()'),
	qr/^(registered table app\.t_gone no longer exists|skipped releasing leases in table app\.t_cast: invalid input syntax)/,
	'reaper_status().last_error names a skipped table');
my $passes = $node->safe_psql('postgres', 'SELECT passes FROM pm_pipeline.reaper_status()');
ok($node->poll_query_until('postgres', "SELECT passes > $passes + 3 FROM pm_pipeline.reaper_status()"),
	'the next passes run');
is($node->safe_psql('postgres', 'SELECT pid FROM pm_pipeline.reaper_status()'), $reaper,
	'the reaper did not crash or restart (same pid)');
my $gone_reports = () = slurp_file($node->logfile, $log_offset) =~ /app\.t_gone no longer exists/g;
is($gone_reports, 1, 'the dropped table is reported once, not on every pass');

# Fixed: the lease of the dead worker in t_cast is released by a later pass.
$node->safe_psql('postgres', 'ALTER TABLE app.t_cast ALTER COLUMN state TYPE text');
ok($node->poll_query_until('postgres', "SELECT claimed_by IS NULL AND state = 'pending' FROM app.t_cast WHERE id = 1"),
	'once the column is fixed, the skipped lease is released too');

# --- a lock the reaper cannot get quickly ----------------------------------------------
my $v3 = bound_worker('victim-3', 3, 't_locked', 't_good');
my $locker = $node->background_psql('postgres');
$locker->query_safe('BEGIN; LOCK TABLE app.t_locked IN ACCESS EXCLUSIVE MODE;');
$log_offset = -s $node->logfile;
my $t0 = time;
kill_client($v3);
ok($node->poll_query_until('postgres', "SELECT claimed_by IS NULL FROM app.t_good WHERE id = 3"),
	'locked table: the lease in the good table is released while the lock is held');
diag(sprintf('locked table: lease in t_good back after %.0f ms', (time - $t0) * 1000));
ok( $node->wait_for_log(qr/skipped releasing leases in table app\.t_locked: canceling statement due to lock timeout/,
		$log_offset),
	'the log names the locked table and the lock timeout');
ok( $node->poll_query_until('postgres',
		q{SELECT last_error LIKE 'skipped releasing leases in table app.t_locked: canceling statement due to lock timeout%'
		    FROM pm_pipeline.reaper_status()}),
	'reaper_status().last_error says which table was skipped, and why');

# A live worker is not held up by the reaper meanwhile.
# Timed inside the server, so that a loaded machine's psql start-up does not count.
my $live_ms = $node->safe_psql('postgres', q{
	CREATE FUNCTION pg_temp.live_worker() RETURNS float8 LANGUAGE plpgsql AS $$
	DECLARE t0 timestamptz := clock_timestamp();
	BEGIN
		PERFORM pm_pipeline.upsert_worker_heartbeat('live', 'w', 'processing', p_current_task => 'changing');
		UPDATE app.t_good SET state = 'claimed', claimed_by = 'live', lease_expires_at = now() + interval '1 hour'
		 WHERE id = 4;
		RETURN 1000 * extract(epoch FROM clock_timestamp() - t0);
	END $$;
	SELECT pg_temp.live_worker();
});
diag(sprintf('heartbeat + UPDATE of a live worker during the skipped passes: %.0f ms', $live_ms));
cmp_ok($live_ms, '<', 100, 'a live worker is not held up by the reaper (less than pass_lock_timeout)');
# Only the session holding the lock can look.
my $seen = $locker->query_safe('SELECT claimed_by FROM app.t_locked WHERE id = 3');
chomp $seen;
is($seen, 'victim-3', 'the locked table is untouched while locked');

$locker->query_safe('COMMIT');
ok($node->poll_query_until('postgres', "SELECT claimed_by IS NULL AND state = 'pending' FROM app.t_locked WHERE id = 3"),
	'once the lock is gone, the skipped lease is released');
is(holder('t_good', 4), 'live', "the live worker's lease is untouched");
is($node->safe_psql('postgres', 'SELECT pid FROM pm_pipeline.reaper_status()'), $reaper,
	'still the same reaper');
ok(!$node->log_contains(qr/was terminated by signal|exited with exit code/), 'no crash, no exit');

$locker->quit;
$node->stop;
done_testing();
