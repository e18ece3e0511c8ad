//! Ranged reads with a byte budget.
//!
//! [`RangeRead`] is the one thing the parsers need from a file: its size and
//! the bytes of a range. The guest implements it over the host's `fs` file
//! (each call one `file.read`, at most 4 MiB); tests over bytes in memory.
//! [`Source`] sits on top: it fetches aligned chunks, keeps them (a parser
//! that looks at the same bytes twice does not pay twice) and refuses to
//! fetch more than the item's budget.
use std::collections::BTreeMap;
use std::io::{self, Read, Seek, SeekFrom};

use ferry_plugin_sdk::types::StageError;

use crate::ExtractError;

/// Random access to a file's bytes.
pub trait RangeRead {
    fn size(&self) -> u64;
    /// Up to `len` bytes from `offset`; fewer only at the end of the file.
    fn read_at(&mut self, offset: u64, len: u32) -> Result<Vec<u8>, StageError>;
}

impl RangeRead for &[u8] {
    fn size(&self) -> u64 {
        self.len() as u64
    }
    fn read_at(&mut self, offset: u64, len: u32) -> Result<Vec<u8>, StageError> {
        let start = (offset.min(self.len() as u64)) as usize;
        let end = start.saturating_add(len as usize).min(self.len());
        Ok(self[start..end].to_vec())
    }
}

impl<R: RangeRead + ?Sized> RangeRead for &mut R {
    fn size(&self) -> u64 {
        (**self).size()
    }
    fn read_at(&mut self, offset: u64, len: u32) -> Result<Vec<u8>, StageError> {
        (**self).read_at(offset, len)
    }
}

/// Bytes fetched per chunk (the unit of caching and of the budget).
const CHUNK: u64 = 16 * 1024;
/// The most one host call asks for (the host caps a read at 4 MiB).
const MAX_CALL: u64 = 4 << 20;

/// A budgeted, caching reader over a [`RangeRead`].
pub struct Source<R> {
    inner: R,
    size: u64,
    budget: u64,
    fetched: u64,
    chunks: BTreeMap<u64, Vec<u8>>,
}

impl<R: RangeRead> Source<R> {
    pub fn new(inner: R, budget: u64) -> Self {
        let size = inner.size();
        Source { inner, size, budget, fetched: 0, chunks: BTreeMap::new() }
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Bytes fetched from the file so far.
    pub fn fetched(&self) -> u64 {
        self.fetched
    }

    pub fn budget(&self) -> u64 {
        self.budget
    }

    /// Whether `[offset, offset + len)` would fit in what is left of the budget.
    pub fn affordable(&self, offset: u64, len: u64) -> bool {
        self.missing(offset, len) <= self.budget - self.fetched
    }

    fn missing(&self, offset: u64, len: u64) -> u64 {
        let end = offset.saturating_add(len).min(self.size);
        if offset >= end {
            return 0;
        }
        let (first, last) = (offset / CHUNK, (end - 1) / CHUNK);
        let mut missing = 0;
        for c in first..=last {
            if !self.chunks.contains_key(&c) {
                missing += CHUNK.min(self.size - c * CHUNK);
            }
        }
        missing
    }

    /// The bytes of `[offset, offset + len)`, cut at the end of the file.
    pub fn bytes(&mut self, offset: u64, len: u64) -> Result<Vec<u8>, ExtractError> {
        let end = offset.saturating_add(len).min(self.size);
        if offset >= end {
            return Ok(Vec::new());
        }
        let missing = self.missing(offset, len);
        if missing > self.budget - self.fetched {
            return Err(ExtractError::TooLarge(format!(
                "reading bytes {offset}..{end} would take more than the {} bytes this stage reads of one file \
                 ({} read so far)",
                self.budget, self.fetched
            )));
        }
        let (first, last) = (offset / CHUNK, (end - 1) / CHUNK);
        // fetch runs of missing chunks, each run in calls of at most MAX_CALL
        let mut c = first;
        while c <= last {
            if self.chunks.contains_key(&c) {
                c += 1;
                continue;
            }
            let mut run_end = c;
            while run_end < last && !self.chunks.contains_key(&(run_end + 1)) && (run_end + 2 - c) * CHUNK <= MAX_CALL {
                run_end += 1;
            }
            let start = c * CHUNK;
            let stop = ((run_end + 1) * CHUNK).min(self.size);
            let mut data = self.inner.read_at(start, (stop - start) as u32).map_err(ExtractError::Read)?;
            data.truncate((stop - start) as usize);
            self.fetched += data.len() as u64;
            if (data.len() as u64) < stop - start {
                return Err(ExtractError::Content(format!(
                    "the file ended at byte {} while reading bytes {start}..{stop} of its declared {} bytes \
                     (cut short, or still being written)",
                    start + data.len() as u64,
                    self.size
                )));
            }
            for (i, piece) in data.chunks(CHUNK as usize).enumerate() {
                self.chunks.insert(c + i as u64, piece.to_vec());
            }
            c = run_end + 1;
        }
        let mut out = Vec::with_capacity((end - offset) as usize);
        for c in first..=last {
            let chunk = &self.chunks[&c];
            let cs = c * CHUNK;
            let from = offset.max(cs) - cs;
            let to = end.min(cs + chunk.len() as u64) - cs;
            out.extend_from_slice(&chunk[from as usize..to as usize]);
        }
        Ok(out)
    }
}

/// `Read + Seek` over a [`Source`], for parsers written against std
/// (imagesize). A refused or failed read is kept in `error`.
pub struct SeekReader<'a, R> {
    pub source: &'a mut Source<R>,
    pub pos: u64,
    pub error: Option<ExtractError>,
}

impl<R: RangeRead> Read for SeekReader<'_, R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.pos >= self.source.size() || out.is_empty() {
            return Ok(0);
        }
        let want = (out.len() as u64).min(CHUNK);
        match self.source.bytes(self.pos, want) {
            Ok(bytes) => {
                out[..bytes.len()].copy_from_slice(&bytes);
                self.pos += bytes.len() as u64;
                Ok(bytes.len())
            }
            Err(e) => {
                let io = io::Error::other(e.to_string());
                self.error = Some(e);
                Err(io)
            }
        }
    }
}

impl<R: RangeRead> Seek for SeekReader<'_, R> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let new = match to {
            SeekFrom::Start(n) => n as i128,
            SeekFrom::End(d) => self.source.size() as i128 + d as i128,
            SeekFrom::Current(d) => self.pos as i128 + d as i128,
        };
        if new < 0 || new > u64::MAX as i128 {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "seek out of range"));
        }
        self.pos = new as u64;
        Ok(self.pos)
    }
}
