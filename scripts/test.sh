#!/usr/bin/env bash
# Run every test: the one command for developers and CI (.ci/run calls it).
#
#   1. scripts/setup-test-env.sh: .venv with torch (interop tests), lavapipe (wgpu tests)
#   2. cargo fmt --check, then cargo clippy -D warnings over every target and feature
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
#   and those of setup-test-env.sh (PTFILE_SKIP_VENV, PTFILE_SKIP_APT, ...)
set -euo pipefail

cd "$(dirname "$0")/.."

step() { echo; echo "==> $*"; }

FEATURES="wgpu,cuda,conformance"

step "setting up the test environment"
bash scripts/setup-test-env.sh

if [ -x .venv/bin/python ] && .venv/bin/python -c "import torch" >/dev/null 2>&1; then
    export PTFILE_PYTHON="$PWD/.venv/bin/python"
    echo "PTFILE_PYTHON=$PTFILE_PYTHON"
else
    echo "note: no .venv with torch: the interop tests will skip"
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
