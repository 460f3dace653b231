//! `bk verify [JOB]`: a key-less integrity scrub. Re-reads every stored object of the
//! selected backups and checks its size and BLAKE3 against the commit record. Needs
//! read access to the store and nothing else: no identity, no catalog.

use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::ObjectStoreExt;
use serde::Serialize;

use crate::repo::commit::{CommitRecord, StoredObject};
use crate::repo::{RepoError, Repository};

#[derive(Debug, Clone, Serialize)]
pub struct Damage {
    pub key: String,
    pub problem: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Verified {
    pub backup_id: String,
    pub job: String,
    pub ok: bool,
    pub bytes_read: u64,
    pub damage: Vec<Damage>,
}

pub async fn verify(repo: &Repository, job: Option<&str>) -> Result<Vec<Verified>, RepoError> {
    let records = crate::commands::list::committed(repo, job).await?;
    if let Some(p) = crate::progress::installed() {
        p.add_total(
            records
                .iter()
                .flat_map(|r| r.objects())
                .map(|o| o.size)
                .sum(),
        );
    }
    futures::stream::iter(records)
        .map(|record| async move { verify_backup(repo, &record).await })
        .buffered(2)
        .try_collect()
        .await
}

async fn verify_backup(repo: &Repository, record: &CommitRecord) -> Result<Verified, RepoError> {
    let mut damage = Vec::new();
    let mut bytes_read = 0;
    for object in record.objects() {
        match check_object(repo, object).await? {
            (read, None) => bytes_read += read,
            (read, Some(problem)) => {
                bytes_read += read;
                damage.push(Damage {
                    key: object.key.clone(),
                    problem,
                });
            }
        }
    }
    Ok(Verified {
        backup_id: record.backup_id.to_string(),
        job: record.job.clone(),
        ok: damage.is_empty(),
        bytes_read,
        damage,
    })
}

/// Reads one object whole; returns the bytes read and the problem found, if any.
/// Storage errors other than "missing" are errors of the scrub, not damage.
async fn check_object(
    repo: &Repository,
    object: &StoredObject,
) -> Result<(u64, Option<String>), RepoError> {
    let path = Path::from(object.key.as_str());
    let store_err = |source| RepoError::Store {
        key: object.key.clone(),
        source,
    };
    let result = match repo.store().get(&path).await {
        Ok(r) => r,
        Err(object_store::Error::NotFound { .. }) => {
            return Ok((0, Some("the object is missing".into())))
        }
        Err(source) => return Err(store_err(source)),
    };
    let mut stream = result.into_stream();
    let mut hasher = blake3::Hasher::new();
    let mut size = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(store_err)?;
        size += chunk.len() as u64;
        hasher.update(&chunk);
        if let Some(p) = crate::progress::installed() {
            p.advance(chunk.len() as u64);
        }
    }
    let hash = hasher.finalize().to_hex().to_string();
    let problem = if size != object.size {
        Some(format!(
            "it is {size} bytes, the commit record says {}",
            object.size
        ))
    } else if hash != object.blake3 {
        Some(format!(
            "its BLAKE3 is {hash}, the commit record says {}",
            object.blake3
        ))
    } else {
        None
    };
    Ok((size, problem))
}
