//! Errors of the transform runtime: loading a component, and failures that stop a whole batch.

use std::fmt;
use std::path::PathBuf;

use super::runtime::{
    ISOLATED_OUTPUT_CEILING_MIB, ISOLATED_OUTPUT_PER_MEMORY_BYTE, ISOLATION_LIMITS,
    ISOLATION_ROW_MS, isolated_output_mib,
};

/// What to do about a component file `path` that does not exist: build it, in the workspace
/// whose `target` it is in when that is not `./transforms` (`sluice transform build` alone
/// builds only there). Paths in the docs and in `pipeline.json` assume builds in
/// `transforms/target`, so when `CARGO_TARGET_DIR` moves them, building again would not help
/// without saying where they went.
pub(crate) fn not_found_hint(path: &std::path::Path) -> String {
    let text = path.to_string_lossy();
    let workspace = text
        .rsplit_once("/target/wasm32-wasip2/")
        .map(|(ws, _)| if ws.is_empty() { "/" } else { ws })
        .filter(|ws| {
            let here = std::env::current_dir().map(|d| d.join("transforms"));
            !matches!(*ws, "transforms" | "./transforms")
                && here.is_ok_and(|here| here != std::path::Path::new(ws))
                // Not a `CARGO_TARGET_DIR` of its own, say `~/target`, which is no workspace.
                && std::path::Path::new(ws).join("Cargo.toml").is_file()
        });
    let build = match workspace {
        Some(ws) => format!("sluice transform build --dir {ws}"),
        None => "sluice transform build".to_owned(),
    };
    let mut hint = format!("(check the path, or build it with `{build}`)");
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR").filter(|d| !d.is_empty()) {
        hint.push_str(&format!(
            "; CARGO_TARGET_DIR is set, so builds go to {}, not transforms/target",
            std::path::Path::new(&dir).display()
        ));
    }
    hint
}

/// Why a transform could not be loaded (bad file, wrong world, params rejected by `init`).
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The wasm engine or its linker could not be set up, or a worker thread not started: the
    /// machine's fault, not the component's (a compilation cache that cannot be used is only
    /// warned of).
    #[error("cannot set up the wasm engine: {0}")]
    Engine(String),
    /// A setting of the transform is out of range (see
    /// [`TransformConfig::validate`](crate::transform::config::TransformConfig::validate)).
    #[error("transform {transform}: {message}")]
    Config {
        /// The transform's name.
        transform: String,
        /// The setting, e.g. `memory_mb`.
        field: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// There is no component file at that path (usually: not built yet).
    #[error("component {path} does not exist {}", not_found_hint(path))]
    NotFound {
        /// The component path.
        path: PathBuf,
    },
    /// The component file could not be read.
    #[error("cannot read component {path}")]
    Read {
        /// The component path.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a valid WebAssembly component (a core module, corrupt, ...).
    #[error("{path} is not a valid WebAssembly component: {reason}")]
    InvalidComponent {
        /// The component path.
        path: PathBuf,
        /// What wasmtime reported.
        reason: String,
    },
    /// The component does not implement `sluice:transform/transformer@0.1.0`, or imports
    /// something the host does not provide (another WIT version, a capability).
    #[error("{path} is not a sluice:transform@0.1.0 transform: {reason}")]
    WrongWorld {
        /// The component path.
        path: PathBuf,
        /// What is missing or mismatched.
        reason: String,
    },
    /// `init` rejected one of the `with` params.
    #[error("transform {transform} rejected param `{param}`: {reason}")]
    InvalidParam {
        /// The transform's name.
        transform: String,
        /// The param the guest named.
        param: String,
        /// The guest's reason.
        reason: String,
    },
    /// `init` failed for another reason, or trapped.
    #[error("init of transform {transform} failed: {reason}")]
    Init {
        /// The transform's name.
        transform: String,
        /// The guest's error or the trap.
        reason: String,
        /// The limit `init` ran into, if that was why.
        limit: Option<FailureKind>,
    },
}

impl LoadError {
    /// The `with` param this error is about, if any (for `transforms[i].with.<param>` paths).
    pub fn param(&self) -> Option<&str> {
        match self {
            LoadError::InvalidParam { param, .. } => Some(param),
            _ => None,
        }
    }

    /// The transform setting behind this error: the one out of range, or the limit
    /// (`memory_mb`, `timeout_ms`, `fuel`) that `init` ran into.
    pub fn setting(&self) -> Option<&'static str> {
        match self {
            LoadError::Init {
                limit: Some(kind), ..
            } => kind.setting(),
            LoadError::Config { field, .. } => Some(field),
            _ => None,
        }
    }
}

/// Why one record failed inside a transform. The string forms are the dead-letter `kind`s.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureKind {
    /// The guest returned a `transform-error` for the record.
    Guest,
    /// The guest trapped (panic, `unreachable`, out-of-bounds access, ...).
    Trap,
    /// The batch call ran past `timeout_ms`.
    Timeout,
    /// The guest tried to grow its memory past `memory_mb`.
    Memory,
    /// The guest ran out of fuel.
    Fuel,
    /// The guest broke the batch contract (wrong number of outcomes or rows).
    Protocol,
    /// The record emitted more than `max_rows_per_record` rows.
    OutputLimit,
}

impl FailureKind {
    /// Every kind.
    pub const ALL: [FailureKind; 7] = [
        FailureKind::Guest,
        FailureKind::Trap,
        FailureKind::Timeout,
        FailureKind::Memory,
        FailureKind::Fuel,
        FailureKind::Protocol,
        FailureKind::OutputLimit,
    ];

    /// The transform setting that sets this limit (`memory_mb`, `timeout_ms`, `fuel`), if the
    /// kind is a limit.
    pub fn setting(self) -> Option<&'static str> {
        match self {
            FailureKind::Memory => Some("memory_mb"),
            FailureKind::Timeout => Some("timeout_ms"),
            FailureKind::Fuel => Some("fuel"),
            _ => None,
        }
    }

    /// The machine-readable kind used in dead letters and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Guest => "guest_error",
            FailureKind::Trap => "trap",
            FailureKind::Timeout => "timeout",
            FailureKind::Memory => "memory",
            FailureKind::Fuel => "fuel",
            FailureKind::Protocol => "protocol",
            FailureKind::OutputLimit => "output_limit",
        }
    }

    /// Whether this failure leaves the instance unusable, so it must be rebuilt.
    pub fn kills_instance(self) -> bool {
        matches!(
            self,
            FailureKind::Trap | FailureKind::Timeout | FailureKind::Memory | FailureKind::Fuel
        )
    }
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failure that stops a whole `process` call.
#[derive(Debug, thiserror::Error)]
pub enum TransformError {
    /// A record failed in a transform whose `on_error` is `fail` for its kind of failure.
    #[error(
        "transform {transform} failed on record {topic}/{partition}@{offset}{} ({kind}): {reason}",
        line.map(|l| format!(" (line {l} of the CSV)")).unwrap_or_default()
    )]
    Failed {
        /// The transform's name.
        transform: String,
        /// What went wrong.
        kind: FailureKind,
        /// The guest's error or the trap.
        reason: String,
        /// The record's topic.
        topic: String,
        /// The record's partition.
        partition: i32,
        /// The record's offset.
        offset: i64,
        /// The CSV line the record came from, when its message says (`sluice.line`).
        line: Option<u64>,
    },
    /// A fresh instance could not be built or initialized (it worked at load time).
    #[error("transform {transform} could not be instantiated: {reason}")]
    Instantiate {
        /// The transform's name.
        transform: String,
        /// What wasmtime or `init` reported.
        reason: String,
    },
    /// Rows of one batch that failed even when run alone took so much CPU time (more than
    /// eight exceeding the CPU cap, or failing after using as much time between them) that the
    /// transform is too slow for its `timeout_ms`, or hangs or fails late on common input,
    /// whatever its `on_error`.
    #[error(
        "transform {transform}: {}{}{}{}; raise its timeout_ms or fix it",
        slow_reason(*rows, *timeouts, *cpu_ms, *timeout_ms, *total_ms, *of, *rebuild_ms),
        match retried {
            0 => String::new(),
            n => format!(
                " ({} a row timed out on an instance that had run other rows, and ran again on a \
                 fresh one, which used a limit more)",
                match n { 1 => "once".to_owned(), n => format!("{n} times") }
            ),
        },
        failed_alone(failing, *rows),
        first.as_ref().map(|f| format!("; the first that did not time out: {f}")).unwrap_or_default()
    )]
    TooSlow {
        /// The transform's name.
        transform: String,
        /// Rows that failed when run alone before it gave up.
        rows: usize,
        /// How many of them exceeded the time limit.
        timeouts: u32,
        /// How many times a row timed out on an instance that had run other rows, and ran again
        /// on a fresh one (whatever came of that): each used a limit more, which counts in
        /// `total_ms`.
        retried: u32,
        /// CPU time those rows used, in milliseconds.
        cpu_ms: u64,
        /// The transform's CPU cap per call.
        timeout_ms: u64,
        /// Set when it gave up because running the batch a row at a time, successes and
        /// rebuilt instances included, used this much CPU time (more than
        /// `ISOLATION_LIMITS` limits and `ISOLATION_ROW_MS` a row).
        total_ms: Option<u64>,
        /// The rows of the batch (a worker's share of it).
        of: usize,
        /// How much of `total_ms` went to building instances again after failures (their `init`
        /// included).
        rebuild_ms: u64,
        /// The first few of the records that failed alone, as `topic/partition@offset`: the ones
        /// to look at, since no dead letter is written for them.
        failing: Box<[String]>,
        /// The first of those failures that was not a timeout, as `kind: reason` (masked and
        /// cut): what to fix when the time limit is not the cause (rows that each emit too much).
        first: Option<Box<str>>,
    },
    /// The rows of one batch, run one at a time (after a failure, or because the batch's output
    /// did not fit), emitted more text (string and JSON values) in all than one batch holds.
    #[error(
        "transform {transform}: run one at a time, the first {rows} of the {of} rows of one \
         call emitted more than 4 GiB of text in all, the most one batch holds; emit less per \
         row"
    )]
    TooMuchText {
        /// The transform's name.
        transform: String,
        /// The rows run when the text went past the bound.
        rows: usize,
        /// The rows of the call (a worker's share of the batch).
        of: usize,
    },
    /// The rows of one batch, run one at a time (after a failure, or because the batch's output
    /// did not fit), emitted more in all, as host rows, than the host takes from a batch run that
    /// way (`ISOLATED_OUTPUT_PER_MEMORY_BYTE` times `memory_mb`), though each row's output was
    /// within what one call may emit.
    #[error(
        "transform {transform}: run one at a time, the first {rows} of the {of} rows of one \
         call emitted more than {} MiB in all as host rows ({ISOLATED_OUTPUT_PER_MEMORY_BYTE} \
         times the memory limit of {memory_mb} MiB, up to {ISOLATED_OUTPUT_CEILING_MIB} MiB), the \
         most the host takes from a batch run that way; raise memory_mb or emit less per row",
        isolated_output_mib(*memory_mb)
    )]
    TooMuchOutput {
        /// The transform's name.
        transform: String,
        /// The rows run when the output went past the bound.
        rows: usize,
        /// The rows of the call (a worker's share of the batch).
        of: usize,
        /// The transform's memory cap, in MiB, which the bound is a multiple of.
        memory_mb: u64,
    },
    /// The chain's output for one batch, held until the batch is loaded, cost more as host rows
    /// than a batch may (`ISOLATED_OUTPUT_PER_MEMORY_BYTE` times the last transform's
    /// `memory_mb`, plus 16 times the batch's own size), though each call's output was within
    /// bounds.
    #[error(
        "the chain's output for one batch of {rows} rows passed {limit_mib} MiB as host rows \
         ({ISOLATED_OUTPUT_PER_MEMORY_BYTE} times the last transform's memory_mb of {memory_mb} \
         MiB up to {ISOLATED_OUTPUT_CEILING_MIB} MiB, plus 16 times the batch's own size), the most the host holds for one batch; lower \
         the batch size, raise memory_mb, or emit less per row"
    )]
    BatchOutputTooBig {
        /// The batch's rows.
        rows: usize,
        /// The bound, in MiB.
        limit_mib: u64,
        /// The last transform's `memory_mb`.
        memory_mb: u64,
    },
    /// The worker threads are gone (the chain was dropped, or a worker panicked), or the caller
    /// gave up on the batch (which then never sees this).
    #[error("transform workers are not running")]
    Stopped,
}

impl TransformError {
    /// The name of the transform it happened in, when it happened in one.
    pub fn transform(&self) -> Option<&str> {
        match self {
            TransformError::Failed { transform, .. }
            | TransformError::Instantiate { transform, .. }
            | TransformError::TooSlow { transform, .. }
            | TransformError::TooMuchText { transform, .. }
            | TransformError::TooMuchOutput { transform, .. } => Some(transform),
            TransformError::BatchOutputTooBig { .. } | TransformError::Stopped => None,
        }
    }
}

/// Which records failed alone (`failing`, the first of `rows`), for [`TransformError::TooSlow`].
fn failed_alone(failing: &[String], rows: usize) -> String {
    match (failing, rows.saturating_sub(failing.len())) {
        ([], _) => String::new(),
        (some, 0) => format!(" (records {})", some.join(", ")),
        (some, more) => format!(" (records {} and {more} more)", some.join(", ")),
    }
}

/// What [`TransformError::TooSlow`] found.
fn slow_reason(
    rows: usize,
    timeouts: u32,
    cpu_ms: u64,
    timeout_ms: u64,
    total_ms: Option<u64>,
    of: usize,
    rebuild_ms: u64,
) -> String {
    if let Some(total) = total_ms {
        let rebuilds = match rebuild_ms {
            0 => String::new(),
            ms => format!(
                " ({ms} ms of it building instances again after failures, their init included)"
            ),
        };
        format!(
            "a batch of {of} rows run again a row at a time (after it failed as a whole) used \
             {total} ms of CPU time{rebuilds}, more than {ISOLATION_LIMITS} times the time limit \
             of {timeout_ms} ms and {ISOLATION_ROW_MS} ms a row"
        )
    } else if timeouts as usize == rows {
        format!(
            "{rows} rows of one batch each exceeded the time limit of {timeout_ms} ms when run \
             alone"
        )
    } else {
        format!(
            "{rows} rows of one batch failed when run alone: {timeouts} at the time limit of \
             {timeout_ms} ms, the others after using {cpu_ms} ms of CPU time between them"
        )
    }
}
