//! The bulk loader: per-partition batches, staged files, and the COPY + offsets transaction.
//!
//! **Exactly once.** A batch covers the consecutive records `[first, last]` of one partition.
//! Its rows go into one file whose name is a function of (table, topic, partition, first, last)
//! only. One explicit transaction then runs `COPY INTO` from that file and replaces the
//! partition's `SLUICE_OFFSETS` row with `last + 1`; only after the commit is read back does the
//! writer report [`Durable`], and only then may the consumer commit that offset to Kafka. So the
//! warehouse, not Kafka, holds the truth: on restart the consumer seeks to
//! [`SnowflakeSink::committed_offsets`], and the writer itself drops any record below the
//! committed offset it reads for a partition, so a consumer that restarts from an older Kafka
//! offset cannot load anything twice.
//!
//! **Another writer.** The offsets row moves only from at or below the batch's first offset
//! (`UPDATE ... WHERE NEXT_OFFSET <= first`, in the same transaction). A writer that read the
//! partition's offset before another wrote past it (the member that held the partition before a
//! rebalance, still flushing what it held when the new owner read the warehouse) finds the row
//! moved: its transaction is rolled back, and it loads only the records the other writer has not
//! (none when the row is past the batch). So each record is loaded once whoever loads it, and the
//! offsets never move backwards. On Snowflake the `UPDATE` waits for the other transaction's
//! lock on the row and then sees its commit. So that there is always a row to update (two
//! writers that each found none would each insert one), a partition's row is made before its
//! first load, outside the transaction, with `NEXT_OFFSET` -1: nothing loaded yet.
//!
//! **LOAD_SKIPPED.** COPY skips a file whose name it loaded into the table before. Since a file's
//! load and its offsets row commit together, a skipped file normally means the offsets row
//! already covers it (the same batch was loaded again, e.g. by [`SnowflakeSink::load_batch`] in
//! a test or after a lost COMMIT acknowledgement): then nothing changes and the committed offset
//! is reported. If the offsets row does *not* cover it, the table holds rows the bookkeeping does
//! not know about (offsets edited by hand, or another pipeline name writing the same table and
//! stage path); the writer refuses to guess and fails with
//! [`SinkError::LoadedWithoutOffsets`].
//!
//! **Rows that do not fit** (a field with no column under `schema_evolution: dead_letter`, a
//! value the column type cannot take, or two fields that map to one column, such as `Name` and
//! `NAME`) are sent to the dead-letter channel, and the send is awaited, before the transaction
//! that moves the offsets past them. A letter carries the Kafka message the row came from (key,
//! timestamp, headers, and the CSV file and line) when the record was handed over with
//! [`SinkHandle::record_from`]. The first letter of each kind is logged at WARN, the rest at
//! debug.
//!
//! **Errors.** When the writer stops on an error, every later call on its [`SinkHandle`] returns
//! [`SinkError::WriterFailed`] with that error's text (COPY's message, code and query id), not
//! only [`SinkError::Closed`].

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use serde_json::Value as Json;
use tokio::sync::{Mutex, mpsc, oneshot};
use tokio::task::JoinHandle;

use super::client::{
    Auth, Bind, Client, ClientConfig, KeyPair, QueryResult, RetryPolicy, Secret, SnowflakeError,
};
use super::config::{BatchConfig, CreateTable, FileFormat, SchemaEvolution, SnowflakeSinkConfig};
use super::encode::{self, ColumnKind};
use super::stage::{PutInstructions, Uploader};
use super::stats::SinkStats;
use crate::dead_letter::{DeadLetter, DeadLetterError, DeadLetterTx};
use crate::row::{RecordMeta, Row, Value, ValueType};

/// The VARIANT landing column of `format: ndjson`.
pub const LANDING_COLUMN: &str = "RECORD_CONTENT";

/// Errors of the sink.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// Talking to Snowflake failed.
    #[error(transparent)]
    Snowflake(#[from] SnowflakeError),
    /// The config is unusable.
    #[error("invalid snowflake sink config: {0}")]
    Config(String),
    /// The private key file could not be read.
    #[error("cannot read private key file {path}")]
    KeyFile {
        /// The path from the config.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The target table is missing and may not be created.
    #[error("table {table} does not exist and create_table is never")]
    TableMissing {
        /// The table.
        table: String,
    },
    /// COPY did not load the file completely.
    #[error(
        "copy of {file} failed: status {status}, {rows_loaded} of {expected} rows loaded, first error: {first_error}"
    )]
    CopyFailed {
        /// The staged file.
        file: String,
        /// COPY's status.
        status: String,
        /// Rows COPY loaded.
        rows_loaded: i64,
        /// Rows in the file.
        expected: usize,
        /// COPY's first error.
        first_error: String,
    },
    /// COPY skipped the file as already loaded, but the offsets row does not cover it.
    #[error(
        "{file} was loaded before but the offsets row of {topic}/{partition} is {committed:?}, not past {last_offset}: refusing to guess"
    )]
    LoadedWithoutOffsets {
        /// The staged file.
        file: String,
        /// Topic.
        topic: String,
        /// Partition.
        partition: i32,
        /// The stored next offset, if any.
        committed: Option<i64>,
        /// The batch's last offset.
        last_offset: i64,
    },
    /// The session was replaced (re-login) in the middle of a transaction.
    #[error("the session was replaced during a transaction")]
    SessionLost,
    /// A partition's offsets row, made before its first load, was gone when a load moved it
    /// (deleted by hand during the run).
    #[error(
        "the offsets row of {topic}/{partition} was deleted during the load: nothing was loaded; run again to load from what the warehouse holds"
    )]
    OffsetsRowGone {
        /// Topic.
        topic: String,
        /// Partition.
        partition: i32,
    },
    /// Another writer moved a partition's offsets past the start of the batch, again each time
    /// the rest of the batch was loaded (see "Another writer" in the module doc).
    #[error(
        "another writer kept loading {topic}/{partition} first (its offsets row is at {stored}, past this batch's first offset {first}): is a second pipeline with the same name running?"
    )]
    Overtaken {
        /// Topic.
        topic: String,
        /// Partition.
        partition: i32,
        /// The stored next offset.
        stored: i64,
        /// The first offset of the batch left to load.
        first: i64,
    },
    /// After COMMIT the offsets row does not read back as written.
    #[error("offsets row of {topic}/{partition} reads {found:?} after commit, expected {expected}")]
    CommitNotVisible {
        /// Topic.
        topic: String,
        /// Partition.
        partition: i32,
        /// What was read.
        found: Option<i64>,
        /// What was written.
        expected: i64,
    },
    /// Rows must be dead-lettered but there is no channel.
    #[error(
        "{count} rows do not fit table {table} and no dead-letter channel was given; first: {first}"
    )]
    NoDeadLetterChannel {
        /// Rejected rows.
        count: usize,
        /// The table.
        table: String,
        /// The first reason.
        first: String,
    },
    /// A dead letter could not be stored.
    #[error("dead letter could not be stored")]
    DeadLetter(#[from] DeadLetterError),
    /// The writer task is gone.
    #[error("the snowflake sink writer stopped")]
    Closed,
    /// The writer failed while flushing on request; the message is its error.
    #[error("the snowflake sink writer failed: {0}")]
    WriterFailed(String),
    /// A record arrived below the open batch's last offset and is not a redelivery of one it
    /// holds: the caller broke the per-partition offset order, and loading on could lose rows.
    #[error(
        "record {topic}/{partition}@{offset} arrived after offset {last_offset}: records must come in offset order per partition"
    )]
    OutOfOrder {
        /// Topic.
        topic: String,
        /// Partition.
        partition: i32,
        /// The late record's offset.
        offset: i64,
        /// The open batch's last offset.
        last_offset: i64,
    },
}

/// Connection choices that do not belong in pipeline.json.
#[derive(Debug, Clone, Default)]
pub struct ConnectOptions {
    /// Use this URL instead of `account_url` (the emulator's, see [`super::emulator::Emulator::url`]).
    pub account_url: Option<String>,
    /// Extra `SESSION_PARAMETERS` for the login.
    pub session_parameters: serde_json::Map<String, Json>,
    /// Run `CREATE DATABASE/SCHEMA IF NOT EXISTS` (the emulator starts empty; a real account's
    /// database and schema are the administrator's).
    pub create_database_and_schema: bool,
    /// Send S3 stage requests here, path style, instead of AWS (an S3-compatible endpoint or a
    /// test double).
    pub s3_endpoint: Option<String>,
    /// Retry behaviour.
    pub retry: RetryPolicy,
}

impl ConnectOptions {
    /// Options for the fakesnow emulator at `url`, with `db_path` as `FAKESNOW_DB_PATH`:
    /// `":isolated:"` is a fresh in-memory database per login; a directory keeps the data in
    /// files across server restarts (one open session per directory at a time: fakesnow cannot
    /// attach the same file twice, and frees it only once a closed session is garbage collected).
    pub fn emulator(url: String, db_path: &str) -> ConnectOptions {
        Self::emulator_db(url, Some(db_path))
    }

    /// Options for the emulator's one shared in-memory database, which every session that names
    /// no path sees (several sessions and clients of one server, e.g. in tests).
    pub fn emulator_shared(url: String) -> ConnectOptions {
        Self::emulator_db(url, None)
    }

    fn emulator_db(url: String, db_path: Option<&str>) -> ConnectOptions {
        let mut session_parameters = serde_json::Map::new();
        if let Some(p) = db_path {
            session_parameters.insert("FAKESNOW_DB_PATH".into(), Json::String(p.to_owned()));
        }
        ConnectOptions {
            account_url: Some(url),
            session_parameters,
            create_database_and_schema: true,
            ..ConnectOptions::default()
        }
    }
}

/// One consumed Kafka record's outcome, sent in offset order per partition.
#[derive(Debug, Clone, PartialEq)]
pub struct SinkRecord {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// The rows the transforms produced; may be empty (filtered or dead-lettered upstream), the
    /// offset still advances.
    pub rows: Vec<Row>,
}

/// What the pipeline sends the writer.
#[derive(Debug)]
pub enum SinkInput {
    /// A consumed record.
    Record(SinkRecord),
    /// A consumed record with everything known about the Kafka message it came from (key,
    /// timestamp, headers such as `sluice.file` / `sluice.line`), which the dead letters of its
    /// rows then carry.
    RecordFrom(RecordMeta, Vec<Row>),
    /// Partitions were revoked: drop their unflushed batches (the next owner reloads them from
    /// the committed offsets).
    Revoke(Vec<(String, i32)>),
    /// Flush every batch now and answer when done.
    Flush(oneshot::Sender<Result<(), String>>),
}

/// A partition's offset that is durable in Snowflake: commit `next_offset` to Kafka.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Durable {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// The next offset to consume.
    pub next_offset: i64,
}

/// What the writer did, returned when it ends.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SinkSummary {
    /// Files staged.
    pub files: u64,
    /// Rows loaded.
    pub rows_loaded: u64,
    /// Offsets transactions committed.
    pub commits: u64,
    /// Rows dead-lettered.
    pub rows_dead_lettered: u64,
    /// Records dropped because their offset was already committed.
    pub records_already_committed: u64,
    /// Rows not loaded because another delivery of their record is, or was: those of a partition
    /// revoked before they were loaded (its records come again, to this run or to another
    /// member of its group), and those of records the warehouse already held.
    pub rows_redelivered: u64,
}

/// Why a writer cannot take input: the error it stopped with (`failure`), or
/// [`SinkError::Closed`] when it ended without one (its task was aborted or panicked).
fn gone(failure: &OnceLock<String>) -> SinkError {
    match failure.get() {
        Some(cause) => SinkError::WriterFailed(cause.clone()),
        None => SinkError::Closed,
    }
}

/// The sending side of a running writer.
#[derive(Debug, Clone)]
pub struct SinkHandle {
    tx: mpsc::Sender<SinkInput>,
    /// The error the writer stopped with, set before its input closes, so that a send that
    /// finds the writer gone reports why rather than only that it is gone.
    failure: Arc<OnceLock<String>>,
}

impl SinkHandle {
    /// Why the writer cannot take input: the error it stopped with, or [`SinkError::Closed`]
    /// when it ended without one (its task was aborted or panicked).
    fn gone(&self) -> SinkError {
        gone(&self.failure)
    }

    /// Sends one record (waits while the writer's queue is full).
    pub async fn record(&self, record: SinkRecord) -> Result<(), SinkError> {
        self.tx
            .send(SinkInput::Record(record))
            .await
            .map_err(|_| self.gone())
    }

    /// Sends one record with the metadata of the Kafka message it came from (topic, partition
    /// and offset are taken from `meta`): rows the table cannot take are dead-lettered with its
    /// key, timestamp and headers, and with the CSV file and line the source recorded.
    pub async fn record_from(&self, meta: RecordMeta, rows: Vec<Row>) -> Result<(), SinkError> {
        self.tx
            .send(SinkInput::RecordFrom(meta, rows))
            .await
            .map_err(|_| self.gone())
    }

    /// Drops unflushed state of revoked partitions.
    pub async fn revoke(&self, partitions: Vec<(String, i32)>) -> Result<(), SinkError> {
        self.tx
            .send(SinkInput::Revoke(partitions))
            .await
            .map_err(|_| self.gone())
    }

    /// Flushes everything and waits until it is durable (or failed).
    pub async fn flush(&self) -> Result<(), SinkError> {
        self.start_flush().await?.await
    }

    /// Asks the writer to flush everything it holds, and returns what waits until that is
    /// durable (or failed): [`flush`](Self::flush) in two steps, for a caller that has other
    /// work while the loads run (committing to Kafka what each makes durable, a Ctrl-C).
    pub async fn start_flush(
        &self,
    ) -> Result<impl Future<Output = Result<(), SinkError>> + Send + 'static, SinkError> {
        let (ack, done) = oneshot::channel();
        self.tx
            .send(SinkInput::Flush(ack))
            .await
            .map_err(|_| self.gone())?;
        // Not a clone of the handle: a sender kept alive by a wait nobody finishes would keep
        // the writer from seeing its input close.
        let failure = self.failure.clone();
        Ok(async move {
            done.await
                .map_err(|_| gone(&failure))?
                .map_err(SinkError::WriterFailed)
        })
    }

    /// Ends the input; the writer flushes what it holds and its join handle returns the summary.
    pub fn close(self) {}
}

/// A batch for [`SnowflakeSink::load_batch`]: consecutive records of one partition.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// `(offset, rows)` in increasing offset order; not empty.
    pub records: Vec<(i64, Vec<Row>)>,
}

impl Batch {
    fn first_offset(&self) -> i64 {
        self.records.first().map_or(0, |r| r.0)
    }
    fn last_offset(&self) -> i64 {
        self.records.last().map_or(0, |r| r.0)
    }
    fn row_count(&self) -> usize {
        self.records.iter().map(|r| r.1.len()).sum()
    }
}

/// What [`SnowflakeSink::load_batch`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadOutcome {
    /// The partition's committed next offset afterwards.
    pub next_offset: i64,
    /// Rows COPY loaded (0 when the file was already loaded or the batch had no rows), or, when
    /// a load run again after a lost session finds its file loaded, the rows the first attempt
    /// loaded.
    pub rows_loaded: u64,
    /// The staged file's path under the stage, if there was one.
    pub file: Option<String>,
    /// COPY skipped the file because it was loaded before (and the offsets row covered it).
    pub already_loaded: bool,
    /// Rows sent to the dead-letter channel.
    pub rows_dead_lettered: u64,
    /// Rows not loaded because another writer had loaded their records (after a rebalance).
    pub rows_loaded_elsewhere: u64,
}

/// What the COPY + offsets transaction found, before its COMMIT or ROLLBACK.
#[derive(Debug, PartialEq, Eq)]
enum Body {
    /// COPY loaded this many rows and the offsets row moved to the batch's `last + 1`.
    Loaded(u64),
    /// COPY skipped the file, and the offsets row already covers the batch.
    AlreadyLoaded,
    /// Another writer had moved the offsets row past the batch's first offset.
    Overtaken,
}

/// Fully qualified, quoted names.
#[derive(Debug, Clone)]
struct Names {
    table: String,
    table_plain: String,
    stage: String,
    offsets: String,
}

#[derive(Debug, Clone)]
struct Column {
    name: String,
    kind: ColumnKind,
    type_label: String,
}

/// The table as last described; `None` = not looked at yet.
#[derive(Debug, Default)]
struct TableState {
    columns: Option<Option<Vec<Column>>>,
    /// The partitions whose offsets row this sink has made sure of (see "Another writer").
    offsets_rows: HashSet<(String, i32)>,
}

/// A connected sink. Share it as `Arc<SnowflakeSink>`; [`SnowflakeSink::spawn`] starts the writer.
#[derive(Debug)]
pub struct SnowflakeSink {
    client: Client,
    uploader: Uploader,
    names: Names,
    pipeline: String,
    create_table: CreateTable,
    evolution: SchemaEvolution,
    format: FileFormat,
    batch: BatchConfig,
    stats: Arc<SinkStats>,
    /// Serialises use of the one session: statements of other callers must not land inside the
    /// writer's transaction. Also guards the cached table description.
    session: Mutex<TableState>,
    /// A second session, logged in on first use, for [`SnowflakeSink::committed_offsets`]: read
    /// under `session`, a partition assignment (or the drain's poll) waited for the writer's
    /// whole load, upload and COPY included, which on a busy warehouse can outlast the
    /// consumer's wait for it. `None` when the emulator keeps its database in files, which it
    /// opens for one session at a time.
    reader: Option<tokio::sync::OnceCell<Client>>,
    /// Serialises the reads on `reader`: the emulator refuses a statement on a session already
    /// running one ("connection is busy", 002002), where Snowflake runs both; an assignment and
    /// the drain's poll can read at once.
    reader_turn: Mutex<()>,
    /// The dead-letter kinds already logged at WARN (each is logged once).
    warned: std::sync::Mutex<HashSet<String>>,
    /// Talking to the local fakesnow emulator (no `account_url`), not to Snowflake.
    emulated: bool,
    /// Column types declared upstream (`source.schema`), for fields a batch has only nulls for.
    type_hints: HashMap<String, ValueType>,
}

/// How long a statement the emulator failed on a conflict ([`emulator_conflict`]) is run again:
/// the other session's transaction (a PUT and a COPY through the emulator) can take seconds on a
/// loaded machine, and a run fails when its reads of the offsets do.
const EMULATOR_CONFLICT_BUDGET: Duration = Duration::from_secs(15);

/// The waits before running again statements the emulator failed on conflicts: growing to 2 s,
/// jittered so that two sessions conflicting with each other do not retry in step, for
/// [`EMULATOR_CONFLICT_BUDGET`].
#[derive(Default)]
struct Conflicts {
    first: Option<Instant>,
    waits: u32,
}

impl Conflicts {
    /// Whether there is budget left to run it again.
    fn more(&self) -> bool {
        self.first
            .is_none_or(|first| first.elapsed() < EMULATOR_CONFLICT_BUDGET)
    }

    async fn wait(&mut self) {
        self.first.get_or_insert_with(Instant::now);
        self.waits += 1;
        let cap = (50u64 << self.waits.min(6)).min(2000);
        let ms = rand::Rng::random_range(&mut rand::rng(), cap / 2..=cap);
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
}

/// Whether `e` is how the emulator fails a statement that another session's open transaction
/// conflicts with: DuckDB, under fakesnow, aborts it (fakesnow answers `Unhandled exception`),
/// where Snowflake would wait for the other's lock. Run again once that one has ended, it goes
/// through; a statement that fails so for another reason fails again. Snowflake itself answers
/// no such error, so it is told by its answer, not by `emulated` (an `account_url` may name a
/// fakesnow server).
fn emulator_conflict(e: &SnowflakeError) -> bool {
    match e {
        SnowflakeError::Server { code, message, .. } => {
            code == "261000" && message.contains("Unhandled exception")
        }
        SnowflakeError::RetriesExhausted { last, .. } => emulator_conflict(last),
        _ => false,
    }
}

/// Runs a statement outside any transaction, again after an emulator conflict
/// ([`emulator_conflict`]). A statement inside a transaction must not be run so: the conflict
/// aborted the transaction, which `load_batch_from` runs again whole.
async fn query_alone(
    client: &Client,
    sql: &str,
    binds: &[Bind],
) -> Result<QueryResult, SnowflakeError> {
    let mut conflicts = Conflicts::default();
    loop {
        match client.query(sql, binds).await {
            Err(e) if emulator_conflict(&e) && conflicts.more() => conflicts.wait().await,
            other => return other,
        }
    }
}

fn auth_from(cfg: &SnowflakeSinkConfig, emulated: bool) -> Result<Auth, SinkError> {
    let pass = cfg.private_key_passphrase.as_deref();
    if let Some(pem) = &cfg.private_key {
        return Ok(Auth::KeyPair(Arc::new(KeyPair::from_pem(pem, pass)?)));
    }
    if let Some(path) = &cfg.private_key_path {
        let pem = std::fs::read_to_string(path).map_err(|source| SinkError::KeyFile {
            path: path.clone(),
            source,
        })?;
        return Ok(Auth::KeyPair(Arc::new(KeyPair::from_pem(&pem, pass)?)));
    }
    match &cfg.password {
        Some(p) => Ok(Auth::Password(Secret(p.clone()))),
        // fakesnow checks no credentials at all.
        None if emulated => Ok(Auth::Password(Secret("fakesnow".into()))),
        None => Err(SinkError::Config(
            "no password, private_key or private_key_path".into(),
        )),
    }
}

fn is_missing_object(e: &SnowflakeError) -> bool {
    e.code() == Some("002003")
}

impl SnowflakeSink {
    /// Logs in and makes sure the stage and the offsets table exist (and, with
    /// `create_database_and_schema`, the database and schema). Reads the private key file if the
    /// config names one; reads nothing from the environment.
    pub async fn connect(
        cfg: &SnowflakeSinkConfig,
        pipeline: &str,
        opts: ConnectOptions,
    ) -> Result<SnowflakeSink, SinkError> {
        if let Err(problems) = cfg.validate() {
            let text: Vec<String> = problems
                .iter()
                .map(|p| format!("{}: {}", p.field, p.message))
                .collect();
            return Err(SinkError::Config(text.join("; ")));
        }
        let base_url = match (&opts.account_url, cfg.is_emulated()) {
            (Some(u), _) => u.trim_end_matches('/').to_owned(),
            (None, false) => cfg.account_url.trim().trim_end_matches('/').to_owned(),
            (None, true) => {
                return Err(SinkError::Config(
                    "account_url is empty: start the emulator and pass its url in ConnectOptions"
                        .into(),
                ));
            }
        };
        let database = encode::normalize_ident(&cfg.database);
        let schema = encode::normalize_ident(&cfg.schema);
        let q = |n: &str| encode::quote_ident(&encode::normalize_ident(n));
        let prefix = format!(
            "{}.{}",
            encode::quote_ident(&database),
            encode::quote_ident(&schema)
        );
        let names = Names {
            table: format!("{prefix}.{}", q(&cfg.table)),
            table_plain: encode::normalize_ident(&cfg.table),
            stage: format!("{prefix}.{}", q(&cfg.stage)),
            offsets: format!("{prefix}.{}", q(&cfg.offsets_table)),
        };
        let stats = Arc::new(SinkStats::default());
        let client_cfg = ClientConfig {
            base_url,
            account: if cfg.account.is_empty() {
                "fakesnow".into()
            } else {
                cfg.account.clone()
            },
            user: if cfg.user.is_empty() {
                "sluice".into()
            } else {
                cfg.user.clone()
            },
            auth: auth_from(cfg, opts.account_url.is_some() && cfg.is_emulated())?,
            role: cfg.role.clone(),
            warehouse: cfg.warehouse.clone(),
            database: database.clone(),
            schema: schema.clone(),
            session_parameters: opts.session_parameters.clone(),
            retry: opts.retry.clone(),
        };
        let client = Client::login(client_cfg, stats.clone()).await?;
        let emulated = opts.account_url.is_some() && cfg.is_emulated();
        let mut ddl = Vec::new();
        if opts.create_database_and_schema {
            ddl.push(format!(
                "CREATE DATABASE IF NOT EXISTS {}",
                encode::quote_ident(&database)
            ));
            ddl.push(format!("CREATE SCHEMA IF NOT EXISTS {prefix}"));
        }
        ddl.push(format!("CREATE STAGE IF NOT EXISTS {}", names.stage));
        ddl.push(format!(
            "CREATE TABLE IF NOT EXISTS {} (\"PIPELINE\" VARCHAR, \"TOPIC\" VARCHAR, \"PARTITION\" NUMBER(38,0), \"NEXT_OFFSET\" NUMBER(38,0))",
            names.offsets
        ));
        for sql in ddl {
            // Members of one pipeline starting at once make the same objects.
            query_alone(&client, &sql, &[]).await?;
        }
        let uploader = Uploader::new(
            client.http().clone(),
            opts.retry.clone(),
            stats.clone(),
            opts.s3_endpoint.clone(),
        );
        Ok(SnowflakeSink {
            client,
            uploader,
            names,
            pipeline: pipeline.to_owned(),
            create_table: cfg.create_table,
            evolution: cfg.schema_evolution,
            format: cfg.format,
            batch: cfg.batch.clone(),
            stats,
            session: Mutex::new(TableState::default()),
            reader: (!opts.session_parameters.contains_key("FAKESNOW_DB_PATH"))
                .then(tokio::sync::OnceCell::new),
            reader_turn: Mutex::new(()),
            warned: std::sync::Mutex::new(HashSet::new()),
            emulated,
            type_hints: HashMap::new(),
        })
    }

    /// Logs a row the sink sets aside: the first of each kind at WARN, the rest at DEBUG (the
    /// summary counts them and the dead letters have them all), as the transform path does.
    fn log_dead_letter(&self, kind: &str, reason: &str, origin: &RecordMeta) {
        let first = self
            .warned
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(kind.to_owned());
        let (topic, partition, offset) = (&origin.topic, origin.partition, origin.offset);
        let table = &self.names.table;
        let reason = &*crate::dead_letter::clip(reason, 1024);
        let line = origin.csv_line();
        if first {
            tracing::warn!(kind, reason, %table, %topic, partition, offset, line,
                "The Snowflake sink dead-lettered a row the table cannot take (the first of this kind; the rest are counted in the summary and logged at debug).");
        } else {
            tracing::debug!(kind, reason, %table, %topic, partition, offset, line,
                "The Snowflake sink dead-lettered a row.");
        }
    }

    /// The sink's statistics.
    pub fn stats(&self) -> Arc<SinkStats> {
        self.stats.clone()
    }

    /// The quoted, fully qualified target table, e.g. `"DB"."RAW"."EVENTS"`.
    pub fn table(&self) -> &str {
        &self.names.table
    }

    /// The quoted, fully qualified offsets table.
    pub fn offsets_table(&self) -> &str {
        &self.names.offsets
    }

    /// Runs any statement on the sink's session (serialised with the writer's transactions).
    pub async fn query(&self, sql: &str) -> Result<QueryResult, SinkError> {
        let _guard = self.session.lock().await;
        Ok(self.client.query(sql, &[]).await?)
    }

    /// Rows in the target table (0 if it does not exist yet).
    pub async fn count_rows(&self) -> Result<u64, SinkError> {
        let _guard = self.session.lock().await;
        let count = format!("SELECT COUNT(*) FROM {}", self.names.table);
        match query_alone(&self.client, &count, &[]).await {
            Ok(r) => Ok(r
                .rows
                .first()
                .and_then(|r| r.first())
                .and_then(Json::as_u64)
                .unwrap_or(0)),
            Err(e) if is_missing_object(&e) => Ok(0),
            Err(e) => Err(e.into()),
        }
    }

    /// With `create_table: never`, that the table exists: a run checks it before it starts, not at
    /// its first load, after the replay has filled the topic.
    pub async fn check_table_exists(&self) -> Result<(), SinkError> {
        if self.create_table != CreateTable::Never {
            return Ok(());
        }
        let _guard = self.session.lock().await;
        let probe = format!("SELECT 1 FROM {} LIMIT 0", self.names.table);
        match query_alone(&self.client, &probe, &[]).await {
            Ok(_) => Ok(()),
            Err(e) if is_missing_object(&e) => Err(SinkError::TableMissing {
                table: self.names.table.clone(),
            }),
            Err(e) => Err(e.into()),
        }
    }

    /// The offsets this pipeline recorded for `topic`, when they are past the start and its table
    /// does not exist; `None` otherwise. Offsets are kept per pipeline name, not per table, so a
    /// table named anew in the config (or dropped by hand) is loaded only from where the old one
    /// left off, which the caller should say before the run.
    pub async fn offsets_without_table(
        &self,
        topic: &str,
    ) -> Result<Option<HashMap<i32, i64>>, SinkError> {
        let _guard = self.session.lock().await;
        let offsets = self.read_offsets(&self.client, topic, true).await?;
        if !offsets.values().any(|&next| next > 0) {
            return Ok(None);
        }
        let probe = format!("SELECT * FROM {} LIMIT 0", self.names.table);
        match query_alone(&self.client, &probe, &[]).await {
            Ok(_) => Ok(None),
            Err(e) if is_missing_object(&e) => Ok(Some(offsets)),
            Err(e) => Err(e.into()),
        }
    }

    /// The committed next offset per partition of `topic` for this pipeline; seek there on
    /// assignment. It does not wait for a load under way: it reads what the last commit left.
    pub async fn committed_offsets(&self, topic: &str) -> Result<HashMap<i32, i64>, SinkError> {
        match &self.reader {
            Some(reader) => {
                let _turn = self.reader_turn.lock().await;
                let reader = reader
                    .get_or_try_init(|| {
                        Client::login(self.client.config().clone(), self.stats.clone())
                    })
                    .await?;
                self.read_offsets(reader, topic, true).await
            }
            None => {
                let _guard = self.session.lock().await;
                self.read_offsets(&self.client, topic, true).await
            }
        }
    }

    /// The other pipeline names that recorded loads from `topic` in this offsets table (a
    /// pipeline renamed since leaves its offsets under its old name).
    pub async fn other_pipelines(&self, topic: &str) -> Result<Vec<String>, SinkError> {
        let _guard = self.session.lock().await;
        let sql = format!(
            "SELECT DISTINCT \"PIPELINE\" FROM {} WHERE \"TOPIC\" = ? AND \"PIPELINE\" <> ? AND \"NEXT_OFFSET\" > 0 ORDER BY 1",
            self.names.offsets
        );
        let binds = [
            Bind::Text(Some(topic.to_owned())),
            Bind::Text(Some(self.pipeline.clone())),
        ];
        let r = query_alone(&self.client, &sql, &binds).await?;
        Ok((r.rows.iter())
            .filter_map(|row| Some(row.first()?.as_str()?.to_owned()))
            .collect())
    }

    /// [`Self::committed_offsets`] on `client`; on the writer's own, under `session`. `alone`:
    /// outside any transaction, so run again after an emulator conflict ([`query_alone`]). The
    /// other members' loads conflict with it on the emulator.
    async fn read_offsets(
        &self,
        client: &Client,
        topic: &str,
        alone: bool,
    ) -> Result<HashMap<i32, i64>, SinkError> {
        let sql = format!(
            "SELECT \"PARTITION\", \"NEXT_OFFSET\" FROM {} WHERE \"PIPELINE\" = ? AND \"TOPIC\" = ?",
            self.names.offsets
        );
        let binds = [
            Bind::Text(Some(self.pipeline.clone())),
            Bind::Text(Some(topic.to_owned())),
        ];
        let r = match alone {
            true => query_alone(client, &sql, &binds).await?,
            false => client.query(&sql, &binds).await?,
        };
        // -1: a row made before the partition's first load; two writers may each have made one.
        let mut offsets = HashMap::new();
        for (partition, next) in (r.rows.iter())
            .filter_map(|row| Some((row.first()?.as_i64()? as i32, row.get(1)?.as_i64()?)))
            .filter(|(_, next)| *next >= 0)
        {
            let at = offsets.entry(partition).or_insert(next);
            *at = (*at).max(next);
        }
        Ok(offsets)
    }

    /// Makes the partition's offsets row, at -1, unless it has one (see "Another writer").
    async fn make_offsets_row(&self, topic: &str, partition: i32) -> Result<(), SinkError> {
        let key = [
            Bind::Text(Some(self.pipeline.clone())),
            Bind::Text(Some(topic.to_owned())),
            Bind::Int(partition as i64),
        ];
        self.client
            .query(
                &format!(
                    "INSERT INTO {0} (\"PIPELINE\", \"TOPIC\", \"PARTITION\", \"NEXT_OFFSET\") SELECT ?, ?, ?, -1 WHERE NOT EXISTS (SELECT 1 FROM {0} WHERE \"PIPELINE\" = ? AND \"TOPIC\" = ? AND \"PARTITION\" = ?)",
                    self.names.offsets
                ),
                &[key.clone(), key].concat(),
            )
            .await?;
        Ok(())
    }

    /// This pipeline's next offset for one partition, on the writer's session (`alone`: see
    /// [`Self::read_offsets`]).
    async fn stored_offset(
        &self,
        topic: &str,
        partition: i32,
        alone: bool,
    ) -> Result<Option<i64>, SinkError> {
        Ok(self
            .read_offsets(&self.client, topic, alone)
            .await?
            .get(&partition)
            .copied())
    }

    /// Logs out (best effort).
    pub async fn close(&self) {
        if let Some(reader) = self.reader.as_ref().and_then(|r| r.get()) {
            reader.close().await;
        }
        self.client.close().await;
    }

    /// Starts the batching writer. `dead_letters` receives rows the table cannot take; without
    /// it such rows fail the writer. Returns the input handle, the stream of durable offsets
    /// (unbounded: one message per committed batch, and one per partition whose records arrive
    /// below what the warehouse already holds) and the task, which ends with a summary when the
    /// input closes, or with the first error; the stream closes when the task ends.
    pub fn spawn(
        self: Arc<Self>,
        dead_letters: Option<DeadLetterTx>,
        capacity: usize,
    ) -> (
        SinkHandle,
        mpsc::UnboundedReceiver<Durable>,
        JoinHandle<Result<SinkSummary, SinkError>>,
    ) {
        let (tx, mut rx) = mpsc::channel(capacity.max(1));
        // Unbounded on purpose: the pipeline sends to the writer's (bounded) input and takes these
        // in one loop, so a writer that waited for room here could wait on a pipeline waiting
        // for room in its input. What it holds is one message per batch committed since the
        // loop last looked, a few at most.
        let (durable_tx, durable_rx) = mpsc::unbounded_channel();
        let failure = Arc::new(OnceLock::new());
        let writer = Writer::new(self, dead_letters, durable_tx);
        let task = tokio::spawn({
            let failure = failure.clone();
            async move {
                let result = writer.run(&mut rx).await;
                if let Err(e) = &result {
                    // Before the input closes: a sender that then finds it closed reads this.
                    let _ = failure.set(crate::error_chain(e));
                }
                drop(rx);
                result
            }
        });
        (SinkHandle { tx, failure }, durable_rx, task)
    }

    async fn describe(&self, state: &mut TableState) -> Result<Option<Vec<Column>>, SinkError> {
        if let Some(cols) = &state.columns {
            return Ok(cols.clone());
        }
        let cols = match self
            .client
            .query(&format!("SELECT * FROM {} LIMIT 0", self.names.table), &[])
            .await
        {
            Ok(r) => Some(
                r.columns
                    .iter()
                    .map(|c| {
                        let kind = ColumnKind::from_rowtype(&c.type_name, c.precision, c.scale);
                        let type_label = match kind {
                            ColumnKind::Integer { digits } => format!("NUMBER({digits},0)"),
                            ColumnKind::Decimal { digits, scale } => {
                                format!("NUMBER({},{scale})", digits + scale)
                            }
                            _ => c.type_name.to_uppercase(),
                        };
                        Column {
                            name: c.name.clone(),
                            kind,
                            type_label,
                        }
                    })
                    .collect(),
            ),
            Err(e) if is_missing_object(&e) => None,
            Err(e) => return Err(e.into()),
        };
        state.columns = Some(cols.clone());
        Ok(cols)
    }

    /// The types to create a column with when every value a batch has for its field is null
    /// (`source.schema`): without one such a column is VARCHAR, and the numbers that come later
    /// land in it as text. A field that has values keeps the type of its values.
    pub fn with_type_hints(
        mut self,
        hints: impl IntoIterator<Item = (String, ValueType)>,
    ) -> SnowflakeSink {
        self.type_hints = hints.into_iter().collect();
        self
    }

    /// Field name → (column name, merged type), in first-seen order. Fields whose column names
    /// differ at most in case (`name` in one row, `NAME` in another) share one entry and one
    /// merged type: they become one column (the emulator, like DuckDB, cannot tell such names
    /// apart), and a row holding both is a reject (see [`map_row`]).
    fn batch_schema(&self, batch: &Batch) -> Vec<(String, String, ValueType)> {
        let mut out: Vec<(String, String, ValueType)> = Vec::new();
        let mut index: HashMap<String, usize> = HashMap::new();
        let mut by_field: HashMap<&str, usize> = HashMap::new();
        for (_, rows) in &batch.records {
            for row in rows {
                // A nameless field, or one named longer than Snowflake takes, cannot be a
                // column; `map_row` sets its row aside.
                let fields = row.fields.iter();
                for f in fields.filter(|f| encode::column_name_problem(&f.name).is_none()) {
                    let t = f.value.value_type();
                    let i = match by_field.get(&*f.name) {
                        Some(&i) => i,
                        None => {
                            let col = encode::normalize_ident(&f.name);
                            let i = *index.entry(col.to_ascii_uppercase()).or_insert_with(|| {
                                out.push((f.name.to_string(), col, ValueType::Null));
                                out.len() - 1
                            });
                            by_field.insert(&f.name, i);
                            i
                        }
                    };
                    out[i].2 = encode::merge_types(out[i].2, t);
                }
            }
        }
        for (field, _, t) in &mut out {
            if *t == ValueType::Null {
                *t = self
                    .type_hints
                    .get(field)
                    .copied()
                    .unwrap_or(ValueType::Null);
            }
        }
        out
    }

    /// Creates or evolves the table for `batch` and returns its columns (`None` for an empty
    /// batch against a missing table).
    async fn prepare_table(
        &self,
        state: &mut TableState,
        batch: &Batch,
    ) -> Result<Option<Vec<Column>>, SinkError> {
        let existing = self.describe(state).await?;
        if self.format == FileFormat::Ndjson {
            if existing.is_some() {
                return Ok(existing);
            }
            if self.create_table == CreateTable::Never {
                return Err(SinkError::TableMissing {
                    table: self.names.table.clone(),
                });
            }
            self.client
                .query(
                    &format!(
                        "CREATE TABLE IF NOT EXISTS {} ({} VARIANT)",
                        self.names.table,
                        encode::quote_ident(LANDING_COLUMN)
                    ),
                    &[],
                )
                .await?;
            state.columns = None;
            return self.describe(state).await;
        }
        let schema = self.batch_schema(batch);
        let Some(existing) = existing else {
            if schema.is_empty() {
                return Ok(None);
            }
            if self.create_table == CreateTable::Never {
                return Err(SinkError::TableMissing {
                    table: self.names.table.clone(),
                });
            }
            let cols: Vec<String> = schema
                .iter()
                .map(|(_, col, t)| {
                    format!(
                        "{} {}",
                        encode::quote_ident(col),
                        encode::column_type_for(*t)
                    )
                })
                .collect();
            self.client
                .query(
                    &format!(
                        "CREATE TABLE IF NOT EXISTS {} ({})",
                        self.names.table,
                        cols.join(", ")
                    ),
                    &[],
                )
                .await?;
            state.columns = None;
            return self.describe(state).await;
        };
        if self.evolution != SchemaEvolution::AddColumns {
            return Ok(Some(existing));
        }
        let mut added = false;
        let mut known: Vec<String> = existing.iter().map(|c| c.name.clone()).collect();
        for (_, col, t) in &schema {
            if find_column(&known, col).is_none() {
                self.client
                    .query(
                        &format!(
                            "ALTER TABLE {} ADD COLUMN IF NOT EXISTS {} {}",
                            self.names.table,
                            encode::quote_ident(col),
                            encode::column_type_for(*t)
                        ),
                        &[],
                    )
                    .await?;
                known.push(col.clone());
                added = true;
            }
        }
        if added {
            state.columns = None;
            return self.describe(state).await;
        }
        Ok(Some(existing))
    }

    /// Loads one batch exactly once (see the module doc) and returns what happened. The writer
    /// calls this per flush; tests call it directly to load the same batch twice.
    pub async fn load_batch(
        &self,
        batch: &Batch,
        dead_letters: Option<&DeadLetterTx>,
    ) -> Result<LoadOutcome, SinkError> {
        self.load_batch_from(batch, &[], dead_letters).await
    }

    /// [`load_batch`](Self::load_batch), with the Kafka message each record came from
    /// (`origins[i]` for `batch.records[i]`; missing or `None` when unknown), for the dead
    /// letters of rows the table cannot take.
    async fn load_batch_from(
        &self,
        batch: &Batch,
        origins: &[Option<RecordMeta>],
        dead_letters: Option<&DeadLetterTx>,
    ) -> Result<LoadOutcome, SinkError> {
        let mut state = self.session.lock().await;
        let (mut attempt, mut overtaken, mut conflicts) = (0, 0, Conflicts::default());
        let mut rest: Option<(Batch, Vec<Option<RecordMeta>>)> = None;
        let (mut elsewhere, mut letters_sent) = (0, HashSet::new());
        loop {
            let (batch, origins) = rest.as_ref().map_or((batch, origins), |(b, o)| (b, &o[..]));
            match self
                .load_batch_locked(&mut state, batch, origins, dead_letters, &mut letters_sent)
                .await
            {
                Err(
                    SinkError::SessionLost | SinkError::Snowflake(SnowflakeError::SessionReplaced),
                ) if attempt == 0 => {
                    attempt += 1;
                    state.columns = None;
                }
                // Rolled back (`load_batch_locked` returns the ROLLBACK's error when it fails).
                Err(SinkError::Snowflake(e)) if emulator_conflict(&e) && conflicts.more() => {
                    state.columns = None;
                    conflicts.wait().await;
                }
                // Bounded: a writer that keeps losing the race to another is not alone on the
                // partition by design (two pipelines of one name), and stops.
                Err(SinkError::Overtaken { stored, .. }) if overtaken < 3 => {
                    overtaken += 1;
                    let keep = batch.records.partition_point(|r| r.0 < stored);
                    elsewhere += batch.records[..keep]
                        .iter()
                        .map(|r| r.1.len() as u64)
                        .sum::<u64>();
                    tracing::warn!(
                        topic = %batch.topic,
                        partition = batch.partition,
                        "another writer loaded {}/{} up to offset {stored} (a rebalance moved the \
                         partition while this one held records of it): loading only the records \
                         from {stored} on",
                        batch.topic,
                        batch.partition
                    );
                    rest = Some((
                        Batch {
                            topic: batch.topic.clone(),
                            partition: batch.partition,
                            records: batch.records[keep..].to_vec(),
                        },
                        origins.get(keep..).unwrap_or_default().to_vec(),
                    ));
                }
                other => {
                    return other.map(|mut o| {
                        // Found loaded when run again after a lost session: most likely by the
                        // first attempt, whose COMMIT went through unacknowledged.
                        if attempt > 0 && o.already_loaded {
                            o.rows_loaded += std::mem::take(&mut o.rows_loaded_elsewhere);
                        }
                        o.rows_loaded_elsewhere += elsewhere;
                        o
                    });
                }
            }
        }
    }

    /// `letters_sent`: the rows (record offset, place in the record) an earlier attempt at this
    /// batch dead-lettered (one rolled back after a lost session, an emulator conflict, or
    /// another writer overtaking it). Those are only left out of the file; the rest of the
    /// rejects, which a table changed since can make, are sent and added.
    async fn load_batch_locked(
        &self,
        state: &mut TableState,
        batch: &Batch,
        origins: &[Option<RecordMeta>],
        dead_letters: Option<&DeadLetterTx>,
        letters_sent: &mut HashSet<(i64, usize)>,
    ) -> Result<LoadOutcome, SinkError> {
        let (first, last) = (batch.first_offset(), batch.last_offset());
        let columns = if batch.row_count() > 0 {
            self.prepare_table(state, batch).await?
        } else {
            None
        };

        // Split rows into the file and the rejects.
        let ndjson = self.format == FileFormat::Ndjson;
        let mut plain = Vec::new();
        let mut file_rows = 0usize;
        // (record index in the batch, place of the row in its record, row, reason)
        let mut rejects: Vec<(usize, usize, &Row, String)> = Vec::new();
        // A row an earlier attempt dead-lettered stays a reject, though the table may take it
        // now: it must not be both loaded and in the dead-letter topic.
        let sent_before: &HashSet<(i64, usize)> = letters_sent;
        let rows = (batch.records.iter().enumerate()).flat_map(|(index, (offset, rows))| {
            let sent = move |place: usize| sent_before.contains(&(*offset, place));
            (rows.iter().enumerate()).map(move |(place, row)| (index, place, row, sent(place)))
        });
        const SENT_BEFORE: &str = "dead-lettered by an earlier attempt at this batch";
        let mut file_columns: Vec<usize> = Vec::new();
        if let Some(columns) = &columns {
            if ndjson {
                for (index, place, row, sent) in rows {
                    if sent {
                        rejects.push((index, place, row, SENT_BEFORE.to_owned()));
                        continue;
                    }
                    encode::write_ndjson_line(&mut plain, row);
                    file_rows += 1;
                }
            } else {
                let names: Vec<String> = columns.iter().map(|c| c.name.clone()).collect();
                let mut used = vec![false; columns.len()];
                let mut accepted: Vec<(Vec<Option<usize>>, &Row)> = Vec::new();
                for (index, place, row, sent) in rows {
                    if sent {
                        rejects.push((index, place, row, SENT_BEFORE.to_owned()));
                        continue;
                    }
                    match map_row(row, columns, &names) {
                        Ok(slots) => {
                            for s in slots.iter().flatten() {
                                used[*s] = true;
                            }
                            accepted.push((slots, row));
                        }
                        Err(reason) => rejects.push((index, place, row, reason)),
                    }
                }
                file_columns = (0..columns.len()).filter(|i| used[*i]).collect();
                // fakesnow's COPY (DuckDB's CSV sniffer) cannot read a file whose first row
                // holds a carriage return inside a quoted string, and would fail this batch on
                // every retry. Only on the emulator, a row without one goes first: a table's rows
                // have no order.
                if self.emulated
                    && accepted.first().is_some_and(|(_, row)| holds_cr(row))
                    && let Some(i) = accepted.iter().position(|(_, row)| !holds_cr(row))
                {
                    accepted.swap(0, i);
                }
                // The emulator cannot COPY more than 10 listed CSV columns (see the COPY below):
                // there a file that needs more holds every column of the table, NULL where a row
                // has no value, and is copied without a list. Only on the emulator: a column
                // default, which its tables made by sluice do not have, would be NULL instead.
                if self.emulated && file_columns.len() > 10 {
                    file_columns = (0..columns.len()).collect();
                }
                let pos: HashMap<usize, usize> = file_columns
                    .iter()
                    .enumerate()
                    .map(|(p, c)| (*c, p))
                    .collect();
                let null = Value::Null;
                let mut line: Vec<&Value> = Vec::with_capacity(file_columns.len());
                for (slots, row) in &accepted {
                    line.clear();
                    line.resize(file_columns.len(), &null);
                    for (f, slot) in row.fields.iter().zip(slots) {
                        if let Some(c) = slot
                            && let Some(p) = pos.get(c)
                            && matches!(line[*p], Value::Null)
                        {
                            line[*p] = &f.value;
                        }
                    }
                    encode::write_csv_line(&mut plain, &line);
                    file_rows += 1;
                }
            }
        } else {
            // No table and nothing to create it from: every row of the batch has no fields.
            for (index, place, row, _) in rows {
                rejects.push((index, place, row, "row has no fields".to_owned()));
            }
        }

        // Dead letters are durable before the offsets move past their records.
        let sent_key = |index: usize, place: usize| (batch.records[index].0, place);
        let unsent: Vec<&(usize, usize, &Row, String)> = (rejects.iter())
            .filter(|(index, place, ..)| !letters_sent.contains(&sent_key(*index, *place)))
            .collect();
        if !unsent.is_empty() {
            let Some(dlq) = dead_letters else {
                return Err(SinkError::NoDeadLetterChannel {
                    count: unsent.len(),
                    table: self.names.table.clone(),
                    first: unsent[0].3.clone(),
                });
            };
            // All handed over before waiting for any: one broker round trip each adds up.
            let mut pending = Vec::with_capacity(unsent.len());
            for (index, _, row, reason) in unsent.iter().copied() {
                let origin = match origins.get(*index) {
                    Some(Some(meta)) => meta.clone(),
                    _ => RecordMeta {
                        topic: batch.topic.clone(),
                        partition: batch.partition,
                        offset: batch.records[*index].0,
                        ..RecordMeta::default()
                    },
                };
                let kind = "schema";
                self.log_dead_letter(kind, reason, &origin);
                pending.push(
                    dlq.enqueue(DeadLetter {
                        stage: "sink".into(),
                        kind: kind.into(),
                        reason: reason.clone(),
                        // As a transform's letters do: the file and line travel as headers of the
                        // source's messages.
                        source_file: origin
                            .header_text(crate::source::wire::HEADER_FILE)
                            .map(str::to_owned),
                        source_file_id: origin
                            .header_text(crate::source::wire::HEADER_FILE_ID)
                            .map(str::to_owned),
                        line: origin.csv_line(),
                        origin: Some(origin),
                        payload: row.to_json().to_string().into_bytes(),
                        error: None,
                    })
                    .await?,
                );
            }
            for p in pending {
                p.stored().await?;
            }
            letters_sent.extend(
                unsent
                    .iter()
                    .map(|(index, place, ..)| sent_key(*index, *place)),
            );
            self.stats
                .rows_dead_lettered
                .fetch_add(unsent.len() as u64, Ordering::Relaxed);
        }

        let dir = encode::stage_dir(&self.names.table_plain, &batch.topic, batch.partition);
        let name = encode::file_name(first, last, ndjson);
        let staged = if file_rows > 0 {
            let gz = encode::gzip(&plain);
            let started = Instant::now();
            let put = self
                .client
                .query_raw(
                    &format!(
                        "PUT 'file:///tmp/sluice/{name}' @{}/{dir} AUTO_COMPRESS=FALSE SOURCE_COMPRESSION=GZIP OVERWRITE=FALSE",
                        self.names.stage
                    ),
                    &[],
                )
                .await?;
            let put = PutInstructions::parse(&put)?;
            self.uploader.upload(&put, &name, &gz).await?;
            self.stats.put_latency.observe(started.elapsed());
            self.stats.files.fetch_add(1, Ordering::Relaxed);
            Some(format!("{dir}/{name}"))
        } else {
            None
        };

        let partition = (batch.topic.clone(), batch.partition);
        if !state.offsets_rows.contains(&partition) {
            self.make_offsets_row(&batch.topic, batch.partition).await?;
            state.offsets_rows.insert(partition);
        }

        // COPY + offsets, one transaction.
        let epoch = self.client.session_epoch().await;
        let started = Instant::now();
        self.client.query("BEGIN", &[]).await?;
        let txn = InTransaction::enter(&self.client);
        let result = self
            .transaction_body(
                batch,
                staged.as_deref(),
                file_rows,
                &file_columns,
                columns.as_deref(),
            )
            .await;
        let copied = match result {
            Ok(Body::Loaded(copied)) => copied,
            Ok(found @ (Body::AlreadyLoaded | Body::Overtaken)) => {
                let rolled_back = self.client.query("ROLLBACK", &[]).await;
                let alone = rolled_back.is_ok();
                // The COPY loaded this batch in the transaction: left open, the next BEGIN (on
                // a retry) would not start a new one, and its COMMIT would keep those rows.
                if found == Body::Overtaken {
                    rolled_back?;
                }
                // Alone only if rolled back: a transaction left open answers from its snapshot.
                let next = self
                    .stored_offset(&batch.topic, batch.partition, alone)
                    .await?
                    .unwrap_or(last + 1);
                let elsewhere = match found {
                    // Another writer loaded the batch's first records but not all: the rest are
                    // loaded again from `next` (`load_batch_from`).
                    Body::Overtaken if next <= last => {
                        return Err(SinkError::Overtaken {
                            topic: batch.topic.clone(),
                            partition: batch.partition,
                            stored: next,
                            first,
                        });
                    }
                    // COPY skipped the file: another writer loaded the same records (or this one,
                    // whose COMMIT acknowledgement a lost session took: `load_batch_from`).
                    _ => (batch.row_count() - rejects.len()) as u64,
                };
                return Ok(LoadOutcome {
                    next_offset: next,
                    rows_loaded: 0,
                    file: staged,
                    already_loaded: true,
                    rows_dead_lettered: rejects.len() as u64,
                    rows_loaded_elsewhere: elsewhere,
                });
            }
            Err(e) => {
                let rolled_back = self.client.query("ROLLBACK", &[]).await;
                // A conflict is run again (`load_batch_from`): never inside this transaction.
                if let (Err(r), SinkError::Snowflake(c)) = (rolled_back, &e)
                    && emulator_conflict(c)
                {
                    return Err(r.into());
                }
                return Err(e);
            }
        };
        if let Err(e) = self.client.query("COMMIT", &[]).await {
            // Whether it committed or not, leave no transaction open on the session: if it did
            // commit this is a no-op, and the read-back on restart tells the truth either way.
            let _ = self.client.query("ROLLBACK", &[]).await;
            return Err(e.into());
        }
        drop(txn);
        if self.client.session_epoch().await != epoch {
            return Err(SinkError::SessionLost);
        }
        // Read the commit back: fakesnow acknowledges a COMMIT of an aborted transaction, and a
        // lost acknowledgement must not count as durable either.
        let found = self
            .stored_offset(&batch.topic, batch.partition, true)
            .await?;
        // Past it: another writer loaded the partition's next records since (see "Another
        // writer").
        if found.is_none_or(|f| f <= last) {
            return Err(SinkError::CommitNotVisible {
                topic: batch.topic.clone(),
                partition: batch.partition,
                found,
                expected: last + 1,
            });
        }
        self.stats.copy_latency.observe(started.elapsed());
        self.stats.commits.fetch_add(1, Ordering::Relaxed);
        self.stats.rows_loaded.fetch_add(copied, Ordering::Relaxed);
        Ok(LoadOutcome {
            next_offset: last + 1,
            rows_loaded: copied,
            file: staged,
            already_loaded: false,
            rows_dead_lettered: rejects.len() as u64,
            rows_loaded_elsewhere: 0,
        })
    }

    /// Inside BEGIN: COPY (if there is a file), then the offsets row moved to `last + 1` from at
    /// or below `first`.
    async fn transaction_body(
        &self,
        batch: &Batch,
        staged: Option<&str>,
        file_rows: usize,
        file_columns: &[usize],
        columns: Option<&[Column]>,
    ) -> Result<Body, SinkError> {
        let (first, last) = (batch.first_offset(), batch.last_offset());
        let mut copied = 0;
        if let Some(path) = staged {
            let sql = if self.format == FileFormat::Ndjson {
                format!(
                    "COPY INTO {} FROM @{}/{path} FILE_FORMAT=(TYPE=JSON COMPRESSION=GZIP) ON_ERROR=ABORT_STATEMENT",
                    self.names.table, self.names.stage
                )
            } else {
                let cols = columns.unwrap_or_default();
                // fakesnow (0.12.1, its newest release) turns a COPY with a column list into an
                // INSERT that reads the file's columns as `column0`, `column1`, ..., but DuckDB
                // names them `column00`, `column01`, ... once a file has more than 10, so such a
                // COPY fails. A file holding every column of the table in table order loads the
                // same without the list (positionally; fakesnow then reads `SELECT *`). Only on
                // the emulator: on Snowflake the list also keeps a load working when a column
                // was added to the table after sluice described it.
                let whole_table = self.emulated
                    && file_columns.len() == cols.len()
                    && file_columns.iter().enumerate().all(|(p, c)| p == *c);
                let list = if whole_table {
                    String::new()
                } else {
                    let names: Vec<String> = file_columns
                        .iter()
                        .map(|i| encode::quote_ident(&cols[*i].name))
                        .collect();
                    format!(" ({})", names.join(", "))
                };
                format!(
                    "COPY INTO {}{list} FROM @{}/{path} FILE_FORMAT=(TYPE=CSV FIELD_OPTIONALLY_ENCLOSED_BY='\"' COMPRESSION=GZIP EMPTY_FIELD_AS_NULL=TRUE NULL_IF=()) ON_ERROR=ABORT_STATEMENT",
                    self.names.table, self.names.stage
                )
            };
            let r = self.client.query(&sql, &[]).await?;
            let get =
                |row: &Vec<Json>, name: &str| r.column(name).and_then(|i| row.get(i)).cloned();
            let row = r.rows.first().cloned().unwrap_or_default();
            let status = get(&row, "status")
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            let rows_loaded = get(&row, "rows_loaded")
                .and_then(|v| v.as_i64())
                .unwrap_or(0);
            // fakesnow says LOAD_SKIPPED; Snowflake answers a COPY with nothing new to load with a
            // single status row "Copy executed with 0 files processed."
            let skipped = status == "LOAD_SKIPPED"
                || (r.rows.len() == 1 && status.starts_with("Copy executed with 0 files"));
            if skipped {
                let committed = (self.stored_offset(&batch.topic, batch.partition, false)).await?;
                if committed.is_some_and(|c| c > last) {
                    return Ok(Body::AlreadyLoaded);
                }
                return Err(SinkError::LoadedWithoutOffsets {
                    file: path.to_owned(),
                    topic: batch.topic.clone(),
                    partition: batch.partition,
                    committed,
                    last_offset: last,
                });
            }
            if r.rows.len() != 1 || status != "LOADED" || rows_loaded != file_rows as i64 {
                return Err(SinkError::CopyFailed {
                    file: path.to_owned(),
                    status,
                    rows_loaded,
                    expected: file_rows,
                    first_error: get(&row, "first_error")
                        .map(|v| v.to_string())
                        .unwrap_or_default(),
                });
            }
            copied = rows_loaded as u64;
        }
        let key = [
            Bind::Text(Some(self.pipeline.clone())),
            Bind::Text(Some(batch.topic.clone())),
            Bind::Int(batch.partition as i64),
        ];
        let mut values = vec![Bind::Int(last + 1)];
        values.extend(key.iter().cloned());
        values.push(Bind::Int(first));
        let r = self
            .client
            .query(
                &format!(
                    "UPDATE {} SET \"NEXT_OFFSET\" = ? WHERE \"PIPELINE\" = ? AND \"TOPIC\" = ? AND \"PARTITION\" = ? AND \"NEXT_OFFSET\" <= ?",
                    self.names.offsets
                ),
                &values,
            )
            .await?;
        let updated = (r.column("number of rows updated"))
            .and_then(|i| r.rows.first()?.get(i)?.as_i64())
            .ok_or_else(|| {
                SnowflakeError::Protocol(format!(
                    "UPDATE of the offsets row answered no row count: {:?}",
                    r.rows
                ))
            })?;
        if updated > 0 {
            return Ok(Body::Loaded(copied));
        }
        match self
            .stored_offset(&batch.topic, batch.partition, false)
            .await?
        {
            Some(_) => Ok(Body::Overtaken),
            None => Err(SinkError::OffsetsRowGone {
                topic: batch.topic.clone(),
                partition: batch.partition,
            }),
        }
    }
}

/// Marks the client as inside a transaction until dropped (on every exit path).
struct InTransaction<'a>(&'a Client);

impl<'a> InTransaction<'a> {
    fn enter(client: &'a Client) -> InTransaction<'a> {
        client.set_in_transaction(true);
        InTransaction(client)
    }
}

impl Drop for InTransaction<'_> {
    fn drop(&mut self) {
        self.0.set_in_transaction(false);
    }
}

/// The index of column `name`: exact, else the only case-insensitive match.
fn find_column(columns: &[String], name: &str) -> Option<usize> {
    if let Some(i) = columns.iter().position(|c| c == name) {
        return Some(i);
    }
    let mut it = columns
        .iter()
        .enumerate()
        .filter(|(_, c)| c.eq_ignore_ascii_case(name));
    match (it.next(), it.next()) {
        (Some((i, _)), None) => Some(i),
        _ => None,
    }
}

/// Maps a row's fields to table columns, or says why it cannot be loaded.
///
/// Two fields of one row that map to the same column (`Name` and `NAME` both become `NAME`; or
/// two names that differ only in case both match one existing column) make the row a reject,
/// whatever their values: a column holds one value, so loading the row would drop the other
/// field's value without a trace. Keeping the fields apart instead would need a column name that
/// depends on which fields a batch happens to hold, and Snowflake's `name` / `NAME` / unquoted
/// `Name` all mean the one column `NAME`; renaming one of the fields in a transform is the fix.
fn map_row(row: &Row, columns: &[Column], names: &[String]) -> Result<Vec<Option<usize>>, String> {
    if row.fields.is_empty() {
        return Err("row has no fields".to_owned());
    }
    // `slots[j]` is the column of `row.fields[j]`.
    let mut slots: Vec<Option<usize>> = Vec::with_capacity(row.fields.len());
    for f in &row.fields {
        // No table can have a column without a name (a JSON message may have the key ""), nor
        // one of more than 255 characters.
        if let Some(problem) = encode::column_name_problem(&f.name) {
            return Err(problem);
        }
        let col = encode::normalize_ident(&f.name);
        let found = find_column(names, &col);
        if let Some(i) = found
            && let Some(j) = slots.iter().position(|s| *s == Some(i))
        {
            return Err(format!(
                "fields \"{}\" and \"{}\" both map to column {}: a column takes one value, so \
                 the row is set aside rather than one of them dropped (rename one in a transform)",
                row.fields[j].name,
                f.name,
                encode::quote_ident(&columns[i].name)
            ));
        }
        match found {
            Some(i)
                if columns[i].kind == ColumnKind::Variant
                    && matches!(&f.value, Value::Json(t) if serde_json::from_str::<serde::de::IgnoredAny>(t).is_err()) =>
            {
                // COPY would fail on it, and fail again on every replay of the batch.
                return Err(format!("field \"{}\" is not valid JSON", f.name));
            }
            Some(i)
                if columns[i].kind == ColumnKind::Timestamp
                    && matches!(f.value, Value::Timestamp(us) if !encode::loadable_timestamp(us)) =>
            {
                return Err(format!(
                    "field \"{}\" is a timestamp outside the years 1 to 9999 ({})",
                    f.name, f.value
                ));
            }
            Some(i) if columns[i].kind.accepts(&f.value) => slots.push(Some(i)),
            Some(i) if columns[i].kind.takes_type(&f.value) => {
                // `1e300` rather than its 301 digits.
                let value = match f.value {
                    Value::Float(x) if x.abs() >= 1e15 => format!("{x:e}"),
                    ref v => v.to_string(),
                };
                return Err(format!(
                    "field \"{}\" is {value}, which column {} ({}) cannot hold",
                    f.name,
                    encode::quote_ident(&columns[i].name),
                    columns[i].type_label
                ));
            }
            Some(i) => {
                return Err(format!(
                    "field \"{}\" is {} but column {} is {}",
                    f.name,
                    f.value.value_type(),
                    encode::quote_ident(&columns[i].name),
                    columns[i].type_label
                ));
            }
            None if f.value == Value::Null => slots.push(None),
            None => return Err(format!("field \"{}\" has no column in the table", f.name)),
        }
    }
    Ok(slots)
}

struct Partition {
    /// The committed next offset as read from the offsets table (`i64::MIN` if none yet).
    committed: Option<i64>,
    announced: bool,
    batch: Option<PendingBatch>,
}

struct PendingBatch {
    batch: Batch,
    /// Per record of `batch`, the Kafka message it came from, when the caller gave it and the
    /// record has rows (only a row can become a sink dead letter).
    origins: Vec<Option<RecordMeta>>,
    rows: usize,
    bytes: usize,
    opened: Instant,
}

struct Writer {
    sink: Arc<SnowflakeSink>,
    dead_letters: Option<DeadLetterTx>,
    durable: mpsc::UnboundedSender<Durable>,
    partitions: HashMap<(String, i32), Partition>,
    summary: SinkSummary,
}

fn approx_bytes(row: &Row) -> usize {
    row.fields
        .iter()
        .map(|f| {
            3 + match &f.value {
                Value::String(s) | Value::Json(s) => s.len() + 2,
                Value::Timestamp(_) => 26,
                _ => 8,
            }
        })
        .sum()
}

impl Writer {
    fn new(
        sink: Arc<SnowflakeSink>,
        dead_letters: Option<DeadLetterTx>,
        durable: mpsc::UnboundedSender<Durable>,
    ) -> Writer {
        Writer {
            sink,
            dead_letters,
            durable,
            partitions: HashMap::new(),
            summary: SinkSummary::default(),
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        let latency = Duration::from_millis(self.sink.batch.max_latency_ms);
        self.partitions
            .values()
            .filter_map(|p| p.batch.as_ref().map(|b| b.opened + latency))
            .min()
    }

    async fn run(mut self, rx: &mut mpsc::Receiver<SinkInput>) -> Result<SinkSummary, SinkError> {
        loop {
            let deadline = self.next_deadline();
            let msg = tokio::select! {
                m = rx.recv() => m,
                _ = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now).into()), if deadline.is_some() => {
                    self.flush_due().await?;
                    continue;
                }
            };
            match msg {
                None => {
                    self.flush_all().await?;
                    return Ok(self.summary);
                }
                Some(SinkInput::Record(r)) => self.record(r, None).await?,
                Some(SinkInput::RecordFrom(meta, rows)) => {
                    let r = SinkRecord {
                        topic: meta.topic.clone(),
                        partition: meta.partition,
                        offset: meta.offset,
                        rows,
                    };
                    self.record(r, Some(meta)).await?;
                }
                Some(SinkInput::Revoke(parts)) => {
                    for p in parts {
                        let pending = self.partitions.remove(&p).and_then(|p| p.batch);
                        self.redelivered(pending.map_or(0, |b| b.rows));
                    }
                }
                Some(SinkInput::Flush(ack)) => {
                    let result = self.flush_all().await;
                    let _ = ack.send(
                        result
                            .as_ref()
                            .map(|_| ())
                            .map_err(|e| crate::error_chain(e)),
                    );
                    result?;
                }
            }
        }
    }

    /// Counts `rows` as not loaded, because another delivery of their records is (or was).
    fn redelivered(&mut self, rows: usize) {
        self.summary.rows_redelivered += rows as u64;
        (self.sink.stats().rows_redelivered).fetch_add(rows as u64, Ordering::Relaxed);
    }

    async fn record(&mut self, r: SinkRecord, origin: Option<RecordMeta>) -> Result<(), SinkError> {
        let key = (r.topic.clone(), r.partition);
        if !self.partitions.contains_key(&key) || self.partitions[&key].committed.is_none() {
            let committed = self.sink.committed_offsets(&r.topic).await?;
            let entry = self.partitions.entry(key.clone()).or_insert(Partition {
                committed: None,
                announced: false,
                batch: None,
            });
            entry.committed = Some(committed.get(&r.partition).copied().unwrap_or(i64::MIN));
        }
        let limits = (self.sink.batch.max_rows, self.sink.batch.max_bytes);
        let p = self.partitions.get_mut(&key).ok_or(SinkError::Closed)?;
        let committed = p.committed.unwrap_or(i64::MIN);
        if r.offset < committed {
            // Already durable in the warehouse: a consumer that restarted from an older Kafka
            // commit replays it. Tell it once where the warehouse stands.
            if !p.announced {
                p.announced = true;
                let _ = self.durable.send(Durable {
                    topic: r.topic,
                    partition: r.partition,
                    next_offset: committed,
                });
            }
            self.summary.records_already_committed += 1;
            self.redelivered(r.rows.len());
            return Ok(());
        }
        if let Some(b) = &p.batch
            && r.offset <= b.batch.last_offset()
        {
            if b.batch
                .records
                .binary_search_by_key(&r.offset, |x| x.0)
                .is_ok()
            {
                // A redelivery of a record the open batch already holds.
                self.redelivered(r.rows.len());
                return Ok(());
            }
            return Err(SinkError::OutOfOrder {
                topic: r.topic,
                partition: r.partition,
                offset: r.offset,
                last_offset: b.batch.last_offset(),
            });
        }
        let b = p.batch.get_or_insert_with(|| PendingBatch {
            batch: Batch {
                topic: r.topic.clone(),
                partition: r.partition,
                records: Vec::new(),
            },
            origins: Vec::new(),
            rows: 0,
            bytes: 0,
            opened: Instant::now(),
        });
        b.rows += r.rows.len();
        b.bytes += r.rows.iter().map(approx_bytes).sum::<usize>();
        b.origins
            .push(origin.filter(|_| !r.rows.is_empty()).map(|mut m| {
                m.topic = r.topic.clone();
                m.partition = r.partition;
                m.offset = r.offset;
                m
            }));
        b.batch.records.push((r.offset, r.rows));
        if b.rows >= limits.0 || b.bytes >= limits.1 {
            self.flush(&key).await?;
        }
        Ok(())
    }

    async fn flush(&mut self, key: &(String, i32)) -> Result<(), SinkError> {
        let Some(pending) = self.partitions.get_mut(key).and_then(|p| p.batch.take()) else {
            return Ok(());
        };
        let outcome = self
            .sink
            .load_batch_from(&pending.batch, &pending.origins, self.dead_letters.as_ref())
            .await?;
        let loaded_file = u64::from(outcome.file.is_some() && !outcome.already_loaded);
        self.summary.files += loaded_file;
        (self.sink.stats.files_loaded).fetch_add(loaded_file, Ordering::Relaxed);
        self.summary.rows_loaded += outcome.rows_loaded;
        self.summary.commits += u64::from(!outcome.already_loaded);
        self.summary.rows_dead_lettered += outcome.rows_dead_lettered;
        self.redelivered(outcome.rows_loaded_elsewhere as usize);
        if let Some(p) = self.partitions.get_mut(key) {
            p.committed = Some(outcome.next_offset);
        }
        // The receiver may be gone (a shutting-down consumer); the warehouse holds the truth.
        let _ = self.durable.send(Durable {
            topic: key.0.clone(),
            partition: key.1,
            next_offset: outcome.next_offset,
        });
        Ok(())
    }

    async fn flush_due(&mut self) -> Result<(), SinkError> {
        let now = Instant::now();
        let latency = Duration::from_millis(self.sink.batch.max_latency_ms);
        let due: Vec<(String, i32)> = self
            .partitions
            .iter()
            .filter(|(_, p)| p.batch.as_ref().is_some_and(|b| b.opened + latency <= now))
            .map(|(k, _)| k.clone())
            .collect();
        for k in due {
            self.flush(&k).await?;
        }
        Ok(())
    }

    async fn flush_all(&mut self) -> Result<(), SinkError> {
        let mut keys: Vec<(String, i32)> = self
            .partitions
            .iter()
            .filter(|(_, p)| p.batch.is_some())
            .map(|(k, _)| k.clone())
            .collect();
        keys.sort();
        for k in keys {
            self.flush(&k).await?;
        }
        Ok(())
    }
}

/// Whether a string or JSON value of `row` holds a carriage return.
fn holds_cr(row: &Row) -> bool {
    row.fields
        .iter()
        .any(|f| matches!(&f.value, Value::String(s) | Value::Json(s) if s.contains('\r')))
}
