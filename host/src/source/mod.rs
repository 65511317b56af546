//! The CSV replay source: reads and types CSV rows ([`csv`]), paces them ([`pacing`]), encodes
//! them ([`wire`]) and produces them to Kafka ([`producer`]); bad rows go to the dead-letter
//! topic ([`dlq`]) with file and line.
//!
//! [`replay`] is the entry point. File reading and parsing run on a blocking thread that feeds
//! the async produce loop through a bounded channel, so a slow broker slows reading (memory stays
//! flat) and a 10 MB field never stalls a tokio worker. A row counts as produced only when the
//! broker confirmed it; `replay` returns after every delivery is confirmed.

pub mod config;
pub mod csv;
pub mod dlq;
pub mod pacing;
pub mod producer;
pub mod resume;
pub mod wire;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant as StdInstant;

use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureRecord};
use tokio_util::sync::CancellationToken;

use self::config::{CsvSource, Pacing};
use self::csv::{BadRow, BadRowKind, CsvItem, CsvOptions, CsvReader};
use self::producer::KafkaSetupError;
use crate::config::{KafkaConfig, OnError};
use crate::dead_letter::{DeadLetter, DeadLetterError, DeadLetterTx};
use crate::row::{Value, ValueType};

/// Why a replay failed.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The CSV file could not be opened.
    #[error("cannot open {}", .path.display())]
    Open {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Reading the file failed part-way.
    #[error("cannot read {} at line {line}", .path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The line being read.
        line: u64,
        /// The reader's error.
        #[source]
        source: ::csv::Error,
    },
    /// The header row is missing or unusable, or does not match the configuration.
    #[error("{}: {reason}", .path.display())]
    Header {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The source configuration cannot be used with this file.
    #[error("invalid source configuration: {0}")]
    Config(String),
    /// A bad row under `on_error: fail`.
    #[error("bad row at {file}:{line} ({kind}): {reason}", kind = .kind.as_str())]
    BadRow {
        /// The file.
        file: String,
        /// The 1-based line the record starts on.
        line: u64,
        /// Why it is bad.
        kind: BadRowKind,
        /// The reason.
        reason: String,
    },
    /// Kafka setup (client, topic) failed.
    #[error(transparent)]
    Setup(#[from] KafkaSetupError),
    /// The broker did not take a row.
    #[error("row from {file}:{line} was not delivered")]
    Delivery {
        /// The file.
        file: String,
        /// The row's line.
        line: u64,
        /// The producer's error.
        #[source]
        source: KafkaError,
    },
    /// A bad row could not be dead-lettered.
    #[error("bad row at {file}:{line} could not be dead-lettered")]
    DeadLetter {
        /// The file.
        file: String,
        /// The row's line.
        line: u64,
        /// Why.
        #[source]
        source: DeadLetterError,
    },
    /// The reader thread died.
    #[error("csv reader thread failed: {0}")]
    Thread(String),
    /// A replay cannot be resumed.
    #[error(transparent)]
    Resume(#[from] resume::ResumeError),
}

/// Live replay counters (rendered by the metrics module and the progress line).
#[derive(Debug, Default)]
pub struct ReplayStats {
    /// CSV records read (good and bad), over all loops; not a row the replay stopped at (a bad
    /// row under `on_error: fail`, or a row stopped before its time), which waits in the file.
    pub rows_read: AtomicU64,
    /// Rows the broker confirmed.
    pub rows_produced: AtomicU64,
    /// Bad rows stored in the dead-letter topic.
    pub rows_dead_lettered: AtomicU64,
    /// Bad rows skipped under `on_error: drop`.
    pub rows_dropped: AtomicU64,
    /// Rows a resumed replay did not produce: the topic held them already.
    pub rows_already_produced: AtomicU64,
    /// Bad rows a resumed replay did not dead-letter: their letters were there already.
    pub rows_already_dead_lettered: AtomicU64,
    /// Message value bytes the broker confirmed.
    pub bytes: AtomicU64,
    /// CSV bytes the records read so far go through, over all loops (for progress; see
    /// [`CsvReader::bytes_through`]).
    pub input_bytes_read: AtomicU64,
    /// CSV records the reader thread has read, over all loops: ahead of `rows_read` by what waits
    /// for the producer. With `input_bytes_read`, it estimates the records in all (for progress).
    pub records_scanned: AtomicU64,
    /// CSV bytes to read in total (file size times loop count; for ETA).
    pub input_bytes_total: AtomicU64,
    /// What a resumed replay found amiss in the topics (logged, and kept for the run's summary).
    pub warnings: std::sync::Mutex<Vec<String>>,
}

impl ReplayStats {
    /// Logs `text` at WARN and keeps it for the summary.
    fn warn(&self, text: String) {
        tracing::warn!("{text}");
        self.warnings
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(text);
    }

    /// What the replay did so far; once [`replay`] returned, ok or not, what it did.
    pub fn summary(&self, cancelled: bool) -> ReplaySummary {
        ReplaySummary {
            rows_read: self.rows_read.load(Ordering::Relaxed),
            rows_produced: self.rows_produced.load(Ordering::Relaxed),
            rows_dead_lettered: self.rows_dead_lettered.load(Ordering::Relaxed),
            rows_dropped: self.rows_dropped.load(Ordering::Relaxed),
            rows_already_produced: self.rows_already_produced.load(Ordering::Relaxed),
            rows_already_dead_lettered: self.rows_already_dead_lettered.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            cancelled,
        }
    }
}

/// What a finished replay did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReplaySummary {
    /// CSV records read (good and bad); not a bad row that stopped the replay (`on_error: fail`).
    pub rows_read: u64,
    /// Rows the broker confirmed.
    pub rows_produced: u64,
    /// Bad rows stored in the dead-letter topic.
    pub rows_dead_lettered: u64,
    /// Bad rows skipped under `on_error: drop`.
    pub rows_dropped: u64,
    /// Rows not produced because the topic held them already (a resumed replay).
    pub rows_already_produced: u64,
    /// Bad rows not dead-lettered because their letters were there already (a resumed replay).
    pub rows_already_dead_lettered: u64,
    /// Message value bytes confirmed.
    pub bytes: u64,
    /// Whether the replay stopped early because it was cancelled.
    pub cancelled: bool,
}

/// Everything [`replay`] needs.
#[derive(Debug, Clone)]
pub struct ReplayConfig<'a> {
    /// The CSV source section, validated.
    pub source: &'a CsvSource,
    /// The directory `source.path` is relative to.
    pub base_dir: &'a Path,
    /// Kafka settings (topic, partitions, compression, properties).
    pub kafka: &'a KafkaConfig,
    /// Resolved bootstrap servers (from `kafka.brokers` or the managed broker).
    pub bootstrap: &'a str,
    /// Once cancelled, the rest of the file goes unpaced: `sluice run` finishes the replay at
    /// full speed when its consume half has failed, so that `--consume-only` has every row
    /// without the failed run waiting out hours of pacing.
    pub unpaced: Option<CancellationToken>,
    /// Resume a replay stopped part-way: produce only the rows (and dead-letter only the bad
    /// rows) the topics do not hold yet ([`resume`]).
    pub resume: Option<resume::Resume>,
}

enum ReaderMsg {
    /// A record, with its share of [`READ_AHEAD_BYTES`], given back once it is taken.
    Item(CsvItem, tokio::sync::OwnedSemaphorePermit),
    Failed(SourceError),
}

/// How many records the reader thread runs ahead of the producer at most.
const READ_AHEAD_RECORDS: usize = 1024;

/// How many bytes of records ([`held_bytes`]) the reader thread runs ahead of the producer at
/// most (or one record, when larger): a paced replay of wide rows, JSON documents of up to a
/// message's megabyte, held [`READ_AHEAD_RECORDS`] of them, a gigabyte.
const READ_AHEAD_BYTES: u32 = 16 << 20;

/// Where the reader thread sends records: bounded in records and in bytes.
struct ReadAhead {
    tx: tokio::sync::mpsc::Sender<ReaderMsg>,
    bytes: Arc<tokio::sync::Semaphore>,
    /// The bytes' bound, which is what a larger record takes.
    total: u32,
}

impl ReadAhead {
    fn new(records: usize, bytes: u32) -> (ReadAhead, tokio::sync::mpsc::Receiver<ReaderMsg>) {
        let (tx, rx) = tokio::sync::mpsc::channel(records);
        let total = bytes.max(1);
        let bytes = Arc::new(tokio::sync::Semaphore::new(total as usize));
        (ReadAhead { tx, bytes, total }, rx)
    }

    /// Sends `item` once the bytes ahead allow it; `false` once the receiver is gone (and the
    /// bytes closed: [`Self::close`]). Blocking: for the reader thread.
    fn send(&self, item: CsvItem) -> bool {
        let want = held_bytes(&item).clamp(1, self.total as usize) as u32;
        let Ok(permit) = futures::executor::block_on(self.bytes.clone().acquire_many_owned(want))
        else {
            return false;
        };
        self.tx.blocking_send(ReaderMsg::Item(item, permit)).is_ok()
    }

    fn fail(&self, e: SourceError) {
        let _ = self.tx.blocking_send(ReaderMsg::Failed(e));
    }
}

/// Ends a reader thread's wait for bytes once its receiver is dropped: records the receiver
/// held gave theirs back, but one sent as it was dropped keeps its own until the channel goes.
struct CloseOnDrop(Arc<tokio::sync::Semaphore>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// The memory a record read ahead holds, about: its fields and their text (column names are
/// shared by every row).
fn held_bytes(item: &CsvItem) -> usize {
    match item {
        CsvItem::Row { row, .. } => (row.fields.iter())
            .map(|f| match &f.value {
                Value::String(text) | Value::Json(text) => text.len(),
                _ => 0,
            })
            .sum::<usize>()
            .saturating_add(std::mem::size_of_val(&row.fields[..])),
        CsvItem::Bad(bad) => bad.payload.len().saturating_add(bad.reason.len()),
    }
}

/// The message a row read from `line` of `file` becomes, with `key`, or the bad row it is when
/// the message would be larger than `max_bytes` (the producer's `message.max.bytes`, which
/// counts the key and the headers too; beyond it the producer refuses the message, and the
/// replay would stop on it).
pub fn encode_message(
    line: u64,
    row: &crate::row::Row,
    key: Option<&str>,
    file: &str,
    max_bytes: usize,
) -> Result<wire::Encoded, BadRow> {
    let enc = wire::encode(row);
    let key_len = key.map_or(0, str::len);
    // 256: the headers' names and the line number, and the record's framing.
    if enc.value.len() + enc.types.len() + key_len + file.len() + 256 > max_bytes {
        let with_key = match key_len {
            0 => String::new(),
            n => format!(" and its key {n} bytes"),
        };
        return Err(BadRow {
            line,
            kind: BadRowKind::TooLarge,
            reason: format!(
                "encoded row is {} bytes{with_key}; the largest message is {max_bytes} bytes (kafka.properties.\"message.max.bytes\")",
                enc.value.len()
            ),
            payload: enc.value,
        });
    }
    Ok(enc)
}

/// Replays the CSV file into `kafka.topic` (created if missing), paced as configured, `loop`
/// times. Bad rows go to `dead_letters`, are counted, or stop the run, per `source.on_error`.
/// Returns once every produced row is confirmed by the broker. On cancellation it stops reading,
/// waits for the rows already sent, and returns with `cancelled` set.
pub async fn replay(
    cfg: ReplayConfig<'_>,
    dead_letters: DeadLetterTx,
    stats: Arc<ReplayStats>,
    cancel: CancellationToken,
) -> Result<ReplaySummary, SourceError> {
    let src = cfg.source;
    let path = crate::config::resolve_in(cfg.base_dir, &src.path);
    let file_name = path
        .file_name()
        .map_or_else(|| src.path.clone(), |n| n.to_string_lossy().into_owned());
    let opts = CsvOptions {
        delimiter: src.delimiter,
        schema: src.schema.clone(),
        infer_rows: src.infer_rows.get(),
        max_record_bytes: producer::max_message_bytes(cfg.kafka),
        null_if: src.null_if.clone(),
    };

    let size = std::fs::metadata(&path)
        .map_err(|source| SourceError::Open {
            path: path.clone(),
            source,
        })?
        .len();
    let file_id = resume::file_id(&path).map_err(|source| SourceError::Open {
        path: path.clone(),
        source,
    })?;
    stats
        .input_bytes_total
        .store(size * u64::from(src.loops.get()), Ordering::Relaxed);
    let reader = {
        let (path, opts, counter) = (path.clone(), opts.clone(), Arc::new(AtomicU64::new(0)));
        tokio::task::spawn_blocking(move || CsvReader::open(&path, &opts, counter, None))
            .await
            .map_err(|e| SourceError::Thread(e.to_string()))??
    };
    let column_index = |name: &str, what: &str| {
        reader
            .columns()
            .iter()
            .position(|c| &**c == name)
            .ok_or_else(|| {
                SourceError::Config(format!(
                    "{what} {name:?} is not a column of {}",
                    path.display()
                ))
            })
    };
    let key_index = src
        .key_column
        .as_deref()
        .map(|k| column_index(k, "key_column"))
        .transpose()?;
    let event_index = match &src.pacing {
        Pacing::EventTime { column, .. } => {
            let i = column_index(column, "pacing column")?;
            let declared = src.schema.get(column).copied();
            if let Some(problem) = pacing_column_problem(column, declared, Some(reader.types()[i]))
            {
                return Err(SourceError::Config(problem));
            }
            Some(i)
        }
        _ => None,
    };

    let kafka = cfg.kafka;
    let partitions = producer::ensure_topic(
        kafka,
        cfg.bootstrap,
        &kafka.topic,
        kafka.partitions,
        kafka.replication_factor,
    )
    .await?;
    let producer = producer::create_producer(kafka, cfg.bootstrap)?;
    let max_bytes = producer::max_message_bytes(kafka);
    let mut held = match &cfg.resume {
        None => resume::Held::default(),
        Some(r) => {
            let (k, bootstrap, r) = (kafka.clone(), cfg.bootstrap.to_owned(), r.clone());
            let file = resume::FileIs {
                name: file_name.clone(),
                path: path.clone(),
            };
            let cancel = cancel.clone();
            // Only under `dead_letter` does a bad row's letter stand for it.
            let letters = src.on_error == OnError::DeadLetter;
            tracing::info!(
                topic = %kafka.topic,
                "Reading the topic{} for the rows of {file_name} it holds already, to resume the \
                 replay.",
                if letters { " and the dead-letter topic" } else { "" }
            );
            // A line takes a byte of the file at least: past that, a header is not this file's.
            let read = tokio::task::spawn_blocking(move || {
                resume::read_held(&k, &bootstrap, &r, &file, size + 1, letters, &cancel)
            })
            .await
            .map_err(|e| SourceError::Thread(e.to_string()))??;
            let Some(held) = read else {
                return Ok(stats.summary(true));
            };
            match held.rows.is_empty() && held.letters.is_empty() {
                true => tracing::info!(
                    file = %path.display(),
                    topic = %kafka.topic,
                    rows = 0,
                    letters = 0,
                    "Resuming the replay: the topics hold nothing of the file yet; producing all \
                     of it."
                ),
                false => tracing::info!(
                    file = %path.display(),
                    topic = %kafka.topic,
                    rows = held.rows.len(),
                    letters = held.letters.len(),
                    "Resuming the replay: found `rows` messages of the file's rows in the topic \
                     (a line held twice counts twice), and `letters` letters of bad rows of a file \
                     of its name in the dead-letter topic (each stands for the bad row whose bytes \
                     it holds); producing the rest."
                ),
            }
            if held.other_files > 0 {
                stats.warn(format!(
                    "topic {} holds {} rows of another file named {file_name} (its first bytes \
                     differ: last month's, say); they do not stand for this file's rows, which \
                     this resume produced",
                    kafka.topic, held.other_files
                ));
            }
            if held.rows.is_empty() && held.messages > held.other_files {
                stats.warn(format!(
                    "topic {} holds {} messages, but no row of {file_name} (by their sluice.file \
                     header): this resume produced every row of the file (was the file renamed \
                     since the stopped replay, or is this another feed's topic?)",
                    kafka.topic,
                    held.messages - held.other_files
                ));
            }
            if held.letters_truncated {
                stats.warn(
                    "the dead-letter topic no longer holds its first letters (retention): bad \
                     rows whose letters it removed were dead-lettered again"
                        .to_owned(),
                );
            }
            held
        }
    };
    tracing::info!(file = %path.display(), topic = %kafka.topic, partitions, "Replaying.");

    // The reader thread runs at most this far ahead of the producer.
    let (tx, mut rx) = ReadAhead::new(READ_AHEAD_RECORDS, READ_AHEAD_BYTES);
    let read_ahead = CloseOnDrop(tx.bytes.clone());
    let reader_thread = {
        let (stats, cancel, loops) = (stats.clone(), cancel.clone(), src.loops.get());
        let path = path.clone();
        std::thread::Builder::new()
            .name("sluice-csv".into())
            .spawn(move || read_loops(reader, &path, &opts, loops, &stats, &cancel, &tx))
            .map_err(|e| SourceError::Thread(e.to_string()))?
    };

    let mut pacer = pacing::Pacer::new(&src.pacing);
    // The kinds of bad row already logged at WARN.
    let mut warned = std::collections::HashSet::new();
    let mut prev_line = None;
    let mut pending: FuturesUnordered<Pending> = FuturesUnordered::new();
    let mut letters: FuturesUnordered<LetterWait> = FuturesUnordered::new();
    let mut failure: Option<SourceError> = None;
    let mut cancelled = false;
    let start = StdInstant::now();
    let hurry = cfg.unpaced.clone().unwrap_or_default();

    'main: loop {
        let msg = tokio::select! {
            biased;
            _ = cancel.cancelled() => { cancelled = true; break 'main; }
            Some(done) = pending.next(), if !pending.is_empty() => {
                if let Err(e) = confirm(done, &file_name, &stats) { failure = Some(e); break 'main; }
                continue;
            }
            Some(done) = letters.next(), if !letters.is_empty() => {
                if let Err(e) = letter_stored(done, &file_name, &stats) { failure = Some(e); break 'main; }
                continue;
            }
            msg = rx.recv() => msg,
        };
        // Counted here, not by the reader: rows it read ahead into the channel are not handled
        // when the replay is stopped, and a summary counting them would show them as lost.
        if let Some(ReaderMsg::Item(..)) = &msg {
            stats.rows_read.fetch_add(1, Ordering::Relaxed);
        }
        let item = match msg {
            None => break,
            Some(ReaderMsg::Failed(e)) => {
                failure = Some(e);
                break;
            }
            Some(ReaderMsg::Item(item, bytes)) => {
                // The row is the producer's now.
                drop(bytes);
                item
            }
        };
        // A bad CSV record, or a row too large once encoded: one bad row either way.
        let encoded = match item {
            CsvItem::Bad(bad) => Err(bad),
            CsvItem::Row { line, .. } if held.rows.take(line) => {
                stats.rows_already_produced.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            CsvItem::Row { line, row } => {
                let key = key_index.and_then(|i| wire::key_of(&row.fields[i].value));
                encode_message(line, &row, key.as_deref(), &file_name, max_bytes)
                    .map(|enc| (line, row, key, enc))
            }
        };
        let (line, row, key, enc) = match encoded {
            Ok(message) => message,
            Err(bad)
                if src.on_error == OnError::DeadLetter
                    && held.letters.take(bad.line, &bad.payload) =>
            {
                stats
                    .rows_already_dead_lettered
                    .fetch_add(1, Ordering::Relaxed);
                continue;
            }
            Err(bad) => {
                let on_error = src.on_error;
                match reject(
                    bad,
                    (&file_name, &file_id),
                    on_error,
                    &dead_letters,
                    &stats,
                    &mut warned,
                )
                .await
                {
                    Ok(letter) => letters.extend(letter),
                    Err(e) => {
                        // The bad row that stopped the replay (`on_error: fail`, or its letter
                        // could not be handed over) was not handled: it waits in the file, as a
                        // row stopped before its time does. Counted, the summary showed it as a
                        // row lost between the file and the topic.
                        stats.rows_read.fetch_sub(1, Ordering::Relaxed);
                        failure = Some(e);
                        break;
                    }
                }
                if let Err(e) = bound_letters(&mut letters, &file_name, &stats).await {
                    failure = Some(e);
                    break;
                }
                continue;
            }
        };
        let event_us = event_index.and_then(|i| match row.fields[i].value {
            Value::Timestamp(us) => Some(us),
            _ => None,
        });
        // Lines count up within a loop of the file; going back means the next loop began.
        if prev_line.is_some_and(|prev| line <= prev) {
            pacer.restart();
        }
        prev_line = Some(line);
        let due = match hurry.is_cancelled() {
            true => None,
            false => pacer.next_due(tokio::time::Instant::now(), event_us),
        };
        if let Some(due) = due {
            tokio::select! {
                _ = cancel.cancelled() => {
                    // Stopped while this row waited for its time: it was never sent.
                    stats.rows_read.fetch_sub(1, Ordering::Relaxed);
                    cancelled = true;
                    break 'main;
                }
                _ = tokio::time::sleep_until(due) => {}
                () = hurry.cancelled() => {}
            }
        }
        let line_text = line.to_string();
        let headers = OwnedHeaders::new_with_capacity(4)
            .insert(Header {
                key: wire::HEADER_TYPES,
                value: Some(enc.types.as_bytes()),
            })
            .insert(Header {
                key: wire::HEADER_FILE,
                value: Some(file_name.as_bytes()),
            })
            .insert(Header {
                key: wire::HEADER_LINE,
                value: Some(line_text.as_bytes()),
            })
            .insert(Header {
                key: wire::HEADER_FILE_ID,
                value: Some(file_id.as_bytes()),
            });
        // The wall clock first: a pause between the two reads then lengthens the next gap, where
        // the other way round it shortened it, and two messages' timestamps came closer than a
        // `fixed` delay (46 ms, then 36, for 40).
        let now_ms = chrono::Utc::now().timestamp_millis();
        pacer.sent(tokio::time::Instant::now());
        let mut record = FutureRecord::to(&kafka.topic)
            .payload(&enc.value)
            .headers(headers)
            .timestamp(now_ms);
        if let Some(k) = &key {
            record = record.key(k.as_str());
        }
        let len = enc.value.len() as u64;
        let mut record = record;
        let delivery = loop {
            match producer.send_result(record) {
                Ok(d) => break d,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    // The local queue is full: wait for a confirmation to free a slot.
                    match pending.next().await {
                        Some(done) => {
                            if let Err(e) = confirm(done, &file_name, &stats) {
                                failure = Some(e);
                                break 'main;
                            }
                        }
                        None => tokio::time::sleep(std::time::Duration::from_millis(10)).await,
                    }
                }
                Err((source, _)) => {
                    failure = Some(SourceError::Delivery {
                        file: file_name.clone(),
                        line,
                        source,
                    });
                    break 'main;
                }
            }
        };
        pending.push(Pending {
            line,
            len,
            delivery,
        });
    }
    // Stop the reader (it may be blocked on a full channel, or on bytes) before waiting for it.
    drop(rx);
    drop(read_ahead);
    while let Some(done) = pending.next().await {
        if let Err(e) = confirm(done, &file_name, &stats) {
            failure.get_or_insert(e);
        }
    }
    while let Some(done) = letters.next().await {
        if let Err(e) = letter_stored(done, &file_name, &stats) {
            failure.get_or_insert(e);
        }
    }
    // A reader that panicked dropped its sender as if the file had ended: the rows after it
    // were never read, so the replay failed.
    if let Err(panic) = reader_thread.join() {
        let what = (panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic".into());
        failure.get_or_insert(SourceError::Thread(format!(
            "it stopped after {} records of {}: {what}",
            stats.rows_read.load(Ordering::Relaxed),
            path.display()
        )));
    }
    if let Some(e) = failure {
        return Err(e);
    }
    if !cancelled && !held.rows.is_empty() {
        stats.warn(format!(
            "topic {} holds {} more rows of {file_name} than one per line and loop: an earlier \
             replay without --resume (or, without fingerprints, an earlier version's replay of \
             another file of that name); they are in the topic twice, and a consume loads them too",
            kafka.topic,
            held.rows.len()
        ));
    }
    if !cancelled && !held.letters.is_empty() {
        tracing::info!(
            letters = held.letters.len(),
            "Letters of bad rows of another file of this name, or more than one per bad row, are \
             in the dead-letter topic; they stood for no row of this replay."
        );
    }
    let summary = stats.summary(cancelled);
    tracing::info!(
        rows = summary.rows_produced,
        dead_lettered = summary.rows_dead_lettered,
        dropped = summary.rows_dropped,
        elapsed_ms = start.elapsed().as_millis() as u64,
        cancelled,
        "Replay finished."
    );
    Ok(summary)
}

/// A sent row awaiting confirmation.
struct Pending {
    line: u64,
    len: u64,
    delivery: DeliveryFuture,
}

impl std::future::Future for Pending {
    type Output = (u64, u64, Result<(), KafkaError>);

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let (line, len) = (self.line, self.len);
        std::pin::Pin::new(&mut self.delivery).poll(cx).map(|r| {
            let r = match r {
                Ok(Ok(_)) => Ok(()),
                Ok(Err((e, _))) => Err(e),
                Err(_) => Err(KafkaError::Canceled),
            };
            (line, len, r)
        })
    }
}

fn confirm(
    (line, len, r): (u64, u64, Result<(), KafkaError>),
    file: &str,
    stats: &ReplayStats,
) -> Result<(), SourceError> {
    r.map_err(|source| SourceError::Delivery {
        file: file.to_owned(),
        line,
        source,
    })?;
    stats.rows_produced.fetch_add(1, Ordering::Relaxed);
    stats.bytes.fetch_add(len, Ordering::Relaxed);
    Ok(())
}

/// A bad row's letter on its way to the dead-letter topic, with the row's line.
type LetterWait = futures::future::BoxFuture<'static, (u64, Result<(), DeadLetterError>)>;

/// Applies `on_error` to a bad row; a dead letter is handed over and returned, to be waited for
/// alongside the rows' deliveries (one at a time, each would cost a broker round trip).
async fn reject(
    bad: BadRow,
    (file, file_id): (&str, &str),
    on_error: OnError,
    dead_letters: &DeadLetterTx,
    stats: &ReplayStats,
    warned: &mut std::collections::HashSet<BadRowKind>,
) -> Result<Option<LetterWait>, SourceError> {
    // The first of each kind at WARN, as the transforms' failures are: a file whose every row is
    // bad (a wrong delimiter) otherwise went by without a word until the summary.
    if on_error != OnError::Fail {
        let (kind, reason) = (
            bad.kind.as_str(),
            crate::dead_letter::clip(&bad.reason, 1024),
        );
        let what = match on_error {
            OnError::Drop => "dropped",
            _ => "dead-lettered",
        };
        if warned.insert(bad.kind) {
            tracing::warn!(%file, line = bad.line, kind, reason = %reason,
                "A bad CSV row was {what} (the first of this kind; the rest are counted in the summary and logged at debug).");
        } else {
            tracing::debug!(%file, line = bad.line, kind, reason = %reason, "Bad CSV row {what}.");
        }
    }
    match on_error {
        OnError::Fail => Err(SourceError::BadRow {
            file: file.to_owned(),
            line: bad.line,
            kind: bad.kind,
            reason: bad.reason,
        }),
        OnError::Drop => {
            stats.rows_dropped.fetch_add(1, Ordering::Relaxed);
            Ok(None)
        }
        OnError::DeadLetter => {
            let line = bad.line;
            let letter = DeadLetter {
                stage: crate::dead_letter::SOURCE_STAGE.into(),
                kind: bad.kind.as_str().into(),
                reason: bad.reason,
                source_file: Some(file.to_owned()),
                source_file_id: Some(file_id.to_owned()),
                line: Some(line),
                origin: None,
                payload: bad.payload,
                error: None,
            };
            let pending =
                dead_letters
                    .enqueue(letter)
                    .await
                    .map_err(|source| SourceError::DeadLetter {
                        file: file.to_owned(),
                        line,
                        source,
                    })?;
            Ok(Some(Box::pin(
                async move { (line, pending.stored().await) },
            )))
        }
    }
}

/// Most bad rows' letters not yet durable while the replay goes on. Without a bound the
/// letters (one partition, larger messages) fell thousands of rows behind the rows produced, so
/// a crash left bad rows in neither topic ahead of good rows already in the topic; with it, the
/// gap is no wider than the rows in flight.
const LETTERS_IN_FLIGHT: usize = 64;

/// Waits for letters to be stored until at most [`LETTERS_IN_FLIGHT`] are outstanding.
async fn bound_letters(
    letters: &mut FuturesUnordered<LetterWait>,
    file: &str,
    stats: &ReplayStats,
) -> Result<(), SourceError> {
    while letters.len() > LETTERS_IN_FLIGHT {
        if let Some(done) = letters.next().await {
            letter_stored(done, file, stats)?;
        }
    }
    Ok(())
}

/// Counts a bad row's letter once it is durable.
fn letter_stored(
    (line, r): (u64, Result<(), DeadLetterError>),
    file: &str,
    stats: &ReplayStats,
) -> Result<(), SourceError> {
    r.map_err(|source| SourceError::DeadLetter {
        file: file.to_owned(),
        line,
        source,
    })?;
    stats.rows_dead_lettered.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

/// The reader thread: every loop over the file, items into `tx` until the consumer side hangs up.
fn read_loops(
    mut reader: CsvReader,
    path: &Path,
    opts: &CsvOptions,
    loops: u32,
    stats: &ReplayStats,
    cancel: &CancellationToken,
    tx: &ReadAhead,
) {
    let types = reader.types().to_vec();
    let columns = reader.columns().to_vec();
    for n in 0..loops {
        if n > 0 {
            let counter = Arc::new(AtomicU64::new(0));
            reader = match CsvReader::open(path, opts, counter, Some(&types)) {
                // The first loop's types, key and pacing columns are kept by position.
                Ok(r) if r.columns() != columns => {
                    tx.fail(SourceError::Header {
                        path: path.to_path_buf(),
                        reason: format!(
                            "the file changed before loop {} of {loops}: its header is now {:?}, \
                             not {:?}",
                            n + 1,
                            r.columns().iter().map(|c| &**c).collect::<Vec<_>>(),
                            columns.iter().map(|c| &**c).collect::<Vec<_>>()
                        ),
                    });
                    return;
                }
                Ok(r) => r,
                Err(e) => {
                    tx.fail(e);
                    return;
                }
            };
        }
        loop {
            if cancel.is_cancelled() {
                return;
            }
            let before = reader.bytes_through();
            let item = reader.next_item();
            stats
                .input_bytes_read
                .fetch_add(reader.bytes_through() - before, Ordering::Relaxed);
            match item {
                Ok(Some(item)) => {
                    stats.records_scanned.fetch_add(1, Ordering::Relaxed);
                    if !tx.send(item) {
                        return;
                    }
                }
                Ok(None) => break,
                Err(e) => return tx.fail(e),
            }
        }
    }
}

/// Why `column` cannot pace a replay by event time, given its type in `source.schema` and the
/// type its first rows have. A declared type other than timestamp can be fixed by declaring one.
/// A column of numbers (epoch times) cannot: the reader never takes them for times, so every row
/// would be dead-lettered. A declared timestamp column with some other values is read row by row.
pub(crate) fn pacing_column_problem(
    column: &str,
    declared: Option<ValueType>,
    inferred: Option<ValueType>,
) -> Option<String> {
    const WANTED: &str = "event_time pacing reads ISO-8601 times such as 2024-01-01T12:00:00Z";
    match (declared, inferred) {
        (Some(declared), _) if declared != ValueType::Timestamp => Some(format!(
            "pacing column {column:?} is declared {declared} in source.schema; {WANTED} (set \
             source.schema.{column} to \"timestamp\")"
        )),
        (_, Some(ValueType::Int | ValueType::Float)) => Some(format!(
            "pacing column {column:?} holds numbers; {WANTED}, not epoch numbers (convert the \
             column, or use `mode: rate`)"
        )),
        // Declared a timestamp: a blank is a null (sent at once, the clock unmoved) and any
        // other value that is not a time (`N/A`) a bad row, dead-lettered with its line; neither
        // makes the pipeline bad.
        (Some(_), _) => None,
        // Nothing to go by, or already times.
        (None, None | Some(ValueType::Null | ValueType::Timestamp)) => None,
        (None, Some(inferred)) => Some(format!(
            "pacing column {column:?} holds {inferred} values that are not ISO-8601 times in its \
             first rows; {WANTED} (declare it in source.schema as \"timestamp\" to dead-letter \
             the rows that are not)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Commas, types inferred from 10 records, no size limit.
    fn csv_options() -> CsvOptions {
        CsvOptions {
            delimiter: b',',
            schema: Default::default(),
            infer_rows: 10,
            max_record_bytes: usize::MAX,
            null_if: Vec::new(),
        }
    }

    /// A file whose header changed between loops stops the replay with a clear error: the first
    /// loop's column types, key and pacing columns are kept by position, and a wider row
    /// panicked the reader, which the replay took for the end of the file ("ok, nothing lost").
    #[test]
    fn a_header_changed_between_loops_fails_the_replay() {
        let dir = tempfile::tempdir().unwrap();
        let (first, later) = (dir.path().join("a.csv"), dir.path().join("b.csv"));
        std::fs::write(&first, "id,name\n1,a\n2,b\n").unwrap();
        std::fs::write(&later, "id,name,extra\n3,c,x\n").unwrap();
        let opts = csv_options();
        let reader = CsvReader::open(&first, &opts, Arc::new(AtomicU64::new(0)), None).unwrap();
        let (tx, mut rx) = ReadAhead::new(16, 1 << 20);
        let stats = ReplayStats::default();
        // The second loop reopens `later`, as if `first` had been rewritten.
        read_loops(
            reader,
            &later,
            &opts,
            2,
            &stats,
            &CancellationToken::new(),
            &tx,
        );
        drop(tx);
        let mut rows = 0;
        let mut failure = None;
        while let Ok(msg) = rx.try_recv() {
            match msg {
                ReaderMsg::Item(CsvItem::Row { .. }, _) => rows += 1,
                ReaderMsg::Item(CsvItem::Bad(bad), _) => panic!("bad row {bad:?}"),
                ReaderMsg::Failed(e) => failure = Some(e.to_string()),
            }
        }
        assert_eq!(rows, 2);
        let failure = failure.expect("the replay fails");
        assert!(
            failure.contains("changed before loop 2 of 2")
                && failure.contains(r#"["id", "name", "extra"]"#),
            "{failure}"
        );
    }

    /// The reader runs ahead of the producer by a bounded number of bytes, not only of records:
    /// wide rows waiting for a paced producer are not held by the thousand. A record larger than
    /// the bound goes alone.
    #[test]
    fn the_reader_runs_ahead_by_bytes_as_well_as_records() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wide.csv");
        let wide = "x".repeat(100_000);
        let mut text = format!("id,text\n0,{}\n", "y".repeat(3_000_000));
        for id in 1..200 {
            text.push_str(&format!("{id},{wide}\n"));
        }
        std::fs::write(&path, text).unwrap();
        let opts = csv_options();
        let reader = CsvReader::open(&path, &opts, Arc::new(AtomicU64::new(0)), None).unwrap();
        let (tx, mut rx) = ReadAhead::new(1024, 1 << 20);
        let stats = Arc::new(ReplayStats::default());
        let thread = {
            let stats = stats.clone();
            std::thread::spawn(move || {
                read_loops(
                    reader,
                    &path,
                    &opts,
                    1,
                    &stats,
                    &CancellationToken::new(),
                    &tx,
                )
            })
        };
        // Nothing taken: the first record (3 MB, past the bound) is sent alone, and the reader
        // waits with the second.
        let scanned = || stats.records_scanned.load(Ordering::Relaxed);
        // Waits for `n` records read, then gives the reader time to read more if it would.
        let settled = |n| {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
            while scanned() < n && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            std::thread::sleep(std::time::Duration::from_millis(300));
            scanned()
        };
        assert_eq!(settled(2), 2);
        let take = |rx: &mut tokio::sync::mpsc::Receiver<ReaderMsg>| match rx.blocking_recv() {
            Some(ReaderMsg::Item(CsvItem::Row { row, .. }, _)) => row,
            _ => panic!("a row"),
        };
        take(&mut rx);
        // Then 10 rows of 100 kB in the 1 MiB, and the eleventh waiting.
        assert_eq!(settled(12), 12);
        let mut rows = 1;
        while let Some(msg) = rx.blocking_recv() {
            assert!(matches!(msg, ReaderMsg::Item(CsvItem::Row { .. }, _)));
            rows += 1;
        }
        thread.join().unwrap();
        assert_eq!(rows, 200);
    }

    /// Which pacing columns are refused: only what declaring a timestamp cannot fix, or what a
    /// declaration would fix, is.
    #[test]
    fn pacing_columns_are_refused_only_when_no_row_could_pace() {
        use ValueType::*;
        let problem = |declared, inferred| pacing_column_problem("at", declared, inferred);
        assert!(
            problem(Some(String), Some(Timestamp))
                .unwrap()
                .contains("set source.schema.at")
        );
        assert!(
            problem(Some(Timestamp), Some(Int))
                .unwrap()
                .contains("not epoch numbers")
        );
        assert!(
            problem(None, Some(Float))
                .unwrap()
                .contains("not epoch numbers")
        );
        assert!(
            problem(None, Some(String))
                .unwrap()
                .contains("declare it in source.schema")
        );
        // A blank (a null) or an `N/A` (a bad row) among declared times: not the file's fault.
        assert_eq!(problem(Some(Timestamp), Some(String)), None);
        assert_eq!(problem(Some(Timestamp), None), None);
        assert_eq!(problem(None, Some(Timestamp)), None);
        assert_eq!(problem(None, Some(Null)), None);
    }

    /// The pipeline runs the replay next to other tasks; it must be able to move between threads.
    #[test]
    fn replay_future_is_send() {
        fn assert_send<T: Send>(_: &T) {}
        let (src, kafka): (config::CsvSourceConfig, KafkaConfig) = (
            serde_json::from_value(serde_json::json!({ "path": "x.csv" })).unwrap(),
            serde_json::from_value(serde_json::json!({ "topic": "t" })).unwrap(),
        );
        let (tx, _rx) = crate::dead_letter::channel(1);
        let src = src.validate().unwrap();
        let cfg = ReplayConfig {
            source: &src,
            base_dir: Path::new("."),
            kafka: &kafka,
            bootstrap: "",
            unpaced: None,
            resume: None,
        };
        let fut = replay(cfg, tx, Arc::default(), CancellationToken::new());
        assert_send(&fut);
    }
}
