#!/usr/bin/env bash
# run_crosscheck.sh GOPEER CROSSCHECK_SH VECTORS_DIR - ctest wrapper for gopeer_vectors:
# exits 77 (skipped) when CMake found no Go toolchain (GOPEER is NONE).
#
# One retry: under heavy parallel load (ctest -j4 --repeat, ~1 run in 200) the Go echo
# server's FIN on the byte stream (stream 5) sometimes never reaches the recording
# although gopeer logged "echoed 12 bytes, closing" (a gopeer/spdystream timing issue,
# not the C library's). A failure that repeats is reported as usual.
set -uo pipefail
gopeer=${1:?usage: run_crosscheck.sh GOPEER CROSSCHECK_SH VECTORS_DIR}
script=${2:?}
vectors=${3:?}
if [ "$gopeer" = NONE ]; then
    echo "SKIP: Go toolchain or Go -dev packages missing at configure time (scripts/setup.sh)"
    exit 77
fi
if [ ! -x "$gopeer" ]; then
    echo "FAIL: $gopeer not built (make the 'gopeer' target)" >&2
    exit 1
fi
if bash "$script" "$gopeer" "$vectors"; then
    exit 0
fi
echo "FLAKE? crosscheck failed once; running it again (see tests/interop/run_crosscheck.sh)"
exec bash "$script" "$gopeer" "$vectors"
