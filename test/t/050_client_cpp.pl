# The C++ client (clients/cpp): its unit tests and pkg-config consumer test run
# through ctest, then real worker processes (clients/cpp/examples/queue_worker)
# against a preloaded cluster: they claim and complete tasks, and one killed
# with SIGKILL while it holds a lease gets it back to the queue within about a
# second (session-bound heartbeat).
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/../../examples/tap";
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes ();
use WorkerTap;

my $src = "$WorkerTap::ROOT/clients/cpp";
my $build = PostgreSQL::Test::Utils::tempdir('client_cpp');

# Build the library, its tests and the example out of tree.
ok(run_log([ 'cmake', '-S', $src, '-B', $build, '-DCMAKE_BUILD_TYPE=RelWithDebInfo',
			'-DCMAKE_CXX_FLAGS=-Werror' ]), 'cmake configures the C++ client');
ok(run_log([ 'cmake', '--build', $build, '-j2' ]), 'the C++ client builds with -Wall -Wextra -Werror')
  or BAIL_OUT('cannot build the C++ client');
my ($ctest_out, $ctest_err) = ('', '');
my $ctest_ok = IPC::Run::run([ 'ctest', '--test-dir', $build, '--output-on-failure' ],
	'>', \$ctest_out, '2>', \$ctest_err);
ok($ctest_ok, 'ctest: GoogleTest unit tests and the pkg-config consumer pass')
  or diag($ctest_out . $ctest_err);
like($ctest_out, qr/pkgconfig_consumer \.+\s+Passed/, 'an out-of-tree program built against the installed library with pkg-config');
like($ctest_out, qr/100% tests passed, 0 tests failed out of (\d+)/, 'no unit test failed');

my $worker = "$build/worker_heartbeat_queue_worker";
ok(-x $worker, 'the example queue worker was built');

my $node = WorkerTap::cluster('client_cpp');
my $fenced = WorkerTap::fenced($node);
note($fenced ? 'extension 1.1: claims go through claim_leases / complete_lease'
	: 'extension without claim_leases: plain UPDATE ... SKIP LOCKED claims');
my %env = WorkerTap::worker_env($node, WORKER_HEARTBEAT_INTERVAL => '0.5');

# Phase 1: three workers share 30 tasks (ids: --id, then $QUEUE_WORKER_WORKER_ID).
WorkerTap::run_to_completion(
	node => $node,
	lang => 'cpp',
	workers => 3,
	tasks => 30,
	ids => [ 'cpp-worker-1', 'cpp-worker-2', 'cpp-worker-3' ],
	cmd => sub {
		my $i = shift;
		return [ $worker, '--work-ms', '50', '--exit-when-empty',
			($i == 1 ? ('--id', 'cpp-worker-1') : ()) ];
	},
	env => sub { my $i = shift; return { %env, QUEUE_WORKER_WORKER_ID => "cpp-worker-$i" } });
like(slurp_file("$PostgreSQL::Test::Utils::tmp_check/cpp_worker_1.log"),
	$fenced ? qr/mode=fenced/ : qr/mode=plain/, 'the worker used the fenced-lease API when installed');

# The typed fenced-lease API (LeaseTable) against the real functions: claim,
# extend, check, complete, fail, WH001 -> StaleLeaseError, SQLSTATE mapping.
WorkerTap::add_tasks($node, 2, 'cpp probe');
my ($probe_out, $probe_err) = ('', '');
my $probe_ok = IPC::Run::run([ "$build/lease_api_probe", $node->connstr('postgres') ],
	'>', \$probe_out, '2>', \$probe_err);
ok($probe_ok, 'lease_api_probe: every check passed') or diag($probe_out . $probe_err);
like($probe_out, qr/second complete is stale \(WH001: /, 'a stale token surfaces as StaleLeaseError with SQLSTATE WH001');
note($probe_out);
$node->safe_psql('postgres', "UPDATE tasks SET state = 'done' WHERE payload LIKE 'cpp probe%'");

# Phase 2: SIGKILL a session-bound worker that holds a lease.
my ($task) = WorkerTap::kill_and_recover(
	node => $node,
	lang => 'cpp',
	id => 'cpp-victim',
	cmd => [ $worker, '--id', 'cpp-victim', '--work-ms', '600000' ],
	env => \%env,
	cause => 'session_ended',
	max_seconds => 1.5);

# Phase 3: another worker takes the orphaned task over and completes it.
WorkerTap::finish_orphan(
	node => $node,
	lang => 'cpp',
	task => $task,
	id => 'cpp-rescuer',
	cmd => [ $worker, '--id', 'cpp-rescuer', '--work-ms', '10', '--exit-when-empty' ],
	env => \%env);

# SIGTERM: the worker finishes its task, calls stop_worker and exits 0.
WorkerTap::add_tasks($node, 1, 'cpp sigterm');
my $log = "$PostgreSQL::Test::Utils::tmp_check/cpp_sigterm.log";
my $pid = WorkerTap::spawn(cmd => [ $worker, '--id', 'cpp-sigterm', '--work-ms', '1500' ], env => \%env, log => $log);
ok(defined WorkerTap::poll_seconds($node,
		"SELECT count(*) = 1 FROM tasks WHERE payload LIKE 'cpp sigterm%' AND claimed_by = 'cpp-sigterm'", 60),
	'cpp: sigterm worker holds a lease');
kill 'TERM', $pid;
is(WorkerTap::wait_exit($pid, 30), 0, 'cpp: SIGTERM -> the worker exits 0');
is($node->safe_psql('postgres', "SELECT state || '/' || done_by FROM tasks WHERE payload LIKE 'cpp sigterm%'"),
	'done/cpp-sigterm', 'cpp: it finished the task it held before stopping');
is($node->safe_psql('postgres', "SELECT status FROM pm_pipeline.worker_heartbeats WHERE worker_id = 'cpp-sigterm'"),
	'stopped', 'cpp: and called stop_worker');

# The seed's behaviour (--on-signal exit): SIGTERM -> stop_worker at once (its
# lease released), then the process dies of the signal.
WorkerTap::add_tasks($node, 1, 'cpp exit-mode');
$log = "$PostgreSQL::Test::Utils::tmp_check/cpp_exit_mode.log";
$pid = WorkerTap::spawn(cmd => [ $worker, '--id', 'cpp-exit', '--on-signal', 'exit', '--work-ms', '600000' ],
	env => \%env, log => $log);
ok(defined WorkerTap::poll_seconds($node,
		"SELECT count(*) = 1 FROM tasks WHERE payload LIKE 'cpp exit-mode%' AND claimed_by = 'cpp-exit'", 60),
	'cpp: exit-mode worker holds a lease');
kill 'TERM', $pid;
is(WorkerTap::wait_exit($pid, 30), 128 + 15, 'cpp: --on-signal exit: the worker dies of SIGTERM');
is($node->safe_psql('postgres', "SELECT status FROM pm_pipeline.worker_heartbeats WHERE worker_id = 'cpp-exit'"),
	'stopped', 'cpp: after calling stop_worker');
is($node->safe_psql('postgres', "SELECT state || '/' || (claimed_by IS NULL) FROM tasks WHERE payload LIKE 'cpp exit-mode%'"),
	'pending/true', 'cpp: which released its lease at once');

# A lease that expires under a worker (no extension): the reaper releases it and
# the late completion is refused (WH001 with fenced leases, a claimed_by check
# on 1.0) instead of overwriting the row.
$node->safe_psql('postgres', "UPDATE tasks SET state = 'done' WHERE state = 'pending'");
WorkerTap::add_tasks($node, 1, 'cpp stale');
$log = "$PostgreSQL::Test::Utils::tmp_check/cpp_stale.log";
$pid = WorkerTap::spawn(
	cmd => [ $worker, '--id', 'cpp-stale', '--lease-ms', '1000', '--work-ms', '5000', '--no-extend', '--max-tasks', '1' ],
	env => \%env, log => $log);
ok(defined WorkerTap::poll_seconds($node,
		"SELECT count(*) = 1 FROM tasks WHERE payload LIKE 'cpp stale%' AND claimed_by IS NULL AND state = 'pending' AND attempts = 1", 60),
	'cpp: the expired lease was released while the worker still worked');
is(WorkerTap::wait_exit($pid, 60), 0, 'cpp: the worker goes on after losing its lease');
like(slurp_file($log), $fenced ? qr/lost the lease of task \d+: ERROR: lease token \d+ .* is stale/ : qr/lost the lease of task \d+/,
	'cpp: the late completion was refused (StaleLeaseError)');
is($node->safe_psql('postgres', "SELECT state || '/' || coalesce(done_by, '-') FROM tasks WHERE payload LIKE 'cpp stale%'"),
	'pending/-', 'cpp: and changed nothing');
$node->safe_psql('postgres', "UPDATE tasks SET state = 'done' WHERE payload LIKE 'cpp stale%'");

# Idle workers LISTEN on the table's channel: when the reaper puts a lease back
# (here: an expired lease of a worker that never existed), an idle worker with a
# 60 s idle wait claims it at once.
if ($fenced)
{
	$node->safe_psql('postgres', "UPDATE tasks SET state = 'done' WHERE state = 'pending'");
	$log = "$PostgreSQL::Test::Utils::tmp_check/cpp_listener.log";
	$pid = WorkerTap::spawn(cmd => [ $worker, '--id', 'cpp-listener', '--idle-ms', '60000', '--max-tasks', '1' ],
		env => \%env, log => $log);
	ok(defined WorkerTap::poll_seconds($node,
			"SELECT status = 'idle' FROM pm_pipeline.worker_heartbeats WHERE worker_id = 'cpp-listener'", 60),
		'cpp: the listener found the queue empty and is idle');
	my $t0 = Time::HiRes::time();
	$node->safe_psql('postgres',
		"INSERT INTO tasks (payload, state, claimed_by, lease_expires_at, lease_token, attempts) VALUES ('cpp wake', 'claimed', 'ghost', now() - interval '1 second', -1, 1)");
	my $woke = WorkerTap::poll_seconds($node,
		"SELECT state = 'done' AND done_by = 'cpp-listener' FROM tasks WHERE payload = 'cpp wake'", 60);
	ok(defined $woke, 'cpp: the released task was claimed and completed by the idle listener') or diag(slurp_file($log));
	cmp_ok(Time::HiRes::time() - $t0, '<', 10, 'cpp: woken by the NOTIFY, long before its 60 s idle wait ended');
	is(WorkerTap::wait_exit($pid, 30), 0, 'cpp: the listener exits 0 after its one task');
}

# Long tasks extend their lease (every half lease).
WorkerTap::long_task(
	node => $node,
	lang => 'cpp',
	id => 'cpp-long',
	cmd => [ $worker, '--id', 'cpp-long', '--lease-ms', '1000', '--work-ms', '3000', '--exit-when-empty' ],
	env => \%env);

# The schema is configurable and quoted.
WorkerTap::quoted_schema(
	node => $node,
	lang => 'cpp',
	id => 'cpp-quoted',
	cmd => [ $worker, '--schema', 'Worker HB', '--id', 'cpp-quoted', '--work-ms', '10', '--exit-when-empty' ],
	env => \%env);

# Heartbeat failures don't stop work: restart the server under a running
# worker; it reconnects (with backoff) and finishes the queue.
WorkerTap::add_tasks($node, 40, 'cpp restart');
$log = "$PostgreSQL::Test::Utils::tmp_check/cpp_restart.log";
$pid = WorkerTap::spawn(cmd => [ $worker, '--id', 'cpp-restart', '--work-ms', '100', '--exit-when-empty' ],
	env => \%env, log => $log);
ok(defined WorkerTap::poll_seconds($node,
		"SELECT count(*) >= 3 FROM tasks WHERE payload LIKE 'cpp restart%' AND done_by = 'cpp-restart'", 60),
	'cpp: restart worker is working');
$node->restart;
is(WorkerTap::wait_exit($pid, 120), 0, 'cpp: the worker survived a server restart and exited 0')
  or diag(slurp_file($log));
is($node->safe_psql('postgres', "SELECT count(*) FROM tasks WHERE payload LIKE 'cpp restart%' AND state = 'done'"),
	40, 'cpp: every task was completed across the restart');
like(slurp_file($log), qr/heartbeat connection restored/, 'cpp: the heartbeat thread reconnected');

$node->stop;
done_testing();
