//! `bk run JOB`: one backup, start to commit.
//!
//! Order of events, and why: the payload is streamed to a multipart upload that is
//! completed only after the source exited successfully; then the manifest is
//! written; then, last, the commit record (create-only). A failure at any point
//! before the commit record leaves nothing that `bk list` or a restore would accept,
//! and the objects already written are removed (or left to `bk gc`).
//! Never commits a backup whose source did not exit successfully.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use object_store::ObjectStoreExt;
use tokio_util::sync::CancellationToken;

use crate::anomaly::{self, Anomaly, Figures};
use crate::catalog::{Catalog, CatalogError, RunStatus};
use crate::config::{ByteSize, Config, JobConfig, JobKind};
pub use crate::error_chain;
use crate::keys::{self, KeyError};
use crate::pipeline::handoff::{self, ReadAhead};
use crate::pipeline::{self, hash::copy_large, PipelineError, SealSettings};
use crate::repo::commit::{self, CommitRecord, StoredObject};
use crate::repo::id::BackupId;
use crate::repo::manifest::{self, EntrySpool, ManifestHeader};
use crate::repo::{layout, RepoError, Repository};
use crate::source::limit::{RateLimit, SizeLimit};
use crate::source::pg_archive;
use crate::source::tar_index::{self, Tee};
use crate::source::{self, DumpPlan, RunningSource, SourceError, SourceHost};

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("job `{0}` is not in the configuration")]
    UnknownJob(String),
    #[error("job `{job}`: {source}")]
    Keys { job: String, source: KeyError },
    #[error("job `{job}`: {source}")]
    Repo { job: String, source: RepoError },
    #[error("job `{job}`: {source}")]
    Source {
        job: String,
        source: Box<SourceError>,
    },
    #[error("job `{job}`: {source}")]
    Pipeline { job: String, source: PipelineError },
    #[error("job `{job}`: writing the manifest: {source}")]
    Manifest { job: String, source: std::io::Error },
    #[error("job `{job}`: {source}")]
    Catalog {
        job: String,
        source: Box<CatalogError>,
    },
    #[error("job `{job}` did not finish within its timeout of {}; the source was stopped and nothing was committed", humantime::format_duration(*.after))]
    Timeout { job: String, after: Duration },
    #[error("job `{job}`: the source sent more than its max_size of {limit}; it was stopped and nothing was committed")]
    TooLarge { job: String, limit: ByteSize },
    #[error("job `{job}` was stopped before it finished (shutdown); nothing was committed")]
    Interrupted { job: String },
    #[error("job `{job}` is already running (run {run}, {trigger}, process {pid}); not starting it twice")]
    AlreadyRunning {
        job: String,
        run: i64,
        pid: i64,
        trigger: String,
    },
}

/// How long a cancelled run waits for its pipeline to wind down after the source was
/// stopped, before abandoning it (the upload is then never completed).
pub const CANCEL_DRAIN: Duration = Duration::from_secs(15);

/// Blocks of the source's bytes read ahead and waiting to be parsed.
const SOURCE_DEPTH: usize = 2;

/// A finished run: its catalog ID (if a catalog was given) and its result.
#[derive(Debug)]
pub struct RunOutcome {
    pub run_id: Option<i64>,
    pub result: Result<BackupReport, BackupError>,
}

/// What a successful backup produced.
#[derive(Debug, Clone)]
pub struct BackupReport {
    pub record: CommitRecord,
    pub warnings: Vec<String>,
    pub entries: u64,
    pub elapsed: Duration,
    /// What looks wrong next to the job's recent history (the backup is committed).
    pub anomalies: Vec<Anomaly>,
}

/// Runs one backup of `job_name` and records the run in the catalog (if given).
pub async fn run(
    config: &Config,
    repo: &Repository,
    catalog: Option<&Catalog>,
    job_name: &str,
    trigger: &str,
) -> Result<BackupReport, BackupError> {
    let never = CancellationToken::new();
    run_with(config, repo, catalog, job_name, trigger, &never)
        .await
        .result
}

/// `run`, stoppable from outside: once `cancel` fires, the source is stopped, the
/// upload aborted, nothing is committed and the run is recorded as interrupted. A
/// run that is already writing its manifest and commit record finishes them first,
/// so a backup is either fully committed or absent.
pub async fn run_with(
    config: &Config,
    repo: &Repository,
    catalog: Option<&Catalog>,
    job_name: &str,
    trigger: &str,
    cancel: &CancellationToken,
) -> RunOutcome {
    let mut run_id = None;
    let result = run_recorded(
        config,
        repo,
        catalog,
        job_name,
        trigger,
        cancel,
        &mut run_id,
    )
    .await;
    RunOutcome { run_id, result }
}

async fn run_recorded(
    config: &Config,
    repo: &Repository,
    catalog: Option<&Catalog>,
    job_name: &str,
    trigger: &str,
    cancel: &CancellationToken,
    run_id_out: &mut Option<i64>,
) -> Result<BackupReport, BackupError> {
    let job = config
        .job(job_name)
        .ok_or_else(|| BackupError::UnknownJob(job_name.to_string()))?;
    let catalog_err = |source: CatalogError| BackupError::Catalog {
        job: job_name.to_string(),
        source: Box::new(source),
    };
    let run_id = match catalog {
        Some(c) => {
            c.note_job(job_name, job.kind.as_str(), &job.host)
                .map_err(catalog_err)?;
            match c
                .start_run_exclusive(job_name, trigger)
                .map_err(catalog_err)?
            {
                Ok(id) => Some(id),
                Err(busy) => {
                    return Err(BackupError::AlreadyRunning {
                        job: job_name.to_string(),
                        run: busy.run,
                        pid: busy.pid,
                        trigger: busy.trigger,
                    })
                }
            }
        }
        None => None,
    };
    *run_id_out = run_id;
    if let Some(id) = run_id {
        // The daemon runs each job in a span with an empty `run` field: fill it in so
        // that every line of this run, from any layer, carries the run ID.
        tracing::Span::current().record("run", id);
    }
    tracing::info!(job = job_name, run = run_id, host = %job.host, kind = job.kind.as_str(), "backup started");
    // A timeout stops the run the way a shutdown does (source killed, upload aborted),
    // then reports itself as the cause; a run already committing finishes that first.
    let deadline = cancel.child_token();
    let attempt = attempt_with_retries(config, repo, job_name, job, &deadline);
    let result = match job.timeout {
        Some(after) => {
            tokio::pin!(attempt);
            tokio::select! {
                result = &mut attempt => result,
                () = tokio::time::sleep(after) => {
                    deadline.cancel();
                    let drained = tokio::time::timeout(CANCEL_DRAIN, attempt).await;
                    if let Ok(Ok(committed)) = drained {
                        Ok(committed)
                    } else if cancel.is_cancelled() {
                        Err(BackupError::Interrupted { job: job_name.to_string() })
                    } else {
                        Err(BackupError::Timeout { job: job_name.to_string(), after })
                    }
                }
            }
        }
        None => attempt.await,
    };
    match &result {
        Ok(report) => tracing::info!(
            job = job_name,
            run = run_id,
            backup = %report.record.backup_id,
            bytes_in = report.record.source_size,
            bytes_stored = report.record.payload.size + report.record.manifest.size,
            "backup committed"
        ),
        Err(e) => {
            tracing::error!(job = job_name, run = run_id, error = %error_chain(e), "backup failed")
        }
    }
    let mut result = result;
    if let (Ok(report), Some(c), Some(run_id)) = (&mut result, catalog, run_id) {
        report.anomalies = check_anomalies(config, c, job_name, run_id, report);
    }
    if let (Some(c), Some(run_id)) = (catalog, run_id) {
        let recorded = match &result {
            Ok(report) => c.finish_run(run_id, RunStatus::Success, None, Some(&report.record)),
            Err(e @ BackupError::Interrupted { .. }) => {
                c.finish_run(run_id, RunStatus::Interrupted, Some(&error_chain(e)), None)
            }
            Err(e) => c.finish_run(run_id, RunStatus::Failed, Some(&error_chain(e)), None),
        };
        if let Err(e) = recorded {
            tracing::error!(job = job_name, run = run_id, error = %e, "recording the run in the catalog failed");
            if result.is_ok() {
                return Err(catalog_err(e));
            }
        }
    }
    result
}

/// Compares a committed backup with the job's recent good runs; logs and records
/// what looks wrong. Never fails the run: an anomaly is for a human to look at.
fn check_anomalies(
    config: &Config,
    catalog: &Catalog,
    job_name: &str,
    run_id: i64,
    report: &BackupReport,
) -> Vec<Anomaly> {
    let rules = config.anomaly_rules(job_name);
    let record = &report.record;
    let figures = Figures {
        source_size: record.source_size,
        stored_size: record.payload.size + record.manifest.size,
        entries: report.entries,
    };
    let history = catalog
        .good_run_figures(job_name, run_id, rules.history)
        .unwrap_or_else(|e| {
            tracing::warn!(job = job_name, error = %e, "reading the job's history failed; no anomaly check");
            Vec::new()
        });
    let found = anomaly::detect(&figures, &history, rules);
    for a in &found {
        tracing::warn!(
            job = job_name,
            run = run_id,
            backup = %record.backup_id,
            "anomaly: {a}; the backup is committed: look at it before retention removes older ones"
        );
    }
    if let Err(e) = catalog.note_run_figures(run_id, report.entries, &found) {
        tracing::warn!(job = job_name, error = %e, "recording the backup's figures failed");
    }
    found
}

/// Runs `attempt`, again after a hot standby cancelled the dump ("conflict with
/// recovery"), waiting 5 s, 10 s, 20 s… in between, up to the job's `conflict_retries`.
async fn attempt_with_retries(
    config: &Config,
    repo: &Repository,
    job_name: &str,
    job: &JobConfig,
    cancel: &CancellationToken,
) -> Result<BackupReport, BackupError> {
    let mut retries = 0;
    loop {
        let result = attempt(config, repo, job_name, job, cancel).await;
        let conflict = matches!(&result, Err(BackupError::Source { source, .. })
            if source::postgres::is_recovery_conflict(source));
        if !conflict || retries >= job.conflict_retries || cancel.is_cancelled() {
            return result;
        }
        let wait = Duration::from_secs(5 << retries.min(6));
        tracing::warn!(
            job = job_name,
            retry = retries + 1,
            "the replica cancelled the dump (conflict with recovery); retrying in {}s",
            wait.as_secs()
        );
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = cancel.cancelled() => return result,
        }
        retries += 1;
    }
}

async fn attempt(
    config: &Config,
    repo: &Repository,
    job_name: &str,
    job: &JobConfig,
    cancel: &CancellationToken,
) -> Result<BackupReport, BackupError> {
    let clock = Instant::now();
    let name = job_name.to_string();
    let repo_err = |source| BackupError::Repo {
        job: name.clone(),
        source,
    };
    let source_err = |source: SourceError| BackupError::Source {
        job: name.clone(),
        source: Box::new(source),
    };
    let pipe_err = |source| BackupError::Pipeline {
        job: name.clone(),
        source,
    };

    let recipients = keys::parse_recipients(&config.repository.recipients).map_err(|source| {
        BackupError::Keys {
            job: name.clone(),
            source,
        }
    })?;
    let settings = SealSettings {
        compression: config.compression.clone(),
        recipients: Arc::new(recipients),
        part_size: config.repository.part_size.bytes() as usize,
        upload_concurrency: config.repository.upload_concurrency,
        local_root: repo.local_root(),
    };
    repo.init().await.map_err(repo_err)?;
    let plan = DumpPlan::for_job(job).map_err(source_err)?;
    let host = SourceHost::resolve(config, &job.host).map_err(source_err)?;
    // Database checks (replica, lag), the replay pause; the globals run beside the dump.
    let pg = match job.kind {
        JobKind::Postgres => Some(
            source::postgres::PgSession::begin(&host, job_name, job)
                .await
                .map_err(source_err)?,
        ),
        _ => None,
    };
    let mysql = match job.kind {
        JobKind::Mysql => Some(
            source::mysql::MySqlSession::begin(&host, job_name, job)
                .await
                .map_err(source_err)?,
        ),
        _ => None,
    };
    let started = Utc::now();
    let id = BackupId::new(started);
    let mut tool_versions = BTreeMap::from([("bk".to_string(), crate::VERSION.to_string())]);
    tool_versions.insert("zstd".into(), zstd::zstd_safe::version_string().to_string());
    // The dump tool's version is asked beside the dump, not before it.
    let version_query = plan.version_command.clone().map(|cmd| {
        let host = host.clone();
        tokio_util::task::AbortOnDropHandle::new(tokio::spawn(async move {
            host.first_line(&cmd).await
        }))
    });

    let stall = Some(job.stall_timeout).filter(|t| !t.is_zero());
    let mut running = RunningSource::start(&host, &plan.command, stall)
        .await
        .map_err(source_err)?;
    let interrupted = || BackupError::Interrupted { job: name.clone() };
    if cancel.is_cancelled() {
        running.kill().await;
        return Err(interrupted());
    }
    let stdout = running.take_stdout();
    let too_large = Arc::new(AtomicBool::new(false));
    let limit = job.max_size.map(|max| (max, too_large.clone()));
    let rate = job
        .bandwidth_limit
        .or_else(|| config.hosts.get(&job.host).and_then(|h| h.bandwidth_limit));
    let is_tar = plan.kind == JobKind::Directory;
    let is_pg_dump = plan.kind == JobKind::Postgres;
    let payload_key = layout::payload(job_name, &id);
    let sealing = pipeline::seal(
        repo.store().clone(),
        payload_key.clone(),
        &settings,
        move |out| {
            let stdout: Box<dyn std::io::Read + Send> = match rate {
                Some(rate) => Box::new(RateLimit::new(stdout, rate)),
                None => Box::new(stdout),
            };
            let stdout: Box<dyn std::io::Read + Send> = match limit {
                Some((max, flag)) => Box::new(SizeLimit::new(stdout, max, flag)),
                None => stdout,
            };
            // The source is read on a thread of its own, so waiting for the next bytes
            // never holds up parsing, hashing and compressing the ones already here.
            let input = ReadAhead::spawn("bk-source", stdout, handoff::BLOCK, SOURCE_DEPTH)?;
            let mut spool = EntrySpool::new()?;
            let mut row_counts = None;
            if is_tar {
                tar_index::index(input, out, &mut spool)?;
            } else if is_pg_dump {
                row_counts = Some(pg_archive::count_rows(Tee::new(input, out))?);
            } else {
                let mut input = input;
                copy_large(&mut input, out)?;
            }
            Ok((spool, row_counts))
        },
    );
    tokio::pin!(sealing);
    let sealed = tokio::select! {
        sealed = &mut sealing => sealed,
        () = cancel.cancelled() => {
            // Stopping the source ends the stream; the upload it fed is then aborted
            // (or, if the pipeline hangs, abandoned uncompleted).
            running.kill().await;
            if let Ok(Ok(sealed)) = tokio::time::timeout(CANCEL_DRAIN, sealing).await {
                sealed.upload.abort().await;
            }
            return Err(interrupted());
        }
    };

    let sealed = match sealed {
        Ok(sealed) => sealed,
        Err(e) => {
            // When the upload failed, that is the cause, and a source that then died of
            // SIGPIPE or SIGKILL is its symptom. When reading the stream failed (e.g. a
            // tar that does not parse), a source that failed on its own is the cause.
            if running.try_outcome().is_none() {
                running.kill().await;
            }
            if too_large.load(Ordering::SeqCst) {
                let _ = running.wait().await;
                return Err(BackupError::TooLarge {
                    job: name.clone(),
                    limit: job.max_size.unwrap_or(ByteSize(0)),
                });
            }
            let (outcome, stderr) = running.wait().await;
            let symptom = matches!(
                outcome,
                source::ExitOutcome::Signal(libc::SIGKILL | libc::SIGPIPE)
                    | source::ExitOutcome::Code(141)
            );
            if !matches!(e, PipelineError::Upload { .. }) && !symptom {
                plan.judge(&job.host, outcome, stderr).map_err(source_err)?;
            }
            return Err(pipe_err(e));
        }
    };
    let pipeline::Sealed {
        output: (spool, row_counts),
        plain,
        cipher,
        upload,
    } = sealed;
    let (outcome, stderr) = running.wait().await;
    let mut details = BTreeMap::new();
    let mut source_warnings = Vec::new();
    if let Some(pg) = pg {
        // Replay must be running again before anything else is decided.
        match pg.finish(job).await {
            Ok((d, w)) => (details, source_warnings) = (d, w),
            Err(e) => {
                upload.abort().await;
                return Err(source_err(e));
            }
        }
    }
    if let Some(mysql) = mysql {
        (details, source_warnings) = mysql.finish(job).await;
    }
    match row_counts {
        None => {}
        Some(Ok(counts)) => {
            details.insert("row_counts".into(), serde_json::json!(counts));
            details.insert("row_counts_exact".into(), serde_json::Value::Bool(true));
            details.insert("row_counts_from".into(), "dump".into());
        }
        Some(Err(e)) => source_warnings.push(format!(
            "no row counts recorded (restore tests will compare none): {e}"
        )),
    }
    if cancel.is_cancelled() {
        upload.abort().await;
        return Err(interrupted());
    }
    let warnings = match plan.judge(&job.host, outcome, stderr) {
        Ok(mut w) => {
            w.extend(source_warnings);
            w
        }
        Err(e) => {
            upload.abort().await;
            return Err(source_err(e));
        }
    };
    for w in &warnings {
        tracing::warn!(job = job_name, backup = %id, "source warning: {w}");
    }
    upload.finish().await.map_err(pipe_err)?;
    if let Some(query) = version_query {
        if let Ok(Some(v)) = query.await {
            tool_versions.insert(job.kind.as_str().to_string(), v);
        }
    }

    let header = ManifestHeader {
        format: manifest::FORMAT.into(),
        version: manifest::VERSION,
        backup_id: id.clone(),
        job: job_name.to_string(),
        kind: job.kind.as_str().into(),
        host: job.host.clone(),
        source: plan.describe.clone(),
        started,
        finished: Utc::now(),
        source_size: plain.size,
        source_blake3: plain.blake3.clone(),
        zstd_level: config.compression.level,
        tool_versions,
        warnings: warnings.clone(),
        entries: 0,
        details,
    };
    let entries = spool.count();
    let stored = commit_objects(
        config, repo, &settings, job_name, job, &id, header, spool, cipher,
    )
    .await;
    match stored {
        Ok(record) => Ok(BackupReport {
            record,
            warnings,
            entries,
            elapsed: clock.elapsed(),
            anomalies: Vec::new(),
        }),
        Err(e) => {
            // Nothing is committed; remove what was written so no orphan waits for gc.
            for key in [
                layout::payload(job_name, &id),
                layout::manifest(job_name, &id),
            ] {
                let _ = repo.store().delete(&key).await;
            }
            Err(e)
        }
    }
}

/// Writes the manifest and then, last, the commit record.
#[allow(clippy::too_many_arguments)]
async fn commit_objects(
    config: &Config,
    repo: &Repository,
    settings: &SealSettings,
    job_name: &str,
    job: &JobConfig,
    id: &BackupId,
    header: ManifestHeader,
    spool: EntrySpool,
    payload: pipeline::Digest,
) -> Result<CommitRecord, BackupError> {
    let name = job_name.to_string();
    let started = header.started;
    let source_size = header.source_size;
    let mut manifest_input =
        spool
            .into_manifest(header)
            .map_err(|source| BackupError::Manifest {
                job: name.clone(),
                source,
            })?;
    let manifest_key = layout::manifest(job_name, id);
    let manifest = pipeline::seal(
        repo.store().clone(),
        manifest_key.clone(),
        settings,
        move |out| copy_large(&mut manifest_input, out),
    )
    .await
    .map_err(|source| BackupError::Pipeline {
        job: name.clone(),
        source,
    })?;
    manifest
        .upload
        .finish()
        .await
        .map_err(|source| BackupError::Pipeline {
            job: name.clone(),
            source,
        })?;

    let record = CommitRecord {
        format: commit::FORMAT.into(),
        version: commit::VERSION,
        backup_id: id.clone(),
        job: job_name.to_string(),
        kind: job.kind.as_str().into(),
        host: job.host.clone(),
        started,
        finished: Utc::now(),
        writer: crate::catalog::hostname(),
        source_size,
        payload: StoredObject {
            key: layout::payload(job_name, id).to_string(),
            size: payload.size,
            blake3: payload.blake3,
        },
        manifest: StoredObject {
            key: manifest_key.to_string(),
            size: manifest.cipher.size,
            blake3: manifest.cipher.blake3,
        },
        recipients: config.repository.recipients.clone(),
    };
    repo.put_commit(&record)
        .await
        .map_err(|source| BackupError::Repo { job: name, source })?;
    Ok(record)
}
