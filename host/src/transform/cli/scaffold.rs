//! `sluice transform new`: a transform crate from the template embedded in the binary, in a
//! workspace that has what the crate inherits (started first, with a copy of the guest SDK, in a
//! `--dir` that does not exist yet or holds nothing but dot-entries).

use std::io::Write;
use std::path::{Component, Path, PathBuf};

use anyhow::{Context, bail};

use super::build::{DEFAULT_DIR, Workspace};
use super::params::same_name;
use super::sdk::{self, SDK_DIR};
use super::usage;

const TEMPLATE_CARGO_TOML: &str = include_str!("../../../../transforms/template/Cargo.toml.tmpl");
const TEMPLATE_LIB_RS: &str = include_str!("../../../../transforms/template/src/lib.rs");
const TEMPLATE_INPUT: &str = include_str!("../../../../transforms/template/testdata/input.jsonl");
const TEMPLATE_EXPECTED: &str =
    include_str!("../../../../transforms/template/testdata/expected.jsonl");

/// sluice's own transforms lock file, which a new workspace starts from (see [`settle_lock`]),
/// so that it builds with the versions sluice is tested with.
const TRANSFORMS_CARGO_LOCK: &str = include_str!("../../../../transforms/Cargo.lock");

/// Directories of every transforms workspace that are not transform crates, with what each is
/// (`.cargo` is no valid name anyway). sluice's own `transforms/template`, the scaffold, exists:
/// a name that is taken is refused as such, and an author's workspace has none.
const RESERVED_NAMES: [(&str, &str); 2] = [
    ("target", "cargo's build directory"),
    (SDK_DIR, "the guest SDK's crate"),
];

/// Creates `<dir>/<name>/` from the embedded template and returns its path; a `dir` given by
/// `--dir` (`dir_given`) that does not exist yet, or holds nothing but dot-entries, becomes a
/// workspace first (see [`start_workspace`]). A bad name, a missing workspace or an existing
/// crate is a [`UsageError`].
///
/// [`UsageError`]: super::UsageError
pub fn scaffold(name: &str, dir: &Path, dir_given: bool) -> anyhow::Result<PathBuf> {
    let dir = &through_missing(dir);
    check_name(name, dir).map_err(usage)?;
    let started = start_workspace(dir, dir_given).map_err(usage)?;
    check_new(name, dir, dir_given).map_err(usage)?;
    if started {
        crate::outln!(
            "created the transforms workspace {}, with a copy of this sluice's guest SDK in {} \
             (the workspace builds on its own, wherever it is)",
            dir.display(),
            dir.join(SDK_DIR).display()
        );
    }
    let crate_dir = dir.join(name);
    // The paths in its doc comment, as the author gave the workspace; an absolute one, or a
    // workspace of its own just started (a repository's root, most likely), as `.` from the
    // workspace's own directory: an absolute path is wrong in every other clone, and where a
    // relative one starts from is not written down anywhere.
    let own = dir.is_absolute() || started;
    let (shown, from) = match own {
        true => (".".to_owned(), ", from the workspace's directory"),
        false => (dir.display().to_string(), ""),
    };
    let dir_flag = match !own && dir == Path::new(DEFAULT_DIR) {
        true => String::new(),
        false => format!(" --dir {shown}"),
    };
    let fill = |s: &str| {
        s.replace("{{name}}", name)
            .replace("{{dir_flag}}", &dir_flag)
            .replace("{{dir}}", &shown)
            .replace("{{from}}", from)
    };
    std::fs::create_dir_all(crate_dir.join("src"))?;
    std::fs::create_dir_all(crate_dir.join("testdata"))?;
    for (path, text) in [
        ("Cargo.toml", TEMPLATE_CARGO_TOML),
        ("src/lib.rs", TEMPLATE_LIB_RS),
        ("testdata/input.jsonl", TEMPLATE_INPUT),
        ("testdata/expected.jsonl", TEMPLATE_EXPECTED),
    ] {
        let file = crate_dir.join(path);
        std::fs::write(&file, fill(text)).with_context(|| format!("writing {}", file.display()))?;
    }
    // A workspace that lists its members by name would leave the crate out of every build, so
    // that `transform build NAME`, the next step, fails. (Cargo's own failures show there.)
    let package = format!("transform-{name}");
    if let Ok(ws) = Workspace::read(dir)
        && !ws.components.iter().any(|c| c.package == package)
    {
        let _ = std::fs::remove_dir_all(&crate_dir);
        return Err(usage(anyhow::anyhow!(
            "{}'s [workspace] members do not include {name:?}, so it would never build: add \
             \"{name}\" (or \"*\", with \"target\" in exclude) to members, then run this again",
            dir.join("Cargo.toml").display()
        )));
    }
    if started {
        settle_lock(dir);
    }
    Ok(crate_dir)
}

/// `dir` with each `missing/..` taken out, where `missing` is not there: the system resolves no
/// such path, and `new` would have to make `missing` to reach what the author meant (which is
/// exact, as what is not there is no link). Other `..` stay, to be resolved as they are.
fn through_missing(dir: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for part in dir.components() {
        let missing = matches!(out.components().next_back(), Some(Component::Normal(_)))
            && out.symlink_metadata().is_err();
        match part {
            Component::ParentDir if missing => {
                out.pop();
            }
            part => out.push(part),
        }
    }
    match out.as_os_str().is_empty() {
        true => PathBuf::from("."),
        false => out,
    }
}

/// Directories a repository keeps beside its crates, which `members = ["*"]` would otherwise
/// take for crates (cargo fails on a member without a manifest).
const NOT_CRATES: [&str; 6] = [".cargo", ".git", ".github", ".vscode", ".idea", "target"];

/// Whether `dir` can become a workspace: it does not exist (nor does a link by its name), or
/// holds nothing but dot-entries (`.git` of a fresh repository, `.gitignore`) that a workspace
/// leaves alone.
fn fresh_dir(dir: &Path) -> bool {
    match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok())
            .all(|e| e.file_name().to_string_lossy().starts_with('.')),
        Err(e) => e.kind() == std::io::ErrorKind::NotFound && dir.symlink_metadata().is_err(),
    }
}

/// `text` as a TOML basic string: `"` and `\` escaped, control characters as `\uXXXX`.
fn toml_string(text: &str) -> String {
    let mut out = String::from('"');
    for c in text.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Makes `dir`, named by `--dir`, a transforms workspace of its own when [`fresh_dir`]: a
/// `Cargo.toml` with what the template's crate inherits, sluice's transforms' `Cargo.lock`, a
/// `.cargo/config.toml` for the wasm target, a `.gitignore` for `target/` and a copy of this
/// sluice's SDK ([`SDK_FILES`]), so that an author keeping transforms in a repository of their
/// own writes no manifest by hand, and the workspace needs no checkout of sluice. Whether it did.
/// Nothing is overwritten. A directory with files in it, and the default `transforms/` when no
/// `--dir` named it (`dir_given`), are left to [`check_new`] to report: `new` run outside the
/// project root should say so, not start a workspace there.
fn start_workspace(dir: &Path, dir_given: bool) -> anyhow::Result<bool> {
    if !dir_given || dir.join("Cargo.toml").exists() || !fresh_dir(dir) {
        return Ok(false);
    }
    // Made first, and looked at again: a path that did not resolve before may name a directory
    // with files in it once it does (`through_missing` takes out the `gone/..` an author types;
    // this is for what it cannot see, such as another process making a directory meanwhile).
    let mut made = Made::default();
    made.dirs(dir)?;
    if !fresh_dir(dir) {
        made.undo();
        return Ok(false);
    }
    // A repository's other dot-directories (`.devcontainer`, `.husky`, links to directories
    // included) are no crates either.
    let mut dot_dirs: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| !NOT_CRATES.contains(&name.as_str()))
        .collect();
    dot_dirs.sort();
    let exclude: Vec<String> = (NOT_CRATES.iter().map(|d| d.to_string()))
        .chain(dot_dirs)
        .map(|d| toml_string(&d))
        .collect();
    let manifest = format!(
        "# A sluice transforms workspace: `sluice transform new NAME --dir .` adds a crate, \
         `sluice\n# transform build --dir .` builds them all for wasm32-wasip2 \
         (.cargo/config.toml).\n\
         [workspace]\nresolver = \"3\"\n\
         # Every directory here is a crate, but those excluded: add any other (docs, tests).\n\
         members = [\"*\"]\nexclude = [{}]\n\n\
         # What each crate inherits; the license is yours to choose.\n\
         [workspace.package]\nversion = \"0.1.0\"\nedition = \"2024\"\nrust-version = \"1.95\"\n\
         license = \"Apache-2.0\"\npublish = false\n\n\
         [workspace.dependencies]\n\
         # The guest SDK of the sluice that made this workspace, with the WIT it was built \
         against\n# in sluice-guest/wit/; then what the SDK itself depends on. `sluice transform \
         update-sdk --dir .`\n# brings these to another sluice's SDK.\n\
         {SDK_DIR} = {}\n{}\n\
         # Smaller, faster guests, as sluice's own transforms/ builds them.\n\
         [profile.release]\nopt-level = 3\nlto = true\ncodegen-units = 1\nstrip = true\n\
         panic = \"abort\"\n",
        exclude.join(", "),
        sdk::own_entry(),
        (sdk::dependencies().iter())
            .map(|(name, value)| format!("{name} = {value}\n"))
            .collect::<String>()
    );
    let config = "# Guests are components for WASI 0.2.\n[build]\ntarget = \"wasm32-wasip2\"\n";
    let sdk = sdk::files();
    // The manifest last: until it is there, the directory is no workspace.
    let sdk = sdk
        .iter()
        .map(|(file, text)| (file.as_str(), text.as_str()));
    let files = [
        ("Cargo.lock", TRANSFORMS_CARGO_LOCK),
        (".cargo/config.toml", config),
        (".gitignore", "/target/\n"),
    ];
    let files = sdk.chain(files).chain([("Cargo.toml", manifest.as_str())]);
    if let Err(e) = write_new(dir, files, &mut made) {
        // Nothing half-made is left behind, to be taken for a workspace or to stand in the way
        // of another try.
        made.undo();
        return Err(e);
    }
    Ok(true)
}

/// What `new` made in starting a workspace, so that a failure takes back exactly that: files,
/// then directories, each only if empty by then. Whatever was there before stays.
#[derive(Default)]
struct Made {
    files: Vec<PathBuf>,
    dirs: Vec<PathBuf>,
}

impl Made {
    /// Makes `path` and the directories above it that are not there, noting each.
    fn dirs(&mut self, path: &Path) -> anyhow::Result<()> {
        let missing: Vec<&Path> = (path.ancestors())
            .filter(|p| !p.as_os_str().is_empty())
            .take_while(|p| p.symlink_metadata().is_err())
            .collect();
        for p in missing.into_iter().rev() {
            match std::fs::create_dir(p) {
                Ok(()) => self.dirs.push(p.to_owned()),
                // `gone/..`, there once `gone` is.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && p.is_dir() => {}
                Err(e) => return Err(e).with_context(|| format!("creating {}", p.display())),
            }
        }
        Ok(())
    }

    /// Removes what was made, newest first.
    fn undo(&self) {
        for f in self.files.iter().rev() {
            let _ = std::fs::remove_file(f);
        }
        for d in self.dirs.iter().rev() {
            let _ = std::fs::remove_dir(d);
        }
    }
}

/// Writes each `(file, text)` under `dir` (making directories as needed) without overwriting,
/// noting in `made` what it made. The dot-entries a repository may have already are kept as they
/// are (nothing else is there, see [`fresh_dir`]); [`kept`] says what they lack.
fn write_new<'a>(
    dir: &Path,
    files: impl Iterator<Item = (&'a str, &'a str)>,
    made: &mut Made,
) -> anyhow::Result<()> {
    for (file, text) in files {
        let path = dir.join(file);
        if let Some(parent) = path.parent() {
            made.dirs(parent)?;
        }
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(mut f) => {
                made.files.push(path.clone());
                f.write_all(text.as_bytes())
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && file.starts_with('.') => {
                kept(&path, file);
                Ok(())
            }
            Err(e) => Err(e),
        }
        .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// Warns that the repository's own `file` (at `path`), kept as it is, lacks what the new
/// workspace's would have said: `target/` ignored, the wasm target set.
fn kept(path: &Path, file: &str) {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let (lacks, add) = match file {
        ".gitignore" => (
            !ignores_target(&text),
            "`/target/`, so that builds stay out of git",
        ),
        _ => (
            !text.contains("wasm32-wasip2"),
            "`[build]` `target = \"wasm32-wasip2\"` for plain `cargo build`s \
             (`sluice transform build` passes the target itself)",
        ),
    };
    if lacks {
        tracing::warn!("kept {} as it was; add {add}", path.display());
    }
}

/// Whether a `.gitignore` has a pattern naming `target` (`/target/`, `**/target`, `target/*`)
/// that is not a comment or a negation.
fn ignores_target(gitignore: &str) -> bool {
    (gitignore.lines())
        .filter(|l| !l.starts_with('#') && !l.starts_with('!'))
        .any(|l| l.trim_end().split('/').any(|part| part == "target"))
}

/// Brings the `Cargo.lock` of a workspace [`start_workspace`] began, sluice's transforms' own,
/// to this workspace's crates (see [`sdk::settle_lock`]), so that it can be committed as it is
/// and `cargo build --locked` works from the start, with the versions sluice's own transforms
/// were built with. When cargo cannot (no cached crates and no network), the workspace is still
/// right; the warning says the lock is not yet.
fn settle_lock(dir: &Path) {
    if let Err(why) = sdk::settle_lock(dir) {
        tracing::warn!(
            "{} is still sluice's own lock file, not yet this workspace's: `cargo metadata` \
             failed ({why}). Once that works (with the crates fetched, or a network), the first \
             build trims it; until then `cargo build --locked` fails, so build once before \
             committing it",
            dir.join("Cargo.lock").display()
        );
    }
}

/// Why `NAME` cannot be a new transform's name in `dir`, if it cannot; nothing on disk is looked
/// at, so that a bad name is refused before a workspace is started.
fn check_name(name: &str, dir: &Path) -> anyhow::Result<()> {
    // crates.io's limit, and far below a file name's.
    if name.len() > 64 {
        bail!(
            "invalid transform name: {} characters, at most 64",
            name.len()
        );
    }
    let valid = !name.is_empty()
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if !valid {
        bail!(
            "invalid transform name {name:?}: use lowercase letters, digits, `-` and `_`, starting with a letter"
        );
    }
    if let Some((reserved, what)) = RESERVED_NAMES.iter().find(|(r, _)| same_name(r, name)) {
        bail!(
            "invalid transform name {name:?}: {}/{reserved} is {what}, not a transform crate; pick another name",
            dir.display()
        );
    }
    Ok(())
}

/// Why `transform new NAME --dir DIR` cannot scaffold, if it cannot.
fn check_new(name: &str, dir: &Path, dir_given: bool) -> anyhow::Result<()> {
    if !dir.join("Cargo.toml").is_file() {
        bail!(
            "{} is not a transforms workspace (no Cargo.toml): {}",
            dir.display(),
            where_workspace(dir_given)
        );
    }
    // `my-thing` and `my_thing` would both build `transform_my_thing.wasm`, one over the other.
    let taken = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok())
        .find(|e| same_name(&e.file_name().to_string_lossy(), name));
    if let Some(existing) = taken {
        let why = match existing.file_name().to_string_lossy() == name {
            true => String::new(),
            // Not the name given: say why it counts as the same.
            false => format!(
                " (`-` and `_` name the same transform: both build transform_{}.wasm)",
                name.replace('-', "_")
            ),
        };
        bail!(
            "{} already exists{why}; pick another name",
            existing.path().display()
        );
    }
    // The scaffold inherits its version, edition and SDK from the workspace: elsewhere it would
    // be created, then fail to build with cargo's words, not ours.
    read_workspace(dir)?;
    Ok(())
}

/// The manifest of the workspace at `dir`, as its text and parsed, when it is a sluice transforms
/// workspace (see [`workspace_lacks`]); why not, if not.
pub(super) fn read_workspace(dir: &Path) -> anyhow::Result<(String, toml_edit::DocumentMut)> {
    let path = dir.join("Cargo.toml");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let manifest: toml_edit::DocumentMut = text.parse().map_err(|e: toml_edit::TomlError| {
        anyhow::anyhow!(
            "{} is not valid TOML: {}",
            path.display(),
            e.to_string().trim()
        )
    })?;
    let lacks = workspace_lacks(&manifest);
    if !lacks.is_empty() {
        // `--dir .` in a crate of the workspace, most likely.
        let crate_of = manifest.get("package").is_some() && manifest.get("workspace").is_none();
        bail!(
            "{} is not a sluice transforms workspace: its Cargo.toml lacks {}, which a transform \
             crate inherits{} (sluice's own is transforms/; for a crate elsewhere see \"A \
             transform crate outside transforms/\" in docs/TRANSFORMS.md)",
            dir.display(),
            lacks.join(" and "),
            match crate_of {
                true => "; it is a crate, and --dir names the workspace: the directory above?",
                false => "",
            }
        );
    }
    Ok((text, manifest))
}

/// What to do when the workspace directory holds no workspace: the default (no `--dir`,
/// `dir_given` false) is relative to the project root, and `--dir` names the workspace itself,
/// not the directory above it.
pub(super) fn where_workspace(dir_given: bool) -> String {
    // Run in the workspace, or in one of its crates, an author means that one.
    let is_workspace = |manifest: &str| {
        let text = std::fs::read_to_string(manifest).unwrap_or_default();
        (text.parse().ok()).is_some_and(|m: toml_edit::DocumentMut| workspace_lacks(&m).is_empty())
    };
    if !dir_given && is_workspace("Cargo.toml") {
        "this directory is a transforms workspace itself: pass --dir .".to_owned()
    } else if !dir_given && is_workspace("../Cargo.toml") {
        "this directory is a crate of the transforms workspace above it: pass --dir ..".to_owned()
    } else if !dir_given {
        "run this from the directory that holds transforms/ (the project root), or pass --dir"
            .to_owned()
    } else {
        "--dir names the transforms workspace itself, the directory whose Cargo.toml has \
         [workspace] (`new` starts one only in a directory that does not exist yet, or holds \
         nothing but dot-entries such as .git)"
            .to_owned()
    }
}

/// What a workspace manifest lacks of what the template inherits: `version`, `edition`,
/// `rust-version`, `license` and `publish` in `[workspace.package]`, and `sluice-guest` in
/// `[workspace.dependencies]`, in any of TOML's ways of writing them. Empty when it has it all.
pub(super) fn workspace_lacks(manifest: &toml_edit::DocumentMut) -> Vec<String> {
    const INHERITED: [&str; 5] = ["version", "edition", "rust-version", "license", "publish"];
    let workspace = manifest.get("workspace");
    let package = workspace.and_then(|w| w.get("package"));
    let package: Vec<String> = INHERITED
        .iter()
        .filter(|k| package.and_then(|p| p.get(k)).is_none())
        .map(|k| format!("`{k}`"))
        .collect();
    let mut lacks = Vec::new();
    if !package.is_empty() {
        lacks.push(format!("{} in [workspace.package]", package.join(", ")));
    }
    let deps = workspace.and_then(|w| w.get("dependencies"));
    if deps.and_then(|d| d.get(SDK_DIR)).is_none() {
        lacks.push(format!("{SDK_DIR} in [workspace.dependencies]"));
    }
    lacks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_through_a_missing_directory_is_taken_as_meant() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path();
        std::fs::create_dir(base.join("here")).unwrap();
        for (path, want) in [
            ("gone/../ws", "ws"),
            ("gone/deeper/../../ws", "ws"),
            ("here/../ws", "here/../ws"),
            ("here/gone/../ws", "here/ws"),
            ("gone/..", "."),
            ("../gone-sluice-9f3/../ws", "../ws"),
        ] {
            let got = through_missing(&base.join(path));
            assert_eq!(got, base.join(want), "{path}");
        }
        assert_eq!(through_missing(Path::new("gone-xyz/..")), Path::new("."));
    }

    #[test]
    fn a_gitignore_ignores_target_by_any_pattern_naming_it() {
        for (text, want) in [
            ("/target/\n", true),
            ("*.log\n**/target\n", true),
            ("/target/**", true),
            ("target/*\n", true),
            ("target", true),
            ("# target\n", false),
            ("!target\n", false),
            ("targets/\n", false),
            ("*.log\n", false),
        ] {
            assert_eq!(ignores_target(text), want, "{text:?}");
        }
    }

    #[test]
    fn a_sluice_workspace_is_recognised_however_its_toml_is_written() {
        let lacks = |text: &str| workspace_lacks(&text.parse().unwrap());
        let package = "[workspace.package]\nversion = \"0.1.0\"\nedition = \"2024\"\n\
                       rust-version = \"1.95\"\nlicense = \"Apache-2.0\"\npublish = false\n";
        for (sdk, want) in [
            (
                "[workspace.dependencies]\nsluice-guest = { path = \"g\" }\n",
                true,
            ),
            (
                "[workspace.dependencies] # shared\n\"sluice-guest\" = { path = \"g\" }\n",
                true,
            ),
            (
                "[workspace.dependencies]\nsluice-guest.path = \"g\"\n",
                true,
            ),
            (
                "[workspace.dependencies.sluice-guest]\npath = \"g\"\n",
                true,
            ),
            (
                "[ workspace.dependencies ]\n'sluice-guest' = { path = \"g\" }\n",
                true,
            ),
            ("[workspace.dependencies]\nserde = \"1\"\n", false),
            ("[dependencies]\nsluice-guest = { path = \"g\" }\n", false),
            (
                "[workspace.dependencies]\n# sluice-guest = { path = \"g\" }\n",
                false,
            ),
            ("", false),
        ] {
            let manifest = format!("[workspace]\nmembers = [\"*\"]\n{package}{sdk}");
            assert_eq!(lacks(&manifest).is_empty(), want, "{sdk}");
        }
        let sdk = "[workspace.dependencies]\nsluice-guest = { path = \"g\" }\n";
        let partial = "[workspace.package]\nversion = \"0.1.0\"\nedition = \"2024\"\n";
        assert_eq!(
            lacks(&format!("{partial}{sdk}")),
            ["`rust-version`, `license`, `publish` in [workspace.package]"]
        );
        assert_eq!(
            lacks(partial).last().map(String::as_str),
            Some("sluice-guest in [workspace.dependencies]")
        );
        let dotted = "[workspace]\npackage.version = \"0.1.0\"\npackage.edition = \"2024\"\n\
                      package.rust-version = \"1.95\"\npackage.license = \"x\"\npackage.publish = false\n";
        assert!(lacks(&format!("{dotted}{sdk}")).is_empty());
        let dotted = format!("[workspace]\ndependencies.sluice-guest.path = \"g\"\n{package}");
        assert!(lacks(&dotted).is_empty(), "{dotted}");
        assert!(lacks(include_str!("../../../../transforms/Cargo.toml")).is_empty());
    }
}
