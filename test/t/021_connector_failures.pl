# Connectors survive a failing endpoint: an endpoint answering 500 then
# recovering, suspension after max_retries and resume (other shards go on),
# a timeout, an endpoint down then up; stop / start and reset replay.  A
# retry always resends the same records with the same eventIds.
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

my $node = eb_node('connector_failures');
my $db = 'postgres';
$node->safe_psql($db, 'CREATE EXTENSION event_bridge');

# A table with its own stream for each scenario.
sub new_stream
{
	my ($name, $shards) = @_;
	$node->safe_psql($db, qq{
		CREATE TABLE $name (id int PRIMARY KEY, v text);
		ALTER TABLE $name REPLICA IDENTITY FULL;
		SELECT event_bridge.create_stream('$name', ARRAY['$name']::regclass[], shard_count => $shards);});
}

sub insert_rows
{
	my ($table, $from, $to) = @_;
	$node->safe_psql($db, "INSERT INTO $table SELECT g, 'v' || g FROM generate_series($from, $to) g");
	ok(wait_capture($node, $db), "$table: rows $from..$to captured");
}

sub status
{
	my ($connector, $columns) = @_;
	return $node->safe_psql($db,
		"SELECT $columns FROM event_bridge.connector_status WHERE connector_name = '$connector'");
}

# The next sequence of each shard of a stream, {shard => next}.
sub next_sequences
{
	my ($stream) = @_;
	return { map { split /\|/ } split /\n/, $node->safe_psql($db, qq{
		SELECT h.shard_id, h.next_sequence FROM event_bridge.shards h
		  JOIN event_bridge.streams s USING (stream_id) WHERE s.stream_name = '$stream'}) };
}

# Checks that every failed request was retried with the same eventIds and
# the same body, as the next request of its shard.
sub check_retries_identical
{
	my ($entries, $what) = @_;
	my (%pending_retry, $bad, $failed);
	$bad = $failed = 0;
	for my $e (@$entries)
	{
		my $ids = join(',', @{ $e->{event_ids} });
		if (my $f = delete $pending_retry{ $e->{shard} })
		{
			$bad++ if $f->{ids} ne $ids || $f->{sha} ne $e->{body_sha256};
		}
		if (($e->{status} // 0) != 200)
		{
			$failed++;
			$pending_retry{ $e->{shard} } = { ids => $ids, sha => $e->{body_sha256} };
		}
	}
	cmp_ok($failed, '>', 0, "$what: some attempts failed");
	is($bad, 0, "$what: every retry resent the same eventIds in the same body");
}

# 1. An endpoint that answers 500 twice, then recovers.
{
	new_stream('t500', 4);
	my $r = start_receiver(args => ['--fail-first', 2]);
	$node->safe_psql($db, "SELECT event_bridge.create_connector('c500', 't500',
		'http://127.0.0.1:$r->{port}/', retry_interval => '100 ms', batch_size => 10)");
	insert_rows('t500', 1, 100);
	ok(wait_delivered($node, $db, 'c500'), '500 then recovery: everything delivered');
	my $log = receiver_log($r);
	check_shard_order(acked_ids($log), next_sequences('t500'), '500 then recovery');
	check_retries_identical($log, '500 then recovery');
	is(status('c500', 'state, failures, last_http_status, last_error, delivered'),
		'RUNNING|0|200|HTTP status 500|100',
		'500 then recovery: RUNNING again, the last error kept');
	is($node->safe_psql($db, q{
		SELECT count(*) || ' ' || string_agg(DISTINCT http_status::text || ': ' || rtrim(response, E'\n'), ', ')
		  FROM event_bridge.connector_attempts_log
		 WHERE connector_name = 'c500' AND http_status = 500}),
		'2 500: injected 500', 'the attempts log holds both failures with the start of the body');
	stop_receiver($r);
}

# 2. Suspension after max_retries => 3 consecutive failures of one shard;
# the other shard goes on; resume retries the same batch.
{
	new_stream('tsusp', 2);
	my $r = start_receiver(args => ['--fail-first', 3]);
	$node->safe_psql($db, "SELECT event_bridge.create_connector('csusp', 'tsusp',
		'http://127.0.0.1:$r->{port}/', retry_interval => '100 ms', max_retries => 3)");
	insert_rows('tsusp', 1, 1);
	my $bad_shard = $node->safe_psql($db, 'SELECT shard_id FROM event_bridge.records r
		JOIN event_bridge.streams s USING (stream_id) WHERE s.stream_name = \'tsusp\'');
	my $good_shard = 1 - $bad_shard;
	ok($node->poll_query_until($db, "SELECT state = 'SUSPENDED' FROM event_bridge.shard_status
		WHERE connector_name = 'csusp' AND shard_id = $bad_shard"),
		'suspension: the failing shard is SUSPENDED');
	is(status('csusp', 'state, failures, last_http_status'), 'SUSPENDED|3|500',
		'suspension: the connector shows SUSPENDED after 3 failures');
	is(scalar(@{ receiver_log($r) }), 3, 'suspension: exactly max_retries attempts were made');

	# More rows in both shards: the good shard delivers, the suspended one waits.
	insert_rows('tsusp', 2, 40);
	my $good_next = next_sequences('tsusp')->{$good_shard};
	ok($node->poll_query_until($db, "SELECT delivered_sequence = $good_next - 1
		FROM event_bridge.shard_status WHERE connector_name = 'csusp' AND shard_id = $good_shard"),
		'suspension: the other shard goes on');
	is(scalar(grep { $_->{shard} == $bad_shard } @{ receiver_log($r) }), 3,
		'suspension: nothing more was sent for the suspended shard');
	is($node->safe_psql($db, "SELECT state, pending > 0 FROM event_bridge.shard_status
		WHERE connector_name = 'csusp' AND shard_id = $bad_shard"), 'SUSPENDED|t',
		'suspension: its records wait');

	$node->safe_psql($db, "SELECT event_bridge.resume_connector('csusp')");
	ok(wait_delivered($node, $db, 'csusp'), 'resume: everything delivered');
	my $log = receiver_log($r);
	check_shard_order(acked_ids($log), next_sequences('tsusp'), 'resume');
	check_retries_identical($log, 'resume');
	is(status('csusp', 'state, failures, suspended_shards'), 'RUNNING|0|0', 'resume: RUNNING again');
	stop_receiver($r);
}

# 3. A timeout: an endpoint slower than the connector's timeout fails every
# attempt; once it answers in time, resume delivers.
{
	new_stream('tslow', 1);
	my $slow = start_receiver(args => ['--delay-ms', 3000]);
	$node->safe_psql($db, "SELECT event_bridge.create_connector('cslow', 'tslow',
		'http://127.0.0.1:$slow->{port}/', timeout => '300 ms', retry_interval => '100 ms',
		max_retries => 2)");
	insert_rows('tslow', 1, 5);
	ok($node->poll_query_until($db,
		"SELECT state = 'SUSPENDED' FROM event_bridge.connector_status WHERE connector_name = 'cslow'"),
		'timeout: suspended after 2 timeouts');
	like(status('cslow', 'last_error'), qr/timed out after \d+ milliseconds/,
		'timeout: the last error says the request timed out');
	is(status('cslow', 'last_http_status IS NULL, delivered'), 't|0', 'timeout: nothing delivered');
	my $port = $slow->{port};
	stop_receiver($slow);

	my $fast = start_receiver(port => $port);
	$node->safe_psql($db, "SELECT event_bridge.resume_connector('cslow')");
	ok(wait_delivered($node, $db, 'cslow'), 'timeout: delivered once the endpoint is fast');
	is(join(',', @{ acked_ids(receiver_log($fast)) }), '0:0,0:1,0:2,0:3,0:4',
		'timeout: the same batch, once, in order');
	stop_receiver($fast);
}

# 4. An endpoint that is down, then up on the same port.
{
	new_stream('tdown', 4);
	my $probe = start_receiver();
	my $port = $probe->{port};
	stop_receiver($probe);
	$node->safe_psql($db, "SELECT event_bridge.create_connector('cdown', 'tdown',
		'http://127.0.0.1:$port/', retry_interval => '100 ms')");
	insert_rows('tdown', 1, 200);
	ok($node->poll_query_until($db,
		"SELECT failures >= 8 FROM event_bridge.connector_status WHERE connector_name = 'cdown'"),
		'down: attempts fail and are retried');
	like(status('cdown', 'last_error'), qr/Couldn't connect|Connection refused/,
		'down: the last error says the connection was refused');
	is(status('cdown', 'state, delivered'), 'RUNNING|0', 'down: still RUNNING, nothing delivered');

	my $r = start_receiver(port => $port);
	ok(wait_delivered($node, $db, 'cdown'), 'up: everything delivered');
	check_shard_order(acked_ids(receiver_log($r)), next_sequences('tdown'), 'down then up');
	is(status('cdown', 'failures, delivered, last_http_status'), '0|200|200', 'up: healthy again');

	# 5. Stop and start: nothing is sent while stopped, all of it after start.
	$node->safe_psql($db, "SELECT event_bridge.stop_connector('cdown')");
	is(status('cdown', 'state'), 'STOPPED', 'stop: STOPPED');
	my $sent = scalar(@{ receiver_log($r) });
	$node->safe_psql($db, "SELECT event_bridge.create_connector('cwitness', 'tdown',
		'http://127.0.0.1:$port/witness')");
	insert_rows('tdown', 201, 300);
	ok(wait_delivered($node, $db, 'cwitness'), 'stop: a running connector of the stream delivers meanwhile');
	is(scalar(grep { $_->{path} eq '/' } @{ receiver_log($r) }), $sent,
		'stop: the stopped connector sent nothing');
	is(status('cdown', 'pending'), '100', 'stop: its records wait');
	$node->safe_psql($db, "SELECT event_bridge.start_connector('cdown')");
	ok(wait_delivered($node, $db, 'cdown'), 'start: the waiting records are delivered');
	check_shard_order(acked_ids(receiver_log($r), '/'), next_sequences('tdown'), 'stop and start');

	# 6. Reset to the earliest record: everything is delivered again, in order.
	$node->safe_psql($db, "SELECT event_bridge.reset_connector('cdown', NULL)");
	ok(wait_delivered($node, $db, 'cdown'), 'reset: replayed');
	my $ids = acked_ids(receiver_log($r), '/');
	my $next = next_sequences('tdown');
	my $total = 0;
	$total += $_ for values %$next;
	is(scalar(@$ids), 2 * $total, 'reset: every record was delivered twice');
	check_shard_order([ @$ids[ $total .. $#$ids ] ], $next, 'reset replay');
	is(status('cdown', 'delivered'), 2 * $total, 'reset: delivered counts the replay');
	stop_receiver($r);
}

# 7. Changing a connector while its shards deliver: the worker records the
# outcomes of several shards in one transaction, and reset, drop and
# drop_stream change all of a connector's shards at once.  None of the calls
# may fail (a deadlock would fail one of them), and delivery goes on.
{
	my $r = start_receiver();
	my $url = "http://127.0.0.1:$r->{port}";
	new_stream('tchurn', 4);
	insert_rows('tchurn', 1, 4000);
	my $log_offset = -s $node->logfile;
	my $calls = 0;
	for my $i (1 .. 20)
	{
		$node->safe_psql($db, "SELECT event_bridge.create_connector('cchurn', 'tchurn', '$url/churn',
			start_time => NULL, batch_size => 1)");
		usleep(50_000);
		$node->safe_psql($db, "SELECT event_bridge.reset_connector('cchurn', NULL)");
		usleep(50_000);
		$node->safe_psql($db, "SELECT event_bridge.drop_connector('cchurn')");
		$calls += 3;
	}
	is($calls, 60, 'churn: every create, reset and drop during delivery succeeded');
	$node->safe_psql($db, "SELECT event_bridge.create_connector('cchurn', 'tchurn', '$url/churn',
		start_time => NULL, batch_size => 50)");
	ok(wait_delivered($node, $db, 'cchurn'), 'churn: the last connector delivers everything');
	$node->safe_psql($db, "SELECT event_bridge.drop_stream('tchurn')");
	is($node->safe_psql($db,
		"SELECT count(*) FROM event_bridge.connector_status WHERE connector_name = 'cchurn'"), '0',
		'churn: drop_stream during delivery dropped its connector');
	unlike(slurp_file($node->logfile, $log_offset), qr/deadlock detected/,
		'churn: no deadlock in the server log');
	stop_receiver($r);
}

$node->stop;
done_testing();
