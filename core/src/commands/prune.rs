//! `bk prune [JOB] [--dry-run]`: applies a job's retention (see `crate::retention`)
//! to its committed backups as the repository lists them — the repository, not the
//! catalog, is the truth — and removes the ones no rule keeps.
//!
//! Removal order per backup, and why: the commit record goes FIRST, so from that
//! moment the backup no longer exists for `bk list` or a restore; then the manifest
//! and payload; then the catalog row. A crash in between leaves only uncommitted
//! objects, which `bk gc` removes. Never removes the newest committed backup.

use std::str::FromStr;

use object_store::ObjectStoreExt;
use serde::Serialize;

use crate::catalog::{Catalog, CatalogError};
use crate::config::Config;
use crate::repo::{layout, RepoError, Repository};
use crate::retention::{self, Candidate, Decision};

#[derive(Debug, thiserror::Error)]
pub enum PruneError {
    #[error("job `{0}` is not in the configuration")]
    UnknownJob(String),
    #[error("job `{0}` has no `retention`: nothing would be removed (add e.g. retention = {{ keep_daily = 7 }})")]
    NoRetention(String),
    #[error("job `{job}`: {source}")]
    Repo { job: String, source: RepoError },
    #[error("job `{job}`: removing `{key}` failed: {source}")]
    Delete {
        job: String,
        key: String,
        source: object_store::Error,
    },
    #[error("job `{job}`: {source}")]
    Catalog {
        job: String,
        source: Box<CatalogError>,
    },
}

/// What pruning one job decided and did.
#[derive(Debug, Clone, Serialize)]
pub struct PruneReport {
    pub job: String,
    pub dry_run: bool,
    /// Every committed backup, newest first, with why it stays (or that it goes).
    pub decisions: Vec<Decision>,
    /// Backups actually removed (empty on a dry run).
    pub removed: Vec<String>,
}

/// Prunes one job. `protected` backups are kept whatever the rules say (the
/// caller passes e.g. the newest backup that passed a restore test).
pub async fn prune(
    config: &Config,
    repo: &Repository,
    catalog: Option<&Catalog>,
    job_name: &str,
    dry_run: bool,
    protected: &[String],
) -> Result<PruneReport, PruneError> {
    let job = config
        .job(job_name)
        .ok_or_else(|| PruneError::UnknownJob(job_name.to_string()))?;
    let policy = job
        .retention
        .as_ref()
        .ok_or_else(|| PruneError::NoRetention(job_name.to_string()))?;
    // Validation guarantees the time zone parses; UTC is only a fallback for callers
    // that built a Config by hand.
    let tz = chrono_tz::Tz::from_str(&job.timezone).unwrap_or(chrono_tz::UTC);
    let repo_err = |source| PruneError::Repo {
        job: job_name.to_string(),
        source,
    };
    let records = repo.list_commits(Some(job_name)).await.map_err(repo_err)?;
    let candidates: Vec<Candidate> = records
        .iter()
        .map(|r| Candidate {
            id: r.backup_id.to_string(),
            time: r.started,
        })
        .collect();
    // The newest backup that passed a restore test is proof that restores work: keep it.
    let mut protected = protected.to_vec();
    if let Some(c) = catalog {
        match c.last_passed_backup(job_name) {
            Ok(Some(id)) => protected.push(id),
            Ok(None) => {}
            Err(source) => {
                return Err(PruneError::Catalog {
                    job: job_name.to_string(),
                    source: Box::new(source),
                })
            }
        }
    }
    let decisions = retention::apply(&candidates, policy, tz, &protected);
    let mut removed = Vec::new();
    if !dry_run {
        for decision in decisions.iter().filter(|d| !d.keep) {
            let Some(record) = records.iter().find(|r| r.backup_id.as_str() == decision.id) else {
                continue;
            };
            forget(repo, catalog, job_name, record).await?;
            tracing::info!(job = job_name, backup = %record.backup_id, "backup removed by retention");
            removed.push(decision.id.clone());
        }
    }
    Ok(PruneReport {
        job: job_name.to_string(),
        dry_run,
        decisions,
        removed,
    })
}

/// Removes one committed backup: commit record first, then its objects, then its row.
async fn forget(
    repo: &Repository,
    catalog: Option<&Catalog>,
    job: &str,
    record: &crate::repo::commit::CommitRecord,
) -> Result<(), PruneError> {
    let id = &record.backup_id;
    for key in [
        layout::commit(job, id),
        layout::manifest(job, id),
        layout::payload(job, id),
    ] {
        match repo.store().delete(&key).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(source) => {
                return Err(PruneError::Delete {
                    job: job.to_string(),
                    key: key.to_string(),
                    source,
                })
            }
        }
    }
    if let Some(c) = catalog {
        c.forget_backup(id.as_str())
            .map_err(|source| PruneError::Catalog {
                job: job.to_string(),
                source: Box::new(source),
            })?;
    }
    Ok(())
}
