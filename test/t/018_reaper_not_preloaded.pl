# Without shared_preload_libraries (hosted PostgreSQL): no launcher; the
# reaper is started by CREATE EXTENSION, start_reaper() and heartbeats.
#
# - CREATE EXTENSION starts it; start_reaper() twice: false, one reaper;
# - stop_reaper(): it exits and heartbeats do not bring it back; the pg_cron
#   path release_dead_worker_leases() still works; start_reaper() restarts it;
# - pg_terminate_backend: nothing restarts it by itself (no launcher), the next
#   heartbeat does, and the new reaper releases a session-bound worker killed
#   in between;
# - SIGKILL with restart_after_crash: same, after the crash reset;
# - server restart: no reaper until a heartbeat; then twelve sessions heartbeat
#   at once: exactly one reaper, and it releases the worker whose session the
#   restart ended.
use strict;
use warnings;
use Time::HiRes qw(time usleep);
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('not_preloaded');
$node->init;
$node->append_conf('postgresql.conf', q{
max_worker_processes = 16
max_connections = 40
restart_after_crash = on
worker_heartbeat.reap_interval = '200ms'
});
$node->start;
$node->safe_psql('postgres', q{
	CREATE SCHEMA pm_pipeline;
	CREATE EXTENSION worker_heartbeat SCHEMA pm_pipeline;
	CREATE TABLE public.queue (id int PRIMARY KEY, state text NOT NULL DEFAULT 'pending',
	                           claimed_by text, lease_expires_at timestamptz);
	CREATE INDEX ON public.queue (claimed_by);
	CREATE INDEX ON public.queue (lease_expires_at);
	INSERT INTO public.queue (id) SELECT g FROM generate_series(1, 10) g;
	SELECT pm_pipeline.register_lease_table('public.queue', p_on_release => '{"state": "pending"}');
	SELECT pm_pipeline.set_worker_type_dead_after('fast', '1 second');
});

my $count_sql = "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'worker_heartbeat reaper'";
my $pid_sql = "SELECT pid FROM pg_stat_activity WHERE backend_type = 'worker_heartbeat reaper'";

sub reaper_up { return $node->poll_query_until('postgres', "SELECT ($count_sql) = 1"); }

# No reaper, and none appears for $seconds (nothing else is done meanwhile).
sub stays_down
{
	my ($seconds, $what) = @_;
	ok($node->poll_query_until('postgres', "SELECT ($count_sql) = 0"), "$what: no reaper");
	my $seen = 0;
	my $t0 = time;
	while (time - $t0 < $seconds)
	{
		$seen++ if $node->safe_psql('postgres', $count_sql) ne '0';
		usleep(100_000);
	}
	is($seen, 0, "$what: and none comes back by itself (sampled for $seconds s)");
}

sub bound_worker
{
	my ($id, $row) = @_;
	my $client = $node->background_psql('postgres');
	$client->query_safe(qq{
		SELECT pm_pipeline.upsert_worker_heartbeat('$id', 'w', 'processing', p_session_bound => true);
		UPDATE public.queue SET state = 'claimed', claimed_by = '$id',
		       lease_expires_at = now() + interval '1 hour' WHERE id = $row;
	});
	return $client;
}

sub kill_client
{
	my ($client) = @_;
	$client->{run}->signal('KILL');
	eval { $client->{run}->finish };
}

sub released
{
	my ($id, $row, $what) = @_;
	ok($node->poll_query_until('postgres', "SELECT claimed_by IS NULL AND state = 'pending' FROM public.queue WHERE id = $row"),
		"$what: lease of $id released");
	is( $node->safe_psql('postgres', qq{
			SELECT w.status || ':' || w.death_cause || ':' || (w.died_at >= s.started_at)
			  FROM pm_pipeline.worker_heartbeats w, pm_pipeline.reaper_status() s
			 WHERE w.worker_id = '$id' AND s.database = 'postgres'}),
		'dead:session_ended:true', "$what: $id declared dead by the new reaper");
}

ok(reaper_up(), 'CREATE EXTENSION started the reaper');
is($node->safe_psql('postgres', "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'worker_heartbeat launcher'"),
	'0', 'no launcher without preload');
my $pid = $node->safe_psql('postgres', $pid_sql);
is($node->safe_psql('postgres', 'SELECT pm_pipeline.start_reaper()'), 'f', 'start_reaper() while it runs: false');
is($node->safe_psql('postgres', 'SELECT pm_pipeline.start_reaper()'), 'f', 'start_reaper() again: false');
is($node->safe_psql('postgres', $pid_sql), $pid, 'still the one reaper');

# --- stop_reaper / start_reaper ---------------------------------------------------
is($node->safe_psql('postgres', 'SELECT pm_pipeline.stop_reaper()'), 't', 'stop_reaper(): true');
is($node->safe_psql('postgres', q{SELECT state || ':' || (pid IS NULL) FROM pm_pipeline.reaper_status()}),
	'stopped:true', 'reaper_status(): stopped, no pid');
$node->safe_psql('postgres', q{
	SELECT pm_pipeline.upsert_worker_heartbeat('silent', 'fast', 'processing');
	UPDATE public.queue SET state = 'claimed', claimed_by = 'silent', lease_expires_at = now() + interval '1 hour'
	 WHERE id = 9;
});
stays_down(1.5, 'stopped, then a heartbeat');
is($node->safe_psql('postgres', "SELECT claimed_by FROM public.queue WHERE id = 9"), 'silent',
	'stopped: nobody released the silent worker');
is($node->safe_psql('postgres', 'SELECT pm_pipeline.release_dead_worker_leases()'), '1',
	'release_dead_worker_leases() (the pg_cron path) releases it');
is($node->safe_psql('postgres', 'SELECT pm_pipeline.start_reaper()'), 't', 'start_reaper(): true');
ok(reaper_up(), 'the reaper runs again');

# --- pg_terminate_backend ------------------------------------------------------------
$pid = $node->safe_psql('postgres', $pid_sql);
my $victim = bound_worker('victim-term', 1);
$node->safe_psql('postgres', "SELECT pg_terminate_backend($pid)");
kill_client($victim);
stays_down(1.5, 'terminated');
is($node->safe_psql('postgres', "SELECT claimed_by FROM public.queue WHERE id = 1"), 'victim-term',
	'terminated: the killed worker keeps its lease while no reaper runs');
$node->safe_psql('postgres', "SELECT pm_pipeline.upsert_worker_heartbeat('someone', 'w')");
ok(reaper_up(), 'terminated: the next heartbeat started a reaper');
released('victim-term', 1, 'terminated');

# --- SIGKILL: crash reset ----------------------------------------------------------------
$pid = $node->safe_psql('postgres', $pid_sql);
$victim = bound_worker('victim-crash', 2);
kill 'KILL', $pid;
eval { $victim->{run}->finish };
ok($node->poll_query_until('postgres', 'SELECT 1', '1'), 'SIGKILL: the server is back after the crash reset');
stays_down(1.5, 'after the crash');
$node->safe_psql('postgres', "SELECT pm_pipeline.upsert_worker_heartbeat('someone', 'w')");
ok(reaper_up(), 'after the crash: the next heartbeat started a reaper');
released('victim-crash', 2, 'after the crash');

# --- server restart, then a burst of heartbeats ----------------------------------------------
$victim = bound_worker('victim-restart', 3);
$node->stop('immediate');
eval { $victim->{run}->finish };
$node->start;
stays_down(1.5, 'after a restart');
my @sessions;
for my $i (1 .. 12)
{
	push @sessions, $node->background_psql('postgres', wait => 0);
	$sessions[-1]->{stdin} .= "SELECT pm_pipeline.upsert_worker_heartbeat('burst-$i', 'w');\n";
}
$_->{run}->pump_nb for @sessions;
ok(reaper_up(), 'after a restart: the burst of heartbeats started a reaper');
my $extra = 0;
my $t0 = time;
while (time - $t0 < 1.5)
{
	$extra++ if $node->safe_psql('postgres', $count_sql) ne '1';
	usleep(100_000);
}
is($extra, 0, 'exactly one reaper (sampled for 1.5 s)');
ok($node->poll_query_until('postgres', q{SELECT count(*) = 12 FROM pm_pipeline.worker_heartbeats WHERE worker_id LIKE 'burst-%'}),
	'every heartbeat of the burst landed');
released('victim-restart', 3, 'after a restart');
$_->quit for @sessions;
ok(!$node->log_contains(qr/pass failed|server process .* was terminated by signal 11/), 'no failed pass, no segfault');

$node->stop;
done_testing();
