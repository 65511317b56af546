//! Dead letters: records that could not be processed, kept with the reason instead of lost.
//!
//! Every stage that rejects a record (a bad CSV row, a failing or trapping transform, a row the
//! table cannot take) builds a [`DeadLetter`] and hands it to a [`DeadLetterTx`]. `send` returns
//! only once the letter is durable in the dead-letter topic, so a stage can safely move its
//! offsets past the record afterwards. A stage with many letters at once `enqueue`s them all and
//! then waits for each: one at a time, every letter would cost a broker round trip (~5 ms), and a
//! transform failing every record would crawl at ~200 records/s.

use tokio::sync::{mpsc, oneshot};

use crate::row::RecordMeta;

/// One rejected record and why.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    /// The stage that rejected it: `source`, `consume` ([`CONSUME_STAGE`]), `transform:<name>`
    /// or `sink`.
    pub stage: String,
    /// A short machine-readable kind (`ragged_row`, `invalid_utf8`, `parse`, `trap`, `timeout`,
    /// `memory`, `guest_error`, `schema`, ...).
    pub kind: String,
    /// The human-readable reason.
    pub reason: String,
    /// The CSV file the record came from, when known.
    pub source_file: Option<String>,
    /// That file's fingerprint (`sluice.file_id`), when known: a resumed replay tells a bad
    /// row's letter from one of another file of the same name by it.
    pub source_file_id: Option<String>,
    /// The 1-based line in that file where the record starts, when known.
    pub line: Option<u64>,
    /// The Kafka record it was read from, for records rejected after consumption.
    pub origin: Option<RecordMeta>,
    /// The original bytes (raw CSV record, or the Kafka message value).
    pub payload: Vec<u8>,
    /// The typed error, when a guest returned one (kind `guest_error`).
    pub error: Option<GuestFault>,
}

/// The stage of a letter for a bad CSV row (or a row too large for a message).
pub const SOURCE_STAGE: &str = "source";

/// The stage of a letter for a message the consumer could not decode into a row.
pub const CONSUME_STAGE: &str = "consume";

/// The kind of a letter for a message the consumer could not decode into a row.
pub const DECODE_KIND: &str = "decode";

/// A guest's typed `transform-error`, kept apart from the reason text so that whoever reads the
/// letters can route them by case and field without parsing prose.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestFault {
    /// The WIT case: `invalid-param`, `missing-field`, `invalid-value` or `other`.
    pub case: &'static str,
    /// The field (or param) it names, for every case but `other`.
    pub field: Option<String>,
}

impl GuestFault {
    /// Every case of the WIT's `transform-error`.
    pub const CASES: [&str; 4] = ["invalid-param", "missing-field", "invalid-value", "other"];
}

/// `text`, or its first `max` bytes (at a character boundary) and how long it was: for reasons,
/// which may quote a whole field, in letters, logs and messages.
pub fn clip(text: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if text.len() <= max {
        return text.into();
    }
    let end = text.floor_char_boundary(max);
    format!("{}... (cut; {} bytes in all)", &text[..end], text.len()).into()
}

type Ack = oneshot::Sender<Result<(), String>>;

/// The sending half: cheap to clone, one per stage.
#[derive(Debug, Clone)]
pub struct DeadLetterTx(mpsc::Sender<(DeadLetter, Ack)>);

/// The receiving half, drained by the dead-letter producer (or by a test).
#[derive(Debug)]
pub struct DeadLetterRx(mpsc::Receiver<(DeadLetter, Ack)>);

/// A bounded dead-letter channel.
pub fn channel(capacity: usize) -> (DeadLetterTx, DeadLetterRx) {
    let (tx, rx) = mpsc::channel(capacity);
    (DeadLetterTx(tx), DeadLetterRx(rx))
}

/// Why a dead letter could not be stored.
#[derive(Debug, thiserror::Error)]
pub enum DeadLetterError {
    /// The producer task is gone.
    #[error("dead-letter producer is not running")]
    Closed,
    /// The producer could not store it.
    #[error("dead letter could not be stored: {0}")]
    Store(String),
}

/// A letter handed to the producer that may not be durable yet.
#[derive(Debug)]
#[must_use = "a letter is only safe once `stored` says so"]
pub struct PendingLetter(oneshot::Receiver<Result<(), String>>);

impl PendingLetter {
    /// Waits until the letter is durable, or could not be stored.
    pub async fn stored(self) -> Result<(), DeadLetterError> {
        self.0
            .await
            .map_err(|_| DeadLetterError::Closed)?
            .map_err(DeadLetterError::Store)
    }
}

impl DeadLetterTx {
    /// Sends a letter and waits until it is durable.
    pub async fn send(&self, letter: DeadLetter) -> Result<(), DeadLetterError> {
        self.enqueue(letter).await?.stored().await
    }

    /// Hands a letter to the producer (waiting while its queue is full) without waiting for it
    /// to be durable.
    pub async fn enqueue(&self, letter: DeadLetter) -> Result<PendingLetter, DeadLetterError> {
        let (ack, done) = oneshot::channel();
        self.0
            .send((letter, ack))
            .await
            .map_err(|_| DeadLetterError::Closed)?;
        Ok(PendingLetter(done))
    }
}

impl DeadLetterRx {
    /// The next letter and the callback that acknowledges it (`Ok` once stored); `None` when
    /// every sender is gone.
    pub async fn recv(&mut self) -> Option<(DeadLetter, impl FnOnce(Result<(), String>) + use<>)> {
        let (letter, ack) = self.0.recv().await?;
        Some((letter, move |r| {
            let _ = ack.send(r);
        }))
    }
}
