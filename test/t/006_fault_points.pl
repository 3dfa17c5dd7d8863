# Crashes at the capture worker's fault points and kill -9 of each worker,
# under load: afterwards every committed change is captured once, with no
# gap.  Needs a build with `make FAULT_INJECTION=1` (test/run_tests.sh).
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);
use EventBridgeTest;

my $node = eb_node('faults');
load_setup($node);

if ($node->safe_psql('postgres',
	"SELECT count(*) FROM pg_settings WHERE name = 'event_bridge.fault_point'") ne '1')
{
	plan skip_all => 'event_bridge was built without FAULT_INJECTION=1';
}

my $fired = $node->data_dir . '/event_bridge.fault_fired';

# Arms a fault point under load and waits until it has fired and the
# server is back.
sub crash_at
{
	my ($point) = @_;
	unlink $fired;
	my $bench = load_start($node, 6);
	usleep(500_000);
	$node->safe_psql('postgres', qq{
		ALTER SYSTEM SET event_bridge.fault_point = '$point';
		SELECT pg_reload_conf();});
	my $ok = 0;
	for (1 .. 600)
	{
		if (-e $fired)
		{
			$ok = 1;
			last;
		}
		usleep(50_000);
	}
	$bench->finish;
	ok($ok, "fault point $point fired");
	# The postmaster restarts everything; wait until it accepts connections.
	wait_restarted($node) or die 'the server did not come back';
	$node->safe_psql('postgres', q{
		ALTER SYSTEM RESET event_bridge.fault_point;
		SELECT pg_reload_conf();});
}

crash_at('capture-before-commit');
check_exactly_once($node, 'crash before the records commit');

crash_at('capture-after-commit');
check_exactly_once($node, 'crash after the records commit, before the slot moves');

# kill -9 of each worker under load.
for my $kind ('capture', 'delivery', 'launcher')
{
	my $bench = load_start($node, 3);
	usleep(700_000);
	my $pid = $kind eq 'launcher'
	  ? $node->safe_psql('postgres',
		"SELECT pid FROM pg_stat_activity WHERE backend_type = 'event_bridge launcher'")
	  : worker_pid($node, 'postgres', $kind);
	ok($pid, "$kind worker found");
	my $capture = worker_pid($node, 'postgres', 'capture');
	kill 'KILL', $pid;
	$bench->finish;
	# A new capture worker: until the postmaster notices, the old one may be listed.
	ok($node->poll_query_until('postgres',
		"SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'event_bridge capture' AND pid <> $capture"),
		"capture worker back after kill -9 of the $kind");
	check_exactly_once($node, "kill -9 of the $kind worker");
}

$node->stop;
done_testing();
