#!/usr/bin/env bash
# test/demo_leaves_nothing.sh: runs test/demo.sh and checks that it leaves
# the machine as it found it: no process of the demo (server, endpoints,
# runuser) and no new listening port.  Interrupted with SIGINT in the middle
# too.  run_tests.sh runs it after the suites.
#
#   bash test/demo_leaves_nothing.sh

source "$(dirname "$0")/setup.sh"
eb_need_root
eb_install_packages iproute2 procps

listening() { ss -Hltn | awk '{ print $4 }' | sort -u; }
log=$(mktemp /tmp/event_bridge-demo-check.XXXXXX)
status=0

# What is left of a demo run: processes and ports.
check_left() {
    local what=$1 before=$2 procs ports
    for _ in $(seq 50); do
        procs=$(pgrep -af 'event_bridge-demo\.[A-Za-z0-9]{6}' | grep -v "pgrep\|demo_leaves_nothing" || true)
        ports=$(comm -13 <(echo "$before") <(listening))
        [ -z "$procs$ports" ] && break
        sleep 0.1
    done
    if [ -n "$procs$ports" ]; then
        echo "not ok - $what leaves processes or ports behind:" >&2
        echo "$procs" >&2
        echo "listening: $ports" >&2
        status=1
    else
        echo "ok - $what leaves no process and no listening port behind"
    fi
}

before=$(listening)
if bash "$EB_ROOT/test/demo.sh" > "$log" 2>&1; then
    echo "ok - the demo ran"
else
    echo "not ok - the demo failed (see $log)" >&2
    status=1
fi
check_left "the demo" "$before"

# Ctrl-C while the endpoints run: the demo stops at once and cleans up.  It
# runs in a session of its own with SIGINT as a terminal would deliver it
# (a background job of a script would start with SIGINT ignored).
before=$(listening)
python3 -c 'import os, signal, sys
signal.signal(signal.SIGINT, signal.SIG_DFL)
os.setsid()
os.execvp(sys.argv[1], sys.argv[1:])' bash "$EB_ROOT/test/demo.sh" > "$log.int" 2>&1 &
demo=$!
for _ in $(seq 300); do
    grep -q "INSERT INTO orders SELECT" "$log.int" 2>/dev/null && break
    sleep 0.1
done
kill -INT -- "-$demo" 2>/dev/null || true
wait "$demo" 2>/dev/null || true
if grep -q "a captured table must stay logged" "$log.int"; then
    echo "not ok - the demo ran to its end instead of stopping at Ctrl-C" >&2
    status=1
fi
check_left "a demo interrupted by Ctrl-C" "$before"

[ $status -eq 0 ] && rm -f "$log" "$log.int"
exit $status
