//! `bk restore-test JOB`: one restore test now, with the daemon's own code, recorded
//! in the catalog like a scheduled one.

use anyhow::anyhow;
use bk_core::catalog::Catalog;
use bk_core::commands::restore_test;
use bk_core::config::Config;
use bk_core::error_chain;
use tokio_util::sync::CancellationToken;

use crate::output;
use crate::output::say;
use crate::Failure;

pub async fn run(config: &Config, job: &str, json: bool) -> Result<(), Failure> {
    match config.job(job) {
        None => {
            return Err(Failure::Usage(anyhow!(
                "job `{job}` is not in {}",
                config.source_file.display()
            )))
        }
        Some(j) if j.restore_test.is_none() => {
            return Err(Failure::Usage(anyhow!(
                "job `{job}` has no [jobs.{job}.restore_test] section in {}",
                config.source_file.display()
            )))
        }
        Some(_) => {}
    }
    let repo = super::open_repo(config)?;
    let catalog = Catalog::open(&config.catalog_path())?;
    // What a restore test killed earlier left behind (a scratch database or directory).
    bk_core::restore_test::scratch::clean_orphans(config, &catalog).await;
    let outcome = restore_test::run(
        config,
        &repo,
        Some(&catalog),
        job,
        "manual",
        &CancellationToken::new(),
    )
    .await;
    let report = match outcome.result {
        Ok(report) => report,
        Err(e) => {
            if json {
                output::json(&serde_json::json!({
                    "job": job,
                    "test": outcome.test_id,
                    "status": e.status().as_str(),
                    "reason": error_chain(&e),
                }))?;
            }
            return Err(Failure::Failed(e.into()));
        }
    };
    if json {
        let mut value = serde_json::to_value(&report)?;
        if let Some(map) = value.as_object_mut() {
            map.insert("test".into(), serde_json::json!(outcome.test_id));
            map.insert("status".into(), serde_json::json!("passed"));
        }
        output::json(&value)?;
        return Ok(());
    }
    let mut what = vec![format!(
        "every hash matches ({} dump)",
        output::size(report.source_size)
    )];
    if report.entries_checked > 0 {
        what.push(format!(
            "{} entries match the manifest on disk",
            report.entries_checked
        ));
    }
    if report.tables_checked > 0 {
        what.push(format!(
            "{} tables ({} rows) restored, row counts match the manifest",
            report.tables_checked, report.rows_restored
        ));
    }
    if !report.checks.is_empty() {
        what.push(format!("{} SQL checks passed", report.checks.len()));
    }
    say!(
        "restore test of job {} passed: backup {} restored into {}; {}; {:.1}s",
        report.job,
        report.backup_id,
        report
            .restored_into
            .as_deref()
            .unwrap_or("nothing (hashes only)"),
        what.join(", "),
        report.elapsed.as_secs_f64()
    )?;
    for note in &report.notes {
        say!("  note: {note}")?;
    }
    Ok(())
}
