# A one-minute soak (test/soak.sh, which runs test/soak.py): a steady load
# with rolled-back transactions, crashes, restarts, kill -9 of each worker,
# the fault points, endpoint faults and Kafka broker outages; afterwards
# every connector (the Kafka one against its topic) passes
# test/check_invariants.py and capture is exactly once.  The long version:
# bash test/soak.sh --minutes 5.  Needs a build with FAULT_INJECTION=1
# (test/run_tests.sh).
use strict;
use warnings;
use FindBin;
use IPC::Run;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);

my $seed = $ENV{EB_SOAK_SEED} // 42;
my ($out, $err) = ('', '');
my $start = time;
IPC::Run::run(
	[ 'bash', "$FindBin::RealBin/../soak.sh", '--minutes', 1, '--seed', $seed,
	  '--fault-gap', '1,3', '--drain-seconds', 45 ],
	'>&', \$out,
	IPC::Run::timeout(170));
my $rc = $? >> 8;
my $took = time - $start;

if ($out =~ /built without FAULT_INJECTION=1/)
{
	plan skip_all => 'event_bridge was built without FAULT_INJECTION=1';
}
note($out);
is($rc, 0, "the soak (seed $seed) passed") or diag($out);
like($out, qr/^== soak passed: every invariant held$/m, 'the soak says every invariant held');
my ($total) = $out =~ /^  total\s+(\d+)$/m;
cmp_ok($total // 0, '>=', 5, 'it injected faults (' . ($total // 0) . ')');
unlike($out, qr/^  (?:FAIL|BROKEN) /m, 'no check failed');
cmp_ok($took, '<', 150, sprintf('it took %.0f s', $took));

done_testing();
