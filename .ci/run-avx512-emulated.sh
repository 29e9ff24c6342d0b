#!/usr/bin/env bash
# Runs static x86_64 test binaries inside Bochs on a CPU model with AVX-512 (QEMU's TCG has
# none). The binaries go into an initramfs with busybox, booted with Debian's cloud kernel
# from an isolinux ISO; serial output goes to a file. See docs SIMD.md.
#
# Usage: .ci/run-avx512-emulated.sh BIN...
# Env: BOCHS_MODEL (default corei7_icelake_u), BOCHS_TIMEOUT (s, default 900),
#      SIMD_REQUIRE (default: all AVX-512 features of icelake), and, passed to the guest when
#      set, NEARQ_EXPECT_LEVEL and PROPTEST_CASES. BOCHS_CACHE (default target/bochs) keeps
#      the downloaded kernel between runs.
set -euo pipefail
[ $# -gt 0 ] || { echo "usage: $0 BIN..." >&2; exit 2; }
model=${BOCHS_MODEL:-corei7_icelake_u}
require=${SIMD_REQUIRE:-avx512f,avx512bw,avx512vl,avx512vnni,avx512vpopcntdq}
tmo=${BOCHS_TIMEOUT:-900}
cache=${BOCHS_CACHE:-target/bochs}
guest_env="SIMD_REQUIRE=$require"
[ -n "${NEARQ_EXPECT_LEVEL:-}" ] && guest_env+=" NEARQ_EXPECT_LEVEL=$NEARQ_EXPECT_LEVEL"
[ -n "${PROPTEST_CASES:-}" ] && guest_env+=" PROPTEST_CASES=$PROPTEST_CASES"

w=$(mktemp -d); trap 'rm -rf "$w"' EXIT
mkdir -p "$w/root/bin" "$w/root/proc" "$w/root/sys" "$w/root/dev" "$w/root/tmp" "$w/root/t" "$w/iso/isolinux"
cp /bin/busybox "$w/root/bin/busybox"
i=0; for b in "$@"; do cp "$b" "$w/root/t/$i-$(basename "$b")"; i=$((i+1)); done
cat > "$w/root/init" <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
echo "guest cpu: $(grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' | grep avx512 | tr '\n' ' ')"
rc=0
for t in /t/*; do echo "=== $t"; "$t" --test-threads=1 || rc=1; done
echo "GUEST_EXIT=$rc"
sleep 3          # let the serial console drain before power-off
poweroff -f
INIT
chmod +x "$w/root/init"
(cd "$w/root" && find . | cpio -o -H newc 2>/dev/null | gzip -1) > "$w/iso/initrd.gz"

# Debian's cloud kernel (6.1), unpacked, not installed; cached by package name.
kpkg=$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-/{print $2; exit}')
[ -n "$kpkg" ] || { echo "no linux-image-cloud-amd64 in the apt cache (run apt-get update)" >&2; exit 1; }
if [ ! -s "$cache/$kpkg.vmlinuz" ]; then
  mkdir -p "$w/k" "$cache"
  (cd "$w/k" && apt-get download "$kpkg" >/dev/null 2>&1 && dpkg-deb -x ./*.deb x)
  cp "$w"/k/x/boot/vmlinuz-* "$cache/$kpkg.vmlinuz"
fi
cp "$cache/$kpkg.vmlinuz" "$w/iso/vmlinuz"
cp /usr/lib/ISOLINUX/isolinux.bin /usr/lib/syslinux/modules/bios/ldlinux.c32 "$w/iso/isolinux/"
# clearcpuid 321,323,515,516 = xsavec,xsaves,pku,ospke (Bochs 2.7 XSAVE CPUID bugs: the kernel
# would disable XSAVE, so no AVX at all); 514,534,580 = umip,rdpid,fsrm and nofsgsbase: without
# them the icelake/tigerlake models hang after "LSM: Security Framework initializing".
# Kernel arguments K=V reach init as environment variables.
cat > "$w/iso/isolinux/isolinux.cfg" <<CFG
DEFAULT t
PROMPT 0
TIMEOUT 0
LABEL t
  KERNEL /vmlinuz
  APPEND initrd=/initrd.gz console=ttyS0 quiet panic=-1 mitigations=off nofsgsbase clearcpuid=321,323,514,515,516,534,580 $guest_env
CFG
xorriso -as mkisofs -quiet -o "$w/test.iso" -b isolinux/isolinux.bin -c isolinux/boot.cat \
  -no-emul-boot -boot-load-size 4 -boot-info-table "$w/iso" 2>/dev/null
cat > "$w/bochsrc" <<RC
megs: 512
cpu: model=$model, count=1, ips=50000000
clock: sync=none, time0=local
romimage: file=/usr/share/bochs/BIOS-bochs-latest
vgaromimage: file=/usr/share/vgabios/vgabios.bin
ata0-master: type=cdrom, path=$w/test.iso, status=inserted
boot: cdrom
com1: enabled=1, mode=file, dev=$w/serial.log
display_library: rfb, options="timeout=0"
log: $w/bochs.log
panic: action=fatal
error: action=ignore
info: action=ignore
debug: action=ignore
RC
printf "c\nquit\n" > "$w/dbg.rc"   # Debian's bochs-bin has the debugger built in: "c" = run
start=$(date +%s)
# unshare -n: rfb (the only display library built in) listens on :5900; keep it off the network.
unshare -n bochs-bin -q -f "$w/bochsrc" -rc "$w/dbg.rc" > "$w/bochs.out" 2>&1 < /dev/null &
bp=$!
while kill -0 "$bp" 2>/dev/null; do
  grep -q 'GUEST_EXIT=' "$w/serial.log" 2>/dev/null && { sleep 2; kill "$bp" 2>/dev/null || true; break; }
  [ $(( $(date +%s) - start )) -ge "$tmo" ] && { echo "bochs: timeout after ${tmo}s"; kill "$bp" 2>/dev/null || true; break; }
  sleep 2
done
wait "$bp" 2>/dev/null || true
sed -n '/^guest cpu:/,/^GUEST_EXIT=/p' "$w/serial.log" 2>/dev/null | tr -d '\r'
echo "bochs ($model): $(( $(date +%s) - start ))s"
rc=$(tr -d '\r' < "$w/serial.log" 2>/dev/null | sed -n 's/^GUEST_EXIT=//p' | tail -1)
[ "$rc" = 0 ]
