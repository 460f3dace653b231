//! Sources: where dumps come from. A job's kind decides the command (`directory` →
//! tar, `command` → the operator's own), its host decides where it runs (`local` →
//! the backup server itself). The running command's stdout is the dump; its exit
//! status and stderr are part of the result.
//!
//! A source never decides on its own that a short stream is complete: only an exit
//! status the kind accepts makes a dump good.

pub mod command;
pub mod directory;
pub mod local;
pub mod shell;
pub mod tar_index;

use std::collections::BTreeMap;
use std::fmt;

use tokio::io::AsyncRead;

use crate::config::{JobConfig, JobKind};

/// How a source command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitOutcome {
    Code(i32),
    Signal(i32),
    /// The process could not be waited for (connection lost, killed by bk…).
    Lost(String),
}

impl fmt::Display for ExitOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitOutcome::Code(c) => write!(f, "exit status {c}"),
            ExitOutcome::Signal(s) => write!(f, "killed by signal {s}"),
            ExitOutcome::Lost(why) => write!(f, "lost: {why}"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("cannot start the source command on host `{host}`: {source}")]
    Spawn {
        host: String,
        source: std::io::Error,
    },
    #[error("the source command on host `{host}` failed ({outcome}){}", stderr_suffix(.stderr))]
    Failed {
        host: String,
        outcome: ExitOutcome,
        stderr: String,
    },
    #[error("host `{host}` is not supported yet for kind `{kind}`")]
    Unsupported { host: String, kind: String },
}

fn stderr_suffix(stderr: &str) -> String {
    let s = stderr.trim();
    if s.is_empty() {
        String::new()
    } else {
        format!("; its stderr said:\n{s}")
    }
}

/// What to run for a job, and how to judge its result.
#[derive(Debug, Clone)]
pub struct DumpPlan {
    pub kind: JobKind,
    /// Shell command whose stdout is the dump.
    pub command: String,
    /// What is being dumped, recorded in the manifest.
    pub describe: BTreeMap<String, String>,
    /// Shell command printing the dump tool's version, recorded in the manifest.
    pub version_command: Option<String>,
}

impl DumpPlan {
    pub fn for_job(job: &JobConfig) -> Result<DumpPlan, SourceError> {
        match job.kind {
            JobKind::Directory => Ok(directory::plan(job)),
            JobKind::Command => Ok(command::plan(job)),
            other => Err(SourceError::Unsupported {
                host: job.host.clone(),
                kind: other.as_str().into(),
            }),
        }
    }

    /// Judges the exit: `Ok(warnings)` if the dump is good.
    pub fn judge(
        &self,
        host: &str,
        outcome: ExitOutcome,
        stderr: String,
    ) -> Result<Vec<String>, SourceError> {
        match (self.kind, &outcome) {
            (_, ExitOutcome::Code(0)) => Ok(Vec::new()),
            (JobKind::Directory, ExitOutcome::Code(1)) => Ok(directory::warnings(&stderr)),
            _ => Err(SourceError::Failed {
                host: host.to_string(),
                outcome,
                stderr,
            }),
        }
    }
}

/// A started source command.
pub struct RunningSource {
    pub host: String,
    stdout: Option<Box<dyn AsyncRead + Send + Unpin>>,
    process: local::LocalProcess,
}

impl RunningSource {
    /// Starts `command` on `host` (only `local` here; SSH hosts come through `ssh`).
    pub async fn start(host: &str, command: &str) -> Result<RunningSource, SourceError> {
        let (process, stdout) =
            local::LocalProcess::spawn(command).map_err(|source| SourceError::Spawn {
                host: host.to_string(),
                source,
            })?;
        Ok(RunningSource {
            host: host.to_string(),
            stdout: Some(stdout),
            process,
        })
    }

    /// The dump stream (once).
    pub fn take_stdout(&mut self) -> Box<dyn AsyncRead + Send + Unpin> {
        self.stdout.take().expect("stdout taken once")
    }

    /// If the command has already ended, how; does not wait.
    pub fn try_outcome(&mut self) -> Option<ExitOutcome> {
        self.process.try_outcome()
    }

    /// Stops the command and everything it started.
    pub async fn kill(&mut self) {
        self.process.kill().await
    }

    /// Waits for the command to end; returns how, and the tail of its stderr.
    pub async fn wait(self) -> (ExitOutcome, String) {
        self.process.wait().await
    }
}

/// Runs a short command on a host and returns its first stdout line (tool versions).
pub async fn first_line(host: &str, command: &str) -> Option<String> {
    local::first_line(command).await.filter(|_| host == "local")
}
