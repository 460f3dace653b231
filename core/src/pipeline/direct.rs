//! Uploads into a `file://` repository, written with `O_DIRECT`.
//!
//! A buffered write copies every byte into the page cache, and the kernel writes it out
//! later: for a backup's 757 MiB payload that copy cost ~0.85 CPU s on the test machine
//! (`dd` to a file: 0.99 s of system time buffered, 0.22 s with `O_DIRECT`, 0.15 s of
//! which is reading the input), on the same two cores that compress and encrypt. bk never
//! reads a payload back soon after writing it, so the page cache gains nothing from it
//! either; writing around it also leaves the backup server's cache to what it serves.
//!
//! The object is staged and published the way object_store's local backend does it
//! (`KEY#N`, then a rename; `bk gc` sweeps staging files left by a killed run), and made
//! durable the same way: the file is synced before the rename, its directory after.
//! `O_DIRECT` needs each write's memory, offset and length aligned to the device's
//! block: every part but the last is a whole 1 MiB chunk that the pipeline already put
//! at an aligned address (chunks.rs), written as it is; a part made of several pieces
//! is copied into an aligned buffer first. The last part (not a whole block) is
//! written through the page cache; so is everything on a file system that is not a
//! local disk (`on_local_disk`) or refuses `O_DIRECT`, with the early-writeback hint the
//! buffered path needs (`start_writeback`).

use std::fs::{File, OpenOptions};
use std::io::{self, ErrorKind};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path as FsPath, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use bytes::Bytes;
use futures::FutureExt;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{MultipartUpload, PutPayload, PutResult, UploadPart};

/// Alignment of memory, offsets and lengths for `O_DIRECT` writes: the largest logical
/// block size of common devices (most take 512).
pub(crate) const ALIGN: usize = 4096;

/// How much is written with buffered writes between two early-writeback hints.
const WRITEBACK_EVERY: usize = 16 << 20;

/// How much is written between two syncs of the staging file while the upload runs.
/// An `O_DIRECT` write is done once the device has it, often in a volatile cache (on a
/// VM, the host's page cache); the sync before publishing flushes that cache and waits
/// for everything written since the last flush, while nothing else of the backup runs.
/// On the benchmark machine that final sync of a 757 MiB payload took 0.36–0.89 s when
/// it was the only one, 0.06 s with a sync every 64 MiB before it (docs/performance.md).
const SYNC_EVERY: usize = 64 << 20;

/// A multipart upload into a local file, for `upload_parts`. Parts are written at their
/// offsets, up to `upload_concurrency` at once, each from an aligned buffer of its own.
pub struct DirectUpload {
    target: Arc<Target>,
    /// The staging file, until the upload is completed or aborted.
    staging: Option<PathBuf>,
    dest: PathBuf,
    /// Where the next part goes.
    offset: u64,
}

/// The open staging file and what writing it needs.
struct Target {
    /// Taken (under the write lock, so after every write holding it) to complete or abort.
    file: RwLock<Option<File>>,
    /// Whether the file is (still) open with `O_DIRECT`.
    direct: AtomicBool,
    /// Aligned buffers of `part` bytes, one per write in flight.
    buffers: Mutex<Vec<AlignedBuf>>,
    part: usize,
    /// Bytes written through the page cache since the last writeback hint.
    unhinted: AtomicUsize,
    /// Bytes written since the last sync began.
    unsynced: AtomicUsize,
    /// Whether a write is syncing the file (one at a time).
    syncing: AtomicBool,
    /// Syncs begun while the upload ran.
    syncs: AtomicUsize,
}

impl DirectUpload {
    /// An upload of `key` into the `file://` repository at `root`, at the path
    /// object_store's local backend reads it from, for parts of `part` bytes.
    pub async fn start(root: &FsPath, key: &Path, part: usize) -> object_store::Result<Self> {
        let dest = LocalFileSystem::new_with_prefix(root)?.path_to_filesystem(key)?;
        blocking(move || {
            DirectUpload::create(dest.clone(), part).map_err(|e| store_error(&dest, "creating", e))
        })
        .await
    }

    /// Creates the staging file for `dest` (and the folders it needs), for parts of
    /// `part` bytes.
    fn create(dest: PathBuf, part: usize) -> io::Result<DirectUpload> {
        let parent = dest
            .parent()
            .ok_or_else(|| io::Error::new(ErrorKind::InvalidInput, "an object needs a folder"))?;
        create_dirs(parent)?;
        let (file, staging, direct) = create_staging(&dest, on_local_disk(parent))?;
        Ok(DirectUpload {
            target: Arc::new(Target {
                file: RwLock::new(Some(file)),
                direct: AtomicBool::new(direct),
                buffers: Mutex::new(Vec::new()),
                part: part.div_ceil(ALIGN) * ALIGN,
                unhinted: AtomicUsize::new(0),
                unsynced: AtomicUsize::new(0),
                syncing: AtomicBool::new(false),
                syncs: AtomicUsize::new(0),
            }),
            staging: Some(staging),
            dest,
            offset: 0,
        })
    }

    /// Whether writes currently bypass the page cache.
    #[cfg(test)]
    fn is_direct(&self) -> bool {
        self.target.direct.load(Ordering::Relaxed)
    }

    /// How many times the file was synced while the upload ran.
    #[cfg(test)]
    fn syncs(&self) -> usize {
        self.target.syncs.load(Ordering::Relaxed)
    }

    /// How many aligned buffers parts were copied into.
    #[cfg(test)]
    fn copy_buffers(&self) -> usize {
        self.target.buffers.lock().map(|b| b.len()).unwrap_or(0)
    }
}

impl std::fmt::Debug for DirectUpload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirectUpload")
            .field("dest", &self.dest)
            .field("offset", &self.offset)
            .finish()
    }
}

fn store_error(path: &FsPath, what: &str, e: io::Error) -> object_store::Error {
    object_store::Error::Generic {
        store: "LocalFileSystem",
        source: format!("{what} {}: {e}", path.display()).into(),
    }
}

fn aborted(path: &FsPath) -> object_store::Error {
    store_error(path, "writing", io::Error::other("the upload was aborted"))
}

type Boxed<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

impl MultipartUpload for DirectUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        let offset = self.offset;
        self.offset += data.content_length() as u64;
        let target = self.target.clone();
        let dest = self.dest.clone();
        blocking(move || {
            target
                .write_at(&data, offset)
                .map_err(|e| store_error(&dest, "writing", e))?
                .ok_or_else(|| aborted(&dest))
        })
    }

    fn complete<'a, 'b>(&'a mut self) -> Boxed<'b, object_store::Result<PutResult>>
    where
        'a: 'b,
        Self: 'b,
    {
        let staging = self.staging.take();
        let target = self.target.clone();
        let dest = self.dest.clone();
        blocking(move || {
            let staging = staging.ok_or_else(|| aborted(&dest))?;
            let file = target.take().ok_or_else(|| aborted(&dest))?;
            let published = publish(file, &staging, &dest);
            if published.is_err() {
                let _ = std::fs::remove_file(&staging);
            }
            published.map_err(|e| store_error(&dest, "storing", e))?;
            Ok(PutResult {
                e_tag: None,
                version: None,
                extensions: Default::default(),
            })
        })
    }

    fn abort<'a, 'b>(&'a mut self) -> Boxed<'b, object_store::Result<()>>
    where
        'a: 'b,
        Self: 'b,
    {
        let staging = self.staging.take();
        let target = self.target.clone();
        blocking(move || {
            target.take();
            let Some(staging) = staging else {
                return Ok(());
            };
            match std::fs::remove_file(&staging) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
                Err(e) => Err(store_error(&staging, "removing", e)),
            }
        })
    }
}

/// Runs file system work on a blocking thread.
fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> object_store::Result<T> + Send + 'static,
) -> Boxed<'static, object_store::Result<T>> {
    tokio::task::spawn_blocking(work)
        .map(|joined| {
            joined.unwrap_or_else(|source| Err(object_store::Error::JoinError { source }))
        })
        .boxed()
}

impl Drop for DirectUpload {
    /// Neither completed nor aborted (the task was cancelled): the staging file goes.
    fn drop(&mut self) {
        if let Some(staging) = self.staging.take() {
            let _ = std::fs::remove_file(staging);
        }
    }
}

impl Target {
    /// The file, once no write holds it any more; `None` once taken.
    fn take(&self) -> Option<File> {
        self.file.write().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// Writes `data` at `offset`: straight to the device when it is aligned, through the
    /// page cache otherwise (and from then on: the last part is the only unaligned one).
    /// `None` if the upload was completed or aborted meanwhile.
    fn write_at(&self, data: &PutPayload, offset: u64) -> io::Result<Option<()>> {
        let file = self.file.read().unwrap_or_else(|p| p.into_inner());
        let Some(file) = file.as_ref() else {
            return Ok(None);
        };
        let len = data.content_length();
        let aligned =
            offset.is_multiple_of(ALIGN as u64) && len.is_multiple_of(ALIGN) && len <= self.part;
        if self.direct.load(Ordering::Relaxed) {
            if aligned {
                let written = match single_aligned(data) {
                    // One chunk from the pipeline, aligned already (chunks.rs): as it is.
                    Some(piece) => file.write_all_at(piece, offset),
                    None => self.write_copied(file, data, offset),
                };
                match written {
                    Ok(()) => return self.sync_every(file, len).map(Some),
                    // The file system took the open but not the write (e.g. a larger
                    // block size): write it again, through the page cache.
                    Err(e) if e.raw_os_error() == Some(libc::EINVAL) => self.stop_direct(file)?,
                    Err(e) => return Err(e),
                }
            } else {
                self.stop_direct(file)?;
            }
        }
        let mut at = offset;
        for piece in data.iter() {
            file.write_all_at(piece, at)?;
            at += piece.len() as u64;
        }
        if self.unhinted.fetch_add(len, Ordering::Relaxed) + len >= WRITEBACK_EVERY {
            self.unhinted.store(0, Ordering::Relaxed);
            start_writeback(file);
        }
        self.sync_every(file, len).map(Some)
    }

    /// Syncs the file's data once `SYNC_EVERY` bytes were written since the last sync,
    /// in the write that crosses the mark (the other writes in flight go on meanwhile),
    /// so the sync before publishing has little left to wait for. A failed sync fails
    /// the write: the device lost data it had taken.
    fn sync_every(&self, file: &File, len: usize) -> io::Result<()> {
        if self.unsynced.fetch_add(len, Ordering::Relaxed) + len < SYNC_EVERY
            || self.syncing.swap(true, Ordering::Acquire)
        {
            return Ok(());
        }
        self.unsynced.store(0, Ordering::Relaxed);
        self.syncs.fetch_add(1, Ordering::Relaxed);
        let synced = file.sync_data();
        self.syncing.store(false, Ordering::Release);
        synced
    }

    /// Writes `data` (of an aligned length) from an aligned buffer it is copied into.
    fn write_copied(&self, file: &File, data: &PutPayload, offset: u64) -> io::Result<()> {
        let mut buffer = self.buffer()?;
        let buf = buffer.as_mut_slice(data.content_length());
        let mut at = 0;
        for piece in data.iter() {
            buf[at..at + piece.len()].copy_from_slice(piece);
            at += piece.len();
        }
        let written = file.write_all_at(buf, offset);
        self.buffers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(buffer);
        written
    }

    /// A free aligned buffer, or a new one.
    fn buffer(&self) -> io::Result<AlignedBuf> {
        let free = self.buffers.lock().unwrap_or_else(|p| p.into_inner()).pop();
        match free {
            Some(buffer) => Ok(buffer),
            None => AlignedBuf::new(self.part),
        }
    }

    fn stop_direct(&self, file: &File) -> io::Result<()> {
        use std::os::fd::AsFd;
        crate::set_status_flag(file.as_fd(), libc::O_DIRECT, false)?;
        self.direct.store(false, Ordering::Relaxed);
        Ok(())
    }
}

/// Syncs and closes the staging file, renames it to `dest`, syncs the folder.
fn publish(file: File, staging: &FsPath, dest: &FsPath) -> io::Result<()> {
    use std::os::fd::IntoRawFd;
    file.sync_all()?;
    // Closed by hand to see its error: some network file systems report a failed write
    // only there.
    // SAFETY: the descriptor was just taken out of the `File`, which no longer owns it.
    if unsafe { libc::close(file.into_raw_fd()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    std::fs::rename(staging, dest)?;
    match dest.parent() {
        Some(parent) => File::open(parent)?.sync_all(),
        None => Ok(()),
    }
}

/// Creates `dir` and any missing parents, syncing the folder each new one was made in.
fn create_dirs(dir: &FsPath) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let parent = dir
        .parent()
        .ok_or_else(|| io::Error::new(ErrorKind::NotFound, "no folder to create it in"))?;
    create_dirs(parent)?;
    match std::fs::create_dir(dir) {
        Ok(()) => File::open(parent)?.sync_all(),
        Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// Whether `dir` is on a local disk file system (ext2/3/4, XFS, btrfs), where `O_DIRECT`
/// saves the page cache's copy. Elsewhere bk writes through the page cache: on NFS or SMB
/// each direct write waits for the server (and NFS commits it to disk, every 1 MiB), on
/// tmpfs the page cache is the storage, on FUSE file systems it may mean anything.
#[allow(clippy::unnecessary_cast)] // `f_type` and the constants differ in type by architecture
fn on_local_disk(dir: &FsPath) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(path) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
        return false;
    };
    let mut stat = std::mem::MaybeUninit::<libc::statfs>::zeroed();
    // SAFETY: `path` is a NUL-terminated string and `stat` room for one `statfs`.
    if unsafe { libc::statfs(path.as_ptr(), stat.as_mut_ptr()) } != 0 {
        return false;
    }
    // SAFETY: statfs succeeded, so it filled the struct (which started zeroed anyway).
    let kind = unsafe { stat.assume_init() }.f_type as i64;
    [
        libc::EXT4_SUPER_MAGIC as i64, // also ext2 and ext3
        libc::XFS_SUPER_MAGIC as i64,
        libc::BTRFS_SUPER_MAGIC as i64,
    ]
    .contains(&kind)
}

/// Opens a new `DEST#N` (the first N free), with `O_DIRECT` if `direct` and the file
/// system takes it.
fn create_staging(dest: &FsPath, mut direct: bool) -> io::Result<(File, PathBuf, bool)> {
    let mut n = 1u32;
    loop {
        let mut staging = dest.as_os_str().to_owned();
        staging.push(format!("#{n}"));
        let staging = PathBuf::from(staging);
        let mut options = OpenOptions::new();
        options.write(true).create_new(true);
        if direct {
            options.custom_flags(libc::O_DIRECT);
        }
        match options.open(&staging) {
            Ok(file) => return Ok((file, staging, direct)),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => n += 1,
            Err(e) if direct && e.raw_os_error() == Some(libc::EINVAL) => direct = false,
            Err(e) => return Err(e),
        }
    }
}

/// Asks the kernel to start writing the file's dirty pages now rather than all at the
/// final sync, while every other stage waits (0.4–0.5 s for a 757 MiB payload written
/// buffered). Only a hint: the durability comes from the sync.
fn start_writeback(file: &File) {
    use std::os::fd::AsRawFd;
    // SAFETY: the descriptor is open for as long as `file` lives; sync_file_range only
    // queues the file's dirty pages for writing (offset 0, length 0: the whole file).
    let rc = unsafe { libc::sync_file_range(file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE) };
    if rc != 0 {
        tracing::debug!(error = %io::Error::last_os_error(), "sync_file_range failed");
    }
}

/// The payload's only piece, if it starts at an aligned address.
fn single_aligned(data: &PutPayload) -> Option<&Bytes> {
    let mut pieces = data.iter();
    match (pieces.next(), pieces.next()) {
        (Some(piece), None) if piece.as_ptr().align_offset(ALIGN) == 0 => Some(piece),
        _ => None,
    }
}

/// A buffer with room for `len` bytes starting at an `ALIGN`ed address: a `Vec` with
/// `ALIGN` bytes to spare, used from the first aligned byte on.
struct AlignedBuf {
    bytes: Vec<u8>,
    len: usize,
}

impl AlignedBuf {
    fn new(len: usize) -> io::Result<AlignedBuf> {
        let mut bytes = Vec::new();
        bytes
            .try_reserve_exact(len + ALIGN)
            .map_err(|_| io::Error::from(ErrorKind::OutOfMemory))?;
        bytes.resize(len + ALIGN, 0);
        Ok(AlignedBuf { bytes, len })
    }

    /// The first `len` aligned bytes (at most the `len` it was made for).
    fn as_mut_slice(&mut self, len: usize) -> &mut [u8] {
        let start = self.bytes.as_ptr().align_offset(ALIGN);
        &mut self.bytes[start..start + len.min(self.len)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    const MIB: usize = 1 << 20;

    fn pattern(len: usize, seed: u8) -> Bytes {
        (0..len)
            .map(|i| (i % 251) as u8 ^ seed)
            .collect::<Vec<u8>>()
            .into()
    }

    /// Whether bk writes around the page cache in `dir`: a local disk file system that
    /// takes `O_DIRECT`.
    fn takes_direct(dir: &FsPath) -> bool {
        on_local_disk(dir)
            && OpenOptions::new()
                .write(true)
                .create_new(true)
                .custom_flags(libc::O_DIRECT)
                .open(dir.join("probe"))
                .is_ok()
    }

    /// Whole 1 MiB parts go around the page cache, in parallel and out of order; the
    /// short last part through it; the object is every byte in order, published under
    /// its name only on completion, with no staging file left.
    #[tokio::test]
    async fn parts_land_at_their_offsets_and_the_object_appears_on_completion() {
        let dir = tempfile::tempdir().expect("temp dir");
        let dest = dir.path().join("backups/job/id/payload.age");
        let mut upload = DirectUpload::create(dest.clone(), MIB).expect("created");
        let staging = dir.path().join("backups/job/id/payload.age#1");
        assert!(staging.exists() && !dest.exists());
        let parts = [
            pattern(MIB, 1),
            pattern(MIB, 2),
            pattern(MIB, 3),
            pattern(12_345, 4),
        ];
        let mut writes = Vec::new();
        for part in &parts[..3] {
            writes.push(upload.put_part(PutPayload::from_bytes(part.clone())));
        }
        // The second and third parts may finish first: each has its own offset.
        for write in writes.into_iter().rev() {
            write.await.expect("part written");
        }
        if takes_direct(dir.path()) {
            assert!(
                upload.is_direct(),
                "aligned parts are written with O_DIRECT"
            );
        }
        upload
            .put_part(PutPayload::from_bytes(parts[3].clone()))
            .await
            .expect("last part written");
        assert!(
            !upload.is_direct(),
            "the short last part goes through the page cache"
        );
        upload.complete().await.expect("completed");
        let stored = std::fs::read(&dest).expect("published");
        assert_eq!(stored, parts.concat());
        assert!(!staging.exists());
    }

    /// A part that is one aligned chunk (as chunks.rs makes them) is written as it is;
    /// one that is not is copied into an aligned buffer first.
    #[tokio::test]
    async fn an_aligned_chunk_is_written_without_a_copy() {
        let dir = tempfile::tempdir().expect("temp dir");
        if !takes_direct(dir.path()) {
            return;
        }
        let dest = dir.path().join("payload.age");
        let mut upload = DirectUpload::create(dest.clone(), MIB).expect("created");
        let data = pattern(MIB + ALIGN, 5);
        let start = data.as_ptr().align_offset(ALIGN);
        let aligned = data.slice(start..start + MIB);
        let unaligned = data.slice(start + 1..start + 1 + MIB);
        for (part, copies) in [(&aligned, 0), (&unaligned, 1)] {
            upload
                .put_part(PutPayload::from_bytes(part.clone()))
                .await
                .expect("part written");
            assert!(upload.is_direct());
            assert_eq!(
                upload.copy_buffers(),
                copies,
                "only the unaligned chunk is copied"
            );
        }
        upload.complete().await.expect("completed");
        let stored = std::fs::read(&dest).expect("published");
        assert_eq!(stored, [aligned, unaligned].concat());
    }

    /// The file is synced once every `SYNC_EVERY` bytes while the upload runs, through
    /// the page cache or around it, so the sync before publishing has little left to do.
    #[tokio::test]
    async fn the_file_is_synced_every_64_mib_while_it_is_written() {
        let dir = tempfile::tempdir().expect("temp dir");
        let dest = dir.path().join("payload.age");
        let mut upload = DirectUpload::create(dest.clone(), MIB).expect("created");
        let chunk = pattern(MIB + ALIGN, 6);
        let start = chunk.as_ptr().align_offset(ALIGN);
        let chunk = chunk.slice(start..start + MIB);
        let parts = 2 * SYNC_EVERY / MIB + 3;
        for n in 1..=parts {
            upload
                .put_part(PutPayload::from_bytes(chunk.clone()))
                .await
                .expect("part written");
            assert_eq!(upload.syncs(), n * MIB / SYNC_EVERY, "after {n} MiB");
        }
        upload.complete().await.expect("completed");
        let stored = std::fs::metadata(&dest).expect("published");
        assert_eq!(stored.len(), (parts * MIB) as u64);
    }

    /// Only local disk file systems are written around the page cache.
    #[test]
    fn only_local_disks_take_direct_writes() {
        assert!(!on_local_disk(FsPath::new("/proc")));
        assert!(!on_local_disk(FsPath::new("/no/such/folder")));
        let ext4 = std::fs::read_to_string("/proc/self/mounts")
            .expect("mounts")
            .lines()
            .any(|l| l.split_whitespace().nth(1) == Some("/") && l.contains(" ext4 "));
        if ext4 {
            assert!(on_local_disk(FsPath::new("/")));
        }
    }

    /// An aborted or abandoned upload leaves nothing, staging file included; a second
    /// upload of the same name while one is open stages beside it.
    #[tokio::test]
    async fn an_aborted_or_dropped_upload_leaves_nothing() {
        let dir = tempfile::tempdir().expect("temp dir");
        let dest = dir.path().join("a/payload.age");
        let mut first = DirectUpload::create(dest.clone(), MIB).expect("created");
        let second = DirectUpload::create(dest.clone(), MIB).expect("created");
        assert!(dir.path().join("a/payload.age#2").exists());
        first
            .put_part(PutPayload::from_bytes(pattern(MIB, 9)))
            .await
            .expect("part written");
        first.abort().await.expect("aborted");
        assert!(
            first.complete().await.is_err(),
            "an aborted upload cannot complete"
        );
        drop(second);
        let left: Vec<_> = std::fs::read_dir(dir.path().join("a"))
            .expect("folder")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert!(left.is_empty(), "left behind: {left:?}");
    }
}
