# The Node.js example worker (examples/node/worker.js, the pg package pinned in
# examples/node/package-lock.json) against a preloaded cluster: workers claim
# and complete tasks; one killed with SIGKILL while it holds a lease
# (session-bound) has its lease back within about a second.
use strict;
use warnings;
use File::Copy qw(copy);
use FindBin;
use lib "$FindBin::Bin/../../examples/tap";
use PostgreSQL::Test::Utils;
use Test::More;
use WorkerTap;

ok(run_log([ 'node', '--version' ]), 'node is installed') or BAIL_OUT('install nodejs');

# node_modules: use examples/node's if present; else `npm ci` there when we may
# write it, else in a private copy (the suite may run as another user).
my $dir = "$WorkerTap::ROOT/examples/node";
if (!-d "$dir/node_modules/pg")
{
	if (!-w $dir)
	{
		my $copy = PostgreSQL::Test::Utils::tempdir('node_worker');
		copy("$dir/$_", "$copy/$_") or die "copy $_: $!" for qw(package.json package-lock.json worker.js);
		$dir = $copy;
	}
	local $ENV{npm_config_cache} = PostgreSQL::Test::Utils::tempdir('npm_cache')
	  unless -w ($ENV{HOME} // '/nonexistent');
	local $ENV{npm_config_update_notifier} = 'false';
	my $cmd = "cd '$dir' && (npm ci --offline --no-audit --no-fund || npm ci --no-audit --no-fund)";
	ok(run_log([ 'sh', '-c', $cmd ]), "npm ci in $dir") or BAIL_OUT('npm ci failed');
}
ok(-d "$dir/node_modules/pg", 'the pg package is installed from the lockfile');
my $script = "$dir/worker.js";

my $node = WorkerTap::cluster('worker_node');
my $fenced = WorkerTap::fenced($node);
my %env = WorkerTap::worker_env($node, WORKER_HEARTBEAT_INTERVAL => '0.5');

# Phase 1: three workers share 20 tasks (ids from $NODE_WORKER_WORKER_ID).
WorkerTap::run_to_completion(
	node => $node,
	lang => 'node',
	workers => 3,
	tasks => 20,
	ids => [ map { "node-worker-$_" } 1 .. 3 ],
	dir => $dir,
	cmd => sub { return [ 'node', $script, '--type', 'node_worker', '--work-ms', '50', '--exit-when-empty', '--session-bound' ] },
	env => sub { my $i = shift; return { %env, NODE_WORKER_WORKER_ID => "node-worker-$i" } });
like(slurp_file("$PostgreSQL::Test::Utils::tmp_check/node_worker_1.log"),
	$fenced ? qr/mode=fenced/ : qr/mode=plain/, 'the worker used the fenced-lease API when installed');

# Phase 2: SIGKILL a session-bound worker that holds a lease.
my ($task) = WorkerTap::kill_and_recover(
	node => $node,
	lang => 'node',
	id => 'node-victim',
	dir => $dir,
	cmd => [ 'node', $script, '--type', 'node_worker', '--id', 'node-victim', '--work-ms', '600000', '--session-bound' ],
	env => \%env,
	cause => 'session_ended',
	max_seconds => 1.5);

# Phase 3: another worker finishes the orphaned task.
WorkerTap::finish_orphan(
	node => $node,
	lang => 'node',
	task => $task,
	id => 'node-rescuer',
	dir => $dir,
	cmd => [ 'node', $script, '--type', 'node_worker', '--id', 'node-rescuer', '--work-ms', '10', '--exit-when-empty' ],
	env => \%env);

# Long tasks extend their lease.
WorkerTap::long_task(
	node => $node,
	lang => 'node',
	id => 'node-long',
	dir => $dir,
	cmd => [ 'node', $script, '--id', 'node-long', '--lease-seconds', '1', '--work-ms', '3000', '--exit-when-empty' ],
	env => \%env);

# The schema is configurable and quoted.
WorkerTap::quoted_schema(
	node => $node,
	lang => 'node',
	id => 'node-quoted',
	dir => $dir,
	cmd => [ 'node', $script, '--schema', 'Worker HB', '--id', 'node-quoted', '--work-ms', '10', '--exit-when-empty' ],
	env => \%env);

$node->stop;
done_testing();
