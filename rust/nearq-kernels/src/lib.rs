//! Distance kernels for nearq, one file per instruction set, dispatched once per process.
//!
//! Design rules:
//!
//! - Every kernel has a scalar reference in [`scalar`] with the same signature. The SIMD
//!   versions agree with it exactly for integer kernels and to a relative tolerance for float
//!   accumulation (only the summation order differs).
//! - SIMD code lives in `#[target_feature]` functions in one file per ISA
//!   (`x86_avx2.rs`, `x86_avx512.rs`, `aarch64_neon.rs`). Those functions are reachable only
//!   through a [`Kernels`] table, and a table is handed out only after run-time detection of
//!   every feature its functions use.
//! - The level is resolved once per process: [`kernels()`] picks the best level this CPU
//!   supports, capped by the `NEARQ_SIMD` environment variable (`scalar`, `avx2`, `avx512`,
//!   `neon`). Use [`kernels_for`] to pin a level explicitly (tests, benchmarks).
//!
//! ```
//! let k = nearq_kernels::kernels();
//! let a = [1.0f32, 2.0, 3.0];
//! let b = [1.0f32, 0.0, 1.0];
//! assert_eq!((k.l2sq_f32)(&a, &b), 8.0);
//! assert_eq!((k.dot_f32)(&a, &b), 4.0);
//! println!("using {} ({})", k.level.name(), k.isa);
//! ```

use std::sync::OnceLock;

pub mod scalar;

#[cfg(target_arch = "aarch64")]
mod aarch64_neon;
#[cfg(target_arch = "x86_64")]
mod x86_avx2;
#[cfg(target_arch = "x86_64")]
mod x86_avx512;

/// Environment variable that caps the level chosen by [`kernels()`].
pub const ENV_VAR: &str = "NEARQ_SIMD";

/// Instruction-set level of a kernel table.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SimdLevel {
    Scalar,
    Avx2,
    Avx512,
    Neon,
}

impl SimdLevel {
    /// Every level, in declaration order.
    pub const ALL: [SimdLevel; 4] = [
        SimdLevel::Scalar,
        SimdLevel::Avx2,
        SimdLevel::Avx512,
        SimdLevel::Neon,
    ];

    /// The lower-case name used by `NEARQ_SIMD` and shown to users.
    pub fn name(self) -> &'static str {
        match self {
            SimdLevel::Scalar => "scalar",
            SimdLevel::Avx2 => "avx2",
            SimdLevel::Avx512 => "avx512",
            SimdLevel::Neon => "neon",
        }
    }

    /// Parses a level name (case-insensitive, surrounding whitespace ignored).
    pub fn from_name(name: &str) -> Option<SimdLevel> {
        let name = name.trim();
        SimdLevel::ALL
            .into_iter()
            .find(|l| l.name().eq_ignore_ascii_case(name))
    }

    /// Position of this level on the current architecture's ladder (scalar = 0), or `None` for
    /// a level of another architecture.
    fn rank(self) -> Option<u8> {
        match self {
            SimdLevel::Scalar => Some(0),
            SimdLevel::Avx2 if cfg!(target_arch = "x86_64") => Some(1),
            SimdLevel::Avx512 if cfg!(target_arch = "x86_64") => Some(2),
            SimdLevel::Neon if cfg!(target_arch = "aarch64") => Some(1),
            _ => None,
        }
    }
}

impl std::fmt::Display for SimdLevel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A table of kernels for one instruction-set level.
///
/// All slices passed to one call have equal length (for `fastscan_u16`, `dot_u4_i8`,
/// `dot_f32_bitplanes`, `matvec_f32` and `matvec_f16`, see [`scalar::fastscan_u16`],
/// [`scalar::dot_u4_i8`], [`scalar::dot_f32_bitplanes`], [`scalar::matvec_f32`] and
/// [`scalar::matvec_f16`]); kernels panic otherwise. Lengths may
/// be anything, including 0,
/// and slices need no alignment.
pub struct Kernels {
    pub level: SimdLevel,
    /// The instruction-set extensions this table uses, e.g. `"avx512f+bw+vl+vnni+vpopcntdq"`.
    pub isa: &'static str,
    /// Squared Euclidean distance: `sum (a[i] - b[i])^2`.
    pub l2sq_f32: fn(&[f32], &[f32]) -> f32,
    /// Inner product: `sum a[i] * b[i]`.
    pub dot_f32: fn(&[f32], &[f32]) -> f32,
    /// Matrix-vector product, `m` row-major; see [`scalar::matvec_f32`].
    pub matvec_f32: fn(m: &[f32], x: &[f32], out: &mut [f32]),
    /// Matrix-vector product with `m` row-major in half precision (IEEE binary16 bit
    /// patterns), f32 accumulation; see [`scalar::matvec_f16`].
    pub matvec_f16: fn(m: &[u16], x: &[f32], out: &mut [f32]),
    /// Squared Euclidean distance from f32 `a` to half-precision `b` (IEEE binary16 bit
    /// patterns, widened exactly): `sum (a[i] - f32(b[i]))^2`; see [`scalar::l2sq_f32_f16`].
    pub l2sq_f32_f16: fn(&[f32], &[u16]) -> f32,
    /// Inner product of f32 weights with u8 codes: `sum a[i] * (b[i] as f32)`.
    pub dot_f32_u8: fn(&[f32], &[u8]) -> f32,
    /// Inner product of f32 weights with unsigned codes stored as bit planes; see
    /// [`scalar::dot_f32_bitplanes`] for the layout.
    pub dot_f32_bitplanes: fn(a: &[f32], planes: &[u8]) -> f32,
    /// Exact `sum a[i] as i32 * b[i] as i32` (wrapping on i32 overflow).
    pub dot_u8_i8: fn(&[u8], &[i8]) -> i32,
    /// Exact `sum a[i] as u32 * b[i] as u32` (wrapping on u32 overflow).
    pub dot_u8: fn(&[u8], &[u8]) -> u32,
    /// Exact `sum code(i) * b[i]` over 4-bit codes packed as in [`scalar::u4_position`]
    /// (`packed.len() == ceil(b.len() / 2)`; wrapping on i32 overflow).
    pub dot_u4_i8: fn(packed: &[u8], b: &[i8]) -> i32,
    /// Exact `sum (p[j] & 15) * lo[j] + (p[j] >> 4) * hi[j]`: packed 4-bit codes against
    /// per-nibble weights ([`scalar::u4_split_weights`]); see [`scalar::dot_u4_i8_split`].
    pub dot_u4_i8_split: fn(p: &[u8], lo: &[i8], hi: &[i8]) -> i32,
    /// `sum (p[j] & 15) * lo[j] + (p[j] >> 4) * hi[j]` with f32 weights; see
    /// [`scalar::dot_f32_u4_split`].
    pub dot_f32_u4_split: fn(p: &[u8], lo: &[f32], hi: &[f32]) -> f32,
    /// `dot_u4_i8_split` of the codes `base[ids[i] * stride ..][.. lo.len()]` into `out[i]`;
    /// see [`scalar::dot_u4_i8_split_gather`].
    #[allow(clippy::type_complexity)]
    pub dot_u4_i8_split_gather:
        fn(base: &[u8], stride: usize, ids: &[u32], lo: &[i8], hi: &[i8], out: &mut [i32]),
    /// `dot_u4_i8_split_gather` per segment of the codes (segment ends `ends`, 1 to
    /// [`scalar::MAX_SEGS`]) into `out[i * ends.len() + s]`; see
    /// [`scalar::dot_u4_i8_split_gather_segs`].
    #[allow(clippy::type_complexity)]
    pub dot_u4_i8_split_gather_segs: fn(
        base: &[u8],
        stride: usize,
        ids: &[u32],
        lo: &[i8],
        hi: &[i8],
        ends: &[u32],
        out: &mut [i32],
    ),
    /// `sum popcount(a[i] & b[i])`.
    pub and_popcount_u64: fn(&[u64], &[u64]) -> u32,
    /// 4-bit FastScan look-up accumulate over a block of 32 codes; see
    /// [`scalar::fastscan_u16`] for the layout.
    pub fastscan_u16: fn(codes: &[u8], luts: &[u8], out: &mut [u16; 32]),
    /// In-place unnormalised Walsh–Hadamard transform (length a power of two); bit-identical
    /// to [`scalar::fwht_f32`].
    pub fwht_f32: fn(x: &mut [f32]),
    /// Rounds of a structured random rotation (sign flips, Walsh–Hadamard transforms, half
    /// mixing); bit-identical to [`scalar::rotate_rounds_f32`].
    pub rotate_rounds_f32: fn(x: &mut [f32], masks: &[u32], t: usize, scale: f32),
    /// The u8 FastScan tables of 4-dimension groups of float weights; bit-identical to
    /// [`scalar::fastscan_lut_u8`].
    pub fastscan_lut_u8: fn(w: &[f32], scale: f32, out: &mut [u8]),
    /// Nearest of `norms.len()` centroids for each of `out.len()` points stored transposed
    /// (k-means on short vectors); bit-identical to [`scalar::nearest_centroid_t`].
    #[allow(clippy::type_complexity)]
    pub nearest_centroid_t:
        fn(xt: &[f32], stride: usize, centroids: &[f32], norms: &[f32], out: &mut [u32]),
    /// Gathers up to 32 packed 4-bit codes `base[ids[i] * stride ..][.. nbytes]` into the
    /// block layout of `fastscan_u16`; bit-identical to [`scalar::fastscan_pack_u4`].
    #[allow(clippy::type_complexity)]
    pub fastscan_pack_u4:
        fn(base: &[u8], stride: usize, ids: &[u32], nbytes: usize, out: &mut [u8]),
}

impl std::fmt::Debug for Kernels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kernels")
            .field("level", &self.level)
            .field("isa", &self.isa)
            .finish_non_exhaustive()
    }
}

static SCALAR: Kernels = Kernels {
    level: SimdLevel::Scalar,
    isa: "scalar",
    l2sq_f32: scalar::l2sq_f32,
    dot_f32: scalar::dot_f32,
    matvec_f32: scalar::matvec_f32,
    matvec_f16: scalar::matvec_f16,
    l2sq_f32_f16: scalar::l2sq_f32_f16,
    dot_f32_u8: scalar::dot_f32_u8,
    dot_f32_bitplanes: scalar::dot_f32_bitplanes,
    dot_u8_i8: scalar::dot_u8_i8,
    dot_u8: scalar::dot_u8,
    dot_u4_i8: scalar::dot_u4_i8,
    dot_u4_i8_split: scalar::dot_u4_i8_split,
    dot_f32_u4_split: scalar::dot_f32_u4_split,
    dot_u4_i8_split_gather: scalar::dot_u4_i8_split_gather,
    dot_u4_i8_split_gather_segs: scalar::dot_u4_i8_split_gather_segs,
    and_popcount_u64: scalar::and_popcount_u64,
    fastscan_u16: scalar::fastscan_u16,
    fwht_f32: scalar::fwht_f32,
    rotate_rounds_f32: scalar::rotate_rounds_f32,
    fastscan_lut_u8: scalar::fastscan_lut_u8,
    nearest_centroid_t: scalar::nearest_centroid_t,
    fastscan_pack_u4: scalar::fastscan_pack_u4,
};

/// The kernel table for `level`, or `None` if this CPU cannot run it.
///
/// For AVX-512 this is the best variant: VNNI and VPOPCNTDQ kernels are used where the CPU
/// has those extensions, AVX-512 F/BW/VL ones otherwise.
pub fn kernels_for(level: SimdLevel) -> Option<&'static Kernels> {
    match level {
        SimdLevel::Scalar => Some(&SCALAR),
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx2 => x86_avx2::table(),
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx512 => x86_avx512::best_table(),
        #[cfg(target_arch = "aarch64")]
        SimdLevel::Neon => aarch64_neon::table(),
        #[allow(unreachable_patterns)]
        _ => None,
    }
}

/// All levels this CPU can run, scalar first, in increasing order of preference.
pub fn supported_levels() -> Vec<SimdLevel> {
    let mut levels: Vec<SimdLevel> = SimdLevel::ALL
        .into_iter()
        .filter(|&l| l.rank().is_some() && kernels_for(l).is_some())
        .collect();
    levels.sort_by_key(|l| l.rank());
    levels
}

/// Every kernel table this CPU can run, including the sub-variants of a level (for example
/// AVX-512 with and without VNNI), scalar first. Meant for tests and benchmarks.
pub fn all_variants() -> Vec<&'static Kernels> {
    let mut out = vec![&SCALAR];
    #[cfg(target_arch = "x86_64")]
    {
        out.extend(x86_avx2::table());
        out.extend(x86_avx512::all_tables());
    }
    #[cfg(target_arch = "aarch64")]
    out.extend(aarch64_neon::table());
    out
}

/// The level [`kernels()`] uses when `NEARQ_SIMD` holds `requested`.
///
/// `None`, an empty or unknown name, or a level of another architecture gives the best
/// supported level. A known level gives the best supported level not above it, so the
/// result is always runnable on this CPU.
pub fn resolve_level(requested: Option<&str>) -> SimdLevel {
    resolve_among(requested, &supported_levels())
}

/// [`resolve_level`] against an explicit list of supported levels (sorted, scalar first).
fn resolve_among(requested: Option<&str>, supported: &[SimdLevel]) -> SimdLevel {
    let best = supported.last().copied().unwrap_or(SimdLevel::Scalar);
    let Some(cap) = requested
        .and_then(SimdLevel::from_name)
        .and_then(SimdLevel::rank)
    else {
        return best;
    };
    supported
        .iter()
        .copied()
        .filter(|l| l.rank().is_some_and(|r| r <= cap))
        .max_by_key(|l| l.rank())
        .unwrap_or(SimdLevel::Scalar)
}

/// The kernel table chosen for this process: the best supported level, capped by
/// `NEARQ_SIMD` (see [`resolve_level`]). Resolved on first use and never again.
pub fn kernels() -> &'static Kernels {
    static CHOSEN: OnceLock<&'static Kernels> = OnceLock::new();
    CHOSEN.get_or_init(|| {
        let requested = std::env::var(ENV_VAR).ok();
        let level = resolve_level(requested.as_deref());
        kernels_for(level).unwrap_or(&SCALAR)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use SimdLevel::*;

    #[test]
    fn names_round_trip() {
        for l in SimdLevel::ALL {
            assert_eq!(SimdLevel::from_name(l.name()), Some(l));
            assert_eq!(SimdLevel::from_name(&l.name().to_uppercase()), Some(l));
        }
        assert_eq!(SimdLevel::from_name(" avx2 "), Some(Avx2));
        assert_eq!(SimdLevel::from_name("sse"), None);
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn resolve_caps_on_x86() {
        let all = [Scalar, Avx2, Avx512];
        let avx2 = [Scalar, Avx2];
        let none = [Scalar];
        assert_eq!(resolve_among(None, &all), Avx512);
        assert_eq!(resolve_among(Some(""), &all), Avx512);
        assert_eq!(resolve_among(Some("bogus"), &all), Avx512);
        assert_eq!(resolve_among(Some("neon"), &all), Avx512);
        assert_eq!(resolve_among(Some("avx512"), &all), Avx512);
        assert_eq!(resolve_among(Some("AVX2"), &all), Avx2);
        assert_eq!(resolve_among(Some("scalar"), &all), Scalar);
        assert_eq!(resolve_among(Some("avx512"), &avx2), Avx2);
        assert_eq!(resolve_among(Some("avx2"), &avx2), Avx2);
        assert_eq!(resolve_among(Some("avx512"), &none), Scalar);
        assert_eq!(resolve_among(Some("avx2"), &none), Scalar);
        assert_eq!(resolve_among(Some("neon"), &none), Scalar);
    }

    #[cfg(target_arch = "aarch64")]
    #[test]
    fn resolve_caps_on_aarch64() {
        let neon = [Scalar, Neon];
        assert_eq!(resolve_among(None, &neon), Neon);
        assert_eq!(resolve_among(Some("neon"), &neon), Neon);
        assert_eq!(resolve_among(Some("avx512"), &neon), Neon);
        assert_eq!(resolve_among(Some("bogus"), &neon), Neon);
        assert_eq!(resolve_among(Some("scalar"), &neon), Scalar);
        assert_eq!(resolve_among(Some("neon"), &[Scalar]), Scalar);
    }

    #[test]
    fn supported_levels_are_runnable_and_sorted() {
        let levels = supported_levels();
        assert_eq!(levels[0], Scalar);
        for w in levels.windows(2) {
            assert!(w[0].rank() < w[1].rank());
        }
        for l in levels {
            assert_eq!(kernels_for(l).map(|k| k.level), Some(l));
        }
    }
}
