//! The Snowflake sink: bulk PUT + COPY over the driver REST protocol, exactly once.
//!
//! # Wire protocol
//! sluice speaks the connector REST protocol every Snowflake driver uses (there is no public
//! spec; `shared/snowflake/PROTOCOL.md` records what the drivers send and what the fakesnow
//! emulator answers):
//!
//! 1. `POST /session/v1/login-request?databaseName=..&schemaName=..&warehouse=..&roleName=..` with
//!    `{"data": {ACCOUNT_NAME, LOGIN_NAME, PASSWORD | AUTHENTICATOR: "SNOWFLAKE_JWT" + TOKEN,
//!    SESSION_PARAMETERS, ...}}` → `data.token` (and on a real account `masterToken`).
//!    The key-pair JWT is RS256 with `iss = ACCOUNT.USER.SHA256:<fingerprint>`, `sub = ACCOUNT.USER`.
//! 2. `POST /queries/v1/query-request?requestId=<uuid>` with `Authorization: Snowflake
//!    Token="<token>"` and `{"sqlText", "sequenceId", "bindings"?, ...}` → rows as a JSON
//!    `rowset` or an Arrow IPC `rowsetBase64` (fakesnow only sends Arrow for queries), errors as
//!    `{"success": false, "code", "message", "data": {"sqlState", "queryId"}}`. Code `390112`
//!    renews the session via `/session/token-request`.
//! 3. `PUT 'file:///<name>' @stage/<dir> AUTO_COMPRESS=FALSE` is a query whose answer is transfer
//!    instructions (`stageInfo`, maybe `encryptionMaterial`); [`stage`] performs the upload to the
//!    presigned URL or to S3 (SigV4, client-side AES encryption), GCS or Azure.
//! 4. `BEGIN; COPY INTO t FROM @stage/<dir>/<file>; DELETE + INSERT the SLUICE_OFFSETS row;
//!    COMMIT`, then the commit is read back before the offsets are reported durable ([`sink`]).
//!
//! Modules: [`config`] (pipeline.json section), [`client`] (login, queries, retries, decoding),
//! [`stage`] (uploads), [`encode`] (identifiers, type mapping, CSV/NDJSON, file names),
//! [`sink`] (batching and the exactly-once load), [`stats`], [`emulator`] (a local fakesnow).

pub mod client;
pub mod config;
pub mod emulator;
pub mod encode;
pub mod sink;
pub mod stage;
pub mod stats;

pub use client::{QueryResult, RetryPolicy, SnowflakeError};
pub use emulator::Emulator;
pub use sink::{
    Batch, ConnectOptions, Durable, LoadOutcome, SinkError, SinkHandle, SinkInput, SinkRecord,
    SinkSummary, SnowflakeSink,
};
pub use stats::SinkStats;
