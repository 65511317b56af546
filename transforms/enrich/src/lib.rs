//! `enrich`: reshapes rows in place. Every param is optional, but at least one is required;
//! they apply in this order:
//!
//! - `rename`: `old:new[,old:new...]` renames fields (a row that already has `new` fails);
//! - `cast`: `field:type[,...]` converts values to `int`, `float`, `string` or `bool` (a float,
//!   or a string holding one, becomes an int rounded half away from zero, as Snowflake's `CAST`
//!   does, a string written in decimal digit by digit, so `9007199254740993.0` loses nothing to a
//!   float; one past the int range, infinite or NaN fails; a string becomes a float only if it
//!   holds a finite number, not `NaN`, `inf` or `1e400`; bools are 1 and 0 as numbers);
//! - `uppercase`: `field[,field...]` uppercases string fields (all of Unicode: `straße` becomes
//!   `STRASSE`);
//! - `compute`: `name=a OP b` appends (or replaces) field `name` computed from two operands,
//!   each a field name or a number written in decimal (`2`, `-1.5`, `2e-1`), with `OP` one of
//!   `+ - * /` (int when both sides are ints and `OP` is not `/`, float otherwise; null when an
//!   operand is null; a string holding a number counts as that number, a float, and one past the
//!   float range such as `1e999` fails the record). One operator only, so a field name in it
//!   cannot hold `+ - * / = ,` (rename such a field first). An int result that overflows, or a
//!   float result that is infinite or NaN from finite operands (a division by zero), fails the
//!   record.
//!
//! A row lacking a named field fails with `missing-field`; an impossible cast or computation
//! with `invalid-value`.

use sluice_guest::{Error, Params, Row, Transform, Value, parse_decimal, parse_number};

#[derive(Clone, Copy)]
enum Type {
    Int,
    Float,
    String,
    Bool,
}

enum Operand {
    Field(String),
    Number(Value),
}

struct Compute {
    name: String,
    left: Operand,
    op: char,
    right: Operand,
}

/// The transform: the rename, cast, uppercase and compute steps from its params.
/// Public so that host benchmarks can run this same code natively (see `docs/BENCHMARKS.md`).
pub struct Enrich {
    rename: Vec<(String, String)>,
    cast: Vec<(String, Type)>,
    uppercase: Vec<String>,
    compute: Option<Compute>,
}

fn list(params: &Params, name: &str) -> Vec<String> {
    params
        .get(name)
        .map(|v| {
            v.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

fn pairs(params: &Params, name: &str) -> Result<Vec<(String, String)>, Error> {
    list(params, name)
        .into_iter()
        .map(|item| match item.split_once(':') {
            Some((a, b)) if !a.trim().is_empty() && !b.trim().is_empty() && !b.contains(':') => {
                Ok((a.trim().to_owned(), b.trim().to_owned()))
            }
            _ => Err(Error::invalid_param(name, format!("{item:?} is not `a:b`"))),
        })
        .collect()
}

/// An operand: a number written in decimal, else a field name, which cannot hold an operator,
/// `=` or `,` (`a+b+c` or `r=a*b,q=a+b` would otherwise read a field `b+c` or `b,q=a+b`, and fail
/// every record instead of the params).
fn operand(s: &str) -> Result<Operand, String> {
    if let Ok(i) = s.parse::<i64>() {
        Ok(Operand::Number(Value::Int(i)))
    } else if let Some(f) = parse_number(s) {
        Ok(Operand::Number(Value::Float(f)))
    } else if s.contains(['+', '-', '*', '/', '=', ',']) {
        Err(format!(
            "`{s}` is neither a number nor a field name (one operator only; a field named with \
             + - * / = or , needs a rename first)"
        ))
    } else {
        Ok(Operand::Field(s.to_owned()))
    }
}

fn parse_compute(spec: &str) -> Result<Compute, Error> {
    let bad = |why: &str| {
        Error::invalid_param(
            "compute",
            format!("{spec:?}: {why} (expected `name=a OP b`)"),
        )
    };
    let (name, expr) = spec.split_once('=').ok_or_else(|| bad("missing `=`"))?;
    let expr = expr.trim();
    // Skip the first character so that a leading minus sign is part of the left operand, and
    // the sign of a number's exponent (`2e-1`).
    let exponent_sign = |i: usize| {
        let Some(mantissa) = expr[..i].strip_suffix(['e', 'E']) else {
            return false;
        };
        let mantissa = mantissa.trim();
        // Digits, not `inf`: a field may be named `infe`.
        mantissa.bytes().any(|b| b.is_ascii_digit())
            && mantissa
                .bytes()
                .all(|b| b.is_ascii_digit() || b"+-.".contains(&b))
            && parse_number(mantissa).is_some()
    };
    let at = expr
        .char_indices()
        .skip(1)
        .find(|&(i, c)| match c {
            '*' | '/' => true,
            '+' | '-' => !exponent_sign(i),
            _ => false,
        })
        .map(|(i, _)| i)
        .ok_or_else(|| bad("no operator"))?;
    let (left, right) = (expr[..at].trim(), expr[at + 1..].trim());
    if name.trim().is_empty() || left.is_empty() || right.is_empty() {
        return Err(bad("empty name or operand"));
    }
    let name = name.trim();
    if name.contains(['+', '-', '*', '/', '=', ',']) {
        return Err(bad(&format!(
            "the name `{name}` holds an operator, `=` or `,`"
        )));
    }
    Ok(Compute {
        name: name.to_owned(),
        left: operand(left).map_err(|why| bad(&why))?,
        op: expr[at..].chars().next().unwrap_or('+'),
        right: operand(right).map_err(|why| bad(&why))?,
    })
}

impl Transform for Enrich {
    fn init(params: &Params) -> Result<Self, Error> {
        params.allow_only(&["rename", "cast", "uppercase", "compute"])?;
        let cast = pairs(params, "cast")?
            .into_iter()
            .map(|(field, ty)| {
                let ty = match ty.as_str() {
                    "int" => Type::Int,
                    "float" => Type::Float,
                    "string" => Type::String,
                    "bool" => Type::Bool,
                    other => {
                        return Err(Error::invalid_param(
                            "cast",
                            format!("unknown type {other:?} (expected int, float, string or bool)"),
                        ));
                    }
                };
                Ok((field, ty))
            })
            .collect::<Result<_, _>>()?;
        let enrich = Enrich {
            rename: pairs(params, "rename")?,
            cast,
            uppercase: list(params, "uppercase"),
            compute: params.get("compute").map(parse_compute).transpose()?,
        };
        if enrich.rename.is_empty()
            && enrich.cast.is_empty()
            && enrich.uppercase.is_empty()
            && enrich.compute.is_none()
        {
            // Named after a param given empty (`uppercase: " , "`), if there is one.
            let given = ["rename", "cast", "uppercase", "compute"]
                .into_iter()
                .find(|k| params.get(k).is_some())
                .unwrap_or("rename");
            return Err(Error::invalid_param(
                given,
                "names nothing to do: give at least one of rename, cast, uppercase, compute",
            ));
        }
        Ok(enrich)
    }

    fn transform(&mut self, mut row: Row) -> Result<Vec<Row>, Error> {
        for (from, to) in &self.rename {
            // Renaming onto a field the row has would give it two fields of one name: a table
            // could keep only one of their values.
            if from != to && row.get(to).is_some() {
                if row.get(from).is_none() {
                    return Err(Error::MissingField(from.clone()));
                }
                return Err(Error::other(format!(
                    "cannot rename `{from}` to `{to}`: the row already has a field `{to}`"
                )));
            }
            if !row.rename(from, to) {
                return Err(Error::MissingField(from.clone()));
            }
        }
        for (field, ty) in &self.cast {
            let v = row
                .get_mut(field)
                .ok_or_else(|| Error::MissingField(field.clone()))?;
            *v = cast(field, std::mem::replace(v, Value::Null), *ty)?;
        }
        for field in &self.uppercase {
            match row.get_mut(field) {
                // In place when it can be: most text is ASCII, and then the length cannot change.
                Some(Value::String(s)) if s.is_ascii() => s.make_ascii_uppercase(),
                Some(Value::String(s)) => *s = s.to_uppercase(),
                Some(Value::Null) => {}
                Some(other) => {
                    return Err(Error::invalid_value(
                        field,
                        format!("cannot uppercase a {}", other.type_name()),
                    ));
                }
                None => return Err(Error::MissingField(field.clone())),
            }
        }
        if let Some(c) = &self.compute {
            let value = compute(&row, c)?;
            row.set(&c.name, value);
        }
        Ok(vec![row])
    }
}

fn cast(field: &str, v: Value, ty: Type) -> Result<Value, Error> {
    let fail = |v: &Value| {
        let to = match ty {
            Type::Int => "int",
            Type::Float => "float",
            Type::String => "string",
            Type::Bool => "bool",
        };
        Error::invalid_value(
            field,
            format!("cannot cast {} {:?} to {to}", v.type_name(), v.to_text()),
        )
    };
    Ok(match (ty, v) {
        (_, Value::Null) => Value::Null,
        (Type::String, v) => Value::String(v.to_text()),
        (Type::Int, Value::Int(i)) => Value::Int(i),
        // `as` would saturate (1e308 becoming i64::MAX) and truncate (2.7 becoming 2).
        (Type::Int, Value::Float(f)) => match f.round() {
            r if (-9.223_372_036_854_776e18..9.223_372_036_854_776e18).contains(&r) => {
                Value::Int(r as i64)
            }
            _ => return Err(fail(&Value::Float(f))),
        },
        (Type::Int, Value::Bool(b)) => Value::Int(i64::from(b)),
        // Digit by digit when written in decimal: as a float, `9007199254740993.0` would lose one.
        (Type::Int, Value::String(s)) => match (parse_decimal(&s), parse_number(&s)) {
            (Some(d), _) => match d.round() {
                Some(i) => Value::Int(i),
                None => return Err(fail(&Value::String(s))),
            },
            // `1e3`: as the float it holds.
            (None, Some(f)) => return cast(field, Value::Float(f), ty),
            (None, None) => return Err(fail(&Value::String(s))),
        },
        (Type::Float, Value::Int(i)) => Value::Float(i as f64),
        (Type::Float, Value::Float(f)) => Value::Float(f),
        (Type::Float, Value::Bool(b)) => Value::Float(f64::from(u8::from(b))),
        // Not `NaN` or `inf` (text, as in a CSV cell), nor past the float range (`1e400`).
        (Type::Float, Value::String(s)) => match parse_number(&s) {
            Some(f) if f.is_finite() => Value::Float(f),
            _ => return Err(fail(&Value::String(s))),
        },
        (Type::Bool, Value::Bool(b)) => Value::Bool(b),
        (Type::Bool, Value::Int(i)) => Value::Bool(i != 0),
        (Type::Bool, Value::String(s)) => match s.trim().to_ascii_lowercase().as_str() {
            "true" | "t" | "yes" | "1" => Value::Bool(true),
            "false" | "f" | "no" | "0" => Value::Bool(false),
            _ => return Err(fail(&Value::String(s))),
        },
        (_, v) => return Err(fail(&v)),
    })
}

fn compute<'a>(row: &'a Row, c: &'a Compute) -> Result<Value, Error> {
    // Operands are borrowed, not cloned: this runs once per row.
    let get = |o: &'a Operand| -> Result<&'a Value, Error> {
        match o {
            Operand::Number(v) => Ok(v),
            Operand::Field(f) => row.require(f),
        }
    };
    let (l, r) = (get(&c.left)?, get(&c.right)?);
    if matches!(l, Value::Null) || matches!(r, Value::Null) {
        return Ok(Value::Null);
    }
    if let (Value::Int(a), Value::Int(b), '+' | '-' | '*') = (l, r, c.op) {
        let v = match c.op {
            '+' => a.checked_add(*b),
            '-' => a.checked_sub(*b),
            _ => a.checked_mul(*b),
        };
        return v
            .map(Value::Int)
            .ok_or_else(|| Error::invalid_value(&c.name, "integer overflow"));
    }
    let num = |v: &Value, o: &Operand| {
        let name = match o {
            Operand::Field(f) => f.as_str(),
            Operand::Number(_) => c.name.as_str(),
        };
        let held = match v {
            // Text past the float range (`1e999`, which an inferred CSV column keeps as text)
            // would otherwise compute an infinity out of what reads as a finite number, where a
            // finite result past the range fails. A float operand that is infinite already (a
            // column declared `float`) is the data's own, and gives what it gives.
            Value::String(s) => match parse_number(s) {
                Some(f) if !f.is_finite() => {
                    return Err(Error::invalid_value(
                        name,
                        "the number is past the float range",
                    ));
                }
                n => n,
            },
            v => v.as_f64(),
        };
        held.ok_or_else(|| Error::invalid_value(name, format!("{} is not a number", v.type_name())))
    };
    let (a, b) = (num(l, &c.left)?, num(r, &c.right)?);
    let v = match c.op {
        '+' => a + b,
        '-' => a - b,
        '*' => a * b,
        _ => a / b,
    };
    // Infinite or NaN operands give what they give; finite ones that do not give a number went
    // past the float range, or divided by zero.
    if !v.is_finite() && a.is_finite() && b.is_finite() {
        let why = match (c.op, b) {
            ('/', 0.0) => "division by zero",
            _ => "the result is past the float range",
        };
        return Err(Error::invalid_value(&c.name, why));
    }
    Ok(Value::Float(v))
}

sluice_guest::export!(Enrich);
