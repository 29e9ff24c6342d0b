#!/usr/bin/env bash
# Cross-builds nearq-kernels for aarch64 with Debian's rustc-web (rustup has no aarch64 std
# offline) and runs its tests under qemu-aarch64: once on qemu's default CPU ("max") and once
# on a Cortex-A53 (plain ARMv8.0, no dotprod). See docs SIMD.md.
# Env: SIMD_REQUIRE (default "neon").
set -euo pipefail
cd "$(dirname "$0")/.."
rustup toolchain link debian /usr # idempotent; `cargo +debian` = Debian's cargo + rustc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
# No `-L /usr/aarch64-linux-gnu`: with libc6:arm64 installed it mixes two glibc builds and
# every threaded test binary hangs.
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER=qemu-aarch64
export SIMD_REQUIRE=${SIMD_REQUIRE:-neon}
export NEARQ_EXPECT_LEVEL=neon
unset NEARQ_SIMD
args=(test -p nearq-kernels --target aarch64-unknown-linux-gnu --target-dir target/aarch64)
echo "--- qemu-aarch64 -cpu max (default)"
cargo +debian "${args[@]}"
echo "--- qemu-aarch64 -cpu cortex-a53"
QEMU_CPU=cortex-a53 cargo +debian "${args[@]}"
