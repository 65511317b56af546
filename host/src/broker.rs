//! The managed local Kafka-protocol broker (nisshi) started when no brokers are configured.
//!
//! sluice starts nisshi as a child process with SQLite storage in a data directory, on a free
//! loopback port, and stops it when the [`ManagedBroker`] is dropped. It must not outlive sluice
//! even when sluice is killed (`SIGKILL` runs no destructor), so nisshi runs under a small
//! `sh` watchdog whose stdin is a pipe from sluice: when sluice exits for any reason the kernel
//! closes the pipe, the watchdog's `read` returns, and it stops nisshi (`TERM`, then `KILL` after
//! five seconds).
//!
//! The binary is found through `SLUICE_NISSHI`, else in the per-user cache that
//! `scripts/install-broker.sh` installs into
//! (`${SLUICE_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/sluice}/nisshi-0.8.1/bin/nisshi`).

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

/// The nisshi version sluice is tested with (and the install script installs).
pub const NISSHI_VERSION: &str = "0.8.1";

/// Environment variable naming the nisshi binary explicitly.
pub const NISSHI_ENV: &str = "SLUICE_NISSHI";

/// How long nisshi may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The watchdog: runs nisshi in the background, waits for EOF on stdin (sluice gone or done),
/// then stops nisshi, and optionally removes the data directory. `$1` is the removal flag,
/// the rest is the command.
const WATCHDOG: &str = r#"
remove="$1"; shift
"$@" </dev/null &
child=$!
# It runs in a process group of its own, so a Ctrl-C meant for sluice does not stop the broker
# under the draining run; it ignores stray signals too, so that it still cleans up once sluice
# is gone (its end of stdin closes, even on kill -9).
trap '' INT TERM HUP
# The stopper waits for that on the watchdog's stdin (fd 3: an asynchronous list's own stdin is
# /dev/null), while the watchdog waits for the broker, so that a broker that dies, at start
# say, ends the watchdog at once and sluice sees it.
exec 3<&0
( read -r _ <&3 || true; kill -TERM "$child" 2>/dev/null; sleep 5; kill -KILL "$child" 2>/dev/null ) &
stopper=$!
exec 3<&-
wait "$child"
kill -KILL "$stopper" 2>/dev/null
if [ -n "$remove" ]; then rm -rf -- "$remove"; fi
"#;

/// Why the managed broker could not be started.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The nisshi binary is not installed where sluice looks.
    #[error(
        "nisshi broker not found at {} (run scripts/install-broker.sh, or set {NISSHI_ENV})",
        .0.display()
    )]
    NotInstalled(PathBuf),
    /// There is no per-user cache to look in (no `HOME`).
    #[error(
        "no cache directory to find the nisshi broker in: set HOME, SLUICE_CACHE_DIR or \
         {NISSHI_ENV}"
    )]
    NoCache,
    /// The installed binary, or a directory above it in the cache, is not this user's alone.
    #[error(
        "will not run the nisshi broker installed in {}: {why}, so another user could have put \
         code there. If it is yours, `chmod go-w` it; else remove the install and run \
         scripts/install-broker.sh as this user, or set {NISSHI_ENV}",
        .path.display()
    )]
    Untrusted {
        /// The file or directory.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
    /// The data directory could not be created, or the process not started.
    #[error("cannot start nisshi in {}", .dir.display())]
    Spawn {
        /// The data directory.
        dir: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// nisshi exited or did not accept connections in time.
    #[error("nisshi did not start: {reason}; its log ends with:\n{log_tail}")]
    NotReady {
        /// What happened.
        reason: String,
        /// The last lines of its log.
        log_tail: String,
    },
}

/// The nisshi binary: `SLUICE_NISSHI` (the user's own choice), else the one installed in the
/// per-user cache, if it is there and no other user could have put it there.
pub fn nisshi_binary() -> Result<PathBuf, BrokerError> {
    // Absolute: the broker is started from its data directory, where a relative path would name
    // another file than the one found (and checked) here.
    let absolute = |p: PathBuf| std::path::absolute(&p).unwrap_or(p);
    if let Some(p) = std::env::var_os(NISSHI_ENV).filter(|p| !p.is_empty()) {
        let bin = absolute(PathBuf::from(p));
        // Checked now: run, a path that names no file fails only in the watchdog's shell, and
        // the start waited out three times its timeout for a broker that never was.
        if !bin.is_file() {
            return Err(BrokerError::NotInstalled(bin));
        }
        return Ok(bin);
    }
    // Never a path relative to the working directory alone, which may be anyone's.
    installed_in(&absolute(crate::cache_root().ok_or(BrokerError::NoCache)?))
}

/// The nisshi binary installed in the cache at `root`, if no other user could have put it there:
/// the binary and its directories up to the install's own (`nisshi-<version>`) must be this
/// user's (or root's) and not writable by others. The cache root above may be shared: another
/// user who put their own install in its place would own it.
fn installed_in(root: &Path) -> Result<PathBuf, BrokerError> {
    let install = root.join(format!("nisshi-{NISSHI_VERSION}"));
    let bin = install.join("bin").join("nisshi");
    if !bin.is_file() {
        return Err(BrokerError::NotInstalled(bin));
    }
    for path in bin.ancestors().take_while(|p| p.starts_with(&install)) {
        let why = match std::fs::metadata(path) {
            Ok(meta) => crate::writable_by_others(&meta),
            Err(e) => Some(e.to_string()),
        };
        if let Some(why) = why {
            return Err(BrokerError::Untrusted {
                path: path.to_path_buf(),
                why,
            });
        }
    }
    Ok(bin)
}

/// A running nisshi child process; stopped when dropped.
#[derive(Debug)]
pub struct ManagedBroker {
    addr: SocketAddr,
    data_dir: PathBuf,
    watchdog: Child,
    /// Closing this pipe tells the watchdog to stop nisshi.
    stop: Option<ChildStdin>,
}

impl ManagedBroker {
    /// Starts nisshi with SQLite storage in `data_dir` (created if missing; data kept across
    /// restarts) on a free loopback port, and waits until it accepts connections.
    pub fn start(data_dir: &Path) -> Result<ManagedBroker, BrokerError> {
        Self::start_with(data_dir, false)
    }

    /// Like [`start`](Self::start), but the watchdog deletes `data_dir` after nisshi stops, even
    /// if this process was killed (for tests).
    pub fn start_ephemeral(data_dir: &Path) -> Result<ManagedBroker, BrokerError> {
        Self::start_with(data_dir, true)
    }

    fn start_with(data_dir: &Path, remove: bool) -> Result<ManagedBroker, BrokerError> {
        Self::start_bin(&nisshi_binary()?, data_dir, remove)
    }

    fn start_bin(bin: &Path, data_dir: &Path, remove: bool) -> Result<ManagedBroker, BrokerError> {
        let spawn_err = |source| BrokerError::Spawn {
            dir: data_dir.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(data_dir).map_err(spawn_err)?;
        let data_dir = data_dir.canonicalize().map_err(spawn_err)?;
        // The port is picked by binding and releasing it; another process may grab it in between,
        // so a start that fails to listen is retried on a new port.
        let mut last = None;
        for _ in 0..3 {
            match Self::try_start(bin, &data_dir, remove) {
                Ok(b) => return Ok(b),
                Err(e @ BrokerError::NotReady { .. }) => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or(BrokerError::NotReady {
            reason: "no attempt made".into(),
            log_tail: String::new(),
        }))
    }

    fn try_start(bin: &Path, data_dir: &Path, remove: bool) -> Result<ManagedBroker, BrokerError> {
        let spawn_err = |source| BrokerError::Spawn {
            dir: data_dir.to_path_buf(),
            source,
        };
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|l| l.local_addr())
            .map_err(spawn_err)?
            .port();
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let url = format!("tcp://{addr}");
        // Made again: an earlier attempt's watchdog removed an ephemeral one.
        std::fs::create_dir_all(data_dir).map_err(spawn_err)?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(data_dir.join("nisshi.log"))
            .map_err(spawn_err)?;
        let log_start = log.metadata().map(|m| m.len()).unwrap_or(0);
        let (log2, tail) = (
            log.try_clone().map_err(spawn_err)?,
            log.try_clone().map_err(spawn_err)?,
        );
        let remove_arg = if remove {
            data_dir.as_os_str().to_owned()
        } else {
            Default::default()
        };
        let mut watchdog = Command::new("sh")
            .arg("-c")
            .arg(WATCHDOG)
            .arg("sluice-nisshi-watchdog")
            .arg(remove_arg)
            .arg(bin)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            // nisshi resolves the SQLite path against its working directory.
            .args([
                "--storage-engine",
                "sqlite://nisshi.db",
                "--group-initial-rebalance-delay",
                "0s",
            ])
            .current_dir(data_dir)
            // sluice's `RUST_LOG` is for sluice: nisshi would take it too (or, unset, from a
            // `.env` above its directory), and at `info` writes gigabytes of log in a run, enough
            // to slow the broker past the consumer's session.
            .env("RUST_LOG", "warn")
            .stdin(Stdio::piped())
            .stdout(log)
            .stderr(log2)
            // Out of the terminal's process group: Ctrl-C is sluice's to handle (it drains,
            // commits and then stops the broker), and would otherwise kill the broker under it.
            .process_group(0)
            .spawn()
            .map_err(spawn_err)?;
        let stop = watchdog.stdin.take();
        let mut broker = ManagedBroker {
            addr,
            data_dir: data_dir.to_path_buf(),
            watchdog,
            stop,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                tracing::info!(%addr, data_dir = %data_dir.display(), "Started managed nisshi broker.");
                return Ok(broker);
            }
            let exited = matches!(broker.watchdog.try_wait(), Ok(Some(_)));
            if exited || Instant::now() > deadline {
                let reason = if exited {
                    "it exited".to_owned()
                } else {
                    format!("no connection on {addr} within {START_TIMEOUT:?}")
                };
                let log_tail = log_tail(&tail, log_start);
                drop(broker);
                return Err(BrokerError::NotReady { reason, log_tail });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The bootstrap servers string (`127.0.0.1:<port>`).
    pub fn bootstrap(&self) -> String {
        self.addr.to_string()
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The data directory (SQLite database and `nisshi.log`).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }
}

impl Drop for ManagedBroker {
    fn drop(&mut self) {
        drop(self.stop.take());
        // The watchdog exits once nisshi has (at most ~5 s after TERM).
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if !matches!(self.watchdog.try_wait(), Ok(None)) {
                tracing::info!(addr = %self.addr, "Stopped managed nisshi broker.");
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.watchdog.kill();
    }
}

/// The last 4 KiB of the log written since `from`, read through a handle that outlives the file's
/// name (an ephemeral data directory is removed as the broker goes) and without moving the
/// offset the broker's own handles share.
fn log_tail(log: &std::fs::File, from: u64) -> String {
    use std::os::unix::fs::FileExt as _;
    let len = log.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(4096).max(from);
    let mut buf = vec![0; (len - start.min(len)) as usize];
    let n = log.read_at(&mut buf, start).unwrap_or(0);
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// A broker that dies as it starts is seen at once, with its last words, not after
    /// `START_TIMEOUT` (three starts of 30 s each); an ephemeral one too, whose data directory
    /// (log and all) goes with it, and whose next attempt makes it again.
    #[test]
    fn a_broker_that_dies_at_start_is_seen_at_once() {
        for ephemeral in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let bin = dir.path().join("nisshi");
            std::fs::write(&bin, "#!/bin/sh\necho 'storage is corrupt' >&2\nexit 3\n").unwrap();
            std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
            let data = dir.path().join("data");
            let started = Instant::now();
            let Err(e) = ManagedBroker::start_bin(&bin, &data, ephemeral) else {
                panic!("a broker that exits does not start");
            };
            assert!(started.elapsed() < Duration::from_secs(10), "{e}");
            match e {
                BrokerError::NotReady { reason, log_tail } => {
                    assert_eq!(reason, "it exited");
                    assert!(log_tail.contains("storage is corrupt"), "{log_tail}");
                }
                other => panic!("{other}"),
            }
        }
    }

    /// The broker runs only from a cache no other user could have written, binary and the
    /// directories above it alike.
    #[test]
    fn the_cached_broker_runs_only_if_no_one_else_could_have_put_it_there() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("sluice");
        let bin_dir = root.join(format!("nisshi-{NISSHI_VERSION}/bin"));
        let mode = |p: &Path, m: u32| {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap()
        };
        assert!(matches!(
            installed_in(&root),
            Err(BrokerError::NotInstalled(_))
        ));
        std::fs::create_dir_all(&bin_dir).unwrap();
        let bin = bin_dir.join("nisshi");
        std::fs::write(&bin, "#!/bin/sh\n").unwrap();
        for p in [&root, &bin_dir, bin_dir.parent().unwrap()] {
            mode(p, 0o755);
        }
        mode(&bin, 0o755);
        assert_eq!(installed_in(&root).unwrap(), bin);
        let install = bin_dir.parent().unwrap().to_path_buf();
        for (path, writable) in [(&install, 0o777), (&bin, 0o775)] {
            mode(path, writable);
            let err = installed_in(&root).unwrap_err();
            assert!(
                matches!(&err, BrokerError::Untrusted { path: p, .. } if p == path),
                "{err}"
            );
            assert!(
                err.to_string().contains("other users can write in it"),
                "{err}"
            );
            mode(path, 0o755);
        }
        // Above the install is not its to judge (a shared cache root, a /tmp).
        mode(&root, 0o777);
        mode(dir.path(), 0o777);
        assert_eq!(installed_in(&root).unwrap(), bin);
    }
}
