//! A real fakesnow emulator process for tests, shared by the whole test binary, plus helpers:
//! sink configs, a dead-letter collector, and reads through the official Python connector.
//!
//! The server is started once (on a free loopback port) from the project venv
//! (`$SLUICE_VENV` or `<workspace>/.venv`, created by `scripts/install-fakesnow.sh`). Each test
//! logs in with `FAKESNOW_DB_PATH: ":isolated:"` (a fresh database per session), or, when a
//! second session or another client must see the same data, uses the server's shared in-memory
//! database (`None`) with table and offsets-table names of its own. The server's watchdog stops it
//! when the test process exits.

#[path = "s3_double.rs"]
pub mod s3_double;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde_json::Value as Json;
use sluice::dead_letter::{DeadLetter, DeadLetterTx};
use sluice::row::{Row, Value};
use sluice::sink::snowflake::config::SnowflakeSinkConfig;
use sluice::sink::snowflake::{ConnectOptions, Emulator, SnowflakeSink};

/// The workspace root (parent of the `tests` crate).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests crate has a parent")
        .to_owned()
}

/// The project venv; panics with the setup hint when it is missing.
pub fn venv() -> PathBuf {
    match sluice::sink::snowflake::emulator::find_venv(&workspace_root()) {
        Ok(v) => v,
        Err(e) => panic!("{e}"),
    }
}

/// The shared emulator, started on first use.
pub fn emulator() -> &'static Emulator {
    static EMU: OnceLock<Emulator> = OnceLock::new();
    EMU.get_or_init(|| match Emulator::start(&venv()) {
        Ok(e) => e,
        Err(e) => panic!("cannot start fakesnow: {e}"),
    })
}

/// Held by tests that use the server's shared database for their whole run: concurrent DDL from
/// several sessions on one DuckDB catalog conflicts in fakesnow.
pub fn shared_db_lock() -> &'static tokio::sync::Mutex<()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    &LOCK
}

/// A sink config for `table` in `SINKDB.RAW` with no account (the emulator), with a stage of its
/// own: fakesnow keeps one stage store for all its databases, and a staged file's name depends
/// only on table, topic, partition and offsets, so two concurrent tests loading the same table
/// from the same offsets would otherwise overwrite each other's file between PUT and COPY.
pub fn sink_config(table: &str) -> SnowflakeSinkConfig {
    static NEXT_STAGE: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let stage = NEXT_STAGE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    serde_json::from_value(serde_json::json!({
        "database": "SINKDB",
        "schema": "RAW",
        "table": table,
        "stage": format!("SLUICE_TEST_STAGE_{stage}"),
    }))
    .expect("valid sink config")
}

/// Connects a sink to the shared emulator; `db_path` is `Some(":isolated:")` or `None` (the
/// server's shared database).
pub async fn connect(
    cfg: &SnowflakeSinkConfig,
    pipeline: &str,
    db_path: Option<&str>,
) -> SnowflakeSink {
    let url = tokio::task::spawn_blocking(|| emulator().url())
        .await
        .expect("emulator thread");
    let opts = match db_path {
        Some(p) => ConnectOptions::emulator(url, p),
        None => ConnectOptions::emulator_shared(url),
    };
    SnowflakeSink::connect(cfg, pipeline, opts)
        .await
        .unwrap_or_else(|e| panic!("connect: {e:#?}"))
}

/// A row from `(name, value)` pairs.
pub fn row(fields: &[(&str, Value)]) -> Row {
    let mut r = Row::default();
    for (k, v) in fields {
        r.push(*k, v.clone());
    }
    r
}

/// A dead-letter channel whose letters are acknowledged as stored and collected.
pub fn dead_letter_collector() -> (DeadLetterTx, tokio::task::JoinHandle<Vec<DeadLetter>>) {
    let (tx, mut rx) = sluice::dead_letter::channel(16);
    let task = tokio::spawn(async move {
        let mut out = Vec::new();
        while let Some((letter, ack)) = rx.recv().await {
            out.push(letter);
            ack(Ok(()));
        }
        out
    });
    (tx, task)
}

const PY_READ: &str = r#"
import json, sys
import snowflake.connector
port, sql = sys.argv[1], sys.argv[2]
conn = snowflake.connector.connect(
    user="reader", password="x", account="fakesnow", host="127.0.0.1", port=int(port),
    protocol="http", database="SINKDB", schema="RAW",
)
cur = conn.cursor()
cur.execute(sql)
print(json.dumps([list(r) for r in cur.fetchall()], default=str))
"#;

/// Runs `sql` through the official Python connector (an independent client) against the
/// emulator's shared database, returning the rows as JSON.
pub fn python_query(sql: &str) -> Vec<Vec<Json>> {
    let out = std::process::Command::new(venv().join("bin/python"))
        .arg("-c")
        .arg(PY_READ)
        .arg(emulator().port().to_string())
        .arg(sql)
        .output()
        .expect("run the venv python");
    assert!(
        out.status.success(),
        "python connector failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let last = text.lines().last().unwrap_or("[]");
    serde_json::from_str(last).unwrap_or_else(|e| panic!("python output {last:?}: {e}"))
}
