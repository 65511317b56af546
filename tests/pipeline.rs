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

/// A path in a pipeline file in the working directory is named as it is written there, not
/// `./../x`; the CSV is read from beside the file all the same.
#[test]
fn paths_in_a_pipeline_file_here_are_named_as_written() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("rows.csv"), "id,name\n1,a\n").unwrap();
    let pipeline = serde_json::json!({
        "version": 1,
        "name": "here",
        "source": { "type": "csv", "path": "rows.csv", "key_column": "nope" },
        "kafka": { "topic": "here" },
        "transforms": [{ "uses": "../nowhere/x.wasm" }],
        "sink": { "type": "snowflake", "database": "E2E", "schema": "RAW", "table": "ROWS" }
    });
    std::fs::write(dir.path().join("pipeline.json"), pipeline.to_string()).unwrap();
    let out = sluice(dir.path(), &["validate", "pipeline.json"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("component ../nowhere/x.wasm does not exist"),
        "{stderr}"
    );
    // The header was read: the key column is checked against it, by the file's name.
    assert!(stderr.contains("rows.csv"), "{stderr}");
    assert!(!stderr.contains("./.."), "{stderr}");
}

/// Runs `sluice validate` on `text` and returns (exit code, stderr).
fn validate(text: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = write_pipeline(dir.path(), text);
    let out = sluice(dir.path(), &["validate", &path.to_string_lossy()]);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn base_pipeline_is_valid() {
    let (code, stderr) = validate(BASE);
    assert_eq!(code, Some(0), "{stderr}");
    // As some Windows editors save it: a byte-order mark is no mistake.
    let (code, stderr) = validate(&format!("\u{feff}{BASE}"));
    assert_eq!(code, Some(0), "{stderr}");
}

#[test]
fn ten_broken_pipelines_give_ten_precise_messages() {
    // (what is broken, the edit, the path and line/column expected, a fragment of the message)
    let cases: &[(&str, &str, &str, &str, &str)] = &[
        (
            "syntax",
            r#""partitions": 3 }"#,
            r#""partitions" 3 }"#,
            "(root) (line 5, column ",
            "invalid JSON",
        ),
        (
            "unknown top-level key",
            r#""version": 1,"#,
            r#""version": 1, "sourc": {},"#,
            "sourc (line 2",
            "unknown field `sourc`",
        ),
        (
            "unknown transform key",
            r#"{ "name": "second","#,
            r#"{ "name": "second", "on_eror": "drop","#,
            "transforms[1].on_eror (line 8, column 25)",
            "unknown field `on_eror`",
        ),
        (
            "wrong type",
            r#""partitions": 3"#,
            r#""partitions": "three""#,
            "kafka.partitions",
            "invalid type: string \"three\", expected a whole number from -2147483648 to 2147483647",
        ),
        (
            "unknown pacing mode",
            r#""mode": "none""#,
            r#""mode": "warp""#,
            "source.pacing.mode (line 4",
            "unknown variant `warp`",
        ),
        (
            "missing table",
            r#", "table": "T""#,
            "",
            "sink (line 10",
            "missing field `table`",
        ),
        (
            "unset secret",
            r#""table": "T""#,
            r#""table": "T", "account_url": "https://x.snowflakecomputing.com", "user": "u", "password": "${SLUICE_TEST_UNSET_SECRET}""#,
            "sink.password (line 10",
            "environment variable SLUICE_TEST_UNSET_SECRET is not set",
        ),
        (
            "missing data file",
            "@DATA@",
            "/nonexistent/data.csv",
            "source.path (line 4",
            "does not exist",
        ),
        (
            "data path naming a directory",
            "@DATA@",
            ".",
            "source.path (line 4",
            "is a directory; path names a CSV file",
        ),
        (
            "empty data path",
            "@DATA@",
            "",
            "source.path (line 4",
            "path is empty",
        ),
        (
            "rate of zero",
            r#"{ "mode": "none" }"#,
            r#"{ "mode": "rate", "rows_per_sec": 0 }"#,
            "source.pacing.rows_per_sec",
            "positive",
        ),
        (
            "param rejected by init",
            r#""op": "lt", "value": "90""#,
            r#""op": "lt", "value": "90", "threshold": "5""#,
            "transforms[1].with.threshold (line 8, column ",
            "threshold",
        ),
        (
            "bad operator",
            r#""op": "gt""#,
            r#""op": "between""#,
            "transforms[0].with.op (line 7",
            "unknown operator",
        ),
        (
            "version",
            r#""version": 1"#,
            r#""version": 2"#,
            "version (line 2, column 3)",
            "unsupported version 2",
        ),
        (
            "line break as the delimiter",
            r#""path": "@DATA@","#,
            r#""path": "@DATA@", "delimiter": "\n","#,
            "source.delimiter (line 4",
            "other than a quote or a line break",
        ),
        (
            "fuel too small for init",
            r#"{ "name": "second","#,
            r#"{ "name": "second", "fuel": 1,"#,
            "transforms[1].fuel (line 8",
            "ran out of fuel",
        ),
        (
            "no rows allowed per record",
            r#"{ "name": "second","#,
            r#"{ "name": "second", "max_rows_per_record": 0,"#,
            "transforms[1].max_rows_per_record (line 8",
            "at least 1",
        ),
        (
            "blank transform name",
            r#"{ "name": "second","#,
            r#"{ "name": " ","#,
            "transforms[1].name (line 8",
            "must not be blank",
        ),
        (
            "missing component",
            r#""uses": "@FILTER@", "with": { "field": "value", "op": "gt""#,
            r#""uses": "nope.wasm", "with": { "field": "value", "op": "gt""#,
            "transforms[0].uses (line 7",
            "does not exist",
        ),
        (
            "empty component path",
            r#""uses": "@FILTER@", "with": { "field": "value", "op": "gt""#,
            r#""uses": "", "with": { "field": "value", "op": "gt""#,
            "transforms[0].uses (line 7",
            "uses is empty",
        ),
    ];
    let mut failures = Vec::new();
    for (what, from, to, at, fragment) in cases {
        assert!(BASE.contains(from), "case {what}: {from:?} not in BASE");
        let (code, stderr) = validate(&BASE.replacen(from, to, 1));
        if code != Some(2) || !stderr.contains(at) || !stderr.contains(fragment) {
            failures.push(format!(
                "{what}: exit {code:?}, wanted {at:?} and {fragment:?} in:\n{stderr}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n---\n"));
}

/// `sluice run` checks the components before it starts anything: a param that `init` refuses
/// is a configuration mistake (exit 2, naming the key), and no broker or emulator was started
/// for it (the state directory, where they would keep their data, was never made).
#[test]
fn run_refuses_a_rejected_param_before_starting_anything() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_pipeline(
        dir.path(),
        &BASE.replacen(r#""op": "gt""#, r#""op": "zz""#, 1),
    );
    let state = dir.path().join("state");
    let out = sluice(
        dir.path(),
        &[
            "run",
            &path.to_string_lossy(),
            "--until-end",
            "--no-progress",
            "--state-dir",
            &state.to_string_lossy(),
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("transforms[0].with.op (line 7"), "{stderr}");
    assert!(stderr.contains("unknown operator \"zz\""), "{stderr}");
    assert!(!state.exists(), "{stderr}");
}

/// A param from the environment may be a secret: when the guest's error quotes it, the message
/// shows `***` instead (the README promises secrets are never logged).
#[test]
fn a_secret_param_quoted_by_a_guest_error_is_not_shown() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_pipeline(
        dir.path(),
        &BASE.replacen(r#""op": "gt""#, r#""op": "${SLUICE_TEST_OP_SECRET}""#, 1),
    );
    let out = std::process::Command::new(sluice_tests::cli::sluice_bin())
        .args(["validate", &path.to_string_lossy()])
        .env("SLUICE_TEST_OP_SECRET", "hunter2secret")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("transforms[0].with.op (line 7"), "{stderr}");
    assert!(stderr.contains("unknown operator \"***\""), "{stderr}");
    assert!(!stderr.contains("hunter2"), "{stderr}");
}

/// A guest that names the param it rejects by its value, or fills its message with terminal
/// escapes, shows neither the secret nor the escapes: the name is redacted like the reason, and
/// control characters become spaces.
#[test]
fn a_secret_echoed_as_a_param_name_is_not_shown() {
    let dir = tempfile::tempdir().unwrap();
    let text = BASE.replacen(
        r#"{ "uses": "@FILTER@", "with": { "field": "value", "op": "gt", "value": "50" } }"#,
        &format!(
            r#"{{ "uses": {:?}, "with": {{ "reject": "${{SLUICE_TEST_REJECT_SECRET}}" }} }}"#,
            sluice_tests::guests::PROBE
        ),
        1,
    );
    assert_ne!(text, BASE);
    let path = write_pipeline(dir.path(), &text);
    let out = std::process::Command::new(sluice_tests::cli::sluice_bin())
        .args(["validate", &path.to_string_lossy()])
        .env("SLUICE_TEST_REJECT_SECRET", "hunter2\u{1b}[2Jsecret")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("rejected param `***`: bad value ***"),
        "{stderr}"
    );
    assert!(!stderr.contains("hunter2"), "{stderr}");
    assert!(!stderr.contains('\u{1b}'), "{stderr}");
}

/// A guest that prints a param given from the environment under `debug_stdio` shows `***` in its
/// place, and its control characters as spaces: its output goes to sluice's stderr, which is a
/// log, and the operator's terminal.
#[test]
fn a_secret_printed_by_a_guest_under_debug_stdio_is_not_shown() {
    let dir = tempfile::tempdir().unwrap();
    let text = BASE.replacen(
        r#"{ "uses": "@FILTER@", "with": { "field": "value", "op": "gt", "value": "50" } }"#,
        &format!(
            r#"{{ "uses": {:?}, "debug_stdio": true,
                 "with": {{ "say": "salt is ${{SLUICE_TEST_SAY_SECRET}} \u001b[2J" }} }}"#,
            sluice_tests::guests::PROBE
        ),
        1,
    );
    assert_ne!(text, BASE);
    let path = write_pipeline(dir.path(), &text);
    let out = std::process::Command::new(sluice_tests::cli::sluice_bin())
        // The probe's rows lack the field the filter after it compares: this is about `init`.
        .args(["validate", "--sample-rows", "0", &path.to_string_lossy()])
        .env("SLUICE_TEST_SAY_SECRET", "hunter2secret")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("[probe] salt is ***  [2J\n"), "{stderr}");
    assert!(!stderr.contains("hunter2"), "{stderr}");
    assert!(!stderr.contains('\u{1b}'), "{stderr}");
}

/// A secret of several lines (a PEM key) is masked line by line where a guest's output is shown
/// a line at a time (`debug_stdio`) or its lines joined (a panic's message in a trap's reason).
#[test]
fn a_secret_of_several_lines_is_not_shown_in_guest_output() {
    let secret = "hunter2-line-one\nhunter2-line-two";
    for (param, debug) in [("say", true), ("panic", false)] {
        let dir = tempfile::tempdir().unwrap();
        let text = BASE.replacen(
            r#"{ "uses": "@FILTER@", "with": { "field": "value", "op": "gt", "value": "50" } }"#,
            &format!(
                r#"{{ "uses": {:?}, "debug_stdio": {debug},
                     "with": {{ "{param}": "${{SLUICE_TEST_PEM_SECRET}}" }} }}"#,
                sluice_tests::guests::PROBE
            ),
            1,
        );
        assert_ne!(text, BASE);
        let path = write_pipeline(dir.path(), &text);
        let out = std::process::Command::new(sluice_tests::cli::sluice_bin())
            // The probe's rows lack the field the filter after it compares: this is about `init`.
            .args(["validate", "--sample-rows", "0", &path.to_string_lossy()])
            .env("SLUICE_TEST_PEM_SECRET", secret)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        let (code, shown) = match param {
            "say" => (0, "[probe] ***\n[probe] ***\n"),
            _ => (2, ": *** / ***)"),
        };
        assert_eq!(out.status.code(), Some(code), "{stderr}");
        assert!(stderr.contains(shown), "{stderr}");
        assert!(!stderr.contains("line-"), "{stderr}");
    }
}

/// One run of `validate` shows every mistake: a transform's params are checked by its `init`
/// even when another transform's component is missing and the data file is gone.
#[test]
fn validate_reports_every_mistake_at_once() {
    let text = BASE
        .replacen(
            r#""uses": "@FILTER@", "with""#,
            r#""uses": "nope.wasm", "with""#,
            1,
        )
        .replacen(r#""value": "90""#, r#""value": "90", "threshold": "5""#, 1)
        .replacen("@DATA@", "/nonexistent/data.csv", 1);
    let (code, stderr) = validate(&text);
    assert_eq!(code, Some(2), "{stderr}");
    for wanted in [
        "source.path (line 4",
        "transforms[0].uses (line 7",
        "nope.wasm does not exist (check the path, or build it with `sluice transform build`)",
        "transforms[1].with.threshold (line 8, column ",
    ] {
        assert!(stderr.contains(wanted), "{wanted:?} not in:\n{stderr}");
    }
}

/// librdkafka's own checks of `kafka.properties` run offline: a mistyped key, or TLS in this
/// build without OpenSSL, exits 2 naming the key, and the value (here a password) is not shown.
#[test]
fn kafka_properties_are_checked_offline_without_showing_their_values() {
    let (code, stderr) = validate(&BASE.replacen(
        r#""partitions": 3 }"#,
        r#""partitions": 3, "properties": { "sasl.pasword": "TopSecret-123", "security.protocol": "sasl_ssl" } }"#,
        1,
    ));
    assert_eq!(code, Some(2), "{stderr}");
    for wanted in [
        "kafka.properties.sasl.pasword (line 5, column ",
        "No such configuration property: \"sasl.pasword\"",
        "kafka.properties.security.protocol (line 5, column ",
        "OpenSSL not available",
    ] {
        assert!(stderr.contains(wanted), "{wanted:?} not in:\n{stderr}");
    }
    assert!(!stderr.contains("TopSecret"), "{stderr}");
}

#[test]
fn committed_schema_is_current() {
    // The summary's schema too, which scripts reading `--summary` go by.
    let out = sluice(&workspace_root(), &["schema", "--summary"]);
    assert!(out.status.success());
    let committed =
        std::fs::read_to_string(workspace_root().join("docs/summary.schema.json")).unwrap();
    assert!(
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
            == serde_json::from_str::<serde_json::Value>(&committed).unwrap(),
        "docs/summary.schema.json is stale: run `sluice schema --summary > docs/summary.schema.json`"
    );

    let out = sluice(&workspace_root(), &["schema"]);
    assert!(out.status.success());
    let committed = std::fs::read_to_string(workspace_root().join("pipeline.schema.json")).unwrap();
    let generated: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let committed: serde_json::Value = serde_json::from_str(&committed).unwrap();
    assert!(
        generated == committed,
        "pipeline.schema.json is stale: run `sluice schema > pipeline.schema.json`"
    );
}

/// The bounds `pipeline.schema.json` gives an editor are the ones `validate` holds a file to:
/// each value just past one is refused at its key, and the schema's `null`-free column types.
#[test]
fn schema_bounds_are_the_ones_validate_enforces() {
    let out = sluice(&workspace_root(), &["schema"]);
    assert!(out.status.success());
    let schema: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    /// The first property called `name` anywhere in `node`.
    fn property<'a>(node: &'a serde_json::Value, name: &str) -> Option<&'a serde_json::Value> {
        match node {
            serde_json::Value::Object(map) => (map.get("properties"))
                .and_then(|p| p.get(name))
                .or_else(|| map.values().find_map(|v| property(v, name))),
            serde_json::Value::Array(items) => items.iter().find_map(|v| property(v, name)),
            _ => None,
        }
    }
    let mut file: serde_json::Value = serde_json::from_str(BASE).unwrap();
    // (where in the file, the property's name, the value set there, the schema's bound it is past)
    let cases = [
        ("/source", "loop", 0, "minimum"),
        ("/source", "infer_rows", 0, "minimum"),
        ("/kafka", "partitions", 0, "minimum"),
        ("/kafka", "replication_factor", 0, "minimum"),
        ("/kafka", "max_in_flight", 0, "minimum"),
        ("/transforms/0", "memory_mb", 0, "minimum"),
        ("/transforms/1", "memory_mb", 4097, "maximum"),
        ("/transforms/0", "timeout_ms", 0, "minimum"),
        ("/transforms/0", "fuel", 0, "minimum"),
        ("/transforms/0", "max_rows_per_record", 0, "minimum"),
        ("/sink/batch", "max_rows", 0, "minimum"),
        ("/sink/batch", "max_bytes", 1023, "minimum"),
        ("/sink/batch", "max_latency_ms", 0, "minimum"),
        ("/source/pacing", "delay_ms", 86_400_001, "maximum"),
    ];
    file["sink"]["batch"] = serde_json::json!({});
    file["source"]["pacing"] = serde_json::json!({ "mode": "fixed" });
    for (at, name, value, bound) in cases {
        let limit = property(&schema, name).and_then(|p| p.get(bound));
        let step = if bound == "minimum" { 1 } else { -1 };
        assert_eq!(limit, Some(&(value + step).into()), "{name} {bound}");
        file.pointer_mut(at).unwrap()[name] = value.into();
    }
    let (code, stderr) = validate(&file.to_string());
    assert_eq!(code, Some(2), "{stderr}");
    for (at, name, _, _) in cases {
        let key = at[1..]
            .replace("/0", "[0]")
            .replace("/1", "[1]")
            .replace('/', ".");
        let wanted = format!("{key}.{name} (line ");
        assert!(stderr.contains(&wanted), "{wanted}\n{stderr}");
    }
    // Speeds are floats above 0; rates, at least one row a day.
    let bound = property(&schema, "speed").and_then(|p| p.get("exclusiveMinimum"));
    assert_eq!(bound, Some(&0.into()));
    let bound = property(&schema, "rows_per_sec").and_then(|p| p.get("minimum")?.as_f64());
    assert_eq!(bound, Some(1.0 / 86_400.0));
    for (pacing, wanted) in [
        (
            serde_json::json!({ "mode": "rate", "rows_per_sec": 0 }),
            "rows_per_sec must be a positive number",
        ),
        (
            serde_json::json!({ "mode": "rate", "rows_per_sec": 1e-6 }),
            "rows_per_sec must be at least one row a day",
        ),
        (
            serde_json::json!({ "mode": "event_time", "column": "id", "speed": 0 }),
            "speed must be a positive number",
        ),
    ] {
        let mut paced: serde_json::Value = serde_json::from_str(BASE).unwrap();
        paced["source"]["pacing"] = pacing;
        let (code, stderr) = validate(&paced.to_string());
        assert_eq!(code, Some(2), "{stderr}");
        assert!(stderr.contains(wanted), "{wanted}\n{stderr}");
    }
    // `null` is no type to declare: every value but an empty one would be a bad row.
    file["source"]["schema"] = serde_json::json!({ "name": "null" });
    let (code, stderr) = validate(&file.to_string());
    assert_eq!(code, Some(2), "{stderr}");
    let wanted = "source.schema.name (line 1, column ";
    assert!(stderr.contains(wanted), "{wanted}\n{stderr}");
    let wanted = "unknown variant `null`, expected one of `bool`, `int`, `float`";
    assert!(stderr.contains(wanted), "{wanted}\n{stderr}");
    let types = schema.pointer("/$defs/DeclaredType/oneOf").unwrap();
    assert!(!types.to_string().contains("\"null\""), "{types}");
}

/// Output into a pipe whose reader has gone (`sluice schema | true`) is dropped, not a panic
/// (exit 101); the command keeps its own exit code, for errors on stderr too.
#[test]
fn closed_output_pipes_are_not_a_panic() {
    let run = |args: &[&str], stdout: bool| {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let mut cmd = std::process::Command::new(sluice_tests::cli::sluice_bin());
        cmd.args(args).stdin(std::process::Stdio::null());
        if stdout {
            cmd.stdout(writer).stderr(std::process::Stdio::null());
        } else {
            cmd.stdout(std::process::Stdio::null()).stderr(writer);
        }
        cmd.status().unwrap().code()
    };
    assert_eq!(run(&["schema"], true), Some(0));
    assert_eq!(run(&["validate", "/no/such/pipeline.json"], false), Some(2));
}

/// With `--log-format json` every stderr line is a JSON object, the final error too: a log
/// collector sees why the command ended, with its exit code, like any other event.
#[test]
fn json_logs_end_with_a_json_error_line() {
    let (code, stderr) = {
        let dir = tempfile::tempdir().unwrap();
        let path = write_pipeline(
            dir.path(),
            &BASE.replacen(r#""partitions": 3"#, r#""partitions": "3""#, 1),
        );
        let out = sluice(
            dir.path(),
            &["--log-format", "json", "validate", &path.to_string_lossy()],
        );
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    assert_eq!(code, Some(2), "{stderr}");
    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let last = lines.last().expect("an error line");
    assert_eq!(last["level"], "ERROR", "{last}");
    assert_eq!(last["fields"]["exit_code"], 2, "{last}");
    let message = last["fields"]["message"].as_str().unwrap();
    assert!(message.contains("kafka.partitions"), "{message}");
    // The level says it is an error; the message is the error alone.
    assert!(!message.starts_with("error:"), "{message}");

    // A command line clap refuses ends the same way, wherever the flag is; asked for after
    // `--`, it is a value, not the log format.
    let dir = tempfile::tempdir().unwrap();
    for (args, json) in [
        (&["--log-format", "json", "validate"][..], true),
        (
            &["validate", "--log-format=json", "p.json", "--bogus"],
            true,
        ),
        (&["validate", "--bogus"], false),
        (&["validate", "--bogus", "--", "--log-format=json"], false),
    ] {
        let out = sluice(dir.path(), args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        let event = serde_json::from_str::<serde_json::Value>(stderr.trim());
        assert_eq!(event.is_ok(), json, "{args:?}: {stderr}");
        if let Ok(event) = event {
            assert_eq!(event["level"], "ERROR", "{event}");
            assert_eq!(event["fields"]["exit_code"], 2, "{event}");
            let message = event["fields"]["message"].as_str().unwrap();
            assert!(message.contains("Usage: sluice validate"), "{message}");
        }
    }
}

/// The demo pipeline passes every offline check, components included: its transforms' params
/// are accepted by their `init`. Its `uses` paths point at `sluice transform build` output, which
/// a clean clone lacks, so this checks a copy that uses the same guests as built for the tests.
#[test]
fn demo_pipeline_is_valid() {
    let root = workspace_root();
    let mut demo: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("pipeline.json")).unwrap())
            .unwrap();
    demo["source"]["path"] = root.join("data/data.csv").to_string_lossy().into();
    for t in demo["transforms"].as_array_mut().unwrap() {
        let built = match t["name"].as_str().unwrap() {
            "filter" => sluice_tests::guests::FILTER,
            "enrich" => sluice_tests::guests::ENRICH,
            other => panic!("demo transform {other} has no test build"),
        };
        t["uses"] = built.into();
    }
    demo.as_object_mut().unwrap().remove("$schema");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pipeline.json");
    std::fs::write(&path, serde_json::to_string_pretty(&demo).unwrap()).unwrap();
    let out = sluice(dir.path(), &["validate", &path.to_string_lossy()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A pipeline for `validate`'s sample run: the CSV `csv` beside it, `transforms`, a `csv` sink.
fn sampled(csv: &str, transforms: serde_json::Value) -> serde_json::Value {
    serde_json::json!({
        "version": 1,
        "name": "sampled",
        "source": { "type": "csv", "path": csv },
        "kafka": { "topic": "t1" },
        "transforms": transforms,
        "sink": { "type": "snowflake", "database": "D", "schema": "S", "table": "T" }
    })
}

/// A `filter` transform named `<field>-<op>-<value>`.
fn filter(field: &str, op: &str, value: &str) -> serde_json::Value {
    serde_json::json!({
        "name": format!("{field}-{op}-{value}"),
        "uses": sluice_tests::guests::FILTER,
        "with": { "field": field, "op": op, "value": value }
    })
}

/// Writes `pipeline` as `dir/pipeline.json` and runs `sluice validate` on it with `args`:
/// (exit code, stderr).
fn validate_in(dir: &Path, pipeline: &serde_json::Value, args: &[&str]) -> (Option<i32>, String) {
    std::fs::write(dir.join("pipeline.json"), pipeline.to_string()).unwrap();
    let out = sluice(dir, &[&["validate", "pipeline.json"], args].concat());
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status.code(), stderr)
}

/// Whether `value` of `write_csv`'s row `i` passes `filter("value", "gt", "50")`.
fn above_50(i: usize) -> bool {
    (i * 37 % 100) as f64 + 0.5 > 50.0
}

/// `validate` runs the CSV's first records through the chain, as the source reads them: the
/// counts it prints are what the guest did to them, a filter whose field the CSV lacks fails
/// every row (an error at the transform's key, with the guest's reason), and
/// `--sample-rows 0` skips the run.
#[test]
fn validate_runs_the_first_rows_through_the_chain() {
    let dir = tempfile::tempdir().unwrap();
    write_csv(&dir.path().join("rows.csv"), 30);
    // The first 12 records: rows 1 to 10, a ragged row, row 11 (see `write_csv`).
    let above = (1..=11).filter(|i| above_50(*i)).count();
    let good = sampled("rows.csv", serde_json::json!([filter("value", "gt", "50")]));
    let (code, stderr) = validate_in(dir.path(), &good, &["--sample-rows", "12"]);
    assert_eq!(code, Some(0), "{stderr}");
    let counts = format!(
        "the first 12 records of rows.csv: 1 bad CSV record (not run); the other 11 rows \
         through the transforms: {above} rows out, {} filtered out, 0 failed",
        11 - above
    );
    assert!(stderr.contains(&counts), "{counts}\n{stderr}");

    let misspelt = sampled("rows.csv", serde_json::json!([filter("valeu", "gt", "50")]));
    let (code, stderr) = validate_in(dir.path(), &misspelt, &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("transforms[0] (line 1, column ")
            && stderr.contains(
                "failed all 30 rows that reached it from the first 30 rows of rows.csv; the \
                 first: guest_error: missing field `valeu` (line 2)"
            ),
        "{stderr}"
    );
    // A value the field's type cannot be compared with is the param's mistake: at its key.
    let wordy = sampled(
        "rows.csv",
        serde_json::json!([filter("value", "gt", "ten")]),
    );
    let (code, stderr) = validate_in(dir.path(), &wordy, &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("transforms[0].with.value (line 1, column ")
            && stderr.contains(
                "the first: guest_error: invalid param `value`: \"ten\" is not a number, and \
                 field `value` is one (line 2)"
            ),
        "{stderr}"
    );
    let (code, stderr) = validate_in(dir.path(), &misspelt, &["--sample-rows", "0"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(!stderr.contains("through the transforms"), "{stderr}");
    // Under `--log-format json`, every line on stderr is a JSON object, the counts too.
    let out = sluice(
        dir.path(),
        &["--log-format", "json", "validate", "pipeline.json"],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    for line in stderr.lines() {
        let event: serde_json::Value = serde_json::from_str(line).expect(line);
        assert!(event["fields"]["message"].is_string(), "{line}");
    }
    assert!(
        stderr.contains("through the transforms: 0 rows out"),
        "{stderr}"
    );
}

/// Rows failing in a transform are bad data, not a mistake in the file (a warning with the
/// first), unless enough of them failed, every one that reached it: at least 10, or every row
/// of the sample. Under `on_error: fail` that is the same error, not only the policy's.
#[test]
fn validate_tells_bad_rows_from_a_mistake_in_the_file() {
    let dir = tempfile::tempdir().unwrap();
    write_csv(&dir.path().join("rows.csv"), 30);
    let above = (1..=30).filter(|i| above_50(*i)).count();
    assert!((10..30).contains(&above), "{above}");
    for policy in ["dead_letter", "fail"] {
        let mut second = filter("valeu", "gt", "5");
        second["on_error"] = policy.into();
        let chain = serde_json::json!([filter("value", "gt", "50"), second]);
        let (code, stderr) = validate_in(dir.path(), &sampled("rows.csv", chain), &[]);
        assert_eq!(code, Some(2), "{stderr}");
        let wanted = format!(
            "failed all {above} rows that reached it from the first 30 rows of rows.csv; the \
             first: guest_error: missing field `valeu`"
        );
        assert!(
            stderr.contains("transforms[1] (line 1, column "),
            "{stderr}"
        );
        assert!(stderr.contains(&wanted), "{wanted}\n{stderr}");
        assert!(!stderr.contains("transforms[1].on_error"), "{stderr}");
    }

    // Row 2 holds no number: whether some of the rows that reached the filter failed, or all of
    // a few, it is a warning.
    std::fs::write(
        dir.path().join("values.csv"),
        "id,value\n1,60\n2,n/a\n3,70\n4,80\n",
    )
    .unwrap();
    let value = || filter("value", "gt", "50");
    for (chain, reached) in [
        (vec![value()], "1 of the 4 rows"),
        (vec![filter("id", "gt", "1"), value()], "1 of the 3 rows"),
        (
            vec![filter("id", "gt", "1"), filter("id", "lt", "3"), value()],
            "1 of the 1 row",
        ),
    ] {
        let last = chain.len() - 1;
        let (code, stderr) = validate_in(dir.path(), &sampled("values.csv", chain.into()), &[]);
        assert_eq!(code, Some(0), "{stderr}");
        let wanted = format!(
            "warning: transforms[{last}] (value-gt-50) failed {reached} that reached it from \
             the first 4 rows of values.csv; the first: guest_error: invalid value in field \
             `value`: is \"n/a\", not a number to compare with 50 (line 3)"
        );
        assert!(stderr.contains(&wanted), "{wanted}\n{stderr}");
    }

    // Bad CSV records: a few are bad data (a warning with the first); all of them are a
    // mistake in the file, here a declared type the values do not have, named at its key.
    let (code, stderr) = validate_in(dir.path(), &sampled("rows.csv", vec![value()].into()), &[]);
    assert_eq!(code, Some(0), "{stderr}");
    let wanted = "warning: 2 of the first 32 records of rows.csv are bad rows, which a run would \
                  dead-letter; the first: line 12: ragged_row: ";
    assert!(stderr.contains(wanted), "{wanted}\n{stderr}");
    let mut typed = sampled("rows.csv", serde_json::json!([value()]));
    typed["source"]["schema"] = serde_json::json!({ "value": "int" });
    typed["source"]["on_error"] = "drop".into();
    let (code, stderr) = validate_in(dir.path(), &typed, &["--sample-rows", "20"]);
    assert_eq!(code, Some(2), "{stderr}");
    let wanted = "source.schema.value (line 1, column ";
    assert!(stderr.contains(wanted), "{wanted}\n{stderr}");
    let wanted = "all of the first 20 records of rows.csv are bad rows, so a run would drop every \
                  one of them, and likely the rest; the first: line 2: parse: field \"value\": \
                  \"37.5\" is not a valid int";
    assert!(stderr.contains(wanted), "{wanted}\n{stderr}");
    // A sample as long as the file has read it whole; a pipeline without transforms still has
    // its CSV read.
    typed["transforms"] = serde_json::json!([]);
    let (code, stderr) = validate_in(dir.path(), &typed, &["--sample-rows", "32"]);
    assert_eq!(code, Some(2), "{stderr}");
    let wanted = "the first 32 records of rows.csv: 0 rows, 32 bad CSV records (no transforms)";
    assert!(stderr.contains(wanted), "{wanted}\n{stderr}");
    let wanted = "all 32 records of rows.csv are bad rows, so a run would drop every one and load \
                  nothing";
    assert!(stderr.contains(wanted), "{wanted}\n{stderr}");
    std::fs::write(dir.path().join("one.csv"), "id,value\n1,2\n2,3,4\n3,4\n").unwrap();
    let (code, stderr) = validate_in(dir.path(), &sampled("one.csv", vec![value()].into()), &[]);
    assert_eq!(code, Some(0), "{stderr}");
    let wanted = "warning: 1 of the first 3 records of one.csv is a bad row, which a run would \
                  dead-letter; the first: line 3: ragged_row: ";
    assert!(stderr.contains(wanted), "{wanted}\n{stderr}");
}

/// What the sample could not check is said: a transform no row reached, and records the source
/// would not produce (larger than the topic's messages), which are bad rows here as in a run.
#[test]
fn validate_says_what_its_sample_did_not_check() {
    let dir = tempfile::tempdir().unwrap();
    write_csv(&dir.path().join("rows.csv"), 30);
    let chain = serde_json::json!([filter("value", "gt", "1000"), filter("valeu", "gt", "5")]);
    let (code, stderr) = validate_in(dir.path(), &sampled("rows.csv", chain), &[]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains(
            "the first 32 records of rows.csv: 2 bad CSV records (not run); the other 30 rows \
             through the transforms: 0 rows out, 30 filtered out, 0 failed; no row reached \
             transforms[1], so the sample did not check it"
        ),
        "{stderr}"
    );

    let mut big = String::from("id,value\n");
    for i in 0..3 {
        big.push_str(&format!("{i},{}\n", "9".repeat(1500)));
    }
    std::fs::write(dir.path().join("big.csv"), big).unwrap();
    let mut small = sampled("big.csv", serde_json::json!([filter("valeu", "gt", "5")]));
    small["kafka"]["properties"] = serde_json::json!({ "message.max.bytes": "1000" });
    let (code, stderr) = validate_in(dir.path(), &small, &[]);
    // Every record of the file is too large: a run would load nothing.
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains(
            "the first 3 records of big.csv: 3 bad CSV records (not run); the other 0 rows \
             through the transforms: 0 rows out, 0 filtered out, 0 failed; no row reached \
             transforms[0]"
        ),
        "{stderr}"
    );
    let wanted = "kafka.properties.message.max.bytes (line 1, column ";
    assert!(stderr.contains(wanted), "{wanted}\n{stderr}");
    let wanted = "all 3 records of big.csv are bad rows, so a run would dead-letter every one and \
                  load nothing; the first: line 2: too_large: ";
    assert!(stderr.contains(wanted), "{wanted}\n{stderr}");
}

/// Output rows a `csv` sink would set aside are warned of, once, at their record and line; if
/// every row out has field names no table takes, a run would load nothing, and that is an
/// error. The `ndjson` format loads any row whole into a VARIANT: nothing to warn of.
#[test]
fn validate_warns_of_rows_the_sink_would_set_aside() {
    let dir = tempfile::tempdir().unwrap();
    // The trap guest makes a string field `json` a json value of the same text.
    std::fs::write(
        dir.path().join("rows.csv"),
        "id,json\n1,[1]\n2,\"{\"\"OK\"\":TRUE}\"\n",
    )
    .unwrap();
    let trap = serde_json::json!([{ "uses": sluice_tests::guests::POISON_TRAP }]);
    let text = sampled("rows.csv", trap);
    let (code, stderr) = validate_in(dir.path(), &text, &[]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains(
            "warning: the transforms' output for record 2 (line 3): field \"json\" is of type json \
             but its text is not JSON"
        ),
        "{stderr}"
    );
    assert_eq!(stderr.matches("warning").count(), 1, "{stderr}");
    let mut ndjson = text.clone();
    ndjson["sink"]["format"] = "ndjson".into();
    let (code, stderr) = validate_in(dir.path(), &ndjson, &[]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(!stderr.contains("warning"), "{stderr}");

    let renamed = serde_json::json!([{
        "uses": sluice_tests::guests::ENRICH, "with": { "rename": "json:ID" }
    }]);
    let (code, stderr) = validate_in(dir.path(), &sampled("rows.csv", renamed), &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains(
            "transforms (line 1, column 96): every one of the 2 rows the transforms emitted \
             from the first 2 rows of rows.csv has field names no table takes, so a run would \
             load none of them; the first, for record 1 (line 2): fields \"id\" and \"ID\" \
             become the same Snowflake column"
        ),
        "{stderr}"
    );
    assert!(
        stderr.contains(
            "warning: the transforms' output for record 1 (line 2): fields \"id\" and \"ID\" \
             become the same Snowflake column"
        ),
        "{stderr}"
    );
    assert_eq!(stderr.matches("warning").count(), 1, "{stderr}");
}

/// A transform failing rows in more than one way is reported with how many of each kind and the
/// first of each: a trap or a timeout is a bug, not to be hidden behind a row of bad data. An
/// `on_error` of `fail` for one kind only is found whichever kind failed first.
#[test]
fn validate_names_each_kind_of_failure() {
    let dir = tempfile::tempdir().unwrap();
    // Row 5 spins past the time limit; row 13 panics (see the poison guest).
    let mut csv = String::from("id,burn_ms\n");
    for id in 1..=20 {
        let burn = if id == 5 { "5000" } else { "" };
        csv.push_str(&format!("{id},{burn}\n"));
    }
    std::fs::write(dir.path().join("rows.csv"), csv).unwrap();
    let poison = serde_json::json!({
        "name": "poison",
        "uses": sluice_tests::guests::POISON_TRAP,
        "timeout_ms": 200
    });
    let (code, stderr) = validate_in(
        dir.path(),
        &sampled("rows.csv", vec![poison.clone()].into()),
        &[],
    );
    assert_eq!(code, Some(0), "{stderr}");
    let wanted = "warning: transforms[0] (poison) failed 2 of the 20 rows that reached it from the \
                  first 20 rows of rows.csv (1 timeout, 1 trap); the first: timeout: ";
    assert!(stderr.contains(wanted), "{wanted}\n{stderr}");
    let wanted = "(line 6); the first trap: ";
    assert!(stderr.contains(wanted), "{wanted}\n{stderr}");
    assert!(stderr.contains("poison row"), "{stderr}");

    let mut strict = poison;
    strict["on_error"] = serde_json::json!({ "trap": "fail", "default": "dead_letter" });
    let (code, stderr) = validate_in(dir.path(), &sampled("rows.csv", vec![strict].into()), &[]);
    assert_eq!(code, Some(2), "{stderr}");
    let wanted = "transforms[0].on_error (line 1, column ";
    assert!(stderr.contains(wanted), "{wanted}\n{stderr}");
    let wanted = "the transform fails line 14 of rows.csv (trap: ";
    assert!(stderr.contains(wanted), "{wanted}\n{stderr}");
}

/// A failure that `on_error: fail` stops a run on, in the source or in a transform, is certain:
/// each is reported at its `on_error`, with its line.
#[test]
fn validate_reports_what_would_stop_a_run() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("strict.csv"),
        "id,value\n1,60\n2,n/a\n3,70\n4,80,extra\n",
    )
    .unwrap();
    let mut strict_filter = filter("value", "gt", "50");
    strict_filter["on_error"] =
        serde_json::json!({ "guest_error": "fail", "default": "dead_letter" });
    let mut strict = sampled("strict.csv", serde_json::json!([strict_filter]));
    strict["source"]["on_error"] = "fail".into();
    let (code, stderr) = validate_in(dir.path(), &strict, &[]);
    assert_eq!(code, Some(2), "{stderr}");
    for wanted in [
        "the first 4 records of strict.csv: 1 bad CSV record (not run); the other 3 rows \
         through the transforms: 2 rows out, 0 filtered out, 1 failed",
        "source.on_error (line 1, column ",
        "line 5 of strict.csv is a bad row (expected 2 fields, found 3): with on_error fail, a \
         run stops there",
        "transforms[0].on_error (line 1, column ",
        "the transform fails line 3 of strict.csv (guest_error: invalid value in field `value`",
        "with on_error fail for guest_error, a run stops there",
    ] {
        assert!(stderr.contains(wanted), "{wanted:?} not in:\n{stderr}");
    }
}

/// A CSV with `good` rows (id, name, value) plus two ragged rows, and the number of good rows
/// whose value is above 50, computed here independently of sluice.
fn write_csv(path: &Path, good: usize) -> usize {
    let mut text = String::from("id,name,value\n");
    let mut above = 0;
    for i in 1..=good {
        let value = (i * 37 % 100) as f64 + 0.5;
        above += usize::from(value > 50.0);
        text.push_str(&format!("{i},\"name, {i}\",{value}\n"));
        if i == 10 || i == 20 {
            text.push_str("999,ragged\n");
        }
    }
    std::fs::write(path, text).unwrap();
    above
}

/// The whole product: `sluice run --until-end` replays a CSV through the real broker, the
/// filter and enrich components and the emulator; the table is read back with the official
/// Python connector; `sluice verify` reconciles; a second consume-only run loads nothing twice.
#[test]
fn run_until_end_loads_every_row_exactly_once_and_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let csv = dir.path().join("rows.csv");
    let expected = write_csv(&csv, 400);
    // One row past the largest message: a `too_large` dead letter, which verify must count as a
    // bad row of the file as the source did.
    let mut big = std::fs::OpenOptions::new().append(true).open(&csv).unwrap();
    std::io::Write::write_all(
        &mut big,
        format!("401,\"{}\",60.5\n", "x".repeat(1_100_000)).as_bytes(),
    )
    .unwrap();
    drop(big);
    let topic = sluice_tests::broker::unique("e2e");
    let pipeline = serde_json::json!({
        "version": 1,
        "name": "e2e",
        "source": { "type": "csv", "path": csv, "key_column": "id" },
        "kafka": { "brokers": sluice_tests::broker::bootstrap(), "topic": topic, "partitions": 3 },
        "transforms": [
            { "uses": sluice_tests::guests::FILTER, "with": { "field": "value", "op": "gt", "value": "50" } },
            { "uses": sluice_tests::guests::ENRICH, "with": { "uppercase": "name" } }
        ],
        "sink": { "type": "snowflake", "database": "E2E", "schema": "RAW", "table": "ROWS",
                  "batch": { "max_rows": 100, "max_latency_ms": 300 } }
    });
    let path = dir.path().join("pipeline.json");
    std::fs::write(&path, serde_json::to_string_pretty(&pipeline).unwrap()).unwrap();
    let (p, s) = (
        path.to_string_lossy().into_owned(),
        state.to_string_lossy().into_owned(),
    );
    let summary_file = dir
        .path()
        .join("summary.json")
        .to_string_lossy()
        .into_owned();

    let out = sluice(
        dir.path(),
        &[
            "run",
            &p,
            "--until-end",
            "--no-progress",
            "--state-dir",
            &s,
            "--summary",
            &summary_file,
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "run failed:\n{stderr}");
    const SECOND_REPLAY: &str = "The table already holds rows this pipeline loaded";
    assert!(!stderr.contains(SECOND_REPLAY), "{stderr}");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&summary_file).unwrap()).unwrap();
    assert_eq!(summary["replay"]["rows_read"], 403, "{summary:#}");
    assert_eq!(summary["replay"]["rows_produced"], 400);
    assert_eq!(summary["replay"]["rows_dead_lettered"], 3);
    assert_eq!(summary["consume"]["rows_loaded"], expected as u64);
    assert_eq!(
        summary["consume"]["transforms"][0]["rows_out"],
        expected as u64
    );

    // The two ragged rows and the large one are in the dead-letter topic with their lines.
    let letters: Vec<serde_json::Value> = sluice_tests::broker::read_topic(&format!("{topic}.dlq"))
        .iter()
        .map(|m| m.json())
        .collect();
    let mut lines: Vec<i64> = letters
        .iter()
        .map(|l| l["line"].as_i64().unwrap())
        .collect();
    lines.sort();
    assert_eq!(lines, vec![12, 23, 404], "{letters:#?}");

    // Read the table back with an independent client.
    let db = state.join("snowflake").to_string_lossy().into_owned();
    let count = |sql: &str| python_query(&db, sql)[0][0].as_i64().unwrap();
    assert_eq!(count("SELECT COUNT(*) FROM E2E.RAW.ROWS"), expected as i64);
    assert_eq!(
        count("SELECT COUNT(DISTINCT ID) FROM E2E.RAW.ROWS"),
        expected as i64
    );
    assert_eq!(
        count("SELECT COUNT(*) FROM E2E.RAW.ROWS WHERE VALUE <= 50 OR NAME <> UPPER(NAME)"),
        0
    );

    let out = sluice(
        dir.path(),
        &["verify", &p, "--state-dir", &s, "--summary", &summary_file],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "verify found gaps:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("verify: ok"), "{stdout}");

    // A restart resumes from what Snowflake holds: nothing is loaded twice.
    let out = sluice(
        dir.path(),
        &[
            "run",
            &p,
            "--consume-only",
            "--until-end",
            "--no-progress",
            "--state-dir",
            &s,
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains(SECOND_REPLAY), "{stderr}");
    assert_eq!(count("SELECT COUNT(*) FROM E2E.RAW.ROWS"), expected as i64);

    // A second full run replays the file into the topic again, and its rows are loaded again:
    // it says so before it starts, and names the resume that would not.
    let out = sluice(
        dir.path(),
        &["run", &p, "--until-end", "--no-progress", "--state-dir", &s],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let warning = stderr
        .lines()
        .find(|l| l.contains(SECOND_REPLAY))
        .unwrap_or_else(|| panic!("no warning of a second replay:\n{stderr}"));
    assert!(warning.contains("--consume-only"), "{warning}");
    assert!(
        stderr.find(SECOND_REPLAY) < stderr.find("Replaying."),
        "warned only after the replay started:\n{stderr}"
    );
    assert_eq!(
        count("SELECT COUNT(*) FROM E2E.RAW.ROWS"),
        2 * expected as i64
    );

    // A table named anew takes only what the topic gets past the pipeline's offsets (they are
    // kept per pipeline name): the run says so, and neither says the rows are loaded twice.
    let mut renamed = pipeline.clone();
    renamed["sink"]["table"] = "ROWS2".into();
    std::fs::write(&path, serde_json::to_string_pretty(&renamed).unwrap()).unwrap();
    let out = sluice(
        dir.path(),
        &[
            "run",
            &p,
            "--until-end",
            "--no-progress",
            "--state-dir",
            &s,
            "--summary",
            &summary_file,
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("The table does not exist, but the offsets table says this pipeline"),
        "{stderr}"
    );
    assert!(!stderr.contains(SECOND_REPLAY), "{stderr}");
    let summary = std::fs::read_to_string(&summary_file).unwrap();
    assert!(!summary.contains("in the table twice"), "{summary}");
    assert_eq!(count("SELECT COUNT(*) FROM E2E.RAW.ROWS2"), expected as i64);
    assert_eq!(
        count("SELECT COUNT(*) FROM E2E.RAW.ROWS"),
        2 * expected as i64
    );

    // A pipeline renamed has no offsets of its own: it loads the whole topic (three replays),
    // and its fourth, into the table again; it says that another name loaded from the topic,
    // rather than that no run did.
    renamed["name"] = "e2e-renamed".into();
    std::fs::write(&path, serde_json::to_string_pretty(&renamed).unwrap()).unwrap();
    let out = sluice(
        dir.path(),
        &["run", &p, "--until-end", "--no-progress", "--state-dir", &s],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("pipelines of other names recorded loads from it")
            && stderr.contains("other_pipelines=e2e")
            && !stderr.contains("no run has loaded"),
        "{stderr}"
    );
    assert_eq!(
        count("SELECT COUNT(*) FROM E2E.RAW.ROWS2"),
        5 * expected as i64
    );
}

/// A record that traps in the second transform goes to the dead-letter topic as the message the
/// source wrote (byte for byte, so it can be replayed through the whole chain), not as the row
/// the first transform made of it; every other row is loaded and the run reconciles. The run has
/// its stderr closed (`sluice run ... 2>&1 | head -0`): its logs, its warning about the trap and
/// its summary go nowhere, and it still runs to the end with exit 0.
#[test]
fn a_record_trapping_mid_chain_is_dead_lettered_as_the_original_message() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let csv = dir.path().join("rows.csv");
    write_csv(&csv, 40);
    let topic = sluice_tests::broker::unique("midchain");
    let pipeline = serde_json::json!({
        "version": 1,
        "name": "midchain",
        "source": { "type": "csv", "path": csv, "key_column": "id" },
        "kafka": { "brokers": sluice_tests::broker::bootstrap(), "topic": topic, "partitions": 2 },
        "transforms": [
            { "uses": sluice_tests::guests::ENRICH, "with": { "uppercase": "name" } },
            { "uses": sluice_tests::guests::POISON_TRAP, "on_error": "dead_letter" }
        ],
        "sink": { "type": "snowflake", "database": "E2E", "schema": "RAW", "table": "ROWS" }
    });
    let path = dir.path().join("pipeline.json");
    std::fs::write(&path, pipeline.to_string()).unwrap();
    let (p, s) = (path.to_string_lossy(), state.to_string_lossy());
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let status = std::process::Command::new(sluice_tests::cli::sluice_bin())
        .args(["run", &p, "--until-end", "--no-progress", "--state-dir", &s])
        .current_dir(dir.path())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(writer)
        .status()
        .unwrap();
    assert_eq!(
        status.code(),
        Some(0),
        "the run failed; its stderr was closed on purpose, run it with one to see why"
    );

    let messages: Vec<_> = sluice_tests::broker::read_topic(&format!("{topic}.dlq"))
        .into_iter()
        .filter(|m| m.json()["stage"] != "source")
        .collect();
    let letters: Vec<serde_json::Value> = messages.iter().map(|m| m.json()).collect();
    assert_eq!(letters.len(), 1, "{letters:#?}");
    let letter = &letters[0];
    // Keyed as its record was.
    assert_eq!(messages[0].key.as_deref(), Some(&b"13"[..]), "{letter:#}");
    assert_eq!(letter["stage"], "transform:poison_trap");
    assert_eq!(letter["kind"], "trap");
    // Id 13 is on line 15 (the header, ids 1 to 10, a ragged row, ids 11 and 12).
    assert_eq!(letter["line"], 15, "{letter:#}");
    assert_eq!(letter["file"], "rows.csv", "{letter:#}");
    let (partition, offset) = (
        letter["origin"]["partition"].as_i64().unwrap() as i32,
        letter["origin"]["offset"].as_i64().unwrap(),
    );
    let original = sluice_tests::broker::read_topic(&topic)
        .into_iter()
        .find(|m| m.partition == partition && m.offset == offset)
        .expect("the letter's origin is in the source topic");
    assert_eq!(
        letter["payload"].as_str().unwrap().as_bytes(),
        original.value.as_deref().unwrap(),
        "the payload is the source's message"
    );
    assert_eq!(original.json()["id"], 13);
    assert_eq!(
        original.json()["name"],
        "name, 13",
        "not the uppercased row"
    );

    let db = state.join("snowflake").to_string_lossy().into_owned();
    let rows = python_query(&db, "SELECT COUNT(*), COUNT_IF(ID = 13) FROM E2E.RAW.ROWS");
    assert_eq!(rows[0][0].as_i64(), Some(39));
    assert_eq!(rows[0][1].as_i64(), Some(0));
}

/// A run on embedded defaults (managed broker and emulator) leaves its dead letters in the
/// broker's data in the state directory; `sluice dead-letters` starts that broker again and
/// prints each letter as it is stored, oldest first, with the counts by stage and kind on
/// stderr: a ragged CSV row, a value the filter cannot compare (the guest's typed error apart
/// from its text) and a trap.
#[test]
fn dead_letters_outlive_an_embedded_run_and_print_as_stored() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let mut csv = String::from("id,name,value\n");
    for i in 1..=20 {
        let value = match i {
            5 => "abc".to_owned(),
            i => format!("{}.5", i * 37 % 100),
        };
        csv.push_str(&format!("{i},n{i},{value}\n"));
        if i == 10 {
            csv.push_str("999,ragged\n");
        }
    }
    std::fs::write(dir.path().join("rows.csv"), csv).unwrap();
    let pipeline = serde_json::json!({
        "version": 1,
        "name": "letters",
        "source": { "type": "csv", "path": "rows.csv", "key_column": "id" },
        "kafka": { "topic": "rows" },
        "transforms": [
            { "uses": sluice_tests::guests::FILTER,
              "with": { "field": "value", "op": "gt", "value": "50" } },
            { "uses": sluice_tests::guests::POISON_TRAP }
        ],
        "sink": { "type": "snowflake", "database": "E2E", "schema": "RAW", "table": "ROWS" }
    });
    let path = dir.path().join("pipeline.json");
    std::fs::write(&path, pipeline.to_string()).unwrap();
    let (p, s) = (path.to_string_lossy(), state.to_string_lossy());
    // `RUST_LOG` is sluice's: the managed broker does not take it, nor one from a `.env` above
    // its directory (at `info` it would write gigabytes of log in a long run).
    std::fs::write(dir.path().join(".env"), "RUST_LOG=info\n").unwrap();
    let out = std::process::Command::new(sluice_tests::cli::sluice_bin())
        .args(["run", &p, "--until-end", "--no-progress", "--state-dir", &s])
        .current_dir(dir.path())
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains(
            "dead letters: 3 from this run in rows.dlq (`sluice dead-letters` prints every run's)"
        ),
        "{stderr}"
    );
    let broker_log = std::fs::metadata(state.join("broker/nisshi.log"))
        .unwrap()
        .len();
    assert!(broker_log < 4096, "the broker logged {broker_log} bytes");
    // Resumed from a state directory no run used, there is no broker holding the topic: said
    // at once, rather than waiting for the topic forever.
    let out = sluice(
        dir.path(),
        &[
            "run",
            &p,
            "--consume-only",
            "--until-end",
            "--state-dir",
            "elsewhere",
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(!dir.path().join("elsewhere").exists(), "nothing made there");
    assert!(
        stderr.contains(
            "no managed broker's data in elsewhere/broker: no run used that state directory, so \
             the topic rows is in no broker this run can start; pass the --state-dir of the run"
        ),
        "{stderr}"
    );

    let out = sluice(dir.path(), &["dead-letters", &p, "--state-dir", &s]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let printed = String::from_utf8(out.stdout).unwrap();
    let letters: Vec<serde_json::Value> = printed
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let seen: Vec<_> = letters
        .iter()
        .map(|l| {
            (
                l["stage"].as_str().unwrap(),
                l["kind"].as_str().unwrap(),
                l["line"].as_u64(),
                l["error"].clone(),
            )
        })
        .collect();
    // Replay and consume run at once: the letters' order is the order they were made.
    let mut seen = seen;
    seen.sort_by_key(|l| l.0);
    assert_eq!(
        seen,
        [
            ("source", "ragged_row", Some(12), serde_json::Value::Null),
            (
                "transform:filter",
                "guest_error",
                Some(6),
                serde_json::json!({"case": "invalid-value", "field": "value"})
            ),
            (
                "transform:poison_trap",
                "trap",
                Some(15),
                serde_json::Value::Null
            ),
        ],
        "{letters:#?}"
    );
    assert!(
        letters.iter().any(|l| l["payload"] == "999,ragged"),
        "{letters:#?}"
    );
    for (says, why) in [
        ("3 dead letters in rows.dlq:", "the count"),
        ("  source ragged_row: 1", "the source's"),
        ("  transform:filter guest_error: 1", "the filter's"),
        ("  transform:poison_trap trap: 1", "the trap's"),
    ] {
        assert!(stderr.contains(says), "{why}: {stderr}");
    }

    // The author's loop: the printed letters rerun through the pipeline's own chain fail again
    // the same way, each record with the metadata it had in the topic.
    std::fs::write(dir.path().join("letters.jsonl"), &printed).unwrap();
    let expected: String = (letters.iter())
        .filter(|l| l["stage"] != "source")
        .map(|l| {
            let mut e = serde_json::json!({ "stage": l["stage"], "kind": l["kind"] });
            if !l["error"].is_null() {
                e["case"] = l["error"]["case"].clone();
                e["field"] = l["error"]["field"].clone();
            }
            format!("{e}\n")
        })
        .collect();
    std::fs::write(dir.path().join("failures.jsonl"), expected).unwrap();
    let rerun = |extra: &[&str]| {
        let mut args = vec![
            "transform",
            "test",
            "--format",
            "dead-letters",
            "--input",
            "letters.jsonl",
        ];
        args.extend(extra);
        let out = sluice(dir.path(), &args);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(0), "{extra:?}: {stderr}");
        assert!(
            stderr.contains("input  1 dead letter skipped: from bad CSV rows"),
            "{stderr}"
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let rows = rerun(&["--pipeline", &p, "--expect-failures", "failures.jsonl"]);
    assert_eq!(rows, "");
    let rows: Vec<serde_json::Value> = (rerun(&["--component", sluice_tests::guests::META])
        .lines())
    .map(|l| serde_json::from_str(l).unwrap())
    .collect();
    // What the meta guest saw, against the letter's origin.
    let seen = ["topic", "partition", "offset", "key", "timestamp_ms"];
    let got: Vec<Vec<serde_json::Value>> = (rows.iter())
        .map(|r| {
            let mut v = vec![r["id"].clone()];
            v.extend(seen.iter().map(|k| r[*k].clone()));
            v
        })
        .collect();
    let want: Vec<Vec<serde_json::Value>> = (letters.iter())
        .filter(|l| l["stage"] != "source")
        .map(|l| {
            let payload = l["payload"].as_str().unwrap();
            let row: serde_json::Value = serde_json::from_str(payload).unwrap();
            let mut v = vec![row["id"].clone()];
            v.extend(seen.iter().map(|k| l["origin"][*k].clone()));
            v
        })
        .collect();
    assert_eq!(got, want);
    // The filter's letter (id 5, value `abc`) and the trap's (id 13, on line 15).
    let ids: Vec<_> = got.iter().map(|g| g[0].clone()).collect();
    assert!(
        ids.contains(&5.into())
            && ids.contains(&13.into())
            && got.iter().all(|g| g[1] == "rows" && g[5].is_i64()),
        "{got:?}"
    );

    // A pipeline whose dead-letter topic was never written says so.
    let mut other = pipeline.clone();
    other["dead_letter"] = serde_json::json!({ "topic": "none.dlq" });
    std::fs::write(&path, other.to_string()).unwrap();
    let out = sluice(dir.path(), &["dead-letters", &p, "--state-dir", &s]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(out.stdout.is_empty());
    assert!(stderr.contains("no dead letters in none.dlq"), "{stderr}");
}

/// `sluice dead-letters` against a configured broker prints each letter byte for byte as the
/// dead-letter producer stored it and skips, counted, a message that is not a letter. It needs
/// only the pipeline's `kafka` and `dead_letter` sections (the CSV here is long gone). With
/// stdout closed early it stops and says how many it printed. On embedded defaults, a state
/// directory no run used is an error, not "no dead letters". The variables of the file's other
/// sections (a transform's salt, the warehouse) need not be set.
#[test]
fn dead_letters_print_as_stored_and_skip_what_is_not_one() {
    use sluice::dead_letter::{DeadLetter, GuestFault};
    let dir = tempfile::tempdir().unwrap();
    let topic = sluice_tests::broker::unique("letters");
    let dlq = format!("{topic}.dlq");
    let ragged = DeadLetter {
        stage: "source".into(),
        kind: "ragged_row".into(),
        reason: "expected 3 fields, found 2".into(),
        source_file: Some("rows.csv".into()),
        source_file_id: None,
        line: Some(4),
        origin: None,
        payload: b"3,c".to_vec(),
        error: None,
    };
    let rejected = DeadLetter {
        stage: "transform:check".into(),
        kind: "guest_error".into(),
        reason: "missing field `amount`".into(),
        line: Some(7),
        payload: b"{\"id\":6}".to_vec(),
        error: Some(GuestFault {
            case: "missing-field",
            field: Some("amount".into()),
        }),
        ..ragged.clone()
    };
    let kafka = sluice_tests::broker::kafka_config(&topic, serde_json::json!({}));
    let bootstrap = sluice_tests::broker::bootstrap();
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        use rdkafka::producer::FutureRecord;
        let (tx, task) = sluice::source::dlq::spawn(&kafka, &bootstrap, &dlq, 8)
            .await
            .unwrap();
        tx.send(ragged.clone()).await.unwrap();
        let producer = sluice::source::producer::create_producer(&kafka, &bootstrap).unwrap();
        let junk = FutureRecord::<(), _>::to(&dlq).payload("not a letter");
        producer
            .send(junk, std::time::Duration::from_secs(30))
            .await
            .unwrap();
        tx.send(rejected.clone()).await.unwrap();
        drop(tx);
        task.finish().await;
    });
    // Variables of the other sections need not be set where the letters are read.
    let pipeline = serde_json::json!({
        "version": 1,
        "name": "letters",
        "source": { "type": "csv", "path": "${SLUICE_TEST_UNSET_CSV}" },
        "kafka": { "brokers": bootstrap, "topic": topic },
        "transforms": [ { "uses": "gone.wasm", "with": { "salt": "${SLUICE_TEST_UNSET_SALT}" } } ],
        "sink": { "type": "snowflake", "database": "${SLUICE_TEST_UNSET_DB}", "schema": "RAW", "table": "ROWS" }
    });
    let path = dir.path().join("pipeline.json");
    std::fs::write(&path, pipeline.to_string()).unwrap();
    let p = path.to_string_lossy();

    let out = sluice(dir.path(), &["dead-letters", &p]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let mut expected = Vec::new();
    for letter in [&ragged, &rejected] {
        expected.extend(sluice::source::dlq::encode(letter));
        expected.push(b'\n');
    }
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&expected)
    );
    for says in [
        "2 dead letters in ",
        "  source ragged_row: 1\n",
        "  transform:check guest_error: 1\n",
        "  (1 message skipped: not a dead letter)",
    ] {
        assert!(stderr.contains(says), "{says}: {stderr}");
    }

    // Under --log-format json, stderr is JSON events throughout, the counts one of them.
    let out = sluice(dir.path(), &["--log-format", "json", "dead-letters", &p]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(out.stdout, expected);
    let events: Vec<serde_json::Value> = String::from_utf8(out.stderr)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let read = &events.last().unwrap()["fields"];
    assert_eq!(read["message"], "Dead letters read.", "{events:#?}");
    assert_eq!(
        (&read["letters"], &read["skipped"], &read["by_kind"][0]),
        (
            &serde_json::json!(2),
            &serde_json::json!(1),
            &serde_json::json!({"stage": "source", "kind": "ragged_row", "letters": 1})
        )
    );

    // Its reader gone after nothing at all: the command stops quietly and says so.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = std::process::Command::new(sluice_tests::cli::sluice_bin())
        .args(["dead-letters", &p])
        .current_dir(dir.path())
        .stdout(writer)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "no dead letters in {dlq} printed before stdout closed"
        )),
        "{stderr}"
    );

    // Embedded defaults and a state directory no run used.
    let mut embedded = pipeline.clone();
    embedded["kafka"] = serde_json::json!({ "topic": topic });
    std::fs::write(&path, embedded.to_string()).unwrap();
    let out = sluice(dir.path(), &["dead-letters", &p, "--state-dir", "typo"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("no managed broker's data in typo/broker"),
        "{stderr}"
    );
    assert!(!dir.path().join("typo").exists());
}

/// `sluice run` compiles each component once: the chain it checks before it starts anything is
/// the chain it runs. One transform sets `fuel` and the others do not, so the run's engine
/// meters fuel for all, as a check of the others alone would not. The last transform uses the
/// second's component again. From an empty cache the run compiles two components and leaves two
/// cache entries, and `sluice validate` afterwards finds both in the cache.
#[test]
fn a_run_compiles_each_component_once() {
    let dir = tempfile::tempdir().unwrap();
    let (state, cache) = (dir.path().join("state"), dir.path().join("cache"));
    let csv = dir.path().join("rows.csv");
    let expected = write_csv(&csv, 40);
    let topic = sluice_tests::broker::unique("once");
    let pipeline = serde_json::json!({
        "version": 1,
        "name": "once",
        "source": { "type": "csv", "path": csv, "key_column": "id" },
        "kafka": { "brokers": sluice_tests::broker::bootstrap(), "topic": topic, "partitions": 2 },
        "transforms": [
            { "uses": sluice_tests::guests::FILTER, "fuel": 1_000_000_000u64,
              "with": { "field": "value", "op": "gt", "value": "50" } },
            { "uses": sluice_tests::guests::ENRICH, "with": { "uppercase": "name" } },
            { "name": "again", "uses": sluice_tests::guests::ENRICH, "with": { "uppercase": "name" } }
        ],
        "sink": { "type": "snowflake", "database": "E2E", "schema": "RAW", "table": "ROWS" }
    });
    let path = dir.path().join("pipeline.json");
    std::fs::write(&path, pipeline.to_string()).unwrap();
    let (p, s) = (path.to_string_lossy(), state.to_string_lossy());
    let summary = dir.path().join("summary.json");
    let sluice_logged = |args: &[&str]| {
        let out = std::process::Command::new(sluice_tests::cli::sluice_bin())
            .args(args)
            .current_dir(dir.path())
            .env("SLUICE_CACHE_DIR", &cache)
            .env("RUST_LOG", "warn,sluice::transform::runtime=debug")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(0), "{args:?} failed:\n{stderr}");
        let said = |what: &str| stderr.lines().filter(|l| l.contains(what)).count();
        (
            said("compiled a transform"),
            said("loaded a compiled transform from the cache"),
            said("used a component compiled for an earlier transform"),
        )
    };

    let (compiled, from_cache, reused) = sluice_logged(&[
        "run",
        &p,
        "--until-end",
        "--no-progress",
        "--state-dir",
        &s,
        "--summary",
        &summary.to_string_lossy(),
    ]);
    assert_eq!((compiled, from_cache, reused), (2, 0, 1));
    let entries = std::fs::read_dir(cache.join("wasm"))
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().extension() == Some("cwasm".as_ref()))
        .count();
    assert_eq!(entries, 2);
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&summary).unwrap()).unwrap();
    assert_eq!(
        summary["consume"]["rows_loaded"], expected as u64,
        "{summary:#}"
    );

    assert_eq!(sluice_logged(&["validate", &p]), (0, 2, 1));
}

/// A transform with `on_error: fail` stops the run (exit 1) with a summary that still has the
/// consume counts and says how to resume; after the fix, `--consume-only` loads every other row
/// exactly once. The replay, paced to be still running when the transform fails, goes on to the
/// end of the file, unpaced: cut short, the rest of the file would be in no topic for the resume
/// to load.
#[test]
fn a_failing_transform_stops_the_run_and_consume_only_resumes_it() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let csv = dir.path().join("rows.csv");
    const ROWS: u64 = 400;
    write_csv(&csv, ROWS as usize);
    let topic = sluice_tests::broker::unique("failstop");
    let pipeline = |on_error: &str| {
        let p = serde_json::json!({
            "version": 1,
            "name": "failstop",
            "source": { "type": "csv", "path": csv, "key_column": "id",
                        "pacing": { "mode": "rate", "rows_per_sec": 10.0 } },
            "kafka": { "brokers": sluice_tests::broker::bootstrap(), "topic": topic, "partitions": 2 },
            "transforms": [{ "uses": sluice_tests::guests::POISON_TRAP, "on_error": on_error }],
            "sink": { "type": "snowflake", "database": "E2E", "schema": "RAW", "table": "ROWS" }
        });
        let path = dir.path().join(format!("{on_error}.json"));
        std::fs::write(&path, p.to_string()).unwrap();
        path.to_string_lossy().into_owned()
    };
    let summary_file = dir.path().join("summary.json");
    let (fail, drop) = (pipeline("fail"), pipeline("drop"));
    let s = state.to_string_lossy().into_owned();
    let sf = summary_file.to_string_lossy().into_owned();
    let out = sluice(
        dir.path(),
        &[
            "--log-format",
            "json",
            "run",
            &fail,
            "--until-end",
            "--no-progress",
            "--state-dir",
            &s,
            "--summary",
            &sf,
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    // With JSON logs a failed run ends like any failed command: an ERROR event with the reason.
    let last: serde_json::Value = serde_json::from_str(stderr.lines().last().unwrap_or(""))
        .unwrap_or_else(|e| panic!("last line not JSON ({e}):\n{stderr}"));
    assert_eq!(last["level"], "ERROR", "{last:#}");
    assert_eq!(last["fields"]["exit_code"], 1, "{last:#}");
    let message = last["fields"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("did not finish cleanly") && message.contains("transform poison_trap"),
        "{message}"
    );
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&summary_file).unwrap()).unwrap();
    let transform = &summary["consume"]["transforms"][0];
    assert_eq!(transform["rows_failed"], 1, "{summary:#}");
    assert_eq!(
        transform["rows_failed_by_kind"],
        serde_json::json!({ "trap": 1 }),
        "{summary:#}"
    );
    assert!(transform["rows_in"].as_u64().unwrap() >= 1, "{summary:#}");
    let count = |v: &serde_json::Value| v.as_u64().unwrap_or_else(|| panic!("{summary:#}"));
    // The transform failed on the 13th row, long before the replay was done: the replay went on
    // to the end of the file, without waiting out its pacing (40 s at 10 rows/s; the duration
    // counts the emulator's start too).
    assert_eq!(summary["replay"]["rows_produced"], ROWS, "{summary:#}");
    assert!(
        count(&summary["duration_ms"]) < 32_000,
        "the replay was still paced after the failure: {summary:#}"
    );
    // The records of the batch it stopped on entered the chain, and are counted as such.
    let consume = &summary["consume"];
    assert!(count(&consume["records_unfinished"]) >= 1, "{summary:#}");
    assert_eq!(
        count(&consume["records"]) + count(&consume["records_unfinished"]),
        count(&transform["rows_in"]) + count(&consume["undecodable"]),
        "{summary:#}"
    );
    // While a run holds the state directory, its summary is the placeholder it wrote as it
    // started: `verify` says so rather than report a run that died.
    let mut placeholder = summary.clone();
    placeholder["unfinished"] = true.into();
    let pf = dir.path().join("placeholder.json");
    std::fs::write(&pf, placeholder.to_string()).unwrap();
    let lock = std::fs::File::options()
        .write(true)
        .open(state.join("lock"))
        .unwrap();
    lock.lock().unwrap();
    let pf = pf.to_string_lossy();
    let out = sluice(
        dir.path(),
        &["verify", &fail, "--state-dir", &s, "--summary", &pf],
    );
    let stderr_verify = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr_verify}");
    assert!(
        stderr_verify.contains("a sluice run is still going on the state directory"),
        "{stderr_verify}"
    );
    assert!(!stderr_verify.contains("did not finish"), "{stderr_verify}");
    std::mem::drop(lock);
    // `verify` fails the run, but its flow through the chain adds up.
    let out = sluice(
        dir.path(),
        &["verify", &fail, "--state-dir", &s, "--summary", &sf],
    );
    let report = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{report}");
    assert!(report.contains("[ ok ] transform poison_trap:"), "{report}");
    assert!(
        stderr.contains("The replay goes on to the end of"),
        "{stderr}"
    );
    let problems = summary["problems"].to_string();
    assert!(problems.contains("transform poison_trap"), "{problems}");
    assert!(
        problems.contains("stopped the run in the batch of records"),
        "{problems}"
    );
    // Id 13, the poison row, is on line 15 of the file.
    assert!(
        problems.contains("(line 15 of the CSV) (trap)"),
        "{problems}"
    );
    assert!(
        problems.contains("`sluice run --consume-only` resumes"),
        "{problems}"
    );
    assert!(stderr.contains("--consume-only"), "{stderr}");

    // The resumed run logs JSON: every stderr line is an event, the summary the last one.
    let out = sluice(
        dir.path(),
        &[
            "--log-format",
            "json",
            "run",
            &drop,
            "--consume-only",
            "--until-end",
            "--no-progress",
            "--state-dir",
            &s,
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let events: Vec<serde_json::Value> = stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let finished = events
        .iter()
        .find(|e| e["fields"]["message"] == "Run finished.")
        .unwrap_or_else(|| panic!("no summary event: {stderr}"));
    assert_eq!(finished["fields"]["ok"], true, "{finished:#}");
    let resumed = &finished["fields"]["summary"]["consume"];
    assert_eq!(resumed["transforms"][0]["rows_failed"], 1, "{finished:#}");
    // Dropped on purpose: counted as such, not "nothing lost".
    assert_eq!(resumed["records_dropped"], 1, "{finished:#}");
    // The failed record under `drop` is logged once at WARN, with its reason.
    let warned: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("A transform failed a record"))
        .collect();
    assert_eq!(warned.len(), 1, "{stderr}");
    assert!(warned[0].contains("poison row"), "{stderr}");
    let db = state.join("snowflake").to_string_lossy().into_owned();
    let rows = python_query(
        &db,
        "SELECT COUNT(*), COUNT(DISTINCT ID), COUNT_IF(ID = 13) FROM E2E.RAW.ROWS",
    );
    assert_eq!(
        rows[0],
        [ROWS - 1, ROWS - 1, 0]
            .map(serde_json::Value::from)
            .to_vec()
    );
    // `verify` of the resume says, partition by partition, that the warehouse holds what it
    // committed, and where the topic ends.
    let out = sluice(dir.path(), &["verify", &drop, "--state-dir", &s]);
    let report = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{report}");
    let partitions: Vec<&str> = (report.lines())
        .filter(|l| l.starts_with("  [ ok ] partition "))
        .collect();
    assert!(!partitions.is_empty(), "{report}");
    for line in partitions {
        let next = line
            .split("next offset ")
            .nth(1)
            .and_then(|r| r.split(',').next());
        let ran = line
            .split("this run committed ")
            .nth(1)
            .and_then(|r| r.split(',').next());
        let end = line.split("topic end ").nth(1);
        assert!(next.is_some() && next == ran && ran == end, "{line}");
    }
}

/// A sink that fails part-way still committed the files it loaded before: the summary counts
/// them, so that the table's growth is accounted for. The failure is the emulator's: fakesnow
/// 0.12.1 cannot COPY a CSV file whose every row holds a carriage return in a string (see the
/// README), so the second file of this one partition fails every time.
#[test]
fn a_sink_failing_part_way_still_counts_what_it_loaded() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("rows.csv");
    std::fs::write(&csv, "id,name\n1,a\n2,b\n3,\"c\rd\"\n4,\"e\rf\"\n").unwrap();
    let topic = sluice_tests::broker::unique("sinkfail");
    let pipeline = serde_json::json!({
        "version": 1,
        "name": "sinkfail",
        "source": { "type": "csv", "path": csv },
        "kafka": { "brokers": sluice_tests::broker::bootstrap(), "topic": topic, "partitions": 1 },
        "sink": { "type": "snowflake", "database": "E2E", "schema": "RAW", "table": "ROWS",
                  "batch": { "max_rows": 2, "max_latency_ms": 60000 } }
    });
    let path = dir.path().join("pipeline.json");
    std::fs::write(&path, pipeline.to_string()).unwrap();
    let state = dir.path().join("state");
    let summary_file = dir.path().join("summary.json");
    let tmp = dir.path().join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    let out = std::process::Command::new(sluice_tests::cli::sluice_bin())
        .args([
            "run",
            &path.to_string_lossy(),
            "--until-end",
            "--no-progress",
        ])
        .arg("--state-dir")
        .arg(&state)
        .arg("--summary")
        .arg(&summary_file)
        .env("TMPDIR", &tmp)
        .current_dir(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    // The files PUT to the emulator's stage (rows of the file) are not left behind.
    let left: Vec<_> = std::fs::read_dir(&tmp)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(left.is_empty(), "{left:?}");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&summary_file).unwrap()).unwrap();
    let db = state.join("snowflake").to_string_lossy().into_owned();
    let in_table = python_query(&db, "SELECT COUNT(*) FROM E2E.RAW.ROWS")[0][0].clone();
    assert_eq!(in_table, 2, "{stderr}");
    let consume = &summary["consume"];
    assert_eq!(consume["rows_loaded"], 2, "{summary:#}");
    // The one file committed, not each try of the failing one.
    assert_eq!(consume["files"], 1, "{summary:#}");
    assert_eq!(consume["table_rows_after"], 2, "{summary:#}");
    assert!(
        summary["problems"]
            .to_string()
            .contains("Snowflake sink failed"),
        "{summary:#}"
    );
    // Nothing but the sink's failure is reported: no gap between the table and the summary.
    assert!(
        !summary["problems"].to_string().contains("warehouse:"),
        "{summary:#}"
    );
}

/// A stop does not wait for a batch being run again a record at a time: the whole batch ran
/// past its time limit, so each of its records runs alone (0.5 s each here, 30 s for the batch),
/// and the stop came during that. The run ends within its 15 s --drain-timeout (wide, for a
/// loaded machine: the call under way when the stop came, and the sink's close, count in it),
/// and the batch's records are left in the topic, counted as unfinished.
#[test]
fn a_stop_does_not_wait_for_a_batch_being_isolated() {
    let dir = tempfile::tempdir().unwrap();
    let mut csv = String::from("id,spin_ms\n");
    for id in 100..160 {
        csv.push_str(&format!("{id},500\n"));
    }
    std::fs::write(dir.path().join("rows.csv"), csv).unwrap();
    let pipeline = serde_json::json!({
        "version": 1,
        "name": "isolating",
        "source": { "type": "csv", "path": "rows.csv" },
        "kafka": { "brokers": sluice_tests::broker::bootstrap(),
                   "topic": sluice_tests::broker::unique("isolating"), "partitions": 1 },
        "transforms": [{ "name": "slow", "uses": sluice_tests::guests::POISON_TRAP,
                         "timeout_ms": 1000, "on_error": "drop" }],
        "sink": { "type": "snowflake", "database": "E2E", "schema": "RAW", "table": "ROWS" }
    });
    let path = dir.path().join("pipeline.json");
    std::fs::write(&path, pipeline.to_string()).unwrap();
    let summary = dir.path().join("summary.json");
    let mut child = std::process::Command::new(sluice_tests::cli::sluice_bin())
        .args([
            "run",
            &path.to_string_lossy(),
            "--no-progress",
            "--drain-timeout",
            "15",
        ])
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .arg("--summary")
        .arg(&summary)
        .current_dir(dir.path())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Past the first batch's time limit, once the run has started (a few seconds), and well
    // before the re-run of its 60 records ends.
    let (started, reader) = watch_stderr(&mut child, "Partitions assigned");
    started
        .recv_timeout(std::time::Duration::from_secs(60))
        .expect("the consumer starts");
    std::thread::sleep(std::time::Duration::from_millis(5000));
    let stopped = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(stopped.success());
    let code = exit_within(&mut child, 60);
    let stderr = reader.join().unwrap();
    assert_eq!(code, Some(0), "{stderr}");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&summary).unwrap()).unwrap();
    let unfinished = summary["consume"]["records_unfinished"].as_u64().unwrap();
    assert!(unfinished > 0, "{summary:#}");
    assert!(
        summary["consume"]["rows_loaded"].as_u64().unwrap() + unfinished <= 60,
        "{summary:#}"
    );
}

/// A bounded consume of a topic that does not exist (a misspelt `kafka.topic`) fails at once,
/// saying so; it waited for the topic to be made, for good.
#[test]
fn a_bounded_consume_of_a_missing_topic_fails() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("rows.csv");
    write_csv(&csv, 3);
    let topic = sluice_tests::broker::unique("missing");
    let pipeline = serde_json::json!({
        "version": 1,
        "name": "missing",
        "source": { "type": "csv", "path": csv },
        "kafka": { "brokers": sluice_tests::broker::bootstrap(), "topic": topic },
        "sink": { "type": "snowflake", "database": "E2E", "schema": "RAW", "table": "ROWS" }
    });
    let path = dir.path().join("pipeline.json");
    std::fs::write(&path, pipeline.to_string()).unwrap();
    let child = std::process::Command::new(sluice_tests::cli::sluice_bin())
        .args([
            "run",
            &path.to_string_lossy(),
            "--consume-only",
            "--until-end",
        ])
        .args(["--no-progress", "--state-dir"])
        .arg(dir.path().join("state"))
        .current_dir(dir.path())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (code, stderr) = finish_within(child, 60);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("topic {topic} does not exist")),
        "{stderr}"
    );
}

/// A pipeline whose name the offsets table does not know, sharing a consumer group that an
/// earlier run moved to the topic's end, starts at the group's offsets: its `--until-end` drain
/// ends (it waited for loads of records that never come), and the run warns that the records
/// before them are not loaded into its table.
#[test]
fn until_end_ends_when_the_group_is_ahead_of_the_warehouse() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("rows.csv");
    write_csv(&csv, 30);
    let topic = sluice_tests::broker::unique("groupahead");
    let pipeline = |name: &str, table: &str| {
        let p = serde_json::json!({
            "version": 1,
            "name": name,
            "source": { "type": "csv", "path": csv },
            "kafka": { "brokers": sluice_tests::broker::bootstrap(), "topic": topic,
                       "partitions": 2, "group_id": format!("{topic}-group") },
            "sink": { "type": "snowflake", "database": "E2E", "schema": "RAW", "table": table }
        });
        let path = dir.path().join(format!("{name}.json"));
        std::fs::write(&path, p.to_string()).unwrap();
        path
    };
    let state = dir.path().join("state");
    let first = pipeline("first", "ROWS");
    let out = sluice(
        dir.path(),
        &[
            "run",
            &first.to_string_lossy(),
            "--until-end",
            "--no-progress",
            "--state-dir",
        ]
        .into_iter()
        .chain([state.to_str().unwrap()])
        .collect::<Vec<_>>(),
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let second = pipeline("second", "ROWS2");
    let child = std::process::Command::new(sluice_tests::cli::sluice_bin())
        .args([
            "run",
            &second.to_string_lossy(),
            "--consume-only",
            "--until-end",
        ])
        .args(["--no-progress", "--state-dir"])
        .arg(&state)
        .current_dir(dir.path())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (code, stderr) = finish_within(child, 120);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains("start at the consumer group's committed offsets")
            && stderr.contains("give the pipeline a new kafka.group_id"),
        "{stderr}"
    );
    assert!(stderr.contains("consume    0 records"), "{stderr}");
}

/// A load that fails while no records arrive ends an unbounded run with the sink's error. The
/// failure used to be found only when the next record was handed to the sink, so a run whose
/// last batch failed sat idle, saying nothing, until it was stopped.
#[test]
fn a_sink_failing_while_the_run_is_idle_ends_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("rows.csv");
    // fakesnow cannot COPY a carriage return: the last batch, alone, fails.
    std::fs::write(&csv, "id,name\n1,a\n2,b\n3,\"c\rd\"\n").unwrap();
    let pipeline = serde_json::json!({
        "version": 1,
        "name": "idlefail",
        "source": { "type": "csv", "path": csv },
        "kafka": { "brokers": sluice_tests::broker::bootstrap(),
                   "topic": sluice_tests::broker::unique("idlefail"), "partitions": 1 },
        "sink": { "type": "snowflake", "database": "E2E", "schema": "RAW", "table": "ROWS",
                  "batch": { "max_rows": 2, "max_latency_ms": 300 } }
    });
    let path = dir.path().join("pipeline.json");
    std::fs::write(&path, pipeline.to_string()).unwrap();
    let child = std::process::Command::new(sluice_tests::cli::sluice_bin())
        .args([
            "run",
            &path.to_string_lossy(),
            "--no-progress",
            "--state-dir",
        ])
        .arg(dir.path().join("state"))
        .current_dir(dir.path())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (code, stderr) = finish_within(child, 90);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("the Snowflake sink failed") && stderr.contains("2 rows loaded"),
        "{stderr}"
    );
}

/// A replay that fails part way (a bad row under `on_error: fail`) still says in its summary
/// what it put in the topic, which a resume loads: the summary had no replay counts at all. The
/// row that stopped it waits in the file, unread, rather than showing as a row lost on the way to
/// the topic.
#[test]
fn a_replay_failing_part_way_still_counts_what_it_produced() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("rows.csv");
    std::fs::write(&csv, "id,name\n1,a\n2,b\n3,c\n4,d,extra\n5,e\n").unwrap();
    let topic = sluice_tests::broker::unique("replayfail");
    let pipeline = serde_json::json!({
        "version": 1,
        "name": "replayfail",
        "source": { "type": "csv", "path": csv, "on_error": "fail" },
        "kafka": { "brokers": sluice_tests::broker::bootstrap(), "topic": topic, "partitions": 1 },
        "sink": { "type": "snowflake", "database": "E2E", "schema": "RAW", "table": "ROWS" }
    });
    let path = dir.path().join("pipeline.json");
    std::fs::write(&path, pipeline.to_string()).unwrap();
    let summary_file = dir.path().join("summary.json");
    let out = sluice(
        dir.path(),
        &[
            "run",
            &path.to_string_lossy(),
            "--replay-only",
            "--no-progress",
            "--state-dir",
            &dir.path().join("state").to_string_lossy(),
            "--summary",
            &summary_file.to_string_lossy(),
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&summary_file).unwrap()).unwrap();
    let in_topic = sluice_tests::broker::read_topic(&topic).len();
    assert_eq!(in_topic, 3, "{stderr}");
    let replay = &summary["replay"];
    assert_eq!(replay["rows_read"], 3, "{summary:#}");
    assert_eq!(replay["rows_produced"], in_topic, "{summary:#}");
    assert_eq!(replay["end_offsets"]["0"], in_topic, "{summary:#}");
    let problems = summary["problems"].to_string();
    assert!(problems.contains("rows.csv:5"), "{summary:#}");
    assert!(!problems.contains("rows read but"), "{summary:#}");
    assert!(stderr.contains("3 produced"), "{stderr}");
}

/// A second sluice on a state directory that a live one is using (its managed broker's SQLite
/// files, its emulator's database) is refused with a message saying what to do, before it
/// starts anything there.
#[test]
fn a_state_directory_in_use_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    let lock = std::fs::File::create(state.join("lock")).unwrap();
    lock.lock().unwrap();
    let path = dir.path().join("pipeline.json");
    let csv = dir.path().join("rows.csv");
    write_csv(&csv, 3);
    let pipeline = serde_json::json!({
        "version": 1,
        "name": "locked",
        "source": { "type": "csv", "path": csv },
        "kafka": { "topic": "locked" },
        "sink": { "type": "snowflake", "database": "E2E", "schema": "RAW", "table": "ROWS" }
    });
    std::fs::write(&path, pipeline.to_string()).unwrap();
    // The summary of the run holding the lock is its own to write.
    let last = state.join("last-run.json");
    std::fs::write(&last, "the live run's").unwrap();
    let args = [
        "run",
        &path.to_string_lossy(),
        "--until-end",
        "--no-progress",
        "--state-dir",
        &state.to_string_lossy(),
    ];
    let out = sluice(dir.path(), &args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("another sluice process is using the state directory")
            && stderr.contains("--state-dir"),
        "{stderr}"
    );
    assert!(!stderr.contains("Started managed"), "{stderr}");
    assert!(!state.join("broker").exists(), "{stderr}");
    assert_eq!(std::fs::read_to_string(&last).unwrap(), "the live run's");
    // Once the lock is free, a run that cannot even start its broker leaves a summary saying it
    // did not finish, not the earlier run's for `verify` to pass.
    drop(lock);
    let out = std::process::Command::new(sluice_tests::cli::sluice_bin())
        .args(args)
        .current_dir(dir.path())
        .env("SLUICE_NISSHI", dir.path().join("no-such-nisshi"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    // Said at once, rather than after waiting for a broker that never started.
    assert!(stderr.contains("nisshi broker not found at"), "{stderr}");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&last).unwrap()).unwrap();
    assert_eq!(summary["ok"], false, "{summary}");
    assert!(
        summary["problems"][0]
            .as_str()
            .unwrap()
            .starts_with("the run did not finish"),
        "{summary}"
    );
    // No temporary file is left beside it.
    let names: Vec<_> = std::fs::read_dir(&state)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.contains("last-run"))
        .collect();
    assert_eq!(names, ["last-run.json"]);
}

/// A value from a secret-named variable is masked as `${VAR}` wherever sluice's own output would
/// show it: here it is (oddly) part of the topic name, which the replay logs and the summary
/// holds.
#[test]
fn a_secret_from_the_environment_is_masked_in_logs_and_summaries() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("rows.csv");
    write_csv(&csv, 5);
    let secret = "Hunter2-never-shown";
    let pipeline = serde_json::json!({
        "version": 1,
        "name": "masked",
        "source": { "type": "csv", "path": csv },
        "kafka": { "brokers": sluice_tests::broker::bootstrap(),
                   "topic": format!("{}-${{SLUICE_TEST_TOKEN}}", sluice_tests::broker::unique("masked")) },
        "sink": { "type": "snowflake", "database": "E2E", "schema": "RAW", "table": "ROWS" }
    });
    let path = dir.path().join("pipeline.json");
    std::fs::write(&path, pipeline.to_string()).unwrap();
    let summary_file = dir.path().join("summary.json");
    let out = std::process::Command::new(sluice_tests::cli::sluice_bin())
        .args([
            "replay",
            &path.to_string_lossy(),
            "--no-progress",
            "--state-dir",
        ])
        .arg(dir.path().join("state"))
        .arg("--summary")
        .arg(&summary_file)
        .env("SLUICE_TEST_TOKEN", secret)
        .current_dir(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("-${SLUICE_TEST_TOKEN}"), "{stderr}");
    let summary = std::fs::read_to_string(&summary_file).unwrap();
    for (what, text) in [("stderr", &*stderr), ("summary", &summary)] {
        assert!(
            !text.contains("Hunter2"),
            "{what} shows the secret:\n{text}"
        );
    }
    // The summary holds the topic masked; verify still knows it for this pipeline's.
    let verified = std::process::Command::new(sluice_tests::cli::sluice_bin())
        .args(["verify", &path.to_string_lossy(), "--summary"])
        .arg(&summary_file)
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .env("SLUICE_TEST_TOKEN", secret)
        .current_dir(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&verified.stdout);
    assert_eq!(
        verified.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&verified.stderr)
    );
    assert!(!stdout.contains("Hunter2"), "{stdout}");
    assert!(
        stdout.contains("verify: ok, every row of the file accounted for in the topic (a replay-only run loads nothing"),
        "{stdout}"
    );
    // A secret with both quotes and a control character, in JSON output, where each is escaped
    // (and the message may quote it with `{:?}` first): no topic may hold these, so the run
    // fails and its error, which names the topic, is the JSON log's last event.
    let out = std::process::Command::new(sluice_tests::cli::sluice_bin())
        .args([
            "replay",
            &path.to_string_lossy(),
            "--no-progress",
            "--log-format",
            "json",
            "--state-dir",
        ])
        .arg(dir.path().join("state"))
        .arg("--summary")
        .arg(&summary_file)
        .env("SLUICE_TEST_TOKEN", "Hunter2 it's \"quoted\"\u{1}")
        .current_dir(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_ne!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("${SLUICE_TEST_TOKEN}"), "{stderr}");
    for (what, text) in [("stderr", &*stderr), ("stdout", &*stdout)] {
        assert!(
            !text.contains("Hunter2") && !text.contains("quoted"),
            "{what} shows the secret:\n{text}"
        );
    }
    // Masked inside its strings, each event is still JSON.
    for line in stderr.lines().filter(|l| !l.is_empty()) {
        serde_json::from_str::<serde_json::Value>(line)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    }
}

/// A full run also loads messages an earlier run left in the topic without loading them (here a
/// `--replay-only` run): each replay is a new feed. `verify` accounts for them from the offsets
/// the run started at, rather than failing a run that lost nothing.
#[test]
fn verify_accounts_for_messages_an_earlier_run_left_in_the_topic() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("rows.csv");
    write_csv(&csv, 30);
    let pipeline = serde_json::json!({
        "version": 1,
        "name": "leftover",
        "source": { "type": "csv", "path": csv },
        "kafka": { "brokers": sluice_tests::broker::bootstrap(),
                   "topic": sluice_tests::broker::unique("leftover"), "partitions": 2 },
        "sink": { "type": "snowflake", "database": "E2E", "schema": "RAW", "table": "ROWS" }
    });
    let path = dir.path().join("pipeline.json");
    std::fs::write(&path, pipeline.to_string()).unwrap();
    let state = dir.path().join("state");
    let (p, s) = (path.to_string_lossy(), state.to_string_lossy());
    let summary_file = dir.path().join("summary.json");
    let sf = summary_file.to_string_lossy();
    let replayed = sluice(
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
    let stderr = String::from_utf8_lossy(&replayed.stderr);
    assert!(replayed.status.success(), "{stderr}");
    assert!(!stderr.contains("already holds"), "{stderr}");
    let out = sluice(
        dir.path(),
        &[
            "run",
            &p,
            "--until-end",
            "--no-progress",
            "--state-dir",
            &s,
            "--summary",
            &sf,
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("The topic already holds messages no run has loaded")
            && stderr.contains("messages=30"),
        "{stderr}"
    );
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&summary_file).unwrap()).unwrap();
    assert_eq!(summary["replay"]["rows_produced"], 30, "{summary:#}");
    assert_eq!(summary["consume"]["records"], 60, "{summary:#}");
    assert!(
        summary["warnings"][0].as_str().is_some_and(
            |w| w.starts_with("the topic's offsets were already at 30 before this replay")
        ),
        "{summary:#}"
    );
    let db = state.join("snowflake").to_string_lossy().into_owned();
    let rows = python_query(&db, "SELECT COUNT(*), COUNT(DISTINCT ID) FROM E2E.RAW.ROWS");
    assert_eq!(
        rows[0],
        [serde_json::json!(60), serde_json::json!(30)],
        "{stderr}"
    );

    let verified = sluice(
        dir.path(),
        &["verify", &p, "--state-dir", &s, "--summary", &sf],
    );
    let stdout = String::from_utf8_lossy(&verified.stdout);
    assert_eq!(verified.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.contains("consumed 60 records = 30 produced + 30 left in the topic"),
        "{stdout}"
    );
    // Every count matches, and verify still says that the table holds rows twice.
    assert!(
        stdout.contains(
            "  warning (from the run): the topic's offsets were already at 30 before this replay"
        ),
        "{stdout}"
    );

    // A replay alone cannot tell what was loaded, but it says the topic is not empty.
    let replayed = sluice(
        dir.path(),
        &["replay", &p, "--no-progress", "--state-dir", &s],
    );
    let stderr = String::from_utf8_lossy(&replayed.stderr);
    assert!(replayed.status.success(), "{stderr}");
    assert!(
        stderr.contains("The topic already holds messages") && stderr.contains("messages=60"),
        "{stderr}"
    );
}

/// Reads `child`'s piped stderr on a thread: the receiver gets a message at each line holding
/// `marker`, and the thread returns the whole text.
fn watch_stderr(
    child: &mut std::process::Child,
    marker: &'static str,
) -> (
    std::sync::mpsc::Receiver<()>,
    std::thread::JoinHandle<String>,
) {
    let stderr = child.stderr.take().unwrap();
    let (seen_tx, seen) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        for line in std::io::BufRead::lines(std::io::BufReader::new(stderr)).map_while(Result::ok) {
            if line.contains(marker) {
                let _ = seen_tx.send(());
            }
            text.push_str(&line);
            text.push('\n');
        }
        text
    });
    (seen, reader)
}

/// Waits up to `secs` for `child` to exit (killing it then: its code is `None`) and returns its
/// exit code.
fn exit_within(child: &mut std::process::Child, secs: u64) -> Option<i32> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while child.try_wait().unwrap().is_none() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let _ = child.kill();
    child.wait().unwrap().code()
}

/// [`exit_within`], with the child's piped stderr.
fn finish_within(mut child: std::process::Child, secs: u64) -> (Option<i32>, String) {
    let code = exit_within(&mut child, secs);
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    (code, stderr)
}

/// Two members of one consumer group, each `--consume-only --until-end`, on one warehouse: each
/// ends once the warehouse holds every partition's end offset, whoever loaded it (a member waiting
/// for its own loads of partitions the other held never ended), and every row is loaded once.
#[test]
fn two_members_until_end_both_end_with_every_row_loaded_once() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("rows.csv");
    write_csv(&csv, 3000);
    let topic = sluice_tests::broker::unique("members");
    let table = topic.to_uppercase().replace(['-', '.'], "_");
    let pipeline = serde_json::json!({
        "version": 1,
        "name": topic,
        "source": { "type": "csv", "path": csv, "key_column": "id" },
        "kafka": { "brokers": sluice_tests::broker::bootstrap(), "topic": topic, "partitions": 4 },
        "sink": { "type": "snowflake", "account_url": sluice_tests::snowflake::emulator().url(),
                  "account": "A", "user": "U", "password": "${SLUICE_TEST_PASSWORD}",
                  "database": "MEMBERS", "schema": "RAW", "table": table,
                  "batch": { "max_rows": 100, "max_latency_ms": 200 } }
    });
    let path = dir.path().join("pipeline.json");
    std::fs::write(&path, pipeline.to_string()).unwrap();
    let start = |state: &str, how: &[&str]| {
        std::process::Command::new(sluice_tests::cli::sluice_bin())
            .args(["run", &path.to_string_lossy(), "--no-progress"])
            .args(how)
            .arg("--state-dir")
            .arg(dir.path().join(state))
            .env("SLUICE_TEST_PASSWORD", "pw")
            .current_dir(dir.path())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let finish = |child| finish_within(child, 120);
    let (code, stderr) = finish(start("replay", &["--replay-only"]));
    assert_eq!(code, Some(0), "{stderr}");
    let members = ["a", "b"].map(|m| start(m, &["--consume-only", "--until-end"]));
    for (member, (code, stderr)) in members.into_iter().map(finish).enumerate() {
        assert_eq!(code, Some(0), "member {member} (killed if None):\n{stderr}");
    }
    let rows = sluice_tests::snowflake::python_query(&format!(
        "SELECT COUNT(*), COUNT(DISTINCT ID) FROM MEMBERS.RAW.{table}"
    ));
    assert_eq!(
        rows,
        vec![vec![serde_json::json!(3000), serde_json::json!(3000)]]
    );
}

/// A stop against a warehouse that no longer answers does not wait out HTTP timeouts and
/// retries (minutes): after `--drain-timeout` the process exits 1 and says what is kept. The
/// "warehouse" here accepts connections and never answers.
#[test]
fn a_stop_against_a_hung_warehouse_ends_after_the_drain_timeout() {
    let hole = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = hole.local_addr().unwrap().port();
    let (accepted, connected) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in hole.incoming().flatten() {
            held.push(conn);
            let _ = accepted.send(());
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("rows.csv");
    write_csv(&csv, 5);
    let pipeline = serde_json::json!({
        "version": 1,
        "name": "hung",
        "source": { "type": "csv", "path": csv },
        "kafka": { "brokers": sluice_tests::broker::bootstrap(),
                   "topic": sluice_tests::broker::unique("hung") },
        "sink": { "type": "snowflake", "account_url": format!("http://127.0.0.1:{port}"),
                  "account": "A", "user": "U", "password": "${SLUICE_TEST_PASSWORD}",
                  "database": "E2E", "schema": "RAW", "table": "ROWS" }
    });
    let path = dir.path().join("pipeline.json");
    std::fs::write(&path, pipeline.to_string()).unwrap();
    let mut child = std::process::Command::new(sluice_tests::cli::sluice_bin())
        .args([
            "run",
            &path.to_string_lossy(),
            "--until-end",
            "--no-progress",
        ])
        .args(["--drain-timeout", "2", "--state-dir"])
        .arg(dir.path().join("state"))
        .arg("--summary")
        .arg(dir.path().join("summary.json"))
        .env("SLUICE_TEST_PASSWORD", "never-answered")
        .current_dir(dir.path())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The sink's login is in flight, and will not be answered.
    connected
        .recv_timeout(std::time::Duration::from_secs(60))
        .expect("the sink connects to the warehouse");
    std::thread::sleep(std::time::Duration::from_millis(300));
    // Twice, as GNU `timeout` does (to the process, then to its group): one stop, not two. The
    // second once the first is taken (a signal sent while one is pending merges with it), and
    // at once, from this process.
    let (stopping, reader) = watch_stderr(&mut child, "stopping after in-flight work");
    sluice_tests::cli::terminate(&child);
    stopping
        .recv_timeout(std::time::Duration::from_secs(30))
        .expect("the run takes the first signal");
    sluice_tests::cli::terminate(&child);
    // Far below the request timeout (300 s) and its retries; the drain timeout is 2 s.
    let code = exit_within(&mut child, 60);
    let stderr = reader.join().unwrap();
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("in-flight work did not finish within 2s (--drain-timeout)")
            && stderr.contains("`sluice run --consume-only` resumes"),
        "{stderr}"
    );
    // The summary files say the run did not finish, rather than holding an earlier run's.
    for file in [
        dir.path().join("summary.json"),
        dir.path().join("state/last-run.json"),
    ] {
        let summary: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        assert_eq!(summary["ok"], false, "{summary:#}");
        assert!(
            summary["problems"][0]
                .as_str()
                .is_some_and(|p| p.starts_with("the run did not finish")),
            "{summary:#}"
        );
    }
}

/// A warehouse that cannot be reached is named in the error, with the cause, in the retries'
/// warnings too.
#[test]
fn an_unreachable_warehouse_is_named_with_its_cause() {
    // Port 1 (tcpmux) is privileged and unused here: connecting is refused at once.
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("rows.csv");
    write_csv(&csv, 3);
    let url = "http://127.0.0.1:1".to_owned();
    let pipeline = serde_json::json!({
        "version": 1,
        "name": "unreachable",
        "source": { "type": "csv", "path": csv },
        "kafka": { "brokers": sluice_tests::broker::bootstrap(),
                   "topic": sluice_tests::broker::unique("unreachable") },
        "sink": { "type": "snowflake", "account_url": url, "account": "A", "user": "U",
                  "password": "${SLUICE_TEST_PASSWORD}",
                  "database": "E2E", "schema": "RAW", "table": "ROWS" }
    });
    let path = dir.path().join("pipeline.json");
    std::fs::write(&path, pipeline.to_string()).unwrap();
    let out = std::process::Command::new(sluice_tests::cli::sluice_bin())
        .args([
            "run",
            &path.to_string_lossy(),
            "--until-end",
            "--no-progress",
            "--state-dir",
        ])
        .arg(dir.path().join("state"))
        .env("SLUICE_TEST_PASSWORD", "never-sent")
        .current_dir(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with(&format!("error: cannot connect to Snowflake at {url}: "))
            && last.contains("Connection refused"),
        "{stderr}"
    );
    let retry = stderr
        .lines()
        .find(|l| l.contains("retrying snowflake request"))
        .unwrap_or_else(|| panic!("no retry warning:\n{stderr}"));
    assert!(retry.contains("Connection refused"), "{retry}");
}

/// A topic made again (here: the managed broker's data removed, as on a new machine, with the
/// warehouse kept) starts its offsets at 0 again, below what the offsets table says this pipeline
/// loaded: its records would be skipped as loaded. The run refuses before it replays or
/// consumes anything, a consume-only run too, and says how to load the new topic, which works.
#[test]
fn a_topic_made_again_is_not_taken_for_the_one_loaded() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let csv = dir.path().join("rows.csv");
    let pipeline = |name: &str| {
        let p = serde_json::json!({
            "version": 1,
            "name": name,
            "source": { "type": "csv", "path": "rows.csv" },
            "kafka": { "topic": "rows", "partitions": 2 },
            "sink": { "type": "snowflake", "database": "E2E", "schema": "RAW", "table": "ROWS" }
        });
        let path = dir.path().join(format!("{name}.json"));
        std::fs::write(&path, p.to_string()).unwrap();
        path.to_string_lossy().into_owned()
    };
    let s = state.to_string_lossy().into_owned();
    let run = |path: &str, mode: &[&str]| {
        let mut args = vec!["run", path, "--no-progress", "--state-dir", &s];
        args.extend(mode);
        let out = sluice(dir.path(), &args);
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let db = state.join("snowflake").to_string_lossy().into_owned();
    let rows_in_table = || {
        python_query(&db, "SELECT COUNT(*) FROM E2E.RAW.ROWS")[0][0]
            .as_u64()
            .unwrap()
    };
    let first = pipeline("madeagain");
    write_csv(&csv, 20);
    let (code, stderr) = run(&first, &["--until-end"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(rows_in_table(), 20);

    // Fewer records than were loaded: a consume alone would find every partition drained.
    std::fs::remove_dir_all(state.join("broker")).unwrap();
    write_csv(&csv, 4);
    let (code, stderr) = run(&first, &["--replay-only"]);
    assert_eq!(code, Some(0), "{stderr}");
    let (code, stderr) = run(&first, &["--consume-only", "--until-end"]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(r#"the offsets table "E2E"."RAW"."SLUICE_OFFSETS" says pipeline madeagain loaded topic rows: partition"#)
            && stderr.contains("but it ends at")
            && stderr.contains("so nothing was replayed or consumed"),
        "{stderr}"
    );

    // More records than were loaded: refused before the replay, which would have made it look
    // like the loaded topic.
    std::fs::remove_dir_all(state.join("broker")).unwrap();
    write_csv(&csv, 40);
    let (code, stderr) = run(&first, &["--until-end"]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("The topic does not exist: it was deleted (and made again)")
            && stderr.contains("the managed broker's data in")
            && stderr.contains("give the pipeline a new name"),
        "{stderr}"
    );
    assert!(!stderr.contains("Replaying."), "{stderr}");
    assert_eq!(rows_in_table(), 20);

    // What the error says to do loads the topic as it is now, all of it.
    let (code, stderr) = run(&pipeline("madeagain2"), &["--until-end"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(rows_in_table(), 20 + 40);
}

/// Records deleted from the topic (retention, or DeleteRecords) before the pipeline loaded them
/// are lost to it: the run says which, in its log and its summary, and loads the rest.
#[test]
fn records_deleted_before_they_were_loaded_are_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("rows.csv");
    write_csv(&csv, 20);
    let topic = sluice_tests::broker::unique("deleted");
    let pipeline = serde_json::json!({
        "version": 1,
        "name": "deleted",
        "source": { "type": "csv", "path": csv },
        "kafka": { "brokers": sluice_tests::broker::bootstrap(), "topic": topic, "partitions": 1 },
        "sink": { "type": "snowflake", "database": "E2E", "schema": "RAW", "table": "ROWS" }
    });
    let path = dir.path().join("pipeline.json");
    std::fs::write(&path, pipeline.to_string()).unwrap();
    let (p, state) = (path.to_string_lossy(), dir.path().join("state"));
    let s = state.to_string_lossy();
    let run = |mode: &[&str]| {
        let mut args = vec!["run", &p, "--no-progress", "--state-dir", &s];
        args.extend(mode);
        let out = sluice(dir.path(), &args);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(0), "{stderr}");
        stderr
    };
    run(&["--until-end"]);
    run(&["--replay-only"]);
    // Offsets 20 to 39 wait in the topic; those below 30 go.
    let deleted = sluice_tests::broker::delete_below(&topic, 0, 30);
    assert_eq!(
        deleted.elements()[0].offset(),
        rdkafka::Offset::Offset(30),
        "{deleted:?}"
    );

    let stderr = run(&["--consume-only", "--until-end"]);
    let said = format!(
        "retention deleted records of topic {topic} before this pipeline loaded them, and no run \
         can load them now: partition 0: offsets 20..29 (10 records)"
    );
    assert!(
        stderr.contains(&format!("WARN sluice::pipeline: {said}")),
        "{stderr}"
    );
    assert!(stderr.contains(&format!("warning: {said}")), "{stderr}");
    assert!(stderr.contains("table 20 -> 30 rows"), "{stderr}");
}

/// A carriage return inside a string loads as written, also on the emulator, whose COPY cannot
/// read a file that starts with such a row: the sink puts a row without one first there.
#[test]
fn a_carriage_return_in_a_string_loads_as_written() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("rows.csv");
    std::fs::write(&csv, "id,name\n1,\"a\rb\"\n2,\"c\r\nd\"\n3,e\n").unwrap();
    let topic = sluice_tests::broker::unique("cr");
    let pipeline = serde_json::json!({
        "version": 1,
        "name": "cr",
        "source": { "type": "csv", "path": csv },
        "kafka": { "brokers": sluice_tests::broker::bootstrap(), "topic": topic, "partitions": 1 },
        "sink": { "type": "snowflake", "database": "E2E", "schema": "RAW", "table": "ROWS" }
    });
    let path = dir.path().join("pipeline.json");
    std::fs::write(&path, pipeline.to_string()).unwrap();
    let state = dir.path().join("state");
    let out = sluice(
        dir.path(),
        &[
            "run",
            &path.to_string_lossy(),
            "--until-end",
            "--no-progress",
            "--state-dir",
            &state.to_string_lossy(),
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let db = state.join("snowflake").to_string_lossy().into_owned();
    let rows = python_query(&db, "SELECT ID, NAME FROM E2E.RAW.ROWS ORDER BY ID");
    let want = [(1, "a\rb"), (2, "c\r\nd"), (3, "e")]
        .map(|(id, name)| vec![serde_json::json!(id), serde_json::json!(name)]);
    assert_eq!(rows, want, "{stderr}");
}

/// Runs `sql` with the official Python connector (an independent client) against a fresh
/// emulator process whose database lives in the directory `db` (`FAKESNOW_DB_PATH`).
fn python_query(db: &str, sql: &str) -> Vec<Vec<serde_json::Value>> {
    const PY: &str = r#"
import json, sys
import snowflake.connector
port, db, sql = sys.argv[1], sys.argv[2], sys.argv[3]
conn = snowflake.connector.connect(
    user="reader", password="x", account="fakesnow", host="127.0.0.1", port=int(port),
    protocol="http", database="E2E", schema="RAW", session_parameters={"FAKESNOW_DB_PATH": db},
)
cur = conn.cursor()
cur.execute(sql)
print(json.dumps([list(r) for r in cur.fetchall()], default=str))
"#;
    use sluice::sink::snowflake::emulator::{Emulator, find_venv};
    let venv = find_venv(&workspace_root()).expect("the project venv exists");
    let mut emulator = Emulator::start(&venv).expect("the emulator starts");
    let out = std::process::Command::new(venv.join("bin/python"))
        .args(["-c", PY, &emulator.port().to_string(), db, sql])
        .output()
        .expect("python runs");
    emulator.stop();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "python connector failed: {text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(text.lines().last().unwrap_or("[]")).unwrap()
}

/// A free local address for `--metrics-addr`.
fn free_addr() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    format!("127.0.0.1:{}", listener.local_addr().unwrap().port())
}

/// The Prometheus text `--metrics-addr` serves at `addr`, once it answers.
fn scrape(addr: &str) -> Option<String> {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    Some(text)
}

/// The first sample of metric `name` in `text`, 0 if there is none.
fn sample(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// `--metrics-addr` serves Prometheus text while a run is in progress: scraped mid-run, the
/// counters of every stage are there and moving.
#[test]
fn metrics_answer_during_a_run() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("rows.csv");
    // 10 s of replay: time for the consumer to start and the statistics to come, on a loaded
    // machine too.
    write_csv(&csv, 1500);
    let topic = sluice_tests::broker::unique("metrics");
    let pipeline = serde_json::json!({
        "version": 1,
        "name": "metrics",
        "source": { "type": "csv", "path": csv, "pacing": { "mode": "rate", "rows_per_sec": 150 } },
        "kafka": { "brokers": sluice_tests::broker::bootstrap(), "topic": topic, "partitions": 2 },
        "transforms": [ { "uses": sluice_tests::guests::PASSTHROUGH } ],
        "sink": { "type": "snowflake", "database": "M", "schema": "RAW", "table": "ROWS",
                  "batch": { "max_rows": 100, "max_latency_ms": 200 } }
    });
    let path = dir.path().join("pipeline.json");
    std::fs::write(&path, pipeline.to_string()).unwrap();
    let addr = free_addr();
    let state = dir.path().join("state");
    let mut child = std::process::Command::new(sluice_tests::cli::sluice_bin())
        .args([
            "run",
            &path.to_string_lossy(),
            "--until-end",
            "--no-progress",
            "--metrics-addr",
            &addr,
        ])
        .arg("--state-dir")
        .arg(&state)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut mid_run = None;
    while child.try_wait().unwrap().is_none() {
        if let Some(text) = scrape(&addr) {
            let (read, transformed) = (
                sample(&text, "sluice_source_rows_produced_total"),
                sample(&text, "sluice_transform_rows_in_total"),
            );
            // Consumer lag comes from librdkafka statistics, emitted once a second.
            if read > 0.0
                && read < 1500.0
                && transformed > 0.0
                && text.contains("sluice_consumer_lag{")
            {
                mid_run = Some(text);
                break;
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // The live run holds its state directory (its emulator's database): a second process is
    // kept out of it.
    let lock = std::fs::File::open(state.join("lock")).unwrap();
    let second = lock.try_lock();
    let status = child.wait().unwrap();
    assert!(status.success(), "run failed: {status}");
    assert!(
        matches!(second, Err(std::fs::TryLockError::WouldBlock)),
        "the state directory was not locked during the run: {second:?}"
    );
    let text = mid_run.expect("no scrape caught the run in progress with rows moving");
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    for name in [
        "sluice_transform_batch_seconds_bucket",
        "sluice_consumer_lag{",
        "sluice_sink_copy_seconds_count",
        "sluice_sink_files_total",
        "sluice_dead_letters_total",
        // Failed rows by kind, every kind there before any row fails.
        "sluice_transform_rows_failed_total{pipeline=\"metrics\",transform=\"passthrough\",kind=\"trap\"} 0\n",
        "sluice_transform_rows_failed_total{pipeline=\"metrics\",transform=\"passthrough\",kind=\"guest_error\"} 0\n",
    ] {
        assert!(text.contains(name), "{name} missing from:\n{text}");
    }
}

/// Mistakes a run can find before it starts are found then, before the replay fills the topic:
/// a `--metrics-addr` in use (before even the managed broker and emulator start), and a table
/// that does not exist under `create_table: never`.
#[test]
fn a_run_checks_what_it_can_before_it_replays() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("rows.csv");
    write_csv(&csv, 20);
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = held.local_addr().unwrap().to_string();
    let embedded = serde_json::json!({
        "version": 1,
        "name": "early",
        "source": { "type": "csv", "path": csv },
        "kafka": { "topic": "early" },
        "sink": { "type": "snowflake", "database": "E2E", "schema": "RAW", "table": "ROWS" }
    });
    std::fs::write(dir.path().join("embedded.json"), embedded.to_string()).unwrap();
    let state = dir.path().join("state");
    let out = sluice(
        dir.path(),
        &[
            "run",
            "embedded.json",
            "--until-end",
            "--no-progress",
            "--metrics-addr",
            &addr,
            "--state-dir",
            &state.to_string_lossy(),
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot serve metrics on {addr}")),
        "{stderr}"
    );
    for started in ["broker", "snowflake"] {
        assert!(!state.join(started).exists(), "{started} started: {stderr}");
    }
    drop(held);

    let topic = sluice_tests::broker::unique("never");
    let never = serde_json::json!({
        "version": 1,
        "name": "never",
        "source": { "type": "csv", "path": csv },
        "kafka": { "brokers": sluice_tests::broker::bootstrap(), "topic": topic, "partitions": 1 },
        "sink": { "type": "snowflake", "database": "E2E", "schema": "RAW", "table": "NOT_THERE",
                  "create_table": "never" }
    });
    std::fs::write(dir.path().join("never.json"), never.to_string()).unwrap();
    let out = sluice(
        dir.path(),
        &[
            "run",
            "never.json",
            "--until-end",
            "--no-progress",
            "--state-dir",
            &state.to_string_lossy(),
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("\"NOT_THERE\" does not exist and create_table is never"),
        "{stderr}"
    );
    // Nothing replayed: the topic was made by no replay, or holds nothing.
    assert!(
        sluice_tests::broker::read_topic(&topic).is_empty(),
        "{stderr}"
    );
}

/// `sluice run PIPELINE --no-progress HOW... --state-dir STATE` in `dir`, its stderr piped.
fn run_command(dir: &Path, pipeline: &Path, state: &Path, how: &[&str]) -> std::process::Command {
    let mut cmd = std::process::Command::new(sluice_tests::cli::sluice_bin());
    cmd.args(["run", &pipeline.to_string_lossy(), "--no-progress"])
        .args(how)
        .arg("--state-dir")
        .arg(state)
        .current_dir(dir)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    cmd
}

/// A `--until-end` run commits each load of a backlog to the consumer group as it is made, not
/// all of them at the end: once every record is read, the rest of the run waits on the sink,
/// and scraped then the group has commits while the table still lacks rows. A stop (SIGINT) in
/// that phase, after which the sink loads everything it held as it closes, is a finished run
/// (exit 0, `ok`), not one "stopped before it loaded up to the end offsets".
#[test]
fn a_backlog_is_committed_as_it_loads_and_a_stop_then_still_finishes() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("rows.csv");
    write_csv(&csv, 3000);
    let topic = sluice_tests::broker::unique("backlog");
    let pipeline = serde_json::json!({
        "version": 1,
        "name": "backlog",
        "source": { "type": "csv", "path": csv, "pacing": { "mode": "none" } },
        "kafka": { "brokers": sluice_tests::broker::bootstrap(), "topic": topic, "partitions": 1 },
        "sink": { "type": "snowflake", "database": "E2E", "schema": "RAW", "table": "ROWS",
                  "batch": { "max_rows": 20, "max_latency_ms": 200 } }
    });
    let path = dir.path().join("pipeline.json");
    std::fs::write(&path, pipeline.to_string()).unwrap();
    let state = dir.path().join("state");
    let run = |how: &[&str]| run_command(dir.path(), &path, &state, how);
    let out = run(&["--replay-only"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let addr = free_addr();
    let summary_file = dir.path().join("summary.json");
    let summary_arg = summary_file.to_string_lossy().into_owned();
    let child = run(&[
        "--consume-only",
        "--until-end",
        "--metrics-addr",
        &addr,
        "--summary",
        &summary_arg,
    ])
    .spawn()
    .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    let mut caught = None;
    while caught.is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "no scrape caught the group committing while rows were still loading"
        );
        if let Some(text) = scrape(&addr) {
            let commits = sample(&text, "sluice_consumer_commits_total");
            let loaded = sample(&text, "sluice_sink_rows_loaded_total");
            // Every record is read within the first loads (a second or so); 20 loads later, a
            // run that commits only at the end would have none.
            if commits >= 20.0 && loaded < 3000.0 {
                caught = Some((commits, loaded));
            }
            assert!(
                loaded < 3000.0 || caught.is_some(),
                "loaded all before any commit: {text}"
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let stopped = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(stopped.success());
    let (code, stderr) = finish_within(child, 90);
    assert_eq!(code, Some(0), "caught at {caught:?}: {stderr}");
    assert!(
        stderr.contains("the sink loaded them all before it closed"),
        "{stderr}"
    );
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&summary_file).unwrap()).unwrap();
    assert_eq!(summary["ok"], true, "{summary:#}");
    let db = state.join("snowflake").to_string_lossy().into_owned();
    let rows = python_query(&db, "SELECT COUNT(*), COUNT(DISTINCT ID) FROM E2E.RAW.ROWS");
    assert_eq!(
        rows,
        vec![vec![serde_json::json!(3000), serde_json::json!(3000)]]
    );
}

/// A run killed (`kill -9`) after it set records aside but before it loaded the rows around
/// them consumes those records again when resumed, from the warehouse's offsets: it does not
/// write their dead letters twice. Read back from the broker: one letter per bad record, each
/// record once; the resumed run's summary counts the letters it found already there, and
/// `verify` passes it.
#[test]
fn a_resumed_run_does_not_write_the_same_dead_letters_twice() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("rows.csv");
    let mut text = String::from("id,value\n");
    for i in 1..=3000 {
        match i % 10 {
            0 => text.push_str(&format!("{i},n/a\n")),
            _ => text.push_str(&format!("{i},{i}\n")),
        }
    }
    std::fs::write(&csv, text).unwrap();
    let topic = sluice_tests::broker::unique("relettered");
    let dlq = format!("{topic}-letters");
    let pipeline = serde_json::json!({
        "version": 1,
        "name": "relettered",
        "source": { "type": "csv", "path": csv, "key_column": "id", "pacing": { "mode": "none" } },
        "kafka": { "brokers": sluice_tests::broker::bootstrap(), "topic": topic, "partitions": 2,
                   "properties": { "session.timeout.ms": "3000", "heartbeat.interval.ms": "500" } },
        "transforms": [ { "uses": sluice_tests::guests::FILTER,
                          "with": { "field": "value", "op": "gt", "value": "-1" } } ],
        "dead_letter": { "topic": dlq },
        "sink": { "type": "snowflake", "database": "E2E", "schema": "RAW", "table": "ROWS",
                  "batch": { "max_rows": 50, "max_latency_ms": 200 } }
    });
    let path = dir.path().join("pipeline.json");
    std::fs::write(&path, pipeline.to_string()).unwrap();
    let state = dir.path().join("state");
    let run = |how: &[&str]| run_command(dir.path(), &path, &state, how);
    let out = run(&["--replay-only"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let addr = free_addr();
    let mut first = run(&["--consume-only", "--until-end", "--metrics-addr", &addr])
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    loop {
        assert!(
            std::time::Instant::now() < deadline,
            "the run never got going"
        );
        assert!(
            first.try_wait().unwrap().is_none(),
            "the run ended before it was killed"
        );
        if let Some(text) = scrape(&addr) {
            let (letters, loaded) = (
                sample(&text, "sluice_dead_letters_total"),
                sample(&text, "sluice_sink_rows_loaded_total"),
            );
            // Letters are written as records fail, well ahead of the loads of the rows around
            // them (the chain runs a whole batch in a few ms; a file loads in ~80 ms). Killed
            // after the first loads, the resumed run starts at the warehouse's offsets.
            if letters >= 250.0 && loaded > 0.0 && loaded < 2000.0 {
                break;
            }
            assert!(
                loaded < 2000.0,
                "loaded {loaded} rows with only {letters} letters"
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    first.kill().unwrap();
    first.wait().unwrap();

    let summary_file = dir.path().join("summary.json");
    let summary_arg = summary_file.to_string_lossy().into_owned();
    let resumed = run(&["--consume-only", "--until-end", "--summary", &summary_arg])
        .spawn()
        .unwrap();
    let (code, stderr) = finish_within(resumed, 120);
    assert_eq!(code, Some(0), "{stderr}");
    let mut origins: Vec<(i64, i64)> = sluice_tests::broker::read_topic(&dlq)
        .iter()
        .map(|m| {
            let j = m.json();
            (
                j["origin"]["partition"].as_i64().unwrap(),
                j["origin"]["offset"].as_i64().unwrap(),
            )
        })
        .collect();
    let letters = origins.len();
    origins.sort();
    origins.dedup();
    assert_eq!((letters, origins.len()), (300, 300), "{stderr}");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&summary_file).unwrap()).unwrap();
    let (stored, already) = (
        summary["dead_letters"].as_u64().unwrap(),
        summary["dead_letters_already_stored"].as_u64().unwrap(),
    );
    assert!(already > 0 && stored + already <= 300, "{summary:#}");
    assert!(
        stderr.contains("are in the dead-letter topic already"),
        "{stderr}"
    );
    // A partition resumed from the warehouse's offset (`0@412`), not only from the start.
    let from_warehouse = stderr.lines().any(|l| {
        l.contains("Partitions assigned.")
            && (l.split("partitions=").nth(1)).is_some_and(|p| {
                p.split([',', ' '])
                    .any(|s| s.contains('@') && !s.contains("committed"))
            })
    });
    assert!(from_warehouse, "{stderr}");
    let db = state.join("snowflake").to_string_lossy().into_owned();
    let rows = python_query(&db, "SELECT COUNT(*), COUNT(DISTINCT ID) FROM E2E.RAW.ROWS");
    assert_eq!(
        rows,
        vec![vec![serde_json::json!(2700), serde_json::json!(2700)]]
    );
    let out = sluice(
        dir.path(),
        &[
            "verify",
            &path.to_string_lossy(),
            "--summary",
            &summary_arg,
            "--state-dir",
            &state.to_string_lossy(),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Partitions revoked mid-run (a second member joins the group, then leaves) drop the transforms'
/// state: their records past the warehouse's offsets come again, and must not meet an instance
/// that saw them. The `probe` guest numbers the rows its instance has seen (`seen`) and `meta`
/// adds each row's partition and offset: read back in offset order, a partition's numbers only
/// go up while one instance serves it, and start again where the rebalance rebuilt it.
#[test]
fn revoked_partitions_drop_the_transforms_state() {
    use rdkafka::consumer::{BaseConsumer, Consumer as _};
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("rows.csv");
    let rows: String = (0..300).map(|i| format!("{i},\n")).collect();
    std::fs::write(&csv, format!("id,seen\n{rows}")).unwrap();
    let topic = sluice_tests::broker::unique("revoke-state");
    let group = sluice_tests::broker::unique("revoke-group");
    // Rows reach the sink for 15 s and are loaded every 2 s, so the revocation finds some
    // loaded and some pending; heartbeats every 500 ms bring it soon after the member joins
    // (once the first rows are loaded, 2 s in: the rest is time for a loaded machine's
    // rebalance).
    let pipeline = serde_json::json!({
        "version": 1,
        "name": "revoke",
        "source": { "type": "csv", "path": csv, "key_column": "id",
                    "pacing": { "mode": "rate", "rows_per_sec": 20 } },
        "kafka": { "brokers": sluice_tests::broker::bootstrap(), "topic": topic, "partitions": 2,
                   "group_id": group,
                   "properties": { "heartbeat.interval.ms": "500" } },
        "transforms": [ { "uses": sluice_tests::guests::PROBE },
                        { "uses": sluice_tests::guests::META } ],
        "sink": { "type": "snowflake", "database": "E2E", "schema": "RAW", "table": "ROWS",
                  "batch": { "max_rows": 1000, "max_latency_ms": 2000 } }
    });
    let path = dir.path().join("pipeline.json");
    std::fs::write(&path, pipeline.to_string()).unwrap();
    let addr = free_addr();
    let state = dir.path().join("state");
    let log = std::fs::File::create(dir.path().join("run.log")).unwrap();
    let mut child = std::process::Command::new(sluice_tests::cli::sluice_bin())
        .args([
            "run",
            &path.to_string_lossy(),
            "--until-end",
            "--no-progress",
        ])
        .args(["--metrics-addr", &addr])
        .arg("--summary")
        .arg(dir.path().join("summary.json"))
        .arg("--state-dir")
        .arg(&state)
        .stderr(log)
        .spawn()
        .unwrap();
    let loaded = || scrape(&addr).map_or(0.0, |t| sample(&t, "sluice_sink_rows_loaded_total"));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while loaded() == 0.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the run never got going"
        );
        assert!(child.try_wait().unwrap().is_none(), "the run ended early");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // Another member of the run's group: once it holds a partition, it leaves (committing
    // nothing), and the run gets every partition back.
    let member: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", sluice_tests::broker::bootstrap())
        .set("group.id", &group)
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    member.subscribe(&[&topic]).unwrap();
    while member.assignment().map_or(0, |a| a.count()) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the member never got a partition"
        );
        let _ = member.poll(std::time::Duration::from_millis(100));
    }
    member.unsubscribe();
    drop(member);
    let status = child.wait().unwrap();
    let log = std::fs::read_to_string(dir.path().join("run.log")).unwrap();
    assert!(status.success(), "{status}: {log}");
    assert!(log.contains("Partitions revoked; dropping"), "{log}");
    // Rows pending at the revocation were dropped, and their records came again.
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("summary.json")).unwrap()).unwrap();
    let consume = &summary["consume"];
    assert!(
        consume["records_redelivered"].as_u64() > Some(0),
        "{summary:#}"
    );
    assert!(
        consume["rows_redelivered"].as_u64() > Some(0),
        "{summary:#}"
    );
    // Rows dropped unloaded at the revocation came again: the run accounts for every one.
    let verify = sluice(
        dir.path(),
        &[
            "verify",
            &path.to_string_lossy(),
            "--state-dir",
            &state.to_string_lossy(),
        ],
    );
    let text = String::from_utf8_lossy(&verify.stdout);
    assert!(
        verify.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&verify.stderr)
    );
    let db = state.join("snowflake").to_string_lossy().into_owned();
    let rows = python_query(
        &db,
        r#"SELECT "PARTITION", "OFFSET", "SEEN" FROM E2E.RAW.ROWS ORDER BY 1, 2"#,
    );
    assert_eq!(rows.len(), 300, "every row once");
    let restarts = rows
        .windows(2)
        .filter(|w| w[0][0] == w[1][0] && w[1][2].as_i64() <= w[0][2].as_i64())
        .count();
    // At most once per partition per revocation the run logged (each drops every instance):
    // more would mean instances rebuilt for no reason, which would make state no better than
    // per batch. Usually two revocations (the member joins, then leaves); a loaded machine can
    // add a rebalance, so the bound counts them rather than assuming two.
    let revocations = log.matches("Partitions revoked; dropping").count();
    assert!(
        (1..=revocations * 2).contains(&restarts),
        "{restarts} restarts of a partition's numbering after {revocations} revocations: {rows:?}"
    );
}

// --- Duplicate keys, sink rules checked at connect time, and the CSV header (validate) ---

/// Asserts that `validate` exits 2 and that its stderr holds every fragment.
fn assert_invalid(text: &str, wanted: &[&str]) {
    let (code, stderr) = validate(text);
    assert_eq!(code, Some(2), "{stderr}");
    for w in wanted {
        assert!(stderr.contains(w), "{w:?} not in:\n{stderr}");
    }
}

/// A key given twice anywhere is an error at the second one, naming the first: serde_json would
/// keep the last, so a second `"transforms": []` would silently drop the whole chain.
#[test]
fn a_duplicate_key_anywhere_is_an_error_at_its_second_occurrence() {
    assert_invalid(
        &BASE.replacen(r#"  "sink": {"#, "  \"transforms\": [],\n  \"sink\": {", 1),
        &["transforms (line 10, column 3): duplicate key `transforms` (first at line 6, column 3)"],
    );
    assert_invalid(
        &BASE.replacen(r#""op": "gt","#, r#""op": "zz", "op": "gt","#, 1),
        &[
            "transforms[0].with.op (line 7, column ",
            "duplicate key `op` (first at line 7, column ",
        ],
    );
    assert_invalid(
        &BASE.replacen(
            r#"{ "name": "second","#,
            r#"{ "name": "second", "name": "third","#,
            1,
        ),
        &[
            "transforms[1].name (line 8, column 25): duplicate key `name` (first at line 8, column 7)",
        ],
    );
    assert_invalid(
        &BASE.replacen(
            r#""partitions": 3 }"#,
            r#""partitions": 3, "properties": { "acks": "all", "acks": "1" } }"#,
            1,
        ),
        &[
            "kafka.properties.acks (line 5, column 77): duplicate key `acks` (first at line 5, column 62)",
        ],
    );
}

/// `kafka.properties` cannot undo what sluice's guarantees rest on (they are applied after
/// sluice's own settings, so `acks=0` or auto-commit would otherwise win silently), nor set what
/// another key of the file sets; other properties still pass.
#[test]
fn kafka_properties_cannot_set_what_the_guarantees_rest_on() {
    assert_invalid(
        &BASE.replacen(
            r#""partitions": 3 }"#,
            r#""partitions": 3, "properties": { "acks": "0", "enable.auto.commit": "true",
      "sasl.mechanism": "PLAIN", "group.id": "other", "topic.auto.offset.reset": "latest" } }"#,
            1,
        ),
        &[
            "kafka.properties.acks (line 5, column 62): sluice's producer waits for every \
             in-sync replica (acks=all)",
            "kafka.properties.enable.auto.commit (line 5, column 75): sluice commits offsets \
             itself, only after the warehouse commit that records them",
            "kafka.properties.group.id (line 6, column 34): set kafka.group_id instead",
            "kafka.properties.topic.auto.offset.reset (line 6, column 55): sluice starts a \
             partition",
        ],
    );
    // Restating sluice's own values is no mistake (configurations copied from a managed
    // service do), and neither are other properties.
    let (code, stderr) = validate(&BASE.replacen(
        r#""partitions": 3 }"#,
        r#""partitions": 3, "compression": "gzip", "properties": { "sasl.mechanism": "PLAIN",
      "acks": "all", "enable.idempotence": "true", "enable.auto.commit": "false" } }"#,
        1,
    ));
    assert_eq!(code, Some(0), "{stderr}");
}

/// Rules the sink checks only when it connects are `validate` errors too, at their keys, so
/// `run` fails with exit 2 before starting anything instead of with exit 1 late.
#[test]
fn sink_rules_checked_at_connect_are_validate_errors() {
    assert_invalid(
        &BASE.replacen(
            r#""table": "T" }"#,
            r#""table": "T", "format": "ndjson", "schema_evolution": "add_columns" }"#,
            1,
        ),
        &["sink.schema_evolution (line 10, column 100): add_columns needs format csv"],
    );
    assert_invalid(
        &BASE.replacen(
            r#""table": "T" }"#,
            r#""table": "T", "batch": { "max_latency_ms": 0 } }"#,
            1,
        ),
        &["sink.batch.max_latency_ms (line 10, column 91): must be at least 1"],
    );
    assert_invalid(
        &BASE.replacen(
            r#""table": "T" }"#,
            r#""table": "T", "account_url": "https://x.snowflakecomputing.com", "user": "u", "password": "${PATH}", "private_key": "${PATH}" }"#,
            1,
        ),
        &[
            "sink.account (line 10, column 11): is required with account_url",
            "sink.password (line 10, column 144): give only one of password",
        ],
    );
    // A credential comes from the environment, never from the file (nor a variable's default).
    let written = BASE.replacen(
        r#""table": "T" }"#,
        r#""table": "T", "account": "A", "user": "u", "password": "Hunter2LiteralPW", "private_key_passphrase": "${PW:-Hunter2Default}" }"#,
        1,
    );
    assert_invalid(
        &written,
        &[
            "sink.password (line 10, column 109): is a credential written into the file: give it \
             from the environment, as \"${SNOWFLAKE_PASSWORD}\"",
            "sink.private_key_passphrase (line 10, column ",
        ],
    );
    assert!(!validate(&written).1.contains("Hunter2"));
    let in_url = BASE.replacen(
        r#""table": "T" }"#,
        r#""table": "T", "account_url": "https://u:Hunter2UrlPW@x.snowflakecomputing.com", "account": "A", "user": "u", "password": "${PATH}" }"#,
        1,
    );
    assert_invalid(
        &in_url,
        &["sink.account_url (line 10, column 80): holds a user or password"],
    );
    assert!(!validate(&in_url).1.contains("Hunter2"));

    let dir = tempfile::tempdir().unwrap();
    let path = write_pipeline(
        dir.path(),
        &BASE.replacen(
            r#""table": "T" }"#,
            r#""table": "T", "format": "ndjson", "schema_evolution": "add_columns" }"#,
            1,
        ),
    );
    let state = dir.path().join("state");
    let out = sluice(
        dir.path(),
        &[
            "run",
            &path.to_string_lossy(),
            "--until-end",
            "--no-progress",
            "--state-dir",
            &state.to_string_lossy(),
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("sink.schema_evolution (line 10"),
        "{stderr}"
    );
    assert!(!state.exists(), "{stderr}");
}

/// Columns the source names are checked against the CSV's header row, read the way the source
/// reads it: a missing `key_column`, `schema` entry or event-time column is an error at its key.
#[test]
fn source_columns_are_checked_against_the_csv_header() {
    let source = r#""source": { "type": "csv", "path": "@DATA@", "pacing": { "mode": "none" } },"#;
    let with = |fields: &str| {
        BASE.replacen(
            source,
            // The fields go before the path, whose length varies, so their columns are fixed.
            &format!(r#""source": {{ "type": "csv", {fields}, "path": "@DATA@" }},"#),
            1,
        )
    };
    assert_invalid(
        &with(r#""key_column": "nope""#),
        &[
            r#"source.key_column (line 4, column 30): key_column "nope" is not a column of"#,
            "the header has id, name, value, category, created_at",
        ],
    );
    // Another mistake in the section does not hide the header's.
    assert_invalid(
        &with(r#""loop": 0, "key_column": "nope""#),
        &[
            "source.loop (line 4, column 30): loop must be at least 1",
            r#"source.key_column (line 4, column 41): key_column "nope" is not a column of"#,
        ],
    );
    assert_invalid(
        &with(r#""schema": { "id": "int", "nope": "int" }"#),
        &[r#"source.schema.nope (line 4, column 55): schema names column "nope", which"#],
    );
    assert_invalid(
        &with(r#""pacing": { "mode": "event_time", "column": "nope" }"#),
        &[r#"source.pacing.column (line 4, column 64): pacing column "nope" is not a column of"#],
    );
    assert_invalid(
        &with(
            r#""schema": { "created_at": "string" }, "pacing": { "mode": "event_time", "column": "created_at" }"#,
        ),
        &[
            r#"source.pacing.column (line 4, column 102): pacing column "created_at" is declared string in source.schema; event_time pacing reads ISO-8601 times"#,
        ],
    );
    // Numbers are not times however the column is declared: every row would fail to parse.
    assert_invalid(
        &with(
            r#""schema": { "id": "timestamp" }, "pacing": { "mode": "event_time", "column": "id" }"#,
        ),
        &[r#"pacing column "id" holds numbers; event_time pacing reads ISO-8601 times"#],
    );
    let (code, stderr) = validate(&with(
        r#""key_column": "id", "schema": { "created_at": "timestamp" }, "pacing": { "mode": "event_time", "column": "created_at" }"#,
    ));
    assert_eq!(code, Some(0), "{stderr}");
}

/// The header is read by the source's own reader: a BOM, the configured delimiter and quoted
/// names are understood, and an empty file is an error at `source.path`.
#[test]
fn the_csv_header_is_read_like_the_source_reads_it() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("semi.csv");
    std::fs::write(
        &csv,
        "\u{feff}\"user;id\";\"when\";value\n\"a;1\";2026-01-01T00:00:00;60\n",
    )
    .unwrap();
    let with = |fields: &str| {
        BASE.replacen(
            r#""path": "@DATA@", "pacing": { "mode": "none" } },"#,
            &format!(
                r#""path": "{}", "delimiter": ";", {fields} }},"#,
                csv.display()
            ),
            1,
        )
    };
    let (code, stderr) = validate(&with(
        r#""key_column": "user;id", "pacing": { "mode": "event_time", "column": "when" }"#,
    ));
    assert_eq!(code, Some(0), "{stderr}");
    assert_invalid(
        &with(r#""key_column": "user""#),
        &[
            r#"source.key_column (line 4"#,
            "the header has user;id, when, value",
        ],
    );

    // A column left out of `schema` has the type the source infers from the rows.
    assert_invalid(
        &with(r#""pacing": { "mode": "event_time", "column": "user;id" }"#),
        &[
            r#"source.pacing.column (line 4"#,
            r#"pacing column "user;id" holds string values that are not ISO-8601 times"#,
        ],
    );

    // Header names that become one Snowflake column: every row would be dead-lettered, unless
    // a transform renames one of them first.
    let case = dir.path().join("case.csv");
    std::fs::write(&case, "id,Value,value\n1,2,3\n").unwrap();
    let colliding = BASE.replacen("@DATA@", &case.to_string_lossy(), 1);
    let (code, stderr) = validate(&colliding);
    assert_eq!(code, Some(0), "{stderr}");
    let no_chain = serde_json::json!({
        "version": 1,
        "source": { "type": "csv", "path": case },
        "kafka": { "topic": "t1" },
        "sink": { "type": "snowflake", "database": "D", "schema": "S", "table": "T" }
    })
    .to_string();
    assert_invalid(
        &no_chain,
        &[
            r#"columns "Value" and "value" of"#,
            "become the same Snowflake column",
        ],
    );

    let empty = dir.path().join("empty.csv");
    std::fs::write(&empty, "").unwrap();
    assert_invalid(
        &BASE.replacen("@DATA@", &empty.to_string_lossy(), 1),
        &["source.path (line 4, column 30):", "the file is empty"],
    );
}

/// A replay killed part-way (`kill -9`, so rows librdkafka still buffered are lost from some
/// partitions and not others) is finished by `sluice run --resume`: it reads what the topic and
/// the dead-letter topic hold of the file, produces only the rest, and the file (looped twice,
/// killed in the second loop) ends up in the topic, the letters and the table exactly twice.
/// Run again, `--resume` produces nothing.
#[test]
fn a_killed_replay_is_resumed_without_producing_its_rows_twice() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("rows.csv");
    let mut text = String::from("id,value\n");
    let (mut good, mut bad) = (Vec::new(), Vec::new());
    for i in 1..=4000u64 {
        // Line i + 1: the header is line 1.
        match i % 100 {
            0 => {
                text.push_str(&format!("{i},{i},ragged\n"));
                bad.push(i + 1);
            }
            _ => {
                text.push_str(&format!("{i},{i}\n"));
                good.push(i + 1);
            }
        }
    }
    std::fs::write(&csv, text).unwrap();
    let topic = sluice_tests::broker::unique("resumed");
    let dlq = format!("{topic}-letters");
    // No key column: rows go to the partitions at random, as most replays' do.
    let pipeline = serde_json::json!({
        "version": 1,
        "name": "resumed",
        "source": { "type": "csv", "path": csv, "loop": 2,
                    "pacing": { "mode": "rate", "rows_per_sec": 1000 } },
        "kafka": { "brokers": sluice_tests::broker::bootstrap(), "topic": topic, "partitions": 3 },
        "transforms": [ { "uses": sluice_tests::guests::FILTER,
                          "with": { "field": "value", "op": "gt", "value": "-1" } } ],
        "dead_letter": { "topic": dlq },
        "sink": { "type": "snowflake", "database": "E2E", "schema": "RAW", "table": "ROWS",
                  "batch": { "max_rows": 500, "max_latency_ms": 300 } }
    });
    let path = dir.path().join("pipeline.json");
    std::fs::write(&path, pipeline.to_string()).unwrap();
    let state = dir.path().join("state");
    let run = |how: &[&str]| run_command(dir.path(), &path, &state, how);
    let addr = free_addr();
    let mut first = run(&["--until-end", "--metrics-addr", &addr])
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    loop {
        assert!(
            std::time::Instant::now() < deadline,
            "the run never got going"
        );
        assert!(
            first.try_wait().unwrap().is_none(),
            "the run ended before it was killed"
        );
        if let Some(text) = scrape(&addr) {
            // In the second loop: its lines are in the topic once, some of them twice.
            let produced = sample(&text, "sluice_source_rows_produced_total");
            if produced >= 5000.0 {
                assert!(produced < 7500.0, "produced {produced} before the kill");
                break;
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    first.kill().unwrap();
    first.wait().unwrap();
    let lines_in = |topic: &str, header: bool| -> Vec<u64> {
        let mut lines: Vec<u64> = sluice_tests::broker::read_topic(topic)
            .iter()
            .map(|m| match header {
                true => m.header("sluice.line").unwrap().parse().unwrap(),
                false => m.json()["line"].as_u64().unwrap(),
            })
            .collect();
        lines.sort_unstable();
        lines
    };
    let before = lines_in(&topic, true);
    assert!(
        before.len() >= 4900 && before.len() < 2 * good.len(),
        "{} rows in the topic after the kill",
        before.len()
    );
    let twice = |lines: &[u64]| -> Vec<u64> { lines.iter().flat_map(|l| [*l, *l]).collect() };
    let (good, bad) = (twice(&good), twice(&bad));

    let summary_file = dir.path().join("summary.json");
    let summary_arg = summary_file.to_string_lossy().into_owned();
    let verify = || {
        let out = sluice(
            dir.path(),
            &[
                "verify",
                &path.to_string_lossy(),
                "--summary",
                &summary_arg,
                "--state-dir",
                &state.to_string_lossy(),
            ],
        );
        assert!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let db = state.join("snowflake").to_string_lossy().into_owned();
    let table = || python_query(&db, "SELECT COUNT(*), COUNT(DISTINCT ID) FROM E2E.RAW.ROWS");
    let n = good.len() as u64;
    let ids = n / 2;
    for round in 0..2 {
        let resumed = run(&["--resume", "--until-end", "--summary", &summary_arg])
            .spawn()
            .unwrap();
        let (code, stderr) = finish_within(resumed, 120);
        assert_eq!(code, Some(0), "{stderr}");
        assert!(stderr.contains("Resuming the replay"), "{stderr}");
        // Read back from the broker: each good row once, each bad row's letter once.
        for (what, got, want) in [
            ("rows", lines_in(&topic, true), &good),
            ("letters", lines_in(&dlq, false), &bad),
        ] {
            let first_wrong = got.iter().zip(want.iter()).position(|(g, w)| g != w);
            assert!(
                got == *want,
                "round {round}: {} {what} read back for {} lines; first difference at index {first_wrong:?}",
                got.len(),
                want.len()
            );
        }
        assert_eq!(
            table(),
            vec![vec![serde_json::json!(n), serde_json::json!(ids)]],
            "round {round}"
        );
        let summary: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&summary_file).unwrap()).unwrap();
        let r = &summary["replay"];
        assert_eq!(r["resumed"], true, "{summary:#}");
        let (produced, already) = (
            r["rows_produced"].as_u64().unwrap(),
            r["rows_already_produced"].as_u64().unwrap(),
        );
        assert_eq!(produced + already, n, "{summary:#}");
        match round {
            0 => assert_eq!(already, before.len() as u64, "{summary:#}"),
            _ => assert_eq!((produced, already), (0, n), "{summary:#}"),
        }
        verify();
    }
}

/// A resume refuses a topic that no longer holds its first records: which of the file's rows they
/// were is unknown, and producing them again would load them twice. It produces nothing.
#[test]
fn a_resume_refuses_a_topic_that_lost_its_first_records() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("rows.csv");
    // 20 good rows and two ragged ones (dead letters).
    write_csv(&csv, 20);
    let good = 20;
    let topic = sluice_tests::broker::unique("cut");
    let pipeline = serde_json::json!({
        "version": 1,
        "name": "cut",
        "source": { "type": "csv", "path": csv },
        "kafka": { "brokers": sluice_tests::broker::bootstrap(), "topic": topic, "partitions": 1 },
        "sink": { "type": "snowflake", "database": "E2E", "schema": "RAW", "table": "ROWS" }
    });
    let path = dir.path().join("pipeline.json");
    std::fs::write(&path, pipeline.to_string()).unwrap();
    let (p, state) = (path.to_string_lossy(), dir.path().join("state"));
    let s = state.to_string_lossy();
    let replay = |extra: &[&str]| {
        let mut args = vec!["replay", &p, "--no-progress", "--state-dir", &s];
        args.extend(extra);
        sluice(dir.path(), &args)
    };
    let out = replay(&[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Resumed while the topic is whole, nothing is produced again.
    let out = replay(&["--resume"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("rows={good} letters=2")),
        "{stderr}"
    );
    assert_eq!(sluice_tests::broker::read_topic(&topic).len(), good);

    sluice_tests::broker::delete_below(&topic, 0, 5);
    let out = replay(&["--resume"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "topic {topic} no longer holds its first records (partition 0 starts at offset 5"
        )),
        "{stderr}"
    );
    assert_eq!(sluice_tests::broker::read_topic(&topic).len(), good - 5);
}

/// A resume tells two files of one name apart by their fingerprints: last month's `events.csv`
/// in the topic does not stand for this month's, whose rows it produces and whose bad rows it
/// dead-letters all the same, a bad row alike in both months too; rows appended to a file since
/// keep its fingerprint, and a resume produces just those.
#[test]
fn a_resume_tells_files_of_one_name_apart() {
    let dir = tempfile::tempdir().unwrap();
    let month = |name: &str, first: u64, rows: u64| {
        let folder = dir.path().join(name);
        std::fs::create_dir_all(&folder).unwrap();
        // A units row, the same bad row every month, at the same line.
        let mut text = String::from("id,value\nunits,kg,extra\n");
        for i in first..first + rows {
            text.push_str(&format!("{i},{i}\n"));
            if i == first + 4 {
                text.push_str(&format!("{i},ragged,{name}\n"));
            }
        }
        std::fs::write(folder.join("events.csv"), text).unwrap();
        folder.join("events.csv")
    };
    let jan = month("jan", 1, 20);
    let feb = month("feb", 101, 20);
    let topic = sluice_tests::broker::unique("monthly");
    let dlq = format!("{topic}-letters");
    let s = dir.path().join("state").to_string_lossy().into_owned();
    let replay = |csv: &Path, extra: &[&str]| {
        let pipeline = serde_json::json!({
            "version": 1,
            "name": "monthly",
            "source": { "type": "csv", "path": csv },
            "kafka": { "brokers": sluice_tests::broker::bootstrap(), "topic": topic,
                       "partitions": 2 },
            "dead_letter": { "topic": dlq },
            "sink": { "type": "snowflake", "database": "E2E", "schema": "RAW", "table": "ROWS" }
        });
        let path = dir.path().join("pipeline.json");
        std::fs::write(&path, pipeline.to_string()).unwrap();
        let p = path.to_string_lossy().into_owned();
        let mut args = vec!["replay", &p, "--no-progress", "--state-dir", &s];
        args.extend(extra);
        let out = sluice(dir.path(), &args);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{stderr}");
        stderr
    };
    let ids = || {
        let mut ids: Vec<u64> = sluice_tests::broker::read_topic(&topic)
            .iter()
            .map(|m| m.json()["id"].as_u64().unwrap())
            .collect();
        ids.sort_unstable();
        ids
    };
    let letters = || sluice_tests::broker::read_topic(&dlq).len();
    replay(&jan, &[]);
    assert_eq!((ids().len(), letters()), (20, 2));
    let stderr = replay(&feb, &["--resume"]);
    // In the log, and among the summary's warnings.
    let said = format!("topic {topic} holds 20 rows of another file named events.csv");
    assert_eq!(stderr.matches(&said).count(), 2, "{stderr}");
    assert!(stderr.contains(&format!("warning: {said}")), "{stderr}");
    let both: Vec<u64> = (1..=20).chain(101..=120).collect();
    assert_eq!((ids(), letters()), (both.clone(), 4));
    // Rows appended to February's file: the resume produces those five alone.
    let mut text = std::fs::read_to_string(&feb).unwrap();
    text.extend((121..=125).map(|i| format!("{i},{i}\n")));
    std::fs::write(&feb, text).unwrap();
    let stderr = replay(&feb, &["--resume"]);
    // February's own two letters; January's are another file's.
    assert!(stderr.contains("rows=20 letters=2"), "{stderr}");
    let all: Vec<u64> = both.into_iter().chain(121..=125).collect();
    assert_eq!((ids(), letters()), (all, 4));
}
