//! The repository: one bucket/prefix in object storage holding a marker and, per
//! backup, an encrypted payload, an encrypted manifest and a plaintext commit record
//! written last (see docs/format.md). This module opens the store and reads and
//! writes the small plaintext objects; payloads stream through `pipeline` and `restore`.
//!
//! It must never report a backup whose commit record is missing.

pub mod commit;
pub mod id;
pub mod layout;
pub mod manifest;
pub mod marker;
pub mod store;
pub mod uploads;

use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};

use crate::config::RepositoryConfig;
use commit::CommitRecord;
use id::BackupId;
use marker::Marker;

/// How many listings of job folders run at once when listing every job.
const LISTINGS_AT_ONCE: usize = 8;

/// Commit records and markers are small; anything larger is not one.
const SMALL_OBJECT_LIMIT: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    #[error("storage error on `{key}`: {source}")]
    Store {
        key: String,
        source: object_store::Error,
    },
    #[error("`{key}` is damaged: {reason}")]
    BadObject { key: String, reason: String },
    #[error(
        "no bk repository at {url} (no {}); `bk run` creates it on the first backup",
        layout::MARKER
    )]
    NotARepository { url: String },
    #[error("cannot open storage {url}: {reason}")]
    Open { url: String, reason: String },
    #[error(
        "job `{job}` has no backup `{id}` in {url} (`bk list {job}` shows the committed ones)"
    )]
    NoSuchBackup {
        job: String,
        id: String,
        url: String,
    },
    #[error("job `{job}` has no committed backup in {url}")]
    NoBackups { job: String, url: String },
    #[error("commit record `{key}` already exists; refusing to overwrite a committed backup")]
    CommitExists { key: String },
}

pub type Result<T, E = RepoError> = std::result::Result<T, E>;

/// An open repository.
#[derive(Clone)]
pub struct Repository {
    store: Arc<dyn ObjectStore>,
    url: String,
    /// What the store does with create-only writes, probed once per process.
    create_only: Arc<tokio::sync::OnceCell<store::CreateOnly>>,
    /// The root directory when the store is the local file system (`file://`).
    local: Option<std::path::PathBuf>,
    /// On S3: listing and aborting multipart uploads that were never finished.
    open_uploads: Option<uploads::S3Uploads>,
}

impl Repository {
    /// Opens the store named by the configuration. Does not touch the marker.
    pub fn open(config: &RepositoryConfig) -> Result<Self> {
        let url = redact_url(&config.url);
        let opened = store::build(config).map_err(|reason| RepoError::Open {
            url: url.clone(),
            reason,
        })?;
        Ok(Repository {
            store: opened.store,
            url,
            create_only: Default::default(),
            local: opened.local_root,
            open_uploads: opened.open_uploads,
        })
    }

    /// A repository over an already built store (tests, other backends).
    pub fn from_store(store: Arc<dyn ObjectStore>, url: &str) -> Self {
        Repository {
            store,
            url: redact_url(url),
            create_only: Default::default(),
            local: None,
            open_uploads: None,
        }
    }

    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// The root directory of a `file://` repository.
    pub fn local_root(&self) -> Option<std::path::PathBuf> {
        self.local.clone()
    }

    /// On S3, the multipart uploads that were started and never finished; `None` for
    /// stores whose unfinished uploads cannot be listed (see docs/storage.md).
    pub fn open_uploads(&self) -> Option<&uploads::S3Uploads> {
        self.open_uploads.as_ref()
    }

    /// The URL for messages, without credentials.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Whether the store enforces create-only writes (probed on first use).
    pub async fn create_only(&self) -> Result<store::CreateOnly> {
        self.create_only
            .get_or_try_init(|| async {
                let found =
                    store::probe_create_only(self.store.as_ref(), &crate::catalog::hostname())
                        .await
                        .map_err(|source| RepoError::Store {
                            key: "bk-probe/".into(),
                            source,
                        })?;
                if found != store::CreateOnly::Enforced {
                    tracing::warn!(repository = %self.url, "{}", found.describe());
                }
                Ok(found)
            })
            .await
            .copied()
    }

    /// Reads the marker, creating it (create-only) if the repository is new.
    pub async fn init(&self) -> Result<Marker> {
        self.create_only().await?;
        match self.read_marker().await {
            Err(RepoError::NotARepository { .. }) => {}
            other => return other,
        }
        let key = layout::marker();
        let put = self
            .store
            .put_opts(
                &key,
                PutPayload::from(Marker::new().to_json()),
                PutOptions::from(PutMode::Create),
            )
            .await;
        match put {
            Ok(_) | Err(object_store::Error::AlreadyExists { .. }) => self.read_marker().await,
            Err(source) => Err(RepoError::Store {
                key: key.to_string(),
                source,
            }),
        }
    }

    /// Reads and checks the marker; `NotARepository` if there is none.
    pub async fn read_marker(&self) -> Result<Marker> {
        let key = layout::marker();
        match self.get_small(&key).await {
            Ok(bytes) => Marker::from_json(key.as_ref(), &bytes),
            Err(RepoError::Store {
                source: object_store::Error::NotFound { .. },
                ..
            }) => Err(RepoError::NotARepository {
                url: self.url.clone(),
            }),
            Err(e) => Err(e),
        }
    }

    /// Fetches a small object whole, refusing anything over 1 MiB.
    pub async fn get_small(&self, key: &Path) -> Result<Vec<u8>> {
        let store_err = |source| RepoError::Store {
            key: key.to_string(),
            source,
        };
        let result = self.store.get(key).await.map_err(store_err)?;
        if result.meta.size > SMALL_OBJECT_LIMIT {
            return Err(RepoError::BadObject {
                key: key.to_string(),
                reason: format!(
                    "{} bytes is too large for this kind of object",
                    result.meta.size
                ),
            });
        }
        Ok(result.bytes().await.map_err(store_err)?.to_vec())
    }

    pub async fn read_commit(&self, job: &str, id: &BackupId) -> Result<CommitRecord> {
        let key = layout::commit(job, id);
        let bytes = self.get_small(&key).await.map_err(|e| match e {
            RepoError::Store {
                source: object_store::Error::NotFound { .. },
                ..
            } => RepoError::NoSuchBackup {
                job: job.to_string(),
                id: id.to_string(),
                url: self.url.clone(),
            },
            other => other,
        })?;
        let record = CommitRecord::from_json(key.as_ref(), &bytes)?;
        if record.job != job || &record.backup_id != id {
            return Err(RepoError::BadObject {
                key: key.to_string(),
                reason: format!(
                    "it names backup {} of job {}, not its own path",
                    record.backup_id, record.job
                ),
            });
        }
        Ok(record)
    }

    /// Writes a commit record, create-only: an existing record is never replaced. On a
    /// store that ignores create-only writes, it checks for an existing record first
    /// (backup IDs carry 64 random bits, so this is a second line of defence).
    pub async fn put_commit(&self, record: &CommitRecord) -> Result<()> {
        let key = layout::commit(&record.job, &record.backup_id);
        if self.create_only().await? != store::CreateOnly::Enforced {
            match self.store.head(&key).await {
                Ok(_) => {
                    return Err(RepoError::CommitExists {
                        key: key.to_string(),
                    })
                }
                Err(object_store::Error::NotFound { .. }) => {}
                Err(source) => {
                    return Err(RepoError::Store {
                        key: key.to_string(),
                        source,
                    })
                }
            }
            let put = self
                .store
                .put(&key, PutPayload::from(record.to_json()))
                .await;
            return put.map(|_| ()).map_err(|source| RepoError::Store {
                key: key.to_string(),
                source,
            });
        }
        match self
            .store
            .put_opts(
                &key,
                PutPayload::from(record.to_json()),
                PutOptions::from(PutMode::Create),
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(object_store::Error::AlreadyExists { .. }) => Err(RepoError::CommitExists {
                key: key.to_string(),
            }),
            Err(source) => Err(RepoError::Store {
                key: key.to_string(),
                source,
            }),
        }
    }

    /// Every committed backup (of one job, or of all), newest first. Objects without a
    /// commit record are not backups and are not listed.
    pub async fn list_commits(&self, job: Option<&str>) -> Result<Vec<CommitRecord>> {
        let keys = self.committed_keys(job).await?;
        let mut records = self.read_commits(keys).await?;
        records.sort_by(|a, b| b.backup_id.cmp(&a.backup_id));
        Ok(records)
    }

    /// The commit records of these (job, backup ID) pairs, several read at once, in
    /// no particular order.
    pub async fn read_commits(&self, keys: Vec<(String, BackupId)>) -> Result<Vec<CommitRecord>> {
        futures::stream::iter(keys)
            .map(|(job, id)| async move { self.read_commit(&job, &id).await })
            .buffer_unordered(16)
            .try_collect()
            .await
    }

    /// The (job, backup ID) of every commit record in the job folder `prefix`.
    async fn commit_keys(&self, prefix: Path) -> Result<Vec<(String, BackupId)>> {
        let job = prefix.filename().unwrap_or_default().to_string();
        // Names bk gives jobs are the same on disk and in the store's paths.
        if let Some(root) = self.local.clone().filter(|_| layout::valid_job_name(&job)) {
            let dir = root.join(layout::BACKUPS).join(&job);
            return tokio::task::spawn_blocking(move || local_commit_keys(&dir, &job))
                .await
                .map_err(|e| std::io::Error::other(e.to_string()))
                .and_then(|found| found)
                .map_err(|e| RepoError::Store {
                    key: prefix.to_string(),
                    source: object_store::Error::Generic {
                        store: "LocalFileSystem",
                        source: Box::new(e),
                    },
                });
        }
        self.store
            .list(Some(&prefix))
            .map_err(|source| RepoError::Store {
                key: prefix.to_string(),
                source,
            })
            .try_filter_map(|meta| async move {
                Ok(layout::parse_backup_object(&meta.location)
                    .filter(|(_, _, name)| name == layout::COMMIT)
                    .map(|(job, id, _)| (job, id)))
            })
            .try_collect()
            .await
    }

    /// The (job, backup ID) of every commit record, of one job or of all: which
    /// backups exist.
    pub async fn committed_keys(&self, job: Option<&str>) -> Result<Vec<(String, BackupId)>> {
        Ok(match job {
            Some(j) => self.commit_keys(layout::job_prefix(j)).await?,
            None => {
                // One listing per job, several at once: on S3 a listing is a chain of
                // requests of 1,000 keys each, so 50 jobs listed side by side take the
                // time of the longest, not of all of them in a row.
                let root = Path::from(layout::BACKUPS);
                let jobs = self
                    .store
                    .list_with_delimiter(Some(&root))
                    .await
                    .map_err(|source| RepoError::Store {
                        key: root.to_string(),
                        source,
                    })?
                    .common_prefixes;
                let per_job: Vec<Vec<(String, BackupId)>> = futures::stream::iter(jobs)
                    .map(|prefix| self.commit_keys(prefix))
                    .buffer_unordered(LISTINGS_AT_ONCE)
                    .try_collect()
                    .await?;
                per_job.into_iter().flatten().collect()
            }
        })
    }

    /// Resolves `latest` or an explicit ID to a committed backup of `job`.
    pub async fn resolve(&self, job: &str, which: &str) -> Result<CommitRecord> {
        if which == "latest" {
            return self
                .list_commits(Some(job))
                .await?
                .into_iter()
                .next()
                .ok_or_else(|| RepoError::NoBackups {
                    job: job.to_string(),
                    url: self.url.clone(),
                });
        }
        let id = BackupId::parse(which).map_err(|_| RepoError::NoSuchBackup {
            job: job.to_string(),
            id: which.to_string(),
            url: self.url.clone(),
        })?;
        self.read_commit(job, &id).await
    }
}

/// Drops user, password and query (which may hold credentials) from a URL for display.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.set_query(None);
            u.to_string()
        }
        Err(_) => "<invalid url>".into(),
    }
}

/// `commit_keys` of a `file://` repository by walking the job's folder directly: the
/// store's own listing stats every object three times (900,000 calls for 100,000
/// backups), while a backup is committed exactly when `ID/commit.json` is a file, one
/// stat per backup. Same answer as the listing: what it does not hold is not a backup.
fn local_commit_keys(
    job_dir: &std::path::Path,
    job: &str,
) -> std::io::Result<Vec<(String, BackupId)>> {
    let entries = match std::fs::read_dir(job_dir) {
        Ok(entries) => entries,
        // A job without backups has no folder: an empty listing, as from the store.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut keys = Vec::new();
    for entry in entries {
        let entry = entry?;
        let Some(id) = entry
            .file_name()
            .to_str()
            .and_then(|name| BackupId::parse(name).ok())
        else {
            continue;
        };
        match std::fs::metadata(entry.path().join(layout::COMMIT)) {
            Ok(meta) if meta.is_file() => keys.push((job.to_string(), id)),
            Ok(_) => {}
            // Not committed, or pruned while we looked.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(keys)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A `file://` repository (not initialised) in the folder `root`.
    pub(crate) fn local_repository(root: &std::path::Path) -> Repository {
        let config: RepositoryConfig = toml::from_str(&format!(
            "url = \"file://{}\"\nrecipients = []",
            root.display()
        ))
        .unwrap();
        Repository::open(&config).unwrap()
    }

    /// The walk of a `file://` repository finds exactly what the store's listing finds.
    #[tokio::test(flavor = "multi_thread")]
    async fn local_walk_lists_what_the_store_lists() {
        let dir = tempfile::tempdir().unwrap();
        let walked = local_repository(dir.path());
        assert!(walked.local_root().is_some());
        // The same store, listed through object_store.
        let listed = Repository::from_store(walked.store().clone(), "file:///elsewhere");
        let t = chrono::Utc::now();
        let put = |path: Path| {
            let store = walked.store().clone();
            async move {
                store
                    .put(&path, PutPayload::from_static(b"x"))
                    .await
                    .unwrap()
            }
        };
        let (a1, a2, b1) = (BackupId::new(t), BackupId::new(t), BackupId::new(t));
        put(layout::payload("a", &a1)).await;
        put(layout::commit("a", &a1)).await;
        put(layout::payload("a", &a2)).await; // not committed
        put(layout::commit("b.x_1", &b1)).await;
        put(Path::from("backups/a/not-an-id/commit.json")).await;
        put(Path::from("backups/stray.json")).await;
        // A folder where the commit record should be is not one.
        let c1 = BackupId::new(t);
        std::fs::create_dir_all(
            dir.path()
                .join("backups/a")
                .join(c1.as_str())
                .join("commit.json"),
        )
        .unwrap();

        for job in [None, Some("a"), Some("b.x_1"), Some("none")] {
            let mut w = walked.committed_keys(job).await.unwrap();
            let mut l = listed.committed_keys(job).await.unwrap();
            w.sort();
            l.sort();
            assert_eq!(w, l, "{job:?}");
        }
        let mut all = walked.committed_keys(None).await.unwrap();
        all.sort();
        let mut expected = vec![("a".to_string(), a1), ("b.x_1".to_string(), b1)];
        expected.sort();
        assert_eq!(all, expected);
    }

    #[test]
    fn urls_are_redacted() {
        assert_eq!(
            redact_url("s3://key:secret@bucket/p?token=x"),
            "s3://bucket/p"
        );
    }
}
