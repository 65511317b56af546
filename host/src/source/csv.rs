//! Streaming CSV reader: header, BOM, per-column type inference or an explicit schema, and bad
//! rows reported with their line instead of skipped.
//!
//! The file is read through a fixed-size buffer, so files far larger than memory stream through.
//! Only the first `infer_rows` records (at most [`SAMPLE_BYTES`] of them) are held in memory at
//! once, to infer the column types before the first row is typed. Quoting follows RFC 4180 (the `csv` crate): quoted fields may
//! hold delimiters, doubled quotes and newlines; a record's line is the line it starts on.
//!
//! Typing a field: an empty field is null, but for `""` in a string column, which is an empty
//! string (as Snowflake loads it); otherwise the column's type decides (explicit `schema`
//! entry, else inferred). Inference picks, per column, the first of int, float, bool, timestamp
//! that every non-empty sampled value parses as, else string. Inference is conservative where a
//! wrong guess would lose data: numbers with leading zeros (`007`, zip codes) stay strings, and so
//! do `NaN`/`inf`. Because an inferred type is then a contract for the whole file (a table column
//! has one type), a later value that does not parse is a bad row, like one under an explicit
//! schema, and so is one that inference would have refused for that type (`01234` in an int
//! column, digits a float loses, `NaN`, `yes` in a bool column), which a declared type reads.

use std::collections::{HashSet, VecDeque};
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use csv::ByteRecord;

use super::SourceError;
use crate::row::{Name, Row, Value, ValueType, parse_timestamp};

/// Why a row was rejected; the `kind` of its dead letter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BadRowKind {
    /// Its field count differs from the header's.
    Ragged,
    /// A field is not valid UTF-8.
    InvalidUtf8,
    /// A value does not parse as its column's type.
    Parse,
    /// The encoded row is larger than the largest message the broker takes.
    TooLarge,
    /// A quoted field is still open at the end of the file: the record took in every line after
    /// it, so they are its payload, not rows.
    UnclosedQuote,
}

impl BadRowKind {
    /// Every kind.
    pub const ALL: [BadRowKind; 5] = [
        BadRowKind::Ragged,
        BadRowKind::InvalidUtf8,
        BadRowKind::Parse,
        BadRowKind::TooLarge,
        BadRowKind::UnclosedQuote,
    ];

    /// The dead-letter `kind` string.
    pub fn as_str(self) -> &'static str {
        match self {
            BadRowKind::Ragged => "ragged_row",
            BadRowKind::InvalidUtf8 => "invalid_utf8",
            BadRowKind::Parse => "parse",
            BadRowKind::TooLarge => "too_large",
            BadRowKind::UnclosedQuote => "unclosed_quote",
        }
    }
}

/// How a parse error's reason tells the user to fix an inferred type, in pipeline.json's terms
/// (`transform test` words it with its own flag).
pub const SCHEMA_HINT: &str = " (type inferred from the first rows; set source.schema to override)";

/// Said of a value that does not parse and reads like a null marker (`NULL`, `\N`, `N/A`).
pub const NULL_HINT: &str = " (a null marker? list it in source.null_if)";

/// Whether `text` is one of the ways files write a null.
fn looks_null(text: &str) -> bool {
    ["null", "\\n", "na", "n/a", "none", "nil"]
        .iter()
        .any(|m| text.trim().eq_ignore_ascii_case(m))
}

/// A rejected CSV record.
#[derive(Debug, Clone, PartialEq)]
pub struct BadRow {
    /// The 1-based line the record starts on.
    pub line: u64,
    /// Why.
    pub kind: BadRowKind,
    /// The human-readable reason.
    pub reason: String,
    /// The record, re-encoded as one CSV record with the file's delimiter (quoting may differ
    /// from the original bytes; invalid UTF-8 is kept as is).
    pub payload: Vec<u8>,
}

/// One record of the file.
#[derive(Debug, Clone, PartialEq)]
pub enum CsvItem {
    /// A well-formed, typed row.
    Row {
        /// The 1-based line the record starts on.
        line: u64,
        /// The row.
        row: Row,
    },
    /// A record that could not be typed.
    Bad(BadRow),
}

/// The most bytes of records inference holds: a thousand wide rows (JSON documents of up to a
/// message's megabyte) held a gigabyte. Files of rows under 64 kB get all `infer_rows`.
pub const SAMPLE_BYTES: usize = 64 << 20;

/// How to read a file: delimiter, schema and inference depth.
#[derive(Debug, Clone)]
pub struct CsvOptions {
    /// The field delimiter byte.
    pub delimiter: u8,
    /// Explicit column types by column name.
    pub schema: std::collections::BTreeMap<String, ValueType>,
    /// How many records inference samples (no more than [`SAMPLE_BYTES`] of them).
    pub infer_rows: usize,
    /// The largest message the records become (`usize::MAX`: no limit). A record whose fields
    /// alone are larger is a `too_large` bad row, and takes no part in type inference, so that
    /// it does not change a column's type for all the others. (A record under the limit may
    /// still encode past it, JSON escapes being longer than the bytes they stand for; the source
    /// finds that one when it encodes the row, after inference.)
    pub max_record_bytes: usize,
    /// Field texts that are null in any column (`\N`, `NULL`; `""` makes `""` null too), as
    /// Snowflake's `NULL_IF`; inference skips them as it skips empty fields.
    pub null_if: Vec<String>,
}

/// A streaming reader over one CSV file.
pub struct CsvReader {
    path: PathBuf,
    rdr: csv::Reader<Box<dyn Read + Send + Sync>>,
    delimiter: u8,
    columns: Vec<Name>,
    types: Vec<ValueType>,
    /// Which types came from inference, for error messages.
    inferred: Vec<bool>,
    sample: VecDeque<ByteRecord>,
    record: ByteRecord,
    bytes_read: Arc<AtomicU64>,
    lines: Arc<Mutex<LineIndex>>,
    /// The position of the last record, when a quoted field in it is still open at the end of
    /// the file.
    unclosed: Option<u64>,
    /// See [`CsvReader::bytes_through`].
    through: u64,
    /// [`CsvOptions::max_record_bytes`].
    max_record_bytes: usize,
    /// The fields of the record being typed that were written `""`.
    quoted_empty: Vec<u32>,
    /// [`CsvOptions::null_if`].
    null_if: Vec<String>,
}

impl std::fmt::Debug for CsvReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CsvReader")
            .field("path", &self.path)
            .field("columns", &self.columns)
            .finish()
    }
}

/// Counts bytes read, for progress and ETA.
struct Counting<R> {
    inner: R,
    counter: Arc<AtomicU64>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.counter.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// Where the line breaks are, so a record's byte offset maps to its line.
///
/// The `csv` crate's own line count misses newlines inside quoted fields (its fast path copies
/// them without counting), and its record positions may point at the previous record's
/// terminator or at skipped blank lines. So lines are counted here from the bytes the parser
/// reads, as runs of `\r`/`\n` bytes: a record starts after the run its position falls in. A
/// line ends at `\n`, `\r\n` or a lone `\r` (classic Mac files), as the parser ends records. Only
/// the runs between the last looked-up record and the read-ahead are kept, so memory grows with
/// the line breaks inside one record, not with the file.
#[derive(Debug)]
struct LineIndex {
    /// Runs of line-break bytes not yet passed: start, end (exclusive), line ends in it, and
    /// whether it ends a record (false when it is inside a quoted field).
    runs: VecDeque<(u64, u64, u64, bool)>,
    /// Line ends in the runs already passed.
    before: u64,
    /// Whether the last byte seen is `\r`, so that a `\n` right after it, in this read or the
    /// next, does not end a second line.
    after_cr: bool,
    /// Whether that `\r` was outside a quoted field.
    cr_outside: bool,
    /// Whether the file's lines end with a `\r` alone (old Mac exports), told by its first line
    /// break outside quotes; `None` before it.
    cr_ends: Option<bool>,
    /// Bytes seen.
    offset: u64,
    /// The field delimiter, for [`Quoting`].
    delimiter: u8,
    /// Where the last byte seen left the quoting.
    quoting: Quoting,
    /// Whether the input has ended.
    eof: bool,
    /// Bytes of the record being read, as written: since the last line break outside quotes.
    record_len: u64,
    /// Past this many bytes, the rest of a record is skipped (see [`record_cap`]).
    cap: u64,
    /// Whether the bytes read are skipped, to the end of a record cut at `cap`, and where the
    /// quoting was when it was cut.
    skipping: Option<Quoting>,
    /// Line ends in the bytes skipped since the record was cut.
    skipped_lines: u64,
    /// Where records were cut, as offsets in the bytes the parser gets.
    cuts: VecDeque<u64>,
    /// The index of the field being read in its record.
    field: u32,
    /// Bytes of that field so far, as written.
    field_len: u64,
    /// Fields written as `""`, which the parser hands over as empty, like a field with nothing
    /// in it: where each opens (an offset in the bytes the parser gets) and its index in its
    /// record. Kept from the last record looked up to the read-ahead, like `runs`.
    quoted_empty: VecDeque<(u64, u32)>,
}

/// The most bytes of one record, as written, that the parser gets; the rest, to the record's
/// end, is skipped and the record is a `too_large` bad row. A quote left open in a large file
/// would otherwise make the rest of the file one record held in memory (gigabytes), and a stop
/// would wait for it to be read. Four times the largest message and 64 KiB: a record whose
/// fields fit in a message never comes near it, however many quotes and delimiters it has.
fn record_cap(max_record_bytes: usize) -> u64 {
    match max_record_bytes {
        usize::MAX => u64::MAX,
        max => (max as u64).saturating_mul(4).saturating_add(64 << 10),
    }
}

/// Where a byte falls in a CSV field, as the `csv` crate reads it (RFC 4180 quotes, non-strict):
/// a quote opens a quoted field only at the start of a field, and inside one `""` is a quote.
/// Kept only to tell a line break that ends a record from one inside a quoted field.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Quoting {
    /// At the start of a field.
    Start,
    /// In a field that did not start with a quote: a quote here is text.
    Unquoted,
    /// In a quoted field.
    Quoted,
    /// Just after a quote in a quoted field: either its end or the first of `""`.
    QuoteInQuoted,
}

impl LineIndex {
    fn new(delimiter: u8) -> LineIndex {
        LineIndex {
            runs: VecDeque::new(),
            before: 0,
            offset: 0,
            after_cr: false,
            cr_outside: false,
            cr_ends: None,
            delimiter,
            quoting: Quoting::Start,
            eof: false,
            record_len: 0,
            cap: u64::MAX,
            skipping: None,
            skipped_lines: 0,
            cuts: VecDeque::new(),
            field: 0,
            field_len: 0,
            quoted_empty: VecDeque::new(),
        }
    }

    /// Reads `buf`, the next bytes of the file, and appends to `out` what the parser gets of
    /// them: all of them, but for the part of a record past [`LineIndex::cap`]. Where that part
    /// ends, the parser gets a quote to close the field it was cut in, if it was cut in a quoted
    /// one, and then the record's line break. Offsets here are offsets in what the parser gets.
    fn feed(&mut self, buf: &[u8], out: &mut Vec<u8>) {
        // `""` ends the file (told once: the parser reads again after the end).
        if buf.is_empty()
            && !self.eof
            && self.field_len == 2
            && self.quoting == Quoting::QuoteInQuoted
        {
            self.quoted_empty.push_back((self.offset - 2, self.field));
        }
        self.eof |= buf.is_empty();
        let (base, out_start) = (self.offset, out.len());
        // Where the bytes not yet appended to `out` start.
        let mut from = 0;
        for (i, &b) in buf.iter().enumerate() {
            let brk = b == b'\n' || b == b'\r';
            let was = self.quoting;
            self.quoting = match (was, b) {
                (Quoting::Quoted, b'"') => Quoting::QuoteInQuoted,
                (Quoting::Quoted, _) => Quoting::Quoted,
                (Quoting::QuoteInQuoted, b'"') | (Quoting::Start, b'"') => Quoting::Quoted,
                (_, b) if b == self.delimiter || brk => Quoting::Start,
                _ => Quoting::Unquoted,
            };
            // Where lines end with `\r` alone, each `\r` ends a line, and each `\n` that does not
            // follow one (CRLF is one). Where they end with LF or CRLF, only `\n` does: a lone
            // `\r` in a quoted field is text there, as an editor shows it, and counted it would
            // put every later line number one past the editor's. Until the first break outside
            // quotes tells which, the first rule (the two agree on it but for a CRLF's `\n`).
            let deciding = self.cr_ends.is_none();
            if deciding {
                if self.after_cr && self.cr_outside {
                    self.cr_ends = Some(b != b'\n');
                } else if b == b'\n' && was != Quoting::Quoted {
                    self.cr_ends = Some(false);
                }
            }
            let nl = match self.cr_ends {
                // The `\r` of the CRLF that told it was counted.
                Some(false) if deciding && self.after_cr => 0,
                Some(false) => u64::from(b == b'\n'),
                _ => u64::from(b == b'\r' || (b == b'\n' && !self.after_cr)),
            };
            self.cr_outside = b == b'\r' && was != Quoting::Quoted;
            self.after_cr = b == b'\r';
            let ends = brk && was != Quoting::Quoted;
            if let Some(cut_in) = self.skipping {
                if !ends {
                    self.skipped_lines += nl;
                    continue;
                }
                // The cut record's end: its skipped lines count before the records after it.
                let at = base + (out.len() - out_start) as u64;
                if cut_in == Quoting::Quoted {
                    out.push(b'"');
                }
                let lines = std::mem::take(&mut self.skipped_lines);
                self.runs.push_back((at, at, lines, false));
                self.skipping = None;
                from = i;
            } else if !ends && self.record_len >= self.cap {
                out.extend_from_slice(&buf[from..i]);
                self.cuts.push_back(base + (out.len() - out_start) as u64);
                self.skipping = Some(was);
                self.skipped_lines = nl;
                continue;
            }
            self.record_len = if ends { 0 } else { self.record_len + 1 };
            let field_ends = ends || (b == self.delimiter && was != Quoting::Quoted);
            if !field_ends {
                self.field_len += 1;
            } else {
                // Only `""` leaves a field two bytes long just after a quote in a quoted field.
                if self.field_len == 2 && was == Quoting::QuoteInQuoted {
                    let at = base + (out.len() - out_start + (i - from)) as u64;
                    self.quoted_empty.push_back((at - 2, self.field));
                }
                // Saturating: a record of 4 Gi fields is possible only with no size limit.
                self.field = if ends {
                    0
                } else {
                    self.field.saturating_add(1)
                };
                self.field_len = 0;
            }
            if !brk {
                continue;
            }
            let at = base + (out.len() - out_start + (i - from)) as u64;
            match self.runs.back_mut() {
                Some(run) if run.1 == at => {
                    run.1 += 1;
                    run.2 += nl;
                    // A cut record's skipped lines, right before its line break.
                    run.3 |= ends;
                }
                _ => self.runs.push_back((at, at + 1, nl, ends)),
            }
        }
        if self.skipping.is_none() {
            out.extend_from_slice(&buf[from..]);
        }
        self.offset = base + (out.len() - out_start) as u64;
    }

    /// Whether the record at `offset` was cut at the cap: a cut after it, before its end (a
    /// line break outside quotes). Cuts before it are forgotten.
    fn is_cut(&mut self, offset: u64) -> bool {
        while self.cuts.front().is_some_and(|&cut| cut <= offset) {
            self.cuts.pop_front();
        }
        self.cut_after(offset)
    }

    /// Appends to `into` the index of every field written as `""` in the record at `offset`.
    /// Fields of records before it are forgotten, so records must be looked up in order.
    fn quoted_empty(&mut self, offset: u64, into: &mut Vec<u32>) {
        while self
            .quoted_empty
            .front()
            .is_some_and(|&(at, _)| at < offset)
        {
            self.quoted_empty.pop_front();
        }
        if self.quoted_empty.is_empty() {
            return;
        }
        // The record's own line break: the first that ends a record after `offset`, which may
        // point at the line break before it (see the type's doc).
        let end = (self.runs.iter())
            .find(|run| run.3 && run.0 > offset)
            .map_or(u64::MAX, |run| run.0);
        into.extend(
            (self.quoted_empty.iter())
                .take_while(|&&(at, _)| at < end)
                .map(|&(_, field)| field),
        );
    }

    /// [`is_cut`](LineIndex::is_cut), forgetting nothing.
    fn cut_after(&self, offset: u64) -> bool {
        let Some(&cut) = self.cuts.iter().find(|&&cut| cut > offset) else {
            return false;
        };
        // Runs are in file order: from the record's own (not from the first kept, which for
        // an inference sample is every line since the header).
        let from = self.runs.partition_point(|run| run.0 <= offset);
        !(self.runs.range(from..))
            .take_while(|run| run.0 < cut)
            .any(|run| run.3)
    }

    /// Whether a record ends past `offset`, in bytes already read: a line break after the one at
    /// `offset` that is not inside a quoted field.
    fn break_after(&self, offset: u64) -> bool {
        self.runs
            .iter()
            .any(|&(start, _, _, ends)| ends && start > offset)
    }

    /// The 1-based line of the record whose position is `offset`; offsets must be looked up in
    /// ascending order.
    fn line_of(&mut self, offset: u64) -> u64 {
        while let Some(&(start, _, nl, _)) = self.runs.front() {
            if start > offset {
                break;
            }
            self.runs.pop_front();
            self.before += nl;
        }
        self.before + 1
    }
}

/// Feeds every byte of the file into a [`LineIndex`], and hands the parser what it lets through.
struct Lines<R> {
    inner: R,
    index: Arc<Mutex<LineIndex>>,
    /// The bytes last read from the file.
    chunk: Vec<u8>,
    /// What the parser gets of them, from `at` on.
    out: Vec<u8>,
    at: usize,
}

impl<R> Lines<R> {
    fn new(inner: R, index: Arc<Mutex<LineIndex>>) -> Lines<R> {
        Lines {
            inner,
            index,
            chunk: vec![0; 64 * 1024],
            out: Vec::new(),
            at: 0,
        }
    }
}

impl<R: Read> Read for Lines<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.at < self.out.len() || buf.is_empty() {
                let n = buf.len().min(self.out.len() - self.at);
                buf[..n].copy_from_slice(&self.out[self.at..self.at + n]);
                self.at += n;
                return Ok(n);
            }
            let n = self.inner.read(&mut self.chunk)?;
            self.out.clear();
            self.at = 0;
            (self.index.lock().unwrap_or_else(|e| e.into_inner()))
                .feed(&self.chunk[..n], &mut self.out);
            if n == 0 {
                return Ok(0);
            }
        }
    }
}

/// `input` (read from `path`) past a UTF-8 byte-order mark (Excel writes one).
fn skip_bom(
    path: &Path,
    input: impl Read + Send + Sync + 'static,
    counter: Arc<AtomicU64>,
) -> Result<Box<dyn Read + Send + Sync>, SourceError> {
    let open_err = |source| SourceError::Open {
        path: path.to_path_buf(),
        source,
    };
    let mut file = Counting {
        inner: input,
        counter,
    };
    let mut head = [0u8; 3];
    let mut n = 0;
    while n < 3 {
        match file.read(&mut head[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(open_err(e)),
        }
    }
    // Excel's "Unicode Text" and other Windows exports: every other byte a zero, which would read
    // as a header that is not UTF-8, or as columns with NULs in their names.
    if n >= 2 && (head[..2] == [0xFF, 0xFE] || head[..2] == [0xFE, 0xFF]) {
        return Err(SourceError::Header {
            path: path.to_path_buf(),
            reason: "the file is UTF-16 (its byte-order mark says so), and sluice reads UTF-8: \
                     convert it first (iconv -f UTF-16 -t UTF-8)"
                .into(),
        });
    }
    let keep = if head[..n] == [0xEF, 0xBB, 0xBF] {
        0
    } else {
        n
    };
    Ok(Box::new(io::Cursor::new(head[..keep].to_vec()).chain(file)))
}

impl CsvReader {
    /// Opens a file, reads its header and infers the column types. `bytes_read` counts the bytes
    /// consumed from the file. `types`, when given, skips inference (e.g. on a second loop).
    pub fn open(
        path: &Path,
        opts: &CsvOptions,
        bytes_read: Arc<AtomicU64>,
        types: Option<&[ValueType]>,
    ) -> Result<CsvReader, SourceError> {
        let file = File::open(path).map_err(|source| SourceError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        CsvReader::from_reader(path, file, opts, bytes_read, types)
    }

    /// [`open`](CsvReader::open) on an input that is already open (stdin, say); `path` names it
    /// in errors.
    pub fn from_reader(
        path: &Path,
        input: impl Read + Send + Sync + 'static,
        opts: &CsvOptions,
        bytes_read: Arc<AtomicU64>,
        types: Option<&[ValueType]>,
    ) -> Result<CsvReader, SourceError> {
        let lines = Arc::new(Mutex::new(LineIndex::new(opts.delimiter)));
        let input = Lines::new(skip_bom(path, input, bytes_read.clone())?, lines.clone());
        let mut rdr = csv::ReaderBuilder::new()
            .delimiter(opts.delimiter)
            .has_headers(false)
            .flexible(true)
            .buffer_capacity(64 * 1024)
            .from_reader(Box::new(input) as Box<dyn Read + Send + Sync>);
        let mut header = ByteRecord::new();
        let read_err = |line, source| SourceError::Read {
            path: path.to_path_buf(),
            line,
            source,
        };
        if !rdr
            .read_byte_record(&mut header)
            .map_err(|e| read_err(1, e))?
        {
            return Err(SourceError::Header {
                path: path.to_path_buf(),
                reason: "the file is empty".into(),
            });
        }
        {
            let mut index = lines.lock().unwrap_or_else(|e| e.into_inner());
            // From the first record on: a header that long is refused below anyway.
            index.cap = record_cap(opts.max_record_bytes);
            if index.eof && index.quoting == Quoting::Quoted {
                return Err(SourceError::Header {
                    path: path.to_path_buf(),
                    reason: "a quoted name is not closed before the end of the file".into(),
                });
            }
        }
        let columns = header_names(&header).map_err(|reason| SourceError::Header {
            path: path.to_path_buf(),
            reason,
        })?;
        for name in opts.schema.keys() {
            if !columns.iter().any(|c| &**c == name) {
                return Err(SourceError::Header {
                    path: path.to_path_buf(),
                    reason: format!("schema names column {name:?}, which the header does not have"),
                });
            }
        }
        let mut reader = CsvReader {
            path: path.to_path_buf(),
            rdr,
            delimiter: opts.delimiter,
            types: vec![ValueType::String; columns.len()],
            inferred: vec![false; columns.len()],
            columns,
            sample: VecDeque::new(),
            record: ByteRecord::new(),
            bytes_read,
            lines,
            unclosed: None,
            through: 0,
            max_record_bytes: opts.max_record_bytes,
            quoted_empty: Vec::new(),
            null_if: opts.null_if.clone(),
        };
        if let Some(types) = types {
            reader.types = types.to_vec();
            reader.inferred = reader
                .columns
                .iter()
                .map(|c| !opts.schema.contains_key(&**c))
                .collect();
            return Ok(reader);
        }
        // Nothing to infer when the schema types every column: do not read ahead for it (on a
        // pipe, that would hold the first rows until `infer_rows` more had arrived).
        let typed = reader
            .columns
            .iter()
            .all(|c| opts.schema.contains_key(&**c));
        let mut sampled = 0;
        while !typed && reader.sample.len() < opts.infer_rows && sampled < SAMPLE_BYTES {
            let mut rec = ByteRecord::new();
            if !reader.read_record(&mut rec)? {
                break;
            }
            sampled += rec.as_slice().len();
            reader.sample.push_back(rec);
        }
        let sample = reader.sample.iter().filter(|rec| {
            !reader.is_unclosed(rec)
                && rec.as_slice().len() <= reader.max_record_bytes
                && !(reader.lines.lock().unwrap_or_else(|e| e.into_inner()))
                    .cut_after(position(rec))
        });
        let inferred = infer(sample, reader.columns.len(), &opts.null_if);
        for (i, name) in reader.columns.iter().enumerate() {
            match opts.schema.get(&**name) {
                Some(ty) => reader.types[i] = *ty,
                None => {
                    reader.types[i] = inferred[i];
                    reader.inferred[i] = true;
                }
            }
        }
        Ok(reader)
    }

    /// The column names, in order (duplicates renamed `name_2`, blanks `column_<n>`, skipping
    /// names the header has).
    pub fn columns(&self) -> &[Name] {
        &self.columns
    }

    /// The column types, in order.
    pub fn types(&self) -> &[ValueType] {
        &self.types
    }

    /// Bytes consumed from the file so far (read ahead of the records returned).
    pub fn bytes_read(&self) -> u64 {
        self.bytes_read.load(Ordering::Relaxed)
    }

    /// How far into the file the records returned so far go: where the last one starts, and
    /// once the end is reached, the whole file. Not [`bytes_read`](Self::bytes_read), which runs
    /// ahead by a buffer and by the records type inference read: a progress estimate from it
    /// took a small file's total for a fraction of its records.
    pub fn bytes_through(&self) -> u64 {
        self.through
    }

    fn line_of(&self, byte: u64) -> u64 {
        self.lines
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .line_of(byte)
    }

    /// Whether the next record is (most likely) already read from the file, so that
    /// [`next_item`](CsvReader::next_item) returns without waiting on it: an inference sample
    /// left, or a line break after the parser's position that is not inside a quoted field.
    pub fn has_buffered_record(&self) -> bool {
        !self.sample.is_empty()
            || self
                .lines
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .break_after(self.rdr.position().byte())
    }

    /// The approximate line the parser is at (the `csv` crate's count), for read errors only.
    fn next_line(&self) -> u64 {
        self.rdr.position().line()
    }

    /// Reads the next record from the file into `rec`; false at the end.
    fn read_record(&mut self, rec: &mut ByteRecord) -> Result<bool, SourceError> {
        let line = self.next_line();
        let got = self
            .rdr
            .read_byte_record(rec)
            .map_err(|source| SourceError::Read {
                path: self.path.clone(),
                line,
                source,
            })?;
        // The parser reads past the end only inside the last record, so a quote open there is
        // open in that record.
        let lines = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        if got && lines.eof && lines.quoting == Quoting::Quoted {
            self.unclosed = Some(position(rec));
        }
        Ok(got)
    }

    fn is_unclosed(&self, rec: &ByteRecord) -> bool {
        self.unclosed == Some(position(rec))
    }

    /// The next record, or `None` at the end of the file.
    pub fn next_item(&mut self) -> Result<Option<CsvItem>, SourceError> {
        let rec = match self.sample.pop_front() {
            Some(rec) => rec,
            None => {
                let mut rec = std::mem::take(&mut self.record);
                if !self.read_record(&mut rec)? {
                    self.record = rec;
                    self.through = self.through.max(self.bytes_read());
                    return Ok(None);
                }
                rec
            }
        };
        self.through = self.through.max(position(&rec));
        let line = self.line_of(position(&rec));
        let cut = {
            let mut lines = self.lines.lock().unwrap_or_else(|e| e.into_inner());
            self.quoted_empty.clear();
            lines.quoted_empty(position(&rec), &mut self.quoted_empty);
            lines.is_cut(position(&rec))
        };
        let typed = if self.is_unclosed(&rec) {
            Err((
                BadRowKind::UnclosedQuote,
                "a quoted field is not closed before the end of the file, so this record takes in \
                 every line after it"
                    .to_owned(),
            ))
        } else if cut {
            Err((
                BadRowKind::TooLarge,
                format!(
                    "the record is more than {} bytes as written in the file (a quote left \
                     open?): only that much of it is kept here, the rest of it is skipped; the \
                     largest message is {} bytes (kafka.properties.\"message.max.bytes\")",
                    record_cap(self.max_record_bytes),
                    self.max_record_bytes
                ),
            ))
        } else if rec.as_slice().len() > self.max_record_bytes {
            Err((
                BadRowKind::TooLarge,
                format!(
                    "the record's fields are {} bytes; the largest message is {} bytes \
                     (kafka.properties.\"message.max.bytes\")",
                    rec.as_slice().len(),
                    self.max_record_bytes
                ),
            ))
        } else {
            self.type_record(&rec)
        };
        let item = match typed {
            Ok(row) => CsvItem::Row { line, row },
            Err((kind, reason)) => CsvItem::Bad(BadRow {
                line,
                kind,
                reason,
                payload: reencode(&rec, self.delimiter, &self.quoted_empty),
            }),
        };
        // Reuse the record's allocation for the next read.
        self.record = rec;
        Ok(Some(item))
    }

    fn type_record(&self, rec: &ByteRecord) -> Result<Row, (BadRowKind, String)> {
        if rec.len() != self.columns.len() {
            return Err((
                BadRowKind::Ragged,
                format!(
                    "expected {} fields, found {}",
                    self.columns.len(),
                    rec.len()
                ),
            ));
        }
        let mut row = Row::with_capacity(rec.len());
        for (i, raw) in rec.iter().enumerate() {
            let name = &self.columns[i];
            let text = std::str::from_utf8(raw).map_err(|e| {
                (
                    BadRowKind::InvalidUtf8,
                    format!(
                        "field {name:?} is not valid UTF-8 (invalid byte at offset {})",
                        e.valid_up_to()
                    ),
                )
            })?;
            // `""` is an empty string where `,,` is null, as Snowflake loads them (a field that
            // is not a string has no empty value: both are null there).
            let empty_string = raw.is_empty()
                && self.types[i] == ValueType::String
                && self.quoted_empty.contains(&(i as u32));
            let value = if self.null_if.iter().any(|n| n == text) {
                Some(Value::Null)
            } else if empty_string {
                Some(Value::String(String::new()))
            } else {
                parse_value(text, self.types[i])
            };
            let value = value.ok_or_else(|| {
                let how = if self.types[i] == ValueType::Float && text.trim().parse::<f64>().is_ok()
                {
                    " (it is past the float range)"
                } else if looks_null(text) {
                    NULL_HINT
                } else if self.inferred[i] {
                    SCHEMA_HINT
                } else {
                    ""
                };
                (
                    BadRowKind::Parse,
                    format!(
                        "field {name:?}: {:?} is not a valid {}{how}",
                        shorten(text),
                        self.types[i]
                    ),
                )
            })?;
            // An inferred type promises what inference checked in the sample, so a later value
            // it would have refused (`01234` in an int column) is not changed to fit it.
            if self.inferred[i]
                && let Some(why) = inference_refuses(text.trim(), &value)
            {
                return Err((
                    BadRowKind::Parse,
                    format!(
                        "field {name:?}: {:?} is not a valid {}: {why}{SCHEMA_HINT}",
                        shorten(text),
                        self.types[i]
                    ),
                ));
            }
            row.fields.push(crate::row::Field {
                name: name.clone(),
                value,
            });
        }
        Ok(row)
    }
}

/// A record's byte offset in the file (see [`LineIndex`] for what it points at).
fn position(rec: &ByteRecord) -> u64 {
    rec.position().map_or(0, |p| p.byte())
}

fn shorten(s: &str) -> String {
    if s.len() <= 60 {
        return s.to_owned();
    }
    let mut end = 57;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

fn header_names(header: &ByteRecord) -> Result<Vec<Name>, String> {
    let written = (header.iter().enumerate())
        .map(|(i, raw)| {
            std::str::from_utf8(raw)
                .map(str::trim)
                .map_err(|_| format!("header field {} is not valid UTF-8", i + 1))
        })
        .collect::<Result<Vec<&str>, String>>()?;
    // A column keeps the name the file gives it, wherever it is: a later duplicate renamed
    // `a_2` would take it from a column written `a_2`, and `source.schema`, `key_column` and the
    // transforms would read the wrong values under it. So renames skip every name written, and
    // every name given out so far (in `id,id_2,id` the second `id` becomes `id_3`).
    let reserved: HashSet<&str> = written.iter().copied().filter(|n| !n.is_empty()).collect();
    let mut used: HashSet<String> = HashSet::new();
    let mut names: Vec<Name> = Vec::with_capacity(header.len());
    for (i, text) in written.iter().enumerate() {
        if !text.is_empty() && used.insert((*text).to_owned()) {
            names.push(Name::from(*text));
            continue;
        }
        let base = match text.is_empty() {
            true => format!("column_{}", i + 1),
            false => (*text).to_owned(),
        };
        let mut name = base.clone();
        let mut n = 1;
        while used.contains(&name) || reserved.contains(name.as_str()) {
            n += 1;
            name = format!("{base}_{n}");
        }
        used.insert(name.clone());
        names.push(Name::from(name));
    }
    Ok(names)
}

/// A bad record's fields as a CSV line, the fields written `""` (`quoted_empty`) again so: the
/// `csv` crate's writer leaves an empty field bare, which reads back as null.
fn reencode(rec: &ByteRecord, delimiter: u8, quoted_empty: &[u32]) -> Vec<u8> {
    if !quoted_empty.is_empty() {
        let mut out = Vec::new();
        for (i, field) in rec.iter().enumerate() {
            if i > 0 {
                out.push(delimiter);
            }
            let special = |b: &u8| [delimiter, b'"', b'\r', b'\n'].contains(b);
            if !quoted_empty.contains(&(i as u32)) && !field.iter().any(special) {
                out.extend_from_slice(field);
                continue;
            }
            out.push(b'"');
            for &b in field {
                out.extend_from_slice(if b == b'"' {
                    b"\"\""
                } else {
                    std::slice::from_ref(&b)
                });
            }
            out.push(b'"');
        }
        return out;
    }
    let mut w = csv::WriterBuilder::new()
        .delimiter(delimiter)
        .terminator(csv::Terminator::Any(b'\n'))
        .from_writer(Vec::new());
    // Writing to a Vec cannot fail.
    let _ = w.write_byte_record(rec);
    let mut out = w.into_inner().unwrap_or_default();
    if out.last() == Some(&b'\n') {
        out.pop();
    }
    out
}

/// Parses one field under a column type; `None` if it does not parse. Empty (after trimming,
/// for non-strings) is null.
pub fn parse_value(text: &str, ty: ValueType) -> Option<Value> {
    if text.is_empty() {
        return Some(Value::Null);
    }
    let t = text.trim();
    if t.is_empty() && ty != ValueType::String {
        return Some(Value::Null);
    }
    Some(match ty {
        ValueType::Null => return None,
        ValueType::String => Value::String(text.to_owned()),
        ValueType::Int => Value::Int(t.parse().ok()?),
        ValueType::Float => Value::Float(parse_float(t)?),
        ValueType::Bool => Value::Bool(parse_bool(t)?),
        ValueType::Timestamp => Value::Timestamp(parse_timestamp(t)?),
        ValueType::Json => {
            serde_json::from_str::<serde::de::IgnoredAny>(t).ok()?;
            Value::Json(t.to_owned())
        }
    })
}

/// A float, `inf` and `NaN` as written (Snowflake's FLOAT holds them), but not a number past
/// the float range: `1e999` would be loaded as `inf`, and `1e-999` as 0, values the file never
/// held.
fn parse_float(t: &str) -> Option<f64> {
    let f: f64 = t.parse().ok()?;
    let word = t.trim_start_matches(['-', '+']);
    let inf = word.eq_ignore_ascii_case("inf") || word.eq_ignore_ascii_case("infinity");
    let lost = (f.is_infinite() && !inf)
        || (f == 0.0 && decimal_digits(t).is_some_and(|(digits, _)| !digits.is_empty()));
    (!lost).then_some(f)
}

fn parse_bool(t: &str) -> Option<bool> {
    match t.to_ascii_lowercase().as_str() {
        "true" | "t" | "yes" | "y" | "1" => Some(true),
        "false" | "f" | "no" | "n" | "0" => Some(false),
        _ => None,
    }
}

/// Whether `f`, parsed from `text`, keeps every digit written there: `f` rounded to as many
/// significant digits as `text` has gives `text` back. A column is inferred as float only when
/// no sampled value loses digits, so an ID past `i64` such as `18446744073709551615` stays text
/// instead of becoming `1.8446744073709552e19`; `0.1`, and a float's 17- or 19-digit forms such
/// as `0.10000000000000001`, still count as floats.
fn same_number(text: &str, f: f64) -> bool {
    let Some((digits, exp)) = decimal_digits(text) else {
        return false;
    };
    let precision = digits.len().saturating_sub(1);
    decimal_digits(&format!("{:.*e}", precision, f.abs())) == Some((digits, exp))
}

/// The significant digits and the exponent of a decimal number, ignoring its sign: `-1.50e2` and
/// `150` both give `("15", 3)` (0.15 × 10³); zero gives `("", 0)`.
fn decimal_digits(text: &str) -> Option<(String, i64)> {
    let t = text.trim_start_matches(['-', '+']);
    let (mantissa, exp) = match t.find(['e', 'E']) {
        Some(i) => (&t[..i], t[i + 1..].parse::<i64>().ok()?),
        None => (t, 0),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits = format!("{int}{frac}");
    let trimmed = digits.trim_start_matches('0');
    let leading_zeros = (digits.len() - trimmed.len()) as i64;
    let significant = trimmed.trim_end_matches('0');
    if significant.is_empty() {
        return Some((String::new(), 0));
    }
    let exp = exp
        .checked_add(int.len() as i64)?
        .checked_sub(leading_zeros)?;
    Some((significant.to_owned(), exp))
}

/// Whether inference takes `t` (trimmed, not empty) as a `ty`: it parses as one, and
/// [`inference_refuses`] has nothing against it.
fn inferable(t: &str, ty: ValueType) -> bool {
    parse_value(t, ty).is_some_and(|v| inference_refuses(t, &v).is_none())
}

/// Why inference does not take `t` (trimmed, not empty) for the type of `v`, what
/// [`parse_value`] made of it, although it parses: the value would not say what the text says.
/// A number with a leading zero (`007`, a zip code) would lose it; a float is inferred only from
/// digits it holds exactly ([`same_number`]), not from `NaN`/`inf`; a bool only from
/// `true`/`false`. The same checks keep an inferred column's promise after the sample, where
/// a value they refuse is a bad row; a declared type takes every value that parses.
fn inference_refuses(t: &str, v: &Value) -> Option<&'static str> {
    let digits = t.strip_prefix(['-', '+']).unwrap_or(t);
    let leading_zero = digits.len() > 1 && digits.starts_with('0') && !digits.starts_with("0.");
    match v {
        Value::Int(_) | Value::Float(_) if leading_zero => Some("its leading zero would be lost"),
        Value::Float(f) if !f.is_finite() => Some("NaN and inf are not inferred as floats"),
        Value::Float(f) if !same_number(t, *f) || !t.bytes().any(|b| b.is_ascii_digit()) => {
            Some("a 64-bit float does not hold all its digits")
        }
        Value::Bool(_) if !t.eq_ignore_ascii_case("true") && !t.eq_ignore_ascii_case("false") => {
            Some("only true and false are inferred as bools")
        }
        _ => None,
    }
}

#[derive(Clone, Copy)]
struct Candidates {
    int: bool,
    float: bool,
    bool_: bool,
    timestamp: bool,
    seen: bool,
}

fn infer<'a>(
    sample: impl Iterator<Item = &'a ByteRecord>,
    ncols: usize,
    null_if: &[String],
) -> Vec<ValueType> {
    let mut cands = vec![
        Candidates {
            int: true,
            float: true,
            bool_: true,
            timestamp: true,
            seen: false
        };
        ncols
    ];
    for rec in sample {
        if rec.len() != ncols {
            continue;
        }
        for (c, raw) in cands.iter_mut().zip(rec.iter()) {
            let Ok(text) = std::str::from_utf8(raw) else {
                continue;
            };
            let t = text.trim();
            if t.is_empty() || null_if.iter().any(|n| n == text) {
                continue;
            }
            c.seen = true;
            c.int &= inferable(t, ValueType::Int);
            c.float &= inferable(t, ValueType::Float);
            c.bool_ &= inferable(t, ValueType::Bool);
            c.timestamp &= inferable(t, ValueType::Timestamp);
        }
    }
    cands
        .iter()
        .map(|c| match c {
            Candidates { seen: false, .. } => ValueType::String,
            Candidates { int: true, .. } => ValueType::Int,
            Candidates { float: true, .. } => ValueType::Float,
            Candidates { bool_: true, .. } => ValueType::Bool,
            Candidates {
                timestamp: true, ..
            } => ValueType::Timestamp,
            _ => ValueType::String,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(content: &[u8], opts: &CsvOptions) -> (CsvReader, Vec<CsvItem>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.csv");
        std::fs::write(&path, content).unwrap();
        let counter = Arc::new(AtomicU64::new(0));
        let mut r = CsvReader::open(&path, opts, counter.clone(), None).unwrap();
        let mut items = Vec::new();
        while let Some(item) = r.next_item().unwrap() {
            items.push(item);
        }
        assert_eq!(counter.load(Ordering::Relaxed), content.len() as u64);
        (r, items)
    }

    /// A quote still open at the end of the file makes its record a bad row holding every line
    /// after it, whatever its field count, and that record takes no part in type inference.
    #[test]
    fn an_unclosed_quote_is_a_bad_row() {
        let bad = |items: &[CsvItem]| -> Vec<(u64, BadRowKind, Vec<u8>)> {
            items
                .iter()
                .filter_map(|i| match i {
                    CsvItem::Bad(b) => Some((b.line, b.kind, b.payload.clone())),
                    CsvItem::Row { .. } => None,
                })
                .collect()
        };
        let (_, items) = read_all(b"id,note\n1,\"oops\n2,fine\n3,fine\n", &opts());
        assert_eq!(items.len(), 1);
        let [(line, kind, payload)] = &bad(&items)[..] else {
            panic!("{items:?}")
        };
        assert_eq!((*line, *kind), (2, BadRowKind::UnclosedQuote));
        assert!(
            payload.ends_with(b"oops\n2,fine\n3,fine\n\""),
            "{payload:?}"
        );

        let (r, items) = read_all(b"a,b,c\n1,2,x\n3,\"4,y\n5,6,z", &opts());
        assert_eq!(r.types()[..2], [ValueType::Int, ValueType::Int]);
        assert_eq!(items.len(), 2);
        assert_eq!(bad(&items)[0].0, 3);
        assert_eq!(bad(&items)[0].1, BadRowKind::UnclosedQuote);
        // With as many fields as the header, it would count in inference but for its quote.
        let (r, _) = read_all(b"a,b\n1,2\n3,\"x", &opts());
        assert_eq!(r.types(), [ValueType::Int, ValueType::Int]);

        // In the header, it is an error about the header.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.csv");
        std::fs::write(&path, "id,\"name\n1,a\n").unwrap();
        let err = CsvReader::open(&path, &opts(), Arc::default(), None).unwrap_err();
        assert!(
            err.to_string().contains("a quoted name is not closed"),
            "{err}"
        );

        // Closed quotes at the very end, with or without an escaped quote, are fine.
        for end in [&b"\"a\"\"b\""[..], b"\"a\"", b"\"a\nb\"\n"] {
            let csv = [&b"n,s\n1,"[..], end].concat();
            let (_, items) = read_all(&csv, &opts());
            assert!(bad(&items).is_empty(), "{items:?}");
            assert_eq!(items.len(), 1);
        }
    }

    /// How far the records returned go into the file, for the progress line's estimate of the
    /// records in all: not what the reader read ahead (a buffer, and the records type inference
    /// sampled), which took the first 367 records of a 3000-record file for 20% of it.
    #[test]
    fn bytes_through_follows_the_records_returned() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.csv");
        let mut text = String::from("id,name\n");
        for i in 0..3000 {
            // Records of one length: the estimate is then off only by the header.
            text.push_str(&format!("{i:04},name {i:04}\n"));
        }
        std::fs::write(&path, &text).unwrap();
        let mut r = CsvReader::open(&path, &opts(), Arc::default(), None).unwrap();
        let estimate = |r: &CsvReader, n: u64| n * text.len() as u64 / r.bytes_through().max(1);
        for n in 1..=3000u64 {
            r.next_item().unwrap().unwrap();
            if n == 367 || n == 1500 {
                assert!(r.bytes_read() > r.bytes_through(), "read ahead");
                let total = estimate(&r, n);
                assert!((2900..=3100).contains(&total), "{n}: {total}");
            }
        }
        assert!(r.next_item().unwrap().is_none());
        assert_eq!(r.bytes_through(), text.len() as u64);
    }

    /// Inference holds at most `SAMPLE_BYTES` of records, however many `infer_rows` allows: the
    /// file is read that far when it opens, not a thousand wide rows, and every row still comes.
    #[test]
    fn inference_holds_a_bounded_number_of_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wide.csv");
        let wide = "x".repeat(1 << 20);
        let mut text = String::from("id,doc\n");
        for i in 0..68 {
            text.push_str(&format!("{i},{wide}\n"));
        }
        std::fs::write(&path, &text).unwrap();
        let mut r = CsvReader::open(&path, &opts(), Arc::default(), None).unwrap();
        let read = r.bytes_read() as usize;
        assert!(
            (SAMPLE_BYTES..SAMPLE_BYTES + (2 << 20)).contains(&read),
            "{read}"
        );
        assert_eq!(r.types(), [ValueType::Int, ValueType::String]);
        let mut rows = 0;
        while let Some(item) = r.next_item().unwrap() {
            assert!(matches!(item, CsvItem::Row { .. }), "{item:?}");
            rows += 1;
        }
        assert_eq!(rows, 68);
    }

    /// A UTF-16 file (both byte orders) is named as such, not as a header that is not UTF-8.
    #[test]
    fn a_utf16_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("u.csv");
        for bom in [[0xFF, 0xFE], [0xFE, 0xFF]] {
            let text: Vec<u8> = "a,b\n1,2\n".bytes().flat_map(|b| [b, 0]).collect();
            std::fs::write(&path, [&bom[..], &text].concat()).unwrap();
            let err = CsvReader::open(&path, &opts(), Arc::default(), None).unwrap_err();
            assert!(err.to_string().contains("the file is UTF-16"), "{err}");
        }
    }

    /// A record past the cap (a quote left open in a big file) is cut: the parser gets only the
    /// cap's worth of it, it is a `too_large` bad row, and the records after its end are read
    /// as written, on their own lines. Left open to the end, it is an `unclosed_quote` row, cut.
    #[test]
    fn a_record_past_the_cap_is_cut_and_the_rest_read() {
        let limited = CsvOptions {
            max_record_bytes: 1000,
            ..opts()
        };
        let cap = record_cap(1000) as usize;
        let lines = "yyyyyyyyy\n".repeat(20_000);
        let row = |item: &CsvItem| match item {
            CsvItem::Row { line, row } => (*line, row.get("a").cloned(), row.get("b").cloned()),
            other => panic!("{other:?}"),
        };
        let cut = |item: &CsvItem, kind| match item {
            CsvItem::Bad(b) => {
                assert_eq!(b.kind, kind, "{}", b.reason);
                assert!(b.payload.len() <= cap + 8, "{}", b.payload.len());
                assert!(b.payload.len() > 1000, "{}", b.payload.len());
                b.line
            }
            other => panic!("{other:?}"),
        };
        // In a quoted field, closed 20,000 lines on; then in an unquoted one (a line of 200 KB).
        let csv = format!(
            "a,b\n1,5\n2,\"{lines}end\"\n3,6\r\n4,\"7\"\n5,{}\n6,8\n",
            "x".repeat(200_000)
        );
        let (r, items) = read_all(csv.as_bytes(), &limited);
        assert_eq!(r.types(), [ValueType::Int, ValueType::Int]);
        assert_eq!(items.len(), 6);
        assert_eq!(
            row(&items[0]),
            (2, Some(Value::Int(1)), Some(Value::Int(5)))
        );
        assert_eq!(cut(&items[1], BadRowKind::TooLarge), 3);
        assert_eq!(
            row(&items[2]),
            (20_004, Some(Value::Int(3)), Some(Value::Int(6)))
        );
        assert_eq!(
            row(&items[3]),
            (20_005, Some(Value::Int(4)), Some(Value::Int(7)))
        );
        assert_eq!(cut(&items[4], BadRowKind::TooLarge), 20_006);
        assert_eq!(
            row(&items[5]),
            (20_007, Some(Value::Int(6)), Some(Value::Int(8)))
        );
        if let CsvItem::Bad(b) = &items[1] {
            assert!(b.reason.contains("(a quote left open?)"), "{}", b.reason);
        }

        let csv = format!("a,b\n1,5\n2,\"{lines}");
        let (_, items) = read_all(csv.as_bytes(), &limited);
        assert_eq!(items.len(), 2);
        assert_eq!(cut(&items[1], BadRowKind::UnclosedQuote), 3);
    }

    /// A record that will be `too_large` takes no part in inference, so it does not turn a
    /// column of ints into text for every other row.
    #[test]
    fn an_oversized_record_does_not_change_the_inferred_types() {
        let csv = format!("a,b\n1,2\n2,{}\n3,4\n", "y".repeat(2000));
        let limited = CsvOptions {
            max_record_bytes: 1000,
            ..opts()
        };
        let (r, items) = read_all(csv.as_bytes(), &limited);
        assert_eq!(r.types(), [ValueType::Int, ValueType::Int]);
        assert!(
            matches!(&items[2], CsvItem::Row { row, .. } if row.get("b") == Some(&Value::Int(4)))
        );
        assert!(matches!(&items[1], CsvItem::Bad(b) if b.kind == BadRowKind::TooLarge));
        let (r, _) = read_all(csv.as_bytes(), &opts());
        assert_eq!(r.types(), [ValueType::Int, ValueType::String]);
    }

    fn opts() -> CsvOptions {
        CsvOptions {
            delimiter: b',',
            schema: Default::default(),
            infer_rows: 100,
            max_record_bytes: usize::MAX,
            null_if: Vec::new(),
        }
    }

    /// `""` in a string column is an empty string, where `,,` is null, wherever the field falls
    /// (first, last, at the end of the file, after a quoted line break, after a blank line) and
    /// however the reads split it; in another column both are null. `""""` is a quote.
    #[test]
    fn a_quoted_empty_field_is_an_empty_string() {
        /// Hands the file over `n` bytes a read.
        struct Trickle(Vec<u8>, usize, usize);
        impl Read for Trickle {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                let n = self.1.min(buf.len()).min(self.0.len() - self.2);
                buf[..n].copy_from_slice(&self.0[self.2..self.2 + n]);
                self.2 += n;
                Ok(n)
            }
        }
        let csv = b"h1,\"\",n,s\r\n\"\",,1,\"\"\r\nx,\"\",,\"a\r\n\"\"b\"\r\n\r\n\
                    \"a\",\"b\",\"\",c\r\n\"\",x\"y,\"a,\"\"b\"\"\"\n\
                    \"\"\"\",\"\"\"\"\"\",\" 2\",\"\"";
        let s = |v: &str| Value::String(v.to_owned());
        let expected = vec![
            vec![s(""), Value::Null, Value::Int(1), s("")],
            vec![s("x"), s(""), Value::Null, s("a\r\n\"b")],
            vec![s("a"), s("b"), Value::Null, s("c")],
            vec![s("\""), s("\"\""), Value::Int(2), s("")],
        ];
        for infer_rows in [1, 100] {
            for n in [1, 2, 3, 5, 7, 64 << 10] {
                let opts = CsvOptions {
                    infer_rows,
                    ..opts()
                };
                let input = Trickle(csv.to_vec(), n, 0);
                let mut r =
                    CsvReader::from_reader(Path::new("t.csv"), input, &opts, Arc::default(), None)
                        .unwrap();
                assert_eq!(r.columns()[1].to_string(), "column_2");
                let (mut rows, mut bad) = (Vec::new(), Vec::new());
                while let Some(item) = r.next_item().unwrap() {
                    match item {
                        CsvItem::Row { row, .. } => {
                            rows.push(row.fields.into_iter().map(|f| f.value).collect::<Vec<_>>())
                        }
                        CsvItem::Bad(b) => bad.push(String::from_utf8(b.payload).unwrap()),
                    }
                }
                assert_eq!(rows, expected, "infer_rows {infer_rows}, reads of {n}");
                // A ragged row's letter keeps its `""` (and quotes what needs them).
                assert_eq!(bad, [r#""","x""y","a,""b""""#], "reads of {n}");
            }
        }
        // Told once, though the parser reads again after the end.
        let mut index = LineIndex::new(b',');
        for part in [&b"h\n,\"\""[..], b"", b""] {
            index.feed(part, &mut Vec::new());
        }
        let mut fields = Vec::new();
        index.quoted_empty(2, &mut fields);
        assert_eq!(fields, [1]);
    }

    /// `null_if` texts are null in any column, quoted or not, and inference passes over them: a
    /// column of ints with `NULL` and `\N` in it is still one of ints. `[""]` makes `""` null.
    #[test]
    fn null_if_texts_are_null_and_not_inferred() {
        let csv = b"n,s,t\n1,\\N,\"\"\nNULL,x,\"NULL\"\n\\N,,y\n3,\"\",z\n";
        let rows = |null_if: &[&str]| {
            let opts = CsvOptions {
                null_if: null_if.iter().map(|n| n.to_string()).collect(),
                ..opts()
            };
            let (r, items) = read_all(csv, &opts);
            let rows: Vec<Vec<Value>> = (items.into_iter())
                .map(|item| match item {
                    CsvItem::Row { row, .. } => row.fields.into_iter().map(|f| f.value).collect(),
                    CsvItem::Bad(b) => panic!("{b:?}"),
                })
                .collect();
            (r.types().to_vec(), rows)
        };
        let (s, null) = (|v: &str| Value::String(v.to_owned()), Value::Null);
        let (types, got) = rows(&["NULL", "\\N"]);
        assert_eq!(
            types,
            [ValueType::Int, ValueType::String, ValueType::String]
        );
        assert_eq!(
            got,
            [
                [Value::Int(1), null.clone(), s("")],
                [null.clone(), s("x"), null.clone()],
                [null.clone(), null.clone(), s("y")],
                [Value::Int(3), s(""), s("z")],
            ]
        );
        let (types, got) = rows(&[""]);
        assert_eq!(types, [ValueType::String; 3]);
        assert_eq!(got[0], [s("1"), s("\\N"), null.clone()]);
        assert_eq!(got[3], [s("3"), null.clone(), s("z")]);
        // Without it, a declared int column's markers are bad rows that say what would help.
        let opts = CsvOptions {
            schema: [("n".to_owned(), ValueType::Int)].into(),
            ..opts()
        };
        let (_, items) = read_all(csv, &opts);
        let reasons: Vec<&str> = (items.iter())
            .filter_map(|i| match i {
                CsvItem::Bad(b) => Some(b.reason.as_str()),
                CsvItem::Row { .. } => None,
            })
            .collect();
        assert_eq!(
            reasons,
            [
                format!("field \"n\": \"NULL\" is not a valid int{NULL_HINT}"),
                format!("field \"n\": \"\\\\N\" is not a valid int{NULL_HINT}"),
            ]
        );
    }

    /// A record counts as read once its line break is: not when only part of its line is, and
    /// not by the previous record's line break (CRLF and blank lines included).
    #[test]
    fn knows_whether_the_next_record_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.csv");
        std::fs::write(&path, b"a,b\r\n1,2\r\n\r\n3,4\r\n5,6").unwrap();
        let one = CsvOptions {
            infer_rows: 1,
            ..opts()
        };
        let mut r = CsvReader::open(&path, &one, Arc::default(), None).unwrap();
        let mut seen = vec![r.has_buffered_record()];
        while let Some(item) = r.next_item().unwrap() {
            assert!(matches!(item, CsvItem::Row { .. }));
            seen.push(r.has_buffered_record());
        }
        // Before 1,2 (the inference sample), before 3,4, before the partial 5,6, at the end.
        assert_eq!(seen, [true, true, false, false]);

        // A line break inside a quoted field does not end a record; `""` and a quote that does
        // not open a field leave the quoting as it was.
        std::fs::write(
            &path,
            b"a,b\nk,2\n\"x\ny\"\"\",3\nz\"w,4\n\"p\r\nq\",5\nm,\"6\n7",
        )
        .unwrap();
        let mut r = CsvReader::open(&path, &one, Arc::default(), None).unwrap();
        let mut seen = vec![r.has_buffered_record()];
        let mut lines = vec![];
        while let Some(item) = r.next_item().unwrap() {
            lines.push(match item {
                CsvItem::Row { line, .. } => line,
                // The partial last record: its quote never closes.
                CsvItem::Bad(bad) if bad.kind == BadRowKind::UnclosedQuote => bad.line,
                CsvItem::Bad(bad) => panic!("{bad:?}"),
            });
            seen.push(r.has_buffered_record());
        }
        assert_eq!(lines, [2, 3, 5, 6, 8]);
        // Before k,2 (the sample), before "x..", z"w, "p.., before the partial m,"6.., at the end.
        assert_eq!(seen, [true, true, true, true, false, false]);
    }

    #[test]
    fn infers_types_and_keeps_lines() {
        let csv = b"\xEF\xBB\xBFid,name,score,ok,at,zip\n1,\"a,b\",1.5,true,2024-01-02T03:04:05,007\n2,\"multi\nline \"\"q\"\"\",2,FALSE,2024-01-02,01234\n3,,,,,\n";
        let (r, items) = read_all(csv, &opts());
        assert_eq!(
            r.columns().iter().map(|c| &**c).collect::<Vec<_>>(),
            ["id", "name", "score", "ok", "at", "zip"]
        );
        use ValueType::*;
        assert_eq!(r.types(), [Int, String, Float, Bool, Timestamp, String]);
        let CsvItem::Row { line, row } = &items[1] else {
            panic!("{items:?}")
        };
        assert_eq!(*line, 3);
        assert_eq!(
            row.get("name"),
            Some(&Value::String("multi\nline \"q\"".into()))
        );
        assert_eq!(row.get("score"), Some(&Value::Float(2.0)));
        assert_eq!(row.get("ok"), Some(&Value::Bool(false)));
        assert_eq!(row.get("zip"), Some(&Value::String("01234".into())));
        let CsvItem::Row { line, row } = &items[2] else {
            panic!()
        };
        assert_eq!(*line, 5);
        assert_eq!(row.get("name"), Some(&Value::Null));
    }

    #[test]
    fn bad_rows_carry_line_kind_and_payload() {
        let csv = b"id;name\n1;a\n2\n3;\xff\xfe\nx;b\n4;\"c;d\"\n";
        let mut o = opts();
        o.delimiter = b';';
        o.schema.insert("id".into(), ValueType::Int);
        let (_, items) = read_all(csv, &o);
        let bad: Vec<_> = items
            .iter()
            .filter_map(|i| match i {
                CsvItem::Bad(b) => Some((b.line, b.kind, b.payload.clone())),
                _ => None,
            })
            .collect();
        assert_eq!(
            bad,
            [
                (3, BadRowKind::Ragged, b"2".to_vec()),
                (4, BadRowKind::InvalidUtf8, b"3;\xff\xfe".to_vec()),
                (5, BadRowKind::Parse, b"x;b".to_vec()),
            ]
        );
        assert!(
            matches!(&items[4], CsvItem::Row { line: 6, row } if row.get("name") == Some(&Value::String("c;d".into())))
        );
    }

    #[test]
    fn lines_count_newlines_inside_quotes_and_blank_lines() {
        let long = "y".repeat(300);
        let csv = format!("a;b\r\n1;\"x\r\n{long}\r\nz\"\r\n\r\n\n2;q\r\n3\r\n");
        let mut o = opts();
        o.delimiter = b';';
        let (_, items) = read_all(csv.as_bytes(), &o);
        let lines: Vec<u64> = items
            .iter()
            .map(|i| match i {
                CsvItem::Row { line, .. } => *line,
                CsvItem::Bad(b) => b.line,
            })
            .collect();
        assert_eq!(lines, [2, 7, 8]);
    }

    /// Lines end at `\n`, `\r\n` and a lone `\r` (classic Mac, old Excel), as records do; a
    /// `\r\n` split between two reads is one line end.
    #[test]
    fn lines_end_at_a_lone_cr_too() {
        let mut o = opts();
        o.schema.insert("id".into(), ValueType::Int);
        let lines = |items: &[CsvItem]| -> Vec<(u64, Option<BadRowKind>)> {
            (items.iter())
                .map(|i| match i {
                    CsvItem::Row { line, .. } => (*line, None),
                    CsvItem::Bad(b) => (b.line, Some(b.kind)),
                })
                .collect()
        };
        let parse = Some(BadRowKind::Parse);
        for eol in ["\r", "\n", "\r\n"] {
            let csv = "id,name|1,a|x,c|2,d|y,e|".replace('|', eol);
            let (_, items) = read_all(csv.as_bytes(), &o);
            assert_eq!(
                lines(&items),
                [(2, None), (3, parse), (4, None), (5, parse)],
                "{eol:?}"
            );
        }

        // One byte per read, so that every `\r` ends a read.
        struct Bytewise(io::Cursor<Vec<u8>>);
        impl Read for Bytewise {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                let n = buf.len().min(1);
                self.0.read(&mut buf[..n])
            }
        }
        let bytewise = |csv: &[u8]| {
            let input = Bytewise(io::Cursor::new(csv.to_vec()));
            let path = Path::new("t.csv");
            let mut r = CsvReader::from_reader(path, input, &o, Arc::default(), None).unwrap();
            let mut items = vec![];
            while let Some(item) = r.next_item().unwrap() {
                items.push(item);
            }
            lines(&items)
        };
        // Lines ending with `\r`: one in a quoted field is a line too, as is a `\n` alone.
        assert_eq!(
            bytewise(b"id,name\r1,\"a\rb\nc\"\rx,c\r2,d\r\r3,e\r"),
            [(2, None), (5, parse), (6, None), (8, None)]
        );
        // Lines ending with LF or CRLF: a lone `\r` in a quoted field is text, as an editor
        // shows it, and later lines keep the editor's numbers.
        for eol in ["\n", "\r\n"] {
            let csv = "id,name|1,\"a\rb\"|x,c|2,\"d\r\ne\"|y,f|".replace('|', eol);
            assert_eq!(
                bytewise(csv.as_bytes()),
                [(2, None), (3, parse), (4, None), (6, parse)],
                "{eol:?}"
            );
        }
    }

    #[test]
    fn a_column_is_inferred_as_float_only_when_no_digit_is_lost() {
        for (exact, text) in [
            (true, "1.5"),
            (true, "-0.30000000000000004"),
            (true, "1e300"),
            (true, "+.5"),
            (true, "5."),
            (true, "-0.0"),
            (true, "120.50"),
            (true, "9007199254740992"),
            (true, "0.10000000000000001"),
            (true, "1.000000000000000056e-01"),
            (true, "5e-324"),
            (true, "0e5"),
            (false, "0.01e-9223372036854775808"),
            (false, "9007199254740993"),
            (false, "18446744073709551615"),
            (false, "12345678901234567.89"),
        ] {
            let f: f64 = text.parse().unwrap();
            assert_eq!(same_number(text, f), exact, "{text}");
        }
        let (r, items) = read_all(
            b"id,x
18446744073709551615,1.5
2,2.5
",
            &opts(),
        );
        assert_eq!(r.types(), [ValueType::String, ValueType::Float]);
        let CsvItem::Row { row, .. } = &items[0] else {
            panic!("{items:?}")
        };
        assert_eq!(
            row.get("id"),
            Some(&Value::String("18446744073709551615".into()))
        );
    }

    #[test]
    fn a_float_past_the_range_is_a_bad_row_but_inf_as_written_is_kept() {
        let mut o = opts();
        o.schema.insert("f".into(), ValueType::Float);
        let (_, items) = read_all(
            b"f\n1e999\n-1E400\ninf\n-Infinity\nNaN\n1.5e308\n1e-999\n0e-999\n5e-324\n",
            &o,
        );
        let bad: Vec<_> = (items.iter())
            .filter_map(|i| match i {
                CsvItem::Bad(b) => Some((b.line, b.kind, b.reason.clone())),
                _ => None,
            })
            .collect();
        assert_eq!(bad.len(), 3, "{bad:?}");
        assert_eq!(
            (bad[0].0, bad[0].1, bad[1].0, bad[2].0),
            (2, BadRowKind::Parse, 3, 8)
        );
        assert!(bad[2].2.contains("past the float range"), "{}", bad[2].2);
        assert!(bad[0].2.contains("past the float range"), "{}", bad[0].2);
        let kept: Vec<f64> = (items.iter())
            .filter_map(|i| match i {
                CsvItem::Row { row, .. } => match row.get("f") {
                    Some(Value::Float(f)) => Some(*f),
                    _ => None,
                },
                _ => None,
            })
            .collect();
        assert_eq!(kept.len(), 6, "{kept:?}");
        assert_eq!(kept[0..2], [f64::INFINITY, f64::NEG_INFINITY]);
        assert!(kept[2].is_nan());
        assert_eq!(kept[3..], [1.5e308, 0.0, 5e-324]);
    }

    #[test]
    fn inferred_type_is_a_contract() {
        let mut o = opts();
        o.infer_rows = 1;
        let (_, items) = read_all(b"n\n1\nx\n", &o);
        let CsvItem::Bad(b) = &items[1] else { panic!() };
        assert_eq!(b.kind, BadRowKind::Parse);
        assert!(b.reason.contains("inferred"), "{}", b.reason);
    }

    /// After the sample, a value in an inferred column that inference would have refused for
    /// its type is a bad row, not changed to fit it: a zip code's leading zero, digits a float
    /// loses, `NaN`, `yes` for a bool. A declared type reads them all.
    #[test]
    fn an_inferred_type_refuses_later_what_inference_refuses() {
        let csv = b"zip,amt,flag\n12345,1.5,true\n54321,2.25,false\n\
            01234,9007199254740993,yes\n1,9007199254740993,true\n1,NaN,true\n1,-01.5,true\n\
            1,2.5,yes\n1,2.5,1\n0,-0.5,TRUE\n-7, ,False\n";
        let mut o = opts();
        o.infer_rows = 2;
        let (r, items) = read_all(csv, &o);
        use ValueType::*;
        assert_eq!(r.types(), [Int, Float, Bool]);
        let bad: Vec<_> = (items.iter())
            .filter_map(|i| match i {
                CsvItem::Bad(b) => Some((b.line, b.kind, b.reason.clone())),
                _ => None,
            })
            .collect();
        let lines: Vec<_> = bad.iter().map(|b| (b.0, b.1)).collect();
        assert_eq!(
            lines,
            (4..=9).map(|l| (l, BadRowKind::Parse)).collect::<Vec<_>>()
        );
        for (b, field) in bad.iter().zip(["zip", "amt", "amt", "amt", "flag", "flag"]) {
            assert!(b.2.starts_with(&format!("field {field:?}:")), "{}", b.2);
            assert!(b.2.ends_with(SCHEMA_HINT), "{}", b.2);
        }
        assert!(bad[0].2.contains("leading zero"), "{}", bad[0].2);
        let rows: Vec<_> = (items.iter())
            .filter_map(|i| match i {
                CsvItem::Row { line, row } => Some((*line, row.to_json().to_string())),
                _ => None,
            })
            .collect();
        assert_eq!(
            rows[2..],
            [
                (10, r#"{"zip":0,"amt":-0.5,"flag":true}"#.to_owned()),
                (11, r#"{"zip":-7,"amt":null,"flag":false}"#.to_owned()),
            ]
        );

        // Declared, the same values are read as the type reads them.
        for (c, ty) in [("zip", Int), ("amt", Float), ("flag", Bool)] {
            o.schema.insert(c.into(), ty);
        }
        let (_, items) = read_all(csv, &o);
        assert!(
            items.iter().all(|i| matches!(i, CsvItem::Row { .. })),
            "{items:?}"
        );
        let CsvItem::Row { row, .. } = &items[2] else {
            panic!()
        };
        assert_eq!(row.get("zip"), Some(&Value::Int(1234)));
        assert_eq!(row.get("flag"), Some(&Value::Bool(true)));
    }

    #[test]
    fn header_names_are_made_unique() {
        let (r, _) = read_all(b"a, a ,,b\n1,2,3,4\n", &opts());
        assert_eq!(
            r.columns().iter().map(|c| &**c).collect::<Vec<_>>(),
            ["a", "a_2", "column_3", "b"]
        );
        let (r, _) = read_all(b"id,id_2,id,id\n1,2,3,4\n", &opts());
        assert_eq!(
            r.columns().iter().map(|c| &**c).collect::<Vec<_>>(),
            ["id", "id_2", "id_3", "id_4"]
        );
        // A name written later is the written column's, not a rename's.
        let (r, _) = read_all(b"id,a,a,a_2,,column_6\n1,2,3,4,5,6\n", &opts());
        assert_eq!(
            r.columns().iter().map(|c| &**c).collect::<Vec<_>>(),
            ["id", "a", "a_3", "a_2", "column_5", "column_6"]
        );
        let (r, _) = read_all(b"x,,column_2\n1,2,3\n", &opts());
        assert_eq!(
            r.columns().iter().map(|c| &**c).collect::<Vec<_>>(),
            ["x", "column_2_2", "column_2"]
        );
    }

    #[test]
    fn schema_column_must_exist() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.csv");
        std::fs::write(&path, "a\n1\n").unwrap();
        let mut o = opts();
        o.schema.insert("b".into(), ValueType::Int);
        let err = CsvReader::open(&path, &o, Arc::default(), None).unwrap_err();
        assert!(err.to_string().contains("\"b\""), "{err}");
    }
}
