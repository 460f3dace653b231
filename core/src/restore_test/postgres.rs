//! The database half of a `postgres` restore test: roles, scratch database,
//! `pg_restore`, row counts, SQL checks. The caller drops the scratch database.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::{TestFailure, TestReport};
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

/// Row counts of the restored database against the manifest's.
async fn compare_row_counts(
    scratch: &PgTarget,
    header: &ManifestHeader,
    report: &mut TestReport,
) -> Result<(), TestFailure> {
    let Some((expected, exact)) = super::recorded_row_counts(header)? else {
        report
            .notes
            .push("the manifest holds no row counts; none compared".into());
        return Ok(());
    };
    if super::counted_from_dump(header) {
        let found = scratch.row_counts(true).await?;
        return super::compare_dump_row_counts(&expected, &found, report);
    }
    let found = scratch.row_counts(false).await?;
    super::compare_row_counts(&expected, exact, &found, report)
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
        super::record_check(sql, outcome, report, &mut first_failure);
    }
    first_failure.map_or(Ok(()), Err)
}
