//! Host bindings generated from `wit/transform.wit` (the `sluice:transform@0.1.0` world).
#![allow(missing_docs)]

wasmtime::component::bindgen!({
    path: "../wit",
    world: "transform",
});

pub use self::sluice::transform::types::{
    Header, Outcome, Output, RecordMeta, Rows, TransformError as GuestError, ValueType, Values,
};

/// A guest error as a human-readable message on one line (bindgen's own `Display` is
/// `Debug`-like). The guest's text has its control characters replaced, as [`one_line`] does.
pub fn describe(e: &GuestError) -> String {
    let text = match e {
        GuestError::InvalidParam(e) => format!("invalid param `{}`: {}", e.name, e.reason),
        GuestError::MissingField(name) => format!("missing field `{name}`"),
        GuestError::InvalidValue(e) => format!("invalid value in field `{}`: {}", e.name, e.reason),
        GuestError::Other(s) => s.clone(),
    };
    one_line(text)
}

/// The case of a guest error and the field it names, for dead letters; the field name goes
/// through [`one_line`], like the rest of the guest's text.
pub fn fault(e: &GuestError) -> crate::dead_letter::GuestFault {
    let (case, field) = match e {
        GuestError::InvalidParam(e) => ("invalid-param", Some(&e.name)),
        GuestError::MissingField(name) => ("missing-field", Some(name)),
        GuestError::InvalidValue(e) => ("invalid-value", Some(&e.name)),
        GuestError::Other(_) => ("other", None),
    };
    crate::dead_letter::GuestFault {
        case,
        field: field.map(|f| one_line(f.clone())),
    }
}

/// `text` with every character that [`garbles`] a line replaced by a space. Text from a guest
/// ends up on terminals, in log lines and in dead letters: one failure is one line, and a guest
/// cannot clear a screen or fake the lines around it.
pub fn one_line(text: String) -> String {
    if !text.chars().any(garbles) {
        return text;
    }
    text.chars()
        .map(|c| if garbles(c) { ' ' } else { c })
        .collect()
}

/// Whether `c`, from a guest, could change how the text around it shows: a control character
/// (a line break, a terminal escape, a bell), a Unicode line or paragraph separator, or a
/// bidirectional override or isolate, which can make a line read backwards.
pub(crate) fn garbles(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{2028}' | '\u{2029}' | '\u{200E}' | '\u{200F}' | '\u{061C}'
                | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}'
        )
}

#[cfg(test)]
mod tests {
    use super::sluice::transform::types::FieldError;
    use super::*;

    #[test]
    fn guest_text_is_shown_on_one_line_without_escapes() {
        let e = GuestError::InvalidValue(FieldError {
            name: "na\u{1b}[31mme".into(),
            reason: "bad\r\nrecord 4: ok\u{7}".into(),
        });
        assert_eq!(
            describe(&e),
            "invalid value in field `na [31mme`: bad  record 4: ok "
        );
        assert_eq!(one_line("plain text".into()), "plain text");
        assert_eq!(
            one_line("a\u{202E}cba\u{2066}x\u{2028}y é".into()),
            "a cba x y é"
        );
    }
}
