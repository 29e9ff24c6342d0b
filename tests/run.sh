#!/usr/bin/env bash
# Sets up everything and runs the whole test suite: Rust formatting, lints and tests, every
# SIMD path (natively and under emulation, see .ci/simd.sh), the Python package built from
# source and its pytest suite, and the workflow lint.
#
#   bash tests/run.sh
#
# Needs: rustup's cargo, python3 (>= 3.9) with venv, and (for the emulated SIMD paths) root
# with apt. NEARQ_SKIP_EMULATION=1 skips the emulated SIMD runs (qemu, Bochs).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
t0=$(date +%s)
say() { printf '\n==== %s (%ss)\n' "$*" "$(( $(date +%s) - t0 ))"; }

say "toolchain"
if ! command -v cargo >/dev/null 2>&1 && [ -f "$HOME/.cargo/env" ]; then
  # shellcheck disable=SC1091
  . "$HOME/.cargo/env"
fi
cargo --version
rustup component add rustfmt clippy >/dev/null 2>&1 || true

say "python environment (.venv)"
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
VPY=$PWD/.venv/bin/python
"$VPY" -m pip install --quiet --upgrade pip
"$VPY" -m pip install --quiet "maturin>=1.5,<2" -r tests/requirements.txt

say "cargo fmt --check"
cargo fmt --all --check

say "cargo clippy -D warnings"
cargo clippy --workspace --all-targets --release -- -D warnings

say "cargo test (native SIMD level)"
cargo test --release

if [ "${NEARQ_SKIP_EMULATION:-0}" != "1" ]; then
  say "SIMD paths under emulation"
  bash .ci/simd.sh
fi

say "build and install the Python package"
rm -rf target/wheels-ci
"$VPY" -m maturin build --release --out target/wheels-ci
"$VPY" -m pip install --quiet --force-reinstall --no-deps target/wheels-ci/nearq-*.whl

say "pytest"
"$VPY" -m pytest -q -p no:cacheprovider tests bench/ann_benchmarks

say "workflow lint"
PYTHON="$VPY" CI= bash tests/lint_workflows.sh

say "all tests passed"
