//! `transforms[]` entries of pipeline.json: which component to run, with which params and limits.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::error::FailureKind;
use crate::config::{FieldProblem, OnError};

/// A param's value: text, or a number or a flag, which `init` gets as its JSON text.
// Only the JSON Schema uses this type; `params_as_text` reads the values.
#[derive(JsonSchema)]
#[serde(untagged)]
#[allow(dead_code)]
enum ParamValue {
    Text(String),
    Number(f64),
    Flag(bool),
}

/// Params from a JSON object of them, read as `with` is (`transform test NAME`'s
/// `testdata/params.json`).
pub(crate) fn params_from_json(text: &str) -> serde_json::Result<BTreeMap<String, String>> {
    let mut de = serde_json::Deserializer::from_str(text);
    let params = params_as_text(&mut de)?;
    de.end()?;
    Ok(params)
}

/// Reads `with`, taking a bare number or flag as its JSON text: params reach `init` as strings,
/// and `"window": 100` is what anyone writes first.
fn params_as_text<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, String>, D::Error> {
    struct Text;
    impl serde::de::Visitor<'_> for Text {
        type Value = String;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a string, a number or true/false")
        }
        fn visit_str<E>(self, v: &str) -> Result<String, E> {
            Ok(v.to_owned())
        }
        fn visit_string<E>(self, v: String) -> Result<String, E> {
            Ok(v)
        }
        fn visit_bool<E>(self, v: bool) -> Result<String, E> {
            Ok(v.to_string())
        }
        fn visit_i64<E>(self, v: i64) -> Result<String, E> {
            Ok(v.to_string())
        }
        fn visit_u64<E>(self, v: u64) -> Result<String, E> {
            Ok(v.to_string())
        }
        fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<String, E> {
            // An integer past 2^53 arrives here rounded (one past `u64` too): its digits are lost.
            if v.fract() == 0.0 && v.abs() >= 9_007_199_254_740_992.0 {
                return Err(E::custom(format!(
                    "a number too big to pass exactly ({v:e}); quote it to pass it as written"
                )));
            }
            // As JSON writes it (`2.5`, `1.0`): a float written in the file stays one.
            serde_json::Number::from_f64(v)
                .map(|n| n.to_string())
                .ok_or_else(|| E::custom("a number JSON cannot hold"))
        }
    }
    struct Param(String);
    impl<'de> Deserialize<'de> for Param {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Param, D::Error> {
            d.deserialize_any(Text).map(Param)
        }
    }
    let params = BTreeMap::<String, Param>::deserialize(d)?;
    Ok(params.into_iter().map(|(k, Param(v))| (k, v)).collect())
}

/// One transform in the chain.
#[derive(Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TransformConfig {
    /// A name for logs, metrics and dead letters; defaults to the component file's stem without
    /// the `transform_` prefix cargo gives `transform-<what>` guest crates.
    #[serde(default)]
    pub name: Option<String>,
    /// Path of the component (`.wasm`), relative to the pipeline file's directory.
    pub uses: String,
    /// Parameters handed to the component's `init` as string pairs. A flag or an integer written
    /// bare (`"window": 100`, `"strict": true`) is handed over as written (`100`, `true`), and
    /// another number as the shortest text that reads back the same float (`2.5`; `5e1` as
    /// `50.0`): quote it to hand it over exactly as written.
    #[serde(default, deserialize_with = "params_as_text")]
    #[schemars(with = "BTreeMap<String, ParamValue>")]
    pub with: BTreeMap<String, String>,
    /// What a record the transform fails (or traps on) does: `fail` stops the run, `drop`
    /// counts and skips it, `dead_letter` (default) sends it to the dead-letter topic. Either one
    /// policy for every failure, or an object with one per kind of failure (`guest_error`,
    /// `trap`, `timeout`, `memory`, `fuel`, `protocol`, `output_limit`) and `default` for the
    /// rest: `{"guest_error": "dead_letter", "default": "fail"}` sets aside the records the
    /// transform rejects and stops the run when it crashes.
    #[serde(default)]
    pub on_error: ErrorPolicy,
    /// Linear-memory cap per instance, in MiB.
    #[serde(default = "default_memory_mb")]
    #[schemars(range(min = 1, max = 4096))]
    pub memory_mb: u64,
    /// CPU-time cap per batch call, in milliseconds: CPU time the call used, so time the
    /// machine spends on other work is not counted. Building an instance and its `init` get this
    /// or 1000, whichever is more.
    #[serde(default = "default_timeout_ms")]
    #[schemars(range(min = 1))]
    pub timeout_ms: u64,
    /// Fuel per batch call, for deterministic CI runs; unset means no fuel metering.
    #[serde(default)]
    #[schemars(range(min = 1))]
    pub fuel: Option<u64>,
    /// Show the guest's stdout/stderr on sluice's stderr, each line prefixed `[name] ` (not shown
    /// by default; a trap's reason still quotes what the guest wrote in that call).
    #[serde(default)]
    pub debug_stdio: bool,
    /// Most rows this transform may emit for one row it receives; emitting more fails that
    /// row's record with kind `output_limit` (guards against a runaway flat-map). Each transform
    /// applies its own limit, so two flat-maps in a chain can multiply.
    #[serde(default = "default_max_rows_per_record")]
    #[schemars(range(min = 1))]
    pub max_rows_per_record: u32,
    /// The secrets among the values of `with` taken from the environment (`${VAR}`): all but
    /// short numbers and flags whose param and variable are not named like secrets (see the
    /// README). A guest's error may quote its params, so [`redact`](Self::redact) keeps them out
    /// of every message and dead letter. Set when the pipeline file is loaded; not part of it.
    #[serde(skip)]
    #[schemars(skip)]
    pub secrets: Vec<String>,
}

/// What a transform's failed records do: one policy for all, or one per kind of failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum ErrorPolicy {
    /// The same policy for every failure.
    All(OnError),
    /// A policy per kind of failure.
    ByKind(OnErrorByKind),
}

/// `on_error` per kind of failure (the dead-letter `kind`s); a kind not named gets `default`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OnErrorByKind {
    /// The guest returned an error for the record (it rejected it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_error: Option<OnError>,
    /// The guest trapped (a panic, `unreachable`, an out-of-bounds access).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trap: Option<OnError>,
    /// The record ran past `timeout_ms` alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<OnError>,
    /// The record needed more memory than `memory_mb` alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<OnError>,
    /// The record ran out of `fuel` alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fuel: Option<OnError>,
    /// The guest broke the batch contract on the record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<OnError>,
    /// The record emitted more than `max_rows_per_record` rows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_limit: Option<OnError>,
    /// Every kind not named above (`dead_letter` if this is not given either).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<OnError>,
}

impl Default for ErrorPolicy {
    fn default() -> ErrorPolicy {
        ErrorPolicy::All(OnError::default())
    }
}

impl From<OnError> for ErrorPolicy {
    fn from(policy: OnError) -> ErrorPolicy {
        ErrorPolicy::All(policy)
    }
}

impl ErrorPolicy {
    /// The policy for a failure of `kind`.
    pub fn of(&self, kind: FailureKind) -> OnError {
        let by = match self {
            ErrorPolicy::All(policy) => return *policy,
            ErrorPolicy::ByKind(by) => by,
        };
        let named = match kind {
            FailureKind::Guest => by.guest_error,
            FailureKind::Trap => by.trap,
            FailureKind::Timeout => by.timeout,
            FailureKind::Memory => by.memory,
            FailureKind::Fuel => by.fuel,
            FailureKind::Protocol => by.protocol,
            FailureKind::OutputLimit => by.output_limit,
        };
        named.or(by.default).unwrap_or_default()
    }
}

// By hand, not `untagged`: serde's untagged errors say only that nothing matched, where an
// operator needs the misspelt kind or policy named.
impl<'de> Deserialize<'de> for ErrorPolicy {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<ErrorPolicy, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = ErrorPolicy;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("`fail`, `drop`, `dead_letter`, or an object of them by failure kind")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ErrorPolicy, E> {
                use serde::de::IntoDeserializer;
                OnError::deserialize(v.into_deserializer()).map(ErrorPolicy::All)
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<ErrorPolicy, A::Error> {
                OnErrorByKind::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(ErrorPolicy::ByKind)
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// Secret values shorter than this are not redacted: they cannot hide much, and replacing every
/// `1` of a message would garble it.
const MIN_REDACTED: usize = 4;

// By hand: the values of `with` may be secrets (`mask`'s `salt`), so only their keys are shown.
impl std::fmt::Debug for TransformConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransformConfig")
            .field("name", &self.name)
            .field("uses", &self.uses)
            .field("with", &self.with.keys().collect::<Vec<_>>())
            .field("on_error", &self.on_error)
            .field("memory_mb", &self.memory_mb)
            .field("timeout_ms", &self.timeout_ms)
            .field("fuel", &self.fuel)
            .field("debug_stdio", &self.debug_stdio)
            .field("max_rows_per_record", &self.max_rows_per_record)
            .finish()
    }
}

impl TransformConfig {
    /// Checks the settings' ranges, without I/O (whether `uses` names a file is for the loader,
    /// and the name as written in a pipeline file for `validate`), and returns every problem
    /// found. The runtime refuses a transform that fails it, however it was made.
    pub fn validate(&self) -> Result<(), Vec<FieldProblem>> {
        let mut problems = Vec::new();
        let mut bad = |field: &'static str, message: String| {
            problems.push(FieldProblem { field, message });
        };
        // `{}` (or only nulls) would read as the default, silently: a mistake.
        if self.on_error == ErrorPolicy::ByKind(OnErrorByKind::default()) {
            bad(
                "on_error",
                "names no kind of failure: give at least one of guest_error, trap, timeout, \
                 memory, fuel, protocol, output_limit or default, or one policy for all as a \
                 string"
                    .to_owned(),
            );
        }
        if self.memory_mb == 0 || self.memory_mb > 4096 {
            bad(
                "memory_mb",
                format!(
                    "memory_mb must be between 1 and 4096, got {}",
                    self.memory_mb
                ),
            );
        }
        if self.timeout_ms == 0 {
            bad("timeout_ms", "timeout_ms must be at least 1".to_owned());
        }
        if self.fuel == Some(0) {
            bad("fuel", "fuel must be at least 1 when set".to_owned());
        }
        if self.max_rows_per_record == 0 {
            bad(
                "max_rows_per_record",
                "max_rows_per_record must be at least 1 (0 would fail every row the transform \
                 emits)"
                    .to_owned(),
            );
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }

    /// A config for the component at `uses` with every other field at its default.
    pub fn new(uses: impl Into<String>) -> TransformConfig {
        TransformConfig {
            name: None,
            uses: uses.into(),
            with: BTreeMap::new(),
            on_error: ErrorPolicy::default(),
            memory_mb: default_memory_mb(),
            timeout_ms: default_timeout_ms(),
            fuel: None,
            debug_stdio: false,
            max_rows_per_record: default_max_rows_per_record(),
            secrets: Vec::new(),
        }
    }

    /// `text` with each of [`secrets`](Self::secrets) in it (of at least 4 bytes) shown as `***`,
    /// in any of the forms of `crate::config::shown_forms` (as written, as `{:?}` quotes it,
    /// with control characters made spaces, JSON-escaped).
    pub fn redact(&self, text: String) -> String {
        let mut forms = self.secret_forms();
        // Longest first, so that a secret inside another does not leave the rest of it showing.
        forms.sort_by_key(|f| std::cmp::Reverse(f.len()));
        forms
            .into_iter()
            .fold(text, |text, secret| match text.contains(&secret) {
                true => text.replace(&secret, "***"),
                false => text,
            })
    }

    /// The texts [`redact`](Self::redact) masks: a text cut inside one of them would show part
    /// of a secret that masking then misses.
    pub fn secret_forms(&self) -> Vec<String> {
        let mut forms: Vec<String> = self
            .secrets
            .iter()
            .filter(|s| s.len() >= MIN_REDACTED)
            .flat_map(|s| crate::config::shown_forms(s))
            .collect();
        forms.sort();
        forms.dedup();
        forms
    }

    /// The name used in logs, metrics and dead letters: `name`, else the component file's stem
    /// (`transform_filter.wasm` becomes `filter`).
    pub fn display_name(&self) -> String {
        if let Some(name) = &self.name {
            return name.clone();
        }
        let stem = std::path::Path::new(&self.uses)
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| self.uses.clone());
        match stem.strip_prefix("transform_") {
            Some(rest) if !rest.is_empty() => rest.to_owned(),
            _ => stem,
        }
    }
}

fn default_memory_mb() -> u64 {
    64
}
fn default_timeout_ms() -> u64 {
    1000
}
fn default_max_rows_per_record() -> u32 {
    10_000
}
