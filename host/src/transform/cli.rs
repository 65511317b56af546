//! `sluice transform new|build|test`: tools for transform authors.
//!
//! - `new NAME` scaffolds `transforms/NAME/` from the template in `transforms/template/`
//!   (embedded in the binary), which builds and passes its golden test untouched.
//! - `build [NAME]` builds guests for wasm32-wasip2 in release mode and prints the `.wasm` paths.
//! - `test` runs a chain of components over a CSV or JSON Lines file, prints output rows as JSONL on
//!   stdout and failed records on stderr. `--expect` diffs the rows against a golden JSONL file,
//!   and `--expect-failures` the failed records; a record that fails unexpectedly fails the test.
//!   CSV goes through the source's own reader and each record gets the metadata `sluice run` would
//!   give its message, so a transform sees locally what it will see in a pipeline. With `--format
//!   dead-letters` it reruns the records a pipeline set aside (`sluice dead-letters` prints them),
//!   each as the message it was, with its own topic, offset, key and headers.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::config::TransformConfig;
use super::error::{FailureKind, LoadError, TransformError};
use super::exact_json;
use super::runtime::{RecordOutcome, RuntimeOptions, TransformChain, default_cache_dir};
use crate::config::OnError;
use crate::counted;
use crate::dead_letter::{self, GuestFault};
use crate::row::{RecordMeta, Row, ValueType};
use crate::source::csv::{BadRow, BadRowKind, CsvItem, CsvOptions, CsvReader};
use crate::source::producer::DEFAULT_MAX_MESSAGE_BYTES;
use crate::source::wire;

const TARGET: &str = "wasm32-wasip2";
/// The transforms workspace `new` and `build` use without `--dir`.
pub(crate) const DEFAULT_DIR: &str = "transforms";
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
pub struct UsageError(pub anyhow::Error);

fn usage(e: anyhow::Error) -> anyhow::Error {
    UsageError(e).into()
}

/// `sluice transform ...`: write, build and test transforms.
// One value per process, parsed from the command line: boxing `Test` would save nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, clap::Subcommand)]
pub enum TransformCommand {
    /// Scaffold a new transform crate (`<dir>/<NAME>/`) that builds and passes its test as is.
    New {
        /// The transform's name (lowercase letters, digits, `-` and `_`); the crate is
        /// `transform-<NAME>`.
        name: String,
        /// The transforms workspace to create it in.
        #[arg(long, default_value = DEFAULT_DIR)]
        dir: PathBuf,
    },
    /// Build transforms for wasm32-wasip2 in release mode and print where the `.wasm` files are.
    Build {
        /// Build only this transform (crate `transform-<NAME>`); default: all of them.
        name: Option<String>,
        /// The transforms workspace.
        #[arg(long, default_value = DEFAULT_DIR)]
        dir: PathBuf,
    },
    /// Run a chain of components over a CSV or JSONL file and print the output rows as JSONL.
    Test {
        /// A component to run; repeat for a chain (run in the order given).
        #[arg(long = "component", required_unless_present = "pipeline")]
        components: Vec<PathBuf>,
        /// Run this pipeline file's chain instead of `--component`s: its transforms with their
        /// params (environment variables substituted) and limits, on input read with its CSV
        /// source's settings; `--input` defaults to its source file. Flags given as well override
        /// the file. Nothing else in the file is used (no broker, no warehouse).
        #[arg(long, value_name = "FILE", conflicts_with = "components")]
        pipeline: Option<PathBuf>,
        /// Input rows: `.jsonl`, `.ndjson` or `.json` (JSON Lines: one object per line), else CSV
        /// (a header row, read and typed like the pipeline's CSV source), or dead letters with
        /// `--format dead-letters`; `-` reads stdin. A pipe is read as it is written: each batch
        /// runs as soon as the writer pauses.
        #[arg(long, required_unless_present = "pipeline")]
        input: Option<PathBuf>,
        /// Read the input as this format instead of going by its extension (`-` is CSV unless
        /// this says otherwise).
        #[arg(long, value_enum)]
        format: Option<InputFormat>,
        /// The CSV field delimiter, one ASCII character (the source's `delimiter`; default `,`).
        #[arg(long)]
        delimiter: Option<String>,
        /// A CSV column's type, `COLUMN=TYPE` (the source's `schema`); other columns are inferred.
        #[arg(long = "schema", value_name = "COLUMN=TYPE")]
        schema: Vec<String>,
        /// How many CSV records type inference samples (the source's `infer_rows`; default 1000).
        /// For JSON Lines, how many rows `--key-column` looks ahead for a row with its field.
        #[arg(long, value_parser = at_least_one::<usize>)]
        infer_rows: Option<usize>,
        /// The column whose value becomes each record's message key (the source's `key_column`).
        #[arg(long)]
        key_column: Option<String>,
        /// The topic every record reports to transforms (default: the pipeline file's
        /// `kafka.topic` with `--pipeline`, else `test`).
        #[arg(long)]
        topic: Option<String>,
        /// The partition every record reports (default 0); offsets still count from 0.
        #[arg(long, allow_negative_numbers = true, value_parser = clap::value_parser!(i32).range(0..))]
        partition: Option<i32>,
        /// The timestamp every record reports, in milliseconds since the Unix epoch (default
        /// none; `sluice run` stamps each message with the time it was sent). At most what a
        /// timestamp value holds in microseconds.
        #[arg(
            long,
            value_name = "MS",
            allow_negative_numbers = true,
            value_parser = clap::value_parser!(i64).range(0..=i64::MAX / 1000)
        )]
        timestamp_ms: Option<i64>,
        /// A param for `init`, `KEY=VALUE`; with several components scope it as
        /// `NAME.KEY=VALUE` (NAME is the component's name or its 1-based position).
        #[arg(long = "with", value_name = "KEY=VALUE")]
        with: Vec<String>,
        /// A golden JSONL file: exit 1 if the output rows differ from it, or if a record fails
        /// that `--expect-failures` does not expect.
        #[arg(long)]
        expect: Option<PathBuf>,
        /// A golden JSONL file of the records expected to fail, in order, one object per line
        /// with any of `record`, `line`, `stage`, `kind`, `reason` (a part of the message), and
        /// for a guest's own error `case` and `field`: exit 1 if the failed records differ from
        /// it.
        #[arg(long, value_name = "FILE")]
        expect_failures: Option<PathBuf>,
        /// Write each failed record to FILE as a line of an `--expect-failures` file (`record`,
        /// `line`, `stage`, `kind`, and a guest error's `case` and `field`; not the `reason`,
        /// whose wording a test should not pin): run once, read it, then pass it to
        /// `--expect-failures`. The rows are on stdout, for `--expect`.
        #[arg(long, value_name = "FILE")]
        write_failures: Option<PathBuf>,
        /// Rows per batch call.
        #[arg(long, default_value_t = 1024, value_parser = at_least_one::<usize>)]
        batch_size: usize,
        /// CPU-time cap per batch call, in milliseconds (the transform's `timeout_ms`).
        #[arg(long, value_parser = at_least_one::<u64>)]
        timeout_ms: Option<u64>,
        /// Memory cap per instance, in MiB, 1 to 4096 (the transform's `memory_mb`).
        #[arg(long, value_parser = memory_mb)]
        memory_mb: Option<u64>,
        /// Fuel per call, each batch and `init` (deterministic CPU limit); prints fuel consumed.
        #[arg(long, value_parser = at_least_one::<u64>)]
        fuel: Option<u64>,
        /// Most rows one record may emit (the transform's `max_rows_per_record`).
        #[arg(long, value_name = "ROWS", value_parser = at_least_one::<u32>)]
        max_rows_per_record: Option<u32>,
        /// Show the guests' stdout/stderr (on stderr).
        #[arg(long)]
        debug_stdio: bool,
    },
}

/// A count or limit flag that 0 would make meaningless (0 rows per batch, type inference from no
/// record, a time limit of nothing), refused like the pipeline file's `validate` refuses the same
/// values; clap's own range parser would say `0 is not in 1..18446744073709551615`.
fn at_least_one<T: TryFrom<u64>>(text: &str) -> Result<T, String> {
    let n: u64 = text
        .parse()
        .map_err(|_| "expected a whole number, at least 1".to_owned())?;
    if n == 0 {
        return Err("must be at least 1".into());
    }
    T::try_from(n).map_err(|_| "is too large".into())
}

/// `--memory-mb`: 1 to 4096, as in the pipeline file.
fn memory_mb(text: &str) -> Result<u64, String> {
    match at_least_one::<u64>(text)? {
        mb @ 1..=4096 => Ok(mb),
        _ => Err("must be at most 4096 (MiB)".into()),
    }
}

/// Runs a `sluice transform` subcommand; the exit code is 1 when `test --expect` finds a
/// difference. Errors in how it was called are [`UsageError`]s.
pub fn run_command(cmd: TransformCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        TransformCommand::New { name, dir } => {
            let crate_dir = scaffold(&name, &dir)?;
            crate::outln!("created {}", crate_dir.display());
            // The whole loop, so that an author need not look it up: build, then the scaffold's
            // own golden test (which passes untouched).
            // (`CARGO_TARGET_DIR` moves the build elsewhere, which `build` then prints.)
            let moved = std::env::var_os("CARGO_TARGET_DIR").is_some_and(|d| !d.is_empty());
            let wasm = if dir == Path::new(DEFAULT_DIR) {
                crate::outln!("next: sluice transform build {name}");
                match moved {
                    false => format!(
                        "{DEFAULT_DIR}/target/wasm32-wasip2/release/transform_{}.wasm",
                        name.replace('-', "_")
                    ),
                    true => "<the .wasm file build prints>".to_owned(),
                }
            } else {
                crate::outln!(
                    "next: sluice transform build {name} --dir {}",
                    dir.display()
                );
                "<the .wasm file build prints>".to_owned()
            };
            let data = crate_dir.join("testdata");
            crate::outln!(
                "then: sluice transform test --component {wasm} --input {} --expect {}",
                data.join("input.jsonl").display(),
                data.join("expected.jsonl").display()
            );
            crate::outln!(
                "unit tests: (cd {} && cargo test -p transform-{name} --target \"$(rustc -vV | \
                 sed -n 's/^host: //p')\")",
                dir.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        TransformCommand::Build { name, dir } => {
            for path in build(name.as_deref(), &dir)? {
                crate::outln!("{}", path.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        TransformCommand::Test {
            components,
            pipeline,
            input,
            format,
            delimiter,
            schema,
            infer_rows,
            key_column,
            topic,
            partition,
            timestamp_ms,
            with,
            expect,
            expect_failures,
            write_failures,
            batch_size,
            timeout_ms,
            memory_mb,
            fuel,
            max_rows_per_record,
            debug_stdio,
        } => {
            let letters = format == Some(InputFormat::DeadLetters);
            if letters {
                let given = [
                    ("--delimiter", delimiter.is_some()),
                    ("--schema", !schema.is_empty()),
                    ("--infer-rows", infer_rows.is_some()),
                    ("--key-column", key_column.is_some()),
                    ("--topic", topic.is_some()),
                    ("--partition", partition.is_some()),
                    ("--timestamp-ms", timestamp_ms.is_some()),
                ];
                if let Some((flag, _)) = given.iter().find(|f| f.1) {
                    return Err(usage(anyhow::anyhow!(
                        "{flag} does not apply to --format dead-letters: each letter's record \
                         runs as the message it was, with its own metadata and types"
                    )));
                }
                if input.is_none() {
                    // Not the pipeline's CSV, which holds rows, not letters.
                    return Err(usage(anyhow::anyhow!(
                        "--format dead-letters needs --input: a file of the letters `sluice \
                         dead-letters` prints, or `-` to read them from a pipe"
                    )));
                }
            }
            let file = pipeline
                .as_deref()
                .map(|p| PipelineChain::load(p, input.is_none()))
                .transpose()?;
            let mut configs = match &file {
                Some(file) => file.configs.clone(),
                None => components
                    .iter()
                    .map(|c| TransformConfig::new(c.to_string_lossy()))
                    .collect(),
            };
            for cfg in &mut configs {
                // Every failure is reported, whatever the pipeline would do with it.
                cfg.on_error = OnError::DeadLetter.into();
                cfg.timeout_ms = timeout_ms.unwrap_or(cfg.timeout_ms);
                cfg.memory_mb = memory_mb.unwrap_or(cfg.memory_mb);
                cfg.fuel = fuel.or(cfg.fuel);
                cfg.max_rows_per_record = max_rows_per_record.unwrap_or(cfg.max_rows_per_record);
                cfg.debug_stdio |= debug_stdio;
            }
            override_params(&mut configs, &with).map_err(usage)?;
            name_apart(&mut configs);
            let input = match (input, &file) {
                (Some(input), _) => input,
                (None, Some(file)) => file.input.clone(),
                (None, None) => return Err(usage(anyhow::anyhow!("--input is required"))),
            };
            let dash = Path::new("-");
            if [Some(&input), expect.as_ref(), expect_failures.as_ref()]
                .iter()
                .filter(|p| p.is_some_and(|p| p == dash))
                .count()
                > 1
            {
                return Err(usage(anyhow::anyhow!(
                    "stdin (`-`) can be only one of --input, --expect and --expect-failures"
                )));
            }
            let mut opts = input_options(
                &input,
                format,
                delimiter.clone(),
                &schema,
                infer_rows,
                key_column.clone(),
            )
            .map_err(usage)?;
            if let Some(file) = file.as_ref().filter(|_| !letters) {
                let src = &file.source;
                if format_of(&input, format) == InputFormat::Csv {
                    if delimiter.is_none() {
                        opts.delimiter = crate::source::config::delimiter_byte(&src.delimiter)
                            .unwrap_or(opts.delimiter);
                    }
                    for (column, ty) in &src.schema {
                        opts.schema.entry(column.clone()).or_insert(*ty);
                    }
                    opts.infer_rows = infer_rows.unwrap_or(src.infer_rows);
                }
                if key_column.is_none() {
                    opts.key_column.clone_from(&src.key_column);
                }
                opts.topic.clone_from(&file.loaded.config.kafka.topic);
            }
            if let Some(topic) = topic {
                if let Some(problem) = crate::validate::topic_name_problem(&topic) {
                    return Err(usage(anyhow::anyhow!("--topic {problem}")));
                }
                opts.topic = topic;
            }
            opts.partition = partition.unwrap_or(opts.partition);
            opts.timestamp_ms = timestamp_ms;
            let records = read_input(&input, &opts)
                .map_err(|e| match (&pipeline, &key_column, &opts.key_column) {
                    // The key column came from the file, not from a flag: say so.
                    (Some(file), None, Some(k)) => anyhow::anyhow!(
                        "{}",
                        format!("{e:#}").replacen(
                            &format!("--key-column {k:?}"),
                            &format!("the source's key_column {k:?} (in {})", file.display()),
                            1
                        )
                    ),
                    _ => e,
                })
                .map_err(usage)?;
            // Checked before the run, so that a bad golden file does not cost a whole run first.
            let stages: Vec<String> = ["source", dead_letter::CONSUME_STAGE]
                .into_iter()
                .map(str::to_owned)
                .chain(
                    configs
                        .iter()
                        .map(|c| format!("transform:{}", c.display_name())),
                )
                .collect();
            let mut golden = Golden::read(expect.as_deref(), expect_failures.as_deref(), &stages)
                .map_err(usage)?;
            if let Some(path) = &write_failures {
                let read = [
                    ("--input", Some(&input)),
                    ("--expect", expect.as_ref()),
                    ("--expect-failures", expect_failures.as_ref()),
                ];
                golden.failures_out = Some(FailuresOut::create(path, &read).map_err(usage)?);
            }
            let stdout = std::io::stdout();
            let stderr = std::io::stderr();
            let chain = match &file {
                Some(file) => {
                    let flagged = [
                        ("timeout_ms", timeout_ms.is_some()),
                        ("memory_mb", memory_mb.is_some()),
                        ("fuel", fuel.is_some()),
                    ];
                    let flagged: Vec<&str> = flagged.iter().filter(|f| f.1).map(|f| f.0).collect();
                    file.load_chain(&configs, &flagged)?
                }
                None => load(&configs)?,
            };
            // With nothing to compare, a reader that has seen enough (`| head`) ends the run,
            // as it would end `cat`; with a golden file the whole input still counts.
            let closed = std::sync::atomic::AtomicBool::new(false);
            let compares = expect.is_some() || expect_failures.is_some();
            // So does `--write-failures`: its file would miss the failures past the cut.
            let whole = compares || write_failures.is_some();
            let report = test(
                &chain,
                records,
                batch_size.max(1),
                golden,
                &mut UntilClosed(Some(stdout.lock()), Some(&closed)),
                &mut UntilClosed(Some(stderr.lock()), None),
                (!whole).then_some(&closed),
            )?;
            if !compares {
                return Ok(ExitCode::SUCCESS);
            }
            let mut matched = true;
            if let (Some(golden), Some(verdict)) = (&expect, &report.rows_verdict) {
                matched &= print_verdict(golden, verdict, "row");
            }
            match (&expect_failures, &report.failures_verdict) {
                (Some(golden), Some(verdict)) => {
                    matched &= print_verdict(golden, verdict, "failed record");
                }
                _ => {
                    if let Some(first) = &report.first_failure {
                        crate::errln!(
                            "mismatch: {} failed and no --expect-failures file \
                             expects failures; the first: {first}",
                            counted(report.failed as usize, "record")
                        );
                        matched = false;
                    }
                }
            }
            // Every row came out right, but only because each ran again alone: the transform is
            // broken on batches, which is what `sluice run` gives it.
            for (name, n) in &report.batch_only {
                crate::errln!(
                    "mismatch: transform {name} broke on {} only as a batch; the rows match \
                     only because each ran again alone",
                    counted(n, "batch call")
                );
                matched = false;
            }
            Ok(if matched {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
    }
}

/// Gives components that share a name (the same `.wasm` twice in a chain) their position too,
/// `filter#1` and `filter#2`, so that counts, failures and `--expect-failures` stages tell them
/// apart. Done after `--with` is assigned, which scopes such components by position.
fn name_apart(configs: &mut [TransformConfig]) {
    let names: Vec<String> = configs.iter().map(|c| c.display_name()).collect();
    for (i, cfg) in configs.iter_mut().enumerate() {
        if names.iter().filter(|n| same_name(n, &names[i])).count() > 1 {
            cfg.name = Some(format!("{}#{}", names[i], i + 1));
        }
    }
}

/// "matches" or "match", to go with [`counted`].
fn agree(n: usize) -> &'static str {
    if n == 1 { "matches" } else { "match" }
}

/// Stdout or stderr that its reader may close (`| head`): once it has, output goes nowhere (and
/// the flag, if any, is set), so that the counts and the `--expect` verdict and exit code are
/// still those of the whole input.
struct UntilClosed<'a, W>(Option<W>, Option<&'a std::sync::atomic::AtomicBool>);

impl<W: Write> UntilClosed<'_, W> {
    fn close(&mut self) {
        self.0 = None;
        if let Some(closed) = self.1 {
            closed.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

impl<W: Write> Write for UntilClosed<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let Some(w) = &mut self.0 else {
            return Ok(buf.len());
        };
        match w.write(buf) {
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                self.close();
                Ok(buf.len())
            }
            other => other,
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self.0.as_mut().map(Write::flush) {
            Some(Err(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                self.close();
                Ok(())
            }
            other => other.unwrap_or(Ok(())),
        }
    }
}

/// Directories of the transforms workspace that are not transform crates: `target` and
/// `template` (in `exclude` of `transforms/Cargo.toml`, as is `.cargo`, which is no valid name
/// anyway) and the guest SDK.
const RESERVED_NAMES: [&str; 3] = ["target", "template", "sluice-guest"];

/// Creates `<dir>/<name>/` from the embedded template and returns its path; a `--dir` that does
/// not exist yet, or is empty, becomes a workspace first (see [`start_workspace`]). A bad name, a
/// missing workspace or an existing crate is a [`UsageError`].
pub fn scaffold(name: &str, dir: &Path) -> anyhow::Result<PathBuf> {
    check_name(name, dir).map_err(usage)?;
    let started = start_workspace(dir).map_err(usage)?;
    check_new(name, dir).map_err(usage)?;
    if started {
        crate::outln!(
            "created the transforms workspace {} (its Cargo.toml takes the guest SDK from this \
             sluice's checkout; a git URL works too)",
            dir.display()
        );
    }
    let crate_dir = dir.join(name);
    // The paths in its doc comment, as the author gave the workspace.
    let shown = dir.display().to_string();
    let dir_flag = match dir == Path::new(DEFAULT_DIR) {
        true => String::new(),
        false => format!(" --dir {shown}"),
    };
    let fill = |s: &str| {
        s.replace("{{name}}", name)
            .replace("{{crate}}", &name.replace('-', "_"))
            .replace("{{dir_flag}}", &dir_flag)
            .replace("{{dir}}", &shown)
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
    // A workspace that lists its members by name would leave the crate out of every build, so
    // that `transform build NAME`, the next step, fails. (Cargo's own failures show there.)
    let package = format!("transform-{name}");
    if let Ok(ws) = Workspace::read(dir)
        && !ws.components.iter().any(|c| c.package == package)
    {
        let _ = std::fs::remove_dir_all(&crate_dir);
        return Err(usage(anyhow::anyhow!(
            "{}'s [workspace] members do not include {name:?}, so it would never build: add \
             \"{name}\" (or \"*\", with \"target\" in exclude) to members, then run this again",
            dir.join("Cargo.toml").display()
        )));
    }
    Ok(crate_dir)
}

/// The guest SDK of the sluice checkout this binary was built from, while it is there.
fn own_sdk() -> Option<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent()?;
    let sdk = root.join("transforms").join("sluice-guest");
    sdk.join("Cargo.toml")
        .is_file()
        .then(|| sdk.canonicalize().ok())?
}

/// Directories a repository keeps beside its crates, which `members = ["*"]` would otherwise
/// take for crates (cargo fails on a member without a manifest).
const NOT_CRATES: [&str; 6] = [".cargo", ".git", ".github", ".vscode", ".idea", "target"];

/// Whether `dir` can become a workspace: it does not exist, or holds nothing but dot-entries
/// (`.git` of a fresh repository, `.gitignore`) that a workspace leaves alone.
fn fresh_dir(dir: &Path) -> bool {
    match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok())
            .all(|e| e.file_name().to_string_lossy().starts_with('.')),
        Err(e) => e.kind() == std::io::ErrorKind::NotFound,
    }
}

/// `text` as a TOML basic string: `"` and `\` escaped, control characters as `\uXXXX`.
fn toml_string(text: &str) -> String {
    let mut out = String::from('"');
    for c in text.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Makes `dir`, named by `--dir`, a transforms workspace of its own when [`fresh_dir`]: a
/// `Cargo.toml` with what the template's crate inherits and this sluice's SDK, a
/// `.cargo/config.toml` for the wasm target and a `.gitignore` for `target/`, so that an author
/// keeping transforms in a repository of their own writes no manifest by hand. Whether it did.
/// Nothing is overwritten. The default `transforms/` and a directory with files in it are left
/// to [`check_new`] to report.
fn start_workspace(dir: &Path) -> anyhow::Result<bool> {
    if dir == Path::new(DEFAULT_DIR) || dir.join("Cargo.toml").exists() || !fresh_dir(dir) {
        return Ok(false);
    }
    let Some(sdk) = own_sdk() else {
        bail!(
            "{} has no workspace, and `new` cannot start one there: the guest SDK of the sluice \
             checkout this binary was built from ({}) is not there any more. Write the \
             workspace's Cargo.toml by hand (see \"A transform crate outside transforms/\" in \
             docs/TRANSFORMS.md)",
            dir.display(),
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .with_file_name("transforms")
                .join("sluice-guest")
                .display()
        );
    };
    let sdk = sdk
        .to_str()
        .with_context(|| format!("the guest SDK's path {} is not UTF-8", sdk.display()))?;
    let exclude: Vec<String> = NOT_CRATES.iter().map(|d| toml_string(d)).collect();
    let manifest = format!(
        "# A sluice transforms workspace: `sluice transform new NAME --dir .` adds a crate, \
         `sluice\n# transform build --dir .` builds them all for wasm32-wasip2 \
         (.cargo/config.toml).\n\
         [workspace]\nresolver = \"3\"\n\
         # Every directory here is a crate, but those excluded: add any other (docs, tests).\n\
         members = [\"*\"]\nexclude = [{}]\n\n\
         # What each crate inherits; the license is yours to choose.\n\
         [workspace.package]\nversion = \"0.1.0\"\nedition = \"2024\"\nrust-version = \"1.95\"\n\
         license = \"Apache-2.0\"\npublish = false\n\n\
         [workspace.dependencies]\n\
         # The guest SDK, in the sluice checkout that made this file (or `git = \"<its URL>\"`).\n\
         sluice-guest = {{ path = {} }}\n\n\
         # Smaller, faster guests, as sluice's own transforms/ builds them.\n\
         [profile.release]\nopt-level = 3\nlto = true\ncodegen-units = 1\nstrip = true\n\
         panic = \"abort\"\n",
        exclude.join(", "),
        toml_string(sdk)
    );
    let config = "# Guests are components for WASI 0.2.\n[build]\ntarget = \"wasm32-wasip2\"\n";
    std::fs::create_dir_all(dir.join(".cargo"))
        .with_context(|| format!("creating {}", dir.display()))?;
    for (file, text) in [
        ("Cargo.toml", manifest.as_str()),
        (".cargo/config.toml", config),
        (".gitignore", "/target/\n"),
    ] {
        let path = dir.join(file);
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(mut f) => f.write_all(text.as_bytes()),
            // A repository's own `.gitignore` is kept as it is.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && file == ".gitignore" => {
                Ok(())
            }
            Err(e) => Err(e),
        }
        .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(true)
}

/// Why `NAME` cannot be a new transform's name in `dir`, if it cannot; nothing on disk is looked
/// at, so that a bad name is refused before a workspace is started.
fn check_name(name: &str, dir: &Path) -> anyhow::Result<()> {
    // crates.io's limit, and far below a file name's.
    if name.len() > 64 {
        bail!(
            "invalid transform name: {} characters, at most 64",
            name.len()
        );
    }
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
    if let Some(reserved) = RESERVED_NAMES.iter().find(|r| same_name(r, name)) {
        bail!(
            "invalid transform name {name:?}: {}/{reserved} is not a transform crate but part of the workspace; pick another name",
            dir.display()
        );
    }
    Ok(())
}

/// Why `transform new NAME --dir DIR` cannot scaffold, if it cannot.
fn check_new(name: &str, dir: &Path) -> anyhow::Result<()> {
    if !dir.join("Cargo.toml").is_file() {
        bail!(
            "{} is not a transforms workspace (no Cargo.toml): {}",
            dir.display(),
            where_workspace(dir)
        );
    }
    // `my-thing` and `my_thing` would both build `transform_my_thing.wasm`, one over the other.
    let taken = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok())
        .find(|e| same_name(&e.file_name().to_string_lossy(), name));
    if let Some(existing) = taken {
        let why = match existing.file_name().to_string_lossy() == name {
            true => String::new(),
            // Not the name given: say why it counts as the same.
            false => format!(
                " (`-` and `_` name the same transform: both build transform_{}.wasm)",
                name.replace('-', "_")
            ),
        };
        bail!(
            "{} already exists{why}; pick another name",
            existing.path().display()
        );
    }
    // The scaffold inherits its version, edition and SDK from the workspace: elsewhere it would
    // be created, then fail to build with cargo's words, not ours.
    let manifest = std::fs::read_to_string(dir.join("Cargo.toml"))
        .with_context(|| format!("reading {}", dir.join("Cargo.toml").display()))?;
    let lacks = workspace_lacks(&manifest);
    if !lacks.is_empty() {
        bail!(
            "{} is not a sluice transforms workspace: its Cargo.toml lacks {}, which the new crate \
             inherits (sluice's own is transforms/; for a crate elsewhere see \"A transform crate \
             outside transforms/\" in docs/TRANSFORMS.md)",
            dir.display(),
            lacks.join(" and ")
        );
    }
    Ok(())
}

/// What to do when `dir` holds no workspace: the default is relative to the project root, and
/// `--dir` names the workspace itself, not the directory above it.
fn where_workspace(dir: &Path) -> String {
    if dir == Path::new(DEFAULT_DIR) {
        "run this from the directory that holds transforms/ (the project root), or pass --dir"
            .to_owned()
    } else {
        "--dir names the transforms workspace itself, the directory whose Cargo.toml has \
         [workspace] (`new` starts one only in a directory that does not exist yet or is empty)"
            .to_owned()
    }
}

/// What a workspace manifest lacks of what the template inherits: `version`, `edition`,
/// `rust-version`, `license` and `publish` in `[workspace.package]`, and `sluice-guest` in
/// `[workspace.dependencies]`, in any of TOML's ways of writing them (a table per dependency,
/// dotted keys, quoted keys, comments). Empty when it has it all.
fn workspace_lacks(manifest: &str) -> Vec<String> {
    const INHERITED: [&str; 5] = ["version", "edition", "rust-version", "license", "publish"];
    // A header or key with its spaces and quotes taken out: `[ "workspace".package ]` is
    // `workspace.package`.
    let bare = |s: &str| -> String {
        s.chars()
            .filter(|c| !c.is_whitespace() && *c != '"' && *c != '\'')
            .collect()
    };
    let (mut section, mut keys, mut sdk) = (String::new(), Vec::new(), false);
    for line in manifest.lines() {
        let line = line.split('#').next().unwrap_or_default().trim();
        if let Some(header) = line.strip_prefix('[') {
            section = bare(header.trim_start_matches('[').trim_end_matches(']'));
            sdk |= section == "workspace.dependencies.sluice-guest";
            continue;
        }
        let Some((key, _)) = line.split_once('=') else {
            continue;
        };
        // The key as seen from the top of the file: `[workspace] package.version = ...` and
        // `[workspace.package] version = ...` are the same key.
        let full = format!("{section}.{}", bare(key));
        if let Some(k) = full.strip_prefix("workspace.package.") {
            keys.push(k.split('.').next().unwrap_or_default().to_owned());
        }
        sdk |= full == "workspace.dependencies.sluice-guest"
            || full.starts_with("workspace.dependencies.sluice-guest.");
    }
    let package: Vec<String> = INHERITED
        .iter()
        .filter(|k| !keys.iter().any(|have| have == *k))
        .map(|k| format!("`{k}`"))
        .collect();
    let mut lacks = Vec::new();
    if !package.is_empty() {
        lacks.push(format!("{} in [workspace.package]", package.join(", ")));
    }
    if !sdk {
        lacks.push("sluice-guest in [workspace.dependencies]".to_owned());
    }
    lacks
}

/// Builds the workspace at `dir` (or only `transform-<name>`) for wasm32-wasip2 in release mode
/// and returns the `.wasm` paths of the crates built: only the workspace's current members, not
/// leftovers of deleted crates in the target directory. No workspace at `dir`, or no such
/// transform in it, is a [`UsageError`].
pub fn build(name: Option<&str>, dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    if !dir.join("Cargo.toml").is_file() {
        return Err(usage(anyhow::anyhow!(
            "no transforms workspace at {} (no Cargo.toml there): {}",
            dir.display(),
            where_workspace(dir)
        )));
    }
    // The SDK generates its bindings from the WIT beside the workspace (`../../wit` from its
    // crate): a workspace copied out of the repository without it fails in cargo, six errors
    // deep.
    let wit = dir.join("..").join("wit");
    if dir.join("sluice-guest/Cargo.toml").is_file() && !wit.is_dir() {
        return Err(usage(anyhow::anyhow!(
            "{} holds the guest SDK (sluice-guest), which reads the WIT package from {}, and \
             there is none: copy the repository's wit/ there, or depend on the SDK where it is \
             (`sluice-guest = {{ path = \".../transforms/sluice-guest\" }}`) instead of copying it",
            dir.display(),
            wit.display()
        )));
    }
    let workspace = Workspace::read(dir)?;
    let crates: Vec<&Component> = match name {
        None => workspace.components.iter().collect(),
        Some(n) => {
            let package = format!("transform-{n}");
            let found = workspace
                .components
                .iter()
                .find(|c| same_name(&c.package, &package));
            match found {
                Some(c) => vec![c],
                None => {
                    return Err(usage(anyhow::anyhow!(
                        "no transform {n:?} (crate {package}) in {}; its transforms: {}",
                        dir.display(),
                        workspace
                            .components
                            .iter()
                            .map(|c| c.package.strip_prefix("transform-").unwrap_or(&c.package))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )));
                }
            }
        }
    };
    ensure_wasm_target();
    let mut cmd = Command::new("cargo");
    cmd.current_dir(dir)
        .args(["build", "--release", "--target", TARGET]);
    if name.is_some() {
        for c in &crates {
            cmd.args(["-p", &c.package]);
        }
    }
    // Keep the build's own messages off stdout, which lists the results.
    cmd.stdout(std::process::Stdio::from(std::io::stderr()));
    let status = cmd.status().with_context(|| {
        format!(
            "cannot run cargo in {} (is it installed and on PATH?)",
            dir.display()
        )
    })?;
    if !status.success() {
        bail!("cargo build in {} failed ({status})", dir.display());
    }
    let release = workspace.target_dir.join(TARGET).join("release");
    let mut out: Vec<PathBuf> = crates
        .iter()
        .map(|c| release.join(format!("{}.wasm", c.lib.replace('-', "_"))))
        .filter(|p| p.is_file())
        .collect();
    out.sort();
    Ok(out)
}

/// What `cargo metadata --no-deps` says about a transforms workspace.
struct Workspace {
    /// Where it builds to (`CARGO_TARGET_DIR` and config files considered).
    target_dir: PathBuf,
    /// Its members that build a component (a `cdylib`), in cargo's order.
    components: Vec<Component>,
}

/// A member crate that builds a component.
struct Component {
    /// The package name (`transform-filter`).
    package: String,
    /// The library target's name, which names the `.wasm` file (`transform_filter`).
    lib: String,
}

impl Workspace {
    fn read(dir: &Path) -> anyhow::Result<Workspace> {
        let out = Command::new("cargo")
            .current_dir(dir)
            .args(["metadata", "--format-version", "1", "--no-deps"])
            .output()
            .with_context(|| {
                format!(
                    "cannot run cargo in {} (is it installed and on PATH?)",
                    dir.display()
                )
            })?;
        if !out.status.success() {
            bail!(
                "cargo metadata in {} failed: {}",
                dir.display(),
                String::from_utf8_lossy(&out.stderr).trim_end()
            );
        }
        let meta: serde_json::Value =
            serde_json::from_slice(&out.stdout).context("parsing cargo metadata")?;
        let target_dir = meta["target_directory"]
            .as_str()
            .map(PathBuf::from)
            .context("cargo metadata has no target_directory")?;
        let components = meta["packages"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| {
                let lib = p["targets"].as_array()?.iter().find(|t| {
                    t["kind"]
                        .as_array()
                        .is_some_and(|k| k.iter().any(|k| k == "cdylib"))
                })?;
                Some(Component {
                    package: p["name"].as_str()?.to_owned(),
                    lib: lib["name"].as_str()?.to_owned(),
                })
            })
            .collect();
        Ok(Workspace {
            target_dir,
            components,
        })
    }
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

/// A pipeline file's chain and source, for `transform test --pipeline`.
struct PipelineChain {
    /// Its transforms, named and with their components' paths resolved.
    configs: Vec<TransformConfig>,
    /// Its CSV source's settings.
    source: crate::source::config::CsvSourceConfig,
    /// Its source file, resolved.
    input: PathBuf,
    /// The file itself, to name the key of a param a transform refuses.
    loaded: crate::config::LoadedConfig,
}

impl PipelineChain {
    /// Reads `file` as `sluice run` does (environment variables substituted, their values masked
    /// in sluice's output). Only mistakes in its transforms and its source refuse it (a test
    /// uses no broker and no warehouse), and of the source's, only its delimiter's unless
    /// `its_input`: the test reads the source file.
    fn load(file: &Path, its_input: bool) -> anyhow::Result<PipelineChain> {
        let loaded = crate::config::load_for_transforms(file)?;
        loaded.mask_secrets_in_output();
        let issues: Vec<_> = crate::validate::validate(&loaded)
            .into_iter()
            .filter(|i| {
                let source = match its_input {
                    true => i.path.starts_with("source"),
                    false => i.path == "source.delimiter",
                };
                source || i.path.starts_with("transforms")
            })
            .collect();
        if !issues.is_empty() {
            return Err(loaded.invalid(issues).into());
        }
        let crate::source::config::SourceConfig::Csv(source) = &loaded.config.source;
        Ok(PipelineChain {
            configs: crate::validate::chain_configs(&loaded),
            input: loaded.resolve(&source.path),
            source: source.clone(),
            loaded,
        })
    }

    /// Loads `configs` (this file's chain with the command line's flags) for [`test()`]. A
    /// transform that refuses a param the file gave, or runs out of a limit it set, is a mistake
    /// in the file (exit 2 naming its key, as `sluice run` does); a param given by `--with`, or
    /// a limit in `flagged` (the settings given by flags), is the command's, as without a file.
    fn load_chain(
        &self,
        configs: &[TransformConfig],
        flagged: &[&str],
    ) -> anyhow::Result<TransformChain> {
        let errors = match TransformChain::load_each(configs, &test_options()) {
            Ok(chain) => return Ok(chain),
            Err(errors) => errors,
        };
        let mut issues = Vec::new();
        for (i, e) in errors {
            let from_file = |p: &str| {
                let file = self.configs[i].with.get(p);
                file.is_some() && file == configs[i].with.get(p)
            };
            let engine = matches!(e, LoadError::Engine(_));
            let by_flag = e.setting().is_some_and(|s| flagged.contains(&s));
            let by_command = match e.param() {
                Some(p) => !from_file(p),
                None => by_flag,
            };
            match e.param() {
                _ if by_command => {
                    return Err(usage(
                        anyhow::Error::new(e).context("loading the transforms"),
                    ));
                }
                _ if engine => return Err(anyhow::Error::new(e).context("loading the transforms")),
                _ => issues.push(
                    self.loaded
                        .issue(&crate::validate::component_issue_path(i, &e), e.to_string()),
                ),
            }
        }
        Err(self.loaded.invalid(issues).into())
    }
}

/// [`assign_params`] over params the chain may have already (a pipeline file's): a `--with`
/// replaces the param it names. A param given twice in `with` is still an error.
fn override_params(configs: &mut [TransformConfig], with: &[String]) -> anyhow::Result<()> {
    let mut given: Vec<TransformConfig> = configs
        .iter()
        .map(|c| {
            let mut c = c.clone();
            c.with.clear();
            c
        })
        .collect();
    assign_params(&mut given, with)?;
    for (cfg, given) in configs.iter_mut().zip(given) {
        cfg.with.extend(given.with);
    }
    Ok(())
}

/// Distributes `KEY=VALUE` / `NAME.KEY=VALUE` params over the chain. NAME is a component's name
/// (`-` and `_` alike, since `transform new my-thing` builds `transform_my_thing.wasm`) or its
/// 1-based position. With one component an unknown NAME is part of the key (`a.b=c` is param
/// `a.b`), but a position other than 1 is still an error; with several, every param must be
/// scoped to exactly one component. A param given
/// twice for one component is an error: silently keeping the last one hides a typo in a long
/// command.
fn assign_params(configs: &mut [TransformConfig], with: &[String]) -> anyhow::Result<()> {
    let names: Vec<String> = configs.iter().map(|c| c.display_name()).collect();
    let listed = || {
        names
            .iter()
            .enumerate()
            .map(|(i, n)| format!("{} {n}", i + 1))
            .collect::<Vec<_>>()
            .join(", ")
    };
    if names.is_empty() && !with.is_empty() {
        bail!("--with: the chain has no transforms to give params to");
    }
    for item in with {
        let (key, value) = item
            .split_once('=')
            .filter(|(key, _)| !key.trim().is_empty())
            .with_context(|| format!("--with {item:?} is not KEY=VALUE"))?;
        // A component's name may hold dots itself (`filter.v2.wasm` is `filter.v2`): the longest
        // prefix that names one is the scope.
        let split = key
            .match_indices('.')
            .rev()
            .map(|(at, _)| (&key[..at], &key[at + 1..]))
            .find(|(scope, _)| !matches!(scope_of(&names, scope), Scope::Unknown))
            .or_else(|| key.split_once('.'));
        let (i, k) = match split {
            Some((_, k)) if k.trim().is_empty() => {
                bail!("--with {item:?} is not NAME.KEY=VALUE: the key is empty")
            }
            Some((scope, k)) => match scope_of(&names, scope) {
                Scope::One(i) => (i, k),
                Scope::Unknown if scope.parse::<usize>().is_ok() => bail!(
                    "--with {item:?}: position {scope} is out of range: {}",
                    match names.len() {
                        1 => format!("there is one component ({})", listed()),
                        n => format!(
                            "there are {n} components, at positions 1 to {n} ({})",
                            listed()
                        ),
                    }
                ),
                Scope::Unknown if names.len() == 1 => (0, key),
                Scope::Unknown => bail!(
                    "--with {item:?}: no component is named {scope:?} (components: {})",
                    listed()
                ),
                Scope::Ambiguous(at) => bail!(
                    "--with {item:?}: {scope:?} is ambiguous, it names the components at \
                     positions {}; scope the param by position instead (POSITION.KEY=VALUE)",
                    at.iter()
                        .map(|i| (i + 1).to_string())
                        .collect::<Vec<_>>()
                        .join(" and ")
                ),
            },
            None if names.len() == 1 => (0, key),
            None => bail!(
                "--with {item:?}: with several components, scope params as NAME.KEY=VALUE, NAME \
                 being a component's name or position ({})",
                listed()
            ),
        };
        if configs[i]
            .with
            .insert(k.to_owned(), value.to_owned())
            .is_some()
        {
            bail!(
                "--with {item:?}: param {k:?} of {} is given more than once",
                names[i]
            );
        }
    }
    Ok(())
}

/// Whether two transform or crate names are the same with `-` and `_` alike: `transform new
/// my-thing` builds `transform_my_thing.wasm`, whose component is named `my_thing`.
fn same_name(a: &str, b: &str) -> bool {
    a.replace('-', "_") == b.replace('-', "_")
}

/// Which components the NAME of a `--with NAME.KEY=VALUE` picks.
enum Scope {
    One(usize),
    Unknown,
    Ambiguous(Vec<usize>),
}

/// Resolves a `--with` scope against the chain's names, then as a 1-based position.
fn scope_of(names: &[String], scope: &str) -> Scope {
    // A name given exactly wins over names that match it only with `-` for `_` (a pipeline
    // file's `my-step` and `my_step` are two names).
    let exact: Vec<usize> = (0..names.len()).filter(|&i| names[i] == scope).collect();
    if let [i] = exact[..] {
        return Scope::One(i);
    }
    let by_name: Vec<usize> = (0..names.len())
        .filter(|&i| same_name(&names[i], scope))
        .collect();
    match by_name[..] {
        [i] => Scope::One(i),
        [] => match scope.parse::<usize>() {
            Ok(p) if (1..=names.len()).contains(&p) => Scope::One(p - 1),
            _ => Scope::Unknown,
        },
        _ => Scope::Ambiguous(by_name),
    }
}

/// What `test` saw. It keeps counts and verdicts, not the rows themselves, so that an input of
/// any size runs in bounded memory.
#[derive(Debug)]
pub struct TestReport {
    /// How many rows the chain emitted.
    pub rows: u64,
    /// How many records failed, bad input records included.
    pub failed: u64,
    /// The first record that failed, if any.
    pub first_failure: Option<Failure>,
    /// Against the golden rows, when there were some: how many matched, or the first difference.
    pub rows_verdict: Option<Result<usize, String>>,
    /// Against the golden failed records, when there were some: how many matched, or the first
    /// difference.
    pub failures_verdict: Option<Result<usize, String>>,
    /// The transforms that failed on a batch but on none of its rows alone, and how many times.
    pub batch_only: Vec<(String, u64)>,
}

/// The golden files of `transform test`: the rows expected (`--expect`) and the failed records
/// expected (`--expect-failures`).
#[derive(Debug, Default)]
pub struct Golden {
    rows: Option<GoldenFile<JsonRow>>,
    failures: Option<GoldenFile<ExpectedFailure>>,
    /// Where `--write-failures` writes the failed records, as the lines of a failures file.
    pub failures_out: Option<FailuresOut>,
}

impl Golden {
    /// Checks the golden files that are given, every line, so that a bad one fails before the
    /// run rather than after it. They are read again as the run compares with them. A failure's
    /// `stage` must be one of `stages`, the stages this run has: a misspelt one would only ever
    /// show up as a mismatch.
    pub fn read(
        rows: Option<&Path>,
        failures: Option<&Path>,
        stages: &[String],
    ) -> anyhow::Result<Golden> {
        Ok(Golden {
            rows: rows
                .map(|p| GoldenFile::open(p, |_| Ok(())).context("--expect"))
                .transpose()?,
            failures: failures
                .map(|p| {
                    GoldenFile::open(p, |f: &ExpectedFailure| f.check_stage(stages))
                        .context("--expect-failures")
                })
                .transpose()?,
            failures_out: None,
        })
    }
}

/// The `--write-failures` file as the run writes it: a temporary file beside it, put in its place
/// when the run has gone through the whole input, so that a run that cannot start or stops on an
/// error leaves an older file as it was.
#[derive(Debug)]
pub struct FailuresOut {
    path: PathBuf,
    file: std::io::BufWriter<tempfile::NamedTempFile>,
}

impl FailuresOut {
    /// Starts writing `path`, which may be none of the files the run reads (`read`: each flag
    /// and its file, if given) nor where its output goes: writing it would destroy them.
    fn create(path: &Path, read: &[(&str, Option<&PathBuf>)]) -> anyhow::Result<FailuresOut> {
        use std::os::unix::fs::MetadataExt;
        if let Ok(meta) = std::fs::metadata(path) {
            let same = |p: &Path| {
                p != Path::new("-")
                    && std::fs::metadata(p)
                        .is_ok_and(|m| (m.dev(), m.ino()) == (meta.dev(), meta.ino()))
            };
            if let Some((flag, _)) = read.iter().find(|(_, p)| p.is_some_and(|p| same(p))) {
                bail!(
                    "--write-failures {} is the {flag} file, which the run reads: writing it \
                     would destroy it. Write the failures elsewhere",
                    path.display()
                );
            }
            if let Some(stream) = output_stream(&meta) {
                bail!(
                    "--write-failures {} is also where this run writes its {stream}. Write the \
                     failures elsewhere",
                    path.display()
                );
            }
        }
        let dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        let file = tempfile::NamedTempFile::new_in(dir)
            .with_context(|| format!("cannot write --write-failures {}", path.display()))?;
        Ok(FailuresOut {
            path: path.to_owned(),
            file: std::io::BufWriter::new(file),
        })
    }

    /// Writes one failed record.
    fn write(&mut self, f: &Failure) -> std::io::Result<()> {
        let expected = serde_json::to_string(&ExpectedFailure::of(f))?;
        writeln!(self.file, "{}", crate::config::redact_output(&expected))
    }

    /// Puts the file in its place.
    fn finish(self) -> anyhow::Result<()> {
        let what = || format!("cannot write --write-failures {}", self.path.display());
        let file = self
            .file
            .into_inner()
            .map_err(|e| e.into_error())
            .with_context(what)?;
        file.persist(&self.path)
            .map_err(|e| e.error)
            .with_context(what)?;
        Ok(())
    }
}

/// A golden file's items, handed out in order: read through once up front (every line checked
/// and counted, nothing kept), then read again item by item as the run compares with them, so
/// that a golden file of any size fits in memory. A file that cannot be read twice (a pipe) is
/// held in memory instead.
#[derive(Debug)]
struct GoldenFile<E> {
    path: PathBuf,
    /// How many items it has.
    count: usize,
    /// The items not yet handed out and their lines, when held in memory.
    held: Option<std::collections::VecDeque<(u64, E)>>,
    /// The second reading, once started.
    lines: Option<JsonLines>,
    /// How many items the second reading has handed out: it stops at `count`, so that lines
    /// appended to the file during the run (by a `tee -a` of the output, say) are not compared.
    handed: usize,
    /// A hash of the lines the first reading checked, and of those the second has handed out so
    /// far: when they differ at the last line, the file was rewritten during the run (`| tee
    /// golden.jsonl` truncates it and writes the run's own rows), and the verdict cannot stand.
    /// Appends after those lines change nothing.
    checked: u64,
    reread: std::hash::DefaultHasher,
}

impl<E: Expected> GoldenFile<E> {
    /// Opens and checks the golden file at `path`: every item must parse and pass `check`.
    fn open(
        path: &Path,
        check: impl Fn(&E) -> Result<(), String>,
    ) -> anyhow::Result<GoldenFile<E>> {
        // `-` is stdin, whatever a file of that name in the working directory is.
        let meta = (path != Path::new("-"))
            .then(|| std::fs::metadata(path).ok())
            .flatten();
        let regular = meta.as_ref().is_some_and(|m| m.is_file());
        if let Some(stream) = meta
            .as_ref()
            .filter(|m| m.is_file())
            .and_then(output_stream)
        {
            bail!(
                "{} is also where this run writes its {stream}; the run would be compared with \
                 itself. Write the output elsewhere",
                path.display()
            );
        }
        let mut lines = JsonLines::open(path)?;
        let mut held = std::collections::VecDeque::new();
        let mut count = 0;
        let mut checked = std::hash::DefaultHasher::new();
        while let Some(item) = lines.next_line() {
            let (n, text) = item?;
            std::hash::Hash::hash(&(n, &text), &mut checked);
            let e = E::parse(path, n, &text)?;
            if let Err(problem) = check(&e) {
                bail!("{}:{n}: {problem}", path.display());
            }
            if !regular {
                held.push_back((n, e));
            }
            count += 1;
        }
        Ok(GoldenFile {
            path: path.to_path_buf(),
            count,
            held: (!regular).then_some(held),
            lines: None,
            handed: 0,
            checked: std::hash::Hasher::finish(&checked),
            reread: std::hash::DefaultHasher::new(),
        })
    }

    /// The next item and its line; an error if the file changed since it was checked.
    fn next(&mut self) -> anyhow::Result<Option<(u64, E)>> {
        if let Some(held) = &mut self.held {
            return Ok(held.pop_front());
        }
        if self.handed == self.count {
            return Ok(None);
        }
        let lines = match &mut self.lines {
            Some(lines) => lines,
            None => self.lines.insert(JsonLines::open(&self.path)?),
        };
        match lines.next_line() {
            // It had `count` items when it was checked; fewer now is a change, not extra rows.
            None => bail!("it ended after {} of its {} items", self.handed, self.count),
            Some(item) => {
                let (n, text) = item?;
                self.handed += 1;
                std::hash::Hash::hash(&(n, &text), &mut self.reread);
                if self.handed == self.count
                    && std::hash::Hasher::finish(&self.reread) != self.checked
                {
                    bail!("it was written to since the run started");
                }
                E::parse(&self.path, n, &text).map(|e| Some((n, e)))
            }
        }
    }
}

/// Which of this process's output streams, if any, is the file `meta` describes.
fn output_stream(meta: &std::fs::Metadata) -> Option<&'static str> {
    use std::os::unix::fs::MetadataExt;
    let same = |fd: std::os::fd::BorrowedFd<'_>| {
        rustix::fs::fstat(fd).is_ok_and(|st| st.st_dev == meta.dev() && st.st_ino == meta.ino())
    };
    use std::os::fd::AsFd;
    if same(std::io::stdout().as_fd()) {
        Some("output rows (stdout)")
    } else if same(std::io::stderr().as_fd()) {
        Some("failed records and counts (stderr)")
    } else {
        None
    }
}

#[cfg(test)]
impl<E> From<Vec<E>> for GoldenFile<E> {
    fn from(items: Vec<E>) -> GoldenFile<E> {
        GoldenFile {
            path: PathBuf::new(),
            count: items.len(),
            held: Some((1..).zip(items).collect()),
            lines: None,
            handed: 0,
            checked: 0,
            reread: std::hash::DefaultHasher::new(),
        }
    }
}

/// A row as `transform test` prints it and `--expect` compares it. The text is the JSON object
/// of the row's Kafka message (fields in order, duplicate names kept, `json` values as their
/// text, floats exact); rows are equal when their members are, in any order (the Snowflake sink
/// matches columns by name) but with types (`16` is not `16.0`) and duplicates.
#[derive(Debug, Clone)]
pub struct JsonRow {
    /// The row's JSON text.
    pub text: String,
    /// Its members sorted by name (stably, so duplicates keep their order).
    members: Vec<(String, Member)>,
}

/// A member's value as compared: parsed (integers by every digit), or its exact text when it
/// nests deeper than [`exact_json`] reads.
#[derive(Debug, Clone, PartialEq)]
enum Member {
    Parsed(exact_json::Json),
    Text(String),
}

impl JsonRow {
    /// Reads one JSON object; floats are read exactly, so a golden copy of a printed row matches.
    pub fn parse(text: &str) -> Result<JsonRow, String> {
        let mut members = wire::members(text)?
            .into_iter()
            .map(|(name, raw)| {
                // serde_json checks the syntax (without a nesting limit) and words the error.
                serde_json::from_str::<serde::de::IgnoredAny>(raw)
                    .map_err(|e| format!("{name:?}: {e}"))?;
                let value = match exact_json::parse(raw) {
                    Some(v) => Member::Parsed(v),
                    None => Member::Text(raw.to_owned()),
                };
                Ok((name.to_string(), value))
            })
            .collect::<Result<Vec<_>, String>>()?;
        members.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(JsonRow {
            text: text.trim().to_owned(),
            members,
        })
    }
}

impl JsonRow {
    /// What differs between this expected row and `actual`, member by member, so that a wide
    /// row's one wrong value is named rather than left to be spotted in two long lines:
    /// `differs in "value": expected 50, got 51; missing: "id"; unexpected: "total"`.
    fn differences(&self, actual: &JsonRow) -> String {
        // Raw texts are read again only here, for a mismatch; both rows parsed already.
        fn raw(row: &JsonRow) -> Vec<(crate::row::Name, &str)> {
            let mut members = wire::members(&row.text).unwrap_or_default();
            members.sort_by(|a, b| a.0.cmp(&b.0));
            members
        }
        let (want, got) = (raw(self), raw(actual));
        let values = |members: &[(crate::row::Name, &str)], name: &str| -> Vec<String> {
            members
                .iter()
                .filter(|(n, _)| &**n == name)
                .map(|(_, v)| v.trim().to_owned())
                .collect()
        };
        let mut names: Vec<&str> = want.iter().chain(&got).map(|(n, _)| &**n).collect();
        names.sort_unstable();
        names.dedup();
        let (mut changed, mut missing, mut unexpected) = (Vec::new(), Vec::new(), Vec::new());
        for name in names {
            fn named<'a>(row: &'a JsonRow, name: &str) -> Vec<&'a Member> {
                let named = row.members.iter().filter(|(n, _)| n == name);
                named.map(|(_, m)| m).collect()
            }
            if named(self, name) == named(actual, name) {
                continue;
            }
            let (w, g) = (values(&want, name), values(&got, name));
            let shown = |v: &[String]| match v {
                [one] => one.clone(),
                many => format!("[{}] (the name {} times)", many.join(", "), many.len()),
            };
            match (w.is_empty(), g.is_empty()) {
                (false, true) => missing.push(format!("{name:?}")),
                (true, false) => unexpected.push(format!("{name:?}")),
                _ => changed.push(format!(
                    "{name:?}: expected {}, got {}",
                    shown(&w),
                    shown(&g)
                )),
            }
        }
        let mut parts = Vec::new();
        if !changed.is_empty() {
            parts.push(format!("differs in {}", changed.join("; ")));
        }
        if !missing.is_empty() {
            parts.push(format!("missing: {}", missing.join(", ")));
        }
        if !unexpected.is_empty() {
            parts.push(format!("unexpected: {}", unexpected.join(", ")));
        }
        parts.join("; ")
    }
}

impl PartialEq for JsonRow {
    fn eq(&self, other: &JsonRow) -> bool {
        self.members == other.members
    }
}

impl std::fmt::Display for JsonRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

/// A record that failed in `transform test`, named as its dead letter would be in `sluice run`.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    /// Its 1-based position among the input's data records.
    pub record: u64,
    /// The line of the input it starts on.
    pub line: u64,
    /// `source` for a record the source would not send, `transform:<name>` for a transform.
    pub stage: String,
    /// The dead-letter kind: `ragged_row`, `parse`, `trap`, `guest_error`, `timeout`, ...
    pub kind: String,
    /// The reason, for humans.
    pub reason: String,
    /// The guest's typed error, when it returned one.
    pub error: Option<GuestFault>,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Failure {
            record,
            line,
            stage,
            kind,
            reason,
            error,
        } = self;
        write!(
            f,
            "record {record} (line {line}), stage {stage}, kind {kind}"
        )?;
        if let Some(GuestFault { case, field }) = error {
            write!(f, ", case {case}")?;
            if let Some(field) = field {
                write!(f, ", field {field}")?;
            }
        }
        write!(f, ": {reason}")
    }
}

/// One line of an `--expect-failures` file: what is given must match the failed record in the
/// same position; `reason` matches any part of the reason, since messages carry details (a trap's
/// backtrace, a guest's wording) that a test should not pin. `case` and `field` match a guest's
/// typed error, as its dead letter's `error` holds it.
#[derive(Debug, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
struct ExpectedFailure {
    #[serde(skip_serializing_if = "Option::is_none")]
    record: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    line: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stage: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    kind: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    case: Option<String>,
    /// `Some(None)` for `"field": null`: a typed error that names no field (`other`).
    #[serde(
        default,
        deserialize_with = "given",
        skip_serializing_if = "Option::is_none"
    )]
    field: Option<Option<String>>,
}

impl ExpectedFailure {
    /// What `--write-failures` writes for `f`: everything but its reason.
    fn of(f: &Failure) -> ExpectedFailure {
        ExpectedFailure {
            record: Some(f.record),
            line: Some(f.line),
            stage: Some(f.stage.clone()),
            kind: Some(f.kind.clone()),
            reason: None,
            case: f.error.as_ref().map(|e| e.case.to_owned()),
            field: f.error.as_ref().map(|e| e.field.clone()),
        }
    }

    /// Whether the `stage` given, if any, is one of `stages`.
    fn check_stage(&self, stages: &[String]) -> Result<(), String> {
        let Some(stage) = &self.stage else {
            return Ok(());
        };
        if stages.iter().any(|s| same_stage(stage, s)) {
            return Ok(());
        }
        let meant = format!("transform:{stage}");
        let hint = match stages.iter().find(|s| same_stage(&meant, s)) {
            Some(s) => format!(" (did you mean {s:?}?)"),
            None => String::new(),
        };
        Err(format!(
            "stage {stage:?} is not a stage of this run{hint}; it has: {}",
            stages.join(", ")
        ))
    }
}

/// A member that is there, even as `null` (which serde's `Option` would read as absent).
fn given<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    <Option<String> as serde::Deserialize>::deserialize(d).map(Some)
}

/// Whether two stages are the same, `-` and `_` in a transform's name matching alike as they do
/// in `--with NAME.key=value` (a crate `split-tags` builds `transform_split_tags.wasm`).
fn same_stage(a: &str, b: &str) -> bool {
    match (a.strip_prefix("transform:"), b.strip_prefix("transform:")) {
        (Some(a), Some(b)) => same_name(a, b),
        _ => a == b,
    }
}

impl Expected for ExpectedFailure {
    type Actual = Failure;
    const NAME: &str = "failed record";

    fn parse(path: &Path, line: u64, text: &str) -> anyhow::Result<ExpectedFailure> {
        // serde would also take the struct from a JSON array, by position.
        let parsed = match text.trim_start().starts_with('{') {
            true => serde_json::from_str(text).map_err(anyhow::Error::from),
            false => Err(anyhow::anyhow!("it is not a JSON object")),
        };
        let parsed: ExpectedFailure = parsed.with_context(|| {
            format!(
                "{}:{line}: not what a golden file holds (one JSON object per line)",
                path.display()
            )
        })?;
        // serde reads `"line": null` as no `line`, which would match any line: a golden file
        // that means something by it would pass whatever failed.
        if let Ok(serde_json::Value::Object(members)) = serde_json::from_str(text)
            && let Some((key, _)) = (members.iter()).find(|(k, v)| v.is_null() && *k != "field")
        {
            anyhow::bail!(
                "{}:{line}: `{key}` is null; give the value it must have, or leave the key out to \
                 match any",
                path.display()
            );
        }
        // A misspelt kind would only ever show up as a mismatch.
        if let Some(kind) = &parsed.kind {
            let kinds: Vec<&str> = (FailureKind::ALL.iter().map(|k| k.as_str()))
                .chain(BadRowKind::ALL.iter().map(|k| k.as_str()))
                .chain([dead_letter::DECODE_KIND])
                .collect();
            if !kinds.contains(&kind.as_str()) {
                anyhow::bail!(
                    "{}:{line}: kind {kind:?} is not a failure kind (one of: {})",
                    path.display(),
                    kinds.join(", ")
                );
            }
        }
        // A guest's typed error comes only with kind `guest_error`: any other kind with it
        // would never match.
        if let (Some(kind), Some(key)) = (
            &parsed.kind,
            (parsed.case.as_ref().map(|_| "case")).or(parsed.field.as_ref().map(|_| "field")),
        ) && kind != FailureKind::Guest.as_str()
        {
            anyhow::bail!(
                "{}:{line}: `{key}` is a guest's typed error, which only kind \"{}\" has, not \
                 {kind:?}",
                path.display(),
                FailureKind::Guest.as_str()
            );
        }
        if let Some(case) = &parsed.case
            && !GuestFault::CASES.contains(&case.as_str())
        {
            anyhow::bail!(
                "{}:{line}: case {case:?} is not a case of the WIT's transform-error (one of: {})",
                path.display(),
                GuestFault::CASES.join(", ")
            );
        }
        Ok(parsed)
    }

    fn show(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    fn matches(&self, f: &Failure) -> bool {
        self.record.is_none_or(|r| r == f.record)
            && self.line.is_none_or(|l| l == f.line)
            && self.stage.as_ref().is_none_or(|s| same_stage(s, &f.stage))
            && self.kind.as_ref().is_none_or(|k| *k == f.kind)
            && self
                .reason
                .as_ref()
                .is_none_or(|r| f.reason.contains(r.as_str()))
            && (self.case.as_ref()).is_none_or(|c| f.error.as_ref().is_some_and(|e| e.case == c))
            && (self.field.as_ref())
                .is_none_or(|n| (f.error.as_ref()).is_some_and(|e| e.field == *n))
    }
}

/// How `transform test` loads its chain: one worker (its batches run on the calling thread
/// anyway), and the compile cache.
fn test_options() -> RuntimeOptions {
    RuntimeOptions {
        workers: 1,
        cache_dir: default_cache_dir(),
    }
}

/// Loads `configs` for [`test()`]. A component that cannot be loaded, or whose `init` fails
/// (usually: rejects its params), is a [`UsageError`].
pub fn load(configs: &[TransformConfig]) -> anyhow::Result<TransformChain> {
    TransformChain::load(configs, &test_options()).map_err(|e| {
        // Only an engine set-up failure is the machine's fault; the rest is the command's.
        let engine = matches!(e, LoadError::Engine(_));
        let e = anyhow::Error::new(e).context("loading the transforms");
        if engine { e } else { usage(e) }
    })
}

/// Runs the chain over `records` in batches as they are read, writes output rows as JSONL to
/// `out`, and failures (bad CSV records and undecodable letters included), the dead letters
/// skipped, and a line of counts per transform (plus fuel, when metered) to `err`, and compares
/// both with `golden` as they come. An input that cannot be read is a [`UsageError`], after the
/// records before it have run. Reading stops, between batches, once `stop` is set.
pub fn test(
    chain: &TransformChain,
    mut records: InputRecords,
    batch_size: usize,
    golden: Golden,
    out: &mut dyn Write,
    err: &mut dyn Write,
    stop: Option<&std::sync::atomic::AtomicBool>,
) -> anyhow::Result<TestReport> {
    let mut rows_check = golden.rows.map(Check::new);
    let mut failures_check = golden.failures.map(Check::new);
    let mut failures_out = golden.failures_out;
    let (mut rows, mut failed, mut bad, mut undecoded) = (0, 0, 0, 0);
    let mut first_failure = None;
    let mut fail = |f: Failure, err: &mut dyn Write, show: &str| -> std::io::Result<()> {
        let (n, line) = (f.record, f.line);
        // A reason may quote a param, which a pipeline file may take from a secret.
        let text = format!("record {n} (line {line}): {show}");
        writeln!(err, "{}", crate::config::redact_output(&text))?;
        failed += 1;
        if let Some(check) = &mut failures_check {
            check.see(&f, String::new);
        }
        if let Some(out) = &mut failures_out {
            out.write(&f)?;
        }
        first_failure.get_or_insert(f);
        Ok(())
    };
    let batch_size = batch_size.max(1);
    // A batch's rows, written in one go (not a write per row) before the next failure line, so
    // that rows and failures still come out in record order on a terminal.
    let mut pending = String::new();
    let mut number = 0usize;
    let mut unreadable = None;
    let mut skipped: BTreeMap<Skip, u64> = BTreeMap::new();
    let mut types = FieldTypes::default();
    // A failure of the chain itself (not of a record): the run stops, after the counts.
    let mut fatal = None;
    let mut stopped = false;
    loop {
        if stop.is_some_and(|s| s.load(std::sync::atomic::Ordering::Relaxed)) {
            stopped = true;
            break;
        }
        // Kept beside the batch because failures are reported by record number and line.
        let mut origins = Vec::new();
        let mut batch: Vec<(RecordMeta, Row)> = Vec::new();
        // A batch ends at a bad record, so that every failure prints in file order.
        let mut bad_after = None;
        let mut undecodable_after = None;
        let mut ended = false;
        // When this batch's rows stop waiting for more.
        let mut deadline = None;
        while batch.len() < batch_size {
            // Rows in hand run soon rather than wait on a pipe whose writer has paused; the
            // short linger lets a writer that trickles rows still fill batches.
            if !batch.is_empty() {
                let until = *deadline.get_or_insert_with(|| Instant::now() + LINGER);
                if !records.next_is_ready(until.saturating_duration_since(Instant::now())) {
                    break;
                }
            }
            let next = records.next();
            number += 1;
            match next {
                None => ended = true,
                Some(Err(e)) => unreadable = Some(e),
                Some(Ok(InputRecord::Bad(b))) => bad_after = Some((number, b)),
                Some(Ok(InputRecord::Undecodable { line, reason })) => {
                    undecodable_after = Some((number, line, reason));
                }
                Some(Ok(InputRecord::Skipped(why))) => {
                    *skipped.entry(why).or_default() += 1;
                    continue;
                }
                Some(Ok(InputRecord::Row { line, meta, row })) => {
                    origins.push((number, line));
                    batch.push((meta, row));
                    continue;
                }
            }
            break;
        }
        let span = match (origins.first(), origins.last()) {
            (Some((a, la)), Some((b, lb))) => format!("records {a} to {b} (lines {la} to {lb})"),
            _ => String::new(),
        };
        let outcomes = match batch.is_empty() {
            true => Vec::new(),
            false => match chain.process_blocking(batch) {
                Ok(outcomes) => outcomes,
                Err(e) => {
                    let hint = match e {
                        TransformError::TooSlow { .. } => "; --timeout-ms sets the limit here",
                        TransformError::TooMuchText { .. } => {
                            "; --batch-size sets the rows per batch here"
                        }
                        TransformError::TooMuchOutput { .. }
                        | TransformError::BatchOutputTooBig { .. } => {
                            "; --memory-mb sets the memory limit here, --batch-size the rows per batch"
                        }
                        _ => "",
                    };
                    fatal = Some(anyhow::Error::new(e).context(format!("running {span}{hint}")));
                    Vec::new()
                }
            },
        };
        for ((n, line), outcome) in origins.into_iter().zip(outcomes) {
            let n = n as u64;
            match outcome {
                RecordOutcome::Emitted(emitted) => {
                    for row in emitted {
                        let problems = (not_json(&row).into_iter())
                            .chain(unloadable_timestamp(&row))
                            .chain(types.see(&row, n));
                        for problem in problems {
                            write_rows(&mut pending, out)?;
                            let text = format!("record {n} (line {line}): warning: {problem}");
                            writeln!(err, "{}", crate::config::redact_output(&text))?;
                        }
                        let text = row_text(&row);
                        rows += 1;
                        if let Some(check) = &mut rows_check {
                            let actual = JsonRow::parse(&text).map_err(anyhow::Error::msg)?;
                            check.see(&actual, || format!("; from record {n}, input line {line}"));
                        }
                        pending.push_str(&text);
                        pending.push('\n');
                    }
                }
                RecordOutcome::Quarantined(q) => {
                    write_rows(&mut pending, out)?;
                    let show = format!(
                        "{} failed ({}): {}; row: {}",
                        q.transform,
                        q.kind,
                        q.reason,
                        clip(row_text(&q.row))
                    );
                    let f = Failure {
                        record: n,
                        line,
                        stage: format!("transform:{}", q.transform),
                        kind: q.kind.as_str().to_owned(),
                        reason: q.reason,
                        error: q.error,
                    };
                    fail(f, err, &show)?;
                }
                RecordOutcome::Dropped {
                    transform,
                    kind,
                    reason,
                } => {
                    write_rows(&mut pending, out)?;
                    let show = format!("{transform} failed ({kind}): {reason}");
                    let f = Failure {
                        record: n,
                        line,
                        stage: format!("transform:{transform}"),
                        kind: kind.as_str().to_owned(),
                        reason,
                        error: None,
                    };
                    fail(f, err, &show)?;
                }
            }
        }
        write_rows(&mut pending, out)?;
        if let Some((n, mut b)) = bad_after {
            bad += 1;
            b.reason = b.reason.replace(
                crate::source::csv::SCHEMA_HINT,
                " (type inferred from the first rows; give --schema COLUMN=TYPE to override)",
            );
            let show = format!("bad row ({}): {}", b.kind.as_str(), b.reason);
            let f = Failure {
                record: n as u64,
                line: b.line,
                stage: "source".to_owned(),
                kind: b.kind.as_str().to_owned(),
                reason: b.reason,
                error: None,
            };
            fail(f, err, &show)?;
        }
        if let Some((n, line, reason)) = undecodable_after {
            undecoded += 1;
            let show = format!("the consumer cannot decode its message (decode): {reason}");
            let f = Failure {
                record: n as u64,
                line,
                stage: dead_letter::CONSUME_STAGE.to_owned(),
                kind: dead_letter::DECODE_KIND.to_owned(),
                reason,
                error: None,
            };
            fail(f, err, &show)?;
        }
        if ended || unreadable.is_some() || fatal.is_some() {
            break;
        }
    }
    if stopped {
        writeln!(
            err,
            "input  stopped after record {number}: the output was closed"
        )?;
    }
    if bad > 0 {
        writeln!(
            err,
            "source  {}, not run (sluice run applies source.on_error to them)",
            counted(bad, "bad record")
        )?;
    }
    if undecoded > 0 {
        writeln!(
            err,
            "consume  {} not decoded, not run (sluice run dead-letters them)",
            counted(undecoded, "record")
        )?;
    }
    for (why, n) in skipped {
        writeln!(
            err,
            "input  {} skipped: {}",
            counted(n, "dead letter"),
            why.why()
        )?;
    }
    // The same per-transform line as `sluice run`'s summary (with the fuel when metered).
    let mut batch_only = Vec::new();
    for part in crate::pipeline::transform_parts(&chain.stats()) {
        writeln!(err, "transform  {part}")?;
        if part.batch_only_failures > 0 {
            batch_only.push((part.name, part.batch_only_failures));
        }
    }
    // After the counts, so that what ran before the input or the chain went bad is accounted
    // for.
    if let Some(e) = fatal {
        return Err(e);
    }
    if let Some(e) = unreadable {
        return Err(usage(e));
    }
    if let Some(out) = failures_out {
        out.finish()?;
    }
    Ok(TestReport {
        rows,
        failed,
        first_failure,
        rows_verdict: rows_check.map(Check::verdict),
        failures_verdict: failures_check.map(Check::verdict),
        batch_only,
    })
}

/// What is wrong with the first `json` value of `row` whose text is not JSON, if one is: it
/// prints as a string, and the sink would set the row aside, far from the transform that made
/// it. (Not a failure of the transform here: an input row may hold such a value already.)
fn not_json(row: &Row) -> Option<String> {
    row.fields.iter().find_map(|f| match &f.value {
        crate::row::Value::Json(text) => serde_json::from_str::<serde::de::IgnoredAny>(text)
            .err()
            .map(|e| {
                format!(
                    "field {:?} is of type json but its text is not JSON ({e}), so it prints as a \
                     string; a Snowflake VARIANT column does not take it, and the sink sets the \
                     row aside",
                    f.name
                )
            }),
        _ => None,
    })
}

/// What is wrong with the first timestamp of `row` outside years 1 to 9999, if one is: it prints
/// as its count of microseconds (no ISO-8601 text has five digits of year), and the sink sets
/// the row aside.
fn unloadable_timestamp(row: &Row) -> Option<String> {
    row.fields.iter().find_map(|f| match f.value {
        crate::row::Value::Timestamp(us)
            if !crate::sink::snowflake::encode::loadable_timestamp(us) =>
        {
            Some(format!(
                "field {:?} is a timestamp outside years 1 to 9999 ({us} µs since the epoch), \
                 so it prints as that number; a Snowflake TIMESTAMP_NTZ column does not take \
                 it, and the sink sets the row aside",
                &*f.name
            ))
        }
        _ => None,
    })
}

/// The first value of each output field, to warn of a field whose later values do not go into
/// the same Snowflake column as it: with `create_table: if_missing` the table's columns come
/// from whichever rows are loaded first, and in a run that depends on how records fall into
/// partitions and batches. So `20` then `9.99`, or `9.99` then `20`, load in one run and are set
/// aside in the next (a column made from `20` alone is `NUMBER(38,0)`).
#[derive(Default)]
struct FieldTypes {
    /// A field's first non-null value and the record it came from.
    first: std::collections::HashMap<String, (crate::row::Value, u64)>,
    /// Fields already warned of: once each.
    warned: std::collections::HashSet<String>,
}

impl FieldTypes {
    /// Notes `row`'s values (record `n` emitted it) and says which of its fields a column made
    /// from either that field's first value or this one would refuse the other of.
    fn see(&mut self, row: &Row, n: u64) -> Vec<String> {
        use crate::sink::snowflake::encode::{ColumnKind, column_type_for};
        let mut problems = Vec::new();
        for f in &row.fields {
            let ty = f.value.value_type();
            if ty == crate::row::ValueType::Null || self.warned.contains(&*f.name) {
                continue;
            }
            let Some((first, from)) = self.first.get(&*f.name) else {
                self.first.insert(f.name.to_string(), (f.value.clone(), n));
                continue;
            };
            let was = first.value_type();
            let (refused, column) = if !ColumnKind::created_for(was).accepts(&f.value) {
                ("this value", column_type_for(was))
            } else if !ColumnKind::created_for(ty).accepts(first) {
                ("that one", column_type_for(ty))
            } else {
                continue;
            };
            problems.push(format!(
                "field {:?} is {} here but was {} in record {from}: a Snowflake table whose \
                 column is made from rows like {} ({column}) refuses {refused}, so a run would \
                 load it or set it aside depending on which rows came first. Emit one type for a \
                 field (an int as a float, say)",
                &*f.name,
                ty.as_str(),
                was.as_str(),
                if refused == "this value" {
                    "that one"
                } else {
                    "this one"
                },
            ));
            self.warned.insert(f.name.to_string());
        }
        problems
    }
}

/// Writes out the rows in `pending` and empties it.
fn write_rows(pending: &mut String, out: &mut dyn Write) -> std::io::Result<()> {
    if !pending.is_empty() {
        out.write_all(pending.as_bytes())?;
        pending.clear();
    }
    Ok(())
}

/// The longest failed row a failure line shows whole: a row of 20,000 columns would otherwise
/// bury the other failures (the dead letter in `sluice run` keeps it whole).
const MAX_SHOWN_ROW: usize = 4096;

/// Prints a golden file's verdict (`ok: 3 rows agree with FILE`, or the mismatch), and whether
/// it matched.
fn print_verdict(golden: &Path, verdict: &Result<usize, String>, noun: &str) -> bool {
    match verdict {
        Ok(n) => {
            crate::errln!(
                "ok: {} {} {}",
                counted(*n, noun),
                agree(*n),
                golden.display()
            );
            true
        }
        Err(msg) => {
            crate::errln!("mismatch against {}: {msg}", golden.display());
            false
        }
    }
}

/// `text`, cut at [`MAX_SHOWN_ROW`] bytes with a note of its length.
fn clip(text: String) -> String {
    crate::dead_letter::clip(&text, MAX_SHOWN_ROW).into_owned()
}

/// A row as `transform test` prints it: the JSON text of its Kafka message value. Every member
/// of a message value is JSON (`encode` embeds a `json` value only when it is), so it parses as a
/// [`JsonRow`].
fn row_text(row: &Row) -> String {
    String::from_utf8(wire::encode(row).value).expect("a message value is JSON")
}

/// An item of a golden file, compared with what the run produced.
trait Expected {
    /// What the run produced.
    type Actual: std::fmt::Display + Clone;
    /// What one item is called (`counted` makes the plural).
    const NAME: &str;
    /// The golden item as a message shows it.
    fn show(&self) -> String;
    /// Whether `actual` is what this golden item expects.
    fn matches(&self, actual: &Self::Actual) -> bool;
    /// What differs in `actual`, in detail, when the two items are too long to compare by eye.
    fn differences(&self, _actual: &Self::Actual) -> Option<String> {
        None
    }
    /// The item on line `line` of golden file `path`.
    fn parse(path: &Path, line: u64, text: &str) -> anyhow::Result<Self>
    where
        Self: Sized;
}

impl Expected for JsonRow {
    type Actual = JsonRow;
    const NAME: &str = "row";

    fn parse(path: &Path, line: u64, text: &str) -> anyhow::Result<JsonRow> {
        JsonRow::parse(text).map_err(|e| {
            anyhow::anyhow!(
                "{}:{line}: not a JSON object (a golden file holds one row per line): {e}",
                path.display()
            )
        })
    }

    fn show(&self) -> String {
        self.text.clone()
    }

    fn matches(&self, actual: &JsonRow) -> bool {
        self == actual
    }

    fn differences(&self, actual: &JsonRow) -> Option<String> {
        Some(JsonRow::differences(self, actual)).filter(|d| !d.is_empty())
    }
}

/// Compares a run's items with a golden file's one at a time, as the run makes them, keeping
/// only the first difference and a count of the others, so that the run's output need not fit
/// in memory.
struct Check<E: Expected> {
    expected: GoldenFile<E>,
    seen: usize,
    /// Pairs compared, and how many of them differ.
    compared: usize,
    differing: usize,
    first: Option<Difference>,
    /// The first pair that differs (its golden line, both items), until the next pair says
    /// whether the two sides are out of step by one item.
    first_pair: Option<(u64, E, E::Actual)>,
    /// What the next pair said: one item missing from the run, or one extra in it.
    shift: Option<String>,
}

/// The first difference a [`Check`] found.
enum Difference {
    /// A message naming the pair that differs.
    Pair(String),
    /// The run made more items than expected; the first extra one.
    Extra(String),
    /// The golden file could not be read again.
    Unreadable(String),
}

impl<E: Expected> Check<E> {
    fn new(expected: GoldenFile<E>) -> Check<E> {
        Check {
            expected,
            seen: 0,
            compared: 0,
            differing: 0,
            first: None,
            first_pair: None,
            shift: None,
        }
    }

    /// Compares the run's next item. `from` says where it came from, when the item does not say
    /// it itself (an output row: the input record that made it); it is called only for a
    /// difference. After the first difference, items are still compared, to count the pairs
    /// that differ.
    fn see(&mut self, actual: &E::Actual, from: impl FnOnce() -> String) {
        self.seen += 1;
        if matches!(
            self.first,
            Some(Difference::Extra(_) | Difference::Unreadable(_))
        ) {
            return;
        }
        let difference = match self.expected.next() {
            Ok(Some((line, e))) => {
                self.compared += 1;
                // After one missing or extra item, every later pair differs; the pair after the
                // first difference tells which, by matching across.
                if let Some((first_line, first_e, first_actual)) = self.first_pair.take() {
                    let n = self.seen - 1;
                    if e.matches(&first_actual) {
                        self.shift = Some(format!(
                            "golden line {first_line} looks missing from the output: {} {n} is \
                             the golden file's next {}",
                            E::NAME,
                            E::NAME
                        ));
                    } else if first_e.matches(actual) {
                        self.shift = Some(format!(
                            "{} {n} looks extra: the next {} the run made is golden line \
                             {first_line}",
                            E::NAME,
                            E::NAME
                        ));
                    }
                }
                if e.matches(actual) {
                    return;
                }
                self.differing += 1;
                if self.first.is_some() {
                    return;
                }
                // Both clipped: a row of 20,000 columns would bury what differs in it.
                let msg = Difference::Pair(format!(
                    "{} {} (golden line {line}{}): expected {}, got {}{}",
                    E::NAME,
                    self.seen,
                    from(),
                    clip(e.show()),
                    clip(actual.to_string()),
                    e.differences(actual)
                        .map(|d| format!("\n  {}", clip(d)))
                        .unwrap_or_default()
                ));
                self.first_pair = Some((line, e, actual.clone()));
                msg
            }
            Ok(None) => Difference::Extra(format!("{actual}{}", from())),
            Err(e) => Difference::Unreadable(format!("{e:#}")),
        };
        self.first.get_or_insert(difference);
    }

    /// How many items matched, or the first difference: the first pair that does not match,
    /// else an extra or missing item.
    fn verdict(mut self) -> Result<usize, String> {
        let (n, m) = (self.expected.count, self.seen);
        let expected = format!("expected {}", counted(n, E::NAME));
        match self.first {
            Some(Difference::Pair(msg)) => {
                let mut all = format!(
                    "{} of {} compared {}",
                    self.differing,
                    counted(self.compared, E::NAME),
                    match self.differing {
                        1 => "differs",
                        _ => "differ",
                    }
                );
                if m != n {
                    all.push_str(&format!("; {expected}, got {m}"));
                }
                if let Some(shift) = self.shift {
                    all.push_str(&format!("\n  {shift}"));
                }
                Err(format!("{msg}\n  in all: {all}"))
            }
            Some(Difference::Extra(first)) => {
                Err(format!("{expected}, got {m} (first extra: {first})"))
            }
            Some(Difference::Unreadable(why)) => Err(format!("the golden file changed: {why}")),
            // The run saw `m` items, so the next one is item `m + 1`.
            None if m < n => match self.expected.next() {
                Ok(Some((line, e))) => Err(format!(
                    "{expected}, got {m} (first missing, golden line {line}: {})",
                    e.show()
                )),
                // Not reached: `next` fails when the file ends before its checked count.
                Ok(None) => Err(format!("{expected}, got {m}")),
                Err(e) => Err(format!("the golden file changed: {e:#}")),
            },
            None => Ok(n),
        }
    }
}

/// How long a batch of a piped input waits for more rows once it has one: short enough to go
/// unnoticed, long enough for a writer that sends rows one by one to fill batches.
const LINGER: Duration = Duration::from_millis(5);

/// The topic `transform test` reports to transforms (there is no Kafka here).
pub const TEST_TOPIC: &str = "test";

/// How `transform test` reads its input: the pipeline source's settings, so that rows are typed
/// and keyed as `sluice run` would type and key them.
#[derive(Debug, Clone)]
pub struct InputOptions {
    /// The CSV field delimiter.
    pub delimiter: u8,
    /// Explicit CSV column types; the other columns are inferred.
    pub schema: BTreeMap<String, ValueType>,
    /// How many CSV records type inference samples.
    pub infer_rows: usize,
    /// The field whose value becomes the message key.
    pub key_column: Option<String>,
    /// The topic every record reports.
    pub topic: String,
    /// The partition every record reports.
    pub partition: i32,
    /// The timestamp every record reports, in milliseconds since the epoch.
    pub timestamp_ms: Option<i64>,
    /// How to read the input; `None`: by its extension (`.jsonl`, `.ndjson`, `.json`: JSON Lines,
    /// else CSV).
    pub format: Option<InputFormat>,
}

impl Default for InputOptions {
    fn default() -> InputOptions {
        InputOptions {
            delimiter: b',',
            schema: BTreeMap::new(),
            infer_rows: crate::source::config::DEFAULT_INFER_ROWS,
            key_column: None,
            topic: TEST_TOPIC.to_owned(),
            partition: 0,
            timestamp_ms: None,
            format: None,
        }
    }
}

/// One record of a `transform test` input file.
#[derive(Debug, Clone, PartialEq)]
pub enum InputRecord {
    /// A row, with the line it starts on and the metadata `sluice run` would give the message the
    /// source makes of it.
    Row {
        /// The 1-based line the record starts on.
        line: u64,
        /// The topic, partition and timestamp of [`InputOptions`], offsets from 0 in row order,
        /// the key from [`InputOptions::key_column`], and the source's headers (`sluice.types`,
        /// `sluice.file`, `sluice.line`); for a dead letter, its origin's.
        meta: RecordMeta,
        /// The row.
        row: Row,
    },
    /// A CSV record the source would not produce but dead-letter.
    Bad(BadRow),
    /// A dead letter's message that the consumer cannot decode into a row, as `sluice run`'s
    /// could not (stage `consume`, kind `decode`).
    Undecodable {
        /// The 1-based line of the letter.
        line: u64,
        /// Why it does not decode.
        reason: String,
    },
    /// A dead letter with no record to run again.
    Skipped(Skip),
}

/// Why `transform test` does not run a dead letter's record again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Skip {
    /// A bad CSV row (stage `source`): it never reached a transform.
    Source,
    /// The sink's: its payload is the row the chain made, not the message it was given.
    Sink,
    /// Cut to fit the dead-letter topic: payload, key or a header.
    Cut,
    /// Changed after it was written: its payload is no longer `payload_bytes` long.
    Altered,
}

impl Skip {
    /// What the count of them says.
    fn why(self) -> &'static str {
        match self {
            Skip::Source => "from bad CSV rows (stage source), which never reached a transform",
            Skip::Sink => "from the sink, whose payload is the chain's output, not its input",
            Skip::Cut => {
                "cut to fit the dead-letter topic (payload_truncated, or a key or header cut)"
            }
            Skip::Altered => {
                "changed since they were written (payload_bytes differs: `sluice dead-letters` \
                 masks the text of secrets)"
            }
        }
    }
}

/// The input options from the command line; the CSV ones are refused for JSONL `input`.
fn input_options(
    input: &Path,
    format: Option<InputFormat>,
    delimiter: Option<String>,
    schema: &[String],
    infer_rows: Option<usize>,
    key_column: Option<String>,
) -> anyhow::Result<InputOptions> {
    // For JSON Lines, `--infer-rows` bounds the look-ahead for the `--key-column` field.
    let infer_rows_unused = infer_rows.is_some() && key_column.is_none();
    let jsonl = format_of(input, format) == InputFormat::Jsonl;
    if jsonl && (delimiter.is_some() || !schema.is_empty() || infer_rows_unused) {
        bail!(
            "--delimiter, --schema and --infer-rows apply to CSV input (--infer-rows also to \
             --key-column on JSON Lines), not to {}",
            input.display()
        );
    }
    let defaults = InputOptions::default();
    let delimiter = match delimiter {
        None => defaults.delimiter,
        Some(d) => crate::source::config::delimiter_byte(&d).with_context(|| {
            format!(
                "--delimiter {d:?} is not {}",
                crate::source::config::DELIMITER_RULE
            )
        })?,
    };
    let mut types = BTreeMap::new();
    for item in schema {
        let (column, ty) = item
            .split_once('=')
            .with_context(|| format!("--schema {item:?} is not COLUMN=TYPE"))?;
        let ty = serde_json::from_value(serde_json::Value::from(ty))
            .ok()
            .filter(|t| *t != ValueType::Null)
            .with_context(|| {
                format!(
                    "--schema {item:?}: unknown type {ty:?} (expected int, float, bool, string, timestamp or json)"
                )
            })?;
        if types.insert(column.to_owned(), ty).is_some() {
            bail!("--schema {item:?}: column {column:?} is given more than once");
        }
    }
    Ok(InputOptions {
        delimiter,
        schema: types,
        infer_rows: infer_rows.unwrap_or(defaults.infer_rows),
        key_column,
        format,
        ..defaults
    })
}

/// How `transform test` reads its input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum InputFormat {
    /// CSV with a header row, read and typed like the pipeline's CSV source.
    Csv,
    /// JSON Lines: one JSON object per line.
    Jsonl,
    /// What `sluice dead-letters` prints: each letter's record runs again as the message it
    /// was, with its own metadata (letters of bad CSV rows, of the sink, and cut or changed ones
    /// are skipped and counted).
    DeadLetters,
}

/// How `input` is read: as `format` says, else by its extension.
fn format_of(input: &Path, format: Option<InputFormat>) -> InputFormat {
    format.unwrap_or(match is_jsonl(input) {
        true => InputFormat::Jsonl,
        false => InputFormat::Csv,
    })
}

/// The records of a `transform test` input, read as the run asks for them, so that a file of any
/// size (or a pipe) runs in bounded memory. An item is an error when the input cannot be read
/// further; the run stops there.
pub struct InputRecords {
    reader: Reader,
    /// JSON Lines lines read while looking for the `--key-column` field, not yet handed out:
    /// rows, and lines that are not one.
    ahead: std::collections::VecDeque<(u64, Result<Row, wire::DecodeError>)>,
    /// Whether a JSON Lines row has been handed out: a first line that is not a JSON object
    /// says the input is not JSON Lines at all (a pretty-printed document, say), a later one is
    /// a bad record.
    rows_read: bool,
    framer: Framer,
    /// The input, when it can pause (a pipe or a terminal), to ask whether it has data.
    pipe: Option<Pipe>,
    /// The first dead letter's record (`Some(None)`: there was none), read before the run to
    /// check that the input is letters.
    first: Option<Option<InputRecord>>,
    /// Whether to look at the first JSON Lines row for the look of a dead letter: set when the
    /// format came from the extension.
    letters_hint: bool,
}

enum Reader {
    Csv(Box<CsvReader>),
    Jsonl(JsonLines),
    Letters(JsonLines),
}

impl Iterator for InputRecords {
    type Item = anyhow::Result<InputRecord>;

    fn next(&mut self) -> Option<Self::Item> {
        match &mut self.reader {
            Reader::Csv(reader) => match reader.next_item() {
                Ok(None) => None,
                Ok(Some(CsvItem::Row { line, row })) => Some(Ok(self.framer.record(line, row))),
                Ok(Some(CsvItem::Bad(bad))) => Some(Ok(InputRecord::Bad(bad))),
                Err(e) => Some(Err(e.into())),
            },
            Reader::Jsonl(lines) => {
                let item = match self.ahead.pop_front() {
                    Some(item) => item,
                    None => match lines.next_row()? {
                        Ok(item) => item,
                        Err(e) => return Some(Err(e)),
                    },
                };
                let (line, row) = match item {
                    (line, Ok(row)) => (line, row),
                    // As the consumer takes a message that is not a JSON object.
                    (line, Err(why)) if self.rows_read => {
                        let reason = why.to_string();
                        return Some(Ok(InputRecord::Undecodable { line, reason }));
                    }
                    (line, Err(why)) => return Some(Err(lines.not_a_row(line, why))),
                };
                self.rows_read = true;
                if std::mem::take(&mut self.letters_hint) && looks_like_letter(&row) {
                    // Run as rows, letters only test what the transform does to letters.
                    crate::errln!(
                        "warning: {} looks like dead letters: pass --format dead-letters to run \
                         the records they hold",
                        lines.shown
                    );
                }
                Some(Ok(self.framer.record(line, row)))
            }
            Reader::Letters(lines) => match self.first.take() {
                // Not read again at the end: on a terminal that would take a second Ctrl-D.
                Some(first) => first.map(Ok),
                None => next_letter(lines),
            },
        }
    }
}

/// Whether a JSON Lines row has the members every dead letter has.
fn looks_like_letter(row: &Row) -> bool {
    ["stage", "kind", "origin", "payload"]
        .iter()
        .all(|k| row.get(k).is_some())
}

/// The record of the next dead letter of `lines` (one item per letter, so that a pipe's pause
/// is noticed after any of them); an error for a line that is not a letter.
fn next_letter(lines: &mut JsonLines) -> Option<anyhow::Result<InputRecord>> {
    let (line, text) = match lines.next_line()? {
        Ok(item) => item,
        Err(e) => return Some(Err(e)),
    };
    Some(letter_record(line, &text).map_err(|e| {
        // A letter pretty-printed over many lines (`jq` without `-c`) ends at its first line.
        let hint = match e.starts_with("EOF while parsing") {
            true => " (one letter per line: `jq -c` prints them so)",
            false => "",
        };
        anyhow::anyhow!(
            "{}:{line}: not a dead letter as `sluice dead-letters` prints them: {e}{hint}",
            lines.shown
        )
    }))
}

/// The record a dead letter (line `line` of the input) holds, as the consumer handed it to the
/// chain: [`InputRecord::Skipped`] for a letter there is nothing to rerun of, the consumer's
/// failure for a message it could not decode, an error for a line that is not a letter.
fn letter_record(line: u64, text: &str) -> Result<InputRecord, String> {
    let read = crate::source::dlq::decode(text.as_bytes())?;
    let letter = read.letter;
    let skip = |why| Ok(InputRecord::Skipped(why));
    let origin = match (letter.stage.as_str(), letter.origin) {
        ("source", _) => return skip(Skip::Source),
        ("sink", _) => return skip(Skip::Sink),
        (_, None) => return Err(format!("stage {:?} with no origin", letter.stage)),
        (_, Some(_)) if !read.whole => return skip(Skip::Cut),
        (_, Some(_)) if read.altered => return skip(Skip::Altered),
        // It did not decode then; decoding it again could only guess at what the letter cannot
        // tell (a message with no value or an empty one, a header with no value or an empty
        // one), so its failure is the one the consumer had.
        (dead_letter::CONSUME_STAGE, Some(_)) => {
            return Ok(InputRecord::Undecodable {
                line,
                reason: letter.reason,
            });
        }
        (_, Some(origin)) => origin,
    };
    // As the consumer does: the last `sluice.types` header counts. The consumer decoded this
    // message, so an empty one was a header with no value, which means no types (an empty value
    // would have failed but for an empty object, which reads the same either way).
    let types = (origin.headers.iter().rev())
        .find(|(k, _)| k == wire::HEADER_TYPES)
        .map(|(_, v)| v.as_slice())
        .filter(|v| !v.is_empty());
    Ok(match wire::decode(Some(&letter.payload), types) {
        Ok(row) => InputRecord::Row {
            line,
            meta: origin,
            row,
        },
        Err(e) => InputRecord::Undecodable {
            line,
            reason: e.to_string(),
        },
    })
}

impl InputRecords {
    /// Whether the next record can be had without waiting for the input longer than `wait`: it
    /// is already read, or the input has data (or its end) to give within `wait`. Always true
    /// for a regular file. A pipe whose writer pauses says no, so that the rows read so far can
    /// run instead of waiting for a full batch.
    pub fn next_is_ready(&self, wait: Duration) -> bool {
        let Some(pipe) = &self.pipe else {
            return true;
        };
        let read = match &self.reader {
            Reader::Csv(reader) => reader.has_buffered_record(),
            Reader::Jsonl(lines) => !self.ahead.is_empty() || lines.has_buffered_line(),
            Reader::Letters(lines) => self.first.is_some() || lines.has_buffered_line(),
        };
        read || wait_for_data(&pipe.0, Some(wait))
    }
}

/// An input that can pause (a pipe, FIFO, terminal or socket): a duplicate of the reader's own
/// descriptor, only ever polled, so the reader keeps its plain blocking reads and its buffer.
struct Pipe(std::fs::File);

impl Pipe {
    /// `None` for a regular file, which never pauses (nor does an input that cannot be
    /// duplicated: it is then read in full batches, as a file is).
    fn of(file: &std::fs::File) -> Option<Pipe> {
        if file.metadata().ok()?.is_file() {
            return None;
        }
        file.try_clone().ok().map(Pipe)
    }
}

/// Whether `file` has data, its end or an error to give within `wait` (`None`: however long it
/// takes). A failed poll says yes, so that the read that follows reports the error.
fn wait_for_data(file: &std::fs::File, wait: Option<Duration>) -> bool {
    use rustix::event::{PollFd, PollFlags, Timespec, poll};
    let mut fds = [PollFd::new(file, PollFlags::IN)];
    let timeout = wait.map(|w| Timespec {
        tv_sec: w.as_secs() as i64,
        tv_nsec: i64::from(w.subsec_nanos()),
    });
    poll(&mut fds, timeout.as_ref()).map_or(true, |n| n > 0)
}

/// A `transform test` input, opened: a file, or a duplicate of stdin's descriptor.
#[derive(Debug)]
struct Input(std::fs::File);

impl std::io::Read for Input {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            match self.0.read(buf) {
                // A descriptor inherited in non-blocking mode (stdin, from some parents): wait
                // for data rather than fail.
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    wait_for_data(&self.0, None);
                }
                r => return r,
            }
        }
    }
}

/// Opens `path`, or stdin for `-`; returns the name messages and the `sluice.file` header use.
fn open_input(path: &Path) -> anyhow::Result<(PathBuf, Input)> {
    if path == Path::new("-") {
        // A duplicate of descriptor 0 rather than /dev/stdin: opening that again fails for a
        // socket or another user's pipe, and starts a redirected file over from its first byte.
        use std::os::fd::AsFd;
        let fd = std::io::stdin()
            .as_fd()
            .try_clone_to_owned()
            .context("reading stdin")?;
        return Ok((PathBuf::from("<stdin>"), Input(fd.into())));
    }
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    Ok((path.to_path_buf(), Input(file)))
}

/// Opens `.jsonl`/`.ndjson`/`.json` (one JSON object per line) or, otherwise, CSV with a header
/// row through the pipeline source's reader (BOM, quoting, inference, bad records by line), and
/// gives every row the metadata `sluice run` would; [`InputOptions::format`] overrides the
/// extension. With [`InputFormat::DeadLetters`], each letter gives its record as the message it
/// was, with the letter's origin as its metadata (or a [`Skip`]). A missing file, a `key_column`
/// that is not a column of the CSV (or a field of any of the first `infer_rows` JSONL rows) and
/// the like are errors here; a JSONL line that is not an object, or a line that is not a letter,
/// is an error from the iterator (or here, when it comes first or before the key column does).
pub fn read_input(path: &Path, opts: &InputOptions) -> anyhow::Result<InputRecords> {
    let (shown, input) = open_input(path)?;
    if let Some(stream) = input
        .0
        .metadata()
        .ok()
        .filter(|m| m.is_file())
        .as_ref()
        .and_then(output_stream)
    {
        // The run would read its own output back as input, and never end.
        bail!(
            "{} is also where this run writes its {stream}; write the output elsewhere",
            path.display()
        );
    }
    let pipe = Pipe::of(&input.0);
    let path = shown.as_path();
    let framer = Framer {
        file: path.file_name().map_or_else(
            || path.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        ),
        offset: 0,
        key_column: opts.key_column.clone(),
        topic: opts.topic.clone(),
        partition: opts.partition,
        timestamp_ms: opts.timestamp_ms,
    };
    let format = format_of(path, opts.format);
    let mut first = None;
    let (reader, ahead) = if format == InputFormat::DeadLetters {
        let mut lines = JsonLines::new(path, input);
        // Read now, so that a file that is not letters fails before the chain is compiled.
        first = Some(next_letter(&mut lines).transpose()?);
        (Reader::Letters(lines), Default::default())
    } else if format == InputFormat::Jsonl {
        let mut lines = JsonLines::new(path, input);
        // A key column is a field of some row, not of a header: look ahead for the first row that
        // has it, so that a misspelt one fails before any row runs, as with CSV.
        let mut ahead = std::collections::VecDeque::new();
        if let Some(k) = &opts.key_column {
            let limit = opts.infer_rows.max(1);
            loop {
                let Some(item) = lines.next_row() else {
                    bail!(
                        "--key-column {k:?} is not a field of any row of {}",
                        path.display()
                    );
                };
                let (line, row) = item?;
                let found = match row {
                    Ok(row) => {
                        let found = row.get(k).is_some();
                        if !found
                            && ahead.is_empty()
                            && opts.format.is_none()
                            && looks_like_letter(&row)
                        {
                            bail!(
                                "{} looks like dead letters, whose rows have no {k:?} field: \
                                 pass --format dead-letters to run the records they hold (or \
                                 --format jsonl to run the letters themselves)",
                                path.display()
                            );
                        }
                        ahead.push_back((line, Ok(row)));
                        found
                    }
                    Err(why) if ahead.is_empty() => return Err(lines.not_a_row(line, why)),
                    // After a row, a bad record (as when it is read in turn).
                    Err(why) => {
                        ahead.push_back((line, Err(why)));
                        false
                    }
                };
                if found {
                    break;
                }
                if ahead.len() >= limit {
                    bail!(
                        "--key-column {k:?} is not a field of any of the first {limit} rows of {} \
                         (--infer-rows sets how many rows to look at)",
                        path.display()
                    );
                }
            }
        }
        (Reader::Jsonl(lines), ahead)
    } else {
        let csv = CsvOptions {
            delimiter: opts.delimiter,
            schema: opts.schema.clone(),
            infer_rows: opts.infer_rows.max(1),
            max_record_bytes: DEFAULT_MAX_MESSAGE_BYTES,
        };
        let reader = CsvReader::from_reader(path, input, &csv, Arc::default(), None)?;
        // JSON Lines read as CSV give a bad row for every line, which a run would take for the
        // input's fault: unless --format says CSV, stop and say what to do instead.
        let first_column = reader.columns().first().map(|c| &**c).unwrap_or_default();
        if opts.format.is_none() && first_column.starts_with('{') {
            let (format, what) = match first_column.starts_with(r#"{"stage":"#) {
                true => ("dead-letters", "run the records of dead letters"),
                false => ("jsonl", "read it as JSON Lines"),
            };
            bail!(
                "{} would be read as CSV, but its first line looks like JSON: pass --format \
                 {format} to {what} (or --format csv if it is CSV)",
                path.display()
            );
        }
        if let Some(k) = &opts.key_column
            && !reader.columns().iter().any(|c| &**c == k)
        {
            bail!("--key-column {k:?} is not a column of {}", path.display());
        }
        (Reader::Csv(Box::new(reader)), Default::default())
    };
    Ok(InputRecords {
        reader,
        ahead,
        rows_read: false,
        framer,
        pipe,
        first,
        letters_hint: opts.format.is_none(),
    })
}

/// Gives each input row what the consumer would hand the chain: the row as the source encodes it
/// and the consumer decodes it (or the bad row the source makes of it instead), with the
/// metadata of its message.
struct Framer {
    /// The input's file name, for the `sluice.file` header.
    file: String,
    /// The next row's offset.
    offset: i64,
    /// The field whose value becomes the message key.
    key_column: Option<String>,
    /// The topic, partition and timestamp every record reports.
    topic: String,
    partition: i32,
    timestamp_ms: Option<i64>,
}

impl Framer {
    fn record(&mut self, line: u64, row: Row) -> InputRecord {
        let enc = match crate::source::encode_message(line, &row, DEFAULT_MAX_MESSAGE_BYTES) {
            Ok(enc) => enc,
            Err(bad) => return InputRecord::Bad(bad),
        };
        let row = match wire::decode(Some(&enc.value), Some(enc.types.as_bytes())) {
            Ok(row) => row,
            Err(e) => {
                return InputRecord::Bad(BadRow {
                    line,
                    kind: BadRowKind::Parse,
                    reason: format!("the consumer cannot decode its message: {e}"),
                    payload: enc.value,
                });
            }
        };
        let key = self
            .key_column
            .as_deref()
            .and_then(|k| row.get(k))
            .and_then(wire::key_of);
        let meta = RecordMeta {
            topic: self.topic.clone(),
            partition: self.partition,
            offset: self.offset,
            key: key.map(String::into_bytes),
            timestamp_ms: self.timestamp_ms,
            headers: vec![
                (wire::HEADER_TYPES.to_owned(), enc.types.into_bytes()),
                (wire::HEADER_FILE.to_owned(), self.file.clone().into_bytes()),
                (wire::HEADER_LINE.to_owned(), line.to_string().into_bytes()),
            ],
        };
        self.offset += 1;
        InputRecord::Row { line, meta, row }
    }
}

/// Whether `transform test` reads `path` as JSON Lines (else as CSV). A `.json` file is read as
/// JSON Lines too: read as CSV, its rows would silently vanish, while a pretty-printed document
/// fails on its first line with a parse error naming the file and line.
fn is_jsonl(path: &Path) -> bool {
    path.extension().is_some_and(|e| {
        ["jsonl", "ndjson", "json"]
            .iter()
            .any(|j| e.eq_ignore_ascii_case(j))
    })
}

/// The rows of a JSON Lines file, one JSON object per non-blank line, read as they are needed.
#[derive(Debug)]
struct JsonLines {
    reader: std::io::BufReader<Input>,
    /// The input as error messages name it.
    shown: String,
    /// Lines read so far.
    line: u64,
    /// Set after a read error, which ends the rows.
    failed: bool,
}

impl JsonLines {
    fn open(path: &Path) -> anyhow::Result<JsonLines> {
        let (shown, input) = open_input(path)?;
        Ok(JsonLines::new(&shown, input))
    }

    fn new(path: &Path, input: Input) -> JsonLines {
        JsonLines {
            reader: std::io::BufReader::new(input),
            shown: path.display().to_string(),
            line: 0,
            failed: false,
        }
    }

    /// The next non-blank line (without its line break) and its 1-based number, as bytes: a
    /// row's line that is not UTF-8 is a message the consumer cannot decode, not the end.
    fn next_bytes(&mut self) -> Option<anyhow::Result<(u64, Vec<u8>)>> {
        if self.failed {
            return None;
        }
        let mut bytes = Vec::new();
        loop {
            bytes.clear();
            match self.reader.read_until(b'\n', &mut bytes) {
                Ok(0) => return None,
                Ok(_) => self.line += 1,
                Err(e) => {
                    // Ends the lines: the reader would go on returning the error.
                    self.failed = true;
                    let at = format!("reading {} at line {}", self.shown, self.line + 1);
                    let e = anyhow::Error::new(e).context(at);
                    return Some(Err(e));
                }
            }
            // A byte-order mark, as some editors write at the start of a UTF-8 file.
            if self.line == 1 && bytes.starts_with("\u{feff}".as_bytes()) {
                bytes.drain(.."\u{feff}".len());
            }
            if !bytes.trim_ascii().is_empty() {
                while matches!(bytes.last(), Some(b'\n' | b'\r')) {
                    bytes.pop();
                }
                return Some(Ok((self.line, bytes)));
            }
        }
    }

    /// [`next_bytes`](Self::next_bytes) as text; a line that is not UTF-8 is an error.
    fn next_line(&mut self) -> Option<anyhow::Result<(u64, String)>> {
        Some(self.next_bytes()?.and_then(|(line, bytes)| {
            let text = String::from_utf8(bytes).map_err(|_| {
                anyhow::anyhow!(
                    "reading {} at line {line}: stream did not contain valid UTF-8",
                    self.shown
                )
            })?;
            Ok((line, text))
        }))
    }

    /// The next row and its 1-based line, typed as the consumer types a message of a plain JSON
    /// topic, so big integers keep their digits and duplicate names and field order survive; or
    /// why the line is not one (inside), as the consumer would fail its message.
    fn next_row(&mut self) -> Option<anyhow::Result<(u64, Result<Row, wire::DecodeError>)>> {
        let (line, bytes) = match self.next_bytes()? {
            Ok(item) => item,
            Err(e) => return Some(Err(e)),
        };
        Some(Ok((line, wire::decode(Some(&bytes), None))))
    }

    /// Line `line` is not a row, for `why`: an error naming the input and the line.
    fn not_a_row(&self, line: u64, why: wire::DecodeError) -> anyhow::Error {
        match why {
            wire::DecodeError::Syntax(_) => anyhow::anyhow!(
                "{}:{line}: not a JSON object (expected one JSON object per line): {why}",
                self.shown
            ),
            why => anyhow::anyhow!("{}:{line}: {why}", self.shown),
        }
    }

    /// Whether a whole line that is not blank (blank ones are skipped) is already read into the
    /// buffer: then the next row needs no more input.
    fn has_buffered_line(&self) -> bool {
        let buf = self.reader.buffer();
        // Only up to the last line break: what follows it may still be arriving.
        let Some(end) = buf.iter().rposition(|&b| b == b'\n') else {
            return false;
        };
        buf[..end]
            .split(|&b| b == b'\n')
            .any(|line| std::str::from_utf8(line).map_or(true, |t| !t.trim().is_empty()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sluice_workspace_is_recognised_however_its_toml_is_written() {
        let package = "[workspace.package]\nversion = \"0.1.0\"\nedition = \"2024\"\n\
                       rust-version = \"1.95\"\nlicense = \"Apache-2.0\"\npublish = false\n";
        for (sdk, want) in [
            (
                "[workspace.dependencies]\nsluice-guest = { path = \"g\" }\n",
                true,
            ),
            (
                "[workspace.dependencies] # shared\n\"sluice-guest\" = { path = \"g\" }\n",
                true,
            ),
            (
                "[workspace.dependencies]\nsluice-guest.path = \"g\"\n",
                true,
            ),
            (
                "[workspace.dependencies.sluice-guest]\npath = \"g\"\n",
                true,
            ),
            (
                "[ workspace.dependencies ]\n'sluice-guest' = { path = \"g\" }\n",
                true,
            ),
            (
                "[workspace]\ndependencies.sluice-guest.path = \"g\"\n",
                true,
            ),
            ("[workspace.dependencies]\nserde = \"1\"\n", false),
            ("[dependencies]\nsluice-guest = { path = \"g\" }\n", false),
            (
                "[workspace.dependencies]\n# sluice-guest = { path = \"g\" }\n",
                false,
            ),
            ("", false),
        ] {
            let manifest = format!("[workspace]\nmembers = [\"*\"]\n{package}{sdk}");
            assert_eq!(workspace_lacks(&manifest).is_empty(), want, "{sdk}");
        }
        let sdk = "[workspace.dependencies]\nsluice-guest = { path = \"g\" }\n";
        let partial = "[workspace.package]\nversion = \"0.1.0\"\nedition = \"2024\"\n";
        assert_eq!(
            workspace_lacks(&format!("{partial}{sdk}")),
            ["`rust-version`, `license`, `publish` in [workspace.package]"]
        );
        assert_eq!(
            workspace_lacks(partial).last().map(String::as_str),
            Some("sluice-guest in [workspace.dependencies]")
        );
        let dotted = "[workspace]\npackage.version = \"0.1.0\"\npackage.edition = \"2024\"\n\
                      package.rust-version = \"1.95\"\npackage.license = \"x\"\npackage.publish = false\n";
        assert!(workspace_lacks(&format!("{dotted}{sdk}")).is_empty());
        assert!(workspace_lacks(include_str!("../../../transforms/Cargo.toml")).is_empty());
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
        let err = |configs: &mut [TransformConfig], item: &str| {
            assign_params(configs, &[item.into()])
                .unwrap_err()
                .to_string()
        };
        let says = err(&mut configs, "op=gt");
        assert!(says.contains("NAME.KEY=VALUE"), "{says}");
        let says = err(&mut configs, "1.op=lt");
        assert!(says.contains("more than once"), "{says}");
        for position in ["3", "0"] {
            let says = err(&mut configs, &format!("{position}.op=lt"));
            assert!(
                says.contains(&format!(
                    "position {position} is out of range: there are 2 components, at positions 1 to 2 (1 filter, 2 enrich)"
                )),
                "{says}"
            );
        }
        let says = err(&mut configs, "filtr.op=lt");
        assert!(
            says.contains("no component is named \"filtr\" (components: 1 filter, 2 enrich)"),
            "{says}"
        );

        // `transform new my-thing` builds `transform_my_thing.wasm`, named `my_thing`.
        let mut twice = vec![
            TransformConfig::new("transform_my_thing.wasm"),
            TransformConfig::new("b/enrich.wasm"),
            TransformConfig::new("a/transform_my_thing.wasm"),
        ];
        let says = err(&mut twice, "my-thing.k=v");
        assert!(
            says.contains(
                "\"my-thing\" is ambiguous, it names the components at positions 1 and 3"
            ),
            "{says}"
        );
        assign_params(&mut twice, &["3.k=v".into(), "enrich.k=w".into()]).unwrap();
        assert_eq!(twice[2].with.get("k").map(String::as_str), Some("v"));
        assert_eq!(twice[1].with.get("k").map(String::as_str), Some("w"));
        twice.remove(2);
        assign_params(&mut twice, &["my-thing.k=v".into()]).unwrap();
        assert_eq!(twice[0].with.get("k").map(String::as_str), Some("v"));

        // With one component a dotted key is a param unless it names the component, but a
        // position must still be 1.
        let mut one = vec![TransformConfig::new("x.wasm")];
        assign_params(&mut one, &["a.b=c".into(), "1.d=e".into(), "x.f=g".into()]).unwrap();
        assert_eq!(one[0].with.get("a.b").map(String::as_str), Some("c"));
        assert_eq!(one[0].with.get("d").map(String::as_str), Some("e"));
        assert_eq!(one[0].with.get("f").map(String::as_str), Some("g"));
        let says = err(&mut one, "2.d=e");
        assert!(
            says.contains("position 2 is out of range: there is one component (1 x)"),
            "{says}"
        );

        // A name with dots in it scopes by its longest prefix that names a component.
        let mut dotted = vec![
            TransformConfig::new("filter.v2.wasm"),
            TransformConfig::new("enrich.wasm"),
        ];
        assign_params(
            &mut dotted,
            &["filter.v2.field=v".into(), "enrich.a.b=c".into()],
        )
        .unwrap();
        assert_eq!(dotted[0].with.get("field").map(String::as_str), Some("v"));
        assert_eq!(dotted[1].with.get("a.b").map(String::as_str), Some("c"));
        dotted.pop();
        assign_params(&mut dotted, &["filter.v2.op=gt".into()]).unwrap();
        assert_eq!(dotted[0].with.get("op").map(String::as_str), Some("gt"));

        // A name given exactly wins over one that matches it only with `-` for `_`.
        let mut close: Vec<TransformConfig> = ["my-step", "my_step"]
            .iter()
            .map(|n| {
                let mut c = TransformConfig::new("x.wasm");
                c.name = Some((*n).to_owned());
                c
            })
            .collect();
        assign_params(&mut close, &["my_step.k=v".into()]).unwrap();
        assert_eq!(close[1].with.get("k").map(String::as_str), Some("v"));
        assert!(close[0].with.is_empty());

        let says = err(&mut [], "k=v");
        assert!(says.contains("the chain has no transforms"), "{says}");
    }

    /// A copy of `transforms/` without the WIT beside it is refused before cargo runs, saying
    /// what is missing.
    #[test]
    fn a_workspace_whose_sdk_has_no_wit_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let ws = dir.path().join("ws");
        std::fs::create_dir_all(ws.join("sluice-guest/src")).unwrap();
        std::fs::write(ws.join("sluice-guest/src/lib.rs"), "").unwrap();
        std::fs::write(
            ws.join("Cargo.toml"),
            "[workspace]\nresolver = \"3\"\nmembers = [\"*\"]\n",
        )
        .unwrap();
        std::fs::write(
            ws.join("sluice-guest/Cargo.toml"),
            "[package]\nname = \"sluice-guest\"\n",
        )
        .unwrap();
        let err = build(None, &ws).unwrap_err().to_string();
        assert!(
            err.contains("reads the WIT package from")
                && err.contains("copy the repository's wit/"),
            "{err}"
        );
    }

    #[test]
    fn timestamps_past_four_digit_years_are_warned_of() {
        use crate::row::Value;
        let row = |us| {
            let mut row = Row::with_capacity(2);
            row.push("id", Value::Int(1));
            row.push("at", Value::Timestamp(us));
            row
        };
        // 9999-12-31T23:59:59.999999 loads; a microsecond later does not, nor does year 0.
        assert_eq!(unloadable_timestamp(&row(253_402_300_799_999_999)), None);
        for us in [253_402_300_800_000_000, -62_167_219_200_000_000, i64::MAX] {
            let warning = unloadable_timestamp(&row(us)).unwrap();
            assert!(
                warning.starts_with(&format!(
                    "field \"at\" is a timestamp outside years 1 to 9999 ({us} µs"
                )),
                "{warning}"
            );
        }
    }

    /// JSON that serde_json's `Value` cannot hold is still a row, compared exactly (integers past
    /// `u64` by every digit, at any depth); what is not JSON is refused.
    #[test]
    fn rows_hold_any_json() {
        let mut row = Row::default();
        row.push("o", crate::row::Value::Json("[1e400]".into()));
        row.push("s", crate::row::Value::Json(r#""\ud800""#.into()));
        let printed = JsonRow::parse(&row_text(&row)).unwrap();
        assert_eq!(printed.text, r#"{"o":[1e400],"s":"\ud800"}"#);
        assert_eq!(JsonRow::parse(&printed.text), Ok(printed.clone()));
        assert_ne!(JsonRow::parse(r#"{"o":[1e401],"s":"\ud800"}"#), Ok(printed));
        assert!(JsonRow::parse(r#"{"a":01}"#).is_err());
        let id = |n: &str| JsonRow::parse(&format!(r#"{{"o":{{"ids":[{n}]}}}}"#)).unwrap();
        assert_ne!(id("18446744073709551617"), id("18446744073709551616"));
        assert_ne!(id("18446744073709551616"), id("1.8446744073709552e19"));
        assert_eq!(id("18446744073709551617"), id(" 18446744073709551617 "));
    }

    /// A golden file is checked whole up front, kept out of memory, and read again as the run
    /// compares with it.
    #[test]
    fn golden_files_are_checked_then_read_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g.jsonl");
        std::fs::write(&path, "{\"a\":1}\n\n{\"a\":2}\n").unwrap();
        let golden = GoldenFile::<JsonRow>::open(&path, |_| Ok(())).unwrap();
        assert_eq!((golden.count, golden.held.is_none()), (2, true));
        let mut check = Check::new(golden);
        check.see(&JsonRow::parse("{\"a\":1}").unwrap(), String::new);
        assert_eq!(
            check.verdict(),
            Err("expected 2 rows, got 1 (first missing, golden line 3: {\"a\":2})".to_owned())
        );

        // A file rewritten after the check (`| tee golden.jsonl` writing the run's own rows)
        // does not pass: the run must match what the file held when it started.
        let golden = GoldenFile::<JsonRow>::open(&path, |_| Ok(())).unwrap();
        let mut check = Check::new(golden);
        std::fs::write(&path, "{\"a\":1}\n{\"a\":3}\n").unwrap();
        for a in [1, 3] {
            check.see(
                &JsonRow::parse(&format!("{{\"a\":{a}}}")).unwrap(),
                String::new,
            );
        }
        assert_eq!(
            check.verdict(),
            Err("the golden file changed: it was written to since the run started".to_owned())
        );
        // Cut short after the check, it is not read as the run making extra rows.
        std::fs::write(&path, "{\"a\":1}\n{\"a\":2}\n{\"a\":3}\n").unwrap();
        let golden = GoldenFile::<JsonRow>::open(&path, |_| Ok(())).unwrap();
        let mut check = Check::new(golden);
        std::fs::write(&path, "{\"a\":1}\n").unwrap();
        for a in [1, 2, 3] {
            check.see(
                &JsonRow::parse(&format!("{{\"a\":{a}}}")).unwrap(),
                String::new,
            );
        }
        assert_eq!(
            check.verdict(),
            Err("the golden file changed: it ended after 1 of its 3 items".to_owned())
        );
        // Lines appended (`| tee -a golden.jsonl`), before or during the second reading, are
        // not read.
        std::fs::write(&path, "{\"a\":1}\n\n{\"a\":2}\n").unwrap();
        let golden = GoldenFile::<JsonRow>::open(&path, |_| Ok(())).unwrap();
        let mut check = Check::new(golden);
        let append = |line: &[u8]| {
            let mut file = std::fs::OpenOptions::new()
                .append(true)
                .open(&path)
                .unwrap();
            std::io::Write::write_all(&mut file, line).unwrap();
        };
        append(b"{\"a\":1}\n");
        check.see(&JsonRow::parse("{\"a\":1}").unwrap(), String::new);
        append(b"{\"a\":2}\n");
        check.see(&JsonRow::parse("{\"a\":2}").unwrap(), String::new);
        assert_eq!(check.verdict(), Ok(2));

        std::fs::write(&path, "{\"a\":1}\n\nnot json\n").unwrap();
        let err = GoldenFile::<JsonRow>::open(&path, |_| Ok(())).unwrap_err();
        assert!(
            format!("{err:#}").contains("g.jsonl:3: not a JSON object"),
            "{err:#}"
        );
    }

    #[test]
    fn diff_names_the_first_difference() {
        let diff = |expected: &[JsonRow], actual: &[JsonRow]| {
            let mut check = Check::new(expected.to_vec().into());
            actual.iter().for_each(|a| check.see(a, String::new));
            check.verdict().err()
        };
        let v = |s: &str| JsonRow::parse(s).unwrap();
        assert_eq!(diff(&[v("{\"a\":1}")], &[v("{\"a\":1}")]), None);
        // Members in any order, but with their types and duplicates.
        let (ab, ba) = (v(r#"{"a":1,"b":[1, 2]}"#), v(r#"{"b":[1,2],"a":1}"#));
        assert_eq!(diff(&[ab], &[ba]), None);
        assert!(diff(&[v(r#"{"a":16}"#)], &[v(r#"{"a":16.0}"#)]).is_some());
        let (dup, one) = (v(r#"{"a":1,"a":"x"}"#), v(r#"{"a":"x"}"#));
        assert!(diff(std::slice::from_ref(&dup), &[one]).is_some());
        assert!(diff(&[dup], &[v(r#"{"a":"x","a":1}"#)]).is_some());
        assert_eq!(
            diff(
                &[v("{\"a\":1}"), v("{\"a\":1}")],
                &[v("{\"a\":1}"), v("{\"a\":2}")]
            ),
            Some(
                "row 2 (golden line 2): expected {\"a\":1}, got {\"a\":2}\n  \
                 differs in \"a\": expected 1, got 2\n  \
                 in all: 1 of 2 rows compared differs"
                    .to_owned()
            )
        );
        // Every pair is compared, to count those that differ; a wide row is clipped in the
        // message, not what differs in it.
        let wide = |last: u32| {
            let members: Vec<String> = (0..2000)
                .map(|i| format!("\"c{i}\":{}", if i == 1999 { last } else { 0 }))
                .collect();
            v(&format!("{{{}}}", members.join(",")))
        };
        let said = diff(
            &[wide(0), v("{\"a\":1}"), wide(0), v("{\"a\":1}")],
            &[wide(1999), v("{\"a\":1}"), wide(1998)],
        )
        .unwrap();
        assert!(said.len() < 2 * MAX_SHOWN_ROW + 300, "{} bytes", said.len());
        assert!(said.contains("bytes in all)"), "{said}");
        assert!(
            said.contains("differs in \"c1999\": expected 0, got 1999"),
            "{said}"
        );
        assert!(
            said.ends_with("in all: 2 of 3 rows compared differ; expected 4 rows, got 3"),
            "{said}"
        );
        // A wide row's difference is named member by member.
        let wide = diff(
            &[v(r#"{"id":1,"name":"x","value":16,"gone":true}"#)],
            &[v(r#"{"value":16.0,"name":"x","id":1,"new":null}"#)],
        )
        .unwrap();
        assert!(
            wide.contains(
                "differs in \"value\": expected 16, got 16.0; missing: \"gone\"; unexpected: \"new\""
            ),
            "{wide}"
        );
        // A member only added is named as such, not as a difference "in" something.
        let added = diff(&[v(r#"{"id":1}"#)], &[v(r#"{"id":1,"large":true}"#)]).unwrap();
        assert!(
            added.contains("got {\"id\":1,\"large\":true}\n  unexpected: \"large\""),
            "{added}"
        );
        let dups = diff(&[v(r#"{"a":1,"a":2}"#)], &[v(r#"{"a":1}"#)]).unwrap();
        assert!(
            dups.contains("differs in \"a\": expected [1, 2] (the name 2 times), got 1"),
            "{dups}"
        );
        assert!(
            diff(&[], &[v("{\"a\":2}")])
                .unwrap()
                .contains("first extra")
        );
    }
}
