//! The dead-letter producer: drains a [`DeadLetterRx`] into the dead-letter topic and
//! acknowledges each letter only once the broker has confirmed it.
//!
//! Each letter is one message whose value is a JSON object:
//!
//! ```json
//! {"stage":"source","kind":"ragged_row","reason":"expected 3 fields, found 2","error":null,
//!  "file":"data.csv","file_id":"40960:4f2a...","line":17,"origin":null,
//!  "payload":"1,abc","payload_encoding":"utf8","payload_bytes":5,"payload_truncated":false}
//! ```
//!
//! `error` is the typed error a guest returned (kind `guest_error`): its WIT `case`
//! (`invalid-param`, `missing-field`, `invalid-value`, `other`) and the `field` it names (null for
//! `other`); null for every other kind. `origin` is the Kafka record (`topic`, `partition`, `offset`, `timestamp_ms`, `key`,
//! `headers`) for records rejected after consumption. `payload` is the original bytes (the CSV
//! record, or the message as the consumer read it; the sink's letters hold the row the chain made) as
//! text when they are UTF-8, else base64 (`payload_encoding`). [`decode`] reads a letter back. A dead letter must itself fit in a
//! message, whatever it carries, or the record could be neither processed nor set aside: payloads
//! longer than [`MAX_PAYLOAD_BYTES`] are cut (`payload_bytes` keeps the original length), reasons
//! longer than [`MAX_REASON_BYTES`] too (a guest's error text may quote a whole field), and a
//! letter whose JSON escapes still take it past [`MAX_LETTER_BYTES`] keeps less of its payload.
//! The message also carries headers `sluice.stage` and `sluice.kind`, and the key of the record it
//! came from, when it had one of at most [`MAX_KEY_BYTES`].

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use base64::Engine as _;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio::task::JoinHandle;

use super::producer::{KafkaSetupError, create_producer, ensure_topic};
use crate::config::KafkaConfig;
use crate::dead_letter::{self, DeadLetter, DeadLetterRx, DeadLetterTx, clip};
use crate::row::RecordMeta;

/// The longest payload kept in a dead letter, in bytes.
pub const MAX_PAYLOAD_BYTES: usize = 256 * 1024;

/// The longest reason kept in a dead letter, in bytes.
pub const MAX_REASON_BYTES: usize = 8 * 1024;

/// The largest encoded dead letter, in bytes: half of the smallest default message limit (Kafka's
/// `message.max.bytes` of 1,000,000), leaving room for the headers and the record batch. Less
/// when `message.max.bytes` is set lower (see [`Limits`]).
pub const MAX_LETTER_BYTES: usize = 500_000;

/// The longest record key a dead letter carries as its own key, in bytes: with
/// [`MAX_LETTER_BYTES`] and the headers, well within the smallest default message limit.
pub const MAX_KEY_BYTES: usize = 64 * 1024;

/// How large a letter and its key may be under the producer's `message.max.bytes`: a letter the
/// producer refuses stops the run at that record, every time it is run again.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// The largest encoded letter.
    pub letter: usize,
    /// The longest record key a letter carries as its own key.
    pub key: usize,
}

impl Limits {
    /// Half of `message.max.bytes` for the letter and a quarter for its key, at most
    /// [`MAX_LETTER_BYTES`] and [`MAX_KEY_BYTES`].
    pub fn of(kafka: &KafkaConfig) -> Limits {
        let max = super::producer::max_message_bytes(kafka);
        Limits {
            letter: MAX_LETTER_BYTES.min(max / 2),
            key: MAX_KEY_BYTES.min(max / 4),
        }
    }
}

/// Dead-letter producer counters.
#[derive(Debug, Default)]
pub struct DeadLetterStats {
    /// Letters confirmed by the broker.
    pub letters_stored: AtomicU64,
    /// Letters the broker did not take (their sender got an error).
    pub letters_failed: AtomicU64,
    /// Letters not written because the same letter of the same record was in the topic already
    /// (see [`Lettered`]).
    pub letters_already_stored: AtomicU64,
}

/// How many bytes of a payload tell two letters of one record apart: a payload is cut to fit a
/// letter, but never to less than this at the default limits. (Cut shorter under a low
/// `message.max.bytes`, a stored letter does not match, and is written again: never the other
/// way round.)
const LETTER_KEY_HEAD: usize = 64 * 1024;

/// The letters a pipeline already wrote for records it is about to consume again.
///
/// A consumer resumes each partition from the offset the warehouse holds, after a crash, a stop
/// that ran out of time, or a rebalance; the records past it that were set aside before would
/// be set aside again, and their letters written twice. So when partitions are assigned, the
/// pipeline reads the letters it wrote since the first of those records was produced
/// ([`Lettered::note`]), and the producer task then takes a letter it finds here (same
/// pipeline, stage, kind, record and payload) out instead of writing it again. Letters are
/// stamped with their pipeline (`"pipeline_id"`, a hash of its name), so that another
/// pipeline's letters in a shared topic never stand in for this one's.
#[derive(Debug, Default)]
pub struct Lettered {
    /// The pipeline this run's letters are stamped with, once set.
    pipeline: std::sync::OnceLock<String>,
    /// Letters in the topic, by their record's partition and [`Lettered::key`], and how many
    /// of each.
    written: std::sync::Mutex<std::collections::HashMap<(i32, [u8; 32]), u32>>,
}

impl Lettered {
    /// Stamps the letters written from now on with `pipeline` (`"pipeline_id"`). Only the first
    /// call counts.
    pub fn stamp(&self, pipeline: &str) {
        let _ = self.pipeline.set(pipeline.to_owned());
    }

    /// What tells a letter of a record apart: none for a letter of no record (a bad CSV row,
    /// which a replay makes again as a new row).
    fn key(letter: &DeadLetter) -> Option<(i32, [u8; 32])> {
        let o = letter.origin.as_ref()?;
        let mut h = blake3::Hasher::new();
        for part in [&letter.stage, &letter.kind, &o.topic] {
            h.update(&(part.len() as u64).to_le_bytes());
            h.update(part.as_bytes());
        }
        h.update(&o.partition.to_le_bytes());
        h.update(&o.offset.to_le_bytes());
        h.update(&letter.payload[..letter.payload.len().min(LETTER_KEY_HEAD)]);
        Some((o.partition, *h.finalize().as_bytes()))
    }

    /// Notes `stored`, a letter as read from the topic, if this pipeline wrote it for a record
    /// of `topic` at or past `from`'s offset of its partition. Returns whether it did.
    pub fn note(
        &self,
        stored: &[u8],
        topic: &str,
        from: &std::collections::BTreeMap<i32, i64>,
    ) -> bool {
        let Some(pipeline) = self.pipeline.get() else {
            return false;
        };
        #[derive(serde::Deserialize)]
        struct Stamp {
            #[serde(default)]
            pipeline_id: Option<String>,
        }
        let ours = serde_json::from_slice::<Stamp>(stored)
            .is_ok_and(|s| s.pipeline_id.as_deref() == Some(pipeline.as_str()));
        let Some(read) = ours.then(|| decode(stored).ok()).flatten() else {
            return false;
        };
        let past = (read.letter.origin.as_ref()).is_some_and(|o| {
            o.topic == topic && from.get(&o.partition).is_some_and(|f| o.offset >= *f)
        });
        match Self::key(&read.letter).filter(|_| past) {
            Some(key) => {
                *self.lock().entry(key).or_default() += 1;
                true
            }
            None => false,
        }
    }

    /// Whether `letter` is one noted as in the topic already, taking it out if so (a record may
    /// have two letters alike, and then both are written once).
    fn take(&self, letter: &DeadLetter) -> bool {
        let Some(key) = Self::key(letter) else {
            return false;
        };
        let mut written = self.lock();
        match written.get_mut(&key) {
            Some(n) if *n > 1 => *n -= 1,
            Some(_) => {
                written.remove(&key);
            }
            None => return false,
        }
        true
    }

    /// Forgets the letters noted of records of `partitions`, which were revoked: noted again if
    /// they come back.
    pub fn forget(&self, partitions: &[i32]) {
        self.lock().retain(|(p, _), _| !partitions.contains(p));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<(i32, [u8; 32]), u32>> {
        self.written.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A running dead-letter producer.
#[derive(Debug)]
pub struct DeadLetterTask {
    handle: JoinHandle<()>,
    /// Its counters.
    pub stats: Arc<DeadLetterStats>,
    /// The letters it does not write again, and the pipeline it stamps letters with.
    pub lettered: Arc<Lettered>,
}

impl DeadLetterTask {
    /// Waits until every sender is dropped and every letter is acknowledged.
    pub async fn finish(self) {
        let _ = self.handle.await;
    }
}

/// Creates the dead-letter topic if missing (one partition, so letters stay in order) and starts
/// the producer task. Letters sent to the returned [`DeadLetterTx`] go to `topic`.
pub async fn spawn(
    kafka: &KafkaConfig,
    bootstrap: &str,
    topic: &str,
    capacity: usize,
) -> Result<(DeadLetterTx, DeadLetterTask), KafkaSetupError> {
    ensure_topic(kafka, bootstrap, topic, 1, kafka.replication_factor).await?;
    let producer = create_producer(kafka, bootstrap)?;
    let (tx, rx) = dead_letter::channel(capacity);
    let stats = Arc::new(DeadLetterStats::default());
    let limits = Limits::of(kafka);
    let lettered = Arc::new(Lettered::default());
    let handle = tokio::spawn(run(
        rx,
        producer,
        topic.to_owned(),
        limits,
        stats.clone(),
        lettered.clone(),
    ));
    Ok((
        tx,
        DeadLetterTask {
            handle,
            stats,
            lettered,
        },
    ))
}

/// Drains `rx` into `topic` until every sender is gone. Letters are sent concurrently; each is
/// acknowledged when its delivery is confirmed (or failed), or at once when `lettered` says the
/// topic holds it already.
pub async fn run(
    mut rx: DeadLetterRx,
    producer: FutureProducer,
    topic: String,
    limits: Limits,
    stats: Arc<DeadLetterStats>,
    lettered: Arc<Lettered>,
) {
    let mut pending = tokio::task::JoinSet::new();
    while let Some((letter, ack)) = rx.recv().await {
        if lettered.take(&letter) {
            stats.letters_already_stored.fetch_add(1, Ordering::Relaxed);
            ack(Ok(()));
            continue;
        }
        let value = encode_stamped(&letter, limits.letter, lettered.pipeline.get());
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "sluice.stage",
                value: Some(letter.stage.as_bytes()),
            })
            .insert(Header {
                key: "sluice.kind",
                value: Some(letter.kind.as_bytes()),
            });
        // Keyed as the record it came from, so that whoever reads the letters can group them
        // by key. Not a key past `limits.key`: it comes on top of the letter, which is sized
        // to fit a message. (`origin.key` in the letter has it, cut if need be.)
        let key = (letter.origin.as_ref())
            .and_then(|o| o.key.as_deref())
            .filter(|k| k.len() <= limits.key);
        let mut record = FutureRecord::<[u8], _>::to(&topic)
            .payload(&value)
            .headers(headers);
        if let Some(key) = key {
            record = record.key(key);
        }
        let delivery = match producer.send_result(record) {
            Ok(d) => d,
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), record)) => {
                // Wait for the queue to drain through the normal, retrying path.
                let r = producer.send(record, rdkafka::util::Timeout::Never).await;
                let r = r.map(|_| ()).map_err(|(e, _)| e.to_string());
                count(&stats, &r);
                ack(r);
                continue;
            }
            Err((e, _)) => {
                let r = Err(e.to_string());
                count(&stats, &r);
                ack(r);
                continue;
            }
        };
        let stats = stats.clone();
        pending.spawn(async move {
            let r = match delivery.await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err((e, _))) => Err(e.to_string()),
                Err(_) => Err("producer was dropped".to_owned()),
            };
            count(&stats, &r);
            ack(r);
        });
        while pending.try_join_next().is_some() {}
    }
    while pending.join_next().await.is_some() {}
}

fn count(stats: &DeadLetterStats, r: &Result<(), String>) {
    match r {
        Ok(()) => stats.letters_stored.fetch_add(1, Ordering::Relaxed),
        Err(e) => {
            tracing::error!(error = %e, "Dead letter could not be stored.");
            stats.letters_failed.fetch_add(1, Ordering::Relaxed)
        }
    };
}

/// Encodes a letter as the JSON object described in the module doc, in at most
/// [`MAX_LETTER_BYTES`].
pub fn encode(letter: &DeadLetter) -> Vec<u8> {
    encode_within(letter, MAX_LETTER_BYTES)
}

/// [`encode`] in at most `max_bytes` ([`Limits::letter`]), where cutting the payload and the
/// origin's key and headers can make it so.
pub fn encode_within(letter: &DeadLetter, max_bytes: usize) -> Vec<u8> {
    encode_stamped(letter, max_bytes, None)
}

/// [`encode_within`], with `"pipeline_id"` when given (see [`Lettered`]).
fn encode_stamped(letter: &DeadLetter, max_bytes: usize, pipeline: Option<&String>) -> Vec<u8> {
    let mut cut = letter.payload.len().min(MAX_PAYLOAD_BYTES);
    let (mut origin_cut, mut reason_cut) = (usize::MAX, MAX_REASON_BYTES);
    loop {
        let mut value = encode_cut(letter, cut, origin_cut, reason_cut);
        if let Some(name) = pipeline
            && value.pop() == Some(b'}')
        {
            value.extend_from_slice(b",\"pipeline_id\":");
            value.extend(serde_json::to_vec(name).unwrap_or_default());
            value.push(b'}');
        }
        if value.len() <= max_bytes {
            return value;
        }
        // Escapes can make JSON text six times its bytes (`\u0001`): keep less payload, then
        // less of the origin's key and headers, which came from a message of any size, and last
        // less of the reason (a lower `message.max.bytes`).
        if cut > 0 {
            cut /= 2;
        } else if origin_cut > 0 {
            origin_cut = if origin_cut == usize::MAX { 4096 } else { 0 };
        } else if reason_cut > 256 {
            reason_cut /= 2;
        } else {
            return value;
        }
    }
}

fn encode_cut(letter: &DeadLetter, cut: usize, origin_cut: usize, reason_cut: usize) -> Vec<u8> {
    use serde_json::json;
    let (payload, encoding) = match std::str::from_utf8(&letter.payload[..cut]) {
        Ok(s) => (s.to_owned(), "utf8"),
        // A cut in the middle of a character is still text up to the cut.
        Err(e) if e.error_len().is_none() && cut < letter.payload.len() => (
            String::from_utf8_lossy(&letter.payload[..e.valid_up_to()]).into_owned(),
            "utf8",
        ),
        Err(_) => (
            base64::engine::general_purpose::STANDARD.encode(&letter.payload[..cut]),
            "base64",
        ),
    };
    let mut v = json!({
        "stage": letter.stage,
        "kind": letter.kind,
        "reason": clip(&letter.reason, reason_cut),
        "error": letter.error.as_ref().map(|e| json!({"case": e.case, "field": e.field})),
        "file": letter.source_file,
        "line": letter.line,
        "origin": letter.origin.as_ref().map(|o| origin_json(o, origin_cut)),
        "payload": payload,
        "payload_encoding": encoding,
        "payload_bytes": letter.payload.len(),
        "payload_truncated": cut < letter.payload.len(),
    });
    if let (Some(id), Some(o)) = (&letter.source_file_id, v.as_object_mut()) {
        o.insert("file_id".into(), id.as_str().into());
    }
    serde_json::to_vec(&v).unwrap_or_default()
}

fn bytes_json(b: &[u8], max: usize) -> serde_json::Value {
    if b.len() > max {
        // Text cut in the middle of a character stays text, up to the cut.
        let head = match std::str::from_utf8(&b[..max]) {
            Err(e) if e.error_len().is_none() => &b[..e.valid_up_to()],
            _ => &b[..max],
        };
        let head = bytes_json(head, usize::MAX);
        return serde_json::json!({ "cut": head, "bytes": b.len() });
    }
    match std::str::from_utf8(b) {
        Ok(s) => serde_json::Value::String(s.to_owned()),
        Err(_) => {
            serde_json::json!({ "base64": base64::engine::general_purpose::STANDARD.encode(b) })
        }
    }
}

fn origin_json(m: &RecordMeta, max: usize) -> serde_json::Value {
    serde_json::json!({
        "topic": m.topic,
        "partition": m.partition,
        "offset": m.offset,
        "timestamp_ms": m.timestamp_ms,
        "key": m.key.as_deref().map(|k| bytes_json(k, max)),
        "headers": m.headers.iter().map(|(k, v)| serde_json::json!([clip(k, max), bytes_json(v, max)])).collect::<Vec<_>>(),
    })
}

/// A letter read back from the JSON [`encode`] wrote (what `sluice dead-letters` prints).
#[derive(Debug, Clone, PartialEq)]
pub struct ReadLetter {
    /// The letter: `payload` and `origin` as stored, so possibly cut (see `whole`); a `reason`
    /// that was cut keeps its note of how long it was.
    pub letter: DeadLetter,
    /// Whether the payload and the origin's key and headers are the record's own, not cut to fit
    /// the letter in a message.
    pub whole: bool,
    /// Whether the payload is no longer as long as `payload_bytes` says it was (and was not cut):
    /// the text was changed after it was written, as `sluice dead-letters` does when it masks
    /// the text of a secret.
    pub altered: bool,
}

/// The members of an encoded letter that [`decode`] reads; any others are left alone, so that a
/// letter of a later version still reads.
#[derive(serde::Deserialize)]
struct Encoded {
    stage: String,
    kind: String,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    error: Option<EncodedFault>,
    #[serde(default)]
    file: Option<String>,
    #[serde(default)]
    file_id: Option<String>,
    #[serde(default)]
    line: Option<u64>,
    #[serde(default)]
    origin: Option<EncodedOrigin>,
    payload: String,
    #[serde(default)]
    payload_encoding: Option<String>,
    #[serde(default)]
    payload_bytes: Option<usize>,
    #[serde(default)]
    payload_truncated: bool,
}

#[derive(serde::Deserialize)]
struct EncodedFault {
    case: String,
    #[serde(default)]
    field: Option<String>,
}

#[derive(serde::Deserialize)]
struct EncodedOrigin {
    topic: String,
    partition: i32,
    offset: i64,
    #[serde(default)]
    timestamp_ms: Option<i64>,
    #[serde(default)]
    key: Option<EncodedBytes>,
    #[serde(default)]
    headers: Vec<(String, EncodedBytes)>,
}

/// Bytes as `bytes_json` writes them.
#[derive(serde::Deserialize)]
#[serde(untagged)]
enum EncodedBytes {
    Text(String),
    Base64 { base64: String },
    Cut { cut: serde_json::Value },
}

fn from_base64(text: &str) -> Result<Vec<u8>, String> {
    (base64::engine::general_purpose::STANDARD.decode(text)).map_err(|e| format!("bad base64: {e}"))
}

/// Whether `name` ends with the note [`clip`] puts after what it kept (`... (cut; 5000 bytes
/// in all)`), so was cut: a name that merely ends like it is not longer than it says.
fn clipped(name: &str) -> bool {
    let Some((kept, note)) = name.rsplit_once("... (cut; ") else {
        return false;
    };
    let all = note
        .strip_suffix(" bytes in all)")
        .and_then(|n| n.parse::<usize>().ok());
    all.is_some_and(|all| all > kept.len())
}

impl EncodedBytes {
    /// The bytes, and whether they are whole.
    fn bytes(self) -> Result<(Vec<u8>, bool), String> {
        match self {
            EncodedBytes::Text(s) => Ok((s.into_bytes(), true)),
            EncodedBytes::Base64 { base64 } => from_base64(&base64).map(|b| (b, true)),
            EncodedBytes::Cut { cut } => {
                let head: EncodedBytes = serde_json::from_value(cut).map_err(|e| e.to_string())?;
                Ok((head.bytes()?.0, false))
            }
        }
    }
}

/// Reads back a letter that [`encode`] wrote: the inverse of `encode` for every letter that fit
/// whole ([`ReadLetter::whole`] says whether it did), but for a reason past
/// [`MAX_REASON_BYTES`], which stays cut. An error says what is not as `encode` writes it.
pub fn decode(text: &[u8]) -> Result<ReadLetter, String> {
    let e: Encoded = serde_json::from_slice(text).map_err(|e| e.to_string())?;
    let payload = match e.payload_encoding.as_deref() {
        None | Some("utf8") => e.payload.into_bytes(),
        Some("base64") => from_base64(&e.payload).map_err(|err| format!("payload: {err}"))?,
        Some(other) => return Err(format!("payload_encoding {other:?} is not utf8 or base64")),
    };
    let mut whole = !e.payload_truncated;
    let altered = whole && e.payload_bytes.is_some_and(|n| n != payload.len());
    let origin = match e.origin {
        None => None,
        Some(o) => {
            let key = match o.key {
                None => None,
                Some(k) => {
                    let (k, all) = k.bytes().map_err(|err| format!("origin.key: {err}"))?;
                    whole &= all;
                    Some(k)
                }
            };
            let mut headers = Vec::with_capacity(o.headers.len());
            for (name, value) in o.headers {
                let (value, all) = value
                    .bytes()
                    .map_err(|err| format!("origin header {name:?}: {err}"))?;
                whole &= all && !clipped(&name);
                headers.push((name, value));
            }
            Some(RecordMeta {
                topic: o.topic,
                partition: o.partition,
                offset: o.offset,
                key,
                timestamp_ms: o.timestamp_ms,
                headers,
            })
        }
    };
    let error = match e.error {
        None => None,
        Some(f) => {
            let case = (dead_letter::GuestFault::CASES.iter())
                .find(|c| **c == f.case)
                .ok_or_else(|| {
                    format!("error.case {:?} is not a case of transform-error", f.case)
                })?;
            Some(dead_letter::GuestFault {
                case,
                field: f.field,
            })
        }
    };
    Ok(ReadLetter {
        letter: DeadLetter {
            stage: e.stage,
            kind: e.kind,
            reason: e.reason,
            source_file: e.file,
            source_file_id: e.file_id,
            line: e.line,
            origin,
            payload,
            error,
        },
        whole,
        altered,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A letter is taken as written already only when this pipeline wrote the same one (stage,
    /// kind, record, payload) for a record at or past where its partition resumes; as many
    /// times as it was written; and not once its partition was revoked.
    #[test]
    fn only_this_pipelines_letters_of_records_consumed_again_are_not_written_twice() {
        let letter = |partition: i32, offset: i64, payload: &str| DeadLetter {
            stage: "transform:filter".into(),
            kind: "guest_error".into(),
            reason: "bad".into(),
            source_file: None,
            source_file_id: None,
            line: None,
            origin: Some(RecordMeta {
                topic: "t".into(),
                partition,
                offset,
                ..RecordMeta::default()
            }),
            payload: payload.as_bytes().to_vec(),
            error: None,
        };
        let ours = Lettered::default();
        ours.stamp("p1");
        let theirs = Lettered::default();
        theirs.stamp("p2");
        let stored =
            |letter: &DeadLetter| encode_stamped(letter, MAX_LETTER_BYTES, Some(&"p1".to_owned()));
        let from = std::collections::BTreeMap::from([(0, 10), (1, 0)]);
        // Another pipeline's, an unstamped one, one before where the partition resumes, one of
        // another topic, and a bad CSV row's are not noted.
        assert!(!theirs.note(&stored(&letter(0, 12, "a")), "t", &from));
        assert!(!ours.note(&encode(&letter(0, 12, "a")), "t", &from));
        assert!(!ours.note(&stored(&letter(0, 9, "a")), "t", &from));
        assert!(!ours.note(&stored(&letter(0, 12, "a")), "other", &from));
        let bad_row = DeadLetter {
            origin: None,
            ..letter(0, 12, "a")
        };
        assert!(!ours.note(&stored(&bad_row), "t", &from));
        assert!(!ours.take(&bad_row));
        // Noted twice (a record that made two letters alike), taken twice.
        for _ in 0..2 {
            assert!(ours.note(&stored(&letter(0, 12, "a")), "t", &from));
        }
        assert!(ours.note(&stored(&letter(1, 3, "b")), "t", &from));
        assert!(!ours.take(&letter(0, 12, "another payload")));
        assert!(!ours.take(&DeadLetter {
            kind: "trap".into(),
            ..letter(0, 12, "a")
        }));
        assert!(ours.take(&letter(0, 12, "a")) && ours.take(&letter(0, 12, "a")));
        assert!(!ours.take(&letter(0, 12, "a")));
        // A revoked partition's are forgotten, the others' kept.
        ours.forget(&[1]);
        assert!(!ours.take(&letter(1, 3, "b")));
        assert!(ours.note(&stored(&letter(1, 3, "b")), "t", &from));
        ours.forget(&[0]);
        assert!(ours.take(&letter(1, 3, "b")));
    }

    /// Under a lower `message.max.bytes` a letter fits its limit, a long reason cut last.
    #[test]
    fn letters_fit_a_lower_limit_reason_and_all() {
        let letter = DeadLetter {
            stage: "transform:t".into(),
            kind: "guest_error".into(),
            reason: "\u{1}".repeat(MAX_REASON_BYTES),
            source_file: Some("x.csv".into()),
            source_file_id: None,
            line: Some(4),
            origin: None,
            payload: vec![b'p'; 20_000],
            error: None,
        };
        let bytes = encode_within(&letter, 5_000);
        assert!(bytes.len() <= 5_000, "{}", bytes.len());
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v["payload_bytes"], 20_000);
        assert!(v["reason"].as_str().is_some_and(|r| !r.is_empty()));
    }

    #[test]
    fn letters_encode_as_documented() {
        let letter = DeadLetter {
            stage: "source".into(),
            kind: "invalid_utf8".into(),
            reason: "bad".into(),
            source_file: Some("x.csv".into()),
            source_file_id: None,
            line: Some(4),
            origin: None,
            payload: b"3,\xff".to_vec(),
            error: None,
        };
        let v: serde_json::Value = serde_json::from_slice(&encode(&letter)).unwrap();
        assert_eq!(v["line"], 4);
        assert_eq!(v["file"], "x.csv");
        assert_eq!(v["error"], serde_json::Value::Null);
        let rejected = DeadLetter {
            error: Some(dead_letter::GuestFault {
                case: "missing-field",
                field: Some("amount".into()),
            }),
            ..letter.clone()
        };
        let v: serde_json::Value = serde_json::from_slice(&encode(&rejected)).unwrap();
        assert_eq!(
            v["error"],
            serde_json::json!({"case": "missing-field", "field": "amount"})
        );
        assert_eq!(v["payload_encoding"], "base64");
        assert_eq!(
            base64::engine::general_purpose::STANDARD
                .decode(v["payload"].as_str().unwrap())
                .unwrap(),
            b"3,\xff"
        );

        let big = DeadLetter {
            payload: vec![b'a'; MAX_PAYLOAD_BYTES + 10],
            ..letter
        };
        let v: serde_json::Value = serde_json::from_slice(&encode(&big)).unwrap();
        assert_eq!(v["payload_truncated"], true);
        assert_eq!(v["payload_bytes"], MAX_PAYLOAD_BYTES + 10);
        assert_eq!(v["payload"].as_str().unwrap().len(), MAX_PAYLOAD_BYTES);

        // A guest's error quoting a whole field, a payload all escapes and a huge key: the letter
        // still fits in a message, with the lengths kept.
        let huge = DeadLetter {
            reason: "x".repeat(900_000),
            payload: vec![1u8; 900_000],
            origin: Some(RecordMeta {
                topic: "t".into(),
                partition: 0,
                offset: 7,
                timestamp_ms: None,
                key: Some(vec![b'k'; 900_000]),
                headers: vec![("h".into(), vec![b'v'; 10])],
            }),
            ..big
        };
        let bytes = encode(&huge);
        assert!(bytes.len() <= MAX_LETTER_BYTES, "{}", bytes.len());
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        let reason = v["reason"].as_str().unwrap();
        assert!(
            reason.ends_with("... (cut; 900000 bytes in all)"),
            "{reason:.40}"
        );
        assert!(reason.len() < MAX_REASON_BYTES + 100);
        assert_eq!(v["payload_bytes"], 900_000);
        assert_eq!(v["payload_truncated"], true);
        assert_eq!(v["origin"]["key"]["bytes"], 900_000);
        assert_eq!(v["origin"]["offset"], 7);
        assert_eq!(
            v["origin"]["headers"][0],
            serde_json::json!(["h", "vvvvvvvvvv"])
        );
    }

    #[test]
    fn letters_read_back_as_they_were_written() {
        let letter = DeadLetter {
            stage: "transform:filter".into(),
            kind: "guest_error".into(),
            reason: "value: not a number".into(),
            source_file: Some("x.csv".into()),
            source_file_id: None,
            line: Some(9),
            origin: Some(RecordMeta {
                topic: "rows".into(),
                partition: 2,
                offset: 41,
                timestamp_ms: Some(1_700_000_000_000),
                key: Some(b"k\xff".to_vec()),
                headers: vec![
                    ("sluice.types".into(), br#"{"value":"float"}"#.to_vec()),
                    ("bin".into(), vec![0, 159]),
                ],
            }),
            payload: br#"{"value":"x"}"#.to_vec(),
            error: Some(dead_letter::GuestFault {
                case: "invalid-value",
                field: Some("value".into()),
            }),
        };
        let read = decode(&encode(&letter)).unwrap();
        assert_eq!(read.letter, letter);
        assert!(read.whole && !read.altered);

        // Changed after it was written (a secret's text masked on printing): read, but altered.
        let text = String::from_utf8(encode(&letter)).unwrap();
        let masked = text.replace(r#"\"x\""#, r#"\"${SECRET}\""#);
        assert_ne!(masked, text);
        let read = decode(masked.as_bytes()).unwrap();
        assert!(read.whole && read.altered);

        // A header named like a cut one is still whole; one that was cut is not.
        for (name, whole) in [
            ("header... (cut; 3 bytes in all)".to_owned(), true),
            (clip(&"n".repeat(5000), 4096).into_owned(), false),
        ] {
            assert_eq!(clipped(&name), !whole, "{name:.20}");
        }
        let header_cut = DeadLetter {
            payload: Vec::new(),
            origin: Some(RecordMeta {
                headers: vec![("h".into(), vec![2u8; 900_000])],
                ..letter.origin.clone().unwrap()
            }),
            ..letter.clone()
        };
        let read = decode(&encode(&header_cut)).unwrap();
        assert!(!read.whole);
        assert_eq!(read.letter.origin.unwrap().headers[0].1.len(), 4096);

        let binary = DeadLetter {
            payload: vec![0, 1, 255],
            origin: None,
            error: None,
            ..letter.clone()
        };
        assert_eq!(decode(&encode(&binary)).unwrap().letter, binary);

        // Cut to fit a message: read, but not whole.
        let big = DeadLetter {
            payload: vec![b'a'; MAX_PAYLOAD_BYTES + 1],
            ..letter.clone()
        };
        let read = decode(&encode(&big)).unwrap();
        assert!(!read.whole);
        assert_eq!(read.letter.payload.len(), MAX_PAYLOAD_BYTES);
        let long_key = DeadLetter {
            payload: Vec::new(),
            origin: Some(RecordMeta {
                key: Some(vec![1u8; 900_000]),
                ..letter.origin.clone().unwrap()
            }),
            ..letter
        };
        let read = decode(&encode(&long_key)).unwrap();
        assert!(!read.whole);
        assert_eq!(read.letter.origin.unwrap().key.unwrap().len(), 4096);

        for bad in [
            &br#"{"stage":"sink"}"#[..],
            br#"[1,2]"#,
            br#"{"stage":"s","kind":"k","payload":"x","payload_encoding":"hex"}"#,
            br#"{"stage":"s","kind":"k","payload":"x","error":{"case":"nope"}}"#,
        ] {
            assert!(decode(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }
}
