//! The backup data path, streaming end to end with bounded memory:
//!
//! ```text
//! plaintext ─▶ hash ─▶ zstd jobs ═▶ frames in order ─▶ age ─▶ hash ─▶ chunks ═channel═▶ multipart upload
//! └─ blocking thread ─┘  └ bk-zstd ┘ └──────────── encrypt thread ──────────┘         └─ async task ─┘
//! ```
//!
//! `seal` runs the CPU-bound stages on threads of their own (never on the async
//! runtime's workers): the feeding thread, the zstd workers (compress.rs) and the
//! encrypting thread; the upload runs as an async task. The bounded hand-offs between
//! them carry backpressure from storage back to the source. The upload is left
//! pending: the caller completes it only after checking the source's exit status.

pub mod chunks;
pub mod compress;
pub mod direct;
pub mod encrypt;
pub mod handoff;
pub mod hash;
pub mod upload;

use std::io::{self, Write};
use std::sync::Arc;

use object_store::path::Path;
use object_store::ObjectStore;
use tokio::sync::mpsc;

use crate::config::CompressionConfig;
use crate::keys::Recipient;
pub use hash::Digest;
pub use upload::PendingUpload;

/// Chunks (1 MiB each) queued between the pipeline thread and the uploader.
const CHANNEL_DEPTH: usize = 8;

/// The same for a `file://` repository. Each of its parts is one chunk written with
/// `O_DIRECT`, and the writes that extend a file take turns (ext4 serializes them), so
/// the device's pauses (a flush, another writer) reach the pipeline through a queue of
/// eight chunks within ~60 ms; 32 chunks keep the cores compressing through them
/// (docs/performance.md: −4 to −7% of a local backup's time with the syncs every
/// 64 MiB in direct.rs; peak memory 53 → 68 MiB on the benchmark's set).
const LOCAL_CHANNEL_DEPTH: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("uploading `{key}` failed: {source}")]
    Upload {
        key: String,
        source: object_store::Error,
    },
    #[error("{0}")]
    Stream(io::Error),
    #[error("the pipeline thread failed: {0}")]
    Panicked(String),
}

/// How objects are sealed: compression, recipients, and upload shape.
#[derive(Clone)]
pub struct SealSettings {
    pub compression: CompressionConfig,
    pub recipients: Arc<Vec<Recipient>>,
    pub part_size: usize,
    pub upload_concurrency: usize,
    /// The repository's root directory when it is the local file system (`file://`).
    pub local_root: Option<std::path::PathBuf>,
}

/// The result of sealing one stream into a pending object.
pub struct Sealed<T> {
    /// What `feed` returned.
    pub output: T,
    /// Size and hash of the plaintext that went in.
    pub plain: Digest,
    /// Size and hash of the ciphertext that was uploaded.
    pub cipher: Digest,
    pub upload: PendingUpload,
}

/// Compresses, encrypts and uploads whatever `feed` writes, to `key`.
///
/// `feed` runs on a blocking thread and writes the plaintext into the writer it is
/// given. If it fails, or any stage fails, the upload is aborted and the first cause
/// is returned: an upload failure wins over the broken pipe it causes upstream.
pub async fn seal<T, F>(
    store: Arc<dyn ObjectStore>,
    key: Path,
    settings: &SealSettings,
    feed: F,
) -> Result<Sealed<T>, PipelineError>
where
    T: Send + 'static,
    F: FnOnce(&mut dyn Write) -> io::Result<T> + Send + 'static,
{
    let depth = match settings.local_root {
        Some(_) => LOCAL_CHANNEL_DEPTH,
        None => CHANNEL_DEPTH,
    };
    let (tx, rx) = mpsc::channel(depth);
    let upload = tokio::spawn(upload::upload_parts(
        store,
        key,
        rx,
        settings.part_size,
        settings.upload_concurrency,
        settings.local_root.clone(),
    ));
    let recipients = settings.recipients.clone();
    let compression = settings.compression.clone();
    let sealing = tokio::task::spawn_blocking(move || -> io::Result<(T, Digest, Digest)> {
        let cipher = hash::HashingWriter::new(chunks::ChunkSender::new(tx));
        let encrypted = encrypt::encryptor(cipher, &recipients)?;
        // age and the ciphertext hash run on a thread of their own, beside compression.
        let compressed = compress::compressor(encrypted, "bk-encrypt", &compression)?;
        let mut plain = hash::HashingWriter::new(compressed);
        // No buffer here: zstd keeps its own input buffer, and `feed` writes in blocks.
        let output = feed(&mut plain)?;
        plain.flush()?;
        let (compressed, plain_digest) = plain.into_parts();
        let cipher = compressed.finish()?.finish()?;
        let (chunks, cipher_digest) = cipher.into_parts();
        chunks.finish()?;
        Ok((output, plain_digest, cipher_digest))
    });
    let sealed = sealing.await;
    let uploaded = upload.await;
    match (sealed, uploaded) {
        (Ok(Ok((output, plain, cipher))), Ok(Ok(upload))) => Ok(Sealed {
            output,
            plain,
            cipher,
            upload,
        }),
        (_, Ok(Err(upload_error))) => Err(upload_error),
        (Ok(Err(stream_error)), Ok(Ok(upload))) => {
            upload.abort().await;
            Err(PipelineError::Stream(stream_error))
        }
        (Err(join), Ok(Ok(upload))) => {
            upload.abort().await;
            Err(PipelineError::Panicked(join.to_string()))
        }
        (_, Err(join)) => Err(PipelineError::Panicked(join.to_string())),
    }
}
