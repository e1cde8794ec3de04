# The reaper comes back after it is killed or the server restarts, and catches
# up with the workers that died while it was away (library preloaded: the
# launcher restarts it; 018_reaper_not_preloaded.pl covers the other path).
#
# - pg_terminate_backend(reaper): the launcher starts a new one (launcher_interval
#   is 2 s); a session-bound worker killed while no reaper ran is released by
#   the new reaper (its event is later than the new reaper's start);
# - SIGKILL of the reaper with restart_after_crash = on: the postmaster resets
#   the cluster, the launcher starts a new reaper, and the worker whose session
#   the crash ended is released;
# - server restart (immediate, then fast): a new reaper without any heartbeat,
#   releasing a session-bound worker (its session ended with the server) and
#   workers whose 2 s dead_after ran out while the server was down;
# - reaper_status() shows the pid, state, last pass and counters throughout.
use strict;
use warnings;
use Time::HiRes qw(time usleep);
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('restart');
$node->init;
$node->append_conf('postgresql.conf', q{
shared_preload_libraries = 'worker_heartbeat'
max_worker_processes = 16
restart_after_crash = on
worker_heartbeat.reap_interval = '200ms'
worker_heartbeat.launcher_interval = '2s'
});
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
	SELECT pm_pipeline.set_worker_type_dead_after('fast', '2 seconds');
});

my $reaper_sql = q{SELECT pid FROM pg_stat_activity
	WHERE backend_type = 'worker_heartbeat reaper' AND datname = 'postgres'};

sub wait_for_reaper
{
	my ($not_pid, $what) = @_;
	my $t0 = time;
	my $ok = $node->poll_query_until('postgres', qq{
		SELECT count(*) = 1 AND bool_and(a.pid <> $not_pid AND a.pid = s.pid AND s.passes > 0)
		  FROM pg_stat_activity a, pm_pipeline.reaper_status() s
		 WHERE a.backend_type = 'worker_heartbeat reaper' AND a.datname = 'postgres'
		   AND s.database = 'postgres'});
	ok($ok, "$what: a new reaper runs and has made a pass");
	my $pid = $node->safe_psql('postgres', $reaper_sql);
	diag(sprintf("%s: new reaper (pid %s) after %.1f s", $what, $pid, time - $t0));
	return $pid;
}

# A session-bound worker (a psql process) that holds row $row.
sub bound_worker
{
	my ($id, $row) = @_;
	my $client = $node->background_psql('postgres');
	$client->query_safe(qq{
		SELECT pm_pipeline.upsert_worker_heartbeat('$id', 'slow', 'processing', p_session_bound => true);
		UPDATE app.queue SET state = 'claimed', claimed_by = '$id',
		       lease_expires_at = now() + interval '1 hour' WHERE id = $row;
	});
	return $client;
}

sub released_by_new_reaper
{
	my ($id, $row, $what) = @_;
	ok( $node->poll_query_until('postgres',
			"SELECT claimed_by IS NULL AND state = 'pending' FROM app.queue WHERE id = $row"),
		"$what: lease of $id released");
	is( $node->safe_psql('postgres', qq{
			SELECT w.status || ':' || w.death_cause || ':' || (e.occurred_at >= s.started_at)
			  FROM pm_pipeline.worker_heartbeats w
			  JOIN pm_pipeline.worker_events e ON e.worker_id = w.worker_id AND e.event = 'leases_released',
			       pm_pipeline.reaper_status() s
			 WHERE w.worker_id = '$id' AND s.database = 'postgres'}),
		'dead:session_ended:true', "$what: $id dead (session_ended), released by the new reaper");
}

ok($node->poll_query_until('postgres', "SELECT count(*) = 1 FROM ($reaper_sql) r"), 'the launcher started the reaper');
my $pid1 = $node->safe_psql('postgres', $reaper_sql);
ok( $node->poll_query_until('postgres', q{
		SELECT pid IS NOT NULL AND state IN ('idle', 'reaping') AND started_at IS NOT NULL
		   AND last_pass_at IS NOT NULL AND last_pass_ms >= 0 AND passes > 0 AND last_error IS NULL
		  FROM pm_pipeline.reaper_status() WHERE database = 'postgres'}),
	'reaper_status(): pid, state, start, last pass and its duration, pass count');
is($node->safe_psql('postgres', "SELECT pid FROM pm_pipeline.reaper_status() WHERE database = 'postgres'"),
	$pid1, 'reaper_status() and pg_stat_activity name the same pid');
is( $node->safe_psql('postgres', "SELECT application_name FROM pg_stat_activity WHERE pid = $pid1"),
	'worker_heartbeat reaper', 'application_name is worker_heartbeat reaper too');

# --- pg_terminate_backend ----------------------------------------------------------
my $victim_a = bound_worker('victim-a', 1);
$node->safe_psql('postgres', "SELECT pg_terminate_backend($pid1)");
ok( $node->poll_query_until('postgres',
		"SELECT pid IS NULL FROM pm_pipeline.reaper_status() WHERE database = 'postgres'"),
	'terminated: the reaper left its slot');
$victim_a->{run}->signal('KILL');
eval { $victim_a->{run}->finish };
# While no reaper runs, nobody releases the lease (unless the launcher was quick).
my $gap = $node->safe_psql('postgres', qq{
	SELECT (SELECT count(*) FROM ($reaper_sql) r) || ':' || coalesce(claimed_by, '<none>')
	  FROM app.queue WHERE id = 1});
note "right after the kill: reapers:holder = $gap";
my $pid2 = wait_for_reaper($pid1, 'pg_terminate_backend');
released_by_new_reaper('victim-a', 1, 'pg_terminate_backend');
ok($node->log_contains(qr/worker_heartbeat reaper.*terminating background worker|terminating background worker "worker_heartbeat reaper/),
	'the log says the reaper was terminated');

# --- SIGKILL: crash and reset ------------------------------------------------------
my $victim_b = bound_worker('victim-b', 2);
my $log_offset = -s $node->logfile;
kill 'KILL', $pid2;
# The crash ends every session, the victim's among them.
eval { $victim_b->{run}->finish };
ok($node->poll_query_until('postgres', 'SELECT 1', '1'), 'SIGKILL: the server is back after the crash reset');
ok($node->log_contains(qr/terminated by signal 9/, $log_offset), 'the log shows the crash of the reaper');
my $pid3 = wait_for_reaper($pid2, 'SIGKILL');
released_by_new_reaper('victim-b', 2, 'SIGKILL');

# --- server restart ------------------------------------------------------------------
my $victim_c = bound_worker('victim-c', 3);
$node->safe_psql('postgres', q{
	SELECT pm_pipeline.upsert_worker_heartbeat('silent', 'fast', 'processing');
	UPDATE app.queue SET state = 'claimed', claimed_by = 'silent',
	       lease_expires_at = now() + interval '1 hour' WHERE id = 4;
});
my $t_silent = time;
# Immediate: no session gets to tell the old reaper that it ended (with a
# fast shutdown the old reaper may still release victim-c on its way out).
$node->stop('immediate');
eval { $victim_c->{run}->finish };
# Let the silent worker's 2 s run out while the server is down.
usleep(100_000) while time - $t_silent < 2.5;
$node->start;
my $pid4 = wait_for_reaper($pid3, 'server restart');
released_by_new_reaper('victim-c', 3, 'server restart');
ok($node->poll_query_until('postgres', "SELECT claimed_by IS NULL FROM app.queue WHERE id = 4"),
	"server restart: the lease of the worker that went silent before it is released");
is($node->safe_psql('postgres', "SELECT status || ':' || death_cause FROM pm_pipeline.worker_heartbeats WHERE worker_id = 'silent'"),
	'dead:heartbeat_timeout', 'server restart: the silent worker died of heartbeat_timeout');

is( $node->safe_psql('postgres', q{
		SELECT (workers_declared_dead >= 2) || ':' || (leases_released >= 2) || ':' || (passes > 0)
		  FROM pm_pipeline.reaper_status() WHERE database = 'postgres'}),
	'true:true:true', 'reaper_status() counts the deaths and releases since the server started');

# A clean (fast) restart: the deadline of a silent worker passes while the
# server is down; the new reaper declares it dead.
$node->safe_psql('postgres', q{
	SELECT pm_pipeline.upsert_worker_heartbeat('silent-2', 'fast', 'processing');
	UPDATE app.queue SET state = 'claimed', claimed_by = 'silent-2',
	       lease_expires_at = now() + interval '1 hour' WHERE id = 5;
});
$t_silent = time;
$node->stop('fast');
usleep(100_000) while time - $t_silent < 2.5;
$node->start;
my $pid5 = wait_for_reaper($pid4, 'fast restart');
ok($node->poll_query_until('postgres', "SELECT claimed_by IS NULL FROM app.queue WHERE id = 5"),
	'fast restart: the lease of the worker that went silent is released');
is( $node->safe_psql('postgres', q{
		SELECT w.status || ':' || w.death_cause || ':' || (w.died_at >= s.started_at)
		  FROM pm_pipeline.worker_heartbeats w, pm_pipeline.reaper_status() s
		 WHERE w.worker_id = 'silent-2' AND s.database = 'postgres'}),
	'dead:heartbeat_timeout:true', 'fast restart: declared dead by the new reaper');
is($node->safe_psql('postgres', "SELECT count(*) FROM ($reaper_sql) r"), '1', 'still exactly one reaper');
ok(!$node->log_contains(qr/pass failed/), 'no pass failed along the way');

$node->stop;
done_testing();
