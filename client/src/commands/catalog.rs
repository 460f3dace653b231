//! `bk catalog rebuild`

use bk_core::catalog::Catalog;
use bk_core::commands::catalog;
use bk_core::config::Config;

use crate::output::say;
use crate::Failure;

pub async fn rebuild(config: &Config) -> Result<(), Failure> {
    let repo = super::open_repo(config)?;
    let cat = Catalog::open(&config.catalog_path())?;
    let n = catalog::rebuild(&repo, &cat).await?;
    say!(
        "catalog {} rebuilt from {}: {n} committed backup(s)",
        cat.path().display(),
        repo.url()
    )?;
    Ok(())
}
