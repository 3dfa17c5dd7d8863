# The invariant checker (test/check_invariants.py) can fail: a clean run of
# two connectors passes, and doctored copies of its receiver log (a dropped
# line, a reordered pair, changed data, a changed systemTime, an old batch
# sent again, a batch acked twice with no crash in between, a record of a
# rolled-back transaction, a batch with a hole, a body changed byte by
# byte) are each reported as the violation they are; so are a dropped line
# and a changed op of a json connector with a filter.  Release 0.2's failure
# policy too: connectors that dead-letter the records an endpoint refuses
# (--poison) pass, whether it refuses them with a 400 (bisection) or in a
# partial batch response; a healthy record among the dead letters, a poison
# record acked, and records of a partial reply's acknowledged part sent
# again are reported, and the un-acked rest sent again is not.
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
	SELECT event_bridge.create_connector('dis', 's', '$url/dis', format => 'dis', batch_size => 7);
	SELECT event_bridge.create_connector('fj', 's', '$url/fj', format => 'json', batch_size => 6,
	    filter => '{"after": {"id": [{"op": "NumberNotInRange", "values": [[20, 60]]}]}}');});
$node->safe_psql('postgres', "INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 100) g");
$node->safe_psql('postgres', "UPDATE t SET v = v || '!' WHERE id % 4 = 0");
$node->safe_psql('postgres', "DELETE FROM t WHERE id % 10 = 0");
ok(wait_capture($node, 'postgres'), 'captured');
ok(wait_delivered($node, 'postgres', 'dh'), 'dh delivered');
ok(wait_delivered($node, 'postgres', 'dis'), 'dis delivered');
ok(wait_delivered($node, 'postgres', 'fj'), 'fj delivered');

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

checker_ok($node, 'postgres', $r, [ '--connector', 'fj' ],
	'a json connector whose filter leaves records out passes');

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

# Named events with a filter: a dropped line is still missing records, a
# changed op is changed content.
{
	my $lines = copy_log();
	my @fj = acked_lines($lines, '/fj');
	splice(@$lines, $fj[2], 1);
	fails_with('dropped line of a filtered json connector', $lines, 'fj', 'missing',
		'--connector', 'fj');
	$lines = copy_log();
	$lines->[ $fj[1] ]{records}[0]{data}{op} = 'DELETE';
	fails_with('changed op of a json event', $lines, 'fj', 'content', '--connector', 'fj');
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

# Release 0.2: two connectors of their own stream dead-letter the records
# holding a poison marker.  'dl' gets a 400 for every batch that holds one
# and bisects it; 'pr' gets a partial batch response (batchItemFailures)
# that acknowledges the records before the first poison record.
my %p = (
	dl => start_receiver(args => [ '--poison', 'POISON' ]),
	pr => start_receiver(args => [ '--poison', 'POISON', '--partial-response' ]));
$node->safe_psql('postgres', q{
	CREATE TABLE t2 (id int PRIMARY KEY, v text);
	ALTER TABLE t2 REPLICA IDENTITY FULL;
	SELECT event_bridge.create_stream('s2', ARRAY['t2']::regclass[], shard_count => 2);});
$node->safe_psql('postgres', join("\n", map {
	"SELECT event_bridge.create_connector('$_', 's2', 'http://127.0.0.1:$p{$_}{port}/$_',"
	  . " batch_size => 8, retry_interval => '50 ms', max_retries => 2,"
	  . " on_failure => 'dead_letter', partial_batch_response => true);" } sort keys %p));
$node->safe_psql('postgres',
	"INSERT INTO t2 SELECT g, CASE WHEN g IN (13, 31) THEN 'POISON' ELSE 'w' || g END"
	  . ' FROM generate_series(1, 60) g');
ok(wait_capture($node, 'postgres'), 'captured the records with the poison');
for my $c (sort keys %p)
{
	ok(wait_delivered($node, 'postgres', $c), "$c delivered around the poison records");
	is( $node->safe_psql('postgres', qq{
			SELECT string_agg(data->>9, ',' ORDER BY data->>8)
			  FROM event_bridge.dead_letters WHERE connector_name = '$c'}),
		'POISON,POISON',
		"$c: the two poison records are its dead letters");
	stop_receiver($p{$c});
}

# The endpoint saw each poison record refused alone: 'dl' after a bisection
# (smaller batches from the refused batch's first record on), 'pr' in a
# partial reply.
my $dl = receiver_log($p{dl});
my @refused = grep { ($_->{fault} // '') eq 'poison' } @$dl;
ok((grep { @{ $_->{event_ids} } > 1 } @refused), 'dl: a batch with a poison record was refused');
my %alone = map { $_->{event_ids}[0] => 1 } grep { @{ $_->{event_ids} } == 1 } @refused;
is(scalar(keys %alone), 2, 'dl: each poison record was refused alone (a bisection reached it)');
ok((grep { ($_->{fault} // '') eq 'item-failures' } @{ receiver_log($p{pr}) }),
	'pr: the endpoint answered with batchItemFailures');

checker_ok($node, 'postgres', $p{dl}, [ '--connector', 'dl', '--poison', 'POISON' ],
	'a bisection log with the poison records dead-lettered passes');
checker_ok($node, 'postgres', $p{pr}, [ '--connector', 'pr', '--poison', 'POISON' ],
	'a log of partial replies with the poison records dead-lettered passes');

# Dead letters that do not hold the poison: healthy records dead-lettered.
fails_with('healthy records among the dead letters', $dl, 'dl', 'dead_letters',
	'--connector', 'dl', '--poison', 'NO-SUCH-MARKER');

# A poison record acked: its refusal doctored into a 200.
{
	my $lines = decode_json(encode_json($dl));
	my ($alone) = grep { ($_->{fault} // '') eq 'poison' && @{ $_->{event_ids} } == 1 } @$lines;
	$alone->{status} = 200;
	$alone->{fault} = undef;
	fails_with('poison record acked', $lines, 'dl', 'dead_letters',
		'--connector', 'dl', '--poison', 'POISON');
}

# A batch acked whole, doctored into a partial reply that acknowledges its
# first record only, then sent again from its second record on: what a
# worker that honours batchItemFailures does.  $again: the whole batch sent
# again in between, with the same partial reply.
sub partial_reply
{
	my ($again) = @_;
	my $lines = decode_json(encode_json($dl));
	my ($i) = grep {
		($lines->[$_]{status} // 0) == 200
		  && !defined $lines->[$_]{fault}
		  && @{ $lines->[$_]{event_ids} } >= 3
	} 0 .. $#$lines;
	my $batch = $lines->[$i];
	$batch->{fault} = 'item-failures';
	$batch->{item_failures} = [ $batch->{event_ids}[1] ];
	my $rest = decode_json(encode_json($batch));
	delete $rest->{item_failures};
	$rest->{fault} = undef;
	shift @{ $rest->{event_ids} };
	shift @{ $rest->{records} };
	$rest->{body_sha256} = 'doctored';
	$rest->{t_ms} += 2;
	my @insert = ($rest);
	if ($again)
	{
		my $copy = decode_json(encode_json($batch));
		$copy->{t_ms} += 1;
		unshift @insert, $copy;
	}
	splice(@$lines, $i + 1, 0, @insert);
	return $lines;
}
{
	my ($rc, $report, $out) = check_doctored(partial_reply(0), '--connector', 'dl',
		'--poison', 'POISON');
	is($rc, 0, 'a partial reply, then the records from its first item failure on: passes')
	  or diag($out);
	fails_with('records a partial reply acknowledged sent again', partial_reply(1), 'dl',
		'duplicates', '--connector', 'dl', '--poison', 'POISON');
}

$node->stop;
done_testing();
