//! `fuzz`: the command line of ferry's fuzz harness (see the library docs).
//!
//! ```text
//! fuzz --target extract|render|all --seconds N [--inputs N] [--seed S]
//!      [--corpus DIR]... [--out DIR] [--replay DIR]
//! ```
//!
//! The process the user starts is a supervisor: it runs the loop in a
//! child process and, when the child aborts (a stack overflow cannot be
//! caught in-process), records `<out>/current.dcm` (the input that was
//! running) as a finding and starts a new child after that input. So one
//! command always ends with the figures of the whole run.
use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{BufRead, BufReader};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ferry_fuzz::{generate, load_dir, sha256_hex, signature, Executor, Input, Limits, Outcome, Seed, Target};

const USAGE: &str = "\
usage: fuzz --target extract|render|all (--seconds N | --inputs N) [options]
       fuzz --replay DIR [--target T]

Runs ferry's DICOM parsers on mutated seed files and reports panics,
allocations over budget, hangs and aborts (stack overflows).

  --target T        extract, render or all (default all)
  --seconds N       stop after N seconds
  --inputs N        stop after N inputs (each goes through every target)
  --seed S          the run's seed (default: from the clock; printed)
  --corpus DIR      seed files (*.dcm); repeatable (default plugins/fuzz/seeds)
  --out DIR         findings, slowest inputs, current.dcm (default target/fuzz-out)
  --replay DIR      run every file in DIR once, unmutated, and report each
  --budget-mib N    allocation budget per input (default 512)
  --stack-mib N     stack of the thread running a target (default 8)
  --timeout-secs N  an input running longer is a hang (default 10)
";

/// Child exit code: \"start me again from the index in the stats file\".
const EXIT_RESTART: u8 = 75;
/// Files kept per finding signature in one run.
const KEEP_PER_SIGNATURE: usize = 5;
/// Slowest inputs kept per target.
const KEEP_SLOW: usize = 5;

#[derive(Debug, Clone)]
struct Args {
    targets: Vec<Target>,
    seconds: Option<f64>,
    inputs: Option<u64>,
    seed: u64,
    seed_given: bool,
    corpus: Vec<PathBuf>,
    out: PathBuf,
    replay: Option<PathBuf>,
    limits: Limits,
    // Internal: this process is the child, starting at input `start`.
    child: bool,
    start: u64,
    /// Unix time (ms) the whole run must end by.
    deadline_ms: Option<u64>,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

fn parse_args(raw: &[String]) -> Result<Args, String> {
    // Next to the build: `<target dir>/fuzz/fuzz` writes to `<target dir>/fuzz-out`.
    let default_out = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.join("fuzz-out")))
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("target").join("fuzz-out"));
    let mut a = Args {
        targets: Target::ALL.to_vec(),
        seconds: None,
        inputs: None,
        seed: now_ms() ^ u64::from(std::process::id()) << 32,
        seed_given: false,
        corpus: Vec::new(),
        out: default_out,
        replay: None,
        limits: Limits::default(),
        child: false,
        start: 0,
        deadline_ms: None,
    };
    let mut it = raw.iter();
    while let Some(flag) = it.next() {
        let mut value =
            |what: &str| -> Result<String, String> { it.next().cloned().ok_or_else(|| format!("{flag} needs {what}")) };
        fn number<T: std::str::FromStr>(flag: &str, v: &str) -> Result<T, String> {
            v.parse().map_err(|_| format!("{flag}: {v:?} is not a number"))
        }
        match flag.as_str() {
            "--target" => {
                let v = value("extract, render or all")?;
                a.targets = if v == "all" {
                    Target::ALL.to_vec()
                } else {
                    let names: Vec<&str> = Target::ALL.iter().map(|t| t.name()).collect();
                    vec![Target::parse(&v)
                        .ok_or_else(|| format!("--target: unknown target {v:?} (known: {}, all)", names.join(", ")))?]
                };
            }
            "--seconds" => {
                let s: f64 = number(flag, &value("a number of seconds")?)?;
                if !(s > 0.0 && s.is_finite()) {
                    return Err("--seconds must be more than 0".into());
                }
                a.seconds = Some(s);
            }
            "--inputs" => a.inputs = Some(number(flag, &value("a number of inputs")?)?),
            "--seed" => {
                a.seed = number(flag, &value("a number")?)?;
                a.seed_given = true;
            }
            "--corpus" => a.corpus.push(value("a folder")?.into()),
            "--out" => a.out = value("a folder")?.into(),
            "--replay" => a.replay = Some(value("a folder")?.into()),
            "--budget-mib" => a.limits.budget = number::<usize>(flag, &value("MiB")?)? << 20,
            "--stack-mib" => a.limits.stack = number::<usize>(flag, &value("MiB")?)? << 20,
            "--timeout-secs" => a.limits.timeout = Duration::from_secs(number(flag, &value("seconds")?)?),
            "--child" => a.child = true,
            "--start" => a.start = number(flag, &value("an index")?)?,
            "--deadline-ms" => a.deadline_ms = Some(number(flag, &value("a time")?)?),
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if a.replay.is_none() && a.seconds.is_none() && a.inputs.is_none() && a.deadline_ms.is_none() {
        return Err("say how long to run: --seconds N or --inputs N (or --replay DIR)".into());
    }
    if a.limits.stack < 64 << 10 {
        return Err("--stack-mib must be at least 1".into());
    }
    if a.corpus.is_empty() {
        a.corpus.push(ferry_fuzz::seeds_dir().to_path_buf());
    }
    Ok(a)
}

fn main() -> ExitCode {
    let raw: Vec<String> = std::env::args().skip(1).collect();
    let args = match parse_args(&raw) {
        Ok(a) => a,
        Err(e) if e.is_empty() => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("fuzz: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let result = if args.child { child(&args) } else { supervise(&args, &raw) };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("fuzz: {e}");
            ExitCode::from(2)
        }
    }
}

// ---------------------------------------------------------------- figures

/// What one target did, in one child or the whole run.
#[derive(Debug, Clone, Default)]
struct TargetStats {
    runs: u64,
    accepted: u64,
    /// Wall time spent running this target's inputs.
    busy_ns: u128,
    /// `(ns, sha256, size, path)`, slowest first.
    slow: Vec<(u128, String, usize, String)>,
    /// `(bytes, sha256)` of the input that allocated most.
    peak: (usize, String),
}

#[derive(Debug, Clone, Default)]
struct Stats {
    /// The next input index to run.
    next: u64,
    targets: BTreeMap<String, TargetStats>,
    /// signature -> (inputs, example file)
    findings: BTreeMap<String, (u64, String)>,
}

impl Stats {
    fn merge(&mut self, other: &Stats) {
        self.next = self.next.max(other.next);
        for (name, o) in &other.targets {
            let t = self.targets.entry(name.clone()).or_default();
            t.runs += o.runs;
            t.accepted += o.accepted;
            t.busy_ns += o.busy_ns;
            t.slow.extend(o.slow.iter().cloned());
            t.slow.sort_by_key(|s| std::cmp::Reverse(s.0));
            t.slow.truncate(KEEP_SLOW);
            if o.peak.0 > t.peak.0 {
                t.peak = o.peak.clone();
            }
        }
        for (sig, (n, file)) in &other.findings {
            let f = self.findings.entry(sig.clone()).or_insert((0, file.clone()));
            f.0 += n;
        }
    }

    fn to_text(&self) -> String {
        let mut s = format!("next\t{}\n", self.next);
        for (name, t) in &self.targets {
            s += &format!("target\t{name}\t{}\t{}\t{}\t{}\t{}\n", t.runs, t.accepted, t.busy_ns, t.peak.0, t.peak.1);
            for (ns, sha, size, path) in &t.slow {
                s += &format!("slow\t{name}\t{ns}\t{sha}\t{size}\t{path}\n");
            }
        }
        for (sig, (n, file)) in &self.findings {
            s += &format!("finding\t{n}\t{file}\t{sig}\n");
        }
        s
    }

    fn from_text(text: &str) -> Stats {
        let mut s = Stats::default();
        for line in text.lines() {
            let f: Vec<&str> = line.split('\t').collect();
            match f.as_slice() {
                ["next", n] => s.next = n.parse().unwrap_or(0),
                ["target", name, runs, acc, busy, peak, peak_sha] => {
                    let t = s.targets.entry(name.to_string()).or_default();
                    t.runs = runs.parse().unwrap_or(0);
                    t.accepted = acc.parse().unwrap_or(0);
                    t.busy_ns = busy.parse().unwrap_or(0);
                    t.peak = (peak.parse().unwrap_or(0), peak_sha.to_string());
                }
                ["slow", name, ns, sha, size, path] => s.targets.entry(name.to_string()).or_default().slow.push((
                    ns.parse().unwrap_or(0),
                    sha.to_string(),
                    size.parse().unwrap_or(0),
                    path.to_string(),
                )),
                ["finding", n, file, sig] => {
                    s.findings.insert(sig.to_string(), (n.parse().unwrap_or(0), file.to_string()));
                }
                _ => {}
            }
        }
        s
    }
}

fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, text)?;
    fs::rename(tmp, path)
}

// ---------------------------------------------------------------- the child

/// What a finding's files say about how the input was made.
fn provenance(args: &Args, index: u64, input: &Input) -> String {
    if args.replay.is_some() {
        return format!("replayed file {}\n", input.seed);
    }
    let mut s = format!("input #{index} of --seed {}, from seed file {}\n", args.seed, input.seed);
    if input.mutations.is_empty() {
        s += "mutations: none (the seed as it is)\n";
    } else {
        s += "mutations:\n";
        for m in &input.mutations {
            s += &format!("  - {m}\n");
        }
    }
    s
}

fn describe(outcome: &Outcome, budget: usize) -> String {
    match outcome {
        Outcome::Panic { message, location, backtrace } => {
            let mut s = format!("panicked at {location}: {message}\n");
            if let Some(bt) = backtrace {
                s += &format!("\nbacktrace:\n{bt}\n");
            }
            s
        }
        Outcome::OverBudget(o) => format!(
            "allocates more than {} MiB: asked for {} bytes with {} bytes live (the allocation was refused and the \
             thread stopped)\n\nbacktrace of the refused allocation:\n{}\n",
            budget >> 20,
            o.request,
            o.live,
            o.backtrace
        ),
        Outcome::Hang => "still running at the deadline (--timeout-secs)\n".into(),
        Outcome::Accepted | Outcome::Rejected(_) => String::new(),
    }
}

/// One input that caused a finding, and how.
struct Finding<'a> {
    target: Target,
    signature: &'a str,
    /// What happened (panic message, refused allocation, abort).
    what: &'a str,
    bytes: &'a [u8],
    /// How the input was made.
    how: &'a str,
}

/// Saves an input that caused a finding (at most a few per signature).
fn record_finding(out: &Path, f: &Finding, stats: &mut Stats, seen: &mut BTreeMap<String, usize>) {
    let Finding { target, signature: sig, what, bytes, how } = *f;
    let kept = seen.entry(sig.to_string()).or_insert(0);
    let sha = sha256_hex(bytes);
    let name = format!("{}-{}", target.name(), &sha[..16]);
    let dcm = out.join("findings").join(format!("{name}.dcm"));
    let entry = stats.findings.entry(sig.to_string()).or_insert((0, dcm.display().to_string()));
    entry.0 += 1;
    if *kept >= KEEP_PER_SIGNATURE || dcm.exists() {
        return;
    }
    *kept += 1;
    let txt = format!(
        "signature: {sig}\ntarget: {}\ninput: {} bytes, sha256 {sha}\n{how}\nreplay: cargo xtask fuzz --replay <folder with this file> --target {}\n\nwhat happened: {what}",
        target.name(),
        bytes.len(),
        target.name()
    );
    let _ = fs::write(&dcm, bytes);
    let _ = fs::write(dcm.with_extension("txt"), txt);
}

/// Signatures of findings already on disk, so a restarted child (or a new
/// run) does not save the same finding again and again.
fn known_signatures(findings: &Path) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    for e in fs::read_dir(findings).into_iter().flatten().flatten() {
        if e.path().extension().is_some_and(|x| x == "txt") {
            if let Ok(t) = fs::read_to_string(e.path()) {
                if let Some(sig) = t.lines().next().and_then(|l| l.strip_prefix("signature: ")) {
                    *seen.entry(sig.to_string()).or_insert(0) += 1;
                }
            }
        }
    }
    seen
}

/// The files of a replay folder: everything but notes.
fn replay_files(dir: &Path) -> Result<Vec<Seed>, String> {
    let mut paths: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(|e| format!("--replay {}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && !p.extension().is_some_and(|x| ["txt", "md", "py", "tsv"].iter().any(|n| x == *n)))
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|p| {
            fs::read(&p)
                .map(|b| Seed::new(p.display().to_string(), b))
                .map_err(|e| format!("reading {}: {e}", p.display()))
        })
        .collect()
}

fn child(args: &Args) -> Result<ExitCode, String> {
    let replay = match &args.replay {
        Some(dir) => Some(replay_files(dir)?),
        None => None,
    };
    let corpus: Vec<Seed> = if replay.is_some() {
        Vec::new()
    } else {
        let c = load_corpus(args)?;
        if c.is_empty() {
            return Err(format!("no *.dcm seed files in {}", corpus_names(args)));
        }
        c
    };
    let findings = args.out.join("findings");
    let slow_dir = args.out.join("slow");
    for d in [&findings, &slow_dir] {
        fs::create_dir_all(d).map_err(|e| format!("creating {}: {e}", d.display()))?;
    }
    let current = File::create(args.out.join("current.dcm")).map_err(|e| format!("creating current.dcm: {e}"))?;
    let current_txt = File::create(args.out.join("current.txt")).map_err(|e| format!("creating current.txt: {e}"))?;
    let stats_path = args.out.join("child-stats.tsv");
    let mut seen = known_signatures(&findings);
    let mut exec = Executor::new(args.limits);
    let mut stats = Stats { next: args.start, ..Stats::default() };
    // Slowest inputs' bytes, written when the child ends.
    let mut slow_bytes: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let end = match &replay {
        Some(files) => files.len() as u64,
        None => args.inputs.unwrap_or(u64::MAX),
    };
    let deadline = args.deadline_ms.unwrap_or(u64::MAX);
    let mut last_flush = Instant::now();
    let mut restart = false;
    let mut index = args.start;
    let selftest = std::env::var_os("FERRY_FUZZ_SELFTEST").is_some();
    while index < end && now_ms() < deadline {
        let input = match &replay {
            Some(files) => Input {
                bytes: files[index as usize].bytes.clone(),
                seed: files[index as usize].name.clone(),
                mutations: vec![],
            },
            None => generate(&corpus, args.seed, index),
        };
        let bytes = Arc::new(input.bytes.clone());
        let mut sha: Option<String> = None;
        let mut replay_line = String::new();
        for &target in &args.targets {
            // Leave the culprit behind if what follows kills the process.
            let _ = current.write_all_at(&bytes, 0).and_then(|_| current.set_len(bytes.len() as u64));
            let note = format!("{}\t{index}\t{}\t{}\n", target.name(), args.seed, input.seed);
            let _ = current_txt.write_all_at(note.as_bytes(), 0).and_then(|_| current_txt.set_len(note.len() as u64));

            let started = Instant::now();
            let run = if selftest && bytes.starts_with(SELFTEST_OVERFLOW) {
                exec.run_fn(Box::new(|| Err(format!("unreachable: {}", overflow(0)))))
            } else {
                exec.run(target, bytes.clone())
            };
            let wall = started.elapsed();
            let t = stats.targets.entry(target.name().to_string()).or_default();
            t.runs += 1;
            t.busy_ns += wall.as_nanos();
            if matches!(run.outcome, Outcome::Accepted) {
                t.accepted += 1;
            }
            let ns = run.elapsed.as_nanos();
            if t.slow.len() < KEEP_SLOW || ns > t.slow.last().map_or(0, |s| s.0) {
                let sha = sha.get_or_insert_with(|| sha256_hex(&bytes)).clone();
                if !t.slow.iter().any(|s| s.1 == sha) {
                    let path = slow_dir.join(format!("{}-{}.dcm", target.name(), &sha[..16]));
                    t.slow.push((ns, sha.clone(), bytes.len(), path.display().to_string()));
                    t.slow.sort_by_key(|s| std::cmp::Reverse(s.0));
                    t.slow.truncate(KEEP_SLOW);
                    slow_bytes.insert(sha, input.bytes.clone());
                }
            }
            if run.peak > t.peak.0 {
                t.peak = (run.peak, sha.get_or_insert_with(|| sha256_hex(&bytes)).clone());
            }
            if replay.is_some() {
                let verdict = match &run.outcome {
                    Outcome::Accepted => "ok".to_string(),
                    Outcome::Rejected(e) => {
                        format!("refused ({})", e.chars().take(100).collect::<String>())
                    }
                    o => signature(target, o)
                        .map_or_else(String::new, |s| s.split_once(": ").map_or(s.clone(), |(_, r)| r.to_string())),
                };
                replay_line +=
                    &format!("  {}: {verdict} [{:.1?}, peak {} KiB]\n", target.name(), run.elapsed, run.peak >> 10);
            }
            if let Some(sig) = signature(target, &run.outcome) {
                let what = describe(&run.outcome, args.limits.budget);
                let how = provenance(args, index, &input);
                let finding = Finding { target, signature: &sig, what: &what, bytes: &bytes, how: &how };
                record_finding(&args.out, &finding, &mut stats, &mut seen);
                if matches!(run.outcome, Outcome::Hang) {
                    restart = true;
                }
            }
        }
        if replay.is_some() {
            print!("{}\n{replay_line}", input.seed);
        }
        index += 1;
        stats.next = index;
        if restart || exec.abandoned > 32 || exec.abandoned_bytes > 2 << 30 {
            restart = true;
            break;
        }
        if last_flush.elapsed() > Duration::from_millis(500) {
            let _ = write_atomically(&stats_path, &stats.to_text());
            last_flush = Instant::now();
        }
    }
    // Keep only the slowest inputs' files that are still in the top list.
    for t in stats.targets.values() {
        for (_, sha, _, path) in &t.slow {
            if let Some(b) = slow_bytes.get(sha) {
                let _ = fs::write(path, b);
            }
        }
    }
    write_atomically(&stats_path, &stats.to_text()).map_err(|e| format!("writing {}: {e}", stats_path.display()))?;
    Ok(if restart { ExitCode::from(EXIT_RESTART) } else { ExitCode::SUCCESS })
}

/// With `FERRY_FUZZ_SELFTEST` set, an input starting with this overflows
/// the worker's stack instead of running a target: how the tests prove
/// that an abort is recorded and the run goes on.
const SELFTEST_OVERFLOW: &[u8] = b"FERRY-FUZZ-SELFTEST-OVERFLOW";

#[inline(never)]
fn overflow(depth: u64) -> u64 {
    let pad = std::hint::black_box([depth; 64]);
    if depth == u64::MAX {
        return pad[0];
    }
    overflow(depth + 1) + std::hint::black_box(pad[1])
}

// ----------------------------------------------------------- the supervisor

/// Why a child died, from its exit status and the end of its stderr.
fn abort_signature(status: &std::process::ExitStatus, stderr: &str) -> (String, String) {
    use std::os::unix::process::ExitStatusExt;
    let how = match (status.code(), status.signal()) {
        (_, Some(sig)) => format!("killed by signal {sig}"),
        (Some(code), None) => format!("exited with {code}"),
        _ => "ended".to_string(),
    };
    let kind = if stderr.contains("has overflowed its stack") {
        "stack overflow".to_string()
    } else if let Some(line) = stderr.lines().find(|l| l.contains("memory allocation of")) {
        line.trim().to_string()
    } else {
        format!("process {how}")
    };
    (kind, how)
}

fn supervise(args: &Args, raw: &[String]) -> Result<ExitCode, String> {
    // Refuse bad folders here, with one clear message, before any child.
    match &args.replay {
        Some(dir) => drop(replay_files(dir)?),
        None => {
            if load_corpus(args)?.is_empty() {
                return Err(format!("no *.dcm seed files in {}", corpus_names(args)));
            }
        }
    }
    fs::create_dir_all(args.out.join("findings")).map_err(|e| format!("creating {}: {e}", args.out.display()))?;
    let exe = std::env::current_exe().map_err(|e| format!("finding my own executable: {e}"))?;
    let started = Instant::now();
    let deadline_ms = args.seconds.map(|s| now_ms() + (s * 1000.0) as u64);
    // The arguments the user gave, minus the ones the supervisor sets.
    let mut passthrough: Vec<String> = Vec::new();
    let mut skip = false;
    for (i, a) in raw.iter().enumerate() {
        if skip {
            skip = false;
            continue;
        }
        if ["--seed", "--seconds", "--start", "--deadline-ms"].contains(&a.as_str()) {
            skip = i + 1 < raw.len();
            continue;
        }
        if a != "--child" {
            passthrough.push(a.clone());
        }
    }
    if args.replay.is_none() {
        eprintln!(
            "fuzz: seed {} (again: --seed {}), targets {}, output in {}",
            args.seed,
            args.seed,
            args.targets.iter().map(|t| t.name()).collect::<Vec<_>>().join(", "),
            args.out.display()
        );
    }
    let stats_path = args.out.join("child-stats.tsv");
    let mut total = Stats { next: args.start, ..Stats::default() };
    let mut aborts = 0u32;
    let mut seen = known_signatures(&args.out.join("findings"));
    loop {
        let _ = fs::remove_file(&stats_path);
        let mut cmd = Command::new(&exe);
        cmd.args(&passthrough).arg("--child").args([
            "--seed",
            &args.seed.to_string(),
            "--start",
            &total.next.to_string(),
        ]);
        if let Some(d) = deadline_ms {
            cmd.args(["--deadline-ms", &d.to_string()]);
        }
        let mut child = cmd
            .stdout(Stdio::inherit())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("starting {}: {e}", exe.display()))?;
        // Pass the child's stderr on, keeping its end for the record.
        let tail = Arc::new(Mutex::new(String::new()));
        let reader = {
            let tail = tail.clone();
            let stderr = child.stderr.take().unwrap();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    eprintln!("{line}");
                    let mut t = tail.lock().unwrap();
                    t.push_str(&line);
                    t.push('\n');
                    if t.len() > 16 << 10 {
                        let cut = t.len() - (8 << 10);
                        let cut = (cut..t.len()).find(|&i| t.is_char_boundary(i)).unwrap_or(t.len());
                        t.drain(..cut);
                    }
                }
            })
        };
        // Progress: the child's figures, every few seconds.
        let mut last = Instant::now();
        let status = loop {
            if let Some(s) = child.try_wait().map_err(|e| e.to_string())? {
                break s;
            }
            std::thread::sleep(Duration::from_millis(50));
            if last.elapsed() > Duration::from_secs(10) && args.replay.is_none() {
                last = Instant::now();
                if let Ok(t) = fs::read_to_string(&stats_path) {
                    let mut now = total.clone();
                    now.merge(&Stats::from_text(&t));
                    eprintln!("fuzz: {:>6.0?} {}", started.elapsed(), progress(&now, started.elapsed()));
                }
            }
        };
        let _ = reader.join();
        let child_stats = fs::read_to_string(&stats_path).map(|t| Stats::from_text(&t)).unwrap_or_default();
        total.merge(&child_stats);
        if status.success() {
            break;
        }
        if status.code() == Some(i32::from(EXIT_RESTART)) {
            continue;
        }
        if status.code() == Some(2) {
            return Err("the child refused its arguments (see above)".into());
        }
        // Died: the input it was running is in current.dcm.
        aborts += 1;
        let bytes = fs::read(args.out.join("current.dcm")).unwrap_or_default();
        let note = fs::read_to_string(args.out.join("current.txt")).unwrap_or_default();
        let fields: Vec<&str> = note.trim_end().split('\t').collect();
        let (target, index) = match fields.as_slice() {
            [t, i, ..] => (Target::parse(t).unwrap_or(args.targets[0]), i.parse().unwrap_or(total.next)),
            _ => (args.targets[0], total.next),
        };
        let stderr = tail.lock().unwrap().clone();
        let (kind, how) = abort_signature(&status, &stderr);
        let sig = format!("{}: {kind}", target.name());
        let made = if args.replay.is_some() {
            format!("replayed file {}\n", fields.get(3).copied().unwrap_or("?"))
        } else {
            let input = generate(&load_corpus(args)?, args.seed, index);
            provenance(args, index, &input)
        };
        let what = format!("the process died ({how}) running this input\n\nend of its stderr:\n{stderr}");
        let finding = Finding { target, signature: &sig, what: &what, bytes: &bytes, how: &made };
        record_finding(&args.out, &finding, &mut total, &mut seen);
        eprintln!("fuzz: {sig} (input #{index}); going on after it");
        total.next = index + 1;
        if aborts >= 500 {
            eprintln!("fuzz: 500 aborts; stopping");
            break;
        }
        if deadline_ms.is_some_and(|d| now_ms() >= d) || args.inputs.is_some_and(|n| total.next >= n) {
            break;
        }
    }
    let _ = fs::remove_file(&stats_path);
    let wall = started.elapsed();
    if args.replay.is_none() {
        print!("{}", report(args, &total, wall));
    } else {
        print!("{}", replay_report(&total));
    }
    Ok(if total.findings.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

fn corpus_names(args: &Args) -> String {
    args.corpus.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
}

fn load_corpus(args: &Args) -> Result<Vec<Seed>, String> {
    let mut c = Vec::new();
    for dir in &args.corpus {
        c.extend(load_dir(dir).map_err(|e| format!("--corpus: {e}"))?);
    }
    Ok(c)
}

fn rate(n: u64, ns: u128) -> f64 {
    if ns == 0 {
        0.0
    } else {
        n as f64 / (ns as f64 / 1e9)
    }
}

fn progress(s: &Stats, wall: Duration) -> String {
    let per: Vec<String> = s
        .targets
        .iter()
        .map(|(name, t)| format!("{name} {} ({:.0}/s)", t.runs, rate(t.runs, wall.as_nanos())))
        .collect();
    format!("{}, findings {}", per.join(", "), s.findings.len())
}

fn mib(bytes: usize) -> String {
    if bytes >= 1 << 20 {
        format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20))
    } else {
        format!("{:.1} KiB", bytes as f64 / 1024.0)
    }
}

fn report(args: &Args, s: &Stats, wall: Duration) -> String {
    let total: u64 = s.targets.values().map(|t| t.runs).sum();
    let mut out = format!(
        "\nferry fuzz: seed {}, {:.1} s, {} inputs made, {} target runs ({:.0}/s overall)\n",
        args.seed,
        wall.as_secs_f64(),
        s.next,
        total,
        rate(total, wall.as_nanos())
    );
    out += &format!(
        "{:<8} {:>10} {:>10} {:>9} {:>12} {:>12}\n",
        "target", "inputs", "inputs/s", "accepted", "slowest", "peak alloc"
    );
    for (name, t) in &s.targets {
        out += &format!(
            "{name:<8} {:>10} {:>10.0} {:>8.1}% {:>12} {:>12}\n",
            t.runs,
            rate(t.runs, t.busy_ns),
            100.0 * t.accepted as f64 / t.runs.max(1) as f64,
            t.slow.first().map_or("-".into(), |x| format!("{:.1?}", Duration::from_nanos(x.0 as u64))),
            mib(t.peak.0),
        );
    }
    out += "(inputs/s: inputs over the wall time spent on that target; accepted: inputs the target parsed without error)\n";
    if s.findings.is_empty() {
        out += "findings: none\n";
    } else {
        out += &format!("findings: {} distinct\n", s.findings.len());
        for (sig, (n, file)) in &s.findings {
            out += &format!("  {sig}\n    {n} input(s), e.g. {file}\n");
        }
    }
    out += "slowest inputs:\n";
    for (name, t) in &s.targets {
        for (ns, _, size, path) in t.slow.iter().take(3) {
            out += &format!("  {name:<8} {:>10.1?}  {size:>7} bytes  {path}\n", Duration::from_nanos(*ns as u64));
        }
    }
    for (name, t) in &s.targets {
        if t.peak.0 > 0 {
            out += &format!(
                "peak allocation {name}: {} (input sha256 {})\n",
                mib(t.peak.0),
                &t.peak.1[..t.peak.1.len().min(16)]
            );
        }
    }
    out
}

fn replay_report(s: &Stats) -> String {
    let files = s.next;
    if s.findings.is_empty() {
        format!("\nreplayed {files} file(s): no findings\n")
    } else {
        let mut out = format!("\nreplayed {files} file(s): {} finding(s)\n", s.findings.len());
        for (sig, (n, file)) in &s.findings {
            out += &format!("  {sig}: {n} file(s), e.g. {file}\n");
        }
        out
    }
}
