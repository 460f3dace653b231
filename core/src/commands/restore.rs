//! `bk restore JOB [BACKUP_ID|latest] --identity FILE (--to DIR | --stdout) [--verify]`.

use std::path::Path;
use std::sync::Arc;

use crate::keys;
use crate::repo::Repository;
use crate::restore::{self, RestoreError, RestoreReport, Sink};

pub async fn run(
    repo: &Repository,
    job: &str,
    which: &str,
    identity_files: &[&Path],
    sink: Sink,
) -> Result<RestoreReport, RestoreError> {
    let mut identities = Vec::new();
    for file in identity_files {
        identities.extend(keys::load_identities(file)?);
    }
    repo.read_marker().await?;
    let record = repo.resolve(job, which).await?;
    tracing::info!(job, backup = %record.backup_id, "restoring");
    restore::restore(repo, &record, Arc::new(identities), sink).await
}
