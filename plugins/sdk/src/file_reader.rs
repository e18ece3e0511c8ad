//! `std::io::Read + Seek` over a host file, so parsers written against std
//! (dicom-object, csv) work unchanged while the bytes are fetched in
//! ranges: a parser that stops early never pulls the rest of a 300 MB file
//! into the guest.
use std::io::{self, Read, Seek, SeekFrom};

use crate::fs::{self, File};
use crate::types::{FileRef, HostError};

/// Chunk fetched per host call.
const CHUNK: u32 = 64 * 1024;

pub struct FileReader {
    file: File,
    size: u64,
    pos: u64,
    buf: Vec<u8>,
    buf_start: u64,
    /// Bytes fetched from the host so far (to prove ranged reading).
    fetched: u64,
    /// The host error behind the last failed read, if any.
    error: Option<HostError>,
}

impl FileReader {
    pub fn new(file: File) -> Self {
        let size = file.size();
        FileReader { file, size, pos: 0, buf: Vec::new(), buf_start: 0, fetched: 0, error: None }
    }

    /// Opens `target` through the host (`fs.open`).
    pub fn open(target: &FileRef) -> Result<Self, HostError> {
        Ok(Self::new(fs::open(target)?))
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Bytes fetched from the host so far.
    pub fn fetched(&self) -> u64 {
        self.fetched
    }

    /// The host error behind the last failed read, if any. A parser turns
    /// I/O errors into its own; this tells a host failure (`unavailable`:
    /// retry) from bad content (permanent).
    pub fn take_error(&mut self) -> Option<HostError> {
        self.error.take()
    }
}

impl Read for FileReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() || self.pos >= self.size {
            return Ok(0);
        }
        let in_buf = self.pos >= self.buf_start && self.pos < self.buf_start + self.buf.len() as u64;
        if !in_buf {
            let want = CHUNK.max(out.len().min(4 << 20) as u32);
            self.buf = match self.file.read(self.pos, want) {
                Ok(bytes) => bytes,
                Err(e) => {
                    let io = io::Error::other(format!("reading at offset {}: {}", self.pos, e.message()));
                    self.error = Some(e);
                    return Err(io);
                }
            };
            self.buf_start = self.pos;
            self.fetched += self.buf.len() as u64;
            if self.buf.is_empty() {
                return Ok(0);
            }
        }
        let off = (self.pos - self.buf_start) as usize;
        let n = out.len().min(self.buf.len() - off);
        out[..n].copy_from_slice(&self.buf[off..off + n]);
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for FileReader {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let new = match to {
            SeekFrom::Start(n) => n as i128,
            SeekFrom::End(d) => self.size as i128 + d as i128,
            SeekFrom::Current(d) => self.pos as i128 + d as i128,
        };
        if new < 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "seek before start of file"));
        }
        self.pos = new as u64;
        Ok(self.pos)
    }
}
