# The docs, checked: every example in README.md and docs/*.md runs as written.
#
# How the blocks are run (the rules a doc writer needs):
# - Files: README.md, then docs/*.md in name order. Each file runs in its own
#   fresh database of one preloaded cluster (shared_preload_libraries: the line
#   the README's Install section writes). If any ```sql block of the file
#   contains CREATE EXTENSION worker_heartbeat, the database starts empty;
#   otherwise the test first runs `CREATE SCHEMA pm_pipeline; CREATE EXTENSION
#   worker_heartbeat SCHEMA pm_pipeline;` there. docs/supabase.md gets the
#   roles a Supabase image has (postgres, service_role, anon, authenticated).
#   Roles a file creates are dropped after it (roles are cluster-wide).
# - ```sql blocks run in document order, each with its own `psql -X -v
#   ON_ERROR_STOP=1` as the cluster's superuser: one block is one psql session
#   (psql variables set with \gset live until the end of their block), and
#   the first error fails the block. Tables a block needs must be created by an
#   earlier block of the same file.
# - ```cpp blocks are complete programs: each is compiled and linked with
#   -Wall -Wextra -Werror against the C++ client (clients/cpp) installed into a
#   temporary prefix, with nothing but `pkg-config --cflags --libs
#   worker_heartbeat_client`, then run (at most 60 s, must exit 0) against the
#   file's database after all its sql blocks; when that database has a table
#   `tasks`, one pending task is added first and must be 'done' afterwards.
# - ```sh blocks of README.md run in document order too, between the sql
#   blocks: every command line must match one of the handlers below, which
#   runs it (or, for what needs root, the network or systemd, checks it as far
#   as a test can and says how in its comment). A README command no handler
#   knows fails this test: teach the test, or change the README.
# - The ```python block of README.md is the walkthrough's worker: saved as
#   my_worker.py, run by the sh handlers with the package of clients/python
#   installed into a venv (pip --no-index --no-build-isolation: no PyPI here),
#   then killed with SIGKILL: it must be declared dead (session_ended) and its
#   task must be back in the queue. While clients/python does not exist in the
#   tree, the WorkerHeartbeat class of examples/python/worker.py (the same
#   interface) stands in for the package.
# - A block that is deliberately not runnable is preceded (on the line just
#   before its fence, blank lines allowed) by `<!-- doc-test: skip (reason) -->`.
#   Keep such marks rare.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/../../examples/tap";
use Cwd qw(abs_path);
use File::Basename qw(basename);
use File::Path ();
use HTTP::Tiny;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);
use WorkerTap;

my $root = $WorkerTap::ROOT;
my $tmp = PostgreSQL::Test::Utils::tempdir('docs');

# --- the blocks of a markdown file ------------------------------------------
sub blocks
{
	my ($file) = @_;
	my @lines = split /\n/, slurp_file($file), -1;
	my (@blocks, $cur, $skip, $section);
	my $last_nonblank = '';
	for my $i (0 .. $#lines)
	{
		my $l = $lines[$i];
		if ($cur)
		{
			if ($l =~ /^```\s*$/) { push @blocks, $cur; $cur = undef; $last_nonblank = ''; next; }
			$cur->{text} .= "$l\n";
			next;
		}
		$section = $1 if $l =~ /^##\s+(.*)/;
		if ($l =~ /^```(\w*)\s*$/)
		{
			$cur = {
				lang => $1,
				line => $i + 1,
				text => '',
				section => $section // '',
				skip => ($last_nonblank =~ /<!--\s*doc-test:\s*skip\b(.*?)-->/ ? ($1 || 'marked') : undef),
			};
			next;
		}
		$last_nonblank = $l if $l =~ /\S/;
	}
	return @blocks;
}

# --- the cluster --------------------------------------------------------------
my $readme = "$root/README.md";
my @readme_blocks = blocks($readme);
my ($preload_line) = map { /echo\s+"(shared_preload_libraries\s*=\s*'[^']*')"/ ? $1 : () }
  map { $_->{text} } grep { $_->{lang} eq 'sh' && $_->{section} eq 'Install' } @readme_blocks;
ok(defined $preload_line, "README Install: the preload line ($preload_line)");
my $node = PostgreSQL::Test::Cluster->new('docs');
$node->init;
$node->append_conf('postgresql.conf', ($preload_line // "shared_preload_libraries = 'worker_heartbeat'") . "\n");
$node->start;
my $superuser = getpwuid($<);

my %pgenv = (PGHOST => $node->host, PGPORT => $node->port, PGUSER => $superuser);

sub run_cmd    # argv, env hashref, stdin: (exit code, stdout+stderr)
{
	my ($cmd, $env, $in) = @_;
	local %ENV = (%ENV, %pgenv, %{ $env || {} });
	delete $ENV{$_} for grep { $ENV{$_} eq '' } keys %ENV;    # '' means: unset
	my $out = '';
	IPC::Run::run($cmd, '<', \($in // ''), '>&', \$out, IPC::Run::timeout(300));
	return ($? >> 8, $out);
}

sub psql_block    # db, sql text: (exit code, output)
{
	my ($db, $sql) = @_;
	my $f = "$tmp/block.sql";
	open(my $fh, '>', $f) or die; print $fh $sql; close $fh;
	return run_cmd([ 'psql', '-X', '-v', 'ON_ERROR_STOP=1', '-d', $db, '-f', $f ]);
}

# --- the C++ client, installed into a temporary prefix ------------------------
my $prefix = "$tmp/cpp-prefix";
my $cpp_ok = run_log([ 'cmake', '-S', "$root/clients/cpp", '-B', "$tmp/cpp-build",
		'-DCMAKE_BUILD_TYPE=Release', '-DWH_CLIENT_TESTS=OFF', '-DWH_CLIENT_EXAMPLES=OFF' ])
  && run_log([ 'cmake', '--build', "$tmp/cpp-build", '-j2' ])
  && run_log([ 'cmake', '--install', "$tmp/cpp-build", '--prefix', $prefix ]);
ok($cpp_ok, 'the C++ client builds and installs into a temporary prefix');
my ($pc) = split /\n/, `find '$prefix' -name worker_heartbeat_client.pc`;
my %cppenv = (PKG_CONFIG_PATH => ($pc ? $pc =~ s{/[^/]+$}{}r : ''));
my $libdir = $cpp_ok ? `PKG_CONFIG_PATH='$cppenv{PKG_CONFIG_PATH}' pkg-config --variable=libdir worker_heartbeat_client` : '';
chomp $libdir;

sub cpp_block    # file label, db, block
{
	my ($label, $db, $b) = @_;
	my $src = "$tmp/doc_$b->{line}.cpp";
	open(my $fh, '>', $src) or die; print $fh $b->{text}; close $fh;
	my $flags = `PKG_CONFIG_PATH='$cppenv{PKG_CONFIG_PATH}' pkg-config --cflags --libs worker_heartbeat_client`;
	chomp $flags;
	my ($rc, $out) = run_cmd([ 'sh', '-c', "g++ -std=c++17 -Wall -Wextra -Werror -o '$src.bin' '$src' $flags" ]);
	is($rc, 0, "$label: the cpp block compiles against the installed client") or diag($out);
	return if $rc;
	my $has_tasks = $node->safe_psql($db, "SELECT to_regclass('tasks') IS NOT NULL") eq 't';
	my $id;
	$id = $node->safe_psql($db, "INSERT INTO tasks (payload) VALUES ('doc-test cpp $b->{line}') RETURNING id")
	  if $has_tasks;
	($rc, $out) = run_cmd([ 'timeout', '60', "$src.bin" ],
		{ PGDATABASE => $db, LD_LIBRARY_PATH => $libdir, WORKER_HEARTBEAT_INTERVAL => '1' });
	is($rc, 0, "$label: the cpp program runs to its end (exit 0)") or diag($out);
	is($node->safe_psql($db, "SELECT state FROM tasks WHERE id = $id"), 'done',
		"$label: the cpp program completed its task (state = 'done')") if $has_tasks;
}

# ./scripts/demo --dashboard --keep --port N: the cluster on the port asked
# for, and a kept dashboard that survives the hangup of the terminal the demo
# ran in (SIGHUP to the demo's process group, as when the terminal closes).
# The fleet-control parts (drain, checkpoint) ran in the first run: skipped here.
sub demo_dashboard_keep
{
	my $built = run_log([ 'cmake', '-S', "$root/dashboard", '-B', "$root/build/dashboard", '-DCMAKE_BUILD_TYPE=Release',
			'-DWHD_TESTS=OFF' ]) && run_log([ 'cmake', '--build', "$root/build/dashboard", '-j2' ]);
	ok($built, 'demo --dashboard: the dashboard builds where the demo looks for it');
	return unless $built;
	my $port = PostgreSQL::Test::Cluster::get_free_port();
	my ($rc, $out) = run_cmd([ 'setsid', '-w', 'sh', '-c', 'echo "PGID $$"; exec "$0" "$@"', "$root/scripts/demo",
			'--dashboard', '--keep', '--port', $port, '--dashboard-port', '0', '--tasks', '9', '--no-fleet-control' ],
		{ PGHOST => '', PGPORT => '', PGUSER => '', WH_DEMO_USER => '' });
	is($rc, 0, './scripts/demo --dashboard --keep --port N runs to its end') or diag($out);
	like($out, qr/on port $port in /, 'demo --port: the cluster listens on the port asked for');
	my ($pgid) = $out =~ /^PGID (\d+)$/m;
	my ($url) = $out =~ m{Dashboard: (http://[^\s\e]+)};
	my ($dash_pid) = $out =~ /dashboard kept: \S+ \(stop: kill (\d+)\)/;
	my ($dir) = $out =~ m{ in (/tmp/worker_heartbeat-demo\.\w+)};
	ok($pgid && $url && $dash_pid && $dir, 'demo --keep printed the dashboard URL and how to stop it') or diag($out);
	return unless $pgid && $url && $dash_pid && $dir;
	kill 'HUP', -$pgid;    # the terminal goes away
	my $http = HTTP::Tiny->new(timeout => 5);
	my $alive = 0;
	for (1 .. 20)
	{
		usleep(100_000);
		$alive = kill(0, $dash_pid) && $http->get("${url}api/summary")->{status} == 200;
		last unless $alive;
	}
	ok($alive, 'the kept dashboard survives SIGHUP to the demo\'s process group and still answers');
	kill 'TERM', $dash_pid;
	run_cmd([ 'pg_ctl', '-D', "$dir/data", '-m', 'immediate', '-w', 'stop' ]);
	File::Path::rmtree($dir);
}

# --- README sh handlers ------------------------------------------------------
my %ctx;    # db, python worker pid, venv
my $python_block = (map { $_->{text} } grep { $_->{lang} eq 'python' } @readme_blocks)[0];
my $have_python_client = -f "$root/clients/python/pyproject.toml";

sub poll_db    # query, timeout: seconds until the query returned 't' in the current database, or undef
{
	my ($q, $timeout) = @_;
	my $t0 = time;
	while (time < $t0 + $timeout)
	{
		my ($ret, $out) = $node->psql($ctx{db}, $q);
		return time - $t0 if $ret == 0 && $out eq 't';
		usleep(50_000);
	}
	return undef;
}

my @handlers = (
	# git clone: not run (network; the URL is the reader's). This test runs in a
	# copy of the tree, which has the two scripts the next lines run.
	[ qr/^git clone \S+ (\S+) && cd \1$/ => sub {
		ok(-x "$root/scripts/demo" && -x "$root/scripts/test", 'git clone: the checkout has scripts/demo and scripts/test');
	} ],
	# ./scripts/demo: run without root (what is installed: the extension in this
	# server, the example worker built here); as root it also runs apt-get and
	# make install, which scripts/test does before this file runs.
	[ qr/^\.\/scripts\/demo(\s|$)/ => sub {
		my ($rc, $out) = run_cmd([ "$root/scripts/demo", '--help' ]);
		is($rc, 0, 'scripts/demo --help exits 0');
		like($out, qr/--dashboard/, 'scripts/demo --help lists --dashboard');
		like($out, qr/--port/, 'scripts/demo --help lists --port');
		unlike($out, qr/set -euo pipefail/, 'scripts/demo --help prints no shell code');
		ok(run_log([ 'cmake', '-S', "$root/clients/cpp", '-B', "$root/build/client", '-DCMAKE_BUILD_TYPE=Release',
					'-DWH_CLIENT_TESTS=OFF' ]) && run_log([ 'cmake', '--build', "$root/build/client", '-j2' ]),
			'demo: the example worker builds where the demo looks for it');
		($rc, $out) = run_cmd([ "$root/scripts/demo" ],
			{ PGHOST => '', PGPORT => '', PGUSER => '', WH_DEMO_USER => '' });
		is($rc, 0, './scripts/demo runs to its end') or diag($out);
		like($out, qr/worker declared dead after \d+ ms; its lease back in the queue after \d+ ms/,
			'./scripts/demo: the killed worker was declared dead and its lease came back');
		# issue 16: a drain and a checkpoint resumed after a kill
		like($out, qr/drained: the \d+ workers finished the \d+ task\(s\) they held and stopped; nothing re-claimed/,
			'./scripts/demo: the drained workers finished what they held and stopped, claiming nothing more');
		like($out, qr/demo-researcher-2: resuming task \d+ from step [1-9]\d*\/10 \(after the kill of demo-researcher-1\)/,
			'./scripts/demo: the next worker resumed the killed worker\'s task from its checkpoint');
		demo_dashboard_keep();
	} ],
	# ./scripts/test: not run from here (this test runs inside it); its --help works.
	[ qr/^\.\/scripts\/test(\s|$)/ => sub {
		my ($rc, $out) = run_cmd([ "$root/scripts/test", '--help' ]);
		is($rc, 0, 'scripts/test --help exits 0');
	} ],
	# apt-get install (root): checked: every package named is installed here
	# (postgresql-15* stand for the version under test in the PG 17/18 roots).
	[ qr/^(sudo )?apt-get install (-y )?(.*)$/ => sub {
		my $v = int($node->safe_psql('postgres', 'SHOW server_version_num') / 10000);
		for my $p (split ' ', $_[0][2])
		{
			(my $q = $p) =~ s/^(postgresql-(?:server-dev-)?)15$/$1$v/;
			my ($rc) = run_cmd([ 'dpkg-query', '-W', $q ]);
			is($rc, 0, "apt-get install: package $p ($q) exists and is installed on the test machine");
		}
	} ],
	# make && make install (root): scripts/test built and installed this very
	# tree into the server under test; checked: nothing is left to rebuild, and
	# `make install` knows what to install (dry run).
	[ qr/^make && (sudo )?make install$/ => sub {
		my $pgc = `pg_config --bindir`; chomp $pgc; $pgc .= '/pg_config';
		my ($rc, $out) = run_cmd([ 'make', '-C', $root, '-n', 'install', "PG_CONFIG=$pgc" ]);
		is($rc, 0, 'make install: a dry run succeeds in the built tree') or diag($out);
	} ],
	# The preload line: used as this cluster's configuration (see above).
	[ qr/^echo "shared_preload_libraries = .*" > \/etc\/postgresql\/15\/main\/conf\.d\/\S+$/ => sub {
		is($node->safe_psql('postgres', 'SHOW shared_preload_libraries'), 'worker_heartbeat',
			'the preload line is what this cluster runs with');
	} ],
	# systemctl (root, systemd): not run; the test's cluster was started with that configuration.
	[ qr/^systemctl restart postgresql$/ => sub { pass('systemctl restart: the cluster was started with the preload line') } ],
	# createuser --superuser: the test's OS user is the cluster's superuser already.
	[ qr/^sudo -u postgres createuser --superuser "\$USER"$/ => sub {
		is($node->safe_psql('postgres', 'SELECT rolsuper FROM pg_roles WHERE rolname = current_user'), 't',
			'createuser: the test runs as a superuser role named like its OS user');
	} ],
	[ qr/^createdb (\w+) && export PGDATABASE=\1$/ => sub {
		my ($rc, $out) = run_cmd([ 'createdb', $_[0][0] ]);
		is($rc, 0, "createdb $_[0][0]") or diag($out);
		$ctx{db} = $_[0][0];
	} ],
	# bare psql: the sql blocks that follow run in that database.
	[ qr/^psql$/ => sub { pass('psql: the next sql blocks run in database ' . $ctx{db}) } ],
	[ qr/^python3 -m venv --system-site-packages (\S+) && \1\/bin\/pip install (\S+)$/ => sub {
		my ($venv, $pkg) = @{ $_[0] };
		unless ($have_python_client)
		{
			# Until clients/python exists, the same class (the original design's
			# interface) from examples/python/worker.py stands in for the package.
			note('clients/python is not in this tree yet: my_worker.py runs with the WorkerHeartbeat of examples/python/worker.py');
			mkdir "$tmp/shim";
			open(my $fh, '>', "$tmp/shim/worker_heartbeat.py") or die;
			print $fh "import sys\nsys.path.insert(0, '$root/examples/python')\nfrom worker import WorkerHeartbeat  # noqa\n";
			close $fh;
			$ctx{python} = [ 'python3' ];
			$ctx{pyenv} = { PYTHONPATH => "$tmp/shim" };
			return;
		}
		$ctx{venv} = "$tmp/$venv";
		$ctx{python} = [ "$ctx{venv}/bin/python" ];
		$ctx{pyenv} = {};
		# Offline here (no PyPI): --no-index --no-build-isolation, with Debian's setuptools.
		my ($rc, $out) = run_cmd([ 'sh', '-c', "cd '$root' && python3 -m venv --system-site-packages '$ctx{venv}' && "
				. "'$ctx{venv}/bin/pip' install --no-index --no-build-isolation $pkg" ]);
		is($rc, 0, "pip install $pkg into a venv") or diag($out);
	} ],
	[ qr/^(\S+)\/bin\/python my_worker\.py &$/ => sub {
		open(my $fh, '>', "$tmp/my_worker.py") or die; print $fh $python_block; close $fh;
		$ctx{pid} = WorkerTap::spawn(cmd => [ @{ $ctx{python} }, "$tmp/my_worker.py" ],
			env => { %pgenv, PGDATABASE => $ctx{db}, %{ $ctx{pyenv} } }, log => "$tmp/my_worker.log");
		ok(defined poll_db("SELECT count(*) = 1 FROM tasks WHERE claimed_by LIKE 'my-worker-%' AND state = 'claimed'", 60),
			'my_worker.py claimed a task') or diag(slurp_file("$tmp/my_worker.log"));
		$ctx{task} = $node->safe_psql($ctx{db}, "SELECT id FROM tasks WHERE claimed_by LIKE 'my-worker-%'");
	} ],
	[ qr/^kill -9 %1$/ => sub {
		return unless $ctx{pid};
		kill 'KILL', $ctx{pid};
		WorkerTap::wait_exit($ctx{pid}, 30);
		ok(defined poll_db("SELECT state = 'pending' AND claimed_by IS NULL FROM tasks WHERE id = $ctx{task}", 10),
			'kill -9: the task of my_worker.py is back in the queue');
		is($node->safe_psql($ctx{db}, "SELECT attempts FROM tasks WHERE id = $ctx{task}"), 1,
			'after one attempt, ready for the next worker');
	} ],
	# psql -c (with an optional leading sleep, replaced by the polls above)
	[ qr/^(?:sleep \d+; )?psql -c "(.*)"$/ => sub {
		return note('not run: the Python steps were skipped') if $_[0][0] =~ /claimed_by|death_cause/ && !$ctx{pid};
		my ($rc, $out) = run_cmd([ 'psql', '-X', '-v', 'ON_ERROR_STOP=1', '-d', $ctx{db}, '-c', $_[0][0] ]);
		is($rc, 0, "psql -c \"$_[0][0]\"") or diag($out);
		like($out, qr/ dead +\| session_ended/, 'my_worker.py is dead (session_ended)') if $_[0][0] =~ /death_cause/;
	} ],
	# docs/grants.sql, as the README runs it (its roles are the dashboard's).
	[ qr/^psql (-v .*) -f docs\/grants\.sql$/ => sub {
		my @v = map { ('-v', $_) } ($_[0][0] =~ /-v (\S+)/g);
		my ($rc, $out) = run_cmd([ 'psql', '-X', '-d', $ctx{db}, @v, '-f', "$root/docs/grants.sql" ]);
		is($rc, 0, 'docs/grants.sql runs as the README says (it stops on the first error itself)') or diag($out);
	} ],
	# The dashboard build: not run here (070_dashboard.pl builds and runs it the same way).
	[ qr/^cmake -S dashboard -B build\/dashboard && cmake --build build\/dashboard -j2$/ => sub {
		like(slurp_file("$root/.gitignore"), qr{^/build/$}m, '.gitignore ignores build/');
	} ],
	[ qr/^build\/dashboard\/worker-heartbeat-dashboard --conninfo 'host=127\.0\.0\.1 dbname=(\w+) user=(\w+) password=\S+'$/ => sub {
		is($node->safe_psql($ctx{db}, "SELECT count(*) FROM pg_roles WHERE rolname = '$_[0][1]'"), 1,
			"the dashboard's role $_[0][1] was created by the README's earlier commands");
		is($node->safe_psql($ctx{db}, "SELECT has_function_privilege('$_[0][1]', 'pm_pipeline.metrics()', 'EXECUTE')"), 't',
			"and may read metrics()");
	} ],
);

sub run_sh_block
{
	my ($b) = @_;
	my $text = $b->{text} =~ s/\\\n\s*/ /gr;
	for my $line (split /\n/, $text)
	{
		$line =~ s/\s+#.*$//;
		$line =~ s/^\s+|\s+$//g;
		next if $line eq '' || $line =~ /^#/;
		my $done = 0;
		for my $h (@handlers)
		{
			if (my @m = ($line =~ $h->[0]))
			{
				note("README sh: $line");
				$h->[1]->(\@m);
				$done = 1;
				last;
			}
		}
		fail("README line $b->{line}: no handler in 075_docs.pl for the command: $line") unless $done;
	}
}

# --- every file ----------------------------------------------------------------
my @files = ($readme, sort glob("$root/docs/*.md"));
my %roles_before = map { $_ => 1 } split /\n/, $node->safe_psql('postgres', 'SELECT rolname FROM pg_roles');
for my $file (@files)
{
	my $name = $file eq $readme ? 'README.md' : 'docs/' . basename($file);
	my @b = $file eq $readme ? @readme_blocks : blocks($file);
	next unless grep { $_->{lang} =~ /^(sql|cpp|sh|python)$/ } @b;
	(my $db = "doc_" . lc(basename($file, '.md'))) =~ s/\W/_/g;
	$node->safe_psql('postgres', "CREATE DATABASE $db");
	%ctx = (db => $db);
	if ($name eq 'docs/supabase.md')
	{
		$node->safe_psql('postgres', join ' ', map { "DO \$\$BEGIN CREATE ROLE $_; EXCEPTION WHEN duplicate_object THEN END\$\$;" }
			qw(postgres service_role anon authenticated));
	}
	$node->safe_psql($db, 'CREATE SCHEMA pm_pipeline; CREATE EXTENSION worker_heartbeat SCHEMA pm_pipeline;')
	  unless grep { $_->{lang} eq 'sql' && $_->{text} =~ /CREATE EXTENSION (IF NOT EXISTS )?worker_heartbeat/i } @b;
	my @cpp;
	for my $b (@b)
	{
		my $label = "$name:$b->{line}";
		if ($b->{skip}) { note("$label: $b->{lang} block skipped$b->{skip}"); next; }
		if ($b->{lang} eq 'sql')
		{
			my ($rc, $out) = psql_block($ctx{db}, $b->{text});
			is($rc, 0, "$label: the sql block runs") or diag($out);
		}
		elsif ($b->{lang} eq 'cpp') { push @cpp, [ $label, $b ]; }
		elsif ($b->{lang} eq 'sh' && $name eq 'README.md') { run_sh_block($b); }
	}
	cpp_block($_->[0], $ctx{db}, $_->[1]) for @cpp;
	if ($ctx{pid}) { kill 'KILL', $ctx{pid}; WorkerTap::wait_exit($ctx{pid}, 30); }
	# roles are cluster-wide: drop the ones this file created
	for my $r (grep { !$roles_before{$_} } split /\n/, $node->safe_psql('postgres', 'SELECT rolname FROM pg_roles'))
	{
		for my $d ($ctx{db}, $db, 'postgres')
		{
			$node->psql($d, qq{DROP OWNED BY "$r"});
		}
	}
	$node->safe_psql('postgres', "DROP DATABASE $_ WITH (FORCE)") for grep { $_ } ($ctx{db} ne $db ? ($ctx{db}) : (), $db);
	for my $r (grep { !$roles_before{$_} } split /\n/, $node->safe_psql('postgres', 'SELECT rolname FROM pg_roles'))
	{
		$node->safe_psql('postgres', qq{DROP ROLE "$r"});
	}
}

# --- the files the docs point to -------------------------------------------------
# examples/sql/queue.sql: one transaction, the token index, the schema found
# (or given with -v schema=...), never pm_pipeline hard-coded.
{
	my $q = slurp_file("$root/examples/sql/queue.sql");
	unlike($q =~ s/--.*$//mgr, qr/pm_pipeline/, 'examples/sql/queue.sql does not hard-code pm_pipeline');
	$node->safe_psql('postgres', 'CREATE DATABASE q1');
	$node->safe_psql('q1', 'CREATE SCHEMA "Worker HB"; CREATE EXTENSION worker_heartbeat SCHEMA "Worker HB";');
	my ($rc, $out) = run_cmd([ 'psql', '-X', '-d', 'q1', '-f', "$root/examples/sql/queue.sql" ]);
	is($rc, 0, 'queue.sql runs in a database whose extension lives in "Worker HB"') or diag($out);
	unlike($out, qr/NOTICE:.*no index/, 'queue.sql: registration finds every index it wants');
	is($node->safe_psql('q1', 'SELECT count(*) FROM "Worker HB".lease_tables'), 1, 'queue.sql registered public.tasks');
	# a failure in the middle leaves nothing behind (one transaction)
	$node->safe_psql('postgres', 'CREATE DATABASE q2');
	$node->safe_psql('q2', 'CREATE SCHEMA s; CREATE EXTENSION worker_heartbeat SCHEMA s;');
	($rc, $out) = run_cmd([ 'psql', '-X', '-d', 'q2', '-v', 'schema=no_such_schema', '-f', "$root/examples/sql/queue.sql" ]);
	isnt($rc, 0, 'queue.sql with a wrong schema fails');
	is($node->safe_psql('q2', "SELECT to_regclass('public.tasks') IS NULL"), 't',
		'and leaves no table behind (one transaction)');
}

# docs/grants.sql stops at the first error (a role that does not exist).
{
	my ($rc, $out) = run_cmd([ 'psql', '-X', '-d', 'q1', '-v', 'schema=Worker HB', '-v', 'worker_role=nobody_here',
			'-v', 'monitor_role=nobody_either', '-f', "$root/docs/grants.sql" ]);
	isnt($rc, 0, 'docs/grants.sql stops at a missing role, without -v ON_ERROR_STOP=1 on the command line');
	like($out, qr/role "nobody_here" does not exist/, 'with the error of its first statement');
	is(scalar(() = $out =~ /ERROR/g), 1, 'and only that one');
}

$node->stop;
done_testing();
