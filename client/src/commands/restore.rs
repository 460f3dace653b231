//! `bk restore JOB [BACKUP_ID|latest] --identity FILE (--to DIR | --stdout | --pg-target URL) [--verify]`

use std::path::Path;

use anyhow::anyhow;
use bk_core::commands::restore;
use bk_core::config::Config;
use bk_core::restore::Sink;

use crate::cli::RestoreArgs;
use crate::output;
use crate::output::say;
use crate::Failure;

pub async fn run(config: &Config, args: RestoreArgs) -> Result<(), Failure> {
    if let Some(url) = &args.pg_target {
        return to_database(config, &args, url, false).await;
    }
    if let Some(url) = &args.mysql_target {
        return to_database(config, &args, url, true).await;
    }
    let sink = match (&args.to, args.stdout, args.verify) {
        (Some(dir), _, _) => Sink::Directory {
            path: dir.clone(),
            keep_special_bits: args.keep_special_bits,
        },
        (None, true, _) => Sink::Stream(Box::new(std::io::stdout())),
        (None, false, true) => Sink::Verify,
        (None, false, false) => {
            return Err(Failure::Usage(anyhow!(
            "say where to restore: --to DIR, --stdout, --pg-target URL, --mysql-target URL, or --verify to only check"
        )))
        }
    };
    let verify_only = matches!(sink, Sink::Verify);
    let repo = super::open_repo(config)?;
    let ids: Vec<&Path> = args.identity.iter().map(|p| p.as_path()).collect();
    let bar = crate::progress::start(if verify_only {
        "verifying"
    } else {
        "restoring"
    });
    let report = restore::run(&repo, &args.job, &args.backup, &ids, sink).await;
    drop(bar);
    let report = report?;
    if args.json {
        output::json(&report)?;
        return Ok(());
    }
    let what = if verify_only { "verified" } else { "restored" };
    let mut line = format!(
        "backup {} of job {} {what}: {} ({} stored), every hash matches",
        report.backup_id,
        report.job,
        output::size(report.source_size),
        output::size(report.stored_size)
    );
    if report.entries_checked > 0 {
        line.push_str(&format!(
            ", {} entries checked against the manifest",
            report.entries_checked
        ));
    }
    line.push_str(&format!(", {:.1}s", report.elapsed.as_secs_f64()));
    for warning in &report.warnings {
        eprintln!("warning: {warning}");
    }
    // Results go to stderr when stdout carries the restored bytes.
    if args.stdout {
        eprintln!("{line}");
    } else {
        say!("{line}")?;
    }
    Ok(())
}

async fn to_database(
    config: &Config,
    args: &RestoreArgs,
    url: &str,
    mysql: bool,
) -> Result<(), Failure> {
    let repo = super::open_repo(config)?;
    let ids: Vec<&Path> = args.identity.iter().map(|p| p.as_path()).collect();
    let report = if mysql {
        restore::to_mysql(&repo, &args.job, &args.backup, &ids, url).await?
    } else {
        restore::to_postgres(&repo, &args.job, &args.backup, &ids, url, args.no_owner).await?
    };
    if args.json {
        output::json(&report)?;
        return Ok(());
    }
    say!(
        "backup {} of job {} restored into {}: {} dump, every hash matches, {:.1}s",
        report.backup_id,
        report.job,
        bk_core::repo::redact_url(url),
        output::size(report.source_size),
        report.elapsed.as_secs_f64()
    )?;
    Ok(())
}
