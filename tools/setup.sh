#!/usr/bin/env bash
# setup.sh - installs the Debian packages Strata needs (only those missing),
# then configures and builds it in build/. Safe to run again: it does only
# what is left to do. Used by tools/main.sh and tools/test.sh.
#
# Environment: BUILD_DIR (default build), STRATA_WERROR (default true: warnings
# fail the build, as in CI).
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(
    gcc g++ pkg-config meson ninja-build python3 cmake
    ocl-icd-opencl-dev opencl-headers pocl-opencl-icd clinfo
    libclblast-dev libjansson-dev libcmocka-dev libpcre2-dev libunistring-dev
    libopenmpi-dev openmpi-bin
    clang libclang-rt-14-dev
)

missing=()
for p in "${packages[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$p")
    fi
done

if [ "${#missing[@]}" -gt 0 ]; then
    echo "setup: installing ${missing[*]}"
    sudo=""
    if [ "$(id -u)" != 0 ]; then
        if command -v sudo >/dev/null; then
            sudo="sudo"
        else
            echo "setup: these Debian packages are missing and I am not root: ${missing[*]}" >&2
            echo "setup: run as root, or install them with apt-get first" >&2
            exit 1
        fi
    fi
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update -qq
    $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi

build=${BUILD_DIR:-build}
werror=${STRATA_WERROR:-true}
if [ ! -f "$build/build.ninja" ]; then
    meson setup "$build" -Dwerror="$werror"
else
    meson configure "$build" -Dwerror="$werror" >/dev/null
fi
meson compile -C "$build"
