#!/usr/bin/env bash
# Verifies every SIMD path of rust/nearq-kernels against its scalar reference, on a Debian 12
# x86_64 machine (root, apt reachable). Idempotent; packages already present are not
# reinstalled. See docs SIMD.md for why each route is used.
#
#   native          cargo test --release (AVX2, and AVX-512 if this CPU has it)
#   qemu Westmere   the same test binaries on a CPU without AVX: dispatch must pick scalar
#   qemu Haswell    the same test binaries on an AVX2-only CPU: dispatch must pick avx2
#   qemu aarch64    NEON, cross-built with Debian's rustc (.ci/run-neon-qemu.sh)
#   Bochs           static test binaries on icelake (VNNI, VPOPCNTDQ) and skylake-x (F/BW/VL)
#
# Env: SIMD_SKIP_INSTALL=1 skips the apt step; SIMD_SKIP_SKYLAKE=1 skips the second Bochs run.
set -euo pipefail
cd "$(dirname "$0")/.."
unset NEARQ_SIMD NEARQ_EXPECT_LEVEL SIMD_REQUIRE

summary=()
current=setup
t_all=$(date +%s)
finish() {
  local rc=$?
  echo
  echo "================ SIMD summary ================"
  printf '%s\n' "${summary[@]}"
  if [ "$rc" = 0 ]; then
    echo "ALL PASSED in $(( $(date +%s) - t_all ))s"
  else
    echo "FAILED in step: $current (exit $rc)"
  fi
}
trap finish EXIT

# step NAME WHERE CMD...: runs CMD, records its time.
step() {
  current=$1
  local where=$2; shift 2
  local t0; t0=$(date +%s)
  echo
  echo "################ $current [$where]"
  "$@"
  summary+=("$(printf '%-22s %-52s %5ss  ok' "$current" "$where" $(( $(date +%s) - t0 )))")
}

# Test executables of nearq-kernels from `cargo test --no-run` (extra args passed through).
test_bins() {
  cargo test -p nearq-kernels --release --no-run --message-format=json "$@" 2>/dev/null |
    python3 -c 'import sys, json
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("profile", {}).get("test") and m.get("executable"):
        print(m["executable"])'
}

qemu_bins() { # qemu_bins CPU [VAR=VALUE...]: the native test binaries under qemu-x86_64 -cpu CPU
  local cpu=$1 b; shift
  for b in "${bins[@]}"; do
    echo "--- qemu-x86_64 -cpu $cpu $(basename "$b")"
    env "$@" qemu-x86_64 -cpu "$cpu" "$b"
  done
}

static_build() {
  RUSTFLAGS="-C target-feature=+crt-static" cargo test -p nearq-kernels --release --no-run \
    --target x86_64-unknown-linux-gnu --target-dir target/static
  mapfile -t sbins < <(RUSTFLAGS="-C target-feature=+crt-static" test_bins \
    --target x86_64-unknown-linux-gnu --target-dir target/static)
  [ ${#sbins[@]} -gt 0 ] || { echo "static build produced no test binaries" >&2; return 1; }
  printf '%s\n' "${sbins[@]}"
}

install_packages() {
  local pkgs=(qemu-user gcc-aarch64-linux-gnu libc6-dev-arm64-cross
    rustc-web cargo-web libstd-rust-web-dev:arm64
    bochs bochs-term bochsbios vgabios busybox-static isolinux syslinux-common xorriso cpio)
  local missing=() p
  for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  dpkg --print-foreign-architectures | grep -qx arm64 || dpkg --add-architecture arm64
  # The Bochs step also needs apt lists to fetch the guest kernel.
  if [ ${#missing[@]} -gt 0 ] || ! apt-cache show linux-image-cloud-amd64 >/dev/null 2>&1; then
    apt-get update
  fi
  if [ ${#missing[@]} -gt 0 ]; then
    echo "installing: ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" ||
      { echo "apt-get install of the SIMD toolchain failed" >&2; return 1; }
  else
    echo "all packages present"
  fi
}

cpu_has() { grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' | grep -qx "$1"; }

# ---------------------------------------------------------------------------------------------
if [ "${SIMD_SKIP_INSTALL:-0}" != 1 ]; then
  step apt "dpkg/apt-get" install_packages
fi

# Native: what the kernel's /proc/cpuinfo reports must be what Rust detects and dispatches to.
native_req=avx2,fma native_level=avx2
if cpu_has avx512f && cpu_has avx512bw && cpu_has avx512vl; then
  native_req+=,avx512f,avx512bw,avx512vl native_level=avx512
  cpu_has avx512_vnni && native_req+=,avx512vnni
  cpu_has avx512_vpopcntdq && native_req+=,avx512vpopcntdq
fi
step native "native x86_64 SIMD_REQUIRE=$native_req" \
  env SIMD_REQUIRE="$native_req" NEARQ_EXPECT_LEVEL=$native_level \
  cargo test -p nearq-kernels --release --target-dir target/kernels
mapfile -t bins < <(test_bins --target-dir target/kernels)
[ ${#bins[@]} -gt 0 ] || { echo "no test binaries found" >&2; exit 1; }
dispatch_bin=$(printf '%s\n' "${bins[@]}" | grep '/dispatch-')
step native-caps "native NEARQ_SIMD=avx2 and =scalar" bash -c "
  NEARQ_SIMD=avx2 NEARQ_EXPECT_LEVEL=avx2 '$dispatch_bin' &&
  NEARQ_SIMD=scalar NEARQ_EXPECT_LEVEL=scalar '$dispatch_bin'"

step qemu-westmere "qemu-x86_64 -cpu Westmere (no AVX) => scalar" \
  qemu_bins Westmere NEARQ_EXPECT_LEVEL=scalar
step qemu-haswell "qemu-x86_64 -cpu Haswell SIMD_REQUIRE=avx2,fma => avx2" \
  qemu_bins Haswell SIMD_REQUIRE=avx2,fma NEARQ_EXPECT_LEVEL=avx2

step neon "qemu-aarch64 (max, cortex-a53) SIMD_REQUIRE=neon" .ci/run-neon-qemu.sh

sbins=()
step static-build "cargo test --no-run, crt-static, target/static" static_build
step bochs-icelake "Bochs corei7_icelake_u (F/BW/VL/VNNI/VPOPCNTDQ)" \
  env BOCHS_MODEL=corei7_icelake_u NEARQ_EXPECT_LEVEL=avx512 \
  SIMD_REQUIRE=avx2,fma,avx512f,avx512bw,avx512vl,avx512vnni,avx512vpopcntdq \
  .ci/run-avx512-emulated.sh "${sbins[@]}"
if [ "${SIMD_SKIP_SKYLAKE:-0}" != 1 ]; then
  step bochs-skylake "Bochs corei7_skylake_x (F/BW/VL, no VNNI)" \
    env BOCHS_MODEL=corei7_skylake_x NEARQ_EXPECT_LEVEL=avx512 \
    SIMD_REQUIRE=avx2,fma,avx512f,avx512bw,avx512vl \
    .ci/run-avx512-emulated.sh "${sbins[@]}"
fi
current=done
