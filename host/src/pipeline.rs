//! Builds each stage from validated config and connects them with bounded channels.
//!
//! ```text
//!  CSV ──replay──▶ Kafka topic ──consumer──▶ transform pool ──▶ Snowflake sink
//!   │  (bad rows)                  (group)     (wasm threads)     (PUT + COPY + offsets, one txn)
//!   └──────────────▶ dead-letter topic ◀──────── quarantined ◀──── rows the table refuses
//!                                    consumer ◀── durable offsets ──┘ (commit to Kafka only then)
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Which halves of the pipeline run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunMode {
    /// Replay and consume concurrently.
    Full,
    /// Only replay the CSV into Kafka.
    ReplayOnly,
    /// Only consume, transform and load.
    ConsumeOnly,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Human,
    /// One JSON object per line.
    Json,
}

/// Runtime knobs from the command line (not the pipeline file).
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Which halves run.
    pub mode: RunMode,
    /// Stop once everything replayed (or, consume-only, everything up to the end offsets at start)
    /// is loaded.
    pub until_end: bool,
    /// Directory for embedded-mode state and the last run's summary.
    pub state_dir: PathBuf,
    /// Where to serve Prometheus metrics.
    pub metrics_addr: Option<SocketAddr>,
    /// Where to write the final JSON summary (also always written to `state_dir/last-run.json`).
    pub summary: Option<PathBuf>,
    /// Draw a live progress line when stderr is a TTY.
    pub progress: bool,
    /// Log format, to keep the progress line off JSON logs.
    pub log_format: LogFormat,
}

/// Sets up tracing on stderr; `RUST_LOG` overrides the default `info` level.
pub fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// Runs the pipeline; `Ok(false)` when the run finished but lost or failed something.
pub async fn run(_loaded: crate::config::LoadedConfig, _opts: RunOptions) -> anyhow::Result<bool> {
    anyhow::bail!("the pipeline is not wired yet")
}

/// Reconciles a finished run; `Ok(false)` on any gap.
pub async fn verify(
    _loaded: crate::config::LoadedConfig,
    _summary: &Path,
    _state_dir: &Path,
) -> anyhow::Result<bool> {
    anyhow::bail!("verify is not wired yet")
}
