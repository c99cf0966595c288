#!/usr/bin/env bash
# setup.sh - installs the Debian packages that libchan's build, tests and demo
# need, and nothing else. Idempotent: when everything is present it only asks
# dpkg (no network, well under a second) and prints nothing.
#
#   scripts/setup.sh            install what is missing
#   scripts/setup.sh --check    only report what is missing (exit 1 if anything is)
set -euo pipefail

# One package per line, with why. Add a layer's dependency here when it lands
# (libssl-dev for tls://, libwslay-dev for ws://, libnghttp2-dev for h2://).
PACKAGES=(
    build-essential   # gcc, make, libc headers; gcc pulls in the ASan/UBSan/TSan runtimes
    cmake             # the build
    pkg-config        # finds msgpack, cmocka, zlib; libchan.pc for users
    libmsgpack-dev    # msgpack primitives for the codec
    libcmocka-dev     # the unit-test framework
    zlib1g-dev        # SPDY/3 header-block compression
    libjansson-dev    # JSON for the lchan tool (tools/lchan)
    util-linux        # setarch, to run ThreadSanitizer builds without ASLR when needed
    # tests/gopeer: a Go peer built offline from Debian's Go sources (GOPATH mode)
    golang-go                            # Go 1.19 toolchain
    golang-github-docker-spdystream-dev  # SPDY/3 library docker/libchan's spdy transport uses
    golang-github-ugorji-go-codec-dev    # msgpack codec (docker/libchan used a fork of it)
)

check_only=0
case "${1:-}" in
    --check) check_only=1 ;;
    "") ;;
    *) echo "usage: $0 [--check]" >&2; exit 2 ;;
esac

missing=()
for p in "${PACKAGES[@]}"; do
    # 'install ok installed' is the only state in which the package is usable;
    # half-installed or config-files-only packages count as missing.
    status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
    if [ "$status" != "install ok installed" ]; then
        missing+=("$p")
    fi
done

if [ "${#missing[@]}" -eq 0 ]; then
    exit 0
fi

if [ "$check_only" -eq 1 ]; then
    echo "setup: missing Debian packages: ${missing[*]}"
    exit 1
fi

echo "setup: installing Debian packages: ${missing[*]}"
SUDO=()
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO=(sudo)
    else
        echo "setup: not root and sudo is not available; install as root: apt-get install ${missing[*]}" >&2
        exit 1
    fi
fi

export DEBIAN_FRONTEND=noninteractive
apt_get() { "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -qq -o=Dpkg::Use-Pty=0 "$@"; }

# A fresh machine has no package lists; a transient mirror error gets one retry.
if ! apt_get update; then
    echo "setup: apt-get update failed, retrying once" >&2
    sleep 3
    apt_get update
fi
# apt-utils is absent on minimal images; debconf's note about it is noise.
apt_get install -y --no-install-recommends "${missing[@]}" 2> >(grep -v 'apt-utils is not installed' >&2) >/dev/null

# Verify rather than trust apt's exit code.
still=()
for p in "${missing[@]}"; do
    status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
    [ "$status" = "install ok installed" ] || still+=("$p")
done
if [ "${#still[@]}" -ne 0 ]; then
    echo "setup: could not install: ${still[*]}" >&2
    exit 1
fi
echo "setup: done"
