# Adversarial suite, roles and limits (issue 12; issue 13 item 1). Every case
# is an attack by a role the extension does not trust; each is run on a
# cluster that preloads worker_heartbeat and on one that does not.
#
# Attacks that already held on b002846 and must keep holding:
# - no access for PUBLIC, anon or authenticated, even with the schema exposed;
# - quoted-identifier injection through worker ids, table and column names;
# - an install into a schema owned by an untrusted role, which plants
#   shadowing functions, operators, domains and a cast before and after
#   CREATE EXTENSION;
# - guessed (here: known) lease tokens of rows hidden by RLS.
# Attacks that worked on b002846 (each fails there):
# - 13.1: over-long ids and types (and blank ones) in the tables; the update
#   from 1.1 refuses an installation that holds them, with a clear message;
# - 12.5: set_worker_type_dead_after('t', '100000000 years');
# - 12.9: 2 MiB current_task / metadata, unbounded worker ids per role;
# - 12 (decision): one role stops, revives, retypes or rewrites another
#   role's worker (and stopping releases leases in tables it cannot read);
# - 12 (decision): upsert_worker_heartbeat(..., 'stopped') kept the leases.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

# SQLSTATE of the first error of a psql script run as $role ('' for the
# superuser), or 'ok'.
sub sqlstate_of
{
	my ($node, $db, $role, $sql) = @_;
	my $set_role = $role ? "SET ROLE $role;\n" : '';
	my ($ret, $out, $err) =
	  $node->psql($db, "\\set VERBOSITY verbose\n$set_role$sql", on_error_stop => 1);
	return 'ok' if $ret == 0;
	return $1 if $err =~ /ERROR:\s+([0-9A-Z]{5}):/;
	return "no sqlstate: $err";
}

# Same, and the full stderr (for hints).
sub error_of
{
	my ($node, $db, $role, $sql) = @_;
	my $set_role = $role ? "SET ROLE $role;\n" : '';
	my ($ret, $out, $err) =
	  $node->psql($db, "\\set VERBOSITY verbose\n$set_role$sql", on_error_stop => 1);
	return ($ret == 0 ? 'ok' : ($err =~ /ERROR:\s+([0-9A-Z]{5}):/ ? $1 : 'none'), $err);
}

sub run_suite
{
	my ($node, $label) = @_;
	my $preloaded = $label eq 'preloaded';
	my $q = sub { $node->safe_psql('postgres', $_[0]) };

	$q->(q{
		CREATE ROLE anon NOLOGIN NOINHERIT;
		CREATE ROLE authenticated NOLOGIN NOINHERIT;
		CREATE ROLE stranger LOGIN;
		CREATE ROLE team_a NOLOGIN;
		CREATE ROLE team_b NOLOGIN;
		CREATE ROLE a_ops NOLOGIN IN ROLE team_a;
		CREATE SCHEMA pm_pipeline;
		CREATE EXTENSION worker_heartbeat SCHEMA pm_pipeline;
		GRANT USAGE ON SCHEMA pm_pipeline TO team_a, team_b, a_ops;
		GRANT EXECUTE ON FUNCTION
		    pm_pipeline.upsert_worker_heartbeat(text, text, text, uuid, text, timestamptz, jsonb, boolean),
		    pm_pipeline.stop_worker(text)
		  TO team_a, team_b, a_ops;
		CREATE SCHEMA app;
		CREATE TABLE app.anytab (x int);
		GRANT USAGE ON SCHEMA app TO team_a, team_b, a_ops;
	});

	# --- held: PUBLIC / anon / authenticated get nothing, schema exposed or not ---
	for my $exposed (0, 1)
	{
		$q->('GRANT USAGE ON SCHEMA pm_pipeline TO anon, authenticated, stranger') if $exposed;
		# Typed NULLs: a permitted call would fail with 22004 instead.
		my @calls = split /\n/, $q->(q{
			SELECT format('SELECT %s(%s)', p.oid::regproc,
			              coalesce(string_agg('NULL::' || CASE WHEN a.t = 'anyelement'::regtype THEN 'app.anytab'
			                                                   ELSE format_type(a.t, NULL) END, ', ' ORDER BY a.o), ''))
			  FROM pg_proc p
			  LEFT JOIN LATERAL unnest(p.proargtypes::oid[]) WITH ORDINALITY AS a(t, o) ON true
			 WHERE p.pronamespace = 'pm_pipeline'::regnamespace AND p.prorettype <> 'trigger'::regtype
			 GROUP BY p.oid ORDER BY 1});
		my @rels = split /\n/, $q->(q{
			SELECT c.oid::regclass FROM pg_class c
			 WHERE c.relnamespace = 'pm_pipeline'::regnamespace AND c.relkind IN ('r', 'v', 'S') ORDER BY 1});
		for my $role ('anon', 'authenticated', 'stranger')
		{
			my @let_in;
			for my $call (@calls)
			{
				my $state = sqlstate_of($node, 'postgres', $role, $call);
				push @let_in, "$call: $state" if $state ne '42501';
			}
			for my $rel (@rels)
			{
				my $state = sqlstate_of($node, 'postgres', $role, "SELECT 1 FROM $rel LIMIT 1");
				push @let_in, "$rel: $state" if $state ne '42501';
			}
			is(join("\n", @let_in), '',
				"$label: $role can call and read nothing (" . ($exposed ? 'schema exposed' : 'no USAGE') . ')');
		}
	}

	# --- 12, worker ids: a worker belongs to the role that created it ---------
	$q->(q{
		CREATE TABLE app.a_jobs (id int PRIMARY KEY, claimed_by text, lease_expires_at timestamptz);
		SELECT pm_pipeline.register_lease_table('app.a_jobs');
	});
	is(sqlstate_of($node, 'postgres', 'team_a',
			"SELECT pm_pipeline.upsert_worker_heartbeat('a-1', 'crawler', 'processing', p_metadata => '{\"team\": \"a\"}')"),
		'ok', "$label: team_a creates worker a-1");
	$q->("INSERT INTO app.a_jobs VALUES (1, 'a-1', now() + interval '1 hour')");
	my $state_of_a1 = q{SELECT worker_type || '/' || status || '/' || metadata::text || '/' || owner_role
	                      FROM pm_pipeline.worker_heartbeats WHERE worker_id = 'a-1'};
	my $a1 = $q->($state_of_a1);
	is($a1, 'crawler/processing/{"team": "a"}/team_a', "$label: a-1 belongs to team_a");
	# team_b cannot read app.a_jobs, and cannot stop, beat, retype, rewrite or
	# stop-by-heartbeat a-1; nothing changes, the lease stays.
	my %attacks = (
		'stop' => "SELECT pm_pipeline.stop_worker('a-1')",
		'beat (same arguments)' =>
		  "SELECT pm_pipeline.upsert_worker_heartbeat('a-1', 'crawler', 'processing', p_metadata => '{\"team\": \"a\"}')",
		'retype' => "SELECT pm_pipeline.upsert_worker_heartbeat('a-1', 'other', 'processing')",
		'rewrite metadata' =>
		  "SELECT pm_pipeline.upsert_worker_heartbeat('a-1', 'crawler', 'processing', p_metadata => '{\"team\": \"b\"}')",
		'stop by heartbeat' => "SELECT pm_pipeline.upsert_worker_heartbeat('a-1', 'crawler', 'stopped')",
		'bind to its session' =>
		  "SELECT pm_pipeline.upsert_worker_heartbeat('a-1', 'crawler', 'processing', p_session_bound => true)");
	for my $attack (sort keys %attacks)
	{
		my ($state, $err) = error_of($node, 'postgres', 'team_b', $attacks{$attack});
		is($state, '42501', "$label: team_b cannot $attack team_a's worker (42501)");
		like($err, qr/HINT:.*GRANT team_a TO team_b/, "$label: ... with a hint") if $attack eq 'stop';
	}
	is($q->($state_of_a1), $a1, "$label: a-1 unchanged after team_b's attempts");
	is($q->('SELECT claimed_by FROM app.a_jobs WHERE id = 1'), 'a-1', "$label: a-1's lease is still held");
	# Revive: dead, team_b cannot bring it back.
	$q->("UPDATE pm_pipeline.worker_heartbeats SET status = 'dead', died_at = now() WHERE worker_id = 'a-1'");
	is(sqlstate_of($node, 'postgres', 'team_b', "SELECT pm_pipeline.upsert_worker_heartbeat('a-1', 'crawler')"),
		'42501', "$label: team_b cannot revive team_a's dead worker");
	# A member of team_a can.
	is(sqlstate_of($node, 'postgres', 'a_ops', "SELECT pm_pipeline.upsert_worker_heartbeat('a-1', 'crawler')"),
		'ok', "$label: a member of team_a revives a-1");
	is(sqlstate_of($node, 'postgres', 'a_ops', "SELECT pm_pipeline.stop_worker('a-1')"),
		'ok', "$label: a member of team_a stops a-1");
	is($q->("SELECT status || '/' || owner_role FROM pm_pipeline.worker_heartbeats WHERE worker_id = 'a-1'"),
		'stopped/team_a', "$label: a-1 stopped, still team_a's");
	is($q->('SELECT claimed_by IS NULL FROM app.a_jobs WHERE id = 1'), 't', "$label: its lease released by the stop");

	# --- 12, 'stopped' through the heartbeat is stop_worker() --------------------
	$q->(q{
		SELECT pm_pipeline.upsert_worker_heartbeat('s-1', 'crawler', 'processing');
		INSERT INTO app.a_jobs VALUES (2, 's-1', now() + interval '1 hour');
		SELECT pm_pipeline.upsert_worker_heartbeat('s-1', 'crawler', 'stopped');
	});
	is($q->('SELECT claimed_by IS NULL AND lease_expires_at IS NULL FROM app.a_jobs WHERE id = 2'), 't',
		"$label: a 'stopped' heartbeat releases the worker's leases at once");
	is($q->("SELECT count(*) FROM pm_pipeline.worker_events WHERE worker_id = 's-1' AND event = 'stopped'"), '1',
		"$label: ... and is recorded as a stop");

	# --- 12.9: sizes and the number of workers per role ---------------------------
	is(sqlstate_of($node, 'postgres', 'team_b',
			"SELECT pm_pipeline.upsert_worker_heartbeat('b-1', 't', p_current_task => repeat('x', 2 * 1024 * 1024))"),
		'22001', "$label: a 2 MiB current_task is refused (22001)");
	is(sqlstate_of($node, 'postgres', 'team_b',
			"SELECT pm_pipeline.upsert_worker_heartbeat('b-1', 't', p_metadata => jsonb_build_object('x', repeat('x', 2 * 1024 * 1024)))"),
		'22001', "$label: 2 MiB of metadata is refused (22001)");
	# A worker role cannot lift the limits for itself. Before the library is
	# loaded in a session (not preloaded) the SET only makes a placeholder,
	# which the library refuses when it loads (with a WARNING): the limit holds.
	is(sqlstate_of($node, 'postgres', 'team_b', qq{
			SET worker_heartbeat.max_metadata_bytes = '100MB';
			SELECT pm_pipeline.upsert_worker_heartbeat('b-1', 't', p_metadata => jsonb_build_object('x', repeat('x', 1024 * 1024)));
		}),
		$preloaded ? '42501' : '22001', "$label: a worker role cannot lift the limits for itself");
	is(sqlstate_of($node, 'postgres', 'team_b', qq{
			SELECT pm_pipeline.upsert_worker_heartbeat('b-0', 't');
			SET worker_heartbeat.max_metadata_bytes = '100MB';
		}),
		'42501', "$label: ... nor once the library is loaded");
	my ($state, $err) = error_of($node, 'postgres', '', q{
		SET worker_heartbeat.max_workers_per_role = 50;
		SET ROLE team_b;
		SELECT pm_pipeline.upsert_worker_heartbeat('flood-' || g, 't') FROM generate_series(1, 60) g;
	});
	is($state, '54000', "$label: one role cannot create more than max_workers_per_role workers (54000)");
	like($err, qr/HINT:.*max_workers_per_role/, "$label: ... with a hint");
	is($q->("SELECT count(*) FROM pm_pipeline.worker_heartbeats WHERE worker_id LIKE 'flood-%'"), '0',
		"$label: ... and the failed statement left nothing");

	# --- 12.5: dead_after is bounded --------------------------------------------------
	($state, $err) = error_of($node, 'postgres', '',
		"SELECT pm_pipeline.set_worker_type_dead_after('t', '100000000 years')");
	is($state, '22023', "$label: dead_after of 100000000 years is refused (22023)");
	like($err, qr/HINT:/, "$label: ... with a hint");
	is(sqlstate_of($node, 'postgres', '', "INSERT INTO pm_pipeline.worker_types VALUES ('t', '100000000 years')"),
		'23514', "$label: ... also when written behind the API's back");
	is(sqlstate_of($node, 'postgres', '',
			'SELECT count(*) FROM pm_pipeline.v_dead_workers; SELECT pm_pipeline.release_dead_worker_leases()'),
		'ok', "$label: views and the pass still work");

	# --- 13.1: ids and types are bounded in the tables too ---------------------------
	is(sqlstate_of($node, 'postgres', '',
			"INSERT INTO pm_pipeline.worker_heartbeats (worker_id, worker_type) VALUES (repeat('x', 300), 't')"),
		'23514', "$label: a 300-byte worker_id is refused by a CHECK, even for a superuser");
	is(sqlstate_of($node, 'postgres', '',
			"INSERT INTO pm_pipeline.worker_heartbeats (worker_id, worker_type) VALUES ('ok', repeat('x', 300))"),
		'23514', "$label: a 300-byte worker_type too");

	# --- held: quoted-identifier injection --------------------------------------------
	$q->(q{
		CREATE TABLE app.canary (x int);
		CREATE SCHEMA "sch'ema ""x";
		CREATE TABLE "sch'ema ""x"."we""ird; DROP TABLE app.canary; --" (
		    id int PRIMARY KEY, "claimed "" by" text, "exp'ires" timestamptz);
		SELECT pm_pipeline.register_lease_table('"sch''ema ""x"."we""ird; DROP TABLE app.canary; --"',
		                                        'claimed " by', 'exp''ires');
		SELECT pm_pipeline.upsert_worker_heartbeat($i$'); DROP TABLE app.canary; --$i$, 'injector');
		SELECT pm_pipeline.upsert_worker_heartbeat($i$"; DROP TABLE app.canary; --$i$, 'injector');
		INSERT INTO "sch'ema ""x"."we""ird; DROP TABLE app.canary; --" VALUES
		    (1, $i$'); DROP TABLE app.canary; --$i$, now() + interval '1 hour'),
		    (2, $i$"; DROP TABLE app.canary; --$i$, now() - interval '1 second');
		SELECT pm_pipeline.stop_worker($i$'); DROP TABLE app.canary; --$i$);
		SELECT pm_pipeline.release_dead_worker_leases();
	});
	is($q->(q{SELECT count(*) FROM "sch'ema ""x"."we""ird; DROP TABLE app.canary; --" WHERE "claimed "" by" IS NULL}),
		'2', "$label: leases of quoted names released (stop and expiry)");
	is($q->("SELECT to_regclass('app.canary') IS NOT NULL"), 't', "$label: nothing injected");

	# --- held: tokens of rows hidden by RLS ---------------------------------------------
	$q->(q{
		CREATE ROLE tenant_1 NOLOGIN;
		CREATE ROLE tenant_2 NOLOGIN;
		CREATE ROLE queue_owner NOLOGIN;
		GRANT USAGE ON SCHEMA pm_pipeline, app TO tenant_1, tenant_2, queue_owner;
		GRANT EXECUTE ON FUNCTION
		    pm_pipeline.upsert_worker_heartbeat(text, text, text, uuid, text, timestamptz, jsonb, boolean),
		    pm_pipeline.claim_leases(anyelement, text, integer, interval, jsonb, jsonb),
		    pm_pipeline.extend_lease(regclass, bigint, interval), pm_pipeline.complete_lease(regclass, bigint, jsonb),
		    pm_pipeline.fail_lease(regclass, bigint, jsonb), pm_pipeline.check_lease(regclass, bigint),
		    pm_pipeline.register_lease_table(regclass, name, name, jsonb, name, name, integer, jsonb, name)
		  TO tenant_1, tenant_2, queue_owner;
		CREATE TABLE app.rq (id int PRIMARY KEY, tenant name NOT NULL, state text NOT NULL DEFAULT 'pending',
		                     claimed_by text, lease_expires_at timestamptz, lease_token bigint,
		                     attempts int NOT NULL DEFAULT 0);
		ALTER TABLE app.rq OWNER TO queue_owner;
		ALTER TABLE app.rq ENABLE ROW LEVEL SECURITY;
		CREATE POLICY own_rows ON app.rq USING (tenant = current_user);
		GRANT SELECT, UPDATE ON app.rq TO tenant_1, tenant_2;
		INSERT INTO app.rq (id, tenant) VALUES (1, 'tenant_1'), (2, 'tenant_2');
		SET ROLE queue_owner;
		SELECT pm_pipeline.register_lease_table('app.rq', p_token_column => 'lease_token',
		                                        p_attempts_column => 'attempts');
		RESET ROLE;
	});
	my $token = $node->safe_psql('postgres', q{
		SET ROLE tenant_1;
		SELECT pm_pipeline.upsert_worker_heartbeat('t1-w', 'tenant') IS NULL AND false;
		SELECT lease_token FROM pm_pipeline.claim_leases(NULL::app.rq, 't1-w', 10, '1 hour');
	});
	$token = (split /\n/, $token)[-1];
	like($token, qr/^-?\d+$/, "$label: tenant_1 claimed its row, token $token");
	my $row1 = $q->('SELECT claimed_by || lease_token || lease_expires_at || attempts FROM app.rq WHERE id = 1');
	for my $call (
		"SELECT pm_pipeline.complete_lease('app.rq', $token)",
		"SELECT pm_pipeline.fail_lease('app.rq', $token)",
		"SELECT pm_pipeline.extend_lease('app.rq', $token, '10 hours')",
		"SELECT pm_pipeline.check_lease('app.rq', $token)")
	{
		my $state = sqlstate_of($node, 'postgres', 'tenant_2', $call);
		isnt($state, 'ok', "$label: tenant_2 with tenant_1's token is refused ($state): $call");
	}
	is($q->('SELECT claimed_by || lease_token || lease_expires_at || attempts FROM app.rq WHERE id = 1'),
		$row1, "$label: the hidden row is unchanged");
	is($node->safe_psql('postgres', q{SET ROLE tenant_2;
			SELECT count(*) FROM pm_pipeline.claim_leases(NULL::app.rq, 't2-w', 10, '1 hour')}),
		'1', "$label: tenant_2 claims only its own row");

	# --- held: a schema owned by an untrusted role, shadowing objects --------------------
	$q->(q{
		CREATE ROLE mallory LOGIN;
		CREATE DATABASE shadow;
	});
	my $s = sub { $node->safe_psql('shadow', $_[0]) };
	$s->(q{
		CREATE SCHEMA mal AUTHORIZATION mallory;
		CREATE TABLE mal.pwned (what text, by_role name);
		ALTER TABLE mal.pwned OWNER TO mallory;
		GRANT INSERT, SELECT ON mal.pwned TO PUBLIC;
	});
	my $plant = q{
		SET ROLE mallory;
		CREATE OR REPLACE FUNCTION mal.trap(what text) RETURNS boolean LANGUAGE plpgsql AS $t$
		BEGIN
		    INSERT INTO mal.pwned VALUES (what, current_user);
		    IF (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user) THEN
		        EXECUTE 'ALTER ROLE mallory SUPERUSER';
		    END IF;
		    RETURN true;
		END $t$;
		GRANT EXECUTE ON FUNCTION mal.trap(text) TO PUBLIC;
		CREATE OR REPLACE FUNCTION mal.now() RETURNS timestamptz LANGUAGE sql
		    AS $t$ SELECT CASE WHEN mal.trap('now') THEN pg_catalog.now() END $t$;
		CREATE OR REPLACE FUNCTION mal.btrim(text, text) RETURNS text LANGUAGE sql
		    AS $t$ SELECT CASE WHEN mal.trap('btrim') THEN pg_catalog.btrim($1, $2) END $t$;
		CREATE OR REPLACE FUNCTION mal.octet_length(text) RETURNS int LANGUAGE sql
		    AS $t$ SELECT CASE WHEN mal.trap('octet_length') THEN 0 END $t$;
		CREATE OR REPLACE FUNCTION mal.jsonb_typeof(jsonb) RETURNS text LANGUAGE sql
		    AS $t$ SELECT CASE WHEN mal.trap('jsonb_typeof') THEN 'object' END $t$;
		CREATE OR REPLACE FUNCTION mal.current_setting(text, boolean) RETURNS text LANGUAGE sql
		    AS $t$ SELECT CASE WHEN mal.trap('current_setting') THEN pg_catalog.current_setting($1, $2) END $t$;
		CREATE OR REPLACE FUNCTION mal.nextval(regclass) RETURNS bigint LANGUAGE sql
		    AS $t$ SELECT CASE WHEN mal.trap('nextval') THEN pg_catalog.nextval($1) END $t$;
		CREATE OR REPLACE FUNCTION mal.count_(bigint, anyelement) RETURNS bigint LANGUAGE sql
		    AS $t$ SELECT CASE WHEN mal.trap('count') THEN $1 + 1 END $t$;
		CREATE OR REPLACE FUNCTION mal.text_eq(text, text) RETURNS boolean LANGUAGE sql
		    AS $t$ SELECT mal.trap('text =') AND $1 OPERATOR(pg_catalog.=) $2 $t$;
		CREATE OR REPLACE FUNCTION mal.jsonb_cat(jsonb, jsonb) RETURNS jsonb LANGUAGE sql
		    AS $t$ SELECT CASE WHEN mal.trap('jsonb ||') THEN $1 OPERATOR(pg_catalog.||) $2 END $t$;
		CREATE OR REPLACE FUNCTION mal.ts_le(timestamptz, timestamptz) RETURNS boolean LANGUAGE sql
		    AS $t$ SELECT mal.trap('timestamptz <=') AND $1 OPERATOR(pg_catalog.<=) $2 $t$;
		CREATE OR REPLACE FUNCTION mal.ts_mi(timestamptz, interval) RETURNS timestamptz LANGUAGE sql
		    AS $t$ SELECT CASE WHEN mal.trap('timestamptz -') THEN $1 OPERATOR(pg_catalog.-) $2 END $t$;
		CREATE OR REPLACE FUNCTION mal.to_e(text) RETURNS mal.e LANGUAGE sql
		    AS $t$ SELECT CASE WHEN mal.trap('cast') THEN 'a'::mal.e END $t$;
	};
	# Before CREATE EXTENSION: types, operators, domains, an aggregate and a cast.
	$s->(q{
		SET ROLE mallory;
		CREATE TYPE mal.e AS ENUM ('a');
		CREATE FUNCTION mal.trap(what text) RETURNS boolean LANGUAGE sql AS $t$ SELECT true $t$;
	});
	$s->($plant);
	$s->(q{
		SET ROLE mallory;
		CREATE OPERATOR mal.= (LEFTARG = text, RIGHTARG = text, FUNCTION = mal.text_eq);
		CREATE OPERATOR mal.|| (LEFTARG = jsonb, RIGHTARG = jsonb, FUNCTION = mal.jsonb_cat);
		CREATE OPERATOR mal.<= (LEFTARG = timestamptz, RIGHTARG = timestamptz, FUNCTION = mal.ts_le);
		CREATE OPERATOR mal.- (LEFTARG = timestamptz, RIGHTARG = interval, FUNCTION = mal.ts_mi);
		CREATE AGGREGATE mal.count(anyelement) (SFUNC = mal.count_, STYPE = bigint, INITCOND = '0');
		CREATE DOMAIN mal.regrole AS text CHECK (mal.trap('domain regrole'));
		CREATE DOMAIN mal.jsonb AS text CHECK (mal.trap('domain jsonb'));
		CREATE DOMAIN mal.interval AS text CHECK (mal.trap('domain interval'));
		CREATE CAST (text AS mal.e) WITH FUNCTION mal.to_e(text) AS IMPLICIT;
	});
	$s->(q{
		CREATE EXTENSION worker_heartbeat SCHEMA mal;
		SELECT mal.stop_reaper();
		CREATE TABLE public.sq (id int PRIMARY KEY, state text NOT NULL DEFAULT 'pending', claimed_by text,
		                        lease_expires_at timestamptz, lease_token bigint, attempts int NOT NULL DEFAULT 0);
		INSERT INTO public.sq (id) SELECT g FROM generate_series(1, 4) g;
	});
	# After CREATE EXTENSION: more of the same, overloads with looser types.
	$s->(q{
		SET ROLE mallory;
		CREATE FUNCTION mal.name_eq(name, text) RETURNS boolean LANGUAGE sql
		    AS $t$ SELECT mal.trap('name =') AND $1::text OPERATOR(pg_catalog.=) $2 $t$;
		CREATE OPERATOR mal.= (LEFTARG = name, RIGHTARG = text, FUNCTION = mal.name_eq);
		CREATE FUNCTION mal.upsert_worker_heartbeat(varchar, varchar) RETURNS void LANGUAGE sql
		    AS $t$ SELECT mal.trap('upsert overload') $t$;
		CREATE FUNCTION mal.pg_stat_get_activity(integer) RETURNS SETOF record LANGUAGE sql
		    AS $t$ SELECT NULL::record WHERE mal.trap('pg_stat_get_activity') $t$;
		CREATE FUNCTION mal.has_privs(oid, oid) RETURNS boolean LANGUAGE sql AS $t$ SELECT mal.trap('has_privs') $t$;
	});
	# A careless superuser works with the untrusted schema first in its path.
	$s->(q{
		SET search_path = mal, public;
		SELECT register_lease_table('public.sq', p_on_release => '{"state": "pending"}',
		                            p_token_column => 'lease_token', p_attempts_column => 'attempts');
		SELECT upsert_worker_heartbeat('m-1', 'mal', 'processing', p_metadata => '{"a": 1}');
		SELECT upsert_worker_heartbeat('m-1', 'mal', 'processing', p_metadata => '{"b": 2}', p_session_bound => true);
		SELECT upsert_worker_heartbeat('m-2', 'mal');
		SELECT count(*) FROM claim_leases(NULL::public.sq, 'm-1', 2, '1 hour', '{"state": "pending"}', '{"state": "claimed"}');
		SELECT count(*) FROM claim_leases(NULL::public.sq, 'm-2', 1, '1 second');
		SELECT set_worker_type_dead_after('mal', '1 hour');
		SELECT stop_worker('m-1');
		SELECT release_dead_worker_leases();
		SELECT count(*) FROM v_active_workers; SELECT count(*) FROM v_dead_workers; SELECT count(*) FROM worker_liveness;
		SELECT get_worker_health_summary(); SELECT count(*) FROM get_worker_stats();
		SELECT length(metrics()) > 0;
		SELECT cleanup_stale_workers(1);
		SELECT set_worker_type_dead_after('mal', NULL);
	});
	# ... and the reaper's own passes.
	$s->('SELECT mal.start_reaper()');
	ok($node->poll_query_until('shadow',
			"SELECT passes >= 3 FROM mal.reaper_status() WHERE database = current_database()"),
		"$label: the reaper passes over the planted schema");
	is($s->(q{SELECT string_agg(what || ' as ' || by_role, ', ') FROM mal.pwned}), '',
		"$label: no planted function, operator, domain, aggregate or cast ran");
	is($q->("SELECT rolsuper FROM pg_roles WHERE rolname = 'mallory'"), 'f', "$label: mallory is not a superuser");
	is($s->("SELECT count(*) FROM public.sq WHERE claimed_by = 'm-1'"), '0',
		"$label: ... and the extension worked there (m-1's leases released by its stop)");
	$s->('SELECT mal.stop_reaper()');
}

# --- 13.1: the update from 1.1 refuses rows the 1.2 constraints would refuse ---------
sub update_with_bad_rows
{
	my ($node, $label, $long_id) = @_;
	$node->safe_psql('postgres', 'CREATE DATABASE upd');
	my $u = sub { $node->safe_psql('upd', $_[0]) };
	$u->(q{
		CREATE SCHEMA pm_pipeline;
		CREATE EXTENSION worker_heartbeat SCHEMA pm_pipeline VERSION '1.1';
		SELECT pm_pipeline.stop_reaper();
		SELECT pm_pipeline.upsert_worker_heartbeat('legacy-1', 'old');
		-- accepted by 1.1, and then every pass and every view failed (12.5)
		SELECT pm_pipeline.set_worker_type_dead_after('forever', '100000000 years');
		INSERT INTO pm_pipeline.worker_heartbeats (worker_id, worker_type) VALUES (E' \t', 'blank');
		INSERT INTO pm_pipeline.worker_heartbeats (worker_id, worker_type) VALUES ('long-type', repeat('t', 300));
	});
	# Without the preloaded cache a 300-byte id in the table is harmless to the
	# old code; with it, it is the crash of 13.1 that the cache's own fix handles.
	$u->("INSERT INTO pm_pipeline.worker_heartbeats (worker_id, worker_type) VALUES (repeat('x', 300), 'long')")
	  if $long_id;
	my ($state, $err) = error_of($node, 'upd', '', 'ALTER EXTENSION worker_heartbeat UPDATE');
	is($state, '23514', "$label: the update from 1.1 refuses over-long or blank ids (23514)");
	like($err, qr/cannot update worker_heartbeat to 1\.2: \d+ row\(s\) of worker_heartbeats/, "$label: ... saying why");
	like($err, qr/HINT:.*DELETE FROM/, "$label: ... and how to fix them");
	is($u->("SELECT extversion FROM pg_extension WHERE extname = 'worker_heartbeat'"), '1.1',
		"$label: ... and changes nothing");
	$u->(q{DELETE FROM pm_pipeline.worker_heartbeats
	        WHERE octet_length(worker_id) > 200 OR octet_length(worker_type) > 200 OR btrim(worker_id, E' \t') = ''});
	($state, $err) = error_of($node, 'upd', '', 'ALTER EXTENSION worker_heartbeat UPDATE');
	is($state, '23514', "$label: then it refuses a dead_after over 10 years");
	like($err, qr/dead_after over 10 years/, "$label: ... saying why");
	$u->("SELECT pm_pipeline.set_worker_type_dead_after('forever', '1 day')");
	is(sqlstate_of($node, 'upd', '', 'ALTER EXTENSION worker_heartbeat UPDATE'), 'ok', "$label: fixed, it updates");
	is($u->("SELECT extversion = default_version FROM pg_extension, pg_available_extensions "
	        . "WHERE extname = 'worker_heartbeat' AND name = extname"), 't', "$label: now the default version (1.2 or later)");
	is($u->(q{SELECT count(*) FROM pg_constraint WHERE conrelid IN ('pm_pipeline.worker_heartbeats'::regclass,
	              'pm_pipeline.worker_types'::regclass) AND contype = 'c' AND convalidated
	              AND conname IN ('worker_heartbeats_worker_id_check', 'worker_heartbeats_worker_type_check',
	                              'worker_types_worker_type_check', 'worker_types_dead_after_check')}),
		'4', "$label: the four constraints are there and validated");
	# A worker from before 1.2 has no owner; the next role that beats it adopts it.
	$u->(q{
		CREATE ROLE upd_team;
		GRANT USAGE ON SCHEMA pm_pipeline TO upd_team;
		GRANT EXECUTE ON FUNCTION
		    pm_pipeline.upsert_worker_heartbeat(text, text, text, uuid, text, timestamptz, jsonb, boolean) TO upd_team;
	});
	is($u->("SELECT owner_role IS NULL FROM pm_pipeline.worker_heartbeats WHERE worker_id = 'legacy-1'"), 't',
		"$label: legacy-1 has no owner after the update");
	is(sqlstate_of($node, 'upd', 'upd_team', "SELECT pm_pipeline.upsert_worker_heartbeat('legacy-1', 'old')"),
		'ok', "$label: its role beats it");
	is($u->("SELECT owner_role FROM pm_pipeline.worker_heartbeats WHERE worker_id = 'legacy-1'"), 'upd_team',
		"$label: and owns it");
	# Dump and restore keep the owner (by name) and the constraints.
	my $dump = $node->basedir . '/upd.dump';
	$node->command_ok([ 'pg_dump', '-Fc', '-f', $dump, '-d', $node->connstr('upd') ], "$label: pg_dump");
	$node->safe_psql('postgres', 'CREATE DATABASE upd_restored');
	$node->command_ok([ 'pg_restore', '--exit-on-error', '-d', $node->connstr('upd_restored'), $dump ],
		"$label: pg_restore");
	is($node->safe_psql('upd_restored',
			"SELECT owner_role FROM pm_pipeline.worker_heartbeats WHERE worker_id = 'legacy-1'"),
		'upd_team', "$label: the restored worker keeps its owner");
	is(sqlstate_of($node, 'upd_restored', '',
			"INSERT INTO pm_pipeline.worker_heartbeats (worker_id, worker_type) VALUES (repeat('x', 300), 't')"),
		'23514', "$label: the restored tables keep the constraints");
	$node->safe_psql('upd_restored', 'SELECT pm_pipeline.stop_reaper()');
	$node->safe_psql('postgres', 'DROP DATABASE upd WITH (FORCE)');
	$node->safe_psql('postgres', 'DROP DATABASE upd_restored WITH (FORCE)');
}

my $pre = PostgreSQL::Test::Cluster->new('adv_roles_pre');
$pre->init;
$pre->append_conf('postgresql.conf', q{
shared_preload_libraries = 'worker_heartbeat'
max_worker_processes = 16
worker_heartbeat.reap_interval = '200ms'
worker_heartbeat.launcher_interval = '1s'
});
$pre->start;
is($pre->safe_psql('postgres', 'SHOW shared_preload_libraries'), 'worker_heartbeat', 'preloaded cluster');
run_suite($pre, 'preloaded');
update_with_bad_rows($pre, 'preloaded', 0);
$pre->stop;

my $not = PostgreSQL::Test::Cluster->new('adv_roles_not');
$not->init;
$not->append_conf('postgresql.conf', q{
max_worker_processes = 16
worker_heartbeat.reap_interval = '200ms'
});
$not->start;
is($not->safe_psql('postgres', 'SHOW shared_preload_libraries'), '', 'cluster without preload');
run_suite($not, 'not preloaded');
update_with_bad_rows($not, 'not preloaded', 1);
$not->stop;

done_testing();
