//! `bk status`: every configured job's last run, last good backup, next scheduled
//! run, last restore test and whether it is overdue, from the catalog (the daemon
//! need not be running).

use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::catalog::{Catalog, CatalogError, RestoreTestRecord, RunRecord, TestStatus};
use crate::commands::list::Listed;
use crate::config::Config;
use crate::schedule;

#[derive(Debug, Clone, Serialize)]
pub struct JobStatus {
    pub job: String,
    pub kind: String,
    pub host: String,
    pub schedule: Option<String>,
    pub next_run: Option<DateTime<Utc>>,
    pub last_run: Option<RunRecord>,
    pub last_good_backup: Option<Listed>,
    /// How old the newest good backup may be (`expect_within`, or the schedule's
    /// longest gap plus 2h), in seconds; `None` for a job that is never overdue.
    pub expect_within_seconds: Option<u64>,
    /// No good backup within that window. A job with no good backup at all is
    /// measured from its first run in the catalog.
    pub overdue: bool,
    /// The job's last restore test (passed, failed or interrupted), if any.
    pub last_restore_test: Option<RestoreTestRecord>,
    /// When the newest passed restore test finished.
    pub last_passed_restore_test: Option<DateTime<Utc>>,
    /// When the next scheduled restore test is due.
    pub next_restore_test: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub generated: DateTime<Utc>,
    pub jobs: Vec<JobStatus>,
}

pub fn status(
    config: &Config,
    catalog: &Catalog,
    now: DateTime<Utc>,
) -> Result<Status, CatalogError> {
    let mut jobs = Vec::new();
    for (name, job) in &config.jobs {
        let next_run = job.schedule.as_deref().and_then(|expr| {
            let cron = crate::schedule::parse(expr).ok()?;
            let tz = chrono_tz::Tz::from_str(&job.timezone).ok()?;
            crate::schedule::next_after(&cron, tz, now)
        });
        let last_good_backup = catalog.latest_backup(name)?;
        let schedule = schedule::JobSchedule::of_job(job).ok().flatten();
        let window = schedule::expected_window(job, schedule.as_ref(), now);
        let overdue = match (window, catalog.first_seen(name)?) {
            (Some(window), Some(since)) => schedule::is_overdue(
                last_good_backup.as_ref().map(|b| b.finished),
                since,
                window,
                now,
            ),
            _ => false,
        };
        let tests = match job.restore_test {
            Some(_) => catalog.restore_tests(Some(name), 50)?,
            None => Vec::new(),
        };
        let next_restore_test = job.restore_test.as_ref().and_then(|t| {
            let cron = crate::schedule::parse(t.schedule.as_deref()?).ok()?;
            let tz =
                chrono_tz::Tz::from_str(t.timezone.as_deref().unwrap_or(&job.timezone)).ok()?;
            crate::schedule::next_after(&cron, tz, now)
        });
        jobs.push(JobStatus {
            job: name.clone(),
            kind: job.kind.as_str().into(),
            host: job.host.clone(),
            schedule: job.schedule.clone(),
            next_run,
            last_run: catalog.last_run(name)?,
            last_good_backup: last_good_backup.as_ref().map(Listed::from),
            expect_within_seconds: window.map(|w| w.as_secs()),
            overdue,
            last_passed_restore_test: tests
                .iter()
                .find(|t| t.status == TestStatus::Passed)
                .and_then(|t| t.finished),
            last_restore_test: tests.into_iter().next(),
            next_restore_test,
        });
    }
    Ok(Status {
        generated: now,
        jobs,
    })
}
