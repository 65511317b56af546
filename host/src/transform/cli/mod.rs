//! `sluice transform new|build|test|update-sdk`: tools for transform authors.
//!
//! - `new NAME` scaffolds `transforms/NAME/` from the template in `transforms/template/`
//!   (embedded in the binary), which builds and passes its golden test untouched.
//! - `build [NAME]` builds guests for wasm32-wasip2 in release mode and prints the `.wasm` paths.
//! - `test NAME` builds a transform and runs it on its own `testdata/` (input, params, golden
//!   files); `test` with `--component`s or `--pipeline` runs any chain on any input.
//! - `test` runs a chain of components over a CSV or JSON Lines file, prints output rows as JSONL on
//!   stdout and failed records on stderr. `--expect` diffs the rows against a golden JSONL file,
//!   and `--expect-failures` the failed records; a record that fails unexpectedly fails the test.
//!   CSV goes through the source's own reader and each record gets the metadata `sluice run` would
//!   give its message, so a transform sees locally what it will see in a pipeline. With `--format
//!   dead-letters` it reruns the records a pipeline set aside (`sluice dead-letters` prints them),
//!   each as the message it was, with its own topic, offset, key and headers.
//! - `update-sdk` brings a workspace's copy of the guest SDK (which `new --dir` made) to the one
//!   this sluice carries; `--check` lists what differs and exits 1.
//!
//! `scaffold` makes `new`'s crate (and its workspace, when it starts one), `sdk` is the guest SDK
//! a workspace keeps a copy of, `build` runs cargo, `params` reads `--pipeline`'s chain,
//! `params.json` and `--with`, `input` reads the records, `golden` finds a transform's own test
//! data and holds the golden files and compares the run with them, and `run` is the test run
//! itself.

mod build;
mod golden;
mod input;
mod params;
mod run;
mod scaffold;
mod sdk;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::transform::LoadError;

pub(crate) use build::DEFAULT_DIR;
pub use build::build;
pub use golden::{Failure, FailuresOut, Golden, JsonRow};
pub use input::{
    InputFormat, InputOptions, InputRecord, InputRecords, Skip, TEST_TOPIC, read_input,
};
pub(crate) use run::{FieldTypes, not_json, unloadable_names, unloadable_timestamp};
pub use run::{TestReport, load, test};
pub use scaffold::scaffold;
pub use sdk::update_sdk;

use super::config::TransformConfig;
use crate::config::OnError;
use crate::counted;
use crate::dead_letter;
use crate::source::producer::Partitioner;
use golden::{OwnTest, print_verdict};
use input::{format_of, input_options};
use params::{PipelineChain, name_apart, override_params};

/// A mistake in how `sluice transform test` was called rather than a failure while it ran: a
/// malformed or repeated `--with`, an input, golden or component file that cannot be read or
/// parsed, params a component rejects. The binary exits 2 for it, as for a bad pipeline file.
#[derive(Debug, thiserror::Error)]
#[error("{0:#}")]
pub struct UsageError(pub anyhow::Error);

fn usage(e: anyhow::Error) -> anyhow::Error {
    UsageError(e).into()
}

/// The most partitions `transform test --partitions` spreads records over: each is a worker
/// thread with instances of its own.
const MAX_TEST_PARTITIONS: i64 = 256;

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
        /// The transforms workspace to create it in (default: `transforms`, which must be one
        /// already). A directory named here that is not there yet, or holds nothing but
        /// dot-entries (`.git`), becomes one, with a copy of the guest SDK and the WIT, so that
        /// it builds without sluice's checkout.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Bring a transforms workspace's copy of the guest SDK (`sluice-guest/`, with its WIT, and
    /// the SDK's entries in `[workspace.dependencies]`) to the one this sluice carries, printing
    /// each change (build again afterwards).
    UpdateSdk {
        /// The transforms workspace, one that `new --dir` started (default: `transforms`).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Change nothing: print what differs, and exit 1 if anything does (for CI); 2 if it
        /// cannot tell (a file that cannot be read).
        #[arg(long)]
        check: bool,
    },
    /// Build transforms for wasm32-wasip2 in release mode and print where the `.wasm` files are.
    Build {
        /// Build only this transform (crate `transform-<NAME>`); default: all of them.
        name: Option<String>,
        /// The transforms workspace.
        #[arg(long, default_value = DEFAULT_DIR)]
        dir: PathBuf,
    },
    /// Run a transform on its own test data, or a chain of components over a CSV or JSONL file,
    /// and print the output rows as JSONL.
    #[command(group(clap::ArgGroup::new("chain").required(true).args(["name", "components", "pipeline"])))]
    Test {
        /// A transform of the workspace at `--dir`, to build and run on its own test data: its
        /// component (built first, as `build NAME` does) on `<crate>/testdata/input.jsonl` (or
        /// `input.csv`), compared with `testdata/expected.jsonl` and
        /// `testdata/expected-failures.jsonl` where they exist, with the params in
        /// `testdata/params.json` (a JSON object, as the transform's `with` in pipeline.json) and
        /// the input settings in `testdata/source.json` (`{"key_column": "id"}`: `delimiter`,
        /// `schema`, `infer_rows`, `null_if`, `key_column`, `topic`, `partition`, `partitions`,
        /// `timestamp_ms`, as the flags). Flags given as well override these.
        #[arg(conflicts_with_all = ["components", "pipeline"])]
        name: Option<String>,
        /// The transforms workspace `NAME` is in (default `transforms`).
        #[arg(long, requires = "name")]
        dir: Option<PathBuf>,
        /// A component to run; repeat for a chain (run in the order given). Needs `--input`.
        #[arg(long = "component")]
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
        /// runs as soon as the writer pauses. With NAME or `--pipeline`, it defaults to their
        /// input.
        // Checked by hand, not by clap (`required_unless_present_any`), whose usage line would
        // show `--input` as always required.
        #[arg(long)]
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
        /// How many CSV records type inference samples (the source's `infer_rows`; default 1000;
        /// at most 64 MiB of them).
        /// For JSON Lines, how many rows `--key-column` looks ahead for a row with its field (at
        /// most 64 MiB of them).
        #[arg(long, value_parser = at_least_one::<usize>)]
        infer_rows: Option<usize>,
        /// A field text read as null in any CSV column (the source's `null_if`), such as `NULL`
        /// or `\N`; repeat for several. `--null-if ''` makes `""` null too.
        #[arg(long = "null-if", value_name = "TEXT")]
        null_if: Vec<String>,
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
        /// Spread the records over N partitions (up to 256), each to the partition `sluice run`'s
        /// producer sends its message to: by its key (`--key-column`), hashed as librdkafka's
        /// `partitioner` does (with `--pipeline`, its `kafka.properties.partitioner`; else the
        /// default, CRC-32 of the key). Records the producer sends to a random partition (no
        /// key under the default and the other `_random` ones, an empty key under the default,
        /// every record under `random`) go to each in turn. Offsets count from 0 in
        /// each partition, and each partition runs on instances of its own, so a transform that
        /// keeps state across partitions (a running total, the last N rows) gives output that
        /// differs from a one-partition test, as its instances in a run would (a run's workers,
        /// one per core, each take a share of the partitions).
        #[arg(
            long,
            value_name = "N",
            conflicts_with = "partition",
            value_parser = clap::value_parser!(i32).range(1..=MAX_TEST_PARTITIONS)
        )]
        partitions: Option<i32>,
        /// The timestamp every record reports, in milliseconds since the Unix epoch (default
        /// none; `sluice run` stamps each message with the time it was sent). At most the end of
        /// year 9999 (253402300799999), the last time a Snowflake timestamp holds.
        #[arg(
            long,
            value_name = "MS",
            allow_negative_numbers = true,
            value_parser = clap::value_parser!(i64).range(0..=input::MAX_TIMESTAMP_MS)
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
        /// `--expect-failures`. The rows are on stdout, for `--expect`. Failures written down do
        /// not count as unexpected under `--expect`.
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
            let dir_given = dir.is_some();
            let dir = dir.unwrap_or_else(|| PathBuf::from(DEFAULT_DIR));
            let crate_dir = scaffold(&name, &dir, dir_given)?;
            crate::outln!("created {}", crate_dir.display());
            // The whole loop, so that an author need not look it up: build, then the scaffold's
            // own golden test (which passes untouched).
            let dir_flag = match dir == Path::new(DEFAULT_DIR) {
                true => String::new(),
                false => format!(" --dir {}", dir.display()),
            };
            crate::outln!("next: sluice transform build {name}{dir_flag}");
            crate::outln!("then: sluice transform test {name}{dir_flag}");
            crate::outln!(
                "unit tests: (cd {} && cargo test -p transform-{name} --target \"$(rustc -vV | \
                 sed -n 's/^host: //p')\")",
                dir.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        TransformCommand::UpdateSdk { dir, check } => {
            let dir_given = dir.is_some();
            let dir = dir.unwrap_or_else(|| PathBuf::from(DEFAULT_DIR));
            // Under --check, 1 says the copy differs: one that could not be read is told apart.
            let current =
                update_sdk(&dir, dir_given, check).map_err(|e| if check { usage(e) } else { e })?;
            Ok(match check && !current {
                true => ExitCode::from(1),
                false => ExitCode::SUCCESS,
            })
        }
        TransformCommand::Build { name, dir } => {
            for path in build(name.as_deref(), &dir)? {
                crate::outln!("{}", path.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        TransformCommand::Test {
            name,
            dir,
            components,
            pipeline,
            input,
            format,
            delimiter,
            schema,
            infer_rows,
            null_if,
            key_column,
            topic,
            partition,
            partitions,
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
                    ("--null-if", !null_if.is_empty()),
                    ("--key-column", key_column.is_some()),
                    ("--topic", topic.is_some()),
                    ("--partition", partition.is_some()),
                    ("--partitions", partitions.is_some()),
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
            let mut own = name
                .as_deref()
                .map(|n| OwnTest::find(n, dir.as_deref().unwrap_or(Path::new(DEFAULT_DIR))))
                .transpose()?;
            // What the crate's `testdata/source.json` says, where no flag says otherwise.
            let key_flag = key_column.is_some();
            let own_source =
                (own.as_mut().filter(|_| !letters)).map(|o| std::mem::take(&mut o.source));
            let own_schema = own_source.as_ref().map(|s| s.schema.clone());
            let null_flag = !null_if.is_empty();
            let own_null_if = own_source.as_ref().and_then(|s| s.null_if.clone());
            let (delimiter, infer_rows, key_column, topic, partition, partitions, timestamp_ms) =
                match own_source {
                    // A flag of either kind overrides the file's partition and partitions.
                    Some(s) => (
                        delimiter.or(s.delimiter),
                        infer_rows.or(s.infer_rows),
                        key_column.or(s.key_column),
                        topic.or(s.topic),
                        partition.or(s.partition.filter(|_| partitions.is_none())),
                        partitions.or(s.partitions.filter(|_| partition.is_none())),
                        timestamp_ms.or(s.timestamp_ms),
                    ),
                    None => (
                        delimiter,
                        infer_rows,
                        key_column,
                        topic,
                        partition,
                        partitions,
                        timestamp_ms,
                    ),
                };
            // A golden file of its own that this run writes (`> testdata/expected.jsonl`,
            // `--write-failures testdata/expected-failures.jsonl`) is being made, not checked.
            let stdout_is = |p: &PathBuf| {
                std::fs::metadata(p).is_ok_and(|m| {
                    golden::same_file(std::os::fd::AsFd::as_fd(&std::io::stdout()), &m)
                })
            };
            // NAME mode with no golden file of its own: a pass that checked nothing is said.
            let no_golden = (own.as_ref())
                .filter(|o| o.expect.is_none() && o.expect_failures.is_none())
                .and(name.clone());
            let expect = expect.or_else(|| own.as_ref()?.expect.clone().filter(|p| !stdout_is(p)));
            let expect_failures = expect_failures.or_else(|| {
                let own = own.as_ref()?.expect_failures.clone()?;
                let written = (write_failures.as_ref()).is_some_and(|w| golden::same_path(&own, w));
                (!written).then_some(own)
            });
            let mut configs = match (&file, &own) {
                (Some(file), _) => file.configs.clone(),
                (None, Some(own)) => {
                    let mut config = TransformConfig::new(own.component.to_string_lossy());
                    config.with.clone_from(&own.params);
                    vec![config]
                }
                (None, None) => components
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
            let input = match (input, &file, &own) {
                (Some(input), _, _) => input,
                (None, Some(file), _) => file.input.clone(),
                (None, None, Some(own)) => own.input.clone().ok_or_else(|| {
                    usage(anyhow::anyhow!(
                        "no --input, and transform {:?} has no testdata/input.jsonl or \
                         testdata/input.csv",
                        name.as_deref().unwrap_or_default()
                    ))
                })?,
                (None, None, None) => {
                    return Err(usage(anyhow::anyhow!(
                        "--input is required with --component (NAME and --pipeline have one)"
                    )));
                }
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
                null_if,
                key_column.clone(),
            )
            .map_err(usage)?;
            for (column, ty) in own_schema.into_iter().flatten() {
                opts.schema.entry(column).or_insert(ty);
            }
            // Like its `schema`, for CSV input only: a crate's JSON Lines test data has nulls of
            // its own.
            if let Some(own) = own_null_if.filter(|_| !null_flag)
                && format_of(&input, format) == InputFormat::Csv
            {
                opts.null_if = own;
            }
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
                    if !null_flag {
                        opts.null_if.clone_from(&src.null_if);
                    }
                }
                if key_column.is_none() {
                    opts.key_column.clone_from(&src.key_column);
                }
                opts.topic.clone_from(&file.loaded.config.kafka.topic);
                opts.max_record_bytes =
                    crate::source::producer::max_message_bytes(&file.loaded.config.kafka);
            }
            if let Some(topic) = topic {
                if let Some(problem) = crate::validate::topic_name_problem(&topic) {
                    return Err(usage(anyhow::anyhow!("--topic {problem}")));
                }
                opts.topic = topic;
            }
            opts.partition = partition.unwrap_or(opts.partition);
            opts.partitions = partitions;
            if let (Some(file), Some(path), Some(_)) = (&file, &pipeline, partitions) {
                opts.partitioner = Partitioner::of(&file.loaded.config.kafka).map_err(|e| {
                    usage(anyhow::anyhow!(
                        "{}: kafka.properties.partitioner: {e}",
                        path.display()
                    ))
                })?;
            }
            // A worker per partition: each partition meets instances of its own.
            let workers = usize::try_from(partitions.unwrap_or(1)).unwrap_or(1);
            opts.timestamp_ms = timestamp_ms;
            let records = read_input(&input, &opts)
                .map_err(|e| match (&pipeline, key_flag, &opts.key_column) {
                    // The key column came from the file, not from a flag: say so.
                    (Some(file), false, Some(k)) => anyhow::anyhow!(
                        "{}",
                        format!("{e:#}").replacen(
                            &format!("--key-column {k:?}"),
                            &format!("the source's key_column {k:?} (in {})", file.display()),
                            1
                        )
                    ),
                    (None, false, Some(k)) => anyhow::anyhow!(
                        "{}",
                        format!("{e:#}").replacen(
                            &format!("--key-column {k:?}"),
                            &format!("testdata/source.json's key_column {k:?}"),
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
                    file.load_chain(&configs, &flagged, workers)?
                }
                None => {
                    if let Some(own) = &own {
                        own.build()?;
                    }
                    let loaded = load(&configs, workers);
                    match own
                        .as_ref()
                        .and_then(|o| Some((o, o.params_file.as_ref()?)))
                    {
                        // Named only when the param refused is the file's, not a `--with`'s.
                        Some((own, params)) => loaded.map_err(|e| {
                            let inner = e.downcast_ref::<UsageError>().map_or(&e, |u| &u.0);
                            let refused = (inner.chain())
                                .find_map(|c| c.downcast_ref::<LoadError>()?.param());
                            let file = |p: &str| own.params.get(p) == configs[0].with.get(p);
                            match refused {
                                Some(p) if !file(p) => e,
                                _ => e.context(format!("with the params in {}", params.display())),
                            }
                        })?,
                        None => loaded?,
                    }
                }
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
            // An input with nothing in it (a header, blank lines) runs nothing, and a golden
            // file checked against it would pass on nothing.
            let empty = report.records == 0 && !closed.load(std::sync::atomic::Ordering::Relaxed);
            let named = match input.as_path() == Path::new("-") {
                true => "the input (stdin)".to_owned(),
                false => input.display().to_string(),
            };
            if empty && !compares {
                crate::errln!(
                    "warning: {named} has no records to run: nothing ran through the transforms"
                );
            } else if report.ran == 0 && report.records > 0 && !compares {
                crate::errln!(
                    "warning: none of the {} of {named} ran through the transforms: every one \
                     failed before them (a wrong --delimiter, --schema or file?)",
                    counted(report.records as usize, "record")
                );
            }
            if !compares {
                if let Some(name) = no_golden {
                    crate::errln!(
                        "note: transform {name} has no testdata/expected.jsonl or \
                         expected-failures.jsonl, so its output was not compared with anything"
                    );
                }
                return Ok(ExitCode::SUCCESS);
            }
            if empty {
                crate::errln!(
                    "mismatch: {named} has no records to run, so the test checked nothing; give it \
                     records (an empty expected file then says every one is filtered out)"
                );
                return Ok(ExitCode::from(1));
            }
            let mut matched = true;
            if let (Some(golden), Some(verdict)) = (&expect, &report.rows_verdict) {
                matched &= print_verdict(golden, verdict, "row");
            }
            match (&expect_failures, &report.failures_verdict) {
                (Some(golden), Some(verdict)) => {
                    matched &= print_verdict(golden, verdict, "failed record");
                }
                // Failures being written down are not unexpected.
                _ if write_failures.is_some() => {}
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
            // Every row matched, but a run would not load them all: a golden file passing them
            // would pass a transform whose rows are dead-lettered in every run.
            if report.set_aside > 0 && expect.is_some() {
                crate::errln!(
                    "mismatch: {} a run may set aside (the warnings above say which, and why), \
                     though they match",
                    counted(report.set_aside as usize, "output row")
                );
                matched = false;
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
