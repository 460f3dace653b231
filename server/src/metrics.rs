//! Prometheus metrics: what an operator graphs and alerts on. Per job: last run
//! status and time, last success time, duration, bytes read and stored, runs and
//! failures; per daemon: up, start time, configuration reloads. Seeded from the
//! catalog at start so a restart does not reset "last success" to nothing.

use bk_core::catalog::{Catalog, RestoreTestRecord, RunRecord, RunStatus, TestStatus};
use bk_core::config::Config;
use chrono::{DateTime, Utc};
use metrics::{counter, describe_counter, describe_gauge, gauge, Unit};
use metrics_exporter_prometheus::{BuildError, PrometheusBuilder, PrometheusHandle};

const STATUSES: [RunStatus; 4] = [
    RunStatus::Running,
    RunStatus::Success,
    RunStatus::Failed,
    RunStatus::Interrupted,
];

/// Installs the process-wide recorder; its handle renders `/metrics`.
pub fn install() -> Result<PrometheusHandle, BuildError> {
    let handle = PrometheusBuilder::new().install_recorder()?;
    describe_gauge!("bk_up", "1 while bk-server runs");
    describe_gauge!(
        "bk_start_time_seconds",
        Unit::Seconds,
        "When bk-server started (Unix time)"
    );
    describe_gauge!(
        "bk_config_last_reload_successful",
        "1 if the last configuration (re)load succeeded, 0 if it was rejected"
    );
    describe_gauge!(
        "bk_config_last_reload_success_timestamp_seconds",
        Unit::Seconds,
        "When the configuration in force was loaded"
    );
    describe_gauge!("bk_jobs_configured", "Jobs in the configuration in force");
    describe_gauge!("bk_jobs_running", "Backup runs going on now");
    describe_gauge!(
        "bk_job_last_run_status",
        "1 for the status of the job's last run, 0 for the others"
    );
    describe_gauge!(
        "bk_job_last_run_timestamp_seconds",
        Unit::Seconds,
        "When the job's last run started"
    );
    describe_gauge!(
        "bk_job_last_success_timestamp_seconds",
        Unit::Seconds,
        "When the job's newest good backup finished"
    );
    describe_gauge!(
        "bk_job_last_run_duration_seconds",
        Unit::Seconds,
        "How long the job's last run took"
    );
    describe_gauge!(
        "bk_job_last_bytes_read",
        Unit::Bytes,
        "Bytes read from the source by the job's last good backup"
    );
    describe_gauge!(
        "bk_job_last_bytes_stored",
        Unit::Bytes,
        "Bytes stored (payload and manifest) by the job's last good backup"
    );
    describe_gauge!(
        "bk_job_next_run_timestamp_seconds",
        Unit::Seconds,
        "When the job is next scheduled"
    );
    describe_gauge!(
        "bk_job_overdue",
        "1 if the job has no good backup within its expected window"
    );
    describe_gauge!(
        "bk_restore_test_last_status",
        "1 for the status of the job's last restore test (passed, failed, interrupted), 0 for the others"
    );
    describe_gauge!(
        "bk_restore_test_last_timestamp_seconds",
        Unit::Seconds,
        "When the job's last restore test started"
    );
    describe_gauge!(
        "bk_restore_test_last_success_timestamp_seconds",
        Unit::Seconds,
        "When the job's last passed restore test finished"
    );
    describe_gauge!(
        "bk_restore_test_last_duration_seconds",
        Unit::Seconds,
        "How long the job's last restore test took"
    );
    describe_gauge!(
        "bk_restore_test_next_timestamp_seconds",
        Unit::Seconds,
        "When the job's next restore test is scheduled"
    );
    describe_counter!(
        "bk_restore_tests_total",
        "Restore tests finished, by status"
    );
    describe_gauge!(
        "bk_job_last_backup_anomalous",
        "1 if the job's newest good backup looked wrong next to its history (see bk status)"
    );
    describe_counter!(
        "bk_job_anomalies_total",
        "Anomalies found in good backups, by kind (size, files, compression)"
    );
    describe_counter!("bk_job_runs_total", "Runs finished, by status");
    describe_counter!("bk_job_failures_total", "Runs that failed");
    describe_counter!(
        "bk_job_pruned_backups_total",
        "Backups removed by retention"
    );
    describe_counter!(
        "bk_alerts_failed_total",
        "Alerts that could not be delivered"
    );
    gauge!("bk_up").set(1.0);
    gauge!("bk_start_time_seconds").set(unix(Utc::now()));
    Ok(handle)
}

fn unix(t: DateTime<Utc>) -> f64 {
    t.timestamp_millis() as f64 / 1000.0
}

/// Registers every configured job's series, seeded from the catalog.
pub fn seed(config: &Config, catalog: &Catalog) {
    gauge!("bk_jobs_configured").set(config.jobs.len() as f64);
    for name in config.jobs.keys() {
        let job = name.clone();
        counter!("bk_job_failures_total", "job" => job.clone()).increment(0);
        for status in [
            RunStatus::Success,
            RunStatus::Failed,
            RunStatus::Interrupted,
        ] {
            counter!("bk_job_runs_total", "job" => job.clone(), "status" => status.as_str())
                .increment(0);
        }
        gauge!("bk_job_overdue", "job" => job.clone()).set(0.0);
        match catalog.last_run(name) {
            Ok(Some(run)) => last_run(&run),
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(job = %name, error = %e, "reading the last run for metrics failed")
            }
        }
        if config.jobs[name].restore_test.is_some() {
            for status in [
                TestStatus::Passed,
                TestStatus::Failed,
                TestStatus::Interrupted,
            ] {
                counter!("bk_restore_tests_total", "job" => job.clone(), "status" => status.as_str())
                    .increment(0);
            }
            match catalog.restore_tests(Some(name), 50) {
                Ok(tests) => {
                    // The last passed one sets the success time; the last one, the rest.
                    let passed = tests.iter().find(|t| t.status == TestStatus::Passed);
                    for test in passed.into_iter().chain(tests.first()) {
                        restore_test_finished(test, false);
                    }
                }
                Err(e) => {
                    tracing::warn!(job = %name, error = %e, "reading restore tests for metrics failed")
                }
            }
        }
        for kind in ["size", "files", "compression"] {
            counter!("bk_job_anomalies_total", "job" => job.clone(), "kind" => kind).increment(0);
        }
        let last_good = catalog
            .runs(Some(name), 20)
            .ok()
            .and_then(|runs| runs.into_iter().find(|r| r.status == RunStatus::Success));
        gauge!("bk_job_last_backup_anomalous", "job" => job.clone()).set(
            if last_good.is_some_and(|r| !r.anomalies.is_empty()) {
                1.0
            } else {
                0.0
            },
        );
        match catalog.latest_backup(name) {
            Ok(Some(b)) => {
                gauge!("bk_job_last_success_timestamp_seconds", "job" => job.clone())
                    .set(unix(b.finished));
                gauge!("bk_job_last_bytes_read", "job" => job.clone()).set(b.source_size as f64);
                gauge!("bk_job_last_bytes_stored", "job" => job.clone())
                    .set((b.payload.size + b.manifest.size) as f64);
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(job = %name, error = %e, "reading the last backup for metrics failed")
            }
        }
    }
}

/// The state of a job's last run (from the catalog row).
pub fn last_run(run: &RunRecord) {
    let job = run.job.clone();
    for status in STATUSES {
        let on = if status == run.status { 1.0 } else { 0.0 };
        gauge!("bk_job_last_run_status", "job" => job.clone(), "status" => status.as_str()).set(on);
    }
    gauge!("bk_job_last_run_timestamp_seconds", "job" => job.clone()).set(unix(run.started));
    if let Some(finished) = run.finished {
        let secs = (finished - run.started).num_milliseconds().max(0) as f64 / 1000.0;
        gauge!("bk_job_last_run_duration_seconds", "job" => job).set(secs);
    }
}

/// A run has finished with `status`.
pub fn run_finished(
    job: &str,
    status: RunStatus,
    bytes: Option<(u64, u64)>,
    finished: DateTime<Utc>,
) {
    let name = job.to_string();
    counter!("bk_job_runs_total", "job" => name.clone(), "status" => status.as_str()).increment(1);
    if status == RunStatus::Failed {
        counter!("bk_job_failures_total", "job" => name.clone()).increment(1);
    }
    if let Some((read, stored)) = bytes {
        gauge!("bk_job_last_success_timestamp_seconds", "job" => name.clone()).set(unix(finished));
        gauge!("bk_job_last_bytes_read", "job" => name.clone()).set(read as f64);
        gauge!("bk_job_last_bytes_stored", "job" => name).set(stored as f64);
    }
}

pub fn running(delta: f64) {
    gauge!("bk_jobs_running").increment(delta);
}

pub fn next_run(job: &str, at: Option<DateTime<Utc>>) {
    if let Some(at) = at {
        gauge!("bk_job_next_run_timestamp_seconds", "job" => job.to_string()).set(unix(at));
    }
}

pub fn overdue(job: &str, is_overdue: bool) {
    gauge!("bk_job_overdue", "job" => job.to_string()).set(if is_overdue { 1.0 } else { 0.0 });
}

pub fn pruned(job: &str, n: usize) {
    counter!("bk_job_pruned_backups_total", "job" => job.to_string()).increment(n as u64);
}

pub fn alert_failed(kind: &'static str) {
    counter!("bk_alerts_failed_total", "kind" => kind).increment(1);
}

pub fn reload(ok: bool) {
    gauge!("bk_config_last_reload_successful").set(if ok { 1.0 } else { 0.0 });
    if ok {
        gauge!("bk_config_last_reload_success_timestamp_seconds").set(unix(Utc::now()));
    }
}

/// A restore test has finished (`count`: also count it; false when seeding at start).
pub fn restore_test_finished(test: &RestoreTestRecord, count: bool) {
    let job = test.job.clone();
    for status in [
        TestStatus::Passed,
        TestStatus::Failed,
        TestStatus::Interrupted,
    ] {
        let on = if status == test.status { 1.0 } else { 0.0 };
        gauge!("bk_restore_test_last_status", "job" => job.clone(), "status" => status.as_str())
            .set(on);
    }
    gauge!("bk_restore_test_last_timestamp_seconds", "job" => job.clone()).set(unix(test.started));
    if let Some(finished) = test.finished {
        let secs = (finished - test.started).num_milliseconds().max(0) as f64 / 1000.0;
        gauge!("bk_restore_test_last_duration_seconds", "job" => job.clone()).set(secs);
        if test.status == TestStatus::Passed {
            gauge!("bk_restore_test_last_success_timestamp_seconds", "job" => job.clone())
                .set(unix(finished));
        }
    }
    if count {
        counter!("bk_restore_tests_total", "job" => job, "status" => test.status.as_str())
            .increment(1);
    }
}

pub fn next_restore_test(job: &str, at: Option<DateTime<Utc>>) {
    if let Some(at) = at {
        gauge!("bk_restore_test_next_timestamp_seconds", "job" => job.to_string()).set(unix(at));
    }
}

/// A good backup was checked against its job's history.
pub fn anomalies(job: &str, found: &[bk_core::anomaly::Anomaly]) {
    use bk_core::anomaly::Anomaly;
    gauge!("bk_job_last_backup_anomalous", "job" => job.to_string()).set(if found.is_empty() {
        0.0
    } else {
        1.0
    });
    for a in found {
        let kind = match a {
            Anomaly::Size { .. } => "size",
            Anomaly::Files { .. } => "files",
            Anomaly::Compression { .. } => "compression",
        };
        counter!("bk_job_anomalies_total", "job" => job.to_string(), "kind" => kind).increment(1);
    }
}
