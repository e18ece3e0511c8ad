//! Test-only helpers for the guest crates' native tests (`dicom-guard`,
//! `dicom-preview`, …): the things a test needs to *prove* a bound rather
//! than hope for it.
//!
//! - [`Tracking`] / [`peak_allocation`]: how much one thread allocated
//!   during a closure, so a test can assert that parsing a file did not
//!   allocate what the file declares (tests run in parallel, so the count
//!   is per thread). A test binary installs it once:
//!   `#[global_allocator] static A: ferry_testkit::Tracking = ferry_testkit::Tracking;`
//! - [`Counting`]: a reader that counts the bytes read through it, to
//!   prove that a parser skipped (sought past) what it did not need;
//! - [`deflate_bomb`]: a raw deflate stream that inflates a thousandfold,
//!   written bit by bit (an encoder would need the whole output first).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

/// Counts the bytes read through it (seeks are free).
pub struct Counting<R> {
    pub inner: R,
    pub read: u64,
}

impl<R> Counting<R> {
    pub fn new(inner: R) -> Self {
        Counting { inner, read: 0 }
    }
}

impl<R: std::io::Read> std::io::Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        Ok(n)
    }
}

impl<R: std::io::Seek> std::io::Seek for Counting<R> {
    fn seek(&mut self, to: std::io::SeekFrom) -> std::io::Result<u64> {
        self.inner.seek(to)
    }
}

/// The system allocator, counting each thread's live bytes and peak.
pub struct Tracking;

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn note(delta: isize) {
    let _ = LIVE.try_with(|live| {
        let now = live.get() + delta;
        live.set(now);
        let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
    });
}

unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            note(layout.size() as isize);
        }
        p
    }

    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        unsafe { System.dealloc(p, layout) };
        note(-(layout.size() as isize));
    }

    unsafe fn realloc(&self, p: *mut u8, layout: Layout, new: usize) -> *mut u8 {
        let q = unsafe { System.realloc(p, layout, new) };
        if !q.is_null() {
            note(new as isize - layout.size() as isize);
        }
        q
    }
}

/// The most this thread had allocated during `f`, above what it had
/// before (0 unless [`Tracking`] is the global allocator).
pub fn peak_allocation<T>(f: impl FnOnce() -> T) -> (usize, T) {
    let before = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(before));
    let out = f();
    (PEAK.with(Cell::get).saturating_sub(before) as usize, out)
}

/// LSB-first bit writer for hand-made deflate streams.
#[derive(Default)]
struct Bits {
    out: Vec<u8>,
    acc: u64,
    n: u32,
}

impl Bits {
    fn put(&mut self, value: u64, bits: u32) {
        self.acc |= value << self.n;
        self.n += bits;
        while self.n >= 8 {
            self.out.push(self.acc as u8);
            self.acc >>= 8;
            self.n -= 8;
        }
    }

    /// A Huffman code, most significant bit first.
    fn code(&mut self, code: u64, bits: u32) {
        for i in (0..bits).rev() {
            self.put((code >> i) & 1, 1);
        }
    }

    fn align(&mut self) {
        if self.n > 0 {
            self.put(0, 8 - self.n);
        }
    }

    fn finish(mut self) -> Vec<u8> {
        self.align();
        self.out
    }
}

/// A raw deflate stream of `prefix` (a stored block) followed by
/// `1 + 258 * matches` zero bytes in one dynamic-Huffman block whose
/// 258-byte match costs 2 bits: about 1 MiB of stream per GiB.
pub fn deflate_bomb(prefix: &[u8], matches: u64) -> Vec<u8> {
    let mut b = Bits::default();
    // Stored block, not final.
    b.put(0, 1);
    b.put(0, 2);
    b.align();
    let len = prefix.len() as u64;
    assert!(len <= 0xFFFF);
    b.put(len, 16);
    b.put(!len & 0xFFFF, 16);
    for &byte in prefix {
        b.put(u64::from(byte), 8);
    }
    // Dynamic block, final. Literal/length code: 285 (length 258) 1 bit,
    // literal 0 and end-of-block 2 bits; one distance code (distance 1).
    b.put(1, 1);
    b.put(2, 2);
    b.put(286 - 257, 5); // HLIT
    b.put(0, 5); // HDIST: 1 code
    b.put(18 - 4, 4); // HCLEN: 18 code length code lengths
                      // Code length codes in the RFC 1951 order; used: 18 (1 bit), 1 and 2 (2 bits).
    let order = [16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1];
    for sym in order {
        let len = match sym {
            18 => 1,
            1 | 2 => 2,
            _ => 0,
        };
        b.put(len, 3);
    }
    // Canonical codes: 18 → 0, 1 → 10, 2 → 11.
    let cl = |b: &mut Bits, sym: u32| match sym {
        18 => b.code(0, 1),
        1 => b.code(0b10, 2),
        2 => b.code(0b11, 2),
        _ => unreachable!(),
    };
    let zeros = |b: &mut Bits, mut n: u64| {
        while n > 0 {
            let run = n.min(138);
            assert!(run >= 11);
            cl(b, 18);
            b.put(run - 11, 7);
            n -= run;
        }
    };
    // Literal/length lengths: 0 → 2, 1..=255 → 0, 256 → 2, 257..=284 → 0, 285 → 1.
    cl(&mut b, 2);
    zeros(&mut b, 138);
    zeros(&mut b, 117);
    cl(&mut b, 2);
    zeros(&mut b, 28);
    cl(&mut b, 1);
    // Distance lengths: code 0 → 1.
    cl(&mut b, 1);
    // Canonical: 285 → 0, literal 0 → 10, 256 → 11; distance 0 → 0.
    b.code(0b10, 2);
    for _ in 0..matches {
        b.code(0, 1);
        b.code(0, 1);
    }
    b.code(0b11, 2);
    b.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[global_allocator]
    static TRACKING: Tracking = Tracking;

    #[test]
    fn the_allocation_tracker_sees_allocations() {
        let (peak, v) = peak_allocation(|| vec![0u8; 1 << 20]);
        assert!(peak >= 1 << 20 && v.len() == 1 << 20);
    }

    #[test]
    fn the_bomb_is_small_and_its_prefix_comes_first() {
        let bomb = deflate_bomb(b"prefix", 4096);
        assert!(bomb.len() < 2048, "{}", bomb.len());
        assert_eq!(&bomb[5..11], b"prefix");
    }
}
