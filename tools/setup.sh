#!/usr/bin/env bash
# setup.sh - installs the Debian packages Strata needs (only those missing),
# then configures and builds it in build/. Safe to run again: it does only
# what is left to do. Used by tools/main.sh and tools/test.sh.
#
# --tests: also what the test suite's clients need: Chromium (the chat page's
# test), Debian's PyTorch (tools/finetune_check.sh, run by tools/test.sh,
# installs transformers and peft beside it), and the `openai` Python package
# from PyPI in build/pyclients (pip
# --target: Debian's own python3 reads it through PYTHONPATH; the system's
# packages are left alone).
#
# Environment: BUILD_DIR (default build), STRATA_WERROR (default true: warnings
# fail the build, as in CI).
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(
    gcc g++ pkg-config meson ninja-build python3 cmake
    ocl-icd-opencl-dev opencl-headers pocl-opencl-icd clinfo
    libclblast-dev libjansson-dev libcmocka-dev libpcre2-dev libunistring-dev
    libopenmpi-dev openmpi-bin libmicrohttpd-dev
    clang libclang-rt-14-dev
)
tests=0
[ "${1:-}" = --tests ] && tests=1
if [ $tests = 1 ]; then
    packages+=(chromium curl python3-pip python3-torch libopenblas0-pthread)
fi

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
if [ $tests = 1 ] && ! PYTHONPATH=build/pyclients /usr/bin/python3 -c 'import openai' 2>/dev/null; then
    echo "setup: installing the openai package (PyPI) into build/pyclients"
    mkdir -p build
    /usr/bin/python3 -m pip install --quiet --disable-pip-version-check --no-warn-script-location --root-user-action=ignore \
        --target build/pyclients.new openai
    rm -rf build/pyclients
    mv build/pyclients.new build/pyclients
fi
