# Capture filters under concurrent writers: shards stay gapless, a filtered
# stream holds exactly what a PostgreSQL 15 publication would send (UPDATEs
# that move rows into and out of the filter become INSERTs and DELETEs), a
# column list keeps its columns, and a filter changed mid-load applies from
# one transaction on, in commit order.
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

my $node = eb_node('capture_filters');
$node->safe_psql('postgres', q{
	CREATE EXTENSION event_bridge;
	CREATE TABLE orders (id int PRIMARY KEY, status text NOT NULL, amount int NOT NULL);
	ALTER TABLE orders REPLICA IDENTITY FULL;
	SELECT event_bridge.create_stream('s_all', ARRAY['orders']::regclass[], shard_count => 4);
	SELECT event_bridge.create_stream('s_paid', ARRAY['orders']::regclass[], shard_count => 4);
	SELECT event_bridge.create_stream('s_cols', ARRAY['orders']::regclass[], shard_count => 4);
	SELECT event_bridge.create_stream('s_switch', ARRAY['orders']::regclass[], shard_count => 4);
	SELECT event_bridge.set_table_filter('s_paid', 'orders', $$status = 'paid'$$);
	SELECT event_bridge.set_table_filter('s_cols', 'orders', columns => '{id,status}');
	SELECT event_bridge.set_table_filter('s_switch', 'orders', $$status = 'paid'$$);
	INSERT INTO orders SELECT g, CASE WHEN g % 3 = 0 THEN 'paid' ELSE 'new' END, g
	  FROM generate_series(1, 300) g;});

# Each transaction flips a row in or out of 'paid', or deletes it and
# inserts it again.
my $script = "$PostgreSQL::Test::Utils::tmp_check/filters.sql";
open my $fh, '>', $script or die $!;
print $fh <<'SQL';
\set id random(1, 300)
\set p random(1, 100)
BEGIN;
DELETE FROM orders WHERE id = :id AND :p <= 15;
INSERT INTO orders VALUES (:id, CASE WHEN :p % 2 = 0 THEN 'paid' ELSE 'new' END, :p)
  ON CONFLICT (id) DO UPDATE
  SET status = CASE WHEN orders.status = 'paid' THEN 'new' ELSE 'paid' END,
      amount = orders.amount + 1;
COMMIT;
SQL
close $fh;

my ($out, $err) = ('', '');
my $load = IPC::Run::start(
	[ 'pgbench', '-n', '-c', 4, '-t', 1500, '-f', $script,
	  '-h', $node->host, '-p', $node->port, 'postgres' ],
	'>', \$out, '2>', \$err);

# Mid-load, s_switch keeps the other rows from one transaction on.
$node->poll_query_until('postgres', q{
	SELECT count(*) > 1500 FROM event_bridge.get_records('s_all', 0, 0, 10000)})
  or die 'the load did not start';
$node->safe_psql('postgres',
	q{SELECT event_bridge.set_table_filter('s_switch', 'orders', $$status = 'new'$$)});
$load->finish;
is($?, 0, 'the load ran') or diag($err);
ok(wait_capture($node, 'postgres'), 'every change is captured');

for my $s (qw(s_all s_paid s_cols s_switch))
{
	is(shard_gaps($node, 'postgres', $s), '', "$s: every shard is gapless");
}

# The changes, from the unfiltered stream: per record id, the op and the
# before and after rows.
$node->safe_psql('postgres', q{
	CREATE VIEW got AS
	SELECT s.stream_name, r.record_id, r.operation AS op,
	       (r.data::jsonb ->> 6) || (r.data::jsonb ->> 7) AS flags,
	       (SELECT jsonb_agg(x ORDER BY i) FROM jsonb_array_elements(r.data::jsonb)
	                 WITH ORDINALITY e(x, i) WHERE i > 8) AS cols
	  FROM event_bridge.records r JOIN event_bridge.streams s USING (stream_id);
	CREATE VIEW changes AS
	SELECT record_id, max(op) AS op,
	       max(cols::text) FILTER (WHERE flags = 'YN')::jsonb AS b,
	       max(cols::text) FILTER (WHERE flags = 'NY')::jsonb AS a
	  FROM got WHERE stream_name = 's_all' GROUP BY record_id;
	-- What a publication with "status = $1" sends for each change.
	CREATE FUNCTION expected(want text) RETURNS TABLE (record_id bigint, op "char", flags text, cols jsonb)
	LANGUAGE sql AS $$
	    SELECT c.record_id, 'I', 'NY', c.a FROM changes c
	     WHERE c.a ->> 1 = want AND (c.op = 'I' OR (c.op = 'U' AND c.b ->> 1 <> want))
	    UNION ALL
	    SELECT c.record_id, 'D', 'YN', c.b FROM changes c
	     WHERE c.b ->> 1 = want AND (c.op = 'D' OR (c.op = 'U' AND c.a ->> 1 <> want))
	    UNION ALL
	    SELECT c.record_id, 'U', f.flags, CASE f.flags WHEN 'YN' THEN c.b ELSE c.a END
	      FROM changes c, (VALUES ('YN'), ('NY')) f(flags)
	     WHERE c.op = 'U' AND c.b ->> 1 = want AND c.a ->> 1 = want
	$$;});

my $changes = $node->safe_psql('postgres', 'SELECT count(*) FROM changes');
my ($moved_in, $moved_out) = split /\|/, $node->safe_psql('postgres', q{
	SELECT count(*) FILTER (WHERE op = 'U' AND b ->> 1 = 'new' AND a ->> 1 = 'paid'),
	       count(*) FILTER (WHERE op = 'U' AND b ->> 1 = 'paid' AND a ->> 1 = 'new')
	  FROM changes});
cmp_ok($moved_in, '>', 100, "$moved_in UPDATEs moved a row into the filter");
cmp_ok($moved_out, '>', 100, "$moved_out UPDATEs moved a row out of it");

# s_paid holds exactly the publication's records, each once.
is($node->safe_psql('postgres', q{
	SELECT count(*) FROM ((SELECT record_id, op, flags, cols FROM got WHERE stream_name = 's_paid'
	                       EXCEPT ALL SELECT * FROM expected('paid'))
	                      UNION ALL
	                      (SELECT * FROM expected('paid')
	                       EXCEPT ALL SELECT record_id, op, flags, cols FROM got WHERE stream_name = 's_paid')) x}),
	'0', "s_paid: exactly the records a publication sends, of $changes changes");

# Replaying s_paid gives the paid rows of the table.
my %rows;
for my $line (split /\n/, $node->safe_psql('postgres', q{
	SELECT op, flags, cols ->> 0, cols ->> 1 FROM got WHERE stream_name = 's_paid'
	 ORDER BY record_id, flags DESC}))
{
	my ($op, $flags, $id, $status) = split /\|/, $line;
	if ($op eq 'D') { delete $rows{$id}; }
	elsif ($flags eq 'NY') { $rows{$id} = $status; }
}
my $paid = $node->safe_psql('postgres',
	q{SELECT string_agg(id::text, ',' ORDER BY id) FROM orders WHERE status = 'paid'});
is(join(',', sort { $a <=> $b } keys %rows), $paid, 'replaying s_paid gives the paid rows of the table');

# s_cols: every change, two columns each.
is($node->safe_psql('postgres', q{
	SELECT count(*) FILTER (WHERE jsonb_array_length(cols) <> 2) || ' ' || count(*)
	  FROM got WHERE stream_name = 's_cols'}),
	'0 ' . $node->safe_psql('postgres', q{SELECT count(*) FROM got WHERE stream_name = 's_all'}),
	's_cols: every record, with the two listed columns');
is($node->safe_psql('postgres', q{
	SELECT count(*) FROM got c JOIN got a USING (record_id, flags)
	 WHERE c.stream_name = 's_cols' AND a.stream_name = 's_all'
	   AND c.cols <> jsonb_build_array(a.cols -> 0, a.cols -> 1)}),
	'0', 's_cols: the listed columns have the values of the row');

# s_switch: the first filter up to one transaction, the second from it on.
my @switch = map { [ split /\|/ ] } split /\n/, $node->safe_psql('postgres', q{
	WITH g AS (SELECT record_id, op, flags, cols FROM got WHERE stream_name = 's_switch'),
	     e1 AS (SELECT * FROM expected('paid')), e2 AS (SELECT * FROM expected('new'))
	SELECT c.record_id,
	       NOT EXISTS ((SELECT * FROM g WHERE g.record_id = c.record_id
	                    EXCEPT ALL SELECT * FROM e1 WHERE e1.record_id = c.record_id)
	                   UNION ALL
	                   (SELECT * FROM e1 WHERE e1.record_id = c.record_id
	                    EXCEPT ALL SELECT * FROM g WHERE g.record_id = c.record_id)),
	       NOT EXISTS ((SELECT * FROM g WHERE g.record_id = c.record_id
	                    EXCEPT ALL SELECT * FROM e2 WHERE e2.record_id = c.record_id)
	                   UNION ALL
	                   (SELECT * FROM e2 WHERE e2.record_id = c.record_id
	                    EXCEPT ALL SELECT * FROM g WHERE g.record_id = c.record_id))
	  FROM changes c ORDER BY c.record_id});
my ($i, $bad) = (0, 0);
$i++ while $i < @switch && $switch[$i][1] eq 't';
my $before = $i;
for (; $i < @switch; $i++)
{
	$bad++ if $switch[$i][2] ne 't';
}
cmp_ok($before, '>', 1000, "s_switch: the first filter for the $before changes before the switch");
is($bad, 0, 's_switch: the second filter for every change from the switch on (' . (@switch - $before) . ')');

done_testing();
