//! The guest SDK this binary carries, as a transforms workspace of an author's own keeps its copy
//! (`sluice-guest/`, reading the WIT from its own `wit/`): what `new` writes into a workspace it
//! starts, and what `update-sdk` brings a copy made by another sluice to (or, with `--check`,
//! lists the differences from, as `build` warns of them).

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use toml_edit::{DocumentMut, Item, Value};

use super::scaffold::{read_workspace, where_workspace};
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
pub(super) fn own_entry() -> Value {
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
/// `{ k = v, ... }`, as a line of output shows it.
fn bare(mut value: Value) -> Value {
    value.decor_mut().clear();
    if let Value::InlineTable(t) = &mut value {
        t.fmt();
    }
    value
}

/// A dependency's value as cargo reads it, whatever way of writing it TOML allows: `"1"` as
/// `{ version = "1" }`, keys in order, features as a set, strings by their value (not their
/// quotes), so that two spellings of one dependency compare equal.
fn canonical_dep(value: &Value) -> String {
    match value {
        Value::String(_) => format!("{{\"version\"={}}}", canonical(Some("version"), value)),
        other => canonical(None, other),
    }
}

/// A value of a dependency's `key` as cargo reads it (see [`canonical_dep`]): a version
/// requirement without spaces or a leading `^` (`"^0.4"` is `"0.4"`), a path by its parts
/// (`"./x/"` is `"x"`).
fn canonical(key: Option<&str>, value: &Value) -> String {
    match value {
        Value::String(s) => {
            let s = s.value();
            let s = match key {
                Some("version") => {
                    let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
                    s.strip_prefix('^').map(str::to_owned).unwrap_or(s)
                }
                Some("path") => (Path::new(s).components())
                    .filter(|c| *c != std::path::Component::CurDir)
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect::<Vec<_>>()
                    .join("/"),
                _ => s.to_owned(),
            };
            format!("{s:?}")
        }
        Value::Array(items) => {
            let mut items: Vec<String> = items.iter().map(|v| canonical(None, v)).collect();
            items.sort();
            items.dedup();
            format!("[{}]", items.join(","))
        }
        Value::InlineTable(t) => {
            let mut keys: Vec<String> = (t.iter())
                .map(|(k, v)| format!("{k:?}={}", canonical(Some(k), v)))
                .collect();
            keys.sort();
            format!("{{{}}}", keys.join(","))
        }
        other => bare(other.clone()).to_string(),
    }
}

/// The keys of a dependency that are the author's to set beside what the SDK gives: more
/// features, and whether the crate's default features are on (`default-features = false` on
/// `sluice-guest` turns the SDK's allocator off). Every other key is the SDK's: a `version`,
/// `package` or `git` of the author's could name another crate than the one the SDK needs.
const AUTHORS_KEYS: [&str; 2] = ["features", "default-features"];

/// Brings the workspace's entry of one of the SDK's dependencies (`item`) to what the SDK needs
/// (`want`), in place: the SDK's keys set, its features added to the author's, the author's
/// `default-features` kept, any other key dropped. The entry's way of being written (a string, an
/// inline table, a table of its own) and its comments stay.
fn merge_dep(item: &mut Item, want: &Value) {
    let before = item.clone().into_value().ok().map(|v| canonical_dep(&v));
    merge_keys(item, want);
    // Laid out anew where it changed (a key taken out leaves its spaces behind).
    let after = item.clone().into_value().ok().map(|v| canonical_dep(&v));
    if before != after
        && let Some(t) = item.as_inline_table_mut()
    {
        t.fmt();
    }
}

/// What [`merge_dep`] does, but the layout.
fn merge_keys(item: &mut Item, want: &Value) {
    let decor = |v: &Value| v.decor().clone();
    // Only what differs, so that the author's spelling of the rest stays.
    let replace = |old: &mut Value, new: &Value, key: &str| {
        if canonical(Some(key), old) == canonical(Some(key), new) {
            return;
        }
        let kept = decor(old);
        *old = new.clone();
        *old.decor_mut() = kept;
    };
    if let (Some(old @ Value::String(_)), Value::String(_)) = (item.as_value_mut(), want) {
        return replace(old, want, "version");
    }
    if let Some(old @ Value::String(_)) = item.as_value_mut() {
        let mut table = toml_edit::InlineTable::new();
        table.insert("version", bare(old.clone()));
        let mut table = Value::InlineTable(table);
        *table.decor_mut() = decor(old);
        *old = table;
    }
    let Some(table) = item.as_table_like_mut() else {
        // Not a dependency cargo reads (a number, an array): the SDK's in its place.
        *item = Item::Value(spaced(want));
        return;
    };
    // Cargo's older spelling (refused in edition 2024) says what the author meant.
    if let Some(old) = table.remove("default_features")
        && !table.contains_key("default-features")
    {
        table.insert("default-features", old);
    }
    let want: Vec<(&str, Value)> = match want {
        Value::InlineTable(t) => t.iter().map(|(k, v)| (k, bare(v.clone()))).collect(),
        version => vec![("version", version.clone())],
    };
    let others: Vec<String> = (table.iter())
        .map(|(k, _)| k.to_owned())
        .filter(|k| !AUTHORS_KEYS.contains(&k.as_str()) && !want.iter().any(|(w, _)| w == k))
        .collect();
    for key in others {
        table.remove(&key);
    }
    for (key, value) in want {
        match table.get_mut(key) {
            Some(Item::Value(old)) if key == "features" => {
                // One feature as a string is no list cargo reads, but is what the author meant.
                if let Value::String(one) = old {
                    let list = toml_edit::Array::from_iter([one.value().clone()]);
                    let kept = decor(old);
                    *old = Value::Array(list);
                    *old.decor_mut() = kept;
                }
                match (old, &value) {
                    (Value::Array(have), Value::Array(need)) => {
                        for name in need.iter().filter_map(Value::as_str) {
                            if !have.iter().any(|f| f.as_str() == Some(name)) {
                                let prefix = if have.is_empty() { "" } else { " " };
                                have.push_formatted(Value::from(name).decorated(prefix, ""));
                            }
                        }
                    }
                    (old, _) => replace(old, &value, key),
                }
            }
            Some(Item::Value(Value::Boolean(_))) if key == "default-features" => {}
            Some(Item::Value(old)) => replace(old, &value, key),
            Some(other) => *other = Item::Value(spaced(&value)),
            None => {
                table.insert(key, Item::Value(value));
            }
        }
    }
}

/// `value` as the value of a new `key = value` line.
fn spaced(value: &Value) -> Value {
    let mut value = value.clone();
    *value.decor_mut() = toml_edit::Decor::new(" ", "");
    value
}

/// How one file or directory of the copy differs from this sluice's SDK.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Change {
    /// Not there: written.
    Added(String),
    /// Other text: written over.
    Updated(String),
    /// A file (or link) this SDK does not have, at this path: removed.
    Removed(PathBuf),
    /// A directory this SDK has nothing in, at this path: removed, with what it holds.
    RemovedDir(PathBuf),
}

/// How a workspace's copy of the SDK differs from the one this sluice carries, and the
/// workspace's manifest as it would be with this one's.
pub(super) struct Plan {
    dir: PathBuf,
    /// Each file or directory that differs, by its path under the workspace.
    files: Vec<(String, Change)>,
    /// Each `[workspace.dependencies]` entry that differs: its name, as it was (none when
    /// missing), and as it will be.
    deps: Vec<(String, Option<String>, String)>,
    /// The manifest as it will be, in the text it will be written as (its own line endings).
    manifest: String,
    /// A copy elsewhere in the workspace that the `sluice-guest` entry named before.
    old_copy: Option<String>,
}

impl Plan {
    /// Compares the copy in the workspace at `dir` with this sluice's SDK. A directory that is no
    /// transforms workspace of an author's own (none, an unreadable manifest, sluice's own
    /// `transforms/`, a `sluice-guest/` that is not the SDK, or a link) is a [`UsageError`].
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
        let (text, mut manifest) = read_workspace(dir).map_err(usage)?;
        let sdk = dir.join(SDK_DIR);
        check_copy(dir, &sdk).map_err(usage)?;
        let want = self::files();
        // What goes first, so that on a file system that ignores case, a file of this SDK named
        // as an older one's but for case is not removed once written.
        let mut files = Vec::new();
        for owned in SDK_OWNED {
            let owned = format!("{SDK_DIR}/{owned}");
            for (rel, path, is_dir) in not_wanted(dir, &owned, &want)? {
                let change = match is_dir {
                    true => Change::RemovedDir(path),
                    false => Change::Removed(path),
                };
                files.push((rel, change));
            }
        }
        for (file, text) in &want {
            let change = match std::fs::read(dir.join(file)) {
                // A checkout that turned `\n` into `\r\n` (Git's `autocrlf`) has the SDK as it is.
                Ok(have) if String::from_utf8_lossy(&have).replace("\r\n", "\n") == *text => {
                    continue;
                }
                Ok(_) => Change::Updated(text.clone()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Change::Added(text.clone()),
                Err(e) => {
                    return Err(e).with_context(|| format!("reading {}", dir.join(file).display()));
                }
            };
            files.push((file.clone(), change));
        }
        let table = (manifest.get_mut("workspace"))
            .and_then(|w| w.get_mut("dependencies"))
            .and_then(Item::as_table_like_mut)
            .context("workspace_lacks found the SDK in [workspace.dependencies]")?;
        let old_path = (table.get(SDK_DIR))
            .and_then(|e| e.get("path"))
            .and_then(Item::as_str)
            .map(str::to_owned);
        let mut deps = Vec::new();
        for (name, want) in [(SDK_DIR.to_owned(), own_entry())]
            .into_iter()
            .chain(dependencies())
        {
            let Some(item) = table.get_mut(&name) else {
                let value = spaced(&want);
                deps.push((name.clone(), None, value.to_string().trim().to_owned()));
                table.insert(&name, Item::Value(value));
                continue;
            };
            let shown = |item: &Item| match item.clone().into_value() {
                Ok(v) => (canonical_dep(&v), bare(v).to_string()),
                Err(_) => (String::new(), "(not a value)".to_owned()),
            };
            let (before, was) = shown(item);
            merge_dep(item, &want);
            let (after, now) = shown(item);
            if before != after {
                deps.push((name, Some(was), now));
            }
        }
        // Named only when it is a copy (reading its own WIT) inside the workspace: a path out of
        // it, or to a checkout of sluice's kept in it, is not the author's to remove.
        let real = |p: &Path| p.canonicalize().ok();
        let old_copy = old_path.filter(|p| match (real(&dir.join(p)), real(dir)) {
            (Some(old), Some(ws)) => {
                let lib = std::fs::read_to_string(old.join("src/lib.rs")).unwrap_or_default();
                old.starts_with(ws)
                    && Some(&old) != real(&sdk).as_ref()
                    && lib.contains(SDK_WIT_PATH.1)
            }
            _ => false,
        });
        let mut manifest = manifest.to_string();
        // Each line as the file had them, when they were all alike.
        if text.contains("\r\n") && text.matches("\r\n").count() == text.matches('\n').count() {
            manifest = manifest.replace("\r\n", "\n").replace('\n', "\r\n");
        }
        Ok(Plan {
            dir: dir.to_owned(),
            files,
            deps,
            manifest,
            old_copy,
        })
    }

    /// Whether the copy is this sluice's SDK already.
    pub(super) fn is_empty(&self) -> bool {
        self.files.is_empty() && self.deps.is_empty()
    }

    /// What differs, one line each: as it will be done (`sluice-guest/src/pool.rs (updated)`,
    /// `wit-bindgen in [workspace.dependencies]: "0.60" -> "=0.61.1"`), or with `check` as it is
    /// (`(differs)`, `"0.60", would be: "=0.61.1"`).
    fn lines(&self, check: bool) -> Vec<String> {
        let files = self.files.iter().map(|(file, change)| {
            let (done, is) = match change {
                Change::Added(_) => ("added", "missing"),
                Change::Updated(_) => ("updated", "differs"),
                Change::Removed(_) => ("removed: not in this SDK", "not in this SDK"),
                Change::RemovedDir(_) => (
                    "removed, with what it holds: not in this SDK",
                    "not in this SDK",
                ),
            };
            let slash = match change {
                Change::RemovedDir(_) => "/",
                _ => "",
            };
            format!("{file}{slash} ({})", if check { is } else { done })
        });
        let deps = self.deps.iter().map(|(name, was, now)| {
            let was = was.as_deref().unwrap_or("(none)");
            match check {
                true => format!("{name} in [workspace.dependencies]: {was}, would be: {now}"),
                false => format!("{name} in [workspace.dependencies]: {was} -> {now}"),
            }
        });
        files.chain(deps).collect()
    }

    /// What differs, for a one-line warning: the copy's files, and the manifest's entries.
    pub(super) fn short(&self) -> String {
        let mut names: Vec<String> = (self.files.iter())
            .map(|(f, _)| {
                f.strip_prefix(&format!("{SDK_DIR}/"))
                    .unwrap_or(f)
                    .to_owned()
            })
            .chain(
                self.deps
                    .iter()
                    .map(|(n, _, _)| format!("{n} in [workspace.dependencies]")),
            )
            .collect();
        let (verb, more) = match names.len() {
            1 => ("differs", 0),
            n => ("differ", n.saturating_sub(3)),
        };
        names.truncate(3);
        match more {
            0 => format!("{} {verb}", names.join(", ")),
            n => format!("{}, and {n} more {verb}", names.join(", ")),
        }
    }

    /// Writes the differences, printing each line of [`Plan::lines`] once it is done: each file
    /// whole (through a temporary file, so that none is left half-written), what this SDK lacks
    /// removed, and the manifest last. `Cargo.lock` is left to [`settle_lock`].
    fn apply(&self) -> anyhow::Result<()> {
        let lines = self.lines(false);
        for ((file, change), line) in self.files.iter().zip(&lines) {
            let path = self.dir.join(file);
            match change {
                Change::Added(text) | Change::Updated(text) => write_whole(&path, text.as_bytes())?,
                Change::Removed(path) => std::fs::remove_file(path)
                    .with_context(|| format!("removing {}", path.display()))?,
                Change::RemovedDir(path) => std::fs::remove_dir_all(path)
                    .with_context(|| format!("removing {}", path.display()))?,
            }
            crate::outln!("{line}");
        }
        if !self.deps.is_empty() {
            write_whole(&self.dir.join("Cargo.toml"), self.manifest.as_bytes())?;
            for line in &lines[self.files.len()..] {
                crate::outln!("{line}");
            }
        }
        Ok(())
    }
}

/// Why `sdk`, the workspace's `sluice-guest/`, is not a copy `update-sdk` may write, if it is
/// not. Absent, it is made: a workspace from before `new` copied the SDK (depending on a sluice
/// checkout by path) gets one; one with no manifest, or one without a name, is made whole.
fn check_copy(dir: &Path, sdk: &Path) -> anyhow::Result<()> {
    // Written through, a link would change whatever it leads to: a sluice checkout, another
    // workspace's copy.
    for path in [sdk.to_owned()]
        .into_iter()
        .chain(SDK_OWNED.iter().map(|owned| sdk.join(owned)))
    {
        match path.symlink_metadata() {
            Ok(m) if m.file_type().is_symlink() => bail!(
                "{} is a link, and update-sdk writes the SDK's copy only inside the workspace: \
                 put a directory in its place (or nothing: update-sdk makes it), and run this again",
                path.display()
            ),
            Ok(m) if !m.is_dir() => bail!(
                "{} is not a directory, where the SDK's copy goes: move it away, and run this again",
                path.display()
            ),
            _ => {}
        }
    }
    // A manifest that names another crate, or is a workspace (a checkout or a submodule of
    // sluice's, say), is someone's; one with no name is a copy left half-made.
    let manifest = std::fs::read_to_string(sdk.join("Cargo.toml")).unwrap_or_default();
    if let Ok(manifest) = manifest.parse::<DocumentMut>() {
        let name = (manifest.get("package"))
            .and_then(|p| p.get("name")?.as_str())
            .filter(|name| *name != SDK_DIR);
        let what = match (name, manifest.get("workspace")) {
            (Some(name), _) => format!("the crate {name}"),
            (None, Some(_)) => "a workspace".to_owned(),
            (None, None) => String::new(),
        };
        if !what.is_empty() {
            bail!(
                "{} is not the guest SDK but {what}, so update-sdk leaves it alone: move it away, \
                 and run this again to write the SDK there",
                sdk.display()
            );
        }
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

/// What is under `owned` (a directory of the copy, as a path under the workspace `dir`) that no
/// file of the SDK (`want`) is in: each such file or link, and each such directory whole (with
/// `true`), by its path under the workspace as shown and as it is. Links are not followed.
fn not_wanted(
    dir: &Path,
    owned: &str,
    want: &[(String, String)],
) -> anyhow::Result<Vec<(String, PathBuf, bool)>> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(dir.join(owned)) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.join(owned).display())),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        // An editor's or a file manager's (`.DS_Store`, `.lib.rs.swp`) is no part of the build;
        // but WIT is read from every `.wit` file (macOS's `._transform.wit` too).
        if name.starts_with('.') && !name.ends_with(".wit") {
            continue;
        }
        let rel = format!("{owned}/{name}");
        let is_dir = entry.file_type()?.is_dir();
        let holds = |(f, _): &(String, String)| match is_dir {
            true => f.starts_with(&format!("{rel}/")),
            false => *f == rel,
        };
        match (is_dir, want.iter().any(holds)) {
            (_, false) => out.push((rel, entry.path(), is_dir)),
            (true, true) => out.extend(not_wanted(dir, &rel, want)?),
            (false, true) => {}
        }
    }
    out.sort();
    Ok(out)
}

/// Writes `bytes` to `path` through a temporary file beside it, renamed over it (over a link
/// there, not through it), with the permissions the file had.
fn write_whole(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let parent = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let write = || -> std::io::Result<()> {
        // A new file as `new` makes one (0666 less the umask), not a temporary file's 0600.
        let mode = std::os::unix::fs::PermissionsExt::from_mode(0o666);
        let mut tmp = tempfile::Builder::new()
            .permissions(mode)
            .tempfile_in(parent)?;
        std::io::Write::write_all(&mut tmp, bytes)?;
        if let Ok(m) = path.symlink_metadata()
            && m.is_file()
        {
            tmp.as_file().set_permissions(m.permissions())?;
        }
        tmp.persist(path).map_err(|e| e.error)?;
        Ok(())
    };
    write().with_context(|| format!("writing {}", path.display()))
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
    let sdk = dir.join(SDK_DIR);
    if plan.is_empty() {
        crate::outln!(
            "{} is this sluice's guest SDK ({version}): nothing to update",
            sdk.display()
        );
        return Ok(true);
    }
    let dir_flag = format!("--dir {}", dir.display());
    if check {
        for line in plan.lines(true) {
            crate::outln!("{line}");
        }
        crate::outln!(
            "{} is not this sluice's guest SDK ({version}); `sluice transform update-sdk \
             {dir_flag}` makes it so",
            sdk.display()
        );
        return Ok(false);
    }
    plan.apply()?;
    if let Some(old) = &plan.old_copy {
        // Left a member of the workspace, it is a second crate of the SDK's name, and cargo
        // builds nothing: the lock waits for it to go.
        crate::outln!(
            "{} is no longer used ({SDK_DIR} in [workspace.dependencies] named it): remove it, \
             then build once to bring Cargo.lock to the new SDK",
            dir.join(old).display()
        );
    } else if let Err(why) = settle_lock(dir) {
        tracing::warn!(
            "{} is not yet brought to the new SDK's dependencies: `cargo metadata` failed \
             ({why}); the next build does it, so build once before committing it",
            dir.join("Cargo.lock").display()
        );
    }
    crate::outln!(
        "{} is now this sluice's guest SDK ({version}); build again: sluice transform build \
         {dir_flag}",
        sdk.display()
    );
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The SDK copied into a new workspace is the whole SDK, reads the WIT from its own `wit/`,
    /// and has each of its dependencies pinned as sluice's transforms pin them.
    #[test]
    fn the_sdk_copy_is_whole_and_reads_its_own_wit() {
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
    /// an older copy, are brought to this SDK: files added, changed and removed (a directory this
    /// SDK has nothing in, whole), dependencies rewritten in place with the author's comments,
    /// other entries and way of writing kept. Then nothing differs. sluice's own `transforms/`,
    /// a workspace where the copy goes, and a link at its `wit/`, are refused.
    #[test]
    fn a_copy_is_brought_to_this_sdk_and_the_rest_is_kept() {
        use std::os::unix::ffi::OsStrExt;
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let ws = dir.path().join("ws");
        std::fs::create_dir(&ws).unwrap();
        let manifest = "[workspace]\nresolver = \"3\"\nmembers = [\"*\"]\n\n\
            [workspace.package]\nversion = \"0.1.0\"\nedition = \"2024\"\n\
            rust-version = \"1.95\"\nlicense = \"MIT\"\npublish = false\n\n\
            [workspace.dependencies]\n# ours\n\
            sluice-guest = { path = \"/old/sluice/transforms/sluice-guest\" } # from before\n\
            wit-bindgen = \"0.60\"\nserde = \"1\"\n\n\
            # chrono, with the clock\n[workspace.dependencies.chrono]\nversion = \"0.4\" # pin\n";
        std::fs::write(ws.join("Cargo.toml"), manifest).unwrap();
        let plan = Plan::read(&ws, true).unwrap();
        let lines = plan.lines(false);
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
        plan.apply().unwrap();
        let text = std::fs::read_to_string(ws.join("Cargo.toml")).unwrap();
        // The table stays a table, with its comments.
        for kept in [
            "# ours\n",
            "# from before\n",
            "serde = \"1\"\n",
            "license = \"MIT\"",
            "# chrono, with the clock\n[workspace.dependencies.chrono]\nversion = \"0.4\" # pin\n",
        ] {
            assert!(text.contains(kept), "{kept} in {text}");
        }
        assert!(
            text.contains("sluice-guest = { path = \"sluice-guest\" } # from before\n"),
            "{text}"
        );
        for (file, want) in files() {
            assert_eq!(std::fs::read_to_string(ws.join(&file)).unwrap(), want);
        }
        assert!(Plan::read(&ws, true).unwrap().is_empty());

        // An older copy: a file changed, and what this SDK does not have (a directory whole).
        let pool = ws.join("sluice-guest/src/pool.rs");
        std::fs::write(&pool, "// an older pool\n").unwrap();
        std::fs::write(ws.join("sluice-guest/wit/old.wit"), "package a:b@0.0.1;\n").unwrap();
        std::fs::create_dir_all(ws.join("sluice-guest/wit/deps/x")).unwrap();
        std::fs::write(ws.join("sluice-guest/wit/deps/x/x.wit"), "package x:x;\n").unwrap();
        std::fs::write(ws.join("sluice-guest/src/.DS_Store"), "").unwrap();
        // macOS's shadow of a file, which WIT's parser reads as any other `.wit` file.
        std::fs::write(ws.join("sluice-guest/wit/._transform.wit"), "\0").unwrap();
        let odd = std::ffi::OsStr::from_bytes(b"\xffold.rs");
        std::fs::write(ws.join("sluice-guest/src").join(odd), "").unwrap();
        let plan = Plan::read(&ws, true).unwrap();
        assert_eq!(
            plan.lines(true),
            [
                "sluice-guest/src/\u{FFFD}old.rs (not in this SDK)",
                "sluice-guest/wit/._transform.wit (not in this SDK)",
                "sluice-guest/wit/deps/ (not in this SDK)",
                "sluice-guest/wit/old.wit (not in this SDK)",
                "sluice-guest/src/pool.rs (differs)",
            ]
        );
        assert_eq!(
            plan.short(),
            "src/\u{FFFD}old.rs, wit/._transform.wit, wit/deps, and 2 more differ"
        );
        plan.apply().unwrap();
        assert!(!ws.join("sluice-guest/wit/old.wit").exists());
        assert!(!ws.join("sluice-guest/wit/deps").exists());
        assert!(!ws.join("sluice-guest/src").join(odd).exists());
        assert!(ws.join("sluice-guest/src/.DS_Store").exists());
        assert!(Plan::read(&ws, true).unwrap().is_empty());

        // A copy checked out with `\r\n` line endings is this SDK.
        let lib = ws.join("sluice-guest/src/lib.rs");
        let crlf = std::fs::read_to_string(&lib).unwrap().replace('\n', "\r\n");
        std::fs::write(&lib, crlf).unwrap();
        assert!(Plan::read(&ws, true).unwrap().is_empty());

        // A file added gets the mode any new file gets, not a temporary file's.
        std::fs::remove_file(ws.join("sluice-guest/LICENSE")).unwrap();
        Plan::read(&ws, true).unwrap().apply().unwrap();
        std::fs::write(ws.join("plain"), "").unwrap();
        let mode = |f: &str| ws.join(f).metadata().unwrap().permissions().mode();
        assert_eq!(mode("sluice-guest/LICENSE"), mode("plain"));

        // A copy the entry named elsewhere in the workspace is named; the copy itself, or one
        // outside the workspace, is not.
        std::fs::create_dir_all(ws.join("vendor/sluice-guest/src")).unwrap();
        std::fs::create_dir_all(ws.join("vendor/sluice/transforms/sluice-guest/src")).unwrap();
        let lib = std::fs::read_to_string(ws.join("sluice-guest/src/lib.rs")).unwrap();
        std::fs::write(ws.join("vendor/sluice-guest/src/lib.rs"), &lib).unwrap();
        std::fs::write(
            ws.join("vendor/sluice/transforms/sluice-guest/src/lib.rs"),
            lib.replace(SDK_WIT_PATH.1, SDK_WIT_PATH.0),
        )
        .unwrap();
        let text = std::fs::read_to_string(ws.join("Cargo.toml")).unwrap();
        for (path, named) in [
            ("./sluice-guest/", None),
            ("vendor/sluice-guest", Some("vendor/sluice-guest")),
            ("vendor/sluice/transforms/sluice-guest", None),
            ("../elsewhere", None),
        ] {
            let entry = format!("sluice-guest = {{ path = {path:?} }}");
            let moved = text.replace("sluice-guest = { path = \"sluice-guest\" }", &entry);
            std::fs::write(ws.join("Cargo.toml"), moved).unwrap();
            std::fs::create_dir_all(dir.path().join("elsewhere")).unwrap();
            let plan = Plan::read(&ws, true).unwrap();
            assert_eq!(plan.old_copy.as_deref(), named, "{path}");
            assert_eq!(plan.is_empty(), path.starts_with("./"), "{path}");
        }
        std::fs::write(ws.join("Cargo.toml"), &text).unwrap();

        // A workspace there (a checkout of sluice's, a submodule) is someone's.
        let sdk_manifest = ws.join("sluice-guest/Cargo.toml");
        let copy = std::fs::read_to_string(&sdk_manifest).unwrap();
        std::fs::write(&sdk_manifest, "[workspace]\nmembers = [\"host\"]\n").unwrap();
        let err = Plan::read(&ws, true).err().unwrap().to_string();
        assert!(
            err.contains("is not the guest SDK but a workspace"),
            "{err}"
        );
        std::fs::write(&sdk_manifest, "").unwrap();
        assert_eq!(
            Plan::read(&ws, true).unwrap().lines(true),
            ["sluice-guest/Cargo.toml (differs)"]
        );
        std::fs::write(&sdk_manifest, copy).unwrap();

        // Written through, a link would change what it leads to.
        let elsewhere = dir.path().join("elsewhere");
        std::fs::rename(ws.join("sluice-guest/wit"), &elsewhere).unwrap();
        std::os::unix::fs::symlink(&elsewhere, ws.join("sluice-guest/wit")).unwrap();
        let err = Plan::read(&ws, true).err().unwrap().to_string();
        assert!(err.contains("sluice-guest/wit is a link"), "{err}");

        let own = Path::new(env!("CARGO_MANIFEST_DIR")).join("../transforms");
        let err = Plan::read(&own, true).err().unwrap().to_string();
        assert!(err.contains("sluice's own transforms workspace"), "{err}");
    }

    /// An entry that has what the SDK needs is left as it is, however it is written, with what
    /// the author added; one that lacks it gets it, and keeps the rest.
    #[test]
    fn an_entry_keeps_what_the_author_added_and_gets_what_the_sdk_needs() {
        let merged = |entry: &str, want: &str| -> (bool, String) {
            let mut doc: DocumentMut = format!("[d]\n{entry}\n").parse().unwrap();
            let want: DocumentMut = format!("x = {want}\n").parse().unwrap();
            let want = bare(want["x"].as_value().unwrap().clone());
            let item = &mut doc["d"]["x"];
            let before = canonical_dep(&item.clone().into_value().unwrap());
            merge_dep(item, &want);
            let after = canonical_dep(&item.clone().into_value().unwrap());
            let text = doc.to_string();
            (before != after, text.trim_start_matches("[d]\n").to_owned())
        };
        let chrono = r#"{ version = "0.4", default-features = false, features = ["std"] }"#;
        for same in [
            r#"x = { version = "0.4", default-features = false, features = ["std"] }"#,
            r#"x = { features = ['std',], default-features = false, version = '0.4' }"#,
            r#"x = { version = "0.4", default-features = false, features = ["std", "now"] }"#,
            "x.version = \"0.4\"\nx.default-features = false\nx.features = [\"std\"]",
        ] {
            assert_eq!(merged(same, chrono), (false, format!("{same}\n")), "{same}");
        }
        assert_eq!(
            merged(
                r#"x = { path = "sluice-guest", default-features = false }"#,
                r#"{ path = "sluice-guest" }"#
            ),
            (
                false,
                "x = { path = \"sluice-guest\", default-features = false }\n".to_owned()
            )
        );
        assert!(!merged("x = '=0.61.1' # ours", r#""=0.61.1""#).0);
        assert!(!merged(r#"x = "= 0.61.1""#, r#""=0.61.1""#).0);
        assert!(!merged(r#"x = { version = "^0.4" }"#, r#""0.4""#).0);
        assert!(
            !merged(
                r#"x = { path = "./sluice-guest/" }"#,
                r#"{ path = "sluice-guest" }"#
            )
            .0
        );
        assert_eq!(
            merged(r#"x = "0.60" # ours"#, r#""=0.61.1""#),
            (true, "x = \"=0.61.1\" # ours\n".to_owned())
        );
        // The author's features stay, the SDK's are added; the author's default-features stays.
        assert_eq!(
            merged(r#"x = { version = "0.3", features = ["now"], default-features = true }"#, chrono),
            (
                true,
                "x = { version = \"0.4\", features = [\"now\", \"std\"], default-features = true }\n"
                    .to_owned()
            )
        );
        assert_eq!(
            merged(r#"x = "0.4""#, chrono),
            (true, format!("x = {chrono}\n"))
        );
        // What would name another crate than the SDK's is dropped: a version the copy does not
        // have, a package renamed, a registry.
        assert_eq!(
            merged(
                r#"x = { path = "/old/sluice-guest", version = "0.1", package = "fork" }"#,
                r#"{ path = "sluice-guest" }"#
            ),
            (true, "x = { path = \"sluice-guest\" }\n".to_owned())
        );
        // One feature as a string, and the old spelling of default-features, as meant.
        assert_eq!(
            merged(r#"x = { version = "0.4", features = "now", default_features = true }"#, chrono),
            (
                true,
                "x = { version = \"0.4\", features = [\"now\", \"std\"], default-features = true }\n"
                    .to_owned()
            )
        );
        // A source the SDK does not give is dropped with the author's.
        assert_eq!(
            merged(
                r#"x = { git = "https://example.com/s", branch = "main" }"#,
                r#"{ path = "sluice-guest" }"#
            ),
            (true, "x = { path = \"sluice-guest\" }\n".to_owned())
        );
    }
}
