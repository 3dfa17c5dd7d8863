# ALTER EXTENSION event_bridge UPDATE from 0.1 to 0.2 while rows are being
# written: the library waits for the update and says so once in the log,
# the streams, sequences and connectors made under 0.1 carry on, nothing is
# lost, and the upgraded catalog equals a fresh 0.2 install.
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

my $node = eb_node('upgrade');
my $r = start_receiver();
my $url = "http://127.0.0.1:$r->{port}";

# 0.1's SQL under this library: the workers wait for the update.
$node->safe_psql('postgres', q{
	CREATE EXTENSION event_bridge VERSION '0.1';
	CREATE TABLE ins (id bigserial PRIMARY KEY, k int, v int);
	ALTER TABLE ins REPLICA IDENTITY FULL;
	CREATE TABLE hot (k int PRIMARY KEY, v int NOT NULL);
	ALTER TABLE hot REPLICA IDENTITY FULL;
	INSERT INTO hot SELECT g, 0 FROM generate_series(1, 200) g;});
my $hint = 'Run ALTER EXTENSION event_bridge UPDATE; in database "postgres"';
ok(eval { $node->wait_for_log(qr/waits for its SQL to be updated to version 0\.2/); 1 },
	'the log says the SQL waits for an update');

# Streams and connectors made with 0.1's API (headers as jsonb then).
$node->safe_psql('postgres', qq{
	SELECT event_bridge.create_stream('s', ARRAY['ins', 'hot']::regclass[], shard_count => 4);
	SELECT event_bridge.create_connector('c', 's', '$url/fc', batch_size => 7,
	    retry_interval => '2 seconds', max_retries => 40,
	    headers => '{"X-Auth-Token": "t0ken"}'::jsonb);
	INSERT INTO ins (k, v) SELECT g % 200 + 1, g FROM generate_series(1, 300) g;
	UPDATE hot SET v = v + 1 WHERE k <= 100;});
is($node->safe_psql('postgres', "SELECT event_bridge.wait_for_capture('2 seconds')"), 'f',
	'nothing is captured before the update');
is($node->safe_psql('postgres', 'SELECT count(*) FROM event_bridge.records'), '0',
	'no record is appended before the update');

# The update, while the load commits.
load_script();
my $load = load_start($node, 6, 2, 300);
usleep(2_000_000);
$node->safe_psql('postgres', 'ALTER EXTENSION event_bridge UPDATE');
is($node->safe_psql('postgres',
		"SELECT extversion FROM pg_extension WHERE extname = 'event_bridge'"), '0.2',
	'the extension is at 0.2');
$load->finish;

check_exactly_once($node, 'after the update');
ok(wait_delivered($node, 'postgres', 'c'), 'the connector made under 0.1 delivers everything');
my %next = map { split /\|/ } split /\n/, $node->safe_psql('postgres',
	"SELECT h.shard_id, h.next_sequence FROM event_bridge.shards h
	  JOIN event_bridge.streams s USING (stream_id) WHERE s.stream_name = 's' ORDER BY 1");
my $entries = receiver_log($r);
check_shard_order(acked_ids($entries), \%next, 'after the update');
ok(!grep({ scalar(@{ $_->{event_ids} }) > 7 } @$entries), 'batches keep batch_size 7');
is($node->safe_psql('postgres', q{
	SELECT batch_size || ' ' || retry_interval || ' ' || max_retries || ' ' || header_names::text
	  FROM event_bridge.connector_status WHERE connector_name = 'c'}),
	'7 00:00:02 40 {X-Auth-Token}', 'the connector keeps its settings');
my $log = slurp_file($node->logfile);
my $count = () = $log =~ /\Q$hint\E/g;
is($count, 1, 'the update was asked for once');

# The upgraded catalog equals a fresh install, object by object.
$node->safe_psql('postgres', 'CREATE DATABASE fresh');
$node->safe_psql('fresh', 'CREATE EXTENSION event_bridge');
my $upgraded = catalog_description($node, 'postgres');
my $fresh = catalog_description($node, 'fresh');
cmp_ok(scalar(split /\n/, $fresh), '>', 100, 'the catalog description lists the objects');
is($upgraded, $fresh, 'the upgraded catalog equals a fresh 0.2 install');

# And it keeps delivering.
$node->safe_psql('postgres', 'INSERT INTO ins (k, v) SELECT 1, g FROM generate_series(1, 50) g');
ok(wait_capture($node, 'postgres'), 'new rows are captured after the update');
ok(wait_delivered($node, 'postgres', 'c'), 'and delivered');

stop_receiver($r);
$node->stop;
done_testing();

