//! Restoring a `postgres` backup into a PostgreSQL server, with the stock client
//! tools of the machine bk runs on (`psql`, `pg_restore`). Serves `bk restore
//! --pg-target` and the restore tests: create a database, stream the dump into
//! `pg_restore`, count rows, run SQL checks, drop a scratch database.
//!
//! Connection URLs may hold a password: only their redacted form ever appears in a
//! message. A database is only ever dropped by name after bk created it.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::process::Stdio;
use std::sync::Arc;

use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;

use super::{RestoreError, RestoreReport, Sink};
use crate::keys::Identity;
use crate::repo::commit::CommitRecord;
use crate::repo::{redact_url, Repository};
use crate::source::postgres::{count_rows_sql, parse_row_counts};

#[derive(Debug, thiserror::Error)]
pub enum PgTargetError {
    #[error("`{0}` is not a postgresql:// URL")]
    BadUrl(String),
    #[error("cannot run `{tool}` on this machine (is the PostgreSQL client installed?): {source}")]
    Spawn {
        tool: &'static str,
        source: io::Error,
    },
    #[error("{what} on {server} failed: {stderr}")]
    Failed {
        what: String,
        server: String,
        stderr: String,
    },
    #[error("database `{database}` already exists on {server}: restore into a new name, or drop it first")]
    Exists { database: String, server: String },
}

/// A PostgreSQL server reached with a URL, and the database the URL names.
#[derive(Clone)]
pub struct PgTarget {
    url: url::Url,
}

impl std::fmt::Debug for PgTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PgTarget({})", self.server())
    }
}

impl PgTarget {
    pub fn parse(url: &str) -> Result<PgTarget, PgTargetError> {
        let parsed = super::target_url(url, &["postgresql", "postgres"])
            .ok_or_else(|| PgTargetError::BadUrl(redact_url(url)))?;
        Ok(PgTarget { url: parsed })
    }

    /// The server, without credentials, for messages.
    pub fn server(&self) -> String {
        super::target_server(&self.url)
    }

    /// The database the URL names (`postgres` when it names none).
    pub fn database(&self) -> String {
        let path = self.url.path().trim_start_matches('/');
        if path.is_empty() {
            "postgres".into()
        } else {
            super::url_decode(path)
        }
    }

    /// The same server, database `name`.
    pub fn with_database(&self, name: &str) -> PgTarget {
        let mut url = self.url.clone();
        url.set_path(&format!("/{name}"));
        PgTarget { url }
    }

    /// Runs `sql` with psql (`-At`: unaligned rows, `|` between fields).
    pub async fn query(&self, what: &str, sql: &str) -> Result<String, PgTargetError> {
        self.psql(what, &["-c", sql], None).await
    }

    async fn psql(
        &self,
        what: &str,
        args: &[&str],
        stdin: Option<&str>,
    ) -> Result<String, PgTargetError> {
        let mut cmd = tokio::process::Command::new("psql");
        cmd.args(["-X", "-q", "-At", "-F", "|", "-v", "ON_ERROR_STOP=1"])
            .arg("--no-password")
            .arg(format!("--dbname={}", self.url))
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().map_err(|source| PgTargetError::Spawn {
            tool: "psql",
            source,
        })?;
        if let (Some(text), Some(mut input)) = (stdin, child.stdin.take()) {
            // psql reads all of it before it runs anything that could block.
            let _ = input.write_all(text.as_bytes()).await;
        }
        let out = child
            .wait_with_output()
            .await
            .map_err(|source| PgTargetError::Spawn {
                tool: "psql",
                source,
            })?;
        if !out.status.success() {
            return Err(self.failed(what, &out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn failed(&self, what: &str, stderr: &[u8]) -> PgTargetError {
        let text = String::from_utf8_lossy(stderr);
        PgTargetError::Failed {
            what: what.to_string(),
            server: self.server(),
            stderr: text.trim().to_string(),
        }
    }

    pub async fn database_exists(&self, name: &str) -> Result<bool, PgTargetError> {
        let out = self
            .query(
                "looking up the database",
                &format!(
                    "SELECT count(*) FROM pg_database WHERE datname = {}",
                    literal(name)
                ),
            )
            .await?;
        Ok(out.trim() != "0")
    }

    /// Creates database `name`; fails if it exists.
    pub async fn create_database(&self, name: &str) -> Result<(), PgTargetError> {
        if self.database_exists(name).await? {
            return Err(PgTargetError::Exists {
                database: name.to_string(),
                server: self.server(),
            });
        }
        self.query(
            &format!("creating database `{name}`"),
            &format!("CREATE DATABASE {}", ident(name)),
        )
        .await
        .map(|_| ())
    }

    /// Drops database `name` (and the sessions still connected to it), if it exists.
    pub async fn drop_database(&self, name: &str) -> Result<(), PgTargetError> {
        self.query(
            &format!("dropping database `{name}`"),
            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", ident(name)),
        )
        .await
        .map(|_| ())
    }

    /// The roles that exist on the server.
    pub async fn roles(&self) -> Result<BTreeSet<String>, PgTargetError> {
        let out = self
            .query("listing roles", "SELECT rolname FROM pg_roles")
            .await?;
        Ok(out.lines().map(str::to_string).collect())
    }

    /// `schema.table` → rows, for every user table of this URL's database; with
    /// `own`, each table's own rows (as a dump holds them), else including its
    /// partitions' and children's.
    pub async fn row_counts(&self, own: bool) -> Result<BTreeMap<String, u64>, PgTargetError> {
        let sql = count_rows_sql(own);
        let out = self.psql("counting rows", &[], Some(&sql)).await?;
        Ok(parse_row_counts(&out))
    }

    /// Runs one check query; `Ok(true)` only if it returned exactly one true value.
    pub async fn check(&self, sql: &str) -> Result<Result<(), String>, PgTargetError> {
        match self.query("running a check", sql).await {
            Ok(out) => {
                let value = out.trim();
                Ok(if value == "t" || value == "true" {
                    Ok(())
                } else if value.is_empty() {
                    Err("it returned no row".into())
                } else {
                    Err(format!("it returned `{value}`, not true"))
                })
            }
            Err(PgTargetError::Failed { stderr, .. }) => Ok(Err(format!("it failed: {stderr}"))),
            Err(e) => Err(e),
        }
    }

    /// Starts `pg_restore` into this URL's database, reading the dump from its stdin.
    pub fn start_restore(&self, no_owner: bool) -> Result<PgRestore, PgTargetError> {
        let stderr = tempfile::tempfile().map_err(|source| PgTargetError::Spawn {
            tool: "pg_restore",
            source,
        })?;
        let stderr_out = stderr.try_clone().map_err(|source| PgTargetError::Spawn {
            tool: "pg_restore",
            source,
        })?;
        let mut cmd = std::process::Command::new("pg_restore");
        cmd.args(["--exit-on-error", "--no-password"])
            .arg(format!("--dbname={}", self.url));
        if no_owner {
            cmd.args(["--no-owner", "--no-privileges"]);
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(stderr_out)
            .spawn()
            .map_err(|source| PgTargetError::Spawn {
                tool: "pg_restore",
                source,
            })?;
        let stdin = child.stdin.take();
        Ok(PgRestore {
            child,
            stdin,
            stderr,
            target: self.clone(),
        })
    }
}

/// Streams a `postgres` backup's dump into `pg_restore` on `target` (whose database
/// must exist). When pg_restore stops reading, its own error is the cause; when the
/// payload is damaged, the damage is.
pub async fn restore_dump(
    target: &PgTarget,
    repo: &Repository,
    record: &CommitRecord,
    identities: Arc<Vec<Identity>>,
    no_owner: bool,
    stop: &CancellationToken,
) -> Result<RestoreReport, RestoreError> {
    let mut pg_restore = target.start_restore(no_owner)?;
    let Some(input) = pg_restore.take_input() else {
        pg_restore.kill();
        return Err(RestoreError::Thread("pg_restore has no stdin".into()));
    };
    let sink = Sink::Stream(Box::new(input));
    let restored = super::restore_until(repo, record, identities, sink, stop).await;
    let finish = |p: PgRestore| async move {
        tokio::task::spawn_blocking(move || p.finish())
            .await
            .map_err(|e| RestoreError::Thread(e.to_string()))?
            .map_err(RestoreError::from)
    };
    match restored {
        Ok(report) => {
            finish(pg_restore).await?;
            Ok(report)
        }
        Err(e @ RestoreError::Io { .. }) => {
            // Writing to pg_restore failed: it stopped reading, and says why.
            finish(pg_restore).await?;
            Err(e)
        }
        Err(e) => {
            pg_restore.kill();
            Err(e)
        }
    }
}

/// A running `pg_restore`: write the dump into `take_input()`, then `finish()`.
pub struct PgRestore {
    child: std::process::Child,
    stdin: Option<std::process::ChildStdin>,
    stderr: std::fs::File,
    target: PgTarget,
}

impl PgRestore {
    /// The dump goes here; dropping it tells pg_restore the dump is complete.
    pub fn take_input(&mut self) -> Option<std::process::ChildStdin> {
        self.stdin.take()
    }

    /// Waits for pg_restore; fails with its stderr unless it exited 0.
    pub fn finish(mut self) -> Result<(), PgTargetError> {
        drop(self.stdin.take());
        let status = self.child.wait().map_err(|source| PgTargetError::Spawn {
            tool: "pg_restore",
            source,
        })?;
        if status.success() {
            return Ok(());
        }
        Err(self.target.failed(
            &format!("pg_restore into `{}` ({status})", self.target.database()),
            &read_all(&mut self.stderr),
        ))
    }

    /// Stops pg_restore (the restore was abandoned).
    pub fn kill(mut self) {
        drop(self.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn read_all(file: &mut std::fs::File) -> Vec<u8> {
    use std::io::{Read, Seek};
    let mut out = Vec::new();
    if file.rewind().is_ok() {
        let _ = file.take(64 << 10).read_to_end(&mut out);
    }
    out
}

/// The role names a `pg_dumpall --globals-only` script creates.
pub fn roles_in_globals(globals: &str) -> BTreeSet<String> {
    globals
        .lines()
        .filter_map(|l| l.strip_prefix("CREATE ROLE "))
        .filter_map(|rest| {
            let rest = rest.trim_end_matches(';').trim();
            if let Some(quoted) = rest.strip_prefix('"') {
                let end = quoted.rfind('"')?;
                Some(quoted[..end].replace("\"\"", "\""))
            } else {
                Some(rest.split_whitespace().next()?.to_string())
            }
        })
        .collect()
}

/// A quoted SQL identifier.
fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A quoted SQL string literal.
fn literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_the_database_and_hide_the_password() {
        let t = PgTarget::parse("postgresql://bk:s3cret@127.0.0.1:5433/postgres?sslmode=disable")
            .unwrap();
        assert_eq!(t.database(), "postgres");
        assert!(!t.server().contains("s3cret"), "{}", t.server());
        let scratch = t.with_database("bk_restore_test_x");
        assert_eq!(scratch.database(), "bk_restore_test_x");
        assert!(scratch.url.as_str().contains("sslmode=disable"));
        assert_eq!(
            PgTarget::parse("postgresql://h/my%20db")
                .unwrap()
                .database(),
            "my db"
        );
        assert!(PgTarget::parse("mysql://h/db").is_err());
    }

    #[test]
    fn reads_role_names_from_globals() {
        let globals = "--\n-- Roles\n--\n\nCREATE ROLE app;\nALTER ROLE app WITH NOSUPERUSER;\n\
                       CREATE ROLE \"Odd \"\"Name\";\nCREATE ROLE postgres;\n";
        let roles = roles_in_globals(globals);
        assert_eq!(
            roles.into_iter().collect::<Vec<_>>(),
            vec!["Odd \"Name", "app", "postgres"]
        );
    }

    #[test]
    fn quotes_identifiers_and_literals() {
        assert_eq!(ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(literal("it's"), "'it''s'");
    }
}
