//! `bk list [JOB] [--json]`

use std::io::Write;

use bk_core::commands::list;
use bk_core::config::Config;

use crate::output;
use crate::output::say;
use crate::Failure;

pub async fn run(config: &Config, job: Option<&str>, json: bool) -> Result<(), Failure> {
    let repo = super::open_repo(config)?;
    // The catalog is only a cache here: never created by `bk list`, and a catalog
    // that cannot be opened is simply not used.
    let path = config.catalog_path();
    let catalog = path
        .exists()
        .then(|| bk_core::catalog::Catalog::open(&path).ok())
        .flatten();
    let backups = list::list_cached(&repo, job, catalog.as_ref()).await?;
    if json {
        output::json(&backups)?;
        return Ok(());
    }
    if backups.is_empty() {
        say!(
            "no committed backups{}",
            job.map(|j| format!(" of job {j}")).unwrap_or_default()
        )?;
        return Ok(());
    }
    // One buffered writer: 100,000 lines must not cost 100,000 writes. A reader that
    // went away (`bk list | head`) is not an error.
    match write_table(&backups) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(Failure::Failed(anyhow::anyhow!("writing the listing: {e}")))
        }
        _ => Ok(()),
    }
}

fn write_table(backups: &[list::Listed]) -> std::io::Result<()> {
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    writeln!(
        out,
        "{:<38} {:<16} {:<10} {:<10} {:>11} {:>11}  AGE",
        "BACKUP", "JOB", "KIND", "HOST", "SIZE", "STORED"
    )?;
    for b in backups {
        writeln!(
            out,
            "{:<38} {:<16} {:<10} {:<10} {:>11} {:>11}  {}",
            b.backup_id,
            b.job,
            b.kind,
            b.host,
            output::size(b.source_size),
            output::size(b.stored_size),
            output::age(b.started)
        )?;
    }
    out.flush()
}
