# Settings reload (SIGHUP) and signals (preloaded).
#
# - reap_interval 3s, then ALTER SYSTEM SET worker_heartbeat.reap_interval =
#   '200ms' + pg_reload_conf(): the pass cadence (reaper_status().passes)
#   goes from ~3 s to ~200 ms without a restart;
# - ALTER SYSTEM SET dead_after = '1s' + reload: a silent worker that the old
#   5min would have kept alive is dead within 1 s + one interval of the reload;
# - invalid values ('abc', '-5s') in postgresql.conf + reload: a clear message
#   in the log, the old value stays (SHOW, and the reaper's cadence), the same
#   reaper keeps running; ALTER SYSTEM refuses them with a clear error;
# - default_transaction_read_only on (a platform's read-only mode): the reaper
#   says read-only, writes nothing and logs no error; when it is off again the
#   reaper resumes and releases what was overdue;
# - SIGTERM (pg_terminate_backend) ends the reaper promptly; so does the death
#   of the postmaster (SIGKILL), for the reaper and the launcher.
use strict;
use warnings;
use Time::HiRes qw(time usleep);
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('settings');
$node->init;
$node->append_conf('postgresql.conf', q{
shared_preload_libraries = 'worker_heartbeat'
max_worker_processes = 16
worker_heartbeat.reap_interval = '3s'
worker_heartbeat.launcher_interval = '500ms'
});
$node->start;
$node->safe_psql('postgres', q{
	CREATE SCHEMA pm_pipeline;
	CREATE EXTENSION worker_heartbeat SCHEMA pm_pipeline;
});
ok($node->poll_query_until('postgres', 'SELECT passes > 0 FROM pm_pipeline.reaper_status()'), 'the reaper runs');
my $reaper = $node->safe_psql('postgres', 'SELECT pid FROM pm_pipeline.reaper_status()');

sub passes { return $node->safe_psql('postgres', 'SELECT passes FROM pm_pipeline.reaper_status()'); }

# Seconds for $n more passes, timed from the end of the pass in progress.
sub time_passes
{
	my ($n) = @_;
	my $p = passes();
	$node->poll_query_until('postgres', "SELECT passes > $p FROM pm_pipeline.reaper_status()") or return 99;
	$p = passes();
	my $t0 = time;
	$node->poll_query_until('postgres', "SELECT passes >= $p + $n FROM pm_pipeline.reaper_status()") or return 99;
	return time - $t0;
}

my $slow = time_passes(1);
diag(sprintf('reap_interval 3s: one pass after %.2f s', $slow));
cmp_ok($slow, '>=', 2.5, 'reap_interval 3s: passes about 3 s apart');

$node->safe_psql('postgres', q{ALTER SYSTEM SET worker_heartbeat.reap_interval = '200ms'; SELECT pg_reload_conf();});
# The reaper picks it up at its next wake-up (at most 1 s).
my $fast = time_passes(1) && time_passes(5);
diag(sprintf('after reload to 200ms: five passes in %.2f s', $fast));
cmp_ok($fast, '<', 2, 'reap_interval 200ms after reload: five passes in under 2 s');
is($node->safe_psql('postgres', 'SHOW worker_heartbeat.reap_interval'), '200ms', 'SHOW says 200ms');

# dead_after from 5min to 1s by reload.
$node->safe_psql('postgres', q{
	SELECT pm_pipeline.upsert_worker_heartbeat('quiet', 'plain', 'processing');
});
ok($node->poll_query_until('postgres', 'SELECT passes > ' . (passes() + 2) . ' FROM pm_pipeline.reaper_status()'),
	'a few passes later ...');
is($node->safe_psql('postgres', "SELECT status FROM pm_pipeline.worker_heartbeats WHERE worker_id = 'quiet'"),
	'processing', '... the quiet worker is alive under dead_after 5min');
my $t_reload = time;
$node->safe_psql('postgres', q{ALTER SYSTEM SET worker_heartbeat.dead_after = '1s'; SELECT pg_reload_conf();});
ok($node->poll_query_until('postgres', "SELECT status = 'dead' FROM pm_pipeline.worker_heartbeats WHERE worker_id = 'quiet'"),
	'dead_after 1s after reload: the quiet worker is declared dead');
my $took = time - $t_reload;
diag(sprintf('dead_after reload -> declared dead after %.2f s', $took));
cmp_ok($took, '<', 1 + 1 + 0.2 + 0.5, 'within the reaper wake-up (1 s) + 200 ms of the reload (it was silent for over 1 s already)');

# Invalid values in the configuration file. postgresql.auto.conf (ALTER
# SYSTEM) would override postgresql.conf: move the 200ms there first.
$node->safe_psql('postgres', 'ALTER SYSTEM RESET worker_heartbeat.reap_interval');
$node->append_conf('postgresql.conf', "worker_heartbeat.reap_interval = '200ms'\n");
$node->reload;
for my $bad ("'abc'", "'-5s'")
{
	my $offset = -s $node->logfile;
	$node->append_conf('postgresql.conf', "worker_heartbeat.reap_interval = $bad\n");
	$node->reload;
	my $message = $bad eq "'abc'"
	  ? qr/invalid value for parameter "worker_heartbeat\.reap_interval": "abc"/
	  : qr/-5000 ms is outside the valid range for parameter "worker_heartbeat\.reap_interval"/;
	ok($node->wait_for_log($message, $offset), "reap_interval = $bad: rejected with a clear message in the log");
	ok($node->wait_for_log(qr/contains errors; unaffected changes were applied/, $offset),
		"reap_interval = $bad: the rest of the file still applies");
	is($node->safe_psql('postgres', 'SHOW worker_heartbeat.reap_interval'), '200ms', "reap_interval = $bad: old value stays");
	my $cadence = time_passes(5);
	cmp_ok($cadence, '<', 2, sprintf('reap_interval = %s: the reaper keeps its 200 ms cadence (five passes in %.2f s)', $bad, $cadence));
	is($node->safe_psql('postgres', 'SELECT pid FROM pm_pipeline.reaper_status()'), $reaper, "reap_interval = $bad: same reaper");
}
my ($rc, $out, $err) = $node->psql('postgres', q{ALTER SYSTEM SET worker_heartbeat.reap_interval = '-5s'});
# PG 15: "(10 .. 3600000)"; PG 17 adds the unit: "(10 ms .. 3600000 ms)".
like($err, qr/outside the valid range for parameter "worker_heartbeat\.reap_interval" \(10( ms)? \.\. 3600000( ms)?\)/,
	'ALTER SYSTEM refuses -5s with the valid range');
($rc, $out, $err) = $node->psql('postgres', q{ALTER SYSTEM SET worker_heartbeat.reap_interval = 'abc'});
like($err, qr/invalid value for parameter "worker_heartbeat\.reap_interval": "abc"/, 'ALTER SYSTEM refuses abc');
($rc, $out, $err) = $node->psql('postgres', q{SET worker_heartbeat.reap_interval = '1s'});
like($err, qr/cannot be changed now/, 'a session cannot SET it (sighup setting)');

# A platform's read-only mode (default_transaction_read_only, as Supabase sets
# it when a disk fills): the reaper waits without errors, then resumes.
$node->safe_psql('postgres', q{
	SELECT pm_pipeline.set_worker_type_dead_after('fast', '1 second');
	SELECT pm_pipeline.upsert_worker_heartbeat('ro-victim', 'fast', 'processing');
	CREATE TABLE public.queue (id int PRIMARY KEY, claimed_by text, lease_expires_at timestamptz);
	INSERT INTO public.queue VALUES (1, 'ro-victim', now() + interval '1 hour');
	SELECT pm_pipeline.register_lease_table('public.queue');
	ALTER SYSTEM SET default_transaction_read_only = on;
	SELECT pg_reload_conf();
});
my $offset = -s $node->logfile;
ok($node->poll_query_until('postgres', "SELECT state = 'read-only' FROM pm_pipeline.reaper_status()"),
	'read-only mode: reaper_status() says read-only');
# Let the victim's 1 s pass while read-only, with a few wake-ups of the reaper.
my $t_ro = time;
usleep(100_000) while time - $t_ro < 1.5;
is($node->safe_psql('postgres', 'SELECT claimed_by FROM public.queue WHERE id = 1'), 'ro-victim',
	'read-only mode: nothing released (nothing written)');
ok(!$node->log_contains(qr/pass failed|read-only transaction/, $offset), 'read-only mode: no error in the log');
$node->safe_psql('postgres', q{
	SET default_transaction_read_only = off;
	ALTER SYSTEM RESET default_transaction_read_only;
	SELECT pg_reload_conf();
});
ok($node->poll_query_until('postgres', 'SELECT claimed_by IS NULL FROM public.queue WHERE id = 1'),
	'read-only mode over: the reaper resumes and releases the lease');
is($node->safe_psql('postgres', 'SELECT pid FROM pm_pipeline.reaper_status()'), $reaper,
	'read-only mode: the same reaper throughout');

# SIGTERM ends it promptly.
my $t0 = time;
$node->safe_psql('postgres', "SELECT pg_terminate_backend($reaper)");
ok($node->poll_query_until('postgres', "SELECT count(*) = 0 FROM pg_stat_activity WHERE pid = $reaper"),
	'SIGTERM: the reaper is gone');
my $term = time - $t0;
diag(sprintf('SIGTERM -> reaper gone after %.0f ms', $term * 1000));
cmp_ok($term, '<', 1, 'SIGTERM ends it within a second');

# Postmaster death ends the reaper and the launcher.
ok($node->poll_query_until('postgres', "SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'worker_heartbeat reaper'"),
	'the launcher started a new reaper');
my @pids = split /\n/, $node->safe_psql('postgres',
	"SELECT pid FROM pg_stat_activity WHERE backend_type IN ('worker_heartbeat reaper', 'worker_heartbeat launcher')");
is(scalar @pids, 2, 'a reaper and a launcher');
# Running (a zombie waiting for whoever adopted it to reap it has exited).
sub running
{
	my ($pid) = @_;
	open(my $fh, '<', "/proc/$pid/stat") or return 0;
	my $stat = <$fh>;
	close $fh;
	return $stat !~ /^\d+ \(.*\) [ZX] /;
}
$node->kill9;
$t0 = time;
usleep(20_000) while (grep { running($_) } @pids) && time - $t0 < 10;
my $left = grep { running($_) } @pids;
my $gone = time - $t0;
diag(sprintf('postmaster SIGKILL -> reaper and launcher gone after %.0f ms', $gone * 1000));
is($left, 0, 'postmaster death: reaper and launcher exit');
cmp_ok($gone, '<', 2, 'postmaster death: promptly');

# Leftover backends of the killed postmaster exit by themselves; wait for them
# so that the data directory can be removed.
usleep(100_000) while -e $node->data_dir . '/postmaster.pid' && `pgrep -f "postgres: settings" 2>/dev/null` && time - $t0 < 10;
done_testing();
