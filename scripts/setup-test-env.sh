#!/usr/bin/env bash
# Prepare everything the test suite needs beyond Rust itself. Idempotent and fast when done.
#
#   * .venv/ (gitignored) with torch, numpy and safetensors, used by the interop tests
#     (tests/interop_read.rs, tests/python/*), and maturin and pytest, which build and test the
#     Python package (tests/python_package.rs). pip is skipped when the venv already imports them.
#   * Debian's mesa-vulkan-drivers (lavapipe, a CPU Vulkan driver) for the wgpu backend tests,
#     installed only when its ICD file is missing and we are root.
#
# Environment:
#   PTFILE_SKIP_VENV=1     do not create or touch .venv (interop tests then skip themselves)
#   PTFILE_SKIP_APT=1      do not install Debian packages
#   PTFILE_TORCH_SPEC=...  the pip requirement for torch (default: torch)
#   PYTHON=...             the interpreter that creates the venv (default: python3)
#   PTFILE_LVP_ICD=...     the lavapipe ICD file whose absence means "install it"
#   CI=true                what is missing is an error (exit 1), not a note: no python3 to
#                          create .venv, lavapipe not installable or still missing after
#                          apt-get (set PTFILE_SKIP_APT=1 where another Vulkan driver serves
#                          the wgpu tests). The tests themselves fail under CI without torch
#                          or a wgpu adapter (tests/common/mod.rs).
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
VENV="$ROOT/.venv"
PY="${PYTHON:-python3}"
TORCH_SPEC="${PTFILE_TORCH_SPEC:-torch}"
LVP_ICD="${PTFILE_LVP_ICD:-/usr/share/vulkan/icd.d/lvp_icd.$(uname -m).json}"

say() { echo "[setup-test-env] $*"; }

# CI as the tests read it (tests/common/mod.rs): set to anything but empty, 0 or false.
is_ci() { case "${CI:-}" in "" | 0 | false | FALSE | False) return 1 ;; *) return 0 ;; esac; }

# What is missing: an error under CI (the tests would fail on it anyway, later and less
# clearly), a note otherwise (those tests then skip).
missing() {
    if is_ci; then
        say "ERROR: $* (CI=$CI: the test environment must be complete)"
        exit 1
    fi
    say "note: $*"
}

# ---------------------------------------------------------------------------------------------
# 1. Python venv with torch
# ---------------------------------------------------------------------------------------------
# Prints the versions when .venv imports everything the tests need (one Python start: torch's
# import is most of the time this script takes when there is nothing to do).
venv_versions() {
    [ -x "$VENV/bin/python" ] &&
        "$VENV/bin/python" -c 'import torch, numpy, safetensors, huggingface_hub, zstandard, maturin, pytest; print("torch", torch.__version__, "numpy", numpy.__version__, "safetensors", safetensors.__version__, "huggingface_hub", huggingface_hub.__version__)' 2>/dev/null
}

if [ "${PTFILE_SKIP_VENV:-0}" = 1 ]; then
    say "PTFILE_SKIP_VENV=1: not touching .venv"
elif versions=$(venv_versions); then
    say ".venv ready: $versions"
else
    if ! command -v "$PY" >/dev/null 2>&1; then
        missing "no $PY on PATH: cannot create .venv with torch (the interop tests skip without it; install python3, or set PYTHON)"
    else
        if [ ! -x "$VENV/bin/python" ]; then
            say "creating .venv with $("$PY" --version 2>&1)"
            if ! "$PY" -m venv "$VENV"; then
                # Debian's python3 lacks ensurepip unless python3-venv is installed.
                if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && [ "${PTFILE_SKIP_APT:-0}" != 1 ]; then
                    say "python3 -m venv failed; installing python3-venv"
                    rm -rf "$VENV"
                    apt-get update -qq
                    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
                    "$PY" -m venv "$VENV"
                else
                    say "$PY -m venv failed (if it lacks ensurepip: apt-get install python3-venv as root)"
                    exit 1
                fi
            fi
        fi
        say "pip install $TORCH_SPEC numpy safetensors huggingface_hub zstandard maturin pytest (the default torch wheel is large; this takes a minute)"
        start=$(date +%s)
        "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --progress-bar off \
            "$TORCH_SPEC" numpy safetensors huggingface_hub zstandard maturin pytest
        say "pip done in $(( $(date +%s) - start )) s"
        # The pip cache of a 5 GB install is only dead weight on a CI machine.
        if [ "${CI:-}" = true ]; then "$VENV/bin/python" -m pip cache purge >/dev/null 2>&1 || true; fi
        if versions=$(venv_versions); then
            say ".venv ready: $versions"
        else
            say "ERROR: .venv still cannot import torch, numpy, safetensors, huggingface_hub, zstandard, maturin, pytest"
            "$VENV/bin/python" -c "import torch, numpy, safetensors, huggingface_hub, zstandard, maturin, pytest" || true
            exit 1
        fi
    fi
fi

# ---------------------------------------------------------------------------------------------
# 2. lavapipe (software Vulkan) for the wgpu backend
# ---------------------------------------------------------------------------------------------
if [ -e "$LVP_ICD" ]; then
    say "lavapipe present: $LVP_ICD"
elif [ "${PTFILE_SKIP_APT:-0}" = 1 ]; then
    say "PTFILE_SKIP_APT=1: lavapipe missing, not installing it (wgpu tests skip without an adapter, or fail under CI)"
elif [ "$(id -u)" != 0 ]; then
    missing "lavapipe ($LVP_ICD) is missing and we are not root: run 'sudo apt-get install mesa-vulkan-drivers' for the wgpu backend tests"
elif ! command -v apt-get >/dev/null 2>&1; then
    missing "lavapipe ($LVP_ICD) is missing and there is no apt-get: install a Vulkan driver for the wgpu backend tests"
else
    say "installing mesa-vulkan-drivers (lavapipe)"
    if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mesa-vulkan-drivers >/dev/null; }; then
        missing "apt-get install mesa-vulkan-drivers failed: no lavapipe for the wgpu backend tests"
    elif [ -e "$LVP_ICD" ]; then
        say "lavapipe installed: $LVP_ICD"
    else
        missing "mesa-vulkan-drivers is installed but $LVP_ICD is still missing (set PTFILE_LVP_ICD to its ICD file)"
    fi
fi
