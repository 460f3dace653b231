//! `bk run JOB`: one backup now, in-process, with the daemon's own code.

use anyhow::anyhow;
use bk_core::catalog::Catalog;
use bk_core::commands::backup;
use bk_core::config::Config;

use crate::output;
use crate::output::say;
use crate::Failure;

pub async fn run(config: &Config, job: &str, json: bool) -> Result<(), Failure> {
    if config.job(job).is_none() {
        let known: Vec<_> = config.jobs.keys().map(String::as_str).collect();
        return Err(Failure::Usage(anyhow!(
            "job `{job}` is not in {} (jobs: {})",
            config.source_file.display(),
            if known.is_empty() {
                "none".to_string()
            } else {
                known.join(", ")
            }
        )));
    }
    let repo = super::open_repo(config)?;
    let catalog = Catalog::open(&config.catalog_path())?;
    catalog.mark_orphaned_runs()?;
    let result = backup::run(config, &repo, Some(&catalog), job, "manual").await;
    // SSH masters are shared while the process lives; close them before it exits.
    bk_core::source::ssh::close_all().await;
    let report = result?;
    let r = &report.record;
    if json {
        output::json(&serde_json::json!({
            "backup_id": r.backup_id,
            "job": r.job,
            "source_size": r.source_size,
            "stored_size": r.payload.size + r.manifest.size,
            "entries": report.entries,
            "warnings": report.warnings,
            "anomalies": report.anomalies,
            "seconds": report.elapsed.as_secs_f64(),
        }))?;
        return Ok(());
    }
    let secs = report.elapsed.as_secs_f64().max(0.001);
    say!(
        "backup {} of job {} committed: {} read, {} stored, {} entries, {:.1}s ({:.0} MB/s)",
        r.backup_id,
        r.job,
        output::size(r.source_size),
        output::size(r.payload.size + r.manifest.size),
        report.entries,
        secs,
        r.source_size as f64 / secs / 1e6
    )?;
    for w in &report.warnings {
        say!("  warning: {w}")?;
    }
    for a in &report.anomalies {
        say!("  ANOMALY: {a}")?;
    }
    Ok(())
}
