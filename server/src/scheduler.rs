//! The scheduling loop: sleep until the planner's next wake-up (or a reload), start
//! what is due, log what is skipped because its previous run is still going. The
//! decisions themselves live in `bk_core::schedule::Planner`, tested with a fake clock.

use std::sync::Arc;
use std::time::Duration;

use bk_core::schedule::JobSchedule;
use chrono::Utc;

use crate::state::{Loaded, Shared};

/// Never sleep longer than this, so a wall-clock jump (NTP, suspend) is noticed soon.
const MAX_SLEEP: Duration = Duration::from_secs(30);

/// Hands the planner the scheduled jobs of `loaded` (at start and after a reload).
pub fn plan(shared: &Shared, loaded: &Loaded) {
    let now = Utc::now();
    let schedules: Vec<(String, JobSchedule)> = loaded
        .config
        .jobs
        .iter()
        .filter_map(|(name, job)| match JobSchedule::of_job(job) {
            Ok(Some(s)) => Some((name.clone(), s)),
            Ok(None) => None,
            // Validation already rejected bad schedules; this cannot be reached with a loaded config.
            Err(e) => {
                tracing::error!(job = %name, error = %e, "bad schedule; the job is not scheduled");
                None
            }
        })
        .collect();
    let last_run = |job: &str| match loaded.catalog.last_run(job) {
        Ok(run) => run.map(|r| r.started),
        Err(e) => {
            tracing::warn!(job, error = %e, "reading the last run failed; no catch-up for this job");
            None
        }
    };
    // Pruning schedules never catch up: the next good backup prunes anyway.
    let prunes: Vec<(String, JobSchedule)> = loaded
        .config
        .jobs
        .iter()
        .filter_map(|(name, job)| {
            let expr = job.retention.as_ref()?.schedule.as_deref()?;
            match JobSchedule::new(expr, &job.timezone, false) {
                Ok(s) => Some((name.clone(), s)),
                Err(e) => {
                    tracing::error!(job = %name, error = %e, "bad retention.schedule; not pruning on a schedule");
                    None
                }
            }
        })
        .collect();
    shared.prune_planner().update(prunes, |_| None, now);
    // Restore tests catch up like their job does: a weekly test missed while the
    // server was down runs once at start.
    let tests: Vec<(String, JobSchedule)> = loaded
        .config
        .jobs
        .iter()
        .filter_map(|(name, job)| {
            let test = job.restore_test.as_ref()?;
            let expr = test.schedule.as_deref()?;
            let tz = test.timezone.as_deref().unwrap_or(&job.timezone);
            match JobSchedule::new(expr, tz, job.catch_up) {
                Ok(s) => Some((name.clone(), s)),
                Err(e) => {
                    tracing::error!(job = %name, error = %e, "bad restore_test.schedule; no scheduled restore tests");
                    None
                }
            }
        })
        .collect();
    let last_test = |job: &str| match loaded.catalog.last_restore_test(job) {
        Ok(test) => test.map(|t| t.started),
        Err(e) => {
            tracing::warn!(job, error = %e, "reading the last restore test failed; no catch-up for it");
            None
        }
    };
    {
        let mut planner = shared.test_planner();
        planner.update(tests, last_test, now);
        for job in loaded.config.jobs.keys() {
            crate::metrics::next_restore_test(job, planner.next_run(job));
        }
    }
    let mut planner = shared.planner();
    planner.update(schedules, last_run, now);
    for job in loaded.config.jobs.keys() {
        let next = planner.next_run(job);
        crate::metrics::next_run(job, next);
        match next {
            Some(t) if t <= now => {
                tracing::info!(job = %job, "a run was missed while bk-server was down; catching up now")
            }
            Some(t) => tracing::info!(job = %job, next = %t, "scheduled"),
            None => tracing::debug!(job = %job, "not scheduled (runs on `bk run` only)"),
        }
    }
}

/// Runs until shutdown begins.
pub async fn run(shared: Arc<Shared>) {
    loop {
        let now = Utc::now();
        let (due, wake) = {
            let mut planner = shared.planner();
            let due = planner.due(now);
            (due, planner.next_wake())
        };
        let (prunes, prune_wake) = {
            let mut planner = shared.prune_planner();
            let due = planner.due(now);
            (due, planner.next_wake())
        };
        for job in prunes.start {
            crate::runner::spawn_prune(&shared, job);
        }
        let (tests, test_wake) = {
            let mut planner = shared.test_planner();
            let due = planner.due(now);
            (due, planner.next_wake())
        };
        for job in tests.skipped {
            tracing::warn!(job = %job, "its previous restore test is still going; skipping this one");
        }
        for job in tests.start {
            crate::runner::spawn_restore_test(&shared, job);
        }
        let wake = [wake, prune_wake, test_wake].into_iter().flatten().min();
        for job in due.skipped {
            tracing::warn!(job = %job, "its previous run is still going; skipping this scheduled run");
        }
        for job in due.start {
            crate::runner::spawn(&shared, job, "schedule");
        }
        let sleep = wake
            .map(|t| (t - now).to_std().unwrap_or_default())
            .unwrap_or(MAX_SLEEP)
            .min(MAX_SLEEP);
        tokio::select! {
            () = tokio::time::sleep(sleep) => {}
            () = shared.replanned.notified() => {}
            () = shared.stopping.cancelled() => return,
        }
    }
}
