//! Warnings about a component file that is likely not the one its author means to run: a debug
//! build, or a build older than its crate's sources (edited, then not built again). Either still
//! runs, so these are warnings; they only look at cargo's own layout,
//! `<workspace>/target/<target>/<profile>/<lib name>.wasm`, and say nothing about a file elsewhere.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// What looks wrong with the component at `path`, if anything.
pub(crate) fn check(path: &Path) -> Option<String> {
    let profile_dir = path.parent()?;
    if profile_dir.file_name()? == "debug" {
        return Some(format!(
            "{} is a debug build: it runs several times slower than a release build, closer to \
             its timeout_ms. Build it with `sluice transform build` (release)",
            path.display()
        ));
    }
    let workspace = profile_dir.parent()?.parent()?.parent()?;
    if profile_dir.parent()?.parent()?.file_name()? != "target" {
        return None;
    }
    let built = std::fs::metadata(path).ok()?.modified().ok()?;
    let lib = path.file_stem()?.to_str()?;
    let krate = crate_dir(workspace, lib)?;
    let (changed, when) = newest_source(&krate)?;
    if when <= built {
        return None;
    }
    // `build NAME` builds crate `transform-NAME`; any other crate is built with the rest.
    let mut build = match lib.strip_prefix("transform_") {
        Some(name) => format!("sluice transform build {name}"),
        None => "sluice transform build".to_owned(),
    };
    if workspace.file_name()? != "transforms" {
        build.push_str(&format!(" --dir {}", workspace.display()));
    }
    Some(format!(
        "{} is older than its crate's sources ({} changed after it was built): it runs the code \
         as it was then. Build it again with `{build}`",
        path.display(),
        changed.display()
    ))
}

/// The member directory of `workspace` whose crate's library is `lib` (`transform-geo` builds
/// `transform_geo.wasm`).
fn crate_dir(workspace: &Path, lib: &str) -> Option<PathBuf> {
    std::fs::read_dir(workspace)
        .ok()?
        .flatten()
        .find_map(|entry| {
            let toml = std::fs::read_to_string(entry.path().join("Cargo.toml")).ok()?;
            let name = toml
                .lines()
                .skip_while(|l| l.trim() != "[package]")
                .find_map(|l| {
                    let (key, value) = l.split_once('=')?;
                    (key.trim() == "name").then(|| value.trim().trim_matches('"').replace('-', "_"))
                })?;
            (name == lib).then(|| entry.path())
        })
}

/// The most recently modified of the crate's `Cargo.toml` and the files under its `src/`, and
/// when it was modified.
fn newest_source(krate: &Path) -> Option<(PathBuf, SystemTime)> {
    let mut newest: Option<(PathBuf, SystemTime)> = None;
    let mut dirs = vec![krate.join("src")];
    let mut files = vec![krate.join("Cargo.toml")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            match entry.file_type() {
                Ok(t) if t.is_dir() => dirs.push(entry.path()),
                Ok(_) => files.push(entry.path()),
                Err(_) => {}
            }
        }
    }
    for file in files {
        let Ok(modified) = std::fs::metadata(&file).and_then(|m| m.modified()) else {
            continue;
        };
        if newest.as_ref().is_none_or(|(_, t)| modified > *t) {
            newest = Some((file, modified));
        }
    }
    newest
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Writes `text` at `path`, modified at `at`.
    fn write(path: &Path, text: &str, at: SystemTime) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
        let file = std::fs::File::options().write(true).open(path).unwrap();
        file.set_modified(at).unwrap();
    }

    #[test]
    fn a_debug_build_or_one_older_than_its_sources_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let ws = &dir.path().join("transforms");
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let built = t0 + Duration::from_secs(60);
        // A dependency's `name` is not the package's.
        let toml = "[package]\nname = \"transform-geo\"\n\n[dependencies]\nname = \"x\"\n";
        write(&ws.join("geo/Cargo.toml"), toml, t0);
        write(&ws.join("geo/src/lib.rs"), "", t0);
        write(&ws.join("geo/src/more/deep.rs"), "", t0);
        let release = ws.join("target/wasm32-wasip2/release/transform_geo.wasm");
        write(&release, "", built);
        assert_eq!(check(&release), None);

        // An edit after the build, however deep in `src/`.
        write(
            &ws.join("geo/src/more/deep.rs"),
            "",
            built + Duration::from_secs(1),
        );
        let warning = check(&release).unwrap();
        assert!(
            warning.contains("deep.rs changed after it was built")
                && warning.ends_with("`sluice transform build geo`"),
            "{warning}"
        );

        let debug = ws.join("target/wasm32-wasip2/debug/transform_geo.wasm");
        write(&debug, "", built);
        assert!(check(&debug).unwrap().contains("is a debug build"));

        // Outside cargo's layout, or no crate's library: nothing to say.
        let elsewhere = ws.join("out/transform_geo.wasm");
        write(&elsewhere, "", t0);
        assert_eq!(check(&elsewhere), None);
        let other = ws.join("target/wasm32-wasip2/release/transform_other.wasm");
        write(&other, "", t0);
        assert_eq!(check(&other), None);
    }
}
