//! `bk-server`, the backup daemon: load the configuration, then schedule jobs, run
//! each with the same `backup::run` that `bk run` uses, record, alert, prune. It
//! reloads on SIGHUP (keeping the old configuration if the new one is bad) and on
//! SIGTERM stops taking new runs, lets running ones finish within a grace period,
//! then interrupts them so nothing half-done is ever committed.
//!
//! Exit status: 0 clean shutdown; 1 the daemon failed; 2 bad usage or configuration.

mod alerts;
mod daemon;
mod http;
mod limits;
mod logging;
mod metrics;
mod overdue;
mod runner;
mod scheduler;
mod signals;
mod state;
mod status_page;

use std::path::PathBuf;
use std::process::ExitCode;

use bk_core::config::{Config, LogFormat};
use clap::Parser;

#[derive(Parser)]
#[command(name = "bk-server", version, about = "The bk backup server daemon")]
#[command(
    after_help = "Signals: SIGHUP reloads the configuration, SIGTERM/SIGINT shut down cleanly.\nExit status: 0 clean shutdown, 1 the daemon failed, 2 bad usage or configuration."
)]
struct Args {
    /// Configuration file [default: $BK_CONFIG, else ./bk.toml, else /etc/bk/bk.toml]
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Write log lines as JSON objects (overrides `server.log_format`)
    #[arg(long)]
    log_json: bool,
}

fn main() -> ExitCode {
    bk_core::release_large_buffers();
    let args = Args::parse();
    let config = match Config::locate(args.config.as_deref()).and_then(|p| Config::load(&p)) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("bk-server: {e}");
            return ExitCode::from(2);
        }
    };
    let format = if args.log_json {
        LogFormat::Json
    } else {
        config.server.log_format
    };
    logging::init(format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the async runtime");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(daemon::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %bk_core::commands::backup::error_chain(&e), "bk-server stopped");
            ExitCode::from(1)
        }
    }
}
