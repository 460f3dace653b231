//! The upload stage: a multipart upload fed from the chunk channel, at most
//! `concurrency` parts in flight. It never completes the upload by itself: the caller
//! finishes it only once the source has exited successfully, and aborts it otherwise,
//! so a short or failed dump never becomes a complete object.

use std::sync::Arc;

use bytes::Bytes;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, WriteMultipart};
use tokio::sync::mpsc;

use super::PipelineError;

/// An upload whose bytes have all been handed over, waiting to be finished or aborted.
pub struct PendingUpload {
    key: Path,
    writer: WriteMultipart,
}

impl PendingUpload {
    pub fn key(&self) -> &Path {
        &self.key
    }

    /// Completes the object. Only now does it appear in the store.
    pub async fn finish(mut self) -> Result<(), PipelineError> {
        let key = self.key.to_string();
        // Wait for the parts in flight first: object_store's `finish` reports the
        // abort's error instead of the part's when both fail, hiding the cause.
        if let Err(source) = self.writer.wait_for_capacity(0).await {
            if let Err(e) = self.writer.abort().await {
                tracing::warn!(key, error = %e, "aborting the multipart upload failed; `bk gc` removes leftovers");
            }
            return Err(PipelineError::Upload { key, source });
        }
        self.writer
            .finish()
            .await
            .map(|_| ())
            .map_err(|source| PipelineError::Upload { key, source })
    }

    /// Abandons the upload; nothing appears in the store.
    pub async fn abort(self) {
        let key = self.key.to_string();
        if let Err(e) = self.writer.abort().await {
            tracing::warn!(key, error = %e, "aborting the multipart upload failed; `bk gc` removes leftovers");
        }
    }
}

pub async fn upload_parts(
    store: Arc<dyn ObjectStore>,
    key: Path,
    mut chunks: mpsc::Receiver<Bytes>,
    part_size: usize,
    concurrency: usize,
) -> Result<PendingUpload, PipelineError> {
    let upload = store
        .put_multipart(&key)
        .await
        .map_err(|source| PipelineError::Upload {
            key: key.to_string(),
            source,
        })?;
    let mut writer = WriteMultipart::new_with_chunk_size(upload, part_size);
    while let Some(chunk) = chunks.recv().await {
        if let Err(source) = writer.wait_for_capacity(concurrency).await {
            // Stop receiving first, so the pipeline thread sees the failure at once.
            drop(chunks);
            let _ = writer.abort().await;
            return Err(PipelineError::Upload {
                key: key.to_string(),
                source,
            });
        }
        writer.put(chunk);
    }
    Ok(PendingUpload { key, writer })
}
