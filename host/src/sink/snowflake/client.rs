//! A small Snowflake connector-REST client: login (password or key-pair JWT), query-request with
//! retries and session renewal, and result decoding from both JSON rowsets and Arrow IPC.
//!
//! Retry semantics: every query-request carries a `requestId` that stays the same across its
//! retries (with `retryCount` added), which is how the official drivers let the server recognise a
//! resubmission. Retries happen on transport errors and timeouts, HTTP 429 and 5xx responses that
//! are not a Snowflake error envelope, with full-jitter exponential backoff. A Snowflake error
//! envelope (`success: false` with a `code`) is never retried, except `390112` (session expired),
//! which renews the session with the master token (or logs in again when the server gave none, as
//! fakesnow does) and then resubmits. Because a re-login starts a new session, and with it loses an
//! open transaction, [`Client::session_epoch`] lets a caller notice and redo the whole transaction.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use rand::Rng as _;
use serde_json::{Value as Json, json};
use sha2::{Digest as _, Sha256};
use tokio::sync::RwLock;

use super::stats::SinkStats;

/// Everything that can go wrong talking to Snowflake.
#[derive(Debug, thiserror::Error)]
pub enum SnowflakeError {
    /// Snowflake answered with an error envelope.
    #[error("snowflake error {code} (sql state {}, query id {}): {message}", sql_state.as_deref().unwrap_or("-"), query_id.as_deref().unwrap_or("-"))]
    Server {
        /// The Snowflake error code, e.g. `002003`.
        code: String,
        /// The SQL state, e.g. `42S02`.
        sql_state: Option<String>,
        /// The query id, when the error belongs to a query.
        query_id: Option<String>,
        /// The message, without fakesnow's `NNNNNN (SQLSTATE): ` prefix.
        message: String,
    },
    /// A non-success HTTP status without a Snowflake error envelope.
    #[error("http status {status} from {endpoint}: {body}")]
    Http {
        /// The HTTP status.
        status: u16,
        /// Which endpoint (path without query).
        endpoint: String,
        /// The start of the response body.
        body: String,
    },
    /// The request did not complete (connect error, timeout, broken body).
    #[error("request to {endpoint} failed")]
    Transport {
        /// Which endpoint.
        endpoint: String,
        /// The underlying error.
        #[source]
        source: reqwest::Error,
    },
    /// Retries were used up; the last error is the source.
    #[error("gave up after {attempts} attempts")]
    RetriesExhausted {
        /// Attempts made.
        attempts: u32,
        /// The last attempt's error.
        #[source]
        last: Box<SnowflakeError>,
    },
    /// The response did not have the expected shape.
    #[error("malformed response: {0}")]
    Protocol(String),
    /// The private key could not be read or used.
    #[error("invalid private key: {0}")]
    Key(String),
    /// The session expired inside a transaction and had to be replaced by a new login, which
    /// lost the transaction; the statement was not run on the new session.
    #[error("the session was replaced by a new login inside a transaction")]
    SessionReplaced,
}

impl SnowflakeError {
    /// The Snowflake error code, if this is a server error.
    pub fn code(&self) -> Option<&str> {
        match self {
            SnowflakeError::Server { code, .. } => Some(code),
            SnowflakeError::RetriesExhausted { last, .. } => last.code(),
            _ => None,
        }
    }

    /// A request that did not complete. The URL is dropped from the error: a stage upload's URL
    /// can carry its credential (a GCS presigned signature, an Azure SAS token), and reqwest would
    /// print it in the message of every error that reaches a log.
    pub(crate) fn transport(endpoint: &str, source: reqwest::Error) -> Self {
        SnowflakeError::Transport {
            endpoint: endpoint.into(),
            source: source.without_url(),
        }
    }

    fn retryable(&self) -> bool {
        match self {
            SnowflakeError::Transport { .. } => true,
            SnowflakeError::Http { status, .. } => *status == 429 || *status >= 500,
            _ => false,
        }
    }
}

/// Bounded retries with full-jitter exponential backoff.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Attempts in total, including the first.
    pub max_attempts: u32,
    /// Backoff cap before the first retry; doubles per retry.
    pub base_delay_ms: u64,
    /// Largest backoff.
    pub max_delay_ms: u64,
    /// Timeout of one HTTP request.
    pub request_timeout_ms: u64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 7,
            base_delay_ms: 200,
            max_delay_ms: 20_000,
            request_timeout_ms: 300_000,
        }
    }
}

impl RetryPolicy {
    /// The pause before retry number `retry` (1-based): uniform in `[0, min(max, base * 2^(retry-1))]`.
    pub fn backoff(&self, retry: u32) -> Duration {
        let cap = self
            .base_delay_ms
            .saturating_mul(1u64 << retry.saturating_sub(1).min(30))
            .min(self.max_delay_ms);
        Duration::from_millis(rand::rng().random_range(0..=cap))
    }
}

/// A secret string whose `Debug` never shows it.
#[derive(Clone)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// How to authenticate.
#[derive(Debug, Clone)]
pub enum Auth {
    /// User and password (`AUTHENTICATOR=SNOWFLAKE`).
    Password(Secret),
    /// Key-pair JWT (`AUTHENTICATOR=SNOWFLAKE_JWT`).
    KeyPair(Arc<KeyPair>),
}

/// An RSA private key for key-pair authentication, with its public key fingerprint.
pub struct KeyPair {
    encoding_key: jsonwebtoken::EncodingKey,
    fingerprint: String,
}

impl std::fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyPair")
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

/// The claims of a Snowflake key-pair JWT.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct JwtClaims {
    /// `<ACCOUNT>.<USER>.SHA256:<fingerprint>`.
    pub iss: String,
    /// `<ACCOUNT>.<USER>`.
    pub sub: String,
    /// Issued at, seconds since the epoch.
    pub iat: i64,
    /// Not before, seconds since the epoch.
    pub nbf: i64,
    /// Expiry, seconds since the epoch (one hour after `iat`, Snowflake's maximum).
    pub exp: i64,
}

impl KeyPair {
    /// Reads a PEM private key: PKCS#8 (`BEGIN PRIVATE KEY`), encrypted PKCS#8 (`BEGIN ENCRYPTED
    /// PRIVATE KEY`, needs `passphrase`) or PKCS#1 (`BEGIN RSA PRIVATE KEY`).
    pub fn from_pem(pem: &str, passphrase: Option<&str>) -> Result<KeyPair, SnowflakeError> {
        use pkcs8::{DecodePrivateKey as _, EncodePublicKey as _};
        use rsa::pkcs1::{DecodeRsaPrivateKey as _, EncodeRsaPrivateKey as _};
        let pem = pem.trim();
        let key = if pem.contains("BEGIN ENCRYPTED PRIVATE KEY") {
            let pass = passphrase.ok_or_else(|| {
                SnowflakeError::Key("the key is encrypted but no passphrase was given".into())
            })?;
            rsa::RsaPrivateKey::from_pkcs8_encrypted_pem(pem, pass.as_bytes())
                .map_err(|e| SnowflakeError::Key(format!("cannot decrypt pkcs#8 key: {e}")))?
        } else if pem.contains("BEGIN RSA PRIVATE KEY") {
            rsa::RsaPrivateKey::from_pkcs1_pem(pem)
                .map_err(|e| SnowflakeError::Key(format!("pkcs#1: {e}")))?
        } else {
            rsa::RsaPrivateKey::from_pkcs8_pem(pem)
                .map_err(|e| SnowflakeError::Key(format!("pkcs#8: {e}")))?
        };
        let public_der = key
            .to_public_key()
            .to_public_key_der()
            .map_err(|e| SnowflakeError::Key(format!("cannot encode public key: {e}")))?;
        let fingerprint = B64.encode(Sha256::digest(public_der.as_bytes()));
        let der = key
            .to_pkcs1_der()
            .map_err(|e| SnowflakeError::Key(format!("cannot encode key: {e}")))?;
        Ok(KeyPair {
            encoding_key: jsonwebtoken::EncodingKey::from_rsa_der(der.as_bytes()),
            fingerprint,
        })
    }

    /// `SHA256:<base64 of the SHA-256 of the DER SubjectPublicKeyInfo>`, as Snowflake shows in
    /// `DESC USER` (`RSA_PUBLIC_KEY_FP`).
    pub fn fingerprint(&self) -> String {
        format!("SHA256:{}", self.fingerprint)
    }

    /// The claims for `account` and `user` at `now` (seconds since the epoch).
    pub fn claims(&self, account: &str, user: &str, now: i64) -> JwtClaims {
        let sub = format!("{}.{}", jwt_account(account), user.to_uppercase());
        JwtClaims {
            iss: format!("{sub}.{}", self.fingerprint()),
            sub,
            iat: now,
            nbf: now,
            exp: now + 3600,
        }
    }

    /// A signed RS256 JWT for `account` and `user`.
    pub fn jwt(&self, account: &str, user: &str, now: i64) -> Result<String, SnowflakeError> {
        let header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
        jsonwebtoken::encode(
            &header,
            &self.claims(account, user, now),
            &self.encoding_key,
        )
        .map_err(|e| SnowflakeError::Key(format!("cannot sign jwt: {e}")))
    }
}

/// The account part used in JWT claims: uppercased, cut at the first `.` (a region or cloud
/// suffix such as `xy12345.us-east-2.aws` is not part of it), as the drivers do.
pub fn jwt_account(account: &str) -> String {
    account.split('.').next().unwrap_or(account).to_uppercase()
}

/// Connection settings of a [`Client`].
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Base URL without a trailing slash, e.g. `https://org-acct.snowflakecomputing.com`.
    pub base_url: String,
    /// Account identifier.
    pub account: String,
    /// Login name.
    pub user: String,
    /// Credentials.
    pub auth: Auth,
    /// Role, if any.
    pub role: Option<String>,
    /// Warehouse, if any.
    pub warehouse: Option<String>,
    /// Database the session starts in.
    pub database: String,
    /// Schema the session starts in.
    pub schema: String,
    /// `SESSION_PARAMETERS` sent at login (fakesnow reads `FAKESNOW_DB_PATH` from here).
    pub session_parameters: serde_json::Map<String, Json>,
    /// Retry behaviour.
    pub retry: RetryPolicy,
}

#[derive(Clone)]
struct Session {
    token: String,
    master_token: Option<String>,
    epoch: u64,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("epoch", &self.epoch)
            .finish_non_exhaustive()
    }
}

/// One column of a result.
#[derive(Debug, Clone, PartialEq)]
pub struct ColumnMeta {
    /// Column name as the server returned it.
    pub name: String,
    /// Lowercase Snowflake type: `fixed`, `real`, `text`, `boolean`, `timestamp_ntz`, `variant`, ...
    pub type_name: String,
    /// Scale of `fixed` (and fractional digits of timestamps).
    pub scale: Option<i64>,
    /// Precision of `fixed`: how many digits it holds.
    pub precision: Option<i64>,
}

/// A decoded query result. Values are normalised to JSON: NUMBER(p,0) as integers, FLOAT as
/// numbers (NaN and infinities as the strings `NaN`, `inf`, `-inf`), BOOLEAN as booleans,
/// timestamps as ISO-8601 strings with microseconds (see [`crate::row::format_timestamp`]),
/// decimals, VARIANT and text as strings.
#[derive(Debug, Clone, PartialEq)]
pub struct QueryResult {
    /// The query id.
    pub query_id: String,
    /// Columns.
    pub columns: Vec<ColumnMeta>,
    /// Rows, one value per column.
    pub rows: Vec<Vec<Json>>,
}

impl QueryResult {
    /// The index of column `name` (case-insensitive).
    pub fn column(&self, name: &str) -> Option<usize> {
        self.columns
            .iter()
            .position(|c| c.name.eq_ignore_ascii_case(name))
    }
}

/// Binding types for positional `?` parameters.
#[derive(Debug, Clone)]
pub enum Bind {
    /// A string (`TEXT`); `None` is SQL NULL (sent as a TEXT null because fakesnow crashes on a
    /// FIXED null).
    Text(Option<String>),
    /// An integer (`FIXED`).
    Int(i64),
}

fn bindings_json(binds: &[Bind]) -> Json {
    let mut m = serde_json::Map::new();
    for (i, b) in binds.iter().enumerate() {
        let v = match b {
            Bind::Text(s) => json!({"type": "TEXT", "value": s}),
            Bind::Int(i) => json!({"type": "FIXED", "value": i.to_string()}),
        };
        m.insert((i + 1).to_string(), v);
    }
    Json::Object(m)
}

/// A logged-in session. Cheap to share behind an `Arc`; queries may run concurrently.
#[derive(Debug)]
pub struct Client {
    http: reqwest::Client,
    cfg: ClientConfig,
    session: RwLock<Session>,
    sequence: AtomicU64,
    in_transaction: std::sync::atomic::AtomicBool,
    stats: Arc<SinkStats>,
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn endpoint_of(path: &str) -> String {
    path.split('?').next().unwrap_or(path).to_owned()
}

/// Strips fakesnow's `"NNNNNN (SQLSTATE): "` prefix so messages look like Snowflake's.
fn clean_message(code: &str, message: &str) -> String {
    let m = message
        .strip_prefix(code)
        .map(str::trim_start)
        .unwrap_or(message);
    match m.strip_prefix('(').and_then(|r| r.split_once("): ")) {
        Some((_, rest)) => rest.to_owned(),
        None => message.to_owned(),
    }
}

fn server_error(body: &Json) -> Option<SnowflakeError> {
    if body.get("success").and_then(Json::as_bool) != Some(false) {
        return None;
    }
    let code = match body.get("code") {
        Some(Json::String(s)) => s.clone(),
        Some(Json::Number(n)) => n.to_string(),
        _ => body
            .pointer("/data/errorCode")
            .and_then(Json::as_str)
            .unwrap_or("unknown")
            .to_owned(),
    };
    let message = body.get("message").and_then(Json::as_str).unwrap_or("");
    Some(SnowflakeError::Server {
        message: clean_message(&code, message),
        sql_state: body
            .pointer("/data/sqlState")
            .and_then(Json::as_str)
            .map(str::to_owned),
        query_id: body
            .pointer("/data/queryId")
            .and_then(Json::as_str)
            .map(str::to_owned),
        code,
    })
}

impl Client {
    /// Logs in.
    pub async fn login(cfg: ClientConfig, stats: Arc<SinkStats>) -> Result<Client, SnowflakeError> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(cfg.retry.request_timeout_ms))
            .connect_timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| SnowflakeError::transport("client", e))?;
        let session = Self::do_login(&http, &cfg, &stats).await?;
        Ok(Client {
            http,
            cfg,
            session: RwLock::new(Session {
                token: session.0,
                master_token: session.1,
                epoch: 0,
            }),
            sequence: AtomicU64::new(0),
            in_transaction: std::sync::atomic::AtomicBool::new(false),
            stats,
        })
    }

    /// The settings this client was built with.
    pub fn config(&self) -> &ClientConfig {
        &self.cfg
    }

    /// The HTTP client, shared with stage uploads.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// Increases whenever the session was replaced by a new login (which ends any open
    /// transaction); token renewals keep the session and do not change it.
    pub async fn session_epoch(&self) -> u64 {
        self.session.read().await.epoch
    }

    async fn do_login(
        http: &reqwest::Client,
        cfg: &ClientConfig,
        stats: &SinkStats,
    ) -> Result<(String, Option<String>), SnowflakeError> {
        let mut data = serde_json::Map::new();
        // The server gates result formats and features on known driver ids; like the
        // `snowflake-api` crate we present ourselves as the Go driver and name the application.
        data.insert("CLIENT_APP_ID".into(), json!("Go"));
        data.insert("CLIENT_APP_VERSION".into(), json!("1.14.0"));
        data.insert("SVN_REVISION".into(), Json::Null);
        data.insert("ACCOUNT_NAME".into(), json!(jwt_account(&cfg.account)));
        data.insert("LOGIN_NAME".into(), json!(cfg.user));
        data.insert(
            "CLIENT_ENVIRONMENT".into(),
            json!({"APPLICATION": "sluice", "OS": std::env::consts::OS, "OCSP_MODE": "FAIL_OPEN"}),
        );
        data.insert(
            "SESSION_PARAMETERS".into(),
            Json::Object(cfg.session_parameters.clone()),
        );
        match &cfg.auth {
            Auth::Password(p) => {
                data.insert("PASSWORD".into(), json!(p.0));
            }
            Auth::KeyPair(k) => {
                data.insert("AUTHENTICATOR".into(), json!("SNOWFLAKE_JWT"));
                data.insert(
                    "TOKEN".into(),
                    json!(k.jwt(&cfg.account, &cfg.user, now_ms() / 1000)?),
                );
            }
        }
        let body = json!({ "data": data });
        let mut url = reqwest::Url::parse(&format!("{}/session/v1/login-request", cfg.base_url))
            .map_err(|e| SnowflakeError::Protocol(format!("bad account url: {e}")))?;
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("request_id", &uuid::Uuid::new_v4().to_string());
            q.append_pair("databaseName", &cfg.database);
            q.append_pair("schemaName", &cfg.schema);
            if let Some(w) = &cfg.warehouse {
                q.append_pair("warehouse", w);
            }
            if let Some(r) = &cfg.role {
                q.append_pair("roleName", r);
            }
        }
        let resp = send_with_retry(&cfg.retry, stats, "/session/v1/login-request", |_| {
            http.post(url.clone())
                .header("Accept", "application/json")
                .json(&body)
        })
        .await?;
        let token = resp
            .pointer("/data/token")
            .and_then(Json::as_str)
            .ok_or_else(|| SnowflakeError::Protocol("login response has no data.token".into()))?;
        let master = resp
            .pointer("/data/masterToken")
            .and_then(Json::as_str)
            .map(str::to_owned);
        Ok((token.to_owned(), master))
    }

    /// Renews the session token after `390112`, or logs in again when there is no master token.
    async fn renew(&self, stale_token: &str) -> Result<(), SnowflakeError> {
        let mut s = self.session.write().await;
        if s.token != stale_token {
            return Ok(()); // someone else renewed it meanwhile
        }
        self.stats.session_renewals.fetch_add(1, Ordering::Relaxed);
        if let Some(master) = s.master_token.clone() {
            let url = format!(
                "{}/session/token-request?requestId={}",
                self.cfg.base_url,
                uuid::Uuid::new_v4()
            );
            let body = json!({"oldSessionToken": s.token, "requestType": "RENEW"});
            let resp = send_with_retry(
                &self.cfg.retry,
                &self.stats,
                "/session/token-request",
                |_| {
                    self.http
                        .post(&url)
                        .header("Authorization", format!("Snowflake Token=\"{master}\""))
                        .header("Accept", "application/json")
                        .json(&body)
                },
            )
            .await;
            if let Ok(resp) = resp
                && let Some(token) = resp.pointer("/data/sessionToken").and_then(Json::as_str)
            {
                s.token = token.to_owned();
                if let Some(m) = resp.pointer("/data/masterToken").and_then(Json::as_str) {
                    s.master_token = Some(m.to_owned());
                }
                return Ok(());
            }
        }
        let (token, master) = Self::do_login(&self.http, &self.cfg, &self.stats).await?;
        *s = Session {
            token,
            master_token: master,
            epoch: s.epoch + 1,
        };
        Ok(())
    }

    /// Marks the session as inside (or outside) an explicit transaction, so that a session
    /// replaced by a new login fails the statement ([`SnowflakeError::SessionReplaced`]) instead
    /// of running it outside the transaction.
    pub fn set_in_transaction(&self, inside: bool) {
        self.in_transaction.store(inside, Ordering::SeqCst);
    }

    /// Runs one statement and returns the raw `data` object of the response (for PUT, whose
    /// answer is transfer instructions rather than rows).
    pub async fn query_raw(&self, sql: &str, binds: &[Bind]) -> Result<Json, SnowflakeError> {
        let request_id = uuid::Uuid::new_v4().to_string();
        let mut renewed = false;
        loop {
            let token = self.session.read().await.token.clone();
            let mut body = json!({
                "sqlText": sql,
                "asyncExec": false,
                "sequenceId": self.sequence.fetch_add(1, Ordering::Relaxed) + 1,
                "querySubmissionTime": now_ms(),
                "isInternal": false,
                "parameters": {},
                "queryContextDTO": {},
            });
            if !binds.is_empty() {
                body["bindings"] = bindings_json(binds);
            }
            let base = format!("{}/queries/v1/query-request", self.cfg.base_url);
            let result = send_with_retry(
                &self.cfg.retry,
                &self.stats,
                "/queries/v1/query-request",
                |attempt| {
                    let mut url = format!(
                        "{base}?requestId={request_id}&request_guid={}",
                        uuid::Uuid::new_v4()
                    );
                    if attempt > 0 {
                        url.push_str(&format!(
                            "&retryCount={attempt}&clientStartTime={}",
                            now_ms()
                        ));
                    }
                    self.http
                        .post(url)
                        .header("Authorization", format!("Snowflake Token=\"{token}\""))
                        .header("Accept", "application/snowflake")
                        .json(&body)
                },
            )
            .await;
            match result {
                Ok(resp) => return self.finish_async(resp, &token).await,
                Err(e) if !renewed && matches!(e.code(), Some("390112" | "390104")) => {
                    renewed = true;
                    let epoch = self.session_epoch().await;
                    self.renew(&token).await?;
                    // Resubmitting on a new session would run the rest of a transaction in
                    // autocommit mode without its first half.
                    if self.in_transaction.load(Ordering::SeqCst)
                        && self.session_epoch().await != epoch
                    {
                        return Err(SnowflakeError::SessionReplaced);
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Follows Snowflake's "still running" answers (`333333`/`333334`) until the result is there.
    async fn finish_async(&self, mut resp: Json, token: &str) -> Result<Json, SnowflakeError> {
        loop {
            let code = resp.get("code").and_then(Json::as_str).unwrap_or("");
            if code != "333333" && code != "333334" {
                return resp
                    .get_mut("data")
                    .map(Json::take)
                    .ok_or_else(|| SnowflakeError::Protocol("query response has no data".into()));
            }
            let path = resp
                .pointer("/data/getResultUrl")
                .and_then(Json::as_str)
                .ok_or_else(|| {
                    SnowflakeError::Protocol("in-progress response without getResultUrl".into())
                })?
                .to_owned();
            tokio::time::sleep(Duration::from_millis(500)).await;
            let url = format!("{}{}", self.cfg.base_url, path);
            resp = send_with_retry(&self.cfg.retry, &self.stats, "/queries/result", |_| {
                self.http
                    .get(&url)
                    .header("Authorization", format!("Snowflake Token=\"{token}\""))
                    .header("Accept", "application/snowflake")
            })
            .await?;
        }
    }

    /// Runs one statement and decodes its rows.
    pub async fn query(&self, sql: &str, binds: &[Bind]) -> Result<QueryResult, SnowflakeError> {
        let data = self.query_raw(sql, binds).await?;
        let mut result = decode_result(&data)?;
        if let Some(chunks) = data.get("chunks").and_then(Json::as_array) {
            for chunk in chunks {
                self.fetch_chunk(&data, chunk, &mut result).await?;
            }
        }
        Ok(result)
    }

    async fn fetch_chunk(
        &self,
        data: &Json,
        chunk: &Json,
        into: &mut QueryResult,
    ) -> Result<(), SnowflakeError> {
        let url = chunk
            .get("url")
            .and_then(Json::as_str)
            .ok_or_else(|| SnowflakeError::Protocol("chunk without url".into()))?;
        let headers = data.get("chunkHeaders").and_then(Json::as_object).cloned();
        let qrmk = data.get("qrmk").and_then(Json::as_str).map(str::to_owned);
        let bytes = send_bytes_with_retry(&self.cfg.retry, &self.stats, "chunk", || {
            let mut req = self.http.get(url);
            match (&headers, &qrmk) {
                (Some(h), _) => {
                    for (k, v) in h {
                        req = req.header(k.as_str(), v.as_str().unwrap_or_default());
                    }
                }
                (None, Some(key)) => {
                    req = req
                        .header("x-amz-server-side-encryption-customer-algorithm", "AES256")
                        .header("x-amz-server-side-encryption-customer-key", key.as_str());
                }
                _ => {}
            }
            req
        })
        .await?;
        let bytes = if bytes.starts_with(&[0x1f, 0x8b]) {
            let mut out = Vec::new();
            std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&bytes[..]), &mut out)
                .map_err(|e| SnowflakeError::Protocol(format!("chunk gzip: {e}")))?;
            out
        } else {
            bytes
        };
        if data.get("queryResultFormat").and_then(Json::as_str) == Some("arrow") {
            decode_arrow(&bytes, &into.columns, &mut into.rows)
        } else {
            let mut text = Vec::with_capacity(bytes.len() + 2);
            text.push(b'[');
            text.extend_from_slice(&bytes);
            text.push(b']');
            let rows: Vec<Vec<Json>> = serde_json::from_slice(&text)
                .map_err(|e| SnowflakeError::Protocol(format!("json chunk: {e}")))?;
            into.rows
                .extend(rows.into_iter().map(|r| convert_json_row(r, &into.columns)));
            Ok(())
        }
    }

    /// Ends the session (best effort).
    pub async fn close(&self) {
        let token = self.session.read().await.token.clone();
        let _ = self
            .http
            .post(format!(
                "{}/session?delete=true&requestId={}",
                self.cfg.base_url,
                uuid::Uuid::new_v4()
            ))
            .header("Authorization", format!("Snowflake Token=\"{token}\""))
            .header("Accept", "application/snowflake")
            .json(&json!({}))
            .send()
            .await;
    }

    /// The shared statistics (retries and renewals are counted here).
    pub fn stats(&self) -> &Arc<SinkStats> {
        &self.stats
    }
}

/// Sends a JSON request with retries and returns the parsed body, or the Snowflake error it holds.
async fn send_with_retry(
    policy: &RetryPolicy,
    stats: &SinkStats,
    endpoint: &str,
    build: impl Fn(u32) -> reqwest::RequestBuilder,
) -> Result<Json, SnowflakeError> {
    send_retrying(policy, stats, endpoint, build, |status, bytes| {
        let parsed: Option<Json> = serde_json::from_slice(&bytes).ok();
        if let Some(err) = parsed.as_ref().and_then(server_error) {
            return Err(err);
        }
        match parsed {
            Some(body) if status.is_success() => Ok(body),
            _ => Err(http_error(status, endpoint_of(endpoint), &bytes)),
        }
    })
    .await
}

/// Sends a request with retries and returns the raw body of a 2xx response.
pub(crate) async fn send_bytes_with_retry(
    policy: &RetryPolicy,
    stats: &SinkStats,
    endpoint: &str,
    build: impl Fn() -> reqwest::RequestBuilder,
) -> Result<Vec<u8>, SnowflakeError> {
    send_retrying(
        policy,
        stats,
        endpoint,
        |_| build(),
        |status, bytes| {
            if status.is_success() {
                Ok(bytes)
            } else {
                Err(SnowflakeError::Http {
                    status: status.as_u16(),
                    endpoint: endpoint.into(),
                    body: storage_error(&bytes),
                })
            }
        },
    )
    .await
}

/// The code and message of a cloud storage error (S3, GCS and Azure answer in XML), and nothing
/// else: S3's `SignatureDoesNotMatch` also echoes the access key id and the canonical request,
/// whose signed headers include the session token.
fn storage_error(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let element = |name: &str| {
        let start = text.find(&format!("<{name}>"))? + name.len() + 2;
        let len = text[start..].find(&format!("</{name}>"))?;
        Some(text[start..start + len].trim().to_owned())
    };
    match (element("Code"), element("Message")) {
        (Some(code), Some(message)) => format!("{code}: {message}"),
        (Some(code), None) => code,
        _ => format!("({} bytes, not a storage error document)", body.len()),
    }
}

/// Sends the request `build` makes for each attempt (numbered from 0) and hands the status and
/// body of the response to `read`, until it succeeds, fails in a way that retrying cannot help, or
/// `policy` runs out of attempts.
async fn send_retrying<T>(
    policy: &RetryPolicy,
    stats: &SinkStats,
    endpoint: &str,
    build: impl Fn(u32) -> reqwest::RequestBuilder,
    read: impl Fn(reqwest::StatusCode, Vec<u8>) -> Result<T, SnowflakeError>,
) -> Result<T, SnowflakeError> {
    let transport = |source| SnowflakeError::transport(endpoint, source);
    let mut attempt = 0u32;
    loop {
        let result = match build(attempt).send().await {
            Ok(resp) => {
                let status = resp.status();
                match resp.bytes().await {
                    Ok(bytes) => read(status, bytes.to_vec()),
                    Err(e) => Err(transport(e)),
                }
            }
            Err(e) => Err(transport(e)),
        };
        match result {
            Err(e) if e.retryable() => {
                attempt += 1;
                if attempt >= policy.max_attempts {
                    return Err(SnowflakeError::RetriesExhausted {
                        attempts: attempt,
                        last: Box::new(e),
                    });
                }
                stats.retries.fetch_add(1, Ordering::Relaxed);
                // The whole chain: the transport error's sources say why (connection refused,
                // timed out), which is what the operator needs. (No URL: `transport` drops it,
                // as a presigned one carries a token.)
                let error = crate::error_chain(&e);
                tracing::warn!(endpoint, attempt, %error, "retrying snowflake request");
                tokio::time::sleep(policy.backoff(attempt)).await;
            }
            other => return other,
        }
    }
}

/// A non-2xx answer, with the start of its body for the message.
fn http_error(status: reqwest::StatusCode, endpoint: String, body: &[u8]) -> SnowflakeError {
    SnowflakeError::Http {
        status: status.as_u16(),
        endpoint,
        body: String::from_utf8_lossy(&body[..body.len().min(500)]).into_owned(),
    }
}

/// Decodes the first (inline) part of a query response's `data`.
pub fn decode_result(data: &Json) -> Result<QueryResult, SnowflakeError> {
    let columns: Vec<ColumnMeta> = data
        .get("rowtype")
        .and_then(Json::as_array)
        .map(|cols| {
            cols.iter()
                .map(|c| ColumnMeta {
                    name: c
                        .get("name")
                        .and_then(Json::as_str)
                        .unwrap_or_default()
                        .to_owned(),
                    type_name: c
                        .get("type")
                        .and_then(Json::as_str)
                        .unwrap_or_default()
                        .to_lowercase(),
                    scale: c.get("scale").and_then(Json::as_i64),
                    precision: c.get("precision").and_then(Json::as_i64),
                })
                .collect()
        })
        .unwrap_or_default();
    let query_id = data
        .get("queryId")
        .and_then(Json::as_str)
        .unwrap_or_default()
        .to_owned();
    let mut rows = Vec::new();
    match data.get("queryResultFormat").and_then(Json::as_str) {
        Some("arrow") => {
            let b64 = data
                .get("rowsetBase64")
                .and_then(Json::as_str)
                .unwrap_or_default();
            if !b64.is_empty() {
                let bytes = B64
                    .decode(b64)
                    .map_err(|e| SnowflakeError::Protocol(format!("rowsetBase64: {e}")))?;
                decode_arrow(&bytes, &columns, &mut rows)?;
            }
        }
        _ => {
            if let Some(rowset) = data.get("rowset").and_then(Json::as_array) {
                for r in rowset {
                    let r = r.as_array().cloned().unwrap_or_default();
                    rows.push(convert_json_row(r, &columns));
                }
            }
        }
    }
    Ok(QueryResult {
        query_id,
        columns,
        rows,
    })
}

fn convert_json_row(row: Vec<Json>, columns: &[ColumnMeta]) -> Vec<Json> {
    row.into_iter()
        .enumerate()
        .map(|(i, v)| match (v, columns.get(i)) {
            (Json::String(s), Some(c)) => convert_json_cell(s, c),
            (v, _) => v,
        })
        .collect()
}

fn convert_json_cell(s: String, c: &ColumnMeta) -> Json {
    match c.type_name.as_str() {
        "fixed" if c.scale.unwrap_or(0) == 0 => {
            s.parse::<i64>().map(Json::from).unwrap_or(Json::String(s))
        }
        "real" => float_json(s.parse::<f64>().unwrap_or(f64::NAN)),
        "boolean" => Json::Bool(s == "1" || s.eq_ignore_ascii_case("true")),
        t if t.starts_with("timestamp") => {
            // "<seconds>.<fraction>" (TZ adds " <offset>"), since the epoch.
            let num = s.split(' ').next().unwrap_or(&s);
            let (secs, frac) = num.split_once('.').unwrap_or((num, "0"));
            match (
                secs.parse::<i64>(),
                format!("{frac:0<6}")[..6].parse::<i64>(),
            ) {
                (Ok(secs), Ok(us)) => {
                    let us = if secs < 0 && us > 0 {
                        secs * 1_000_000 - us
                    } else {
                        secs * 1_000_000 + us
                    };
                    Json::String(crate::row::format_timestamp(us))
                }
                _ => Json::String(s),
            }
        }
        "date" => match s.parse::<i64>() {
            Ok(days) => chrono::DateTime::from_timestamp(days * 86_400, 0)
                .map(|d| Json::String(d.format("%Y-%m-%d").to_string()))
                .unwrap_or(Json::String(s)),
            Err(_) => Json::String(s),
        },
        _ => Json::String(s),
    }
}

fn float_json(f: f64) -> Json {
    serde_json::Number::from_f64(f)
        .map(Json::Number)
        .unwrap_or_else(|| {
            Json::String(if f.is_nan() {
                "NaN".into()
            } else if f > 0.0 {
                "inf".into()
            } else {
                "-inf".into()
            })
        })
}

/// Makes every field (and struct child) nullable. fakesnow declares TIMESTAMP_NTZ's struct
/// children `epoch`/`fraction` non-nullable yet sends nulls under a non-null struct for NULL
/// timestamps, which arrow-rs' validation rejects; relaxing the declared schema keeps the data.
fn relax(field: &arrow_schema::Field) -> arrow_schema::Field {
    use arrow_schema::DataType as D;
    let dt = match field.data_type() {
        D::Struct(children) => D::Struct(children.iter().map(|c| Arc::new(relax(c))).collect()),
        other => other.clone(),
    };
    field.clone().with_data_type(dt).with_nullable(true)
}

fn decode_arrow(
    bytes: &[u8],
    columns: &[ColumnMeta],
    rows: &mut Vec<Vec<Json>>,
) -> Result<(), SnowflakeError> {
    let err = |m: String| SnowflakeError::Protocol(format!("arrow stream: {m}"));
    let mut schema: Option<Arc<arrow_schema::Schema>> = None;
    let dictionaries = std::collections::HashMap::new();
    let mut pos = 0usize;
    // The IPC stream format: [0xFFFFFFFF] <i32 metadata length> <Message flatbuffer> <body>.
    while pos + 4 <= bytes.len() {
        let mut len = i32::from_le_bytes(bytes[pos..pos + 4].try_into().unwrap_or_default());
        pos += 4;
        if len == -1 {
            if pos + 4 > bytes.len() {
                break;
            }
            len = i32::from_le_bytes(bytes[pos..pos + 4].try_into().unwrap_or_default());
            pos += 4;
        }
        if len <= 0 {
            break; // end-of-stream marker
        }
        let len = len as usize;
        let meta = bytes
            .get(pos..pos + len)
            .ok_or_else(|| err("truncated metadata".into()))?;
        pos += len;
        let message = arrow_ipc::root_as_message(meta).map_err(|e| err(e.to_string()))?;
        let body_len = message.bodyLength() as usize;
        let body = bytes
            .get(pos..pos + body_len)
            .ok_or_else(|| err("truncated body".into()))?;
        pos += body_len;
        match message.header_type() {
            arrow_ipc::MessageHeader::Schema => {
                let fb = message
                    .header_as_schema()
                    .ok_or_else(|| err("bad schema message".into()))?;
                let s = arrow_ipc::convert::fb_to_schema(fb);
                let fields: Vec<arrow_schema::Field> =
                    s.fields().iter().map(|f| relax(f)).collect();
                schema = Some(Arc::new(arrow_schema::Schema::new_with_metadata(
                    fields,
                    s.metadata().clone(),
                )));
            }
            arrow_ipc::MessageHeader::RecordBatch => {
                let fb = message
                    .header_as_record_batch()
                    .ok_or_else(|| err("bad batch message".into()))?;
                let schema = schema
                    .clone()
                    .ok_or_else(|| err("record batch before schema".into()))?;
                let buf = arrow_buffer::Buffer::from(body.to_vec());
                let batch = arrow_ipc::reader::read_record_batch(
                    &buf,
                    fb,
                    schema,
                    &dictionaries,
                    None,
                    &message.version(),
                )
                .map_err(|e| err(e.to_string()))?;
                push_batch(&batch, columns, rows);
            }
            other => return Err(err(format!("unsupported message {other:?}"))),
        }
    }
    Ok(())
}

fn push_batch(batch: &arrow_array::RecordBatch, columns: &[ColumnMeta], rows: &mut Vec<Vec<Json>>) {
    let schema = batch.schema();
    let base = rows.len();
    rows.extend((0..batch.num_rows()).map(|_| Vec::with_capacity(batch.num_columns())));
    for (ci, col) in batch.columns().iter().enumerate() {
        let field = schema.field(ci);
        let md = field.metadata();
        let logical = md
            .get("logicalType")
            .map(|s| s.to_lowercase())
            .or_else(|| columns.get(ci).map(|c| c.type_name.clone()));
        let scale = md
            .get("scale")
            .and_then(|s| s.parse::<i64>().ok())
            .or_else(|| columns.get(ci).and_then(|c| c.scale))
            .unwrap_or(0);
        for r in 0..batch.num_rows() {
            rows[base + r].push(arrow_cell(
                col.as_ref(),
                r,
                logical.as_deref().unwrap_or(""),
                scale,
            ));
        }
    }
}

fn scaled_int(v: i64, scale: i64, logical: &str) -> Json {
    if logical.starts_with("timestamp") {
        // Real Snowflake sends TIMESTAMP_NTZ as an integer in 10^-scale seconds.
        let us = match scale {
            s if s >= 6 => v / 10i64.pow((s - 6) as u32),
            s => v * 10i64.pow((6 - s) as u32),
        };
        return Json::String(crate::row::format_timestamp(us));
    }
    if logical == "date" {
        return chrono::DateTime::from_timestamp(v * 86_400, 0)
            .map(|d| Json::String(d.format("%Y-%m-%d").to_string()))
            .unwrap_or(Json::Null);
    }
    if scale <= 0 {
        return Json::from(v);
    }
    let p = 10i128.pow(scale as u32);
    let (neg, a) = (v < 0, (v as i128).abs());
    Json::String(format!(
        "{}{}.{:0width$}",
        if neg { "-" } else { "" },
        a / p,
        a % p,
        width = scale as usize
    ))
}

fn arrow_cell(col: &dyn arrow_array::Array, r: usize, logical: &str, scale: i64) -> Json {
    use arrow_array::cast::AsArray;
    use arrow_array::types::*;
    use arrow_schema::DataType as D;
    if col.is_null(r) {
        return Json::Null;
    }
    match col.data_type() {
        D::Int8 => scaled_int(
            col.as_primitive::<Int8Type>().value(r) as i64,
            scale,
            logical,
        ),
        D::Int16 => scaled_int(
            col.as_primitive::<Int16Type>().value(r) as i64,
            scale,
            logical,
        ),
        D::Int32 => scaled_int(
            col.as_primitive::<Int32Type>().value(r) as i64,
            scale,
            logical,
        ),
        D::Int64 => scaled_int(col.as_primitive::<Int64Type>().value(r), scale, logical),
        D::UInt64 => Json::from(col.as_primitive::<UInt64Type>().value(r)),
        D::Float32 => float_json(col.as_primitive::<Float32Type>().value(r) as f64),
        D::Float64 => float_json(col.as_primitive::<Float64Type>().value(r)),
        D::Boolean => Json::Bool(col.as_boolean().value(r)),
        D::Utf8 => Json::String(col.as_string::<i32>().value(r).to_owned()),
        D::LargeUtf8 => Json::String(col.as_string::<i64>().value(r).to_owned()),
        D::Binary => Json::String(hex::encode(col.as_binary::<i32>().value(r))),
        D::Date32 => scaled_int(col.as_primitive::<Date32Type>().value(r) as i64, 0, "date"),
        D::Decimal128(_, s) => {
            let v = col.as_primitive::<Decimal128Type>().value(r);
            let s = *s as u32;
            if s == 0 {
                return i64::try_from(v)
                    .map(Json::from)
                    .unwrap_or_else(|_| Json::String(v.to_string()));
            }
            let p = 10i128.pow(s);
            let (neg, a) = (v < 0, v.abs());
            Json::String(format!(
                "{}{}.{:0width$}",
                if neg { "-" } else { "" },
                a / p,
                a % p,
                width = s as usize
            ))
        }
        D::Struct(_) => {
            // TIMESTAMP_NTZ/LTZ as {epoch: seconds, fraction: nanoseconds}.
            let s = col.as_struct();
            let (Some(epoch), Some(fraction)) =
                (s.column_by_name("epoch"), s.column_by_name("fraction"))
            else {
                return Json::String("<unsupported struct>".into());
            };
            if epoch.is_null(r) {
                return Json::Null;
            }
            let secs = epoch.as_primitive::<Int64Type>().value(r);
            let ns = fraction.as_primitive::<Int32Type>().value(r) as i64;
            Json::String(crate::row::format_timestamp(secs * 1_000_000 + ns / 1000))
        }
        other => Json::String(format!("<unsupported arrow type {other}>")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_errors_keep_only_their_code_and_message() {
        let s3 = br#"<?xml version="1.0" encoding="UTF-8"?>
<Error><Code>SignatureDoesNotMatch</Code><Message>The signature does not match.</Message><AWSAccessKeyId>ASIAEXAMPLE</AWSAccessKeyId><CanonicalRequest>PUT
x-amz-security-token:SESSION_SECRET</CanonicalRequest></Error>"#;
        assert_eq!(
            storage_error(s3),
            "SignatureDoesNotMatch: The signature does not match."
        );
        assert_eq!(
            storage_error(b"<Error><Code>ServiceUnavailable</Code></Error>"),
            "ServiceUnavailable"
        );
        assert_eq!(
            storage_error(b"upstream token=SECRET"),
            "(21 bytes, not a storage error document)"
        );
    }

    #[tokio::test]
    async fn a_failed_request_does_not_show_its_url() {
        // A port nothing listens on: the connection is refused.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("http://127.0.0.1:{port}/container/f.csv.gz?sv=1&sig=SAS_SECRET");
        let policy = RetryPolicy {
            max_attempts: 2,
            base_delay_ms: 1,
            ..RetryPolicy::default()
        };
        let stats = SinkStats::default();
        let http = reqwest::Client::new();
        let err = send_bytes_with_retry(&policy, &stats, "azure put", || http.put(&url))
            .await
            .unwrap_err();
        let shown = format!("{:#}", anyhow::Error::new(err));
        assert!(
            shown.starts_with("gave up after 2 attempts: request to azure put failed"),
            "{shown}"
        );
        assert!(!shown.contains("SAS_SECRET"), "{shown}");
        assert_eq!(stats.retries.load(Ordering::Relaxed), 1);
    }

    const TEST_KEY: &str = include_str!("testdata/test_key.pem");
    const TEST_PUBLIC_KEY: &str = include_str!("testdata/test_key.pub.pem");

    #[test]
    fn jwt_claims_and_signature_verify_with_the_public_key() {
        let kp = KeyPair::from_pem(TEST_KEY, None).unwrap();
        let now = chrono::Utc::now().timestamp();
        let token = kp.jwt("myorg-acct.us-east-1", "loader", now).unwrap();
        let key = jsonwebtoken::DecodingKey::from_rsa_pem(TEST_PUBLIC_KEY.as_bytes()).unwrap();
        let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
        v.validate_nbf = true;
        let data = jsonwebtoken::decode::<JwtClaims>(&token, &key, &v).unwrap();
        assert_eq!(data.header.alg, jsonwebtoken::Algorithm::RS256);
        assert_eq!(data.claims.sub, "MYORG-ACCT.LOADER");
        // The fingerprint computed independently from the public PEM (SPKI DER → SHA-256).
        let der: Vec<u8> = B64
            .decode(
                TEST_PUBLIC_KEY
                    .lines()
                    .filter(|l| !l.starts_with("-----"))
                    .collect::<String>(),
            )
            .unwrap();
        let fp = B64.encode(Sha256::digest(&der));
        assert_eq!(data.claims.iss, format!("MYORG-ACCT.LOADER.SHA256:{fp}"));
        assert_eq!(data.claims.exp - data.claims.iat, 3600);
        assert_eq!(data.claims.nbf, now);
        // A different key must not verify.
        let other =
            jsonwebtoken::DecodingKey::from_rsa_pem(include_bytes!("testdata/other_key.pub.pem"))
                .unwrap();
        assert!(jsonwebtoken::decode::<JwtClaims>(&token, &other, &v).is_err());
    }

    #[test]
    fn encrypted_key_needs_its_passphrase() {
        let enc = include_str!("testdata/test_key.enc.pem");
        let plain = KeyPair::from_pem(TEST_KEY, None).unwrap();
        assert!(KeyPair::from_pem(enc, None).is_err());
        assert!(KeyPair::from_pem(enc, Some("wrong")).is_err());
        assert_eq!(
            KeyPair::from_pem(enc, Some("sluice-test"))
                .unwrap()
                .fingerprint(),
            plain.fingerprint()
        );
    }

    #[test]
    fn jwt_account_drops_region_and_uppercases() {
        assert_eq!(jwt_account("xy12345.us-east-2.aws"), "XY12345");
        assert_eq!(jwt_account("myorg-myacct"), "MYORG-MYACCT");
    }

    #[test]
    fn decodes_fakesnow_arrow_status_rowset() {
        // Recorded from fakesnow 0.12.1 (PROTOCOL.md fixture `connector_calls.jsonl`).
        let data = json!({
            "rowtype": [{"name": "status", "type": "text", "scale": null}],
            "queryId": "cc7154a0", "queryResultFormat": "arrow",
            "rowsetBase64": "/////zABAAAQAAAAAAAKAAwABgAFAAgACgAAAAABBAAMAAAACAAIAAAABAAIAAAABAAAAAEAAAAYAAAAAAASABgACAAGAAcADAAAABAAFAASAAAAAAABBRQAAADUAAAACAAAABQAAAAAAAAABgAAAHN0YXR1cwAABAAAAIgAAABYAAAANAAAAAQAAACQ////GAAAAAQAAAAIAAAAMTY3NzcyMTYAAAAACgAAAGNoYXJMZW5ndGgAALz///8QAAAABAAAAAEAAAAwAAAABQAAAHNjYWxlAAAA3P///xAAAAAEAAAAAgAAADM4AAAJAAAAcHJlY2lzaW9uAAAACAAMAAQACAAIAAAAFAAAAAQAAAAEAAAAVEVYVAAAAAALAAAAbG9naWNhbFR5cGUABAAEAAQAAAAAAAAA/////5gAAAAUAAAAAAAAAAwAFgAGAAUACAAMAAwAAAAAAwQAGAAAADAAAAAAAAAAAAAKABgADAAEAAgACgAAAEwAAAAQAAAAAQAAAAAAAAAAAAAAAwAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAgAAAAAAAAACAAAAAAAAAAnAAAAAAAAAAAAAAABAAAAAQAAAAAAAAAAAAAAAAAAAAAAAAAnAAAAVGFibGUgQ09OTl9FVkVOVFMgc3VjY2Vzc2Z1bGx5IGNyZWF0ZWQuAP////8AAAAA"
        });
        let r = decode_result(&data).unwrap();
        assert_eq!(
            r.rows,
            vec![vec![json!("Table CONN_EVENTS successfully created.")]]
        );
    }

    #[test]
    fn decodes_json_rowsets_by_type() {
        let data = json!({
            "rowtype": [
                {"name": "N", "type": "fixed", "scale": 0}, {"name": "D", "type": "fixed", "scale": 2},
                {"name": "F", "type": "real"}, {"name": "B", "type": "boolean"},
                {"name": "T", "type": "timestamp_ntz", "scale": 9}, {"name": "S", "type": "text"}
            ],
            "queryResultFormat": "json",
            "rowset": [["5", "1.50", "2.5", "1", "1704164645.123456000", "x"], [null, null, "NaN", "0", null, null]]
        });
        let r = decode_result(&data).unwrap();
        assert_eq!(
            r.rows[0],
            vec![
                json!(5),
                json!("1.50"),
                json!(2.5),
                json!(true),
                json!("2024-01-02T03:04:05.123456"),
                json!("x")
            ]
        );
        assert_eq!(
            r.rows[1],
            vec![
                Json::Null,
                Json::Null,
                json!("NaN"),
                json!(false),
                Json::Null,
                Json::Null
            ]
        );
    }

    #[test]
    fn error_envelopes_of_both_shapes() {
        let fake = json!({"data":{"errorCode":"002003","sqlState":"42S02"},"code":"002003",
            "message":"002003 (42S02): Catalog Error: Table with name NOPE does not exist!","success":false});
        match server_error(&fake).unwrap() {
            SnowflakeError::Server {
                code,
                sql_state,
                message,
                ..
            } => {
                assert_eq!(code, "002003");
                assert_eq!(sql_state.as_deref(), Some("42S02"));
                assert_eq!(
                    message,
                    "Catalog Error: Table with name NOPE does not exist!"
                );
            }
            other => panic!("{other:?}"),
        }
        let real = json!({"data":{"type":"COMPILATION","errorCode":"002003","sqlState":"42S02","queryId":"01b2"},
            "code":"002003","message":"SQL compilation error:\nObject 'NOPE' does not exist.","success":false});
        let e = server_error(&real).unwrap();
        assert!(e.to_string().contains("query id 01b2"), "{e}");
        assert_eq!(e.code(), Some("002003"));
        assert!(server_error(&json!({"success": true, "data": {}})).is_none());
    }

    #[test]
    fn backoff_is_bounded() {
        let p = RetryPolicy {
            max_attempts: 5,
            base_delay_ms: 100,
            max_delay_ms: 1000,
            request_timeout_ms: 1,
        };
        for retry in 1..20 {
            assert!(p.backoff(retry) <= Duration::from_millis(1000));
        }
        assert!(p.backoff(1) <= Duration::from_millis(100));
    }

    #[test]
    fn secrets_do_not_debug_print() {
        let a = Auth::Password(Secret("hunter2".into()));
        assert!(!format!("{a:?}").contains("hunter2"));
        let s = Session {
            token: "tok-123".into(),
            master_token: Some("mt-456".into()),
            epoch: 1,
        };
        let shown = format!("{s:?}");
        assert!(
            !shown.contains("tok-123") && !shown.contains("mt-456"),
            "{shown}"
        );
    }
}
