//! `bk gc [--dry-run] [--grace DURATION]`: removes uncommitted leftovers.

use std::time::Duration;

use bk_core::commands::gc;
use bk_core::config::Config;

use crate::output;
use crate::output::say;
use crate::Failure;

pub async fn run(
    config: &Config,
    dry_run: bool,
    grace: Option<Duration>,
    json: bool,
) -> Result<(), Failure> {
    let repo = super::open_repo(config)?;
    let grace = grace.unwrap_or(config.repository.gc_grace);
    let report = gc::gc(&repo, grace, chrono::Utc::now(), dry_run).await?;
    if json {
        output::json(&report)?;
        return Ok(());
    }
    let verb = if dry_run { "would remove" } else { "removed" };
    for key in &report.removed {
        say!("{verb} {key}")?;
    }
    let abort = if dry_run { "would abort" } else { "aborted" };
    for upload in &report.aborted_uploads {
        say!(
            "{abort} the unfinished upload of {} (started {})",
            upload.key,
            upload.initiated.format("%Y-%m-%d %H:%M:%S UTC")
        )?;
    }
    say!(
        "{verb} {} object(s), {}; {abort} {} unfinished upload(s); {} uncommitted object(s) younger than {} left alone",
        report.removed.len(),
        output::size(report.bytes),
        report.aborted_uploads.len(),
        report.kept_recent.len(),
        humantime::format_duration(grace)
    )?;
    Ok(())
}
