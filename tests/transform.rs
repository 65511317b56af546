//! Integration tests: the transform runtime running real wasm guests (built by build.rs).
//!
//! Example guests run on known input; poison guests (loop, memory bomb, trap, miscount, huge
//! output) prove that a misbehaving record is isolated: the host survives, exactly that record
//! is quarantined with the right kind, and every other record comes out right.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering::Relaxed;

use sha2::{Digest, Sha256};
use sluice::config::OnError;
use sluice::row::{RecordMeta, Row, Value};
use sluice::transform::{
    FailureKind, LoadError, Quarantine, RecordOutcome, RuntimeOptions, TransformChain,
    TransformConfig, TransformError,
};
use sluice_tests::guests;

fn opts() -> RuntimeOptions {
    RuntimeOptions {
        workers: 2,
        cache_dir: None,
    }
}

/// Loads one transform alone, as `sluice validate` checks it: its error, if it has one.
fn check(config: &TransformConfig, opts: &RuntimeOptions) -> Result<(), LoadError> {
    TransformChain::load(std::slice::from_ref(config), opts).map(drop)
}

/// A transform config for the guest at `path` with params `with`.
pub(crate) fn config(path: &str, with: &[(&str, &str)]) -> TransformConfig {
    let mut c = TransformConfig::new(path);
    c.with = with
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect::<BTreeMap<_, _>>();
    c
}

fn chain(configs: &[TransformConfig]) -> TransformChain {
    TransformChain::load(configs, &opts()).expect("chain loads")
}

/// [`chain`] on one worker thread: a batch goes through one instance per transform, in order.
fn one_worker(configs: &[TransformConfig]) -> TransformChain {
    let one = RuntimeOptions {
        workers: 1,
        cache_dir: None,
    };
    TransformChain::load(configs, &one).expect("chain loads")
}

fn row(fields: &[(&str, Value)]) -> Row {
    let mut r = Row::default();
    for (name, value) in fields {
        r.push(*name, value.clone());
    }
    r
}

fn meta(offset: i64) -> RecordMeta {
    RecordMeta {
        topic: "orders".into(),
        partition: 1,
        offset,
        ..RecordMeta::default()
    }
}

/// Rows `{id, name, value}` for ids `0..n`: value = id * 10, name = `n<id>`.
fn numbered(n: i64) -> Vec<Row> {
    (0..n)
        .map(|i| {
            row(&[
                ("id", Value::Int(i)),
                ("name", Value::String(format!("n{i}"))),
                ("value", Value::Float(i as f64 * 10.0)),
            ])
        })
        .collect()
}

fn with_meta(rows: Vec<Row>) -> Vec<(RecordMeta, Row)> {
    rows.into_iter()
        .enumerate()
        .map(|(i, r)| (meta(i as i64), r))
        .collect()
}

/// [`with_meta`], record `i` in partition `i % partitions`.
fn across(rows: Vec<Row>, partitions: i32) -> Vec<(RecordMeta, Row)> {
    let mut batch = with_meta(rows);
    for (i, (meta, _)) in batch.iter_mut().enumerate() {
        meta.partition = i as i32 % partitions;
    }
    batch
}

fn emitted(outcome: &RecordOutcome) -> &[Row] {
    match outcome {
        RecordOutcome::Emitted(rows) => rows,
        other => panic!("expected emitted rows, got {other:?}"),
    }
}

fn quarantined(outcome: &RecordOutcome) -> &Quarantine {
    match outcome {
        RecordOutcome::Quarantined(q) => q,
        other => panic!("expected a quarantined record, got {other:?}"),
    }
}

/// One field of every value type, text with multi-byte characters.
fn every_type() -> Vec<(&'static str, Value)> {
    vec![
        ("null", Value::Null),
        ("flag", Value::Bool(true)),
        ("n", Value::Int(-42)),
        ("x", Value::Float(2.5)),
        ("s", Value::String("héllo, wörld".into())),
        ("ts", Value::Timestamp(1_700_000_000_123_456)),
        ("doc", Value::Json(r#"{"a":[1,2]}"#.into())),
    ]
}

#[test]
fn passthrough_keeps_every_value_type_and_order() {
    let c = chain(&[config(guests::PASSTHROUGH, &[])]);
    let input = row(&every_type());
    let other_shape = row(&[("only", Value::Int(1))]);
    let out = c
        .process_blocking(vec![
            (meta(0), input.clone()),
            (meta(1), other_shape.clone()),
            (meta(2), input.clone()),
        ])
        .unwrap();
    assert_eq!(
        out,
        vec![
            RecordOutcome::Emitted(vec![input.clone()]),
            RecordOutcome::Emitted(vec![other_shape]),
            RecordOutcome::Emitted(vec![input]),
        ]
    );
    let (name, stats) = &c.stats()[0];
    assert_eq!(name, "passthrough");
    assert_eq!(stats.rows_in.load(Relaxed), 3);
    assert_eq!(stats.rows_out.load(Relaxed), 3);
    assert!(stats.invocations.load(Relaxed) >= 1);
}

/// A transform that changes one field sends the row back; the fields it never read are copied
/// from the input batch as they are, and the host writes the row over its input row. Every
/// value type must survive both.
#[test]
fn fields_a_transform_does_not_touch_keep_every_value_type() {
    let c = chain(&[config(guests::ENRICH, &[("rename", "flag:ok")])]);
    let mut values = every_type();
    values.push(("empty", Value::String(String::new())));
    let out = c
        .process_blocking(vec![(meta(0), row(&values)), (meta(1), row(&values))])
        .unwrap();
    let mut want = values.clone();
    want[1].0 = "ok";
    for o in &out {
        assert_eq!(emitted(o), [row(&want)]);
    }
}

/// A batch's records go to the workers by partition, interleaved as they are, and come back in
/// batch order.
#[test]
fn passthrough_splits_batches_across_workers_by_partition_in_order() {
    let c = chain(&[config(guests::PASSTHROUGH, &[])]);
    let rows = numbered(1000);
    let out = c.process_blocking(across(rows.clone(), 3)).unwrap();
    assert_eq!(out.len(), 1000);
    for (o, r) in out.iter().zip(&rows) {
        assert_eq!(emitted(o), std::slice::from_ref(r));
    }
    assert_eq!(
        c.stats()[0].1.invocations.load(Relaxed),
        2,
        "two workers, one chunk each"
    );
    // One partition, however big the batch, is one worker's.
    c.process_blocking(with_meta(rows.clone())).unwrap();
    assert_eq!(c.stats()[0].1.invocations.load(Relaxed), 3);
    // Partitions are dealt to the workers, not mapped by number: a consumer given only the even
    // partitions (one member of a group of two) still uses both workers.
    let c = chain(&[config(guests::PASSTHROUGH, &[])]);
    let mut even = across(rows, 3);
    even.iter_mut().for_each(|(m, _)| m.partition *= 2);
    assert_eq!(c.process_blocking(even).unwrap().len(), 1000);
    assert_eq!(c.stats()[0].1.invocations.load(Relaxed), 2);
}

/// Every record of a partition meets the same instance, so what a guest keeps is per partition
/// whichever worker is free: the probe guest numbers the rows each instance has seen, and the
/// rows of the partitions one worker serves are numbered 1, 2, 3... with no gap and no repeat.
/// (Partitions 0 to 4 first appear in order, so they are dealt to workers 0, 1, 0, 1, 0.)
#[tokio::test]
async fn each_partition_meets_one_instance() {
    let c = chain(&[config(guests::PROBE, &[])]);
    let mut seen: BTreeMap<i32, Vec<i64>> = BTreeMap::new();
    for size in [1, 7, 300, 1000, 2, 600] {
        let batch = across(vec![row(&[("seen", Value::Null)]); size], 5);
        let partitions: Vec<i32> = batch.iter().map(|(m, _)| m.partition).collect();
        let out = c.process(batch).await.unwrap();
        for (p, o) in partitions.iter().zip(&out) {
            let n = match emitted(o) {
                [r] => match r.get("seen") {
                    Some(Value::Int(n)) => *n,
                    other => panic!("{other:?}"),
                },
                rows => panic!("{rows:?}"),
            };
            seen.entry(p % 2).or_default().push(n);
        }
    }
    assert_eq!(seen.len(), 2, "both workers served");
    for (worker, numbers) in seen {
        let wrong = numbers.iter().zip(1..).position(|(&n, want)| n != want);
        assert_eq!(
            wrong.map(|i| &numbers[i.saturating_sub(2)..(i + 3).min(numbers.len())]),
            None,
            "worker {worker}: the rows around the first one numbered out of turn"
        );
    }
}

#[tokio::test]
async fn process_runs_from_async_code() {
    let c = chain(&[config(
        guests::FILTER,
        &[("field", "value"), ("op", "gt"), ("value", "50")],
    )]);
    let out = c.process(with_meta(numbered(8))).await.unwrap();
    let kept: Vec<i64> = out
        .iter()
        .flat_map(|o| {
            emitted(o).iter().map(|r| match r.get("id") {
                Some(Value::Int(i)) => *i,
                v => panic!("id {v:?}"),
            })
        })
        .collect();
    assert_eq!(kept, [6, 7]);
}

#[test]
fn filter_keeps_rows_matching_the_comparison() {
    let c = chain(&[config(
        guests::FILTER,
        &[("field", "value"), ("op", "gt"), ("value", "50")],
    )]);
    let rows = numbered(10);
    let out = c.process_blocking(with_meta(rows.clone())).unwrap();
    for (i, o) in out.iter().enumerate() {
        let want: &[Row] = if i > 5 {
            std::slice::from_ref(&rows[i])
        } else {
            &[]
        };
        assert_eq!(emitted(o), want, "row {i}");
    }
    assert_eq!(c.stats()[0].1.rows_dropped.load(Relaxed), 6);

    let c = chain(&[config(
        guests::FILTER,
        &[("field", "name"), ("op", "contains"), ("value", "3")],
    )]);
    let out = c.process_blocking(with_meta(numbered(40))).unwrap();
    let kept: Vec<usize> = (0..40).filter(|&i| !emitted(&out[i]).is_empty()).collect();
    assert_eq!(kept, [3, 13, 23, 30, 31, 32, 33, 34, 35, 36, 37, 38, 39]);
}

/// A string holding a number compares as a number with a numeric `value` (a CSV column with one
/// cell that is not a number is typed string); under an ordering, one holding none fails its
/// record instead of comparing as text ("abc" > "5").
#[test]
fn filter_compares_numbers_held_in_strings_as_numbers() {
    let c = chain(&[config(
        guests::FILTER,
        &[("field", "price"), ("op", "gt"), ("value", "5")],
    )]);
    let rows: Vec<Row> = ["10", "4.5", " 100 ", "abc", "9"]
        .iter()
        .map(|p| row(&[("price", Value::String((*p).into()))]))
        .collect();
    let out = c.process_blocking(with_meta(rows.clone())).unwrap();
    let kept: Vec<usize> = [0, 1, 2, 4]
        .into_iter()
        .filter(|&i| !emitted(&out[i]).is_empty())
        .collect();
    assert_eq!(kept, [0, 2, 4]);
    let q = quarantined(&out[3]);
    assert_eq!(
        (q.kind, q.reason.as_str()),
        (
            FailureKind::Guest,
            "invalid value in field `price`: is \"abc\", not a number to compare with 5"
        )
    );
    assert_eq!(
        q.error,
        Some(sluice::dead_letter::GuestFault {
            case: "invalid-value",
            field: Some("price".into())
        })
    );
    // A field named by a param that came from a secret is masked in the typed error as in the
    // reason.
    let mut secret = config(
        guests::FILTER,
        &[("field", "hunter2col"), ("op", "gt"), ("value", "5")],
    );
    secret.secrets = vec!["hunter2col".into()];
    let out = chain(&[secret])
        .process_blocking(with_meta(vec![row(&[(
            "hunter2col",
            Value::String("abc".into()),
        )])]))
        .unwrap();
    let q = quarantined(&out[0]);
    assert_eq!(q.error.as_ref().unwrap().field.as_deref(), Some("***"));
    assert!(!q.reason.contains("hunter2"), "{}", q.reason);

    // Equality: a string that holds no number is simply not equal.
    let c = chain(&[config(
        guests::FILTER,
        &[("field", "price"), ("op", "ne"), ("value", "10")],
    )]);
    let out = c.process_blocking(with_meta(rows)).unwrap();
    let kept: Vec<usize> = (0..5).filter(|&i| !emitted(&out[i]).is_empty()).collect();
    assert_eq!(kept, [1, 2, 3, 4]);
}

/// Ints compare exactly, past 2^53 where a float cannot hold every one (ids); `contains` looks in
/// the text of any value; `NaN` and `inf` are text, not numbers.
#[test]
fn filter_compares_large_ints_exactly_and_finds_text_in_any_value() {
    let kept = |field_values: Vec<Value>, op: &str, value: &str| -> Vec<usize> {
        let c = chain(&[config(
            guests::FILTER,
            &[("field", "v"), ("op", op), ("value", value)],
        )]);
        let rows = field_values.into_iter().map(|v| row(&[("v", v)])).collect();
        let out = c.process_blocking(with_meta(rows)).unwrap();
        (0..out.len())
            .filter(|&i| matches!(&out[i], RecordOutcome::Emitted(r) if !r.is_empty()))
            .collect()
    };
    let ids = || {
        vec![
            Value::Int(9_007_199_254_740_993),
            Value::Int(1_234_567_890_123_456_789),
            Value::String("9007199254740993".into()),
            Value::Int(i64::MAX),
        ]
    };
    assert_eq!(kept(ids(), "eq", "9007199254740992"), Vec::<usize>::new());
    assert_eq!(kept(ids(), "eq", "9007199254740993"), [0, 2]);
    assert_eq!(kept(ids(), "lt", "1234567890123456800"), [0, 1, 2]);
    // Against a float: no rounding of the int either.
    assert_eq!(kept(ids(), "gt", "9007199254740992.5"), [0, 1, 2, 3]);
    assert_eq!(kept(ids(), "ge", "9.3e18"), Vec::<usize>::new());
    // A decimal value is not rounded to a float either (which would make both of these
    // 9007199254740992).
    assert_eq!(kept(ids(), "eq", "9007199254740993.0"), [0, 2]);
    assert_eq!(
        kept(ids(), "le", " 9007199254740992.5 "),
        Vec::<usize>::new()
    );
    assert_eq!(kept(ids(), "gt", "+9007199254740992.5"), [0, 1, 2, 3]);
    let negative = || vec![Value::Int(-3), Value::Int(-2), Value::Int(i64::MIN)];
    assert_eq!(kept(negative(), "lt", "-2.5"), [0, 2]);
    assert_eq!(kept(negative(), "eq", "-9223372036854775808.000"), [2]);
    assert_eq!(kept(negative(), "gt", "-.5"), Vec::<usize>::new());
    // A value past the int range on either side, exactly too.
    assert_eq!(
        kept(negative(), "eq", "-9223372036854775809"),
        Vec::<usize>::new()
    );
    assert_eq!(kept(negative(), "gt", "-9223372036854775808.5"), [0, 1, 2]);
    assert_eq!(kept(ids(), "lt", "9223372036854775808"), [0, 1, 2, 3]);
    // Integers too big for an int arrive as strings: compared digit by digit, not as floats
    // (as floats, all three are 18446744073709551616).
    let huge = || {
        vec![
            Value::String("18446744073709551614".into()),
            Value::String("18446744073709551615".into()),
            Value::String(" 18446744073709551616.000 ".into()),
        ]
    };
    assert_eq!(kept(huge(), "eq", "18446744073709551615"), [1]);
    assert_eq!(kept(huge(), "gt", "18446744073709551614.5"), [1, 2]);
    assert_eq!(kept(huge(), "le", "18446744073709551616"), [0, 1, 2]);
    // A bool value as sluice reads a CSV cell as one.
    let bools = || vec![Value::Bool(true), Value::Bool(false)];
    assert_eq!(kept(bools(), "eq", "TRUE"), [0]);
    assert_eq!(kept(bools(), "ne", " True "), [1]);
    // A float field against an integer value: no rounding of the value.
    let floats = || vec![Value::Float(9_007_199_254_740_992.0), Value::Float(2.5)];
    assert_eq!(
        kept(floats(), "eq", "9007199254740993"),
        Vec::<usize>::new()
    );
    assert_eq!(kept(floats(), "lt", "9007199254740993"), [0, 1]);
    let any = || {
        vec![
            Value::Int(210),
            Value::Float(10.5),
            Value::Bool(true),
            Value::Timestamp(1_793_521_800_000_000), // 2026-11-01T08:30:00
            Value::String("x10".into()),
            Value::Null,
        ]
    };
    assert_eq!(kept(any(), "contains", "10"), [0, 1, 4]);
    assert_eq!(kept(any(), "contains", "2026-11"), [3]);
    assert_eq!(kept(any(), "contains", "ru"), [2]);
    // `NaN` is no number, so a numeric comparison with it fails the record.
    let c = chain(&[config(
        guests::FILTER,
        &[("field", "v"), ("op", "gt"), ("value", "1")],
    )]);
    let out = c
        .process_blocking(with_meta(vec![row(&[("v", Value::String("NaN".into()))])]))
        .unwrap();
    assert_eq!(quarantined(&out[0]).kind, FailureKind::Guest);
}

#[test]
fn filter_fails_a_row_without_the_field_as_a_guest_error() {
    let c = chain(&[config(
        guests::FILTER,
        &[("field", "value"), ("op", "ge"), ("value", "0")],
    )]);
    let stray = row(&[("id", Value::Int(5))]);
    let mut input = with_meta(numbered(3));
    input.insert(1, (meta(9), stray.clone()));
    let out = c.process_blocking(input).unwrap();
    let q = quarantined(&out[1]);
    assert_eq!(
        (q.kind, q.reason.as_str(), &q.row),
        (FailureKind::Guest, "missing field `value`", &stray)
    );
    assert_eq!(q.transform, "filter");
    let letter = q.dead_letter(meta(9), b"raw".to_vec());
    assert_eq!(
        (letter.stage.as_str(), letter.kind.as_str()),
        ("transform:filter", "guest_error")
    );
    for i in [0, 2, 3] {
        assert_eq!(emitted(&out[i]).len(), 1);
    }
}

#[test]
fn enrich_renames_casts_uppercases_and_computes() {
    let c = chain(&[config(
        guests::ENRICH,
        &[
            ("rename", "name:customer"),
            ("cast", "id:string"),
            ("uppercase", "customer"),
            ("compute", "double=value*2"),
        ],
    )]);
    let out = c.process_blocking(with_meta(numbered(2))).unwrap();
    assert_eq!(
        emitted(&out[1]),
        [row(&[
            ("id", Value::String("1".into())),
            ("customer", Value::String("N1".into())),
            ("value", Value::Float(10.0)),
            ("double", Value::Float(20.0)),
        ])]
    );
    let bad = c
        .process_blocking(vec![(meta(0), row(&[("id", Value::Int(1))]))])
        .unwrap();
    assert_eq!(quarantined(&bad[0]).reason, "missing field `name`");
    assert_eq!(
        quarantined(&bad[0]).error,
        Some(sluice::dead_letter::GuestFault {
            case: "missing-field",
            field: Some("name".into())
        })
    );
    // Renaming onto an existing field fails the row rather than giving it two `customer`s.
    let taken = c
        .process_blocking(vec![(
            meta(0),
            row(&[
                ("name", Value::String("n".into())),
                ("customer", Value::String("c".into())),
            ]),
        )])
        .unwrap();
    let q = quarantined(&taken[0]);
    assert_eq!(q.kind, FailureKind::Guest);
    assert_eq!(
        q.reason,
        "cannot rename `name` to `customer`: the row already has a field `customer`"
    );
    // A row that lacks the field to rename lacks a field, whatever else it has.
    let lacking = c
        .process_blocking(vec![(
            meta(0),
            row(&[("customer", Value::String("c".into()))]),
        )])
        .unwrap();
    assert_eq!(quarantined(&lacking[0]).reason, "missing field `name`");
}

/// Casts do not saturate or truncate silently: a float becomes the nearest int (half away from
/// zero, as Snowflake's `CAST`), one past the int range fails; timestamps and large floats cast
/// to text as they print; `compute` reads a number with an exponent as one operand.
#[test]
fn enrich_casts_exactly_and_computes_with_exponents() {
    let ts = 1_704_164_645_500_000; // 2024-01-02T03:04:05.5
    let input = row(&[
        ("a", Value::Float(2.5)),
        ("b", Value::Float(-2.5)),
        ("c", Value::Float(2.7)),
        ("t", Value::Bool(true)),
        ("at", Value::Timestamp(ts)),
        ("big", Value::Float(1e308)),
    ]);
    let c = chain(&[config(
        guests::ENRICH,
        &[
            ("cast", "a:int,b:int,c:int,t:float,at:string,big:string"),
            ("compute", "z=2e-1*c"),
        ],
    )]);
    let out = c.process_blocking(vec![(meta(0), input.clone())]).unwrap();
    assert_eq!(
        emitted(&out[0]),
        [row(&[
            ("a", Value::Int(3)),
            ("b", Value::Int(-3)),
            ("c", Value::Int(3)),
            ("t", Value::Float(1.0)),
            ("at", Value::String("2024-01-02T03:04:05.500000".into())),
            ("big", Value::String("1e308".into())),
            ("z", Value::Float(0.6000000000000001)),
        ])]
    );
    let c = chain(&[config(guests::ENRICH, &[("cast", "big:int")])]);
    let out = c.process_blocking(vec![(meta(0), input)]).unwrap();
    let q = quarantined(&out[0]);
    assert_eq!(q.kind, FailureKind::Guest);
    assert!(
        q.reason
            .contains("invalid value in field `big`: cannot cast float \"1e308\""),
        "{}",
        q.reason
    );
    // Strings written in decimal become ints digit by digit, rounded half away from zero (as a
    // float, 9007199254740993.0 would lose its last digit); other numbers as the float they hold.
    let cast = |value: &str, ty: &str| -> Result<Value, String> {
        let c = chain(&[config(guests::ENRICH, &[("cast", &format!("v:{ty}"))])]);
        let input = row(&[("v", Value::String(value.into()))]);
        let out = c.process_blocking(vec![(meta(0), input)]).unwrap();
        match &out[0] {
            RecordOutcome::Emitted(rows) => Ok(rows[0].get("v").unwrap().clone()),
            other => Err(quarantined(other).reason.clone()),
        }
    };
    assert_eq!(
        cast("9007199254740993.0", "int"),
        Ok(Value::Int(9_007_199_254_740_993))
    );
    assert_eq!(
        cast(" 9223372036854775807.4 ", "int"),
        Ok(Value::Int(i64::MAX))
    );
    assert_eq!(cast("-2.5", "int"), Ok(Value::Int(-3)));
    assert_eq!(cast("1e3", "int"), Ok(Value::Int(1000)));
    assert!(cast("9223372036854775807.5", "int").is_err());
    // A float cast refuses what is text in a CSV cell, and what no float holds.
    assert_eq!(cast("2.5e-1", "float"), Ok(Value::Float(0.25)));
    for text in ["NaN", "inf", "1e400"] {
        let reason = cast(text, "float").unwrap_err();
        assert!(reason.contains("cannot cast string"), "{text}: {reason}");
    }
}

/// `compute` takes one operator: an expression it would misread (`a+b+c` as `a` plus a field
/// `b+c`) is refused at init, not by failing every record. A division by zero or a result past
/// the float range fails its record; a string holding a number counts as one; `uppercase` covers
/// all of Unicode; a string holding a float casts to int as the float does.
#[test]
fn enrich_refuses_misread_expressions_and_fails_impossible_results() {
    for spec in [
        "r=a+b+c",
        "r=a*b,q=a+b",
        "r==a*b",
        "r=a*b=c",
        "r=-a*2",
        "r=a**2",
    ] {
        let c = TransformChain::load(&[config(guests::ENRICH, &[("compute", spec)])], &opts());
        let Err(e) = c else {
            panic!("{spec} was taken")
        };
        assert!(
            e.to_string()
                .contains("transform enrich rejected param `compute`"),
            "{spec}: {e}"
        );
    }
    let c = chain(&[config(
        guests::ENRICH,
        &[("compute", "r=a/b"), ("uppercase", "s"), ("cast", "f:int")],
    )]);
    let input = |a: Value, b: Value| {
        row(&[
            ("a", a),
            ("b", b),
            ("s", Value::String("straße".into())),
            ("f", Value::String("4.5".into())),
        ])
    };
    let out = c
        .process_blocking(with_meta(vec![
            input(Value::Int(4), Value::Int(0)),
            input(Value::Float(1e300), Value::Float(1e-300)),
            input(Value::String(" 9 ".into()), Value::Int(2)),
            input(Value::Float(f64::INFINITY), Value::Int(2)),
        ]))
        .unwrap();
    let reason = |i: usize| quarantined(&out[i]).reason.clone();
    assert_eq!(reason(0), "invalid value in field `r`: division by zero");
    assert_eq!(
        reason(1),
        "invalid value in field `r`: the result is past the float range"
    );
    assert_eq!(
        emitted(&out[2]),
        [row(&[
            ("a", Value::String(" 9 ".into())),
            ("b", Value::Int(2)),
            ("s", Value::String("STRASSE".into())),
            ("f", Value::Int(5)),
            ("r", Value::Float(4.5)),
        ])]
    );
    // An infinite operand gives what it gives.
    assert_eq!(
        emitted(&out[3])[0].get("r"),
        Some(&Value::Float(f64::INFINITY))
    );
}

/// A timestamp field compares with a timestamp `value` (any form the CSV source reads), or else
/// with a number of microseconds.
#[test]
fn filter_compares_timestamps_with_timestamp_text() {
    let at = |us: i64| row(&[("at", Value::Timestamp(us))]);
    let day = 86_400_000_000;
    let rows = [day - 1, day, day + 1].map(at);
    let kept = |value: &str, op: &str| -> Vec<Row> {
        let c = chain(&[config(
            guests::FILTER,
            &[("field", "at"), ("op", op), ("value", value)],
        )]);
        let input = rows
            .iter()
            .cloned()
            .enumerate()
            .map(|(i, r)| (meta(i as i64), r));
        let out = c.process_blocking(input.collect()).unwrap();
        out.iter().flat_map(|o| emitted(o).to_vec()).collect()
    };
    assert_eq!(kept("1970-01-02", "ge"), rows[1..]);
    assert_eq!(kept("1970-01-02T00:00:00Z", "lt"), rows[..1]);
    assert_eq!(kept("1970-01-02 01:00:00+01:00", "eq"), rows[1..2]);
    assert_eq!(kept(&day.to_string(), "gt"), rows[2..]);
    let c = chain(&[config(
        guests::FILTER,
        &[("field", "at"), ("op", "gt"), ("value", "tomorrow")],
    )]);
    let out = c.process_blocking(vec![(meta(0), at(day))]).unwrap();
    let q = quarantined(&out[0]);
    assert!(q.reason.contains("is neither a timestamp"), "{}", q.reason);
    // The setting is wrong, not the row: the error names the param.
    let fault = q.error.as_ref().unwrap();
    assert_eq!(
        (fault.case, fault.field.as_deref()),
        ("invalid-param", Some("value"))
    );
}

#[test]
fn explode_emits_one_row_per_piece() {
    let c = chain(&[config(
        guests::EXPLODE,
        &[("field", "tags"), ("sep", ";"), ("into", "tag")],
    )]);
    let input = vec![
        (
            meta(0),
            row(&[
                ("id", Value::Int(1)),
                ("tags", Value::String("a; b;;c ".into())),
            ]),
        ),
        (
            meta(1),
            row(&[("id", Value::Int(2)), ("tags", Value::String("".into()))]),
        ),
        (
            meta(2),
            row(&[("id", Value::Int(3)), ("tags", Value::String("z".into()))]),
        ),
    ];
    let out = c.process_blocking(input).unwrap();
    let tags = |o: &RecordOutcome| -> Vec<Row> { emitted(o).to_vec() };
    assert_eq!(
        tags(&out[0]),
        ["a", "b", "c"].map(|t| row(&[("id", Value::Int(1)), ("tag", Value::String(t.into()))]))
    );
    assert_eq!(tags(&out[1]), []);
    assert_eq!(
        tags(&out[2]),
        [row(&[
            ("id", Value::Int(3)),
            ("tag", Value::String("z".into()))
        ])]
    );
    assert_eq!(c.stats()[0].1.rows_out.load(Relaxed), 4);
}

#[test]
fn mask_replaces_fields_by_a_salted_sha256() {
    let c = chain(&[config(
        guests::MASK,
        &[("field", "name, id"), ("salt", "pepper")],
    )]);
    let out = c
        .process_blocking(vec![(
            meta(0),
            row(&[
                ("id", Value::Int(7)),
                ("name", Value::String("ann".into())),
                ("gone", Value::Null),
            ]),
        )])
        .unwrap();
    let hash = |s: &str| hex::encode(Sha256::digest(format!("pepper{s}")));
    assert_eq!(
        emitted(&out[0]),
        [row(&[
            ("id", Value::String(hash("7"))),
            ("name", Value::String(hash("ann"))),
            ("gone", Value::Null),
        ])]
    );
    // A name twice (a JSON message may have that): both are masked, or the second would go on
    // in clear.
    let twice = row(&[
        ("name", Value::String("alice".into())),
        ("id", Value::Int(7)),
        ("name", Value::String("bob".into())),
    ]);
    let out = c.process_blocking(vec![(meta(0), twice)]).unwrap();
    assert_eq!(
        emitted(&out[0]),
        [row(&[
            ("name", Value::String(hash("alice"))),
            ("id", Value::String(hash("7"))),
            ("name", Value::String(hash("bob"))),
        ])]
    );
    let repeated = TransformChain::load(
        &[config(
            guests::MASK,
            &[("field", "name,name"), ("salt", "pepper")],
        )],
        &opts(),
    );
    let Err(e) = repeated else {
        panic!("a field named twice was taken")
    };
    assert!(e.to_string().contains("names `name` twice"), "{e}");
}

#[test]
fn chain_passes_rows_from_filter_to_enrich() {
    let c = chain(&[
        config(
            guests::FILTER,
            &[("field", "value"), ("op", "ge"), ("value", "80")],
        ),
        config(guests::EXPLODE, &[("field", "name"), ("sep", "9")]),
        config(guests::ENRICH, &[("uppercase", "name")]),
    ]);
    let out = c.process_blocking(with_meta(numbered(10))).unwrap();
    assert!(out[..8].iter().all(|o| emitted(o).is_empty()));
    assert_eq!(
        emitted(&out[8]),
        [row(&[
            ("id", Value::Int(8)),
            ("name", Value::String("N8".into())),
            ("value", Value::Float(80.0))
        ])]
    );
    // "n9" split on "9" leaves just "n".
    assert_eq!(
        emitted(&out[9]),
        [row(&[
            ("id", Value::Int(9)),
            ("name", Value::String("N".into())),
            ("value", Value::Float(90.0))
        ])]
    );
    let stats = c.stats();
    assert_eq!(stats[0].1.rows_in.load(Relaxed), 10);
    assert_eq!(stats[1].1.rows_in.load(Relaxed), 2);
    assert_eq!(stats[2].1.rows_out.load(Relaxed), 2);
}

/// A record flat-mapped into several rows fails as a whole when one of its rows fails further
/// down, and the counters agree with what went on: each transform's rows out are the next one's
/// rows in, and the last one's are the rows that came out (the run's reconciliation checks both);
/// the good rows thrown away with the failed record are counted as discarded.
#[test]
fn a_flat_mapped_record_failing_downstream_leaves_consistent_counts() {
    let mut cast = config(guests::ENRICH, &[("cast", "tag:int")]);
    cast.on_error = OnError::DeadLetter.into();
    let c = chain(&[
        config(guests::EXPLODE, &[("field", "tag"), ("sep", ",")]),
        cast,
        config(guests::PASSTHROUGH, &[]),
    ]);
    let tags = ["1,2,3", "4,x,6", "7"];
    let rows = tags
        .iter()
        .map(|t| row(&[("tag", Value::String(t.to_string()))]))
        .collect();
    let out = c.process_blocking(with_meta(rows)).unwrap();
    let ints = |o: &RecordOutcome| -> Vec<Value> {
        emitted(o)
            .iter()
            .map(|r| r.get("tag").unwrap().clone())
            .collect()
    };
    assert_eq!(ints(&out[0]), [1, 2, 3].map(Value::Int));
    assert_eq!(
        quarantined(&out[1]).row.get("tag"),
        Some(&Value::String("x".into()))
    );
    assert_eq!(ints(&out[2]), [Value::Int(7)]);
    let stats: Vec<_> = c.stats().into_iter().map(|(_, s)| s).collect();
    let load = |c: &std::sync::atomic::AtomicU64| c.load(Relaxed);
    assert_eq!(load(&stats[0].rows_out), 7);
    assert_eq!(load(&stats[1].rows_in), 7);
    assert_eq!(load(&stats[1].rows_failed), 1);
    assert_eq!(
        load(&stats[1].rows_out),
        4,
        "the failed record's two good rows are gone"
    );
    // ... and counted: 7 in = 4 out + 1 failed + 2 discarded with their record.
    assert_eq!(load(&stats[1].rows_discarded), 2);
    assert_eq!(load(&stats[0].rows_discarded), 0);
    assert_eq!(load(&stats[2].rows_in), 4);
    assert_eq!(load(&stats[2].rows_out), 4);
}

/// The benchmark's SDK-less reference guest must do exactly what the SDK chain it stands in for
/// does, or its figures mean nothing.
#[test]
fn lanes_guest_matches_the_filter_enrich_chain() {
    let dead_letter = |path: &str, with: &[(&str, &str)]| {
        let mut c = config(path, with);
        c.on_error = OnError::DeadLetter.into();
        c
    };
    let sdk = chain(&[
        dead_letter(
            guests::FILTER,
            &[("field", "value"), ("op", "gt"), ("value", "50")],
        ),
        dead_letter(
            guests::ENRICH,
            &[
                ("rename", "name:customer"),
                ("uppercase", "customer"),
                ("compute", "double=value*2"),
            ],
        ),
    ]);
    let lanes = chain(&[
        dead_letter(guests::LANES, &[("step", "filter")]),
        dead_letter(guests::LANES, &[("step", "enrich")]),
    ]);
    let s = |t: &str| Value::String(t.into());
    let input = || {
        with_meta(vec![
            row(&[
                ("id", Value::Int(1)),
                ("name", s("ann")),
                ("value", Value::Float(60.5)),
            ]),
            row(&[
                ("id", Value::Int(2)),
                ("name", s("bob")),
                ("value", Value::Float(10.0)),
            ]),
            row(&[
                ("id", Value::Int(3)),
                ("name", s("cé ß")),
                ("value", Value::Int(70)),
            ]),
            row(&[
                ("id", Value::Int(4)),
                ("name", Value::Null),
                ("value", Value::Timestamp(1_000)),
            ]),
            row(&[
                ("id", Value::Int(5)),
                ("name", s("x")),
                ("value", Value::Null),
            ]),
            row(&[("id", Value::Int(6)), ("value", Value::Float(99.0))]),
            row(&[("id", Value::Int(7)), ("name", s("y"))]),
            row(&[
                ("value", Value::Float(51.0)),
                ("double", Value::Int(5)),
                ("name", s("zed")),
                ("doc", Value::Json("[1]".into())),
            ]),
            row(&[
                ("id", Value::Int(9)),
                ("name", Value::Bool(true)),
                ("value", Value::Float(80.0)),
            ]),
        ])
    };
    let (want, got) = (
        sdk.process_blocking(input()).unwrap(),
        lanes.process_blocking(input()).unwrap(),
    );
    assert_eq!(want.len(), got.len());
    for (i, (w, g)) in want.iter().zip(&got).enumerate() {
        match (w, g) {
            (RecordOutcome::Emitted(w), RecordOutcome::Emitted(g)) => {
                assert_eq!(w, g, "record {i}")
            }
            (RecordOutcome::Quarantined(w), RecordOutcome::Quarantined(g)) => {
                assert_eq!((w.kind, &w.row), (g.kind, &g.row), "record {i}")
            }
            _ => panic!("record {i}: {w:?} vs {g:?}"),
        }
    }
    // Not vacuous: rows were kept, filtered, rewritten in place and failed.
    let kept: Vec<usize> = (0..got.len())
        .filter(|&i| matches!(&got[i], RecordOutcome::Emitted(r) if r.len() == 1))
        .collect();
    assert_eq!(kept, [0, 2, 3, 7]);
    assert_eq!(
        emitted(&got[2]),
        [row(&[
            ("id", Value::Int(3)),
            // All of Unicode, where uppercase may be longer.
            ("customer", s("CÉ SS")),
            ("value", Value::Int(70)),
            ("double", Value::Int(140)),
        ])]
    );
    assert_eq!(
        emitted(&got[7])[0].get("double"),
        Some(&Value::Float(102.0))
    );
    let failed: Vec<usize> = (0..got.len())
        .filter(|&i| matches!(&got[i], RecordOutcome::Quarantined(_)))
        .collect();
    assert_eq!(failed, [5, 6, 8]);
}

/// The benchmark's floor (two `lanes` transforms with `step=keep`) must hand back every record
/// exactly as it came, every value type and shape included: the bench compares its speed with
/// real work, so it must not be skipping any.
#[test]
fn lanes_keep_step_returns_every_record_untouched() {
    let keep = chain(&[
        config(guests::LANES, &[("step", "keep")]),
        config(guests::LANES, &[("step", "keep")]),
    ]);
    let rows = vec![
        row(&every_type()),
        row(&[("only", Value::Int(1))]),
        row(&every_type()),
    ];
    let out = keep.process_blocking(with_meta(rows.clone())).unwrap();
    let expected: Vec<_> = rows
        .into_iter()
        .map(|r| RecordOutcome::Emitted(vec![r]))
        .collect();
    assert_eq!(out, expected);
    for (_, stats) in keep.stats() {
        assert_eq!(stats.rows_in.load(Relaxed), 3);
        assert_eq!(stats.rows_out.load(Relaxed), 3);
    }
}

#[test]
fn guests_see_record_metadata_through_the_chain() {
    let c = chain(&[
        config(guests::EXPLODE, &[("field", "tags")]),
        config(guests::META, &[("tag", "t")]),
    ]);
    let m = RecordMeta {
        topic: "orders".into(),
        partition: 2,
        offset: 99,
        key: Some(b"k1".to_vec()),
        timestamp_ms: Some(1234),
        headers: vec![("h1".into(), b"v".to_vec())],
    };
    let input = vec![
        (meta(5), row(&[("tags", Value::String("x".into()))])),
        (m, row(&[("tags", Value::String("a,b".into()))])),
    ];
    let out = c.process_blocking(input).unwrap();
    let expect = |tag: &str, partition: i64, offset: i64, key: Value, ts: Value, header: Value| {
        row(&[
            ("tags", Value::String(tag.into())),
            ("topic", Value::String("orders".into())),
            ("partition", Value::Int(partition)),
            ("offset", Value::Int(offset)),
            ("key", key),
            ("timestamp_ms", ts),
            ("header", header),
            ("tag", Value::String("t".into())),
        ])
    };
    assert_eq!(
        emitted(&out[0]),
        [expect("x", 1, 5, Value::Null, Value::Null, Value::Null)]
    );
    let full = |t| {
        expect(
            t,
            2,
            99,
            Value::String("k1".into()),
            Value::Int(1234),
            Value::String("h1".into()),
        )
    };
    assert_eq!(emitted(&out[1]), [full("a"), full("b")]);
}

/// Runs a poison guest over ids 0..30 (13 is the poison) and checks that only record 13 failed,
/// with `kind`, and that the host then processes a clean batch normally.
fn assert_poison_isolated(
    path: &str,
    kind: FailureKind,
    tweak: impl FnOnce(&mut TransformConfig),
) -> TransformChain {
    let mut cfg = config(path, &[]);
    tweak(&mut cfg);
    let memory_mb = cfg.memory_mb;
    let c = one_worker(&[cfg]);
    let rows = numbered(30);
    let out = c.process_blocking(with_meta(rows.clone())).unwrap();
    for (i, o) in out.iter().enumerate() {
        if i == 13 {
            let q = quarantined(o);
            assert_eq!(q.kind, kind, "{}", q.reason);
            // The host's failures carry no guest error.
            assert_eq!(q.error, None, "{}", q.reason);
            if kind == FailureKind::Memory {
                assert!(
                    q.reason.contains(&format!("{memory_mb} MiB")),
                    "{}",
                    q.reason
                );
            }
            if path == guests::POISON_MISCOUNT {
                // What the row did alone, and what the batch did: the batch's count is the one an
                // author recognises.
                assert_eq!(
                    q.reason,
                    "returned 2 outcomes for 1 input row (in the batch of 30 rows it came in: \
                     returned 31 outcomes for 30 input rows)"
                );
            }
            if path == guests::POISON_TRAP {
                // The panic message, which the guest wrote to its (unshown) stderr, says why.
                assert!(q.reason.ends_with(": poison row)"), "{}", q.reason);
            }
            assert_eq!(q.row, rows[13]);
        } else {
            assert_eq!(emitted(o), std::slice::from_ref(&rows[i]), "row {i}");
        }
    }
    let stats = &c.stats()[0].1;
    assert_eq!(stats.rows_failed.load(Relaxed), 1);
    let clean: Vec<Row> = numbered(30)
        .into_iter()
        .filter(|r| r.get("id") != Some(&Value::Int(13)))
        .collect();
    let again = c.process_blocking(with_meta(clean.clone())).unwrap();
    assert_eq!(
        again,
        clean
            .into_iter()
            .map(|r| RecordOutcome::Emitted(vec![r]))
            .collect::<Vec<_>>()
    );
    c
}

#[test]
fn poison_infinite_loop_times_out_and_only_that_record_is_quarantined() {
    let c = assert_poison_isolated(guests::POISON_LOOP, FailureKind::Timeout, |c| {
        c.timeout_ms = 100
    });
    // The row timed out alone after rows 0 to 12 on the same instance, so it ran once more on
    // a fresh one (their state could have set it off) before it was blamed.
    assert_eq!(
        c.stats()[0].1.instance_restarts.load(Relaxed),
        3,
        "batch call + the isolated re-run + the re-run on a fresh instance"
    );
}

/// A transform that times out on many rows of a batch, each run alone, is too slow for its cap:
/// the batch fails as a whole (its records are not dead-lettered one timeout at a time), with a
/// message saying what to change. A few such rows are still isolated one by one.
#[test]
fn many_rows_timing_out_alone_fail_the_batch() {
    let mut cfg = config(guests::POISON_LOOP, &[]);
    cfg.timeout_ms = 20;
    cfg.on_error = OnError::DeadLetter.into();
    let c = chain(&[cfg]);
    let ids = |poison: usize| -> Vec<(RecordMeta, Row)> {
        let rows = (0..40).map(|i| {
            row(&[(
                "id",
                Value::Int(if i < poison { 13 } else { 100 + i as i64 }),
            )])
        });
        with_meta(rows.collect())
    };
    let out = c.process_blocking(ids(3)).unwrap();
    assert!(
        out[..3]
            .iter()
            .all(|o| quarantined(o).kind == FailureKind::Timeout)
    );
    assert!(out[3..].iter().all(|o| emitted(o).len() == 1));
    match c.process_blocking(ids(12)) {
        Err(e @ TransformError::TooSlow { rows: 9, .. }) => {
            assert!(e.to_string().contains("raise its timeout_ms"), "{e}");
            assert!(!e.to_string().contains("did not time out"), "{e}");
            // No dead letter names them: the message does.
            assert!(
                e.to_string().contains(
                    "(records orders/1@0, orders/1@1, orders/1@2, orders/1@3, orders/1@4 and 4 \
                     more)"
                ),
                "{e}"
            );
        }
        other => panic!("expected TooSlow after 9 timeouts, got {other:?}"),
    }
    let stats = &c.stats()[0].1;
    assert_eq!(stats.rows_in.load(Relaxed), 80);
    assert_eq!(stats.rows_unfinished.load(Relaxed), 40);
}

/// Hanging records among good ones are each quarantined, up to the cap in rows: each times out
/// after good rows on the same instance, so it runs once more on a fresh one and costs two
/// limits. Counted in limits, the fifth such record failed the whole batch, whatever `on_error`.
#[test]
fn hanging_records_among_good_ones_count_once_each() {
    let mut cfg = config(guests::POISON_LOOP, &[]);
    cfg.timeout_ms = 20;
    cfg.on_error = OnError::DeadLetter.into();
    let c = one_worker(&[cfg]);
    let hangs = |i: usize| i % 6 == 2;
    let rows =
        (0..48).map(|i| row(&[("id", Value::Int(if hangs(i) { 13 } else { 100 + i as i64 }))]));
    let out = c.process_blocking(with_meta(rows.collect())).unwrap();
    for (i, o) in out.iter().enumerate() {
        match hangs(i) {
            true => assert_eq!(quarantined(o).kind, FailureKind::Timeout, "row {i}"),
            false => assert_eq!(emitted(o).len(), 1, "row {i}"),
        }
    }
    assert_eq!(
        out.iter()
            .filter(|o| matches!(o, RecordOutcome::Quarantined(_)))
            .count(),
        8
    );
}

/// Rows that fail alone only after using most of the time limit (a panic late in a slow call)
/// cost as much as timeouts: once those failures have used nine limits of CPU time, the batch
/// fails as too slow instead of taking a limit per record for the whole batch. A few such rows
/// are still isolated one by one.
#[test]
fn rows_failing_late_alone_fail_the_batch_like_timeouts() {
    let mut cfg = config(guests::POISON_TRAP, &[]);
    cfg.timeout_ms = 50;
    cfg.on_error = OnError::DeadLetter.into();
    let c = chain(&[cfg]);
    let rows_burning = |slow: usize, ms: i64| -> Vec<(RecordMeta, Row)> {
        let rows = (0..200).map(|i| {
            let mut r = row(&[("id", Value::Int(100 + i as i64))]);
            if i < slow {
                r.push("burn_ms", Value::Int(ms));
            }
            r
        });
        with_meta(rows.collect())
    };
    let rows = |slow: usize| rows_burning(slow, 40);
    // Rows that fail at once cost only the instance rebuilt after each, which is the host's:
    // 200 of them are quarantined one by one, the batch is not too slow.
    let out = c.process_blocking(rows_burning(200, 0)).unwrap();
    assert!(out.iter().all(|o| quarantined(o).kind == FailureKind::Trap));
    let out = c.process_blocking(rows(3)).unwrap();
    for o in &out[..3] {
        let q = quarantined(o);
        assert_eq!(q.kind, FailureKind::Trap);
        assert!(q.reason.contains("burned 40 ms"), "{}", q.reason);
    }
    assert!(out[3..].iter().all(|o| emitted(o).len() == 1));
    match c.process_blocking(rows(200)) {
        Err(
            e @ TransformError::TooSlow {
                timeouts: 0, rows, ..
            },
        ) => {
            // 450 ms of CPU in failing calls, each spinning up to 40 ms (less CPU time if it
            // was descheduled; rebuilding the instance is not counted): 11 or 12 rows, and
            // far from all 200 even on a loaded machine.
            assert!((10..200).contains(&rows), "{e}");
            let text = e.to_string();
            assert!(text.contains("failed when run alone"), "{text}");
            assert!(text.contains("raise its timeout_ms"), "{text}");
            // What failed them, when it was not the time limit: here what the guest said.
            assert!(
                text.contains("; the first that did not time out: trap: ")
                    && text.contains("burned 40 ms"),
                "{text}"
            );
        }
        other => panic!("expected TooSlow, got {other:?}"),
    }
}

/// Running a failed batch again a row at a time is bounded in all, not only by its failures:
/// rows that each succeed slowly alone give up after `ISOLATION_LIMITS` (60) time limits of CPU
/// time and `ISOLATION_ROW_MS` (1 ms) a row, instead of holding the worker for a limit per row.
#[test]
fn rows_succeeding_slowly_alone_cannot_hold_a_worker_for_long() {
    let mut cfg = config(guests::POISON_TRAP, &[]);
    cfg.timeout_ms = 50;
    let c = one_worker(&[cfg]);
    // The poison row first, so the batch call traps at once; then 1000 rows of 40 ms each (of
    // wall time, so less CPU time on a busy machine): 40 s of work alone, against 4 s of CPU time
    // (60 limits of 50 ms, and 1 ms for each of 1001 rows), reached on a tenth of a core too.
    let rows = (0..1001).map(|i| match i {
        0 => row(&[("id", Value::Int(13))]),
        _ => row(&[("id", Value::Int(100 + i)), ("spin_ms", Value::Int(40))]),
    });
    match c.process_blocking(with_meta(rows.collect())) {
        Err(
            e @ TransformError::TooSlow {
                total_ms: Some(ms), ..
            },
        ) => {
            assert!((4001..5000).contains(&ms), "{e}");
            let text = e.to_string();
            assert!(
                text.contains("a batch of 1001 rows run again a row at a time"),
                "{text}"
            );
            assert!(
                text.contains("more than 60 times the time limit of 50 ms and 1 ms a row"),
                "{text}"
            );
        }
        other => panic!("expected TooSlow, got {other:?}"),
    }
}

/// What running each row of a big batch alone costs the host (a call of its own for each) is
/// not the rows' doing: under a small time limit one cheap poison row among thousands is still
/// isolated, not taken for a transform too slow for its limit.
#[test]
fn one_poison_row_among_thousands_is_isolated_under_a_small_limit() {
    let mut cfg = config(guests::POISON_TRAP, &[]);
    cfg.timeout_ms = 2;
    let c = one_worker(&[cfg]);
    // 120 ms (60 limits of 2 ms) is less than what a debug host takes to call 2000 rows alone.
    let rows = (0..2000).map(|i| row(&[("id", Value::Int(i))]));
    let out = c.process_blocking(with_meta(rows.collect())).unwrap();
    for (i, o) in out.iter().enumerate() {
        match i {
            13 => assert_eq!(quarantined(o).kind, FailureKind::Trap),
            _ => assert_eq!(emitted(o).len(), 1, "row {i}"),
        }
    }
}

/// A row that traps after others ran on the same instance runs again on a fresh one, to tell
/// its own fault from what they left behind. Building that instance (its `init`) is the host's
/// cost: a slow `init` does not make a few cheap traps look like rows failing late, which would
/// fail the whole batch as too slow.
#[test]
fn a_slow_init_is_not_charged_to_the_rows_that_trap() {
    // Four traps, each followed by a rebuild of 300 ms (of wall time, so less CPU time on a busy
    // machine): 1200 ms against the 900 ms (nine limits of 100 ms) that rows failing alone may
    // use between them. Nine rebuilds in all, 2.7 s, are well within the 6 s (60 limits) that
    // the whole re-run may take.
    let mut cfg = config(guests::POISON_TRAP, &[("init_spin_ms", "300")]);
    cfg.timeout_ms = 100;
    let c = one_worker(&[cfg]);
    let ids = [1, 13, 2, 13, 3, 13, 4, 13, 5, 6];
    let rows = ids.iter().map(|&id| row(&[("id", Value::Int(id))]));
    let out = c.process_blocking(with_meta(rows.collect())).unwrap();
    for (o, id) in out.iter().zip(ids) {
        match id {
            13 => assert_eq!(quarantined(o).kind, FailureKind::Trap),
            _ => assert_eq!(emitted(o).len(), 1, "id {id}"),
        }
    }
}

/// Isolating a batch a row at a time keeps each row's own shape, also when every row has a
/// different one (JSON with varying keys): each comes out with its own fields, in order.
#[test]
fn isolating_rows_of_many_shapes_keeps_each_shape() {
    let c = chain(&[config(guests::POISON_TRAP, &[])]);
    let rows: Vec<Row> = (0..300)
        .map(|i| row(&[("id", Value::Int(i)), (&format!("f{i}"), Value::Int(i * 2))]))
        .collect();
    let out = c.process_blocking(with_meta(rows.clone())).unwrap();
    for (i, o) in out.iter().enumerate() {
        if i == 13 {
            assert_eq!(quarantined(o).kind, FailureKind::Trap);
        } else {
            assert_eq!(emitted(o), std::slice::from_ref(&rows[i]), "row {i}");
        }
    }
}

/// In `transform test`, a chain failure (not a record's) names the batch's records and the flag
/// that sets the limit, after the rows before it have printed and after the counts; a JSON Lines
/// input is known by its extension in any case and may start with a byte-order mark.
#[test]
fn cli_test_names_the_batch_a_chain_failure_stopped_at() {
    let dir = tempfile::tempdir().unwrap();
    let mut text = String::from("\u{feff}{\"id\":1}\n");
    for _ in 0..12 {
        text.push_str("{\"id\":13}\n");
    }
    std::fs::write(dir.path().join("in.JSONL"), text).unwrap();
    let run = |batch: &str| {
        let args = ["transform", "test", "--component", guests::POISON_LOOP];
        let more = [
            "--input",
            "in.JSONL",
            "--timeout-ms",
            "100",
            "--batch-size",
            batch,
        ];
        sluice_tests::cli::sluice(dir.path(), &[&args[..], &more].concat())
    };
    let out = run("1024");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    // The batch's rows are accounted for: neither out, dropped nor failed, but unfinished.
    assert!(
        stderr.contains(
            "transform  poison_loop: 13 in, 0 out, 0 dropped, 0 failed, 13 unfinished \
             (their batch failed as a whole)"
        ),
        "{stderr}"
    );
    assert!(
        stderr.contains(
            "error: running records 1 to 13 (lines 1 to 13); --timeout-ms sets the limit here: \
             transform poison_loop: 9 rows of one batch each exceeded the time limit of 100 ms \
             when run alone (once a row timed out on an instance that had run other rows, and \
             ran again on a fresh one, which used a limit more)"
        ),
        "{stderr}"
    );
    // A bad CSV record that ends the failing batch is still reported, and counted.
    let mut csv = String::from("id\n1\n");
    csv.push_str(&"13\n".repeat(12));
    csv.push_str("1,2\n");
    std::fs::write(dir.path().join("in.csv"), csv).unwrap();
    let args = ["transform", "test", "--component", guests::POISON_LOOP];
    let more = ["--input", "in.csv", "--timeout-ms", "100"];
    let out = sluice_tests::cli::sluice(dir.path(), &[&args[..], &more].concat());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("record 14 (line 15): bad row (ragged_row)"),
        "{stderr}"
    );
    assert!(stderr.contains("source  1 bad record,"), "{stderr}");
    assert!(
        stderr.contains("error: running records 1 to 13 (lines 2 to 14)"),
        "{stderr}"
    );

    // One record a batch: the first row is out before the others time out, one by one.
    let out = run("1");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "{\"id\":1}\n");
    assert!(
        stderr.contains("poison_loop: 13 in, 1 out, 0 dropped, 12 failed (12 timeout)"),
        "{stderr}"
    );
}

/// `--expect -` reads stdin, even beside a file named `-` in the working directory.
#[test]
fn cli_test_expect_dash_is_stdin() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("in.jsonl"), "{\"a\":1}\n").unwrap();
    std::fs::write(dir.path().join("-"), "{\"a\":2}\n").unwrap();
    std::fs::write(dir.path().join("golden.jsonl"), "{\"a\":1}\n").unwrap();
    let out = std::process::Command::new(sluice_tests::cli::sluice_bin())
        .args(["transform", "test", "--component", guests::PASSTHROUGH])
        .args(["--input", "in.jsonl", "--expect", "-"])
        .current_dir(dir.path())
        .stdin(std::fs::File::open(dir.path().join("golden.jsonl")).unwrap())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("ok: 1 row matches -"), "{stderr}");
}

/// An input with no records (a header alone, blank lines) runs nothing: a warning, and a
/// golden file checked against it is a failed test, not one that passes on nothing. A record
/// that only fails still counts as tested.
#[test]
fn cli_test_says_an_input_without_records_checks_nothing() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("header.csv"), "id,value\n").unwrap();
    std::fs::write(dir.path().join("blank.jsonl"), "\n\n").unwrap();
    std::fs::write(dir.path().join("ragged.csv"), "id,value\n1,2,3\n").unwrap();
    std::fs::write(dir.path().join("none.jsonl"), "").unwrap();
    let run = |input: &str, expect: bool| {
        let mut args = vec!["transform", "test", "--component", guests::PASSTHROUGH];
        args.extend(["--input", input]);
        if expect {
            args.extend(["--expect", "none.jsonl"]);
        }
        let out = sluice_tests::cli::sluice(dir.path(), &args);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        (out.status.code(), stderr)
    };
    for input in ["header.csv", "blank.jsonl"] {
        let (code, stderr) = run(input, false);
        assert_eq!(code, Some(0), "{stderr}");
        let wanted =
            format!("warning: {input} has no records to run: nothing ran through the transforms");
        assert!(stderr.contains(&wanted), "{wanted}\n{stderr}");
        let (code, stderr) = run(input, true);
        assert_eq!(code, Some(1), "{stderr}");
        let wanted =
            format!("mismatch: {input} has no records to run, so the test checked nothing");
        assert!(stderr.contains(&wanted), "{wanted}\n{stderr}");
        assert!(!stderr.contains("ok:"), "{stderr}");
    }
    let (code, stderr) = run("ragged.csv", false);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(!stderr.contains("no records"), "{stderr}");
}

/// A CSV value that does not parse as its inferred type is a bad row whose reason names the
/// flag that overrides the type here, not pipeline.json's key.
#[test]
fn cli_test_bad_rows_name_the_schema_flag() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("in.csv"), "n,v\n1,2\n2,x\n").unwrap();
    let args = ["transform", "test", "--component", guests::PASSTHROUGH];
    let more = ["--input", "in.csv", "--infer-rows", "1"];
    let out = sluice_tests::cli::sluice(dir.path(), &[&args[..], &more].concat());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains(
            "record 2 (line 3): bad row (parse): field \"v\": \"x\" is not a valid int (type \
             inferred from the first rows; give --schema COLUMN=TYPE to override)"
        ),
        "{stderr}"
    );
}

/// At the default cap (64 MiB), which the failure names.
#[test]
fn poison_memory_bomb_hits_the_cap_and_only_that_record_is_quarantined() {
    assert_poison_isolated(guests::POISON_MEMBOMB, FailureKind::Memory, |c| {
        assert_eq!(c.memory_mb, 64)
    });
}

#[test]
fn poison_trap_is_isolated() {
    assert_poison_isolated(guests::POISON_TRAP, FailureKind::Trap, |_| {});
}

#[test]
fn poison_wrong_outcome_count_is_a_protocol_failure_of_that_record() {
    let c = assert_poison_isolated(guests::POISON_MISCOUNT, FailureKind::Protocol, |_| {});
    // No trap, but each instance that saw a broken output is thrown away, and the state it held
    // with it: the batch call's; the one the poison row broke alone after others, and the fresh
    // one it broke again on; and the one the rest ran on alone before they ran together again
    // (a fresh instance, as for the batch's first call).
    assert_eq!(c.stats()[0].1.instance_restarts.load(Relaxed), 4);
}

/// A batch whose output breaks the contract is run again a row at a time on a fresh instance: one
/// that keeps state (a dedupe) and has already seen the whole batch would take every row for a
/// repeat and filter it out.
#[test]
fn a_stateful_guest_does_not_see_a_broken_batch_twice() {
    let c = chain(&[config(guests::POISON_MISCOUNT, &[("dedupe", "")])]);
    let rows = numbered(20);
    let out = c.process_blocking(with_meta(rows.clone())).unwrap();
    for (i, o) in out.iter().enumerate() {
        match i {
            13 => assert_eq!(quarantined(o).kind, FailureKind::Protocol),
            _ => assert_eq!(emitted(o), std::slice::from_ref(&rows[i]), "row {i}"),
        }
    }
    assert_eq!(c.stats()[0].1.rows_dropped.load(Relaxed), 0);
}

/// WASI handles live in host memory, outside `memory_mb`: a record whose call leaks more than
/// the per-instance cap is quarantined alone, and the rows around it (which also hold a few
/// handles each) come out right.
#[test]
fn a_guest_leaking_wasi_handles_is_stopped_at_the_cap() {
    let c = chain(&[config(guests::PROBE, &[])]);
    let leaks = [10, 10, 50_000, 10, 10];
    let rows: Vec<Row> = leaks
        .iter()
        .map(|n| row(&[("leak_handles", Value::Int(*n))]))
        .collect();
    let out = c.process_blocking(with_meta(rows.clone())).unwrap();
    let seen = row(&[
        ("env", Value::Int(0)),
        ("fs", Value::Bool(false)),
        ("net", Value::Bool(false)),
    ]);
    for (i, o) in out.iter().enumerate() {
        if i == 2 {
            let q = quarantined(o);
            assert_eq!(q.kind, FailureKind::Trap, "{}", q.reason);
            assert!(
                q.reason.contains("held more than 10000 WASI handles"),
                "{}",
                q.reason
            );
            assert_eq!(q.row, rows[2]);
        } else {
            assert_eq!(emitted(o), std::slice::from_ref(&seen), "row {i}");
        }
    }
}

/// An instance that nothing went wrong in serves the whole run: what a guest keeps between
/// batches lasts (it used to be rebuilt every 200,000 rows, losing it).
#[test]
fn an_instance_keeps_its_state_for_the_whole_run() {
    let c = one_worker(&[config(guests::PROBE, &[])]);
    let batch: Vec<Row> = vec![row(&[("seen", Value::Null)]); 4096];
    let mut last = 0;
    for _ in 0..60 {
        let out = c.process_blocking(with_meta(batch.clone())).unwrap();
        last = match emitted(out.last().unwrap()) {
            [r] => match r.get("seen") {
                Some(Value::Int(n)) => *n,
                other => panic!("{other:?}"),
            },
            rows => panic!("{rows:?}"),
        };
    }
    assert_eq!(last, 60 * 4096);
    assert_eq!(c.stats()[0].1.instance_restarts.load(Relaxed), 0);
}

/// Forgetting state (partitions revoked) rebuilds every instance before its next batch: their
/// records past the warehouse's offsets come again and must not meet an instance that saw them.
/// The probe numbers the rows each instance has seen. The instances are dropped at once, not at
/// the next batch: a worker that gets none would hold their memory until the run ends.
#[tokio::test]
async fn forgetting_state_rebuilds_every_instance() {
    let alive = |c: &TransformChain| c.stats()[0].1.instances.load(Relaxed);
    let numbers = |out: Vec<RecordOutcome>| -> Vec<i64> {
        out.iter()
            .map(|o| match emitted(o) {
                [r] => match r.get("seen") {
                    Some(Value::Int(n)) => *n,
                    other => panic!("{other:?}"),
                },
                rows => panic!("{rows:?}"),
            })
            .collect()
    };
    let batch = || across(vec![row(&[("seen", Value::Null)]); 6], 2);
    let c = chain(&[config(guests::PROBE, &[])]);
    assert_eq!(
        numbers(c.process(batch()).await.unwrap()),
        [1, 1, 2, 2, 3, 3]
    );
    assert_eq!(
        numbers(c.process(batch()).await.unwrap()),
        [4, 4, 5, 5, 6, 6]
    );
    assert_eq!(
        alive(&c),
        2,
        "one instance on each of the two partitions' workers"
    );
    c.forget_state();
    let since = std::time::Instant::now();
    while alive(&c) > 0 && since.elapsed() < std::time::Duration::from_secs(10) {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(alive(&c), 0, "no batch followed, and no instance is left");
    assert_eq!(
        numbers(c.process(batch()).await.unwrap()),
        [1, 1, 2, 2, 3, 3]
    );
    assert_eq!(alive(&c), 2);
    // The caller's own instances too (one worker, `process_blocking`).
    let c = one_worker(&[config(guests::PROBE, &[])]);
    assert_eq!(
        numbers(c.process_blocking(batch()).unwrap()),
        [1, 2, 3, 4, 5, 6]
    );
    c.forget_state();
    assert_eq!(alive(&c), 0);
    assert_eq!(
        numbers(c.process_blocking(batch()).unwrap()),
        [1, 2, 3, 4, 5, 6]
    );
    assert_eq!(alive(&c), 1);
    assert_eq!(
        c.stats()[0].1.instance_restarts.load(Relaxed),
        0,
        "no failure"
    );
}

/// Handles leaked a few at a time by many calls fill an instance's table too; the call that
/// finds it full is run again on a fresh instance, not blamed for the others' leaks.
#[test]
fn handles_leaked_by_earlier_calls_do_not_fail_a_later_record() {
    let c = chain(&[config(guests::PROBE, &[])]);
    for i in 0..6 {
        let rows = vec![row(&[("leak_handles", Value::Int(3_000))])];
        let out = c.process_blocking(with_meta(rows)).unwrap();
        assert!(
            matches!(&out[0], RecordOutcome::Emitted(_)),
            "call {i}: {:?}",
            out[0]
        );
    }
    let stats = &c.stats()[0].1;
    assert_eq!(stats.rows_failed.load(Relaxed), 0);
    assert!(
        stats.instance_restarts.load(Relaxed) >= 1,
        "the table filled"
    );
}

/// Memory grown by earlier calls counts against `memory_mb` too (a wasm memory never shrinks):
/// the call that crosses the cap on an instance that served others is run again on a fresh one,
/// not blamed for what the others left. On a fresh instance the cap still holds.
#[test]
fn memory_left_by_earlier_calls_does_not_fail_a_later_record() {
    let mut cfg = config(guests::PROBE, &[]);
    cfg.memory_mb = 8;
    let c = chain(&[cfg]);
    for i in 0..12 {
        let rows = vec![row(&[("leak_kb", Value::Int(1024))])];
        let out = c.process_blocking(with_meta(rows)).unwrap();
        assert!(
            matches!(&out[0], RecordOutcome::Emitted(_)),
            "call {i}: {:?}",
            out[0]
        );
    }
    let stats = &c.stats()[0].1;
    assert_eq!(stats.rows_failed.load(Relaxed), 0);
    assert!(
        stats.instance_restarts.load(Relaxed) >= 1,
        "the cap was reached"
    );
    let rows = vec![row(&[("leak_kb", Value::Int(16 * 1024))])];
    let out = c.process_blocking(with_meta(rows.clone())).unwrap();
    let q = quarantined(&out[0]);
    assert_eq!(q.kind, FailureKind::Memory, "{}", q.reason);
    assert_eq!(q.row, rows[0]);
}

#[test]
fn poison_huge_output_hits_the_row_limit() {
    assert_poison_isolated(guests::POISON_HUGE, FailureKind::OutputLimit, |_| {});
}

/// A guest whose output points many times at the same memory cannot make the host copy more than
/// a bound tied to `memory_mb` out of one call: the record is quarantined as `memory` and the
/// host goes on (the guest's 4096 names of 1 MiB each would have cost 4 GiB).
#[test]
fn poison_aliased_output_is_bounded_by_the_memory_cap() {
    let c = assert_poison_isolated(guests::POISON_ALIAS, FailureKind::Memory, |_| {});
    let again = c.process_blocking(with_meta(numbered(30))).unwrap();
    let q = quarantined(&again[13]);
    assert!(q.reason.contains("256 MiB"), "{}", q.reason);
    // Each time: the batch call's instance, and the one the row broke alone after others. Not
    // run once more on a fresh instance, as after a memory limit its earlier calls may have
    // caused: it would return as much again, and the host copy it all again.
    assert_eq!(c.stats()[0].1.instance_restarts.load(Relaxed), 4);
}

/// A value costs a guest a byte and the host a whole field: a record answered with 10,000 rows of
/// 3,000 nulls (30 MB of the guest's memory, 1.4 GB of host rows, more than 16 times
/// `memory_mb`) is quarantined as `memory`, and nothing else is.
#[test]
fn an_output_of_many_nulls_is_bounded_by_the_memory_cap_as_host_rows() {
    let c = assert_poison_isolated(guests::POISON_ALIAS, FailureKind::Memory, |cfg| {
        cfg.with = [("wide".to_string(), "10000x3000".to_string())].into();
    });
    let again = c.process_blocking(with_meta(numbered(30))).unwrap();
    let q = quarantined(&again[13]);
    assert!(q.reason.contains("as host rows"), "{}", q.reason);
}

/// An honest flat-map's output costs the host several times what it costs the guest (an int is 9
/// bytes there and a 48-byte field here): 1024 rows exploded into 2.9 million values, 28 times
/// `memory_mb` as host rows, come out whole. The batch call runs out of guest memory, and the
/// rows run again one at a time each return little, but together far more than one call may:
/// that is the batch's own size, which is refused only past 64 times `memory_mb` (see
/// `a_batch_whose_rows_run_alone_emit_too_much_in_all_fails_with_an_error`).
#[test]
fn an_honest_flat_map_output_many_times_memory_mb_as_host_rows_comes_out() {
    let mut cfg = config(guests::EXPLODE, &[("field", "t")]);
    cfg.memory_mb = 8;
    cfg.timeout_ms = 30_000;
    let c = one_worker(&[cfg]);
    let pieces = 1400;
    let text = (0..pieces)
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let rows: Vec<Row> = (0..1024)
        .map(|i| row(&[("id", Value::Int(i)), ("t", Value::String(text.clone()))]))
        .collect();
    let out = c.process_blocking(with_meta(rows)).unwrap();
    for (i, o) in out.iter().enumerate() {
        let rows = emitted(o);
        assert_eq!(rows.len(), pieces, "record {i}");
        assert_eq!(
            rows[pieces - 1].get("t"),
            Some(&Value::String("1399".into()))
        );
        assert_eq!(rows[0].get("id"), Some(&Value::Int(i as i64)));
    }
    assert_eq!(c.stats()[0].1.rows_out.load(Relaxed), 1024 * pieces as u64);
}

/// Text counts twice against what the rows of one batch, run one at a time, may emit in all (64
/// times `memory_mb`): the host holds it as laid out, then again as host rows. A flat-map whose
/// 125 rows (one call's worth of input text at `memory_mb: 64`) emit 150 copies of a 120 KiB
/// text each, 17.6 MiB, fails the batch part-way with an error that says so, leaving its rows
/// unfinished, having held about 2 GiB. Counted once, the 2.1 GiB would all have come out, and a
/// larger flat-map made the host hold twice the bound.
#[test]
fn text_counts_twice_against_what_rows_run_alone_may_emit() {
    let mut cfg = config(guests::EXPLODE, &[("field", "tag")]);
    cfg.memory_mb = 64;
    cfg.timeout_ms = 30_000;
    let c = one_worker(&[cfg]);
    // The batch call runs out of guest memory, so the rows run one at a time.
    let blob = Value::String("x".repeat(120 << 10));
    let tag = Value::String(vec!["a"; 150].join(","));
    let rows: Vec<Row> = (0..125)
        .map(|i| {
            row(&[
                ("id", Value::Int(i)),
                ("blob", blob.clone()),
                ("tag", tag.clone()),
            ])
        })
        .collect();
    match c.process_blocking(with_meta(rows)) {
        Err(e @ TransformError::TooMuchOutput { rows, of: 125, .. }) => {
            // 2 x 17.6 MiB a row: the 117th passes 4,096 MiB.
            assert_eq!(rows, 117, "{e}");
            assert!(
                e.to_string()
                    .contains("more than 4096 MiB in all as host rows"),
                "{e}"
            );
        }
        other => panic!(
            "expected TooMuchOutput part-way through 125 rows, got {:?}",
            other.map(|o| o.len())
        ),
    }
    let stats = &c.stats()[0].1;
    assert_eq!(stats.rows_unfinished.load(Relaxed), 125);
    assert_eq!(stats.rows_out.load(Relaxed), 0);
    // The chain goes on.
    let out = c
        .process_blocking(with_meta(vec![row(&[(
            "tag",
            Value::String("p,q".into()),
        )])]))
        .unwrap();
    assert_eq!(emitted(&out[0]).len(), 2);
}

/// Each row run alone is bounded as one call, but a batch's rows together could make the host
/// hold a thousand times that (1024 rows of 1000 × 2000 nulls: 96 GB of host rows). Their sum is
/// bounded too, at 64 times `memory_mb` as host rows: past it, the batch fails as a whole with an
/// error that says so, its rows unfinished, and the chain goes on.
#[test]
fn a_batch_whose_rows_run_alone_emit_too_much_in_all_fails_with_an_error() {
    let mut cfg = config(
        guests::POISON_ALIAS,
        &[("wide", "1000x2000"), ("every", "true")],
    );
    // 2 MB of the guest's memory per row, about 92 MiB of host rows: within the 128 MiB one
    // call may emit, but 6 rows pass the 512 MiB the rows of one batch may emit in all. The
    // batch call (60 MB for 30 rows) runs out of memory first, so the rows run one at a time.
    cfg.memory_mb = 8;
    let c = one_worker(&[cfg]);
    match c.process_blocking(with_meta(numbered(30))) {
        Err(
            e @ TransformError::TooMuchOutput {
                rows: 6,
                of: 30,
                memory_mb: 8,
                ..
            },
        ) => {
            let text = e.to_string();
            assert!(
                text.contains("more than 512 MiB in all as host rows"),
                "{text}"
            );
            assert!(text.contains("raise memory_mb"), "{text}");
        }
        other => panic!(
            "expected TooMuchOutput at row 6 of 30, got {:?}",
            other.map(|o| o.len())
        ),
    }
    let stats = &c.stats()[0].1;
    assert_eq!(stats.rows_unfinished.load(Relaxed), 30);
    assert_eq!(stats.rows_out.load(Relaxed), 0);
    // The chain goes on: one row's answer is within both bounds.
    let out = c.process_blocking(with_meta(numbered(1))).unwrap();
    assert_eq!(emitted(&out[0]).len(), 1000);
    assert_eq!(emitted(&out[0])[999].fields.len(), 2000);
}

/// Each call's output is bounded, but a batch runs as several calls (a part per 2 MiB of text at
/// `memory_mb` 8, and a chunk per worker) whose outputs are all held until the batch is loaded.
/// Their sum is bounded too, at 64 times the last transform's `memory_mb` plus 16 times the
/// batch's own size: past it the batch fails as a whole, and what it emitted is unfinished.
#[test]
fn a_batch_whose_parts_emit_too_much_in_all_fails_with_an_error() {
    let mut cfg = config(
        guests::POISON_ALIAS,
        &[("wide", "1000x2000"), ("every", "true")],
    );
    cfg.memory_mb = 8;
    // 32 rows of 512 KiB: 8 parts of 4 rows. Each row, run alone once its part's call runs out
    // of memory, answers about 92 MiB of host rows, so a part emits 368 MiB: within the 512 MiB
    // one call may emit run a row at a time. Three parts pass the batch's 512 + 16 x 16 MiB.
    let pad = Value::String("p".repeat(512 << 10));
    let rows: Vec<Row> = (0..32)
        .map(|i| row(&[("id", Value::Int(i)), ("pad", pad.clone())]))
        .collect();
    // Through the CLI's path (the caller's own instances) and `sluice run`'s (the workers).
    for on_workers in [false, true] {
        let c = one_worker(&[cfg.clone()]);
        let batch = with_meta(rows.clone());
        let result = match on_workers {
            false => c.process_blocking(batch),
            true => tokio::runtime::Runtime::new()
                .unwrap()
                .block_on(c.process(batch)),
        };
        assert_batch_output_too_big(result, &c);
    }
}

fn assert_batch_output_too_big(
    result: Result<Vec<RecordOutcome>, TransformError>,
    c: &TransformChain,
) {
    match result {
        Err(
            e @ TransformError::BatchOutputTooBig {
                rows: 32,
                memory_mb: 8,
                ..
            },
        ) => {
            let text = e.to_string();
            assert!(
                text.contains("for one batch of 32 rows passed 768 MiB"),
                "{text}"
            );
            assert!(text.contains("lower the batch size"), "{text}");
        }
        other => panic!(
            "expected BatchOutputTooBig, got {:?}",
            other.map(|o| o.len())
        ),
    }
    let stats = &c.stats()[0].1;
    assert_eq!(stats.rows_in.load(Relaxed), 12);
    assert_eq!(stats.rows_out.load(Relaxed), 0);
    assert_eq!(stats.rows_unfinished.load(Relaxed), 12000);
}

/// The bound on what the host copies out of a call grows with `memory_mb`: an honest 140 MiB
/// output, past wasmtime's default bound of 128 MiB, comes out whole.
#[test]
fn an_honest_output_bigger_than_wasmtimes_default_copy_bound_comes_out() {
    let mut cfg = config(guests::ENRICH, &[("rename", "name:who")]);
    cfg.memory_mb = 1024;
    // Copying 140 MiB in and out is slow in a debug build on a busy machine.
    cfg.timeout_ms = 30_000;
    let c = chain(&[cfg]);
    let len = 140 << 20;
    let rows = vec![row(&[("name", Value::String("a".repeat(len)))])];
    let out = c.process_blocking(with_meta(rows)).unwrap();
    let rows = emitted(&out[0]);
    assert_eq!(rows.len(), 1);
    match rows[0].get("who") {
        Some(Value::String(s)) => {
            assert_eq!(s.len(), len);
            assert!(s.bytes().all(|b| b == b'a'));
        }
        other => panic!("{:?}", other.map(|v| format!("{v:.40?}"))),
    }
}

/// A batch of wide rows that would not fit a guest's memory in one call goes down the chain in
/// parts that do: no call fails its memory limit, so nothing runs twice.
#[test]
fn a_batch_too_wide_for_memory_mb_is_sent_in_parts() {
    let mut cfg = config(guests::ENRICH, &[("rename", "name:who")]);
    cfg.memory_mb = 8;
    let c = chain(&[cfg]);
    let rows: Vec<Row> = (0..80)
        .map(|i| {
            row(&[
                ("id", Value::Int(i)),
                ("name", Value::String(format!("{i}{}", "x".repeat(100_000)))),
            ])
        })
        .collect();
    let out = c.process_blocking(with_meta(rows.clone())).unwrap();
    assert_eq!(out.len(), rows.len());
    for (o, r) in out.iter().zip(&rows) {
        let expected = row(&[
            ("id", r.get("id").unwrap().clone()),
            ("who", r.get("name").unwrap().clone()),
        ]);
        assert_eq!(emitted(o), [expected]);
    }
    let stats = &c.stats()[0].1;
    assert_eq!(stats.instance_restarts.load(Relaxed), 0);
    assert_eq!(stats.rows_out.load(Relaxed), 80);
}

/// A guest whose state goes bad (here: it panics once an instance has seen a row) does not get
/// innocent rows quarantined: a row run alone that traps on an instance earlier rows used is
/// run again on a fresh one, and only blamed if it fails there too.
#[test]
fn a_row_is_not_blamed_for_a_trap_caused_by_earlier_rows() {
    let c = one_worker(&[config(guests::PROBE, &[])]);
    let rows: Vec<Row> = (0..10)
        .map(|i| row(&[("id", Value::Int(i)), ("fail_after", Value::Int(1))]))
        .collect();
    let out = c.process_blocking(with_meta(rows)).unwrap();
    for (i, o) in out.iter().enumerate() {
        assert!(
            matches!(o, RecordOutcome::Emitted(r) if r.len() == 1),
            "row {i}: {o:?}"
        );
    }
    assert_eq!(c.stats()[0].1.rows_failed.load(Relaxed), 0);
    // A row that fails on a fresh instance is still blamed.
    let rows = vec![row(&[("fail_after", Value::Int(0))])];
    let q = quarantined(&c.process_blocking(with_meta(rows)).unwrap()[0]).clone();
    assert_eq!(q.kind, FailureKind::Trap, "{}", q.reason);
    assert!(q.reason.contains("has seen 0 rows"), "{}", q.reason);
}

/// Nor for a hang caused by earlier rows (a loop on state they broke): a row that times out
/// alone after others on the same instance runs again on a fresh one before it is blamed.
#[test]
fn a_row_is_not_blamed_for_a_hang_caused_by_earlier_rows() {
    let mut probe = config(guests::PROBE, &[]);
    probe.timeout_ms = 100;
    let c = one_worker(&[probe]);
    let rows: Vec<Row> = (0..4)
        .map(|i| row(&[("id", Value::Int(i)), ("hang_after", Value::Int(1))]))
        .collect();
    let out = c.process_blocking(with_meta(rows.clone())).unwrap();
    for (i, o) in out.iter().enumerate() {
        assert!(
            matches!(o, RecordOutcome::Emitted(r) if r.len() == 1),
            "row {i}: {o:?}"
        );
    }
    assert_eq!(c.stats()[0].1.rows_failed.load(Relaxed), 0);
    // A row that hangs on a fresh instance is still blamed.
    let rows = vec![row(&[("hang_after", Value::Int(0))])];
    let q = quarantined(&c.process_blocking(with_meta(rows)).unwrap()[0]).clone();
    assert_eq!(q.kind, FailureKind::Timeout, "{}", q.reason);
}

/// Nor for a broken contract (the wrong number of outcomes) caused by earlier rows, in a guest
/// written without the SDK whose state went bad after one row.
#[test]
fn a_row_is_not_blamed_for_a_contract_broken_by_earlier_rows() {
    let c = one_worker(&[config(guests::POISON_MISCOUNT, &[("after", "1")])]);
    let out = c.process_blocking(with_meta(numbered(4))).unwrap();
    for (i, o) in out.iter().enumerate() {
        assert_eq!(emitted(o), std::slice::from_ref(&numbered(4)[i]), "row {i}");
    }
    assert_eq!(c.stats()[0].1.rows_failed.load(Relaxed), 0);
    // A row that breaks it on a fresh instance is still blamed.
    let c = one_worker(&[config(guests::POISON_MISCOUNT, &[("after", "0")])]);
    let q = quarantined(&c.process_blocking(with_meta(numbered(1))).unwrap()[0]).clone();
    assert_eq!(q.kind, FailureKind::Protocol, "{}", q.reason);
}

#[test]
fn fuel_runs_out_deterministically_and_is_counted() {
    let c = assert_poison_isolated(guests::POISON_LOOP, FailureKind::Fuel, |c| {
        c.fuel = Some(5_000_000)
    });
    assert!(c.stats()[0].1.fuel_consumed.load(Relaxed) > 5_000_000);
    // Building an instance and its `init` burn fuel too, before any batch.
    let mut metered = config(guests::PASSTHROUGH, &[]);
    metered.fuel = Some(5_000_000);
    let c = chain(&[metered]);
    assert_eq!(c.stats()[0].1.invocations.load(Relaxed), 0);
    assert!(c.stats()[0].1.fuel_consumed.load(Relaxed) > 0);
}

/// A `fuel` budget that fits one row but not a batch loses nothing (every batch is re-run a row
/// at a time), and the run says so once, since it is otherwise only slow.
#[test]
fn cli_test_warns_once_when_fuel_fits_rows_but_not_batches() {
    let dir = tempfile::tempdir().unwrap();
    let data = sluice_tests::cli::workspace_root().join("data/data.csv");
    let run = |fuel: &str, batch: &str| {
        let mut args = vec!["transform", "test", "--component", guests::FILTER];
        args.extend(["--input", data.to_str().unwrap(), "--batch-size", batch]);
        args.extend(["--with", "field=value", "--with", "op=gt"]);
        args.extend(["--with", "value=50", "--fuel", fuel]);
        let out = sluice_tests::cli::sluice(dir.path(), &args);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(0), "{stderr}");
        (String::from_utf8(out.stdout).unwrap(), stderr)
    };
    // What one row's call costs, on average, measured rather than assumed.
    let (expected, stderr) = run("1000000000", "1");
    let consumed: u64 = stderr
        .rsplit("fuel consumed ")
        .next()
        .and_then(|s| s.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok())
        .unwrap_or_else(|| panic!("no fuel figure: {stderr}"));
    assert_eq!(stderr.matches("fuel consumed").count(), 1, "{stderr}");
    let rows = expected.lines().count();
    assert!(rows > 100, "{rows}");
    assert!(!stderr.contains("ran out of fuel"), "{stderr}");
    let records = std::fs::read_to_string(&data).unwrap().lines().count() as u64 - 1;
    let per_call = consumed / records;
    let (stdout, stderr) = run(&(3 * per_call).to_string(), "64");
    assert_eq!(stdout, expected, "every row comes out, in order");
    assert_eq!(
        stderr
            .matches("ran out of fuel on a batch of 64 rows")
            .count(),
        1,
        "{stderr}"
    );
    assert!(stderr.contains("Raise `fuel`"), "{stderr}");
    assert!(stderr.contains(" 0 failed"), "{stderr}");
}

/// A guest error quoting a whole field is cut to the dead-letter limit (8 KiB), with the length
/// kept, so that no message or letter grows with the input.
#[test]
fn a_huge_failure_reason_is_cut() {
    let c = chain(&[config(guests::ENRICH, &[("cast", "tags:int")])]);
    let mut row = Row::with_capacity(1);
    row.push("tags", Value::String("x".repeat(900_000)));
    let out = c.process_blocking(with_meta(vec![row])).unwrap();
    let q = quarantined(&out[0]);
    assert_eq!(q.kind, FailureKind::Guest);
    assert!(q.reason.len() < 8 * 1024 + 100, "{}", q.reason.len());
    assert!(q.reason.ends_with(" bytes in all)"), "{:.80}", q.reason);
}

#[test]
fn on_error_drop_and_fail_policies() {
    let mut cfg = config(guests::POISON_TRAP, &[]);
    cfg.on_error = OnError::Drop.into();
    let c = chain(&[cfg.clone()]);
    let out = c.process_blocking(with_meta(numbered(20))).unwrap();
    assert!(
        matches!(&out[13], RecordOutcome::Dropped { kind: FailureKind::Trap, transform, .. } if transform == "poison_trap")
    );
    assert_eq!(
        out.iter()
            .filter(|o| matches!(o, RecordOutcome::Emitted(r) if r.len() == 1))
            .count(),
        19
    );
    // The failed row counts as failed, not as dropped too: 20 in = 19 out + 0 dropped + 1 failed.
    let stats = &c.stats()[0].1;
    let count = |n: &std::sync::atomic::AtomicU64| n.load(Relaxed);
    assert_eq!(
        [
            &stats.rows_in,
            &stats.rows_out,
            &stats.rows_dropped,
            &stats.rows_failed
        ]
        .map(count),
        [20, 19, 0, 1]
    );

    cfg.on_error = OnError::Fail.into();
    let c = chain(&[cfg]);
    match c.process_blocking(with_meta(numbered(20))) {
        Err(TransformError::Failed {
            transform,
            kind: FailureKind::Trap,
            offset: 13,
            ..
        }) => assert_eq!(transform, "poison_trap"),
        other => panic!("expected a fatal failure, got {other:?}"),
    }
    // The batch's other rows went through, but the run stops there: they are unfinished, not out.
    let stats = &c.stats()[0].1;
    assert_eq!(
        [
            &stats.rows_in,
            &stats.rows_out,
            &stats.rows_dropped,
            &stats.rows_failed,
            &stats.rows_unfinished
        ]
        .map(count),
        [20, 0, 0, 1, 19]
    );
    // The chain is still usable afterwards.
    assert_eq!(c.process_blocking(with_meta(numbered(3))).unwrap().len(), 3);
}

/// `on_error` by kind of failure: a validator can set aside the rows it rejects
/// (`guest_error`) and still stop the run when it crashes (`default: fail`), or the other way
/// round; every kind it does not name gets `default`.
#[test]
fn on_error_by_kind_treats_rejected_and_crashed_records_apart() {
    use sluice::transform::config::{ErrorPolicy, OnErrorByKind};
    // Ids 3 and 7 are rejected by the guest; id 13 (when sent) crashes it.
    let rows = |n: i64| -> Vec<Row> {
        let mut rows = numbered(n);
        for id in [3, 7] {
            rows[id].push("reject", Value::Bool(true));
        }
        rows
    };
    let kinds = |out: &[RecordOutcome]| -> Vec<(usize, String)> {
        (out.iter().enumerate())
            .filter_map(|(i, o)| match o {
                RecordOutcome::Emitted(_) => None,
                RecordOutcome::Quarantined(q) => Some((i, format!("dead_letter {}", q.kind))),
                RecordOutcome::Dropped { kind, .. } => Some((i, format!("drop {kind}"))),
            })
            .collect()
    };
    let mut cfg = config(guests::POISON_TRAP, &[]);
    cfg.on_error = ErrorPolicy::ByKind(OnErrorByKind {
        guest_error: Some(OnError::DeadLetter),
        default: Some(OnError::Fail),
        ..OnErrorByKind::default()
    });
    let c = chain(&[cfg.clone()]);
    let out = c.process_blocking(with_meta(rows(12))).unwrap();
    assert_eq!(
        kinds(&out),
        [
            (3, "dead_letter guest_error".into()),
            (7, "dead_letter guest_error".into())
        ]
    );
    // The guest's typed error travels apart from its text, into the dead letter.
    let q = quarantined(&out[3]);
    let fault = sluice::dead_letter::GuestFault {
        case: "invalid-value",
        field: Some("reject".into()),
    };
    assert_eq!(q.error.as_ref(), Some(&fault));
    let letter = sluice::source::dlq::encode(&q.dead_letter(Default::default(), b"{}".to_vec()));
    let letter: serde_json::Value = serde_json::from_slice(&letter).unwrap();
    assert_eq!(
        letter["error"],
        serde_json::json!({"case": "invalid-value", "field": "reject"}),
        "{letter:#}"
    );
    match c.process_blocking(with_meta(rows(20))) {
        Err(TransformError::Failed {
            kind: FailureKind::Trap,
            offset: 13,
            ..
        }) => {}
        other => panic!("expected the trap to stop the run, got {other:?}"),
    }

    // The other way round: crashes dropped, rejections fatal; timeouts, unnamed, dead-lettered.
    cfg.on_error = ErrorPolicy::ByKind(OnErrorByKind {
        trap: Some(OnError::Drop),
        guest_error: Some(OnError::Fail),
        ..OnErrorByKind::default()
    });
    let c = chain(&[cfg]);
    let crashes: Vec<Row> = numbered(20);
    let out = c.process_blocking(with_meta(crashes)).unwrap();
    assert_eq!(kinds(&out), [(13, "drop trap".into())]);
    match c.process_blocking(with_meta(rows(12))) {
        Err(TransformError::Failed {
            kind: FailureKind::Guest,
            offset: 3,
            ..
        }) => {}
        other => panic!("expected the rejection to stop the run, got {other:?}"),
    }

    // A record split into two rows, one that crashes the guest (id 13, dropped) and one that it
    // rejects (dead-lettered), is dead-lettered whichever row comes first: the strictest policy
    // of its failures wins.
    let mut by_kind = config(guests::POISON_TRAP, &[]);
    by_kind.on_error = ErrorPolicy::ByKind(OnErrorByKind {
        trap: Some(OnError::Drop),
        guest_error: Some(OnError::DeadLetter),
        ..OnErrorByKind::default()
    });
    let c = chain(&[
        config(guests::EXPLODE, &[("field", "ids"), ("into", "id")]),
        config(guests::ENRICH, &[("cast", "id:int")]),
        by_kind,
    ]);
    for ids in ["13,5", "5,13"] {
        let one = row(&[
            ("id", Value::Int(1)),
            ("ids", Value::String(ids.into())),
            ("reject", Value::Bool(true)),
        ]);
        let out = c.process_blocking(with_meta(vec![one])).unwrap();
        assert_eq!(
            kinds(&out),
            [(0, "dead_letter guest_error".into())],
            "{ids}: {out:?}"
        );
    }
}

/// A batch split across workers that fails in one chunk goes no further as a whole, so the
/// rows the other chunk got through the chain are unfinished, not out of its last transform:
/// before, they counted as out though nothing of the batch came out.
#[test]
fn a_batch_failing_in_one_chunk_counts_the_others_rows_unfinished() {
    let mut trap = config(guests::POISON_TRAP, &[]);
    trap.on_error = OnError::Fail.into();
    let counts = |c: &TransformChain| -> Vec<[u64; 4]> {
        c.stats()
            .iter()
            .map(|(_, s)| {
                [&s.rows_in, &s.rows_out, &s.rows_failed, &s.rows_unfinished]
                    .map(|n| n.load(Relaxed))
            })
            .collect()
    };
    // Two workers, two chunks of 200 (by partition): record 13 fails the odd one; the even one
    // goes through both.
    let want = [[400, 200, 1, 199], [200, 0, 0, 200]];
    let c = chain(&[trap.clone(), config(guests::PASSTHROUGH, &[])]);
    assert!(matches!(
        c.process_blocking(across(numbered(400), 2)),
        Err(TransformError::Failed { offset: 13, .. })
    ));
    assert_eq!(counts(&c), want);
    let c = chain(&[trap, config(guests::PASSTHROUGH, &[])]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    assert!(matches!(
        rt.block_on(c.process(across(numbered(400), 2))),
        Err(TransformError::Failed { offset: 13, .. })
    ));
    assert_eq!(counts(&c), want, "the same from async code");
    // A batch that goes through counts its rows out.
    let kept: Vec<_> = numbered(400)
        .into_iter()
        .filter(|r| r.get("id") != Some(&Value::Int(13)))
        .collect();
    assert_eq!(c.process_blocking(with_meta(kept)).unwrap().len(), 399);
    assert_eq!(counts(&c), [[799, 599, 1, 199], [599, 399, 0, 200]]);
}

/// A caller that gives up on a batch (drops `process`'s future) gets nothing of it, so the rows
/// the chain emitted for it are unfinished, including those of chunks still running then.
#[tokio::test]
async fn a_batch_given_up_on_counts_its_rows_unfinished() {
    let mut cfg = config(guests::POISON_LOOP, &[]);
    cfg.timeout_ms = 200;
    cfg.on_error = OnError::DeadLetter.into();
    let c = chain(&[cfg]);
    // Two chunks (by partition); record 13 loops, so the odd one takes two time limits at least:
    // the future is pending.
    let given_up = tokio::time::timeout(
        std::time::Duration::ZERO,
        c.process(across(numbered(400), 2)),
    )
    .await;
    assert!(given_up.is_err(), "still running");
    let stats = &c.stats()[0].1;
    let count = |n: &std::sync::atomic::AtomicU64| n.load(Relaxed);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while count(&stats.rows_failed) + count(&stats.rows_unfinished) < 400 {
        assert!(
            std::time::Instant::now() < deadline,
            "rows lost: {:?}",
            [
                &stats.rows_in,
                &stats.rows_out,
                &stats.rows_failed,
                &stats.rows_unfinished
            ]
            .map(count)
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // A chunk that no worker had started when the caller gave up is not run (so record 13 may
    // not have failed), but its rows count as unfinished all the same.
    let [rows_in, rows_out, failed, unfinished] = [
        &stats.rows_in,
        &stats.rows_out,
        &stats.rows_failed,
        &stats.rows_unfinished,
    ]
    .map(count);
    assert_eq!([rows_in, rows_out, failed + unfinished], [400, 0, 400]);
    assert!(failed <= 1, "{failed}");
}

/// Batches whose caller gave up before a worker got to them are not run at all: the worker
/// would be held for nothing, and dropping the chain would wait for it. Nor is a batch run again
/// a row at a time once its caller gave up (up to a minute of time limits). Their rows are
/// counted unfinished.
#[tokio::test]
async fn batches_given_up_on_before_they_start_are_not_run() {
    let mut cfg = config(guests::POISON_LOOP, &[]);
    cfg.timeout_ms = 1000;
    cfg.on_error = OnError::DeadLetter.into();
    let c = one_worker(&[cfg]);
    let stats = std::sync::Arc::clone(&c.stats()[0].1);
    // The first batch is started (record 13 holds the one worker for its batch call's time limit
    // of CPU time, after the caller gives up on it at 700 ms: time for a slow machine to start
    // it); the next two queue behind it and are given up on at once.
    for wait_ms in [700, 0, 0] {
        let wait = std::time::Duration::from_millis(wait_ms);
        let given_up = tokio::time::timeout(wait, c.process(with_meta(numbered(50)))).await;
        assert!(given_up.is_err(), "still running");
    }
    drop(c);
    let count = |n: &std::sync::atomic::AtomicU64| n.load(Relaxed);
    assert_eq!(
        [
            &stats.rows_in,
            &stats.rows_out,
            &stats.rows_failed,
            &stats.rows_unfinished,
            &stats.invocations
        ]
        .map(count),
        [150, 0, 0, 150, 1],
        "record 13 looped once, in the first batch's call; no row of it ran again alone"
    );
}

#[test]
fn a_failure_later_in_the_chain_quarantines_the_whole_record() {
    // explode turns record 1 into ids 13 and 14; the trap on 13 fails record 1 as a whole.
    let c = chain(&[
        config(guests::EXPLODE, &[("field", "id")]),
        config(guests::ENRICH, &[("cast", "id:int")]),
        config(guests::POISON_TRAP, &[]),
    ]);
    let input = vec![
        (meta(0), row(&[("id", Value::String("1,2".into()))])),
        (meta(1), row(&[("id", Value::String("13,14".into()))])),
    ];
    let out = c.process_blocking(input).unwrap();
    assert_eq!(
        emitted(&out[0]),
        [row(&[("id", Value::Int(1))]), row(&[("id", Value::Int(2))])]
    );
    let q = quarantined(&out[1]);
    assert_eq!(
        (q.transform.as_str(), q.kind, &q.row),
        (
            "poison_trap",
            FailureKind::Trap,
            &row(&[("id", Value::Int(13))])
        )
    );
}

#[test]
fn check_reports_bad_params_with_their_name() {
    let err = check(
        &config(
            guests::FILTER,
            &[("field", "v"), ("op", "bogus"), ("value", "1")],
        ),
        &opts(),
    )
    .unwrap_err();
    assert_eq!(err.param(), Some("op"), "{err}");
    assert!(
        err.to_string().contains("unknown operator \"bogus\""),
        "{err}"
    );

    let err = check(
        &config(
            guests::FILTER,
            &[("field", "v"), ("op", "gt"), ("value", "1"), ("vaule", "2")],
        ),
        &opts(),
    )
    .unwrap_err();
    assert_eq!(err.param(), Some("vaule"), "{err}");

    // An expression with two operators is refused at init, not failed on every row.
    for spec in ["cents=value ** 100", "x=a * b / c", "x=a - -b"] {
        let err = check(&config(guests::ENRICH, &[("compute", spec)]), &opts()).unwrap_err();
        assert_eq!(err.param(), Some("compute"), "{spec}: {err}");
        assert!(
            err.to_string().contains("one operator only"),
            "{spec}: {err}"
        );
    }
    check(
        &config(guests::ENRICH, &[("compute", "x=a - -1.5")]),
        &opts(),
    )
    .unwrap();

    let err = check(&config(guests::MASK, &[("field", "x")]), &opts()).unwrap_err();
    assert!(
        matches!(&err, LoadError::InvalidParam { param, reason, .. } if param == "salt" && reason == "is required"),
        "{err}"
    );
    // Nothing to do: the param given is the one named (`transforms[i].with.uppercase`).
    let err = check(&config(guests::ENRICH, &[("uppercase", " , ")]), &opts()).unwrap_err();
    assert_eq!(err.param(), Some("uppercase"), "{err}");
    let err = check(&config(guests::ENRICH, &[]), &opts()).unwrap_err();
    assert_eq!(err.param(), Some("rename"), "{err}");

    check(
        &config(
            guests::FILTER,
            &[("field", "v"), ("op", "gt"), ("value", "1")],
        ),
        &opts(),
    )
    .unwrap();
}

/// `load_each` goes on past a transform that fails, and names each one that does by position.
#[test]
fn load_each_reports_every_failing_transform() {
    let Err(errors) = TransformChain::load_each(
        &[
            config(
                guests::FILTER,
                &[("field", "v"), ("op", "bogus"), ("value", "1")],
            ),
            config(guests::PASSTHROUGH, &[]),
            config(guests::MASK, &[("field", "x")]),
        ],
        &opts(),
    ) else {
        panic!("two of the transforms fail")
    };
    let got: Vec<(usize, Option<&str>)> = errors.iter().map(|(i, e)| (*i, e.param())).collect();
    assert_eq!(got, [(0, Some("op")), (2, Some("salt"))]);

    // `load` stops at the first: the component after it is not even compiled (nothing of it is
    // in the cache), while `load_each` compiles both.
    let entries = |dir: &std::path::Path| std::fs::read_dir(dir).map_or(0, |d| d.count());
    let broken = [
        config(guests::FILTER, &[("op", "bogus")]),
        config(guests::PASSTHROUGH, &[]),
    ];
    let (first, each) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let cached = |dir: &tempfile::TempDir| RuntimeOptions {
        workers: 1,
        cache_dir: Some(dir.path().to_owned()),
    };
    let err = TransformChain::load(&broken, &cached(&first))
        .err()
        .unwrap();
    assert_eq!(err.param(), Some("op"), "{err}");
    assert_eq!(entries(first.path()), 1);
    assert!(TransformChain::load_each(&broken, &cached(&each)).is_err());
    assert_eq!(entries(each.path()), 2);
}

#[test]
fn check_rejects_files_that_are_not_sluice_transforms() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, bytes: &[u8]| {
        let p = dir.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        p.to_string_lossy().into_owned()
    };
    let missing = dir
        .path()
        .join("missing.wasm")
        .to_string_lossy()
        .into_owned();
    assert!(matches!(
        check(&config(&missing, &[]), &opts()),
        Err(LoadError::NotFound { .. })
    ));
    // A path that exists but cannot be read as a file.
    let here = dir.path().to_string_lossy().into_owned();
    assert!(matches!(
        check(&config(&here, &[]), &opts()),
        Err(LoadError::Read { .. })
    ));
    let garbage = write("garbage.wasm", b"not wasm at all");
    let err = check(&config(&garbage, &[]), &opts()).unwrap_err();
    assert!(matches!(err, LoadError::InvalidComponent { .. }), "{err}");
    assert!(err.to_string().contains("`\\0asm` header"), "{err}");
    let core = write("core.wasm", b"\0asm\x01\0\0\0");
    let err = check(&config(&core, &[]), &opts()).unwrap_err();
    assert!(err.to_string().contains("core wasm module"), "{err}");
    let empty = write("empty.wat", b"(component)");
    let err = check(&config(&empty, &[]), &opts()).unwrap_err();
    assert!(matches!(err, LoadError::WrongWorld { .. }), "{err}");
    assert!(err.to_string().contains("sluice:transform"), "{err}");
    // The contract's export names, with other function types.
    let mistyped = write(
        "mistyped.wat",
        br#"(component
  (core module $m (func (export "a")) (func (export "b")))
  (core instance $i (instantiate $m))
  (func $init (canon lift (core func $i "a")))
  (func $batch (canon lift (core func $i "b")))
  (instance $t (export "init" (func $init)) (export "transform-batch" (func $batch)))
  (export "sluice:transform/transformer@0.1.0" (instance $t)))"#,
    );
    let err = check(&config(&mistyped, &[]), &opts()).unwrap_err();
    assert!(matches!(err, LoadError::WrongWorld { .. }), "{err}");
    assert!(
        err.to_string().contains("do not have the contract's types"),
        "{err}"
    );
}

/// `component` with a core module of `imports` function imports, `tags` exception tags and
/// `globals` globals appended, instantiated `instances` times (never called; a module with imports is never instantiated).
/// Component sections may come in any order, and each extends its index space, so the new
/// module's index is the number of modules before it.
fn bloated(component: &[u8], [imports, tags, globals]: [u32; 3], instances: u32) -> Vec<u8> {
    fn leb(mut n: usize, out: &mut Vec<u8>) {
        loop {
            let b = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                return out.push(b);
            }
            out.push(b | 0x80);
        }
    }
    fn section(id: u8, body: &[u8], out: &mut Vec<u8>) {
        out.push(id);
        leb(body.len(), out);
        out.extend_from_slice(body);
    }
    assert_eq!(&component[..8], b"\0asm\x0d\x00\x01\x00", "a component");
    let (mut at, mut modules) = (8, 0);
    while at < component.len() {
        let (id, mut size, mut shift) = (component[at], 0usize, 0);
        at += 1;
        loop {
            let b = component[at];
            at += 1;
            size |= usize::from(b & 0x7f) << shift;
            shift += 7;
            if b < 0x80 {
                break;
            }
        }
        modules += usize::from(id == 1);
        at += size;
    }
    let mut module = b"\0asm\x01\0\0\0".to_vec();
    // (type (func)), then (import "m" "I" (func (type 0))) for each I below `imports`.
    section(1, &[0x01, 0x60, 0x00, 0x00], &mut module);
    let mut body = Vec::new();
    leb(imports as usize, &mut body);
    for i in 0..imports {
        let name = i.to_string();
        body.extend_from_slice(&[0x01, b'm', name.len() as u8]);
        body.extend_from_slice(name.as_bytes());
        body.extend_from_slice(&[0x00, 0x00]);
    }
    section(2, &body, &mut module);
    // (tag (type 0)), `tags` times.
    let mut body = Vec::new();
    leb(tags as usize, &mut body);
    for _ in 0..tags {
        body.extend_from_slice(&[0x00, 0x00]);
    }
    section(13, &body, &mut module);
    // (global i64 (i64.const 0)), `globals` times.
    let mut body = Vec::new();
    leb(globals as usize, &mut body);
    for _ in 0..globals {
        body.extend_from_slice(&[0x7e, 0x00, 0x42, 0x00, 0x0b]);
    }
    section(6, &body, &mut module);
    let mut out = component.to_vec();
    section(1, &module, &mut out);
    if instances == 0 {
        return out;
    }
    // (core instance (instantiate $module)), `instances` times.
    let mut body = Vec::new();
    leb(instances as usize, &mut body);
    for _ in 0..instances {
        body.push(0x00);
        leb(modules, &mut body);
        body.push(0x00);
    }
    section(2, &body, &mut out);
    out
}

/// What a component's core modules hold per instance (globals, function references, tables) is
/// host memory outside `memory_mb`, built by host code the CPU cap does not interrupt, so a
/// component could make every instance cost gigabytes. A core module that declares more than
/// 100,000 imports, functions, tags and globals is refused when it loads, and more than 200 core
/// instances fail the instance; within both, the same bytes load and run.
#[test]
fn components_whose_instances_would_cost_the_host_unbounded_memory_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let passthrough = std::fs::read(guests::PASSTHROUGH).unwrap();
    let write = |name: &str, bytes: Vec<u8>| {
        let p = dir.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        p.to_string_lossy().into_owned()
    };
    let within = write("within.wasm", bloated(&passthrough, [0, 50, 100], 10));
    let c = chain(&[config(&within, &[])]);
    let out = c.process_blocking(with_meta(numbered(3))).unwrap();
    assert_eq!(emitted(&out[2]), &numbered(3)[2..]);
    for declared in [
        [0, 0, 200_000],
        [200_000, 0, 0],
        [60_000, 0, 60_000],
        [0, 200_000, 0],
        [40_000, 40_000, 40_000],
    ] {
        let big = write("big.wasm", bloated(&passthrough, declared, 0));
        let err = check(&config(&big, &[]), &opts()).unwrap_err();
        assert!(matches!(err, LoadError::InvalidComponent { .. }), "{err}");
        assert!(
            err.to_string().contains(
                "declares more than 100000 imports, functions, tags and globals, the most sluice \
                 allows"
            ),
            "{err}"
        );
    }
    let instances = write("instances.wasm", bloated(&passthrough, [0, 0, 1], 300));
    let err = check(&config(&instances, &[]), &opts()).unwrap_err();
    assert!(err.to_string().contains("instance count too high"), "{err}");
}

#[test]
fn compiled_components_are_cached_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let opts = RuntimeOptions {
        workers: 1,
        cache_dir: Some(dir.path().join("wasm")),
    };
    check(&config(guests::PASSTHROUGH, &[]), &opts).unwrap();
    let entries = || walk(dir.path());
    let first = entries();
    assert_eq!(first.len(), 1, "one entry per component: {first:?}");
    let stored = std::fs::read(&first[0]).unwrap();
    check(&config(guests::PASSTHROUGH, &[]), &opts).unwrap();
    assert_eq!(entries(), first, "second load reuses the cached artifact");
    assert_eq!(std::fs::read(&first[0]).unwrap(), stored);
}

/// A damaged cache entry is compiled again and replaced, never run (wasmtime runs what it loads:
/// a flipped bit used to crash every later run), and so is an entry filed under another
/// component's name.
#[test]
fn a_damaged_or_misfiled_cache_entry_is_compiled_again() {
    let dir = tempfile::tempdir().unwrap();
    let opts = RuntimeOptions {
        workers: 1,
        cache_dir: Some(dir.path().join("wasm")),
    };
    check(&config(guests::PASSTHROUGH, &[]), &opts).unwrap();
    let entry = walk(dir.path()).remove(0);
    let stored = std::fs::read(&entry).unwrap();
    for offset in [20_000, stored.len() / 2, stored.len() - 1] {
        let mut damaged = stored.clone();
        damaged[offset] ^= 0x10;
        std::fs::write(&entry, &damaged).unwrap();
        check(&config(guests::PASSTHROUGH, &[]), &opts).unwrap();
        assert_eq!(
            std::fs::read(&entry).unwrap(),
            stored,
            "flip at {offset} replaced"
        );
    }
    std::fs::write(&entry, &stored[..stored.len() / 3]).unwrap();
    check(&config(guests::PASSTHROUGH, &[]), &opts).unwrap();
    assert_eq!(
        std::fs::read(&entry).unwrap(),
        stored,
        "truncated entry replaced"
    );

    // filter's code under passthrough's name: passthrough must still be what runs (filter's
    // `init` would refuse the missing params).
    let filter = config(
        guests::FILTER,
        &[("field", "id"), ("op", "gt"), ("value", "1")],
    );
    check(&filter, &opts).unwrap();
    let filter_entry = walk(dir.path()).into_iter().find(|p| *p != entry).unwrap();
    std::fs::copy(&filter_entry, &entry).unwrap();
    check(&config(guests::PASSTHROUGH, &[]), &opts).unwrap();
    assert_eq!(
        std::fs::read(&entry).unwrap(),
        stored,
        "misfiled entry replaced"
    );
}

fn walk(p: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(p).into_iter().flatten().flatten() {
        let path = e.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out.sort();
    out
}

/// `sluice transform test --component filter.wasm --input data/data.csv --with field=value
/// --with op=gt --with value=50` prints exactly the rows with value > 50.
#[test]
fn cli_test_prints_exactly_the_filtered_csv_rows() {
    use sluice::transform::cli;
    let data = concat!(env!("CARGO_MANIFEST_DIR"), "/../data/data.csv");
    let mut cfg = TransformConfig::new(guests::FILTER);
    for kv in ["field=value", "op=gt", "value=50"] {
        let (k, v) = kv.split_once('=').unwrap();
        cfg.with.insert(k.into(), v.into());
    }
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let records = cli::read_input(std::path::Path::new(data), &Default::default()).unwrap();
    let chain = cli::load(&[cfg], 1).unwrap();
    let report = cli::test(
        &chain,
        records,
        256,
        Default::default(),
        &mut out,
        &mut err,
        None,
    )
    .unwrap();
    assert_eq!(report.failed, 0, "{}", String::from_utf8_lossy(&err));

    // The expectation, computed independently from the raw CSV text.
    let mut csv = csv::Reader::from_path(data).unwrap();
    let headers = csv.headers().unwrap().clone();
    let col = headers.iter().position(|h| h == "value").unwrap();
    let id = headers.iter().position(|h| h == "id").unwrap();
    let want: Vec<String> = csv
        .records()
        .map(|r| r.unwrap())
        .filter(|r| r[col].trim().parse::<f64>().is_ok_and(|v| v > 50.0))
        .map(|r| r[id].to_string())
        .collect();
    let printed: Vec<serde_json::Value> = String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let got: Vec<String> = printed.iter().map(|r| r["id"].to_string()).collect();
    assert!(!want.is_empty());
    assert_eq!(got, want);
    assert_eq!(report.rows, want.len() as u64);
    let summary = String::from_utf8(err).unwrap();
    let total = csv::Reader::from_path(data).unwrap().records().count();
    assert!(
        summary.contains(&format!(
            "transform  filter: {total} in, {} out, {} dropped, 0 failed",
            want.len(),
            total - want.len()
        )),
        "{summary}"
    );
    assert!(printed.iter().all(|r| r["value"].as_f64().unwrap() > 50.0));
}

/// `transform test --pipeline FILE` runs the file's chain, with its params (one from the
/// environment) and its source's settings, on its source file: the same rows as the chain given
/// with `--component` and `--with`. A `--with` overrides the file's param, a mistake elsewhere
/// in the file (its sink) does not stop the test, and a param its transform refuses exits 2
/// naming its key.
#[test]
fn cli_test_runs_a_pipeline_files_chain() {
    let dir = tempfile::tempdir().unwrap();
    let mut csv = String::from("id;name;value\n");
    for i in 1..=300 {
        csv.push_str(&format!("{i};name {i};{}\n", (i * 37 % 100) as f64 + 0.5));
    }
    std::fs::write(dir.path().join("rows.csv"), &csv).unwrap();
    let pipeline = serde_json::json!({
        "version": 1,
        "name": "local",
        "source": { "type": "csv", "path": "rows.csv", "delimiter": ";", "key_column": "id",
                    "schema": { "value": "float" } },
        "kafka": { "topic": "t" },
        "transforms": [
            { "uses": guests::FILTER,
              "with": { "field": "value", "op": "${SLUICE_TEST_PIPE_OP:-gt}", "value": "50" } },
            { "uses": guests::ENRICH, "with": { "uppercase": "name" } }
        ],
        "sink": { "type": "snowflake", "database": "D", "schema": "S", "table": "T",
                  "batch": { "max_rows": 0 } }
    });
    let file = dir.path().join("pipeline.json");
    std::fs::write(&file, pipeline.to_string()).unwrap();
    let run = |args: &[&str], op: &str| {
        let out = std::process::Command::new(sluice_tests::cli::sluice_bin())
            .args(["transform", "test"])
            .args(args)
            .env("SLUICE_TEST_PIPE_OP", op)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        (
            out.status.code(),
            String::from_utf8(out.stdout).unwrap(),
            stderr,
        )
    };
    let p = file.to_string_lossy();
    let (code, from_file, stderr) = run(&["--pipeline", &p], "gt");
    assert_eq!(code, Some(0), "{stderr}");
    let input = dir.path().join("rows.csv");
    let (code, given, stderr) = run(
        &[
            "--component",
            guests::FILTER,
            "--component",
            guests::ENRICH,
            "--input",
            &input.to_string_lossy(),
            "--delimiter",
            ";",
            "--key-column",
            "id",
            "--schema",
            "value=float",
            "--with",
            "filter.field=value",
            "--with",
            "filter.op=gt",
            "--with",
            "filter.value=50",
            "--with",
            "enrich.uppercase=name",
        ],
        "",
    );
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(from_file, given);
    let above = |limit: f64| {
        (1..=300)
            .filter(|i| (i * 37 % 100) as f64 + 0.5 > limit)
            .count()
    };
    assert_eq!(from_file.lines().count(), above(50.0));
    assert!(from_file.contains(r#""name":"NAME 2""#), "{from_file}");

    let (code, out, stderr) = run(&["--pipeline", &p, "--with", "filter.value=90"], "gt");
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(out.lines().count(), above(90.0));

    let (code, _, stderr) = run(&["--pipeline", &p], "zz");
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("transforms[0].with.op (line "), "{stderr}");
    assert!(stderr.contains("unknown operator \"zz\""), "{stderr}");
    // Given on the command line, the param or the limit is the command's mistake, not the
    // file's.
    let (code, _, stderr) = run(&["--pipeline", &p, "--with", "filter.op=yy"], "gt");
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("unknown operator \"yy\""), "{stderr}");
    assert!(!stderr.contains("transforms[0]"), "{stderr}");
    let (code, _, stderr) = run(&["--pipeline", &p, "--fuel", "5000"], "gt");
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("ran out of fuel"), "{stderr}");
    assert!(!stderr.contains("transforms[0]"), "{stderr}");

    // The sink and Kafka sections are not read: their variables need not be set, nor their
    // values be right.
    let mut unread = pipeline.clone();
    unread["sink"]["password"] = "${SLUICE_TEST_UNSET_PASSWORD}".into();
    unread["sink"]["batch"]["max_rows"] = "lots".into();
    unread["kafka"]["brokers"] = "${SLUICE_TEST_UNSET_BROKERS}".into();
    std::fs::write(&file, unread.to_string()).unwrap();
    let (code, out, stderr) = run(&["--pipeline", &p], "gt");
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(out, from_file);
}

/// A CSV's `""` is an empty string in a string column, where an empty field is null; texts given
/// as `--null-if` (or as the pipeline source's `null_if`) are null in any column, and inference
/// passes over them, so `NULL` and `\N` leave a column of ints one. `--null-if ''` makes `""`
/// null too. CSV input only.
#[test]
fn cli_test_null_if_and_quoted_empty_strings() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("in.csv"),
        "id,amount,note\n1,5,a\n2,NULL,\"\"\n3,\\N,\n",
    )
    .unwrap();
    let run = |extra: &[&str]| {
        let args = ["transform", "test", "--component", guests::PASSTHROUGH];
        let out = sluice_tests::cli::sluice(dir.path(), &[&args[..], extra].concat());
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(0), "{extra:?}: {stderr}");
        String::from_utf8(out.stdout).unwrap()
    };
    assert_eq!(
        run(&["--input", "in.csv"]),
        "{\"id\":1,\"amount\":\"5\",\"note\":\"a\"}\n\
         {\"id\":2,\"amount\":\"NULL\",\"note\":\"\"}\n\
         {\"id\":3,\"amount\":\"\\\\N\",\"note\":null}\n"
    );
    let sql_nulls = "{\"id\":1,\"amount\":5,\"note\":\"a\"}\n\
                     {\"id\":2,\"amount\":null,\"note\":\"\"}\n\
                     {\"id\":3,\"amount\":null,\"note\":null}\n";
    assert_eq!(
        run(&["--input", "in.csv", "--null-if", "NULL", "--null-if", "\\N"]),
        sql_nulls
    );
    assert_eq!(
        run(&["--input", "in.csv", "--null-if", ""]),
        "{\"id\":1,\"amount\":\"5\",\"note\":\"a\"}\n\
         {\"id\":2,\"amount\":\"NULL\",\"note\":null}\n\
         {\"id\":3,\"amount\":\"\\\\N\",\"note\":null}\n"
    );
    // The pipeline source's own `null_if`.
    let pipeline = serde_json::json!({
        "version": 1,
        "name": "local",
        "source": { "type": "csv", "path": "in.csv", "null_if": ["NULL", "\\N"] },
        "kafka": { "topic": "t" },
        "transforms": [{ "uses": guests::PASSTHROUGH }],
        "sink": { "type": "snowflake", "database": "D", "schema": "S", "table": "T" }
    });
    std::fs::write(dir.path().join("p.json"), pipeline.to_string()).unwrap();
    let out = sluice_tests::cli::sluice(dir.path(), &["transform", "test", "--pipeline", "p.json"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), sql_nulls);
    // And its largest message: a record past it is a bad one, as the source makes it.
    let mut small = pipeline.clone();
    small["kafka"]["properties"] = serde_json::json!({ "message.max.bytes": "1000" });
    std::fs::write(dir.path().join("p.json"), small.to_string()).unwrap();
    let long = format!("id,amount,note\n1,5,a\n2,6,{}\n", "x".repeat(2000));
    std::fs::write(dir.path().join("in.csv"), long).unwrap();
    let out = sluice_tests::cli::sluice(dir.path(), &["transform", "test", "--pipeline", "p.json"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "{\"id\":1,\"amount\":5,\"note\":\"a\"}\n"
    );
    assert!(
        stderr.contains("record 2 (line 3): bad row (too_large)"),
        "{stderr}"
    );
    // Not for JSON Lines, which has its own null.
    std::fs::write(dir.path().join("in.jsonl"), "{\"id\":1}\n").unwrap();
    let args = ["transform", "test", "--component", guests::PASSTHROUGH];
    let out = sluice_tests::cli::sluice(
        dir.path(),
        &[&args[..], &["--input", "in.jsonl", "--null-if", "NULL"]].concat(),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--null-if and --infer-rows apply to CSV input"),
        "{stderr}"
    );
}

/// A guest's stdout and stderr go nowhere unless `--debug-stdio` is given, and then to sluice's
/// stderr: never into the JSONL rows on stdout.
#[test]
fn cli_test_discards_guest_stdio_unless_asked() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("in.jsonl"), "{\"id\":1}\n").unwrap();
    for debug_stdio in [false, true] {
        let mut args = vec!["transform", "test", "--component", guests::PROBE];
        args.extend(["--input", "in.jsonl"]);
        if debug_stdio {
            args.push("--debug-stdio");
        }
        let out = sluice_tests::cli::sluice(dir.path(), &args);
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        assert!(out.status.success(), "{stderr}");
        assert_eq!(stdout, "{\"env\":0,\"fs\":false,\"net\":false}\n");
        for line in ["[probe] probe stdout", "[probe] probe stderr"] {
            assert_eq!(stderr.contains(line), debug_stdio, "{line:?} in: {stderr}");
        }
    }
}

/// An instance rebuilt because its memory reached `memory_mb` (the one way one that did nothing
/// wrong is lost mid-run, and its state with it) is logged, once: the records still come out.
#[test]
fn cli_test_says_when_an_instance_is_rebuilt_at_its_memory_limit() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("in.jsonl"),
        "{\"leak_kb\":1024}\n".repeat(20),
    )
    .unwrap();
    let args = [
        "transform",
        "test",
        "--component",
        guests::PROBE,
        "--input",
        "in.jsonl",
    ];
    let more = ["--memory-mb", "8", "--batch-size", "1"];
    let out = sluice_tests::cli::sluice(dir.path(), &[&args[..], &more].concat());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 20);
    assert_eq!(
        stderr
            .matches("WARN sluice::transform::runtime: transform probe's instance reached its memory limit (8 MiB) after ")
            .count(),
        1,
        "{stderr}"
    );
    // A record that needs more than the limit on its own, after others: quarantined, and the
    // instance is not blamed.
    let lines = ["{\"leak_kb\":1}\n"; 3].concat() + "{\"leak_kb\":16384}\n{\"leak_kb\":1}\n";
    std::fs::write(dir.path().join("in.jsonl"), lines).unwrap();
    let out = sluice_tests::cli::sluice(dir.path(), &[&args[..], &more].concat());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 4);
    assert!(
        stderr.contains("record 4 (line 4): probe failed (memory)"),
        "{stderr}"
    );
    assert!(!stderr.contains("reached its memory limit"), "{stderr}");
}

/// A guest that ends its process mid-call (`std::process::exit`) fails that record as a trap, and
/// the message does not make up an exit code: WASI 0.2 passes only success or failure.
#[test]
fn cli_test_a_guest_exiting_fails_its_record_alone() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("in.jsonl"),
        "{\"id\":1}\n{\"exit\":3}\n{\"exit\":0}\n{\"id\":2}\n",
    )
    .unwrap();
    let args = ["transform", "test", "--component", guests::PROBE];
    let out =
        sluice_tests::cli::sluice(dir.path(), &[&args[..], &["--input", "in.jsonl"]].concat());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 2);
    assert!(
        stderr.contains(
            "record 2 (line 2): probe failed (trap): the guest exited with a failure status \
             (a process exit, such as std::process::exit; WASI 0.2 passes no exit code)"
        ),
        "{stderr}"
    );
    assert!(
        stderr.contains(
            "record 3 (line 3): probe failed (trap): the guest exited (with success) in the \
             middle of the call"
        ),
        "{stderr}"
    );
}

/// What a guest's host calls cost is bounded and charged: one `wasi:random` call may ask for at
/// most 64 KiB (wasmtime's default, 64 MiB, is host memory outside `memory_mb`), one write to
/// stderr may not pass what `check-write` grants, and the CPU a host call spends counts toward
/// `timeout_ms` even when the call spans the batch call's first epoch tick (60,000 lines written
/// under `--debug-stdio` in one call take far more than 5 ms).
#[test]
fn cli_test_host_calls_are_bounded_and_charged() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("in.jsonl"),
        [
            r#"{"random_bytes":16}"#,
            r#"{"random_bytes":1048576}"#,
            r#"{"write_newlines":100000}"#,
            r#"{"write_newlines":10}"#,
            "",
        ]
        .join("\n"),
    )
    .unwrap();
    let args = ["transform", "test", "--component", guests::PROBE];
    let out =
        sluice_tests::cli::sluice(dir.path(), &[&args[..], &["--input", "in.jsonl"]].concat());
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stderr}");
    assert_eq!(stdout.lines().count(), 2, "{stdout}");
    assert!(
        stderr.contains("record 2 (line 2): probe failed (trap): ")
            && stderr.contains("requested len 1048576 exceeds limit 65536"),
        "{stderr}"
    );
    assert!(
        stderr.contains("record 3 (line 3): probe failed (trap): ")
            && stderr.contains("wrote 100000 bytes at once to stdout or stderr"),
        "{stderr}"
    );
    assert!(stderr.contains("2 failed (2 trap)"), "{stderr}");

    std::fs::write(dir.path().join("in.jsonl"), "{\"write_newlines\":60000}\n").unwrap();
    let more = ["--input", "in.jsonl", "--debug-stdio", "--timeout-ms", "5"];
    let out = sluice_tests::cli::sluice(dir.path(), &[&args[..], &more].concat());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr:.2000}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "");
    assert!(
        stderr.contains("record 1 (line 1): probe failed (timeout)"),
        "{}",
        stderr.trim()
    );
}

/// When a batch fails and its records are run again one at a time to find the one to blame, what
/// the guest writes in that re-run is marked as such: the record whose output shows twice was
/// not processed twice.
#[test]
fn cli_test_marks_debug_output_of_a_rerun_record() {
    let dir = tempfile::tempdir().unwrap();
    // The second record blocks on a sleep, which fails its batch and then it alone. A minute,
    // not a millisecond: a deadline already past when the guest polls it does not block (a
    // loaded machine took that long between the two), and nothing waits for it anyway.
    std::fs::write(
        dir.path().join("in.jsonl"),
        "{\"id\":1}\n{\"sleep_ms\":60000}\n",
    )
    .unwrap();
    let args = ["transform", "test", "--component", guests::PROBE];
    let args = [&args[..], &["--input", "in.jsonl", "--debug-stdio"]].concat();
    let out = sluice_tests::cli::sluice(dir.path(), &args);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(
        stdout, "{\"env\":0,\"fs\":false,\"net\":false}\n",
        "{stderr}"
    );
    assert!(stderr.contains("record 2 (line 2)"), "{stderr}");
    assert!(stderr.contains("tried to wait"), "{stderr}");
    assert_eq!(
        stderr.matches("[probe] probe stdout\n").count(),
        1,
        "{stderr}"
    );
    assert_eq!(
        stderr
            .matches("[probe, re-run alone] probe stdout\n")
            .count(),
        1,
        "{stderr}"
    );

    // The second record fails only on an instance that has seen a row before it: run alone
    // after the first, it fails again, and then passes on a fresh instance, which its output
    // says.
    std::fs::write(
        dir.path().join("in.jsonl"),
        "{\"id\":1}\n{\"fail_after\":1}\n",
    )
    .unwrap();
    let out = sluice_tests::cli::sluice(dir.path(), &args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).lines().count(),
        2,
        "{stderr}"
    );
    for (said, times) in [
        ("[probe] probe stdout\n", 1),
        ("[probe, re-run alone] probe stdout\n", 1),
        ("[probe, again on a fresh instance] probe stdout\n", 1),
    ] {
        assert_eq!(
            stderr.matches(said).count(),
            times,
            "{said:?} in:\n{stderr}"
        );
    }
}

/// A guest that writes during `init` under `--debug-stdio` is shown (it used to wait forever for
/// the stderr lock `transform test` held), and a guest that panics says why, with or without it:
/// the panic message is in the failure's reason.
#[test]
fn cli_test_shows_what_a_guest_wrote_and_why_it_panicked() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("in.jsonl"), "{\"id\":1}\n").unwrap();
    let run = |with: &str, debug_stdio: bool| {
        let mut args = vec!["transform", "test", "--component", guests::PROBE];
        args.extend(["--input", "in.jsonl", "--with", with]);
        if debug_stdio {
            args.push("--debug-stdio");
        }
        let out = sluice_tests::cli::sluice(dir.path(), &args);
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, stdout, stderr) = run("say=hello from init", true);
    assert_eq!(code, Some(0), "{stderr}");
    // Once: the instance whose `init` was checked is the one that runs the rows.
    assert_eq!(
        stderr.matches("[probe] hello from init\n").count(),
        1,
        "{stderr}"
    );
    assert_eq!(stdout, "{\"env\":0,\"fs\":false,\"net\":false}\n");
    let (_, _, stderr) = run("say=hello from init", false);
    assert!(!stderr.contains("hello from init"), "{stderr}");
    for debug_stdio in [false, true] {
        let (code, _, stderr) = run("panic=no config for you", debug_stdio);
        assert_eq!(code, Some(2), "{stderr}");
        assert!(
            stderr.contains(
                "init of transform probe failed: wasm trap: wasm `unreachable` \
                 instruction executed (the guest wrote: panicked at"
            ),
            "{stderr}"
        );
        assert!(stderr.contains(": no config for you)"), "{stderr}");
    }
}

/// A mismatch names the output row, its line in the golden file and the input record that made
/// it, so that an author can find all three.
#[test]
fn cli_test_expect_detects_a_mismatch() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    };
    let input = write(
        "in.jsonl",
        "{\"id\":1,\"name\":\"ada\"}\n\n{\"id\":2,\"name\":\"bob\"}\n",
    );
    let good = write(
        "good.jsonl",
        "{\"id\":1,\"name\":\"ADA\"}\n{\"id\":2,\"name\":\"BOB\"}\n",
    );
    // A blank line first, so that the golden line is not the row number.
    let bad = write(
        "bad.jsonl",
        "\n{\"id\":1,\"name\":\"ADA\"}\n{\"id\":2,\"name\":\"Bob\"}\n",
    );
    let short = write("short.jsonl", "{\"id\":1,\"name\":\"ADA\"}\n");
    let run = |expect: &str| {
        let args = [
            "transform",
            "test",
            "--component",
            guests::ENRICH,
            "--input",
            &input,
            "--with",
            "uppercase=name",
            "--expect",
            expect,
        ];
        let out = sluice_tests::cli::sluice(dir.path(), &args);
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, stderr) = run(&good);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("ok: 2 rows match"), "{stderr}");
    let (code, stderr) = run(&bad);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(
            "row 2 (golden line 3; from record 2, input line 3): expected \
             {\"id\":2,\"name\":\"Bob\"}, got {\"id\":2,\"name\":\"BOB\"}\n  \
             differs in \"name\": expected \"Bob\", got \"BOB\"\n"
        ),
        "{stderr}"
    );
    let (code, stderr) = run(&short);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(
            "expected 1 row, got 2 (first extra: {\"id\":2,\"name\":\"BOB\"}; from record 2, \
             input line 3)"
        ),
        "{stderr}"
    );
}

/// One row missing from a golden file, or one extra in it, makes every later row differ; the
/// report says which it looks like, from the pair after the first difference.
#[test]
fn cli_test_expect_says_when_rows_look_shifted_by_one() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    };
    let names = ["ada", "bob", "cy", "dee"];
    let line = |id: usize, name: &str| format!("{{\"id\":{id},\"name\":\"{name}\"}}\n");
    let input: String = (names.iter().enumerate())
        .map(|(i, n)| line(i + 1, n))
        .collect();
    let input = write("in.jsonl", &input);
    let golden = |rows: &[(usize, &str)]| -> String {
        rows.iter()
            .map(|(id, n)| line(*id, &n.to_uppercase()))
            .collect()
    };
    let run = |expect: &str| {
        let args = [
            "transform",
            "test",
            "--component",
            guests::ENRICH,
            "--input",
            &input,
        ];
        let args = [&args[..], &["--with", "uppercase=name", "--expect", expect]].concat();
        let out = sluice_tests::cli::sluice(dir.path(), &args);
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // The golden file has a row the run does not make.
    let more = write(
        "more.jsonl",
        &golden(&[(1, "ada"), (9, "xavier"), (2, "bob"), (3, "cy"), (4, "dee")]),
    );
    let (code, stderr) = run(&more);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(
            "in all: 3 of 4 rows compared differ; expected 5 rows, got 4\n  golden line 2 looks \
             missing from the output: row 2 is the golden file's next row"
        ),
        "{stderr}"
    );
    // The golden file lacks a row the run makes.
    let fewer = write("fewer.jsonl", &golden(&[(1, "ada"), (3, "cy"), (4, "dee")]));
    let (code, stderr) = run(&fewer);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(
            "in all: 2 of 3 rows compared differ; expected 3 rows, got 4\n  row 2 looks extra: \
             the next row the run made is golden line 2"
        ),
        "{stderr}"
    );
    // A row that only differs says nothing of the kind.
    let other = write(
        "other.jsonl",
        &golden(&[(1, "ada"), (2, "bobby"), (3, "cy"), (4, "dee")]),
    );
    let (code, stderr) = run(&other);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("in all: 1 of 4 rows compared differs"),
        "{stderr}"
    );
    assert!(!stderr.contains("looks"), "{stderr}");
}

/// A transform that breaks only on batches of several rows (a bug in its batch loop) has every
/// record come out right, since each row runs again alone: `transform test` says so, and under
/// `--expect` it fails, for `sluice run` would run every batch twice.
#[test]
fn cli_test_fails_a_transform_broken_only_on_batches() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("in.jsonl"),
        "{\"id\":1}\n{\"id\":2}\n{\"id\":3}\n{\"id\":4}\n",
    )
    .unwrap();
    let golden = "{\"id\":1}\n{\"id\":2}\n{\"id\":3}\n{\"id\":4}\n";
    std::fs::write(dir.path().join("golden.jsonl"), golden).unwrap();
    std::fs::write(
        dir.path().join("poisoned.jsonl"),
        "{\"id\":1}\n{\"id\":2}\n{\"id\":13}\n{\"id\":4}\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("unpoisoned.jsonl"),
        "{\"id\":1}\n{\"id\":2}\n{\"id\":4}\n",
    )
    .unwrap();
    let run = |how: &str, input: &str, extra: &[&str]| {
        let with = format!("batches={how}");
        let mut args = vec!["transform", "test", "--component", guests::POISON_MISCOUNT];
        args.extend(["--with", &with, "--input", input]);
        args.extend(extra);
        let out = sluice_tests::cli::sluice(dir.path(), &args);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        (
            out.status.code(),
            String::from_utf8(out.stdout).unwrap(),
            stderr,
        )
    };
    for (how, kind, why) in [
        ("trap", "trap", "a batch of 3 rows"),
        (
            "miscount",
            "protocol",
            "returned 0 outcomes for 3 input rows",
        ),
    ] {
        // Batches of 3 and 1: the first breaks, and its rows run again alone.
        let (code, stdout, stderr) = run(
            how,
            "in.jsonl",
            &["--batch-size", "3", "--expect", "golden.jsonl"],
        );
        assert_eq!(code, Some(1), "{how}: {stderr}");
        assert_eq!(stdout, golden, "{how}: every row still comes out right");
        assert!(stderr.contains("ok: 4 rows match"), "{how}: {stderr}");
        assert!(
            stderr.contains(
                "transform  poison_miscount: 4 in, 4 out, 0 dropped, 0 failed, 1 batch call \
                 broke only as a batch"
            ),
            "{how}: {stderr}"
        );
        assert!(
            stderr.contains(&format!(
                "transform poison_miscount failed on a batch of 3 rows ({kind}: "
            )) && stderr.contains(why),
            "{how}: {stderr}"
        );
        assert!(
            stderr.contains(
                "mismatch: transform poison_miscount broke on 1 batch call only as a batch; the \
                 rows match only because each ran again alone"
            ),
            "{how}: {stderr}"
        );
        // Without a golden file it is a warning: the run itself went fine.
        let (code, stdout, stderr) = run(how, "in.jsonl", &[]);
        assert_eq!(code, Some(0), "{how}: {stderr}");
        assert_eq!(stdout, golden);
        assert!(
            stderr.contains("1 batch call broke only as a batch"),
            "{how}: {stderr}"
        );
        // A row at a time, nothing breaks.
        let (code, _, stderr) = run(
            how,
            "in.jsonl",
            &["--batch-size", "1", "--expect", "golden.jsonl"],
        );
        assert_eq!(code, Some(0), "{how}: {stderr}");
        assert!(!stderr.contains("batch call"), "{how}: {stderr}");
        // A poison record in the batch, failing alone as the batch does, does not hide it: the
        // other rows run together once more.
        let poisoned = ["--expect", "unpoisoned.jsonl"];
        let failure = format!("{{\"record\":3,\"kind\":\"{kind}\"}}\n");
        std::fs::write(dir.path().join("failure.jsonl"), failure).unwrap();
        let (code, stdout, stderr) = run(
            how,
            "poisoned.jsonl",
            &[&poisoned[..], &["--expect-failures", "failure.jsonl"]].concat(),
        );
        assert_eq!(code, Some(1), "{how}: {stderr}");
        assert_eq!(stdout, "{\"id\":1}\n{\"id\":2}\n{\"id\":4}\n");
        assert!(stderr.contains("ok: 3 rows match"), "{how}: {stderr}");
        assert!(
            stderr.contains("ok: 1 failed record matches"),
            "{how}: {stderr}"
        );
        assert!(
            stderr.contains("mismatch: transform poison_miscount broke on 1 batch call"),
            "{how}: {stderr}"
        );
    }
    // A transform that only fails on its poison record is not taken for one broken on batches.
    std::fs::write(
        dir.path().join("trap.jsonl"),
        "{\"record\":3,\"kind\":\"trap\"}\n",
    )
    .unwrap();
    let args = ["transform", "test", "--component", guests::POISON_TRAP];
    let files = [
        "--expect",
        "unpoisoned.jsonl",
        "--expect-failures",
        "trap.jsonl",
    ];
    let args = [&args[..], &["--input", "poisoned.jsonl"], &files].concat();
    let out = sluice_tests::cli::sluice(dir.path(), &args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("batch call"), "{stderr}");
}

/// Under `--expect`, a record that fails fails the test even when the rows match (a trap in a
/// record the chain would have dropped anyway must not pass silently), unless an
/// `--expect-failures` file lists it; that file is matched field by field, `reason` by part.
#[test]
fn cli_test_failed_records_fail_expect_unless_expected() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        std::fs::write(dir.path().join(name), text).unwrap();
        name.to_owned()
    };
    // The trap guest panics on id 13 and passes the rest; the CSV's line 4 is ragged.
    let input = write("in.csv", "id,name\n12,a\n13,b\n14,c,extra\n15,d\n");
    let rows = write(
        "rows.jsonl",
        "{\"id\":12,\"name\":\"a\"}\n{\"id\":15,\"name\":\"d\"}\n",
    );
    let run = |goldens: &[&str]| {
        let mut args = vec!["transform", "test", "--component", guests::POISON_TRAP];
        args.extend(["--input", &input, "--expect", &rows]);
        for g in goldens {
            args.extend(["--expect-failures", g]);
        }
        let out = sluice_tests::cli::sluice(dir.path(), &args);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        (out.status.code(), stderr)
    };

    let (code, stderr) = run(&[]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("ok: 2 rows match"), "{stderr}");
    assert!(
        stderr.contains("mismatch: 2 records failed and no --expect-failures file expects"),
        "{stderr}"
    );
    assert!(
        stderr.contains("the first: record 2 (line 3), stage transform:poison_trap, kind trap:"),
        "{stderr}"
    );

    let both = write(
        "failures.jsonl",
        "{\"record\":2,\"line\":3,\"kind\":\"trap\",\"reason\":\"unreachable\",\
         \"stage\":\"transform:poison-trap\"}\n\
         {\"line\":4,\"stage\":\"source\",\"kind\":\"ragged_row\"}\n",
    );
    let (code, stderr) = run(&[&both]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("ok: 2 failed records match"), "{stderr}");

    for (golden, code_wanted, says) in [
        (
            "{\"line\":3,\"kind\":\"timeout\"}\n{\"line\":4}\n",
            1,
            "failed record 1 (golden line 1): expected {\"line\":3,\"kind\":\"timeout\"}, got record 2 (line 3)",
        ),
        (
            "{\"reason\":\"unreachable\"}\n{\"stage\":\"transform:poison-trap\"}\n",
            1,
            "failed record 2 (golden line 2): expected {\"stage\":\"transform:poison-trap\"}, got record 3 (line 4), stage source, kind ragged_row",
        ),
        // A stage the run does not have would only ever be a mismatch.
        (
            "{\"line\":3}\n{\"stage\":\"transform:poison-trp\"}\n",
            2,
            "golden-failures.jsonl:2: stage \"transform:poison-trp\" is not a stage of this run; \
             it has: source, consume, transform:poison_trap",
        ),
        (
            "{\"stage\":\"poison_trap\"}\n",
            2,
            "golden-failures.jsonl:1: stage \"poison_trap\" is not a stage of this run (did you \
             mean \"transform:poison_trap\"?)",
        ),
        (
            "{\"line\":3}\n",
            1,
            "expected 1 failed record, got 2 (first extra: record 3 (line 4)",
        ),
        (
            "{\"line\":3}\n{\"line\":4}\n{\"line\":5}\n",
            1,
            "expected 3 failed records, got 2 (first missing, golden line 3: {\"line\":5})",
        ),
        ("{\"line\":3,\"knd\":\"trap\"}\n", 2, "unknown field `knd`"),
        (
            "{\"line\":3,\"kind\":\"guest_eror\"}\n",
            2,
            "golden-failures.jsonl:1: kind \"guest_eror\" is not a failure kind (one of: \
             guest_error, trap, timeout, memory, fuel, protocol, output_limit, ragged_row, \
             invalid_utf8, parse, too_large, unclosed_quote, decode)",
        ),
        // serde would read a struct from an array by position; a golden file holds objects.
        (
            "[2,3,\"transform:poison_trap\",\"trap\",\"unreachable\"]\n",
            2,
            "golden-failures.jsonl:1: not what a golden file holds (one JSON object per line): \
             it is not a JSON object",
        ),
        (
            "{\"kind\":\"trap\",\"kind\":\"parse\"}\n",
            2,
            "duplicate field `kind`",
        ),
    ] {
        let golden = write("golden-failures.jsonl", golden);
        let (code, stderr) = run(&[&golden]);
        assert_eq!(code, Some(code_wanted), "{golden}: {stderr}");
        assert!(stderr.contains(says), "{says}: {stderr}");
    }
}

/// `--expect-failures` matches a guest's typed error by its WIT `case` and the `field` it names,
/// as the dead letter's `error` holds them; a mismatch shows both, and a misspelt case is a usage
/// error rather than a mismatch.
#[test]
fn cli_test_matches_a_guest_error_by_case_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        std::fs::write(dir.path().join(name), text).unwrap();
        name.to_owned()
    };
    // The trap guest rejects a row with a `reject` field (`invalid-value`, naming it).
    let input = write(
        "in.jsonl",
        "{\"id\":1}\n{\"id\":2,\"reject\":true}\n{\"id\":3}\n",
    );
    for (golden, code_wanted, says) in [
        (
            "{\"record\":2,\"kind\":\"guest_error\",\"case\":\"invalid-value\",\"field\":\"reject\"}\n",
            0,
            "ok: 1 failed record matches",
        ),
        (
            "{\"case\":\"missing-field\"}\n",
            1,
            "expected {\"case\":\"missing-field\"}, got record 2 (line 2), stage \
             transform:poison_trap, kind guest_error, case invalid-value, field reject: ",
        ),
        (
            "{\"case\":\"invalid-value\",\"field\":\"id\"}\n",
            1,
            "expected {",
        ),
        // `null` is a value to match (no field named in the error), not "any".
        (
            "{\"record\":2,\"field\":null}\n",
            1,
            "expected {\"record\":2,\"field\":null}, got record 2",
        ),
        (
            "{\"line\":null,\"kind\":\"guest_error\"}\n",
            2,
            "golden-failures.jsonl:1: `line` is null; give the value it must have, or leave the \
             key out to match any",
        ),
        (
            "{\"kind\":\"trap\",\"field\":\"reject\"}\n",
            2,
            "golden-failures.jsonl:1: `field` is a guest's typed error, which only kind \
             \"guest_error\" has, not \"trap\"",
        ),
        // Either spelling of a kind or a case, as for stages.
        (
            "{\"kind\":\"guest-error\",\"case\":\"invalid_value\"}\n",
            0,
            "ok: 1 failed record matches",
        ),
        (
            "{\"case\":\"invalid\"}\n",
            2,
            "golden-failures.jsonl:1: case \"invalid\" is not a case of the WIT's \
             transform-error (one of: invalid-param, missing-field, invalid-value, other)",
        ),
    ] {
        let golden = write("golden-failures.jsonl", golden);
        let args = [
            "transform",
            "test",
            "--component",
            guests::POISON_TRAP,
            "--input",
            &input,
            "--expect-failures",
            &golden,
        ];
        let out = sluice_tests::cli::sluice(dir.path(), &args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code_wanted), "{golden}: {stderr}");
        assert!(stderr.contains(says), "{says}: {stderr}");
    }
    // An error that names no field (`other`) is what `"field": null` matches.
    let renamed = write("renamed.jsonl", "{\"name\":\"a\",\"customer\":\"b\"}\n");
    let golden = write(
        "other.jsonl",
        "{\"record\":1,\"case\":\"other\",\"field\":null}\n",
    );
    let args = [
        "transform",
        "test",
        "--component",
        guests::ENRICH,
        "--with",
        "rename=name:customer",
        "--input",
        &renamed,
        "--expect-failures",
        &golden,
    ];
    let out = sluice_tests::cli::sluice(dir.path(), &args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("ok: 1 failed record matches"), "{stderr}");
}

/// A file whose every record is bad runs nothing through the transforms: said, as for a file with
/// no records at all, rather than ending on counts of zero.
#[test]
fn cli_test_warns_when_no_record_reached_the_transforms() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("in.csv"), "a,b\n1\n3\n").unwrap();
    let args = ["transform", "test", "--component", guests::PASSTHROUGH];
    let out = sluice_tests::cli::sluice(dir.path(), &[&args[..], &["--input", "in.csv"]].concat());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains(
            "warning: none of the 2 records of in.csv ran through the transforms: every one \
             failed before them"
        ),
        "{stderr}"
    );
}

/// A golden file that matches rows the sink would set aside is a mismatch: the test would pass
/// a transform whose rows are dead-lettered in every run. Not so for rows whose input was
/// already such a row (see `cli_test_jsonl_keeps_the_digits_of_big_integers`).
#[test]
fn cli_test_expect_fails_on_rows_the_sink_sets_aside() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("in.jsonl"), "{\"id\":1,\"a\":2}\n").unwrap();
    let run = |rename: &str, extra: &[&str]| {
        let with = format!("rename=a:{rename}");
        let mut args = vec!["transform", "test", "--component", guests::ENRICH];
        args.extend(["--input", "in.jsonl", "--with", &with]);
        args.extend(extra);
        sluice_tests::cli::sluice(dir.path(), &args)
    };
    for (rename, sets_aside) in [("ID", true), ("b", false)] {
        let out = run(rename, &[]);
        assert!(out.status.success());
        std::fs::write(dir.path().join("golden.jsonl"), &out.stdout).unwrap();
        let out = run(rename, &["--expect", "golden.jsonl"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("ok: 1 row matches"), "{stderr}");
        assert_eq!(out.status.success(), !sets_aside, "{stderr}");
        assert_eq!(
            stderr.contains(
                "mismatch: 1 output row a run may set aside (the warnings above say which, and \
                 why), though they match"
            ),
            sets_aside,
            "{stderr}"
        );
    }
}

/// JSONL input is typed as the consumer types a plain JSON message: an integer past `int` keeps
/// its digits as text, as the CSV source keeps such a column, instead of being rounded through a
/// float; nested JSON keeps its exact text. Floats are read exactly on both sides of `--expect`:
/// the golden copy of a run's own output matches it, even for a float that a fast, inexact
/// parser reads one bit off (`1.0715660391465826e-75`).
#[test]
fn cli_test_jsonl_keeps_the_digits_of_big_integers() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("in.jsonl"),
        "{\"id\":18446744073709551615,\"n\":-99999999999999999999,\"o\":{\"u\":18446744073709551615},\
         \"v\":1.5,\"f\":1.0715660391465826e-75,\"v\":\"x\"}\n",
    )
    .unwrap();
    let run = |extra: &[&str]| {
        let mut args = vec!["transform", "test", "--component", guests::PASSTHROUGH];
        args.extend(["--input", "in.jsonl"]);
        args.extend(extra);
        sluice_tests::cli::sluice(dir.path(), &args)
    };
    let out = run(&[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        stdout,
        "{\"id\":\"18446744073709551615\",\"n\":\"-99999999999999999999\",\
         \"o\":{\"u\":18446744073709551615},\"v\":1.5,\"f\":1.0715660391465826e-75,\"v\":\"x\"}\n"
    );
    // The run's own output as golden file, then the same members in another order: both match.
    // Without the second `v`, or with the two `v`s swapped, the row differs.
    let reordered = "{\"v\":1.5,\"f\":1.0715660391465826e-75,\"id\":\"18446744073709551615\",\
                     \"n\":\"-99999999999999999999\",\"o\":{\"u\":18446744073709551615},\"v\":\"x\"}";
    let one_v = stdout.trim().replace(",\"v\":\"x\"", "");
    let swapped = stdout
        .trim()
        .replace("\"v\":1.5", "\"v\":\"@\"")
        .replace("\"v\":\"x\"", "\"v\":1.5")
        .replace("\"v\":\"@\"", "\"v\":\"x\"");
    for (golden, matches) in [
        (stdout.trim(), true),
        (reordered, true),
        (&one_v, false),
        (&swapped, false),
    ] {
        std::fs::write(dir.path().join("golden.jsonl"), golden).unwrap();
        let out = run(&["--expect", "golden.jsonl"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.success(), matches, "{golden}: {stderr}");
        if matches {
            assert!(stderr.contains("ok: 1 row matches"), "{stderr}");
        }
    }
}

/// `transform test | head`: once its reader closes stdout, with nothing to compare the run stops
/// after that batch, as `cat` would, and says so with its counts. With a golden file the output
/// goes nowhere but the run goes on, so the counts, the `--expect` verdict and the exit code are
/// those of the whole input. No "Broken pipe" error shows. A closed stderr is borne the same way.
#[test]
fn cli_test_stops_or_runs_to_the_end_when_stdout_closes() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let data = sluice_tests::cli::workspace_root().join("data/data.csv");
    let data = data.to_str().unwrap();
    let args = [
        "transform",
        "test",
        "--component",
        guests::PASSTHROUGH,
        "--input",
        data,
    ];
    let full = sluice_tests::cli::sluice(dir.path(), &args);
    assert!(full.status.success());
    std::fs::write(dir.path().join("golden.jsonl"), &full.stdout).unwrap();
    let first = full.stdout.split(|&b| b == b'\n').next().unwrap();
    std::fs::write(dir.path().join("short.jsonl"), first).unwrap();
    for (golden, code) in [
        (None, 0),
        (Some("golden.jsonl"), 0),
        (Some("short.jsonl"), 1),
    ] {
        // 3000 rows print more than a pipe buffer holds, so sluice is still writing when the
        // reader goes.
        let mut child = std::process::Command::new(sluice_tests::cli::sluice_bin())
            .args(args)
            .args(golden.map(|g| ["--expect", g]).into_iter().flatten())
            .current_dir(dir.path())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(line.starts_with("{\"id\":1,"), "{line}");
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{golden:?}: {stderr}");
        match golden {
            // The first batch's rows (1024 of them) fill more than a pipe holds: the write that
            // finds the reader gone is that batch's.
            None => {
                assert!(
                    stderr.contains("input  stopped after record 1024: the output was closed"),
                    "{stderr}"
                );
                assert!(stderr.contains(": 1024 in, 1024 out"), "{stderr}");
            }
            Some(_) => assert!(stderr.contains(": 3000 in, 3000 out"), "{stderr}"),
        }
        assert!(!stderr.contains("error"), "{stderr}");
        if code == 1 {
            assert!(stderr.contains("expected 1 row, got 3000"), "{stderr}");
        }

        // The same with stderr closed from the start (`2>&1 | head -0`): no panic, same code.
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = std::process::Command::new(sluice_tests::cli::sluice_bin())
            .args(args)
            .args(golden.map(|g| ["--expect", g]).into_iter().flatten())
            .current_dir(dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(writer)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(code), "{golden:?}, stderr closed");
    }
}

/// `transform test` runs rows as it reads them, so an input of any size runs in bounded memory,
/// and a batch runs as soon as a piped input pauses: with a FIFO that has sent two rows, at the
/// default batch size, the kept row comes out while the pipe is still open; once the rest is
/// written and the pipe closed, the run ends with them all.
#[test]
fn cli_test_streams_its_input() {
    use std::sync::mpsc;
    use std::time::Duration;
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("rows.jsonl");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success(), "mkfifo");
    let child = filter_over(fifo.as_os_str(), &[]);
    // Opening a pipe waits for its reader: open it on a thread, so that a sluice that never
    // opens it fails the test instead of hanging it.
    let (opened, writer) = mpsc::channel();
    let path = fifo.clone();
    std::thread::spawn(move || {
        let _ = opened.send(std::fs::OpenOptions::new().write(true).open(path));
    });
    let writer = writer
        .recv_timeout(Duration::from_secs(120))
        .expect("sluice opens its input")
        .unwrap();
    let (rest, stderr) = feed_while_open(
        child,
        writer,
        "{\"n\":1,\"value\":60}\n{\"n\":2,\"value\":40}\n",
        &[r#"{"n":1,"value":60}"#],
        "{\"n\":3,\"value\":10}\n{\"n\":4,\"value\":70}\n",
    );
    assert_eq!(rest, [r#"{"n":4,"value":70}"#]);
    assert!(
        stderr.contains("filter: 4 in, 2 out, 2 dropped, 0 failed"),
        "{stderr}"
    );
}

/// A `json` value whose text is not JSON prints as a string, and a VARIANT column would not take
/// it: `transform test` warns of it at its record, without failing the run.
#[test]
fn cli_test_warns_of_a_json_value_that_is_not_json() {
    let dir = tempfile::tempdir().unwrap();
    // The trap guest makes a string field `json` a json value of the same text.
    let input = "{\"id\":1,\"json\":\"[1, 2]\"}\n{\"id\":2,\"json\":\"{\\\"OK\\\":TRUE}\"}\n";
    std::fs::write(dir.path().join("in.jsonl"), input).unwrap();
    let args = ["transform", "test", "--component", guests::POISON_TRAP];
    let out =
        sluice_tests::cli::sluice(dir.path(), &[&args[..], &["--input", "in.jsonl"]].concat());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "{\"id\":1,\"json\":[1, 2]}\n{\"id\":2,\"json\":\"{\\\"OK\\\":TRUE}\"}\n"
    );
    assert!(
        stderr.contains(
            "record 2 (line 2): warning: field \"json\" is of type json but its text is not JSON \
             (expected value at line 1 column 7), so it prints as a string"
        ),
        "{stderr}"
    );
    assert_eq!(stderr.matches("warning").count(), 1, "{stderr}");
}

/// `--write-failures` writes the failed records as an `--expect-failures` file (no reasons), which
/// the next run then matches; it may not be the file the run compares with.
#[test]
fn cli_test_writes_the_failures_it_expects_next_time() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("in.jsonl"),
        "{\"value\":60}\n{\"other\":1}\n[1]\n{\"value\":\"abc\"}\n",
    )
    .unwrap();
    let args = [
        "transform",
        "test",
        "--component",
        guests::FILTER,
        "--input",
        "in.jsonl",
        "--with",
        "field=value",
        "--with",
        "op=gt",
        "--with",
        "value=50",
    ];
    let out = sluice_tests::cli::sluice(
        dir.path(),
        &[&args[..], &["--write-failures", "failures.jsonl"]].concat(),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "{\"value\":60}\n");
    let written = std::fs::read_to_string(dir.path().join("failures.jsonl")).unwrap();
    assert_eq!(
        written,
        "{\"record\":2,\"line\":2,\"stage\":\"transform:filter\",\"kind\":\"guest_error\",\
         \"case\":\"missing-field\",\"field\":\"value\"}\n\
         {\"record\":3,\"line\":3,\"stage\":\"consume\",\"kind\":\"decode\"}\n\
         {\"record\":4,\"line\":4,\"stage\":\"transform:filter\",\"kind\":\"guest_error\",\
         \"case\":\"invalid-value\",\"field\":\"value\"}\n"
    );
    let out = sluice_tests::cli::sluice(
        dir.path(),
        &[&args[..], &["--expect-failures", "failures.jsonl"]].concat(),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("ok: 3 failed records match failures.jsonl"),
        "{stderr}"
    );
    // Never a file the run reads, however it is named (a hard link too); and a run that does
    // not get through its input leaves an older file as it was.
    std::fs::write(dir.path().join("rows.jsonl"), "{\"value\":60}\n").unwrap();
    std::fs::hard_link(
        dir.path().join("failures.jsonl"),
        dir.path().join("linked.jsonl"),
    )
    .unwrap();
    let input = std::fs::read_to_string(dir.path().join("in.jsonl")).unwrap();
    let rows = "{\"value\":60}\n".to_owned();
    for (flags, refused) in [
        (
            &[
                "--expect-failures",
                "failures.jsonl",
                "--write-failures",
                "./linked.jsonl",
            ][..],
            Some("is the --expect-failures file"),
        ),
        (
            &["--expect", "rows.jsonl", "--write-failures", "rows.jsonl"],
            Some("is the --expect file"),
        ),
        (
            &["--write-failures", "in.jsonl"],
            Some("is the --input file"),
        ),
        (
            &["--write-failures", "linked.jsonl", "--with", "op=bad"],
            None,
        ),
    ] {
        let out = sluice_tests::cli::sluice(dir.path(), &[&args[..], flags].concat());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flags:?}: {stderr}");
        if let Some(refused) = refused {
            assert!(stderr.contains(refused), "{flags:?}: {stderr}");
        }
        for (file, was) in [
            ("failures.jsonl", &written),
            ("rows.jsonl", &rows),
            ("in.jsonl", &input),
        ] {
            let now = std::fs::read_to_string(dir.path().join(file)).unwrap();
            assert_eq!(&now, was, "{flags:?} changed {file}");
        }
    }
}

/// Two fields that become one Snowflake column (`Value` beside `value`) keep every row that has
/// both out of the table: `transform test` warns of it once, at the first such row.
#[test]
fn cli_test_warns_once_of_fields_that_become_one_column() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("in.csv"),
        "id,name,value\n1,a,2.5\n2,b,3.5\n",
    )
    .unwrap();
    let args = [
        "transform",
        "test",
        "--component",
        guests::ENRICH,
        "--input",
        "in.csv",
    ];
    let out = sluice_tests::cli::sluice(
        dir.path(),
        &[&args[..], &["--with", "rename=name:Value"]].concat(),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 2);
    assert!(
        stderr.contains(
            "record 1 (line 2): warning: fields \"Value\" and \"value\" become the same \
             Snowflake column, so the sink sets aside each row that has both (rename one)"
        ),
        "{stderr}"
    );
    assert_eq!(stderr.matches("warning").count(), 1, "{stderr}");
    // Names that stay apart as columns (a quoted name keeps its case) are not warned of.
    let out = sluice_tests::cli::sluice(
        dir.path(),
        &[&args[..], &["--with", "rename=name:the Value"]].concat(),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("warning"), "{stderr}");
}

/// A field whose values would not all go into one Snowflake column, whichever of them made it
/// (`20` then `9.99`, or `0.5` then `2`: a column made from ints alone is `NUMBER(38,0)`), gets
/// one warning, at the first value that shows it; values that fit either way (an integral float
/// beside ints, the same type throughout, nulls) get none.
#[test]
fn cli_test_warns_of_a_field_whose_type_changes() {
    let dir = tempfile::tempdir().unwrap();
    let input = [
        r#"{"id":1,"price":20,"ratio":0.5,"note":null,"count":3,"whole":20}"#,
        r#"{"id":2,"price":9.99,"ratio":2,"note":"x","count":4,"whole":3.0}"#,
        r#"{"id":3,"price":1.5,"ratio":3,"note":"y","count":5,"whole":7}"#,
        r#"{"id":4,"price":7,"ratio":1.5,"note":5,"count":null,"whole":1.5}"#,
    ]
    .join("\n");
    std::fs::write(dir.path().join("in.jsonl"), input + "\n").unwrap();
    let args = ["transform", "test", "--component", guests::PASSTHROUGH];
    let out =
        sluice_tests::cli::sluice(dir.path(), &[&args[..], &["--input", "in.jsonl"]].concat());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 4);
    // The types change in the input itself, which a pipeline's CSV source never does: the
    // transform passing the fields on is not warned of.
    assert!(!stderr.contains("warning"), "{stderr}");

    // A field the transform makes is checked as it comes out: int from two ints, then float.
    let input = "{\"a\":2,\"b\":3}\n{\"a\":2,\"b\":0.25}\n";
    std::fs::write(dir.path().join("ab.jsonl"), input).unwrap();
    let args = ["transform", "test", "--component", guests::ENRICH];
    let run = [
        &args[..],
        &["--input", "ab.jsonl", "--with", "compute=x=a*b"],
    ]
    .concat();
    let out = sluice_tests::cli::sluice(dir.path(), &run);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let warning = "record 2 (line 2): warning: field \"x\" is float here but was int in record 1: \
                   a Snowflake table whose column is made from rows like that one (NUMBER(38,0)) \
                   refuses this value, so a run would load it or set it aside depending on which \
                   rows came first; emit its ints as floats";
    assert!(stderr.contains(warning), "{warning}\nnot in:\n{stderr}");
    assert_eq!(stderr.matches("warning").count(), 1, "{stderr}");
}

/// A JSON Lines line past the first that is not a JSON object is a message the consumer could
/// not decode: its record fails (stage `consume`, kind `decode`) and the rest run, as a bad CSV
/// row does. A first line that is not one says the input is not JSON Lines at all (exit 2).
#[test]
fn cli_test_a_bad_json_lines_line_fails_its_record_alone() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        std::fs::write(dir.path().join(name), text).unwrap();
        name.to_owned()
    };
    let input = write("odd.jsonl", "{\"id\":1}\n{\"id\":2}\n[1]\n{\"id\":4}\n");
    let rows = write("rows.jsonl", "{\"id\":1}\n{\"id\":2}\n{\"id\":4}\n");
    let failures = write(
        "failures.jsonl",
        "{\"record\":3,\"line\":3,\"stage\":\"consume\",\"kind\":\"decode\"}\n",
    );
    let args = ["transform", "test", "--component", guests::PASSTHROUGH];
    let out = sluice_tests::cli::sluice(dir.path(), &[&args[..], &["--input", &input]].concat());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "{\"id\":1}\n{\"id\":2}\n{\"id\":4}\n"
    );
    assert!(
        stderr.contains(
            "record 3 (line 3): the consumer cannot decode its message (decode): message value \
             is not a JSON object"
        ),
        "{stderr}"
    );
    assert!(
        stderr.contains("consume  1 record not decoded, not run (sluice run dead-letters them)"),
        "{stderr}"
    );
    assert!(stderr.contains("passthrough: 3 in, 3 out"), "{stderr}");
    let golden = [
        "--input",
        &input,
        "--expect",
        &rows,
        "--expect-failures",
        &failures,
    ];
    let out = sluice_tests::cli::sluice(dir.path(), &[&args[..], &golden].concat());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("ok: 1 failed record matches"), "{stderr}");
    // The same while `--key-column` looks ahead for a row with its field.
    let keyed = write("keyed.jsonl", "{\"id\":1}\n[1]\n{\"id\":3,\"k\":\"a\"}\n");
    let keyed = ["--input", &keyed, "--key-column", "k"];
    let out = sluice_tests::cli::sluice(dir.path(), &[&args[..], &keyed].concat());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "{\"id\":1}\n{\"id\":3,\"k\":\"a\"}\n"
    );
    assert!(
        stderr.contains("record 2 (line 2): the consumer cannot decode its message (decode)"),
        "{stderr}"
    );
    let first = write("first.jsonl", "[1]\n{\"id\":2}\n");
    let out = sluice_tests::cli::sluice(dir.path(), &[&args[..], &["--input", &first]].concat());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("first.jsonl:1: not a JSON object (expected one JSON object per line)"),
        "{stderr}"
    );
    assert_eq!(out.stdout, b"");
}

/// JSON Lines read as CSV (stdin without `--format jsonl`, or a `.txt` file) would give a bad row
/// for every line: without `--format`, a first line that looks like JSON is refused, with what to
/// pass.
#[test]
fn cli_test_refuses_json_lines_read_as_csv() {
    let dir = tempfile::tempdir().unwrap();
    let rows = "{\"id\":1}\n{\"id\":2}\n";
    std::fs::write(dir.path().join("rows.txt"), rows).unwrap();
    let args = ["transform", "test", "--component", guests::PASSTHROUGH];
    let refused = "rows.txt would be read as CSV, but its first line looks like JSON: pass \
                   --format jsonl to read it as JSON Lines (or --format csv if it is CSV)";
    for (extra, code, stdout) in [
        (&["--input", "rows.txt"][..], 2, ""),
        // Said to be CSV, it is: a row of two columns named by the first line's halves.
        (
            &["--input", "rows.txt", "--format", "csv"],
            0,
            "{\"{\\\"id\\\":1}\":\"{\\\"id\\\":2}\"}\n",
        ),
        (&["--input", "rows.txt", "--format", "jsonl"], 0, rows),
    ] {
        let out = sluice_tests::cli::sluice(dir.path(), &[&args[..], extra].concat());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{extra:?}: {stderr}");
        assert_eq!(stderr.contains(refused), code == 2, "{extra:?}: {stderr}");
        assert_eq!(String::from_utf8_lossy(&out.stdout), stdout, "{extra:?}");
    }
    // Piped in, the same.
    let out = std::process::Command::new(sluice_tests::cli::sluice_bin())
        .args([&args[..], &["--input", "-"]].concat())
        .current_dir(dir.path())
        .stdin(std::fs::File::open(dir.path().join("rows.txt")).unwrap())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("<stdin> would be read as CSV, but its first line looks like JSON"),
        "{stderr}"
    );
    // Dead letters read as CSV: the message names the format they need.
    std::fs::write(dir.path().join("letters.txt"), "{\"stage\":\"source\"}\n").unwrap();
    let out = sluice_tests::cli::sluice(
        dir.path(),
        &[&args[..], &["--input", "letters.txt"]].concat(),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("its first line looks like JSON: pass --format dead-letters to run"),
        "{stderr}"
    );
}

/// `--input -` reads stdin, as CSV unless `--format jsonl` says otherwise, and runs each batch as
/// soon as the writer pauses: after the header and two rows with inference on the first, after
/// two rows when `--schema` types every column (no inference, so no read-ahead), after a row
/// followed by part of a record with a line break in a quoted field, after JSON Lines rows
/// followed by a blank line, and after a dead letter followed by one it skips.
#[test]
fn cli_test_reads_stdin_as_it_is_written() {
    // A transform's dead letter for a row whose `value` is `v`, and a bad CSV row's.
    let letter = |v: i64, stage: &str| {
        let message = sluice::source::wire::encode(&row(&[("value", Value::Int(v))]));
        let letter = sluice::dead_letter::DeadLetter {
            stage: stage.into(),
            kind: "trap".into(),
            reason: String::new(),
            source_file: None,
            source_file_id: None,
            line: None,
            origin: Some(RecordMeta {
                headers: vec![("sluice.types".into(), message.types.into_bytes())],
                ..meta(v)
            }),
            payload: message.value,
            error: None,
        };
        let text = sluice::source::dlq::encode(&letter);
        String::from_utf8(text).unwrap() + "\n"
    };
    let letters_first = letter(70, "transform:f") + &letter(71, "source");
    let letters_rest = letter(80, "transform:f");
    // Args, what is written first and must come out while stdin is open, the rest and what it
    // gives, and the counts.
    type Case<'a> = (
        &'a [&'a str],
        &'a str,
        &'a [&'a str],
        &'a str,
        &'a [&'a str],
        &'a str,
    );
    let cases: [Case; 5] = [
        (
            &["--infer-rows", "1"],
            "n,value\n1,60\n2,40\n",
            &[r#"{"n":1,"value":60}"#],
            "3,70\n",
            &[r#"{"n":3,"value":70}"#],
            "filter: 3 in, 2 out, 1 dropped, 0 failed",
        ),
        (
            &["--schema", "n=int", "--schema", "value=float"],
            "n,value\n1,60\n2,40\n",
            &[r#"{"n":1,"value":60.0}"#],
            "3,70\n",
            &[r#"{"n":3,"value":70.0}"#],
            "filter: 3 in, 2 out, 1 dropped, 0 failed",
        ),
        // A record whose quoted field has a line break, only part of it written, does not hold
        // the row before it.
        (
            &[
                "--schema",
                "n=int",
                "--schema",
                "value=float",
                "--schema",
                "note=string",
            ],
            "n,value,note\n1,60,a\n2,70,\"two\n",
            &[r#"{"n":1,"value":60.0,"note":"a"}"#],
            "lines\"\n3,80,c\n",
            &[
                r#"{"n":2,"value":70.0,"note":"two\nlines"}"#,
                r#"{"n":3,"value":80.0,"note":"c"}"#,
            ],
            "filter: 3 in, 3 out",
        ),
        (
            &["--format", "jsonl"],
            "{\"value\":70}\n{\"value\":71}\n\n",
            &[r#"{"value":70}"#, r#"{"value":71}"#],
            "{\"value\":80}\n",
            &[r#"{"value":80}"#],
            "filter: 3 in, 3 out",
        ),
        (
            &["--format", "dead-letters"],
            &letters_first,
            &[r#"{"value":70}"#],
            &letters_rest,
            &[r#"{"value":80}"#],
            "filter: 2 in, 2 out\ninput  1 dead letter skipped: from bad CSV rows",
        ),
    ];
    for (args, first, expect_first, rest, expect_rest, counts) in cases {
        let mut child = filter_over("-".as_ref(), args);
        let stdin = child.stdin.take().unwrap();
        let (out, stderr) = feed_while_open(child, stdin, first, expect_first, rest);
        assert_eq!(out, expect_rest, "{args:?}");
        for says in counts.lines() {
            assert!(stderr.contains(says), "{args:?}: {says}: {stderr}");
        }
    }
}

/// `--input -` reads the stdin it was given, not `/dev/stdin` opened again: a socket works, and a
/// redirected file is read from where its offset stands.
#[test]
fn cli_test_reads_stdin_from_a_socket_or_a_redirect_midway() {
    use std::io::{Read, Write};
    let run = |stdin: std::process::Stdio| {
        std::process::Command::new(sluice_tests::cli::sluice_bin())
            .args(["transform", "test", "--component", guests::FILTER])
            .args(["--input", "-", "--with", "field=value"])
            .args(["--with", "op=gt", "--with", "value=50"])
            .stdin(stdin)
            .output()
            .unwrap()
    };
    let (mut ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
    let writer = std::thread::spawn(move || {
        ours.write_all(b"n,value\n1,60\n2,40\n").unwrap();
    });
    let out = run(std::os::fd::OwnedFd::from(theirs).into());
    writer.join().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "{\"n\":1,\"value\":60}\n"
    );

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("in.csv");
    std::fs::write(&path, "a line to skip\nn,value\n1,60\n2,40\n").unwrap();
    let mut file = std::fs::File::open(&path).unwrap();
    let mut skipped = [0u8; 15];
    file.read_exact(&mut skipped).unwrap();
    let out = run(file.into());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "{\"n\":1,\"value\":60}\n"
    );
}

/// `transform test` of the `filter` guest (`value gt 50`) over `input`, stdin and stdout piped.
fn filter_over(input: &std::ffi::OsStr, args: &[&str]) -> std::process::Child {
    std::process::Command::new(sluice_tests::cli::sluice_bin())
        .args([
            "transform",
            "test",
            "--component",
            guests::FILTER,
            "--input",
        ])
        .arg(input)
        .args([
            "--with",
            "field=value",
            "--with",
            "op=gt",
            "--with",
            "value=50",
        ])
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// Writes `first` to a running `transform test`, checks that `expect_first` comes out while the
/// input is still open, then writes `rest` and closes the input. Returns the remaining output
/// lines and stderr, after checking that the run succeeded.
fn feed_while_open(
    mut child: std::process::Child,
    mut writer: impl std::io::Write,
    first: &str,
    expect_first: &[&str],
    rest: &str,
) -> (Vec<String>, String) {
    use std::io::BufRead;
    use std::sync::mpsc;
    use std::time::Duration;
    let (tx, lines) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let _ = tx.send(line.unwrap());
        }
    });
    writer.write_all(first.as_bytes()).unwrap();
    writer.flush().unwrap();
    for want in expect_first {
        let Ok(got) = lines.recv_timeout(Duration::from_secs(120)) else {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "{want} did not come out while the input was open: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        assert_eq!(got, *want);
    }
    writer.write_all(rest.as_bytes()).unwrap();
    drop(writer);
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    (lines.iter().collect(), stderr)
}

/// A JSON Lines line part-way that is not UTF-8, or not JSON, fails its record alone, as the
/// consumer fails such a message, and the rows after it run; `--key-column` looks `--infer-rows`
/// rows ahead for a row with its field.
#[test]
fn cli_test_jsonl_going_bad_part_way_and_key_look_ahead() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(
        &bad,
        b"{\"value\":60}\n{\"value\":70}\n{\"value\":\"\xff\"}\n{\"value\":80}\n",
    )
    .unwrap();
    let odd = dir.path().join("odd.jsonl");
    std::fs::write(
        &odd,
        "{\"value\":60}\n{\"value\":70}\nnot json\n{\"value\":80}\n",
    )
    .unwrap();
    let keyed = dir.path().join("keyed.jsonl");
    std::fs::write(&keyed, "{\"value\":60}\n{\"value\":70,\"k\":\"a\"}\n").unwrap();
    let run = |input: &std::path::Path, extra: &[&str]| {
        let mut args = vec!["transform", "test", "--component", guests::FILTER];
        args.extend(["--input", input.to_str().unwrap(), "--batch-size", "1"]);
        args.extend([
            "--with",
            "field=value",
            "--with",
            "op=gt",
            "--with",
            "value=50",
        ]);
        args.extend(extra);
        let out = sluice_tests::cli::sluice(dir.path(), &args);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        (
            out.status.code(),
            String::from_utf8(out.stdout).unwrap(),
            stderr,
        )
    };
    let (code, stdout, stderr) = run(&bad, &[]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(stdout, "{\"value\":60}\n{\"value\":70}\n{\"value\":80}\n");
    assert!(
        stderr.contains(
            "record 3 (line 3): the consumer cannot decode its message (decode): message value \
             is not valid UTF-8"
        ),
        "{stderr}"
    );
    assert!(
        stderr.contains("filter: 3 in, 3 out, 0 dropped"),
        "{stderr}"
    );
    let (code, stdout, stderr) = run(&odd, &[]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(stdout, "{\"value\":60}\n{\"value\":70}\n{\"value\":80}\n");
    assert!(
        stderr.contains("record 3 (line 3): the consumer cannot decode its message (decode)"),
        "{stderr}"
    );
    assert!(
        stderr.contains("filter: 3 in, 3 out, 0 dropped"),
        "{stderr}"
    );
    // The second row is the first with `k`.
    let (code, stdout, stderr) = run(&keyed, &["--key-column", "k", "--infer-rows", "1"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("--key-column \"k\" is not a field of any of the first 1 rows"),
        "{stderr}"
    );
    assert!(stderr.contains("--infer-rows"), "{stderr}");
    assert!(stdout.is_empty(), "no row runs first");
    let (code, stdout, stderr) = run(&keyed, &["--key-column", "k", "--infer-rows", "2"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(stdout, "{\"value\":60}\n{\"value\":70,\"k\":\"a\"}\n");
    // Without `--key-column`, `--infer-rows` means nothing for JSON Lines.
    let (code, _, stderr) = run(&keyed, &["--infer-rows", "2"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("apply to CSV input"), "{stderr}");
}

/// The rows `--key-column` holds while it looks ahead on JSON Lines are bounded by bytes as well
/// as by `--infer-rows`: wide rows without the field fail after 64 MiB, not after the whole file.
#[test]
fn cli_test_jsonl_key_look_ahead_holds_a_bounded_number_of_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let wide = dir.path().join("wide.jsonl");
    // Lines that are not JSON, after a first row: held as bad records, and quick to reject in a
    // debug build, where decoding 64 MiB of JSON takes many seconds.
    let mut text = String::from("{\"value\":60}\n");
    for _ in 0..70 {
        text.push_str(&"x".repeat(1 << 20));
        text.push('\n');
    }
    text.push_str("{\"value\":70,\"k\":\"a\"}\n");
    std::fs::write(&wide, text).unwrap();
    let args = [
        "transform",
        "test",
        "--component",
        guests::FILTER,
        "--input",
    ];
    let wide = wide.to_str().unwrap();
    let with = [
        "--with",
        "field=value",
        "--with",
        "op=gt",
        "--with",
        "value=50",
    ];
    let args: Vec<&str> = args
        .into_iter()
        .chain([wide, "--key-column", "k"])
        .chain(with)
        .collect();
    let out = sluice_tests::cli::sluice(dir.path(), &args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    // The first line and 64 of 1 MiB take the look-ahead past 64 MiB.
    assert!(
        stderr.contains("--key-column \"k\" is not a field of any of the first 65 rows"),
        "{stderr}"
    );
    assert!(stderr.contains("at most 64 MiB"), "{stderr}");
    assert!(out.stdout.is_empty(), "no row runs first");
}

/// Mistakes in how `sluice transform test` is called exit 2 with a message naming the mistake,
/// before any row runs; a run whose output differs from `--expect` exits 1.
#[test]
fn cli_test_usage_errors_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    std::fs::write(&input, "{\"value\":60}\n{\"value\":40}\n").unwrap();
    let golden = dir.path().join("golden.jsonl");
    std::fs::write(&golden, "{\"value\":40}\n").unwrap();
    let csv = dir.path().join("in.csv");
    std::fs::write(&csv, "value\n60\n").unwrap();
    // `.json` is read as JSON Lines, so a pretty-printed document fails on its first line.
    let pretty = dir.path().join("pretty.json");
    std::fs::write(&pretty, "{\n  \"value\": 60\n}\n").unwrap();
    let (input, csv) = (input.to_str().unwrap(), csv.to_str().unwrap());
    let pretty = pretty.to_str().unwrap();
    let base = [
        "transform",
        "test",
        "--component",
        guests::FILTER,
        "--input",
    ];
    let run = |extra: &[&str], input: &str| {
        let mut args = base.to_vec();
        args.push(input);
        args.extend(["--with", "field=value", "--with", "op=gt"]);
        args.extend(extra);
        sluice_tests::cli::sluice(dir.path(), &args)
    };
    for (extra, input, says) in [
        (&["--with", "value"][..], input, "is not KEY=VALUE"),
        (
            &["--with", "=50"][..],
            input,
            "--with \"=50\" is not KEY=VALUE",
        ),
        (
            &["--with", "value=50", "--with", "filter.=5"],
            input,
            "--with \"filter.=5\" is not NAME.KEY=VALUE: the key is empty",
        ),
        (
            &["--with", "value=50", "--with", "value=5"],
            input,
            "more than once",
        ),
        (
            &["--with", "value=50", "--with", "vaule=5"],
            input,
            "transform filter rejected param `vaule`",
        ),
        (
            &["--with", "value=50"],
            pretty,
            "pretty.json:1: not a JSON object (expected one JSON object per line)",
        ),
        (
            &["--with", "value=50", "--timeout-ms", "0"],
            input,
            "invalid value '0' for '--timeout-ms",
        ),
        (
            &["--with", "value=50", "--batch-size", "0"],
            input,
            "invalid value '0' for '--batch-size <BATCH_SIZE>': must be at least 1",
        ),
        (
            &["--with", "value=50", "--memory-mb", "0"],
            input,
            "invalid value '0' for '--memory-mb",
        ),
        (
            &["--with", "value=50", "--memory-mb", "4097"],
            input,
            "invalid value '4097' for '--memory-mb <MEMORY_MB>': must be at most 4096 (MiB)",
        ),
        (
            &["--with", "value=50", "--fuel", "0"],
            input,
            "invalid value '0' for '--fuel",
        ),
        (
            &["--with", "value=50", "--infer-rows", "0"],
            csv,
            "invalid value '0' for '--infer-rows",
        ),
        (
            &["--with", "value=50"],
            "/no/such/input.csv",
            "/no/such/input.csv",
        ),
        (
            &["--with", "value=50", "--expect", "/no/such/golden.jsonl"],
            input,
            "--expect: cannot open /no/such/golden.jsonl",
        ),
        (
            &["--with", "value=50", "--expect-failures", "-"],
            "-",
            "stdin (`-`) can be only one of --input, --expect and --expect-failures",
        ),
        (
            &["--with", "value=50", "--delimiter", ";;"],
            csv,
            "one ASCII character",
        ),
        (
            &["--with", "value=50", "--delimiter", "\n"],
            csv,
            "--delimiter \"\\n\" is not one ASCII character other than a quote or a line break",
        ),
        (
            &["--with", "value=50", "--delimiter", "\""],
            csv,
            "other than a quote",
        ),
        (
            &["--with", "value=50", "--schema", "value=decimal"],
            csv,
            "unknown type \"decimal\"",
        ),
        (
            &["--with", "value=50", "--schema", "value=null"],
            csv,
            "unknown type \"null\"",
        ),
        (
            &["--with", "value=50", "--delimiter", ";"],
            input,
            "apply to CSV input",
        ),
        (
            &["--with", "value=50", "--key-column", "nope"],
            input,
            "not a field of any row",
        ),
        (
            &["--with", "value=50", "--key-column", "nope"],
            csv,
            "--key-column \"nope\"",
        ),
        (
            &["--with", "value=50", "--with", "2.value=5"],
            input,
            "position 2 is out of range: there is one component (1 filter)",
        ),
    ] {
        let out = run(extra, input);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{extra:?}: {stderr}");
        assert!(stderr.contains(says), "{extra:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{extra:?}: no row runs first");
    }
    // Without --input, a chain of components has nothing to run; the usage line does not
    // show --input as required, since NAME and --pipeline bring their own.
    let out = sluice_tests::cli::sluice(dir.path(), &base[..4]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--input is required with --component (NAME and --pipeline have one)"),
        "{stderr}"
    );
    let out = sluice_tests::cli::sluice(dir.path(), &base[..2]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("Usage: sluice transform test <NAME|"),
        "{stderr}"
    );
    assert!(!stderr.contains("--input <INPUT>"), "{stderr}");
    let missing = ["transform", "test", "--component", "/no/such/thing.wasm"];
    let out = sluice_tests::cli::sluice(dir.path(), &[&missing[..], &["--input", input]].concat());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(
            "component /no/such/thing.wasm does not exist (check the path, or build it with `sluice transform build`)"
        ),
        "{stderr}"
    );
    // A build of another workspace is built with `--dir`: `transform build` alone builds only
    // ./transforms.
    let other = "ws/target/wasm32-wasip2/release/transform_x.wasm";
    let hint = |expected: &str| {
        let out = sluice_tests::cli::sluice(
            dir.path(),
            &["transform", "test", "--component", other, "--input", input],
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains(expected), "{stderr}");
    };
    // Not a workspace (a CARGO_TARGET_DIR such as ~/target): no --dir to give.
    hint("or build it with `sluice transform build`)");
    std::fs::create_dir_all(dir.path().join("ws")).unwrap();
    std::fs::write(dir.path().join("ws/Cargo.toml"), "[workspace]\n").unwrap();
    hint("or build it with `sluice transform build --dir ws`)");
    // Builds moved elsewhere are where the docs' and pipeline files' paths do not look.
    let out = std::process::Command::new(sluice_tests::cli::sluice_bin())
        .args(missing)
        .args(["--input", input])
        .env("CARGO_TARGET_DIR", "/elsewhere/target")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(
            "`sluice transform build`); CARGO_TARGET_DIR is set, so builds go to \
             /elsewhere/target, not transforms/target"
        ),
        "{stderr}"
    );

    // A golden file that is also where the output goes (`--expect g.jsonl > g.jsonl`) would be
    // compared with the run's own rows.
    let same = dir.path().join("same.jsonl");
    let out = std::process::Command::new(sluice_tests::cli::sluice_bin())
        .args(&base[..4])
        .args(["--input", input, "--with", "field=value", "--with", "op=gt"])
        .args(["--with", "value=50", "--expect", same.to_str().unwrap()])
        .stdout(std::fs::File::create(&same).unwrap())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("same.jsonl is also where this run writes its output rows (stdout)"),
        "{stderr}"
    );
    assert_eq!(std::fs::read(&same).unwrap(), b"");
    // Nor can the input be (`--input rows.jsonl >> rows.jsonl`): the run would read its own rows
    // back and never end.
    std::fs::write(&same, "{\"value\":60}\n").unwrap();
    let out = std::process::Command::new(sluice_tests::cli::sluice_bin())
        .args(&base[..4])
        .args(["--input", same.to_str().unwrap()])
        .stdout(
            std::fs::OpenOptions::new()
                .append(true)
                .open(&same)
                .unwrap(),
        )
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("same.jsonl is also where this run writes its output rows (stdout)"),
        "{stderr}"
    );
    assert_eq!(std::fs::read(&same).unwrap(), b"{\"value\":60}\n");

    let golden = golden.to_str().unwrap();
    let out = run(&["--with", "value=50", "--expect", golden], input);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "{\"value\":60}"
    );
}

/// In a chain, `--with NAME.KEY=VALUE` picks one component by name (`-` and `_` alike, as `transform
/// new my-thing` builds `transform_my_thing.wasm`) or by 1-based position; a scope that picks no
/// component or several exits 2 saying which exist, as does a param one component rejects, named
/// with that component. A `.json` input is read as JSON Lines.
#[test]
fn cli_test_scopes_with_params_in_a_chain() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("rows.json");
    std::fs::write(
        &input,
        "{\"value\":60,\"name\":\"ada\"}\n{\"value\":40,\"name\":\"bob\"}\n",
    )
    .unwrap();
    let my_thing = dir.path().join("transform_my_thing.wasm");
    std::fs::copy(guests::ENRICH, &my_thing).unwrap();
    let my_thing = my_thing.to_str().unwrap();
    let run = |components: &[&str], with: &[&str]| {
        let mut args = vec!["transform", "test", "--input", input.to_str().unwrap()];
        for c in components {
            args.extend(["--component", c]);
        }
        for w in with {
            args.extend(["--with", w]);
        }
        sluice_tests::cli::sluice(dir.path(), &args)
    };
    let filter = ["filter.field=value", "filter.op=gt", "1.value=50"];

    let mut with = filter.to_vec();
    with.push("my-thing.uppercase=name");
    let out = run(&[guests::FILTER, my_thing], &with);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "{\"value\":60,\"name\":\"ADA\"}"
    );
    assert!(
        stderr.contains("transform  my_thing: 1 in, 1 out"),
        "{stderr}"
    );

    // The same component twice is told apart by position in counts and failures.
    let twice = [
        "1.field=value",
        "1.op=gt",
        "1.value=50",
        "2.field=name",
        "2.op=gt",
        "2.value=10",
    ];
    let out = run(&[guests::FILTER, guests::FILTER], &twice);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("transform  filter#1: 2 in, 1 out, 1 dropped, 0 failed"),
        "{stderr}"
    );
    assert!(
        stderr.contains("record 1 (line 1): filter#2 failed (guest_error)"),
        "{stderr}"
    );

    for (components, scoped, says) in [
        (
            [guests::FILTER, guests::ENRICH],
            "3.uppercase=name",
            "position 3 is out of range: there are 2 components, at positions 1 to 2 \
             (1 filter, 2 enrich)",
        ),
        (
            [guests::FILTER, guests::ENRICH],
            "enrcih.uppercase=name",
            "no component is named \"enrcih\"; did you mean \"enrich\"? (components: 1 filter, \
             2 enrich)",
        ),
        (
            [guests::FILTER, guests::FILTER],
            "filter.uppercase=name",
            "\"filter\" is ambiguous, it names the components at positions 1 and 2; scope the \
             param by position instead",
        ),
        (
            [guests::FILTER, guests::ENRICH],
            "1.uppercase=name",
            "transform filter rejected param `uppercase`",
        ),
    ] {
        let mut with = filter.to_vec();
        with.push(scoped);
        let out = run(&components, &with);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{scoped}: {stderr}");
        assert!(stderr.contains(says), "{scoped}: {stderr}");
        assert!(out.stdout.is_empty(), "{scoped}: no row runs first");
    }
}

/// `transform new` with a bad, reserved or taken name, or outside a transforms workspace, and
/// `transform build` without a workspace or of an unknown transform, are usage mistakes: exit 2
/// with a message saying what to do, before anything is created or built.
#[test]
fn cli_new_and_build_usage_errors_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path().join("ws");
    std::fs::create_dir_all(ws.join("my_thing")).unwrap();
    std::fs::write(ws.join("Cargo.toml"), "[workspace]\nmembers = [\"*\"]\n").unwrap();
    // Files but no workspace (an empty or missing directory would become one).
    std::fs::create_dir_all(dir.path().join("nowhere")).unwrap();
    std::fs::write(dir.path().join("nowhere/notes.txt"), "").unwrap();
    let ws = ws.to_str().unwrap();
    let transforms = concat!(env!("CARGO_MANIFEST_DIR"), "/../transforms");
    for (args, says) in [
        (
            &["new", "9x", "--dir", ws][..],
            "invalid transform name \"9x\": use lowercase letters",
        ),
        (
            &["new", "target", "--dir", ws],
            "/target is cargo's build directory, not a transform crate; pick another name",
        ),
        (
            &["new", "template", "--dir", transforms],
            "template already exists",
        ),
        (
            &["new", "sluice_guest", "--dir", ws],
            "/sluice-guest is the guest SDK's crate, not a transform crate; pick another name",
        ),
        (
            &["new", "my-thing", "--dir", ws],
            "my_thing already exists (`-` and `_` name the same transform: both build \
             transform_my_thing.wasm); pick another name",
        ),
        (
            &["new", "shout", "--dir", "nowhere"],
            "nowhere is not a transforms workspace (no Cargo.toml): --dir names the transforms \
             workspace itself",
        ),
        (
            &["new", &"a".repeat(65), "--dir", ws],
            "invalid transform name: 65 characters, at most 64",
        ),
        (
            &["new", "shout", "--dir", ws],
            "ws is not a sluice transforms workspace: its Cargo.toml lacks `version`, \
             `edition`, `rust-version`, `license`, `publish` in [workspace.package] and \
             sluice-guest in [workspace.dependencies], which a transform crate inherits",
        ),
        (
            &["build"],
            "no transforms workspace at transforms (no Cargo.toml there): run this from the \
             directory that holds transforms/",
        ),
        (
            &["build", "shout", "--dir", transforms],
            "no transform \"shout\" (crate transform-shout) in",
        ),
    ] {
        let mut all = vec!["transform"];
        all.extend(args);
        let out = sluice_tests::cli::sluice(dir.path(), &all);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{args:?}");
    }
    let out = sluice_tests::cli::sluice(
        dir.path(),
        &["transform", "build", "shout", "--dir", transforms],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("its transforms: ") && stderr.contains("filter"),
        "{stderr}"
    );
    let entries = std::fs::read_dir(dir.path().join("ws")).unwrap().count();
    assert_eq!(entries, 2, "nothing was created");
}

/// `transform test` reads a CSV the way the pipeline's source does (BOM, delimiter, conservative
/// inference, renamed duplicate columns, ragged records reported by line rather than run) and
/// gives each row the metadata `sluice run` would give its message: the `meta` guest echoes it.
#[test]
fn cli_test_reads_csv_like_the_source_and_gives_rows_their_metadata() {
    let dir = tempfile::tempdir().unwrap();
    // `transform test` on `file` (written with `text`) through `component`: the output rows, and
    // stderr. Every case here runs to the end, bad records and all.
    let run = |file: &str, text: &str, component: &str, extra: &[&str]| {
        let input = dir.path().join(file);
        std::fs::write(&input, text).unwrap();
        let input = input.to_str().unwrap();
        let mut args = vec![
            "transform",
            "test",
            "--component",
            component,
            "--input",
            input,
        ];
        args.extend(extra);
        let out = sluice_tests::cli::sluice(dir.path(), &args);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(0), "{extra:?}: {stderr}");
        let rows: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        (rows, stderr)
    };
    let (rows, stderr) = run(
        "in.csv",
        "\u{feff}id;zip;x;name;name\n1;007;NaN;a;b\n2;\"01\n0\";1.5;c;d\n3;010\n4;042;inf;e;f\n",
        guests::META,
        &["--delimiter", ";", "--key-column", "id"],
    );
    let row = |id: i64, zip: &str, x: &str, names: [&str; 2], offset: i64| {
        serde_json::json!({
            "id": id, "zip": zip, "x": x, "name": names[0], "name_2": names[1],
            "topic": "test", "partition": 0, "offset": offset, "key": id.to_string(),
            "timestamp_ms": null, "header": "sluice.types",
        })
    };
    assert_eq!(
        rows,
        [
            // Leading zeros, NaN and inf keep the column a string, as in the source.
            row(1, "007", "NaN", ["a", "b"], 0),
            row(2, "01\n0", "1.5", ["c", "d"], 1),
            // The ragged record got no offset, as it would get no message.
            row(4, "042", "inf", ["e", "f"], 2),
        ]
    );
    for says in [
        "record 3 (line 5): bad row (ragged_row)",
        "source  1 bad record, not run",
        "transform  meta: 3 in, 3 out, 0 dropped, 0 failed",
    ] {
        assert!(stderr.contains(says), "{says}: {stderr}");
    }

    // A row too large for a message is a bad record and gets no offset, as in the source.
    let big = format!("n\n{}\nb\n", "a".repeat(1_000_001));
    let (rows, stderr) = run("big.csv", &big, guests::META, &[]);
    let got: Vec<_> = rows.iter().map(|r| (&r["n"], &r["offset"])).collect();
    assert_eq!(got, [(&serde_json::json!("b"), &serde_json::json!(0))]);
    assert!(
        stderr.contains("record 1 (line 2): bad row (too_large)"),
        "{stderr}"
    );

    // A column typed from too few records, or by `--schema`, makes a later value a bad record,
    // as in the source; typed from all of them, it is a string column.
    for (extra, out_rows) in [
        (&["--infer-rows", "1"][..], 1),
        (&["--schema", "n=int"], 1),
        (&[], 2),
    ] {
        let (rows, stderr) = run("late.csv", "n\n1\nx\n", guests::PASSTHROUGH, extra);
        assert_eq!(rows.len(), out_rows, "{extra:?}: {stderr}");
        assert_eq!(
            stderr.contains("record 2 (line 3): bad row (parse)"),
            out_rows == 1,
            "{extra:?}: {stderr}"
        );
    }
}

/// `--topic`, `--partition` and `--timestamp-ms` set what every record reports to transforms
/// (a transform that reads its record's time can be tested with a fixed one); with `--pipeline`
/// the topic is the file's `kafka.topic`, unless its variable is not set.
#[test]
fn cli_test_sets_the_metadata_it_is_told() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("in.csv"), "id\n7\n8\n").unwrap();
    let meta = |args: &[&str]| {
        let mut all = vec!["transform", "test", "--input", "in.csv"];
        all.extend(args);
        let out = sluice_tests::cli::sluice(dir.path(), &all);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(0), "{args:?}: {stderr}");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| {
                let row: serde_json::Value = serde_json::from_str(l).unwrap();
                (
                    row["topic"].clone(),
                    row["partition"].clone(),
                    row["offset"].clone(),
                    row["timestamp_ms"].clone(),
                )
            })
            .collect::<Vec<_>>()
    };
    use serde_json::json;
    assert_eq!(
        meta(&["--component", guests::META]),
        [
            (json!("test"), json!(0), json!(0), json!(null)),
            (json!("test"), json!(0), json!(1), json!(null)),
        ]
    );
    let flags = [
        "--component",
        guests::META,
        "--topic",
        "orders",
        "--partition",
        "3",
        "--timestamp-ms",
        "1700000000123",
    ];
    assert_eq!(
        meta(&flags),
        [
            (
                json!("orders"),
                json!(3),
                json!(0),
                json!(1_700_000_000_123_i64)
            ),
            (
                json!("orders"),
                json!(3),
                json!(1),
                json!(1_700_000_000_123_i64)
            ),
        ]
    );

    let pipeline = |topic: &str| {
        let file = serde_json::json!({
            "version": 1,
            "name": "local",
            "source": { "type": "csv", "path": "in.csv" },
            "kafka": { "topic": topic },
            "transforms": [ { "uses": guests::META } ],
            "sink": { "type": "snowflake", "database": "D", "schema": "S", "table": "T" }
        });
        std::fs::write(dir.path().join("p.json"), file.to_string()).unwrap();
    };
    pipeline("events");
    let topics =
        |args: &[&str]| -> Vec<serde_json::Value> { meta(args).into_iter().map(|m| m.0).collect() };
    assert_eq!(topics(&["--pipeline", "p.json"]), ["events"; 2]);
    assert_eq!(
        topics(&["--pipeline", "p.json", "--topic", "other"]),
        ["other"; 2]
    );
    // Kafka's variables need not be set for a test: then the topic is `test`.
    pipeline("${SLUICE_TEST_UNSET_TOPIC}");
    assert_eq!(topics(&["--pipeline", "p.json"]), ["test"; 2]);

    // What Kafka could not hold is refused, naming the flag.
    for (flag, value, says) in [
        ("--topic", "", "not a valid Kafka topic name"),
        ("--topic", "a b", "not a valid Kafka topic name"),
        ("--partition", "-1", "-1 is not in 0.."),
        ("--timestamp-ms", "-5", "-5 is not in 0.."),
        // Past the end of year 9999: a row stamped with it would be set aside.
        (
            "--timestamp-ms",
            "253402300800000",
            "253402300800000 is not in 0..=253402300799999",
        ),
    ] {
        let args = [
            "transform",
            "test",
            "--input",
            "in.csv",
            "--component",
            guests::META,
        ];
        let out = sluice_tests::cli::sluice(dir.path(), &[&args[..], &[flag, value]].concat());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flag} {value}: {stderr}");
        assert!(stderr.contains(says) && stderr.contains(flag), "{stderr}");
    }

    // `meta()` called from `init` has no record to answer for: an empty one, as the WIT says.
    let args = ["--component", guests::META, "--with", "at_init=true"];
    let out = sluice_tests::cli::sluice(
        dir.path(),
        &[&["transform", "test", "--input", "in.csv"][..], &args].concat(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let first: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().next().unwrap()).unwrap();
    assert_eq!(
        (
            &first["init_topic"],
            &first["init_partition"],
            &first["init_offset"]
        ),
        (&json!(""), &json!(-1), &json!(-1)),
        "{first}"
    );
}

/// `--format dead-letters` reruns what `sluice dead-letters` printed: each letter of a record
/// that reached the chain runs as the message it was, with its own topic, partition, offset, key,
/// timestamp and headers (the `meta` guest echoes them), its fields typed by its last
/// `sluice.types` header. Letters of bad CSV rows, of the sink, cut ones and ones changed since
/// (a masked secret) are skipped and counted; a message that did not decode fails again as
/// `consume` `decode`. Flags that would set the metadata are refused.
#[test]
fn cli_test_reruns_dead_letters_with_their_own_metadata() {
    use sluice::dead_letter::{DeadLetter, GuestFault};
    use sluice::source::{dlq, wire};
    let dir = tempfile::tempdir().unwrap();
    let message = |fields: &[(&str, Value)]| wire::encode(&row(fields));
    let first = message(&[("id", Value::Int(7)), ("amount", Value::String("x".into()))]);
    let rejected = DeadLetter {
        stage: "transform:check".into(),
        kind: "guest_error".into(),
        reason: "amount: not a number".into(),
        source_file: Some("orders.csv".into()),
        source_file_id: None,
        line: Some(8),
        origin: Some(RecordMeta {
            topic: "orders".into(),
            partition: 2,
            offset: 41,
            key: Some(b"k7".to_vec()),
            timestamp_ms: Some(1_700_000_000_000),
            headers: vec![
                ("sluice.types".into(), first.types.clone().into_bytes()),
                ("sluice.line".into(), b"8".to_vec()),
            ],
        }),
        payload: first.value,
        error: Some(GuestFault {
            case: "invalid-value",
            field: Some("amount".into()),
        }),
    };
    let ragged = DeadLetter {
        stage: "source".into(),
        kind: "ragged_row".into(),
        origin: None,
        payload: b"9,only".to_vec(),
        error: None,
        ..rejected.clone()
    };
    let refused = DeadLetter {
        stage: "sink".into(),
        kind: "schema".into(),
        error: None,
        ..rejected.clone()
    };
    let undecodable = DeadLetter {
        stage: "consume".into(),
        kind: "decode".into(),
        payload: b"not json".to_vec(),
        error: None,
        ..rejected.clone()
    };
    let second = message(&[("id", Value::Int(9)), ("amount", Value::Float(2.5))]);
    let trapped = DeadLetter {
        stage: "transform:poison_trap".into(),
        kind: "trap".into(),
        origin: Some(RecordMeta {
            offset: 44,
            key: Some(vec![0xff, 1]),
            timestamp_ms: None,
            headers: vec![
                ("h0".into(), vec![0, 159]),
                ("sluice.types".into(), second.types.into_bytes()),
            ],
            ..rejected.origin.clone().unwrap()
        }),
        payload: second.value,
        error: None,
        ..rejected.clone()
    };
    let cut = DeadLetter {
        payload: vec![b'a'; dlq::MAX_PAYLOAD_BYTES + 1],
        ..rejected.clone()
    };
    // Typed as the types header says: `x` is no float, so the message does not decode ...
    let mut mistyped = rejected.clone();
    let origin = mistyped.origin.as_mut().unwrap();
    origin.headers[0].1 = b"int,float".to_vec();
    // ... and of two types headers the last counts: `2` is a string here, not an int.
    let third = message(&[("id", Value::Int(3)), ("code", Value::String("2".into()))]);
    let retyped = DeadLetter {
        origin: Some(RecordMeta {
            offset: 46,
            headers: vec![
                ("sluice.types".into(), b"bool,bool".to_vec()),
                ("sluice.types".into(), third.types.into_bytes()),
            ],
            ..rejected.origin.clone().unwrap()
        }),
        payload: third.value,
        ..rejected.clone()
    };
    let mut text = Vec::new();
    for letter in [
        &rejected,
        &ragged,
        &refused,
        &undecodable,
        &trapped,
        &cut,
        &mistyped,
        &retyped,
    ] {
        text.extend(dlq::encode(letter));
        text.push(b'\n');
    }
    // Printed with a secret's text masked: no longer the record it was.
    let masked = String::from_utf8(dlq::encode(&rejected))
        .unwrap()
        .replace(r#"\"x\""#, r#"\"${CODE}\""#);
    text.extend(masked.as_bytes());
    text.push(b'\n');
    std::fs::write(dir.path().join("letters.jsonl"), &text).unwrap();
    std::fs::write(
        dir.path().join("failures.jsonl"),
        "{\"record\": 4, \"line\": 4, \"stage\": \"consume\", \"kind\": \"decode\"}\n\
         {\"record\": 7, \"stage\": \"consume\", \"kind\": \"decode\"}\n",
    )
    .unwrap();
    let test = |extra: &[&str]| {
        let mut args = vec!["transform", "test", "--input", "letters.jsonl"];
        args.extend(extra);
        let out = sluice_tests::cli::sluice(dir.path(), &args);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        (out.status.code(), out.stdout, stderr)
    };
    let (code, stdout, stderr) = test(&[
        "--format",
        "dead-letters",
        "--component",
        guests::META,
        "--with",
        "headers=true",
        "--expect-failures",
        "failures.jsonl",
    ]);
    assert_eq!(code, Some(0), "{stderr}");
    let rows: Vec<serde_json::Value> = String::from_utf8(stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        rows,
        [
            serde_json::json!({
                "id": 7, "amount": "x", "topic": "orders", "partition": 2, "offset": 41,
                "key": "k7", "timestamp_ms": 1_700_000_000_000_i64, "header": "sluice.types",
                "headers": "sluice.types=int,string;sluice.line=8",
            }),
            serde_json::json!({
                "id": 9, "amount": 2.5, "topic": "orders", "partition": 2, "offset": 44,
                "key": "\u{fffd}\u{1}", "timestamp_ms": null, "header": "h0",
                "headers": "h0=\u{0}\u{fffd};sluice.types=int,float",
            }),
            serde_json::json!({
                "id": 3, "code": "2", "topic": "orders", "partition": 2, "offset": 46,
                "key": "k7", "timestamp_ms": 1_700_000_000_000_i64, "header": "sluice.types",
                "headers": "sluice.types=bool,bool;sluice.types=int,string",
            }),
        ]
    );
    for says in [
        // Its own reason: the consumer's failure, not a new one.
        "record 4 (line 4): the consumer cannot decode its message (decode): amount: not a number",
        "record 7 (line 7): the consumer cannot decode its message (decode)",
        "input  1 dead letter skipped: changed since they were written",
        "input  1 dead letter skipped: from bad CSV rows (stage source), which never reached",
        "input  1 dead letter skipped: from the sink, whose payload is the chain's output",
        "input  1 dead letter skipped: cut to fit the dead-letter topic",
        "transform  meta: 3 in, 3 out, 0 dropped, 0 failed",
        "ok: 2 failed records match failures.jsonl",
    ] {
        assert!(stderr.contains(says), "{says}: {stderr}");
    }
    assert!(!stderr.contains("looks like dead letters"), "{stderr}");

    // Read as plain JSON Lines, the letters are rows: a warning says what was meant.
    let (code, _, stderr) = test(&["--component", guests::PASSTHROUGH]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains(
            "letters.jsonl looks like dead letters: pass --format dead-letters to run the \
             records they hold"
        ),
        "{stderr}"
    );

    // Each letter's record has its own metadata and types: flags that would set them are
    // refused, before anything runs.
    for flag in [
        &["--topic", "t"][..],
        &["--partition", "1"],
        &["--timestamp-ms", "5"],
        &["--key-column", "id"],
        &["--schema", "id=int"],
        &["--delimiter", ";"],
        &["--infer-rows", "5"],
    ] {
        let mut args = vec!["--format", "dead-letters", "--component", guests::META];
        args.extend(flag);
        let (code, stdout, stderr) = test(&args);
        assert_eq!(code, Some(2), "{flag:?}: {stderr}");
        assert!(stdout.is_empty(), "{flag:?}");
        assert!(
            stderr.contains(flag[0]) && stderr.contains("does not apply to --format dead-letters"),
            "{flag:?}: {stderr}"
        );
    }

    // Without --format, a pipeline's key column is looked for in the letters: the error says
    // what they are.
    let file = serde_json::json!({
        "version": 1,
        "source": { "type": "csv", "path": "in.csv", "key_column": "id" },
        "kafka": { "topic": "t" },
        "transforms": [ { "uses": guests::META } ],
        "sink": { "type": "snowflake", "database": "D", "schema": "S", "table": "T" }
    });
    std::fs::write(dir.path().join("p.json"), file.to_string()).unwrap();
    let (code, _, stderr) = test(&["--pipeline", "p.json"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains(
            "letters.jsonl looks like dead letters, whose rows have no \"id\" field: pass \
             --format dead-letters"
        ),
        "{stderr}"
    );
    // jq without -c spreads a letter over lines.
    let pretty = serde_json::to_string_pretty(
        &serde_json::from_slice::<serde_json::Value>(&dlq::encode(&rejected)).unwrap(),
    )
    .unwrap();
    std::fs::write(dir.path().join("pretty.jsonl"), pretty).unwrap();
    let out = sluice_tests::cli::sluice(
        dir.path(),
        &[
            "transform",
            "test",
            "--component",
            guests::META,
            "--format",
            "dead-letters",
            "--input",
            "pretty.jsonl",
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("pretty.jsonl:1: not a dead letter")
            && stderr.contains("(one letter per line: `jq -c` prints them so)"),
        "{stderr}"
    );

    // Letters are not the pipeline's CSV: --input is needed.
    let out = sluice_tests::cli::sluice(
        dir.path(),
        &[
            "transform",
            "test",
            "--pipeline",
            "none.json",
            "--format",
            "dead-letters",
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--format dead-letters needs --input"),
        "{stderr}"
    );

    // A line that is not a letter stops the run there, naming it, after what came before; on
    // the first line, before the chain is even loaded.
    let mut text = dlq::encode(&rejected);
    text.extend(b"\n{\"id\": 1}\n");
    std::fs::write(dir.path().join("letters.jsonl"), &text).unwrap();
    let (code, stdout, stderr) = test(&["--format", "dead-letters", "--component", guests::META]);
    assert_eq!(code, Some(2), "{stderr}");
    assert_eq!(
        String::from_utf8_lossy(&stdout).lines().count(),
        1,
        "{stderr}"
    );
    assert!(
        stderr.contains("letters.jsonl:2: not a dead letter as `sluice dead-letters` prints them"),
        "{stderr}"
    );
    let orphan = DeadLetter {
        origin: None,
        ..rejected.clone()
    };
    std::fs::write(dir.path().join("letters.jsonl"), dlq::encode(&orphan)).unwrap();
    let (code, _, stderr) = test(&["--format", "dead-letters", "--component", "missing.wasm"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("letters.jsonl:1: not a dead letter")
            && stderr.contains("stage \"transform:check\" with no origin")
            && !stderr.contains("missing.wasm"),
        "{stderr}"
    );
}

/// `sluice transform new` scaffolds a crate that builds and passes its own golden test as is, in
/// a workspace it starts itself when `--dir` names a directory that is not there yet.
#[test]
fn cli_new_scaffolds_a_transform_that_builds_and_passes_its_test() {
    use sluice::transform::cli;
    let dir = tempfile::tempdir().unwrap();
    // A directory with files in it but no workspace is refused, and left as it was.
    let occupied = dir.path().join("occupied");
    std::fs::create_dir(&occupied).unwrap();
    std::fs::write(occupied.join("notes.txt"), "mine").unwrap();
    let out = sluice_tests::cli::sluice(
        dir.path(),
        &["transform", "new", "shout", "--dir", "occupied"],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("is not a transforms workspace"), "{stderr}");
    assert_eq!(std::fs::read_dir(&occupied).unwrap().count(), 1);
    // `transforms` named by --dir is started like any other directory; left to the default,
    // it must be a workspace already (`new` run outside the project root says so).
    let root = dir.path().join("root");
    std::fs::create_dir(&root).unwrap();
    let out = sluice_tests::cli::sluice(&root, &["transform", "new", "shout"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("transforms is not a transforms workspace"),
        "{stderr}"
    );
    assert!(!root.join("transforms").exists());
    let out =
        sluice_tests::cli::sluice(&root, &["transform", "new", "shout", "--dir", "transforms"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    for file in [
        "Cargo.toml",
        ".cargo/config.toml",
        "shout/Cargo.toml",
        "shout/src/lib.rs",
    ] {
        assert!(root.join("transforms").join(file).is_file(), "{file}");
    }
    // The workspace is its own: its crate says to build from there, with `--dir .`.
    let lib = std::fs::read_to_string(root.join("transforms/shout/src/lib.rs")).unwrap();
    assert!(
        lib.contains("from the workspace's directory:\n")
            && lib.contains("sluice transform build shout --dir .\n"),
        "{lib}"
    );
    // A path through a directory that is not there (`gone/..`) is taken as meant: a directory
    // with files in it there is refused, by its name, and what was there stays; `gone` is not
    // made.
    std::fs::create_dir_all(root.join("owned/.git")).unwrap();
    std::fs::write(root.join("owned/NOTES"), "mine").unwrap();
    let out = sluice_tests::cli::sluice(
        &root,
        &["transform", "new", "shout", "--dir", "gone/../owned"],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("owned is not a transforms workspace (no Cargo.toml)")
            && !stderr.contains("gone"),
        "{stderr}"
    );
    assert!(!root.join("gone").exists());
    assert_eq!(std::fs::read_dir(root.join("owned")).unwrap().count(), 2);
    // A bad name in a new directory leaves nothing behind.
    let out = sluice_tests::cli::sluice(
        dir.path(),
        &["transform", "new", "Bad Name", "--dir", "fresh/ws"],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(!dir.path().join("fresh").exists());
    // A directory that is not there yet becomes a workspace of its own, with a copy of the SDK:
    // what an author keeping transforms in a repository of their own starts from.
    let ws = &dir.path().join("fresh/ws");
    let out = sluice_tests::cli::sluice(
        dir.path(),
        &["transform", "new", "shout", "--dir", &ws.to_string_lossy()],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!(
            "created the transforms workspace {}",
            ws.display()
        )),
        "{stdout}"
    );
    // The SDK is copied in, with the WIT in the copy, and nothing points outside the workspace:
    // it builds wherever it is moved, committed or cloned (there is no `wit/` beside it here,
    // so the build below uses the copy's), with the dependencies sluice's transforms lock.
    let manifest = std::fs::read_to_string(ws.join("Cargo.toml")).unwrap();
    assert!(
        manifest.contains("sluice-guest = { path = \"sluice-guest\" }\nwit-bindgen = \"="),
        "{manifest}"
    );
    assert!(
        !manifest.contains(&*dir.path().to_string_lossy()) && !manifest.contains("../"),
        "{manifest}"
    );
    assert!(
        stdout.contains(&format!(
            "with a copy of this sluice's guest SDK in {}",
            ws.join("sluice-guest").display()
        )),
        "{stdout}"
    );
    let repo = |path: &str| {
        std::fs::read_to_string(format!("{}/../{path}", env!("CARGO_MANIFEST_DIR"))).unwrap()
    };
    let copied = |path: &str| std::fs::read_to_string(ws.join(path)).unwrap();
    assert_eq!(
        copied("sluice-guest/wit/transform.wit"),
        repo("wit/transform.wit")
    );
    assert_eq!(
        copied("sluice-guest/src/pool.rs"),
        repo("transforms/sluice-guest/src/pool.rs")
    );
    assert!(copied("sluice-guest/src/lib.rs").contains(r#"path: "wit","#));
    assert!(!dir.path().join("fresh/wit").exists());
    // The SDK keeps sluice's license, whatever the workspace's crates choose.
    assert_eq!(copied("sluice-guest/LICENSE"), repo("LICENSE"));
    assert!(copied("sluice-guest/Cargo.toml").contains("\nlicense = \"Apache-2.0\"\n"));
    // The lock is this workspace's, with sluice's versions: the new crate in it, sluice's own
    // examples not, so that it can be committed as it is (the build below leaves it as it is).
    let lock = copied("Cargo.lock");
    assert!(
        lock.contains("name = \"transform-shout\"") && !lock.contains("transform-enrich"),
        "{lock}"
    );
    let pinned = |lock: &str| {
        let at = lock.find("name = \"wit-bindgen\"\nversion = ").unwrap();
        lock[at..].lines().nth(1).unwrap().to_owned()
    };
    assert_eq!(pinned(&lock), pinned(&repo("transforms/Cargo.lock")));
    // Run in the workspace itself without --dir, `build` says to pass `--dir .`.
    let out = sluice_tests::cli::sluice(ws, &["transform", "build"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("this directory is a transforms workspace itself: pass --dir ."),
        "{stderr}"
    );
    let out = sluice_tests::cli::sluice(&ws.join("shout"), &["transform", "test", "shout"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("workspace above it: pass --dir .."),
        "{stderr}"
    );
    // A repository's own dot-files are kept as they are, with a word on what they lack, and its
    // dot-directories are no crates.
    let dots = dir.path().join("dots");
    std::fs::create_dir_all(dots.join(".cargo")).unwrap();
    std::fs::create_dir_all(dots.join(".devcontainer")).unwrap();
    std::fs::write(dots.join(".gitignore"), "*.log\n").unwrap();
    std::fs::write(dots.join(".cargo/config.toml"), "[build]\njobs = 2\n").unwrap();
    let out =
        sluice_tests::cli::sluice(dir.path(), &["transform", "new", "shout", "--dir", "dots"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("kept dots/.gitignore as it was; add `/target/`")
            && stderr.contains("kept dots/.cargo/config.toml as it was; add `[build]`"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read_to_string(dots.join(".gitignore")).unwrap(),
        "*.log\n"
    );
    assert!(dots.join("Cargo.toml").is_file() && dots.join("shout/src/lib.rs").is_file());
    let lock = std::fs::read_to_string(dots.join("Cargo.lock")).unwrap();
    assert!(
        lock.contains("name = \"transform-shout\"") && !lock.contains("transform-enrich"),
        "cargo metadata failed on the workspace: {lock}"
    );
    // A `new` that fails half-way (here `.cargo` is a file) takes back all it wrote.
    let broken = dir.path().join("broken");
    std::fs::create_dir(&broken).unwrap();
    std::fs::write(broken.join(".cargo"), "").unwrap();
    let out = sluice_tests::cli::sluice(
        dir.path(),
        &["transform", "new", "shout", "--dir", "broken"],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("writing broken/.cargo/config.toml: Not a directory"),
        "{stderr}"
    );
    let left: Vec<_> = std::fs::read_dir(&broken).unwrap().collect();
    assert_eq!(left.len(), 1, "{left:?}");
    // With no crates cached and no network, the lock cannot be trimmed yet: said, not hidden.
    let home = dir.path().join("empty-cargo-home");
    std::fs::create_dir(&home).unwrap();
    let out = std::process::Command::new(sluice_tests::cli::sluice_bin())
        .args(["transform", "new", "shout", "--dir", "nonet"])
        .current_dir(dir.path())
        .env("CARGO_HOME", &home)
        .env("CARGO_NET_OFFLINE", "true")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("nonet/Cargo.lock is still sluice's own lock file")
            && stderr.contains("build once before committing it"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read_to_string(ws.join(".gitignore")).unwrap(),
        "/target/\n"
    );
    // A repository's own directories are no crates to cargo.
    std::fs::create_dir_all(ws.join(".git")).unwrap();
    // Built where earlier runs of this test built, to keep it quick.
    let target = concat!(env!("OUT_DIR"), "/scaffold-target");
    let mut config = std::fs::read_to_string(ws.join(".cargo/config.toml")).unwrap();
    assert!(
        config.ends_with("[build]\ntarget = \"wasm32-wasip2\"\n"),
        "{config}"
    );
    config.push_str(&format!("target-dir = {target:?}\n"));
    std::fs::write(ws.join(".cargo/config.toml"), config).unwrap();
    let crate_dir = ws.join("shout");
    // It says how to build, then how to run the scaffold's own test.
    assert!(
        stdout.contains(&format!(
            "then: sluice transform test shout --dir {}\n",
            ws.display()
        )),
        "{stdout}"
    );
    // Its doc comment says how to build and test it, from the workspace's directory: the
    // absolute path given here would be wrong in any other clone.
    let lib = std::fs::read_to_string(crate_dir.join("src/lib.rs")).unwrap();
    assert!(
        lib.contains("flags of those names), from the workspace's directory:\n")
            && lib.contains("sluice transform build shout --dir .\n")
            && lib.contains("sluice transform test shout --dir .\n")
            && !lib.contains(&*dir.path().to_string_lossy()),
        "{lib}"
    );
    assert!(
        cli::scaffold("shout", ws, true).is_err(),
        "refuses to overwrite"
    );
    // A workspace that names its members leaves a new crate out of its builds: refused, and
    // nothing is left behind.
    let manifest = std::fs::read_to_string(ws.join("Cargo.toml")).unwrap();
    let named = manifest.replace(r#"members = ["*"]"#, r#"members = ["shout"]"#);
    assert_ne!(named, manifest);
    std::fs::write(ws.join("Cargo.toml"), named).unwrap();
    let refused = cli::scaffold("other", ws, true).unwrap_err().to_string();
    assert!(
        refused.contains(r#"[workspace] members do not include "other""#),
        "{refused}"
    );
    assert!(!ws.join("other").exists());
    std::fs::write(ws.join("Cargo.toml"), manifest).unwrap();
    // Untouched, it passes the format check CI runs on transforms/.
    let fmt = std::process::Command::new("rustfmt")
        .args(["--edition", "2024", "--check"])
        .arg(crate_dir.join("src/lib.rs"))
        .output()
        .expect("rustfmt runs (rustup component add rustfmt)");
    assert!(
        fmt.status.success(),
        "{}",
        String::from_utf8_lossy(&fmt.stdout)
    );
    assert!(cli::scaffold("Bad Name", ws, true).is_err());
    let built = cli::build(Some("shout"), ws).unwrap();
    assert_eq!(
        copied("Cargo.lock"),
        lock,
        "the build changed the lock `new` wrote"
    );
    assert_eq!(built.len(), 1, "{built:?}");
    assert!(
        built[0].ends_with("wasm32-wasip2/release/transform_shout.wasm"),
        "{built:?}"
    );
    // Building them all lists the workspace's members only, not a deleted crate's leftover.
    let leftover = built[0].with_file_name("transform_gone.wasm");
    std::fs::write(&leftover, b"").unwrap();
    assert_eq!(cli::build(None, ws).unwrap(), built);
    let records =
        cli::read_input(&crate_dir.join("testdata/input.jsonl"), &Default::default()).unwrap();
    let (mut out, mut err) = (Vec::new(), Vec::new());
    cli::test(
        &cli::load(&[TransformConfig::new(built[0].to_string_lossy())], 1).unwrap(),
        records,
        16,
        Default::default(),
        &mut out,
        &mut err,
        None,
    )
    .unwrap();
    let expected = std::fs::read_to_string(crate_dir.join("testdata/expected.jsonl")).unwrap();
    assert_eq!(String::from_utf8(out).unwrap(), expected);
    // `test NAME` builds it and runs it on its own test data, as `new` says.
    let ws_arg = ws.to_string_lossy().into_owned();
    let own = |extra: &[&str]| {
        let args = [&["transform", "test", "shout", "--dir", &ws_arg][..], extra].concat();
        let out = sluice_tests::cli::sluice(dir.path(), &args);
        let stdout = String::from_utf8(out.stdout).unwrap();
        (
            out.status.code(),
            stdout,
            String::from_utf8(out.stderr).unwrap(),
        )
    };
    let (code, rows, err) = own(&[]);
    assert_eq!((code, rows.as_str()), (Some(0), expected.as_str()), "{err}");
    assert!(err.contains("ok: 2 rows match"), "{err}");
    // With the params in testdata/params.json, which flags override.
    let params = crate_dir.join("testdata/params.json");
    std::fs::write(&params, r#"{"field": "nick"}"#).unwrap();
    let (code, _, err) = own(&[]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("missing field `nick`"), "{err}");
    let (code, _, err) = own(&["--with", "field=name"]);
    assert_eq!(code, Some(0), "{err}");
    std::fs::write(&params, r#"{"field": nick}"#).unwrap();
    let (code, _, err) = own(&[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("params.json: expected ident at line 1"),
        "{err}"
    );
    std::fs::write(&params, r#"{"field": "name", "field": "id"}"#).unwrap();
    let (code, _, err) = own(&[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("duplicate key `field`"), "{err}");
    std::fs::write(&params, r#"{"window": 100}"#).unwrap();
    let (code, _, err) = own(&[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("with the params in ") && err.contains("`window`"),
        "{err}"
    );
    // A param refused that came from `--with` is not blamed on the file.
    std::fs::write(&params, r#"{"field": "name"}"#).unwrap();
    let (code, _, err) = own(&["--with", "window=100"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("`window`") && !err.contains("params.json"),
        "{err}"
    );
    std::fs::remove_file(&params).unwrap();
    // Without a golden file of its own, a pass says it compared nothing.
    let kept = crate_dir.join("testdata/kept.jsonl");
    std::fs::rename(crate_dir.join("testdata/expected.jsonl"), &kept).unwrap();
    let (code, _, err) = own(&[]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        err.contains(
            "note: transform shout has no testdata/expected.jsonl or expected-failures.jsonl, so \
             its output was not compared with anything"
        ),
        "{err}"
    );
    std::fs::rename(&kept, crate_dir.join("testdata/expected.jsonl")).unwrap();
    let (code, _, err) = own(&[]);
    assert!(code == Some(0) && !err.contains("note: "), "{err}");
    // A golden file the run writes is made, not checked: stdout into expected.jsonl remakes it.
    let golden = std::fs::File::create(crate_dir.join("testdata/expected.jsonl")).unwrap();
    let remade = std::process::Command::new(sluice_tests::cli::sluice_bin())
        .args(["transform", "test", "shout", "--dir", &ws_arg])
        .current_dir(dir.path())
        .stdout(golden)
        .output()
        .unwrap();
    assert!(remade.status.success(), "{remade:?}");
    assert_eq!(
        std::fs::read_to_string(crate_dir.join("testdata/expected.jsonl")).unwrap(),
        expected
    );
    // Its failures too, with `--write-failures`: then they are not unexpected, and the next run
    // checks them. Stderr is no golden file's maker: into expected.jsonl, it is refused.
    let input = crate_dir.join("testdata/input.jsonl");
    let mut rows = std::fs::read_to_string(&input).unwrap();
    rows.push_str("{\"id\":5,\"name\":7}\n");
    std::fs::write(&input, rows).unwrap();
    let failures = crate_dir.join("testdata/expected-failures.jsonl");
    let (code, _, err) = own(&["--write-failures", &failures.to_string_lossy()]);
    assert_eq!(code, Some(0), "{err}");
    let written = std::fs::read_to_string(&failures).unwrap();
    assert!(written.contains(r#""record":5,"#), "{written}");
    let (code, _, err) = own(&[]);
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("ok: 1 failed record matches"), "{err}");
    let golden = std::fs::OpenOptions::new()
        .append(true)
        .open(crate_dir.join("testdata/expected.jsonl"))
        .unwrap();
    let refused = std::process::Command::new(sluice_tests::cli::sluice_bin())
        .args(["transform", "test", "shout", "--dir", &ws_arg])
        .current_dir(dir.path())
        .stderr(golden)
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(2), "{refused:?}");
    let kept = std::fs::read_to_string(crate_dir.join("testdata/expected.jsonl")).unwrap();
    assert!(
        kept.starts_with(&expected) && kept.contains("the run would be compared with itself"),
        "{kept}"
    );
    // `--expect g.jsonl > g.jsonl` empties the golden file before sluice starts: the message
    // says so. (Without `--expect`, `> testdata/expected.jsonl` remakes the crate's own.)
    let golden = crate_dir.join("testdata/expected.jsonl");
    let emptied = std::fs::File::create(&golden).unwrap();
    let refused = std::process::Command::new(sluice_tests::cli::sluice_bin())
        .args(["transform", "test", "shout", "--dir", &ws_arg, "--expect"])
        .arg(&golden)
        .current_dir(dir.path())
        .stdout(emptied)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(2), "{err}");
    assert!(
        err.contains(
            "compared with itself. Write the output elsewhere, and restore the golden file: the \
             redirection has emptied it"
        ),
        "{err}"
    );
    std::fs::write(crate_dir.join("testdata/expected.jsonl"), &expected).unwrap();
    // One input only.
    std::fs::write(crate_dir.join("testdata/input.csv"), "id,name\n1,ada\n").unwrap();
    let (code, _, err) = own(&[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("has both input.jsonl and input.csv"), "{err}");
    std::fs::remove_file(crate_dir.join("testdata/input.csv")).unwrap();
    // testdata/source.json reads the input as the flags of the same names would, and a flag
    // given as well wins. (The rows still differ from expected.jsonl: exit 1.)
    let source = crate_dir.join("testdata/source.json");
    let semi = dir.path().join("semi.csv");
    std::fs::write(&semi, "id;name\n1;ada\n").unwrap();
    std::fs::write(&source, r#"{"delimiter": ";", "topic": "orders"}"#).unwrap();
    let semi = semi.to_string_lossy().into_owned();
    let (code, rows, err) = own(&["--input", &semi]);
    assert_eq!(
        (code, rows.as_str()),
        (Some(1), "{\"id\":1,\"name\":\"ADA\"}\n"),
        "{err}"
    );
    let (code, rows, err) = own(&["--input", &semi, "--delimiter", ","]);
    assert_eq!((code, rows.as_str()), (Some(1), ""), "{err}");
    assert!(err.contains("missing field `name`"), "{err}");
    // `null_if` too: `ada` is then null, and the scaffold drops a row whose field is null.
    std::fs::write(&source, r#"{"delimiter": ";", "null_if": ["ada"]}"#).unwrap();
    let (code, rows, err) = own(&["--input", &semi]);
    assert_eq!((code, rows.as_str()), (Some(1), ""), "{err}");
    let (code, rows, err) = own(&["--input", &semi, "--null-if", "NULL"]);
    assert_eq!(
        (code, rows.as_str()),
        (Some(1), "{\"id\":1,\"name\":\"ADA\"}\n"),
        "{err}"
    );
    // The crate's own JSON Lines input leaves it out, as it leaves out `schema`.
    std::fs::write(&source, r#"{"null_if": ["NULL"]}"#).unwrap();
    let (code, _, err) = own(&[]);
    assert_eq!(code, Some(0), "{err}");
    // `partitions`, a stateless transform's rows do not change; with `partition`, it is refused.
    std::fs::write(&source, r#"{"partitions": 3}"#).unwrap();
    let (code, _, err) = own(&[]);
    assert_eq!(code, Some(0), "{err}");
    std::fs::write(&source, r#"{"partitions": 3, "partition": 1}"#).unwrap();
    let (code, _, err) = own(&[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("partition and partitions cannot both be set"),
        "{err}"
    );
    std::fs::write(&source, r#"{"key_column": "nope"}"#).unwrap();
    let (code, _, err) = own(&["--input", &semi]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("testdata/source.json's key_column \"nope\" is not a column"),
        "{err}"
    );
    std::fs::write(&source, r#"{"key_colum": "id"}"#).unwrap();
    let (code, _, err) = own(&[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("source.json at key_colum: unknown field `key_colum`, expected one of"),
        "{err}"
    );
    std::fs::remove_file(&source).unwrap();
    // Its unit tests pass natively, run as `new` says.
    assert!(
        stdout.contains("unit tests: (cd ") && stdout.contains("cargo test -p transform-shout"),
        "{stdout}"
    );
    let rustc = std::process::Command::new("rustc")
        .arg("-vV")
        .output()
        .unwrap();
    let host = String::from_utf8(rustc.stdout).unwrap();
    let host = host.lines().find_map(|l| l.strip_prefix("host: ")).unwrap();
    let unit = std::process::Command::new(env!("CARGO"))
        .args(["test", "-p", "transform-shout", "--target", host])
        .current_dir(ws)
        .env_remove("CARGO_TARGET_DIR")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&unit.stdout);
    assert!(
        unit.status.success() && text.contains("test result: ok. 2 passed"),
        "{text}{}",
        String::from_utf8_lossy(&unit.stderr)
    );
}

/// A workspace whose copy of the guest SDK another sluice made is warned of when it builds,
/// listed by `update-sdk --check` (exit 1, nothing changed), and brought to this sluice's SDK by
/// `update-sdk`: the copy's files as `new` writes them, a file this SDK lacks removed, the SDK's
/// dependencies pinned again with the author's comments kept, the lock still good for
/// `--locked`; then it builds without the warning and passes its test. A workspace from before
/// `new` copied the SDK (a path into a sluice checkout) gets a copy. sluice's own `transforms/`
/// is refused.
#[test]
fn cli_update_sdk_brings_an_older_copy_to_this_sdk() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let out = sluice_tests::cli::sluice(dir.path(), args);
        (
            out.status.code(),
            String::from_utf8(out.stdout).unwrap(),
            String::from_utf8(out.stderr).unwrap(),
        )
    };
    let (code, _, err) = run(&["transform", "new", "shout", "--dir", "ws"]);
    assert_eq!(code, Some(0), "{err}");
    let ws = dir.path().join("ws");
    // Built where the `new` test builds, to keep it quick.
    let target = concat!(env!("OUT_DIR"), "/scaffold-target");
    let mut config = std::fs::read_to_string(ws.join(".cargo/config.toml")).unwrap();
    config.push_str(&format!("target-dir = {target:?}\n"));
    std::fs::write(ws.join(".cargo/config.toml"), config).unwrap();
    let check = ["transform", "update-sdk", "--dir", "ws", "--check"];
    let (code, out, err) = run(&check);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        out.contains("ws/sluice-guest is this sluice's guest SDK (sluice 0.1.0, sluice:transform@0.1.0): nothing to update"),
        "{out}"
    );

    // As an older sluice would have left it: another allocator, a looser pin.
    let copied = |path: &str| std::fs::read_to_string(ws.join(path)).unwrap();
    let repo = |path: &str| {
        std::fs::read_to_string(format!("{}/../{path}", env!("CARGO_MANIFEST_DIR"))).unwrap()
    };
    let pool = ws.join("sluice-guest/src/pool.rs");
    std::fs::write(
        &pool,
        format!("{}// an older pool\n", copied("sluice-guest/src/pool.rs")),
    )
    .unwrap();
    let manifest = copied("Cargo.toml");
    let pin = manifest
        .lines()
        .find(|l| l.starts_with("wit-bindgen = "))
        .unwrap()
        .to_owned();
    let loose = "wit-bindgen = \"0.61\" # ours";
    std::fs::write(ws.join("Cargo.toml"), manifest.replace(&pin, loose)).unwrap();
    let (code, out, err) = run(&["transform", "build", "shout", "--dir", "ws"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.ends_with("transform_shout.wasm\n"), "{out}");
    assert!(
        err.contains("ws/sluice-guest is not the guest SDK this sluice carries (src/pool.rs, wit-bindgen in [workspace.dependencies] differ): `sluice transform update-sdk --dir ws` brings it to this one"),
        "{err}"
    );
    // A WIT file the older SDK had and this one has not, and a dependency this one has and the
    // older did not (so that the lock has a crate to gain).
    std::fs::write(
        ws.join("sluice-guest/wit/old.wit"),
        "package sluice:old@0.0.1;\n",
    )
    .unwrap();
    let chrono = (manifest.lines())
        .find(|l| l.starts_with("chrono = "))
        .unwrap()
        .to_owned();
    let aged = copied("Cargo.toml").replace(&format!("{chrono}\n"), "");
    std::fs::write(ws.join("Cargo.toml"), aged).unwrap();
    let sdk_manifest = copied("sluice-guest/Cargo.toml");
    let aged = sdk_manifest.replace("chrono.workspace = true\n", "");
    assert_ne!(aged, sdk_manifest);
    std::fs::write(ws.join("sluice-guest/Cargo.toml"), aged).unwrap();
    // Cargo's own view of the workspace and its lock, which `--locked` keeps as it is.
    let metadata = |locked: bool| {
        let mut cmd = std::process::Command::new(env!("CARGO"));
        cmd.args(["metadata", "--format-version", "1", "--offline"])
            .current_dir(&ws);
        if locked {
            cmd.arg("--locked");
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    metadata(false);
    assert!(!copied("Cargo.lock").contains("name = \"chrono\""));
    let (code, out, err) = run(&check);
    assert_eq!(code, Some(1), "{out}{err}");
    let was = pin.trim_start_matches("wit-bindgen = ");
    let needed = chrono.trim_start_matches("chrono = ");
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        [
            "sluice-guest/wit/old.wit (not in this SDK)",
            "sluice-guest/Cargo.toml (differs)",
            "sluice-guest/src/pool.rs (differs)",
            &format!("wit-bindgen in [workspace.dependencies]: \"0.61\", would be: {was}"),
            &format!("chrono in [workspace.dependencies]: (none), would be: {needed}"),
            "ws/sluice-guest is not this sluice's guest SDK (sluice 0.1.0, sluice:transform@0.1.0); `sluice transform update-sdk --dir ws` makes it so",
        ]
    );
    assert!(copied("sluice-guest/src/pool.rs").ends_with("// an older pool\n"));
    assert!(ws.join("sluice-guest/wit/old.wit").exists());

    let (code, out, err) = run(&["transform", "update-sdk", "--dir", "ws"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        out.starts_with("sluice-guest/wit/old.wit (removed: not in this SDK)\nsluice-guest/Cargo.toml (updated)\nsluice-guest/src/pool.rs (updated)\n"),
        "{out}"
    );
    assert!(
        out.ends_with("ws/sluice-guest is now this sluice's guest SDK (sluice 0.1.0, sluice:transform@0.1.0); build again: sluice transform build --dir ws\n"),
        "{out}"
    );
    assert_eq!(
        copied("sluice-guest/src/pool.rs"),
        repo("transforms/sluice-guest/src/pool.rs")
    );
    assert!(!ws.join("sluice-guest/wit/old.wit").exists());
    assert_eq!(
        copied("Cargo.toml"),
        manifest.replace(&pin, &format!("{pin} # ours"))
    );
    assert_eq!(run(&check).0, Some(0));
    // A copy that cannot be read is no copy that differs: 2, not 1.
    let wit = ws.join("sluice-guest/wit/transform.wit");
    let text = std::fs::read(&wit).unwrap();
    std::fs::remove_file(&wit).unwrap();
    std::fs::create_dir(&wit).unwrap();
    let (code, out, err) = run(&check);
    assert_eq!(code, Some(2), "{out}{err}");
    std::fs::remove_dir(&wit).unwrap();
    std::fs::write(&wit, text).unwrap();
    // The lock has what the SDK now needs, as `cargo build --locked` does.
    assert!(copied("Cargo.lock").contains("name = \"chrono\""));
    metadata(true);
    let (code, out, err) = run(&["transform", "test", "shout", "--dir", "ws"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        err.contains("ok: 2 rows match") && !err.contains("is not the guest SDK"),
        "{err}"
    );

    // A workspace from before `new` copied the SDK: it depended on a sluice checkout by path.
    let sdk = format!("{}/../transforms/sluice-guest", env!("CARGO_MANIFEST_DIR"));
    let before = copied("Cargo.toml").replace(
        "sluice-guest = { path = \"sluice-guest\" }",
        &format!("sluice-guest = {{ path = {sdk:?} }}"),
    );
    std::fs::write(ws.join("Cargo.toml"), &before).unwrap();
    std::fs::remove_dir_all(ws.join("sluice-guest")).unwrap();
    let (code, out, err) = run(&["transform", "update-sdk", "--dir", "ws"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        out.contains("sluice-guest/wit/transform.wit (added)"),
        "{out}"
    );
    assert_eq!(
        copied("sluice-guest/wit/transform.wit"),
        repo("wit/transform.wit")
    );
    assert!(copied("Cargo.toml").contains("sluice-guest = { path = \"sluice-guest\" }"));
    assert_eq!(run(&check).0, Some(0));

    // sluice's own transforms/ is the SDK's source, not a copy.
    let out = sluice_tests::cli::sluice(
        &sluice_tests::cli::workspace_root(),
        &["transform", "update-sdk", "--check"],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("transforms is sluice's own transforms workspace"),
        "{err}"
    );
}

/// Each example transform passes its own test data as an author runs it, `transform test NAME`:
/// built in place (a no-op here: build.rs built them into the same target directory), run on
/// `testdata/input.jsonl` with its `params.json`, against its golden rows and failures.
#[test]
fn cli_test_name_runs_each_example_on_its_own_test_data() {
    let root = sluice_tests::cli::workspace_root();
    let target = std::path::Path::new(guests::PASSTHROUGH)
        .ancestors()
        .nth(3)
        .unwrap();
    for name in ["passthrough", "filter", "enrich", "explode", "mask"] {
        let mut cmd = std::process::Command::new(sluice_tests::cli::sluice_bin());
        cmd.args(["transform", "test", name, "--dir"])
            .arg(root.join("transforms"))
            .current_dir(&root);
        // As build.rs built them: this test's own cargo settings would make cargo build again.
        for (key, _) in std::env::vars_os() {
            let key = key.to_string_lossy();
            if key.starts_with("CARGO_") && key != "CARGO_HOME" || key.starts_with("RUSTFLAGS") {
                cmd.env_remove(&*key);
            }
        }
        let out = cmd.env("CARGO_TARGET_DIR", target).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{name}: {stderr}");
        let data = root.join("transforms").join(name).join("testdata");
        let golden = std::fs::read_to_string(data.join("expected.jsonl")).unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), golden, "{name}");
        let verdicts = stderr.lines().filter(|l| l.starts_with("ok: ")).count();
        let checks = 1 + usize::from(data.join("expected-failures.jsonl").is_file());
        assert_eq!(verdicts, checks, "{name}: {stderr}");
        assert!(!stderr.contains("warning"), "{name}: {stderr}");
    }
}

#[test]
fn guests_get_no_environment_files_or_network() {
    for debug_stdio in [false, true] {
        let mut cfg = config(guests::PROBE, &[]);
        cfg.debug_stdio = debug_stdio;
        let c = chain(&[cfg]);
        let out = c.process_blocking(with_meta(numbered(1))).unwrap();
        assert_eq!(
            emitted(&out[0]),
            [row(&[
                ("env", Value::Int(0)),
                ("fs", Value::Bool(false)),
                ("net", Value::Bool(false))
            ])],
            "debug_stdio: {debug_stdio}"
        );
    }
}

/// A guest that sleeps waits inside a host call, where the CPU cap is not checked, so it could
/// hold a worker for as long as it liked: waiting traps instead, and only that record is
/// quarantined. Waiting on something already ready (a timer that is due) is no wait and works.
/// Run through the async `process`, `sluice run`'s path onto the worker threads.
#[tokio::test]
async fn a_guest_that_sleeps_is_stopped_and_only_its_record_is_quarantined() {
    let mut cfg = config(guests::PROBE, &[]);
    cfg.timeout_ms = 1000;
    let c = chain(&[cfg]);
    let mut rows = numbered(3);
    rows[1].push("sleep_ms", Value::Int(3_000));
    rows[2].push("wait_ready", Value::Bool(true));
    let out = c.process(with_meta(rows.clone())).await.unwrap();
    let q = quarantined(&out[1]);
    assert_eq!(q.kind, FailureKind::Trap, "{}", q.reason);
    assert!(
        q.reason.ends_with("transforms may not block"),
        "{}",
        q.reason
    );
    assert_eq!(q.row, rows[1]);
    for i in [0, 2] {
        assert_eq!(emitted(&out[i]).len(), 1, "record {i}");
    }
}
