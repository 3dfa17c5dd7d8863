# Retention: records older than the stream's retention that every connector
# has delivered are removed in the background; sequences keep counting.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use EventBridgeTest;
use ConnectorTest;

my $node = eb_node('retention', "event_bridge.cleanup_interval = '200ms'\n");
$node->safe_psql('postgres', q{
	CREATE EXTENSION event_bridge;
	CREATE TABLE t (id int PRIMARY KEY);
	ALTER TABLE t REPLICA IDENTITY FULL;
	SELECT event_bridge.create_stream('short', ARRAY['t']::regclass[], shard_count => 2, retention => '2 seconds');
	SELECT event_bridge.create_stream('long', ARRAY['t']::regclass[], shard_count => 2);
	INSERT INTO t SELECT generate_series(1, 12000);});
ok(wait_capture($node, 'postgres'), 'captured');
is($node->safe_psql('postgres', "SELECT records FROM event_bridge.stream_status WHERE stream_name = 'short'"),
	'12000', 'records stored first');

ok($node->poll_query_until('postgres',
	"SELECT records = 0 FROM event_bridge.stream_status WHERE stream_name = 'short'"),
	'records past retention are removed');
is($node->safe_psql('postgres', "SELECT records FROM event_bridge.stream_status WHERE stream_name = 'long'"),
	'12000', 'a stream with a longer retention keeps its records');

# Sequences keep counting after cleanup.
my $next = $node->safe_psql('postgres', q{
	SELECT string_agg(next_sequence::text, ',' ORDER BY shard_id)
	  FROM event_bridge.shards JOIN event_bridge.streams USING (stream_id) WHERE stream_name = 'short'});
$node->safe_psql('postgres', 'INSERT INTO t VALUES (100000)');
ok(wait_capture($node, 'postgres'), 'captured again');
my ($shard, $seq) = split /\|/, $node->safe_psql('postgres', q{
	SELECT r.shard_id, r.sequence FROM event_bridge.records r
	  JOIN event_bridge.streams s USING (stream_id)
	 WHERE s.stream_name = 'short' AND (r.data::jsonb->>8) = '100000'});
is($seq, (split /,/, $next)[$shard], 'the next record continues the sequence of its shard');

# Records a connector has not delivered stay, however old.
$node->safe_psql('postgres', q{
	SELECT event_bridge.create_connector('c', 'short', 'http://127.0.0.1:9/', start_time => NULL);
	SELECT event_bridge.stop_connector('c');
	INSERT INTO t SELECT generate_series(200000, 200099);});
ok(wait_capture($node, 'postgres'), 'captured with a stopped connector');
sleep(3);    # longer than the retention, many cleanup passes
is($node->safe_psql('postgres', "SELECT records FROM event_bridge.stream_status WHERE stream_name = 'short'"),
	'101', 'undelivered records are kept past retention');

# A failing maintenance step (retention runs in the delivery worker) is
# logged, and stops neither capture nor delivery.
my $r = start_receiver();
$node->safe_psql('postgres', qq{
	SELECT event_bridge.create_connector('live', 'long', 'http://127.0.0.1:$r->{port}/');});
$node->append_conf('postgresql.conf', "event_bridge.fault_point = 'maintenance-error'\n");
$node->reload;
ok(eval { $node->wait_for_log(qr/fault point "maintenance-error" raised an error/); 1 },
	'the maintenance step fails');
$node->safe_psql('postgres', 'INSERT INTO t SELECT generate_series(300000, 300099)');
ok(wait_capture($node, 'postgres'), 'capture goes on while maintenance fails');
ok(wait_delivered($node, 'postgres', 'live'), 'and so does delivery');
my $pid = worker_pid($node, 'postgres', 'delivery');
$node->safe_psql('postgres', 'INSERT INTO t VALUES (400000)');
ok(wait_capture($node, 'postgres') && wait_delivered($node, 'postgres', 'live'),
	'again, after more failed passes');
is(worker_pid($node, 'postgres', 'delivery'), $pid, 'the delivery worker did not restart');
stop_receiver($r);

$node->stop;
done_testing();
