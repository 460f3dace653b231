//! `postgres` jobs: `pg_dump --format=custom -Z0` of one database (bk compresses),
//! run on the source host, normally against a hot-standby replica.
//!
//! Before the dump, `psql` checks the server: a primary is refused unless the job sets
//! `allow_primary`, a replica lagging more than `max_replay_lag` is refused. The
//! manifest records that state and `pg_dumpall --globals-only` (roles, tablespaces);
//! per-table row counts are counted in the dump as it streams (`pg_archive`).
//!
//! With `pause_replay`, WAL replay is paused for the dump and must never stay paused:
//! the pause is owned by a *watchdog* on the source host, a shell that pauses replay,
//! then blocks reading its stdin, and resumes replay when that stdin closes. bk holds
//! the other end: it closes it when the dump ends, and the kernel closes it if bk
//! dies or the connection drops, so replay resumes in every case.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio_util::task::AbortOnDropHandle;

use super::shell::quote;
use super::{DumpPlan, ExitOutcome, SourceError, SourceHost};
use crate::config::{JobConfig, JobKind};

/// The stderr line a hot standby gives when replay cancels a dump's query.
pub const RECOVERY_CONFLICT: &str = "conflict with recovery";
/// How long replay may take to actually stop after `pg_wal_replay_pause()`.
const PAUSE_WAIT: Duration = Duration::from_secs(30);

pub fn plan(job: &JobConfig) -> DumpPlan {
    let database = job.database.clone().unwrap_or_default();
    let mut describe = BTreeMap::from([("database".to_string(), database)]);
    if let Some(c) = &job.conninfo {
        describe.insert("conninfo".into(), redact(c));
    }
    DumpPlan {
        kind: JobKind::Postgres,
        command: format!(
            "pg_dump --format=custom --compress=0 --no-password --dbname={}",
            quote(&format!("{} application_name={DUMP_APP}", connstr(job)))
        ),
        describe,
        version_command: Some("pg_dump --version".into()),
    }
}

/// The job's conninfo with its database appended (libpq keeps the last value of a key).
pub fn connstr(job: &JobConfig) -> String {
    let mut s = job.conninfo.clone().unwrap_or_default();
    if let Some(db) = &job.database {
        if !s.trim().is_empty() {
            s.push(' ');
        }
        s.push_str("dbname=");
        s.push_str(&libpq_value(db));
    }
    s
}

/// Quotes a libpq conninfo value.
fn libpq_value(v: &str) -> String {
    format!("'{}'", v.replace('\\', r"\\").replace('\'', r"\'"))
}

/// conninfo without its password, for the manifest and messages: libpq's
/// `key = value` pairs (spaces around `=`, single-quoted values with `\` escapes) or
/// a `postgresql://` URI (user, password and query dropped).
fn redact(conninfo: &str) -> String {
    let text = conninfo.trim();
    if text.starts_with("postgresql://") || text.starts_with("postgres://") {
        return crate::repo::redact_url(text);
    }
    let mut out = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let key_end = rest
            .find(|c: char| c == '=' || c.is_whitespace())
            .unwrap_or(rest.len());
        let key = &rest[..key_end];
        rest = rest[key_end..].trim_start();
        let Some(after_eq) = rest.strip_prefix('=') else {
            // Not libpq syntax: keep nothing that could be a value.
            out.push("…".to_string());
            break;
        };
        rest = after_eq.trim_start();
        let value_end = if rest.starts_with('\'') {
            let mut escaped = false;
            rest.char_indices()
                .skip(1)
                .find(|&(_, c)| {
                    let end = c == '\'' && !escaped;
                    escaped = c == '\\' && !escaped;
                    end
                })
                .map(|(i, _)| i + 1)
                .unwrap_or(rest.len())
        } else {
            rest.find(char::is_whitespace).unwrap_or(rest.len())
        };
        let value = &rest[..value_end];
        rest = rest[value_end..].trim_start();
        if key == "password" {
            out.push("password=…".to_string());
        } else {
            out.push(format!("{key}={value}"));
        }
    }
    out.join(" ")
}

const STATE_SQL: &str = "SELECT pg_is_in_recovery(), CASE WHEN NOT pg_is_in_recovery() THEN 0 \
     WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0 \
     ELSE COALESCE(EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp()), 0) END, \
     current_setting('server_version')";
const PAUSE_STATE_SQL: &str = "SELECT pg_get_wal_replay_pause_state()";
/// pg_dump's `application_name`, so that a runaway dump can be found and stopped.
const DUMP_APP: &str = "bk_pg_dump";
const TERMINATE_SQL: &str = "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
     WHERE application_name = 'bk_pg_dump' AND datname = current_database()";
/// A control query cancelled by a recovery conflict is retried this many times, the
/// first after `CONTROL_RETRY_WAIT`, then twice as long each time (7.75 s in all).
const CONTROL_RETRIES: u32 = 5;
const CONTROL_RETRY_WAIT: Duration = Duration::from_millis(250);
/// How often the replay lag is measured during the dump.
const LAG_POLL: Duration = Duration::from_secs(2);

/// Every command a postgres job sends to its host besides the dump itself (for the
/// `authorized_keys` forced command, which allows exactly these).
pub fn commands(job: &JobConfig) -> Vec<String> {
    let mut out = vec![
        psql(job, STATE_SQL),
        psql(job, TERMINATE_SQL),
        globals_command(job),
        format!("{} --no-role-passwords", globals_command(job)),
    ];
    if job.pause_replay {
        out.push(watchdog_script(job));
        out.push(psql(job, PAUSE_STATE_SQL));
    }
    out
}

/// Pauses replay (again after a recovery conflict, up to five tries, as `query` does),
/// waits for its stdin to close, then resumes (retrying: giving up would leave an outage).
fn watchdog_script(job: &JobConfig) -> String {
    pauser_script(
        &psql(job, "SELECT pg_wal_replay_pause()"),
        &psql(job, "SELECT pg_wal_replay_resume()"),
    )
}

fn pauser_script(pause: &str, resume: &str) -> String {
    format!(
        "n=0; until err=$({pause} 2>&1 >/dev/null); do n=$((n+1)); \
         case $err in *{RECOVERY_CONFLICT:?}*) [ $n -lt 5 ] && sleep 1 && continue;; esac; \
         printf '%s\\n' \"$err\" >&2; exit 3; done; cat >/dev/null; \
         for i in 1 2 3 4 5 6 7 8 9 10; do {resume} >/dev/null 2>&1 && exit 0; sleep 2; done; exit 4"
    )
}

/// psql input that prints `schema.table|rows` for every user table (`\gexec` runs the
/// generated counts). With `own_rows`, each table's own rows (`FROM ONLY`) and only
/// tables that hold rows themselves (not partitioned parents): what a dump's data
/// holds per table, as `pg_archive` counts it. Without, a table's rows including its
/// partitions' and inheritance children's: the counts bk took beside the dump until it
/// counted the dump itself, which restore tests of such backups compare with.
pub fn count_rows_sql(own_rows: bool) -> String {
    let (only, kinds) = if own_rows {
        ("ONLY ", "'r'")
    } else {
        ("", "'r', 'p'")
    };
    format!(
        "SELECT format('SELECT %L, count(*) FROM {only}%s', n.nspname || '.' || c.relname, c.oid::regclass) \
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE c.relkind IN ({kinds}) AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
         AND n.nspname NOT LIKE 'pg_toast%' AND n.nspname NOT LIKE 'pg_temp%' ORDER BY 1 \\gexec"
    )
}

/// Parses the `schema.table|rows` lines printed for `count_rows_sql`.
pub fn parse_row_counts(out: &str) -> BTreeMap<String, u64> {
    out.lines()
        .filter_map(|l| {
            let (table, n) = l.rsplit_once('|')?;
            Some((table.to_string(), n.trim().parse().ok()?))
        })
        .collect()
}

fn globals_command(job: &JobConfig) -> String {
    format!(
        "pg_dumpall --globals-only --no-password --dbname={}",
        quote(&job.conninfo.clone().unwrap_or_default())
    )
}

fn psql(job: &JobConfig, sql: &str) -> String {
    format!(
        "psql -X -q -At -F '|' -v ON_ERROR_STOP=1 --no-password --dbname={} -c {}",
        quote(&connstr(job)),
        quote(sql)
    )
}

/// A postgres dump in progress: the checks done, the pause held (if any).
pub struct PgSession {
    host: SourceHost,
    job_name: String,
    watchdog: Option<Watchdog>,
    /// The lag monitor must not outlive the run (the watchdog ends with its stdin):
    /// dropping the session aborts it, and the globals query with it.
    monitor: Option<(AbortOnDropHandle<()>, Arc<std::sync::Mutex<LagWatch>>)>,
    /// `pg_dumpall --globals-only`, running beside the dump (collected by `finish`).
    globals: Option<GlobalsTask>,
    /// Facts for the manifest's `details`.
    pub details: BTreeMap<String, serde_json::Value>,
    pub warnings: Vec<String>,
}

impl PgSession {
    /// Checks the server, pauses replay if asked and starts `pg_dumpall --globals-only`
    /// (collected by `finish`). Row counts come from the dump itself: `pg_archive`.
    /// Dropping the session (on any error) lets the watchdog resume replay.
    pub async fn begin(
        host: &SourceHost,
        job_name: &str,
        job: &JobConfig,
    ) -> Result<PgSession, SourceError> {
        let mut session = PgSession {
            host: host.clone(),
            job_name: job_name.to_string(),
            watchdog: None,
            monitor: None,
            globals: None,
            details: BTreeMap::new(),
            warnings: Vec::new(),
        };
        let state = session.query(job, STATE_SQL).await?;
        let fields: Vec<&str> = state.trim().split('|').collect();
        let in_recovery = fields.first() == Some(&"t");
        let lag: f64 = fields.get(1).and_then(|l| l.parse().ok()).unwrap_or(0.0);
        let version = fields.get(2).copied().unwrap_or("").to_string();
        session.details.insert(
            "postgres".into(),
            json!({ "in_recovery": in_recovery, "replay_lag_seconds": lag, "server_version": version }),
        );
        if !in_recovery && !job.allow_primary {
            return Err(session.refuse(
                "the server is a primary (pg_is_in_recovery() is false): point the job at a \
                 replica, or set allow_primary = true",
            ));
        }
        if in_recovery && lag > job.max_replay_lag.as_secs_f64() {
            return Err(session.refuse(&format!(
                "the replica's replay lag is {lag:.0}s, above max_replay_lag = {}",
                humantime::format_duration(job.max_replay_lag)
            )));
        }
        if job.pause_replay && in_recovery {
            session.pause(job).await?;
        }
        session.start_globals(job);
        if in_recovery && !job.pause_replay {
            session.watch_lag(job, lag);
        }
        Ok(session)
    }

    /// Measures the replay lag while the dump runs: a slow reader stalls a backend in
    /// ClientWrite, and that can stall replay without bound. The peak is recorded,
    /// `max_replay_lag` warns, `abort_replay_lag` stops the dump.
    fn watch_lag(&mut self, job: &JobConfig, initial: f64) {
        let state = Arc::new(std::sync::Mutex::new(LagWatch {
            peak: initial,
            ..LagWatch::default()
        }));
        let (host, job, shared) = (self.host.clone(), job.clone(), state.clone());
        let task = tokio::spawn(async move {
            loop {
                tokio::time::sleep(LAG_POLL).await;
                let Ok((ExitOutcome::Code(0), out, _)) = host.output(&psql(&job, STATE_SQL)).await
                else {
                    continue;
                };
                let lag: f64 = out
                    .trim()
                    .split('|')
                    .nth(1)
                    .and_then(|l| l.parse().ok())
                    .unwrap_or(0.0);
                {
                    let mut w = shared.lock().unwrap_or_else(|p| p.into_inner());
                    w.peak = w.peak.max(lag);
                }
                if job
                    .abort_replay_lag
                    .is_some_and(|limit| lag > limit.as_secs_f64())
                {
                    shared.lock().unwrap_or_else(|p| p.into_inner()).aborted = Some(lag);
                    let _ = host.output(&psql(&job, TERMINATE_SQL)).await;
                    return;
                }
            }
        });
        self.monitor = Some((AbortOnDropHandle::new(task), state));
    }

    fn refuse(&self, why: &str) -> SourceError {
        SourceError::Refused {
            host: self.host.name().to_string(),
            job: self.job_name.clone(),
            reason: why.to_string(),
        }
    }

    /// Runs one of the short control queries (state, pause state). A hot standby can
    /// cancel even these, at connection start, while replay removes rows; that says
    /// nothing about the dump, so they are retried a few times before it counts.
    async fn query(&self, job: &JobConfig, sql: &str) -> Result<String, SourceError> {
        let command = psql(job, sql);
        retry_conflicts(|| async {
            let (outcome, stdout, stderr) = self.host.output(&command).await?;
            if outcome != ExitOutcome::Code(0) {
                return Err(SourceError::Failed {
                    host: self.host.name().to_string(),
                    outcome,
                    stderr: format!("psql: {}", stderr.trim()),
                });
            }
            Ok(stdout)
        })
        .await
    }

    async fn pause(&mut self, job: &JobConfig) -> Result<(), SourceError> {
        let watchdog = Watchdog::spawn(&self.host, &watchdog_script(job)).await?;
        self.watchdog = Some(watchdog);
        // pg_wal_replay_pause() returns before replay has stopped: wait for `paused`.
        let started = Instant::now();
        loop {
            let state = self.query(job, PAUSE_STATE_SQL).await?;
            if state.trim() == "paused" {
                break;
            }
            if let Some(w) = self.watchdog.as_mut() {
                if let Some(stderr) = w.exited_early().await {
                    return Err(SourceError::Failed {
                        host: self.host.name().to_string(),
                        outcome: ExitOutcome::Code(3),
                        stderr: format!("pausing WAL replay failed: {stderr}"),
                    });
                }
            }
            if started.elapsed() > PAUSE_WAIT {
                return Err(self.refuse("WAL replay did not pause within 30s"));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        self.details
            .insert("replay_paused".into(), serde_json::Value::Bool(true));
        Ok(())
    }

    /// Starts `pg_dumpall --globals-only` beside the dump: one connection fewer to wait
    /// for before the dump starts. With replay paused, `finish` collects it inside the
    /// pause, so both see the same state.
    fn start_globals(&mut self, job: &JobConfig) {
        let (host, base) = (self.host.clone(), globals_command(job));
        self.globals = Some(AbortOnDropHandle::new(tokio::spawn(async move {
            let (mut outcome, mut stdout, mut stderr) = host.output(&base).await?;
            let mut warning = None;
            if outcome != ExitOutcome::Code(0) && stderr.contains("permission denied") {
                // Not a superuser: pg_authid is out of reach, roles are still worth having.
                (outcome, stdout, stderr) =
                    host.output(&format!("{base} --no-role-passwords")).await?;
                warning = Some(
                    "pg_dumpall --globals-only ran with --no-role-passwords (the backup role is not a superuser)"
                        .to_string(),
                );
            }
            if outcome != ExitOutcome::Code(0) {
                return Err(SourceError::Failed {
                    host: host.name().to_string(),
                    outcome,
                    stderr: format!("pg_dumpall --globals-only: {}", stderr.trim()),
                });
            }
            Ok((stdout, warning))
        })));
    }

    /// Waits for the globals and records them.
    async fn collect_globals(&mut self) -> Result<(), SourceError> {
        let Some(task) = self.globals.take() else {
            return Ok(());
        };
        let (stdout, warning) = match task.await {
            Ok(done) => done?,
            Err(join) => {
                return Err(SourceError::Failed {
                    host: self.host.name().to_string(),
                    outcome: ExitOutcome::Lost(join.to_string()),
                    stderr: "pg_dumpall --globals-only did not finish".into(),
                })
            }
        };
        self.warnings.extend(warning);
        self.details
            .insert("pg_globals".into(), serde_json::Value::String(stdout));
        Ok(())
    }

    /// Resumes replay (if paused) and confirms it runs. Runs on success and failure.
    /// Returns the manifest details and warnings; fails if replay could not be
    /// resumed or the dump was stopped for lag.
    pub async fn finish(
        mut self,
        job: &JobConfig,
    ) -> Result<(BTreeMap<String, serde_json::Value>, Vec<String>), SourceError> {
        // Inside the pause: an error here drops the session, which resumes replay.
        self.collect_globals().await?;
        if let Some((task, state)) = self.monitor.take() {
            task.abort();
            let w = state.lock().unwrap_or_else(|p| p.into_inner()).clone();
            if let Some(serde_json::Value::Object(pg)) = self.details.get_mut("postgres") {
                pg.insert("peak_replay_lag_seconds".into(), json!(w.peak));
            }
            if let Some(lag) = w.aborted {
                return Err(self.refuse(&format!(
                    "the replica's replay lag reached {lag:.0}s during the dump, above \
                     abort_replay_lag = {}: the dump was stopped",
                    humantime::format_duration(job.abort_replay_lag.unwrap_or_default())
                )));
            }
            if w.peak > job.max_replay_lag.as_secs_f64() {
                self.warnings.push(format!(
                    "the replica's replay lag reached {:.0}s during the dump (max_replay_lag = {})",
                    w.peak,
                    humantime::format_duration(job.max_replay_lag)
                ));
            }
        }
        let done = (
            std::mem::take(&mut self.details),
            std::mem::take(&mut self.warnings),
        );
        let Some(watchdog) = self.watchdog.take() else {
            return Ok(done);
        };
        let (outcome, stderr) = watchdog.release().await;
        let state = self.query(job, PAUSE_STATE_SQL).await;
        match (&outcome, state) {
            (ExitOutcome::Code(0), Ok(s)) if s.trim() == "not paused" => Ok(done),
            (_, state) => Err(SourceError::Failed {
                host: self.host.name().to_string(),
                outcome,
                stderr: format!(
                    "RESUMING WAL REPLAY FAILED, the replica may still be paused ({}): run \
                     SELECT pg_wal_replay_resume() on it. {stderr}",
                    match state {
                        Ok(s) => format!("state: {}", s.trim()),
                        Err(e) => e.to_string(),
                    }
                ),
            }),
        }
    }
}

type GlobalsTask = AbortOnDropHandle<Result<(String, Option<String>), SourceError>>;

#[derive(Debug, Default, Clone)]
struct LagWatch {
    peak: f64,
    aborted: Option<f64>,
}

/// True if a failed dump's stderr shows the hot-standby conflict worth retrying.
pub fn is_recovery_conflict(e: &SourceError) -> bool {
    matches!(e, SourceError::Failed { stderr, .. } if stderr.contains(RECOVERY_CONFLICT))
}

/// Runs `attempt` again after each recovery conflict, waiting `CONTROL_RETRY_WAIT`, then
/// twice as long each time, at most `CONTROL_RETRIES` times; any other result is
/// returned as is.
async fn retry_conflicts<T, F, Fut>(mut attempt: F) -> Result<T, SourceError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, SourceError>>,
{
    let mut wait = CONTROL_RETRY_WAIT;
    for _ in 0..CONTROL_RETRIES {
        match attempt().await {
            Err(e) if is_recovery_conflict(&e) => {
                tracing::info!(
                    error = %e,
                    "the replica cancelled a control query (conflict with recovery); retrying in {}ms",
                    wait.as_millis()
                );
                tokio::time::sleep(wait).await;
                wait *= 2;
            }
            done => return done,
        }
    }
    attempt().await
}

/// A command whose stdin bk holds open; it sees EOF when bk lets go, dies, or the
/// connection drops.
enum Watchdog {
    Local {
        child: tokio::process::Child,
        stdin: Option<tokio::process::ChildStdin>,
    },
    Remote {
        child: openssh::Child<Arc<openssh::Session>>,
        stdin: Option<openssh::ChildStdin>,
    },
}

impl Watchdog {
    async fn spawn(host: &SourceHost, script: &str) -> Result<Watchdog, SourceError> {
        match host {
            SourceHost::Local => {
                let mut child = tokio::process::Command::new("/bin/sh")
                    .arg("-c")
                    .arg(script)
                    .stdin(Stdio::piped())
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped())
                    .spawn()
                    .map_err(|source| SourceError::Spawn {
                        host: "local".into(),
                        source,
                    })?;
                let stdin = child.stdin.take();
                Ok(Watchdog::Local { child, stdin })
            }
            SourceHost::Ssh(target) => {
                let session = super::ssh::session(target).await?;
                let mut child = openssh::Session::to_raw_command(session, script)
                    .stdin(openssh::Stdio::piped())
                    .stdout(openssh::Stdio::null())
                    .stderr(openssh::Stdio::piped())
                    .spawn()
                    .await
                    .map_err(|e| SourceError::Remote {
                        host: target.name.clone(),
                        reason: super::error_chain(&e),
                    })?;
                let stdin = child.stdin().take();
                Ok(Watchdog::Remote { child, stdin })
            }
        }
    }

    /// If the watchdog already ended (its pause failed), its stderr.
    async fn exited_early(&mut self) -> Option<String> {
        match self {
            Watchdog::Local { child, .. } => match child.try_wait() {
                Ok(Some(_)) => {
                    let mut err = String::new();
                    if let Some(mut e) = child.stderr.take() {
                        use tokio::io::AsyncReadExt;
                        let _ = e.read_to_string(&mut err).await;
                    }
                    Some(err)
                }
                _ => None,
            },
            // No try_wait over SSH; the pause-state poll times out instead.
            Watchdog::Remote { .. } => None,
        }
    }

    /// Closes the watchdog's stdin, so it resumes replay, and waits for it.
    async fn release(self) -> (ExitOutcome, String) {
        use tokio::io::AsyncReadExt;
        match self {
            Watchdog::Local { mut child, stdin } => {
                drop(stdin);
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    let _ = e.read_to_string(&mut err).await;
                }
                let outcome = match child.wait().await {
                    Ok(s) => ExitOutcome::Code(s.code().unwrap_or(-1)),
                    Err(e) => ExitOutcome::Lost(e.to_string()),
                };
                (outcome, err)
            }
            Watchdog::Remote { mut child, stdin } => {
                drop(stdin);
                let mut err = String::new();
                if let Some(mut e) = child.stderr().take() {
                    let _ = e.read_to_string(&mut err).await;
                }
                let outcome = match child.wait().await {
                    Ok(s) => ExitOutcome::Code(s.code().unwrap_or(-1)),
                    Err(e) => ExitOutcome::Lost(super::error_chain(&e)),
                };
                (outcome, err)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed(stderr: &str) -> SourceError {
        SourceError::Failed {
            host: "db".into(),
            outcome: ExitOutcome::Code(2),
            stderr: stderr.into(),
        }
    }

    const CONFLICT: &str = "psql: error: connection to server failed: FATAL:  canceling \
         statement due to conflict with recovery";

    #[tokio::test(start_paused = true)]
    async fn control_queries_are_retried_after_conflicts_only() {
        let tries = std::cell::Cell::new(0);
        let started = tokio::time::Instant::now();
        let got = retry_conflicts(|| async {
            tries.set(tries.get() + 1);
            if tries.get() < 3 {
                Err(failed(CONFLICT))
            } else {
                Ok("t|0|15.8")
            }
        })
        .await;
        assert_eq!(got.ok(), Some("t|0|15.8"));
        assert_eq!(tries.get(), 3);
        assert_eq!(started.elapsed(), Duration::from_millis(750));

        tries.set(0);
        let got: Result<(), _> = retry_conflicts(|| async {
            tries.set(tries.get() + 1);
            Err(failed(CONFLICT))
        })
        .await;
        assert!(got.is_err_and(|e| is_recovery_conflict(&e)));
        assert_eq!(tries.get(), 1 + CONTROL_RETRIES);

        tries.set(0);
        let got: Result<(), _> = retry_conflicts(|| async {
            tries.set(tries.get() + 1);
            Err(failed(
                "psql: error: FATAL:  password authentication failed",
            ))
        })
        .await;
        assert!(got.is_err_and(|e| e.to_string().contains("password")));
        assert_eq!(tries.get(), 1);
    }

    /// The watchdog run by /bin/sh, with a script standing in for psql's pause: it fails
    /// the first `fails` times, printing `message`; returns the exit code, stderr and
    /// the number of pause calls.
    fn run_pauser(fails: u32, message: &str) -> (Option<i32>, String, usize) {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("pause");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\necho x >> \"$0.count\"\n\
                 [ $(wc -l < \"$0.count\") -gt {fails} ] || {{ echo {message:?} >&2; exit 2; }}\n"
            ),
        )
        .unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let out = std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(pauser_script(&quote(&script.to_string_lossy()), "true"))
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let calls = std::fs::read_to_string(script.with_extension("count"))
            .unwrap_or_default()
            .lines()
            .count();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
            calls,
        )
    }

    #[test]
    fn the_watchdog_retries_a_conflicted_pause_and_reports_other_failures() {
        let (code, stderr, calls) = run_pauser(2, CONFLICT);
        assert_eq!((code, calls), (Some(0), 3), "{stderr}");
        assert!(stderr.is_empty(), "{stderr}");
        let (code, stderr, calls) = run_pauser(9, CONFLICT);
        assert_eq!((code, calls), (Some(3), 5), "{stderr}");
        assert!(stderr.contains(RECOVERY_CONFLICT), "{stderr}");
        let (code, stderr, calls) = run_pauser(9, "permission denied for function");
        assert_eq!((code, calls), (Some(3), 1), "{stderr}");
        assert_eq!(stderr.trim(), "permission denied for function");
    }

    #[test]
    fn conninfo_gets_a_quoted_dbname_and_loses_its_password() {
        assert_eq!(libpq_value("it's"), r"'it\'s'");
        assert_eq!(
            redact("host=db password=hunter2 user=backup"),
            "host=db password=… user=backup"
        );
        for conninfo in [
            "host=db password = 'hunter 2' user=backup",
            "host=db password='hun\\'ter2' user=backup",
            "host=db   password=\thunter2",
        ] {
            let shown = redact(conninfo);
            assert!(
                !shown.contains("hunter") && !shown.contains("ter2"),
                "{shown}"
            );
            assert!(shown.starts_with("host=db password=…"), "{shown}");
        }
        assert_eq!(
            redact("postgresql://backup:hunter2@db:5432/app?password=x"),
            "postgresql://db:5432/app"
        );
    }
}
