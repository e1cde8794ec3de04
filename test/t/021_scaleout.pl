# Scale-out (issue 18): every database with the extension is reaped, with at
# most worker_heartbeat.max_reapers reapers at once, and a database that is
# not reaped says why.
#
# Node 1, preloaded, 40 databases, max_worker_processes = 8, max_reapers = 3:
# - issue 18 "every database is reaped": every one of the 40 databases gets a
#   registry row (the launcher looks at each, in rotation), never more than 3
#   reapers at once;
# - issue 18 goal 1: in every database a SIGKILLed session-bound worker's
#   lease comes back (median and max latency reported with note(); asserted
#   only against a generous bound: the machine is a shared, noisy 2-core box);
# - issue 18 goal 1: a silent worker's lease in databases without a reaper is
#   back within dead_after + 2 s (asserted generously, reported);
# - issue 18 "never silent": a database due for a visit shows 'scheduled', and
#   reaper_status() rows never say 'waiting for a reaper slot' once all is quiet.
# Node 2, preloaded, max_worker_processes = 3, max_databases = 2:
# - issue 18 "limits are settings, exhausting them is tested": the second
#   database gets no background worker: CREATE EXTENSION warns, and
#   reaper_status() says 'no worker slot (max_worker_processes)'; the third
#   database finds the registry full: CREATE EXTENSION warns, and its
#   reaper_status() says 'registry full (max_databases)'; both are
#   worker_heartbeat_reaper_up 0 in metrics().
# On the old code (b002846) node 1 gives a reaper to the first few databases
# only (one per database, as many as max_worker_processes leaves) and none to
# the rest, silently: "every database had a pass" times out and the kills
# there are never released; node 2 has no max_databases setting (SHOW fails:
# the placeholder of a reserved prefix is dropped) and none of these states.
use strict;
use warnings;
use Time::HiRes qw(time usleep);
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

# The same file is the scale-out bench (docs/benchmarks.md): sizes from the
# environment, e.g. WH_SCALEOUT_DATABASES=200 WH_SCALEOUT_WORKER_PROCESSES=16
# WH_SCALEOUT_MAX_REAPERS=12 WH_SCALEOUT_KILLS=40 WH_SCALEOUT_IDLE_SECONDS=60.
my $ndb = $ENV{WH_SCALEOUT_DATABASES} // 40;
my $max_wp = $ENV{WH_SCALEOUT_WORKER_PROCESSES} // 8;
my $max_reapers = $ENV{WH_SCALEOUT_MAX_REAPERS} // 3;
my $kills = $ENV{WH_SCALEOUT_KILLS} // $ndb;
my $idle_seconds = $ENV{WH_SCALEOUT_IDLE_SECONDS} // 10;
my $reap_interval = $ENV{WH_SCALEOUT_REAP_INTERVAL} // '200ms';
my $visit_interval = $ENV{WH_SCALEOUT_VISIT_INTERVAL} // '10min';
my $launcher_interval = $ENV{WH_SCALEOUT_LAUNCHER_INTERVAL} // '500ms';

# CPU seconds used per second of wall time by the worker_heartbeat processes
# (launcher, reapers; reapers that exited in the window count through the
# postmaster's cutime/cstime, which is why autovacuum is off here).
sub idle_cpu
{
	my ($node, $seconds) = @_;
	# The postmaster's pid: the first line of postmaster.pid (a backend's
	# /proc entry may be gone by the time we read it).
	my ($postmaster) = split /\n/, slurp_file($node->data_dir . '/postmaster.pid');
	my $sample = sub {
		my $ticks = 0;
		my @pm = split ' ', (slurp_file("/proc/$postmaster/stat") =~ s/^.*\) //r);
		$ticks += $pm[13] + $pm[14];    # cutime, cstime
		opendir(my $d, '/proc') or die;
		for my $pid (grep { /^\d+$/ } readdir $d)
		{
			my $stat = eval { slurp_file("/proc/$pid/stat") } // next;
			my $cmd = eval { slurp_file("/proc/$pid/cmdline") } // next;
			next unless $cmd =~ /worker_heartbeat/;
			my @f = split ' ', ($stat =~ s/^.*\) //r);
			next unless $f[1] == $postmaster;
			$ticks += $f[11] + $f[12];    # utime, stime
		}
		closedir $d;
		return $ticks;
	};
	my $since = $node->safe_psql('tenant01', 'SELECT now()');
	my $t0 = time;
	my $c0 = $sample->();
	usleep($seconds * 1_000_000);    # a measurement window, not a wait for an effect
	my $c1 = $sample->();
	my $hz = `getconf CLK_TCK` || 100;
	my $cpu = ($c1 - $c0) / $hz / (time - $t0);
	# Databases that had a reaper start in the window (each start is a visit).
	my $visited = $node->safe_psql('tenant01',
		"SELECT count(*) FROM pm_pipeline.reaper_status() WHERE started_at >= '$since'");
	return [ $cpu, $visited ];
}

my $node = PostgreSQL::Test::Cluster->new('scaleout');
$node->init;
$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'worker_heartbeat'
max_worker_processes = $max_wp
max_connections = 60
autovacuum = off
worker_heartbeat.max_reapers = $max_reapers
worker_heartbeat.max_databases = @{[ $ndb + 24 ]}
worker_heartbeat.reap_interval = '$reap_interval'
worker_heartbeat.launcher_interval = '$launcher_interval'
worker_heartbeat.pool_visit_interval = '$visit_interval'
});
$node->start;

# A template with the extension and a lease table; copies of it are the
# tenants. Its reaper is stopped first (CREATE DATABASE needs it gone).
$node->safe_psql('postgres', 'CREATE DATABASE tmpl');
$node->safe_psql('tmpl', q{
	CREATE SCHEMA pm_pipeline;
	CREATE EXTENSION worker_heartbeat SCHEMA pm_pipeline;
	CREATE TABLE public.queue (id int PRIMARY KEY, state text NOT NULL DEFAULT 'pending',
	                           claimed_by text, lease_expires_at timestamptz);
	CREATE INDEX ON public.queue (claimed_by);
	CREATE INDEX ON public.queue (lease_expires_at);
	INSERT INTO public.queue (id) SELECT g FROM generate_series(1, 10) g;
	SELECT pm_pipeline.register_lease_table('public.queue', p_on_release => '{"state": "pending"}');
	SELECT pm_pipeline.set_worker_type_dead_after('fast', '2 seconds');
});
$node->safe_psql('tmpl', 'SELECT pm_pipeline.stop_reaper()');
$node->safe_psql('postgres', 'ALTER DATABASE tmpl WITH IS_TEMPLATE true ALLOW_CONNECTIONS false');
my @dbs = map { sprintf('tenant%02d', $_) } 1 .. $ndb;
my $t_create = time;
$node->safe_psql('postgres', "CREATE DATABASE $_ TEMPLATE tmpl") for @dbs;
note sprintf('created %d databases in %.0f s', $ndb, time - $t_create);

my $reapers = q{SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'worker_heartbeat reaper'};
ok( $node->poll_query_until('tenant01',
		"SELECT count(*) = $ndb FROM pm_pipeline.reaper_status() WHERE database::text LIKE 'tenant%'"),
	"the launcher gave every one of the $ndb databases a look: $ndb rows in reaper_status()");
my $max_seen = 0;
for (1 .. 20)
{
	my $n = $node->safe_psql('postgres', $reapers);
	$max_seen = $n if $n > $max_seen;
	usleep(50_000);
}
note "most reapers seen at once: $max_seen";
cmp_ok($max_seen, '<=', $max_reapers, "never more than max_reapers = $max_reapers reapers at once");
ok( $node->poll_query_until('tenant01', q{
		SELECT count(*) FILTER (WHERE passes > 0) FROM pm_pipeline.reaper_status() WHERE database::text LIKE 'tenant%'},
		$ndb),
	'every database had a pass of its own');
# Databases served in rotation between visits say 'scheduled'; none says why
# it is not reaped (a visit may be starting at any moment).
ok( $node->poll_query_until('tenant01', qq{
		SELECT (count(*) FILTER (WHERE state = 'scheduled') > 0 OR $ndb <= $max_reapers)
		   AND count(*) FILTER (WHERE state NOT IN ('scheduled', 'starting', 'idle', 'reaping')) = 0
		  FROM pm_pipeline.reaper_status() WHERE database::text LIKE 'tenant%'}),
	"databases without a reaper right now say 'scheduled', none is waiting or without a worker slot");
# More databases than reapers: a reaper with nothing to do for 5 s leaves,
# so an idle server runs none (issue 18: idle cost).
ok($node->poll_query_until('postgres', $reapers, '0'), 'idle: every pooled reaper left after 5 s without work')
  if $ndb > $max_reapers;
my $idle = idle_cpu($node, $idle_seconds);
note sprintf('idle: %d databases, %d reapers at most, reap_interval %s, pool_visit_interval %s, launcher_interval %s: '
	  . 'the launcher and reapers used %.2f%% of one core over %d s; %d databases had a reaper started in that time',
	$ndb, $max_reapers, $reap_interval, $visit_interval, $launcher_interval, 100 * $idle->[0], $idle_seconds,
	$idle->[1]);

# A SIGKILLed session-bound worker in every database, one after another.
my @latency;
my $step = $kills >= $ndb ? 1 : int($ndb / $kills);
for my $db (@dbs[ grep { $_ % $step == 0 } 0 .. $#dbs ])
{
	my $client = $node->background_psql($db);
	$client->query_safe(q{
		SELECT pm_pipeline.upsert_worker_heartbeat('victim', 'w', 'processing', p_session_bound => true);
		UPDATE public.queue SET state = 'claimed', claimed_by = 'victim', lease_expires_at = now() + interval '1 hour'
		 WHERE id = 1;
	});
	my $t0 = time;
	$client->{run}->signal('KILL');
	eval { $client->{run}->finish };
	my $released = 0;
	while (time - $t0 < 60)
	{
		if ($node->safe_psql($db, 'SELECT claimed_by IS NULL FROM public.queue WHERE id = 1') eq 't')
		{
			$released = 1;
			last;
		}
		usleep(10_000);
	}
	push @latency, time - $t0;
	ok($released, "$db: the lease of a SIGKILLed session-bound worker is back");
}
my @sorted = sort { $a <=> $b } @latency;
my $median = $sorted[ int(@sorted / 2) ];
note sprintf('session kill -> lease back over %d databases (polling every 10 ms, psql included): median %.3f s, max %.3f s',
	scalar @sorted, $median, $sorted[-1]);
cmp_ok($median, '<', 5, 'median release after a kill: well under a generous bound (1 s promised on a quiet machine)');

# Silent workers (dead_after 2 s) in a few databases at once.
my @silent_dbs = @dbs[ 0 .. ($ndb < 5 ? $ndb - 1 : 4) ];
my %t_silent;
for my $db (@silent_dbs)
{
	$t_silent{$db} = time;
	$node->safe_psql($db, q{
		SELECT pm_pipeline.upsert_worker_heartbeat('silent', 'fast', 'processing');
		UPDATE public.queue SET state = 'claimed', claimed_by = 'silent', lease_expires_at = now() + interval '1 hour'
		 WHERE id = 2;
	});
}
my $t_beat = time;
my %silent_done;
while (time - $t_beat < 60 && keys %silent_done < @silent_dbs)
{
	for my $db (grep { !$silent_done{$_} } @silent_dbs)
	{
		$silent_done{$db} = time - $t_silent{$db}
		  if $node->safe_psql($db, 'SELECT claimed_by IS NULL FROM public.queue WHERE id = 2') eq 't';
	}
	usleep(50_000);
}
for my $db (@silent_dbs)
{
	ok(defined $silent_done{$db}, "$db: a silent worker's lease is back");
	note sprintf('%s: silent worker (dead_after 2 s) released %.2f s after its heartbeat was sent (polling every 50 ms)', $db,
		$silent_done{$db} // -1);
	cmp_ok($silent_done{$db} // 999, '<', 2 + 2 + 8, "$db: within dead_after + 2 s (plus a margin for the loaded machine)");
}

# Quiet again: nothing stays waiting.
ok( $node->poll_query_until('tenant01', q{
		SELECT count(*) FROM pm_pipeline.reaper_status() WHERE state = 'waiting for a reaper slot'}, '0'),
	"once all is quiet no database is 'waiting for a reaper slot'");
cmp_ok($node->safe_psql('postgres', $reapers), '<=', $max_reapers, "still at most $max_reapers reapers");
$node->stop;

# --- node 2: the limits ------------------------------------------------------
my $small = PostgreSQL::Test::Cluster->new('limits');
$small->init;
$small->append_conf('postgresql.conf', q{
shared_preload_libraries = 'worker_heartbeat'
max_worker_processes = 3
worker_heartbeat.max_databases = 2
worker_heartbeat.launcher_interval = '500ms'
});
$small->start;
is($small->safe_psql('postgres', 'SHOW worker_heartbeat.max_databases'), '2', 'max_databases is a setting');
$small->safe_psql('postgres', "CREATE DATABASE $_") for qw(a b c);
my $install = 'CREATE SCHEMA pm_pipeline; CREATE EXTENSION worker_heartbeat SCHEMA pm_pipeline';
my ($rc, $out, $err) = $small->psql('a', $install);
is($rc, 0, 'a: CREATE EXTENSION');
ok($small->poll_query_until('a', 'SELECT count(pid) FROM pm_pipeline.reaper_status()', '1'), 'a has its reaper');
# The one free worker slot is taken (launcher, logical replication launcher, a's reaper).
($rc, $out, $err) = $small->psql('b', $install);
is($rc, 0, 'b: CREATE EXTENSION succeeds without a worker slot');
like($err, qr/WARNING:.*no reaper for database "b": no background worker slot is free/,
	'b: a WARNING says why');
like($err, qr/HINT:.*max_worker_processes/, 'b: ... and what to raise');
# The launcher retries; once the start has kept failing for 2 s, the state says so.
ok( $small->poll_query_until('b', "SELECT state FROM pm_pipeline.reaper_status() WHERE database = 'b'",
		'no worker slot (max_worker_processes)'),
	"b: reaper_status() says 'no worker slot (max_worker_processes)'");
($rc, $out, $err) = $small->psql('c', $install);
is($rc, 0, 'c: CREATE EXTENSION succeeds with the registry full');
like($err, qr/WARNING:.*no reaper for database "c": the reaper registry is full \(2 databases\)/,
	'c: a WARNING says the registry is full');
like($err, qr/HINT:.*worker_heartbeat\.max_databases/, 'c: ... and names max_databases');
is( $small->safe_psql('c', "SELECT coalesce(pid::text, 'none') || ':' || state FROM pm_pipeline.reaper_status() WHERE database = 'c'"),
	'none:registry full (max_databases)', "c: reaper_status() says 'registry full (max_databases)'");
like($small->safe_psql('c', 'SELECT pm_pipeline.metrics()'), qr/^worker_heartbeat_reaper_up 0$/m,
	'c: metrics() says worker_heartbeat_reaper_up 0');
like($small->safe_psql('b', 'SELECT pm_pipeline.metrics()'), qr/^worker_heartbeat_reaper_up 0$/m,
	'b: metrics() says worker_heartbeat_reaper_up 0');
($rc, $out, $err) = $small->psql('c', 'SELECT pm_pipeline.start_reaper()');
like($err, qr/ERROR:.*registry is full/, 'c: start_reaper() outside CREATE EXTENSION: a clear ERROR');
$small->stop;

done_testing();
