# Issue 17 item 1: without shared_preload_libraries, on PostgreSQL 17 and
# later, the heartbeat cache lives in a DSM registry segment (created on first
# use) and an unchanged heartbeat is absorbed there, as when preloaded.
#
# PostgreSQL 17+ (not preloaded):
# - an unchanged beat is absorbed: its transaction gets no xid (writes
#   nothing), the row keeps its xmin until the reaper's flush;
# - a changed beat (another status) is written at once;
# - the reaper flushes absorbed beats: last_heartbeat_at reaches the
#   absorbed beat's time;
# - a worker that keeps beating (absorbed) past its dead_after is not
#   declared dead; a session-bound worker whose client is killed dies of
#   session_ended and its lease comes back; a silent one dies of
#   heartbeat_timeout;
# - SIGKILL of the reaper (crash reset, which empties the cache as it does
#   the preloaded one): the flushed beat is kept, the worker keeps beating
#   without a false death, and the cache absorbs again afterwards;
# - the table full (10000 entries, the not-preloaded capacity): a new worker's
#   unchanged beat goes to the table (an xid, the row updated at once).
# PostgreSQL 15 (no DSM registry): no cache; every beat is written at once and
# deaths are still found.
use strict;
use warnings;
use Time::HiRes qw(time usleep);
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('dsm_cache');
$node->init;
$node->append_conf('postgresql.conf', q{
max_worker_processes = 16
restart_after_crash = on
worker_heartbeat.reap_interval = '200ms'
worker_heartbeat.max_workers_per_role = 0
});
$node->start;
my $major = int($node->safe_psql('postgres', 'SHOW server_version_num') / 10000);
my $dsm = $major >= 17;
note "PostgreSQL $major: " . ($dsm ? 'DSM cache expected' : 'no cache expected (before 17)');

$node->safe_psql('postgres', q{
	CREATE SCHEMA pm;
	CREATE EXTENSION worker_heartbeat SCHEMA pm;
	CREATE TABLE public.queue (id int PRIMARY KEY, state text NOT NULL DEFAULT 'pending',
	                           claimed_by text, lease_expires_at timestamptz);
	CREATE INDEX ON public.queue (claimed_by);
	CREATE INDEX ON public.queue (lease_expires_at);
	INSERT INTO public.queue (id) SELECT g FROM generate_series(1, 10) g;
	SELECT pm.register_lease_table('public.queue', p_on_release => '{"state": "pending"}');
	SELECT pm.set_worker_type_dead_after('fast', '2 seconds');
});
is($node->safe_psql('postgres',
		"SELECT count(*) FROM pg_settings WHERE name = 'shared_preload_libraries' AND setting LIKE '%worker_heartbeat%'"),
	'0', 'the library is not preloaded');

sub reaper_passing
{
	return $node->poll_query_until('postgres', q{
		SELECT pid IS NOT NULL AND passes > 0 AND last_error IS NULL
		  FROM pm.reaper_status() WHERE database = 'postgres'});
}
ok(reaper_passing(), 'the reaper runs (started by CREATE EXTENSION)');

# One beat in its own transaction: "xid:time" (xid: whether the beat's
# transaction was given one, i.e. wrote anything; time: the beat's time).
sub beat
{
	my ($id, %o) = @_;
	my $status = $o{status} // 'processing';
	my $type = $o{type} // 'w';
	my $session = $o{session};
	my $sql = qq{BEGIN;
		SELECT pm.upsert_worker_heartbeat('$id', '$type', '$status');
		SELECT (pg_current_xact_id_if_assigned() IS NOT NULL) || '|' || now()::text;
		COMMIT;};
	my $out = $session ? $session->query_safe($sql) : $node->safe_psql('postgres', $sql);
	my ($line) = grep { /\|/ } split /\n/, $out;
	my ($xid, $at) = split /\|/, $line;
	return ($xid eq 'true', $at);
}

sub row
{
	my ($id, $cols) = @_;
	return $node->safe_psql('postgres', "SELECT $cols FROM pm.worker_heartbeats WHERE worker_id = '$id'");
}

# --- absorbed, written at once, flushed --------------------------------------------
my ($wrote, $t1) = beat('w1');
ok($wrote, 'a new worker is written to the table');
is(row('w1', 'last_heartbeat_at'), row('w1', "'$t1'::timestamptz"), 'its row has the beat');

my ($wrote2, $t2) = beat('w1');
if ($dsm)
{
	ok(!$wrote2, '17+: an unchanged beat, from another session, is absorbed (its transaction writes nothing)');
	ok($node->poll_query_until('postgres',
			"SELECT last_heartbeat_at = '$t2'::timestamptz FROM pm.worker_heartbeats WHERE worker_id = 'w1'"),
		'17+: the reaper flushes the absorbed beat to the table');
	my $xmin = row('w1', 'xmin');
	my ($wrote3) = beat('w1');
	ok(!$wrote3, '17+: the next unchanged beat is absorbed too');
	my ($wrote4, $t4) = beat('w1', status => 'idle');
	ok($wrote4, '17+: a changed beat (status idle) is written');
	is(row('w1', "status || ':' || (last_heartbeat_at = '$t4'::timestamptz) || ':' || (xmin::text <> '$xmin')"),
		'idle:true:true', '17+: ... at once: the row has the new status and time as soon as it commits');
	my ($wrote5) = beat('w1', status => 'idle');
	ok(!$wrote5, '17+: the new arguments are cached: the same beat again is absorbed');
}
else
{
	ok($wrote2, 'before 17: no cache, an unchanged beat is written');
	is(row('w1', 'last_heartbeat_at'), row('w1', "'$t2'::timestamptz"), 'before 17: at once');
}

# --- deaths: a worker that keeps beating lives; session end; timeout ------------------
{
	my $beater = $node->background_psql('postgres');
	my $t0 = time;
	my $absorbed = 0;
	my $n = 0;
	# 'fast' dies after 2 s of silence: beat every ~0.2 s for 4 s.
	while (time - $t0 < 4)
	{
		my ($w) = beat('keeps-beating', type => 'fast', session => $beater);
		$absorbed++ unless $w;
		$n++;
		usleep(200_000);
	}
	$beater->quit;
	note "keeps-beating: $n beats, $absorbed absorbed";
	ok($dsm ? $absorbed >= $n - 2 : $absorbed == 0,
		$dsm ? '17+: its beats were absorbed' : 'before 17: every beat was written');
	is(row('keeps-beating', 'status'), 'processing', 'a worker that keeps beating (absorbed) past its dead_after is alive');
	ok($node->poll_query_until('postgres',
			"SELECT status = 'dead' AND death_cause = 'heartbeat_timeout' FROM pm.worker_heartbeats WHERE worker_id = 'keeps-beating'"),
		'once silent, it dies of heartbeat_timeout');
}

{
	my $client = $node->background_psql('postgres');
	$client->query_safe(q{
		SELECT pm.upsert_worker_heartbeat('bound', 'w', 'processing', p_session_bound => true);
		UPDATE public.queue SET state = 'claimed', claimed_by = 'bound',
		       lease_expires_at = now() + interval '1 hour' WHERE id = 1;
	});
	my $out = $client->query_safe(q{BEGIN;
		SELECT pm.upsert_worker_heartbeat('bound', 'w', 'processing', p_session_bound => true);
		SELECT 'xid=' || (pg_current_xact_id_if_assigned() IS NOT NULL);
		COMMIT;});
	like($out, $dsm ? qr/xid=false/ : qr/xid=true/,
		$dsm ? '17+: the bound worker\'s unchanged beat is absorbed' : 'before 17: written');
	my $t0 = time;
	$client->{run}->signal('KILL');
	eval { $client->{run}->finish };
	ok($node->poll_query_until('postgres', "SELECT claimed_by IS NULL AND state = 'pending' FROM public.queue WHERE id = 1"),
		'its client killed: the lease is released');
	diag(sprintf('session kill -> lease back: %.0f ms (polled)', (time - $t0) * 1000));
	is(row('bound', "status || ':' || death_cause"), 'dead:session_ended', 'the worker died of session_ended');
}

# --- SIGKILL of the reaper ---------------------------------------------------------------
{
	beat('k1');
	my ($w, $tk) = beat('k1');
	ok($dsm ? !$w : $w, 'k1 beats (' . ($dsm ? 'absorbed' : 'written') . ')');
	ok($node->poll_query_until('postgres',
			"SELECT last_heartbeat_at = '$tk'::timestamptz FROM pm.worker_heartbeats WHERE worker_id = 'k1'"),
		'k1\'s beat is in the table (flushed)');
	my $pid = $node->safe_psql('postgres', "SELECT pid FROM pm.reaper_status() WHERE database = 'postgres'");
	my $log_offset = -s $node->logfile;
	kill 'KILL', $pid;
	ok($node->poll_query_until('postgres', 'SELECT 1', '1'), 'SIGKILL of the reaper: the server is back after the crash reset');
	ok($node->log_contains(qr/terminated by signal 9/, $log_offset), 'the log shows the crash');
	is(row('k1', "last_heartbeat_at >= '$tk'::timestamptz"), 't', 'the flushed beat survived the crash');
	# Not preloaded, a heartbeat brings the reaper back; the cache is empty
	# (as the preloaded one would be): the first beat writes the table.
	my ($after) = beat('k1');
	ok($after, 'after the reset the first beat is written (the cache is empty, as when preloaded)');
	ok(reaper_passing(), 'a heartbeat brought a new reaper');
	my ($again) = beat('k1');
	ok($dsm ? !$again : $again, $dsm ? '17+: the new segment absorbs again' : 'before 17: written');
	is(row('k1', 'status'), 'processing', 'k1 is alive');
}

# --- the table full --------------------------------------------------------------------
SKIP:
{
	skip 'the cache exists from PostgreSQL 17 on', 4 unless $dsm;
	# 10000 entries when not preloaded (worker_heartbeat.max_workers's default).
	$node->safe_psql('postgres',
		q{SELECT count(pm.upsert_worker_heartbeat('fill-' || g, 'w', 'processing')) FROM generate_series(1, 10000) g});
	my ($w1) = beat('late-comer');
	ok($w1, 'table full: a new worker is written');
	my ($w2, $tl) = beat('late-comer');
	ok($w2, 'table full: its unchanged beat goes to the table too (no room in the cache)');
	is(row('late-comer', 'last_heartbeat_at'), row('late-comer', "'$tl'::timestamptz"), 'table full: at once');
	# (k1 was cached again after the crash reset.)
	my ($w3) = beat('k1');
	ok(!$w3, 'table full: a worker already cached is still absorbed');
}

ok(!$node->log_contains(qr/pass failed|TRAP|server process .* was terminated by signal 11/), 'no pass failed, no crash but ours');
$node->stop;
done_testing();
