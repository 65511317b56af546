//! The input of `transform test`: CSV, JSON Lines or dead letters, read as records with the
//! metadata `sluice run` would give their messages.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};

use super::golden::output_stream;
use crate::dead_letter;
use crate::row::{RecordMeta, Row, ValueType};
use crate::source::csv::{BadRow, BadRowKind, CsvItem, CsvOptions, CsvReader};

/// The latest `--timestamp-ms`: 9999-12-31T23:59:59.999Z, the last time a Snowflake timestamp
/// holds (a transform stamping rows with a later one would have them set aside).
pub const MAX_TIMESTAMP_MS: i64 = 253_402_300_799_999;
use crate::source::producer::{DEFAULT_MAX_MESSAGE_BYTES, Partitioner};
use crate::source::wire;

/// How long a batch of a piped input waits for more rows once it has one: short enough to go
/// unnoticed, long enough for a writer that sends rows one by one to fill batches.
pub(super) const LINGER: Duration = Duration::from_millis(5);

/// The topic `transform test` reports to transforms (there is no Kafka here).
pub const TEST_TOPIC: &str = "test";

/// How `transform test` reads its input: the pipeline source's settings, so that rows are typed
/// and keyed as `sluice run` would type and key them.
#[derive(Debug, Clone)]
pub struct InputOptions {
    /// The CSV field delimiter.
    pub delimiter: u8,
    /// Explicit CSV column types; the other columns are inferred.
    pub schema: BTreeMap<String, ValueType>,
    /// How many CSV records type inference samples.
    pub infer_rows: usize,
    /// Field texts read as null in any CSV column.
    pub null_if: Vec<String>,
    /// The field whose value becomes the message key.
    pub key_column: Option<String>,
    /// The topic every record reports.
    pub topic: String,
    /// The partition every record reports, unless `partitions` is set.
    pub partition: i32,
    /// Spread the records over this many partitions, each record to the one the producer
    /// would send its message to (by its key, under `partitioner`), offsets counted in each;
    /// those without a key (or the partitioner's random choice) in turn.
    pub partitions: Option<i32>,
    /// How the producer picks a partition for a key.
    pub partitioner: Partitioner,
    /// The timestamp every record reports, in milliseconds since the epoch.
    pub timestamp_ms: Option<i64>,
    /// How to read the input; `None`: by its extension (`.jsonl`, `.ndjson`, `.json`: JSON Lines,
    /// else CSV).
    pub format: Option<InputFormat>,
    /// The largest CSV record the source would produce (its message's limit): a larger one is a
    /// bad row.
    pub max_record_bytes: usize,
}

impl Default for InputOptions {
    fn default() -> InputOptions {
        InputOptions {
            delimiter: b',',
            schema: BTreeMap::new(),
            infer_rows: crate::source::config::DEFAULT_INFER_ROWS,
            null_if: Vec::new(),
            key_column: None,
            topic: TEST_TOPIC.to_owned(),
            partition: 0,
            partitions: None,
            partitioner: Partitioner::default(),
            timestamp_ms: None,
            format: None,
            max_record_bytes: DEFAULT_MAX_MESSAGE_BYTES,
        }
    }
}

impl InputOptions {
    /// The options that read `source`'s CSV as `sluice run` reads it, with `kafka`'s topic and
    /// message size limit. Unlike a run's records, every record reports partition 0, offsets
    /// from 0 in row order, and no timestamp.
    pub fn of_source(
        source: &crate::source::config::CsvSource,
        kafka: &crate::config::KafkaConfig,
    ) -> InputOptions {
        let defaults = InputOptions::default();
        InputOptions {
            delimiter: source.delimiter,
            schema: source.schema.clone(),
            infer_rows: source.infer_rows.get(),
            null_if: source.null_if.clone(),
            key_column: source.key_column.clone(),
            topic: kafka.topic.clone(),
            format: Some(InputFormat::Csv),
            max_record_bytes: crate::source::producer::max_message_bytes(kafka),
            ..defaults
        }
    }
}

/// One record of a `transform test` input file.
#[derive(Debug, Clone, PartialEq)]
pub enum InputRecord {
    /// A row, with the line it starts on and the metadata `sluice run` would give the message the
    /// source makes of it.
    Row {
        /// The 1-based line the record starts on.
        line: u64,
        /// The topic, partition and timestamp of [`InputOptions`], offsets from 0 in row order
        /// (in each partition, with [`InputOptions::partitions`]),
        /// the key from [`InputOptions::key_column`], and the source's headers (`sluice.types`,
        /// `sluice.file`, `sluice.line`); for a dead letter, its origin's.
        meta: RecordMeta,
        /// The row.
        row: Row,
    },
    /// A CSV record the source would not produce but dead-letter.
    Bad(BadRow),
    /// A dead letter's message that the consumer cannot decode into a row, as `sluice run`'s
    /// could not (stage `consume`, kind `decode`).
    Undecodable {
        /// The 1-based line of the letter.
        line: u64,
        /// Why it does not decode.
        reason: String,
    },
    /// A dead letter with no record to run again.
    Skipped(Skip),
}

/// Why `transform test` does not run a dead letter's record again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Skip {
    /// A bad CSV row (stage `source`): it never reached a transform.
    Source,
    /// The sink's: its payload is the row the chain made, not the message it was given.
    Sink,
    /// Cut to fit the dead-letter topic: payload, key or a header.
    Cut,
    /// Changed after it was written: its payload is no longer `payload_bytes` long.
    Altered,
}

impl Skip {
    /// What the count of them says.
    pub(super) fn why(self) -> &'static str {
        match self {
            Skip::Source => "from bad CSV rows (stage source), which never reached a transform",
            Skip::Sink => "from the sink, whose payload is the chain's output, not its input",
            Skip::Cut => {
                "cut to fit the dead-letter topic (payload_truncated, or a key or header cut)"
            }
            Skip::Altered => {
                "changed since they were written (payload_bytes differs: `sluice dead-letters` \
                 masks the text of secrets)"
            }
        }
    }
}

/// The input options from the command line; the CSV ones are refused for JSONL `input`.
pub(super) fn input_options(
    input: &Path,
    format: Option<InputFormat>,
    delimiter: Option<String>,
    schema: &[String],
    infer_rows: Option<usize>,
    null_if: Vec<String>,
    key_column: Option<String>,
) -> anyhow::Result<InputOptions> {
    // For JSON Lines, `--infer-rows` bounds the look-ahead for the `--key-column` field.
    let infer_rows_unused = infer_rows.is_some() && key_column.is_none();
    let jsonl = format_of(input, format) == InputFormat::Jsonl;
    let csv_only = delimiter.is_some() || !schema.is_empty() || !null_if.is_empty();
    if jsonl && (csv_only || infer_rows_unused) {
        bail!(
            "--delimiter, --schema, --null-if and --infer-rows apply to CSV input (--infer-rows \
             also to --key-column on JSON Lines), not to {}",
            input.display()
        );
    }
    let defaults = InputOptions::default();
    let delimiter = match delimiter {
        None => defaults.delimiter,
        Some(d) => crate::source::config::delimiter_byte(&d).with_context(|| {
            format!(
                "--delimiter {d:?} is not {}",
                crate::source::config::DELIMITER_RULE
            )
        })?,
    };
    let mut types = BTreeMap::new();
    for item in schema {
        let (column, ty) = item
            .split_once('=')
            .with_context(|| format!("--schema {item:?} is not COLUMN=TYPE"))?;
        let ty = serde_json::from_value(serde_json::Value::from(ty))
            .ok()
            .filter(|t| *t != ValueType::Null)
            .with_context(|| {
                format!(
                    "--schema {item:?}: unknown type {ty:?} (expected int, float, bool, string, timestamp or json)"
                )
            })?;
        if types.insert(column.to_owned(), ty).is_some() {
            bail!("--schema {item:?}: column {column:?} is given more than once");
        }
    }
    Ok(InputOptions {
        delimiter,
        schema: types,
        infer_rows: infer_rows.unwrap_or(defaults.infer_rows),
        null_if,
        key_column,
        format,
        ..defaults
    })
}

/// How `transform test` reads its input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum InputFormat {
    /// CSV with a header row, read and typed like the pipeline's CSV source.
    Csv,
    /// JSON Lines: one JSON object per line.
    Jsonl,
    /// What `sluice dead-letters` prints: each letter's record runs again as the message it
    /// was, with its own metadata (letters of bad CSV rows, of the sink, and cut or changed ones
    /// are skipped and counted).
    DeadLetters,
}

/// How `input` is read: as `format` says, else by its extension.
pub(super) fn format_of(input: &Path, format: Option<InputFormat>) -> InputFormat {
    format.unwrap_or(match is_jsonl(input) {
        true => InputFormat::Jsonl,
        false => InputFormat::Csv,
    })
}

/// The records of a `transform test` input, read as the run asks for them, so that a file of any
/// size (or a pipe) runs in bounded memory. An item is an error when the input cannot be read
/// further; the run stops there.
pub struct InputRecords {
    reader: Reader,
    /// JSON Lines lines read while looking for the `--key-column` field, not yet handed out:
    /// rows, and lines that are not one.
    ahead: std::collections::VecDeque<(u64, Result<Row, wire::DecodeError>)>,
    /// Whether a JSON Lines row has been handed out: a first line that is not a JSON object
    /// says the input is not JSON Lines at all (a pretty-printed document, say), a later one is
    /// a bad record.
    rows_read: bool,
    framer: Framer,
    /// The input, when it can pause (a pipe or a terminal), to ask whether it has data.
    pipe: Option<Pipe>,
    /// The first dead letter's record (`Some(None)`: there was none), read before the run to
    /// check that the input is letters.
    first: Option<Option<InputRecord>>,
    /// Whether to look at the first JSON Lines row for the look of a dead letter: set when the
    /// format came from the extension.
    letters_hint: bool,
}

enum Reader {
    Csv(Box<CsvReader>),
    Jsonl(JsonLines),
    Letters(JsonLines),
}

impl Iterator for InputRecords {
    type Item = anyhow::Result<InputRecord>;

    fn next(&mut self) -> Option<Self::Item> {
        match &mut self.reader {
            Reader::Csv(reader) => match reader.next_item() {
                Ok(None) => None,
                Ok(Some(CsvItem::Row { line, row })) => Some(Ok(self.framer.record(line, row))),
                Ok(Some(CsvItem::Bad(bad))) => Some(Ok(InputRecord::Bad(bad))),
                Err(e) => Some(Err(e.into())),
            },
            Reader::Jsonl(lines) => {
                let item = match self.ahead.pop_front() {
                    Some(item) => item,
                    None => match lines.next_row()? {
                        Ok(item) => item,
                        Err(e) => return Some(Err(e)),
                    },
                };
                let (line, row) = match item {
                    (line, Ok(row)) => (line, row),
                    // As the consumer takes a message that is not a JSON object.
                    (line, Err(why)) if self.rows_read => {
                        let reason = why.to_string();
                        return Some(Ok(InputRecord::Undecodable { line, reason }));
                    }
                    (line, Err(why)) => return Some(Err(lines.not_a_row(line, why))),
                };
                self.rows_read = true;
                if std::mem::take(&mut self.letters_hint) && looks_like_letter(&row) {
                    // Run as rows, letters only test what the transform does to letters.
                    crate::errln!(
                        "warning: {} looks like dead letters: pass --format dead-letters to run \
                         the records they hold",
                        lines.shown
                    );
                }
                Some(Ok(self.framer.record(line, row)))
            }
            Reader::Letters(lines) => match self.first.take() {
                // Not read again at the end: on a terminal that would take a second Ctrl-D.
                Some(first) => first.map(Ok),
                None => next_letter(lines),
            },
        }
    }
}

/// Whether a JSON Lines row has the members every dead letter has.
fn looks_like_letter(row: &Row) -> bool {
    ["stage", "kind", "origin", "payload"]
        .iter()
        .all(|k| row.get(k).is_some())
}

/// The record of the next dead letter of `lines` (one item per letter, so that a pipe's pause
/// is noticed after any of them); an error for a line that is not a letter.
fn next_letter(lines: &mut JsonLines) -> Option<anyhow::Result<InputRecord>> {
    let (line, text) = match lines.next_line()? {
        Ok(item) => item,
        Err(e) => return Some(Err(e)),
    };
    Some(letter_record(line, &text).map_err(|e| {
        // A letter pretty-printed over many lines (`jq` without `-c`) ends at its first line.
        let hint = match e.starts_with("EOF while parsing") {
            true => " (one letter per line: `jq -c` prints them so)",
            false => "",
        };
        anyhow::anyhow!(
            "{}:{line}: not a dead letter as `sluice dead-letters` prints them: {e}{hint}",
            lines.shown
        )
    }))
}

/// The record a dead letter (line `line` of the input) holds, as the consumer handed it to the
/// chain: [`InputRecord::Skipped`] for a letter there is nothing to rerun of, the consumer's
/// failure for a message it could not decode, an error for a line that is not a letter.
fn letter_record(line: u64, text: &str) -> Result<InputRecord, String> {
    let read = crate::source::dlq::decode(text.as_bytes())?;
    let letter = read.letter;
    let skip = |why| Ok(InputRecord::Skipped(why));
    let origin = match (letter.stage.as_str(), letter.origin) {
        ("source", _) => return skip(Skip::Source),
        ("sink", _) => return skip(Skip::Sink),
        (_, None) => return Err(format!("stage {:?} with no origin", letter.stage)),
        (_, Some(_)) if !read.whole => return skip(Skip::Cut),
        (_, Some(_)) if read.altered => return skip(Skip::Altered),
        // It did not decode then; decoding it again could only guess at what the letter cannot
        // tell (a message with no value or an empty one, a header with no value or an empty
        // one), so its failure is the one the consumer had.
        (dead_letter::CONSUME_STAGE, Some(_)) => {
            return Ok(InputRecord::Undecodable {
                line,
                reason: letter.reason,
            });
        }
        (_, Some(origin)) => origin,
    };
    // As the consumer does: the last `sluice.types` header counts. The consumer decoded this
    // message, so an empty one was a header with no value, which means no types (an empty value
    // would have failed but for an empty object, which reads the same either way).
    let types = (origin.headers.iter().rev())
        .find(|(k, _)| k == wire::HEADER_TYPES)
        .map(|(_, v)| v.as_slice())
        .filter(|v| !v.is_empty());
    Ok(match wire::decode(Some(&letter.payload), types) {
        Ok(row) => InputRecord::Row {
            line,
            meta: origin,
            row,
        },
        Err(e) => InputRecord::Undecodable {
            line,
            reason: e.to_string(),
        },
    })
}

impl InputRecords {
    /// Whether the next record can be had without waiting for the input longer than `wait`: it
    /// is already read, or the input has data (or its end) to give within `wait`. Always true
    /// for a regular file. A pipe whose writer pauses says no, so that the rows read so far can
    /// run instead of waiting for a full batch.
    pub fn next_is_ready(&self, wait: Duration) -> bool {
        let Some(pipe) = &self.pipe else {
            return true;
        };
        let read = match &self.reader {
            Reader::Csv(reader) => reader.has_buffered_record(),
            Reader::Jsonl(lines) => !self.ahead.is_empty() || lines.has_buffered_line(),
            Reader::Letters(lines) => self.first.is_some() || lines.has_buffered_line(),
        };
        read || wait_for_data(&pipe.0, Some(wait))
    }
}

/// An input that can pause (a pipe, FIFO, terminal or socket): a duplicate of the reader's own
/// descriptor, only ever polled, so the reader keeps its plain blocking reads and its buffer.
struct Pipe(std::fs::File);

impl Pipe {
    /// `None` for a regular file, which never pauses (nor does an input that cannot be
    /// duplicated: it is then read in full batches, as a file is).
    fn of(file: &std::fs::File) -> Option<Pipe> {
        if file.metadata().ok()?.is_file() {
            return None;
        }
        file.try_clone().ok().map(Pipe)
    }
}

/// Whether `file` has data, its end or an error to give within `wait` (`None`: however long it
/// takes). A failed poll says yes, so that the read that follows reports the error.
fn wait_for_data(file: &std::fs::File, wait: Option<Duration>) -> bool {
    use rustix::event::{PollFd, PollFlags, Timespec, poll};
    let mut fds = [PollFd::new(file, PollFlags::IN)];
    let timeout = wait.map(|w| Timespec {
        tv_sec: w.as_secs() as i64,
        tv_nsec: i64::from(w.subsec_nanos()),
    });
    poll(&mut fds, timeout.as_ref()).map_or(true, |n| n > 0)
}

/// A `transform test` input, opened: a file, or a duplicate of stdin's descriptor.
#[derive(Debug)]
struct Input(std::fs::File);

impl std::io::Read for Input {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            match self.0.read(buf) {
                // A descriptor inherited in non-blocking mode (stdin, from some parents): wait
                // for data rather than fail.
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    wait_for_data(&self.0, None);
                }
                r => return r,
            }
        }
    }
}

/// Opens `path`, or stdin for `-`; returns the name messages and the `sluice.file` header use.
fn open_input(path: &Path) -> anyhow::Result<(PathBuf, Input)> {
    if path == Path::new("-") {
        // A duplicate of descriptor 0 rather than /dev/stdin: opening that again fails for a
        // socket or another user's pipe, and starts a redirected file over from its first byte.
        use std::os::fd::AsFd;
        let fd = std::io::stdin()
            .as_fd()
            .try_clone_to_owned()
            .context("reading stdin")?;
        return Ok((PathBuf::from("<stdin>"), Input(fd.into())));
    }
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    Ok((path.to_path_buf(), Input(file)))
}

/// Opens `.jsonl`/`.ndjson`/`.json` (one JSON object per line) or, otherwise, CSV with a header
/// row through the pipeline source's reader (BOM, quoting, inference, bad records by line), and
/// gives every row the metadata `sluice run` would; [`InputOptions::format`] overrides the
/// extension. With [`InputFormat::DeadLetters`], each letter gives its record as the message it
/// was, with the letter's origin as its metadata (or a [`Skip`]). A missing file, a `key_column`
/// that is not a column of the CSV (or a field of any of the first `infer_rows` JSONL rows) and
/// the like are errors here; a JSONL line that is not an object, or a line that is not a letter,
/// is an error from the iterator (or here, when it comes first or before the key column does).
pub fn read_input(path: &Path, opts: &InputOptions) -> anyhow::Result<InputRecords> {
    let (shown, input) = open_input(path)?;
    if let Some(stream) = input
        .0
        .metadata()
        .ok()
        .filter(|m| m.is_file())
        .as_ref()
        .and_then(output_stream)
    {
        // The run would read its own output back as input, and never end.
        bail!(
            "{} is also where this run writes its {stream}; write the output elsewhere",
            path.display()
        );
    }
    let pipe = Pipe::of(&input.0);
    let path = shown.as_path();
    let framer = Framer {
        file: path.file_name().map_or_else(
            || path.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        ),
        // Read apart from the input: a pipe, read once, has none.
        file_id: (pipe.is_none())
            .then(|| crate::source::resume::file_id(path).ok())
            .flatten(),
        offsets: Vec::new(),
        key_column: opts.key_column.clone(),
        topic: opts.topic.clone(),
        partition: opts.partition,
        timestamp_ms: opts.timestamp_ms,
        spread: opts
            .partitions
            .filter(|n| *n > 0)
            .map(|n| (n, opts.partitioner)),
        turn: 0,
        max_record_bytes: opts.max_record_bytes,
    };
    let format = format_of(path, opts.format);
    let mut first = None;
    let (reader, ahead) = if format == InputFormat::DeadLetters {
        let mut lines = JsonLines::new(path, input);
        // Read now, so that a file that is not letters fails before the chain is compiled.
        first = Some(next_letter(&mut lines).transpose()?);
        (Reader::Letters(lines), Default::default())
    } else if format == InputFormat::Jsonl {
        let mut lines = JsonLines::new(path, input);
        // A key column is a field of some row, not of a header: look ahead for the first row that
        // has it, so that a misspelt one fails before any row runs, as with CSV.
        let mut ahead = std::collections::VecDeque::new();
        if let Some(k) = &opts.key_column {
            let limit = opts.infer_rows.max(1);
            loop {
                let Some(item) = lines.next_row() else {
                    bail!(
                        "--key-column {k:?} is not a field of any row of {}",
                        path.display()
                    );
                };
                let (line, row) = item?;
                let found = match row {
                    Ok(row) => {
                        let found = row.get(k).is_some();
                        if !found
                            && ahead.is_empty()
                            && opts.format.is_none()
                            && looks_like_letter(&row)
                        {
                            bail!(
                                "{} looks like dead letters, whose rows have no {k:?} field: \
                                 pass --format dead-letters to run the records they hold (or \
                                 --format jsonl to run the letters themselves)",
                                path.display()
                            );
                        }
                        ahead.push_back((line, Ok(row)));
                        found
                    }
                    Err(why) if ahead.is_empty() => return Err(lines.not_a_row(line, why)),
                    // After a row, a bad record (as when it is read in turn).
                    Err(why) => {
                        ahead.push_back((line, Err(why)));
                        false
                    }
                };
                if found {
                    break;
                }
                if ahead.len() >= limit {
                    bail!(
                        "--key-column {k:?} is not a field of any of the first {limit} rows of {} \
                         (--infer-rows sets how many rows to look at)",
                        path.display()
                    );
                }
                // The rows looked at are held until they run: bounded by bytes too, as CSV
                // inference is, so that a file of wide rows cannot fill memory first.
                if lines.bytes_read >= crate::source::csv::SAMPLE_BYTES {
                    bail!(
                        "--key-column {k:?} is not a field of any of the first {} rows of {} \
                         (the look-ahead holds at most {} MiB of rows)",
                        ahead.len(),
                        path.display(),
                        crate::source::csv::SAMPLE_BYTES >> 20
                    );
                }
            }
        }
        (Reader::Jsonl(lines), ahead)
    } else {
        let csv = CsvOptions {
            delimiter: opts.delimiter,
            schema: opts.schema.clone(),
            infer_rows: opts.infer_rows.max(1),
            max_record_bytes: opts.max_record_bytes,
            null_if: opts.null_if.clone(),
        };
        let reader = CsvReader::from_reader(path, input, &csv, Arc::default(), None)?;
        // JSON Lines read as CSV give a bad row for every line, which a run would take for the
        // input's fault: unless --format says CSV, stop and say what to do instead.
        let first_column = reader.columns().first().map(|c| &**c).unwrap_or_default();
        if opts.format.is_none() && first_column.starts_with('{') {
            let (format, what) = match first_column.starts_with(r#"{"stage":"#) {
                true => ("dead-letters", "run the records of dead letters"),
                false => ("jsonl", "read it as JSON Lines"),
            };
            bail!(
                "{} would be read as CSV, but its first line looks like JSON: pass --format \
                 {format} to {what} (or --format csv if it is CSV)",
                path.display()
            );
        }
        if let Some(k) = &opts.key_column
            && !reader.columns().iter().any(|c| &**c == k)
        {
            bail!("--key-column {k:?} is not a column of {}", path.display());
        }
        (Reader::Csv(Box::new(reader)), Default::default())
    };
    Ok(InputRecords {
        reader,
        ahead,
        rows_read: false,
        framer,
        pipe,
        first,
        letters_hint: opts.format.is_none(),
    })
}

/// Gives each input row what the consumer would hand the chain: the row as the source encodes it
/// and the consumer decodes it (or the bad row the source makes of it instead), with the
/// metadata of its message.
struct Framer {
    /// The input's file name, for the `sluice.file` header.
    file: String,
    /// Its fingerprint, for the `sluice.file_id` header (none for a pipe).
    file_id: Option<String>,
    /// The next row's offset in each partition.
    offsets: Vec<i64>,
    /// The field whose value becomes the message key.
    key_column: Option<String>,
    /// The topic, partition and timestamp every record reports.
    topic: String,
    partition: i32,
    timestamp_ms: Option<i64>,
    /// With `--partitions`: how many, and how a key picks one.
    spread: Option<(i32, Partitioner)>,
    /// The partition the next record the partitioner leaves to chance goes to.
    turn: i32,
    /// The largest message the source would produce.
    max_record_bytes: usize,
}

impl Framer {
    fn record(&mut self, line: u64, row: Row) -> InputRecord {
        let key = self
            .key_column
            .as_deref()
            .and_then(|k| row.get(k))
            .and_then(wire::key_of);
        let (file, max) = (&self.file, self.max_record_bytes);
        let enc = match crate::source::encode_message(line, &row, key.as_deref(), file, max) {
            Ok(enc) => enc,
            Err(bad) => return InputRecord::Bad(bad),
        };
        let row = match wire::decode(Some(&enc.value), Some(enc.types.as_bytes())) {
            Ok(row) => row,
            Err(e) => {
                return InputRecord::Bad(BadRow {
                    line,
                    kind: BadRowKind::Parse,
                    reason: format!("the consumer cannot decode its message: {e}"),
                    payload: enc.value,
                });
            }
        };
        let partition = match self.spread {
            None => self.partition,
            Some((n, partitioner)) => {
                let chosen = partitioner.partition(key.as_deref().map(str::as_bytes), n);
                chosen.unwrap_or_else(|| {
                    // A run's producer picks one at random; here each gets the next in turn.
                    let p = self.turn;
                    self.turn = (self.turn + 1) % n;
                    p
                })
            }
        };
        let slot = usize::try_from(partition).unwrap_or_default();
        if self.offsets.len() <= slot {
            self.offsets.resize(slot + 1, 0);
        }
        let meta = RecordMeta {
            topic: self.topic.clone(),
            partition,
            offset: self.offsets[slot],
            key: key.map(String::into_bytes),
            timestamp_ms: self.timestamp_ms,
            headers: [
                (wire::HEADER_TYPES, enc.types.into_bytes()),
                (wire::HEADER_FILE, self.file.clone().into_bytes()),
                (wire::HEADER_LINE, line.to_string().into_bytes()),
            ]
            .into_iter()
            .chain(
                (self.file_id.as_ref()).map(|id| (wire::HEADER_FILE_ID, id.clone().into_bytes())),
            )
            .map(|(k, v)| (k.to_owned(), v))
            .collect(),
        };
        self.offsets[slot] += 1;
        InputRecord::Row { line, meta, row }
    }
}

/// Whether `transform test` reads `path` as JSON Lines (else as CSV). A `.json` file is read as
/// JSON Lines too: read as CSV, its rows would silently vanish, while a pretty-printed document
/// fails on its first line with a parse error naming the file and line.
fn is_jsonl(path: &Path) -> bool {
    path.extension().is_some_and(|e| {
        ["jsonl", "ndjson", "json"]
            .iter()
            .any(|j| e.eq_ignore_ascii_case(j))
    })
}

/// The rows of a JSON Lines file, one JSON object per non-blank line, read as they are needed.
#[derive(Debug)]
pub(super) struct JsonLines {
    reader: std::io::BufReader<Input>,
    /// The input as error messages name it.
    shown: String,
    /// Lines read so far.
    line: u64,
    /// Set after a read error, which ends the rows.
    failed: bool,
    /// Bytes read so far, blank lines included.
    bytes_read: usize,
}

impl JsonLines {
    pub(super) fn open(path: &Path) -> anyhow::Result<JsonLines> {
        let (shown, input) = open_input(path)?;
        Ok(JsonLines::new(&shown, input))
    }

    fn new(path: &Path, input: Input) -> JsonLines {
        JsonLines {
            reader: std::io::BufReader::new(input),
            shown: path.display().to_string(),
            line: 0,
            failed: false,
            bytes_read: 0,
        }
    }

    /// The next non-blank line (without its line break) and its 1-based number, as bytes: a
    /// row's line that is not UTF-8 is a message the consumer cannot decode, not the end.
    fn next_bytes(&mut self) -> Option<anyhow::Result<(u64, Vec<u8>)>> {
        if self.failed {
            return None;
        }
        let mut bytes = Vec::new();
        loop {
            bytes.clear();
            match self.reader.read_until(b'\n', &mut bytes) {
                Ok(0) => return None,
                Ok(n) => {
                    self.line += 1;
                    self.bytes_read += n;
                }
                Err(e) => {
                    // Ends the lines: the reader would go on returning the error.
                    self.failed = true;
                    let at = format!("reading {} at line {}", self.shown, self.line + 1);
                    let e = anyhow::Error::new(e).context(at);
                    return Some(Err(e));
                }
            }
            // A byte-order mark, as some editors write at the start of a UTF-8 file.
            if self.line == 1 && bytes.starts_with("\u{feff}".as_bytes()) {
                bytes.drain(.."\u{feff}".len());
            }
            if !bytes.trim_ascii().is_empty() {
                while matches!(bytes.last(), Some(b'\n' | b'\r')) {
                    bytes.pop();
                }
                return Some(Ok((self.line, bytes)));
            }
        }
    }

    /// [`next_bytes`](Self::next_bytes) as text; a line that is not UTF-8 is an error.
    pub(super) fn next_line(&mut self) -> Option<anyhow::Result<(u64, String)>> {
        Some(self.next_bytes()?.and_then(|(line, bytes)| {
            let text = String::from_utf8(bytes).map_err(|_| {
                anyhow::anyhow!(
                    "reading {} at line {line}: stream did not contain valid UTF-8",
                    self.shown
                )
            })?;
            Ok((line, text))
        }))
    }

    /// The next row and its 1-based line, typed as the consumer types a message of a plain JSON
    /// topic, so big integers keep their digits and duplicate names and field order survive; or
    /// why the line is not one (inside), as the consumer would fail its message.
    fn next_row(&mut self) -> Option<anyhow::Result<(u64, Result<Row, wire::DecodeError>)>> {
        let (line, bytes) = match self.next_bytes()? {
            Ok(item) => item,
            Err(e) => return Some(Err(e)),
        };
        Some(Ok((line, wire::decode(Some(&bytes), None))))
    }

    /// Line `line` is not a row, for `why`: an error naming the input and the line.
    fn not_a_row(&self, line: u64, why: wire::DecodeError) -> anyhow::Error {
        match why {
            wire::DecodeError::Syntax(_) => anyhow::anyhow!(
                "{}:{line}: not a JSON object (expected one JSON object per line): {why}",
                self.shown
            ),
            why => anyhow::anyhow!("{}:{line}: {why}", self.shown),
        }
    }

    /// Whether a whole line that is not blank (blank ones are skipped) is already read into the
    /// buffer: then the next row needs no more input.
    fn has_buffered_line(&self) -> bool {
        let buf = self.reader.buffer();
        // Only up to the last line break: what follows it may still be arriving.
        let Some(end) = buf.iter().rposition(|&b| b == b'\n') else {
            return false;
        };
        buf[..end]
            .split(|&b| b == b'\n')
            .any(|line| std::str::from_utf8(line).map_or(true, |t| !t.trim().is_empty()))
    }
}
