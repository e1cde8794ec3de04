# The npm package (clients/node, `worker-heartbeat`): its node --test suite
# runs here, on this PostgreSQL major, and each top-level test becomes one TAP
# assertion. The suite starts its own clusters with initdb / pg_ctl from the
# pg_config on PATH (the server under test): kill -9 -> lease back; SIGTERM /
# SIGINT -> stop_worker and the leases released at once; the database
# restarted under a beating worker; concurrent task updates; WH001 ->
# StaleLeaseError; 63-bit tokens as BigInt; and `npm pack`, `npm install
# <tarball>` in a fresh project, then the original design's snippet in Node,
# with require and with import (issue 19).
use strict;
use warnings;
use File::Spec;
use FindBin;
use PostgreSQL::Test::Utils;
use Test::More;

my $root = File::Spec->rel2abs("$FindBin::Bin/../..");
ok(run_log([ 'node', '--version' ]), 'node is installed') or BAIL_OUT('install nodejs');
ok(run_log([ 'npm', '--version' ]), 'npm is installed') or BAIL_OUT('install npm');

# npm's cache: beside the test's copy of the tree (kept between runs, so a slow
# or absent registry costs nothing after the first run), else npm's default.
local $ENV{npm_config_update_notifier} = 'false';
local $ENV{npm_config_fund} = 'false';
local $ENV{npm_config_audit} = 'false';
my $cache = "$root/../npm-cache";
mkdir $cache unless -d $cache;
local $ENV{npm_config_cache} = $cache if -d $cache && -w $cache;

my $pkg = "$root/clients/node";
if (!-w $pkg)
{
	my $copy = PostgreSQL::Test::Utils::tempdir('client_node');
	system('cp', '-a', "$pkg/.", $copy) == 0 or die "cp: $!";
	$pkg = $copy;
}
ok(run_log([ 'sh', '-c', "cd '$pkg' && (npm ci --offline || npm ci --prefer-offline)" ]),
	'npm ci in clients/node (pg from the lockfile)')
  or BAIL_OUT('npm ci failed');

my ($pg_config) = grep { -x } map { "$_/pg_config" } split /:/, $ENV{PATH};
ok($pg_config, "pg_config on PATH: $pg_config");

my $out = "$PostgreSQL::Test::Utils::tmp_check/node_test.tap";
{
	local $ENV{PG_CONFIG} = $pg_config;
	delete local $ENV{DATABASE_URL};
	delete local $ENV{PGHOST};
	delete local $ENV{PGPORT};
	my $rc = system("cd '$pkg' && node --test --test-reporter=tap test/*.test.js >'$out' 2>&1");
	is($rc >> 8, 0, 'node --test exits 0') or diag(slurp_file($out));
}

# One assertion per top-level test (the runner's own TAP, not indented).
my $n = 0;
for my $line (split /\n/, slurp_file($out))
{
	next unless $line =~ /^(not ok|ok) \d+ - (.*?)(?: # (SKIP|TODO).*)?$/;
	my ($status, $name, $directive) = ($1, $2, $3);
	next if $name =~ m{^/} || $name =~ /\.test\.js$/;    # a file's own line (older node)
	$n++;
	if ($directive && $directive eq 'SKIP') { SKIP: { skip("node --test: $name", 1); } next; }
	ok($status eq 'ok', "node --test: $name");
}
cmp_ok($n, '>=', 17, "node --test ran the whole suite ($n tests)");

done_testing();
