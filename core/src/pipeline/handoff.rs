//! Hand-offs between threads, so that the stages of a data path run side by side
//! instead of one after the other on one thread (as a shell pipeline's processes do).
//!
//! `ReadAhead` runs a reader on a thread of its own and hands its bytes over in blocks;
//! `WriteBehind` runs a writer on a thread of its own and hands it the bytes written.
//! Both hold a bounded number of blocks (`depth`), so memory stays flat and a slow stage
//! pushes back on the ones before it. Blocks are recycled, not reallocated.
//!
//! Errors cross over whole: a `ReadAhead` returns its reader's error after the bytes read
//! before it; a `WriteBehind` returns its writer's error from the next write (or from
//! `finish`). Dropping either end stops the other at its next block.

use std::io::{self, BufRead, Read, Write};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::thread::{self, JoinHandle};

/// The block size the data paths hand over: large enough that a hand-off costs little
/// per byte, small enough that a few in flight keep memory flat.
pub const BLOCK: usize = 1 << 20;

/// One block handed over: the buffer and how many of its bytes are data.
type Block = (Vec<u8>, usize);

pub(super) fn stopped(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::BrokenPipe,
        format!("the {what} thread stopped"),
    )
}

/// Waits for a stage's thread (taken out of `thread`) and returns what it returned.
pub(super) fn join_stage<W>(
    thread: &mut Option<JoinHandle<io::Result<W>>>,
    name: &str,
) -> io::Result<W> {
    match thread.take() {
        Some(handle) => match handle.join() {
            Ok(result) => result,
            Err(_) => Err(io::Error::other(format!("the {name} thread panicked"))),
        },
        None => Err(stopped(name)),
    }
}

/// A reader whose inner reader runs ahead on its own thread.
pub struct ReadAhead {
    blocks: Receiver<io::Result<Block>>,
    recycle: SyncSender<Vec<u8>>,
    current: Vec<u8>,
    len: usize,
    pos: usize,
    state: ReadState,
    name: &'static str,
}

#[derive(PartialEq)]
enum ReadState {
    Open,
    Ended,
    Failed,
}

impl ReadAhead {
    /// Starts a thread called `name` that reads `inner` into blocks of `block` bytes, at
    /// most `depth` of them waiting to be read.
    pub fn spawn<R: Read + Send + 'static>(
        name: &'static str,
        mut inner: R,
        block: usize,
        depth: usize,
    ) -> io::Result<ReadAhead> {
        let (tx, blocks) = mpsc::sync_channel::<io::Result<Block>>(depth);
        let (recycle, recycled) = mpsc::sync_channel::<Vec<u8>>(depth + 2);
        thread::Builder::new()
            .name(name.into())
            .spawn(move || loop {
                let mut buf = recycled.try_recv().unwrap_or_else(|_| vec![0; block]);
                // Gather at least a quarter block before handing it over: a source that
                // writes 4 KiB at a time (pg_dump) would otherwise cost the reading side
                // a wake-up per 4 KiB. The bytes wait at most until the source sends
                // more or ends; they are never lost.
                let mut filled = 0;
                let last = loop {
                    match inner.read(&mut buf[filled..]) {
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Ok(n) if n > 0 => {
                            filled += n;
                            if filled >= block / 4 {
                                break None;
                            }
                        }
                        Ok(_) => break Some(Ok((Vec::new(), 0))),
                        Err(e) => break Some(Err(e)),
                    }
                };
                if filled > 0 && tx.send(Ok((buf, filled))).is_err() {
                    return;
                }
                if let Some(last) = last {
                    let _ = tx.send(last);
                    return;
                }
            })?;
        Ok(ReadAhead {
            blocks,
            recycle,
            current: Vec::new(),
            len: 0,
            pos: 0,
            state: ReadState::Open,
            name,
        })
    }
}

impl BufRead for ReadAhead {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        while self.pos == self.len && self.state == ReadState::Open {
            let done = std::mem::take(&mut self.current);
            (self.len, self.pos) = (0, 0);
            if done.capacity() > 0 {
                // The reader thread allocates a new block if this one is not back in time.
                let _ = self.recycle.try_send(done);
            }
            match self.blocks.recv() {
                Ok(Ok((_, 0))) => self.state = ReadState::Ended,
                Ok(Ok((buf, n))) => (self.current, self.len, self.pos) = (buf, n, 0),
                Ok(Err(e)) => {
                    self.state = ReadState::Failed;
                    return Err(e);
                }
                Err(_) => {
                    self.state = ReadState::Failed;
                    return Err(stopped(self.name));
                }
            }
        }
        match self.state {
            ReadState::Failed => Err(stopped(self.name)),
            _ => Ok(&self.current[self.pos..self.len]),
        }
    }

    fn consume(&mut self, amount: usize) {
        self.pos = (self.pos + amount).min(self.len);
    }
}

impl Read for ReadAhead {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let available = self.fill_buf()?;
        let n = available.len().min(out.len());
        out[..n].copy_from_slice(&available[..n]);
        self.consume(n);
        Ok(n)
    }
}

/// A writer whose inner writer runs behind on its own thread. Call `finish` to wait for
/// every byte to be written and get the inner writer back.
pub struct WriteBehind<W> {
    buf: Vec<u8>,
    block: usize,
    tx: Option<SyncSender<Vec<u8>>>,
    recycled: Receiver<Vec<u8>>,
    thread: Option<JoinHandle<io::Result<W>>>,
    name: &'static str,
}

impl<W: Write + Send + 'static> WriteBehind<W> {
    /// Starts a thread called `name` that writes into `inner` what this writer is given,
    /// in blocks of `block` bytes, at most `depth` of them waiting.
    pub fn spawn(
        name: &'static str,
        mut inner: W,
        block: usize,
        depth: usize,
    ) -> io::Result<WriteBehind<W>> {
        let (tx, rx) = mpsc::sync_channel::<Vec<u8>>(depth);
        let (recycle, recycled) = mpsc::sync_channel::<Vec<u8>>(depth + 2);
        let thread = thread::Builder::new()
            .name(name.into())
            .spawn(move || -> io::Result<W> {
                for mut buf in rx {
                    inner.write_all(&buf)?;
                    buf.clear();
                    if let Err(TrySendError::Disconnected(_)) = recycle.try_send(buf) {
                        // The writing side is gone: it failed or was dropped.
                        return Err(stopped(name));
                    }
                }
                inner.flush()?;
                Ok(inner)
            })?;
        Ok(WriteBehind {
            buf: Vec::new(),
            block,
            tx: Some(tx),
            recycled,
            thread: Some(thread),
            name,
        })
    }

    /// Waits for everything written so far to reach the inner writer and returns it.
    pub fn finish(mut self) -> io::Result<W> {
        self.send()?;
        self.tx = None;
        self.join()
    }

    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let next = self
            .recycled
            .try_recv()
            .unwrap_or_else(|_| Vec::with_capacity(self.block));
        let full = std::mem::replace(&mut self.buf, next);
        let sent = match &self.tx {
            Some(tx) => tx.send(full).is_ok(),
            None => false,
        };
        if sent {
            Ok(())
        } else {
            // The thread ended early: its error is the cause.
            self.tx = None;
            match self.join() {
                Ok(_) => Err(stopped(self.name)),
                Err(e) => Err(e),
            }
        }
    }

    fn join(&mut self) -> io::Result<W> {
        join_stage(&mut self.thread, self.name)
    }
}

impl<W: Write + Send + 'static> WriteBehind<W> {
    /// The block being gathered, with room for at least one more byte: a full one is
    /// handed over first.
    fn open_block(&mut self) -> io::Result<&mut Vec<u8>> {
        if self.buf.len() >= self.block {
            self.send()?;
        }
        if self.buf.capacity() < self.block {
            self.buf.reserve_exact(self.block - self.buf.len());
        }
        Ok(&mut self.buf)
    }

    /// Lets `fill` append to the block being gathered, in place: a producer with an
    /// output buffer of its own (zstd) writes straight into the block instead of into
    /// its buffer and then, through `write`, into the block. `fill` may append up to
    /// the block's capacity and must not reallocate it.
    pub fn fill_with<T>(
        &mut self,
        fill: impl FnOnce(&mut Vec<u8>) -> io::Result<T>,
    ) -> io::Result<T> {
        let block = self.open_block()?;
        let capacity = block.capacity();
        let filled = fill(block);
        debug_assert_eq!(
            self.buf.capacity(),
            capacity,
            "fill_with reallocated the block"
        );
        filled
    }
}

impl<W: Write + Send + 'static> Write for WriteBehind<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let block = self.block;
        let buf = self.open_block()?;
        let n = block.saturating_sub(buf.len()).min(data.len());
        buf.extend_from_slice(&data[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Failing {
        after: usize,
        read: usize,
    }

    impl Read for Failing {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.read >= self.after {
                return Err(io::Error::other("disk on fire"));
            }
            let n = buf.len().min(self.after - self.read).min(1000);
            buf[..n].fill(b'x');
            self.read += n;
            Ok(n)
        }
    }

    #[test]
    fn read_ahead_passes_every_byte_then_the_end() {
        let data: Vec<u8> = (0..1_000_003u32).map(|i| (i % 251) as u8).collect();
        let mut ahead = ReadAhead::spawn("test-read", io::Cursor::new(data.clone()), 4096, 2)
            .expect("thread starts");
        let mut got = vec![0; 10];
        ahead.read_exact(&mut got).expect("reads");
        ahead.read_to_end(&mut got).expect("reads");
        assert_eq!(got, data);
        assert_eq!(ahead.read(&mut [0; 10]).expect("end stays the end"), 0);
    }

    /// A reader that returns at most 4 KiB per call, as a pipe from pg_dump does.
    struct Trickle(io::Cursor<Vec<u8>>);

    impl Read for Trickle {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = buf.len().min(4096);
            self.0.read(&mut buf[..n])
        }
    }

    #[test]
    fn read_ahead_hands_over_gathered_blocks_not_each_small_read() {
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 239) as u8).collect();
        let block = 1 << 20;
        let mut ahead = ReadAhead::spawn(
            "test-read",
            Trickle(io::Cursor::new(data.clone())),
            block,
            2,
        )
        .expect("thread starts");
        let mut got = Vec::new();
        loop {
            let available = ahead.fill_buf().expect("reads");
            if available.is_empty() {
                break;
            }
            let n = available.len();
            if got.len() + n < data.len() {
                assert!(n >= block / 4, "a block of {n} bytes was handed over");
            }
            got.extend_from_slice(available);
            ahead.consume(n);
        }
        assert_eq!(got, data);
    }

    #[test]
    fn read_ahead_returns_the_bytes_before_the_error_then_the_error() {
        let inner = Failing {
            after: 5000,
            read: 0,
        };
        let mut ahead = ReadAhead::spawn("test-read", inner, 1024, 2).expect("thread starts");
        let mut got = Vec::new();
        let err = ahead.read_to_end(&mut got).expect_err("the error arrives");
        assert_eq!(got.len(), 5000);
        assert!(err.to_string().contains("disk on fire"), "{err}");
    }

    #[test]
    fn write_behind_writes_everything_in_order() {
        let data: Vec<u8> = (0..3_000_001u32).map(|i| (i % 253) as u8).collect();
        let mut behind =
            WriteBehind::spawn("test-write", Vec::new(), 65536, 2).expect("thread starts");
        for piece in data.chunks(7777) {
            behind.write_all(piece).expect("writes");
        }
        assert_eq!(behind.finish().expect("finishes"), data);
    }

    struct Full;

    impl Write for Full {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::Error::new(io::ErrorKind::StorageFull, "no space left"))
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn write_behind_reports_its_writers_error_not_a_broken_pipe() {
        let mut behind = WriteBehind::spawn("test-write", Full, 1024, 1).expect("thread starts");
        let err = (0..100)
            .find_map(|_| behind.write_all(&[0; 1024]).err())
            .expect("a write fails once the thread has failed");
        assert_eq!(err.kind(), io::ErrorKind::StorageFull, "{err}");
    }
}
