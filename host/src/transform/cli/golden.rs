//! The golden files of `transform test` (`--expect`, `--expect-failures`, and the
//! `--write-failures` file that makes one) and the comparison of a run with them, item by item.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use super::input::JsonLines;
use super::params::same_name;
use super::run::clip;
use crate::counted;
use crate::dead_letter::{self, GuestFault};
use crate::source::csv::BadRowKind;
use crate::source::wire;
use crate::transform::error::FailureKind;
use crate::transform::exact_json;

/// A transform crate's own test (`transform test NAME`): where its component builds to, and
/// what its `testdata/` holds.
#[derive(Debug)]
pub(super) struct OwnTest {
    /// The transform's name and workspace, to build it once the rest is checked.
    name: String,
    dir: PathBuf,
    /// Where its `.wasm` file is built to.
    pub(super) component: PathBuf,
    /// `input.jsonl` or `input.csv`.
    pub(super) input: Option<PathBuf>,
    /// `expected.jsonl`.
    pub(super) expect: Option<PathBuf>,
    /// `expected-failures.jsonl`.
    pub(super) expect_failures: Option<PathBuf>,
    /// `params.json`: a JSON object of params, as the transform's `with` in pipeline.json.
    pub(super) params_file: Option<PathBuf>,
    /// The params it holds (none without it).
    pub(super) params: std::collections::BTreeMap<String, String>,
    /// `source.json`: how the input is read and what its records report (defaults without it).
    pub(super) source: OwnSource,
}

/// A transform crate's `testdata/source.json`: what the flags of the same names would say, so
/// that a transform reading its records' metadata (`meta()`) or a typed CSV column passes its
/// own test with no flags. A flag given as well wins.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct OwnSource {
    /// `--delimiter`.
    pub(super) delimiter: Option<String>,
    /// `--schema`, as the source's `schema` in pipeline.json (`{"created_at": "timestamp"}`).
    #[serde(default, deserialize_with = "crate::source::config::declared_types")]
    pub(super) schema: std::collections::BTreeMap<String, crate::row::ValueType>,
    /// `--infer-rows`.
    pub(super) infer_rows: Option<usize>,
    /// `--null-if`, as the source's `null_if` (`["NULL", "\\N"]`).
    pub(super) null_if: Option<Vec<String>>,
    /// `--key-column`.
    pub(super) key_column: Option<String>,
    /// `--topic`.
    pub(super) topic: Option<String>,
    /// `--partition`.
    pub(super) partition: Option<i32>,
    /// `--partitions`.
    pub(super) partitions: Option<i32>,
    /// `--timestamp-ms`.
    pub(super) timestamp_ms: Option<i64>,
}

impl OwnSource {
    /// Reads and checks `path`, as the flags are checked.
    fn read(path: &Path) -> anyhow::Result<OwnSource> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let de = &mut serde_json::Deserializer::from_str(&text);
        let source: OwnSource = serde_path_to_error::deserialize(de).map_err(|e| {
            let at = e.path().to_string();
            let at = if at == "." {
                String::new()
            } else {
                format!(" at {at}")
            };
            anyhow::anyhow!(
                "{}{at}: {} (it holds what --delimiter, --schema, --infer-rows, --null-if, \
                 --key-column, --topic, --partition, --partitions and --timestamp-ms would say: {{\"key_column\": \"id\", \
                 \"timestamp_ms\": 0}})",
                path.display(),
                e.inner()
            )
        })?;
        if let Some(issue) = crate::config::duplicate_keys(&text).first() {
            bail!("{}: {issue}", path.display());
        }
        let problem = match &source {
            OwnSource {
                infer_rows: Some(0),
                ..
            } => Some("infer_rows: must be at least 1"),
            OwnSource {
                partition: Some(p), ..
            } if *p < 0 => Some("partition: must be 0 or more"),
            OwnSource {
                partitions: Some(n),
                ..
            } if !(1..=super::MAX_TEST_PARTITIONS).contains(&i64::from(*n)) => {
                Some("partitions: must be 1 to 256")
            }
            OwnSource {
                partition: Some(_),
                partitions: Some(_),
                ..
            } => Some("partition and partitions cannot both be set: one partition, or several"),
            OwnSource {
                timestamp_ms: Some(t),
                ..
            } if !(0..=super::input::MAX_TIMESTAMP_MS).contains(t) => Some(
                "timestamp_ms: must be 0 to 253402300799999 (the end of year 9999, the last time a \
                 Snowflake timestamp holds)",
            ),
            _ => None,
        };
        if let Some(problem) = problem {
            bail!("{}: {problem}", path.display());
        }
        if let Some(problem) =
            (source.topic.as_deref()).and_then(crate::validate::topic_name_problem)
        {
            bail!("{}: topic {problem}", path.display());
        }
        Ok(source)
    }
}

impl OwnTest {
    /// Finds transform `name` of the workspace at `dir` and its test data, without building it.
    pub(super) fn find(name: &str, dir: &Path) -> anyhow::Result<OwnTest> {
        let (component, crate_dir) = super::build::locate(name, dir)?;
        let data = crate_dir.join("testdata");
        let file = |name: &str| Some(data.join(name)).filter(|p| p.is_file());
        let input = match (file("input.jsonl"), file("input.csv")) {
            (Some(_), Some(_)) => {
                return Err(super::usage(anyhow::anyhow!(
                    "{} has both input.jsonl and input.csv: keep one, or pick one with --input",
                    data.display()
                )));
            }
            (jsonl, csv) => jsonl.or(csv),
        };
        let params_file = file("params.json");
        let params = match &params_file {
            None => Default::default(),
            Some(path) => super::params::read_params(path).map_err(super::usage)?,
        };
        let source = match file("source.json") {
            None => OwnSource::default(),
            Some(path) => OwnSource::read(&path).map_err(super::usage)?,
        };
        Ok(OwnTest {
            name: name.to_owned(),
            dir: dir.to_owned(),
            component,
            input,
            expect: file("expected.jsonl"),
            expect_failures: file("expected-failures.jsonl"),
            params_file,
            params,
            source,
        })
    }

    /// Builds the transform, as `transform build NAME` does. A build that fails is a
    /// [`UsageError`]: the test did not run, which a mismatch (exit 1) would not say.
    ///
    /// [`UsageError`]: super::UsageError
    pub(super) fn build(&self) -> anyhow::Result<()> {
        super::build::build(Some(&self.name), &self.dir)
            .map(drop)
            .map_err(super::usage)
    }
}

/// The golden files of `transform test`: the rows expected (`--expect`) and the failed records
/// expected (`--expect-failures`).
#[derive(Debug, Default)]
pub struct Golden {
    pub(super) rows: Option<GoldenFile<JsonRow>>,
    pub(super) failures: Option<GoldenFile<ExpectedFailure>>,
    /// Where `--write-failures` writes the failed records, as the lines of a failures file.
    pub failures_out: Option<FailuresOut>,
}

impl Golden {
    /// Checks the golden files that are given, every line, so that a bad one fails before the
    /// run rather than after it. They are read again as the run compares with them. A failure's
    /// `stage` must be one of `stages`, the stages this run has: a misspelt one would only ever
    /// show up as a mismatch.
    pub fn read(
        rows: Option<&Path>,
        failures: Option<&Path>,
        stages: &[String],
    ) -> anyhow::Result<Golden> {
        Ok(Golden {
            rows: rows
                .map(|p| GoldenFile::open(p, |_| Ok(())).context("--expect"))
                .transpose()?,
            failures: failures
                .map(|p| {
                    GoldenFile::open(p, |f: &ExpectedFailure| f.check_stage(stages))
                        .context("--expect-failures")
                })
                .transpose()?,
            failures_out: None,
        })
    }
}

/// The `--write-failures` file as the run writes it: a temporary file beside it, put in its place
/// when the run has gone through the whole input, so that a run that cannot start or stops on an
/// error leaves an older file as it was.
#[derive(Debug)]
pub struct FailuresOut {
    path: PathBuf,
    file: std::io::BufWriter<tempfile::NamedTempFile>,
}

impl FailuresOut {
    /// Starts writing `path`, which may be none of the files the run reads (`read`: each flag
    /// and its file, if given) nor where its output goes: writing it would destroy them.
    pub(super) fn create(
        path: &Path,
        read: &[(&str, Option<&PathBuf>)],
    ) -> anyhow::Result<FailuresOut> {
        if let Ok(meta) = std::fs::metadata(path) {
            let same = |p: &Path| p != Path::new("-") && same_path(p, path);
            if let Some((flag, _)) = read.iter().find(|(_, p)| p.is_some_and(|p| same(p))) {
                bail!(
                    "--write-failures {} is the {flag} file, which the run reads: writing it \
                     would destroy it. Write the failures elsewhere",
                    path.display()
                );
            }
            if let Some(stream) = output_stream(&meta) {
                bail!(
                    "--write-failures {} is also where this run writes its {stream}. Write the \
                     failures elsewhere",
                    path.display()
                );
            }
        }
        let dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        let file = tempfile::NamedTempFile::new_in(dir)
            .with_context(|| format!("cannot write --write-failures {}", path.display()))?;
        Ok(FailuresOut {
            path: path.to_owned(),
            file: std::io::BufWriter::new(file),
        })
    }

    /// Writes one failed record.
    pub(super) fn write(&mut self, f: &Failure) -> std::io::Result<()> {
        let expected = serde_json::to_string(&ExpectedFailure::of(f))?;
        writeln!(self.file, "{}", crate::config::redact_output(&expected))
    }

    /// Puts the file in its place.
    pub(super) fn finish(self) -> anyhow::Result<()> {
        let what = || format!("cannot write --write-failures {}", self.path.display());
        let file = self
            .file
            .into_inner()
            .map_err(|e| e.into_error())
            .with_context(what)?;
        file.persist(&self.path)
            .map_err(|e| e.error)
            .with_context(what)?;
        Ok(())
    }
}

/// A golden file's items, handed out in order: read through once up front (every line checked
/// and counted, nothing kept), then read again item by item as the run compares with them, so
/// that a golden file of any size fits in memory. A file that cannot be read twice (a pipe) is
/// held in memory instead.
#[derive(Debug)]
pub(super) struct GoldenFile<E> {
    path: PathBuf,
    /// How many items it has.
    count: usize,
    /// The items not yet handed out and their lines, when held in memory.
    held: Option<std::collections::VecDeque<(u64, E)>>,
    /// The second reading, once started.
    lines: Option<JsonLines>,
    /// How many items the second reading has handed out: it stops at `count`, so that lines
    /// appended to the file during the run (by a `tee -a` of the output, say) are not compared.
    handed: usize,
    /// A hash of the lines the first reading checked, and of those the second has handed out so
    /// far: when they differ at the last line, the file was rewritten during the run (`| tee
    /// golden.jsonl` truncates it and writes the run's own rows), and the verdict cannot stand.
    /// Appends after those lines change nothing.
    checked: u64,
    reread: std::hash::DefaultHasher,
}

impl<E: Expected> GoldenFile<E> {
    /// Opens and checks the golden file at `path`: every item must parse and pass `check`.
    fn open(
        path: &Path,
        check: impl Fn(&E) -> Result<(), String>,
    ) -> anyhow::Result<GoldenFile<E>> {
        // `-` is stdin, whatever a file of that name in the working directory is.
        let meta = (path != Path::new("-"))
            .then(|| std::fs::metadata(path).ok())
            .flatten();
        let regular = meta.as_ref().is_some_and(|m| m.is_file());
        if let Some(stream) = meta
            .as_ref()
            .filter(|m| m.is_file())
            .and_then(output_stream)
        {
            bail!(
                "{} is also where this run writes its {stream}; the run would be compared with \
                 itself. Write the output elsewhere{}",
                path.display(),
                // The shell truncated it before sluice started (`--expect g.jsonl > g.jsonl`).
                if meta.as_ref().is_some_and(|m| m.len() == 0) {
                    ", and restore the golden file: the redirection has emptied it"
                } else {
                    ""
                }
            );
        }
        let mut lines = JsonLines::open(path)?;
        let mut held = std::collections::VecDeque::new();
        let mut count = 0;
        let mut checked = std::hash::DefaultHasher::new();
        while let Some(item) = lines.next_line() {
            let (n, text) = item?;
            std::hash::Hash::hash(&(n, &text), &mut checked);
            let e = E::parse(path, n, &text)?;
            if let Err(problem) = check(&e) {
                bail!("{}:{n}: {problem}", path.display());
            }
            if !regular {
                held.push_back((n, e));
            }
            count += 1;
        }
        Ok(GoldenFile {
            path: path.to_path_buf(),
            count,
            held: (!regular).then_some(held),
            lines: None,
            handed: 0,
            checked: std::hash::Hasher::finish(&checked),
            reread: std::hash::DefaultHasher::new(),
        })
    }

    /// The next item and its line; an error if the file changed since it was checked.
    fn next(&mut self) -> anyhow::Result<Option<(u64, E)>> {
        if let Some(held) = &mut self.held {
            return Ok(held.pop_front());
        }
        if self.handed == self.count {
            return Ok(None);
        }
        let lines = match &mut self.lines {
            Some(lines) => lines,
            None => self.lines.insert(JsonLines::open(&self.path)?),
        };
        match lines.next_line() {
            // It had `count` items when it was checked; fewer now is a change, not extra rows.
            None => bail!("it ended after {} of its {} items", self.handed, self.count),
            Some(item) => {
                let (n, text) = item?;
                self.handed += 1;
                std::hash::Hash::hash(&(n, &text), &mut self.reread);
                if self.handed == self.count
                    && std::hash::Hasher::finish(&self.reread) != self.checked
                {
                    bail!("it was written to since the run started");
                }
                E::parse(&self.path, n, &text).map(|e| Some((n, e)))
            }
        }
    }
}

/// Which of this process's output streams, if any, is the file `meta` describes.
pub(super) fn output_stream(meta: &std::fs::Metadata) -> Option<&'static str> {
    use std::os::fd::AsFd;
    if same_file(std::io::stdout().as_fd(), meta) {
        Some("output rows (stdout)")
    } else if same_file(std::io::stderr().as_fd(), meta) {
        Some("failed records and counts (stderr)")
    } else {
        None
    }
}

/// Whether paths `a` and `b` are the same file (hard links too); false if either is missing.
pub(super) fn same_path(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => (a.dev(), a.ino()) == (b.dev(), b.ino()),
        _ => false,
    }
}

/// Whether `fd` is open on the file `meta` describes.
pub(super) fn same_file(fd: std::os::fd::BorrowedFd<'_>, meta: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::MetadataExt;
    rustix::fs::fstat(fd).is_ok_and(|st| st.st_dev == meta.dev() && st.st_ino == meta.ino())
}

#[cfg(test)]
impl<E> From<Vec<E>> for GoldenFile<E> {
    fn from(items: Vec<E>) -> GoldenFile<E> {
        GoldenFile {
            path: PathBuf::new(),
            count: items.len(),
            held: Some((1..).zip(items).collect()),
            lines: None,
            handed: 0,
            checked: 0,
            reread: std::hash::DefaultHasher::new(),
        }
    }
}

/// A row as `transform test` prints it and `--expect` compares it. The text is the JSON object
/// of the row's Kafka message (fields in order, duplicate names kept, `json` values as their
/// text, floats exact); rows are equal when their members are, in any order (the Snowflake sink
/// matches columns by name) but with types (`16` is not `16.0`) and duplicates.
#[derive(Debug, Clone)]
pub struct JsonRow {
    /// The row's JSON text.
    pub text: String,
    /// Its members sorted by name (stably, so duplicates keep their order).
    members: Vec<(String, Member)>,
    /// The names of the members that are timestamp values (see [`JsonRow::of_row`]).
    times: Vec<String>,
}

/// A member's value as compared: parsed (integers by every digit), or its exact text when it
/// nests deeper than [`exact_json`] reads.
#[derive(Debug, Clone, PartialEq)]
enum Member {
    Parsed(exact_json::Json),
    Text(String),
}

impl JsonRow {
    /// Reads one JSON object; floats are read exactly, so a golden copy of a printed row matches.
    pub fn parse(text: &str) -> Result<JsonRow, String> {
        let mut members = wire::members(text)?
            .into_iter()
            .map(|(name, raw)| {
                // serde_json checks the syntax (without a nesting limit) and words the error.
                serde_json::from_str::<serde::de::IgnoredAny>(raw)
                    .map_err(|e| format!("{name:?}: {e}"))?;
                let value = match exact_json::parse(raw) {
                    Some(v) => Member::Parsed(v),
                    None => Member::Text(raw.to_owned()),
                };
                Ok((name.to_string(), value))
            })
            .collect::<Result<Vec<_>, String>>()?;
        members.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(JsonRow {
            text: text.trim().to_owned(),
            members,
            times: Vec::new(),
        })
    }

    /// [`parse`](JsonRow::parse) of `text`, what `row` printed as: its timestamp values, which
    /// print as strings, compare as instants with the expected rows' text.
    pub fn of_row(text: &str, row: &crate::row::Row) -> Result<JsonRow, String> {
        let mut parsed = JsonRow::parse(text)?;
        parsed.times = (row.fields.iter())
            .filter(|f| matches!(f.value, crate::row::Value::Timestamp(_)))
            .map(|f| f.name.to_string())
            .collect();
        Ok(parsed)
    }

    fn is_time(&self, name: &str) -> bool {
        self.times.iter().any(|t| t == name)
    }
}

impl JsonRow {
    /// What differs between this expected row and `actual`, member by member, so that a wide
    /// row's one wrong value is named rather than left to be spotted in two long lines:
    /// `differs in "value": expected 50, got 51; missing: "id"; unexpected: "total"`.
    fn differences(&self, actual: &JsonRow) -> String {
        // Raw texts are read again only here, for a mismatch; both rows parsed already.
        fn raw(row: &JsonRow) -> Vec<(crate::row::Name, &str)> {
            let mut members = wire::members(&row.text).unwrap_or_default();
            members.sort_by(|a, b| a.0.cmp(&b.0));
            members
        }
        let (want, got) = (raw(self), raw(actual));
        let values = |members: &[(crate::row::Name, &str)], name: &str| -> Vec<String> {
            members
                .iter()
                .filter(|(n, _)| &**n == name)
                .map(|(_, v)| v.trim().to_owned())
                .collect()
        };
        let mut names: Vec<&str> = want.iter().chain(&got).map(|(n, _)| &**n).collect();
        names.sort_unstable();
        names.dedup();
        let (mut changed, mut missing, mut unexpected) = (Vec::new(), Vec::new(), Vec::new());
        for name in names {
            fn named<'a>(row: &'a JsonRow, name: &str) -> Vec<&'a Member> {
                let named = row.members.iter().filter(|(n, _)| n == name);
                named.map(|(_, m)| m).collect()
            }
            let (x, y) = (named(self, name), named(actual, name));
            let time = actual.is_time(name);
            if x.len() == y.len() && x.iter().zip(&y).all(|(x, y)| same_member(x, y, time)) {
                continue;
            }
            let (w, g) = (values(&want, name), values(&got, name));
            let shown = |v: &[String]| match v {
                [one] => one.clone(),
                many => format!("[{}] (the name {} times)", many.join(", "), many.len()),
            };
            match (w.is_empty(), g.is_empty()) {
                (false, true) => missing.push(format!("{name:?}")),
                (true, false) => unexpected.push(format!("{name:?}")),
                _ => changed.push(format!(
                    "{name:?}: expected {}, got {}",
                    shown(&w),
                    shown(&g)
                )),
            }
        }
        let mut parts = Vec::new();
        if !changed.is_empty() {
            parts.push(format!("differs in {}", changed.join("; ")));
        }
        if !missing.is_empty() {
            parts.push(format!("missing: {}", missing.join(", ")));
        }
        if !unexpected.is_empty() {
            parts.push(format!("unexpected: {}", unexpected.join(", ")));
        }
        parts.join("; ")
    }
}

/// Whether an expected member matches an actual one: equal, or (`time`: the actual one is a
/// timestamp value, printed as `2026-11-01T08:00:01.737000`) the expected one text that reads as
/// the same instant (`2026-11-01T08:00:01.737`, `2026-11-01 08:00:01.737Z`), as a golden file
/// written by hand, or copied from the input, holds it.
fn same_member(expected: &Member, actual: &Member, time: bool) -> bool {
    use crate::row::{Value, ValueType};
    if expected == actual {
        return true;
    }
    use exact_json::Json;
    let (Member::Parsed(Json::String(want)), Member::Parsed(Json::String(got))) =
        (expected, actual)
    else {
        return false;
    };
    let instant = |text: &str| match crate::source::csv::parse_value(text, ValueType::Timestamp) {
        Some(Value::Timestamp(us)) => Some(us),
        _ => None,
    };
    // A string field holding text that reads as a time is compared as text.
    time && instant(want).is_some() && instant(want) == instant(got)
}

impl PartialEq for JsonRow {
    fn eq(&self, other: &JsonRow) -> bool {
        self.members == other.members
    }
}

impl std::fmt::Display for JsonRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

/// A record that failed in `transform test`, named as its dead letter would be in `sluice run`.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    /// Its 1-based position among the input's data records.
    pub record: u64,
    /// The line of the input it starts on.
    pub line: u64,
    /// `source` for a record the source would not send, `transform:<name>` for a transform.
    pub stage: String,
    /// The dead-letter kind: `ragged_row`, `parse`, `trap`, `guest_error`, `timeout`, ...
    pub kind: String,
    /// The reason, for humans.
    pub reason: String,
    /// The guest's typed error, when it returned one.
    pub error: Option<GuestFault>,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Failure {
            record,
            line,
            stage,
            kind,
            reason,
            error,
        } = self;
        write!(
            f,
            "record {record} (line {line}), stage {stage}, kind {kind}"
        )?;
        if let Some(GuestFault { case, field }) = error {
            write!(f, ", case {case}")?;
            if let Some(field) = field {
                write!(f, ", field {field}")?;
            }
        }
        write!(f, ": {reason}")
    }
}

/// One line of an `--expect-failures` file: what is given must match the failed record in the
/// same position; `reason` matches any part of the reason, since messages carry details (a trap's
/// backtrace, a guest's wording) that a test should not pin. `case` and `field` match a guest's
/// typed error, as its dead letter's `error` holds it.
#[derive(Debug, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ExpectedFailure {
    #[serde(skip_serializing_if = "Option::is_none")]
    record: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    line: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stage: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    kind: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    case: Option<String>,
    /// `Some(None)` for `"field": null`: a typed error that names no field (`other`).
    #[serde(
        default,
        deserialize_with = "given",
        skip_serializing_if = "Option::is_none"
    )]
    field: Option<Option<String>>,
}

impl ExpectedFailure {
    /// What `--write-failures` writes for `f`: everything but its reason.
    fn of(f: &Failure) -> ExpectedFailure {
        ExpectedFailure {
            record: Some(f.record),
            line: Some(f.line),
            stage: Some(f.stage.clone()),
            kind: Some(f.kind.clone()),
            reason: None,
            case: f.error.as_ref().map(|e| e.case.to_owned()),
            field: f.error.as_ref().map(|e| e.field.clone()),
        }
    }

    /// Whether the `stage` given, if any, is one of `stages`.
    fn check_stage(&self, stages: &[String]) -> Result<(), String> {
        let Some(stage) = &self.stage else {
            return Ok(());
        };
        if stages.iter().any(|s| same_stage(stage, s)) {
            return Ok(());
        }
        let meant = format!("transform:{stage}");
        let hint = match stages.iter().find(|s| same_stage(&meant, s)) {
            Some(s) => format!(" (did you mean {s:?}?)"),
            None => String::new(),
        };
        Err(format!(
            "stage {stage:?} is not a stage of this run{hint}; it has: {}",
            stages.join(", ")
        ))
    }
}

/// A member that is there, even as `null` (which serde's `Option` would read as absent).
fn given<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    <Option<String> as serde::Deserialize>::deserialize(d).map(Some)
}

/// Whether two stages are the same, `-` and `_` in a transform's name matching alike as they do
/// in `--with NAME.key=value` (a crate `split-tags` builds `transform_split_tags.wasm`).
fn same_stage(a: &str, b: &str) -> bool {
    match (a.strip_prefix("transform:"), b.strip_prefix("transform:")) {
        (Some(a), Some(b)) => same_name(a, b),
        _ => a == b,
    }
}

impl Expected for ExpectedFailure {
    type Actual = Failure;
    const NAME: &str = "failed record";

    fn parse(path: &Path, line: u64, text: &str) -> anyhow::Result<ExpectedFailure> {
        // serde would also take the struct from a JSON array, by position.
        let parsed = match text.trim_start().starts_with('{') {
            true => serde_json::from_str(text).map_err(anyhow::Error::from),
            false => Err(anyhow::anyhow!("it is not a JSON object")),
        };
        let mut parsed: ExpectedFailure = parsed.with_context(|| {
            format!(
                "{}:{line}: not what a golden file holds (one JSON object per line)",
                path.display()
            )
        })?;
        // Kinds are written with `_` (`guest_error`) and the WIT's cases with `-`
        // (`invalid-value`): either spelling of either is taken, as for stages.
        parsed.kind = parsed.kind.map(|k| k.replace('-', "_"));
        parsed.case = parsed.case.map(|c| c.replace('_', "-"));
        // serde reads `"line": null` as no `line`, which would match any line: a golden file
        // that means something by it would pass whatever failed.
        if let Ok(serde_json::Value::Object(members)) = serde_json::from_str(text)
            && let Some((key, _)) = (members.iter()).find(|(k, v)| v.is_null() && *k != "field")
        {
            anyhow::bail!(
                "{}:{line}: `{key}` is null; give the value it must have, or leave the key out to \
                 match any",
                path.display()
            );
        }
        // A misspelt kind would only ever show up as a mismatch.
        if let Some(kind) = &parsed.kind {
            let kinds: Vec<&str> = (FailureKind::ALL.iter().map(|k| k.as_str()))
                .chain(BadRowKind::ALL.iter().map(|k| k.as_str()))
                .chain([dead_letter::DECODE_KIND])
                .collect();
            if !kinds.contains(&kind.as_str()) {
                anyhow::bail!(
                    "{}:{line}: kind {kind:?} is not a failure kind (one of: {})",
                    path.display(),
                    kinds.join(", ")
                );
            }
        }
        // A guest's typed error comes only with kind `guest_error`: any other kind with it
        // would never match.
        if let (Some(kind), Some(key)) = (
            &parsed.kind,
            (parsed.case.as_ref().map(|_| "case")).or(parsed.field.as_ref().map(|_| "field")),
        ) && kind != FailureKind::Guest.as_str()
        {
            anyhow::bail!(
                "{}:{line}: `{key}` is a guest's typed error, which only kind \"{}\" has, not \
                 {kind:?}",
                path.display(),
                FailureKind::Guest.as_str()
            );
        }
        if let Some(case) = &parsed.case
            && !GuestFault::CASES.contains(&case.as_str())
        {
            anyhow::bail!(
                "{}:{line}: case {case:?} is not a case of the WIT's transform-error (one of: {})",
                path.display(),
                GuestFault::CASES.join(", ")
            );
        }
        Ok(parsed)
    }

    fn show(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    fn matches(&self, f: &Failure) -> bool {
        self.record.is_none_or(|r| r == f.record)
            && self.line.is_none_or(|l| l == f.line)
            && self.stage.as_ref().is_none_or(|s| same_stage(s, &f.stage))
            && self.kind.as_ref().is_none_or(|k| *k == f.kind)
            && self
                .reason
                .as_ref()
                .is_none_or(|r| f.reason.contains(r.as_str()))
            && (self.case.as_ref()).is_none_or(|c| f.error.as_ref().is_some_and(|e| e.case == c))
            && (self.field.as_ref())
                .is_none_or(|n| (f.error.as_ref()).is_some_and(|e| e.field == *n))
    }
}

/// "matches" or "match", to go with [`counted`].
fn agree(n: usize) -> &'static str {
    if n == 1 { "matches" } else { "match" }
}

/// Prints a golden file's verdict (`ok: 3 rows agree with FILE`, or the mismatch), and whether
/// it matched.
pub(super) fn print_verdict(golden: &Path, verdict: &Result<usize, String>, noun: &str) -> bool {
    match verdict {
        Ok(n) => {
            crate::errln!(
                "ok: {} {} {}",
                counted(*n, noun),
                agree(*n),
                golden.display()
            );
            true
        }
        Err(msg) => {
            crate::errln!("mismatch against {}: {msg}", golden.display());
            false
        }
    }
}

/// An item of a golden file, compared with what the run produced.
pub(super) trait Expected {
    /// What the run produced.
    type Actual: std::fmt::Display + Clone;
    /// What one item is called (`counted` makes the plural).
    const NAME: &str;
    /// The golden item as a message shows it.
    fn show(&self) -> String;
    /// Whether `actual` is what this golden item expects.
    fn matches(&self, actual: &Self::Actual) -> bool;
    /// What differs in `actual`, in detail, when the two items are too long to compare by eye.
    fn differences(&self, _actual: &Self::Actual) -> Option<String> {
        None
    }
    /// The item on line `line` of golden file `path`.
    fn parse(path: &Path, line: u64, text: &str) -> anyhow::Result<Self>
    where
        Self: Sized;
}

impl Expected for JsonRow {
    type Actual = JsonRow;
    const NAME: &str = "row";

    fn parse(path: &Path, line: u64, text: &str) -> anyhow::Result<JsonRow> {
        JsonRow::parse(text).map_err(|e| {
            anyhow::anyhow!(
                "{}:{line}: not a JSON object (a golden file holds one row per line): {e}",
                path.display()
            )
        })
    }

    fn show(&self) -> String {
        self.text.clone()
    }

    fn matches(&self, actual: &JsonRow) -> bool {
        self.members.len() == actual.members.len()
            && (self.members.iter().zip(&actual.members))
                .all(|((a, x), (b, y))| a == b && same_member(x, y, actual.is_time(b)))
    }

    fn differences(&self, actual: &JsonRow) -> Option<String> {
        Some(JsonRow::differences(self, actual)).filter(|d| !d.is_empty())
    }
}

/// Compares a run's items with a golden file's one at a time, as the run makes them, keeping
/// only the first difference and a count of the others, so that the run's output need not fit
/// in memory.
pub(super) struct Check<E: Expected> {
    expected: GoldenFile<E>,
    seen: usize,
    /// Pairs compared, and how many of them differ.
    compared: usize,
    differing: usize,
    first: Option<Difference>,
    /// The first pair that differs (its golden line, both items), until the next pair says
    /// whether the two sides are out of step by one item.
    first_pair: Option<(u64, E, E::Actual)>,
    /// What the next pair said: one item missing from the run, or one extra in it.
    shift: Option<String>,
}

/// The first difference a [`Check`] found.
enum Difference {
    /// A message naming the pair that differs.
    Pair(String),
    /// The run made more items than expected; the first extra one.
    Extra(String),
    /// The golden file could not be read again.
    Unreadable(String),
}

impl<E: Expected> Check<E> {
    pub(super) fn new(expected: GoldenFile<E>) -> Check<E> {
        Check {
            expected,
            seen: 0,
            compared: 0,
            differing: 0,
            first: None,
            first_pair: None,
            shift: None,
        }
    }

    /// Compares the run's next item. `from` says where it came from, when the item does not say
    /// it itself (an output row: the input record that made it); it is called only for a
    /// difference. After the first difference, items are still compared, to count the pairs
    /// that differ.
    pub(super) fn see(&mut self, actual: &E::Actual, from: impl FnOnce() -> String) {
        self.seen += 1;
        if matches!(
            self.first,
            Some(Difference::Extra(_) | Difference::Unreadable(_))
        ) {
            return;
        }
        let difference = match self.expected.next() {
            Ok(Some((line, e))) => {
                self.compared += 1;
                // After one missing or extra item, every later pair differs; the pair after the
                // first difference tells which, by matching across.
                if let Some((first_line, first_e, first_actual)) = self.first_pair.take() {
                    let n = self.seen - 1;
                    if e.matches(&first_actual) {
                        self.shift = Some(format!(
                            "golden line {first_line} looks missing from the output: {} {n} is \
                             the golden file's next {}",
                            E::NAME,
                            E::NAME
                        ));
                    } else if first_e.matches(actual) {
                        self.shift = Some(format!(
                            "{} {n} looks extra: the next {} the run made is golden line \
                             {first_line}",
                            E::NAME,
                            E::NAME
                        ));
                    }
                }
                if e.matches(actual) {
                    return;
                }
                self.differing += 1;
                if self.first.is_some() {
                    return;
                }
                // Both clipped: a row of 20,000 columns would bury what differs in it.
                let msg = Difference::Pair(format!(
                    "{} {} (golden line {line}{}): expected {}, got {}{}",
                    E::NAME,
                    self.seen,
                    from(),
                    clip(e.show()),
                    clip(actual.to_string()),
                    e.differences(actual)
                        .map(|d| format!("\n  {}", clip(d)))
                        .unwrap_or_default()
                ));
                self.first_pair = Some((line, e, actual.clone()));
                msg
            }
            Ok(None) => Difference::Extra(format!("{actual}{}", from())),
            Err(e) => Difference::Unreadable(format!("{e:#}")),
        };
        self.first.get_or_insert(difference);
    }

    /// How many items matched, or the first difference: the first pair that does not match,
    /// else an extra or missing item.
    pub(super) fn verdict(mut self) -> Result<usize, String> {
        let (n, m) = (self.expected.count, self.seen);
        let expected = format!("expected {}", counted(n, E::NAME));
        match self.first {
            Some(Difference::Pair(msg)) => {
                let mut all = format!(
                    "{} of {} compared {}",
                    self.differing,
                    counted(self.compared, E::NAME),
                    match self.differing {
                        1 => "differs",
                        _ => "differ",
                    }
                );
                if m != n {
                    all.push_str(&format!("; {expected}, got {m}"));
                }
                if let Some(shift) = self.shift {
                    all.push_str(&format!("\n  {shift}"));
                }
                Err(format!("{msg}\n  in all: {all}"))
            }
            Some(Difference::Extra(first)) => {
                Err(format!("{expected}, got {m} (first extra: {first})"))
            }
            Some(Difference::Unreadable(why)) => Err(format!("the golden file changed: {why}")),
            // The run saw `m` items, so the next one is item `m + 1`.
            None if m < n => match self.expected.next() {
                Ok(Some((line, e))) => Err(format!(
                    "{expected}, got {m} (first missing, golden line {line}: {})",
                    e.show()
                )),
                // Not reached: `next` fails when the file ends before its checked count.
                Ok(None) => Err(format!("{expected}, got {m}")),
                Err(e) => Err(format!("the golden file changed: {e:#}")),
            },
            None => Ok(n),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::run::{MAX_SHOWN_ROW, row_text};
    use super::*;
    use crate::row::Row;

    /// JSON that serde_json's `Value` cannot hold is still a row, compared exactly (integers past
    /// `u64` by every digit, at any depth); what is not JSON is refused.
    #[test]
    fn rows_hold_any_json() {
        let mut row = Row::default();
        row.push("o", crate::row::Value::Json("[1e400]".into()));
        row.push("s", crate::row::Value::Json(r#""\ud800""#.into()));
        let printed = JsonRow::parse(&row_text(&row)).unwrap();
        assert_eq!(printed.text, r#"{"o":[1e400],"s":"\ud800"}"#);
        assert_eq!(JsonRow::parse(&printed.text), Ok(printed.clone()));
        assert_ne!(JsonRow::parse(r#"{"o":[1e401],"s":"\ud800"}"#), Ok(printed));
        assert!(JsonRow::parse(r#"{"a":01}"#).is_err());
        let id = |n: &str| JsonRow::parse(&format!(r#"{{"o":{{"ids":[{n}]}}}}"#)).unwrap();
        assert_ne!(id("18446744073709551617"), id("18446744073709551616"));
        assert_ne!(id("18446744073709551616"), id("1.8446744073709552e19"));
        assert_eq!(id("18446744073709551617"), id(" 18446744073709551617 "));
    }

    /// A golden file is checked whole up front, kept out of memory, and read again as the run
    /// compares with it.
    #[test]
    fn golden_files_are_checked_then_read_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g.jsonl");
        std::fs::write(&path, "{\"a\":1}\n\n{\"a\":2}\n").unwrap();
        let golden = GoldenFile::<JsonRow>::open(&path, |_| Ok(())).unwrap();
        assert_eq!((golden.count, golden.held.is_none()), (2, true));
        let mut check = Check::new(golden);
        check.see(&JsonRow::parse("{\"a\":1}").unwrap(), String::new);
        assert_eq!(
            check.verdict(),
            Err("expected 2 rows, got 1 (first missing, golden line 3: {\"a\":2})".to_owned())
        );

        // A file rewritten after the check (`| tee golden.jsonl` writing the run's own rows)
        // does not pass: the run must match what the file held when it started.
        let golden = GoldenFile::<JsonRow>::open(&path, |_| Ok(())).unwrap();
        let mut check = Check::new(golden);
        std::fs::write(&path, "{\"a\":1}\n{\"a\":3}\n").unwrap();
        for a in [1, 3] {
            check.see(
                &JsonRow::parse(&format!("{{\"a\":{a}}}")).unwrap(),
                String::new,
            );
        }
        assert_eq!(
            check.verdict(),
            Err("the golden file changed: it was written to since the run started".to_owned())
        );
        // Cut short after the check, it is not read as the run making extra rows.
        std::fs::write(&path, "{\"a\":1}\n{\"a\":2}\n{\"a\":3}\n").unwrap();
        let golden = GoldenFile::<JsonRow>::open(&path, |_| Ok(())).unwrap();
        let mut check = Check::new(golden);
        std::fs::write(&path, "{\"a\":1}\n").unwrap();
        for a in [1, 2, 3] {
            check.see(
                &JsonRow::parse(&format!("{{\"a\":{a}}}")).unwrap(),
                String::new,
            );
        }
        assert_eq!(
            check.verdict(),
            Err("the golden file changed: it ended after 1 of its 3 items".to_owned())
        );
        // Lines appended (`| tee -a golden.jsonl`), before or during the second reading, are
        // not read.
        std::fs::write(&path, "{\"a\":1}\n\n{\"a\":2}\n").unwrap();
        let golden = GoldenFile::<JsonRow>::open(&path, |_| Ok(())).unwrap();
        let mut check = Check::new(golden);
        let append = |line: &[u8]| {
            let mut file = std::fs::OpenOptions::new()
                .append(true)
                .open(&path)
                .unwrap();
            std::io::Write::write_all(&mut file, line).unwrap();
        };
        append(b"{\"a\":1}\n");
        check.see(&JsonRow::parse("{\"a\":1}").unwrap(), String::new);
        append(b"{\"a\":2}\n");
        check.see(&JsonRow::parse("{\"a\":2}").unwrap(), String::new);
        assert_eq!(check.verdict(), Ok(2));

        std::fs::write(&path, "{\"a\":1}\n\nnot json\n").unwrap();
        let err = GoldenFile::<JsonRow>::open(&path, |_| Ok(())).unwrap_err();
        assert!(
            format!("{err:#}").contains("g.jsonl:3: not a JSON object"),
            "{err:#}"
        );
    }

    /// A timestamp as sluice prints it matches expected text that reads as the same instant;
    /// another instant, or a string field that only looks like a time, does not.
    #[test]
    fn a_printed_timestamp_matches_the_same_instant_written_otherwise() {
        let row = |ts: &str| JsonRow::parse(&format!("{{\"id\":1,\"at\":\"{ts}\"}}")).unwrap();
        let mut value = Row::with_capacity(2);
        value.push("id", crate::row::Value::Int(1));
        value.push("at", crate::row::Value::Timestamp(1_761_984_001_737_000));
        let text = row_text(&value);
        assert_eq!(text, "{\"id\":1,\"at\":\"2025-11-01T08:00:01.737000\"}");
        let printed = JsonRow::of_row(&text, &value).unwrap();
        let row = |ts: &str| row(&ts.replacen("2026", "2025", 1));
        for same in ["2026-11-01T08:00:01.737", "2026-11-01 08:00:01.737Z"] {
            assert!(row(same).matches(&printed), "{same}");
        }
        assert!(!row("2026-11-01T08:00:01.738").matches(&printed));
        let said = row("2026-11-01T08:00:01.738").differences(&printed);
        assert!(said.contains("differs in \"at\""), "{said}");
        assert!(
            row("2026-11-01T08:00:01.737")
                .differences(&printed)
                .is_empty()
        );
        // A string that reads as a time is compared as written.
        assert!(!row("2026-11-01T08:00:01.737").matches(&row("2026-11-01T08:00:01.737000")));
        assert!(!row("2026-11-01").matches(&row("2026-11-01T00:00:00")));
    }

    #[test]
    fn diff_names_the_first_difference() {
        let diff = |expected: &[JsonRow], actual: &[JsonRow]| {
            let mut check = Check::new(expected.to_vec().into());
            actual.iter().for_each(|a| check.see(a, String::new));
            check.verdict().err()
        };
        let v = |s: &str| JsonRow::parse(s).unwrap();
        assert_eq!(diff(&[v("{\"a\":1}")], &[v("{\"a\":1}")]), None);
        // Members in any order, but with their types and duplicates.
        let (ab, ba) = (v(r#"{"a":1,"b":[1, 2]}"#), v(r#"{"b":[1,2],"a":1}"#));
        assert_eq!(diff(&[ab], &[ba]), None);
        assert!(diff(&[v(r#"{"a":16}"#)], &[v(r#"{"a":16.0}"#)]).is_some());
        let (dup, one) = (v(r#"{"a":1,"a":"x"}"#), v(r#"{"a":"x"}"#));
        assert!(diff(std::slice::from_ref(&dup), &[one]).is_some());
        assert!(diff(&[dup], &[v(r#"{"a":"x","a":1}"#)]).is_some());
        assert_eq!(
            diff(
                &[v("{\"a\":1}"), v("{\"a\":1}")],
                &[v("{\"a\":1}"), v("{\"a\":2}")]
            ),
            Some(
                "row 2 (golden line 2): expected {\"a\":1}, got {\"a\":2}\n  \
                 differs in \"a\": expected 1, got 2\n  \
                 in all: 1 of 2 rows compared differs"
                    .to_owned()
            )
        );
        // Every pair is compared, to count those that differ; a wide row is clipped in the
        // message, not what differs in it.
        let wide = |last: u32| {
            let members: Vec<String> = (0..2000)
                .map(|i| format!("\"c{i}\":{}", if i == 1999 { last } else { 0 }))
                .collect();
            v(&format!("{{{}}}", members.join(",")))
        };
        let said = diff(
            &[wide(0), v("{\"a\":1}"), wide(0), v("{\"a\":1}")],
            &[wide(1999), v("{\"a\":1}"), wide(1998)],
        )
        .unwrap();
        assert!(said.len() < 2 * MAX_SHOWN_ROW + 300, "{} bytes", said.len());
        assert!(said.contains("bytes in all)"), "{said}");
        assert!(
            said.contains("differs in \"c1999\": expected 0, got 1999"),
            "{said}"
        );
        assert!(
            said.ends_with("in all: 2 of 3 rows compared differ; expected 4 rows, got 3"),
            "{said}"
        );
        // A wide row's difference is named member by member.
        let wide = diff(
            &[v(r#"{"id":1,"name":"x","value":16,"gone":true}"#)],
            &[v(r#"{"value":16.0,"name":"x","id":1,"new":null}"#)],
        )
        .unwrap();
        assert!(
            wide.contains(
                "differs in \"value\": expected 16, got 16.0; missing: \"gone\"; unexpected: \"new\""
            ),
            "{wide}"
        );
        // A member only added is named as such, not as a difference "in" something.
        let added = diff(&[v(r#"{"id":1}"#)], &[v(r#"{"id":1,"large":true}"#)]).unwrap();
        assert!(
            added.contains("got {\"id\":1,\"large\":true}\n  unexpected: \"large\""),
            "{added}"
        );
        let dups = diff(&[v(r#"{"a":1,"a":2}"#)], &[v(r#"{"a":1}"#)]).unwrap();
        assert!(
            dups.contains("differs in \"a\": expected [1, 2] (the name 2 times), got 1"),
            "{dups}"
        );
        assert!(
            diff(&[], &[v("{\"a\":2}")])
                .unwrap()
                .contains("first extra")
        );
    }
}
