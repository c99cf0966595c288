#!/usr/bin/env bash
# build_gopeer.sh GO_DIR BUILD_SH OUTDIR - runs tests/gopeer/build.sh OUTDIR with the
# directory of the `go` CMake found (e.g. /usr/lib/go/bin) first in PATH.
set -euo pipefail
go_dir=${1:?usage: build_gopeer.sh GO_DIR BUILD_SH OUTDIR}
export PATH="$go_dir:$PATH"
exec bash "${2:?}" "${3:?}"
