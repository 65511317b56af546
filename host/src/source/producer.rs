//! Kafka client settings and topic creation shared by the replay producer, the dead-letter
//! producer and the consumer.
//!
//! The producer is idempotent with `acks=all`: a retried batch is never written twice, and a row
//! counts as produced only once every in-sync replica has it. Topics are created through the
//! admin API with the configured partition count, and clients are told not to auto-create topics,
//! because a broker's auto-create would pick its own default partition count.

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::FutureProducer;

use crate::config::KafkaConfig;

/// librdkafka's default `message.max.bytes`: the largest message the producer accepts.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 1_000_000;

/// How long metadata and admin requests may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a Kafka client or topic could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum KafkaSetupError {
    /// A client could not be created or a request failed.
    #[error("{what}")]
    Kafka {
        /// What was being done.
        what: String,
        /// The client's error.
        #[source]
        source: KafkaError,
    },
    /// The topic could not be created or does not become visible.
    #[error("topic {topic}: {reason}")]
    Topic {
        /// The topic.
        topic: String,
        /// What went wrong.
        reason: String,
    },
}

/// The kind of Kafka client a configuration is for. `kafka.properties` applies to every client,
/// but each gets only the settings librdkafka takes for its kind: it ignores the others, with a
/// `CONFWARN` warning from each client on every run (a `session.timeout.ms` on the producers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientKind {
    /// A producer, or an admin client (which librdkafka makes as one).
    Producer,
    /// A consumer.
    Consumer,
}

/// The properties librdkafka's CONFIGURATION.md (2.12) marks as for consumers only (`C`).
const CONSUMER_ONLY: &[&str] = &[
    "group.id",
    "group.instance.id",
    "partition.assignment.strategy",
    "session.timeout.ms",
    "heartbeat.interval.ms",
    "group.protocol.type",
    "group.protocol",
    "group.remote.assignor",
    "coordinator.query.interval.ms",
    "max.poll.interval.ms",
    "enable.auto.commit",
    "auto.commit.enable",
    "auto.commit.interval.ms",
    "enable.auto.offset.store",
    "queued.min.messages",
    "queued.max.messages.kbytes",
    "fetch.wait.max.ms",
    "fetch.queue.backoff.ms",
    "fetch.message.max.bytes",
    "max.partition.fetch.bytes",
    "fetch.max.bytes",
    "fetch.min.bytes",
    "fetch.error.backoff.ms",
    "offset.store.method",
    "offset.store.path",
    "offset.store.sync.interval.ms",
    "isolation.level",
    "enable.partition.eof",
    "check.crcs",
    "auto.offset.reset",
];

/// The properties librdkafka's CONFIGURATION.md (2.12) marks as for producers only (`P`).
const PRODUCER_ONLY: &[&str] = &[
    "transactional.id",
    "transaction.timeout.ms",
    "enable.idempotence",
    "enable.gapless.guarantee",
    "queue.buffering.max.messages",
    "queue.buffering.max.kbytes",
    "queue.buffering.max.ms",
    "linger.ms",
    "message.send.max.retries",
    "retries",
    "queue.buffering.backpressure.threshold",
    "compression.codec",
    "compression.type",
    "compression.level",
    "batch.num.messages",
    "batch.size",
    "delivery.report.only.error",
    "sticky.partitioning.linger.ms",
    "request.required.acks",
    "acks",
    "request.timeout.ms",
    "message.timeout.ms",
    "delivery.timeout.ms",
    "queuing.strategy",
    "produce.offset.report",
    "partitioner",
];

/// The user's `kafka.properties` that a client of `kind` takes.
pub fn properties_for(kafka: &KafkaConfig, kind: ClientKind) -> impl Iterator<Item = (&str, &str)> {
    let other = match kind {
        ClientKind::Producer => CONSUMER_ONLY,
        ClientKind::Consumer => PRODUCER_ONLY,
    };
    (kafka.properties.iter())
        .filter(move |(k, _)| !other.contains(&k.as_str()))
        .map(|(k, v)| (k.as_str(), v.as_str()))
}

/// Settings common to every client: bootstrap servers, then the user's `kafka.properties` that a
/// client of `kind` takes.
pub fn client_config(kafka: &KafkaConfig, bootstrap: &str, kind: ClientKind) -> ClientConfig {
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", bootstrap);
    cfg.set("allow.auto.create.topics", "false");
    for (k, v) in properties_for(kafka, kind) {
        cfg.set(k, v);
    }
    cfg
}

/// A client-creation error without the value of the setting it names. librdkafka's message ends
/// with the raw value, and for `sasl.password`, `ssl.key.password` or a mistyped key that value is
/// a secret; the key and librdkafka's description say what is wrong.
pub fn without_config_value(e: KafkaError) -> KafkaError {
    match e {
        KafkaError::ClientConfig(code, desc, key, _) => {
            KafkaError::ClientConfig(code, desc, key, "<value not shown>".into())
        }
        other => other,
    }
}

/// Producer settings: idempotent, `acks=all`, the configured compression. The user's
/// `kafka.properties` are applied last, for the settings they may change (`linger.ms`); validation
/// refuses those that would undo these.
pub fn producer_config(kafka: &KafkaConfig, bootstrap: &str) -> ClientConfig {
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("compression.type", kafka.compression.as_str())
        .set("linger.ms", "5")
        .set("allow.auto.create.topics", "false");
    for (k, v) in properties_for(kafka, ClientKind::Producer) {
        cfg.set(k, v);
    }
    cfg
}

/// The largest message the producer takes (`message.max.bytes` if set in `kafka.properties`).
pub fn max_message_bytes(kafka: &KafkaConfig) -> usize {
    kafka
        .properties
        .get("message.max.bytes")
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_MAX_MESSAGE_BYTES)
}

/// Creates a producer.
pub fn create_producer(
    kafka: &KafkaConfig,
    bootstrap: &str,
) -> Result<FutureProducer, KafkaSetupError> {
    producer_config(kafka, bootstrap)
        .create()
        .map_err(|source| KafkaSetupError::Kafka {
            what: "cannot create Kafka producer".into(),
            source: without_config_value(source),
        })
}

/// Makes sure `topic` exists; creates it with `partitions` and `replication_factor` if not.
/// Returns the topic's partition count (which may differ from `partitions` if it existed).
pub async fn ensure_topic(
    kafka: &KafkaConfig,
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    replication_factor: i32,
) -> Result<i32, KafkaSetupError> {
    let admin = admin_client(kafka, bootstrap)?;
    if let Some(n) = partition_count(&admin, topic).await? {
        return Ok(n);
    }
    let new = NewTopic::new(
        topic,
        partitions,
        TopicReplication::Fixed(replication_factor),
    );
    let opts = AdminOptions::new().operation_timeout(Some(REQUEST_TIMEOUT));
    let results =
        admin
            .create_topics([&new], &opts)
            .await
            .map_err(|source| KafkaSetupError::Kafka {
                what: format!("cannot create topic {topic}"),
                source,
            })?;
    for r in results {
        match r {
            Ok(_) => tracing::info!(%topic, partitions, "Created topic."),
            // Created concurrently (e.g. by another sluice process): fine.
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((_, code)) => {
                return Err(KafkaSetupError::Topic {
                    topic: topic.to_owned(),
                    reason: format!("create failed: {code}"),
                });
            }
        }
    }
    // The controller may answer before every broker's metadata shows the topic.
    let deadline = tokio::time::Instant::now() + REQUEST_TIMEOUT;
    loop {
        if let Some(n) = partition_count(&admin, topic).await? {
            return Ok(n);
        }
        if tokio::time::Instant::now() > deadline {
            return Err(KafkaSetupError::Topic {
                topic: topic.to_owned(),
                reason: "created but not visible in metadata".into(),
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the broker knows `topic` (created by the replay half of the same run, or by
/// whoever feeds it), polling its metadata. Subscribing to a topic that does not exist yet works,
/// but librdkafka reports it as an error in the log.
pub async fn wait_for_topic(
    kafka: &KafkaConfig,
    bootstrap: &str,
    topic: &str,
) -> Result<(), KafkaSetupError> {
    let admin = admin_client(kafka, bootstrap)?;
    // Said only if the wait is long: in `sluice run` the replay half creates it within moments.
    let mut polls = 0u32;
    while partition_count(&admin, topic).await?.is_none() {
        polls += 1;
        if polls == 10 {
            tracing::info!(%topic, "Waiting for the topic to exist.");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

/// Whether the broker knows `topic`: `false` only when it says there is no such topic. Another
/// answer about it (not authorized to describe it, say) is the error, not its absence, which
/// would send the operator looking for a misspelt name.
pub async fn topic_exists(
    kafka: &KafkaConfig,
    bootstrap: &str,
    topic: &str,
) -> Result<bool, KafkaSetupError> {
    use rdkafka::types::RDKafkaRespErr::*;
    match topic_metadata(&admin_client(kafka, bootstrap)?, topic).await? {
        None | Some((Some(RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART), _)) => Ok(false),
        // Made a moment ago, its leader not elected yet: it is there.
        Some((None | Some(RD_KAFKA_RESP_ERR_LEADER_NOT_AVAILABLE), _)) => Ok(true),
        Some((Some(e), _)) => Err(KafkaSetupError::Topic {
            topic: topic.to_owned(),
            reason: format!("the broker answers: {}", RDKafkaErrorCode::from(e)),
        }),
    }
}

/// An admin client for topic metadata and creation.
fn admin_client(
    kafka: &KafkaConfig,
    bootstrap: &str,
) -> Result<std::sync::Arc<AdminClient<DefaultClientContext>>, KafkaSetupError> {
    let admin = client_config(kafka, bootstrap, ClientKind::Producer)
        .create()
        .map_err(|source| KafkaSetupError::Kafka {
            what: "cannot create Kafka admin client".into(),
            source: without_config_value(source),
        })?;
    Ok(std::sync::Arc::new(admin))
}

/// The topic's partition count, or `None` if the broker does not know it.
async fn partition_count(
    admin: &std::sync::Arc<AdminClient<DefaultClientContext>>,
    topic: &str,
) -> Result<Option<i32>, KafkaSetupError> {
    Ok(topic_metadata(admin, topic)
        .await?
        .filter(|(error, partitions)| error.is_none() && *partitions > 0)
        .map(|(_, partitions)| partitions as i32))
}

/// The broker's answer about `topic`: its error, if any, and its partition count; `None` when
/// the answer leaves it out.
async fn topic_metadata(
    admin: &std::sync::Arc<AdminClient<DefaultClientContext>>,
    topic: &str,
) -> Result<Option<(Option<rdkafka::types::RDKafkaRespErr>, usize)>, KafkaSetupError> {
    let admin = admin.clone();
    let name = topic.to_owned();
    let md = tokio::task::spawn_blocking(move || {
        admin.inner().fetch_metadata(Some(&name), REQUEST_TIMEOUT)
    })
    .await
    .map_err(|e| KafkaSetupError::Topic {
        topic: topic.to_owned(),
        reason: e.to_string(),
    })?
    .map_err(|source| KafkaSetupError::Kafka {
        what: format!("cannot read metadata of topic {topic}"),
        source,
    })?;
    Ok(md
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .map(|t| (t.error(), t.partitions().len())))
}

/// Which partition the producer sends a message to, as librdkafka's `partitioner` setting
/// (`kafka.properties`) chooses it, so that `transform test` can give its records the partitions
/// a run's would have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Partitioner {
    /// `consistent_random`, librdkafka's default: CRC-32 of the key; no key, or an empty one, at
    /// random.
    #[default]
    ConsistentRandom,
    /// `consistent`: CRC-32 of the key; no key or an empty one hashes as empty (partition 0).
    Consistent,
    /// `murmur2_random`, the Java client's choice: murmur2 of the key, an empty one included;
    /// no key at random.
    Murmur2Random,
    /// `murmur2`: murmur2 of the key; no key hashes as an empty one.
    Murmur2,
    /// `fnv1a_random`, Sarama's choice: FNV-1a of the key, an empty one included; no key at
    /// random.
    Fnv1aRandom,
    /// `fnv1a`: FNV-1a of the key; no key hashes as an empty one.
    Fnv1a,
    /// `random`: every message at random.
    Random,
}

impl Partitioner {
    /// The partitioner `kafka.properties` sets (`partitioner`), or librdkafka's default.
    pub fn of(kafka: &KafkaConfig) -> Result<Partitioner, String> {
        let Some(name) = kafka.properties.get("partitioner") else {
            return Ok(Partitioner::default());
        };
        Ok(match name.as_str() {
            "consistent_random" => Partitioner::ConsistentRandom,
            "consistent" => Partitioner::Consistent,
            "murmur2_random" => Partitioner::Murmur2Random,
            "murmur2" => Partitioner::Murmur2,
            "fnv1a_random" => Partitioner::Fnv1aRandom,
            "fnv1a" => Partitioner::Fnv1a,
            "random" => Partitioner::Random,
            other => {
                return Err(format!(
                    "{other:?} is not a partitioner librdkafka knows (consistent_random, \
                     consistent, murmur2_random, murmur2, fnv1a_random, fnv1a, random)"
                ));
            }
        })
    }

    /// The partition of `partitions` a message with `key` goes to, or `None` where librdkafka
    /// picks one at random (it keeps to one for a while: `sticky.partitioning.linger.ms`).
    /// As librdkafka's `rd_kafka_msg_partition` does: `consistent`, `murmur2` and `fnv1a` hash
    /// even a message without a key (as an empty key); the others send one at random, and
    /// `consistent_random` an empty key too.
    pub fn partition(self, key: Option<&[u8]>, partitions: i32) -> Option<i32> {
        let n = u32::try_from(partitions).ok().filter(|n| *n > 0)?;
        let key = match (self, key) {
            (Partitioner::Consistent | Partitioner::Murmur2 | Partitioner::Fnv1a, None) => &[][..],
            (_, key) => key?,
        };
        let hash = match self {
            Partitioner::Random => return None,
            Partitioner::ConsistentRandom if key.is_empty() => return None,
            Partitioner::ConsistentRandom | Partitioner::Consistent => crc32fast::hash(key),
            Partitioner::Murmur2Random | Partitioner::Murmur2 => murmur2(key) & 0x7fff_ffff,
            Partitioner::Fnv1aRandom | Partitioner::Fnv1a => fnv1a(key),
        };
        i32::try_from(hash % n).ok()
    }
}

/// The Java client's murmur2 (`Utils.murmur2`), as librdkafka's `rd_murmur2`.
fn murmur2(data: &[u8]) -> u32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    let mut h = SEED ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> 24;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M) ^ k;
    }
    let tail = chunks.remainder();
    if !tail.is_empty() {
        for (i, b) in tail.iter().enumerate() {
            h ^= u32::from(*b) << (8 * i);
        }
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^ (h >> 15)
}

/// librdkafka's `rd_fnv1a`: 32-bit FNV-1a, taken as a signed number and made positive (as
/// Sarama does).
fn fnv1a(data: &[u8]) -> u32 {
    let h = data.iter().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(*b)).wrapping_mul(0x0100_0193)
    });
    (h as i32).wrapping_abs() as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The partitions chosen are librdkafka's own, asked of its partitioner functions for keys
    /// of every length up to 40 bytes (every tail of murmur2's 4-byte blocks) and several
    /// partition counts.
    #[test]
    fn partitions_are_librdkafkas() {
        use rdkafka::bindings as rd;
        type Native = unsafe extern "C" fn(
            *const rd::rd_kafka_topic_t,
            *const std::ffi::c_void,
            usize,
            i32,
            *mut std::ffi::c_void,
            *mut std::ffi::c_void,
        ) -> i32;
        // These three never touch the topic or the opaques.
        let natives: [(Partitioner, Native); 3] = [
            (
                Partitioner::Consistent,
                rd::rd_kafka_msg_partitioner_consistent,
            ),
            (Partitioner::Murmur2, rd::rd_kafka_msg_partitioner_murmur2),
            (Partitioner::Fnv1a, rd::rd_kafka_msg_partitioner_fnv1a),
        ];
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut checked = 0;
        for len in 0..=40 {
            for _ in 0..50 {
                let key: Vec<u8> = (0..len)
                    .map(|_| {
                        seed ^= seed << 13;
                        seed ^= seed >> 7;
                        seed ^= seed << 17;
                        seed as u8
                    })
                    .collect();
                for n in [1, 2, 3, 7, 12, 100] {
                    for (ours, native) in natives {
                        #[allow(unsafe_code)]
                        // SAFETY: the key is a live buffer of `len` bytes; the topic and opaques
                        // are unused by these partitioners.
                        let theirs = unsafe {
                            native(
                                std::ptr::null(),
                                key.as_ptr().cast(),
                                key.len(),
                                n,
                                std::ptr::null_mut(),
                                std::ptr::null_mut(),
                            )
                        };
                        assert_eq!(
                            ours.partition(Some(&key), n),
                            Some(theirs),
                            "{ours:?} {key:?} {n}"
                        );
                        checked += 1;
                    }
                }
            }
        }
        assert_eq!(checked, 41 * 50 * 6 * 3);
        // The random ones hash the same keys, and leave the rest to chance.
        let key = &b"user-42"[..];
        assert_eq!(
            Partitioner::ConsistentRandom.partition(Some(key), 7),
            Partitioner::Consistent.partition(Some(key), 7)
        );
        assert_eq!(Partitioner::ConsistentRandom.partition(Some(b""), 7), None);
        assert_eq!(Partitioner::Consistent.partition(Some(b""), 7), Some(0));
        // Without a key: hashed as empty by the three that are not random, else random.
        for p in [
            Partitioner::Consistent,
            Partitioner::Murmur2,
            Partitioner::Fnv1a,
        ] {
            assert_eq!(p.partition(None, 7), p.partition(Some(b""), 7), "{p:?}");
        }
        assert_eq!(Partitioner::Consistent.partition(None, 7), Some(0));
        for p in [
            Partitioner::ConsistentRandom,
            Partitioner::Murmur2Random,
            Partitioner::Fnv1aRandom,
            Partitioner::Random,
        ] {
            assert_eq!(p.partition(None, 7), None, "{p:?}");
        }
        assert_eq!(
            Partitioner::Murmur2Random.partition(Some(b""), 7),
            Partitioner::Murmur2.partition(Some(b""), 7)
        );
        assert_eq!(Partitioner::Random.partition(Some(key), 7), None);
    }

    /// A consumer setting in `kafka.properties` (`session.timeout.ms`, which the README's
    /// troubleshooting suggests) reaches the consumers but not the producers, where librdkafka
    /// warned that it ignores it on every run; and the other way round.
    #[test]
    fn each_client_gets_only_the_properties_of_its_kind() {
        use rdkafka::client::ClientContext;
        use rdkafka::config::RDKafkaLogLevel;
        use rdkafka::producer::BaseProducer;
        use std::sync::{Arc, Mutex};
        #[derive(Clone, Default)]
        struct Logs(Arc<Mutex<Vec<String>>>);
        impl ClientContext for Logs {
            fn log(&self, _: RDKafkaLogLevel, fac: &str, msg: &str) {
                self.0.lock().unwrap().push(format!("{fac}: {msg}"));
            }
        }
        impl rdkafka::producer::ProducerContext for Logs {
            type DeliveryOpaque = ();
            fn delivery(&self, _: &rdkafka::message::DeliveryResult<'_>, _: ()) {}
        }
        let kafka: KafkaConfig = serde_json::from_value(serde_json::json!({
            "topic": "t",
            "properties": {
                "session.timeout.ms": "6000",
                "linger.ms": "20",
                "client.id": "both",
            },
        }))
        .unwrap();
        let warnings = |mut cfg: ClientConfig| {
            // Tests install no logger, and rdkafka passes that level on to librdkafka.
            cfg.set_log_level(RDKafkaLogLevel::Warning);
            let logs = Logs::default();
            let producer: BaseProducer<Logs> = cfg.create_with_context(logs.clone()).unwrap();
            // Logs come through the client's main queue, which a poll serves.
            producer.poll(Duration::from_millis(100));
            drop(producer);
            let seen = logs.0.lock().unwrap().clone();
            seen.into_iter()
                .filter(|l| l.starts_with("CONFWARN"))
                .collect::<Vec<_>>()
        };
        let mut raw = ClientConfig::new();
        for (k, v) in &kafka.properties {
            raw.set(k, v);
        }
        let raw = warnings(raw);
        assert!(
            raw.iter().any(|w| w.contains("session.timeout.ms")),
            "{raw:?}"
        );
        for cfg in [
            producer_config(&kafka, "127.0.0.1:9"),
            client_config(&kafka, "127.0.0.1:9", ClientKind::Producer),
        ] {
            assert_eq!(warnings(cfg), Vec::<String>::new());
        }
        let props = |kind| {
            properties_for(&kafka, kind)
                .map(|(k, _)| k)
                .collect::<Vec<_>>()
        };
        assert_eq!(props(ClientKind::Producer), ["client.id", "linger.ms"]);
        assert_eq!(
            props(ClientKind::Consumer),
            ["client.id", "session.timeout.ms"]
        );
    }

    #[test]
    fn the_partitioner_is_read_from_the_properties() {
        let kafka = |props: serde_json::Value| -> KafkaConfig {
            serde_json::from_value(serde_json::json!({ "topic": "t", "properties": props }))
                .unwrap()
        };
        let of = |props| Partitioner::of(&kafka(props));
        assert_eq!(of(serde_json::json!({})), Ok(Partitioner::ConsistentRandom));
        let murmur = serde_json::json!({ "partitioner": "murmur2_random" });
        assert_eq!(of(murmur), Ok(Partitioner::Murmur2Random));
        let err = of(serde_json::json!({ "partitioner": "murmur3" })).unwrap_err();
        assert!(err.contains("\"murmur3\" is not a partitioner"), "{err}");
    }

    #[test]
    fn a_rejected_setting_does_not_show_its_value() {
        // A mistyped key, and a key this build has no TLS support for: librdkafka refuses both
        // and its message would end with the password.
        for key in ["sasl.pasword", "ssl.key.password"] {
            let kafka: KafkaConfig = serde_json::from_value(serde_json::json!({
                "topic": "t",
                "properties": { key: "TopSecret-123" },
            }))
            .unwrap();
            let shown = [
                create_producer(&kafka, "127.0.0.1:9").err(),
                admin_client(&kafka, "127.0.0.1:9").err(),
            ]
            .map(|e| {
                format!(
                    "{:#}",
                    anyhow::Error::new(e.expect("the setting is refused"))
                )
            });
            for shown in shown {
                assert!(shown.contains(key), "{shown}");
                assert!(!shown.contains("TopSecret"), "{shown}");
            }
        }
    }
}
