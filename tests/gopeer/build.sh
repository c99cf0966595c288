#!/usr/bin/env bash
# build.sh OUTDIR - builds OUTDIR/gopeer offline from Debian's Go sources (GOPATH mode:
# golang-go, golang-github-docker-spdystream-dev and golang-github-ugorji-go-codec-dev,
# all installed by scripts/setup.sh). Does nothing when OUTDIR/gopeer is newer than the
# sources and this script.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
out=${1:?usage: build.sh OUTDIR}
mkdir -p "$out"
out=$(cd "$out" && pwd)
bin="$out/gopeer"

if [ -x "$bin" ] && [ -z "$(find "$here" -maxdepth 1 \( -name '*.go' -o -name build.sh \) -newer "$bin")" ]; then
    exit 0
fi

if ! command -v go >/dev/null 2>&1; then
    echo "gopeer: 'go' not found; run scripts/setup.sh (Debian golang-go)" >&2
    exit 1
fi
for d in github.com/docker/spdystream github.com/ugorji/go/codec; do
    if [ ! -d "/usr/share/gocode/src/$d" ]; then
        echo "gopeer: /usr/share/gocode/src/$d missing; run scripts/setup.sh" >&2
        exit 1
    fi
done

# GOPATH mode: imports resolve under /usr/share/gocode/src, no module download, no
# network (GOPROXY=off makes any attempt fail at once). The build cache stays in OUTDIR,
# so a read-only or absent HOME does not matter.
export GO111MODULE=off GOPATH=/usr/share/gocode GOPROXY=off GOFLAGS='' GOTOOLCHAIN=local \
       CGO_ENABLED=0 GOCACHE="$out/gopeer-go-cache"
cd "$here"
go build -o "$bin.tmp.$$" .
mv -f "$bin.tmp.$$" "$bin"
