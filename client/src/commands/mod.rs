//! One module per subcommand; `dispatch` loads what each needs and nothing more.

mod authorized_key;
mod catalog;
mod completions;
mod config;
mod gc;
mod init;
mod keygen;
mod list;
mod prune;
mod restore;
mod restore_test;
mod run;
mod status;
mod verify;

use std::path::Path;

use anyhow::Context;
use bk_core::config::Config;
use bk_core::repo::Repository;

use crate::cli::{CatalogCommand, Cli, Command, ConfigCommand};
use crate::Failure;

pub async fn dispatch(cli: Cli) -> Result<(), Failure> {
    let config_path = cli.config.as_deref();
    match cli.command {
        Command::Keygen { output } => keygen::run(&output),
        Command::Init {
            dir,
            source,
            identity,
        } => init::run(&dir, &source, identity.as_deref()),
        Command::Completions { shell } => {
            completions::print(shell);
            Ok(())
        }
        Command::Run { job, json } => run::run(&load(config_path)?, &job, json).await,
        Command::List { job, json } => list::run(&load(config_path)?, job.as_deref(), json).await,
        Command::Restore(args) => restore::run(&load(config_path)?, args).await,
        Command::RestoreTest { job, json } => {
            restore_test::run(&load(config_path)?, &job, json).await
        }
        Command::Prune { job, dry_run, json } => {
            prune::run(&load(config_path)?, job.as_deref(), dry_run, json).await
        }
        Command::Verify { job, json } => {
            verify::run(&load(config_path)?, job.as_deref(), json).await
        }
        Command::Gc {
            dry_run,
            grace,
            json,
        } => gc::run(&load(config_path)?, dry_run, grace, json).await,
        Command::Catalog {
            command: CatalogCommand::Rebuild,
        } => catalog::rebuild(&load(config_path)?).await,
        Command::Status { json } => status::run(&load(config_path)?, json).await,
        Command::AuthorizedKey { host } => authorized_key::run(&load(config_path)?, &host),
        Command::Config {
            command: ConfigCommand::Check { offline, json },
        } => config::check(config_path, offline, json).await,
    }
}

/// Finds, reads and validates the configuration (errors exit 2).
pub fn load(explicit: Option<&Path>) -> Result<Config, Failure> {
    let path = Config::locate(explicit).map_err(|e| Failure::Usage(e.into()))?;
    Config::load(&path).map_err(|e| Failure::Usage(e.into()))
}

pub fn open_repo(config: &Config) -> Result<Repository, Failure> {
    Repository::open(&config.repository)
        .context("cannot open the repository")
        .map_err(Failure::Failed)
}
