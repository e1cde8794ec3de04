# The reaper's idle pass keeps state between passes, and that state must follow
# every change (preloaded; reap_interval 200 ms):
# - expired leases are found by a probe over the registrations the reaper
#   keeps (an index read per table, or one statement when a table has no usable
#   index); a registration added or removed, a registered table renamed or
#   moved, its schema renamed, an index created or dropped, all take effect at
#   the next pass;
# - the extension's own schema is remembered too: renaming it does not stop
#   the reaper;
# - a session-bound worker whose session ended without telling the reaper (a
#   pid that no longer exists, as after a restore) is found by the sweep that
#   runs every 10 s even when nothing else happens.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('idle_pass');
$node->init;
$node->append_conf('postgresql.conf', q{
shared_preload_libraries = 'worker_heartbeat'
max_worker_processes = 16
worker_heartbeat.reap_interval = '200ms'
worker_heartbeat.launcher_interval = '500ms'
});
$node->start;
$node->safe_psql('postgres', q{
	CREATE SCHEMA pm_pipeline;
	CREATE EXTENSION worker_heartbeat SCHEMA pm_pipeline;
	CREATE SCHEMA app;
	CREATE SCHEMA other;
	CREATE FUNCTION pg_temp.queue(name text) RETURNS void LANGUAGE plpgsql AS $$
	BEGIN
		EXECUTE format('CREATE TABLE app.%I (id int PRIMARY KEY, state text NOT NULL DEFAULT ''pending'',
		                claimed_by text, lease_expires_at timestamptz)', name);
		EXECUTE format('CREATE INDEX ON app.%I (lease_expires_at)', name);
		EXECUTE format('INSERT INTO app.%I (id) SELECT g FROM generate_series(1, 3) g', name);
	END $$;
	SELECT pg_temp.queue('q1'), pg_temp.queue('q2'), pg_temp.queue('q3');
	SELECT pm_pipeline.register_lease_table('app.q1', p_on_release => '{"state": "pending"}');
	SELECT pm_pipeline.upsert_worker_heartbeat('live', 'w', 'processing');
});
ok($node->poll_query_until('postgres', 'SELECT passes > 3 FROM pm_pipeline.reaper_status()'),
	'the reaper makes passes');
my $reaper = $node->safe_psql('postgres', 'SELECT pid FROM pm_pipeline.reaper_status()');

# A lease of the live worker in row $row of $table, expired a moment ago.
sub expire
{
	my ($table, $row) = @_;
	$node->safe_psql('postgres',
		"UPDATE $table SET state = 'claimed', claimed_by = 'live', lease_expires_at = now() - interval '1 ms' "
		  . "WHERE id = $row");
}

sub released
{
	my ($table, $row, $what) = @_;
	ok( $node->poll_query_until('postgres',
			"SELECT claimed_by IS NULL AND lease_expires_at IS NULL AND state = 'pending' FROM $table WHERE id = $row"),
		$what);
}

expire('app.q1', 1);
released('app.q1', 1, 'an expired lease in a registered table is released');
is($node->safe_psql('postgres', 'SELECT status FROM pm_pipeline.worker_heartbeats WHERE worker_id = \'live\''),
	'processing', 'its worker is still alive');

# Registered after the reaper has loaded the registrations.
$node->safe_psql('postgres', q{SELECT pm_pipeline.register_lease_table('app.q2', p_on_release => '{"state": "pending"}')});
expire('app.q2', 1);
released('app.q2', 1, 'a table registered while the reaper runs: its expired lease is released');

# Renamed and moved tables, a renamed schema.
$node->safe_psql('postgres', 'ALTER TABLE app.q1 RENAME TO q1_renamed');
expire('app.q1_renamed', 2);
released('app.q1_renamed', 2, 'a renamed registered table: its expired lease is released');
$node->safe_psql('postgres', 'ALTER TABLE app.q1_renamed SET SCHEMA other');
expire('other.q1_renamed', 3);
released('other.q1_renamed', 3, 'a registered table moved to another schema: its expired lease is released');
$node->safe_psql('postgres', 'ALTER SCHEMA app RENAME TO app2');
expire('app2.q2', 2);
released('app2.q2', 2, 'the schema of a registered table renamed: its expired lease is released');

# The extension's own schema renamed.
$node->safe_psql('postgres', 'ALTER SCHEMA pm_pipeline RENAME TO pm_renamed');
expire('app2.q2', 3);
released('app2.q2', 3, "the extension's schema renamed: the reaper still releases expired leases");
is($node->safe_psql('postgres', 'SELECT pid FROM pm_renamed.reaper_status()'), $reaper, 'the same reaper');
$node->safe_psql('postgres', 'ALTER SCHEMA pm_renamed RENAME TO pm_pipeline');

# Unregistered: its expired leases are no longer the reaper's business.
$node->safe_psql('postgres', q{SELECT pm_pipeline.unregister_lease_table('other.q1_renamed')});
expire('other.q1_renamed', 1);
my $passes = $node->safe_psql('postgres', 'SELECT passes FROM pm_pipeline.reaper_status()');
ok($node->poll_query_until('postgres', "SELECT passes > $passes + 3 FROM pm_pipeline.reaper_status()"),
	'passes go on after unregistering');
is($node->safe_psql('postgres', 'SELECT claimed_by FROM other.q1_renamed WHERE id = 1'),
	'live', 'an unregistered table is left alone');
# The control for the check above: the same lease in a registered table goes.
expire('app2.q2', 1);
released('app2.q2', 1, 'while the same lease in a registered table is released');

# How the probe reads each table: a plain or "expires IS NOT NULL" btree on the
# expires column is read directly; no index, a descending one, or a partial
# index that could hide a deadline make the reaper ask in SQL. Expired leases
# are released either way, and after the index is dropped.
$node->safe_psql('postgres', q{
	DO $$
	DECLARE t text;
	BEGIN
	  FOREACH t IN ARRAY ARRAY['p_plain', 'p_notnull', 'p_none', 'p_desc', 'p_partial'] LOOP
	    EXECUTE format('CREATE TABLE app2.%I (id int PRIMARY KEY, state text NOT NULL DEFAULT ''pending'',
	                    claimed_by text, lease_expires_at timestamptz)', t);
	    EXECUTE format('INSERT INTO app2.%I (id) SELECT g FROM generate_series(1, 3) g', t);
	  END LOOP;
	END $$;
	CREATE INDEX p_plain_expires ON app2.p_plain (lease_expires_at);
	CREATE INDEX ON app2.p_notnull (lease_expires_at) WHERE lease_expires_at IS NOT NULL;
	CREATE INDEX ON app2.p_desc (lease_expires_at DESC);
	CREATE INDEX ON app2.p_partial (lease_expires_at) WHERE state = 'claimed';
});
sub register
{
	my @tables = @_;
	$node->safe_psql('postgres', join '',
		map { "SELECT pm_pipeline.register_lease_table('app2.$_', p_on_release => '{\"state\": \"pending\"}');\n" }
		  @tables);
}
register('p_plain', 'p_notnull', 'p_partial');
# First with only indexed tables: a lease that expired in a row the partial
# index does not hold (its state is not 'claimed') must not be missed by
# reading that index. A few passes first, so that the registrations are kept
# and the probe is not the one that follows a reload.
$passes = $node->safe_psql('postgres', 'SELECT passes FROM pm_pipeline.reaper_status()');
ok($node->poll_query_until('postgres', "SELECT passes > $passes + 3 FROM pm_pipeline.reaper_status()"),
	'passes go on after registering');
$node->safe_psql('postgres',
	"UPDATE app2.p_partial SET state = 'done', claimed_by = 'live', lease_expires_at = now() - interval '1 ms' WHERE id = 2");
ok( $node->poll_query_until('postgres',
		'SELECT claimed_by IS NULL AND lease_expires_at IS NULL FROM app2.p_partial WHERE id = 2'),
	'p_partial: a lease the partial index does not hold is released');
register('p_none', 'p_desc');
for my $t ('p_plain', 'p_notnull', 'p_none', 'p_desc', 'p_partial')
{
	expire("app2.$t", 1);
	released("app2.$t", 1, "$t: an expired lease is released");
}
$node->safe_psql('postgres', 'DROP INDEX app2.p_plain_expires');
expire('app2.p_plain', 2);
released('app2.p_plain', 2, 'p_plain: its index dropped, an expired lease is still released');

# A session-bound worker whose session is gone, without the session telling:
# its row names a backend that does not exist (what a restore brings back).
$node->safe_psql('postgres', q{
	SELECT pm_pipeline.upsert_worker_heartbeat('orphan', 'w', 'processing');
	SELECT pm_pipeline.set_worker_type_dead_after('w', '1 hour');
	UPDATE pm_pipeline.worker_heartbeats SET session_pid = 2147483000, session_started_at = now()
	 WHERE worker_id = 'orphan';
});
ok( $node->poll_query_until('postgres',
		q{SELECT status = 'dead' AND death_cause = 'session_ended' FROM pm_pipeline.worker_heartbeats
		   WHERE worker_id = 'orphan'}),
	'a session-bound worker whose backend is gone is found dead by the sweep');
is($node->safe_psql('postgres', q{SELECT status FROM pm_pipeline.worker_heartbeats WHERE worker_id = 'live'}),
	'processing', 'the live worker is not');
is($node->safe_psql('postgres', 'SELECT pid FROM pm_pipeline.reaper_status()'), $reaper,
	'one reaper did it all (same pid)');

$node->stop;
done_testing();
