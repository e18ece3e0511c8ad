//! `bench`: how fast is the whole ferry pipeline next to a plain upload loop?
//!
//! Run with `cargo xtask bench`. Everything runs on this machine, in one
//! run, against the same real S3 server (s3s-fs on 127.0.0.1):
//!
//! 1. a generated Sidexis site: 2,000 small and 300 realistic intra-oral
//!    DICOM files (~2.6 MB each);
//! 2. **baseline**: an in-process aws-sdk-s3 `PutObject` loop over the same
//!    files with the same concurrency as the pipeline's store stage;
//! 3. **ferry**: `ferry run` of the production pipeline (sidexis → dicom-meta
//!    → http-resolver → store) as a separate process;
//! 4. a no-op re-run (nothing changed: the ledger answers);
//! 5. peak RSS of `ferry run` moving one ~300 MB file (bytes stream from
//!    disk in parts, so this should stay far below the file size);
//! 6. the clinic-scale no-op: a site of 100,000 small images (10,000 with
//!    `--quick`, `--noop-site N` to choose) stored once, then a pass where
//!    nothing changed, next to a stat walk of the same tree (the floor: what
//!    any change detection by size and mtime has to do). `--noop-only` runs
//!    just this part (for profiling: `perf record -g target/release/ferry
//!    run …` in the printed directory).
//!
//! It prints a table; nothing is asserted. Speed targets are read as the
//! ratio ferry/baseline, which cancels out the machine.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use aws_sdk_s3::primitives::ByteStream;
use ferry_tests::{guid, ImageKind, ImageSpec, PatientSpec, ResolverServer, S3Server, SiteBuilder};

const SMALL: u32 = 2_000;
const LARGE: u32 = 300;
const CONCURRENCY: usize = 8;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let ferry_bin = PathBuf::from(args.first().context("usage: bench <path to ferry binary> [--quick]")?);
    let quick = args.iter().any(|a| a == "--quick");
    let (small, large) = if quick { (200, 30) } else { (SMALL, LARGE) };
    let noop_n: u32 = match args.iter().position(|a| a == "--noop-site") {
        Some(i) => args.get(i + 1).and_then(|n| n.parse().ok()).context("--noop-site takes a number of images")?,
        None if quick => 10_000,
        None => 100_000,
    };
    if args.iter().any(|a| a == "--noop-only") {
        let noop = noop_pass(&ferry_bin, noop_n)?;
        println!();
        noop.print();
        return Ok(());
    }
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;

    // a fresh directory per run (file creation right after mass deletion
    // is slow on these machines)
    let work = tempfile::Builder::new().prefix("ferry-bench-").tempdir_in(bench_root())?;
    eprintln!("bench: generating a site with {small} small and {large} intra-oral files in {}", work.path().display());
    let t = Instant::now();
    let site = site(small, large).build(&work.path().join("site"))?;
    let files: Vec<PathBuf> = site.images.iter().map(|i| i.path.clone()).collect();
    let bytes: u64 = site.images.iter().map(|i| i.size).sum();
    eprintln!("bench: {} files, {:.1} MB, generated in {:.1?}", files.len(), mb(bytes), t.elapsed());

    let s3 = S3Server::start();
    s3.create_bucket("baseline");
    s3.create_bucket("ferry");
    let resolver = ResolverServer::start(site.card_map.clone());

    // baseline: the same files, the same server, plain PutObject
    let client = s3.client();
    let t = Instant::now();
    rt.block_on(put_all(client, files.clone()))?;
    let baseline = t.elapsed();

    // ferry, as a clinic runs it
    write_pipeline(work.path(), &s3, &resolver, "ferry")?;
    let (first, out) = run_ferry(&ferry_bin, work.path())?;
    let line = last_line(&out);
    if !line.contains(&format!("stored={}", files.len())) {
        bail!("ferry did not store every file: {line}");
    }
    let (noop, out) = run_ferry(&ferry_bin, work.path())?;
    let noop_line = last_line(&out);

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
    let (big_time, big_rss, out) = run_ferry_measuring_rss(&ferry_bin, big.path())?;
    let big_line = last_line(&out);

    let noop_site = noop_pass(&ferry_bin, noop_n)?;

    let files_n = files.len() as f64;
    println!();
    println!("| measure | baseline (aws-sdk-s3 PutObject ×{CONCURRENCY}) | ferry pipeline | ferry / baseline |");
    println!("|---|---:|---:|---:|");
    println!(
        "| files/s ({} files, {:.0} MB) | {:.0} | {:.0} | {:.2} |",
        files.len(),
        mb(bytes),
        files_n / baseline.as_secs_f64(),
        files_n / first.as_secs_f64(),
        baseline.as_secs_f64() / first.as_secs_f64()
    );
    println!(
        "| MB/s | {:.1} | {:.1} | {:.2} |",
        mb(bytes) / baseline.as_secs_f64(),
        mb(bytes) / first.as_secs_f64(),
        baseline.as_secs_f64() / first.as_secs_f64()
    );
    println!("| wall time | {:.2?} | {:.2?} | |", baseline, first);
    println!("| no-op re-run | | {:.2?} ({}) | |", noop, noop_line.trim_start_matches("done: "));
    println!("| one {:.0} MB file | | {:.2?}, peak RSS {:.0} MB | |", mb(big_size), big_time, mb(big_rss));
    noop_site.print();
    println!();
    println!("ferry first run: {line}");
    println!("big file run: {big_line}");
    Ok(())
}

/// The clinic-scale no-op figures.
struct Noop {
    images: u32,
    first: Duration,
    first_cpu: Duration,
    noop: Duration,
    noop_cpu: Duration,
    noop_rss: u64,
    walk: Duration,
    line: String,
    dir: PathBuf,
}

impl Noop {
    fn print(&self) {
        let per = |d: Duration| d.as_secs_f64() * 1e6 / self.images as f64;
        println!("| {} small images, nothing changed | seconds | CPU s | µs / image | vs stat walk |", self.images);
        println!("|---|---:|---:|---:|---:|");
        println!(
            "| stat walk of the tree (read_dir + metadata) | {:.2} | | {:.1} | 1.0× |",
            self.walk.as_secs_f64(),
            per(self.walk)
        );
        println!(
            "| ferry no-op pass | {:.2} | {:.2} | {:.1} | {:.1}× |",
            self.noop.as_secs_f64(),
            self.noop_cpu.as_secs_f64(),
            per(self.noop),
            self.noop.as_secs_f64() / self.walk.as_secs_f64().max(1e-6)
        );
        println!(
            "| (first pass, storing them) | {:.1} | {:.1} | {:.0} | |",
            self.first.as_secs_f64(),
            self.first_cpu.as_secs_f64(),
            per(self.first)
        );
        println!("no-op pass: {}; peak RSS {:.0} MB", self.line.trim_start_matches("done: "), mb(self.noop_rss));
        println!("site and ledger kept in {} (for profiling)", self.dir.display());
    }
}

/// Stores a site of `n` small images once, then times a pass where
/// nothing changed, next to a stat walk of the same tree.
fn noop_pass(ferry_bin: &Path, n: u32) -> Result<Noop> {
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
    let resolver = ResolverServer::start(site.card_map.clone());
    write_pipeline(&work, &s3, &resolver, "noop")?;
    eprintln!("bench: the first pass (stores {n} images)");
    let cpu = children_cpu();
    let (first, out) = run_ferry(ferry_bin, &work)?;
    let first_cpu = children_cpu() - cpu;
    if !last_line(&out).contains(&format!("stored={n}")) {
        bail!("the first pass did not store every image: {}", last_line(&out));
    }
    eprintln!("bench: the no-op pass");
    let cpu = children_cpu();
    let (noop, noop_rss, out) = run_ferry_measuring_rss(ferry_bin, &work)?;
    let noop_cpu = children_cpu() - cpu;
    let line = last_line(&out);
    if !line.contains(&format!("unchanged={n}")) {
        bail!("the no-op pass was not one: {line}");
    }
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
    Ok(Noop { images: n, first, first_cpu, noop, noop_cpu, noop_rss, walk, line, dir: work })
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

/// 2,000 small + 300 large images over 230 patients, all resolvable.
fn site(small: u32, large: u32) -> SiteBuilder {
    let patients = (small + large) / 10;
    let mut b = SiteBuilder::new();
    for p in 1..=patients {
        let card = format!("C-{p:05}");
        b = b
            .patient(PatientSpec::new(p, &card, "Bench", &format!("Patient{p}")))
            .map_card(&card, &guid(&format!("bench/{p}")));
    }
    for i in 0..small + large {
        let patient = i % patients + 1;
        let spec = ImageSpec::new(patient, i + 1, &format!("Image {}", i + 1), ImageKind::IntraOral);
        b = b.image(if i < large { spec.pixels(1024, 1280) } else { spec });
    }
    b
}

async fn put_all(client: aws_sdk_s3::Client, files: Vec<PathBuf>) -> Result<()> {
    let sem = Arc::new(tokio::sync::Semaphore::new(CONCURRENCY));
    let mut tasks = tokio::task::JoinSet::new();
    for (i, f) in files.into_iter().enumerate() {
        let permit = sem.clone().acquire_owned().await?;
        let client = client.clone();
        tasks.spawn(async move {
            let _permit = permit;
            let body = ByteStream::from_path(&f).await?;
            client
                .put_object()
                .bucket("baseline")
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

fn ferry_cmd(bin: &Path, dir: &Path) -> Command {
    let mut c = Command::new(bin);
    c.args(["run", "pipeline.toml", "--no-progress"])
        .current_dir(dir)
        .env("FERRY_LOG", "warn")
        .env("FERRY_CACHE_DIR", ferry_tests::workspace_root().join("target/ferry-test-cache"));
    c
}

fn run_ferry(bin: &Path, dir: &Path) -> Result<(Duration, String)> {
    let t = Instant::now();
    let out = ferry_cmd(bin, dir).output().context("running ferry")?;
    let elapsed = t.elapsed();
    if !out.status.success() {
        bail!("ferry failed: {}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    }
    Ok((elapsed, String::from_utf8_lossy(&out.stdout).into_owned()))
}

/// Runs ferry, sampling its peak resident set (VmHWM) until it exits.
fn run_ferry_measuring_rss(bin: &Path, dir: &Path) -> Result<(Duration, u64, String)> {
    let t = Instant::now();
    let mut child = ferry_cmd(bin, dir).stdout(std::process::Stdio::piped()).spawn()?;
    let status_file = format!("/proc/{}/status", child.id());
    let mut peak = 0u64;
    loop {
        if let Ok(s) = std::fs::read_to_string(&status_file) {
            if let Some(kb) = s
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            {
                peak = peak.max(kb * 1024);
            }
        }
        if child.try_wait()?.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let elapsed = t.elapsed();
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("ferry failed on the big file: {}", String::from_utf8_lossy(&out.stdout));
    }
    Ok((elapsed, peak, String::from_utf8_lossy(&out.stdout).into_owned()))
}

fn last_line(s: &str) -> String {
    s.lines().last().unwrap_or("").to_owned()
}
