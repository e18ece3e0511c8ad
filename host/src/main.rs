//! The `ferry` command line.
//!
//! ```text
//! ferry run PIPELINE.toml [--every 5m]   one pass (or one every 5 minutes), summary line
//! ferry check PIPELINE.toml              validate config, load plugins, test grants
//! ferry status PIPELINE.toml             counts by state, oldest problems
//! ferry retry PIPELINE.toml [--quarantined|--failed|--unresolved]
//! ferry log PIPELINE.toml [--patient GUID]
//! ```

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand, ValueEnum};
use ferry::ledger::prelude::*;
use ferry::ledger::SqliteLedger;
use ferry::runner::{Outcome, Summary};
use ferry::runtime::{self, Options, Runtime};
use indicatif::{ProgressBar, ProgressStyle};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(name = "ferry", version, about = "Moves clinic imaging to the cloud through sandboxed WASM pipeline stages")]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the pipeline over everything the source has: once, or again and
    /// again with --every (or the file's [schedule]).
    Run {
        /// The pipeline file.
        pipeline: PathBuf,
        /// Keep running: start a pass this often (e.g. 5m).
        #[arg(long, value_parser = parse_every)]
        every: Option<Duration>,
        /// No progress bar, even on a terminal.
        #[arg(long)]
        no_progress: bool,
    },
    /// What the ledger knows: items by state, the last run, the oldest problems.
    Status {
        pipeline: PathBuf,
        /// How many of the oldest problems to list.
        #[arg(long, default_value_t = 10)]
        oldest: u32,
    },
    /// Make parked items due now (default: failed and unresolved).
    Retry {
        pipeline: PathBuf,
        #[arg(long)]
        quarantined: bool,
        #[arg(long)]
        failed: bool,
        #[arg(long)]
        unresolved: bool,
        /// Also forget cached patient resolutions (after fixing the PMS).
        #[arg(long)]
        forget_resolutions: bool,
    },
    /// Run the pipeline on its schedule and serve the API and web page
    /// (`[serve]` in the pipeline file).
    Serve {
        pipeline: PathBuf,
        /// Address to listen on (overrides [serve] listen).
        #[arg(long)]
        listen: Option<String>,
    },
    /// Mint a JWT for local use and testing from the configured secret.
    Token {
        pipeline: PathBuf,
        /// viewer, operator or admin.
        #[arg(long, default_value = "viewer")]
        role: String,
        /// Lifetime, e.g. 1h.
        #[arg(long, default_value = "1h")]
        ttl: String,
        #[arg(long, default_value = "ferry-cli")]
        subject: String,
        /// Limit the token to this clinic.
        #[arg(long)]
        clinic: Option<String>,
    },
    /// The synchronization log, newest first.
    Log {
        pipeline: PathBuf,
        /// Only this patient's entries.
        #[arg(long)]
        patient: Option<String>,
        #[arg(short = 'n', long, default_value_t = 50)]
        limit: u32,
    },
    /// Seal the patient records' PHI again with [serve.records] key, after
    /// a key rotation (then the old key can leave previous_keys).
    Reseal { pipeline: PathBuf },
    /// Validate the pipeline file, load every plugin, test every grant.
    Check {
        /// The pipeline file.
        pipeline: PathBuf,
    },
    /// Compile plugins now into the cache ($FERRY_CACHE_DIR, else
    /// ~/.cache/ferry), so that the first start after installing or
    /// dropping in a plugin does not wait for the compiler.
    Precompile {
        /// Plugin files, or folders of them (default: $FERRY_PLUGIN_DIR).
        paths: Vec<PathBuf>,
    },
}

fn main() {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    let code = match rt.block_on(real_main(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            2
        }
    };
    std::process::exit(code);
}

async fn real_main(cli: Cli) -> Result<i32> {
    match cli.command {
        Command::Precompile { paths } => {
            init_logging(cli.log_format, None);
            precompile(paths)
        }
        Command::Check { pipeline } => {
            init_logging(cli.log_format, None);
            let p = runtime::load_pipeline(&pipeline)?;
            println!("pipeline `{}` ({}): config ok", p.name, pipeline.display());
            let lines = ferry::check::check(&p, &Options::from_env()).await?;
            let failed = lines.iter().filter(|l| !l.ok).count();
            for l in &lines {
                println!("{l}");
            }
            Ok(if failed == 0 { 0 } else { 1 })
        }
        Command::Run { pipeline, every, no_progress } => {
            let progress = (!no_progress && std::io::stderr().is_terminal()).then(|| {
                let pb = ProgressBar::new_spinner();
                pb.set_style(
                    ProgressStyle::with_template("{spinner} {elapsed_precise} {msg}").expect("valid template"),
                );
                pb
            });
            init_logging(cli.log_format, progress.clone());
            let p = runtime::load_pipeline(&pipeline)?;
            let every = every.or(p.schedule.as_ref().and_then(|s| s.every));
            let started = std::time::Instant::now();
            let runtime = Runtime::new(p, &Options::from_env()).await?;
            tracing::info!(pipeline = %runtime.pipeline.name, "pipeline ready in {:?}", started.elapsed());
            let cancel = CancellationToken::new();
            spawn_ctrl_c(cancel.clone(), progress.clone());
            loop {
                let pass_started = std::time::Instant::now();
                let summary = run_pass(&runtime, &cancel, progress.as_ref()).await;
                let Some(every) = every else {
                    if let Some(pb) = &progress {
                        pb.finish_and_clear();
                    }
                    return Ok(if summary.has_failures() {
                        1
                    } else if summary.interrupted() {
                        130
                    } else {
                        0
                    });
                };
                let next = every.saturating_sub(pass_started.elapsed());
                tracing::info!("next pass in {}", ferry::stage::humantime(next.max(Duration::from_secs(1))));
                tokio::select! {
                    _ = cancel.cancelled() => {
                        if let Some(pb) = &progress {
                            pb.finish_and_clear();
                        }
                        tracing::info!("stopped");
                        return Ok(0);
                    }
                    _ = tokio::time::sleep(next) => {}
                }
            }
        }
        Command::Status { pipeline, oldest } => {
            init_logging(cli.log_format, None);
            let p = runtime::load_pipeline(&pipeline)?;
            let ledger = open_ledger(&p)?;
            let st = ledger.status(oldest)?;
            println!("pipeline `{}`, ledger {}", p.name, ledger.path().display());
            match &st.last_run {
                Some((id, started, finished, summary)) => println!(
                    "last run #{id}: started {}, {}",
                    ago(*started),
                    match finished {
                        Some(_) => summary.clone(),
                        None => "did not finish (stopped or crashed; the next run picks up)".into(),
                    }
                ),
                None => println!("no run yet"),
            }
            let counts: Vec<String> = st.by_state.iter().map(|(s, n)| format!("{s}={n}")).collect();
            println!("items: {}", if counts.is_empty() { "none".into() } else { counts.join(" ") });
            // how the pipeline paces its uploads, and whether they may go now
            let mut pace = Vec::new();
            if let Some(r) = p.max_rate {
                pace.push(format!("at most {} ([store] max_rate)", ferry::pace::show_rate(r)));
            }
            if let Some(w) = &p.windows {
                pace.push(match w.closed_now() {
                    None => format!("windows {}: open now", w.describe()),
                    Some(d) => format!(
                        "windows {}: closed now, the next opens in {}",
                        w.describe(),
                        ferry::stage::humantime(d.max(Duration::from_secs(1)))
                    ),
                });
            }
            if !pace.is_empty() {
                println!("uploads: {}", pace.join("; "));
            }
            if !st.waiting.is_empty() {
                println!("waiting for a later pass:");
                for (why, n) in &st.waiting {
                    println!("  {n:>6}  {why}");
                }
            }
            if !st.oldest_problems.is_empty() {
                println!("oldest problems:");
                for r in &st.oldest_problems {
                    let due = if r.next_attempt_at <= ferry::ledger::now_ms() {
                        "due now".to_string()
                    } else {
                        format!(
                            "next try in {}",
                            ferry::stage::humantime(Duration::from_secs(
                                ((r.next_attempt_at - ferry::ledger::now_ms()) / 1000).max(1) as u64
                            ))
                        )
                    };
                    println!(
                        "  {:<11} {}  ({} attempts, {due}): {}",
                        r.state.as_str(),
                        r.id,
                        r.attempts,
                        r.last_error.as_deref().unwrap_or("")
                    );
                }
            }
            Ok(0)
        }
        Command::Retry { pipeline, quarantined, failed, unresolved, forget_resolutions } => {
            init_logging(cli.log_format, None);
            let p = runtime::load_pipeline(&pipeline)?;
            let ledger = open_ledger(&p)?;
            let mut states = Vec::new();
            if failed || !(quarantined || unresolved) {
                states.push(Outcome::Failed);
            }
            if unresolved || !(quarantined || failed) {
                states.push(Outcome::Unresolved);
            }
            if quarantined {
                states.push(Outcome::Quarantined);
            }
            let n = ledger.requeue(&states)?;
            let names: Vec<&str> = states.iter().map(|s| s.as_str()).collect();
            println!("{n} item(s) ({}) will be tried on the next run", names.join(", "));
            if forget_resolutions {
                let k = ledger.clear_resolution_cache()?;
                println!("forgot {k} cached patient resolution(s)");
            }
            Ok(0)
        }
        Command::Serve { pipeline, listen } => {
            init_logging(cli.log_format, None);
            let p = runtime::load_pipeline(&pipeline)?;
            ferry::serve::serve(p, listen, &Options::from_env()).await?;
            Ok(0)
        }
        Command::Token { pipeline, role, ttl, subject, clinic } => {
            let p = runtime::load_pipeline(&pipeline)?;
            let ttl = ferry::config::parse_duration(&ttl).map_err(anyhow::Error::msg)?;
            println!("{}", ferry::serve::auth::token_command(&p, &role, ttl, &subject, clinic.as_deref())?);
            Ok(0)
        }
        Command::Reseal { pipeline } => {
            init_logging(cli.log_format, None);
            let p = runtime::load_pipeline(&pipeline)?;
            let cfg =
                p.serve.as_ref().and_then(|s| s.records.as_ref()).ok_or_else(|| {
                    anyhow::anyhow!("{} has no [serve.records]: nothing is sealed", pipeline.display())
                })?;
            let records = ferry::serve::records::Records::new(cfg)?;
            let ledger = open_ledger(&p)?;
            let (rewritten, current) = records.reseal_all(&ledger)?;
            println!(
                "resealed {rewritten} patient record(s) with key {}; {current} already were",
                records.key_ids()[0]
            );
            Ok(0)
        }
        Command::Log { pipeline, patient, limit } => {
            init_logging(cli.log_format, None);
            let p = runtime::load_pipeline(&pipeline)?;
            let ledger = open_ledger(&p)?;
            for e in ledger.log_entries(patient.as_deref(), limit)? {
                println!(
                    "#{:<6} {:>8}  {:<18} {:<7} {}  {}{}",
                    e.id,
                    ago(e.at),
                    e.action,
                    e.status,
                    e.item_id,
                    e.patient_guid.as_deref().map(|g| format!("patient {g} ")).unwrap_or_default(),
                    e.details
                );
            }
            Ok(0)
        }
    }
}

/// One pass with progress and the summary line.
async fn run_pass(runtime: &Runtime, cancel: &CancellationToken, progress: Option<&ProgressBar>) -> Arc<Summary> {
    let started = std::time::Instant::now();
    let summary = Arc::new(Summary::default());
    let ticker = progress.cloned().map(|pb| {
        let summary = summary.clone();
        tokio::spawn(async move {
            loop {
                pb.set_message(progress_message(&summary));
                pb.tick();
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    });
    runtime.run_once(cancel.child_token(), summary.clone()).await;
    if let Some(t) = ticker {
        t.abort();
    }
    if let Some(pb) = progress {
        pb.set_message(String::new());
    }
    for e in summary.errors() {
        eprintln!("error: {e}");
    }
    let line = summary.line();
    match progress {
        Some(pb) => pb.println(&line),
        None => println!("{line}"),
    }
    let (hits, misses) = summary.cache_stats();
    tracing::info!(elapsed = ?started.elapsed(), resolution_cache_hits = hits, resolver_calls_keys = misses, "pass finished");
    summary
}

fn open_ledger(p: &ferry::config::Pipeline) -> Result<SqliteLedger> {
    let path = p.ledger_path();
    if !path.exists() {
        anyhow::bail!(
            "no ledger at {}: the pipeline has not run yet (or [pipeline] state_dir differs)",
            path.display()
        );
    }
    Ok(SqliteLedger::open(&path)?)
}

/// `3m ago`, for timestamps in ms.
fn ago(ms: i64) -> String {
    let secs = ((ferry::ledger::now_ms() - ms) / 1000).max(0) as u64;
    format!("{} ago", ferry::stage::humantime(Duration::from_secs(secs.max(1))))
}

fn parse_every(s: &str) -> Result<Duration, String> {
    ferry::config::parse_duration(s)
}

fn progress_message(s: &Summary) -> String {
    format!(
        "scanned {} · stored {} · unchanged {} · skipped {} · unresolved {} · quarantined {} · failed {} · deferred {}",
        s.scanned(),
        s.count(Outcome::Stored),
        s.count(Outcome::Unchanged),
        s.count(Outcome::Skipped),
        s.count(Outcome::Unresolved),
        s.count(Outcome::Quarantined),
        s.count(Outcome::Failed),
        s.count(Outcome::Deferred)
    )
}

/// `ferry precompile`: every plugin named (files or folders of `.wasm`)
/// compiled into the cache; exit 1 if one does not compile.
fn precompile(paths: Vec<PathBuf>) -> Result<i32> {
    let Some(cache) = ferry::plugin::default_cache_dir() else {
        anyhow::bail!("no cache folder: set $FERRY_CACHE_DIR (or $HOME)");
    };
    let paths = if paths.is_empty() {
        match std::env::var_os("FERRY_PLUGIN_DIR").filter(|d| !d.is_empty()) {
            Some(dir) => vec![PathBuf::from(dir)],
            None => anyhow::bail!("name the plugins (files or folders), or set $FERRY_PLUGIN_DIR"),
        }
    } else {
        paths
    };
    let mut files = Vec::new();
    for path in paths {
        if path.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(&path)
                .with_context(|| format!("listing {}", path.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|e| e == "wasm") && p.is_file())
                .collect();
            found.sort();
            if found.is_empty() {
                anyhow::bail!("no .wasm file in {}", path.display());
            }
            files.extend(found);
        } else {
            files.push(path);
        }
    }
    let engine = ferry::stage::engine()?;
    let mut failed = 0;
    for file in &files {
        let started = std::time::Instant::now();
        match ferry::plugin::load(&engine, file, Some(&cache)) {
            Ok(p) if p.cached => println!("{}: already compiled", file.display()),
            Ok(_) => println!("{}: compiled in {:.1?}", file.display(), started.elapsed()),
            Err(e) => {
                failed += 1;
                println!("{}: {e}", file.display());
            }
        }
    }
    println!("{} plugin(s) in the cache {}", files.len() - failed, cache.display());
    Ok(if failed == 0 { 0 } else { 1 })
}

/// First Ctrl-C (or SIGTERM, a service manager's stop): stop scanning,
/// let in-flight items finish. A second Ctrl-C aborts.
fn spawn_ctrl_c(cancel: CancellationToken, progress: Option<ProgressBar>) {
    tokio::spawn(async move {
        ferry::serve::stop_signal().await;
        let msg = "stopping: finishing items in flight (Ctrl-C again to abort)";
        match &progress {
            Some(pb) => pb.println(msg),
            None => eprintln!("{msg}"),
        }
        cancel.cancel();
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("aborted");
            std::process::exit(130);
        }
    });
}

/// Logs to stderr, `FERRY_LOG` (or `RUST_LOG`) filter, default `info`.
/// With a progress bar, log lines are printed above it.
fn init_logging(format: LogFormat, progress: Option<ProgressBar>) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("FERRY_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let writer = move || -> Box<dyn Write> {
        match &progress {
            Some(pb) => Box::new(SuspendWriter(pb.clone())),
            None => Box::new(std::io::stderr()),
        }
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(writer);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Writes a log line above the progress bar instead of through it.
struct SuspendWriter(ProgressBar);

impl Write for SuspendWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.suspend(|| std::io::stderr().write_all(buf))?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}
