//! `sink` section of pipeline.json for Snowflake: account, credentials (by `${ENV}` reference),
//! target table and batching.

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::config::FieldProblem;

/// The Snowflake sink. `Debug` redacts the password, key and passphrase.
#[derive(Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SnowflakeSinkConfig {
    /// Base URL of the account, e.g. `https://myorg-myacct.snowflakecomputing.com`. Empty means
    /// "no account": `sluice run` starts the local fakesnow emulator and points the sink at it.
    #[serde(default)]
    pub account_url: String,
    /// Account identifier (`MYORG-MYACCT`), used in login and in key-pair JWT claims.
    #[serde(default)]
    pub account: String,
    /// Login name.
    #[serde(default)]
    pub user: String,
    /// Password; give it as `${SNOWFLAKE_PASSWORD}`, never literally.
    #[serde(default)]
    pub password: Option<String>,
    /// Path of a PEM private key (PKCS#8) for key-pair JWT login.
    #[serde(default)]
    pub private_key_path: Option<String>,
    /// The PEM private key itself, for key-pair login from an environment variable.
    #[serde(default)]
    pub private_key: Option<String>,
    /// Passphrase of an encrypted private key.
    #[serde(default)]
    pub private_key_passphrase: Option<String>,
    /// Role to use.
    #[serde(default)]
    pub role: Option<String>,
    /// Warehouse that runs COPY.
    #[serde(default)]
    pub warehouse: Option<String>,
    /// Database of the target table.
    pub database: String,
    /// Schema of the target table.
    pub schema: String,
    /// Target table. Like every identifier here, a plain name (`[A-Za-z_][A-Za-z0-9_$]*`) is
    /// uppercased, as Snowflake does with unquoted names, and any other name is used verbatim
    /// (quoted). Field names become column names the same way.
    pub table: String,
    /// Named internal stage files are PUT to; created if missing.
    #[serde(default = "default_stage")]
    pub stage: String,
    /// Table holding the committed Kafka offsets per (pipeline, topic, partition).
    #[serde(default = "default_offsets_table")]
    pub offsets_table: String,
    /// Whether the target table is created from the first batch's schema, with int →
    /// NUMBER(38,0), float → FLOAT, bool → BOOLEAN, timestamp → TIMESTAMP_NTZ, string → VARCHAR,
    /// json → VARIANT (a field seen only as null → its `source.schema` type, else VARCHAR).
    #[serde(default)]
    pub create_table: CreateTable,
    /// What a field unknown to the table does: `add_columns` alters the table, `dead_letter`
    /// (default) sends the row to the dead-letter topic.
    #[serde(default)]
    pub schema_evolution: SchemaEvolution,
    /// Staged file format.
    #[serde(default)]
    pub format: FileFormat,
    /// When a partition's batch is flushed.
    #[serde(default)]
    pub batch: BatchConfig,
}

/// Whether the target table is created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum CreateTable {
    /// Create it from the first batch's schema when it does not exist.
    #[default]
    IfMissing,
    /// It must exist.
    Never,
}

/// Handling of fields the table lacks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SchemaEvolution {
    /// `ALTER TABLE ... ADD COLUMN` for each new field.
    AddColumns,
    /// Send the row to the dead-letter topic with the reason.
    #[default]
    DeadLetter,
}

/// Staged file format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum FileFormat {
    /// Gzip CSV, one column per field.
    #[default]
    Csv,
    /// Gzip NDJSON into a single VARIANT landing column.
    Ndjson,
}

/// Flush thresholds for a partition's batch; whichever is reached first flushes.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchConfig {
    /// Rows per file. A record's rows are never split across files, so a file may pass it by
    /// the rows of its last record (a transform that emits many rows for one record).
    #[serde(default = "default_max_rows")]
    #[schemars(range(min = 1))]
    pub max_rows: usize,
    /// Uncompressed bytes per file; as with `max_rows`, a file may pass it by its last record's
    /// rows.
    #[serde(default = "default_max_bytes")]
    #[schemars(range(min = 1024))]
    pub max_bytes: usize,
    /// Longest a row waits before its batch is flushed, in milliseconds.
    #[serde(default = "default_max_latency_ms")]
    #[schemars(range(min = 1))]
    pub max_latency_ms: u64,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            max_rows: default_max_rows(),
            max_bytes: default_max_bytes(),
            max_latency_ms: default_max_latency_ms(),
        }
    }
}

fn default_stage() -> String {
    "SLUICE_STAGE".to_owned()
}
fn default_offsets_table() -> String {
    "SLUICE_OFFSETS".to_owned()
}
fn default_max_rows() -> usize {
    50_000
}
fn default_max_bytes() -> usize {
    64 * 1024 * 1024
}
fn default_max_latency_ms() -> u64 {
    2_000
}

impl fmt::Debug for SnowflakeSinkConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let redact = |o: &Option<String>| o.as_ref().map(|_| "<redacted>");
        f.debug_struct("SnowflakeSinkConfig")
            .field("account_url", &self.account_url)
            .field("account", &self.account)
            .field("user", &self.user)
            .field("password", &redact(&self.password))
            .field("private_key_path", &self.private_key_path)
            .field("private_key", &redact(&self.private_key))
            .field(
                "private_key_passphrase",
                &redact(&self.private_key_passphrase),
            )
            .field("role", &self.role)
            .field("warehouse", &self.warehouse)
            .field("database", &self.database)
            .field("schema", &self.schema)
            .field("table", &self.table)
            .field("stage", &self.stage)
            .field("offsets_table", &self.offsets_table)
            .field("create_table", &self.create_table)
            .field("schema_evolution", &self.schema_evolution)
            .field("format", &self.format)
            .field("batch", &self.batch)
            .finish()
    }
}

impl SnowflakeSinkConfig {
    /// Whether this config targets the local emulator (no `account_url`).
    pub fn is_emulated(&self) -> bool {
        self.account_url.trim().is_empty()
    }

    /// Checks the config without I/O: names present, one credential for a real account, sane
    /// batch limits. Returns every problem, not just the first.
    pub fn validate(&self) -> Result<(), Vec<FieldProblem>> {
        let mut p = Vec::new();
        let mut bad = |field: &'static str, message: &str| {
            p.push(FieldProblem {
                field,
                message: message.to_owned(),
            })
        };
        for (field, v) in [
            ("database", &self.database),
            ("schema", &self.schema),
            ("table", &self.table),
            ("stage", &self.stage),
            ("offsets_table", &self.offsets_table),
        ] {
            if v.trim().is_empty() {
                bad(field, "must not be empty");
            }
        }
        if !self.is_emulated() {
            let url = self.account_url.trim();
            if !(url.starts_with("https://") || url.starts_with("http://")) {
                bad("account_url", "must start with https://");
            }
            // A URL is printed where a password is not (logs, errors, `Debug`).
            let authority = (url.split_once("://")).map_or("", |(_, rest)| {
                rest.split(['/', '?', '#']).next().unwrap_or_default()
            });
            if authority.contains('@') {
                bad(
                    "account_url",
                    "holds a user or password (`user:password@`): give them as user and password, \
                     from the environment",
                );
            }
            if self.account.trim().is_empty() {
                bad("account", "is required with account_url");
            }
            if self.user.trim().is_empty() {
                bad("user", "is required with account_url");
            }
            let creds = [
                self.password.is_some(),
                self.private_key.is_some(),
                self.private_key_path.is_some(),
            ]
            .iter()
            .filter(|x| **x)
            .count();
            if creds == 0 {
                bad("password", "give password, private_key or private_key_path");
            } else if creds > 1 {
                bad(
                    "password",
                    "give only one of password, private_key and private_key_path",
                );
            }
        }
        if self.private_key_passphrase.is_some()
            && self.private_key.is_none()
            && self.private_key_path.is_none()
        {
            bad(
                "private_key_passphrase",
                "is only used with private_key or private_key_path",
            );
        }
        if self.batch.max_rows == 0 {
            bad("batch.max_rows", "must be at least 1");
        }
        if self.batch.max_bytes < 1024 {
            bad("batch.max_bytes", "must be at least 1024");
        }
        if self.batch.max_latency_ms == 0 {
            bad("batch.max_latency_ms", "must be at least 1");
        }
        if self.format == FileFormat::Ndjson && self.schema_evolution == SchemaEvolution::AddColumns
        {
            bad(
                "schema_evolution",
                "add_columns needs format csv (ndjson lands in one VARIANT column)",
            );
        }
        if p.is_empty() { Ok(()) } else { Err(p) }
    }
}
