# The attacker's test: a hostile database owner and hostile event_bridge
# admins try to run code as the superuser the workers and the API run as,
# to read tables they may not SELECT, and to find header secrets in the
# log or in pg_stat_activity.  Every attempt must fail.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);
use EventBridgeTest;
use ConnectorTest;

# log_statement as a server has it by default (the test framework logs all).
my $node = eb_node('security', "event_bridge.cleanup_interval = '200ms'\nlog_statement = none\n");
my $r = start_receiver();
my $url = "http://127.0.0.1:$r->{port}";
my $super = $node->safe_psql('postgres', 'SELECT current_user');

# Roles: the database owner, two admins, a nobody.  The owner owns the
# database and its public schema.
$node->safe_psql('postgres', qq{
	CREATE ROLE event_bridge_admin NOLOGIN;   -- CREATE EXTENSION keeps it
	CREATE ROLE owner LOGIN;
	CREATE ROLE alice LOGIN IN ROLE event_bridge_admin;
	CREATE ROLE mallory LOGIN IN ROLE event_bridge_admin;
	CREATE ROLE nobody LOGIN;
	CREATE DATABASE victim OWNER owner;});
$node->safe_psql('victim', q{
	ALTER SCHEMA public OWNER TO owner;
	CREATE EXTENSION event_bridge;
	CREATE TABLE secret (id int PRIMARY KEY, pin text);
	ALTER TABLE secret REPLICA IDENTITY FULL;
	INSERT INTO secret VALUES (1, 'pin-1');
	CREATE TABLE shared (id int PRIMARY KEY, v numeric);
	ALTER TABLE shared REPLICA IDENTITY FULL;
	GRANT SELECT ON shared TO alice, mallory;
	CREATE TABLE guarded (id int PRIMARY KEY, owner_name text);
	ALTER TABLE guarded REPLICA IDENTITY FULL;
	ALTER TABLE guarded ENABLE ROW LEVEL SECURITY;
	CREATE POLICY mine ON guarded USING (owner_name = current_user);
	GRANT SELECT ON guarded, secret TO alice;
	REVOKE SELECT ON secret FROM alice;});

# psql as a role; returns (stdout, stderr).
sub as_role
{
	my ($role, $sql, $db) = @_;
	my ($out, $err) = ('', '');
	$node->psql($db // 'victim', $sql, stdout => \$out, stderr => \$err,
		extra_params => [ '-U', $role ]);
	return ($out, $err);
}

# --- 1. The database owner plants operators and functions that the
# superuser's SQL might resolve to, in public and in a schema named like
# the superuser, and records the user of any call.
$node->safe_psql('victim', qq{
	SET ROLE owner;
	CREATE TABLE public.caught (who text, what text);
	GRANT INSERT ON public.caught TO PUBLIC;
	CREATE SCHEMA "$super";
	GRANT USAGE ON SCHEMA "$super" TO PUBLIC;
	CREATE FUNCTION public.mul(numeric, integer) RETURNS numeric LANGUAGE sql AS
	  \$\$ INSERT INTO public.caught VALUES (current_user, '*'); SELECT \$1 * \$2::numeric \$\$;
	CREATE OPERATOR public.* (LEFTARG = numeric, RIGHTARG = integer, FUNCTION = public.mul);
	CREATE OPERATOR "$super".* (LEFTARG = numeric, RIGHTARG = integer, FUNCTION = public.mul);
	CREATE FUNCTION public.cat(integer, text) RETURNS text LANGUAGE sql AS
	  \$\$ INSERT INTO public.caught VALUES (current_user, '||'); SELECT \$1::text || \$2 \$\$;
	CREATE OPERATOR public.|| (LEFTARG = integer, RIGHTARG = text, FUNCTION = public.cat);
	CREATE FUNCTION public.div(bigint, numeric) RETURNS numeric LANGUAGE sql AS
	  \$\$ INSERT INTO public.caught VALUES (current_user, '/'); SELECT \$1::numeric / \$2 \$\$;
	CREATE OPERATOR public./ (LEFTARG = bigint, RIGHTARG = numeric, FUNCTION = public.div);
	CREATE FUNCTION public.unnest(int[], int[], bigint[]) RETURNS SETOF record LANGUAGE sql AS
	  \$\$ INSERT INTO public.caught VALUES (current_user, 'unnest'); SELECT NULL::record WHERE false \$\$;
	CREATE FUNCTION public.now() RETURNS timestamptz LANGUAGE sql AS
	  \$\$ INSERT INTO public.caught VALUES (current_user, 'now'); SELECT pg_catalog.now() \$\$;
	RESET ROLE;});

# The admins work: streams, connectors, records, retention passes.
$node->safe_psql('victim', qq{
	SET ROLE alice;
	SELECT event_bridge.create_stream('s', ARRAY['shared']::regclass[], shard_count => 2,
	                                  retention => '1 second');
	SELECT event_bridge.create_connector('c', 's', '$url/fc', batch_size => 5, batch_window => '10 ms');
	RESET ROLE;
	INSERT INTO shared SELECT g, g * 1.5 FROM generate_series(1, 40) g;
	UPDATE shared SET v = v + 1;});
ok(wait_capture($node, 'victim'), 'the stream captures');
ok(wait_delivered($node, 'victim', 'c'), 'the connector delivers');
my ($out, $err) = as_role('alice', q{
	SELECT count(*) FROM event_bridge.get_records('s', 0, 0, 100);
	SELECT count(*) FROM event_bridge.connector_status;
	SELECT count(*) FROM event_bridge.stream_status WHERE capture_state = 'RUNNING';
	SELECT event_bridge.reset_connector('c', NULL);});
is($err, '', 'admins use the API and the views');
($out, $err) = as_role('alice', 'SELECT event_bridge.recover_capture()');
like($err, qr/has not lost its replication slot/,
	'recover_capture() runs for admins (and says there is nothing to recover)');
ok($node->poll_query_until('victim',
		"SELECT count(*) = 0 FROM event_bridge.records r JOIN event_bridge.streams s USING (stream_id)"
		  . " WHERE s.stream_name = 's' AND r.system_time < extract(epoch FROM now() - interval '1 second') * 1000::numeric"
		  . " AND r.sequence <= (SELECT min(delivered_sequence) FROM event_bridge.connector_shards)"),
	'the retention pass ran over delivered records');
is($node->safe_psql('victim', "SELECT coalesce(string_agg(who || ' ' || what, ', '), 'none') FROM public.caught"),
	'none', 'no planted operator or function ever ran, as the superuser or anyone');

# --- 2. Temp tables that shadow catalogs do not fool the checks.
($out, $err) = as_role('nobody', q{
	CREATE TEMP TABLE pg_roles (rolname name, rolsuper boolean);
	INSERT INTO pg_roles VALUES (current_user, true);
	CREATE TEMP TABLE pg_class (oid oid, relname name);
	SELECT event_bridge.drop_stream('s');});
like($err, qr/permission denied for function drop_stream/,
	'a nobody with shadowing temp tables cannot call the API');
($out, $err) = as_role('mallory', q{
	CREATE TEMP TABLE pg_roles (rolname name, rolsuper boolean);
	INSERT INTO pg_roles VALUES (current_user, true);
	SELECT event_bridge.create_stream('m', ARRAY['secret']::regclass[]);});
like($err, qr/permission denied for table secret/,
	'an admin with a shadowing pg_roles still needs SELECT');

# --- 3. Admins have no privilege on any internal table or sequence.
my @tables = split /\n/, $node->safe_psql('victim', q{
	SELECT c.oid::regclass || ' ' || a.attname FROM pg_class c
	  JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = 1
	 WHERE c.relnamespace = 'event_bridge'::regnamespace AND c.relkind IN ('r', 'S')
	 ORDER BY 1});
cmp_ok(scalar(@tables), '>=', 9, 'the internal tables are listed');
for my $line (@tables)
{
	my ($t, $col) = split / /, $line;
	for my $stmt ("SELECT * FROM $t LIMIT 1", "DELETE FROM $t", "TRUNCATE $t",
		"INSERT INTO $t DEFAULT VALUES", "UPDATE $t SET $col = $col",
		"CREATE TRIGGER x BEFORE INSERT ON $t FOR EACH ROW EXECUTE FUNCTION suppress_redundant_updates_trigger()")
	{
		next if $t =~ /_seq$/ && $stmt !~ /^SELECT/;
		($out, $err) = as_role('mallory', $stmt);
		like($err, qr/permission denied|must be owner/, "mallory: $stmt");
	}
}
($out, $err) = as_role('mallory', q{
	SELECT event_bridge._check_admin();
	SELECT event_bridge._lock_offsets();});
like($err, qr/permission denied for function/, 'admins cannot call internal functions');

# --- 4. Reading past SELECT rights.
($out, $err) = as_role('alice', q{SELECT event_bridge.create_stream('x', ARRAY['secret']::regclass[])});
like($err, qr/permission denied for table secret/, 'create_stream: no SELECT, refused');
($out, $err) = as_role('alice', q{SELECT event_bridge.create_stream('x', ARRAY['guarded']::regclass[], before_images => false)});
like($err, qr/table guarded has row-level security enabled/, 'create_stream: RLS table, refused');
$node->safe_psql('victim', q{
	SELECT event_bridge.create_stream('sec', ARRAY['secret']::regclass[]);
	SELECT event_bridge.create_connector('sec_c', 'sec', 'http://127.0.0.1:9/');
	INSERT INTO secret VALUES (2, 'pin-2');});
ok(wait_capture($node, 'victim'), 'the superuser\'s stream of secret captures');
($out, $err) = as_role('alice', q{SELECT * FROM event_bridge.get_records('sec', 0, 0)});
like($err, qr/permission denied for table secret/, 'get_records of another\'s stream: refused');
unlike($out, qr/pin-2/, 'and no row shows');
($out, $err) = as_role('alice', q{SELECT event_bridge.create_connector('a_c', 'sec', 'http://127.0.0.1:9/')});
like($err, qr/permission denied for table secret/, 'create_connector on it: refused');
($out, $err) = as_role('alice', q{SELECT event_bridge.reset_connector('sec_c', NULL)});
like($err, qr/permission denied for table secret/, 'reset_connector of its connector: refused');
$node->safe_psql('victim', 'ALTER ROLE alice BYPASSRLS');
($out, $err) = as_role('alice', q{SELECT event_bridge.create_stream('g', ARRAY['guarded']::regclass[], before_images => false)});
is($err, '', 'with BYPASSRLS the RLS table may be streamed');

# A confused deputy: mallory's SECURITY DEFINER function, called by the
# superuser, runs with mallory's rights, so it cannot stream secret.
$node->safe_psql('victim', q{
	CREATE FUNCTION public.helper() RETURNS void LANGUAGE plpgsql SECURITY DEFINER AS
	  $$ BEGIN PERFORM event_bridge.create_stream('deputy', ARRAY['secret']::regclass[]); END $$;
	ALTER FUNCTION public.helper() OWNER TO mallory;});
($out, $err) = ('', '');
$node->psql('victim', 'SELECT public.helper()', stderr => \$err);
like($err, qr/permission denied for table secret/,
	'a definer function of an admin called by the superuser still runs with the admin\'s rights');

# --- 5. No secret in the log or pg_stat_activity, for refused and accepted calls.
my $secret = 'Zq7-unique-s3cret';
my $log_start = -s $node->logfile;
for my $call (
	qq~SELECT event_bridge.create_connector('k1', 's', '$url', headers => '{"X-Token": "$secret')~,
	qq~SELECT event_bridge.create_connector('k1', 's', '$url', batch_size => 0, headers => '{"X-Token": "$secret"}')~,
	qq~SELECT event_bridge.create_connector('k1', 's', '$url', headers => '{"X-Token": "$secret\\r\\nX-Evil: 1"}')~,
	qq~SELECT event_bridge.create_connector('k1', 's', '$url', headers => '{"X-Token": ["$secret"]}')~,
	qq~SELECT event_bridge.create_connector('k1', 'nope', '$url', headers => '{"X-Token": "$secret"}')~,
	qq{SELECT event_bridge.create_connector('k1', 's', 'ftp://u:$secret\@h/', headers => '{}')})
{
	($out, $err) = as_role('alice', $call);
	isnt($err, '', 'a refused call: ' . substr($call, 35, 50));
	unlike($err, qr/\Q$secret\E/, 'its error does not quote the secret');
}
my $session = $node->background_psql('victim', extra_params => [ '-U', 'alice' ]);
$session->query_safe(qq{SELECT event_bridge.create_connector('k2', 's', '$url', headers => '{"X-Token": "$secret"}')});
my $activity = $node->safe_psql('victim',
	"SELECT string_agg(query, ' ') FROM pg_stat_activity WHERE usename = 'alice'");
unlike($activity, qr/\Q$secret\E/, 'pg_stat_activity does not show the accepted call\'s secret');
like($activity, qr/statement hidden/, 'it shows that the statement is hidden');
$session->quit;
my $log = slurp_file($node->logfile, $log_start);
unlike($log, qr/\Q$secret\E/, 'the server log does not hold the secret');
like($log, qr/headers are not valid JSON/, 'the refusals are in the log');

# --- 6. Bounded work: no body over max_request_bytes, a record alone over it
# suspends its shard with a clear error, and the worker's memory does not
# grow with the rows users insert.
$node->safe_psql('victim', qq{
	CREATE TABLE big (id int PRIMARY KEY, body text);
	ALTER TABLE big REPLICA IDENTITY FULL;
	SELECT event_bridge.create_stream('bs', ARRAY['big']::regclass[], shard_count => 2);
	SELECT event_bridge.create_connector('small', 'bs', '$url/small', batch_size => 1000,
	                                     max_request_bytes => 8192);
	INSERT INTO big SELECT g, repeat('x', 900) FROM generate_series(1, 60) g;});
ok(wait_capture($node, 'victim') && wait_delivered($node, 'victim', 'small'),
	'rows of 900 bytes are delivered under an 8 kB bound');
my @small = grep { $_->{path} eq '/small' } @{ receiver_log($r) };
my ($largest) = sort { $b <=> $a } map { $_->{bytes} } @small;
cmp_ok($largest, '<=', 8192, "no body is larger than max_request_bytes (largest $largest bytes)");
cmp_ok(scalar(@small), '>=', 8, 'the batches were closed by size, not by batch_size');
$node->safe_psql('victim', q{INSERT INTO big VALUES (1000, repeat('y', 10000))});
ok(wait_capture($node, 'victim'), 'the big row is captured');
ok($node->poll_query_until('victim', qq{
	SELECT state = 'SUSPENDED' AND last_error LIKE '%too big for a request of at most 8192 bytes%'
	  FROM event_bridge.shard_status WHERE connector_name = 'small' AND shard_id = (
	    SELECT r.shard_id FROM event_bridge.records r JOIN event_bridge.streams s USING (stream_id)
	     WHERE s.stream_name = 'bs' AND r.data::jsonb->>8 = '1000')}),
	'a record alone over max_request_bytes suspends its shard with a clear error');
$node->safe_psql('victim', 'INSERT INTO big SELECT g, g FROM generate_series(2000, 2100) g');
ok($node->poll_query_until('victim', q{
	SELECT count(*) = 1 FROM event_bridge.shard_status
	 WHERE connector_name = 'small' AND state = 'RUNNING' AND pending = 0}),
	'the other shard keeps delivering');

# Rows of 1 MB at batch_size 1000: bodies stay under the default 6 MB, and
# the delivery worker's private memory stays far below the 60 MB inserted.
$node->safe_psql('victim', qq{
	SELECT event_bridge.create_connector('mb', 'bs', '$url/mb', batch_size => 1000, start_time => now());
	SELECT event_bridge.stop_connector('mb');});
my $dpid = worker_pid($node, 'victim', 'delivery');
my $rss_before = rss_anon_kb($dpid);
$node->safe_psql('victim', q{
	INSERT INTO big SELECT 3000 + g, string_agg(md5(g::text || i::text), '') FROM generate_series(1, 60) g,
	       generate_series(1, 32768) i GROUP BY g});
ok(wait_capture($node, 'victim'), 'the 1 MB rows are captured');
$node->safe_psql('victim', "SELECT event_bridge.start_connector('mb')");
my $peak = $rss_before;
my $samples = 0;
for (1 .. 2400)
{
	my $kb = rss_anon_kb($dpid);
	$samples++;
	$peak = $kb if $kb > $peak;
	last if $node->safe_psql('victim', q{
		SELECT count(*) = 2 FROM event_bridge.shard_status WHERE connector_name = 'mb' AND pending = 0}) eq 't';
	usleep(50_000);
}
note("$samples samples of the delivery worker $dpid, from $rss_before kB to $peak kB");
ok(wait_delivered($node, 'victim', 'mb'), '60 rows of 1 MB are delivered');
my @mb = grep { $_->{path} eq '/mb' && ($_->{status} // 0) == 200 } @{ receiver_log($r) };
($largest) = sort { $b <=> $a } map { $_->{bytes} } @mb;
cmp_ok($largest, '<=', 6291456, "no body is over 6 MB (largest $largest bytes)");
cmp_ok(scalar(@mb), '>=', 10, 'they went in at least ten requests');
my $grew = int(($peak - $rss_before) / 1024);
cmp_ok($grew, '<', 40,
	"the delivery worker's private memory grew by $grew MB (peak " . int($peak / 1024) . " MB), not by the 60 MB inserted");

# --- 7. Isolation: a connector row the worker cannot use (only a superuser
# can write one now) puts that connector in state ERROR; the others go on.
$node->safe_psql('victim', q{
	UPDATE event_bridge.connectors SET headers = '{"X-Token": null}', version = version + 1
	 WHERE connector_name = 'c'});
ok($node->poll_query_until('victim', q{
	SELECT state = 'ERROR' AND last_error = 'a header value is not a string'
	  FROM event_bridge.connector_status WHERE connector_name = 'c'}),
	'a connector that cannot be loaded is in state ERROR with the reason, no value quoted');
$node->safe_psql('victim', 'INSERT INTO big SELECT g, g FROM generate_series(5000, 5020) g');
ok(wait_capture($node, 'victim') && wait_delivered($node, 'victim', 'mb'),
	'the other connectors of the database keep delivering');
$node->safe_psql('victim', q{
	UPDATE event_bridge.connectors SET headers = '{}', version = version + 1 WHERE connector_name = 'c';
	INSERT INTO shared VALUES (1000, 1);});
ok($node->poll_query_until('victim', q{
	SELECT state = 'RUNNING' AND pending = 0 FROM event_bridge.connector_status WHERE connector_name = 'c'}),
	'fixed, it delivers again');

# One whose request cannot be built (an error fault point while its batch
# is read) goes to state ERROR too, and starts again when it is changed.
$node->append_conf('postgresql.conf', "event_bridge.fault_point = 'read-batch-error:c'\n");
$node->reload;
$node->safe_psql('victim', 'INSERT INTO shared VALUES (1001, 1)');
ok($node->poll_query_until('victim', q{
	SELECT state = 'ERROR' AND last_error LIKE '%fault point "read-batch-error:c" raised an error%'
	  FROM event_bridge.connector_status WHERE connector_name = 'c'}),
	'a connector whose request cannot be built is in state ERROR');
$node->safe_psql('victim', 'INSERT INTO big SELECT g, g FROM generate_series(6000, 6020) g');
ok(wait_capture($node, 'victim') && wait_delivered($node, 'victim', 'mb'),
	'the other connectors keep delivering meanwhile');
$node->append_conf('postgresql.conf', "event_bridge.fault_point = ''\n");
$node->reload;
$node->safe_psql('victim', q{SELECT event_bridge.stop_connector('c'); SELECT event_bridge.start_connector('c');});
ok($node->poll_query_until('victim', q{
	SELECT state = 'RUNNING' AND pending = 0 FROM event_bridge.connector_status WHERE connector_name = 'c'}),
	'changed, it delivers what it missed');

stop_receiver($r);
$node->stop;
done_testing();
