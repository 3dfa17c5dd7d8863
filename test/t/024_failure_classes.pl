# What a failed attempt says decides what happens next (DESIGN 9.3):
# transient failures are retried by the connector's retry_strategy, with
# Retry-After honoured on 429 and 503 up to max_retry_interval; an endpoint
# that refuses (401, 403, 404, 410, 3xx) suspends the whole connector at
# once; any other 4xx suspends its shard at once.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use EventBridgeTest;
use ConnectorTest;

my $node = eb_node('failure_classes');
$node->safe_psql('postgres', q{
	CREATE EXTENSION event_bridge;
	CREATE TABLE t (id int PRIMARY KEY);
	ALTER TABLE t REPLICA IDENTITY FULL;
	SELECT event_bridge.create_stream('s', ARRAY['t']::regclass[], shard_count => 2);
	SELECT event_bridge.create_stream('one', ARRAY['t']::regclass[]);});

my %r = (
	unauthorized => start_receiver(args => [ '--fail-first', 1000, '--fail-status', 401 ]),
	bad => start_receiver(args => [ '--fail-first', 1, '--fail-status', 400 ]),
	limited => start_receiver(args => [ '--fail-first', 1, '--fail-status', 429, '--retry-after', 2 ]),
	capped => start_receiver(args => [ '--fail-first', 1, '--fail-status', 503, '--retry-after', 30 ]),
	flaky => start_receiver(args => [ '--fail-first', 8, '--fail-status', 500 ]));
$node->safe_psql('postgres', join("\n", map {
	"SELECT event_bridge.create_connector('$_', '" . ($_ eq 'flaky' ? 'one' : 's')
	  . "', 'http://127.0.0.1:$r{$_}{port}/', batch_size => 10,"
	  . " retry_interval => '50 ms'"
	  . ($_ eq 'flaky' ? ", retry_strategy => 'exponential', max_retry_interval => '3 seconds'" : '')
	  . ($_ eq 'capped' ? ", max_retry_interval => '1 second'" : '')
	  . ");" } sort keys %r));
$node->safe_psql('postgres', 'INSERT INTO t SELECT generate_series(1, 40)');
ok(wait_capture($node, 'postgres'), 'captured');

# While a batch waits for its retry, shard_status says until when.
ok($node->poll_query_until('postgres', q{
	SELECT bool_or(state = 'RUNNING' AND next_attempt_at - last_attempt_at >= interval '1900 ms')
	  FROM event_bridge.shard_status WHERE connector_name = 'limited'}),
	'next_attempt_at shows the wait that Retry-After asked for');

# Start times (ms) of the attempts a receiver got, in order.
sub attempt_times
{
	my ($name) = @_;
	return [ map { $_->{t_ms} } @{ receiver_log($r{$name}) } ];
}

# Milliseconds from the attempt answered with this status to the next
# attempt of the same shard.
sub retry_gap
{
	my ($name, $status) = @_;
	my ($failed, $next);
	for my $e (@{ receiver_log($r{$name}) })
	{
		if (!$failed && ($e->{status} // 0) == $status)
		{
			$failed = $e;
		}
		elsif ($failed && defined $e->{shard} && $e->{shard} == $failed->{shard})
		{
			$next = $e;
			last;
		}
	}
	return $next ? $next->{t_ms} - $failed->{t_ms} : -1;
}

# 401: the whole connector stops at once, after one attempt.
ok($node->poll_query_until('postgres', q{
	SELECT bool_and(state = 'SUSPENDED') AND min(last_error) LIKE 'HTTP status 401%the endpoint refuses%'
	  FROM event_bridge.shard_status WHERE connector_name = 'unauthorized'}),
	'401 suspends every shard of the connector');
is($node->safe_psql('postgres',
		"SELECT state FROM event_bridge.connector_status WHERE connector_name = 'unauthorized'"),
	'SUSPENDED', 'the connector is SUSPENDED');
my %tries;
$tries{ $_->{shard} }++ for @{ receiver_log($r{unauthorized}) };
ok(!grep({ $_ > 1 } values %tries), 'after one attempt per shard at most (those in flight)')
  or diag(explain(\%tries));

# 400: that shard stops at once; the other shard goes on.
ok($node->poll_query_until('postgres', q{
	SELECT count(*) FILTER (WHERE state = 'SUSPENDED' AND last_error LIKE 'HTTP status 400%refused the batch%') = 1
	   AND count(*) FILTER (WHERE state = 'RUNNING' AND pending = 0) = 1
	  FROM event_bridge.shard_status WHERE connector_name = 'bad'}),
	'400 suspends its shard at once, and the other shard delivers');
is(scalar(grep { ($_->{status} // 0) == 400 } @{ receiver_log($r{bad}) }), 1, 'after a single attempt');

# 429 with Retry-After: 2: the retry waits 2 s, not retry_interval.
ok(wait_delivered($node, 'postgres', 'limited'), '429 is retried');
my $gap = retry_gap('limited', 429);
cmp_ok($gap, '>=', 1900, sprintf('after Retry-After (%.0f ms)', $gap));

# 503 with Retry-After: 30 under max_retry_interval 1 s: the cap wins.
ok(wait_delivered($node, 'postgres', 'capped'), '503 is retried');
$gap = retry_gap('capped', 503);
cmp_ok($gap, '<', 5000, sprintf('within max_retry_interval, not 30 s (%.0f ms)', $gap));
cmp_ok($gap, '>=', 900, 'and no sooner than the cap');

# Exponential backoff of eight 500s from 50 ms, on a one-shard stream: the
# waits stay under the 3 s cap and grow (the last four take longer than the
# first four).
ok(wait_delivered($node, 'postgres', 'flaky'), 'eight 500s, then delivered');
my $t = attempt_times('flaky');
my @gaps = map { $t->[$_] - $t->[ $_ - 1 ] } 1 .. $#$t;
cmp_ok(scalar(@gaps), '>=', 8, 'nine attempts or more');
my ($longest) = sort { $b <=> $a } @gaps;
cmp_ok($longest, '<=', 3300, sprintf('no wait is longer than max_retry_interval (%.0f ms)', $longest));
my ($early, $late) = (0, 0);
$early += $gaps[$_] for 0 .. 3;
$late += $gaps[$_] for 4 .. 7;
cmp_ok($late, '>', $early, sprintf('later waits are longer: first four %.0f ms, next four %.0f ms', $early, $late));

# alter_connector while the 400'd shard waits: a smaller batch_size applies
# from the next batch; the offsets stay, so every record still arrives once
# and in order.
$node->safe_psql('postgres', q{SELECT event_bridge.alter_connector('bad', batch_size => 3)});
my $seen = scalar(@{ receiver_log($r{bad}) });
$node->safe_psql('postgres', q{SELECT event_bridge.resume_connector('bad');
	INSERT INTO t SELECT generate_series(101, 130);});
ok(wait_capture($node, 'postgres') && wait_delivered($node, 'postgres', 'bad'),
	'altered and resumed, it delivers everything');
my ($refused) = grep { ($_->{status} // 0) == 400 } @{ receiver_log($r{bad}) };
my @after = @{ receiver_log($r{bad}) }[ $seen .. $#{ receiver_log($r{bad}) } ];
my @retried = grep { "@{ $_->{event_ids} }" eq "@{ $refused->{event_ids} }" } @after;
is(scalar(@retried), 1, 'the refused batch is retried once, with the same eventIds');
ok(@after > 1 && !grep({ scalar(@{ $_->{event_ids} }) > 3 } grep { $_ != $retried[0] } @after),
	'then batches of at most 3');
my %next_s = map { split /\|/ } split /\n/, $node->safe_psql('postgres', q{
	SELECT h.shard_id, h.next_sequence FROM event_bridge.shards h
	  JOIN event_bridge.streams s USING (stream_id) WHERE s.stream_name = 's' ORDER BY 1});
check_shard_order(acked_ids(receiver_log($r{bad})), \%next_s, 'connector bad, before and after the change');

# resume_connector starts the refused connector again.
$node->safe_psql('postgres', "SELECT event_bridge.resume_connector('unauthorized')");
ok($node->poll_query_until('postgres', q{
	SELECT sum(attempts) > 1 FROM event_bridge.shard_status WHERE connector_name = 'unauthorized'}),
	'resume_connector tries the refused connector again');

stop_receiver($_) for values %r;
$node->stop;
done_testing();
