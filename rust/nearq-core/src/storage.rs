//! Fixed-stride code storage in 64-byte aligned memory.
//!
//! Code `i` occupies bytes `[i * stride, i * stride + code_size)`; the stride is the code size
//! rounded up to 4 bytes so float codes can be viewed as `&[f32]` without copying. Storage grows
//! by appending, so incremental adds need no rewrite.

use bytemuck::{Pod, Zeroable};

#[derive(Copy, Clone, Pod, Zeroable)]
#[repr(C, align(64))]
struct Line([u8; 64]);

pub struct CodeStore {
    lines: Vec<Line>,
    code_size: usize,
    stride: usize,
    len: usize,
}

impl CodeStore {
    pub fn new(code_size: usize) -> Self {
        let stride = code_size.div_ceil(4).max(1) * 4;
        CodeStore {
            lines: Vec::new(),
            code_size,
            stride,
            len: 0,
        }
    }

    pub fn with_len(code_size: usize, len: usize) -> Self {
        let mut s = Self::new(code_size);
        s.resize(len);
        s
    }

    pub fn resize(&mut self, len: usize) {
        let bytes = len * self.stride;
        self.lines.resize(bytes.div_ceil(64), Line([0; 64]));
        self.len = len;
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

    #[inline(always)]
    pub fn get(&self, i: usize) -> &[u8] {
        let bytes: &[u8] = bytemuck::cast_slice(&self.lines);
        &bytes[i * self.stride..i * self.stride + self.code_size]
    }

    #[inline(always)]
    pub fn get_mut(&mut self, i: usize) -> &mut [u8] {
        let (s, c) = (self.stride, self.code_size);
        let bytes: &mut [u8] = bytemuck::cast_slice_mut(&mut self.lines);
        &mut bytes[i * s..i * s + c]
    }

    /// All codes as one mutable byte slice of `len * stride` bytes.
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        let (s, n) = (self.stride, self.len);
        let bytes: &mut [u8] = bytemuck::cast_slice_mut(&mut self.lines);
        &mut bytes[..n * s]
    }

    pub fn stride(&self) -> usize {
        self.stride
    }

    /// Start of code `i`, for prefetching.
    #[inline(always)]
    pub fn ptr(&self, i: usize) -> *const u8 {
        let bytes: &[u8] = bytemuck::cast_slice(&self.lines);
        bytes[i * self.stride..].as_ptr()
    }

    pub fn memory_bytes(&self) -> usize {
        self.lines.capacity() * 64
    }
}
