# Exactly-once capture: the server is stopped with -m immediate at random
# moments under load; after each restart the stream holds every committed
# change once, with no gap, and the slot keeps advancing.
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

my $node = eb_node('crash');
$node->safe_psql('postgres', q{
	CREATE EXTENSION event_bridge;
	CREATE TABLE ins (id bigserial PRIMARY KEY, k int, v int);
	ALTER TABLE ins REPLICA IDENTITY FULL;
	CREATE TABLE hot (k int PRIMARY KEY, v int NOT NULL);
	ALTER TABLE hot REPLICA IDENTITY FULL;
	INSERT INTO hot SELECT g, 0 FROM generate_series(1, 200) g;
	SELECT event_bridge.create_stream('s', ARRAY['ins', 'hot']::regclass[], shard_count => 4);});

my $script = "$PostgreSQL::Test::Utils::tmp_check/crash.sql";
open my $fh, '>', $script or die $!;
print $fh <<'SQL';
\set k random(1, 200)
BEGIN;
INSERT INTO ins (k, v) VALUES (:k, 1), (:k, 2);
UPDATE hot SET v = v + 1 WHERE k = :k;
COMMIT;
SQL
close $fh;

srand(42);
for my $round (1 .. 4)
{
	my ($out, $err) = ('', '');
	my $bench = IPC::Run::start(
		[ 'pgbench', '-n', '-c', '4', '-T', '4', '-f', $script,
		  '-h', $node->host, '-p', $node->port, 'postgres' ],
		'>', \$out, '2>', \$err);
	usleep(int(700_000 + rand(2_000_000)));
	$node->stop('immediate');
	$bench->finish;
	$node->start;
	note "round $round: crashed under load";
}

ok(wait_capture($node, 'postgres'), 'captured everything after the crashes');

# Every committed INSERT is in the stream exactly once, and nothing else is.
$node->safe_psql('postgres', q{
	CREATE TABLE captured AS
	SELECT (r.data::jsonb->>8)::bigint AS id, count(*) AS n
	  FROM event_bridge.records r
	 WHERE r.table_name = 'public.ins' AND r.operation = 'I'
	 GROUP BY 1});
is($node->safe_psql('postgres', q{
	SELECT count(*) FROM ins i FULL JOIN captured c USING (id)
	 WHERE c.n IS DISTINCT FROM 1 OR i.id IS NULL}),
	'0', 'each committed insert appears once, and no uncommitted one');
ok($node->safe_psql('postgres', 'SELECT count(*) FROM ins') > 100,
	'the load committed work before the crashes');

# Each hot key's after-values are 1..v in sequence order: no loss, no duplicate.
is($node->safe_psql('postgres', q{
	WITH u AS (
		SELECT (r.data::jsonb->>8)::int AS k, (r.data::jsonb->>9)::int AS v,
		       row_number() OVER (PARTITION BY (r.data::jsonb->>8) ORDER BY r.sequence) AS nth,
		       r.shard_id
		  FROM event_bridge.records r
		 WHERE r.table_name = 'public.hot' AND r.data::jsonb->>7 = 'Y'),
	per_key AS (
		SELECT k, count(*) AS n, bool_and(v = nth) AS in_order,
		       count(DISTINCT shard_id) AS shards
		  FROM u GROUP BY k)
	SELECT count(*) FROM hot h LEFT JOIN per_key p USING (k)
	 WHERE coalesce(p.n, 0) <> h.v OR NOT coalesce(p.in_order, true) OR p.shards > 1}),
	'0', 'per key: every update once, in order, in one shard');

is(shard_gaps($node, 'postgres', 's'), '', 'sequences gapless in every shard');

# The slot keeps advancing: WAL is not retained once records are stored.
$node->safe_psql('postgres', 'CHECKPOINT');
ok($node->poll_query_until('postgres', q{
	SELECT pg_current_wal_lsn() - restart_lsn < 4 * 1024 * 1024
	   AND pg_current_wal_lsn() - confirmed_flush_lsn < 64 * 1024
	  FROM pg_replication_slots WHERE slot_name LIKE 'event_bridge_%'}),
	'slot restart_lsn and confirmed_flush_lsn follow the WAL');

$node->stop;
done_testing();
