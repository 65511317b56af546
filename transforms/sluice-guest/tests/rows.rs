//! The SDK's batch loop, run natively (`cargo test --target x86_64-unknown-linux-gnu` in
//! `transforms/`): which outcome each row gets, what goes back in the output lanes, and rows a
//! transform keeps across batches; and how params are checked.

use sluice_guest::bindings::sluice::transform::types::{Outcome, Output, Rows, Values};
use sluice_guest::{Error, Params, Row, Transform, Value};

/// Input batch of rows `a: int, b: string, n: null, f: float`.
fn batch(rows: &[(i64, &str, f64)]) -> Rows {
    let mut v = Values {
        types: vec![],
        ints: vec![],
        floats: vec![],
        text: String::new(),
        text_ends: vec![],
    };
    for &(i, s, f) in rows {
        v.types.extend([2, 4, 0, 3]);
        v.ints.push(i);
        v.text.push_str(s);
        v.text_ends.push(v.text.len() as u32);
        v.floats.push(f);
    }
    Rows {
        schemas: vec![vec!["a".into(), "b".into(), "n".into(), "f".into()]],
        shapes: vec![0; rows.len()],
        values: v,
    }
}

fn run<T: Transform>(input: Rows) -> Output {
    sluice_guest::__private::transform_batch::<T>(input)
}

/// Keeps rows whose `a` is even, uppercases `b` of rows whose `a` is 3, drops the rest.
struct Mixed;

impl Transform for Mixed {
    fn init(_: &Params) -> Result<Self, Error> {
        Ok(Mixed)
    }

    fn transform(&mut self, mut row: Row) -> Result<Vec<Row>, Error> {
        match row.require("a")?.as_i64() {
            Some(a) if a % 2 == 0 => Ok(vec![row]),
            Some(3) => {
                if let Some(Value::String(s)) = row.get_mut("b") {
                    s.make_ascii_uppercase();
                }
                Ok(vec![row])
            }
            _ => Ok(vec![]),
        }
    }
}

#[test]
fn read_rows_are_kept_changed_rows_are_sent_back_with_untouched_values_copied() {
    sluice_guest::__private::init::<Mixed>(vec![]).unwrap();
    let out = run::<Mixed>(batch(&[(1, "x", 0.5), (2, "yé", 1.5), (3, "zé", 2.5)]));
    assert_eq!(
        out.outcomes,
        vec![Outcome::Emit(0), Outcome::Keep, Outcome::Emit(1)]
    );
    let v = &out.rows.values;
    assert_eq!(out.rows.shapes, vec![0]);
    assert_eq!(v.types, vec![2, 4, 0, 3]);
    assert_eq!(
        (v.ints.as_slice(), v.floats.as_slice()),
        (&[3][..], &[2.5][..])
    );
    assert_eq!((v.text.as_str(), v.text_ends.as_slice()), ("Zé", &[3][..]));
}

/// A shape the batch does not define fails that row and every later one: their values can no
/// longer be located, and reading them from the wrong place would corrupt them silently.
#[test]
fn an_unknown_shape_fails_that_row_and_every_later_one() {
    sluice_guest::__private::init::<Mixed>(vec![]).unwrap();
    let mut input = batch(&[(2, "x", 0.5), (4, "y", 1.5), (6, "z", 2.5)]);
    input.shapes[1] = 7;
    let out = run::<Mixed>(input);
    assert_eq!(out.outcomes[0], Outcome::Keep);
    for o in &out.outcomes[1..] {
        assert!(
            matches!(o, Outcome::Error(Error::Other(m)) if m.contains("unknown shape 7")),
            "{o:?}"
        );
    }
    assert_eq!(out.outcomes.len(), 3);
    assert!(out.rows.shapes.is_empty());
}

/// Emits, for each row, the row it stored on the previous call (detached if `DETACH`), and
/// stores this one.
struct Lag<const DETACH: bool> {
    prev: Option<Row>,
}

impl<const DETACH: bool> Transform for Lag<DETACH> {
    fn init(_: &Params) -> Result<Self, Error> {
        Ok(Lag { prev: None })
    }

    fn transform(&mut self, row: Row) -> Result<Vec<Row>, Error> {
        let row = if DETACH { row.detach() } else { row };
        Ok(self.prev.replace(row).into_iter().collect())
    }
}

fn rows_carried_across_batches<const DETACH: bool>() {
    sluice_guest::__private::init::<Lag<DETACH>>(vec![]).unwrap();
    let first = run::<Lag<DETACH>>(batch(&[(1, "héllo", 1.5), (2, "wörld", 2.5)]));
    assert_eq!(first.outcomes, vec![Outcome::Emit(0), Outcome::Emit(1)]);
    let second = run::<Lag<DETACH>>(batch(&[(3, "x", 3.5)]));
    // A row from an earlier batch is never mistaken for the current input row.
    assert_eq!(second.outcomes, vec![Outcome::Emit(1)]);
    let v = &second.rows.values;
    assert_eq!(v.types, vec![2, 4, 0, 3]);
    assert_eq!(
        (v.ints.as_slice(), v.floats.as_slice()),
        (&[2][..], &[2.5][..])
    );
    assert_eq!(v.text, "wörld");
}

#[test]
fn attached_rows_carried_across_batches_keep_their_values() {
    rows_carried_across_batches::<false>();
}

#[test]
fn detached_rows_carried_across_batches_keep_their_values() {
    rows_carried_across_batches::<true>();
}

#[test]
fn detach_decodes_every_value_and_keeps_equality() {
    struct Check;
    impl Transform for Check {
        fn init(_: &Params) -> Result<Self, Error> {
            Ok(Check)
        }
        fn transform(&mut self, row: Row) -> Result<Vec<Row>, Error> {
            let copy = row.clone().detach();
            assert_eq!(copy, row);
            assert_eq!(copy.get("b"), Some(&Value::String("hé".into())));
            assert_eq!(copy.get("n"), Some(&Value::Null));
            Ok(vec![row])
        }
    }
    sluice_guest::__private::init::<Check>(vec![]).unwrap();
    let out = run::<Check>(batch(&[(7, "hé", 0.25)]));
    assert_eq!(out.outcomes, vec![Outcome::Keep]);
}

#[test]
fn unknown_params_are_rejected_naming_what_is_known() {
    let params = Params::new(vec![("x".into(), "1".into())]);
    let reason = |known: &[&str]| match params.allow_only(known) {
        Err(Error::InvalidParam(e)) => {
            assert_eq!(e.name, "x");
            e.reason
        }
        other => panic!("{other:?}"),
    };
    assert_eq!(reason(&["a", "b"]), "unknown param (expected one of: a, b)");
    assert_eq!(
        reason(&[]),
        "unknown param (this transform takes no params)"
    );
    assert!(params.allow_only(&["x"]).is_ok());
}
