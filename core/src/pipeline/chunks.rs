//! The hand-off from the encrypting thread to the async uploader: a `Write`
//! that cuts the stream into `Bytes` chunks and sends them over a bounded channel.
//! The channel's bound is the backpressure: when storage is slow, `blocking_send`
//! waits, the pipeline stops reading, and the source is paused by its own pipe.
//!
//! Every chunk starts at a 4 KiB-aligned address, so that a `file://` repository writes
//! it to disk with `O_DIRECT` as it is, without copying it into an aligned buffer
//! first (direct.rs).

use std::io::{self, Write};

use bytes::Bytes;
use tokio::sync::mpsc;

use super::direct::ALIGN;

pub const CHUNK: usize = 1 << 20;

pub struct ChunkSender {
    /// The chunk being filled: `start` bytes of padding up to the first aligned
    /// address, then the chunk's bytes.
    buf: Vec<u8>,
    start: usize,
    tx: mpsc::Sender<Bytes>,
}

/// An empty buffer for one chunk and the length of its padding.
fn aligned_buffer() -> (Vec<u8>, usize) {
    let mut buf: Vec<u8> = Vec::with_capacity(CHUNK + ALIGN);
    let start = buf.as_ptr().align_offset(ALIGN);
    buf.resize(start, 0);
    (buf, start)
}

/// The receiving end stopped (the upload failed or was cancelled).
pub fn upload_stopped() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "the upload stopped")
}

impl ChunkSender {
    pub fn new(tx: mpsc::Sender<Bytes>) -> Self {
        let (buf, start) = aligned_buffer();
        ChunkSender { buf, start, tx }
    }

    fn len(&self) -> usize {
        self.buf.len() - self.start
    }

    fn send(&mut self) -> io::Result<()> {
        if self.len() == 0 {
            return Ok(());
        }
        let (next, next_start) = aligned_buffer();
        let full = std::mem::replace(&mut self.buf, next);
        let start = std::mem::replace(&mut self.start, next_start);
        let chunk = Bytes::from(full).slice(start..);
        self.tx.blocking_send(chunk).map_err(|_| upload_stopped())
    }

    /// Sends what is buffered; the stream is complete once this returns.
    pub fn finish(mut self) -> io::Result<()> {
        self.send()
    }
}

impl Write for ChunkSender {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let room = CHUNK - self.len();
        let n = room.min(data.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.len() == CHUNK {
            self.send()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_are_whole_aligned_and_in_order() {
        let (tx, mut rx) = mpsc::channel(16);
        let data: Vec<u8> = (0..2 * CHUNK + 5000).map(|i| (i % 253) as u8).collect();
        let mut sender = ChunkSender::new(tx);
        for piece in data.chunks(65_552) {
            sender.write_all(piece).unwrap();
        }
        sender.finish().unwrap();
        let mut got: Vec<u8> = Vec::new();
        let mut lens = Vec::new();
        while let Ok(chunk) = rx.try_recv() {
            assert_eq!(chunk.as_ptr().align_offset(ALIGN), 0);
            lens.push(chunk.len());
            got.extend_from_slice(&chunk);
        }
        assert_eq!(lens, [CHUNK, CHUNK, 5000]);
        assert_eq!(got, data);
    }
}
