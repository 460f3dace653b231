//! The upload stage: a multipart upload fed from the chunk channel, at most
//! `concurrency` parts in flight. It never completes the upload by itself: the caller
//! finishes it only once the source has exited successfully, and aborts it otherwise,
//! so a short or failed dump never becomes a complete object.

use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use object_store::path::Path;
use object_store::{MultipartUpload, ObjectStore, ObjectStoreExt, PutPayloadMut};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::direct::DirectUpload;
use super::PipelineError;

/// The largest part S3 accepts.
const MAX_PART: usize = 5 << 30;

/// The part size of a `file://` repository: each chunk as it arrives. The local store has
/// neither a minimum part size nor a part limit, so gathering `part_size` (16 MiB) first
/// would only hold memory, up to (`upload_concurrency` + 1) parts per backup, and copy
/// the bytes into the file once they have left the CPU's caches.
const LOCAL_PART: usize = super::chunks::CHUNK;

/// The size of each part of an upload. S3 and GCS accept at most 10,000 parts per
/// object, so a fixed 16 MiB part would cap an object at 156 GiB, and a night's dump of a
/// few hundred GiB of incompressible uploads would fail at its very end. The first
/// `steady` parts have the configured size (78 GiB at 16 MiB); after that, every `step`
/// parts the size doubles, up to 5 GiB: 10,000 parts of a 16 MiB start hold 1 TiB. Memory
/// grows with the part only for objects that need it.
#[derive(Debug, Clone, Copy)]
struct PartSizes {
    base: usize,
    steady: usize,
    step: usize,
}

impl PartSizes {
    fn new(base: usize) -> PartSizes {
        PartSizes {
            base,
            steady: 5000,
            step: 1000,
        }
    }

    /// Every part the same size (a store without a part limit).
    fn fixed(size: usize) -> PartSizes {
        PartSizes {
            base: size,
            steady: usize::MAX,
            step: 1,
        }
    }

    /// The size of part `index` (from 0).
    fn of(&self, index: usize) -> usize {
        let doublings = match index.checked_sub(self.steady) {
            None => 0,
            Some(past) => past / self.step.max(1) + 1,
        };
        let doublings = u32::try_from(doublings).unwrap_or(u32::MAX).min(16);
        self.base
            .checked_mul(1 << doublings)
            .unwrap_or(MAX_PART)
            .min(MAX_PART.max(self.base))
    }
}

/// Cuts the stream into parts and uploads them, at most `concurrency` at once (the
/// same as object_store's `WriteMultipart`, but with parts that grow).
struct PartWriter {
    upload: Box<dyn MultipartUpload>,
    tasks: JoinSet<object_store::Result<()>>,
    buffer: PutPayloadMut,
    sizes: PartSizes,
    parts: usize,
}

impl PartWriter {
    fn new(upload: Box<dyn MultipartUpload>, sizes: PartSizes) -> PartWriter {
        PartWriter {
            upload,
            tasks: JoinSet::new(),
            buffer: PutPayloadMut::new(),
            sizes,
            parts: 0,
        }
    }

    /// Waits until fewer than `max` parts are in flight (none, for 0); the first
    /// failed part's error.
    async fn wait_for_capacity(&mut self, max: usize) -> object_store::Result<()> {
        loop {
            let full = match max {
                0 => !self.tasks.is_empty(),
                _ => self.tasks.len() >= max,
            };
            if !full {
                return Ok(());
            }
            match self.tasks.join_next().await {
                None => return Ok(()),
                Some(Ok(Ok(()))) => {}
                Some(Ok(Err(e))) => return Err(e),
                Some(Err(join)) => return Err(object_store::Error::JoinError { source: join }),
            }
        }
    }

    /// Adds `chunk`; sends the part once it has its size.
    fn put(&mut self, chunk: Bytes) {
        self.buffer.push(chunk);
        if self.buffer.content_length() >= self.sizes.of(self.parts) {
            self.send_part();
        }
    }

    fn send_part(&mut self) {
        let part = std::mem::take(&mut self.buffer).freeze();
        self.parts += 1;
        self.tasks.spawn(self.upload.put_part(part));
    }

    /// Uploads what is left, waits for every part and completes the object.
    async fn finish(mut self, key: &str) -> object_store::Result<()> {
        if self.buffer.content_length() > 0 {
            self.send_part();
        }
        // A failed part is the cause: report it, not an error from the abort after it.
        if let Err(e) = self.wait_for_capacity(0).await {
            self.abort(key).await;
            return Err(e);
        }
        if let Err(e) = self.upload.complete().await {
            self.abort(key).await;
            return Err(e);
        }
        Ok(())
    }

    /// Stops the parts in flight and abandons the upload; nothing appears in the store.
    async fn abort(mut self, key: &str) {
        self.tasks.shutdown().await;
        if let Err(e) = self.upload.abort().await {
            tracing::warn!(key, error = %e, "aborting the multipart upload failed; `bk gc` removes leftovers");
        }
    }
}

/// An upload whose bytes have all been handed over, waiting to be finished or aborted.
pub struct PendingUpload {
    key: Path,
    writer: PartWriter,
}

impl PendingUpload {
    pub fn key(&self) -> &Path {
        &self.key
    }

    /// Completes the object. Only now does it appear in the store.
    pub async fn finish(self) -> Result<(), PipelineError> {
        let key = self.key.to_string();
        self.writer
            .finish(&key)
            .await
            .map_err(|source| PipelineError::Upload { key, source })
    }

    /// Abandons the upload; nothing appears in the store.
    pub async fn abort(self) {
        self.writer.abort(self.key.as_ref()).await;
    }
}

pub async fn upload_parts(
    store: Arc<dyn ObjectStore>,
    key: Path,
    mut chunks: mpsc::Receiver<Bytes>,
    part_size: usize,
    concurrency: usize,
    local_root: Option<PathBuf>,
) -> Result<PendingUpload, PipelineError> {
    let upload_error = |source| PipelineError::Upload {
        key: key.to_string(),
        source,
    };
    let (upload, sizes): (Box<dyn MultipartUpload>, _) = match local_root {
        Some(root) => (
            Box::new(
                DirectUpload::start(&root, &key, LOCAL_PART)
                    .await
                    .map_err(upload_error)?,
            ),
            PartSizes::fixed(LOCAL_PART),
        ),
        None => (
            store.put_multipart(&key).await.map_err(upload_error)?,
            PartSizes::new(part_size),
        ),
    };
    let mut writer = PartWriter::new(upload, sizes);
    while let Some(chunk) = chunks.recv().await {
        if let Err(source) = writer.wait_for_capacity(concurrency).await {
            // Stop receiving first, so the pipeline thread sees the failure at once.
            drop(chunks);
            writer.abort(key.as_ref()).await;
            return Err(PipelineError::Upload {
                key: key.to_string(),
                source,
            });
        }
        writer.put(chunk);
    }
    Ok(PendingUpload { key, writer })
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::local::LocalFileSystem;

    async fn read_back(store: &Arc<dyn ObjectStore>, key: &Path) -> Bytes {
        let got = store.get(key).await.expect("the object exists");
        got.bytes().await.expect("the object reads back")
    }

    fn local_store(root: &std::path::Path) -> Arc<dyn ObjectStore> {
        Arc::new(
            LocalFileSystem::new_with_prefix(root)
                .expect("root exists")
                .with_fsync(true),
        )
    }

    #[test]
    fn parts_keep_their_size_then_double_and_hold_a_terabyte() {
        let mib = 1 << 20;
        let sizes = PartSizes::new(16 * mib);
        assert_eq!(sizes.of(0), 16 * mib);
        assert_eq!(sizes.of(4999), 16 * mib);
        assert_eq!(sizes.of(5000), 32 * mib);
        assert_eq!(sizes.of(5999), 32 * mib);
        assert_eq!(sizes.of(6000), 64 * mib);
        assert_eq!(sizes.of(9999), 512 * mib);
        let total: u64 = (0..10_000).map(|i| sizes.of(i) as u64).sum();
        assert!(total >= 1 << 40, "10,000 parts hold {total} bytes");
        let fixed = PartSizes::fixed(mib);
        assert_eq!(
            (fixed.of(0), fixed.of(10_000), fixed.of(usize::MAX - 1)),
            (mib, mib, mib)
        );
        // Never above S3's 5 GiB per part.
        assert_eq!(PartSizes::new(1 << 30).of(9999), MAX_PART);
        assert_eq!(PartSizes::new(5 * mib).of(usize::MAX), MAX_PART);
    }

    /// Records the size of every part on its way to the real upload.
    #[derive(Debug)]
    struct Recording {
        inner: Box<dyn MultipartUpload>,
        sizes: Arc<std::sync::Mutex<Vec<usize>>>,
    }

    type Boxed<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

    impl MultipartUpload for Recording {
        fn put_part(&mut self, data: object_store::PutPayload) -> object_store::UploadPart {
            self.sizes
                .lock()
                .expect("not poisoned")
                .push(data.content_length());
            self.inner.put_part(data)
        }

        fn complete<'a, 'b>(
            &'a mut self,
        ) -> Boxed<'b, object_store::Result<object_store::PutResult>>
        where
            'a: 'b,
            Self: 'b,
        {
            self.inner.complete()
        }

        fn abort<'a, 'b>(&'a mut self) -> Boxed<'b, object_store::Result<()>>
        where
            'a: 'b,
            Self: 'b,
        {
            self.inner.abort()
        }
    }

    #[tokio::test]
    async fn parts_grow_on_schedule_and_the_object_is_whole() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = local_store(dir.path());
        let key = Path::from("backups/job/20261130T000000.000Z-0123456789abcdef/payload.age");
        let recorded = Arc::new(std::sync::Mutex::new(Vec::new()));
        let upload = Recording {
            inner: store.put_multipart(&key).await.expect("upload starts"),
            sizes: recorded.clone(),
        };
        let sizes = PartSizes {
            base: 100_000,
            steady: 3,
            step: 2,
        };
        let mut writer = PartWriter::new(Box::new(upload), sizes);
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 233) as u8).collect();
        for piece in data.chunks(50_000) {
            writer.wait_for_capacity(2).await.expect("parts upload");
            writer.put(Bytes::copy_from_slice(piece));
        }
        writer.finish(key.as_ref()).await.expect("completes");
        let stored = read_back(&store, &key).await;
        assert_eq!(stored.as_ref(), data.as_slice());
        let recorded = recorded.lock().expect("not poisoned").clone();
        // 3 parts of 100 kB, 2 of 200 kB, 2 of 400 kB, then 800 kB parts and the rest.
        assert_eq!(
            recorded,
            [100_000, 100_000, 100_000, 200_000, 200_000, 400_000, 400_000, 800_000, 700_000]
        );
    }

    type Upload = tokio::task::JoinHandle<Result<PendingUpload, PipelineError>>;

    /// Starts `upload_parts` into a `file://` repository at `root`; send it chunks.
    fn local_upload(
        store: &Arc<dyn ObjectStore>,
        key: &Path,
        root: &std::path::Path,
        part_size: usize,
    ) -> (mpsc::Sender<Bytes>, Upload) {
        let (tx, rx) = mpsc::channel(4);
        let upload = tokio::spawn(upload_parts(
            store.clone(),
            key.clone(),
            rx,
            part_size,
            2,
            Some(root.to_path_buf()),
        ));
        (tx, upload)
    }

    /// A `file://` repository gets each chunk as a part of its own: three 1 MiB chunks
    /// reach the staging file while the upload is still open, though `part_size` is
    /// 16 MiB (gathering that much first would hold it in memory).
    #[tokio::test]
    async fn a_local_upload_writes_each_chunk_without_gathering_a_part() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = local_store(dir.path());
        let key = Path::from("backups/job/20261130T000000.000Z-0123456789abcdef/payload.age");
        let (tx, upload) = local_upload(&store, &key, dir.path(), 16 << 20);
        let chunk = Bytes::from(vec![7u8; super::super::chunks::CHUNK]);
        for _ in 0..3 {
            tx.send(chunk.clone()).await.expect("sent");
        }
        let staging = dir.path().join(format!("{key}#1"));
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let written = std::fs::metadata(&staging).map(|m| m.len()).unwrap_or(0);
            if written >= 2 * chunk.len() as u64 {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "only {written} bytes reached the staging file"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        drop(tx);
        let pending = upload.await.expect("task").expect("upload");
        pending.finish().await.expect("completes");
        assert_eq!(read_back(&store, &key).await.len(), 3 * chunk.len());
    }

    /// Chunks of any size (parts that are not whole blocks, written through the page
    /// cache) still make the whole object, and the staging file is gone after.
    #[tokio::test]
    async fn a_local_upload_of_odd_chunks_stores_every_byte() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = local_store(dir.path());
        let key = Path::from("backups/job/20261130T000000.000Z-0123456789abcdef/payload.age");
        let data: Vec<u8> = (0..5_000_000u32).map(|i| (i % 241) as u8).collect();
        let (tx, upload) = local_upload(&store, &key, dir.path(), 1 << 20);
        for piece in data.chunks(300_000) {
            tx.send(Bytes::copy_from_slice(piece)).await.expect("sent");
        }
        drop(tx);
        let pending = upload.await.expect("task").expect("upload");
        pending.finish().await.expect("completes");
        let stored = read_back(&store, &key).await;
        assert_eq!(stored.as_ref(), data.as_slice());
        assert!(!dir.path().join(format!("{key}#1")).exists());
    }
}
