//! `bk restore-test JOB`, and the daemon's scheduled restore tests: pick a backup,
//! record the test in the catalog, restore it for real into a scratch target, check
//! it, remove the scratch, record the result. One code path for both callers.
//!
//! Callers clean up first, once per process start, what earlier tests cut short on
//! this machine left behind (`restore_test::scratch::clean_orphans`).

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::catalog::{Catalog, CatalogError, TestStatus};
use crate::config::{Config, PickBackup};
use crate::error_chain;
use crate::keys::{self, KeyError};
use crate::repo::commit::CommitRecord;
use crate::repo::{RepoError, Repository};
use crate::restore::RestoreError;
use crate::restore_test::{self, scratch, TestFailure, TestReport};
use crate::retention;

#[derive(Debug, thiserror::Error)]
pub enum RestoreTestError {
    #[error("job `{0}` is not in the configuration")]
    UnknownJob(String),
    #[error("job `{0}` has no [jobs.{0}.restore_test] section")]
    NotConfigured(String),
    #[error("job `{0}` has no committed backup to test")]
    NoBackup(String),
    #[error("restore test of job `{job}`: {source}")]
    Repo { job: String, source: RepoError },
    #[error("restore test of job `{job}`: the restore-test identity: {source}")]
    Keys { job: String, source: KeyError },
    #[error("restore test of job `{job}`: {source}")]
    Catalog {
        job: String,
        source: Box<CatalogError>,
    },
    #[error("a restore test of job `{job}` is already running (test {test}, process {pid})")]
    AlreadyRunning { job: String, test: i64, pid: i64 },
    #[error("restore test of job `{job}`, backup {backup}, failed: {source}")]
    Failed {
        job: String,
        backup: String,
        source: TestFailure,
    },
    #[error("restore test of job `{job}`, backup {backup}: the restore-test identity {identity} cannot decrypt it; add its recipient to repository.recipients (backups written before that cannot be tested with it)")]
    NotARecipient {
        job: String,
        backup: String,
        identity: String,
    },
    #[error("restore test of job `{job}`, backup {backup}, did not finish within its timeout of {}", humantime::format_duration(*.after))]
    Timeout {
        job: String,
        backup: String,
        after: Duration,
    },
    #[error("restore test of job `{job}` was stopped before it finished (shutdown); its scratch was removed")]
    Interrupted { job: String },
}

impl RestoreTestError {
    /// The backup under test, once one was picked.
    pub fn backup(&self) -> Option<&str> {
        match self {
            RestoreTestError::Failed { backup, .. }
            | RestoreTestError::NotARecipient { backup, .. }
            | RestoreTestError::Timeout { backup, .. } => Some(backup),
            _ => None,
        }
    }

    /// The status the catalog records for this error.
    pub fn status(&self) -> TestStatus {
        match self {
            RestoreTestError::Interrupted { .. } => TestStatus::Interrupted,
            _ => TestStatus::Failed,
        }
    }
}

/// A finished test: its catalog ID (if recorded) and its result.
#[derive(Debug)]
pub struct TestOutcome {
    pub test_id: Option<i64>,
    pub result: Result<TestReport, RestoreTestError>,
}

/// Runs one restore test of `job_name` now and records it in `catalog` (if given).
/// `cancel` stops it (shutdown): the scratch is removed, the test recorded as interrupted.
pub async fn run(
    config: &Config,
    repo: &Repository,
    catalog: Option<&Catalog>,
    job_name: &str,
    trigger: &str,
    cancel: &CancellationToken,
) -> TestOutcome {
    let mut test_id = None;
    let result = run_recorded(
        config,
        repo,
        catalog,
        job_name,
        trigger,
        cancel,
        &mut test_id,
    )
    .await;
    if let (Some(c), Some(id)) = (catalog, test_id) {
        let recorded = match &result {
            Ok(report) => c.finish_restore_test(
                id,
                TestStatus::Passed,
                None,
                serde_json::to_value(report).ok().as_ref(),
            ),
            Err(e) => c.finish_restore_test(id, e.status(), Some(&error_chain(e)), None),
        };
        if let Err(e) = recorded {
            tracing::error!(job = job_name, test = id, error = %e, "recording the restore test in the catalog failed");
        }
    }
    match &result {
        Ok(r) => tracing::info!(
            job = job_name,
            test = test_id,
            backup = %r.backup_id,
            tables = r.tables_checked,
            entries = r.entries_checked,
            "restore test passed"
        ),
        Err(e) => {
            tracing::error!(job = job_name, test = test_id, error = %error_chain(e), "restore test failed")
        }
    }
    TestOutcome { test_id, result }
}

async fn run_recorded(
    config: &Config,
    repo: &Repository,
    catalog: Option<&Catalog>,
    job_name: &str,
    trigger: &str,
    cancel: &CancellationToken,
    test_id_out: &mut Option<i64>,
) -> Result<TestReport, RestoreTestError> {
    let job = config
        .job(job_name)
        .ok_or_else(|| RestoreTestError::UnknownJob(job_name.to_string()))?;
    let test = job
        .restore_test
        .as_ref()
        .ok_or_else(|| RestoreTestError::NotConfigured(job_name.to_string()))?;
    let catalog_err = |source: CatalogError| RestoreTestError::Catalog {
        job: job_name.to_string(),
        source: Box::new(source),
    };
    if let Some(c) = catalog {
        match c
            .start_restore_test(job_name, trigger)
            .map_err(catalog_err)?
        {
            Ok(id) => *test_id_out = Some(id),
            Err(busy) => {
                return Err(RestoreTestError::AlreadyRunning {
                    job: job_name.to_string(),
                    test: busy.run,
                    pid: busy.pid,
                })
            }
        }
    }
    let record = pick(repo, config, job_name, test.pick).await?;
    let backup = record.backup_id.to_string();
    let identities =
        keys::load_identities(&test.identity).map_err(|source| RestoreTestError::Keys {
            job: job_name.to_string(),
            source,
        })?;
    let test_id = test_id_out.unwrap_or(0);
    let scratch = restore_test::scratch_for(
        job.kind,
        job_name,
        test_id,
        test,
        &scratch::default_directory_parent(config),
    );
    if let (Some(c), Some(id)) = (catalog, *test_id_out) {
        c.note_restore_test_scratch(
            id,
            &backup,
            scratch.as_ref().map(|s| s.to_json()).as_deref(),
        )
        .map_err(catalog_err)?;
    }
    tracing::info!(job = job_name, test = test_id_out, backup = %backup, "restore test started");
    let stop = cancel.child_token();
    let work = restore_test::run(repo, &record, Arc::new(identities), test, scratch, &stop);
    tokio::pin!(work);
    let (result, timed_out) = match test.timeout {
        Some(after) => tokio::select! {
            r = &mut work => (r, false),
            () = tokio::time::sleep(after) => {
                // Stop the restore and let the test remove its scratch before returning.
                stop.cancel();
                (work.await, true)
            }
        },
        None => (work.await, false),
    };
    match result {
        Ok(report) => Ok(report),
        Err(failure) if failure.is_stop() => Err(if timed_out {
            RestoreTestError::Timeout {
                job: job_name.to_string(),
                backup,
                after: test.timeout.unwrap_or_default(),
            }
        } else {
            RestoreTestError::Interrupted {
                job: job_name.to_string(),
            }
        }),
        Err(TestFailure::Restore(RestoreError::WrongKey { .. })) => {
            Err(RestoreTestError::NotARecipient {
                job: job_name.to_string(),
                backup,
                identity: test.identity.display().to_string(),
            })
        }
        Err(source) => Err(RestoreTestError::Failed {
            job: job_name.to_string(),
            backup,
            source,
        }),
    }
}

/// The backup to test: the newest, or a random one among those retention keeps.
async fn pick(
    repo: &Repository,
    config: &Config,
    job_name: &str,
    how: PickBackup,
) -> Result<CommitRecord, RestoreTestError> {
    let mut records =
        repo.list_commits(Some(job_name))
            .await
            .map_err(|source| RestoreTestError::Repo {
                job: job_name.to_string(),
                source,
            })?;
    records.sort_by(|a, b| b.backup_id.cmp(&a.backup_id));
    if records.is_empty() {
        return Err(RestoreTestError::NoBackup(job_name.to_string()));
    }
    if how == PickBackup::Latest {
        return Ok(records.swap_remove(0));
    }
    let retained: Vec<usize> = match config.job(job_name).and_then(|j| j.retention.as_ref()) {
        Some(policy) => {
            let tz = config
                .job(job_name)
                .and_then(|j| j.timezone.parse::<chrono_tz::Tz>().ok())
                .unwrap_or(chrono_tz::UTC);
            let candidates: Vec<retention::Candidate> = records
                .iter()
                .map(|r| retention::Candidate {
                    id: r.backup_id.to_string(),
                    time: r.started,
                })
                .collect();
            let kept: Vec<String> = retention::apply(&candidates, policy, tz, &[])
                .into_iter()
                .filter(|d| d.keep)
                .map(|d| d.id)
                .collect();
            (0..records.len())
                .filter(|i| kept.contains(&records[*i].backup_id.to_string()))
                .collect()
        }
        None => (0..records.len()).collect(),
    };
    let chosen = match retained.len() {
        0 => 0,
        n => retained[rand::random_range(0..n)],
    };
    Ok(records.swap_remove(chosen))
}
