# Adversarial suite, leases (helper H5b): registration, releases, NOTIFY
# payloads, tokens. Each case names the issue item it covers; each failed on
# b002846. Preloaded; reap_interval 200 ms. 095_adv_leases_not_preloaded.pl
# runs the same cases on a server without shared_preload_libraries
# (WH_ADV_PRELOAD=0).
#
# Part 1 runs with the reaper stopped (SQL-called passes, deterministic);
# part 2 with the reaper running.
use strict;
use warnings;
use Time::HiRes qw(time);
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $preload = ($ENV{WH_ADV_PRELOAD} // '1') ne '0';
my $node = PostgreSQL::Test::Cluster->new($preload ? 'adv_leases' : 'adv_leases_np');
$node->init;
$node->append_conf('postgresql.conf',
	$preload ? "shared_preload_libraries = 'worker_heartbeat'\n" : "shared_preload_libraries = ''\n");
$node->append_conf('postgresql.conf', q{
max_worker_processes = 16
worker_heartbeat.reap_interval = '200ms'
worker_heartbeat.pass_lock_timeout = '100ms'
worker_heartbeat.launcher_interval = '500ms'
});
$node->start;
$node->safe_psql('postgres', q{
	CREATE SCHEMA pm_pipeline;
	CREATE EXTENSION worker_heartbeat SCHEMA pm_pipeline;
	SELECT pm_pipeline.stop_reaper();
	CREATE SCHEMA app;
});

sub sql { return $node->safe_psql('postgres', @_); }

# Polls (every 50 ms) until the query returns 't', at most $limit seconds.
sub poll_within
{
	my ($query, $limit) = @_;
	my $t0 = time;
	while (time - $t0 < $limit)
	{
		return time - $t0 if $node->safe_psql('postgres', $query) eq 't';
		select(undef, undef, undef, 0.05);
	}
	return undef;
}

# --- 12.1: register_lease_table never runs the caller's code as the extension owner ----
# A role that owns its table; the domain of an on_release column calls its
# function, which tries to make it superuser (and records who it ran as).
sql(q{
	CREATE ROLE svc NOLOGIN;
	CREATE SCHEMA svc AUTHORIZATION svc;
	GRANT USAGE ON SCHEMA pm_pipeline TO svc;
	GRANT EXECUTE ON FUNCTION pm_pipeline.register_lease_table(regclass, name, name, jsonb, name, name, integer, jsonb, name) TO svc;
	SET ROLE svc;
	CREATE TABLE svc.ran_as (who text, super bool);
	CREATE FUNCTION svc.f(text) RETURNS bool LANGUAGE plpgsql AS $$
	BEGIN
		INSERT INTO svc.ran_as SELECT current_user, rolsuper FROM pg_roles WHERE rolname = current_user;
		EXECUTE 'ALTER ROLE svc SUPERUSER';
		RETURN true;
	END $$;
	CREATE DOMAIN svc.d AS text CHECK (svc.f(VALUE));
	CREATE TABLE svc.q (id int, state svc.d, claimed_by text, lease_expires_at timestamptz);
	CREATE FUNCTION svc.g(text) RETURNS bool LANGUAGE plpgsql AS $$
	BEGIN
		INSERT INTO svc.ran_as SELECT current_user, rolsuper FROM pg_roles WHERE rolname = current_user;
		RETURN true;
	END $$;
	CREATE DOMAIN svc.d2 AS text CHECK (svc.g(VALUE));
	CREATE TABLE svc.q2 (id int, state svc.d2, claimed_by text, lease_expires_at timestamptz);
});
my ($ret, $out, $err) = $node->psql('postgres',
	q{SET ROLE svc; SELECT pm_pipeline.register_lease_table('svc.q', p_on_release => '{"state": "x"}');});
is(sql(q{SELECT rolsuper FROM pg_roles WHERE rolname = 'svc'}), 'f',
	'12.1: a domain CHECK run by register_lease_table does not make its caller superuser');
isnt($ret, 0, '12.1: ... the registration whose check tried it is refused');
like($err, qr/must be superuser|permission denied/, '12.1: ... with the error of the role that ran it');
is(sql(q{SELECT count(*) FROM pm_pipeline.lease_tables WHERE table_name = 'svc.q'::regclass}), '0',
	'12.1: ... and nothing is registered');
sql(q{SET ROLE svc; SELECT pm_pipeline.register_lease_table('svc.q2', p_on_release => '{"state": "x"}');});
is(sql(q{SELECT string_agg(DISTINCT who || '/' || super, ',') FROM svc.ran_as}), 'svc/false',
	'12.1: a harmless domain CHECK is accepted, and every check ran as the table owner, never as a superuser');

# --- 12.2: cleanup_stale_workers never runs a table owner's cast as superuser ------------
sql(q{
	CREATE ROLE howner NOLOGIN;
	CREATE SCHEMA h AUTHORIZATION howner;
	GRANT USAGE ON SCHEMA pm_pipeline TO howner;
	GRANT EXECUTE ON FUNCTION pm_pipeline.register_lease_table(regclass, name, name, jsonb, name, name, integer, jsonb, name) TO howner;
	CREATE TABLE h.calls (who text, super bool);
	ALTER TABLE h.calls OWNER TO howner;
	GRANT INSERT ON h.calls TO PUBLIC;
	SET ROLE howner;
	CREATE TABLE h.q (id int, claimed_by text, lease_expires_at timestamptz);
	SELECT pm_pipeline.register_lease_table('h.q');
	CREATE TYPE h.wenum AS ENUM ('w-stale', 'other');
	CREATE FUNCTION h.wenum_text(h.wenum) RETURNS text LANGUAGE plpgsql AS $$
	BEGIN
		INSERT INTO h.calls SELECT current_user, rolsuper FROM pg_roles WHERE rolname = current_user;
		BEGIN
			EXECUTE 'ALTER ROLE howner SUPERUSER';
		EXCEPTION WHEN OTHERS THEN NULL;
		END;
		RETURN $1::name::text;
	END $$;
	CREATE CAST (h.wenum AS text) WITH FUNCTION h.wenum_text(h.wenum);
	ALTER TABLE h.q ALTER COLUMN claimed_by TYPE h.wenum USING claimed_by::h.wenum;
	INSERT INTO h.q VALUES (1, 'w-stale', NULL);
});
sql(q{
	SELECT pm_pipeline.upsert_worker_heartbeat('w-stale', 't');
	SELECT pm_pipeline.stop_worker('w-stale');
	UPDATE pm_pipeline.worker_heartbeats SET last_heartbeat_at = now() - interval '2 hours' WHERE worker_id = 'w-stale';
});
($ret, $out, $err) = $node->psql('postgres', 'SELECT pm_pipeline.cleanup_stale_workers(60)');
is($ret, 0, '12.2: cleanup_stale_workers runs with an owner-defined cast on the worker column');
is(sql(q{SELECT count(*) FROM h.calls WHERE super}), '0', '12.2: ... the cast never ran as a superuser');
is(sql(q{SELECT rolsuper FROM pg_roles WHERE rolname = 'howner'}), 'f', '12.2: ... the owner did not become superuser');
is(sql(q{SELECT count(*) FROM pm_pipeline.worker_heartbeats WHERE worker_id = 'w-stale'}), '1',
	'12.2: ... and a worker whose leases could not be checked is kept');
sql(q{SELECT pm_pipeline.unregister_lease_table('h.q')});

# --- 12.3: a worker column of 8100 bytes stops nothing; NOTIFY payloads are bounded -----
sql(q{
	CREATE TABLE app.jobs (id int PRIMARY KEY, state text NOT NULL DEFAULT 'pending', claimed_by text,
	                       lease_expires_at timestamptz);
	CREATE INDEX ON app.jobs (claimed_by);
	CREATE INDEX ON app.jobs (lease_expires_at);
	INSERT INTO app.jobs (id) SELECT g FROM generate_series(1, 5) g;
	SELECT pm_pipeline.register_lease_table('app.jobs', p_on_release => '{"state": "pending"}');
	UPDATE app.jobs SET claimed_by = repeat('x', 8100), lease_expires_at = now() - interval '1 second', state = 'claimed'
	 WHERE id = 5;
});
($ret, $out, $err) = $node->psql('postgres',
	q{LISTEN worker_heartbeat; SELECT pm_pipeline.release_dead_worker_leases();});
is($ret, 0, '12.3: release_dead_worker_leases() does not fail on a worker id of 8100 bytes') or diag($err);
is(sql(q{SELECT claimed_by IS NULL AND state = 'pending' FROM app.jobs WHERE id = 5}), 't', '12.3: ... the lease is released');
my @payloads = $out =~ /with payload "(.*)" received/g;
ok(@payloads >= 1, '12.3: ... and announced');
ok(!grep({ length($_) >= 8000 } @payloads), '12.3: ... in a payload below 8000 bytes');
like($payloads[0] // '', qr/\(truncated\)/, '12.3: ... the clipped worker id ends with a marker');
cmp_ok(sql(q{SELECT max(octet_length(worker_id)) FROM pm_pipeline.worker_events WHERE table_name = 'app.jobs'}),
	'<=', 200, '12.3: ... and the event row holds the clipped id');

# notify_payload = minimal: ids only, no worker type, table or cause.
($ret, $out, $err) = $node->psql('postgres', q{
	SET worker_heartbeat.notify_payload = minimal;
	LISTEN worker_heartbeat;
	SELECT pm_pipeline.upsert_worker_heartbeat('m-1', 'secret_type');
});
@payloads = $out =~ /with payload "(.*)" received/g;
is(scalar(@payloads), 1, '12.3 (decision): notify_payload = minimal still announces the event');
like($payloads[0] // '', qr/^\{"event":"started","event_id":\d+,"worker_id":"m-1","at":"[^"]+"\}$/,
	'12.3 (decision): ... with event, event_id, worker_id and at only');
unlike($payloads[0] // '', qr/secret_type/, '12.3 (decision): ... not the worker type');
SKIP:
{
	# Without preload a session that has not loaded the library knows the
	# setting only as a placeholder, which any role may set (PostgreSQL's
	# rule); it is discarded, with a WARNING, when the library loads.
	skip('notify_payload is a placeholder until the library is loaded (not preloaded)', 1) unless $preload;
	($ret, $out, $err) = $node->psql('postgres', q{SET ROLE svc; SET worker_heartbeat.notify_payload = full;});
	isnt($ret, 0, '12.3 (decision): only a superuser may change notify_payload');
}

# --- 13.3: no event and no NOTIFY for a release that was rolled back -------------------
sql(q{
	UPDATE app.jobs SET claimed_by = NULL, lease_expires_at = NULL WHERE id = 5;  -- independent of 12.3
	CREATE TABLE app.trig (id int PRIMARY KEY, claimed_by text, lease_expires_at timestamptz);
	SELECT pm_pipeline.register_lease_table('app.trig');
	CREATE FUNCTION app.refuse_two() RETURNS trigger LANGUAGE plpgsql AS $$
	BEGIN
		IF OLD.id = 2 THEN RAISE EXCEPTION 'row 2 may not be released'; END IF;
		RETURN NEW;
	END $$;
	CREATE TRIGGER refuse_two BEFORE UPDATE ON app.trig FOR EACH ROW EXECUTE FUNCTION app.refuse_two();
	SELECT pm_pipeline.upsert_worker_heartbeat('w-doomed', 'doomed');
	SELECT pm_pipeline.upsert_worker_heartbeat('w-live', 'w');
	INSERT INTO app.trig VALUES (1, 'w-doomed', now() + interval '1 hour'), (2, 'w-live', now() - interval '1 second');
	SELECT pm_pipeline.set_worker_type_dead_after('doomed', '1 second');
});
ok(poll_within(q{SELECT clock_timestamp() - last_heartbeat_at > interval '1.5 seconds'
	FROM pm_pipeline.worker_heartbeats WHERE worker_id = 'w-doomed'}, 30), '13.3: w-doomed fell silent');
($ret, $out, $err) = $node->psql('postgres', q{
	LISTEN worker_heartbeat; LISTEN "worker_heartbeat:app.trig";
	SELECT pm_pipeline.release_dead_worker_leases();
});
is(sql(q{SELECT status FROM pm_pipeline.worker_heartbeats WHERE worker_id = 'w-doomed'}), 'dead',
	'13.3: the pass declared w-doomed dead');
is(sql(q{SELECT string_agg(claimed_by, ',' ORDER BY id) FROM app.trig}), 'w-doomed,w-live',
	'13.3: the trigger refusing row 2 rolled back the release of row 1');
is(sql(q{SELECT count(*) FROM pm_pipeline.worker_events WHERE table_name = 'app.trig'}), '0',
	'13.3: ... and no leases_released event was written for it');
unlike($out, qr/leases_released/, '13.3: ... nor sent');
like($out, qr/"event":"died"/, '13.3: (the death itself is announced)');
# Its trigger would fail every later pass (and slow the reaper's retries below).
sql(q{SELECT pm_pipeline.unregister_lease_table('app.trig')});

# --- 13.8: a row updated concurrently is released, and only what was released is counted --
# The release's scan of row 1 waits (a policy function of the owner takes an
# advisory lock while app.block is on in the releasing session); meanwhile
# row 2 is updated and committed, so the release locks row 2 in a version its
# snapshot cannot see.
sql(q{
	ALTER SYSTEM SET worker_heartbeat.pass_lock_timeout = '60s';
	SELECT pg_reload_conf();
	CREATE ROLE rowner NOLOGIN;
	GRANT USAGE ON SCHEMA app TO rowner;
	GRANT USAGE ON SCHEMA pm_pipeline TO rowner;
	GRANT EXECUTE ON FUNCTION pm_pipeline.register_lease_table(regclass, name, name, jsonb, name, name, integer, jsonb, name) TO rowner;
	GRANT CREATE ON SCHEMA app TO rowner;
	SET ROLE rowner;
	CREATE FUNCTION app.gate(p_id int) RETURNS bool LANGUAGE plpgsql AS $$
	BEGIN
		IF p_id = 1 AND current_setting('app.block', true) = 'on' THEN
			PERFORM pg_advisory_xact_lock_shared(4242);
		END IF;
		RETURN true;
	END $$;
	CREATE TABLE app.race (id int PRIMARY KEY, claimed_by text, lease_expires_at timestamptz);
	ALTER TABLE app.race ENABLE ROW LEVEL SECURITY;
	ALTER TABLE app.race FORCE ROW LEVEL SECURITY;
	CREATE POLICY gate ON app.race USING (app.gate(id));
	SELECT pm_pipeline.register_lease_table('app.race');
	RESET ROLE;
	SELECT pm_pipeline.upsert_worker_heartbeat('w-race', 'w');
	INSERT INTO app.race VALUES (1, 'w-race', now() + interval '1 hour'), (2, 'w-race', now() + interval '1 hour');
});
my $gatekeeper = $node->background_psql('postgres');
$gatekeeper->query_safe('SELECT pg_advisory_lock(4242)');
my $stopper = $node->background_psql('postgres');
# The reload reaches this session at its next command.
my $seen_timeout = '';
# '1min' once the library defines the setting; '60s' as typed while it is a
# placeholder (not preloaded).
for (my $i = 0; $i < 600 && $seen_timeout !~ /^(1min|60s)$/; ++$i)
{
	$seen_timeout = $stopper->query_safe('SHOW worker_heartbeat.pass_lock_timeout');
	select(undef, undef, undef, 0.05) if $seen_timeout !~ /^(1min|60s)$/;
}
like($seen_timeout, qr/^(1min|60s)$/, '13.8: the releasing session waits on locks up to a minute');
$stopper->query_safe(q{SET app.block = 'on'});
$stopper->query_until(qr/stopping/, "\\echo stopping\nSELECT pm_pipeline.stop_worker('w-race');\n");
ok( $node->poll_query_until('postgres', q{SELECT count(*) = 1 FROM pg_stat_activity
		WHERE wait_event = 'advisory' AND query LIKE '%stop_worker%'}),
	'13.8: the release waits in its scan of row 1');
sql(q{UPDATE app.race SET lease_expires_at = now() + interval '2 hours' WHERE id = 2});
$gatekeeper->query_safe('SELECT pg_advisory_unlock(4242)');
my $stopped = $stopper->query_safe('SELECT 1 AS done');
like($stopped, qr/^t\b/m, '13.8: stop_worker returned');
is(sql(q{SELECT count(*) FROM app.race WHERE claimed_by IS NOT NULL}), '0',
	'13.8: both rows are released, also the one updated concurrently');
is( sql(q{SELECT coalesce(sum(released_count), 0) || '/' || (SELECT count(*) FROM app.race WHERE claimed_by IS NULL)
		FROM pm_pipeline.worker_events WHERE table_name = 'app.race'}),
	'2/2', '13.8: ... and the count reported is what was released');
$stopper->quit;
$gatekeeper->quit;
sql(q{ALTER SYSTEM RESET worker_heartbeat.pass_lock_timeout; SELECT pg_reload_conf();});

# ======================== part 2: the reaper running ===============================
sql(q{SELECT pm_pipeline.start_reaper()});
ok($node->poll_query_until('postgres', q{SELECT state <> 'stopped' AND pid IS NOT NULL FROM pm_pipeline.reaper_status()}),
	'the reaper runs');
my $reaper = sql('SELECT pid FROM pm_pipeline.reaper_status()');

sub bound_worker
{
	my ($id, $sql) = @_;
	my $client = $node->background_psql('postgres');
	$client->query_safe(qq{SELECT pm_pipeline.upsert_worker_heartbeat('$id', 'w', 'processing', p_session_bound => true); $sql});
	return $client;
}

sub kill_client
{
	my ($client) = @_;
	$client->{run}->signal('KILL');
	eval { $client->{run}->finish };
}

# --- 13.9: a row skipped for a lock is released once the lock goes ----------------------
sql(q{
	CREATE TABLE app.sk (id int PRIMARY KEY, claimed_by text, lease_expires_at timestamptz, lease_token bigint);
	CREATE INDEX ON app.sk (claimed_by);
	CREATE INDEX ON app.sk (lease_expires_at);
	CREATE INDEX ON app.sk (lease_token);
	INSERT INTO app.sk (id) VALUES (1), (2);
	SELECT pm_pipeline.register_lease_table('app.sk', p_token_column => 'lease_token');
});
my $w1 = bound_worker('w1', q{SELECT count(*) FROM pm_pipeline.claim_leases(NULL::app.sk, 'w1', 2, '1 hour');});
my $token1 = sql('SELECT lease_token FROM app.sk WHERE id = 1');
my $checker = $node->background_psql('postgres');
$checker->query_safe("BEGIN; SELECT pm_pipeline.check_lease('app.sk', $token1);");
kill_client($w1);
ok($node->poll_query_until('postgres', 'SELECT claimed_by IS NULL FROM app.sk WHERE id = 2'),
	'13.9: the dead worker\'s unlocked row is released');
is(sql('SELECT claimed_by FROM app.sk WHERE id = 1'), 'w1', '13.9: its row locked by check_lease is skipped');
$checker->query_safe('ROLLBACK');
my $took = poll_within('SELECT claimed_by IS NULL FROM app.sk WHERE id = 1', 30);
ok(defined $took, '13.9: once the lock goes, the skipped row is released too (retried by a full pass)');
diag(sprintf('13.9: skipped row released %.2f s after the lock went', $took // -1));
$checker->quit;

# --- 12.7: an on_release type off the reaper's search_path is qualified --------------
sql(q{
	CREATE TYPE public.job_state AS ENUM ('pending', 'claimed');
	CREATE TABLE app.typed (id int PRIMARY KEY, state public.job_state NOT NULL DEFAULT 'pending', claimed_by text,
	                        lease_expires_at timestamptz);
	CREATE INDEX ON app.typed (claimed_by);
	CREATE INDEX ON app.typed (lease_expires_at);
	INSERT INTO app.typed (id) VALUES (1);
	SELECT pm_pipeline.register_lease_table('app.typed', p_on_release => '{"state": "pending"}');
});
my $w2 = bound_worker('w2', q{UPDATE app.typed SET state = 'claimed', claimed_by = 'w2', lease_expires_at = now() + interval '1 hour';});
kill_client($w2);
ok(defined poll_within(q{SELECT claimed_by IS NULL AND state = 'pending' FROM app.typed WHERE id = 1}, 30),
	'12.7: the reaper releases a table whose on_release type lives in public');
ok(!$node->log_contains(qr/type "job_state" does not exist/), '12.7: ... without "type does not exist"');

# --- 12.3 with the reaper: an 8100-byte worker id does not stop it ------------------------
my $log_offset = -s $node->logfile;
sql(q{UPDATE app.jobs SET claimed_by = repeat('y', 8100), lease_expires_at = now() - interval '1 second',
	state = 'claimed' WHERE id = 4});
my $w3 = bound_worker('w3', q{UPDATE app.jobs SET state = 'claimed', claimed_by = 'w3', lease_expires_at = now() + interval '1 hour' WHERE id = 3;});
kill_client($w3);
ok(defined poll_within(q{SELECT count(*) = 0 FROM app.jobs WHERE claimed_by IS NOT NULL}, 30),
	'12.3: the reaper releases the 8100-byte holder and a killed worker\'s lease');
my $passes = sql('SELECT passes FROM pm_pipeline.reaper_status()');
ok($node->poll_query_until('postgres', "SELECT passes > $passes + 3 FROM pm_pipeline.reaper_status()"),
	'12.3: ... and keeps making passes');
is(sql('SELECT pid FROM pm_pipeline.reaper_status()'), $reaper, '12.3: ... the same reaper');
ok(!$node->log_contains(qr/payload string too long/, $log_offset), '12.3: ... no payload error in the log');

$node->stop;
done_testing();
