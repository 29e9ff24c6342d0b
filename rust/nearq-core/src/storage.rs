//! Fixed-stride code storage in 64-byte aligned memory, owned or served from a memory map.
//!
//! Code `i` occupies bytes `[i * stride, i * stride + code_size)`; the stride is the code size
//! rounded up to 4 bytes so float codes can be viewed as `&[f32]` without copying. Storage grows
//! by appending, so incremental adds need no rewrite. Index files (format v2) store the codes
//! with the same stride at a 64-byte aligned offset, so a memory-mapped file is used in place;
//! the first mutation of a mapped store copies it into RAM (copy on write).

use bytemuck::{Pod, Zeroable};
use memmap2::Mmap;
use std::sync::Arc;

#[derive(Copy, Clone, Pod, Zeroable)]
#[repr(C, align(64))]
struct Line([u8; 64]);

/// Size of a transparent huge page on the platforms that matter (x86-64, aarch64 with 4 KiB
/// base pages).
pub(crate) const HUGE_PAGE: usize = 2 << 20;

#[cfg(target_os = "linux")]
extern "C" {
    fn madvise(addr: *mut std::ffi::c_void, len: usize, advice: std::ffi::c_int)
        -> std::ffi::c_int;
}

/// Advises the kernel to back the whole huge pages inside `[ptr, ptr + len)` with transparent
/// huge pages (`MADV_HUGEPAGE`; Linux only, advice only: the result is ignored, and without THP
/// support nothing changes). Given before the first write, the page faults then map 2 MiB
/// pages. A search touches codes, graph rows and vectors at random: with 4 KiB pages nearly
/// every such access also misses the TLB once the arrays outgrow its reach (a few MiB).
///
/// `NEARQ_HUGEPAGES=0` in the environment turns the advice off (read once).
pub(crate) fn advise_huge(ptr: *const u8, len: usize) {
    #[cfg(target_os = "linux")]
    if huge_pages_wanted() {
        let start = (ptr as usize).next_multiple_of(HUGE_PAGE);
        let end = (ptr as usize + len) & !(HUGE_PAGE - 1);
        if end > start {
            // SAFETY: the range lies inside an allocation the caller owns; MADV_HUGEPAGE (14)
            // changes no contents and no mapping, only how future faults are served.
            unsafe {
                madvise(start as *mut std::ffi::c_void, end - start, 14);
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (ptr, len);
}

#[cfg(target_os = "linux")]
fn huge_pages_wanted() -> bool {
    static WANTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *WANTED.get_or_init(|| std::env::var("NEARQ_HUGEPAGES").map_or(true, |v| v.trim() != "0"))
}

/// Reserves room for `extra` more elements of `v` (exactly), advising a new allocation to use
/// huge pages before anything is written to it (see [`advise_huge`]).
pub(crate) fn reserve_huge<T>(v: &mut Vec<T>, extra: usize) {
    if v.capacity() - v.len() >= extra {
        return;
    }
    v.reserve_exact(extra);
    advise_huge(v.as_ptr().cast(), v.capacity() * std::mem::size_of::<T>());
}

/// `n` copies of `x` in storage advised to use huge pages.
pub(crate) fn vec_huge<T: Clone>(n: usize, x: T) -> Vec<T> {
    let mut v = Vec::new();
    reserve_huge(&mut v, n);
    v.resize(n, x);
    v
}

/// The `n` items of `it` in storage advised to use huge pages.
pub(crate) fn collect_huge<T>(n: usize, it: impl IntoIterator<Item = T>) -> Vec<T> {
    let mut v = Vec::new();
    reserve_huge(&mut v, n);
    v.extend(it);
    v
}

/// A copy of `src` in storage advised to use huge pages.
pub(crate) fn copy_huge<T: Copy>(src: &[T]) -> Vec<T> {
    let mut v = Vec::new();
    reserve_huge(&mut v, src.len());
    v.extend_from_slice(src);
    v
}

enum Backing {
    Owned(Vec<Line>),
    Mapped { map: Arc<Mmap>, offset: usize },
}

pub struct CodeStore {
    backing: Backing,
    code_size: usize,
    stride: usize,
    len: usize,
}

/// Stride of a code of `code_size` bytes.
pub fn stride_of(code_size: usize) -> usize {
    code_size.div_ceil(4).max(1) * 4
}

impl CodeStore {
    pub fn new(code_size: usize) -> Self {
        CodeStore {
            backing: Backing::Owned(Vec::new()),
            code_size,
            stride: stride_of(code_size),
            len: 0,
        }
    }

    pub fn with_len(code_size: usize, len: usize) -> Self {
        let mut s = Self::new(code_size);
        s.resize(len);
        s
    }

    /// Codes served from `map[offset..offset + len * stride]`; `None` unless the offset is
    /// 64-byte aligned and the range lies inside the map.
    pub fn mapped(code_size: usize, len: usize, map: Arc<Mmap>, offset: usize) -> Option<Self> {
        let stride = stride_of(code_size);
        let end = len.checked_mul(stride)?.checked_add(offset)?;
        if end > map.len() || !(map.as_ptr() as usize + offset).is_multiple_of(64) {
            return None;
        }
        Some(CodeStore {
            backing: Backing::Mapped { map, offset },
            code_size,
            stride,
            len,
        })
    }

    fn owned_lines(&mut self) -> &mut Vec<Line> {
        if let Backing::Mapped { .. } = self.backing {
            let bytes = self.all_bytes()[..self.len * self.stride].to_vec();
            let mut lines = vec_huge(bytes.len().div_ceil(64), Line([0; 64]));
            bytemuck::cast_slice_mut::<Line, u8>(&mut lines)[..bytes.len()].copy_from_slice(&bytes);
            self.backing = Backing::Owned(lines);
        }
        match &mut self.backing {
            Backing::Owned(l) => l,
            Backing::Mapped { .. } => unreachable!("converted above"),
        }
    }

    #[inline(always)]
    fn all_bytes(&self) -> &[u8] {
        match &self.backing {
            Backing::Owned(l) => bytemuck::cast_slice(l),
            Backing::Mapped { map, offset } => &map[*offset..*offset + self.len * self.stride],
        }
    }

    pub fn resize(&mut self, len: usize) {
        let lines = (len * self.stride).div_ceil(64);
        let v = self.owned_lines();
        if lines > v.capacity() {
            // Grown geometrically, so that adding vectors one call at a time stays amortised.
            let want = lines.max(v.len() + v.len() / 2);
            reserve_huge(v, want - v.len());
        }
        v.resize(lines, Line([0; 64]));
        self.len = len;
    }

    /// Keeps the codes whose `keep` flag is set, in order.
    pub fn retain(&mut self, keep: &[bool]) {
        let (s, c) = (self.stride, self.code_size);
        let mut out = CodeStore::with_len(c, keep.iter().filter(|&&k| k).count());
        let mut j = 0;
        for (i, &k) in keep.iter().enumerate().take(self.len) {
            if k {
                out.get_mut(j).copy_from_slice(self.get(i));
                j += 1;
            }
        }
        debug_assert_eq!(s, out.stride);
        *self = out;
    }

    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn code_size(&self) -> usize {
        self.code_size
    }
    pub fn is_mapped(&self) -> bool {
        matches!(self.backing, Backing::Mapped { .. })
    }

    #[inline(always)]
    pub fn get(&self, i: usize) -> &[u8] {
        &self.all_bytes()[i * self.stride..i * self.stride + self.code_size]
    }

    #[inline(always)]
    pub fn get_mut(&mut self, i: usize) -> &mut [u8] {
        let (s, c) = (self.stride, self.code_size);
        let bytes: &mut [u8] = bytemuck::cast_slice_mut(self.owned_lines());
        &mut bytes[i * s..i * s + c]
    }

    /// All codes as one byte slice of `len * stride` bytes (the on-disk layout).
    pub fn bytes(&self) -> &[u8] {
        &self.all_bytes()[..self.len * self.stride]
    }

    /// All codes as one mutable byte slice of `len * stride` bytes.
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        let (s, n) = (self.stride, self.len);
        let bytes: &mut [u8] = bytemuck::cast_slice_mut(self.owned_lines());
        &mut bytes[..n * s]
    }

    pub fn stride(&self) -> usize {
        self.stride
    }

    /// Start of code `i`, for prefetching.
    #[inline(always)]
    pub fn ptr(&self, i: usize) -> *const u8 {
        self.all_bytes()[i * self.stride..].as_ptr()
    }

    /// Bytes held in RAM (0 when served from a map).
    pub fn memory_bytes(&self) -> usize {
        match &self.backing {
            Backing::Owned(l) => l.capacity() * 64,
            Backing::Mapped { .. } => 0,
        }
    }

    /// Bytes served from a memory map.
    pub fn mapped_bytes(&self) -> usize {
        match &self.backing {
            Backing::Owned(_) => 0,
            Backing::Mapped { .. } => self.len * self.stride,
        }
    }
}

/// Full-precision vectors, owned or served from a memory map (copied on first mutation).
pub enum F32Store {
    Owned(Vec<f32>),
    Mapped {
        map: Arc<Mmap>,
        offset: usize,
        len: usize,
    },
}

impl F32Store {
    /// `len` floats at `map[offset..]`; `None` unless 4-byte aligned and inside the map, or on
    /// a big-endian machine (the file is little-endian).
    pub fn mapped(map: Arc<Mmap>, offset: usize, len: usize) -> Option<Self> {
        if cfg!(target_endian = "big") {
            return None;
        }
        let end = len.checked_mul(4)?.checked_add(offset)?;
        if end > map.len() || !(map.as_ptr() as usize + offset).is_multiple_of(4) {
            return None;
        }
        Some(F32Store::Mapped { map, offset, len })
    }

    #[inline(always)]
    pub fn as_slice(&self) -> &[f32] {
        match self {
            F32Store::Owned(v) => v,
            F32Store::Mapped { map, offset, len } => {
                bytemuck::cast_slice(&map[*offset..*offset + *len * 4])
            }
        }
    }

    pub fn to_mut(&mut self) -> &mut Vec<f32> {
        if let F32Store::Mapped { .. } = self {
            *self = F32Store::Owned(copy_huge(self.as_slice()));
        }
        match self {
            F32Store::Owned(v) => v,
            F32Store::Mapped { .. } => unreachable!("converted above"),
        }
    }

    pub fn memory_bytes(&self) -> usize {
        match self {
            F32Store::Owned(v) => v.capacity() * 4,
            F32Store::Mapped { .. } => 0,
        }
    }

    pub fn mapped_bytes(&self) -> usize {
        match self {
            F32Store::Owned(_) => 0,
            F32Store::Mapped { len, .. } => len * 4,
        }
    }
}
