//! Every kernel of every table this CPU runs, compared with the scalar reference.
//!
//! Integer kernels must match exactly; float kernels to `1e-4 * sum |terms| + 1e-5`.
//! Inputs start at unaligned offsets of larger buffers, and lengths cover every tail.
//!
//! `SIMD_REQUIRE` (comma-separated feature names) turns "feature not detected, skip" into a
//! failure, so an emulated run on the wrong CPU model cannot pass by skipping.

use nearq_kernels::{all_variants, kernels_for, scalar, Kernels, SimdLevel};
use proptest::prelude::*;

/// `detected`, unless SIMD_REQUIRE lists `feature` and it is missing: then panic.
fn have(feature: &str, detected: bool) -> bool {
    let req = std::env::var("SIMD_REQUIRE").unwrap_or_default();
    assert!(
        detected || !req.split(',').any(|f| f.trim() == feature),
        "{feature} required by SIMD_REQUIRE but not detected"
    );
    detected
}

fn detected(feature: &str) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        match feature {
            "avx2" => is_x86_feature_detected!("avx2"),
            "fma" => is_x86_feature_detected!("fma"),
            "avx512f" => is_x86_feature_detected!("avx512f"),
            "avx512bw" => is_x86_feature_detected!("avx512bw"),
            "avx512vl" => is_x86_feature_detected!("avx512vl"),
            "avx512vnni" => is_x86_feature_detected!("avx512vnni"),
            "avx512vpopcntdq" => is_x86_feature_detected!("avx512vpopcntdq"),
            _ => false,
        }
    }
    #[cfg(target_arch = "aarch64")]
    {
        match feature {
            "neon" => std::arch::is_aarch64_feature_detected!("neon"),
            _ => false,
        }
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        let _ = feature;
        false
    }
}

/// The SIMD tables under test (every variant but scalar).
fn simd_tables() -> Vec<&'static Kernels> {
    all_variants()
        .into_iter()
        .filter(|k| k.level != SimdLevel::Scalar)
        .collect()
}

fn close(got: f32, want: f32, abs_terms: f32) -> bool {
    (got - want).abs() <= 1e-4 * abs_terms + 1e-5
}

fn check_f32(k: &Kernels, a: &[f32], b: &[f32]) {
    let l2_terms: f32 = a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum();
    let dot_terms: f32 = a.iter().zip(b).map(|(x, y)| (x * y).abs()).sum();
    let (got, want) = ((k.l2sq_f32)(a, b), scalar::l2sq_f32(a, b));
    assert!(
        close(got, want, l2_terms),
        "{} l2sq_f32 n={}: {got} vs {want}",
        k.isa,
        a.len()
    );
    let (got, want) = ((k.dot_f32)(a, b), scalar::dot_f32(a, b));
    assert!(
        close(got, want, dot_terms),
        "{} dot_f32 n={}: {got} vs {want}",
        k.isa,
        a.len()
    );
}

fn check_f32_u8(k: &Kernels, a: &[f32], b: &[u8]) {
    let terms: f32 = a.iter().zip(b).map(|(x, &y)| (x * y as f32).abs()).sum();
    let (got, want) = ((k.dot_f32_u8)(a, b), scalar::dot_f32_u8(a, b));
    assert!(
        close(got, want, terms),
        "{} dot_f32_u8 n={}: {got} vs {want}",
        k.isa,
        a.len()
    );
}

/// `m` holds at least `rows * x.len()` values.
fn check_matvec(k: &Kernels, m: &[f32], x: &[f32], rows: usize) {
    let n = x.len();
    let m = &m[..rows * n];
    let mut want = vec![0.0f32; rows];
    scalar::matvec_f32(m, x, &mut want);
    let mut got = vec![f32::NAN; rows]; // the kernel must overwrite
    (k.matvec_f32)(m, x, &mut got);
    for r in 0..rows {
        let terms: f32 = m[r * n..(r + 1) * n]
            .iter()
            .zip(x)
            .map(|(a, b)| (a * b).abs())
            .sum();
        assert!(
            close(got[r], want[r], terms),
            "{} matvec_f32 rows={rows} n={n} row {r}: {} vs {}",
            k.isa,
            got[r],
            want[r]
        );
    }
}

/// IEEE binary16 bit patterns of `v` (round to nearest even).
fn to_f16(v: &[f32]) -> Vec<u16> {
    v.iter()
        .map(|&x| half::f16::from_f32(x).to_bits())
        .collect()
}

/// `m` holds at least `rows * x.len()` half-precision values.
fn check_matvec_f16(k: &Kernels, m: &[u16], x: &[f32], rows: usize) {
    let n = x.len();
    let m = &m[..rows * n];
    let mut want = vec![0.0f32; rows];
    scalar::matvec_f16(m, x, &mut want);
    let mut got = vec![f32::NAN; rows]; // the kernel must overwrite
    (k.matvec_f16)(m, x, &mut got);
    for r in 0..rows {
        let terms: f32 = m[r * n..(r + 1) * n]
            .iter()
            .zip(x)
            .map(|(&a, b)| (scalar::f16_to_f32(a) * b).abs())
            .sum();
        assert!(
            close(got[r], want[r], terms),
            "{} matvec_f16 rows={rows} n={n} row {r}: {} vs {}",
            k.isa,
            got[r],
            want[r]
        );
    }
}

fn check_l2sq_f16(k: &Kernels, a: &[f32], b: &[u16]) {
    let terms: f32 = a
        .iter()
        .zip(b)
        .map(|(x, &h)| (x - scalar::f16_to_f32(h)).powi(2))
        .sum();
    let (got, want) = ((k.l2sq_f32_f16)(a, b), scalar::l2sq_f32_f16(a, b));
    assert!(
        close(got, want, terms),
        "{} l2sq_f32_f16 n={}: {got} vs {want}",
        k.isa,
        a.len()
    );
}

/// `planes` holds at least `MAX_BITPLANES * ceil(a.len() / 8)` bytes; checks every plane
/// count from 0 to `max_planes`.
fn check_bitplanes(k: &Kernels, a: &[f32], planes: &[u8], max_planes: usize) {
    let pb = a.len().div_ceil(8);
    for np in 0..=max_planes {
        if a.is_empty() && np > 0 {
            break;
        }
        let p = &planes[..np * pb];
        let terms: f32 = a
            .iter()
            .enumerate()
            .map(|(i, x)| {
                let c: u32 = (0..np)
                    .map(|j| ((p[j * pb + i / 8] >> (i % 8)) as u32 & 1) << j)
                    .sum();
                (x * c as f32).abs()
            })
            .sum();
        let (got, want) = ((k.dot_f32_bitplanes)(a, p), scalar::dot_f32_bitplanes(a, p));
        assert!(
            close(got, want, terms),
            "{} dot_f32_bitplanes n={} planes={np}: {got} vs {want}",
            k.isa,
            a.len()
        );
    }
}

fn check_bytes(k: &Kernels, a: &[u8], b: &[u8]) {
    let bi: Vec<i8> = b.iter().map(|&x| x as i8).collect();
    assert_eq!(
        (k.dot_u8_i8)(a, &bi),
        scalar::dot_u8_i8(a, &bi),
        "{} dot_u8_i8 n={}",
        k.isa,
        a.len()
    );
    assert_eq!(
        (k.dot_u8)(a, b),
        scalar::dot_u8(a, b),
        "{} dot_u8 n={}",
        k.isa,
        a.len()
    );
    // 4-bit codes packed in the first ceil(n / 2) bytes of `a`, against `b` as i8.
    let packed = &a[..a.len().div_ceil(2)];
    assert_eq!(
        (k.dot_u4_i8)(packed, &bi),
        scalar::dot_u4_i8(packed, &bi),
        "{} dot_u4_i8 n={}",
        k.isa,
        a.len()
    );
}

fn check_popcount(k: &Kernels, a: &[u64], b: &[u64]) {
    assert_eq!(
        (k.and_popcount_u64)(a, b),
        scalar::and_popcount_u64(a, b),
        "{} and_popcount_u64 n={}",
        k.isa,
        a.len()
    );
}

fn check_fastscan(k: &Kernels, codes: &[u8], luts: &[u8]) {
    let mut want = [0u16; 32];
    scalar::fastscan_u16(codes, luts, &mut want);
    let mut got = [0xA5A5u16; 32]; // the kernel must overwrite, not accumulate
    (k.fastscan_u16)(codes, luts, &mut got);
    assert_eq!(got, want, "{} fastscan_u16 m={}", k.isa, luts.len() / 16);
}

/// Small deterministic generator for the exhaustive sweeps (xorshift64*).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
    fn floats(&mut self, n: usize) -> Vec<f32> {
        (0..n)
            .map(|_| (self.next() >> 40) as f32 / (1u64 << 24) as f32 * 20.0 - 10.0)
            .collect()
    }
}

// ---- feature gates (SIMD_REQUIRE) ----

#[test]
fn simd_require_lists_only_detected_features() {
    let req = std::env::var("SIMD_REQUIRE").unwrap_or_default();
    for f in req.split(',').map(str::trim).filter(|f| !f.is_empty()) {
        assert!(
            detected(f),
            "{f} required by SIMD_REQUIRE but not detected (or not a known feature name)"
        );
    }
}

#[test]
fn avx2_table_present() {
    if !(have("avx2", detected("avx2")) && have("fma", detected("fma"))) {
        return;
    }
    assert_eq!(
        kernels_for(SimdLevel::Avx2).map(|k| k.level),
        Some(SimdLevel::Avx2)
    );
}

#[test]
fn avx512_tables_present() {
    let base = have("avx512f", detected("avx512f"))
        & have("avx512bw", detected("avx512bw"))
        & have("avx512vl", detected("avx512vl"));
    let vnni = have("avx512vnni", detected("avx512vnni"));
    let popcnt = have("avx512vpopcntdq", detected("avx512vpopcntdq"));
    if !base {
        return;
    }
    let best = kernels_for(SimdLevel::Avx512).expect("AVX-512 F/BW/VL detected but no table");
    assert_eq!(best.isa.contains("vnni"), vnni, "best table {}", best.isa);
    assert_eq!(
        best.isa.contains("vpopcntdq"),
        popcnt,
        "best table {}",
        best.isa
    );
    let n = simd_tables()
        .iter()
        .filter(|k| k.level == SimdLevel::Avx512)
        .count();
    assert_eq!(
        n,
        1 << (vnni as u32 + popcnt as u32),
        "one table per VNNI x VPOPCNTDQ combination"
    );
}

#[test]
fn neon_table_present() {
    if !have("neon", detected("neon")) {
        return;
    }
    assert_eq!(
        kernels_for(SimdLevel::Neon).map(|k| k.level),
        Some(SimdLevel::Neon)
    );
}

// ---- half precision: every bit pattern ----

#[test]
fn f16_to_f32_matches_half_for_every_pattern() {
    for h in 0..=u16::MAX {
        let (got, want) = (scalar::f16_to_f32(h), half::f16::from_bits(h).to_f32());
        assert_eq!(got.to_bits(), want.to_bits(), "{h:#06x}: {got} vs {want}");
    }
}

/// `l2sq_f32_f16(a, b)` is the f32 distance to `b` widened: every finite pattern goes through
/// the body and the tail of every table (one nonzero difference at a time, so the sum is exact).
#[test]
fn l2sq_f32_f16_widens_every_finite_pattern_exactly() {
    let finite: Vec<u16> = (0..=u16::MAX)
        .filter(|h| h & 0x7c00 != 0x7c00 && h & 0x7fff < 0x5c00)
        .collect();
    for k in all_variants() {
        for n in [1usize, 7, 16, 37, 64, 100] {
            for chunk in finite.chunks(n) {
                let a = vec![0.0f32; chunk.len()];
                for j in 0..chunk.len() {
                    let mut b = vec![0u16; chunk.len()];
                    b[j] = chunk[j];
                    let x = scalar::f16_to_f32(chunk[j]);
                    let got = (k.l2sq_f32_f16)(&a, &b);
                    assert!(got == x * x, "{} n={n} j={j}: {got} vs {}", k.isa, x * x);
                }
            }
        }
    }
}

/// Every finite f16 pattern converts exactly in every table, through the body and the tail
/// of a row: `x` is a unit vector `e_j`, so `out[r]` is entry `j` of row `r` (the other terms
/// are zeros).
#[test]
fn matvec_f16_converts_every_finite_pattern_exactly() {
    let finite: Vec<u16> = (0..=u16::MAX).filter(|h| h & 0x7c00 != 0x7c00).collect();
    for k in all_variants() {
        for n in [1usize, 5, 8, 16, 23, 32, 37] {
            let rows = finite.len() / n;
            let m = &finite[..rows * n];
            let mut out = vec![f32::NAN; rows];
            for j in 0..n {
                let mut x = vec![0.0f32; n];
                x[j] = 1.0;
                (k.matvec_f16)(m, &x, &mut out);
                for (r, &o) in out.iter().enumerate() {
                    let want = scalar::f16_to_f32(m[r * n + j]);
                    assert!(
                        o == want,
                        "{} n={n} row {r} col {j}: {o} vs {want} ({:#06x})",
                        k.isa,
                        m[r * n + j]
                    );
                }
            }
        }
        // Infinities and NaNs propagate as in f32 arithmetic.
        let special = [
            0x7c00u16, 0xfc00, 0x7e00, 0x7c01, 0xfe00, 0x3c00, 0x0001, 0x8000,
        ];
        let mut out = [0.0f32; 8];
        (k.matvec_f16)(&special, &[1.0], &mut out);
        for (&h, &o) in special.iter().zip(&out) {
            let want = scalar::f16_to_f32(h);
            assert!(
                o == want || (o.is_nan() && want.is_nan()),
                "{} {h:#06x}: {o} vs {want}",
                k.isa
            );
        }
    }
}

#[test]
fn matvec_f16_rejects_a_wrong_shape() {
    for k in all_variants() {
        let r = std::panic::catch_unwind(|| {
            let mut out = [0.0f32; 3];
            (k.matvec_f16)(&[0u16; 8], &[1.0, 2.0, 3.0], &mut out);
        });
        assert!(r.is_err(), "{} accepted 8 entries for 3 × 3", k.isa);
    }
}

// ---- exhaustive sweeps: every length 0..=260 at several misalignments ----

#[test]
fn every_length_and_offset() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let fa = rng.floats(300);
    let fb = rng.floats(300);
    let ba = rng.bytes(300);
    let bb = rng.bytes(300);
    let wa: Vec<u64> = (0..300).map(|_| rng.next()).collect();
    let wb: Vec<u64> = (0..300).map(|_| rng.next()).collect();
    for k in simd_tables() {
        for n in 0..=260 {
            for (oa, ob) in [(0, 0), (1, 3), (3, 1), (7, 5)] {
                check_f32(k, &fa[oa..oa + n], &fb[ob..ob + n]);
                check_f32_u8(k, &fa[oa..oa + n], &bb[ob..ob + n]);
                check_bitplanes(k, &fa[oa..oa + n], &bb[ob..], 3);
                check_bytes(k, &ba[oa..oa + n], &bb[ob..ob + n]);
                if n <= 40 {
                    check_popcount(k, &wa[oa..oa + n], &wb[ob..ob + n]);
                }
            }
        }
        let big = rng.floats(9 * 300);
        let big16 = to_f16(&big);
        for rows in 0..=9 {
            for n in (0..=70).chain([128, 255, 256, 257, 300]) {
                for off in [0, 3] {
                    check_matvec(k, &big[off..], &fa[off..off + n.min(300 - off)], rows);
                    check_matvec_f16(k, &big16[off..], &fa[off..off + n.min(300 - off)], rows);
                }
            }
        }
        for n in 0..=260 {
            for (oa, ob) in [(0, 0), (1, 3), (3, 1)] {
                check_l2sq_f16(k, &fa[oa..oa + n], &big16[ob..ob + n]);
            }
        }
        for m in 0..=12 {
            for off in [0, 1, 7] {
                check_fastscan(k, &ba[off..off + 16 * m], &bb[off + 3..off + 3 + 16 * m]);
            }
        }
    }
}

#[test]
fn extreme_values_are_exact() {
    for k in simd_tables() {
        for n in [1, 15, 16, 17, 31, 32, 33, 63, 64, 65, 127, 128, 129, 300] {
            let ones = vec![255u8; n];
            let neg = vec![i8::MIN; n];
            let pos = vec![i8::MAX; n];
            assert_eq!(
                (k.dot_u8_i8)(&ones, &neg),
                -255 * 128 * n as i32,
                "{} n={n}",
                k.isa
            );
            assert_eq!(
                (k.dot_u8_i8)(&ones, &pos),
                255 * 127 * n as i32,
                "{} n={n}",
                k.isa
            );
            assert_eq!(
                (k.dot_u8)(&ones, &ones),
                255 * 255 * n as u32,
                "{} n={n}",
                k.isa
            );
            assert_eq!(
                (k.dot_u4_i8)(&ones[..n.div_ceil(2)], &neg),
                -15 * 128 * n as i32,
                "{} dot_u4_i8 n={n}",
                k.isa
            );
            let all = vec![u64::MAX; n];
            assert_eq!(
                (k.and_popcount_u64)(&all, &all),
                64 * n as u32,
                "{} n={n}",
                k.isa
            );
        }
    }
}

#[test]
fn long_inputs_wrap_like_scalar() {
    let mut rng = Rng(7);
    // 70_000 * 255^2 > u32::MAX: both sides must wrap identically.
    let ones = vec![255u8; 70_000];
    // Long enough to cross the NEON u16 flush interval several times.
    let wa: Vec<u64> = (0..10_003).map(|_| rng.next()).collect();
    let wb: Vec<u64> = (0..10_003).map(|_| rng.next()).collect();
    // 300 sub-quantizers of up to 255 overflow u16.
    let codes = rng.bytes(16 * 301);
    let luts = vec![255u8; 16 * 301];
    for k in simd_tables() {
        assert_eq!(
            (k.dot_u8)(&ones, &ones),
            scalar::dot_u8(&ones, &ones),
            "{}",
            k.isa
        );
        check_popcount(k, &wa, &wb);
        check_popcount(k, &wa[1..10_001], &wb[2..10_002]);
        check_fastscan(k, &codes, &luts);
        check_fastscan(k, &codes[16..], &luts[16..]);
    }
}

#[test]
fn bitplanes_match_plain_codes() {
    // Planes built from explicit codes: the kernel equals dot_f32_u8 on the codes (up to
    // float rounding), every plane count, with garbage bits past n in the last byte.
    let mut rng = Rng(13);
    for n in [0usize, 1, 7, 8, 9, 15, 16, 17, 31, 33, 64, 100, 128, 300] {
        let a = rng.floats(n);
        for np in 0..=scalar::MAX_BITPLANES {
            if n == 0 && np > 0 {
                break;
            }
            let codes: Vec<u32> = (0..n)
                .map(|_| (rng.next() as u32) & ((1u64 << np) - 1) as u32)
                .collect();
            let pb = n.div_ceil(8);
            let mut planes = rng.bytes(np * pb); // garbage past n stays
            for j in 0..np {
                for (i, &c) in codes.iter().enumerate() {
                    let b = &mut planes[j * pb + i / 8];
                    *b = (*b & !(1 << (i % 8))) | ((((c >> j) & 1) as u8) << (i % 8));
                }
            }
            let want: f64 = a
                .iter()
                .zip(&codes)
                .map(|(&x, &c)| x as f64 * c as f64)
                .sum();
            let terms: f64 = a
                .iter()
                .zip(&codes)
                .map(|(&x, &c)| (x as f64 * c as f64).abs())
                .sum();
            for k in all_variants() {
                let got = (k.dot_f32_bitplanes)(&a, &planes) as f64;
                assert!(
                    (got - want).abs() <= 1e-4 * terms + 1e-5,
                    "{} n={n} planes={np}: {got} vs {want}",
                    k.isa
                );
            }
        }
    }
}

#[test]
fn u4_layout_round_trips_and_matches_plain_dot() {
    let mut rng = Rng(11);
    for n in 0..=300 {
        let codes: Vec<u8> = rng.bytes(n).iter().map(|c| c & 15).collect();
        let q: Vec<i8> = rng.bytes(n).iter().map(|&c| c as i8).collect();
        let mut packed = vec![0xA5u8; n.div_ceil(2)];
        scalar::pack_u4(&codes, &mut packed);
        let mut back = vec![0u8; n];
        scalar::unpack_u4(&packed, &mut back);
        assert_eq!(back, codes, "n={n}");
        let plain: i32 = codes
            .iter()
            .zip(&q)
            .map(|(&c, &y)| c as i32 * y as i32)
            .sum();
        assert_eq!(scalar::dot_u4_i8(&packed, &q), plain, "n={n}");
        for k in simd_tables() {
            assert_eq!((k.dot_u4_i8)(&packed, &q), plain, "{} n={n}", k.isa);
        }
    }
    // A full block: byte j holds dimension j (low nibble) and j + 32 (high nibble).
    assert_eq!(scalar::u4_position(64, 5), (5, false));
    assert_eq!(scalar::u4_position(64, 37), (5, true));
    assert_eq!(scalar::u4_position(70, 64 + 4), (32 + 1, true));
}

#[test]
fn u4_split_kernels_match_the_packed_dot() {
    let mut rng = Rng(23);
    for n in 0..=600 {
        let codes: Vec<u8> = rng.bytes(n).iter().map(|c| c & 15).collect();
        let q: Vec<i8> = rng.bytes(n).iter().map(|&c| c as i8).collect();
        let h = n.div_ceil(2);
        // Unused high nibbles (odd block lengths) hold garbage: their weight is 0.
        let mut packed = rng.bytes(h);
        scalar::pack_u4(&codes, &mut packed);
        if n % 2 == 1 {
            let last = packed.len() - 1;
            packed[last] |= 0xF0;
        }
        let (mut lo, mut hi) = (vec![7i8; h], vec![7i8; h]);
        scalar::u4_split_weights(&q, &mut lo, &mut hi);
        let want = scalar::dot_u4_i8(&packed, &q);
        assert_eq!(scalar::dot_u4_i8_split(&packed, &lo, &hi), want, "n={n}");
        for k in simd_tables() {
            assert_eq!(
                (k.dot_u4_i8_split)(&packed, &lo, &hi),
                want,
                "{} n={n}",
                k.isa
            );
        }
    }
}

#[test]
fn u4_split_is_the_per_dimension_layout() {
    for n in 0..=200usize {
        let w: Vec<i8> = (0..n).map(|i| (i as i8).wrapping_mul(37) | 1).collect();
        let (lo, hi) = scalar::u4_split(&w);
        let (mut l2, mut h2) = (vec![0i8; n.div_ceil(2)], vec![0i8; n.div_ceil(2)]);
        scalar::u4_split_weights(&w, &mut l2, &mut h2);
        assert_eq!((lo, hi), (l2, h2), "n={n}");
        // Any element type, placed by `u4_position`.
        let f: Vec<f32> = (0..n).map(|i| i as f32 + 0.5).collect();
        let (lo, hi) = scalar::u4_split(&f);
        assert_eq!(
            (lo.len(), hi.len()),
            (n.div_ceil(2), n.div_ceil(2)),
            "n={n}"
        );
        for (i, &x) in f.iter().enumerate() {
            let (j, high) = scalar::u4_position(n, i);
            assert_eq!(if high { hi[j] } else { lo[j] }, x, "n={n} i={i}");
        }
    }
}

#[test]
fn u4_split_kernels_are_exact_at_extremes() {
    for n in [
        1, 31, 32, 33, 63, 64, 65, 127, 128, 129, 192, 255, 256, 257, 300, 513,
    ] {
        let full = vec![0xFFu8; n];
        for (wl, wh) in [(i8::MIN, i8::MIN), (i8::MAX, i8::MAX), (i8::MIN, i8::MAX)] {
            let (lo, hi) = (vec![wl; n], vec![wh; n]);
            let want = 15 * (wl as i32 + wh as i32) * n as i32;
            for k in all_variants() {
                assert_eq!(
                    (k.dot_u4_i8_split)(&full, &lo, &hi),
                    want,
                    "{} n={n}",
                    k.isa
                );
            }
        }
    }
}

#[test]
fn u4_split_gather_matches_single_codes() {
    let mut rng = Rng(29);
    for len in (0..=140).chain([191, 192, 193, 255, 256, 257, 300]) {
        for stride in [len, len + 1, len + 4, 2 * len + 3] {
            if stride == 0 {
                continue;
            }
            let n = 9;
            let base = rng.bytes(stride * (n - 1) + len + 5);
            let lo: Vec<i8> = rng.bytes(len).iter().map(|&c| c as i8).collect();
            let hi: Vec<i8> = rng.bytes(len).iter().map(|&c| c as i8).collect();
            let ids: Vec<u32> = [3u32, 0, 8, 8, 1, 5, 7, 2, 6, 4].to_vec();
            let want = gather_want(&base, stride, len, &ids, &lo, &hi);
            for k in all_variants() {
                for m in [0, 1, ids.len()] {
                    let mut out = vec![i32::MIN; m];
                    (k.dot_u4_i8_split_gather)(&base, stride, &ids[..m], &lo, &hi, &mut out);
                    assert_eq!(out, want[..m], "{} len={len} stride={stride}", k.isa);
                }
            }
        }
    }
}

#[test]
fn u4_split_gather_segs_matches_per_segment_products() {
    let mut rng = Rng(37);
    let ends_for = |len: usize| -> Vec<Vec<u32>> {
        let l = len as u32;
        let mut v = vec![vec![l]];
        if len >= 8 {
            v.push(vec![4, l]);
            v.push(vec![l / 8 * 4, l]);
        }
        if len >= 64 {
            v.push(
                vec![32, 36, 64, l]
                    .into_iter()
                    .filter(|&e| e <= l)
                    .collect(),
            );
            v.push(
                (1..8)
                    .map(|i| l / 32 * 4 * i)
                    .filter(|&e| e > 0 && e < l)
                    .chain([l])
                    .collect(),
            );
        }
        v.into_iter()
            .map(|mut e| {
                e.dedup();
                e
            })
            .collect()
    };
    for len in (4..=160usize).step_by(4).chain([192, 196, 256, 260, 300]) {
        for ends in ends_for(len) {
            let stride = len + 12;
            let n = 7;
            let base = rng.bytes(stride * (n - 1) + len);
            let lo: Vec<i8> = rng.bytes(len).iter().map(|&c| c as i8).collect();
            let hi: Vec<i8> = rng.bytes(len).iter().map(|&c| c as i8).collect();
            let ids = [3u32, 0, 6, 6, 1, 5, 2, 4];
            let mut want = Vec::new();
            for &i in &ids {
                let at = i as usize * stride;
                let mut a = 0;
                for &e in &ends {
                    let e = e as usize;
                    want.push(scalar::dot_u4_i8_split(
                        &base[at + a..at + e],
                        &lo[a..e],
                        &hi[a..e],
                    ));
                    a = e;
                }
            }
            let s = ends.len();
            for k in all_variants() {
                for m in [0, 1, ids.len()] {
                    let mut out = vec![i32::MIN; m * s];
                    (k.dot_u4_i8_split_gather_segs)(
                        &base,
                        stride,
                        &ids[..m],
                        &lo,
                        &hi,
                        &ends,
                        &mut out,
                    );
                    assert_eq!(out, want[..m * s], "{} len={len} ends={ends:?}", k.isa);
                }
            }
        }
    }
}

/// Scalar per-segment products of the codes `ids` (segments ending at `ends`).
fn segs_want(
    base: &[u8],
    stride: usize,
    ids: &[u32],
    lo: &[i8],
    hi: &[i8],
    ends: &[u32],
) -> Vec<i32> {
    let mut want = Vec::new();
    for &i in ids {
        let at = i as usize * stride;
        let mut a = 0;
        for &e in ends {
            let e = e as usize;
            want.push(scalar::dot_u4_i8_split(
                &base[at + a..at + e],
                &lo[a..e],
                &hi[a..e],
            ));
            a = e;
        }
    }
    want
}

/// The scalar reference of `dot_u4_i8_split_gather`: each id's code (`len` bytes at
/// `id * stride` in `base`) scored one at a time.
fn gather_want(
    base: &[u8],
    stride: usize,
    len: usize,
    ids: &[u32],
    lo: &[i8],
    hi: &[i8],
) -> Vec<i32> {
    ids.iter()
        .map(|&i| {
            let at = i as usize * stride;
            scalar::dot_u4_i8_split(&base[at..at + len], lo, hi)
        })
        .collect()
}

/// `n` random codes of `len` bytes at `stride` (the last ending at the end of the array) and
/// random weights; with `extreme = Some(h)`: every code byte 0xFF, the low weights -128, the
/// high ones `h`.
fn gather_data(
    rng: &mut Rng,
    len: usize,
    stride: usize,
    n: usize,
    extreme: Option<i8>,
) -> (Vec<u8>, Vec<i8>, Vec<i8>) {
    let mut base = rng.bytes(stride * (n - 1) + len);
    let (mut lo, mut hi): (Vec<i8>, Vec<i8>) = (
        rng.bytes(len).iter().map(|&c| c as i8).collect(),
        rng.bytes(len).iter().map(|&c| c as i8).collect(),
    );
    if let Some(h) = extreme {
        base.fill(0xFF);
        lo.fill(i8::MIN);
        hi.fill(h);
    }
    (base, lo, hi)
}

/// The gathers score codes in groups (full groups, then a partial one padded with repeated
/// codes and stored under a mask): every count 1..=17 and a few larger, random and extreme
/// values, the last code ending exactly at the end of `base`, and the outputs followed by
/// sentinels that must stay untouched.
#[test]
fn u4_split_gather_group_remainders() {
    let mut rng = Rng(41);
    for len in [
        1, 4, 60, 63, 64, 65, 96, 128, 190, 191, 192, 200, 255, 256, 257, 300, 384,
    ] {
        for extreme in [false, true] {
            let (stride, n) = (len + 20, 29);
            let (base, lo, hi) = gather_data(&mut rng, len, stride, n, extreme.then_some(i8::MIN));
            for m in (1..=17).chain([23, 24, 25, 31, 32, 33, 48, 64]) {
                // Random codes with repeats, the last code of base among them.
                let mut ids: Vec<u32> = (0..m).map(|_| (rng.next() % n as u64) as u32).collect();
                ids[m / 2] = n as u32 - 1;
                let want = gather_want(&base, stride, len, &ids, &lo, &hi);
                for k in all_variants() {
                    let mut buf = vec![i32::MIN; m + 9];
                    (k.dot_u4_i8_split_gather)(&base, stride, &ids, &lo, &hi, &mut buf[..m]);
                    assert_eq!(buf[..m], want, "{} len={len} m={m}", k.isa);
                    assert!(
                        buf[m..].iter().all(|&v| v == i32::MIN),
                        "{} len={len} m={m}: wrote past out",
                        k.isa
                    );
                }
            }
        }
    }
}

#[test]
fn u4_split_gather_segs_group_remainders() {
    let mut rng = Rng(43);
    let cases: &[&[u32]] = &[
        &[96, 192],
        &[4, 192],
        &[188, 192],
        &[60, 192],
        &[64, 192],
        &[128, 192],
        &[132, 192],
        &[8, 96, 100],
        &[4, 8],
        &[32, 64],
        &[64, 128],
        &[4, 256],
        &[252, 256],
        &[100, 300],
        &[256, 260],
        &[128, 256, 512],
        &[96, 192, 288, 384],
    ];
    for &ends in cases {
        let len = *ends.last().unwrap() as usize;
        let s = ends.len();
        for extreme in [false, true] {
            let (stride, n) = (len + 12, 21);
            let (base, lo, hi) = gather_data(&mut rng, len, stride, n, extreme.then_some(i8::MAX));
            for m in (1..=17).chain([24, 32, 33]) {
                let mut ids: Vec<u32> = (0..m).map(|_| (rng.next() % n as u64) as u32).collect();
                ids[m - 1] = n as u32 - 1;
                let want = segs_want(&base, stride, &ids, &lo, &hi, ends);
                for k in all_variants() {
                    let mut buf = vec![i32::MIN; m * s + 9];
                    (k.dot_u4_i8_split_gather_segs)(
                        &base,
                        stride,
                        &ids,
                        &lo,
                        &hi,
                        ends,
                        &mut buf[..m * s],
                    );
                    assert_eq!(buf[..m * s], want, "{} ends={ends:?} m={m}", k.isa);
                    assert!(
                        buf[m * s..].iter().all(|&v| v == i32::MIN),
                        "{} ends={ends:?} m={m}: wrote past out",
                        k.isa
                    );
                }
            }
        }
    }
}

/// An id whose code does not fit in `base` panics with the kernel's message, whatever its
/// place in a group (first, middle, last, in the partial last group), in every table.
#[test]
fn u4_split_gathers_reject_codes_outside_the_array_in_every_group_position() {
    for len in [40usize, 192, 300] {
        let stride = len + 4;
        let n = 12;
        // The last code is one byte short.
        let base = vec![0x11u8; stride * (n - 1) + len - 1];
        let w = vec![1i8; len];
        let ends = [(len / 8 * 4) as u32, len as u32];
        for k in all_variants() {
            for count in [1usize, 3, 4, 5, 8, 9, 13, 16, 17] {
                for bad in 0..count {
                    let mut ids: Vec<u32> = (0..count as u32).map(|i| i % (n as u32 - 1)).collect();
                    ids[bad] = n as u32 - 1;
                    let r = std::panic::catch_unwind(|| {
                        let mut out = vec![0i32; count];
                        (k.dot_u4_i8_split_gather)(&base, stride, &ids, &w, &w, &mut out);
                    });
                    let msg = r.expect_err("gather accepted a code outside base");
                    let msg = msg
                        .downcast_ref::<String>()
                        .map(String::as_str)
                        .unwrap_or("");
                    // The AVX-512 group kernels (codes up to 256 bytes) check codes
                    // themselves; the other paths panic slicing `base`.
                    let own = k.isa.starts_with("avx512") && len <= 256;
                    assert!(
                        msg.contains("outside base") || (!own && msg.contains("out of range")),
                        "{} len={len} count={count} bad={bad}: {msg}",
                        k.isa
                    );
                    let r = std::panic::catch_unwind(|| {
                        let mut out = vec![0i32; 2 * count];
                        (k.dot_u4_i8_split_gather_segs)(
                            &base, stride, &ids, &w, &w, &ends, &mut out,
                        );
                    });
                    assert!(
                        r.is_err(),
                        "{} segs len={len} count={count} bad={bad}",
                        k.isa
                    );
                }
            }
        }
    }
}

#[test]
#[should_panic]
fn u4_split_gather_segs_rejects_ends_not_multiple_of_four() {
    let base = vec![0u8; 64];
    let w = vec![1i8; 32];
    let mut out = [0i32; 2];
    (nearq_kernels::kernels().dot_u4_i8_split_gather_segs)(
        &base,
        32,
        &[0],
        &w,
        &w,
        &[6, 32],
        &mut out,
    );
}

#[test]
#[should_panic]
fn u4_split_gather_segs_rejects_codes_outside_the_array() {
    let base = vec![0u8; 100];
    let w = vec![1i8; 40];
    let mut out = [0i32; 2];
    (nearq_kernels::kernels().dot_u4_i8_split_gather_segs)(
        &base,
        64,
        &[1],
        &w,
        &w,
        &[20, 40],
        &mut out,
    );
}

#[test]
fn f32_u4_split_matches_scalar() {
    let mut rng = Rng(31);
    for n in 0..=300 {
        for off in [0, 1, 5] {
            let p = rng.bytes(n + off);
            let lo = rng.floats(n + off);
            let hi = rng.floats(n + off);
            let (p, lo, hi) = (&p[off..], &lo[off..], &hi[off..]);
            let want = scalar::dot_f32_u4_split(p, lo, hi);
            let terms: f32 = p
                .iter()
                .zip(lo)
                .zip(hi)
                .map(|((&x, l), h)| ((x & 15) as f32 * l).abs() + ((x >> 4) as f32 * h).abs())
                .sum();
            let exact: f64 = p
                .iter()
                .zip(lo)
                .zip(hi)
                .map(|((&x, &l), &h)| (x & 15) as f64 * l as f64 + (x >> 4) as f64 * h as f64)
                .sum();
            assert!(close(want, exact as f32, terms), "scalar n={n}");
            for k in simd_tables() {
                let got = (k.dot_f32_u4_split)(p, lo, hi);
                assert!(close(got, want, terms), "{} n={n}: {got} vs {want}", k.isa);
            }
        }
    }
}

#[test]
#[should_panic]
fn u4_split_gather_rejects_codes_outside_the_array() {
    let base = vec![0u8; 100];
    let w = vec![1i8; 40];
    let mut out = [0i32; 1];
    (nearq_kernels::kernels().dot_u4_i8_split_gather)(&base, 64, &[1], &w, &w, &mut out);
}

// ---- property tests: random lengths, offsets and values ----

/// Uniform in [-1, 1), from a fixed seed.
fn uniform(seed: u64, n: usize) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn fwht_matches_scalar_bit_for_bit() {
    for log in 0..=11 {
        let n = 1usize << log;
        for (seed, off) in [(1u64, 0usize), (2, 3)] {
            let buf = uniform(seed + 17 * n as u64, n + off);
            let mut want = buf[off..].to_vec();
            scalar::fwht_f32(&mut want);
            for k in simd_tables() {
                let mut got = buf.clone();
                (k.fwht_f32)(&mut got[off..]);
                assert_eq!(bits(&got[off..]), bits(&want), "{} n={n}", k.isa);
                assert_eq!(bits(&got[..off]), bits(&buf[..off]), "{}", k.isa);
            }
        }
    }
    for k in all_variants() {
        (k.fwht_f32)(&mut []);
    }
}

#[test]
fn fwht_is_the_hadamard_matrix() {
    for n in [1usize, 2, 4, 8, 16, 64] {
        let x = uniform(n as u64, n);
        let mut got = x.clone();
        scalar::fwht_f32(&mut got);
        for (i, &g) in got.iter().enumerate() {
            let want: f32 = x
                .iter()
                .enumerate()
                .map(|(j, &v)| if (i & j).count_ones() % 2 == 0 { v } else { -v })
                .sum();
            assert!((g - want).abs() < 1e-5 * n as f32, "n={n} i={i}");
        }
    }
}

#[test]
fn fwht_rejects_other_lengths() {
    for k in all_variants() {
        for n in [3usize, 6, 12, 24, 48, 100] {
            let r = std::panic::catch_unwind(|| (k.fwht_f32)(&mut vec![0.0; n]));
            assert!(r.is_err(), "{} accepted length {n}", k.isa);
        }
    }
}

/// Weights with exact zeros, both signs of zero and a group-dependent range.
fn lut_weights(seed: u64, n: usize) -> Vec<f32> {
    uniform(seed, n)
        .into_iter()
        .enumerate()
        .map(|(i, x)| match i % 11 {
            3 => 0.0,
            7 => -0.0,
            _ => x * (1 + i % 5) as f32,
        })
        .collect()
}

#[test]
fn fastscan_lut_matches_scalar_bit_for_bit() {
    for groups in [0usize, 1, 2, 3, 4, 5, 15, 16, 17, 96, 257] {
        for (seed, off) in [(5u64, 0usize), (6, 1), (7, 3)] {
            let buf = lut_weights(seed + groups as u64, 4 * groups + off);
            let w = &buf[off..];
            let width = w
                .chunks_exact(4)
                .map(|g| g.iter().map(|x| x.abs()).sum::<f32>())
                .fold(0.0f32, f32::max);
            // in range, and over-scaled so that the clamp at 255 acts
            for scale in [255.0 / width.max(1e-3), 700.0 / width.max(1e-3), 0.0] {
                let mut want = vec![0u8; 16 * groups];
                scalar::fastscan_lut_u8(w, scale, &mut want);
                for k in simd_tables() {
                    let mut got = vec![0xAAu8; 16 * groups + 1];
                    (k.fastscan_lut_u8)(w, scale, &mut got[1..]);
                    assert_eq!(&got[1..], &want[..], "{} groups={groups}", k.isa);
                    assert_eq!(got[0], 0xAA);
                }
            }
        }
    }
}

#[test]
fn fastscan_lut_rounds_the_shifted_subset_sums() {
    let w = lut_weights(9, 4 * 40);
    let width = w
        .chunks_exact(4)
        .map(|g| g.iter().map(|x| x.abs()).sum::<f32>())
        .fold(0.0f32, f32::max);
    let scale = 255.0 / width;
    let mut out = vec![0u8; 16 * 40];
    scalar::fastscan_lut_u8(&w, scale, &mut out);
    for (g, t) in w.chunks_exact(4).zip(out.chunks_exact(16)) {
        let lo: f32 = g.iter().map(|x| x.min(0.0)).sum();
        for (c, &o) in t.iter().enumerate() {
            let s: f32 = (0..4).filter(|b| c >> b & 1 == 1).map(|b| g[b]).sum();
            let x = (s - lo) * scale;
            assert!((o as f32 - x).abs() <= 0.5 + 1e-3, "c={c}: {o} vs {x}");
        }
        // the smallest subset sum maps to 0
        assert_eq!(*t.iter().min().unwrap(), 0);
    }
}

#[test]
fn fastscan_lut_rejects_bad_lengths() {
    for k in all_variants() {
        for (n, m) in [(3usize, 12usize), (4, 15), (8, 16), (4, 17)] {
            let r = std::panic::catch_unwind(|| {
                (k.fastscan_lut_u8)(&vec![0.0; n], 1.0, &mut vec![0; m])
            });
            assert!(r.is_err(), "{} accepted {n} weights, {m} bytes", k.isa);
        }
    }
}

// ---- nearest centroid, points stored transposed ----

/// `n` points of `dim` coordinates stored transposed at `stride` (after `off` leading
/// floats), drawn from a few values so that exact ties between centroids occur.
fn nearest_case(rng: &mut Rng, n: usize, dim: usize, k: usize, coarse: bool) -> NearestCase {
    let stride = n + (rng.next() % 5) as usize;
    let off = (rng.next() % 4) as usize;
    let draw = |rng: &mut Rng, len: usize| -> Vec<f32> {
        if coarse {
            (0..len).map(|_| (rng.next() % 5) as f32 - 2.0).collect()
        } else {
            rng.floats(len)
        }
    };
    let xt = draw(rng, off + dim * stride);
    let centroids = draw(rng, k * dim);
    let norms = centroids
        .chunks_exact(dim)
        .map(|c| c.iter().map(|v| v * v).sum())
        .collect();
    NearestCase {
        xt,
        off,
        stride,
        centroids,
        norms,
        n,
    }
}

type NearestFn = fn(&[f32], usize, &[f32], &[f32], &mut [u32]);

struct NearestCase {
    xt: Vec<f32>,
    off: usize,
    stride: usize,
    centroids: Vec<f32>,
    norms: Vec<f32>,
    n: usize,
}

impl NearestCase {
    fn run(&self, f: NearestFn) -> Vec<u32> {
        let mut out = vec![u32::MAX; self.n + 2];
        f(
            &self.xt[self.off..],
            self.stride,
            &self.centroids,
            &self.norms,
            &mut out[1..self.n + 1],
        );
        assert_eq!(
            (out[0], out[self.n + 1]),
            (u32::MAX, u32::MAX),
            "wrote outside out"
        );
        out[1..self.n + 1].to_vec()
    }
}

#[test]
fn nearest_centroid_matches_scalar_exactly() {
    let mut rng = Rng(0x1234_5678_9abc_def1);
    let dims = [1usize, 2, 3, 4, 5, 6, 7, 8, 9, 12, 16, 33];
    let ks = [1usize, 2, 5, 16, 17, 256];
    let ns = [0usize, 1, 7, 8, 15, 16, 17, 31, 32, 33, 64, 100];
    for &dim in &dims {
        for &k in &ks {
            for &n in &ns {
                for coarse in [false, true] {
                    let case = nearest_case(&mut rng, n, dim, k, coarse);
                    let want = case.run(scalar::nearest_centroid_t);
                    assert!(want.iter().all(|&j| (j as usize) < k));
                    for kt in simd_tables() {
                        let got = case.run(kt.nearest_centroid_t);
                        assert_eq!(
                            got, want,
                            "{} dim={dim} k={k} n={n} coarse={coarse}",
                            kt.isa
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn nearest_centroid_is_the_first_nearest() {
    // Centroid 3 repeats centroid 1 and centroid 0 is far: every point near centroid 1 must
    // get 1 (the first of the tie), in every variant; a NaN point gets 0.
    let dim = 4;
    let centroids: Vec<f32> = [
        [9.0f32, 9.0, 9.0, 9.0],
        [1.0, 0.0, 0.0, 0.0],
        [0.0, 1.0, 0.0, 0.0],
        [1.0, 0.0, 0.0, 0.0],
    ]
    .concat();
    let norms: Vec<f32> = centroids
        .chunks_exact(dim)
        .map(|c| c.iter().map(|v| v * v).sum())
        .collect();
    let n = 40;
    let mut xt = vec![0.0f32; dim * n];
    for i in 0..n {
        xt[i] = 1.0 + i as f32 * 1e-3; // coordinate 0
        xt[n + i] = 0.25; // coordinate 1
    }
    xt[5] = f32::NAN;
    xt[n + 20] = f32::NAN;
    for kt in all_variants() {
        let mut out = vec![7u32; n];
        (kt.nearest_centroid_t)(&xt, n, &centroids, &norms, &mut out);
        for (i, &o) in out.iter().enumerate() {
            let want = if i == 5 || i == 20 { 0 } else { 1 };
            assert_eq!(o, want, "{} point {i}", kt.isa);
        }
    }
}

#[test]
fn nearest_centroid_agrees_with_brute_force_distance() {
    let mut rng = Rng(77);
    for dim in [2usize, 4, 8] {
        let case = nearest_case(&mut rng, 200, dim, 64, false);
        let got = case.run(kernels_for(SimdLevel::Scalar).unwrap().nearest_centroid_t);
        let xt = &case.xt[case.off..];
        for (i, &g) in got.iter().enumerate() {
            let d = |j: usize| -> f64 {
                (0..dim)
                    .map(|t| {
                        let e = xt[t * case.stride + i] as f64 - case.centroids[j * dim + t] as f64;
                        e * e
                    })
                    .sum()
            };
            let best = (0..64).map(d).fold(f64::INFINITY, f64::min);
            assert!(
                d(g as usize) <= best + 1e-3,
                "dim={dim} point {i}: {} vs {best}",
                d(g as usize)
            );
        }
    }
}

#[test]
fn nearest_centroid_rejects_bad_lengths() {
    let c = [0.0f32; 8];
    for kt in all_variants() {
        // (xt len, stride, centroids len, norms len, n)
        for (xl, stride, cl, nl, n) in [
            (8usize, 4usize, 8usize, 0usize, 4usize), // no centroids
            (8, 4, 7, 2, 4),                          // centroids not a multiple of k
            (7, 4, 8, 4, 4),                          // xt one short (dim 2)
            (8, 3, 8, 4, 4),                          // stride below n
        ] {
            let r = std::panic::catch_unwind(|| {
                (kt.nearest_centroid_t)(
                    &vec![0.0; xl],
                    stride,
                    &c[..cl],
                    &vec![0.0; nl],
                    &mut vec![0; n],
                )
            });
            assert!(
                r.is_err(),
                "{} accepted xt {xl} stride {stride} c {cl} k {nl} n {n}",
                kt.isa
            );
        }
    }
}

fn config() -> ProptestConfig {
    let mut c = ProptestConfig::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        c.cases = 96;
    }
    c
}

const MAX_N: usize = 300;
const BUF: usize = MAX_N + 16;

proptest! {
    #![proptest_config(config())]

    #[test]
    fn f32_kernels_match_scalar(
        a in proptest::collection::vec(-100f32..100f32, BUF),
        b in proptest::collection::vec(-100f32..100f32, BUF),
        n in 0..=MAX_N, oa in 0usize..16, ob in 0usize..16,
    ) {
        for k in simd_tables() {
            check_f32(k, &a[oa..oa + n], &b[ob..ob + n]);
        }
    }

    #[test]
    fn dot_f32_u8_matches_scalar(
        a in proptest::collection::vec(-100f32..100f32, BUF),
        b in proptest::collection::vec(any::<u8>(), BUF),
        n in 0..=MAX_N, oa in 0usize..16, ob in 0usize..16,
    ) {
        for k in simd_tables() {
            check_f32_u8(k, &a[oa..oa + n], &b[ob..ob + n]);
        }
    }

    #[test]
    fn matvec_f32_matches_scalar(
        m in proptest::collection::vec(-100f32..100f32, 12 * BUF),
        x in proptest::collection::vec(-100f32..100f32, BUF),
        n in 0..=MAX_N, rows in 0usize..=11, om in 0usize..16, ox in 0usize..16,
    ) {
        for k in simd_tables() {
            check_matvec(k, &m[om..], &x[ox..ox + n], rows);
        }
    }

    #[test]
    fn l2sq_f32_f16_matches_scalar(
        a in proptest::collection::vec(-100f32..100f32, BUF),
        b in proptest::collection::vec(-100f32..100f32, BUF),
        n in 0..=MAX_N, oa in 0usize..16, ob in 0usize..16,
    ) {
        let b = to_f16(&b);
        for k in simd_tables() {
            check_l2sq_f16(k, &a[oa..oa + n], &b[ob..ob + n]);
        }
    }

    #[test]
    fn matvec_f16_matches_scalar(
        m in proptest::collection::vec(-100f32..100f32, 12 * BUF),
        x in proptest::collection::vec(-100f32..100f32, BUF),
        n in 0..=MAX_N, rows in 0usize..=11, om in 0usize..16, ox in 0usize..16,
    ) {
        let m = to_f16(&m);
        for k in simd_tables() {
            check_matvec_f16(k, &m[om..], &x[ox..ox + n], rows);
        }
    }

    #[test]
    fn dot_f32_bitplanes_matches_scalar(
        a in proptest::collection::vec(-100f32..100f32, BUF),
        planes in proptest::collection::vec(any::<u8>(), scalar::MAX_BITPLANES * BUF.div_ceil(8)),
        n in 0..=MAX_N, oa in 0usize..16, np in 0usize..=scalar::MAX_BITPLANES,
    ) {
        for k in simd_tables() {
            let a = &a[oa..oa + n];
            let np = if n == 0 { 0 } else { np };
            let p = &planes[..np * n.div_ceil(8)];
            check_bitplanes(k, a, &planes, 0);
            let terms: f32 = a.iter().map(|x| x.abs()).sum::<f32>() * ((1u32 << np) - 1) as f32;
            let (got, want) = ((k.dot_f32_bitplanes)(a, p), scalar::dot_f32_bitplanes(a, p));
            prop_assert!(close(got, want, terms), "{} n={} planes={}: {} vs {}", k.isa, n, np, got, want);
        }
    }

    #[test]
    fn byte_dots_match_scalar(
        a in proptest::collection::vec(any::<u8>(), BUF),
        b in proptest::collection::vec(any::<u8>(), BUF),
        n in 0..=MAX_N, oa in 0usize..16, ob in 0usize..16,
    ) {
        for k in simd_tables() {
            check_bytes(k, &a[oa..oa + n], &b[ob..ob + n]);
        }
    }

    #[test]
    fn and_popcount_matches_scalar(
        a in proptest::collection::vec(any::<u64>(), 80),
        b in proptest::collection::vec(any::<u64>(), 80),
        n in 0usize..=64, oa in 0usize..16, ob in 0usize..16,
    ) {
        for k in simd_tables() {
            check_popcount(k, &a[oa..oa + n], &b[ob..ob + n]);
        }
    }

    #[test]
    fn fastscan_matches_scalar(
        codes in proptest::collection::vec(any::<u8>(), 16 * 40 + 16),
        luts in proptest::collection::vec(any::<u8>(), 16 * 40 + 16),
        m in 0usize..=40, oc in 0usize..16, ol in 0usize..16,
    ) {
        for k in simd_tables() {
            check_fastscan(k, &codes[oc..oc + 16 * m], &luts[ol..ol + 16 * m]);
        }
    }
}

// ---- fastscan_pack_u4 ----

/// The layout of `fastscan_pack_u4` spelled out nibble by nibble: sub-quantizer `j`'s row
/// holds code `i`'s nibble `j` in the low half of byte `i` and code `i + 16`'s in the high.
fn pack_by_nibbles(base: &[u8], stride: usize, ids: &[u32], nbytes: usize) -> Vec<u8> {
    let mut out = vec![0u8; 32 * nbytes];
    for j in 0..2 * nbytes {
        for (i, &id) in ids.iter().enumerate() {
            let v = (base[id as usize * stride + j / 2] >> (4 * (j & 1))) & 15;
            out[16 * j + i % 16] |= v << (4 * (i / 16));
        }
    }
    out
}

#[test]
fn fastscan_pack_matches_the_nibble_layout_and_scalar() {
    let mut rng = Rng(37);
    for nbytes in (0..=70).chain([95, 96, 97, 111, 112, 128, 129, 200]) {
        for stride in [nbytes.max(1), nbytes + 3, 2 * nbytes + 5] {
            let rows = 40;
            let base = rng.bytes(stride * (rows - 1) + nbytes + 7);
            for count in [0usize, 1, 7, 15, 16, 17, 31, 32] {
                let ids: Vec<u32> = (0..count)
                    .map(|_| (rng.next() % rows as u64) as u32)
                    .collect();
                let want = pack_by_nibbles(&base, stride, &ids, nbytes);
                for k in all_variants() {
                    let mut out = vec![0xA5u8; 32 * nbytes]; // must overwrite every byte
                    (k.fastscan_pack_u4)(&base, stride, &ids, nbytes, &mut out);
                    assert_eq!(
                        out, want,
                        "{} nbytes={nbytes} stride={stride} count={count}",
                        k.isa
                    );
                }
            }
        }
    }
}

#[test]
fn fastscan_pack_then_scan_scores_each_code() {
    // Packed block + fastscan_u16 = the sum of each code's table entries.
    let mut rng = Rng(41);
    let (nbytes, stride, rows) = (96, 100, 50);
    let base = rng.bytes(stride * rows);
    let luts = rng.bytes(16 * 2 * nbytes);
    let luts: Vec<u8> = luts.iter().map(|&x| x >> 2).collect(); // no u16 wrap-around
    let ids: Vec<u32> = (0..23).map(|i| (i * 7 % rows) as u32).collect();
    for k in all_variants() {
        let mut block = vec![0u8; 32 * nbytes];
        (k.fastscan_pack_u4)(&base, stride, &ids, nbytes, &mut block);
        let mut acc = [0u16; 32];
        (k.fastscan_u16)(&block, &luts, &mut acc);
        for (i, &a) in acc.iter().enumerate() {
            let want: u32 = match ids.get(i) {
                Some(&id) => (0..2 * nbytes)
                    .map(|j| {
                        let c = (base[id as usize * stride + j / 2] >> (4 * (j & 1))) & 15;
                        luts[16 * j + c as usize] as u32
                    })
                    .sum(),
                None => (0..2 * nbytes).map(|j| luts[16 * j] as u32).sum(),
            };
            assert_eq!(a as u32, want, "{} code {i}", k.isa);
        }
    }
}

#[test]
#[should_panic]
fn fastscan_pack_rejects_codes_outside_the_array() {
    let base = vec![0u8; 100];
    let mut out = vec![0u8; 32 * 40];
    (nearq_kernels::kernels().fastscan_pack_u4)(&base, 64, &[0, 1], 40, &mut out);
}

#[test]
#[should_panic]
fn fastscan_pack_rejects_more_than_32_codes() {
    let base = vec![0u8; 100];
    let mut out = vec![0u8; 32 * 4];
    (nearq_kernels::kernels().fastscan_pack_u4)(&base, 4, &[0; 33], 4, &mut out);
}

#[test]
fn rotate_rounds_match_scalar_bit_for_bit() {
    for d in [64usize, 128, 192, 256, 320, 384, 448, 512, 576, 1024] {
        let t = 1usize << (usize::BITS - 1 - d.leading_zeros());
        let scale = 1.0 / (t as f32).sqrt();
        for rounds in 1..=4 {
            let x = uniform(7 + d as u64 + rounds as u64, d);
            let signs = uniform(11 + d as u64 * rounds as u64, d * rounds);
            let masks: Vec<u32> = signs
                .iter()
                .map(|&s| if s < 0.0 { 1 << 31 } else { 0 })
                .collect();
            let mut want = x.clone();
            scalar::rotate_rounds_f32(&mut want, &masks, t, scale);
            // a rotation: the norm is kept
            let (n0, n1): (f64, f64) = (
                x.iter().map(|&v| (v as f64).powi(2)).sum(),
                want.iter().map(|&v| (v as f64).powi(2)).sum(),
            );
            assert!((n0 - n1).abs() <= 1e-4 * n0, "d={d}: norm {n0} -> {n1}");
            for k in simd_tables() {
                let mut got = x.clone();
                (k.rotate_rounds_f32)(&mut got, &masks, t, scale);
                assert_eq!(bits(&got), bits(&want), "{} d={d} rounds={rounds}", k.isa);
            }
        }
    }
}
