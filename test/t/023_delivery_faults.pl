# Crashes at the delivery worker's fault points: after a 2xx before the
# offset commits, and in the middle of sending.  Afterwards the endpoint,
# deduplicated by eventId, has every record once with no gap, and the only
# duplicates are whole batches resent with the same eventIds.  Needs a build
# with `make FAULT_INJECTION=1` (test/run_tests.sh).
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);
use EventBridgeTest;
use ConnectorTest;

my $node = eb_node('delivery_faults');
if ($node->safe_psql('postgres',
	"SELECT count(*) FROM pg_settings WHERE name = 'event_bridge.fault_point'") ne '1')
{
	plan skip_all => 'event_bridge was built without FAULT_INJECTION=1';
}
my $fired = $node->data_dir . '/event_bridge.fault_fired';
my $total = 0;

for my $point ('delivery-before-offset-commit', 'delivery-mid-send')
{
	my $r = start_receiver(args => ['--delay-ms', 5]);
	my $stream = $point =~ s/-/_/gr;
	$node->safe_psql('postgres', qq{
		CREATE EXTENSION IF NOT EXISTS event_bridge;
		CREATE TABLE $stream (id int PRIMARY KEY, v text);
		ALTER TABLE $stream REPLICA IDENTITY FULL;
		SELECT event_bridge.create_stream('$stream', ARRAY['$stream']::regclass[], shard_count => 4);
		SELECT event_bridge.stop_connector(connector_name) FROM event_bridge.connector_status;
		SELECT event_bridge.create_connector('$stream', '$stream', 'http://127.0.0.1:$r->{port}/',
		    batch_size => 25);});
	unlink $fired;
	$node->safe_psql('postgres', qq{
		ALTER SYSTEM SET event_bridge.fault_point = '$point';
		SELECT pg_reload_conf();});
	$node->safe_psql('postgres',
		"INSERT INTO $stream SELECT g, repeat('x', 2000) FROM generate_series(1, 2000) g");

	my $ok = 0;
	for (1 .. 600)
	{
		last if ($ok = -e $fired);
		usleep(50_000);
	}
	ok($ok, "$point fired");
	wait_restarted($node) or die 'the server did not come back';
	$node->safe_psql('postgres', q{
		ALTER SYSTEM RESET event_bridge.fault_point;
		SELECT pg_reload_conf();});
	ok(wait_capture($node, 'postgres'), "$point: captured");
	ok(wait_delivered($node, 'postgres', $stream), "$point: everything delivered after the restart");

	my $log = receiver_log($r);
	my (%count, %batches);
	for my $e (grep { ($_->{status} // 0) == 200 } @$log)
	{
		$count{$_}++ for @{ $e->{event_ids} };
		$batches{ $e->{event_ids}[0] }{ join(',', @{ $e->{event_ids} }) }++;
	}
	my $next = { map { split /\|/ } split /\n/, $node->safe_psql('postgres', qq{
		SELECT h.shard_id, h.next_sequence FROM event_bridge.shards h
		  JOIN event_bridge.streams s USING (stream_id) WHERE s.stream_name = '$stream'}) };
	my @missing;
	for my $shard (keys %$next)
	{
		push @missing, grep { !$count{"$shard:$_"} } 0 .. $next->{$shard} - 1;
	}
	is(scalar(@missing), 0, "$point: no record missing");
	is(scalar(keys %count), 2000, "$point: exactly the 2000 records");
	my @changed = grep { keys %{ $batches{$_} } > 1 } keys %batches;
	is(scalar(@changed), 0, "$point: a resent batch has the same eventIds");
	if ($point eq 'delivery-before-offset-commit')
	{
		ok((grep { $_ > 1 } values %count) > 0,
			"$point: the acknowledged batch whose offset was lost is sent again");
	}
	is($node->safe_psql('postgres',
		"SELECT delivered, pending FROM event_bridge.connector_status WHERE connector_name = '$stream'"),
		'2000|0', "$point: connector_status counts each record once");
	checker_ok($node, 'postgres', $r, [ '--connector', $stream, '--delay-ms', 5 ],
		"$point: check_invariants.py finds every invariant held");
	stop_receiver($r);
}

$node->stop;
done_testing();
