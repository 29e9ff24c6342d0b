//! The index file format and its bounds-checked reader.
//!
//! ```text
//! offset  size  field
//! 0       8     magic  b"NEARQIX\0"
//! 8       4     format version (u32 LE); readers refuse versions newer than FORMAT_VERSION
//! 12      4     flags (u32 LE); no flag is defined yet, so readers refuse any non-zero value
//! 16      8     payload length P (u64 LE); must equal file length - 28
//! 24      P     payload (little-endian fields, see index.rs)
//! 24+P    4     CRC-32 (IEEE) of the payload
//! ```
//! Version 2 (this release) aligns the bulk sections of the payload (codes, float vectors) to
//! 64-byte file offsets with zero padding, so a memory-mapped file can be searched in place
//! ([`open_mapped`]); version 1 files (no padding, no ids or tombstones) still load.
//! Version 3 adds an optional section at the end of the payload: a RaBitQ index's quantized
//! graph rows, or the mark that it is turned off (see `index/qg_glue.rs`); version 2 files
//! (which have none) load as before, their rows rebuilt.
//! Version 4 marks files that may hold what older readers misread: SAQ code layout 1 (in the
//! encoding's parameters) and the 4-bit PQ neighbour-code rows mark (trailing section tag 2);
//! the layout of every field is unchanged, so version 3 files load as before and a version-3
//! reader refuses a version-4 file as too new instead of misreading it.
//! Version 5 adds a second kind of quantized graph rows, with the vectors in half precision
//! (`qg.rs`, first payload byte 0xA1); everything else is unchanged, so version 4 files load
//! as before and a version-4 reader refuses a version-5 file as too new.
//! Version 6 adds quantized graph rows with 2-bit neighbour codes (first payload bytes 0xA2
//! and 0xA3, the default for new rows of RaBitQ indexes of 2 or more bits); everything else
//! is unchanged, so version 5 files load as before and a version-5 reader refuses a version-6
//! file as too new.
//! The whole file is checked (length, version, checksum) before any field is parsed, and every
//! length read from the payload is checked against the bytes that remain before anything is
//! allocated, so a corrupt or hostile file yields [`Error::Format`], never a crash or an
//! allocation sized by an unchecked field. Files are written to a temporary name in the same
//! directory and renamed into place, so a crash never leaves a half-written index.

use crate::error::{Error, Result};
use std::io::Write;
use std::path::Path;

pub const MAGIC: &[u8; 8] = b"NEARQIX\0";
pub const FORMAT_VERSION: u32 = 6;
/// Bytes before the payload; payload offset `p` lies at file offset `HEADER + p`.
pub const HEADER: usize = 24;

/// Appends little-endian fields to a payload buffer.
#[derive(Default)]
pub struct Writer {
    pub buf: Vec<u8>,
}

impl Writer {
    pub fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }
    pub fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub fn f32(&mut self, v: f32) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub fn bytes(&mut self, v: &[u8]) {
        self.buf.extend_from_slice(v);
    }
    pub fn f32s(&mut self, v: &[f32]) {
        for x in v {
            self.f32(*x);
        }
    }
    pub fn u32s(&mut self, v: &[u32]) {
        for x in v {
            self.u32(*x);
        }
    }
    pub fn i64s(&mut self, v: &[i64]) {
        for x in v {
            self.buf.extend_from_slice(&x.to_le_bytes());
        }
    }
    pub fn u64s(&mut self, v: &[u64]) {
        for x in v {
            self.u64(*x);
        }
    }
    /// Zero padding up to the next 64-byte file offset.
    pub fn align64(&mut self) {
        while !(HEADER + self.buf.len()).is_multiple_of(64) {
            self.buf.push(0);
        }
    }
}

/// Reads little-endian fields from a payload, failing with [`Error::Format`] past its end.
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }
    /// Current offset in the payload.
    pub fn pos(&self) -> usize {
        self.pos
    }
    /// Skips the zero padding [`Writer::align64`] wrote.
    pub fn align64(&mut self) -> Result<()> {
        let pad = (64 - (HEADER + self.pos) % 64) % 64;
        if self.take(pad)?.iter().any(|&b| b != 0) {
            return Err(Error::Format("non-zero alignment padding".into()));
        }
        Ok(())
    }
    pub fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if n > self.remaining() {
            return Err(Error::Format(format!(
                "truncated payload: a field needs {n} bytes at offset {} but only {} remain",
                self.pos,
                self.remaining()
            )));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    /// Bytes for `count` items of `size` bytes, with overflow and bounds checked first.
    pub fn take_array(&mut self, count: usize, size: usize) -> Result<&'a [u8]> {
        let n = count
            .checked_mul(size)
            .ok_or_else(|| Error::Format(format!("array of {count} items overflows")))?;
        self.take(n)
    }
    pub fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    pub fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
    pub fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }
    pub fn f32(&mut self) -> Result<f32> {
        Ok(f32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
    /// `count` little-endian floats, in storage advised to use huge pages (these are the
    /// index's vectors, read at random by searches).
    pub fn f32s(&mut self, count: usize) -> Result<Vec<f32>> {
        let b = self.take_array(count, 4)?;
        Ok(crate::storage::collect_huge(
            count,
            b.chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap())),
        ))
    }
    pub fn i64s(&mut self, count: usize) -> Result<Vec<i64>> {
        let b = self.take_array(count, 8)?;
        Ok(b.chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
            .collect())
    }
    pub fn u64s(&mut self, count: usize) -> Result<Vec<u64>> {
        let b = self.take_array(count, 8)?;
        Ok(b.chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
            .collect())
    }
    /// `count` little-endian u32s, in storage advised to use huge pages (the graph's rows).
    pub fn u32s(&mut self, count: usize) -> Result<Vec<u32>> {
        let b = self.take_array(count, 4)?;
        Ok(crate::storage::collect_huge(
            count,
            b.chunks_exact(4)
                .map(|c| u32::from_le_bytes(c.try_into().unwrap())),
        ))
    }
    /// A count field that must not exceed `max`.
    pub fn count(&mut self, what: &str, max: u64) -> Result<usize> {
        let v = self.u64()?;
        if v > max {
            return Err(Error::Format(format!(
                "{what} = {v} exceeds the limit {max}"
            )));
        }
        Ok(v as usize)
    }
    pub fn finish(&self) -> Result<()> {
        if self.remaining() != 0 {
            return Err(Error::Format(format!(
                "{} unexpected trailing bytes in payload",
                self.remaining()
            )));
        }
        Ok(())
    }
}

fn io_err(path: &Path, source: std::io::Error) -> Error {
    Error::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Writes `payload` inside the container, atomically (temporary file, then rename).
pub fn write_file(path: &Path, payload: &[u8]) -> Result<()> {
    let mut header = Vec::with_capacity(HEADER);
    header.extend_from_slice(MAGIC);
    header.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    header.extend_from_slice(&0u32.to_le_bytes());
    header.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    let crc = crc32fast::hash(payload);
    let file_name = path.file_name().ok_or_else(|| {
        io_err(
            path,
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a file path"),
        )
    })?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(file_name);
    tmp_name.push(format!(".tmp{}", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&header)?;
        f.write_all(payload)?;
        f.write_all(&crc.to_le_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(io_err(path, e));
    }
    Ok(())
}

/// Reads a file and returns its verified payload.
pub fn read_file(path: &Path) -> Result<Vec<u8>> {
    Ok(read_file_versioned(path)?.1)
}

/// Reads a file and returns its format version and verified payload.
pub fn read_file_versioned(path: &Path) -> Result<(u32, Vec<u8>)> {
    let data = std::fs::read(path).map_err(|e| io_err(path, e))?;
    verify_versioned(data)
}

/// Wraps a payload in the container (header, payload, checksum) in memory.
pub fn to_container(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + payload.len() + 4);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(payload);
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out
}

/// Maps a file and checks its container header (magic, version, flags, payload length)
/// without reading the rest: the checksum is not verified, since that would read every page.
/// Returns the format version and the map; the payload is `map[HEADER..map.len() - 4]`.
pub fn open_mapped(path: &Path) -> Result<(u32, std::sync::Arc<memmap2::Mmap>)> {
    let f = std::fs::File::open(path).map_err(|e| io_err(path, e))?;
    // SAFETY: the map is read-only and private to this index; like every memory-mapped
    // reader we rely on the file not being truncated or rewritten in place while mapped
    // (nearq itself only ever replaces index files by renaming a new file over them).
    let map = unsafe { memmap2::Mmap::map(&f) }.map_err(|e| io_err(path, e))?;
    let version = check_header(&map)?;
    Ok((version, std::sync::Arc::new(map)))
}

/// Checks the container header against the data's length; returns the version.
fn check_header(data: &[u8]) -> Result<u32> {
    if data.len() < HEADER + 4 {
        return Err(Error::Format(format!(
            "file is {} bytes, too short to be a nearq index",
            data.len()
        )));
    }
    if &data[..8] != MAGIC {
        return Err(Error::Format(
            "not a nearq index file (bad magic bytes)".into(),
        ));
    }
    let version = u32::from_le_bytes(data[8..12].try_into().unwrap());
    if version == 0 || version > FORMAT_VERSION {
        return Err(Error::Format(format!(
            "format version {version} is not supported: this nearq reads versions 1..={FORMAT_VERSION} (written by a newer nearq?)"
        )));
    }
    let flags = u32::from_le_bytes(data[12..16].try_into().unwrap());
    if flags != 0 {
        return Err(Error::Format(format!(
            "unknown format flags {flags:#x} (written by a newer nearq?)"
        )));
    }
    let plen = u64::from_le_bytes(data[16..24].try_into().unwrap());
    let expected = (data.len() - HEADER - 4) as u64;
    if plen != expected {
        return Err(Error::Format(format!(
            "payload length field says {plen} bytes but the file holds {expected} (truncated or corrupt)"
        )));
    }
    Ok(version)
}

/// Checks the container (magic, version, length, checksum) and returns the payload.
pub fn verify(data: Vec<u8>) -> Result<Vec<u8>> {
    Ok(verify_versioned(data)?.1)
}

/// Checks the container and returns its format version and payload.
pub fn verify_versioned(data: Vec<u8>) -> Result<(u32, Vec<u8>)> {
    let version = check_header(&data)?;
    let crc = u32::from_le_bytes(data[data.len() - 4..].try_into().unwrap());
    if crc32fast::hash(&data[HEADER..data.len() - 4]) != crc {
        return Err(Error::Format(
            "checksum mismatch: the file is corrupt".into(),
        ));
    }
    let mut data = data;
    data.truncate(data.len() - 4);
    data.drain(..HEADER);
    Ok((version, data))
}
