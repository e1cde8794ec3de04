# Supabase-like install: the roles, grants and security rules of a Supabase
# project, proven on a cluster WITHOUT shared_preload_libraries.
#
# - roles as Supabase makes them: the bootstrap superuser plays supabase_admin;
#   "postgres" is the project owner (LOGIN CREATEROLE CREATEDB REPLICATION
#   BYPASSRLS, not a superuser); anon, authenticated, service_role (NOLOGIN,
#   NOINHERIT; service_role BYPASSRLS); authenticator (LOGIN NOINHERIT, member of
#   the three) is how PostgREST connects and then SET ROLE;
# - the schema is created by and owned by the owner, the extension is created by
#   the superuser on the owner's behalf (what supautils does);
# - the README's grants (docs/grants.sql) are applied for service_role;
# - service_role can do what a worker and a monitor need; anon and
#   authenticated can call and read nothing (SQLSTATE 42501), even once the
#   schema is "exposed" (USAGE granted to them, as Supabase's docs say to do);
# - the security linter's rules: every table has RLS enabled, every function a
#   fixed search_path, no SECURITY DEFINER function executable by PUBLIC, anon
#   or authenticated. Each rule's check is shown able to fail: the test breaks
#   the rule inside a transaction, asserts that the check now reports the
#   object, and rolls back.
use strict;
use warnings;
use FindBin;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $root = "$FindBin::Bin/../..";
my $schema = 'pm_pipeline';

my $node = PostgreSQL::Test::Cluster->new('supabase');
$node->init;
# No shared_preload_libraries: hosted Supabase cannot preload it.
$node->append_conf('postgresql.conf', "max_worker_processes = 16\n");
$node->start;

is($node->safe_psql('postgres', 'SHOW shared_preload_libraries'), '',
	'the cluster does not preload worker_heartbeat');

my $superuser = $node->safe_psql('postgres', 'SELECT current_user');
# Supabase's owner role is called postgres; if the test's own superuser has
# that name, use another one.
my $owner = $superuser eq 'postgres' ? 'postgres_owner' : 'postgres';

$node->safe_psql('postgres', qq{
	CREATE ROLE "$owner" LOGIN CREATEROLE CREATEDB REPLICATION BYPASSRLS NOSUPERUSER;
	CREATE ROLE anon NOLOGIN NOINHERIT;
	CREATE ROLE authenticated NOLOGIN NOINHERIT;
	CREATE ROLE service_role NOLOGIN NOINHERIT BYPASSRLS;
	CREATE ROLE authenticator LOGIN NOINHERIT;
	GRANT anon, authenticated, service_role TO authenticator;
	GRANT anon, authenticated, service_role TO "$owner";
	GRANT ALL ON DATABASE postgres TO "$owner";
	-- what Supabase grants in public (it does not touch other schemas)
	GRANT USAGE ON SCHEMA public TO anon, authenticated, service_role;
	ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT ALL ON TABLES TO anon, authenticated, service_role;
	ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT ALL ON FUNCTIONS TO anon, authenticated, service_role;
	ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT ALL ON SEQUENCES TO anon, authenticated, service_role;
});
is($node->safe_psql('postgres', "SELECT rolsuper FROM pg_roles WHERE rolname = '$owner'"), 'f',
	"the owner role $owner is not a superuser");

# The owner creates the schema; the superuser creates the extension in it.
$node->safe_psql('postgres', qq{CREATE SCHEMA $schema}, extra_params => [ '-U', $owner ]);
$node->safe_psql('postgres', qq{CREATE EXTENSION worker_heartbeat SCHEMA $schema});
is( $node->safe_psql('postgres',
		"SELECT n.nspname || ' ' || pg_get_userbyid(n.nspowner) FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = 'worker_heartbeat'"),
	"$schema $owner",
	'extension installed in the schema the owner created');

# A queue table of the application, owned by service_role (only the table's
# owner may register it).
$node->safe_psql('postgres', q{
	CREATE TABLE public.jobs (
		id bigint PRIMARY KEY,
		state text NOT NULL DEFAULT 'pending',
		claimed_by text,
		lease_expires_at timestamptz,
		lease_token bigint,
		attempts integer NOT NULL DEFAULT 0);
	ALTER TABLE public.jobs OWNER TO service_role;
	INSERT INTO public.jobs (id) SELECT g FROM generate_series(1, 5) g;
});

# --- the README's grants for service_role ---------------------------------
my $grants_file = "$root/docs/grants.sql";
ok(-f $grants_file, 'docs/grants.sql exists') or BAIL_OUT('no docs/grants.sql');
{
	# As the file says for Supabase: worker and monitor are both service_role.
	my ($ret, $out, $err) = $node->psql(
		'postgres', '',
		extra_params => [
			'-f', $grants_file,
			'-v', "schema=$schema",
			'-v', 'worker_role=service_role',
			'-v', 'monitor_role=service_role'
		],
		on_error_stop => 1);
	is($ret, 0, 'docs/grants.sql applies with worker_role = monitor_role = service_role')
	  or diag($err);
	# On Supabase service_role is also the operator: the operator functions the
	# file names (registering tables, a manual reaping pass), granted with the
	# statement docs/supabase.md shows.
	$node->safe_psql('postgres', qq{
		GRANT EXECUTE ON FUNCTION $schema.register_lease_table(regclass, name, name, jsonb, name, name, integer, jsonb, name),
		                          $schema.unregister_lease_table(regclass),
		                          $schema.release_dead_worker_leases()
		   TO service_role});
}

# Run SQL as a role the way PostgREST does: log in as authenticator, SET ROLE.
# Returns (exit code, stdout, stderr); errors carry their SQLSTATE.
sub as_role
{
	my ($role, $sql) = @_;
	my ($ret, $out, $err) = $node->psql(
		'postgres', "\\set VERBOSITY verbose\nSET ROLE $role;\n$sql",
		extra_params => [ '-U', 'authenticator' ],
		on_error_stop => 1);
	return ($ret, $out, $err);
}

sub as_role_ok
{
	my ($role, $sql, $expected, $name) = @_;
	my ($ret, $out, $err) = as_role($role, $sql);
	if ($ret != 0)
	{
		fail($name);
		diag("as $role: $sql\n$err");
		return;
	}
	if (defined $expected) { is($out, $expected, $name); }
	else { pass($name); }
}

sub denied
{
	my ($role, $sql, $name) = @_;
	my ($ret, $out, $err) = as_role($role, $sql);
	ok($ret != 0 && $err =~ /ERROR:\s+42501:/, $name)
	  or diag("as $role: $sql\nexit $ret\nstdout: $out\nstderr: $err");
}

my $has_11 = $node->safe_psql('postgres',
	"SELECT count(*) FROM pg_proc WHERE proname = 'claim_leases' AND pronamespace = '$schema'::regnamespace");

# --- service_role: worker and monitor ---------------------------------------
as_role_ok('service_role',
	"SELECT $schema.upsert_worker_heartbeat('sr-1', 'supabase-test')",
	'', 'service_role: heartbeat (new worker)');
as_role_ok('service_role',
	"SELECT $schema.upsert_worker_heartbeat('sr-1', 'supabase-test', 'processing', NULL, 'job 1', NULL, '{\"host\":\"a\"}')",
	'', 'service_role: heartbeat with status, task and metadata');
as_role_ok('service_role',
	"SELECT worker_id, status, current_task, metadata->>'host' FROM $schema.v_active_workers",
	'sr-1|processing|job 1|a', 'service_role: reads v_active_workers');
as_role_ok('service_role', "SELECT count(*) FROM $schema.v_dead_workers",
	'0', 'service_role: reads v_dead_workers');
as_role_ok('service_role', "SELECT worker_id FROM $schema.get_active_workers()",
	'sr-1', 'service_role: get_active_workers()');
as_role_ok('service_role', "SELECT count(*) FROM $schema.get_dead_workers()",
	'0', 'service_role: get_dead_workers()');
as_role_ok('service_role',
	"SELECT total_workers, processing_workers FROM $schema.get_worker_stats() WHERE worker_type = 'supabase-test'",
	'1|1', 'service_role: get_worker_stats()');
as_role_ok('service_role',
	"SELECT $schema.get_worker_health_summary()->>'total_active_workers'",
	'1', 'service_role: get_worker_health_summary()');
as_role_ok('service_role', "SELECT count(*) >= 0 FROM $schema.reaper_status()",
	't', 'service_role: reaper_status()');
as_role_ok('service_role',
	"SELECT $schema.metrics() LIKE '%worker_heartbeat%'",
	't', 'service_role: metrics()');
as_role_ok('service_role',
	"SELECT count(*) > 0 FROM $schema.worker_events WHERE worker_id = 'sr-1'",
	't', 'service_role: reads worker_events');

# register / release: a lease past its deadline goes back to the queue.
as_role_ok('service_role',
	$has_11
	? "SELECT $schema.register_lease_table('public.jobs', p_on_release => '{\"state\":\"pending\"}', p_token_column => 'lease_token', p_attempts_column => 'attempts')"
	: "SELECT $schema.register_lease_table('public.jobs', 'claimed_by', 'lease_expires_at', '{\"state\":\"pending\"}')",
	'', 'service_role: register_lease_table on its own table');
as_role_ok('service_role',
	"UPDATE public.jobs SET claimed_by = 'sr-1', state = 'claimed', lease_expires_at = now() - interval '1 minute' WHERE id = 1",
	'', 'service_role: a claim whose lease has expired');
# The reaper (started without preload) may release it first: either way the
# row must come back; release_dead_worker_leases() itself must be callable.
as_role_ok('service_role', "SELECT $schema.release_dead_worker_leases() >= 0",
	't', 'service_role: release_dead_worker_leases()');
as_role_ok('service_role',
	"SELECT state, claimed_by IS NULL, lease_expires_at IS NULL FROM public.jobs WHERE id = 1",
	'pending|t|t', 'service_role: the expired lease was released with on_release applied');

if ($has_11)
{
	as_role_ok('service_role',
		"SELECT count(*) FROM $schema.claim_leases(NULL::public.jobs, 'sr-1', 2, '1 minute', '{\"state\":\"pending\"}', '{\"state\":\"claimed\"}')",
		'2', 'service_role: claim_leases()');
	as_role_ok('service_role',
		"SELECT $schema.complete_lease('public.jobs', lease_token, '{\"state\":\"done\"}') FROM public.jobs WHERE lease_token IS NOT NULL AND claimed_by = 'sr-1' ORDER BY id LIMIT 1",
		'', 'service_role: complete_lease()');
	as_role_ok('service_role',
		"SELECT count(*) FROM public.jobs WHERE state = 'done'", '1',
		'service_role: the completed job is done');
}
else
{
	note('claim_leases() not installed yet: fenced-lease calls skipped');
}

as_role_ok('service_role', "SELECT $schema.stop_worker('sr-1')", 't',
	'service_role: stop_worker()');
as_role_ok('service_role',
	"SELECT count(*) FROM public.jobs WHERE claimed_by IS NOT NULL", '0',
	'service_role: stop_worker released its leases');
as_role_ok('service_role', "SELECT $schema.unregister_lease_table('public.jobs')",
	't', 'service_role: unregister_lease_table()');

# A removed grant is noticed: service_role without EXECUTE on the heartbeat.
{
	my ($ret, $out, $err) = $node->psql('postgres', qq{
		\\set VERBOSITY verbose
		BEGIN;
		REVOKE EXECUTE ON FUNCTION $schema.upsert_worker_heartbeat(text, text, text, uuid, text, timestamptz, jsonb, boolean) FROM service_role, PUBLIC;
		SET LOCAL ROLE service_role;
		SELECT $schema.upsert_worker_heartbeat('sr-2', 'supabase-test');
	}, on_error_stop => 1);
	ok($ret != 0 && $err =~ /ERROR:\s+42501:/,
		'the service_role check fails once its EXECUTE grant is revoked (rolled back)')
	  or diag("exit $ret: $err");
	as_role_ok('service_role', "SELECT $schema.upsert_worker_heartbeat('sr-2', 'supabase-test')", '',
		'the revoke was rolled back: service_role heartbeats again');
}

# --- anon and authenticated: nothing ------------------------------------------
# Every function (called with typed NULLs; a permitted call would fail with
# 22004 instead) and every table, view and sequence of the schema.
my @calls = split /\n/, $node->safe_psql('postgres', qq{
	SELECT format('SELECT %I.%I(%s)', n.nspname, p.proname,
	              coalesce(string_agg('NULL::' || CASE WHEN t.typname = 'anyelement' THEN 'public.jobs'
	                                                   ELSE format_type(a.t, NULL) END, ', ' ORDER BY a.ord), ''))
	  FROM pg_proc p
	  JOIN pg_namespace n ON n.oid = p.pronamespace
	  LEFT JOIN LATERAL unnest(p.proargtypes::oid[]) WITH ORDINALITY AS a(t, ord) ON true
	  LEFT JOIN pg_type t ON t.oid = a.t
	 WHERE n.nspname = '$schema'
	 GROUP BY p.oid, n.nspname, p.proname
	 ORDER BY 1});
my @relations = split /\n/, $node->safe_psql('postgres', qq{
	SELECT c.relkind::text || ' ' || format('%I.%I', n.nspname, c.relname)
	  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
	 WHERE n.nspname = '$schema' AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
	 ORDER BY 1});
cmp_ok(scalar(@calls), '>=', 14, 'the schema has the API functions (' . scalar(@calls) . ')');
cmp_ok(scalar(@relations), '>=', 6, 'the schema has the tables and views (' . scalar(@relations) . ')');

sub nothing_for
{
	my ($role, $phase) = @_;
	for my $call (@calls)
	{
		denied($role, "$call;", "$role ($phase) cannot execute: $call");
	}
	for my $rel (@relations)
	{
		my ($kind, $name) = split / /, $rel, 2;
		my $sql = $kind eq 'S' ? "SELECT nextval('$name')" : "SELECT * FROM $name LIMIT 1";
		denied($role, "$sql;", "$role ($phase) cannot read $name");
	}
	denied($role,
		"INSERT INTO $schema.worker_heartbeats (worker_id, worker_type, last_heartbeat_at, status, started_at) VALUES ('x', 'x', now(), 'active', now());",
		"$role ($phase) cannot write worker_heartbeats");
}

for my $role (qw(anon authenticated))
{
	nothing_for($role, 'schema not exposed');
}

# Exposing the schema through the Data API means GRANT USAGE to anon and
# authenticated (Supabase docs): they still get nothing.
$node->safe_psql('postgres', "GRANT USAGE ON SCHEMA $schema TO anon, authenticated");
for my $role (qw(anon authenticated))
{
	nothing_for($role, 'schema exposed');
}

# --- catalog checks (the security linter's rules) ---------------------------
my $check_rls = qq{
	SELECT c.oid::regclass FROM pg_class c
	 WHERE c.relnamespace = '$schema'::regnamespace AND c.relkind IN ('r', 'p')
	   AND NOT c.relrowsecurity ORDER BY 1};
my $check_search_path = qq{
	SELECT p.oid::regprocedure FROM pg_proc p
	 WHERE p.pronamespace = '$schema'::regnamespace
	   AND NOT EXISTS (SELECT 1 FROM unnest(p.proconfig) AS c(setting)
	                    WHERE c.setting LIKE 'search_path=%'
	                      -- fixed, and only trusted schemas in it
	                      AND NOT EXISTS (SELECT 1 FROM unnest(string_to_array(substr(c.setting, 13), ',')) AS s(elem)
	                                       WHERE btrim(s.elem, ' "') NOT IN ('', 'pg_catalog', 'pg_temp', '$schema')))
	 ORDER BY 1};
my $check_secdef = qq{
	SELECT p.oid::regprocedure || ' ' || r.rolname FROM pg_proc p
	 CROSS JOIN (VALUES ('public'), ('anon'), ('authenticated')) AS r(rolname)
	 WHERE p.pronamespace = '$schema'::regnamespace AND p.prosecdef
	   AND CASE WHEN r.rolname = 'public'
	            THEN EXISTS (SELECT 1 FROM aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) AS a
	                          WHERE a.grantee = 0 AND a.privilege_type = 'EXECUTE')
	            ELSE has_function_privilege(r.rolname, p.oid, 'EXECUTE') END
	 ORDER BY 1};
my $check_anon = qq{
	SELECT 'function ' || p.oid::regprocedure || ' ' || r FROM pg_proc p, unnest(ARRAY['anon', 'authenticated']) r
	 WHERE p.pronamespace = '$schema'::regnamespace AND has_function_privilege(r, p.oid, 'EXECUTE')
	UNION ALL
	SELECT 'relation ' || c.oid::regclass || ' ' || r FROM pg_class c, unnest(ARRAY['anon', 'authenticated']) r
	 WHERE c.relnamespace = '$schema'::regnamespace AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
	   AND has_table_privilege(r, c.oid, 'SELECT, INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER')
	UNION ALL
	SELECT 'sequence ' || c.oid::regclass || ' ' || r FROM pg_class c, unnest(ARRAY['anon', 'authenticated']) r
	 WHERE c.relnamespace = '$schema'::regnamespace AND c.relkind = 'S'
	   AND has_sequence_privilege(r, c.oid, 'USAGE, SELECT, UPDATE')
	ORDER BY 1};

cmp_ok($node->safe_psql('postgres',
		"SELECT count(*) FROM pg_class WHERE relnamespace = '$schema'::regnamespace AND relkind = 'r'"),
	'>=', 4, 'the schema has its tables');
is($node->safe_psql('postgres', $check_rls), '', 'every table in the schema has RLS enabled');
is($node->safe_psql('postgres', $check_search_path), '',
	'every function has a fixed search_path of trusted schemas');
is($node->safe_psql('postgres', $check_secdef), '',
	'no SECURITY DEFINER function is executable by PUBLIC, anon or authenticated');
is($node->safe_psql('postgres', $check_anon), '',
	'anon and authenticated hold no privilege on any function, table, view or sequence');

# --- each check can fail: break the rule in a transaction, roll back ------------
my $table = $node->safe_psql('postgres',
	"SELECT c.oid::regclass FROM pg_class c WHERE c.relnamespace = '$schema'::regnamespace AND c.relkind = 'r' ORDER BY c.relname LIMIT 1");
is($node->safe_psql('postgres', qq{
		BEGIN;
		ALTER TABLE $table DISABLE ROW LEVEL SECURITY;
		$check_rls;
		ROLLBACK;}),
	$table, "the RLS check reports $table once its RLS is disabled");

my $func = $node->safe_psql('postgres',
	"SELECT p.oid::regprocedure FROM pg_proc p WHERE p.pronamespace = '$schema'::regnamespace AND p.proname = 'get_worker_stats' LIMIT 1");
is($node->safe_psql('postgres', qq{
		BEGIN;
		ALTER FUNCTION $func RESET search_path;
		$check_search_path;
		ROLLBACK;}),
	$func, "the search_path check reports $func once its search_path is reset");
is($node->safe_psql('postgres', qq{
		BEGIN;
		ALTER FUNCTION $func SET search_path = public, pg_catalog;
		$check_search_path;
		ROLLBACK;}),
	$func, "the search_path check reports $func with public in its search_path");

# A SECURITY DEFINER function (the heartbeat itself is one, or is made one here).
my $secdef = $node->safe_psql('postgres',
	"SELECT p.oid::regprocedure FROM pg_proc p WHERE p.pronamespace = '$schema'::regnamespace AND p.prosecdef ORDER BY p.proname = 'upsert_worker_heartbeat' DESC, 1 LIMIT 1")
  || $node->safe_psql('postgres',
	"SELECT p.oid::regprocedure FROM pg_proc p WHERE p.pronamespace = '$schema'::regnamespace AND p.proname = 'upsert_worker_heartbeat'");
for my $grantee (qw(PUBLIC anon authenticated))
{
	my $got = $node->safe_psql('postgres', qq{
		BEGIN;
		ALTER FUNCTION $secdef SECURITY DEFINER;
		GRANT EXECUTE ON FUNCTION $secdef TO $grantee;
		$check_secdef;
		ROLLBACK;});
	like($got, qr/^\Q$secdef\E \L$grantee\E$/m,
		"the SECURITY DEFINER check reports $secdef once granted to $grantee");
}
is($node->safe_psql('postgres', qq{
		BEGIN;
		GRANT SELECT ON $table TO authenticated;
		$check_anon;
		ROLLBACK;}),
	"relation $table authenticated", "the anon/authenticated check reports a SELECT grant on $table");
# ... and the behavioural check too: with that grant, authenticated reads.
{
	my ($ret, $out, $err) = $node->psql('postgres', qq{
		BEGIN;
		GRANT SELECT ON $table TO authenticated;
		SET LOCAL ROLE authenticated;
		SELECT count(*) >= 0 FROM $table;
		ROLLBACK;}, on_error_stop => 1);
	is($ret, 0, "with a stray grant authenticated can read $table, so the denial checks can fail")
	  or diag($err);
}

# Nothing above stuck: the checks are clean again.
is($node->safe_psql('postgres', "$check_rls; $check_search_path; $check_secdef; $check_anon"), '',
	'all rolled back: every check is clean again');

# --- works without shared_preload_libraries -------------------------------------
# The reaper is a dynamic background worker started by CREATE EXTENSION / a heartbeat.
ok($node->poll_query_until('postgres',
		"SELECT count(*) > 0 FROM pg_stat_activity WHERE backend_type = 'worker_heartbeat reaper'"),
	'the reaper runs without shared_preload_libraries');
as_role_ok('service_role', "SELECT $schema.upsert_worker_heartbeat('sr-3', 'supabase-test')", '',
	'service_role heartbeats after all that');
$node->safe_psql('postgres', "SELECT $schema.set_worker_type_dead_after('supabase-test', '1 second')");
ok($node->poll_query_until('postgres',
		"SELECT status = 'dead' FROM $schema.worker_heartbeats WHERE worker_id = 'sr-3'"),
	'the reaper declares a silent worker dead (no preload)');

$node->stop;
done_testing();
