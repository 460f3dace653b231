//! SSH hosts: one multiplexed OpenSSH master per host (the `openssh` crate driving
//! the system `ssh`), shared by every job on that host, and remote commands whose
//! stdout is the dump.
//!
//! Host keys are checked strictly against the host's own known_hosts file (never
//! ~/.ssh/config, never the global known_hosts). A remote command is good only if
//! `wait()` reports its exit status: when a connection drops mid-stream, stdout ends
//! with a clean EOF, so EOF alone never means success (see CRATES.md §4).

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures::FutureExt;
use openssh::{ControlPersist, KnownHosts, Session, SessionBuilder};
use tokio::task::JoinHandle;

use super::local::collect_stderr;
use super::pipe::SourcePipe;
use super::{ExitOutcome, SourceError};
use crate::config::HostConfig;

/// An idle master exits on its own after this long, so a killed bk leaks nothing for long.
const CONTROL_PERSIST_SECS: usize = 60;
/// `sun_path` is 108 bytes on Linux; the crate appends `/.ssh-connectionXXXXXX/master`.
const MAX_CONTROL_DIR: usize = 100 - 30;

/// A host from `[hosts.NAME]`, ready to connect to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SshTarget {
    pub name: String,
    pub address: String,
    pub port: u16,
    pub user: String,
    pub key: PathBuf,
    pub known_hosts: PathBuf,
    pub accept_new_host_key: bool,
    pub connect_timeout: Duration,
    pub keepalive: Duration,
}

impl SshTarget {
    pub fn new(name: &str, host: &HostConfig) -> SshTarget {
        SshTarget {
            name: name.to_string(),
            address: host.address.clone(),
            port: host.port,
            user: host.user.clone(),
            key: host.key.clone(),
            known_hosts: host.known_hosts.clone(),
            accept_new_host_key: host.accept_new_host_key,
            connect_timeout: host.connect_timeout,
            keepalive: host.keepalive,
        }
    }

    /// `user@address:port`, for messages.
    pub fn destination(&self) -> String {
        format!("{}@{}:{}", self.user, self.address, self.port)
    }

    /// How the host appears in known_hosts: `[address]:port` unless the port is 22.
    pub fn known_hosts_name(&self) -> String {
        if self.port == 22 {
            self.address.clone()
        } else {
            format!("[{}]:{}", self.address, self.port)
        }
    }
}

type Slot = Arc<tokio::sync::Mutex<Option<Arc<Session>>>>;

/// One master per host (per exact host settings), shared by the jobs on it.
fn cache() -> &'static Mutex<HashMap<SshTarget, Slot>> {
    static CACHE: OnceLock<Mutex<HashMap<SshTarget, Slot>>> = OnceLock::new();
    CACHE.get_or_init(Default::default)
}

/// The master connection to `target`, opened on first use and reused while it lives.
pub async fn session(target: &SshTarget) -> Result<Arc<Session>, SourceError> {
    let slot = {
        let mut map = cache().lock().unwrap_or_else(|p| p.into_inner());
        map.entry(target.clone()).or_default().clone()
    };
    let mut guard = slot.lock().await;
    if let Some(existing) = guard.as_ref() {
        if existing.check().await.is_ok() {
            return Ok(existing.clone());
        }
        // The master idled out or its connection died: open a new one.
        if let Some(dead) = guard.take() {
            if let Ok(dead) = Arc::try_unwrap(dead) {
                let _ = dead.close().await;
            }
        }
    }
    let fresh = Arc::new(connect(target).await?);
    *guard = Some(fresh.clone());
    Ok(fresh)
}

/// Closes every master no running command uses (`ssh -O exit`, without blocking).
/// Call before the process exits; the daemon may also call it when idle.
pub async fn close_all() {
    let slots: Vec<Slot> = {
        let map = cache().lock().unwrap_or_else(|p| p.into_inner());
        map.values().cloned().collect()
    };
    for slot in slots {
        let mut guard = slot.lock().await;
        if let Some(session) = guard.take() {
            match Arc::try_unwrap(session) {
                Ok(session) => {
                    if let Err(e) = session.close().await {
                        tracing::debug!(target: "bk::source", "closing an ssh master: {e}");
                    }
                }
                Err(in_use) => *guard = Some(in_use),
            }
        }
    }
}

/// OpenSSH's default ciphers, AES-GCM first. OpenSSH offers chacha20-poly1305 first,
/// and its chacha20-poly1305 is its own portable C, while AES-GCM goes through OpenSSL's
/// AES-NI code: pulling 1 GiB over loopback took the ssh client 2.2 CPU seconds with
/// chacha20-poly1305 and 0.7 with aes128-gcm (the sshd on the source saves as much).
/// The same ciphers as OpenSSH's default list, so any server that accepts the default
/// accepts this; only the preference changes.
const PREFER_AES_GCM: &str = "Ciphers aes128-gcm@openssh.com,aes256-gcm@openssh.com,\
                              chacha20-poly1305@openssh.com,aes128-ctr,aes192-ctr,aes256-ctr\n";

/// The ssh options bk decides for its connections: no ~/.ssh/config, no global
/// known_hosts, keys only; with `aes`, AES-GCM preferred.
fn ssh_config_text(aes: bool) -> String {
    let mut text = String::from(
        "GlobalKnownHostsFile /dev/null\nServerAliveCountMax 3\nPasswordAuthentication no\n\
         KbdInteractiveAuthentication no\nUpdateHostKeys no\nHashKnownHosts no\n",
    );
    if aes {
        text.push_str(PREFER_AES_GCM);
    }
    text
}

/// Whether this machine's CPU has AES instructions (without them AES-GCM is slower
/// than chacha20-poly1305, and ssh's default order is the better one).
fn aes_in_hardware() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("aes")
            && std::arch::is_x86_feature_detected!("pclmulqdq")
    }
    #[cfg(target_arch = "aarch64")]
    {
        std::arch::is_aarch64_feature_detected!("aes")
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        false
    }
}

async fn connect(target: &SshTarget) -> Result<Session, SourceError> {
    let host = target.name.clone();
    for (what, path) in [("key", &target.key), ("known_hosts", &target.known_hosts)] {
        if let Err(e) = std::fs::metadata(path) {
            if what == "known_hosts" && target.accept_new_host_key {
                continue;
            }
            return Err(SourceError::Connect {
                host,
                destination: target.destination(),
                reason: format!("hosts.{}.{what} = {}: {e}", target.name, path.display()),
            });
        }
    }
    let dir = control_directory().map_err(|reason| SourceError::Connect {
        host: host.clone(),
        destination: target.destination(),
        reason,
    })?;
    let ssh_config = dir.join("ssh_config");
    if !ssh_config.exists() {
        std::fs::write(&ssh_config, ssh_config_text(aes_in_hardware())).map_err(|e| {
            SourceError::Connect {
                host: host.clone(),
                destination: target.destination(),
                reason: format!("cannot write {}: {e}", ssh_config.display()),
            }
        })?;
    }
    let mut b = SessionBuilder::default();
    b.user(target.user.clone())
        .port(target.port)
        .keyfile(&target.key)
        .known_hosts_check(if target.accept_new_host_key {
            KnownHosts::Add
        } else {
            KnownHosts::Strict
        })
        .user_known_hosts_file(&target.known_hosts)
        .connect_timeout(target.connect_timeout.max(Duration::from_secs(1)))
        .server_alive_interval(target.keepalive.max(Duration::from_secs(1)))
        .control_directory(&dir)
        .control_persist(ControlPersist::IdleFor(
            NonZeroUsize::new(CONTROL_PERSIST_SECS).expect("non-zero"),
        ))
        .config_file(&ssh_config);
    tracing::debug!(target: "bk::source", host = %target.name, destination = %target.destination(), "opening ssh master");
    match b.connect_mux(&target.address).await {
        Ok(session) => Ok(session),
        Err(e) => Err(classify_connect_error(target, &e).await),
    }
}

/// Turns what ssh printed into an error an operator can act on.
async fn classify_connect_error(target: &SshTarget, e: &openssh::Error) -> SourceError {
    let text = match e {
        openssh::Error::Connect(io) => io.to_string(),
        other => super::error_chain(other),
    };
    let host = target.name.clone();
    let destination = target.destination();
    if text.contains("REMOTE HOST IDENTIFICATION HAS CHANGED") {
        return SourceError::HostKeyChanged {
            host,
            destination,
            known_hosts: target.known_hosts.clone(),
            fingerprint: fingerprint_in(&text).unwrap_or_else(|| "(not printed)".into()),
        };
    }
    if text.contains("Host key verification failed") || text.contains("host key is known") {
        let seen = match fingerprint_in(&text) {
            Some(f) => f,
            None => scan_fingerprint(target).await,
        };
        return SourceError::HostKeyUnknown {
            host,
            destination,
            name: target.known_hosts_name(),
            known_hosts: target.known_hosts.clone(),
            fingerprint: seen,
        };
    }
    if text.contains("Permission denied") {
        return SourceError::Auth {
            host,
            destination,
            key: target.key.clone(),
            detail: text.trim().to_string(),
        };
    }
    SourceError::Connect {
        host,
        destination,
        reason: text.trim().to_string(),
    }
}

/// The `SHA256:…` fingerprint ssh printed, if any.
fn fingerprint_in(text: &str) -> Option<String> {
    text.split_whitespace()
        .find(|w| w.starts_with("SHA256:") && w.len() > 20)
        .map(|w| w.trim_end_matches('.').to_string())
}

/// What the host presents now, for an unknown-key message (best effort, 5 s).
async fn scan_fingerprint(target: &SshTarget) -> String {
    let script = format!(
        "ssh-keyscan -T 5 -p {} {} 2>/dev/null | ssh-keygen -lf - 2>/dev/null",
        target.port,
        super::shell::quote(&target.address)
    );
    let out = tokio::time::timeout(
        Duration::from_secs(8),
        tokio::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(script)
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output(),
    )
    .await;
    match out {
        Ok(Ok(o)) => {
            let text = String::from_utf8_lossy(&o.stdout);
            let prints: Vec<String> = text
                .lines()
                .filter_map(|l| {
                    let mut w = l.split_whitespace();
                    let fp = w.nth(1)?;
                    let kind = w.last()?;
                    Some(format!("{fp} {kind}"))
                })
                .collect();
            if prints.is_empty() {
                "(could not be read)".into()
            } else {
                prints.join(", ")
            }
        }
        _ => "(could not be read)".into(),
    }
}

/// A short, private directory for control sockets: `$XDG_RUNTIME_DIR/bk-ssh/PID` or
/// `/tmp/bk-ssh-UID/PID`. Directories of processes that no longer exist are removed.
fn control_directory() -> Result<PathBuf, String> {
    static DIR: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    DIR.get_or_init(|| {
        // SAFETY: getuid has no preconditions.
        let uid = unsafe { libc::getuid() };
        let base = std::env::var_os("XDG_RUNTIME_DIR")
            .map(PathBuf::from)
            .filter(|d| d.is_absolute() && d.as_os_str().len() < 40 && d.is_dir())
            .map(|d| d.join("bk-ssh"))
            .unwrap_or_else(|| PathBuf::from(format!("/tmp/bk-ssh-{uid}")));
        private_dir(&base, uid)?;
        remove_stale(&base);
        let dir = base.join(std::process::id().to_string());
        private_dir(&dir, uid)?;
        if dir.as_os_str().len() > MAX_CONTROL_DIR {
            return Err(format!(
                "the ssh control directory {} is too long for a socket path",
                dir.display()
            ));
        }
        Ok(dir)
    })
    .clone()
}

fn private_dir(dir: &Path, uid: u32) -> Result<(), String> {
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let meta = std::fs::symlink_metadata(dir)
                .map_err(|e| format!("cannot inspect {}: {e}", dir.display()))?;
            if !meta.is_dir() || meta.uid() != uid || meta.permissions().mode() & 0o077 != 0 {
                return Err(format!(
                    "{} is not a private directory of this user (uid {uid}, mode 0700): remove it",
                    dir.display()
                ));
            }
            Ok(())
        }
        Err(e) => Err(format!("cannot create {}: {e}", dir.display())),
    }
}

fn remove_stale(base: &Path) {
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// The command bk sends for a dump: the remote shell first reports its PID on stderr.
pub fn wrap(command: &str) -> String {
    format!("echo bk-remote-pid $$ >&2; {command}")
}

/// A command running on an SSH host.
pub struct RemoteProcess {
    host: String,
    session: Arc<Session>,
    /// The exit status and the stderr tail, asked for only once stdout and stderr are
    /// read to their end: with a multiplexed session, `wait()` returning closes the
    /// mux connection and the master stops copying the channel's data, so waiting
    /// early cut the end off a dump that then still exited 0 (openssh-rust/openssh#103).
    status: JoinHandle<(Result<std::process::ExitStatus, openssh::Error>, String)>,
    pid: Arc<OnceLock<u32>>,
    killed: bool,
    outcome: Option<ExitOutcome>,
    stderr: Option<String>,
}

impl RemoteProcess {
    /// Starts `command` in the remote user's shell. The shell first reports its PID on
    /// stderr (it leads the process group sshd made), so that `kill` can stop the dump.
    pub async fn spawn(
        target: &SshTarget,
        command: &str,
    ) -> Result<(RemoteProcess, SourcePipe), SourceError> {
        let session = session(target).await?;
        let wrapped = wrap(command);
        let spawned = Session::to_raw_command(session.clone(), wrapped)
            .stdin(openssh::Stdio::null())
            .stdout(openssh::Stdio::piped())
            .stderr(openssh::Stdio::piped())
            .spawn()
            .await;
        let mut child = spawned.map_err(|e| SourceError::Remote {
            host: target.name.clone(),
            reason: super::error_chain(&e),
        })?;
        let stdout = child.stdout().take().expect("stdout is piped");
        let stdout = stdout
            .into_owned_fd()
            .and_then(|fd| SourcePipe::new(fd, &target.name))
            .map_err(|e| SourceError::Remote {
                host: target.name.clone(),
                reason: format!("reading the command's output: {e}"),
            })?;
        let stderr = child.stderr().take().expect("stderr is piped");
        let pid = Arc::new(OnceLock::new());
        let stderr = tokio::spawn(collect_stderr(stderr, Some(pid.clone())));
        // The remote command's exit status may be asked for only once its stream has
        // ended (end of file, an error, or the reader dropped).
        let (ended, stdout_ended) = tokio::sync::oneshot::channel();
        let status = tokio::spawn(async move {
            // Sender dropped (reader dropped) counts as ended too.
            let _ = stdout_ended.await;
            let stderr = stderr.await.unwrap_or_default();
            (child.wait().await, stderr)
        });
        let stdout = stdout.signal_end(ended);
        Ok((
            RemoteProcess {
                host: target.name.clone(),
                session,
                status,
                pid,
                killed: false,
                outcome: None,
                stderr: None,
            },
            stdout,
        ))
    }

    pub fn try_outcome(&mut self) -> Option<ExitOutcome> {
        if self.outcome.is_none() && self.status.is_finished() {
            if let Some(joined) = (&mut self.status).now_or_never() {
                self.settle(joined);
            }
        }
        self.outcome.clone()
    }

    fn settle(
        &mut self,
        joined: Result<
            (Result<std::process::ExitStatus, openssh::Error>, String),
            tokio::task::JoinError,
        >,
    ) {
        let (status, stderr) = match joined {
            Ok((status, stderr)) => (Ok(status), stderr),
            Err(e) => (Err(e), String::new()),
        };
        self.outcome = Some(self.outcome_of(status));
        self.stderr = Some(stderr);
    }

    /// Kills the remote process group. The remote dump would otherwise run on: a
    /// dropped channel stops a writer only when it next writes.
    pub async fn kill(&mut self) {
        self.killed = true;
        if let Some(pid) = self.pid.get() {
            let cmd = format!("kill -KILL -- -{pid} 2>/dev/null || kill -KILL {pid} 2>/dev/null");
            let stopped = tokio::time::timeout(
                Duration::from_secs(10),
                Session::to_raw_command(self.session.clone(), cmd)
                    .stdin(openssh::Stdio::null())
                    .stdout(openssh::Stdio::null())
                    .stderr(openssh::Stdio::null())
                    .status(),
            )
            .await;
            if !matches!(stopped, Ok(Ok(_))) {
                tracing::warn!(target: "bk::source", host = %self.host, pid, "could not kill the remote command");
            }
        }
    }

    pub async fn wait(mut self) -> (ExitOutcome, String) {
        if self.outcome.is_none() {
            let joined = (&mut self.status).await;
            self.settle(joined);
        }
        let outcome = self.outcome.take().unwrap_or_else(|| {
            ExitOutcome::Lost(format!("no exit status from host `{}`", self.host))
        });
        let stderr = self.stderr.take().unwrap_or_default();
        let outcome = if self.killed && outcome != ExitOutcome::Code(0) {
            ExitOutcome::Signal(libc::SIGKILL)
        } else {
            outcome
        };
        (outcome, stderr)
    }

    fn outcome_of(
        &self,
        joined: Result<Result<std::process::ExitStatus, openssh::Error>, tokio::task::JoinError>,
    ) -> ExitOutcome {
        use std::os::unix::process::ExitStatusExt;
        match joined {
            Ok(Ok(status)) => match (status.code(), status.signal()) {
                (Some(c), _) => ExitOutcome::Code(c),
                (None, Some(s)) => ExitOutcome::Signal(s),
                _ => ExitOutcome::Lost(format!("no exit status from host `{}`", self.host)),
            },
            // The crate turns exit status 127 into an error.
            Ok(Err(openssh::Error::Remote(e))) if e.kind() == std::io::ErrorKind::NotFound => {
                ExitOutcome::Code(127)
            }
            Ok(Err(openssh::Error::RemoteProcessTerminated | openssh::Error::Disconnected)) => {
                ExitOutcome::Lost(format!(
                    "the connection to host `{}` dropped, or the remote command was killed, before it exited",
                    self.host
                ))
            }
            Ok(Err(e)) => ExitOutcome::Lost(format!(
                "host `{}`: {}",
                self.host,
                super::error_chain(&e)
            )),
            Err(join) => ExitOutcome::Lost(join.to_string()),
        }
    }
}

impl Drop for RemoteProcess {
    /// An abandoned dump (timeout, shutdown) must not keep running on the host.
    fn drop(&mut self) {
        if self.outcome.is_none() && !self.status.is_finished() && !self.killed {
            if let Some(pid) = self.pid.get().copied() {
                let session = self.session.clone();
                if let Ok(rt) = tokio::runtime::Handle::try_current() {
                    rt.spawn(async move {
                        let _ = Session::to_raw_command(session, format!("kill -KILL -- -{pid}"))
                            .stdin(openssh::Stdio::null())
                            .stdout(openssh::Stdio::null())
                            .stderr(openssh::Stdio::null())
                            .status()
                            .await;
                    });
                }
            }
        }
    }
}

/// Runs a short command on an SSH host and collects its output (checks, versions).
pub async fn output(
    target: &SshTarget,
    command: &str,
) -> Result<(ExitOutcome, String, String), SourceError> {
    let session = session(target).await?;
    let out = Session::to_raw_command(session, command)
        .stdin(openssh::Stdio::null())
        .output()
        .await;
    match out {
        Ok(o) => {
            use std::os::unix::process::ExitStatusExt;
            let outcome = match (o.status.code(), o.status.signal()) {
                (Some(c), _) => ExitOutcome::Code(c),
                (None, Some(s)) => ExitOutcome::Signal(s),
                _ => ExitOutcome::Lost("no exit status".into()),
            };
            Ok((
                outcome,
                String::from_utf8_lossy(&o.stdout).into_owned(),
                String::from_utf8_lossy(&o.stderr).into_owned(),
            ))
        }
        Err(openssh::Error::Remote(e)) if e.kind() == std::io::ErrorKind::NotFound => Ok((
            ExitOutcome::Code(127),
            String::new(),
            "command not found".into(),
        )),
        Err(e) => Err(SourceError::Remote {
            host: target.name.clone(),
            reason: super::error_chain(&e),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// ssh refuses to start on a cipher it does not know, so every name bk prefers must
    /// be one this OpenSSH supports, and the list must not drop one of its defaults.
    #[test]
    fn the_preferred_ciphers_are_openssh_defaults_it_supports() {
        let out = std::process::Command::new("ssh")
            .args(["-Q", "cipher"])
            .output()
            .expect("the OpenSSH client is installed");
        let supported = String::from_utf8_lossy(&out.stdout);
        let supported: Vec<&str> = supported.lines().map(str::trim).collect();
        let text = ssh_config_text(true);
        let line = text
            .lines()
            .find_map(|l| l.strip_prefix("Ciphers "))
            .expect("a Ciphers line");
        let preferred: Vec<&str> = line.split(',').collect();
        assert_eq!(preferred[0], "aes128-gcm@openssh.com");
        for cipher in &preferred {
            assert!(
                supported.contains(cipher),
                "ssh does not know {cipher}: {supported:?}"
            );
        }
        for default in [
            "chacha20-poly1305@openssh.com",
            "aes128-ctr",
            "aes192-ctr",
            "aes256-ctr",
            "aes128-gcm@openssh.com",
            "aes256-gcm@openssh.com",
        ] {
            assert!(preferred.contains(&default), "{default} left out");
        }
        assert!(!ssh_config_text(false).contains("Ciphers"));
    }

    #[test]
    fn finds_the_fingerprint_ssh_printed() {
        let text = "@@@@@@@@@@\n@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @\n\
            The fingerprint for the ED25519 key sent by the remote host is\n\
            SHA256:pN3ikEXR7Ogq3RqcqyAYRIp9SUWCZNT/gDEE4Jb/hDI.\nPlease contact your system administrator.";
        assert_eq!(
            fingerprint_in(text).as_deref(),
            Some("SHA256:pN3ikEXR7Ogq3RqcqyAYRIp9SUWCZNT/gDEE4Jb/hDI")
        );
        assert_eq!(fingerprint_in("Host key verification failed."), None);
    }
}
