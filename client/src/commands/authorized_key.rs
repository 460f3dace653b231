//! `bk authorized-key HOST`: prints the `authorized_keys` line to install for the
//! source user on HOST: bk's public key, restricted to the commands HOST's jobs need.

use anyhow::anyhow;
use bk_core::config::Config;
use bk_core::source::{restrict, SourceError};

use crate::output::say;
use crate::Failure;

pub fn run(config: &Config, host: &str) -> Result<(), Failure> {
    let line = restrict::authorized_keys_line(config, host).map_err(|e| match e {
        SourceError::UnknownHost(_) => {
            let known: Vec<_> = config.hosts.keys().map(String::as_str).collect();
            Failure::Usage(anyhow!(
                "host `{host}` is not in {} (hosts: {})",
                config.source_file.display(),
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            ))
        }
        other => Failure::Failed(other.into()),
    })?;
    if !config.jobs.values().any(|j| j.host == host) {
        eprintln!("warning: no job uses host `{host}`, so this key may run nothing but bk's kill");
    }
    say!("{line}")?;
    Ok(())
}
