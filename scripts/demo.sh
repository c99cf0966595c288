#!/usr/bin/env bash
# demo.sh - sets up the machine, builds libchan (plain -O2, in build/demo) and
# runs the worker-pool demonstration: worker threads register by sending their
# own inbox channel to a registry, and client requests carry reply channels.
#
#   scripts/demo.sh                         4 workers, 3 clients, 5 requests each
#   scripts/demo.sh WORKERS CLIENTS REQS    your own sizes
#
# The network demo (a client and a server speaking docker/libchan's protocol)
# will replace this once sessions land.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
BUILD=build/demo

bash scripts/setup.sh

echo "==> building libchan in $BUILD"
# Tests and benchmarks are not needed for the demo; skipping them keeps it quick.
cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DLIBCHAN_SANITIZE= \
      -DLIBCHAN_BUILD_EXAMPLES=ON -DLIBCHAN_BUILD_TESTS=OFF -DLIBCHAN_BUILD_BENCH=OFF >/dev/null
cmake --build "$BUILD" -j "$(nproc 2>/dev/null || echo 2)" --target worker_pool >/dev/null

echo "==> running $BUILD/examples/worker_pool $*"
echo
exec "$BUILD/examples/worker_pool" "$@"
