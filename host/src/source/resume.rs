//! Resuming a replay: which of the file's rows the topics hold already.
//!
//! A replay stopped part-way (Ctrl-C, `kill -9`) leaves the first part of the file in the topic,
//! and not always a prefix of it: rows go to several partitions, and the rows librdkafka still
//! buffered at a `kill -9` are lost from some partitions and not others. So a resume cannot
//! start at "the last line produced". It reads the topic instead: every message the replay
//! produces carries its file's name, a fingerprint of the file ([`file_id`]) and the row's line
//! (`sluice.file`, `sluice.file_id`, `sluice.line`), and every letter of a bad row carries the
//! name, the line and the record's bytes (with the pipeline's stamp). The resumed replay then
//! reads the whole file again and produces only the rows, and letters only the bad rows, that
//! are not there yet. A file looped N times holds each line up to N times: the first
//! occurrences the topics hold are skipped, the rest produced.
//!
//! The fingerprint, the length and hash of the file's first MiB (or all of it when shorter),
//! tells apart two files of one name (this month's `events.csv` and last month's), whose lines
//! would otherwise stand for each other and be skipped: a message is this file's when this
//! file's first bytes, as many as its fingerprint covers, hash the same. So a file with rows
//! appended since still matches, and a resume produces the new rows. A bad row's letter carries
//! the fingerprint too (`file_id`), and is matched by its record's bytes as well.
//!
//! The topics are read once, before the replay starts, at the cost of reading them (a consume of
//! the same messages costs more); only the lines are kept, about a byte per line of the file.

use std::collections::HashMap;

use rdkafka::message::{BorrowedMessage, Headers as _, Message as _};
use tokio_util::sync::CancellationToken;

use super::wire::{HEADER_FILE, HEADER_FILE_ID, HEADER_LINE};
use crate::config::KafkaConfig;
use crate::consume::{self, ConsumeError};

/// What a replay resumes against: where this pipeline's letters are, and its stamp.
#[derive(Debug, Clone)]
pub struct Resume {
    /// The dead-letter topic.
    pub dead_letter_topic: String,
    /// The `pipeline_id` this pipeline stamps its letters with.
    pub pipeline_id: String,
}

/// A multiset of lines: how many times each line of the file is held.
///
/// A byte per line up to the highest (a line needs a byte of the file at least, so this is at
/// most the file's size), and a map for the rare line held 255 times or more (a file looped that
/// often).
#[derive(Debug, Default)]
pub struct Lines {
    counts: Vec<u8>,
    more: HashMap<u64, u32>,
    total: u64,
}

impl Lines {
    /// Notes one more of `line`.
    fn add(&mut self, line: u64) {
        let i = line as usize;
        if i >= self.counts.len() {
            self.counts.resize(i + 1, 0);
        }
        match self.counts[i] {
            u8::MAX => *self.more.entry(line).or_default() += 1,
            _ => self.counts[i] += 1,
        }
        self.total += 1;
    }

    /// Whether one of `line` is held, taking it out if so.
    pub fn take(&mut self, line: u64) -> bool {
        let Some(n) = self.counts.get_mut(line as usize).filter(|n| **n > 0) else {
            return false;
        };
        if *n == u8::MAX
            && let Some(extra) = self.more.get_mut(&line)
        {
            *extra -= 1;
            if *extra == 0 {
                self.more.remove(&line);
            }
        } else {
            *n -= 1;
        }
        self.total -= 1;
        true
    }

    /// How many are held (not taken yet).
    pub fn len(&self) -> u64 {
        self.total
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.total == 0
    }
}

/// Why a replay cannot be resumed.
#[derive(Debug, thiserror::Error)]
pub enum ResumeError {
    /// A topic could not be read.
    #[error("cannot read what the topics hold of the file already, to resume the replay")]
    Read(#[source] ConsumeError),
    /// Records were deleted from the topic (retention, or a deletion): their lines are unknown,
    /// and producing them again would load them twice.
    #[error(
        "topic {topic} no longer holds its first records (partition {partition} starts at offset \
         {start}: retention or a deletion removed them), so a resume cannot tell which of the \
         file's rows they were, and would produce and load them again; replay without --resume \
         (every row again), or load what the topic holds with --consume-only"
    )]
    Truncated {
        /// The topic.
        topic: String,
        /// The first partition found truncated.
        partition: i32,
        /// Where it starts now.
        start: i64,
    },
}

/// The file a replay reads, as its messages name it.
#[derive(Debug, Clone)]
pub struct FileIs {
    /// Its name (`sluice.file`).
    pub name: String,
    /// Where it is, to check the fingerprints found against.
    pub path: std::path::PathBuf,
}

/// How much of a file its fingerprint covers at most.
const FINGERPRINT_BYTES: u64 = 1024 * 1024;

/// A fingerprint of the file at `path`: `<n>:<hash>`, the length of its first MiB (all of it
/// when shorter) and their hash. Rows appended keep it (see [`Fingerprints`]).
pub fn file_id(path: &std::path::Path) -> std::io::Result<String> {
    let n = std::fs::metadata(path)?.len().min(FINGERPRINT_BYTES);
    Ok(format!("{n}:{}", prefix_hash(path, n)?.unwrap_or_default()))
}

/// The hash of the first `n` bytes of the file at `path`; `None` when it is shorter.
fn prefix_hash(path: &std::path::Path, n: u64) -> std::io::Result<Option<String>> {
    use std::io::Read as _;
    let mut head = Vec::new();
    std::fs::File::open(path)?.take(n).read_to_end(&mut head)?;
    Ok((head.len() as u64 == n).then(|| blake3::hash(&head).to_hex()[..16].to_owned()))
}

/// Tells whether fingerprints found in the topics are this file's, each worked out once.
struct Fingerprints<'a> {
    path: &'a std::path::Path,
    known: HashMap<String, bool>,
}

impl Fingerprints<'_> {
    /// Whether `id` is this file's: the file's first bytes, as many as `id` covers, hash the
    /// same (so a file that grew since still matches). One that cannot be read matches nothing.
    fn is_this(&mut self, id: &str) -> bool {
        if let Some(&known) = self.known.get(id) {
            return known;
        }
        let this = id.split_once(':').is_some_and(|(n, hash)| {
            let hashed = n.parse().ok().map(|n| prefix_hash(self.path, n));
            matches!(hashed, Some(Ok(Some(h))) if h == hash)
        });
        self.known.insert(id.to_owned(), this);
        this
    }
}

/// Bad rows' letters, by line and record: each as stored (its payload's hash, and whether it was
/// cut to fit the letter, and to how many bytes).
#[derive(Debug, Default)]
pub struct Letters {
    by_line: HashMap<u64, Vec<StoredPayload>>,
    total: u64,
}

#[derive(Debug, PartialEq)]
struct StoredPayload {
    /// Bytes stored: all of the record's when `whole`, else its first ones.
    len: usize,
    whole: bool,
    hash: [u8; 32],
}

impl Letters {
    fn add(&mut self, line: u64, payload: &[u8], whole: bool) {
        self.by_line.entry(line).or_default().push(StoredPayload {
            len: payload.len(),
            whole,
            hash: *blake3::hash(payload).as_bytes(),
        });
        self.total += 1;
    }

    /// Whether a letter of the bad row at `line` whose record is `payload` is held, taking it
    /// out if so.
    pub fn take(&mut self, line: u64, payload: &[u8]) -> bool {
        let Some(stored) = self.by_line.get_mut(&line) else {
            return false;
        };
        let found = stored.iter().position(|s| {
            let fits = match s.whole {
                true => s.len == payload.len(),
                false => s.len <= payload.len(),
            };
            fits && *blake3::hash(&payload[..s.len]).as_bytes() == s.hash
        });
        let Some(i) = found else {
            return false;
        };
        stored.swap_remove(i);
        if stored.is_empty() {
            self.by_line.remove(&line);
        }
        self.total -= 1;
        true
    }

    /// How many are held (not taken yet).
    pub fn len(&self) -> u64 {
        self.total
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.total == 0
    }
}

/// What the topics hold of a file already.
#[derive(Debug, Default)]
pub struct Held {
    /// Its rows in the topic, by line.
    pub rows: Lines,
    /// Its bad rows' letters (this pipeline's) in the dead-letter topic.
    pub letters: Letters,
    /// Messages in the topic of a file of the same name but another fingerprint.
    pub other_files: u64,
    /// Messages in the topic, the file's or not.
    pub messages: u64,
    /// Whether retention removed letters from the dead-letter topic: bad rows among them are
    /// dead-lettered again.
    pub letters_truncated: bool,
}

/// Reads `topic` and, with `letters`, the dead-letter topic for what they hold of `file`, up to
/// their ends now. Lines past `max_line` are not this file's. Returns `None` once `cancel`
/// fires. Blocking: run it off the async workers.
pub fn read_held(
    kafka: &KafkaConfig,
    bootstrap: &str,
    resume: &Resume,
    file: &FileIs,
    max_line: u64,
    letters: bool,
    cancel: &CancellationToken,
) -> Result<Option<Held>, ResumeError> {
    let mut held = Held::default();
    let mut ours = Fingerprints {
        path: &file.path,
        known: HashMap::new(),
    };
    let topic = &kafka.topic;
    let starts = consume::read_since(kafka, bootstrap, topic, None, Some(cancel), |m| {
        held.messages += 1;
        match row_line(m, &file.name, &mut ours) {
            Some(Ok(line)) if line <= max_line => held.rows.add(line),
            Some(Err(())) => held.other_files += 1,
            _ => {}
        }
        true
    })
    .map_err(ResumeError::Read)?;
    if cancel.is_cancelled() {
        return Ok(None);
    }
    if let Some((&partition, &start)) = starts.iter().find(|(_, start)| **start > 0) {
        return Err(ResumeError::Truncated {
            topic: topic.clone(),
            partition,
            start,
        });
    }
    if letters {
        let dlq = &resume.dead_letter_topic;
        let starts = consume::read_since(kafka, bootstrap, dlq, None, Some(cancel), |m| {
            if let Some((line, payload, whole)) = (m.payload())
                .and_then(|v| bad_row_letter(v, &file.name, &resume.pipeline_id, &mut ours))
                .filter(|(l, ..)| *l <= max_line)
            {
                held.letters.add(line, &payload, whole);
            }
            true
        })
        .map_err(ResumeError::Read)?;
        held.letters_truncated = starts.values().any(|s| *s > 0);
    }
    Ok((!cancel.is_cancelled()).then_some(held))
}

/// The line of a message a replay of `file` produced; `Err` for one of a file of the same name
/// but another fingerprint. A message without a fingerprint (an earlier version's) goes by its
/// name.
fn row_line(
    m: &BorrowedMessage<'_>,
    file: &str,
    ours: &mut Fingerprints<'_>,
) -> Option<Result<u64, ()>> {
    let headers = m.headers()?;
    let value = |key: &str| {
        (headers.iter())
            .find(|h| h.key == key)
            .and_then(|h| std::str::from_utf8(h.value?).ok())
    };
    (value(HEADER_FILE)? == file).then_some(())?;
    if value(HEADER_FILE_ID).is_some_and(|id| !ours.is_this(id)) {
        return Some(Err(()));
    }
    value(HEADER_LINE)?.parse().ok().map(Ok)
}

/// The line, stored payload and whether it is whole, of a letter `pipeline` wrote for a bad row
/// of the file named `file` (of this file, when the letter has a fingerprint).
fn bad_row_letter(
    letter: &[u8],
    file: &str,
    pipeline: &str,
    ours: &mut Fingerprints<'_>,
) -> Option<(u64, Vec<u8>, bool)> {
    let line = letter_line(letter, file, pipeline)?;
    let read = super::dlq::decode(letter).ok()?;
    if (read.letter.source_file_id.as_deref()).is_some_and(|id| !ours.is_this(id)) {
        return None;
    }
    // A letter whose text was changed after it was written (masked) stands for no record.
    (!read.altered).then_some((line, read.letter.payload, read.whole))
}

/// The line of a letter `pipeline` wrote for a bad row of `file`.
fn letter_line(letter: &[u8], file: &str, pipeline: &str) -> Option<u64> {
    #[derive(serde::Deserialize)]
    struct BadRowLetter {
        stage: String,
        #[serde(default)]
        file: Option<String>,
        #[serde(default)]
        line: Option<u64>,
        #[serde(default)]
        pipeline_id: Option<String>,
        #[serde(default)]
        origin: Option<serde::de::IgnoredAny>,
    }
    let l: BadRowLetter = serde_json::from_slice(letter).ok()?;
    let ours = l.stage == crate::dead_letter::SOURCE_STAGE
        && l.origin.is_none()
        && l.pipeline_id.as_deref() == Some(pipeline)
        && l.file.as_deref() == Some(file);
    ours.then_some(l.line).flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each line is taken as many times as it was added, past 255 too.
    #[test]
    fn lines_are_a_multiset() {
        let mut lines = Lines::default();
        for _ in 0..300 {
            lines.add(7);
        }
        lines.add(2);
        assert_eq!(lines.len(), 301);
        assert!(!lines.take(3) && !lines.take(1_000_000));
        assert!(lines.take(2) && !lines.take(2));
        for _ in 0..300 {
            assert!(lines.take(7));
        }
        assert!(!lines.take(7) && lines.is_empty());
    }

    /// A letter stands for the bad row whose record it holds: all of it, or its first bytes when
    /// it was cut; one letter for one row.
    #[test]
    fn letters_are_matched_by_their_records_bytes() {
        let mut letters = Letters::default();
        letters.add(5, b"1,a,extra", true);
        letters.add(9, b"2,b,", false);
        assert!(!letters.take(5, b"1,a,other"));
        assert!(!letters.take(6, b"1,a,extra"));
        assert!(letters.take(5, b"1,a,extra"));
        assert!(!letters.take(5, b"1,a,extra"));
        assert!(!letters.take(9, b"2,c,xxxxx"));
        assert!(letters.take(9, b"2,b,xxxxx") && letters.is_empty());
    }

    /// A fingerprint is this file's while the bytes it covers are the same: rows appended (even
    /// to a last line without its newline) keep it; another byte within them, or a file now
    /// shorter, does not.
    #[test]
    fn a_fingerprint_matches_the_file_it_was_taken_of_and_its_growth() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.csv");
        std::fs::write(&path, "id,v\n1,x\n2,y").unwrap();
        let first = file_id(&path).unwrap();
        assert!(first.starts_with("12:"), "{first}");
        let mut ours = Fingerprints {
            path: &path,
            known: HashMap::new(),
        };
        assert!(ours.is_this(&first));
        std::fs::write(&path, "id,v\n1,x\n2,y\n3,z\n").unwrap();
        let mut ours = Fingerprints {
            path: &path,
            known: HashMap::new(),
        };
        assert!(ours.is_this(&first));
        assert!(!ours.is_this("12:0000000000000000") && !ours.is_this("junk"));
        for other in ["id,v\n1,x\n2,Y\n", "id,v\n1,x\n"] {
            std::fs::write(&path, other).unwrap();
            let mut ours = Fingerprints {
                path: &path,
                known: HashMap::new(),
            };
            assert!(!ours.is_this(&first), "{other:?}");
        }
    }

    /// Only this pipeline's letters of bad rows of this file count.
    #[test]
    fn only_this_pipelines_bad_row_letters_of_the_file_count() {
        let letter = |stage: &str, file: &str, pipeline: &str, origin: bool| {
            let mut v = serde_json::json!({
                "stage": stage, "kind": "ragged_row", "reason": "r", "file": file, "line": 12,
                "pipeline_id": pipeline, "payload": "", "origin": null
            });
            if origin {
                v["origin"] = serde_json::json!({ "topic": "t", "partition": 0, "offset": 3 });
            }
            v.to_string().into_bytes()
        };
        assert_eq!(
            letter_line(&letter("source", "a.csv", "p", false), "a.csv", "p"),
            Some(12)
        );
        assert_eq!(
            letter_line(&letter("source", "b.csv", "p", false), "a.csv", "p"),
            None
        );
        assert_eq!(
            letter_line(&letter("source", "a.csv", "q", false), "a.csv", "p"),
            None
        );
        assert_eq!(
            letter_line(&letter("sink", "a.csv", "p", false), "a.csv", "p"),
            None
        );
        assert_eq!(
            letter_line(&letter("source", "a.csv", "p", true), "a.csv", "p"),
            None
        );
        assert_eq!(letter_line(b"not json", "a.csv", "p"), None);
    }
}
