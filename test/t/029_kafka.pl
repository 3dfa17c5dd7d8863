# The Kafka target: every record reaches the topic as one message, with the
# row's key and event_bridge's headers, read back by kafkajs (which shares no
# code with librdkafka); per key, in order.  Request errors the brokers
# answer are retried, a topic that does not exist suspends the connector,
# and bad Kafka endpoints are refused at creation.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use JSON::PP;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use EventBridgeTest;
use ConnectorTest;

my $node = eb_node('kafka');
my $k = start_kafka_mock(topic => 'orders,events', brokers => 3, partitions => 4);
my $boot = $k->{bootstrap};
note("mock cluster: $boot");

$node->safe_psql('postgres', qq{
	CREATE EXTENSION event_bridge;
	CREATE TABLE orders (id int PRIMARY KEY, status text, amount int);
	ALTER TABLE orders REPLICA IDENTITY FULL;
	SELECT event_bridge.create_stream('orders', ARRAY['orders']::regclass[], shard_count => 4);
	SELECT event_bridge.create_connector('to_kafka', 'orders', 'kafka://$boot/orders',
	    target => 'kafka', batch_size => 50);});

# The brokers refuse the first Produce requests (NOT_ENOUGH_REPLICAS):
# librdkafka retries them, in order, without duplicates.
like(kafka_command($k, 'errors 0 5 19'), qr/^ok/, 'the brokers will refuse 5 Produce requests');

$node->safe_psql('postgres', q{
	INSERT INTO orders SELECT g, 'new', g FROM generate_series(1, 300) g;});
$node->safe_psql('postgres', q{UPDATE orders SET status = 'paid', amount = amount + 1 WHERE id % 3 = 0});
$node->safe_psql('postgres', q{DELETE FROM orders WHERE id % 10 = 0});
ok(wait_capture($node, 'postgres'), 'every change is captured');
my $records = $node->safe_psql('postgres', 'SELECT count(*) FROM event_bridge.records');
ok(wait_delivered($node, 'postgres', 'to_kafka'), "the connector delivered the $records records");

my $messages = kafka_consume($k, 'orders', $records);
ok($messages, 'kafkajs reads every message back') or BAIL_OUT('no messages');
my %seen;
my ($bad_header, $bad_value, $bad_key, $out_of_order) = (0, 0, 0, 0);
my %last_seq;    # per key and partition: the last sequence
for my $m (@$messages)
{
	my $h = $m->{headers};
	$seen{ $h->{event_id} }++;
	$bad_header++
	  unless $h->{stream} eq 'orders' && $h->{event_id} eq "$h->{shard}:$h->{sequence}"
	  && $h->{op} =~ /^(INSERT|UPDATE|DELETE)$/ && $h->{table} eq 'public.orders';
	my $v = decode_json($m->{value});
	my $data = decode_json($v->{data});
	$bad_value++ unless $v->{eventId} eq $h->{event_id} && $data->[8] eq $m->{key};
	$bad_key++ unless defined $m->{key} && $m->{key} =~ /^\d+$/;
	my $k2 = "$m->{partition}/$m->{key}";
	$out_of_order++ if defined $last_seq{$k2} && $h->{sequence} <= $last_seq{$k2};
	$last_seq{$k2} = $h->{sequence};
}
is(scalar(keys %seen), $records, 'every record is a message');
is(scalar(grep { $_ > 1 } values %seen), 0, 'no record twice (the idempotent producer retried)');
is($bad_header, 0, 'every message has the headers event_id, stream, shard, sequence, op and table');
is($bad_value, 0, 'every value is the DataHub record of its event id');
is($bad_key, 0, "every key is the row's key");
is($out_of_order, 0, 'per key, messages arrive in sequence order');
my %partitions_of_key;
$partitions_of_key{ $_->{key} }{ $_->{partition} } = 1 for @$messages;
is(scalar(grep { keys %$_ > 1 } values %partitions_of_key), 0, 'each key is in one partition');
is($node->safe_psql('postgres',
	q{SELECT delivered || ' ' || failures FROM event_bridge.connector_status WHERE connector_name = 'to_kafka'}),
	"$records 0", 'the status says every record delivered, no failures');

# A topic that does not exist: the endpoint is wrong, the connector is
# suspended.  (The mock cluster makes any topic it is asked about; this one
# it says it does not know.)
like(kafka_command($k, 'topic-error nope 3'), qr/^ok/, 'the cluster says topic nope does not exist');
$node->safe_psql('postgres', qq{
	SELECT event_bridge.create_connector('no_topic', 'orders', 'kafka://$boot/nope',
	    target => 'kafka', start_time => NULL);});
ok($node->poll_query_until('postgres', q{
	SELECT state = 'SUSPENDED' FROM event_bridge.connector_status WHERE connector_name = 'no_topic'}),
	'a connector to a topic that does not exist is suspended');
like($node->safe_psql('postgres',
	q{SELECT last_error FROM event_bridge.connector_status WHERE connector_name = 'no_topic'}),
	qr/topic "nope" does not exist/, 'and says why');

# json events with a key transform.
$node->safe_psql('postgres', qq{
	SELECT event_bridge.create_connector('kafka_json', 'orders', 'kafka://$boot/orders',
	    target => 'kafka', format => 'json', start_time => NULL,
	    filter => '{"op": [{"op": "StringIn", "values": ["UPDATE"]}]}',
	    key_transform => '{"type": "VARIABLE", "value": "{\\"k\\": \\"\$.after.status\\"}", "template": "\${k}"}');});
ok(wait_delivered($node, 'postgres', 'kafka_json'), 'the json connector delivered');
$messages = kafka_consume($k, 'orders', $records + 100);
my @json = grep { $_->{value} =~ /^\{"eventId"/ && $_->{value} =~ /"sequence"/ } @$messages;
is(scalar(@json), 100, 'json: one message per UPDATE (its two records)');
is(scalar(grep { $_->{key} eq 'paid' && decode_json($_->{value})->{after}{status} eq 'paid' } @json), 100,
	'json: the key is what key_transform makes of the event');

# The invariant checker reads a topic: json events, a filter that leaves the
# DELETEs out, each UPDATE one message for its two records.
$node->safe_psql('postgres', qq{
	SELECT event_bridge.create_connector('k_events', 'orders', 'kafka://$boot/events',
	    target => 'kafka', format => 'json', start_time => NULL, batch_size => 30,
	    filter => '{"op": [{"op": "StringNotIn", "values": ["DELETE"]}]}');});
ok(wait_delivered($node, 'postgres', 'k_events'), 'the json connector to topic events delivered');
my $events = kafka_consume($k, 'events', 1, 3000);
my $events_log = "$PostgreSQL::Test::Utils::tmp_check/events.jsonl";
open my $efh, '>', $events_log or die $!;
print $efh map { encode_json($_) . "\n" } @$events;
close $efh;
is(scalar(@$events), 300 + 100, 'one message per INSERT and per UPDATE, none per DELETE');
checker_ok($node, 'postgres', $events_log, [ '--kafka', '--connector', 'k_events' ],
	'the invariant checker finds nothing wrong with topic events');

# A kafka credential: its SASL settings reach librdkafka (the mock cluster
# speaks no SASL, so the handshake fails and says so), its password goes
# nowhere else.
# (The tests log every statement; a server at default settings logs none.)
$node->safe_psql('postgres', qq{
	SET log_statement = none;
	SELECT event_bridge.create_credential('k_sasl', 'kafka',
	    '{"security_protocol": "sasl_plaintext", "sasl_mechanism": "SCRAM-SHA-256",
	      "username": "eb", "password": "hunter2-kafka"}');
	SELECT event_bridge.create_connector('kafka_sasl', 'orders', 'kafka://$boot/orders',
	    target => 'kafka', credential => 'k_sasl', timeout => '1 second', start_time => NULL);});
ok($node->poll_query_until('postgres', q{
	SELECT bool_or(last_error LIKE 'Kafka: %') FROM event_bridge.shard_status WHERE connector_name = 'kafka_sasl'}),
	'a SASL connector to brokers without SASL fails, with librdkafka\'s error');
my $log_text = slurp_file($node->logfile);
like($log_text, qr/event_bridge kafka: .*SASL/, 'librdkafka says in the server log that SASL failed');
unlike($log_text, qr/hunter2-kafka/, 'the password is in no log line');
$node->safe_psql('postgres', q{SELECT event_bridge.drop_connector('kafka_sasl')});

# A CA that librdkafka cannot read: no producer can be made, and the
# connector is suspended with librdkafka's reason (the worker goes on).
$node->safe_psql('postgres', qq{
	SELECT event_bridge.create_credential('k_badca', 'kafka',
	    '{"security_protocol": "ssl", "ca_pem": "-----BEGIN CERTIFICATE-----\\\\nnot a certificate\\\\n-----END CERTIFICATE-----\\\\n"}');
	SELECT event_bridge.create_connector('kafka_badca', 'orders', 'kafka://$boot/orders',
	    target => 'kafka', credential => 'k_badca', start_time => NULL);});
ok($node->poll_query_until('postgres', q{
	SELECT state = 'SUSPENDED' AND last_error LIKE 'Kafka: librdkafka refused the settings: %'
	  FROM event_bridge.connector_status WHERE connector_name = 'kafka_badca'}),
	'a CA librdkafka cannot read suspends the connector, saying why');
$node->safe_psql('postgres', q{SELECT event_bridge.drop_connector('kafka_badca')});

# Failure classes (DESIGN 9.3), with errors the brokers answer to Produce:
# a message too large is a record failure (dead letters), a refused
# authorization an endpoint failure (the connector is suspended).
# (The brokers answer the next Produce request, whoever sends it: the other
# connectors stop.)
$node->safe_psql('postgres', qq{
	SELECT event_bridge.stop_connector(c) FROM unnest(ARRAY['to_kafka', 'kafka_json', 'no_topic', 'k_events']) c;
	SELECT event_bridge.create_connector('k_classes', 'orders', 'kafka://$boot/orders',
	    target => 'kafka', on_failure => 'dead_letter', batch_size => 1,
	    retry_interval => '100 ms');
	SELECT event_bridge.stop_connector('k_classes');});
like(kafka_command($k, 'errors 0 1 10'), qr/^ok/, 'the next Produce request: MSG_SIZE_TOO_LARGE');
$node->safe_psql('postgres', q{
	SELECT event_bridge.start_connector('k_classes');
	INSERT INTO orders VALUES (100001, 'big', 1);});
ok($node->poll_query_until('postgres', q{
	SELECT count(*) = 1 FROM event_bridge.dead_letters WHERE connector_name = 'k_classes'
	   AND error LIKE 'Kafka: %MSG_SIZE_TOO_LARGE%'}),
	'a message the brokers find too large becomes a dead letter, with librdkafka\'s error');
ok(wait_delivered($node, 'postgres', 'k_classes'), 'and the rest is delivered');
like(kafka_command($k, 'errors 0 1 29'), qr/^ok/, 'the next Produce request: TOPIC_AUTHORIZATION_FAILED');
$node->safe_psql('postgres', q{INSERT INTO orders VALUES (100002, 'denied', 1)});
ok($node->poll_query_until('postgres', q{
	SELECT state = 'SUSPENDED' AND last_error LIKE 'Kafka: %AUTHORIZATION%'
	  FROM event_bridge.connector_status WHERE connector_name = 'k_classes'}),
	'a refused authorization suspends the connector, saying why');
$node->safe_psql('postgres', q{SELECT event_bridge.resume_connector('k_classes')});
ok(wait_delivered($node, 'postgres', 'k_classes'), 'resumed, it delivers');

# A key_transform that names the whole event 400 times, on a 3 MB row:
# rendering stops past librdkafka's largest message instead of growing
# past 1 GB (which once stopped the connector with an ERROR), and the
# message is refused as too large: a dead letter.
my $big_key = encode_json({ type => 'VARIABLE', value => '{"e": "$"}',
							template => '"' . ('${e}' x 400) . '"' });
$node->safe_psql('postgres', qq{
	SELECT event_bridge.stop_connector('k_classes');
	SELECT event_bridge.create_connector('k_bigkey', 'orders', 'kafka://$boot/orders',
	    target => 'kafka', format => 'json', on_failure => 'dead_letter', batch_size => 1,
	    key_transform => '$big_key');});
$node->safe_psql('postgres', q{
	INSERT INTO orders VALUES (100003, repeat('x', 3000000), 1);
	INSERT INTO orders VALUES (100004, 'small', 1);});
ok($node->poll_query_until('postgres', q{
	SELECT count(*) = 1 FROM event_bridge.dead_letters WHERE connector_name = 'k_bigkey'
	   AND error LIKE 'Kafka: %' AND data::text LIKE '%100003%'}),
	'a message whose key would be gigabytes becomes a dead letter') or diag($node->safe_psql('postgres',
	q{SELECT state, last_error FROM event_bridge.connector_status WHERE connector_name = 'k_bigkey'}));
is($node->safe_psql('postgres', q{
	SELECT state || ' ' || dead_letters FROM event_bridge.connector_status WHERE connector_name = 'k_bigkey'}),
	'RUNNING 1', 'the connector runs on, with that one dead letter');
ok(wait_delivered($node, 'postgres', 'k_bigkey'), 'and delivers the next row');
$node->safe_psql('postgres', q{SELECT event_bridge.drop_connector('k_bigkey')});

# Bad Kafka endpoints are refused at creation.
for my $case (
	[ 'no topic', "kafka://$boot" ],
	[ 'an empty topic', "kafka://$boot/" ],
	[ 'a bad topic', "kafka://$boot/a b" ],
	[ 'no port', 'kafka://127.0.0.1/t' ],
	[ 'a bad port', 'kafka://127.0.0.1:99999/t' ],
	[ 'an empty broker', 'kafka://127.0.0.1:9092,,127.0.0.1:9093/t' ],
	[ '33 brokers', 'kafka://' . join(',', map { "127.0.0.1:$_" } 9001 .. 9033) . '/t' ],
	[ 'not kafka://', "http://$boot/orders" ])
{
	my ($what, $endpoint) = @$case;
	my ($rc, $out, $err) = $node->psql('postgres', qq{
		SELECT event_bridge.create_connector('bad', 'orders', '$endpoint', target => 'kafka')});
	like($err, qr/ERROR:  invalid kafka target\nDETAIL:  .*(Kafka endpoint|port|topic|brokers)/, "$what: refused");
}
my ($rc, $out, $err) = $node->psql('postgres', qq{
	SELECT event_bridge.create_connector('bad', 'orders', 'http://127.0.0.1:9/',
	    key_transform => '{"type": "CONSTANT", "value": "k"}')});
like($err, qr/key_transform is for target kafka/, 'key_transform: for target kafka only');

${ $k->{in} } .= "quit\n";
$k->{handle}->finish;
done_testing();
