# Issue 18, idle cost: a database served in rotation is visited when a lease
# in it expires, not only every pool_visit_interval (here 1 h), so that an
# idle server needs no periodic visits and a lease still comes back.
#
# Preloaded, max_reapers = 1, three databases (a, b, c): each is served in
# rotation, its reaper leaves 5 s after its last work.
# - a: a live worker (dead_after 1 h) claims a 3 s lease with claim_leases()
#   while no reaper runs: the claim's commit puts the expiry in a's registry
#   slot and the launcher starts a reaper then; the lease is back within a few
#   seconds of its expiry (on 8a31265, before this: only at the next visit,
#   here 288 s later, when a death check for w1 came due; test 7 failed).
# - b: a lease set by a plain SQL UPDATE (the seed's style) that a reaper's
#   last pass saw before leaving: visited at its expiry too.
# - while nothing is due, no reaper starts at all (the idle cost is the
#   launcher alone), and no database is ever 'waiting for a reaper slot'.
# - a lease set by a plain UPDATE while no reaper runs is invisible until the
#   next visit: start_reaper() (or any visit) releases it (documented in
#   docs/scaleout.md).
use strict;
use warnings;
use Time::HiRes qw(time usleep);
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('rotation_leases');
$node->init;
$node->append_conf('postgresql.conf', q{
shared_preload_libraries = 'worker_heartbeat'
max_worker_processes = 8
worker_heartbeat.max_reapers = 1
worker_heartbeat.reap_interval = '200ms'
worker_heartbeat.launcher_interval = '500ms'
worker_heartbeat.pool_visit_interval = '1h'
});
$node->start;

my $setup = q{
	CREATE SCHEMA wh;
	CREATE EXTENSION worker_heartbeat SCHEMA wh;
	CREATE TABLE public.jobs (id int PRIMARY KEY, state text NOT NULL DEFAULT 'pending',
	                          worker_id text, lease_expires_at timestamptz, lease_token bigint, attempts int);
	CREATE INDEX ON public.jobs (lease_expires_at);
	INSERT INTO public.jobs (id) SELECT g FROM generate_series(1, 5) g;
	SELECT register_lease_table('public.jobs', 'worker_id', 'lease_expires_at', '{"state": "pending"}',
	                            p_token_column => 'lease_token', p_attempts_column => 'attempts');
	SELECT set_worker_type_dead_after('slow', '1 hour');
};
for my $db (qw(a b c))
{
	$node->safe_psql('postgres', "CREATE DATABASE $db");
	$node->safe_psql('postgres', "ALTER DATABASE $db SET search_path = wh, public");
	$node->safe_psql($db, $setup);
}
my $reaper_of = sub {
	my ($db) = @_;
	return qq{SELECT coalesce(pid::text, 'none') || ':' || state FROM reaper_status() WHERE database = '$db'};
};
my $no_reaper = q{SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'worker_heartbeat reaper'};

# A live worker in a: its beat pulls a's death check in; the visit that comes
# for it sees dead_after 1 h and leaves.
$node->safe_psql('a', q{SELECT upsert_worker_heartbeat('w1', 'slow', 'processing')});
ok($node->poll_query_until('postgres', $no_reaper, '0'), 'every pooled reaper left (nothing to do)');
is($node->safe_psql('a', $reaper_of->('a')), 'none:scheduled', "a: served in rotation, 'scheduled'");

# Nothing due: no reaper starts (a measurement window, not a wait for an effect).
my $started = q{SELECT string_agg(coalesce(started_at::text, '-'), ',' ORDER BY database) FROM reaper_status()};
my $before = $node->safe_psql('a', $started);
my $starts_seen = 0;
my $t0 = time;
while (time - $t0 < 4)
{
	$starts_seen++ if $node->safe_psql('postgres', $no_reaper) ne '0';
	usleep(100_000);
}
is($starts_seen, 0, 'nothing due: no reaper started for 4 s (pool_visit_interval 1 h)');
is($node->safe_psql('a', $started), $before, '... and no database was visited');

# a: claim_leases() while no reaper runs.
my $t_claim = time;
is( $node->safe_psql('a', q{SELECT count(*) FROM claim_leases(NULL::public.jobs, 'w1', 1, '3 seconds')}),
	'1', 'a: claim_leases() takes a 3 s lease');
ok( $node->poll_query_until('a', 'SELECT count(*) FROM public.jobs WHERE worker_id IS NOT NULL', '0'),
	'a: the claimed lease comes back after it expired, without a pool visit');
my $a_latency = time - $t_claim;
note sprintf('a: lease of 3 s claimed with claim_leases() released %.2f s after the claim', $a_latency);
cmp_ok($a_latency, '<', 3 + 30, 'a: released long before pool_visit_interval (1 h)');
is( $node->safe_psql('a', q{SELECT state || ':' || attempts FROM public.jobs WHERE lease_token IS NULL AND attempts = 1}),
	'pending:1', 'a: released as registered (state pending, attempts kept)');

# b: a plain UPDATE, seen by the last pass of a reaper started for it.
ok($node->poll_query_until('postgres', $no_reaper, '0'), 'no reaper runs');
$node->safe_psql('b', q{SELECT upsert_worker_heartbeat('w2', 'slow', 'processing')});
$node->safe_psql('b', q{UPDATE public.jobs SET worker_id = 'w2', lease_expires_at = now() + interval '20 seconds' WHERE id = 1});
my $t_update = time;
$node->safe_psql('b', 'SELECT start_reaper()');    # a visit now: its passes see the lease
ok($node->poll_query_until('postgres', $no_reaper, '0'), 'b: its reaper left with the lease still held');
my $left_after = time - $t_update;
SKIP:
{
	skip sprintf('the reaper of b left only %.1f s after the UPDATE (machine too loaded)', $left_after), 3
	  if $left_after > 18;
	is($node->safe_psql('b', 'SELECT worker_id FROM public.jobs WHERE id = 1'), 'w2', 'b: held when its reaper left');
	ok( $node->poll_query_until('b', 'SELECT worker_id IS NULL FROM public.jobs WHERE id = 1', 't'),
		'b: a lease set by a plain UPDATE that a pass saw comes back at its expiry');
	my $b_latency = time - $t_update;
	note sprintf('b: 20 s lease set by UPDATE released %.2f s after the UPDATE', $b_latency);
	cmp_ok($b_latency, '<', 20 + 30, 'b: released at its expiry, long before pool_visit_interval (1 h)');
}

# c: a plain UPDATE while no reaper runs: invisible until a visit.
ok($node->poll_query_until('postgres', $no_reaper, '0'), 'no reaper runs');
$node->safe_psql('c', q{SELECT upsert_worker_heartbeat('w3', 'slow', 'processing')});
ok($node->poll_query_until('postgres', $no_reaper, '0'), 'c: visited for the new worker, left');
$node->safe_psql('c', q{UPDATE public.jobs SET worker_id = 'w3', lease_expires_at = now() - interval '1 second' WHERE id = 1});
$node->safe_psql('c', 'SELECT start_reaper()');
ok( $node->poll_query_until('c', 'SELECT worker_id IS NULL FROM public.jobs WHERE id = 1', 't'),
	'c: an expired lease set by UPDATE behind our back is released by the next visit (start_reaper())');

is( $node->safe_psql('a', q{SELECT count(*) FROM reaper_status() WHERE state = 'waiting for a reaper slot'}),
	'0', "no database 'waiting for a reaper slot'");
$node->stop;
done_testing();
