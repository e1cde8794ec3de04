# Fleet control (1.3, issue 16) in the example workers (examples/python/worker.py
# and examples/node/worker.js, thin users of the packages): drained, a worker
# finishes the task it holds, claims nothing more and stops (stop_worker);
# paused, it holds nothing and keeps beating until resumed, then claims again;
# on a table with a checkpoint column, a worker killed with SIGKILL mid-task
# leaves its checkpoint and the next worker resumes from it.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/../../examples/tap";
use PostgreSQL::Test::Utils;
use Test::More;
use WorkerTap;

my $python = '/usr/bin/python3';
ok(run_log([ $python, '-c', 'import psycopg' ]), 'psycopg 3 is importable by /usr/bin/python3')
  or BAIL_OUT('install python3-psycopg');
ok(run_log([ 'node', '--version' ]), 'node is installed') or BAIL_OUT('install nodejs');

my $dir = WorkerTap::node_example_dir();    # npm ci in examples/node

my %worker = (
	python => [ $python, "$WorkerTap::ROOT/examples/python/worker.py" ],
	node => [ 'node', "$dir/worker.js" ]);

my $node = WorkerTap::cluster('examples_fleet');
my %env = WorkerTap::worker_env($node, WORKER_HEARTBEAT_INTERVAL => '0.3', PYTHONUNBUFFERED => '1');
my $tmp = $PostgreSQL::Test::Utils::tmp_check;

# research: a queue whose rows carry a checkpoint (set_lease_checkpoint_column).
$node->safe_psql('postgres', q{
CREATE TABLE public.research (LIKE public.tasks INCLUDING ALL);
ALTER TABLE public.research ADD COLUMN checkpoint jsonb;
SELECT pm_pipeline.register_lease_table('public.research', 'claimed_by', 'lease_expires_at',
    '{"state": "pending"}', p_token_column => 'lease_token', p_attempts_column => 'attempts',
    p_max_attempts => 5, p_on_exhausted => '{"state": "failed"}');
SELECT pm_pipeline.set_lease_checkpoint_column('public.research', 'checkpoint');
});

sub sqlv { my ($sql) = @_; return $node->safe_psql('postgres', $sql); }
sub polled { my ($sql) = @_; return defined WorkerTap::poll_seconds($node, $sql); }

for my $lang (qw(python node))
{
	my @cmd = @{ $worker{$lang} };

	# --- drain: two workers on twenty slow tasks; the operator drains their type.
	sqlv("DELETE FROM tasks");
	WorkerTap::add_tasks($node, 20, "$lang-batch");
	my @pids;
	for my $i (1, 2)
	{
		push @pids, WorkerTap::spawn(
			cmd => [ @cmd, '--type', "${lang}_batch", '--id', "$lang-batch-$i", '--work-ms', '1500', '--session-bound' ],
			env => \%env,
			log => "$tmp/$lang-batch-$i.log",
			dir => $dir);
	}
	ok(polled("SELECT count(DISTINCT claimed_by) = 2 FROM tasks WHERE claimed_by LIKE '$lang-batch-%'"),
		"$lang: both workers hold a task");
	my ($draining, $drain_at) = split /\|/,
	  sqlv("SELECT pm_pipeline.drain_workers(p_worker_type => '${lang}_batch'), now()");
	is($draining, 2, "$lang: drain_workers() matches the two workers");
	is_deeply([ map { WorkerTap::wait_exit($_, 60) } @pids ], [ 0, 0 ], "$lang: both drained workers exit (0)");
	is(sqlv("SELECT string_agg(status, ',' ORDER BY worker_id) FROM pm_pipeline.worker_heartbeats WHERE worker_type = '${lang}_batch'"),
		'stopped,stopped', "$lang: and called stop_worker");
	is(sqlv("SELECT count(*) FROM tasks WHERE claimed_by IS NOT NULL"), 0, "$lang: they hold nothing");
	cmp_ok(sqlv("SELECT count(*) FROM tasks WHERE done_at >= '$drain_at'"), '<=', 2,
		"$lang: after the drain each finished at most the task it held");
	cmp_ok(sqlv("SELECT count(*) FROM tasks WHERE state = 'pending'"), '>', 0, "$lang: and claimed nothing more");
	like(slurp_file("$tmp/$lang-batch-1.log"), qr/draining: claiming no more; stopping/, "$lang: the worker says why it stops");
	is(sqlv("SELECT count(*) FROM pm_pipeline.worker_events WHERE worker_type = '${lang}_batch' AND event = 'drained'"),
		2, "$lang: a drained event for each");
	sqlv("SELECT pm_pipeline.resume_workers(p_worker_type => '${lang}_batch')");

	# --- pause: a worker paused by id holds nothing and beats on; resumed, it claims again.
	sqlv("DELETE FROM tasks");
	WorkerTap::add_tasks($node, 20, "$lang-p");
	my $pid = WorkerTap::spawn(
		cmd => [ @cmd, '--type', "${lang}_p", '--id', "$lang-p", '--work-ms', '300', '--session-bound' ],
		env => \%env,
		log => "$tmp/$lang-p.log",
		dir => $dir);
	ok(polled("SELECT count(*) > 0 FROM tasks WHERE claimed_by = '$lang-p' OR done_by = '$lang-p'"), "$lang: the worker works");
	sqlv("SELECT pm_pipeline.pause_workers(p_worker_id => '$lang-p')");
	ok(polled("SELECT NOT EXISTS (SELECT FROM tasks WHERE claimed_by = '$lang-p')
	           AND (SELECT status = 'idle' FROM pm_pipeline.worker_heartbeats WHERE worker_id = '$lang-p')"),
		"$lang: paused, it holds nothing and is idle");
	my $done_paused = sqlv("SELECT count(*) FROM tasks WHERE done_by = '$lang-p'");
	my $beat = sqlv("SELECT last_heartbeat_at FROM pm_pipeline.worker_heartbeats WHERE worker_id = '$lang-p'");
	ok(polled("SELECT last_heartbeat_at > '$beat' FROM pm_pipeline.worker_heartbeats WHERE worker_id = '$lang-p'"),
		"$lang: and keeps beating");
	is(sqlv("SELECT count(*) FROM tasks WHERE done_by = '$lang-p'"), $done_paused, "$lang: while paused it completed nothing");
	ok(kill(0, $pid), "$lang: and still runs");
	sqlv("SELECT pm_pipeline.resume_workers(p_worker_id => '$lang-p')");
	ok(polled("SELECT count(*) > $done_paused FROM tasks WHERE done_by = '$lang-p'"), "$lang: resumed, it works again");
	kill 'TERM', $pid;
	is(WorkerTap::wait_exit($pid, 60), 0, "$lang: SIGTERM: it finishes and exits 0");

	# --- checkpoint: killed at step >= 3 of 10, the next worker resumes from there.
	sqlv("DELETE FROM research");
	sqlv("INSERT INTO research (payload) VALUES ('$lang research')");
	my $researcher = sub {    # a worker of ten 0.8 s steps on research; returns its pid
		my ($id) = @_;
		return WorkerTap::spawn(
			cmd => [ @cmd, '--table', 'research', '--type', "${lang}_research", '--id', $id, '--work-ms', '8000',
				'--steps', '10', '--session-bound', '--exit-when-empty' ],
			env => \%env,
			log => "$tmp/$id.log",
			dir => $dir);
	};
	my $first = $researcher->("$lang-r1");
	ok(polled("SELECT COALESCE((checkpoint->>'step')::int >= 3, false) FROM research"), "$lang: the worker checkpoints its steps");
	kill 'KILL', $first;
	is(WorkerTap::wait_exit($first, 30), 128 + 9, "$lang: killed with SIGKILL");
	ok(polled("SELECT claimed_by IS NULL FROM research"), "$lang: its lease comes back (session-bound)");
	my $step = sqlv("SELECT checkpoint->>'step' FROM research");
	cmp_ok($step, '>=', 3, "$lang: the checkpoint stays with the row (step $step)");
	my $second = $researcher->("$lang-r2");
	is(WorkerTap::wait_exit($second, 60), 0, "$lang: the next worker finishes and exits 0");
	like(slurp_file("$tmp/$lang-r2.log"), qr/resuming task \d+ from step $step\/10/,
		"$lang: it resumed from the checkpoint (step $step)");
	is(sqlv("SELECT state || ' ' || done_by || ' ' || attempts || ' ' || (checkpoint IS NULL) FROM research"),
		"done $lang-r2 2 true", "$lang: done by the second worker on attempt 2, checkpoint cleared");
}

$node->stop;
done_testing();
