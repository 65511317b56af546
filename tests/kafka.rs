//! Integration tests: the CSV replay producer and the group consumer against a real nisshi broker
//! process (started once per test binary by `sluice_tests::broker`). Every assertion reads back
//! from the broker: messages, dead letters, committed offsets.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use sluice::config::KafkaConfig;
use sluice::consume::{
    self, CommitOutcome, Consumer, ConsumerEvent, ConsumerOptions, ConsumerStats, OffsetsProvider,
};
use sluice::row::Value;
use sluice::source::config::{CsvSource, SourceConfig};
use sluice::source::{self, ReplayConfig, ReplayStats, ReplaySummary, SourceError, dlq, wire};
use sluice_tests::broker::{self, Message};
use tokio_util::sync::CancellationToken;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repo root")
        .to_path_buf()
}

/// A source section as `validate` passes it to the replay.
fn csv_source(v: serde_json::Value) -> CsvSource {
    let mut v = v;
    v["type"] = "csv".into();
    match serde_json::from_value(v).expect("valid source config") {
        SourceConfig::Csv(c) => c.validate().expect("a sound source section"),
    }
}

/// Replays `source` into `kafka.topic`, dead letters into `<topic>.dlq`.
async fn replay(source: &CsvSource, kafka: &KafkaConfig) -> Result<ReplaySummary, SourceError> {
    let bootstrap = broker::bootstrap();
    let (tx, task) = dlq::spawn(kafka, &bootstrap, &format!("{}.dlq", kafka.topic), 64)
        .await
        .expect("dlq producer");
    let cfg = ReplayConfig {
        source,
        base_dir: &repo_root(),
        kafka,
        bootstrap: &bootstrap,
        unpaced: None,
        resume: None,
    };
    let r = source::replay(
        cfg,
        tx,
        Arc::new(ReplayStats::default()),
        CancellationToken::new(),
    )
    .await;
    task.finish().await;
    r
}

fn write_rows(dir: &Path, n: usize) -> PathBuf {
    use std::io::Write as _;
    let path = dir.join("rows.csv");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    writeln!(f, "id,name,value,at").unwrap();
    for i in 0..n {
        writeln!(
            f,
            "{i},\"name {i}, with comma\",{}.25,2024-01-01T00:00:{:02}",
            i % 1000,
            i % 60
        )
        .unwrap();
    }
    f.flush().unwrap();
    path
}

/// A test sink in front of one consumer: buffers records per partition, "flushes" a batch by
/// committing its offsets, and counts a record durable only when its commit succeeded. On
/// revocation it drops what it buffered, as the real sink does.
struct Member {
    consumer: Consumer,
    durable: Vec<(i32, i64, i64)>,
    buf: BTreeMap<i32, Vec<(i64, i64)>>,
    last_offset: HashMap<i32, i64>,
    /// The first offset received per partition after each assignment.
    first_offsets: Vec<(i32, i64)>,
    /// The consumer's counters.
    stats: Arc<ConsumerStats>,
}

impl Member {
    fn start(kafka: &KafkaConfig, group: &str, offsets: OffsetsProvider) -> Member {
        let bootstrap = broker::bootstrap();
        let stats = Arc::new(ConsumerStats::default());
        let opts = ConsumerOptions {
            kafka,
            bootstrap: &bootstrap,
            group_id: group,
            offsets,
            stats: stats.clone(),
        };
        Member {
            stats,
            consumer: Consumer::start(opts).expect("consumer"),
            durable: Vec::new(),
            buf: BTreeMap::new(),
            last_offset: HashMap::new(),
            first_offsets: Vec::new(),
        }
    }

    /// Runs until `total` durable records (across members) reach `target`. Commits only while
    /// `gate` is open.
    async fn run(
        mut self,
        total: Arc<AtomicUsize>,
        target: usize,
        gate: Arc<AtomicBool>,
        assigned: Arc<AtomicBool>,
    ) -> Member {
        // Wide: a hang is still reported, with where it stood, and a loaded machine takes minutes.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(600);
        while total.load(Ordering::SeqCst) < target {
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out at {} of {target}; this member: partitions {:?}, in flight {}, pauses {}, \
                 buffered {}, durable {}, consumed {}",
                total.load(Ordering::SeqCst),
                self.consumer.assignment(),
                self.stats.in_flight.load(Ordering::SeqCst),
                self.stats.pauses.load(Ordering::SeqCst),
                self.buf.values().map(Vec::len).sum::<usize>(),
                self.durable.len(),
                self.stats.records_consumed.load(Ordering::SeqCst),
            );
            let ev = tokio::time::timeout(Duration::from_millis(100), self.consumer.recv()).await;
            let buffered: usize = self.buf.values().map(Vec::len).sum();
            match ev {
                Ok(Some(Ok(ConsumerEvent::Assigned { partitions, .. }))) => {
                    for p in &partitions {
                        self.last_offset.remove(&p.partition);
                    }
                    if !partitions.is_empty() {
                        assigned.store(true, Ordering::SeqCst);
                    }
                }
                Ok(Some(Ok(ConsumerEvent::Revoked { partitions, .. }))) => {
                    for p in partitions {
                        self.buf.remove(&p);
                    }
                    if self.consumer.assignment().is_empty() {
                        assigned.store(false, Ordering::SeqCst);
                    }
                }
                Ok(Some(Ok(ConsumerEvent::Record(r)))) => {
                    let (p, o) = (r.meta.partition, r.meta.offset);
                    match self.last_offset.insert(p, o) {
                        Some(prev) => assert!(o > prev, "partition {p}: offset {o} after {prev}"),
                        None => self.first_offsets.push((p, o)),
                    }
                    let row = r.row.expect("row decodes");
                    let Some(Value::Int(id)) = row.get("id") else {
                        panic!("no id in {row:?}")
                    };
                    self.buf.entry(p).or_default().push((o, *id));
                    if buffered < 500 {
                        continue;
                    }
                }
                Ok(Some(Err(e))) => panic!("consumer failed: {e}"),
                Ok(None) => panic!("consumer stopped"),
                Err(_) => {}
            }
            if gate.load(Ordering::SeqCst) {
                self.flush(&total).await;
            }
        }
        self
    }

    async fn flush(&mut self, total: &AtomicUsize) {
        let topic = self.consumer.topic().to_owned();
        for (p, recs) in std::mem::take(&mut self.buf) {
            let Some(&(last, _)) = recs.last() else {
                continue;
            };
            match self.consumer.commit(&topic, p, last + 1).await {
                Ok(CommitOutcome::Committed) => {
                    total.fetch_add(recs.len(), Ordering::SeqCst);
                    self.durable
                        .extend(recs.into_iter().map(|(o, id)| (p, o, id)));
                }
                Ok(other) => eprintln!("partition {p}: batch dropped, commit said {other:?}"),
                Err(e) => eprintln!("partition {p}: batch dropped, commit failed: {e}"),
            }
        }
    }
}

/// The ids of the durable records of several members, sorted.
fn ids(durable: &[&[(i32, i64, i64)]]) -> Vec<i64> {
    let mut ids: Vec<i64> = durable.iter().flat_map(|d| d.iter().map(|d| d.2)).collect();
    ids.sort_unstable();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_thousand_rows_exactly_once_across_two_group_members() {
    const N: usize = 100_000;
    let dir = tempfile::tempdir().unwrap();
    let path = write_rows(dir.path(), N);
    let topic = broker::unique("rows");
    let kafka = broker::kafka_config(
        &topic,
        serde_json::json!({ "partitions": 3, "max_in_flight": 5000 }),
    );
    let src = csv_source(serde_json::json!({ "path": path, "key_column": "id" }));
    let summary = replay(&src, &kafka).await.expect("replay");
    assert_eq!(
        (
            summary.rows_read,
            summary.rows_produced,
            summary.rows_dead_lettered
        ),
        (N as u64, N as u64, 0)
    );

    let bootstrap = broker::bootstrap();
    let ends = consume::end_offsets(&kafka, &bootstrap, &topic)
        .await
        .unwrap();
    assert_eq!(ends.len(), 3, "topic created with 3 partitions: {ends:?}");
    assert_eq!(ends.values().sum::<i64>(), N as i64);

    let group = broker::unique("group");
    let total = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(AtomicBool::new(false));
    let (a_assigned, b_assigned) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
    let a = Member::start(&kafka, &group, consume::group_offsets());
    let b = Member::start(&kafka, &group, consume::group_offsets());
    let a = tokio::spawn(a.run(total.clone(), N, gate.clone(), a_assigned.clone()));
    let b = tokio::spawn(b.run(total.clone(), N, gate.clone(), b_assigned.clone()));
    // Nothing becomes durable until both members hold partitions, so both must take part.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !(a_assigned.load(Ordering::SeqCst) && b_assigned.load(Ordering::SeqCst)) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "both members never held partitions at once"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    gate.store(true, Ordering::SeqCst);
    let (a, b) = (a.await.unwrap(), b.await.unwrap());
    assert!(
        !a.durable.is_empty() && !b.durable.is_empty(),
        "a: {}, b: {}",
        a.durable.len(),
        b.durable.len()
    );
    let got = ids(&[&a.durable, &b.durable]);
    assert_eq!(got.len(), N, "every row exactly once");
    assert!(
        got.iter().copied().eq(0..N as i64),
        "ids are exactly 0..{N}"
    );
    // Each member's partitions are disjoint.
    let pa: HashSet<i32> = a.durable.iter().map(|d| d.0).collect();
    let pb: HashSet<i32> = b.durable.iter().map(|d| d.0).collect();
    assert!(pa.is_disjoint(&pb) || a.durable.len() + b.durable.len() == N);
    let (ca, cb) = (a.consumer, b.consumer);
    ca.close().await;
    cb.close().await;
    let committed = consume::committed_offsets(&kafka, &bootstrap, &group, &topic)
        .await
        .unwrap();
    assert_eq!(
        committed, ends,
        "the group committed exactly the end of every partition"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_consumer_resumes_at_its_committed_offset() {
    const N: usize = 3000;
    let dir = tempfile::tempdir().unwrap();
    let path = write_rows(dir.path(), N);
    let topic = broker::unique("resume");
    let kafka = broker::kafka_config(&topic, serde_json::json!({ "partitions": 3 }));
    let src = csv_source(serde_json::json!({ "path": path, "key_column": "id" }));
    replay(&src, &kafka).await.expect("replay");
    let bootstrap = broker::bootstrap();
    let group = broker::unique("group");

    let open = Arc::new(AtomicBool::new(true));
    let flag = Arc::new(AtomicBool::new(false));
    let total = Arc::new(AtomicUsize::new(0));
    let first = Member::start(&kafka, &group, consume::group_offsets());
    let first = first
        .run(total.clone(), 1000, open.clone(), flag.clone())
        .await;
    // Records it received but never committed must come again; committed ones must not.
    let committed = consume::committed_offsets(&kafka, &bootstrap, &group, &topic)
        .await
        .unwrap();
    assert_eq!(
        committed.values().sum::<i64>() as usize,
        first.durable.len()
    );
    let first_durable = first.durable;
    first.consumer.close().await;
    let committed_after_close = consume::committed_offsets(&kafka, &bootstrap, &group, &topic)
        .await
        .unwrap();
    assert_eq!(
        committed, committed_after_close,
        "closing commits nothing by itself"
    );

    let second = Member::start(&kafka, &group, consume::group_offsets());
    let second = second.run(total.clone(), N, open, flag).await;
    for (p, o) in &second.first_offsets {
        assert_eq!(
            *o,
            committed.get(p).copied().unwrap_or(0),
            "partition {p} resumed at its committed offset"
        );
    }
    let got = ids(&[&first_durable, &second.durable]);
    assert_eq!(got.len(), N, "no row twice");
    assert!(got.iter().copied().eq(0..N as i64), "none missed");
    second.consumer.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_provider_decides_where_partitions_start() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_rows(dir.path(), 60);
    let topic = broker::unique("provider");
    let kafka = broker::kafka_config(&topic, serde_json::json!({ "partitions": 1 }));
    replay(&csv_source(serde_json::json!({ "path": path })), &kafka)
        .await
        .expect("replay");
    let asked = Arc::new(std::sync::Mutex::new(Vec::new()));
    let provider: OffsetsProvider = {
        let asked = asked.clone();
        Arc::new(move |topic, partitions| {
            asked.lock().unwrap().push((topic, partitions));
            Box::pin(async { Ok(HashMap::from([(0, 42)])) })
        })
    };
    let mut m = Member::start(&kafka, &broker::unique("group"), provider);
    let mut starts = None;
    let mut first = None;
    while first.is_none() {
        match tokio::time::timeout(Duration::from_secs(60), m.consumer.recv())
            .await
            .expect("event")
        {
            Some(Ok(ConsumerEvent::Assigned { partitions, .. })) => starts = Some(partitions),
            Some(Ok(ConsumerEvent::Record(r))) => first = Some((r.meta.offset, r.row.unwrap())),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(asked.lock().unwrap().as_slice(), [(topic.clone(), vec![0])]);
    assert_eq!(
        starts.unwrap(),
        [consume::PartitionStart {
            partition: 0,
            offset: Some(42),
            group_offset: None,
        }]
    );
    let (offset, row) = first.unwrap();
    assert_eq!(offset, 42);
    assert_eq!(row.get("id"), Some(&Value::Int(42)));
    m.consumer.close().await;
}

fn dead_letters(topic: &str) -> Vec<(u64, String)> {
    let mut v: Vec<(u64, String)> = broker::read_topic(&format!("{topic}.dlq"))
        .iter()
        .map(|m| {
            let j = m.json();
            assert_eq!(j["stage"], "source");
            (
                j["line"].as_u64().expect("line"),
                j["kind"].as_str().expect("kind").to_owned(),
            )
        })
        .collect();
    v.sort();
    v
}

fn rows_by_line(messages: &[Message]) -> BTreeMap<u64, sluice::row::Row> {
    messages
        .iter()
        .map(|m| {
            let line = m
                .header(wire::HEADER_LINE)
                .expect("line header")
                .parse()
                .unwrap();
            let row = wire::decode(
                m.value.as_deref(),
                m.headers.get(wire::HEADER_TYPES).map(Vec::as_slice),
            )
            .unwrap();
            (line, row)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_corpus_dead_letters_exact_lines() {
    let topic = broker::unique("hostile");
    let kafka = broker::kafka_config(&topic, serde_json::json!({ "partitions": 1 }));
    let src = csv_source(serde_json::json!({
        "path": "data/hostile/hostile.csv",
        "schema": { "id": "int", "amount": "float" },
    }));
    let summary = replay(&src, &kafka).await.expect("replay");
    let expected_bad = [
        (6, "ragged_row"),
        (7, "invalid_utf8"),
        (12, "ragged_row"),
        (13, "parse"),
        (18, "unclosed_quote"),
    ];
    assert_eq!(
        dead_letters(&topic),
        expected_bad.map(|(l, k)| (l, k.to_owned()))
    );
    assert_eq!(
        (
            summary.rows_read,
            summary.rows_produced,
            summary.rows_dead_lettered
        ),
        (12, 7, 5)
    );

    let dlq = broker::read_topic(&format!("{topic}.dlq"));
    let utf8 = dlq
        .iter()
        .map(Message::json)
        .find(|j| j["line"] == 7)
        .unwrap();
    assert_eq!(utf8["file"], "hostile.csv");
    assert_eq!(utf8["payload_encoding"], "base64");

    let rows = rows_by_line(&broker::read_topic(&topic));
    assert_eq!(
        rows.keys().copied().collect::<Vec<_>>(),
        [2, 3, 4, 8, 10, 14, 17]
    );
    let s = |v: &str| Some(Value::String(v.to_owned()));
    assert_eq!(rows[&3].get("name").cloned(), s("comma, inside"));
    assert_eq!(rows[&3].get("note").cloned(), s("say \"hi\""));
    assert_eq!(rows[&4].get("name").cloned(), s("two\nlines"));
    assert_eq!(rows[&8].get("name").cloned(), s("crlf\r\ninside"));
    assert_eq!(rows[&10].get("name").cloned(), s(""));
    assert_eq!(rows[&10].get("note"), Some(&Value::Null));
    assert_eq!(rows[&10].get("amount"), Some(&Value::Null));
    assert_eq!(rows[&14].get("name").cloned(), s("emoji \u{1F600} ünïcödé"));
    assert_eq!(rows[&14].get("note").cloned(), s("a\nb\nc"));
    assert_eq!(rows[&17].get("note").cloned(), s("  padded  "));
    assert_eq!(
        rows[&2].get("id"),
        Some(&Value::Int(1)),
        "the BOM is not part of the first column name"
    );
    assert!(matches!(rows[&14].get("when"), Some(Value::Timestamp(_))));

    // Under `on_error: fail` the first bad row stops the run, naming file and line.
    let mut failing = src.clone();
    failing.on_error = sluice::config::OnError::Fail;
    let kafka2 = broker::kafka_config(
        &broker::unique("hostile-fail"),
        serde_json::json!({ "partitions": 1 }),
    );
    let err = replay(&failing, &kafka2).await.unwrap_err().to_string();
    assert!(err.contains("hostile.csv:6"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn semicolon_crlf_corpus() {
    let topic = broker::unique("semicolon");
    let kafka = broker::kafka_config(&topic, serde_json::json!({ "partitions": 1 }));
    let src =
        csv_source(serde_json::json!({ "path": "data/hostile/semicolon.csv", "delimiter": ";" }));
    let summary = replay(&src, &kafka).await.expect("replay");
    assert_eq!(dead_letters(&topic), [(5, "ragged_row".to_owned())]);
    assert_eq!(summary.rows_produced, 3);
    let rows = rows_by_line(&broker::read_topic(&topic));
    assert_eq!(rows[&2].get("label"), Some(&Value::String("a;b".into())));
    assert_eq!(rows[&2].get("price"), Some(&Value::String("1,5".into())));
    assert_eq!(
        rows[&3].get("label"),
        Some(&Value::String("line\r\nbreak".into()))
    );
    assert_eq!(
        rows[&6].get("label"),
        Some(&Value::String("q \"x\"".into()))
    );
}

/// The source's `null_if` texts reach the topic as nulls, and leave a column of ints one; `""` is
/// an empty string in a string column.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn null_if_texts_reach_the_topic_as_nulls() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nulls.csv");
    std::fs::write(&path, "id,amount,note\n1,5,\"\"\n2,NULL,x\n3,\\N,\n").unwrap();
    let topic = broker::unique("nulls");
    let kafka = broker::kafka_config(&topic, serde_json::json!({ "partitions": 1 }));
    let src = csv_source(serde_json::json!({
        "path": path.to_string_lossy(),
        "null_if": ["NULL", "\\N"],
    }));
    let summary = replay(&src, &kafka).await.expect("replay");
    assert_eq!((summary.rows_produced, summary.rows_dead_lettered), (3, 0));
    let rows = rows_by_line(&broker::read_topic(&topic));
    let values = |line: u64| {
        (rows[&line].fields.iter())
            .map(|f| f.value.clone())
            .collect::<Vec<_>>()
    };
    let s = |v: &str| Value::String(v.to_owned());
    assert_eq!(values(2), [Value::Int(1), Value::Int(5), s("")]);
    assert_eq!(values(3), [Value::Int(2), Value::Null, s("x")]);
    assert_eq!(values(4), [Value::Int(3), Value::Null, Value::Null]);
}

/// `transform test --partitions 4` gives each record the partition and offset that the replay's
/// producer gave its message, read back from the broker, under librdkafka's default partitioner
/// and under a pipeline's `murmur2_random` and `consistent`. And each partition runs on instances of its own: the
/// probe guest's count of the rows its instance has seen is each record's offset plus one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transform_test_partitions_records_as_the_producer_does() {
    use serde_json::json;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keyed.csv");
    // Under `consistent`, every 5th record has no key (a null id), which librdkafka hashes as
    // an empty key rather than sending at random as the others would.
    for partitioner in [None, Some("murmur2_random"), Some("consistent")] {
        let mut csv = String::from("id,seen\n");
        for i in 0..200 {
            match partitioner == Some("consistent") && i % 5 == 0 {
                true => csv.push_str(",0\n"),
                false => csv.push_str(&format!("user-{},0\n", i * 7 % 37)),
            }
        }
        std::fs::write(&path, csv).unwrap();
        let topic = broker::unique("spread");
        let props = partitioner.map_or(json!({}), |p| json!({ "partitioner": p }));
        let kafka = broker::kafka_config(&topic, json!({ "partitions": 4, "properties": props }));
        let src = csv_source(json!({ "path": path.to_string_lossy(), "key_column": "id" }));
        let summary = replay(&src, &kafka).await.expect("replay");
        assert_eq!(summary.rows_produced, 200);
        let mut produced: Vec<(u64, i32, i64)> = broker::read_topic(&topic)
            .iter()
            .map(|m| {
                let line = m.header(wire::HEADER_LINE).unwrap().parse().unwrap();
                (line, m.partition, m.offset)
            })
            .collect();
        produced.sort();
        let used: HashSet<i32> = produced.iter().map(|p| p.1).collect();
        assert_eq!(
            used.len(),
            4,
            "{partitioner:?}: every partition has records"
        );

        let pipeline = json!({
            "version": 1,
            "name": "spread",
            "source": { "type": "csv", "path": "keyed.csv", "key_column": "id" },
            "kafka": { "topic": topic, "partitions": 4, "properties": props },
            "transforms": [
                { "uses": sluice_tests::guests::META },
                { "uses": sluice_tests::guests::PROBE }
            ],
            "sink": { "type": "snowflake", "database": "D", "schema": "S", "table": "T" }
        });
        std::fs::write(dir.path().join("p.json"), pipeline.to_string()).unwrap();
        let args = [
            "transform",
            "test",
            "--pipeline",
            "p.json",
            "--partitions",
            "4",
        ];
        let out = sluice_tests::cli::sluice(dir.path(), &args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{stderr}");
        let rows: Vec<serde_json::Value> = String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let tested: Vec<(u64, i32, i64)> = (rows.iter().zip(2..))
            .map(|(r, line)| {
                let p = r["partition"].as_i64().unwrap() as i32;
                let offset = r["offset"].as_i64().unwrap();
                assert_eq!(r["seen"], offset + 1, "{partitioner:?}: {r}");
                (line, p, offset)
            })
            .collect();
        assert_eq!(tested, produced, "{partitioner:?}");
    }
}

/// A quoted field of 10 MiB over ten lines is one `too_large` dead letter, holding what the
/// reader kept of it, and the records after it are read, on their own lines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_megabyte_field_is_dead_lettered_and_reading_goes_on() {
    use std::io::Write as _;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big-field.csv");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    write!(f, "id,blob,tail\n1,small,a\n2,\"").unwrap();
    // 16 bytes, so ten lines of it make a 10 MiB field.
    let chunk = "x, \"\"quoted\"\" y ".repeat(1024 * 1024 / 16);
    for _ in 0..10 {
        writeln!(f, "{chunk}").unwrap();
    }
    write!(f, "\",b\n3,after,c\n").unwrap();
    f.flush().unwrap();
    drop(f);
    let topic = broker::unique("bigfield");
    let kafka = broker::kafka_config(&topic, serde_json::json!({ "partitions": 1 }));
    let summary = replay(&csv_source(serde_json::json!({ "path": path })), &kafka)
        .await
        .expect("replay");
    assert_eq!(
        (
            summary.rows_read,
            summary.rows_produced,
            summary.rows_dead_lettered
        ),
        (3, 2, 1)
    );
    let dlq = broker::read_topic(&format!("{topic}.dlq"));
    assert_eq!(dlq.len(), 1);
    let j = dlq[0].json();
    assert_eq!(
        (j["line"].as_u64(), j["kind"].as_str()),
        (Some(3), Some("too_large"))
    );
    assert_eq!(j["payload_truncated"], true);
    // The reader kept only four times the largest message (1 MB) and 64 KiB of the record as
    // written, and skipped the rest of it: the letter says so, and its payload is cut from that.
    let kept = j["payload_bytes"].as_u64().unwrap();
    assert!((4_000_000..4_100_000).contains(&kept), "{kept}");
    let reason = j["reason"].as_str().unwrap();
    assert!(
        reason.contains("the record is more than 4065536 bytes as written in the file"),
        "{reason}"
    );
    let rows = rows_by_line(&broker::read_topic(&topic));
    // The field spans ten newlines, so the next record starts on line 14.
    assert_eq!(rows.keys().copied().collect::<Vec<_>>(), [2, 14]);
    assert_eq!(rows[&14].get("blob"), Some(&Value::String("after".into())));
}

/// The message limit counts the key, and a lower `message.max.bytes` bounds the dead letters
/// too: a row too large for a message with its key, and a row whose letter would be too large
/// for one, are each dead-lettered, and the replay goes on. Before, the producer refused the
/// first, or the letter of the second, and the replay stopped there on every run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_past_a_lower_message_limit_with_their_keys_are_dead_lettered() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys.csv");
    let long_key = "k".repeat(60_000);
    let long_note = "n".repeat(150_000);
    std::fs::write(
        &path,
        format!("id,note\n1,a\n{long_key},b\n3,{long_note}\n4,d\n"),
    )
    .unwrap();
    let topic = broker::unique("limits");
    let kafka = broker::kafka_config(
        &topic,
        serde_json::json!({ "partitions": 1, "properties": { "message.max.bytes": "100000" } }),
    );
    let src = csv_source(serde_json::json!({ "path": path, "key_column": "id" }));
    let summary = replay(&src, &kafka).await.expect("replay");
    assert_eq!(
        (
            summary.rows_read,
            summary.rows_produced,
            summary.rows_dead_lettered
        ),
        (4, 2, 2)
    );
    assert_eq!(
        dead_letters(&topic),
        [(3, "too_large".to_owned()), (4, "too_large".to_owned())]
    );
    for m in broker::read_topic(&format!("{topic}.dlq")) {
        let size = m.value.as_ref().map_or(0, Vec::len);
        assert!(size <= 50_000, "a letter of {size} bytes");
    }
    let rows = rows_by_line(&broker::read_topic(&topic));
    assert_eq!(rows.keys().copied().collect::<Vec<_>>(), [2, 5]);
}

/// Message timestamps of a paced replay, in CSV order.
async fn paced_timestamps(pacing: serde_json::Value, n: usize) -> Vec<i64> {
    let dir = tempfile::tempdir().unwrap();
    let path = write_rows(dir.path(), n);
    let topic = broker::unique("paced");
    let kafka = broker::kafka_config(&topic, serde_json::json!({ "partitions": 1 }));
    replay(
        &csv_source(serde_json::json!({ "path": path, "pacing": pacing })),
        &kafka,
    )
    .await
    .expect("replay");
    let mut msgs = broker::read_topic(&topic);
    msgs.sort_by_key(|m| m.header(wire::HEADER_LINE).unwrap().parse::<u64>().unwrap());
    assert_eq!(msgs.len(), n);
    msgs.iter()
        .map(|m| m.timestamp_ms.expect("timestamp"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixed_pacing_spaces_message_timestamps() {
    let ts = paced_timestamps(serde_json::json!({ "mode": "fixed", "delay_ms": 40 }), 12).await;
    for w in ts.windows(2) {
        // 1 ms of slack: timestamps are whole milliseconds.
        assert!(
            w[1] - w[0] >= 39,
            "gap {} ms < 40 ms in {ts:?}",
            w[1] - w[0]
        );
    }
    let mean = (ts[11] - ts[0]) as f64 / 11.0;
    // Each row waits 40 ms after the last one's produce, so a loaded machine's late wake-ups add
    // up; unpaced rows would be a millisecond or less apart.
    assert!(mean < 200.0, "mean gap {mean} ms for a 40 ms delay: {ts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_pacing_holds_the_rate() {
    let ts = paced_timestamps(
        serde_json::json!({ "mode": "rate", "rows_per_sec": 50.0 }),
        26,
    )
    .await;
    let span = ts[25] - ts[0];
    // 25 intervals of 20 ms, from the run's start: the first row's timestamp, taken late on a
    // loaded machine, shortens the span by its delay. Unpaced rows would take a few ms.
    assert!(span >= 450, "26 rows at 50/s took {span} ms: {ts:?}");
    assert!(span < 3000, "26 rows at 50/s took {span} ms: {ts:?}");
    assert!(ts.windows(2).all(|w| w[1] >= w[0]));
}

/// A failed Kafka commit (a rebalance under way, the coordinator moving) still releases the
/// records below it: the warehouse holds them, and keeping them in flight would pause the
/// consumer at `max_in_flight` for good. Against librdkafka's mock cluster, which can fail a
/// request on purpose (the managed broker cannot); a later commit goes through. Likewise records
/// below a commit that is ahead of them (the warehouse's offset, announced when another writer
/// loaded past where this consumer started) are durable already, and never in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_commits_and_commits_ahead_release_the_records_below_them() {
    use rdkafka::mocking::MockCluster;
    use rdkafka::producer::{FutureProducer, FutureRecord};
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
    let mock = MockCluster::new(1).expect("mock cluster");
    let topic = "commits";
    mock.create_topic(topic, 1, 1).expect("topic");
    let bootstrap = mock.bootstrap_servers();
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()
        .expect("producer");
    for i in 0..60 {
        let value = format!("{{\"id\": {i}}}");
        let record = FutureRecord::to(topic).key("k").payload(&value);
        producer
            .send(record, Duration::from_secs(10))
            .await
            .expect("sent");
    }
    let kafka: KafkaConfig = serde_json::from_value(serde_json::json!({
        "brokers": bootstrap, "topic": topic, "partitions": 1, "max_in_flight": 10
    }))
    .unwrap();
    let stats = Arc::new(ConsumerStats::default());
    let opts = ConsumerOptions {
        kafka: &kafka,
        bootstrap: &bootstrap,
        group_id: "group",
        offsets: consume::group_offsets(),
        stats: stats.clone(),
    };
    let mut consumer = Consumer::start(opts).expect("consumer");
    // Records until none comes for 2 s (the first may take longer: see the test below).
    async fn drain(c: &mut Consumer, got: &mut usize) {
        let mut wait = Duration::from_secs(20);
        while let Ok(ev) = tokio::time::timeout(wait, c.recv()).await {
            if let Some(Ok(ConsumerEvent::Record(_))) = ev {
                *got += 1;
                wait = Duration::from_secs(2);
            }
        }
    }
    let mut got = 0;
    drain(&mut consumer, &mut got).await;
    assert_eq!(got, 10, "consumption stops at max_in_flight");
    mock.request_errors(
        RDKafkaApiKey::OffsetCommit,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_REBALANCE_IN_PROGRESS],
    );
    let failed = consumer.commit(topic, 0, 10).await;
    assert!(failed.is_err(), "{failed:?}");
    assert_eq!(stats.commit_errors.load(Ordering::Relaxed), 1);
    assert_eq!(stats.in_flight.load(Ordering::Relaxed), 0);
    drain(&mut consumer, &mut got).await;
    assert_eq!(got, 20, "consumption resumed after the failed commit");
    assert_eq!(
        consumer.commit(topic, 0, 20).await.unwrap(),
        CommitOutcome::Committed
    );
    drain(&mut consumer, &mut got).await;
    assert_eq!(got, 30, "records 20 to 29");
    assert_eq!(
        consumer.commit(topic, 0, 45).await.unwrap(),
        CommitOutcome::Committed
    );
    drain(&mut consumer, &mut got).await;
    assert_eq!(got, 55, "records 30 to 44 are not in flight, 45 to 54 are");
    assert_eq!(stats.in_flight.load(Ordering::Relaxed), 10);
    consumer.close().await;
}

/// The group's offsets catch up with the warehouse's on assignment: a crash between the
/// warehouse commit and the Kafka commit left them behind, and on a topic loaded to its end no
/// later batch moved them, so lag measured from them never cleared.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_assignment_commits_the_warehouse_offsets_to_the_group() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_rows(dir.path(), 10);
    let topic = broker::unique("catchup");
    let kafka = broker::kafka_config(&topic, serde_json::json!({ "partitions": 1 }));
    replay(&csv_source(serde_json::json!({ "path": path })), &kafka)
        .await
        .expect("replay");
    let (bootstrap, group) = (broker::bootstrap(), broker::unique("group"));
    // Consumes from the warehouse's offset `at` to the end; returns the group's offsets then.
    let consume_from = |at: i64| {
        let (kafka, bootstrap, group, topic) = (
            kafka.clone(),
            bootstrap.clone(),
            group.clone(),
            topic.clone(),
        );
        async move {
            let warehouse: consume::OffsetsProvider =
                Arc::new(move |_topic: String, _partitions: Vec<i32>| {
                    Box::pin(async move { Ok(HashMap::from([(0, at)])) })
                });
            let opts = ConsumerOptions {
                kafka: &kafka,
                bootstrap: &bootstrap,
                group_id: &group,
                offsets: warehouse,
                stats: Arc::new(ConsumerStats::default()),
            };
            let mut consumer = Consumer::start(opts).expect("consumer");
            let mut offsets = Vec::new();
            while offsets.last() != Some(&9) {
                match tokio::time::timeout(Duration::from_secs(30), consumer.recv()).await {
                    Ok(Some(Ok(ConsumerEvent::Record(r)))) => offsets.push(r.meta.offset),
                    Ok(Some(Ok(_))) => {}
                    other => panic!("{other:?}"),
                }
            }
            assert_eq!(offsets, (at..10).collect::<Vec<_>>());
            // Time for an async commit sent at the assignment to land, right or wrong.
            tokio::time::sleep(Duration::from_secs(1)).await;
            let mut committed = BTreeMap::new();
            for _ in 0..50 {
                committed = consume::committed_offsets(&kafka, &bootstrap, &group, &topic)
                    .await
                    .unwrap();
                if !committed.is_empty() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            consumer.close().await;
            committed
        }
    };
    assert_eq!(consume_from(7).await, BTreeMap::from([(0, 7)]));
    // Only forward: a group shared with a pipeline of another name, which took it further, is
    // not moved back to this one's offsets.
    assert_eq!(consume_from(5).await, BTreeMap::from([(0, 7)]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uncommitted_records_apply_backpressure() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_rows(dir.path(), 1000);
    let topic = broker::unique("backpressure");
    let kafka = broker::kafka_config(
        &topic,
        serde_json::json!({ "partitions": 1, "max_in_flight": 100 }),
    );
    replay(&csv_source(serde_json::json!({ "path": path })), &kafka)
        .await
        .expect("replay");
    let stats = Arc::new(ConsumerStats::default());
    let bootstrap = broker::bootstrap();
    let group = broker::unique("group");
    let opts = ConsumerOptions {
        kafka: &kafka,
        bootstrap: &bootstrap,
        group_id: &group,
        offsets: consume::group_offsets(),
        stats: stats.clone(),
    };
    let mut consumer = Consumer::start(opts).expect("consumer");
    // Receives records until none comes for 2 s; returns the last offset seen. The first may
    // take longer: after an assignment or a resume, the next fetch is up to the client's backoff
    // away, and more on a loaded machine (CI compiles beside the tests).
    async fn drain(c: &mut Consumer, got: &mut usize) -> i64 {
        let mut last = -1;
        let mut wait = Duration::from_secs(20);
        while let Ok(ev) = tokio::time::timeout(wait, c.recv()).await {
            if let Some(Ok(ConsumerEvent::Record(r))) = ev {
                *got += 1;
                last = r.meta.offset;
                wait = Duration::from_secs(2);
            }
        }
        last
    }
    let mut got = 0;
    let last = drain(&mut consumer, &mut got).await;
    assert_eq!(
        got, 100,
        "consumption stops at max_in_flight without commits"
    );
    assert_eq!(stats.in_flight.load(Ordering::Relaxed), 100);
    assert!(stats.pauses.load(Ordering::Relaxed) >= 1);
    // Nothing committed yet: every record kept is lag (it read 0 until the first commit).
    assert_eq!(stats.total_lag(), 1000);
    assert_eq!(
        consumer.commit(&topic, 0, last + 1).await.unwrap(),
        CommitOutcome::Committed
    );
    assert_eq!(stats.in_flight.load(Ordering::Relaxed), 0);
    let last = drain(&mut consumer, &mut got).await;
    assert_eq!(got, 200, "a commit releases exactly the committed records");
    assert_eq!(last, 199, "consumption resumed where it paused");
    // librdkafka's statistics (every second) measure lag from the committed offset, 100.
    let lag = stats.lag.lock().unwrap().get(&0).copied();
    assert_eq!(lag, Some(900), "lag of partition 0");
    assert_eq!(
        consumer.commit(&topic, 0, 50).await.unwrap(),
        CommitOutcome::AlreadyCommitted
    );
    assert_eq!(
        consumer.commit(&topic, 0, 200).await.unwrap(),
        CommitOutcome::Committed
    );
    let lag = stats.lag.lock().unwrap().get(&0).copied();
    assert_eq!(lag, Some(800), "lag follows the commit at once");
    assert_eq!(
        consumer.commit(&topic, 7, 1).await.unwrap(),
        CommitOutcome::NotAssigned
    );
    consumer.close().await;
    let committed = consume::committed_offsets(&kafka, &bootstrap, &group, &topic)
        .await
        .unwrap();
    assert_eq!(
        committed,
        BTreeMap::from([(0, 200)]),
        "the commit never moves back"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loop_replays_the_file_again() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_rows(dir.path(), 5);
    let topic = broker::unique("loop");
    let kafka = broker::kafka_config(&topic, serde_json::json!({ "partitions": 1 }));
    let summary = replay(
        &csv_source(serde_json::json!({ "path": path, "loop": 3 })),
        &kafka,
    )
    .await
    .expect("replay");
    assert_eq!((summary.rows_read, summary.rows_produced), (15, 15));
    let lines: Vec<String> = broker::read_topic(&topic)
        .iter()
        .map(|m| m.header(wire::HEADER_LINE).unwrap().to_owned())
        .collect();
    assert_eq!(lines, ["2", "3", "4", "5", "6"].repeat(3));
}

/// Bad rows' letters do not fall behind the rows: with 64 letters not yet stored the replay
/// waits, so no row after them is produced; once they are stored it goes on to the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_replay_waits_for_its_letters_rather_than_run_ahead_of_them() {
    use std::io::Write as _;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.csv");
    let mut f = std::fs::File::create(&path).unwrap();
    writeln!(f, "id,name").unwrap();
    for i in 0..200 {
        writeln!(f, "{i}").unwrap(); // ragged
    }
    writeln!(f, "200,last").unwrap();
    drop(f);
    let topic = broker::unique("letters-bound");
    let kafka = broker::kafka_config(&topic, serde_json::json!({ "partitions": 1 }));
    let src = csv_source(serde_json::json!({ "path": path, "on_error": "dead_letter" }));
    let bootstrap = broker::bootstrap();
    let (tx, mut rx) = sluice::dead_letter::channel(1024);
    let stats = Arc::new(ReplayStats::default());
    let cfg = ReplayConfig {
        source: &src,
        base_dir: &repo_root(),
        kafka: &kafka,
        bootstrap: &bootstrap,
        unpaced: None,
        resume: None,
    };
    let run = source::replay(cfg, tx, stats.clone(), CancellationToken::new());
    let store = async {
        // Take letters without storing them: 64 outstanding, and the one that finds the bound.
        let mut held = Vec::new();
        for _ in 0..65 {
            held.push(rx.recv().await.expect("a letter").1);
        }
        // No more come while none is stored (a replay running ahead sends the next at once).
        let more = tokio::time::timeout(Duration::from_secs(1), rx.recv()).await;
        let waiting = held.len() + usize::from(more.is_ok());
        let produced = stats.rows_produced.load(Ordering::Relaxed);
        for ack in held {
            ack(Ok(()));
        }
        if let Ok(Some((_, ack))) = more {
            ack(Ok(()));
        }
        while let Some((_, ack)) = rx.recv().await {
            ack(Ok(()));
        }
        (waiting, produced)
    };
    let (summary, (waiting, produced)) = tokio::join!(run, store);
    let summary = summary.expect("replay");
    assert_eq!(
        waiting, 65,
        "64 outstanding, and the one that found the bound"
    );
    assert_eq!(produced, 0, "the good row after them waited");
    assert_eq!(
        (summary.rows_dead_lettered, summary.rows_produced),
        (200, 1)
    );
    assert_eq!(broker::read_topic(&topic).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_replay_confirms_what_it_sent() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_rows(dir.path(), 100);
    let topic = broker::unique("cancel");
    let kafka = broker::kafka_config(&topic, serde_json::json!({ "partitions": 1 }));
    let src = csv_source(
        serde_json::json!({ "path": path, "pacing": { "mode": "fixed", "delay_ms": 50 } }),
    );
    let bootstrap = broker::bootstrap();
    let (tx, task) = dlq::spawn(&kafka, &bootstrap, &format!("{topic}.dlq"), 8)
        .await
        .unwrap();
    let cancel = CancellationToken::new();
    let stats = Arc::new(ReplayStats::default());
    let cfg = ReplayConfig {
        source: &src,
        base_dir: &repo_root(),
        kafka: &kafka,
        bootstrap: &bootstrap,
        unpaced: None,
        resume: None,
    };
    let run = source::replay(cfg, tx, stats.clone(), cancel.clone());
    let stop = async {
        // Cancel once a few rows are confirmed (not after a fixed sleep).
        while stats.rows_produced.load(Ordering::Relaxed) < 3 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        cancel.cancel();
    };
    let (summary, ()) = tokio::join!(run, stop);
    task.finish().await;
    let summary = summary.expect("replay");
    assert!(summary.cancelled);
    assert!(
        summary.rows_produced >= 3 && summary.rows_produced < 100,
        "{summary:?}"
    );
    assert_eq!(
        broker::read_topic(&topic).len() as u64,
        summary.rows_produced,
        "every sent row is confirmed"
    );
    // Rows the reader had read ahead but the replay never sent are not counted as read: the
    // summary would otherwise show them as lost.
    assert_eq!(summary.rows_read, summary.rows_produced, "{summary:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_paused_for_backpressure_resume_after_a_rebalance() {
    const N: usize = 400;
    let dir = tempfile::tempdir().unwrap();
    let path = write_rows(dir.path(), N);
    let topic = broker::unique("pause-rebalance");
    let kafka = broker::kafka_config(
        &topic,
        serde_json::json!({ "partitions": 2, "max_in_flight": 50 }),
    );
    replay(
        &csv_source(serde_json::json!({ "path": path, "key_column": "id" })),
        &kafka,
    )
    .await
    .expect("replay");
    let group = broker::unique("group");
    let total = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(AtomicBool::new(false));
    let (a_assigned, b_assigned) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
    // The first member fills its in-flight window without committing, so it pauses everything.
    let a = Member::start(&kafka, &group, consume::group_offsets());
    let a_stats = a.stats.clone();
    let a = tokio::spawn(a.run(total.clone(), N, gate.clone(), a_assigned.clone()));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while a_stats.pauses.load(Ordering::SeqCst) == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "first member never paused"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A second member joins: the rebalance hands the paused member one partition back.
    let b = Member::start(&kafka, &group, consume::group_offsets());
    let b = tokio::spawn(b.run(total.clone(), N, gate.clone(), b_assigned.clone()));
    while !(a_assigned.load(Ordering::SeqCst) && b_assigned.load(Ordering::SeqCst)) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "both members never held partitions at once"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    gate.store(true, Ordering::SeqCst);
    let (a, b) = (a.await.unwrap(), b.await.unwrap());
    assert!(
        !a.durable.is_empty() && !b.durable.is_empty(),
        "a: {}, b: {}",
        a.durable.len(),
        b.durable.len()
    );
    let got = ids(&[&a.durable, &b.durable]);
    assert!(
        got.iter().copied().eq(0..N as i64),
        "every row exactly once"
    );
    a.consumer.close().await;
    b.consumer.close().await;
}

/// A bounded consume-only run stopped by SIGTERM (what a service manager sends; Ctrl-C takes the
/// same path) before it reached the end offsets is not "ok": it drains, its summary says it
/// stopped early and how to resume, it exits 1, and the resumed run then loads the rest, each row
/// once.
#[test]
fn an_interrupted_bounded_consume_only_run_is_not_ok_and_resumes() {
    use std::io::BufRead as _;
    let dir = tempfile::tempdir().unwrap();
    let rows = 30_000;
    let csv = write_rows(dir.path(), rows);
    let topic = broker::unique("interrupted");
    let pipeline = serde_json::json!({
        "version": 1,
        "name": "interrupted",
        "source": { "type": "csv", "path": csv, "key_column": "id" },
        "kafka": { "brokers": broker::bootstrap(), "topic": topic, "partitions": 2 },
        "sink": { "type": "snowflake", "database": "E2E", "schema": "RAW", "table": "ROWS" }
    });
    let path = dir.path().join("pipeline.json");
    std::fs::write(&path, pipeline.to_string()).unwrap();
    let (p, state) = (path.to_string_lossy(), dir.path().join("state"));
    let s = state.to_string_lossy();
    let summary_file = dir.path().join("summary.json");
    let sf = summary_file.to_string_lossy();
    let replay = sluice_tests::cli::sluice(
        dir.path(),
        &[
            "run",
            &p,
            "--replay-only",
            "--no-progress",
            "--state-dir",
            &s,
        ],
    );
    assert!(
        replay.status.success(),
        "{}",
        String::from_utf8_lossy(&replay.stderr)
    );

    let mut child = std::process::Command::new(sluice_tests::cli::sluice_bin())
        .args(["run", &p, "--consume-only", "--until-end", "--no-progress"])
        .args(["--state-dir", &s, "--summary", &sf])
        .current_dir(dir.path())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Interrupt as soon as the consumer has its partitions: far from the 30,000th row.
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut seen = String::new();
    let mut line = String::new();
    while stderr.read_line(&mut line).unwrap() > 0 {
        seen.push_str(&line);
        if line.contains("Partitions assigned") {
            break;
        }
        line.clear();
    }
    let interrupted = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(interrupted.success());
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    seen.push_str(&rest);
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(1), "{seen}");
    assert!(
        seen.contains("Terminated (SIGTERM); stopping after in-flight work"),
        "{seen}"
    );
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&summary_file).unwrap()).unwrap();
    assert_eq!(summary["ok"], false, "{summary:#}");
    let problems = summary["problems"].to_string();
    assert!(
        problems.contains("stopped before it loaded up to the end offsets"),
        "{problems}"
    );
    let first = summary["consume"]["rows_loaded"].as_u64().unwrap();
    assert!(first < rows as u64, "{summary:#}");

    let resumed = sluice_tests::cli::sluice(
        dir.path(),
        &[
            "run",
            &p,
            "--consume-only",
            "--until-end",
            "--no-progress",
            "--state-dir",
            &s,
            "--summary",
            &sf,
        ],
    );
    assert!(
        resumed.status.success(),
        "{}",
        String::from_utf8_lossy(&resumed.stderr)
    );
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&summary_file).unwrap()).unwrap();
    let consume = &summary["consume"];
    assert_eq!(
        consume["rows_loaded"].as_u64().unwrap() + first,
        rows as u64,
        "{summary:#}"
    );
    assert_eq!(
        consume["table_rows_after"].as_u64(),
        Some(rows as u64),
        "{summary:#}"
    );
    let verified = sluice_tests::cli::sluice(
        dir.path(),
        &["verify", &p, "--state-dir", &s, "--summary", &sf],
    );
    assert!(
        verified.status.success(),
        "{}{}",
        String::from_utf8_lossy(&verified.stdout),
        String::from_utf8_lossy(&verified.stderr)
    );
}

/// A replay stopped part-way leaves the topic short of the file. A consume-only run then loads
/// what the topic holds, exactly once, and finishes cleanly; `verify` of that run still fails,
/// because the table cannot hold the whole file.
#[test]
fn verify_of_a_consume_only_run_fails_when_the_replay_stopped_part_way() {
    use std::io::BufRead as _;
    let dir = tempfile::tempdir().unwrap();
    let csv = write_rows(dir.path(), 2000);
    let topic = broker::unique("cutshort");
    let pipeline = serde_json::json!({
        "version": 1,
        "name": "cutshort",
        "source": { "type": "csv", "path": csv, "pacing": { "mode": "rate", "rows_per_sec": 400 } },
        "kafka": { "brokers": broker::bootstrap(), "topic": topic, "partitions": 2 },
        "sink": { "type": "snowflake", "database": "E2E", "schema": "RAW", "table": "ROWS" }
    });
    let path = dir.path().join("pipeline.json");
    std::fs::write(&path, pipeline.to_string()).unwrap();
    let (p, state) = (path.to_string_lossy(), dir.path().join("state"));
    let s = state.to_string_lossy();
    let mut child = std::process::Command::new(sluice_tests::cli::sluice_bin())
        .args([
            "run",
            &p,
            "--replay-only",
            "--no-progress",
            "--state-dir",
            &s,
        ])
        .current_dir(dir.path())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    while stderr.read_line(&mut line).unwrap() > 0 && !line.contains("Replaying.") {
        line.clear();
    }
    // Stopped once the topic holds some of the file (400 rows/s: far from all of it).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while broker::records_in(&topic) == 0 {
        assert!(std::time::Instant::now() < deadline, "nothing was produced");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let interrupted = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(interrupted.success());
    std::io::Read::read_to_string(&mut stderr, &mut String::new()).unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(1));

    let summary_file = dir.path().join("summary.json");
    let sf = summary_file.to_string_lossy();
    let consumed = sluice_tests::cli::sluice(
        dir.path(),
        &[
            "run",
            &p,
            "--consume-only",
            "--until-end",
            "--no-progress",
            "--state-dir",
            &s,
            "--summary",
            &sf,
        ],
    );
    assert!(
        consumed.status.success(),
        "{}",
        String::from_utf8_lossy(&consumed.stderr)
    );
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&summary_file).unwrap()).unwrap();
    let loaded = summary["consume"]["rows_loaded"].as_u64().unwrap();
    assert!(loaded > 0 && loaded < 2000, "{summary:#}");

    let verified = sluice_tests::cli::sluice(
        dir.path(),
        &[
            "--log-format",
            "json",
            "verify",
            &p,
            "--state-dir",
            &s,
            "--summary",
            &sf,
        ],
    );
    let stdout = String::from_utf8_lossy(&verified.stdout);
    assert_eq!(verified.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains(&format!(
            "{loaded} messages, expected at least the 2000 good rows"
        )),
        "{stdout}"
    );
    // With JSON logs the gaps also end the log, as an ERROR event naming them.
    let stderr = String::from_utf8_lossy(&verified.stderr);
    let last: serde_json::Value = serde_json::from_str(stderr.lines().last().unwrap_or(""))
        .unwrap_or_else(|e| panic!("last line not JSON ({e}):\n{stderr}"));
    assert_eq!(last["level"], "ERROR", "{last:#}");
    assert_eq!(last["fields"]["exit_code"], 1, "{last:#}");
    let message = last["fields"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("verify found gaps") && message.contains("at least the 2000 good rows"),
        "{message}"
    );
}

/// `sluice verify` checks a run of the pipeline it is given: another pipeline's summary (the
/// last run in a shared state directory, say) is refused, exit 2, rather than checked against
/// the wrong topic and table.
#[test]
fn verify_refuses_another_pipelines_summary() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = serde_json::json!({
        "version": 1,
        "name": "mine",
        "source": { "type": "csv", "path": write_rows(dir.path(), 3) },
        "kafka": { "topic": "t" },
        "sink": { "type": "snowflake", "database": "E2E", "schema": "RAW", "table": "ROWS" }
    });
    let path = dir.path().join("pipeline.json");
    std::fs::write(&path, pipeline.to_string()).unwrap();
    let summary = serde_json::json!({
        "pipeline": "theirs", "run_id": "r", "mode": "full", "started_at": "2026-12-03T00:00:00Z",
        "duration_ms": 1, "replay": null, "consume": null, "dead_letters": 0,
        "dead_letter_topic": "t.dlq", "ok": true, "problems": []
    });
    let summary_file = dir.path().join("summary.json");
    std::fs::write(&summary_file, summary.to_string()).unwrap();
    let out = sluice_tests::cli::sluice(
        dir.path(),
        &[
            "verify",
            &path.to_string_lossy(),
            "--summary",
            &summary_file.to_string_lossy(),
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("is the summary of pipeline \"theirs\", not of \"mine\""),
        "{stderr}"
    );
    // The same name with another topic is another feed: refused too, naming what differs.
    let mut moved = summary.clone();
    moved["pipeline"] = "mine".into();
    moved["topic"] = "elsewhere".into();
    std::fs::write(&summary_file, moved.to_string()).unwrap();
    let out = sluice_tests::cli::sluice(
        dir.path(),
        &[
            "verify",
            &path.to_string_lossy(),
            "--summary",
            &summary_file.to_string_lossy(),
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(r#"of a run of "mine" with topic "elsewhere" (the file says "t"): "#),
        "{stderr}"
    );

    // No run yet in this state directory: say what writes a summary and where. A wrong flag,
    // exit 2, not a gap found (1).
    let out = sluice_tests::cli::sluice(
        dir.path(),
        &[
            "verify",
            &path.to_string_lossy(),
            "--state-dir",
            "never-run",
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(
            "no run summary at never-run/last-run.json: run `sluice run --until-end` first"
        ),
        "{stderr}"
    );
}
