//! Sources: where dumps come from. A job's kind decides the command (`directory` →
//! tar, `postgres` → pg_dump, `mysql` → mariadb-dump, `command` → the operator's own),
//! its host decides where it runs (`local` → the backup server itself, any other →
//! over SSH). The running command's stdout is the dump; its exit status and stderr
//! are part of the result.
//!
//! A source never decides on its own that a short stream is complete: only an exit
//! status the kind accepts makes a dump good.

pub mod command;
pub mod directory;
pub mod limit;
pub mod local;
pub mod mysql;
pub mod pg_archive;
pub mod pipe;
pub mod postgres;
pub mod restrict;
pub mod shell;
pub mod ssh;
pub mod tar_index;

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

pub(crate) use crate::error_chain;

use crate::config::{Config, JobConfig, JobKind};

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
    #[error("host `{0}` has no [hosts.{0}] entry in the configuration")]
    UnknownHost(String),
    #[error("cannot connect to host `{host}` ({destination}): {reason}")]
    Connect {
        host: String,
        destination: String,
        reason: String,
    },
    #[error(
        "host `{host}` ({destination}) presented a host key that is NOT the one in {known_hosts}: \
             refusing to connect (possible man-in-the-middle, or the host was reinstalled). \
             The key it sent has fingerprint {fingerprint}. If the change is expected, \
             replace the host's line in {known_hosts}"
    )]
    HostKeyChanged {
        host: String,
        destination: String,
        known_hosts: PathBuf,
        fingerprint: String,
    },
    #[error("host `{host}` ({destination}): its host key is not in {known_hosts} (no entry for `{name}`), \
             and keys are checked strictly: refusing to connect. It presents {fingerprint}; after \
             checking that fingerprint, add the key with `ssh-keyscan` to {known_hosts}, or set \
             hosts.{host}.accept_new_host_key = true")]
    HostKeyUnknown {
        host: String,
        destination: String,
        name: String,
        known_hosts: PathBuf,
        fingerprint: String,
    },
    #[error("host `{host}` ({destination}) refused the login with key {}: check hosts.{host}.user \
             and that the key's public half is in that user's authorized_keys ({detail})", key.display())]
    Auth {
        host: String,
        destination: String,
        key: PathBuf,
        detail: String,
    },
    #[error("host `{host}`: cannot run the remote command: {reason}")]
    Remote { host: String, reason: String },
    #[error("job `{job}` refused to dump from host `{host}`: {reason}")]
    Refused {
        host: String,
        job: String,
        reason: String,
    },
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
            JobKind::Postgres => Ok(postgres::plan(job)),
            JobKind::Mysql => Ok(mysql::plan(job)),
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

/// Where a job's commands run.
#[derive(Debug, Clone)]
pub enum SourceHost {
    /// The backup server itself.
    Local,
    /// A `[hosts.NAME]` entry, over SSH.
    Ssh(ssh::SshTarget),
}

impl SourceHost {
    pub fn resolve(config: &Config, name: &str) -> Result<SourceHost, SourceError> {
        if name == "local" {
            return Ok(SourceHost::Local);
        }
        let host = config
            .hosts
            .get(name)
            .ok_or_else(|| SourceError::UnknownHost(name.to_string()))?;
        Ok(SourceHost::Ssh(ssh::SshTarget::new(name, host)))
    }

    pub fn name(&self) -> &str {
        match self {
            SourceHost::Local => "local",
            SourceHost::Ssh(t) => &t.name,
        }
    }

    /// Runs a short command to completion: how it ended, its stdout, its stderr.
    pub async fn output(
        &self,
        command: &str,
    ) -> Result<(ExitOutcome, String, String), SourceError> {
        match self {
            SourceHost::Local => {
                local::output(command)
                    .await
                    .map_err(|source| SourceError::Spawn {
                        host: "local".into(),
                        source,
                    })
            }
            SourceHost::Ssh(target) => ssh::output(target, command).await,
        }
    }

    /// Runs a short command and returns its first stdout line (tool versions).
    pub async fn first_line(&self, command: &str) -> Option<String> {
        let (outcome, stdout, _) = self.output(command).await.ok()?;
        if outcome != ExitOutcome::Code(0) {
            return None;
        }
        stdout
            .lines()
            .next()
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty())
    }
}

enum Process {
    Local(local::LocalProcess),
    Remote(ssh::RemoteProcess),
}

/// A started source command, local or remote.
pub struct RunningSource {
    pub host: String,
    stdout: Option<pipe::SourcePipe>,
    process: Process,
}

impl RunningSource {
    /// Starts `command` on `host`. With `stall`, the stream fails once no byte has
    /// come for that long.
    pub async fn start(
        host: &SourceHost,
        command: &str,
        stall: Option<Duration>,
    ) -> Result<RunningSource, SourceError> {
        let (process, stdout) = match host {
            SourceHost::Local => {
                let (p, out) =
                    local::LocalProcess::spawn(command).map_err(|source| SourceError::Spawn {
                        host: "local".into(),
                        source,
                    })?;
                (Process::Local(p), out)
            }
            SourceHost::Ssh(target) => {
                let (p, out) = ssh::RemoteProcess::spawn(target, command).await?;
                (Process::Remote(p), out)
            }
        };
        Ok(RunningSource {
            host: host.name().to_string(),
            stdout: Some(stdout.stall_timeout(stall)),
            process,
        })
    }

    /// The dump stream (once), to be read on a blocking thread.
    pub fn take_stdout(&mut self) -> pipe::SourcePipe {
        self.stdout.take().expect("stdout taken once")
    }

    /// If the command has already ended, how; does not wait.
    pub fn try_outcome(&mut self) -> Option<ExitOutcome> {
        match &mut self.process {
            Process::Local(p) => p.try_outcome(),
            Process::Remote(p) => p.try_outcome(),
        }
    }

    /// Stops the command and everything it started.
    pub async fn kill(&mut self) {
        match &mut self.process {
            Process::Local(p) => p.kill().await,
            Process::Remote(p) => p.kill().await,
        }
    }

    /// Waits for the command to end; returns how, and the tail of its stderr.
    pub async fn wait(self) -> (ExitOutcome, String) {
        match self.process {
            Process::Local(p) => p.wait().await,
            Process::Remote(p) => p.wait().await,
        }
    }
}
