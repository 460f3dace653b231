//! Restore tests: proof that a backup restores, made by restoring it for real.
//!
//! A test takes one committed backup and runs the same restore code as `bk restore`
//! (download, check the ciphertext hash, decrypt, decompress, check the plaintext
//! hash), into a scratch target that fits the job's kind:
//!
//! - `postgres` (`mysql`): a fresh scratch database on the test's target server,
//!   filled by `pg_restore` (the `mariadb` client); then per-table row counts are
//!   compared with the manifest's and the job's SQL checks run; the database is dropped.
//! - `directory`: a fresh scratch directory; the extraction is compared with the
//!   manifest on the stream and then again on disk; the directory is removed.
//! - `command`: nothing to restore into: every hash is checked.
//!
//! The scratch resource is removed whatever happens (passed, failed, stopped); a test
//! that never gets the chance (bk killed) leaves a catalog note that `scratch`
//! uses to clean up at the next start. Never touches anything it did not create.

mod mysql;
pub mod on_disk;
mod postgres;
pub mod scratch;

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::config::{JobKind, RestoreTestConfig};
use crate::keys::Identity;
use crate::repo::commit::CommitRecord;
use crate::repo::Repository;
use crate::restore::{self, RestoreError, Sink};
use scratch::Scratch;

/// `table` → rows.
type RowCounts = std::collections::BTreeMap<String, u64>;

/// What a restore test checked. Stored in the catalog as JSON, printed by
/// `bk restore-test`, served by the daemon.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TestReport {
    pub job: String,
    pub backup_id: String,
    pub kind: String,
    /// The scratch database or directory it restored into.
    pub restored_into: Option<String>,
    pub source_size: u64,
    pub stored_size: u64,
    /// Directory entries compared with the manifest (stream and disk).
    pub entries_checked: u64,
    /// Tables whose row counts were compared.
    pub tables_checked: u64,
    pub rows_restored: u64,
    pub checks: Vec<CheckOutcome>,
    /// Facts worth knowing that did not fail the test (e.g. roles missing on the target).
    pub notes: Vec<String>,
    #[serde(with = "humantime_serde")]
    pub elapsed: Duration,
}

#[derive(Debug, Clone, Serialize)]
pub struct CheckOutcome {
    pub sql: String,
    pub passed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// Why a restore test failed.
#[derive(Debug, thiserror::Error)]
pub enum TestFailure {
    #[error(transparent)]
    Restore(#[from] RestoreError),
    #[error("the backup's dump is {size} bytes, above restore_test.max_size ({limit} bytes)")]
    TooLarge { size: u64, limit: u64 },
    #[error(transparent)]
    Target(#[from] crate::restore::postgres::PgTargetError),
    #[error(transparent)]
    MysqlTarget(#[from] crate::restore::mysql::MyTargetError),
    #[error("roles of the dump do not exist on the target ({roles}) and restore_test.require_roles is set: create them there first")]
    MissingRoles { roles: String },
    #[error("row counts differ from the manifest: {0}")]
    RowCounts(String),
    #[error("check `{sql}` failed: {reason}")]
    Check { sql: String, reason: String },
    #[error("the restored files differ from the manifest: {0}")]
    OnDisk(String),
    #[error("cannot prepare {what}: {source}")]
    Scratch {
        what: String,
        source: std::io::Error,
    },
    #[error("removing the {what} failed ({reason}): remove it by hand")]
    Cleanup { what: String, reason: String },
    #[error("restore tests of `{0}` jobs are not supported")]
    Unsupported(String),
}

impl TestFailure {
    /// The test was stopped from outside (shutdown, timeout), not failed by the backup.
    pub fn is_stop(&self) -> bool {
        matches!(self, TestFailure::Restore(RestoreError::Stopped))
    }
}

/// Restores `record` into `scratch` and checks it; removes the scratch in every case.
/// The caller records `scratch` in the catalog before calling this.
pub async fn run(
    repo: &Repository,
    record: &CommitRecord,
    identities: Arc<Vec<Identity>>,
    test: &RestoreTestConfig,
    scratch: Option<Scratch>,
    stop: &CancellationToken,
) -> Result<TestReport, TestFailure> {
    let clock = Instant::now();
    let mut report = TestReport {
        job: record.job.clone(),
        backup_id: record.backup_id.to_string(),
        kind: record.kind.clone(),
        restored_into: scratch.as_ref().map(Scratch::describe),
        source_size: record.source_size,
        stored_size: record.payload.size + record.manifest.size,
        ..TestReport::default()
    };
    if let Some(limit) = test.max_size.map(|s| s.bytes()) {
        if record.source_size > limit {
            return Err(TestFailure::TooLarge {
                size: record.source_size,
                limit,
            });
        }
    }
    let outcome = match (&scratch, record.kind.as_str()) {
        (Some(Scratch::Postgres { database }), "postgres") => {
            postgres::test(repo, record, identities, test, database, stop, &mut report).await
        }
        (Some(Scratch::Mysql { database }), "mysql") => {
            mysql::test(repo, record, identities, test, database, stop, &mut report).await
        }
        (Some(Scratch::Directory { path }), "directory") => {
            directory(repo, record, identities, path, stop, &mut report).await
        }
        (None, "command") => restore::restore_until(repo, record, identities, Sink::Verify, stop)
            .await
            .map(|_| ())
            .map_err(TestFailure::from),
        (_, kind) => Err(TestFailure::Unsupported(kind.to_string())),
    };
    let cleanup = match &scratch {
        Some(s) => s
            .remove(test.target.as_deref())
            .await
            .map_err(|reason| TestFailure::Cleanup {
                what: s.describe(),
                reason,
            }),
        None => Ok(()),
    };
    outcome?;
    cleanup?;
    report.elapsed = clock.elapsed();
    Ok(report)
}

/// The scratch a test of `kind` needs (`None` for `command` jobs).
pub fn scratch_for(
    kind: JobKind,
    job: &str,
    test_id: i64,
    test: &RestoreTestConfig,
    default_parent: &std::path::Path,
) -> Option<Scratch> {
    match kind {
        JobKind::Postgres => Some(Scratch::database(job, test_id)),
        JobKind::Directory => {
            let parent = test
                .target
                .as_deref()
                .map(std::path::PathBuf::from)
                .unwrap_or_else(|| default_parent.to_path_buf());
            Some(Scratch::directory(&parent, job, test_id))
        }
        JobKind::Mysql => Some(Scratch::mysql_database(job, test_id)),
        JobKind::Command => None,
    }
}

async fn directory(
    repo: &Repository,
    record: &CommitRecord,
    identities: Arc<Vec<Identity>>,
    path: &std::path::Path,
    stop: &CancellationToken,
    report: &mut TestReport,
) -> Result<(), TestFailure> {
    if let Some(parent) = path.parent() {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)
            .map_err(|source| TestFailure::Scratch {
                what: format!("the scratch directory's parent {}", parent.display()),
                source,
            })?;
    }
    let sink = Sink::Directory {
        path: path.to_path_buf(),
        keep_special_bits: false,
    };
    let restored = restore::restore_until(repo, record, identities.clone(), sink, stop).await?;
    let mut manifest = restore::fetch_manifest(repo, record, identities).await?;
    let root = path.to_path_buf();
    let on_disk = tokio::task::spawn_blocking(move || on_disk::compare(&root, &mut manifest))
        .await
        .map_err(|e| TestFailure::OnDisk(e.to_string()))?
        .map_err(TestFailure::OnDisk)?;
    report.entries_checked = restored.entries_checked.max(on_disk);
    Ok(())
}

/// Adds one SQL check's outcome to the report. Every check runs; the first one that
/// failed (false, or an error) is the test's failure, kept in `first_failure`.
fn record_check(
    sql: &str,
    outcome: Result<(), String>,
    report: &mut TestReport,
    first_failure: &mut Option<TestFailure>,
) {
    if let (Err(reason), None) = (&outcome, &first_failure) {
        *first_failure = Some(TestFailure::Check {
            sql: sql.to_string(),
            reason: reason.clone(),
        });
    }
    report.checks.push(CheckOutcome {
        sql: sql.to_string(),
        passed: outcome.is_ok(),
        detail: outcome.err(),
    });
}

/// Row counts of the restored database against the manifest's. Tables missing or
/// extra always fail; differing counts fail when the counts were exact (taken in the
/// dump's own state), and are noted otherwise, since the dump's snapshot may then
/// legitimately differ from counts taken just before it.
fn compare_row_counts(
    expected: &RowCounts,
    exact: bool,
    found: &RowCounts,
    report: &mut TestReport,
) -> Result<(), TestFailure> {
    tally(found, report);
    if let Some(table) = expected.keys().find(|t| !found.contains_key(*t)) {
        return Err(TestFailure::RowCounts(format!(
            "table {table} is in the manifest but not in the restored database"
        )));
    }
    if let Some(table) = found.keys().find(|t| !expected.contains_key(*t)) {
        return Err(TestFailure::RowCounts(format!(
            "table {table} is in the restored database but not in the manifest"
        )));
    }
    let differing = differing_counts(expected, found);
    if differing.is_empty() {
        return Ok(());
    }
    if exact {
        return Err(TestFailure::RowCounts(differing.join("; ")));
    }
    report.notes.push(format!(
        "row counts differ from those recorded just before the dump ({}); they were not \
         exact (for postgres, pause_replay = true makes them exact)",
        differing.join("; ")
    ));
    Ok(())
}

/// Row counts of the restored database against those counted in the dump itself
/// (`row_counts_from = "dump"`): exact, table by table, each table's own rows. A
/// restored table the dump held no data for (an unlogged table dumped from a standby)
/// must be empty.
fn compare_dump_row_counts(
    expected: &RowCounts,
    found: &RowCounts,
    report: &mut TestReport,
) -> Result<(), TestFailure> {
    tally(found, report);
    if let Some(table) = expected.keys().find(|t| !found.contains_key(*t)) {
        return Err(TestFailure::RowCounts(format!(
            "table {table} has data in the dump but is not in the restored database"
        )));
    }
    let mut wrong = differing_counts(expected, found);
    wrong.extend(
        found
            .iter()
            .filter(|(t, n)| !expected.contains_key(*t) && **n > 0)
            .map(|(t, n)| format!("{t}: {n} restored, none in the dump")),
    );
    if wrong.is_empty() {
        Ok(())
    } else {
        Err(TestFailure::RowCounts(wrong.join("; ")))
    }
}

fn tally(found: &RowCounts, report: &mut TestReport) {
    report.tables_checked = found.len() as u64;
    report.rows_restored = found.values().sum();
}

/// `table: N restored, M recorded` for every expected table found with another count
/// (every expected table must be in `found`).
fn differing_counts(expected: &RowCounts, found: &RowCounts) -> Vec<String> {
    expected
        .iter()
        .filter_map(|(t, n)| match found.get(t) {
            Some(got) if got != n => Some(format!("{t}: {got} restored, {n} recorded")),
            _ => None,
        })
        .collect()
}

/// Whether the manifest's row counts were counted in the dump's own data.
fn counted_from_dump(header: &crate::repo::manifest::ManifestHeader) -> bool {
    header
        .details
        .get("row_counts_from")
        .and_then(|v| v.as_str())
        == Some("dump")
}

/// The manifest's row counts and whether they are exact, if it recorded any.
fn recorded_row_counts(
    header: &crate::repo::manifest::ManifestHeader,
) -> Result<Option<(RowCounts, bool)>, TestFailure> {
    let Some(counts) = header.details.get("row_counts") else {
        return Ok(None);
    };
    let counts = serde_json::from_value(counts.clone())
        .map_err(|e| TestFailure::RowCounts(format!("the manifest's row counts: {e}")))?;
    let exact = header
        .details
        .get("row_counts_exact")
        .and_then(|v| v.as_bool())
        .unwrap_or(false);
    Ok(Some((counts, exact)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(pairs: &[(&str, u64)]) -> RowCounts {
        pairs.iter().map(|(t, n)| (t.to_string(), *n)).collect()
    }

    #[test]
    fn counts_from_the_dump_must_match_table_by_table() {
        let dumped = counts(&[("public.a", 3), ("public.empty", 0)]);
        let mut report = TestReport::default();
        // An unlogged table the dump held no data for is restored empty: fine.
        let restored = counts(&[("public.a", 3), ("public.empty", 0), ("public.unl", 0)]);
        compare_dump_row_counts(&dumped, &restored, &mut report).expect("matches");
        assert_eq!((report.tables_checked, report.rows_restored), (3, 3));

        let fails = |restored: RowCounts| match compare_dump_row_counts(
            &dumped,
            &restored,
            &mut TestReport::default(),
        ) {
            Err(TestFailure::RowCounts(reason)) => reason,
            other => panic!("{other:?}"),
        };
        let reason = fails(counts(&[("public.a", 2), ("public.empty", 0)]));
        assert_eq!(reason, "public.a: 2 restored, 3 recorded");
        let reason = fails(counts(&[("public.a", 3)]));
        assert!(
            reason.contains("public.empty has data in the dump"),
            "{reason}"
        );
        let reason = fails(counts(&[("public.a", 3), ("public.empty", 0), ("x.y", 1)]));
        assert_eq!(reason, "x.y: 1 restored, none in the dump");
    }
}
