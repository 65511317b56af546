//! Integration tests: the Snowflake sink against a real fakesnow server over TCP (and an S3-stage
//! double in front of it), with results read back through SQL and, for the large load, through
//! the official Python connector. A live suite runs the same scenarios against a real account
//! when `SNOWFLAKE_ACCOUNT` is set.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::{Value as Json, json};
use sluice::dead_letter::DeadLetter;
use sluice::row::{Row, Value, parse_timestamp};
use sluice::sink::snowflake::config::{SchemaEvolution, SnowflakeSinkConfig};
use sluice::sink::snowflake::{
    Batch, ConnectOptions, Durable, SinkRecord, SinkSummary, SnowflakeSink,
};
use sluice_tests::snowflake::s3_double::S3Double;
use sluice_tests::snowflake::{
    connect, dead_letter_collector, emulator, python_query, row, shared_db_lock, sink_config,
};

fn rec(topic: &str, partition: i32, offset: i64, rows: Vec<Row>) -> SinkRecord {
    SinkRecord {
        topic: topic.into(),
        partition,
        offset,
        rows,
    }
}

fn ts(s: &str) -> Value {
    Value::Timestamp(parse_timestamp(s).expect("timestamp"))
}

fn event(id: i64) -> Row {
    row(&[
        ("id", Value::Int(id)),
        ("name", Value::String(format!("n{id}"))),
    ])
}

/// Feeds records through a writer and returns the summary and every durable offset message.
async fn run_writer(
    sink: Arc<SnowflakeSink>,
    records: Vec<SinkRecord>,
    dlq: Option<sluice::dead_letter::DeadLetterTx>,
) -> (SinkSummary, Vec<Durable>) {
    let (handle, mut durable, task) = sink.spawn(dlq, 64);
    for r in records {
        handle.record(r).await.expect("send");
    }
    handle.close();
    let summary = task.await.expect("join").expect("writer");
    let mut out = Vec::new();
    while let Ok(d) = durable.try_recv() {
        out.push(d);
    }
    (summary, out)
}

/// `COUNT(*)`, `COUNT(DISTINCT "ID")`, `MIN("ID")` and `MAX("ID")` of the sink's table, read back.
async fn id_stats(sink: &SnowflakeSink) -> [i64; 4] {
    let r = sink
        .query(&format!(
            "SELECT COUNT(*), COUNT(DISTINCT \"ID\"), MIN(\"ID\"), MAX(\"ID\") FROM {}",
            sink.table()
        ))
        .await
        .unwrap();
    let row = &r.rows[0];
    std::array::from_fn(|i| row[i].as_i64().unwrap_or(-1))
}

fn last_durable(ds: &[Durable]) -> HashMap<i32, i64> {
    let mut m = HashMap::new();
    for d in ds {
        m.insert(d.partition, d.next_offset);
    }
    m
}

#[tokio::test]
async fn rows_read_back_with_exact_values_types_and_offsets() {
    let mut cfg = sink_config("events");
    cfg.batch.max_rows = 3;
    let sink = Arc::new(connect(&cfg, "p1", Some(":isolated:")).await);
    let records = vec![
        rec(
            "orders",
            0,
            0,
            vec![row(&[
                ("id", Value::Int(1)),
                (
                    "name",
                    Value::String("comma, \"quote\"\nnewline ünï".into()),
                ),
                ("price", Value::Float(12.5)),
                ("ok", Value::Bool(true)),
                ("ts", ts("2024-01-02T03:04:05.123456")),
                ("attrs", Value::Json(r#"{"k":[1,2],"s":"x"}"#.into())),
                ("note", Value::Null),
            ])],
        ),
        rec(
            "orders",
            0,
            1,
            vec![
                row(&[
                    ("id", Value::Int(2)),
                    ("name", Value::String("b".into())),
                    ("price", Value::Float(-0.25)),
                    ("ok", Value::Bool(false)),
                    ("ts", ts("1999-12-31T23:59:59")),
                    ("attrs", Value::Json("[]".into())),
                    ("note", Value::String("n".into())),
                ]),
                // A second row from the same record (a transform may fan out).
                row(&[
                    ("id", Value::Int(3)),
                    ("price", Value::Int(7)),
                    ("ok", Value::Null),
                ]),
            ],
        ),
        // Filtered upstream: no rows, but the offset must still advance.
        rec("orders", 0, 2, vec![]),
        rec(
            "orders",
            0,
            3,
            vec![row(&[
                ("id", Value::Int(4)),
                ("name", Value::String("d".into())),
            ])],
        ),
        rec(
            "orders",
            1,
            10,
            vec![row(&[
                ("id", Value::Int(10)),
                ("price", Value::Float(1e10)),
            ])],
        ),
        rec("orders", 1, 11, vec![]),
    ];
    let (summary, durable) = run_writer(sink.clone(), records, None).await;
    assert_eq!(summary.rows_loaded, 5);
    assert_eq!(
        summary.commits, 3,
        "p0: [0,1] (3 rows) then [2,3]; p1: [10,11]"
    );
    assert_eq!(last_durable(&durable), HashMap::from([(0, 4), (1, 12)]));

    let r = sink
        .query(&format!(
            "SELECT \"ID\", \"NAME\", \"PRICE\", \"OK\", \"TS\", \"ATTRS\", \"NOTE\" FROM {} ORDER BY \"ID\"",
            sink.table()
        ))
        .await
        .expect("select");
    let types: Vec<&str> = r.columns.iter().map(|c| c.type_name.as_str()).collect();
    assert_eq!(
        types,
        [
            "fixed",
            "text",
            "real",
            "boolean",
            "timestamp_ntz",
            "variant",
            "text"
        ]
    );
    let attrs: Vec<Json> = r.rows.iter().map(|row| row[5].clone()).collect();
    let parsed: Vec<Json> = attrs
        .iter()
        .map(|a| {
            a.as_str()
                .map_or(Json::Null, |s| serde_json::from_str(s).unwrap())
        })
        .collect();
    assert_eq!(
        parsed,
        vec![
            json!({"k": [1, 2], "s": "x"}),
            json!([]),
            Json::Null,
            Json::Null,
            Json::Null
        ]
    );
    let rows: Vec<Vec<Json>> = r
        .rows
        .iter()
        .map(|row| {
            let mut v = row.clone();
            v.remove(5);
            v
        })
        .collect();
    assert_eq!(
        rows,
        vec![
            vec![
                json!(1),
                json!("comma, \"quote\"\nnewline ünï"),
                json!(12.5),
                json!(true),
                json!("2024-01-02T03:04:05.123456"),
                Json::Null
            ],
            vec![
                json!(2),
                json!("b"),
                json!(-0.25),
                json!(false),
                json!("1999-12-31T23:59:59"),
                json!("n")
            ],
            vec![
                json!(3),
                Json::Null,
                json!(7.0),
                Json::Null,
                Json::Null,
                Json::Null
            ],
            vec![
                json!(4),
                json!("d"),
                Json::Null,
                Json::Null,
                Json::Null,
                Json::Null
            ],
            vec![
                json!(10),
                Json::Null,
                json!(1e10),
                Json::Null,
                Json::Null,
                Json::Null
            ],
        ]
    );

    let offsets = sink
        .query(&format!(
            "SELECT \"PIPELINE\", \"TOPIC\", \"PARTITION\", \"NEXT_OFFSET\" FROM {} ORDER BY \"PARTITION\"",
            sink.offsets_table()
        ))
        .await
        .expect("offsets");
    assert_eq!(
        offsets.rows,
        vec![
            vec![json!("p1"), json!("orders"), json!(0), json!(4)],
            vec![json!("p1"), json!("orders"), json!(1), json!(12)]
        ]
    );
    assert_eq!(
        sink.committed_offsets("orders").await.unwrap(),
        HashMap::from([(0, 4), (1, 12)])
    );
    assert_eq!(
        sink.committed_offsets("other").await.unwrap(),
        HashMap::new()
    );
    assert_eq!(sink.count_rows().await.unwrap(), 5);

    let stats = sink.stats();
    use std::sync::atomic::Ordering::Relaxed;
    assert_eq!(stats.rows_loaded.load(Relaxed), 5);
    assert_eq!(stats.files.load(Relaxed), 3);
    assert_eq!(stats.commits.load(Relaxed), 3);
    assert_eq!(stats.copy_latency.snapshot().count, 3);
    assert!(stats.bytes.load(Relaxed) > 0);
}

#[tokio::test]
async fn loading_the_same_batch_again_adds_zero_rows() {
    let cfg = sink_config("events");
    let sink = Arc::new(connect(&cfg, "p1", Some(":isolated:")).await);
    let batch = Batch {
        topic: "t".into(),
        partition: 2,
        records: (100..110).map(|o| (o, vec![event(o)])).collect(),
    };
    let first = sink.load_batch(&batch, None).await.expect("first load");
    assert_eq!(
        (first.rows_loaded, first.next_offset, first.already_loaded),
        (10, 110, false)
    );
    assert_eq!(
        first.file.as_deref(),
        Some("EVENTS/t/2/00000000000000000100-00000000000000000109.csv.gz")
    );
    // Loaded by another delivery (this one's first): as a writer of a partition sees it.
    let again = sink.load_batch(&batch, None).await.expect("second load");
    assert_eq!(
        (
            again.rows_loaded,
            again.rows_loaded_elsewhere,
            again.next_offset,
            again.already_loaded
        ),
        (0, 10, 110, true)
    );
    assert_eq!(
        again.file, first.file,
        "a replay produces the same file name"
    );
    assert_eq!(sink.count_rows().await.unwrap(), 10);

    // The same records through a writer: all below the committed offset, so nothing is staged.
    let records = (100..110).map(|o| rec("t", 2, o, vec![event(o)])).collect();
    let (summary, durable) = run_writer(sink.clone(), records, None).await;
    assert_eq!(
        (
            summary.rows_loaded,
            summary.files,
            summary.records_already_committed
        ),
        (0, 0, 10)
    );
    assert_eq!(
        durable,
        vec![Durable {
            topic: "t".into(),
            partition: 2,
            next_offset: 110
        }]
    );
    assert_eq!(id_stats(&sink).await[..2], [10, 10]);
}

/// The S3 double in front of the emulator, and options that send a sink's statements and
/// uploads through it: on the server's shared database (so that two lives of a sink, or two
/// members, see one warehouse), or on `db_path` (`":isolated:"`).
async fn through_double(db_path: Option<&str>) -> (S3Double, ConnectOptions) {
    let emu_url = tokio::task::spawn_blocking(|| emulator().url())
        .await
        .unwrap();
    let double = S3Double::start(&emu_url, 16).await;
    let mut opts = match db_path {
        Some(path) => ConnectOptions::emulator(double.url(), path),
        None => ConnectOptions::emulator_shared(double.url()),
    };
    opts.s3_endpoint = Some(double.url());
    (double, opts)
}

/// The offsets a partition assignment seeks to are read on a session of their own: a load whose
/// COPY the warehouse is slow to run does not hold them up (a consumer waits for them only so
/// long), and they are what the last commit left, not what the load in flight will.
#[tokio::test]
async fn committed_offsets_are_read_while_a_load_is_under_way() {
    let _shared = shared_db_lock().lock().await;
    let mut cfg = sink_config("slow_copy_events");
    cfg.offsets_table = "SLOW_COPY_OFFSETS".into();
    let (double, opts) = through_double(None).await;
    let sink = Arc::new(SnowflakeSink::connect(&cfg, "p", opts).await.unwrap());
    let batch = |offsets: std::ops::Range<i64>| Batch {
        topic: "t".into(),
        partition: 0,
        records: offsets.map(|o| (o, vec![event(o)])).collect(),
    };
    sink.load_batch(&batch(0..3), None).await.unwrap();

    let (held, release) = double.hold_next_statement("COPY");
    let load = tokio::spawn({
        let sink = sink.clone();
        async move { sink.load_batch(&batch(3..8), None).await }
    });
    held.await.expect("the load reaches its COPY");
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        sink.committed_offsets("t"),
    )
    .await;
    assert_eq!(
        read.expect("the read waited for the load").unwrap(),
        HashMap::from([(0, 3)])
    );
    assert!(!load.is_finished());
    release.send(()).unwrap();
    let loaded = load.await.unwrap().unwrap();
    assert_eq!((loaded.rows_loaded, loaded.next_offset), (5, 8));
    assert_eq!(
        sink.committed_offsets("t").await.unwrap(),
        HashMap::from([(0, 8)])
    );
    assert_eq!(id_stats(&sink).await[..2], [8, 8]);
}

#[tokio::test]
async fn a_writer_overtaken_by_another_loads_only_what_the_other_did_not() {
    // Two members of one pipeline after a rebalance, each with its own session on one warehouse:
    // the old owner still holds records of the partition when the new owner loads them.
    let _shared = shared_db_lock().lock().await;
    let mut cfg = sink_config("overtaken_events");
    cfg.offsets_table = "OVERTAKEN_OFFSETS".into();
    cfg.batch.max_rows = 1000;
    // The old owner holds its records until closed, however long the new owner's load takes.
    cfg.batch.max_latency_ms = 3_600_000;
    // The old owner's statements go through the double, to fail one.
    let (double, opts) = through_double(None).await;
    let old = Arc::new(SnowflakeSink::connect(&cfg, "p", opts).await.unwrap());
    let new = Arc::new(connect(&cfg, "p", None).await);
    // Both made the partition's row before its first load, as two writers starting at once may.
    for _ in 0..2 {
        new.query(&format!(
            "INSERT INTO {} VALUES ('p', 't', 0, -1)",
            new.offsets_table()
        ))
        .await
        .unwrap();
    }
    let batch = |offsets: std::ops::Range<i64>| Batch {
        topic: "t".into(),
        partition: 0,
        records: offsets.map(|o| (o, vec![event(o)])).collect(),
    };

    // The old owner loads [0, 3), then holds [3, 8) while the new owner loads [3, 13).
    let (handle, mut durable, task) = old.clone().spawn(None, 64);
    for o in 0..3 {
        handle.record(rec("t", 0, o, vec![event(o)])).await.unwrap();
    }
    handle.flush().await.unwrap();
    for o in 3..8 {
        handle.record(rec("t", 0, o, vec![event(o)])).await.unwrap();
    }
    let took = new.load_batch(&batch(3..13), None).await.unwrap();
    assert_eq!((took.rows_loaded, took.next_offset), (10, 13));
    handle.close();
    let summary = task.await.unwrap().expect("the old writer");
    assert_eq!((summary.rows_loaded, summary.rows_redelivered), (3, 5));
    let mut reported = Vec::new();
    while let Ok(d) = durable.try_recv() {
        reported.push(d.next_offset);
    }
    assert_eq!(
        reported,
        [3, 13],
        "durable as the warehouse holds it, never back to 8"
    );

    // A batch the other loaded only the start of: the rest is loaded, in a file of its own.
    let rest = old.load_batch(&batch(10..18), None).await.unwrap();
    assert_eq!(
        (
            rest.rows_loaded,
            rest.next_offset,
            rest.rows_loaded_elsewhere
        ),
        (5, 18, 3)
    );
    assert!(
        (rest.file.as_deref()).is_some_and(|f| f.ends_with("00013-00000000000000000017.csv.gz")),
        "{:?}",
        rest.file
    );
    assert_eq!(id_stats(&old).await[..4], [18, 18, 0, 17]);

    // Overtaken again, and the ROLLBACK of its COPY fails: the load fails rather than go on
    // in a transaction that still holds that COPY.
    new.load_batch(&batch(18..25), None).await.unwrap();
    double.fail_next_statement("ROLLBACK", "000603");
    let err = old.load_batch(&batch(18..22), None).await.unwrap_err();
    assert!(err.to_string().contains("injected failure"), "{err}");
    old.query("ROLLBACK").await.unwrap();
    assert_eq!(id_stats(&old).await[..2], [25, 25]);
    // Both rows moved together; the offset is theirs.
    let r = old
        .query(&format!(
            "SELECT \"NEXT_OFFSET\" FROM {}",
            old.offsets_table()
        ))
        .await
        .unwrap();
    assert_eq!(r.rows, vec![vec![json!(25)], vec![json!(25)]]);
    assert_eq!(
        new.committed_offsets("t").await.unwrap(),
        HashMap::from([(0, 25)])
    );
    old.close().await;
    new.close().await;
}

#[tokio::test]
async fn crash_between_warehouse_commit_and_kafka_commit_loses_and_duplicates_nothing() {
    // Several sessions must see one warehouse: the server's shared database, with names of its own.
    let _shared = shared_db_lock().lock().await;
    let mut cfg = sink_config("crash_events");
    cfg.offsets_table = "CRASH_OFFSETS".into();
    cfg.batch.max_rows = 10;
    let log: Vec<SinkRecord> = (0..30).map(|o| rec("t", 0, o, vec![event(o)])).collect();

    // First life: two batches commit in the warehouse, a third is half built, then the process
    // dies before the consumer acts on any Durable, so Kafka's committed offset stays at 0.
    let sink = Arc::new(connect(&cfg, "p", None).await);
    let (handle, mut durable, task) = sink.clone().spawn(None, 64);
    for r in log[..25].iter().cloned() {
        handle.record(r).await.unwrap();
    }
    let d1 = durable.recv().await.unwrap();
    let d2 = durable.recv().await.unwrap();
    assert_eq!((d1.next_offset, d2.next_offset), (10, 20));
    task.abort();
    let _ = task.await;
    sink.close().await;
    drop((handle, durable, sink));

    // Second life: a new sink (new session) on the same warehouse state.
    let sink = Arc::new(connect(&cfg, "p", None).await);
    assert_eq!(
        sink.committed_offsets("t").await.unwrap(),
        HashMap::from([(0, 20)])
    );
    assert_eq!(sink.count_rows().await.unwrap(), 20);
    // Worst case: the consumer ignores the seek and replays from Kafka's own committed offset 0.
    let (summary, durable) = run_writer(sink.clone(), log.clone(), None).await;
    assert_eq!(summary.records_already_committed, 20);
    assert_eq!(summary.rows_loaded, 10);
    assert_eq!(last_durable(&durable), HashMap::from([(0, 30)]));
    assert_eq!(id_stats(&sink).await[..4], [30, 30, 0, 29]);
    sink.close().await;

    // Third life, seeking properly: nothing left to do, nothing changes.
    let sink = Arc::new(connect(&cfg, "p", None).await);
    let from = sink.committed_offsets("t").await.unwrap()[&0];
    let (summary, _) = run_writer(sink.clone(), log[from as usize..].to_vec(), None).await;
    assert_eq!(summary, SinkSummary::default());
    assert_eq!(sink.count_rows().await.unwrap(), 30);
    sink.close().await;
}

/// Runs `records` through a writer that dead-letters, flushing after the first record so that the
/// table exists with that record's columns before the rest arrive. Returns the summary, the last
/// durable next offset and the dead letters.
async fn run_with_dead_letters(
    sink: &Arc<SnowflakeSink>,
    records: &[SinkRecord],
) -> (SinkSummary, i64, Vec<DeadLetter>) {
    let (dlq, letters) = dead_letter_collector();
    let (handle, mut durable, task) = sink.clone().spawn(Some(dlq), 8);
    handle.record(records[0].clone()).await.unwrap();
    handle.flush().await.unwrap();
    for r in records[1..].iter().cloned() {
        handle.record(r).await.unwrap();
    }
    handle.close();
    let summary = task.await.unwrap().unwrap();
    let mut last = 0;
    while let Ok(d) = durable.try_recv() {
        last = d.next_offset;
    }
    (summary, last, letters.await.unwrap())
}

#[tokio::test]
async fn rows_that_do_not_fit_go_to_dead_letters_before_the_offsets_move() {
    let cfg = sink_config("events");
    let sink = Arc::new(connect(&cfg, "p", Some(":isolated:")).await);
    let records = [
        rec("t", 0, 0, vec![event(1)]),
        rec(
            "t",
            0,
            1,
            vec![row(&[("id", Value::Int(2)), ("extra", Value::Bool(true))])],
        ),
        rec(
            "t",
            0,
            2,
            vec![row(&[("id", Value::String("three".into()))])],
        ),
        rec("t", 0, 3, vec![event(4)]),
        rec("t", 0, 4, vec![Row::default()]),
    ];
    let (summary, last, letters) = run_with_dead_letters(&sink, &records).await;
    assert_eq!(summary.rows_dead_lettered, 3);
    assert_eq!(last, 5);
    assert_eq!(letters.len(), 3);
    assert_eq!(letters[2].reason, "row has no fields");
    assert_eq!(letters[0].stage, "sink");
    assert_eq!(letters[0].kind, "schema");
    assert_eq!(
        letters[0].reason,
        "field \"extra\" has no column in the table"
    );
    assert_eq!(
        letters[0]
            .origin
            .as_ref()
            .map(|m| (m.topic.as_str(), m.partition, m.offset)),
        Some(("t", 0, 1))
    );
    assert_eq!(
        serde_json::from_slice::<Json>(&letters[0].payload).unwrap(),
        json!({"id": 2, "extra": true})
    );
    assert_eq!(
        letters[1].reason,
        "field \"id\" is string but column \"ID\" is NUMBER(38,0)"
    );
    let r = sink
        .query(&format!("SELECT \"ID\" FROM {} ORDER BY 1", sink.table()))
        .await
        .unwrap();
    assert_eq!(r.rows, vec![vec![json!(1)], vec![json!(4)]]);
}

/// A timestamp Snowflake cannot take (a year past 9999, or a count of microseconds beyond any
/// calendar, which a transform can emit) is dead-lettered before the COPY, which would otherwise
/// fail for the whole file and again on every replay of it; the rows around it load.
#[tokio::test]
async fn timestamps_beyond_year_9999_are_dead_lettered_not_copied() {
    let cfg = sink_config("stamps");
    let sink = Arc::new(connect(&cfg, "p", Some(":isolated:")).await);
    let at = |id: i64, us: i64| row(&[("id", Value::Int(id)), ("at", Value::Timestamp(us))]);
    let records = [
        rec("t", 0, 0, vec![at(1, 1_704_164_645_123_456)]),
        // 10000-01-01T00:00:00, then the largest count of microseconds.
        rec("t", 0, 1, vec![at(2, 253_402_300_800_000_000)]),
        rec("t", 0, 2, vec![at(3, i64::MAX)]),
        rec("t", 0, 3, vec![at(4, 253_402_300_799_999_999)]),
    ];
    let (summary, last, letters) = run_with_dead_letters(&sink, &records).await;
    assert_eq!(summary.rows_dead_lettered, 2);
    assert_eq!(last, 4);
    let reasons: Vec<&str> = letters.iter().map(|l| l.reason.as_str()).collect();
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert!(
        reasons
            .iter()
            .all(|r| r.starts_with("field \"at\" is a timestamp outside the years 1 to 9999")),
        "{reasons:?}"
    );
    let r = sink
        .query(&format!("SELECT \"ID\" FROM {} ORDER BY 1", sink.table()))
        .await
        .unwrap();
    assert_eq!(r.rows, vec![vec![json!(1)], vec![json!(4)]]);
}

/// A number that an existing NUMBER(p,s) column cannot hold (too many digits before the point,
/// once rounded to its scale, or NaN and infinities, which a CSV's float column reads) is
/// dead-lettered before the COPY, which would otherwise fail the whole file and every replay of
/// it, so the partition would never move on; the rows around it load.
#[tokio::test]
async fn numbers_past_a_number_columns_precision_are_dead_lettered_not_copied() {
    let cfg = sink_config("priced");
    let sink = Arc::new(connect(&cfg, "p", Some(":isolated:")).await);
    sink.query(&format!(
        "CREATE TABLE {} (\"ID\" NUMBER(38,0), \"PRICE\" NUMBER(6,2), \"QTY\" NUMBER(3,0))",
        sink.table()
    ))
    .await
    .unwrap();
    let item = |id: i64, price: f64, qty: i64| {
        let fields = [
            ("id", Value::Int(id)),
            ("price", Value::Float(price)),
            ("qty", Value::Int(qty)),
        ];
        row(&fields)
    };
    let items = [
        item(1, 12.5, 3),
        item(2, f64::NAN, 1),
        item(3, 9999.994, 999),
        item(4, f64::INFINITY, 1),
        item(5, 9999.996, 1),
        item(6, -1e300, 1),
        item(7, 0.25, 1000),
        item(8, -9999.99, -999),
        // 9999.99499... as a float, but `9999.995` in the file, which COPY rounds up.
        item(9, 9999.995, 1),
    ];
    let records: Vec<SinkRecord> = (items.into_iter().enumerate())
        .map(|(i, r)| rec("t", 0, i as i64, vec![r]))
        .collect();
    let (summary, last, letters) = run_with_dead_letters(&sink, &records).await;
    assert_eq!((summary.rows_loaded, summary.rows_dead_lettered), (3, 6));
    assert_eq!(last, 9);
    let reasons: Vec<&str> = letters.iter().map(|l| l.reason.as_str()).collect();
    assert_eq!(
        reasons,
        [
            "field \"price\" is NaN, which column \"PRICE\" (NUMBER(6,2)) cannot hold",
            "field \"price\" is inf, which column \"PRICE\" (NUMBER(6,2)) cannot hold",
            "field \"price\" is 9999.996, which column \"PRICE\" (NUMBER(6,2)) cannot hold",
            "field \"price\" is -1e300, which column \"PRICE\" (NUMBER(6,2)) cannot hold",
            "field \"qty\" is 1000, which column \"QTY\" (NUMBER(3,0)) cannot hold",
            "field \"price\" is 9999.995, which column \"PRICE\" (NUMBER(6,2)) cannot hold",
        ]
    );
    let r = sink
        .query(&format!(
            "SELECT \"ID\", \"PRICE\", \"QTY\" FROM {} ORDER BY 1",
            sink.table()
        ))
        .await
        .unwrap();
    let loaded: Vec<(i64, String, i64)> = (r.rows.iter())
        .map(|r| {
            (
                r[0].as_i64().unwrap(),
                r[1].to_string(),
                r[2].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        loaded,
        [
            (1, "\"12.50\"".to_owned(), 3),
            (3, "\"9999.99\"".to_owned(), 999),
            (8, "\"-9999.99\"".to_owned(), -999)
        ],
        "{:?}",
        r.rows
    );
}

#[tokio::test]
async fn new_fields_add_columns_under_add_columns() {
    let mut cfg = sink_config("events");
    cfg.schema_evolution = SchemaEvolution::AddColumns;
    let sink = Arc::new(connect(&cfg, "p", Some(":isolated:")).await);
    let b1 = Batch {
        topic: "t".into(),
        partition: 0,
        records: vec![(0, vec![event(1)])],
    };
    sink.load_batch(&b1, None).await.unwrap();
    let b2 = Batch {
        topic: "t".into(),
        partition: 0,
        records: vec![(
            1,
            vec![row(&[
                ("id", Value::Int(2)),
                ("Score Card", Value::Float(0.5)),
                ("seen", ts("2024-05-06")),
            ])],
        )],
    };
    sink.load_batch(&b2, None).await.unwrap();
    let r = sink
        .query(&format!("SELECT * FROM {} ORDER BY \"ID\"", sink.table()))
        .await
        .unwrap();
    let cols: Vec<(&str, &str)> = r
        .columns
        .iter()
        .map(|c| (c.name.as_str(), c.type_name.as_str()))
        .collect();
    assert_eq!(
        cols,
        [
            ("ID", "fixed"),
            ("NAME", "text"),
            ("Score Card", "real"),
            ("SEEN", "timestamp_ntz")
        ]
    );
    assert_eq!(
        r.rows,
        vec![
            vec![json!(1), json!("n1"), Json::Null, Json::Null],
            vec![
                json!(2),
                Json::Null,
                json!(0.5),
                json!("2024-05-06T00:00:00")
            ]
        ]
    );
}

/// A field the first batch has only nulls for gets the type `source.schema` declares, not
/// VARCHAR, so the numbers of later batches land as numbers; without a declared type it is
/// VARCHAR, and a field with values keeps the type of its values whatever is declared.
#[tokio::test]
async fn a_declared_type_creates_a_column_the_first_batch_has_only_nulls_for() {
    let cfg = sink_config("events");
    let sink = connect(&cfg, "p", Some(":isolated:"))
        .await
        .with_type_hints([
            ("discount".to_owned(), sluice::row::ValueType::Float),
            ("id".to_owned(), sluice::row::ValueType::String),
        ]);
    let sink = Arc::new(sink);
    let batch = |offset: i64, discount: Value| Batch {
        topic: "t".into(),
        partition: 0,
        records: vec![(
            offset,
            vec![row(&[
                ("id", Value::Int(offset)),
                ("discount", discount),
                ("note", Value::Null),
            ])],
        )],
    };
    sink.load_batch(&batch(0, Value::Null), None).await.unwrap();
    sink.load_batch(&batch(1, Value::Float(2.5)), None)
        .await
        .unwrap();
    let r = sink
        .query(&format!("SELECT * FROM {} ORDER BY \"ID\"", sink.table()))
        .await
        .unwrap();
    let cols: Vec<(&str, &str)> = r
        .columns
        .iter()
        .map(|c| (c.name.as_str(), c.type_name.as_str()))
        .collect();
    assert_eq!(
        cols,
        [("ID", "fixed"), ("DISCOUNT", "real"), ("NOTE", "text")]
    );
    assert_eq!(
        r.rows,
        vec![
            vec![json!(0), Json::Null, Json::Null],
            vec![json!(1), json!(2.5), Json::Null]
        ]
    );
}

#[tokio::test]
async fn ndjson_lands_in_one_variant_column() {
    let mut cfg = sink_config("landing");
    cfg.format = sluice::sink::snowflake::config::FileFormat::Ndjson;
    let sink = Arc::new(connect(&cfg, "p", Some(":isolated:")).await);
    let records = vec![
        rec(
            "t",
            0,
            0,
            vec![row(&[
                ("id", Value::Int(1)),
                ("tags", Value::Json("[\"a\"]".into())),
            ])],
        ),
        rec("t", 0, 1, vec![event(2)]),
    ];
    let (summary, _) = run_writer(sink.clone(), records, None).await;
    assert_eq!(summary.rows_loaded, 2);
    let r = sink
        .query(&format!(
            "SELECT \"RECORD_CONTENT\" FROM {} ORDER BY \"RECORD_CONTENT\":id",
            sink.table()
        ))
        .await
        .unwrap();
    let docs: Vec<Json> = r
        .rows
        .iter()
        .map(|row| serde_json::from_str(row[0].as_str().unwrap()).unwrap())
        .collect();
    assert_eq!(
        docs,
        vec![
            json!({"id": 1, "tags": ["a"]}),
            json!({"id": 2, "name": "n2"})
        ]
    );
}

#[tokio::test]
async fn s3_stage_with_client_side_encryption_through_the_double() {
    for key_bytes in [16, 32] {
        let emu_url = tokio::task::spawn_blocking(|| emulator().url())
            .await
            .unwrap();
        let double = S3Double::start(&emu_url, key_bytes).await;
        let mut cfg = sink_config("events");
        cfg.batch.max_rows = 5;
        let mut opts = ConnectOptions::emulator(double.url(), ":isolated:");
        opts.s3_endpoint = Some(double.url());
        let sink = Arc::new(
            SnowflakeSink::connect(&cfg, "p", opts)
                .await
                .expect("connect via double"),
        );
        let records = (0..12).map(|o| rec("t", 0, o, vec![event(o)])).collect();
        let (summary, durable) = run_writer(sink.clone(), records, None).await;
        let seen = double.observed();
        assert!(
            seen.rejections.is_empty(),
            "double refused: {:#?}",
            seen.rejections
        );
        assert_eq!((summary.files, summary.rows_loaded), (3, 12));
        assert_eq!(
            (seen.put_statements, seen.heads, seen.puts, seen.head_hits),
            (3, 3, 3, 0)
        );
        assert_eq!(last_durable(&durable), HashMap::from([(0, 12)]));
        let r = sink
            .query(&format!(
                "SELECT COUNT(*), SUM(\"ID\") FROM {}",
                sink.table()
            ))
            .await
            .unwrap();
        // fakesnow types SUM over NUMBER(38,0) as a float.
        assert_eq!(
            (r.rows[0][0].as_i64(), r.rows[0][1].as_f64()),
            (Some(12), Some(66.0))
        );
        // The plaintext the double decrypted is the gzip CSV the sink meant to send.
        let key = format!(
            "SINKDB/RAW/{}/EVENTS/t/0/00000000000000000000-00000000000000000004.csv.gz",
            cfg.stage
        );
        let gz = &seen.objects[&key];
        let mut text = String::new();
        std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&gz[..]), &mut text)
            .unwrap();
        assert_eq!(text, "0,\"n0\"\n1,\"n1\"\n2,\"n2\"\n3,\"n3\"\n4,\"n4\"\n");

        // Re-staging a file that already exists: HEAD says so and nothing is uploaded again.
        let again = Batch {
            topic: "t".into(),
            partition: 0,
            records: (0..5).map(|o| (o, vec![event(o)])).collect(),
        };
        let outcome = sink.load_batch(&again, None).await.unwrap();
        assert!(outcome.already_loaded);
        let seen = double.observed();
        assert_eq!((seen.heads, seen.head_hits, seen.puts), (4, 1, 3));
        assert!(seen.rejections.is_empty(), "{:#?}", seen.rejections);
    }
}

#[tokio::test]
async fn a_transaction_that_fails_after_copy_is_replayed_exactly_once() {
    // Both lives must see one warehouse: the server's shared database, with names of its own.
    let _shared = shared_db_lock().lock().await;
    let (double, opts) = through_double(None).await;
    let mut cfg = sink_config("txn_events");
    cfg.offsets_table = "TXN_OFFSETS".into();
    cfg.batch.max_rows = 5;
    let log: Vec<SinkRecord> = (0..10).map(|o| rec("t", 0, o, vec![event(o)])).collect();

    // First life: batch [0,4] commits; batch [5,9] is staged and copied, then COMMIT fails.
    let sink = Arc::new(
        SnowflakeSink::connect(&cfg, "p", opts.clone())
            .await
            .unwrap(),
    );
    let (handle, mut durable, task) = sink.clone().spawn(None, 16);
    for r in log[..5].iter().cloned() {
        handle.record(r).await.unwrap();
    }
    assert_eq!(durable.recv().await.unwrap().next_offset, 5);
    double.fail_next_statement("COMMIT", "000603");
    for r in log[5..].iter().cloned() {
        let _ = handle.record(r).await;
    }
    handle.close();
    let err = task
        .await
        .unwrap()
        .expect_err("the failed commit must fail the writer");
    assert!(err.to_string().contains("injected failure"), "{err}");
    assert!(
        durable.recv().await.is_none(),
        "nothing after the failure may be reported durable"
    );
    assert_eq!(
        sink.count_rows().await.unwrap(),
        5,
        "the copy was rolled back"
    );
    assert_eq!(
        sink.committed_offsets("t").await.unwrap(),
        HashMap::from([(0, 5)])
    );
    sink.close().await;

    // Second life replays from Kafka's offset 0: the staged file already exists (HEAD, no second
    // upload) and its rolled-back load counts for nothing, so COPY loads it now, once.
    let sink = Arc::new(
        SnowflakeSink::connect(&cfg, "p", opts.clone())
            .await
            .unwrap(),
    );
    let (summary, durable) = run_writer(sink.clone(), log.clone(), None).await;
    assert_eq!(
        (summary.records_already_committed, summary.rows_loaded),
        (5, 5)
    );
    assert_eq!(last_durable(&durable), HashMap::from([(0, 10)]));
    let seen = double.observed();
    assert_eq!((seen.puts, seen.head_hits), (2, 1));
    assert!(seen.rejections.is_empty(), "{:#?}", seen.rejections);
    assert_eq!(id_stats(&sink).await[..4], [10, 10, 0, 9]);
    sink.close().await;
}

/// A staged file is reused only when it holds what the batch holds now: a file left by an attempt
/// that never committed, named by the same offsets, is replaced when the batch's rows changed
/// since (the transform was fixed before the restart), rather than its old rows loaded.
#[tokio::test]
async fn a_staged_file_left_by_a_failed_attempt_is_replaced_when_the_batch_changed() {
    let _shared = shared_db_lock().lock().await;
    let (double, opts) = through_double(None).await;
    let mut cfg = sink_config("restaged_events");
    cfg.offsets_table = "RESTAGED_OFFSETS".into();
    cfg.batch.max_rows = 5;
    let log = |name: &str| -> Vec<SinkRecord> {
        let named = |o: i64| {
            let fields = [
                ("id", Value::Int(o)),
                ("name", Value::String(format!("{name}{o}"))),
            ];
            row(&fields)
        };
        (0..5).map(|o| rec("t", 0, o, vec![named(o)])).collect()
    };

    // First life: the batch is staged and copied, then COMMIT fails.
    let sink = Arc::new(
        SnowflakeSink::connect(&cfg, "p", opts.clone())
            .await
            .unwrap(),
    );
    double.fail_next_statement("COMMIT", "000603");
    let (handle, _durable, task) = sink.clone().spawn(None, 16);
    for r in log("old") {
        let _ = handle.record(r).await;
    }
    handle.close();
    let err = task
        .await
        .unwrap()
        .expect_err("the failed commit fails the writer");
    assert!(err.to_string().contains("injected failure"), "{err}");
    sink.close().await;

    // Second life, with the rows a fixed transform makes: the file is there (HEAD), but with
    // other content, so it is uploaded again and the new rows load.
    let sink = Arc::new(
        SnowflakeSink::connect(&cfg, "p", opts.clone())
            .await
            .unwrap(),
    );
    let (summary, durable) = run_writer(sink.clone(), log("new"), None).await;
    assert_eq!(summary.rows_loaded, 5);
    assert_eq!(last_durable(&durable), HashMap::from([(0, 5)]));
    let seen = double.observed();
    assert_eq!((seen.head_hits, seen.puts), (1, 2));
    assert!(seen.rejections.is_empty(), "{:#?}", seen.rejections);
    let r = sink
        .query(&format!(
            "SELECT \"NAME\" FROM {} ORDER BY \"ID\"",
            sink.table()
        ))
        .await
        .unwrap();
    let names: Vec<&str> = r.rows.iter().filter_map(|r| r[0].as_str()).collect();
    assert_eq!(names, ["new0", "new1", "new2", "new3", "new4"]);
    sink.close().await;
}

/// Offsets are kept per pipeline name, not per table: a table named anew (or dropped) would be
/// loaded only from where the old one left off, which the sink reports so the run can say so.
#[tokio::test]
async fn offsets_past_the_start_without_the_table_are_reported() {
    let cfg = sink_config("renamed");
    let sink = Arc::new(connect(&cfg, "p", Some(":isolated:")).await);
    assert_eq!(sink.offsets_without_table("t").await.unwrap(), None);
    let (summary, _) = run_writer(sink.clone(), vec![rec("t", 1, 0, vec![event(1)])], None).await;
    assert_eq!(summary.rows_loaded, 1);
    assert_eq!(sink.offsets_without_table("t").await.unwrap(), None);
    sink.query(&format!("DROP TABLE {}", sink.table()))
        .await
        .unwrap();
    assert_eq!(
        sink.offsets_without_table("t").await.unwrap(),
        Some(HashMap::from([(1, 1)]))
    );
    assert_eq!(sink.offsets_without_table("other").await.unwrap(), None);
}

#[tokio::test]
async fn a_session_lost_inside_the_transaction_redoes_it_on_a_new_session() {
    let _shared = shared_db_lock().lock().await;
    let (double, opts) = through_double(None).await;
    let mut cfg = sink_config("relogin_events");
    cfg.offsets_table = "RELOGIN_OFFSETS".into();
    let sink = SnowflakeSink::connect(&cfg, "p", opts).await.unwrap();
    // After BEGIN and COPY, the server "forgets" the session: re-running UPDATE on a new login
    // would commit the offsets without the rows, so the whole transaction is redone instead.
    double.fail_next_statement("UPDATE", "390104");
    let batch = Batch {
        topic: "t".into(),
        partition: 0,
        records: (0..4).map(|o| (o, vec![event(o)])).collect(),
    };
    let outcome = sink.load_batch(&batch, None).await.unwrap();
    assert_eq!((outcome.rows_loaded, outcome.next_offset), (4, 4));
    assert_eq!(
        sink.stats()
            .session_renewals
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    assert_eq!(id_stats(&sink).await[..2], [4, 4]);
    assert_eq!(
        sink.committed_offsets("t").await.unwrap(),
        HashMap::from([(0, 4)])
    );
    // The server commits, and the session is gone before it answers: run again on a new one,
    // the load finds its file loaded, and counts its rows as the loaded rows they are. The
    // batch's row the table cannot take was dead-lettered by the first attempt, and only then.
    double.fail_next_statement("COMMIT", "after:390104");
    let mut records: Vec<(i64, Vec<Row>)> = (4..8).map(|o| (o, vec![event(o)])).collect();
    records.push((8, vec![Row::default()]));
    let batch = Batch {
        topic: "t".into(),
        partition: 0,
        records,
    };
    let (dlq, letters) = dead_letter_collector();
    let outcome = sink.load_batch(&batch, Some(&dlq)).await.unwrap();
    drop(dlq);
    assert_eq!(
        (
            outcome.rows_loaded,
            outcome.rows_loaded_elsewhere,
            outcome.next_offset,
            outcome.already_loaded,
            outcome.rows_dead_lettered,
        ),
        (4, 0, 9, true, 1)
    );
    assert_eq!(letters.await.unwrap().len(), 1, "dead-lettered once");
    assert_eq!(
        sink.stats()
            .rows_dead_lettered
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    assert_eq!(id_stats(&sink).await[..2], [8, 8]);
    sink.close().await;
}

#[tokio::test]
async fn an_expired_session_is_renewed_with_the_master_token_keeping_the_transaction() {
    let (double, opts) = through_double(Some(":isolated:")).await;
    double.enable_master_tokens();
    let sink = SnowflakeSink::connect(&sink_config("events"), "p", opts)
        .await
        .unwrap();
    // Code 390112 in the middle of the COPY + offsets transaction: renewing the token keeps the
    // session (and its open transaction), so the statement is simply resubmitted.
    double.fail_next_statement("UPDATE", "390112");
    let batch = Batch {
        topic: "t".into(),
        partition: 0,
        records: (0..4).map(|o| (o, vec![event(o)])).collect(),
    };
    let outcome = sink.load_batch(&batch, None).await.unwrap();
    assert_eq!((outcome.rows_loaded, outcome.next_offset), (4, 4));
    let seen = double.observed();
    assert_eq!(seen.token_renewals, 1);
    assert!(seen.rejections.is_empty(), "{:#?}", seen.rejections);
    // With :isolated:, a new login would have meant a new, empty database: the rows are there, so
    // the session survived.
    assert_eq!(sink.count_rows().await.unwrap(), 4);
    assert_eq!(
        sink.committed_offsets("t").await.unwrap(),
        HashMap::from([(0, 4)])
    );
    assert_eq!(
        sink.stats()
            .session_renewals
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}

#[tokio::test]
async fn a_query_answered_503_is_resubmitted_with_the_same_request_id() {
    let (double, mut opts) = through_double(Some(":isolated:")).await;
    opts.retry.base_delay_ms = 10;
    let sink = SnowflakeSink::connect(&sink_config("events"), "p", opts)
        .await
        .unwrap();
    double.fail_next_statement("SELECT 7", "http503");
    let r = sink.query("SELECT 7 AS seven").await.unwrap();
    assert_eq!(r.rows, vec![vec![json!(7)]]);
    assert_eq!(
        sink.stats()
            .retries
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    let seen = double.observed();
    let tail = &seen.query_requests[seen.query_requests.len() - 2..];
    let request_id = |pq: &str| {
        pq.split(['?', '&'])
            .find(|p| p.starts_with("requestId="))
            .map(str::to_owned)
    };
    assert_eq!(request_id(&tail[0]), request_id(&tail[1]), "{tail:?}");
    assert!(
        !tail[0].contains("retryCount") && tail[1].contains("retryCount=1"),
        "{tail:?}"
    );
}

/// Reads of the offsets at once (an assignment and the drain's poll) on the sink's reading
/// session: the emulator refuses a statement on a session already running one ("connection is
/// busy", where Snowflake runs both), which ended a member's run.
#[tokio::test]
async fn reads_of_offsets_at_once_all_answer() {
    let _shared = shared_db_lock().lock().await;
    let mut cfg = sink_config("busy_events");
    cfg.offsets_table = "BUSY_OFFSETS".into();
    let sink = Arc::new(connect(&cfg, "p", None).await);
    for _ in 0..4 {
        let reads = (0..32).map(|_| {
            let sink = sink.clone();
            tokio::spawn(async move { sink.committed_offsets("t").await })
        });
        for read in futures::future::join_all(reads).await {
            assert_eq!(read.unwrap().unwrap(), HashMap::new());
        }
    }
}

/// fakesnow fails a statement that another session's transaction conflicts with (DuckDB aborts
/// it; Snowflake would wait for the lock). A read of the offsets, outside any transaction, is run
/// again: a member's read at assignment, failed so while the other member loaded, ended its run.
#[tokio::test]
async fn a_read_of_offsets_failed_on_an_emulator_conflict_is_run_again() {
    let (double, opts) = through_double(Some(":isolated:")).await;
    let sink = Arc::new(
        SnowflakeSink::connect(&sink_config("events"), "p", opts)
            .await
            .unwrap(),
    );
    let (summary, _) = run_writer(
        sink.clone(),
        (0..3).map(|o| rec("t", 0, o, vec![event(o)])).collect(),
        None,
    )
    .await;
    assert_eq!(summary.rows_loaded, 3);
    let select = r#"SELECT "PARTITION", "NEXT_OFFSET""#;
    double.fail_next_statement(select, "conflict");
    let before = double.observed().query_requests.len();
    let offsets = sink.committed_offsets("t").await.unwrap();
    assert_eq!(offsets, HashMap::from([(0, 3)]));
    // The failed read and the one run again.
    assert_eq!(double.observed().query_requests.len() - before, 2);
}

#[tokio::test]
async fn s3_uploads_are_retried_on_503() {
    let (double, mut opts) = through_double(Some(":isolated:")).await;
    opts.retry.base_delay_ms = 10;
    let sink = Arc::new(
        SnowflakeSink::connect(&sink_config("events"), "p", opts)
            .await
            .unwrap(),
    );
    double.fail_next_puts(2);
    let (summary, _) = run_writer(
        sink.clone(),
        (0..3).map(|o| rec("t", 0, o, vec![event(o)])).collect(),
        None,
    )
    .await;
    assert_eq!(summary.rows_loaded, 3);
    let seen = double.observed();
    assert_eq!((seen.failed_on_purpose, seen.puts), (2, 1));
    assert!(seen.rejections.is_empty(), "{:#?}", seen.rejections);
    assert_eq!(
        sink.stats()
            .retries
            .load(std::sync::atomic::Ordering::Relaxed),
        2
    );
    assert_eq!(sink.count_rows().await.unwrap(), 3);
}

#[tokio::test]
async fn batches_flush_on_latency_and_on_bytes_without_being_asked() {
    let mut cfg = sink_config("events");
    cfg.batch.max_latency_ms = 200;
    let sink = Arc::new(connect(&cfg, "p", Some(":isolated:")).await);
    let (handle, mut durable, task) = sink.clone().spawn(None, 8);
    for o in 0..3 {
        handle.record(rec("t", 0, o, vec![event(o)])).await.unwrap();
    }
    // No flush, no close: only the latency bound can make this arrive.
    let d = tokio::time::timeout(std::time::Duration::from_secs(60), durable.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(d.next_offset, 3);
    assert_eq!(sink.count_rows().await.unwrap(), 3);
    handle.close();
    task.await.unwrap().unwrap();

    let mut cfg = sink_config("wide");
    cfg.batch.max_bytes = 1024;
    cfg.batch.max_latency_ms = 3_600_000;
    let sink = Arc::new(connect(&cfg, "p", Some(":isolated:")).await);
    let (handle, mut durable, task) = sink.clone().spawn(None, 8);
    let wide = |o: i64| {
        row(&[
            ("id", Value::Int(o)),
            ("blob", Value::String("x".repeat(300))),
        ])
    };
    for o in 0..8 {
        handle.record(rec("t", 0, o, vec![wide(o)])).await.unwrap();
    }
    // About 316 bytes a row: the fourth row crosses 1024 bytes, and so does the eighth.
    let d1 = durable.recv().await.unwrap();
    let d2 = durable.recv().await.unwrap();
    assert_eq!((d1.next_offset, d2.next_offset), (4, 8));
    handle.close();
    let summary = task.await.unwrap().unwrap();
    assert_eq!((summary.files, summary.rows_loaded), (2, 8));
}

#[tokio::test]
async fn revoked_partitions_drop_unflushed_rows_and_order_is_enforced() {
    let sink = Arc::new(connect(&sink_config("events"), "p", Some(":isolated:")).await);
    let (handle, durable, task) = sink.clone().spawn(None, 8);
    for o in 0..3 {
        handle.record(rec("t", 0, o, vec![event(o)])).await.unwrap();
    }
    handle.revoke(vec![("t".into(), 0)]).await.unwrap();
    // Reassigned later: the consumer replays from the committed offset (none yet).
    for o in 0..5 {
        handle.record(rec("t", 0, o, vec![event(o)])).await.unwrap();
    }
    handle.close();
    let summary = task.await.unwrap().unwrap();
    drop(durable);
    assert_eq!(summary.rows_loaded, 5);
    assert_eq!(id_stats(&sink).await[..2], [5, 5]);

    let (handle, _durable, task) = sink.clone().spawn(None, 8);
    handle
        .record(rec("t", 0, 10, vec![event(10)]))
        .await
        .unwrap();
    handle
        .record(rec("t", 0, 10, vec![event(10)]))
        .await
        .unwrap(); // a redelivery: ignored
    handle
        .record(rec("t", 0, 12, vec![event(12)]))
        .await
        .unwrap();
    let _ = handle.record(rec("t", 0, 11, vec![event(11)])).await;
    handle.close();
    match task.await.unwrap() {
        Err(sluice::sink::snowflake::SinkError::OutOfOrder {
            offset: 11,
            last_offset: 12,
            ..
        }) => {}
        other => panic!("expected an order error, got {other:?}"),
    }
    assert_eq!(
        sink.count_rows().await.unwrap(),
        5,
        "nothing of the broken batch was loaded"
    );
}

#[tokio::test]
async fn a_lost_session_is_replaced_by_logging_in_again() {
    let sink = connect(&sink_config("events"), "p", Some(":isolated:")).await;
    sink.close().await; // the server forgets the token; the next request gets 390104
    let r = sink.query("SELECT 41 + 1 AS answer").await.unwrap();
    assert_eq!(r.rows, vec![vec![json!(42)]]);
    assert_eq!(
        sink.stats()
            .session_renewals
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}

#[tokio::test]
async fn key_pair_login_is_accepted() {
    // fakesnow checks no credentials; this pins that the JWT login shape goes through.
    let mut cfg = sink_config("events");
    cfg.private_key =
        Some(include_str!("../host/src/sink/snowflake/testdata/test_key.pem").to_owned());
    cfg.account = "myorg-acct".into();
    cfg.user = "loader".into();
    let sink = connect(&cfg, "p", Some(":isolated:")).await;
    assert_eq!(sink.count_rows().await.unwrap(), 0);
}

#[tokio::test]
async fn hundred_thousand_rows_exactly_once_read_back_by_the_python_connector() {
    // The Python connector must see the same data: the server's shared database.
    let _shared = shared_db_lock().lock().await;
    let mut cfg = sink_config("bulk");
    cfg.offsets_table = "BULK_OFFSETS".into();
    cfg.batch.max_rows = 10_000;
    let sink = Arc::new(connect(&cfg, "bulk", None).await);
    let (handle, mut durable, task) = sink.clone().spawn(None, 1024);
    let producer = tokio::spawn(async move {
        for i in 0..100_000i64 {
            let partition = (i % 4) as i32;
            let offset = i / 4;
            let r = row(&[
                ("id", Value::Int(i)),
                ("customer", Value::String(format!("c{}", i % 977))),
                ("amount", Value::Float((i % 1000) as f64 / 4.0)),
                (
                    "at",
                    Value::Timestamp(1_700_000_000_000_000 + i * 1_000_000),
                ),
            ]);
            handle
                .record(rec("sales", partition, offset, vec![r]))
                .await
                .unwrap();
        }
    });
    producer.await.unwrap();
    let summary = task.await.unwrap().unwrap();
    assert_eq!(summary.rows_loaded, 100_000);
    let mut last = HashMap::new();
    while let Some(d) = durable.recv().await {
        last.insert(d.partition, d.next_offset);
    }
    assert_eq!(
        last,
        HashMap::from([(0, 25_000), (1, 25_000), (2, 25_000), (3, 25_000)])
    );
    sink.close().await;
    drop(sink);

    let rows = tokio::task::spawn_blocking(move || {
        python_query(
            "SELECT COUNT(*), COUNT(DISTINCT id), SUM(id), MIN(id), MAX(id), SUM(amount) FROM bulk",
        )
    })
    .await
    .unwrap();
    let expected_amount: f64 = (0..100_000i64).map(|i| (i % 1000) as f64 / 4.0).sum();
    assert_eq!(rows.len(), 1);
    let r = &rows[0];
    assert_eq!(&r[..2], &[json!(100_000), json!(100_000)]);
    // fakesnow types SUM over NUMBER(38,0) as a float.
    assert_eq!(r[2].as_f64(), Some(4_999_950_000.0));
    assert_eq!(&r[3..5], &[json!(0), json!(99_999)]);
    assert!(
        (r[5].as_f64().unwrap() - expected_amount).abs() < 1e-6,
        "{r:?}"
    );
    let offsets = tokio::task::spawn_blocking(move || {
        python_query(
            "SELECT partition, next_offset FROM bulk_offsets WHERE pipeline = 'bulk' ORDER BY 1",
        )
    })
    .await
    .unwrap();
    assert_eq!(
        offsets,
        vec![
            vec![json!(0), json!(25_000)],
            vec![json!(1), json!(25_000)],
            vec![json!(2), json!(25_000)],
            vec![json!(3), json!(25_000)]
        ]
    );
}

/// The same scenarios against a real account, when `SNOWFLAKE_ACCOUNT` is set: `SNOWFLAKE_URL`
/// (default `https://<account>.snowflakecomputing.com`), `SNOWFLAKE_USER`, `SNOWFLAKE_PASSWORD` or
/// `SNOWFLAKE_PRIVATE_KEY_PATH` (+ `SNOWFLAKE_PRIVATE_KEY_PASSPHRASE`), `SNOWFLAKE_ROLE`,
/// `SNOWFLAKE_WAREHOUSE`, `SNOWFLAKE_DATABASE`, `SNOWFLAKE_SCHEMA`. Uses a fresh table per run.
mod live {
    use super::*;

    fn live_config() -> Option<SnowflakeSinkConfig> {
        let account = std::env::var("SNOWFLAKE_ACCOUNT").ok()?;
        let env = |k: &str| std::env::var(k).ok();
        let table = format!("SLUICE_LIVE_{}", uuid::Uuid::new_v4().simple());
        let mut cfg = sink_config(&table);
        cfg.account_url = env("SNOWFLAKE_URL")
            .unwrap_or_else(|| format!("https://{account}.snowflakecomputing.com"));
        cfg.account = account;
        cfg.user = env("SNOWFLAKE_USER").expect("SNOWFLAKE_USER");
        cfg.password = env("SNOWFLAKE_PASSWORD");
        cfg.private_key_path = env("SNOWFLAKE_PRIVATE_KEY_PATH");
        cfg.private_key_passphrase = env("SNOWFLAKE_PRIVATE_KEY_PASSPHRASE");
        cfg.role = env("SNOWFLAKE_ROLE");
        cfg.warehouse = env("SNOWFLAKE_WAREHOUSE");
        cfg.database = env("SNOWFLAKE_DATABASE").expect("SNOWFLAKE_DATABASE");
        cfg.schema = env("SNOWFLAKE_SCHEMA").expect("SNOWFLAKE_SCHEMA");
        cfg.batch.max_rows = 10;
        Some(cfg)
    }

    #[tokio::test]
    async fn live_round_trip_replay_and_restart() {
        let Some(cfg) = live_config() else {
            eprintln!("skipped: SNOWFLAKE_ACCOUNT is not set");
            return;
        };
        let pipeline = format!("live-{}", uuid::Uuid::new_v4().simple());
        let sink = Arc::new(
            SnowflakeSink::connect(&cfg, &pipeline, ConnectOptions::default())
                .await
                .expect("connect"),
        );
        let log: Vec<SinkRecord> = (0..25).map(|o| rec("t", 0, o, vec![event(o)])).collect();
        let (summary, durable) = run_writer(sink.clone(), log[..15].to_vec(), None).await;
        assert_eq!(summary.rows_loaded, 15);
        assert_eq!(last_durable(&durable), HashMap::from([(0, 15)]));
        let batch = Batch {
            topic: "t".into(),
            partition: 0,
            records: (0..10).map(|o| (o, vec![event(o)])).collect(),
        };
        assert!(sink.load_batch(&batch, None).await.unwrap().already_loaded);
        let sink2 = Arc::new(
            SnowflakeSink::connect(&cfg, &pipeline, ConnectOptions::default())
                .await
                .expect("reconnect"),
        );
        let (summary, _) = run_writer(sink2.clone(), log.clone(), None).await;
        assert_eq!(summary.rows_loaded, 10);
        assert_eq!(id_stats(&sink2).await[..2], [25, 25]);
        let _ = sink2
            .query(&format!("DROP TABLE IF EXISTS {}", sink2.table()))
            .await;
        let _ = sink2
            .query(&format!(
                "DELETE FROM {} WHERE \"PIPELINE\" = '{pipeline}'",
                sink2.offsets_table()
            ))
            .await;
    }
}

/// A field named longer than Snowflake takes (255 characters) cannot be a column: its row is
/// dead-lettered and the rest make and fill the table, a name of 255 characters among them.
/// (Snowflake would refuse the `CREATE TABLE` or `ALTER TABLE` for it, which would stop every
/// load; the emulator takes such a name, so only the sink's own check is shown here.)
#[tokio::test]
async fn a_field_named_longer_than_snowflake_takes_is_dead_lettered() {
    let cfg = sink_config("long_names");
    let sink = Arc::new(connect(&cfg, "p", Some(":isolated:")).await);
    let (ok, long) = ("n".repeat(255), "n".repeat(256));
    let records = [
        rec(
            "t",
            0,
            0,
            vec![row(&[("id", Value::Int(1)), (&ok, Value::Int(7))])],
        ),
        rec(
            "t",
            0,
            1,
            vec![row(&[("id", Value::Int(2)), (&long, Value::Int(8))])],
        ),
        rec("t", 0, 2, vec![row(&[("id", Value::Int(3))])]),
    ];
    let (summary, last, letters) = run_with_dead_letters(&sink, &records).await;
    assert_eq!((summary.rows_loaded, summary.rows_dead_lettered), (2, 1));
    assert_eq!(last, 3);
    assert_eq!(letters.len(), 1);
    assert!(
        letters[0].reason.contains("has a name of 256 characters"),
        "{}",
        letters[0].reason
    );
    let got = sink
        .query(&format!(
            "SELECT \"ID\", \"{}\" FROM {} ORDER BY \"ID\"",
            ok.to_uppercase(),
            sink.table()
        ))
        .await
        .unwrap();
    let got: Vec<[Option<i64>; 2]> = (got.rows.iter())
        .map(|r| [r[0].as_i64(), r[1].as_i64()])
        .collect();
    assert_eq!(got, [[Some(1), Some(7)], [Some(3), None]]);
}

/// Two fields of one row that map to one column (`Name` and `NAME` both become `NAME`) must not
/// load with one value silently dropped: the row is dead-lettered with both names and the column,
/// while rows holding only one of them load into that column. The same holds for two fields that
/// both match one existing column of the table only by case.
#[tokio::test]
async fn fields_that_map_to_one_column_are_dead_lettered_not_merged() {
    let cfg = sink_config("case_collide");
    let sink = Arc::new(connect(&cfg, "p", Some(":isolated:")).await);
    let both = |id: i64| {
        row(&[
            ("id", Value::Int(id)),
            ("Name", Value::String(format!("a{id}"))),
            ("NAME", Value::String(format!("b{id}"))),
        ])
    };
    let records = [
        rec(
            "t",
            0,
            0,
            vec![row(&[
                ("id", Value::Int(1)),
                ("Name", Value::String("a1".into())),
            ])],
        ),
        rec("t", 0, 1, vec![both(2)]),
        rec(
            "t",
            0,
            2,
            vec![row(&[
                ("id", Value::Int(3)),
                ("NAME", Value::String("b3".into())),
            ])],
        ),
        // Even with one of them null: which one the column would hold is a guess.
        rec(
            "t",
            0,
            3,
            vec![row(&[
                ("id", Value::Int(4)),
                ("name", Value::Null),
                ("NAME", Value::String("b4".into())),
            ])],
        ),
        // A field without a name (a JSON message's key "") cannot be a column either; it must
        // not stop the table being made from the other rows.
        rec(
            "t",
            0,
            4,
            vec![row(&[("id", Value::Int(5)), ("", Value::Int(0))])],
        ),
    ];
    let (summary, last, letters) = run_with_dead_letters(&sink, &records).await;
    assert_eq!(summary.rows_loaded, 2);
    assert_eq!(summary.rows_dead_lettered, 3);
    assert_eq!(last, 5);
    assert_eq!(letters.len(), 3);
    assert!(
        letters[2].reason.contains("empty name"),
        "{}",
        letters[2].reason
    );
    assert_eq!(
        (letters[0].stage.as_str(), letters[0].kind.as_str()),
        ("sink", "schema")
    );
    assert!(
        letters[0]
            .reason
            .starts_with("fields \"Name\" and \"NAME\" both map to column \"NAME\""),
        "{}",
        letters[0].reason
    );
    assert!(
        letters[1]
            .reason
            .starts_with("fields \"name\" and \"NAME\" both map to column \"NAME\""),
        "{}",
        letters[1].reason
    );
    assert_eq!(
        serde_json::from_slice::<Json>(&letters[0].payload).unwrap(),
        json!({"id": 2, "Name": "a2", "NAME": "b2"})
    );
    assert_eq!(letters[0].origin.as_ref().map(|m| m.offset), Some(1));
    let r = sink
        .query(&format!("SELECT * FROM {} ORDER BY 1", sink.table()))
        .await
        .unwrap();
    let names: Vec<&str> = r.columns.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["ID", "NAME"]);
    assert_eq!(
        r.rows,
        vec![vec![json!(1), json!("a1")], vec![json!(3), json!("b3")]]
    );

    // An existing column that two fields match only by case.
    let cfg = sink_config("case_existing");
    let sink = Arc::new(connect(&cfg, "p", Some(":isolated:")).await);
    sink.query(&format!(
        "CREATE TABLE {} (\"ID\" NUMBER(38,0), \"Mixed Case\" VARCHAR)",
        sink.table()
    ))
    .await
    .unwrap();
    let records = [
        rec(
            "t",
            0,
            0,
            vec![row(&[
                ("id", Value::Int(1)),
                ("MIXED CASE", Value::String("x1".into())),
            ])],
        ),
        rec(
            "t",
            0,
            1,
            vec![row(&[
                ("id", Value::Int(2)),
                ("mixed case", Value::String("y2".into())),
                ("MIXED CASE", Value::String("x2".into())),
            ])],
        ),
    ];
    let (summary, _, letters) = run_with_dead_letters(&sink, &records).await;
    assert_eq!((summary.rows_loaded, summary.rows_dead_lettered), (1, 1));
    assert!(
        letters[0].reason.starts_with(
            "fields \"mixed case\" and \"MIXED CASE\" both map to column \"Mixed Case\""
        ),
        "{}",
        letters[0].reason
    );
    let r = sink
        .query(&format!("SELECT * FROM {} ORDER BY 1", sink.table()))
        .await
        .unwrap();
    assert_eq!(r.rows, vec![vec![json!(1), json!("x1")]]);
}

/// A COPY that fails after earlier batches loaded ends the writer; every later call on the
/// handle (a record, a flush) reports the COPY's own error, not only that the writer is gone.
#[tokio::test]
async fn a_copy_failure_on_a_later_batch_is_reported_with_its_cause() {
    let mut cfg = sink_config("copy_fails");
    cfg.batch.max_rows = 1;
    let sink = Arc::new(connect(&cfg, "p", Some(":isolated:")).await);
    // A DATE column takes strings (the sink cannot tell a date from other text), so COPY is what
    // refuses a string that is not a date.
    sink.query(&format!(
        "CREATE TABLE {} (\"ID\" NUMBER(38,0), \"D\" DATE)",
        sink.table()
    ))
    .await
    .unwrap();
    let dated = |id: i64, d: &str| row(&[("id", Value::Int(id)), ("d", Value::String(d.into()))]);
    let (handle, _durable, task) = sink.clone().spawn(None, 1);
    handle
        .record(rec("t", 0, 0, vec![dated(1, "2024-01-02")]))
        .await
        .unwrap();
    handle.flush().await.unwrap();
    handle
        .record(rec("t", 0, 1, vec![dated(2, "not a date")]))
        .await
        .unwrap();
    let mut failed = None;
    for o in 2..10_000 {
        if let Err(e) = handle
            .record(rec("t", 0, o, vec![dated(o, "2024-01-03")]))
            .await
        {
            failed = Some(e);
            break;
        }
    }
    let failed = failed.expect("the writer stops on the failed COPY");
    let text = failed.to_string();
    assert!(
        matches!(failed, sluice::sink::snowflake::SinkError::WriterFailed(_)),
        "{text}"
    );
    assert!(text.contains("snowflake error"), "{text}");
    assert!(text.to_lowercase().contains("date"), "{text}");
    let flushed = handle.flush().await.unwrap_err().to_string();
    assert_eq!(flushed, text);
    let ended = task.await.unwrap().unwrap_err().to_string();
    assert!(text.contains(&ended), "{ended} vs {text}");
    assert_eq!(sink.count_rows().await.unwrap(), 1);
}

/// Rows a table cannot take are dead-lettered with the Kafka message they came from (key,
/// timestamp, headers) and the CSV file and line the source put in its headers.
#[tokio::test]
async fn sink_dead_letters_carry_the_message_origin_file_and_line() {
    let cfg = sink_config("origins");
    let sink = Arc::new(connect(&cfg, "p", Some(":isolated:")).await);
    let meta = |offset: i64, line: u64| sluice::row::RecordMeta {
        topic: "t".into(),
        partition: 2,
        offset,
        key: Some(format!("k{offset}").into_bytes()),
        timestamp_ms: Some(1_700_000_000_000 + offset),
        headers: vec![
            ("sluice.types".into(), b"{}".to_vec()),
            ("sluice.file".into(), b"/data/in.csv".to_vec()),
            ("sluice.line".into(), line.to_string().into_bytes()),
        ],
    };
    let (dlq, letters) = dead_letter_collector();
    let (handle, _durable, task) = sink.clone().spawn(Some(dlq), 8);
    handle
        .record_from(meta(0, 2), vec![event(1)])
        .await
        .unwrap();
    handle.flush().await.unwrap();
    handle
        .record_from(
            meta(1, 3),
            vec![row(&[("id", Value::Int(2)), ("extra", Value::Bool(true))])],
        )
        .await
        .unwrap();
    handle
        .record_from(meta(2, 5), vec![event(3)])
        .await
        .unwrap();
    // Without the message's metadata the letter still names topic, partition and offset.
    handle
        .record(rec(
            "t",
            2,
            3,
            vec![row(&[("id", Value::String("four".into()))])],
        ))
        .await
        .unwrap();
    handle.close();
    let summary = task.await.unwrap().unwrap();
    assert_eq!((summary.rows_loaded, summary.rows_dead_lettered), (2, 2));
    let letters = letters.await.unwrap();
    assert_eq!(letters.len(), 2);
    assert_eq!(letters[0].kind, "schema");
    assert_eq!(letters[0].source_file.as_deref(), Some("/data/in.csv"));
    assert_eq!(letters[0].line, Some(3));
    assert_eq!(letters[0].origin, Some(meta(1, 3)));
    assert_eq!(
        (letters[1].source_file.as_deref(), letters[1].line),
        (None, None)
    );
    assert_eq!(
        letters[1].origin.as_ref().map(|m| (
            m.topic.as_str(),
            m.partition,
            m.offset,
            m.key.is_none()
        )),
        Some(("t", 2, 3, true))
    );
    let r = sink
        .query(&format!("SELECT \"ID\" FROM {} ORDER BY 1", sink.table()))
        .await
        .unwrap();
    assert_eq!(r.rows, vec![vec![json!(1)], vec![json!(3)]]);
}

/// More than 10 columns load on the emulator, read back value for value (fakesnow names the
/// columns of a wide CSV `column00...`, which a COPY with a column list does not find).
#[tokio::test]
async fn a_row_of_twelve_columns_loads_on_the_emulator() {
    let mut cfg = sink_config("wide");
    cfg.batch.max_rows = 2;
    let sink = Arc::new(connect(&cfg, "p", Some(":isolated:")).await);
    let wide = |id: i64| {
        let mut r = Row::default();
        r.push("id", Value::Int(id));
        for c in 1..12 {
            r.push(format!("c{c}"), Value::String(format!("{id}-{c}")));
        }
        r
    };
    let records: Vec<SinkRecord> = (0..5).map(|o| rec("t", 0, o, vec![wide(o)])).collect();
    let (summary, durable) = run_writer(sink.clone(), records, None).await;
    assert_eq!(summary.rows_loaded, 5);
    assert_eq!(last_durable(&durable), HashMap::from([(0, 5)]));
    let r = sink
        .query(&format!("SELECT * FROM {} ORDER BY 1", sink.table()))
        .await
        .unwrap();
    assert_eq!(r.columns.len(), 12);
    let expected: Vec<Vec<Json>> = (0..5)
        .map(|id| {
            std::iter::once(json!(id))
                .chain((1..12).map(|c| json!(format!("{id}-{c}"))))
                .collect()
        })
        .collect();
    assert_eq!(r.rows, expected);

    // Then rows with 11 of the 12 columns: still more than the emulator can list, so the file
    // holds all 12, the missing one NULL.
    let narrower = |id: i64| {
        let mut r = wide(id);
        r.fields.pop();
        r
    };
    let records: Vec<SinkRecord> = (5..8).map(|o| rec("t", 0, o, vec![narrower(o)])).collect();
    let (summary, _) = run_writer(sink.clone(), records, None).await;
    assert_eq!(summary.rows_loaded, 3);
    let r = sink
        .query(&format!(
            "SELECT COUNT(*), COUNT(C11), COUNT(C10) FROM {} WHERE ID >= 5",
            sink.table()
        ))
        .await
        .unwrap();
    assert_eq!(r.rows, vec![vec![json!(3), json!(0), json!(3)]]);
}
