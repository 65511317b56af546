//! `sluice transform new|build|test`: tools for transform authors.
//!
//! - `new NAME` scaffolds `transforms/NAME/` from the template in `transforms/template/`
//!   (embedded in the binary), which builds and passes its golden test untouched.
//! - `build [NAME]` builds guests for wasm32-wasip2 in release mode and prints the `.wasm` paths.
//! - `test` runs a chain of components over a CSV or JSONL file, prints output rows as JSONL on
//!   stdout and failed records on stderr, and with `--expect` diffs against a golden JSONL file.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{Context, bail};

use super::config::TransformConfig;
use super::error::LoadError;
use super::runtime::{RecordOutcome, RuntimeOptions, TransformChain, default_cache_dir};
use crate::config::OnError;
use crate::row::{Field, Name, RecordMeta, Row, Value, ValueType, parse_timestamp};

const TARGET: &str = "wasm32-wasip2";
const TEMPLATE_CARGO_TOML: &str = include_str!("../../../transforms/template/Cargo.toml.tmpl");
const TEMPLATE_LIB_RS: &str = include_str!("../../../transforms/template/src/lib.rs");
const TEMPLATE_INPUT: &str = include_str!("../../../transforms/template/testdata/input.jsonl");
const TEMPLATE_EXPECTED: &str =
    include_str!("../../../transforms/template/testdata/expected.jsonl");

/// A mistake in how `sluice transform test` was called rather than a failure while it ran: a
/// malformed or repeated `--with`, an input, golden or component file that cannot be read or
/// parsed, params a component rejects. The binary exits 2 for it, as for a bad pipeline file.
#[derive(Debug, thiserror::Error)]
#[error("{0:#}")]
pub struct UsageError(anyhow::Error);

fn usage(e: anyhow::Error) -> anyhow::Error {
    UsageError(e).into()
}

/// `sluice transform ...`: write, build and test transforms.
#[derive(Debug, clap::Subcommand)]
pub enum TransformCommand {
    /// Scaffold a new transform crate (`<dir>/<NAME>/`) that builds and passes its test as is.
    New {
        /// The transform's name (lowercase letters, digits, `-` and `_`); the crate is
        /// `transform-<NAME>`.
        name: String,
        /// The transforms workspace to create it in.
        #[arg(long, default_value = "transforms")]
        dir: PathBuf,
    },
    /// Build transforms for wasm32-wasip2 in release mode and print where the `.wasm` files are.
    Build {
        /// Build only this transform (crate `transform-<NAME>`); default: all of them.
        name: Option<String>,
        /// The transforms workspace.
        #[arg(long, default_value = "transforms")]
        dir: PathBuf,
    },
    /// Run a chain of components over a CSV or JSONL file and print the output rows as JSONL.
    Test {
        /// A component to run; repeat for a chain (run in the order given).
        #[arg(long = "component", required = true)]
        components: Vec<PathBuf>,
        /// Input rows: `.csv` (header row, column types inferred) or `.jsonl` (one object per line).
        #[arg(long)]
        input: PathBuf,
        /// A param for `init`, `KEY=VALUE`; with several components scope it as
        /// `NAME.KEY=VALUE` (NAME is the component's name or its 1-based position).
        #[arg(long = "with", value_name = "KEY=VALUE")]
        with: Vec<String>,
        /// A golden JSONL file: exit 1 if the output rows differ from it.
        #[arg(long)]
        expect: Option<PathBuf>,
        /// Rows per batch call.
        #[arg(long, default_value_t = 1024)]
        batch_size: usize,
        /// CPU-time cap per batch call, in milliseconds.
        #[arg(long)]
        timeout_ms: Option<u64>,
        /// Memory cap per instance, in MiB.
        #[arg(long)]
        memory_mb: Option<u64>,
        /// Fuel per batch call (deterministic CPU limit); prints fuel consumed.
        #[arg(long)]
        fuel: Option<u64>,
        /// Show the guests' stdout/stderr (on stderr).
        #[arg(long)]
        debug_stdio: bool,
    },
}

/// Runs a `sluice transform` subcommand; the exit code is 1 when `test --expect` finds a
/// difference. Errors in how it was called are [`UsageError`]s.
pub fn run_command(cmd: TransformCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        TransformCommand::New { name, dir } => {
            let crate_dir = scaffold(&name, &dir)?;
            println!("created {}", crate_dir.display());
            println!("next: sluice transform build {name}");
            Ok(ExitCode::SUCCESS)
        }
        TransformCommand::Build { name, dir } => {
            for path in build(name.as_deref(), &dir)? {
                println!("{}", path.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        TransformCommand::Test {
            components,
            input,
            with,
            expect,
            batch_size,
            timeout_ms,
            memory_mb,
            fuel,
            debug_stdio,
        } => {
            let mut configs = components
                .iter()
                .map(|c| {
                    let mut cfg = TransformConfig::new(c.to_string_lossy());
                    cfg.on_error = OnError::DeadLetter;
                    cfg.timeout_ms = timeout_ms.unwrap_or(cfg.timeout_ms);
                    cfg.memory_mb = memory_mb.unwrap_or(cfg.memory_mb);
                    cfg.fuel = fuel;
                    cfg.debug_stdio = debug_stdio;
                    cfg
                })
                .collect::<Vec<_>>();
            assign_params(&mut configs, &with).map_err(usage)?;
            let rows = read_rows(&input).map_err(usage)?;
            // Read before the run, so that a bad golden path does not cost a whole run first.
            let expected = expect
                .as_deref()
                .map(read_jsonl_values)
                .transpose()
                .map_err(usage)?;
            let stdout = std::io::stdout();
            let stderr = std::io::stderr();
            let report = test(
                &configs,
                rows,
                batch_size.max(1),
                &mut stdout.lock(),
                &mut stderr.lock(),
            )?;
            match (expect, expected) {
                (Some(golden), Some(expected)) => match diff(&expected, &report.output) {
                    None => {
                        eprintln!("ok: {} rows match {}", expected.len(), golden.display());
                        Ok(ExitCode::SUCCESS)
                    }
                    Some(msg) => {
                        eprintln!("mismatch against {}: {msg}", golden.display());
                        Ok(ExitCode::from(1))
                    }
                },
                _ => Ok(ExitCode::SUCCESS),
            }
        }
    }
}

/// Creates `<dir>/<name>/` from the embedded template and returns its path.
pub fn scaffold(name: &str, dir: &Path) -> anyhow::Result<PathBuf> {
    let valid = !name.is_empty()
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if !valid {
        bail!(
            "invalid transform name {name:?}: use lowercase letters, digits, `-` and `_`, starting with a letter"
        );
    }
    if !dir.join("Cargo.toml").is_file() {
        bail!(
            "{} is not a transforms workspace (no Cargo.toml); pass --dir",
            dir.display()
        );
    }
    let crate_dir = dir.join(name);
    if crate_dir.exists() {
        bail!("{} already exists", crate_dir.display());
    }
    let fill = |s: &str| {
        s.replace("{{name}}", name)
            .replace("{{crate}}", &name.replace('-', "_"))
    };
    std::fs::create_dir_all(crate_dir.join("src"))?;
    std::fs::create_dir_all(crate_dir.join("testdata"))?;
    for (path, text) in [
        ("Cargo.toml", TEMPLATE_CARGO_TOML),
        ("src/lib.rs", TEMPLATE_LIB_RS),
        ("testdata/input.jsonl", TEMPLATE_INPUT),
        ("testdata/expected.jsonl", TEMPLATE_EXPECTED),
    ] {
        let file = crate_dir.join(path);
        std::fs::write(&file, fill(text)).with_context(|| format!("writing {}", file.display()))?;
    }
    Ok(crate_dir)
}

/// Builds the workspace at `dir` (or only `transform-<name>`) for wasm32-wasip2 in release mode
/// and returns the built `.wasm` paths.
pub fn build(name: Option<&str>, dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    ensure_wasm_target();
    let mut cmd = Command::new("cargo");
    cmd.current_dir(dir)
        .args(["build", "--release", "--target", TARGET]);
    if let Some(name) = name {
        cmd.args(["-p", &format!("transform-{name}")]);
    }
    // Keep the build's own messages off stdout, which lists the results.
    cmd.stdout(std::process::Stdio::from(std::io::stderr()));
    let status = cmd
        .status()
        .with_context(|| format!("running cargo in {}", dir.display()))?;
    if !status.success() {
        bail!("cargo build in {} failed ({status})", dir.display());
    }
    let target_dir = target_dir(dir)?;
    let release = target_dir.join(TARGET).join("release");
    let mut out: Vec<PathBuf> = std::fs::read_dir(&release)
        .with_context(|| format!("reading {}", release.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "wasm"))
        .filter(|p| match name {
            Some(n) => p
                .file_stem()
                .is_some_and(|s| *s == *format!("transform_{}", n.replace('-', "_"))),
            None => true,
        })
        .collect();
    out.sort();
    Ok(out)
}

/// The workspace's target directory as cargo resolves it (`CARGO_TARGET_DIR`, config files).
fn target_dir(dir: &Path) -> anyhow::Result<PathBuf> {
    let out = Command::new("cargo")
        .current_dir(dir)
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .output()
        .with_context(|| format!("running cargo metadata in {}", dir.display()))?;
    if !out.status.success() {
        bail!(
            "cargo metadata in {} failed: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let meta: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("parsing cargo metadata")?;
    meta["target_directory"]
        .as_str()
        .map(PathBuf::from)
        .context("cargo metadata has no target_directory")
}

fn ensure_wasm_target() {
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|l| l.trim() == TARGET)
        });
    if let Ok(false) = installed {
        let _ = Command::new("rustup")
            .args(["target", "add", TARGET])
            .status();
    }
}

/// Distributes `KEY=VALUE` / `NAME.KEY=VALUE` params over the chain. A param given twice for
/// one component is an error: silently keeping the last one hides a typo in a long command.
fn assign_params(configs: &mut [TransformConfig], with: &[String]) -> anyhow::Result<()> {
    for item in with {
        let (key, value) = item
            .split_once('=')
            .with_context(|| format!("--with {item:?} is not KEY=VALUE"))?;
        let scoped = key.split_once('.').and_then(|(scope, k)| {
            let index = configs
                .iter()
                .position(|c| c.display_name() == scope)
                .or_else(|| {
                    scope
                        .parse::<usize>()
                        .ok()
                        .filter(|i| (1..=configs.len()).contains(i))
                        .map(|i| i - 1)
                })?;
            Some((index, k))
        });
        let (i, k) = match scoped {
            Some(scoped) => scoped,
            None if configs.len() == 1 => (0, key),
            None => bail!(
                "--with {item:?}: with several components, scope params as NAME.KEY=VALUE (NAME: {})",
                configs
                    .iter()
                    .map(|c| c.display_name())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        if configs[i]
            .with
            .insert(k.to_owned(), value.to_owned())
            .is_some()
        {
            bail!(
                "--with {item:?}: param {k:?} of {} is given more than once",
                configs[i].display_name()
            );
        }
    }
    Ok(())
}

/// What `test` saw.
#[derive(Debug)]
pub struct TestReport {
    /// Every emitted row as JSON, in order.
    pub output: Vec<serde_json::Value>,
    /// Records that failed.
    pub failed: usize,
}

/// Runs the chain over `rows` in batches, writes output rows as JSONL to `out`, and failures and
/// a line of counts per transform (plus fuel, when metered) to `err`. A component that cannot be
/// loaded, or whose `init` fails (usually: rejects its params), is a [`UsageError`].
pub fn test(
    configs: &[TransformConfig],
    rows: Vec<Row>,
    batch_size: usize,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> anyhow::Result<TestReport> {
    let opts = RuntimeOptions {
        workers: 1,
        cache_dir: default_cache_dir(),
    };
    let chain = TransformChain::load(configs, &opts).map_err(|e| {
        // Only an engine set-up failure is the machine's fault; the rest is the command's.
        let engine = matches!(e, LoadError::Engine(_));
        let e = anyhow::Error::new(e).context("loading the transforms");
        if engine { e } else { usage(e) }
    })?;
    let mut report = TestReport {
        output: Vec::new(),
        failed: 0,
    };
    let mut rows = rows.into_iter().enumerate().peekable();
    while rows.peek().is_some() {
        let batch: Vec<(RecordMeta, Row)> = rows
            .by_ref()
            .take(batch_size)
            .map(|(i, r)| {
                (
                    RecordMeta {
                        topic: "test".into(),
                        offset: i as i64,
                        ..RecordMeta::default()
                    },
                    r,
                )
            })
            .collect();
        let first = batch.first().map_or(0, |(m, _)| m.offset);
        for (i, outcome) in chain.process_blocking(batch)?.into_iter().enumerate() {
            let record = first + i as i64 + 1;
            match outcome {
                RecordOutcome::Emitted(rows) => {
                    for row in rows {
                        let json = row.to_json();
                        writeln!(out, "{json}")?;
                        report.output.push(json);
                    }
                }
                RecordOutcome::Quarantined(q) => {
                    report.failed += 1;
                    writeln!(
                        err,
                        "record {record}: {} failed ({}): {}; row: {}",
                        q.transform,
                        q.kind,
                        q.reason,
                        q.row.to_json()
                    )?;
                }
                RecordOutcome::Dropped {
                    transform,
                    kind,
                    reason,
                } => {
                    report.failed += 1;
                    writeln!(
                        err,
                        "record {record}: {transform} failed ({kind}): {reason}"
                    )?;
                }
            }
        }
    }
    // The same per-transform line as `sluice run`'s summary.
    let metered = configs.iter().any(|c| c.fuel.is_some());
    let stats = chain.stats();
    for (part, (_, s)) in crate::pipeline::transform_parts(&stats).iter().zip(&stats) {
        write!(err, "transform  {part}")?;
        if metered {
            let fuel = s.fuel_consumed.load(std::sync::atomic::Ordering::Relaxed);
            write!(err, ", fuel consumed {fuel}")?;
        }
        writeln!(err)?;
    }
    Ok(report)
}

/// The first difference between golden and actual rows, if any.
fn diff(expected: &[serde_json::Value], actual: &[serde_json::Value]) -> Option<String> {
    for (i, (e, a)) in expected.iter().zip(actual).enumerate() {
        if e != a {
            return Some(format!("row {}: expected {e}, got {a}", i + 1));
        }
    }
    match expected.len().cmp(&actual.len()) {
        std::cmp::Ordering::Equal => None,
        std::cmp::Ordering::Less => Some(format!(
            "expected {} rows, got {} (first extra: {})",
            expected.len(),
            actual.len(),
            actual[expected.len()]
        )),
        std::cmp::Ordering::Greater => Some(format!(
            "expected {} rows, got {} (first missing: {})",
            expected.len(),
            actual.len(),
            expected[actual.len()]
        )),
    }
}

/// Reads `.jsonl` (one JSON object per line) or, otherwise, CSV with a header row.
pub fn read_rows(path: &Path) -> anyhow::Result<Vec<Row>> {
    if path
        .extension()
        .is_some_and(|e| e == "jsonl" || e == "ndjson")
    {
        return read_jsonl_values(path)?
            .iter()
            .enumerate()
            .map(|(i, v)| {
                Row::from_json(v)
                    .with_context(|| format!("{}:{}: not a JSON object", path.display(), i + 1))
            })
            .collect();
    }
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    read_csv(file).with_context(|| format!("reading {}", path.display()))
}

fn read_jsonl_values(path: &Path) -> anyhow::Result<Vec<serde_json::Value>> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        out.push(
            serde_json::from_str(&line).with_context(|| format!("{}:{}", path.display(), i + 1))?,
        );
    }
    Ok(out)
}

/// Reads CSV with a header row, typing each column by inference over all its values: int,
/// else float, else bool, else timestamp, else string (empty cells are null and fit any type).
pub fn read_csv(reader: impl std::io::Read) -> anyhow::Result<Vec<Row>> {
    let mut csv = csv::ReaderBuilder::new()
        .has_headers(true)
        .from_reader(reader);
    let names: Vec<Name> = csv.headers()?.iter().map(Name::from).collect();
    let records = csv.records().collect::<Result<Vec<_>, _>>()?;
    let types: Vec<ValueType> = (0..names.len())
        .map(|c| infer_type(records.iter().filter_map(|r| r.get(c))))
        .collect();
    Ok(records
        .iter()
        .map(|r| Row {
            fields: names
                .iter()
                .zip(&types)
                .enumerate()
                .map(|(c, (name, ty))| Field {
                    name: Name::clone(name),
                    value: parse_cell(r.get(c).unwrap_or(""), *ty),
                })
                .collect(),
        })
        .collect())
}

/// The narrowest type that every non-empty cell parses as.
pub fn infer_type<'a>(cells: impl Iterator<Item = &'a str>) -> ValueType {
    let (mut int, mut float, mut boolean, mut ts, mut any) = (true, true, true, true, false);
    for cell in cells.map(str::trim).filter(|c| !c.is_empty()) {
        any = true;
        int &= cell.parse::<i64>().is_ok();
        float &= cell.parse::<f64>().is_ok();
        boolean &= parse_bool(cell).is_some();
        ts &= parse_timestamp(cell).is_some();
        if !(int || float || boolean || ts) {
            return ValueType::String;
        }
    }
    match () {
        _ if !any => ValueType::String,
        _ if int => ValueType::Int,
        _ if float => ValueType::Float,
        _ if boolean => ValueType::Bool,
        _ if ts => ValueType::Timestamp,
        _ => ValueType::String,
    }
}

fn parse_bool(s: &str) -> Option<bool> {
    match s.to_ascii_lowercase().as_str() {
        "true" => Some(true),
        "false" => Some(false),
        _ => None,
    }
}

fn parse_cell(cell: &str, ty: ValueType) -> Value {
    let t = cell.trim();
    if t.is_empty() {
        return Value::Null;
    }
    let typed = match ty {
        ValueType::Int => t.parse().ok().map(Value::Int),
        ValueType::Float => t.parse().ok().map(Value::Float),
        ValueType::Bool => parse_bool(t).map(Value::Bool),
        ValueType::Timestamp => parse_timestamp(t).map(Value::Timestamp),
        _ => None,
    };
    typed.unwrap_or_else(|| Value::String(cell.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_columns_get_the_narrowest_type() {
        let csv = "id,price,ok,at,name,blank\n1,2.5,true,2024-01-02T03:04:05,ann,\n2,3,FALSE,2024-01-03,bob,\n,,,,,\n";
        let rows = read_csv(csv.as_bytes()).unwrap();
        assert_eq!(rows.len(), 3);
        let first = &rows[0];
        assert_eq!(first.get("id"), Some(&Value::Int(1)));
        assert_eq!(first.get("price"), Some(&Value::Float(2.5)));
        assert_eq!(rows[1].get("price"), Some(&Value::Float(3.0)));
        assert_eq!(first.get("ok"), Some(&Value::Bool(true)));
        assert_eq!(rows[1].get("ok"), Some(&Value::Bool(false)));
        assert_eq!(
            first.get("at"),
            parse_timestamp("2024-01-02T03:04:05")
                .map(Value::Timestamp)
                .as_ref()
        );
        assert_eq!(first.get("name"), Some(&Value::String("ann".into())));
        assert_eq!(first.get("blank"), Some(&Value::Null));
        assert!(rows[2].fields.iter().all(|f| f.value == Value::Null));
        assert_eq!(infer_type(["1", "x"].into_iter()), ValueType::String);
    }

    #[test]
    fn params_are_scoped_by_name_or_position() {
        let mut configs = vec![
            TransformConfig::new("a/transform_filter.wasm"),
            TransformConfig::new("b/enrich.wasm"),
        ];
        assign_params(
            &mut configs,
            &["filter.op=gt".into(), "2.uppercase=name".into()],
        )
        .unwrap();
        assert_eq!(configs[0].with.get("op").map(String::as_str), Some("gt"));
        assert_eq!(
            configs[1].with.get("uppercase").map(String::as_str),
            Some("name")
        );
        let err = assign_params(&mut configs, &["op=gt".into()]).unwrap_err();
        assert!(err.to_string().contains("NAME.KEY=VALUE"), "{err}");
        let err = assign_params(&mut configs, &["1.op=lt".into()]).unwrap_err();
        assert!(err.to_string().contains("more than once"), "{err}");
        let mut one = vec![TransformConfig::new("x.wasm")];
        assign_params(&mut one, &["a.b=c".into()]).unwrap();
        assert_eq!(one[0].with.get("a.b").map(String::as_str), Some("c"));
    }

    #[test]
    fn diff_names_the_first_difference() {
        let v = |s: &str| serde_json::from_str::<serde_json::Value>(s).unwrap();
        assert_eq!(diff(&[v("{\"a\":1}")], &[v("{\"a\":1}")]), None);
        assert!(
            diff(&[v("{\"a\":1}")], &[v("{\"a\":2}")])
                .unwrap()
                .starts_with("row 1")
        );
        assert!(
            diff(&[], &[v("{\"a\":2}")])
                .unwrap()
                .contains("first extra")
        );
    }
}
