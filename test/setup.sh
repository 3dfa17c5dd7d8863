#!/usr/bin/env bash
# test/setup.sh: shared by demo.sh, run_tests.sh and bench scripts.
# Installs what event_bridge needs on Debian 12 (as root), builds and
# installs the extension, and provides the non-root user that runs servers.

set -euo pipefail

EB_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
EB_USER=${EB_USER:-eb_test}
PG_BIN=/usr/lib/postgresql/15/bin
export PATH="$PG_BIN:$PATH"

eb_need_root() {
    if [ "$(id -u)" -ne 0 ]; then
        echo "run this as root (it installs packages and the extension): bash $0 (or sudo bash $0)" >&2
        exit 1
    fi
}

# Installs the Debian packages that are missing.
eb_install_packages() {
    local wanted="postgresql-15 postgresql-server-dev-15 libcurl4-openssl-dev librdkafka-dev libipc-run-perl make gcc python3 curl $*"
    local missing=()
    for p in $wanted; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        echo "== installing ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
}

# Creates the non-root user that runs PostgreSQL servers.
eb_ensure_user() {
    id "$EB_USER" >/dev/null 2>&1 || useradd --create-home --shell /bin/bash "$EB_USER"
}

# Builds and installs the extension into the system's PostgreSQL 15.
# Extra arguments go to make (FAULT_INJECTION=1 for the test suite).  The
# build runs in a fresh copy of the tree, so it never mixes objects of both
# kinds and two builds at the same time cannot spoil each other.
eb_build_install() {
    echo "== building and installing event_bridge $*"
    local build
    build=$(mktemp -d /tmp/event_bridge-build.XXXXXX)
    tar -C "$EB_ROOT" --exclude=.git --exclude='*.o' --exclude='*.so' -cf - . | tar -C "$build" -xf -
    make -C "$build" -s PG_CONFIG="$PG_BIN/pg_config" "$@" >/dev/null
    make -C "$build" -s PG_CONFIG="$PG_BIN/pg_config" "$@" install >/dev/null
    rm -rf "$build"
}

# Runs a command as the server user.
eb_as_user() {
    runuser -u "$EB_USER" -- "$@"
}

# Starts a command as the server user in the background, in a process group
# of its own, and writes that group's id to PIDFILE: eb_stop_group stops the
# command and everything it started (runuser's child too).
eb_spawn_as_user() {
    local pidfile=$1
    shift
    setsid runuser -u "$EB_USER" -- "$@" &
    echo $! > "$pidfile"
}

# Stops the process group that eb_spawn_as_user recorded in PIDFILE: TERM,
# then KILL after 5 s.
eb_stop_group() {
    local pidfile=$1 pgid
    [ -f "$pidfile" ] || return 0
    pgid=$(cat "$pidfile")
    kill -TERM -- "-$pgid" 2>/dev/null || return 0
    for _ in $(seq 50); do
        kill -0 -- "-$pgid" 2>/dev/null || return 0
        sleep 0.1
    done
    kill -KILL -- "-$pgid" 2>/dev/null || true
}
