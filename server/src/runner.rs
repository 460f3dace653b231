//! One run of one job inside the daemon: wait for a concurrency slot, ping, call
//! the same `backup::run_with` as `bk run`, then update metrics, alert on failure and
//! prune by the job's retention. Every line logged here or below is inside a `job`
//! span carrying the job name and, once the catalog has assigned it, the run ID.

use std::sync::Arc;

use bk_core::catalog::RunStatus;
use bk_core::commands::backup::{self, error_chain, BackupError};
use bk_core::commands::prune;
use bk_core::commands::restore_test::{self, RestoreTestError};
use chrono::Utc;
use tracing::Instrument;

use crate::alerts::{Alert, Ping, Targets};
use crate::state::{Loaded, Shared};

/// Starts a run of `job` on its own task. The caller has already marked it running
/// in the planner; this task marks it finished, whatever happens.
pub fn spawn(shared: &Arc<Shared>, job: String, trigger: &'static str) {
    if !shared.active().insert(job.clone()) {
        // Only after a reload removed and re-added the job while its run went on.
        tracing::warn!(job = %job, "its previous run is still going; skipping this scheduled run");
        shared.planner().finished(&job);
        return;
    }
    let span = tracing::info_span!("job", job = %job, run = tracing::field::Empty);
    let task_shared = shared.clone();
    shared.runs.spawn(
        async move {
            run(&task_shared, &job, trigger).await;
            task_shared.active().remove(&job);
            let next = {
                let mut planner = task_shared.planner();
                planner.finished(&job);
                planner.next_run(&job)
            };
            crate::metrics::next_run(&job, next);
        }
        .instrument(span),
    );
}

async fn run(shared: &Shared, job: &str, trigger: &'static str) {
    // The configuration this run uses from start to end, even if a reload swaps it.
    let loaded = shared.current();
    let Some(job_config) = loaded.config.job(job) else {
        tracing::warn!("the job is no longer configured; not running it");
        return;
    };
    let slots = tokio::select! {
        slots = loaded.limits.acquire(&job_config.host) => slots,
        () = shared.stopping.cancelled() => {
            tracing::info!("shutting down before a slot was free; not starting the run");
            return;
        }
    };
    let targets = Targets::for_job(&loaded.config, job);
    shared
        .alerts
        .ping(&targets, job, Ping::Start, String::new());
    crate::metrics::running(1.0);
    let outcome = backup::run_with(
        &loaded.config,
        &loaded.repo,
        Some(&loaded.catalog),
        job,
        trigger,
        &shared.interrupt,
    )
    .await;
    crate::metrics::running(-1.0);
    drop(slots);
    if let Err(e @ BackupError::AlreadyRunning { .. }) = &outcome.result {
        // `bk run` (or another daemon on this machine) is doing this job's work now.
        tracing::warn!(error = %e, "skipping this scheduled run");
        return;
    }

    let status = match &outcome.result {
        Ok(_) => RunStatus::Success,
        Err(BackupError::Interrupted { .. }) => RunStatus::Interrupted,
        Err(_) => RunStatus::Failed,
    };
    let bytes = outcome.result.as_ref().ok().map(|r| {
        (
            r.record.source_size,
            r.record.payload.size + r.record.manifest.size,
        )
    });
    crate::metrics::run_finished(job, status, bytes, Utc::now());
    match loaded.catalog.last_run(job) {
        Ok(Some(run)) if Some(run.id) == outcome.run_id => crate::metrics::last_run(&run),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "reading the run back for metrics failed"),
    }

    match &outcome.result {
        Ok(report) => {
            shared
                .alerts
                .ping(&targets, job, Ping::Success, String::new());
            crate::overdue::good_backup(shared, job);
            crate::metrics::anomalies(job, &report.anomalies);
            if !report.anomalies.is_empty() {
                let figures: Vec<String> = report.anomalies.iter().map(|a| a.to_string()).collect();
                shared.alerts.webhook(
                    &targets,
                    Alert {
                        event: "anomaly",
                        job: job.to_string(),
                        run: outcome.run_id,
                        status: status.as_str().to_string(),
                        error: Some(figures.join("; ")),
                        host: job_config.host.clone(),
                        server: bk_core::catalog::hostname(),
                        time: Utc::now(),
                        last_good_backup: None,
                        backup: Some(report.record.backup_id.to_string()),
                        anomalies: report.anomalies.clone(),
                    },
                );
            }
            if job_config.retention.is_some() {
                prune(&loaded, job).await;
            }
        }
        // Stopped by our own shutdown: not the job's fault, and no receiver should be
        // paged for a restart. The run is recorded as interrupted in the catalog.
        Err(BackupError::Interrupted { .. }) => {}
        Err(e) => {
            let error = error_chain(e);
            shared.alerts.ping(&targets, job, Ping::Fail, error.clone());
            shared.alerts.webhook(
                &targets,
                Alert {
                    event: "backup_failed",
                    job: job.to_string(),
                    run: outcome.run_id,
                    status: status.as_str().to_string(),
                    error: Some(error),
                    host: job_config.host.clone(),
                    server: bk_core::catalog::hostname(),
                    time: Utc::now(),
                    last_good_backup: None,
                    backup: None,
                    anomalies: Vec::new(),
                },
            );
        }
    }
}

/// Prunes `job` on its `retention.schedule`, on its own task.
pub fn spawn_prune(shared: &Arc<Shared>, job: String) {
    let span = tracing::info_span!("prune", job = %job);
    let task_shared = shared.clone();
    shared.runs.spawn(
        async move {
            let loaded = task_shared.current();
            if loaded
                .config
                .job(&job)
                .is_some_and(|j| j.retention.is_some())
            {
                prune(&loaded, &job).await;
            }
            task_shared.prune_planner().finished(&job);
        }
        .instrument(span),
    );
}

/// Applies the job's retention (after a good backup, or on its schedule). A failure is logged, never turned
/// into a failed run: the backup itself is committed.
async fn prune(loaded: &Loaded, job: &str) {
    let result = prune::prune(
        &loaded.config,
        &loaded.repo,
        Some(&loaded.catalog),
        job,
        false,
        &[],
    )
    .await;
    match result {
        Ok(report) => {
            crate::metrics::pruned(job, report.removed.len());
            if !report.removed.is_empty() {
                tracing::info!(
                    removed = report.removed.len(),
                    kept = report.decisions.len() - report.removed.len(),
                    "pruned by retention"
                );
            }
        }
        Err(e) => {
            tracing::error!(error = %error_chain(&e), "pruning by retention failed; the new backup is committed")
        }
    }
}

/// Starts a restore test of `job` on its own task (scheduled by `restore_test.schedule`).
pub fn spawn_restore_test(shared: &Arc<Shared>, job: String) {
    let span = tracing::info_span!("restore_test", job = %job);
    let task_shared = shared.clone();
    shared.runs.spawn(
        async move {
            restore_test(&task_shared, &job).await;
            let next = {
                let mut planner = task_shared.test_planner();
                planner.finished(&job);
                planner.next_run(&job)
            };
            crate::metrics::next_restore_test(&job, next);
        }
        .instrument(span),
    );
}

async fn restore_test(shared: &Shared, job: &str) {
    let loaded = shared.current();
    let Some(job_config) = loaded.config.job(job) else {
        tracing::warn!("the job is no longer configured; no restore test");
        return;
    };
    let slots = tokio::select! {
        slots = loaded.limits.acquire_global() => slots,
        () = shared.stopping.cancelled() => return,
    };
    let outcome = restore_test::run(
        &loaded.config,
        &loaded.repo,
        Some(&loaded.catalog),
        job,
        "schedule",
        &shared.interrupt,
    )
    .await;
    drop(slots);
    if let Err(RestoreTestError::AlreadyRunning { .. }) = &outcome.result {
        return;
    }
    match loaded.catalog.last_restore_test(job) {
        Ok(Some(test)) if Some(test.id) == outcome.test_id => {
            crate::metrics::restore_test_finished(&test, true)
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "reading the restore test back for metrics failed"),
    }
    match &outcome.result {
        Ok(_) | Err(RestoreTestError::Interrupted { .. }) => {}
        Err(e) => shared.alerts.webhook(
            &Targets::for_job(&loaded.config, job),
            Alert {
                event: "restore_test_failed",
                job: job.to_string(),
                run: outcome.test_id,
                status: e.status().as_str().to_string(),
                error: Some(error_chain(e)),
                host: job_config.host.clone(),
                server: bk_core::catalog::hostname(),
                time: Utc::now(),
                last_good_backup: None,
                backup: e.backup().map(str::to_string),
                anomalies: Vec::new(),
            },
        ),
    }
}
