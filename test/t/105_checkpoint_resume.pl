# Progress checkpoints carried across a death (1.3, issue 16 section 2), with
# real worker processes (python3 + Debian's psycopg 3), on a preloaded cluster
# and on one without shared_preload_libraries:
#
# - worker A (session-bound) claims the job, checkpoints steps 1-3 and is
#   SIGKILLed while it holds the lease;
# - the reaper declares A dead (its session ended) and releases the lease: the
#   row is back in the queue with A's last checkpoint;
# - worker B claims it and receives the checkpoint and attempts = 2 (one
#   attempt before it), resumes at step 4 and checkpoints steps 4-5;
# - a zombie (a session that kept A's token) checkpoints late: refused with
#   WH001, B's checkpoint is untouched; again after B completed;
# - B completes: the checkpoint is cleared, the job is done after 2 attempts.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/../../examples/tap";
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use WorkerTap;

my $python = '/usr/bin/python3';    # Debian's, where python3-psycopg lives
ok(run_log([ $python, '-c', 'import psycopg' ]), 'psycopg 3 is importable by /usr/bin/python3')
  or BAIL_OUT('install python3-psycopg');

my $tmp = PostgreSQL::Test::Utils::tempdir('checkpoint_resume');

# The worker: claims one job, resumes after the step of its checkpoint,
# checkpoints each step up to <last>, then either hangs (to be killed) or
# waits for <go file> and completes the job.
my $worker = "$tmp/ckpt_worker.py";
open(my $fh, '>', $worker) or die "$worker: $!";
print $fh <<'PY';
import json, os, sys, time
import psycopg

mode, worker_id, last = sys.argv[1], sys.argv[2], int(sys.argv[3])
conn = psycopg.connect(autocommit=True)
conn.execute("SELECT pm_pipeline.upsert_worker_heartbeat(%s, 'ckpt', 'processing', p_session_bound => true)",
             (worker_id,))
row = conn.execute("SELECT id, lease_token, progress, attempts"
                   "  FROM pm_pipeline.claim_leases(NULL::public.jobs, %s, 1, '1 hour')", (worker_id,)).fetchone()
if row is None:
    print("NOTHING TO CLAIM", flush=True)
    sys.exit(3)
job_id, token, progress, attempts = row
start = progress["step"] if progress else 0
print(f"CLAIMED id={job_id} attempts={attempts} resume_from={start}", flush=True)
for step in range(start + 1, last + 1):
    conn.execute("SELECT pm_pipeline.checkpoint_lease('public.jobs', %s, %s::jsonb)",
                 (token, json.dumps({"step": step, "by": worker_id})))
    print(f"CHECKPOINT {step}", flush=True)
if mode == "hang":
    print("HANGING", flush=True)
    while True:
        time.sleep(1)
go = sys.argv[4]
while not os.path.exists(go):
    time.sleep(0.05)
conn.execute("SELECT pm_pipeline.complete_lease('public.jobs', %s, '{\"state\": \"done\"}')", (token,))
print("COMPLETED", flush=True)
PY
close $fh;

sub run_case
{
	my ($name, $preload) = @_;
	my $node = PostgreSQL::Test::Cluster->new($name);
	$node->init;
	$node->append_conf('postgresql.conf', "worker_heartbeat.reap_interval = '200ms'\n");
	$node->append_conf('postgresql.conf', "shared_preload_libraries = 'worker_heartbeat'\n") if $preload;
	$node->start;
	$node->safe_psql('postgres', q{
		CREATE SCHEMA pm_pipeline;
		CREATE EXTENSION worker_heartbeat SCHEMA pm_pipeline;
		CREATE TABLE public.jobs (
		    id               int PRIMARY KEY,
		    state            text NOT NULL DEFAULT 'pending',
		    progress         jsonb,
		    claimed_by       text,
		    lease_expires_at timestamptz,
		    lease_token      bigint,
		    attempts         integer NOT NULL DEFAULT 0);
		CREATE INDEX ON public.jobs (claimed_by);
		CREATE INDEX ON public.jobs (lease_expires_at);
		CREATE INDEX ON public.jobs (lease_token);
		SELECT pm_pipeline.register_lease_table('public.jobs', p_on_release => '{"state": "pending"}',
		    p_token_column => 'lease_token', p_attempts_column => 'attempts');
		SELECT pm_pipeline.set_lease_checkpoint_column('public.jobs', 'progress');
		INSERT INTO public.jobs (id) VALUES (1);
	});
	my %env = WorkerTap::worker_env($node);

	# Worker A: three checkpoints, then killed while it holds the lease.
	my $log_a = "$tmp/$name-a.log";
	my $a = WorkerTap::spawn(cmd => [ $python, $worker, 'hang', 'ckpt-a', 3 ], env => \%env, log => $log_a);
	ok($node->poll_query_until('postgres',
			"SELECT progress->>'step' = '3' AND claimed_by = 'ckpt-a' FROM public.jobs WHERE id = 1"),
		"$name: worker A checkpointed step 3 under its lease");
	# The zombie: a session that kept A's token.
	my $zombie = $node->background_psql('postgres', on_error_stop => 0);
	$zombie->query_safe("\\set VERBOSITY verbose\nSELECT lease_token AS token FROM public.jobs WHERE id = 1 \\gset");
	kill 'KILL', $a;
	is(WorkerTap::wait_exit($a), 137, "$name: worker A was SIGKILLed");

	# The reaper declares A dead and releases the lease; the checkpoint stays.
	ok($node->poll_query_until('postgres',
			"SELECT status = 'dead' FROM pm_pipeline.worker_heartbeats WHERE worker_id = 'ckpt-a'"),
		"$name: the reaper declared worker A dead");
	ok($node->poll_query_until('postgres', "SELECT claimed_by IS NULL FROM public.jobs WHERE id = 1"),
		"$name: A's lease was released");
	is($node->safe_psql('postgres',
			"SELECT state || ' ' || progress::text || ' ' || (lease_token IS NULL) || ' ' || attempts FROM public.jobs"),
		'pending {"by": "ckpt-a", "step": 3} true 1',
		"$name: the released row kept A's last checkpoint");

	# Worker B resumes from the checkpoint.
	my $log_b = "$tmp/$name-b.log";
	my $go = "$tmp/$name-go";
	my $b = WorkerTap::spawn(cmd => [ $python, $worker, 'wait', 'ckpt-b', 5, $go ], env => \%env, log => $log_b);
	ok($node->poll_query_until('postgres',
			"SELECT progress->>'step' = '5' AND claimed_by = 'ckpt-b' FROM public.jobs WHERE id = 1"),
		"$name: worker B checkpointed step 5");
	my $out_b = slurp_file($log_b);
	like($out_b, qr/^CLAIMED id=1 attempts=2 resume_from=3$/m,
		"$name: B received A's checkpoint and attempts = 2 (one prior attempt)");
	like($out_b, qr/^CHECKPOINT 4\nCHECKPOINT 5$/m, "$name: B resumed at step 4");
	unlike($out_b, qr/^CHECKPOINT [123]$/m, "$name: B did not redo steps 1-3");

	# The zombie's late checkpoint is refused; B's is untouched.
	$zombie->{stderr} = '';
	my (undef, $failed) =
	  $zombie->query(qq{SELECT pm_pipeline.checkpoint_lease('public.jobs', :token, '{"step": 99, "by": "zombie"}')});
	is($failed, 1, "$name: the zombie's late checkpoint failed");
	like($zombie->{stderr}, qr/WH001: lease token \d+ of table public\.jobs is stale/,
		"$name: ... with WH001 (stale token)");
	is($node->safe_psql('postgres', "SELECT progress::text || ' ' || claimed_by FROM public.jobs"),
		'{"by": "ckpt-b", "step": 5} ckpt-b', "$name: B's checkpoint and lease are untouched");

	# B completes: the checkpoint is cleared.
	open(my $touch, '>', $go) or die "$go: $!";
	close $touch;
	is(WorkerTap::wait_exit($b), 0, "$name: worker B exited cleanly");
	like(slurp_file($log_b), qr/^COMPLETED$/m, "$name: B completed the job");
	is($node->safe_psql('postgres',
			"SELECT state || ' ' || (progress IS NULL) || ' ' || (claimed_by IS NULL) || ' ' || attempts FROM public.jobs"),
		'done true true 2', "$name: done after 2 attempts, checkpoint cleared");
	$zombie->{stderr} = '';
	(undef, $failed) = $zombie->query(qq{SELECT pm_pipeline.checkpoint_lease('public.jobs', :token, '{"step": 100}')});
	like($zombie->{stderr}, qr/WH001/, "$name: the zombie is refused after the completion too");
	is($node->safe_psql('postgres', "SELECT progress IS NULL FROM public.jobs"), 't',
		"$name: nothing written by the zombie");
	$zombie->quit;
	$node->stop;
}

run_case('ckpt_preloaded', 1);
run_case('ckpt_not_preloaded', 0);

done_testing();
