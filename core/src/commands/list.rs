//! `bk list [JOB]`: committed backups, newest first, read from the repository itself
//! (so it works without the catalog, e.g. after losing the backup server); the
//! catalog, when present, only saves reading commit records it already holds.

use std::collections::HashMap;

use crate::catalog::Catalog;

use crate::repo::commit::CommitRecord;
pub use crate::repo::commit::Listed;
use crate::repo::id::BackupId;
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
            return Vec::new();
        };
        let job = job.map(str::to_string);
        tokio::task::spawn_blocking(move || c.listed(job.as_deref()).unwrap_or_default())
            .await
            .unwrap_or_default()
    };
    let (keys, cached) = tokio::join!(repo.committed_keys(job), cached);
    let keys = keys?;
    // What the store holds, by backup ID (foldhash: about half of SipHash's time on
    // 100,000 IDs, which nobody can choose to collide). The catalog's rows come newest
    // first and keep that order; those the store does not hold (pruned elsewhere) are
    // left out.
    let mut in_store: HashMap<&str, &str, foldhash::fast::RandomState> = keys
        .iter()
        .map(|(job, id)| (id.as_str(), job.as_str()))
        .collect();
    let mut listed = cached;
    listed.retain(|l| match in_store.remove_entry(l.backup_id.as_str()) {
        Some((_, job)) if job == l.job => true,
        // The same ID under another job: that one is read from the store below.
        Some((id, job)) => {
            in_store.insert(id, job);
            false
        }
        None => false,
    });
    // What the catalog lacks is read from the store and merged in (a stable sort of a
    // sorted run and a short tail costs about one pass).
    let missing: Vec<(String, BackupId)> = if in_store.is_empty() {
        Vec::new()
    } else {
        keys.iter()
            .filter(|(_, id)| in_store.contains_key(id.as_str()))
            .cloned()
            .collect()
    };
    let read: Vec<CommitRecord> = repo.read_commits(missing).await?;
    if !read.is_empty() {
        listed.extend(read.iter().map(Listed::from));
        listed.sort_by(|a, b| b.backup_id.cmp(&a.backup_id));
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::commit::tests::sample;
    use crate::repo::tests::local_repository;

    fn ids(listed: &[Listed]) -> Vec<&str> {
        listed.iter().map(|l| l.backup_id.as_str()).collect()
    }

    /// A catalog that lacks backups, holds a pruned one, and files one under the wrong
    /// job changes nothing in what `bk list` shows: the store decides, newest first.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_stale_catalog_neither_hides_nor_invents_backups() {
        let dir = tempfile::tempdir().unwrap();
        let repo = local_repository(&dir.path().join("repo"));
        repo.init().await.unwrap();
        let t0 = chrono::Utc::now();
        let record = |i: i64, job: &str| {
            let mut r = sample();
            r.job = job.into();
            r.backup_id = BackupId::new(t0 + chrono::Duration::seconds(i));
            r
        };
        let stored: Vec<CommitRecord> = (0..6)
            .map(|i| record(i, if i % 2 == 0 { "a" } else { "b" }))
            .collect();
        for r in &stored {
            repo.put_commit(r).await.unwrap();
        }
        let catalog = Catalog::open(&dir.path().join("catalog.db")).unwrap();
        let pruned = record(10, "a");
        let mut misfiled = stored[2].clone();
        misfiled.job = "b".into();
        catalog
            .remember_backups(&[
                stored[0].clone(),
                stored[1].clone(),
                misfiled,
                stored[5].clone(),
                pruned.clone(),
            ])
            .unwrap();

        let truth = list(&repo, None).await.unwrap();
        let newest_first: Vec<String> = stored
            .iter()
            .rev()
            .map(|r| r.backup_id.to_string())
            .collect();
        assert_eq!(ids(&truth), newest_first);
        assert_eq!(
            list_cached(&repo, None, Some(&catalog)).await.unwrap(),
            truth
        );
        for job in ["a", "b"] {
            assert_eq!(
                list_cached(&repo, Some(job), Some(&catalog)).await.unwrap(),
                list(&repo, Some(job)).await.unwrap(),
                "job {job}"
            );
        }
        // What was read from the store is cached now (the pruned row stays until
        // `bk catalog rebuild`); the catalog lists newest first as well.
        let cached = catalog.listed(None).unwrap();
        let mut expected = vec![pruned.backup_id.to_string()];
        expected.extend(newest_first);
        assert_eq!(ids(&cached), expected);
        let refiled = cached.iter().find(|l| l.backup_id == expected[4]).unwrap();
        assert_eq!(refiled.job, "a");
        assert_eq!(
            list_cached(&repo, None, Some(&catalog)).await.unwrap(),
            truth
        );
    }
}
