#!/usr/bin/env bash
# demo.sh - sets up the machine, builds libchan and the lchan tool (plain -O2,
# in build/demo), and runs a real demonstration on loopback, narrated:
#   - `lchan serve --exec` on a unix socket and on a TCP port;
#   - remote commands through each, with stdin/stdout/stderr streamed and the
#     exit status carried back (docker/libchan's rexec example);
#   - a request whose reply comes back on a channel the request carried;
#   - the servers stopped cleanly; then the in-process worker pool, briefly.
#
#   scripts/demo.sh                         the demonstration above
#   scripts/demo.sh --inproc [W C R]        only the in-process worker pool
#                                           (W workers, C clients, R requests each)
# Exit status 0 when everything behaved as narrated.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
BUILD=build/demo

inproc=0
if [ "${1:-}" = "--inproc" ]; then
    inproc=1
    shift
elif [ $# -gt 0 ]; then
    echo "usage: $0 [--inproc [WORKERS CLIENTS REQUESTS]]" >&2
    exit 2
fi

bash scripts/setup.sh

echo "==> building libchan, lchan and the examples in $BUILD"
# Tests and benchmarks are not needed for the demo; skipping them keeps it quick.
cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DLIBCHAN_SANITIZE= \
      -DLIBCHAN_BUILD_TOOLS=ON -DLIBCHAN_BUILD_EXAMPLES=ON \
      -DLIBCHAN_BUILD_TESTS=OFF -DLIBCHAN_BUILD_BENCH=OFF >/dev/null
cmake --build "$BUILD" -j "$(nproc 2>/dev/null || echo 2)" --target lchan worker_pool >/dev/null

if [ "$inproc" = 1 ]; then
    echo "==> running $BUILD/examples/worker_pool $*"
    echo
    exec "$BUILD/examples/worker_pool" "$@"
fi

LCHAN=$ROOT/$BUILD/bin/lchan
TMP=$(mktemp -d /tmp/lchan-demo.XXXXXX)
SERVERS=()
ok=1

cleanup() {
    for pid in "${SERVERS[@]}"; do
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$TMP"
}
trap cleanup EXIT

say() { printf '%s\n' "$@"; }
show() { sed 's/^/    /'; }
bad() {
    say "    !! $*"
    ok=0
}

# start NAME ARGS... : starts `lchan serve ARGS` and reads the URL it prints
# on its first line (no sleeps: the line comes once it is listening).
start() {
    local name=$1
    shift
    mkfifo "$TMP/$name.fifo"
    "$LCHAN" serve "$@" >"$TMP/$name.fifo" 2>"$TMP/$name.log" &
    SERVERS+=($!)
    eval "PID_$name=$!"
    local fd
    exec {fd}<"$TMP/$name.fifo"
    if ! read -r -t 30 -u "$fd" URL; then
        say "demo: lchan serve $* did not start:"
        show <"$TMP/$name.log"
        exit 1
    fi
    exec {fd}<&-
    eval "URL_$name=\$URL"
    say "    \$ lchan serve $*" "      listening on $URL"
}

# remote URL : the two remote commands, through one server.
remote() {
    local url=$1 rc out
    say "" "    \$ printf 'hello\\nworld\\n' | lchan exec $url -- tr a-z A-Z"
    set +e
    out=$(printf 'hello\nworld\n' | timeout 30 "$LCHAN" exec "$url" -- tr a-z A-Z)
    rc=$?
    set -e
    printf '%s\n' "$out" | show
    say "    (exit status $rc)"
    [ "$out" = $'HELLO\nWORLD' ] && [ "$rc" = 0 ] || bad "expected HELLO, WORLD and status 0"

    say "" "    \$ lchan exec $url -- sh -c 'echo checking...; echo something is wrong >&2; exit 3'"
    set +e
    timeout 30 "$LCHAN" exec "$url" -- sh -c 'echo checking...; echo something is wrong >&2; exit 3' \
        >"$TMP/out" 2>"$TMP/err"
    rc=$?
    set -e
    show <"$TMP/out"
    sed 's/^/    /; s/$/        <- on stderr, through the Stderr stream/' "$TMP/err"
    say "    (exit status $rc: the remote command's own status, carried back on StatusChan)"
    [ "$rc" = 3 ] || bad "expected exit status 3"
}

say "" "==> libchan demo: channels between processes, over a unix socket and over TCP" ""
say "lchan is the command-line tool built on libchan. Every message below is"
say "msgpack on SPDY/3 streams, the wire protocol of Go's docker/libchan, and"
say "messages carry channel ends and byte streams, not only data."

say "" "==> 1. Two remote-execution servers, one on a unix socket, one on TCP port 0"
say "Each prints the address it is bound to on its first line (the real port for :0)."
start ux "unix://$TMP/exec.sock" --exec -v
start tc tcp://127.0.0.1:0 --exec -v

say "" "==> 2. Remote commands over the unix socket"
say "lchan exec sends ONE message, {Cmd, Args, Stdin, Stdout, Stderr, StatusChan}:"
say "three byte streams and a Sender for the exit status (docker/libchan's rexec"
say "example). Over a unix socket the streams travel as file descriptors."
remote "$URL_ux"

say "" "==> 3. The same over TCP"
say "Over TCP the streams become SPDY sub-streams; the programs cannot tell."
remote "$URL_tc"

say "" "==> 4. A request whose reply comes back on a channel it carried"
say "lchan send turns JSON into a message; \"@reply\" becomes a fresh Sender, whose"
say "Receiver lchan keeps and prints from. The echo service answers on it."
start echo "unix://$TMP/echo.sock" --echo
say "" "    \$ lchan --trace send $URL_echo '{\"Op\":\"hello\",\"Reply\":\"@reply\"}'"
set +e
timeout 30 "$LCHAN" --trace send "$URL_echo" '{"Op":"hello","Reply":"@reply"}' >"$TMP/out" 2>"$TMP/err"
rc=$?
set -e
grep -E '>>|<<' "$TMP/err" | sed 's/^\[trace [^]]*\] //' |
    sed 's/^chan#1 >> .*/&   <- the request: Reply is a channel end/; s/^reply#1 << .*/&                  <- what arrived on that channel/' | show
show <"$TMP/out"
say "    (exit status $rc; the last line is what lchan send prints: the reply)"
[ "$(cat "$TMP/out")" = '{"Op":"hello"}' ] && [ "$rc" = 0 ] || bad "expected the reply {\"Op\":\"hello\"}"

say "" "==> 5. Stopping the servers cleanly (SIGTERM)"
for name in ux tc echo; do
    pid=$(eval echo "\$PID_$name")
    kill -TERM "$pid"
    set +e
    wait "$pid"
    rc=$?
    set -e
    SERVERS=("${SERVERS[@]/$pid/}")
    say "    $(eval echo "\$URL_$name"): exited $rc"
    [ "$rc" = 0 ] || bad "expected exit status 0"
done
if [ -e "$TMP/exec.sock" ] || [ -e "$TMP/echo.sock" ]; then
    bad "a unix socket file is still there"
else
    say "    the unix socket files are gone"
fi
say "" "What the unix exec server logged (-v):"
show <"$TMP/ux.log"

say "" "==> 6. The same kind of channels inside one process: the worker pool"
say "Workers register by sending their own inbox channel; requests carry reply"
say "channels (examples/worker_pool.c; full run: scripts/demo.sh --inproc)."
set +e
"$ROOT/$BUILD/examples/worker_pool" >"$TMP/out" 2>&1
rc=$?
set -e
tail -n 1 "$TMP/out" | show
[ "$rc" = 0 ] || bad "worker_pool failed"

say ""
say "Try it: $BUILD/bin/lchan --help, man -l docs/lchan.1, docs/json-mapping.md."
if [ "$ok" = 1 ]; then
    say "demo: OK"
else
    say "demo: FAILED (see the !! lines above)"
    exit 1
fi
