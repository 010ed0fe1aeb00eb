#!/usr/bin/env bash
# Run every test: the one command for developers and CI (.ci/run calls it).
#
#   1. scripts/setup-test-env.sh: .venv with torch (interop tests), lavapipe (wgpu tests)
#   2. cargo fmt --check, cargo clippy -D warnings over every target and feature, cargo doc
#      with warnings as errors, and a check that the library without default features
#      (no `cli`) depends on neither clap nor indicatif
#   3. cargo test over the whole workspace with the wgpu, cuda and conformance features:
#      doc tests, then the unit and integration tests
#
# The test run is last, so the output ends with cargo's own summary; the script exits
# non-zero when any step failed.
#
# Environment:
#   PTFILE_SKIP_LINT=1   skip step 2 (a quick local run)
#   PTFILE_TEST_ARGS     cargo test's target selection instead of every test (and no doc
#                        tests), e.g. "--test fixtures_check --test interop_read"
#   PTFILE_PYTHON        the Python with torch, numpy and safetensors for the interop tests
#                        (default: .venv/bin/python when it imports them; exported for them)
#   CI=true              a complete environment is required: no torch Python is an error
#                        here, and the tests fail rather than skip without torch, a wgpu
#                        adapter or a C compiler (tests/common/mod.rs, PTFILE_REQUIRE)
#   and those of setup-test-env.sh (PTFILE_SKIP_VENV, PTFILE_SKIP_APT, ...)
set -euo pipefail

cd "$(dirname "$0")/.."

step() { echo; echo "==> $*"; }

FEATURES="wgpu,cuda,conformance,dlpack,ndarray,candle"

step "setting up the test environment"
bash scripts/setup-test-env.sh

# CI as the tests read it (tests/common/mod.rs): set to anything but empty, 0 or false.
is_ci() { case "${CI:-}" in "" | 0 | false | FALSE | False) return 1 ;; *) return 0 ;; esac; }

# The interop tests' Python: the caller's PTFILE_PYTHON, else .venv's; it must import what
# they import (tests/interop_read.rs, tests/interop_write.rs).
TORCH_IMPORTS="import torch, numpy, safetensors.torch"
if [ -n "${PTFILE_PYTHON:-}" ]; then
    torch_py="$PTFILE_PYTHON"
else
    torch_py="$PWD/.venv/bin/python"
fi
if [ -x "$torch_py" ] && "$torch_py" -c "$TORCH_IMPORTS" >/dev/null 2>&1; then
    export PTFILE_PYTHON="$torch_py"
    echo "PTFILE_PYTHON=$PTFILE_PYTHON"
elif is_ci; then
    if [ -x "$torch_py" ]; then
        echo "error: CI=$CI but $torch_py cannot '$TORCH_IMPORTS':" >&2
        "$torch_py" -c "$TORCH_IMPORTS" 2>&1 | tail -3 >&2 || true
    else
        echo "error: CI=$CI but there is no Python with torch: $torch_py is not an executable" >&2
    fi
    echo "run scripts/setup-test-env.sh (without PTFILE_SKIP_VENV=1), or set PTFILE_PYTHON to a Python that imports torch, numpy and safetensors" >&2
    exit 1
elif [ -n "${PTFILE_PYTHON:-}" ]; then
    # Exported as given: the interop tests then fail naming it (an explicit Python must work).
    echo "note: PTFILE_PYTHON=$PTFILE_PYTHON cannot '$TORCH_IMPORTS': the interop tests will fail"
else
    echo "note: no .venv with torch: the interop tests will skip (CI=true makes that an error)"
fi

# A CI run builds from scratch once: incremental compilation only costs time there.
if [ "${CI:-}" = true ]; then
    export CARGO_INCREMENTAL=0
fi
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
# The Vulkan loader (wgpu on lavapipe) complains on every start when this is unset.
if [ -z "${XDG_RUNTIME_DIR:-}" ]; then
    XDG_RUNTIME_DIR=$(mktemp -d "${TMPDIR:-/tmp}/ptfile-xdg.XXXXXX")
    export XDG_RUNTIME_DIR
fi
# Backtraces in test failures, without the full frame dump.
export RUST_BACKTRACE="${RUST_BACKTRACE:-1}"

echo "$(cargo --version), $(rustc --version)"

if [ "${PTFILE_SKIP_LINT:-0}" != 1 ]; then
    step "cargo fmt --all --check"
    if ! cargo fmt --all --check -- --color never; then
        echo "error: code is not formatted: run 'cargo fmt --all'" >&2
        exit 1
    fi

    step "cargo clippy --workspace --all-targets --features $FEATURES -- -D warnings"
    cargo clippy --workspace --all-targets --features "$FEATURES" -- -D warnings

    step "RUSTDOCFLAGS=-Dwarnings cargo doc --no-deps --workspace --features $FEATURES"
    RUSTDOCFLAGS=-Dwarnings cargo doc --no-deps --workspace --features "$FEATURES"

    # The library alone (a dependency of someone's crate) must not pull in the CLI's crates:
    # clap and indicatif belong to the `cli` feature.
    step "cargo tree -e normal -p ptfile --no-default-features: no clap, no indicatif"
    tree=$(cargo tree -e normal -p ptfile --no-default-features --prefix none --format '{p}')
    cli_deps=$(grep -E '^(clap|clap_builder|clap_derive|clap_lex|indicatif) ' <<<"$tree" | sort -u || true)
    if [ -n "$cli_deps" ]; then
        echo "error: ptfile without default features depends on CLI crates:" >&2
        echo "$cli_deps" >&2
        echo "(put them behind the 'cli' feature: optional = true, cli = [\"dep:clap\", ...])" >&2
        exit 1
    fi
    echo "ok: $(sed "s/ (\*)$//" <<<"$tree" | sort -u | grep -c .) crates, none of them clap or indicatif"
fi

# Fuzz smoke: each cargo-fuzz target for a short while, seeded with the torch fixtures, where
# cargo-fuzz is installed (it needs RUSTC_BOOTSTRAP=1 on stable). The regression corpus of
# every finding runs in tests/hostile.rs on every machine.
if [ "${PTFILE_SKIP_FUZZ:-0}" != 1 ] && cargo fuzz --version >/dev/null 2>&1; then
    step "fuzz smoke: ${PTFILE_FUZZ_SECONDS:-20} s per target"
    smoke=$(mktemp -d)
    for t in pickle archive open_describe; do
        mkdir -p "$smoke/$t"
        if ! RUSTC_BOOTSTRAP=1 cargo fuzz run "$t" "$smoke/$t" tests/fixtures -- \
            -max_total_time="${PTFILE_FUZZ_SECONDS:-20}" -rss_limit_mb=2560 -timeout=30 \
            -max_len=65536 -print_final_stats=1 >"$smoke/$t.log" 2>&1; then
            tail -40 "$smoke/$t.log"
            echo "error: fuzz target $t failed (its input is in fuzz/artifacts/$t)" >&2
            exit 1
        fi
        echo "$t: $(grep -E 'stat::number_of_executed_units' "$smoke/$t.log" | tail -1)"
    done
    rm -rf "$smoke"
else
    echo "note: cargo-fuzz is not installed: fuzz smoke skipped (tests/hostile.rs runs the regression corpus)"
fi

# Doc tests first: the run that comes last then ends on the summary of a real test binary
# (a doc-test crate with no examples would close the output on "0 passed").
set +e
if [ -z "${PTFILE_TEST_ARGS:-}" ]; then
    step "cargo test --workspace --features $FEATURES --doc"
    cargo test --workspace --features "$FEATURES" --no-fail-fast --doc
    doc_status=$?
else
    doc_status=0
fi

TARGETS="${PTFILE_TEST_ARGS:---lib --bins --tests}"
step "cargo test --workspace --features $FEATURES $TARGETS"
# shellcheck disable=SC2086  # TARGETS is a list of words
cargo test --workspace --features "$FEATURES" --no-fail-fast $TARGETS
status=$?
set -e
if [ "$status" -eq 0 ] && [ "$doc_status" -ne 0 ]; then
    echo "error: the doc tests failed (above)" >&2
    status=$doc_status
fi
exit "$status"
