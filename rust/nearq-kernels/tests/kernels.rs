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
                check_bytes(k, &ba[oa..oa + n], &bb[ob..ob + n]);
                if n <= 40 {
                    check_popcount(k, &wa[oa..oa + n], &wb[ob..ob + n]);
                }
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

// ---- property tests: random lengths, offsets and values ----

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
