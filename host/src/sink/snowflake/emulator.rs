//! The local Snowflake emulator: a fakesnow server (`fakesnow -s`) from the project venv, run as
//! a child process on a free loopback port.
//!
//! The child is started through a tiny `sh` watchdog in its own process group: the watchdog
//! kills fakesnow when the process that started it disappears (a test binary's statics never
//! drop, and a crashed `sluice run` must not leave a server behind), and [`Emulator::stop`] (or
//! drop) terminates the whole group.

use std::io::Read as _;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Why the emulator could not be started.
#[derive(Debug, thiserror::Error)]
pub enum EmulatorError {
    /// The venv (or its `fakesnow` script) is missing.
    #[error("fakesnow not found at {0}: run scripts/install-fakesnow.sh (or set SLUICE_VENV)")]
    NotInstalled(PathBuf),
    /// Spawning failed.
    #[error("cannot start fakesnow")]
    Spawn(#[source] std::io::Error),
    /// It did not start listening in time.
    #[error("fakesnow did not start listening on port {port} within {waited_ms} ms: {log_tail}")]
    NotReady {
        /// The port it was given.
        port: u16,
        /// How long we waited.
        waited_ms: u64,
        /// The end of its log.
        log_tail: String,
    },
}

/// Finds the project venv: `$SLUICE_VENV`, else `<workspace>/.venv`.
pub fn find_venv(workspace: &Path) -> Result<PathBuf, EmulatorError> {
    let venv = std::env::var_os("SLUICE_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace.join(".venv"));
    if venv.join("bin/fakesnow").is_file() {
        Ok(venv)
    } else {
        Err(EmulatorError::NotInstalled(venv))
    }
}

/// A running fakesnow server.
#[derive(Debug)]
pub struct Emulator {
    child: Option<Child>,
    port: u16,
    /// The server's own temporary directory, removed when it stops: its log, and the files PUT
    /// to its stages (rows of the pipeline), which fakesnow writes under `TMPDIR` and never
    /// removes.
    dir: PathBuf,
    log_path: PathBuf,
}

const WATCHDOG: &str = r#"
"$1" -s -p "$2" --host 127.0.0.1 &
c=$!
trap 'kill $c 2>/dev/null; exit 0' TERM INT HUP
while kill -0 "$3" 2>/dev/null && kill -0 $c 2>/dev/null; do sleep 0.5 & wait $!; done
kill $c 2>/dev/null
kill -0 "$3" 2>/dev/null || rm -rf "$4"
"#;

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl Emulator {
    /// Starts fakesnow from `venv` and waits until it accepts connections. Blocking (about two
    /// seconds, mostly Python imports); call it from `spawn_blocking` in async code.
    pub fn start(venv: &Path) -> Result<Emulator, EmulatorError> {
        let fakesnow = venv.join("bin/fakesnow");
        if !fakesnow.is_file() {
            return Err(EmulatorError::NotInstalled(venv.to_owned()));
        }
        let mut last = None;
        // A port picked free can be taken before fakesnow binds it; try a few.
        for _ in 0..3 {
            let port = free_port().map_err(EmulatorError::Spawn)?;
            let dir =
                std::env::temp_dir().join(format!("sluice-fakesnow-{}-{port}", std::process::id()));
            // Made here, and only here (a name someone else made first is theirs: the next port
            // makes another), private: it gets the pipeline's rows, and is removed whole.
            let mut private = std::fs::DirBuilder::new();
            std::os::unix::fs::DirBuilderExt::mode(&mut private, 0o700);
            if let Err(e) = private.create(&dir) {
                last = Some(EmulatorError::Spawn(e));
                continue;
            }
            let log_path = dir.join("fakesnow.log");
            let log = std::fs::File::create(&log_path).map_err(EmulatorError::Spawn)?;
            let child = Command::new("sh")
                .arg("-c")
                .arg(WATCHDOG)
                .arg("sluice-fakesnow-watchdog")
                .arg(&fakesnow)
                .arg(port.to_string())
                .arg(std::process::id().to_string())
                .arg(&dir)
                .env("TMPDIR", &dir)
                .stdin(Stdio::null())
                .stdout(log.try_clone().map_err(EmulatorError::Spawn)?)
                .stderr(log)
                .process_group(0)
                .spawn()
                .map_err(EmulatorError::Spawn)?;
            let mut emu = Emulator {
                child: Some(child),
                port,
                dir,
                log_path,
            };
            match emu.wait_ready(Duration::from_secs(60)) {
                Ok(()) => return Ok(emu),
                Err(e) => {
                    emu.stop();
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or(EmulatorError::NotReady {
            port: 0,
            waited_ms: 0,
            log_tail: String::new(),
        }))
    }

    fn wait_ready(&mut self, timeout: Duration) -> Result<(), EmulatorError> {
        let start = Instant::now();
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        while start.elapsed() < timeout {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if let Some(Ok(Some(_))) = self.child.as_mut().map(Child::try_wait) {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(EmulatorError::NotReady {
            port: self.port,
            waited_ms: start.elapsed().as_millis() as u64,
            log_tail: self.log_tail(),
        })
    }

    /// The last 2 kB of the server's log.
    pub fn log_tail(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log_path) {
            let _ = f.read_to_string(&mut s);
        }
        let cut = s.len().saturating_sub(2000);
        let cut = (cut..s.len())
            .find(|i| s.is_char_boundary(*i))
            .unwrap_or(s.len());
        s[cut..].to_owned()
    }

    /// The port it listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:<port>`, the `account_url` to give the sink.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Stops the server and its watchdog.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // The watchdog leads its own process group; TERM the group, then reap.
            let _ = Command::new("kill")
                // `--`: without it procps `kill` reads `-PGID` as an option and signals nothing.
                .args(["-TERM", "--"])
                .arg(format!("-{}", child.id()))
                .status();
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    let _ = std::fs::remove_dir_all(&self.dir);
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = Command::new("kill")
                .args(["-KILL", "--"])
                .arg(format!("-{}", child.id()))
                .status();
            let _ = child.wait();
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        self.stop();
    }
}
