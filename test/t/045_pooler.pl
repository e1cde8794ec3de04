# Workers behind a transaction-mode pooler: Debian's pgbouncer, started here on
# loopback in front of a PostgreSQL::Test::Cluster node.
#
# - heartbeats, claims (claim_leases) and completions (complete_lease) work
#   when consecutive transactions of one client land on different server
#   sessions;
# - a session-bound worker (p_session_bound => true) whose heartbeat lands on
#   another server session than the one it is bound to, while that one is
#   still alive, gets SQLSTATE 55000 with a hint about poolers, and nothing
#   changes.
#
# Different server sessions are forced, not hoped for: the pool has
# POOL_SIZE server connections; holder clients open POOL_SIZE transactions at
# once, which must take every server connection of the pool, the one we want
# to avoid among them; all holders but the one on that connection commit, so
# the next transaction of the worker's client can only land elsewhere.
use strict;
use warnings;
use File::Spec;
use Time::HiRes qw(usleep);
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $POOL_SIZE = 3;
my $schema = 'pm_pipeline';

my ($pgbouncer) = grep { -x $_ } ('/usr/sbin/pgbouncer', '/usr/bin/pgbouncer',
	map { "$_/pgbouncer" } split /:/, ($ENV{PATH} // ''));
plan skip_all => 'pgbouncer is not installed (Debian package pgbouncer)' unless $pgbouncer;

my $node = PostgreSQL::Test::Cluster->new('pooled');
$node->init;
$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'worker_heartbeat'
max_worker_processes = 16
});
$node->start;
$node->safe_psql('postgres', qq{
	CREATE SCHEMA $schema;
	CREATE EXTENSION worker_heartbeat SCHEMA $schema;
	CREATE TABLE public.jobs (
		id bigint PRIMARY KEY,
		state text NOT NULL DEFAULT 'pending',
		claimed_by text,
		lease_expires_at timestamptz,
		lease_token bigint,
		attempts integer NOT NULL DEFAULT 0);
	INSERT INTO public.jobs (id) SELECT g FROM generate_series(1, 6) g;
});
my $user = $node->safe_psql('postgres', 'SELECT current_user');

# --- pgbouncer, transaction mode, loopback --------------------------------------
my $dir = PostgreSQL::Test::Utils::tempdir('pgbouncer');
my $bport = PostgreSQL::Test::Cluster::get_free_port();
my $host = $node->host;
my $port = $node->port;
PostgreSQL::Test::Utils::append_to_file("$dir/userlist.txt", qq{"$user" ""\n});
PostgreSQL::Test::Utils::append_to_file("$dir/pgbouncer.ini", qq{
[databases]
postgres = host=$host port=$port dbname=postgres

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $bport
unix_socket_dir =
auth_type = trust
auth_file = $dir/userlist.txt
pool_mode = transaction
default_pool_size = $POOL_SIZE
min_pool_size = 0
reserve_pool_size = 0
max_client_conn = 50
server_idle_timeout = 3600
server_lifetime = 3600
logfile = $dir/pgbouncer.log
pidfile = $dir/pgbouncer.pid
admin_users = $user
});
my $bouncer = IPC::Run::start([ $pgbouncer, "$dir/pgbouncer.ini" ],
	'<', \undef, '>', "$dir/stdout.log", '2>', "$dir/stderr.log");
END
{
	# stop pgbouncer however the test ends
	# SIGKILL: its TERM means "wait for every client" since pgbouncer 1.23.
	if ($bouncer && $bouncer->pumpable) { $bouncer->signal('KILL'); $bouncer->finish; }
}

my $bconn = "host=127.0.0.1 port=$bport dbname=postgres user=$user";
# Poll until pgbouncer accepts and reaches the server.
my $up = 0;
for (my $deadline = time + $PostgreSQL::Test::Utils::timeout_default; time < $deadline;)
{
	my ($out, $err) = ('', '');
	IPC::Run::run([ 'psql', '-XAtq', '-d', $bconn, '-c', 'SELECT 1' ], '>', \$out, '2>', \$err);
	if ($out eq "1\n") { $up = 1; last; }
	die "pgbouncer exited:\n" . slurp_file("$dir/stderr.log") unless $bouncer->pumpable;
	usleep(100_000);
}
ok($up, "pgbouncer (transaction mode, pool size $POOL_SIZE) accepts on 127.0.0.1:$bport")
  or BAIL_OUT('pgbouncer did not come up: ' . slurp_file("$dir/pgbouncer.log"));

# A client connection through pgbouncer.
sub client
{
	# psql takes the last -d: pgbouncer's address replaces the node's.
	return $node->background_psql('postgres',
		extra_params => [ '-d', $bconn, '-v', 'VERBOSITY=verbose' ],
		on_error_stop => 0);
}

# Run SQL in a client; returns (stdout, stderr).
sub run_in
{
	my ($c, $sql) = @_;
	$c->{stderr} = '';
	my $out = $c->query($sql);
	my $err = $c->{stderr};
	$c->{stderr} = '';
	return ($out, $err);
}

# Make the next transaction of any other client land on a server session that
# is not $avoid_pid: hold every server connection of the pool, keep the one on
# $avoid_pid, release the others. Returns the holder (commit it to let go).
sub occupy
{
	my ($avoid_pid) = @_;
	my @holders = map { client() } 1 .. $POOL_SIZE;
	my $keep;
	for my $h (@holders)
	{
		my ($pid) = run_in($h, 'BEGIN; SELECT pg_backend_pid();');
		$keep = $h if $pid == $avoid_pid;
		$h->{held_pid} = $pid;
	}
	die "server session $avoid_pid is not in the pool" unless $keep;
	for my $h (@holders)
	{
		next if $h == $keep;
		run_in($h, 'COMMIT;');
		$h->quit;
	}
	return $keep;
}

sub release
{
	my ($holder) = @_;
	run_in($holder, 'COMMIT;');
	$holder->quit;
}

my $w = client();

# --- plain heartbeats land on different server sessions and work ---------------
# Each statement is one transaction: the heartbeat and pg_backend_pid() of the
# server session it ran on come from one statement.
my ($pid1, $err1) = run_in($w,
	"WITH hb AS (SELECT $schema.upsert_worker_heartbeat('pooled-1', 'pooled')) SELECT pg_backend_pid() FROM hb;");
is($err1, '', 'heartbeat through pgbouncer');
my $hold = occupy($pid1);
my ($pid2, $err2) = run_in($w,
	"WITH hb AS (SELECT $schema.upsert_worker_heartbeat('pooled-1', 'pooled', 'processing', NULL, 'job')) SELECT pg_backend_pid() FROM hb;");
is($err2, '', 'the next heartbeat through pgbouncer');
isnt($pid2, $pid1, "the two heartbeats ran on different server sessions ($pid1, $pid2)");
release($hold);
is($node->safe_psql('postgres',
		"SELECT status || ' ' || coalesce(session_pid::text, 'unbound') FROM $schema.worker_heartbeats WHERE worker_id = 'pooled-1'"),
	'processing unbound', 'the worker is processing, bound to no session');

# --- claims and completions through the pooler ---------------------------------------
$node->safe_psql('postgres', qq{
	SELECT $schema.register_lease_table('public.jobs', p_on_release => '{"state":"pending"}',
	       p_token_column => 'lease_token', p_attempts_column => 'attempts')});
my ($claimed, $cerr) = run_in($w, qq{
	SELECT id || ':' || lease_token || ':' || pg_backend_pid()
	  FROM $schema.claim_leases(NULL::public.jobs, 'pooled-1', 3, '1 minute',
	                            '{"state":"pending"}', '{"state":"claimed"}') ORDER BY id;});
is($cerr, '', 'claim_leases through pgbouncer') or diag($cerr);
my @claims = map { [ split /:/ ] } split /\n/, $claimed;
my $claim_pid = @claims ? $claims[0][2] : -1;
is(scalar(@claims), 3, 'three jobs claimed');
is($node->safe_psql('postgres',
		"SELECT string_agg(id::text, ',' ORDER BY id) FROM public.jobs WHERE claimed_by = 'pooled-1' AND state = 'claimed'"),
	'1,2,3', 'the claimed rows are marked in the table');

# Complete each on a server session other than the one that claimed.
$hold = occupy($claim_pid);
for my $c (@claims)
{
	my ($id, $token) = @$c;
	my ($out, $err) = run_in($w,
		"WITH c AS (SELECT $schema.complete_lease('public.jobs', $token, '{\"state\":\"done\"}')) SELECT pg_backend_pid() FROM c;");
	is($err, '', "complete_lease of job $id through pgbouncer") or diag($err);
	isnt($out, $claim_pid, "job $id completed on another server session than the claim");
}
release($hold);
is($node->safe_psql('postgres',
		"SELECT string_agg(id::text, ',' ORDER BY id) FROM public.jobs WHERE state = 'done' AND claimed_by IS NULL"),
	'1,2,3', 'the completed jobs are done and released');
# A stale token is refused through the pooler as well.
{
	my ($out, $err) = run_in($w,
		"SELECT $schema.complete_lease('public.jobs', $claims[0][1], '{\"state\":\"again\"}');");
	like($err, qr/ERROR:\s+WH001:/, 'a completed lease token is stale (WH001) through pgbouncer');
}

# --- a session-bound worker behind a transaction pooler ------------------------------
my $sb = client();
my ($bound_pid, $berr) = run_in($sb,
	"WITH hb AS (SELECT $schema.upsert_worker_heartbeat('pooled-bound', 'pooled', p_session_bound => true)) SELECT pg_backend_pid() FROM hb;");
is($berr, '', 'the first session-bound heartbeat binds to the server session it ran on') or diag($berr);
is($node->safe_psql('postgres',
		"SELECT session_pid FROM $schema.worker_heartbeats WHERE worker_id = 'pooled-bound'"),
	$bound_pid, "bound to server session $bound_pid");

# Its bound server session stays alive (held by another client) and its next
# heartbeat must land on another one.
$hold = occupy($bound_pid);
# While the bound session is held, this client's transactions cannot reach it.
my ($other_pid) = run_in($sb, 'SELECT pg_backend_pid();');
isnt($other_pid, $bound_pid, "the client's next transaction runs on another server session ($other_pid)");
# The heartbeat as a worker sends it: one statement, its own transaction.
my ($out, $err) = run_in($sb,
	"SELECT $schema.upsert_worker_heartbeat('pooled-bound', 'pooled', 'processing', p_session_bound => true);");
like($err, qr/ERROR:\s+55000:/, 'a heartbeat from another server session: SQLSTATE 55000')
  or diag($err);
like($err, qr/HINT:.*(pool|PgBouncer|Supavisor)/i, 'the hint names the pooler as the likely cause')
  or diag($err);
is($node->safe_psql('postgres',
		"SELECT status || ' ' || session_pid FROM $schema.worker_heartbeats WHERE worker_id = 'pooled-bound'"),
	"active $bound_pid", 'the refused heartbeat changed nothing');
release($hold);

# The same worker heartbeating without session binding works through the pooler.
($out, $err) = run_in($sb, "SELECT $schema.stop_worker('pooled-bound');");
is($err, '', 'stop_worker through pgbouncer');
($out, $err) = run_in($sb, "SELECT $schema.upsert_worker_heartbeat('pooled-bound', 'pooled');");
is($err, '', 'after stop_worker the worker heartbeats unbound through pgbouncer');

$w->quit;
$sb->quit;
$bouncer->signal('KILL');
$bouncer->finish;
$node->stop;
done_testing();
