//! Test guest: reports what the sandbox lets it see. For every row it emits one row with the
//! number of environment variables, whether listing `/` or `.` worked and whether a TCP connect
//! worked, and prints a line on stdout and stderr (which the host discards unless `debug_stdio`
//! is set). A row with an int field `sleep_ms` makes it sleep that long first; one with a field
//! `wait_ready` waits on a timer that is already due, with `pollable.block` and with `poll`;
//! one with an int field `leak_handles` creates that many pollables and never drops them; one
//! with an int field `leak_kb` allocates that many KiB and never frees them; one with an int field
//! `fail_after` panics if this instance has already seen that many rows (state gone bad), and
//! one with an int field `hang_after` loops forever then; one with a field `seen` gets it set to how many rows this instance has seen, itself included; one
//! with an int field `random_bytes` asks `wasi:random` for that many bytes in one call; one with
//! an int field `write_newlines` writes that many newlines to stderr in one `write` call; one with
//! an int field `exit` ends the process with that status (`std::process::exit`).
//! Param `say` makes `init` print its value on stderr; param `panic`, panic with it; param
//! `reject`, fail with an `invalid-param` error named by its value (a careless guest echoing a
//! secret).

use std::io::Write;

use sluice_guest::{Error, Params, Row, Transform, Value};

struct Probe {
    /// Rows this instance has seen.
    seen: i64,
}

impl Transform for Probe {
    fn init(params: &Params) -> Result<Probe, Error> {
        params.allow_only(&["say", "panic", "reject"])?;
        if let Some(value) = params.get("reject") {
            return Err(Error::invalid_param(value, format!("bad value {value}")));
        }
        if let Some(text) = params.get("say") {
            let _ = writeln!(std::io::stderr(), "{text}");
        }
        if let Some(text) = params.get("panic") {
            panic!("{text}");
        }
        Ok(Probe { seen: 0 })
    }

    fn transform(&mut self, row: Row) -> Result<Vec<Row>, Error> {
        self.seen += 1;
        if let Some(Value::Int(n)) = row.get("fail_after")
            && self.seen > *n
        {
            panic!("this instance has seen {} rows", self.seen - 1);
        }
        if let Some(Value::Int(n)) = row.get("hang_after")
            && self.seen > *n
        {
            loop {
                std::hint::black_box(self.seen);
            }
        }
        if row.get("seen").is_some() {
            let mut row = row;
            row.set("seen", Value::Int(self.seen));
            return Ok(vec![row]);
        }
        probe(row)
    }
}

fn probe(row: Row) -> Result<Vec<Row>, Error> {
    if let Some(Value::Int(ms)) = row.get("sleep_ms") {
        std::thread::sleep(std::time::Duration::from_millis(*ms as u64));
    }
    if row.get("wait_ready").is_some() {
        let due = wasip2::clocks::monotonic_clock::subscribe_duration(0);
        due.block();
        let ready = wasip2::io::poll::poll(&[&due]);
        assert_eq!(ready, [0]);
    }
    if let Some(Value::Int(n)) = row.get("leak_handles") {
        for _ in 0..*n {
            std::mem::forget(wasip2::clocks::monotonic_clock::subscribe_duration(1 << 60));
        }
    }
    if let Some(Value::Int(n)) = row.get("random_bytes") {
        // One call, however large: the host must bound what it allocates for it.
        let bytes = wasip2::random::random::get_random_bytes(*n as u64);
        assert_eq!(bytes.len() as i64, *n);
    }
    if let Some(Value::Int(n)) = row.get("write_newlines") {
        // One `write` of that many newlines to stderr, past what `check-write` allows if large.
        let stderr = wasip2::cli::stderr::get_stderr();
        let _ = stderr.write(&vec![b'\n'; *n as usize]);
    }
    if let Some(Value::Int(status)) = row.get("exit") {
        std::process::exit(*status as i32);
    }
    if let Some(Value::Int(kb)) = row.get("leak_kb") {
        // Touched, so that the pages are really in use, and leaked, so that memory only grows.
        Vec::leak(vec![1u8; *kb as usize * 1024]);
    }
    let env = std::env::vars().count() as i64;
    let fs = std::fs::read_dir("/").is_ok() || std::fs::read_dir(".").is_ok();
    let net = std::net::TcpStream::connect("127.0.0.1:9").is_ok();
    let _ = writeln!(std::io::stdout(), "probe stdout");
    let _ = writeln!(std::io::stderr(), "probe stderr");
    Ok(vec![
        [
            ("env", Value::Int(env)),
            ("fs", Value::Bool(fs)),
            ("net", Value::Bool(net)),
        ]
        .into_iter()
        .collect(),
    ])
}

sluice_guest::export!(Probe);
