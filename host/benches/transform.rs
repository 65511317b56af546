//! Rows per second through wasm transforms against the same logic written natively in Rust.
//!
//! Two workloads at batch sizes 1, 64 and 1024 (rows of 3 fields: int, string, float):
//! `passthrough`, and the `filter` (value > 50) → `enrich` (rename, uppercase, computed field)
//! chain. The wasm side runs through the real runtime (`TransformChain::process_blocking`, one
//! worker, so both sides use one core); the native side applies equivalent Rust functions to the
//! same host rows. After criterion's report a summary prints rows/s, the wasm/native ratio, wall
//! and in-call ns per row, and the per-row boundary cost (passthrough's time inside the guest
//! call per row: lowering, the guest's work, lifting).
//!
//! A third variant of the chain, `wasm-no-sdk`, runs the same filter → enrich logic written
//! straight against the WIT lanes without the guest SDK (`tests/guests/lanes`), so the report
//! splits the wasm/native gap into the SDK's share and the boundary's and host's share. The
//! bench also measures a floor (`wasm-floor-2-no-op`): a chain of two `lanes` transforms that
//! return every row untouched (`step=keep`), against native filter → enrich. No two-transform
//! chain can beat that ratio.
//!
//! A fourth variant, `sdk-code-native`, runs the example guests' own code (the `filter` and
//! `enrich` crates with the guest SDK) compiled natively, through the runtime's host-side batch
//! handling (`process_native`) with no WebAssembly at all: the speed a chain of these guests would
//! have if calling into wasm were free. Against the hand-written native logic it bounds what any
//! engine could reach with this SDK and this host row API.
//!
//! Run: `cargo bench -p sluice --bench transform -- --measurement-time 3`. The guests are built
//! first (`cargo build --release` in `transforms/` and, for `lanes`, in `tests/guests/` with the
//! same release settings as `transforms/`).

use std::cell::Cell;
use std::hint::black_box;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use criterion::{BatchSize, Criterion, Throughput};
use sluice::row::{Name, RecordMeta, Row, Value};
use sluice::transform::runtime::{process_native, wire};
use sluice::transform::{RecordOutcome, RuntimeOptions, TransformChain, TransformConfig};
use sluice_guest::bindings::sluice::transform::types as guest;
use sluice_guest::{Params, Transform};

// The allocator of the `sluice` binary, so both sides allocate as they would in production.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const BATCH_SIZES: [usize; 3] = [1, 64, 1024];

struct Guests {
    passthrough: String,
    filter: String,
    enrich: String,
    lanes: String,
}

fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.env_remove("CARGO_TARGET_DIR");
    cmd
}

fn build_guests() -> Guests {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../transforms");
    let status = cargo()
        .current_dir(&dir)
        .args([
            "build",
            "--release",
            "-p",
            "transform-passthrough",
            "-p",
            "transform-filter",
            "-p",
            "transform-enrich",
        ])
        .status()
        .expect("running cargo build in transforms/");
    assert!(status.success(), "building the example guests failed");
    // Test guests build with a lighter profile; this one is measured, so it gets the examples'.
    let tests = dir.join("../tests/guests");
    let status = cargo()
        .current_dir(&tests)
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip2",
            "-p",
            "lanes",
        ])
        .env("CARGO_PROFILE_RELEASE_OPT_LEVEL", "3")
        .env("CARGO_PROFILE_RELEASE_LTO", "true")
        .env("CARGO_PROFILE_RELEASE_CODEGEN_UNITS", "1")
        .status()
        .expect("running cargo build in tests/guests/");
    assert!(status.success(), "building the lanes guest failed");
    let path = |n: &str| {
        dir.join("target/wasm32-wasip2/release")
            .join(format!("transform_{n}.wasm"))
            .display()
            .to_string()
    };
    Guests {
        passthrough: path("passthrough"),
        filter: path("filter"),
        enrich: path("enrich"),
        lanes: tests
            .join("target/wasm32-wasip2/release/lanes.wasm")
            .display()
            .to_string(),
    }
}

fn config(path: &str, with: &[(&str, &str)]) -> TransformConfig {
    let mut c = TransformConfig::new(path);
    c.with = with
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    c
}

fn load(configs: &[TransformConfig]) -> TransformChain {
    TransformChain::load(
        configs,
        &RuntimeOptions {
            workers: 1,
            cache_dir: None,
        },
    )
    .expect("chain loads")
}

fn passthrough_chain(g: &Guests) -> TransformChain {
    load(&[config(&g.passthrough, &[])])
}

const FILTER_WITH: &[(&str, &str)] = &[("field", "value"), ("op", "gt"), ("value", "50")];
const ENRICH_WITH: &[(&str, &str)] = &[
    ("rename", "name:customer"),
    ("uppercase", "customer"),
    ("compute", "double=value*2"),
];

fn filter_enrich_chain(g: &Guests) -> TransformChain {
    load(&[
        config(&g.filter, FILTER_WITH),
        config(&g.enrich, ENRICH_WITH),
    ])
}

/// The `filter` → `enrich` guests' own code, compiled natively, behind the runtime's host-side
/// batch handling; also the time spent inside the two steps (the analogue of in-call time).
struct SdkCodeNative {
    filter: transform_filter::Filter,
    enrich: transform_enrich::Enrich,
    in_steps: Cell<Duration>,
    rows_in: u64,
}

impl SdkCodeNative {
    fn new() -> SdkCodeNative {
        fn init<T: Transform>(with: &[(&str, &str)]) -> T {
            let pairs = with
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            T::init(&Params::new(pairs)).unwrap_or_else(|_| panic!("init fails"))
        }
        SdkCodeNative {
            filter: init(FILTER_WITH),
            enrich: init(ENRICH_WITH),
            in_steps: Cell::new(Duration::ZERO),
            rows_in: 0,
        }
    }

    fn process(&mut self, batch: Vec<(RecordMeta, Row)>) -> Vec<RecordOutcome> {
        self.rows_in += batch.len() as u64;
        let (filter, enrich) = (&mut self.filter, &mut self.enrich);
        let spent = &self.in_steps;
        process_native(
            batch,
            &mut [&mut |rows| native_step(filter, rows, spent), &mut |rows| {
                native_step(enrich, rows, spent)
            }],
        )
    }
}

/// One batch through a guest's code natively. The input is copied into the guest's own types
/// and the output moved back, like lowering and lifting; both count as time in the step.
fn native_step<T: Transform>(
    t: &mut T,
    input: &wire::Rows,
    spent: &Cell<Duration>,
) -> wire::Output {
    let start = Instant::now();
    let v = &input.values;
    let rows = guest::Rows {
        schemas: input.schemas.clone(),
        shapes: input.shapes.clone(),
        values: guest::Values {
            types: v.types.clone(),
            ints: v.ints.clone(),
            floats: v.floats.clone(),
            text: v.text.clone(),
            text_ends: v.text_ends.clone(),
        },
    };
    let out = sluice_guest::__private::run_batch(t, rows);
    let outcomes = out
        .outcomes
        .into_iter()
        .map(|o| match o {
            guest::Outcome::Emit(k) => wire::Outcome::Emit(k),
            guest::Outcome::Keep => wire::Outcome::Keep,
            guest::Outcome::Error(e) => {
                wire::Outcome::Error(wire::GuestError::Other(format!("{e:?}")))
            }
        })
        .collect();
    let r = out.rows;
    let v = r.values;
    let output = wire::Output {
        outcomes,
        rows: wire::Rows {
            schemas: r.schemas,
            shapes: r.shapes,
            values: wire::Values {
                types: v.types,
                ints: v.ints,
                floats: v.floats,
                text: v.text,
                text_ends: v.text_ends,
            },
        },
    };
    spent.set(spent.get() + start.elapsed());
    output
}

/// filter → enrich without the SDK: the `lanes` guest, once per step.
fn lanes_chain(g: &Guests) -> TransformChain {
    load(&[
        config(&g.lanes, &[("step", "filter")]),
        config(&g.lanes, &[("step", "enrich")]),
    ])
}

/// Two transforms that do nothing (the `lanes` guest's `step=keep`): the floor of any chain of two.
fn floor_chain(g: &Guests) -> TransformChain {
    load(&[
        config(&g.lanes, &[("step", "keep")]),
        config(&g.lanes, &[("step", "keep")]),
    ])
}

/// `n` rows `{id: int, name: string, value: float}`; half of them have value > 50.
fn rows(n: usize) -> Vec<(RecordMeta, Row)> {
    let names: [Name; 3] = [Arc::from("id"), Arc::from("name"), Arc::from("value")];
    (0..n)
        .map(|i| {
            let mut r = Row::with_capacity(3);
            r.push(names[0].clone(), Value::Int(i as i64));
            r.push(
                names[1].clone(),
                Value::String(format!("user{:04}", i % 10_000)),
            );
            r.push(names[2].clone(), Value::Float((i % 100) as f64 + 0.5));
            let meta = RecordMeta {
                topic: "bench".into(),
                partition: 0,
                offset: i as i64,
                ..RecordMeta::default()
            };
            (meta, r)
        })
        .collect()
}

fn native_passthrough(batch: Vec<(RecordMeta, Row)>) -> Vec<RecordOutcome> {
    batch
        .into_iter()
        .map(|(_, r)| RecordOutcome::Emitted(vec![r]))
        .collect()
}

/// The filter → enrich logic of the guests, natively: numeric compare, rename, uppercase,
/// computed field.
fn native_filter_enrich(batch: Vec<(RecordMeta, Row)>) -> Vec<RecordOutcome> {
    let customer: Name = Arc::from("customer");
    let double: Name = Arc::from("double");
    batch
        .into_iter()
        .map(|(_, mut row)| {
            let keep = match row.get("value") {
                Some(Value::Int(i)) => (*i as f64) > 50.0,
                Some(Value::Float(f)) => *f > 50.0,
                _ => false,
            };
            if !keep {
                return RecordOutcome::Emitted(Vec::new());
            }
            if let Some(f) = row.fields.iter_mut().find(|f| &*f.name == "name") {
                f.name = customer.clone();
            }
            if let Some(f) = row.fields.iter_mut().find(|f| &*f.name == "customer")
                && let Value::String(s) = &mut f.value
            {
                s.make_ascii_uppercase();
            }
            let v = match row.get("value") {
                Some(Value::Float(f)) => Value::Float(f * 2.0),
                Some(Value::Int(i)) => Value::Int(i * 2),
                _ => Value::Null,
            };
            row.push(double.clone(), v);
            RecordOutcome::Emitted(vec![row])
        })
        .collect()
}

fn bench(c: &mut Criterion, g: &Guests) {
    let pass = passthrough_chain(g);
    let chain = filter_enrich_chain(g);
    let lanes = lanes_chain(g);
    let floor = floor_chain(g);
    // The implementations must agree before their speed means anything.
    assert_eq!(
        chain.process_blocking(rows(256)).unwrap(),
        native_filter_enrich(rows(256))
    );
    assert_eq!(
        lanes.process_blocking(rows(256)).unwrap(),
        native_filter_enrich(rows(256))
    );
    let mut sdk_native = SdkCodeNative::new();
    assert_eq!(
        sdk_native.process(rows(256)),
        native_filter_enrich(rows(256))
    );
    assert_eq!(
        pass.process_blocking(rows(256)).unwrap(),
        native_passthrough(rows(256))
    );
    for (workload, wasm, native) in [
        (
            "passthrough",
            vec![("wasm", &pass)],
            native_passthrough as fn(_) -> _,
        ),
        (
            "filter_enrich",
            vec![
                ("wasm", &chain),
                ("wasm-no-sdk", &lanes),
                ("wasm-floor-2-no-op", &floor),
            ],
            native_filter_enrich as fn(_) -> _,
        ),
    ] {
        let mut group = c.benchmark_group(workload);
        for n in BATCH_SIZES {
            group.throughput(Throughput::Elements(n as u64));
            for (label, wasm) in &wasm {
                group.bench_function(format!("{label}/{n}"), |b| {
                    b.iter_batched(
                        || rows(n),
                        |batch| black_box(wasm.process_blocking(batch).unwrap()),
                        BatchSize::LargeInput,
                    )
                });
            }
            if workload == "filter_enrich" {
                group.bench_function(format!("sdk-code-native/{n}"), |b| {
                    b.iter_batched(
                        || rows(n),
                        |batch| black_box(sdk_native.process(batch)),
                        BatchSize::LargeInput,
                    )
                });
            }
            group.bench_function(format!("native/{n}"), |b| {
                b.iter_batched(
                    || rows(n),
                    |batch| black_box(native(batch)),
                    BatchSize::LargeInput,
                )
            });
        }
        group.finish();
    }
}

/// Mean time per call of `f` over fresh batches of `n` rows, timing only the call.
fn time_per_batch(
    n: usize,
    budget: Duration,
    mut f: impl FnMut(Vec<(RecordMeta, Row)>) -> Vec<RecordOutcome>,
) -> Duration {
    for _ in 0..20 {
        black_box(f(rows(n)));
    }
    let (mut spent, mut calls) = (Duration::ZERO, 0u32);
    while spent < budget {
        let batch = rows(n);
        let start = Instant::now();
        black_box(f(batch));
        spent += start.elapsed();
        calls += 1;
    }
    spent / calls
}

/// Per transform of the chain: name, ns inside its calls, rows it received.
fn per_transform(chain: &TransformChain) -> Vec<(String, u64, u64)> {
    chain
        .stats()
        .into_iter()
        .map(|(name, s)| {
            (
                name,
                s.latency_sum_ns.load(Relaxed),
                s.rows_in.load(Relaxed),
            )
        })
        .collect()
}

/// Total time spent inside guest calls (all transforms of the chain, from the runtime's own
/// latency stats) in ns, and rows handed to the first transform.
fn call_time(chain: &TransformChain) -> (u64, u64) {
    let stats = chain.stats();
    let ns = stats
        .iter()
        .map(|(_, s)| s.latency_sum_ns.load(Relaxed))
        .sum();
    (ns, stats[0].1.rows_in.load(Relaxed))
}

fn summary(g: &Guests) {
    let pass = passthrough_chain(g);
    let chain = filter_enrich_chain(g);
    let lanes = lanes_chain(g);
    let floor = floor_chain(g);
    assert_eq!(
        floor.process_blocking(rows(256)).unwrap(),
        native_passthrough(rows(256))
    );
    let budget = Duration::from_millis(1500);
    println!("\nsummary (1 worker thread; rows/s = batch rows / mean batch time)");
    println!(
        "{:<14} {:>6} {:>14} {:>14} {:>12} {:>14} {:>14}",
        "workload",
        "batch",
        "wasm rows/s",
        "native rows/s",
        "wasm/native",
        "wasm ns/row",
        "in-call ns/row"
    );
    for n in BATCH_SIZES {
        let mut pass_ns = 0.0;
        let mut pass_call_ns = 0.0;
        let mut native_pass_ns = 0.0;
        for (workload, wasm, native) in [
            ("passthrough", &pass, native_passthrough as fn(_) -> _),
            ("filter_enrich", &chain, native_filter_enrich as fn(_) -> _),
            ("lanes (no SDK)", &lanes, native_filter_enrich as fn(_) -> _),
            // Against the filter → enrich budget on purpose: the cost of two calls that do no work.
            ("floor, 2 no-op", &floor, native_filter_enrich as fn(_) -> _),
        ] {
            let before = call_time(wasm);
            let each_before = per_transform(wasm);
            let w = time_per_batch(n, budget, |b| wasm.process_blocking(b).unwrap());
            let (call, rows_in) = call_time(wasm);
            let each: Vec<String> = per_transform(wasm)
                .into_iter()
                .zip(each_before)
                .map(|((name, t, rows), (_, t0, rows0))| {
                    let ns = (t - t0) as f64 / (rows - rows0).max(1) as f64;
                    format!("{name} {ns:.1} ns per row it received")
                })
                .collect();
            let call_ns = (call - before.0) as f64 / (rows_in - before.1) as f64;
            let nat = time_per_batch(n, budget, native);
            let w_ns = w.as_nanos() as f64 / n as f64;
            let n_ns = nat.as_nanos() as f64 / n as f64;
            if workload == "passthrough" {
                pass_call_ns = call_ns;
                pass_ns = w_ns;
                native_pass_ns = n_ns;
            }
            println!(
                "{workload:<14} {n:>6} {:>14.0} {:>14.0} {:>12.3} {:>14.1} {:>14.1}",
                1e9 / w_ns,
                1e9 / n_ns,
                n_ns / w_ns,
                w_ns,
                call_ns
            );
            if each.len() > 1 {
                println!("{:<14} {n:>6} in-call: {}", "", each.join(", "));
            }
        }
        // The guests' own code with no wasm at all: the best any engine could do with it.
        let mut sdk = SdkCodeNative::new();
        let w = time_per_batch(n, budget, |b| sdk.process(b));
        let nat = time_per_batch(n, budget, native_filter_enrich);
        let (w_ns, n_ns) = (
            w.as_nanos() as f64 / n as f64,
            nat.as_nanos() as f64 / n as f64,
        );
        println!(
            "{:<14} {n:>6} {:>14.0} {:>14.0} {:>12.3} {:>14.1} {:>14.1}",
            "SDK, no wasm",
            1e9 / w_ns,
            1e9 / n_ns,
            n_ns / w_ns,
            w_ns,
            sdk.in_steps.get().as_nanos() as f64 / sdk.rows_in as f64
        );
        println!(
            "{:<14} {n:>6} per-row boundary cost (passthrough, in-call): {pass_call_ns:.1} ns; wall overhead vs native: {:.1} ns",
            "",
            pass_ns - native_pass_ns
        );
    }
}

fn main() {
    let guests = build_guests();
    let mut c = Criterion::default().configure_from_args();
    bench(&mut c, &guests);
    c.final_summary();
    // `--profile-time` runs one benchmark under a profiler: keep the profile to it.
    if !std::env::args().any(|a| a == "--profile-time") {
        summary(&guests);
    }
}
