//! `bk gc`: removes what failed or crashed backups left behind — objects under a
//! backup prefix that has no commit record, staging files of interrupted local
//! uploads, unfinished multipart uploads on S3, and probe keys — but only once they
//! are older than the grace period, so an upload still running on another server is
//! never destroyed. Never touches a backup whose commit record exists.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStoreExt};
use serde::Serialize;

use crate::repo::uploads::OpenUpload;
use crate::repo::{layout, RepoError, Repository};

#[derive(Debug, Clone, Default, Serialize)]
pub struct GcReport {
    /// Keys removed (or that would be, with --dry-run).
    pub removed: Vec<String>,
    pub bytes: u64,
    /// Uncommitted objects (and unfinished uploads) left alone because they are
    /// younger than the grace period.
    pub kept_recent: Vec<String>,
    /// Unfinished S3 multipart uploads aborted (or that would be, with --dry-run).
    pub aborted_uploads: Vec<OpenUpload>,
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
    abort_unfinished_uploads(repo, cutoff, dry_run, &mut report).await?;
    Ok(report)
}

/// A run aborts its multipart upload when it fails, but not when the store is what
/// failed (and an upload whose creation timed out may exist without bk knowing its
/// ID): on S3 such uploads keep their parts until aborted. Only under `backups/`, and
/// only once older than the grace period, like every other leftover.
async fn abort_unfinished_uploads(
    repo: &Repository,
    cutoff: DateTime<Utc>,
    dry_run: bool,
    report: &mut GcReport,
) -> Result<(), RepoError> {
    let Some(uploads) = repo.open_uploads() else {
        return Ok(());
    };
    let under = format!("{}/", layout::BACKUPS);
    let open = match uploads.list(&under).await {
        Ok(open) => open,
        // Credentials made before bk gc aborted uploads may lack the permission; the
        // rest of gc is still worth doing, and the lifecycle rule still cleans up.
        Err(e @ object_store::Error::PermissionDenied { .. }) => {
            tracing::warn!(error = %e, "cannot list unfinished multipart uploads: grant s3:ListBucketMultipartUploads and s3:AbortMultipartUpload to gc's credentials, or rely on the lifecycle rule (docs/storage.md)");
            return Ok(());
        }
        Err(source) => {
            return Err(RepoError::Store {
                key: format!("{under} (listing unfinished multipart uploads)"),
                source,
            })
        }
    };
    for upload in open {
        if upload.initiated >= cutoff {
            report
                .kept_recent
                .push(format!("{} (unfinished upload)", upload.key));
            continue;
        }
        if !dry_run {
            match uploads.abort(&upload).await {
                // Finished or aborted in the meantime (by its own run, or another gc).
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(source) => {
                    return Err(RepoError::Store {
                        key: format!("{} (aborting upload {})", upload.key, upload.upload_id),
                        source,
                    })
                }
            }
        }
        report.aborted_uploads.push(upload);
    }
    Ok(())
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
