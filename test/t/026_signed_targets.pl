# Signed invocations of the function platforms (DESIGN 9.4).  Every request
# goes to test/signing/endpoint.js, which verifies it with the platform's
# official signing code from npm (Alibaba's OpenAPI signer, Huawei Cloud's
# SDK signer, AWS's @smithy/signature-v4, standardwebhooks) and refuses a
# mismatch with 403.  Each target delivers every record once, in order;
# each platform's function error in a 2xx is retried with a fresh
# signature; async invocations are accepted with 202; a wrong secret
# suspends the connector and shows why; a rotation mid-stream loses
# nothing; no secret reaches the server log.
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

my $node = eb_node('signed_targets');
# The server log as at default settings: statements are not logged (the
# test framework logs them all), errors are.
$node->append_conf('postgresql.conf', 'log_statement = none');
$node->restart;
$node->safe_psql('postgres', q{
	CREATE EXTENSION event_bridge;
	CREATE TABLE t (id int PRIMARY KEY, v text);
	ALTER TABLE t REPLICA IDENTITY FULL;
	SELECT event_bridge.create_stream('s', ARRAY['t']::regclass[], shard_count => 2);});

my $dir = PostgreSQL::Test::Utils::tempdir();

# Writes the secrets an endpoint accepts (a JSON array) to a file.
sub write_keys
{
	my ($file, @secrets) = @_;
	open my $fh, '>', "$file.tmp" or die $!;
	print $fh encode_json(\@secrets);
	close $fh;
	rename "$file.tmp", $file or die $!;
	return $file;
}

# Every secret below holds "sekrit", which must never reach the server log.
my %platform = (
	fc => {
		provider => 'aliyun', target => 'fc',
		secret => { access_key_id => 'LTAI_TEST', access_key_secret => 'fc-sekrit-1' },
		rotated => { access_key_id => 'LTAI_TEST2', access_key_secret => 'fc-sekrit-2',
			security_token => 'fc-sts-sekrit' },
		path => '/2023-03-30/functions/eb-fn/invocations',
		error => 'x-fc-error-type: UnhandledInvocationError' },
	functiongraph => {
		provider => 'huaweicloud', target => 'functiongraph',
		secret => { access_key => 'HWAK_TEST', secret_key => 'hw-sekrit-1',
			security_token => 'hw-sts-sekrit' },
		rotated => { access_key => 'HWAK_TEST2', secret_key => 'hw-sekrit-2' },
		path => '/v2/0123456789abcdef/fgs/functions/'
		  . 'urn:fss:cn-north-4:0123456789abcdef:function:default:eb-fn:latest/invocations',
		error => 'X-Is-Func-Err: true' },
	lambda => {
		provider => 'aws', target => 'lambda',
		secret => { access_key_id => 'AKIDTEST', secret_access_key => 'aws-sekrit-1',
			session_token => 'aws-sts-sekrit', region => 'eu-west-1' },
		rotated => { access_key_id => 'AKIDTEST2', secret_access_key => 'aws-sekrit-2',
			region => 'eu-west-1' },
		path => '/2015-03-31/functions/eb-fn/invocations',
		error => 'X-Amz-Function-Error: Unhandled' },
	webhook => {
		provider => 'webhook', target => 'http',
		secret => { secret => 'whsec_' . 'c2Vrcml0' x 5 },
		rotated => { secret => 'whsec_' . 'U0VLUklU' x 5 },
		path => '/hook' },
	token => {
		provider => 'token', target => 'functiongraph',
		secret => { header => 'X-Auth-Token', value => 'tok-sekrit-1' },
		rotated => { header => 'X-Auth-Token', value => 'tok-sekrit-2' },
		path => '/v2/0123456789abcdef/fgs/functions/'
		  . 'urn:fss:cn-north-4:0123456789abcdef:function:default:eb-fn:latest/invocations' },
);
my @platforms = sort keys %platform;

# Creates a credential and a connector to a signing endpoint.
sub create_connector
{
	my ($name, $p, $r, $secret, $extra) = @_;
	my $json = encode_json($secret);
	$node->safe_psql('postgres', qq{
		SELECT event_bridge.create_credential('$name', '$platform{$p}{provider}', '$json');
		SELECT event_bridge.create_connector('$name', 's',
			'http://127.0.0.1:$r->{port}$platform{$p}{path}', start_time => NULL, batch_size => 10,
			retry_interval => '1100 ms', target => '$platform{$p}{target}',
			credential => '$name'$extra);});
}

# 1. Each target: its function fails twice (a function error in a 2xx,
# where the platform has one), then every record arrives once, in order,
# in requests that the official code verified.
my %r;
for my $p (@platforms)
{
	$r{$p} = start_signing_endpoint($p, write_keys("$dir/$p.keys", $platform{$p}{secret}),
		args => [ '--function-error-first', 2 ]);
	create_connector($p, $p, $r{$p}, $platform{$p}{secret}, '');
}
$node->safe_psql('postgres', q{INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 60) g});
ok(wait_capture($node, 'postgres'), 'captured');
my %next = split /[|\n]/, $node->safe_psql('postgres',
	q{SELECT shard_id, next_sequence FROM event_bridge.shards ORDER BY 1});

for my $p (@platforms)
{
	ok(wait_delivered($node, 'postgres', $p), "$p: every record delivered");
	my $log = receiver_log($r{$p});
	my @refused = grep { !$_->{verified} } @$log;
	is(scalar(@refused), 0, "$p: the official signing code verified every request")
	  or diag(explain([ map { $_->{reason} } @refused ]));
	check_shard_order(acked_ids($log), \%next, $p);
	next unless $platform{$p}{error};

	my @errors = grep { ($_->{fault} // '') eq 'function-error' } @$log;
	is(scalar(@errors), 2, "$p: two function errors answered");
	my ($first) = grep { @{ $_->{event_ids} } } @errors;
	my @attempts = grep { $_->{event_ids}[0] eq $first->{event_ids}[0] } @$log;
	ok(@attempts >= 2 && $attempts[-1]{signed_at} > $attempts[0]{signed_at},
		"$p: the retry of a failed batch is signed afresh, at a later time");
	like($node->safe_psql('postgres', qq{
		SELECT string_agg(DISTINCT error, ', ') FROM event_bridge.connector_attempts_log
		 WHERE connector_name = '$p' AND http_status = 200 AND error IS NOT NULL}),
		qr/\Q$platform{$p}{error}\E/i,
		"$p: the attempts log shows the function error in a 200");
}

# 2. Async invocations: the platform queues the batch and answers 202.
for my $p (qw(fc functiongraph lambda))
{
	my $name = "${p}_async";
	$r{$name} = start_signing_endpoint($p, write_keys("$dir/$name.keys", $platform{$p}{secret}));
	create_connector($name, $p, $r{$name}, $platform{$p}{secret}, ", invocation => 'async'");
	ok(wait_delivered($node, 'postgres', $name), "$name: every record delivered");
	my $log = receiver_log($r{$name});
	is(scalar(grep { $_->{verified} && $_->{async} && $_->{status} == 202 } @$log),
		scalar(@$log), "$name: every request asked for async invocation and got 202");
	check_shard_order(acked_ids($log), \%next, $name);
}

# 3. A wrong secret: the platform refuses (403), the connector is suspended
# with the status in last_error; with the right secret it goes on from its
# offsets, and nothing is lost.
my %wrong = (%{ $platform{fc}{secret} }, access_key_secret => 'fc-sekrit-wrong');
$r{wrong} = start_signing_endpoint('fc', write_keys("$dir/wrong.keys", $platform{fc}{secret}));
create_connector('wrong', 'fc', $r{wrong}, \%wrong, '');
ok($node->poll_query_until('postgres', q{
	SELECT state = 'SUSPENDED' AND last_http_status = 403 AND last_error LIKE '%403%'
	  FROM event_bridge.connector_status WHERE connector_name = 'wrong'}),
	'a wrong secret: refused with 403, the connector is SUSPENDED and says why');
my $secret = encode_json($platform{fc}{secret});
$node->safe_psql('postgres', qq{
	SELECT event_bridge.alter_credential('wrong', '$secret');
	SELECT event_bridge.resume_connector('wrong');});
ok(wait_delivered($node, 'postgres', 'wrong'), 'with the right secret, every record delivered');
check_shard_order(acked_ids(receiver_log($r{wrong})), \%next, 'after a wrong secret');

# 4. Rotation mid-stream.  While both keys are valid (as on the platforms,
# where the old key works until it is disabled), alter_credential: every
# shard goes from the old key to the new one and never back; then the old
# key is disabled, and nothing is refused or lost.
for my $p (@platforms)
{
	write_keys($r{$p}{keys}, $platform{$p}{secret}, $platform{$p}{rotated});
	my $json = encode_json($platform{$p}{rotated});
	$node->safe_psql('postgres', "SELECT event_bridge.alter_credential('$p', '$json')");
}
$node->safe_psql('postgres', q{INSERT INTO t SELECT g, 'v' || g FROM generate_series(61, 100) g});
for my $p (@platforms)
{
	ok(wait_delivered($node, 'postgres', $p), "$p: delivered after the rotation");
	# The old key disabled: what it signs no longer verifies.
	my %disabled = %{ $platform{$p}{secret} };
	$disabled{$_} = 'disabled' for grep { exists $disabled{$_} }
	  qw(access_key_secret secret_key secret_access_key value);
	$disabled{secret} = 'whsec_' . 'ZGlzYWJs' x 5 if exists $disabled{secret};
	write_keys($r{$p}{keys}, \%disabled, $platform{$p}{rotated});
}
$node->safe_psql('postgres', q{INSERT INTO t SELECT g, 'v' || g FROM generate_series(101, 130) g});
ok(wait_capture($node, 'postgres'), 'captured after the rotation');
%next = split /[|\n]/, $node->safe_psql('postgres',
	q{SELECT shard_id, next_sequence FROM event_bridge.shards ORDER BY 1});
for my $p (@platforms)
{
	ok(wait_delivered($node, 'postgres', $p), "$p: delivered with the old key disabled");
	my $log = receiver_log($r{$p});
	is(scalar(grep { !$_->{verified} } @$log), 0, "$p: no request refused across the rotation");
	my %keys_by_shard;
	push @{ $keys_by_shard{ $_->{shard} } }, $_->{key_index}
	  for grep { defined $_->{shard} } @$log;
	my @back = grep {
		my @k = @{ $keys_by_shard{$_} };
		grep { $k[$_] < $k[ $_ - 1 ] } 1 .. $#k
	} keys %keys_by_shard;
	is_deeply(\@back, [], "$p: no shard went back to the old key");
	check_shard_order(acked_ids($log), \%next, "$p after the rotation");
}

# 5. No secret in the server log, not even of a refused call.
$node->psql('postgres', q~SELECT event_bridge.create_credential('leak', 'aws',
	'{"access_key_id": "AKID", "secret_access_key": "leak-sekrit", "hunter": 1')~);
my $server_log = slurp_file($node->logfile);
unlike($server_log, qr/sekrit/, 'no secret in the server log');
like($server_log, qr/secret is not valid JSON/, 'the refused call is in the log, without its statement');

$node->stop;
done_testing();
