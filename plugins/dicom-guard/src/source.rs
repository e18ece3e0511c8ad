//! The two kinds of input the scanner walks: a seekable file (values are
//! skipped with `seek`, so the pixel data are never read), and the inflated
//! stream of a deflated data set (values are skipped by inflating them
//! through a fixed buffer, counting every byte against the inflate cap).
use std::io::{self, Read, Seek, SeekFrom};

use flate2::read::DeflateDecoder;

use crate::{GuardError, What};

pub(crate) trait Source {
    /// Offset of the next byte (for a stream: `dataset_start` plus the
    /// inflated bytes consumed).
    fn pos(&self) -> u64;
    /// Where the input ends, once known (a file: always).
    fn end(&self) -> Option<u64>;
    /// Fills `buf`; the caller checked that the bytes should be there, so
    /// running out is a truncation (`what`: what was being read).
    fn read_exact(&mut self, buf: &mut [u8], what: What) -> Result<(), GuardError>;
    /// Moves `n` bytes on without keeping them.
    fn skip(&mut self, n: u64, what: What) -> Result<(), GuardError>;
    /// The next two bytes without consuming them, if they lie before
    /// `limit` and the end.
    fn peek2(&mut self, limit: u64) -> Result<Option<[u8; 2]>, GuardError>;
    fn at_eof(&mut self) -> Result<bool, GuardError>;
}

pub(crate) struct FileSource<R> {
    reader: R,
    pos: u64,
    size: u64,
}

impl<R: Read + Seek> FileSource<R> {
    /// `reader` must be at offset 0 of a file of `size` bytes.
    pub(crate) fn new(reader: R, size: u64) -> Self {
        FileSource { reader, pos: 0, size }
    }

    /// The reader, positioned at [`Source::pos`].
    pub(crate) fn into_inner(self) -> R {
        self.reader
    }

    /// Reads up to `buf.len()` bytes; how many there were.
    pub(crate) fn read_up_to(&mut self, buf: &mut [u8]) -> Result<usize, GuardError> {
        let mut got = 0;
        while got < buf.len() {
            match self.reader.read(&mut buf[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(source) => return Err(GuardError::Io { offset: self.pos + got as u64, source }),
            }
        }
        self.pos += got as u64;
        Ok(got)
    }

    pub(crate) fn seek_to(&mut self, pos: u64) -> Result<(), GuardError> {
        self.reader.seek(SeekFrom::Start(pos)).map_err(|source| GuardError::Io { offset: pos, source })?;
        self.pos = pos;
        Ok(())
    }
}

impl<R: Read + Seek> Source for FileSource<R> {
    fn pos(&self) -> u64 {
        self.pos
    }

    fn end(&self) -> Option<u64> {
        Some(self.size)
    }

    fn read_exact(&mut self, buf: &mut [u8], what: What) -> Result<(), GuardError> {
        match self.reader.read_exact(buf) {
            Ok(()) => {
                self.pos += buf.len() as u64;
                Ok(())
            }
            // The size said the bytes were there: the file shrank.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(GuardError::Truncated {
                at: self.pos + buf.len() as u64,
                size: self.size,
                what: format!("{} (the file ended early while being read: is it being written?)", what()),
            }),
            Err(source) => Err(GuardError::Io { offset: self.pos, source }),
        }
    }

    fn skip(&mut self, n: u64, _what: What) -> Result<(), GuardError> {
        self.seek_to(self.pos + n)
    }

    fn peek2(&mut self, limit: u64) -> Result<Option<[u8; 2]>, GuardError> {
        if self.pos + 2 > limit.min(self.size) {
            return Ok(None);
        }
        let at = self.pos;
        let mut b = [0u8; 2];
        self.read_exact(&mut b, &|| "the start of a value".to_string())?;
        self.seek_to(at)?;
        Ok(Some(b))
    }

    fn at_eof(&mut self) -> Result<bool, GuardError> {
        Ok(self.pos >= self.size)
    }
}

/// Bytes inflated per refill.
const CHUNK: usize = 64 * 1024;

pub(crate) struct StreamSource<R: Read> {
    inflater: DeflateDecoder<R>,
    buf: Vec<u8>,
    head: usize,
    tail: usize,
    base: u64,
    /// Bytes inflated so far (consumed or buffered).
    inflated: u64,
    limit: u64,
    eof: bool,
}

impl<R: Read> StreamSource<R> {
    /// Inflates the raw deflate stream `reader` (positioned at
    /// `base`), refusing to produce more than `limit` bytes.
    pub(crate) fn new(reader: R, base: u64, limit: u64) -> Self {
        StreamSource {
            inflater: DeflateDecoder::new(reader),
            buf: vec![0; CHUNK],
            head: 0,
            tail: 0,
            base,
            inflated: 0,
            limit,
            eof: false,
        }
    }

    /// Inflates more into `buf[tail..]`; false at the end of the stream.
    fn more(&mut self) -> Result<bool, GuardError> {
        if self.eof {
            return Ok(false);
        }
        if self.head == self.tail {
            self.head = 0;
            self.tail = 0;
        } else if self.tail == self.buf.len() {
            self.buf.copy_within(self.head..self.tail, 0);
            self.tail -= self.head;
            self.head = 0;
        }
        let n = loop {
            match self.inflater.read(&mut self.buf[self.tail..]) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if matches!(e.kind(), io::ErrorKind::InvalidData | io::ErrorKind::InvalidInput) => {
                    return Err(GuardError::Invalid {
                        offset: self.pos(),
                        what: format!("the deflated data set is corrupt ({e}); offsets in the inflated data"),
                    })
                }
                Err(source) => return Err(GuardError::Io { offset: self.pos(), source }),
            }
        };
        if n == 0 {
            self.eof = true;
            return Ok(false);
        }
        self.tail += n;
        self.inflated += n as u64;
        if self.inflated > self.limit {
            return Err(GuardError::InflateLimit { limit: self.limit });
        }
        Ok(true)
    }

    fn short(&self, at: u64, what: What) -> GuardError {
        GuardError::Truncated {
            at,
            size: self.base + self.inflated,
            what: format!("{} (offsets in the inflated data set)", what()),
        }
    }
}

impl<R: Read> Source for StreamSource<R> {
    fn pos(&self) -> u64 {
        self.base + self.inflated - (self.tail - self.head) as u64
    }

    fn end(&self) -> Option<u64> {
        self.eof.then_some(self.base + self.inflated)
    }

    fn read_exact(&mut self, out: &mut [u8], what: What) -> Result<(), GuardError> {
        let end = self.pos() + out.len() as u64;
        let mut got = 0;
        while got < out.len() {
            if self.head == self.tail && !self.more()? {
                return Err(self.short(end, what));
            }
            let n = (out.len() - got).min(self.tail - self.head);
            out[got..got + n].copy_from_slice(&self.buf[self.head..self.head + n]);
            self.head += n;
            got += n;
        }
        Ok(())
    }

    fn skip(&mut self, n: u64, what: What) -> Result<(), GuardError> {
        let end = self.pos() + n;
        let mut left = n;
        while left > 0 {
            if self.head == self.tail && !self.more()? {
                return Err(self.short(end, what));
            }
            let step = left.min((self.tail - self.head) as u64) as usize;
            self.head += step;
            left -= step as u64;
        }
        Ok(())
    }

    fn peek2(&mut self, limit: u64) -> Result<Option<[u8; 2]>, GuardError> {
        if self.pos() + 2 > limit {
            return Ok(None);
        }
        while self.tail - self.head < 2 {
            if !self.more()? {
                return Ok(None);
            }
        }
        Ok(Some([self.buf[self.head], self.buf[self.head + 1]]))
    }

    fn at_eof(&mut self) -> Result<bool, GuardError> {
        Ok(self.head == self.tail && !self.more()?)
    }
}
