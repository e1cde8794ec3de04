# The Node.js example worker (examples/node/worker.js, a thin user of the
# worker-heartbeat package in clients/node, installed by `npm ci` from
# examples/node/package-lock.json) against a preloaded cluster: workers claim
# and complete tasks; one killed with SIGKILL while it holds a lease
# (session-bound) has its lease back within about a second.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/../../examples/tap";
use IPC::Run ();
use PostgreSQL::Test::Utils;
use Test::More;
use WorkerTap;

ok(run_log([ 'node', '--version' ]), 'node is installed') or BAIL_OUT('install nodejs');

my $src = "$WorkerTap::ROOT/examples/node";

# --help works before `npm ci`, explains every option, and prints no stack trace (issue 15).
my ($out, $err) = ('', '');
ok(IPC::Run::run([ 'node', "$src/worker.js", '--help' ], '<', \undef, '>', \$out, '2>', \$err),
	'node worker.js --help exits 0');
like($out, qr/--work-ms N\s+milliseconds of simulated work per task/, '--help describes the options');
is($err, '', '--help writes nothing on stderr');
($out, $err) = ('', '');
IPC::Run::run([ 'node', "$src/worker.js", '--no-such-option' ], '<', \undef, '>', \$out, '2>', \$err);
is($? >> 8, 2, 'an unknown option exits 2');
like($err, qr/^worker\.js: unknown option '--no-such-option' \(try --help\)$/, 'with one line, no stack trace');

# The same option names in Python and Node (the old Python names are hidden aliases).
my %help;
for my $cmd ([ node => 'node', "$src/worker.js" ], [ python => '/usr/bin/python3', "$WorkerTap::ROOT/examples/python/worker.py" ])
{
	my ($lang, @argv) = @$cmd;
	my $text = '';
	IPC::Run::run([ @argv, '--help' ], '<', \undef, '>', \$text);
	$text =~ s/^Environment.*//ms;    # the epilogue names the old aliases
	$help{$lang} = join(' ', sort keys %{ { map { $_ => 1 } $text =~ /(--[a-z][a-z-]*)/g } });
}
is($help{node}, $help{python}, "worker.js and worker.py take the same options ($help{node})");

my $dir = WorkerTap::node_example_dir();
ok(-f "$dir/node_modules/pg/package.json" && -f "$dir/node_modules/worker-heartbeat/lib/index.cjs",
	'pg and worker-heartbeat are installed from the lockfile');
like(slurp_file("$dir/worker.js"), qr/require\('worker-heartbeat'\)/, 'the example uses the worker-heartbeat package');
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
	cmd => [ 'node', $script, '--id', 'node-long', '--lease-ms', '1000', '--work-ms', '3000', '--exit-when-empty' ],
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
