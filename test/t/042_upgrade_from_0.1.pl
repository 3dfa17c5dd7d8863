# The upgrade as a user does it, from release 0.1 as it shipped: 0.1
# captures and delivers; its files are replaced by this build's and the
# server restarts; the new library waits, saying once what to run, while
# rows keep coming; ALTER EXTENSION UPDATE under load; delivery goes on from
# 0.1's offsets, every record once and in order, and the catalog equals a
# fresh install.  test/run_tests.sh builds 0.1 from its commit into a
# private copy of PostgreSQL (EB_RELEASE_0_1_INSTALL).
use strict;
use warnings;
use File::Copy;
use FindBin;
use lib $FindBin::RealBin;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);
use EventBridgeTest;
use ConnectorTest;

my $release = $ENV{EB_RELEASE_0_1_INSTALL};
plan skip_all => 'release 0.1 is not built here (test/run_tests.sh needs the git history)'
  unless $release && -d "$release/current";

my $bin = "$release/usr/lib/postgresql/15";
my $node = eb_node('from_release', '', $bin);
my $r = start_receiver();

# 0.1 at work.
load_setup($node);
is($node->safe_psql('postgres', "SELECT extversion FROM pg_extension WHERE extname = 'event_bridge'"),
	'0.1', 'release 0.1 is installed');
$node->safe_psql('postgres', qq{
	SELECT event_bridge.create_connector('c', 's', 'http://127.0.0.1:$r->{port}/fc', batch_size => 7,
	    retry_interval => '2 seconds', max_retries => 40, headers => '{"X-Auth-Token": "t0ken"}'::jsonb)});
my $load = load_start($node, 3, 2, 300);
$load->finish;
ok(wait_capture($node, 'postgres') && wait_delivered($node, 'postgres', 'c'), '0.1 captures and delivers');
my $offsets_before = $node->safe_psql('postgres',
	"SELECT string_agg(delivered_sequence::text, ',' ORDER BY shard_id) FROM event_bridge.shard_status");
ok($offsets_before !~ /-1/, "every shard has an offset under 0.1 ($offsets_before)");

# The new files, as a package would install them, and a restart.
$node->stop('fast');
copy("$release/current/event_bridge.so", "$bin/lib/event_bridge.so") or die $!;
for my $f (glob("$release/current/event_bridge*"))
{
	next if $f =~ /\.so$/;
	copy($f, "$release/usr/share/postgresql/15/extension/") or die $!;
}
$node->start;
ok(eval { $node->wait_for_log(qr/waits for its SQL to be updated to version 0\.2/); 1 },
	'the new library waits for the update and says so');

# Rows keep coming; the update runs under load.
$load = load_start($node, 6, 2, 300);
usleep(2_000_000);
$node->safe_psql('postgres', 'ALTER EXTENSION event_bridge UPDATE');
is($node->safe_psql('postgres', "SELECT extversion FROM pg_extension WHERE extname = 'event_bridge'"),
	'0.2', 'the extension is at 0.2');
$load->finish;

check_exactly_once($node, 'across the upgrade');
ok(wait_delivered($node, 'postgres', 'c'), 'the connector delivers everything');
my %next = map { split /\|/ } split /\n/, $node->safe_psql('postgres',
	'SELECT shard_id, next_sequence FROM event_bridge.shards ORDER BY 1');
check_shard_order(acked_ids(receiver_log($r)), \%next, 'before and after the upgrade');
is($node->safe_psql('postgres', q{
	SELECT batch_size || ' ' || retry_interval || ' ' || max_retries || ' ' || header_names::text
	  FROM event_bridge.connector_status WHERE connector_name = 'c'}),
	'7 00:00:02 40 {X-Auth-Token}', 'the connector keeps its settings');
my $log = slurp_file($node->logfile);
my $count = () = $log =~ /Run ALTER EXTENSION event_bridge UPDATE; in database "postgres"/g;
is($count, 1, 'the update was asked for once');

$node->safe_psql('postgres', 'CREATE DATABASE fresh');
$node->safe_psql('fresh', 'CREATE EXTENSION event_bridge');
is(catalog_description($node, 'postgres'), catalog_description($node, 'fresh'),
	'the catalog upgraded from release 0.1 equals a fresh 0.2 install');

stop_receiver($r);
$node->stop;
done_testing();
