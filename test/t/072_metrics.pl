# metrics(): the Prometheus exposition of the fleet, against a real cluster.
# Checks the values by type and state, label escaping, the reaper's counters,
# the detection-latency summary after a real session death, privileges, that
# `promtool check metrics` accepts it (empty and full), and that the
# postgres_exporter custom queries of docs/metrics.md work with Debian's real
# prometheus-postgres-exporter.
use strict;
use warnings;
use FindBin;
use File::Path qw(make_path);
use HTTP::Tiny;
use IPC::Run;
use Time::HiRes qw(time usleep);
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $repo = "$FindBin::RealBin/../..";
my $work = "$PostgreSQL::Test::Utils::tmp_check/metrics";
make_path($work);

sub promtool_ok
{
	my ($text, $name) = @_;
	my $f = "$work/$name.prom";
	open(my $fh, '>', $f) or die $!;
	print $fh $text;
	close $fh;
	my $out = `promtool check metrics < '$f' 2>&1`;
	is($? >> 8, 0, "promtool check metrics accepts the $name exposition") or diag($out, $text);
}

sub sample
{
	my ($text, $line) = @_;
	return ($text =~ /^\Q$line\E (\S+)$/m) ? $1 : undef;
}

my $node = PostgreSQL::Test::Cluster->new('metrics');
$node->init;
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'worker_heartbeat'\n");
$node->start;
$node->safe_psql('postgres', q{
CREATE SCHEMA pm_pipeline;
CREATE EXTENSION worker_heartbeat SCHEMA pm_pipeline;
CREATE TABLE public.jobs (id integer PRIMARY KEY, state text NOT NULL DEFAULT 'pending',
                          claimed_by text, lease_expires_at timestamptz);
INSERT INTO public.jobs (id) SELECT generate_series(1, 10);
SELECT pm_pipeline.register_lease_table('public.jobs', 'claimed_by', 'lease_expires_at', '{"state": "pending"}');
CREATE ROLE wh_monitor LOGIN;
GRANT USAGE ON SCHEMA pm_pipeline TO wh_monitor;
GRANT SELECT ON ALL TABLES IN SCHEMA pm_pipeline TO wh_monitor;
GRANT EXECUTE ON FUNCTION pm_pipeline.metrics(), pm_pipeline.get_worker_stats(),
    pm_pipeline.reaper_status(), pm_pipeline.get_worker_health_summary() TO wh_monitor;
CREATE ROLE nobody_special LOGIN;
});

# --- the function itself ---
is( $node->safe_psql('postgres', q{
SELECT p.prosecdef, p.provolatile, p.proconfig::text
  FROM pg_proc p WHERE p.oid = 'pm_pipeline.metrics()'::regprocedure}),
	'f|s|{"search_path=pg_catalog, pg_temp"}',
	'metrics() is invoker-rights, STABLE, with a fixed search_path');
is( $node->safe_psql('postgres',
		q{SELECT has_function_privilege('nobody_special', 'pm_pipeline.metrics()', 'EXECUTE')}),
	'f', 'PUBLIC cannot execute metrics()');
my ($rc, $out, $err) = $node->psql('postgres', 'SELECT pm_pipeline.metrics()',
	extra_params => [ '-U', 'nobody_special' ]);
like($err, qr/permission denied for (function|schema)/, 'a role without the grants is refused');

# --- empty fleet ---
my $m = $node->safe_psql('postgres', 'SELECT pm_pipeline.metrics()', extra_params => [ '-U', 'wh_monitor' ]);
promtool_ok($m . "\n", 'empty');
for my $fam (
	qw(workers oldest_heartbeat_age_seconds dead_after_seconds reaper_up
	deaths_total leases_released_total detection_latency_seconds))
{
	like($m, qr/^# TYPE worker_heartbeat_$fam /m, "family worker_heartbeat_$fam is declared");
}
unlike($m, qr/^worker_heartbeat_workers\{/m, 'no worker samples without workers');

# --- a fleet ---
$node->safe_psql('postgres', q{
SELECT pm_pipeline.upsert_worker_heartbeat('i1', 'ingest', 'processing', p_current_task => 'a');
SELECT pm_pipeline.upsert_worker_heartbeat('i2', 'ingest', 'processing', p_current_task => 'b');
SELECT pm_pipeline.upsert_worker_heartbeat('i3', 'ingest', 'idle');
SELECT pm_pipeline.upsert_worker_heartbeat('i4', 'ingest', 'active');
SELECT pm_pipeline.stop_worker('i4');
SELECT pm_pipeline.upsert_worker_heartbeat('i5', 'ingest', 'active');
SELECT pm_pipeline.upsert_worker_heartbeat('q1', 'we"ird\type', 'active');
SELECT pm_pipeline.set_worker_type_dead_after('ingest', '42 seconds');
});

# A session-bound worker holding two leases, whose session ends without stop_worker.
my $bg = $node->background_psql('postgres');
$bg->query_safe(q{
SELECT pm_pipeline.upsert_worker_heartbeat('s1', 'scorer', 'processing', p_session_bound => true);
UPDATE public.jobs SET claimed_by = 's1', lease_expires_at = now() + interval '1 hour', state = 'running'
 WHERE id IN (1, 2);
});
$bg->quit;
ok( $node->poll_query_until('postgres',
		q{SELECT count(*) = 1 FROM pm_pipeline.worker_events WHERE event = 'died' AND worker_id = 's1'}),
	'the session-bound worker is declared dead when its session ends');
ok( $node->poll_query_until('postgres',
		q{SELECT count(*) = 0 FROM public.jobs WHERE claimed_by IS NOT NULL}),
	'and its leases are released');

$m = $node->safe_psql('postgres', 'SELECT pm_pipeline.metrics()', extra_params => [ '-U', 'wh_monitor' ]);
promtool_ok($m . "\n", 'fleet');
my %expect = (
	'worker_heartbeat_workers{worker_type="ingest",state="processing"}'   => 2,
	'worker_heartbeat_workers{worker_type="ingest",state="idle"}'         => 1,
	'worker_heartbeat_workers{worker_type="ingest",state="active"}'       => 1,
	'worker_heartbeat_workers{worker_type="ingest",state="stopped"}'      => 1,
	'worker_heartbeat_workers{worker_type="ingest",state="dead"}'         => 0,
	'worker_heartbeat_workers{worker_type="scorer",state="dead"}'         => 1,
	'worker_heartbeat_workers{worker_type="we\"ird\\\\type",state="active"}' => 1,
	'worker_heartbeat_dead_after_seconds{worker_type="ingest"}'           => 42,
	'worker_heartbeat_dead_after_seconds{worker_type="scorer"}'           => 300,
	'worker_heartbeat_detection_latency_seconds_count{worker_type="scorer"}' => 1,
	'worker_heartbeat_reaper_up'                                          => 1,
	'worker_heartbeat_deaths_total'                                       => 1,
	'worker_heartbeat_leases_released_total'                              => 2);
for my $k (sort keys %expect)
{
	is(sample($m, $k), $expect{$k}, "$k = $expect{$k}") or diag($m);
}
my $ingest_sum = 0;
$ingest_sum += $_ for $m =~ /^worker_heartbeat_workers\{worker_type="ingest",state="\w+"\} (\d+)$/mg;
is($ingest_sum, $node->safe_psql('postgres',
		q{SELECT total_workers FROM pm_pipeline.get_worker_stats() WHERE worker_type = 'ingest'}),
	'the five states partition the workers of a type');
my $age = sample($m, 'worker_heartbeat_oldest_heartbeat_age_seconds{worker_type="ingest"}');
ok(defined $age && $age >= 0 && $age < 60, "oldest live ingest heartbeat is recent ($age s)");
ok(!defined sample($m, 'worker_heartbeat_oldest_heartbeat_age_seconds{worker_type="scorer"}'),
	'a type whose workers are all dead has no heartbeat age');
my $p50 = sample($m, 'worker_heartbeat_detection_latency_seconds{worker_type="scorer",quantile="0.5"}');
ok(defined $p50 && $p50 >= 0 && $p50 < 1, "detection latency of a session death is under a second ($p50 s)");
my $sum = sample($m, 'worker_heartbeat_detection_latency_seconds_sum{worker_type="scorer"}');
is($sum, $p50, 'with one death, the sum is that death\'s latency');
my $passes = sample($m, 'worker_heartbeat_reaper_passes_total');
ok(defined $passes && $passes >= 1, "the reaper's passes are counted ($passes)");
my $ts = sample($m, 'worker_heartbeat_reaper_last_pass_timestamp_seconds');
ok(defined $ts && abs($ts - time) < 60, 'the last pass time is a current Unix time');
my $dur = sample($m, 'worker_heartbeat_reaper_last_pass_duration_seconds');
ok(defined $dur && $dur >= 0 && $dur < 5, "the last pass duration is in seconds ($dur)");

# --- postgres_exporter with the queries of docs/metrics.md ---
my $doc = slurp_file("$repo/docs/metrics.md");
my ($yaml) = $doc =~ /<!-- queries\.yaml begin -->\n```yaml\n(.*?)```\n<!-- queries\.yaml end -->/s;
ok($yaml, 'docs/metrics.md has the queries.yaml block');
my $qfile = "$work/queries.yaml";
open(my $qf, '>', $qfile) or die $!;
print $qf $yaml;
close $qf;

my $exporter = `command -v prometheus-postgres-exporter 2>/dev/null`;
chomp $exporter;
ok($exporter, 'prometheus-postgres-exporter is installed')
  or BAIL_OUT('install the packages in scripts/packages.txt');
my $eport = PostgreSQL::Test::Cluster::get_free_port();
my ($eout, $eerr) = ('', '');
my $h = IPC::Run::start(
	[
		$exporter, "--extend.query-path=$qfile", '--disable-default-metrics',
		'--disable-settings-metrics', "--web.listen-address=127.0.0.1:$eport"
	],
	'>', \$eout, '2>', \$eerr,
	init => sub {
		$ENV{DATA_SOURCE_NAME} =
		  'host=' . $node->host . ' port=' . $node->port . ' dbname=postgres user=wh_monitor sslmode=disable';
	});
my $http = HTTP::Tiny->new(timeout => 5);
my $scraped = '';
my $deadline = time + 30;
while (time < $deadline)
{
	my $r = $http->get("http://127.0.0.1:$eport/metrics");
	if ($r->{success} && $r->{content} =~ /^worker_heartbeat_workers_count\{/m)
	{
		$scraped = $r->{content};
		last;
	}
	$h->pump_nb;
	usleep(100_000);
}
$h->kill_kill;
ok($scraped, 'postgres_exporter serves the custom queries') or diag("exporter stderr: $eerr");
like($scraped, qr/^worker_heartbeat_workers_count\{server="[^"]*",state="processing",worker_type="ingest"\} 2$/m,
	'workers by type and state through postgres_exporter');
like($scraped, qr/^worker_heartbeat_reaper_deaths_total\{server="[^"]*"\} 1$/m, 'deaths through postgres_exporter');
like($scraped, qr/^worker_heartbeat_reaper_leases_released_total\{server="[^"]*"\} 2$/m,
	'leases released through postgres_exporter');
like($scraped,
	qr/^worker_heartbeat_detection_latency_seconds\{quantile="0\.5",server="[^"]*",worker_type="scorer"\} \S+$/m,
	'detection latency through postgres_exporter');
like($scraped, qr/^worker_heartbeat_oldest_heartbeat_age_seconds\{server="[^"]*",worker_type="ingest"\} \S+$/m,
	'heartbeat age through postgres_exporter');
unlike($eerr, qr/level=error/, 'postgres_exporter logged no error') or diag($eerr);

# --- 13.6: counters kept incrementally, events_retention, dump/restore ---
# metrics() takes the summary's _sum/_count from worker_event_totals (kept by
# triggers on worker_events), so they survive the retention's deletes and a
# dump/restore; the reaper deletes events older than events_retention in
# batches (2500 rows: three statements of 1000), and 0 keeps everything.
sub latency_lines
{
	my ($db) = @_;
	my $t = $node->safe_psql($db, 'SELECT pm_pipeline.metrics()', extra_params => [ '-U', 'wh_monitor' ]);
	return join("\n", grep { /^worker_heartbeat_detection_latency_seconds_(sum|count)/ } split /\n/, $t);
}
is( $node->safe_psql('postgres', q{
SELECT (SELECT sum(deaths) FROM pm_pipeline.worker_event_totals)
     = (SELECT count(*) FROM pm_pipeline.worker_events WHERE event = 'died' AND detection_latency IS NOT NULL)}),
	't', 'the totals count the died events of the history');

$node->safe_psql('postgres', q{
ALTER SYSTEM SET worker_heartbeat.events_retention = 0;
SELECT pg_reload_conf();
INSERT INTO pm_pipeline.worker_events (occurred_at, event, worker_id, worker_type, detection_latency)
SELECT now() - interval '2 hours' - g * interval '1 second', 'died', 'old' || g, 'old', interval '0.5 seconds'
  FROM generate_series(1, 2500) g;
INSERT INTO pm_pipeline.worker_events (occurred_at, event, worker_id, worker_type, detection_latency)
SELECT now() - interval '30 minutes', 'died', 'new' || g, 'old', interval '0.25 seconds'
  FROM generate_series(1, 3) g;
});
$m = $node->safe_psql('postgres', 'SELECT pm_pipeline.metrics()', extra_params => [ '-U', 'wh_monitor' ]);
is(sample($m, 'worker_heartbeat_detection_latency_seconds_count{worker_type="old"}'), 2503,
	'inserted deaths are counted at once');
is(sample($m, 'worker_heartbeat_detection_latency_seconds_sum{worker_type="old"}'), 1250.75, 'and summed');
is(sample($m, 'worker_heartbeat_detection_latency_seconds{worker_type="old",quantile="0.5"}'), 0.25,
	'quantiles cover the last hour only');
my $before = latency_lines('postgres');

# events_retention = 0: nothing is deleted, for longer than the retention's
# period (10 s) and many reaper passes.
my $t0 = $node->safe_psql('postgres', 'SELECT clock_timestamp()');
ok($node->poll_query_until('postgres', qq{SELECT clock_timestamp() > '$t0'::timestamptz + interval '12 seconds'}),
	'12 s went by');
is($node->safe_psql('postgres', q{SELECT count(*) FROM pm_pipeline.worker_events WHERE worker_type = 'old'}),
	2503, 'events_retention = 0 keeps everything');

$node->safe_psql('postgres', q{
ALTER SYSTEM SET worker_heartbeat.events_retention = '1h';
SELECT pg_reload_conf();
});
ok( $node->poll_query_until('postgres',
		q{SELECT count(*) = 0 FROM pm_pipeline.worker_events WHERE occurred_at < now() - interval '1 hour'}),
	'events older than events_retention are deleted by the reaper');
is($node->safe_psql('postgres', q{SELECT count(*) FROM pm_pipeline.worker_events WHERE worker_type = 'old'}),
	3, 'newer events stay');
ok($node->safe_psql('postgres', q{SELECT count(*) FROM pm_pipeline.worker_events WHERE event = 'died' AND worker_id = 's1'}) == 1,
	'the recent real death stays');
is(latency_lines('postgres'), $before, 'the summary\'s _sum and _count did not change with the deletes');
is( $node->safe_psql('postgres', q{
SELECT deaths || ' ' || latency_us FROM pm_pipeline.worker_event_totals WHERE worker_type = 'old' AND retired}),
	'2500 1250000000', 'the deleted deaths are kept as retired totals');

# TRUNCATE retires everything too (in a transaction rolled back: the history stays for the dump).
is( $node->safe_psql('postgres', q{
BEGIN;
TRUNCATE pm_pipeline.worker_events;
SELECT pm_pipeline.metrics() ~ 'worker_heartbeat_detection_latency_seconds_count\{worker_type="old"\} 2503';
ROLLBACK;}),
	't', 'TRUNCATE keeps the counts');

# Dump and restore into another database: the same totals.
my $dump = "$work/metrics.dump";
command_ok([ 'pg_dump', '-Fc', '-f', $dump, '-d', $node->connstr('postgres') ], 'pg_dump');
$node->safe_psql('postgres', 'CREATE DATABASE restored');
command_ok([ 'pg_restore', '-d', $node->connstr('restored'), $dump ], 'pg_restore');
is(latency_lines('restored'), $before, 'the summary\'s _sum and _count survive dump and restore');
is( $node->safe_psql('restored', q{
SELECT string_agg(worker_type || ':' || retired || ':' || deaths, ',' ORDER BY worker_type, retired)
  FROM pm_pipeline.worker_event_totals WHERE worker_type = 'old'}),
	'old:false:3,old:true:2500', 'live totals rebuilt from the restored events, retired ones restored');
$node->safe_psql('restored', 'SELECT pm_pipeline.stop_reaper()');
$node->safe_psql('postgres', 'DROP DATABASE restored WITH (FORCE)');

# An upgraded 1.1 installation seeds the totals from its history.
$node->safe_psql('postgres', q{
CREATE DATABASE upgraded;
});
$node->safe_psql('upgraded', q{
CREATE SCHEMA wh;
CREATE EXTENSION worker_heartbeat SCHEMA wh VERSION '1.1';
SET search_path = wh;
SELECT stop_reaper();
INSERT INTO worker_events (event, worker_type, detection_latency)
SELECT 'died', 't' || (g % 2), g * interval '1 millisecond' FROM generate_series(1, 10) g;
ALTER EXTENSION worker_heartbeat UPDATE TO '1.2';
});
is( $node->safe_psql('upgraded', q{
SELECT string_agg(worker_type || ':' || deaths || ':' || latency_us, ',' ORDER BY worker_type)
  FROM wh.worker_event_totals}),
	't0:5:30000,t1:5:25000', 'ALTER EXTENSION UPDATE seeds the totals from the existing events');
$node->safe_psql('postgres', 'DROP DATABASE upgraded WITH (FORCE)');

$node->stop;
done_testing();
