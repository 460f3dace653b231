//! The hand-off from the encrypting thread to the async uploader: a `Write`
//! that cuts the stream into `Bytes` chunks and sends them over a bounded channel.
//! The channel's bound is the backpressure: when storage is slow, `blocking_send`
//! waits, the pipeline stops reading, and the source is paused by its own pipe.

use std::io::{self, Write};

use bytes::{Bytes, BytesMut};
use tokio::sync::mpsc;

pub const CHUNK: usize = 1 << 20;

pub struct ChunkSender {
    buf: BytesMut,
    tx: mpsc::Sender<Bytes>,
}

/// The receiving end stopped (the upload failed or was cancelled).
pub fn upload_stopped() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "the upload stopped")
}

impl ChunkSender {
    pub fn new(tx: mpsc::Sender<Bytes>) -> Self {
        ChunkSender {
            buf: BytesMut::with_capacity(CHUNK),
            tx,
        }
    }

    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = self.buf.split().freeze();
        self.buf.reserve(CHUNK);
        self.tx.blocking_send(chunk).map_err(|_| upload_stopped())
    }

    /// Sends what is buffered; the stream is complete once this returns.
    pub fn finish(mut self) -> io::Result<()> {
        self.send()
    }
}

impl Write for ChunkSender {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let room = CHUNK - self.buf.len();
        let n = room.min(data.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == CHUNK {
            self.send()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
