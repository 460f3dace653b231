//! The overdue watch: a job that has had no good backup within its expected window
//! raises one alert (and `bk_job_overdue` = 1) until a good backup clears it. A job
//! that never ran at all is measured from the moment the daemon started watching it,
//! because "nothing ran" is the failure no run-level alert can report.

use std::sync::Arc;
use std::time::Duration;

use bk_core::schedule::{self, JobSchedule};
use chrono::{DateTime, Utc};

use crate::alerts::{Alert, Targets};
use crate::state::Shared;

/// How often the watch looks, at most and at least.
const MIN_CHECK: Duration = Duration::from_secs(1);
const MAX_CHECK: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
pub struct Watch {
    since: DateTime<Utc>,
    alerted: bool,
    overdue: bool,
}

/// Whether the last check found `job` overdue (measured from when the daemon began
/// watching it, which `bk status` alone cannot know for a job that never ran).
pub fn is_overdue(shared: &Shared, job: &str) -> bool {
    shared.watches().get(job).is_some_and(|w| w.overdue)
}

/// A good backup ends the job's overdue episode.
pub fn good_backup(shared: &Shared, job: &str) {
    if let Some(w) = shared.watches().get_mut(job) {
        w.alerted = false;
        w.overdue = false;
    }
    crate::metrics::overdue(job, false);
}

/// Checks every job now and then until shutdown.
pub async fn watch(shared: Arc<Shared>) {
    loop {
        let next = check(&shared, Utc::now());
        tokio::select! {
            () = tokio::time::sleep(next) => {}
            () = shared.stopping.cancelled() => return,
        }
    }
}

/// One pass; returns how long to wait before the next.
fn check(shared: &Shared, now: DateTime<Utc>) -> Duration {
    let loaded = shared.current();
    let mut interval = MAX_CHECK;
    let mut watches = shared.watches();
    watches.retain(|job, _| loaded.config.jobs.contains_key(job));
    for (name, job) in &loaded.config.jobs {
        let sched = JobSchedule::of_job(job).ok().flatten();
        let Some(window) = schedule::expected_window(job, sched.as_ref(), now) else {
            continue;
        };
        interval = interval.min(window / 4);
        let last_good = match loaded.catalog.latest_backup(name) {
            Ok(b) => b.map(|b| b.finished),
            Err(e) => {
                tracing::warn!(job = %name, error = %e, "reading the catalog for the overdue check failed");
                continue;
            }
        };
        let w = watches.entry(name.clone()).or_insert(Watch {
            since: loaded.loaded_at,
            alerted: false,
            overdue: false,
        });
        let overdue = schedule::is_overdue(last_good, w.since, window, now);
        w.overdue = overdue;
        crate::metrics::overdue(name, overdue);
        if !overdue {
            w.alerted = false;
            continue;
        }
        if w.alerted {
            continue;
        }
        w.alerted = true;
        let within = humantime::format_duration(window);
        let error = match last_good {
            Some(t) => format!("no good backup within {within}; the newest finished at {t}"),
            None => format!("no good backup within {within}; the job has none at all"),
        };
        tracing::error!(job = %name, "overdue: {error}");
        shared.alerts.webhook(
            &Targets::for_job(&loaded.config, name),
            Alert {
                event: "overdue",
                job: name.clone(),
                run: None,
                status: "overdue".into(),
                error: Some(error),
                host: job.host.clone(),
                server: bk_core::catalog::hostname(),
                time: now,
                last_good_backup: last_good,
                backup: None,
                anomalies: Vec::new(),
            },
        );
    }
    interval.clamp(MIN_CHECK, MAX_CHECK)
}
