# on_failure => 'dead_letter' (DESIGN 9.3): a record the function refuses
# is found by bisection and set aside, and every other record still arrives
# in order; partial batch responses, max_record_age, skip_batch, redelivery
# and purging of dead letters, and a crash in the middle of a bisection.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);
use EventBridgeTest;
use ConnectorTest;

my $node = eb_node('dead_letters');
$node->safe_psql('postgres', q{
	CREATE EXTENSION event_bridge;
	CREATE TABLE t (id int PRIMARY KEY, v text);
	ALTER TABLE t REPLICA IDENTITY FULL;
	SELECT event_bridge.create_stream('s', ARRAY['t']::regclass[], shard_count => 2);});

# The function refuses (400) every batch that holds a record with POISON.
my @poison = ('--poison', 'POISON');
my %r = (
	bisect => start_receiver(args => [@poison]),
	single => start_receiver(args => [@poison]),
	partial => start_receiver(args => [ @poison, '--partial-response' ]),
	suspend => start_receiver(args => [@poison]),
	refusing => start_receiver(args => [ '--fail-first', 1000, '--fail-status', 401 ]));
my %settings = (
	bisect => "batch_size => 100, on_failure => 'dead_letter'",
	single => "batch_size => 1, on_failure => 'dead_letter'",
	partial => "batch_size => 100, on_failure => 'dead_letter', partial_batch_response => true,"
	  . " max_retries => 2, retry_interval => '50 ms'",
	suspend => "batch_size => 10",
	refusing => "batch_size => 100, on_failure => 'dead_letter'");
$node->safe_psql('postgres', join("\n", map {
	"SELECT event_bridge.create_connector('$_', 's', 'http://127.0.0.1:$r{$_}{port}/$_', $settings{$_});"
} sort keys %r));

# 10,000 records, three of them poison.
my @poisoned = (1234, 5678, 9001);
$node->safe_psql('postgres', "INSERT INTO t SELECT g, CASE WHEN g IN (@{[ join ',', @poisoned ]})"
	  . " THEN 'POISON' ELSE 'ok ' || g END FROM generate_series(1, 10000) g");
ok(wait_capture($node, 'postgres'), 'captured');

sub dead_letter_ids
{
	my ($connector) = @_;
	return $node->safe_psql('postgres', qq{
		SELECT string_agg((data->>8)::text, ',' ORDER BY (data->>8)::int)
		  FROM event_bridge.dead_letters WHERE connector_name = '$connector'});
}

# Bisection at batch_size 100: only the poison records become dead letters.
for my $c ('bisect', 'single', 'partial')
{
	ok(wait_delivered($node, 'postgres', $c), "$c: everything delivered or dead-lettered");
	is(dead_letter_ids($c), join(',', @poisoned), "$c: exactly the poison records are dead letters");
	check_dead_letter_order($node, 'postgres', $c, receiver_log($r{$c}), $c);
	checker_ok($node, 'postgres', $r{$c}, [ '--connector', $c, '--poison', 'POISON' ],
		"$c: the invariant checker agrees");
	is($node->safe_psql('postgres', qq{
		SELECT state || ' ' || dead_letters FROM event_bridge.connector_status WHERE connector_name = '$c'}),
		'RUNNING 3', "$c: RUNNING, 3 dead letters shown");
}
is($node->safe_psql('postgres', q{
	SELECT string_agg(DISTINCT http_status || ' ' || error, '; ') FROM event_bridge.dead_letters
	 WHERE connector_name = 'bisect'}),
	'400 HTTP status 400: the function refused the batch', 'the dead letters keep the status and error');

# How long a poison record held its shard: from the first refused batch
# that held it to the attempt that set it aside.
my %first_refusal;
for my $e (@{ receiver_log($r{bisect}) })
{
	next unless ($e->{status} // 0) == 400;
	for my $rec (@{ $e->{records} })
	{
		$first_refusal{ $rec->{event_id} } //= $e->{t_ms}
		  if ref $rec->{data} eq 'ARRAY' && grep { defined && $_ eq 'POISON' } @{ $rec->{data} };
	}
}
for (split /\n/, $node->safe_psql('postgres', q{
	SELECT event_id, extract(epoch FROM failed_at) * 1000, attempts FROM event_bridge.dead_letters
	 WHERE connector_name = 'bisect' ORDER BY 1}))
{
	my ($id, $at, $attempts) = split /\|/;
	note(sprintf('bisect: %s held its shard %.0f ms, %d failed attempts (batch_size 100)',
			$id, $at - $first_refusal{$id}, $attempts));
	cmp_ok($attempts, '<=', 8, "bisect: $id was found in at most 8 attempts (log2 100 + 1)");
}
is($node->safe_psql('postgres',
		"SELECT min(attempts) || '-' || max(attempts) FROM event_bridge.dead_letters WHERE connector_name = 'single'"),
	'1-1', 'single: at batch_size 1 a poison record is set aside after its one attempt');

# The partial batch response acknowledged the records before the poison, so
# none of them was sent twice.
my %sent;
my $twice = 0;
for my $e (@{ receiver_log($r{partial}) })
{
	next unless ($e->{status} // 0) == 200;
	my @ids = @{ $e->{event_ids} };
	my %failed = map { $_ => 1 } @{ $e->{item_failures} // [] };
	for my $id (@ids)
	{
		last if $failed{$id};
		$twice++ if $sent{$id}++;
	}
}
is($twice, 0, 'partial: no acknowledged record was sent again');

# An endpoint that refuses (401) suspends the connector: nothing is a dead letter.
ok($node->poll_query_until('postgres', q{
	SELECT state = 'SUSPENDED' AND dead_letters = 0 FROM event_bridge.connector_status
	 WHERE connector_name = 'refusing'}),
	'refusing: 401 suspends the connector and dead-letters nothing');

# on_failure 'suspend': a poison record suspends its shard; skip_batch moves
# that batch (10 records) to the dead letters and the shard goes on.
my @poison_shards = split /\n/, $node->safe_psql('postgres', q{
	SELECT DISTINCT shard_id FROM event_bridge.records WHERE data LIKE '%POISON%' ORDER BY 1});
ok($node->poll_query_until('postgres', qq{
	SELECT count(*) = @{[ scalar @poison_shards ]} FROM event_bridge.shard_status
	 WHERE connector_name = 'suspend' AND state = 'SUSPENDED'}),
	'suspend: each shard with a poison record is suspended');
for my $shard (@poison_shards)
{
	is($node->safe_psql('postgres', "SELECT event_bridge.skip_batch('suspend', $shard)"), '10',
		"skip_batch moves the failed batch of 10 records of shard $shard");
}
is($node->safe_psql('postgres', q{
	SELECT count(*) FILTER (WHERE data::text LIKE '%POISON%') || '/' || count(*)
	  FROM event_bridge.dead_letters WHERE connector_name = 'suspend'}),
	scalar(@poison_shards) . '/' . 10 * @poison_shards, 'one poison record in each batch skipped');

# alter_connector while it delivers: from suspend to dead_letter; the next
# poison records are set aside without suspending.
$node->safe_psql('postgres', q{SELECT event_bridge.alter_connector('suspend', on_failure => 'dead_letter');
	SELECT event_bridge.resume_connector('suspend');});
ok(wait_delivered($node, 'postgres', 'suspend'), 'suspend: altered to dead_letter, delivered');
is($node->safe_psql('postgres', q{
	SELECT count(*) FROM event_bridge.dead_letters WHERE connector_name = 'suspend' AND data::text LIKE '%POISON%'}),
	'3', 'suspend: all three poison records are dead letters');
check_dead_letter_order($node, 'postgres', 'suspend', receiver_log($r{suspend}), 'suspend');

# Redelivery: the function is fixed (a receiver that takes everything), the
# dead letters of bisect are sent again and leave; those of single are purged.
my $fixed = start_receiver();
$node->safe_psql('postgres', qq{
	SELECT event_bridge.alter_connector('bisect', endpoint => 'http://127.0.0.1:$fixed->{port}/bisect')});
is($node->safe_psql('postgres', q{SELECT event_bridge.redeliver_dead_letters('bisect', ARRAY['0:0'])}),
	'0', 'redeliver of an eventId that is no dead letter queues nothing');
is($node->safe_psql('postgres', q{SELECT event_bridge.redeliver_dead_letters('bisect')}), '3',
	'redeliver_dead_letters queues the three');
ok($node->poll_query_until('postgres', q{
	SELECT dead_letters = 0 FROM event_bridge.connector_status WHERE connector_name = 'bisect'}),
	'they were acknowledged and left the dead letters');
my @redelivered = map { @{ $_->{records} } } grep { ($_->{status} // 0) == 200 } @{ receiver_log($fixed) };
is(join(',', sort map { $_->{data}[8] } @redelivered), join(',', sort @poisoned),
	'the fixed function got exactly the three poison records');
is($node->safe_psql('postgres', q{SELECT event_bridge.purge_dead_letters('single', '1 hour')}), '0',
	'purge_dead_letters older than an hour: none');
is($node->safe_psql('postgres', q{SELECT event_bridge.purge_dead_letters('single')}), '3',
	'purge_dead_letters: all three');
is($node->safe_psql('postgres', q{
	SELECT dead_letters FROM event_bridge.connector_status WHERE connector_name = 'single'}),
	'0', 'none left');

# max_record_age: a stopped connector's records grow old; started, they go
# to the dead letters unsent.
$node->safe_psql('postgres', qq{
	SELECT event_bridge.create_connector('aged', 's', 'http://127.0.0.1:$fixed->{port}/aged',
		on_failure => 'dead_letter', max_record_age => '1 second', batch_size => 50);
	SELECT event_bridge.stop_connector('aged');
	INSERT INTO t SELECT g, 'aged' FROM generate_series(20001, 20100) g;});
ok(wait_capture($node, 'postgres'), 'captured');
sleep(2);
$node->safe_psql('postgres', q{SELECT event_bridge.start_connector('aged')});
ok(wait_delivered($node, 'postgres', 'aged'), 'aged: done');
is($node->safe_psql('postgres', q{
	SELECT count(*) || ' ' || bool_and(error LIKE '%older than max_record_age%')::text
	  FROM event_bridge.dead_letters WHERE connector_name = 'aged'}),
	'100 true', 'aged: the 100 old records are dead letters, with the reason');
is(scalar(grep { $_->{path} eq '/aged' } @{ receiver_log($fixed) }), 0, 'aged: none was sent');

# A record larger than max_request_bytes is a dead letter at once, unsent;
# the records around it arrive.
$node->safe_psql('postgres', qq{
	SELECT event_bridge.create_connector('big', 's', 'http://127.0.0.1:$fixed->{port}/big',
		on_failure => 'dead_letter', max_request_bytes => 2048, start_time => now());
	INSERT INTO t VALUES (40001, 'small'), (40002, repeat('x', 4096)), (40003, 'small');});
ok(wait_capture($node, 'postgres') && wait_delivered($node, 'postgres', 'big'), 'big: done');
is($node->safe_psql('postgres', q{
	SELECT (data->>8) || ' ' || (error LIKE '%too big for a request of at most 2048 bytes%')::text
	  FROM event_bridge.dead_letters WHERE connector_name = 'big'}),
	'40002 true', 'big: the big record is a dead letter, with the reason');
is(join(',', sort map { $_->{data}[8] } map { @{ $_->{records} } }
	  grep { $_->{path} eq '/big' } @{ receiver_log($fixed) }),
	'40001,40003', 'big: the two small records were sent');

# The function refuses one record chosen by its eventId.
my $before = $node->safe_psql('postgres', 'SELECT now()');
$node->safe_psql('postgres', q{INSERT INTO t SELECT g, 'byid-' || g FROM generate_series(60001, 60020) g});
ok(wait_capture($node, 'postgres'), 'captured');
my $chosen = $node->safe_psql('postgres', q{
	SELECT shard_id || ':' || sequence FROM event_bridge.records WHERE data LIKE '%"byid-60007"%'});
$r{byid} = start_receiver(args => [ '--poison-event-id', $chosen ]);
$node->safe_psql('postgres', qq{
	SELECT event_bridge.create_connector('byid', 's', 'http://127.0.0.1:$r{byid}{port}/byid',
		batch_size => 10, on_failure => 'dead_letter', start_time => '$before')});
ok(wait_delivered($node, 'postgres', 'byid'), 'byid: done');
is($node->safe_psql('postgres', q{
	SELECT string_agg(event_id, ',') FROM event_bridge.dead_letters WHERE connector_name = 'byid'}),
	$chosen, "byid: exactly $chosen is a dead letter");
check_dead_letter_order($node, 'postgres', 'byid', receiver_log($r{byid}), 'byid');

# A hostile or broken function answers 2xx with a batchItemFailures body
# that cannot be used: the batch failed (it is retried), nothing counts as
# delivered, and the worker does not fall over (a deep nesting would make
# the JSON parser recurse).
my %hostile = (
	nested => [ '[' x 100000, 'nests deeper than 16 levels' ],
	keyless => [ '{"batchItemFailures":[{"ItemIdentifier":"0:0"}]}', 'has no itemIdentifier' ],
	stranger => [ '{"batchItemFailures":[{"itemIdentifier":"9:99999999"}]}',
		'no eventId of the batch ("9:99999999")' ],
	notalist => [ '{"batchItemFailures":"0:1"}', 'batchItemFailures is not a list' ]);
my $delivery_pid = worker_pid($node, 'postgres', 'delivery');
for my $name (sort keys %hostile)
{
	$r{$name} = start_receiver(args => [ '--reply-body', $hostile{$name}[0] ]);
	$node->safe_psql('postgres', qq{
		SELECT event_bridge.create_connector('$name', 's', 'http://127.0.0.1:$r{$name}{port}/$name',
			partial_batch_response => true, retry_interval => '100 ms', start_time => now())});
}
$node->safe_psql('postgres', q{INSERT INTO t SELECT g, 'h' FROM generate_series(50001, 50010) g});
for my $name (sort keys %hostile)
{
	ok($node->poll_query_until('postgres', qq{
		SELECT bool_or(failures >= 2 AND last_error LIKE '%$hostile{$name}[1]%, so the batch failed')
		   AND sum(delivered) = 0
		  FROM event_bridge.shard_status WHERE connector_name = '$name'}),
		"$name: a 200 with this body fails the batch, which is retried");
	$node->safe_psql('postgres', "SELECT event_bridge.drop_connector('$name')");
}
is(worker_pid($node, 'postgres', 'delivery'), $delivery_pid, 'the delivery worker never restarted');

# A crash in the middle of a bisection loses nothing.
my $slow = start_receiver(args => [ @poison, '--delay-ms', 100 ]);
$node->safe_psql('postgres', qq{
	SELECT event_bridge.create_connector('crash', 's', 'http://127.0.0.1:$slow->{port}/crash',
		batch_size => 100, on_failure => 'dead_letter', start_time => now());
	INSERT INTO t SELECT g, CASE WHEN g = 30500 THEN 'POISON' ELSE 'c' END
	  FROM generate_series(30001, 31000) g;});
ok(wait_for_log($slow, sub { grep { ($_->{status} // 0) == 400 } @{ $_[0] } }),
	'crash: bisection started');
$node->stop('immediate');
$node->start;
ok(wait_delivered($node, 'postgres', 'crash'), 'crash: after the restart everything is done');
is($node->safe_psql('postgres', q{
	SELECT count(*) || ' ' || bool_and(data::text LIKE '%POISON%') FROM event_bridge.dead_letters
	 WHERE connector_name = 'crash'}), '1 true', 'crash: only the poison record is a dead letter');
checker_ok($node, 'postgres', $slow, [ '--connector', 'crash', '--poison', 'POISON' ],
	'crash: the invariant checker agrees');

stop_receiver($_) for (values %r, $fixed, $slow);
$node->stop;
done_testing();
