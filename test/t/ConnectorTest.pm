# ConnectorTest.pm: helpers of the connector TAP tests: the local function
# endpoint (test/receiver.py), its JSON-lines log, and checks of what it got.
package ConnectorTest;

use strict;
use warnings;
use Exporter 'import';
use FindBin;
use IPC::Run;
use JSON::PP;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep time);

our @EXPORT = qw(check_dead_letter_order start_receiver start_signing_endpoint
  start_cloudevents_endpoint start_kafka_mock kafka_command kafka_consume stop_receiver
  receiver_log wait_for_log
  acked_ids acked_by_shard check_shard_order wait_delivered
  run_checker checker_ok);

my $receiver_py = "$FindBin::RealBin/../receiver.py";
my $endpoint_js = "$FindBin::RealBin/../signing/endpoint.js";
my $cloudevents_js = "$FindBin::RealBin/../events/cloudevents_endpoint.js";
my $mock_c = "$FindBin::RealBin/../kafka/mock_cluster.c";
my $consume_js = "$FindBin::RealBin/../kafka/consume.js";
my $checker_py = "$FindBin::RealBin/../check_invariants.py";

# Receivers started and not stopped yet: stopped when the test ends, also
# when it dies half-way.
my @started;
END
{
	my $status = $?;
	kill 'TERM', @started if @started;
	waitpid($_, 0) for @started;
	$? = $status;
}

# Starts test/receiver.py on 127.0.0.1 and waits until it listens.  Options:
# port (0 = a free one), log (a file to append to), args (more arguments),
# program (the command before the arguments, python3 receiver.py by default).
# Returns {pid, port, log}.
sub start_receiver
{
	my (%opt) = @_;
	my $dir = PostgreSQL::Test::Utils::tempdir();
	my $log = $opt{log} // "$dir/receiver.jsonl";
	my $port_file = "$dir/port";
	my @cmd = (@{ $opt{program} // [ 'python3', $receiver_py ] }, '--port', $opt{port} // 0,
		'--port-file', $port_file, '--log', $log, @{ $opt{args} // [] });

	my $pid = fork();
	die "fork failed: $!" unless defined $pid;
	if ($pid == 0)
	{
		open STDOUT, '>', '/dev/null';
		exec(@cmd) or die "could not run receiver: $!";
	}
	push @started, $pid;
	my $port = first_line($port_file, 'receiver did not start');
	return { pid => $pid, port => $port, log => $log };
}

# The first line of a file that a starting program writes (renamed into
# place whole), once it is there; dies with $what after 30 seconds.
sub first_line
{
	my ($file, $what) = @_;
	my $deadline = time + 30;
	usleep(10_000) while !-s $file && time < $deadline;
	die $what unless -s $file;
	open my $fh, '<', $file or die $!;
	my $line = <$fh>;
	close $fh;
	chomp $line;
	return $line;
}

# Starts test/signing/endpoint.js, which verifies every request of a
# platform with its official signing code, accepting the secrets in the
# JSON array of the file keys (re-read at every request).  Options as
# start_receiver's.  Returns {pid, port, log, keys}.
sub start_signing_endpoint
{
	my ($platform, $keys, %opt) = @_;
	my $r = start_receiver(%opt, program => [ 'node', $endpoint_js ],
		args => [ '--platform', $platform, '--keys', $keys, @{ $opt{args} // [] } ]);
	$r->{keys} = $keys;
	return $r;
}

# Starts test/events/cloudevents_endpoint.js, which reads every batch with
# the official CloudEvents SDK and refuses (400) what is not a valid
# structured batch of event_bridge's events.  Returns {pid, port, log}.
sub start_cloudevents_endpoint
{
	return start_receiver(@_, program => [ 'node', $cloudevents_js ]);
}

# Builds test/kafka/mock_cluster.c (once per test run) and starts librdkafka's
# mock cluster with a topic.  Options: brokers (3), topic, partitions (4).
# Returns {pid, bootstrap, handle, in, out}; commands go in with
# kafka_command.
sub start_kafka_mock
{
	my (%opt) = @_;
	my $dir = PostgreSQL::Test::Utils::tempdir();
	my $bin = "$PostgreSQL::Test::Utils::tmp_check/mock_cluster";
	my $file = "$dir/bootstrap";
	system('cc', '-O2', '-Wall', '-Werror', '-o', $bin, $mock_c, '-lrdkafka') == 0
	  or die 'could not build the Kafka mock cluster'
	  unless -x $bin;
	my ($in, $out) = ('', '');
	my $h = IPC::Run::start(
		[ $bin, '--brokers', $opt{brokers} // 3, '--topic', $opt{topic},
		  '--partitions', $opt{partitions} // 4, '--bootstrap-file', $file ],
		'<', \$in, '>', \$out);
	my $bootstrap = first_line($file, 'the Kafka mock cluster did not start');
	return { handle => $h, bootstrap => $bootstrap, in => \$in, out => \$out };
}

# Sends a command to the mock cluster (see mock_cluster.c) and waits for its answer.
sub kafka_command
{
	my ($k, $command) = @_;
	my $before = length(${ $k->{out} });
	${ $k->{in} } .= "$command\n";
	$k->{handle}->pump while length(${ $k->{out} }) == $before;
	return substr(${ $k->{out} }, $before);
}

# Reads a topic back with test/kafka/consume.js (kafkajs); returns the
# messages, decoded, or undef if fewer than $count came.  With $idle_ms it
# reads on until no message came for that long (duplicates come too).
sub kafka_consume
{
	my ($k, $topic, $count, $idle_ms) = @_;
	my ($out, $err) = ('', '');
	IPC::Run::run([ 'node', $consume_js, '--brokers', $k->{bootstrap}, '--topic', $topic,
					'--count', $idle_ms ? 1_000_000_000 : $count, '--timeout-ms', 60000,
					$idle_ms ? ('--idle-ms', $idle_ms) : () ], '>', \$out, '2>', \$err);
	my @messages = map { decode_json($_) } grep { /\S/ } split /\n/, $out;
	$err =~ s/^ready\n//mg;
	diag("consume.js: $err") if $err ne '';
	return scalar(@messages) >= $count ? \@messages : undef;
}

# Stops a receiver and waits until its port is free.
sub stop_receiver
{
	my ($r) = @_;
	return unless $r->{pid};
	kill 'TERM', $r->{pid};
	waitpid($r->{pid}, 0);
	@started = grep { $_ != $r->{pid} } @started;
	delete $r->{pid};
}

# Every complete line of a receiver's log, decoded, in arrival order.  Reads
# only what was added since the last call.
sub receiver_log
{
	my ($r) = @_;
	$r->{entries} //= [];
	$r->{offset} //= 0;
	open my $fh, '<', $r->{log} or return $r->{entries};
	seek($fh, $r->{offset}, 0);
	while (my $line = <$fh>)
	{
		last unless $line =~ /\n\z/;    # a line being written
		push @{ $r->{entries} }, decode_json($line);
		$r->{offset} += length($line);
	}
	close $fh;
	return $r->{entries};
}

# Polls a receiver's log until $cond->(entries) holds; returns the entries,
# or undef after the default TAP timeout.
sub wait_for_log
{
	my ($r, $cond) = @_;
	my $deadline = time + $PostgreSQL::Test::Utils::timeout_default;
	while (time < $deadline)
	{
		my $entries = receiver_log($r);
		return $entries if $cond->($entries);
		usleep(20_000);
	}
	return undef;
}

# Event ids of the records acknowledged by a 2xx, in arrival order; only
# those of one path (e.g. '/dis') if given.  A 2xx that listed
# batchItemFailures acknowledged only the records before the first listed;
# a 2xx that said the function failed (test/signing/endpoint.js) none.
sub acked_ids
{
	my ($entries, $path) = @_;
	my @ids;
	for my $e (@$entries)
	{
		next
		  unless defined $e->{status}
		  && $e->{status} >= 200
		  && $e->{status} < 300
		  && ($e->{fault} // '') ne 'function-error'
		  && (!defined $path || $e->{path} eq $path);
		my %failed = map { $_ => 1 } @{ $e->{item_failures} // [] };
		for my $id (@{ $e->{event_ids} })
		{
			last if $failed{$id};
			push @ids, $id;
		}
	}
	return \@ids;
}

# The acknowledged sequences of each shard, in arrival order: {shard => [seq, ...]}.
sub acked_by_shard
{
	my ($ids) = @_;
	my %by_shard;
	for my $id (@$ids)
	{
		my ($shard, $seq) = split /:/, $id;
		push @{ $by_shard{$shard} }, $seq;
	}
	return \%by_shard;
}

# Checks that every shard's acknowledged sequences are first .. next-1, each
# once and in order.  $next is {shard => next_sequence}.
sub check_shard_order
{
	my ($ids, $next, $what, $first) = @_;
	my $by_shard = acked_by_shard($ids);
	for my $shard (sort keys %$next)
	{
		my @want = (($first // 0) .. $next->{$shard} - 1);
		is_deeply($by_shard->{$shard} // [], \@want,
			"$what: shard $shard got sequences $want[0]..$want[-1] once each, in order")
		  or diag(explain($by_shard->{$shard}));
	}
}

# With dead letters: checks that every shard's sequences from the
# connector's first position (its start time) to next-1 are
# each acknowledged or a dead letter of the connector, not both, and that
# the acknowledged ones first arrived in increasing order.  Returns the
# dead letters as {shard => [seq, ...]}.
sub check_dead_letter_order
{
	my ($node, $db, $connector, $entries, $what) = @_;
	my (%next, %first);
	for (split /\n/, $node->safe_psql($db, qq{
		SELECT h.shard_id, h.next_sequence,
		       coalesce((SELECT min(r.sequence) FROM event_bridge.records r
		                  WHERE r.stream_id = h.stream_id AND r.shard_id = h.shard_id
		                    AND r.system_time >= cs.skip_before), h.next_sequence)
		  FROM event_bridge.shards h
		  JOIN event_bridge.connectors c USING (stream_id)
		  JOIN event_bridge.connector_shards cs
		    ON cs.connector_id = c.connector_id AND cs.shard_id = h.shard_id
		 WHERE c.connector_name = '$connector' ORDER BY 1}))
	{
		my ($shard, $next, $first) = split /\|/;
		($next{$shard}, $first{$shard}) = ($next, $first);
	}
	my %dead;
	for (split /\n/, $node->safe_psql($db, qq{
		SELECT shard_id, sequence FROM event_bridge.dead_letters
		 WHERE connector_name = '$connector' ORDER BY 1, 2}))
	{
		my ($shard, $seq) = split /\|/;
		push @{ $dead{$shard} }, $seq;
	}
	my $acked = acked_by_shard(acked_ids($entries));
	for my $shard (sort keys %next)
	{
		my (%seen, @first);
		for my $seq (@{ $acked->{$shard} // [] })
		{
			push @first, $seq unless $seen{$seq}++;
		}
		my %dead_set = map { $_ => 1 } @{ $dead{$shard} // [] };
		my @want = grep { !$dead_set{$_} } ($first{$shard} .. $next{$shard} - 1);
		is_deeply(\@first, \@want,
			"$what: shard $shard: every record but its " . scalar(keys %dead_set)
			  . " dead letter(s) arrived, first in order")
		  or diag(explain({ got => \@first, dead => $dead{$shard} }));
		ok(!grep({ $dead_set{$_} } @first), "$what: shard $shard: no dead letter was acknowledged");
	}
	return \%dead;
}

# Runs test/check_invariants.py on a receiver's log (or a log file given as
# $log) against a node's database.  Returns (exit code, stdout, stderr);
# exit 0 = every invariant held, 1 = a violation, 2 = a usage or database
# error.
sub run_checker
{
	my ($node, $db, $log, @args) = @_;
	$log = $log->{log} if ref $log;
	my ($out, $err) = ('', '');
	IPC::Run::run(
		[ 'python3', $checker_py, '-h', $node->host, '-p', $node->port, '-d', $db,
		  '--log', $log, @args ],
		'>', \$out, '2>', \$err);
	return ($? >> 8, $out, $err);
}

# Asserts that the invariant checker finds every invariant held (exit 0)
# for a receiver's log, with the connectors at rest; prints its report on
# failure.  $args: more checker arguments (e.g. ['--connector', 'c1']).
sub checker_ok
{
	my ($node, $db, $r, $args, $what) = @_;
	my ($rc, $out, $err) = run_checker($node, $db, $r, '--require-quiescent', @{ $args // [] });
	is($rc, 0, $what) or diag("check_invariants.py exit $rc:\n$out$err");
	note($out);
	return $rc == 0;
}

# Waits until a connector has nothing pending and every shard is at its head.
sub wait_delivered
{
	my ($node, $db, $connector) = @_;
	return $node->poll_query_until($db, qq{
		SELECT bool_and(pending = 0 AND delivered_sequence = next_sequence - 1)
		  FROM event_bridge.shard_status WHERE connector_name = '$connector'});
}

1;
