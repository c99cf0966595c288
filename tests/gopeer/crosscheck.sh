#!/usr/bin/env bash
# crosscheck.sh GOPEER_BIN VECTORS_DIR - runs gopeer against itself (Go to Go) through a
# recording relay and compares the recorded sessions with the captured docker/libchan
# vectors frame by frame (decoded: frame types, stream ids, flags, header pairs, DATA
# payloads; the zlib bytes and header pair order may differ). Exits 0 when all match.
set -uo pipefail

bin=${1:?usage: crosscheck.sh GOPEER_BIN VECTORS_DIR}
vec=${2:?usage: crosscheck.sh GOPEER_BIN VECTORS_DIR}
work=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
    rm -rf "$work"
}
trap cleanup EXIT

passed=0
failed=0
check() { # name, then a command that succeeds when the check passes
    local name=$1; shift
    if "$@" >"$work/check.out" 2>&1; then
        echo "PASS $name"; passed=$((passed + 1))
    else
        echo "FAIL $name"; sed 's/^/    /' "$work/check.out"; failed=$((failed + 1))
    fi
}

# start NAME ARGS...: runs gopeer in the background, waits for its LISTENING line and
# sets $url to the address it printed.
start() {
    local name=$1; shift
    "$bin" "$@" >"$work/$name.out" 2>"$work/$name.err" &
    pids+=($!)
    url=
    for _ in $(seq 100); do
        url=$(sed -n 's/^LISTENING //p' "$work/$name.out")
        [ -n "$url" ] && return 0
        sleep 0.05
    done
    echo "$name did not start: $(cat "$work/$name.err")" >&2
    exit 1
}

# session NAME SERVE_MODE DIAL_ARGS...: serve --once, relay, dial; records NAME.c2s/.s2c.
session() {
    local name=$1 mode=$2; shift 2
    start "$name-server" serve tcp://127.0.0.1:0 "$mode" --once
    local server=$url
    start "$name-relay" relay tcp://127.0.0.1:0 "$server" "$work/$name.c2s" "$work/$name.s2c"
    local relay=$url
    "$bin" dial "$relay" "$@" >"$work/$name-dial.out" 2>"$work/$name-dial.err"
    echo $? >"$work/$name-dial.rc"
    wait "${pids[@]}" 2>/dev/null
    pids=()
    "$bin" dump "$work/$name.c2s" >"$work/$name.c2s.txt"
    "$bin" dump "$work/$name.s2c" >"$work/$name.s2c.txt"
}

# Frames of one stream, in order.
stream_frames() { grep -E "stream=$2 " "$1"; }

# --- go-echo: request with a Ret Sender and a duplex byte stream ---
session echo --echo --request-echo
"$bin" dump "$vec/go-echo.client-to-server.bin" >"$work/v-echo.c2s.txt"
"$bin" dump "$vec/go-echo.server-to-client.bin" >"$work/v-echo.s2c.txt"
check "echo: dial exits 0" test "$(cat "$work/echo-dial.rc")" = 0
check "echo: REPLY line" grep -qx 'REPLY {"Echo":42,"Data":"hello"}' "$work/echo-dial.out"
check "echo: STREAM line" grep -qx 'STREAM stream-bytes' "$work/echo-dial.out"
# The vector's client never closed its byte stream; ours does (FIN on stream 5) so that
# the echo server sees EOF: that one frame is expected after the vector's frames.
{ cat "$work/v-echo.c2s.txt"; echo "DATA stream=5 flags=1 len=0 "; } >"$work/echo.c2s.expected"
check "echo: client-to-server frames = vector + FIN on the byte stream" \
    diff "$work/echo.c2s.expected" "$work/echo.c2s.txt"
# Raw bytes: the first SYN_STREAM has one header pair, so its zlib bytes (same library,
# same level, same dictionary) must be identical. Later blocks depend on the order Go's map
# iteration gave the pairs; when it matches the vector's, all 201 bytes are identical.
check "echo: client-to-server raw bytes of the first frame = vector" \
    cmp -n 50 "$vec/go-echo.client-to-server.bin" "$work/echo.c2s"
if cmp -s -n 201 "$vec/go-echo.client-to-server.bin" "$work/echo.c2s"; then
    echo "INFO echo: all 201 bytes of the vector identical (header pairs came in the vector's order)"
else
    echo "INFO echo: raw bytes differ after the first frame (header pair order differs this run)"
fi
# Server-to-client: frames of different streams interleave freely; compare per stream.
# Ours also closes Ret (FIN on 3) and its echo side of the byte stream (FIN on 5).
for sid in 1 3 5; do
    { stream_frames "$work/v-echo.s2c.txt" $sid
      [ $sid != 1 ] && echo "DATA stream=$sid flags=1 len=0 "; } >"$work/echo.s2c.$sid.expected"
    check "echo: server-to-client stream $sid frames = vector$([ $sid != 1 ] && echo ' + FIN')" \
        diff "$work/echo.s2c.$sid.expected" <(stream_frames "$work/echo.s2c.txt" $sid)
done
check "echo: server-to-client has no other frames" \
    test "$(wc -l <"$work/echo.s2c.txt")" = 8

# --- go-oneway: three {Value: i} messages, then close ---
session oneway --count --oneway 3
"$bin" dump "$vec/go-oneway.client-to-server.bin" >"$work/v-oneway.c2s.txt"
"$bin" dump "$vec/go-oneway.server-to-client.bin" >"$work/v-oneway.s2c.txt"
check "oneway: dial exits 0" test "$(cat "$work/oneway-dial.rc")" = 0
check "oneway: server prints COUNT 3" grep -qx 'COUNT 3' "$work/oneway-server.out"
check "oneway: client-to-server frames = vector" diff "$work/v-oneway.c2s.txt" "$work/oneway.c2s.txt"
check "oneway: server-to-client frames = vector" diff "$work/v-oneway.s2c.txt" "$work/oneway.s2c.txt"
check "oneway: client-to-server raw bytes = vector" cmp "$vec/go-oneway.client-to-server.bin" "$work/oneway.c2s"
check "oneway: server-to-client raw bytes = vector" cmp "$vec/go-oneway.server-to-client.bin" "$work/oneway.s2c"

echo "gopeer crosscheck: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
