# The dashboard end to end: a real cluster with the extension preloaded, a
# registered queue, three session-bound workers (psql sessions), the dashboard
# binary connected as a read-only monitoring role, and Debian's headless
# Chromium driven by playwright-core (dashboard/browser/dashboard-test.mjs).
# One worker's client is killed with SIGKILL; the page must show it dead and its
# leases released without a reload, within a second. /metrics must pass
# `promtool check metrics` and agree with the database.
#
# Fleet control (1.3, issue 16): drained / paused workers and the dead worker's
# forensics on the page; issue 18: a database without a reaper is listed; and
# the page against a database whose extension is still 1.2.
#
# The screenshot is kept in tmp_check/dashboard/ (path printed by the test).
use strict;
use warnings;
use FindBin;
use File::Copy qw(copy);
use File::Path qw(make_path);
use HTTP::Tiny;
use IO::Socket::INET;
use IPC::Run;
use JSON::PP;
use Time::HiRes qw(time usleep);
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $repo = "$FindBin::RealBin/../..";
my $work = "$PostgreSQL::Test::Utils::tmp_check/dashboard";
make_path($work);

# --- prerequisites: missing ones fail (scripts/packages.txt installs them) ---
my %need = (
	chromium => '/usr/bin/chromium',
	promtool => 'promtool',
	node     => 'node',
	npm      => 'npm',
	cmake    => 'cmake');
for my $name (sort keys %need)
{
	my $found = `command -v $need{$name} 2>/dev/null`;
	ok($found ne '', "$name is installed")
	  or BAIL_OUT("$name missing: install the packages in scripts/packages.txt");
}

# --- the dashboard binary: $WHD_DASHBOARD_BIN, or built here ---
my $bin = $ENV{WHD_DASHBOARD_BIN};
if (!$bin)
{
	my $build = "$work/build";
	my $log   = "$work/build.log";
	my $rc    = system(
		"cmake -S '$repo/dashboard' -B '$build' -DWHD_TESTS=OFF -DCMAKE_BUILD_TYPE=RelWithDebInfo >'$log' 2>&1"
		  . " && cmake --build '$build' -j2 >>'$log' 2>&1");
	ok($rc == 0, 'dashboard builds')
	  or diag(slurp_file($log)), BAIL_OUT('dashboard does not build');
	$bin = "$build/worker-heartbeat-dashboard";
}
ok(-x $bin, "dashboard binary at $bin");

# --- playwright-core from the lockfile ---
my $browser_dir = "$work/browser";
make_path($browser_dir);
for my $f (qw(package.json package-lock.json dashboard-test.mjs))
{
	copy("$repo/dashboard/browser/$f", "$browser_dir/$f") or die "copy $f: $!";
}
# node_modules: $WHD_NODE_MODULES, else dashboard/browser's (after `npm ci`
# there), else `npm ci` here from the lockfile.
my $modules = $ENV{WHD_NODE_MODULES} // "$repo/dashboard/browser/node_modules";
if (-d "$modules/playwright-core")
{
	symlink($modules, "$browser_dir/node_modules")
	  unless -e "$browser_dir/node_modules";
}
else
{
	my $rc = system("cd '$browser_dir' && npm ci --no-audit --no-fund >'$work/npm.log' 2>&1");
	ok($rc == 0, 'npm ci installs playwright-core from the lockfile')
	  or diag(slurp_file("$work/npm.log")
		  . "\nIf npm cannot reach the registry here (e.g. inside a chroot without the host's CA"
		  . " bundle), run `npm ci` in dashboard/browser beforehand or set WHD_NODE_MODULES."),
	  BAIL_OUT('npm ci failed');
}

# --- the cluster ---
my $node = PostgreSQL::Test::Cluster->new('dashboard');
$node->init;
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'worker_heartbeat'\n");
$node->start;
$node->safe_psql('postgres', q{
CREATE SCHEMA pm_pipeline;
CREATE EXTENSION worker_heartbeat SCHEMA pm_pipeline;
CREATE TABLE public.jobs (id integer PRIMARY KEY, payload text NOT NULL,
    state text NOT NULL DEFAULT 'pending', claimed_by text, lease_expires_at timestamptz);
INSERT INTO public.jobs (id, payload) SELECT g, 'job ' || g FROM generate_series(1, 20) g;
SELECT pm_pipeline.register_lease_table('public.jobs', 'claimed_by', 'lease_expires_at',
                                        '{"state": "pending"}');
-- The read-only monitoring role (as in the README).
CREATE ROLE wh_monitor LOGIN;
GRANT USAGE ON SCHEMA pm_pipeline TO wh_monitor;
GRANT SELECT ON ALL TABLES IN SCHEMA pm_pipeline TO wh_monitor;
GRANT EXECUTE ON FUNCTION pm_pipeline.get_worker_health_summary(), pm_pipeline.get_worker_stats(),
    pm_pipeline.reaper_status(), pm_pipeline.metrics() TO wh_monitor;
});
is( $node->safe_psql(
		'postgres',
		q{SELECT has_table_privilege('wh_monitor', 'pm_pipeline.worker_heartbeats', 'INSERT, UPDATE, DELETE')
		      OR has_table_privilege('wh_monitor', 'public.jobs', 'SELECT')}),
	'f',
	'the monitoring role can write nothing and cannot see the queue');

# --- start the dashboard on a free port ---
my $host     = $node->host;
my $port     = $node->port;
my $conninfo = "host=$host port=$port dbname=postgres user=wh_monitor";
my ($dout, $derr) = ('', '');
my $dash = IPC::Run::start([ $bin, '--conninfo', $conninfo, '--listen', '127.0.0.1:0' ],
	'>', \$dout, '2>', \$derr);
my $url;
my $deadline = time + 30;
while (time < $deadline)
{
	$dash->pump_nb;
	last if ($url) = $dout =~ m{(http://127\.0\.0\.1:\d+/)};
	last unless $dash->pumpable;
	usleep(20_000);
}
ok($url, "dashboard listens on $url") or diag("stdout: $dout\nstderr: $derr"), BAIL_OUT('no dashboard');
like($dout, qr/schema pm_pipeline/, 'dashboard found the extension schema in the catalog');
unlike($derr, qr/role can write/, 'dashboard runs as a role that cannot write');
my $dport = ($url =~ /:(\d+)\/$/)[0];

my $http = HTTP::Tiny->new(timeout => 10);

# read-only session: the dashboard's connections have the setting forced on
my $ro = $node->poll_query_until('postgres',
	q{SELECT count(*) >= 2 FROM pg_stat_activity WHERE application_name = 'worker_heartbeat dashboard'});
ok($ro, 'dashboard holds its query and LISTEN connections');

my $r = $http->get("${url}api/summary");
is($r->{status}, 200, '/api/summary answers');
my $summary = eval { decode_json($r->{content}) };
ok($summary && exists $summary->{total_active_workers} && ref $summary->{stats_by_type} eq 'ARRAY',
	'/api/summary is get_worker_health_summary()')
  or diag($r->{content});

# HTTP::Tiny will not send a Host header of our choosing: speak HTTP by hand.
sub status_for_host
{
	my ($hosthdr) = @_;
	my $sock = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $dport, Timeout => 5)
	  or die "connect: $!";
	print $sock "GET /api/summary HTTP/1.1\r\nHost: $hosthdr\r\nConnection: close\r\n\r\n";
	my $line = <$sock> // '';
	close $sock;
	return ($line =~ m{^HTTP/1\.1 (\d+)}) ? $1 : "no answer: $line";
}
is(status_for_host("evil.example:$dport"), 421, 'a request for another host name is refused (DNS rebinding)');
is(status_for_host("localhost:$dport"), 200, 'localhost is a fine host name');
$r = $http->request('POST', "${url}api/summary");
isnt($r->{status}, 200, 'nothing answers a POST');

# --- the browser ---
my $psql = $node->installed_command('psql');

sub run_browser
{
	my ($phase, $shot, %over) = @_;
	unlink $shot;
	my ($bout, $berr) = ('', '');
	my $ok = IPC::Run::run(
		[ 'node', "$browser_dir/dashboard-test.mjs" ],
		'>', \$bout, '2>', \$berr,
		init => sub {
			$ENV{WHD_PHASE}      = $phase;
			$ENV{WHD_URL}        = $url;
			$ENV{WHD_PSQL}       = $psql;
			$ENV{WHD_CONNINFO}   = "host=$host port=$port dbname=postgres";
			$ENV{WHD_SCHEMA}     = 'pm_pipeline';
			$ENV{WHD_TABLE}      = 'public.jobs';
			$ENV{WHD_SCREENSHOT} = $shot;
			$ENV{WHD_PGCTL}      = $node->installed_command('pg_ctl');
			$ENV{WHD_PGDATA}     = $node->data_dir;
			$ENV{WHD_PGLOG}      = $node->logfile;
			$ENV{$_} = $over{$_} for keys %over;
		},
		IPC::Run::timeout(120));
	note($berr);
	my ($json) = $bout =~ /^RESULT (.*)$/m;
	my $res = eval { decode_json($json // '') } // {};
	ok($ok && $res->{ok}, "the browser test ($phase) ran to the end")
	  or diag("stdout: $bout\nerror: " . ($res->{error} // ''));
	return $res;
}

my $shot = "$work/dashboard-after-kill.png";
my $res = run_browser('kill', $shot);
ok(defined $res->{elapsed_ms} && $res->{elapsed_ms} <= 1000,
	'the page showed the killed worker dead and its leases released within a second')
  or diag('elapsed_ms: ' . ($res->{elapsed_ms} // 'never'));
note('kill -> page: ' . ($res->{elapsed_ms} // 'never') . ' ms');
is($res->{leases_shown}, 3, 'the dead worker row shows its 3 leases released');
ok($res->{same_document} && ($res->{navigations_after} // -1) == ($res->{navigations_before} // -2),
	'without a reload');
is_deeply([ sort @{ $res->{pushed} // [] } ], [qw(died leases_released)],
	'the page learnt both from server-sent events');
is_deeply($res->{others}, [qw(processing processing)], 'the other workers are still shown processing');
like($res->{dead_row_text} // '', qr/resize batch 42/, 'the dead row says what the worker was doing');
like($res->{dead_row_text} // '', qr/session ended/, 'and why it died');
is($res->{types_dead}, '1', 'workers by type counts it dead');
is($res->{settled_types_dead}, '1', 'and still does once the page has reloaded its state');
# issue 15 item 6: the page's first hour
ok($res->{loading} && $res->{loading}{visible} && $res->{loading}{text} =~ /Loading/,
	'before the first /api/state the page says it is loading') or diag(explain($res->{loading}));
ok(!$res->{loading_after}, 'and stops saying so once the state arrived');
is_deeply($res->{active_shown}, { ingest => 2, scorer => 1 },
	'"Active" per type counts every live worker (processing ones too), as get_worker_stats().active_workers');
is($res->{kpi_active}, 3, 'and so does the Active workers figure');
ok(@{ $res->{id_white_space} // [] } && !grep({ $_ ne 'nowrap' } @{ $res->{id_white_space} }),
	'worker ids do not wrap') or diag(explain($res->{id_white_space}));
cmp_ok($res->{chart_minutes} // 60, '<=', 15, 'a short history fills the chart (window from the first event, at least 10 minutes)');
is_deeply($res->{console_errors}, [], 'no errors in the browser console');
ok(-s $shot, "screenshot saved: $shot");
diag("dashboard screenshot: $shot") if -s $shot;

# the database agrees with the page
is( $node->safe_psql('postgres',
		q{SELECT count(*) FROM public.jobs WHERE claimed_by = 'ingest-2' OR (state = 'running' AND claimed_by IS NULL)}),
	'0', 'the killed worker holds no lease any more and its jobs are pending again');

# --- /metrics ---
my $metrics;
my $ok_metrics = 0;
$deadline = time + 10;
while (time < $deadline)
{
	$r = $http->get("${url}metrics");
	$metrics = $r->{content};
	# the two workers the browser test ended gracefully die too: wait for all three
	if ($r->{status} == 200
		&& $metrics =~ /^worker_heartbeat_workers\{worker_type="ingest",state="dead"\} 2$/m
		&& $metrics =~ /^worker_heartbeat_workers\{worker_type="scorer",state="dead"\} 1$/m)
	{
		$ok_metrics = 1;
		last;
	}
	usleep(50_000);
}
ok($ok_metrics, '/metrics counts the dead workers by type') or diag($metrics);
like($r->{headers}{'content-type'}, qr{^text/plain; version=0\.0\.4}, '/metrics has the exposition content type');
my $mfile = "$work/metrics.txt";
open(my $mf, '>', $mfile) or die $!;
print $mf $metrics;
close $mf;
my $promtool = `promtool check metrics < '$mfile' 2>&1`;
is($? >> 8, 0, 'promtool check metrics accepts /metrics') or diag($promtool);
like($metrics, qr/^# TYPE worker_heartbeat_deaths_total counter$/m, 'deaths are a counter');
my ($deaths) = $metrics =~ /^worker_heartbeat_deaths_total (\d+)$/m;
ok(defined $deaths && $deaths >= 3, 'deaths_total counts the three deaths') or diag($metrics);
my ($released) = $metrics =~ /^worker_heartbeat_leases_released_total (\d+)$/m;
ok(defined $released && $released >= 8, 'leases_released_total counts every released lease')
  or diag($metrics);
my ($lat_count) = $metrics =~ /^worker_heartbeat_detection_latency_seconds_count\{worker_type="ingest"\} (\d+)$/m;
is($lat_count, 2, 'detection latency summary counts the ingest deaths');
my ($p50) = $metrics =~ /^worker_heartbeat_detection_latency_seconds\{worker_type="ingest",quantile="0.5"\} (\S+)$/m;
ok(defined $p50 && $p50 =~ /^[0-9.e+-]+$/ && $p50 < 1, "detection latency median is under a second ($p50)");
# --- the database restarts under the open page ---
my $shot2 = "$work/dashboard-after-restart.png";
$res = run_browser('restart', $shot2);
ok(grep({ $_ eq 'disconnected' } @{ $res->{statuses} // [] }),
	'the page was told that the database went away');
is($res->{live_after}, 'live', 'and that the dashboard listens again');
ok($res->{oldest} && defined $res->{oldest}{shown} && $res->{oldest}{shown} eq ($res->{oldest}{live} // ''),
	'"Oldest heartbeat" of a type is its oldest live worker\'s (dead ones excluded, as in /metrics)')
  or diag(explain($res->{oldest}));
ok(defined $res->{elapsed_ms} && $res->{elapsed_ms} <= 1000,
	'after the restart, a killed worker is shown dead with its leases released within a second')
  or diag('elapsed_ms: ' . ($res->{elapsed_ms} // 'never'));
note('after restart, kill -> page: ' . ($res->{elapsed_ms} // 'never') . ' ms');
is($res->{banner}, '', 'no error banner is left on the page');
ok(-s $shot2, "screenshot saved: $shot2");

# --- 1.3: fleet control, forensics, databases without a reaper ---
# dbnoreap: its reaper stopped (stop_reaper()): reaper_status() says 'stopped'.
# db12: the extension still at 1.2 (no worker_directives), with its own dashboard.
$node->safe_psql('postgres', 'CREATE DATABASE dbnoreap');
$node->safe_psql('postgres', 'CREATE DATABASE db12');
$node->safe_psql('dbnoreap', q{
CREATE SCHEMA pm_pipeline;
CREATE EXTENSION worker_heartbeat SCHEMA pm_pipeline;
SELECT pm_pipeline.stop_reaper();
});
ok( $node->poll_query_until('postgres',
		q{SELECT state = 'stopped' FROM pm_pipeline.reaper_status() WHERE database = 'dbnoreap'}),
	'reaper_status() shows the stopped reaper of dbnoreap');
$node->safe_psql('db12', q{
CREATE SCHEMA pm_pipeline;
CREATE EXTENSION worker_heartbeat VERSION '1.2' SCHEMA pm_pipeline;
CREATE TABLE public.jobs (id integer PRIMARY KEY, payload text NOT NULL,
    state text NOT NULL DEFAULT 'pending', claimed_by text, lease_expires_at timestamptz);
INSERT INTO public.jobs (id, payload) SELECT g, 'job ' || g FROM generate_series(1, 5) g;
SELECT pm_pipeline.register_lease_table('public.jobs', 'claimed_by', 'lease_expires_at',
                                        '{"state": "pending"}');
GRANT USAGE ON SCHEMA pm_pipeline TO wh_monitor;
GRANT SELECT ON ALL TABLES IN SCHEMA pm_pipeline TO wh_monitor;
GRANT EXECUTE ON FUNCTION pm_pipeline.get_worker_health_summary(), pm_pipeline.get_worker_stats(),
    pm_pipeline.reaper_status(), pm_pipeline.metrics() TO wh_monitor;
});

my $state = eval { decode_json($http->get("${url}api/state")->{content}) } // {};
ok($state->{features}{directives} && $state->{features}{reapers},
	'/api/state of a 1.3 database reads the directives and reaper_status()')
  or diag(explain($state->{features}));
my ($noreap) = grep { $_->{database} eq 'dbnoreap' } @{ $state->{reapers} // [] };
ok($noreap && $noreap->{state} eq 'stopped' && !$noreap->{reaped}, '/api/state marks dbnoreap as not reaped')
  or diag(explain($state->{reapers}));
ok(!grep({ $_->{database} eq 'postgres' && !$_->{reaped} } @{ $state->{reapers} // [] }),
	'and postgres (with a running reaper) as reaped');

my $shot3 = "$work/dashboard-fleet.png";
$res = run_browser('fleet', $shot3);
ok($res->{reapers_visible}, 'the page lists databases without a reaper');
is_deeply([ map { "$_->{database}:$_->{state}" } @{ $res->{reapers} // [] } ], ['dbnoreap:stopped'],
	'exactly dbnoreap, stopped (the running reapers are not listed)');
like($res->{reapers}[0]{text} // '', qr/start_reaper\(\) resumes it/, 'with what to do about it');
like($res->{forensics_text} // '', qr/backend \w/, 'the dead worker\'s row shows its backend at the end (forensics)')
  or diag($res->{forensics_text});
like($res->{forensics_text} // '', qr/last query: UPDATE public\.jobs/, 'and its last query');
ok($res->{fleet_hidden_before}, 'no "Draining and paused" section while no worker is drained or paused');
is_deeply([ sort @{ $res->{directive_pushed} // [] } ], [qw(drain_requested paused paused)],
	'the page learnt the drain and the pauses from server-sent events')
  or diag(explain($res->{directive_pushed}));
note('drain_workers -> page: ' . ($res->{directive_elapsed_ms} // 'never') . ' ms');
like($res->{fleet_count} // '', qr/^1 draining, 1 paused/, 'it shows one worker draining and one paused (drain wins over pause)');
is_deeply([ sort @{ $res->{chips} // [] } ], [qw(draining paused processing processing)],
	'the workers list marks them') or diag(explain($res->{chips}));
like($res->{fleet_rules} // '', qr/drain worker batch-1.*pause type batch/, 'and the rules');
ok($res->{resumed}, 'resume_workers() clears them from the page');
is_deeply($res->{console_errors}, [], 'no errors in the browser console (fleet)');

# A second dashboard on db12 (extension 1.2).
my ($dout2, $derr2) = ('', '');
my $dash2 = IPC::Run::start(
	[ $bin, '--conninfo', "host=$host port=$port dbname=db12 user=wh_monitor", '--listen', '127.0.0.1:0' ],
	'>', \$dout2, '2>', \$derr2);
my $url2;
$deadline = time + 30;
while (time < $deadline)
{
	$dash2->pump_nb;
	last if ($url2) = $dout2 =~ m{(http://127\.0\.0\.1:\d+/)};
	last unless $dash2->pumpable;
	usleep(20_000);
}
ok($url2, "a dashboard on the 1.2 database listens on $url2") or diag("stdout: $dout2\nstderr: $derr2");
my $state12 = eval { decode_json($http->get("${url2}api/state")->{content}) } // {};
is($state12->{extversion}, '1.2', '/api/state of db12: extension 1.2');
ok(!$state12->{features}{directives}, 'without directives (no worker_directives in 1.2)');
my $shot4 = "$work/dashboard-1.2.png";
$res = run_browser('compat', $shot4, WHD_URL => $url2, WHD_CONNINFO => "host=$host port=$port dbname=db12");
is($res->{extversion}, '1.2', 'the page on a 1.2 catalog loads its state');
is($res->{directed}, 0, 'no worker is marked drained or paused there');
ok(defined $res->{elapsed_ms}, 'and a killed worker is shown dead with its leases released, as before');
is($res->{banner}, '', 'no error banner on the 1.2 page');
is_deeply($res->{console_errors}, [], 'no errors in the browser console (1.2)');
$dash2->signal('TERM');
$dash2->finish;

# --- the dashboard ends on SIGTERM ---
$dash->signal('TERM');
$deadline = time + 10;
while ($dash->pumpable && time < $deadline)
{
	$dash->pump_nb;
	usleep(20_000);
}
ok(!$dash->pumpable, 'dashboard exits on SIGTERM');
$dash->pumpable ? $dash->kill_kill : $dash->finish;
is($dash->full_result(0), 0, 'with status 0');
$node->stop;
done_testing();
