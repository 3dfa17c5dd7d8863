# Eight concurrent writers on hot keys, sixteen shards: per key, the stream
# has every change once and in commit order, in one shard, and a connector
# delivers it all as the invariant checker expects.  A column added
# mid-stream appears in later records.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use EventBridgeTest;
use ConnectorTest;

my $node = eb_node('writers');
my $r = start_receiver();
$node->safe_psql('postgres', qq{
	CREATE EXTENSION event_bridge;
	CREATE TABLE hot (k int PRIMARY KEY, v int NOT NULL);
	ALTER TABLE hot REPLICA IDENTITY FULL;
	INSERT INTO hot SELECT g, 0 FROM generate_series(1, 50) g;
	SELECT event_bridge.create_stream('s', ARRAY['hot']::regclass[], shard_count => 16);
	SELECT event_bridge.create_connector('writers_fc', 's', 'http://127.0.0.1:$r->{port}/', batch_size => 20);});

my $script = "$PostgreSQL::Test::Utils::tmp_check/hot.sql";
open my $fh, '>', $script or die $!;
print $fh <<'SQL';
\set k random(1, 50)
\set j random(1, 50)
BEGIN;
UPDATE hot SET v = v + 1 WHERE k = :k;
UPDATE hot SET v = v + 1 WHERE k = :j;
COMMIT;
SQL
close $fh;

$node->command_ok(
	[ 'pgbench', '-n', '-c', '8', '-j', '2', '-t', '300', '-f', $script,
	  '-h', $node->host, '-p', $node->port, 'postgres' ],
	'eight writers ran');
$node->safe_psql('postgres', q{
	ALTER TABLE hot ADD COLUMN note text DEFAULT 'new';
	UPDATE hot SET v = v + 1 WHERE k = 1;});
ok(wait_capture($node, 'postgres'), 'captured');

is($node->safe_psql('postgres', q{
	WITH u AS (
		SELECT (data::jsonb->>8)::int AS k, (data::jsonb->>9)::int AS v,
		       row_number() OVER (PARTITION BY (data::jsonb->>8) ORDER BY sequence) AS nth,
		       shard_id
		  FROM event_bridge.records WHERE data::jsonb->>7 = 'Y'),
	per_key AS (
		SELECT k, count(*) AS n, bool_and(v = nth) AS in_order, count(DISTINCT shard_id) AS shards
		  FROM u GROUP BY k)
	SELECT count(*) FROM hot h LEFT JOIN per_key p USING (k)
	 WHERE coalesce(p.n, 0) <> h.v OR NOT coalesce(p.in_order, true) OR p.shards > 1}),
	'0', 'per key: every update once, in commit order, in one shard');
is($node->safe_psql('postgres', q{
	SELECT count(DISTINCT shard_id) > 8 FROM event_bridge.records}),
	't', 'keys spread over the shards');
is(shard_gaps($node, 'postgres', 's'), '', 'sequences gapless in every shard');
is($node->safe_psql('postgres', q{
	SELECT data::jsonb->>10 FROM event_bridge.records
	 WHERE (data::jsonb->>8)::int = 1 ORDER BY sequence DESC LIMIT 1}),
	'new', 'the column added mid-stream is in later records');

ok(wait_delivered($node, 'postgres', 'writers_fc'), 'the connector delivered everything');
checker_ok($node, 'postgres', $r, [], 'the endpoint got every record once per shard, in order, per key in order');
stop_receiver($r);

$node->stop;
done_testing();
