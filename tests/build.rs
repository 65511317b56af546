//! Build script for the integration tests: builds every wasm guest (the example transforms in
//! `transforms/` and the test guests in `tests/guests/`) for wasm32-wasip2 and writes their paths
//! into `$OUT_DIR/guests.rs` for `sluice_tests::guests`.
//!
//! Each guest workspace is built by a nested cargo with `CARGO_TARGET_DIR` under `OUT_DIR`: the
//! outer cargo holds the lock on the main target directory, so sharing it would deadlock.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const TARGET: &str = "wasm32-wasip2";

fn main() {
    let manifest =
        PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let root = manifest
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf();
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR"));
    println!("cargo:rerun-if-changed={}", root.join("wit").display());
    for workspace in [root.join("transforms"), manifest.join("guests")] {
        // Everything but the workspace's own target directory, which builds outside this
        // script (benchmarks, `sluice transform build`) keep touching.
        for entry in std::fs::read_dir(&workspace)
            .expect("reading a guest workspace")
            .flatten()
        {
            if entry.file_name() != "target" {
                println!("cargo:rerun-if-changed={}", entry.path().display());
            }
        }
    }
    ensure_target();
    let mut consts = String::new();
    for (workspace, dir) in [
        ("transforms", root.join("transforms")),
        ("guests", manifest.join("guests")),
    ] {
        let target_dir = out.join(format!("{workspace}-target"));
        build(&dir, &target_dir);
        let release = target_dir.join(TARGET).join("release");
        let mut wasm: Vec<PathBuf> = std::fs::read_dir(&release)
            .unwrap_or_else(|e| panic!("reading {}: {e}", release.display()))
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "wasm"))
            .collect();
        wasm.sort();
        for path in wasm {
            let stem = path.file_stem().unwrap().to_string_lossy().into_owned();
            let name = stem.trim_start_matches("transform_").to_uppercase();
            consts += &format!(
                "/// `{stem}.wasm`, built from `{workspace}/`.\npub const {name}: &str = {:?};\n",
                path.display().to_string()
            );
        }
    }
    std::fs::write(out.join("guests.rs"), consts).expect("writing guests.rs");
}

/// Installs the wasm target when it is missing (CI and fresh clones).
fn ensure_target() {
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|l| l.trim() == TARGET)
        })
        .unwrap_or(false);
    if !installed {
        let status = Command::new("rustup")
            .args(["target", "add", TARGET])
            .status();
        assert!(
            status.is_ok_and(|s| s.success()),
            "could not install the {TARGET} target: run `rustup target add {TARGET}`"
        );
    }
}

fn build(dir: &Path, target_dir: &Path) {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(dir)
        .args(["build", "--release", "--workspace", "--target", TARGET])
        .env("CARGO_TARGET_DIR", target_dir)
        .stdout(Stdio::from(std::io::stderr()));
    // The outer build's settings (host flags, profile overrides, jobserver) must not leak into
    // the guest build.
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if key.starts_with("CARGO_") && key != "CARGO_HOME"
            || key.starts_with("RUSTFLAGS")
            || key == "RUSTC_WRAPPER"
        {
            cmd.env_remove(&*key);
        }
    }
    cmd.env("CARGO_TARGET_DIR", target_dir);
    let status = cmd.status().expect("running cargo for the wasm guests");
    assert!(
        status.success(),
        "building the wasm guests in {} failed",
        dir.display()
    );
}
