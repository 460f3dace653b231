//! `bk config check`, past validation: read-only checks of everything a configuration
//! names, each reported with what was found and, when it fails, the fix. The repository
//! (marker readable, listing allowed), every SSH host (strict host key, login), each
//! job's dump tool on its host, a postgres job's server (`pg_is_in_recovery()`, replay
//! lag), a mysql job's server (replica status, lag), and the identity files of restore
//! tests (readable, recipient configured).
//!
//! Never writes: no marker, no probe object, no catalog, no known_hosts entry. Only
//! commands the job itself sends are run on a host, so a host hardened with
//! `bk authorized-key` answers them too.

use std::path::Path;
use std::time::Duration;

use futures::StreamExt;
use object_store::ObjectStore;
use serde::Serialize;

use crate::config::{Config, JobConfig, JobKind};
use crate::repo::{RepoError, Repository};
use crate::source::{self, ssh, DumpPlan, ExitOutcome, SourceError, SourceHost};

/// Storage calls retry for minutes on a dead endpoint; a check gives up sooner.
const STORAGE_LIMIT: Duration = Duration::from_secs(30);

/// One thing checked.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// `repository`, `host db2`, `job app-db`, `restore test app-db`…
    pub what: String,
    pub ok: bool,
    /// What was found, or what went wrong.
    pub detail: String,
    /// What to do about it (failed checks).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl Check {
    fn pass(what: impl Into<String>, detail: impl Into<String>) -> Check {
        Check {
            what: what.into(),
            ok: true,
            detail: detail.into(),
            fix: None,
        }
    }

    fn fail(what: impl Into<String>, detail: impl Into<String>, fix: impl Into<String>) -> Check {
        Check {
            what: what.into(),
            ok: false,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }
}

/// Runs every check; never fails as a whole (each problem is one failed `Check`).
pub async fn run(config: &Config) -> Vec<Check> {
    let mut out = vec![Check::pass(
        "recipients",
        format!(
            "{} recipient(s) parse; every backup is encrypted to them",
            config.repository.recipients.len()
        ),
    )];
    out.extend(repository(config).await);
    let mut reachable = std::collections::BTreeSet::from(["local".to_string()]);
    for name in config.hosts.keys() {
        let check = host(config, name).await;
        if check.ok {
            reachable.insert(name.clone());
        }
        out.push(check);
    }
    for (name, job) in &config.jobs {
        if !reachable.contains(&job.host) {
            out.push(Check::fail(
                format!("job {name}"),
                format!("not checked: host `{}` is unreachable", job.host),
                format!("fix host `{}` first", job.host),
            ));
            continue;
        }
        out.extend(self::job(config, name, job).await);
    }
    for (name, job) in &config.jobs {
        if let Some(test) = &job.restore_test {
            out.push(restore_identity(config, name, &test.identity));
        }
    }
    ssh::close_all().await;
    out
}

async fn repository(config: &Config) -> Vec<Check> {
    let url = crate::repo::redact_url(&config.repository.url);
    let what = "repository";
    let local_dir = url::Url::parse(&config.repository.url)
        .ok()
        .filter(|u| u.scheme() == "file")
        .and_then(|u| u.to_file_path().ok());
    if let Some(dir) = local_dir.filter(|d| !d.exists()) {
        // Opening would create it; a check only looks.
        return vec![Check::pass(
            what,
            format!(
                "{}: does not exist yet; the first backup creates it",
                dir.display()
            ),
        )];
    }
    let repo = match Repository::open(&config.repository) {
        Ok(r) => r,
        Err(e) => {
            return vec![Check::fail(
                what,
                e.to_string(),
                "check repository.url, repository.options and the credentials (docs/storage.md)",
            )]
        }
    };
    let mut out = Vec::new();
    match tokio::time::timeout(STORAGE_LIMIT, repo.read_marker()).await {
        Ok(Ok(m)) => out.push(Check::pass(
            what,
            format!("{url}: a bk repository, format version {}", m.version),
        )),
        Ok(Err(RepoError::NotARepository { .. })) => out.push(Check::pass(
            what,
            format!("{url}: no backups yet (no marker); the first backup writes it"),
        )),
        Ok(Err(e)) => out.push(Check::fail(
            what,
            format!("reading the marker: {}", crate::error_chain(&e)),
            storage_fix(&e.to_string()),
        )),
        Err(_) => out.push(Check::fail(
            what,
            format!("{url}: no answer within {}s", STORAGE_LIMIT.as_secs()),
            "check repository.url and options.endpoint, the network and the firewall",
        )),
    }
    let listing = async {
        let prefix = object_store::path::Path::from("backups");
        let mut stream = repo.store().list(Some(&prefix));
        stream.next().await.transpose()
    };
    match tokio::time::timeout(STORAGE_LIMIT, listing).await {
        Ok(Ok(_)) => out.push(Check::pass("repository listing", "allowed")),
        Ok(Err(e)) => out.push(Check::fail(
            "repository listing",
            crate::error_chain(&e),
            storage_fix(&e.to_string()),
        )),
        Err(_) => out.push(Check::fail(
            "repository listing",
            format!("no answer within {}s", STORAGE_LIMIT.as_secs()),
            "check repository.url and options.endpoint, the network and the firewall",
        )),
    }
    out
}

fn storage_fix(error: &str) -> String {
    let e = error.to_ascii_lowercase();
    if e.contains("nosuchbucket") || e.contains("bucket does not exist") {
        "create the bucket, or correct the bucket name in repository.url".into()
    } else if e.contains("403") || e.contains("accessdenied") || e.contains("forbidden") {
        "the credentials lack permission: the backup server needs get, put and list \
         (s3:GetObject, s3:PutObject, s3:ListBucket; docs/storage.md#least-privilege-credentials)"
            .into()
    } else if e.contains("401")
        || e.contains("credential")
        || e.contains("signature")
        || e.contains("invalidaccesskeyid")
    {
        "check the credentials: repository.credentials_file or AWS_*/GOOGLE_*/AZURE_* variables"
            .into()
    } else {
        "check repository.url, repository.options (endpoint, region) and the network".into()
    }
}

async fn host(config: &Config, name: &str) -> Check {
    let what = format!("host {name}");
    let Some(entry) = config.hosts.get(name) else {
        return Check::fail(what, "no such host", "add a [hosts.NAME] entry");
    };
    let target = ssh::SshTarget::new(name, entry);
    if target.accept_new_host_key {
        // accept-new would write an unknown key into known_hosts: a check only looks.
        let known = std::fs::read_to_string(&target.known_hosts).unwrap_or_default();
        let wanted = target.known_hosts_name();
        if !known
            .lines()
            .any(|l| l.split_whitespace().next() == Some(wanted.as_str()))
        {
            return Check::fail(
                what,
                format!(
                    "{wanted} is not in {} yet; with accept_new_host_key the first backup records \
                     whatever key the host presents",
                    target.known_hosts.display()
                ),
                format!(
                    "record the key now, after comparing its fingerprint with the host's own: \
                     ssh-keyscan -p {} {} >> {}",
                    target.port,
                    target.address,
                    target.known_hosts.display()
                ),
            );
        }
    }
    let limit = target.connect_timeout + Duration::from_secs(10);
    match tokio::time::timeout(limit, ssh::session(&target)).await {
        Ok(Ok(_)) => Check::pass(
            what,
            format!(
                "{}: host key matches {}, login with {} works",
                target.destination(),
                target.known_hosts.display(),
                target.key.display()
            ),
        ),
        Ok(Err(e)) => {
            let fix = match &e {
                SourceError::HostKeyUnknown { .. } => format!(
                    "compare the fingerprint above with the host's own (ssh-keygen -lf \
                     /etc/ssh/ssh_host_ed25519_key.pub on it), then: ssh-keyscan -p {} {} >> {}",
                    target.port,
                    target.address,
                    target.known_hosts.display()
                ),
                SourceError::HostKeyChanged { .. } => format!(
                    "find out why the key changed before anything else; if the host was \
                     reinstalled, check the new fingerprint and replace its line in {}",
                    target.known_hosts.display()
                ),
                SourceError::Auth { .. } => format!(
                    "install bk's key for that user: bk authorized-key {name} | ssh root@{} \
                     'cat >> ~{}/.ssh/authorized_keys'",
                    target.address, target.user
                ),
                _ => format!(
                    "check hosts.{name}.address and port, that sshd runs there and that a \
                     firewall lets the backup server in"
                ),
            };
            Check::fail(what, e.to_string(), fix)
        }
        Err(_) => Check::fail(
            what,
            format!(
                "{}: no answer within {}s",
                target.destination(),
                limit.as_secs()
            ),
            format!("check hosts.{name}.address and port, and the network"),
        ),
    }
}

async fn job(config: &Config, name: &str, job: &JobConfig) -> Vec<Check> {
    let what = format!("job {name}");
    let mut out = Vec::new();
    let plan = match DumpPlan::for_job(job) {
        Ok(p) => p,
        Err(e) => {
            return vec![Check::fail(
                what,
                e.to_string(),
                "use a kind this version of bk supports",
            )]
        }
    };
    let host = match SourceHost::resolve(config, &job.host) {
        Ok(h) => h,
        Err(e) => return vec![Check::fail(what, e.to_string(), "add the host")],
    };
    if let (JobKind::Directory, SourceHost::Local, Some(path)) = (job.kind, &host, &job.path) {
        match std::fs::read_dir(path) {
            Ok(_) => out.push(Check::pass(
                &what,
                format!("{path} is a readable directory"),
            )),
            Err(e) => out.push(Check::fail(
                &what,
                format!("{path}: {e}"),
                "correct jobs.NAME.path, or let the user bk runs as read it",
            )),
        }
    }
    if let Some(version) = &plan.version_command {
        out.push(match host.output(version).await {
            Ok((ExitOutcome::Code(0), stdout, _)) => Check::pass(
                &what,
                format!(
                    "{} on host {}",
                    stdout.lines().next().unwrap_or("").trim(),
                    job.host
                ),
            ),
            Ok((outcome, _, stderr)) => command_failed(&what, &job.host, version, outcome, &stderr),
            Err(e) => Check::fail(&what, e.to_string(), "check the host"),
        });
    }
    if job.kind == JobKind::Postgres {
        out.push(postgres(&what, &host, job).await);
    }
    if job.kind == JobKind::Mysql {
        out.push(mysql(&what, name, &host, job).await);
    }
    out
}

/// The server a mysql job dumps: checked as a run would check it (no row counts).
async fn mysql(what: &str, name: &str, host: &SourceHost, job: &JobConfig) -> Check {
    match source::mysql::check_server(host, name, job).await {
        Ok(summary) => Check::pass(what, summary),
        Err(SourceError::Refused { reason, .. }) => Check::fail(
            what,
            reason,
            "the job would refuse this server; docs/sources.md explains the replica checks",
        ),
        Err(SourceError::Failed {
            outcome, stderr, ..
        }) => {
            let mut c = command_failed(what, &job.host, "mariadb", outcome.clone(), &stderr);
            if !matches!(outcome, ExitOutcome::Code(126 | 127)) {
                c.detail = format!("the client could not query the server: {}", stderr.trim());
                c.fix = Some(
                    "check jobs.NAME.defaults_file (an option file on the source host) and the \
                     account's grants (docs/sources.md, mysql)"
                        .into(),
                );
            }
            c
        }
        Err(e) => Check::fail(what, e.to_string(), "check the host"),
    }
}

fn command_failed(
    what: &str,
    host: &str,
    command: &str,
    outcome: ExitOutcome,
    stderr: &str,
) -> Check {
    let stderr = stderr.trim();
    let fix = match outcome {
        ExitOutcome::Code(126) if stderr.contains("may not run") => format!(
            "the host's authorized_keys line predates this configuration: install the line \
             `bk authorized-key {host}` prints now"
        ),
        ExitOutcome::Code(127) => {
            let tool = command.split_whitespace().next().unwrap_or(command);
            format!("install `{tool}` on host {host} (in the source user's PATH)")
        }
        _ => "run the command by hand on the host as the source user to see why".into(),
    };
    Check::fail(
        what,
        format!("`{command}` on host {host}: {outcome}: {stderr}"),
        fix,
    )
}

/// The server the job dumps: a replica (unless the job allows a primary), not too far behind.
async fn postgres(what: &str, host: &SourceHost, job: &JobConfig) -> Check {
    let Some(query) = source::postgres::commands(job)
        .into_iter()
        .find(|c| c.contains("pg_is_in_recovery()"))
    else {
        return Check::fail(what, "no state query", "report this as a bug");
    };
    let stdout = match host.output(&query).await {
        Ok((ExitOutcome::Code(0), stdout, _)) => stdout,
        Ok((outcome, _, stderr)) => {
            let mut c = command_failed(what, &job.host, "psql", outcome.clone(), &stderr);
            if !matches!(outcome, ExitOutcome::Code(126 | 127)) {
                c.detail = format!("psql could not query the server: {}", stderr.trim());
                c.fix = Some(
                    "check jobs.NAME.conninfo and database, and that the role may connect \
                     (docs/sources.md#postgres)"
                        .into(),
                );
            }
            return c;
        }
        Err(e) => return Check::fail(what, e.to_string(), "check the host"),
    };
    let fields: Vec<&str> = stdout.trim().split('|').collect();
    let in_recovery = fields.first() == Some(&"t");
    let lag: f64 = fields.get(1).and_then(|l| l.parse().ok()).unwrap_or(0.0);
    let version = fields.get(2).copied().unwrap_or("?");
    let database = job.database.as_deref().unwrap_or("?");
    if !in_recovery && !job.allow_primary {
        return Check::fail(
            what,
            format!(
                "PostgreSQL {version}, database {database}: pg_is_in_recovery() is false, \
                 this is a primary and the job would refuse it"
            ),
            "point conninfo at the hot-standby replica, or set allow_primary = true",
        );
    }
    if in_recovery && lag > job.max_replay_lag.as_secs_f64() {
        return Check::fail(
            what,
            format!(
                "PostgreSQL {version} replica: replay lag {lag:.0}s is above max_replay_lag = {}",
                humantime::format_duration(job.max_replay_lag)
            ),
            "check replication on the replica (pg_stat_wal_receiver), or raise max_replay_lag",
        );
    }
    Check::pass(
        what,
        format!(
            "PostgreSQL {version}, database {database}: {}",
            if in_recovery {
                format!("a replica (pg_is_in_recovery() = true), replay lag {lag:.0}s")
            } else {
                "a primary (allow_primary = true)".to_string()
            }
        ),
    )
}

fn restore_identity(config: &Config, job: &str, path: &Path) -> Check {
    let what = format!("restore test {job}");
    match crate::keys::identity_recipients(path) {
        Err(e) => Check::fail(
            what,
            e.to_string(),
            format!(
                "create it where restore tests run: bk keygen --output {} (docs/keys.md#the-restore-test-identity)",
                path.display()
            ),
        ),
        Ok(recipients) if recipients.is_empty() => Check::pass(
            what,
            format!("{} is readable (an SSH key: its recipient is its .pub line)", path.display()),
        ),
        Ok(recipients) => {
            let configured = &config.repository.recipients;
            match recipients.iter().find(|r| configured.iter().any(|c| c.trim() == r.as_str())) {
                Some(r) => Check::pass(
                    what,
                    format!("{} is readable; its recipient {r} is configured", path.display()),
                ),
                None => Check::fail(
                    what,
                    format!(
                        "{}: its recipient {} is not in repository.recipients, so it cannot \
                         decrypt new backups",
                        path.display(),
                        recipients[0]
                    ),
                    format!("add \"{}\" to repository.recipients", recipients[0]),
                ),
            }
        }
    }
}
