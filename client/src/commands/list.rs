//! `bk list [JOB] [--json]`

use bk_core::commands::list;
use bk_core::config::Config;

use crate::output;
use crate::Failure;

pub async fn run(config: &Config, job: Option<&str>, json: bool) -> Result<(), Failure> {
    let repo = super::open_repo(config)?;
    let backups = list::list(&repo, job).await?;
    if json {
        output::json(&backups)?;
        return Ok(());
    }
    if backups.is_empty() {
        println!(
            "no committed backups{}",
            job.map(|j| format!(" of job {j}")).unwrap_or_default()
        );
        return Ok(());
    }
    println!(
        "{:<38} {:<16} {:<10} {:<10} {:>11} {:>11}  AGE",
        "BACKUP", "JOB", "KIND", "HOST", "SIZE", "STORED"
    );
    for b in &backups {
        println!(
            "{:<38} {:<16} {:<10} {:<10} {:>11} {:>11}  {}",
            b.backup_id,
            b.job,
            b.kind,
            b.host,
            output::size(b.source_size),
            output::size(b.stored_size),
            output::age(b.started)
        );
    }
    Ok(())
}
