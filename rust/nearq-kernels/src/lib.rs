//! Distance kernels for nearq, one file per instruction set, dispatched once per process.
//!
//! Every kernel has a scalar reference in [`scalar`] with the same signature; the SIMD
//! versions must agree with it (exactly for integer kernels, to a relative tolerance for
//! float accumulation). [`kernels()`] returns the table for the best level this CPU supports,
//! capped by the `NEARQ_SIMD` environment variable (`scalar`, `avx2`, `avx512`, `neon`).

pub mod scalar;

/// Instruction-set level of a kernel table.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SimdLevel {
    Scalar,
    Avx2,
    Avx512,
    Neon,
}

impl SimdLevel {
    pub fn name(self) -> &'static str {
        match self {
            SimdLevel::Scalar => "scalar",
            SimdLevel::Avx2 => "avx2",
            SimdLevel::Avx512 => "avx512",
            SimdLevel::Neon => "neon",
        }
    }
}

/// A table of kernels for one instruction-set level. All slices passed to one call have
/// equal length (callers guarantee it; kernels may panic otherwise).
pub struct Kernels {
    pub level: SimdLevel,
    /// Squared Euclidean distance.
    pub l2sq_f32: fn(&[f32], &[f32]) -> f32,
    /// Inner product.
    pub dot_f32: fn(&[f32], &[f32]) -> f32,
    /// Inner product of f32 weights with u8 codes: sum a[i] * b[i] as f32.
    pub dot_f32_u8: fn(&[f32], &[u8]) -> f32,
}

static SCALAR: Kernels = Kernels {
    level: SimdLevel::Scalar,
    l2sq_f32: scalar::l2sq_f32,
    dot_f32: scalar::dot_f32,
    dot_f32_u8: scalar::dot_f32_u8,
};

/// The kernel table chosen for this process (resolved on first use).
pub fn kernels() -> &'static Kernels {
    &SCALAR
}
