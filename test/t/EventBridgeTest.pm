# EventBridgeTest.pm: helpers shared by the TAP tests.
package EventBridgeTest;

use strict;
use warnings;
use Exporter 'import';
use IPC::Run;
use Time::HiRes qw(usleep);
use FindBin;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

# Ctrl-C or a TERM ends a test through exit, so that the END blocks stop
# its servers (PostgreSQL::Test::Cluster) and receivers (ConnectorTest).
$SIG{INT} = $SIG{TERM} = sub { exit 130 };

our @EXPORT = qw(eb_node wait_capture worker_pid shard_gaps rss_anon_kb
	load_setup load_script load_start check_exactly_once wait_restarted
	catalog_description);

# A started node configured like test/regress.conf, plus extra lines; of
# another PostgreSQL installation with install_path.
sub eb_node
{
	my ($name, $extra, $install_path) = @_;
	my $node = PostgreSQL::Test::Cluster->new($name,
		$install_path ? (install_path => $install_path) : ());
	$node->init(allows_streaming => 'logical');
	open my $fh, '<', "$FindBin::RealBin/../regress.conf" or die $!;
	local $/;
	my $conf = <$fh>;
	close $fh;
	$node->append_conf('postgresql.conf',
		$conf . "restart_after_crash = on\n" . ($extra // ''));
	$node->start;
	return $node;
}

# Waits until a node whose postmaster restarts after a crash accepts
# queries again; returns false when poll_query_until gives up (180 s).
# While the server restarts, psql can exit before reading its query, and
# IPC::Run then dies with a broken pipe: that is retried like a refused
# connection.
sub wait_restarted
{
	my ($node) = @_;
	for (1 .. 360)
	{
		my $up = eval { $node->poll_query_until('postgres', 'SELECT true') };
		return $up if defined $up;
		usleep(500_000);
	}
	return 0;
}

# Waits until everything committed so far is in the streams of a database.
sub wait_capture
{
	my ($node, $db, $timeout) = @_;
	$timeout //= 180;
	my $ok = $node->safe_psql($db // 'postgres',
		"SELECT event_bridge.wait_for_capture('$timeout seconds')");
	return $ok eq 't';
}

# The pid of a database's event_bridge worker of a kind ('capture'), or ''.
sub worker_pid
{
	my ($node, $db, $kind) = @_;
	return $node->safe_psql('postgres',
		"SELECT pid FROM pg_stat_activity WHERE backend_type = 'event_bridge $kind' AND datname = '$db'");
}

# Per shard of a stream: '' if sequences are 0..n-1 with n = next_sequence,
# otherwise a description of the first bad shard.
sub shard_gaps
{
	my ($node, $db, $stream) = @_;
	return $node->safe_psql($db, qq{
		SELECT coalesce(string_agg(format('shard %s: %s records, max %s, next %s',
		                                  h.shard_id, r.n, r.mx, h.next_sequence), '; '), '')
		  FROM event_bridge.streams s
		  JOIN event_bridge.shards h USING (stream_id)
		  LEFT JOIN LATERAL (SELECT count(*) n, max(sequence) mx, min(sequence) mn
		                       FROM event_bridge.records r
		                      WHERE r.stream_id = h.stream_id AND r.shard_id = h.shard_id) r ON true
		 WHERE s.stream_name = '$stream'
		   AND NOT (r.n = h.next_sequence AND coalesce(r.mx, -1) = h.next_sequence - 1
		            AND coalesce(r.mn, 0) = 0)});
}

# Private anonymous memory of a process, in kB (0 if it is gone).
sub rss_anon_kb
{
	my ($pid) = @_;
	open my $fh, '<', "/proc/$pid/status" or return 0;
	while (<$fh>)
	{
		return $1 if /^RssAnon:\s+(\d+)/;
	}
	return 0;
}

# The load of the crash tests: inserts into ins and counter updates of hot
# keys, captured by stream 's' into four shards.
sub load_setup
{
	my ($node) = @_;
	$node->safe_psql('postgres', q{
		CREATE EXTENSION event_bridge;
		CREATE TABLE ins (id bigserial PRIMARY KEY, k int, v int);
		ALTER TABLE ins REPLICA IDENTITY FULL;
		CREATE TABLE hot (k int PRIMARY KEY, v int NOT NULL);
		ALTER TABLE hot REPLICA IDENTITY FULL;
		INSERT INTO hot SELECT g, 0 FROM generate_series(1, 200) g;
		SELECT event_bridge.create_stream('s', ARRAY['ins', 'hot']::regclass[], shard_count => 4);});
	load_script();
}

# Writes the pgbench script of the load, over tables ins and hot.
sub load_script
{
	my $script = "$PostgreSQL::Test::Utils::tmp_check/load.sql";
	open my $fh, '>', $script or die $!;
	print $fh <<'SQL';
\set k random(1, 200)
BEGIN;
INSERT INTO ins (k, v) VALUES (:k, 1), (:k, 2);
UPDATE hot SET v = v + 1 WHERE k = :k;
COMMIT;
SQL
	close $fh;
}

# Starts pgbench with the load for some seconds, as fast as it goes or at a
# fixed rate of transactions per second; returns its IPC::Run handle.
sub load_start
{
	my ($node, $seconds, $clients, $rate) = @_;
	my ($out, $err) = ('', '');
	return IPC::Run::start(
		[ 'pgbench', '-n', '-c', $clients // 4, '-T', $seconds,
		  ($rate ? ('-R', $rate) : ()),
		  '-f', "$PostgreSQL::Test::Utils::tmp_check/load.sql",
		  '-h', $node->host, '-p', $node->port, 'postgres' ],
		'>', \$out, '2>', \$err);
}

# Checks, after the load, that stream 's' holds every committed change once:
# each committed insert once and nothing uncommitted, each hot-key update
# once and in order in one shard, sequences gapless.
sub check_exactly_once
{
	my ($node, $what) = @_;
	ok(wait_capture($node, 'postgres'), "$what: captured everything");
	is($node->safe_psql('postgres', q{
		WITH captured AS (
			SELECT (r.data::jsonb->>8)::bigint AS id, count(*) AS n
			  FROM event_bridge.records r
			  JOIN event_bridge.streams s USING (stream_id)
			 WHERE s.stream_name = 's' AND r.table_name = 'public.ins' AND r.operation = 'I'
			 GROUP BY 1)
		SELECT count(*) FROM ins i FULL JOIN captured c USING (id)
		 WHERE c.n IS DISTINCT FROM 1 OR i.id IS NULL}),
		'0', "$what: each committed insert appears once, and no uncommitted one");
	is($node->safe_psql('postgres', q{
		WITH u AS (
			SELECT (r.data::jsonb->>8)::int AS k, (r.data::jsonb->>9)::int AS v,
			       row_number() OVER (PARTITION BY (r.data::jsonb->>8) ORDER BY r.sequence) AS nth,
			       r.shard_id
			  FROM event_bridge.records r
			  JOIN event_bridge.streams s USING (stream_id)
			 WHERE s.stream_name = 's' AND r.table_name = 'public.hot' AND r.data::jsonb->>7 = 'Y'),
		per_key AS (
			SELECT k, count(*) AS n, bool_and(v = nth) AS in_order,
			       count(DISTINCT shard_id) AS shards
			  FROM u GROUP BY k)
		SELECT count(*) FROM hot h LEFT JOIN per_key p USING (k)
		 WHERE coalesce(p.n, 0) <> h.v OR NOT coalesce(p.in_order, true) OR p.shards > 1}),
		'0', "$what: per key, every update once, in order, in one shard");
	is(shard_gaps($node, 'postgres', 's'), '', "$what: sequences gapless in every shard");
}

# The event_bridge catalog of a database as text, one line per object:
# tables and columns, indexes, constraints, triggers, views, functions with
# their settings and rights, event triggers, what pg_dump keeps.  Two
# installs are the same when their descriptions are.
sub catalog_description
{
	my ($node, $db) = @_;
	return $node->safe_psql($db, q{
	WITH ext AS (SELECT oid FROM pg_extension WHERE extname = 'event_bridge'),
	members AS (
		SELECT d.classid, d.objid FROM pg_depend d, ext
		 WHERE d.refclassid = 'pg_extension'::regclass AND d.refobjid = ext.oid AND d.deptype = 'e'),
	rels AS (
		SELECT c.* FROM pg_class c JOIN members m ON m.classid = 'pg_class'::regclass AND m.objid = c.oid)
	SELECT 'relation ' || relname || ' ' || relkind::text || ' ' || coalesce(relacl::text, '') || ' '
	       || coalesce(obj_description(oid, 'pg_class'), '') || ' replident ' || relreplident::text
	  FROM rels
	UNION ALL
	SELECT 'column ' || c.relname || '.' || a.attname || ' ' || format_type(a.atttypid, a.atttypmod)
	       || ' ' || a.attnotnull || ' ' || coalesce(pg_get_expr(d.adbin, d.adrelid), '') || ' #' || a.attnum
	  FROM rels c JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
	  LEFT JOIN pg_attrdef d ON d.adrelid = c.oid AND d.adnum = a.attnum
	UNION ALL
	SELECT 'index ' || pg_get_indexdef(i.indexrelid) FROM pg_index i JOIN rels c ON c.oid = i.indrelid
	UNION ALL
	SELECT 'constraint ' || c.relname || ' ' || k.conname || ' ' || pg_get_constraintdef(k.oid)
	  FROM pg_constraint k JOIN rels c ON c.oid = k.conrelid
	UNION ALL
	SELECT 'trigger ' || pg_get_triggerdef(t.oid) FROM pg_trigger t JOIN rels c ON c.oid = t.tgrelid
	 WHERE NOT t.tgisinternal
	UNION ALL
	SELECT 'view ' || c.relname || ' ' || pg_get_viewdef(c.oid) FROM rels c WHERE c.relkind = 'v'
	UNION ALL
	SELECT 'function ' || p.oid::regprocedure || ' returns ' || pg_get_function_result(p.oid)
	       || ' args ' || pg_get_function_arguments(p.oid) || ' ' || l.lanname || ' ' || p.provolatile::text
	       || ' strict ' || p.proisstrict || ' definer ' || p.prosecdef
	       || ' config ' || coalesce(p.proconfig::text, '') || ' acl ' || coalesce(p.proacl::text, '')
	       || ' comment ' || coalesce(obj_description(p.oid, 'pg_proc'), '')
	       || ' body ' || md5(p.prosrc)
	  FROM pg_proc p JOIN members m ON m.classid = 'pg_proc'::regclass AND m.objid = p.oid
	  JOIN pg_language l ON l.oid = p.prolang
	UNION ALL
	SELECT 'event trigger ' || e.evtname || ' ' || e.evtevent || ' ' || e.evtfoid::regproc
	       || ' ' || coalesce(e.evttags::text, '')
	  FROM pg_event_trigger e JOIN members m ON m.classid = 'pg_event_trigger'::regclass AND m.objid = e.oid
	UNION ALL
	SELECT 'dumped ' || array_to_string(ARRAY(SELECT x::regclass::text FROM unnest(extconfig) x ORDER BY 1), ',')
	  FROM pg_extension WHERE extname = 'event_bridge'
	ORDER BY 1});
}

1;
