//! Opening the object store a repository URL names, and learning what it guarantees.
//!
//! Builders are configured explicitly (object_store's `parse_url_opts` silently drops
//! unknown keys and ignores the environment): credentials come from the environment
//! (AWS_*, GOOGLE_*, AZURE_*) or from `credentials_file`, every option key is checked,
//! and no option value ever appears in an error message.

use std::collections::BTreeMap;
use std::path::Path as FsPath;
use std::sync::Arc;

use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
use object_store::gcp::{GoogleCloudStorageBuilder, GoogleConfigKey};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::prefix::PrefixStore;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, RetryConfig};

use super::uploads::S3Uploads;
use crate::config::RepositoryConfig;

/// An opened store, its root directory when it is the local file system, and on S3
/// the means to find its open multipart uploads.
pub struct Opened {
    pub store: Arc<dyn ObjectStore>,
    pub local_root: Option<std::path::PathBuf>,
    pub open_uploads: Option<S3Uploads>,
}

/// Builds the store for `config.url`; `Err` holds a message naming the problem.
pub fn build(config: &RepositoryConfig) -> Result<Opened, String> {
    let url = url::Url::parse(&config.url).map_err(|e| format!("not a URL: {e}"))?;
    let mut options = config.options.clone();
    // A credentials file's keys are never quoted back: a bare key pasted on a line of
    // its own (`AbC…==`) would otherwise show up as an "unknown option".
    let mut secret_keys = std::collections::BTreeSet::new();
    if let Some(file) = &config.credentials_file {
        let credentials = read_credentials(file)?;
        secret_keys.extend(credentials.keys().cloned());
        options.extend(credentials);
    }
    let unknown_key = |key: &str, backend: &str| {
        match &config.credentials_file {
        Some(file) if secret_keys.contains(key) => format!(
            "credentials file {}: a line is not an option of the {backend} backend (not shown: it may hold a secret; see docs/storage.md)",
            file.display()
        ),
        _ => unknown_key(key, backend),
    }
    };
    let retry = RetryConfig {
        max_retries: config.max_retries,
        retry_timeout: config.retry_timeout,
        ..RetryConfig::default()
    };
    let bucket_and_prefix = || -> (String, String) {
        let bucket = url.host_str().unwrap_or_default().to_string();
        let prefix = url.path().trim_matches('/').to_string();
        (bucket, prefix)
    };
    let mut open_uploads = None;
    let mut local_root = None;
    let (store, prefix): (Arc<dyn ObjectStore>, String) = match url.scheme() {
        "file" => {
            let root = url
                .to_file_path()
                .map_err(|_| "a file:// URL needs a local absolute path".to_string())?;
            create_private_dir(&root).map_err(|e| format!("creating {}: {e}", root.display()))?;
            let fs = LocalFileSystem::new_with_prefix(&root)
                .map_err(|e| e.to_string())?
                .with_fsync(true)
                .with_automatic_cleanup(true);
            local_root = Some(root);
            (Arc::new(fs), String::new())
        }
        "s3" | "s3a" => {
            let (bucket, prefix) = bucket_and_prefix();
            let mut b = AmazonS3Builder::from_env()
                .with_bucket_name(bucket)
                .with_retry(retry);
            for (k, v) in &options {
                let key: AmazonS3ConfigKey = k
                    .to_ascii_lowercase()
                    .parse()
                    .map_err(|_| unknown_key(k, "s3"))?;
                b = b.with_config(key, v.clone());
            }
            let s3 = Arc::new(b.build().map_err(|e| e.to_string())?);
            open_uploads = Some(S3Uploads::new(s3.clone(), &prefix));
            (s3, prefix)
        }
        "gs" => {
            let (bucket, prefix) = bucket_and_prefix();
            let mut b = GoogleCloudStorageBuilder::from_env()
                .with_bucket_name(bucket)
                .with_retry(retry);
            for (k, v) in &options {
                let key: GoogleConfigKey = k
                    .to_ascii_lowercase()
                    .parse()
                    .map_err(|_| unknown_key(k, "gs"))?;
                b = b.with_config(key, v.clone());
            }
            (Arc::new(b.build().map_err(|e| e.to_string())?), prefix)
        }
        "az" | "azure" => {
            let (container, prefix) = bucket_and_prefix();
            let mut b = MicrosoftAzureBuilder::from_env()
                .with_container_name(container)
                .with_retry(retry);
            for (k, v) in &options {
                let key: AzureConfigKey = k
                    .to_ascii_lowercase()
                    .parse()
                    .map_err(|_| unknown_key(k, "az"))?;
                b = b.with_config(key, v.clone());
            }
            (Arc::new(b.build().map_err(|e| e.to_string())?), prefix)
        }
        other => {
            return Err(format!(
                "unsupported scheme `{other}` (use file://, s3://, gs:// or az://)"
            ))
        }
    };
    let store = if prefix.is_empty() {
        store
    } else {
        Arc::new(PrefixStore::new(store, Path::from(prefix)))
    };
    Ok(Opened {
        store,
        local_root,
        open_uploads,
    })
}

fn unknown_key(key: &str, backend: &str) -> String {
    format!("`{key}` is not an option of the {backend} backend (see docs/storage.md)")
}

/// Reads `key = value` lines (comments with #; values may be quoted).
fn read_credentials(path: &FsPath) -> Result<BTreeMap<String, String>, String> {
    use std::os::unix::fs::PermissionsExt;
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read credentials file {}: {e}", path.display()))?;
    if let Ok(meta) = std::fs::metadata(path) {
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(file = %path.display(), "credentials file is readable by group or others; chmod 600 it");
        }
    }
    let mut out = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (k, v) = line
            .split_once('=')
            .ok_or_else(|| format!("{} line {}: expected `key = value`", path.display(), n + 1))?;
        let v = v.trim().trim_matches('"').trim_matches('\'');
        out.insert(k.trim().to_string(), v.to_string());
    }
    Ok(out)
}

fn create_private_dir(path: &FsPath) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if path.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
}

/// What the store guarantees, learned by trying.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CreateOnly {
    /// A second create-if-absent of the same key was refused: commit records cannot be overwritten.
    Enforced,
    /// The store accepted (and applied) the second create: it ignores `If-None-Match`.
    NotEnforced,
    /// The store rejects conditional writes altogether.
    Unsupported,
}

impl CreateOnly {
    pub fn describe(self) -> &'static str {
        match self {
            CreateOnly::Enforced => "create-only writes enforced by the store",
            CreateOnly::NotEnforced => {
                "the store ignores create-only writes; bk relies on unique backup IDs and checks before committing"
            }
            CreateOnly::Unsupported => {
                "the store rejects conditional writes; bk relies on unique backup IDs and checks before committing"
            }
        }
    }
}

/// Writes the same scratch key twice with create-only semantics and sees what happens.
pub async fn probe_create_only(
    store: &dyn ObjectStore,
    writer: &str,
) -> Result<CreateOnly, object_store::Error> {
    let key = Path::from_iter([
        "bk-probe",
        &format!("{writer}-{:016x}", rand::random::<u64>()),
    ]);
    let create = || PutOptions::from(PutMode::Create);
    let first = store
        .put_opts(&key, PutPayload::from_static(b"1"), create())
        .await;
    let result = match first {
        Err(object_store::Error::NotImplemented { .. })
        | Err(object_store::Error::NotSupported { .. }) => return Ok(CreateOnly::Unsupported),
        Err(e) => return Err(e),
        Ok(_) => match store
            .put_opts(&key, PutPayload::from_static(b"2"), create())
            .await
        {
            Err(object_store::Error::AlreadyExists { .. })
            | Err(object_store::Error::Precondition { .. }) => CreateOnly::Enforced,
            Ok(_) => CreateOnly::NotEnforced,
            Err(e) => return Err(e),
        },
    };
    // Best effort: write-only credentials cannot delete; `bk gc` sweeps probes later.
    let _ = store.delete(&key).await;
    Ok(result)
}
