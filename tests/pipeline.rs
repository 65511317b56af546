//! Integration tests: the pipeline file and the `sluice` command line (`validate`, `schema`).

use std::path::Path;

use sluice_tests::cli::{sluice, workspace_root};

/// A valid pipeline to break in one place at a time. `@DATA@` and `@FILTER@` are replaced with
/// the data file and the built filter component.
const BASE: &str = r#"{
  "version": 1,
  "name": "broken",
  "source": { "type": "csv", "path": "@DATA@", "pacing": { "mode": "none" } },
  "kafka": { "topic": "t1", "partitions": 3 },
  "transforms": [
    { "uses": "@FILTER@", "with": { "field": "value", "op": "gt", "value": "50" } },
    { "name": "second", "uses": "@FILTER@", "with": { "field": "value", "op": "lt", "value": "90" } }
  ],
  "sink": { "type": "snowflake", "database": "D", "schema": "S", "table": "T" }
}"#;

fn write_pipeline(dir: &Path, text: &str) -> std::path::PathBuf {
    let data = workspace_root().join("data/data.csv");
    let text = text
        .replace("@DATA@", &data.to_string_lossy())
        .replace("@FILTER@", &sluice_tests::guests::FILTER.replace('\\', "/"));
    let path = dir.join("pipeline.json");
    std::fs::write(&path, text).unwrap();
    path
}

/// Runs `sluice validate` on `text` and returns (exit code, stderr).
fn validate(text: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = write_pipeline(dir.path(), text);
    let out = sluice(dir.path(), &["validate", &path.to_string_lossy()]);
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn base_pipeline_is_valid() {
    let (code, stderr) = validate(BASE);
    assert_eq!(code, Some(0), "{stderr}");
}

#[test]
fn ten_broken_pipelines_give_ten_precise_messages() {
    // (what is broken, the edit, the path and line/column expected, a fragment of the message)
    let cases: &[(&str, &str, &str, &str, &str)] = &[
        ("syntax", r#""partitions": 3 }"#, r#""partitions": 3 "#, "(root) (line 6, column 3)", "invalid JSON"),
        ("unknown top-level key", r#""version": 1,"#, r#""version": 1, "sourc": {},"#, "sourc (line 2", "unknown field `sourc`"),
        (
            "unknown transform key",
            r#"{ "name": "second","#,
            r#"{ "name": "second", "on_eror": "drop","#,
            "transforms[1].on_eror (line 8, column 25)",
            "unknown field `on_eror`",
        ),
        ("wrong type", r#""partitions": 3"#, r#""partitions": "three""#, "kafka.partitions", "invalid type: string \"three\", expected i32"),
        ("unknown pacing mode", r#""mode": "none""#, r#""mode": "warp""#, "source.pacing", "unknown variant `warp`"),
        ("missing table", r#", "table": "T""#, "", "sink (line 10", "missing field `table`"),
        (
            "unset secret",
            r#""table": "T""#,
            r#""table": "T", "account_url": "https://x.snowflakecomputing.com", "user": "u", "password": "${SLUICE_TEST_UNSET_SECRET}""#,
            "sink.password (line 10",
            "environment variable SLUICE_TEST_UNSET_SECRET is not set",
        ),
        ("missing data file", "@DATA@", "/nonexistent/data.csv", "source.path (line 4", "does not exist"),
        ("rate of zero", r#"{ "mode": "none" }"#, r#"{ "mode": "rate", "rows_per_sec": 0 }"#, "source.pacing.rows_per_sec", "positive"),
        (
            "param rejected by init",
            r#""op": "lt", "value": "90""#,
            r#""op": "lt", "value": "90", "threshold": "5""#,
            "transforms[1].with.threshold (line 8, column 94)",
            "threshold",
        ),
        ("bad operator", r#""op": "gt""#, r#""op": "between""#, "transforms[0].with.op (line 7", "unknown operator"),
        ("version", r#""version": 1"#, r#""version": 2"#, "version (line 2, column 3)", "unsupported version 2"),
        ("missing component", r#""uses": "@FILTER@", "with": { "field": "value", "op": "gt""#, r#""uses": "nope.wasm", "with": { "field": "value", "op": "gt""#, "transforms[0].uses (line 7", "does not exist"),
    ];
    let mut failures = Vec::new();
    for (what, from, to, at, fragment) in cases {
        assert!(BASE.contains(from), "case {what}: {from:?} not in BASE");
        let (code, stderr) = validate(&BASE.replacen(from, to, 1));
        if code != Some(2) || !stderr.contains(at) || !stderr.contains(fragment) {
            failures.push(format!("{what}: exit {code:?}, wanted {at:?} and {fragment:?} in:\n{stderr}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n---\n"));
}

#[test]
fn committed_schema_is_current() {
    let out = sluice(&workspace_root(), &["schema"]);
    assert!(out.status.success());
    let committed = std::fs::read_to_string(workspace_root().join("pipeline.schema.json")).unwrap();
    let generated: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let committed: serde_json::Value = serde_json::from_str(&committed).unwrap();
    assert!(generated == committed, "pipeline.schema.json is stale: run `sluice schema > pipeline.schema.json`");
}

#[test]
fn demo_pipeline_is_valid_offline() {
    let root = workspace_root();
    let out = sluice(&root, &["validate", "--no-components", "pipeline.json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}
