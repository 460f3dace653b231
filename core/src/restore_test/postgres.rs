//! The database half of a `postgres` restore test: roles, scratch database,
//! `pg_restore`, row counts, SQL checks. The caller drops the scratch database.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::{CheckOutcome, TestFailure, TestReport};
use crate::config::RestoreTestConfig;
use crate::keys::Identity;
use crate::repo::commit::CommitRecord;
use crate::repo::manifest::ManifestHeader;
use crate::repo::Repository;
use crate::restore;
use crate::restore::postgres::{roles_in_globals, PgTarget};

pub(super) async fn test(
    repo: &Repository,
    record: &CommitRecord,
    identities: Arc<Vec<Identity>>,
    test: &RestoreTestConfig,
    database: &str,
    stop: &CancellationToken,
    report: &mut TestReport,
) -> Result<(), TestFailure> {
    let server = PgTarget::parse(test.target.as_deref().unwrap_or_default())?;
    let header = restore::fetch_manifest(repo, record, identities.clone())
        .await?
        .header;
    let no_owner = roles(&server, &header, test, report).await?;
    server.create_database(database).await?;
    let scratch = server.with_database(database);
    restore::postgres::restore_dump(&scratch, repo, record, identities, no_owner, stop).await?;
    compare_row_counts(&scratch, &header, report).await?;
    run_checks(&scratch, &test.checks, report).await
}

/// Decides how ownership is restored: with owners when every role of the dump's
/// globals exists on the target; otherwise without owners and privileges, naming the
/// missing roles in the notes (or failing, with `require_roles`). Never silent.
async fn roles(
    server: &PgTarget,
    header: &ManifestHeader,
    test: &RestoreTestConfig,
    report: &mut TestReport,
) -> Result<bool, TestFailure> {
    let globals = header
        .details
        .get("pg_globals")
        .and_then(|g| g.as_str())
        .unwrap_or_default();
    let existing = server.roles().await?;
    let missing: Vec<String> = roles_in_globals(globals)
        .into_iter()
        .filter(|r| !existing.contains(r))
        .collect();
    if missing.is_empty() {
        return Ok(false);
    }
    let roles = missing.join(", ");
    if test.require_roles {
        return Err(TestFailure::MissingRoles { roles });
    }
    report.notes.push(format!(
        "roles of the dump do not exist on the target ({roles}): restored without owners \
         and privileges (set restore_test.require_roles = true to fail instead)"
    ));
    Ok(true)
}

/// Row counts of the restored database against the manifest's. Tables missing or
/// extra always fail; differing counts fail when the counts were exact (taken while
/// replay was paused), and are noted otherwise, since the dump's snapshot may then
/// legitimately differ from counts taken just before it.
async fn compare_row_counts(
    scratch: &PgTarget,
    header: &ManifestHeader,
    report: &mut TestReport,
) -> Result<(), TestFailure> {
    let Some(expected) = header.details.get("row_counts") else {
        report
            .notes
            .push("the manifest holds no row counts; none compared".into());
        return Ok(());
    };
    let expected: BTreeMap<String, u64> = serde_json::from_value(expected.clone())
        .map_err(|e| TestFailure::RowCounts(format!("the manifest's row counts: {e}")))?;
    let exact = header
        .details
        .get("row_counts_exact")
        .and_then(|v| v.as_bool())
        .unwrap_or(false);
    let found = scratch.row_counts().await?;
    report.tables_checked = found.len() as u64;
    report.rows_restored = found.values().sum();
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
    let differing: Vec<String> = expected
        .iter()
        .filter(|(t, n)| found.get(*t) != Some(n))
        .map(|(t, n)| format!("{t}: {} restored, {n} recorded", found[t]))
        .collect();
    if differing.is_empty() {
        return Ok(());
    }
    if exact {
        return Err(TestFailure::RowCounts(differing.join("; ")));
    }
    report.notes.push(format!(
        "row counts differ from those recorded before the dump ({}); they were not taken \
         while replay was paused (pause_replay = true makes them exact)",
        differing.join("; ")
    ));
    Ok(())
}

/// Runs every check; the test fails on the first false or failing one, after all ran.
async fn run_checks(
    scratch: &PgTarget,
    checks: &[String],
    report: &mut TestReport,
) -> Result<(), TestFailure> {
    let mut first_failure = None;
    for sql in checks {
        let outcome = scratch.check(sql).await?;
        if let (Err(reason), None) = (&outcome, &first_failure) {
            first_failure = Some(TestFailure::Check {
                sql: sql.clone(),
                reason: reason.clone(),
            });
        }
        report.checks.push(CheckOutcome {
            sql: sql.clone(),
            passed: outcome.is_ok(),
            detail: outcome.err(),
        });
    }
    match first_failure {
        Some(f) => Err(f),
        None => Ok(()),
    }
}
