//! The database half of a `mysql` restore test: scratch database, the dump loaded with
//! the stock client, row counts, SQL checks. The caller drops the scratch database.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::{TestFailure, TestReport};
use crate::config::RestoreTestConfig;
use crate::keys::Identity;
use crate::repo::commit::CommitRecord;
use crate::repo::Repository;
use crate::restore;
use crate::restore::mysql::{strip_database, MyTarget};

pub(super) async fn test(
    repo: &Repository,
    record: &CommitRecord,
    identities: Arc<Vec<Identity>>,
    test: &RestoreTestConfig,
    database: &str,
    stop: &CancellationToken,
    report: &mut TestReport,
) -> Result<(), TestFailure> {
    let server = MyTarget::parse(test.target.as_deref().unwrap_or_default())?;
    let header = restore::fetch_manifest(repo, record, identities.clone())
        .await?
        .header;
    server.create_database(database).await?;
    server
        .restore_dump(database, repo, record, identities, stop)
        .await?;
    match super::recorded_row_counts(&header)? {
        Some((expected, exact)) => {
            // The manifest's keys carry the source database's name.
            let source_db = header.source.get("database").cloned().unwrap_or_default();
            let expected = strip_database(expected, &source_db);
            let found = server.row_counts(database).await?;
            super::compare_row_counts(&expected, exact, &found, report)?;
        }
        None => report
            .notes
            .push("the manifest holds no row counts; none compared".into()),
    }
    let mut first_failure = None;
    for sql in &test.checks {
        let outcome = server.check(database, sql).await?;
        super::record_check(sql, outcome, report, &mut first_failure);
    }
    first_failure.map_or(Ok(()), Err)
}
