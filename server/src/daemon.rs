//! The daemon's life: open what the configuration names, recover from a previous
//! crash (runs left `running` become interrupted), start the HTTP listener, the
//! scheduler and the overdue watch, report READY to systemd, then serve signals until
//! SIGTERM; shut down by letting running jobs finish within `server.shutdown_grace`
//! and interrupting the rest.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use bk_core::catalog::{Catalog, CatalogError};
use bk_core::commands::backup::CANCEL_DRAIN;
use bk_core::config::Config;
use bk_core::repo::{RepoError, Repository};
use chrono::Utc;

use crate::alerts::Alerter;
use crate::limits::Limits;
use crate::signals::{Event, Signals};
use crate::state::{Loaded, Shared};

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("cannot open the repository: {0}")]
    Repo(#[from] RepoError),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error("cannot listen on {addr} (server.listen): {source}")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    #[error("cannot set up metrics: {0}")]
    Metrics(#[from] metrics_exporter_prometheus::BuildError),
    #[error("cannot set up the HTTP client for alerts: {0}")]
    Alerts(#[from] reqwest::Error),
    #[error("the HTTP listener failed: {0}")]
    Http(std::io::Error),
}

/// Opens the repository and catalog of `config`, reusing the catalog in force when its
/// path is unchanged.
pub fn open(config: Config, current: Option<&Loaded>) -> Result<Loaded, DaemonError> {
    let repo = Repository::open(&config.repository)?;
    let catalog = match current {
        Some(c) if c.catalog.path() == config.catalog_path() => c.catalog.clone(),
        _ => Catalog::open(&config.catalog_path())?,
    };
    Ok(Loaded {
        limits: Limits::new(&config),
        config,
        repo,
        catalog,
        loaded_at: Utc::now(),
    })
}

pub async fn run(config: Config) -> Result<(), DaemonError> {
    let config_path: PathBuf = config.source_file.clone();
    let metrics = crate::metrics::install()?;
    let loaded = open(config, None)?;
    let orphans = loaded.catalog.mark_orphaned_runs()?;
    if orphans > 0 {
        tracing::warn!(
            runs = orphans,
            "runs left unfinished by a previous bk-server (killed or crashed) are now recorded as interrupted; nothing of theirs was committed"
        );
    }
    // Restore tests cut short by a kill leave a scratch database or directory: remove it.
    let interrupted_tests =
        bk_core::restore_test::scratch::clean_orphans(&loaded.config, &loaded.catalog).await;
    if interrupted_tests > 0 {
        tracing::warn!(
            tests = interrupted_tests,
            "restore tests left unfinished by a previous bk-server are now recorded as interrupted; their scratch was removed"
        );
    }
    let addr = loaded.config.server.listen.clone();
    let listener = tokio::net::TcpListener::bind(addr.parse::<SocketAddr>().map_err(|e| {
        DaemonError::Listen {
            addr: addr.clone(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, e),
        }
    })?)
    .await
    .map_err(|source| DaemonError::Listen {
        addr: addr.clone(),
        source,
    })?;
    let mut signals = Signals::install().map_err(DaemonError::Signals)?;
    crate::metrics::seed(&loaded.config, &loaded.catalog);
    crate::metrics::reload(true);

    let shared = Shared::new(loaded, Alerter::new()?);
    crate::scheduler::plan(&shared, &shared.current());
    let http = tokio::spawn(crate::http::serve(
        listener,
        crate::http::router(shared.clone(), metrics),
        shared.clone(),
    ));
    tokio::spawn(sweep_leftovers(
        shared.current().repo.clone(),
        shared.current().config.repository.gc_grace,
    ));
    let scheduler = tokio::spawn(crate::scheduler::run(shared.clone()));
    let overdue = tokio::spawn(crate::overdue::watch(shared.clone()));
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    tracing::info!(
        listen = %addr,
        jobs = shared.current().config.jobs.len(),
        config = %config_path.display(),
        pid = std::process::id(),
        "bk-server ready"
    );

    while let Event::Reload = signals.next().await {
        crate::signals::reload(&shared, &config_path);
    }
    shutdown(&shared).await;
    let _ = scheduler.await;
    let _ = overdue.await;
    // SSH master connections exit on their own after an idle minute; close them now
    // so a stopped daemon leaves no ssh process behind.
    bk_core::source::ssh::close_all().await;
    if let Ok(Err(e)) = http.await {
        return Err(DaemonError::Http(e));
    }
    tracing::info!("bk-server stopped");
    Ok(())
}

async fn shutdown(shared: &Shared) {
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    shared.stopping.cancel();
    shared.runs.close();
    let grace = shared.current().config.server.shutdown_grace;
    let running = shared.runs.len();
    if running > 0 {
        tracing::info!(
            runs = running,
            "shutting down: no new runs; waiting up to {} for running ones",
            humantime::format_duration(grace)
        );
    }
    if tokio::time::timeout(grace, shared.runs.wait())
        .await
        .is_ok()
    {
        return;
    }
    tracing::warn!(
        runs = shared.runs.len(),
        "the grace period is over; interrupting running jobs (nothing of theirs is committed)"
    );
    shared.interrupt.cancel();
    // Give interrupted runs time to stop their sources, abort their uploads and record
    // themselves; a run still stuck after that is abandoned (never committed).
    let drain = CANCEL_DRAIN + Duration::from_secs(5);
    if tokio::time::timeout(drain, shared.runs.wait())
        .await
        .is_err()
    {
        tracing::error!(
            runs = shared.runs.len(),
            "runs did not stop in time; exiting without them (the next start records them as interrupted)"
        );
    }
}

/// What a crash of this or another server left in the repository (uncommitted objects
/// and unfinished S3 uploads older than the grace period) is removed at start, in the background: it never
/// delays the first backup, and a failure is only logged (`bk gc` can be run by hand).
async fn sweep_leftovers(repo: Repository, grace: std::time::Duration) {
    match bk_core::commands::gc::gc(&repo, grace, Utc::now(), false).await {
        Ok(report) if report.removed.is_empty() && report.aborted_uploads.is_empty() => {
            tracing::debug!("no uncommitted leftovers in the repository")
        }
        Ok(report) => tracing::info!(
            objects = report.removed.len(),
            bytes = report.bytes,
            unfinished_uploads = report.aborted_uploads.len(),
            "removed uncommitted leftovers of failed or crashed backups"
        ),
        Err(e) => {
            tracing::warn!(error = %e, "sweeping uncommitted leftovers failed; run `bk gc` by hand")
        }
    }
}
