//! An S3-stage double in front of the fakesnow emulator.
//!
//! It proxies the Snowflake REST calls to fakesnow, except that it rewrites the answer to a
//! `PUT` statement into what an S3-backed account sends: `stageInfo` of type `S3` with
//! temporary credentials and `encryptionMaterial` with a master key. It then plays S3 for the
//! upload: every `HEAD`/`PUT` must carry a valid SigV4 signature (checked by an implementation
//! written here from the AWS spec, not by the signing crate the sink uses) made with those
//! credentials and the session token; a `PUT` must carry the wrapped file key, IV and `matdesc`
//! metadata, decrypt under the master key, and match its `sfc-digest`. The plaintext is then
//! handed to fakesnow's own presigned URL, so `COPY` loads exactly what the sink meant to send.
//! Anything that fails a check is answered with 403/400 and recorded in `rejections`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use serde_json::{Value as Json, json};
use sha2::{Digest, Sha256};

/// The bucket the double pretends to be.
pub const BUCKET: &str = "sluice-test-stage";
/// Temporary credentials it hands out.
pub const KEY_ID: &str = "ASIASLUICETEST0001";
/// Their secret.
pub const SECRET: &str = "sluice/test/secret/key/0123456789abcdef";
/// Their session token.
pub const TOKEN: &str = "sluice-session-token-42";
/// Region of the fake bucket.
pub const REGION: &str = "us-west-2";

/// What the double saw.
#[derive(Debug, Default, Clone)]
pub struct Observed {
    /// HEAD requests.
    pub heads: u32,
    /// HEADs answered 200 (object existed).
    pub head_hits: u32,
    /// Accepted PUT uploads.
    pub puts: u32,
    /// Plaintext of every accepted upload, by object key.
    pub objects: HashMap<String, Vec<u8>>,
    /// Requests refused, with the reason.
    pub rejections: Vec<String>,
    /// PUT statements rewritten.
    pub put_statements: u32,
    /// Uploads answered 503 on purpose (see [`S3Double::fail_next_puts`]).
    pub failed_on_purpose: u32,
    /// Session tokens renewed through `/session/token-request`.
    pub token_renewals: u32,
    /// Path and query of every query-request, in order.
    pub query_requests: Vec<String>,
}

struct State {
    fakesnow: String,
    master_key: Vec<u8>,
    presigned: HashMap<String, String>,
    /// The `sfc-digest` of each object stored, by key.
    stored: HashMap<String, String>,
    observed: Observed,
    http: reqwest::Client,
    fail_puts: u32,
    fail_statement: Option<(String, &'static str)>,
    hold_statement: Option<Hold>,
    master_tokens: bool,
}

/// A statement to hold back (see [`S3Double::hold_next_statement`]).
struct Hold {
    prefix: String,
    held: tokio::sync::oneshot::Sender<()>,
    release: tokio::sync::oneshot::Receiver<()>,
}

/// A running double.
pub struct S3Double {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for S3Double {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Resp = Response<Full<Bytes>>;

fn reply(status: u16, body: impl Into<Bytes>) -> Resp {
    Response::builder()
        .status(status)
        .body(Full::new(body.into()))
        .expect("response")
}

impl S3Double {
    /// Starts the double in front of the fakesnow server at `fakesnow_url`, with a master key of
    /// `key_bytes` (16 or 32).
    pub async fn start(fakesnow_url: &str, key_bytes: usize) -> S3Double {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let master_key: Vec<u8> = (0..key_bytes)
            .map(|i| (i as u8).wrapping_mul(37).wrapping_add(11))
            .collect();
        let state = Arc::new(Mutex::new(State {
            fakesnow: fakesnow_url.trim_end_matches('/').to_owned(),
            master_key,
            presigned: HashMap::new(),
            stored: HashMap::new(),
            observed: Observed::default(),
            http: reqwest::Client::new(),
            fail_puts: 0,
            fail_statement: None,
            hold_statement: None,
            master_tokens: false,
        }));
        let st = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let st = st.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let st = st.clone();
                        async move { Ok::<_, std::convert::Infallible>(handle(st, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        S3Double { addr, state, task }
    }

    /// The URL to use as the account URL (Snowflake REST) and as the S3 endpoint (path style).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Answers the next `n` uploads with 503 SlowDown, as S3 does under load.
    pub fn fail_next_puts(&self, n: u32) {
        self.state.lock().expect("state").fail_puts = n;
    }

    /// Answers the next statement starting with `prefix` with Snowflake error `code` (or, for
    /// `"http503"`, a bare HTTP 503; for `"conflict"`, fakesnow's answer to a statement DuckDB
    /// aborted on another session's conflicting transaction) instead of passing it on (the server never sees it): e.g. `("COMMIT", "000603")` fails a transaction
    /// at its end, `("DELETE", "390104")` pretends the session is gone in the middle of one.
    /// A code written `after:390104` fails it only after passing it on: the server ran it, and
    /// its answer is lost.
    pub fn fail_next_statement(&self, prefix: &str, code: &'static str) {
        self.state.lock().expect("state").fail_statement = Some((prefix.to_uppercase(), code));
    }

    /// Holds the next statement starting with `prefix` before passing it on, as a slow warehouse
    /// would: the first receiver fires once it is held, and it goes on once the sender is used
    /// or dropped.
    pub fn hold_next_statement(
        &self,
        prefix: &str,
    ) -> (
        tokio::sync::oneshot::Receiver<()>,
        tokio::sync::oneshot::Sender<()>,
    ) {
        let (held, held_rx) = tokio::sync::oneshot::channel();
        let (release_tx, release) = tokio::sync::oneshot::channel();
        self.state.lock().expect("state").hold_statement = Some(Hold {
            prefix: prefix.to_uppercase(),
            held,
            release,
        });
        (held_rx, release_tx)
    }

    /// From now on, logins answer with a `masterToken` (as real Snowflake does and fakesnow does
    /// not) and `/session/token-request` renews session tokens: the renewed token is
    /// `renewed-<n>:<fakesnow token>`, translated back when proxying.
    pub fn enable_master_tokens(&self) {
        self.state.lock().expect("state").master_tokens = true;
    }

    /// A copy of what it saw so far.
    pub fn observed(&self) -> Observed {
        self.state.lock().expect("state").observed.clone()
    }
}

/// The answer to a statement failed on purpose with Snowflake error `code` (or HTTP 503, or
/// fakesnow's conflict).
fn injected(code: &str) -> Resp {
    if code == "http503" {
        return reply(503, "Service Unavailable");
    }
    if code == "conflict" {
        let message = "sql_text='...' params=() Unhandled exception";
        return reply(
            500,
            json!({"data": null, "code": "261000", "message": message, "success": false,
                "headers": null})
            .to_string(),
        );
    }
    // Snowflake answers an expired session (390112) with 200; fakesnow a gone one with 401.
    let status = if code.starts_with("3901") && code != "390112" {
        401
    } else {
        200
    };
    reply(
        status,
        json!({"data": {"errorCode": code, "sqlState": "XX000", "queryId": "injected"},
            "code": code, "message": "injected failure", "success": false})
        .to_string(),
    )
}

async fn handle(st: Arc<Mutex<State>>, req: Request<Incoming>) -> Resp {
    let path = req.uri().path().to_owned();
    if path.starts_with("/session")
        || path.starts_with("/queries")
        || path.starts_with("/monitoring")
    {
        return proxy(st, req).await;
    }
    let result = match req.method().as_str() {
        "HEAD" => s3_head(&st, req).await,
        "PUT" => s3_put(&st, req).await,
        m => Err((405, format!("unexpected {m} {path}"))),
    };
    match result {
        Ok(r) => r,
        Err((status, reason)) => {
            st.lock()
                .expect("state")
                .observed
                .rejections
                .push(reason.clone());
            reply(status, reason)
        }
    }
}

fn token_of(auth: &str) -> Option<&str> {
    auth.strip_prefix("Snowflake Token=\"")?.strip_suffix('"')
}

async fn token_request(st: Arc<Mutex<State>>, req: Request<Incoming>) -> Resp {
    let auth = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let body: Json = serde_json::from_slice(&body).unwrap_or(Json::Null);
    let mut s = st.lock().expect("state");
    let old = body["oldSessionToken"].as_str().unwrap_or("");
    let original = old.split_once(':').map_or(old, |(_, t)| t).to_owned();
    if !s.master_tokens
        || body["requestType"] != "RENEW"
        || token_of(&auth) != Some(format!("master-{original}").as_str())
    {
        s.observed
            .rejections
            .push(format!("bad token-request: {auth} {body}"));
        return reply(
            401,
            json!({"success": false, "code": "390104", "message": "bad renew"}).to_string(),
        );
    }
    s.observed.token_renewals += 1;
    let n = s.observed.token_renewals;
    reply(
        200,
        json!({"data": {"sessionToken": format!("renewed-{n}:{original}"), "validityInSecondsST": 3600,
            "masterToken": format!("master-{original}"), "validityInSecondsMT": 14400}, "success": true})
        .to_string(),
    )
}

async fn proxy(st: Arc<Mutex<State>>, req: Request<Incoming>) -> Resp {
    if req.uri().path() == "/session/token-request" {
        return token_request(st, req).await;
    }
    let is_login = req.uri().path() == "/session/v1/login-request";
    if req.uri().path() == "/queries/v1/query-request" {
        let pq = req
            .uri()
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_default();
        st.lock().expect("state").observed.query_requests.push(pq);
    }
    let (http, base) = {
        let s = st.lock().expect("state");
        (s.http.clone(), s.fakesnow.clone())
    };
    let url = format!(
        "{base}{}",
        req.uri()
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/")
    );
    let method = req.method().clone();
    let mut headers = reqwest::header::HeaderMap::new();
    for name in [
        "authorization",
        "content-type",
        "accept",
        "content-encoding",
    ] {
        if let Some(v) = req.headers().get(name)
            && let Ok(v) = reqwest::header::HeaderValue::from_bytes(v.as_bytes())
        {
            headers.insert(name, v);
        }
    }
    // A renewed token stands for the fakesnow token it was made from.
    if let Some(t) = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(token_of)
        && let Some((_, original)) = t.split_once(':')
        && let Ok(v) =
            reqwest::header::HeaderValue::from_str(&format!("Snowflake Token=\"{original}\""))
    {
        headers.insert("authorization", v);
    }
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let sql = serde_json::from_slice::<Json>(&body).ok().and_then(|j| {
        j.get("sqlText")
            .and_then(Json::as_str)
            .map(|s| s.trim_start().to_uppercase())
    });
    let hold = sql.as_ref().and_then(|sql| {
        let mut s = st.lock().expect("state");
        let matches =
            (s.hold_statement.as_ref()).is_some_and(|h| sql.starts_with(h.prefix.as_str()));
        matches.then(|| s.hold_statement.take()).flatten()
    });
    if let Some(hold) = hold {
        let _ = hold.held.send(());
        let _ = hold.release.await;
    }
    let mut fail_after = None;
    if let Some(sql) = &sql {
        let mut s = st.lock().expect("state");
        if let Some((prefix, code)) = s.fail_statement.clone()
            && sql.starts_with(prefix.as_str())
        {
            s.fail_statement = None;
            match code.strip_prefix("after:") {
                Some(code) => fail_after = Some(code),
                None => return injected(code),
            }
        }
    }
    let is_put = serde_json::from_slice::<Json>(&body)
        .ok()
        .and_then(|j| {
            j.get("sqlText")
                .and_then(Json::as_str)
                .map(|s| s.trim_start().to_uppercase().starts_with("PUT "))
        })
        .unwrap_or(false);
    let method = reqwest::Method::from_bytes(method.as_str().as_bytes()).expect("method");
    let resp = match http
        .request(method, &url)
        .headers(headers)
        .body(body.to_vec())
        .send()
        .await
    {
        Ok(r) => r,
        Err(e) => return reply(502, e.to_string()),
    };
    let status = resp.status().as_u16();
    let bytes = resp.bytes().await.unwrap_or_default();
    if let Some(code) = fail_after {
        return injected(code);
    }
    if is_login && st.lock().expect("state").master_tokens {
        let Ok(mut j) = serde_json::from_slice::<Json>(&bytes) else {
            return reply(status, bytes);
        };
        let token = j["data"]["token"].as_str().unwrap_or("").to_owned();
        j["data"]["masterToken"] = json!(format!("master-{token}"));
        j["data"]["validityInSeconds"] = json!(3600);
        return reply(status, j.to_string());
    }
    if !is_put {
        return reply(status, bytes);
    }
    let Ok(mut j) = serde_json::from_slice::<Json>(&bytes) else {
        return reply(status, bytes);
    };
    let Some(presigned) = j
        .pointer("/data/stageInfo/presignedUrl")
        .and_then(Json::as_str)
        .map(str::to_owned)
    else {
        return reply(status, bytes);
    };
    // fakesnow: http://host/fs_bucket/<DB>/<SCHEMA>/<STAGE>/<dir>/<file>
    let Some(rest) = presigned.split("/fs_bucket/").nth(1) else {
        return reply(status, bytes);
    };
    let (dir, _file) = rest.rsplit_once('/').unwrap_or(("", rest));
    let mut s = st.lock().expect("state");
    s.presigned.insert(rest.to_owned(), presigned.clone());
    s.observed.put_statements += 1;
    j["data"]["stageInfo"] = json!({
        "locationType": "S3",
        "location": format!("{BUCKET}/{dir}/"),
        "path": format!("{dir}/"),
        "region": REGION,
        "isClientSideEncrypted": true,
        "useS3RegionalUrl": false,
        "creds": {"AWS_KEY_ID": KEY_ID, "AWS_SECRET_KEY": SECRET, "AWS_TOKEN": TOKEN},
    });
    j["data"]["encryptionMaterial"] = json!({
        "queryStageMasterKey": B64.encode(&s.master_key),
        "queryId": "01b0-sluice-test",
        "smkId": 8675309,
    });
    reply(200, j.to_string())
}

fn object_key(path: &str) -> Result<String, (u16, String)> {
    let p = path.trim_start_matches('/');
    match p.split_once('/') {
        Some((b, key)) if b == BUCKET => Ok(key.to_owned()),
        _ => Err((404, format!("no such bucket in {path}"))),
    }
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut m = Hmac::<Sha256>::new_from_slice(key).expect("hmac key");
    m.update(data);
    m.finalize().into_bytes().to_vec()
}

/// Verifies a SigV4 header signature (AWS "Signature Version 4 signing process", S3 flavour:
/// the path is used as sent, no double encoding).
fn verify_sigv4(req: &Request<Incoming>, expect_unsigned_payload: bool) -> Result<(), String> {
    let h = |n: &str| {
        req.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let auth = h("authorization").ok_or("no authorization header")?;
    let rest = auth
        .strip_prefix("AWS4-HMAC-SHA256 ")
        .ok_or("not AWS4-HMAC-SHA256")?;
    let mut cred = None;
    let mut signed = None;
    let mut sig = None;
    for part in rest.split(',') {
        let part = part.trim();
        if let Some(v) = part.strip_prefix("Credential=") {
            cred = Some(v.to_owned());
        } else if let Some(v) = part.strip_prefix("SignedHeaders=") {
            signed = Some(v.to_owned());
        } else if let Some(v) = part.strip_prefix("Signature=") {
            sig = Some(v.to_owned());
        }
    }
    let (cred, signed, sig) = (
        cred.ok_or("no Credential")?,
        signed.ok_or("no SignedHeaders")?,
        sig.ok_or("no Signature")?,
    );
    let parts: Vec<&str> = cred.split('/').collect();
    if parts.len() != 5
        || parts[0] != KEY_ID
        || parts[2] != REGION
        || parts[3] != "s3"
        || parts[4] != "aws4_request"
    {
        return Err(format!("bad credential scope {cred}"));
    }
    let date = parts[1];
    let amz_date = h("x-amz-date").ok_or("no x-amz-date")?;
    if !amz_date.starts_with(date) {
        return Err("x-amz-date does not match the credential date".into());
    }
    let when = chrono::NaiveDateTime::parse_from_str(&amz_date, "%Y%m%dT%H%M%SZ")
        .map_err(|e| e.to_string())?;
    if (chrono::Utc::now().naive_utc() - when).num_minutes().abs() > 15 {
        return Err("request time too skewed".into());
    }
    if h("x-amz-security-token").as_deref() != Some(TOKEN) {
        return Err("missing or wrong x-amz-security-token".into());
    }
    let payload = h("x-amz-content-sha256").ok_or("no x-amz-content-sha256")?;
    let empty = hex::encode(Sha256::digest(b""));
    match (expect_unsigned_payload, payload.as_str()) {
        (true, "UNSIGNED-PAYLOAD") => {}
        (false, p) if p == empty => {}
        (_, p) => return Err(format!("unexpected x-amz-content-sha256 {p}")),
    }
    let names: Vec<&str> = signed.split(';').collect();
    for needed in [
        "host",
        "x-amz-date",
        "x-amz-content-sha256",
        "x-amz-security-token",
    ] {
        if !names.contains(&needed) {
            return Err(format!("{needed} is not signed"));
        }
    }
    for (name, _) in req.headers() {
        if name.as_str().starts_with("x-amz-meta-") && !names.contains(&name.as_str()) {
            return Err(format!("{name} is not signed"));
        }
    }
    let mut canonical = format!("{}\n{}\n", req.method(), req.uri().path());
    let mut q: Vec<(String, String)> = req
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|s| !s.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (k.to_owned(), v.to_owned())
        })
        .collect();
    q.sort();
    canonical.push_str(
        &q.iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&"),
    );
    canonical.push('\n');
    for n in &names {
        let v = h(n).ok_or_else(|| format!("signed header {n} is absent"))?;
        let v = v.split_whitespace().collect::<Vec<_>>().join(" ");
        canonical.push_str(&format!("{n}:{v}\n"));
    }
    canonical.push('\n');
    canonical.push_str(&signed);
    canonical.push('\n');
    canonical.push_str(&payload);
    let scope = format!("{date}/{REGION}/s3/aws4_request");
    let sts = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        hex::encode(Sha256::digest(canonical.as_bytes()))
    );
    let k = hmac(format!("AWS4{SECRET}").as_bytes(), date.as_bytes());
    let k = hmac(&k, REGION.as_bytes());
    let k = hmac(&k, b"s3");
    let k = hmac(&k, b"aws4_request");
    let expected = hex::encode(hmac(&k, sts.as_bytes()));
    if expected != sig {
        return Err(format!(
            "signature mismatch; canonical request was:\n{canonical}"
        ));
    }
    Ok(())
}

async fn s3_head(st: &Arc<Mutex<State>>, req: Request<Incoming>) -> Result<Resp, (u16, String)> {
    verify_sigv4(&req, false).map_err(|e| (403, format!("HEAD: {e}")))?;
    let key = object_key(req.uri().path())?;
    let mut s = st.lock().expect("state");
    s.observed.heads += 1;
    if let Some(digest) = s.stored.get(&key).cloned() {
        s.observed.head_hits += 1;
        Ok(Response::builder()
            .status(200)
            .header("x-amz-meta-sfc-digest", digest)
            .body(Full::new(Bytes::new()))
            .expect("response"))
    } else {
        Ok(reply(404, Bytes::new()))
    }
}

fn decrypt(master: &[u8], wrapped: &[u8], iv: &[u8], data: &[u8]) -> Result<Vec<u8>, String> {
    use aes::cipher::{BlockDecryptMut, KeyInit, KeyIvInit, block_padding::Pkcs7};
    let file_key = match master.len() {
        16 => ecb::Decryptor::<aes::Aes128>::new(master.into())
            .decrypt_padded_vec_mut::<Pkcs7>(wrapped),
        _ => ecb::Decryptor::<aes::Aes256>::new(master.into())
            .decrypt_padded_vec_mut::<Pkcs7>(wrapped),
    }
    .map_err(|e| format!("unwrap: {e}"))?;
    if file_key.len() != master.len() {
        return Err(format!(
            "file key of {} bytes for a {}-byte master key",
            file_key.len(),
            master.len()
        ));
    }
    let iv: &[u8; 16] = iv.try_into().map_err(|_| "iv is not 16 bytes".to_owned())?;
    match file_key.len() {
        16 => cbc::Decryptor::<aes::Aes128>::new(file_key[..].into(), iv.into())
            .decrypt_padded_vec_mut::<Pkcs7>(data),
        _ => cbc::Decryptor::<aes::Aes256>::new(file_key[..].into(), iv.into())
            .decrypt_padded_vec_mut::<Pkcs7>(data),
    }
    .map_err(|e| format!("decrypt: {e}"))
}

async fn s3_put(st: &Arc<Mutex<State>>, req: Request<Incoming>) -> Result<Resp, (u16, String)> {
    verify_sigv4(&req, true).map_err(|e| (403, format!("PUT: {e}")))?;
    {
        let mut s = st.lock().expect("state");
        if s.fail_puts > 0 {
            s.fail_puts -= 1;
            s.observed.failed_on_purpose += 1;
            return Ok(reply(503, "<Error><Code>SlowDown</Code></Error>"));
        }
    }
    let key = object_key(req.uri().path())?;
    let h = |n: &str| {
        req.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let missing = |n: &str| (400, format!("PUT {key}: missing {n}"));
    let digest = h("x-amz-meta-sfc-digest").ok_or_else(|| missing("x-amz-meta-sfc-digest"))?;
    let wrapped = h("x-amz-meta-x-amz-key").ok_or_else(|| missing("x-amz-meta-x-amz-key"))?;
    let iv = h("x-amz-meta-x-amz-iv").ok_or_else(|| missing("x-amz-meta-x-amz-iv"))?;
    let matdesc =
        h("x-amz-meta-x-amz-matdesc").ok_or_else(|| missing("x-amz-meta-x-amz-matdesc"))?;
    if h("content-type").as_deref() != Some("application/octet-stream") {
        return Err((400, "content-type is not application/octet-stream".into()));
    }
    let body = req
        .into_body()
        .collect()
        .await
        .map_err(|e| (400, e.to_string()))?
        .to_bytes();
    let (master, http, presigned) = {
        let s = st.lock().expect("state");
        (
            s.master_key.clone(),
            s.http.clone(),
            s.presigned.get(&key).cloned(),
        )
    };
    let md: Json = serde_json::from_str(&matdesc).map_err(|e| (400, format!("matdesc: {e}")))?;
    let key_bits = (master.len() * 8).to_string();
    if md["smkId"] != "8675309"
        || md["queryId"] != "01b0-sluice-test"
        || md["keySize"] != key_bits.as_str()
    {
        return Err((
            400,
            format!("matdesc {matdesc} does not echo the encryption material"),
        ));
    }
    let b64 = |s: &str| B64.decode(s).map_err(|e| (400, format!("base64: {e}")));
    let plain = decrypt(&master, &b64(&wrapped)?, &b64(&iv)?, &body)
        .map_err(|e| (400, format!("PUT {key}: {e}")))?;
    if B64.encode(Sha256::digest(&plain)) != digest {
        return Err((
            400,
            format!("PUT {key}: sfc-digest does not match the decrypted file"),
        ));
    }
    let presigned = presigned.ok_or_else(|| {
        (
            400,
            format!("PUT {key}: no PUT statement announced this object"),
        )
    })?;
    let r = http
        .put(&presigned)
        .body(plain.clone())
        .send()
        .await
        .map_err(|e| (502, e.to_string()))?;
    if !r.status().is_success() {
        return Err((
            502,
            format!("fakesnow refused the plaintext: {}", r.status()),
        ));
    }
    let mut s = st.lock().expect("state");
    s.stored.insert(key.clone(), digest);
    s.observed.puts += 1;
    s.observed.objects.insert(key, plain);
    Ok(Response::builder()
        .status(200)
        .header(
            "etag",
            format!("\"{}\"", hex::encode(&Sha256::digest(&body)[..16])),
        )
        .body(Full::new(Bytes::new()))
        .expect("response"))
}
