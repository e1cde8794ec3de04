# Adversarial suite, shared state (issue 13 items 1, 4, 10 and the review's
# "one shared-state layer"; issue 12 item 6). Preloaded server.
#
# - 13.1: over-long worker_id / worker_type rows (plain INSERT, COPY, and a
#   pg_dump/pg_restore of the config table) under a running reaper: no
#   backend killed by a signal, no server restart, the rows handled sanely;
# - 13.4: counters change only for committed work: a rolled-back
#   stop_worker() or release_dead_worker_leases() changes nothing in
#   reaper_status(); committed ones count in leases_released_by_sql, never
#   as reaper passes; a rolled-back subtransaction drops what it queued, a
#   released one hands it to its parent;
# - PREPARE TRANSACTION of a transaction with pending effects: ERROR 0A000;
# - 13.10: with the reaper stopped, a worker beating every 0.3 s with
#   dead_after 3 s stays active (its beats write through to the table);
# - 12.6: a long UTF-8 last_error is clipped on a character boundary and
#   reaper_status() stays readable;
# - the shared segments carry their layout version in their names.
use strict;
use warnings;
use Time::HiRes qw(time usleep);
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('adv_shared_state');
$node->init(extra => [ '--encoding=UTF8', '--locale=C' ]);
$node->append_conf('postgresql.conf', q{
shared_preload_libraries = 'worker_heartbeat'
max_worker_processes = 16
max_prepared_transactions = 4
restart_after_crash = on
worker_heartbeat.reap_interval = '200ms'
});
$node->start;
$node->safe_psql('postgres', q{
	CREATE SCHEMA pm_pipeline;
	CREATE EXTENSION worker_heartbeat SCHEMA pm_pipeline;
	CREATE TABLE public.queue (id int PRIMARY KEY, state text NOT NULL DEFAULT 'pending',
	                           claimed_by text, lease_expires_at timestamptz);
	INSERT INTO public.queue (id) SELECT g FROM generate_series(1, 20) g;
	SELECT pm_pipeline.register_lease_table('public.queue', p_on_release => '{"state": "pending"}');
	SELECT pm_pipeline.set_worker_type_dead_after('fast', '1 second');
	CREATE TABLE public.plain (x int);
});

my $start_time = $node->safe_psql('postgres', 'SELECT pg_postmaster_start_time()');
my $status_sql = q{SELECT passes || '|' || last_pass_at || '|' || last_pass_ms || '|' || workers_declared_dead
	|| '|' || leases_released || '|' || leases_released_by_sql
	FROM pm_pipeline.reaper_status() WHERE database = current_database()};

sub reaper_pid
{
	my ($db) = @_;
	return $node->safe_psql($db // 'postgres',
		q{SELECT pid FROM pm_pipeline.reaper_status() WHERE database = current_database()});
}

sub passes_go_on
{
	my ($db, $what) = @_;
	my $passes = $node->safe_psql($db,
		q{SELECT passes FROM pm_pipeline.reaper_status() WHERE database = current_database()});
	ok( $node->poll_query_until($db,
			qq{SELECT passes > $passes + 3 FROM pm_pipeline.reaper_status() WHERE database = current_database()}),
		"$what: the reaper's passes go on");
}

sub server_intact
{
	my ($what) = @_;
	is($node->safe_psql('postgres', 'SELECT pg_postmaster_start_time()'), $start_time, "$what: no server restart");
	my $log = slurp_file($node->logfile);
	unlike($log, qr/terminated by signal|buffer overflow detected|server process .* was terminated/,
		"$what: no process killed by a signal");
}

# Drops the CHECK constraints on the id/type lengths another part of 1.2 may
# have added (the rows below are what a superuser, COPY or a restore of an
# older dump can still bring in).
sub drop_length_checks
{
	my ($db) = @_;
	$node->safe_psql($db, q{
		DO $$
		DECLARE c record;
		BEGIN
			FOR c IN SELECT conrelid::regclass AS rel, conname FROM pg_constraint
			          WHERE conrelid IN ('pm_pipeline.worker_heartbeats'::regclass, 'pm_pipeline.worker_types'::regclass)
			            AND contype = 'c' AND pg_get_constraintdef(oid) ~ 'worker_(id|type)'
			LOOP
				EXECUTE format('ALTER TABLE %s DROP CONSTRAINT %I', c.rel, c.conname);
			END LOOP;
		END $$;
	});
}

# --- 13.1: no content of the extension's tables may crash a backend ----------
my $reaper = reaper_pid('postgres');
ok($reaper, 'a reaper runs');
drop_length_checks('postgres');
my $long_id = 'x' x 300;
my $long_type = 't' x 300;
# One transaction: the reaper sees the workers and their leases together.
$node->safe_psql('postgres', qq{
	BEGIN;
	-- silent for an hour: dead by timeout, its lease released
	INSERT INTO pm_pipeline.worker_heartbeats (worker_id, worker_type, status, last_heartbeat_at)
	VALUES ('$long_id', 'fast', 'processing', now() - interval '1 hour');
	UPDATE public.queue SET state = 'claimed', claimed_by = '$long_id',
	       lease_expires_at = now() + interval '1 hour' WHERE id = 1;
	-- bound to a session that does not exist: dead by session end
	INSERT INTO pm_pipeline.worker_heartbeats (worker_id, worker_type, status, last_heartbeat_at,
	                                           session_pid, session_started_at)
	VALUES ('s$long_id', '$long_type', 'active', now(), 999999, now());
	UPDATE public.queue SET state = 'claimed', claimed_by = 's$long_id',
	       lease_expires_at = now() + interval '1 hour' WHERE id = 2;
	COMMIT;
	SELECT pm_pipeline.start_reaper();
});
# Through COPY as well. Its type is 'fast' (dead_after 1 s): silence is
# counted from the server's start at the earliest, so a type without an
# override would wait out the default 5 minutes.
$node->safe_psql('postgres',
	"COPY pm_pipeline.worker_heartbeats (worker_id, worker_type, status, last_heartbeat_at) FROM STDIN;\n"
	  . "c$long_id\tfast\tidle\t2000-01-01 00:00:00+00\n\\.\n");
ok( $node->poll_query_until('postgres', qq{
		SELECT count(*) = 3 FROM pm_pipeline.worker_heartbeats
		 WHERE status = 'dead' AND length(worker_id) > 300 - 1}),
	'13.1: the over-long workers are declared dead (timeout, session end, COPY)');
ok( $node->poll_query_until('postgres',
		q{SELECT count(*) = 0 FROM public.queue WHERE id IN (1, 2) AND claimed_by IS NOT NULL}),
	'13.1: and their leases released');
# A heartbeat for such an id is refused cleanly (22001 class), not cached.
my ($rc, $out, $err) = $node->psql('postgres',
	"SELECT pm_pipeline.upsert_worker_heartbeat('$long_id', 'fast', 'active')");
isnt($rc, 0, '13.1: a heartbeat with an over-long id is refused');
unlike($err, qr/server closed|terminated/, '13.1: ... with an error, not a crash');
is(reaper_pid('postgres'), $reaper, '13.1: the same reaper');
passes_go_on('postgres', '13.1');
server_intact('13.1 INSERT/COPY');

# pg_dump / pg_restore of the config table holding over-long rows, into a
# database whose reaper then handles them.
my $dump = $node->basedir . '/shared_state.dump';
$node->command_ok([ 'pg_dump', '-Fc', '-d', $node->connstr('postgres'), '-f', $dump ], '13.1: pg_dump');
$node->safe_psql('postgres', 'CREATE DATABASE restored');
$node->command_ok(
	[ 'pg_restore', '--section=pre-data', '-d', $node->connstr('restored'), $dump ],
	'13.1: pg_restore (schema)');
drop_length_checks('restored');
$node->command_ok([ 'pg_restore', '--section=data', '-d', $node->connstr('restored'), $dump ],
	'13.1: pg_restore (data, over-long rows included)');
$node->command_ok([ 'pg_restore', '--section=post-data', '-d', $node->connstr('restored'), $dump ],
	'13.1: pg_restore (indexes, constraints)');
$node->safe_psql('restored', qq{
	BEGIN;
	UPDATE pm_pipeline.worker_heartbeats SET status = 'active', died_at = NULL, death_cause = NULL,
	       last_heartbeat_at = now() - interval '1 hour' WHERE worker_id = '$long_id';
	UPDATE public.queue SET state = 'claimed', claimed_by = '$long_id',
	       lease_expires_at = now() + interval '1 hour' WHERE id = 3;
	SELECT pm_pipeline.set_worker_type_dead_after('fast', '1 second'); -- the reaper looks again
	COMMIT;
});
is($node->safe_psql('restored', 'SELECT count(*) FROM pm_pipeline.worker_heartbeats WHERE length(worker_id) > 200'),
	'3', '13.1: the restored database holds the over-long rows');
$node->safe_psql('restored', 'SELECT pm_pipeline.start_reaper()');
ok( $node->poll_query_until('restored', qq{
		SELECT status = 'dead' FROM pm_pipeline.worker_heartbeats WHERE worker_id = '$long_id'}),
	'13.1: the restored over-long worker is declared dead');
ok($node->poll_query_until('restored', 'SELECT claimed_by IS NULL FROM public.queue WHERE id = 3'),
	'13.1: and its lease released');
passes_go_on('restored', '13.1 restored');
server_intact('13.1 pg_restore');
# Leave the reaper of "restored" alone: it leaves when the database is dropped.
$node->safe_psql('postgres', 'DROP DATABASE restored');

# --- 13.4: counters change only for work that committed ------------------------
$node->safe_psql('postgres', q{SELECT pm_pipeline.stop_reaper()});
ok($node->poll_query_until('postgres', q{SELECT pid IS NULL FROM pm_pipeline.reaper_status()
	WHERE database = current_database()}), '13.4: the reaper is stopped (its counters hold still)');
for my $w (1 .. 4)
{
	my $row = 10 + $w;
	$node->safe_psql('postgres', qq{
		SELECT pm_pipeline.upsert_worker_heartbeat('w$w', 'slow', 'processing');
		UPDATE public.queue SET state = 'claimed', claimed_by = 'w$w',
		       lease_expires_at = now() + interval '1 hour' WHERE id = $row;
	});
}
my $before = $node->safe_psql('postgres', $status_sql);
$node->safe_psql('postgres', q{BEGIN; SELECT pm_pipeline.stop_worker('w1'); ROLLBACK;});
is($node->safe_psql('postgres', $status_sql), $before, '13.4: a rolled-back stop_worker() changes no counter');
is($node->safe_psql('postgres', 'SELECT claimed_by FROM public.queue WHERE id = 11'), 'w1',
	'13.4: ... and the lease is still held');

$node->safe_psql('postgres', q{SELECT pm_pipeline.stop_worker('w1')});
my ($passes, $at, $ms, $dead, $released, $by_sql) = split /\|/, $before, -1;
is($node->safe_psql('postgres', $status_sql), join('|', $passes, $at, $ms, $dead, $released, $by_sql + 1),
	'13.4: a committed stop_worker() counts in leases_released_by_sql, not as a reaper pass');

# Subtransactions: a rolled-back savepoint drops what it queued; a released
# one hands it to its parent (even when a later savepoint of the same level
# rolls back).
$before = $node->safe_psql('postgres', $status_sql);
$node->safe_psql('postgres',
	q{BEGIN; SAVEPOINT a; SELECT pm_pipeline.stop_worker('w2'); ROLLBACK TO a; COMMIT;});
is($node->safe_psql('postgres', $status_sql), $before, '13.4: a rolled-back subtransaction counts nothing');
is($node->safe_psql('postgres', 'SELECT claimed_by FROM public.queue WHERE id = 12'), 'w2',
	'13.4: ... and its release is undone');
$node->safe_psql('postgres', q{BEGIN; SAVEPOINT a; SELECT pm_pipeline.stop_worker('w2'); RELEASE a;
	SAVEPOINT b; SELECT 1; ROLLBACK TO b; COMMIT;});
($passes, $at, $ms, $dead, $released, $by_sql) = split /\|/, $before, -1;
is($node->safe_psql('postgres', $status_sql), join('|', $passes, $at, $ms, $dead, $released, $by_sql + 1),
	'13.4: a released subtransaction counts once its transaction commits');

# The SQL-called pass: not a reaper pass either.
$node->safe_psql('postgres', q{UPDATE pm_pipeline.worker_heartbeats SET worker_type = 'fast',
	last_heartbeat_at = now() - interval '1 hour' WHERE worker_id = 'w3';
	SELECT pm_pipeline.set_worker_type_dead_after('fast', '1 second');});
$before = $node->safe_psql('postgres', $status_sql);
$node->safe_psql('postgres', q{BEGIN; SELECT pm_pipeline.release_dead_worker_leases(); ROLLBACK;});
is($node->safe_psql('postgres', $status_sql), $before,
	'13.4: a rolled-back release_dead_worker_leases() changes no counter');
is($node->safe_psql('postgres', q{SELECT pm_pipeline.release_dead_worker_leases()}), '1',
	'13.4: release_dead_worker_leases() releases the dead worker\'s lease');
($passes, $at, $ms, $dead, $released, $by_sql) = split /\|/, $before, -1;
is($node->safe_psql('postgres', $status_sql), join('|', $passes, $at, $ms, $dead + 1, $released, $by_sql + 1),
	'13.4: it counts its death and its release (leases_released_by_sql), not a pass');

# PREPARE TRANSACTION (the effects queue's decision: refused, 0A000).
($rc, $out, $err) = $node->psql('postgres',
	q{BEGIN; SELECT pm_pipeline.stop_worker('w4'); PREPARE TRANSACTION 'p_stop';});
like($err, qr/cannot PREPARE a transaction that has sent a worker heartbeat/,
	'PREPARE of a transaction that stopped a worker: refused');
($rc, $out, $err) = $node->psql('postgres',
	q{\set VERBOSITY verbose
	BEGIN; SELECT pm_pipeline.upsert_worker_heartbeat('w5', 'slow', 'active'); PREPARE TRANSACTION 'p_beat';});
like($err, qr/0A000/, 'PREPARE of a transaction that sent a heartbeat: refused with 0A000');
is($node->safe_psql('postgres', q{SELECT count(*) FROM pg_prepared_xacts}), '0', '... nothing prepared');
is($node->safe_psql('postgres', q{SELECT count(*) FROM pm_pipeline.worker_heartbeats WHERE worker_id = 'w5'}), '0',
	'... and the heartbeat rolled back');
is($node->safe_psql('postgres', 'SELECT claimed_by FROM public.queue WHERE id = 14'), 'w4',
	'... and the lease is still held');
$node->safe_psql('postgres', q{BEGIN; INSERT INTO public.plain VALUES (1); PREPARE TRANSACTION 'p_plain';
	COMMIT PREPARED 'p_plain';});
is($node->safe_psql('postgres', 'SELECT count(*) FROM public.plain'), '1',
	'a transaction without worker_heartbeat effects still prepares');

# --- 13.10: with no reaper, every accepted heartbeat reaches the table ----------
$node->safe_psql('postgres', q{SELECT pm_pipeline.set_worker_type_dead_after('beat3', '3 seconds')});
my $beater = $node->background_psql('postgres');
my $t0 = time;
my $beats = 0;
my ($active_ok, $dead_seen) = (1, 0);
while (time - $t0 < 6)
{
	$beater->query_safe(q{SELECT pm_pipeline.upsert_worker_heartbeat('beater', 'beat3', 'active')});
	$beats++;
	if (time - $t0 > 3.5)
	{
		my $r = $node->safe_psql('postgres', q{
			SELECT (SELECT count(*) FROM pm_pipeline.v_active_workers WHERE worker_id = 'beater')
			       || '|' || (SELECT count(*) FROM pm_pipeline.v_dead_workers WHERE worker_id = 'beater')});
		$active_ok = 0 if $r ne '1|0';
		$dead_seen = 1 if $r =~ /\|1$/;
	}
	usleep(300_000);
}
$beater->quit;
ok($beats >= 10, "13.10: $beats heartbeats sent");
ok($active_ok, '13.10: reaper stopped, a worker beating every 0.3 s (dead_after 3 s) stays in v_active_workers');
ok(!$dead_seen, '13.10: ... and never shows in v_dead_workers');
is($node->safe_psql('postgres', q{SELECT status FROM pm_pipeline.worker_heartbeats WHERE worker_id = 'beater'}),
	'active', '13.10: its row is live');
is($node->safe_psql('postgres', q{SELECT pm_pipeline.release_dead_worker_leases() >= 0}), 't',
	'13.10: a pass from SQL meanwhile ...');
is($node->safe_psql('postgres', q{SELECT status FROM pm_pipeline.worker_heartbeats WHERE worker_id = 'beater'}),
	'active', '13.10: ... does not declare it dead');

$node->safe_psql('postgres', q{SELECT pm_pipeline.start_reaper()});
ok($node->poll_query_until('postgres', q{SELECT pid IS NOT NULL FROM pm_pipeline.reaper_status()
	WHERE database = current_database()}), 'the reaper is back');

# --- 12.6: last_error clipped on a character boundary ------------------------------
$node->safe_psql('postgres', q{
	BEGIN;
	CREATE TABLE public.jp (id int PRIMARY KEY, claimed_by text, lease_expires_at timestamptz);
	INSERT INTO public.jp VALUES (1, NULL, NULL);
	CREATE FUNCTION public.jp_refuse() RETURNS trigger LANGUAGE plpgsql AS $$
	BEGIN
		RAISE EXCEPTION '%', repeat('日本語のエラーメッセージ、', 40);
	END $$;
	CREATE TRIGGER jp_refuse BEFORE UPDATE ON public.jp FOR EACH ROW EXECUTE FUNCTION public.jp_refuse();
	SELECT pm_pipeline.register_lease_table('public.jp');
	INSERT INTO pm_pipeline.worker_heartbeats (worker_id, worker_type, status, last_heartbeat_at)
	VALUES ('jp-worker', 'fast', 'active', now() - interval '1 hour');
	ALTER TABLE public.jp DISABLE TRIGGER jp_refuse;
	UPDATE public.jp SET claimed_by = 'jp-worker', lease_expires_at = now() + interval '1 hour';
	ALTER TABLE public.jp ENABLE TRIGGER jp_refuse;
	COMMIT;
});
ok( $node->poll_query_until('postgres', q{
		SELECT last_error LIKE '%日本語%' FROM pm_pipeline.reaper_status() WHERE database = current_database()}),
	'12.6: reaper_status().last_error holds the trigger\'s UTF-8 message, and reads');
my $error = $node->safe_psql('postgres',
	q{SELECT octet_length(last_error) FROM pm_pipeline.reaper_status() WHERE database = current_database()});
ok($error > 0 && $error < 192, "12.6: clipped to the slot ($error bytes)");
# Converting to another client encoding verifies the string (22021 on a cut character).
($rc, $out, $err) = $node->psql('postgres', q{SET client_encoding TO 'EUC_JP';
	SELECT last_error IS NOT NULL FROM pm_pipeline.reaper_status() WHERE database = current_database()});
is($rc . '|' . $out, '0|t', '12.6: a valid UTF-8 string: a client in another encoding reads it');
unlike($err, qr/invalid byte sequence/, '12.6: no 22021');
is($node->safe_psql('postgres', q{SELECT pm_pipeline.metrics() LIKE '%worker_heartbeat%'}), 't',
	'12.6: metrics() still works');

# --- shared memory: versioned segment names ---------------------------------------------
like($node->safe_psql('postgres',
		q{SELECT string_agg(name, ',' ORDER BY name) FROM pg_shmem_allocations WHERE name LIKE 'worker_heartbeat%'}),
	qr/worker_heartbeat heartbeat cache v\d+\/\d+.*worker_heartbeat registry v\d+\/\d+/,
	'the shared segments name their layout version and size');

server_intact('end');
$node->stop;
done_testing();
