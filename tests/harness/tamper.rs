//! Sabotage of stored backups, the way an attacker with the key (or a buggy tool)
//! would do it: objects decrypted and re-encrypted with the stock `age` and `zstd`
//! CLIs, and the commit record updated to match, so that only the *content* is
//! wrong and every size and ciphertext hash still checks out.

use std::fs;
use std::path::{Path, PathBuf};

use crate::{require_tool, sh, Workspace};

/// The plaintext of `object` (age + zstd) in a new file beside it.
pub fn decrypt(ws: &Workspace, object: &Path) -> PathBuf {
    require_tool("age");
    require_tool("zstd");
    let plain = object.with_extension("plain");
    sh(&format!(
        "age -d -i {} {} | zstd -d -q -c > {}",
        ws.identity.display(),
        object.display(),
        plain.display()
    ));
    plain
}

/// Lets `edit` change the plaintext of backup `id`'s `which` object (`payload` or
/// `manifest`), re-encrypts it to the workspace's recipient and fixes the commit
/// record's size and BLAKE3 for it.
pub fn reseal(ws: &Workspace, job: &str, id: &str, which: &str, edit: impl FnOnce(&Path)) {
    let dir = ws.backup_dir(job, id);
    let object = dir.join(format!("{which}.age"));
    let plain = decrypt(ws, &object);
    edit(&plain);
    sh(&format!(
        "zstd -q -c {} | age -r {} > {}",
        plain.display(),
        ws.recipient,
        object.display()
    ));
    fs::remove_file(&plain).expect("remove plaintext");
    let bytes = fs::read(&object).expect("read resealed object");
    let commit_path = dir.join("commit.json");
    let mut commit: serde_json::Value =
        serde_json::from_slice(&fs::read(&commit_path).expect("read commit record"))
            .expect("commit record is JSON");
    commit[which]["size"] = serde_json::json!(bytes.len());
    commit[which]["blake3"] = serde_json::json!(blake3::hash(&bytes).to_hex().to_string());
    fs::write(
        &commit_path,
        serde_json::to_vec_pretty(&commit).expect("json"),
    )
    .expect("write commit record");
}

/// Rewrites the manifest's first line (the header) with `edit`.
pub fn edit_manifest_header(
    ws: &Workspace,
    job: &str,
    id: &str,
    edit: impl FnOnce(&mut serde_json::Value),
) {
    reseal(ws, job, id, "manifest", |plain| {
        let text = fs::read_to_string(plain).expect("manifest text");
        let (first, rest) = text.split_once('\n').unwrap_or((&text, ""));
        let mut header: serde_json::Value = serde_json::from_str(first).expect("header JSON");
        edit(&mut header);
        fs::write(plain, format!("{header}\n{rest}")).expect("write manifest");
    });
}

/// Flips one byte of `file` at `offset` (from the end when negative).
pub fn flip_byte(file: &Path, offset: i64) {
    let mut bytes = fs::read(file).expect("read object");
    let at = if offset < 0 {
        bytes.len() - offset.unsigned_abs() as usize
    } else {
        offset as usize
    };
    bytes[at] ^= 0x5a;
    fs::write(file, bytes).expect("write object");
}

/// Cuts `file` to `len` bytes.
pub fn truncate(file: &Path, len: u64) {
    let f = fs::OpenOptions::new()
        .write(true)
        .open(file)
        .expect("open object");
    f.set_len(len).expect("truncate object");
}

/// Copies a backup's directory aside, so a test can sabotage it and put it back.
pub fn snapshot(dir: &Path) -> tempfile::TempDir {
    let keep = tempfile::tempdir().expect("tempdir");
    sh(&format!(
        "cp -a {}/. {}/",
        dir.display(),
        keep.path().display()
    ));
    keep
}

/// Puts a snapshot back in place of the backup's directory.
pub fn restore_snapshot(snapshot: &tempfile::TempDir, dir: &Path) {
    sh(&format!(
        "rm -rf {d} && mkdir -p {d} && cp -a {}/. {d}/",
        snapshot.path().display(),
        d = dir.display()
    ));
}
