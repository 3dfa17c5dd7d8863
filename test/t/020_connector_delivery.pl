# Connectors deliver every record to a local endpoint: in order per shard
# across 4 shards and many keys, in byte-exact DataHub and DIS bodies, with
# status views that agree with what the endpoint counted.
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

my $node = eb_node('connector_delivery', "event_bridge.region = 'cn-test-1'\n");
my $r = start_receiver();
my $url = "http://127.0.0.1:$r->{port}";

$node->safe_psql('postgres', qq{
	CREATE EXTENSION event_bridge;
	CREATE TABLE orders (id int PRIMARY KEY, customer text, amount numeric);
	ALTER TABLE orders REPLICA IDENTITY FULL;
	SELECT event_bridge.create_stream('orders', ARRAY['orders']::regclass[], shard_count => 4);
	SELECT event_bridge.create_connector('orders_fc', 'orders', '$url/fc', batch_size => 50,
	    headers => '{"X-Auth-Token": "s3cret"}');
	SELECT event_bridge.create_connector('orders_dis', 'orders', '$url/dis', format => 'dis',
	    batch_size => 7);});

# Many keys, each changed several times, in many transactions: inserts,
# three rounds of updates, deletes; text that needs escaping; big values.
$node->safe_psql('postgres', q{
	INSERT INTO orders SELECT g, 'customer "' || g || E'"\\\\ caf\u00e9\t', g
	  FROM generate_series(1, 400) g;});
for my $round (1 .. 3)
{
	$node->safe_psql('postgres',
		"UPDATE orders SET amount = amount + $round WHERE id % 3 <> $round % 3");
	$node->safe_psql('postgres',
		"INSERT INTO orders SELECT g, 'late', 0 FROM generate_series(1000 * $round, 1000 * $round + 49) g");
}
$node->safe_psql('postgres', 'DELETE FROM orders WHERE id % 10 = 0');
# Records too big to stay in the records table's row (stored out of line),
# with quotes to escape; over 64 kB, which the DataHub body escapes in two
# passes instead of one.
$node->safe_psql('postgres', q{
	INSERT INTO orders SELECT 5000 + g,
	       (SELECT string_agg(md5(g::text || i::text) || '"', '') FROM generate_series(1, 2100) i), g
	  FROM generate_series(1, 3) g;});
ok(wait_capture($node, 'postgres'), 'every change is captured');
is($node->safe_psql('postgres', q{
	SELECT count(*) FROM event_bridge.records WHERE length(data) > 64000
	   AND pg_column_size(data) > 8000}), '3', 'three records are stored out of line');

my %next = map { split /\|/ } split /\n/, $node->safe_psql('postgres',
	'SELECT shard_id, next_sequence FROM event_bridge.shards ORDER BY 1');
my $total = 0;
$total += $_ for values %next;
cmp_ok(scalar(grep { $next{$_} > 0 } keys %next), '==', 4, "all 4 shards have records ($total in all)");

ok(wait_delivered($node, 'postgres', 'orders_fc'), 'datahub connector: nothing pending');
ok(wait_delivered($node, 'postgres', 'orders_dis'), 'dis connector: nothing pending');
my $log = wait_for_log($r, sub {
	scalar(@{ acked_ids($_[0], '/fc') }) >= $total && scalar(@{ acked_ids($_[0], '/dis') }) >= $total });
ok($log, 'the endpoint has every record twice, once per connector');

# Order: per shard, each sequence once, in order, for both connectors.
check_shard_order(acked_ids($log, '/fc'), \%next, 'datahub');
check_shard_order(acked_ids($log, '/dis'), \%next, 'dis');

# One batch in flight per shard: each request starts where the previous
# answer of the same shard ended.
for my $path ('/fc', '/dis')
{
	my %after;
	my $bad = 0;
	for my $e (grep { $_->{path} eq $path } @$log)
	{
		my ($first) = $e->{event_ids}[0] =~ /:(\d+)$/;
		$bad++ if $first != ($after{ $e->{shard} } // 0);
		($after{ $e->{shard} }) = $e->{event_ids}[-1] =~ /:(\d+)$/;
		$after{ $e->{shard} }++;
	}
	is($bad, 0, "$path: every batch follows the previous one of its shard");
}
cmp_ok(scalar(grep { $_->{path} eq '/fc' && @{ $_->{event_ids} } > 50 } @$log), '==', 0,
	'datahub batches hold at most batch_size records');

# Per key, changes arrive in commit order (record ids grow), and the data
# the endpoint decoded is the stored record, for both formats.
my %stored = map { my ($id, $data) = split /\t/; ($id => $data) } split /\n/,
  $node->safe_psql('postgres', q{
	SELECT shard_id || ':' || sequence, data FROM event_bridge.records}, extra_params => ['-A', '-F', "\t"]);
my $json = JSON::PP->new->canonical;
for my $path ('/fc', '/dis')
{
	my (%last_record_id, $unordered, $different);
	$unordered = $different = 0;
	for my $e (grep { $_->{path} eq $path && ($_->{status} // 0) == 200 } @$log)
	{
		for my $rec (@{ $e->{records} })
		{
			my $data = $rec->{data};
			$different++ if $json->encode($data) ne $json->encode(decode_json($stored{ $rec->{event_id} }));
			my $key = $data->[8];
			$unordered++ if ($last_record_id{$key} // 0) > $data->[0];
			$last_record_id{$key} = $data->[0];
		}
	}
	is($unordered, 0, "$path: every key's changes arrive in commit order");
	is($different, 0, "$path: every record's data arrives as stored");
}

# DataHub bodies, byte for byte: rebuilt in SQL from the stored records and
# compared with the SHA-256 the endpoint logged for each request.
sub batches_sql
{
	my ($path) = @_;
	return join(",\n", map {
		my ($f) = $_->{event_ids}[0] =~ /:(\d+)$/;
		my ($l) = $_->{event_ids}[-1] =~ /:(\d+)$/;
		sprintf("(%d, %d, %d, '%s', %d)", $_->{shard}, $f, $l, $_->{body_sha256}, int($_->{t_ms}))
	} grep { $_->{path} eq $path } @$log);
}
my $datahub_mismatches = $node->safe_psql('postgres', qq{
	WITH b (shard, first_seq, last_seq, sha, t_ms) AS (VALUES @{[batches_sql('/fc')]})
	SELECT count(*) FROM b
	 WHERE b.sha <> (SELECT encode(sha256(convert_to(
	           '{"eventSource":"acs:datahub","eventName":"acs:datahub:putRecord","eventSourceARN":'
	           || to_json('/projects/' || current_database() || '/topics/orders')::text
	           || ',"region":' || to_json(current_setting('event_bridge.region'))::text
	           || ',"records":['
	           || string_agg('{"eventId":"' || r.shard_id || ':' || r.sequence || '","systemTime":'
	                         || r.system_time || ',"data":' || to_json(r.data)::text || '}',
	                         ',' ORDER BY r.sequence)
	           || ']}', 'UTF8')), 'hex')
	         FROM event_bridge.records r
	        WHERE r.shard_id = b.shard AND r.sequence BETWEEN b.first_seq AND b.last_seq)});
is($datahub_mismatches, '0', 'every DataHub body is byte-exact');

# DIS bodies, byte for byte: the same, trying every millis_behind_latest
# from 0 to the receipt time minus the last record's system_time.
my $dis_mismatches = $node->safe_psql('postgres', qq{
	WITH b (shard, first_seq, last_seq, sha, t_ms) AS (VALUES @{[batches_sql('/dis')]}),
	parts AS (
	    SELECT b.*, x.head, x.cursor, x.records, x.tail, x.last_time
	      FROM b, LATERAL (
	        SELECT '{"ShardID":"shardId-' || lpad(b.shard::text, 10, '0')
	               || '","Message":{"next_partition_cursor":"' AS head,
	               '{"getIteratorParam":{"stream-name":"orders","partition-id":"shardId-'
	               || lpad(b.shard::text, 10, '0')
	               || '","cursor-type":"AT_SEQUENCE_NUMBER","starting-sequence-number":"'
	               || (b.last_seq + 1) || '"},"generateTimestamp":' AS cursor,
	               '","records":['
	               || string_agg('{"partition_key":' || to_json(coalesce(r.partition_key, ''))::text
	                             || ',"data":"'
	                             || translate(encode(convert_to(r.data, 'UTF8'), 'base64'), E'\\n', '')
	                             || '","sequence_number":"' || r.sequence || '"}',
	                             ',' ORDER BY r.sequence)
	               || '],"millis_behind_latest":"' AS records,
	               '"},"Tag":"latest","StreamName":"orders"}' AS tail,
	               max(r.system_time) AS last_time
	          FROM event_bridge.records r
	         WHERE r.shard_id = b.shard AND r.sequence BETWEEN b.first_seq AND b.last_seq) x)
	SELECT count(*) FROM parts p
	 WHERE NOT EXISTS (
	       SELECT FROM generate_series(0, greatest(p.t_ms - p.last_time + 1, 0)) m
	        WHERE encode(sha256(convert_to(p.head
	              -- the cursor, made when the body was: its generateTimestamp is the send time
	              || rtrim(translate(encode(convert_to(p.cursor || (p.last_time + m) || '}', 'UTF8'),
	                                        'base64'), E'\\n', ''), '=')
	              || p.records || m || p.tail, 'UTF8')), 'hex') = p.sha)});
is($dis_mismatches, '0', 'every DIS body is byte-exact');

# The status views agree with what the endpoint counted.
for my $c (['orders_fc', '/fc'], ['orders_dis', '/dis'])
{
	my ($name, $path) = @$c;
	my @requests = grep { $_->{path} eq $path } @$log;
	my $acked = acked_ids($log, $path);
	my $by_shard = acked_by_shard($acked);
	is($node->safe_psql('postgres', qq{
		SELECT state, delivered, pending, failures, last_http_status, attempts, last_error IS NULL
		  FROM event_bridge.connector_status WHERE connector_name = '$name'}),
		sprintf('RUNNING|%d|0|0|200|%d|t', scalar(@$acked), scalar(@requests)),
		"$name: connector_status counts what the endpoint got");
	is($node->safe_psql('postgres', qq{
		SELECT string_agg(shard_id || '=' || delivered || '/' || delivered_sequence, ' ' ORDER BY shard_id)
		  FROM event_bridge.shard_status WHERE connector_name = '$name'}),
		join(' ', map { "$_=" . scalar(@{ $by_shard->{$_} }) . '/' . ($next{$_} - 1) } sort keys %next),
		"$name: shard_status per shard agrees");
	is($node->safe_psql('postgres', qq{
		SELECT string_agg(shard_id || '=' || last_event_id, ' ' ORDER BY shard_id)
		  FROM event_bridge.shard_status WHERE connector_name = '$name'}),
		join(' ', map { "$_=$_:" . $by_shard->{$_}[-1] } sort keys %next),
		"$name: each shard's last_event_id is the last one the endpoint acknowledged");
	is($node->safe_psql('postgres', qq{
		SELECT c.last_event_id = (SELECT s.last_event_id FROM event_bridge.shard_status s
		                           WHERE s.connector_name = c.connector_name
		                           ORDER BY s.last_success_at DESC LIMIT 1)
		  FROM event_bridge.connector_status c WHERE c.connector_name = '$name'}),
		't', "$name: connector_status shows the newest shard's last_event_id");
}
is($node->safe_psql('postgres', q{
	SELECT header_names FROM event_bridge.connector_status WHERE connector_name = 'orders_fc'}),
	'{X-Auth-Token}', 'the status shows header names only');

# The attempts log is bounded per shard and numbered like the attempts.
is($node->safe_psql('postgres', q{
	SELECT bool_and(n <= 100 AND max_attempt = attempts)
	  FROM (SELECT cs.attempts, count(a.*) n, max(a.attempt) max_attempt
	          FROM event_bridge.connector_shards cs
	          JOIN event_bridge.connector_attempts a USING (connector_id, shard_id)
	         GROUP BY cs.connector_id, cs.shard_id, cs.attempts) x}),
	't', 'the attempts log keeps at most 100 attempts per shard, the newest');

# New records are on their way within milliseconds, not a polling period:
# from commit (field 5 of the record) to receipt.
my $before = scalar(@$log);
$node->safe_psql('postgres', "INSERT INTO orders VALUES (99999, 'quick', 1)");
my $quick = wait_for_log($r, sub { scalar(@{ $_[0] }) >= $before + 2 });
my ($fc) = grep { $_->{path} eq '/fc' } @{$quick}[$before .. $#$quick];
my $latency = $fc->{t_ms} - $fc->{records}[0]{data}[5];
cmp_ok($latency, '<', 500, sprintf('a new record reaches the endpoint %.0f ms after its commit', $latency));

stop_receiver($r);
$node->stop;
done_testing();
