//! Process signals: SIGHUP reloads the configuration; SIGTERM and SIGINT begin a
//! clean shutdown. A reload validates the whole new file (and opens what it names)
//! before anything changes; a bad one is logged and the configuration in force stays.

use std::path::Path;
use std::sync::Arc;

use bk_core::config::Config;
use tokio::signal::unix::{signal, Signal, SignalKind};

use crate::state::Shared;

pub struct Signals {
    hangup: Signal,
    terminate: Signal,
    interrupt: Signal,
}

pub enum Event {
    Reload,
    Stop,
}

impl Signals {
    /// Installs the handlers (before READY, so an early SIGHUP is not fatal).
    pub fn install() -> std::io::Result<Signals> {
        Ok(Signals {
            hangup: signal(SignalKind::hangup())?,
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
        })
    }

    pub async fn next(&mut self) -> Event {
        tokio::select! {
            _ = self.hangup.recv() => Event::Reload,
            _ = self.terminate.recv() => Event::Stop,
            _ = self.interrupt.recv() => Event::Stop,
        }
    }
}

/// Reloads from `path`. Running jobs keep the configuration they started with.
pub fn reload(shared: &Arc<Shared>, path: &Path) {
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Reloading]);
    let old = shared.current();
    let result = Config::load(path)
        .map_err(|e| e.to_string())
        .and_then(|config| crate::daemon::open(config, Some(&old)).map_err(|e| e.to_string()));
    match result {
        Ok(loaded) => {
            let before: Vec<&String> = old.config.jobs.keys().collect();
            let after: Vec<&String> = loaded.config.jobs.keys().collect();
            let added: Vec<&str> = after
                .iter()
                .filter(|j| !before.contains(j))
                .map(|j| j.as_str())
                .collect();
            let removed: Vec<&str> = before
                .iter()
                .filter(|j| !after.contains(j))
                .map(|j| j.as_str())
                .collect();
            if loaded.config.server.log_format != old.config.server.log_format {
                tracing::warn!("server.log_format changed; the log format changes only on restart");
            }
            if loaded.config.server.listen != old.config.server.listen {
                tracing::warn!(
                    listen = %loaded.config.server.listen,
                    "server.listen changed; the HTTP listener moves only on restart"
                );
            }
            tracing::info!(added = ?added, removed = ?removed, jobs = after.len(), "configuration reloaded");
            crate::metrics::seed(&loaded.config, &loaded.catalog);
            crate::scheduler::plan(shared, &loaded);
            shared.replace(loaded);
            shared.replanned.notify_one();
            crate::metrics::reload(true);
        }
        Err(e) => {
            tracing::error!(error = %e, "the new configuration was rejected; keeping the one in force");
            crate::metrics::reload(false);
        }
    }
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
}
