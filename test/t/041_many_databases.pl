# More databases than event_bridge has shared entries (64): the entries of
# databases without the extension are freed, so a database created last
# still gets its workers, and one that drops the extension gives its entry
# back.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use EventBridgeTest;

my $node = eb_node('many_databases');
$node->safe_psql('postgres', join('', map { "CREATE DATABASE d$_;\n" } 1 .. 70));

# While the launcher looks at every database once, the entries may all be
# taken for a moment; once it has, the first stream of d70 must start.
$node->safe_psql('d70', q{
	CREATE EXTENSION event_bridge;
	CREATE TABLE t (id int PRIMARY KEY);
	ALTER TABLE t REPLICA IDENTITY FULL;});
my ($ok, $err) = (0, '');
for (1 .. 600)
{
	my $ret = $node->psql('d70', q{SELECT event_bridge.create_stream('s', ARRAY['t']::regclass[])},
		stderr => \$err);
	$ok = 1, last if $ret == 0;
	select(undef, undef, undef, 0.2);
}
ok($ok, 'the first stream of the 71st database starts') or diag($err);
$node->safe_psql('d70', 'INSERT INTO t SELECT generate_series(1, 10)');
ok(wait_capture($node, 'd70'), 'the 71st database captures');
is($node->safe_psql('d70', 'SELECT count(*) FROM event_bridge.records'), '10',
	'its changes are in the stream');
isnt(worker_pid($node, 'd70', 'delivery'), '', 'and it has a delivery worker');

$node->stop;
done_testing();
