# Worker lifecycle: start by themselves in every database with the extension,
# come back after a restart and a crash, go away on drop_stream, DROP
# EXTENSION and DROP DATABASE; missing settings give the exact line to add.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use EventBridgeTest;

my $node = eb_node('lifecycle');

ok($node->poll_query_until('postgres',
	"SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'event_bridge launcher'"),
	'the launcher starts with the server');

for my $db ('db1', 'db2')
{
	$node->safe_psql('postgres', "CREATE DATABASE $db");
	$node->safe_psql($db, q{
		CREATE EXTENSION event_bridge;
		CREATE TABLE t (id int PRIMARY KEY, v text);
		ALTER TABLE t REPLICA IDENTITY FULL;
		SELECT event_bridge.create_stream('s', ARRAY['t']::regclass[], shard_count => 2);
		INSERT INTO t SELECT g, 'a' FROM generate_series(1, 10) g;});
	ok(wait_capture($node, $db), "$db: captured");
	is($node->safe_psql($db, 'SELECT records FROM event_bridge.stream_status'), '10',
		"$db: ten records");
	isnt(worker_pid($node, $db, 'capture'), '', "$db: capture worker runs");
}
is($node->safe_psql('postgres',
	"SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'event_bridge capture'"),
	'2', 'one capture worker per database with the extension, none elsewhere');

# Restart: workers come back and changes made while down are captured once.
$node->stop('fast');
$node->start;
$node->safe_psql('db1', "INSERT INTO t SELECT g, 'b' FROM generate_series(11, 20) g");
ok($node->poll_query_until('db1',
	"SELECT count(*) = 2 FROM pg_stat_activity WHERE backend_type = 'event_bridge capture'"),
	'capture workers of both databases back after restart');
ok(wait_capture($node, 'db1'), 'db1: captured after restart');
is($node->safe_psql('db1', 'SELECT records FROM event_bridge.stream_status'), '20',
	'db1: every change once after restart');

# Crash: kill -9 of the capture worker restarts the whole server.
my $pid = worker_pid($node, 'db1', 'capture');
$node->safe_psql('db1', "INSERT INTO t SELECT g, 'c' FROM generate_series(21, 30) g");
kill 'KILL', $pid;
# A new one: until the postmaster notices, the killed one may still be listed.
ok($node->poll_query_until('db1',
	"SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'event_bridge capture' AND datname = 'db1' AND pid <> $pid"),
	'capture worker back after a crash');
$node->safe_psql('db1', "INSERT INTO t SELECT g, 'd' FROM generate_series(31, 40) g");
ok(wait_capture($node, 'db1'), 'db1: captured after crash');
is($node->safe_psql('db1', 'SELECT records FROM event_bridge.stream_status'), '40',
	'db1: every change once after a crash');
is(shard_gaps($node, 'db1', 's'), '', 'db1: sequences gapless after a crash');
is($node->safe_psql('db1', q{
	SELECT count(DISTINCT r.table_version) || ' ' || count(*) FILTER (WHERE r.table_version IS NULL)
	       || ' ' || (SELECT count(*) FROM event_bridge.table_versions)
	  FROM event_bridge.records r}),
	'1 0 1', 'db1: a restart and a crash keep the table version that every record names');
unlike(slurp_file($node->logfile), qr/cannot read pg_class without having selected a database/,
	'the launcher starts cleanly after a restart and a crash');

# drop_stream: records go, the worker stays for the other streams.
$node->safe_psql('db1', q{
	SELECT event_bridge.create_stream('s2', ARRAY['t']::regclass[]);
	SELECT event_bridge.drop_stream('s');
	INSERT INTO t VALUES (41, 'e');});
ok(wait_capture($node, 'db1'), 'db1: captured after drop_stream');
is($node->safe_psql('db1', 'SELECT count(*) FROM event_bridge.records'), '1',
	'drop_stream removed the records of the dropped stream');

# DROP EXTENSION: the worker goes and the slot is dropped.
my $db2oid = $node->safe_psql('postgres', "SELECT oid FROM pg_database WHERE datname = 'db2'");
$node->safe_psql('db2', 'DROP EXTENSION event_bridge');
ok($node->poll_query_until('postgres',
	"SELECT count(*) = 0 FROM pg_replication_slots WHERE slot_name = 'event_bridge_$db2oid'"),
	'DROP EXTENSION drops the slot');
ok($node->poll_query_until('postgres',
	"SELECT count(*) = 0 FROM pg_stat_activity WHERE backend_type = 'event_bridge capture' AND datname = 'db2'"),
	'DROP EXTENSION stops the capture worker');

# ... and CREATE EXTENSION again starts afresh.
$node->safe_psql('db2', q{
	CREATE EXTENSION event_bridge;
	SELECT event_bridge.create_stream('s', ARRAY['t']::regclass[]);
	INSERT INTO t VALUES (100, 'again');});
ok(wait_capture($node, 'db2'), 'db2: captured after CREATE EXTENSION again');
is($node->safe_psql('db2', 'SELECT records FROM event_bridge.stream_status'), '1',
	'db2: a new stream holds only new changes');

# DROP DATABASE while its worker is busy.
my $db1oid = $node->safe_psql('postgres', "SELECT oid FROM pg_database WHERE datname = 'db1'");
$node->safe_psql('db1', "INSERT INTO t SELECT g, 'x' FROM generate_series(1000, 50000) g");
$node->safe_psql('postgres', 'DROP DATABASE db1');
is($node->safe_psql('postgres',
	"SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'event_bridge_$db1oid'"),
	'0', 'DROP DATABASE succeeds and drops the slot');
ok($node->poll_query_until('postgres',
	"SELECT count(*) = 0 FROM pg_stat_activity WHERE backend_type = 'event_bridge capture' AND datname = 'db1'"),
	'no worker left for the dropped database');
ok($node->poll_query_until('postgres',
	"SELECT count(*) = 0 FROM pg_replication_origin WHERE roname LIKE 'event_bridge_%\\_$db1oid'"),
	'the replication origins of the dropped database are dropped');
ok(wait_capture($node, 'db2'), 'db2 still captures');

# pg_dump and restore: the stream comes back on the restored tables, its
# workers start by themselves, and its sequences go on counting.
$node->safe_psql('postgres', 'CREATE DATABASE db4');
my $dump = "$PostgreSQL::Test::Utils::tmp_check/db2.sql";
$node->command_ok([ 'pg_dump', '-h', $node->host, '-p', $node->port, '-f', $dump, 'db2' ],
	'pg_dump of a database with streams');
$node->command_ok([ 'psql', '-X', '-q', '-h', $node->host, '-p', $node->port, '-d', 'db4',
	'-v', 'ON_ERROR_STOP=1', '-f', $dump ], 'restored into another database');
ok($node->poll_query_until('postgres',
	"SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'event_bridge capture' AND datname = 'db4'"),
	'the restored database gets its capture worker without create_stream');
$node->safe_psql('db4', "INSERT INTO t VALUES (101, 'restored')");
ok(wait_capture($node, 'db4'), 'db4: captured');
# The restore's own rows of t are changes committed after the stream came
# back, so they may be captured too; either way the stream goes on from its
# dumped counter (it had handed out 0:0) and holds the new row.
is($node->safe_psql('db4', q{
	SELECT min(sequence) || ' ' || (array_agg(data->>8 ORDER BY sequence DESC))[1]
	  FROM event_bridge.get_records('s', 0, 0, 1000)}),
	'1 101', 'the restored stream captures the restored table and goes on counting');

# Missing settings: the first call that needs one names the exact line.
$node->append_conf('postgresql.conf', "output_plugin_libraries = 'pgoutput, test_decoding'");
$node->reload;
$node->safe_psql('postgres', 'CREATE DATABASE db3');
$node->safe_psql('db3', 'CREATE EXTENSION event_bridge; CREATE TABLE t (id int PRIMARY KEY)');
my ($ret, $out, $err) = $node->psql('db3',
	"SELECT event_bridge.create_stream('s', ARRAY['t']::regclass[], before_images => false)");
like($err, qr/HINT:  Add output_plugin_libraries = 'pgoutput, test_decoding, event_bridge' to postgresql.conf and reload the server/,
	'output_plugin_libraries: the hint is the exact line');
is($node->safe_psql('db3', 'SELECT count(*) FROM event_bridge.streams'), '0',
	'nothing created');

$node->stop;

# A server configured with nothing: one hint at a time, each the exact line.
my $bare = PostgreSQL::Test::Cluster->new('bare');
$bare->init;
$bare->append_conf('postgresql.conf', "wal_level = replica");
$bare->start;
$bare->safe_psql('postgres', 'CREATE EXTENSION event_bridge; CREATE TABLE t (id int PRIMARY KEY)');
($ret, $out, $err) = $bare->psql('postgres',
	"SELECT event_bridge.create_stream('s', ARRAY['t']::regclass[], before_images => false)");
like($err, qr/HINT:  Add shared_preload_libraries = 'event_bridge' to postgresql.conf and restart the server/,
	'shared_preload_libraries: the hint is the exact line');
$bare->append_conf('postgresql.conf', "shared_preload_libraries = 'event_bridge'");
$bare->restart;
($ret, $out, $err) = $bare->psql('postgres',
	"SELECT event_bridge.create_stream('s', ARRAY['t']::regclass[], before_images => false)");
like($err, qr/HINT:  Add wal_level = logical to postgresql.conf and restart the server/,
	'wal_level: the hint is the exact line');
is($bare->safe_psql('postgres', 'SELECT count(*) FROM event_bridge.streams'), '0',
	'nothing created');
$bare->stop;

done_testing();
