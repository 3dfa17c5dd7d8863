# A crash (immediate stop) while batches are in flight loses nothing: after
# the restart the endpoint, deduplicated by eventId, has every record once
# with no gap; the only duplicates are the batches that were in flight, at
# most one per shard, with the same eventIds.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use EventBridgeTest;
use ConnectorTest;

my $batch_size = 20;
my $node = eb_node('connector_crash');
my $r = start_receiver(args => ['--delay-ms', 30]);
$node->safe_psql('postgres', qq{
	CREATE EXTENSION event_bridge;
	CREATE TABLE orders (id int PRIMARY KEY, v text);
	ALTER TABLE orders REPLICA IDENTITY FULL;
	SELECT event_bridge.create_stream('orders', ARRAY['orders']::regclass[], shard_count => 4);
	SELECT event_bridge.create_connector('crash_fc', 'orders', 'http://127.0.0.1:$r->{port}/',
	    batch_size => $batch_size);});
for my $i (0 .. 9)
{
	$node->safe_psql('postgres',
		"INSERT INTO orders SELECT g, 'v' || g FROM generate_series($i * 400 + 1, $i * 400 + 400) g");
}
ok(wait_capture($node, 'postgres'), 'all rows captured');
my $next = { map { split /\|/ } split /\n/,
	  $node->safe_psql('postgres', 'SELECT shard_id, next_sequence FROM event_bridge.shards') };

# Crash early, while the endpoint is busy: 200 records take 30 ms per batch
# of 20 per shard, the rest more than a second.
ok(wait_for_log($r, sub { scalar(@{ acked_ids($_[0]) }) >= 200 }), 'delivery under way');
$node->stop('immediate');
my $at_crash = scalar(@{ acked_ids(receiver_log($r)) });
cmp_ok($at_crash, '<', 4000, "crashed with $at_crash of 4000 records received");

$node->start;
ok(wait_delivered($node, 'postgres', 'crash_fc'), 'after the restart everything is delivered');
my $log = wait_for_log($r, sub { my %u = map { $_ => 1 } @{ acked_ids($_[0]) }; keys(%u) >= 4000 });
ok($log, 'the endpoint has every record');

# Deduplicated by eventId: each sequence of each shard once, no gap.
my (%seen, %dups);
for my $id (@{ acked_ids($log) })
{
	my ($shard, $seq) = split /:/, $id;
	$dups{$shard}{$seq}++ if $seen{$id}++;
}
my %unique = map { $_ => 1 } keys %seen;
for my $shard (sort keys %$next)
{
	my @missing = grep { !$seen{"$shard:$_"} } 0 .. $next->{$shard} - 1;
	is(scalar(@missing), 0, "shard $shard: no record missing (0..@{[$next->{$shard} - 1]})");
	my @d = sort { $a <=> $b } keys %{ $dups{$shard} // {} };
	ok(@d <= $batch_size && (!@d || $d[-1] - $d[0] + 1 == @d),
		sprintf('shard %s: duplicates only from one batch in flight (%d)', $shard, scalar(@d)));
}
is(scalar(keys %unique), 4000, 'exactly the 4000 records, nothing else');

# Each duplicate repeats the request that was in flight, with the same ids.
my (%first_request, $mismatch);
$mismatch = 0;
for my $e (grep { ($_->{status} // 0) == 200 } @$log)
{
	my $ids = join(',', @{ $e->{event_ids} });
	my $first = $e->{event_ids}[0];
	$mismatch++ if exists $first_request{$first} && index($ids, $first_request{$first}) != 0
	  && index($first_request{$first}, $ids) != 0;
	$first_request{$first} //= $ids;
}
is($mismatch, 0, 'a resent batch starts with the same eventIds as the one in flight');

# The status views agree with the endpoint.
is($node->safe_psql('postgres', q{
	SELECT state, delivered, pending, failures FROM event_bridge.connector_status}),
	'RUNNING|4000|0|0', 'connector_status: 4000 delivered, nothing pending');
is($node->safe_psql('postgres', q{
	SELECT bool_and(delivered_sequence = next_sequence - 1) FROM event_bridge.shard_status}),
	't', 'shard_status: every offset at the head of its shard');

# The invariant checker agrees: nothing missing, contents as stored, order,
# duplicates only of the batch in flight, status views as the log says.
checker_ok($node, 'postgres', $r, [ '--connector', 'crash_fc', '--delay-ms', 30 ],
	'check_invariants.py: every invariant holds after the crash');

stop_receiver($r);
$node->stop;
done_testing();
