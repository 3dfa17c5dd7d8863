# The Kafka target loses nothing across a crash of the server in the middle
# of delivery, a fast shutdown with messages in flight, nor an outage of
# every broker longer than the
# connector's timeout (failed batches, with librdkafka's error in the status
# views, are produced again): afterwards the topic holds every record, each
# with its stored data, and per key the first copies come in order; the
# invariant checker reads the topic too.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use JSON::PP;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);
use EventBridgeTest;
use ConnectorTest;

my $node = eb_node('kafka_faults');
my $k = start_kafka_mock(topic => 'orders', brokers => 3, partitions => 4);
my $boot = $k->{bootstrap};
$node->safe_psql('postgres', qq{
	CREATE EXTENSION event_bridge;
	CREATE TABLE orders (id int PRIMARY KEY, v text);
	ALTER TABLE orders REPLICA IDENTITY FULL;
	SELECT event_bridge.create_stream('orders', ARRAY['orders']::regclass[], shard_count => 4);
	SELECT event_bridge.create_connector('k', 'orders', 'kafka://$boot/orders', target => 'kafka',
	    batch_size => 20, timeout => '2 seconds', retry_interval => '200 ms');});

# Slow brokers, so that the crash comes while batches are in flight.
kafka_command($k, "rtt $_ 30") for 1 .. 3;
for my $i (0 .. 9)
{
	$node->safe_psql('postgres',
		"INSERT INTO orders SELECT g, 'v' || g FROM generate_series($i * 400 + 1, $i * 400 + 400) g");
}
ok(wait_capture($node, 'postgres'), 'all rows captured');
ok($node->poll_query_until('postgres', q{
	SELECT delivered >= 200 FROM event_bridge.connector_status WHERE connector_name = 'k'}),
	'delivery under way');
$node->stop('immediate');
$node->start;
kafka_command($k, "rtt $_ 0") for 1 .. 3;
ok(wait_delivered($node, 'postgres', 'k'), 'after the crash everything is delivered');

# Every broker down for longer than the connector's timeout.
kafka_command($k, "down $_") for 1 .. 3;
$node->safe_psql('postgres', q{
	UPDATE orders SET v = v || '!' WHERE id % 4 = 0;
	DELETE FROM orders WHERE id % 10 = 1;});
ok($node->poll_query_until('postgres', q{
	SELECT bool_or(last_error LIKE 'Kafka: %') FROM event_bridge.shard_status WHERE connector_name = 'k'}),
	'while the brokers are down, the status shows librdkafka\'s error');
note($node->safe_psql('postgres',
	q{SELECT string_agg(DISTINCT last_error, '; ') FROM event_bridge.shard_status WHERE connector_name = 'k'}));
is($node->safe_psql('postgres',
	q{SELECT state FROM event_bridge.connector_status WHERE connector_name = 'k'}),
	'RUNNING', 'a broker outage is transient: the connector keeps trying');
kafka_command($k, "up $_") for 1 .. 3;
ok(wait_delivered($node, 'postgres', 'k'), 'after the outage everything is delivered');

# A fast shutdown while messages are in flight to slow brokers: the worker
# waits for them (up to 2 seconds) as it exits, and loses nothing.
kafka_command($k, "rtt $_ 300") for 1 .. 3;
$node->safe_psql('postgres',
	"INSERT INTO orders SELECT g, 'late' || g FROM generate_series(5001, 5400) g");
ok($node->poll_query_until('postgres', q{
	SELECT bool_or(delivered_sequence < next_sequence - 1)
	  FROM event_bridge.shard_status WHERE connector_name = 'k'}), 'batches to slow brokers are in flight');
$node->stop('fast');
$node->start;
kafka_command($k, "rtt $_ 0") for 1 .. 3;
ok(wait_delivered($node, 'postgres', 'k'), 'after a fast shutdown in the middle, everything is delivered');

# The topic against the stored records.
my %stored;
for my $line (split /\n/, $node->safe_psql('postgres',
	q{SELECT shard_id || ':' || sequence, data FROM event_bridge.records}))
{
	my ($id, $data) = split /\|/, $line, 2;
	$stored{$id} = $data;
}
my $records = scalar(keys %stored);
my $messages = kafka_consume($k, 'orders', $records, 3000);
ok($messages, "kafkajs reads at least the $records records back") or BAIL_OUT('no messages');
my (%seen, %first_seq);
my ($bad_data, $out_of_order) = (0, 0);
for my $m (@$messages)
{
	my $id = $m->{headers}{event_id};
	my $v = decode_json($m->{value});
	$bad_data++ unless defined $stored{$id} && $v->{data} eq $stored{$id};
	next if $seen{$id}++;
	my $key = "$m->{partition}/$m->{key}";
	$out_of_order++ if defined $first_seq{$key} && $m->{headers}{sequence} <= $first_seq{$key};
	$first_seq{$key} = $m->{headers}{sequence};
}
is(scalar(grep { !$seen{$_} } keys %stored), 0, 'no record is missing from the topic');
is($bad_data, 0, 'every message carries its record\'s stored data');
is($out_of_order, 0, 'per key, the first copies come in sequence order');
# The invariant checker, with the topic as what the function received.
my $topic_log = "$PostgreSQL::Test::Utils::tmp_check/topic.jsonl";
open my $fh, '>', $topic_log or die $!;
print $fh map { encode_json($_) . "\n" } @$messages;
close $fh;
checker_ok($node, 'postgres', $topic_log, [ '--kafka', '--connector', 'k' ],
	'the invariant checker finds nothing wrong with the topic');
# and it can fail: without one record's messages, the record is missing.
my $gone = $messages->[10]{headers}{event_id};
open $fh, '>', "$topic_log.doctored" or die $!;
print $fh map { encode_json($_) . "\n" } grep { $_->{headers}{event_id} ne $gone } @$messages;
close $fh;
my ($rc, $out, $err) = run_checker($node, 'postgres', "$topic_log.doctored", '--kafka',
	'--connector', 'k');
is($rc, 1, "without the messages of $gone, the checker fails");
like($out, qr/missing.*FAIL|FAIL.*missing/i, 'and says a record is missing') or diag($out . $err);
my $dups = scalar(@$messages) - scalar(keys %seen);
note("$dups duplicate messages (batches produced again after the crash or the outage)");
cmp_ok($dups, '<=', scalar(@$messages) / 2, 'duplicates are the batches produced again, not everything');

# A connector moved from Kafka to HTTP while a batch is in flight to slow
# brokers, then reset: the Kafka batch is stopped, and its late delivery
# report (here a refusal, an endpoint failure) is not taken for the HTTP
# batch then in hand, which it once was: the shard was suspended with
# Kafka's error, or a success moved the offset past records not sent.
my $slow_fn = start_receiver(args => [ '--delay-ms', 3000 ]);
my $since = $node->safe_psql('postgres', 'SELECT now()');
$node->safe_psql('postgres', qq{
	SELECT event_bridge.create_connector('sw', 'orders', 'kafka://$boot/orders', target => 'kafka',
	    batch_size => 50, timeout => '30 s', retry_interval => '200 ms', start_time => now());});
# Its producer connected and found the topic; then the brokers slow down
# and refuse the next batches.
$node->safe_psql('postgres', "INSERT INTO orders VALUES (9000, 'first')");
ok(wait_delivered($node, 'postgres', 'sw'), 'the connector delivers to Kafka');
kafka_command($k, "rtt $_ 2500") for 1 .. 3;
kafka_command($k, 'errors 0 8 29');    # TOPIC_AUTHORIZATION_FAILED
$node->safe_psql('postgres',
	"INSERT INTO orders SELECT g, 'switch' || g FROM generate_series(9001, 9040) g");
usleep(500_000);    # batches are in flight for 2.5 s
$node->safe_psql('postgres', qq{
	SELECT event_bridge.alter_connector('sw', target => 'http',
	    endpoint => 'http://127.0.0.1:$slow_fn->{port}/sw')});
usleep(500_000);    # the worker reloads the connector
$node->safe_psql('postgres', "SELECT event_bridge.reset_connector('sw', '$since')");
sleep 4;            # the Kafka reports come while the HTTP batches are in flight
ok(wait_delivered($node, 'postgres', 'sw'), 'after the switch and the reset, everything is delivered');
is($node->safe_psql('postgres', q{
	SELECT string_agg(DISTINCT state || ' ' || coalesce(last_error, ''), '; ')
	  FROM event_bridge.shard_status WHERE connector_name = 'sw'}),
	'RUNNING ', 'no shard took the Kafka batch\'s failure for its HTTP batch');
kafka_command($k, "rtt $_ 0") for 1 .. 3;
kafka_command($k, 'errors 0 0 0');    # the refusals left, cleared
my %got;
for my $e (@{ receiver_log($slow_fn) })
{
	next unless ($e->{status} // 0) == 200;
	$got{$_} = 1 for @{ $e->{event_ids} };
}
my @want = split /\n/, $node->safe_psql('postgres', q{
	SELECT shard_id || ':' || sequence FROM event_bridge.records r
	  JOIN event_bridge.streams s USING (stream_id)
	 WHERE s.stream_name = 'orders' AND r.data LIKE '%switch%' ORDER BY 1});
is(scalar(@want), 40, 'the 40 rows are 40 records');
is(join(',', grep { !$got{$_} } @want), '', 'the HTTP endpoint got every one of them');
is($node->safe_psql('postgres', q{SELECT count(*) FROM pg_stat_activity
	WHERE backend_type = 'event_bridge delivery'}), '1', 'the delivery worker runs');
unlike(slurp_file($node->logfile), qr/terminated by signal/, 'no process of the server crashed');

# Settings changed while batches are in flight (alter_connector's timeout
# here; a rotated credential alike): those batches finish on the producer
# they were sent with, and new ones go to a new producer.  (The old
# producer was closed at once, failing every shard's batch in flight.)
$node->safe_psql('postgres', qq{
	SELECT event_bridge.stop_connector('sw');
	SELECT event_bridge.create_connector('rot', 'orders', 'kafka://$boot/orders', target => 'kafka',
	    batch_size => 5, timeout => '30 s', retry_interval => '200 ms', start_time => now());});
$node->safe_psql('postgres',
	"INSERT INTO orders SELECT g, 'rot' || g FROM generate_series(9100, 9160) g");
ok(wait_delivered($node, 'postgres', 'rot'), 'the connector delivers to Kafka');
# The rows of shard 0 change, with slow brokers: shard 0's batches are in
# flight; then the settings change, and shard 1's rows: shard 1 sends
# while shard 0's batch is in flight on the old producer.
my %rows_of;
for my $shard (0, 1)
{
	$rows_of{$shard} = $node->safe_psql('postgres', qq{
		SELECT string_agg(DISTINCT partition_key, ',') FROM event_bridge.records r
		  JOIN event_bridge.streams s USING (stream_id)
		 WHERE s.stream_name = 'orders' AND r.shard_id = $shard
		   AND partition_key ~ '^9[0-9]{3}\$' AND partition_key::int BETWEEN 9100 AND 9160});
}
ok($rows_of{0} ne '' && $rows_of{1} ne '', 'rows of shards 0 and 1') or diag(explain \%rows_of);
kafka_command($k, "rtt $_ 1500") for 1 .. 3;
$node->safe_psql('postgres', "UPDATE orders SET v = v || '!' WHERE id IN ($rows_of{0})");
usleep(300_000);
$node->safe_psql('postgres', q{SELECT event_bridge.alter_connector('rot', timeout => '20 s')});
usleep(300_000);
$node->safe_psql('postgres', "UPDATE orders SET v = v || '!' WHERE id IN ($rows_of{1})");
ok(wait_delivered($node, 'postgres', 'rot'), 'after the change, everything is delivered');
kafka_command($k, "rtt $_ 0") for 1 .. 3;
is($node->safe_psql('postgres', q{
	SELECT string_agg(DISTINCT coalesce(last_error, 'none'), '; ')
	  FROM event_bridge.shard_status WHERE connector_name = 'rot'}),
	'none', 'no batch failed for the change');

${ $k->{in} } .= "quit\n";
$k->{handle}->finish;
done_testing();
