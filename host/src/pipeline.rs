//! Builds each stage from validated config and connects them with bounded channels.
//!
//! ```text
//!  CSV ──replay──▶ Kafka topic ──consumer──▶ transform pool ──▶ Snowflake sink
//!   │  (bad rows)                  (group)     (wasm threads)     (PUT + COPY + offsets, one txn)
//!   └──────────────▶ dead-letter topic ◀──────── quarantined ◀──── rows the table refuses
//!                                    consumer ◀── durable offsets ──┘ (commit to Kafka only then)
//! ```
//!
//! Embedded defaults: with no `kafka.brokers`, a managed nisshi broker is started under the state
//! directory; with no `sink.account_url`, a fakesnow emulator is started with its database kept
//! under the state directory, so `sluice verify` can read the same data after the run.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::broker::ManagedBroker;
use crate::config::{KafkaConfig, LoadedConfig, PipelineConfig, SinkConfig};
use crate::consume::{self, ConsumerStats};
use crate::counted;
use crate::dead_letter::DeadLetterTx;
use crate::metrics::{Exposition, Render};
use crate::row::RecordMeta;
use crate::sink::snowflake::config::SnowflakeSinkConfig;
use crate::sink::snowflake::emulator::{self, Emulator};
use crate::sink::snowflake::sink::{ConnectOptions, SnowflakeSink};
use crate::sink::snowflake::stats::SinkStats;
use crate::source::config::{CsvSource, SourceConfig};
use crate::source::dlq::DeadLetterStats;
use crate::source::{self, ReplayStats};
use crate::transform::{FailureKind, RecordOutcome, TransformChain, TransformStats};

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
    /// How long a stop (Ctrl-C, SIGTERM) may take before the process exits without waiting
    /// for in-flight work.
    pub drain_timeout: std::time::Duration,
    /// Resume a replay stopped part-way: produce only the file's rows the topic does not hold
    /// yet (see [`source::resume`]).
    pub resume: bool,
}

/// One line in the shape of `--log-format json`'s log lines (timestamp, level, fields with the
/// message, target), for what sluice reports on stderr outside of `tracing`: the summary and the
/// final error, which `RUST_LOG` must not filter out, and which carry whole JSON objects rather
/// than text. `extra` (an object) goes into `fields` next to the message.
pub fn json_event(level: &str, message: &str, extra: serde_json::Value) -> String {
    let mut fields = serde_json::Map::new();
    fields.insert("message".into(), message.into());
    if let serde_json::Value::Object(extra) = extra {
        fields.extend(extra);
    }
    serde_json::json!({
        "timestamp": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        "level": level,
        "fields": fields,
        "target": "sluice",
    })
    .to_string()
}

/// Sets up tracing on stderr; `RUST_LOG` overrides the default `info` level.
pub fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    // The consumer leaves its group on its own poll thread, with a deadline (`consume.rs`), so
    // rdkafka's drop-time close of the already closed queue always fails and logs an ERROR on
    // every clean shutdown. That module's only other message is a warning about ignored events.
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,rdkafka::consumer::base_consumer=off"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // https://no-color.org: a non-empty NO_COLOR turns colour off, on a terminal too.
        .with_ansi(
            std::io::IsTerminal::is_terminal(&std::io::stderr())
                && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
        )
        .with_writer(|| LogWriter)
        // Its own report of a failed write is an `eprintln!`, which panics when stderr's reader
        // has gone (`2>&1 | head`): a log line that cannot be written is dropped instead.
        .log_internal_errors(false);
    let _ = match format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// The progress line while it is drawn, so that log lines can be written around it.
static PROGRESS_BAR: std::sync::Mutex<Option<indicatif::ProgressBar>> = std::sync::Mutex::new(None);

/// stderr for log lines. While the progress line is drawn, a line written straight to stderr
/// would land in the middle of it (and be overwritten at the next redraw): it is written with
/// the progress line cleared, then the progress line is drawn again under it.
struct LogWriter;

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let bar = PROGRESS_BAR
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let text = String::from_utf8_lossy(buf);
        let shown = crate::config::redact_output(&text);
        write_under(bar.as_ref(), &mut std::io::stderr(), shown.as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::Write::flush(&mut std::io::stderr())
    }
}

/// Writes `buf` to `out` with `bar`, if any, hidden meanwhile.
fn write_under(
    bar: Option<&indicatif::ProgressBar>,
    out: &mut impl std::io::Write,
    buf: &[u8],
) -> std::io::Result<()> {
    match bar {
        Some(bar) => bar.suspend(|| out.write_all(buf)),
        None => out.write_all(buf),
    }
}

/// The final account of a run: printed at its end, and written as JSON to `--summary` and to
/// `last-run.json` in the state directory.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
pub struct RunSummary {
    /// Pipeline name.
    pub pipeline: String,
    /// Unique id of this run.
    pub run_id: String,
    /// The Kafka topic it replayed into or consumed (empty in summaries older than this field).
    #[serde(default)]
    pub topic: String,
    /// `full`, `replay_only` or `consume_only`.
    pub mode: String,
    /// Start time, RFC 3339.
    pub started_at: String,
    /// Wall time of the run, in milliseconds.
    pub duration_ms: u64,
    /// The replay half: null when it did not run (`--consume-only`).
    pub replay: Option<ReplayPart>,
    /// The consume half: null when it did not run (`--replay-only`, `sluice replay`).
    pub consume: Option<ConsumePart>,
    /// Dead letters stored by this run.
    pub dead_letters: u64,
    /// Dead letters this run did not store again: the same letters of the same records (set
    /// aside before a restart or a rebalance, and consumed again from the warehouse's offsets)
    /// were in the topic already, written by this pipeline.
    #[serde(default)]
    pub dead_letters_already_stored: u64,
    /// The dead-letter topic.
    pub dead_letter_topic: String,
    /// Whether nothing was lost and nothing failed.
    pub ok: bool,
    /// What went wrong, if anything.
    pub problems: Vec<String>,
    /// What looks wrong though nothing was lost: most of the file's rows bad, most of a
    /// transform's rows failing or of the sink's refused, a replay into a topic that already held
    /// messages.
    #[serde(default)]
    pub warnings: Vec<String>,
    /// Set in the summary a run writes as it starts, until its own replaces it: the run is still
    /// going, or died.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unfinished: bool,
}

/// The replay half's numbers.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
pub struct ReplayPart {
    /// The CSV file.
    pub file: String,
    /// CSV records read (good and bad), over all loops; not a bad row that stopped the replay
    /// (`on_error: fail`), which waits in the file.
    pub rows_read: u64,
    /// Rows confirmed by the broker.
    pub rows_produced: u64,
    /// Bad rows sent to the dead-letter topic.
    pub rows_dead_lettered: u64,
    /// Bad rows skipped under `on_error: drop`.
    pub rows_dropped: u64,
    /// Whether the replay was resumed (`--resume`): it produced only the rows the topic did not
    /// hold yet.
    #[serde(default)]
    pub resumed: bool,
    /// Rows a resumed replay did not produce, because the topic held them already.
    #[serde(default)]
    pub rows_already_produced: u64,
    /// Bad rows a resumed replay did not dead-letter, because this pipeline's letters of them
    /// were in the dead-letter topic already.
    #[serde(default)]
    pub rows_already_dead_lettered: u64,
    /// The topic's end offsets after the replay (partition to offset).
    pub end_offsets: BTreeMap<i32, i64>,
    /// The topic's end offsets before the replay: messages below them are earlier runs'.
    #[serde(default)]
    pub start_offsets: BTreeMap<i32, i64>,
}

/// The consume half's numbers.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
pub struct ConsumePart {
    /// Records consumed (and accounted for) by this run.
    pub records: u64,
    /// Of those, records this run had consumed before: a partition revoked before they were
    /// loaded starts again from the warehouse's offset.
    #[serde(default)]
    pub records_redelivered: u64,
    /// Records whose message could not be decoded (dead-lettered).
    pub undecodable: u64,
    /// Records of the batch in the transform chain when the run stopped (the chain failing on
    /// it, or a stop not waiting for it) that entered the chain (its counters count them, as
    /// unfinished): not accounted for here, they wait in the topic.
    #[serde(default)]
    pub records_unfinished: u64,
    /// Records a transform's failure dropped under `on_error: drop`: thrown away on purpose, in
    /// neither the table nor the dead letters.
    #[serde(default)]
    pub records_dropped: u64,
    /// Per transform, in chain order.
    pub transforms: Vec<TransformPart>,
    /// Rows that reached the sink.
    pub rows_to_sink: u64,
    /// Rows COPY loaded.
    pub rows_loaded: u64,
    /// Rows the sink dead-lettered (table could not take them).
    pub sink_dead_lettered: u64,
    /// Rows the sink did not load because another delivery of their record is, or was (a
    /// partition revoked before they were loaded comes again).
    #[serde(default)]
    pub rows_redelivered: u64,
    /// Files loaded, each by a COPY in a committed transaction.
    pub files: u64,
    /// The target table.
    pub table: String,
    /// Rows in the table before the run (null: they could not be counted).
    #[serde(default)]
    pub table_rows_before: Option<u64>,
    /// Rows in the table after the run (null: they could not be counted, as when the warehouse
    /// failed during the run).
    #[serde(default)]
    pub table_rows_after: Option<u64>,
    /// The durable (warehouse-committed) next offsets at the end, per partition.
    pub committed_offsets: BTreeMap<i32, i64>,
    /// The offset of the first record this run consumed, per partition it consumed from: where
    /// it resumed (from the warehouse's offsets, else the group's, else the earliest kept).
    #[serde(default)]
    pub start_offsets: BTreeMap<i32, i64>,
}

/// One transform's numbers.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
pub struct TransformPart {
    /// Its name.
    pub name: String,
    /// Rows in.
    pub rows_in: u64,
    /// Rows out.
    pub rows_out: u64,
    /// Rows the transform filtered out (a failed row counts as failed only).
    pub rows_dropped: u64,
    /// Rows that failed (their records quarantined or dropped by policy).
    pub rows_failed: u64,
    /// `rows_failed` by kind (`trap`, `timeout`, `guest_error`, ... as in dead letters), only the
    /// kinds that happened.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub rows_failed_by_kind: BTreeMap<String, u64>,
    /// Rows it emitted that were thrown away with their record, which failed on another row.
    #[serde(default)]
    pub rows_discarded: u64,
    /// Rows of a batch that failed as a whole, left unprocessed (their records are kept): in
    /// this transform, or, for the last one, rows it emitted for a batch that failed elsewhere.
    #[serde(default)]
    pub rows_unfinished: u64,
    /// Batch calls that trapped or broke the contract while none of their rows did so alone:
    /// the transform breaks only on batches (each row ran again alone and came out right).
    #[serde(default)]
    pub batch_only_failures: u64,
    /// Instances thrown away and rebuilt after a trap or a limit (each poison record's, and one
    /// whose memory, grown by earlier calls, reached `memory_mb`): what each kept between batches
    /// (a dedupe's seen keys) went with it.
    #[serde(default)]
    pub instance_restarts: u64,
    /// Fuel its calls consumed, when it has a `fuel` budget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fuel_consumed: Option<u64>,
    /// Wall time spent in its batch calls (lowering, the guest's work, lifting; the row-by-row
    /// calls that isolate a failure included), in nanoseconds.
    #[serde(default)]
    pub call_time_ns: u64,
}

/// The JSON Schema of a run's summary (`sluice schema --summary`), each field described.
pub fn summary_schema() -> serde_json::Value {
    serde_json::to_value(schemars::schema_for!(RunSummary)).unwrap_or_default()
}

impl TransformPart {
    /// ` (2 guest_error, 1 trap)` when rows failed, to follow the failed count.
    fn failed_kinds(&self) -> String {
        if self.rows_failed_by_kind.is_empty() {
            return String::new();
        }
        let kinds: Vec<String> = (self.rows_failed_by_kind.iter())
            .map(|(kind, n)| format!("{n} {kind}"))
            .collect();
        format!(" ({})", kinds.join(", "))
    }
}

impl std::fmt::Display for TransformPart {
    /// The summary's line for it: `filter: 3000 in, 884 out, 2116 dropped, 0 failed`, and
    /// `, N discarded with their record` when there were such rows.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {} in, {} out, {} dropped, {} failed",
            self.name, self.rows_in, self.rows_out, self.rows_dropped, self.rows_failed
        )?;
        f.write_str(&self.failed_kinds())?;
        if self.rows_discarded > 0 {
            write!(f, ", {} discarded with their record", self.rows_discarded)?;
        }
        if self.rows_unfinished > 0 {
            write!(
                f,
                ", {} unfinished (their batch failed as a whole)",
                self.rows_unfinished
            )?;
        }
        if self.batch_only_failures > 0 {
            write!(
                f,
                ", {} broke only as a batch",
                counted(self.batch_only_failures, "batch call")
            )?;
        }
        if self.instance_restarts > 0 {
            write!(
                f,
                ", {} rebuilt (the state each held lost)",
                counted(self.instance_restarts, "instance")
            )?;
        }
        if let Some(fuel) = self.fuel_consumed {
            write!(f, ", fuel consumed {fuel}")?;
        }
        // Which transform of a chain is the slow one, without a metrics scrape or a profiler.
        if self.call_time_ns > 0 {
            let total = Duration::from_nanos(self.call_time_ns);
            write!(f, "; {} in its calls", short_duration(total))?;
            if self.rows_in > 0 {
                let per_row = total.as_nanos() / u128::from(self.rows_in);
                write!(
                    f,
                    ", {} a row",
                    short_duration(Duration::from_nanos(per_row as u64))
                )?;
            }
        }
        Ok(())
    }
}

/// A duration with three significant digits at most, in the largest unit below it: `840 ns`,
/// `12.3 µs`, `4.56 ms`, `7.89 s`.
fn short_duration(d: Duration) -> String {
    if d.as_nanos() < 1000 {
        return format!("{} ns", d.as_nanos());
    }
    let digits = |v: f64| match v {
        v if v < 10.0 => format!("{v:.2}"),
        v if v < 100.0 => format!("{v:.1}"),
        v => format!("{v:.0}"),
    };
    let ns = d.as_nanos() as f64;
    for (scale, unit) in [(1e3, "µs"), (1e6, "ms")] {
        // Rounded, 999.96 µs is 1000 µs: that is 1.00 ms.
        let text = digits(ns / scale);
        if text.parse::<f64>().is_ok_and(|v| v < 1000.0) {
            return format!("{text} {unit}");
        }
    }
    format!("{} s", digits(ns / 1e9))
}

/// Ctrl-C (SIGINT) and SIGTERM, the signal a service manager or Kubernetes stops a process with:
/// both stop a run the same way.
struct StopSignals {
    term: tokio::signal::unix::Signal,
    /// When the first stop signal came.
    first: Option<Instant>,
}

/// How soon after the first stop signal another is taken for the same stop. GNU `timeout`, and
/// process managers that stop a whole process group, signal both the process and its group,
/// so one stop may arrive twice within microseconds; taken as a second stop, it ended the run
/// at once with no summary.
const REPEATED_SIGNAL: Duration = Duration::from_millis(500);

impl StopSignals {
    fn install() -> anyhow::Result<StopSignals> {
        let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("cannot handle SIGTERM")?;
        Ok(StopSignals { term, first: None })
    }

    /// The next stop signal's description, `None` if signals can no longer be received.
    async fn next(&mut self) -> Option<&'static str> {
        loop {
            let name = tokio::select! {
                r = tokio::signal::ctrl_c() => r.ok().map(|()| "Interrupted"),
                r = self.term.recv() => r.map(|()| "Terminated (SIGTERM)"),
            }?;
            match self.first {
                Some(first) if first.elapsed() < REPEATED_SIGNAL => {
                    tracing::debug!("{name} again at once; taken for the same stop.");
                }
                Some(_) => return Some(name),
                None => {
                    self.first = Some(Instant::now());
                    return Some(name);
                }
            }
        }
    }
}

/// Kafka and Snowflake endpoints, external or started here.
struct Services {
    bootstrap: String,
    _broker: Option<ManagedBroker>,
    emulator: Option<Emulator>,
    emulator_db: Option<PathBuf>,
    /// Held while the managed broker or emulator runs on the state directory's data.
    _lock: Option<std::fs::File>,
}

/// Locks `state_dir` for this process. A second run on the same directory would start a second
/// broker on the same SQLite files and a second emulator on the same database, and both runs
/// would fail in confusing ways; it is refused instead. The lock goes with the process, however
/// it ends.
fn lock_state_dir(state_dir: &Path) -> anyhow::Result<std::fs::File> {
    std::fs::create_dir_all(state_dir)
        .with_context(|| format!("cannot create state directory {}", state_dir.display()))?;
    let path = state_dir.join("lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => anyhow::bail!(
            "another sluice process is using the state directory {} (its managed broker or \
             emulator); wait for it to end, or give this one its own --state-dir",
            state_dir.display()
        ),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("cannot lock {}", path.display()))
        }
    }
}

/// Whether another process holds `state_dir`'s lock: a run on it is still going.
fn state_dir_in_use(state_dir: &Path) -> bool {
    std::fs::OpenOptions::new()
        .write(true)
        .open(state_dir.join("lock"))
        .is_ok_and(|f| matches!(f.try_lock(), Err(std::fs::TryLockError::WouldBlock)))
}

impl Services {
    /// Starts what the pipeline needs (a managed broker, a managed emulator), locking the state
    /// directory while they use it. `locked` runs once the lock is held (or at once, when no
    /// service is managed), before anything starts: a run writes its placeholder summary there,
    /// where no other run can be writing its own and before a slow or failing start.
    async fn start(
        cfg: &PipelineConfig,
        state_dir: &Path,
        need_sink: bool,
        locked: impl FnOnce() -> anyhow::Result<()>,
    ) -> anyhow::Result<Services> {
        let SinkConfig::Snowflake(sf) = &cfg.sink;
        let managed_broker = cfg.kafka.brokers.trim().is_empty();
        let managed_emulator = need_sink && sf.account_url.trim().is_empty();
        let lock = if managed_broker || managed_emulator {
            Some(lock_state_dir(state_dir)?)
        } else {
            None
        };
        locked()?;
        let (bootstrap, broker) = if managed_broker {
            let dir = state_dir.join("broker");
            let broker = tokio::task::spawn_blocking(move || ManagedBroker::start(&dir))
                .await?
                .context("cannot start the managed local broker (no kafka.brokers configured)")?;
            info!(bootstrap = %broker.bootstrap(), "Started a managed local Kafka broker (nisshi) because no brokers are configured.");
            (broker.bootstrap(), Some(broker))
        } else {
            (cfg.kafka.brokers.clone(), None)
        };
        let (emulator, emulator_db) = if managed_emulator {
            let db = std::path::absolute(state_dir.join("snowflake"))?;
            std::fs::create_dir_all(&db)?;
            let venv = emulator::find_venv(
                Path::new(env!("CARGO_MANIFEST_DIR"))
                    .parent()
                    .unwrap_or(Path::new(".")),
            )
            .or_else(|_| emulator::find_venv(Path::new(".")))?;
            let emu = tokio::task::spawn_blocking(move || Emulator::start(&venv))
                .await?
                .context(
                    "cannot start the local Snowflake emulator (no sink.account_url configured)",
                )?;
            info!(url = %emu.url(), db = %db.display(), "Started a local Snowflake emulator (fakesnow) because no account_url is configured.");
            (Some(emu), Some(db))
        } else {
            (None, None)
        };
        Ok(Services {
            bootstrap,
            _broker: broker,
            emulator,
            emulator_db,
            _lock: lock,
        })
    }

    fn connect_options(&self) -> ConnectOptions {
        match (&self.emulator, &self.emulator_db) {
            (Some(emu), Some(db)) => ConnectOptions::emulator(emu.url(), &db.to_string_lossy()),
            _ => ConnectOptions::default(),
        }
    }
}

/// The dead-letter topic: configured, else `<topic>.dlq`.
pub fn dead_letter_topic(cfg: &PipelineConfig) -> String {
    cfg.dead_letter
        .topic
        .clone()
        .unwrap_or_else(|| format!("{}.dlq", cfg.kafka.topic))
}

fn group_id(cfg: &PipelineConfig) -> String {
    cfg.kafka
        .group_id
        .clone()
        .unwrap_or_else(|| format!("sluice-{}", cfg.name))
}

/// The sink section with `${VAR:-}` references that came out empty treated as unset, so one
/// pipeline file serves both password and key-pair logins (and the emulator), and with
/// `private_key_path` relative to the pipeline file, as `validate` checks it, not to the current
/// directory.
pub(crate) fn snowflake(loaded: &LoadedConfig) -> SnowflakeSinkConfig {
    let SinkConfig::Snowflake(sf) = &loaded.config.sink;
    let mut sf = sf.clone();
    for opt in [
        &mut sf.password,
        &mut sf.private_key_path,
        &mut sf.private_key,
        &mut sf.private_key_passphrase,
        &mut sf.role,
        &mut sf.warehouse,
    ] {
        if opt.as_deref().is_some_and(|s| s.trim().is_empty()) {
            *opt = None;
        }
    }
    if let Some(path) = &mut sf.private_key_path {
        *path = loaded.resolve(path).to_string_lossy().into_owned();
    }
    sf
}

/// The summary's name for a mode.
fn mode_name(mode: RunMode) -> &'static str {
    match mode {
        RunMode::Full => "full",
        RunMode::ReplayOnly => "replay_only",
        RunMode::ConsumeOnly => "consume_only",
    }
}

/// Writes `summary`, secrets masked, to `last-run.json` in the state directory and to
/// `--summary`.
fn write_summary(opts: &RunOptions, summary: &RunSummary) -> anyhow::Result<()> {
    let mut json = serde_json::to_value(summary)?;
    crate::config::redact_output_json(&mut json);
    let text = serde_json::to_string_pretty(&json)?;
    let last = opts.state_dir.join("last-run.json");
    for path in std::iter::once(&last).chain(&opts.summary) {
        write_whole(path, text.as_bytes())
            .with_context(|| format!("cannot write summary {}", path.display()))?;
    }
    Ok(())
}

/// Writes `bytes` to a file beside `path`, then renames it over `path`: a run killed (or a
/// second Ctrl-C) mid-write leaves the old file or the new one, never half of one, which
/// `verify` would take for a file that is no summary at all.
fn write_whole(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    // A pipe, a device (`/dev/stdout`) or a symlink is written through, not replaced.
    match std::fs::symlink_metadata(path) {
        Ok(meta) if !meta.is_file() => return std::fs::write(path, bytes),
        _ => {}
    }
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{}.tmp", std::process::id()));
    let temp = path.with_file_name(name);
    match std::fs::write(&temp, bytes).and_then(|()| std::fs::rename(&temp, path)) {
        Ok(()) => Ok(()),
        // A directory the run may not write in, or a file mounted on its own (a container's
        // bind mount cannot be renamed over): written in place, as it can be.
        Err(_) => {
            let _ = std::fs::remove_file(&temp);
            std::fs::write(path, bytes)
        }
    }
}

/// "cannot connect to Snowflake at URL", naming the account the operator configured (or the
/// local emulator).
fn snowflake_at(loaded: &LoadedConfig) -> String {
    let sf = snowflake(loaded);
    match sf.account_url.trim() {
        "" => "cannot connect to the local Snowflake emulator".to_owned(),
        url => format!("cannot connect to Snowflake at {url}"),
    }
}

/// Every stage's counters, for metrics, the progress line and the summary.
#[derive(Default)]
struct AllStats {
    replay: Arc<ReplayStats>,
    consumer: Option<Arc<ConsumerStats>>,
    transforms: Vec<(String, Arc<TransformStats>)>,
    sink: Option<Arc<SinkStats>>,
    dead_letters: Option<Arc<DeadLetterStats>>,
}

/// Runs the pipeline. `chain`: the transforms, loaded by [`crate::validate::validate_and_load`]
/// (a run that only replays has none). Returns the summary's problems: empty when the run
/// finished without losing or failing anything.
pub async fn run(
    loaded: LoadedConfig,
    chain: Option<TransformChain>,
    opts: RunOptions,
) -> anyhow::Result<Vec<String>> {
    let cfg = &loaded.config;
    let broker_data = opts.state_dir.join("broker");
    if opts.mode == RunMode::ConsumeOnly
        && cfg.kafka.brokers.trim().is_empty()
        && !broker_data.is_dir()
    {
        // A broker started there would be empty: the wait for the topic would never end.
        return Err(crate::transform::cli::UsageError(anyhow::anyhow!(
            "no managed broker's data in {}: no run used that state directory, so the topic {} \
             is in no broker this run can start; pass the --state-dir of the run that replayed \
             it (it is relative to where that run started)",
            broker_data.display(),
            cfg.kafka.topic
        ))
        .into());
    }
    std::fs::create_dir_all(&opts.state_dir)
        .with_context(|| format!("cannot create state directory {}", opts.state_dir.display()))?;
    if let Some(dir) = opts.summary.as_deref().and_then(Path::parent)
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create the --summary directory {}", dir.display()))?;
    }
    let started = chrono::Utc::now();
    let t0 = Instant::now();
    let cancel = CancellationToken::new();
    // Set on Ctrl-C, as opposed to a stop because the other half failed.
    let interrupted = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Cancelled once both halves have ended: the drain timeout no longer applies.
    let drained = CancellationToken::new();
    {
        let (cancel, interrupted, drained) = (cancel.clone(), interrupted.clone(), drained.clone());
        let drain_timeout = opts.drain_timeout;
        let mut signals = StopSignals::install()?;
        tokio::spawn(async move {
            let Some(name) = signals.next().await else {
                return;
            };
            warn!("{name}; stopping after in-flight work (again to exit at once).");
            interrupted.store(true, Ordering::Relaxed);
            cancel.cancel();
            let exit_now = |again: &str| -> ! {
                error!(
                    exit_code = 130,
                    "{again} again; exiting now without waiting for in-flight work. What the \
                     warehouse committed is kept: `sluice run --consume-only` resumes from it \
                     (`--resume`, a replay stopped part-way)."
                );
                std::process::exit(130);
            };
            // A stop that hangs (a warehouse that no longer answers, say) must not leave the
            // operator with `kill -9` as the only way out, nor wait out HTTP timeouts and
            // retries (minutes): it is bounded, and a second signal ends it at once.
            tokio::select! {
                Some(again) = signals.next() => exit_now(again),
                // The work is done: what is left (the summary, stopping the services) is not
                // cut off by the timeout, though a second signal still ends it.
                () = drained.cancelled() => {
                    if let Some(again) = signals.next().await {
                        exit_now(again);
                    }
                }
                () = tokio::time::sleep(drain_timeout) => {
                    error!(
                        exit_code = 1,
                        "{name}, and in-flight work did not finish within {}s \
                         (--drain-timeout); exiting without it. What the warehouse committed is \
                         kept: `sluice run --consume-only` resumes from it (`--resume`, a replay \
                         stopped part-way).",
                        drain_timeout.as_secs_f64()
                    );
                    std::process::exit(1);
                }
            }
        });
    }
    let replays = opts.mode != RunMode::ConsumeOnly;
    let consumes = opts.mode != RunMode::ReplayOnly;
    let sink_batch = snowflake(&loaded).batch;
    if consumes && cfg.kafka.max_in_flight < sink_batch.max_rows {
        // Records are committed only once loaded, so no more than this many are ever waiting
        // in a sink batch: it never fills, and every file waits out `max_latency_ms`.
        warn!(
            max_in_flight = cfg.kafka.max_in_flight,
            max_rows = sink_batch.max_rows,
            max_latency_ms = sink_batch.max_latency_ms,
            "kafka.max_in_flight is below sink.batch.max_rows: a sink batch can never fill, so \
             each load waits sink.batch.max_latency_ms. Raise max_in_flight or lower max_rows."
        );
    }
    // Until the run writes its own, the summary files say that it has not finished: a run cut
    // off (killed, failing to start its services, or out of --drain-timeout) must not leave the
    // previous run's summary for `verify` to pass.
    let run_id = uuid::Uuid::new_v4().to_string();
    let placeholder = RunSummary {
        pipeline: cfg.name.clone(),
        run_id: run_id.clone(),
        mode: mode_name(opts.mode).to_owned(),
        started_at: started.to_rfc3339(),
        topic: cfg.kafka.topic.clone(),
        dead_letter_topic: dead_letter_topic(cfg),
        problems: vec![format!(
            "the run did not finish: it failed before it could write its summary (its error \
             said why), was killed, or exited at --drain-timeout; {}",
            match opts.mode {
                RunMode::Full =>
                    "`sluice run --resume` finishes its replay and loads from what \
                                  the warehouse holds",
                RunMode::ReplayOnly => "`sluice replay --resume` finishes its replay",
                RunMode::ConsumeOnly =>
                    "`sluice run --consume-only` resumes from what the \
                                         warehouse holds",
            }
        )],
        unfinished: true,
        ..RunSummary::default()
    };
    // Before any service starts: an address in use ends the run before a broker, an emulator
    // or the replay does anything.
    let metrics_listener = match opts.metrics_addr {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot serve metrics on {addr}"))?,
        ),
        None => None,
    };
    let services = Services::start(cfg, &opts.state_dir, consumes, || {
        write_summary(&opts, &placeholder)
    })
    .await?;
    let bootstrap = services.bootstrap.clone();
    // An unbounded consume waits for its topic to be made; a bounded one has nothing to drain,
    // and waited for good on a misspelt name.
    if opts.mode == RunMode::ConsumeOnly
        && opts.until_end
        && !source::producer::topic_exists(&cfg.kafka, &bootstrap, &cfg.kafka.topic)
            .await
            .context("cannot read the topic's metadata")?
    {
        anyhow::bail!(
            "topic {} does not exist on {bootstrap}, so a --consume-only --until-end run has \
             nothing to load (check kafka.topic; without --until-end the run waits for it to be \
             made)",
            cfg.kafka.topic
        );
    }
    let dlq_topic = dead_letter_topic(cfg);
    let (dlq_tx, dlq_task) = source::dlq::spawn(&cfg.kafka, &bootstrap, &dlq_topic, 1024)
        .await
        .with_context(|| format!("cannot set up the dead-letter topic {dlq_topic}"))?;
    // A hash, not the name: a name may be made from a secret.
    let pipeline_id = blake3::hash(cfg.name.as_bytes()).to_hex()[..16].to_owned();
    dlq_task.lettered.stamp(&pipeline_id);
    let dlq_start = consume::end_offsets(&cfg.kafka, &bootstrap, &dlq_topic)
        .await
        .unwrap_or_default();

    let mut stats = AllStats {
        dead_letters: Some(dlq_task.stats.clone()),
        ..AllStats::default()
    };
    // What the topic held before this replay: a consume half also reads earlier runs' messages
    // that no run loaded, and `verify` must tell those from this replay's.
    let topic_start = match replays {
        true => consume::end_offsets(&cfg.kafka, &bootstrap, &cfg.kafka.topic)
            .await
            .unwrap_or_else(|e| {
                warn!(
                    topic = %cfg.kafka.topic,
                    "cannot read where the topic ends before the replay ({}); messages it \
                     already holds will read as this replay's, and `verify` may report them \
                     as a gap",
                    crate::error_chain(&e)
                );
                BTreeMap::new()
            }),
        false => BTreeMap::new(),
    };

    // The consume half's parts are built before the replay starts so that an unreachable
    // warehouse fails the run before anything is produced (the components were checked before
    // anything started).
    let mut retention_warning = None;
    let consume_parts = if consumes {
        let SourceConfig::Csv(csv) = &cfg.source;
        let sink = Arc::new(
            SnowflakeSink::connect(&snowflake(&loaded), &cfg.name, services.connect_options())
                .await
                .with_context(|| snowflake_at(&loaded))?
                .with_type_hints(csv.schema.clone()),
        );
        sink.check_table_exists()
            .await
            .context("the table to load into, checked before the run")?;
        let rows_before = count_table(&sink, "before the run").await;
        retention_warning =
            check_topic_against_warehouse(&sink, cfg, &bootstrap, &opts.state_dir).await?;
        if replays && !opts.resume {
            warn_of_a_second_replay(Some(&sink), cfg, &bootstrap, &topic_start).await;
        }
        let chain = chain.context("the transform chain was not loaded for a run that consumes")?;
        stats.transforms = chain.stats();
        stats.sink = Some(sink.stats());
        Some((sink, Arc::new(chain), rows_before))
    } else {
        None
    };
    if replays && !consumes && !opts.resume {
        warn_of_a_second_replay(None, cfg, &bootstrap, &topic_start).await;
    }
    let consumer_stats = Arc::new(ConsumerStats::default());
    if consumes {
        stats.consumer = Some(consumer_stats.clone());
    }
    let stats = Arc::new(stats);

    let metrics_stop = CancellationToken::new();
    if let Some(listener) = metrics_listener {
        let render = render_metrics(stats.clone(), cfg.name.clone());
        let bound = crate::metrics::serve(listener, render, metrics_stop.clone())
            .context("cannot serve metrics")?;
        info!(addr = %bound, "Serving Prometheus metrics at http://{bound}/metrics.");
    }
    let progress = (opts.progress && opts.log_format == LogFormat::Human)
        .then(|| spawn_progress(stats.clone(), replays));

    // The two halves run concurrently in this task (the replay future is not `Send`). A failing
    // consume half does not stop the replay: it finishes the file, unpaced (waiting out hours of
    // pacing would keep a failed run from exiting), so that every row is in the topic for
    // `--consume-only` to load once the cause is fixed. Cut short, the rest of the file would be
    // in no topic, and no resume could load it.
    let csv = csv_source(cfg)?;
    let replay_done = CancellationToken::new();
    let consume_failed = CancellationToken::new();
    let replay_half = async {
        if !replays {
            replay_done.cancel();
            return None;
        }
        let rc = source::ReplayConfig {
            source: &csv,
            base_dir: &loaded.base_dir,
            kafka: &cfg.kafka,
            bootstrap: &bootstrap,
            unpaced: Some(consume_failed.clone()),
            resume: opts.resume.then(|| source::resume::Resume {
                dead_letter_topic: dlq_topic.clone(),
                pipeline_id: pipeline_id.clone(),
            }),
        };
        let r = source::replay(rc, dlq_tx.clone(), stats.replay.clone(), cancel.clone()).await;
        // A replay that failed may never have made the topic the consume half waits for.
        if r.is_err() {
            cancel.cancel();
        }
        replay_done.cancel();
        Some(r)
    };
    let consume_half = async {
        let (sink, chain, rows_before) = consume_parts?;
        let ctx = ConsumeCtx {
            kafka: cfg.kafka.clone(),
            bootstrap: bootstrap.clone(),
            group: group_id(cfg),
            sink: sink.clone(),
            chain,
            chain_names: stats.transforms.iter().map(|(n, _)| n.clone()).collect(),
            dlq: dlq_tx.clone(),
            dlq_topic: dlq_topic.clone(),
            lettered: dlq_task.lettered.clone(),
            until_end: opts.until_end,
            replays,
            replay_done: replay_done.clone(),
            cancel: cancel.clone(),
            consumer_stats: consumer_stats.clone(),
            warned: Default::default(),
            interrupted: interrupted.clone(),
        };
        let (part, r) = consume_loop(ctx).await;
        if let Err(e) = &r
            && replays
            && !replay_done.is_cancelled()
            && !cancel.is_cancelled()
        {
            error!(
                "The consume half stopped: {e:#}. The replay goes on to the end of {}, unpaced, \
                 so that `sluice run --consume-only` can load every row once the cause is fixed; \
                 a stop now (Ctrl-C) leaves the rest of the file out of the topic.",
                csv.path
            );
            consume_failed.cancel();
        }
        let rows_after = count_table(&sink, "after the run").await;
        sink.close().await;
        let part = ConsumePart {
            table: sink.table().to_owned(),
            table_rows_before: rows_before,
            table_rows_after: rows_after,
            transforms: transform_parts(&stats.transforms),
            ..part
        };
        Some((part, r))
    };
    let (replay_result, consume_result) = tokio::join!(replay_half, consume_half);
    drained.cancel();

    let mut problems = Vec::new();
    // A failed replay still put rows in the topic: its counts say how many.
    let replayed = match replay_result {
        Some(Ok(s)) => Some(s),
        Some(Err(e)) => {
            problems.push(format!("replay failed: {:#}", anyhow::Error::new(e)));
            Some(stats.replay.summary(false))
        }
        None => None,
    };
    let replay_part = match replayed {
        Some(s) => {
            if s.cancelled {
                problems.push(match interrupted.load(Ordering::Relaxed) {
                    // Stopped while it read the topics, before the first row.
                    true if opts.resume && s.rows_read == 0 => "the replay was interrupted \
                         before it began, while it read what the topics hold to resume: nothing \
                         was produced (run it again with `--resume`)"
                        .to_owned(),
                    true => format!(
                        "the replay was interrupted before the end of the file, after {}: \
                         the rest of the file is not in the topic (run it again with `--resume`: \
                         it produces only the rows the topic does not hold yet)",
                        crate::counted(s.rows_read, "row")
                    ),
                    // Only a stop ends the replay early (a consume half that fails lets it go
                    // on); anything else is sluice's own fault.
                    false => "the replay stopped before the end of the file".to_owned(),
                });
            }
            Some(ReplayPart {
                file: csv.path.clone(),
                rows_read: s.rows_read,
                rows_produced: s.rows_produced,
                rows_dead_lettered: s.rows_dead_lettered,
                rows_dropped: s.rows_dropped,
                resumed: opts.resume,
                rows_already_produced: s.rows_already_produced,
                rows_already_dead_lettered: s.rows_already_dead_lettered,
                end_offsets: consume::end_offsets(&cfg.kafka, &bootstrap, &cfg.kafka.topic)
                    .await
                    .unwrap_or_default(),
                start_offsets: topic_start,
            })
        }
        None => None,
    };
    // A consume half that stopped on an error still reports what it did before it stopped.
    let mut stopped = false;
    let consume_part = match consume_result {
        Some((part, Ok(()))) => Some(part),
        Some((part, Err(e))) => {
            stopped = true;
            problems.push(format!("{e:#}{}", resume_hint(&e)));
            Some(part)
        }
        None => None,
    };
    drop(dlq_tx);
    let dlq_task_stats = dlq_task.stats.clone();
    dlq_task.finish().await;
    let dlq_end = consume::end_offsets(&cfg.kafka, &bootstrap, &dlq_topic)
        .await
        .unwrap_or_default();
    let dead_letters: i64 = dlq_end
        .iter()
        .map(|(p, end)| end - dlq_start.get(p).copied().unwrap_or(0))
        .sum();
    metrics_stop.cancel();
    drop(progress);

    let mut summary = RunSummary {
        pipeline: cfg.name.clone(),
        run_id,
        topic: cfg.kafka.topic.clone(),
        mode: mode_name(opts.mode).to_owned(),
        started_at: started.to_rfc3339(),
        duration_ms: t0.elapsed().as_millis() as u64,
        replay: replay_part,
        consume: consume_part,
        dead_letters: dead_letters.max(0) as u64,
        dead_letters_already_stored: dlq_task_stats
            .letters_already_stored
            .load(Ordering::Relaxed),
        dead_letter_topic: dlq_topic,
        ok: false,
        problems,
        warnings: Vec::new(),
        unfinished: false,
    };
    summary.problems.extend(reconcile(
        &summary,
        stopped,
        interrupted.load(Ordering::Relaxed),
    ));
    summary.ok = summary.problems.is_empty();
    summary.warnings = warnings(&summary);
    summary.warnings.extend(retention_warning);
    // What a resumed replay found amiss in the topics.
    summary.warnings.extend(std::mem::take(
        &mut *(stats.replay.warnings.lock()).unwrap_or_else(|e| e.into_inner()),
    ));
    if interrupted.load(Ordering::Relaxed) {
        let topic_end = match summary.replay {
            Some(_) => None,
            None => consume::end_offsets(&cfg.kafka, &bootstrap, &cfg.kafka.topic)
                .await
                .ok(),
        };
        summary
            .warnings
            .extend(waiting_after_stop(&summary, topic_end.as_ref()));
    }
    match opts.log_format {
        LogFormat::Human => print_summary(&summary),
        // One event like every other line on stderr, the whole summary in its fields.
        LogFormat::Json => crate::errln!(
            "{}",
            json_event(
                "INFO",
                "Run finished.",
                serde_json::json!({ "ok": summary.ok, "summary": &summary }),
            )
        ),
    }
    write_summary(&opts, &summary)?;
    drop(services);
    Ok(summary.problems)
}

/// Each transform's counters as they stand now.
pub(crate) fn transform_parts(stats: &[(String, Arc<TransformStats>)]) -> Vec<TransformPart> {
    stats
        .iter()
        .map(|(name, s)| TransformPart {
            name: name.clone(),
            rows_in: s.rows_in.load(Ordering::Relaxed),
            rows_out: s.rows_out.load(Ordering::Relaxed),
            rows_dropped: s.rows_dropped.load(Ordering::Relaxed),
            rows_failed: s.rows_failed.load(Ordering::Relaxed),
            rows_failed_by_kind: (s.failed_by_kind())
                .map(|(kind, n)| (kind.as_str().to_string(), n))
                .collect(),
            rows_discarded: s.rows_discarded.load(Ordering::Relaxed),
            rows_unfinished: s.rows_unfinished.load(Ordering::Relaxed),
            batch_only_failures: s.batch_only_failures.load(Ordering::Relaxed),
            instance_restarts: s.instance_restarts.load(Ordering::Relaxed),
            fuel_consumed: Some(s.fuel_consumed.load(Ordering::Relaxed)).filter(|f| *f > 0),
            call_time_ns: s.latency_sum_ns.load(Ordering::Relaxed),
        })
        .collect()
}

struct ConsumeCtx {
    kafka: KafkaConfig,
    bootstrap: String,
    group: String,
    sink: Arc<SnowflakeSink>,
    chain: Arc<TransformChain>,
    chain_names: Vec<String>,
    dlq: DeadLetterTx,
    /// The dead-letter topic, and the letters in it that are not written again.
    dlq_topic: String,
    lettered: Arc<source::dlq::Lettered>,
    until_end: bool,
    /// Whether this run replays too (else the end offsets are the topic's as it stands).
    replays: bool,
    replay_done: CancellationToken,
    cancel: CancellationToken,
    consumer_stats: Arc<ConsumerStats>,
    /// The transform and failure kinds already logged at WARN: each is logged once, with its
    /// first record, and the rest at DEBUG (the counts and the dead letters have them all).
    warned: std::sync::Mutex<std::collections::HashSet<(String, &'static str)>>,
    /// Whether the run was stopped by Ctrl-C (rather than by the replay failing).
    interrupted: Arc<std::sync::atomic::AtomicBool>,
}

/// Why a bounded run (`--until-end`) ended before it loaded up to the end offsets.
#[derive(Debug, thiserror::Error)]
enum StoppedEarly {
    /// Ctrl-C (or a signal).
    #[error(
        "the run was stopped before it loaded up to the end offsets; `sluice run --consume-only \
         --until-end` resumes from what the warehouse holds"
    )]
    Interrupted,
    /// The replay failed (its own problem line says why): what it produced is loaded by the
    /// next run, but the rest of the file is not in the topic to resume from.
    #[error("consuming stopped before it loaded up to the end offsets, because the replay failed")]
    ReplayFailed,
}

impl ConsumeCtx {
    /// The consume half was stopped (Ctrl-C, or the other half failing) before it finished: a
    /// bounded run (`--until-end`) that ends here did not load everything it set out to, which
    /// its summary must say; an unbounded one ends this way normally.
    fn stopped_early(&self) -> anyhow::Result<()> {
        match (self.until_end, self.interrupted.load(Ordering::Relaxed)) {
            (false, _) => Ok(()),
            (true, true) => Err(StoppedEarly::Interrupted.into()),
            (true, false) => Err(StoppedEarly::ReplayFailed.into()),
        }
    }

    /// Logs a record a transform failed: the first of each transform and kind at WARN.
    fn log_failure(&self, transform: &str, kind: FailureKind, reason: &str, meta: &RecordMeta) {
        let first = self
            .warned
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((transform.to_owned(), kind.as_str()));
        let (topic, partition, offset) = (&meta.topic, meta.partition, meta.offset);
        let kind = kind.as_str();
        // The dead letter has the reason whole (up to its own limit); a log line gets a glimpse.
        let reason = &*crate::dead_letter::clip(reason, 1024);
        if first {
            warn!(transform, kind, reason, %topic, partition, offset,
                "A transform failed a record (the first of this transform and kind; the rest are counted in the summary and logged at debug).");
        } else {
            tracing::debug!(transform, kind, reason, %topic, partition, offset, "A transform failed a record.");
        }
    }
}

/// Records handed to the transform chain per call, at most.
const TRANSFORM_BATCH: usize = 1024;
/// How long a partial transform batch waits for more records.
const TRANSFORM_LINGER: Duration = Duration::from_millis(20);

/// The consume half: group consumer → transform chain → sink, with durable offsets flowing back
/// to the consumer's commits. Returns when cancelled, or with `until_end` once every partition's
/// durable offset reaches the topic's end offset (taken when the replay finished, or at start).
async fn consume_loop(ctx: ConsumeCtx) -> (ConsumePart, anyhow::Result<()>) {
    let mut part = ConsumePart::default();
    let result = consume_into(ctx, &mut part).await;
    (part, result)
}

/// [`consume_loop`], counting into `part` as it goes, so that a run that stops on an error still
/// reports what it consumed, transformed and loaded before it stopped.
async fn consume_into(ctx: ConsumeCtx, part: &mut ConsumePart) -> anyhow::Result<()> {
    let topic = ctx.kafka.topic.clone();
    let mut durable: BTreeMap<i32, i64> = ctx
        .sink
        .committed_offsets(&topic)
        .await
        .context("cannot read committed offsets from Snowflake")?
        .into_iter()
        .collect();
    if let Ok(Some(offsets)) = ctx.sink.offsets_without_table(&topic).await {
        let shown: BTreeMap<i32, i64> = offsets.into_iter().collect();
        let shown: Vec<String> = shown
            .iter()
            .map(|(p, next)| format!("{p}:{next}"))
            .collect();
        warn!(
            table = ctx.sink.table(),
            offsets_table = ctx.sink.offsets_table(),
            %topic,
            next_offsets = %shown.join(", "),
            "The table does not exist, but the offsets table says this pipeline already took the \
             topic up to these offsets (loaded into a table before, or filtered out or \
             dead-lettered). The run resumes there, so the records before them will not be loaded \
             into this table. If it is a new table (sink.table changed, or the table was \
             dropped) that should hold the whole topic, give the pipeline a new name, or delete \
             its rows from the offsets table."
        );
    }
    let offsets: consume::OffsetsProvider = {
        let sink = ctx.sink.clone();
        Arc::new(move |topic: String, _partitions: Vec<i32>| {
            let sink = sink.clone();
            Box::pin(async move {
                sink.committed_offsets(&topic)
                    .await
                    .map_err(|e| e.to_string())
            })
        })
    };
    tokio::select! {
        ready = source::producer::wait_for_topic(&ctx.kafka, &ctx.bootstrap, &topic) => {
            ready.context("cannot read the topic's metadata")?;
        }
        _ = ctx.cancel.cancelled() => return ctx.stopped_early(),
    }
    let mut consumer = consume::Consumer::start(consume::ConsumerOptions {
        kafka: &ctx.kafka,
        bootstrap: &ctx.bootstrap,
        group_id: &ctx.group,
        offsets,
        stats: ctx.consumer_stats.clone(),
    })
    .context("cannot start the Kafka consumer")?;
    let (sink_tx, mut durable_rx, sink_task) = ctx.sink.clone().spawn(Some(ctx.dlq.clone()), 4096);

    // The end offsets to reach with --until-end; known once the replay is done.
    let mut target: Option<BTreeMap<i32, i64>> = None;
    let mut seen: BTreeMap<i32, i64> = BTreeMap::new();
    let mut flushed_for_target = false;
    // The flush asked for once every record up to the end offsets is in the sink: awaited in the
    // loop below, not on the spot, so that the loads it waits for are committed to Kafka (and
    // counted in the gauges) as each is made, and a Ctrl-C is seen, while a backlog loads.
    let mut flushing: Option<
        futures::future::BoxFuture<'static, Result<(), crate::sink::snowflake::SinkError>>,
    > = None;
    let mut batch: Vec<consume::Record> = Vec::with_capacity(TRANSFORM_BATCH);
    let mut linger = tokio::time::interval(TRANSFORM_LINGER);
    linger.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut poll_end = tokio::time::interval(Duration::from_millis(200));
    // With other members in the group, the partitions they hold reach their end offsets by
    // their loads, which this run sees only in the warehouse: read it every few seconds, off
    // the loop (on the emulator's file database the read waits for the writer's session).
    let mut warehouse: BTreeMap<i32, i64> = BTreeMap::new();
    type Reading = tokio::task::JoinHandle<
        Result<std::collections::HashMap<i32, i64>, crate::sink::snowflake::SinkError>,
    >;
    let mut reading: Option<Reading> = None;
    let mut last_read = Instant::now();
    // Partitions that started at the group's committed offsets, the warehouse having none, and
    // those offsets: the records before them never come, so the drain takes them as done.
    let mut from_group: BTreeMap<i32, i64> = BTreeMap::new();
    let (mut commit_failures, mut commit_warned) = (0u64, None);
    let result: anyhow::Result<()> = async {
        loop {
            tokio::select! {
                biased;
                _ = ctx.cancel.cancelled() => return ctx.stopped_early(),
                d = durable_rx.recv() => {
                    // The writer ended while its input is open: it failed, and its error (taken
                    // below) is the run's. Found here, not at the next record handed to it, which
                    // may be never: an idle run sat on a failed load without a word.
                    let Some(d) = d else {
                        return Err(crate::sink::snowflake::SinkError::Closed.into());
                    };
                    let e = durable.entry(d.partition).or_default();
                    *e = (*e).max(d.next_offset);
                    // The warehouse already holds this offset, and a restart resumes from it: a
                    // failed Kafka commit (a rebalance under way, the coordinator moving) only
                    // leaves the group's offset behind until a later commit, so it is no reason
                    // to stop. Said at most once a minute, as it may fail for every batch.
                    if let Err(e) = consumer.commit(&d.topic, d.partition, d.next_offset).await {
                        commit_failures += 1;
                        if commit_warned.is_none_or(|at: Instant| at.elapsed() >= Duration::from_secs(60)) {
                            commit_warned = Some(Instant::now());
                            warn!(error = %e, failures = commit_failures, "Kafka commit failed after the warehouse commit; the group's offset lags until a later commit succeeds, and a restart resumes from Snowflake's offsets.");
                        }
                    }
                }
                flushed = async { flushing.as_mut().expect("guarded").await }, if flushing.is_some() => {
                    flushing = None;
                    flushed?;
                }
                // Before the records: under a steady flow `recv` is always ready, and a biased
                // select would not see the replay end until the flow paused.
                _ = poll_end.tick(), if ctx.until_end => {
                    if target.is_none() && ctx.replay_done.is_cancelled() {
                        let end = consume::end_offsets(&ctx.kafka, &ctx.bootstrap, &topic).await?;
                        if ctx.replays {
                            info!(end_offsets = ?end, "Replay done; draining up to these end offsets.");
                        } else {
                            info!(end_offsets = ?end, "Draining up to the topic's end offsets as they are now.");
                        }
                        target = Some(end);
                    }
                    if let Some(end) = &target {
                        if reading.as_ref().is_some_and(|r| r.is_finished())
                            && let Some(done) = reading.take()
                            && let Ok(Ok(offsets)) = done.await
                        {
                            warehouse = offsets.into_iter().collect();
                        }
                        if reading.is_none() && last_read.elapsed() >= WAREHOUSE_POLL {
                            let (sink, topic) = (ctx.sink.clone(), topic.clone());
                            reading = Some(tokio::spawn(async move { sink.committed_offsets(&topic).await }));
                            last_read = Instant::now();
                        }
                        let loaded = |p: &i32, e: &i64| *e <= 0
                            || durable.get(p).is_some_and(|d| d >= e)
                            || warehouse.get(p).is_some_and(|w| w >= e)
                            // At the end exactly: past it, librdkafka starts at the earliest,
                            // and those records are this run's to load.
                            || from_group.get(p).is_some_and(|g| g == e);
                        let sent_all = end.iter().all(|(p, e)| loaded(p, e) || seen.get(p).is_some_and(|s| s + 1 >= *e));
                        if sent_all && batch.is_empty() && !flushed_for_target {
                            flushing = Some(Box::pin(sink_tx.start_flush().await?));
                            flushed_for_target = true;
                        }
                        if end.iter().all(|(p, e)| loaded(p, e)) {
                            break;
                        }
                    }
                }
                ev = consumer.recv() => {
                    match ev {
                        None => break,
                        Some(Err(e)) => return Err(anyhow::Error::new(e).context("the Kafka consumer failed")),
                        Some(Ok(consume::ConsumerEvent::Record(r))) => {
                            // Started below the group's offset after all (librdkafka reset a
                            // partition whose offset was past its end to the earliest): its
                            // records are this run's to load, and the drain waits for them.
                            if from_group.get(&r.meta.partition).is_some_and(|g| r.meta.offset < *g) {
                                from_group.remove(&r.meta.partition);
                            }
                            batch.push(r);
                            // A full batch goes now rather than idling until the next linger
                            // tick (up to 20 ms per batch, and at most ~51 K records/s).
                            if batch.len() >= TRANSFORM_BATCH {
                                let full = std::mem::replace(&mut batch, Vec::with_capacity(TRANSFORM_BATCH));
                                process_batch(&ctx, full, &sink_tx, part, &mut seen).await?;
                                linger.reset();
                            }
                        }
                        Some(Ok(consume::ConsumerEvent::Assigned { topic, partitions })) => {
                            let starts: Vec<String> = partitions.iter().map(|p| match p.offset {
                                Some(o) => format!("{}@{o}", p.partition),
                                None => format!("{}@committed", p.partition),
                            }).collect();
                            info!(%topic, partitions = %starts.join(","), "Partitions assigned.");
                            for p in &partitions {
                                from_group.remove(&p.partition);
                            }
                            let ahead: BTreeMap<i32, i64> = partitions.iter()
                                .filter_map(|p| Some((p.partition, p.group_offset?)))
                                .collect();
                            if !ahead.is_empty() {
                                // Not of an offset past the partition's end, from which
                                // librdkafka starts at the earliest.
                                let end = consume::end_offsets(&ctx.kafka, &ctx.bootstrap, &topic)
                                    .await
                                    .unwrap_or_default();
                                let shown: Vec<String> = (ahead.iter())
                                    .filter(|(p, g)| **g > 0 && end.get(p).is_none_or(|e| *g <= e))
                                    .map(|(p, g)| format!("{p}:{g}"))
                                    .collect();
                                if !shown.is_empty() {
                                    warn!(
                                        %topic,
                                        group = %ctx.group,
                                        offsets_table = ctx.sink.offsets_table(),
                                        group_offsets = %shown.join(", "),
                                        "These partitions start at the consumer group's committed \
                                         offsets: the offsets table has none for this pipeline's \
                                         name (a new name, database or schema, or a new \
                                         warehouse), but the group was moved on by an earlier \
                                         run. The records before them are not loaded into this \
                                         table. To load the whole topic into it, give the \
                                         pipeline a new kafka.group_id."
                                    );
                                }
                                from_group.extend(ahead);
                            }
                            // Where each starts: the warehouse's offset, else the group's, else
                            // the earliest (a run killed before its first load).
                            let from: BTreeMap<i32, i64> = partitions.iter()
                                .map(|p| (p.partition, p.offset.or(p.group_offset).unwrap_or(0)))
                                .collect();
                            note_letters_written(&ctx, &topic, from).await;
                        }
                        Some(Ok(consume::ConsumerEvent::Revoked { topic, partitions })) => {
                            info!(%topic, ?partitions, "Partitions revoked; dropping their in-flight records.");
                            from_group.retain(|p, _| !partitions.contains(p));
                            ctx.lettered.forget(&partitions);
                            batch.retain(|r| !partitions.contains(&r.meta.partition));
                            // Their records past the warehouse's offsets come again.
                            ctx.chain.forget_state();
                            sink_tx.revoke(partitions.iter().map(|p| (topic.clone(), *p)).collect()).await?;
                        }
                    }
                }
                _ = linger.tick() => {
                    if !batch.is_empty() {
                        let due = std::mem::replace(&mut batch, Vec::with_capacity(TRANSFORM_BATCH));
                        process_batch(&ctx, due, &sink_tx, part, &mut seen).await?;
                    }
                }
            }
        }
        Ok(())
    }
    .await;
    // Not to run on a session the sink is about to close.
    if let Some(r) = reading.take() {
        r.abort();
    }
    // Records read but not yet run when a stop came: they never reach the sink.
    let left_behind = !batch.is_empty();
    let result = match result {
        Ok(()) if !batch.is_empty() && !ctx.cancel.is_cancelled() => {
            process_batch(&ctx, std::mem::take(&mut batch), &sink_tx, part, &mut seen).await
        }
        r => r,
    };
    // Closing the input makes the writer flush what it holds and end.
    drop(flushing);
    drop(sink_tx);
    // A panic in the sink is reported like its errors, after the durable offsets it left are
    // committed and alongside the chain's own error, which it must not hide.
    let sink_summary = sink_task
        .await
        .map_err(|e| anyhow::anyhow!("the sink task ended abnormally: {e}"))
        .and_then(|s| s.map_err(anyhow::Error::from));
    while let Some(d) = durable_rx.recv().await {
        let e = durable.entry(d.partition).or_default();
        *e = (*e).max(d.next_offset);
        if let Err(e) = consumer.commit(&d.topic, d.partition, d.next_offset).await {
            commit_failures += 1;
            warn!(error = %e, "Kafka commit failed after the warehouse commit; the next run resumes from Snowflake's offsets.");
        }
    }
    if commit_failures > 0 {
        // Said once at the end too: the run went on, and a lasting cause (the group's ACL, say)
        // leaves the group's offsets, and lag measured from them, behind for good.
        warn!(
            failures = commit_failures,
            "{} failed in this run, after the warehouse commits they followed: the consumer \
             group's offsets lag behind Snowflake's (which the next run resumes from); see the \
             warnings above for why.",
            crate::counted(commit_failures, "Kafka commit")
        );
    }
    consumer.close().await;
    // Stopped once every record up to the end offsets was in the sink, which loaded what it
    // held as it closed: when that reached the end offsets, the run did finish after all.
    let result = match result {
        Err(e)
            if e.is::<StoppedEarly>()
                && !left_behind
                && sink_summary.is_ok()
                && target.as_ref().is_some_and(|end| {
                    end.iter().all(|(p, e)| {
                        *e <= 0
                            || durable.get(p).is_some_and(|d| d >= e)
                            || warehouse.get(p).is_some_and(|w| w >= e)
                            || from_group.get(p).is_some_and(|g| g == e)
                    })
                }) =>
        {
            info!(
                "Stopped after the last records were read; the sink loaded them all before it closed, so the run finished."
            );
            Ok(())
        }
        r => r,
    };
    part.committed_offsets = durable;
    match &sink_summary {
        Ok(s) => {
            part.rows_loaded = s.rows_loaded;
            part.files = s.files;
            part.sink_dead_lettered = s.rows_dead_lettered;
            part.rows_redelivered = s.rows_redelivered;
        }
        // A sink that failed still committed what it loaded before: count that, or the summary
        // (and `verify` after it) reports rows in the table that no run loaded.
        Err(_) => {
            let s = ctx.sink.stats();
            part.rows_loaded = s.rows_loaded.load(Ordering::Relaxed);
            part.files = s.files_loaded.load(Ordering::Relaxed);
            part.sink_dead_lettered = s.rows_dead_lettered.load(Ordering::Relaxed);
            part.rows_redelivered = s.rows_redelivered.load(Ordering::Relaxed);
        }
    }
    match (result, sink_summary) {
        // The loop stopped because the sink did (a send found the writer gone): one error.
        (Err(chain), Err(sink))
            if chain.chain().any(|e| {
                e.downcast_ref::<crate::sink::snowflake::SinkError>()
                    .is_some()
            }) =>
        {
            Err(sink.context("the Snowflake sink failed"))
        }
        (Err(chain), Err(sink)) => {
            tracing::error!(error = %format!("{sink:#}"), "The Snowflake sink failed too.");
            Err(chain)
        }
        (Err(chain), Ok(_)) => Err(chain),
        (Ok(()), Err(sink)) => Err(sink.context("the Snowflake sink failed")),
        (Ok(()), Ok(_)) => Ok(()),
    }
}

/// Notes the dead letters this pipeline already wrote for records of `topic` at or past `from`'s
/// offsets (the warehouse's, where the assigned partitions start), so that the records set aside
/// before a crash or a rebalance are not set aside twice (see [`source::dlq::Lettered`]). Reads
/// the dead-letter topic from a while before the first of those records was produced, which is
/// before any letter of them was written. A failure to read it only loses that: logged, and the
/// run goes on.
async fn note_letters_written(ctx: &ConsumeCtx, topic: &str, from: BTreeMap<i32, i64>) {
    /// Letters are stamped by the clock of the run that wrote them, records by the replay's.
    const CLOCK_SLACK_MS: i64 = 10 * 60 * 1000;
    if from.is_empty() {
        return;
    }
    /// The longest the read may hold up the records: past it they run, and what it has not
    /// noted yet may be written twice.
    const READ_LIMIT: Duration = Duration::from_secs(60);
    let (kafka, bootstrap) = (ctx.kafka.clone(), ctx.bootstrap.clone());
    let (topic, dlq, lettered) = (
        topic.to_owned(),
        ctx.dlq_topic.clone(),
        ctx.lettered.clone(),
    );
    // Ends the read (a blocking thread) on a stop and past the limit, not only the wait for it.
    let stop = ctx.cancel.child_token();
    let _stop_on_return = stop.clone().drop_guard();
    let reading = tokio::task::spawn_blocking(move || {
        let at = consume::timestamps_at(&kafka, &bootstrap, &topic, &from)?;
        let Some(first) = at.values().min() else {
            return Ok(0);
        };
        let mut noted = 0u64;
        let since = Some(first.saturating_sub(CLOCK_SLACK_MS));
        consume::read_since(&kafka, &bootstrap, &dlq, since, Some(&stop), |m| {
            if let Some(v) = rdkafka::Message::payload(m)
                && lettered.note(v, &topic, &from)
            {
                noted += 1;
            }
            true
        })
        .map(|_| noted)
    });
    let read = tokio::select! {
        read = tokio::time::timeout(READ_LIMIT, reading) => match read {
            Ok(read) => read,
            Err(_) => {
                warn!(dead_letter_topic = %ctx.dlq_topic, "Reading the dead-letter topic for the letters of records past the warehouse's offsets takes more than {} s: going on without the rest of it (records set aside before may be set aside, and written, again).", READ_LIMIT.as_secs());
                return;
            }
        },
        // A stop does not wait for it.
        _ = ctx.cancel.cancelled() => return,
    };
    match read {
        Ok(Ok(0)) => {}
        Ok(Ok(n)) => info!(
            dead_letter_topic = %ctx.dlq_topic,
            "{} of records past the warehouse's offsets (set aside before a restart or a \
             rebalance) are in the dead-letter topic already: the same letters are not written \
             again.",
            counted(n as usize, "dead letter")
        ),
        Ok(Err(e)) => {
            warn!(error = %e, dead_letter_topic = %ctx.dlq_topic, "Cannot read the dead-letter topic for the letters of records past the warehouse's offsets: records set aside before may be set aside, and written, again.")
        }
        Err(e) => warn!(error = %e, "Reading the dead-letter topic failed."),
    }
}

/// How often `--until-end` reads the warehouse's offsets, for partitions other members load.
const WAREHOUSE_POLL: Duration = Duration::from_secs(2);

/// Runs one batch of consumed records through the chain and hands every record's outcome, in
/// order, to the sink; failures go to the dead-letter topic first, so their offsets only move
/// once the letter is durable.
async fn process_batch(
    ctx: &ConsumeCtx,
    records: Vec<consume::Record>,
    sink: &crate::sink::snowflake::sink::SinkHandle,
    part: &mut ConsumePart,
    seen: &mut BTreeMap<i32, i64>,
) -> anyhow::Result<()> {
    // Decodable records go through the chain together (moved, not cloned); every record's
    // outcome then goes to the sink in the original (per-partition offset) order.
    let mut order = Vec::with_capacity(records.len());
    let mut inputs = Vec::with_capacity(records.len());
    for r in records {
        match r.row {
            Ok(row) => {
                order.push((r.meta.clone(), r.value, None));
                inputs.push((r.meta, row));
            }
            Err(e) => order.push((r.meta, r.value, Some(e))),
        }
    }
    // Per partition, the offsets of the batch: a chain failure names them.
    let mut span: BTreeMap<i32, (i64, i64)> = BTreeMap::new();
    for (m, _) in &inputs {
        let e = span.entry(m.partition).or_insert((m.offset, m.offset));
        *e = (e.0.min(m.offset), e.1.max(m.offset));
    }
    let mut outcomes = if inputs.is_empty() {
        Vec::new()
    } else {
        // What entered the chain, read off its first transform: a batch of much text goes in
        // parts, and those after a failing one never do (they wait in the topic all the same).
        let before = ctx.chain.rows_entered();
        let processed = tokio::select! {
            r = ctx.chain.process(inputs) => r,
            // A stop does not wait for the batch: one being run again a record at a time may
            // take a minute of time limits per transform, past --drain-timeout. Dropped, the
            // chain stops between records, and the batch waits in the topic for the next run.
            () = ctx.cancel.cancelled() => {
                part.records_unfinished += ctx.chain.rows_entered() - before;
                return ctx.stopped_early();
            }
        };
        processed.map_err(|e| {
            part.records_unfinished += ctx.chain.rows_entered() - before;
            let names = ctx.chain_names.join(", ");
            let records: Vec<String> = span
                .iter()
                .map(|(p, (a, b))| format!("{}/{p}@{a}..={b}", ctx.kafka.topic))
                .collect();
            anyhow::Error::new(e).context(format!(
                "the transform chain ({names}) stopped the run in the batch of records {}",
                records.join(", ")
            ))
        })?
    }
    .into_iter();
    // Letters first, all of them at once, and only then the records to the sink: a record's
    // offset can move once the sink has it, so every letter of the batch must be durable by then.
    let mut letters = Vec::new();
    let mut to_sink = Vec::with_capacity(order.len());
    for (meta, value, failure) in order {
        part.records += 1;
        // Handed to the sink before: its partition was revoked before it was loaded.
        part.records_redelivered +=
            u64::from(seen.get(&meta.partition).is_some_and(|&s| meta.offset <= s));
        let first = part
            .start_offsets
            .entry(meta.partition)
            .or_insert(meta.offset);
        *first = (*first).min(meta.offset);
        let rows = match failure {
            Some(f) => {
                part.undecodable += 1;
                let letter = crate::dead_letter::DeadLetter {
                    stage: crate::dead_letter::CONSUME_STAGE.into(),
                    kind: crate::dead_letter::DECODE_KIND.into(),
                    reason: f.to_string(),
                    source_file: None,
                    source_file_id: None,
                    line: None,
                    origin: Some(meta.clone()),
                    payload: value,
                    error: None,
                };
                let about = format!(
                    "setting aside record {}/{}@{}, which could not be decoded",
                    meta.topic, meta.partition, meta.offset
                );
                letters.push((ctx.dlq.enqueue(letter).await, about));
                Vec::new()
            }
            None => match outcomes.next() {
                Some(RecordOutcome::Emitted(rows)) => rows,
                Some(RecordOutcome::Quarantined(q)) => {
                    ctx.log_failure(&q.transform, q.kind, &q.reason, &meta);
                    // The message as it arrived, not the row the failing transform saw: replaying
                    // the letter runs the whole chain.
                    let letter = q.dead_letter(meta.clone(), value);
                    let line = letter
                        .line
                        .map(|l| format!(" (line {l})"))
                        .unwrap_or_default();
                    let about = format!(
                        "setting aside record {}/{}@{}{line}, which failed in transform {} ({})",
                        meta.topic, meta.partition, meta.offset, q.transform, q.kind
                    );
                    letters.push((ctx.dlq.enqueue(letter).await, about));
                    Vec::new()
                }
                Some(RecordOutcome::Dropped {
                    transform,
                    kind,
                    reason,
                }) => {
                    part.records_dropped += 1;
                    ctx.log_failure(&transform, kind, &reason, &meta);
                    Vec::new()
                }
                None => anyhow::bail!("the transform chain returned fewer outcomes than records"),
            },
        };
        to_sink.push((meta, rows));
    }
    for (pending, about) in letters {
        let stored = match pending {
            Ok(p) => p.stored().await,
            Err(e) => Err(e),
        };
        stored.context(about)?;
    }
    for (meta, rows) in to_sink {
        part.rows_to_sink += rows.len() as u64;
        note_seen(seen, &meta);
        // With its metadata: a row the table cannot take is dead-lettered with the message's
        // key, headers, file and line.
        sink.record_from(meta, rows).await?;
    }
    Ok(())
}

fn note_seen(seen: &mut BTreeMap<i32, i64>, meta: &RecordMeta) {
    let e = seen.entry(meta.partition).or_insert(meta.offset);
    *e = (*e).max(meta.offset);
}

/// Cross-checks the numbers of a run: every CSV record is produced or dead-lettered or dropped,
/// every consumed record is accounted for by the chain, every emitted row is loaded.
fn reconcile(s: &RunSummary, stopped: bool, interrupted: bool) -> Vec<String> {
    let mut gaps = Vec::new();
    if let Some(r) = &s.replay {
        let already = r.rows_already_produced + r.rows_already_dead_lettered;
        let accounted = r.rows_produced + r.rows_dead_lettered + r.rows_dropped + already;
        if accounted != r.rows_read {
            gaps.push(format!(
                "replay: {} rows read but {} produced + {} dead-lettered + {} dropped + {already} \
                 in the topics already",
                r.rows_read, r.rows_produced, r.rows_dead_lettered, r.rows_dropped
            ));
        }
        if r.rows_dropped > 0 {
            gaps.push(format!(
                "replay: {} bad rows were dropped (on_error: drop)",
                r.rows_dropped
            ));
        }
    }
    if let Some(c) = &s.consume {
        // A consume half that stopped part-way left records in the chain that never reached the
        // sink, so only what reached the sink must add up.
        if stopped {
            sink_gaps(c, &mut gaps);
            return gaps;
        }
        // After a stop, records the consumer had not reached wait in the topic: not lost, and
        // said in the warnings (`waiting_after_stop`).
        if let (Some(r), "full", false) = (&s.replay, s.mode.as_str(), interrupted)
            && c.records.saturating_sub(c.records_redelivered) < r.rows_produced
        {
            let again = match c.records_redelivered {
                0 => String::new(),
                n => format!(" ({n} of them again)"),
            };
            gaps.push(format!(
                "consume: {} records consumed{again} but {} produced",
                c.records, r.rows_produced
            ));
        }
        if let Some(first) = c.transforms.first()
            && first.rows_in + c.undecodable != c.records + c.records_unfinished
        {
            gaps.push(format!(
                "transforms: {} records consumed but {} entered {} (+{} undecodable)",
                c.records + c.records_unfinished,
                first.rows_in,
                first.name,
                c.undecodable
            ));
        }
        for pair in c.transforms.windows(2) {
            if pair[1].rows_in != pair[0].rows_out {
                gaps.push(format!(
                    "transforms: {} emitted {} rows but {} received {}",
                    pair[0].name, pair[0].rows_out, pair[1].name, pair[1].rows_in
                ));
            }
        }
        let emitted = c
            .transforms
            .last()
            .map_or(c.records - c.undecodable, |t| t.rows_out);
        if emitted != c.rows_to_sink {
            gaps.push(format!(
                "sink: the chain emitted {emitted} rows but {} reached the sink",
                c.rows_to_sink
            ));
        }
        sink_gaps(c, &mut gaps);
    }
    gaps
}

/// Warns when the topic already holds messages before a replay: replaying the file adds its
/// rows a second time, and they are loaded a second time too. That is what a live feed replayed
/// twice means, but after a stopped run it is seldom what the operator wanted (`--resume` is,
/// and does not warn). With the `sink`
/// (a full run), the warning says whether those messages were loaded already or are still
/// waiting, which this run will load as well.
async fn warn_of_a_second_replay(
    sink: Option<&SnowflakeSink>,
    cfg: &PipelineConfig,
    bootstrap: &str,
    topic_end: &BTreeMap<i32, i64>,
) {
    let SourceConfig::Csv(csv) = &cfg.source;
    let (topic, file) = (&cfg.kafka.topic, &csv.path);
    let on_topic: i64 = topic_end.values().sum();
    let Some(sink) = sink else {
        if on_topic > 0 {
            warn!(
                %topic,
                messages = on_topic,
                "The topic already holds messages, from an earlier replay of {file} or another \
                 producer. This replay adds the file's rows after them; a consume loads whatever \
                 of them is not loaded yet as well. To finish a stopped replay without producing \
                 its rows again, use `--resume`."
            );
        }
        return;
    };
    let Ok(offsets) = sink.committed_offsets(topic).await else {
        return;
    };
    // Loaded into a table that is gone (or another one, named before): this run loads only the
    // new replay into it, and the consume warns of what it leaves out.
    if let Ok(Some(_)) = sink.offsets_without_table(topic).await {
        return;
    }
    let loaded: BTreeMap<i32, i64> = offsets.into_iter().collect();
    // Where the consumer will start where the warehouse has no offset: the group's commit.
    let group = consume::committed_offsets(&cfg.kafka, bootstrap, &group_id(cfg), topic)
        .await
        .unwrap_or_default();
    let waiting: i64 = topic_end
        .iter()
        .map(|(p, end)| {
            let from = loaded.get(p).or(group.get(p)).copied().unwrap_or(0);
            (end - from).max(0)
        })
        .sum();
    if loaded.values().any(|&next| next > 0) {
        let shown = loaded
            .iter()
            .map(|(p, next)| format!("{p}:{next}"))
            .collect::<Vec<_>>()
            .join(", ");
        warn!(
            table = sink.table(),
            %topic,
            next_offsets = %shown,
            "The table already holds rows this pipeline loaded from the topic. This run replays \
             {file} into the topic again, so those rows will be loaded again. To resume a stopped \
             run without replaying, use `sluice run --consume-only`; to finish a stopped replay \
             without producing its rows again, `sluice run --resume`."
        );
    } else if waiting > 0 {
        let others = sink.other_pipelines(topic).await.unwrap_or_default();
        if others.is_empty() {
            warn!(
                table = sink.table(),
                %topic,
                messages = waiting,
                "The topic already holds messages no run has loaded (an earlier replay's). This \
                 run loads them and replays {file} again, so its rows will be loaded twice. To \
                 load only what the topic holds, use `sluice run --consume-only`; to finish a \
                 stopped replay without producing its rows again, `sluice run --resume`."
            );
        } else {
            warn!(
                table = sink.table(),
                %topic,
                messages = waiting,
                offsets_table = sink.offsets_table(),
                other_pipelines = %others.join(", "),
                "The topic already holds messages that no run of this pipeline's name has \
                 loaded, and pipelines of other names recorded loads from it in the same offsets \
                 table (this one before a rename?). This run loads those messages, and replays \
                 {file} again: if those pipelines loaded into this table, their rows will be in \
                 it twice. Offsets are kept per pipeline name: to carry on where a renamed \
                 pipeline left off, keep its name."
            );
        }
    }
}

/// Refuses a run when the offsets table says this pipeline took the topic further than the
/// topic reaches: the topic was deleted (and made again), or `kafka.brokers` is another cluster,
/// a managed broker's data made new among them. The consumer would start past its records, or
/// take those below the offsets for loaded ones, and skip them without a word. Returns a warning
/// when retention deleted records before this pipeline loaded them, which no run can load now.
async fn check_topic_against_warehouse(
    sink: &SnowflakeSink,
    cfg: &PipelineConfig,
    bootstrap: &str,
    state_dir: &Path,
) -> anyhow::Result<Option<String>> {
    let topic = &cfg.kafka.topic;
    let loaded: BTreeMap<i32, i64> = (sink.committed_offsets(topic).await)
        .context("cannot read committed offsets from Snowflake")?
        .into_iter()
        .collect();
    if loaded.values().all(|next| *next <= 0) {
        return Ok(None);
    }
    let marks = match topic_offsets(cfg, bootstrap).await {
        Ok(marks) => marks,
        Err(reason) => {
            // Never proof that the topic was made again, and the advice for one would load it
            // all twice: the run goes on unchecked.
            warn!(
                %topic,
                "Cannot read the topic's offsets to check them against the warehouse's ({reason}); \
                 the run goes on without that check."
            );
            return Ok(None);
        }
    };
    let (past, lost) = offsets_beyond(&loaded, &marks);
    if !past.is_empty() {
        let shown: Vec<String> = (past.iter())
            .map(|(p, next, end)| match end {
                Some(end) => format!("partition {p} up to offset {next}, but it ends at {end}"),
                None if marks.is_empty() => format!("partition {p} up to offset {next}"),
                None => format!(
                    "partition {p} up to offset {next}, but the topic has no such partition"
                ),
            })
            .collect();
        let managed = match cfg.kafka.brokers.trim().is_empty() {
            true => format!(
                " (the managed broker's data in {} is new: removed, or another --state-dir)",
                state_dir.join("broker").display()
            ),
            false => String::new(),
        };
        let topic_now = match marks.is_empty() {
            true => "does not exist",
            false => "is not the one loaded",
        };
        anyhow::bail!(
            "the offsets table {} says pipeline {} loaded topic {topic}: {}. The topic {topic_now}: \
             it was deleted (and made again), or {bootstrap} is another cluster{managed}. Its \
             records below those offsets would be skipped as loaded, so nothing was replayed or \
             consumed. To load the topic as it is now into {}, give the pipeline a new name \
             (offsets are kept per name), or delete this pipeline's rows for the topic from the \
             offsets table",
            sink.offsets_table(),
            cfg.name,
            shown.join("; "),
            sink.table()
        );
    }
    if lost.is_empty() {
        return Ok(None);
    }
    let shown: Vec<String> = (lost.iter())
        .map(|(p, next, start)| {
            let n = start - next;
            format!(
                "partition {p}: offsets {next}..{} ({})",
                start - 1,
                counted(n as u64, "record")
            )
        })
        .collect();
    let warning = format!(
        "retention deleted records of topic {topic} before this pipeline loaded them, and no \
         run can load them now: {}",
        shown.join(", ")
    );
    warn!(%topic, table = sink.table(), "{warning}");
    Ok(Some(warning))
}

/// The topic's start and end offsets per partition, none when the broker says it has no such
/// topic. Only that answer: a leader being elected, a missing permission or a broker away is an
/// error, after three tries a second apart.
async fn topic_offsets(
    cfg: &PipelineConfig,
    bootstrap: &str,
) -> Result<BTreeMap<i32, (i64, i64)>, String> {
    let topic = &cfg.kafka.topic;
    let mut last = String::new();
    for attempt in 0..3 {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        match source::producer::topic_exists(&cfg.kafka, bootstrap, topic).await {
            Ok(false) => return Ok(BTreeMap::new()),
            Ok(true) => {}
            Err(e) => {
                last = crate::error_chain(&e);
                continue;
            }
        }
        match consume::watermarks(&cfg.kafka, bootstrap, topic).await {
            Ok(marks) if !marks.is_empty() => return Ok(marks),
            Ok(_) => last = "the broker lists no partitions of it".to_owned(),
            Err(e) => last = crate::error_chain(&e),
        }
    }
    Err(last)
}

/// A partition, the offset a pipeline loaded it up to, and its end (`None`: no such partition).
type PastEnd = (i32, i64, Option<i64>);
/// A partition, the offset a pipeline loaded it up to, and its start, past that offset.
type BelowStart = (i32, i64, i64);

/// Compares the offsets a pipeline loaded up to (`loaded`, the next offset per partition) with
/// the topic's `(start, end)` offsets per partition. Returns the partitions loaded past their end
/// (with the end, `None` where the topic has no such partition), and those whose records from the
/// loaded offset to the start were deleted before they were loaded (with the start).
fn offsets_beyond(
    loaded: &BTreeMap<i32, i64>,
    marks: &BTreeMap<i32, (i64, i64)>,
) -> (Vec<PastEnd>, Vec<BelowStart>) {
    let (mut past, mut lost) = (Vec::new(), Vec::new());
    for (&p, &next) in loaded.iter().filter(|(_, next)| **next > 0) {
        match marks.get(&p) {
            None => past.push((p, next, None)),
            Some(&(_, end)) if next > end => past.push((p, next, Some(end))),
            Some(&(start, _)) if next < start => lost.push((p, next, start)),
            Some(_) => {}
        }
    }
    (past, lost)
}

/// Rows in the sink's table, or `None` (with a warning saying why) when they cannot be counted: a
/// summary that showed 0 then would report rows vanishing from the table.
async fn count_table(sink: &SnowflakeSink, when: &str) -> Option<u64> {
    sink.count_rows()
        .await
        .inspect_err(|e| {
            warn!(
                table = sink.table(),
                error = %crate::error_chain(e),
                "Cannot count the table's rows {when}."
            )
        })
        .ok()
}

fn rows_or_unknown(n: Option<u64>) -> String {
    n.map_or_else(|| "(not counted)".to_owned(), |n| n.to_string())
}

/// The gaps between the rows that reached the sink and what the warehouse holds.
fn sink_gaps(c: &ConsumePart, gaps: &mut Vec<String>) {
    if c.rows_loaded + c.sink_dead_lettered + c.rows_redelivered < c.rows_to_sink {
        gaps.push(format!(
            "sink: {} rows reached the sink but only {} were loaded, {} dead-lettered and {} \
             left to another delivery",
            c.rows_to_sink, c.rows_loaded, c.sink_dead_lettered, c.rows_redelivered
        ));
    }
    if let (Some(before), Some(after)) = (c.table_rows_before, c.table_rows_after)
        && after < before + c.rows_loaded
    {
        gaps.push(format!(
            "warehouse: {} rows loaded but the table grew from {before} to {after}",
            c.rows_loaded
        ));
    }
}

fn print_summary(s: &RunSummary) {
    // Not `eprint!`: the summary files are written after this, even when stderr is gone.
    let text = summary_text(s);
    let _ = std::io::Write::write_all(
        &mut std::io::stderr(),
        crate::config::redact_output(&text).as_bytes(),
    );
}

/// The summary as printed at the end of a run.
fn summary_text(s: &RunSummary) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "\nsluice: pipeline {} ({}) finished in {:.1} s\n",
        s.pipeline,
        s.mode,
        s.duration_ms as f64 / 1000.0
    ));
    if let Some(r) = &s.replay {
        out.push_str(&format!(
            "  replay     {}: {} read, {} produced, {} dead-lettered, {} dropped\n",
            r.file,
            counted(r.rows_read, "row"),
            r.rows_produced,
            r.rows_dead_lettered,
            r.rows_dropped
        ));
        // Not for a resume stopped while it read the topics: it found nothing yet.
        if r.resumed && r.rows_read > 0 {
            out.push_str(&format!(
                "             resumed: {} in the topic already, {} with letters already\n",
                counted(r.rows_already_produced, "row"),
                counted(r.rows_already_dead_lettered, "bad row")
            ));
        }
    }
    if let Some(c) = &s.consume {
        out.push_str(&format!(
            "  consume    {} ({} undecodable",
            counted(c.records, "record"),
            c.undecodable
        ));
        if c.records_dropped > 0 {
            out.push_str(&format!(
                ", {} dropped by a transform's on_error: drop",
                c.records_dropped
            ));
        }
        if c.records_redelivered > 0 {
            out.push_str(&format!(
                ", {} delivered again after a rebalance",
                c.records_redelivered
            ));
        }
        out.push(')');
        if c.records_unfinished > 0 {
            out.push_str(&format!(
                ", and {} in the transform chain's batch when the run stopped (they wait in the \
                 topic)",
                c.records_unfinished
            ));
        }
        out.push('\n');
        for t in &c.transforms {
            out.push_str(&format!("  transform  {t}\n"));
        }
        // Rows of records delivered twice (a rebalance), loaded once.
        let again = match c.rows_redelivered {
            0 => String::new(),
            n => format!(", {n} left to another delivery"),
        };
        out.push_str(&format!(
            "  sink       {}: {} loaded in {}, {} dead-lettered{again}; table {} -> {}\n",
            c.table,
            counted(c.rows_loaded, "row"),
            counted(c.files, "file"),
            c.sink_dead_lettered,
            rows_or_unknown(c.table_rows_before),
            (c.table_rows_after).map_or_else(|| "(not counted)".to_owned(), |n| counted(n, "row"))
        ));
    }
    out.push_str(&format!(
        "  dead letters: {} from this run in {}{}{}\n",
        s.dead_letters,
        s.dead_letter_topic,
        match s.dead_letters_already_stored {
            0 => String::new(),
            n => format!(", and {n} there already from before a restart, not written again"),
        },
        match s.dead_letters + s.dead_letters_already_stored {
            0 => "",
            _ => " (`sluice dead-letters` prints every run's)",
        }
    ));
    // The summary's own warnings (some, like records waiting after a stop, are known only when
    // it is made), and any its counts imply that it does not hold.
    let implied = warnings(s);
    let missing = implied.iter().filter(|w| !s.warnings.contains(w));
    for w in s.warnings.iter().chain(missing) {
        out.push_str(&format!("  warning: {w}\n"));
    }
    let dropped = s.consume.as_ref().map_or(0, |c| c.records_dropped);
    // A dead letter is not lost, but not loaded either: an "ok" alone would read as every
    // record in the table.
    let aside = match s.dead_letters + s.dead_letters_already_stored {
        0 => String::new(),
        n => format!(" ({} set aside)", counted(n, "dead letter")),
    };
    if s.ok && dropped > 0 {
        out.push_str(&format!(
            "  result: ok, nothing lost but the {} that on_error: drop threw away{aside}\n",
            counted(dropped, "record")
        ));
    } else if s.ok {
        out.push_str(&format!("  result: ok, nothing lost{aside}\n"));
    } else {
        for p in &s.problems {
            out.push_str(&format!("  problem: {p}\n"));
        }
    }
    out
}

/// After a stop: how many of the topic's records (up to its end after the replay, or
/// `topic_end` in a run without one) the warehouse does not hold yet, counted per partition from
/// its committed offset.
fn waiting_after_stop(s: &RunSummary, topic_end: Option<&BTreeMap<i32, i64>>) -> Option<String> {
    let c = s.consume.as_ref()?;
    let end = s.replay.as_ref().map(|r| &r.end_offsets).or(topic_end)?;
    let waiting: i64 = end
        .iter()
        .map(|(p, end)| {
            let from = c.committed_offsets.get(p).or(c.start_offsets.get(p));
            (end - from.copied().unwrap_or(0)).max(0)
        })
        .sum();
    (waiting > 0).then(|| {
        format!(
            "{waiting} records wait in the topic past what the warehouse holds (the stop came \
             before they were loaded); `sluice run --consume-only` loads them"
        )
    })
}

/// What looks wrong in a run though nothing was lost. A replay into a topic that already held
/// messages feeds the file in again. Nothing lost can still be nothing loaded:
/// a transform failing most of its rows is far more likely a wrong param (a misspelt field name)
/// than bad data. The same for the table: rows it cannot take (a header with `Value` and
/// `value`, which become one column) are dead-lettered, not lost, and the run still reconciles.
fn warnings(s: &RunSummary) -> Vec<String> {
    let mut out = Vec::new();
    for t in s.consume.iter().flat_map(|c| &c.transforms) {
        if t.rows_failed > 0 && t.rows_failed * 2 >= t.rows_in {
            out.push(format!(
                "transform {} failed {} of the {} rows it received; check its params \
                 (the failures' reasons are in the log, and in the dead letters unless its \
                 on_error drops them)",
                t.name, t.rows_failed, t.rows_in
            ));
        }
        // Every record came out right, so nothing else would say so.
        if t.batch_only_failures > 0 {
            out.push(format!(
                "transform {} broke on {} only as a batch: its rows, run alone, did not fail so \
                 (but for any that fail alone too). Each such batch ran again a row at a time, \
                 so slowly, each record coming out as it does alone. It breaks on batches of \
                 several rows (its batch loop, or state carried from row to row); `sluice \
                 transform test --batch-size 1`, and with larger batches, tells",
                t.name,
                counted(t.batch_only_failures, "batch call")
            ));
        }
    }
    if let Some(r) = &s.replay {
        // As for a transform: most of a file's rows bad is a wrong delimiter, schema or file.
        let bad = r.rows_dead_lettered + r.rows_dropped + r.rows_already_dead_lettered;
        if bad > 0 && bad * 2 >= r.rows_read {
            out.push(format!(
                "{bad} of the {} records of {} were bad CSV rows, not produced; check \
                 source.delimiter, source.schema and the file (the first of each kind is in the \
                 log{})",
                r.rows_read,
                r.file,
                match r.rows_dead_lettered {
                    0 => "",
                    _ => ", and every one in the dead letters",
                }
            ));
        }
        let before: i64 = r.start_offsets.values().sum();
        // Twice only where the earlier messages were loaded into this table too: by this run
        // (it started below where the replay began) or by one before it (the table held rows).
        // Not so for a table named anew, whose run starts past them.
        let twice = s.consume.as_ref().is_none_or(|c| {
            let below = (c.start_offsets.iter())
                .any(|(p, from)| r.start_offsets.get(p).is_some_and(|began| from < began));
            c.rows_loaded > 0 && (below || c.table_rows_before.is_some_and(|n| n > 0))
        });
        // A resume produces no row the topic holds, and says itself what it found amiss there.
        if before > 0 && twice && !r.resumed {
            let are = match s.consume {
                Some(_) => "are",
                None => "will be",
            };
            out.push(format!(
                "the topic's offsets were already at {before} before this replay (an earlier \
                 replay's messages, or another producer's), and this replay added the file's \
                 rows after them: rows of the file loaded from both {are} in the table twice \
                 (`sluice run --resume` finishes a stopped replay without producing its rows \
                 again; `--consume-only` loads what the topic holds without replaying)"
            ));
        }
    }
    if let Some(c) = &s.consume
        && c.sink_dead_lettered > 0
        && c.sink_dead_lettered * 2 >= c.rows_to_sink
    {
        out.push(format!(
            "the sink dead-lettered {} of the {} rows it received; the table cannot take them \
             (`sluice dead-letters` shows why)",
            c.sink_dead_lettered, c.rows_to_sink
        ));
    }
    out
}

/// The live progress line: rows read, produced, consumed, out of the chain, loaded, rows/s,
/// consumer lag, and the replay's ETA.
fn spawn_progress(stats: Arc<AllStats>, replays: bool) -> ProgressLine {
    let bar =
        indicatif::ProgressBar::with_draw_target(None, indicatif::ProgressDrawTarget::stderr());
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {elapsed} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
    );
    *PROGRESS_BAR.lock().unwrap_or_else(|e| e.into_inner()) = Some(bar.clone());
    let b = bar.clone();
    tokio::spawn(async move {
        // Rates over the last 2 s: deliveries and loads come in bursts, so a 250 ms window
        // would make them jump between 0 and several times the real rate.
        let mut window: std::collections::VecDeque<(Instant, Progress)> = Default::default();
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            // Checked after the wait, so that a bar finished meanwhile is not updated.
            if b.is_finished() {
                break;
            }
            let now = Instant::now();
            let p = Progress::of(&stats, replays);
            let (rate, eta) = match window.front() {
                Some((then, before)) => p.rates(before, now.duration_since(*then)),
                None => (0.0, None),
            };
            b.set_message(p.line(rate, eta));
            b.tick();
            if window.len() == 8 {
                window.pop_front();
            }
            window.push_back((now, p));
        }
    });
    ProgressLine(bar)
}

/// The drawn progress line; dropping it (at the end of a run, or on an early error) takes it off
/// the screen, so that the summary or the error is not drawn over.
struct ProgressLine(indicatif::ProgressBar);

impl Drop for ProgressLine {
    fn drop(&mut self) {
        // Cleared first: a line logged meanwhile still goes around it, and suspending a cleared
        // bar draws nothing.
        self.0.finish_and_clear();
        *PROGRESS_BAR.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

/// One reading of the counters the progress line shows.
#[derive(Debug, Clone, Default)]
struct Progress {
    /// Whether the run replays the CSV (not `--consume-only`).
    replays: bool,
    /// CSV records the replay has taken from the reader.
    read: u64,
    /// CSV records the reader has read: ahead of `read` by up to a channel's worth, and the
    /// count that goes with `bytes_read`.
    scanned: u64,
    produced: u64,
    /// CSV records the replay is done with: produced, dead-lettered or dropped, or (resumed)
    /// found in the topics already.
    handled: u64,
    bytes_read: u64,
    bytes_total: u64,
    /// Records consumed; `None` when the run does not consume.
    consumed: Option<u64>,
    /// Rows the last transform passed on to the sink; `None` without transforms.
    transformed: Option<u64>,
    loaded: u64,
    lag: i64,
}

impl Progress {
    fn of(stats: &AllStats, replays: bool) -> Progress {
        let r = &stats.replay;
        let produced = r.rows_produced.load(Ordering::Relaxed);
        Progress {
            replays,
            read: r.rows_read.load(Ordering::Relaxed),
            scanned: r.records_scanned.load(Ordering::Relaxed),
            produced,
            handled: produced
                + r.rows_dead_lettered.load(Ordering::Relaxed)
                + r.rows_dropped.load(Ordering::Relaxed)
                + r.rows_already_produced.load(Ordering::Relaxed)
                + r.rows_already_dead_lettered.load(Ordering::Relaxed),
            bytes_read: r.input_bytes_read.load(Ordering::Relaxed),
            bytes_total: r.input_bytes_total.load(Ordering::Relaxed),
            consumed: (stats.consumer.as_ref()).map(|c| c.records_consumed.load(Ordering::Relaxed)),
            transformed: (stats.consumer.is_some())
                .then(|| stats.transforms.last())
                .flatten()
                .map(|(_, t)| t.rows_out.load(Ordering::Relaxed)),
            loaded: (stats.sink.as_ref()).map_or(0, |s| s.rows_loaded.load(Ordering::Relaxed)),
            lag: stats.consumer.as_ref().map_or(0, |c| c.total_lag()),
        }
    }

    /// How many records the replay has in all: exact once the reader is through the input,
    /// before that estimated from the bytes it has read. Both counts are the reader's: the
    /// records the replay took lag the bytes read by up to a channel's worth, which made a small
    /// file's total the few records taken so far, at 100% and no ETA from the start.
    fn records_total(&self) -> Option<u64> {
        if self.bytes_total == 0 || self.bytes_read == 0 {
            return None;
        }
        if self.bytes_read >= self.bytes_total {
            return Some(self.scanned);
        }
        Some((self.scanned as f64 * self.bytes_total as f64 / self.bytes_read as f64) as u64)
    }

    /// Rows/s of the run's moving part (records consumed, else rows produced) since `before`,
    /// and the time the replay still needs at the rate it is getting through records, while it
    /// runs.
    fn rates(&self, before: &Progress, elapsed: Duration) -> (f64, Option<Duration>) {
        let secs = elapsed.as_secs_f64().max(1e-3);
        let moving = |p: &Progress| p.consumed.unwrap_or(p.produced);
        let rate = moving(self).saturating_sub(moving(before)) as f64 / secs;
        let replay_rate = self.handled.saturating_sub(before.handled) as f64 / secs;
        let left = self
            .records_total()
            .map_or(0, |t| t.saturating_sub(self.handled));
        let eta = (left > 0 && replay_rate > 0.0)
            .then(|| Duration::from_secs_f64((left as f64 / replay_rate).min(1e9)));
        (rate, eta)
    }

    fn line(&self, rate: f64, eta: Option<Duration>) -> String {
        let mut parts = Vec::new();
        if self.replays {
            parts.push(format!("read {}", self.read));
            let pct = self.records_total().filter(|t| *t > 0).map(|total| {
                format!(
                    " ({:.0}%)",
                    (100.0 * self.handled as f64 / total as f64).min(100.0)
                )
            });
            parts.push(format!(
                "produced {}{}",
                self.produced,
                pct.unwrap_or_default()
            ));
        }
        if let Some(consumed) = self.consumed {
            parts.push(format!("consumed {consumed}"));
            if let Some(transformed) = self.transformed {
                parts.push(format!("transformed {transformed}"));
            }
            parts.push(format!("loaded {}", self.loaded));
        }
        parts.push(format!("{rate:.0} rows/s"));
        if self.consumed.is_some() {
            parts.push(format!("lag {}", self.lag));
        }
        if let Some(eta) = eta {
            let s = eta.as_secs();
            parts.push(format!(
                "replay ETA {}:{:02}:{:02}",
                s / 3600,
                s / 60 % 60,
                s % 60
            ));
        }
        parts.join(" | ")
    }
}

/// Renders every stage's counters as Prometheus text.
fn render_metrics(stats: Arc<AllStats>, pipeline: String) -> Render {
    Arc::new(move |e: &mut Exposition| {
        let p = [("pipeline", pipeline.as_str())];
        let r = &stats.replay;
        e.counter(
            "sluice_source_rows_read_total",
            "CSV records read (good and bad), but not a row the replay stopped at.",
            &p,
            r.rows_read.load(Ordering::Relaxed),
        );
        e.counter(
            "sluice_source_rows_produced_total",
            "Rows confirmed by the broker.",
            &p,
            r.rows_produced.load(Ordering::Relaxed),
        );
        e.counter(
            "sluice_source_rows_dead_lettered_total",
            "Bad CSV rows sent to the dead-letter topic.",
            &p,
            r.rows_dead_lettered.load(Ordering::Relaxed),
        );
        e.counter(
            "sluice_source_rows_dropped_total",
            "Bad CSV rows dropped (source.on_error: drop).",
            &p,
            r.rows_dropped.load(Ordering::Relaxed),
        );
        e.counter(
            "sluice_source_rows_already_produced_total",
            "Rows a resumed replay (--resume) did not produce: the topic held them already.",
            &p,
            r.rows_already_produced.load(Ordering::Relaxed),
        );
        e.counter(
            "sluice_source_rows_already_dead_lettered_total",
            "Bad CSV rows a resumed replay (--resume) did not dead-letter: their letters were there already.",
            &p,
            r.rows_already_dead_lettered.load(Ordering::Relaxed),
        );
        e.counter(
            "sluice_source_bytes_total",
            "Message bytes confirmed by the broker.",
            &p,
            r.bytes.load(Ordering::Relaxed),
        );
        if let Some(c) = &stats.consumer {
            e.counter(
                "sluice_consumer_records_total",
                "Records read from the topic (a run that stops may have read some it never loaded).",
                &p,
                c.records_consumed.load(Ordering::Relaxed),
            );
            e.counter(
                "sluice_consumer_bytes_total",
                "Message bytes consumed.",
                &p,
                c.bytes_consumed.load(Ordering::Relaxed),
            );
            e.counter(
                "sluice_consumer_decode_errors_total",
                "Messages that did not decode as rows.",
                &p,
                c.decode_errors.load(Ordering::Relaxed),
            );
            e.counter(
                "sluice_consumer_commits_total",
                "Offsets committed to Kafka.",
                &p,
                c.commits.load(Ordering::Relaxed),
            );
            e.counter(
                "sluice_consumer_commit_errors_total",
                "Failed offset commits.",
                &p,
                c.commit_errors.load(Ordering::Relaxed),
            );
            e.counter(
                "sluice_consumer_rebalances_total",
                "Rebalances seen.",
                &p,
                c.rebalances.load(Ordering::Relaxed),
            );
            e.gauge(
                "sluice_consumer_in_flight",
                "Records consumed but not yet durable.",
                &p,
                c.in_flight.load(Ordering::Relaxed) as f64,
            );
            let lag = c.lag.lock().map(|l| l.clone()).unwrap_or_default();
            for (partition, lag) in lag {
                let part = partition.to_string();
                e.gauge(
                    "sluice_consumer_lag",
                    "Records behind the partition's end.",
                    &[
                        ("pipeline", pipeline.as_str()),
                        ("partition", part.as_str()),
                    ],
                    lag as f64,
                );
            }
        }
        for (name, t) in &stats.transforms {
            let l = [
                ("pipeline", pipeline.as_str()),
                ("transform", name.as_str()),
            ];
            e.counter(
                "sluice_transform_invocations_total",
                "Batch calls into the component.",
                &l,
                t.invocations.load(Ordering::Relaxed),
            );
            e.counter(
                "sluice_transform_rows_in_total",
                "Rows handed to the transform.",
                &l,
                t.rows_in.load(Ordering::Relaxed),
            );
            e.counter(
                "sluice_transform_rows_out_total",
                "Rows the transform emitted.",
                &l,
                t.rows_out.load(Ordering::Relaxed),
            );
            e.counter(
                "sluice_transform_rows_dropped_total",
                "Rows the transform filtered out (failed rows count as failed only).",
                &l,
                t.rows_dropped.load(Ordering::Relaxed),
            );
            // One series per kind, zeros included, so that a rate over a kind that has not
            // happened yet is 0 rather than absent; summed, they are the transform's failed rows.
            for (kind, n) in FailureKind::ALL.iter().zip(&t.rows_failed_by_kind) {
                e.counter(
                    "sluice_transform_rows_failed_total",
                    "Rows the transform failed, by kind (as in dead letters).",
                    &[l[0], l[1], ("kind", kind.as_str())],
                    n.load(Ordering::Relaxed),
                );
            }
            e.counter(
                "sluice_transform_rows_discarded_total",
                "Rows the transform emitted, thrown away with their record, which failed.",
                &l,
                t.rows_discarded.load(Ordering::Relaxed),
            );
            e.counter(
                "sluice_transform_rows_unfinished_total",
                "Rows of batches that failed as a whole, left unprocessed in the transform (or \
                 emitted by the last one for a batch that failed elsewhere).",
                &l,
                t.rows_unfinished.load(Ordering::Relaxed),
            );
            e.counter(
                "sluice_transform_batch_only_failures_total",
                "Batch calls that trapped or broke the contract while none of their rows did so \
                 run alone (each row ran again alone): a transform that breaks only on batches.",
                &l,
                t.batch_only_failures.load(Ordering::Relaxed),
            );
            e.counter(
                "sluice_transform_instance_restarts_total",
                "Instances rebuilt after a trap or limit.",
                &l,
                t.instance_restarts.load(Ordering::Relaxed),
            );
            e.gauge(
                "sluice_transform_instances",
                "Instances alive now, across the workers (each holds up to memory_mb).",
                &l,
                t.instances.load(Ordering::Relaxed) as f64,
            );
            e.counter(
                "sluice_transform_fuel_consumed_total",
                "Fuel consumed (when fuel metering is on).",
                &l,
                t.fuel_consumed.load(Ordering::Relaxed),
            );
            let buckets: Vec<(f64, u64)> = crate::transform::stats::LATENCY_BUCKETS_MS
                .iter()
                .zip(&t.latency_buckets)
                .map(|(ms, n)| (ms / 1000.0, n.load(Ordering::Relaxed)))
                .collect();
            e.histogram(
                "sluice_transform_batch_seconds",
                "Latency of one batch call.",
                &l,
                &buckets,
                t.latency_sum_ns.load(Ordering::Relaxed) as f64 / 1e9,
                t.latency_count.load(Ordering::Relaxed),
            );
        }
        if let Some(s) = &stats.sink {
            e.counter(
                "sluice_sink_files_total",
                "Files staged.",
                &p,
                s.files.load(Ordering::Relaxed),
            );
            e.counter(
                "sluice_sink_bytes_total",
                "Compressed bytes uploaded to the stage.",
                &p,
                s.bytes.load(Ordering::Relaxed),
            );
            e.counter(
                "sluice_sink_rows_loaded_total",
                "Rows COPY reported loaded.",
                &p,
                s.rows_loaded.load(Ordering::Relaxed),
            );
            e.counter(
                "sluice_sink_rows_dead_lettered_total",
                "Rows the table could not take.",
                &p,
                s.rows_dead_lettered.load(Ordering::Relaxed),
            );
            e.counter(
                "sluice_sink_commits_total",
                "Warehouse transactions committed.",
                &p,
                s.commits.load(Ordering::Relaxed),
            );
            e.counter(
                "sluice_sink_retries_total",
                "HTTP requests retried.",
                &p,
                s.retries.load(Ordering::Relaxed),
            );
            e.counter(
                "sluice_sink_session_renewals_total",
                "Session renewals or re-logins.",
                &p,
                s.session_renewals.load(Ordering::Relaxed),
            );
            for (name, help, h) in [
                (
                    "sluice_sink_put_seconds",
                    "Latency of PUT plus the upload.",
                    &s.put_latency,
                ),
                (
                    "sluice_sink_copy_seconds",
                    "Latency of the COPY + offsets transaction.",
                    &s.copy_latency,
                ),
            ] {
                let snap = h.snapshot();
                e.histogram(name, help, &p, &snap.buckets, snap.sum_seconds, snap.count);
            }
        }
        if let Some(d) = &stats.dead_letters {
            e.counter(
                "sluice_dead_letters_total",
                "Dead letters stored in the dead-letter topic.",
                &p,
                d.letters_stored.load(Ordering::Relaxed),
            );
        }
    })
}

/// Reconciles a finished run against the CSV, the broker and the warehouse, prints the report on
/// stdout and returns the checks that failed (none when every row is accounted for). Restarts the embedded broker and emulator (their data persists in the state directory)
/// when the pipeline uses them.
pub async fn verify(
    loaded: LoadedConfig,
    summary_path: &Path,
    state_dir: &Path,
) -> anyhow::Result<Vec<String>> {
    let cfg = &loaded.config;
    // A summary that is not there, or not one, is a wrong flag (exit 2), not a gap found (1).
    let text = match std::fs::read_to_string(summary_path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(crate::transform::cli::UsageError(anyhow::anyhow!(
                "no run summary at {}: run `sluice run --until-end` first (every run writes \
                 last-run.json in its --state-dir), or pass the --state-dir or --summary FILE of \
                 the run to check",
                summary_path.display()
            ))
            .into());
        }
        r => r.with_context(|| format!("cannot read {}", summary_path.display()))?,
    };
    let summary: RunSummary = match serde_json::from_str(&text) {
        Ok(s) => s,
        Err(e) => {
            return Err(crate::transform::cli::UsageError(
                anyhow::Error::new(e)
                    .context(format!("{} is not a run summary", summary_path.display())),
            )
            .into());
        }
    };
    // A run that has not ended yet, rather than one that died, when its state directory is
    // still held.
    if summary.unfinished && state_dir_in_use(state_dir) {
        anyhow::bail!(
            "a sluice run is still going on the state directory {}; verify it once it has ended",
            state_dir.display()
        );
    }
    if summary.pipeline != cfg.name {
        // Checking one pipeline's topic and table against another's counts proves nothing.
        return Err(crate::transform::cli::UsageError(anyhow::anyhow!(
            "{} is the summary of pipeline {:?}, not of {:?} (the name in {}); pass this \
             pipeline's --summary, or the --state-dir it ran with",
            summary_path.display(),
            summary.pipeline,
            cfg.name,
            loaded.file.display()
        ))
        .into());
    }
    // The same name is not the same pipeline: a file whose topic or CSV changed since the run
    // would be checked against another feed's numbers.
    // The summary was written with secrets masked: compare the file's values masked the same way.
    let csv = csv_source(cfg)?;
    let mut differs = Vec::new();
    let mut compare = |what: &str, in_summary: &str, in_file: &str| {
        let in_file = loaded.redact(in_file);
        if in_summary != in_file {
            differs.push(format!("{what} {in_summary:?} (the file says {in_file:?})"));
        }
    };
    if !summary.topic.is_empty() {
        compare("topic", &summary.topic, &cfg.kafka.topic);
    }
    compare(
        "dead-letter topic",
        &summary.dead_letter_topic,
        &dead_letter_topic(cfg),
    );
    if let Some(r) = &summary.replay {
        compare("CSV", &r.file, &csv.path);
    }
    if !differs.is_empty() {
        return Err(crate::transform::cli::UsageError(anyhow::anyhow!(
            "{} is the summary of a run of {:?} with {}: {} has changed since that run; verify \
             it after a run of the pipeline as it is now",
            summary_path.display(),
            cfg.name,
            differs.join(", "),
            loaded.file.display()
        ))
        .into());
    }
    let mut checks: Vec<(String, bool)> = Vec::new();
    let mut check = |what: String, ok: bool| checks.push((what, ok));
    check(
        format!(
            "run finished without problems ({} reported)",
            summary.problems.len()
        ),
        summary.ok,
    );
    for p in &summary.problems {
        crate::errln!("  reported problem: {p}");
    }

    // 1. The CSV file itself, read again from disk.
    if let Some(r) = &summary.replay {
        let path = loaded.resolve(&csv.path);
        let (good, bad) = tokio::task::spawn_blocking({
            let (path, csv) = (path.clone(), csv.clone());
            let max_bytes = crate::source::producer::max_message_bytes(&cfg.kafka);
            move || count_csv(&path, &csv, max_bytes)
        })
        .await??;
        let loops = u64::from(csv.loops.get());
        check(
            format!(
                "CSV {}: {} x {} = {} read",
                path.display(),
                counted(good + bad, "record"),
                counted(loops, "loop"),
                r.rows_read
            ),
            (good + bad) * loops == r.rows_read,
        );
        // A resumed replay produced only what the topics did not hold already.
        let (rows_there, letters_there) = match r.resumed {
            true => (
                format!(" + {} in the topic already", r.rows_already_produced),
                format!(" + {} there already", r.rows_already_dead_lettered),
            ),
            false => Default::default(),
        };
        check(
            format!(
                "CSV: {} x {loops} = {} produced{rows_there}",
                counted(good, "good row"),
                r.rows_produced
            ),
            good * loops == r.rows_produced + r.rows_already_produced,
        );
        check(
            format!(
                "CSV: {} x {loops} = {} dead-lettered{letters_there} + {} dropped",
                counted(bad, "bad row"),
                r.rows_dead_lettered,
                r.rows_dropped
            ),
            bad * loops == r.rows_dead_lettered + r.rows_already_dead_lettered + r.rows_dropped,
        );
    }

    let consumes = summary.consume.is_some();
    let services = Services::start(cfg, state_dir, consumes, || Ok(())).await?;
    let topic_end = consume::end_offsets(&cfg.kafka, &services.bootstrap, &cfg.kafka.topic)
        .await
        .context("cannot read the topic's end offsets")?;
    let on_topic: i64 = topic_end.values().sum();
    if summary.replay.is_none() && summary.consume.is_some() {
        // A consume-only run says nothing of the replay that filled the topic, which may have
        // been stopped part-way: then the table cannot hold the whole file, however cleanly
        // this run loaded what the topic has.
        let path = loaded.resolve(&csv.path);
        let counted = tokio::task::spawn_blocking({
            let (path, csv) = (path.clone(), csv.clone());
            let max_bytes = crate::source::producer::max_message_bytes(&cfg.kafka);
            move || count_csv(&path, &csv, max_bytes)
        })
        .await?;
        if let Ok((good, _)) = counted {
            let wanted = good * u64::from(csv.loops.get());
            check(
                format!(
                    "topic {}: {on_topic} messages, expected at least the {wanted} good rows of {} (a \
                     replay stopped part-way leaves fewer: `sluice run --resume` produces the rest)",
                    cfg.kafka.topic,
                    path.display()
                ),
                on_topic >= wanted as i64,
            );
        }
    }
    if let Some(r) = &summary.replay {
        let at_replay: i64 = r.end_offsets.values().sum();
        check(
            format!(
                "topic {}: {on_topic} messages now, {at_replay} after the replay, {} produced by it",
                cfg.kafka.topic, r.rows_produced
            ),
            on_topic >= at_replay && at_replay >= r.rows_produced as i64,
        );
    }
    // The pipeline's own name: the summary's is masked where it holds a secret.
    let dlq_end = consume::end_offsets(&cfg.kafka, &services.bootstrap, &dead_letter_topic(cfg))
        .await
        .unwrap_or_default();
    let in_dlq: i64 = dlq_end.values().sum();
    check(
        format!(
            "dead-letter topic {}: {in_dlq} messages, {} from this run",
            summary.dead_letter_topic, summary.dead_letters
        ),
        in_dlq >= summary.dead_letters as i64,
    );

    if let Some(c) = &summary.consume {
        let failed: u64 = c.transforms.iter().map(|t| t.rows_failed).sum();
        let expected_dl = summary.replay.as_ref().map_or(0, |r| r.rows_dead_lettered)
            + c.undecodable
            + c.sink_dead_lettered;
        // Letters found in the topic already stand for records this run set aside too.
        let letters = summary.dead_letters + summary.dead_letters_already_stored;
        let already = match summary.dead_letters_already_stored {
            0 => String::new(),
            n => format!(" (+ {n} there already)"),
        };
        check(
            format!(
                "dead letters: {}{already} = {} source + {} undecodable + <= {failed} transform failures + {} sink",
                summary.dead_letters,
                summary.replay.as_ref().map_or(0, |r| r.rows_dead_lettered),
                c.undecodable,
                c.sink_dead_lettered
            ),
            letters >= expected_dl && letters <= expected_dl + failed,
        );
        if let Some(r) = &summary.replay {
            let leftover = leftover(r, c);
            check(
                match (leftover, c.records_redelivered) {
                    (0, 0) => format!(
                        "consumed {} records = {} produced",
                        c.records, r.rows_produced
                    ),
                    (0, again) => format!(
                        "consumed {} records = {} produced + {again} delivered again",
                        c.records, r.rows_produced
                    ),
                    (n, 0) => format!(
                        "consumed {} records = {} produced + {n} left in the topic, unloaded, \
                         by earlier runs",
                        c.records, r.rows_produced
                    ),
                    (n, again) => format!(
                        "consumed {} records = {} produced + {n} left in the topic, unloaded, \
                         by earlier runs + {again} delivered again",
                        c.records, r.rows_produced
                    ),
                },
                c.records == r.rows_produced + leftover + c.records_redelivered,
            );
        }
        // The records of a batch the chain stopped on entered it: the transforms count them.
        let mut flow = c.records - c.undecodable + c.records_unfinished;
        for t in &c.transforms {
            // Every count of the transform's line, so that its rows add up when it maps one to
            // one (a flat-map's out is more than its in).
            let mut more = t.failed_kinds();
            if t.rows_discarded > 0 {
                more += &format!(", {} discarded with their record", t.rows_discarded);
            }
            if t.rows_unfinished > 0 {
                more += &format!(", {} unfinished", t.rows_unfinished);
            }
            check(
                format!(
                    "transform {}: {} in = {} upstream; {} out, {} dropped, {} failed{more}",
                    t.name, t.rows_in, flow, t.rows_out, t.rows_dropped, t.rows_failed
                ),
                t.rows_in == flow,
            );
            flow = t.rows_out;
        }
        check(
            format!(
                "sink: {} rows reached it = {} emitted by the chain",
                c.rows_to_sink, flow
            ),
            c.rows_to_sink == flow,
        );
        check(
            format!(
                "sink: {} loaded + {} dead-lettered + {} left to another delivery = {} received",
                c.rows_loaded, c.sink_dead_lettered, c.rows_redelivered, c.rows_to_sink
            ),
            c.rows_loaded + c.sink_dead_lettered + c.rows_redelivered == c.rows_to_sink,
        );

        let sink =
            SnowflakeSink::connect(&snowflake(&loaded), &cfg.name, services.connect_options())
                .await
                .with_context(|| snowflake_at(&loaded))?;
        let rows_now = sink
            .count_rows()
            .await
            .context("cannot count the table's rows")?;
        check(
            format!(
                "warehouse {}: {rows_now} rows now, {} before the run + {} loaded",
                c.table,
                rows_or_unknown(c.table_rows_before),
                c.rows_loaded
            ),
            c.table_rows_before
                .is_some_and(|before| rows_now == before + c.rows_loaded),
        );
        let offsets = sink
            .committed_offsets(&cfg.kafka.topic)
            .await
            .context("cannot read committed offsets")?;
        if summary.replay.is_some() {
            for (p, end) in &topic_end {
                let committed = offsets.get(p).copied().unwrap_or(0);
                check(
                    format!(
                        "partition {p}: {} holds next offset {committed}, topic end {end}",
                        sink.offsets_table()
                    ),
                    committed == *end,
                );
            }
        } else {
            // A consume alone (a resume) need not reach the end of a topic others still feed,
            // but the warehouse must hold what it committed; the end is shown for comparison.
            for (p, ran_to) in &c.committed_offsets {
                let committed = offsets.get(p).copied().unwrap_or(0);
                let end = topic_end.get(p).copied().unwrap_or(0);
                check(
                    format!(
                        "partition {p}: {} holds next offset {committed}, this run committed \
                         {ran_to}, topic end {end}",
                        sink.offsets_table()
                    ),
                    committed >= *ran_to,
                );
            }
        }
        sink.close().await;
    }
    drop(services);

    let ok = checks.iter().all(|(_, ok)| *ok);
    crate::outln!(
        "sluice verify {} (run {}, {})",
        cfg.name,
        summary.run_id,
        summary.started_at
    );
    for (what, good) in &checks {
        crate::outln!("  [{}] {what}", if *good { " ok " } else { "FAIL" });
    }
    // What the run itself warned of (rows loaded twice after a second replay, records waiting
    // after a stop) holds with every count matching, so is said here too.
    for w in &summary.warnings {
        crate::outln!("  warning (from the run): {w}");
    }
    crate::outln!(
        "{}",
        if ok && summary.consume.is_none() {
            "verify: ok, every row of the file accounted for in the topic (a replay-only run \
             loads nothing; `sluice run --consume-only --until-end` loads it)"
        } else if ok {
            "verify: ok, every row accounted for"
        } else {
            "verify: GAPS FOUND"
        }
    );
    Ok(checks
        .into_iter()
        .filter(|(_, good)| !good)
        .map(|(what, _)| what)
        .collect())
}

/// `sluice dead-letters`: writes every letter in the pipeline's dead-letter topic to stdout (one
/// JSON object per line, the format `source::dlq` documents, every run's letters, in offset order),
/// then how many of each stage and kind to stderr. With no `kafka.brokers` it starts the managed
/// broker on `state_dir`'s data, which outlives the runs that wrote there. A message that is not
/// a JSON object (something else wrote to the topic) is counted and skipped. Stops early, without
/// error, when stdout's reader goes (`| head`). Under `--log-format json` the counts are one
/// event, `"Dead letters read."`, like the rest of stderr.
pub async fn dead_letters(
    cfg: &PipelineConfig,
    state_dir: &Path,
    log_format: LogFormat,
) -> anyhow::Result<()> {
    use std::io::Write as _;
    let data = state_dir.join("broker");
    if cfg.kafka.brokers.trim().is_empty() && !data.is_dir() {
        // Starting a broker there would make an empty one, and "no dead letters" would be a lie.
        return Err(crate::transform::cli::UsageError(anyhow::anyhow!(
            "no managed broker's data in {}: no run used that state directory; pass the \
             --state-dir of the run (it is relative to where that run started)",
            data.display()
        ))
        .into());
    }
    let services = Services::start(cfg, state_dir, false, || Ok(())).await?;
    let topic = dead_letter_topic(cfg);
    let (kafka, bootstrap, t) = (cfg.kafka.clone(), services.bootstrap.clone(), topic.clone());
    let (tally, skipped, unwritten) = tokio::task::spawn_blocking(move || {
        let mut tally: BTreeMap<(String, String), u64> = BTreeMap::new();
        let (mut skipped, mut unwritten) = (0u64, None);
        let mut stdout = std::io::stdout().lock();
        consume::read_to_end(&kafka, &bootstrap, &t, |value| {
            let letter = value.and_then(|v| {
                let text = std::str::from_utf8(v).ok()?;
                let json: serde_json::Value = serde_json::from_str(text).ok()?;
                json.is_object().then_some((text, json))
            });
            let Some((text, json)) = letter else {
                skipped += 1;
                return true;
            };
            // The letters were masked as they were made; this masks what this environment knows
            // as secret too, as every line sluice prints is.
            let written = writeln!(stdout, "{}", crate::config::redact_output(text));
            if let Err(e) = written {
                unwritten = Some(e);
                return false;
            }
            let name = |key: &str| json[key].as_str().unwrap_or("?").to_owned();
            *tally.entry((name("stage"), name("kind"))).or_default() += 1;
            true
        })
        .map(|()| (tally, skipped, unwritten))
    })
    .await?
    .with_context(|| format!("cannot read the dead-letter topic {topic}"))?;
    drop(services);
    match unwritten {
        Some(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            return Err(anyhow::Error::new(e).context("cannot write the dead letters to stdout"));
        }
        _ => {}
    }
    let letters: u64 = tally.values().sum();
    if log_format == LogFormat::Json {
        let by_kind: Vec<_> = (tally.iter())
            .map(|((stage, kind), n)| serde_json::json!({"stage": stage, "kind": kind, "letters": n}))
            .collect();
        let fields = serde_json::json!({
            "topic": topic,
            "letters": letters,
            "by_kind": by_kind,
            "skipped": skipped,
            "stdout_closed": unwritten.is_some(),
        });
        crate::errln!("{}", json_event("INFO", "Dead letters read.", fields));
        return Ok(());
    }
    let partial = match unwritten {
        Some(_) => " printed before stdout closed",
        None => "",
    };
    match letters {
        0 => crate::errln!("no dead letters in {topic}{partial}"),
        n => crate::errln!("{} in {topic}{partial}:", counted(n, "dead letter")),
    }
    for ((stage, kind), n) in &tally {
        crate::errln!("  {stage} {kind}: {n}");
    }
    if skipped > 0 {
        crate::errln!(
            "  ({} skipped: not a dead letter)",
            counted(skipped, "message")
        );
    }
    Ok(())
}

/// Messages that were in the topic before a full run's replay and that no run had loaded yet
/// (a run killed after its replay, say): that run's consume half reads them too, from the first
/// offset it consumed up to where the replay began.
fn leftover(r: &ReplayPart, c: &ConsumePart) -> u64 {
    c.start_offsets
        .iter()
        .map(|(p, first)| (r.start_offsets.get(p).copied().unwrap_or(0) - first).max(0) as u64)
        .sum()
}

/// The pipeline's source as the replay takes it. `run` and `verify` are given files that passed
/// `validate`, which checks the same rules at their keys, so this fails only for a caller that
/// skipped it.
fn csv_source(cfg: &PipelineConfig) -> anyhow::Result<CsvSource> {
    let SourceConfig::Csv(csv) = &cfg.source;
    csv.validate().map_err(|problems| {
        let shown: Vec<String> = (problems.iter())
            .map(|p| format!("source.{}: {}", p.field, p.message))
            .collect();
        anyhow::anyhow!("invalid source: {}", shown.join("; "))
    })
}

/// Counts the good and bad records of a CSV file with the source's own reader.
fn count_csv(path: &Path, csv: &CsvSource, max_bytes: usize) -> anyhow::Result<(u64, u64)> {
    use crate::source::csv::{CsvItem, CsvOptions, CsvReader};
    let opts = CsvOptions {
        delimiter: csv.delimiter,
        schema: csv.schema.clone(),
        infer_rows: csv.infer_rows.get(),
        max_record_bytes: max_bytes,
        null_if: csv.null_if.clone(),
    };
    let mut reader = CsvReader::open(path, &opts, Arc::new(AtomicU64::new(0)), None)?;
    let key_index =
        (csv.key_column.as_deref()).and_then(|k| reader.columns().iter().position(|c| &**c == k));
    let file = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let (mut good, mut bad) = (0, 0);
    while let Some(item) = reader.next_item()? {
        match item {
            // As the source does: a row too large for one message is a bad row too.
            CsvItem::Row { line, row } => {
                let key = key_index.and_then(|i| crate::source::wire::key_of(&row.fields[i].value));
                match crate::source::encode_message(line, &row, key.as_deref(), &file, max_bytes) {
                    Ok(_) => good += 1,
                    Err(_) => bad += 1,
                }
            }
            CsvItem::Bad(_) => bad += 1,
        }
    }
    Ok((good, bad))
}

/// What the problem line of a consume half that `e` stopped adds: how to carry on. A transform
/// that fails a batch, however it does, leaves that batch's offsets uncommitted, so the records
/// are still in the topic for the next run.
fn resume_hint(e: &anyhow::Error) -> &'static str {
    match e.downcast_ref::<crate::transform::TransformError>() {
        Some(crate::transform::TransformError::Failed { .. }) => {
            " (fix the transform, or set its on_error to drop or dead_letter for this kind of \
             failure; then `sluice run --consume-only` resumes from what the warehouse holds, while a full run would \
             replay the whole file again and load its rows twice)"
        }
        // The workers being gone is sluice's own fault, not the transform's.
        Some(crate::transform::TransformError::Stopped) | None => "",
        Some(_) => {
            " (fix the transform or its settings; then `sluice run --consume-only` resumes from \
             what the warehouse holds, while a full run would replay the whole file again and \
             load its rows twice)"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The run's reconciliation counts the file's records as the replay reads them: with the
    /// source's `null_if`, a declared int column's `NULL` is a good row, not a bad one.
    #[test]
    fn the_reconciliation_count_reads_null_if_as_the_source_does() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("n.csv");
        std::fs::write(&path, "id,n\n1,5\n2,NULL\n3,x\n").unwrap();
        let count = |null_if: serde_json::Value| {
            let src = serde_json::json!({
                "type": "csv", "path": "n.csv", "schema": { "n": "int" }, "null_if": null_if,
            });
            let crate::source::config::SourceConfig::Csv(src) =
                serde_json::from_value(src).unwrap();
            count_csv(&path, &src.validate().unwrap(), usize::MAX).unwrap()
        };
        assert_eq!(count(serde_json::json!([])), (1, 2));
        assert_eq!(count(serde_json::json!(["NULL"])), (2, 1));
    }

    /// Offsets loaded past a partition's end (or of a partition the topic lacks) refuse the run;
    /// offsets below its start are records retention deleted; the rest, and partitions never
    /// loaded, are neither.
    #[test]
    fn offsets_past_the_topic_or_below_its_start_are_found() {
        let loaded = BTreeMap::from([(0, 20), (1, 5), (2, 7), (3, 4), (4, 0), (5, 9)]);
        let marks = BTreeMap::from([
            (0, (0, 10)),
            (1, (8, 30)),
            (2, (7, 7)),
            (3, (0, 4)),
            (4, (3, 3)),
        ]);
        let (past, lost) = offsets_beyond(&loaded, &marks);
        assert_eq!(past, vec![(0, 20, Some(10)), (5, 9, None)]);
        assert_eq!(lost, vec![(1, 5, 8)]);
    }

    /// Every error of a transform that stops a run says how to resume it, through the context
    /// the consume half adds; other errors (sluice's own workers gone, too) carry their own.
    #[test]
    fn a_run_stopped_by_a_transform_says_how_to_resume() {
        use crate::transform::TransformError;
        let stopped_by = |e: TransformError| resume_hint(&anyhow::Error::new(e).context("batch"));
        let too_much = stopped_by(TransformError::TooMuchOutput {
            transform: "t".into(),
            rows: 6,
            of: 30,
            memory_mb: 8,
        });
        assert!(
            too_much.contains("`sluice run --consume-only` resumes"),
            "{too_much}"
        );
        assert!(!too_much.contains("on_error"), "{too_much}");
        assert_eq!(stopped_by(TransformError::Stopped), "");
        assert_eq!(resume_hint(&anyhow::anyhow!("the sink failed")), "");
    }

    /// The sink reads `private_key_path` relative to the pipeline file, where `validate` looked
    /// for it, whatever the current directory; and an empty `${VAR:-}` is no key at all.
    #[test]
    fn the_private_key_path_is_relative_to_the_pipeline_file() {
        let text = |key: &str| {
            format!(
                r#"{{"version": 1, "source": {{"type": "csv", "path": "d.csv"}},
                "kafka": {{"topic": "t"}},
                "sink": {{"type": "snowflake", "database": "D", "schema": "S", "table": "T",
                         "account_url": "https://a.snowflakecomputing.com", "account": "A",
                         "user": "U", "private_key_path": "{key}"}}}}"#
            )
        };
        let load = |key: &str| {
            crate::config::load_str(&text(key), Path::new("/etc/sluice/p.json"), &|_| None).unwrap()
        };
        let sf = snowflake(&load("keys/rsa.p8"));
        assert_eq!(
            sf.private_key_path.as_deref(),
            Some("/etc/sluice/keys/rsa.p8")
        );
        let sf = snowflake(&load("/abs/rsa.p8"));
        assert_eq!(sf.private_key_path.as_deref(), Some("/abs/rsa.p8"));
        assert_eq!(snowflake(&load(" ")).private_key_path, None);
    }

    /// A terminal that records what is drawn on it, and a log stream writing into the same record.
    #[derive(Debug, Clone, Default)]
    struct Screen(Arc<std::sync::Mutex<Vec<String>>>);

    impl Screen {
        fn push(&self, what: String) {
            self.0.lock().unwrap().push(what);
        }
    }

    impl indicatif::TermLike for Screen {
        fn width(&self) -> u16 {
            100
        }
        fn move_cursor_up(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn move_cursor_down(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn move_cursor_right(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn move_cursor_left(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn write_line(&self, s: &str) -> std::io::Result<()> {
            self.push(format!("draw {s}"));
            Ok(())
        }
        fn write_str(&self, s: &str) -> std::io::Result<()> {
            self.push(format!("draw {s}"));
            Ok(())
        }
        fn clear_line(&self) -> std::io::Result<()> {
            self.push("clear".into());
            Ok(())
        }
        fn flush(&self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl std::io::Write for Screen {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.push(format!("log {}", String::from_utf8_lossy(buf)));
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// A log line written while the progress line is drawn goes on a cleared line, and the
    /// progress line is drawn again after it, not left half overwritten.
    #[test]
    fn log_lines_are_written_around_the_progress_line() {
        let screen = Screen::default();
        let bar = indicatif::ProgressBar::with_draw_target(
            None,
            indicatif::ProgressDrawTarget::term_like(Box::new(screen.clone())),
        );
        bar.set_style(indicatif::ProgressStyle::with_template("{msg}").unwrap());
        bar.set_message("consumed 10");
        bar.tick();
        write_under(Some(&bar), &mut screen.clone(), b"WARN slow\n").unwrap();
        let seen = screen.0.lock().unwrap().clone();
        let log = seen.iter().position(|s| s == "log WARN slow\n").unwrap();
        let drawn = |s: &String| s.starts_with("draw ") && s.contains("consumed 10");
        assert!(seen[..log].iter().any(drawn), "{seen:?}");
        let last_draw = seen[..log].iter().rposition(drawn).unwrap();
        assert!(
            seen[last_draw..log].contains(&"clear".to_owned()),
            "{seen:?}"
        );
        assert!(seen[log..].iter().any(drawn), "{seen:?}");
    }

    #[test]
    fn the_progress_line_shows_each_stage_and_the_replay_eta() {
        // The reader is a fifth into the file at 1000 records (so ~5000 in all) and ahead of
        // the producer, as it is under pacing.
        let before = Progress {
            replays: true,
            read: 320,
            scanned: 1000,
            produced: 300,
            handled: 300,
            bytes_read: 20_000,
            bytes_total: 100_000,
            consumed: Some(200),
            transformed: Some(100),
            loaded: 50,
            lag: 100,
        };
        let now = Progress {
            read: 810,
            scanned: 1500,
            produced: 790,
            handled: 800,
            bytes_read: 30_000,
            consumed: Some(700),
            transformed: Some(350),
            loaded: 300,
            lag: 90,
            ..before
        };
        // 500 records consumed and 500 replayed in 2 s; 4200 of ~5000 left at 250/s is 16.8 s.
        let (rate, eta) = now.rates(&before, Duration::from_secs(2));
        assert_eq!(rate, 250.0);
        assert_eq!(eta.map(|d| d.as_secs()), Some(16));
        assert_eq!(
            now.line(rate, eta),
            "read 810 | produced 790 (16%) | consumed 700 | transformed 350 | loaded 300 \
             | 250 rows/s | lag 90 | replay ETA 0:00:16"
        );
        // Replay only: no consumer columns, the rate is rows produced; once the reader is through
        // the file, the count is exact, and nothing is left when every record is handled.
        let replay = |produced, bytes_read| Progress {
            replays: true,
            read: produced,
            scanned: 5000,
            produced,
            handled: produced,
            bytes_read,
            bytes_total: 100_000,
            ..Progress::default()
        };
        let (rate, eta) =
            replay(4500, 100_000).rates(&replay(4000, 100_000), Duration::from_secs(1));
        assert_eq!(rate, 500.0);
        assert_eq!(eta, Some(Duration::from_secs(1)));
        assert_eq!(
            replay(4500, 100_000).line(rate, eta),
            "read 4500 | produced 4500 (90%) | 500 rows/s | replay ETA 0:00:01"
        );
        let (_, eta) = replay(5000, 100_000).rates(&replay(4500, 100_000), Duration::from_secs(1));
        assert_eq!(eta, None);
        // No transforms: nothing to call transformed; nothing read yet: no percentage.
        let plain = Progress {
            replays: true,
            consumed: Some(5),
            ..Progress::default()
        };
        assert_eq!(
            plain.line(0.0, None),
            "read 0 | produced 0 | consumed 5 | loaded 0 | 0 rows/s | lag 0"
        );
        // Consume only: no replay columns.
        let consume_only = Progress {
            replays: false,
            ..plain
        };
        assert_eq!(
            consume_only.line(0.0, None),
            "consumed 5 | loaded 0 | 0 rows/s | lag 0"
        );
    }

    #[test]
    fn a_transform_line_shows_its_fuel_when_metered() {
        let part = TransformPart {
            name: "mask".into(),
            rows_in: 2,
            rows_out: 2,
            ..TransformPart::default()
        };
        assert_eq!(part.to_string(), "mask: 2 in, 2 out, 0 dropped, 0 failed");
        let metered = TransformPart {
            fuel_consumed: Some(1234),
            ..part.clone()
        };
        assert_eq!(
            metered.to_string(),
            "mask: 2 in, 2 out, 0 dropped, 0 failed, fuel consumed 1234"
        );
        let batch_only = |n| TransformPart {
            batch_only_failures: n,
            ..part.clone()
        };
        assert_eq!(
            batch_only(1).to_string(),
            "mask: 2 in, 2 out, 0 dropped, 0 failed, 1 batch call broke only as a batch"
        );
        assert_eq!(
            batch_only(3).to_string(),
            "mask: 2 in, 2 out, 0 dropped, 0 failed, 3 batch calls broke only as a batch"
        );
        let rebuilt = TransformPart {
            instance_restarts: 2,
            fuel_consumed: Some(7),
            ..batch_only(1)
        };
        assert_eq!(
            rebuilt.to_string(),
            "mask: 2 in, 2 out, 0 dropped, 0 failed, 1 batch call broke only as a batch, 2 \
             instances rebuilt (the state each held lost), fuel consumed 7"
        );
        let timed = TransformPart {
            call_time_ns: 4_567_000,
            rows_in: 3_000,
            ..part
        };
        assert_eq!(
            timed.to_string(),
            "mask: 3000 in, 2 out, 0 dropped, 0 failed; 4.57 ms in its calls, 1.52 µs a row"
        );
        assert_eq!(short_duration(Duration::from_nanos(840)), "840 ns");
        assert_eq!(short_duration(Duration::from_micros(12_345)), "12.3 ms");
        assert_eq!(short_duration(Duration::from_secs(125)), "125 s");
        assert_eq!(short_duration(Duration::from_nanos(999_960)), "1.00 ms");
        assert_eq!(short_duration(Duration::from_nanos(999)), "999 ns");
        assert_eq!(short_duration(Duration::from_nanos(5)), "5 ns");
        assert_eq!(short_duration(Duration::from_nanos(999_999_500)), "1.00 s");
    }

    #[test]
    fn a_transform_line_says_how_its_rows_failed() {
        let part = TransformPart {
            name: "mask".into(),
            rows_in: 3,
            rows_failed: 3,
            rows_failed_by_kind: [("trap".into(), 1), ("guest_error".into(), 2)].into(),
            ..TransformPart::default()
        };
        assert_eq!(
            part.to_string(),
            "mask: 3 in, 0 out, 0 dropped, 3 failed (2 guest_error, 1 trap)"
        );
    }

    /// A run that lost nothing but whose transform failed most rows says so: a misspelt field
    /// name dead-letters every record and still reconciles.
    #[test]
    fn a_transform_failing_most_rows_is_a_warning_in_the_summary() {
        let part = |failed| TransformPart {
            name: "filter".into(),
            rows_in: 200,
            rows_out: 200 - failed,
            rows_failed: failed,
            ..TransformPart::default()
        };
        let summary = |failed| RunSummary {
            consume: Some(ConsumePart {
                transforms: vec![part(failed)],
                ..ConsumePart::default()
            }),
            ok: true,
            ..RunSummary::default()
        };
        let text = summary_text(&summary(200));
        assert!(
            text.contains(
                "  warning: transform filter failed 200 of the 200 rows it received; check its params"
            ),
            "{text}"
        );
        assert!(text.contains("result: ok, nothing lost"), "{text}");
        assert!(!summary_text(&summary(3)).contains("warning"));
        assert!(!summary_text(&summary(0)).contains("warning"));
        // The JSON summary carries the same warnings; one written before they existed still
        // reads (verify reads last-run.json).
        let mut warned = summary(200);
        warned.warnings = warnings(&warned);
        let json = serde_json::to_value(&warned).unwrap();
        assert!(
            json["warnings"][0]
                .as_str()
                .is_some_and(|w| w.starts_with("transform filter failed 200 of the 200 rows")),
            "{json:#}"
        );
        let mut old = json.clone();
        old.as_object_mut().unwrap().remove("warnings");
        let read: RunSummary = serde_json::from_value(old).unwrap();
        assert!(read.warnings.is_empty());
        // Records dropped under `on_error: drop` are said to be, beside "nothing lost".
        let mut dropped = summary(3);
        dropped.consume.as_mut().unwrap().records_dropped = 3;
        let text = summary_text(&dropped);
        assert!(
            text.contains("(0 undecodable, 3 dropped by a transform's on_error: drop)"),
            "{text}"
        );
        assert!(
            text.contains(
                "result: ok, nothing lost but the 3 records that on_error: drop threw away"
            ),
            "{text}"
        );
        // Dead letters are not lost, but not in the table either: the result says how many.
        let mut aside = summary(0);
        aside.dead_letters = 17;
        let text = summary_text(&aside);
        let wanted = "result: ok, nothing lost (17 dead letters set aside)\n";
        assert!(text.contains(wanted), "{text}");
        // A transform broken on batches gets every record right, slowly: a warning too.
        let mut batch_only = summary(0);
        batch_only.consume.as_mut().unwrap().transforms[0].batch_only_failures = 23;
        assert_eq!(
            warnings(&batch_only),
            [
                "transform filter broke on 23 batch calls only as a batch: its rows, run alone, did \
                 not fail so (but for any that fail alone too). Each such batch ran again a row at \
                 a time, so slowly, each record coming out as it does alone. It breaks on batches \
                 of several rows (its batch loop, or state carried from row to row); `sluice \
                 transform test --batch-size 1`, and with larger batches, tells"
            ]
        );
    }

    /// Records a stop left unconsumed in the topic are said to wait there, counted from what the
    /// warehouse holds, not reported as if lost; without a stop, the same numbers are a gap.
    #[test]
    fn records_a_stop_left_in_the_topic_are_not_reported_as_lost() {
        let summary = RunSummary {
            mode: "full".into(),
            replay: Some(ReplayPart {
                rows_read: 107,
                rows_produced: 107,
                end_offsets: BTreeMap::from([(0, 60), (1, 57)]),
                start_offsets: BTreeMap::from([(0, 10)]),
                ..ReplayPart::default()
            }),
            consume: Some(ConsumePart {
                records: 103,
                rows_to_sink: 103,
                rows_loaded: 103,
                committed_offsets: BTreeMap::from([(0, 58), (1, 50)]),
                start_offsets: BTreeMap::from([(0, 5), (1, 0)]),
                ..ConsumePart::default()
            }),
            ..RunSummary::default()
        };
        assert_eq!(reconcile(&summary, false, true), Vec::<String>::new());
        assert_eq!(
            waiting_after_stop(&summary, None).as_deref(),
            Some(
                "9 records wait in the topic past what the warehouse holds (the stop came before \
                 they were loaded); `sluice run --consume-only` loads them"
            )
        );
        // A consume-only run counts up to the topic's end at the stop.
        let consume_only = RunSummary {
            replay: None,
            ..summary.clone()
        };
        assert_eq!(waiting_after_stop(&consume_only, None), None);
        let end = BTreeMap::from([(0, 70), (1, 50)]);
        assert!(
            waiting_after_stop(&consume_only, Some(&end))
                .is_some_and(|w| w.starts_with("12 records wait in the topic"))
        );
        assert_eq!(
            reconcile(&summary, false, false),
            ["consume: 103 records consumed but 107 produced"]
        );
        // The printed summary says so too, beside the warnings its counts imply, each once.
        let mut summary = summary;
        summary.ok = true;
        summary.warnings = warnings(&summary);
        summary.warnings.extend(waiting_after_stop(&summary, None));
        let text = summary_text(&summary);
        assert!(
            text.contains("  warning: 9 records wait in the topic"),
            "{text}"
        );
        assert_eq!(
            text.matches("offsets were already at 10").count(),
            1,
            "{text}"
        );
    }

    /// A resumed replay's rows found in the topics count as read and handled, not as a gap; its
    /// summary says so; and the topic's earlier messages are not said to be loaded twice unless
    /// the resume found none of the file's rows among them (it replayed the file whole).
    #[test]
    fn a_resumed_replay_accounts_for_the_rows_found_in_the_topics() {
        let summary = |already: u64| RunSummary {
            mode: "full".into(),
            replay: Some(ReplayPart {
                file: "rows.csv".into(),
                rows_read: 100,
                rows_produced: 90 - already,
                rows_dead_lettered: 6,
                rows_already_produced: already,
                rows_already_dead_lettered: 4,
                resumed: true,
                start_offsets: BTreeMap::from([(0, 40)]),
                ..ReplayPart::default()
            }),
            consume: Some(ConsumePart {
                records: 90,
                rows_to_sink: 90,
                rows_loaded: 90,
                start_offsets: BTreeMap::from([(0, 0)]),
                ..ConsumePart::default()
            }),
            ok: true,
            ..RunSummary::default()
        };
        let resumed = summary(40);
        assert_eq!(reconcile(&resumed, false, false), Vec::<String>::new());
        let text = summary_text(&resumed);
        assert!(
            text.contains("resumed: 40 rows in the topic already, 4 bad rows with letters already"),
            "{text}"
        );
        assert!(!warnings(&resumed).iter().any(|w| w.contains("twice")));
        // None of the 40 messages before it was the file's: the replay itself says what they
        // were (another file of its name, another feed), not that the file is in twice.
        let mut whole = summary(0);
        if let Some(r) = whole.replay.as_mut() {
            r.rows_dead_lettered += 4;
            r.rows_already_dead_lettered = 0;
        }
        assert_eq!(reconcile(&whole, false, false), Vec::<String>::new());
        assert!(!warnings(&whole).iter().any(|w| w.contains("twice")));
        let not_resumed = RunSummary {
            replay: whole.replay.clone().map(|r| ReplayPart {
                resumed: false,
                ..r
            }),
            ..whole.clone()
        };
        assert!(warnings(&not_resumed).iter().any(|w| w.contains("twice")));
        // Rows neither produced nor found are a gap.
        let mut short = summary(40);
        if let Some(r) = short.replay.as_mut() {
            r.rows_already_produced = 30;
        }
        assert_eq!(
            reconcile(&short, false, false),
            [
                "replay: 100 rows read but 50 produced + 6 dead-lettered + 0 dropped + 34 in the \
              topics already"
            ]
        );
    }

    /// A table that could not be counted (the warehouse failed during the run) is shown as not
    /// counted, not as 0 rows, and is not reported as rows gone missing from the table.
    #[test]
    fn a_table_that_could_not_be_counted_is_not_shown_as_empty() {
        let part = |after| ConsumePart {
            table: "MY_TABLE".into(),
            rows_to_sink: 5,
            rows_loaded: 5,
            table_rows_before: Some(5),
            table_rows_after: after,
            ..ConsumePart::default()
        };
        let mut gaps = Vec::new();
        sink_gaps(&part(None), &mut gaps);
        assert_eq!(gaps, Vec::<String>::new());
        let summary = RunSummary {
            consume: Some(part(None)),
            ..RunSummary::default()
        };
        let text = summary_text(&summary);
        assert!(text.contains("table 5 -> (not counted)"), "{text}");
        // A count that did come back still shows a table that lost rows.
        sink_gaps(&part(Some(4)), &mut gaps);
        assert_eq!(
            gaps,
            ["warehouse: 5 rows loaded but the table grew from 5 to 4"]
        );
    }

    /// A sink that dead-letters most rows says so too, even though nothing was lost.
    #[test]
    fn a_sink_dead_lettering_most_rows_is_a_warning_in_the_summary() {
        let summary = |dead| RunSummary {
            consume: Some(ConsumePart {
                rows_to_sink: 10,
                rows_loaded: 10 - dead,
                sink_dead_lettered: dead,
                ..ConsumePart::default()
            }),
            ok: true,
            ..RunSummary::default()
        };
        let text = summary_text(&summary(10));
        assert!(
            text.contains("  warning: the sink dead-lettered 10 of the 10 rows it received"),
            "{text}"
        );
        assert!(!summary_text(&summary(4)).contains("warning"));
        assert!(!summary_text(&summary(0)).contains("warning"));
    }

    /// A file whose rows are mostly bad (a wrong delimiter, a wrong file) is a warning too: the
    /// run reconciles, every bad row a dead letter, and nothing else says so.
    #[test]
    fn a_file_of_mostly_bad_rows_is_a_warning_in_the_summary() {
        let summary = |bad, dropped| RunSummary {
            replay: Some(ReplayPart {
                file: "rows.csv".into(),
                rows_read: 200,
                rows_produced: 200 - bad - dropped,
                rows_dead_lettered: bad,
                rows_dropped: dropped,
                ..ReplayPart::default()
            }),
            ok: true,
            ..RunSummary::default()
        };
        let text = summary_text(&summary(200, 0));
        let wanted = "  warning: 200 of the 200 records of rows.csv were bad CSV rows, not produced; \
                      check source.delimiter, source.schema and the file (the first of each kind \
                      is in the log, and every one in the dead letters)";
        assert!(text.contains(wanted), "{text}");
        assert!(text.contains("result: ok, nothing lost"), "{text}");
        let text = summary_text(&summary(0, 100));
        assert!(text.contains("100 of the 200 records"), "{text}");
        assert!(text.contains("is in the log)"), "{text}");
        assert!(!summary_text(&summary(99, 0)).contains("warning"));
        assert!(!summary_text(&summary(0, 0)).contains("warning"));
    }
}
