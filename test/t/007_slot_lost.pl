# A slot lost to max_slot_wal_keep_size: capture stops and stream_status
# says so, nothing continues silently; recover_capture() starts capture
# again from now on and records the gap.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use EventBridgeTest;

my $node = eb_node('slot_lost', "max_slot_wal_keep_size = '1MB'\nmax_wal_size = '32MB'\nmin_wal_size = '32MB'\n");
$node->safe_psql('postgres', q{
	CREATE EXTENSION event_bridge;
	CREATE TABLE t (id int PRIMARY KEY, v text);
	ALTER TABLE t REPLICA IDENTITY FULL;
	SELECT event_bridge.create_stream('s', ARRAY['t']::regclass[]);
	INSERT INTO t VALUES (1, 'before');});
ok(wait_capture($node, 'postgres'), 'captured before the loss');

# Hold the capture worker back (its next append waits for this lock) while
# far more WAL than max_slot_wal_keep_size is written, then checkpoint.
my ($in, $out, $err) = ('', '', '');
my $holder = IPC::Run::start(
	[ 'psql', '-X', '-h', $node->host, '-p', $node->port, '-d', 'postgres' ],
	'<', \$in, '>', \$out, '2>', \$err);
$in .= "BEGIN; LOCK event_bridge.records IN SHARE MODE; SELECT 'locked';\n";
$holder->pump until $out =~ /locked/;
for my $i (1 .. 6)
{
	$node->safe_psql('postgres', qq{
		INSERT INTO t SELECT g, repeat('w', 500) FROM generate_series($i * 10000, $i * 10000 + 9999) g;
		SELECT pg_switch_wal();});
}
$node->safe_psql('postgres', 'CHECKPOINT');
ok($node->poll_query_until('postgres',
	"SELECT wal_status = 'lost' FROM pg_replication_slots WHERE slot_name LIKE 'event_bridge_%'"),
	'the slot is lost');
$in .= "ROLLBACK;\n\\q\n";
$holder->finish;

ok($node->poll_query_until('postgres',
	"SELECT capture_state = 'SLOT LOST' FROM event_bridge.stream_status"),
	'stream_status reports the lost slot');
$node->safe_psql('postgres', "INSERT INTO t VALUES (2, 'while lost')");
is($node->safe_psql('postgres', q{
	SELECT count(*) FROM event_bridge.records WHERE data::jsonb->>9 = 'while lost'}),
	'0', 'nothing is captured while the slot is lost');
my ($ret, $stdout, $stderr) = $node->psql('postgres',
	"SELECT event_bridge.create_stream('s2', ARRAY['t']::regclass[])");
like($stderr, qr/replication slot was lost.*\n.*HINT:  Run SELECT event_bridge.recover_capture\(\); first/s,
	'create_stream refuses with a hint while the slot is lost');
like(slurp_file($node->logfile), qr/event_bridge stopped capturing: replication slot "event_bridge_\d+" was invalidated/,
	'the server log says capture stopped');

$node->safe_psql('postgres', 'SELECT event_bridge.recover_capture()');
ok($node->poll_query_until('postgres',
	"SELECT capture_state = 'RUNNING' AND capture_gaps = 1 FROM event_bridge.stream_status"),
	'recover_capture() restarts capture and the gap is counted');
$node->safe_psql('postgres', "INSERT INTO t VALUES (3, 'after recovery')");
ok(wait_capture($node, 'postgres'), 'captured after recovery');
is($node->safe_psql('postgres', q{
	SELECT count(*) FROM event_bridge.records WHERE data::jsonb->>9 = 'after recovery'}),
	'1', 'changes after recovery are captured');
is($node->safe_psql('postgres', q{
	SELECT count(*) FROM event_bridge.capture_gaps WHERE lost_lsn IS NOT NULL AND resumed_lsn > lost_lsn}),
	'1', 'capture_gaps records where the gap starts and ends');
is(shard_gaps($node, 'postgres', 's'), '', 'sequences stay gapless');

($ret, $stdout, $stderr) = $node->psql('postgres', 'SELECT event_bridge.recover_capture()');
like($stderr, qr/has not lost its replication slot/, 'recover_capture() refuses when nothing is lost');

$node->stop;
done_testing();
