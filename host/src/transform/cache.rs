//! The compiled-component cache: each component's machine code on disk, so that a second run
//! starts in milliseconds instead of compiling again.
//!
//! An entry is named by its key, a BLAKE3 hash of the component's bytes and of the engine's
//! compatibility hash (wasmtime's version and every setting that changes the code), and holds
//! that key, a BLAKE3 hash of the code, and the code. Loading machine code runs it, so an entry is
//! used only when both hashes check out: a damaged entry (a bad disk, a half-written copy) or one
//! filed under another component's name is compiled again and replaced, never executed. (This
//! guards against accidents, not against someone who can write the directory: they could write a
//! sound entry, as they could replace the `.wasm`.) Every cache failure costs only time: the
//! component is compiled as if there were no cache. Entries are never removed: one per component
//! and wasmtime version, a few MB each.

use std::hash::Hasher;
use std::path::{Path, PathBuf};

use wasmtime::Engine;
use wasmtime::component::Component;

/// The first bytes of every entry.
const MAGIC: &[u8; 8] = b"SLUICECW";

/// An entry's header: the magic, its key and the hash of its code.
const HEADER: usize = MAGIC.len() + 32 + 32;

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
    /// Uses `dir`, creating it if needed; why not, when it cannot be created.
    pub fn open(dir: &Path) -> Result<CompileCache, String> {
        let dir = std::path::absolute(dir).map_err(|e| e.to_string())?;
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        Ok(CompileCache { dir })
    }

    /// The component `bytes` compiled for `engine`: a sound cache entry's code, else compiled now
    /// (and stored, when the directory takes it).
    // The one `unsafe` in sluice: loading machine code is what a compile cache is for.
    #[allow(unsafe_code)]
    pub fn component(&self, engine: &Engine, bytes: &[u8]) -> wasmtime::Result<Component> {
        let mut hasher = Blake3Hasher(blake3::Hasher::new());
        std::hash::Hash::hash(&engine.precompile_compatibility_hash(), &mut hasher);
        hasher.0.update(bytes);
        let key = hasher.0.finalize();
        let path = self.dir.join(format!("{}.cwasm", key.to_hex()));
        match std::fs::read(&path) {
            Ok(entry) => match code_of(&entry, key.as_bytes()) {
                // SAFETY: `deserialize` runs the code it is given, so it must be what
                // `Component::serialize` wrote for this engine. `code_of` checked that the entry
                // was filed by `store` under this component's and this engine's key and that
                // the code is, byte for byte, what was stored.
                Some(code) => match unsafe { Component::deserialize(engine, code) } {
                    Ok(component) => return Ok(component),
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
        Ok(component)
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
}
