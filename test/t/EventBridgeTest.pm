# EventBridgeTest.pm: helpers shared by the TAP tests.
package EventBridgeTest;

use strict;
use warnings;
use Exporter 'import';
use FindBin;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

our @EXPORT = qw(eb_node wait_capture worker_pid shard_gaps rss_anon_kb);

# A started node configured like test/regress.conf, plus extra lines.
sub eb_node
{
	my ($name, $extra) = @_;
	my $node = PostgreSQL::Test::Cluster->new($name);
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

1;
