//! The `local` host: commands run on the backup server itself, in their own process
//! group so that stopping a dump stops everything its shell started.

use std::process::Stdio;
use std::sync::{Arc, OnceLock};

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;

use super::pipe::SourcePipe;
use super::ExitOutcome;

/// stderr kept for the error message: the last 32 KiB.
const STDERR_TAIL: usize = 32 << 10;

pub struct LocalProcess {
    child: Child,
    stderr: JoinHandle<String>,
    outcome: Option<ExitOutcome>,
}

impl LocalProcess {
    pub fn spawn(command: &str) -> std::io::Result<(LocalProcess, SourcePipe)> {
        let mut child = Command::new("/bin/sh")
            .arg("-c")
            .arg(command)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let stdout = SourcePipe::new(stdout.into_owned_fd()?, "local")?;
        let stderr = child.stderr.take().expect("stderr is piped");
        let stderr = tokio::spawn(collect_stderr(stderr, None));
        Ok((
            LocalProcess {
                child,
                stderr,
                outcome: None,
            },
            stdout,
        ))
    }

    pub fn try_outcome(&mut self) -> Option<ExitOutcome> {
        if self.outcome.is_none() {
            if let Ok(Some(status)) = self.child.try_wait() {
                self.outcome = Some(outcome_of(status));
            }
        }
        self.outcome.clone()
    }

    pub async fn kill(&mut self) {
        if let Some(pid) = self.child.id() {
            // SAFETY: killpg only sends a signal; the group is the child's own (process_group(0)).
            unsafe {
                libc::killpg(pid as libc::pid_t, libc::SIGKILL);
            }
        }
        let _ = self.child.kill().await;
    }

    pub async fn wait(mut self) -> (ExitOutcome, String) {
        let outcome = match self.outcome.clone() {
            Some(o) => o,
            None => match self.child.wait().await {
                Ok(status) => outcome_of(status),
                Err(e) => ExitOutcome::Lost(e.to_string()),
            },
        };
        self.outcome = Some(outcome.clone());
        let stderr = (&mut self.stderr).await.unwrap_or_default();
        (outcome, stderr)
    }
}

fn outcome_of(status: std::process::ExitStatus) -> ExitOutcome {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => ExitOutcome::Code(c),
        (None, Some(s)) => ExitOutcome::Signal(s),
        _ => ExitOutcome::Lost("no exit status".into()),
    }
}

/// Keeps the tail of a command's stderr, logging each line at debug level. With
/// `pid`, a first line `bk-remote-pid N` (printed by the SSH wrapper) is taken out.
pub(super) async fn collect_stderr(
    stderr: impl AsyncRead + Unpin,
    pid: Option<Arc<OnceLock<u32>>>,
) -> String {
    let mut lines = BufReader::new(stderr.take(1 << 30)).lines();
    let mut tail = String::new();
    while let Ok(Some(line)) = lines.next_line().await {
        if let Some(slot) = &pid {
            if slot.get().is_none() {
                if let Some(n) = line.strip_prefix("bk-remote-pid ") {
                    if let Ok(n) = n.trim().parse() {
                        let _ = slot.set(n);
                        continue;
                    }
                }
            }
        }
        tracing::debug!(target: "bk::source", "{line}");
        tail.push_str(&line);
        tail.push('\n');
        if tail.len() > 2 * STDERR_TAIL {
            let cut = tail.len() - STDERR_TAIL;
            let cut = (cut..tail.len())
                .find(|&i| tail.is_char_boundary(i))
                .unwrap_or(cut);
            tail.drain(..cut);
        }
    }
    if tail.len() > STDERR_TAIL {
        let cut = tail.len() - STDERR_TAIL;
        let cut = (cut..tail.len())
            .find(|&i| tail.is_char_boundary(i))
            .unwrap_or(cut);
        tail.drain(..cut);
    }
    tail
}

/// Runs a short command to completion and returns how it ended, its stdout and stderr.
pub async fn output(command: &str) -> std::io::Result<(ExitOutcome, String, String)> {
    let out = Command::new("/bin/sh")
        .arg("-c")
        .arg(command)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await?;
    Ok((
        outcome_of(out.status),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

impl Drop for LocalProcess {
    /// A dump abandoned mid-way (timeout, shutdown) must not keep running.
    fn drop(&mut self) {
        if self.outcome.is_none() {
            if let Some(pid) = self.child.id() {
                // SAFETY: killpg only sends a signal to the child's own process group.
                unsafe {
                    libc::killpg(pid as libc::pid_t, libc::SIGKILL);
                }
            }
        }
    }
}
