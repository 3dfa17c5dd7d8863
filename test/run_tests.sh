#!/usr/bin/env bash
# test/run_tests.sh: the whole test suite, on a fresh Debian 12 machine.
# Installs what it needs, builds and installs event_bridge, then runs the
# pg_regress suite and the TAP suite (each in throw-away servers) as a
# non-root user, in a copy of the tree that user owns; then (everything
# only) checks that test/demo.sh leaves nothing running, which installs the
# build without fault points again.  The suites use the extension built
# with its test fault points (make FAULT_INJECTION=1).
#
#   bash test/run_tests.sh            # everything
#   bash test/run_tests.sh regress    # pg_regress only
#   bash test/run_tests.sh tap [t/file.pl ...]   # TAP only
#   EB_KEEP=1 bash test/run_tests.sh ...         # keep the outputs of a passing run

source "$(dirname "$0")/setup.sh"
eb_need_root
eb_install_packages
eb_ensure_user
eb_build_install FAULT_INJECTION=1     # fault points for the crash tests

what=${1:-all}
shift || true

work=$(mktemp -d /tmp/event_bridge-tests.XXXXXX)
cp -a "$EB_ROOT/." "$work/"
rm -rf "$work/.git" "$work/results" "$work/tmp_check" "$work/log"

# Release 0.1 as it shipped, built from its commit into a private copy of
# PostgreSQL, for the upgrade test from a running 0.1
# (test/t/042_upgrade_from_0.1.pl); the files of this build wait beside it.
# Without the git history (a shallow clone) that test is skipped.
EB_RELEASE_0_1=43a7957
if [ "$what" != regress ] && git -C "$EB_ROOT" cat-file -e "$EB_RELEASE_0_1^{commit}" 2>/dev/null; then
    echo "== building release 0.1 ($EB_RELEASE_0_1) for the upgrade test"
    release="$work/release-0.1"
    mkdir -p "$release/src" "$release/usr/lib/postgresql" "$release/usr/share/postgresql" "$release/current"
    git -C "$EB_ROOT" archive "$EB_RELEASE_0_1" | tar -x -C "$release/src"
    cp -a /usr/lib/postgresql/15 "$release/usr/lib/postgresql/"
    cp -a /usr/share/postgresql/15 "$release/usr/share/postgresql/"
    mv "$release/usr/lib/postgresql/15/lib/event_bridge.so" "$release/current/"
    mv "$release/usr/share/postgresql/15/extension/"event_bridge* "$release/current/"
    make -C "$release/src" -s PG_CONFIG="$PG_BIN/pg_config" >/dev/null
    make -C "$release/src" -s PG_CONFIG="$PG_BIN/pg_config" DESTDIR="$release" install >/dev/null
    export EB_RELEASE_0_1_INSTALL="$release"
fi
# The platforms' official signing code, which test/signing/endpoint.js
# checks every signed request with (pinned in test/package-lock.json).
if [ "$what" != regress ]; then
    rm -rf "$work/test/node_modules"
    (cd "$work/test" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error)
fi
chown -R "$EB_USER" "$work"
cd "$work"

status=0
if [ "$what" = all ] || [ "$what" = regress ]; then
    echo "== pg_regress"
    if ! eb_as_user make -s installcheck PG_CONFIG="$PG_BIN/pg_config" PROVE_TESTS= TAP_TESTS= ; then
        status=1
        [ -f regression.diffs ] && cat regression.diffs
    fi
fi
if [ "$what" = all ] || [ "$what" = tap ]; then
    echo "== TAP"
    tests=${*:-$(echo test/t/*.pl)}
    if ! eb_as_user make -s installcheck PG_CONFIG="$PG_BIN/pg_config" REGRESS= PROVE_FLAGS="--timer" PROVE_TESTS="$tests"; then
        status=1
        for f in tmp_check/log/regress_log_*; do
            [ -f "$f" ] && { echo "---- $f (last 60 lines)"; tail -60 "$f"; }
        done
    fi
fi

# The demo leaves the machine as it found it, also when interrupted.
if [ "$what" = all ]; then
    echo "== the demo leaves nothing running"
    bash "$EB_ROOT/test/demo_leaves_nothing.sh" || status=1
fi

if [ $status -eq 0 ]; then
    echo "== all tests passed"
    [ -n "${EB_KEEP:-}" ] && echo "== outputs kept in $work (EB_KEEP)" || rm -rf "$work"
else
    echo "== tests FAILED; outputs kept in $work" >&2
fi
exit $status
