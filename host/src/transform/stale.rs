//! Warnings about a component file that is likely not the one its author means to run: a debug
//! build, or a build older than a file it was built from (edited, then not built again). Either
//! still runs, so these are warnings; they only look at cargo's own layout,
//! `<target dir>/wasm32-wasip2/<profile>/<lib name>.wasm` with its dep-info `<lib name>.d`, and
//! say nothing about a file elsewhere.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// What looks wrong with the component at `path`, if anything.
pub(crate) fn check(path: &Path) -> Option<String> {
    let profile_dir = path.parent()?;
    // Any target directory (`CARGO_TARGET_DIR` may name one outside the workspace).
    let triple_dir = profile_dir.parent()?;
    if triple_dir.file_name()? != "wasm32-wasip2" {
        return None;
    }
    if profile_dir.file_name()? == "debug" {
        return Some(format!(
            "{} is a debug build: it runs several times slower than a release build, closer to \
             its timeout_ms. Build it with `sluice transform build` (release)",
            path.display()
        ));
    }
    // Cargo's dep-info beside the artifact lists exactly the files it was built from (the
    // crate's modules, the SDK's, the WIT), and a build that finds none of them changed leaves
    // the artifact as it is: so a newer one means a build is due, and nothing else does.
    let built = modified(path)?;
    let dep_info = std::fs::read_to_string(path.with_extension("d")).ok()?;
    let changed = sources(&dep_info).find(|p| modified(p).is_some_and(|t| t > built))?;
    let lib = path.file_stem()?.to_str()?;
    let workspace = workspace_of(lib, sources(&dep_info));
    // `build NAME` builds crate `transform-NAME`; any other crate is built with the rest.
    let build = match lib.strip_prefix("transform_") {
        Some(name) => format!("sluice transform build {name}"),
        None => "sluice transform build".to_owned(),
    };
    let again = match workspace {
        Some(ws) => format!("Build it again with `{build}{}`", dir_flag(&ws)),
        None => format!("Build it again with `{build}` in its transforms workspace"),
    };
    Some(format!(
        "{} is older than a file it was built from ({} changed since): it runs the code as it \
         was then. {again}",
        path.display(),
        changed.display()
    ))
}

/// The transforms workspace a component was built from: the workspace of the crate among the
/// files it was built from whose library it is (the SDK and the WIT are listed too, and may sit
/// in another workspace), found as cargo lays crates out whatever the target directory. A crate's
/// directory has a `Cargo.toml` naming the package (`transform-geo` for `transform_geo`); its
/// workspace is the nearest directory from there up whose `Cargo.toml` has a `[workspace]` table.
fn workspace_of(lib: &str, sources: impl Iterator<Item = PathBuf>) -> Option<PathBuf> {
    let toml = |dir: &Path| std::fs::read_to_string(dir.join("Cargo.toml")).ok();
    let names_package = |text: &str| {
        text.lines().any(|l| {
            let l = l.replace(' ', "");
            l.strip_prefix("name=\"")
                .and_then(|n| n.strip_suffix('"'))
                .is_some_and(|n| n.replace('-', "_") == lib)
        })
    };
    let is_workspace = |text: &str| text.lines().any(|l| l.trim() == "[workspace]");
    let mut sources = sources;
    let crate_dir = sources.find_map(|file| {
        (file.ancestors().skip(1))
            .filter(|dir| !dir.as_os_str().is_empty())
            .find_map(|dir| Some((dir, toml(dir)?)))
            .filter(|(_, text)| names_package(text))
            .map(|(dir, _)| dir.to_path_buf())
    })?;
    (crate_dir.ancestors())
        .filter(|dir| !dir.as_os_str().is_empty())
        .find(|dir| toml(dir).is_some_and(|t| is_workspace(&t)))
        .map(Path::to_path_buf)
}

/// The `--dir` that `sluice transform build`, run where sluice runs now, needs to find
/// `workspace`: none for the default `transforms`, and `.` for the current directory (a
/// component named from the workspace's own root, `target/...`, has an empty one).
fn dir_flag(workspace: &Path) -> String {
    let workspace = match workspace.as_os_str().is_empty() {
        true => Path::new("."),
        false => workspace,
    };
    let default = Path::new(super::cli::DEFAULT_DIR).canonicalize().ok();
    match default.is_some() && workspace.canonicalize().ok() == default {
        true => String::new(),
        false => format!(" --dir {}", workspace.display()),
    }
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).ok()?.modified().ok()
}

/// The files a dep-info file (`out: dep dep ...`, Makefile style, `\ ` for a space in a path)
/// says its artifact was built from.
fn sources(dep_info: &str) -> impl Iterator<Item = PathBuf> + '_ {
    let deps = dep_info
        .lines()
        .next()
        .and_then(|l| l.split_once(": "))
        .map(|(_, d)| d);
    let mut rest = deps.unwrap_or_default();
    std::iter::from_fn(move || {
        rest = rest.trim_start();
        if rest.is_empty() {
            return None;
        }
        let mut path = String::new();
        let mut chars = rest.char_indices();
        let mut end = rest.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, next)) = chars.next() {
                        path.push(next);
                    }
                }
                c if c.is_whitespace() => {
                    end = i;
                    break;
                }
                c => path.push(c),
            }
        }
        rest = &rest[end..];
        Some(PathBuf::from(path))
    })
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
    fn a_debug_build_or_one_older_than_what_it_was_built_from_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let ws = &dir.path().join("my ws");
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let built = t0 + Duration::from_secs(60);
        write(
            &ws.join("Cargo.toml"),
            "[workspace]\nmembers = [\"geo\"]\n",
            t0,
        );
        let package = "[package]\nname = \"transform-geo\"\n";
        write(&ws.join("geo/Cargo.toml"), package, t0);
        // The SDK, in a workspace of its own, listed first as cargo's sorted paths may list it.
        let sdk = dir.path().join("a sdk/sluice-guest/src/lib.rs");
        write(&sdk, "", t0);
        let sdk_package = "[package]\nname = \"sluice-guest\"\n";
        write(
            &dir.path().join("a sdk/sluice-guest/Cargo.toml"),
            sdk_package,
            t0,
        );
        write(&dir.path().join("a sdk/Cargo.toml"), "[workspace]\n", t0);
        let lib = ws.join("geo/src/lib.rs");
        let deep = ws.join("geo/src/more/deep.rs");
        write(&lib, "", t0);
        write(&deep, "", t0);
        // Not a source: cargo rebuilds nothing for it.
        write(&ws.join("geo/NOTES.md"), "", built + Duration::from_secs(9));
        let release = ws.join("target/wasm32-wasip2/release/transform_geo.wasm");
        write(&release, "", built);
        let escaped = |p: &Path| p.display().to_string().replace(' ', "\\ ");
        let dep_info = format!(
            "{}: {} {} {}\n",
            escaped(&release),
            escaped(&sdk),
            escaped(&lib),
            escaped(&deep)
        );
        write(&release.with_extension("d"), &dep_info, built);
        assert_eq!(check(&release), None);

        // An edit after the build, in any module of the crate.
        write(&deep, "", built + Duration::from_secs(1));
        let warning = check(&release).unwrap();
        assert!(
            warning.contains("deep.rs changed since")
                && warning.ends_with(&format!(
                    "`sluice transform build geo --dir {}`",
                    ws.display()
                )),
            "{warning}"
        );

        // A target directory elsewhere (`CARGO_TARGET_DIR`): the workspace is the sources'.
        let away = dir
            .path()
            .join("tgt/wasm32-wasip2/release/transform_geo.wasm");
        write(&away, "", built);
        write(&away.with_extension("d"), &dep_info, built);
        let warning = check(&away).unwrap();
        assert!(
            warning.ends_with(&format!(
                "`sluice transform build geo --dir {}`",
                ws.display()
            )),
            "{warning}"
        );
        // And with no workspace to be found, no `--dir` that cannot work.
        std::fs::remove_file(ws.join("Cargo.toml")).unwrap();
        let warning = check(&away).unwrap();
        assert!(
            warning.ends_with("`sluice transform build geo` in its transforms workspace"),
            "{warning}"
        );

        let debug = ws.join("target/wasm32-wasip2/debug/transform_geo.wasm");
        write(&debug, "", built);
        assert!(check(&debug).unwrap().contains("is a debug build"));

        // Outside cargo's layout (a `debug` directory too), or with no dep-info: nothing to say.
        for elsewhere in ["out/transform_geo.wasm", "out/debug/transform_geo.wasm"] {
            let elsewhere = ws.join(elsewhere);
            write(&elsewhere, "", t0);
            assert_eq!(check(&elsewhere), None);
        }
        let other = ws.join("target/wasm32-wasip2/release/transform_other.wasm");
        write(&other, "", t0);
        assert_eq!(check(&other), None);
        // Named from the workspace's root (`target/...`): the workspace is `.`, not nothing.
        assert_eq!(dir_flag(Path::new("")), " --dir .");
    }
}
