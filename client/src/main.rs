//! `bk`, the operator's command line. Works without the daemon: every command runs
//! in-process with the same bk-core code the daemon uses, and `list`/`restore` need
//! only the repository and an identity (no catalog).
//!
//! Exit status: 0 success; 1 the operation failed; 2 bad usage or bad configuration.

mod cli;
mod commands;
mod output;
mod progress;

use std::process::ExitCode;

use clap::Parser;

/// How a command failed, which decides the exit status.
pub enum Failure {
    /// The operation failed (exit 1).
    Failed(anyhow::Error),
    /// Bad usage or configuration (exit 2).
    Usage(anyhow::Error),
}

impl<E: Into<anyhow::Error>> From<E> for Failure {
    fn from(e: E) -> Self {
        let e = e.into();
        if e.downcast_ref::<bk_core::config::ConfigError>().is_some() {
            Failure::Usage(e)
        } else {
            Failure::Failed(e)
        }
    }
}

fn main() -> ExitCode {
    bk_core::release_large_buffers();
    let args = cli::Cli::parse();
    output::init_logging(args.verbose);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bk: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(commands::dispatch(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Failed(e)) => {
            output::print_error(&e);
            ExitCode::from(1)
        }
        Err(Failure::Usage(e)) => {
            output::print_error(&e);
            ExitCode::from(2)
        }
    }
}
