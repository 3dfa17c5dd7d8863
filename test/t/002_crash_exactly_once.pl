# Exactly-once capture: the server is stopped with -m immediate at random
# moments under load; after each restart the stream holds every committed
# change once, with no gap, and the slot keeps advancing.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);
use EventBridgeTest;

my $node = eb_node('crash');
load_setup($node);

srand(42);
for my $round (1 .. 4)
{
	my $bench = load_start($node, 4);
	usleep(int(700_000 + rand(2_000_000)));
	$node->stop('immediate');
	$bench->finish;
	$node->start;
	note "round $round: crashed under load";
}
ok($node->safe_psql('postgres', 'SELECT count(*) FROM ins') > 100,
	'the load committed work before the crashes');
check_exactly_once($node, 'after four crashes');

# A fast restart (pg_ctl restart -m fast) under load, twice.
for my $round (1 .. 2)
{
	my $bench = load_start($node, 3);
	usleep(800_000);
	$node->restart('fast');
	$bench->finish;
}
check_exactly_once($node, 'after fast restarts under load');

# The slot keeps advancing: WAL is not retained once records are stored.
$node->safe_psql('postgres', 'CHECKPOINT');
ok($node->poll_query_until('postgres', q{
	SELECT pg_current_wal_lsn() - restart_lsn < 4 * 1024 * 1024
	   AND pg_current_wal_lsn() - confirmed_flush_lsn < 64 * 1024
	  FROM pg_replication_slots WHERE slot_name LIKE 'event_bridge_%'}),
	'slot restart_lsn and confirmed_flush_lsn follow the WAL');

$node->stop;
done_testing();
