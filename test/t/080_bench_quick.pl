# The benchmark's quick mode (bench/run --quick): it starts its own throwaway
# clusters, measures every figure for the extension (preloaded and not), the
# seed's design and the ceilings, and prints one table. This test only checks
# that every figure was produced and is a number; timings are judged in the
# bench's own output (docs/benchmarks.md), never here.
use strict;
use warnings;
use FindBin;
use File::Temp qw(tempdir);
use JSON::PP;
use Test::More;

my $repo = "$FindBin::RealBin/../..";
my $dir  = tempdir('whbench_t_XXXX', TMPDIR => 1, CLEANUP => 1);
my $json = "$dir/bench.json";

# The seed's design lives outside the repo (../shared/baseline/seed_schema.sql);
# a copy of the tree without it (as in a chroot) cannot compare against it.
# (the same places bench/bench.py looks)
my ($seed) = grep { defined $_ && -f $_ } ($ENV{WH_SEED_SQL},
    "$repo/../shared/baseline/seed_schema.sql", '/work/shared/baseline/seed_schema.sql');
plan skip_all => 'seed_schema.sql not found: set WH_SEED_SQL or keep '
  . '../shared/baseline/ beside the repo'
  unless $seed;

my $out = `"$repo/bench/run" --quick --json "$json" 2>"$dir/stderr"`;
my $rc  = $? >> 8;
is($rc, 0, 'bench/run --quick exits 0')
  or diag(do { local (@ARGV, $/) = ("$dir/stderr"); <> });
note($out);

ok(-s $json, 'bench wrote its figures as JSON') or BAIL_OUT('no figures');
my $j = decode_json(do { local (@ARGV, $/) = ($json); <> });

ok($j->{have_extension}, 'the installed extension was measured');
like($out, qr/^\| figure\s+\|/m, 'the table was printed');
like($out, qr/^figures missing: none$/m, 'bench reports no missing figure');
# A side's figure that failed is printed under the table, not missing from it
# (seednp asked for the seed's heartbeat(), which it has not, unnoticed).
is_deeply($j->{side_errors}, {}, 'no figure of any side failed')
  or diag(explain($j->{side_errors}));

my $num = qr/^-?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?$/;
for my $side (qw(ext extnp seed)) {
    for my $fig (@{ $j->{figures} }) {
        next if $side eq 'seed' && $fig =~ /^hb_directive/;    # 1.3 heartbeat(): the seed has none
        my $v = $j->{results}{$side}{$fig};
        ok(defined $v && $v =~ $num, "$side: $fig is a number")
          or diag(defined $v ? "got '$v'" : 'missing');
    }
}
for my $fig (qw(hb_per_s claims_per_s)) {
    my $v = $j->{results}{ceiling}{$fig};
    ok(defined $v && $v =~ $num && $v > 0, "ceiling: $fig is a positive number");
}
# the extension's measured figures must be real measurements, not zeros
for my $side (qw(ext extnp)) {
    for my $fig (qw(hb_per_s claims_per_s size_first size_after)) {
        my $v = $j->{results}{$side}{$fig};
        ok(defined $v && $v =~ $num && $v > 0, "$side: $fig is positive");
    }
}

done_testing();
