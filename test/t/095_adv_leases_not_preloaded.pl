# Adversarial suite, leases: the cases of 093_adv_leases.pl on a server
# without shared_preload_libraries (the Supabase case: the registry lives in
# the server's spare shared memory and heartbeats write the table).
use strict;
use warnings;
use File::Basename qw(dirname);
# Loaded here, at compile time: the modules' INIT blocks must run before the
# file below is read with do.
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

$ENV{WH_ADV_PRELOAD} = '0';
my $file = dirname(__FILE__) . '/093_adv_leases.pl';
do "./$file";
die "$file: $@" if $@;
