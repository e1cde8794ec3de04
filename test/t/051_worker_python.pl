# The Python example worker (examples/python/worker.py, a thin user of the
# worker_heartbeat package in clients/python; psycopg 3 from Debian's
# python3-psycopg) against a preloaded cluster: workers claim and complete
# tasks; one killed with SIGKILL while it holds a lease (not session-bound)
# is dead after its type's dead_after and its lease goes back to the queue.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/../../examples/tap";
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run ();
use WorkerTap;

my $python = '/usr/bin/python3';    # Debian's, where python3-psycopg lives
ok(run_log([ $python, '-c', 'import psycopg' ]), 'psycopg 3 is importable by /usr/bin/python3')
  or BAIL_OUT('install python3-psycopg');
my $script = "$WorkerTap::ROOT/examples/python/worker.py";

# --help explains every option (issue 15); the old option names still work.
my ($help_out, $help_err) = ('', '');
ok(IPC::Run::run([ $python, $script, '--help' ], '<', \undef, '>', \$help_out, '2>', \$help_err),
	'worker.py --help exits 0');
like($help_out, qr/--work-ms N\s+milliseconds of simulated work per task/, '--help describes the options');
is($help_err, '', '--help writes nothing on stderr');
like(slurp_file($script), qr/^from worker_heartbeat import /m, 'the example imports the worker_heartbeat package');

my $node = WorkerTap::cluster('worker_python');
my $fenced = WorkerTap::fenced($node);
my %env = WorkerTap::worker_env($node, WORKER_HEARTBEAT_INTERVAL => '0.5', PYTHONUNBUFFERED => '1');

# Phase 1: three workers share 20 tasks (ids from $COMPANY_RESEARCH_WORKER_ID, as in the seed;
# --work-seconds is the old name of --work-ms, kept as an alias).
WorkerTap::run_to_completion(
	node => $node,
	lang => 'python',
	workers => 3,
	tasks => 20,
	ids => [ map { "company-research-py-$_" } 1 .. 3 ],
	cmd => sub { return [ $python, $script, '--work-seconds', '0.05', '--exit-when-empty' ] },
	env => sub { my $i = shift; return { %env, COMPANY_RESEARCH_WORKER_ID => "company-research-py-$i" } });
like(slurp_file("$PostgreSQL::Test::Utils::tmp_check/python_worker_1.log"),
	$fenced ? qr/mode=fenced/ : qr/mode=plain/, 'the worker used the fenced-lease API when installed');

# Phase 2: not session-bound, so death comes from silence: dead_after 2 s for
# this worker type, heartbeats every 0.5 s.
$node->safe_psql('postgres', "SELECT pm_pipeline.set_worker_type_dead_after('company_research', '2 seconds')");
my ($task) = WorkerTap::kill_and_recover(
	node => $node,
	lang => 'python',
	id => 'py-victim',
	cmd => [ $python, $script, '--id', 'py-victim', '--work-ms', '600000' ],
	env => \%env,
	cause => 'heartbeat_timeout',
	min_seconds => 1.4,    # dead_after minus one heartbeat interval, minus slack
	max_seconds => 6);     # dead_after + one reap interval (1 s) + slack

# Phase 3: a session-bound rescuer finishes the orphaned task.
WorkerTap::finish_orphan(
	node => $node,
	lang => 'python',
	task => $task,
	id => 'py-rescuer',
	cmd => [ $python, $script, '--id', 'py-rescuer', '--work-ms', '10', '--exit-when-empty', '--session-bound' ],
	env => \%env);

# A session-bound Python worker killed with SIGKILL: back within about a second.
$node->safe_psql('postgres', "SELECT pm_pipeline.set_worker_type_dead_after('company_research', NULL)");
WorkerTap::kill_and_recover(
	node => $node,
	lang => 'python-bound',
	id => 'py-bound-victim',
	cmd => [ $python, $script, '--id', 'py-bound-victim', '--work-ms', '600000', '--session-bound' ],
	env => \%env,
	cause => 'session_ended',
	max_seconds => 1.5);

# Long tasks extend their lease.
WorkerTap::long_task(
	node => $node,
	lang => 'python',
	id => 'py-long',
	cmd => [ $python, $script, '--id', 'py-long', '--lease-ms', '1000', '--work-ms', '3000', '--exit-when-empty' ],
	env => \%env);

# The schema is configurable and quoted.
WorkerTap::quoted_schema(
	node => $node,
	lang => 'python',
	id => 'py-quoted',
	cmd => [ $python, $script, '--schema', 'Worker HB', '--id', 'py-quoted', '--work-ms', '10', '--exit-when-empty' ],
	env => \%env);

$node->stop;
done_testing();
