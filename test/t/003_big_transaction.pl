# A 1,000,000-row transaction: every record present, in order, while the
# capture worker's private memory stays bounded; an aborted transaction of
# the same kind leaves nothing.  A connector delivers it all, as the
# invariant checker expects.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);
use EventBridgeTest;
use ConnectorTest;

my $node = eb_node('big', "logical_decoding_work_mem = '64MB'\nevent_bridge.capture_buffer_kb = 8192\n");
$node->safe_psql('postgres', q{
	CREATE EXTENSION event_bridge;
	CREATE TABLE big (id int PRIMARY KEY, payload text);
	ALTER TABLE big REPLICA IDENTITY FULL;
	SELECT event_bridge.create_stream('s', ARRAY['big']::regclass[], shard_count => 4);});
my $r = start_receiver();
$node->safe_psql('postgres', qq{
	SELECT event_bridge.create_connector('big_fc', 's', 'http://127.0.0.1:$r->{port}/', batch_size => 1000);});

my $pid = worker_pid($node, 'postgres', 'capture');
ok($pid, 'capture worker runs');

# Sample the worker's private memory while it captures.
my $peak = 0;
my ($out, $err) = ('', '');
my $writer = IPC::Run::start(
	[ 'psql', '-X', '-q', '-h', $node->host, '-p', $node->port, '-d', 'postgres', '-c', q{
		BEGIN;
		INSERT INTO big SELECT g, repeat('x', 100) FROM generate_series(1, 200000) g;
		ROLLBACK;
		INSERT INTO big SELECT g, 'row ' || g FROM generate_series(1, 1000000) g;} ],
	'>', \$out, '2>', \$err);
while ($writer->pumpable)
{
	my $kb = rss_anon_kb($pid);
	$peak = $kb if $kb > $peak;
	usleep(50_000);
	$writer->pump_nb;
}
$writer->finish;
is($err, '', 'the writer ran');

my $done = 0;
for (1 .. 3600)
{
	my $kb = rss_anon_kb($pid);
	$peak = $kb if $kb > $peak;
	if ($node->safe_psql('postgres', "SELECT event_bridge.wait_for_capture('0.1 second')") eq 't')
	{
		$done = 1;
		last;
	}
}
ok($done, 'the transaction was captured');

is($node->safe_psql('postgres', 'SELECT records FROM event_bridge.stream_status'),
	'1000000', 'one record per inserted row, none of the aborted transaction');
is($node->safe_psql('postgres', q{
	SELECT count(DISTINCT (data::jsonb->>8)::int) FROM event_bridge.records}),
	'1000000', 'every row id present once');
is(shard_gaps($node, 'postgres', 's'), '', 'sequences gapless in every shard');
is($node->safe_psql('postgres', q{
	SELECT count(*) FROM (
		SELECT (data::jsonb->>0)::bigint - lag((data::jsonb->>0)::bigint) OVER (PARTITION BY shard_id ORDER BY sequence) AS step
		  FROM event_bridge.records) s WHERE step <= 0}),
	'0', 'record ids increase along each shard (change order kept)');
is(worker_pid($node, 'postgres', 'capture'), $pid, 'the same worker did it all (no crash)');

# logical_decoding_work_mem (64 MB) + capture_buffer_kb (8 MB) + the rest:
# bounded well below what the 1,000,000 records would need (over 150 MB).
note "capture worker peak RssAnon: $peak kB";
cmp_ok($peak, '<', 120 * 1024, 'capture worker private memory stays bounded');

ok(wait_delivered($node, 'postgres', 'big_fc'), 'the connector delivered the transaction');
checker_ok($node, 'postgres', $r, ['--forbid-substring', repeat_marker()],
	'the endpoint got every record once per shard, in order, and nothing of the aborted transaction');
stop_receiver($r);

$node->stop;
done_testing();

# The aborted transaction's rows carry 100 x's, which no committed row has.
sub repeat_marker { return 'x' x 100 }
