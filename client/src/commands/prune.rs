//! `bk prune [JOB] [--dry-run] [--json]`: apply retention, show why each survivor stays.

use anyhow::anyhow;
use bk_core::catalog::Catalog;
use bk_core::commands::prune::{self, PruneError, PruneReport};
use bk_core::config::Config;

use crate::output;
use crate::output::say;
use crate::Failure;

pub async fn run(
    config: &Config,
    job: Option<&str>,
    dry_run: bool,
    json: bool,
) -> Result<(), Failure> {
    let jobs: Vec<&str> = match job {
        Some(j) => vec![j],
        None => config
            .jobs
            .iter()
            .filter(|(_, j)| j.retention.is_some())
            .map(|(name, _)| name.as_str())
            .collect(),
    };
    let repo = super::open_repo(config)?;
    let catalog = Catalog::open(&config.catalog_path())?;
    let mut reports = Vec::new();
    for name in jobs {
        match prune::prune(config, &repo, Some(&catalog), name, dry_run, &[]).await {
            Ok(report) => reports.push(report),
            Err(e @ (PruneError::UnknownJob(_) | PruneError::NoRetention(_))) => {
                return Err(Failure::Usage(anyhow!(e)))
            }
            Err(e) => return Err(Failure::Failed(e.into())),
        }
    }
    if json {
        output::json(&reports)?;
        return Ok(());
    }
    if reports.is_empty() {
        say!("no job has a `retention`; nothing to prune")?;
    }
    for report in &reports {
        print_report(report)?;
    }
    Ok(())
}

fn print_report(report: &PruneReport) -> anyhow::Result<()> {
    let gone = report.decisions.iter().filter(|d| !d.keep).count();
    let verb = if report.dry_run {
        "would remove"
    } else {
        "removed"
    };
    say!(
        "{}: {} backups, keeping {}, {verb} {gone}",
        report.job,
        report.decisions.len(),
        report.decisions.len() - gone
    )?;
    for d in &report.decisions {
        let why = if d.keep {
            d.reasons
                .iter()
                .map(|r| r.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        } else {
            String::new()
        };
        let action = match (d.keep, report.dry_run) {
            (true, _) => "keep",
            (false, true) => "would remove",
            (false, false) => "removed",
        };
        say!(
            "  {:<12} {} {}  {why}",
            action,
            d.id,
            d.time.format("%Y-%m-%d %H:%M UTC")
        )?;
    }
    Ok(())
}
