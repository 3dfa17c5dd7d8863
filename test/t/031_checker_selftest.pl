# The invariant checker (test/check_invariants.py) can fail: a clean run of
# two connectors passes, and doctored copies of its receiver log (a dropped
# line, a reordered pair, changed data, a changed systemTime, an old batch
# sent again, a batch acked twice with no crash in between, a record of a
# rolled-back transaction, a batch with a hole, a body changed byte by
# byte) are each reported as the violation they are.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use JSON::PP;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use EventBridgeTest;
use ConnectorTest;

my $node = eb_node('checker_selftest');
my $r = start_receiver(args => ['--keep-body']);
my $url = "http://127.0.0.1:$r->{port}";
$node->safe_psql('postgres', qq{
	CREATE EXTENSION event_bridge;
	CREATE TABLE t (id int PRIMARY KEY, v text);
	ALTER TABLE t REPLICA IDENTITY FULL;
	SELECT event_bridge.create_stream('s', ARRAY['t']::regclass[], shard_count => 2);
	SELECT event_bridge.create_connector('dh', 's', '$url/dh', batch_size => 5);
	SELECT event_bridge.create_connector('dis', 's', '$url/dis', format => 'dis', batch_size => 7);});
$node->safe_psql('postgres', "INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 100) g");
$node->safe_psql('postgres', "UPDATE t SET v = v || '!' WHERE id % 4 = 0");
$node->safe_psql('postgres', "DELETE FROM t WHERE id % 10 = 0");
ok(wait_capture($node, 'postgres'), 'captured');
ok(wait_delivered($node, 'postgres', 'dh'), 'dh delivered');
ok(wait_delivered($node, 'postgres', 'dis'), 'dis delivered');

# Offsets move only after a 2xx, which the receiver logs first: the log is
# complete.
stop_receiver($r);
my $entries = receiver_log($r);
my $records = $node->safe_psql('postgres', 'SELECT sum(next_sequence) FROM event_bridge.shards');
for my $path ('/dh', '/dis')
{
	my $n = 0;
	$n += @{ $_->{event_ids} } for grep { $_->{path} eq $path } @$entries;
	is($n, $records, "$path: the receiver logged the $records records once each");
}

checker_ok($node, 'postgres', $r, [], 'the clean log passes');
checker_ok($node, 'postgres', $r, [ '--forbid-substring', 'ABORTED' ],
	'a marker no transaction wrote is found nowhere');

# Runs the checker on a doctored log; returns its JSON report and exit code.
my $n = 0;
sub check_doctored
{
	my ($lines, @args) = @_;
	my $file = $r->{log} . '.doctored.' . ++$n;
	open my $fh, '>', $file or die $!;
	print $fh map { encode_json($_) . "\n" } @$lines;
	close $fh;
	my ($rc, $out, $err) = run_checker($node, 'postgres', $file, '--json', @args);
	my $report = eval { decode_json($out) } // { violations => [] };
	return ($rc, $report, $out . $err);
}

# Asserts that the doctored log fails with the given invariant of a connector.
sub fails_with
{
	my ($what, $lines, $connector, $invariant, @args) = @_;
	my ($rc, $report, $out) = check_doctored($lines, @args);
	is($rc, 1, "$what: the checker fails");
	my @hits = grep { ($_->{connector} // '') eq $connector && $_->{invariant} eq $invariant }
	  @{ $report->{violations} };
	ok(@hits, "$what: reported as $invariant of $connector")
	  or diag($out);
	note(join("\n", map { @{ $_->{examples} } } @hits));
}

sub copy_log { return decode_json(encode_json($entries)); }

# Requests answered 200 of a connector, as indexes into the log.
sub acked_lines
{
	my ($lines, $path) = @_;
	return grep { $lines->[$_]{path} eq $path && ($lines->[$_]{status} // 0) == 200 }
	  0 .. $#$lines;
}

# A dropped line: its records are missing and the next batch of its shard
# came without them.
{
	my $lines = copy_log();
	my @dh = acked_lines($lines, '/dh');
	splice(@$lines, $dh[3], 1);
	fails_with('dropped line', $lines, 'dh', 'missing');
	fails_with('dropped line', $lines, 'dh', 'shard_order');
	fails_with('dropped line', $lines, 'dh', 'status');
}

# A reordered pair: two consecutive batches of one shard swapped.
{
	my $lines = copy_log();
	my @dis = acked_lines($lines, '/dis');
	my $shard = $lines->[ $dis[2] ]{shard};
	my @same = grep { $lines->[$_]{shard} == $shard } @dis;
	@$lines[ $same[1], $same[2] ] = @$lines[ $same[2], $same[1] ];
	fails_with('reordered pair', $lines, 'dis', 'shard_order');
}

# Changed data: one column value of one record, as the receiver decoded it.
{
	my $lines = copy_log();
	my @dh = acked_lines($lines, '/dh');
	$lines->[ $dh[5] ]{records}[1]{data}[9] = 'changed';
	fails_with('changed data', $lines, 'dh', 'content');
}

# Changed bytes of the raw body only (an escape the decoded value hides).
{
	my $lines = copy_log();
	my @dh = acked_lines($lines, '/dh');
	ok($lines->[ $dh[6] ]{body} =~ s/\\"v(\d+)\\"/\\"\\\\u0076$1\\"/,
		'changed body bytes: "v<n>" spelt "\\u0076<n>" in the data string');
	fails_with('changed body bytes', $lines, 'dh', 'content');
}

# Changed systemTime.
{
	my $lines = copy_log();
	my @dh = acked_lines($lines, '/dh');
	$lines->[ $dh[2] ]{records}[0]{system_time} += 1;
	fails_with('changed systemTime', $lines, 'dh', 'content');
}

# An old batch sent again after later ones: not the batch in flight.
{
	my $lines = copy_log();
	my @dh = acked_lines($lines, '/dh');
	push @$lines, $lines->[ $dh[0] ];
	fails_with('old batch resent', $lines, 'dh', 'duplicates');
}

# A resent batch with other eventIds than the first sending.
{
	my $lines = copy_log();
	my @dh = acked_lines($lines, '/dh');
	my %last;    # shard => its latest batch
	$last{ $lines->[$_]{shard} } = $lines->[$_] for @dh;
	my ($batch) = grep { @{ $_->{event_ids} } >= 2 } values %last;
	my $copy = decode_json(encode_json($batch));
	pop @{ $copy->{event_ids} };
	pop @{ $copy->{records} };
	push @$lines, $copy;
	fails_with('resend with fewer eventIds', $lines, 'dh', 'duplicates');
}

# The latest batch acked twice: allowed (a crash may lose the offset
# commit), but with --disruptions only if a crash, restart or outage came
# between the two sendings.
{
	my $lines = copy_log();
	my @dh = acked_lines($lines, '/dh');
	my $copy = decode_json(encode_json($lines->[ $dh[-1] ]));
	$copy->{t_ms} += 1000;
	push @$lines, $copy;
	my ($rc, $report, $out) = check_doctored($lines);
	is($rc, 0, 'the latest batch acked twice: allowed') or diag($out);
	my $windows = "$r->{log}.disruptions";
	open my $fh, '>', $windows or die $!;
	print $fh '[]';
	close $fh;
	fails_with('acked twice with no disruption', $lines, 'dh', 'duplicates',
		'--disruptions', $windows);
	open $fh, '>', $windows or die $!;
	printf $fh '[[%.0f, %.0f]]', $copy->{t_ms} - 600, $copy->{t_ms} - 400;
	close $fh;
	($rc, $report, $out) = check_doctored($lines, '--disruptions', $windows);
	is($rc, 0, 'acked twice with a crash in between: allowed') or diag($out);
}

# A record of a rolled-back transaction: the marker in delivered data.
{
	my $lines = copy_log();
	my @dis = acked_lines($lines, '/dis');
	$lines->[ $dis[1] ]{records}[0]{data}[9] = 'xx-ABORTED-xx';
	fails_with('marker delivered', $lines, 'dis', 'aborted', '--forbid-substring', 'ABORTED');
}

# A stored record with the marker: the checker looks at the stream too.
{
	my ($rc, $report, $out) = check_doctored(copy_log(), '--forbid-substring', 'v17');
	is($rc, 1, 'a marker in a stored record: the checker fails');
	ok((grep { $_->{invariant} eq 'aborted' } @{ $report->{violations} }),
		'a marker in a stored record: reported as aborted') or diag($out);
}

# A batch with a hole: eventIds not consecutive.
{
	my $lines = copy_log();
	my @dh = acked_lines($lines, '/dh');
	splice(@{ $lines->[ $dh[4] ]{event_ids} }, 2, 1);
	splice(@{ $lines->[ $dh[4] ]{records} }, 2, 1);
	fails_with('batch with a hole', $lines, 'dh', 'batch_shape');
}

# A log that is right but a connector that is not at rest cannot be compared
# exactly: with --require-quiescent that fails.
{
	$node->safe_psql('postgres', q{
		SELECT event_bridge.stop_connector('dh');
		INSERT INTO t VALUES (1000, 'late');});
	ok(wait_capture($node, 'postgres'), 'captured a record the stopped connector holds');
	my ($rc, $report, $out) = check_doctored(copy_log(), '--require-quiescent', '--connector', 'dh');
	is($rc, 1, 'pending records with --require-quiescent: the checker fails');
	($rc, $report, $out) = check_doctored(copy_log(), '--connector', 'dh');
	is($rc, 0, 'pending records without --require-quiescent: the live checks pass') or diag($out);
}

$node->stop;
done_testing();
