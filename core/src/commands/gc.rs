//! `bk gc`: removes what failed or crashed backups left behind — objects under a
//! backup prefix that has no commit record, staging files of interrupted local
//! uploads, and probe keys — but only once they are older than the grace period, so
//! an upload still running on another server is never destroyed. Never touches a
//! backup whose commit record exists.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStoreExt};
use serde::Serialize;

use crate::repo::{layout, RepoError, Repository};

#[derive(Debug, Clone, Default, Serialize)]
pub struct GcReport {
    /// Keys removed (or that would be, with --dry-run).
    pub removed: Vec<String>,
    pub bytes: u64,
    /// Uncommitted objects left alone because they are younger than the grace period.
    pub kept_recent: Vec<String>,
}

pub async fn gc(
    repo: &Repository,
    grace: Duration,
    now: DateTime<Utc>,
    dry_run: bool,
) -> Result<GcReport, RepoError> {
    let cutoff = now - chrono::Duration::from_std(grace).unwrap_or(chrono::Duration::MAX);
    let mut report = GcReport::default();
    let mut groups: BTreeMap<(String, String), Vec<ObjectMeta>> = BTreeMap::new();
    let listing = list_all(repo, layout::BACKUPS).await?;
    for meta in listing {
        let parts: Vec<String> = meta
            .location
            .parts()
            .map(|p| p.as_ref().to_string())
            .collect();
        if parts.len() >= 3 {
            groups
                .entry((parts[1].clone(), parts[2].clone()))
                .or_default()
                .push(meta);
        }
    }
    let mut doomed = Vec::new();
    for ((_job, _id), objects) in groups {
        if objects
            .iter()
            .any(|m| m.location.filename() == Some(layout::COMMIT))
        {
            continue;
        }
        let newest = objects.iter().map(|m| m.last_modified).max().unwrap_or(now);
        if newest < cutoff {
            doomed.extend(objects);
        } else {
            report
                .kept_recent
                .extend(objects.iter().map(|m| m.location.to_string()));
        }
    }
    let probe_listing = list_all(repo, "bk-probe").await?;
    doomed.extend(
        probe_listing
            .into_iter()
            .filter(|m| m.last_modified < cutoff),
    );
    for meta in doomed {
        if !dry_run {
            repo.store()
                .delete(&meta.location)
                .await
                .map_err(|source| RepoError::Store {
                    key: meta.location.to_string(),
                    source,
                })?;
        }
        report.bytes += meta.size;
        report.removed.push(meta.location.to_string());
    }
    if let Some(root) = repo.local_root() {
        sweep_staging_files(&root, cutoff.into(), dry_run, &mut report);
    }
    Ok(report)
}

/// Every object under `prefix`.
async fn list_all(repo: &Repository, prefix: &str) -> Result<Vec<ObjectMeta>, RepoError> {
    let prefix = Path::from(prefix);
    repo.store()
        .list(Some(&prefix))
        .try_collect()
        .await
        .map_err(|source| RepoError::Store {
            key: prefix.to_string(),
            source,
        })
}

/// object_store's local backend uploads into `name#N` staging files and hides them
/// from listings; a crash leaves them behind. They are found by walking the directory.
fn sweep_staging_files(
    root: &std::path::Path,
    cutoff: SystemTime,
    dry_run: bool,
    report: &mut GcReport,
) {
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                stack.push(path);
                continue;
            }
            let name = entry.file_name().to_string_lossy().into_owned();
            let staging = name
                .rsplit_once('#')
                .is_some_and(|(_, n)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
            if !staging {
                continue;
            }
            if meta.modified().map(|t| t < cutoff).unwrap_or(false) {
                if !dry_run && std::fs::remove_file(&path).is_err() {
                    continue;
                }
                report.bytes += meta.len();
                report.removed.push(path.display().to_string());
            } else {
                report.kept_recent.push(path.display().to_string());
            }
        }
    }
}
