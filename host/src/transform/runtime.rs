//! Loading `sluice:transform` components and running a chain of them over batches of rows.
//!
//! # Threads and async
//!
//! WebAssembly never runs on a tokio worker thread. wasmtime-wasi's synchronous shims
//! `block_on` the ambient runtime, which panics inside a tokio worker (wasmtime issues #11339,
//! #8799), and a guest may legitimately compute for up to `timeout_ms`, which would stall every
//! other task on that worker. So [`TransformChain`] owns a pool of dedicated OS threads; each owns
//! one `Store` (one instance) per transform in the chain. [`TransformChain::process`] is async:
//! it splits a batch into one chunk per worker that any of its records map to, sends each chunk
//! down that worker's channel and awaits a oneshot reply per chunk, so the caller's task yields
//! while the guests run. Each partition has one worker, dealt to it when it first appears
//! ([`Routes`]): every record of a partition meets the same instances, in the order it is delivered, so what
//! a guest keeps by partition or by key (a dedupe window) does not depend on which worker was
//! free. [`TransformChain::process_blocking`], for callers that are not async at all (the CLI,
//! benchmarks), runs a batch on its own thread instead when there is one worker, with one more
//! set of instances: a hand-off costs more than a small batch (so that thread needs stack to
//! spare for the guest, up to wasmtime's `max_wasm_stack`, 512 KiB by default). Loading
//! ([`TransformChain::load`], [`TransformChain::load_each`]) calls `init` on a short-lived scoped
//! thread for the same reason, so it is safe (if blocking) to call from async code.
//!
//! # Safety limits
//!
//! Guests get no capabilities: WASI is linked (Rust guests import it even when unused) with an
//! empty context, so no directories, environment, network or stdin, and stdout/stderr are
//! not shown unless `debug_stdio` is set (their last bytes explain a trap). Each instance has a
//! memory cap (a `ResourceLimiter` that traps on growth past `memory_mb`), each call a CPU-time
//! cap (a ticker thread bumps the epoch every few ms, and at the deadline the store reads its
//! thread's CPU clock, so time spent descheduled is not charged) and optionally a fuel budget.
//! An instance may hold at most `MAX_HANDLES` WASI resources (streams, pollables) and
//! `MAX_CORE_INSTANCES` core instances (whose modules may declare at most
//! `MAX_ENTITIES_PER_MODULE` imports, functions, tags and globals): they live in host memory,
//! outside `memory_mb`. The host copies at most four times `memory_mb` out of one call
//! (`OUTPUT_COPY_PER_MEMORY_BYTE`), and takes at most sixteen times as host rows
//! (`OUTPUT_ROWS_PER_MEMORY_BYTE`, text counted twice), each up to a ceiling whatever
//! `memory_mb`. A trap or a limit poisons only that instance: the worker drops it, builds a
//! fresh one, re-runs that transform's batch one record at a time to find the poison record,
//! applies the transform's `on_error` policy to that record alone and carries on with the rest. What the records of a
//! batch run that way emit in all is bounded too (`ISOLATED_OUTPUT_PER_MEMORY_BYTE`).
//!
//! # The batch layout
//!
//! Rows cross the boundary positionally (see `wit/transform.wit`): each distinct row shape's
//! field names travel once per batch, each row only as a shape index plus its values, all rows'
//! values in one list. That keeps the per-row cost to the values themselves. Between transforms
//! of a chain, rows stay in that layout: host [`Row`]s are built once, after the last one.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Condvar, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use wasmtime::StoreContextMut;
use wasmtime::component::{Component, HasSelf, Linker, Resource, ResourceTable};
use wasmtime::{Config, Engine, ResourceLimiter, Store, Trap, UpdateDeadline};
use wasmtime_wasi::p2::DynPollable;
use wasmtime_wasi::p2::bindings::io::poll::HostPollable;
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::bindings::{
    self, GuestError, Outcome, Output, Rows, TransformPre, ValueType as WireType, Values,
};
use super::cache::CompileCache;
use super::config::TransformConfig;
use super::error::{FailureKind, LoadError, TransformError};
use super::output::{GuestOutput, Pass};
use super::stats::TransformStats;
use crate::config::OnError;
use crate::counted;
use crate::dead_letter::{DeadLetter, GuestFault};
use crate::row::{Field, Name, RecordMeta, Row, Value};

/// How often the epoch ticker bumps the engine's epoch; the resolution of `timeout_ms`.
const TICK_MS: u64 = 5;

/// The longest failure reason kept, in bytes (the dead-letter limit).
const MAX_REASON: usize = crate::source::dlq::MAX_REASON_BYTES;
/// The longest field or param name a guest's error keeps, in bytes: names are short, and one
/// that is not (a guest naming a field by its value) must not crowd out the reason or the
/// payload of a letter sized to fit a message.
const MAX_FIELD: usize = 256;
/// The most random bytes one `wasi:random` call may ask for.
const MAX_RANDOM_BYTES: u64 = 64 * 1024;
/// How long an idle worker polls for the next job before it parks. Waking a parked thread takes
/// 10-50 µs on a busy VM, longer than a small batch runs.
const WORKER_SPIN: Duration = Duration::from_micros(100);

/// How long a [`TransformChain::process_blocking`] caller polls for its reply before it parks.
/// Short: a spinning caller slows the worker (the two may share a physical core), so it only
/// pays off for batches that finish within a wake-up's time.
const CALLER_SPIN: Duration = Duration::from_micros(100);

/// Polls `poll` for up to `limit`; `None` if it never returned a value.
fn spin<T>(limit: Duration, mut poll: impl FnMut() -> Option<T>) -> Option<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = poll() {
            return Some(v);
        }
        if start.elapsed() >= limit {
            return None;
        }
        for _ in 0..32 {
            std::hint::spin_loop();
        }
    }
}

/// Table growth cap per table (function references); generous, but bounded.
const MAX_TABLE_ELEMENTS: usize = 100_000;

/// Most core module instances, tables and linear memories one instance of a component may hold.
/// Each costs host memory outside `memory_mb` (its globals and function references, a table's
/// elements, a memory's address-space reservation), built by host code the CPU cap does not
/// interrupt, and wasmtime's own limits are 10,000 of each. A Rust guest holds a handful of
/// instances, a componentize-py one about 14, one with NumPy's native extensions 34.
const MAX_CORE_INSTANCES: usize = 200;
/// See [`MAX_CORE_INSTANCES`].
const MAX_TABLES: usize = 16;
/// See [`MAX_CORE_INSTANCES`].
const MAX_MEMORIES: usize = 16;

/// Most imports, functions, exception tags and globals, together, one core module of a component
/// may declare.
/// Every instance of the module gets a host-side slot for each (16 to 32 bytes), written by host
/// code when the instance is built, and the format allows millions per module, instantiated up
/// to [`MAX_CORE_INSTANCES`] times: gigabytes built outside both `memory_mb` and the CPU cap.
/// A Rust guest declares a few thousand; CPython, linked dynamically into a component, tens of
/// thousands. At this bound the slots of 200 instances take at most 640 MB.
const MAX_ENTITIES_PER_MODULE: u32 = 100_000;

/// Refuses a component one of whose core modules declares more than [`MAX_ENTITIES_PER_MODULE`]
/// imports, functions, tags and globals. Anything it cannot parse is left for wasmtime to report.
fn check_module_sizes(bytes: &[u8]) -> Result<(), String> {
    use wasmparser::Payload;
    let bytes = match wat::parse_bytes(bytes) {
        Ok(bytes) => bytes,
        Err(_) => return Ok(()),
    };
    // Modules do not nest in modules, so a module's sections are those up to the next one's
    // header.
    let mut declared = 0u32;
    for payload in wasmparser::Parser::new(0).parse_all(&bytes) {
        let count = match payload {
            Ok(Payload::Version { .. }) => {
                declared = 0;
                continue;
            }
            Ok(Payload::ImportSection(s)) => s.count(),
            Ok(Payload::FunctionSection(s)) => s.count(),
            Ok(Payload::GlobalSection(s)) => s.count(),
            Ok(Payload::TagSection(s)) => s.count(),
            Ok(_) => continue,
            Err(_) => return Ok(()),
        };
        declared = declared.saturating_add(count);
        if declared > MAX_ENTITIES_PER_MODULE {
            return Err(format!(
                "one of its core modules declares more than {MAX_ENTITIES_PER_MODULE} imports, \
                 functions, tags and globals, the most sluice allows (each instance of the module \
                 holds a slot for each in the host's memory)"
            ));
        }
    }
    Ok(())
}

/// Host resources (WASI streams, pollables, ...) one instance may hold at once. They live in host
/// memory, outside `memory_mb` (about 0.9 KiB each), and wasmtime's own limit is a million, so a
/// guest leaking handles could hold ~1 GB per instance; a guest needs a handful.
const MAX_HANDLES: usize = 10_000;

/// What the host may copy out of one call (wasmtime's "hostcall fuel": the output's strings and
/// lists, each charged at its host size), per byte of `memory_mb`. An honest output fits in the
/// guest's memory and costs at most about three times its size here (a `string` is 8 bytes in
/// the guest and 24 in the host), so four never refuses one. A hostile guest can point many
/// strings at the same bytes, though, and without this bound make the host copy terabytes.
const OUTPUT_COPY_PER_MEMORY_BYTE: u64 = 4;

/// The most the host copies out of one call, whatever `memory_mb`: past it four times a large
/// `memory_mb` is more than a machine holds (16 GiB at 4096 MiB, per worker). An output that
/// large runs again a row at a time, as one past [`OUTPUT_COPY_PER_MEMORY_BYTE`] does.
pub(crate) const OUTPUT_COPY_CEILING_MIB: u64 = 1024;

/// The most one call's output may cost as host rows, whatever `memory_mb` (see
/// [`OUTPUT_COPY_CEILING_MIB`]).
pub(crate) const OUTPUT_ROWS_CEILING_MIB: u64 = 4096;

/// The most a batch run again a row at a time, or a batch's output in all, may cost as host rows
/// for its transform's `memory_mb` ([`ISOLATED_OUTPUT_PER_MEMORY_BYTE`]), whatever that is (see
/// [`OUTPUT_COPY_CEILING_MIB`]).
pub(crate) const ISOLATED_OUTPUT_CEILING_MIB: u64 = 8192;

/// `memory_mb` times `per_byte`, in bytes, but at most `ceiling_mib` MiB.
fn per_memory(memory_mb: u64, per_byte: u64, ceiling_mib: u64) -> u64 {
    memory_mb.saturating_mul(per_byte).min(ceiling_mib) << 20
}

/// The most the host copies out of one call of a transform with `config` (see
/// [`OUTPUT_COPY_PER_MEMORY_BYTE`]).
fn output_copy_limit(config: &TransformConfig) -> u64 {
    per_memory(
        config.memory_mb,
        OUTPUT_COPY_PER_MEMORY_BYTE,
        OUTPUT_COPY_CEILING_MIB,
    )
}

/// What the rows of one call run again a row at a time may emit in all as host rows, in MiB, for
/// a transform of `memory_mb` (see [`ISOLATED_OUTPUT_PER_MEMORY_BYTE`]).
pub(crate) fn isolated_output_mib(memory_mb: u64) -> u64 {
    per_memory(
        memory_mb,
        ISOLATED_OUTPUT_PER_MEMORY_BYTE,
        ISOLATED_OUTPUT_CEILING_MIB,
    ) >> 20
}

/// What one call's output may cost the host once it is host rows ([`host_size`]), per byte of
/// `memory_mb`. A value costs the guest 1 to 9 bytes (plus its text) and the host a 48-byte
/// field, so an output that fits in the guest's memory costs the host about 5 to 7 times its size
/// when its values are ints, floats and strings; only one mostly of nulls (a byte each in the
/// guest) costs more than 16 times. Such a call fails as `memory`, and its batch runs again a row
/// at a time, as after a guest ran out of memory: each row's output is bounded the same way.
const OUTPUT_ROWS_PER_MEMORY_BYTE: u64 = 16;

/// The most one call's output of a transform with `config` may cost as host rows (see
/// [`OUTPUT_ROWS_PER_MEMORY_BYTE`]).
fn output_rows_limit(config: &TransformConfig) -> u64 {
    per_memory(
        config.memory_mb,
        OUTPUT_ROWS_PER_MEMORY_BYTE,
        OUTPUT_ROWS_CEILING_MIB,
    )
}

/// What `rows` cost the host, in bytes, once they are host rows (only the last transform's
/// output becomes [`Row`]s; between transforms they stay in the batch layout, which costs less).
fn host_size(rows: &Rows) -> u64 {
    // Each name as lifted, then as a host row's shared name (an `Arc`: two counts and the text);
    // each schema twice, as lifted and as its names.
    let names: usize = rows
        .schemas
        .iter()
        .flatten()
        .map(|n| size_of::<String>() + size_of::<Name>() + 16 + 2 * n.len())
        .sum::<usize>()
        + rows.schemas.len() * 2 * size_of::<Vec<Name>>();
    // Its place in the batch (cursor, origin, shape, untouched), then the row itself.
    let per_row = size_of::<Cursor>() + 2 * size_of::<u32>() + 1 + size_of::<Row>();
    (rows.values.types.len() * size_of::<Field>()
        + rows.shapes.len() * per_row
        + rows.values.text.len()
        + names) as u64
}

/// What `rows` cost the host at most on their way to host rows ([`host_size`]), with their text
/// counted twice: the layout's text is still held while each value's is copied into its row.
fn peak_size(rows: &Rows) -> u64 {
    host_size(rows).saturating_add(rows.values.text.len() as u64)
}

/// What the rows of one call, run again one at a time, may emit in all as host rows, per byte of
/// `memory_mb`: four calls' worth ([`OUTPUT_ROWS_PER_MEMORY_BYTE`]), 4 GiB at the default 64 MiB.
/// Each row's output is bounded as a call's, but a batch of 1024 rows that each emit just under
/// that would otherwise make the host hold a thousand times it, and be killed for memory. An
/// honest flat-map whose batch ran out of guest memory comes out whole well within it.
pub(crate) const ISOLATED_OUTPUT_PER_MEMORY_BYTE: u64 = 4 * OUTPUT_ROWS_PER_MEMORY_BYTE;

/// What the chain's output for one batch may cost as host rows, per byte of the last transform's
/// `memory_mb`, besides [`BATCH_OUTPUT_PER_INPUT_BYTE`]. Each call's output is bounded, but a
/// batch runs as several calls (one per worker, and one per part of a batch with much text)
/// whose outputs are all held until the batch is loaded.
const BATCH_OUTPUT_PER_MEMORY_BYTE: u64 = ISOLATED_OUTPUT_PER_MEMORY_BYTE;

/// What the chain's output for one batch may cost as host rows, per byte of its input as host
/// rows, besides [`BATCH_OUTPUT_PER_MEMORY_BYTE`]: a batch of wide rows may come out at several
/// times its size.
const BATCH_OUTPUT_PER_INPUT_BYTE: u64 = 16;

/// A batch is sent down a chain in consecutive parts whose text (string and JSON values) is at
/// most this fraction of the smallest `memory_mb` in the chain. A guest holds a batch's text
/// several times over (as it came in, decoded, and in its output), so a batch of wide rows that
/// does not fit would fail its memory limit on every call, then run again a row at a time.
const PART_TEXT_PER_MEMORY: u64 = 4;

/// The most text of one part, whatever `memory_mb`: the batch layout's text offsets are `u32`.
const MAX_PART_TEXT: usize = 1 << 30;

/// `batch` cut into consecutive parts, in order, whose text fits in `max` bytes (a row bigger
/// than that is a part of its own), and what the batch costs as host rows (its rows, fields and
/// text). Most batches are one part.
fn parts_by_text(batch: Vec<(RecordMeta, Row)>, max: usize) -> (Vec<Part>, u64) {
    let text = |row: &Row| -> usize {
        row.fields
            .iter()
            .map(|f| match &f.value {
                Value::String(s) | Value::Json(s) => s.len(),
                _ => 0,
            })
            .sum()
    };
    let (all_text, fields) = (batch.iter()).fold((0, 0), |(t, f), (_, row)| {
        (t + text(row), f + row.fields.len())
    });
    let cost = (all_text + fields * size_of::<Field>() + batch.len() * size_of::<Row>()) as u64;
    if all_text <= max {
        return (vec![batch], cost);
    }
    let (mut parts, mut part, mut size) = (Vec::new(), Vec::new(), 0);
    for (meta, row) in batch {
        let t = text(&row);
        if !part.is_empty() && size + t > max {
            parts.push(std::mem::take(&mut part));
            size = 0;
        }
        size += t;
        part.push((meta, row));
    }
    parts.push(part);
    (parts, cost)
}

/// Consecutive rows of a batch.
type Part = Vec<(RecordMeta, Row)>;

/// The most text one batch layout holds: its text offsets are `u32`.
const MAX_LAYOUT_TEXT: usize = u32::MAX as usize;

/// A text offset of the batch layout. Input parts are kept far below it ([`MAX_PART_TEXT`]),
/// and a transform's output is checked against [`MAX_LAYOUT_TEXT`] before it is laid out
/// (`run_transform`, `isolate`), so this cannot fail; stopping beats cutting the offset short,
/// which would garble rows.
fn text_offset(at: usize) -> u32 {
    u32::try_from(at).expect("a batch's text was checked against MAX_LAYOUT_TEXT")
}

/// The most text-lane capacity reserved up front for a batch, from its first row's size.
const MAX_TEXT_RESERVE: usize = 16 << 20;

/// Runtime knobs that are not per transform (command-line flags, not pipeline.json).
#[derive(Debug, Clone)]
pub struct RuntimeOptions {
    /// Worker threads, each running the whole chain on its share of a batch.
    pub workers: usize,
    /// Where compiled components are cached (keyed by content hash, wasmtime version and engine
    /// settings); `None` compiles every time.
    pub cache_dir: Option<PathBuf>,
}

impl Default for RuntimeOptions {
    fn default() -> RuntimeOptions {
        RuntimeOptions {
            workers: std::thread::available_parallelism().map_or(2, |n| n.get()),
            cache_dir: default_cache_dir(),
        }
    }
}

/// `wasm/` in the per-user cache ([`crate::cache_root`]).
pub fn default_cache_dir() -> Option<PathBuf> {
    crate::cache_root().map(|root| root.join("wasm"))
}

/// What became of one input record after the whole chain.
#[derive(Debug, Clone, PartialEq)]
pub enum RecordOutcome {
    /// The chain emitted these rows for it (none: it was filtered out).
    Emitted(Vec<Row>),
    /// It failed in a transform whose `on_error` is `dead_letter` for its kind of failure.
    Quarantined(Quarantine),
    /// It failed in a transform whose `on_error` is `drop` for its kind of failure.
    Dropped {
        /// The transform it failed in.
        transform: String,
        /// What went wrong.
        kind: FailureKind,
        /// The guest's error or the trap.
        reason: String,
    },
}

/// A record that failed under `on_error: dead_letter`.
#[derive(Debug, Clone, PartialEq)]
pub struct Quarantine {
    /// The transform it failed in.
    pub transform: String,
    /// What went wrong.
    pub kind: FailureKind,
    /// The guest's error or the trap, for humans.
    pub reason: String,
    /// The guest's typed error, when it returned one.
    pub error: Option<GuestFault>,
    /// The row as that transform received it (for a transform after the first, what the
    /// transforms before it made of the record).
    pub row: Row,
}

impl Quarantine {
    /// The dead letter for this failure: stage `transform:<name>`, the failure kind and reason,
    /// the record it came from, and `payload`: the original message bytes, not `row`, so that
    /// replaying the letter runs it through the whole chain again.
    pub fn dead_letter(&self, origin: RecordMeta, payload: Vec<u8>) -> DeadLetter {
        // The CSV file and line travel as headers of the source's messages; a letter names them
        // as a source letter does, so that both kinds lead back to the file the same way.
        DeadLetter {
            stage: format!("transform:{}", self.transform),
            kind: self.kind.as_str().to_owned(),
            reason: self.reason.clone(),
            source_file: origin
                .header_text(crate::source::wire::HEADER_FILE)
                .map(str::to_owned),
            source_file_id: origin
                .header_text(crate::source::wire::HEADER_FILE_ID)
                .map(str::to_owned),
            line: origin.csv_line(),
            origin: Some(origin),
            payload,
            error: self.error.clone(),
        }
    }
}

/// A loaded chain of transforms plus the worker threads that run it. Dropping it stops and
/// joins the workers and the epoch ticker.
pub struct TransformChain {
    shared: Arc<Shared>,
    /// Each worker's queue; a record goes to its partition's worker ([`Routes`]).
    jobs: Vec<mpsc::Sender<Task>>,
    routes: Mutex<Routes>,
    workers: Vec<JoinHandle<()>>,
    /// The instances [`TransformChain::process_blocking`] uses when it runs a batch on its
    /// caller's thread, which it does only with one worker (none are kept with more).
    inline: Mutex<Vec<Option<Slot>>>,
    _ticker: EpochTicker,
}

impl std::fmt::Debug for TransformChain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.shared.transforms.iter().map(|t| &*t.name).collect();
        f.debug_struct("TransformChain")
            .field("transforms", &names)
            .field("workers", &self.workers.len())
            .finish()
    }
}

struct Shared {
    engine: Engine,
    fuel_enabled: bool,
    transforms: Vec<Loaded>,
}

/// One transform, compiled and pre-instantiated once, shared by all workers.
struct Loaded {
    name: Arc<str>,
    config: TransformConfig,
    params: Vec<(String, String)>,
    pre: TransformPre<HostState>,
    stats: Arc<TransformStats>,
    /// Whether the run was told that a limit fits single rows but not whole batches.
    limit_warned: std::sync::atomic::AtomicBool,
    /// Whether the run was told that the transform fails on batches but not on their rows.
    batch_only_warned: std::sync::atomic::AtomicBool,
    /// Whether the run was told that an instance was rebuilt at the memory limit.
    memory_rebuild_noted: std::sync::atomic::AtomicBool,
}

impl Loaded {
    /// A text from the guest (or quoting its params) as it may be shown: its secrets masked, then
    /// cut to `max` bytes. In that order, so that a cut cannot leave part of a secret unmasked.
    fn shown(&self, text: String, max: usize) -> String {
        clip(&self.config.redact(text), max)
    }
}

type Reply = Result<Vec<RecordOutcome>, TransformError>;

struct Job {
    batch: WireBatch,
    metas: Metas,
    reply: oneshot::Sender<Result<Done, TransformError>>,
}

/// What a worker is sent.
enum Task {
    /// Run a batch.
    Run(Box<Job>),
    /// Drop every instance now, not at the next batch: a worker that gets no further batch
    /// (its partitions went to another member) would hold their memory until the run ends.
    Forget,
}

impl TransformChain {
    /// Compiles (or loads from the cache) every component, pre-instantiates it, checks its
    /// params with one `init` call, and starts the workers. `configs[i].uses` must already be
    /// resolved (relative to the current directory). Stops at the first transform that fails:
    /// [`load_each`](Self::load_each) reports every one.
    pub fn load(
        configs: &[TransformConfig],
        opts: &RuntimeOptions,
    ) -> Result<TransformChain, LoadError> {
        Self::load_inner(configs, opts, false).map_err(|mut errors| errors.swap_remove(0).1)
    }

    /// [`load`](Self::load), going on to the next transform when one fails, so that one pass
    /// finds every mistake in a pipeline (`sluice validate`, and `sluice run` before it starts
    /// anything). On failure, each failing transform's index in `configs` and its error, in
    /// chain order; or, when the engine itself could not be set up, that [`LoadError::Engine`]
    /// alone (its index means nothing: the machine failed, not a transform).
    pub fn load_each(
        configs: &[TransformConfig],
        opts: &RuntimeOptions,
    ) -> Result<TransformChain, Vec<(usize, LoadError)>> {
        Self::load_inner(configs, opts, true)
    }

    fn load_inner(
        configs: &[TransformConfig],
        opts: &RuntimeOptions,
        keep_going: bool,
    ) -> Result<TransformChain, Vec<(usize, LoadError)>> {
        let whole = |e| vec![(0, e)];
        let fuel_enabled = configs.iter().any(|c| c.fuel.is_some());
        let engine = build_engine(fuel_enabled).map_err(whole)?;
        let cache = open_cache(opts.cache_dir.as_deref());
        let linker = build_linker(&engine).map_err(whole)?;
        let ticker = EpochTicker::start(engine.clone()).map_err(whole)?;
        let mut transforms = Vec::with_capacity(configs.len());
        // The instances that passed the check serve the caller's own batches: building them again
        // would run each `init` twice, and show its output twice under `debug_stdio`.
        let mut checked = Vec::with_capacity(configs.len());
        let mut errors = Vec::new();
        // A component used twice in the chain is compiled once.
        let mut compiled = HashMap::new();
        for (i, config) in configs.iter().enumerate() {
            let loaded = check_config(config)
                .and_then(|()| load_one(&engine, cache.as_ref(), &mut compiled, &linker, config))
                .and_then(|loaded| {
                    let instance = check_init(&engine, fuel_enabled, &loaded)?;
                    Ok((loaded, instance))
                });
            match loaded {
                Ok((loaded, instance)) => {
                    checked.push(Some(instance));
                    transforms.push(loaded);
                }
                Err(e) => {
                    errors.push((i, e));
                    if !keep_going {
                        break;
                    }
                }
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let shared = Arc::new(Shared {
            engine,
            fuel_enabled,
            transforms,
        });
        let mut jobs = Vec::with_capacity(opts.workers.max(1));
        let workers = (0..opts.workers.max(1))
            .map(|i| {
                let shared = Arc::clone(&shared);
                // Unbounded, so that `process` never blocks the async task that sends: each
                // caller awaits its chunk's reply before it sends again, so a worker's queue
                // holds at most one chunk per caller (the pipeline has one).
                let (tx, rx) = mpsc::channel::<Task>();
                jobs.push(tx);
                std::thread::Builder::new()
                    .name(format!("sluice-wasm-{i}"))
                    .spawn(move || worker_main(&shared, &rx))
                    .map_err(|e| LoadError::Engine(format!("cannot start worker thread: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(whole)?;
        if jobs.len() > 1 {
            checked.iter_mut().for_each(|s| *s = None);
        }
        Ok(TransformChain {
            inline: Mutex::new(checked),
            shared,
            routes: Mutex::new(Routes::new(jobs.len())),
            jobs,
            workers,
            _ticker: ticker,
        })
    }

    /// The transforms' names, in chain order.
    pub fn names(&self) -> Vec<String> {
        self.shared
            .transforms
            .iter()
            .map(|t| t.name.to_string())
            .collect()
    }

    /// Rows that have entered the chain (its first transform's rows in; 0 for an empty chain).
    pub fn rows_entered(&self) -> u64 {
        (self.shared.transforms.first()).map_or(0, |t| t.stats.rows_in.load(Relaxed))
    }

    /// Drops every instance's state: each worker drops its instances now, and builds them again
    /// (with a fresh `init`) for its next batch, and partitions are dealt to the workers afresh.
    /// For when partitions are revoked: their records after the warehouse's offsets will be
    /// delivered again, and an instance that kept what it made of them would see them twice (a
    /// dedupe would drop the very records that are to be loaded). Must not race a batch in
    /// flight: a batch already queued to a worker runs on its old instances.
    pub fn forget_state(&self) {
        for jobs in &self.jobs {
            // A worker that has stopped holds no instances.
            let _ = jobs.send(Task::Forget);
        }
        *self.routes.lock().unwrap_or_else(|e| e.into_inner()) = Routes::new(self.jobs.len());
        let mut inline = self.inline.lock().unwrap_or_else(|e| e.into_inner());
        inline.iter_mut().for_each(|s| *s = None);
    }

    /// Each transform's name and counters, in chain order.
    pub fn stats(&self) -> Vec<(String, Arc<TransformStats>)> {
        self.shared
            .transforms
            .iter()
            .map(|t| (t.name.to_string(), Arc::clone(&t.stats)))
            .collect()
    }

    /// Runs a batch through the whole chain on the worker threads: exactly one outcome per
    /// input, in input order. A failure whose transform's `on_error` says `fail` for its kind
    /// fails the call.
    pub async fn process(&self, batch: Vec<(RecordMeta, Row)>) -> Reply {
        // Batches go to the workers here: the instances checked at load, kept for the caller's
        // own batches (`process_blocking`), would only hold memory.
        if let Ok(mut inline) = self.inline.try_lock()
            && inline.iter().any(Option::is_some)
        {
            inline.iter_mut().for_each(|s| *s = None);
        }
        let mut out = Vec::with_capacity(batch.len());
        let rows = batch.len();
        let (parts, size) = parts_by_text(batch, self.max_part_text());
        // Settled when this returns, or as unfinished if the caller drops it part-way.
        let mut settle = Settle {
            chain: self,
            tally: self.tally(rows, size),
            ok: false,
        };
        let mut result = Ok(());
        for part in parts {
            let sent = match self.dispatch(part) {
                Ok(sent) => sent,
                Err(e) => {
                    result = Err(e);
                    break;
                }
            };
            let mut outs = Vec::with_capacity(sent.chunks.len());
            for chunk in sent.chunks {
                let reply = chunk.rx.await.unwrap_or(Err(TransformError::Stopped));
                outs.push(take_reply(
                    reply,
                    chunk.rows,
                    &mut result,
                    &mut settle.tally,
                ));
            }
            if result.is_err() {
                break;
            }
            in_input_order(&sent.route, outs, &mut out);
        }
        settle.ok = result.is_ok();
        result.map(|()| out)
    }

    /// [`process`](Self::process) for callers outside an async runtime (the CLI, benchmarks).
    /// Must not be called from a tokio worker thread.
    ///
    /// With one worker, a batch runs right here, on instances of its own: handing it to the
    /// worker and waiting for the reply costs more than a small batch's calls. (A caller that
    /// finds another thread using them waits.) Mixing this with [`process`](Self::process) on
    /// one chain gives a partition two sets of instances: `process` uses the worker's.
    pub fn process_blocking(&self, batch: Vec<(RecordMeta, Row)>) -> Reply {
        let rows = batch.len();
        let (mut parts, size) = parts_by_text(batch, self.max_part_text());
        let mut settle = Settle {
            chain: self,
            tally: self.tally(rows, size),
            ok: false,
        };
        let result = if parts.len() == 1 {
            self.process_part_blocking(parts.pop().unwrap_or_default(), &mut settle.tally)
        } else {
            let mut out = Vec::new();
            parts
                .into_iter()
                .try_for_each(|part| {
                    out.extend(self.process_part_blocking(part, &mut settle.tally)?);
                    Ok(())
                })
                .map(|()| out)
        };
        settle.ok = result.is_ok();
        result
    }

    /// The [`Tally`] of a batch of `rows` rows that cost `size` as host rows, before any of it
    /// has run. The bound follows the last transform, whose output is what is held: the others'
    /// are freed call by call. An empty chain hands its input back, and is not bounded.
    fn tally(&self, rows: usize, size: u64) -> Tally {
        let memory_mb = (self.shared.transforms.last()).map_or(0, |t| t.config.memory_mb);
        let limit = match self.shared.transforms.is_empty() {
            true => u64::MAX,
            false => per_memory(
                memory_mb,
                BATCH_OUTPUT_PER_MEMORY_BYTE,
                ISOLATED_OUTPUT_CEILING_MIB,
            )
            .saturating_add(size.saturating_mul(BATCH_OUTPUT_PER_INPUT_BYTE)),
        };
        Tally {
            emitted: 0,
            size: 0,
            limit,
            rows,
            memory_mb,
        }
    }

    /// Most text (string and JSON values) of input rows sent down the chain in one go: a
    /// [`PART_TEXT_PER_MEMORY`]th of the smallest `memory_mb` in the chain.
    fn max_part_text(&self) -> usize {
        let mb = self
            .shared
            .transforms
            .iter()
            .map(|t| t.config.memory_mb)
            .min();
        usize::try_from(mb.unwrap_or(u64::MAX).saturating_mul(1 << 20) / PART_TEXT_PER_MEMORY)
            .unwrap_or(usize::MAX)
            .min(MAX_PART_TEXT)
    }

    /// One part of a batch (see [`parts_by_text`]) through the chain, adding the rows the chain
    /// emitted to `tally` (see [`Settle`]).
    fn process_part_blocking(&self, batch: Vec<(RecordMeta, Row)>, tally: &mut Tally) -> Reply {
        if self.jobs.len() == 1 {
            // Waiting for another caller's batch, not handing this one to the worker: the
            // worker's instances hold other state.
            let mut slots = self.inline.lock().unwrap_or_else(|e| {
                // A panic may have left an instance mid-call: start from fresh ones.
                let mut slots = e.into_inner();
                slots.iter_mut().for_each(|s| *s = None);
                slots
            });
            let (metas, rows): (Vec<RecordMeta>, Vec<Row>) = batch.into_iter().unzip();
            let wire = WireBatch::from_rows(rows.iter());
            let done = run_chain(&self.shared, &mut slots, wire, Arc::new(metas), &|| false)?;
            return tally.take(done, rows);
        }
        let mut result = Ok(());
        let sent = self.dispatch(batch)?;
        let mut outs = Vec::with_capacity(sent.chunks.len());
        for mut chunk in sent.chunks {
            let done = spin(CALLER_SPIN, || match chunk.rx.try_recv() {
                Ok(done) => Some(Ok(done)),
                Err(oneshot::error::TryRecvError::Closed) => Some(Err(TransformError::Stopped)),
                Err(oneshot::error::TryRecvError::Empty) => None,
            })
            .unwrap_or_else(|| {
                chunk
                    .rx
                    .blocking_recv()
                    .map_err(|_| TransformError::Stopped)
            });
            let reply = done.unwrap_or_else(Err);
            outs.push(take_reply(reply, chunk.rows, &mut result, tally));
        }
        let mut out = Vec::new();
        result.map(|()| {
            in_input_order(&sent.route, outs, &mut out);
            out
        })
    }

    /// Splits a batch into one chunk per worker that its records go to ([`Routes`]),
    /// keeping each chunk's records in batch order, and sends each off in the wire layout.
    ///
    /// Host rows are converted to and from the wire layout here, on the caller's thread, not on
    /// the workers: that thread built the input rows and will consume the output rows, so their
    /// memory stays in its cache and its allocator's thread-local free lists. Built on a worker
    /// and freed elsewhere, the same rows cost about three times as much.
    fn dispatch(&self, batch: Vec<(RecordMeta, Row)>) -> Result<Sent, TransformError> {
        let mut route = Vec::new();
        let mut routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        let first = batch.first().map_or(0, |(m, _)| routes.worker(m.partition));
        let groups = if batch
            .iter()
            .all(|(m, _)| routes.worker(m.partition) == first)
        {
            vec![(first, batch)]
        } else {
            // Which chunk each worker's records go in, in order of first appearance.
            let mut chunk_of = vec![None; self.jobs.len()];
            let mut groups: Vec<(usize, Part)> = Vec::new();
            route.reserve_exact(batch.len());
            for (meta, row) in batch {
                let w = routes.worker(meta.partition);
                let c = *chunk_of[w].get_or_insert_with(|| {
                    groups.push((w, Vec::new()));
                    groups.len() - 1
                });
                route.push(c);
                groups[c].1.push((meta, row));
            }
            groups
        };
        drop(routes);
        let chunks = groups
            .into_iter()
            .filter(|(_, p)| !p.is_empty())
            .map(|(w, inputs)| {
                let (metas, rows): (Vec<RecordMeta>, Vec<Row>) = inputs.into_iter().unzip();
                let batch = WireBatch::from_rows(rows.iter());
                let metas: Metas = Arc::new(metas);
                let (reply, rx) = oneshot::channel();
                let jobs = self.jobs.get(w).ok_or(TransformError::Stopped)?;
                jobs.send(Task::Run(Box::new(Job {
                    batch,
                    metas: Arc::clone(&metas),
                    reply,
                })))
                .map_err(|_| TransformError::Stopped)?;
                Ok(Chunk {
                    rx,
                    rows,
                    _metas: metas,
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Sent { chunks, route })
    }
}

/// Which worker runs each partition's records, so that a partition meets one set of instances.
/// Partitions are dealt to the workers in the order they first appear, and keep theirs until
/// [`TransformChain::forget_state`]. Dealt, not mapped by number: a consumer given every other
/// partition of a topic (one member of a group of two) would otherwise leave half the workers
/// idle.
struct Routes {
    workers: usize,
    of: HashMap<i32, usize>,
    /// The last partition looked up and its worker: a batch holds runs of one partition.
    last: Option<(i32, usize)>,
}

impl Routes {
    fn new(workers: usize) -> Routes {
        Routes {
            workers: workers.max(1),
            of: HashMap::new(),
            last: None,
        }
    }

    /// The worker of `partition`'s records.
    fn worker(&mut self, partition: i32) -> usize {
        if let Some((p, w)) = self.last
            && p == partition
        {
            return w;
        }
        let next = self.of.len() % self.workers;
        let w = *self.of.entry(partition).or_insert(next);
        self.last = Some((partition, w));
        w
    }
}

/// A batch part handed to the workers.
struct Sent {
    /// One chunk per worker that got any of its records.
    chunks: Vec<Chunk>,
    /// For each record, in batch order, the index in `chunks` of the chunk it went in; empty
    /// when there is one chunk.
    route: Vec<usize>,
}

/// Appends the chunks' outcomes (each in its records' order) to `out` in batch order, as
/// `route` ([`Sent::route`]) says.
fn in_input_order(route: &[usize], outs: Vec<Vec<RecordOutcome>>, out: &mut Vec<RecordOutcome>) {
    if route.is_empty() {
        out.extend(outs.into_iter().flatten());
        return;
    }
    let mut outs: Vec<_> = outs.into_iter().map(Vec::into_iter).collect();
    out.extend(route.iter().map(|&c| {
        outs[c]
            .next()
            .expect("a chunk has one outcome per record it was sent")
    }));
}

/// The batch layout's types, for [`process_native`]'s steps.
#[doc(hidden)]
pub mod wire {
    pub use super::super::bindings::{GuestError, Outcome, Output, Rows, Values};
}

/// A native stand-in for one transform in [`process_native`]: a batch in, its output back.
#[doc(hidden)]
pub type NativeStep<'a> = &'a mut dyn FnMut(&Rows) -> Output;

/// Runs a batch through `steps` as a chain, with exactly the host-side work of
/// [`TransformChain::process_blocking`] (rows into the batch layout, checking and splitting each
/// output, rows back) but with each transform a native function instead of a wasm call.
///
/// For benchmarks only: with the example guests' own code compiled natively as the steps, it is
/// how fast a chain would run if calling into WebAssembly cost nothing. Panics on an output that
/// breaks the batch contract or fails a record; record metadata is not available to the steps.
#[doc(hidden)]
pub fn process_native(
    batch: Vec<(RecordMeta, Row)>,
    steps: &mut [NativeStep<'_>],
) -> Vec<RecordOutcome> {
    let (metas, rows): (Vec<RecordMeta>, Vec<Row>) = batch.into_iter().unzip();
    let mut wire = WireBatch::from_rows(rows.iter());
    for step in steps {
        let output = step(&wire.wire);
        if let Err(e) = check_output(&output, wire.origins.len()) {
            panic!("native step broke the batch contract: {e}");
        }
        let (next, failures, _) = split(output, &wire, 0, u32::MAX);
        assert!(failures.is_empty(), "native step failed records");
        wire = next;
    }
    drop(metas);
    wire.into_outcomes(rows, BTreeMap::new())
}

/// Takes a chunk's reply: its outcomes (made from its input `rows`), returned while the batch
/// has not failed, the rows its chain emitted into `tally`, and its error, or the batch's output
/// passing its bound, into `result` if that is the first. A chunk after a failed one is still
/// awaited and counted: what it emitted is unfinished now.
fn take_reply(
    reply: Result<Done, TransformError>,
    rows: Vec<Row>,
    result: &mut Result<(), TransformError>,
    tally: &mut Tally,
) -> Vec<RecordOutcome> {
    let taken = reply.and_then(|done| {
        if result.is_ok() {
            tally.take(done, rows)
        } else {
            tally.emitted += done.take().2;
            Ok(Vec::new())
        }
    });
    taken.unwrap_or_else(|e| {
        if result.is_ok() {
            *result = Err(e);
        }
        Vec::new()
    })
}

/// What the chain has emitted for one batch so far, across its parts and chunks.
struct Tally {
    /// Rows out of the last transform (see [`Settle`]).
    emitted: u64,
    /// What the rows taken so far cost as host rows ([`host_size`]).
    size: u64,
    /// The most they may cost: [`BATCH_OUTPUT_PER_MEMORY_BYTE`] times the last transform's
    /// `memory_mb`, plus [`BATCH_OUTPUT_PER_INPUT_BYTE`] times what the batch's input costs.
    limit: u64,
    /// The batch's rows, for the error.
    rows: usize,
    /// The last transform's `memory_mb`, for the error.
    memory_mb: u64,
}

impl Tally {
    /// A chunk's outcomes (made from its input `rows`), unless they take the batch's output past
    /// its limit.
    fn take(&mut self, done: Done, rows: Vec<Row>) -> Result<Vec<RecordOutcome>, TransformError> {
        let (batch, failed, n) = done.take();
        self.emitted += n;
        self.size = self.size.saturating_add(host_size(&batch.wire));
        if self.size > self.limit {
            return Err(TransformError::BatchOutputTooBig {
                rows: self.rows,
                limit_mib: self.limit >> 20,
                memory_mb: self.memory_mb,
            });
        }
        Ok(batch.into_outcomes(rows, failed))
    }
}

/// Counts the rows a batch's chain emitted as out of its last transform once the whole batch is
/// through (`ok`); when a part of it failed, or the caller gave up on it, nothing of it goes on,
/// so they are unfinished instead, as the rows of a batch that fails in one piece are. (Chunks
/// the caller never took count themselves: see [`Done`].)
struct Settle<'a> {
    chain: &'a TransformChain,
    tally: Tally,
    ok: bool,
}

impl Drop for Settle<'_> {
    fn drop(&mut self) {
        if let Some(last) = self.chain.shared.transforms.last() {
            let counter = if self.ok {
                &last.stats.rows_out
            } else {
                &last.stats.rows_unfinished
            };
            TransformStats::add(counter, self.tally.emitted);
        }
    }
}

/// One chunk of a batch in flight on a worker.
struct Chunk {
    rx: oneshot::Receiver<Result<Done, TransformError>>,
    /// Its input rows: handed back as they are where the chain left them untouched, and
    /// written over (reusing their allocations) where it emitted one row in their place.
    rows: Vec<Row>,
    /// Kept so that the records' metadata is freed by the caller, once the worker is done.
    _metas: Metas,
}

/// What a worker sends back for a chunk: the rows that came out of the chain (tagged with their
/// input record) and the records that failed.
struct Done {
    batch: WireBatch,
    failed: BTreeMap<usize, RecordOutcome>,
    /// How many rows came out of the last transform: counted by the caller, once it knows
    /// whether the rest of the batch went through ([`Settle`]), or as unfinished if it never
    /// takes them (it gave up on the batch before this chunk was through).
    emitted: u64,
    /// The last transform's counters.
    last: Option<Arc<TransformStats>>,
}

impl Done {
    /// The rows, the failed records and how many rows the last transform emitted, which the
    /// caller now counts.
    fn take(mut self) -> (WireBatch, BTreeMap<usize, RecordOutcome>, u64) {
        (
            std::mem::take(&mut self.batch),
            std::mem::take(&mut self.failed),
            std::mem::take(&mut self.emitted),
        )
    }
}

impl Drop for Done {
    fn drop(&mut self) {
        if let Some(last) = &self.last {
            TransformStats::add(&last.rows_unfinished, self.emitted);
        }
    }
}

impl Drop for TransformChain {
    fn drop(&mut self) {
        // Closing the channels ends each worker's loop once the jobs queued before are done (those
        // whose caller gave up are skipped).
        self.jobs.clear();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

fn build_engine(fuel: bool) -> Result<Engine, LoadError> {
    let mut cfg = Config::new();
    cfg.wasm_component_model(true)
        .epoch_interruption(true)
        .consume_fuel(fuel);
    if std::env::var_os("SLUICE_PERFMAP").is_some() {
        cfg.profiler(wasmtime::ProfilingStrategy::PerfMap);
    }
    Engine::new(&cfg).map_err(|e| LoadError::Engine(format!("{e:#}")))
}

/// The compiled-component cache in `dir`, if it can be used. The cache only saves start-up time:
/// without it (a read-only home in a container, say) every run compiles its components again,
/// which is no reason to refuse to run.
fn open_cache(dir: Option<&Path>) -> Option<CompileCache> {
    let Some(dir) = dir else {
        tracing::debug!("no compiled-transform cache: compiling every transform");
        return None;
    };
    CompileCache::open(dir)
        .inspect_err(|reason| {
            tracing::warn!(
                dir = %dir.display(),
                %reason,
                "cannot use the compiled-transform cache; compiling without it"
            )
        })
        .ok()
}

/// The WASI interface through which a guest waits (wasmtime-wasi 48 defines `wasi:io` 0.2.12;
/// guests built against any earlier 0.2 release link to it).
const WASI_POLL: &str = "wasi:io/poll@0.2.12";

fn build_linker(engine: &Engine) -> Result<Linker<HostState>, LoadError> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_sync(&mut linker)
        .map_err(|e| LoadError::Engine(format!("{e:#}")))?;
    // A guest that sleeps or waits on a stream waits inside a host call, where the epoch deadline
    // is not checked, so it could hold a worker for as long as it liked. A wait on something not
    // ready yet traps instead; the record is quarantined like any other trap. (Every other
    // blocking WASI call the guest can reach returns at once: stdin is empty, stdout and stderr
    // always take output, and there are no files or sockets.)
    linker.allow_shadowing(true);
    let engine_err = |e: wasmtime::Error| LoadError::Engine(format!("{e:#}"));
    let mut poll = linker.instance(WASI_POLL).map_err(engine_err)?;
    poll.func_wrap(
        "[method]pollable.block",
        |mut store: StoreContextMut<'_, HostState>, (p,): (Resource<DynPollable>,)| match ready_now(
            &mut store.data_mut().table,
            &p,
        )? {
            true => Ok(()),
            false => Err(wasmtime::Error::new(GuestBlocked)),
        },
    )
    .map_err(engine_err)?;
    poll.func_wrap(
        "poll",
        |mut store: StoreContextMut<'_, HostState>, (ps,): (Vec<Resource<DynPollable>>,)| {
            let table = &mut store.data_mut().table;
            let mut ready = Vec::new();
            for (i, p) in ps.iter().enumerate() {
                if ready_now(table, p)? {
                    ready.push(u32::try_from(i)?);
                }
            }
            match ready.is_empty() {
                false => Ok((ready,)),
                true => Err(wasmtime::Error::new(GuestBlocked)),
            }
        },
    )
    .map_err(engine_err)?;
    linker.allow_shadowing(false);
    bindings::Transform::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |s| s)
        .map_err(|e| LoadError::Engine(format!("{e:#}")))?;
    Ok(linker)
}

/// Refuses a transform whose settings are out of range, with the first problem: `validate`
/// reports every one at its key, but the runtime is also given configs no file held.
fn check_config(config: &TransformConfig) -> Result<(), LoadError> {
    match config.validate() {
        Ok(()) => Ok(()),
        Err(problems) => {
            let first = problems.into_iter().next();
            let (field, message) = first.map_or(("", String::new()), |p| (p.field, p.message));
            Err(LoadError::Config {
                transform: config.display_name(),
                field,
                message,
            })
        }
    }
}

/// Loads one transform. `compiled`: the components compiled so far for this chain, by the hash
/// of their bytes.
fn load_one(
    engine: &Engine,
    cache: Option<&CompileCache>,
    compiled: &mut HashMap<blake3::Hash, Component>,
    linker: &Linker<HostState>,
    config: &TransformConfig,
) -> Result<Loaded, LoadError> {
    let path = PathBuf::from(&config.uses);
    let bytes = std::fs::read(&path).map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound => LoadError::NotFound { path: path.clone() },
        _ => LoadError::Read {
            path: path.clone(),
            source,
        },
    })?;
    if bytes.get(..8) == Some(b"\0asm\x01\0\0\0") {
        return Err(LoadError::InvalidComponent {
            path,
            reason: "it is a core wasm module, not a component (build with --target wasm32-wasip2)"
                .into(),
        });
    }
    // The engine also takes WebAssembly text; anything else without the binary magic is some
    // other file, and the text parser's "expected `(`" would not say so.
    let text = bytes.trim_ascii_start();
    if !bytes.starts_with(b"\0asm") && !text.starts_with(b"(") && !text.starts_with(b";;") {
        return Err(LoadError::InvalidComponent {
            path,
            reason: "it does not start with the `\\0asm` header of a WebAssembly file".into(),
        });
    }
    check_module_sizes(&bytes).map_err(|reason| LoadError::InvalidComponent {
        path: path.clone(),
        reason,
    })?;
    if let Some(warning) = super::stale::check(&path) {
        tracing::warn!(transform = config.display_name(), "{warning}");
    }
    let start = Instant::now();
    let hash = blake3::hash(&bytes);
    let (component, how) = match compiled.get(&hash) {
        Some(component) => (
            component.clone(),
            "used a component compiled for an earlier transform",
        ),
        None => {
            let component = match cache {
                Some(cache) => cache.component(engine, &bytes),
                None => Component::new(engine, &bytes).map(|c| (c, false)),
            };
            let (component, cached) = component.map_err(|e| LoadError::InvalidComponent {
                path: path.clone(),
                reason: format!("{e:#}"),
            })?;
            compiled.insert(hash, component.clone());
            let how = match cached {
                true => "loaded a compiled transform from the cache",
                false => "compiled a transform",
            };
            (component, how)
        }
    };
    tracing::debug!(
        transform = config.display_name(),
        path = %path.display(),
        ms = start.elapsed().as_millis() as u64,
        "{how}"
    );
    let instance_pre = linker
        .instantiate_pre(&component)
        .map_err(|e| LoadError::WrongWorld {
            path: path.clone(),
            reason: format!("{e:#}"),
        })?;
    let pre = TransformPre::new(instance_pre).map_err(|e| {
        let exports: Vec<String> = component
            .component_type()
            .exports(engine)
            .map(|(name, _)| name.to_owned())
            .collect();
        LoadError::WrongWorld {
            path: path.clone(),
            reason: match exports.is_empty() {
                true => format!("{e:#} (it exports nothing)"),
                false => format!("{e:#} (it exports: {})", exports.join(", ")),
            },
        }
    })?;
    Ok(Loaded {
        name: Arc::from(config.display_name()),
        config: config.clone(),
        params: config
            .with
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        pre,
        stats: Arc::default(),
        limit_warned: Default::default(),
        batch_only_warned: Default::default(),
        memory_rebuild_noted: Default::default(),
    })
}

/// Builds one instance and runs `init` on a scoped thread (never on the caller's, which may be
/// a tokio worker); returns the instance, ready for batches.
fn check_init(engine: &Engine, fuel_enabled: bool, t: &Loaded) -> Result<Slot, LoadError> {
    let result = std::thread::scope(|s| s.spawn(|| Slot::new(engine, fuel_enabled, t)).join());
    match result {
        Ok(Ok(slot)) => Ok(slot),
        Ok(Err(InitFailure::Guest(GuestError::InvalidParam(e)))) => Err(LoadError::InvalidParam {
            transform: t.name.to_string(),
            // A careless guest may name a param by its value, as readily as quote it.
            param: t.shown(bindings::one_line(e.name), MAX_FIELD),
            reason: t.shown(bindings::one_line(e.reason), MAX_REASON),
        }),
        Ok(Err(InitFailure::Exports(reason))) => Err(LoadError::WrongWorld {
            path: PathBuf::from(&t.config.uses),
            reason: format!("its exports do not have the contract's types: {reason}"),
        }),
        Ok(Err(e)) => Err(LoadError::Init {
            transform: t.name.to_string(),
            reason: match e {
                InitFailure::Wasm(FailureKind::Timeout, _) => format!(
                    "{} (building an instance and init get timeout_ms or 1000 ms, whichever is \
                     more)",
                    t.shown(e.to_string(), MAX_REASON)
                ),
                _ => t.shown(e.to_string(), MAX_REASON),
            },
            limit: match e {
                InitFailure::Wasm(kind, _) => Some(kind),
                _ => None,
            }
            .filter(|k| k.setting().is_some()),
        }),
        Err(_) => Err(LoadError::Init {
            transform: t.name.to_string(),
            reason: "init panicked the host".into(),
            limit: None,
        }),
    }
}

/// Bumps the engine epoch every [`TICK_MS`] so that epoch deadlines fire; joined on drop.
struct EpochTicker {
    stop: Arc<(Mutex<bool>, Condvar)>,
    handle: Option<JoinHandle<()>>,
}

impl EpochTicker {
    /// Fails when the thread cannot be started: without it no call would ever time out.
    fn start(engine: Engine) -> Result<EpochTicker, LoadError> {
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let flag = Arc::clone(&stop);
        let handle = std::thread::Builder::new()
            .name("sluice-epoch".into())
            .spawn(move || {
                let (lock, cv) = &*flag;
                let mut stopped = lock.lock().unwrap_or_else(|e| e.into_inner());
                while !*stopped {
                    stopped = cv
                        .wait_timeout(stopped, Duration::from_millis(TICK_MS))
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                    engine.increment_epoch();
                }
            })
            .map_err(|e| {
                LoadError::Engine(format!("cannot start the CPU-cap timer thread: {e}"))
            })?;
        Ok(EpochTicker {
            stop,
            handle: Some(handle),
        })
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        let (lock, cv) = &*self.stop;
        *lock.lock().unwrap_or_else(|e| e.into_inner()) = true;
        cv.notify_all();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// The data of each `Store`: an empty WASI context, the memory cap, and the current batch's
/// record metadata for the `context.meta` import.
struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    limits: MemoryCap,
    metas: Metas,
    origins: Vec<u32>,
    /// What the guest writes to stdout and stderr.
    output: GuestOutput,
    /// The CPU time a call may use, and the calling thread's CPU clock when the call was armed.
    /// Read then, one system call a call (about 0.6 µs here), rather than at the call's first
    /// epoch tick: a host call spanning that tick (WASI's random, a write) is the guest's time.
    cpu_limit: Duration,
    cpu_start: Duration,
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl bindings::sluice::transform::types::Host for HostState {}

impl bindings::sluice::transform::context::Host for HostState {
    fn meta(&mut self, index: u32) -> bindings::RecordMeta {
        let meta = self
            .origins
            .get(index as usize)
            .and_then(|&o| self.metas.get(o as usize));
        match meta {
            Some(m) => bindings::RecordMeta {
                topic: m.topic.clone(),
                partition: m.partition,
                offset: m.offset,
                key: m.key.clone(),
                timestamp_ms: m.timestamp_ms,
                headers: m
                    .headers
                    .iter()
                    .map(|(k, v)| bindings::Header {
                        key: k.clone(),
                        value: v.clone(),
                    })
                    .collect(),
            },
            None => bindings::RecordMeta {
                topic: String::new(),
                partition: -1,
                offset: -1,
                key: None,
                timestamp_ms: None,
                headers: Vec::new(),
            },
        }
    }
}

/// Whether `p` is ready without waiting. A deadline already past answers on its second poll (its
/// first yields once, so that a busy poll loop cannot starve wasmtime-wasi's I/O driver).
fn ready_now(table: &mut ResourceTable, p: &Resource<DynPollable>) -> wasmtime::Result<bool> {
    for _ in 0..2 {
        let p = Resource::new_borrow(p.rep());
        if wasmtime_wasi::runtime::in_tokio(HostPollable::ready(table, p))? {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The guest tried to wait (sleep, or block on a timer or stream).
#[derive(Debug, thiserror::Error)]
#[error(
    "tried to wait (a sleep, or a blocking wait on a timer or stream): transforms may not block"
)]
struct GuestBlocked;

/// The guest hit its memory cap.
#[derive(Debug, thiserror::Error)]
#[error("memory limit of {limit_bytes} bytes exceeded (wanted {desired_bytes})")]
struct MemoryCapExceeded {
    limit_bytes: usize,
    desired_bytes: usize,
}

/// Traps (instead of failing `memory.grow` quietly) when a guest grows past its cap, so the
/// failure is attributed to the memory limit rather than to whatever the guest's allocator does.
struct MemoryCap {
    limit_bytes: usize,
    /// Bytes of all the instance's linear memories together: a component can hold several
    /// (one per core module that defines one), and the cap is for the instance.
    used_bytes: usize,
    /// The last growth allowed, as (current, desired), to take back if it then fails.
    pending: (usize, usize),
    hit: bool,
}

impl ResourceLimiter for MemoryCap {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let total = self
            .used_bytes
            .saturating_sub(current)
            .saturating_add(desired);
        if total > self.limit_bytes {
            self.hit = true;
            return Err(wasmtime::Error::new(MemoryCapExceeded {
                limit_bytes: self.limit_bytes,
                desired_bytes: total,
            }));
        }
        self.used_bytes = total;
        self.pending = (current, desired);
        Ok(true)
    }

    fn memory_grow_failed(&mut self, _error: wasmtime::Error) -> wasmtime::Result<()> {
        // Allowed here but refused later (the memory's own maximum, the OS): those bytes never
        // arrived, and counting them would refuse later growth that fits.
        let (current, desired) = std::mem::take(&mut self.pending);
        self.used_bytes = self
            .used_bytes
            .saturating_sub(desired)
            .saturating_add(current);
        Ok(())
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }

    fn instances(&self) -> usize {
        MAX_CORE_INSTANCES
    }

    fn tables(&self) -> usize {
        MAX_TABLES
    }

    fn memories(&self) -> usize {
        MAX_MEMORIES
    }
}

/// Why an instance could not be built.
enum InitFailure {
    Guest(GuestError),
    Wasm(FailureKind, String),
    /// The exports exist (`TransformPre` checks that) but do not have the contract's types.
    Exports(String),
}

impl std::fmt::Display for InitFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            InitFailure::Guest(e) => f.write_str(&bindings::describe(e)),
            InitFailure::Wasm(_, e) | InitFailure::Exports(e) => f.write_str(e),
        }
    }
}

/// One live instance of one transform, owned by one worker (or by the inline lane of
/// [`TransformChain::process_blocking`]).
struct Slot {
    store: Store<HostState>,
    guest: bindings::Transform,
    rows_seen: u64,
    /// Its transform's counters, whose `instances` it is one of.
    stats: Arc<TransformStats>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.stats.instances.fetch_sub(1, Relaxed);
    }
}

impl Slot {
    fn new(engine: &Engine, fuel_enabled: bool, t: &Loaded) -> Result<Slot, InitFailure> {
        let mut wasi = WasiCtxBuilder::new();
        let config = t.config.clone();
        let output = GuestOutput::new(
            &t.name,
            t.config.debug_stdio,
            Box::new(move |line| config.redact(line)),
            t.config.secret_forms(),
        );
        wasi.allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            // wasmtime's default (64 MiB a call) is host memory outside `memory_mb`, and host
            // time the CPU limit sees only once the call returns; a hash seed or a UUID needs 16.
            .max_random_size(MAX_RANDOM_BYTES)
            .stdout(output.clone())
            .stderr(output.clone());
        let limit_bytes =
            usize::try_from(t.config.memory_mb.saturating_mul(1 << 20)).unwrap_or(usize::MAX);
        let mut table = ResourceTable::new();
        table.set_max_capacity(MAX_HANDLES);
        let state = HostState {
            wasi: wasi.build(),
            table,
            limits: MemoryCap {
                limit_bytes,
                used_bytes: 0,
                pending: (0, 0),
                hit: false,
            },
            metas: Arc::default(),
            origins: Vec::new(),
            output,
            cpu_limit: Duration::ZERO,
            cpu_start: Duration::ZERO,
        };
        let mut store = Store::new(engine, state);
        store.limiter(|s| &mut s.limits);
        store
            .set_hostcall_fuel(usize::try_from(output_copy_limit(&t.config)).unwrap_or(usize::MAX));
        // The epoch only says when to look: the cap is on the CPU time the call has used, so a
        // guest descheduled on a busy machine is not charged for the wait. The count starts
        // when the call is armed, not at its first tick: a host call (WASI's random, a write)
        // that spans that tick is the guest's CPU time too.
        store.epoch_deadline_callback(|mut ctx| {
            let s = ctx.data_mut();
            let now = thread_cpu_time();
            Ok(
                match s.cpu_limit.checked_sub(now.saturating_sub(s.cpu_start)) {
                    Some(left) if !left.is_zero() => UpdateDeadline::Continue(ticks(left)),
                    _ => UpdateDeadline::Interrupt,
                },
            )
        });
        let init_ms = init_limit_ms(&t.config);
        arm_for(&mut store, &t.config, fuel_enabled, init_ms, Pass::First);
        let instance = t.pre.instance_pre().instantiate(&mut store);
        count_fuel(&store, t);
        let instance = instance.map_err(|e| {
            let (kind, reason) = classify(&e, store.data(), &t.config);
            InitFailure::Wasm(kind, reason)
        })?;
        // `TransformPre` found the exports by name; this checks their function types.
        let guest = bindings::Transform::new(&mut store, &instance)
            .map_err(|e| InitFailure::Exports(format!("{e:#}")))?;
        arm_for(&mut store, &t.config, fuel_enabled, init_ms, Pass::First);
        let init = guest
            .sluice_transform_transformer()
            .call_init(&mut store, &t.params);
        count_fuel(&store, t);
        match init {
            Ok(Ok(())) => {
                t.stats.instances.fetch_add(1, Relaxed);
                Ok(Slot {
                    store,
                    guest,
                    rows_seen: 0,
                    stats: Arc::clone(&t.stats),
                })
            }
            Ok(Err(e)) => Err(InitFailure::Guest(e)),
            Err(e) => {
                let (kind, reason) = classify(&e, store.data(), &t.config);
                Err(InitFailure::Wasm(kind, reason))
            }
        }
    }
}

/// Adds the fuel the last call into the guest (a batch, `init`, or building the instance) used
/// to the transform's count, when it has a `fuel` budget (each call starts with all of it).
fn count_fuel(store: &Store<HostState>, t: &Loaded) {
    if let Some(budget) = t.config.fuel {
        let left = store.get_fuel().unwrap_or(0);
        TransformStats::add(&t.stats.fuel_consumed, budget.saturating_sub(left));
    }
}

/// Sets the CPU deadline (and fuel) for the next call into the guest; `pass`: why it runs.
fn arm(store: &mut Store<HostState>, config: &TransformConfig, fuel_enabled: bool, pass: Pass) {
    arm_for(store, config, fuel_enabled, config.timeout_ms, pass);
}

/// The CPU time building an instance and running `init` may take: `timeout_ms`, but at least a
/// second. A fresh instance's first steps cost a few ms of CPU of the host's own (mapping its
/// memory image), which a tight per-batch cap must not count against the guest.
fn init_limit_ms(config: &TransformConfig) -> u64 {
    config.timeout_ms.max(1000)
}

/// [`arm`] with a limit of `limit_ms` of CPU time.
fn arm_for(
    store: &mut Store<HostState>,
    config: &TransformConfig,
    fuel_enabled: bool,
    limit_ms: u64,
    pass: Pass,
) {
    let state = store.data_mut();
    state.cpu_limit = Duration::from_millis(limit_ms);
    state.cpu_start = thread_cpu_time();
    // A refused growth that the call survived (wasmtime collects a GC heap and goes on instead
    // of growing it) must not name this call's failure, whatever it is, a memory one.
    state.limits.hit = false;
    state.output.start_call(pass);
    // The next tick looks at the count (see the deadline callback in `Slot::new`).
    store.set_epoch_deadline(1);
    if fuel_enabled {
        // A fuel-metered engine needs fuel in every store; unmetered transforms get "infinite".
        let _ = store.set_fuel(config.fuel.unwrap_or(u64::MAX));
    }
}

/// The epoch ticks until `left` of CPU time could be used up: at least one.
fn ticks(left: Duration) -> u64 {
    u64::try_from(left.as_millis().div_ceil(u128::from(TICK_MS)))
        .unwrap_or(u64::MAX)
        .max(1)
}

/// The CPU time the calling thread has used.
fn thread_cpu_time() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// Whether a call failed because its output was more than the host copies out of one call
/// ([`output_copy_limit`]).
fn is_copy_exhausted(err: &wasmtime::Error) -> bool {
    // wasmtime's error type for this is private: known by its text, which a test pins.
    err.chain().any(|e| {
        e.to_string()
            .contains("fuel allocated for hostcalls has been exhausted")
    })
}

/// Names the limit or trap behind a failed call.
fn classify(
    err: &wasmtime::Error,
    state: &HostState,
    config: &TransformConfig,
) -> (FailureKind, String) {
    if state.limits.hit || err.downcast_ref::<MemoryCapExceeded>().is_some() {
        return (
            FailureKind::Memory,
            format!("exceeded the memory limit of {} MiB", config.memory_mb),
        );
    }
    if is_copy_exhausted(err) {
        return (
            FailureKind::Memory,
            format!(
                "returned more output than the host copies out of one call ({} MiB, \
                 {OUTPUT_COPY_PER_MEMORY_BYTE} times the memory limit of {} MiB, up to \
                 {OUTPUT_COPY_CEILING_MIB} MiB)",
                output_copy_limit(config) >> 20,
                config.memory_mb
            ),
        );
    }
    match err.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => (
            FailureKind::Timeout,
            format!(
                "exceeded the time limit of {} ms",
                state.cpu_limit.as_millis()
            ),
        ),
        Some(Trap::OutOfFuel) => (
            FailureKind::Fuel,
            format!(
                "ran out of fuel ({} per call: each batch, and `init`)",
                config.fuel.unwrap_or(0)
            ),
        ),
        Some(trap) => (FailureKind::Trap, explained(trap.to_string(), state)),
        None if err.downcast_ref::<GuestBlocked>().is_some() => {
            (FailureKind::Trap, GuestBlocked.to_string())
        }
        None if is_handles_full(err) => {
            // A trap, not `Memory`: raising `memory_mb` would not help.
            (
                FailureKind::Trap,
                format!("held more than {MAX_HANDLES} WASI handles at once (it leaks them)"),
            )
        }
        None => match err.downcast_ref::<wasmtime_wasi::I32Exit>() {
            Some(exit) => (
                FailureKind::Trap,
                // WASI 0.2's `exit` carries success or failure, not a code: `exit(3)` arrives
                // as 1, which the author never wrote.
                explained(
                    match exit.0 {
                        0 => "the guest exited (with success) in the middle of the call".into(),
                        _ => "the guest exited with a failure status (a process exit, such as \
                              std::process::exit; WASI 0.2 passes no exit code)"
                            .to_owned(),
                    },
                    state,
                ),
            ),
            None => (FailureKind::Trap, explained(error_line(err), state)),
        },
    }
}

/// Why a call's output, which would cost the host `size` bytes as host rows, was refused.
fn too_much_output(config: &TransformConfig, size: u64) -> String {
    format!(
        "returned more output than the host takes from one call ({} MiB as host rows, more than \
         {} MiB, {OUTPUT_ROWS_PER_MEMORY_BYTE} times the memory limit of {} MiB, up to \
         {OUTPUT_ROWS_CEILING_MIB} MiB)",
        size >> 20,
        output_rows_limit(config) >> 20,
        config.memory_mb
    )
}

/// Whether a call failed because its instance holds [`MAX_HANDLES`] host resources.
fn is_handles_full(err: &wasmtime::Error) -> bool {
    matches!(
        err.downcast_ref::<wasmtime::component::ResourceTableError>(),
        Some(wasmtime::component::ResourceTableError::Full)
    )
}

/// `text` cut to `max` bytes (see [`crate::dead_letter::clip`]).
fn clip(text: &str, max: usize) -> String {
    crate::dead_letter::clip(text, max).into_owned()
}

/// An error's chain on one line, without the wasm backtrace wasmtime attaches (a dozen lines of
/// guest function names, where a reason must fit a log line).
fn error_line(err: &wasmtime::Error) -> String {
    // The backtrace is a context whose type the chain does not expose: known by its text.
    let parts: Vec<String> = err
        .chain()
        .map(|e| e.to_string())
        .filter(|e| !e.starts_with("error while executing at wasm backtrace"))
        .collect();
    match parts.is_empty() {
        true => bindings::one_line(format!("{err:#}")),
        false => bindings::one_line(parts.join(": ")),
    }
}

/// A trap's reason and, when the guest wrote something in the call (a Rust guest's panic message
/// is all there is to say why it trapped), what it wrote.
fn explained(reason: String, state: &HostState) -> String {
    match state.output.explain() {
        Some(said) => format!("{reason} (the guest wrote: {said})"),
        None => reason,
    }
}

fn worker_main(shared: &Shared, rx: &mpsc::Receiver<Task>) {
    let mut slots: Vec<Option<Slot>> = shared.transforms.iter().map(|_| None).collect();
    loop {
        let task = {
            let polled = spin(WORKER_SPIN, || match rx.try_recv() {
                Ok(task) => Some(Some(task)),
                Err(mpsc::TryRecvError::Disconnected) => Some(None),
                Err(mpsc::TryRecvError::Empty) => None,
            });
            match polled.unwrap_or_else(|| rx.recv().ok()) {
                Some(task) => task,
                None => return,
            }
        };
        let job = match task {
            Task::Run(job) => job,
            Task::Forget => {
                slots.iter_mut().for_each(|s| *s = None);
                continue;
            }
        };
        // A caller that gave up (its `process` future dropped, by a timeout say) wants no
        // answer: running its batch would only hold this worker, and `Drop` waiting on it. Its
        // rows are unfinished in the first transform, so that every row is accounted for.
        if job.reply.is_closed() {
            if let Some(first) = shared.transforms.first() {
                let rows = job.batch.origins.len() as u64;
                TransformStats::add(&first.stats.rows_in, rows);
                TransformStats::add(&first.stats.rows_unfinished, rows);
            }
            continue;
        }
        let reply = job.reply;
        let result = run_chain(shared, &mut slots, job.batch, job.metas, &|| {
            reply.is_closed()
        });
        let _ = reply.send(result);
    }
}

/// Runs the chain over a batch. Rows stay in the wire layout from the first transform to the
/// last: what transform i emits is, as is, what transform i+1 receives. `gave_up`: whether the
/// caller no longer wants the answer, which a batch run again a row at a time (up to a minute of
/// timeouts) stops for.
fn run_chain(
    shared: &Shared,
    slots: &mut [Option<Slot>],
    mut batch: WireBatch,
    metas: Metas,
    gave_up: &dyn Fn() -> bool,
) -> Result<Done, TransformError> {
    // Failures are rare: keyed by input index, so a clean batch allocates nothing for them.
    let mut failed: BTreeMap<usize, RecordOutcome> = BTreeMap::new();
    for (i, (t, slot)) in shared.transforms.iter().zip(slots.iter_mut()).enumerate() {
        if batch.origins.is_empty() {
            break;
        }
        let (next, mut failures, filtered) =
            run_transform(shared, t, slot, &batch, &metas, gave_up).inspect_err(|_| {
                TransformStats::add(&t.stats.rows_unfinished, batch.origins.len() as u64);
            })?;
        // The run stops at the first failure of the batch that its policy says to stop on.
        let fatal = (failures.iter()).position(|f| t.config.on_error.of(f.kind) == OnError::Fail);
        if let Some(at) = fatal {
            // What the rest of the batch did goes no further, so rows that neither failed nor
            // were filtered out are unfinished.
            let unfinished = (batch.origins.len() as u64)
                .saturating_sub(failures.len() as u64)
                .saturating_sub(filtered);
            for f in &failures {
                t.stats.note_failed(f.kind);
            }
            TransformStats::add(&t.stats.rows_unfinished, unfinished);
            let Failure {
                row: j,
                kind,
                reason,
                ..
            } = failures.swap_remove(at);
            let m = &metas[batch.origins[j] as usize];
            return Err(TransformError::Failed {
                transform: t.name.to_string(),
                kind,
                // A guest's error may quote a field of any size; messages need not.
                reason: t.shown(reason, MAX_REASON),
                topic: m.topic.clone(),
                partition: m.partition,
                offset: m.offset,
                line: m.csv_line(),
            });
        }
        let any_failed = !failures.is_empty();
        for Failure {
            row: j,
            kind,
            reason,
            error,
        } in failures
        {
            // A guest's error may quote a field of any size; messages and letters need not.
            let reason = t.shown(reason, MAX_REASON);
            t.stats.note_failed(kind);
            let o = batch.origins[j] as usize;
            let policy = t.config.on_error.of(kind);
            // A record whose rows failed in several ways gets the strictest of their policies,
            // whatever their order: a row's failure dropped must not hide another's that asks
            // for a dead letter.
            let set_aside = matches!(failed.get(&o), Some(RecordOutcome::Quarantined(_)));
            if set_aside || (failed.contains_key(&o) && policy == OnError::Drop) {
                continue;
            }
            let outcome = match policy {
                // Counted as failed above, and only there: `dropped` is for rows the transform
                // itself filtered out, so that in = out + dropped + failed + discarded.
                OnError::Drop => RecordOutcome::Dropped {
                    transform: t.name.to_string(),
                    kind,
                    reason,
                },
                // (`fail` stopped the run above.)
                OnError::DeadLetter | OnError::Fail => RecordOutcome::Quarantined(Quarantine {
                    transform: t.name.to_string(),
                    kind,
                    reason,
                    error: error.map(|e| GuestFault {
                        field: e.field.map(|f| t.shown(f, MAX_FIELD)),
                        ..e
                    }),
                    row: batch.row(j),
                }),
            };
            failed.insert(o, outcome);
        }
        batch = if any_failed {
            // A record fails as a whole: drop rows it already emitted from other inputs.
            let emitted = next.origins.len();
            let kept = next.retain(|o| !failed.contains_key(&(o as usize)));
            TransformStats::add(
                &t.stats.rows_discarded,
                (emitted - kept.origins.len()) as u64,
            );
            kept
        } else {
            next
        };
        // Counted after the failed records' rows are gone, so that each transform's rows out are
        // exactly the next one's rows in, which the run's reconciliation checks. The last
        // transform's are counted by the caller.
        if i + 1 < shared.transforms.len() {
            TransformStats::add(&t.stats.rows_out, batch.origins.len() as u64);
        }
    }
    let emitted = batch.origins.len() as u64;
    Ok(Done {
        batch,
        failed,
        emitted,
        last: shared.transforms.last().map(|t| Arc::clone(&t.stats)),
    })
}

/// An input row (by index) that failed in a transform.
#[derive(Debug, PartialEq)]
struct Failure {
    /// The input row's index in the batch.
    row: usize,
    kind: FailureKind,
    /// The guest's error or the trap, unredacted and uncut.
    reason: String,
    /// The guest's typed error, for `FailureKind::Guest`.
    error: Option<GuestFault>,
}

impl Failure {
    /// A failure the host found (a trap, a limit, a broken contract): no typed error.
    fn host(row: usize, kind: FailureKind, reason: String) -> Failure {
        Failure {
            row,
            kind,
            reason,
            error: None,
        }
    }
}

/// Origin of output rows to throw away (a record that exceeded `max_rows_per_record`).
const DISCARD: u32 = u32::MAX;

/// Runs one transform over a batch; returns what it emitted (each row tagged with its input's
/// origin record), which inputs failed, and how many it filtered out (counted as dropped here).
fn run_transform(
    shared: &Shared,
    t: &Loaded,
    slot: &mut Option<Slot>,
    batch: &WireBatch,
    metas: &Metas,
    gave_up: &dyn Fn() -> bool,
) -> Result<(WireBatch, Vec<Failure>, u64), TransformError> {
    let n = batch.origins.len();
    TransformStats::add(&t.stats.rows_in, n as u64);
    // No one waits for the answer (the run is stopping): as in `isolate`, the rest of the chain
    // would only hold this worker, and the chain's `Drop` joining it. (Its rows count as
    // unfinished.)
    if gave_up() {
        return Err(TransformError::Stopped);
    }
    let max = t.config.max_rows_per_record;
    let (next, failures, filtered) = match call(
        shared,
        t,
        slot,
        &batch.wire,
        &batch.origins,
        metas,
        Pass::First,
    )? {
        Ok(output) => match check_output(&output, n) {
            // What comes out is at most the input rows kept and the rows emitted. Past what one
            // batch holds, the rows run again one at a time, where the text is counted exactly.
            Ok(())
                if n > 1
                    && batch.wire.values.text.len() + output.rows.values.text.len()
                        > MAX_LAYOUT_TEXT =>
            {
                // Gigabytes of it: gone before the rows run again.
                drop(output);
                discard(t, slot);
                isolate(shared, t, slot, batch, metas, None, gave_up)?
            }
            Ok(()) => split(output, batch, 0, max),
            Err(reason) if n == 1 => {
                // As below: the next batch gets an instance that never saw this row.
                discard(t, slot);
                (
                    WireBatch::default(),
                    vec![Failure::host(0, FailureKind::Protocol, reason)],
                    0,
                )
            }
            Err(reason) => {
                // The instance is not poisoned, but it has seen the whole batch: a guest
                // that keeps state (a dedupe) would take each row it sees again for a repeat.
                discard(t, slot);
                let isolated = isolate(shared, t, slot, batch, metas, Some(&reason), gave_up)?;
                let kind = FailureKind::Protocol;
                if !gave_up()
                    && breaks_only_batches(shared, t, slot, batch, metas, kind, &isolated.1)
                {
                    note_batch_only(t, kind, &reason, n);
                }
                isolated
            }
        },
        Err((kind, reason)) if n == 1 => (
            WireBatch::default(),
            vec![Failure::host(0, kind, reason)],
            0,
        ),
        Err((kind, reason)) => {
            let isolated = isolate(shared, t, slot, batch, metas, None, gave_up)?;
            warn_limit_per_batch(t, kind, n, &isolated.1);
            if !gave_up() && breaks_only_batches(shared, t, slot, batch, metas, kind, &isolated.1) {
                note_batch_only(t, kind, &reason, n);
            }
            isolated
        }
    };
    TransformStats::add(&t.stats.rows_dropped, filtered);
    Ok((next, failures, filtered))
}

/// Warns once per run when a batch of `n` rows hit a limit (`fuel`, `timeout_ms`, `memory_mb`)
/// while each of its rows ran alone without trapping or hitting a limit: the limits hold per
/// batch call, and one that fits single rows but not whole batches makes every batch run twice,
/// the second time a row at a time. That is slow but loses nothing, so easy to miss.
fn warn_limit_per_batch(t: &Loaded, kind: FailureKind, n: usize, failures: &[Failure]) {
    let what = match kind {
        FailureKind::Fuel => "ran out of fuel",
        FailureKind::Timeout => "exceeded its time limit",
        FailureKind::Memory => "exceeded its memory limit",
        _ => return,
    };
    let setting = kind.setting().unwrap_or_default();
    // A row that trapped or hit a limit alone (emitting past `max_rows_per_record`, say) may be
    // what the batch ran out of: then raising the batch's limit is not the fix. A guest's error
    // costs next to nothing, and says nothing either way.
    let failed_alone = failures.iter().any(|f| f.kind != FailureKind::Guest);
    if failed_alone || t.limit_warned.swap(true, Relaxed) {
        return;
    }
    tracing::warn!(
        transform = %t.name,
        rows = n,
        "transform {} {what} on a batch of {n} rows that each run within it alone; `{setting}` \
         holds per batch call, so every such batch is run again a row at a time: slow, though \
         nothing is lost. Raise `{setting}`.",
        t.name
    );
}

/// Whether a batch whose call trapped or broke the contract (`kind`), and whose rows then ran
/// alone (with `failures`), shows a transform that breaks only on batches of several rows (a bug
/// in its batch loop, or state carried from row to row): none of its rows failed alone that way,
/// or, if some did, the rows that did not still fail that way together, on a fresh instance (one
/// more call, so that a poison row in the batch does not hide the bug; not made when a failure
/// stops the run anyway, and one that cannot be made tells nothing). Limits that fit single rows
/// but not whole batches are [`warn_limit_per_batch`]'s.
fn breaks_only_batches(
    shared: &Shared,
    t: &Loaded,
    slot: &mut Option<Slot>,
    batch: &WireBatch,
    metas: &Metas,
    kind: FailureKind,
    failures: &[Failure],
) -> bool {
    if !matches!(kind, FailureKind::Trap | FailureKind::Protocol) {
        return false;
    }
    if !failures.iter().any(|f| f.kind == kind) {
        return true;
    }
    if (failures.iter()).any(|f| t.config.on_error.of(f.kind) == OnError::Fail) {
        return false;
    }
    let failed: std::collections::HashSet<usize> = failures.iter().map(|f| f.row).collect();
    let (mut rest, mut shapes) = (WireBatch::default(), HashMap::new());
    for j in (0..batch.origins.len()).filter(|j| !failed.contains(j)) {
        rest.append_indexed(batch.one_row(j), &mut shapes);
    }
    if rest.origins.len() < 2 {
        return false;
    }
    // On a fresh instance, as the batch's first call was (this one has seen the rows alone).
    discard(t, slot);
    let Ok(again) = call(
        shared,
        t,
        slot,
        &rest.wire,
        &rest.origins,
        metas,
        Pass::Fresh,
    ) else {
        return false;
    };
    match again {
        Ok(output) => {
            kind == FailureKind::Protocol && check_output(&output, rest.origins.len()).is_err()
        }
        Err((k, _)) => k == kind,
    }
}

/// Counts, and warns of once per run, a batch call of `n` rows that trapped or broke the
/// contract (`kind`, `reason`) on a transform that [`breaks_only_batches`]. Every record still
/// comes out right, since each row ran again alone, so without this nothing would show that
/// every such batch runs twice, nor would `transform test` fail on it.
fn note_batch_only(t: &Loaded, kind: FailureKind, reason: &str, n: usize) {
    TransformStats::add(&t.stats.batch_only_failures, 1);
    if t.batch_only_warned.swap(true, Relaxed) {
        return;
    }
    let reason = t
        .config
        .redact(reason.lines().next().unwrap_or_default().to_owned());
    tracing::warn!(
        transform = %t.name,
        rows = n,
        "transform {} failed on a batch of {n} rows ({}: {reason}), though its rows run alone \
         do not fail that way, but for any that fail alone: it breaks on batches of several \
         rows (its batch loop, or state carried from row to row). Each row was run again alone \
         and came out right, but every such batch runs twice; `sluice transform test \
         --batch-size 1`, and with larger batches, tells.",
        t.name,
        kind.as_str()
    );
}

/// Most rows of one batch that may time out when run alone. Each costs a whole `timeout_ms` (two
/// when it timed out after others on the same instance and ran once more on a fresh one, see
/// `call`), and a transform that hangs on common input would otherwise hold a batch of 1024
/// rows for 1024 timeouts (17 minutes at the default), long after the consumer group gave up on
/// this member. Rows, not limits used: a few hanging records quarantined among good ones each
/// cost two, and a cap on limits failed their batch at the fifth ([`ISOLATION_LIMITS`] bounds
/// the time in all). Rows that fail another way after using most of the limit cost as much, so
/// the CPU time of the rows failing that way is capped too, at one limit more.
const MAX_TIMEOUTS_PER_BATCH: usize = 8;

/// Most CPU time, in time limits, that running one batch again a row at a time may use in all:
/// rows that succeed and instances rebuilt after failures included. Rows that each take nearly
/// the limit, or an `init` that does, would otherwise hold a worker for a limit per row (17
/// minutes for 1024 rows at the defaults) with few failures to count.
pub(crate) const ISOLATION_LIMITS: u32 = 60;

/// CPU time, in milliseconds, that running one batch again a row at a time may use per row on top
/// of [`ISOLATION_LIMITS`]: each row alone costs the host a call of its own (a one-row batch,
/// the call's set-up, its output checked), and a batch of many rows (a flat-map's, or any under a
/// small `timeout_ms`) would otherwise fail as a whole over one poison row on that cost alone.
/// Far above that cost, so it does not let rows that each take nearly the limit through.
pub(crate) const ISOLATION_ROW_MS: u64 = 1;

/// After a batch call trapped or broke the contract: re-runs each row alone on a healthy
/// instance, so only the poison row fails. Gives up with [`TransformError::TooSlow`] when more
/// than [`MAX_TIMEOUTS_PER_BATCH`] rows time out alone, or rows failing alone use more CPU time
/// than that many limits, or the whole re-run uses more than [`ISOLATION_LIMITS`]: that is a
/// transform too slow for its cap, not a few poison records, and failing the batch keeps its
/// records for a run with a higher cap. `broken`: how the whole
/// batch's output broke the contract, if it did, told with each row that breaks it alone too
/// (a guest that always returns one outcome too few would otherwise show only `0 for 1`).
fn isolate(
    shared: &Shared,
    t: &Loaded,
    slot: &mut Option<Slot>,
    batch: &WireBatch,
    metas: &Metas,
    broken: Option<&str>,
    gave_up: &dyn Fn() -> bool,
) -> Result<(WireBatch, Vec<Failure>, u64), TransformError> {
    // Each row's output apart until the end, then laid out once at its full size: a layout grown
    // row by row doubles its lanes, and the host held up to twice what it bounds.
    let mut outputs = Vec::new();
    let mut text = 0usize;
    let mut failures = Vec::new();
    let mut filtered = 0u64;
    let (mut timeouts, mut retried, mut failing_cpu) = (0usize, 0usize, Duration::ZERO);
    let limit = Duration::from_millis(t.config.timeout_ms);
    let cpu_cap = limit * (MAX_TIMEOUTS_PER_BATCH as u32 + 1);
    let total_cap = limit * ISOLATION_LIMITS
        + Duration::from_millis(ISOLATION_ROW_MS.saturating_mul(batch.origins.len() as u64));
    let (started, built_before) = (thread_cpu_time(), BUILD_CPU.get());
    let max = t.config.max_rows_per_record;
    let (mut size, size_cap) = (0u64, isolated_output_mib(t.config.memory_mb) << 20);
    for j in 0..batch.origins.len() {
        // No one waits for the answer (the run is stopping): the rest would only hold this
        // worker, and the chain's `Drop` joining it.
        if gave_up() {
            return Err(TransformError::Stopped);
        }
        let alone = batch.one_row(j);
        // A fresh instance (the previous row trapped) is built first: building it and its
        // `init` are the host's cost, not this row's (but they count in `total_cap`).
        ready(shared, t, slot)?;
        let (cpu, built, failed_before, timeouts_before, stale_before) = (
            thread_cpu_time(),
            BUILD_CPU.get(),
            failures.len(),
            timeouts,
            STALE_TIMEOUTS.get(),
        );
        // A row that breaks the contract after others on the same instance runs once more on a
        // fresh one before it is blamed, as a trap does (see `call`): the state they left may be
        // what broke it.
        let mut pass = Pass::Alone;
        let called = loop {
            let fresh = ready(shared, t, slot)?.rows_seen == 0;
            let called = call(shared, t, slot, &alone.wire, &alone.origins, metas, pass)?;
            match &called {
                Ok(output) if !fresh && pass == Pass::Alone && check_output(output, 1).is_err() => {
                    discard(t, slot);
                    pass = Pass::Fresh;
                }
                _ => break called,
            }
        };
        match called {
            Ok(output) => match check_output(&output, 1) {
                Ok(()) => {
                    let (one, failed, none) = split(output, batch, j, max);
                    size += peak_size(&one.wire);
                    if size > size_cap {
                        return Err(TransformError::TooMuchOutput {
                            transform: t.name.to_string(),
                            rows: j + 1,
                            of: batch.origins.len(),
                            memory_mb: t.config.memory_mb,
                        });
                    }
                    // The bound above, counting text twice, is met first today (8 GiB at most);
                    // this keeps the layout's 32-bit offsets safe should the bounds change.
                    text += one.wire.values.text.len();
                    if text > MAX_LAYOUT_TEXT {
                        return Err(TransformError::TooMuchText {
                            transform: t.name.to_string(),
                            rows: j + 1,
                            of: batch.origins.len(),
                        });
                    }
                    outputs.push(one);
                    failures.extend(failed);
                    filtered += none;
                }
                Err(reason) => {
                    // As for the whole batch: the next row gets an instance that never saw this
                    // one.
                    discard(t, slot);
                    let reason = match broken {
                        Some(b) => format!(
                            "{reason} (in the batch of {} it came in: {b})",
                            counted(batch.origins.len(), "row")
                        ),
                        None => reason,
                    };
                    failures.push(Failure::host(j, FailureKind::Protocol, reason));
                }
            },
            Err((kind, reason)) => {
                failures.push(Failure::host(j, kind, reason));
                timeouts += usize::from(kind == FailureKind::Timeout);
            }
        }
        // A timeout on a used instance, run again on a fresh one, cost a limit too (counted in
        // `total`, and said in the error).
        retried += STALE_TIMEOUTS.get() - stale_before;
        // Timeouts are counted above (each costs one limit, and a little more, a tick at most).
        // Less any instance built meanwhile (`call` builds one to run a row that failed after
        // others again on a fresh instance): a slow `init` is not the row's doing.
        if failures.len() > failed_before && timeouts == timeouts_before {
            failing_cpu += (thread_cpu_time().saturating_sub(cpu))
                .saturating_sub(BUILD_CPU.get().saturating_sub(built));
        }
        let total = thread_cpu_time().saturating_sub(started);
        if timeouts > MAX_TIMEOUTS_PER_BATCH || failing_cpu > cpu_cap || total > total_cap {
            return Err(TransformError::TooSlow {
                transform: t.name.to_string(),
                rows: failures.len(),
                // At most MAX_TIMEOUTS_PER_BATCH + 1.
                timeouts: timeouts as u32,
                retried: retried as u32,
                cpu_ms: failing_cpu.as_millis() as u64,
                timeout_ms: t.config.timeout_ms,
                total_ms: (timeouts <= MAX_TIMEOUTS_PER_BATCH && failing_cpu <= cpu_cap)
                    .then_some(total.as_millis() as u64),
                of: batch.origins.len(),
                rebuild_ms: BUILD_CPU.get().saturating_sub(built_before).as_millis() as u64,
                failing: (failures.iter().take(5))
                    .filter_map(|f| metas.get(batch.origins[f.row] as usize))
                    .map(|m| format!("{}/{}@{}", m.topic, m.partition, m.offset))
                    .collect(),
                first: (failures.iter().find(|f| f.kind != FailureKind::Timeout)).map(|f| {
                    t.shown(format!("{}: {}", f.kind.as_str(), f.reason), 300)
                        .into()
                }),
            });
        }
    }
    Ok((WireBatch::concat(outputs), failures, filtered))
}

/// Checks an output against the batch contract: one outcome per input, as many rows as the
/// outcomes announce, known shapes, and as many values as those shapes need.
fn check_output(output: &Output, inputs: usize) -> Result<(), String> {
    let Output { outcomes, rows } = output;
    if outcomes.len() != inputs {
        return Err(format!(
            "returned {} for {}",
            counted(outcomes.len(), "outcome"),
            counted(inputs, "input row")
        ));
    }
    let emitted: u64 = outcomes
        .iter()
        .map(|o| {
            if let Outcome::Emit(k) = o {
                u64::from(*k)
            } else {
                0
            }
        })
        .sum();
    if emitted != rows.shapes.len() as u64 {
        return Err(format!(
            "outcomes announce {} but {} returned",
            counted(emitted as usize, "row"),
            match rows.shapes.len() {
                1 => "1 was".to_owned(),
                n => format!("{n} were"),
            }
        ));
    }
    let mut wanted = 0usize;
    for &shape in &rows.shapes {
        let schema = rows
            .schemas
            .get(shape as usize)
            .ok_or_else(|| format!("row refers to unknown shape {shape}"))?;
        wanted += schema.len();
    }
    if wanted != rows.values.types.len() {
        return Err(format!(
            "rows need {} but {} returned",
            counted(wanted, "value"),
            match rows.values.types.len() {
                1 => "1 was".to_owned(),
                n => format!("{n} were"),
            }
        ));
    }
    rows.values.check()
}

/// Turns a checked output into the next batch and the failed inputs. Outcome `o` answers input
/// row `first + o` of `input`; emitted rows are tagged with that row's origin, and a `keep`
/// outcome takes the input row as it is. Guest errors fail their input; so does emitting more
/// than `max_rows` rows, whose rows are then discarded. Also counts inputs filtered out.
fn split(
    output: Output,
    input: &WireBatch,
    first: usize,
    max_rows: u32,
) -> (WireBatch, Vec<Failure>, u64) {
    let Output { outcomes, rows } = output;
    let mut emitted_origins = Vec::with_capacity(rows.shapes.len());
    let mut failures = Vec::new();
    let mut discard = false;
    let mut filtered = 0u64;
    let mut kept = 0usize;
    for (o, outcome) in outcomes.iter().enumerate() {
        let j = first + o;
        match outcome {
            Outcome::Emit(0) => filtered += 1,
            Outcome::Keep => kept += 1,
            &Outcome::Emit(k) if k <= max_rows => {
                emitted_origins.extend(std::iter::repeat_n(input.origins[j], k as usize));
            }
            &Outcome::Emit(k) => {
                discard = true;
                emitted_origins.extend(std::iter::repeat_n(DISCARD, k as usize));
                failures.push(Failure::host(
                    j,
                    FailureKind::OutputLimit,
                    format!("emitted {k} rows for one record (max_rows_per_record is {max_rows})"),
                ));
            }
            Outcome::Error(e) => {
                failures.push(Failure {
                    row: j,
                    kind: FailureKind::Guest,
                    reason: bindings::describe(e),
                    error: Some(bindings::fault(e)),
                });
            }
        }
    }
    let emitted = WireBatch::from_wire(rows, emitted_origins);
    let next = if kept == 0 {
        emitted
    } else if outcomes.len() == 1 {
        // One row of a batch being isolated, kept: that row alone, not the batch's every shape.
        input.one_row(first)
    } else if first == 0 && kept == input.origins.len() {
        // Every row of the batch passed through untouched (a passthrough, or a filter that kept
        // all).
        input.clone()
    } else {
        // Interleave kept input rows and emitted rows in outcome order.
        let mut next = WireBatch {
            wire: Rows {
                schemas: input.wire.schemas.clone(),
                ..Rows::default()
            },
            ..WireBatch::default()
        };
        let shapes = next.merge_schemas(&emitted.wire.schemas);
        // Consecutive kept rows, and consecutive emitted rows, are contiguous in their batch:
        // each run is copied in one go.
        let mut kept = 0..0;
        let mut fresh = 0..0;
        let mut e = 0;
        for (o, outcome) in outcomes.iter().enumerate() {
            let j = first + o;
            match *outcome {
                Outcome::Keep => {
                    next.push_rows_from(&emitted, std::mem::take(&mut fresh), |k| {
                        shapes[k as usize]
                    });
                    if kept.end != j {
                        next.push_rows_from(input, std::mem::replace(&mut kept, j..j), same_shape);
                    }
                    kept.end = j + 1;
                }
                Outcome::Emit(0) | Outcome::Error(_) => {}
                Outcome::Emit(k) => {
                    next.push_rows_from(input, std::mem::take(&mut kept), same_shape);
                    if fresh.is_empty() {
                        fresh = e..e;
                    }
                    e += k as usize;
                    fresh.end = e;
                }
            }
        }
        next.push_rows_from(input, kept, same_shape);
        next.push_rows_from(&emitted, fresh, |k| shapes[k as usize]);
        next
    };
    let next = if discard {
        next.retain(|o| o != DISCARD)
    } else {
        next
    };
    (next, failures, filtered)
}

/// The calling thread's instance of `t`, built now if there is none (after a trap). An instance
/// is otherwise kept for the whole run, so that what a guest keeps between batches (a cache, a
/// window of recent keys) lasts as long as it can: the memory it holds, which a wasm memory
/// never gives back, is bounded by `memory_mb`, and one that reaches it is rebuilt then (see
/// `run_transform`).
fn ready<'a>(
    shared: &Shared,
    t: &Loaded,
    slot: &'a mut Option<Slot>,
) -> Result<&'a mut Slot, TransformError> {
    match slot {
        Some(s) => Ok(s),
        None => {
            let before = thread_cpu_time();
            let built = Slot::new(&shared.engine, shared.fuel_enabled, t);
            BUILD_CPU.set(BUILD_CPU.get() + thread_cpu_time().saturating_sub(before));
            Ok(slot.insert(built.map_err(|e| TransformError::Instantiate {
                transform: t.name.to_string(),
                reason: t.shown(e.to_string(), MAX_REASON),
            })?))
        }
    }
}

thread_local! {
    /// CPU time this thread has spent building instances and running their `init`: the host's
    /// cost, which [`isolate`] does not charge to a row whose failure made a rebuild necessary.
    static BUILD_CPU: std::cell::Cell<Duration> = const { std::cell::Cell::new(Duration::ZERO) };
    /// Calls on this thread that timed out on a used instance and were run again on a fresh one:
    /// each cost a limit of CPU time, which [`isolate`] counts with the timeouts it caps.
    static STALE_TIMEOUTS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// One batch call on the calling thread's instance (built on demand). The outer error is fatal (no
/// instance could be built); the inner one is a trap or limit, after which the instance is gone.
/// `pass`: why the call runs (its debug output says so).
fn call(
    shared: &Shared,
    t: &Loaded,
    slot: &mut Option<Slot>,
    input: &Rows,
    origins: &[u32],
    metas: &Metas,
    pass: Pass,
) -> Result<Result<Output, (FailureKind, String)>, TransformError> {
    let s = ready(shared, t, slot)?;
    let (fresh, rows_seen) = (s.rows_seen == 0, s.rows_seen);
    s.rows_seen += origins.len() as u64;
    let state = s.store.data_mut();
    state.metas = Arc::clone(metas);
    state.origins.clear();
    state.origins.extend_from_slice(origins);
    arm(&mut s.store, &t.config, shared.fuel_enabled, pass);
    let start = Instant::now();
    let result = s
        .guest
        .sluice_transform_transformer()
        .call_transform_batch(&mut s.store, input);
    t.stats.observe_latency(start.elapsed());
    // `meta` answers only during the call (the WIT says so), and the caller frees the metadata
    // (see `dispatch`) whether or not the batch fails, not a batch later.
    let state = s.store.data_mut();
    state.metas = Metas::default();
    state.origins.clear();
    TransformStats::add(&t.stats.invocations, 1);
    count_fuel(&s.store, t);
    match result {
        Ok(output) => {
            let size = peak_size(&output.rows);
            if size > output_rows_limit(&t.config) {
                // Not a trap, but the instance has seen the batch (see `run_transform`).
                discard(t, slot);
                return Ok(Err((FailureKind::Memory, too_much_output(&t.config, size))));
            }
            Ok(Ok(output))
        }
        Err(e) => {
            let failure = classify(&e, s.store.data(), &t.config);
            // The instance may be mid-update and is poisoned after a trap: never reuse it.
            discard(t, slot);
            // Handles leaked by the instance's earlier calls fill its table too, and memory
            // its earlier calls grew (a wasm memory never shrinks) counts against the cap: a call
            // that finds either full is only to blame if it does so on a fresh instance. So is
            // a row run alone that traps (or runs out of fuel) after others on the same instance:
            // the state they left may be what failed, and so may a row that hangs (a loop on
            // state an earlier row broke). (A batch of more rows is run again a row at a time
            // anyway.)
            let stale = match failure.0 {
                // Not what a call returned: a fresh instance would return as much, after the
                // host copied it all again.
                FailureKind::Memory => !is_copy_exhausted(&e),
                FailureKind::Trap | FailureKind::Fuel | FailureKind::Timeout => origins.len() == 1,
                _ => is_handles_full(&e),
            };
            if !fresh && stale {
                if failure.0 == FailureKind::Timeout {
                    STALE_TIMEOUTS.set(STALE_TIMEOUTS.get() + 1);
                }
                let again = call(shared, t, slot, input, origins, metas, Pass::Fresh)?;
                // The one way an instance that did nothing wrong is lost mid-run: say so once, as
                // what it kept between batches goes with it. Only when the call then fits on a
                // fresh instance: else the rows needed the memory themselves, and the warning
                // would blame the instance (and be spent) for one poison record.
                // A warning: a transform keeping state (a dedupe window) has just lost it, and
                // will again each time the new instance reaches the limit.
                if failure.0 == FailureKind::Memory
                    && again.is_ok()
                    && !t.memory_rebuild_noted.swap(true, Relaxed)
                {
                    tracing::warn!(
                        transform = %t.name,
                        "transform {}'s instance reached its memory limit ({} MiB) after {} \
                         and was rebuilt, and the call run again on the new one; what the old \
                         one kept between batches is gone (a wasm memory never shrinks: raise \
                         memory_mb to keep instances longer)",
                        t.name,
                        t.config.memory_mb,
                        crate::counted(rows_seen, "row")
                    );
                }
                return Ok(again);
            }
            Ok(Err(failure))
        }
    }
}

/// Throws away `t`'s instance in `slot`, if it has one, counting it: the state it held is lost,
/// and the next call builds another.
fn discard(t: &Loaded, slot: &mut Option<Slot>) {
    if slot.take().is_some() {
        t.stats.instance_restarts.fetch_add(1, Relaxed);
    }
}

/// The metadata of a batch's records, shared with the instances' `context.meta` import.
type Metas = Arc<Vec<RecordMeta>>;

/// Where one row's values start: its index among all values and in each payload lane.
#[derive(Debug, Clone, Copy, Default)]
struct Cursor {
    value: usize,
    int: usize,
    float: usize,
    text: usize,
}

// Generated types cannot derive it, so clippy's suggestion does not apply.
#[allow(clippy::derivable_impls)]
impl Default for Values {
    fn default() -> Values {
        Values {
            types: Vec::new(),
            ints: Vec::new(),
            floats: Vec::new(),
            text: String::new(),
            text_ends: Vec::new(),
        }
    }
}

#[allow(clippy::derivable_impls)]
impl Default for Rows {
    fn default() -> Rows {
        Rows {
            schemas: Vec::new(),
            shapes: Vec::new(),
            values: Values::default(),
        }
    }
}

impl Values {
    /// The cursor just past the last value.
    fn end(&self) -> Cursor {
        Cursor {
            value: self.types.len(),
            int: self.ints.len(),
            float: self.floats.len(),
            text: self.text_ends.len(),
        }
    }

    /// Appends a host value (strings are copied into `text`).
    fn push(&mut self, v: &Value) {
        let ty = match v {
            Value::Null => WireType::Null,
            Value::Bool(b) => {
                self.ints.push(i64::from(*b));
                WireType::Bool
            }
            Value::Int(i) => {
                self.ints.push(*i);
                WireType::Int
            }
            Value::Timestamp(t) => {
                self.ints.push(*t);
                WireType::Timestamp
            }
            Value::Float(f) => {
                self.floats.push(*f);
                WireType::Float
            }
            Value::String(s) => {
                self.push_text(s);
                WireType::String
            }
            Value::Json(s) => {
                self.push_text(s);
                WireType::Json
            }
        };
        self.types.push(ty as u8);
    }

    fn push_text(&mut self, s: &str) {
        self.text.push_str(s);
        self.text_ends.push(text_offset(self.text.len()));
    }

    /// Moves `c` past one value of type `ty`.
    fn step(c: &mut Cursor, ty: WireType) {
        c.value += 1;
        match ty {
            WireType::Null => {}
            WireType::Bool | WireType::Int | WireType::Timestamp => c.int += 1,
            WireType::Float => c.float += 1,
            WireType::String | WireType::Json => c.text += 1,
        }
    }

    /// The value at `c` as a host value, moving `c` past it. Only called on checked batches.
    fn read(&self, c: &mut Cursor) -> Value {
        let ty = wire_type(self.types[c.value]);
        let at = *c;
        Values::step(c, ty);
        match ty {
            WireType::Null => Value::Null,
            WireType::Bool => Value::Bool(self.ints[at.int] != 0),
            WireType::Int => Value::Int(self.ints[at.int]),
            WireType::Timestamp => Value::Timestamp(self.ints[at.int]),
            WireType::Float => Value::Float(self.floats[at.float]),
            WireType::String => Value::String(self.text_at(at.text).to_owned()),
            WireType::Json => Value::Json(self.text_at(at.text).to_owned()),
        }
    }

    fn text_at(&self, i: usize) -> &str {
        let start = if i == 0 {
            0
        } else {
            self.text_ends[i - 1] as usize
        };
        &self.text[start..self.text_ends[i] as usize]
    }

    /// `row` rewritten to hold the values from `c` under `names`, reusing its field vector,
    /// the names it already has and its string buffers.
    fn overwrite(&self, mut row: Row, names: &[Name], mut c: Cursor) -> Row {
        row.fields.truncate(names.len());
        for (p, name) in names.iter().enumerate() {
            let Some(f) = row.fields.get_mut(p) else {
                row.fields.push(Field {
                    name: Name::clone(name),
                    value: self.read(&mut c),
                });
                continue;
            };
            if !Arc::ptr_eq(&f.name, name) && f.name != *name {
                f.name = Name::clone(name);
            }
            let ty = wire_type(self.types[c.value]);
            match (&mut f.value, ty) {
                (Value::String(s), WireType::String) | (Value::Json(s), WireType::Json) => {
                    s.clear();
                    s.push_str(self.text_at(c.text));
                    Values::step(&mut c, ty);
                }
                (v, _) => *v = self.read(&mut c),
            }
        }
        row
    }

    /// Checks that the lanes hold exactly the payloads `types` calls for and that every text
    /// slice is valid.
    fn check(&self) -> Result<(), String> {
        let mut end = Cursor::default();
        for &t in &self.types {
            if t > WireType::Json as u8 {
                return Err(format!("unknown value type {t}"));
            }
            if t == WireType::Bool as u8
                && let Some(&b) = self.ints.get(end.int)
                && b != 0
                && b != 1
            {
                return Err(format!("a bool value is {b}, not 0 or 1"));
            }
            Values::step(&mut end, wire_type(t));
        }
        if (end.int, end.float, end.text)
            != (self.ints.len(), self.floats.len(), self.text_ends.len())
        {
            return Err(format!(
                "value payloads do not match their types ({} ints, {} floats, {} texts expected; got {}, {}, {})",
                end.int,
                end.float,
                end.text,
                self.ints.len(),
                self.floats.len(),
                self.text_ends.len()
            ));
        }
        let mut start = 0usize;
        for &e in &self.text_ends {
            let e = e as usize;
            if e < start || e > self.text.len() || !self.text.is_char_boundary(e) {
                return Err(format!(
                    "text end {e} is out of order or not on a character boundary"
                ));
            }
            start = e;
        }
        Ok(())
    }
}

/// The shape mapping of rows copied between batches with the same schemas.
fn same_shape(k: u32) -> u32 {
    k
}

/// The `value-type` whose case index is `t`; only called on checked values.
fn wire_type(t: u8) -> WireType {
    match t {
        1 => WireType::Bool,
        2 => WireType::Int,
        3 => WireType::Float,
        4 => WireType::String,
        5 => WireType::Timestamp,
        6 => WireType::Json,
        _ => WireType::Null,
    }
}

/// Rows in the positional wire layout, each tagged with the index of the input record it came
/// from. This is what crosses the boundary, and what flows between the transforms of a chain.
#[derive(Default, Clone)]
struct WireBatch {
    wire: Rows,
    /// Where each row's values start.
    cursors: Vec<Cursor>,
    origins: Vec<u32>,
    /// Whether each row is still exactly the input row of its origin (no transform has emitted
    /// it anew), so the host row can be handed back instead of rebuilt.
    untouched: Vec<bool>,
}

impl WireBatch {
    /// Host rows into the wire layout (names interned per shape), row `i` tagged with origin
    /// `i`.
    fn from_rows<'a>(rows: impl ExactSizeIterator<Item = &'a Row>) -> WireBatch {
        let n = rows.len();
        let mut rows = rows.peekable();
        let width = rows.peek().map_or(0, |r| r.fields.len());
        let mut b = WireBatch {
            wire: Rows {
                schemas: Vec::new(),
                shapes: Vec::with_capacity(n),
                values: Values {
                    types: Vec::with_capacity(n * width),
                    ints: Vec::with_capacity(n * width),
                    floats: Vec::with_capacity(n),
                    text: String::new(),
                    text_ends: Vec::with_capacity(n),
                },
            },
            cursors: Vec::with_capacity(n),
            origins: Vec::with_capacity(n),
            untouched: vec![true; n],
        };
        let mut names: Vec<Vec<Name>> = Vec::new();
        let mut last = 0usize;
        for (origin, row) in rows.enumerate() {
            let same = |names: &[Name]| {
                names.len() == row.fields.len()
                    && names
                        .iter()
                        .zip(&row.fields)
                        .all(|(a, f)| Arc::ptr_eq(a, &f.name) || *a == f.name)
            };
            let shape = if names.get(last).is_some_and(|n| same(n)) {
                last
            } else if let Some(i) = names.iter().position(|n| same(n)) {
                i
            } else {
                names.push(row.fields.iter().map(|f| Name::clone(&f.name)).collect());
                b.wire
                    .schemas
                    .push(row.fields.iter().map(|f| f.name.to_string()).collect());
                names.len() - 1
            };
            last = shape;
            b.wire.shapes.push(shape as u32);
            b.cursors.push(b.wire.values.end());
            b.origins.push(origin as u32);
            for f in &row.fields {
                b.wire.values.push(&f.value);
            }
            if origin == 0 {
                // Rows of a batch are alike: size the text lane from the first one, within
                // reason (one huge first row must not reserve gigabytes for the rest).
                let text = b.wire.values.text.len();
                b.wire
                    .values
                    .text
                    .reserve(text.saturating_mul(n + n / 8).min(MAX_TEXT_RESERVE));
            }
        }
        b
    }

    /// A checked guest output as a batch.
    fn from_wire(wire: Rows, origins: Vec<u32>) -> WireBatch {
        let mut cursors = Vec::with_capacity(wire.shapes.len());
        let mut c = Cursor::default();
        for &shape in &wire.shapes {
            cursors.push(c);
            for _ in 0..wire.schemas[shape as usize].len() {
                let ty = wire_type(wire.values.types[c.value]);
                Values::step(&mut c, ty);
            }
        }
        WireBatch {
            untouched: vec![false; origins.len()],
            wire,
            cursors,
            origins,
        }
    }

    /// A copy of row `j` as a host row (for dead letters).
    fn row(&self, j: usize) -> Row {
        let names = &self.wire.schemas[self.wire.shapes[j] as usize];
        let mut c = self.cursors[j];
        let fields = names.iter().map(|name| Field {
            name: Name::from(name.as_str()),
            value: self.wire.values.read(&mut c),
        });
        Row {
            fields: fields.collect(),
        }
    }

    /// Appends rows `rows` of `src`, each with its shape mapped through `shape` (from an index
    /// in `src`'s schemas to one in this batch's).
    fn push_rows_from(
        &mut self,
        src: &WireBatch,
        rows: std::ops::Range<usize>,
        shape: impl Fn(u32) -> u32,
    ) {
        if rows.is_empty() {
            return;
        }
        // A batch's rows are contiguous in every lane, so a run of them is one slice of each.
        let from = src.cursors[rows.start];
        let to = src
            .cursors
            .get(rows.end)
            .copied()
            .unwrap_or_else(|| src.wire.values.end());
        let base = self.wire.values.end();
        for j in rows.clone() {
            self.wire.shapes.push(shape(src.wire.shapes[j]));
            let c = src.cursors[j];
            self.cursors.push(Cursor {
                value: base.value + c.value - from.value,
                int: base.int + c.int - from.int,
                float: base.float + c.float - from.float,
                text: base.text + c.text - from.text,
            });
        }
        self.origins.extend_from_slice(&src.origins[rows.clone()]);
        self.untouched.extend_from_slice(&src.untouched[rows]);
        let (v, out) = (&src.wire.values, &mut self.wire.values);
        out.types.extend_from_slice(&v.types[from.value..to.value]);
        out.ints.extend_from_slice(&v.ints[from.int..to.int]);
        out.floats
            .extend_from_slice(&v.floats[from.float..to.float]);
        let text_at = |k: usize| {
            if k == 0 {
                0
            } else {
                v.text_ends[k - 1] as usize
            }
        };
        let (start, end) = (text_at(from.text), text_at(to.text));
        let shift = out.text.len() as i64 - start as i64;
        out.text.push_str(&v.text[start..end]);
        out.text_ends.extend(
            v.text_ends[from.text..to.text]
                .iter()
                .map(|&e| text_offset((i64::from(e) + shift) as usize)),
        );
    }

    /// The rows whose origin passes `keep` (a copy: only used when records fail).
    fn retain(self, keep: impl Fn(u32) -> bool) -> WireBatch {
        let mut out = WireBatch {
            wire: Rows {
                schemas: self.wire.schemas.clone(),
                ..Rows::default()
            },
            ..WireBatch::default()
        };
        let mut run = 0..0;
        for j in 0..self.origins.len() {
            if !keep(self.origins[j]) {
                continue;
            }
            if run.end != j {
                out.push_rows_from(&self, std::mem::replace(&mut run, j..j), same_shape);
            }
            run.end = j + 1;
        }
        out.push_rows_from(&self, run, same_shape);
        out
    }

    /// Adds the shapes of `schemas` this batch lacks; returns each one's index here.
    fn merge_schemas(&mut self, schemas: &[Vec<String>]) -> Vec<u32> {
        let mine = &mut self.wire.schemas;
        // The usual case, a shape or two: a scan beats hashing every name.
        if schemas.len() <= 8 {
            return schemas
                .iter()
                .map(|schema| match mine.iter().position(|s| s == schema) {
                    Some(i) => i as u32,
                    None => {
                        mine.push(schema.clone());
                        (mine.len() - 1) as u32
                    }
                })
                .collect();
        }
        // Rows of many shapes (JSON with varying keys): linear in the shapes, not quadratic.
        let base = mine.len();
        let mut index: HashMap<&[String], u32> = mine
            .iter()
            .enumerate()
            .map(|(i, s)| (s.as_slice(), i as u32))
            .collect();
        let mut added = Vec::new();
        let map = schemas
            .iter()
            .map(|schema| {
                *index.entry(schema.as_slice()).or_insert_with(|| {
                    added.push(schema);
                    (base + added.len() - 1) as u32
                })
            })
            .collect();
        drop(index);
        mine.extend(added.into_iter().cloned());
        map
    }

    /// Appends another batch, its shapes merged into this one's through `index` (every schema
    /// of this batch and its position), which is kept up to date: appending many small batches
    /// (isolating a batch a row at a time) costs time in their rows, not in the shapes so far.
    fn append_indexed(&mut self, other: WireBatch, index: &mut HashMap<Vec<String>, u32>) {
        let map: Vec<u32> = (other.wire.schemas.iter())
            .map(|schema| match index.get(schema) {
                Some(&i) => i,
                None => {
                    let i = self.wire.schemas.len() as u32;
                    self.wire.schemas.push(schema.clone());
                    index.insert(schema.clone(), i);
                    i
                }
            })
            .collect();
        self.push_rows_from(&other, 0..other.origins.len(), |k| map[k as usize]);
    }

    /// `parts` one after the other, in a layout reserved at its full size first: each part is
    /// freed once copied, so the host holds the text about once, not the parts and a copy.
    fn concat(parts: Vec<WireBatch>) -> WireBatch {
        let sum = |lane: fn(&WireBatch) -> usize| parts.iter().map(lane).sum::<usize>();
        let mut all = WireBatch::default();
        all.wire.shapes.reserve_exact(sum(|p| p.wire.shapes.len()));
        all.cursors.reserve_exact(sum(|p| p.cursors.len()));
        all.origins.reserve_exact(sum(|p| p.origins.len()));
        all.untouched.reserve_exact(sum(|p| p.untouched.len()));
        let v = &mut all.wire.values;
        v.types.reserve_exact(sum(|p| p.wire.values.types.len()));
        v.ints.reserve_exact(sum(|p| p.wire.values.ints.len()));
        v.floats.reserve_exact(sum(|p| p.wire.values.floats.len()));
        v.text.reserve_exact(sum(|p| p.wire.values.text.len()));
        v.text_ends
            .reserve_exact(sum(|p| p.wire.values.text_ends.len()));
        let mut shapes = HashMap::new();
        for part in parts {
            all.append_indexed(part, &mut shapes);
        }
        all
    }

    /// Row `j` alone, with only its own shape.
    fn one_row(&self, j: usize) -> WireBatch {
        let mut one = WireBatch {
            wire: Rows {
                schemas: vec![self.wire.schemas[self.wire.shapes[j] as usize].clone()],
                ..Rows::default()
            },
            ..WireBatch::default()
        };
        one.push_rows_from(self, j..j + 1, |_| 0);
        one
    }

    /// One outcome per input record (`inputs` are the chunk's input rows, in order): the host
    /// rows each one emitted, or its entry in `failed` (whose rows are no longer in this batch).
    /// A record that came out as one row gets its input row back: as it was if no transform
    /// touched it, else overwritten with the new values.
    fn into_outcomes(
        self,
        inputs: Vec<Row>,
        mut failed: BTreeMap<usize, RecordOutcome>,
    ) -> Vec<RecordOutcome> {
        // Output names take the input rows' own `Name`s where they match, so that a row
        // written over its input keeps its names without a refcount change.
        let known: Vec<&Name> = inputs
            .first()
            .map(|r| r.fields.iter().map(|f| &f.name).collect())
            .unwrap_or_default();
        let names: Vec<Vec<Name>> = self
            .wire
            .schemas
            .iter()
            .map(|s| {
                s.iter()
                    .map(|n| match known.iter().find(|k| &****k == n.as_str()) {
                        Some(k) => Name::clone(k),
                        None => Name::from(n.as_str()),
                    })
                    .collect()
            })
            .collect();
        let values = &self.wire.values;
        let mut j = 0;
        let mut outcomes = Vec::with_capacity(inputs.len());
        for (i, input) in inputs.into_iter().enumerate() {
            if let Some(f) = failed.remove(&i) {
                outcomes.push(f);
                continue;
            }
            let k = self.origins[j..]
                .iter()
                .take_while(|&&o| o as usize == i)
                .count();
            let names_of = |j: usize| &names[self.wire.shapes[j] as usize];
            let rows = if k == 1 && self.untouched[j] {
                vec![input]
            } else if k == 1 {
                vec![values.overwrite(input, names_of(j), self.cursors[j])]
            } else {
                (j..j + k)
                    .map(|j| {
                        let mut c = self.cursors[j];
                        let fields = names_of(j).iter().map(|name| Field {
                            name: Name::clone(name),
                            value: values.read(&mut c),
                        });
                        Row {
                            fields: fields.collect(),
                        }
                    })
                    .collect()
            };
            j += k;
            outcomes.push(RecordOutcome::Emitted(rows));
        }
        outcomes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The host's bounds on what a call's output costs grow with `memory_mb`, but stop at a
    /// ceiling: at 4096 MiB they would be 16 GiB copied and 64 GiB of rows, per worker.
    #[test]
    fn output_bounds_follow_memory_mb_up_to_a_ceiling() {
        let config = |memory_mb| TransformConfig {
            memory_mb,
            ..TransformConfig::new("t.wasm")
        };
        let mib = |bytes: u64| bytes >> 20;
        let default = config(64);
        assert_eq!(mib(output_copy_limit(&default)), 256);
        assert_eq!(mib(output_rows_limit(&default)), 1024);
        assert_eq!(isolated_output_mib(64), 4096);
        let large = config(4096);
        assert_eq!(mib(output_copy_limit(&large)), 1024);
        assert_eq!(mib(output_rows_limit(&large)), 4096);
        assert_eq!(isolated_output_mib(4096), 8192);
    }

    #[test]
    fn a_cache_directory_that_cannot_be_made_only_costs_the_cache() {
        let file = std::env::temp_dir().join(format!("sluice-not-a-dir-{}", std::process::id()));
        std::fs::write(&file, b"").unwrap();
        // A directory below a regular file cannot be created.
        let cache = open_cache(Some(&file.join("wasm")));
        std::fs::remove_file(&file).unwrap();
        // No cache, and no error: `load_one` then compiles without one.
        assert!(cache.is_none());
    }

    fn row(id: i64, name: &str) -> Row {
        let mut r = Row::with_capacity(2);
        r.push("id", Value::Int(id));
        r.push("name", Value::String(name.to_owned()));
        r
    }

    /// `keep` outcomes take the input row as it was, interleaved in outcome order with rows
    /// emitted in another shape; filtered and failed inputs contribute nothing.
    #[test]
    fn split_interleaves_kept_and_emitted_rows() {
        let inputs: Vec<Row> = (1..=5).map(|i| row(i, &format!("r{i}"))).collect();
        let input = WireBatch::from_rows(inputs.iter());
        let mut emitted = Values::default();
        for v in [Value::Float(2.5), Value::Float(3.5)] {
            emitted.push(&v);
        }
        let output = Output {
            outcomes: vec![
                Outcome::Keep,
                Outcome::Emit(2),
                Outcome::Emit(0),
                Outcome::Error(GuestError::Other("bad".into())),
                Outcome::Keep,
            ],
            rows: Rows {
                schemas: vec![vec!["x".into()]],
                shapes: vec![0, 0],
                values: emitted,
            },
        };
        check_output(&output, 5).unwrap();
        let (next, failures, filtered) = split(output, &input, 0, 10);
        assert_eq!(filtered, 1);
        assert_eq!(
            failures,
            vec![Failure {
                row: 3,
                kind: FailureKind::Guest,
                reason: "bad".to_owned(),
                error: Some(GuestFault {
                    case: "other",
                    field: None
                }),
            }],
            "the error outcome fails input 3"
        );
        assert_eq!(next.origins, vec![0, 1, 1, 4]);
        let mut failed = BTreeMap::new();
        failed.insert(
            3,
            RecordOutcome::Dropped {
                transform: "t".into(),
                kind: FailureKind::Guest,
                reason: "bad".into(),
            },
        );
        let x = |f: f64| {
            let mut r = Row::with_capacity(1);
            r.push("x", Value::Float(f));
            r
        };
        assert_eq!(next.untouched, vec![true, false, false, true]);
        let outcomes = next.into_outcomes(inputs.clone(), failed);
        assert_eq!(outcomes[0], RecordOutcome::Emitted(vec![row(1, "r1")]));
        assert_eq!(outcomes[1], RecordOutcome::Emitted(vec![x(2.5), x(3.5)]));
        assert_eq!(outcomes[2], RecordOutcome::Emitted(vec![]));
        assert!(matches!(outcomes[3], RecordOutcome::Dropped { .. }));
        assert_eq!(outcomes[4], RecordOutcome::Emitted(vec![row(5, "r5")]));
    }

    /// A guest's output may not send a bool that is neither 0 nor 1.
    #[test]
    fn outputs_with_bools_other_than_0_or_1_are_refused() {
        let bools = |ints: Vec<i64>| Values {
            types: vec![WireType::Int as u8, WireType::Bool as u8],
            ints,
            ..Values::default()
        };
        assert_eq!(bools(vec![7, 1]).check(), Ok(()));
        assert!(
            bools(vec![7, 2])
                .check()
                .unwrap_err()
                .contains("bool value is 2")
        );
    }

    /// Merging many shapes (the hashed path) maps each to one index, adding only new ones.
    #[test]
    fn merge_schemas_maps_many_shapes_once() {
        let shape = |i: usize| vec![format!("f{i}"), "common".to_owned()];
        let mut batch = WireBatch::default();
        batch.wire.schemas = (0..20).map(shape).collect();
        let other: Vec<Vec<String>> = [10, 25, 3, 25, 30, 0, 1, 2, 40]
            .into_iter()
            .map(shape)
            .collect();
        let map = batch.merge_schemas(&other);
        assert_eq!(map, vec![10, 20, 3, 20, 21, 0, 1, 2, 22]);
        assert_eq!(batch.wire.schemas.len(), 23);
        assert_eq!(batch.wire.schemas[20], shape(25));
        assert_eq!(batch.wire.schemas[21], shape(30));
        assert_eq!(batch.wire.schemas[22], shape(40));
        // The scan path agrees.
        let mut scanned = WireBatch::default();
        scanned.wire.schemas = (0..20).map(shape).collect();
        assert_eq!(scanned.merge_schemas(&other[..5]), map[..5]);
    }

    /// A transform whose settings are out of range is refused before its component is read, at
    /// its setting, however the config was made (here: not from a pipeline file).
    #[test]
    fn a_config_out_of_range_is_refused_before_loading() {
        let mut config = TransformConfig::new("not-built.wasm");
        config.memory_mb = 0;
        config.timeout_ms = 0;
        let problems = config.validate().unwrap_err();
        assert_eq!(
            problems.iter().map(|p| p.field).collect::<Vec<_>>(),
            ["memory_mb", "timeout_ms"]
        );
        match TransformChain::load(&[config], &RuntimeOptions::default()) {
            Err(e @ LoadError::Config { .. }) => {
                assert_eq!(e.setting(), Some("memory_mb"));
                assert_eq!(
                    e.to_string(),
                    "transform not-built: memory_mb must be between 1 and 4096, got 0"
                );
            }
            other => panic!("expected a config error, got {:?}", other.err()),
        }
    }

    /// The memory cap is for the instance: a memory of 50 MiB and one of 20 MiB do not fit under
    /// 64 MiB together; a growth that fails after being allowed is not counted.
    #[test]
    fn memory_cap_counts_every_memory_of_an_instance() {
        let mib = 1 << 20;
        let mut cap = MemoryCap {
            limit_bytes: 64 * mib,
            used_bytes: 0,
            pending: (0, 0),
            hit: false,
        };
        assert!(cap.memory_growing(0, 40 * mib, None).unwrap());
        assert!(cap.memory_growing(40 * mib, 60 * mib, None).unwrap());
        cap.memory_grow_failed(wasmtime::Error::msg("refused"))
            .unwrap();
        assert!(cap.memory_growing(40 * mib, 50 * mib, None).unwrap());
        assert!(!cap.hit);
        assert!(cap.memory_growing(0, 20 * mib, None).is_err());
        assert!(cap.hit);
    }

    /// The benchmarks' native chain: each step sees what the previous one left, and the rows
    /// come back per input record like `process_blocking`'s.
    #[test]
    fn process_native_chains_steps_like_the_runtime() {
        let batch: Vec<(RecordMeta, Row)> = (1..=4)
            .map(|i| (RecordMeta::default(), row(i, &format!("r{i}"))))
            .collect();
        let mut seen = Vec::new();
        // Keeps odd ids, filters out even ones.
        let mut odd = |rows: &Rows| Output {
            outcomes: rows
                .values
                .ints
                .iter()
                .map(|id| {
                    if id % 2 == 1 {
                        Outcome::Keep
                    } else {
                        Outcome::Emit(0)
                    }
                })
                .collect(),
            rows: Rows::default(),
        };
        // Replaces each row by its id doubled, under a new name.
        let mut double = |rows: &Rows| {
            seen.extend_from_slice(&rows.values.ints);
            let mut values = Values::default();
            for id in &rows.values.ints {
                values.push(&Value::Int(id * 2));
            }
            Output {
                outcomes: rows.shapes.iter().map(|_| Outcome::Emit(1)).collect(),
                rows: Rows {
                    schemas: vec![vec!["twice".into()]],
                    shapes: vec![0; rows.shapes.len()],
                    values,
                },
            }
        };
        let out = process_native(batch, &mut [&mut odd, &mut double]);
        assert_eq!(seen, vec![1, 3], "the second step gets only the kept rows");
        let twice = |v: i64| {
            let mut r = Row::with_capacity(1);
            r.push("twice", Value::Int(v));
            RecordOutcome::Emitted(vec![r])
        };
        let none = RecordOutcome::Emitted(vec![]);
        assert_eq!(out, vec![twice(2), none.clone(), twice(6), none]);
    }

    /// Runs of kept rows and runs of emitted rows are copied in bulk; text offsets and row
    /// cursors must come out as if each row had been copied on its own.
    #[test]
    fn split_copies_runs_of_kept_and_emitted_rows() {
        let inputs: Vec<Row> = (1..=8).map(|i| row(i, &"é".repeat(i as usize))).collect();
        let input = WireBatch::from_rows(inputs.iter());
        let mut emitted = Values::default();
        let texts = ["x", "yy", "zzz"];
        for t in texts {
            emitted.push(&Value::String(t.into()));
        }
        let output = Output {
            outcomes: vec![
                Outcome::Keep,
                Outcome::Keep,
                Outcome::Emit(1),
                Outcome::Emit(2),
                Outcome::Keep,
                Outcome::Emit(0),
                Outcome::Keep,
                Outcome::Keep,
            ],
            rows: Rows {
                schemas: vec![vec!["t".into()]],
                shapes: vec![0, 0, 0],
                values: emitted,
            },
        };
        check_output(&output, 8).unwrap();
        let (next, _, filtered) = split(output, &input, 0, 10);
        assert_eq!(filtered, 1);
        assert_eq!(next.origins, vec![0, 1, 2, 3, 3, 4, 6, 7]);
        next.wire.values.check().unwrap();
        let recomputed = WireBatch::from_wire(next.wire.clone(), next.origins.clone());
        let fields = |c: &Cursor| (c.value, c.int, c.float, c.text);
        assert_eq!(
            next.cursors.iter().map(fields).collect::<Vec<_>>(),
            recomputed.cursors.iter().map(fields).collect::<Vec<_>>()
        );
        let t = |s: &str| {
            let mut r = Row::with_capacity(1);
            r.push("t", Value::String(s.into()));
            r
        };
        // The same rows read back from the wire layout, not handed back from the inputs.
        let copies: Vec<Row> = (0..next.origins.len()).map(|j| next.row(j)).collect();
        assert_eq!(copies[5], inputs[4]);
        assert_eq!(copies[7], inputs[7]);
        assert_eq!(copies[4], t("zzz"));
        let outcomes = next.into_outcomes(inputs.clone(), BTreeMap::new());
        let want = |rows: Vec<Row>| RecordOutcome::Emitted(rows);
        assert_eq!(
            outcomes,
            vec![
                want(vec![inputs[0].clone()]),
                want(vec![inputs[1].clone()]),
                want(vec![t("x")]),
                want(vec![t("yy"), t("zzz")]),
                want(vec![inputs[4].clone()]),
                want(vec![]),
                want(vec![inputs[6].clone()]),
                want(vec![inputs[7].clone()]),
            ]
        );
    }

    /// A record that comes out as one new row gets it written over its input row: names it
    /// kept stay the same `Name`, fields it gained are added, fields it lost are gone.
    #[test]
    fn one_emitted_row_is_written_over_its_input() {
        let inputs = vec![row(1, "a"), row(2, "b")];
        let id = Name::clone(&inputs[0].fields[0].name);
        let input = WireBatch::from_rows(inputs.iter());
        let mut emitted = Values::default();
        for v in [
            Value::Int(10),
            Value::String("AA".into()),
            Value::Bool(true),
            Value::Null,
        ] {
            emitted.push(&v);
        }
        let output = Output {
            outcomes: vec![Outcome::Emit(1), Outcome::Emit(1)],
            rows: Rows {
                schemas: vec![
                    vec!["id".into(), "name".into(), "ok".into()],
                    vec!["gone".into()],
                ],
                shapes: vec![0, 1],
                values: emitted,
            },
        };
        check_output(&output, 2).unwrap();
        let (next, _, _) = split(output, &input, 0, 10);
        assert_eq!(next.untouched, vec![false, false]);
        let outcomes = next.into_outcomes(inputs, BTreeMap::new());
        let mut first = row(10, "AA");
        first.push("ok", Value::Bool(true));
        let mut second = Row::with_capacity(1);
        second.push("gone", Value::Null);
        assert_eq!(
            outcomes,
            vec![
                RecordOutcome::Emitted(vec![first]),
                RecordOutcome::Emitted(vec![second])
            ]
        );
        let RecordOutcome::Emitted(rows) = &outcomes[0] else {
            unreachable!()
        };
        assert!(Arc::ptr_eq(&rows[0].fields[0].name, &id));
    }

    /// A batch where every row is kept is the input batch again.
    #[test]
    fn split_all_kept_is_the_input() {
        let inputs: Vec<Row> = (1..=3).map(|i| row(i, "same")).collect();
        let input = WireBatch::from_rows(inputs.iter());
        let output = Output {
            outcomes: vec![Outcome::Keep; 3],
            rows: Rows::default(),
        };
        check_output(&output, 3).unwrap();
        let (next, failures, filtered) = split(output, &input, 0, 10);
        assert!(failures.is_empty());
        assert_eq!(filtered, 0);
        let outcomes = next.into_outcomes(inputs.clone(), BTreeMap::new());
        let want: Vec<RecordOutcome> = inputs
            .into_iter()
            .map(|r| RecordOutcome::Emitted(vec![r]))
            .collect();
        assert_eq!(outcomes, want);
    }
}
