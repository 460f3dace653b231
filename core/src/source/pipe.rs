//! The dump stream: the source's stdout pipe, read with plain blocking calls by the
//! thread that reads ahead for the pipeline (`bk-source`).
//!
//! The dump arrives through a pipe: a local command's stdout, or the pipe the ssh
//! master writes a remote command's stdout into. Read through the async runtime, each
//! time the reader catches up with the writer costs a reactor wake-up, a timer reset
//! and a hand-off between threads; pg_dump writes 4 KiB at a time, 100,000 times for a
//! 410 MB dump, so those costs added up to more CPU than the reading itself. Here the
//! reading thread calls read(2) itself and, when the pipe is empty, waits in poll(2).
//!
//! poll's timeout is the stall timeout: a dump that sends no byte for that long is a
//! failed backup, not a backup that waits for ever (a frozen host, a wedged pg_dump, a
//! half-open connection that keepalives have not caught yet).

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

pub struct SourcePipe {
    pipe: File,
    host: String,
    stall: Option<Duration>,
    /// Told when the stream has ended (end of file or an error); dropping it tells too.
    ended: Option<tokio::sync::oneshot::Sender<()>>,
}

impl SourcePipe {
    /// Reads the pipe `fd`, the stdout of a command on `host`.
    ///
    /// The pipe is grown to 1 MiB instead of Linux's 64 KiB, so the dump tool (or, for a
    /// remote source, the ssh master relaying it) can run ahead while the pipeline is
    /// busy for a moment instead of stopping. Best effort: the kernel may refuse
    /// (pipe-max-size); the default pipe is then used.
    pub fn new(fd: OwnedFd, host: &str) -> io::Result<SourcePipe> {
        // SAFETY: F_SETPIPE_SZ on a pipe fd we own only changes its capacity.
        unsafe {
            libc::fcntl(fd.as_raw_fd(), libc::F_SETPIPE_SZ, 1 << 20);
        }
        crate::set_status_flag(fd.as_fd(), libc::O_NONBLOCK, true)?;
        Ok(SourcePipe {
            pipe: File::from(fd),
            host: host.to_string(),
            stall: None,
            ended: None,
        })
    }

    /// With `Some(limit)`, a read fails once no byte has come for `limit`.
    pub fn stall_timeout(mut self, limit: Option<Duration>) -> SourcePipe {
        self.stall = limit.filter(|l| !l.is_zero());
        self
    }

    /// `ended` is sent once the stream has ended.
    pub fn signal_end(mut self, ended: tokio::sync::oneshot::Sender<()>) -> SourcePipe {
        self.ended = Some(ended);
        self
    }

    fn end(&mut self) {
        if let Some(ended) = self.ended.take() {
            let _ = ended.send(());
        }
    }

    /// Waits until the pipe has bytes, has reached its end, or the stall timeout.
    fn wait(&mut self) -> io::Result<()> {
        let deadline = self.stall.map(|limit| Instant::now() + limit);
        loop {
            let timeout = match deadline {
                None => -1,
                Some(deadline) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    // Round up: a 0 ms poll would spin through the last millisecond.
                    i32::try_from(left.as_micros().div_ceil(1000)).unwrap_or(i32::MAX)
                }
            };
            let mut pfd = libc::pollfd {
                fd: self.pipe.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd, for a descriptor open as long as `self.pipe`.
            let ready = unsafe { libc::poll(&mut pfd, 1, timeout) };
            match ready {
                1.. => return Ok(()),
                0 => {
                    let limit = self.stall.unwrap_or_default();
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!(
                            "the source on host `{}` sent nothing for {} (stall_timeout)",
                            self.host,
                            humantime::format_duration(limit)
                        ),
                    ));
                }
                _ => {
                    let err = io::Error::last_os_error();
                    if err.kind() != io::ErrorKind::Interrupted {
                        return Err(err);
                    }
                }
            }
        }
    }
}

impl Read for SourcePipe {
    /// Reads what the pipe holds, waiting (up to the stall timeout) when it is empty.
    ///
    /// There is no pause after a read that found the pipe nearly empty. bfd4a89 added
    /// one (1 ms, to let pg_dump's 4 KiB writes gather instead of waking the reader for
    /// each); once the pipeline had become cheaper it cost more than it saved: pg_dump
    /// then writes into cold pages of a filling 1 MiB pipe instead of the one the reader
    /// just freed, and pg_dump and the server's backend used ~0.4 CPU s more for a
    /// 410 MB dump (`perf sched`). Paired runs, 2026-12-01: the pg_dump backup
    /// 1.43–1.55 s with the pause, 1.25–1.35 s without (the shell 1.24–1.28 s); the
    /// local directory 2.22 → 2.17 s (medians of 6); over SSH no difference (medians of
    /// 8: 3.17 and 3.13 s). docs/performance.md.
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let result = match self.pipe.read(buf) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => match self.wait() {
                    Ok(()) => continue,
                    Err(e) => Err(e),
                },
                other => other,
            };
            if !buf.is_empty() && !matches!(result, Ok(n) if n > 0) {
                self.end();
            }
            return result;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn pipe() -> (OwnedFd, File) {
        let (read, write) = std::io::pipe().expect("pipe");
        (read.into(), File::from(OwnedFd::from(write)))
    }

    #[test]
    fn a_quiet_source_fails_and_a_steady_one_does_not() {
        let (read, mut write) = pipe();
        let (tx, mut ended) = tokio::sync::oneshot::channel();
        let mut source = SourcePipe::new(read, "db1")
            .expect("pipe")
            .stall_timeout(Some(Duration::from_millis(400)))
            .signal_end(tx);
        let writer = std::thread::spawn(move || {
            for _ in 0..5 {
                std::thread::sleep(Duration::from_millis(250));
                write.write_all(b"x").expect("write");
            }
            std::thread::sleep(Duration::from_secs(3));
        });
        let mut got = Vec::new();
        let started = Instant::now();
        let err = source.read_to_end(&mut got).expect_err("stalls");
        assert_eq!(got, b"xxxxx");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(err.to_string().contains("`db1`"), "{err}");
        assert!(err.to_string().contains("400ms (stall_timeout)"), "{err}");
        // Five bytes 250 ms apart never tripped the 400 ms limit; the silence after did.
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(1650), "{took:?}");
        assert!(took < Duration::from_millis(2500), "{took:?}");
        assert!(ended.try_recv().is_ok(), "the end is signalled");
        writer.join().expect("writer");
    }

    #[test]
    fn every_byte_then_the_end_and_the_signal() {
        let (read, mut write) = pipe();
        let (tx, mut ended) = tokio::sync::oneshot::channel();
        let mut source = SourcePipe::new(read, "web1").expect("pipe").signal_end(tx);
        // The pipe was grown to 1 MiB (within Linux's default pipe-max-size).
        // SAFETY: F_GETPIPE_SZ only reads the pipe's capacity.
        let capacity = unsafe { libc::fcntl(source.pipe.as_raw_fd(), libc::F_GETPIPE_SZ) };
        assert_eq!(capacity, 1 << 20);
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let sent = data.clone();
        let writer = std::thread::spawn(move || {
            for piece in sent.chunks(4096) {
                write.write_all(piece).expect("write");
            }
        });
        let mut got = Vec::new();
        let mut buf = vec![0; 1 << 20];
        loop {
            let n = source.read(&mut buf).expect("reads");
            if n == 0 {
                break;
            }
            assert!(ended.try_recv().is_err(), "not ended before the end");
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(got, data);
        assert!(ended.try_recv().is_ok(), "the end is signalled");
        writer.join().expect("writer");
    }
}
