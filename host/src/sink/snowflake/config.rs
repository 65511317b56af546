//! `sink` section of pipeline.json for Snowflake: account, credentials (by `${ENV}` reference),
//! target table and batching.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The Snowflake sink.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
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
    /// Target table.
    pub table: String,
    /// Named internal stage files are PUT to; created if missing.
    #[serde(default = "default_stage")]
    pub stage: String,
    /// Table holding the committed Kafka offsets per (pipeline, topic, partition).
    #[serde(default = "default_offsets_table")]
    pub offsets_table: String,
    /// Whether the target table is created from the first batch's schema.
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
    /// Rows per file.
    #[serde(default = "default_max_rows")]
    pub max_rows: usize,
    /// Uncompressed bytes per file.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: usize,
    /// Longest a row waits before its batch is flushed, in milliseconds.
    #[serde(default = "default_max_latency_ms")]
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
