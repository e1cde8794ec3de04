# Death forensics (issue 16, section 3): the died event's details carry a
# "forensics" object saying what the worker was doing, preloaded and not.
#
# - a session-bound worker whose client is SIGKILLed while its backend runs a
#   query: state active, the query text (clipped to 256 bytes), open
#   transaction, snapshot taken at session end;
# - one killed while idle in a transaction: state "idle in transaction",
#   xact_start, open_transaction true (the hook runs before ShutdownPostgres
#   aborts the transaction);
# - one that disconnects while idle: no open transaction;
# - a timeout death: last status, current task, lease deadline, silence; and
#   one whose bound backend still runs: pg_stat_activity read live (PgSleep);
# - NOTIFY payloads: forensics without the query text, bounded; none with
#   notify_payload = minimal;
# - forensics_query_text = off leaves the query out.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);

my $S = 'pm_pipeline';

sub forensics
{
	my ($node, $worker, $path) = @_;
	return $node->safe_psql('postgres', qq{
		SELECT details #>> '{forensics,$path}' FROM $S.worker_events
		 WHERE event = 'died' AND worker_id = '$worker' ORDER BY event_id DESC LIMIT 1});
}

sub wait_died
{
	my ($node, $worker) = @_;
	return $node->poll_query_until('postgres',
		"SELECT count(*) > 0 FROM $S.worker_events WHERE event = 'died' AND worker_id = '$worker'");
}

# A client bound to worker $id; returns (client, backend pid).
sub bound_client
{
	my ($node, $id, $type, $task) = @_;
	my $c = $node->background_psql('postgres', on_error_stop => 0);
	$c->query_safe(qq{SELECT $S.upsert_worker_heartbeat('$id', '$type', 'processing',
		p_current_task => '$task', p_session_bound => true)});
	my $pid = $c->query_safe('SELECT pg_backend_pid()');
	chomp $pid;
	return ($c, $pid);
}

# Sends a statement without waiting for its end.
sub send_nowait
{
	my ($c, $sql) = @_;
	$c->{stdin} .= "$sql\n";
	$c->{run}->pump_nb;
}

sub run_mode
{
	my ($preload) = @_;
	my $mode = $preload ? 'preloaded' : 'not preloaded';
	my $node = PostgreSQL::Test::Cluster->new($preload ? 'forensics_pre' : 'forensics_nopre');
	$node->init;
	$node->append_conf('postgresql.conf', qq{
max_worker_processes = 16
worker_heartbeat.reap_interval = '200ms'
worker_heartbeat.launcher_interval = '1s'
worker_heartbeat.session_check_interval = '200ms'
});
	$node->append_conf('postgresql.conf', "shared_preload_libraries = 'worker_heartbeat'\n") if $preload;
	$node->start;
	$node->safe_psql('postgres', qq{
		CREATE SCHEMA $S;
		CREATE EXTENSION worker_heartbeat SCHEMA $S;
		CREATE TABLE public.jobs (id int PRIMARY KEY, claimed_by text, lease_expires_at timestamptz);
		INSERT INTO public.jobs SELECT g FROM generate_series(1, 10) g;
		SELECT $S.set_worker_type_dead_after('fast', '1 second');
	});

	# A listener for the NOTIFY payloads.
	my $listener = $node->background_psql('postgres');
	$listener->query_safe('LISTEN worker_heartbeat');

	# --- killed while a query runs ---------------------------------------------
	my $long = 'SELECT pg_sleep(600) /* ' . ('x' x 600) . ' */';
	my ($c1, $pid1) = bound_client($node, 'fa-active', 'slow', 'crunching-42');
	send_nowait($c1, "$long;");
	ok($node->poll_query_until('postgres',
			"SELECT state = 'active' AND query LIKE 'SELECT pg_sleep(600)%' FROM pg_stat_activity WHERE pid = $pid1"),
		"$mode: the bound backend runs pg_sleep");
	$c1->{run}->signal('KILL');
	eval { $c1->{run}->finish };
	ok(wait_died($node, 'fa-active'), "$mode: a worker killed during a query is declared dead");
	is(forensics($node, 'fa-active', 'cause'), 'session_ended', "$mode: cause session_ended");
	is(forensics($node, 'fa-active', 'snapshot'), 'session_end', "$mode: snapshot taken at session end");
	is(forensics($node, 'fa-active', 'backend,state'), 'active', "$mode: state active");
	my $query = forensics($node, 'fa-active', 'backend,query');
	like($query, qr/^SELECT pg_sleep\(600\) \/\* x+/, "$mode: the query text");
	cmp_ok(length($query), '<=', 256, "$mode: the query text clipped to 256 bytes");
	is(forensics($node, 'fa-active', 'backend,open_transaction'), 'true', "$mode: a running statement is a transaction");
	isnt(forensics($node, 'fa-active', 'backend,query_start'), '', "$mode: query_start");
	is(forensics($node, 'fa-active', 'last_status'), 'processing', "$mode: last status");
	is(forensics($node, 'fa-active', 'current_task'), 'crunching-42', "$mode: current task");
	is(forensics($node, 'fa-active', 'session_pid'), $pid1, "$mode: the bound pid");
	like(forensics($node, 'fa-active', 'silent_for'), qr/^[0-9.]+$/, "$mode: silent_for in seconds");

	# The NOTIFY of that death: forensics without the query text.
	my $notes = '';
	for (1 .. 50)
	{
		$notes .= $listener->query_safe('SELECT 1');
		last if $notes =~ /"event":"died"[^\n]*fa-active/;
		usleep(100_000);
	}
	my ($payload) = $notes =~ /payload "(\{"event":"died"[^\n]*"fa-active"[^\n]*\})" received/;
	ok(defined $payload, "$mode: a NOTIFY for the died event");
	$payload //= '';
	like($payload, qr/"forensics":\{[^\n]*"state":"active"/, "$mode: the payload carries the forensics");
	unlike($payload, qr/pg_sleep/, "$mode: but not the query text");
	cmp_ok(length($payload), '<', 2000, "$mode: the payload is bounded");

	# --- killed while idle in a transaction --------------------------------------
	my ($c2, $pid2) = bound_client($node, 'fa-xact', 'slow', 'txn-task');
	send_nowait($c2, "BEGIN; UPDATE public.jobs SET claimed_by = 'fa-xact' WHERE id = 2;");
	ok($node->poll_query_until('postgres',
			"SELECT state = 'idle in transaction' FROM pg_stat_activity WHERE pid = $pid2"),
		"$mode: the bound backend is idle in transaction");
	$c2->{run}->signal('KILL');
	eval { $c2->{run}->finish };
	ok(wait_died($node, 'fa-xact'), "$mode: a worker killed in a transaction is declared dead");
	is(forensics($node, 'fa-xact', 'backend,state'), 'idle in transaction', "$mode: state idle in transaction");
	is(forensics($node, 'fa-xact', 'backend,open_transaction'), 'true', "$mode: open_transaction true");
	isnt(forensics($node, 'fa-xact', 'backend,xact_start'), '', "$mode: xact_start");
	like(forensics($node, 'fa-xact', 'backend,query'), qr/^UPDATE public\.jobs/, "$mode: its last statement");
	is($node->safe_psql('postgres', 'SELECT claimed_by IS NULL FROM public.jobs WHERE id = 2'),
		't', "$mode: and its work was rolled back");

	# --- disconnects while idle ---------------------------------------------------
	my ($c3) = bound_client($node, 'fa-idle', 'slow', 'idle-task');
	$c3->quit;
	ok(wait_died($node, 'fa-idle'), "$mode: a worker whose session ended is declared dead");
	is(forensics($node, 'fa-idle', 'backend,state'), 'idle', "$mode: state idle");
	is(forensics($node, 'fa-idle', 'backend,open_transaction'), 'false', "$mode: no open transaction");

	# --- timeout, not session-bound -------------------------------------------------
	$node->safe_psql('postgres', qq{
		SELECT $S.upsert_worker_heartbeat('fa-timeout', 'fast', 'processing', p_current_task => 'report-7',
		       p_lease_expires_at => '2030-01-01 00:00:00+00')});
	ok(wait_died($node, 'fa-timeout'), "$mode: a silent worker is declared dead");
	is(forensics($node, 'fa-timeout', 'cause'), 'heartbeat_timeout', "$mode: cause heartbeat_timeout");
	is(forensics($node, 'fa-timeout', 'last_status'), 'processing', "$mode: last status");
	is(forensics($node, 'fa-timeout', 'current_task'), 'report-7', "$mode: current task");
	like(forensics($node, 'fa-timeout', 'lease_expires_at'), qr/^2030-01-01T00:00:00/, "$mode: lease deadline");
	cmp_ok(forensics($node, 'fa-timeout', 'silent_for'), '>=', 1, "$mode: silent for at least dead_after");
	is(forensics($node, 'fa-timeout', 'snapshot'), 'none', "$mode: no backend to describe");

	# --- timeout of a session-bound worker whose backend still runs ---------------
	my ($c4, $pid4) = bound_client($node, 'fa-live', 'fast', 'stuck');
	send_nowait($c4, 'SELECT pg_sleep(600);');
	ok(wait_died($node, 'fa-live'), "$mode: a stuck session-bound worker is declared dead by timeout");
	is(forensics($node, 'fa-live', 'snapshot'), 'live', "$mode: its backend read live");
	is(forensics($node, 'fa-live', 'backend,state'), 'active', "$mode: state active");
	is(forensics($node, 'fa-live', 'backend,wait_event'), 'PgSleep', "$mode: wait event PgSleep");
	is(forensics($node, 'fa-live', 'backend,query'), 'SELECT pg_sleep(600);', "$mode: its query");
	is($node->safe_psql('postgres', "SELECT count(*) FROM pg_stat_activity WHERE pid = $pid4"),
		'1', "$mode: terminate_zombies off: its backend still runs");
	$node->safe_psql('postgres', "SELECT pg_terminate_backend($pid4)");
	eval { $c4->{run}->finish };

	# --- forensics_query_text = off; notify_payload = minimal --------------------
	$node->safe_psql('postgres', q{
		LOAD 'worker_heartbeat';
		ALTER SYSTEM SET worker_heartbeat.forensics_query_text = off;
		ALTER SYSTEM SET worker_heartbeat.notify_payload = minimal;
		SELECT pg_reload_conf();});
	my ($c5, $pid5) = bound_client($node, 'fa-secret', 'slow', 'secret-task');
	ok($node->poll_query_until('postgres',
			"SELECT current_setting('worker_heartbeat.forensics_query_text', true) = 'off'"),
		"$mode: the setting reloaded");
	$c5->query_safe("SELECT 'password=hunter2' AS secret;");
	$c5->quit;
	ok(wait_died($node, 'fa-secret'), "$mode: declared dead");
	is(forensics($node, 'fa-secret', 'backend,state'), 'idle', "$mode: forensics kept");
	is($node->safe_psql('postgres', qq{
			SELECT (details->'forensics'->'backend') ? 'query' AND details #> '{forensics,backend,query}' = 'null'
			  FROM $S.worker_events WHERE event = 'died' AND worker_id = 'fa-secret'}),
		't', "$mode: forensics_query_text = off: no query text");
	$notes = '';
	for (1 .. 50)
	{
		$notes .= $listener->query_safe('SELECT 1');
		last if $notes =~ /"event":"died"[^\n]*fa-secret/;
		usleep(100_000);
	}
	like($notes, qr/"event":"died"[^\n]*fa-secret/, "$mode: a minimal NOTIFY");
	unlike($notes, qr/fa-secret[^\n]*forensics/, "$mode: minimal payloads carry no forensics");

	$listener->quit;
	$node->stop;
}

run_mode(1);
run_mode(0);

done_testing();
