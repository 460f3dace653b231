//! `bk list [JOB]`: committed backups, newest first, read from the repository itself
//! (so it works without the catalog, e.g. after losing the backup server).

use serde::Serialize;

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
    Ok(committed(repo, job)
        .await?
        .iter()
        .map(Listed::from)
        .collect())
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
