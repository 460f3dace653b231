//! `bk restore JOB [BACKUP_ID|latest] --identity FILE (--to DIR | --stdout | --pg-target URL | --mysql-target URL) [--verify]`.

use std::path::Path;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::keys;
use crate::repo::Repository;
use crate::restore::mysql::{MyTarget, MyTargetError};
use crate::restore::postgres::{self, PgTarget, PgTargetError};
use crate::restore::{self, RestoreError, RestoreReport, Sink};

pub async fn run(
    repo: &Repository,
    job: &str,
    which: &str,
    identity_files: &[&Path],
    sink: Sink,
) -> Result<RestoreReport, RestoreError> {
    let mut identities = Vec::new();
    for file in identity_files {
        identities.extend(keys::load_identities(file)?);
    }
    repo.read_marker().await?;
    let record = repo.resolve(job, which).await?;
    tracing::info!(job, backup = %record.backup_id, "restoring");
    restore::restore(repo, &record, Arc::new(identities), sink).await
}

/// `bk restore JOB [BACKUP] --pg-target URL`: restores a `postgres` backup into the
/// new database the URL names, created on that server first. A restore that fails
/// drops the database again, so nothing half-restored is left looking complete.
pub async fn to_postgres(
    repo: &Repository,
    job: &str,
    which: &str,
    identity_files: &[&Path],
    url: &str,
    no_owner: bool,
) -> Result<RestoreReport, RestoreError> {
    let mut identities = Vec::new();
    for file in identity_files {
        identities.extend(keys::load_identities(file)?);
    }
    let target = PgTarget::parse(url)?;
    let database = target.database();
    repo.read_marker().await?;
    let record = repo.resolve(job, which).await?;
    if record.kind != "postgres" {
        return Err(RestoreError::NotADatabase {
            backup: record.backup_id.to_string(),
            kind: record.kind.clone(),
            flag: "pg-target",
            wanted: "postgres",
        });
    }
    if database == "postgres" {
        return Err(RestoreError::Postgres(PgTargetError::Exists {
            database,
            server: target.server(),
        }));
    }
    let server = target.with_database("postgres");
    server.create_database(&database).await?;
    tracing::info!(job, backup = %record.backup_id, database = %database, "restoring into PostgreSQL");
    let never = CancellationToken::new();
    let restored = postgres::restore_dump(
        &target,
        repo,
        &record,
        Arc::new(identities),
        no_owner,
        &never,
    )
    .await;
    if restored.is_err() {
        if let Err(e) = server.drop_database(&database).await {
            tracing::error!(database = %database, error = %e, "dropping the half-restored database failed; drop it by hand");
        }
    }
    restored
}

/// `bk restore JOB [BACKUP] --mysql-target URL`: restores a `mysql` backup into the new
/// database the URL names, created first; dropped again if the restore fails.
pub async fn to_mysql(
    repo: &Repository,
    job: &str,
    which: &str,
    identity_files: &[&Path],
    url: &str,
) -> Result<RestoreReport, RestoreError> {
    let mut identities = Vec::new();
    for file in identity_files {
        identities.extend(keys::load_identities(file)?);
    }
    let target = MyTarget::parse(url)?;
    let Some(database) = target.database() else {
        return Err(RestoreError::Mysql(MyTargetError::BadUrl(format!(
            "{} names no database: add /NEWDB",
            target.server()
        ))));
    };
    repo.read_marker().await?;
    let record = repo.resolve(job, which).await?;
    if record.kind != "mysql" {
        return Err(RestoreError::NotADatabase {
            backup: record.backup_id.to_string(),
            kind: record.kind.clone(),
            flag: "mysql-target",
            wanted: "mysql",
        });
    }
    target.create_database(&database).await?;
    tracing::info!(job, backup = %record.backup_id, database = %database, "restoring into MariaDB/MySQL");
    let never = CancellationToken::new();
    let restored = target
        .restore_dump(&database, repo, &record, Arc::new(identities), &never)
        .await;
    if restored.is_err() {
        if let Err(e) = target.drop_database(&database).await {
            tracing::error!(database = %database, error = %e, "dropping the half-restored database failed; drop it by hand");
        }
    }
    restored
}
