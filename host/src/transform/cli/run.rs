//! The run of `transform test`: the chain over the input in batches, its rows and failures
//! printed and compared as they come, warnings of rows a sink would refuse, and the report.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Instant;

use super::golden::{Check, Failure, Golden, JsonRow};
use super::input::{InputRecord, InputRecords, LINGER, Skip};
use super::usage;
use crate::counted;
use crate::dead_letter;
use crate::row::{RecordMeta, Row};
use crate::source::wire;
use crate::transform::config::TransformConfig;
use crate::transform::error::{LoadError, TransformError};
use crate::transform::runtime::{RecordOutcome, RuntimeOptions, TransformChain, default_cache_dir};

/// What `test` saw. It keeps counts and verdicts, not the rows themselves, so that an input of
/// any size runs in bounded memory.
#[derive(Debug)]
pub struct TestReport {
    /// How many records ran: rows through the chain, bad ones and undecodable letters failed.
    pub records: u64,
    /// How many of them went through the chain (the rest were bad or undecodable).
    pub ran: u64,
    /// How many rows the chain emitted.
    pub rows: u64,
    /// How many records failed, bad input records included.
    pub failed: u64,
    /// The first record that failed, if any.
    pub first_failure: Option<Failure>,
    /// Against the golden rows, when there were some: how many matched, or the first difference.
    pub rows_verdict: Option<Result<usize, String>>,
    /// Against the golden failed records, when there were some: how many matched, or the first
    /// difference.
    pub failures_verdict: Option<Result<usize, String>>,
    /// The transforms that failed on a batch but on none of its rows alone, and how many times.
    pub batch_only: Vec<(String, u64)>,
    /// Output rows that a warning said the sink would set aside, of input rows it would not.
    pub set_aside: u64,
}

/// How `transform test` loads its chain: `workers` workers (one per partition of
/// `--partitions`; with one, its batches run on the calling thread), and the compile cache.
pub(super) fn test_options(workers: usize) -> RuntimeOptions {
    RuntimeOptions {
        workers,
        cache_dir: default_cache_dir(),
    }
}

/// Loads `configs` for [`test()`], with `workers` workers, each with its own instances. A
/// component that cannot be loaded, or whose `init` fails
/// (usually: rejects its params), is a [`UsageError`].
///
/// [`UsageError`]: super::UsageError
pub fn load(configs: &[TransformConfig], workers: usize) -> anyhow::Result<TransformChain> {
    TransformChain::load(configs, &test_options(workers)).map_err(|e| {
        // Only an engine set-up failure is the machine's fault; the rest is the command's.
        let engine = matches!(e, LoadError::Engine(_));
        let e = anyhow::Error::new(e).context("loading the transforms");
        if engine { e } else { usage(e) }
    })
}

/// Runs the chain over `records` in batches as they are read, writes output rows as JSONL to
/// `out`, and failures (bad CSV records and undecodable letters included), the dead letters
/// skipped, and a line of counts per transform (plus fuel, when metered) to `err`, and compares
/// both with `golden` as they come. An input that cannot be read is a [`UsageError`], after the
/// records before it have run. Reading stops, between batches, once `stop` is set.
///
/// [`UsageError`]: super::UsageError
pub fn test(
    chain: &TransformChain,
    mut records: InputRecords,
    batch_size: usize,
    golden: Golden,
    out: &mut dyn Write,
    err: &mut dyn Write,
    stop: Option<&std::sync::atomic::AtomicBool>,
) -> anyhow::Result<TestReport> {
    let mut rows_check = golden.rows.map(Check::new);
    let mut failures_check = golden.failures.map(Check::new);
    let mut failures_out = golden.failures_out;
    let (mut rows, mut failed, mut bad, mut undecoded) = (0, 0, 0, 0);
    let mut first_failure = None;
    let mut fail = |f: Failure, err: &mut dyn Write, show: &str| -> std::io::Result<()> {
        let (n, line) = (f.record, f.line);
        // A reason may quote a param, which a pipeline file may take from a secret.
        let text = format!("record {n} (line {line}): {show}");
        writeln!(err, "{}", crate::config::redact_output(&text))?;
        failed += 1;
        if let Some(check) = &mut failures_check {
            check.see(&f, String::new);
        }
        if let Some(out) = &mut failures_out {
            out.write(&f)?;
        }
        first_failure.get_or_insert(f);
        Ok(())
    };
    let batch_size = batch_size.max(1);
    // A batch's rows, written in one go (not a write per row) before the next failure line, so
    // that rows and failures still come out in record order on a terminal.
    let mut pending = String::new();
    let mut number = 0usize;
    // Rows handed to the chain.
    let mut sent = 0u64;
    let mut unreadable = None;
    let mut skipped: BTreeMap<Skip, u64> = BTreeMap::new();
    let mut types = FieldTypes::default();
    let mut input_types = FieldTypes::default();
    // Each problem of field names once: every row of a transform that makes one has it.
    let mut names_warned = std::collections::HashSet::new();
    // Output rows a warning says the sink sets aside.
    let mut set_aside = 0u64;
    // A failure of the chain itself (not of a record): the run stops, after the counts.
    let mut fatal = None;
    let mut stopped = false;
    loop {
        if stop.is_some_and(|s| s.load(std::sync::atomic::Ordering::Relaxed)) {
            stopped = true;
            break;
        }
        // Kept beside the batch because failures are reported by record number and line.
        let mut origins = Vec::new();
        let mut batch: Vec<(RecordMeta, Row)> = Vec::new();
        // A batch ends at a bad record, so that every failure prints in file order.
        let mut bad_after = None;
        let mut undecodable_after = None;
        let mut ended = false;
        // When this batch's rows stop waiting for more.
        let mut deadline = None;
        while batch.len() < batch_size {
            // Rows in hand run soon rather than wait on a pipe whose writer has paused; the
            // short linger lets a writer that trickles rows still fill batches.
            if !batch.is_empty() {
                let until = *deadline.get_or_insert_with(|| Instant::now() + LINGER);
                if !records.next_is_ready(until.saturating_duration_since(Instant::now())) {
                    break;
                }
            }
            let next = records.next();
            number += 1;
            match next {
                None => ended = true,
                Some(Err(e)) => unreadable = Some(e),
                Some(Ok(InputRecord::Bad(b))) => bad_after = Some((number, b)),
                Some(Ok(InputRecord::Undecodable { line, reason })) => {
                    undecodable_after = Some((number, line, reason));
                }
                Some(Ok(InputRecord::Skipped(why))) => {
                    *skipped.entry(why).or_default() += 1;
                    continue;
                }
                Some(Ok(InputRecord::Row { line, meta, row })) => {
                    input_types.see_input(&row, number as u64, &mut types);
                    // An input row the sink would set aside already: what the chain makes of it
                    // is not the transforms' doing. Asked only where it counts, under `--expect`.
                    let faulty = rows_check.is_some()
                        && (unloadable_names(&row).is_some()
                            || not_json(&row).is_some()
                            || unloadable_timestamp(&row).is_some());
                    sent += 1;
                    origins.push((number, line, faulty));
                    batch.push((meta, row));
                    continue;
                }
            }
            break;
        }
        let span = match (origins.first(), origins.last()) {
            (Some((a, la, _)), Some((b, lb, _))) => {
                format!("records {a} to {b} (lines {la} to {lb})")
            }
            _ => String::new(),
        };
        let outcomes = match batch.is_empty() {
            true => Vec::new(),
            false => match chain.process_blocking(batch) {
                Ok(outcomes) => outcomes,
                Err(e) => {
                    let hint = match e {
                        TransformError::TooSlow { .. } => "; --timeout-ms sets the limit here",
                        TransformError::TooMuchText { .. } => {
                            "; --batch-size sets the rows per batch here"
                        }
                        TransformError::TooMuchOutput { .. }
                        | TransformError::BatchOutputTooBig { .. } => {
                            "; --memory-mb sets the memory limit here, --batch-size the rows per batch"
                        }
                        _ => "",
                    };
                    fatal = Some(anyhow::Error::new(e).context(format!("running {span}{hint}")));
                    Vec::new()
                }
            },
        };
        for ((n, line, faulty), outcome) in origins.into_iter().zip(outcomes) {
            let n = n as u64;
            match outcome {
                RecordOutcome::Emitted(emitted) => {
                    for row in emitted {
                        let names = unloadable_names(&row);
                        let problems: Vec<String> = (names.iter().cloned())
                            .chain(not_json(&row))
                            .chain(unloadable_timestamp(&row))
                            .chain(types.see(&row, n))
                            .collect();
                        set_aside += u64::from(!problems.is_empty() && !faulty);
                        // The same names on every row: said once.
                        let shown = (problems.into_iter()).filter(|p| {
                            Some(p) != names.as_ref() || names_warned.insert(p.clone())
                        });
                        for problem in shown {
                            write_rows(&mut pending, out)?;
                            let text = format!("record {n} (line {line}): warning: {problem}");
                            writeln!(err, "{}", crate::config::redact_output(&text))?;
                        }
                        let text = row_text(&row);
                        rows += 1;
                        if let Some(check) = &mut rows_check {
                            let actual =
                                JsonRow::of_row(&text, &row).map_err(anyhow::Error::msg)?;
                            check.see(&actual, || format!("; from record {n}, input line {line}"));
                        }
                        pending.push_str(&text);
                        pending.push('\n');
                    }
                }
                RecordOutcome::Quarantined(q) => {
                    write_rows(&mut pending, out)?;
                    let show = format!(
                        "{} failed ({}): {}; row: {}",
                        q.transform,
                        q.kind,
                        q.reason,
                        clip(row_text(&q.row))
                    );
                    let f = Failure {
                        record: n,
                        line,
                        stage: format!("transform:{}", q.transform),
                        kind: q.kind.as_str().to_owned(),
                        reason: q.reason,
                        error: q.error,
                    };
                    fail(f, err, &show)?;
                }
                RecordOutcome::Dropped {
                    transform,
                    kind,
                    reason,
                } => {
                    write_rows(&mut pending, out)?;
                    let show = format!("{transform} failed ({kind}): {reason}");
                    let f = Failure {
                        record: n,
                        line,
                        stage: format!("transform:{transform}"),
                        kind: kind.as_str().to_owned(),
                        reason,
                        error: None,
                    };
                    fail(f, err, &show)?;
                }
            }
        }
        write_rows(&mut pending, out)?;
        if let Some((n, mut b)) = bad_after {
            bad += 1;
            b.reason = (b.reason)
                .replace(
                    crate::source::csv::SCHEMA_HINT,
                    " (type inferred from the first rows; give --schema COLUMN=TYPE to override)",
                )
                .replace(
                    crate::source::csv::NULL_HINT,
                    " (a null marker? give --null-if TEXT)",
                );
            let show = format!("bad row ({}): {}", b.kind.as_str(), b.reason);
            let f = Failure {
                record: n as u64,
                line: b.line,
                stage: "source".to_owned(),
                kind: b.kind.as_str().to_owned(),
                reason: b.reason,
                error: None,
            };
            fail(f, err, &show)?;
        }
        if let Some((n, line, reason)) = undecodable_after {
            undecoded += 1;
            let show = format!("the consumer cannot decode its message (decode): {reason}");
            let f = Failure {
                record: n as u64,
                line,
                stage: dead_letter::CONSUME_STAGE.to_owned(),
                kind: dead_letter::DECODE_KIND.to_owned(),
                reason,
                error: None,
            };
            fail(f, err, &show)?;
        }
        if ended || unreadable.is_some() || fatal.is_some() {
            break;
        }
    }
    if stopped {
        writeln!(
            err,
            "input  stopped after record {number}: the output was closed"
        )?;
    }
    if bad > 0 {
        writeln!(
            err,
            "source  {}, not run (sluice run applies source.on_error to them)",
            counted(bad, "bad record")
        )?;
    }
    if undecoded > 0 {
        writeln!(
            err,
            "consume  {} not decoded, not run (sluice run dead-letters them)",
            counted(undecoded, "record")
        )?;
    }
    for (why, n) in skipped {
        writeln!(
            err,
            "input  {} skipped: {}",
            counted(n, "dead letter"),
            why.why()
        )?;
    }
    // The same per-transform line as `sluice run`'s summary (with the fuel when metered).
    let mut batch_only = Vec::new();
    for part in crate::pipeline::transform_parts(&chain.stats()) {
        writeln!(err, "transform  {part}")?;
        if part.batch_only_failures > 0 {
            batch_only.push((part.name, part.batch_only_failures));
        }
    }
    // After the counts, so that what ran before the input or the chain went bad is accounted
    // for.
    if let Some(e) = fatal {
        return Err(e);
    }
    if let Some(e) = unreadable {
        return Err(usage(e));
    }
    if let Some(out) = failures_out {
        out.finish()?;
    }
    Ok(TestReport {
        records: sent + bad as u64 + undecoded as u64,
        ran: sent,
        rows,
        failed,
        first_failure,
        rows_verdict: rows_check.map(Check::verdict),
        failures_verdict: failures_check.map(Check::verdict),
        batch_only,
        set_aside,
    })
}

/// What is wrong with the first `json` value of `row` whose text is not JSON, if one is: it
/// prints as a string, and the sink would set the row aside, far from the transform that made
/// it. (Not a failure of the transform here: an input row may hold such a value already.)
pub(crate) fn not_json(row: &Row) -> Option<String> {
    row.fields.iter().find_map(|f| match &f.value {
        crate::row::Value::Json(text) => serde_json::from_str::<serde::de::IgnoredAny>(text)
            .err()
            .map(|e| {
                format!(
                    "field {:?} is of type json but its text is not JSON ({e}), so it prints as a \
                     string; a Snowflake VARIANT column does not take it, and the sink sets the \
                     row aside",
                    f.name
                )
            }),
        _ => None,
    })
}

/// What keeps `row` out of any Snowflake table under the sink's `csv` format (the default),
/// whatever its values, if something does: no fields, a field with an empty name or a name longer
/// than 255 characters, or two fields
/// that become one column (`Value` and `value`: the table's columns are the fields' names as
/// identifiers). The sink sets such a row aside.
pub(crate) fn unloadable_names(row: &Row) -> Option<String> {
    if row.fields.is_empty() {
        return Some("a row has no fields, so the sink sets it aside".to_owned());
    }
    let mut seen = std::collections::HashMap::new();
    for f in &row.fields {
        if f.name.is_empty() {
            return Some(
                "a field has an empty name, which cannot be a Snowflake column, so the sink sets \
                 aside each row that has one"
                    .to_owned(),
            );
        }
        if f.name.chars().count() > crate::sink::snowflake::encode::MAX_IDENT_CHARS {
            return Some(format!(
                "{}, so the sink sets aside each row that has it",
                crate::sink::snowflake::encode::column_name_problem(&f.name).unwrap_or_default()
            ));
        }
        // As the sink matches them: a quoted name too meets a column of another case.
        let column = crate::sink::snowflake::encode::normalize_ident(&f.name).to_ascii_uppercase();
        if let Some(first) = seen.insert(column, &*f.name) {
            if first == &*f.name {
                // A JSON Lines key given twice: both are kept, as a message's would be.
                return Some(format!(
                    "field {first:?} is in the row twice (a transform's `get` reads the first), \
                     and one column cannot take both, so the sink sets aside each such row"
                ));
            }
            return Some(format!(
                "fields {first:?} and {:?} become the same Snowflake column, so the sink sets \
                 aside each row that has both (rename one)",
                &*f.name
            ));
        }
    }
    None
}

/// What is wrong with the first timestamp of `row` outside years 1 to 9999, if one is: the sink
/// sets the row aside. Its text as printed is given too: ISO-8601 with a year of other than
/// four digits (`0000-12-31T23:00:00`, `+10000-01-01T00:00:00`), or where even that cannot be,
/// its count of microseconds.
pub(crate) fn unloadable_timestamp(row: &Row) -> Option<String> {
    row.fields.iter().find_map(|f| match f.value {
        crate::row::Value::Timestamp(us)
            if !crate::sink::snowflake::encode::loadable_timestamp(us) =>
        {
            Some(format!(
                "field {:?} is a timestamp outside years 1 to 9999 ({us} µs since the epoch, \
                 printed {:?}); a Snowflake TIMESTAMP_NTZ column does not take it, and the sink \
                 sets the row aside",
                &*f.name,
                crate::row::format_timestamp(us)
            ))
        }
        _ => None,
    })
}

/// The first value of each output field, to warn of a field whose later values do not go into
/// the same Snowflake column as it: with `create_table: if_missing` the table's columns come
/// from whichever rows are loaded first, and in a run that depends on how records fall into
/// partitions and batches. So `20` then `9.99`, or `9.99` then `20`, load in one run and are set
/// aside in the next (a column made from `20` alone is `NUMBER(38,0)`).
#[derive(Default)]
pub(crate) struct FieldTypes {
    /// A field's first non-null value and the record it came from.
    first: std::collections::HashMap<String, (crate::row::Value, u64)>,
    /// Fields already warned of (once each), or not to be.
    warned: std::collections::HashSet<String>,
}

impl FieldTypes {
    /// Notes `row`'s values (record `n` emitted it) and says which of its fields a column made
    /// from either that field's first value or this one would refuse the other of.
    pub(crate) fn see(&mut self, row: &Row, n: u64) -> Vec<String> {
        self.changes(row, n).into_iter().map(|(_, p)| p).collect()
    }

    /// Notes the values of `row`, record `n` of the input: a field whose type changes there as
    /// [`see`](Self::see) would warn of is not warned of in `output`. A pipeline's CSV source
    /// gives each column one type, so only a JSON Lines input does this, on purpose as a rule
    /// (a test's bad value), and a transform passing the field on is not at fault.
    pub(crate) fn see_input(&mut self, row: &Row, n: u64, output: &mut FieldTypes) {
        output
            .warned
            .extend(self.changes(row, n).into_iter().map(|(name, _)| name));
    }

    /// [`see`](Self::see)'s problems, each with its field's name.
    fn changes(&mut self, row: &Row, n: u64) -> Vec<(String, String)> {
        use crate::sink::snowflake::encode::{ColumnKind, column_type_for};
        let mut problems = Vec::new();
        for f in &row.fields {
            let ty = f.value.value_type();
            if ty == crate::row::ValueType::Null || self.warned.contains(&*f.name) {
                continue;
            }
            let Some((first, from)) = self.first.get(&*f.name) else {
                self.first.insert(f.name.to_string(), (f.value.clone(), n));
                continue;
            };
            let was = first.value_type();
            let (refused, column) = if !ColumnKind::created_for(was).accepts(&f.value) {
                ("this value", column_type_for(was))
            } else if !ColumnKind::created_for(ty).accepts(first) {
                ("that one", column_type_for(ty))
            } else {
                continue;
            };
            use crate::row::ValueType::{Float, Int, String as Text};
            // The one type both values keep theirs in: text keeps any value's digits, where an
            // ID past 2^53 as a float would lose them.
            let fix = match (was, ty) {
                (Int, Float) | (Float, Int) => "emit its ints as floats",
                (Text, _) | (_, Text) => "emit its other values as strings too (their text)",
                _ => "emit one type for it",
            };
            problems.push((
                f.name.to_string(),
                format!(
                    "field {:?} is {} here but was {} in record {from}: a Snowflake table whose \
                 column is made from rows like {} ({column}) refuses {refused}, so a run would \
                 load it or set it aside depending on which rows came first; {fix}",
                    &*f.name,
                    ty.as_str(),
                    was.as_str(),
                    if refused == "this value" {
                        "that one"
                    } else {
                        "this one"
                    },
                ),
            ));
            self.warned.insert(f.name.to_string());
        }
        problems
    }
}

/// Writes out the rows in `pending` and empties it.
fn write_rows(pending: &mut String, out: &mut dyn Write) -> std::io::Result<()> {
    if !pending.is_empty() {
        out.write_all(pending.as_bytes())?;
        pending.clear();
    }
    Ok(())
}

/// The longest failed row a failure line shows whole: a row of 20,000 columns would otherwise
/// bury the other failures (the dead letter in `sluice run` keeps it whole).
pub(super) const MAX_SHOWN_ROW: usize = 4096;

/// `text`, cut at [`MAX_SHOWN_ROW`] bytes with a note of its length.
pub(super) fn clip(text: String) -> String {
    crate::dead_letter::clip(&text, MAX_SHOWN_ROW).into_owned()
}

/// A row as `transform test` prints it: the JSON text of its Kafka message value. Every member
/// of a message value is JSON (`encode` embeds a `json` value only when it is), so it parses as a
/// [`JsonRow`].
pub(super) fn row_text(row: &Row) -> String {
    String::from_utf8(wire::encode(row).value).expect("a message value is JSON")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A field is warned of once, at the first value that a column made from it or from the
    /// field's first value would refuse; values that fit either way are not; nor is a field
    /// whose type already changes in the input.
    #[test]
    fn field_types_warn_of_values_one_column_would_refuse() {
        use crate::row::Value::{Float, Int, Null, String as Text};
        let rows = [
            [Int(20), Float(0.5), Null, Int(3), Int(20)],
            [Float(9.99), Int(2), Text("x".into()), Int(4), Float(3.0)],
            [Float(1.5), Int(3), Text("y".into()), Int(5), Int(7)],
            [Int(7), Float(1.5), Int(5), Null, Float(1.5)],
        ];
        let names = ["price", "ratio", "note", "count", "whole"];
        let row = |values: &[crate::row::Value; 5]| {
            let mut row = Row::with_capacity(5);
            for (name, value) in names.iter().zip(values) {
                row.push(*name, value.clone());
            }
            row
        };
        let mut types = FieldTypes::default();
        let warned: Vec<(u64, String)> = (1..)
            .zip(&rows)
            .flat_map(|(n, values)| types.see(&row(values), n).into_iter().map(move |p| (n, p)))
            .collect();
        let starts: Vec<(u64, &str)> = (warned.iter())
            .map(|(n, p)| (*n, &p[..p.find(" in record").unwrap()]))
            .collect();
        assert_eq!(
            starts,
            [
                (2, "field \"price\" is float here but was int"),
                (2, "field \"ratio\" is int here but was float"),
                (4, "field \"note\" is int here but was string"),
                (4, "field \"whole\" is float here but was int"),
            ],
            "{warned:#?}"
        );
        assert!(
            warned[0].1.contains("(NUMBER(38,0)) refuses this value"),
            "{warned:#?}"
        );
        assert!(
            warned[1].1.contains("(NUMBER(38,0)) refuses that one"),
            "{warned:#?}"
        );

        // The same rows as the input and the output: nothing to warn of.
        let (mut input, mut output) = (FieldTypes::default(), FieldTypes::default());
        for (n, values) in (1..).zip(&rows) {
            input.see_input(&row(values), n, &mut output);
            assert_eq!(output.see(&row(values), n), Vec::<String>::new());
        }
    }

    /// A name given twice is said as such, not as two names that meet in one column.
    #[test]
    fn names_the_sink_cannot_load_are_warned_of() {
        use crate::row::Value;
        let row = |names: &[&str]| {
            let mut row = Row::with_capacity(names.len());
            names.iter().for_each(|n| row.push(*n, Value::Int(1)));
            row
        };
        assert_eq!(unloadable_names(&row(&["id", "price"])), None);
        let twice = unloadable_names(&row(&["price", "id", "price"])).unwrap();
        assert!(
            twice.starts_with("field \"price\" is in the row twice"),
            "{twice}"
        );
        let cased = unloadable_names(&row(&["price", "PRICE"])).unwrap();
        assert!(
            cased.starts_with("fields \"price\" and \"PRICE\" become the same Snowflake column"),
            "{cased}"
        );
        // Snowflake's identifiers have at most 255 characters (of any width).
        assert_eq!(unloadable_names(&row(&["id", &"é".repeat(255)])), None);
        let long = unloadable_names(&row(&["id", &"é".repeat(256)])).unwrap();
        assert!(long.contains("has a name of 256 characters"), "{long}");
    }

    #[test]
    fn timestamps_past_four_digit_years_are_warned_of() {
        use crate::row::Value;
        let row = |us| {
            let mut row = Row::with_capacity(2);
            row.push("id", Value::Int(1));
            row.push("at", Value::Timestamp(us));
            row
        };
        // 9999-12-31T23:59:59.999999 loads; a microsecond later does not, nor does year 0.
        assert_eq!(unloadable_timestamp(&row(253_402_300_799_999_999)), None);
        for us in [253_402_300_800_000_000, -62_167_219_200_000_000, i64::MAX] {
            let warning = unloadable_timestamp(&row(us)).unwrap();
            // As the row prints it.
            let printed = row(us).to_json()["at"].to_string();
            assert!(
                warning.starts_with(&format!(
                    "field \"at\" is a timestamp outside years 1 to 9999 ({us} µs since the \
                     epoch, printed {printed})"
                )),
                "{warning}"
            );
        }
    }
}
