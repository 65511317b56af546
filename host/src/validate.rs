//! Offline validation of a loaded pipeline file: everything that can be checked without a broker
//! or a warehouse (values in range, files exist, the CSV header has the columns the source
//! names, components load and accept their params).
//!
//! Parsing already rejected unknown keys and wrong types (see `config`); this adds the checks
//! types cannot express, each reported with its JSON path and line/column.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use crate::config::{ConfigIssue, LoadedConfig, SinkConfig};
use crate::row::ValueType;
use crate::source::config::{CsvSource, CsvSourceConfig, Pacing, SourceConfig};
use crate::source::csv::{CsvOptions, CsvReader};
use crate::transform::config::TransformConfig;
use crate::transform::{LoadError, RuntimeOptions, TransformChain};

/// Why validation could not run at all: the machine's fault, not the pipeline file's, so it is
/// no [`ConfigIssue`].
#[derive(Debug, thiserror::Error)]
pub enum ValidateError {
    /// The WebAssembly engine, its linker or a worker thread could not be set up.
    #[error("cannot load the transform chain")]
    Engine(#[source] LoadError),
}

/// Every issue found in `loaded` without loading its components; empty means valid.
pub fn validate(loaded: &LoadedConfig) -> Vec<ConfigIssue> {
    static_issues(loaded)
}

/// Every issue [`validate`] finds, and every transform that will not load or whose `init`
/// refuses its params or runs out of a limit (each at its key: `transforms[1].with.threshold`);
/// or, when there are none, the chain, loaded with `opts` for the run to use as it is: each
/// component is compiled once, and its `init` runs once, per run. The outer error is the
/// machine's, not the file's: the engine could not be set up.
pub fn validate_and_load(
    loaded: &LoadedConfig,
    opts: &RuntimeOptions,
) -> Result<Result<TransformChain, Vec<ConfigIssue>>, ValidateError> {
    Ok(match check_and_load(loaded, opts, chain_configs(loaded))? {
        (Some(chain), issues) if issues.is_empty() => Ok(chain),
        (_, issues) => Err(issues),
    })
}

/// What `sluice validate` checks: every issue [`validate_and_load`] finds and, when every
/// transform loads and the source is sound (whatever else in the file is wrong, so that one run
/// shows every mistake), what the [`sample`] of `records` records finds, with its counts (`None`
/// when it did not run or the chain stopped on it). For the sample, every transform's
/// `on_error` is read as `dead_letter`, so that each failure comes back with its record.
pub fn validate_with_sample(
    loaded: &LoadedConfig,
    opts: &RuntimeOptions,
    records: usize,
) -> Result<(Option<Sample>, Vec<ConfigIssue>), ValidateError> {
    let mut configs = chain_configs(loaded);
    for c in &mut configs {
        c.on_error = crate::config::OnError::DeadLetter.into();
    }
    let (chain, mut issues) = check_and_load(loaded, opts, configs)?;
    let source_sound =
        !(issues.iter()).any(|i| i.path == "source" || i.path.starts_with("source."));
    let SourceConfig::Csv(src) = &loaded.config.source;
    match (chain, src.validate()) {
        (Some(chain), Ok(source)) if records > 0 && source_sound => {
            let (counts, found) = sample(loaded, &source, &chain, records);
            issues.extend(found);
            Ok((counts, issues))
        }
        _ => Ok((None, issues)),
    }
}

/// Every issue [`validate`] finds and every transform that will not load, and the chain when
/// every transform loaded (whether or not the rest of the file is sound).
fn check_and_load(
    loaded: &LoadedConfig,
    opts: &RuntimeOptions,
    configs: Vec<TransformConfig>,
) -> Result<(Option<TransformChain>, Vec<ConfigIssue>), ValidateError> {
    let mut issues = static_issues(loaded);
    let total = configs.len();
    // Every transform whose own settings are sound is loaded, even when something else in the
    // file is wrong, so that one run of `validate` shows every mistake.
    let (sound, configs): (Vec<usize>, Vec<TransformConfig>) = configs
        .into_iter()
        .enumerate()
        .filter(|(i, _)| {
            let at = format!("transforms[{i}]");
            !issues
                .iter()
                .any(|issue| issue.path == at || issue.path.starts_with(&format!("{at}.")))
        })
        .unzip();
    if configs.is_empty() && !issues.is_empty() {
        return Ok((None, issues));
    }
    match TransformChain::load_each(&configs, opts) {
        Ok(chain) => {
            let whole = sound.len() == total && !issues.iter().any(|i| i.path == "transforms");
            Ok((whole.then_some(chain), issues))
        }
        Err(errors) => {
            for (k, e) in errors {
                if let LoadError::Engine(_) = e {
                    return Err(ValidateError::Engine(e));
                }
                issues.push(loaded.issue(&component_issue_path(sound[k], &e), e.to_string()));
            }
            Ok((None, issues))
        }
    }
}

/// The pipeline's transforms as the runtime takes them: each named, its component's path
/// resolved against the pipeline file's directory.
pub fn chain_configs(loaded: &LoadedConfig) -> Vec<TransformConfig> {
    loaded
        .config
        .transforms
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let mut t = t.clone();
            t.name = Some(transform_name(&t, i));
            t.uses = loaded.resolve(&t.uses).to_string_lossy().into_owned();
            t
        })
        .collect()
}

/// How many of the source's first records `sluice validate` runs through the chain unless told.
pub const SAMPLE_ROWS: usize = 100;

/// Ends each issue the sample run finds: how to do without it.
const STOP_HINT: &str = " (`--sample-rows 0` skips this check)";

/// What the source's first records did in the chain (see [`sample`]).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Sample {
    /// The CSV file, as the pipeline names it.
    pub file: String,
    /// Whether the pipeline has no transforms: the sample only read the CSV.
    pub untransformed: bool,
    /// The rows run through the chain.
    pub rows: u64,
    /// Bad CSV records among the first records: not run (the source dead-letters, drops or
    /// stops on them, as its `on_error` says).
    pub bad: u64,
    /// Rows the chain emitted.
    pub out: u64,
    /// Records the chain filtered out (they emitted no row).
    pub filtered: u64,
    /// Records that failed in a transform.
    pub failed: u64,
    /// The transforms no row reached (`transforms[1]`: the ones before filtered every row out),
    /// which the sample did not check.
    pub unchecked: Vec<String>,
    /// The bad CSV records, when they are not an issue (some of them), with the first; each
    /// transform that failed rows of the sample without it being an issue (some of them, or all
    /// of a few), with the first of each kind; then the rows the chain emitted that a `csv`
    /// sink would set aside, or load or not depending on the rows before them (as `transform
    /// test` warns of them), each with its record, each once, at most [`MAX_SAMPLE_WARNINGS`]
    /// of these.
    pub warnings: Vec<String>,
    /// The warnings of output rows past [`MAX_SAMPLE_WARNINGS`].
    pub more_warnings: u64,
}

/// The most warnings of output rows the sample keeps: the first few say what to fix.
pub const MAX_SAMPLE_WARNINGS: usize = 5;

/// How many rows must reach a transform, all failing, for the sample to call it a mistake in the
/// file (unless every row of the sample reached it), and how many records must all be bad CSV
/// rows (unless they are the whole file): fewer may be bad data.
const MIN_ALL_FAILED: u64 = 10;

impl std::fmt::Display for Sample {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.untransformed {
            let bad = crate::counted(self.bad, "bad CSV record");
            return write!(
                f,
                "the first {} of {}: {}, {bad} (no transforms)",
                crate::counted(self.rows + self.bad, "record"),
                self.file,
                crate::counted(self.rows, "row"),
            );
        }
        // Bad CSV records are said apart from the transforms' failures, which they are not.
        let rows = crate::counted(self.rows, "row");
        if self.bad > 0 {
            write!(
                f,
                "the first {} of {}: {} (not run); the other {rows} through the transforms: ",
                crate::counted(self.rows + self.bad, "record"),
                self.file,
                crate::counted(self.bad, "bad CSV record"),
            )?;
        } else {
            write!(
                f,
                "the first {rows} of {} through the transforms: ",
                self.file
            )?;
        }
        write!(
            f,
            "{} rows out, {} filtered out, {} failed",
            self.out, self.filtered, self.failed
        )?;
        if self.more_warnings > 0 {
            let more = crate::counted(self.more_warnings, "more warning");
            write!(
                f,
                "; {more} of its output (`sluice transform test --pipeline` shows each)"
            )?;
        }
        if !self.unchecked.is_empty() {
            let these = self.unchecked.join(", ");
            let it = if self.unchecked.len() == 1 {
                "it"
            } else {
                "them"
            };
            write!(
                f,
                "; no row reached {these}, so the sample did not check {it}"
            )?;
        }
        Ok(())
    }
}

/// Runs the first `records` records of the pipeline's CSV through `chain`, read as the source
/// reads them, and reports each transform that failed every row that reached it, at
/// `transforms[i]`, with the first failure's reason. A filter with a misspelt field, a param
/// the guest reads only per row, or a transform built for other columns fails every record of
/// a run: this finds it before the run dead-letters a whole file. Also reported, as certain to
/// stop a run: a bad CSV record under the source's `on_error: fail` (at `source.on_error`), a
/// failure whose transform's `on_error` is `fail` for its kind (at `transforms[i].on_error`),
/// and the chain stopping on the sample (too many timeouts, say); and, as certain to load
/// nothing, every record read being a bad CSV row (see [`bad_rows`]). With no transforms only
/// the CSV is read. `chain` must send every failure back (see [`validate_with_sample`]); its
/// instances have seen the sample after.
fn sample(
    loaded: &LoadedConfig,
    src: &CsvSource,
    chain: &TransformChain,
    records: usize,
) -> (Option<Sample>, Vec<ConfigIssue>) {
    use crate::transform::cli::{InputOptions, InputRecord, read_input};
    use crate::transform::runtime::RecordOutcome;
    use std::sync::atomic::Ordering::Relaxed;

    let path = loaded.resolve(&src.path);
    let mut sample = Sample {
        file: src.path.clone(),
        ..Sample::default()
    };
    let mut issues = Vec::new();
    let opts = InputOptions::of_source(src, &loaded.config.kafka);
    let mut batch = Vec::new();
    let unreadable = |e: anyhow::Error, mut issues: Vec<ConfigIssue>| {
        let why = format!("cannot read the first records of {}: {e:#}", src.path);
        issues.push(loaded.issue("source.path", why));
        (None, issues)
    };
    let mut read = match read_input(&path, &opts) {
        Ok(read) => read,
        Err(e) => return unreadable(e, issues),
    };
    // Each row's position among the records read, as `transform test` numbers them.
    let mut records_at = Vec::new();
    let mut first_bad = None;
    let mut read_all = 0;
    for (at, record) in read.by_ref().take(records).enumerate() {
        read_all = at + 1;
        match record {
            Ok(InputRecord::Row { meta, row, .. }) => {
                batch.push((meta, row));
                records_at.push(at as u64 + 1);
            }
            Ok(InputRecord::Bad(bad)) => {
                sample.bad += 1;
                first_bad.get_or_insert(bad);
            }
            Ok(_) => sample.bad += 1,
            Err(e) => return unreadable(e, issues),
        }
    }
    sample.rows = batch.len() as u64;
    // Read whole when no record is left past the sample's.
    let ended = read_all < records || read.next().is_none();
    let bad_warning = match first_bad.map(|bad| bad_rows(loaded, &sample, &bad, ended)) {
        Some(Err(issue)) => {
            issues.push(issue);
            None
        }
        Some(Ok(warning)) => Some(warning),
        None => None,
    };
    if chain.names().is_empty() {
        // Nothing to run the rows through: the sample only checks what the source reads.
        sample.untransformed = true;
        sample.out = sample.rows;
        sample.warnings.extend(bad_warning);
        return (Some(sample), issues);
    }
    let lines: Vec<Option<u64>> = batch.iter().map(|(meta, _)| meta.csv_line()).collect();
    // (rows in, failed, filtered out) of each transform.
    let counts = |chain: &TransformChain| -> Vec<(u64, u64, u64)> {
        (chain.stats().iter())
            .map(|(_, s)| {
                let load = |c: &AtomicU64| c.load(Relaxed);
                (
                    load(&s.rows_in),
                    load(&s.rows_failed),
                    load(&s.rows_dropped),
                )
            })
            .collect()
    };
    let names = chain.names();
    let before = counts(chain);
    let outcomes = match chain.process_blocking(batch) {
        Ok(outcomes) => outcomes,
        Err(e) => {
            let at = (e.transform())
                .and_then(|t| names.iter().position(|n| n == t))
                .map_or_else(|| "transforms".to_owned(), |i| format!("transforms[{i}]"));
            let why = format!(
                "the first {} rows of {} stopped the transforms, as they would a run: \
                 {e}{STOP_HINT}",
                sample.rows, src.path
            );
            issues.push(loaded.issue(&at, why));
            return (None, issues);
        }
    };
    // Each transform's first failure: the record's line, and how and why it failed.
    let mut failures: BTreeMap<String, Vec<KindFailed>> = BTreeMap::new();
    let mut types = crate::transform::cli::FieldTypes::default();
    let SinkConfig::Snowflake(sf) = &loaded.config.sink;
    // The checks of output rows are the `csv` format's: `ndjson` loads each row whole into one
    // VARIANT, with any text, time or type.
    let csv_sink = sf.format == crate::sink::snowflake::config::FileFormat::Csv;
    let mut warned = std::collections::HashSet::new();
    // Output rows whose field names keep them out of any table, and the first of them.
    let (mut unloadable, mut first_unloadable) = (0u64, None);
    for ((outcome, line), record) in outcomes.into_iter().zip(lines).zip(records_at) {
        let (transform, kind, reason, param) = match outcome {
            RecordOutcome::Emitted(rows) if rows.is_empty() => {
                sample.filtered += 1;
                continue;
            }
            RecordOutcome::Emitted(rows) => {
                sample.out += rows.len() as u64;
                for row in rows.iter().filter(|_| csv_sink) {
                    let names = crate::transform::cli::unloadable_names(row);
                    if let Some(problem) = &names {
                        unloadable += 1;
                        first_unloadable.get_or_insert_with(|| (record, line, problem.clone()));
                    }
                    let problems = (names.into_iter())
                        .chain(crate::transform::cli::not_json(row))
                        .chain(crate::transform::cli::unloadable_timestamp(row))
                        .chain(types.see(row, record));
                    for problem in problems.filter(|p| warned.insert(p.clone())) {
                        match sample.warnings.len() < MAX_SAMPLE_WARNINGS {
                            true => {
                                let at = line.map_or_else(String::new, |l| format!(" (line {l})"));
                                sample.warnings.push(format!(
                                    "the transforms' output for record {record}{at}: {problem}"
                                ));
                            }
                            false => sample.more_warnings += 1,
                        }
                    }
                }
                continue;
            }
            RecordOutcome::Quarantined(q) => {
                let param = (q.error)
                    .filter(|e| e.case == "invalid-param")
                    .and_then(|e| e.field);
                (q.transform, q.kind, q.reason, param)
            }
            RecordOutcome::Dropped {
                transform,
                kind,
                reason,
            } => (transform, kind, reason, None),
        };
        sample.failed += 1;
        let kinds: &mut Vec<KindFailed> = failures.entry(transform).or_default();
        match kinds.iter_mut().find(|k| k.kind == kind) {
            Some(k) => k.count += 1,
            None => kinds.push(KindFailed {
                kind,
                count: 1,
                line,
                reason,
                param,
            }),
        }
    }
    let mut failing = Vec::new();
    // Whether every row of the sample reached the transform: none was filtered out or failed
    // before it.
    let mut whole = true;
    for (i, ((in0, failed0, dropped0), (in1, failed1, dropped1))) in
        before.into_iter().zip(counts(chain)).enumerate()
    {
        let (reached, failed) = (in1 - in0, failed1 - failed0);
        let all_reached = whole;
        whole &= failed == 0 && dropped1 == dropped0;
        if reached == 0 {
            sample.unchecked.push(format!("transforms[{i}]"));
        }
        let Some(kinds) = names.get(i).and_then(|n| failures.get(n)) else {
            continue;
        };
        let firsts = KindFailed::firsts(kinds);
        let stops = (loaded.config.transforms.get(i)).and_then(|t| {
            (kinds.iter()).find(|k| t.on_error.of(k.kind) == crate::config::OnError::Fail)
        });
        // A few rows failing, even all that reached it, may be bad data rather than a mistake
        // in the file: an error takes enough of them, or every row of the sample.
        let certain = reached >= MIN_ALL_FAILED || all_reached;
        if failed == reached && certain {
            // At the param the guest said is wrong, when the file sets it.
            let param = (kinds.first().and_then(|k| k.param.as_ref())).filter(|p| {
                (loaded.config.transforms.get(i)).is_some_and(|t| t.with.contains_key(*p))
            });
            let at = match param {
                Some(p) => format!("transforms[{i}].with.{p}"),
                None => format!("transforms[{i}]"),
            };
            issues.push(loaded.issue(
                &at,
                format!(
                    "failed all {reached} rows that reached it from the first {} rows of \
                     {}{firsts}{STOP_HINT}",
                    sample.rows, src.path,
                ),
            ));
        } else if let Some(k) = stops {
            let row = k
                .line
                .map_or_else(|| "a row".to_owned(), |l| format!("line {l}"));
            issues.push(loaded.issue(
                &format!("transforms[{i}].on_error"),
                format!(
                    "the transform fails {row} of {} ({}: {}): with on_error fail for {}, a run \
                     stops there{STOP_HINT}",
                    src.path,
                    k.kind.as_str(),
                    k.reason,
                    k.kind.as_str()
                ),
            ));
        } else {
            let name = names.get(i).map_or("", String::as_str);
            failing.push(format!(
                "transforms[{i}] ({name}) failed {failed} of the {} that reached it from the \
                 first {} of {}{firsts}",
                crate::counted(reached, "row"),
                crate::counted(sample.rows, "row"),
                src.path,
            ));
        }
    }
    sample
        .warnings
        .splice(0..0, bad_warning.into_iter().chain(failing));
    // Every row out set aside by the sink, for its names whatever its values, is a chain that
    // loads nothing: as certain a mistake as a transform failing every row.
    if let Some((record, line, problem)) = first_unloadable
        && unloadable == sample.out
        && (unloadable >= MIN_ALL_FAILED || sample.failed + sample.filtered == 0)
    {
        let at = line.map_or_else(String::new, |l| format!(" (line {l})"));
        issues.push(loaded.issue(
            "transforms",
            format!(
                "every one of the {unloadable} rows the transforms emitted from the first {} rows \
                 of {} has field names no table takes, so a run would load none of them; the \
                 first, for record {record}{at}: {problem}{STOP_HINT}",
                sample.rows, src.path
            ),
        ));
    }
    (Some(sample), issues)
}

/// The sample's failures of one kind in one transform: how many, and the first.
struct KindFailed {
    kind: crate::transform::FailureKind,
    count: u64,
    /// The first one's CSV line.
    line: Option<u64>,
    /// The first one's reason.
    reason: String,
    /// The param the first one's guest error names, when it is `invalid-param`: the setting, not
    /// the data, is wrong.
    param: Option<String>,
}

impl KindFailed {
    /// `kinds` (in the order each first failed) as the end of a warning or an error: with more
    /// than one kind, how many of each, then the first failure and the first of each other kind
    /// (`(7 guest_error, 6 trap); the first: guest_error: ... (line 51); the first trap: ...`). A
    /// trap or a timeout is a bug in the transform rather than bad data: it is not left unsaid
    /// behind a row with a bad value.
    fn firsts(kinds: &[KindFailed]) -> String {
        let at = |k: &KindFailed| k.line.map_or_else(String::new, |l| format!(" (line {l})"));
        let mut text = String::new();
        if kinds.len() > 1 {
            let counts: Vec<String> = (kinds.iter())
                .map(|k| format!("{} {}", k.count, k.kind.as_str()))
                .collect();
            text.push_str(&format!(" ({})", counts.join(", ")));
        }
        for (n, k) in kinds.iter().enumerate() {
            text.push_str(&match n {
                0 => format!("; the first: {}: {}{}", k.kind.as_str(), k.reason, at(k)),
                _ => format!("; the first {}: {}{}", k.kind.as_str(), k.reason, at(k)),
            });
        }
        text
    }
}

/// What the sample's bad CSV records say, `bad` the first of them; `ended` when the sample read
/// the whole file. Under `on_error: fail` the first stops a run (an issue at `source.on_error`).
/// Otherwise every record read being bad, enough of them or the whole file, is a mistake in the
/// file rather than in the data, since a run would load nothing: an issue at the declared type
/// the first one's value does not parse as (`source.schema.value`), at the message size limit
/// when it was set and the first is too large (`kafka.properties.message.max.bytes`), else at
/// `source.path`. Fewer are a warning, with the first.
fn bad_rows(
    loaded: &LoadedConfig,
    sample: &Sample,
    bad: &crate::source::csv::BadRow,
    ended: bool,
) -> Result<String, ConfigIssue> {
    use crate::config::OnError;
    let SourceConfig::Csv(src) = &loaded.config.source;
    let first = format!("line {}: {}: {}", bad.line, bad.kind.as_str(), bad.reason);
    if src.on_error == OnError::Fail {
        return Err(loaded.issue(
            "source.on_error",
            format!(
                "line {} of {} is a bad row ({}): with on_error fail, a run stops \
                 there{STOP_HINT}",
                bad.line, src.path, bad.reason
            ),
        ));
    }
    let fate = match src.on_error {
        OnError::Drop => "drop",
        _ => "dead-letter",
    };
    if sample.rows == 0 && (sample.bad >= MIN_ALL_FAILED || ended) {
        use crate::source::csv::BadRowKind;
        // The reason names its field first: `field "value": "14.52" is not a valid int`.
        let declared = (src.schema.keys())
            .find(|c| bad.reason.starts_with(&format!("field {c:?}:")))
            .filter(|_| bad.kind == BadRowKind::Parse);
        let limit = "message.max.bytes";
        let at = match declared {
            Some(c) => format!("source.schema.{c}"),
            None if bad.kind == BadRowKind::TooLarge
                && loaded.config.kafka.properties.contains_key(limit) =>
            {
                format!("kafka.properties.{limit}")
            }
            None => "source.path".to_owned(),
        };
        let file = &src.path;
        let all = match (sample.bad, ended) {
            (1, _) => format!(
                "the only record of {file} is a bad row, so a run would {fate} it and load nothing"
            ),
            (n, true) => format!(
                "all {n} records of {file} are bad rows, so a run would {fate} every one and load \
                 nothing"
            ),
            // The rest of the file may hold good rows: most likely not, but it was not read.
            (n, false) => format!(
                "all of the first {n} records of {file} are bad rows, so a run would {fate} every \
                 one of them, and likely the rest"
            ),
        };
        return Err(loaded.issue(&at, format!("{all}; the first: {first}{STOP_HINT}")));
    }
    let (are, rows) = match sample.bad {
        1 => ("is", "a bad row"),
        _ => ("are", "bad rows"),
    };
    Ok(format!(
        "{} of the first {} of {} {are} {rows}, which a run would {fate}; the first: {first}",
        sample.bad,
        crate::counted(sample.bad + sample.rows, "record"),
        src.path,
    ))
}

/// Where a transform's load error is reported: the param `init` refused, the setting it ran out
/// of, its `with` as a whole, or else its component.
pub(crate) fn component_issue_path(i: usize, e: &LoadError) -> String {
    match (e.param(), e.setting()) {
        (Some(param), _) => format!("transforms[{i}].with.{param}"),
        (None, Some(setting)) => format!("transforms[{i}].{setting}"),
        (None, None) if matches!(e, LoadError::Init { .. }) => format!("transforms[{i}].with"),
        (None, None) => format!("transforms[{i}].uses"),
    }
}

/// Why `kafka.properties` may not set `key` to `value`, when sluice sets it itself: the user's
/// properties are applied last, so one of these would silently undo a delivery guarantee or
/// another setting of the file. Restating sluice's own value (`acks=all`, as configurations copied
/// from a managed service often do) is no mistake. librdkafka reads `topic.<key>` as `<key>`.
fn owned_property(key: &str, value: &str) -> Option<&'static str> {
    let key = key.strip_prefix("topic.").unwrap_or(key);
    let value = value.trim().to_ascii_lowercase();
    let is = |same: &[&str]| same.contains(&value.as_str());
    Some(match key {
        "enable.idempotence" if !is(&["true"]) => {
            "sluice's producer is idempotent, which the replay's exactly-once rests on, so this \
             cannot be changed"
        }
        "acks" | "request.required.acks" if !is(&["all", "-1"]) => {
            "sluice's producer waits for every in-sync replica (acks=all), which the replay's \
             exactly-once rests on, so this cannot be changed"
        }
        "transactional.id" => "sluice's producer is not transactional, so this cannot be set",
        "enable.auto.commit" | "auto.commit.enable" | "enable.auto.offset.store"
            if !is(&["false"]) =>
        {
            "sluice commits offsets itself, only after the warehouse commit that records them, so \
             this cannot be changed"
        }
        "auto.offset.reset" if !is(&["earliest", "smallest", "beginning"]) => {
            "sluice starts a partition at the warehouse's offset, else at the group's, else at its \
             first record, so that none is skipped: this cannot be changed"
        }
        "isolation.level" if !is(&["read_committed"]) => {
            "sluice reads only committed records (read_committed), so that rows of aborted \
             transactions are never loaded: this cannot be changed"
        }
        "group.id" => "set kafka.group_id instead",
        "bootstrap.servers" | "metadata.broker.list" => "set kafka.brokers instead",
        "compression.type" | "compression.codec" => "set kafka.compression instead",
        _ => return None,
    })
}

/// What can be checked without loading a component.
fn static_issues(loaded: &LoadedConfig) -> Vec<ConfigIssue> {
    let mut issues = Vec::new();
    let c = &loaded.config;
    let mut bad = |path: &str, msg: String| issues.push(loaded.issue(path, msg));

    if c.name.is_empty()
        || !c
            .name
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || "_-.".contains(ch))
    {
        bad(
            "name",
            format!(
                "pipeline name {:?} must be non-empty ASCII letters, digits, '_', '-' or '.'",
                c.name
            ),
        );
    }

    let SourceConfig::Csv(src) = &c.source;
    let path = loaded.resolve(&src.path);
    if src.path.is_empty() {
        bad(
            "source.path",
            "path is empty; it names a CSV file".to_owned(),
        );
    } else if path.is_dir() {
        bad(
            "source.path",
            format!("{} is a directory; path names a CSV file", path.display()),
        );
    } else if !path.is_file() {
        bad(
            "source.path",
            format!("file {} does not exist", path.display()),
        );
    }
    for problem in src.validate().err().into_iter().flatten() {
        bad(&format!("source.{}", problem.field), problem.message);
    }
    // Read whenever the delimiter is sound, so that one run also shows the header's mistakes.
    if let Some(delimiter) = crate::source::config::delimiter_byte(&src.delimiter)
        && path.is_file()
    {
        let SinkConfig::Snowflake(sf) = &c.sink;
        // Only rows the source sends straight to CSV columns are sure to meet the table as the
        // header names them; a transform may rename a column first.
        let columns_reach_table =
            c.transforms.is_empty() && sf.format == crate::sink::snowflake::config::FileFormat::Csv;
        for (at, message) in header_issues(src, &path, delimiter, columns_reach_table) {
            bad(&at, message);
        }
    }

    let k = &c.kafka;
    if let Some(problem) = topic_name_problem(&k.topic) {
        bad("kafka.topic", problem);
    }
    if k.partitions < 1 {
        bad(
            "kafka.partitions",
            format!("partitions must be at least 1, got {}", k.partitions),
        );
    }
    if k.replication_factor < 1 {
        bad(
            "kafka.replication_factor",
            format!(
                "replication_factor must be at least 1, got {}",
                k.replication_factor
            ),
        );
    }
    if k.max_in_flight == 0 {
        bad(
            "kafka.max_in_flight",
            "max_in_flight must be at least 1".to_owned(),
        );
    }
    for (key, value) in &k.properties {
        if let Some(why) = owned_property(key, value) {
            bad(&format!("kafka.properties.{key}"), why.to_owned());
            continue;
        }
        // librdkafka checks names and values without connecting. Its description names the key
        // and, for a value it parses, the value; never a free-form one such as a password.
        let mut one = rdkafka::ClientConfig::new();
        // A plugin's own properties exist only once the plugin is loaded.
        if let Some(plugins) = k.properties.get("plugin.library.paths") {
            one.set("plugin.library.paths", plugins);
        }
        one.set(key, value);
        if let Err(rdkafka::error::KafkaError::ClientConfig(_, desc, _, _)) =
            one.create_native_config()
        {
            bad(&format!("kafka.properties.{key}"), desc);
        }
    }
    if let Some(dlq) = &c.dead_letter.topic
        && dlq == &k.topic
    {
        bad(
            "dead_letter.topic",
            "the dead-letter topic must differ from kafka.topic".to_owned(),
        );
    }

    let mut names = HashSet::new();
    for (i, t) in c.transforms.iter().enumerate() {
        let at = |key: &str| format!("transforms[{i}].{key}");
        let wasm = loaded.resolve(&t.uses);
        if t.uses.trim().is_empty() {
            bad(
                &at("uses"),
                "uses is empty; it names a component file (`.wasm`)".to_owned(),
            );
        } else if wasm.is_dir() {
            bad(
                &at("uses"),
                format!(
                    "{} is a directory; `uses` names a component file (`.wasm`)",
                    wasm.display()
                ),
            );
        } else if !wasm.is_file() {
            bad(
                &at("uses"),
                format!(
                    "component {} does not exist {}",
                    wasm.display(),
                    crate::transform::not_found_hint(&wasm)
                ),
            );
        }
        let name = transform_name(t, i);
        if !names.insert(name.clone()) {
            bad(
                &at("name"),
                format!(
                    "transform name {name:?} is used twice; names key metrics and must be unique"
                ),
            );
        }
        for problem in t.validate().err().into_iter().flatten() {
            bad(&at(problem.field), problem.message);
        }
        // The name labels metrics, summary lines and dead letters' `transform:<name>` stage.
        if let Some(name) = &t.name
            && (name.trim().is_empty() || name.chars().any(char::is_control))
        {
            bad(
                &at("name"),
                format!("transform name {name:?} must not be blank or hold control characters"),
            );
        }
    }

    let SinkConfig::Snowflake(sf) = &c.sink;
    for (key, value) in [
        ("sink.database", &sf.database),
        ("sink.schema", &sf.schema),
        ("sink.table", &sf.table),
        ("sink.stage", &sf.stage),
        ("sink.offsets_table", &sf.offsets_table),
    ] {
        if value.trim().is_empty() {
            bad(key, "must not be empty".to_owned());
        }
    }
    if !sf.account_url.is_empty() {
        if !(sf.account_url.starts_with("https://") || sf.account_url.starts_with("http://")) {
            bad(
                "sink.account_url",
                format!(
                    "{:?} must start with https:// (or http:// for an emulator)",
                    sf.account_url
                ),
            );
        }
        if sf.user.is_empty() {
            bad(
                "sink.user",
                "a user is required with an account_url".to_owned(),
            );
        }
        let has_key = sf
            .private_key_path
            .as_deref()
            .is_some_and(|s| !s.is_empty())
            || sf.private_key.as_deref().is_some_and(|s| !s.is_empty());
        if !has_key && sf.password.as_deref().is_none_or(str::is_empty) {
            bad(
                "sink.password",
                "a password or a private key is required with an account_url".to_owned(),
            );
        }
        if let Some(p) = sf.private_key_path.as_deref().filter(|s| !s.is_empty()) {
            let key = loaded.resolve(p);
            if !key.is_file() {
                bad(
                    "sink.private_key_path",
                    format!("key file {} does not exist", key.display()),
                );
            }
        }
    }
    if sf.batch.max_rows == 0 {
        bad(
            "sink.batch.max_rows",
            "max_rows must be at least 1".to_owned(),
        );
    }
    if sf.batch.max_bytes < 1024 {
        bad(
            "sink.batch.max_bytes",
            format!(
                "max_bytes must be at least 1024, got {}",
                sf.batch.max_bytes
            ),
        );
    }

    // The sink checks its config again when it connects, after the source has started; every
    // rule it has must fail here first, at its key, so that `validate` passes only what `run`
    // accepts. A rule checked above with a fuller message keeps that message.
    if let Err(problems) = crate::pipeline::snowflake(loaded).validate() {
        for problem in problems {
            let at = format!("sink.{}", problem.field);
            if !issues.iter().any(|issue| issue.path == at) {
                issues.push(loaded.issue(&at, problem.message));
            }
        }
    }

    issues
}

/// What the source would refuse once it has read the CSV's header row: a `schema` entry, the
/// `key_column` or the event-time `pacing.column` naming no column, or a pacing column typed as
/// something other than a timestamp. Each is (JSON path, message). Only the header is read,
/// through the source's own reader (BOM, delimiter, quoting, blank and repeated names), so the
/// names are the ones a run sees however large the file is.
fn header_issues(
    src: &CsvSourceConfig,
    path: &Path,
    delimiter: u8,
    columns_reach_table: bool,
) -> Vec<(String, String)> {
    let opts = CsvOptions {
        delimiter,
        // Empty: the reader would stop at the first unknown name; each is reported here instead.
        schema: BTreeMap::new(),
        infer_rows: 1,
        max_record_bytes: usize::MAX,
        null_if: Vec::new(),
    };
    // Given types, the reader skips inference and reads no row past the header.
    let reader = match CsvReader::open(path, &opts, Arc::new(AtomicU64::new(0)), Some(&[])) {
        Ok(reader) => reader,
        Err(e) => return vec![("source.path".to_owned(), crate::error_chain(&e))],
    };
    let columns = reader.columns();
    let has = |name: &str| columns.iter().any(|c| &**c == name);
    let listed = {
        let names: Vec<&str> = columns.iter().take(20).map(|c| &**c).collect();
        let more = if columns.len() > 20 { ", ..." } else { "" };
        format!("the header has {}{more}", names.join(", "))
    };
    let mut issues = Vec::new();
    for name in src.schema.keys().filter(|name| !has(name)) {
        issues.push((
            format!("source.schema.{name}"),
            format!(
                "schema names column {name:?}, which {} does not have ({listed})",
                path.display()
            ),
        ));
    }
    if let Some(key) = src.key_column.as_deref().filter(|key| !has(key)) {
        issues.push((
            "source.key_column".to_owned(),
            format!(
                "key_column {key:?} is not a column of {} ({listed})",
                path.display()
            ),
        ));
    }
    if let Pacing::EventTime { column, .. } = &src.pacing
        && !column.is_empty()
    {
        if !has(column) {
            issues.push((
                "source.pacing.column".to_owned(),
                format!(
                    "pacing column {column:?} is not a column of {} ({listed})",
                    path.display()
                ),
            ));
        } else if let Some(problem) = crate::source::pacing_column_problem(
            column,
            src.schema.get(column).copied(),
            inferred_type(src, path, delimiter, column),
        ) {
            issues.push(("source.pacing.column".to_owned(), problem));
        }
    }
    if columns_reach_table {
        // The table's columns are the header's names as Snowflake identifiers: `Value` and
        // `value` become one column, and every row holding both would be dead-lettered.
        let mut seen: BTreeMap<String, &str> = BTreeMap::new();
        for name in columns {
            let ident = crate::sink::snowflake::encode::normalize_ident(name).to_uppercase();
            match seen.get(&ident) {
                Some(first) => issues.push((
                    "source.path".to_owned(),
                    format!(
                        "columns {first:?} and {:?} of {} become the same Snowflake column, so \
                         every row would be dead-lettered; rename one in the header (or in a \
                         transform)",
                        &**name,
                        path.display()
                    ),
                )),
                None => {
                    seen.insert(ident, name);
                }
            }
        }
    }
    issues
}

/// The type the source would infer for `column` from the rows it samples at the file's start
/// (`infer_rows`, at most 64 MiB of them), as it does when it starts; `None` if the file cannot be read that far.
fn inferred_type(
    src: &CsvSourceConfig,
    path: &Path,
    delimiter: u8,
    column: &str,
) -> Option<ValueType> {
    let opts = CsvOptions {
        delimiter,
        // Declared types shape inference of nothing else, and a name the header lacks would stop
        // the reader (reported above).
        schema: BTreeMap::new(),
        // Not validated yet: a 0 is reported at its key, and this still reads one row.
        infer_rows: src.infer_rows.max(1),
        max_record_bytes: usize::MAX,
        null_if: src.null_if.clone(),
    };
    let reader = CsvReader::open(path, &opts, Arc::new(AtomicU64::new(0)), None).ok()?;
    let i = reader.columns().iter().position(|c| &**c == column)?;
    reader.types().get(i).copied()
}

/// The name a transform is known by in logs, metrics and dead letters: its `name`, else its
/// component's file stem without `transform_` (see `TransformConfig::display_name`).
pub fn transform_name(t: &crate::transform::config::TransformConfig, _index: usize) -> String {
    t.display_name()
}

/// Why `topic` cannot be a Kafka topic's name, if it cannot.
pub fn topic_name_problem(topic: &str) -> Option<String> {
    let legal = |ch: char| ch.is_ascii_alphanumeric() || "._-".contains(ch);
    (topic.is_empty() || topic.len() > 249 || !topic.chars().all(legal)).then(|| {
        format!(
            "{topic:?} is not a valid Kafka topic name (ASCII letters, digits, '.', '_', '-'; 1 to \
             249 characters)"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn substituted_secrets_do_not_reach_issues() {
        let text = r#"{ "version": 1,
          "source": { "type": "csv", "path": "missing-${KAFKA_TOPIC}.csv" },
          "kafka": { "topic": "${KAFKA_TOPIC}" },
          "sink": { "type": "snowflake", "database": "D", "schema": "S", "table": "T",
                    "account_url": "${SNOWFLAKE_PASSWORD}", "account": "A", "user": "U",
                    "password": "${SNOWFLAKE_PASSWORD}" } }"#;
        let env = |name: &str| match name {
            "SNOWFLAKE_PASSWORD" => Some("Hunter2SecretPW".to_owned()),
            "KAFKA_TOPIC" => Some("orders-topic".to_owned()),
            _ => None,
        };
        let loaded = crate::config::load_str(text, Path::new("p.json"), &env).unwrap();
        let issues = validate(&loaded);
        let shown: Vec<String> = issues.iter().map(ToString::to_string).collect();
        let url = issues
            .iter()
            .find(|i| i.path == "sink.account_url")
            .unwrap_or_else(|| panic!("no account_url issue in {shown:#?}"));
        assert_eq!(
            url.message,
            "\"${SNOWFLAKE_PASSWORD}\" must start with https:// (or http:// for an emulator)"
        );
        assert!(shown.iter().all(|s| !s.contains("Hunter2")), "{shown:#?}");
        // A value from a variable that is no secret stays readable.
        let path = issues
            .iter()
            .find(|i| i.path == "source.path")
            .unwrap_or_else(|| panic!("no source.path issue in {shown:#?}"));
        assert!(
            path.message.contains("missing-orders-topic.csv"),
            "{path:?}"
        );
    }
}
