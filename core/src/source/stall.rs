//! A reader that fails when its source goes quiet: a dump that sends no byte for the
//! stall timeout is a failed backup, not a backup that waits for ever (a frozen host,
//! a wedged pg_dump, a half-open connection that keepalives have not caught yet).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, ReadBuf};
use tokio::time::{Instant, Sleep};

pub struct StallGuard<R> {
    inner: R,
    limit: Duration,
    host: String,
    deadline: Pin<Box<Sleep>>,
}

impl<R> StallGuard<R> {
    pub fn new(inner: R, limit: Duration, host: &str) -> StallGuard<R> {
        StallGuard {
            inner,
            limit,
            host: host.to_string(),
            deadline: Box::pin(tokio::time::sleep(limit)),
        }
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for StallGuard<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                let next = Instant::now() + this.limit;
                this.deadline.as_mut().reset(next);
                Poll::Ready(r)
            }
            Poll::Pending => match this.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "the source on host `{}` sent nothing for {} (stall_timeout)",
                        this.host,
                        humantime::format_duration(this.limit)
                    ),
                ))),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test(start_paused = true)]
    async fn a_quiet_source_fails_and_a_steady_one_does_not() {
        let (mut tx, rx) = tokio::io::duplex(64);
        let mut guarded = StallGuard::new(rx, Duration::from_secs(10), "db1");
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            for _ in 0..5 {
                tokio::time::sleep(Duration::from_secs(8)).await;
                tx.write_all(b"x").await.unwrap();
            }
            tokio::time::sleep(Duration::from_secs(60)).await;
            drop(tx);
        });
        let mut got = Vec::new();
        let err = guarded.read_to_end(&mut got).await.unwrap_err();
        assert_eq!(got, b"xxxxx");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(err.to_string().contains("`db1`"), "{err}");
    }
}
