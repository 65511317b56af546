//! pipeline.json: parsing, `${VAR}` interpolation, and errors that name the key and its place.
//!
//! Loading goes in three steps: the text is parsed as JSON (syntax errors carry line and column);
//! every string is interpolated from the environment (`${VAR}`, `${VAR:-default}`; the only way
//! secrets enter, and the secret values are shown as `${VAR}` in every message, see
//! [`LoadedConfig::redact`]); then the tree is deserialized into [`PipelineConfig`] with
//! `deny_unknown_fields` everywhere, and type errors carry their JSON path
//! (`transforms[1].with.threshold`, also inside the tagged `source`, `sink` and `pacing`), which
//! [`locate`] maps back to a line and column of the original text. Offline checks that need more
//! than types live in `validate`.

use std::fmt;
use std::path::{Path, PathBuf};

use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::sink::snowflake::config::SnowflakeSinkConfig;
use crate::source::config::{CsvSourceConfig, SourceConfig};
use crate::transform::config::TransformConfig;

/// The only pipeline file version this build reads.
pub const VERSION: u32 = 1;

/// A whole pipeline.json.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// Editor hint: the JSON Schema this file follows (`./pipeline.schema.json`). Ignored by sluice.
    #[serde(default, rename = "$schema", skip_serializing_if = "Option::is_none")]
    pub schema: Option<String>,
    /// Pipeline file format version; must be 1.
    pub version: u32,
    /// Name of the pipeline; keys its committed offsets in the warehouse.
    #[serde(default = "default_name")]
    pub name: String,
    /// The CSV replay source.
    pub source: SourceConfig,
    /// The Kafka topic between replay and consumption.
    pub kafka: KafkaConfig,
    /// The transform chain, applied in order.
    #[serde(default)]
    pub transforms: Vec<TransformConfig>,
    /// Where transformed rows are loaded.
    pub sink: SinkConfig,
    /// Where bad rows and failed records go.
    #[serde(default)]
    pub dead_letter: DeadLetterConfig,
}

/// The sink. Only Snowflake today.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum SinkConfig {
    /// Bulk PUT + COPY into a Snowflake table.
    Snowflake(SnowflakeSinkConfig),
}

/// Kafka connection, topic and consumer settings.
#[derive(Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap servers, comma-separated. Empty means "start a managed local broker".
    #[serde(default)]
    pub brokers: String,
    /// The topic rows are replayed into and consumed from; created if missing.
    pub topic: String,
    /// Partition count used when the topic is created.
    #[serde(default = "default_partitions")]
    #[schemars(range(min = 1))]
    pub partitions: i32,
    /// Replication factor used when the topic is created.
    #[serde(default = "default_replication")]
    #[schemars(range(min = 1))]
    pub replication_factor: i32,
    /// Consumer group id; defaults to `sluice-<pipeline name>`.
    #[serde(default)]
    pub group_id: Option<String>,
    /// Producer compression codec.
    #[serde(default)]
    pub compression: Compression,
    /// Records consumed but not yet durable in the sink, at most; backpressure beyond it.
    #[serde(default = "default_max_in_flight")]
    #[schemars(range(min = 1))]
    pub max_in_flight: usize,
    /// Extra librdkafka properties (e.g. `security.protocol`, `sasl.mechanism`), applied to
    /// producer, consumer and admin clients. The settings the delivery guarantees rest on
    /// (`enable.idempotence`, `acks`, `enable.auto.commit`, `auto.offset.reset`, ...) and those
    /// another key sets (`group.id`, `bootstrap.servers`, `compression.type`) are refused.
    #[serde(default)]
    pub properties: std::collections::BTreeMap<String, String>,
}

// By hand: the values of `properties` may be passwords, so only their keys are shown.
impl fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaConfig")
            .field("brokers", &self.brokers)
            .field("topic", &self.topic)
            .field("partitions", &self.partitions)
            .field("replication_factor", &self.replication_factor)
            .field("group_id", &self.group_id)
            .field("compression", &self.compression)
            .field("max_in_flight", &self.max_in_flight)
            .field("properties", &self.properties.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// Producer compression codec.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Compression {
    /// No compression.
    None,
    /// LZ4 (default): cheap on CPU, good on repetitive JSON.
    #[default]
    Lz4,
    /// Zstandard.
    Zstd,
    /// gzip.
    Gzip,
    /// Snappy.
    Snappy,
}

impl Compression {
    /// The librdkafka `compression.type` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
            Compression::Gzip => "gzip",
            Compression::Snappy => "snappy",
        }
    }
}

/// The dead-letter topic.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DeadLetterConfig {
    /// Topic that receives bad CSV rows and quarantined records; defaults to `<topic>.dlq`.
    #[serde(default)]
    pub topic: Option<String>,
}

/// What happens to a record that cannot be processed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnError {
    /// Stop the run with an error (exit 1).
    Fail,
    /// Count it and skip it.
    Drop,
    /// Send it to the dead-letter topic with the reason, and go on.
    #[default]
    DeadLetter,
}

fn default_name() -> String {
    "sluice".to_owned()
}
fn default_partitions() -> i32 {
    3
}
fn default_replication() -> i32 {
    1
}
fn default_max_in_flight() -> usize {
    100_000
}

/// One problem a section's own `validate` found (the source's, a transform's, the sink's): the
/// key under that section, without where the file has it, which [`ConfigIssue`] adds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldProblem {
    /// The key under the section, e.g. `pacing.speed` under `source`.
    pub field: &'static str,
    /// What is wrong, lowercase, no trailing period.
    pub message: String,
}

/// One problem in a pipeline file, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    /// JSON path of the offending key, e.g. `transforms[1].with.threshold` (empty for the root).
    pub path: String,
    /// 1-based line and column in the file, when known.
    pub position: Option<(usize, usize)>,
    /// What is wrong, lowercase, no trailing period.
    pub message: String,
}

impl fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = if self.path.is_empty() {
            "(root)"
        } else {
            &self.path
        };
        match self.position {
            Some((l, c)) => write!(f, "{path} (line {l}, column {c}): {}", self.message),
            None => write!(f, "{path}: {}", self.message),
        }
    }
}

/// A pipeline file that could not be loaded: every issue found, with the file it is in.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {}", .0.display())]
    Read(PathBuf, #[source] std::io::Error),
    /// The file is not valid, with one or more issues.
    #[error("{} is not a valid pipeline file:\n{}", .file.display(), render_issues(.issues))]
    Invalid {
        /// The file.
        file: PathBuf,
        /// What is wrong with it.
        issues: Vec<ConfigIssue>,
    },
}

fn render_issues(issues: &[ConfigIssue]) -> String {
    issues
        .iter()
        .map(|i| format!("  {i}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A parsed pipeline file together with where it came from.
///
/// `Debug` shows every secret substituted from the environment as `${VAR}` (see
/// [`redact`](Self::redact)).
#[derive(Clone)]
pub struct LoadedConfig {
    /// The parsed, interpolated configuration.
    pub config: PipelineConfig,
    /// The file it came from.
    pub file: PathBuf,
    /// The directory relative paths in it are resolved against.
    pub base_dir: PathBuf,
    /// The original text, for mapping JSON paths to lines.
    pub text: String,
    /// The secret values substituted from the environment, kept only to mask them.
    secrets: EnvSecrets,
}

// By hand: a variable named like a secret may have gone into any field (`role`, a topic), which
// the config's own `Debug` would show; so all of it goes through `redact`.
impl fmt::Debug for LoadedConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let config = if f.alternate() {
            format!("{:#?}", self.config)
        } else {
            format!("{:?}", self.config)
        };
        f.debug_struct("LoadedConfig")
            .field("config", &format_args!("{}", self.redact(&config)))
            .field("file", &self.file)
            .field("base_dir", &self.base_dir)
            .field("text", &self.text)
            .field("secrets", &self.secrets)
            .finish()
    }
}

/// `p` from a pipeline file in directory `base`, as a path from the working directory. A path
/// in a file in the working directory is named as written (`../x`, not `./../x`), except `-`,
/// which would read as stdin where a file name may be `-`.
pub fn resolve_in(base: &Path, p: &str) -> PathBuf {
    let path = Path::new(p);
    if path.is_absolute() || (base == Path::new(".") && !p.is_empty() && p != "-") {
        path.to_path_buf()
    } else {
        base.join(path)
    }
}

impl LoadedConfig {
    /// Resolves a path from the file against its directory.
    pub fn resolve(&self, p: &str) -> PathBuf {
        resolve_in(&self.base_dir, p)
    }

    /// Builds a [`ConfigIssue`] at `path`, locating it in the original text. Secrets in
    /// `message` are masked (see [`redact`](Self::redact)).
    pub fn issue(&self, path: &str, message: impl Into<String>) -> ConfigIssue {
        ConfigIssue {
            path: path.to_owned(),
            position: locate(&self.text, path),
            message: self.redact(&message.into()),
        }
    }

    /// Wraps issues into a [`ConfigError`] for this file, masking secrets in their messages
    /// (see [`redact`](Self::redact)).
    pub fn invalid(&self, mut issues: Vec<ConfigIssue>) -> ConfigError {
        for issue in &mut issues {
            issue.message = self.redact(&issue.message);
        }
        ConfigError::Invalid {
            file: self.file.clone(),
            issues,
        }
    }

    /// `text` with every secret substituted from the environment shown as the `${VAR}` it came
    /// from, so that a message still says which setting was wrong. A value counts as secret when
    /// its variable's name contains PASSWORD, PASSPHRASE, SECRET, TOKEN, KEY, SALT or CREDENTIAL
    /// (any case), or when it went into a credential: `sink.password`, `sink.private_key`,
    /// `sink.private_key_passphrase`, a `kafka.properties` entry named like one
    /// (`sasl.password`), or any `transforms[i].with` param. Values shorter than 4 bytes are left
    /// alone. Each value is found in every form of `shown_forms`. Redacting twice changes
    /// nothing.
    pub fn redact(&self, text: &str) -> String {
        self.secrets.redact(text)
    }

    /// Makes [`redact_output`] mask this pipeline's secrets: everything sluice itself writes
    /// (log lines, the final error, the summary) goes through it, so a secret that reached an
    /// error message deep in a stage (a broker's or the warehouse's echo of a bad value, say) is
    /// still not shown. The first pipeline loaded by the process is the one that counts.
    pub fn mask_secrets_in_output(&self) {
        let _ = OUTPUT_SECRETS.set(self.secrets.clone());
    }
}

static OUTPUT_SECRETS: std::sync::OnceLock<EnvSecrets> = std::sync::OnceLock::new();

/// `text` with the secrets of [`LoadedConfig::mask_secrets_in_output`] masked as `${VAR}`. A
/// line of JSON (a `--log-format json` event) is masked inside its strings only, so that it
/// stays valid JSON.
pub fn redact_output(text: &str) -> std::borrow::Cow<'_, str> {
    let Some(secrets) = OUTPUT_SECRETS.get().filter(|s| !s.values.is_empty()) else {
        return text.into();
    };
    let line = text.trim_end();
    if line.starts_with('{')
        && !line.contains('\n')
        && let Ok(mut event) = serde_json::from_str::<serde_json::Value>(line)
    {
        if !secrets.redact_json(&mut event) {
            return text.into();
        }
        return format!("{event}{}", &text[line.len()..]).into();
    }
    secrets.redact(text).into()
}

/// `value` with the secrets of [`LoadedConfig::mask_secrets_in_output`] masked inside its
/// strings (for JSON sluice writes whole: the summary files).
pub fn redact_output_json(value: &mut serde_json::Value) {
    if let Some(secrets) = OUTPUT_SECRETS.get() {
        secrets.redact_json(value);
    }
}

/// Substituted secret values shorter than this are not masked: masking a 1 to 3 character value
/// would replace every `1` or `abc` in a message, garbling it, and so short a value is not what
/// protects an account. (`TransformConfig::redact` uses the same bound.)
const MIN_MASKED: usize = 4;

/// Words that make a variable's name, a transform param's name or a `kafka.properties` key a
/// secret's (case-insensitive).
const SECRET_WORDS: [&str; 11] = [
    "PASSWORD",
    "PASSPHRASE",
    "PASSWD",
    "SECRET",
    "TOKEN",
    "KEY",
    "SALT",
    "PEPPER",
    "SEED",
    "HMAC",
    "CREDENTIAL",
];

/// One `${VAR}` substitution made while loading.
struct Substitution {
    /// JSON path of the string it went into.
    path: String,
    /// The variable's name.
    var: String,
    /// The value substituted.
    value: String,
    /// Whether the variable is the whole string (`"${VAR}"`), not a part of one.
    lone: bool,
}

impl Substitution {
    /// Whether the value must be kept out of messages: it fills a credential field, or its
    /// variable is named like a secret, or it went into a secret-named `kafka.properties` entry
    /// or into a transform param (a guest may take any param as key material). A flag
    /// (`true`, `false`) is no secret outside the credential fields, and neither is a param's
    /// short number given by a variable alone (`"threshold": "${MAX_AMOUNT}"`) unless the param
    /// or the variable is named like a secret: masking `1000` or `false` garbles every value
    /// and message that contains it (`21000.5` as `2***.5`).
    fn is_secret(&self) -> bool {
        let credential = matches!(
            self.path.as_str(),
            "sink.password" | "sink.private_key" | "sink.private_key_passphrase"
        );
        if credential {
            return true;
        }
        if matches!(self.value.trim(), "true" | "false") {
            return false;
        }
        let param = self
            .path
            .strip_prefix("transforms[")
            .and_then(|rest| rest.split_once("].with."))
            .filter(|(index, _)| index.parse::<usize>().is_ok())
            .map(|(_, param)| param);
        let threshold = self.lone && is_short_number(&self.value);
        names_secret(&self.var)
            || param.is_some_and(|p| names_secret(p) || !threshold)
            || self
                .path
                .strip_prefix("kafka.properties.")
                .is_some_and(names_secret)
    }
}

/// The credentials `written` holds as text of its own rather than from the environment (a
/// value, or a variable's non-empty `:-` default), each with the variable it could come from:
/// the sink's password and private key, and Kafka properties named like a secret.
fn written_secrets(written: &serde_json::Value) -> Vec<(String, String)> {
    let mut found = Vec::new();
    let mut check = |path: String, var: String, value: Option<&serde_json::Value>| {
        let text = match value {
            Some(serde_json::Value::String(text)) => text.clone(),
            Some(serde_json::Value::Number(n)) => n.to_string(),
            _ => return,
        };
        if !written_text(&text).trim().is_empty() {
            found.push((path, var));
        }
    };
    if let Some(props) = (written.get("kafka"))
        .and_then(|k| k.get("properties"))
        .and_then(serde_json::Value::as_object)
    {
        // Named like a secret but naming where one is (`ssl.key.location`,
        // `sasl.kerberos.keytab`, `sasl.oauthbearer.token.endpoint.url`).
        let names_a_place = |k: &str| {
            [".location", ".keytab", ".url", ".file"]
                .iter()
                .any(|end| k.ends_with(end))
        };
        for (key, value) in (props.iter()).filter(|(k, _)| names_secret(k) && !names_a_place(k)) {
            let var = format!(
                "KAFKA_{}",
                key.to_ascii_uppercase().replace(['.', '-'], "_")
            );
            check(format!("kafka.properties.{key}"), var, Some(value));
        }
    }
    let sink = [
        ("password", "SNOWFLAKE_PASSWORD"),
        ("private_key", "SNOWFLAKE_PRIVATE_KEY"),
        ("private_key_passphrase", "SNOWFLAKE_PRIVATE_KEY_PASSPHRASE"),
    ];
    for (key, var) in sink {
        let value = written.get("sink").and_then(|s| s.get(key));
        check(format!("sink.{key}"), var.to_owned(), value);
    }
    found
}

/// The text of `value` that is written in the file rather than taken from the environment:
/// what is outside its `${VAR}`s, and their `:-` defaults.
fn written_text(value: &str) -> String {
    let (mut written, mut rest) = (String::new(), value);
    while let Some(start) = rest.find("${") {
        written.push_str(&rest[..start]);
        let Some(len) = closing_brace(&rest[start + 2..]) else {
            break;
        };
        let expr = &rest[start + 2..start + 2 + len];
        // A default's own variables are not written in the file either.
        let default = expr.split_once(":-").map_or("", |(_, default)| default);
        written.push_str(&written_text(default));
        rest = &rest[start + 2 + len + 1..];
    }
    written.push_str(rest);
    written
}

/// Whether `value` is a number of at most 12 characters written in decimal (`1000`, `-0.5`,
/// `1e6`): a threshold, not key material.
fn is_short_number(value: &str) -> bool {
    let v = value.trim();
    v.len() <= 12
        && v.bytes()
            .all(|b| b.is_ascii_digit() || b"+-.eE".contains(&b))
        && v.parse::<f64>().is_ok()
}

fn names_secret(name: &str) -> bool {
    let name = name.to_ascii_uppercase();
    SECRET_WORDS.iter().any(|word| name.contains(word))
}

/// The secret values substituted from the environment, each with its variable's name.
#[derive(Clone, Default)]
struct EnvSecrets {
    /// (variable, value), one entry per distinct value of at least [`MIN_MASKED`] bytes.
    values: Vec<(String, String)>,
}

// By hand: only the variables' names may be shown.
impl fmt::Debug for EnvSecrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.values.iter().map(|(var, _)| var))
            .finish()
    }
}

impl EnvSecrets {
    fn new(substitutions: &[Substitution]) -> EnvSecrets {
        let mut values: Vec<(String, String)> = Vec::new();
        for s in substitutions.iter().filter(|s| s.is_secret()) {
            if s.value.len() >= MIN_MASKED && !values.iter().any(|(_, v)| *v == s.value) {
                values.push((s.var.clone(), s.value.clone()));
            }
        }
        EnvSecrets { values }
    }

    /// Masks the strings (and keys) inside `value`; whether any changed.
    fn redact_json(&self, value: &mut serde_json::Value) -> bool {
        use serde_json::Value;
        match value {
            Value::String(text) => {
                let masked = self.redact(text);
                let changed = masked != *text;
                *text = masked;
                changed
            }
            Value::Array(items) => {
                let mut changed = false;
                for item in items {
                    changed |= self.redact_json(item);
                }
                changed
            }
            Value::Object(map) => {
                let mut changed = false;
                let entries = std::mem::take(map);
                for (key, mut item) in entries {
                    changed |= self.redact_json(&mut item);
                    let masked = self.redact(&key);
                    changed |= masked != key;
                    map.insert(masked, item);
                }
                changed
            }
            _ => false,
        }
    }

    /// See [`LoadedConfig::redact`].
    fn redact(&self, text: &str) -> String {
        if self.values.is_empty() {
            return text.to_owned();
        }
        let masks: Vec<String> = self
            .values
            .iter()
            .map(|(var, _)| format!("${{{var}}}"))
            .collect();
        // Every form each value may be quoted in, with the mask for it.
        let mut forms: Vec<(String, &str)> = Vec::new();
        for ((_, value), mask) in self.values.iter().zip(&masks) {
            for form in shown_forms(value) {
                if !forms.iter().any(|(f, _)| *f == form) {
                    forms.push((form, mask));
                }
            }
        }
        // Longest first, so that a secret containing another is masked whole, not around it.
        forms.sort_by_key(|(form, _)| std::cmp::Reverse(form.len()));
        // One scan, left to right: a mask written is never searched again, so a value that
        // happens to occur in a variable's name cannot garble the mask standing for another.
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        'scan: while let Some(c) = rest.chars().next() {
            // A mask from an earlier pass stays as it is: redacting twice changes nothing.
            for mask in &masks {
                if rest.starts_with(mask.as_str()) {
                    out.push_str(mask);
                    rest = &rest[mask.len()..];
                    continue 'scan;
                }
            }
            for (form, mask) in &forms {
                if rest.starts_with(form.as_str()) {
                    out.push_str(mask);
                    rest = &rest[form.len()..];
                    continue 'scan;
                }
            }
            out.push(c);
            rest = &rest[c.len_utf8()..];
        }
        out
    }
}

/// Every form `value` may take in what sluice writes: as written; as Rust's `{:?}` quotes it (an
/// error message often does) and as `char::escape_debug` does, which differ in `'`; with control
/// characters shown as spaces (as guest text is shown); and each of those as JSON escapes it,
/// for JSON log events, the JSON summary and `last-run.json`, which are masked after encoding.
/// A value of several lines (a PEM key) is also found line by line, in each of those forms:
/// guest output is shown a line at a time, or its lines joined with ` / `, so the value whole
/// may never appear. (A line shorter than 4 bytes is not masked alone: it would mask too much.)
pub(crate) fn shown_forms(value: &str) -> Vec<String> {
    let mut forms = whole_forms(value);
    if value.contains(['\n', '\r']) {
        for line in value.lines().map(str::trim).filter(|l| l.len() >= 4) {
            for form in whole_forms(line) {
                if !forms.contains(&form) {
                    forms.push(form);
                }
            }
        }
    }
    forms
}

/// The forms of [`shown_forms`] for `value` as one piece.
fn whole_forms(value: &str) -> Vec<String> {
    let debug = format!("{value:?}");
    let spaced: String = value
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let plain = [
        value.to_owned(),
        debug[1..debug.len() - 1].to_owned(),
        value.escape_debug().to_string(),
        spaced,
    ];
    let mut forms: Vec<String> = Vec::with_capacity(plain.len() * 2);
    for form in plain {
        let json = serde_json::to_string(&form).unwrap_or_default();
        for form in [json[1..json.len() - 1].to_owned(), form] {
            if !form.is_empty() && !forms.contains(&form) {
                forms.push(form);
            }
        }
    }
    forms
}

/// Reads, interpolates and deserializes a pipeline file.
pub fn load(file: &Path) -> Result<LoadedConfig, ConfigError> {
    let text =
        std::fs::read_to_string(file).map_err(|e| ConfigError::Read(file.to_path_buf(), e))?;
    load_str(&text, file, &|name| std::env::var(name).ok())
}

/// [`load`] for `sluice transform test --pipeline`, which uses only the file's `source` and
/// `transforms`: its `kafka`, `sink` and `dead_letter` sections are not read at all (stand-ins
/// take their place), so their variables need not be set nor their values be right. Someone
/// testing a production pipeline's chain needs no warehouse credentials. The one exception is
/// `kafka.topic`, which transforms see as their records' topic: it is kept when it is a string
/// whose variables are set and that names a topic Kafka could hold, and is `test` otherwise.
pub fn load_for_transforms(file: &Path) -> Result<LoadedConfig, ConfigError> {
    let text =
        std::fs::read_to_string(file).map_err(|e| ConfigError::Read(file.to_path_buf(), e))?;
    let env = |name: &str| std::env::var(name).ok();
    load_text(&text, file, &env, Scope::Transforms)
}

/// [`load`] for `sluice dead-letters`, which uses only the file's `kafka` and `dead_letter`
/// sections: the others are not read at all (stand-ins take their place), so that whoever reads
/// the letters needs neither the warehouse's credentials nor a transform's params (a `mask`
/// salt). Nor are those params then masked in what it prints, where they would garble the
/// payloads that hold the same text.
pub fn load_for_letters(file: &Path) -> Result<LoadedConfig, ConfigError> {
    let text =
        std::fs::read_to_string(file).map_err(|e| ConfigError::Read(file.to_path_buf(), e))?;
    let env = |name: &str| std::env::var(name).ok();
    load_text(&text, file, &env, Scope::Letters)
}

/// Which sections of a pipeline file a command reads; stand-ins take the others' place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scope {
    All,
    /// [`load_for_transforms`].
    Transforms,
    /// [`load_for_letters`].
    Letters,
}

/// A sink section that is never used.
fn unused_sink() -> serde_json::Value {
    serde_json::json!({
        "type": "snowflake", "database": "UNUSED", "schema": "UNUSED", "table": "UNUSED"
    })
}

/// [`load`] from text, with an injectable environment (tests).
pub fn load_str(
    text: &str,
    file: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<LoadedConfig, ConfigError> {
    load_text(text, file, env, Scope::All)
}

/// [`load_str`], reading only the sections of `scope`.
fn load_text(
    text: &str,
    file: &Path,
    env: &dyn Fn(&str) -> Option<String>,
    scope: Scope,
) -> Result<LoadedConfig, ConfigError> {
    let invalid = |issues| ConfigError::Invalid {
        file: file.to_path_buf(),
        issues,
    };
    // A byte-order mark, as some Windows editors write: not JSON, but no mistake of the file's.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut tree: serde_json::Value = serde_json::from_str(text).map_err(|e| {
        invalid(vec![ConfigIssue {
            path: String::new(),
            position: Some((e.line(), e.column())),
            message: format!("invalid JSON: {}", strip_position(&e.to_string())),
        }])
    })?;
    // serde's own words for this ("invalid length 1, expected struct PipelineConfig with 8
    // elements", for `[]`) name its internals, not the file's mistake.
    if !tree.is_object() {
        let kind = match &tree {
            serde_json::Value::Array(_) => "an array",
            serde_json::Value::String(_) => "a string",
            serde_json::Value::Number(_) => "a number",
            serde_json::Value::Bool(_) => "a boolean",
            _ => "null",
        };
        return Err(invalid(vec![ConfigIssue {
            path: String::new(),
            position: Some(line_column(text, text.len() - text.trim_start().len())),
            message: format!(
                "a pipeline file is one JSON object ({{ \"version\": 1, ... }}), not {kind}"
            ),
        }]));
    }
    // serde_json keeps the last of two equal keys, silently: a second `"transforms": []` would
    // drop the whole chain (a `mask` with it). The text is valid JSON here, so the walk is safe.
    let duplicates = duplicate_keys(text);
    if !duplicates.is_empty() {
        return Err(invalid(duplicates));
    }
    if scope == Scope::Letters
        && let Some(sections) = tree.as_object_mut()
    {
        sections.insert(
            "source".into(),
            serde_json::json!({ "type": "csv", "path": "UNUSED" }),
        );
        sections.insert("transforms".into(), serde_json::json!([]));
        sections.insert("sink".into(), unused_sink());
        // Its variables need not be set either: the default stands in.
        sections.remove("name");
    }
    if scope == Scope::Transforms
        && let Some(sections) = tree.as_object_mut()
    {
        let topic = sections
            .get("kafka")
            .and_then(|k| k.get("topic"))
            .filter(|t| {
                let topic = t.as_str().map(|t| interpolate(t, env));
                topic.is_some_and(|t| {
                    t.is_ok_and(|t| crate::validate::topic_name_problem(&t).is_none())
                })
            })
            .cloned()
            .unwrap_or_else(|| crate::transform::cli::TEST_TOPIC.into());
        // The two properties that decide what a record is: the largest message (a larger row is
        // a bad one) and the partition its key sends it to (`transform test --partitions`).
        let kept: serde_json::Map<_, _> = (sections.get("kafka"))
            .and_then(|k| k.get("properties")?.as_object())
            .into_iter()
            .flatten()
            // Only when their variables are set, as the topic: this scope needs none.
            .filter(|(k, v)| {
                ["message.max.bytes", "partitioner"].contains(&k.as_str())
                    && v.as_str().is_some_and(|v| interpolate(v, env).is_ok())
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        sections.insert(
            "kafka".into(),
            serde_json::json!({ "topic": topic, "properties": kept }),
        );
        sections.insert("sink".into(), unused_sink());
        sections.remove("dead_letter");
    }
    let mut issues = Vec::new();
    let mut from_env = Vec::new();
    let written = tree.clone();
    interpolate_tree(&mut tree, String::new(), env, &mut issues, &mut from_env);
    // Noted before any message is made: serde quotes the values it rejects.
    let mut secrets = EnvSecrets::new(&from_env);
    if !issues.is_empty() {
        for i in &mut issues {
            i.position = locate(text, &i.path);
            i.message = secrets.redact(&i.message);
        }
        return Err(invalid(issues));
    }
    // Before serde, whose messages quote a value of the wrong type (a password written as a
    // number).
    let literal = written_secrets(&written);
    if !literal.is_empty() {
        return Err(invalid(
            (literal.into_iter())
                .map(|(path, var)| ConfigIssue {
                    position: locate(text, &path),
                    message: format!(
                        "is a credential written into the file: give it from the environment, as \
                         \"${{{var}}}\""
                    ),
                    path,
                })
                .collect(),
        ));
    }
    // serde stops at the first mistake. To report more of them at once, each mistake's key is
    // taken out and the rest read again, as long as that is safe: an object's key, not an
    // array's item (which would renumber the paths after it), at most 20 times. A required key
    // that is missing (or was taken out, which is no new mistake) gets a stand-in value of each
    // JSON type in turn until one reads, so that what comes after it is read too; where none
    // does (a missing section: `[]` is refused by length, not by type), the report ends there.
    let mut found: Vec<ConfigIssue> = Vec::new();
    let mut taken_out: Vec<String> = Vec::new();
    let stand_ins = [
        serde_json::json!(""),
        serde_json::json!(0),
        serde_json::json!(false),
        serde_json::json!([]),
        serde_json::json!({}),
    ];
    // The key holding a stand-in, and the index of the next one to try there.
    let mut standing_in: Option<(String, usize)> = None;
    // Paths where a lone variable was read as a number or a flag.
    let mut scalars: Vec<String> = Vec::new();
    let mut config: PipelineConfig = loop {
        let e = match serde_path_to_error::deserialize(&tree) {
            Ok(config) if found.is_empty() => {
                // A count or a flag is no credential, and masking it would garble every equal
                // number in sluice's output (and break its JSON). Only once it is read: until
                // then a value refused (out of range) is quoted, and still a secret.
                from_env.retain(|s| !scalars.contains(&s.path));
                secrets = EnvSecrets::new(&from_env);
                break config;
            }
            Ok(_) => return Err(invalid(found)),
            Err(e) => e,
        };
        let message = e.inner().to_string();
        let path = precise_path(&tree, render_path(e.path()), &message);
        if let Some((at, next)) = &mut standing_in
            && (path == *at
                || path.starts_with(&format!("{at}."))
                || path.starts_with(&format!("{at}[")))
        {
            // The stand-in's type is wrong: the next one, if the mistake is only its type.
            match (message.starts_with("invalid type"), stand_ins.get(*next)) {
                (true, Some(value)) => {
                    if let Some(node) = value_at_mut(&mut tree, at) {
                        *node = value.clone();
                    }
                    *next += 1;
                    continue;
                }
                _ => return Err(invalid(found)),
            }
        }
        if let Some(key) = message
            .strip_prefix("missing field `")
            .and_then(|rest| rest.strip_suffix('`'))
        {
            let at = join_key(&path, key);
            let reported = taken_out.contains(&at);
            if !reported {
                found.push(ConfigIssue {
                    position: locate(text, &path),
                    path: path.clone(),
                    message: secrets.redact(&message),
                });
            }
            let object = value_at_mut(&mut tree, &path).and_then(serde_json::Value::as_object_mut);
            match object {
                Some(object) if found.len() < 20 && !object.contains_key(key) => {
                    object.insert(key.to_owned(), stand_ins[0].clone());
                    standing_in = Some((at, 1));
                    continue;
                }
                _ => return Err(invalid(found)),
            }
        }
        // JSON text has no way to put a variable in a number's place: a `${VAR}` (or
        // `${VAR:-default}`) standing alone where a number or a flag goes
        // (`"rows_per_sec": "${RATE}"`) is read as one. Each pass turns one string into a number
        // for good, so this ends.
        let lone = value_at(&written, &path)
            .and_then(serde_json::Value::as_str)
            .filter(|w| is_lone_variable(w));
        if message.starts_with("invalid type: string")
            && lone.is_some()
            && let Some(node) = value_at_mut(&mut tree, &path)
            && let Some(scalar) = node.as_str().and_then(as_scalar)
        {
            *node = scalar;
            scalars.push(path);
            continue;
        }
        let mut shown = plain_types(&message);
        if let Some(written) = lone {
            shown.push_str(&format!(" (from {written:?})"));
        }
        found.push(ConfigIssue {
            position: locate(text, &path),
            path: path.clone(),
            message: secrets.redact(&shown),
        });
        if found.len() >= 20 || taken_out.contains(&path) || !take_out(&mut tree, &path) {
            return Err(invalid(found));
        }
        taken_out.push(path);
    };
    // A transform's params may carry secrets (a salt, a key); its messages must not show them.
    for (i, t) in config.transforms.iter_mut().enumerate() {
        let prefix = format!("transforms[{i}].with.");
        t.secrets = from_env
            .iter()
            .filter(|s| s.path.starts_with(&prefix) && s.is_secret())
            .map(|s| s.value.clone())
            .collect();
    }
    let base_dir = file.parent().map(Path::to_path_buf).unwrap_or_default();
    let base_dir = if base_dir.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        base_dir
    };
    let loaded = LoadedConfig {
        config,
        file: file.to_path_buf(),
        base_dir,
        text: text.to_owned(),
        secrets,
    };
    if loaded.config.version != VERSION {
        return Err(loaded.invalid(vec![loaded.issue(
            "version",
            format!(
                "unsupported version {}; this sluice reads version {VERSION}",
                loaded.config.version
            ),
        )]));
    }
    Ok(loaded)
}

fn strip_position(msg: &str) -> String {
    match msg.rfind(" at line ") {
        Some(i) => msg[..i].to_owned(),
        None => msg.to_owned(),
    }
}

fn unknown_variant_name(message: &str) -> Option<String> {
    let rest = message.strip_prefix("unknown variant `")?;
    Some(rest[..rest.find('`')?].to_owned())
}

/// The value at a JSON `path` (`a.b[2].c`) of `tree`, if there is one.
fn value_at<'a>(tree: &'a serde_json::Value, path: &str) -> Option<&'a serde_json::Value> {
    parse_path(path)
        .into_iter()
        .try_fold(tree, |node, seg| match seg {
            Seg::Key(k) => node.get(&k),
            Seg::Index(i) => node.get(i),
        })
}

/// Removes the object key at `path` from `tree`; whether there was one (an array's item is not
/// removed).
fn take_out(tree: &mut serde_json::Value, path: &str) -> bool {
    let mut segs = parse_path(path);
    let Some(Seg::Key(key)) = segs.pop() else {
        return false;
    };
    segs.into_iter()
        .try_fold(tree, |node, seg| match seg {
            Seg::Key(k) => node.get_mut(&k),
            Seg::Index(i) => node.get_mut(i),
        })
        .and_then(serde_json::Value::as_object_mut)
        .is_some_and(|object| object.shift_remove(&key).is_some())
}

/// [`value_at`], to change it.
fn value_at_mut<'a>(
    tree: &'a mut serde_json::Value,
    path: &str,
) -> Option<&'a mut serde_json::Value> {
    parse_path(path)
        .into_iter()
        .try_fold(tree, |node, seg| match seg {
            Seg::Key(k) => node.get_mut(&k),
            Seg::Index(i) => node.get_mut(i),
        })
}

/// Whether `written` is one `${...}` reference and nothing else.
fn is_lone_variable(written: &str) -> bool {
    written
        .strip_prefix("${")
        .is_some_and(|rest| closing_brace(rest).is_some_and(|i| i + 1 == rest.len()))
}

/// `text` as a JSON number or flag, read the way a person writes one: `03` is 3, `1e2` is 100
/// (a whole number, so that it fits a count), surrounding spaces do not count.
fn as_scalar(text: &str) -> Option<serde_json::Value> {
    let text = text.trim();
    if let Ok(flag) = text.parse::<bool>() {
        return Some(flag.into());
    }
    if let Ok(n) = text.parse::<i64>() {
        return Some(n.into());
    }
    if let Ok(n) = text.parse::<u64>() {
        return Some(n.into());
    }
    let f = text.parse::<f64>().ok().filter(|f| f.is_finite())?;
    // Beyond 2^53 a float no longer holds every whole number: left a float, and refused as one.
    if f.fract() == 0.0 && f.abs() < 9.0e15 {
        return Some((f as i64).into());
    }
    serde_json::Number::from_f64(f).map(serde_json::Value::Number)
}

/// serde's message with the Rust type it expected said in words (`expected usize` means nothing
/// to someone writing JSON).
fn plain_types(message: &str) -> String {
    // With the bounds where a JSON number could pass them: "a whole number" alone would be
    // untrue of 3000000000 for an i32.
    const PLAIN: [(&str, &str); 10] = [
        ("f64", "a number"),
        ("f32", "a number"),
        ("usize", "a whole number, 0 or more"),
        ("u64", "a whole number, 0 or more"),
        ("u32", "a whole number from 0 to 4294967295"),
        ("u16", "a whole number from 0 to 65535"),
        ("u8", "a whole number from 0 to 255"),
        ("i64", "a whole number"),
        ("i32", "a whole number from -2147483648 to 2147483647"),
        ("a boolean", "true or false"),
    ];
    for (rust, plain) in PLAIN {
        if let Some(head) = message.strip_suffix(&format!("expected {rust}")) {
            return format!("{head}expected {plain}");
        }
    }
    message.to_owned()
}

/// The path of the key a deserialization error is about, given the `path` serde_path_to_error
/// found and the error's `message`.
///
/// `source`, `sink` and `source.pacing` are internally tagged (`"type"`, `"mode"`): serde buffers
/// their content before it knows the variant, so the path it reports stops at the tagged object.
/// This deserializes that object again, without its tag, as the tag's variant alone, and takes
/// the path of the same error from there (again for `pacing` inside `source`). A tag that names
/// no variant is the error itself, at `<object>.type`. Where the second attempt does not fail
/// the same way, the object is the most precise place known, and is kept.
fn precise_path(tree: &serde_json::Value, path: String, message: &str) -> String {
    let tag = match path.as_str() {
        "source" | "sink" => "type",
        "source.pacing" => "mode",
        _ => return path,
    };
    let Some(serde_json::Value::Object(object)) = value_at(tree, &path) else {
        return path;
    };
    // Without a tag, serde says `missing field` about the object itself.
    let Some(variant) = object.get(tag) else {
        return path;
    };
    // Filtered, not removed: the fields keep their order, so the first error is the same one.
    let content = serde_json::Value::Object(
        object
            .iter()
            .filter(|(k, _)| k.as_str() != tag)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    );
    let again = match (path.as_str(), variant.as_str()) {
        ("source", Some("csv")) => first_error::<CsvSourceConfig>(&content),
        ("sink", Some("snowflake")) => first_error::<SnowflakeSinkConfig>(&content),
        ("source.pacing", Some("none")) => first_error::<pacing_fields::None>(&content),
        ("source.pacing", Some("fixed")) => first_error::<pacing_fields::Fixed>(&content),
        ("source.pacing", Some("rate")) => first_error::<pacing_fields::Rate>(&content),
        ("source.pacing", Some("event_time")) => first_error::<pacing_fields::EventTime>(&content),
        // serde reads the tag as soon as it meets it and rejects one that is not a string or
        // names no variant; a variant added to the enums but not above falls through to here
        // with some other error, about its content, and stays at the object.
        (_, tag_value) => {
            let tag_rejected = match tag_value {
                Some(name) => unknown_variant_name(message).as_deref() == Some(name),
                None => true,
            };
            return if tag_rejected {
                join_key(&path, tag)
            } else {
                path
            };
        }
    };
    match again {
        Some((inner, again_message)) if again_message == message && !inner.is_empty() => {
            let joined = if inner.starts_with('[') {
                format!("{path}{inner}")
            } else {
                join_key(&path, &inner)
            };
            precise_path(tree, joined, message)
        }
        _ => path,
    }
}

/// The path and message of the error deserializing `value` as `T` gives, if it fails.
fn first_error<T: DeserializeOwned>(value: &serde_json::Value) -> Option<(String, String)> {
    serde_path_to_error::deserialize::<_, T>(value)
        .err()
        .map(|e| (render_path(e.path()), e.inner().to_string()))
}

/// The fields of each [`Pacing`](crate::source::config::Pacing) variant as a type of its own.
/// Its variants are struct variants, which cannot be deserialized apart from the enum, and only
/// a type of its own lets serde_path_to_error see inside `pacing`. Used only to find where an
/// error is (see [`precise_path`]), never for values; a test keeps them in step with `Pacing`.
mod pacing_fields {
    #![allow(dead_code, reason = "deserialized only to find where an error is")]

    use schemars::JsonSchema;
    use serde::Deserialize;

    /// `"mode": "none"`.
    #[derive(Deserialize, JsonSchema)]
    #[serde(deny_unknown_fields)]
    pub struct None {}

    /// `"mode": "fixed"`.
    #[derive(Deserialize, JsonSchema)]
    #[serde(deny_unknown_fields)]
    pub struct Fixed {
        delay_ms: u64,
    }

    /// `"mode": "rate"`.
    #[derive(Deserialize, JsonSchema)]
    #[serde(deny_unknown_fields)]
    pub struct Rate {
        rows_per_sec: f64,
    }

    /// `"mode": "event_time"`.
    #[derive(Deserialize, JsonSchema)]
    #[serde(deny_unknown_fields)]
    pub struct EventTime {
        column: String,
        #[serde(default)]
        speed: f64,
        #[serde(default)]
        max_gap_ms: u64,
    }
}

fn join_key(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// Renders a serde_path_to_error path as `a.b[1].c`.
fn render_path(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut out = String::new();
    for seg in path.iter() {
        match seg {
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Map { key } | Segment::Enum { variant: key } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            Segment::Unknown => {}
        }
    }
    out
}

/// Replaces `${VAR}` and `${VAR:-default}` in every string of the tree. A reference to an unset
/// variable without a default is an issue at that string's path. `$${` escapes a literal `${`.
/// Each value taken from the environment is added to `from_env`.
fn interpolate_tree(
    v: &mut serde_json::Value,
    path: String,
    env: &dyn Fn(&str) -> Option<String>,
    issues: &mut Vec<ConfigIssue>,
    from_env: &mut Vec<Substitution>,
) {
    match v {
        serde_json::Value::String(s) => match interpolate_noting(s, env, &mut |var, value| {
            from_env.push(Substitution {
                path: path.clone(),
                var: var.to_owned(),
                value: value.to_owned(),
                lone: is_lone_variable(s),
            })
        }) {
            Ok(new) => *s = new,
            Err(message) => issues.push(ConfigIssue {
                path,
                position: None,
                message,
            }),
        },
        serde_json::Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                interpolate_tree(item, format!("{path}[{i}]"), env, issues, from_env);
            }
        }
        serde_json::Value::Object(map) => {
            for (k, item) in map.iter_mut() {
                interpolate_tree(item, join_key(&path, k), env, issues, from_env);
            }
        }
        _ => {}
    }
}

/// Interpolates one string (see `interpolate_tree`).
pub fn interpolate(s: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    interpolate_noting(s, env, &mut |_, _| {})
}

/// [`interpolate`], calling `noted` with each variable's name and the value taken from it.
fn interpolate_noting(
    s: &str,
    env: &dyn Fn(&str) -> Option<String>,
    noted: &mut dyn FnMut(&str, &str),
) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        if let Some(after) = rest.strip_prefix("$${") {
            out.push_str("${");
            rest = after;
        } else if let Some(after) = rest.strip_prefix("${") {
            let end = closing_brace(after).ok_or_else(|| format!("unterminated `${{` in {s:?}"))?;
            let expr = &after[..end];
            let (name, default) = match expr.find(":-") {
                Some(j) => (&expr[..j], Some(&expr[j + 2..])),
                None => (expr, None),
            };
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!("invalid variable name {name:?} in `${{{expr}}}`"));
            }
            match (env(name), default) {
                // A default may hold variables of its own (`${A:-${B:-b}}`).
                (Some(v), Some(d)) if v.is_empty() => {
                    out.push_str(&interpolate_noting(d, env, noted)?);
                }
                (Some(v), _) => {
                    noted(name, &v);
                    out.push_str(&v);
                }
                (None, Some(d)) => out.push_str(&interpolate_noting(d, env, noted)?),
                (None, None) => {
                    return Err(format!(
                        "environment variable {name} is not set (use ${{{name}:-default}} for a default)"
                    ));
                }
            }
            rest = &after[end + 1..];
        } else {
            out.push('$');
            rest = &rest[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// Where the `}` is that closes a `${` whose text (after the `${`) is `after`: past the `${...}`
/// (or `$${...}`) nested in its default.
fn closing_brace(after: &str) -> Option<usize> {
    let b = after.as_bytes();
    let (mut depth, mut i) = (0usize, 0);
    while i < b.len() {
        if b[i..].starts_with(b"${") {
            depth += 1;
            i += 2;
            continue;
        }
        if b[i] == b'}' {
            if depth == 0 {
                return Some(i);
            }
            depth -= 1;
        }
        i += 1;
    }
    None
}

/// Finds the 1-based line and column of the value at a JSON `path` (`a.b[2].c`) in `text`, or of
/// the deepest enclosing value that exists. `None` if the text is not JSON.
pub fn locate(text: &str, path: &str) -> Option<(usize, usize)> {
    let segments = parse_path(path);
    let mut loc = Locator {
        b: text.as_bytes(),
        i: 0,
    };
    let offset = loc.find(&segments)?;
    Some(line_column(text, offset))
}

/// The 1-based line and column of byte `offset` in `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text.as_bytes()[..offset];
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let col = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(offset, |n| offset - n - 1)
        + 1;
    (line, col)
}

/// Every key that appears twice in one object of `text` (valid JSON), as an issue at its JSON
/// path, placed at the second occurrence and naming the line of the first.
pub(crate) fn duplicate_keys(text: &str) -> Vec<ConfigIssue> {
    let mut found = Vec::new();
    let mut walker = Locator {
        b: text.as_bytes(),
        i: 0,
    };
    // `None` only for text that is not JSON, which the parser has already rejected.
    let _ = walker.duplicates(String::new(), &mut found);
    found
        .into_iter()
        .map(|(path, key, first, second)| {
            let (line, column) = line_column(text, first);
            ConfigIssue {
                position: Some(line_column(text, second)),
                message: format!(
                    "duplicate key `{key}` (first at line {line}, column {column}); \
                     only one may be given"
                ),
                path,
            }
        })
        .collect()
}

enum Seg {
    Key(String),
    Index(usize),
}

fn parse_path(path: &str) -> Vec<Seg> {
    let mut segs = Vec::new();
    for part in path.split('.').filter(|p| !p.is_empty()) {
        let (key, mut idx) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if !key.is_empty() {
            segs.push(Seg::Key(key.to_owned()));
        }
        while let Some(rest) = idx.strip_prefix('[') {
            let Some(end) = rest.find(']') else { break };
            if let Ok(n) = rest[..end].parse() {
                segs.push(Seg::Index(n));
            }
            idx = &rest[end + 1..];
        }
    }
    segs
}

/// A minimal JSON walker: only as much as is needed to find where a path's value starts.
struct Locator<'a> {
    b: &'a [u8],
    i: usize,
}

impl Locator<'_> {
    fn ws(&mut self) {
        while self.i < self.b.len() && self.b[self.i].is_ascii_whitespace() {
            self.i += 1;
        }
    }

    /// Returns the offset of the value at `segs`, starting at the current position; for a key that
    /// is missing, the offset of the enclosing value; for the last key, the offset of the key itself
    /// (so unknown-field errors point at the key).
    fn find(&mut self, segs: &[Seg]) -> Option<usize> {
        self.ws();
        let start = self.i;
        let Some((seg, rest)) = segs.split_first() else {
            return Some(start);
        };
        match (seg, self.b.get(self.i)?) {
            (Seg::Key(want), b'{') => {
                self.i += 1;
                // The key matching the most segments: (segments after `want`, where the key is,
                // where its value is).
                let mut best: Option<(usize, usize, usize)> = None;
                loop {
                    self.ws();
                    if self.b.get(self.i)? == &b'}' {
                        let Some((taken, key_at, value_at)) = best else {
                            return Some(start);
                        };
                        let rest = &rest[taken..];
                        if rest.is_empty() {
                            return Some(key_at);
                        }
                        self.i = value_at;
                        return self.find(rest).or(Some(key_at));
                    }
                    let key_at = self.i;
                    let key = self.string()?;
                    self.ws();
                    self.i += 1; // ':'
                    // A key holding dots (`kafka.properties.message.max.bytes`) is that many
                    // segments of the path.
                    let mut joined = want.clone();
                    let mut taken = 0;
                    let matched = loop {
                        if key == joined {
                            break Some(taken);
                        }
                        match rest.get(taken) {
                            Some(Seg::Key(next)) if key.len() > joined.len() => {
                                joined = format!("{joined}.{next}");
                                taken += 1;
                            }
                            _ => break None,
                        }
                    };
                    if let Some(taken) = matched
                        && best.is_none_or(|(most, _, _)| taken > most)
                    {
                        best = Some((taken, key_at, self.i));
                    }
                    self.skip()?;
                    self.ws();
                    if self.b.get(self.i)? == &b',' {
                        self.i += 1;
                    }
                }
            }
            (Seg::Index(want), b'[') => {
                self.i += 1;
                let mut n = 0;
                loop {
                    self.ws();
                    if self.b.get(self.i)? == &b']' {
                        return Some(start);
                    }
                    if n == *want {
                        return self.find(rest);
                    }
                    self.skip()?;
                    self.ws();
                    if self.b.get(self.i)? == &b',' {
                        self.i += 1;
                    }
                    n += 1;
                }
            }
            _ => Some(start),
        }
    }

    /// Walks the value at the current position and adds every key given twice in one object as
    /// (path, key, offset of the first, offset of the second).
    fn duplicates(
        &mut self,
        path: String,
        found: &mut Vec<(String, String, usize, usize)>,
    ) -> Option<()> {
        self.ws();
        match *self.b.get(self.i)? {
            b'{' => {
                self.i += 1;
                let mut seen = std::collections::HashMap::new();
                loop {
                    self.ws();
                    if *self.b.get(self.i)? == b'}' {
                        self.i += 1;
                        return Some(());
                    }
                    let key_at = self.i;
                    let key = self.string()?;
                    let at = join_key(&path, &key);
                    match seen.get(&key) {
                        Some(&first) => found.push((at.clone(), key, first, key_at)),
                        None => {
                            seen.insert(key, key_at);
                        }
                    }
                    self.ws();
                    self.i += 1; // ':'
                    self.duplicates(at, found)?;
                    self.ws();
                    if *self.b.get(self.i)? == b',' {
                        self.i += 1;
                    }
                }
            }
            b'[' => {
                self.i += 1;
                let mut n = 0;
                loop {
                    self.ws();
                    if *self.b.get(self.i)? == b']' {
                        self.i += 1;
                        return Some(());
                    }
                    self.duplicates(format!("{path}[{n}]"), found)?;
                    self.ws();
                    if *self.b.get(self.i)? == b',' {
                        self.i += 1;
                    }
                    n += 1;
                }
            }
            _ => self.skip(),
        }
    }

    fn string(&mut self) -> Option<String> {
        if self.b.get(self.i)? != &b'"' {
            return None;
        }
        let start = self.i;
        self.i += 1;
        while *self.b.get(self.i)? != b'"' {
            if self.b[self.i] == b'\\' {
                self.i += 1;
            }
            self.i += 1;
        }
        self.i += 1;
        serde_json::from_slice(&self.b[start..self.i]).ok()
    }

    fn skip(&mut self) -> Option<()> {
        self.ws();
        match *self.b.get(self.i)? {
            b'"' => {
                self.string()?;
            }
            open @ (b'{' | b'[') => {
                let close = if open == b'{' { b'}' } else { b']' };
                self.i += 1;
                loop {
                    self.ws();
                    if *self.b.get(self.i)? == close {
                        self.i += 1;
                        break;
                    }
                    if open == b'{' {
                        self.string()?;
                        self.ws();
                        self.i += 1;
                    }
                    self.skip()?;
                    self.ws();
                    if *self.b.get(self.i)? == b',' {
                        self.i += 1;
                    }
                }
            }
            _ => {
                while self.i < self.b.len() && !matches!(self.b[self.i], b',' | b'}' | b']') {
                    self.i += 1;
                }
            }
        }
        Some(())
    }
}

/// The JSON Schema of pipeline.json, generated from these types (`sluice schema`).
pub fn json_schema() -> serde_json::Value {
    serde_json::to_value(schemars::schema_for!(PipelineConfig)).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file holding JSON that is not an object says so, not what serde expected of a struct.
    #[test]
    fn a_file_that_is_not_one_object_says_so() {
        for (text, kind) in [("\n  []", "an array"), ("3", "a number"), ("null", "null")] {
            let err = load_str(text, Path::new("p.json"), &|_| None).unwrap_err();
            let ConfigError::Invalid { issues, .. } = err else {
                panic!("{err}")
            };
            let want = format!(
                "a pipeline file is one JSON object ({{ \"version\": 1, ... }}), not {kind}"
            );
            assert_eq!(issues[0].message, want);
            let at = if kind == "an array" { (2, 3) } else { (1, 1) };
            assert_eq!(issues[0].position, Some(at));
        }
    }

    #[test]
    fn interpolation() {
        let env = |k: &str| match k {
            "A" => Some("x".to_owned()),
            "EMPTY" => Some(String::new()),
            _ => None,
        };
        assert_eq!(interpolate("a${A}b", &env).unwrap(), "axb");
        assert_eq!(interpolate("${NOPE:-d}", &env).unwrap(), "d");
        assert_eq!(interpolate("${EMPTY:-d}", &env).unwrap(), "d");
        assert_eq!(interpolate("${EMPTY}", &env).unwrap(), "");
        assert_eq!(interpolate("$${A} $5", &env).unwrap(), "${A} $5");
        assert!(interpolate("${NOPE}", &env).unwrap_err().contains("NOPE"));
        // Nested defaults: taken only when needed, and an unset variable without one is an error.
        assert_eq!(
            interpolate("${NOPE:-${A}}-${A:-${NOPE}}", &env).unwrap(),
            "x-x"
        );
        assert_eq!(
            interpolate("${NOPE:-${EMPTY:-${NOPE2:-d}}}!", &env).unwrap(),
            "d!"
        );
        assert_eq!(interpolate("${NOPE:-$${A}}", &env).unwrap(), "${A}");
        let err = interpolate("${NOPE:-${NOPE2}}", &env).unwrap_err();
        assert!(err.contains("NOPE2 is not set"), "{err}");
        assert!(
            interpolate("${NOPE:-${A}", &env)
                .unwrap_err()
                .contains("unterminated")
        );
    }

    /// `with` takes a bare number or flag as its JSON text; anything else that is not a string is
    /// an error at its key.
    #[test]
    fn a_param_may_be_written_as_a_number_or_a_flag() {
        let text = |with: &str| {
            format!(
                r#"{{ "version": 1, "name": "p",
                  "source": {{ "type": "csv", "path": "d.csv" }}, "kafka": {{ "topic": "t" }},
                  "transforms": [ {{ "uses": "m.wasm", "with": {with} }} ],
                  "sink": {{ "type": "snowflake", "database": "D", "schema": "S", "table": "T" }} }}"#
            )
        };
        let no_env = |_: &str| None;
        let with = r#"{ "window": 100, "min": -3, "ratio": 2.5, "one": 1.0, "strict": true,
                        "field": "id" }"#;
        let loaded = load_str(&text(with), Path::new("p.json"), &no_env).unwrap();
        let params: Vec<(&str, &str)> = (loaded.config.transforms[0].with.iter())
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            params,
            [
                ("field", "id"),
                ("min", "-3"),
                ("one", "1.0"),
                ("ratio", "2.5"),
                ("strict", "true"),
                ("window", "100"),
            ]
        );
        let big = r#"{ "x": 123456789012345678901234567890 }"#;
        let err = load_str(&text(big), Path::new("p.json"), &no_env).unwrap_err();
        assert!(
            err.to_string().contains("transforms[0].with.x")
                && err.to_string().contains("too big to pass exactly"),
            "{err}"
        );
        for bad in [r#"{ "x": null }"#, r#"{ "x": [1] }"#] {
            let err = load_str(&text(bad), Path::new("p.json"), &no_env).unwrap_err();
            let err = err.to_string();
            assert!(
                err.contains("transforms[0].with.x")
                    && err.contains("expected a string, a number or true/false"),
                "{err}"
            );
        }
    }

    #[test]
    fn debug_output_shows_no_substituted_secret() {
        let text = r#"{ "version": 1, "name": "p",
          "source": { "type": "csv", "path": "d.csv" },
          "kafka": { "topic": "t", "properties": { "sasl.password": "${PW}" } },
          "transforms": [ { "uses": "m.wasm", "with": { "salt": "${PW}" } } ],
          "sink": { "type": "snowflake", "database": "D", "schema": "S", "table": "T",
                    "password": "${PW}" } }"#;
        let env = |k: &str| (k == "PW").then(|| "TopSecret-123".to_owned());
        let loaded = load_str(text, Path::new("p.json"), &env).unwrap();
        let shown = format!("{loaded:?}");
        assert!(
            shown.contains("sasl.password") && shown.contains("salt"),
            "{shown}"
        );
        assert!(!shown.contains("TopSecret"), "{shown}");
        // The transform's params from the environment are known, to keep them out of messages.
        let t = &loaded.config.transforms[0];
        assert_eq!(t.secrets, ["TopSecret-123"]);
        assert_eq!(
            t.redact("bad salt \"TopSecret-123\"".to_owned()),
            "bad salt \"***\""
        );
        let mut t = t.clone();
        t.secrets = vec!["pass".into(), "my\"pass\"word".into()];
        assert_eq!(
            t.redact(format!("{:?} and {:?}", "my\"pass\"word", "pass")),
            "\"***\" and \"***\""
        );
    }

    #[test]
    fn duplicate_keys_are_found_at_any_depth() {
        let text = "{\n  \"a\": [{\"x\": 1, \"y\": {\"z\": [1, {}]}, \"x\": 2}],\n  \"b\": \"{\\\"a\\\"\",\n  \"\\u0061\": 3\n}";
        let found = duplicate_keys(text);
        let shown: Vec<String> = found.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            [
                "a[0].x (line 2, column 39): duplicate key `x` (first at line 2, column 10); \
                 only one may be given",
                "a (line 4, column 3): duplicate key `a` (first at line 2, column 3); \
                 only one may be given",
            ]
        );
        let err = load_str(text, Path::new("p.json"), &|_| None).unwrap_err();
        assert!(err.to_string().contains("duplicate key `x`"), "{err}");
        assert!(duplicate_keys(r#"{"a": {"a": {"a": 1}}, "b": [{"a": 1}, {"a": 2}]}"#).is_empty());
    }

    /// A valid pipeline with `source`, `sink` and `kafka` fields spliced in.
    fn pipeline(source: &str, kafka: &str, sink: &str) -> String {
        format!(
            "{{\n  \"version\": 1,\n  \"source\": {{\n    \"type\": \"csv\",\n    \"path\": \"d.csv\"{source}\n  }},\n  \"kafka\": {{\n    \"topic\": \"t\"{kafka}\n  }},\n  \"sink\": {{\n    \"type\": \"snowflake\",\n    \"database\": \"D\",\n    \"schema\": \"S\",\n    \"table\": \"T\"{sink}\n  }}\n}}"
        )
    }

    /// The one issue loading `text` gives, with `env` as the environment.
    fn only_issue(text: &str, env: &[(&str, &str)]) -> ConfigIssue {
        let lookup = |name: &str| {
            env.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        };
        match load_str(text, Path::new("p.json"), &lookup) {
            Err(ConfigError::Invalid { mut issues, .. }) if issues.len() == 1 => issues.remove(0),
            other => panic!("expected one issue, got {other:?}"),
        }
    }

    #[test]
    fn errors_inside_tagged_objects_name_the_exact_key() {
        let cases = [
            // The bad variant equals another field's value: the key is the one serde rejected.
            (
                pipeline(
                    "",
                    "",
                    ",\n    \"role\": \"parquet\",\n    \"format\": \"parquet\"",
                ),
                "sink.format",
                "unknown variant `parquet`, expected `csv` or `ndjson`",
            ),
            (
                pipeline(",\n    \"key_colum\": \"id\"", "", ""),
                "source.key_colum",
                "unknown field `key_colum`",
            ),
            (
                pipeline("", "", ",\n    \"batch\": { \"max_latency_ms\": -1 }"),
                "sink.batch.max_latency_ms",
                "invalid value: integer `-1`, expected a whole number, 0 or more",
            ),
            (
                pipeline(
                    ",\n    \"pacing\": { \"mode\": \"rate\", \"rows_per_sec\": \"fast\" }",
                    "",
                    "",
                ),
                "source.pacing.rows_per_sec",
                "invalid type: string \"fast\", expected a number",
            ),
            (
                pipeline("", "", "").replace("\"D\"", "5"),
                "sink.database",
                "invalid type: integer `5`, expected a string",
            ),
            (
                pipeline(
                    ",\n    \"pacing\": { \"mode\": \"event_time\", \"column\": \"at\", \"sped\": 2 }",
                    "",
                    "",
                ),
                "source.pacing.sped",
                "unknown field `sped`",
            ),
            // A tag naming no variant, or not a string, is the error itself.
            (
                pipeline("", "", "").replace("\"snowflake\"", "\"bigquery\""),
                "sink.type",
                "unknown variant `bigquery`, expected `snowflake`",
            ),
            (
                pipeline("", "", "").replace("\"csv\"", "5"),
                "source.type",
                "invalid type: integer `5`, expected variant identifier",
            ),
            (
                pipeline(",\n    \"pacing\": { \"mode\": \"warp\" }", "", ""),
                "source.pacing.mode",
                "unknown variant `warp`",
            ),
            // What belongs to the object itself stays there.
            (
                pipeline("", "", "").replace("\"database\": \"D\",", ""),
                "sink",
                "missing field `database`",
            ),
            (
                pipeline(",\n    \"pacing\": { \"rows_per_sec\": 5 }", "", ""),
                "source.pacing",
                "missing field `mode`",
            ),
        ];
        for (text, path, message) in cases {
            let issue = only_issue(&text, &[]);
            assert_eq!(issue.path, path, "{issue}\n{text}");
            assert!(issue.message.starts_with(message), "{issue}");
            assert_eq!(issue.position, locate(&text, path), "{issue}");
        }
        // The position is the key's own line, not the object's.
        let text = pipeline(
            "",
            "",
            ",\n    \"batch\": {\n      \"max_latency_ms\": -1\n    }",
        );
        let issue = only_issue(&text, &[]);
        assert_eq!(issue.position, Some((16, 7)), "{issue}");
    }

    #[test]
    fn pacing_fields_match_pacing() {
        // Each variant's fields as the schema of `Pacing` has them: names, types, required.
        fn shape(schema: &serde_json::Value) -> (Vec<(String, String)>, Vec<String>) {
            let mut fields: Vec<(String, String)> = schema["properties"]
                .as_object()
                .into_iter()
                .flatten()
                .filter(|(name, _)| *name != "mode")
                .map(|(name, p)| (name.clone(), format!("{} {}", p["type"], p["format"])))
                .collect();
            fields.sort();
            let mut required: Vec<String> = schema["required"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|r| r.as_str())
                .filter(|r| *r != "mode")
                .map(str::to_owned)
                .collect();
            required.sort();
            (fields, required)
        }
        let pacing =
            serde_json::to_value(schemars::schema_for!(crate::source::config::Pacing)).unwrap();
        let variants = pacing["oneOf"].as_array().unwrap();
        let mirrors = [
            ("none", schemars::schema_for!(pacing_fields::None)),
            ("fixed", schemars::schema_for!(pacing_fields::Fixed)),
            ("rate", schemars::schema_for!(pacing_fields::Rate)),
            (
                "event_time",
                schemars::schema_for!(pacing_fields::EventTime),
            ),
        ];
        assert_eq!(variants.len(), mirrors.len(), "{pacing:#}");
        for (mode, mirror) in mirrors {
            let variant = variants
                .iter()
                .find(|v| v["properties"]["mode"]["const"] == mode)
                .unwrap_or_else(|| panic!("no variant {mode} in {pacing:#}"));
            assert_eq!(
                shape(variant),
                shape(&serde_json::to_value(mirror).unwrap()),
                "{mode}"
            );
        }
    }

    #[test]
    fn credentials_must_come_from_the_environment() {
        let written = serde_json::json!({
            "kafka": { "properties": {
                "sasl.password": 55554444,
                "ssl.key.password": "${KEY_PW}",
                "ssl.keystore.password": "${A}${B:-}",
                "sasl.oauthbearer.client.secret": "pre-${S}",
                "ssl.key.location": "/etc/kafka/client.key",
                "sasl.kerberos.keytab": "/etc/krb5.keytab",
                "sasl.oauthbearer.token.endpoint.url": "https://idp.example/token",
                "sasl.username": "me",
            } },
            "sink": {
                "password": "${SNOWFLAKE_PASSWORD:-hunter2}",
                "private_key": "",
                "private_key_passphrase": "${PASSPHRASE:-}",
                "private_key_path": "/keys/rsa.p8",
            },
        });
        let found: Vec<String> = written_secrets(&written)
            .into_iter()
            .map(|(path, var)| format!("{path} {var}"))
            .collect();
        assert_eq!(
            found,
            [
                "kafka.properties.sasl.password KAFKA_SASL_PASSWORD",
                "kafka.properties.sasl.oauthbearer.client.secret KAFKA_SASL_OAUTHBEARER_CLIENT_SECRET",
                "sink.password SNOWFLAKE_PASSWORD",
            ]
        );
        assert_eq!(written_text("a${X:-b}c${Y}d${Z:-}"), "abcd");
        assert_eq!(written_text("${X:-${Y}}"), "");
        assert_eq!(written_text("${X:-a${Y:-b}}c"), "abc");
        assert!(is_lone_variable("${X:-${Y:-1}}") && !is_lone_variable("${X}${Y}"));
    }

    #[test]
    fn substituted_secrets_do_not_reach_messages() {
        let env = [("SNOWFLAKE_PASSWORD", "Hunter2SecretPW")];
        let text = pipeline("", "", ",\n    \"format\": \"${SNOWFLAKE_PASSWORD}\"");
        let issue = only_issue(&text, &env);
        assert_eq!(issue.path, "sink.format");
        assert!(
            issue
                .message
                .starts_with("unknown variant `${SNOWFLAKE_PASSWORD}`, expected"),
            "{issue}"
        );
        assert!(!issue.message.contains("Hunter2"), "{issue}");

        let text = pipeline("", ",\n    \"compression\": \"${SNOWFLAKE_PASSWORD}\"", "");
        let issue = only_issue(&text, &env);
        assert_eq!(issue.path, "kafka.compression");
        assert!(issue.message.contains("`${SNOWFLAKE_PASSWORD}`"), "{issue}");
        assert!(!issue.message.contains("Hunter2"), "{issue}");

        // Also a value that failed part-way through a string, in `{:?}` quotes.
        let text = pipeline(",\n    \"infer_rows\": \"x${API_TOKEN}\"", "", "");
        let issue = only_issue(&text, &[("API_TOKEN", "tok\"en\n42")]);
        assert_eq!(
            issue.message,
            "invalid type: string \"x${API_TOKEN}\", expected a whole number, 0 or more"
        );
    }

    /// Read for `transform test`, the kafka section keeps its topic, its largest message and its
    /// partitioner, and nothing whose variables need be set (the brokers, a password).
    #[test]
    fn transform_scope_keeps_what_decides_a_record() {
        let text = pipeline(
            "",
            ",\n    \"brokers\": \"${BROKERS}\",\n    \"properties\": { \"partitioner\": \"murmur2_random\", \"message.max.bytes\": \"100000\", \"sasl.password\": \"${KAFKA_PASSWORD}\" }",
            "",
        );
        let loaded = load_text(&text, Path::new("p.json"), &|_| None, Scope::Transforms).unwrap();
        let kafka = &loaded.config.kafka;
        assert_eq!((kafka.topic.as_str(), kafka.brokers.as_str()), ("t", ""));
        let props: Vec<(&str, &str)> = (kafka.properties.iter())
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            props,
            [
                ("message.max.bytes", "100000"),
                ("partitioner", "murmur2_random")
            ]
        );
        assert!(load_str(&text, Path::new("p.json"), &|_| None).is_err());
        // One whose variable is unset is left out, not an error.
        let text = pipeline(
            "",
            ",\n    \"properties\": { \"partitioner\": \"${PARTITIONER}\" }",
            "",
        );
        let loaded = load_text(&text, Path::new("p.json"), &|_| None, Scope::Transforms).unwrap();
        assert!(loaded.config.kafka.properties.is_empty());
    }

    /// A `${VAR}` alone where a number or a flag goes is read as one; anything else in its
    /// place is still refused, in words rather than Rust's type names.
    #[test]
    fn a_variable_alone_fills_a_number_or_a_flag() {
        let text = pipeline(
            ",\n    \"pacing\": { \"mode\": \"rate\", \"rows_per_sec\": \"${RATE}\" }",
            ",\n    \"partitions\": \"${PARTS}\"",
            ",\n    \"batch\": { \"max_rows\": \"${ROWS}\" }",
        );
        let env = |name: &str| match name {
            "RATE" => Some("12.5".to_owned()),
            "PARTS" => Some(" 6".to_owned()),
            "ROWS" => Some("5000".to_owned()),
            _ => None,
        };
        let loaded = load_str(&text, Path::new("p.json"), &env).unwrap();
        assert_eq!(loaded.config.kafka.partitions, 6);
        let SourceConfig::Csv(csv) = &loaded.config.source;
        assert_eq!(format!("{:?}", csv.pacing), "Rate { rows_per_sec: 12.5 }");
        let SinkConfig::Snowflake(sf) = &loaded.config.sink;
        assert_eq!(sf.batch.max_rows, 5000);

        let issue = only_issue(&text, &[("RATE", "fast"), ("PARTS", "6"), ("ROWS", "1")]);
        assert_eq!(issue.path, "source.pacing.rows_per_sec", "{issue}");
        assert_eq!(
            issue.message,
            "invalid type: string \"fast\", expected a number (from \"${RATE}\")"
        );
        let issue = only_issue(&text, &[("RATE", "1"), ("PARTS", "6"), ("ROWS", "-1")]);
        assert_eq!(issue.path, "sink.batch.max_rows", "{issue}");
        assert_eq!(
            issue.message,
            "invalid value: integer `-1`, expected a whole number, 0 or more (from \"${ROWS}\")"
        );
        // A default fills a number too, and numbers are read as people write them.
        let text_d = text
            .replace("${ROWS}", "${ROWS:-1e3}")
            .replace("${PARTS}", "${PARTS:-03}");
        let loaded = load_str(&text_d, Path::new("p.json"), &|name: &str| {
            (name == "RATE").then(|| "7".to_owned())
        })
        .unwrap();
        assert_eq!(loaded.config.kafka.partitions, 3);
        let SinkConfig::Snowflake(sf) = &loaded.config.sink;
        assert_eq!(sf.batch.max_rows, 1000);
        // What is still refused says which variable it came from, a secret's value unshown.
        let text_s = text.replace("${RATE}", "${RATE_TOKEN}");
        let issue = only_issue(
            &text_s,
            &[("RATE_TOKEN", "fast1"), ("PARTS", "6"), ("ROWS", "1")],
        );
        assert_eq!(
            issue.message,
            "invalid type: string \"${RATE_TOKEN}\", expected a number (from \"${RATE_TOKEN}\")"
        );
        // A secret read as a number but out of range is still a secret in the message.
        let text_p = text.replace("${PARTS}", "${KAFKA_PASSWORD}");
        let issue = only_issue(
            &text_p,
            &[
                ("RATE", "1"),
                ("KAFKA_PASSWORD", "98765432109"),
                ("ROWS", "1"),
            ],
        );
        assert_eq!(issue.path, "kafka.partitions", "{issue}");
        assert!(!issue.message.contains("98765432109"), "{issue}");
        assert!(issue.message.contains("${KAFKA_PASSWORD}"), "{issue}");
        // Only a variable standing alone: text around it keeps the string a string.
        let text = text.replace("\"${PARTS}\"", "\"${PARTS}0\"");
        let issue = only_issue(&text, &[("RATE", "1"), ("PARTS", "6"), ("ROWS", "1")]);
        assert_eq!(issue.path, "kafka.partitions", "{issue}");
    }

    /// JSON output is masked inside its strings only, and stays JSON; a secret-named variable
    /// that filled a number is no secret.
    #[test]
    fn json_is_masked_inside_strings_and_numbers_are_not_secrets() {
        let secrets = EnvSecrets::new(&[Substitution {
            path: "sink.password".into(),
            var: "PW".into(),
            value: "n5000".into(),
            lone: true,
        }]);
        let mut event = serde_json::json!({
            "rows": 5000,
            "message": "login as u/n5000 failed\n",
            "n5000": ["n5000", true],
        });
        assert!(secrets.redact_json(&mut event));
        assert_eq!(
            event,
            serde_json::json!({
                "rows": 5000,
                "message": "login as u/${PW} failed\n",
                "${PW}": ["${PW}", true],
            })
        );
        assert!(!secrets.redact_json(&mut event));

        let text = pipeline(
            "",
            "",
            ",\n    \"batch\": { \"max_rows\": \"${TOKEN_BUDGET}\" }",
        );
        let loaded = load_str(&text, Path::new("p.json"), &|_| Some("5000".to_owned())).unwrap();
        assert_eq!(loaded.redact("5000 rows loaded"), "5000 rows loaded");
    }

    /// Several mistakes are reported at once, each at its key, as long as reading past one is
    /// safe; a required key that is wrong ends the list there (it would then be missing).
    #[test]
    fn several_mistakes_are_reported_together() {
        let text = pipeline(
            ",\n    \"key_colum\": \"id\"",
            ",\n    \"partitions\": \"three\"",
            ",\n    \"batch\": { \"max_rows\": -5 }",
        );
        let issues = match load_str(&text, Path::new("p.json"), &|_| None) {
            Err(ConfigError::Invalid { issues, .. }) => issues,
            other => panic!("expected issues, got {other:?}"),
        };
        let paths: Vec<&str> = issues.iter().map(|i| i.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "source.key_colum",
                "kafka.partitions",
                "sink.batch.max_rows"
            ],
            "{issues:#?}"
        );
        for issue in &issues {
            assert_eq!(issue.position, locate(&text, &issue.path), "{issue}");
        }
        // A wrong required key: reported, and no "missing field" after it.
        let text = pipeline("", ",\n    \"partitions\": \"three\"", "")
            .replace("\"database\": \"D\"", "\"database\": 5");
        let issues = match load_str(&text, Path::new("p.json"), &|_| None) {
            Err(ConfigError::Invalid { issues, .. }) => issues,
            other => panic!("expected issues, got {other:?}"),
        };
        let paths: Vec<&str> = issues.iter().map(|i| i.path.as_str()).collect();
        assert_eq!(paths, ["kafka.partitions", "sink.database"], "{issues:#?}");
        // Missing required keys are reported, and the mistakes after them too: each gets a
        // stand-in of the type that reads (a string, a number, an object).
        let text = pipeline("", ",\n    \"partitions\": \"three\"", "")
            .replace("\"path\": \"d.csv\"", "\"delimiter\": \";\"")
            .replace("\"topic\": \"t\",", "")
            .replace("\"table\": \"T\"", "\"batch\": { \"max_rows\": -5 }");
        let issues = match load_str(&text, Path::new("p.json"), &|_| None) {
            Err(ConfigError::Invalid { issues, .. }) => issues,
            other => panic!("expected issues, got {other:?}"),
        };
        let shown: Vec<String> = issues
            .iter()
            .map(|i| format!("{}: {}", i.path, i.message))
            .collect();
        assert_eq!(
            shown,
            [
                "source: missing field `path`",
                "kafka.partitions: invalid type: string \"three\", expected a whole number from -2147483648 to 2147483647",
                "kafka: missing field `topic`",
                "sink.batch.max_rows: invalid value: integer `-5`, expected a whole number, 0 or more",
                "sink: missing field `table`",
            ],
            "{issues:#?}"
        );
    }

    #[test]
    fn values_from_plain_variables_are_shown() {
        let env = [("KAFKA_TOPIC", "orders-topic")];
        let text = pipeline("", ",\n    \"compression\": \"${KAFKA_TOPIC}\"", "");
        let issue = only_issue(&text, &env);
        assert!(issue.message.contains("`orders-topic`"), "{issue}");
    }

    #[test]
    fn secret_values_are_known_by_variable_name_or_by_field() {
        let text = pipeline(
            ",\n    \"key_column\": \"${ID_COLUMN}\"",
            ",\n    \"brokers\": \"${BROKERS}\",\n    \"properties\": { \"sasl.password\": \"${KAFKA_PW}\", \"sasl.username\": \"${KAFKA_USER}\" }",
            ",\n    \"password\": \"${SF_PW}\",\n    \"role\": \"${role_token}\",\n    \"warehouse\": \"${WH}\"",
        )
        .replace(
            "\"sink\"",
            "\"transforms\": [{ \"uses\": \"m.wasm\", \"with\": { \"seed\": \"${MASK_SEED}\", \
             \"api_key\": \"${VENDOR}\", \"max\": \"${MAX_AMOUNT}\", \"mac\": \"${MAC}\", \
             \"pin\": \"${PIN}\", \"conn\": \"${HI}${LO}\", \"strict\": \"${SECRET_MODE}\" } }],\n  \"sink\"",
        );
        let env = |name: &str| {
            Some(
                match name {
                    "ID_COLUMN" => "customer_id",
                    "BROKERS" => "kafka:9092",
                    "KAFKA_PW" => "kafka-pass",
                    "KAFKA_USER" => "alice",
                    "SF_PW" => "sf-pass",
                    "role_token" => "loader-role",
                    "WH" => "abc",
                    "MASK_SEED" => "seed-value",
                    "VENDOR" => "vendor-key",
                    "MAX_AMOUNT" => "1000",
                    "MAC" => "ab12cd34ef",
                    "PIN" => "12345678901234",
                    "HI" => "111122223333",
                    "LO" => "444455556666",
                    "SECRET_MODE" => "false",
                    _ => return None,
                }
                .to_owned(),
            )
        };
        let loaded = load_str(&text, Path::new("p.json"), &env).unwrap();
        // Any param may be key material, but a short number alone is a threshold and a flag is
        // no secret: they stay readable wherever they are quoted. Numbers that make up a longer
        // value are its parts, and are masked.
        assert_eq!(
            loaded.redact(
                "customer_id kafka:9092 kafka-pass alice sf-pass loader-role abc seed-value \
                 vendor-key 21000.5 ab12cd34ef 12345678901234 111122223333444455556666 false"
            ),
            "customer_id kafka:9092 ${KAFKA_PW} alice ${SF_PW} ${role_token} abc ${MASK_SEED} \
             ${VENDOR} 21000.5 ${MAC} ${PIN} ${HI}${LO} false"
        );
        let shown = format!("{loaded:?} {loaded:#?}");
        assert!(shown.contains("${role_token}"), "{shown}");
        for secret in ["kafka-pass", "sf-pass", "loader-role", "seed-value"] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        // The transform keeps its own list, for its own messages.
        let mut secrets = loaded.config.transforms[0].secrets.clone();
        secrets.sort();
        assert_eq!(
            secrets,
            [
                "111122223333",
                "12345678901234",
                "444455556666",
                "ab12cd34ef",
                "seed-value",
                "vendor-key"
            ]
        );
    }

    /// `on_error` is one policy or an object of them by failure kind; a misspelt kind or policy
    /// is named at its key.
    #[test]
    fn on_error_is_a_policy_or_one_per_kind() {
        use crate::transform::FailureKind;
        let with = |on_error: &str| {
            pipeline("", "", "").replace(
                "\"sink\"",
                &format!(
                    "\"transforms\": [{{ \"uses\": \"m.wasm\", \"on_error\": {on_error} }}],\n  \"sink\""
                ),
            )
        };
        let policy = |on_error: &str| {
            let loaded = load_str(&with(on_error), Path::new("p.json"), &|_| None).unwrap();
            let p = loaded.config.transforms[0].on_error;
            FailureKind::ALL.map(|k| p.of(k))
        };
        use OnError::{DeadLetter, Drop, Fail};
        assert_eq!(policy("\"drop\""), [Drop; 7]);
        assert_eq!(
            policy(r#"{ "guest_error": "dead_letter", "default": "fail" }"#),
            [DeadLetter, Fail, Fail, Fail, Fail, Fail, Fail]
        );
        // Each kind by its own name, in `FailureKind::ALL`'s order.
        for (i, kind) in FailureKind::ALL.iter().enumerate() {
            let mut want = [Drop; 7];
            want[i] = Fail;
            let one = format!(r#"{{ "{kind}": "fail", "default": "drop" }}"#);
            assert_eq!(policy(&one), want, "{one}");
        }
        for (on_error, path, says) in [
            (
                r#"{ "trapp": "fail" }"#,
                "transforms[0].on_error.trapp",
                "unknown field `trapp`",
            ),
            (
                r#"{ "trap": "stop" }"#,
                "transforms[0].on_error.trap",
                "unknown variant `stop`",
            ),
            (
                "3",
                "transforms[0].on_error",
                "expected `fail`, `drop`, `dead_letter`, or an",
            ),
        ] {
            let issue = only_issue(&with(on_error), &[]);
            assert_eq!(issue.path, path, "{on_error}: {issue}");
            assert!(issue.message.contains(says), "{on_error}: {issue}");
        }
        // An empty object reads, as the default would, and `validate` refuses it.
        let loaded = load_str(&with("{}"), Path::new("p.json"), &|_| None).unwrap();
        let issues = crate::validate::validate(&loaded);
        let issue = issues.iter().find(|i| i.path == "transforms[0].on_error");
        assert!(
            issue.is_some_and(|i| i.message.starts_with("names no kind of failure")),
            "{issues:?}"
        );
    }

    #[test]
    fn redaction_masks_every_form_once() {
        let secrets = EnvSecrets::new(&[
            Substitution {
                path: "kafka.topic".into(),
                var: "OUTER_SECRET".into(),
                value: "ab\"cd\nef".into(),
                lone: true,
            },
            Substitution {
                path: "kafka.topic".into(),
                var: "INNER_SECRET".into(),
                value: "cd\nef".into(),
                lone: true,
            },
            // A value that occurs in a variable's name must not garble that name's mask.
            Substitution {
                path: "kafka.topic".into(),
                var: "SECR_TOKEN".into(),
                value: "SECR".into(),
                lone: true,
            },
        ]);
        let text = format!(
            "{} {:?} {} cd\nef SECR",
            "ab\"cd\nef", "ab\"cd\nef", "ab\"cd ef"
        );
        let once = secrets.redact(&text);
        assert_eq!(
            once,
            "${OUTER_SECRET} \"${OUTER_SECRET}\" ${OUTER_SECRET} ${INNER_SECRET} ${SECR_TOKEN}"
        );
        assert_eq!(secrets.redact(&once), once);
        // Both quotes, a control character, a backslash: every form sluice may write it in.
        let quoted = "it's \"x\"\u{1}\\y";
        let quoted_secrets = EnvSecrets::new(&[Substitution {
            path: "kafka.topic".into(),
            var: "QUOTED_SECRET".into(),
            value: quoted.into(),
            lone: true,
        }]);
        let debug = format!("{quoted:?}");
        let json = serde_json::to_string(quoted).unwrap();
        let json_of_debug =
            serde_json::json!({ "message": format!("bad: {quoted:?}") }).to_string();
        let pretty = serde_json::to_string_pretty(&serde_json::json!({ "error": quoted })).unwrap();
        for text in [
            debug,
            json,
            json_of_debug,
            pretty,
            quoted.escape_debug().to_string(),
        ] {
            let masked = quoted_secrets.redact(&text);
            assert!(
                masked.contains("${QUOTED_SECRET}"),
                "{text} became {masked}"
            );
            assert!(
                !masked.contains("it's") && !masked.contains("it\\'s"),
                "{masked}"
            );
        }
        assert_eq!(
            format!("{secrets:?}"),
            "[\"OUTER_SECRET\", \"INNER_SECRET\", \"SECR_TOKEN\"]"
        );
    }

    #[test]
    fn locate_finds_nested_keys() {
        let text = "{\n  \"a\": 1,\n  \"t\": [\n    {\"x\": 1},\n    {\"with\": {\"threshold\": \"z\"}}\n  ]\n}";
        assert_eq!(locate(text, "t[1].with.threshold"), Some((5, 15)));
        assert_eq!(locate(text, "a"), Some((2, 3)));
        assert_eq!(locate(text, "t[0]"), Some((4, 5)));
        // A key with dots in it, past a key that starts like it.
        let text = "{\"p\": {\n \"message\": 1,\n \"message.max.bytes\": 2}}";
        assert_eq!(locate(text, "p.message.max.bytes"), Some((3, 2)));
        assert_eq!(locate(text, "p.message"), Some((2, 2)));
    }
}
