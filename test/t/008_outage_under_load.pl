# The endpoint is down while changes keep coming: records wait in the stream,
# the slot keeps advancing (retained WAL stays bounded), failures show in the
# status views; once the endpoint is back everything is delivered once, in
# order.  Then DROP EXTENSION while capture and delivery are busy.
# EB_OUTAGE_SECONDS sets the outage (default 120: minutes, as in production).
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use IO::Socket::INET;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep time);
use EventBridgeTest;
use ConnectorTest;

my $outage = $ENV{EB_OUTAGE_SECONDS} // 120;
my $node = eb_node('outage', "max_wal_size = '64MB'\nmin_wal_size = '32MB'\ncheckpoint_timeout = '30s'\n");
load_setup($node);

# A port with nothing listening: take a free one and close it.
my $sock = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => 0, Listen => 1) or die $!;
my $port = $sock->sockport;
close $sock;
$node->safe_psql('postgres', qq{
	SELECT event_bridge.create_connector('down', 's', 'http://127.0.0.1:$port/',
	    batch_size => 100, retry_interval => '200 ms', timeout => '2 seconds',
	    max_retries => 100000);});

my $wal_start = $node->safe_psql('postgres', 'SELECT pg_current_wal_lsn()');
my $bench = load_start($node, $outage, 2, 150);
my $max_retained = 0;
my $t_end = time + $outage;
my $next_checkpoint = time + 5;
while (time < $t_end)
{
	# Checkpoints log the running transactions, which lets a logical slot's
	# restart point move (otherwise the bgwriter does so every 15 s).
	if (time > $next_checkpoint)
	{
		$node->safe_psql('postgres', 'CHECKPOINT');
		$next_checkpoint = time + 5;
	}
	my $retained = $node->safe_psql('postgres', q{
		SELECT (pg_current_wal_lsn() - restart_lsn)::bigint FROM pg_replication_slots
		 WHERE slot_name LIKE 'event_bridge_%'});
	$max_retained = $retained if $retained > $max_retained;
	usleep(500_000);
}
$bench->finish;
my $written = $node->safe_psql('postgres', "SELECT pg_current_wal_lsn() - '$wal_start'::pg_lsn");
note "outage of $outage s: peak retained WAL $max_retained of $written bytes written";
ok(wait_capture($node, 'postgres'), 'everything written during the outage is captured');

my ($pending, $failures, $state, $http) = split /\|/, $node->safe_psql('postgres', q{
	SELECT pending, failures, state, coalesce(last_http_status::text, 'none')
	  FROM event_bridge.connector_status WHERE connector_name = 'down'});
cmp_ok($pending, '>', 10000, "records wait in the stream while the endpoint is down ($pending)");
cmp_ok($failures, '>', 0, "failures are counted ($failures)");
is($state, 'RUNNING', 'below max_retries the connector keeps trying');
# A slot held back by delivery would retain all of it; this one retains
# what lies between two running-transactions records.
cmp_ok($max_retained, '<', $written / 2,
	"retained WAL stays bounded while the endpoint is down ($max_retained of $written bytes)");
is($node->safe_psql('postgres', qq{
	SELECT restart_lsn > '$wal_start'::pg_lsn + $written / 2 FROM pg_replication_slots
	 WHERE slot_name LIKE 'event_bridge_%'}),
	't', 'the slot advanced during the outage');

# The endpoint comes back on the same port: everything arrives.
my $r = start_receiver(port => $port);
ok(wait_delivered($node, 'postgres', 'down'), 'after the outage everything is delivered');
my $next = { map { split /\|/ } split /\n/,
	  $node->safe_psql('postgres', 'SELECT shard_id, next_sequence FROM event_bridge.shards') };
my (%expect, $bad);
$bad = 0;
for my $id (@{ acked_ids(receiver_log($r)) })
{
	my ($shard, $seq) = split /:/, $id;
	$bad++ if $seq != ($expect{$shard} // 0);
	$expect{$shard} = $seq + 1;
}
is($bad, 0, 'every shard received its sequences once each, in order');
is_deeply(\%expect, $next, 'every shard received up to its last record');
is($node->safe_psql('postgres', q{
	SELECT state, failures FROM event_bridge.connector_status WHERE connector_name = 'down'}),
	'RUNNING|0', 'after recovery the connector runs with no failures');

# DROP EXTENSION while capture and delivery are busy.
$bench = load_start($node, 3, 2);
usleep(1_500_000);
my ($ret, $out, $err) = $node->psql('postgres', 'DROP EXTENSION event_bridge CASCADE');
is($ret, 0, 'DROP EXTENSION succeeds while capture and delivery are busy') or diag $err;
$bench->finish;
ok($node->poll_query_until('postgres', q{
	SELECT count(*) = 0 FROM pg_replication_slots WHERE slot_name LIKE 'event_bridge_%'}),
	'its slot is dropped');
ok($node->poll_query_until('postgres', q{
	SELECT count(*) = 0 FROM pg_stat_activity
	 WHERE backend_type IN ('event_bridge capture', 'event_bridge delivery')}),
	'its workers are gone');

stop_receiver($r);
$node->stop;
done_testing();
