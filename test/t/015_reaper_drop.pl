# The reaper never blocks DROP EXTENSION, ALTER DATABASE RENAME, CREATE
# DATABASE ... TEMPLATE or DROP DATABASE (without FORCE), preloaded and not.
#
# DROP DATABASE and RENAME wait up to 5 s for other sessions to leave, then
# fail with "database is being accessed by other users": the reaper has to
# notice that someone wants its database (a conflicting lock on it) and leave.
# Each command is timed; it must succeed in under 3 s while the reaper was
# running when it started.
# - DROP EXTENSION: the reaper exits, and is not started again (the launcher
#   keeps looking every 500 ms); CREATE EXTENSION brings it back.
# - ALTER DATABASE RENAME: succeeds; the reaper comes back in the renamed
#   database (launcher when preloaded, the next heartbeat when not) and works.
# - CREATE DATABASE ... TEMPLATE: succeeds; the copy gets its own reaper.
# - DROP DATABASE: succeeds; no reaper is left.
use strict;
use warnings;
use Time::HiRes qw(time usleep);
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

sub reapers
{
	my ($node, $db) = @_;
	return $node->safe_psql('postgres',
		"SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'worker_heartbeat reaper' AND datname = '$db'");
}

sub timed
{
	my ($node, $sql, $what) = @_;
	my $t0 = time;
	my ($rc, $out, $err) = $node->psql('postgres', $sql);
	my $elapsed = time - $t0;
	is($rc, 0, "$what succeeds") or diag($err);
	diag(sprintf("%s: %.0f ms", $what, $elapsed * 1000));
	cmp_ok($elapsed, '<', 3, "$what is prompt");
}

sub run_mode
{
	my ($preload) = @_;
	my $mode = $preload ? 'preloaded' : 'not preloaded';
	my $node = PostgreSQL::Test::Cluster->new($preload ? 'drop_preloaded' : 'drop_on_demand');
	$node->init;
	$node->append_conf('postgresql.conf', q{
max_worker_processes = 16
worker_heartbeat.reap_interval = '200ms'
worker_heartbeat.launcher_interval = '500ms'
});
	$node->append_conf('postgresql.conf', "shared_preload_libraries = 'worker_heartbeat'\n") if $preload;
	$node->start;
	my $setup = q{
		CREATE SCHEMA IF NOT EXISTS pm_pipeline;
		CREATE EXTENSION worker_heartbeat SCHEMA pm_pipeline;
		CREATE TABLE IF NOT EXISTS public.queue (id int PRIMARY KEY, state text NOT NULL DEFAULT 'pending',
		                                         claimed_by text, lease_expires_at timestamptz);
		SELECT pm_pipeline.register_lease_table('public.queue');
	};
	$node->safe_psql('postgres', 'CREATE DATABASE doomed');
	$node->safe_psql('doomed', $setup);
	ok($node->poll_query_until('postgres', "SELECT (" . q{SELECT count(*) FROM pg_stat_activity
			WHERE backend_type = 'worker_heartbeat reaper' AND datname = 'doomed'} . ") = 1"),
		"$mode: the reaper runs in doomed");

	# --- DROP EXTENSION ---
	my $t0 = time;
	my ($rc, $out, $err) = $node->psql('doomed', 'DROP EXTENSION worker_heartbeat');
	is($rc, 0, "$mode: DROP EXTENSION succeeds") or diag($err);
	cmp_ok(time - $t0, '<', 3, "$mode: DROP EXTENSION is prompt");
	ok($node->poll_query_until('postgres', q{SELECT count(*) = 0 FROM pg_stat_activity
			WHERE backend_type = 'worker_heartbeat reaper' AND datname = 'doomed'}),
		"$mode: the reaper left after DROP EXTENSION");
	my $back = 0;
	my $t1 = time;
	while (time - $t1 < 1.5)
	{
		$back++ if reapers($node, 'doomed') ne '0';
		usleep(100_000);
	}
	is($back, 0, "$mode: and nothing starts it again (sampled for 1.5 s)");
	$node->safe_psql('doomed', $setup);
	ok($node->poll_query_until('postgres', q{SELECT count(*) = 1 FROM pg_stat_activity
			WHERE backend_type = 'worker_heartbeat reaper' AND datname = 'doomed'}),
		"$mode: CREATE EXTENSION brings it back");

	# --- ALTER DATABASE RENAME ---
	timed($node, 'ALTER DATABASE doomed RENAME TO renamed', "$mode: ALTER DATABASE RENAME with the reaper running");
	ok($node->log_contains(qr/worker_heartbeat reaper: leaving database \d+, which another session wants/),
		"$mode: the reaper logged why it left");
	# Preloaded: the launcher starts it again. Not preloaded: a heartbeat does.
	$node->safe_psql('renamed', "SELECT pm_pipeline.upsert_worker_heartbeat('after-rename', 'w')") unless $preload;
	ok($node->poll_query_until('postgres', q{SELECT count(*) = 1 FROM pg_stat_activity
			WHERE backend_type = 'worker_heartbeat reaper' AND datname = 'renamed'}),
		"$mode: the reaper is back in the renamed database");
	$node->safe_psql('renamed', q{
		SELECT pm_pipeline.set_worker_type_dead_after('fast', '1 second');
		SELECT pm_pipeline.upsert_worker_heartbeat('silent', 'fast', 'processing');
		INSERT INTO public.queue VALUES (1, 'claimed', 'silent', now() + interval '1 hour');
	});
	ok($node->poll_query_until('renamed', 'SELECT claimed_by IS NULL FROM public.queue WHERE id = 1'),
		"$mode: and it works there");

	# --- CREATE DATABASE ... TEMPLATE (copies need the source to themselves) ---
	ok($node->poll_query_until('postgres', q{SELECT count(*) = 1 FROM pg_stat_activity
			WHERE backend_type = 'worker_heartbeat reaper' AND datname = 'renamed'}),
		"$mode: the reaper runs before CREATE DATABASE ... TEMPLATE");
	timed($node, 'CREATE DATABASE copied TEMPLATE renamed', "$mode: CREATE DATABASE TEMPLATE with the reaper running");
	$node->safe_psql('copied', "SELECT pm_pipeline.upsert_worker_heartbeat('in-copy', 'w')") unless $preload;
	ok($node->poll_query_until('postgres', q{SELECT count(*) = 1 FROM pg_stat_activity
			WHERE backend_type = 'worker_heartbeat reaper' AND datname = 'copied'}),
		"$mode: the copy gets a reaper of its own");
	timed($node, 'DROP DATABASE copied', "$mode: DROP DATABASE of the copy with its reaper running");

	# --- DROP DATABASE (no FORCE) ---
	# The reaper of 'renamed' left for the copy. Not preloaded, a worker's
	# heartbeats bring it back (heartbeat starts are at most one per 5 s).
	my $beat = $preload ? '' : "FROM (SELECT pm_pipeline.upsert_worker_heartbeat('after-copy', 'w')) h";
	ok($node->poll_query_until('renamed', qq{SELECT (SELECT count(*) FROM pg_stat_activity
			WHERE backend_type = 'worker_heartbeat reaper' AND datname = 'renamed') = 1 $beat}),
		"$mode: the reaper runs again before DROP DATABASE");
	timed($node, 'DROP DATABASE renamed', "$mode: DROP DATABASE with the reaper running");
	is( $node->safe_psql('postgres',
			"SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'worker_heartbeat reaper'"),
		'0', "$mode: no reaper left");
	ok(!$node->log_contains(qr/is being accessed by other users|was terminated by signal/),
		"$mode: nobody was told the database is in use, nothing crashed");
	$node->stop;
}

run_mode(1);
run_mode(0);
done_testing();
