# Named events delivered: json and cloudevents bodies (read back by the
# official CloudEvents SDK), connector filters that move the offset past what
# they leave out and count it, transforms, DDL mid-stream, and the invariant
# checker over all of it.
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

my $node = eb_node('named_events');
my $r = start_receiver(args => ['--keep-body']);
my $url = "http://127.0.0.1:$r->{port}";
my $ce = start_cloudevents_endpoint();
my $ce_url = "http://127.0.0.1:$ce->{port}/ce";

$node->safe_psql('postgres', qq{
	CREATE EXTENSION event_bridge;
	CREATE TABLE orders (id bigint PRIMARY KEY, status text, amount numeric(10,2), note text);
	ALTER TABLE orders REPLICA IDENTITY FULL;
	SELECT event_bridge.create_stream('orders', ARRAY['orders']::regclass[], shard_count => 4);
	SELECT event_bridge.create_connector('c_json', 'orders', '$url/json', format => 'json',
	    batch_size => 9);
	SELECT event_bridge.create_connector('c_paid', 'orders', '$url/paid', format => 'json',
	    batch_size => 9,
	    filter => '{"after": {"status": [{"op": "StringIn", "values": ["paid"]}]}}');
	SELECT event_bridge.create_connector('c_updates', 'orders', '$url/updates', batch_size => 7,
	    filter => '{"op": [{"op": "StringIn", "values": ["UPDATE"]}]}');
	SELECT event_bridge.create_connector('c_ce', 'orders', '$ce_url', format => 'cloudevents',
	    batch_size => 20);
	SELECT event_bridge.create_connector('c_var', 'orders', '$url/var', format => 'json',
	    batch_size => 50, transform => '{"type": "VARIABLE",
	      "value": "{\\"id\\": \\"\$.key.id\\", \\"op\\": \\"\$.op\\", \\"region\\": \\"\$.after.region\\"}",
	      "template": "{\\"order\\": \${id}, \\"change\\": \\"\${op}\\", \\"region\\": \${region}}"}');});

# Inserts, updates that move rows into and out of status 'paid', a column
# added mid-stream, deletes; several transactions.
$node->safe_psql('postgres', q{
	INSERT INTO orders SELECT g, 'new', g, E'caf\u00e9 "' || g || '"' FROM generate_series(1, 300) g;});
$node->safe_psql('postgres', q{UPDATE orders SET status = 'paid' WHERE id % 2 = 0});
$node->safe_psql('postgres', q{UPDATE orders SET status = 'shipped' WHERE id % 6 = 0});
$node->safe_psql('postgres', q{ALTER TABLE orders ADD COLUMN region text});
$node->safe_psql('postgres', q{
	INSERT INTO orders SELECT g, 'paid', g, NULL, 'eu' FROM generate_series(301, 400) g;
	DELETE FROM orders WHERE id % 5 = 0;});
ok(wait_capture($node, 'postgres'), 'every change is captured');

my $records = $node->safe_psql('postgres', 'SELECT count(*) FROM event_bridge.records');
my $changes = 300 + 150 + 50 + 100 + 80;
is($records, 300 + 2 * 150 + 2 * 50 + 100 + 80, "$changes changes are $records records");

for my $c (qw(c_json c_paid c_updates c_ce c_var))
{
	ok(wait_delivered($node, 'postgres', $c), "$c: nothing pending");
}
my $log = wait_for_log($r, sub {
	scalar(@{ acked_ids($_[0], '/json') }) >= $records });
ok($log, 'the json connector delivered every record');

# json: one event per change, an UPDATE with both images; the column added
# mid-stream shows in later events, by name.
my (@events, %ops);
for my $e (grep { $_->{path} eq '/json' && $_->{status} == 200 } @$log)
{
	my %seen;
	for my $rec (@{ $e->{records} })
	{
		my $ev = $rec->{data};
		next if $seen{ $ev->{eventId} }++;
		push @events, $ev;
		$ops{ $ev->{op} }++;
	}
}
is(scalar(@events), $changes, 'json: one event per change');
is_deeply(\%ops, { INSERT => 400, UPDATE => 200, DELETE => 80 }, 'json: the ops of the changes');
is(scalar(grep { $_->{op} eq 'UPDATE' && $_->{before} && $_->{after} && $_->{before}{id} == $_->{after}{id} } @events),
	200, 'json: every UPDATE event has its before and after images');
is(scalar(grep { $_->{after} && $_->{after}{id} > 300 && ($_->{after}{region} // '') eq 'eu' } @events),
	100, 'json: the column added mid-stream is named in later events');
is(scalar(grep { $_->{op} eq 'INSERT' && $_->{after}{id} <= 300 && exists $_->{after}{region} } @events),
	0, 'json: earlier events do not have it');
is(scalar(grep { ref $_->{key} eq 'HASH' && defined $_->{key}{id} && !ref $_->{key}{id} } @events),
	$changes, 'json: every event has its key by name, typed');
checker_ok($node, 'postgres', $r, [ '--connector', 'c_json' ], 'json: the invariant checker finds nothing wrong');

# A filter: only the events it keeps are sent; the rest moves the offset and is counted.
my @paid = map { $_->{data} } grep { 1 } map { @{ $_->{records} } }
  grep { $_->{path} eq '/paid' && $_->{status} == 200 } @$log;
my %paid_ids = map { $_->{eventId} => $_ } @paid;
my $expect_paid = grep { ($_->{after}{status} // '') eq 'paid' } @events;
is(scalar(keys %paid_ids), $expect_paid, "filter: the $expect_paid events with status paid after the change are sent");
is(scalar(grep { $_->{after}{status} ne 'paid' } values %paid_ids), 0, 'filter: no other event is');
my $paid_records = scalar(@paid);
is($node->safe_psql('postgres',
	"SELECT delivered || ' ' || filtered FROM event_bridge.connector_status WHERE connector_name = 'c_paid'"),
	"$paid_records " . ($records - $paid_records), 'filter: delivered and filtered records add up to every record');
checker_ok($node, 'postgres', $r, [ '--connector', 'c_paid' ], 'filter: the invariant checker finds nothing wrong');

# A filter on a datahub connector sends both records of each UPDATE it keeps.
my @updates = @{ acked_ids($log, '/updates') };
is(scalar(@updates), 400, 'datahub with a filter: the 200 UPDATEs, two records each');
is(scalar(grep { $_->{data}[1] ne 'U' } map { @{ $_->{records} } } grep { $_->{path} eq '/updates' } @$log),
	0, 'datahub with a filter: nothing else');
checker_ok($node, 'postgres', $r, [ '--connector', 'c_updates' ], 'datahub with a filter: the checker finds nothing wrong');

# cloudevents: every batch passed the CloudEvents SDK's reading and validation.
my $ce_log = receiver_log($ce);
is(scalar(grep { $_->{status} != 200 } @$ce_log), 0, 'cloudevents: the SDK accepted every batch')
  or diag(join("\n", map { $_->{error} // '' } grep { $_->{status} != 200 } @$ce_log));
is(scalar(@{ acked_ids($ce_log) }), $records, 'cloudevents: every record, in its event');
checker_ok($node, 'postgres', $ce, [ '--connector', 'c_ce' ], 'cloudevents: the checker finds nothing wrong');

# A VARIABLE transform: the body is an array of rendered templates, one per change.
my @var = map { @{ decode_json($_->{body}) } } grep { $_->{path} eq '/var' && $_->{status} == 200 } @$log;
is(scalar(@var), $changes, 'transform: one rendered template per change');
is(scalar(grep { join(',', sort keys %$_) eq 'change,order,region' } @var), $changes,
	'transform: each is the template, filled in');
is(scalar(grep { $_->{change} eq 'INSERT' && ($_->{region} // '') eq 'eu' } @var), 100,
	'transform: a JSONPath into the after image gives the value');
is(scalar(grep { !defined $_->{region} } @var), $changes - 100,
	'transform: a JSONPath to nothing gives null');

done_testing();
