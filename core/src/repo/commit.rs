//! The commit record: a small plaintext JSON object written last. A backup exists
//! only once its commit record exists. It holds the sizes and BLAKE3 hashes of the
//! stored (encrypted) objects, so anyone with read access can check integrity
//! without a key, and nothing secret: no plaintext hash, no file names.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::id::BackupId;
use super::RepoError;

pub const FORMAT: &str = "bk-commit";
pub const VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommitRecord {
    pub format: String,
    pub version: u32,
    pub backup_id: BackupId,
    pub job: String,
    /// `postgres`, `mysql`, `directory` or `command`.
    pub kind: String,
    /// The host the dump was pulled from (`local` for the backup server itself).
    pub host: String,
    pub started: DateTime<Utc>,
    pub finished: DateTime<Utc>,
    /// The backup server that wrote this backup (its hostname).
    pub writer: String,
    /// Bytes the source produced (size of the plaintext dump).
    pub source_size: u64,
    pub payload: StoredObject,
    pub manifest: StoredObject,
    /// The age recipients the payload and manifest were encrypted to (public keys).
    pub recipients: Vec<String>,
}

/// One stored object as it sits in the store: its key, exact size and BLAKE3 hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredObject {
    pub key: String,
    pub size: u64,
    pub blake3: String,
}

/// What `bk list` shows of a commit record (also what the catalog keeps in columns).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Listed {
    pub backup_id: String,
    pub job: String,
    pub kind: String,
    pub host: String,
    pub started: chrono::DateTime<chrono::Utc>,
    pub finished: chrono::DateTime<chrono::Utc>,
    pub source_size: u64,
    pub stored_size: u64,
    pub writer: String,
}

impl From<&CommitRecord> for Listed {
    fn from(r: &CommitRecord) -> Self {
        Listed {
            backup_id: r.backup_id.to_string(),
            job: r.job.clone(),
            kind: r.kind.clone(),
            host: r.host.clone(),
            started: r.started,
            finished: r.finished,
            source_size: r.source_size,
            stored_size: r.payload.size + r.manifest.size,
            writer: r.writer.clone(),
        }
    }
}

impl CommitRecord {
    /// Every object this backup consists of, besides the commit record itself.
    pub fn objects(&self) -> Vec<&StoredObject> {
        vec![&self.payload, &self.manifest]
    }

    pub fn to_json(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec_pretty(self).expect("commit record serializes");
        out.push(b'\n');
        out
    }

    /// Parses and sanity-checks a commit record read from `key`.
    pub fn from_json(key: &str, bytes: &[u8]) -> Result<Self, RepoError> {
        let bad = |reason: String| RepoError::BadObject {
            key: key.to_string(),
            reason,
        };
        let record: CommitRecord =
            serde_json::from_slice(bytes).map_err(|e| bad(format!("not a commit record: {e}")))?;
        if record.format != FORMAT {
            return Err(bad(format!(
                "format is `{}`, expected `{FORMAT}`",
                record.format
            )));
        }
        if record.version != VERSION {
            return Err(bad(format!(
                "commit record version {} is not supported by this bk (it reads version {VERSION})",
                record.version
            )));
        }
        Ok(record)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn sample() -> CommitRecord {
        let id = BackupId::new(Utc::now());
        CommitRecord {
            format: FORMAT.into(),
            version: VERSION,
            backup_id: id,
            job: "media".into(),
            kind: "directory".into(),
            host: "local".into(),
            started: Utc::now(),
            finished: Utc::now(),
            writer: "backup1".into(),
            source_size: 10,
            payload: StoredObject {
                key: "k".into(),
                size: 1,
                blake3: "00".into(),
            },
            manifest: StoredObject {
                key: "m".into(),
                size: 2,
                blake3: "11".into(),
            },
            recipients: vec!["age1xyz".into()],
        }
    }

    #[test]
    fn round_trips() {
        let r = sample();
        assert_eq!(CommitRecord::from_json("k", &r.to_json()).unwrap(), r);
    }

    #[test]
    fn rejects_garbage_and_future_versions() {
        assert!(CommitRecord::from_json("k", b"{").is_err());
        let mut r = sample();
        r.version = 99;
        let err = CommitRecord::from_json("k", &r.to_json())
            .unwrap_err()
            .to_string();
        assert!(err.contains("version 99"), "{err}");
    }
}
