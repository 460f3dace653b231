//! `bk verify [JOB] [--json]`: key-less integrity scrub; exit 1 on any damage.

use anyhow::anyhow;
use bk_core::commands::verify;
use bk_core::config::Config;

use crate::output;
use crate::output::say;
use crate::Failure;

pub async fn run(config: &Config, job: Option<&str>, json: bool) -> Result<(), Failure> {
    let repo = super::open_repo(config)?;
    let bar = crate::progress::start("verifying");
    let results = verify::verify(&repo, job).await;
    drop(bar);
    let results = results?;
    let damaged: Vec<_> = results.iter().filter(|r| !r.ok).collect();
    if json {
        output::json(&serde_json::json!({
            "checked": results.len(),
            "damaged": damaged.len(),
            "backups": results,
        }))?;
    } else {
        for r in &results {
            if r.ok {
                say!(
                    "ok       {} {} ({})",
                    r.job,
                    r.backup_id,
                    output::size(r.bytes_read)
                )?;
            } else {
                for d in &r.damage {
                    say!(
                        "DAMAGED  {} {}: `{}`: {}",
                        r.job,
                        r.backup_id,
                        d.key,
                        d.problem
                    )?;
                }
            }
        }
        say!(
            "{} backup(s) checked, {} damaged",
            results.len(),
            damaged.len()
        )?;
    }
    if damaged.is_empty() {
        Ok(())
    } else {
        let ids: Vec<_> = damaged.iter().map(|r| r.backup_id.as_str()).collect();
        Err(Failure::Failed(anyhow!(
            "{} damaged backup(s): {}",
            damaged.len(),
            ids.join(", ")
        )))
    }
}
