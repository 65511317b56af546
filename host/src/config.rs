//! pipeline.json: parsing, `${VAR}` interpolation, and errors that name the key and its place.
//!
//! Loading goes in three steps: the text is parsed as JSON (syntax errors carry line and column);
//! every string is interpolated from the environment (`${VAR}`, `${VAR:-default}`; the only way
//! secrets enter); then the tree is deserialized into [`PipelineConfig`] with
//! `deny_unknown_fields` everywhere, and type errors carry their JSON path
//! (`transforms[1].with.threshold`), which [`locate`] maps back to a line and column of the
//! original text. Offline checks that need more than types live in `validate`.

use std::fmt;
use std::path::{Path, PathBuf};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::sink::snowflake::config::SnowflakeSinkConfig;
use crate::source::config::SourceConfig;
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
    pub partitions: i32,
    /// Replication factor used when the topic is created.
    #[serde(default = "default_replication")]
    pub replication_factor: i32,
    /// Consumer group id; defaults to `sluice-<pipeline name>`.
    #[serde(default)]
    pub group_id: Option<String>,
    /// Producer compression codec.
    #[serde(default)]
    pub compression: Compression,
    /// Records consumed but not yet durable in the sink, at most; backpressure beyond it.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    /// Extra librdkafka properties (e.g. `security.protocol`, `sasl.mechanism`), applied to
    /// producer, consumer and admin clients.
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
}

impl Compression {
    /// The librdkafka `compression.type` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
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
#[derive(Debug, Clone)]
pub struct LoadedConfig {
    /// The parsed, interpolated configuration.
    pub config: PipelineConfig,
    /// The file it came from.
    pub file: PathBuf,
    /// The directory relative paths in it are resolved against.
    pub base_dir: PathBuf,
    /// The original text, for mapping JSON paths to lines.
    pub text: String,
}

impl LoadedConfig {
    /// Resolves a path from the file against its directory.
    pub fn resolve(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base_dir.join(p)
        }
    }

    /// Builds a [`ConfigIssue`] at `path`, locating it in the original text.
    pub fn issue(&self, path: &str, message: impl Into<String>) -> ConfigIssue {
        ConfigIssue {
            path: path.to_owned(),
            position: locate(&self.text, path),
            message: message.into(),
        }
    }

    /// Wraps issues into a [`ConfigError`] for this file.
    pub fn invalid(&self, issues: Vec<ConfigIssue>) -> ConfigError {
        ConfigError::Invalid {
            file: self.file.clone(),
            issues,
        }
    }
}

/// Reads, interpolates and deserializes a pipeline file.
pub fn load(file: &Path) -> Result<LoadedConfig, ConfigError> {
    let text =
        std::fs::read_to_string(file).map_err(|e| ConfigError::Read(file.to_path_buf(), e))?;
    load_str(&text, file, &|name| std::env::var(name).ok())
}

/// [`load`] from text, with an injectable environment (tests).
pub fn load_str(
    text: &str,
    file: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<LoadedConfig, ConfigError> {
    let invalid = |issues| ConfigError::Invalid {
        file: file.to_path_buf(),
        issues,
    };
    let mut tree: serde_json::Value = serde_json::from_str(text).map_err(|e| {
        invalid(vec![ConfigIssue {
            path: String::new(),
            position: Some((e.line(), e.column())),
            message: format!("invalid JSON: {}", strip_position(&e.to_string())),
        }])
    })?;
    // serde_json keeps the last of two equal keys, silently: a second `"transforms": []` would
    // drop the whole chain (a `mask` with it). The text is valid JSON here, so the walk is safe.
    let duplicates = duplicate_keys(text);
    if !duplicates.is_empty() {
        return Err(invalid(duplicates));
    }
    let mut issues = Vec::new();
    let mut from_env = Vec::new();
    interpolate_tree(&mut tree, String::new(), env, &mut issues, &mut from_env);
    if !issues.is_empty() {
        for i in &mut issues {
            i.position = locate(text, &i.path);
        }
        return Err(invalid(issues));
    }
    let mut config: PipelineConfig = serde_path_to_error::deserialize(&tree).map_err(|e| {
        let path = render_path(e.path());
        let message = e.inner().to_string();
        // Internally tagged enums (`"type"`, `"mode"`) buffer their content, so serde's path
        // stops at the enclosing object; point at the offending tag value instead.
        let path = match unknown_variant_name(&message) {
            Some(variant) => find_string_value(&tree, &path, &variant).unwrap_or(path),
            None => path,
        };
        invalid(vec![ConfigIssue {
            position: locate(text, &path),
            path,
            message,
        }])
    })?;
    // A transform's params may carry secrets (a salt, a key); its messages must not show them.
    for (i, t) in config.transforms.iter_mut().enumerate() {
        let prefix = format!("transforms[{i}].with.");
        t.secrets = from_env
            .iter()
            .filter(|(path, _)| path.starts_with(&prefix))
            .map(|(_, value)| value.clone())
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

/// The path of the first string equal to `want` inside the value at `path` (depth first).
fn find_string_value(tree: &serde_json::Value, path: &str, want: &str) -> Option<String> {
    let mut node = tree;
    for seg in parse_path(path) {
        node = match seg {
            Seg::Key(k) => node.get(&k)?,
            Seg::Index(i) => node.get(i)?,
        };
    }
    fn search(v: &serde_json::Value, at: String, want: &str) -> Option<String> {
        match v {
            serde_json::Value::String(s) if s == want => Some(at),
            serde_json::Value::Object(m) => m
                .iter()
                .find_map(|(k, v)| search(v, join_key(&at, k), want)),
            serde_json::Value::Array(a) => a
                .iter()
                .enumerate()
                .find_map(|(i, v)| search(v, format!("{at}[{i}]"), want)),
            _ => None,
        }
    }
    search(node, path.to_owned(), want)
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
/// Each value taken from the environment is added to `from_env` with the path it went to.
fn interpolate_tree(
    v: &mut serde_json::Value,
    path: String,
    env: &dyn Fn(&str) -> Option<String>,
    issues: &mut Vec<ConfigIssue>,
    from_env: &mut Vec<(String, String)>,
) {
    match v {
        serde_json::Value::String(s) => match interpolate_noting(s, env, &mut |value| {
            from_env.push((path.clone(), value.to_owned()))
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

/// Interpolates one string (see [`interpolate_tree`]).
pub fn interpolate(s: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    interpolate_noting(s, env, &mut |_| {})
}

/// [`interpolate`], calling `noted` with each value taken from the environment.
fn interpolate_noting(
    s: &str,
    env: &dyn Fn(&str) -> Option<String>,
    noted: &mut dyn FnMut(&str),
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
            let end = after
                .find('}')
                .ok_or_else(|| format!("unterminated `${{` in {s:?}"))?;
            let expr = &after[..end];
            let (name, default) = match expr.find(":-") {
                Some(j) => (&expr[..j], Some(&expr[j + 2..])),
                None => (expr, None),
            };
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!("invalid variable name {name:?} in `${{{expr}}}`"));
            }
            match (env(name), default) {
                (Some(v), Some(d)) if v.is_empty() => out.push_str(d),
                (Some(v), _) => {
                    noted(&v);
                    out.push_str(&v);
                }
                (None, Some(d)) => out.push_str(d),
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
fn duplicate_keys(text: &str) -> Vec<ConfigIssue> {
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
                loop {
                    self.ws();
                    if self.b.get(self.i)? == &b'}' {
                        return Some(start);
                    }
                    let key_at = self.i;
                    let key = self.string()?;
                    self.ws();
                    self.i += 1; // ':'
                    if &key == want {
                        if rest.is_empty() {
                            return Some(key_at);
                        }
                        return self.find(rest).or(Some(key_at));
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

    #[test]
    fn locate_finds_nested_keys() {
        let text = "{\n  \"a\": 1,\n  \"t\": [\n    {\"x\": 1},\n    {\"with\": {\"threshold\": \"z\"}}\n  ]\n}";
        assert_eq!(locate(text, "t[1].with.threshold"), Some((5, 15)));
        assert_eq!(locate(text, "a"), Some((2, 3)));
        assert_eq!(locate(text, "t[0]"), Some((4, 5)));
    }
}
