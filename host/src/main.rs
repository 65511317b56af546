//! The `sluice` command line: `run`, `replay`, `transform`, `validate`, `schema`, `verify`.
//!
//! Exit codes: 0 ok, 1 runtime failure (or a gap found by `verify` / `--until-end`), 2 bad
//! configuration or usage, 130 a second stop signal. Errors print their whole chain (`{:#}`), as ripgrep does.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use sluice::config::{self, ConfigError};
use sluice::pipeline::{self, LogFormat, RunMode, RunOptions};
use sluice::transform::cli::UsageError;
use sluice::transform::{RuntimeOptions, TransformChain};
use sluice::validate;

// Rows are built on one thread and freed on another (consumer, transform workers, sink); mimalloc
// handles that far better than glibc's malloc (the transform bench shows 30-40% on row handling).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if e.use_stderr() && json_asked() => {
            let text = e.render().to_string();
            let text = text.trim().strip_prefix("error: ").unwrap_or(text.trim());
            let event = serde_json::json!({ "exit_code": 2 });
            sluice::errln!("{}", pipeline::json_event("ERROR", text, event));
            return ExitCode::from(2);
        }
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let log_format = cli.log_format;
    match run(cli) {
        Ok(code) => code,
        Err(err) => {
            let code = if err.downcast_ref::<ConfigError>().is_some()
                || err.downcast_ref::<UsageError>().is_some()
            {
                2
            } else {
                1
            };
            match log_format {
                LogFormat::Human => sluice::errln!("error: {err:#}"),
                LogFormat::Json => sluice::errln!("{}", json_error_line(&err, code)),
            }
            ExitCode::from(code)
        }
    }
}

/// A run's exit code. A run that failed or lost something has said so in its summary; with JSON
/// logs it also ends with an `ERROR` event like any other failed command, so that a collector
/// alerting on `ERROR` sees it.
fn run_ended(problems: &[String], format: LogFormat) -> ExitCode {
    ended("the run did not finish cleanly", problems, format)
}

/// A command's exit code from the problems it has already reported: 1 if there are any, with
/// (under JSON logs) a last `ERROR` event saying `what` and listing them.
fn ended(what: &str, problems: &[String], format: LogFormat) -> ExitCode {
    if problems.is_empty() {
        return ExitCode::SUCCESS;
    }
    if format == LogFormat::Json {
        let err = anyhow::anyhow!("{what}: {}", problems.join("; "));
        sluice::errln!("{}", json_error_line(&err, 1));
    }
    ExitCode::from(1)
}

/// Whether the command line asks for JSON logs, read without clap, which refused it: a
/// collector parsing stderr as JSON events should get the usage error as one too.
fn json_asked() -> bool {
    let args: Vec<String> = std::env::args_os()
        .skip(1)
        .map(|a| a.to_string_lossy().into_owned())
        .take_while(|a| a != "--")
        .collect();
    let mut given = (args.iter().enumerate()).filter_map(|(i, a)| match a.as_str() {
        "--log-format" => args.get(i + 1).map(String::as_str),
        a => a.strip_prefix("--log-format="),
    });
    given.next_back() == Some("json")
}

/// The final error as one line in the shape of the JSON log lines before it, so that a log
/// collector reading `--log-format json` gets the reason a command ended like any other event.
fn json_error_line(err: &anyhow::Error, exit_code: u8) -> String {
    pipeline::json_event(
        "ERROR",
        &format!("{err:#}"),
        serde_json::json!({ "exit_code": exit_code }),
    )
}

/// What `--version` prints: a debug build says so, as it runs transforms and rows several times
/// slower (the scripts and tests use one; a pipeline deserves `cargo build --release`).
const VERSION: &str = if cfg!(debug_assertions) {
    concat!(env!("CARGO_PKG_VERSION"), " (debug build)")
} else {
    env!("CARGO_PKG_VERSION")
};

/// sluice: replay a CSV into Kafka, transform it with WebAssembly, load it into Snowflake exactly once.
#[derive(Parser, Debug)]
#[command(name = "sluice", version = VERSION, about)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value = "human")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand, Debug)]
enum Command {
    /// Replay the CSV into Kafka and consume, transform and load it, in one process.
    Run(RunArgs),
    /// Replay the CSV into Kafka only (the producer half).
    Replay(ReplayArgs),
    /// Author tools: scaffold, build and test transform components.
    #[command(subcommand)]
    Transform(Box<sluice::transform::cli::TransformCommand>),
    /// Check a pipeline file offline; every error names its JSON path and line (exit 2).
    Validate {
        /// The pipeline file.
        pipeline: PathBuf,
        /// Skip loading components and running their `init` (and so the sample run).
        #[arg(long)]
        no_components: bool,
        /// How many of the CSV's first records to run through the transforms: a transform that
        /// fails every row that reaches it is an error. 0 skips the sample run.
        #[arg(long, value_name = "N", default_value_t = validate::SAMPLE_ROWS)]
        sample_rows: usize,
    },
    /// Print the JSON Schema of pipeline.json.
    Schema {
        /// Print the JSON Schema of a run's summary (`--summary`) instead, each field described.
        #[arg(long)]
        summary: bool,
    },
    /// Print the dead letters in the pipeline's dead-letter topic, one JSON object per line,
    /// and how many of each stage and kind (to stderr).
    DeadLetters {
        /// The pipeline file.
        pipeline: PathBuf,
        /// Directory for embedded-mode state (the managed broker's data).
        #[arg(long, default_value = ".sluice")]
        state_dir: PathBuf,
    },
    /// Reconcile a finished run: CSV rows, produced, per-transform counts, dead letters and rows
    /// in the warehouse; exit 1 on any gap.
    Verify {
        /// The pipeline file.
        pipeline: PathBuf,
        /// The run summary to check (written by `run --summary`).
        #[arg(long)]
        summary: Option<PathBuf>,
        /// Directory for embedded-mode state (managed broker and emulator data).
        #[arg(long, default_value = ".sluice")]
        state_dir: PathBuf,
    },
}

#[derive(clap::Args, Debug)]
struct CommonArgs {
    /// The pipeline file.
    pipeline: PathBuf,
    /// Directory for embedded-mode state (managed broker and emulator data, last run summary).
    #[arg(long, default_value = ".sluice")]
    state_dir: PathBuf,
    /// Serve Prometheus metrics at http://HOST:PORT/metrics (HOST a name or an address).
    #[arg(long, value_parser = socket_addr)]
    metrics_addr: Option<SocketAddr>,
    /// Write the final summary as JSON to this file (its directory is made if missing).
    #[arg(long, value_parser = summary_path)]
    summary: Option<PathBuf>,
    /// Never draw the live progress line (it is drawn only on a TTY anyway).
    #[arg(long)]
    no_progress: bool,
    /// After Ctrl-C or SIGTERM, how long to wait for in-flight work (a load the warehouse has
    /// not answered, say) before exiting without it. What the warehouse committed is kept.
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    drain_timeout: u64,
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Bounded run: wait for the replay to finish, drain, flush, wait for warehouse commits, print
    /// the summary and exit (1 if anything was lost or failed; records set aside as dead
    /// letters are neither, and the summary counts the letters).
    #[arg(long)]
    until_end: bool,
    /// Only replay the CSV into Kafka.
    #[arg(long, conflicts_with = "consume_only")]
    replay_only: bool,
    /// Only consume, transform and load (with `--until-end`, up to the end offsets at start).
    #[arg(long)]
    consume_only: bool,
    /// Resume a replay stopped part-way: read the topic (and the dead-letter topic) first, then
    /// produce only the file's rows it does not hold yet, found by their file and line headers
    /// (the consume half loads from what the warehouse holds, as always). Run again after a
    /// stop, the file ends up in the topic, and in the table, once.
    #[arg(long, conflicts_with = "consume_only")]
    resume: bool,
}

#[derive(clap::Args, Debug)]
struct ReplayArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Resume a replay stopped part-way: read the topic (and the dead-letter topic) first, then
    /// produce only the file's rows it does not hold yet, found by their file and line headers.
    #[arg(long)]
    resume: bool,
}

/// Loads and checks the pipeline file before anything starts. With `transforms` (a run that uses
/// them), also loads the chain: a component that will not load, or whose `init` refuses its
/// params or runs out of a limit, is a configuration mistake (exit 2, naming the key) found
/// before a broker or an emulator is started, not a runtime failure. The run then uses the chain
/// loaded here, so each component is compiled once per run.
fn load(
    pipeline: &std::path::Path,
    transforms: bool,
) -> anyhow::Result<(config::LoadedConfig, Option<TransformChain>)> {
    let loaded = config::load(pipeline)?;
    loaded.mask_secrets_in_output();
    let checked = match transforms {
        true => validate::validate_and_load(&loaded, &RuntimeOptions::default())?.map(Some),
        false => match validate::validate(&loaded) {
            issues if issues.is_empty() => Ok(None),
            issues => Err(issues),
        },
    };
    match checked {
        Ok(chain) => Ok((loaded, chain)),
        Err(issues) => Err(loaded.invalid(issues).into()),
    }
}

fn options(
    common: CommonArgs,
    mode: RunMode,
    until_end: bool,
    resume: bool,
    log_format: LogFormat,
) -> RunOptions {
    RunOptions {
        mode,
        until_end,
        state_dir: common.state_dir,
        metrics_addr: common.metrics_addr,
        summary: common.summary,
        progress: !common.no_progress,
        log_format,
        drain_timeout: std::time::Duration::from_secs(common.drain_timeout),
        resume,
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run(args) => {
            pipeline::init_logging(cli.log_format);
            let (loaded, chain) = load(&args.common.pipeline, !args.replay_only)?;
            let mode = if args.replay_only {
                RunMode::ReplayOnly
            } else if args.consume_only {
                RunMode::ConsumeOnly
            } else {
                RunMode::Full
            };
            let opts = options(
                args.common,
                mode,
                args.until_end || mode == RunMode::ReplayOnly,
                args.resume,
                cli.log_format,
            );
            let problems = runtime()?.block_on(pipeline::run(loaded, chain, opts))?;
            Ok(run_ended(&problems, cli.log_format))
        }
        Command::Replay(ReplayArgs { common, resume }) => {
            pipeline::init_logging(cli.log_format);
            let (loaded, _) = load(&common.pipeline, false)?;
            let opts = options(common, RunMode::ReplayOnly, true, resume, cli.log_format);
            let problems = runtime()?.block_on(pipeline::run(loaded, None, opts))?;
            Ok(run_ended(&problems, cli.log_format))
        }
        Command::Transform(cmd) => {
            pipeline::init_logging(cli.log_format);
            sluice::transform::cli::run_command(*cmd)
        }
        Command::Validate {
            pipeline,
            no_components,
            sample_rows,
        } => {
            pipeline::init_logging(cli.log_format);
            let loaded = config::load(&pipeline)?;
            loaded.mask_secrets_in_output();
            let issues = match no_components {
                true => validate::validate(&loaded),
                false => {
                    let opts = RuntimeOptions {
                        workers: 1,
                        ..RuntimeOptions::default()
                    };
                    let (sample, issues) =
                        validate::validate_with_sample(&loaded, &opts, sample_rows)?;
                    if let Some(sample) = sample {
                        let say = |level: &str, text: String| match cli.log_format {
                            LogFormat::Json => sluice::errln!(
                                "{}",
                                pipeline::json_event(level, &text, serde_json::json!({}))
                            ),
                            LogFormat::Human => sluice::errln!("{text}"),
                        };
                        say("INFO", format!("{}: {sample}", pipeline.display()));
                        for warning in &sample.warnings {
                            say("WARN", format!("warning: {warning}"));
                        }
                    }
                    issues
                }
            };
            if !issues.is_empty() {
                return Err(loaded.invalid(issues).into());
            }
            sluice::outln!("{}: ok", pipeline.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Schema { summary } => {
            let schema = match summary {
                true => pipeline::summary_schema(),
                false => config::json_schema(),
            };
            sluice::outln!("{}", serde_json::to_string_pretty(&schema)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::DeadLetters {
            pipeline,
            state_dir,
        } => {
            pipeline::init_logging(cli.log_format);
            // Not validated, and only the kafka and dead_letter sections read: the CSV and the
            // components may be long gone, and the transforms' params (a salt) or the
            // warehouse's credentials unset where the letters are read.
            let loaded = config::load_for_letters(&pipeline)?;
            loaded.mask_secrets_in_output();
            let read = pipeline::dead_letters(&loaded.config, &state_dir, cli.log_format);
            runtime()?.block_on(read)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Verify {
            pipeline,
            summary,
            state_dir,
        } => {
            pipeline::init_logging(cli.log_format);
            let (loaded, _) = load(&pipeline, false)?;
            let summary = summary.unwrap_or_else(|| state_dir.join("last-run.json"));
            let gaps = runtime()?.block_on(pipeline::verify(loaded, &summary, &state_dir))?;
            Ok(ended("verify found gaps", &gaps, cli.log_format))
        }
    }
}

/// `HOST:PORT`, the host a name (`localhost`) or an address: its first address.
fn socket_addr(text: &str) -> Result<SocketAddr, String> {
    use std::net::ToSocketAddrs as _;
    let mut addrs = text
        .to_socket_addrs()
        .map_err(|e| format!("{e} (expected HOST:PORT, e.g. 127.0.0.1:9898)"))?;
    addrs
        .next()
        .ok_or_else(|| format!("{text} resolves to no address"))
}

/// A summary file, not a directory (the run makes its directory, like `--state-dir`, before it
/// starts anything, so a path it cannot write fails then, not after a whole run).
fn summary_path(text: &str) -> Result<PathBuf, String> {
    let path = PathBuf::from(text);
    if path.is_dir() {
        return Err(format!("{text} is a directory"));
    }
    Ok(path)
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}
