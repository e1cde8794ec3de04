# What the server major gives the extension (issue 14, src/compat.hpp).
#
# - every major: the extension installs, heartbeats, and the library loaded is
#   the one the test expects (the reaper of a preloaded server runs);
# - PostgreSQL 18+: PG_MODULE_MAGIC_EXT records the library's name and version
#   (the control file's default_version): pg_get_loaded_modules() shows them.
#   Before 18 the function does not exist: skipped.
use strict;
use warnings;
use FindBin;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('pg_version');
$node->init;
$node->append_conf('postgresql.conf', q{
shared_preload_libraries = 'worker_heartbeat'
max_worker_processes = 16
});
$node->start;

my $major = int($node->safe_psql('postgres', 'SHOW server_version_num') / 10000);
note("PostgreSQL major $major");

$node->safe_psql('postgres', q{
	CREATE SCHEMA pm_pipeline;
	CREATE EXTENSION worker_heartbeat SCHEMA pm_pipeline;
	SELECT pm_pipeline.upsert_worker_heartbeat('w1', 'test', 'active');
});
is($node->safe_psql('postgres', q{SELECT count(*) FROM pm_pipeline.worker_heartbeats WHERE worker_id = 'w1'}),
	'1', "PG $major: the extension installs and takes a heartbeat");
ok($node->poll_query_until('postgres',
		q{SELECT count(*) > 0 FROM pg_stat_activity WHERE backend_type = 'worker_heartbeat reaper'}),
	"PG $major: the preloaded library's reaper runs");

# The control file's default_version is what the library says it is.
open(my $fh, '<', "$FindBin::RealBin/../../worker_heartbeat.control") or die "control file: $!";
my ($default_version) = map { /^default_version\s*=\s*'([^']*)'/ ? $1 : () } <$fh>;
close $fh;
ok(defined $default_version, "the control file has a default_version");

SKIP:
{
	skip "pg_get_loaded_modules() is PostgreSQL 18+", 2 if $major < 18;
	my $row = $node->safe_psql('postgres', q{
		SELECT module_name || '|' || version FROM pg_get_loaded_modules()
		WHERE file_name = 'worker_heartbeat.so'});
	is($row, "worker_heartbeat|$default_version",
		'PG_MODULE_MAGIC_EXT: pg_get_loaded_modules() names the library and its version');
	is($node->safe_psql('postgres', q{SELECT extversion FROM pg_extension WHERE extname = 'worker_heartbeat'}),
		$default_version, 'and that version is the installed extension version');
}

$node->stop;
done_testing();
