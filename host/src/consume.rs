//! The Kafka consumer half: a consumer group that hands records to the pipeline and commits
//! offsets only for records the sink reports durable. Also the plain reads around it: end and
//! committed offsets, and [`read_to_end`] (no group) for `sluice dead-letters`.
//!
//! Threading: librdkafka runs rebalance callbacks inside `poll`, so one dedicated thread (not a
//! tokio worker) owns the poll loop. That thread may block: when partitions are assigned it waits
//! for the caller's async offsets provider (the sink's committed offsets in the warehouse) and
//! assigns each partition at exactly that offset before any record is fetched; partitions the
//! provider does not know start at the group's committed offset, else at the earliest.
//!
//! Records, assignments and revocations reach the caller in order through one bounded channel
//! ([`Consumer::recv`]); each partition's records arrive in offset order.
//!
//! Backpressure: a record is *in flight* from the moment it is handed out until [`Consumer::commit`]
//! covers it (or its partition is revoked). When `max_in_flight` records are in flight, the poll
//! thread pauses every partition and keeps polling (so the group session and rebalances stay
//! alive); librdkafka then drops its prefetched data and resumes from the position later. A slow
//! sink therefore slows consumption and memory stays flat. The caller must commit; a caller that
//! holds more than `max_in_flight` records before committing would wait forever.
//!
//! Revocation fences commits: the revoke callback and [`Consumer::commit`] take the same lock,
//! and a commit holds it until the coordinator has answered. So a commit either completes before
//! the partition is given up (this member rejoins only after the callback returns, so the
//! partition's next owner reads the committed offset) or is refused
//! ([`CommitOutcome::NotAssigned`]). librdkafka sends a commit at once in any join state and
//! answers it on its own thread, so the callback waits at most one round trip. Records of a
//! revoked partition still queued in the channel are discarded by [`Consumer::recv`].

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::client::ClientContext;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer as _, ConsumerContext, RebalanceProtocol,
};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Headers as _, Message as _};
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;
use tokio::sync::mpsc;

use crate::config::KafkaConfig;
use crate::row::{RecordMeta, Row};
use crate::source::producer::{ClientKind, client_config, properties_for, without_config_value};
use crate::source::wire::{self, DecodeError};

/// How long metadata, offset and commit requests may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the offsets provider may take for one assignment.
const PROVIDER_TIMEOUT: Duration = Duration::from_secs(120);

/// Room in the event channel beyond `max_in_flight`, for events that are not records in flight.
const EVENT_SLACK: usize = 1024;

/// The future an [`OffsetsProvider`] returns: next offset per partition, or why it failed.
pub type OffsetsFuture = Pin<Box<dyn Future<Output = Result<HashMap<i32, i64>, String>> + Send>>;

/// Given a topic and newly assigned partitions, the next offset to read for each partition the
/// caller already holds data for (the sink's durable offsets). Partitions left out start at the
/// group's committed offset, else at the earliest.
pub type OffsetsProvider = Arc<dyn Fn(String, Vec<i32>) -> OffsetsFuture + Send + Sync>;

/// An [`OffsetsProvider`] that knows nothing: every partition starts at the group's committed
/// offset, else at the earliest.
pub fn group_offsets() -> OffsetsProvider {
    Arc::new(|_, _| Box::pin(async { Ok(HashMap::new()) }))
}

/// Why the consumer failed.
#[derive(Debug, thiserror::Error)]
pub enum ConsumeError {
    /// A Kafka client call failed.
    #[error("{what}")]
    Kafka {
        /// What was being done.
        what: String,
        /// The client's error.
        #[source]
        source: KafkaError,
    },
    /// The offsets provider failed, so the consumer cannot know where to start.
    #[error("cannot get start offsets for {topic} partitions {partitions:?}: {reason}")]
    Offsets {
        /// The topic.
        topic: String,
        /// The partitions being assigned.
        partitions: Vec<i32>,
        /// The provider's error.
        reason: String,
    },
    /// The consumer thread could not be started or died.
    #[error("consumer thread failed: {0}")]
    Thread(String),
    /// A read to the end of a topic got no message for a while, short of that end.
    #[error(
        "reading {topic}: no message for {} s, short of the end offsets {ends:?} (partition: \
         offset){}",
        REQUEST_TIMEOUT.as_secs(),
        last_error.as_ref().map(|e| format!("; the last error: {e}")).unwrap_or_default()
    )]
    Stalled {
        /// The topic.
        topic: String,
        /// The partitions not read to their end, and their end offsets.
        ends: BTreeMap<i32, i64>,
        /// The last transient error the client reported meanwhile (usually the cause).
        last_error: Option<String>,
    },
}

/// Consumer counters (rendered by the metrics module).
#[derive(Debug, Default)]
pub struct ConsumerStats {
    /// Records handed to the caller.
    pub records_consumed: AtomicU64,
    /// Message value bytes handed to the caller.
    pub bytes_consumed: AtomicU64,
    /// Records whose value did not decode into a row.
    pub decode_errors: AtomicU64,
    /// Successful offset commits.
    pub commits: AtomicU64,
    /// Failed offset commits.
    pub commit_errors: AtomicU64,
    /// Records handed out and not yet committed (or revoked).
    pub in_flight: AtomicU64,
    /// How often consumption was paused because `max_in_flight` was reached.
    pub pauses: AtomicU64,
    /// Rebalances seen (assignments and revocations).
    pub rebalances: AtomicU64,
    /// Lag per assigned partition (end offset minus committed offset), from librdkafka's
    /// statistics about every second, and refreshed at each commit.
    pub lag: Mutex<BTreeMap<i32, i64>>,
    /// End offset per assigned partition (last stable offset), from the same statistics.
    pub end_offsets: Mutex<BTreeMap<i32, i64>>,
}

impl ConsumerStats {
    /// The sum of the per-partition lags.
    pub fn total_lag(&self) -> i64 {
        self.lag
            .lock()
            .map(|l| l.values().filter(|v| **v > 0).sum())
            .unwrap_or(0)
    }
}

/// Where a newly assigned partition starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionStart {
    /// The partition.
    pub partition: i32,
    /// The offset from the offsets provider, or `None` when it starts at the group's committed
    /// offset (else the earliest).
    pub offset: Option<i64>,
    /// Where `offset` is `None`: the group's committed offset it starts at, read when it was
    /// assigned (unless librdkafka finds it past the partition's end and starts at the
    /// earliest); `None` when the group has none or it could not be read, and the partition
    /// starts where `auto.offset.reset` says.
    pub group_offset: Option<i64>,
}

/// A consumed record.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// Where it came from.
    pub meta: RecordMeta,
    /// The message value exactly as it arrived: the payload of its dead letter if it does not
    /// decode or fails in a transform (a re-encoded row would differ for other producers' JSON).
    pub value: Vec<u8>,
    /// The decoded row, or why it did not decode.
    pub row: Result<Row, DecodeError>,
}

/// What the consumer tells its caller, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum ConsumerEvent {
    /// Partitions were assigned; their records follow.
    Assigned {
        /// The topic.
        topic: String,
        /// The partitions and where each starts.
        partitions: Vec<PartitionStart>,
    },
    /// Partitions were taken away: drop their in-flight state; no more of their records follow
    /// (until a later assignment).
    Revoked {
        /// The topic.
        topic: String,
        /// The partitions.
        partitions: Vec<i32>,
    },
    /// A record.
    Record(Record),
}

/// What a [`Consumer::commit`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitOutcome {
    /// The offset was committed to the group.
    Committed,
    /// An equal or later offset was already committed; nothing was sent.
    AlreadyCommitted,
    /// The partition is not assigned to this consumer (any more); nothing was sent.
    NotAssigned,
}

/// Consumer settings.
#[derive(Clone)]
pub struct ConsumerOptions<'a> {
    /// Kafka settings (topic, `max_in_flight`, properties).
    pub kafka: &'a KafkaConfig,
    /// Resolved bootstrap servers.
    pub bootstrap: &'a str,
    /// The consumer group.
    pub group_id: &'a str,
    /// Start offsets for newly assigned partitions.
    pub offsets: OffsetsProvider,
    /// Counters to update.
    pub stats: Arc<ConsumerStats>,
}

impl std::fmt::Debug for ConsumerOptions<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsumerOptions")
            .field("group_id", &self.group_id)
            .finish_non_exhaustive()
    }
}

struct PartState {
    generation: u64,
    /// Offsets handed out and not yet committed, ascending.
    outstanding: VecDeque<i64>,
    /// The highest next offset released by a commit: records below it, handed out later (the
    /// warehouse was ahead of where this consumer started), are durable already and never in
    /// flight. Counting them would pause the consumer for good once `max_in_flight` of them came,
    /// since only a later commit would release them, and no record at or past it would come.
    released: i64,
}

#[derive(Default)]
struct State {
    partitions: HashMap<i32, PartState>,
    generation: u64,
}

struct Shared {
    topic: String,
    state: Mutex<State>,
    /// Assigned partitions and the highest next offset committed for each. Held across a commit
    /// request and by the revoke callback: this is the commit fence.
    fence: Mutex<HashMap<i32, i64>>,
    stats: Arc<ConsumerStats>,
    stop: AtomicBool,
    /// Whether the poll loop has paused the assignment for backpressure.
    paused: AtomicBool,
}

impl Shared {
    /// Forgets the records below `next` of `partition`: no longer in flight.
    fn release(&self, partition: i32, next: i64) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = st.partitions.get_mut(&partition) {
            let mut n = 0;
            p.released = p.released.max(next);
            while p.outstanding.front().is_some_and(|o| *o < next) {
                p.outstanding.pop_front();
                n += 1;
            }
            self.stats.in_flight.fetch_sub(n, Ordering::Relaxed);
        }
    }
}

type Tagged = (u64, Result<ConsumerEvent, ConsumeError>);

struct Ctx {
    shared: Arc<Shared>,
    events: mpsc::Sender<Tagged>,
    offsets: OffsetsProvider,
    runtime: tokio::runtime::Handle,
}

impl ClientContext for Ctx {
    fn stats(&self, statistics: Statistics) {
        let Some(topic) = statistics.topics.get(&self.shared.topic) else {
            return;
        };
        // librdkafka's consumer_lag is measured from the last stable offset.
        let (mut lag, mut ends) = (BTreeMap::new(), BTreeMap::new());
        for (&p, s) in topic.partitions.iter().filter(|(p, _)| **p >= 0) {
            if s.consumer_lag >= 0 {
                lag.insert(p, s.consumer_lag);
            } else if s.ls_offset >= 0 && s.committed_offset < 0 {
                // No commit yet (librdkafka says -1): every record kept is past it. Lag read 0
                // until a new pipeline's first commit.
                lag.insert(p, s.ls_offset - s.lo_offset.max(0));
            }
            if s.ls_offset >= 0 {
                ends.insert(p, s.ls_offset);
            }
        }
        if let Ok(mut l) = self.shared.stats.lag.lock() {
            *l = lag;
        }
        if let Ok(mut e) = self.shared.stats.end_offsets.lock() {
            *e = ends;
        }
    }
}

impl Ctx {
    fn start_offsets(&self, partitions: &[i32]) -> Result<HashMap<i32, i64>, String> {
        let fut = (self.offsets)(self.shared.topic.clone(), partitions.to_vec());
        let (tx, rx) = std::sync::mpsc::channel();
        // Spawned on the caller's runtime rather than blocked on here, so it works with a
        // current-thread runtime too (this thread is not one of its workers).
        self.runtime.spawn(async move {
            let _ = tx.send(fut.await);
        });
        rx.recv_timeout(PROVIDER_TIMEOUT)
            .map_err(|_| "the offsets provider did not answer".to_owned())?
    }

    fn assign(&self, c: &BaseConsumer<Self>, tpl: &mut TopicPartitionList) {
        let topic = self.shared.topic.clone();
        let partitions = partitions_in(tpl, &topic);
        let offsets = match self.start_offsets(&partitions) {
            Ok(o) => o,
            Err(reason) => {
                self.shared.stop.store(true, Ordering::SeqCst);
                let error = ConsumeError::Offsets {
                    topic,
                    partitions,
                    reason,
                };
                send_event(&self.events, (0, Err(error)));
                return;
            }
        };
        // The group's committed offsets: where a partition the warehouse has no offset for starts
        // (read here, as librdkafka is about to), and what the warehouse's may be ahead of.
        let group: HashMap<i32, Option<i64>> = {
            let mut asked = TopicPartitionList::new();
            for p in &partitions {
                asked.add_partition(&topic, *p);
            }
            match c.committed_offsets(asked, REQUEST_TIMEOUT) {
                // Per partition: its offset, `None` when the group has none; left out when the
                // answer for it was an error.
                Ok(list) => (list.elements().iter())
                    .filter(|e| e.error().is_ok())
                    .map(|e| match e.offset() {
                        Offset::Offset(o) => (e.partition(), Some(o)),
                        _ => (e.partition(), None),
                    })
                    .collect(),
                Err(e) => {
                    tracing::warn!(%topic, error = %e, "Cannot read the consumer group's committed offsets.");
                    HashMap::new()
                }
            }
        };
        let mut starts = Vec::with_capacity(partitions.len());
        let mut catch_up = TopicPartitionList::new();
        for p in &partitions {
            let offset = offsets.get(p).copied().filter(|o| *o >= 0);
            let known = group.get(p).copied();
            // Where the warehouse has no offset, at the group's, set here rather than left to
            // librdkafka to read again, so that the caller knows where the partition starts.
            let (at, group_offset) = match (offset, known) {
                (Some(w), _) => (Offset::Offset(w), None),
                (None, Some(Some(g))) => (Offset::Offset(g), Some(g)),
                (None, _) => (Offset::Stored, None),
            };
            if let Err(e) = tpl.set_partition_offset(&topic, *p, at) {
                tracing::warn!(partition = p, error = %e, "Cannot set start offset.");
            }
            // Only forward: a group shared by pipelines of other names may be past this one's.
            if let (Some(w), Some(g)) = (offset, known)
                && g.is_none_or(|g| g < w)
            {
                let _ = catch_up.add_partition_offset(&topic, *p, Offset::Offset(w));
            }
            starts.push(PartitionStart {
                partition: *p,
                offset,
                group_offset,
            });
        }
        // The group's offsets follow the warehouse's, which a crash between the two commits, or
        // a Kafka commit that failed, leaves behind: on a topic loaded to its end no later batch
        // would move them, and lag measured from them (an outside monitor's too) never cleared.
        // Sent before any commit of this assignment's loads, which come after it in order (but
        // for a retry across a coordinator's move, which can only leave the group behind
        // again). Outside the fence: the group's generation check keeps a revoked member's
        // commit out. An async commit's failure is not reported back here; it is only lag.
        if catch_up.count() > 0
            && let Err(e) = c.commit(&catch_up, CommitMode::Async)
        {
            tracing::debug!(error = %e, "Cannot commit the warehouse's offsets to the group.");
        }
        let generation = {
            let mut fence = self.shared.fence.lock().unwrap_or_else(|e| e.into_inner());
            let mut st = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
            st.generation += 1;
            let generation = st.generation;
            for s in &starts {
                st.partitions.insert(
                    s.partition,
                    PartState {
                        generation,
                        outstanding: VecDeque::new(),
                        released: i64::MIN,
                    },
                );
                fence.insert(s.partition, s.offset.unwrap_or(-1));
            }
            generation
        };
        let r = match c.rebalance_protocol() {
            RebalanceProtocol::Cooperative => c.incremental_assign(tpl),
            _ => c.assign(tpl),
        };
        if let Err(e) = r {
            tracing::error!(error = %e, "Partition assignment failed.");
        }
        // librdkafka keeps a partition's pause across unassign and assign, so a partition paused
        // for backpressure before a rebalance could otherwise stay paused for good. Newly
        // assigned partitions follow the poll loop's current state, which it later undoes for
        // the whole assignment.
        let r = if self.shared.paused.load(Ordering::SeqCst) {
            c.pause(tpl)
        } else {
            c.resume(tpl)
        };
        if let Err(e) = r {
            tracing::warn!(error = %e, "Cannot set the pause state of newly assigned partitions.");
        }
        self.shared.stats.rebalances.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(%topic, ?starts, "Partitions assigned.");
        let assigned = ConsumerEvent::Assigned {
            topic,
            partitions: starts,
        };
        send_event(&self.events, (generation, Ok(assigned)));
    }

    fn revoke(&self, c: &BaseConsumer<Self>, tpl: &TopicPartitionList, incremental: bool) {
        let topic = self.shared.topic.clone();
        let partitions = partitions_in(tpl, &topic);
        {
            // Waits for a commit in progress on these partitions, then refuses later ones.
            let mut fence = self.shared.fence.lock().unwrap_or_else(|e| e.into_inner());
            let mut st = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
            for p in &partitions {
                fence.remove(p);
                if let Some(ps) = st.partitions.remove(p) {
                    self.shared
                        .stats
                        .in_flight
                        .fetch_sub(ps.outstanding.len() as u64, Ordering::Relaxed);
                }
            }
        }
        let r = if incremental {
            c.incremental_unassign(tpl)
        } else {
            c.unassign()
        };
        if let Err(e) = r {
            tracing::warn!(error = %e, "Partition unassignment failed.");
        }
        self.shared.stats.rebalances.fetch_add(1, Ordering::Relaxed);
        if self.shared.stop.load(Ordering::SeqCst) {
            // Its own leaving, at the end of every run: no rebalance an operator need look into.
            tracing::debug!(%topic, ?partitions, "Partitions given up as the consumer leaves.");
        } else {
            tracing::info!(%topic, ?partitions, lost = c.assignment_lost(), "Partitions revoked.");
        }
        let revoked = ConsumerEvent::Revoked { topic, partitions };
        send_event(&self.events, (0, Ok(revoked)));
    }
}

impl ConsumerContext for Ctx {
    fn rebalance(&self, c: &BaseConsumer<Self>, err: RDKafkaRespErr, tpl: &mut TopicPartitionList) {
        let incremental = matches!(c.rebalance_protocol(), RebalanceProtocol::Cooperative);
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => self.assign(c, tpl),
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                self.revoke(c, tpl, incremental)
            }
            other => {
                tracing::error!(error = ?other, "Rebalance failed; giving up the assignment.");
                let all = c.assignment().unwrap_or_default();
                self.revoke(c, &all, false);
            }
        }
    }
}

/// A group consumer of one topic. Dropping it leaves the group.
pub struct Consumer {
    events: mpsc::Receiver<Tagged>,
    shared: Arc<Shared>,
    consumer: Arc<BaseConsumer<Ctx>>,
    thread: Option<std::thread::JoinHandle<()>>,
    failed: bool,
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("topic", &self.shared.topic)
            .finish_non_exhaustive()
    }
}

impl Consumer {
    /// Joins the group and subscribes to `kafka.topic`. Must be called inside a tokio runtime
    /// (the offsets provider runs on it).
    pub fn start(opts: ConsumerOptions<'_>) -> Result<Consumer, ConsumeError> {
        let topic = opts.kafka.topic.clone();
        let shared = Arc::new(Shared {
            topic: topic.clone(),
            state: Mutex::new(State::default()),
            fence: Mutex::new(HashMap::new()),
            stats: opts.stats.clone(),
            stop: AtomicBool::new(false),
            paused: AtomicBool::new(false),
        });
        let max_in_flight = opts.kafka.max_in_flight.max(1) as u64;
        // The pause at `max_in_flight` (records in flight or waiting here) holds records back, so
        // records leave `EVENT_SLACK` free for the assignment events the callbacks send.
        let capacity = usize::try_from(max_in_flight).unwrap_or(usize::MAX) + EVENT_SLACK;
        let (tx, rx) = mpsc::channel(capacity);
        let ctx = Ctx {
            shared: shared.clone(),
            events: tx.clone(),
            offsets: opts.offsets.clone(),
            runtime: tokio::runtime::Handle::current(),
        };
        let mut cfg = client_config(opts.kafka, opts.bootstrap, ClientKind::Consumer);
        cfg.set("group.id", opts.group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("statistics.interval.ms", "1000")
            // librdkafka heartbeats from its own thread, so a busy pipeline does not miss its
            // session; 10 s (not 45) is how long a restart after a crash (`kill -9`) waits for
            // the dead member's partitions. `kafka.properties` may set it back.
            .set("session.timeout.ms", "10000");
        for (k, v) in properties_for(opts.kafka, ClientKind::Consumer) {
            cfg.set(k, v);
        }
        let kafka_err = |what: &str| {
            let what = what.to_owned();
            move |source| ConsumeError::Kafka {
                what,
                source: without_config_value(source),
            }
        };
        let consumer: BaseConsumer<Ctx> = cfg
            .create_with_context(ctx)
            .map_err(kafka_err("cannot create Kafka consumer"))?;
        consumer
            .subscribe(&[&topic])
            .map_err(kafka_err("cannot subscribe"))?;
        let consumer = Arc::new(consumer);
        let thread = {
            let (consumer, shared) = (consumer.clone(), shared.clone());
            std::thread::Builder::new()
                .name("sluice-consumer".into())
                .spawn(move || poll_loop(&consumer, &shared, &tx, max_in_flight))
                .map_err(|e| ConsumeError::Thread(e.to_string()))?
        };
        Ok(Consumer {
            events: rx,
            shared,
            consumer,
            thread: Some(thread),
            failed: false,
        })
    }

    /// The next event; `None` once the consumer has stopped. An `Err` is fatal: the consumer
    /// stops after it.
    pub async fn recv(&mut self) -> Option<Result<ConsumerEvent, ConsumeError>> {
        if self.failed {
            return None;
        }
        loop {
            let (generation, ev) = self.events.recv().await?;
            if let Ok(ConsumerEvent::Record(r)) = &ev {
                let st = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
                if st.partitions.get(&r.meta.partition).map(|p| p.generation) != Some(generation) {
                    continue;
                }
            }
            self.failed = ev.is_err();
            return Some(ev);
        }
    }

    /// Commits `next_offset` (the offset after the last durable record) for a partition of
    /// `topic`, and releases the in-flight records below it, even when the commit fails: they are
    /// durable in the warehouse, which is what a restart resumes from. Never moves a committed
    /// offset back. Returns once the group coordinator has answered.
    pub async fn commit(
        &self,
        topic: &str,
        partition: i32,
        next_offset: i64,
    ) -> Result<CommitOutcome, ConsumeError> {
        if topic != self.shared.topic {
            return Ok(CommitOutcome::NotAssigned);
        }
        let (shared, consumer, topic) =
            (self.shared.clone(), self.consumer.clone(), topic.to_owned());
        tokio::task::spawn_blocking(move || {
            let mut fence = shared.fence.lock().unwrap_or_else(|e| e.into_inner());
            let Some(committed) = fence.get_mut(&partition) else {
                return Ok(CommitOutcome::NotAssigned);
            };
            if next_offset <= *committed {
                drop(fence);
                shared.release(partition, next_offset);
                return Ok(CommitOutcome::AlreadyCommitted);
            }
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition_offset(&topic, partition, Offset::Offset(next_offset))
                .map_err(|source| ConsumeError::Kafka {
                    what: "invalid offset".into(),
                    source,
                })?;
            // Sync, with the fence held: see the module doc.
            if let Err(source) = consumer.commit(&tpl, CommitMode::Sync) {
                shared.stats.commit_errors.fetch_add(1, Ordering::Relaxed);
                drop(fence);
                shared.release(partition, next_offset);
                return Err(ConsumeError::Kafka {
                    what: format!(
                        "cannot commit offset {next_offset} of {topic} partition {partition}"
                    ),
                    source,
                });
            }
            *committed = next_offset;
            drop(fence);
            shared.stats.commits.fetch_add(1, Ordering::Relaxed);
            // Lag follows commits at once, not a statistics interval later (the progress line's
            // last frame would otherwise show a stale lag).
            let end = shared
                .stats
                .end_offsets
                .lock()
                .ok()
                .and_then(|e| e.get(&partition).copied());
            if let (Some(end), Ok(mut lag)) = (end, shared.stats.lag.lock()) {
                lag.insert(partition, (end - next_offset).max(0));
            }
            shared.release(partition, next_offset);
            Ok(CommitOutcome::Committed)
        })
        .await
        .map_err(|e| ConsumeError::Thread(e.to_string()))?
    }

    /// The topic this consumer reads.
    pub fn topic(&self) -> &str {
        &self.shared.topic
    }

    /// Partitions currently assigned.
    pub fn assignment(&self) -> Vec<i32> {
        let st = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<i32> = st.partitions.keys().copied().collect();
        v.sort_unstable();
        v
    }

    /// Leaves the group and waits for the poll thread to end.
    pub async fn close(mut self) {
        // Wakes a poll thread waiting for room in the channel, which then finds it closed.
        self.events.close();
        let thread = self.thread.take();
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(t) = thread {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        self.events.close();
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn poll_loop(
    consumer: &Arc<BaseConsumer<Ctx>>,
    shared: &Shared,
    tx: &mpsc::Sender<Tagged>,
    max: u64,
) {
    let mut next_check = std::time::Instant::now();
    while !shared.stop.load(Ordering::SeqCst) {
        // Records of a revoked partition stop counting as in flight while they wait in the
        // channel for `recv` to skip them, so what waits there counts too: records never take
        // the room kept for events, and this thread does not wait on a pipeline that is busy.
        let queued = (tx.max_capacity() - tx.capacity()) as u64;
        let in_flight = shared.stats.in_flight.load(Ordering::Relaxed).max(queued);
        let paused = shared.paused.load(Ordering::SeqCst);
        let now = std::time::Instant::now();
        if !paused && in_flight >= max {
            let assigned = consumer.assignment().unwrap_or_default();
            match consumer.pause(&assigned) {
                Ok(()) => {
                    shared.stats.pauses.fetch_add(1, Ordering::Relaxed);
                    shared.paused.store(true, Ordering::SeqCst);
                }
                Err(e) => tracing::warn!(error = %e, "Cannot pause consumption."),
            }
        } else if !paused && now >= next_check {
            // A pause can outlive a rebalance inside librdkafka (the resume issued during the
            // assignment may be applied before the assignment is), so while consumption should
            // run, the whole assignment is resumed again now and then; resuming is a local no-op
            // for running partitions.
            next_check = now + Duration::from_millis(500);
            let assigned = consumer.assignment().unwrap_or_default();
            if assigned.count() > 0
                && let Err(e) = consumer.resume(&assigned)
            {
                tracing::warn!(error = %e, "Cannot resume consumption.");
            }
        } else if paused && in_flight <= max - max.div_ceil(4) {
            // Resume with some headroom (a quarter, at least one record), so one commit does not
            // flip pause on and off.
            let assigned = consumer.assignment().unwrap_or_default();
            match consumer.resume(&assigned) {
                Ok(()) => shared.paused.store(false, Ordering::SeqCst),
                Err(e) => tracing::warn!(error = %e, "Cannot resume consumption."),
            }
        }
        let Some(polled) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let msg = match polled {
            Ok(msg) => msg,
            Err(e) => {
                tracing::warn!(error = %e, "Consumer error.");
                continue;
            }
        };
        if let Some(ev) = handle_message(&msg, shared)
            && !send_event(tx, ev)
        {
            break;
        }
    }
    // Leave the group here, serving the revoke callback on this thread, rather than in the
    // `BaseConsumer` drop, which may run on a tokio worker.
    if consumer.close_queue().is_ok() {
        let deadline = std::time::Instant::now() + REQUEST_TIMEOUT;
        while !consumer.closed() && std::time::Instant::now() < deadline {
            let _ = consumer.poll(Duration::from_millis(100));
        }
    }
}

/// Sends `ev`, waiting for room if need be; false once the receiver is gone. Never waits inside a
/// tokio runtime, where waiting is not allowed: a rebalance callback can run there only while the
/// consumer is dropped, after [`Consumer`] closed the channel, so nothing is lost by not waiting.
fn send_event(tx: &mpsc::Sender<Tagged>, ev: Tagged) -> bool {
    match tx.try_send(ev) {
        Ok(()) => true,
        Err(mpsc::error::TrySendError::Closed(_)) => false,
        Err(mpsc::error::TrySendError::Full(ev)) => {
            tokio::runtime::Handle::try_current().is_err() && tx.blocking_send(ev).is_ok()
        }
    }
}

fn handle_message(msg: &BorrowedMessage<'_>, shared: &Shared) -> Option<Tagged> {
    let (partition, offset) = (msg.partition(), msg.offset());
    let generation = {
        let mut st = shared.state.lock().unwrap_or_else(|e| e.into_inner());
        let p = st.partitions.get_mut(&partition)?;
        if offset >= p.released {
            p.outstanding.push_back(offset);
            shared.stats.in_flight.fetch_add(1, Ordering::Relaxed);
        }
        p.generation
    };
    let value = msg.payload();
    let mut headers = Vec::new();
    let mut types = None;
    if let Some(h) = msg.headers() {
        for header in h.iter() {
            if header.key == wire::HEADER_TYPES {
                types = header.value;
            }
            headers.push((
                header.key.to_owned(),
                header.value.unwrap_or_default().to_vec(),
            ));
        }
    }
    let row = wire::decode(value, types).inspect_err(|_| {
        shared.stats.decode_errors.fetch_add(1, Ordering::Relaxed);
    });
    shared
        .stats
        .records_consumed
        .fetch_add(1, Ordering::Relaxed);
    shared
        .stats
        .bytes_consumed
        .fetch_add(value.map_or(0, |v| v.len() as u64), Ordering::Relaxed);
    let meta = RecordMeta {
        topic: msg.topic().to_owned(),
        partition,
        offset,
        key: msg.key().map(<[u8]>::to_vec),
        timestamp_ms: msg.timestamp().to_millis(),
        headers,
    };
    let value = value.unwrap_or_default().to_vec();
    Some((
        generation,
        Ok(ConsumerEvent::Record(Record { meta, value, row })),
    ))
}

fn reader(
    kafka: &KafkaConfig,
    bootstrap: &str,
    group: Option<&str>,
) -> Result<BaseConsumer, ConsumeError> {
    let mut cfg = client_config(kafka, bootstrap, ClientKind::Consumer);
    if let Some(g) = group {
        cfg.set("group.id", g).set("enable.auto.commit", "false");
    }
    cfg.create().map_err(|source| ConsumeError::Kafka {
        what: "cannot create Kafka client".into(),
        source: without_config_value(source),
    })
}

/// The partitions of `topic` in a rebalance's list (the group may span other topics).
fn partitions_in(tpl: &TopicPartitionList, topic: &str) -> Vec<i32> {
    tpl.elements()
        .iter()
        .filter(|e| e.topic() == topic)
        .map(|e| e.partition())
        .collect()
}

fn partitions_of(c: &BaseConsumer, topic: &str) -> Result<Vec<i32>, ConsumeError> {
    let md = c
        .fetch_metadata(Some(topic), REQUEST_TIMEOUT)
        .map_err(|source| ConsumeError::Kafka {
            what: format!("cannot read metadata of topic {topic}"),
            source,
        })?;
    Ok(md
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect())
}

/// The end offset (high watermark: the offset the next record will get) of every partition of
/// `topic`. Empty if the topic does not exist.
pub async fn end_offsets(
    kafka: &KafkaConfig,
    bootstrap: &str,
    topic: &str,
) -> Result<BTreeMap<i32, i64>, ConsumeError> {
    let marks = watermarks(kafka, bootstrap, topic).await?;
    Ok(marks.into_iter().map(|(p, (_, high))| (p, high)).collect())
}

/// The start offset (low watermark: the first record retention has left) and the end offset of
/// every partition of `topic`. Empty if the topic does not exist.
pub async fn watermarks(
    kafka: &KafkaConfig,
    bootstrap: &str,
    topic: &str,
) -> Result<BTreeMap<i32, (i64, i64)>, ConsumeError> {
    let (kafka, bootstrap, topic) = (kafka.clone(), bootstrap.to_owned(), topic.to_owned());
    tokio::task::spawn_blocking(move || {
        let c = reader(&kafka, &bootstrap, None)?;
        let mut out = BTreeMap::new();
        for p in partitions_of(&c, &topic)? {
            let marks = c
                .fetch_watermarks(&topic, p, REQUEST_TIMEOUT)
                .map_err(|source| ConsumeError::Kafka {
                    what: format!("cannot read the offsets of {topic} partition {p}"),
                    source,
                })?;
            out.insert(p, marks);
        }
        Ok(out)
    })
    .await
    .map_err(|e| ConsumeError::Thread(e.to_string()))?
}

/// Reads every message of `topic` from the earliest offset up to the end offsets it has when
/// called, each partition in offset order, and hands `each` every message's value; `each`
/// returning `false` stops the read. A topic that does not exist reads as empty. It joins
/// no group and commits nothing. Blocking: run it off the async workers.
pub fn read_to_end(
    kafka: &KafkaConfig,
    bootstrap: &str,
    topic: &str,
    mut each: impl FnMut(Option<&[u8]>) -> bool,
) -> Result<(), ConsumeError> {
    read_since(kafka, bootstrap, topic, None, None, |m| each(m.payload())).map(drop)
}

/// A consumer that joins no group, for reads by assignment. An offset before a partition's start
/// (records deleted by retention, under the read too) reads from the new start, not the end.
fn earliest_reader(kafka: &KafkaConfig, bootstrap: &str) -> Result<BaseConsumer, ConsumeError> {
    client_config(kafka, bootstrap, ClientKind::Consumer)
        // librdkafka wants a group id to fetch at all, though nothing joins it or is committed.
        .set("group.id", "sluice-reader")
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .map_err(|source| ConsumeError::Kafka {
            what: "cannot create Kafka client".into(),
            source: without_config_value(source),
        })
}

/// The timestamp (milliseconds) of the message at each `partition => offset` of `at` in
/// `topic`, where there is one: a partition whose end is at or before its offset has none yet.
/// Blocking: run it off the async workers.
pub fn timestamps_at(
    kafka: &KafkaConfig,
    bootstrap: &str,
    topic: &str,
    at: &BTreeMap<i32, i64>,
) -> Result<BTreeMap<i32, i64>, ConsumeError> {
    let c = earliest_reader(kafka, bootstrap)?;
    let kafka_err = |what: String| move |source| ConsumeError::Kafka { what, source };
    let mut tpl = TopicPartitionList::new();
    let mut wanted = BTreeMap::new();
    for (&p, &offset) in at {
        let (_, high) = c
            .fetch_watermarks(topic, p, REQUEST_TIMEOUT)
            .map_err(kafka_err(format!(
                "cannot read end offset of {topic} partition {p}"
            )))?;
        if offset < high {
            wanted.insert(p, offset);
            (tpl.add_partition_offset(topic, p, Offset::Offset(offset.max(0))))
                .map_err(kafka_err(format!("cannot assign {topic} partition {p}")))?;
        }
    }
    let mut found = BTreeMap::new();
    if wanted.is_empty() {
        return Ok(found);
    }
    c.assign(&tpl)
        .map_err(kafka_err(format!("cannot assign {topic}")))?;
    let deadline = std::time::Instant::now() + REQUEST_TIMEOUT;
    // The first message at or past each offset: records deleted under it (retention) leave a
    // later one, which is later still.
    while found.len() < wanted.len() && std::time::Instant::now() < deadline {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(200))
            && wanted.contains_key(&m.partition())
        {
            if let Some(ts) = m.timestamp().to_millis() {
                found.entry(m.partition()).or_insert(ts);
            }
            let mut one = TopicPartitionList::new();
            one.add_partition(topic, m.partition());
            let _ = c.pause(&one);
        }
    }
    Ok(found)
}

/// [`read_to_end`], handing `each` the whole message (headers too), from the first message of
/// each partition written at or after `since_ms` (by its timestamp) rather than from the
/// earliest, when that is given; it also ends, early, once `stop` fires. Returns the offset each
/// partition starts at: above 0 where retention (or a deletion) removed its first records, which
/// no read sees.
pub fn read_since(
    kafka: &KafkaConfig,
    bootstrap: &str,
    topic: &str,
    since_ms: Option<i64>,
    stop: Option<&tokio_util::sync::CancellationToken>,
    mut each: impl FnMut(&BorrowedMessage<'_>) -> bool,
) -> Result<BTreeMap<i32, i64>, ConsumeError> {
    let c = earliest_reader(kafka, bootstrap)?;
    let kafka_err = |what: String| move |source| ConsumeError::Kafka { what, source };
    let (mut ends, mut starts) = (BTreeMap::new(), BTreeMap::new());
    let mut tpl = TopicPartitionList::new();
    for p in partitions_of(&c, topic)? {
        let (low, high) = c
            .fetch_watermarks(topic, p, REQUEST_TIMEOUT)
            .map_err(kafka_err(format!(
                "cannot read end offset of {topic} partition {p}"
            )))?;
        starts.insert(p, low);
        if high > low {
            ends.insert(p, high);
            let from = since_ms.map_or(Offset::Beginning, Offset::Offset);
            (tpl.add_partition_offset(topic, p, from))
                .map_err(kafka_err(format!("cannot assign {topic} partition {p}")))?;
        }
    }
    if ends.is_empty() {
        return Ok(starts);
    }
    if since_ms.is_some() {
        // The offsets of those times; a partition with nothing written since has nothing to read.
        let at = c
            .offsets_for_times(tpl, REQUEST_TIMEOUT)
            .map_err(kafka_err(format!(
                "cannot look up offsets by time in {topic}"
            )))?;
        tpl = TopicPartitionList::new();
        let mut assigned = std::collections::HashSet::new();
        for e in at.elements_for_topic(topic) {
            if let Offset::Offset(o) = e.offset()
                && ends.get(&e.partition()).is_some_and(|end| o < *end)
            {
                (tpl.add_partition_offset(topic, e.partition(), Offset::Offset(o)))
                    .map_err(kafka_err(format!("cannot assign {topic}")))?;
                assigned.insert(e.partition());
            }
        }
        ends.retain(|p, _| assigned.contains(p));
        if ends.is_empty() {
            return Ok(starts);
        }
    }
    c.assign(&tpl)
        .map_err(kafka_err(format!("cannot assign {topic}")))?;
    // A partition read to its end is paused: what a live run adds to it after the end must not
    // keep the read busy (or look like progress) while another partition is still behind.
    let done = |ends: &mut BTreeMap<i32, i64>, p: i32| {
        ends.remove(&p);
        let mut one = TopicPartitionList::new();
        one.add_partition(topic, p);
        let _ = c.pause(&one);
    };
    let (mut progress, mut last_error) = (std::time::Instant::now(), None);
    while !ends.is_empty() {
        if stop.is_some_and(|s| s.is_cancelled()) {
            return Ok(starts);
        }
        let m = match c.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => m,
            Some(Err(e @ KafkaError::MessageConsumptionFatal(_))) => {
                return Err(kafka_err(format!("cannot read {topic}"))(e));
            }
            // A broker that is briefly away (just started, say): librdkafka retries, and a read
            // that gets nothing for long ends below.
            other => {
                if let Some(Err(e)) = other {
                    tracing::debug!(error = %e, topic, "Reading the topic: a transient error.");
                    last_error = Some(e.to_string());
                }
                // The last offsets may be ones no message holds (a transaction's markers): the
                // position then moves past them without a message.
                let position = c
                    .position()
                    .map_err(kafka_err(format!("cannot read {topic}")))?;
                for e in position.elements_for_topic(topic) {
                    if let Offset::Offset(at) = e.offset()
                        && ends.get(&e.partition()).is_some_and(|&end| at >= end)
                    {
                        done(&mut ends, e.partition());
                    }
                }
                if progress.elapsed() > REQUEST_TIMEOUT && !ends.is_empty() {
                    return Err(ConsumeError::Stalled {
                        topic: topic.to_owned(),
                        ends,
                        last_error,
                    });
                }
                continue;
            }
        };
        let Some(&end) = ends.get(&m.partition()) else {
            continue;
        };
        progress = std::time::Instant::now();
        if m.offset() < end && !each(&m) {
            return Ok(starts);
        }
        if m.offset() + 1 >= end {
            done(&mut ends, m.partition());
        }
    }
    Ok(starts)
}

/// The offsets `group` has committed for `topic`, per partition (partitions without a commit
/// are left out).
pub async fn committed_offsets(
    kafka: &KafkaConfig,
    bootstrap: &str,
    group: &str,
    topic: &str,
) -> Result<BTreeMap<i32, i64>, ConsumeError> {
    let (kafka, bootstrap, group, topic) = (
        kafka.clone(),
        bootstrap.to_owned(),
        group.to_owned(),
        topic.to_owned(),
    );
    tokio::task::spawn_blocking(move || {
        let c = reader(&kafka, &bootstrap, Some(&group))?;
        let mut tpl = TopicPartitionList::new();
        for p in partitions_of(&c, &topic)? {
            tpl.add_partition(&topic, p);
        }
        let committed = c
            .committed_offsets(tpl, REQUEST_TIMEOUT)
            .map_err(|source| ConsumeError::Kafka {
                what: format!("cannot read committed offsets of group {group}"),
                source,
            })?;
        Ok(committed
            .elements()
            .iter()
            .filter_map(|e| match e.offset() {
                Offset::Offset(o) => Some((e.partition(), o)),
                _ => None,
            })
            .collect())
    })
    .await
    .map_err(|e| ConsumeError::Thread(e.to_string()))?
}
