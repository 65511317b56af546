//! The `sluice` binary, built once per test run, and a way to run it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// The workspace root (where pipeline.json and data/ live).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// Path of the `sluice` binary. Integration tests of another package get no
/// `CARGO_BIN_EXE_sluice`, so this builds it once (a no-op when `cargo test --workspace` already
/// did) into the same target directory.
pub fn sluice_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let root = workspace_root();
        let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(["build", "--quiet", "-p", "sluice", "--bin", "sluice"])
            .current_dir(&root)
            .status()
            .expect("cargo runs");
        assert!(status.success(), "building the sluice binary failed");
        let target =
            std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
        target.join("debug").join("sluice")
    })
    .clone()
}

/// Runs `sluice ARGS` in `dir` and returns its output.
pub fn sluice(dir: &Path, args: &[&str]) -> Output {
    Command::new(sluice_bin())
        .args(args)
        .current_dir(dir)
        .output()
        .expect("sluice runs")
}

/// Sends SIGTERM to `child` from this process, at once (a `kill` process takes a fork and an
/// exec, which a loaded machine can make slow).
#[allow(unsafe_code)]
pub fn terminate(child: &std::process::Child) {
    let pid = libc::pid_t::try_from(child.id()).expect("a pid");
    // SAFETY: kill(2) has no memory effects; `child` is not waited for yet, so the pid is still
    // the child's.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0, "kill {pid}");
}
