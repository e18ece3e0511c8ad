//! `bench`: how fast is the whole ferry pipeline next to the peer a clinic
//! would otherwise use (rclone) and a plain upload loop?
//!
//! Run with `cargo xtask bench` (a release build). Everything runs on this
//! machine, in one run, against the same real S3 server (s3s-fs on
//! 127.0.0.1), on three generated Sidexis sites:
//!
//! - **small**: 2,000 intra-oral images of ~30 KB;
//! - **large**: 300 images of ~2.6 MB and 20 of ~7 MB;
//! - **clinic scale**: 100,000 small images (10,000 with `--quick`,
//!   `--noop-site N` to choose).
//!
//! On each, the same files go up three ways, each into its own bucket:
//!
//! 1. **PutObject loop**: in-process aws-sdk-s3 with the same concurrency
//!    as the pipeline's store stage (the ceiling for this server);
//! 2. **rclone** `copy --transfers 8` of the PDATA folder (what an IT
//!    person would script instead; installed by `cargo xtask bench` from
//!    the distribution when missing, skipped with a note when absent);
//! 3. **ferry**: `ferry run` of the production pipeline (sidexis →
//!    dicom-meta → http-resolver → store: patient lookup, metadata, a JSON
//!    sidecar per image, inline) as a separate process;
//!
//! three rounds of the three first passes (the server's speed drifts
//! between runs, so a ratio is the median of the rounds' ratios), then
//! rclone and ferry again over the unchanged site (the no-op pass),
//! with wall time, CPU seconds and peak RSS of each process. The clinic-scale
//! site adds a stat walk of its tree (the floor of any change detection by
//! size and mtime). One ~300 MB file gives ferry's peak RSS for a CBCT.
//! `--noop-only` runs just the clinic-scale site, `--small-only` and
//! `--large-only` just the small or the large one; `--scale-site [N]` a site of N images (1,000,000 by default)
//! through a first and a no-op pass, without rclone, for peak RSS and
//! ledger bytes per image at scale; `FERRY_BENCH_WRAP="perf record -g -o FILE --"` runs every
//! `ferry` under a profiler.
//!
//! It prints tables; nothing is asserted. Speed targets are read as ratios
//! against rclone, run in the same run on the same server, which cancels
//! out the machine.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use aws_sdk_s3::primitives::ByteStream;
use ferry_tests::{guid, ImageKind, ImageSpec, PatientSpec, ResolverServer, S3Server, SiteBuilder};

const CONCURRENCY: usize = 8;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let ferry_bin = PathBuf::from(args.first().context("usage: bench <path to ferry binary> [--quick]")?);
    let quick = args.iter().any(|a| a == "--quick");
    let noop_n: u32 = match args.iter().position(|a| a == "--noop-site") {
        Some(i) => args.get(i + 1).and_then(|n| n.parse().ok()).context("--noop-site takes a number of images")?,
        None if quick => 10_000,
        None => 100_000,
    };
    let rclone = rclone_version();
    match &rclone {
        Some(v) => eprintln!("bench: peer {v}"),
        None => eprintln!("bench: no rclone on PATH: its rows are left out (`cargo xtask bench` installs it)"),
    }
    let rclone = rclone.is_some();
    // the scale evidence: a site of N images (1,000,000 by default), its
    // first and no-op pass with peak RSS and ledger bytes per image; no
    // rclone (it would take an hour here)
    if let Some(i) = args.iter().position(|a| a == "--scale-site") {
        let n: u32 = match args.get(i + 1).filter(|a| !a.starts_with("--")) {
            Some(n) => n.parse().context("--scale-site takes a number of images")?,
            None => 1_000_000,
        };
        let scale = noop_pass(&ferry_bin, n, false)?;
        println!();
        scale.print();
        return Ok(());
    }
    if args.iter().any(|a| a == "--noop-only") {
        let noop = noop_pass(&ferry_bin, noop_n, rclone)?;
        println!();
        noop.print();
        return Ok(());
    }
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let s3 = S3Server::start();

    let (small_n, large_n, larger_n) = if quick { (200, 30, 2) } else { (2_000, 300, 20) };
    let large_site = || site(0, large_n, larger_n);
    let large_what = format!("{large_n} × 2.6 MB + {larger_n} × 7 MB");
    if args.iter().any(|a| a == "--large-only") {
        let large = compare(&rt, &s3, &ferry_bin, rclone, "large", &large_what, large_site())?;
        println!();
        println!("| site | how | wall s | files/s | MB/s | CPU s | machine busy | peak RSS MB | speed vs rclone |");
        println!("|---|---|---:|---:|---:|---:|---:|---:|---:|");
        large.print();
        return Ok(());
    }
    let small = compare(&rt, &s3, &ferry_bin, rclone, "small", &format!("{small_n} × 30 KB"), site(small_n, 0, 0))?;
    if args.iter().any(|a| a == "--small-only") {
        println!();
        println!("| site | how | wall s | files/s | MB/s | CPU s | machine busy | peak RSS MB | speed vs rclone |");
        println!("|---|---|---:|---:|---:|---:|---:|---:|---:|");
        small.print();
        println!("ferry, small site: {}", small.ferry_line);
        return Ok(());
    }
    let large = compare(&rt, &s3, &ferry_bin, rclone, "large", &large_what, large_site())?;

    // one ~300 MB file: peak memory of the ferry process
    let big = tempfile::Builder::new().prefix("ferry-bench-big-").tempdir_in(bench_root())?;
    let big_site = SiteBuilder::new()
        .patient(PatientSpec::new(1, "C-BIG", "Volumen", "Vera"))
        .image(ImageSpec::new(1, 1, "CBCT", ImageKind::IntraOral).pixels(12_248, 12_248))
        .map_card("C-BIG", &guid("bench/big"))
        .build(&big.path().join("site"))?;
    let big_size = big_site.images[0].size;
    let big_resolver = ResolverServer::start(big_site.card_map.clone());
    s3.create_bucket("big");
    write_pipeline(big.path(), &s3, &big_resolver, "big")?;
    let big_run = measure(ferry_cmd(&ferry_bin, big.path()))?;

    let noop_site = noop_pass(&ferry_bin, noop_n, rclone)?;

    println!();
    println!("| site | how | wall s | files/s | MB/s | CPU s | machine busy | peak RSS MB | speed vs rclone |");
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|");
    small.print();
    large.print();
    println!();
    println!(
        "one {:.0} MB file through ferry: {:.2?}, peak RSS {:.0} MB ({})",
        mb(big_size),
        big_run.wall,
        mb(big_run.rss),
        last_line(&big_run.out).trim_start_matches("done: ")
    );
    println!();
    noop_site.print();
    println!();
    println!("ferry, small site: {}", small.ferry_line);
    println!("ferry, large site: {}", large.ferry_line);
    Ok(())
}

/// What one process did: wall time, CPU seconds (user + system), peak RSS,
/// and how busy the whole machine was meanwhile (its CPUs, the S3 server
/// included: near 100 % means CPU-bound, less means waiting).
struct Measured {
    wall: Duration,
    cpu: Duration,
    rss: u64,
    busy: f64,
    out: String,
}

/// (busy, total) jiffies of all CPUs, from `/proc/stat`.
fn machine_jiffies() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(cpu) = stat.lines().next().and_then(|l| l.strip_prefix("cpu ")) else { return (0, 0) };
    let v: Vec<u64> = cpu.split_whitespace().filter_map(|n| n.parse().ok()).collect();
    let total: u64 = v.iter().take(8).sum();
    // idle and iowait
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

/// Runs `cmd` to its end, sampling its peak resident set (VmHWM); its
/// output is read on threads so that a full pipe never stalls it.
fn measure(mut cmd: Command) -> Result<Measured> {
    let cpu = children_cpu();
    let jiffies = machine_jiffies();
    let t = Instant::now();
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().context("starting a measured process")?;
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = r.read_to_string(&mut s);
            s
        })
    };
    let stdout = drain(Box::new(child.stdout.take().unwrap()));
    let stderr = drain(Box::new(child.stderr.take().unwrap()));
    let status_file = format!("/proc/{}/status", child.id());
    let mut peak = 0u64;
    let status = loop {
        if let Ok(s) = std::fs::read_to_string(&status_file) {
            if let Some(kb) = s
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            {
                peak = peak.max(kb * 1024);
            }
        }
        if let Some(status) = child.try_wait()? {
            break status;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let wall = t.elapsed();
    let out = stdout.join().unwrap_or_default();
    let err = stderr.join().unwrap_or_default();
    if !status.success() {
        bail!("{:?} failed ({status}):\n{out}\n{err}", cmd.get_program());
    }
    let (busy, total) = machine_jiffies();
    let busy = (busy - jiffies.0) as f64 / (total - jiffies.1).max(1) as f64;
    Ok(Measured { wall, cpu: children_cpu() - cpu, rss: peak, busy, out })
}

/// One site, uploaded by the loop, rclone and ferry, then again unchanged.
struct Comparison {
    label: String,
    files: usize,
    bytes: u64,
    /// One per round.
    baseline: Vec<Duration>,
    /// First passes (one per round), the no-op pass.
    rclone: Option<(Vec<Measured>, Measured)>,
    ferry: (Vec<Measured>, Measured),
    ferry_line: String,
}

/// First passes per site and way (see [`compare`]).
const ROUNDS: usize = 3;

/// The middle value (of an odd count; the upper middle otherwise).
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// The round whose wall time is the median.
fn median_run(runs: &[Measured]) -> &Measured {
    let mut by_wall: Vec<&Measured> = runs.iter().collect();
    by_wall.sort_by_key(|m| m.wall);
    by_wall[by_wall.len() / 2]
}

impl Comparison {
    fn print(&self) {
        let secs = |d: Duration| d.as_secs_f64().max(1e-6);
        // the median of the rounds' ratios, and each round's
        let vs = |walls: &[Duration]| match &self.rclone {
            Some((r, _)) => {
                let ratios: Vec<f64> = r.iter().zip(walls).map(|(r, w)| secs(r.wall) / secs(*w)).collect();
                let each: Vec<String> = ratios.iter().map(|x| format!("{x:.2}")).collect();
                format!("**{:.2}×** ({})", median(ratios.clone()), each.join(", "))
            }
            None => "—".into(),
        };
        let median_wall =
            |walls: &[Duration]| Duration::from_secs_f64(median(walls.iter().map(|w| secs(*w)).collect()));
        let row = |how: &str, wall: Duration, m: Option<&Measured>, ratio: String| {
            println!(
                "| {} | {how} | {:.2} | {:.0} | {:.1} | {} | {} | {} | {ratio} |",
                self.label,
                secs(wall),
                self.files as f64 / secs(wall),
                mb(self.bytes) / secs(wall),
                m.map(|m| format!("{:.2}", m.cpu.as_secs_f64())).unwrap_or_else(|| "—".into()),
                m.map(|m| format!("{:.0} %", m.busy * 100.0)).unwrap_or_else(|| "—".into()),
                m.map(|m| format!("{:.0}", mb(m.rss))).unwrap_or_else(|| "—".into()),
            )
        };
        row(&format!("PutObject ×{CONCURRENCY} (in process)"), median_wall(&self.baseline), None, vs(&self.baseline));
        if let Some((runs, _)) = &self.rclone {
            let m = median_run(runs);
            row("rclone copy --transfers 8", m.wall, Some(m), "1.00×".into());
        }
        let (runs, again) = &self.ferry;
        let m = median_run(runs);
        let walls: Vec<Duration> = runs.iter().map(|r| r.wall).collect();
        row("**ferry**", m.wall, Some(m), vs(&walls));
        let again_vs = match &self.rclone {
            Some((_, r)) => format!("{:.2}×", secs(r.wall) / secs(again.wall)),
            None => "—".into(),
        };
        if let Some((_, r)) = &self.rclone {
            println!(
                "| {} | rclone, nothing changed | {:.2} | | | {:.2} | {:.0} % | {:.0} | 1.00× |",
                self.label,
                secs(r.wall),
                r.cpu.as_secs_f64(),
                r.busy * 100.0,
                mb(r.rss)
            );
        }
        println!(
            "| {} | ferry, nothing changed | {:.2} | | | {:.2} | {:.0} % | {:.0} | {again_vs} |",
            self.label,
            secs(again.wall),
            again.cpu.as_secs_f64(),
            again.busy * 100.0,
            mb(again.rss)
        );
    }
}

fn compare(
    rt: &tokio::runtime::Runtime,
    s3: &S3Server,
    ferry_bin: &Path,
    rclone: bool,
    label: &str,
    what: &str,
    builder: SiteBuilder,
) -> Result<Comparison> {
    // a fresh directory per site (file creation right after mass deletion
    // is slow on these machines)
    let work = tempfile::Builder::new().prefix(&format!("ferry-bench-{label}-")).tempdir_in(bench_root())?;
    let t = Instant::now();
    let site = builder.build(&work.path().join("site"))?;
    let files: Vec<PathBuf> = site.images.iter().map(|i| i.path.clone()).collect();
    let bytes: u64 = site.images.iter().map(|i| i.size).sum();
    eprintln!("bench: {label} site: {what}, {:.1} MB, generated in {:.1?}", mb(bytes), t.elapsed());
    let resolver = ResolverServer::start(site.card_map.clone());

    // The server's speed drifts by 2× between runs on these machines
    // (its disk): each first pass runs ROUNDS times, the three ways one
    // after the other in each round, and the ratio is the median of the
    // rounds' ratios.
    let src = work.path().join("site").join("PDATA");
    let (mut baselines, mut rclones, mut ferries) = (Vec::new(), Vec::new(), Vec::new());
    let mut ferry_line = String::new();
    for r in 0..ROUNDS {
        for b in ["baseline", "rclone", "ferry"] {
            s3.create_bucket(&format!("{label}-{b}-{r}"));
        }
        eprintln!("bench: {label}, round {}: PutObject loop, rclone copy, ferry run", r + 1);
        let t = Instant::now();
        rt.block_on(put_all(s3.client(), format!("{label}-baseline-{r}"), files.clone()))?;
        baselines.push(t.elapsed());
        if rclone {
            rclones.push(measure(rclone_cmd(s3, &src, &format!("{label}-rclone-{r}"), work.path()))?);
        }
        // a ledger of its own per round, over the same site
        let dir = work.path().join(format!("ferry-{r}"));
        std::fs::create_dir_all(&dir)?;
        std::os::unix::fs::symlink(work.path().join("site"), dir.join("site"))?;
        write_pipeline(&dir, s3, &resolver, &format!("{label}-ferry-{r}"))?;
        let first = measure(ferry_cmd(ferry_bin, &dir))?;
        ferry_line = last_line(&first.out);
        if !ferry_line.contains(&format!("stored={}", files.len())) {
            bail!("ferry did not store every file of the {label} site: {ferry_line}");
        }
        ferries.push(first);
    }
    let last = ROUNDS - 1;
    let rclone = if rclone {
        eprintln!("bench: {label}: rclone again, unchanged");
        let again = measure(rclone_cmd(s3, &src, &format!("{label}-rclone-{last}"), work.path()))?;
        Some((rclones, again))
    } else {
        None
    };
    eprintln!("bench: {label}: ferry again, unchanged");
    let again = measure(ferry_cmd(ferry_bin, &work.path().join(format!("ferry-{last}"))))?;
    if !last_line(&again.out).contains(&format!("unchanged={}", files.len())) {
        bail!("ferry's second pass over the {label} site was not a no-op: {}", last_line(&again.out));
    }
    Ok(Comparison {
        label: label.to_owned(),
        files: files.len(),
        bytes,
        baseline: baselines,
        rclone,
        ferry: (ferries, again),
        ferry_line,
    })
}

/// `rclone version`'s first line, if rclone is on PATH.
fn rclone_version() -> Option<String> {
    let out = Command::new("rclone").arg("version").output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).lines().next().unwrap_or("rclone").to_owned())
}

/// `rclone copy --transfers 8 SRC bench:BUCKET/images`, the remote given in
/// the environment (no config file), as an IT person would run it.
fn rclone_cmd(s3: &S3Server, src: &Path, bucket: &str, dir: &Path) -> Command {
    let mut c = Command::new("rclone");
    // a CA bundle set for the machine's proxy makes rclone's S3 client
    // refuse a plain-HTTP endpoint; the local server needs none
    c.env_remove("AWS_CA_BUNDLE")
        .arg("copy")
        .args(["--transfers", "8", "--s3-no-check-bucket", "-q"])
        .arg(src)
        .arg(format!("bench:{bucket}/images"))
        .env("RCLONE_CONFIG", dir.join("rclone.conf"))
        .env("RCLONE_CONFIG_BENCH_TYPE", "s3")
        .env("RCLONE_CONFIG_BENCH_PROVIDER", "Other")
        .env("RCLONE_CONFIG_BENCH_ENDPOINT", s3.endpoint())
        .env("RCLONE_CONFIG_BENCH_ACCESS_KEY_ID", ferry_tests::s3_server::ACCESS_KEY)
        .env("RCLONE_CONFIG_BENCH_SECRET_ACCESS_KEY", ferry_tests::s3_server::SECRET_KEY)
        .env("RCLONE_CONFIG_BENCH_REGION", ferry_tests::s3_server::REGION)
        .env("RCLONE_CONFIG_BENCH_FORCE_PATH_STYLE", "true");
    c
}

/// The clinic-scale figures.
struct Noop {
    images: u32,
    first: Measured,
    noop: Measured,
    rclone: Option<(Measured, Measured)>,
    walk: Duration,
    dir: PathBuf,
    /// Bytes of the ledger (`state/`) after both passes.
    ledger: u64,
    /// Dropped after the figures are printed: deleting a million objects
    /// takes minutes.
    _s3: S3Server,
}

impl Noop {
    fn print(&self) {
        let per = |d: Duration| d.as_secs_f64() * 1e6 / self.images as f64;
        let walk = self.walk.as_secs_f64().max(1e-6);
        println!("| {} small images | seconds | CPU s | peak RSS MB | µs / image | vs stat walk |", self.images);
        println!("|---|---:|---:|---:|---:|---:|");
        println!(
            "| stat walk of the tree (read_dir + metadata) | {:.2} | | | {:.1} | 1.0× |",
            self.walk.as_secs_f64(),
            per(self.walk)
        );
        let row = |how: &str, m: &Measured| {
            println!(
                "| {how} | {:.2} | {:.2} | {:.0} | {:.1} | {:.1}× |",
                m.wall.as_secs_f64(),
                m.cpu.as_secs_f64(),
                mb(m.rss),
                per(m.wall),
                m.wall.as_secs_f64() / walk
            )
        };
        row("**ferry, nothing changed**", &self.noop);
        if let Some((first, again)) = &self.rclone {
            row("rclone copy, nothing changed", again);
            row("rclone copy --transfers 8, first copy", first);
        }
        row("ferry, first pass (stores them)", &self.first);
        println!("ferry's no-op pass: {}", last_line(&self.noop.out).trim_start_matches("done: "));
        println!(
            "ledger: {:.1} MB, {:.0} bytes per image (items, sync log of both passes, image index)",
            mb(self.ledger),
            self.ledger as f64 / self.images as f64
        );
        println!("site and ledger kept in {} (for profiling)", self.dir.display());
    }
}

/// Stores a site of `n` small images once, then times a pass where
/// nothing changed, next to rclone doing the same and a stat walk of the
/// same tree.
fn noop_pass(ferry_bin: &Path, n: u32, rclone: bool) -> Result<Noop> {
    let work = tempfile::Builder::new().prefix("ferry-bench-noop-").tempdir_in(bench_root())?.keep();
    let patients = (n / 10).max(1);
    eprintln!("bench: generating a site with {n} small images over {patients} patients in {}", work.display());
    let t = Instant::now();
    let mut b = SiteBuilder::new();
    for p in 1..=patients {
        let card = format!("C-{p:06}");
        b = b
            .patient(PatientSpec::new(p, &card, "Noop", &format!("Patient{p}")))
            .map_card(&card, &guid(&format!("noop/{p}")));
    }
    for i in 0..n {
        let spec = ImageSpec::new(i % patients + 1, i + 1, &format!("Image {}", i + 1), ImageKind::IntraOral);
        b = b.image(spec.pixels(16, 16));
    }
    let site = b.build(&work.join("site"))?;
    eprintln!("bench: generated in {:.1?}", t.elapsed());
    let s3 = S3Server::start();
    s3.create_bucket("noop");
    s3.create_bucket("noop-rclone");
    let resolver = ResolverServer::start(site.card_map.clone());
    write_pipeline(&work, &s3, &resolver, "noop")?;
    eprintln!("bench: the first pass (stores {n} images)");
    let first = measure(ferry_cmd(ferry_bin, &work))?;
    if !last_line(&first.out).contains(&format!("stored={n}")) {
        bail!("the first pass did not store every image: {}", last_line(&first.out));
    }
    eprintln!("bench: the no-op pass");
    let noop = measure(ferry_cmd(ferry_bin, &work))?;
    if !last_line(&noop.out).contains(&format!("unchanged={n}")) {
        bail!("the no-op pass was not one: {}", last_line(&noop.out));
    }
    let rclone = if rclone {
        eprintln!("bench: rclone copy of the {n} images, then again unchanged");
        let src = work.join("site").join("PDATA");
        let first = measure(rclone_cmd(&s3, &src, "noop-rclone", &work))?;
        let again = measure(rclone_cmd(&s3, &src, "noop-rclone", &work))?;
        Some((first, again))
    } else {
        None
    };
    // the floor: every file's size and mtime, as a walk of the tree
    let t = Instant::now();
    let mut seen = 0u64;
    let mut dirs = vec![work.join("site")];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d)? {
            let e = e?;
            let md = e.metadata()?;
            if md.is_dir() {
                dirs.push(e.path());
            } else {
                seen += md.len() ^ md.modified()?.duration_since(std::time::UNIX_EPOCH)?.as_nanos() as u64;
            }
        }
    }
    let walk = t.elapsed();
    std::hint::black_box(seen);
    let ledger = dir_size(&work.join("state"))?;
    Ok(Noop { images: n, first, noop, rclone, walk, dir: work, ledger, _s3: s3 })
}

/// Bytes of the files under `dir`.
fn dir_size(dir: &Path) -> Result<u64> {
    let mut total = 0;
    let mut dirs = vec![dir.to_owned()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).with_context(|| format!("reading {}", d.display()))? {
            let e = e?;
            let md = e.metadata()?;
            if md.is_dir() {
                dirs.push(e.path());
            } else {
                total += md.len();
            }
        }
    }
    Ok(total)
}

/// User + system CPU time of the children waited for so far.
fn children_cpu() -> Duration {
    // SAFETY: getrusage only writes the struct it is given
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut u) };
    let tv = |t: libc::timeval| Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64);
    tv(u.ru_utime) + tv(u.ru_stime)
}

fn bench_root() -> PathBuf {
    let d = ferry_tests::workspace_root().join("target").join("bench");
    std::fs::create_dir_all(&d).ok();
    d
}

fn mb(b: u64) -> f64 {
    b as f64 / 1e6
}

/// `small` images of ~30 KB, `large` of ~2.6 MB and `larger` of ~7 MB,
/// ten per patient, every patient resolvable.
fn site(small: u32, large: u32, larger: u32) -> SiteBuilder {
    let n = small + large + larger;
    let patients = (n / 10).max(1);
    let mut b = SiteBuilder::new();
    for p in 1..=patients {
        let card = format!("C-{p:05}");
        b = b
            .patient(PatientSpec::new(p, &card, "Bench", &format!("Patient{p}")))
            .map_card(&card, &guid(&format!("bench/{p}")));
    }
    for i in 0..n {
        let patient = i % patients + 1;
        let spec = ImageSpec::new(patient, i + 1, &format!("Image {}", i + 1), ImageKind::IntraOral);
        b = b.image(if i < larger {
            spec.pixels(1870, 1870)
        } else if i < larger + large {
            spec.pixels(1024, 1280)
        } else {
            spec
        });
    }
    b
}

async fn put_all(client: aws_sdk_s3::Client, bucket: String, files: Vec<PathBuf>) -> Result<()> {
    let sem = Arc::new(tokio::sync::Semaphore::new(CONCURRENCY));
    let mut tasks = tokio::task::JoinSet::new();
    for (i, f) in files.into_iter().enumerate() {
        let permit = sem.clone().acquire_owned().await?;
        let (client, bucket) = (client.clone(), bucket.clone());
        tasks.spawn(async move {
            let _permit = permit;
            let body = ByteStream::from_path(&f).await?;
            client
                .put_object()
                .bucket(bucket)
                .key(format!("images/{i}.dcm"))
                .content_type("application/dicom")
                .body(body)
                .send()
                .await?;
            anyhow::Ok(())
        });
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    Ok(())
}

fn write_pipeline(dir: &Path, s3: &S3Server, resolver: &ResolverServer, bucket: &str) -> Result<()> {
    // the tests' production pipeline, with the store's concurrency and a
    // deadline for big files, and pages of 50 folders as in production
    let toml = ferry_tests::production_toml("bench", ferry_tests::SQLITE_CONNECTION, resolver, s3, bucket, "")
        .replace("folders_per_page = 3", "folders_per_page = 50")
        .replace(
            "concurrency = 4",
            &format!("concurrency = {CONCURRENCY}\nlimits = {{ memory = \"64MiB\", timeout = \"10m\" }}"),
        );
    std::fs::write(dir.join("pipeline.toml"), toml)?;
    Ok(())
}

/// `ferry run` in `dir`; `FERRY_BENCH_WRAP` (e.g. `perf record -g -o
/// /tmp/ferry.perf --`) runs it under a profiler.
fn ferry_cmd(bin: &Path, dir: &Path) -> Command {
    let wrap: Vec<String> = std::env::var("FERRY_BENCH_WRAP")
        .map(|w| w.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default();
    let mut c = match wrap.split_first() {
        Some((prog, args)) => {
            let mut c = Command::new(prog);
            c.args(args).arg(bin);
            c
        }
        None => Command::new(bin),
    };
    c.args(["run", "pipeline.toml", "--no-progress"])
        .current_dir(dir)
        .env("FERRY_LOG", "warn")
        .env("FERRY_CACHE_DIR", ferry_tests::workspace_root().join("target/ferry-test-cache"));
    c
}

fn last_line(s: &str) -> String {
    s.lines().last().unwrap_or("").to_owned()
}
