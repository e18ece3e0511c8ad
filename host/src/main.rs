//! The `ferry` command line.
//!
//! ```text
//! ferry run PIPELINE.toml      one pass, progress on a terminal, summary line
//! ferry check PIPELINE.toml    validate config, load plugins, test grants
//! ```

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use clap::{Parser, Subcommand, ValueEnum};
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
    /// Run the pipeline once over everything the source has.
    Run {
        /// The pipeline file.
        pipeline: PathBuf,
        /// No progress bar, even on a terminal.
        #[arg(long)]
        no_progress: bool,
    },
    /// Validate the pipeline file, load every plugin, test every grant.
    Check {
        /// The pipeline file.
        pipeline: PathBuf,
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
        Command::Check { pipeline } => {
            init_logging(cli.log_format, None);
            let p = runtime::load_pipeline(&pipeline)?;
            println!("pipeline `{}` ({}): config ok", p.name, pipeline.display());
            let lines = runtime::check(&p, &Options::from_env()).await?;
            let failed = lines.iter().filter(|l| !l.ok).count();
            for l in &lines {
                println!("{l}");
            }
            Ok(if failed == 0 { 0 } else { 1 })
        }
        Command::Run { pipeline, no_progress } => {
            let progress = (!no_progress && std::io::stderr().is_terminal()).then(|| {
                let pb = ProgressBar::new_spinner();
                pb.set_style(ProgressStyle::with_template("{spinner} {elapsed_precise} {msg}").expect("valid template"));
                pb
            });
            init_logging(cli.log_format, progress.clone());
            let p = runtime::load_pipeline(&pipeline)?;
            let started = std::time::Instant::now();
            let runtime = Runtime::new(p, &Options::from_env()).await?;
            tracing::info!(pipeline = %runtime.pipeline.name, "pipeline ready in {:?}", started.elapsed());
            let cancel = CancellationToken::new();
            spawn_ctrl_c(cancel.clone(), progress.clone());
            let summary = Arc::new(Summary::default());
            let ticker = progress.clone().map(|pb| {
                let summary = summary.clone();
                tokio::spawn(async move {
                    loop {
                        pb.set_message(progress_message(&summary));
                        pb.tick();
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                })
            });
            runtime.run_once(cancel, summary.clone()).await;
            if let Some(t) = ticker {
                t.abort();
            }
            if let Some(pb) = progress {
                pb.finish_and_clear();
            }
            for e in summary.errors() {
                eprintln!("error: {e}");
            }
            println!("{}", summary.line());
            tracing::info!(elapsed = ?started.elapsed(), "run finished");
            Ok(if summary.has_failures() {
                1
            } else if summary.interrupted() {
                130
            } else {
                0
            })
        }
    }
}

fn progress_message(s: &Summary) -> String {
    format!(
        "scanned {} · stored {} · unchanged {} · skipped {} · unresolved {} · quarantined {} · failed {}",
        s.scanned(),
        s.count(Outcome::Stored),
        s.count(Outcome::Unchanged),
        s.count(Outcome::Skipped),
        s.count(Outcome::Unresolved),
        s.count(Outcome::Quarantined),
        s.count(Outcome::Failed)
    )
}

/// First Ctrl-C: stop scanning, let in-flight items finish. Second: abort.
fn spawn_ctrl_c(cancel: CancellationToken, progress: Option<ProgressBar>) {
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_err() {
            return;
        }
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
