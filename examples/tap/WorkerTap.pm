# Helpers for the example-worker TAP tests (test/t/05x_*.pl): a preloaded
# cluster with the extension in pm_pipeline and the queue table of
# examples/sql/queue.sql, real worker processes started with fork/exec, exit
# waits and a kill-and-recover measurement. Everything polls; nothing sleeps
# blindly.
package WorkerTap;

use strict;
use warnings;

use Cwd qw(abs_path);
use File::Basename qw(dirname);
use POSIX qw(WNOHANG);
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);

our $ROOT = abs_path(dirname(__FILE__) . '/../..');
my %children;

# examples/node ready to run: `npm ci` there (it installs clients/node as a
# copy, so always afresh), in a private copy of both when the tree is not
# writable; npm's cache lives beside the test's copy of the tree (kept between
# runs). Returns the directory of worker.js.
sub node_example_dir
{
	local $ENV{npm_config_update_notifier} = 'false';
	local $ENV{npm_config_fund} = 'false';
	local $ENV{npm_config_audit} = 'false';
	my $cache = "$ROOT/../npm-cache";
	mkdir $cache unless -d $cache;
	local $ENV{npm_config_cache} = $cache if -d $cache && -w $cache;
	my $src = "$ROOT/examples/node";
	my $dir = $src;
	if (!-w $dir || !-w "$ROOT/clients/node")
	{
		my $copy = PostgreSQL::Test::Utils::tempdir('node_worker');
		mkdir "$copy/examples";
		mkdir "$copy/clients";
		system('cp', '-a', $src, "$copy/examples/node") == 0 or die "cp: $!";
		system('cp', '-a', "$ROOT/clients/node", "$copy/clients/node") == 0 or die "cp: $!";
		$dir = "$copy/examples/node";
	}
	ok(run_log([ 'sh', '-c', "cd '$dir' && (npm ci --offline || npm ci --prefer-offline)" ]), "npm ci in $dir")
	  or BAIL_OUT('npm ci failed');
	return $dir;
}

# A started cluster with shared_preload_libraries = 'worker_heartbeat', the
# extension in schema pm_pipeline and public.tasks registered.
sub cluster
{
	my ($name) = @_;
	my $node = PostgreSQL::Test::Cluster->new($name);
	$node->init;
	$node->append_conf('postgresql.conf',
		"shared_preload_libraries = 'worker_heartbeat'\n");
	$node->start;
	$node->safe_psql('postgres',
		'CREATE SCHEMA pm_pipeline; CREATE EXTENSION worker_heartbeat SCHEMA pm_pipeline;');
	$node->safe_psql('postgres', slurp_file("$ROOT/examples/sql/queue.sql"));
	return $node;
}

# 1 when the 1.1 fenced-lease functions are installed.
sub fenced
{
	my ($node) = @_;
	return $node->safe_psql('postgres',
		"SELECT to_regprocedure('pm_pipeline.claim_leases(anyelement,text,integer,interval,jsonb,jsonb)') IS NOT NULL"
	) eq 't' ? 1 : 0;
}

# Environment for a worker process: libpq / psycopg / node-postgres all read PG*.
sub worker_env
{
	my ($node, %extra) = @_;
	my $user = getpwuid($<);
	return (
		PGHOST => $node->host,
		PGPORT => $node->port,
		PGDATABASE => 'postgres',
		PGUSER => $user,
		USER => $user,
		DATABASE_URL => '',
		%extra);
}

# Starts a program with its output in $log; returns its pid.
sub spawn
{
	my (%o) = @_;    # cmd => [...], env => {...}, log => path, dir => path
	my $pid = fork;
	die "fork: $!" unless defined $pid;
	if ($pid == 0)
	{
		open(STDOUT, '>>', $o{log}) or POSIX::_exit(126);
		open(STDERR, '>&', \*STDOUT) or POSIX::_exit(126);
		open(STDIN, '<', '/dev/null');
		chdir $o{dir} if $o{dir};
		while (my ($k, $v) = each %{ $o{env} || {} })
		{
			if (defined $v && $v ne '') { $ENV{$k} = $v }
			else { delete $ENV{$k} }
		}
		exec @{ $o{cmd} } or POSIX::_exit(127);
	}
	$children{$pid} = 1;
	return $pid;
}

# Waits for $pid to exit; returns its exit code (128+signal when killed), or
# undef after $timeout seconds.
sub wait_exit
{
	my ($pid, $timeout) = @_;
	my $deadline = time + ($timeout // $PostgreSQL::Test::Utils::timeout_default);
	while (time < $deadline)
	{
		my $r = waitpid($pid, WNOHANG);
		if ($r == $pid)
		{
			delete $children{$pid};
			return ($? & 127) ? 128 + ($? & 127) : $? >> 8;
		}
		usleep(20_000);
	}
	return undef;
}

# Polls $query until it returns 't'; returns the seconds it took, or undef.
sub poll_seconds
{
	my ($node, $query, $timeout) = @_;
	my $t0 = time;
	my $deadline = $t0 + ($timeout // $PostgreSQL::Test::Utils::timeout_default);
	while (time < $deadline)
	{
		my ($ret, $out) = $node->psql('postgres', $query);
		return time - $t0 if $ret == 0 && $out eq 't';
		usleep(20_000);
	}
	return undef;
}

sub add_tasks
{
	my ($node, $n, $prefix) = @_;
	$node->safe_psql('postgres',
		"INSERT INTO tasks (payload) SELECT '$prefix ' || g FROM generate_series(1, $n) g");
}

# Phase 1: $n workers from $make_cmd->($i) (each exits when the queue is
# empty) complete $tasks tasks; asserts completions and graceful stops.
sub run_to_completion
{
	my (%o) = @_;    # node, lang, workers, tasks, cmd => sub($i) -> [argv], env, ids => [...]
	my $node = $o{node};
	add_tasks($node, $o{tasks}, "$o{lang} task");
	my @pids;
	for my $i (1 .. $o{workers})
	{
		push @pids,
		  spawn(
			cmd => $o{cmd}->($i),
			env => (ref $o{env} eq 'CODE' ? $o{env}->($i) : $o{env}),
			log => "$PostgreSQL::Test::Utils::tmp_check/$o{lang}_worker_$i.log",
			dir => $o{dir});
	}
	for my $i (0 .. $#pids)
	{
		is(wait_exit($pids[$i], 120), 0, "$o{lang} worker " . ($i + 1) . " exits 0 when the queue is empty")
		  or diag(slurp_file("$PostgreSQL::Test::Utils::tmp_check/$o{lang}_worker_" . ($i + 1) . ".log"));
	}
	is($node->safe_psql('postgres', "SELECT count(*) FROM tasks WHERE payload LIKE '$o{lang} task %' AND state = 'done' AND claimed_by IS NULL AND done_by IS NOT NULL"),
		$o{tasks}, "$o{lang}: all $o{tasks} tasks completed");
	is($node->safe_psql('postgres', "SELECT count(*) FROM tasks WHERE payload LIKE '$o{lang} task %' AND attempts <> 1"),
		0, "$o{lang}: each task claimed exactly once");
	my $ids = join(',', map { "'$_'" } @{ $o{ids} });
	cmp_ok($node->safe_psql('postgres', "SELECT count(DISTINCT done_by) FROM tasks WHERE payload LIKE '$o{lang} task %'"),
		'>=', 2, "$o{lang}: the work was shared between workers");
	is($node->safe_psql('postgres', "SELECT count(*) FROM pm_pipeline.worker_heartbeats WHERE worker_id IN ($ids) AND status = 'stopped'"),
		scalar(@{ $o{ids} }), "$o{lang}: every worker called stop_worker on the way out");
	is($node->safe_psql('postgres', "SELECT count(DISTINCT worker_id) FROM pm_pipeline.worker_events WHERE worker_id IN ($ids) AND event = 'stopped'"),
		scalar(@{ $o{ids} }), "$o{lang}: a 'stopped' event per worker");
	is($node->safe_psql('postgres', "SELECT count(*) FROM pm_pipeline.worker_heartbeats WHERE worker_id IN ($ids) AND started_at IS NOT NULL AND metadata ? 'client' AND metadata ? 'pid'"),
		scalar(@{ $o{ids} }), "$o{lang}: heartbeat rows carry the client's metadata");
}

# Phase 2: a worker claims one slow task, is killed with SIGKILL while it holds
# the lease, and the lease must come back by itself. Returns the seconds from
# the kill to the lease being back (as polled).
sub kill_and_recover
{
	my (%o) = @_;    # node, lang, cmd => [argv], env, id, max_seconds, min_seconds, cause
	my $node = $o{node};
	my $task = $node->safe_psql('postgres',
		"INSERT INTO tasks (payload) VALUES ('$o{lang} slow task') RETURNING id");
	my $log = "$PostgreSQL::Test::Utils::tmp_check/$o{lang}_victim.log";
	my $pid = spawn(cmd => $o{cmd}, env => $o{env}, log => $log, dir => $o{dir});

	ok( defined poll_seconds($node,
			"SELECT claimed_by = '$o{id}' AND state = 'claimed' AND lease_expires_at > now() FROM tasks WHERE id = $task",
			60),
		"$o{lang}: the victim holds the lease of task $task")
	  or diag(slurp_file($log));
	ok( defined poll_seconds($node,
			"SELECT status = 'processing' AND current_task LIKE '%slow task%' AND current_run_id = (SELECT run_id FROM tasks WHERE id = $task) FROM pm_pipeline.worker_heartbeats WHERE worker_id = '$o{id}'",
			60),
		"$o{lang}: update_task shows the task and run id in worker_heartbeats");
	ok( defined poll_seconds($node,
			"SELECT count(*) = 1 FROM pm_pipeline.v_active_workers WHERE worker_id = '$o{id}'", 60),
		"$o{lang}: the victim is listed in v_active_workers");

	my $t0 = time;
	kill 'KILL', $pid;
	is(wait_exit($pid, 30), 128 + 9, "$o{lang}: the victim died of SIGKILL");
	my $back = poll_seconds($node,
		"SELECT claimed_by IS NULL AND state = 'pending' FROM tasks WHERE id = $task", 120);
	ok(defined $back, "$o{lang}: the killed worker's lease came back to the queue without any cleanup call");
	$back //= 999;
	my $event = $node->safe_psql('postgres',
		"SELECT round((extract(epoch FROM max(occurred_at)) - $t0)::numeric, 3) FROM pm_pipeline.worker_events WHERE worker_id = '$o{id}' AND event = 'leases_released'");
	note(sprintf("%s: SIGKILL -> lease back in %.3f s (polled); leases_released event %s s after the kill",
		$o{lang}, $back, $event));
	cmp_ok($back, '<', $o{max_seconds}, "$o{lang}: lease back within $o{max_seconds} s of the kill");
	cmp_ok($back, '>=', $o{min_seconds}, "$o{lang}: and not before $o{min_seconds} s (dead_after)")
	  if $o{min_seconds};
	is($node->safe_psql('postgres',
		"SELECT status || '/' || death_cause FROM pm_pipeline.worker_heartbeats WHERE worker_id = '$o{id}'"),
		"dead/$o{cause}", "$o{lang}: the victim is dead ($o{cause})");
	is($node->safe_psql('postgres',
		"SELECT count(*) FROM pm_pipeline.v_dead_workers WHERE worker_id = '$o{id}'"),
		1, "$o{lang}: the victim is listed in v_dead_workers");
	is($node->safe_psql('postgres',
		"SELECT string_agg(event, ',' ORDER BY event) FROM pm_pipeline.worker_events WHERE worker_id = '$o{id}' AND event IN ('died', 'leases_released')"),
		'died,leases_released', "$o{lang}: 'died' and 'leases_released' events recorded");
	return ($task, $back);
}

# Phase 3: another worker finishes the task the victim left behind.
sub finish_orphan
{
	my (%o) = @_;    # node, lang, task, cmd, env, id, victim
	my $log = "$PostgreSQL::Test::Utils::tmp_check/$o{lang}_rescuer.log";
	my $pid = spawn(cmd => $o{cmd}, env => $o{env}, log => $log, dir => $o{dir});
	is(wait_exit($pid, 120), 0, "$o{lang}: the rescuer exits 0") or diag(slurp_file($log));
	is($o{node}->safe_psql('postgres', "SELECT state || '/' || done_by || '/' || attempts FROM tasks WHERE id = $o{task}"),
		"done/$o{id}/2", "$o{lang}: the orphaned task was claimed again and completed by the rescuer");
}

# A task longer than its lease: the worker extends the lease while it works
# (without that, the reaper would release the row after 1 s and the completion
# would be refused), so it completes on its first attempt.
sub long_task
{
	my (%o) = @_;    # node, lang, id, cmd (lease 1 s, work 3 s, exit when empty), env, dir
	my $node = $o{node};
	$node->safe_psql('postgres', "UPDATE tasks SET state = 'done' WHERE state = 'pending'");    # an empty queue
	my $task = $node->safe_psql('postgres', "INSERT INTO tasks (payload) VALUES ('$o{lang} long task') RETURNING id");
	my $log = "$PostgreSQL::Test::Utils::tmp_check/$o{lang}_long.log";
	my $pid = spawn(cmd => $o{cmd}, env => $o{env}, log => $log, dir => $o{dir});
	is(wait_exit($pid, 60), 0, "$o{lang}: the long-task worker exits 0") or diag(slurp_file($log));
	is($node->safe_psql('postgres', "SELECT state || '/' || done_by || '/' || attempts FROM tasks WHERE id = $task"),
		"done/$o{id}/1", "$o{lang}: a task three times longer than its lease completed on its first attempt (lease extended)")
	  or diag(slurp_file($log));
}

# A worker against a second database whose extension lives in the schema
# "Worker HB" (needs quotes): it completes the queue and stops there.
sub quoted_schema
{
	my (%o) = @_;    # node, lang, id, cmd (with --schema 'Worker HB'), env, dir
	my $node = $o{node};
	my $db = "quoted_$o{lang}";
	$node->safe_psql('postgres', "CREATE DATABASE $db");
	my $qsql = slurp_file("$ROOT/examples/sql/queue.sql");
	$qsql =~ s/pm_pipeline\./"Worker HB"./g;
	$node->safe_psql($db, 'CREATE SCHEMA "Worker HB"; CREATE EXTENSION worker_heartbeat SCHEMA "Worker HB";');
	$node->safe_psql($db, $qsql);
	$node->safe_psql($db, "INSERT INTO tasks (payload) VALUES ('quoted 1'), ('quoted 2')");
	my $log = "$PostgreSQL::Test::Utils::tmp_check/$o{lang}_quoted.log";
	my $pid = spawn(cmd => $o{cmd}, env => { %{ $o{env} }, PGDATABASE => $db }, log => $log, dir => $o{dir});
	is(wait_exit($pid, 60), 0, qq{$o{lang}: a worker for schema "Worker HB" exits 0}) or diag(slurp_file($log));
	is($node->safe_psql($db, "SELECT count(*) FROM tasks WHERE state = 'done' AND done_by = '$o{id}'"),
		2, "$o{lang}: it completed both tasks");
	is($node->safe_psql($db, qq{SELECT status FROM "Worker HB".worker_heartbeats WHERE worker_id = '$o{id}'}),
		'stopped', "$o{lang}: its heartbeats and stop_worker went to the quoted schema");
}

END
{
	kill 'KILL', $_ for keys %children;
}

1;
