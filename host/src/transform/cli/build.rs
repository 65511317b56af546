//! `sluice transform build`: a transforms workspace's crates built for wasm32-wasip2 by cargo,
//! and where their `.wasm` files are.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

use super::params::same_name;
use super::scaffold::where_workspace;
use super::sdk::{Plan, SDK_DIR};
use super::usage;

const TARGET: &str = "wasm32-wasip2";
/// The transforms workspace `new` and `build` use without `--dir`.
pub(crate) const DEFAULT_DIR: &str = "transforms";

/// Builds the workspace at `dir` (or only `transform-<name>`) for wasm32-wasip2 in release mode
/// and returns the `.wasm` paths of the crates built: only the workspace's current members, not
/// leftovers of deleted crates in the target directory. No workspace at `dir`, or no such
/// transform in it, is a [`UsageError`].
///
/// [`UsageError`]: super::UsageError
pub fn build(name: Option<&str>, dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let (workspace, crates) = members(name, dir)?;
    warn_other_sdk(dir);
    ensure_wasm_target();
    let mut cmd = Command::new("cargo");
    cmd.current_dir(dir)
        .args(["build", "--release", "--target", TARGET]);
    if name.is_some() {
        for c in &crates {
            cmd.args(["-p", &c.package]);
        }
    }
    // Keep the build's own messages off stdout, which lists the results.
    cmd.stdout(std::process::Stdio::from(std::io::stderr()));
    let status = cmd.status().with_context(|| {
        format!(
            "cannot run cargo in {} (is it installed and on PATH?)",
            dir.display()
        )
    })?;
    if !status.success() {
        bail!("cargo build in {} failed ({status})", dir.display());
    }
    let mut out: Vec<PathBuf> = crates
        .iter()
        .map(|c| workspace.wasm(c))
        .filter(|p| p.is_file())
        .collect();
    out.sort();
    Ok(out)
}

/// Warns when the workspace at `dir` has a copy of the guest SDK (`new --dir` made it) that is
/// not the one this sluice carries: another sluice made the workspace, or this one is newer or
/// older. A component built against another WIT version does not load here, and one built with
/// another SDK may act otherwise than this sluice's docs say.
fn warn_other_sdk(dir: &Path) {
    if !dir.join(SDK_DIR).join("wit").is_dir() {
        return;
    }
    if let Ok(plan) = Plan::read(dir, true)
        && !plan.is_empty()
    {
        tracing::warn!(
            "{} is not the guest SDK this sluice carries ({}): `sluice transform \
             update-sdk --dir {}` brings it to this one (`--check` lists the differences)",
            dir.join(SDK_DIR).display(),
            plan.short(),
            dir.display()
        );
    }
}

/// Where transform `name` of the workspace at `dir` builds its `.wasm` file to, and its crate's
/// directory, without building it; errors as [`build`]'s.
pub(super) fn locate(name: &str, dir: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    let (workspace, crates) = members(Some(name), dir)?;
    let c = crates.first().context("no such transform")?;
    Ok((workspace.wasm(c), c.dir.clone()))
}

/// The workspace at `dir` and its members that [`build`] builds: all, or transform `name`.
fn members(name: Option<&str>, dir: &Path) -> anyhow::Result<(Workspace, Vec<Component>)> {
    if !dir.join("Cargo.toml").is_file() {
        return Err(usage(anyhow::anyhow!(
            "no transforms workspace at {} (no Cargo.toml there): {}",
            dir.display(),
            where_workspace(dir != Path::new(DEFAULT_DIR))
        )));
    }
    // sluice's own SDK generates its bindings from the WIT beside the workspace (`../../wit`
    // from its crate; the copy `new` makes, from its own `wit/`): a workspace copied out of the
    // repository without it fails in cargo, six errors deep.
    let wit = dir.join("..").join("wit");
    let sdk = dir.join(SDK_DIR);
    if sdk.join("Cargo.toml").is_file() && !sdk.join("wit").is_dir() && !wit.is_dir() {
        return Err(usage(anyhow::anyhow!(
            "{} holds the guest SDK (sluice-guest), which reads the WIT package from {}, and \
             there is none: `sluice transform update-sdk --dir {}` makes it a copy that reads its \
             own, or depend on the SDK where it is \
             (`sluice-guest = {{ path = \".../transforms/sluice-guest\" }}`) instead of copying it",
            dir.display(),
            wit.display(),
            dir.display()
        )));
    }
    let mut workspace = Workspace::read(dir)?;
    let crates: Vec<Component> = match name {
        None => std::mem::take(&mut workspace.components),
        Some(n) => {
            let package = format!("transform-{n}");
            let found = workspace
                .components
                .iter()
                .find(|c| same_name(&c.package, &package));
            match found {
                Some(c) => vec![c.clone()],
                None => {
                    return Err(usage(anyhow::anyhow!(
                        "no transform {n:?} (crate {package}) in {}; its transforms: {}",
                        dir.display(),
                        workspace
                            .components
                            .iter()
                            .map(|c| c.package.strip_prefix("transform-").unwrap_or(&c.package))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )));
                }
            }
        }
    };
    Ok((workspace, crates))
}

/// What `cargo metadata --no-deps` says about a transforms workspace.
pub(super) struct Workspace {
    /// Where it builds to (`CARGO_TARGET_DIR` and config files considered).
    target_dir: PathBuf,
    /// Its members that build a component (a `cdylib`), in cargo's order.
    pub(super) components: Vec<Component>,
}

/// A member crate that builds a component.
#[derive(Clone)]
pub(super) struct Component {
    /// The package name (`transform-filter`).
    pub(super) package: String,
    /// The library target's name, which names the `.wasm` file (`transform_filter`).
    lib: String,
    /// The crate's directory (its manifest's).
    dir: PathBuf,
}

impl Workspace {
    /// Where `c`'s `.wasm` file is built to.
    fn wasm(&self, c: &Component) -> PathBuf {
        let file = format!("{}.wasm", c.lib.replace('-', "_"));
        self.target_dir.join(TARGET).join("release").join(file)
    }

    pub(super) fn read(dir: &Path) -> anyhow::Result<Workspace> {
        let out = Command::new("cargo")
            .current_dir(dir)
            .args(["metadata", "--format-version", "1", "--no-deps"])
            .output()
            .with_context(|| {
                format!(
                    "cannot run cargo in {} (is it installed and on PATH?)",
                    dir.display()
                )
            })?;
        if !out.status.success() {
            bail!(
                "cargo metadata in {} failed: {}",
                dir.display(),
                String::from_utf8_lossy(&out.stderr).trim_end()
            );
        }
        let meta: serde_json::Value =
            serde_json::from_slice(&out.stdout).context("parsing cargo metadata")?;
        let target_dir = meta["target_directory"]
            .as_str()
            .map(PathBuf::from)
            .context("cargo metadata has no target_directory")?;
        let components = meta["packages"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| {
                let lib = p["targets"].as_array()?.iter().find(|t| {
                    t["kind"]
                        .as_array()
                        .is_some_and(|k| k.iter().any(|k| k == "cdylib"))
                })?;
                Some(Component {
                    package: p["name"].as_str()?.to_owned(),
                    lib: lib["name"].as_str()?.to_owned(),
                    dir: Path::new(p["manifest_path"].as_str()?).parent()?.to_owned(),
                })
            })
            .collect();
        Ok(Workspace {
            target_dir,
            components,
        })
    }
}

fn ensure_wasm_target() {
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|l| l.trim() == TARGET)
        });
    if let Ok(false) = installed {
        let _ = Command::new("rustup")
            .args(["target", "add", TARGET])
            .status();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A copy of `transforms/` without the WIT beside it is refused before cargo runs, saying
    /// what is missing; an SDK with a `wit/` of its own is not.
    #[test]
    fn a_workspace_whose_sdk_has_no_wit_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let ws = dir.path().join("ws");
        std::fs::create_dir_all(ws.join("sluice-guest/src")).unwrap();
        std::fs::write(ws.join("sluice-guest/src/lib.rs"), "").unwrap();
        std::fs::write(
            ws.join("Cargo.toml"),
            "[workspace]\nresolver = \"3\"\nmembers = [\"*\"]\n",
        )
        .unwrap();
        std::fs::write(
            ws.join("sluice-guest/Cargo.toml"),
            "[package]\nname = \"sluice-guest\"\n",
        )
        .unwrap();
        let err = build(None, &ws).unwrap_err().to_string();
        assert!(
            err.contains("reads the WIT package from") && err.contains("update-sdk --dir"),
            "{err}"
        );
        // The SDK's copy that `new` makes carries the WIT in it.
        std::fs::create_dir(ws.join("sluice-guest/wit")).unwrap();
        let err = build(None, &ws).err().map(|e| e.to_string());
        assert!(
            !err.as_deref().unwrap_or_default().contains("reads the WIT"),
            "{err:?}"
        );
    }
}
