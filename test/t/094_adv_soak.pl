# Adversarial soak (issue 13, "what done looks like"). Runs WH_SOAK_SECONDS
# (default 45) of:
#   * a fleet of worker processes (psql running a PL/pgSQL loop, half of them
#     session-bound) that start, beat, claim and complete fenced leases, stop
#     themselves after a random lifetime, are SIGKILLed or pg_terminate_backend'ed
#     by the driver and replaced under new ids;
#   * a session-bound worker whose session is busy in pg_sleep(600) while it
#     holds a lease, whose client is SIGKILLed (13.5);
#   * a transaction open for the whole run (holding back the xmin horizon),
#     which for 5 s also holds a live worker's row (13.2);
#   * bad rows restored as pg_restore does (COPY): a worker with a weird but
#     constraint-valid id, and a leased row with a 100 kB claimed_by (13.1);
#   * a registered table whose trigger refuses the reaper's releases now and
#     then (13.3);
#   * events_retention = 20s, so the retention works during the run (13.6).
# Before the run (13.5): a busy bound session's death is noticed in well
# under its statement's time with the default session_check_interval, and not
# with session_check_interval = 0 (the old behaviour: the check can fail).
# At the end: 0 leases held by dead workers, no backend ended by a signal, no
# server restart, worker_events within retention, metrics() as fast as at the
# start, and the reaper's counters equal to what its events say.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use POSIX ':sys_wait_h';
use Time::HiRes qw(time sleep);

my $SECONDS     = $ENV{WH_SOAK_SECONDS} // 45;
my $WORKERS     = 6;
my $RETENTION_S = 20;
my $BUSY_S      = 5;      # a busy bound session's death is noticed this soon (session_check_interval 1 s)

my $node = PostgreSQL::Test::Cluster->new('soak');
$node->init;
$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'worker_heartbeat'
max_worker_processes = 16
max_connections = 40
worker_heartbeat.reap_interval = '100ms'
worker_heartbeat.dead_after = '2s'
worker_heartbeat.launcher_interval = '1s'
worker_heartbeat.events_retention = '${RETENTION_S}s'
});
$node->start;
my $logdir  = $PostgreSQL::Test::Utils::tmp_check;
my $connstr = $node->connstr('postgres');
sub query { return $node->safe_psql('postgres', $_[0]); }

# Polls until the query returns 't', for at most $seconds.
sub poll_for
{
	my ($sql, $seconds) = @_;
	my $until = time + $seconds;
	while (time < $until)
	{
		return 1 if query($sql) eq 't';
		sleep 0.1;
	}
	return 0;
}

query(q{
CREATE SCHEMA pm_pipeline;
CREATE EXTENSION worker_heartbeat SCHEMA pm_pipeline;
CREATE SCHEMA soak;
CREATE TABLE soak.tasks (
	id               integer PRIMARY KEY,
	state            text NOT NULL DEFAULT 'pending',
	claimed_by       text,
	lease_expires_at timestamptz,
	lease_token      bigint,
	attempts         integer NOT NULL DEFAULT 0
);
INSERT INTO soak.tasks (id) SELECT generate_series(1, 500);
SELECT pm_pipeline.register_lease_table('soak.tasks', p_on_release => '{"state": "pending"}',
	p_token_column => 'lease_token', p_attempts_column => 'attempts');
SELECT pm_pipeline.set_worker_type_dead_after('busy', '10 minutes');

-- 13.3: the table's trigger refuses some of the reaper's releases (not the workers' own updates).
CREATE TABLE soak.flaky (enabled boolean NOT NULL);
INSERT INTO soak.flaky VALUES (true);
CREATE FUNCTION soak.flaky() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	IF OLD.claimed_by IS NOT NULL AND NEW.claimed_by IS NULL
	   AND current_setting('soak.worker', true) IS NULL
	   AND (SELECT f.enabled FROM soak.flaky f) AND random() < 0.1 THEN
		RAISE EXCEPTION 'soak: the flaky trigger refuses to release task %', OLD.id;
	END IF;
	RETURN NEW;
END $$;
CREATE TRIGGER flaky BEFORE UPDATE ON soak.tasks FOR EACH ROW EXECUTE FUNCTION soak.flaky();

-- What the reaper wrote, as it commits: deaths and releases (worker_events
-- itself is pruned by the retention).
CREATE TABLE soak.log (event text, worker_id text, released integer, latency interval,
                       at timestamptz DEFAULT clock_timestamp());
CREATE FUNCTION soak.log_events() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	INSERT INTO soak.log (event, worker_id, released, latency)
	SELECT n.event, n.worker_id, n.released_count, n.detection_latency FROM new_rows n
	 WHERE n.event IN ('died', 'leases_released', 'lease_exhausted');
	RETURN NULL;
END $$;
CREATE TRIGGER soak_log AFTER INSERT ON pm_pipeline.worker_events
	REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION soak.log_events();
});

# --- 13.5: a busy session-bound worker, with and without session_check_interval ---
my $busy_sql = "$logdir/soak_busy.sql";
PostgreSQL::Test::Utils::append_to_file($busy_sql, q{
SELECT pm_pipeline.upsert_worker_heartbeat(current_setting('soak.wid'), 'busy', 'processing', p_session_bound => true);
SELECT id FROM pm_pipeline.claim_leases(NULL::soak.tasks, current_setting('soak.wid'), 1, '10 minutes',
                                        '{"state": "pending"}', '{"state": "claimed"}');
SELECT pg_sleep(600);
});

sub start_busy
{
	my ($wid, $options) = @_;
	my $pid = fork();
	die "fork: $!" unless defined $pid;
	if ($pid == 0)
	{
		open(STDOUT, '>>', "$logdir/soak_$wid.log");
		open(STDERR, '>&', \*STDOUT);
		$ENV{PGAPPNAME} = $wid;
		$ENV{PGOPTIONS} = "-c soak.wid=$wid -c soak.worker=on $options";
		exec('psql', '-X', '-q', '-v', 'ON_ERROR_STOP=1', '-d', $connstr, '-f', $busy_sql) or die "exec psql: $!";
	}
	ok( $node->poll_query_until('postgres', qq{
		SELECT count(*) = 1 FROM pg_stat_activity
		 WHERE application_name = '$wid' AND state = 'active' AND query LIKE 'SELECT pg_sleep(600)%'}),
		"$wid: the session-bound worker holds a lease and is busy in pg_sleep(600)");
	return $pid;
}

# Seconds from now until the worker's lease is back (undef: not within $limit s).
sub kill_and_time
{
	my ($wid, $pid, $limit) = @_;
	my $t0 = query('SELECT clock_timestamp()');
	kill 'KILL', $pid;
	waitpid($pid, 0);
	my $until = time + $limit;
	while (time < $until)
	{
		my $back = query(qq{
			SELECT round(extract(epoch FROM clock_timestamp() - '$t0'::timestamptz)::numeric, 2)
			 WHERE NOT EXISTS (SELECT 1 FROM soak.tasks WHERE claimed_by = '$wid')});
		return $back if $back ne '';
		sleep 0.05;
	}
	return undef;
}

my $busy_pid = start_busy('busy0', '');
my $after = kill_and_time('busy0', $busy_pid, 20);
ok(defined $after && $after < $BUSY_S,
	'13.5: the lease of a busy session-bound worker whose client was SIGKILLed is back in '
	  . ($after // 'more than 20') . " s (< $BUSY_S s), not when pg_sleep(600) ends");
is(query(q{SELECT details->>'cause' FROM pm_pipeline.worker_events WHERE worker_id = 'busy0' AND event = 'died'}),
	'session_ended', '13.5: it died of its session\'s end');

$busy_pid = start_busy('busy_off', '-c worker_heartbeat.session_check_interval=0');
$after = kill_and_time('busy_off', $busy_pid, $BUSY_S + 3);
ok(!defined $after, '13.5: with session_check_interval = 0 the busy session is not noticed (the old behaviour)');
query(q{SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'busy_off'});
ok( $node->poll_query_until('postgres', q{SELECT NOT EXISTS (SELECT 1 FROM soak.tasks WHERE claimed_by = 'busy_off')}),
	'and is once its backend ends');

# A rolled-back binding leaves the session's setting as it was.
is( query(q{
BEGIN;
SELECT pm_pipeline.upsert_worker_heartbeat('rolled_back', 'busy', 'active', p_session_bound => true);
SHOW client_connection_check_interval;
ROLLBACK;
SHOW client_connection_check_interval;
}), "\n1s\n0", '13.5: binding sets client_connection_check_interval; a rollback undoes it');

# --- 13.1: bad rows, restored the way pg_restore loads a dump (COPY) ---
# The worker's id and the lease holder stay within what a NOTIFY payload can
# carry (8000 bytes); the 100 kB holder comes at the end (see there).
my $weird = 'soak "weird" \\\\ id \\t é ☃ ;--';    # COPY text format: \\ and \t are escapes
sub restore_task
{
	my ($id, $holder) = @_;
	query(join("\n",
		'COPY soak.tasks (id, state, claimed_by, lease_expires_at, lease_token) FROM stdin;',
		join("\t", $id, 'claimed', $holder, '2020-01-01 00:00:00+00', 9000000000000000000 + $id),
		'\.', ''));
}
query(join("\n",
	'COPY pm_pipeline.worker_heartbeats (worker_id, worker_type, status, last_heartbeat_at, metadata) FROM stdin;',
	join("\t", $weird, 'soak', 'processing', '2020-01-01 00:00:00+00', '{"restored": true}'),
	'\.', ''));
restore_task(100000, 'y' x 4000);
ok( $node->poll_query_until('postgres', q{
	SELECT status = 'dead' FROM pm_pipeline.worker_heartbeats WHERE worker_id LIKE 'soak "weird"%'}),
	'13.1: the restored worker with a weird id is declared dead');

# --- the soak ---
my $worker_sql = "$logdir/soak_worker.sql";
PostgreSQL::Test::Utils::append_to_file($worker_sql, q{
DO $worker$
DECLARE
	wid   text := current_setting('soak.wid');
	bound boolean := current_setting('soak.bound')::boolean;
	life  integer := current_setting('soak.life')::integer;
	ids   integer[];
	toks  bigint[];
BEGIN
	FOR it IN 1 .. life LOOP
		PERFORM pm_pipeline.upsert_worker_heartbeat(wid, 'soak', 'processing', p_session_bound => bound);
		SELECT array_agg(t.id), array_agg(t.lease_token) INTO ids, toks
		  FROM pm_pipeline.claim_leases(NULL::soak.tasks, wid, 2, '3 seconds',
		                                '{"state": "pending"}', '{"state": "claimed"}') t;
		COMMIT;
		IF ids IS NULL THEN
			PERFORM pg_sleep(0.05);
			CONTINUE;
		END IF;
		FOR i IN 1 .. array_length(ids, 1) LOOP
			PERFORM pg_sleep(random() * 0.05);
			BEGIN
				PERFORM pm_pipeline.complete_lease('soak.tasks', toks[i], '{"state": "pending"}');
			EXCEPTION WHEN SQLSTATE 'WH001' THEN
				NULL;  -- lost it: the reaper took it back
			END;
			COMMIT;
		END LOOP;
	END LOOP;
	PERFORM pm_pipeline.stop_worker(wid);
END
$worker$;
});

my (%slot_of_pid, @pid);
my ($spawned, $generation) = (0, 0);

sub spawn_worker
{
	my ($slot) = @_;
	my $wid   = sprintf('s%dg%d', $slot, $generation++);
	my $bound = $slot % 2 == 0 ? 'true' : 'false';
	my $life  = 20 + int(rand(200));
	my $pid   = fork();
	die "fork: $!" unless defined $pid;
	if ($pid == 0)
	{
		open(STDOUT, '>>', "$logdir/soak_$slot.log");
		open(STDERR, '>&', \*STDOUT);
		$ENV{PGAPPNAME} = "soak_$wid";
		# The loop runs in the server: a backend whose client was SIGKILLed
		# must notice it. Bound workers get that from the extension
		# (session_check_interval); unbound ones ask for it themselves.
		my $check = $bound eq 'true' ? '' : ' -c client_connection_check_interval=200ms';
		$ENV{PGOPTIONS} = "-c soak.wid=$wid -c soak.bound=$bound -c soak.life=$life -c soak.worker=on$check";
		exec('psql', '-X', '-q', '-d', $connstr, '-f', $worker_sql) or die "exec psql: $!";
	}
	$pid[$slot] = $pid;
	$slot_of_pid{$pid} = $slot;
	$spawned++;
}

sub reap_children
{
	while ((my $pid = waitpid(-1, WNOHANG)) > 0)
	{
		my $slot = delete $slot_of_pid{$pid};
		next unless defined $slot;
		$pid[$slot] = undef;
		spawn_worker($slot);
	}
}

# metrics(): milliseconds per call, over 20 calls.
sub metrics_ms
{
	my ($ret, $out, $err) = $node->psql('postgres', q{
DO $$
DECLARE t0 timestamptz := clock_timestamp();
BEGIN
	FOR i IN 1 .. 20 LOOP PERFORM pm_pipeline.metrics(); END LOOP;
	RAISE NOTICE 'ms %', round(extract(epoch FROM clock_timestamp() - t0) * 1000 / 20, 3);
END $$;});
	return $err =~ /ms ([\d.]+)/ ? $1 : 'NaN';
}

my $start_time   = query('SELECT pg_postmaster_start_time()');
my $reaper_pid   = query(q{SELECT pid FROM pm_pipeline.reaper_status() WHERE database = current_database()});
my $metrics_0    = metrics_ms();

# The transaction open for the whole run.
my $open = $node->background_psql('postgres');
$open->set_query_timer_restart();    # the session outlives timeout_default when WH_SOAK_SECONDS is large
$open->query_safe('BEGIN');
$open->query_safe('SELECT pg_catalog.txid_current()');

spawn_worker($_) for 0 .. $WORKERS - 1;
$busy_pid = start_busy('busy1', '');
my $t_start = time;
my ($kills, $terminations, $busy_after, $locked) = (0, 0, undef, 0);
my ($next_kill, $next_term) = (time + 1, time + 2);
my $lock_until;
while (time - $t_start < $SECONDS)
{
	if (time >= $next_kill)
	{
		my @alive = grep { defined $pid[$_] } 0 .. $WORKERS - 1;
		if (@alive) { kill 'KILL', $pid[ $alive[ int(rand(@alive)) ] ]; $kills++; }
		$next_kill = time + 0.5 + rand(1.5);
	}
	if (time >= $next_term)
	{
		$terminations += query(q{
			SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity
			                       WHERE application_name LIKE 'soak\_%' ORDER BY random() LIMIT 1) t});
		$next_term = time + 1 + rand(3);
	}
	# 13.5 in the soak: the busy session's client dies a third into the run.
	if (!defined $busy_after && time - $t_start > $SECONDS / 3)
	{
		$busy_after = kill_and_time('busy1', $busy_pid, 20) // 'never';
	}
	# 13.2: halfway, the open transaction also holds a live worker's row for 5 s.
	if (!$locked && time - $t_start > $SECONDS / 2)
	{
		my $victim = query(q{SELECT worker_id FROM pm_pipeline.v_active_workers WHERE worker_type = 'soak' LIMIT 1});
		if ($victim ne '')
		{
			$open->query_safe('SAVEPOINT hold');
			$open->query_safe("SELECT 1 FROM pm_pipeline.worker_heartbeats WHERE worker_id = '$victim' FOR UPDATE");
			$lock_until = time + 5;
			$locked = 1;
		}
	}
	if ($lock_until && time >= $lock_until)
	{
		$open->query_safe('ROLLBACK TO SAVEPOINT hold');
		$lock_until = undef;
	}
	reap_children();
	sleep 0.05;
}
$open->query_safe('ROLLBACK TO SAVEPOINT hold') if $lock_until;

# The end: every worker is SIGKILLed, the trigger stops refusing.
kill 'KILL', keys %slot_of_pid;
while (%slot_of_pid)
{
	my $pid = waitpid(-1, 0);
	last if $pid <= 0;
	delete $slot_of_pid{$pid};
}
query('UPDATE soak.flaky SET enabled = false');
my $events_run = query('SELECT count(*) FROM soak.log');
diag(sprintf('soak: %d s, %d workers started, %d SIGKILLs, %d terminations, busy session noticed after %s s, '
	  . '%d died/released events', $SECONDS, $spawned, $kills, $terminations, $busy_after, $events_run));

ok($busy_after ne 'never' && $busy_after < $BUSY_S, "13.5: the busy session in the soak was noticed ($busy_after s)");
ok($locked, '13.2: a live worker\'s row was held by the open transaction for 5 s');

# Every worker dies: bound ones at once, the others after dead_after (2 s)
# and a pass. Then 0 leases are held by workers that are not alive (the
# trigger's refusals are retried).
ok(poll_for(q{SELECT count(*) = 0 FROM pm_pipeline.v_active_workers}, 60), 'no worker is alive')
  or diag(query(q{SELECT worker_id, status, last_heartbeat_at FROM pm_pipeline.v_active_workers}));
ok( poll_for(q{
	SELECT count(*) = 0 FROM soak.tasks t
	 WHERE t.claimed_by IS NOT NULL
	   AND t.claimed_by NOT IN (SELECT a.worker_id FROM pm_pipeline.v_active_workers a)}, 60),
	'0 leases held by dead workers')
  or diag(query(q{SELECT id, left(claimed_by, 20), lease_expires_at FROM soak.tasks WHERE claimed_by IS NOT NULL}));

# No crash, no restart.
is(query('SELECT pg_postmaster_start_time()'), $start_time, 'no server restart (pg_postmaster_start_time unchanged)');
my $log = slurp_file($node->logfile);
unlike($log, qr/terminated by signal|was terminated by exception|server processes terminated; reinitializing|buffer overflow/,
	'no backend ended by a signal (server log)');
is(query(q{SELECT pid FROM pm_pipeline.reaper_status() WHERE database = current_database()}), $reaper_pid,
	'the same reaper ran the whole soak');

# 13.6: the history stays within events_retention (the retention runs at most every 10 s).
is(query(qq{SELECT count(*) FROM pm_pipeline.worker_events
            WHERE occurred_at < now() - interval '$RETENTION_S seconds' - interval '15 seconds'}),
	0, 'worker_events holds nothing much older than events_retention');
cmp_ok(query(q{SELECT count(*) FROM pm_pipeline.worker_events WHERE event = 'died'}), '<',
	query(q{SELECT count(*) FROM soak.log WHERE event = 'died'}), 'the retention deleted some deaths')
  if $SECONDS > $RETENTION_S + 15;
is( query(q{SELECT (SELECT sum(deaths) FROM pm_pipeline.worker_event_totals)
                 = (SELECT count(*) FROM soak.log WHERE event = 'died' AND latency IS NOT NULL)}),
	't', 'the metrics totals count every death, deleted ones included');

# metrics() as fast as at the start (loosely: a noisy shared machine).
my $metrics_1 = metrics_ms();
diag("soak: metrics() $metrics_0 ms per call at the start, $metrics_1 ms at the end");
ok($metrics_1 < 3 * $metrics_0 + 20, "metrics() is as fast as at the start ($metrics_0 ms, now $metrics_1 ms)");

# The reaper's counters are what its committed events say (13.4).
my ($dead_n, $released_n) = split /\|/, query(q{
	SELECT workers_declared_dead, leases_released FROM pm_pipeline.reaper_status() WHERE database = current_database()});
my $died_events = query(q{SELECT count(*) FROM soak.log WHERE event = 'died'});
my $released_events = query(q{SELECT coalesce(sum(released), 0) FROM soak.log WHERE event <> 'died'});
diag("soak: reaper counters: $dead_n declared dead, $released_n released; events: $died_events died, "
	  . "$released_events released");
is($dead_n, $died_events, '13.4: reaper_status().workers_declared_dead = the died events written since it started');
is($released_n, $released_events, '13.4: reaper_status().leases_released = the leases its events say it released');

# 13.1: a leased row whose holder is 100 kB long, restored at the end (before
# NOTIFY payloads were bounded it made every pass fail with
# "payload string too long", which would spoil the soak's other checks).
my $log_at = -s $node->logfile;
restore_task(100001, 'x' x 100_000);
my $passes = query(q{SELECT passes FROM pm_pipeline.reaper_status() WHERE database = current_database()});
{
	ok(poll_for(q{SELECT NOT EXISTS (SELECT 1 FROM soak.tasks WHERE id = 100001 AND claimed_by IS NOT NULL)}, 15),
		'13.1: the expired lease of a 100 kB holder is released');
	ok( poll_for(qq{
		SELECT passes > $passes + 5 FROM pm_pipeline.reaper_status() WHERE database = current_database()}, 15),
		'13.1: and the reaper\'s passes go on');
	my $since = substr(slurp_file($node->logfile), $log_at);
	unlike($since, qr/pass failed/, '13.1: without failing');
}
is(query('SELECT pg_postmaster_start_time()'), $start_time, 'still no server restart');

$open->query_safe('COMMIT');
$open->quit;
$node->stop;
done_testing();
