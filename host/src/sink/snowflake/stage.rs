//! Stage uploads: the SQL `PUT` only returns transfer instructions (`stageInfo`, maybe
//! `encryptionMaterial`); this module carries them out.
//!
//! * `presignedUrl` (what fakesnow and GCS-backed accounts return): a plain HTTP `PUT`.
//! * `S3`: `HEAD` the object first and skip the upload when it exists, so a file name that may
//!   already be loaded is never re-uploaded with new bytes (COPY's load history compares the
//!   ETag); otherwise `PUT` signed with SigV4 (`aws-sigv4`) using the temporary credentials.
//! * `AZURE` (SAS) and `GCS` with an access token are implemented from the drivers' sources but
//!   cannot be exercised here.
//!
//! With `encryptionMaterial`, the file is encrypted client-side the way every driver does it:
//! a random file key as long as the master key and a random 16-byte IV; the data is
//! AES-CBC/PKCS7 under the file key; the file key is AES-ECB/PKCS7-wrapped under the master key.
//! The wrapped key, IV and `matdesc` travel as object metadata, with `sfc-digest` (base64 SHA-256
//! of the plaintext file).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use aes::cipher::{BlockDecryptMut, BlockEncryptMut, KeyInit, KeyIvInit, block_padding::Pkcs7};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use rand::RngCore as _;
use serde_json::Value as Json;
use sha2::{Digest as _, Sha256};

use super::client::{RetryPolicy, SnowflakeError, send_bytes_with_retry};
use super::stats::SinkStats;

/// Transfer instructions from a `PUT` response.
#[derive(Clone, PartialEq)]
pub struct PutInstructions {
    /// `S3`, `AZURE`, `GCS` or `LOCAL_FS`.
    pub location_type: String,
    /// `<bucket or container>/<prefix>/`.
    pub location: String,
    /// Region of the bucket.
    pub region: Option<String>,
    /// Custom endpoint (FIPS, Azure `blob.core.windows.net`).
    pub end_point: Option<String>,
    /// Azure storage account.
    pub storage_account: Option<String>,
    /// Presigned upload URL (GCS / fakesnow); its query, which carries the signature, is
    /// redacted in `Debug`.
    pub presigned_url: Option<String>,
    /// Whether to use the regional S3 host.
    pub use_regional_url: bool,
    /// Temporary credentials, redacted in `Debug`.
    pub creds: StageCreds,
    /// Client-side encryption material.
    pub encryption: Option<EncryptionMaterial>,
}

/// Temporary stage credentials.
#[derive(Clone, Default, PartialEq)]
pub struct StageCreds {
    /// `AWS_KEY_ID`.
    pub aws_key_id: Option<String>,
    /// `AWS_SECRET_KEY`.
    pub aws_secret_key: Option<String>,
    /// `AWS_TOKEN`.
    pub aws_token: Option<String>,
    /// `AZURE_SAS_TOKEN`.
    pub azure_sas_token: Option<String>,
    /// `GCS_ACCESS_TOKEN`.
    pub gcs_access_token: Option<String>,
}

// By hand: a presigned URL's query is a credential, as the `creds` are.
impl std::fmt::Debug for PutInstructions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let url = (self.presigned_url.as_deref()).map(|u| match u.split_once('?') {
            Some((path, _)) => format!("{path}?<redacted>"),
            None => u.to_owned(),
        });
        f.debug_struct("PutInstructions")
            .field("location_type", &self.location_type)
            .field("location", &self.location)
            .field("region", &self.region)
            .field("end_point", &self.end_point)
            .field("storage_account", &self.storage_account)
            .field("presigned_url", &url)
            .field("use_regional_url", &self.use_regional_url)
            .field("creds", &self.creds)
            .field("encryption", &self.encryption)
            .finish()
    }
}

impl std::fmt::Debug for StageCreds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StageCreds")
            .field("aws_key_id", &self.aws_key_id)
            .finish_non_exhaustive()
    }
}

/// `encryptionMaterial` of a PUT response.
#[derive(Clone, PartialEq)]
pub struct EncryptionMaterial {
    /// The master key (16 or 32 bytes).
    pub master_key: Vec<u8>,
    /// `queryId`, echoed in `matdesc`.
    pub query_id: String,
    /// `smkId`, echoed in `matdesc`.
    pub smk_id: String,
}

impl std::fmt::Debug for EncryptionMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EncryptionMaterial")
            .field("key_bits", &(self.master_key.len() * 8))
            .field("query_id", &self.query_id)
            .field("smk_id", &self.smk_id)
            .finish()
    }
}

fn s(v: &Json, key: &str) -> Option<String> {
    match v.get(key) {
        Some(Json::String(s)) if !s.is_empty() => Some(s.clone()),
        Some(Json::Number(n)) => Some(n.to_string()),
        _ => None,
    }
}

impl PutInstructions {
    /// Parses the `data` of a PUT query response.
    pub fn parse(data: &Json) -> Result<PutInstructions, SnowflakeError> {
        let info = data
            .get("stageInfo")
            .ok_or_else(|| SnowflakeError::Protocol("PUT response has no stageInfo".into()))?;
        let creds = info.get("creds").cloned().unwrap_or(Json::Null);
        let enc = match data.get("encryptionMaterial") {
            Some(Json::Array(a)) => a.first().cloned(),
            Some(Json::Null) | None => None,
            Some(o) => Some(o.clone()),
        };
        let encryption = match enc {
            Some(e) => {
                let key = s(&e, "queryStageMasterKey").ok_or_else(|| {
                    SnowflakeError::Protocol(
                        "encryptionMaterial without queryStageMasterKey".into(),
                    )
                })?;
                let master_key = B64.decode(key).map_err(|e| {
                    SnowflakeError::Protocol(format!("bad queryStageMasterKey: {e}"))
                })?;
                if master_key.len() != 16 && master_key.len() != 32 {
                    return Err(SnowflakeError::Protocol(format!(
                        "master key of {} bytes",
                        master_key.len()
                    )));
                }
                Some(EncryptionMaterial {
                    master_key,
                    query_id: s(&e, "queryId").unwrap_or_default(),
                    smk_id: s(&e, "smkId").unwrap_or_default(),
                })
            }
            None => None,
        };
        let flag = |k: &str| info.get(k).and_then(Json::as_bool).unwrap_or(false);
        Ok(PutInstructions {
            location_type: s(info, "locationType").unwrap_or_default().to_uppercase(),
            location: s(info, "location").unwrap_or_default(),
            region: s(info, "region"),
            end_point: s(info, "endPoint"),
            storage_account: s(info, "storageAccount"),
            presigned_url: s(info, "presignedUrl"),
            use_regional_url: flag("useS3RegionalUrl") || flag("useRegionalUrl"),
            creds: StageCreds {
                aws_key_id: s(&creds, "AWS_KEY_ID"),
                aws_secret_key: s(&creds, "AWS_SECRET_KEY"),
                aws_token: s(&creds, "AWS_TOKEN"),
                azure_sas_token: s(&creds, "AZURE_SAS_TOKEN"),
                gcs_access_token: s(&creds, "GCS_ACCESS_TOKEN"),
            },
            encryption,
        })
    }

    /// `(bucket, key)` of `file_name` under `location`.
    pub fn bucket_and_key(&self, file_name: &str) -> (String, String) {
        let (bucket, prefix) = self
            .location
            .split_once('/')
            .unwrap_or((&self.location, ""));
        let mut key = prefix.to_owned();
        if !key.is_empty() && !key.ends_with('/') {
            key.push('/');
        }
        key.push_str(file_name);
        (bucket.to_owned(), key)
    }

    /// The S3 object URL, as the drivers build it: `https://<bucket>.<endPoint>/<key>` with a custom
    /// endpoint, the regional host when asked for, else the global one. `endpoint_override`
    /// (an S3-compatible endpoint or a test double) switches to path style: `<override>/<bucket>/<key>`.
    pub fn s3_url(&self, file_name: &str, endpoint_override: Option<&str>) -> String {
        let (bucket, key) = self.bucket_and_key(file_name);
        let key = encode_key(&key);
        if let Some(base) = endpoint_override {
            return format!("{}/{bucket}/{key}", base.trim_end_matches('/'));
        }
        if let Some(ep) = &self.end_point {
            let ep = ep.trim_start_matches("https://").trim_end_matches('/');
            return format!("https://{bucket}.{ep}/{key}");
        }
        match (&self.region, self.use_regional_url) {
            (Some(r), true) => format!("https://{bucket}.s3.{r}.amazonaws.com/{key}"),
            (Some(r), false) if r.starts_with("cn-") => {
                format!("https://{bucket}.s3.{r}.amazonaws.com.cn/{key}")
            }
            _ => format!("https://{bucket}.s3.amazonaws.com/{key}"),
        }
    }
}

/// Percent-encodes an object key for a URL path, keeping `/` and RFC 3986 unreserved characters.
fn encode_key(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// An encrypted file and the metadata that lets Snowflake decrypt it.
#[derive(Debug, Clone)]
pub struct Encrypted {
    /// Ciphertext.
    pub data: Vec<u8>,
    /// Base64 of the ECB-wrapped file key.
    pub wrapped_key_b64: String,
    /// Base64 of the IV.
    pub iv_b64: String,
    /// `{"queryId":..,"smkId":..,"keySize":".."}`.
    pub matdesc: String,
}

fn cbc_encrypt(key: &[u8], iv: &[u8; 16], data: &[u8]) -> Vec<u8> {
    match key.len() {
        16 => cbc::Encryptor::<aes::Aes128>::new(key.into(), iv.into())
            .encrypt_padded_vec_mut::<Pkcs7>(data),
        _ => cbc::Encryptor::<aes::Aes256>::new(key.into(), iv.into())
            .encrypt_padded_vec_mut::<Pkcs7>(data),
    }
}

fn ecb_encrypt(key: &[u8], data: &[u8]) -> Vec<u8> {
    match key.len() {
        16 => ecb::Encryptor::<aes::Aes128>::new(key.into()).encrypt_padded_vec_mut::<Pkcs7>(data),
        _ => ecb::Encryptor::<aes::Aes256>::new(key.into()).encrypt_padded_vec_mut::<Pkcs7>(data),
    }
}

/// Encrypts `plain` for `material` (a fresh random file key and IV per call).
pub fn encrypt(material: &EncryptionMaterial, plain: &[u8]) -> Encrypted {
    let mut rng = rand::rng();
    let mut file_key = vec![0u8; material.master_key.len()];
    rng.fill_bytes(&mut file_key);
    let mut iv = [0u8; 16];
    rng.fill_bytes(&mut iv);
    let data = cbc_encrypt(&file_key, &iv, plain);
    let wrapped = ecb_encrypt(&material.master_key, &file_key);
    let matdesc = serde_json::json!({
        "queryId": material.query_id,
        "smkId": material.smk_id,
        "keySize": (material.master_key.len() * 8).to_string(),
    })
    .to_string();
    Encrypted {
        data,
        wrapped_key_b64: B64.encode(wrapped),
        iv_b64: B64.encode(iv),
        matdesc,
    }
}

/// The inverse of [`encrypt`], as Snowflake does it on COPY (and the S3 test double does).
pub fn decrypt(
    master_key: &[u8],
    wrapped_key: &[u8],
    iv: &[u8],
    data: &[u8],
) -> Result<Vec<u8>, String> {
    let iv: &[u8; 16] = iv.try_into().map_err(|_| "iv is not 16 bytes".to_owned())?;
    let file_key = match master_key.len() {
        16 => ecb::Decryptor::<aes::Aes128>::new(master_key.into())
            .decrypt_padded_vec_mut::<Pkcs7>(wrapped_key),
        32 => ecb::Decryptor::<aes::Aes256>::new(master_key.into())
            .decrypt_padded_vec_mut::<Pkcs7>(wrapped_key),
        n => return Err(format!("master key of {n} bytes")),
    }
    .map_err(|e| format!("cannot unwrap file key: {e}"))?;
    match file_key.len() {
        16 => cbc::Decryptor::<aes::Aes128>::new(file_key[..].into(), iv.into())
            .decrypt_padded_vec_mut::<Pkcs7>(data),
        32 => cbc::Decryptor::<aes::Aes256>::new(file_key[..].into(), iv.into())
            .decrypt_padded_vec_mut::<Pkcs7>(data),
        n => return Err(format!("file key of {n} bytes")),
    }
    .map_err(|e| format!("cannot decrypt: {e}"))
}

/// `sfc-digest`: base64 of the SHA-256 of the (plaintext) file.
pub fn sfc_digest(plain: &[u8]) -> String {
    B64.encode(Sha256::digest(plain))
}

/// What an upload did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UploadOutcome {
    /// The bytes were sent.
    Uploaded,
    /// The object already existed (S3 HEAD 200); nothing was sent.
    Skipped,
}

/// Carries out PUT instructions.
#[derive(Debug, Clone)]
pub struct Uploader {
    http: reqwest::Client,
    retry: RetryPolicy,
    stats: Arc<SinkStats>,
    s3_endpoint_override: Option<String>,
}

impl Uploader {
    /// An uploader sharing `http`; `s3_endpoint_override` redirects S3 requests (path style).
    pub fn new(
        http: reqwest::Client,
        retry: RetryPolicy,
        stats: Arc<SinkStats>,
        s3_endpoint_override: Option<String>,
    ) -> Uploader {
        Uploader {
            http,
            retry,
            stats,
            s3_endpoint_override,
        }
    }

    /// Uploads `file` (already gzip-compressed) as `file_name` where `put` says.
    pub async fn upload(
        &self,
        put: &PutInstructions,
        file_name: &str,
        file: &[u8],
    ) -> Result<UploadOutcome, SnowflakeError> {
        let digest = sfc_digest(file);
        let encrypted = put.encryption.as_ref().map(|m| encrypt(m, file));
        let body: Vec<u8> = encrypted
            .as_ref()
            .map_or_else(|| file.to_vec(), |e| e.data.clone());
        let outcome = match put.location_type.as_str() {
            "S3" => {
                self.upload_s3(put, file_name, body, &digest, encrypted.as_ref())
                    .await?
            }
            "AZURE" => {
                self.upload_azure(put, file_name, body, &digest, encrypted.as_ref())
                    .await?
            }
            "GCS" => {
                self.upload_gcs(put, file_name, body, &digest, encrypted.as_ref())
                    .await?
            }
            other => {
                return Err(SnowflakeError::Protocol(format!(
                    "unsupported stage location type {other:?}"
                )));
            }
        };
        if outcome == UploadOutcome::Uploaded {
            self.stats
                .bytes
                .fetch_add(file.len() as u64, Ordering::Relaxed);
        } else {
            self.stats.uploads_skipped.fetch_add(1, Ordering::Relaxed);
        }
        Ok(outcome)
    }

    fn sign_s3(
        &self,
        put: &PutInstructions,
        method: &str,
        url: &str,
        headers: &[(String, String)],
        unsigned_payload: bool,
    ) -> Result<Vec<(String, String)>, SnowflakeError> {
        use aws_sigv4::http_request::{
            PayloadChecksumKind, PercentEncodingMode, SignableBody, SignableRequest,
            SigningSettings, UriPathNormalizationMode, sign,
        };
        let (Some(id), Some(secret)) = (&put.creds.aws_key_id, &put.creds.aws_secret_key) else {
            return Err(SnowflakeError::Protocol(
                "S3 stageInfo without AWS credentials".into(),
            ));
        };
        let identity = aws_credential_types::Credentials::new(
            id,
            secret,
            put.creds.aws_token.clone(),
            None,
            "snowflake",
        )
        .into();
        let mut settings = SigningSettings::default();
        settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
        settings.percent_encoding_mode = PercentEncodingMode::Single;
        settings.uri_path_normalization_mode = UriPathNormalizationMode::Disabled;
        let region = put.region.clone().unwrap_or_else(|| "us-east-1".into());
        let params = aws_sigv4::sign::v4::SigningParams::builder()
            .identity(&identity)
            .region(&region)
            .name("s3")
            .time(SystemTime::now())
            .settings(settings)
            .build()
            .map_err(|e| SnowflakeError::Protocol(format!("sigv4 params: {e}")))?
            .into();
        let body = if unsigned_payload {
            SignableBody::UnsignedPayload
        } else {
            SignableBody::Bytes(&[])
        };
        let req = SignableRequest::new(
            method,
            url,
            headers.iter().map(|(k, v)| (k.as_str(), v.as_str())),
            body,
        )
        .map_err(|e| SnowflakeError::Protocol(format!("sigv4 request: {e}")))?;
        let (instructions, _) = sign(req, &params)
            .map_err(|e| SnowflakeError::Protocol(format!("sigv4: {e}")))?
            .into_parts();
        let (signed, _) = instructions.into_parts();
        let mut all = headers.to_vec();
        all.extend(
            signed
                .into_iter()
                .map(|h| (h.name().to_owned(), h.value().to_owned())),
        );
        Ok(all)
    }

    async fn upload_s3(
        &self,
        put: &PutInstructions,
        file_name: &str,
        body: Vec<u8>,
        digest: &str,
        enc: Option<&Encrypted>,
    ) -> Result<UploadOutcome, SnowflakeError> {
        let url = put.s3_url(file_name, self.s3_endpoint_override.as_deref());
        // HEAD first: an object that exists may already be loaded, and re-uploading it with a new
        // random key would change its ETag and make COPY load it again. But only the same
        // content is kept: a file left by an attempt that never committed (its COPY failed, and
        // the transform or the table was fixed since) is named by the batch's offsets alone, and
        // keeping it would load the old rows. Loading new content twice is what the offsets
        // guard stops, not COPY's load history.
        let head = self.sign_s3(put, "HEAD", &url, &[], false)?;
        let resp = self
            .http
            .head(&url)
            .headers(to_header_map(&head)?)
            .send()
            .await
            .map_err(|e| SnowflakeError::transport("s3 head", e))?;
        let same = |r: &reqwest::Response| {
            let stored = r.headers().get("x-amz-meta-sfc-digest");
            stored.is_some_and(|d| d.as_bytes() == digest.as_bytes())
        };
        match resp.status().as_u16() {
            200 if same(&resp) => return Ok(UploadOutcome::Skipped),
            200 => {}
            // 403 is what S3 answers for a missing object without ListBucket permission.
            404 | 403 => {}
            status => {
                return Err(SnowflakeError::Http {
                    status,
                    endpoint: "s3 head".into(),
                    body: String::new(),
                });
            }
        }
        let headers = s3_put_headers(digest, enc);
        send_bytes_with_retry(&self.retry, &self.stats, "s3 put", || {
            // Re-signed per attempt so x-amz-date stays fresh.
            let signed = self.sign_s3(put, "PUT", &url, &headers, true);
            let mut req = self.http.put(&url).body(body.clone());
            if let Ok(signed) = signed
                && let Ok(map) = to_header_map(&signed)
            {
                req = req.headers(map);
            }
            req
        })
        .await?;
        Ok(UploadOutcome::Uploaded)
    }

    async fn upload_gcs(
        &self,
        put: &PutInstructions,
        file_name: &str,
        body: Vec<u8>,
        digest: &str,
        enc: Option<&Encrypted>,
    ) -> Result<UploadOutcome, SnowflakeError> {
        let (url, bearer) = match (&put.presigned_url, &put.creds.gcs_access_token) {
            (Some(u), _) => (u.clone(), None),
            (None, Some(t)) => {
                let (bucket, key) = put.bucket_and_key(file_name);
                (
                    format!(
                        "https://storage.googleapis.com/{bucket}/{}",
                        encode_key(&key)
                    ),
                    Some(t.clone()),
                )
            }
            (None, None) => {
                return Err(SnowflakeError::Protocol(
                    "GCS stageInfo without presignedUrl or token".into(),
                ));
            }
        };
        let mut headers = vec![("x-goog-meta-sfc-digest".to_owned(), digest.to_owned())];
        if let Some(e) = enc {
            headers.push(("x-goog-meta-encryptiondata".into(), encryption_data_json(e)));
            headers.push(("x-goog-meta-matdesc".into(), e.matdesc.clone()));
        }
        send_bytes_with_retry(&self.retry, &self.stats, "gcs put", || {
            let mut req = self.http.put(&url).body(body.clone());
            for (k, v) in &headers {
                req = req.header(k, v);
            }
            if let Some(t) = &bearer {
                req = req.bearer_auth(t);
            }
            req
        })
        .await?;
        Ok(UploadOutcome::Uploaded)
    }

    async fn upload_azure(
        &self,
        put: &PutInstructions,
        file_name: &str,
        body: Vec<u8>,
        digest: &str,
        enc: Option<&Encrypted>,
    ) -> Result<UploadOutcome, SnowflakeError> {
        let (container, key) = put.bucket_and_key(file_name);
        let account = put.storage_account.clone().unwrap_or_default();
        let ep = put
            .end_point
            .clone()
            .unwrap_or_else(|| "blob.core.windows.net".into());
        let sas = put.creds.azure_sas_token.clone().unwrap_or_default();
        let url = format!(
            "https://{account}.{ep}/{container}/{}?{}",
            encode_key(&key),
            sas.trim_start_matches('?')
        );
        let mut headers = vec![
            ("x-ms-blob-type".to_owned(), "BlockBlob".to_owned()),
            ("x-ms-meta-sfcdigest".to_owned(), digest.to_owned()),
        ];
        if let Some(e) = enc {
            headers.push(("x-ms-meta-encryptiondata".into(), encryption_data_json(e)));
            headers.push(("x-ms-meta-matdesc".into(), e.matdesc.clone()));
        }
        send_bytes_with_retry(&self.retry, &self.stats, "azure put", || {
            let mut req = self.http.put(&url).body(body.clone());
            for (k, v) in &headers {
                req = req.header(k, v);
            }
            req
        })
        .await?;
        Ok(UploadOutcome::Uploaded)
    }
}

/// The headers of an S3 upload before signing, as the official connector sends them.
fn s3_put_headers(digest: &str, enc: Option<&Encrypted>) -> Vec<(String, String)> {
    let mut headers = vec![
        (
            "content-type".to_owned(),
            "application/octet-stream".to_owned(),
        ),
        ("x-amz-meta-sfc-digest".to_owned(), digest.to_owned()),
    ];
    if let Some(e) = enc {
        headers.push(("x-amz-meta-x-amz-key".into(), e.wrapped_key_b64.clone()));
        headers.push(("x-amz-meta-x-amz-iv".into(), e.iv_b64.clone()));
        headers.push(("x-amz-meta-x-amz-matdesc".into(), e.matdesc.clone()));
    }
    headers
}

/// The Azure/GCS `encryptiondata` metadata JSON (the drivers' fixed shape).
fn encryption_data_json(e: &Encrypted) -> String {
    serde_json::json!({
        "EncryptionMode": "FullBlob",
        "WrappedContentKey": {"KeyId": "symmKey1", "EncryptedKey": e.wrapped_key_b64, "Algorithm": "AES_CBC_256"},
        "EncryptionAgent": {"Protocol": "1.0", "EncryptionAlgorithm": "AES_CBC_256"},
        "ContentEncryptionIV": e.iv_b64,
        "KeyWrappingMetadata": {"EncryptionLibrary": "Java 5.3.0"},
    })
    .to_string()
}

fn to_header_map(h: &[(String, String)]) -> Result<reqwest::header::HeaderMap, SnowflakeError> {
    let mut map = reqwest::header::HeaderMap::new();
    for (k, v) in h {
        let name = reqwest::header::HeaderName::from_bytes(k.as_bytes())
            .map_err(|e| SnowflakeError::Protocol(format!("header {k}: {e}")))?;
        let value = reqwest::header::HeaderValue::from_str(v)
            .map_err(|e| SnowflakeError::Protocol(format!("header {k}: {e}")))?;
        map.insert(name, value);
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn s3_put(enc: bool) -> Json {
        let mut v = json!({"data": {
            "command": "UPLOAD",
            "stageInfo": {"locationType": "S3", "location": "sfc-stage/SINKDB/RAW/S3_STAGE/", "region": "us-west-2",
                "creds": {"AWS_KEY_ID": "AKID", "AWS_SECRET_KEY": "secret", "AWS_TOKEN": "tok"}},
        }});
        if enc {
            v["data"]["encryptionMaterial"] = json!({"queryStageMasterKey": B64.encode([7u8; 16]), "queryId": "q1", "smkId": 8675309});
        }
        v["data"].take()
    }

    #[test]
    fn parses_s3_instructions_and_builds_urls() {
        let p = PutInstructions::parse(&s3_put(true)).unwrap();
        assert_eq!(p.location_type, "S3");
        assert_eq!(p.encryption.as_ref().unwrap().smk_id, "8675309");
        assert!(!format!("{p:?}").contains("secret"));
        assert_eq!(
            p.s3_url("f.csv.gz", None),
            "https://sfc-stage.s3.amazonaws.com/SINKDB/RAW/S3_STAGE/f.csv.gz"
        );
        let mut r = p.clone();
        r.use_regional_url = true;
        assert_eq!(
            r.s3_url("f.csv.gz", None),
            "https://sfc-stage.s3.us-west-2.amazonaws.com/SINKDB/RAW/S3_STAGE/f.csv.gz"
        );
        r.end_point = Some("s3-fips.us-west-2.amazonaws.com".into());
        assert_eq!(
            r.s3_url("a b", None),
            "https://sfc-stage.s3-fips.us-west-2.amazonaws.com/SINKDB/RAW/S3_STAGE/a%20b"
        );
        assert_eq!(
            p.s3_url("f", Some("http://127.0.0.1:9/")),
            "http://127.0.0.1:9/sfc-stage/SINKDB/RAW/S3_STAGE/f"
        );
    }

    #[test]
    fn encryption_round_trips_and_wraps_the_key_like_the_drivers() {
        for len in [16usize, 32] {
            let m = EncryptionMaterial {
                master_key: vec![3u8; len],
                query_id: "q".into(),
                smk_id: "1".into(),
            };
            let plain = b"hello, snowflake".repeat(100);
            let e = encrypt(&m, &plain);
            let wrapped = B64.decode(&e.wrapped_key_b64).unwrap();
            assert_eq!(
                wrapped.len(),
                len + 16,
                "PKCS7 adds a full block to a block-aligned key"
            );
            assert_eq!(e.data.len(), (plain.len() / 16 + 1) * 16);
            let iv = B64.decode(&e.iv_b64).unwrap();
            assert_eq!(
                decrypt(&m.master_key, &wrapped, &iv, &e.data).unwrap(),
                plain
            );
            assert!(e.matdesc.contains(&format!("\"keySize\":\"{}\"", len * 8)));
            assert!(
                decrypt(&[9u8; 16][..len.min(16)], &wrapped, &iv, &e.data).is_err() || len == 32
            );
        }
    }

    /// The S3 requests carry exactly the headers the official Python connector sent (recorded
    /// in `testdata/official_s3_contract.json`, from PROTOCOL.md), `host` aside, which the HTTP
    /// client adds.
    #[test]
    fn s3_headers_match_the_official_connector() {
        let contract: Json =
            serde_json::from_str(include_str!("testdata/official_s3_contract.json")).unwrap();
        let names_of = |i: usize| -> Vec<String> {
            let mut v: Vec<String> = contract[i]["headers"]
                .as_object()
                .unwrap()
                .keys()
                .map(|k| k.to_lowercase())
                .filter(|k| k != "host")
                .collect();
            v.sort();
            v
        };
        let put = PutInstructions::parse(&s3_put(true)).unwrap();
        let up = Uploader::new(
            reqwest::Client::new(),
            RetryPolicy::default(),
            Arc::default(),
            None,
        );
        let url = put.s3_url("f.csv.gz", None);
        let names = |h: Vec<(String, String)>| -> Vec<String> {
            let mut v: Vec<String> = h.into_iter().map(|(k, _)| k.to_lowercase()).collect();
            v.sort();
            v
        };
        let enc = encrypt(put.encryption.as_ref().unwrap(), b"x");
        let signed_put = up
            .sign_s3(&put, "PUT", &url, &s3_put_headers("d", Some(&enc)), true)
            .unwrap();
        assert_eq!(contract[1]["method"], "PUT");
        assert_eq!(names(signed_put.clone()), names_of(1));
        let unsigned = signed_put
            .iter()
            .find(|(k, _)| k == "x-amz-content-sha256")
            .unwrap();
        assert_eq!(unsigned.1, "UNSIGNED-PAYLOAD");
        let signed_head = up.sign_s3(&put, "HEAD", &url, &[], false).unwrap();
        assert_eq!(contract[0]["method"], "HEAD");
        assert_eq!(names(signed_head.clone()), names_of(0));
        let empty = signed_head
            .iter()
            .find(|(k, _)| k == "x-amz-content-sha256")
            .unwrap();
        assert_eq!(empty.1, contract[0]["headers"]["x-amz-content-sha256"]);
        let auth = signed_put
            .iter()
            .find(|(k, _)| k == "authorization")
            .unwrap();
        assert!(
            auth.1.starts_with("AWS4-HMAC-SHA256 Credential=AKID/"),
            "{}",
            auth.1
        );
        assert!(auth.1.contains("/us-west-2/s3/aws4_request"), "{}", auth.1);
    }

    #[test]
    fn parses_fakesnow_presigned_instructions() {
        let data = json!({"stageInfo":{"locationType":"GCS","location":"SINKDB.RAW.SINK_STAGE/","creds":{},
            "presignedUrl":"http://127.0.0.1:8085/fs_bucket/SINKDB/RAW/SINK_STAGE/kafka/f.csv.gz"},
            "src_locations":["/x/f.csv.gz"],"parallel":4,"autoCompress":false,"command":"UPLOAD"});
        let p = PutInstructions::parse(&data).unwrap();
        assert_eq!(p.location_type, "GCS");
        assert!(p.encryption.is_none());
        assert_eq!(
            p.presigned_url.as_deref(),
            Some("http://127.0.0.1:8085/fs_bucket/SINKDB/RAW/SINK_STAGE/kafka/f.csv.gz")
        );
        // A real presigned URL's query is its signature: never shown.
        let signed = PutInstructions {
            presigned_url: Some(
                "https://storage.example/b/f.csv.gz?X-Goog-Signature=abc123".into(),
            ),
            ..p
        };
        let shown = format!("{signed:?}");
        assert!(
            shown.contains("https://storage.example/b/f.csv.gz?<redacted>"),
            "{shown}"
        );
        assert!(!shown.contains("abc123"), "{shown}");
    }
}
