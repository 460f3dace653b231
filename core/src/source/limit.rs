//! Limits on what a source may send. `SizeLimit` stops a source once it has sent more
//! than the job's `max_size`: a source that streams for ever (a compromised host, a
//! runaway command) fails its run instead of filling the storage. `RateLimit` reads no
//! faster than `bandwidth_limit`, so a dump does not saturate the source's link or
//! disks; the pipe (or the SSH channel's flow control) pushes back on the source.
//! Both count the plaintext as read from the source.

use std::io::{self, Read};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::ByteSize;

pub struct SizeLimit<R> {
    inner: R,
    limit: u64,
    read: u64,
    exceeded: Arc<AtomicBool>,
}

impl<R> SizeLimit<R> {
    /// `exceeded` is set when the limit is passed, so the caller can tell this
    /// failure from others once the pipeline has wound down.
    pub fn new(inner: R, limit: ByteSize, exceeded: Arc<AtomicBool>) -> SizeLimit<R> {
        SizeLimit {
            inner,
            limit: limit.bytes(),
            read: 0,
            exceeded,
        }
    }
}

impl<R: Read> Read for SizeLimit<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        if self.read > self.limit {
            self.exceeded.store(true, Ordering::SeqCst);
            return Err(io::Error::other(format!(
                "the source sent more than max_size = {}",
                ByteSize(self.limit)
            )));
        }
        Ok(n)
    }
}

/// Reads at most `rate` bytes per second on average, in slices of a tenth of a second's
/// worth, so the flow stays smooth rather than bursting and pausing.
pub struct RateLimit<R> {
    inner: R,
    rate: u64,
    slice: usize,
    started: Option<Instant>,
    read: u64,
}

impl<R> RateLimit<R> {
    pub fn new(inner: R, rate: ByteSize) -> RateLimit<R> {
        let rate = rate.bytes().max(1);
        RateLimit {
            inner,
            rate,
            slice: usize::try_from(rate / 10).unwrap_or(usize::MAX).max(4096),
            started: None,
            read: 0,
        }
    }
}

impl<R: Read> Read for RateLimit<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let started = *self.started.get_or_insert_with(Instant::now);
        let len = buf.len().min(self.slice);
        let n = self.inner.read(&mut buf[..len])?;
        self.read += n as u64;
        // Sleep until these bytes are earned at `rate`.
        let due = Duration::from_secs_f64(self.read as f64 / self.rate as f64);
        if let Some(ahead) = due.checked_sub(started.elapsed()) {
            std::thread::sleep(ahead);
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rate_limit_holds_the_average_rate_and_passes_every_byte() {
        let data: Vec<u8> = (0..(3u32 << 20)).map(|i| (i % 251) as u8).collect();
        let started = Instant::now();
        let mut limited = RateLimit::new(&data[..], ByteSize::mib(4));
        let mut out = Vec::new();
        limited.read_to_end(&mut out).unwrap();
        // 3 MiB at 4 MiB/s: never sooner than 0.75 s (later only on a busy machine).
        assert!(
            started.elapsed() >= Duration::from_millis(740),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(out, data);
    }

    #[test]
    fn passes_up_to_the_limit_and_fails_past_it() {
        let flag = Arc::new(AtomicBool::new(false));
        let mut exact = SizeLimit::new(&[7u8; 100][..], ByteSize(100), flag.clone());
        assert_eq!(io::copy(&mut exact, &mut io::sink()).unwrap(), 100);
        assert!(!flag.load(Ordering::SeqCst));
        let mut over = SizeLimit::new(&[7u8; 101][..], ByteSize(100), flag.clone());
        let err = io::copy(&mut over, &mut io::sink()).unwrap_err();
        assert!(err.to_string().contains("max_size = 100 B"), "{err}");
        assert!(flag.load(Ordering::SeqCst));
    }
}
