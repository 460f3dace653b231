//! Restore-test history in the catalog: one row per test, good or bad, with the
//! reason of a failure and the test's report. A test holding a scratch database or
//! directory records its name first, so that one cut short (kill -9, crash) can be
//! found and cleaned up by the next process that starts.

use chrono::{DateTime, Utc};
use rusqlite::{params, OptionalExtension};
use serde::Serialize;

use super::{hostname, parse_time, process_alive, Busy, Catalog, Result, Table};

/// How a restore test ended (or that it has not).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TestStatus {
    Running,
    Passed,
    Failed,
    Interrupted,
}

impl TestStatus {
    pub const ALL: [TestStatus; 4] = [
        TestStatus::Running,
        TestStatus::Passed,
        TestStatus::Failed,
        TestStatus::Interrupted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TestStatus::Running => "running",
            TestStatus::Passed => "passed",
            TestStatus::Failed => "failed",
            TestStatus::Interrupted => "interrupted",
        }
    }

    fn parse(s: &str) -> TestStatus {
        match s {
            "running" => TestStatus::Running,
            "passed" => TestStatus::Passed,
            "interrupted" => TestStatus::Interrupted,
            _ => TestStatus::Failed,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct RestoreTestRecord {
    pub id: i64,
    pub job: String,
    pub backup_id: Option<String>,
    pub started: DateTime<Utc>,
    pub finished: Option<DateTime<Utc>>,
    pub status: TestStatus,
    /// Why the test failed, in words an operator can act on.
    pub reason: Option<String>,
    pub trigger: String,
    /// The scratch database or directory the test held (JSON), while it held one.
    #[serde(skip)]
    pub scratch: Option<String>,
    /// What the test checked: sizes, entries, tables and rows, SQL checks, notes.
    pub report: Option<serde_json::Value>,
}

const COLUMNS: &str =
    "id, job, backup_id, started, finished, status, reason, trigger, scratch, report";

fn record(r: &rusqlite::Row<'_>) -> rusqlite::Result<RestoreTestRecord> {
    Ok(RestoreTestRecord {
        id: r.get(0)?,
        job: r.get(1)?,
        backup_id: r.get(2)?,
        started: parse_time(&r.get::<_, String>(3)?),
        finished: r.get::<_, Option<String>>(4)?.map(|s| parse_time(&s)),
        status: TestStatus::parse(&r.get::<_, String>(5)?),
        reason: r.get(6)?,
        trigger: r.get(7)?,
        scratch: r.get(8)?,
        report: r
            .get::<_, Option<String>>(9)?
            .and_then(|s| serde_json::from_str(&s).ok()),
    })
}

impl Catalog {
    /// Records that a restore test of `job` started, unless one is still going in
    /// another live process on this machine (then that one is returned).
    pub fn start_restore_test(&self, job: &str, trigger: &str) -> Result<Result<i64, Busy>> {
        self.start_exclusive(Table::RestoreTests, job, trigger)
    }

    /// Notes the backup under test and the scratch resource, *before* it is created.
    pub fn note_restore_test_scratch(
        &self,
        id: i64,
        backup_id: &str,
        scratch: Option<&str>,
    ) -> Result<()> {
        self.with(|c| {
            c.execute(
                "UPDATE restore_tests SET backup_id = ?2, scratch = ?3 WHERE id = ?1",
                params![id, backup_id, scratch],
            )
            .map(|_| ())
        })
    }

    /// Records how a restore test ended; its scratch resource is gone by then.
    pub fn finish_restore_test(
        &self,
        id: i64,
        status: TestStatus,
        reason: Option<&str>,
        report: Option<&serde_json::Value>,
    ) -> Result<()> {
        self.with(|c| {
            c.execute(
                "UPDATE restore_tests SET finished = ?2, status = ?3, reason = ?4, report = ?5, scratch = NULL
                 WHERE id = ?1",
                params![
                    id,
                    Utc::now().to_rfc3339(),
                    status.as_str(),
                    reason,
                    report.map(|r| r.to_string()),
                ],
            )
            .map(|_| ())
        })
    }

    /// Newest first.
    pub fn restore_tests(&self, job: Option<&str>, limit: usize) -> Result<Vec<RestoreTestRecord>> {
        self.with(|c| {
            let mut stmt = c.prepare(&format!(
                "SELECT {COLUMNS} FROM restore_tests WHERE (?1 IS NULL OR job = ?1) ORDER BY id DESC LIMIT ?2"
            ))?;
            let rows = stmt.query_map(params![job, limit as i64], record)?;
            rows.collect()
        })
    }

    pub fn last_restore_test(&self, job: &str) -> Result<Option<RestoreTestRecord>> {
        Ok(self.restore_tests(Some(job), 1)?.into_iter().next())
    }

    /// The newest backup of `job` that passed a restore test (pruning keeps it).
    pub fn last_passed_backup(&self, job: &str) -> Result<Option<String>> {
        self.with(|c| {
            c.query_row(
                "SELECT backup_id FROM restore_tests WHERE job = ?1 AND status = 'passed'
                 AND backup_id IS NOT NULL ORDER BY backup_id DESC LIMIT 1",
                [job],
                |r| r.get(0),
            )
            .optional()
        })
    }

    /// Restore tests left `running` by a process of this machine that is gone (rows
    /// of this very process count as gone: call it at start, before running tests).
    pub fn orphaned_restore_tests(&self) -> Result<Vec<RestoreTestRecord>> {
        let writer = hostname();
        self.with(|c| {
            let mut stmt = c.prepare(&format!(
                "SELECT {COLUMNS}, pid FROM restore_tests WHERE status = 'running' AND writer = ?1"
            ))?;
            let rows = stmt.query_map([&writer], |r| Ok((record(r)?, r.get::<_, i64>(10)?)))?;
            let rows: Vec<(RestoreTestRecord, i64)> = rows.collect::<rusqlite::Result<_>>()?;
            Ok(rows
                .into_iter()
                .filter(|(_, pid)| !process_alive(*pid))
                .map(|(rec, _)| rec)
                .collect())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_tests_and_finds_orphans() {
        let dir = tempfile::tempdir().unwrap();
        let cat = Catalog::open(&dir.path().join("c.db")).unwrap();
        let first = cat.start_restore_test("db", "manual").unwrap().unwrap();
        cat.note_restore_test_scratch(first, "B1", Some(r#"{"database":"x"}"#))
            .unwrap();
        cat.finish_restore_test(
            first,
            TestStatus::Passed,
            None,
            Some(&serde_json::json!({"tables": 3})),
        )
        .unwrap();
        let second = cat.start_restore_test("db", "schedule").unwrap().unwrap();
        cat.note_restore_test_scratch(second, "B2", Some(r#"{"database":"y"}"#))
            .unwrap();
        // Nothing is orphaned while its process lives (our parent stands in for
        // another live bk; this process's own rows count as left by a previous one).
        let parent = unsafe { libc::getppid() } as i64;
        cat.with(|c| {
            c.execute(
                "UPDATE restore_tests SET pid = ?2 WHERE id = ?1",
                [second, parent],
            )
        })
        .unwrap();
        assert!(cat.orphaned_restore_tests().unwrap().is_empty());
        assert!(cat.start_restore_test("db", "manual").unwrap().is_err());
        cat.with(|c| {
            c.execute(
                "UPDATE restore_tests SET pid = 999999999 WHERE id = ?1",
                [second],
            )
        })
        .unwrap();
        let orphans = cat.orphaned_restore_tests().unwrap();
        assert_eq!(orphans.len(), 1);
        assert_eq!(orphans[0].scratch.as_deref(), Some(r#"{"database":"y"}"#));
        cat.finish_restore_test(second, TestStatus::Interrupted, Some("killed"), None)
            .unwrap();
        assert_eq!(cat.last_passed_backup("db").unwrap().as_deref(), Some("B1"));
        let last = cat.last_restore_test("db").unwrap().unwrap();
        assert_eq!(last.status, TestStatus::Interrupted);
        assert_eq!(last.scratch, None);
        let passed = &cat.restore_tests(Some("db"), 10).unwrap()[1];
        assert_eq!(passed.report, Some(serde_json::json!({"tables": 3})));
    }
}
