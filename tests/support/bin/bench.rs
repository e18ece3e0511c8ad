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
//!    disk in parts, so this should stay far below the file size).
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
    println!();
    println!("ferry first run: {line}");
    println!("big file run: {big_line}");
    Ok(())
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
