//! `bk list [JOB]`: committed backups, newest first, read from the repository itself
//! (so it works without the catalog, e.g. after losing the backup server); the
//! catalog, when present, only saves reading commit records it already holds.

use std::collections::HashMap;

use serde::Serialize;

use crate::catalog::Catalog;

use crate::repo::commit::CommitRecord;
use crate::repo::{RepoError, Repository};

#[derive(Debug, Clone, Serialize)]
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

pub async fn list(repo: &Repository, job: Option<&str>) -> Result<Vec<Listed>, RepoError> {
    list_cached(repo, job, None).await
}

/// `list`, with the catalog (when there is one) as a cache of commit records: the
/// repository's listing still decides what exists; only records the catalog lacks
/// are read from storage, and are then added to it. With 100,000 backups in a local
/// repository that halves the time (bench/scale.sh: ~10 s without the catalog, ~5.7 s
/// with it); what remains is listing the store's 300,000 objects.
pub async fn list_cached(
    repo: &Repository,
    job: Option<&str>,
    catalog: Option<&Catalog>,
) -> Result<Vec<Listed>, RepoError> {
    match repo.read_marker().await {
        Ok(_) => {}
        Err(RepoError::NotARepository { .. }) => return Ok(Vec::new()),
        Err(e) => return Err(e),
    }
    let known: HashMap<String, CommitRecord> = catalog
        .and_then(|c| c.backups(job).ok())
        .unwrap_or_default()
        .into_iter()
        .map(|r| (r.backup_id.to_string(), r))
        .collect();
    let (records, read) = repo.list_commits_cached(job, known).await?;
    if let Some(c) = catalog.filter(|_| !read.is_empty()) {
        if let Err(e) = c.remember_backups(&read) {
            tracing::warn!(error = %e, "caching commit records in the catalog failed");
        }
    }
    Ok(records.iter().map(Listed::from).collect())
}

/// The commit records of a repository, newest first; none for a repository not yet created.
pub async fn committed(
    repo: &Repository,
    job: Option<&str>,
) -> Result<Vec<CommitRecord>, RepoError> {
    match repo.read_marker().await {
        Ok(_) => repo.list_commits(job).await,
        Err(RepoError::NotARepository { .. }) => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}
