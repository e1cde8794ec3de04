# Hot standby: no reaper runs there and nothing is written; after promotion the
# reaper starts and catches up.
#
# On the primary (preloaded) the reaper is stopped with stop_reaper() (shared
# memory, not replicated), then a worker of a type whose dead_after is 2 s
# heartbeats once and takes a lease. Two streaming standbys replay it: one
# preloaded, one not. While they are standbys, the worker's 2 s run out: no
# reaper or launcher shows up in pg_stat_activity, reaper_status() lists no
# reaper, start_reaper() and release_dead_worker_leases() are refused with a
# clear error, and the row is unchanged. After promote:
# - preloaded: the launcher starts a reaper by itself, which declares the
#   worker dead and releases its lease;
# - not preloaded: nothing runs until a heartbeat arrives; that heartbeat
#   starts the reaper, which then releases the lease.
use strict;
use warnings;
use Time::HiRes qw(time usleep);
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $conf = q{
max_worker_processes = 16
worker_heartbeat.reap_interval = '200ms'
worker_heartbeat.launcher_interval = '500ms'
};

my $primary = PostgreSQL::Test::Cluster->new('primary');
$primary->init(allows_streaming => 1);
$primary->append_conf('postgresql.conf', $conf . "shared_preload_libraries = 'worker_heartbeat'\n");
$primary->start;
$primary->safe_psql('postgres', q{
	CREATE SCHEMA pm_pipeline;
	CREATE EXTENSION worker_heartbeat SCHEMA pm_pipeline;
	CREATE SCHEMA app;
	CREATE TABLE app.queue (id int PRIMARY KEY, state text NOT NULL DEFAULT 'pending',
	                        claimed_by text, lease_expires_at timestamptz);
	INSERT INTO app.queue (id) SELECT g FROM generate_series(1, 3) g;
	SELECT pm_pipeline.register_lease_table('app.queue', p_on_release => '{"state": "pending"}');
	SELECT pm_pipeline.set_worker_type_dead_after('fast', '2 seconds');
});
ok($primary->poll_query_until('postgres',
		"SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'worker_heartbeat reaper'"),
	'primary: the reaper runs');
is($primary->safe_psql('postgres', 'SELECT pm_pipeline.stop_reaper()'), 't', 'primary: reaper stopped');
$primary->safe_psql('postgres', q{
	SELECT pm_pipeline.upsert_worker_heartbeat('orphan', 'fast', 'processing');
	UPDATE app.queue SET state = 'claimed', claimed_by = 'orphan',
	       lease_expires_at = now() + interval '1 hour' WHERE id = 1;
});
my $t_beat = time;

$primary->backup('base');
my %standby;
for my $preload (1, 0)
{
	my $name = $preload ? 'standby_preloaded' : 'standby_on_demand';
	my $s = PostgreSQL::Test::Cluster->new($name);
	$s->init_from_backup($primary, 'base', has_streaming => 1);
	$s->adjust_conf('postgresql.conf', 'shared_preload_libraries', "''") unless $preload;
	$s->start;
	$standby{$preload} = $s;
}
$primary->wait_for_catchup($_, 'replay') for values %standby;

# The orphan's 2 s run out while they are standbys.
usleep(100_000) while time - $t_beat < 2.5;

for my $preload (1, 0)
{
	my $s = $standby{$preload};
	my $mode = $preload ? 'preloaded standby' : 'standby, not preloaded';
	is($s->safe_psql('postgres', 'SELECT pg_is_in_recovery()'), 't', "$mode: in recovery");
	is( $s->safe_psql('postgres', q{
			SELECT count(*) FROM pg_stat_activity WHERE backend_type LIKE 'worker_heartbeat%'}),
		'0', "$mode: no reaper and no launcher in pg_stat_activity");
	is($s->safe_psql('postgres', 'SELECT count(pid) FROM pm_pipeline.reaper_status()'),
		'0', "$mode: reaper_status() lists no running reaper");
	my ($rc, $out, $err) = $s->psql('postgres', 'SELECT pm_pipeline.start_reaper()');
	like($err, qr/the reaper does not run on a standby/, "$mode: start_reaper() is refused with a clear message");
	($rc, $out, $err) = $s->psql('postgres', 'SELECT pm_pipeline.release_dead_worker_leases()');
	isnt($rc, 0, "$mode: release_dead_worker_leases() fails");
	my ($first) = $err =~ /(ERROR:[^\n]*)/;
	like($err, qr/read-only|recovery/, "$mode: ... because the server is read-only (" . ($first // $err) . ')');
	($rc, $out, $err) = $s->psql('postgres',
		"SELECT pm_pipeline.upsert_worker_heartbeat('w-standby', 'fast')");
	like($err, qr/read-only|recovery/, "$mode: a heartbeat is refused as read-only");
	is( $s->safe_psql('postgres', q{
			SELECT w.status || ':' || q.claimed_by FROM pm_pipeline.worker_heartbeats w, app.queue q
			 WHERE w.worker_id = 'orphan' AND q.id = 1}),
		'processing:orphan', "$mode: the overdue worker and its lease are as the primary left them");
	# Silence counts from the later of the last beat and this server's start
	# (a standby started after the beat gives the worker its dead_after again).
	ok( $s->poll_query_until('postgres',
			"SELECT count(*) = 1 FROM pm_pipeline.v_dead_workers WHERE worker_id = 'orphan'"),
		"$mode: the view shows it dead (computed, not written)");
}

# The old primary goes away; each standby becomes a primary of its own.
$primary->stop;

my $p = $standby{1};
$p->promote;
ok( $p->poll_query_until('postgres',
		"SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'worker_heartbeat reaper'"),
	'promoted (preloaded): the launcher started a reaper');
ok($p->poll_query_until('postgres', "SELECT claimed_by IS NULL AND state = 'pending' FROM app.queue WHERE id = 1"),
	'promoted (preloaded): the orphan lease is released');
is($p->safe_psql('postgres', "SELECT status || ':' || death_cause FROM pm_pipeline.worker_heartbeats WHERE worker_id = 'orphan'"),
	'dead:heartbeat_timeout', 'promoted (preloaded): orphan declared dead');

my $q = $standby{0};
$q->promote;
ok($q->poll_query_until('postgres', 'SELECT NOT pg_is_in_recovery()'), 'promoted (not preloaded)');
is( $q->safe_psql('postgres',
		"SELECT count(*) FROM pg_stat_activity WHERE backend_type LIKE 'worker_heartbeat%'"),
	'0', 'promoted (not preloaded): no reaper until a worker heartbeats');
$q->safe_psql('postgres', "SELECT pm_pipeline.upsert_worker_heartbeat('first-after-promotion', 'fast')");
ok( $q->poll_query_until('postgres',
		"SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'worker_heartbeat reaper'"),
	'promoted (not preloaded): the heartbeat started a reaper');
ok($q->poll_query_until('postgres', "SELECT claimed_by IS NULL AND state = 'pending' FROM app.queue WHERE id = 1"),
	'promoted (not preloaded): the orphan lease is released');

for my $s ($p, $q)
{
	ok(!$s->log_contains(qr/worker_heartbeat reaper: pass failed|server process .* was terminated by signal/),
		$s->name . ': no failed pass and no crash in the log');
}

$p->stop;
$q->stop;
done_testing();
