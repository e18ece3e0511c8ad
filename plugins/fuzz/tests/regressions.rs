//! Every input that ever caused a finding (`regressions/`), the hostile
//! shapes of issue 7, and the seeds, through every target: no panic, no
//! allocation over the budget, no hang. Run by `cargo test --workspace`
//! in `plugins/` (and so by `cargo xtask test`).
//!
//! A stack overflow cannot be caught: it aborts this test binary, which
//! fails the run just as loudly (the file is named on stderr first).
use std::sync::Arc;

use ferry_fuzz::{load_dir, regressions_dir, seeds_dir, signature, Executor, Limits, Outcome, Target};

fn replay(dir: &std::path::Path, want_accepted: bool) {
    let files = load_dir(dir).unwrap();
    assert!(!files.is_empty(), "no files in {}", dir.display());
    let mut exec = Executor::new(Limits::default());
    let mut failures = Vec::new();
    for f in &files {
        let bytes = Arc::new(f.bytes.clone());
        for &target in Target::ALL {
            eprintln!("{} {} ({} bytes)", target.name(), f.name, bytes.len());
            let run = exec.run(target, bytes.clone());
            match &run.outcome {
                o if o.is_finding() => failures.push(format!("{}: {}", f.name, signature(target, o).unwrap())),
                Outcome::Rejected(e) if want_accepted => {
                    failures.push(format!("{}: {} refused a seed: {e}", f.name, target.name()))
                }
                _ => {}
            }
        }
    }
    assert!(failures.is_empty(), "{} failure(s):\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn regressions_are_handled() {
    replay(regressions_dir(), false);
}

#[test]
fn seeds_are_accepted() {
    replay(seeds_dir(), true);
}

/// The harness itself: a panic, an allocation over budget and a hang are
/// each caught, and the worker goes on with the next input.
#[test]
fn harness_catches_what_it_claims() {
    use ferry_fuzz::exec::Outcome as O;
    let mut exec =
        Executor::new(Limits { budget: 64 << 20, timeout: std::time::Duration::from_secs(2), ..Limits::default() });
    let probe = |exec: &mut Executor, what: &'static str| exec.run_fn(Box::new(move || ferry_fuzz::exec::probe(what)));
    let r = probe(&mut exec, "panic");
    assert!(matches!(&r.outcome, O::Panic { message, .. } if message.contains("probe")), "{:?}", r.outcome);
    let r = probe(&mut exec, "alloc");
    match &r.outcome {
        O::OverBudget(o) => {
            assert!(o.request >= 64 << 20, "{o:?}");
            assert!(o.backtrace.contains("probe"), "{}", o.backtrace);
        }
        other => panic!("{other:?}"),
    }
    let r = probe(&mut exec, "ok");
    assert!(matches!(r.outcome, O::Accepted), "{:?}", r.outcome);
    assert!(r.peak >= 1 << 20 && r.peak < 4 << 20, "peak {}", r.peak);
    let r = probe(&mut exec, "hang");
    assert!(matches!(r.outcome, O::Hang), "{:?}", r.outcome);
    let r = probe(&mut exec, "ok");
    assert!(matches!(r.outcome, O::Accepted), "{:?}", r.outcome);
    assert_eq!(exec.abandoned, 2);
}

/// The real binary: a stack overflow in the middle of a replay aborts the
/// child process; the supervisor records the input that was running and
/// goes on with the next file.
#[test]
fn an_abort_is_recorded_and_the_run_goes_on() {
    let dir = std::env::temp_dir().join(format!("ferry-fuzz-selftest-{}", std::process::id()));
    let (inputs, out) = (dir.join("in"), dir.join("out"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&inputs).unwrap();
    let seed = std::fs::read(seeds_dir().join("implicit_le_8bit.dcm")).unwrap();
    std::fs::write(inputs.join("a.dcm"), &seed).unwrap();
    std::fs::write(inputs.join("b.dcm"), b"FERRY-FUZZ-SELFTEST-OVERFLOW").unwrap();
    std::fs::write(inputs.join("c.dcm"), &seed).unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_fuzz"))
        .args(["--target", "extract", "--replay"])
        .arg(&inputs)
        .arg("--out")
        .arg(&out)
        .env("FERRY_FUZZ_SELFTEST", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "findings exit 1\n{stdout}\n{stderr}");
    assert!(stdout.contains("c.dcm\n  extract: ok"), "went on after the abort:\n{stdout}");
    assert!(
        stdout.contains("replayed 3 file(s): 1 finding(s)") && stdout.contains("extract: stack overflow"),
        "{stdout}"
    );
    let sha = ferry_fuzz::sha256_hex(b"FERRY-FUZZ-SELFTEST-OVERFLOW");
    let txt = std::fs::read_to_string(out.join("findings").join(format!("extract-{}.txt", &sha[..16]))).unwrap();
    assert!(txt.starts_with("signature: extract: stack overflow") && txt.contains("has overflowed its stack"), "{txt}");
    assert_eq!(
        std::fs::read(out.join("findings").join(format!("extract-{}.dcm", &sha[..16]))).unwrap(),
        b"FERRY-FUZZ-SELFTEST-OVERFLOW"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
