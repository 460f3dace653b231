//! `bk status [--json]`

use bk_core::catalog::Catalog;
use bk_core::commands::status;
use bk_core::config::Config;

use crate::output;
use crate::output::say;
use crate::Failure;

pub async fn run(config: &Config, json: bool) -> Result<(), Failure> {
    let catalog = Catalog::open(&config.catalog_path())?;
    catalog.mark_orphaned_runs()?;
    let status = status::status(config, &catalog, chrono::Utc::now())?;
    let storage = storage_guarantees(config).await;
    if json {
        let mut doc = serde_json::to_value(&status).map_err(anyhow::Error::from)?;
        doc["repository"] = storage;
        output::json(&doc)?;
        return Ok(());
    }
    say!(
        "repository {}: {}",
        storage["url"].as_str().unwrap_or_default(),
        storage["guarantees"].as_str().unwrap_or_default()
    )?;
    say!(
        "{:<16} {:<10} {:<28} {:<24} NEXT RUN",
        "JOB",
        "HOST",
        "LAST RUN",
        "LAST GOOD BACKUP"
    )?;
    for j in &status.jobs {
        let last = j
            .last_run
            .as_ref()
            .map(|r| format!("{} {}", r.status.as_str(), output::age(r.started)))
            .unwrap_or_else(|| "never".into());
        let good = j
            .last_good_backup
            .as_ref()
            .map(|b| {
                format!(
                    "{} ({})",
                    output::age(b.finished),
                    output::size(b.source_size)
                )
            })
            .unwrap_or_else(|| "none".into());
        let next = j
            .next_run
            .map(|t| t.format("%Y-%m-%d %H:%M UTC").to_string())
            .unwrap_or_else(|| "manual".into());
        say!(
            "{:<16} {:<10} {:<28} {:<24} {next}",
            j.job,
            j.host,
            last,
            good
        )?;
        if j.overdue {
            let window = match j.expect_within_seconds.unwrap_or(0) {
                s if s >= 3600 && s % 3600 == 0 => format!("{}h", s / 3600),
                s => format!("{s}s"),
            };
            say!("  OVERDUE: no good backup within {window}")?;
        }
        for a in j.last_run.iter().flat_map(|r| &r.anomalies) {
            say!("  ANOMALY in the last backup: {a}")?;
        }
        if let Some(err) = j.last_run.as_ref().and_then(|r| r.error.as_deref()) {
            say!("  last error: {}", err.lines().next().unwrap_or(err))?;
        }
        if let Some(t) = &j.last_restore_test {
            let mut line = format!(
                "  restore test: {} {} (backup {})",
                t.status.as_str(),
                output::age(t.started),
                t.backup_id.as_deref().unwrap_or("-")
            );
            if let Some(passed) = j
                .last_passed_restore_test
                .filter(|_| t.status.as_str() != "passed")
            {
                line.push_str(&format!(", last passed {}", output::age(passed)));
            }
            if let Some(next) = j.next_restore_test {
                line.push_str(&format!(", next {}", next.format("%Y-%m-%d %H:%M UTC")));
            }
            say!("{line}")?;
            if let Some(reason) = &t.reason {
                say!("    reason: {}", reason.lines().next().unwrap_or(reason))?;
            }
        } else if let Some(next) = j.next_restore_test {
            say!(
                "  restore test: never ran, next {}",
                next.format("%Y-%m-%d %H:%M UTC")
            )?;
        }
    }
    Ok(())
}

/// What the store guarantees, probed now (a few seconds at most); the catalog alone
/// cannot say, and a store that stopped enforcing create-only writes must be visible.
async fn storage_guarantees(config: &Config) -> serde_json::Value {
    let url = bk_core::repo::redact_url(&config.repository.url);
    let probed = match bk_core::repo::Repository::open(&config.repository) {
        Ok(repo) => {
            match tokio::time::timeout(std::time::Duration::from_secs(15), repo.create_only()).await
            {
                Ok(Ok(found)) => Ok(found),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err("no answer within 15s".to_string()),
            }
        }
        Err(e) => Err(e.to_string()),
    };
    match probed {
        Ok(found) => {
            serde_json::json!({"url": url, "create_only": found, "guarantees": found.describe()})
        }
        Err(e) => {
            serde_json::json!({"url": url, "create_only": null, "guarantees": format!("unknown: storage unreachable ({e})")})
        }
    }
}
