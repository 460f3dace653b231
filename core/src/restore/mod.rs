//! Restores: stored objects back into bytes, files or databases, checking every hash
//! on the way. One code path serves `bk restore`, `bk restore --verify` and the
//! scheduled restore tests, so what the tests prove is what operators will run.
//!
//! Order: the manifest is fetched, checked against the commit record and decrypted
//! first; the payload then streams through the sink while its entries are compared
//! with the manifest in order; at the end the ciphertext hash and size are checked
//! against the commit record and the plaintext's against the manifest.

pub mod compare;
pub mod decrypt;
pub mod download;
pub mod extract;
pub mod mysql;
pub mod postgres;
pub mod safety;
pub mod unseal;

use std::fs::File;
use std::io::{self, BufReader, Read, Seek, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::keys::{Identity, KeyError};
use crate::pipeline::hash::{copy_large, Digest, HashingReader};
use crate::repo::commit::{CommitRecord, StoredObject};
use crate::repo::manifest::{EntryType, ManifestHeader, ManifestReader};
use crate::repo::{RepoError, Repository};
use crate::source::tar_index;

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error(transparent)]
    Repo(#[from] RepoError),
    #[error(transparent)]
    Keys(#[from] KeyError),
    #[error("none of the given identities can decrypt `{key}`: wrong identity file? (the backup is encrypted to the recipients in its commit record)")]
    WrongKey { key: String },
    #[error("`{key}` is damaged: {reason}")]
    Damaged { key: String, reason: String },
    #[error("backup {backup} does not match its manifest: {reason}")]
    Mismatch { backup: String, reason: String },
    #[error(transparent)]
    Extract(#[from] extract::ExtractError),
    #[error("backup {backup} would not restore safely: {refusal}")]
    Unsafe {
        backup: String,
        refusal: safety::Refusal,
    },
    #[error("{what}: {source}")]
    Io { what: String, source: io::Error },
    #[error("backup {backup} is a `{kind}` backup; --to DIR restores only `directory` backups (use --stdout)")]
    NotADirectory { backup: String, kind: String },
    #[error("backup {backup} is a `{kind}` backup; --{flag} restores only `{wanted}` backups")]
    NotADatabase {
        backup: String,
        kind: String,
        flag: &'static str,
        wanted: &'static str,
    },
    #[error("the restore thread failed: {0}")]
    Thread(String),
    #[error("the restore was stopped before it finished")]
    Stopped,
    #[error(transparent)]
    Postgres(#[from] postgres::PgTargetError),
    #[error(transparent)]
    Mysql(#[from] mysql::MyTargetError),
}

/// Where restored bytes go.
pub enum Sink {
    /// Check everything, write nothing.
    Verify,
    /// The payload's plaintext (a tar, a pg_dump archive…) to a writer.
    Stream(Box<dyn Write + Send>),
    /// A directory backup's files under a new or empty directory.
    Directory {
        path: PathBuf,
        keep_special_bits: bool,
    },
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct RestoreReport {
    pub backup_id: String,
    pub job: String,
    pub source_size: u64,
    pub stored_size: u64,
    /// Directory entries compared with the manifest.
    pub entries_checked: u64,
    /// Directory entries restored with a caveat: setuid, setgid or sticky bits (dropped
    /// unless asked to keep them), symlinks pointing outside the restored directory.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    #[serde(with = "humantime_serde")]
    pub elapsed: Duration,
}

/// Restores (or verifies) one committed backup.
pub async fn restore(
    repo: &Repository,
    record: &CommitRecord,
    identities: Arc<Vec<Identity>>,
    sink: Sink,
) -> Result<RestoreReport, RestoreError> {
    restore_until(repo, record, identities, sink, &CancellationToken::new()).await
}

/// `restore`, stoppable: once `stop` fires, reading the payload fails with
/// `RestoreError::Stopped` and the sink gets no further byte.
pub async fn restore_until(
    repo: &Repository,
    record: &CommitRecord,
    identities: Arc<Vec<Identity>>,
    sink: Sink,
    stop: &CancellationToken,
) -> Result<RestoreReport, RestoreError> {
    let clock = Instant::now();
    let manifest_raw = download::open(repo, &record.manifest.key, record.manifest.size).await?;
    let payload_raw: Box<dyn Read + Send> = Box::new(Stoppable {
        inner: download::open(repo, &record.payload.key, record.payload.size).await?,
        stop: stop.clone(),
    });
    let stored_size = record.payload.size + record.manifest.size;
    let record = record.clone();
    let ids = identities.clone();
    let checked =
        tokio::task::spawn_blocking(move || -> Result<(Checked, ManifestHeader), RestoreError> {
            let manifest = read_manifest(manifest_raw, &record, &ids)?;
            let header = manifest.header.clone();
            let checked = restore_payload(payload_raw, &record, &ids, manifest, sink)?;
            Ok((checked, header))
        })
        .await
        .map_err(|e| RestoreError::Thread(e.to_string()))??;
    let (checked, header) = checked;
    Ok(RestoreReport {
        backup_id: header.backup_id.to_string(),
        job: header.job,
        source_size: header.source_size,
        stored_size,
        entries_checked: checked.entries,
        warnings: checked.warnings,
        elapsed: clock.elapsed(),
    })
}

/// Downloads, checks and decrypts a backup's manifest; the reader is positioned at
/// its first entry (restore tests walk the entries again to check restored files).
pub async fn fetch_manifest(
    repo: &Repository,
    record: &CommitRecord,
    identities: Arc<Vec<Identity>>,
) -> Result<ManifestReader<BufReader<File>>, RestoreError> {
    let raw = download::open(repo, &record.manifest.key, record.manifest.size).await?;
    let record = record.clone();
    tokio::task::spawn_blocking(move || read_manifest(raw, &record, &identities))
        .await
        .map_err(|e| RestoreError::Thread(e.to_string()))?
}

/// A payload reader that fails once its token fires.
struct Stoppable {
    inner: Box<dyn Read + Send>,
    stop: CancellationToken,
}

#[derive(Debug)]
struct StoppedMarker;

impl std::fmt::Display for StoppedMarker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the restore was stopped")
    }
}

impl std::error::Error for StoppedMarker {}

impl Read for Stoppable {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.stop.is_cancelled() {
            return Err(io::Error::other(StoppedMarker));
        }
        self.inner.read(buf)
    }
}

/// Fetches and checks the manifest; returns a reader positioned at its first entry.
fn read_manifest(
    raw: Box<dyn Read + Send>,
    record: &CommitRecord,
    ids: &[Identity],
) -> Result<ManifestReader<BufReader<File>>, RestoreError> {
    let key = &record.manifest.key;
    let mut unsealed = unseal::unseal(raw, key, ids)?;
    let mut spool = tempfile::tempfile().map_err(|source| RestoreError::Io {
        what: "creating a temporary file".into(),
        source,
    })?;
    copy_large(&mut unsealed.reader, &mut spool).map_err(|e| read_error(key, e))?;
    check_stored(&record.manifest, &unsealed.cipher.get())?;
    spool.rewind().map_err(|source| RestoreError::Io {
        what: "rewinding the manifest".into(),
        source,
    })?;
    let manifest =
        ManifestReader::new(BufReader::new(spool)).map_err(|e| RestoreError::Damaged {
            key: key.clone(),
            reason: e.to_string(),
        })?;
    if manifest.header.backup_id != record.backup_id || manifest.header.job != record.job {
        return Err(RestoreError::Damaged {
            key: key.clone(),
            reason: format!(
                "it describes backup {} of job {}, not {} of {}",
                manifest.header.backup_id, manifest.header.job, record.backup_id, record.job
            ),
        });
    }
    Ok(manifest)
}

/// What the payload's entries came to.
#[derive(Default)]
struct Checked {
    entries: u64,
    warnings: Vec<String>,
}

fn restore_payload(
    raw: Box<dyn Read + Send>,
    record: &CommitRecord,
    ids: &[Identity],
    manifest: ManifestReader<BufReader<File>>,
    sink: Sink,
) -> Result<Checked, RestoreError> {
    let key = &record.payload.key;
    let backup = record.backup_id.to_string();
    let header = manifest.header.clone();
    let is_tar = header.kind == "directory";
    let mut unsealed = unseal::unseal(raw, key, ids)?;
    let mismatch = |reason: String| RestoreError::Mismatch {
        backup: backup.clone(),
        reason,
    };
    let mut checked = Checked::default();
    match sink {
        Sink::Stream(mut out) => {
            copy_to(&mut unsealed.reader, &mut out, key)?;
            out.flush().map_err(|source| RestoreError::Io {
                what: "writing the restored stream".into(),
                source,
            })?;
        }
        Sink::Verify if !is_tar => copy_to(&mut unsealed.reader, &mut io::sink(), key)?,
        Sink::Verify => {
            // The rules a restore applies, before anything else is read of the entry.
            let mut rules = safety::EntryRules::new(header.source_size);
            let mut warnings = safety::Warnings::default();
            let mut lockstep = compare::Lockstep::new(manifest);
            let mut archive = tar::Archive::new(&mut unsealed.reader);
            for entry in archive.entries().map_err(|e| read_error(key, e))? {
                let mut entry = entry.map_err(|e| read_error(key, e))?;
                let mut found =
                    tar_index::describe_header(&entry).map_err(|e| read_error(key, e))?;
                let safe = rules
                    .check(&found)
                    .map_err(|refusal| RestoreError::Unsafe {
                        backup: backup.clone(),
                        refusal,
                    })?;
                if let Some(warning) = safe.warning {
                    warnings.push(warning);
                }
                tar_index::read_content(&mut entry, &mut found).map_err(|e| read_error(key, e))?;
                lockstep.check(&found).map_err(mismatch)?;
            }
            checked.entries = lockstep.finish().map_err(mismatch)?;
            checked.warnings = warnings.into_vec();
        }
        Sink::Directory {
            path,
            keep_special_bits,
        } => {
            if !is_tar {
                return Err(RestoreError::NotADirectory {
                    backup,
                    kind: header.kind,
                });
            }
            let mut extractor = extract::Extractor::new(&path, keep_special_bits)?
                .max_entry_size(header.source_size);
            let mut lockstep = compare::Lockstep::new(manifest);
            let mut archive = tar::Archive::new(&mut unsealed.reader);
            for entry in archive.entries().map_err(|e| read_error(key, e))? {
                let entry = entry.map_err(|e| read_error(key, e))?;
                let mut found =
                    tar_index::describe_header(&entry).map_err(|e| read_error(key, e))?;
                let mut content = HashingReader::new(entry);
                extractor.write(&found, &mut content).map_err(|e| match e {
                    extract::ExtractError::Io { source, .. }
                        if unseal::damage_of(&source).is_some() =>
                    {
                        read_error(key, source)
                    }
                    other => other.into(),
                })?;
                if found.kind == EntryType::File {
                    copy_large(&mut content, &mut io::sink()).map_err(|e| read_error(key, e))?;
                    found.blake3 = Some(content.into_parts().1.blake3);
                }
                lockstep.check(&found).map_err(mismatch)?;
            }
            checked.entries = lockstep.finish().map_err(mismatch)?;
            checked.warnings = std::mem::take(&mut extractor.warnings).into_vec();
            extractor.finish()?;
        }
    }
    unseal::drain(&mut unsealed.reader).map_err(|e| read_error(key, e))?;
    check_stored(&record.payload, &unsealed.cipher.get())?;
    let plain = unsealed.plain.get();
    if plain.size != header.source_size || plain.blake3 != header.source_blake3 {
        return Err(mismatch(format!(
            "the restored stream is {} bytes with BLAKE3 {}, the manifest recorded {} bytes with {}",
            plain.size, plain.blake3, header.source_size, header.source_blake3
        )));
    }
    Ok(checked)
}

fn copy_to(reader: &mut dyn Read, out: &mut dyn Write, key: &str) -> Result<(), RestoreError> {
    let mut buf = vec![0u8; 256 << 10];
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(read_error(key, e)),
        };
        out.write_all(&buf[..n])
            .map_err(|source| RestoreError::Io {
                what: "writing the restored stream".into(),
                source,
            })?;
    }
}

/// Compares what was read with the commit record's size and hash.
fn check_stored(expected: &StoredObject, found: &Digest) -> Result<(), RestoreError> {
    if found.size != expected.size || found.blake3 != expected.blake3 {
        return Err(RestoreError::Damaged {
            key: expected.key.clone(),
            reason: format!(
                "read {} bytes with BLAKE3 {}, the commit record says {} bytes with {}",
                found.size, found.blake3, expected.size, expected.blake3
            ),
        });
    }
    Ok(())
}

/// An error while reading the object chain: damage if tagged so, else I/O.
fn read_error(key: &str, e: io::Error) -> RestoreError {
    if is_stopped(&e) {
        return RestoreError::Stopped;
    }
    match unseal::damage_of(&e) {
        Some(reason) => RestoreError::Damaged {
            key: key.to_string(),
            reason,
        },
        None if e.kind() == io::ErrorKind::InvalidData
            || e.kind() == io::ErrorKind::UnexpectedEof =>
        {
            RestoreError::Damaged {
                key: key.to_string(),
                reason: e.to_string(),
            }
        }
        None => RestoreError::Io {
            what: format!("reading `{key}`"),
            source: e,
        },
    }
}

/// True if `e` (or an error it wraps) is the stop of a `Stoppable` reader.
pub(crate) fn is_stopped(e: &io::Error) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = e.get_ref().map(|r| r as _);
    while let Some(c) = cause {
        if c.is::<StoppedMarker>() {
            return true;
        }
        if let Some(inner) = c.downcast_ref::<io::Error>() {
            if let Some(r) = inner.get_ref() {
                cause = Some(r as _);
                continue;
            }
        }
        cause = c.source();
    }
    false
}

/// A database restore target's URL, if `url` parses and has one of `schemes`.
pub(crate) fn target_url(url: &str, schemes: &[&str]) -> Option<url::Url> {
    url::Url::parse(url)
        .ok()
        .filter(|u| schemes.contains(&u.scheme()))
}

/// A restore target's server for messages: no credentials, no database.
pub(crate) fn target_server(url: &url::Url) -> String {
    let mut u = url.clone();
    u.set_path("");
    crate::repo::redact_url(u.as_str())
}

/// A percent-encoded URL part (database name, user, password), decoded; invalid
/// escapes are kept as they are.
pub(crate) fn url_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}
