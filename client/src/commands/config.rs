//! `bk config check`: validates the configuration and reports every problem.

use std::path::Path;

use crate::Failure;

pub fn check(explicit: Option<&Path>) -> Result<(), Failure> {
    let config = super::load(explicit)?;
    println!(
        "{}: valid ({} job(s), {} host(s), repository {})",
        config.source_file.display(),
        config.jobs.len(),
        config.hosts.len(),
        bk_core::repo::redact_url(&config.repository.url)
    );
    Ok(())
}
