//! A transform's own unit tests run natively, where there is no host: `meta()` answers what the
//! test set with `testing::set_meta`, and says what to do when nothing was set.

use sluice_guest::{Error, Header, Params, RecordMeta, Row, Transform, Value};

/// Adds the record's partition and `sluice.line` header to each row.
struct Stamp;

impl Transform for Stamp {
    fn init(_: &Params) -> Result<Self, Error> {
        Ok(Stamp)
    }

    fn transform(&mut self, mut row: Row) -> Result<Vec<Row>, Error> {
        let meta = sluice_guest::meta();
        row.push("partition", Value::Int(meta.partition.into()));
        let line = meta.headers.iter().find(|h| h.key == "sluice.line");
        let line = line.map(|h| String::from_utf8_lossy(&h.value).into_owned());
        row.push("line", line.map_or(Value::Null, Value::String));
        Ok(vec![row])
    }
}

#[test]
fn meta_answers_what_the_test_set() {
    sluice_guest::testing::set_meta(RecordMeta {
        topic: "t".into(),
        partition: 3,
        offset: 41,
        key: None,
        timestamp_ms: None,
        headers: vec![Header {
            key: "sluice.line".into(),
            value: b"17".to_vec(),
        }],
    });
    let mut t = Stamp::init(&Params::new(vec![])).unwrap();
    let out = t
        .transform([("id", Value::Int(1))].into_iter().collect())
        .unwrap();
    let got: Vec<(&str, &Value)> = out[0].iter().collect();
    assert_eq!(
        got,
        [
            ("id", &Value::Int(1)),
            ("partition", &Value::Int(3)),
            ("line", &Value::String("17".into()))
        ]
    );
}

#[test]
#[should_panic(expected = "set the record's metadata first with sluice_guest::testing::set_meta")]
fn meta_unset_in_a_native_test_says_how_to_set_it() {
    sluice_guest::meta();
}

/// `Params::number` reads finite numbers only; `parse::<f64>` would take `NaN` and `inf`.
#[test]
fn number_params_are_finite() {
    let params = Params::new(
        [
            ("a", " 2.5 "),
            ("b", "-3e2"),
            ("c", "NaN"),
            ("d", "inf"),
            ("e", "1e400"),
            ("f", "x"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect(),
    );
    assert_eq!(params.number("a").unwrap(), Some(2.5));
    assert_eq!(params.number("b").unwrap(), Some(-300.0));
    assert_eq!(params.number("none").unwrap(), None);
    for bad in ["c", "d", "e", "f"] {
        let err = params.number(bad).unwrap_err();
        assert!(
            matches!(&err, Error::InvalidParam(f) if f.name == bad),
            "{bad}: {err:?}"
        );
    }
    assert!(params.parse::<f64>("c").unwrap().unwrap().is_nan());
    // What `parse` expected, in its error.
    let err = params.parse::<usize>("b").unwrap_err();
    assert!(
        matches!(&err, Error::InvalidParam(f) if f.reason.starts_with("\"-3e2\" is not a usize: ")),
        "{err:?}"
    );
    let err = params.parse::<i64>("b").unwrap_err();
    assert!(
        matches!(&err, Error::InvalidParam(f) if f.reason.starts_with("\"-3e2\" is not an i64: ")),
        "{err:?}"
    );
    let err = params.parse::<std::net::Ipv4Addr>("b").unwrap_err();
    assert!(
        matches!(&err, Error::InvalidParam(f) if f.name == "b" && f.reason.starts_with("\"-3e2\" is not an Ipv4Addr: ")),
        "{err:?}"
    );
}
