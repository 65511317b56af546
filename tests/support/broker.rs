//! A real nisshi broker process for tests, shared by the whole test binary.
//!
//! Started on first use on a free loopback port with its own data directory. It is never
//! dropped (it lives in a static), so it is stopped by the watchdog of [`ManagedBroker`] when the
//! test process exits, however it exits, and the watchdog then deletes the data directory.
//! Each test uses its own topics and groups ([`unique`]).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::message::{Headers as _, Message as _};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use sluice::broker::ManagedBroker;
use sluice::config::KafkaConfig;

static BROKER: OnceLock<ManagedBroker> = OnceLock::new();

/// The shared broker, started on first use. Panics (failing the test) when nisshi is not
/// installed: run `scripts/install-broker.sh`.
pub fn shared() -> &'static ManagedBroker {
    BROKER.get_or_init(|| {
        remove_stale_dirs();
        let dir = std::env::temp_dir().join(format!("sluice-test-nisshi-{}", std::process::id()));
        ManagedBroker::start_ephemeral(&dir).unwrap_or_else(|e| panic!("{e}"))
    })
}

/// Removes data directories left by test processes that are gone (a `SIGKILL`ed run cannot
/// clean up after itself).
fn remove_stale_dirs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("sluice-test-nisshi-"))
        else {
            continue;
        };
        if pid.parse::<u32>().is_ok()
            && !Path::new("/proc").join(pid).exists()
            && Path::new("/proc/self").exists()
        {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// The shared broker's bootstrap servers.
pub fn bootstrap() -> String {
    shared().bootstrap()
}

/// A name no other test (or earlier run) uses: `<prefix>-<uuid>`.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

/// A `kafka` section for `topic` on the shared broker, with extra fields from `extra`
/// (e.g. `{"partitions": 3, "max_in_flight": 5000}`).
pub fn kafka_config(topic: &str, extra: serde_json::Value) -> KafkaConfig {
    let mut v = serde_json::json!({ "brokers": bootstrap(), "topic": topic });
    if let (Some(obj), Some(extra)) = (v.as_object_mut(), extra.as_object()) {
        for (k, x) in extra {
            obj.insert(k.clone(), x.clone());
        }
    }
    serde_json::from_value(v).expect("valid kafka config")
}

/// One message read back from the broker.
#[derive(Debug, Clone)]
pub struct Message {
    /// Its partition.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
    /// Its key.
    pub key: Option<Vec<u8>>,
    /// Its value.
    pub value: Option<Vec<u8>>,
    /// Its timestamp in milliseconds.
    pub timestamp_ms: Option<i64>,
    /// Its headers.
    pub headers: BTreeMap<String, Vec<u8>>,
}

impl Message {
    /// A header as text.
    pub fn header(&self, key: &str) -> Option<&str> {
        self.headers
            .get(key)
            .and_then(|v| std::str::from_utf8(v).ok())
    }

    /// The value as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(self.value.as_deref().unwrap_or_default()).expect("JSON value")
    }
}

/// Deletes the records of `topic`'s `partition` below `offset` (DeleteRecords, as retention
/// would), and returns the broker's answer: each partition with its new start offset.
pub fn delete_below(topic: &str, partition: i32, offset: i64) -> TopicPartitionList {
    let admin: rdkafka::admin::AdminClient<_> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .create()
        .expect("admin client");
    let mut below = TopicPartitionList::new();
    below
        .add_partition_offset(topic, partition, Offset::Offset(offset))
        .expect("tpl");
    let opts = rdkafka::admin::AdminOptions::new();
    tokio::runtime::Runtime::new()
        .expect("runtime")
        .block_on(admin.delete_records(&below, &opts))
        .expect("DeleteRecords")
}

/// How many records `topic` has taken: the sum of its partitions' end offsets (0 when it does not
/// exist).
pub fn records_in(topic: &str) -> i64 {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .create()
        .expect("consumer");
    let md = c
        .fetch_metadata(Some(topic), Duration::from_secs(30))
        .expect("metadata");
    (md.topics().iter().flat_map(|t| t.partitions()))
        .map(|p| {
            c.fetch_watermarks(topic, p.id(), Duration::from_secs(30))
                .expect("watermarks")
                .1
        })
        .sum()
}

/// Every message of `topic`, read with a plain rdkafka consumer (no group, no sluice code),
/// partition by partition up to the end offsets at the time of the call.
pub fn read_topic(topic: &str) -> Vec<Message> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("enable.partition.eof", "false")
        // librdkafka needs a group id even for manual assignment; nothing is committed to it.
        .set("group.id", unique("reader"))
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let md = c
        .fetch_metadata(Some(topic), Duration::from_secs(30))
        .expect("metadata");
    let partitions: Vec<i32> = md.topics()[0].partitions().iter().map(|p| p.id()).collect();
    let mut ends = BTreeMap::new();
    let mut tpl = TopicPartitionList::new();
    for p in &partitions {
        let (_, high) = c
            .fetch_watermarks(topic, *p, Duration::from_secs(30))
            .expect("watermarks");
        if high > 0 {
            ends.insert(*p, high);
            tpl.add_partition_offset(topic, *p, Offset::Beginning)
                .expect("tpl");
        }
    }
    let mut out = Vec::new();
    if ends.is_empty() {
        return out;
    }
    c.assign(&tpl).expect("assign");
    let mut done = BTreeMap::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while done.len() < ends.len() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out reading {topic}: {} of {ends:?}",
            out.len()
        );
        let Some(r) = c.poll(Duration::from_millis(200)) else {
            continue;
        };
        let m = r.expect("message");
        let headers = m
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| (h.key.to_owned(), h.value.unwrap_or_default().to_vec()))
                    .collect()
            })
            .unwrap_or_default();
        if m.offset() + 1 >= ends[&m.partition()] {
            done.insert(m.partition(), ());
        }
        out.push(Message {
            partition: m.partition(),
            offset: m.offset(),
            key: m.key().map(<[u8]>::to_vec),
            value: m.payload().map(<[u8]>::to_vec),
            timestamp_ms: m.timestamp().to_millis(),
            headers,
        });
    }
    out
}
