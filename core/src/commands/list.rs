//! `bk list [JOB]`: committed backups, newest first, read from the repository itself
//! (so it works without the catalog, e.g. after losing the backup server); the
//! catalog, when present, only saves reading commit records it already holds.

use std::collections::HashMap;

use crate::catalog::Catalog;

use crate::repo::commit::CommitRecord;
pub use crate::repo::commit::Listed;
use crate::repo::{RepoError, Repository};

pub async fn list(repo: &Repository, job: Option<&str>) -> Result<Vec<Listed>, RepoError> {
    list_cached(repo, job, None).await
}

/// `list`, with the catalog (when there is one) as a cache of what commit records
/// say: the repository's listing of commit records still decides what exists, so a
/// stale catalog never shows a removed backup (nor one whose commit record is gone)
/// and never hides a new one. Only records the catalog lacks are read from storage,
/// and are then added to it. The catalog is read on a thread of its own while the
/// store is listed (bench/scale.sh: 100,000 backups).
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
    let cached = async {
        let Some(c) = catalog.cloned() else {
            return HashMap::new();
        };
        let job = job.map(str::to_string);
        tokio::task::spawn_blocking(move || {
            c.listed(job.as_deref())
                .unwrap_or_default()
                .into_iter()
                .map(|l| (l.backup_id.clone(), l))
                .collect::<HashMap<String, Listed>>()
        })
        .await
        .unwrap_or_default()
    };
    let (keys, mut known) = tokio::join!(repo.committed_keys(job), cached);
    let mut listed = Vec::with_capacity(known.len());
    let mut missing = Vec::new();
    for (job, id) in keys? {
        match known.remove(id.as_str()).filter(|l| l.job == job) {
            Some(l) => listed.push(l),
            None => missing.push((job, id)),
        }
    }
    let read: Vec<CommitRecord> = repo.read_commits(missing).await?;
    listed.extend(read.iter().map(Listed::from));
    listed.sort_unstable_by(|a, b| b.backup_id.cmp(&a.backup_id));
    if let Some(c) = catalog.filter(|_| !read.is_empty()) {
        if let Err(e) = c.remember_backups(&read) {
            tracing::warn!(error = %e, "caching commit records in the catalog failed");
        }
    }
    Ok(listed)
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
