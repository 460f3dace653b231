//! `bk config check [--offline] [--json]`: validates the configuration (every problem,
//! exit 2), then checks, read-only, everything it names: the repository, every SSH
//! host, each job's source, the restore-test identities. Each failed check comes with
//! its fix; any failure exits 1.

use std::path::Path;

use anyhow::anyhow;
use bk_core::commands::check;

use crate::output;
use crate::output::say;
use crate::Failure;

pub async fn check(explicit: Option<&Path>, offline: bool, json: bool) -> Result<(), Failure> {
    let config = super::load(explicit)?;
    let summary = format!(
        "{}: valid ({} job(s), {} host(s), repository {})",
        config.source_file.display(),
        config.jobs.len(),
        config.hosts.len(),
        bk_core::repo::redact_url(&config.repository.url)
    );
    let checks = if offline {
        Vec::new()
    } else {
        check::run(&config).await
    };
    let failed: Vec<&check::Check> = checks.iter().filter(|c| !c.ok).collect();
    if json {
        output::json(&serde_json::json!({
            "config": config.source_file,
            "valid": true,
            "offline": offline,
            "checks": checks,
            "failed": failed.len(),
        }))?;
    } else {
        say!("{summary}")?;
        for c in &checks {
            let mark = if c.ok { "ok" } else { "FAIL" };
            say!("{mark:<5} {:<24} {}", c.what, c.detail)?;
            if let Some(fix) = &c.fix {
                say!("{:<5} {:<24} fix: {fix}", "", "")?;
            }
        }
        if !offline {
            say!("{} check(s), {} failed", checks.len(), failed.len())?;
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        let names: Vec<&str> = failed.iter().map(|c| c.what.as_str()).collect();
        Err(Failure::Failed(anyhow!(
            "{} check(s) failed: {}",
            failed.len(),
            names.join(", ")
        )))
    }
}
