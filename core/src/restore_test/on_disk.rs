//! After a directory backup was extracted for real, checks what is *on disk* against
//! the manifest: every entry present with its type, size, mode, mtime (files), link
//! target and content hash, and nothing under the scratch directory that the
//! manifest does not list. (The restore itself already compared the stream with the
//! manifest; this proves the files were written as recorded.)

use std::collections::HashSet;
use std::fs;
use std::io::{self, BufRead};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use crate::pipeline::hash::{copy_large, HashingReader};
use crate::repo::manifest::{Entry, EntryType, ManifestReader};

/// Compares the tree under `root` with the manifest's entries; returns how many
/// entries were checked, or the first difference in words.
pub fn compare<R: BufRead>(root: &Path, manifest: &mut ManifestReader<R>) -> Result<u64, String> {
    let mut listed: HashSet<[u8; 16]> = HashSet::new();
    let mut checked = 0;
    while let Some(entry) = manifest.next_entry().map_err(|e| e.to_string())? {
        let relative = relative(&entry.path_bytes());
        listed.insert(path_key(&relative));
        check_entry(root, &relative, &entry)?;
        checked += 1;
    }
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = fs::read_dir(&dir).map_err(|e| format!("listing {}: {e}", dir.display()))?;
        for item in entries {
            let item = item.map_err(|e| format!("listing {}: {e}", dir.display()))?;
            let path = item.path();
            let rel = path.strip_prefix(root).unwrap_or(&path).to_path_buf();
            if !listed.contains(&path_key(&rel)) {
                return Err(format!(
                    "`{}` is in the restored directory but not in the manifest",
                    rel.display()
                ));
            }
            if item.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                stack.push(path);
            }
        }
    }
    Ok(checked)
}

/// The archive path as a relative path of normal components (`./a/b/` → `a/b`).
fn relative(raw: &[u8]) -> PathBuf {
    Path::new(std::ffi::OsStr::from_bytes(raw))
        .components()
        .filter_map(|c| match c {
            Component::Normal(part) => Some(part),
            _ => None,
        })
        .collect()
}

fn path_key(rel: &Path) -> [u8; 16] {
    let hash = blake3::hash(rel.as_os_str().as_bytes());
    let mut key = [0u8; 16];
    key.copy_from_slice(&hash.as_bytes()[..16]);
    key
}

fn check_entry(root: &Path, rel: &Path, entry: &Entry) -> Result<(), String> {
    let path = root.join(rel);
    let shown = &entry.path;
    let meta = fs::symlink_metadata(&path)
        .map_err(|e| format!("`{shown}` is in the manifest but not restored: {e}"))?;
    let kind = meta.file_type();
    let expected_mode = entry.mode & 0o777;
    let mode_ok = |meta: &fs::Metadata| meta.permissions().mode() & 0o777 == expected_mode;
    match entry.kind {
        EntryType::Dir => {
            if !kind.is_dir() {
                return Err(format!("`{shown}` should be a directory"));
            }
            if !mode_ok(&meta) {
                return Err(mode_error(shown, expected_mode, &meta));
            }
        }
        EntryType::File => {
            if !kind.is_file() {
                return Err(format!("`{shown}` should be a regular file"));
            }
            if meta.len() != entry.size {
                return Err(format!(
                    "`{shown}` is {} bytes on disk, the manifest says {}",
                    meta.len(),
                    entry.size
                ));
            }
            if !mode_ok(&meta) {
                return Err(mode_error(shown, expected_mode, &meta));
            }
            if meta.mtime() as u64 != entry.mtime {
                return Err(format!(
                    "`{shown}` has mtime {} on disk, the manifest says {}",
                    meta.mtime(),
                    entry.mtime
                ));
            }
            let found = hash_file(&path).map_err(|e| format!("reading `{shown}`: {e}"))?;
            if entry.blake3.as_deref() != Some(found.as_str()) {
                return Err(format!(
                    "`{shown}`: the restored content's hash differs from the manifest"
                ));
            }
        }
        EntryType::Symlink => {
            if !kind.is_symlink() {
                return Err(format!("`{shown}` should be a symlink"));
            }
            let target = fs::read_link(&path).map_err(|e| format!("`{shown}`: {e}"))?;
            if entry.link.as_deref().map(Path::new) != Some(target.as_path()) {
                return Err(format!(
                    "`{shown}` points to {}, the manifest says {:?}",
                    target.display(),
                    entry.link
                ));
            }
        }
        EntryType::Hardlink => {
            let target = entry
                .link
                .as_deref()
                .ok_or_else(|| format!("`{shown}`: a hard link without a target"))?;
            let original = fs::symlink_metadata(root.join(relative(target.as_bytes())))
                .map_err(|e| format!("`{shown}`: its link target `{target}`: {e}"))?;
            if !kind.is_file() || (meta.dev(), meta.ino()) != (original.dev(), original.ino()) {
                return Err(format!("`{shown}` should be a hard link to `{target}`"));
            }
        }
        other => {
            return Err(format!(
                "`{shown}` is a {other:?}, which restores do not create"
            ))
        }
    }
    Ok(())
}

fn mode_error(shown: &str, expected: u32, meta: &fs::Metadata) -> String {
    format!(
        "`{shown}` has mode {:o} on disk, the manifest says {expected:o}",
        meta.permissions().mode() & 0o777
    )
}

fn hash_file(path: &Path) -> io::Result<String> {
    let mut reader = HashingReader::new(fs::File::open(path)?);
    copy_large(&mut reader, &mut io::sink())?;
    Ok(reader.into_parts().1.blake3)
}
