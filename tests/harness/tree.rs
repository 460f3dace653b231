//! Test directory trees: building awkward ones and comparing two trees exactly.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

/// Builds the awkward-content tree the foundation issue names: nested and empty
/// folders, empty files, names with spaces and non-ASCII, symlinks, executable bits,
/// and (if `big` > 0) one file of `big` bytes.
pub fn awkward(root: &Path, big: u64) {
    fs::create_dir_all(root.join("a/b/c/d")).unwrap();
    fs::create_dir_all(root.join("empty dir")).unwrap();
    fs::create_dir_all(root.join("ünïcødé/日本語")).unwrap();
    fs::write(root.join("a/b/c/d/deep.txt"), "deep\n").unwrap();
    fs::write(root.join("empty file"), "").unwrap();
    fs::write(root.join("name with spaces.txt"), "spaces\n").unwrap();
    fs::write(
        root.join("ünïcødé/日本語/ファイル.json"),
        "{\"k\": \"värde\"}\n",
    )
    .unwrap();
    fs::write(root.join("run.sh"), "#!/bin/sh\necho hi\n").unwrap();
    fs::set_permissions(root.join("run.sh"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(root.join("private.key"), "secret-ish\n").unwrap();
    fs::set_permissions(root.join("private.key"), fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::symlink("a/b/c/d/deep.txt", root.join("link to deep")).unwrap();
    std::os::unix::fs::symlink("/nonexistent/target", root.join("dangling")).unwrap();
    let long = "x".repeat(120);
    fs::create_dir_all(root.join(&long)).unwrap();
    fs::write(root.join(&long).join(format!("{long}.txt")), "long names\n").unwrap();
    if big > 0 {
        let mut f = fs::File::create(root.join("big.bin")).unwrap();
        let mut state: u64 = 0x9e3779b97f4a7c15;
        let mut buf = vec![0u8; 1 << 20];
        let mut left = big;
        while left > 0 {
            for chunk in buf.chunks_mut(8) {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                chunk.copy_from_slice(&state.to_le_bytes()[..chunk.len()]);
            }
            let n = left.min(buf.len() as u64) as usize;
            f.write_all(&buf[..n]).unwrap();
            left -= n as u64;
        }
    }
}

/// Everything that must survive a round trip: type, mode, size, content hash or link target, mtime.
pub fn snapshot(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
    for entry in fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let path = entry.path();
        let rel = path
            .strip_prefix(root)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let meta = fs::symlink_metadata(&path).unwrap();
        let mode = meta.mode() & 0o7777;
        let desc = if meta.file_type().is_symlink() {
            format!("symlink -> {}", fs::read_link(&path).unwrap().display())
        } else if meta.is_dir() {
            walk(root, &path, out);
            format!("dir {mode:o} mtime {}", meta.mtime())
        } else {
            let hash = blake3_file(&path);
            format!("file {mode:o} {} {hash} mtime {}", meta.len(), meta.mtime())
        };
        out.insert(rel, desc);
    }
}

fn blake3_file(path: &Path) -> String {
    let mut hasher = blake3::Hasher::new();
    hasher.update_reader(fs::File::open(path).unwrap()).unwrap();
    hasher.finalize().to_hex().to_string()
}
