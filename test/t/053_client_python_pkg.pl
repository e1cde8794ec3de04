# The Python package (clients/python, `worker_heartbeat`): its pytest suite
# runs here, on this PostgreSQL major, and each test case becomes one TAP
# assertion. The suite starts its own clusters with initdb / pg_ctl from the
# pg_config on PATH (the server under test, where the extension is installed):
# kill -9 -> lease back; SIGTERM / SIGINT -> stop_worker and the leases released
# at once; the database restarted under a beating worker; two threads updating
# tasks; WH001 -> StaleLease; asyncio; and a fresh venv where
# `pip install --no-index clients/python` then the original design's snippet runs
# unchanged (issue 19).
use strict;
use warnings;
use File::Spec;
use FindBin;
use PostgreSQL::Test::Utils;
use Test::More;

my $root = File::Spec->rel2abs("$FindBin::Bin/../..");
my $pkg = "$root/clients/python";
my $python = '/usr/bin/python3';    # Debian's, where python3-psycopg and python3-pytest live
ok(run_log([ $python, '-c', 'import psycopg, pytest, venv, ensurepip' ]),
	'psycopg 3, pytest and venv are importable by /usr/bin/python3')
  or BAIL_OUT('install python3-psycopg python3-pytest python3-venv');

my ($pg_config) = grep { -x } map { "$_/pg_config" } split /:/, $ENV{PATH};
ok($pg_config, "pg_config on PATH: $pg_config");

my $junit = "$PostgreSQL::Test::Utils::tmp_check/pytest.xml";
my $log = "$PostgreSQL::Test::Utils::tmp_check/pytest.log";
{
	local $ENV{PG_CONFIG} = $pg_config;
	local $ENV{PYTHONDONTWRITEBYTECODE} = '1';
	delete local $ENV{DATABASE_URL};
	delete local $ENV{PGHOST};
	delete local $ENV{PGPORT};
	# -p no:cacheprovider: nothing written into the sources.
	my $rc = system("cd '$pkg' && '$python' -m pytest -p no:cacheprovider -q -rfEs --junitxml='$junit' tests >'$log' 2>&1");
	is($rc >> 8, 0, 'pytest exits 0') or diag(slurp_file($log));
}

# One assertion per test case, from the JUnit XML.
my $cases = `'$python' - '$junit' <<'PY'
import sys, xml.etree.ElementTree as ET
for tc in ET.parse(sys.argv[1]).iter("testcase"):
    bad = [k for k in tc if k.tag in ("failure", "error")]
    skip = [k for k in tc if k.tag == "skipped"]
    state = "failed" if bad else "skipped" if skip else "passed"
    msg = ((bad or skip)[0].get("message") or "") if (bad or skip) else ""
    print("%s\\t%s::%s\\t%s" % (state, tc.get("classname"), tc.get("name"), " ".join(msg.split())[:300]))
PY`;
my $n = 0;
for my $line (split /\n/, $cases)
{
	my ($state, $name, $msg) = split /\t/, $line, 3;
	$n++;
	if ($state eq 'skipped')
	{
	  SKIP: { skip("pytest $name: $msg", 1); }
		next;
	}
	ok($state eq 'passed', "pytest $name") or diag($msg);
}
cmp_ok($n, '>=', 21, "pytest ran the whole suite ($n test cases)");

# The package's pieces a user relies on.
ok(-f "$pkg/worker_heartbeat/py.typed", 'py.typed is shipped');
like(slurp_file("$pkg/pyproject.toml"), qr/^name = "worker_heartbeat"$/m, 'the distribution is named worker_heartbeat');

done_testing();
