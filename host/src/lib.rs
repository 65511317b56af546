//! sluice: replay a CSV file into Kafka as a live feed, consume it, run every record through
//! WebAssembly transform components (the `sluice:transform` WIT package), and bulk-load the
//! results into Snowflake exactly once.
//!
//! One module per pipeline stage; [`pipeline`] wires them together with bounded channels.

/// `println!` that does not panic when stdout's reader has gone (`sluice schema | head -1`): the
/// line goes nowhere and the command goes on to its own exit code.
#[macro_export]
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(
            std::io::stdout(),
            "{}",
            $crate::config::redact_output(&format!($($arg)*))
        );
    }};
}

/// `eprintln!` that does not panic when stderr's reader has gone (`2>&1 | head -1`).
#[macro_export]
macro_rules! errln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(
            std::io::stderr(),
            "{}",
            $crate::config::redact_output(&format!($($arg)*))
        );
    }};
}

/// An error and its sources, `outer: inner: ...` (as anyhow's `{:#}` shows them), skipping a
/// source whose text the outer one already contains (a CSV read error keeps the parser's reason
/// once).
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let part = s.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    text
}

/// `1 row`, `2 rows`: `n` and `what`, plural unless `n` is 1.
pub(crate) fn counted(n: impl std::fmt::Display, what: &str) -> String {
    match n.to_string() {
        n if n == "1" => format!("1 {what}"),
        n => format!("{n} {what}s"),
    }
}

pub mod broker;
pub mod config;
pub mod consume;
pub mod dead_letter;
pub mod metrics;
pub mod pipeline;
pub mod row;
pub mod sink;
pub mod source;
pub mod transform;
pub mod validate;

/// Why another user could have written the file or directory `meta` describes, if one could:
/// it belongs to someone other than this user or root, or its mode lets group or others write.
/// Code sluice runs from its cache (the managed broker, compiled transforms) must pass this.
pub(crate) fn writable_by_others(meta: &std::fs::Metadata) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let me = rustix::process::geteuid().as_raw();
    if meta.uid() != me && meta.uid() != 0 {
        return Some(format!("it belongs to another user (uid {})", meta.uid()));
    }
    (meta.mode() & 0o022 != 0).then(|| {
        format!(
            "other users can write in it (mode {:o})",
            meta.mode() & 0o7777
        )
    })
}

/// The per-user cache sluice keeps built and compiled artifacts in (the managed broker, compiled
/// transforms): `$SLUICE_CACHE_DIR`, else `$XDG_CACHE_HOME/sluice`, else `$HOME/.cache/sluice`;
/// `None` without any of them.
pub fn cache_root() -> Option<std::path::PathBuf> {
    let var = |name| std::env::var_os(name).filter(|v| !v.is_empty());
    var("SLUICE_CACHE_DIR")
        .map(std::path::PathBuf::from)
        // The XDG spec says to ignore a relative one.
        .or_else(|| {
            var("XDG_CACHE_HOME")
                .filter(|x| std::path::Path::new(x).is_absolute())
                .map(|x| std::path::Path::new(&x).join("sluice"))
        })
        .or_else(|| var("HOME").map(|h| std::path::Path::new(&h).join(".cache").join("sluice")))
}
