//! Where each object of a repository lives. One place, so that the format document,
//! the writer, the reader and the garbage collector cannot disagree.
//!
//! ```text
//! bk-repository.json                        plaintext marker (format version)
//! backups/<job>/<backup-id>/payload.age     age(zstd(dump))
//! backups/<job>/<backup-id>/manifest.age    age(zstd(JSON lines))
//! backups/<job>/<backup-id>/commit.json     plaintext commit record, written last
//! ```

use object_store::path::Path;

use super::id::BackupId;

pub const MARKER: &str = "bk-repository.json";
pub const BACKUPS: &str = "backups";
pub const PAYLOAD: &str = "payload.age";
pub const MANIFEST: &str = "manifest.age";
pub const COMMIT: &str = "commit.json";

pub fn marker() -> Path {
    Path::from(MARKER)
}

pub fn job_prefix(job: &str) -> Path {
    Path::from_iter([BACKUPS, job])
}

pub fn backup_prefix(job: &str, id: &BackupId) -> Path {
    Path::from_iter([BACKUPS, job, id.as_str()])
}

pub fn payload(job: &str, id: &BackupId) -> Path {
    Path::from_iter([BACKUPS, job, id.as_str(), PAYLOAD])
}

pub fn manifest(job: &str, id: &BackupId) -> Path {
    Path::from_iter([BACKUPS, job, id.as_str(), MANIFEST])
}

pub fn commit(job: &str, id: &BackupId) -> Path {
    Path::from_iter([BACKUPS, job, id.as_str(), COMMIT])
}

/// Splits `backups/<job>/<id>/<name>` into its parts; `None` for anything else.
pub fn parse_backup_object(path: &Path) -> Option<(String, BackupId, String)> {
    let parts: Vec<_> = path.parts().collect();
    match parts.as_slice() {
        [root, job, id, name] if root.as_ref() == BACKUPS => Some((
            job.as_ref().to_string(),
            BackupId::parse(id.as_ref()).ok()?,
            name.as_ref().to_string(),
        )),
        _ => None,
    }
}

/// Job names become path components: keep them boring.
pub fn valid_job_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_paths_parse_back() {
        let id = BackupId::new(chrono::Utc::now());
        let (job, parsed, name) = parse_backup_object(&commit("app-db", &id)).unwrap();
        assert_eq!(
            (job.as_str(), &parsed, name.as_str()),
            ("app-db", &id, COMMIT)
        );
        assert!(parse_backup_object(&marker()).is_none());
    }

    #[test]
    fn job_names() {
        assert!(valid_job_name("app-db.main_1"));
        for bad in ["", ".hidden", "a/b", "..", "with space", &"x".repeat(65)] {
            assert!(!valid_job_name(bad), "{bad}");
        }
    }
}
