//! ferry's fuzz harness: a seeded mutation loop over DICOM files, on
//! stable Rust, with crash and allocation detection in-process.
//!
//! Why not cargo-fuzz: it needs nightly and a sanitizer runtime, and the
//! failures issue 7 is about are not only memory errors but panics, stack
//! overflows and files that make a parser allocate gigabytes; those show
//! up just as well in a fast, deterministic mutation loop over good seed
//! files, aimed at element headers. So:
//!
//! - [`mutate`] makes input number *i* of a run from `(--seed, i)` alone:
//!   any input can be made again;
//! - [`exec`] runs each input on a worker thread with a known stack,
//!   `catch_unwind`, a deadline, and the counting allocator of [`alloc`]
//!   (a per-input budget, 512 MiB by default, never exceeded);
//! - the `fuzz` binary (`src/main.rs`) loops, records findings under
//!   `<out>/findings/`, and supervises itself so an abort (stack overflow)
//!   is recorded and the run goes on;
//! - `tests/regressions.rs` replays `regressions/` (every input that ever
//!   caused a finding, plus the hostile shapes of issue 7) and `seeds/`
//!   through every target in `cargo test`.
pub mod alloc;
pub mod exec;
pub mod mutate;
pub mod rng;
pub mod scan;
pub mod target;

use std::path::Path;

pub use exec::{Executor, Limits, Outcome, Run};
pub use mutate::{generate, Input, Seed};
pub use target::Target;

/// Where the seed files are.
pub fn seeds_dir() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/seeds"))
}

/// Where the regression corpus is.
pub fn regressions_dir() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/regressions"))
}

/// Every `.dcm` file in `dir` (sorted by name, so runs are reproducible).
pub fn load_dir(dir: &Path) -> std::io::Result<Vec<Seed>> {
    let mut paths: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| std::io::Error::new(e.kind(), format!("reading {}: {e}", dir.display())))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x.eq_ignore_ascii_case("dcm")))
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|p| {
            let bytes = std::fs::read(&p)
                .map_err(|e| std::io::Error::new(e.kind(), format!("reading {}: {e}", p.display())))?;
            Ok(Seed::new(p.file_name().unwrap().to_string_lossy(), bytes))
        })
        .collect()
}

/// Lowercase hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// A one-line description of a finding, the same for every input that
/// fails the same way (findings are grouped by it).
pub fn signature(target: Target, outcome: &Outcome) -> Option<String> {
    let t = target.name();
    Some(match outcome {
        Outcome::Panic { location, .. } => format!("{t}: panic at {location}"),
        Outcome::OverBudget(o) => match culprit_frame(&o.backtrace) {
            Some(f) => format!("{t}: allocates over budget in {f}"),
            None => format!("{t}: allocates over budget"),
        },
        Outcome::Hang => format!("{t}: hangs"),
        Outcome::Accepted | Outcome::Rejected(_) => return None,
    })
}

/// Frames of a backtrace as `(function, source location)`.
fn frames(backtrace: &str) -> Vec<(String, Option<String>)> {
    let lines: Vec<&str> = backtrace.lines().map(str::trim).collect();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let Some((n, f)) = line.split_once(": ") else {
            continue;
        };
        if n.is_empty() || !n.chars().all(|c| c.is_ascii_digit()) {
            continue;
        }
        // `read_value_ob<Box<dyn …>>` / `dicom_parser::x::h0123…`: the name only.
        let f = f.rsplit_once("::h").filter(|(_, h)| h.len() == 16).map_or(f, |(a, _)| a);
        let f = strip_generics(f);
        let at = lines.get(i + 1).and_then(|l| l.strip_prefix("at ")).map(String::from);
        out.push((f.to_string(), at));
    }
    out
}

/// `a::B<T>::c<U>` → `a::B::c`; `<a::B<T> as c::D>::e` → `<a::B as c::D>::e`.
fn strip_generics(name: &str) -> String {
    let qualified = name.starts_with('<');
    let mut out = String::with_capacity(name.len());
    let mut depth = 0usize;
    for c in name.chars() {
        match c {
            '<' => {
                depth += 1;
                if qualified && depth == 1 {
                    out.push(c);
                }
            }
            '>' => {
                if qualified && depth == 1 {
                    out.push(c);
                }
                depth = depth.saturating_sub(1);
            }
            c if depth == 0 || (qualified && depth == 1) => out.push(c),
            _ => {}
        }
    }
    out
}

/// Frames that are not the code under test: the harness, std, and the
/// containers that do the allocating for someone else.
fn harness_frame(name: &str, at: Option<&str>) -> bool {
    let Some(at) = at else { return true };
    // Debug builds name frames with their paths, release ones often not;
    // source paths are shown relative to the working directory, which is
    // this crate's own folder under `cargo test`.
    let by_name = [
        "ferry_fuzz::",
        "<ferry_fuzz::",
        "std::",
        "<std::",
        "core::",
        "<core::",
        "alloc::",
        "<alloc::",
        "smallvec::",
        "<smallvec::",
        "hashbrown::",
        "<hashbrown::",
        "__rust",
    ]
    .iter()
    .any(|p| name.starts_with(p));
    let by_path =
        ["/fuzz/src/", "/rustc/", "/smallvec-", "/hashbrown-", "/library/std/", "/library/alloc/", "/library/core/"]
            .iter()
            .any(|p| at.contains(p))
            || at.starts_with("src/")
            || at.starts_with("./src/");
    by_name || by_path
}

/// Where a backtrace says the code under test was: the innermost frame
/// that is not the harness or std, and, if that is a dependency, the
/// innermost frame of ferry's own code that called it
/// (`read_value_ob (dicom-parser-0.10.1/src/stateful/decode.rs:467:13), called from open_header (dicom-preview/src/lib.rs:256:10)`).
pub fn culprit_frame(backtrace: &str) -> Option<String> {
    let frames = frames(backtrace);
    let mut under_test = frames.iter().filter(|(f, at)| !harness_frame(f, at.as_deref()));
    let (f, at) = under_test.next()?;
    let at = at.as_deref().unwrap_or("?");
    let mut s = format!("{f} ({})", short_path(at));
    let ours = |at: &str| !at.contains("/registry/src/") && !at.contains("/git/checkouts/");
    if !ours(at) {
        if let Some((f2, Some(at2))) = under_test.find(|(_, at)| at.as_deref().is_some_and(ours)) {
            s += &format!(", called from {f2} ({})", short_path(at2));
        }
    }
    Some(s)
}

/// `dicom-parser-0.10.1/src/x.rs:10:5` for a path deep in the registry.
fn short_path(at: &str) -> &str {
    for marker in ["/registry/src/", "/plugins/"] {
        if let Some(i) = at.find(marker) {
            let rest = &at[i + marker.len()..];
            // Skip the registry's `index.crates.io-xxxx/` folder.
            return if marker == "/registry/src/" { rest.split_once('/').map_or(rest, |(_, r)| r) } else { rest };
        }
    }
    at.strip_prefix("./").unwrap_or(at)
}

#[cfg(test)]
mod tests {
    #[test]
    fn culprit_of_a_release_backtrace() {
        let bt = "   0: grow
             at ./fuzz/src/alloc.rs:61:21
   3: alloc
             at /rustc/5980/library/alloc/src/alloc.rs:95:9
   4: try_grow<[u8; 2]>
             at /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/smallvec-1.16.6/src/lib.rs:1350:46
   6: read_value_ob<alloc::boxed::Box<dyn X>>
             at /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/dicom-parser-0.10.1/src/stateful/decode.rs:467:13
  13: from_reader<D>
             at /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/dicom-object-0.10.1/src/file.rs:205:9
  14: open_header<std::io::cursor::Cursor<&[u8]>>
             at ./dicom-preview/src/lib.rs:256:10
  17: run
             at ./fuzz/src/target.rs:37:17";
        assert_eq!(
            super::culprit_frame(bt).unwrap(),
            "read_value_ob (dicom-parser-0.10.1/src/stateful/decode.rs:467:13), called from open_header (dicom-preview/src/lib.rs:256:10)"
        );
        let debug = "   0: ferry_fuzz::alloc::grow
             at src/alloc.rs:61:21
   3: <ferry_fuzz::alloc::Counting as core::alloc::global::GlobalAlloc>::alloc
             at src/alloc.rs:74:9
   6: dicom_parser::stateful::decode::StatefulDecoder<D,S,BD,TC>::read_value_ob
             at /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/dicom-parser-0.10.1/src/stateful/decode.rs:467:13
   8: <dicom_parser::dataset::read::DataSetReader<S> as core::iter::traits::iterator::Iterator>::next
             at /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/dicom-parser-0.10.1/src/dataset/read.rs:552:44
   9: dicom_meta::extract_from
             at ./dicom-meta/src/lib.rs:69:10";
        assert_eq!(
            super::culprit_frame(debug).unwrap(),
            "dicom_parser::stateful::decode::StatefulDecoder::read_value_ob (dicom-parser-0.10.1/src/stateful/decode.rs:467:13), \
             called from dicom_meta::extract_from (dicom-meta/src/lib.rs:69:10)"
        );
        assert_eq!(
            super::strip_generics("<dicom_parser::dataset::read::DataSetReader<S> as core::iter::Iterator>::next"),
            "<dicom_parser::dataset::read::DataSetReader as core::iter::Iterator>::next"
        );
    }
}
