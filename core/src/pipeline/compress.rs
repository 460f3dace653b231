//! The zstd stage, and the thread after it that takes the compressed bytes to the next
//! stage (age, in a backup).
//!
//! With workers (the default) the stream is cut into jobs of `job_size` bytes that the
//! workers compress side by side, each into a zstd frame of its own, and the frames are
//! written to the next stage in order: a standard zstd stream of concatenated frames,
//! which every zstd decoder reads through (`zstd -d`, bk's restores). Jobs queue for the
//! workers, so a worker that finishes picks up the next job at once; libzstd's own
//! multithreading (one frame, `ZSTD_c_nbWorkers`) posts a job only when a worker is free
//! and the thread that feeds it comes round again, and on a busy 2-core machine its
//! workers waited for that (docs/performance.md: a local backup 2.47 → 2.11 s). 1 MiB
//! frames cost ~0.3% of output on the benchmark's data set against one frame: each
//! starts without the previous job's history.
//!
//! Without workers, or with long-distance matching (whose point is history across the
//! whole stream), one frame is compressed by libzstd on the feeding thread.

use std::io::{self, Write};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};

use zstd::stream::raw::{CParameter, Encoder, InBuffer, Operation, OutBuffer};

use super::handoff::{join_stage, stopped, WriteBehind, BLOCK};
use crate::config::CompressionConfig;

/// Blocks of compressed bytes queued for the next stage's thread (one frame).
const STREAM_DEPTH: usize = 2;

/// The smallest job (the configuration refuses smaller ones): frames much smaller than
/// zstd's window would lose ratio.
const MIN_JOB: usize = 64 << 10;

/// Compresses what it is written and hands the compressed bytes, in order, to a thread
/// called `name` that writes them into the next stage.
pub enum Compressor<W: Write + Send + 'static> {
    Frames(Frames<W>),
    Stream(Stream<W>),
}

pub fn compressor<W: Write + Send + 'static>(
    inner: W,
    name: &'static str,
    config: &CompressionConfig,
) -> io::Result<Compressor<W>> {
    if config.workers > 0 && !config.long {
        Frames::spawn(inner, name, config).map(Compressor::Frames)
    } else {
        let out = WriteBehind::spawn(name, inner, BLOCK, STREAM_DEPTH)?;
        Stream::new(out, config).map(Compressor::Stream)
    }
}

impl<W: Write + Send + 'static> Compressor<W> {
    /// Ends the zstd stream, waits until the next stage has been handed all of it and
    /// returns that stage's writer.
    pub fn finish(self) -> io::Result<W> {
        match self {
            Compressor::Frames(frames) => frames.finish(),
            Compressor::Stream(stream) => stream.finish()?.finish(),
        }
    }
}

impl<W: Write + Send + 'static> Write for Compressor<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        match self {
            Compressor::Frames(frames) => frames.write(data),
            Compressor::Stream(stream) => stream.write(data),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Compressor::Frames(frames) => frames.flush(),
            Compressor::Stream(stream) => stream.flush(),
        }
    }
}

/// One job for the workers: its input, a buffer for its frame, and where the frame goes.
struct Job {
    input: Vec<u8>,
    frame: Vec<u8>,
    done: SyncSender<io::Result<Vec<u8>>>,
}

/// What the writing thread is told, in stream order.
enum Next {
    /// The frame of the next job, once a worker has compressed it.
    Frame(Receiver<io::Result<Vec<u8>>>),
    /// The stream is complete: flush and return the writer.
    End,
}

/// Frames compressed by a pool of workers, written in order by a thread of their own.
pub struct Frames<W> {
    input: Vec<u8>,
    job_size: usize,
    /// Whether any frame was sent: an empty stream still gets one (empty) frame.
    sent: bool,
    jobs: Option<mpsc::Sender<Job>>,
    /// Bounded: the jobs between the feeding thread and the writing one, compressed or
    /// not, so memory stays flat and a slow next stage holds the feeding thread back.
    next: Option<SyncSender<Next>>,
    spare_inputs: Receiver<Vec<u8>>,
    spare_frames: Receiver<Vec<u8>>,
    workers: Vec<JoinHandle<()>>,
    writer: Option<JoinHandle<io::Result<W>>>,
    name: &'static str,
}

impl<W: Write + Send + 'static> Frames<W> {
    fn spawn(mut inner: W, name: &'static str, config: &CompressionConfig) -> io::Result<Self> {
        let workers = config.workers as usize;
        let job_size = usize::try_from(config.job_size.bytes())
            .unwrap_or(usize::MAX)
            .max(MIN_JOB);
        // Two jobs per worker waiting or being compressed, one being written.
        let depth = 2 * workers + 1;
        let (jobs, queue) = mpsc::channel::<Job>();
        let queue = Arc::new(Mutex::new(queue));
        let (next, ordered) = mpsc::sync_channel::<Next>(depth);
        let (return_input, spare_inputs) = mpsc::sync_channel::<Vec<u8>>(depth + 2);
        let (return_frame, spare_frames) = mpsc::sync_channel::<Vec<u8>>(depth + 2);
        let mut handles = Vec::with_capacity(workers);
        for _ in 0..workers {
            let mut zstd = zstd::bulk::Compressor::new(config.level)?;
            zstd.set_parameter(CParameter::ChecksumFlag(true))?;
            let queue = Arc::clone(&queue);
            let return_input = return_input.clone();
            let handle = thread::Builder::new()
                .name("bk-zstd".into())
                .spawn(move || loop {
                    // The lock is held only while waiting for a job, never while compressing.
                    let job = match queue.lock() {
                        Ok(queue) => queue.recv(),
                        Err(_) => return,
                    };
                    let Ok(Job {
                        mut input,
                        mut frame,
                        done,
                    }) = job
                    else {
                        return;
                    };
                    frame.clear();
                    frame.reserve(zstd::zstd_safe::compress_bound(input.len()));
                    let compressed = zstd.compress_to_buffer(&input, &mut frame).map(|_| frame);
                    // The writing thread may be gone (it failed): then so is the stream.
                    let _ = done.send(compressed);
                    input.clear();
                    let _ = return_input.try_send(input);
                })?;
            handles.push(handle);
        }
        let writer = thread::Builder::new()
            .name(name.into())
            .spawn(move || -> io::Result<W> {
                for next in ordered {
                    match next {
                        Next::Frame(done) => {
                            let frame = done.recv().map_err(|_| stopped("bk-zstd"))??;
                            inner.write_all(&frame)?;
                            let _ = return_frame.try_send(frame);
                        }
                        Next::End => {
                            inner.flush()?;
                            return Ok(inner);
                        }
                    }
                }
                // The feeding side was dropped without ending the stream.
                Err(stopped("compressing"))
            })?;
        Ok(Frames {
            input: Vec::with_capacity(job_size),
            job_size,
            sent: false,
            jobs: Some(jobs),
            next: Some(next),
            spare_inputs,
            spare_frames,
            workers: handles,
            writer: Some(writer),
            name,
        })
    }

    /// Hands the job gathered so far to the workers (an empty one only to begin an
    /// empty stream).
    fn send(&mut self) -> io::Result<()> {
        if self.input.is_empty() && self.sent {
            return Ok(());
        }
        let spare = self
            .spare_inputs
            .try_recv()
            .unwrap_or_else(|_| Vec::with_capacity(self.job_size));
        let input = std::mem::replace(&mut self.input, spare);
        let frame = self.spare_frames.try_recv().unwrap_or_default();
        let (done, compressed) = mpsc::sync_channel(1);
        // The writing thread learns the order first; that channel's bound is what
        // holds this thread back.
        let queued = match &self.next {
            Some(next) => next.send(Next::Frame(compressed)).is_ok(),
            None => false,
        };
        if !queued {
            return Err(self.writer_failed());
        }
        let posted = match &self.jobs {
            Some(jobs) => jobs.send(Job { input, frame, done }).is_ok(),
            None => false,
        };
        if !posted {
            return Err(stopped("bk-zstd"));
        }
        self.sent = true;
        Ok(())
    }

    /// The writing thread's error, once it has stopped early.
    fn writer_failed(&mut self) -> io::Error {
        self.next = None;
        match self.join_writer() {
            Ok(_) => stopped(self.name),
            Err(e) => e,
        }
    }

    fn join_writer(&mut self) -> io::Result<W> {
        join_stage(&mut self.writer, self.name)
    }

    fn finish(mut self) -> io::Result<W> {
        self.send()?;
        let ended = match &self.next {
            Some(next) => next.send(Next::End).is_ok(),
            None => false,
        };
        if !ended {
            return Err(self.writer_failed());
        }
        self.next = None;
        let written = self.join_writer();
        self.jobs = None;
        for worker in std::mem::take(&mut self.workers) {
            if worker.join().is_err() {
                return Err(io::Error::other("a bk-zstd thread panicked"));
            }
        }
        written
    }
}

impl<W: Write + Send + 'static> Write for Frames<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = (self.job_size - self.input.len()).min(data.len());
        self.input.extend_from_slice(&data[..n]);
        if self.input.len() >= self.job_size {
            self.send()?;
        }
        Ok(n)
    }

    /// Ends the current frame: every byte written so far goes to a worker.
    fn flush(&mut self) -> io::Result<()> {
        if self.input.is_empty() {
            return Ok(());
        }
        self.send()
    }
}

/// One zstd frame compressed by libzstd on the feeding thread (and with `workers`,
/// libzstd's worker threads), into the blocks a `WriteBehind` hands to the next stage.
/// zstd writes its output straight into those blocks: `zstd::stream::write::Encoder`
/// would write it into a buffer of its own first and then copy it over.
pub struct Stream<W: Write + Send + 'static> {
    zstd: Encoder<'static>,
    out: WriteBehind<W>,
}

impl<W: Write + Send + 'static> Stream<W> {
    fn new(out: WriteBehind<W>, config: &CompressionConfig) -> io::Result<Self> {
        let mut zstd = Encoder::new(config.level)?;
        if config.workers > 0 {
            zstd.set_parameter(CParameter::NbWorkers(config.workers))?;
            let job = u32::try_from(config.job_size.bytes()).unwrap_or(u32::MAX);
            // Only with `long` (workers without it compress frames of their own): each
            // job keeps zstd's default overlap of history, since `long` is chosen for
            // the ratio.
            zstd.set_parameter(CParameter::JobSize(job))?;
        }
        zstd.set_parameter(CParameter::ChecksumFlag(true))?;
        if config.long {
            zstd.set_parameter(CParameter::EnableLongDistanceMatching(true))?;
            zstd.set_parameter(CParameter::WindowLog(27))?;
        }
        Ok(Stream { zstd, out })
    }

    /// Runs one zstd step with output into the block being gathered.
    fn step<T>(
        &mut self,
        op: impl FnOnce(&mut Encoder<'static>, &mut OutBuffer<'_, Vec<u8>>) -> io::Result<T>,
    ) -> io::Result<T> {
        let zstd = &mut self.zstd;
        self.out.fill_with(|block| {
            let filled = block.len();
            op(zstd, &mut OutBuffer::around_pos(block, filled))
        })
    }

    /// Ends the zstd frame and returns the next stage, which still runs: call its
    /// `finish` to wait for it.
    pub fn finish(mut self) -> io::Result<WriteBehind<W>> {
        while self.step(|zstd, out| zstd.finish(out, true))? > 0 {}
        Ok(self.out)
    }
}

impl<W: Write + Send + 'static> Write for Stream<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if data.is_empty() {
            return Ok(0);
        }
        let mut input = InBuffer::around(data);
        // zstd takes no input while the output it holds does not fit: go on until it
        // has taken some (each step either takes input or fills a block).
        while input.pos() == 0 {
            self.step(|zstd, out| zstd.run(&mut input, out))?;
        }
        Ok(input.pos())
    }

    /// Ends the current zstd block (and, with workers, the current job) so that every
    /// byte written so far is in the next stage's hands.
    fn flush(&mut self) -> io::Result<()> {
        while self.step(|zstd, out| zstd.flush(out))? > 0 {}
        Ok(())
    }
}

/// Decoder for restores; accepts the long-distance window bk may write.
pub fn decompressor<R: io::BufRead>(
    input: R,
) -> io::Result<zstd::stream::read::Decoder<'static, R>> {
    let mut d = zstd::stream::read::Decoder::with_buffer(input)?;
    d.window_log_max(27)?;
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::CompressionConfig;

    fn roundtrip(config: &CompressionConfig, data: &[u8], write_size: usize) -> Vec<u8> {
        let mut z = compressor(Vec::new(), "test-zstd", config).expect("encoder");
        for piece in data.chunks(write_size) {
            z.write_all(piece).expect("compresses");
        }
        z.finish().expect("all handed over")
    }

    #[test]
    fn every_byte_comes_back_through_the_stock_decoder() {
        // Text-like and incompressible parts, several blocks of output.
        let mut data: Vec<u8> = (0..3_000_000u32)
            .map(|i| b"abcdefgh "[(i % 9) as usize] ^ ((i / 4096) % 3) as u8)
            .collect();
        let mut x = 0x2545_f491_4f6c_dd1du64;
        data.extend((0..3_000_000).map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        }));
        for workers in [0, 2] {
            let config = CompressionConfig {
                workers,
                ..CompressionConfig::default()
            };
            for write_size in [1000, 1 << 20] {
                let compressed = roundtrip(&config, &data, write_size);
                let back = zstd::stream::decode_all(&compressed[..]).expect("a valid zstd frame");
                assert!(back == data, "workers {workers}, writes of {write_size}");
            }
        }
    }

    /// Many small jobs over four workers: the frames come back in the order written,
    /// whichever worker finishes first, and the stock CLI reads them as one stream.
    #[test]
    fn frames_keep_their_order_and_stock_zstd_reads_them() {
        let data: Vec<u8> = (0..5_000_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> (i % 23)) as u8 ^ b"bk"[(i % 2) as usize])
            .collect();
        let config = CompressionConfig {
            workers: 4,
            job_size: crate::config::ByteSize(MIN_JOB as u64),
            ..CompressionConfig::default()
        };
        let compressed = roundtrip(&config, &data, 100_000);
        let frames = count_frames(&compressed);
        assert_eq!(frames, data.len().div_ceil(MIN_JOB), "one frame per job");
        assert!(zstd::stream::decode_all(&compressed[..]).expect("valid") == data);
        let mut cli = std::process::Command::new("zstd")
            .args(["-d", "-c", "-q"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("the zstd CLI runs");
        let mut stdin = cli.stdin.take().expect("stdin");
        let feeding = std::thread::spawn(move || stdin.write_all(&compressed));
        let out = cli.wait_with_output().expect("zstd ends");
        feeding.join().expect("feeds").expect("writes");
        assert!(out.status.success());
        assert!(out.stdout == data, "zstd -d gives back the stream");
    }

    fn count_frames(mut stream: &[u8]) -> usize {
        let mut n = 0;
        while !stream.is_empty() {
            let size = zstd::zstd_safe::find_frame_compressed_size(stream).expect("a frame");
            stream = &stream[size..];
            n += 1;
        }
        n
    }

    /// A next stage that fails: the error reaches the writer's side, by a later write
    /// or by `finish`, never a success.
    #[test]
    fn a_failing_next_stage_fails_the_stream() {
        struct Refuses;
        impl Write for Refuses {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::Error::other("storage refused"))
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let config = CompressionConfig {
            job_size: crate::config::ByteSize(MIN_JOB as u64),
            ..CompressionConfig::default()
        };
        let mut z = compressor(Refuses, "test-zstd", &config).expect("starts");
        let piece = vec![1u8; 10_000];
        let mut failed = None;
        for _ in 0..1000 {
            if let Err(e) = z.write_all(&piece) {
                failed = Some(e);
                break;
            }
        }
        let error = match failed {
            Some(e) => e,
            None => z.finish().err().expect("finish fails"),
        };
        assert!(error.to_string().contains("storage refused"), "{error}");
    }

    /// Dropped before `finish` (the source failed): the next stage is never flushed,
    /// so nothing downstream can mistake the part for a whole stream.
    #[test]
    fn an_abandoned_stream_is_never_flushed() {
        struct Flushes(std::sync::Arc<std::sync::atomic::AtomicBool>);
        impl Write for Flushes {
            fn write(&mut self, data: &[u8]) -> io::Result<usize> {
                Ok(data.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                self.0.store(true, std::sync::atomic::Ordering::SeqCst);
                Ok(())
            }
        }
        let flushed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let config = CompressionConfig {
            job_size: crate::config::ByteSize(MIN_JOB as u64),
            ..CompressionConfig::default()
        };
        let mut z = compressor(Flushes(flushed.clone()), "test-zstd", &config).expect("starts");
        z.write_all(&vec![3u8; 1_000_000]).expect("writes");
        drop(z);
        std::thread::sleep(std::time::Duration::from_millis(200));
        assert!(!flushed.load(std::sync::atomic::Ordering::SeqCst));
    }

    #[test]
    fn an_empty_stream_is_an_empty_frame() {
        let compressed = roundtrip(&CompressionConfig::default(), &[], 1);
        assert!(!compressed.is_empty(), "a frame header at least");
        assert!(zstd::stream::decode_all(&compressed[..])
            .expect("valid")
            .is_empty());
    }
}
