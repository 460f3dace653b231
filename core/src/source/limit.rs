//! A reader that stops a source once it has sent more than the job's `max_size`: a
//! source that streams for ever (a compromised host, a runaway command) fails its run
//! instead of filling the storage. Counts the plaintext as read from the source.

use std::io::{self, Read};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

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

#[cfg(test)]
mod tests {
    use super::*;

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
