#!/usr/bin/env bash
# Doorway's one entry point for people and CI. Every command first makes sure this machine has what it
# needs (Debian packages, then a locked Python environment in .venv), so each works on a fresh Debian 12.
#
#   ./do demo [ARGS]    two doorways on this machine in a call, synthetic hardware, live statistics
#   ./do test           format check, lint, type check, then the whole test suite (what CI runs)
#   ./do bench [ARGS]   `doorway bench ...` (for example: ./do bench video --seconds 60 --json out/v.json)
#   ./do doorway ARGS   any doorway subcommand inside the environment
#   ./do setup          set-up only
set -euo pipefail
cd "$(dirname "$0")"

UV_VERSION=0.13.9
# Debian packages the project needs at run time or in tests: Python's venv, SDL2 for the display sink,
# Xvfb for the windowed display test, iproute2 for network-namespace tests.
DEB_PACKAGES=(python3 python3-venv libsdl2-2.0-0 libportaudio2 libopus0 xvfb iproute2 ca-certificates)
# Only the tests need these: Chromium drives the admin panel's real-browser tests (Playwright's own browser
# download cannot work here).
TEST_DEB_PACKAGES=(chromium)

setup() {
    local missing=()
    local wanted=("${DEB_PACKAGES[@]}")
    [ "${1:-}" = "test" ] && wanted+=("${TEST_DEB_PACKAGES[@]}")
    for p in "${wanted[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        echo "do: installing Debian packages: ${missing[*]}" >&2
        local sudo=""
        [ "$(id -u)" -eq 0 ] || sudo="sudo"
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
    local py
    py="$(command -v python3.11 || command -v python3)"
    if [ ! -x .tools/bin/uv ] || [ "$(.tools/bin/uv --version | cut -d' ' -f2)" != "$UV_VERSION" ]; then
        "$py" -m venv .tools
        .tools/bin/pip install -q --disable-pip-version-check "uv==$UV_VERSION"
    fi
    # --frozen: install exactly what uv.lock says; the lock is the reproducible appliance build.
    UV_PROJECT_ENVIRONMENT=.venv UV_PYTHON_DOWNLOADS=never \
        .tools/bin/uv sync -q --frozen --all-extras --python "$py"
}

cmd="${1:-}"
[ $# -gt 0 ] && shift
case "$cmd" in
    setup) setup ;;
    demo) setup; exec .venv/bin/doorway demo "$@" ;;
    bench) setup; exec .venv/bin/doorway bench "$@" ;;
    doorway) setup; exec .venv/bin/doorway "$@" ;;
    test)
        setup test
        .venv/bin/ruff format --check .
        .venv/bin/ruff check .
        .venv/bin/mypy
        exec .venv/bin/pytest "$@"
        ;;
    *)
        sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'
        exit 2
        ;;
esac
