//! Stored objects as blocking readers for the restore thread. A local repository's
//! files are read directly (object_store's own stream reads 8 KiB at a time); other
//! backends stream through the async runtime.

use std::io::Read;

use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{GetResultPayload, ObjectStoreExt};
use tokio_util::io::{StreamReader, SyncIoBridge};

use super::RestoreError;
use crate::repo::{RepoError, Repository};

/// Opens `key` for reading; checks its size against `expected` first, so a truncated
/// or replaced object is named before any byte is decrypted.
pub async fn open(
    repo: &Repository,
    key: &str,
    expected: u64,
) -> Result<Box<dyn Read + Send>, RestoreError> {
    let path = Path::from(key);
    let result = repo
        .store()
        .get(&path)
        .await
        .map_err(|source| match source {
            object_store::Error::NotFound { .. } => RestoreError::Damaged {
                key: key.to_string(),
                reason: "the object is missing from the repository".into(),
            },
            source => RestoreError::Repo(RepoError::Store {
                key: key.to_string(),
                source,
            }),
        })?;
    if result.meta.size != expected {
        return Err(RestoreError::Damaged {
            key: key.to_string(),
            reason: format!(
                "it is {} bytes but its commit record says {expected} (truncated or replaced)",
                result.meta.size
            ),
        });
    }
    Ok(match result.payload {
        GetResultPayload::File(file, _) => crate::progress::counted(file, expected),
        GetResultPayload::Stream(stream) => {
            let reader = StreamReader::new(stream.map_err(std::io::Error::other));
            crate::progress::counted(SyncIoBridge::new(reader), expected)
        }
    })
}
