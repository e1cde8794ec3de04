# Chaos: fenced leases under worker kills, a reaper kill and a server restart.
#
# 8 worker processes (psql running a PL/pgSQL loop, half of them session-bound)
# claim and complete tasks from a queue of 3000 with claim_leases /
# extend_lease / complete_lease. Some tasks are slow and outlive their lease
# on purpose, so that the reaper releases them while their worker still runs:
# that worker's completion must then be refused (WH001). A driver kills
# workers with SIGKILL at random (and starts a replacement), terminates the
# reaper once and restarts the server once. It also (issue 13, items 5 and 2)
# SIGKILLs the client of a session-bound worker whose session is busy in
# pg_sleep(600) while it holds a lease: the lease must come back within a few
# seconds, not when the statement ends; and keeps a transaction open for 4 s
# that holds a live worker's row (FOR UPDATE).
#
# At the end: every task was completed exactly once (counted by accepted
# completions, logged by a trigger as they commit), no completion was
# accepted from anyone but the lease's holder with its current token, no task
# is left claimed, every release happened within its bound (deadline + 1 s,
# or the end of an outage + 1 s when the deadline fell inside one) and
# session-bound deaths were detected within a second. The counts are printed.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use POSIX ':sys_wait_h';
use Time::HiRes qw(time sleep);

my $TASKS       = 3000;
my $WORKERS     = 8;
my $TIME_LIMIT  = 150;     # seconds for the whole run
my $KILL_EVERY  = 0.6;     # mean seconds between two SIGKILLs
my $SLACK_S     = 1.0;     # a release may come this late after its deadline
my $BUSY_S      = 5.0;     # a busy bound session's lease is back this soon after its client died
my $HOLD_S      = 4.0;     # the open transaction holds a worker's row this long

my $node = PostgreSQL::Test::Cluster->new('chaos');
$node->init;
$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'worker_heartbeat'
max_worker_processes = 16
max_connections = 40
worker_heartbeat.reap_interval = '100ms'
worker_heartbeat.dead_after = '2s'
worker_heartbeat.launcher_interval = '1s'
});
$node->start;

$node->safe_psql('postgres', qq{
	CREATE SCHEMA pm_pipeline;
	CREATE EXTENSION worker_heartbeat SCHEMA pm_pipeline;
	CREATE SCHEMA chaos;
	CREATE TABLE chaos.tasks (
		id               integer PRIMARY KEY,
		state            text NOT NULL DEFAULT 'pending',
		claimed_by       text,
		lease_expires_at timestamptz,
		lease_token      bigint,
		attempts         integer NOT NULL DEFAULT 0,
		slow             boolean NOT NULL,
		done_by          text,
		done_token       bigint,
		done_seq         bigint
	);
	CREATE SEQUENCE chaos.done_seq;
	CREATE INDEX ON chaos.tasks (claimed_by);
	CREATE INDEX ON chaos.tasks (lease_expires_at);
	CREATE INDEX ON chaos.tasks (lease_token);
	CREATE INDEX ON chaos.tasks (state);
	INSERT INTO chaos.tasks (id, slow) SELECT g, g % 100 = 0 FROM generate_series(1, $TASKS) g;
	-- The busy worker goes silent in pg_sleep(600): only its session's end may kill it.
	SELECT pm_pipeline.set_worker_type_dead_after('busy', '10 minutes');
	SELECT pm_pipeline.register_lease_table('chaos.tasks', p_on_release => '{"state": "pending"}',
		p_token_column => 'lease_token', p_attempts_column => 'attempts');

	-- Every accepted completion, with who held the lease when it committed.
	CREATE TABLE chaos.completions (task integer, worker text, token bigint, holder text, holder_token bigint,
	                                at timestamptz DEFAULT clock_timestamp());
	-- Every release of a lease back to the queue, with its deadline.
	CREATE TABLE chaos.releases (task integer, holder text, deadline timestamptz,
	                             at timestamptz DEFAULT clock_timestamp());
	-- Completions refused as stale (written by the workers).
	CREATE TABLE chaos.refusals (task integer, worker text, token bigint);
	-- Outages (reaper down, server down), in the database's clock.
	CREATE TABLE chaos.outages (what text, from_at timestamptz, to_at timestamptz);
	CREATE FUNCTION chaos.log_change() RETURNS trigger LANGUAGE plpgsql AS \$\$
	BEGIN
		IF NEW.done_seq IS DISTINCT FROM OLD.done_seq THEN  -- a complete_lease() went through
			INSERT INTO chaos.completions (task, worker, token, holder, holder_token)
			VALUES (OLD.id, NEW.done_by, NEW.done_token, OLD.claimed_by, OLD.lease_token);
		ELSIF OLD.claimed_by IS NOT NULL AND NEW.claimed_by IS NULL THEN
			INSERT INTO chaos.releases (task, holder, deadline) VALUES (OLD.id, OLD.claimed_by, OLD.lease_expires_at);
		END IF;
		RETURN NEW;
	END \$\$;
	CREATE TRIGGER log_change BEFORE UPDATE ON chaos.tasks FOR EACH ROW EXECUTE FUNCTION chaos.log_change();
});

# The worker: claim 1-3 tasks, work on each (slow ones sleep past their lease
# on their first attempt; some extend theirs while they work), complete with
# the token; a stale token is logged as a refusal. Ends when every task is done.
my $worker_sql = $PostgreSQL::Test::Utils::tmp_check . '/chaos_worker.sql';
PostgreSQL::Test::Utils::append_to_file($worker_sql, q{
SET client_connection_check_interval = '100ms';
DO $worker$
DECLARE
	wid   text := current_setting('chaos.wid');
	bound boolean := current_setting('chaos.bound')::boolean;
	ids   integer[];
	toks  bigint[];
	slows boolean[];
BEGIN
	LOOP
		PERFORM pm_pipeline.upsert_worker_heartbeat(wid, 'chaos', 'processing', p_session_bound => bound);
		SELECT array_agg(t.id ORDER BY t.lease_token), array_agg(t.lease_token ORDER BY t.lease_token),
		       array_agg(t.slow AND t.attempts = 1 ORDER BY t.lease_token)
		  INTO ids, toks, slows
		  FROM pm_pipeline.claim_leases(NULL::chaos.tasks, wid, 1 + (random() * 2)::int, '1.5 seconds',
		                                '{"state": "pending"}', '{"state": "claimed"}') t;
		COMMIT;
		IF ids IS NULL THEN
			EXIT WHEN NOT EXISTS (SELECT 1 FROM chaos.tasks WHERE state <> 'done');
			PERFORM pg_sleep(0.02);  -- idle: nothing to claim yet
			CONTINUE;
		END IF;
		FOR i IN 1 .. array_length(ids, 1) LOOP
			IF slows[i] THEN
				PERFORM pg_sleep(2.0);  -- outlives the 1.5 s lease: the reaper takes it back
			ELSIF random() < 0.02 THEN
				FOR k IN 1 .. 3 LOOP    -- long, but keeps its lease
					PERFORM pg_sleep(0.3);
					BEGIN
						PERFORM pm_pipeline.extend_lease('chaos.tasks', toks[i], '1.5 seconds');
					EXCEPTION WHEN SQLSTATE 'WH001' THEN
						NULL;  -- lost it (e.g. declared dead): completing will be refused
					END;
					COMMIT;
				END LOOP;
			ELSE
				PERFORM pg_sleep(0.005 + random() * 0.02);
			END IF;
			BEGIN
				PERFORM pm_pipeline.complete_lease('chaos.tasks', toks[i],
					jsonb_build_object('state', 'done', 'done_by', wid, 'done_token', toks[i],
					                   'done_seq', nextval('chaos.done_seq')));
			EXCEPTION WHEN SQLSTATE 'WH001' THEN
				INSERT INTO chaos.refusals VALUES (ids[i], wid, toks[i]);
			END;
			COMMIT;
		END LOOP;
	END LOOP;
END
$worker$;
});

# 13.5: the busy session. No client_connection_check_interval of its own:
# binding the worker sets it (worker_heartbeat.session_check_interval, 1 s).
my $busy_sql = $PostgreSQL::Test::Utils::tmp_check . '/chaos_busy.sql';
PostgreSQL::Test::Utils::append_to_file($busy_sql, q{
SELECT pm_pipeline.upsert_worker_heartbeat('busy1', 'busy', 'processing', p_session_bound => true);
SELECT id FROM pm_pipeline.claim_leases(NULL::chaos.tasks, 'busy1', 1, '10 minutes',
                                        '{"state": "pending"}', '{"state": "claimed"}');
SELECT pg_sleep(600);
});

my $connstr = $node->connstr('postgres');
my $logdir  = $PostgreSQL::Test::Utils::tmp_check;
my (%slot_of_pid, @generation, @pid);
my $spawned = 0;

sub spawn_worker
{
	my ($slot) = @_;
	my $wid   = sprintf('w%dg%d', $slot, $generation[$slot]++);
	my $bound = $slot % 2 == 0 ? 'true' : 'false';
	my $pid   = fork();
	die "fork: $!" unless defined $pid;
	if ($pid == 0)
	{
		open(STDOUT, '>>', "$logdir/chaos_$slot.log");
		open(STDERR, '>&', \*STDOUT);
		$ENV{PGOPTIONS} = "-c chaos.wid=$wid -c chaos.bound=$bound";
		exec('psql', '-X', '-q', '-v', 'ON_ERROR_STOP=1', '-d', $connstr, '-f', $worker_sql)
		  or die "exec psql: $!";
	}
	$pid[$slot] = $pid;
	$slot_of_pid{$pid} = $slot;
	$spawned++;
}

sub reap_children
{
	my @ended;
	while ((my $pid = waitpid(-1, WNOHANG)) > 0)
	{
		my $slot = delete $slot_of_pid{$pid};
		next unless defined $slot;
		$pid[$slot] = undef;
		push @ended, [ $slot, $? ];
	}
	return @ended;
}

sub query { return $node->safe_psql('postgres', $_[0]); }

sub wait_for_reaper
{
	my ($not_pid) = @_;
	my $until = time + 20;
	while (time < $until)
	{
		my ($ret, $pid) = $node->psql('postgres',
			"SELECT pid FROM pg_stat_activity WHERE backend_type = 'worker_heartbeat reaper' AND datname = 'postgres'");
		return $pid if $ret == 0 && $pid ne '' && $pid ne $not_pid;
		sleep 0.05;
	}
	return undef;
}

my $first_reaper = wait_for_reaper('');
ok(defined $first_reaper, 'the reaper runs');

my $busy_pid = fork();
die "fork: $!" unless defined $busy_pid;
if ($busy_pid == 0)
{
	open(STDOUT, '>>', "$logdir/chaos_busy.log");
	open(STDERR, '>&', \*STDOUT);
	$ENV{PGAPPNAME} = 'chaos_busy';
	exec('psql', '-X', '-q', '-v', 'ON_ERROR_STOP=1', '-d', $connstr, '-f', $busy_sql) or die "exec psql: $!";
}
my ($busy_killed_at, $hold, $hold_from, $hold_started, $held) = (undef, undef, undef, undef, 0);

$generation[$_] = 0 for 0 .. $WORKERS - 1;
spawn_worker($_) for 0 .. $WORKERS - 1;

my $start       = time;
my $next_kill   = $start + $KILL_EVERY;
my ($kills, $reaper_killed, $restarted, $server_up, $timed_out) = (0, 0, 0, 1, 0);
my ($done, $reaper_back, $restart_ok) = (0, 0, 0);
while (1)
{
	$done = $server_up ? query("SELECT count(*) FROM chaos.tasks WHERE state = 'done'") : $done;
	last if $done == $TASKS;
	if (time - $start > $TIME_LIMIT) { $timed_out = 1; last; }

	# SIGKILL a random worker now and then; a replacement starts at once.
	if (time >= $next_kill)
	{
		my @alive = grep { defined $pid[$_] } 0 .. $WORKERS - 1;
		if (@alive)
		{
			my $slot = $alive[ int(rand(@alive)) ];
			kill 'KILL', $pid[$slot];
			$kills++;
		}
		$next_kill = time + $KILL_EVERY * (0.5 + rand());
	}

	# Terminate the reaper once, at a fifth of the work.
	if (!$reaper_killed && $done >= $TASKS / 5)
	{
		my $from = query('SELECT clock_timestamp()');
		my $pid  = wait_for_reaper('') // 0;
		query("SELECT pg_terminate_backend($pid)") if $pid;
		my $new = wait_for_reaper($pid);
		$reaper_back = defined $new;
		query("INSERT INTO chaos.outages VALUES ('reaper', '$from', clock_timestamp())");
		note("reaper $pid terminated, " . ($reaper_back ? "replaced by $new" : 'NOT replaced'));
		$reaper_killed = 1;
	}

	# 13.2: a transaction left open on a live worker's row, from a quarter of the work, for $HOLD_S s.
	if (!$hold && !$held && $done >= $TASKS / 4)
	{
		my $victim = query(q{SELECT worker_id FROM pm_pipeline.worker_heartbeats
		                      WHERE worker_type = 'chaos' AND status <> 'dead' ORDER BY random() LIMIT 1});
		$hold = $node->background_psql('postgres');
		$hold->query_safe('BEGIN');
		$hold_from = $hold->query_safe('SELECT clock_timestamp()');
		$hold_from =~ s/^\s+|\s+$//g;
		$hold->query_safe("SELECT 1 FROM pm_pipeline.worker_heartbeats WHERE worker_id = '$victim' FOR UPDATE");
		$hold_started = time;
		note("holding the row of worker $victim in an open transaction");
	}
	if ($hold && time - $hold_started >= $HOLD_S)
	{
		$hold->query_safe('COMMIT');
		$hold->quit;
		$hold = undef;
		$held = 1;
		query("INSERT INTO chaos.outages VALUES ('open transaction', '$hold_from', clock_timestamp())");
	}

	# 13.5: SIGKILL the busy session's client once it sleeps, from a third of the work
	# (after the open transaction, which delays the reaper until 13.2 is fixed).
	if (!defined $busy_killed_at && $held && $done >= $TASKS / 3
		&& query(q{SELECT count(*) FROM pg_stat_activity WHERE application_name = 'chaos_busy'
		             AND state = 'active' AND query LIKE 'SELECT pg_sleep(600)%'}) == 1)
	{
		$busy_killed_at = query('SELECT clock_timestamp()');
		kill 'KILL', $busy_pid;
		note('busy session\'s client killed');
	}

	# Restart the server once, at half of the work, after the open transaction.
	next if $hold;
	if (!$restarted && $held && defined $busy_killed_at && $done >= $TASKS / 2)
	{
		my $from = query('SELECT clock_timestamp()');
		$server_up = 0;
		$node->restart;
		$server_up = 1;
		$restart_ok = defined wait_for_reaper('');
		query("INSERT INTO chaos.outages VALUES ('server', '$from', clock_timestamp())");
		note('server restarted');
		$restarted = 1;
	}

	# Workers that died (killed, or cut off by the restart) are replaced.
	for my $ended (reap_children())
	{
		my ($slot, $status) = @$ended;
		spawn_worker($slot);
	}
	sleep 0.05;
}
my $elapsed = time - $start;

# Stop whatever still runs (workers exit by themselves once all is done).
my $until = time + 10;
while (%slot_of_pid && time < $until) { reap_children(); sleep 0.05; }
kill 'KILL', keys %slot_of_pid;
reap_children();

ok(!$timed_out, "all $TASKS tasks done within $TIME_LIMIT s (took " . sprintf('%.1f', $elapsed) . ' s)');
ok($kills >= 5, "workers were killed with SIGKILL ($kills times)");
ok($reaper_killed && $reaper_back, 'the reaper was terminated once and came back');
ok($restarted && $restart_ok, 'the server was restarted once and its reaper came back');

my $q = sub { query($_[0]) };
my $completed   = $q->("SELECT count(*) FROM chaos.tasks WHERE state = 'done'");
my $accepted    = $q->('SELECT count(*) FROM chaos.completions');
my $twice       = $q->('SELECT count(*) FROM (SELECT task FROM chaos.completions GROUP BY task HAVING count(*) > 1) d');
my $stale_ok    = $q->(
	'SELECT count(*) FROM chaos.completions WHERE holder IS DISTINCT FROM worker OR holder_token IS DISTINCT FROM token');
my $refused     = $q->('SELECT count(*) FROM chaos.refusals');
my $left        = $q->('SELECT count(*) FROM chaos.tasks WHERE claimed_by IS NOT NULL OR lease_expires_at IS NOT NULL');
my $releases    = $q->('SELECT count(*) FROM chaos.releases');
my $late        = $q->(qq{
	SELECT count(*) FROM chaos.releases r
	 WHERE r.at > GREATEST(r.deadline, (SELECT max(o.to_at) FROM chaos.outages o
	                                     WHERE r.deadline BETWEEN o.from_at AND o.to_at)) + interval '$SLACK_S seconds'});
my $latest      = $q->(q{
	SELECT coalesce(round(extract(epoch FROM max(r.at - r.deadline))::numeric, 3), 0) FROM chaos.releases r
	 WHERE NOT EXISTS (SELECT 1 FROM chaos.outages o WHERE r.deadline BETWEEN o.from_at AND o.to_at)});
my $sess_deaths = $q->(q{SELECT count(*) FROM pm_pipeline.worker_events WHERE event = 'died' AND details->>'cause' = 'session_ended'});
my $sess_slow   = $q->(q{
	SELECT count(*) FROM pm_pipeline.worker_events e
	 WHERE e.event = 'died' AND e.details->>'cause' = 'session_ended' AND e.detection_latency > interval '1 second'
	   AND NOT EXISTS (SELECT 1 FROM chaos.outages o WHERE e.occurred_at BETWEEN o.from_at AND o.to_at + interval '2 seconds')});
my $sess_max    = $q->(q{
	SELECT coalesce(round(extract(epoch FROM max(detection_latency))::numeric, 3), 0) FROM pm_pipeline.worker_events
	 WHERE event = 'died' AND details->>'cause' = 'session_ended'});
my $timeouts    = $q->(q{SELECT count(*) FROM pm_pipeline.worker_events WHERE event = 'died' AND details->>'cause' = 'heartbeat_timeout'});

diag(sprintf(
	"chaos: %d tasks in %.1f s; %d workers started, %d SIGKILLs, reaper terminated once, server restarted once\n"
	  . "chaos: accepted completions %d (tasks completed twice: %d), stale completions accepted %d, "
	  . "stale completions refused %d\n"
	  . "chaos: tasks left claimed %d; releases %d, late %d (latest %.3f s after its deadline); "
	  . "session-ended deaths %d (max detection %.3f s, over 1 s: %d), heartbeat timeouts %d",
	$TASKS, $elapsed, $spawned, $kills, $accepted, $twice, $stale_ok, $refused,
	$left, $releases, $late, $latest, $sess_deaths, $sess_max, $sess_slow, $timeouts));

is($completed, $TASKS, 'every task is done');
is($accepted, $TASKS, 'accepted completions: exactly one per task');
is($twice, 0, 'no task was completed twice');
is($stale_ok, 0, 'no stale completion was accepted');
cmp_ok($refused, '>', 0, 'stale completions happened and were refused (fencing was exercised)');
is($left, 0, 'no task is left claimed');
cmp_ok($releases, '>', 0, 'leases were released back to the queue');
is($late, 0, "every release came within its deadline + $SLACK_S s (outages excepted)");
cmp_ok($sess_deaths, '>', 0, 'session-bound workers were killed');
is($sess_slow, 0, 'session-bound deaths were detected within a second');

# 13.5: the busy session's death.
ok(defined $busy_killed_at, 'the busy session-bound worker\'s client was SIGKILLed during its pg_sleep(600)');
# Measured at the release (the died event carries its pass's start time).
my $busy = $q->(qq{
	SELECT round(extract(epoch FROM r.at - '$busy_killed_at'::timestamptz)::numeric, 3)
	  FROM chaos.releases r WHERE r.holder = 'busy1'});
diag("chaos: busy session's lease released $busy s after its client was killed");
ok($busy ne '' && $busy < $BUSY_S, "the busy session's lease was back within $BUSY_S s ($busy s), not when pg_sleep(600) ends");
is($q->(q{SELECT details->>'cause' FROM pm_pipeline.worker_events WHERE event = 'died' AND worker_id = 'busy1'}),
	'session_ended', 'it died of its session\'s end');

# 13.2: the open transaction. The checks above treat it as an outage; these
# say that nothing had to wait for it.
ok($held, "a transaction held a live worker's row for $HOLD_S s");
{
	my $held_late = $q->(qq{
		SELECT count(*) FROM chaos.releases r, chaos.outages o
		 WHERE o.what = 'open transaction' AND r.deadline BETWEEN o.from_at AND o.to_at
		   AND r.at > r.deadline + interval '$SLACK_S seconds'});
	is($held_late, 0, 'releases due during the open transaction came within their bound');
	my $held_slow = $q->(q{
		SELECT count(*) FROM pm_pipeline.worker_events e, chaos.outages o
		 WHERE o.what = 'open transaction' AND e.event = 'died' AND e.details->>'cause' = 'session_ended'
		   AND e.occurred_at BETWEEN o.from_at AND o.to_at + interval '2 seconds'
		   AND e.detection_latency > interval '1 second'});
	is($held_slow, 0, 'session-bound deaths during the open transaction were detected within a second');
}

$node->stop;
done_testing();
