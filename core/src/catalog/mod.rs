//! The catalog: a SQLite file on the backup server with jobs, runs (failed ones
//! included, with their error) and a cache of the committed backups. It is never the
//! source of truth for what exists: the repository is, and `rebuild` restores the
//! cache from it. Losing the catalog loses run history, never a backup.

mod restore_tests;
mod schema;

pub use restore_tests::{RestoreTestRecord, TestStatus};

use std::fs::OpenOptions;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;

use crate::anomaly::{Anomaly, Figures};
use crate::repo::commit::{CommitRecord, Listed};

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("catalog {path}: {source}")]
    Sqlite {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("catalog {path}: migrating the schema failed: {source}")]
    Migrate {
        path: PathBuf,
        source: rusqlite_migration::Error,
    },
    #[error("catalog {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

pub type Result<T, E = CatalogError> = std::result::Result<T, E>;

/// How a run ended (or that it has not).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    Running,
    Success,
    Failed,
    Interrupted,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::Success => "success",
            RunStatus::Failed => "failed",
            RunStatus::Interrupted => "interrupted",
        }
    }

    fn parse(s: &str) -> RunStatus {
        match s {
            "running" => RunStatus::Running,
            "success" => RunStatus::Success,
            "interrupted" => RunStatus::Interrupted,
            _ => RunStatus::Failed,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct RunRecord {
    pub id: i64,
    pub job: String,
    pub started: DateTime<Utc>,
    pub finished: Option<DateTime<Utc>>,
    pub status: RunStatus,
    pub error: Option<String>,
    pub backup_id: Option<String>,
    pub bytes_in: Option<u64>,
    pub bytes_out: Option<u64>,
    pub trigger: String,
    /// What looked wrong about this good backup next to the job's history.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub anomalies: Vec<Anomaly>,
}

/// A run of a job that is still going in another live process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Busy {
    pub run: i64,
    pub pid: i64,
    pub trigger: String,
}

#[derive(Clone)]
pub struct Catalog {
    conn: Arc<Mutex<Connection>>,
    path: PathBuf,
}

/// The tables whose rows track something running (see `Catalog::start_exclusive`).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Table {
    Runs,
    RestoreTests,
}

impl Table {
    fn name(self) -> &'static str {
        match self {
            Table::Runs => "runs",
            Table::RestoreTests => "restore_tests",
        }
    }
}

impl Catalog {
    /// Opens (creating with 0600 in a 0700 directory if needed) and migrates the catalog.
    pub fn open(path: &Path) -> Result<Catalog> {
        let io_err = |source| CatalogError::Io {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty() && !d.exists())
        {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(io_err)?;
        }
        OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)
            .map_err(io_err)?;
        let sql = |source| CatalogError::Sqlite {
            path: path.to_path_buf(),
            source,
        };
        let mut conn = Connection::open(path).map_err(sql)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(sql)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(sql)?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(sql)?;
        conn.busy_timeout(Duration::from_secs(10)).map_err(sql)?;
        schema::migrations()
            .to_latest(&mut conn)
            .map_err(|source| CatalogError::Migrate {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(Catalog {
            conn: Arc::new(Mutex::new(conn)),
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn with<T>(&self, f: impl FnOnce(&mut Connection) -> rusqlite::Result<T>) -> Result<T> {
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut conn).map_err(|source| CatalogError::Sqlite {
            path: self.path.clone(),
            source,
        })
    }

    pub fn note_job(&self, name: &str, kind: &str, host: &str) -> Result<()> {
        let now = Utc::now().to_rfc3339();
        self.with(|c| {
            c.execute(
                "INSERT INTO jobs (name, kind, host, first_seen, last_seen) VALUES (?1, ?2, ?3, ?4, ?4)
                 ON CONFLICT(name) DO UPDATE SET kind = ?2, host = ?3, last_seen = ?4",
                params![name, kind, host, now],
            )
            .map(|_| ())
        })
    }

    /// Records that a run started; returns its ID.
    pub fn start_run(&self, job: &str, trigger: &str) -> Result<i64> {
        let writer = hostname();
        self.with(|c| {
            c.execute(
                "INSERT INTO runs (job, started, status, trigger, writer, pid) VALUES (?1, ?2, 'running', ?3, ?4, ?5)",
                params![job, Utc::now().to_rfc3339(), trigger, writer, std::process::id()],
            )?;
            Ok(c.last_insert_rowid())
        })
    }

    /// Records that a run started, unless a run of the same job is still going in
    /// another live process on this machine (`bk run` beside the daemon, or the other
    /// way round): then that run is returned and nothing is recorded. Check and insert
    /// happen in one write transaction, so two processes cannot both start.
    pub fn start_run_exclusive(&self, job: &str, trigger: &str) -> Result<Result<i64, Busy>> {
        self.start_exclusive(Table::Runs, job, trigger)
    }

    /// Inserts a `running` row for `job` into `table` in one write transaction, unless
    /// a row of the same job is still `running` for a live process on this machine
    /// (then that one is returned and nothing is inserted). Shared by runs and
    /// restore tests.
    pub(crate) fn start_exclusive(
        &self,
        table: Table,
        job: &str,
        trigger: &str,
    ) -> Result<Result<i64, Busy>> {
        let table = table.name();
        let writer = hostname();
        self.with(|c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let running: Vec<Busy> = {
                let mut stmt = tx.prepare(&format!(
                    "SELECT id, pid, trigger FROM {table} WHERE job = ?1 AND status = 'running' AND writer = ?2"
                ))?;
                let rows = stmt.query_map(params![job, writer], |r| {
                    Ok(Busy {
                        run: r.get(0)?,
                        pid: r.get(1)?,
                        trigger: r.get(2)?,
                    })
                })?;
                rows.collect::<rusqlite::Result<_>>()?
            };
            if let Some(busy) = running.into_iter().find(|b| process_alive(b.pid)) {
                return Ok(Err(busy));
            }
            tx.execute(
                &format!(
                    "INSERT INTO {table} (job, started, status, trigger, writer, pid) VALUES (?1, ?2, 'running', ?3, ?4, ?5)"
                ),
                params![job, Utc::now().to_rfc3339(), trigger, writer, std::process::id()],
            )?;
            let id = tx.last_insert_rowid();
            tx.commit()?;
            Ok(Ok(id))
        })
    }

    pub fn finish_run(
        &self,
        run: i64,
        status: RunStatus,
        error: Option<&str>,
        commit: Option<&CommitRecord>,
    ) -> Result<()> {
        let now = Utc::now().to_rfc3339();
        self.with(|c| {
            let tx = c.transaction()?;
            tx.execute(
                "UPDATE runs SET finished = ?2, status = ?3, error = ?4, backup_id = ?5, bytes_in = ?6, bytes_out = ?7
                 WHERE id = ?1",
                params![
                    run,
                    now,
                    status.as_str(),
                    error,
                    commit.map(|r| r.backup_id.to_string()),
                    commit.map(|r| r.source_size as i64),
                    commit.map(|r| (r.payload.size + r.manifest.size) as i64),
                ],
            )?;
            if let Some(record) = commit {
                insert_backup(&tx, record)?;
            }
            tx.commit()
        })
    }

    /// Marks runs left `running` by a process that is gone (kill -9, crash) as interrupted.
    pub fn mark_orphaned_runs(&self) -> Result<usize> {
        let writer = hostname();
        self.with(|c| {
            let mut stmt = c.prepare("SELECT id, pid FROM runs WHERE status = 'running' AND writer = ?1")?;
            let rows: Vec<(i64, i64)> =
                stmt.query_map([&writer], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<rusqlite::Result<_>>()?;
            let mut n = 0;
            for (id, pid) in rows {
                if !process_alive(pid) {
                    n += c.execute(
                        "UPDATE runs SET status = 'interrupted', finished = ?2,
                         error = 'bk stopped before the run finished (killed or crashed); nothing was committed'
                         WHERE id = ?1",
                        params![id, Utc::now().to_rfc3339()],
                    )?;
                }
            }
            Ok(n)
        })
    }

    pub fn runs(&self, job: Option<&str>, limit: usize) -> Result<Vec<RunRecord>> {
        self.with(|c| {
            let mut stmt = c.prepare(
                "SELECT id, job, started, finished, status, error, backup_id, bytes_in, bytes_out, trigger, anomalies
                 FROM runs WHERE (?1 IS NULL OR job = ?1) ORDER BY id DESC LIMIT ?2",
            )?;
            let rows = stmt.query_map(params![job, limit as i64], |r| {
                Ok(RunRecord {
                    id: r.get(0)?,
                    job: r.get(1)?,
                    started: parse_time(&r.get::<_, String>(2)?),
                    finished: r.get::<_, Option<String>>(3)?.map(|s| parse_time(&s)),
                    status: RunStatus::parse(&r.get::<_, String>(4)?),
                    error: r.get(5)?,
                    backup_id: r.get(6)?,
                    bytes_in: r.get::<_, Option<i64>>(7)?.map(|v| v as u64),
                    bytes_out: r.get::<_, Option<i64>>(8)?.map(|v| v as u64),
                    trigger: r.get(9)?,
                    anomalies: r
                        .get::<_, Option<String>>(10)?
                        .and_then(|j| serde_json::from_str(&j).ok())
                        .unwrap_or_default(),
                })
            })?;
            rows.collect()
        })
    }

    /// Records a good run's directory entries and the anomalies found for it.
    pub fn note_run_figures(&self, run: i64, entries: u64, anomalies: &[Anomaly]) -> Result<()> {
        let json =
            (!anomalies.is_empty()).then(|| serde_json::to_string(anomalies).unwrap_or_default());
        self.with(|c| {
            c.execute(
                "UPDATE runs SET entries = ?2, anomalies = ?3 WHERE id = ?1",
                params![run, entries as i64, json],
            )
            .map(|_| ())
        })
    }

    /// The figures of `job`'s good runs before run `before`, newest first.
    pub fn good_run_figures(&self, job: &str, before: i64, limit: usize) -> Result<Vec<Figures>> {
        self.with(|c| {
            let mut stmt = c.prepare(
                "SELECT bytes_in, bytes_out, entries FROM runs
                 WHERE job = ?1 AND id < ?2 AND status = 'success' AND bytes_in IS NOT NULL
                 ORDER BY id DESC LIMIT ?3",
            )?;
            let rows = stmt.query_map(params![job, before, limit as i64], |r| {
                Ok(Figures {
                    source_size: r.get::<_, i64>(0)? as u64,
                    stored_size: r.get::<_, Option<i64>>(1)?.unwrap_or(0) as u64,
                    entries: r.get::<_, Option<i64>>(2)?.unwrap_or(0) as u64,
                })
            })?;
            rows.collect()
        })
    }

    pub fn last_run(&self, job: &str) -> Result<Option<RunRecord>> {
        Ok(self.runs(Some(job), 1)?.into_iter().next())
    }

    /// What `bk list` shows of the cached backups (of `job`, or of all jobs), straight
    /// from the columns (no commit record parsed), newest first: read in that order
    /// from the backups_listed index, or from backups_by_job for one job.
    pub fn listed(&self, job: Option<&str>) -> Result<Vec<Listed>> {
        self.with(|c| {
            let mut stmt = c.prepare(&listed_sql(job.is_some()))?;
            let params: &[&dyn rusqlite::ToSql] = match &job {
                None => &[],
                Some(j) => &[j],
            };
            let rows = stmt.query_map(params, |r| {
                Ok(Listed {
                    backup_id: r.get(0)?,
                    job: r.get(1)?,
                    kind: r.get(2)?,
                    host: r.get(3)?,
                    started: parse_time(&r.get::<_, String>(4)?),
                    finished: parse_time(&r.get::<_, String>(5)?),
                    source_size: r.get::<_, i64>(6)?.max(0) as u64,
                    stored_size: r.get::<_, i64>(7)?.max(0) as u64,
                    writer: r.get::<_, Option<String>>(8)?.unwrap_or_default(),
                })
            })?;
            rows.collect()
        })
    }

    pub fn latest_backup(&self, job: &str) -> Result<Option<CommitRecord>> {
        self.with(|c| {
            c.query_row(
                "SELECT commit_json FROM backups WHERE job = ?1 ORDER BY backup_id DESC LIMIT 1",
                [job],
                |r| r.get::<_, String>(0),
            )
            .optional()
        })
        .map(|json| json.and_then(|j| serde_json::from_str(&j).ok()))
    }

    /// Adds (or refreshes) cached commit records.
    pub fn remember_backups(&self, records: &[CommitRecord]) -> Result<()> {
        self.with(|c| {
            let tx = c.transaction()?;
            for record in records {
                insert_backup(&tx, record)?;
            }
            tx.commit()
        })
    }

    /// Replaces the backup cache with exactly `records` (the repository's view).
    pub fn replace_backups(&self, records: &[CommitRecord]) -> Result<()> {
        self.with(|c| {
            let tx = c.transaction()?;
            tx.execute("DELETE FROM backups", [])?;
            for record in records {
                insert_backup(&tx, record)?;
                let now = Utc::now().to_rfc3339();
                tx.execute(
                    "INSERT INTO jobs (name, kind, host, first_seen, last_seen) VALUES (?1, ?2, ?3, ?4, ?4)
                     ON CONFLICT(name) DO NOTHING",
                    params![record.job, record.kind, record.host, now],
                )?;
            }
            tx.commit()
        })
    }

    /// When the catalog first saw `job` (its first run), if ever.
    pub fn first_seen(&self, job: &str) -> Result<Option<DateTime<Utc>>> {
        self.with(|c| {
            c.query_row("SELECT first_seen FROM jobs WHERE name = ?1", [job], |r| {
                r.get::<_, String>(0)
            })
            .optional()
        })
        .map(|t| t.map(|t| parse_time(&t)))
    }

    pub fn forget_backup(&self, backup_id: &str) -> Result<()> {
        self.with(|c| {
            c.execute("DELETE FROM backups WHERE backup_id = ?1", [backup_id])
                .map(|_| ())
        })
    }
}

/// The query of `listed`, for all jobs or for one (`?1`): each reads an index in order.
fn listed_sql(one_job: bool) -> String {
    const COLUMNS: &str =
        "backup_id, job, kind, host, started, finished, source_size, stored_size, writer";
    let only = if one_job { "WHERE job = ?1" } else { "" };
    format!("SELECT {COLUMNS} FROM backups {only} ORDER BY backup_id DESC")
}

fn insert_backup(c: &Connection, record: &CommitRecord) -> rusqlite::Result<()> {
    c.execute(
        "INSERT OR REPLACE INTO backups
         (backup_id, job, kind, host, started, finished, source_size, stored_size, commit_json,
          writer)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        params![
            record.backup_id.to_string(),
            record.job,
            record.kind,
            record.host,
            record.started.to_rfc3339(),
            record.finished.to_rfc3339(),
            record.source_size as i64,
            (record.payload.size + record.manifest.size) as i64,
            String::from_utf8_lossy(&record.to_json()),
            record.writer,
        ],
    )
    .map(|_| ())
}

fn parse_time(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or_default()
}

fn process_alive(pid: i64) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: signal 0 only checks that the process exists.
    pid > 0 && pid as u32 != std::process::id() && unsafe { libc::kill(pid, 0) } == 0
}

/// This machine's name, recorded as the writer of runs and backups.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// `bk list` reads the backups_listed index in order (no rows, no sort), or
    /// backups_by_job for one job.
    #[test]
    fn listings_read_an_index_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = Catalog::open(&dir.path().join("c.db")).unwrap();
        let plan = |one_job: bool| {
            catalog
                .with(|c| {
                    let sql = format!("EXPLAIN QUERY PLAN {}", listed_sql(one_job));
                    let mut stmt = c.prepare(&sql)?;
                    let params: &[&dyn rusqlite::ToSql] = if one_job { &[&"job"] } else { &[] };
                    let rows = stmt.query_map(params, |r| r.get::<_, String>(3))?;
                    rows.collect::<rusqlite::Result<Vec<_>>>()
                })
                .unwrap()
                .join("; ")
        };
        assert_eq!(
            plan(false),
            "SCAN backups USING COVERING INDEX backups_listed"
        );
        assert_eq!(
            plan(true),
            "SEARCH backups USING INDEX backups_by_job (job=?)"
        );
    }

    /// `listed` reads from columns what `bk list` would take from the commit records,
    /// also from a catalog written before the `writer` column existed.
    #[test]
    fn listed_rows_match_their_commit_records() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.db");
        let old = crate::repo::commit::tests::sample();
        {
            let mut conn = Connection::open(&path).unwrap();
            schema::migrations().to_version(&mut conn, 3).unwrap();
            conn.execute(
                "INSERT INTO backups
                 (backup_id, job, kind, host, started, finished, source_size, stored_size, commit_json)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![
                    old.backup_id.to_string(),
                    old.job,
                    old.kind,
                    old.host,
                    old.started.to_rfc3339(),
                    old.finished.to_rfc3339(),
                    old.source_size as i64,
                    (old.payload.size + old.manifest.size) as i64,
                    String::from_utf8_lossy(&old.to_json()),
                ],
            )
            .unwrap();
        }
        let cat = Catalog::open(&path).unwrap();
        let mut new = crate::repo::commit::tests::sample();
        new.job = "db".into();
        new.writer = "backup2".into();
        cat.remember_backups(std::slice::from_ref(&new)).unwrap();

        let mut all = cat.listed(None).unwrap();
        all.sort_by(|a, b| a.job.cmp(&b.job));
        assert_eq!(all, vec![Listed::from(&new), Listed::from(&old)]);
        assert_eq!(cat.listed(Some("media")).unwrap(), vec![Listed::from(&old)]);
        assert!(cat.listed(Some("none")).unwrap().is_empty());
    }

    #[test]
    fn creates_private_files_and_records_runs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/catalog.db");
        let cat = Catalog::open(&path).unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            std::fs::metadata(path.parent().unwrap())
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o700
        );
        let run = cat.start_run("media", "manual").unwrap();
        cat.finish_run(run, RunStatus::Failed, Some("tar exploded"), None)
            .unwrap();
        let last = cat.last_run("media").unwrap().unwrap();
        assert_eq!(last.status, RunStatus::Failed);
        assert_eq!(last.error.as_deref(), Some("tar exploded"));
    }

    #[test]
    fn a_job_running_in_another_live_process_cannot_start_again() {
        let dir = tempfile::tempdir().unwrap();
        let cat = Catalog::open(&dir.path().join("c.db")).unwrap();
        let run = cat.start_run("media", "schedule").unwrap();
        // Our parent process stands in for another bk that is alive.
        let parent = unsafe { libc::getppid() } as i64;
        cat.with(|c| c.execute("UPDATE runs SET pid = ?2 WHERE id = ?1", [run, parent]))
            .unwrap();
        let busy = cat
            .start_run_exclusive("media", "manual")
            .unwrap()
            .unwrap_err();
        assert_eq!((busy.run, busy.pid), (run, parent));
        assert!(cat.start_run_exclusive("other", "manual").unwrap().is_ok());
        // Once that process is gone (or the run finished), the job may start.
        cat.with(|c| c.execute("UPDATE runs SET pid = 999999999 WHERE id = ?1", [run]))
            .unwrap();
        assert!(cat.start_run_exclusive("media", "manual").unwrap().is_ok());
    }

    #[test]
    fn orphaned_runs_become_interrupted() {
        let dir = tempfile::tempdir().unwrap();
        let cat = Catalog::open(&dir.path().join("c.db")).unwrap();
        let run = cat.start_run("media", "manual").unwrap();
        cat.with(|c| c.execute("UPDATE runs SET pid = 999999999 WHERE id = ?1", [run]))
            .unwrap();
        assert_eq!(cat.mark_orphaned_runs().unwrap(), 1);
        assert_eq!(
            cat.last_run("media").unwrap().unwrap().status,
            RunStatus::Interrupted
        );
    }
}
