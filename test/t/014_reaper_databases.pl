# Several databases, preloaded: one reaper per database that has the extension,
# none elsewhere, never two.
#
# - 'jobs' has the extension, 'plain' and 'postgres' do not: exactly one reaper
#   (backend_type 'worker_heartbeat reaper'), connected to 'jobs', and one
#   launcher connected to no database; the launcher keeps looking (500 ms) and
#   never leaves a reaper in the other databases;
# - it works in its database (a killed session-bound worker is released) and
#   reaper_status() names it;
# - start_reaper() twice: false both times, still one;
# - CREATE DATABASE + CREATE EXTENSION without a restart: a second reaper, in
#   the new database; a server restart followed by heartbeats from many
#   sessions at once in both databases: still one per database.
use strict;
use warnings;
use Time::HiRes qw(time usleep);
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('databases');
$node->init;
$node->append_conf('postgresql.conf', q{
shared_preload_libraries = 'worker_heartbeat'
max_worker_processes = 16
max_connections = 40
worker_heartbeat.reap_interval = '200ms'
worker_heartbeat.launcher_interval = '500ms'
});
$node->start;

my $setup = q{
	CREATE SCHEMA pm_pipeline;
	CREATE EXTENSION worker_heartbeat SCHEMA pm_pipeline;
	CREATE TABLE public.queue (id int PRIMARY KEY, state text NOT NULL DEFAULT 'pending',
	                           claimed_by text, lease_expires_at timestamptz);
	CREATE INDEX ON public.queue (claimed_by);
	CREATE INDEX ON public.queue (lease_expires_at);
	INSERT INTO public.queue (id) SELECT g FROM generate_series(1, 10) g;
	SELECT pm_pipeline.register_lease_table('public.queue', p_on_release => '{"state": "pending"}');
};
$node->safe_psql('postgres', 'CREATE DATABASE jobs');
$node->safe_psql('postgres', 'CREATE DATABASE plain');
$node->safe_psql('plain', 'CREATE TABLE t (x int)');
$node->safe_psql('jobs', $setup);

my $per_db = q{SELECT coalesce(string_agg(datname || '=' || n, ',' ORDER BY datname), '')
	FROM (SELECT datname, count(*) AS n FROM pg_stat_activity
	       WHERE backend_type = 'worker_heartbeat reaper' GROUP BY datname) r};

ok($node->poll_query_until('postgres', $per_db, 'jobs=1'), 'one reaper, in the database with the extension');
# The launcher looks every 500 ms; over 2 s (four looks) no other reaper stays.
my $other_seen = 0;
my $t0 = time;
while (time - $t0 < 2)
{
	my $now = $node->safe_psql('postgres', $per_db);
	$other_seen++ if $now ne 'jobs=1';
	usleep(100_000);
}
note "samples with another reaper (a look that exits at once): $other_seen";
is($node->safe_psql('postgres', $per_db), 'jobs=1', 'after several launcher rounds: still one, in jobs');
is( $node->safe_psql('postgres', q{
		SELECT count(*) || ':' || count(datname) FROM pg_stat_activity WHERE backend_type = 'worker_heartbeat launcher'}),
	'1:0', 'one launcher, connected to no database');
is( $node->safe_psql('postgres', q{
		SELECT application_name FROM pg_stat_activity WHERE backend_type = 'worker_heartbeat reaper'}),
	'worker_heartbeat reaper', 'application_name of the reaper');
my $reaper = $node->safe_psql('postgres',
	"SELECT pid FROM pg_stat_activity WHERE backend_type = 'worker_heartbeat reaper' AND datname = 'jobs'");
is( $node->safe_psql('jobs', "SELECT database || ':' || pid FROM pm_pipeline.reaper_status() WHERE pid IS NOT NULL"),
	"jobs:$reaper", 'reaper_status() names the database and the pid');

# It works in its database.
my $client = $node->background_psql('jobs');
$client->query_safe(q{
	SELECT pm_pipeline.upsert_worker_heartbeat('victim', 'w', 'processing', p_session_bound => true);
	UPDATE public.queue SET state = 'claimed', claimed_by = 'victim', lease_expires_at = now() + interval '1 hour'
	 WHERE id = 1;
});
$client->{run}->signal('KILL');
eval { $client->{run}->finish };
ok($node->poll_query_until('jobs', "SELECT claimed_by IS NULL AND state = 'pending' FROM public.queue WHERE id = 1"),
	'the reaper released the lease of a killed session-bound worker in jobs');

is($node->safe_psql('jobs', 'SELECT pm_pipeline.start_reaper()'), 'f', 'start_reaper() while it runs: false');
is($node->safe_psql('jobs', 'SELECT pm_pipeline.start_reaper()'), 'f', 'start_reaper() again: false');
is($node->safe_psql('postgres', $per_db), 'jobs=1', 'still one reaper');
is( $node->safe_psql('postgres',
		"SELECT pid FROM pg_stat_activity WHERE backend_type = 'worker_heartbeat reaper' AND datname = 'jobs'"),
	$reaper, 'the same one');

# A new database with the extension, no restart.
$node->safe_psql('postgres', 'CREATE DATABASE more_jobs');
$node->safe_psql('more_jobs', $setup);
ok($node->poll_query_until('postgres', $per_db, 'jobs=1,more_jobs=1'), 'CREATE DATABASE + CREATE EXTENSION: a reaper there too');
$node->safe_psql('more_jobs', q{
	SELECT pm_pipeline.set_worker_type_dead_after('fast', '1 second');
	SELECT pm_pipeline.upsert_worker_heartbeat('silent', 'fast', 'processing');
	UPDATE public.queue SET state = 'claimed', claimed_by = 'silent', lease_expires_at = now() + interval '1 hour'
	 WHERE id = 1;
});
ok($node->poll_query_until('more_jobs', "SELECT claimed_by IS NULL FROM public.queue WHERE id = 1"),
	'the reaper of more_jobs releases a silent worker there');
is($node->safe_psql('jobs', "SELECT count(*) FROM pm_pipeline.worker_heartbeats WHERE worker_id = 'silent'"),
	'0', '... and nothing of it reached jobs');

# Restart, then many sessions heartbeat at once in both databases.
$node->restart;
my @sessions;
for my $i (1 .. 6)
{
	for my $db ('jobs', 'more_jobs')
	{
		push @sessions, $node->background_psql($db, wait => 0);
		$sessions[-1]->{stdin} .= "SELECT pm_pipeline.upsert_worker_heartbeat('w$i', 'w');\n";
	}
}
$_->{run}->pump_nb for @sessions;
ok($node->poll_query_until('postgres', $per_db, 'jobs=1,more_jobs=1'), 'after a restart and a burst of heartbeats: one per database');
my $t1 = time;
my $extra = 0;
while (time - $t1 < 1.5)
{
	$extra++ if $node->safe_psql('postgres', $per_db) ne 'jobs=1,more_jobs=1';
	usleep(100_000);
}
is($extra, 0, 'and it stays so (sampled for 1.5 s)');
ok( $node->poll_query_until('jobs',
		'SELECT count(*) FROM pm_pipeline.worker_heartbeats WHERE worker_id ~ $$^w[0-9]$$', '6'),
	'the burst of heartbeats landed');
$_->quit for @sessions;
ok(!$node->log_contains(qr/pass failed|was terminated by signal/), 'no failed pass, no crash');

$node->stop;
done_testing();
