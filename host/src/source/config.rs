//! `source` section of pipeline.json: which CSV file to replay, how to type it and how fast.
//!
//! ```json
//! "source": {
//!   "type": "csv", "path": "data/data.csv", "delimiter": ",",
//!   "schema": { "created_at": "timestamp" },
//!   "pacing": { "mode": "rate", "rows_per_sec": 500 },
//!   "loop": 1, "key_column": "id", "on_error": "dead_letter"
//! }
//! ```

use std::collections::BTreeMap;
use std::num::{NonZeroU32, NonZeroUsize};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::config::{FieldProblem, OnError};
use crate::row::ValueType;

/// The replay source. Only CSV files today; the `type` tag leaves room for more.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum SourceConfig {
    /// Replay a CSV file whose header row names the fields.
    Csv(CsvSourceConfig),
}

/// A CSV file replayed as a live feed.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CsvSourceConfig {
    /// Path of the CSV file, relative to the pipeline file's directory.
    pub path: String,
    /// Field delimiter, a single ASCII character other than a quote or a line break.
    #[serde(default = "default_delimiter")]
    pub delimiter: String,
    /// Explicit column types (column name to type). Columns not listed are inferred from the
    /// data: int, float, bool, ISO-8601 timestamp, else string.
    #[serde(default, deserialize_with = "declared_types")]
    #[schemars(with = "BTreeMap<String, DeclaredType>")]
    pub schema: BTreeMap<String, ValueType>,
    /// How many leading rows type inference samples (no more than 64 MiB of them).
    #[serde(default = "default_infer_rows")]
    #[schemars(range(min = 1))]
    pub infer_rows: usize,
    /// How fast rows are replayed.
    #[serde(default)]
    pub pacing: Pacing,
    /// How many times the file is replayed (1 = once).
    #[serde(default = "default_loop", rename = "loop")]
    #[schemars(range(min = 1))]
    pub loop_count: u32,
    /// Column whose value becomes the Kafka message key; without it messages have no key.
    #[serde(default)]
    pub key_column: Option<String>,
    /// Field texts read as null in every column, as Snowflake's `NULL_IF`: `["NULL", "\\N"]`
    /// for SQL exports; `[""]` makes a quoted empty field (`""`) null too, where it is otherwise
    /// an empty string in a string column. An empty field is null either way. Type inference
    /// passes over these, so `NULL` does not make a column of ints text.
    #[serde(default)]
    pub null_if: Vec<String>,
    /// What a bad row (ragged, invalid UTF-8, unparsable under `schema` or the inferred type,
    /// or larger than the largest Kafka message) does: `dead_letter` (default) sends it to the
    /// dead-letter topic with file, line and reason; `fail` stops the run with an error naming
    /// file and line; `drop` counts it and skips it.
    #[serde(default)]
    pub on_error: OnError,
}

/// Replay pacing.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(tag = "mode", rename_all = "snake_case", deny_unknown_fields)]
pub enum Pacing {
    /// As fast as the broker takes them.
    #[default]
    None,
    /// A fixed delay between rows (the seed's producer used 1000 ms).
    Fixed {
        /// Delay between consecutive rows, in milliseconds; at most a day.
        #[schemars(range(max = 86_400_000))]
        delay_ms: u64,
    },
    /// A steady rate.
    Rate {
        /// Rows per second; at least one a day.
        #[schemars(range(min = 1.0 / 86_400.0))]
        rows_per_sec: f64,
    },
    /// Replays the gaps between rows' event timestamps, sped up by `speed`.
    EventTime {
        /// Name of the timestamp column.
        column: String,
        /// Speed-up factor: 2.0 replays an hour of events in 30 minutes.
        #[serde(default = "default_speed")]
        #[schemars(extend("exclusiveMinimum" = 0))]
        speed: f64,
        /// Longest wait between two rows, in milliseconds, however far apart their timestamps;
        /// at most a day.
        #[serde(default = "default_max_gap_ms")]
        #[schemars(range(max = 86_400_000))]
        max_gap_ms: u64,
    },
}

/// A column type `schema` can declare.
// [`ValueType`] but `null`, which no value but an empty one parses as: declared, it would make
// every other value a bad row.
#[derive(Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
enum DeclaredType {
    /// `true`/`false`.
    Bool,
    /// A 64-bit signed integer.
    Int,
    /// A 64-bit float.
    Float,
    /// Text as it is.
    String,
    /// An ISO-8601 date and time.
    Timestamp,
    /// JSON text, loaded as a VARIANT.
    Json,
}

/// Reads `schema` as [`DeclaredType`]s, so that `null` is refused with the types it may be.
pub(crate) fn declared_types<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, ValueType>, D::Error> {
    let declared = BTreeMap::<String, DeclaredType>::deserialize(d)?;
    let types = declared.into_iter().map(|(column, t)| {
        let t = match t {
            DeclaredType::Bool => ValueType::Bool,
            DeclaredType::Int => ValueType::Int,
            DeclaredType::Float => ValueType::Float,
            DeclaredType::String => ValueType::String,
            DeclaredType::Timestamp => ValueType::Timestamp,
            DeclaredType::Json => ValueType::Json,
        };
        (column, t)
    });
    Ok(types.collect())
}

fn default_delimiter() -> String {
    ",".to_owned()
}
/// What a delimiter may be, for messages.
pub const DELIMITER_RULE: &str = "one ASCII character other than a quote or a line break";

/// The byte a `delimiter` setting stands for, else `None` (see [`DELIMITER_RULE`]). A quote or a
/// line break as the delimiter would make every record one mangled field, or no record at all.
pub fn delimiter_byte(delimiter: &str) -> Option<u8> {
    match delimiter.as_bytes() {
        [d] if d.is_ascii() && !matches!(d, b'"' | b'\n' | b'\r') => Some(*d),
        _ => None,
    }
}

/// A [`CsvSourceConfig`] that passed [`CsvSourceConfig::validate`]: what the replay and the
/// readers of its file take, with each setting in the form it is used in. Only `validate` makes
/// one outside this crate.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct CsvSource {
    /// Path of the CSV file as written, relative to the pipeline file's directory.
    pub path: String,
    /// The field delimiter (see [`DELIMITER_RULE`]).
    pub delimiter: u8,
    /// Declared column types.
    pub schema: BTreeMap<String, ValueType>,
    /// How many leading rows type inference samples (no more than 64 MiB of them).
    pub infer_rows: NonZeroUsize,
    /// How fast rows are replayed; rates and speeds are finite and positive.
    pub pacing: Pacing,
    /// How many times the file is replayed.
    pub loops: NonZeroU32,
    /// Column whose value becomes the Kafka message key.
    pub key_column: Option<String>,
    /// Field texts read as null.
    pub null_if: Vec<String>,
    /// What a bad row does.
    pub on_error: OnError,
}

impl CsvSourceConfig {
    /// Checks what types cannot express, without I/O (whether the file exists and what its
    /// header holds are `validate`'s), and returns the settings as the source uses them, or
    /// every problem found.
    pub fn validate(&self) -> Result<CsvSource, Vec<FieldProblem>> {
        let mut problems = Vec::new();
        let mut bad = |field: &'static str, message: String| {
            problems.push(FieldProblem { field, message });
        };
        let delimiter = delimiter_byte(&self.delimiter);
        if delimiter.is_none() {
            bad(
                "delimiter",
                format!(
                    "delimiter must be {DELIMITER_RULE}, got {:?}",
                    self.delimiter
                ),
            );
        }
        let loops = NonZeroU32::new(self.loop_count);
        if loops.is_none() {
            bad("loop", "loop must be at least 1".to_owned());
        }
        let infer_rows = NonZeroUsize::new(self.infer_rows);
        if infer_rows.is_none() {
            bad("infer_rows", "infer_rows must be at least 1".to_owned());
        }
        // A replay that waits more than a day between rows never ends in practice (a rate of
        // 1e-300 waited for good with nothing said): a mistake, not a pace.
        let most = |field: &'static str, ms: u64, bad: &mut dyn FnMut(&'static str, String)| {
            if ms > MAX_WAIT_MS {
                bad(
                    field,
                    format!("{ms} ms is more than a day ({MAX_WAIT_MS} ms), the longest wait"),
                );
            }
        };
        match &self.pacing {
            Pacing::Rate { rows_per_sec } if !(rows_per_sec.is_finite() && *rows_per_sec > 0.0) => {
                bad(
                    "pacing.rows_per_sec",
                    format!("rows_per_sec must be a positive number, got {rows_per_sec}"),
                );
            }
            Pacing::Rate { rows_per_sec } if *rows_per_sec < 1.0 / 86_400.0 => {
                bad(
                    "pacing.rows_per_sec",
                    format!(
                        "rows_per_sec must be at least one row a day (1/86400), got {rows_per_sec:?}"
                    ),
                );
            }
            Pacing::Fixed { delay_ms } => most("pacing.delay_ms", *delay_ms, &mut bad),
            Pacing::EventTime {
                speed,
                column,
                max_gap_ms,
            } => {
                most("pacing.max_gap_ms", *max_gap_ms, &mut bad);
                if !(speed.is_finite() && *speed > 0.0) {
                    bad(
                        "pacing.speed",
                        format!("speed must be a positive number, got {speed}"),
                    );
                }
                if column.is_empty() {
                    bad(
                        "pacing.column",
                        "column must name the timestamp column".to_owned(),
                    );
                }
            }
            _ => {}
        }
        match (delimiter, infer_rows, loops) {
            (Some(delimiter), Some(infer_rows), Some(loops)) if problems.is_empty() => {
                Ok(CsvSource {
                    path: self.path.clone(),
                    delimiter,
                    schema: self.schema.clone(),
                    infer_rows,
                    pacing: self.pacing.clone(),
                    loops,
                    key_column: self.key_column.clone(),
                    null_if: self.null_if.clone(),
                    on_error: self.on_error,
                })
            }
            _ => Err(problems),
        }
    }
}

/// How many records type inference samples when `infer_rows` is not set.
pub const DEFAULT_INFER_ROWS: usize = 1000;

fn default_infer_rows() -> usize {
    DEFAULT_INFER_ROWS
}
fn default_loop() -> u32 {
    1
}
/// The longest wait between two rows that pacing may ask for: a day.
const MAX_WAIT_MS: u64 = 86_400_000;

fn default_speed() -> f64 {
    1.0
}
fn default_max_gap_ms() -> u64 {
    10_000
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(v: serde_json::Value) -> CsvSourceConfig {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn validate_gives_the_settings_as_used_or_every_problem() {
        let ok = source(serde_json::json!({ "path": "a.csv", "delimiter": ";", "loop": 3 }))
            .validate()
            .unwrap();
        assert_eq!(
            (ok.delimiter, ok.loops.get(), ok.infer_rows.get()),
            (b';', 3, DEFAULT_INFER_ROWS)
        );

        let problems = source(serde_json::json!({
            "path": "a.csv", "delimiter": "\n", "loop": 0, "infer_rows": 0,
            "pacing": { "mode": "event_time", "column": "", "speed": -1.0 }
        }))
        .validate()
        .unwrap_err();
        let fields: Vec<&str> = problems.iter().map(|p| p.field).collect();
        assert_eq!(
            fields,
            [
                "delimiter",
                "loop",
                "infer_rows",
                "pacing.speed",
                "pacing.column"
            ]
        );
        let rate = source(serde_json::json!({
            "path": "a.csv", "pacing": { "mode": "rate", "rows_per_sec": 0 }
        }));
        assert_eq!(rate.validate().unwrap_err()[0].field, "pacing.rows_per_sec");
        // Waits of more than a day between rows are mistakes: refused at their keys.
        for (pacing, field) in [
            (
                serde_json::json!({ "mode": "rate", "rows_per_sec": 1e-300 }),
                "pacing.rows_per_sec",
            ),
            (
                serde_json::json!({ "mode": "fixed", "delay_ms": 86_400_001u64 }),
                "pacing.delay_ms",
            ),
            (
                serde_json::json!({ "mode": "event_time", "column": "t", "max_gap_ms": u64::MAX }),
                "pacing.max_gap_ms",
            ),
        ] {
            let paced = source(serde_json::json!({ "path": "a.csv", "pacing": pacing }));
            let problem = &paced.validate().unwrap_err()[0];
            assert_eq!(problem.field, field);
            // As written, not 300 zeros.
            assert!(problem.message.len() < 100, "{}", problem.message);
        }
        for pacing in [
            serde_json::json!({ "mode": "rate", "rows_per_sec": 1.0 / 86_400.0 }),
            serde_json::json!({ "mode": "fixed", "delay_ms": 86_400_000u64 }),
        ] {
            let paced = source(serde_json::json!({ "path": "a.csv", "pacing": pacing }));
            assert!(paced.validate().is_ok());
        }
    }
}
