//! Byte counters that long operations (restore, verify) advance as they read stored
//! objects, for a front end that shows progress. The CLI installs one when stderr is a
//! terminal; otherwise none exists and counting costs nothing. Never changes what an
//! operation does or reports.

use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

/// Total bytes to read and bytes read so far.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    total: Arc<AtomicU64>,
    done: Arc<AtomicU64>,
}

impl Progress {
    pub fn add_total(&self, bytes: u64) {
        self.total.fetch_add(bytes, Ordering::Relaxed);
    }

    pub fn advance(&self, bytes: u64) {
        self.done.fetch_add(bytes, Ordering::Relaxed);
    }

    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    pub fn done(&self) -> u64 {
        self.done.load(Ordering::Relaxed)
    }
}

static INSTALLED: OnceLock<Progress> = OnceLock::new();

/// Makes operations in this process count into the returned `Progress` (once per process).
pub fn install() -> Progress {
    INSTALLED.get_or_init(Progress::default).clone()
}

/// The installed counters, if a front end asked for them.
pub fn installed() -> Option<&'static Progress> {
    INSTALLED.get()
}

/// A reader that advances the installed counters by what it reads.
pub struct Counted<R> {
    inner: R,
    progress: Progress,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.progress.advance(n as u64);
        Ok(n)
    }
}

/// `reader` counted into the installed progress (with `expected` bytes added to its
/// total), or `reader` itself when nothing is installed.
pub fn counted<R: Read + Send + 'static>(reader: R, expected: u64) -> Box<dyn Read + Send> {
    match installed() {
        Some(p) => {
            p.add_total(expected);
            Box::new(Counted {
                inner: reader,
                progress: p.clone(),
            })
        }
        None => Box::new(reader),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_what_is_read() {
        let p = Progress::default();
        let mut r = Counted {
            inner: &b"hello world"[..],
            progress: p.clone(),
        };
        p.add_total(11);
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        assert_eq!((p.done(), p.total()), (11, 11));
    }
}
