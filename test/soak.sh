#!/usr/bin/env bash
# test/soak.sh: the soak test (not in the default suite; test/t/030_soak_short.pl
# runs a one-minute version of it).
#
#   bash test/soak.sh [--minutes N] [--seed S] [--rate TPS] [--keep]
#                          [--drain-seconds N] [--fault-gap MIN,MAX]
#
# As root it installs what is missing, builds and installs event_bridge with
# its fault points (make FAULT_INJECTION=1, through setup.sh), and runs the
# soak as the non-root server user; as any other user it runs the soak with
# the extension already installed (it must have been built with
# FAULT_INJECTION=1).  The soak (test/soak.py) starts a throw-away cluster
# in /tmp/event_bridge-soak.*, on 127.0.0.1 and a port of 57000-57999, and a
# fault-injecting receiver; it runs a steady pgbench load with rolled-back
# transactions and savepoints on three streams and five connectors (DataHub
# and DIS over HTTP, json events to librdkafka's mock Kafka cluster) while it
# injects a seeded random sequence of crashes, restarts, kill -9 of each
# worker, the extension's fault points, endpoint outages and broker outages.  At the end it stops the load, lets delivery drain and checks
# every connector with test/check_invariants.py, and capture exactly once
# against the tables.  It prints what it injected and what held, and exits 0
# only if everything held.  The same --seed gives the same sequence of
# faults (timings, and so the exact interleaving, vary).

set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

if [ "$(id -u)" -ne 0 ]; then
    exec python3 "$here/soak.py" "$@"
fi

source "$here/setup.sh"
eb_install_packages
eb_ensure_user
eb_build_install FAULT_INJECTION=1

dir=$(mktemp -d /tmp/event_bridge-soak.XXXXXX)
chown "$EB_USER" "$dir"
# The server user reads the scripts where they are; /work trees may not be
# readable by it, so run a copy of test/, with kafkajs (test/kafka/consume.js
# reads the Kafka topic back with it).
mkdir "$dir/test"
cp -a "$here/soak.py" "$here/check_invariants.py" "$here/receiver.py" "$here/regress.conf" \
    "$here/kafka" "$here/package.json" "$here/package-lock.json" "$dir/test/"
(cd "$dir/test" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error)
chown -R "$EB_USER" "$dir"
status=0
runuser -u "$EB_USER" -- env PATH="$PG_BIN:$PATH" PG_BIN="$PG_BIN" \
    python3 "$dir/test/soak.py" --dir "$dir/run" "$@" || status=$?
if [ -d "$dir/run" ]; then
    echo "soak directory kept: $dir/run"
else
    rm -rf "$dir"
fi
exit $status
