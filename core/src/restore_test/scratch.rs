//! Scratch databases and directories: where a restore test restores for real.
//!
//! A scratch resource is named so that it can only be bk's (`bk_restore_test_…`,
//! `bk-restore-test-…`), recorded in the catalog *before* it is created, and removed
//! when the test ends, passed or failed. A test cut short (kill -9, crash, power
//! loss) leaves its name in the catalog; `clean_orphans`, run at the next start of
//! the daemon or of `bk restore-test`, removes what it left. Never removes anything
//! whose name bk did not make.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::catalog::{Catalog, TestStatus};
use crate::config::Config;
use crate::restore::mysql::MyTarget;
use crate::restore::postgres::PgTarget;

pub const DATABASE_PREFIX: &str = "bk_restore_test_";
pub const DIRECTORY_PREFIX: &str = "bk-restore-test-";

/// What a restore test restores into (as recorded in the catalog: no secrets).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Scratch {
    /// A database on the job's `restore_test.target` server.
    Postgres { database: String },
    /// A database on the job's `restore_test.target` MariaDB/MySQL server.
    Mysql { database: String },
    /// A directory, removed with everything in it.
    Directory { path: PathBuf },
}

impl Scratch {
    /// A fresh scratch database name for test `test_id` of `job` (at most 63 bytes,
    /// PostgreSQL's limit; lower case letters, digits and `_` only).
    pub fn database(job: &str, test_id: i64) -> Scratch {
        let tag: String = job
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '_'
                }
            })
            .take(24)
            .collect();
        let random: u32 = rand::random();
        Scratch::Postgres {
            database: format!("{DATABASE_PREFIX}{tag}_{test_id}_{random:08x}"),
        }
    }

    /// The same name on a MariaDB/MySQL server (at most 64 characters there).
    pub fn mysql_database(job: &str, test_id: i64) -> Scratch {
        match Scratch::database(job, test_id) {
            Scratch::Postgres { database } => Scratch::Mysql { database },
            other => other,
        }
    }

    /// A fresh scratch directory under `parent` for test `test_id` of `job`.
    pub fn directory(parent: &Path, job: &str, test_id: i64) -> Scratch {
        let random: u32 = rand::random();
        Scratch::Directory {
            path: parent.join(format!("{DIRECTORY_PREFIX}{job}-{test_id}-{random:08x}")),
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// What it is, for messages.
    pub fn describe(&self) -> String {
        match self {
            Scratch::Postgres { database } | Scratch::Mysql { database } => {
                format!("scratch database `{database}`")
            }
            Scratch::Directory { path } => format!("scratch directory {}", path.display()),
        }
    }

    /// Removes it (absent is fine). `target` is the job's restore-test target.
    pub async fn remove(&self, target: Option<&str>) -> Result<(), String> {
        match self {
            Scratch::Postgres { database } => {
                if !database.starts_with(DATABASE_PREFIX) {
                    return Err(format!(
                        "refusing to drop `{database}`: not a bk scratch name"
                    ));
                }
                let url = target.ok_or("the job no longer has a restore_test.target")?;
                let server = PgTarget::parse(url).map_err(|e| e.to_string())?;
                server
                    .drop_database(database)
                    .await
                    .map_err(|e| e.to_string())
            }
            Scratch::Mysql { database } => {
                if !database.starts_with(DATABASE_PREFIX) {
                    return Err(format!(
                        "refusing to drop `{database}`: not a bk scratch name"
                    ));
                }
                let url = target.ok_or("the job no longer has a restore_test.target")?;
                let server = MyTarget::parse(url).map_err(|e| e.to_string())?;
                server
                    .drop_database(database)
                    .await
                    .map_err(|e| e.to_string())
            }
            Scratch::Directory { path } => {
                let named_by_bk = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(DIRECTORY_PREFIX));
                if !named_by_bk {
                    return Err(format!(
                        "refusing to remove {}: not a bk scratch name",
                        path.display()
                    ));
                }
                let path = path.clone();
                tokio::task::spawn_blocking(move || remove_tree(&path))
                    .await
                    .map_err(|e| e.to_string())?
            }
        }
    }
}

/// Removes a restored tree, making read-only directories writable first (a backup
/// may hold some, and their modes are applied on restore).
fn remove_tree(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(format!("{}: {e}", path.display())),
        Ok(_) => {}
    }
    let mut stack = vec![path.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&dir) else {
            continue;
        };
        if !meta.is_dir() {
            continue;
        }
        let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700));
        if let Ok(entries) = std::fs::read_dir(&dir) {
            stack.extend(entries.flatten().map(|e| e.path()));
        }
    }
    std::fs::remove_dir_all(path).map_err(|e| format!("{}: {e}", path.display()))
}

/// Where scratch directories go when a directory job's test names no target.
pub fn default_directory_parent(config: &Config) -> PathBuf {
    config
        .catalog_path()
        .parent()
        .map(|p| p.join("restore-tests"))
        .unwrap_or_else(|| PathBuf::from("restore-tests"))
}

/// Removes what restore tests cut short on this machine left behind, and records
/// those tests as interrupted. Returns how many were found.
pub async fn clean_orphans(config: &Config, catalog: &Catalog) -> usize {
    let orphans = match catalog.orphaned_restore_tests() {
        Ok(o) => o,
        Err(e) => {
            tracing::warn!(error = %e, "looking for interrupted restore tests failed");
            return 0;
        }
    };
    for test in &orphans {
        let scratch = test
            .scratch
            .as_deref()
            .and_then(|s| serde_json::from_str::<Scratch>(s).ok());
        let target = config
            .job(&test.job)
            .and_then(|j| j.restore_test.as_ref())
            .and_then(|t| t.target.as_deref());
        let reason = match &scratch {
            None => "bk stopped before the restore test finished (killed or crashed)".to_string(),
            Some(s) => match s.remove(target).await {
                Ok(()) => {
                    tracing::info!(job = %test.job, test = test.id, "removed the {} of an interrupted restore test", s.describe());
                    format!(
                        "bk stopped before the restore test finished (killed or crashed); its {} was removed",
                        s.describe()
                    )
                }
                Err(e) => {
                    tracing::error!(job = %test.job, test = test.id, error = %e, "removing the {} of an interrupted restore test failed; remove it by hand", s.describe());
                    format!(
                        "bk stopped before the restore test finished; removing its {} failed ({e}): remove it by hand",
                        s.describe()
                    )
                }
            },
        };
        if let Err(e) =
            catalog.finish_restore_test(test.id, TestStatus::Interrupted, Some(&reason), None)
        {
            tracing::warn!(error = %e, "recording an interrupted restore test failed");
        }
    }
    orphans.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scratch_names_are_bks_and_fit_postgres() {
        let Scratch::Postgres { database } =
            Scratch::database("App-DB.with a very long name indeed", 123456)
        else {
            unreachable!()
        };
        assert!(database.starts_with(DATABASE_PREFIX), "{database}");
        assert!(database.len() <= 63, "{database}");
        assert!(database
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'));
        let json = Scratch::Postgres {
            database: database.clone(),
        }
        .to_json();
        assert_eq!(
            serde_json::from_str::<Scratch>(&json).unwrap(),
            Scratch::Postgres { database }
        );
    }

    #[tokio::test]
    async fn removes_only_its_own_directories_even_read_only_ones() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let Scratch::Directory { path } = Scratch::directory(dir.path(), "media", 7) else {
            unreachable!()
        };
        std::fs::create_dir_all(path.join("ro/inner")).unwrap();
        std::fs::write(path.join("ro/inner/f"), b"x").unwrap();
        std::fs::set_permissions(path.join("ro"), std::fs::Permissions::from_mode(0o500)).unwrap();
        Scratch::Directory { path: path.clone() }
            .remove(None)
            .await
            .unwrap();
        assert!(!path.exists());
        let foreign = dir.path().join("important");
        std::fs::create_dir(&foreign).unwrap();
        assert!(Scratch::Directory {
            path: foreign.clone()
        }
        .remove(None)
        .await
        .is_err());
        assert!(foreign.exists());
    }
}
