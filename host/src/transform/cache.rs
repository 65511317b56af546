//! The compiled-component cache: each component's machine code on disk, so that a second run
//! starts in milliseconds instead of compiling again.
//!
//! An entry is named by its key, a BLAKE3 hash of the component's bytes and of the engine's
//! compatibility hash (wasmtime's version and every setting that changes the code), and holds
//! that key, a BLAKE3 hash of the code, and the code. Loading machine code runs it, so an entry is
//! used only when both hashes check out: a damaged entry (a bad disk, a half-written copy) or one
//! filed under another component's name is compiled again and replaced, never executed. (This
//! guards against accidents, not against someone who can write the directory: they could write a
//! sound entry. So a directory that another user could write, one owned by someone other than
//! this user or root or writable by its group or by all, such as `/tmp`, is not used.) Every
//! cache failure costs only time: the component is compiled as if there were no cache.
//!
//! An entry's modification time says when it was last used (refreshed at most once a day).
//! Whenever a component is compiled and stored, entries unused for [`MAX_IDLE`] are removed, so
//! the directory does not grow with every rebuilt transform and wasmtime upgrade; an entry in
//! daily use stays. Past [`MAX_TOTAL`] bytes in all (an author rebuilding a transform many
//! times a day), the least recently used entries go too, as in wasmtime's own cache.

use std::hash::Hasher;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use wasmtime::Engine;
use wasmtime::component::Component;

/// The first bytes of every entry.
const MAGIC: &[u8; 8] = b"SLUICECW";

/// An entry's header: the magic, its key and the hash of its code.
const HEADER: usize = MAGIC.len() + 32 + 32;

/// How long an entry may go unused before the next store removes it.
const MAX_IDLE: Duration = Duration::from_secs(30 * 24 * 3600);

/// The most bytes the entries may take in all before the next store removes the least recently
/// used: wasmtime's own cache's default limit. An entry is a few MiB.
const MAX_TOTAL: u64 = 1 << 30;

/// How stale an entry's use time may get before a hit refreshes it: often enough for
/// [`MAX_IDLE`], rarely enough that a run does not write metadata for every component.
const TOUCH_AFTER: Duration = Duration::from_secs(24 * 3600);

/// A directory of compiled components.
#[derive(Debug, Clone)]
pub struct CompileCache {
    dir: PathBuf,
}

/// Feeds a `Hash` impl into BLAKE3.
struct Blake3Hasher(blake3::Hasher);

impl Hasher for Blake3Hasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    fn finish(&self) -> u64 {
        unreachable!("only the BLAKE3 digest is read")
    }
}

impl CompileCache {
    /// Uses `dir`, creating it (readable by this user only) if needed; why not, when it cannot
    /// be created or another user could write in it.
    pub fn open(dir: &Path) -> Result<CompileCache, String> {
        use std::os::unix::fs::DirBuilderExt;
        let dir = std::path::absolute(dir).map_err(|e| e.to_string())?;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| e.to_string())?;
        let meta = std::fs::metadata(&dir).map_err(|e| e.to_string())?;
        if let Some(why) = crate::writable_by_others(&meta) {
            return Err(format!(
                "{why}, so another user could put code in it that sluice would run; `chmod go-w` \
                 it, or use a directory of your own"
            ));
        }
        Ok(CompileCache { dir })
    }

    /// The component `bytes` compiled for `engine`: a sound cache entry's code, else compiled now
    /// (and stored, when the directory takes it); and whether it came from the cache.
    // The one `unsafe` in sluice: loading machine code is what a compile cache is for.
    #[allow(unsafe_code)]
    pub fn component(&self, engine: &Engine, bytes: &[u8]) -> wasmtime::Result<(Component, bool)> {
        let mut hasher = Blake3Hasher(blake3::Hasher::new());
        std::hash::Hash::hash(&engine.precompile_compatibility_hash(), &mut hasher);
        hasher.0.update(bytes);
        let key = hasher.0.finalize();
        let path = self.dir.join(format!("{}.cwasm", key.to_hex()));
        match read_entry(&path) {
            Ok(entry) => match code_of(&entry, key.as_bytes()) {
                // SAFETY: `deserialize` runs the code it is given, so it must be what
                // `Component::serialize` wrote for this engine. `code_of` checked that the entry
                // was filed by `store` under this component's and this engine's key and that
                // the code is, byte for byte, what was stored.
                Some(code) => match unsafe { Component::deserialize(engine, code) } {
                    Ok(component) => {
                        touch(&path);
                        return Ok((component, true));
                    }
                    Err(e) => tracing::warn!(
                        entry = %path.display(), error = %format!("{e:#}"),
                        "cannot load a compiled-transform cache entry; compiling again"
                    ),
                },
                None => tracing::warn!(
                    entry = %path.display(),
                    "a compiled-transform cache entry is damaged; compiling again"
                ),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(
                entry = %path.display(), error = %e,
                "cannot read a compiled-transform cache entry; compiling again"
            ),
        }
        let component = Component::new(engine, bytes)?;
        if let Err(e) = component
            .serialize()
            .map_err(|e| format!("{e:#}"))
            .and_then(|code| store(&path, key.as_bytes(), &code).map_err(|e| e.to_string()))
        {
            tracing::warn!(
                entry = %path.display(), error = %e,
                "cannot store a compiled transform in the cache; the next run compiles it again"
            );
        }
        prune(&self.dir, SystemTime::now(), MAX_TOTAL);
        Ok((component, false))
    }
}

/// The bytes of the entry at `path`, if no other user could have written it. The directory was
/// checked when the cache was opened, but a run may compile for seconds before it reads an
/// entry; the file it opens is checked too (its owner and mode, on the open file).
fn read_entry(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read as _;
    use std::os::unix::fs::OpenOptionsExt;
    // Not blocking: opening a FIFO put in the entry's place would wait for a writer forever.
    let mut file = std::fs::File::options()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(std::io::Error::other("it is not a regular file"));
    }
    if let Some(why) = crate::writable_by_others(&meta) {
        return Err(std::io::Error::other(format!(
            "{why}, so another user could have written it, and it is not run"
        )));
    }
    let mut entry = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    file.read_to_end(&mut entry)?;
    Ok(entry)
}

/// Marks the entry at `path` as used now, unless it already was within [`TOUCH_AFTER`]. Failing
/// to (a read-only cache) only makes the entry look older than it is.
fn touch(path: &Path) {
    use std::os::unix::fs::OpenOptionsExt;
    let now = SystemTime::now();
    let file = std::fs::File::options()
        .write(true)
        .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
        .open(path);
    let Ok(file) = file else {
        return;
    };
    let stale = file
        .metadata()
        .and_then(|m| m.modified())
        .map_or(true, |t| {
            now.duration_since(t).unwrap_or_default() > TOUCH_AFTER
        });
    if stale {
        let _ = file.set_modified(now);
    }
}

/// Removes the entries of `dir` unused for [`MAX_IDLE`] by `now`, then, while the rest take more
/// than `max_total` bytes, the least recently used; and temporary files that a stopped writer
/// left behind a day ago. Only files this cache names are touched: a directory someone shares
/// with other files keeps them.
fn prune(dir: &Path, now: SystemTime, max_total: u64) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let remove = |path: &Path| match std::fs::remove_file(path) {
        Ok(()) => {
            tracing::debug!(entry = %path.display(), "removed an unused compiled-transform cache entry")
        }
        Err(e) => {
            tracing::debug!(entry = %path.display(), error = %e, "cannot remove an unused compiled-transform cache entry")
        }
    };
    // The entries kept: (last used, size, path).
    let mut kept = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let is_entry = name.len() == 64 + ".cwasm".len()
            && name.ends_with(".cwasm")
            && name[..64].bytes().all(|b| b.is_ascii_hexdigit());
        let max_idle = if is_entry {
            MAX_IDLE
        } else if name.starts_with(".tmp") {
            TOUCH_AFTER
        } else {
            continue;
        };
        let Ok(meta) = entry.metadata() else {
            continue;
        };
        let Ok(used) = meta.modified() else {
            continue;
        };
        if now.duration_since(used).unwrap_or_default() > max_idle {
            remove(&entry.path());
        } else if is_entry {
            kept.push((used, meta.len(), entry.path()));
        }
    }
    let mut total: u64 = kept.iter().map(|(_, size, _)| size).sum();
    // Oldest first; the entry just stored is the newest, so it stays unless it alone is too big.
    kept.sort();
    for (_, size, path) in kept {
        if total <= max_total {
            break;
        }
        remove(&path);
        total -= size;
    }
}

/// The code of `entry` if it is a sound entry filed under `key`.
fn code_of<'a>(entry: &'a [u8], key: &[u8; 32]) -> Option<&'a [u8]> {
    let (header, code) = entry.split_at_checked(HEADER)?;
    let (magic, hashes) = header.split_at(MAGIC.len());
    let (filed_key, code_hash) = hashes.split_at(32);
    (magic == MAGIC && filed_key == key && code_hash == blake3::hash(code).as_bytes())
        .then_some(code)
}

/// Writes an entry whole or not at all: to a temporary file first, renamed into place, so that a
/// run that stops halfway or a concurrent run never leaves a partial entry under the name.
fn store(path: &Path, key: &[u8; 32], code: &[u8]) -> std::io::Result<()> {
    // A temporary file of its own (removed if anything fails): two writers never share one.
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    let mut entry = Vec::with_capacity(HEADER + code.len());
    entry.extend_from_slice(MAGIC);
    entry.extend_from_slice(key);
    entry.extend_from_slice(blake3::hash(code).as_bytes());
    entry.extend_from_slice(code);
    std::io::Write::write_all(&mut tmp, &entry)?;
    tmp.persist(path).map(drop).map_err(|e| e.error)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Entries are run as machine code: a directory another user could write is not used.
    #[test]
    fn a_directory_others_can_write_is_not_used() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let mine = dir.path().join("a/b");
        CompileCache::open(&mine).unwrap();
        let mode = std::fs::metadata(&mine).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700, "{mode:o}");
        for (shared, says) in [
            (0o777, "mode 777"),
            (0o1777, "mode 1777"),
            (0o770, "mode 770"),
        ] {
            std::fs::set_permissions(&mine, std::fs::Permissions::from_mode(shared)).unwrap();
            let refused = CompileCache::open(&mine).unwrap_err();
            assert!(refused.contains(says), "{refused}");
        }
        std::fs::set_permissions(&mine, std::fs::Permissions::from_mode(0o755)).unwrap();
        CompileCache::open(&mine).unwrap();
    }

    /// An entry that another user could have written since the directory was checked is not
    /// run: the component is compiled again and the entry replaced by one of this user's own.
    #[test]
    fn an_entry_others_could_write_is_compiled_again() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let cache = CompileCache::open(dir.path()).unwrap();
        let engine = Engine::new(wasmtime::Config::new().wasm_component_model(true)).unwrap();
        let from_cache = || cache.component(&engine, b"(component)").unwrap().1;
        assert!(!from_cache(), "compiled");
        assert!(from_cache(), "from the cache");
        let entry = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension() == Some("cwasm".as_ref()))
            .unwrap();
        std::fs::set_permissions(&entry, std::fs::Permissions::from_mode(0o666)).unwrap();
        assert!(
            !from_cache(),
            "an entry anyone could write is compiled again"
        );
        let mode = std::fs::metadata(&entry).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
        assert!(from_cache(), "the replacement is used");

        // A FIFO in the entry's place, which a blocking open would wait on forever.
        std::fs::remove_file(&entry).unwrap();
        rustix::fs::mkfifoat(
            rustix::fs::CWD,
            &entry,
            rustix::fs::Mode::from_raw_mode(0o600),
        )
        .unwrap();
        assert!(!from_cache(), "a FIFO is no entry");
        assert!(std::fs::metadata(&entry).unwrap().is_file(), "replaced");
        assert!(from_cache());
    }

    #[test]
    fn only_a_sound_entry_filed_under_its_key_gives_code() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.cwasm");
        let (key, other) = ([7u8; 32], [8u8; 32]);
        store(&path, &key, b"machine code").unwrap();
        let entry = std::fs::read(&path).unwrap();
        assert_eq!(code_of(&entry, &key), Some(&b"machine code"[..]));
        assert_eq!(code_of(&entry, &other), None, "filed under another key");
        let mut flipped = entry.clone();
        *flipped.last_mut().unwrap() ^= 0x10;
        assert_eq!(code_of(&flipped, &key), None, "a flipped bit");
        assert_eq!(code_of(&entry[..entry.len() - 1], &key), None, "truncated");
        assert_eq!(code_of(&entry[..10], &key), None, "no header");
        assert_eq!(code_of(b"", &key), None);
    }

    #[test]
    fn prune_removes_only_entries_unused_for_long() {
        let dir = tempfile::tempdir().unwrap();
        let hex = |c: char| c.to_string().repeat(64);
        let now = SystemTime::now();
        let set_age = |name: &str, age: Duration| {
            let path = dir.path().join(name);
            std::fs::write(&path, b"x").unwrap();
            let file = std::fs::File::options().write(true).open(&path).unwrap();
            file.set_modified(now - age).unwrap();
        };
        let day = Duration::from_secs(24 * 3600);
        set_age(&format!("{}.cwasm", hex('a')), MAX_IDLE + day);
        set_age(&format!("{}.cwasm", hex('b')), MAX_IDLE - day);
        set_age(".tmpAbC123", 2 * day);
        set_age(".tmpNew", Duration::ZERO);
        set_age("notes.txt", MAX_IDLE * 3);
        set_age("short.cwasm", MAX_IDLE * 3);
        prune(dir.path(), now, MAX_TOTAL);
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        let mut want = vec![
            format!("{}.cwasm", hex('b')),
            ".tmpNew".to_string(),
            "notes.txt".to_string(),
            "short.cwasm".to_string(),
        ];
        want.sort();
        assert_eq!(left, want);
    }

    #[test]
    fn prune_removes_the_least_recently_used_entries_past_the_total() {
        let dir = tempfile::tempdir().unwrap();
        let now = SystemTime::now();
        let hour = Duration::from_secs(3600);
        // Entries of 100 bytes, used 1 to 5 hours ago, and a file that is not an entry.
        for (c, hours) in [('a', 3), ('b', 1), ('c', 5), ('d', 2), ('e', 4)] {
            let path = dir
                .path()
                .join(format!("{}.cwasm", c.to_string().repeat(64)));
            std::fs::write(&path, [0u8; 100]).unwrap();
            let file = std::fs::File::options().write(true).open(&path).unwrap();
            file.set_modified(now - hours * hour).unwrap();
        }
        std::fs::write(dir.path().join("notes.txt"), [0u8; 1000]).unwrap();
        let left = || {
            let mut left: Vec<char> = std::fs::read_dir(dir.path())
                .unwrap()
                .map(|e| {
                    e.unwrap()
                        .file_name()
                        .to_string_lossy()
                        .chars()
                        .next()
                        .unwrap()
                })
                .collect();
            left.sort();
            left
        };
        prune(dir.path(), now, 500);
        assert_eq!(left(), ['a', 'b', 'c', 'd', 'e', 'n'], "500 bytes fit");
        prune(dir.path(), now, 250);
        assert_eq!(left(), ['b', 'd', 'n'], "the two used last stay");
        prune(dir.path(), now, 50);
        assert_eq!(left(), ['n'], "none fits: none stays");
    }

    #[test]
    fn a_hit_refreshes_a_stale_use_time_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("e.cwasm");
        std::fs::write(&path, b"x").unwrap();
        let old = SystemTime::now() - 2 * TOUCH_AFTER;
        let file = std::fs::File::options().write(true).open(&path).unwrap();
        file.set_modified(old).unwrap();
        touch(&path);
        let used = std::fs::metadata(&path).unwrap().modified().unwrap();
        assert!(used > old + TOUCH_AFTER, "a stale entry is refreshed");
        let recent = SystemTime::now() - Duration::from_secs(3600);
        file.set_modified(recent).unwrap();
        touch(&path);
        let used = std::fs::metadata(&path).unwrap().modified().unwrap();
        assert_eq!(used, recent, "a recently used entry is left alone");
    }
}
