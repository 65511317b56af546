//! What a guest writes to its stdout and stderr.
//!
//! A guest has no stdio of its own: what it writes is never shown unless its transform sets
//! `debug_stdio`. It is still kept, the last [`TAIL_BYTES`] of each call, because a Rust guest
//! that panics says why only there: the trap itself is a bare `unreachable`, so a failure's
//! reason quotes the tail ([`GuestOutput::explain`]). With `debug_stdio` each line also goes to
//! sluice's stderr, prefixed with the transform's name, written straight to the file descriptor:
//! the guest may run while the thread that started it holds the stderr lock (`transform test`
//! writes its report through one), and one `write` per line keeps lines whole beside the logs.
//! A shown line goes through the transform's redaction first: a guest that prints a param it was
//! given from the environment (a salt, a token) must not put the secret in sluice's logs, and
//! its control characters become spaces, so that it cannot rewrite the operator's terminal.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError, StreamResult};

/// The most a guest may write to stdout or stderr in one call (what `check-write` grants).
const MAX_WRITE: usize = 64 * 1024;

/// How much of a call's output a failure's reason may quote, in bytes.
pub const TAIL_BYTES: usize = 1024;

/// The longest line shown with `debug_stdio`: a longer one is shown in pieces, so that a guest
/// writing without line breaks cannot grow the host's memory (its own is capped, this is not).
const MAX_LINE: usize = 16 * 1024;

/// The guest's stdout and stderr (one sink for both), shared by the streams WASI hands out.
#[derive(Clone)]
pub struct GuestOutput(Arc<Mutex<Output>>);

/// What a shown line goes through before it is written: the transform's secret masking.
pub type Redact = Box<dyn Fn(String) -> String + Send>;

/// Why a call into the guest runs, which its shown output says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pass {
    /// The first time: a batch, or `init`.
    First,
    /// One record of a failed batch, run again alone to find the one to blame.
    Alone,
    /// A call run again on a fresh instance: what the previous instance's earlier calls left
    /// (memory grown, handles leaked) may be what failed it.
    Fresh,
}

struct Output {
    /// Masks secrets in a shown line.
    redact: Redact,
    /// The texts `redact` masks: a line shown in pieces, or a tail cut at its start, is never
    /// cut inside one of them, where masking could not find either half.
    secrets: Vec<Vec<u8>>,
    /// The longest of `secrets`: how much of a line shown in pieces waits for the next piece.
    hold: usize,
    /// Where shown lines go: sluice's stderr.
    show: fn(&[u8]),
    /// When the output is also shown, what each line of it starts with, by [`Pass`]: `[name] `,
    /// `[name, re-run alone] `, `[name, again on a fresh instance] `. A call run again repeats
    /// output, which would otherwise read as the guest doing it twice.
    echo: Option<[Vec<u8>; 3]>,
    /// The current call's pass.
    pass: Pass,
    /// The last bytes written since the current call started.
    tail: Vec<u8>,
    /// A line being written, not yet shown.
    line: Vec<u8>,
}

impl GuestOutput {
    /// Output that is kept for failures and, when `echo` is set, shown under `name`, each line
    /// through `redact`, which masks `secrets`.
    pub fn new(name: &str, echo: bool, redact: Redact, secrets: Vec<String>) -> GuestOutput {
        let out = Output {
            redact,
            hold: secrets.iter().map(String::len).max().unwrap_or(0),
            secrets: secrets.into_iter().map(String::into_bytes).collect(),
            show: to_stderr,
            echo: echo.then(|| {
                ["", ", re-run alone", ", again on a fresh instance"]
                    .map(|said| format!("[{name}{said}] ").into_bytes())
            }),
            pass: Pass::First,
            tail: Vec::new(),
            line: Vec::new(),
        };
        GuestOutput(Arc::new(Mutex::new(out)))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Output> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Forgets the previous call's output; `pass`: why the call runs.
    pub fn start_call(&self, pass: Pass) {
        let mut out = self.lock();
        out.flush_line();
        out.tail.clear();
        out.pass = pass;
    }

    /// What the guest wrote in this call that tells why it failed, on one line: from the last
    /// Rust panic message if there is one, else its last lines; `None` if it wrote nothing.
    pub fn explain(&self) -> Option<String> {
        let mut out = self.lock();
        out.flush_line();
        let text = String::from_utf8_lossy(&out.tail).into_owned();
        let from = text.rfind("panicked at ").unwrap_or(0);
        // Guest bytes end up in logs and dead letters: no terminal escapes or other controls.
        let text: String = text[from..]
            .chars()
            .map(|c| match super::bindings::garbles(c) && c != '\n' {
                true => ' ',
                false => c,
            })
            .collect();
        let said: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with("note: run with `RUST_BACKTRACE"))
            .collect();
        let mut joined = String::new();
        for line in said {
            if !joined.is_empty() {
                // A panic's location line ends with a colon and its message follows.
                joined.push_str(if joined.ends_with(':') { " " } else { " / " });
            }
            joined.push_str(line);
        }
        (!joined.is_empty()).then_some(joined)
    }

    fn write(&self, bytes: &[u8]) {
        let mut guard = self.lock();
        let out = &mut *guard;
        out.tail.extend_from_slice(bytes);
        if out.tail.len() > TAIL_BYTES {
            let cut = safe_cut(&out.tail, out.tail.len() - TAIL_BYTES, &out.secrets);
            out.tail.drain(..cut);
        }
        if out.echo.is_some() {
            for piece in bytes.split_inclusive(|&b| b == b'\n') {
                out.line.extend_from_slice(piece);
                if piece.ends_with(b"\n") {
                    out.flush_line();
                } else if out.line.len() >= MAX_LINE {
                    // Its last bytes wait for the next piece: a secret they start would otherwise
                    // show in two halves, neither of which masking finds.
                    let at = out.line.len() - out.hold.min(out.line.len());
                    let at = safe_cut(&out.line, at, &out.secrets);
                    let rest = out.line.split_off(at);
                    out.flush_line();
                    out.line = rest;
                }
            }
        }
    }
}

impl Output {
    /// Shows the pending line, if output is shown.
    fn flush_line(&mut self) {
        let Some(echo) = &self.echo else { return };
        let prefix = &echo[self.pass as usize];
        if self.line.is_empty() {
            return;
        }
        let line: String = String::from_utf8_lossy(&self.line)
            .trim_end_matches('\n')
            .chars()
            .map(|c| match super::bindings::garbles(c) && c != '\t' {
                true => ' ',
                false => c,
            })
            .collect();
        self.line.clear();
        let line = (self.redact)(line);
        let mut text = Vec::with_capacity(prefix.len() + line.len() + 1);
        text.extend_from_slice(prefix);
        text.extend_from_slice(line.as_bytes());
        text.push(b'\n');
        (self.show)(&text);
    }
}

/// The first place at or after `at` where `text` can be cut: not inside a character, and not
/// inside any of `secrets` that `text` holds whole (which then stays on the left of the cut).
fn safe_cut(text: &[u8], at: usize, secrets: &[Vec<u8>]) -> usize {
    let mut cut = at.min(text.len());
    loop {
        let before = cut;
        while cut < text.len() && text[cut] & 0xC0 == 0x80 {
            cut += 1;
        }
        for s in secrets.iter().filter(|s| !s.is_empty()) {
            // An occurrence that starts before the cut and ends after it.
            let from = cut.saturating_sub(s.len() - 1);
            if let Some(start) =
                (from..cut).find(|&i| i + s.len() > cut && text[i..].starts_with(s))
            {
                cut = start + s.len();
            }
        }
        if cut == before {
            return cut;
        }
    }
}

/// Writes a shown line to sluice's stderr, in one `write` where it can.
fn to_stderr(text: &[u8]) {
    // A closed or full stderr loses the guest's debug output, never the guest's record.
    let mut rest = text;
    while !rest.is_empty() {
        match rustix::io::write(rustix::stdio::stderr(), rest) {
            Ok(0) => break,
            Ok(n) => rest = &rest[n..],
            Err(rustix::io::Errno::INTR) => {}
            Err(_) => break,
        }
    }
}

impl Drop for Output {
    fn drop(&mut self) {
        self.flush_line();
    }
}

impl IsTerminal for GuestOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestOutput {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[async_trait::async_trait]
impl Pollable for GuestOutput {
    // Always ready: output is taken at once, so a guest never waits on it.
    async fn ready(&mut self) {}
}

impl OutputStream for GuestOutput {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        // More than `check_write` allowed breaks the WASI contract, and one huge write would
        // keep the host busy where the CPU limit cannot interrupt it.
        if bytes.len() > MAX_WRITE {
            return Err(StreamError::Trap(wasmtime::format_err!(
                "wrote {} bytes at once to stdout or stderr, past the {MAX_WRITE} that \
                 check-write allows",
                bytes.len()
            )));
        }
        GuestOutput::write(self, &bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(MAX_WRITE)
    }
}

impl tokio::io::AsyncWrite for GuestOutput {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        GuestOutput::write(&self, buf);
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_message_is_what_explains_a_failure() {
        let out = GuestOutput::new("t", false, Box::new(|s| s), Vec::new());
        assert_eq!(out.explain(), None);
        out.write(b"starting\n");
        out.write(b"thread '<unnamed>' panicked at src/lib.rs:9:5:\nboom at ");
        out.write(b"155.05\nnote: run with `RUST_BACKTRACE=1` environment variable to display a backtrace\n");
        assert_eq!(
            out.explain().as_deref(),
            Some("panicked at src/lib.rs:9:5: boom at 155.05")
        );
        out.start_call(Pass::First);
        assert_eq!(out.explain(), None);
        out.write(b"a\n\nb");
        assert_eq!(out.explain().as_deref(), Some("a / b"));
        // Only the tail is kept, however much the guest writes, and without control characters.
        out.write(&vec![b'x'; 10 * TAIL_BYTES]);
        assert_eq!(out.explain().map(|s| s.len()), Some(TAIL_BYTES));
        out.start_call(Pass::First);
        out.write(b"red \x1b[31malert\x07\n");
        assert_eq!(out.explain().as_deref(), Some("red  [31malert"));
    }

    /// A secret is never cut in two where masking could not find it: at the start of the tail a
    /// failure quotes (it goes whole), or at a break in a line too long to show whole (it waits
    /// for the next piece, or stays whole in this one). Nor is a character cut in two.
    #[test]
    fn a_secret_is_never_shown_in_part() {
        let secret = || vec!["SECRET12".to_owned()];
        let mask = || -> Redact { Box::new(|s: String| s.replace("SECRET12", "***")) };
        for lead in [0, 3, 10] {
            let out = GuestOutput::new("t", false, mask(), secret());
            out.write(&vec![b'a'; lead]);
            out.write(b"SECRET12");
            out.write(&vec![b'y'; TAIL_BYTES - 4]);
            let said = out.explain().unwrap();
            assert!(
                !said.contains("ET12") && !said.contains("SECR"),
                "{lead}: {said}"
            );
            assert_eq!(said, "y".repeat(TAIL_BYTES - 4), "{lead}");
        }
        // A tail cut inside a character drops the whole character.
        let out = GuestOutput::new("t", false, mask(), Vec::new());
        out.write("中".as_bytes());
        out.write(&vec![b'y'; TAIL_BYTES - 1]);
        assert_eq!(out.explain().unwrap(), "y".repeat(TAIL_BYTES - 1));

        // A line shown in pieces.
        thread_local!(static SHOWN: std::cell::RefCell<Vec<u8>> = Default::default());
        let shown_after = |writes: &[&[u8]]| {
            let out = GuestOutput::new("t", true, mask(), secret());
            out.lock().show = |text| SHOWN.with(|s| s.borrow_mut().extend_from_slice(text));
            for w in writes {
                out.write(w);
            }
            drop(out);
            SHOWN.with(|s| String::from_utf8(s.take()).unwrap())
        };
        let z = |n: usize| vec![b'z'; n];
        for writes in [
            // The secret's start ends the first piece; its rest comes later.
            vec![
                z(MAX_LINE - 4),
                b"SECR".to_vec(),
                b"ET12 and more\n".to_vec(),
            ],
            // It lies across the point where the held-back bytes start.
            vec![
                [z(MAX_LINE - 12), b"SECRET12zzzz".to_vec()].concat(),
                b" and more\n".to_vec(),
            ],
        ] {
            let writes: Vec<&[u8]> = writes.iter().map(Vec::as_slice).collect();
            let shown = shown_after(&writes);
            let tail = &shown[shown.len() - 40..];
            assert!(!shown.contains("SECR") && !shown.contains("ET12"), "{tail}");
            assert!(shown.contains("***"), "{tail}");
            assert!(shown.ends_with(" and more\n"), "{tail}");
            assert_eq!(shown.matches("[t] ").count(), 2, "{tail}");
        }
        // A multi-byte character at the break is shown whole, in one piece.
        let shown = shown_after(&[
            &[z(MAX_LINE - 5), "中中中".as_bytes().to_vec()].concat(),
            b"\n",
        ]);
        assert!(
            !shown.contains('\u{fffd}'),
            "{}",
            &shown[shown.len() - 40..]
        );
        assert_eq!(shown.matches('中').count(), 3);
    }
}
