//! Restoring a `mysql` backup into a MariaDB or MySQL server, with the stock client of
//! the machine bk runs on (`mariadb`, else `mysql`). Serves `bk restore --mysql-target`
//! and the restore tests: create a database, stream the dump into the client, count
//! rows, run SQL checks, drop a scratch database.
//!
//! The URL (`mysql://user:password@host:port/db`, `?socket=/path` for a local socket)
//! may hold a password: it goes to the client in a private option file
//! (`--defaults-extra-file`, mode 0600, removed after), never on a command line, and
//! only the redacted URL appears in messages.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::process::Stdio;
use std::sync::Arc;

use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;

use super::url_decode;
use super::{RestoreError, RestoreReport, Sink};
use crate::keys::Identity;
use crate::repo::commit::CommitRecord;
use crate::repo::{redact_url, Repository};
use crate::source::mysql::{parse_row_counts, COUNT_ROWS_SQL};

#[derive(Debug, thiserror::Error)]
pub enum MyTargetError {
    #[error("`{0}` is not a mysql:// (or mariadb://) URL")]
    BadUrl(String),
    #[error("cannot run the `mariadb` or `mysql` client on this machine: {0}")]
    Spawn(io::Error),
    #[error("{what} on {server} failed: {stderr}")]
    Failed {
        what: String,
        server: String,
        stderr: String,
    },
    #[error("database `{database}` already exists on {server}: restore into a new name, or drop it first")]
    Exists { database: String, server: String },
}

/// A MariaDB/MySQL server reached with a URL, and the database the URL names.
#[derive(Clone)]
pub struct MyTarget {
    url: url::Url,
}

impl std::fmt::Debug for MyTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MyTarget({})", self.server())
    }
}

impl MyTarget {
    pub fn parse(url: &str) -> Result<MyTarget, MyTargetError> {
        let parsed = super::target_url(url, &["mysql", "mariadb"])
            .ok_or_else(|| MyTargetError::BadUrl(redact_url(url)))?;
        Ok(MyTarget { url: parsed })
    }

    /// The server, without credentials, for messages.
    pub fn server(&self) -> String {
        super::target_server(&self.url)
    }

    /// The database the URL names, if any.
    pub fn database(&self) -> Option<String> {
        let path = self.url.path().trim_start_matches('/');
        (!path.is_empty()).then(|| url_decode(path))
    }

    /// The client's `[client]` options for this URL (user, password, host, port, socket).
    fn option_file(&self) -> Result<tempfile::NamedTempFile, MyTargetError> {
        let mut text = String::from("[client]\n");
        let value = |v: &str| v.replace('\\', "\\\\").replace('"', "\\\"");
        if !self.url.username().is_empty() {
            text.push_str(&format!(
                "user=\"{}\"\n",
                value(&url_decode(self.url.username()))
            ));
        }
        if let Some(p) = self.url.password() {
            text.push_str(&format!("password=\"{}\"\n", value(&url_decode(p))));
        }
        if let Some(h) = self.url.host_str().filter(|h| !h.is_empty()) {
            text.push_str(&format!("host=\"{}\"\n", value(h)));
        }
        if let Some(port) = self.url.port() {
            text.push_str(&format!("port={port}\n"));
        }
        for (k, v) in self.url.query_pairs() {
            if k == "socket" {
                text.push_str(&format!("socket=\"{}\"\n", value(&v)));
            }
        }
        // Created 0600 (tempfile's default) and removed when dropped.
        let mut file = tempfile::Builder::new()
            .prefix("bk-mysql-")
            .tempfile()
            .map_err(MyTargetError::Spawn)?;
        file.write_all(text.as_bytes())
            .map_err(MyTargetError::Spawn)?;
        Ok(file)
    }

    fn client(
        &self,
        options: &tempfile::NamedTempFile,
        database: Option<&str>,
    ) -> std::process::Command {
        let program = if which("mariadb") { "mariadb" } else { "mysql" };
        let mut cmd = std::process::Command::new(program);
        // --defaults-extra-file must come first.
        cmd.arg(format!(
            "--defaults-extra-file={}",
            options.path().display()
        ))
        .args([
            "--batch",
            "--skip-column-names",
            "--default-character-set=utf8mb4",
        ]);
        if let Some(db) = database {
            cmd.arg(format!("--database={db}"));
        }
        cmd
    }

    /// Runs `sql` (one or more statements) in `database`.
    pub async fn query(
        &self,
        what: &str,
        database: Option<&str>,
        sql: &str,
    ) -> Result<String, MyTargetError> {
        let options = self.option_file()?;
        let mut cmd = tokio::process::Command::from(self.client(&options, database));
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().map_err(MyTargetError::Spawn)?;
        if let Some(mut input) = child.stdin.take() {
            let _ = input.write_all(sql.as_bytes()).await;
        }
        let out = child
            .wait_with_output()
            .await
            .map_err(MyTargetError::Spawn)?;
        drop(options);
        if !out.status.success() {
            return Err(self.failed(what, &out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn failed(&self, what: &str, stderr: &[u8]) -> MyTargetError {
        MyTargetError::Failed {
            what: what.to_string(),
            server: self.server(),
            stderr: String::from_utf8_lossy(stderr).trim().to_string(),
        }
    }

    /// Creates database `name`; fails if it exists.
    pub async fn create_database(&self, name: &str) -> Result<(), MyTargetError> {
        let found = self
            .query(
                "looking up the database",
                None,
                &format!(
                    "SELECT COUNT(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = {}",
                    literal(name)
                ),
            )
            .await?;
        if found.trim() != "0" {
            return Err(MyTargetError::Exists {
                database: name.to_string(),
                server: self.server(),
            });
        }
        self.query(
            &format!("creating database `{name}`"),
            None,
            &format!("CREATE DATABASE {} CHARACTER SET utf8mb4", ident(name)),
        )
        .await
        .map(|_| ())
    }

    /// Drops database `name`, if it exists.
    pub async fn drop_database(&self, name: &str) -> Result<(), MyTargetError> {
        self.query(
            &format!("dropping database `{name}`"),
            None,
            &format!("DROP DATABASE IF EXISTS {}", ident(name)),
        )
        .await
        .map(|_| ())
    }

    /// `table` → rows for every base table of `database` (the `db.` prefix removed).
    pub async fn row_counts(&self, database: &str) -> Result<BTreeMap<String, u64>, MyTargetError> {
        let out = self
            .query("counting rows", Some(database), COUNT_ROWS_SQL)
            .await?;
        Ok(strip_database(parse_row_counts(&out), database))
    }

    /// Runs one check query in `database`: true only if it returned one true value.
    pub async fn check(
        &self,
        database: &str,
        sql: &str,
    ) -> Result<Result<(), String>, MyTargetError> {
        match self.query("running a check", Some(database), sql).await {
            Ok(out) => {
                let value = out.trim();
                Ok(match value.to_ascii_lowercase().as_str() {
                    "1" | "true" => Ok(()),
                    "" => Err("it returned no row".into()),
                    _ => Err(format!("it returned `{value}`, not true")),
                })
            }
            Err(MyTargetError::Failed { stderr, .. }) => Ok(Err(format!("it failed: {stderr}"))),
            Err(e) => Err(e),
        }
    }

    /// Streams a `mysql` backup's dump into the client, into `database` (which must
    /// exist). When the client stops reading, its error is the cause; when the
    /// payload is damaged, the damage is.
    pub async fn restore_dump(
        &self,
        database: &str,
        repo: &Repository,
        record: &CommitRecord,
        identities: Arc<Vec<Identity>>,
        stop: &CancellationToken,
    ) -> Result<RestoreReport, RestoreError> {
        let options = self.option_file()?;
        let stderr = tempfile::tempfile().map_err(MyTargetError::Spawn)?;
        let mut child = self
            .client(&options, Some(database))
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(stderr.try_clone().map_err(MyTargetError::Spawn)?)
            .spawn()
            .map_err(MyTargetError::Spawn)?;
        let Some(input) = child.stdin.take() else {
            let _ = child.kill();
            return Err(RestoreError::Thread("the client has no stdin".into()));
        };
        let restored = super::restore_until(
            repo,
            record,
            identities,
            Sink::Stream(Box::new(input)),
            stop,
        )
        .await;
        let target = self.clone();
        let what = format!("loading the dump into `{database}`");
        let finish = move |mut child: std::process::Child, kill: bool| {
            let mut stderr = stderr;
            tokio::task::spawn_blocking(move || {
                if kill {
                    let _ = child.kill();
                }
                let status = child.wait().map_err(MyTargetError::Spawn)?;
                drop(options);
                if status.success() || kill {
                    return Ok(());
                }
                Err(target.failed(&what, &read_head(&mut stderr)))
            })
        };
        match restored {
            Ok(report) => {
                finish(child, false)
                    .await
                    .map_err(|e| RestoreError::Thread(e.to_string()))??;
                Ok(report)
            }
            Err(e @ RestoreError::Io { .. }) => {
                // Writing to the client failed: it stopped reading, and says why.
                finish(child, false)
                    .await
                    .map_err(|e| RestoreError::Thread(e.to_string()))??;
                Err(e)
            }
            Err(e) => {
                let _ = finish(child, true).await;
                Err(e)
            }
        }
    }
}

/// Row counts keyed `db.table` with the `db.` of `database` removed.
pub fn strip_database(counts: BTreeMap<String, u64>, database: &str) -> BTreeMap<String, u64> {
    let prefix = format!("{database}.");
    counts
        .into_iter()
        .map(|(k, v)| (k.strip_prefix(&prefix).map(str::to_string).unwrap_or(k), v))
        .collect()
}

fn read_head(file: &mut std::fs::File) -> Vec<u8> {
    use std::io::{Read, Seek};
    let mut out = Vec::new();
    if file.rewind().is_ok() {
        let _ = file.take(64 << 10).read_to_end(&mut out);
    }
    out
}

fn which(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

/// A quoted identifier.
fn ident(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

/// A quoted string literal.
fn literal(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_hide_their_password_and_name_the_database() {
        let t = MyTarget::parse("mysql://bk:s%40cret@127.0.0.1:3307/shop_restored").unwrap();
        assert_eq!(t.database().as_deref(), Some("shop_restored"));
        assert!(!t.server().contains("cret"), "{}", t.server());
        let file = t.option_file().unwrap();
        let text = std::fs::read_to_string(file.path()).unwrap();
        assert!(
            text.contains("password=\"s@cret\"") && text.contains("port=3307"),
            "{text}"
        );
        assert!(MyTarget::parse("postgresql://h/db").is_err());
        assert_eq!(MyTarget::parse("mariadb://h/").unwrap().database(), None);
    }

    #[test]
    fn row_counts_lose_their_database_prefix() {
        let counts = BTreeMap::from([("shop.orders".to_string(), 3), ("shop.a.b".to_string(), 1)]);
        let stripped = strip_database(counts, "shop");
        assert_eq!(stripped.get("orders"), Some(&3));
        assert_eq!(stripped.get("a.b"), Some(&1));
    }
}
