//! The guest SDK this binary carries, as a transforms workspace of an author's own keeps its copy
//! (`sluice-guest/`, reading the WIT from its own `wit/`): what `new` writes into a workspace it
//! starts, and what `update-sdk` brings a copy made by another sluice to (or, with `--check`,
//! lists the differences from, as `build` warns of them).

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use toml_edit::{DocumentMut, Item, Value};

use super::scaffold::{where_workspace, workspace_lacks};
use super::usage;

/// The guest SDK as this binary was built with it: the path of each file in the copy (under
/// `sluice-guest/`) and its text. The WIT goes inside the copy, so that it builds wherever the
/// workspace is moved, committed or cloned.
pub(super) const SDK_FILES: [(&str, &str); 5] = [
    (
        "Cargo.toml",
        include_str!("../../../../transforms/sluice-guest/Cargo.toml"),
    ),
    (
        "src/lib.rs",
        include_str!("../../../../transforms/sluice-guest/src/lib.rs"),
    ),
    (
        "src/pool.rs",
        include_str!("../../../../transforms/sluice-guest/src/pool.rs"),
    ),
    (
        "wit/transform.wit",
        include_str!("../../../../wit/transform.wit"),
    ),
    // The copy keeps sluice's license, whatever the workspace's crates choose.
    ("LICENSE", include_str!("../../../../LICENSE")),
];

/// The directory of the copy in a workspace, and the name of the SDK's crate.
pub(super) const SDK_DIR: &str = "sluice-guest";

/// Where the SDK in sluice's repository reads the WIT (`wit/` at the top, two levels up from
/// its crate), and where its copy does (its own `wit/`).
const SDK_WIT_PATH: (&str, &str) = (r#"path: "../../wit""#, r#"path: "wit""#);

/// The SDK's license in sluice's workspace, and in its copy (where the workspace's `license`
/// is the author's).
const SDK_LICENSE: (&str, &str) = ("license.workspace = true", "license = \"Apache-2.0\"");

/// sluice's own transforms workspace manifest, for the versions of the SDK's dependencies.
const TRANSFORMS_CARGO_TOML: &str = include_str!("../../../../transforms/Cargo.toml");

/// The directories of the copy whose every file is the SDK's: a file there that this SDK lacks
/// is one an older SDK had (a second `.wit` file there would be parsed with the first).
const SDK_OWNED: [&str; 2] = ["src", "wit"];

/// The copy's files, each its path under the workspace (`sluice-guest/...`) and its text.
pub(super) fn files() -> Vec<(String, String)> {
    SDK_FILES
        .iter()
        .map(|(file, text)| {
            let text = match *file {
                "src/lib.rs" => text.replace(SDK_WIT_PATH.0, SDK_WIT_PATH.1),
                "Cargo.toml" => text.replace(SDK_LICENSE.0, SDK_LICENSE.1),
                _ => text.to_string(),
            };
            (format!("{SDK_DIR}/{file}"), text)
        })
        .collect()
}

/// What the copy's `[workspace.dependencies]` entry is, in a workspace of its own.
fn own_entry() -> Value {
    let mut table = toml_edit::InlineTable::new();
    table.insert("path", SDK_DIR.into());
    table.into()
}

/// The SDK's dependencies as sluice's transforms workspace pins them: each one the SDK takes with
/// `workspace = true`, with its value in `transforms/Cargo.toml`'s `[workspace.dependencies]`
/// (however either manifest writes it), unadorned.
pub(super) fn dependencies() -> Vec<(String, Value)> {
    let parse = |text: &str| {
        text.parse::<DocumentMut>()
            .expect("sluice's own manifests parse")
    };
    let (sdk, transforms) = (parse(SDK_FILES[0].1), parse(TRANSFORMS_CARGO_TOML));
    let pinned = &transforms["workspace"]["dependencies"];
    let deps = sdk["dependencies"]
        .as_table_like()
        .into_iter()
        .flat_map(|t| t.iter());
    deps.filter(|(_, dep)| dep.get("workspace").and_then(Item::as_bool) == Some(true))
        .filter_map(|(name, _)| {
            let value = pinned.get(name)?.clone().into_value().ok()?;
            Some((name.to_owned(), bare(value)))
        })
        .collect()
}

/// `value` with no spaces or comments around it, and an inline table laid out as TOML's own
/// `{ k = v, ... }`, so that two ways of writing one value compare equal.
fn bare(mut value: Value) -> Value {
    value.decor_mut().clear();
    if let Value::InlineTable(t) = &mut value {
        t.fmt();
    }
    value
}

/// How one file of the copy, or one dependency, differs from this sluice's SDK.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    Added,
    Updated,
    Removed,
}

/// How a workspace's copy of the SDK differs from the one this sluice carries, and the
/// workspace's manifest as it would be with this one's.
pub(super) struct Plan {
    dir: PathBuf,
    /// Each file that differs, its path under the workspace, and its text (none when removed).
    files: Vec<(String, Change, Option<String>)>,
    /// Each `[workspace.dependencies]` entry that differs: its name, as it was, and as it will be.
    deps: Vec<(String, Option<String>, String)>,
    manifest: DocumentMut,
}

impl Plan {
    /// Compares the copy in the workspace at `dir` with this sluice's SDK. A directory that is no
    /// transforms workspace of an author's own (none, an unreadable manifest, sluice's own
    /// `transforms/`, a `sluice-guest/` that is not the SDK) is a [`UsageError`].
    ///
    /// [`UsageError`]: super::UsageError
    pub(super) fn read(dir: &Path, dir_given: bool) -> anyhow::Result<Plan> {
        let path = dir.join("Cargo.toml");
        if !path.is_file() {
            return Err(usage(anyhow::anyhow!(
                "no transforms workspace at {} (no Cargo.toml there): {}",
                dir.display(),
                where_workspace(dir_given)
            )));
        }
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let lacks = workspace_lacks(&text);
        if !lacks.is_empty() {
            return Err(usage(anyhow::anyhow!(
                "{} is not a sluice transforms workspace: its Cargo.toml lacks {}",
                dir.display(),
                lacks.join(" and ")
            )));
        }
        let mut manifest: DocumentMut = text.parse().expect("workspace_lacks parsed it");
        let sdk = dir.join(SDK_DIR);
        check_copy(dir, &sdk).map_err(usage)?;
        let mut files = Vec::new();
        let want = self::files();
        for (file, text) in &want {
            let change = match std::fs::read(dir.join(file)) {
                Ok(have) if have == text.as_bytes() => continue,
                Ok(_) => Change::Updated,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Change::Added,
                Err(e) => return Err(e).with_context(|| format!("reading {}", file)),
            };
            files.push((file.clone(), change, Some(text.clone())));
        }
        for owned in SDK_OWNED {
            for file in files_under(&sdk.join(owned))? {
                let rel = file.strip_prefix(dir).unwrap_or(&file);
                let rel = rel.to_string_lossy().replace('\\', "/");
                if !want.iter().any(|(f, _)| *f == rel) {
                    files.push((rel, Change::Removed, None));
                }
            }
        }
        let mut deps = Vec::new();
        let table = manifest["workspace"]["dependencies"]
            .as_table_like_mut()
            .expect("workspace_lacks found the SDK in it");
        for (name, value) in [(SDK_DIR.to_owned(), own_entry())]
            .into_iter()
            .chain(dependencies())
        {
            let now = value.to_string();
            let was = match table.get_mut(&name) {
                Some(item) => {
                    let was = item.clone().into_value().ok().map(bare);
                    if was.as_ref().map(Value::to_string).as_deref() == Some(now.as_str()) {
                        continue;
                    }
                    // The entry's place and the comments around it stay; a table of its own
                    // (`[workspace.dependencies.chrono]`) becomes an inline one.
                    let decor = item.as_value().map(|v| v.decor().clone());
                    let mut value = value.clone();
                    *value.decor_mut() = decor.unwrap_or_else(|| toml_edit::Decor::new(" ", ""));
                    *item = Item::Value(value);
                    Some(was.map_or_else(|| "(not a value)".to_owned(), |v| v.to_string()))
                }
                None => {
                    let mut value = value.clone();
                    *value.decor_mut() = toml_edit::Decor::new(" ", "");
                    table.insert(&name, Item::Value(value));
                    None
                }
            };
            deps.push((name, was, now));
        }
        Ok(Plan {
            dir: dir.to_owned(),
            files,
            deps,
            manifest,
        })
    }

    /// Whether the copy is this sluice's SDK already.
    pub(super) fn is_empty(&self) -> bool {
        self.files.is_empty() && self.deps.is_empty()
    }

    /// One line per difference: `sluice-guest/src/pool.rs (updated)`, `wit-bindgen in
    /// [workspace.dependencies]: "0.60" -> "=0.61.1"`.
    pub(super) fn lines(&self) -> Vec<String> {
        let files = self.files.iter().map(|(file, change, _)| {
            let change = match change {
                Change::Added => "added",
                Change::Updated => "updated",
                Change::Removed => "removed: not in this SDK",
            };
            format!("{file} ({change})")
        });
        let deps = self.deps.iter().map(|(name, was, now)| match was {
            Some(was) => format!("{name} in [workspace.dependencies]: {was} -> {now}"),
            None => format!("{name} in [workspace.dependencies]: (none) -> {now}"),
        });
        files.chain(deps).collect()
    }

    /// The paths of the copy's files that differ, for a one-line warning.
    pub(super) fn short(&self) -> String {
        let mut names: Vec<&str> = (self.files.iter())
            .map(|(f, _, _)| f.strip_prefix(&format!("{SDK_DIR}/")).unwrap_or(f))
            .chain(self.deps.iter().map(|(name, _, _)| name.as_str()))
            .collect();
        let more = names.len().saturating_sub(3);
        names.truncate(3);
        match more {
            0 => names.join(", "),
            n => format!("{}, and {n} more", names.join(", ")),
        }
    }

    /// Writes the differences: each file whole (through a temporary file, so that none is left
    /// half-written), the files this SDK lacks removed, and the manifest last. Then brings
    /// `Cargo.lock` to the new requirements (see [`settle_lock`]); a failure there is returned
    /// as the reason, the copy being right.
    pub(super) fn apply(&self) -> anyhow::Result<Result<(), String>> {
        for (file, _, text) in &self.files {
            let path = self.dir.join(file);
            match text {
                Some(text) => write_whole(&path, text.as_bytes())?,
                None => std::fs::remove_file(&path)
                    .with_context(|| format!("removing {}", path.display()))?,
            }
        }
        if !self.deps.is_empty() {
            let path = self.dir.join("Cargo.toml");
            write_whole(&path, self.manifest.to_string().as_bytes())?;
        }
        Ok(settle_lock(&self.dir))
    }
}

/// Why `sdk`, the workspace's `sluice-guest/`, is not a copy `update-sdk` may write, if it is
/// not. Absent, it is made: a workspace from before `new` copied the SDK (depending on a sluice
/// checkout by path) gets one.
fn check_copy(dir: &Path, sdk: &Path) -> anyhow::Result<()> {
    if sdk.symlink_metadata().is_err() {
        return Ok(());
    }
    let manifest = std::fs::read_to_string(sdk.join("Cargo.toml")).unwrap_or_default();
    let name = (manifest.parse::<DocumentMut>().ok())
        .and_then(|m| m["package"]["name"].as_str().map(str::to_owned));
    if name.as_deref() != Some(SDK_DIR) {
        bail!(
            "{} is not the guest SDK (its Cargo.toml does not name the crate {SDK_DIR}), so \
             update-sdk leaves it alone: move it away, and run this again to write the SDK there",
            sdk.display()
        );
    }
    // sluice's own `transforms/`, whose SDK reads the top-level WIT: it is the source of every
    // copy, and changes with the checkout, not with this command.
    let lib = std::fs::read_to_string(sdk.join("src/lib.rs")).unwrap_or_default();
    if lib.contains(SDK_WIT_PATH.0) && dir.join("../wit").is_dir() {
        bail!(
            "{} is sluice's own transforms workspace: its {SDK_DIR} is the SDK itself, not a \
             copy of it (update-sdk is for a workspace that `sluice transform new --dir` started)",
            dir.display()
        );
    }
    Ok(())
}

/// Every file under `dir` (none when it is not there), however deep.
fn files_under(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    };
    for entry in entries {
        let path = entry?.path();
        match path.is_dir() {
            true => out.extend(files_under(&path)?),
            false => out.push(path),
        }
    }
    out.sort();
    Ok(out)
}

/// Writes `bytes` to `path` through a temporary file beside it, renamed over it.
fn write_whole(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let parent = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let mut name = path.file_name().unwrap_or_default().to_owned();
    name.push(".sluice-new");
    let tmp = parent.join(name);
    std::fs::write(&tmp, bytes)
        .and_then(|()| std::fs::rename(&tmp, path))
        .with_context(|| format!("writing {}", path.display()))
}

/// Brings the `Cargo.lock` of the workspace at `dir` to its manifest and crates (cargo keeps the
/// versions it has that still fit and drops the rest), offline first: the versions the lock, or
/// the cache, has already. The error line of `cargo metadata` when it cannot (the crates not
/// cached, and no network).
pub(super) fn settle_lock(dir: &Path) -> Result<(), String> {
    let resolve = |offline: bool| {
        let mut cmd = std::process::Command::new("cargo");
        cmd.current_dir(dir)
            .args(["metadata", "--format-version", "1"])
            .stdout(std::process::Stdio::null());
        if offline {
            cmd.arg("--offline");
        }
        match cmd.output() {
            Ok(out) if out.status.success() => Ok(()),
            Ok(out) => Err(String::from_utf8_lossy(&out.stderr).trim().to_owned()),
            Err(e) => Err(e.to_string()),
        }
    };
    resolve(true).or_else(|_| resolve(false)).map_err(|why| {
        let line = why.lines().find(|l| l.contains("error")).unwrap_or(&why);
        line.to_owned()
    })
}

/// The WIT package the SDK is built against, as its `package` line names it
/// (`sluice:transform@0.1.0`).
fn wit_package() -> &'static str {
    (SDK_FILES[3].1.lines())
        .find_map(|l| l.strip_prefix("package "))
        .map_or("sluice:transform", |p| p.trim_end_matches(';'))
}

/// `sluice transform update-sdk`: makes the workspace's copy of the SDK this sluice's, printing
/// each difference; with `check`, only prints them. Whether the copy was this sluice's already.
pub fn update_sdk(dir: &Path, dir_given: bool, check: bool) -> anyhow::Result<bool> {
    let plan = Plan::read(dir, dir_given)?;
    let version = format!("sluice {}, {}", env!("CARGO_PKG_VERSION"), wit_package());
    if plan.is_empty() {
        crate::outln!(
            "{}/{SDK_DIR} is this sluice's guest SDK ({version}): nothing to update",
            dir.display()
        );
        return Ok(true);
    }
    for line in plan.lines() {
        crate::outln!("{line}");
    }
    let dir_flag = format!("--dir {}", dir.display());
    if check {
        crate::outln!(
            "{}/{SDK_DIR} is not this sluice's guest SDK ({version}); `sluice transform \
             update-sdk {dir_flag}` makes it so",
            dir.display()
        );
        return Ok(false);
    }
    if let Err(why) = plan.apply()? {
        tracing::warn!(
            "{} is not yet brought to the new SDK's dependencies: `cargo metadata` failed \
             ({why}); the next build does it, so build once before committing it",
            dir.join("Cargo.lock").display()
        );
    }
    crate::outln!(
        "{}/{SDK_DIR} is now this sluice's guest SDK ({version}); build again: sluice transform \
         build {dir_flag}",
        dir.display()
    );
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The SDK copied into a new workspace is the whole SDK, reads the WIT from its own `wit/`,
    /// and has each of its dependencies pinned as sluice's transforms pin them.
    #[test]
    fn the_sdk_copy_is_whole_and_builds_on_its_own() {
        let sdk = Path::new(env!("CARGO_MANIFEST_DIR")).join("../transforms/sluice-guest");
        let mut sources: Vec<String> = std::fs::read_dir(sdk.join("src"))
            .unwrap()
            .map(|e| format!("src/{}", e.unwrap().file_name().to_string_lossy()))
            .collect();
        sources.sort();
        let copied: Vec<&str> = SDK_FILES.iter().map(|(f, _)| *f).collect();
        assert_eq!(
            copied[1..3],
            sources,
            "a new source file of the SDK is not copied"
        );
        assert!(
            !sdk.join("build.rs").exists(),
            "a build script is not copied"
        );
        let wit: Vec<_> = std::fs::read_dir(sdk.join("../../wit")).unwrap().collect();
        assert_eq!(wit.len(), 1, "a new file of the WIT package is not copied");
        assert_eq!(SDK_FILES[1].1.matches(SDK_WIT_PATH.0).count(), 1);
        assert_eq!(SDK_FILES[0].1.matches(SDK_LICENSE.0).count(), 1);
        // What the copy inherits, it inherits in the tables `dependencies` reads...
        let mut table = "";
        for line in SDK_FILES[0].1.lines() {
            if line.starts_with('[') {
                table = line;
            } else if line.contains("workspace = true") {
                assert!(
                    ["[package]", "[dependencies]"].contains(&table),
                    "{table} {line}"
                );
            }
        }
        // ...and each dependency is pinned as sluice's transforms pin it.
        let deps: Vec<String> = (dependencies().iter())
            .map(|(name, value)| format!("{name} = {value}"))
            .collect();
        assert_eq!(deps.len(), 2, "{deps:?}");
        assert!(deps[0].starts_with("wit-bindgen = \"="), "{deps:?}");
        assert!(
            deps[1].starts_with("chrono = { version = \"0.4\""),
            "{deps:?}"
        );
    }

    /// A workspace made before `new` copied the SDK (depending on a sluice checkout by path), and
    /// an older copy, are brought to this SDK: files added, changed and removed, dependencies
    /// rewritten in place with the author's comments and other entries kept. Then nothing
    /// differs. sluice's own `transforms/` is refused.
    #[test]
    fn a_copy_is_brought_to_this_sdk_and_the_rest_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let ws = dir.path().join("ws");
        std::fs::create_dir(&ws).unwrap();
        let manifest = "[workspace]\nresolver = \"3\"\nmembers = [\"*\"]\n\n\
            [workspace.package]\nversion = \"0.1.0\"\nedition = \"2024\"\n\
            rust-version = \"1.95\"\nlicense = \"MIT\"\npublish = false\n\n\
            [workspace.dependencies]\n# ours\n\
            sluice-guest = { path = \"/old/sluice/transforms/sluice-guest\" } # from before\n\
            wit-bindgen = \"0.60\"\nserde = \"1\"\n\n\
            [workspace.dependencies.chrono]\nversion = \"0.4\"\n";
        std::fs::write(ws.join("Cargo.toml"), manifest).unwrap();
        let plan = Plan::read(&ws, true).unwrap();
        let lines = plan.lines();
        assert_eq!(lines.len(), SDK_FILES.len() + 3, "{lines:#?}");
        assert!(lines.contains(&"sluice-guest/wit/transform.wit (added)".to_owned()));
        assert!(
            lines.contains(
                &"sluice-guest in [workspace.dependencies]: { path = \"/old/sluice/transforms/\
              sluice-guest\" } -> { path = \"sluice-guest\" }"
                    .to_owned()
            )
        );
        assert!(
            (lines.iter()).any(|l| l.starts_with(
                "wit-bindgen in [workspace.dependencies]: \
                                                  \"0.60\" -> \"="
            )),
            "{lines:#?}"
        );
        assert!(
            lines.contains(&"chrono in [workspace.dependencies]: { version = \"0.4\" } -> { version = \"0.4\", default-features = false, features = [\"std\"] }".to_owned()),
            "{lines:#?}"
        );
        plan.apply().unwrap().ok();
        let text = std::fs::read_to_string(ws.join("Cargo.toml")).unwrap();
        for kept in [
            "# ours\n",
            "# from before\n",
            "serde = \"1\"\n",
            "license = \"MIT\"",
        ] {
            assert!(text.contains(kept), "{kept} in {text}");
        }
        assert!(
            text.contains("sluice-guest = { path = \"sluice-guest\" }"),
            "{text}"
        );
        for (file, want) in files() {
            assert_eq!(std::fs::read_to_string(ws.join(&file)).unwrap(), want);
        }
        assert!(Plan::read(&ws, true).unwrap().is_empty());

        // An older copy: a file changed, and one this SDK does not have.
        let pool = ws.join("sluice-guest/src/pool.rs");
        std::fs::write(&pool, "// an older pool\n").unwrap();
        std::fs::write(ws.join("sluice-guest/wit/old.wit"), "package a:b@0.0.1;\n").unwrap();
        let plan = Plan::read(&ws, true).unwrap();
        assert_eq!(
            plan.lines(),
            [
                "sluice-guest/src/pool.rs (updated)",
                "sluice-guest/wit/old.wit (removed: not in this SDK)"
            ]
        );
        assert_eq!(plan.short(), "src/pool.rs, wit/old.wit");
        plan.apply().unwrap().ok();
        assert!(!ws.join("sluice-guest/wit/old.wit").exists());
        assert!(Plan::read(&ws, true).unwrap().is_empty());

        let own = Path::new(env!("CARGO_MANIFEST_DIR")).join("../transforms");
        let err = Plan::read(&own, true).err().unwrap().to_string();
        assert!(err.contains("sluice's own transforms workspace"), "{err}");
    }
}
