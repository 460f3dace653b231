//! `bk catalog rebuild`: the catalog's backup cache, rebuilt from the repository alone.
//! Run history cannot be rebuilt (it was never in the repository) and is kept.

use crate::catalog::{Catalog, CatalogError};
use crate::repo::{RepoError, Repository};

#[derive(Debug, thiserror::Error)]
pub enum RebuildError {
    #[error(transparent)]
    Repo(#[from] RepoError),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
}

/// Replaces the cached backups with the repository's committed ones; returns how many.
pub async fn rebuild(repo: &Repository, catalog: &Catalog) -> Result<usize, RebuildError> {
    let records = crate::commands::list::committed(repo, None).await?;
    catalog.replace_backups(&records)?;
    Ok(records.len())
}
