//! One pass over a parsed configuration that returns every problem, each naming the
//! key at fault, so an operator fixes a file in one go rather than one error a run.

use std::str::FromStr;

use super::{Config, JobConfig, JobKind};
use crate::repo::layout::valid_job_name;

pub(super) fn problems(config: &Config) -> Vec<String> {
    let mut out = Vec::new();
    repository(config, &mut out);
    let c = &config.compression;
    if !(1..=19).contains(&c.level) {
        out.push(format!("compression.level = {} is outside 1..=19", c.level));
    }
    if c.workers > 64 {
        out.push(format!(
            "compression.workers = {} is more than 64",
            c.workers
        ));
    }
    let job = c.job_size.bytes();
    // Each worker holds a job and its frame, and twice as many wait: memory grows with
    // workers × job_size, so a slip of the unit must not ask for gigabytes.
    if !(64 << 10..=64 << 20).contains(&job) {
        out.push(format!(
            "compression.job_size = {job} bytes is outside 64KiB..=64MiB"
        ));
    }
    for (name, host) in &config.hosts {
        if name == "local" {
            out.push("hosts.local: `local` is built in (the backup server itself) and cannot be redefined".into());
        }
        if host.address.trim().is_empty() {
            out.push(format!("hosts.{name}.address is empty"));
        }
        if host.port == 0 {
            out.push(format!("hosts.{name}.port must not be 0"));
        }
        if host.max_jobs == 0 {
            out.push(format!("hosts.{name}.max_jobs must be at least 1"));
        }
        if host.bandwidth_limit.is_some_and(|s| s.bytes() == 0) {
            out.push(format!(
                "hosts.{name}.bandwidth_limit must be more than 0 bytes per second (leave it out for no limit)"
            ));
        }
    }
    if config
        .server
        .listen
        .parse::<std::net::SocketAddr>()
        .is_err()
    {
        out.push(format!(
            "server.listen = {:?} is not an address:port such as \"127.0.0.1:9469\"",
            config.server.listen
        ));
    }
    if config.server.max_concurrent_jobs == 0 {
        out.push("server.max_concurrent_jobs must be at least 1".into());
    }
    for (key, value) in [
        ("alerts.webhook", &config.alerts.webhook),
        ("alerts.ping", &config.alerts.ping),
    ] {
        if let Some(v) = value {
            if url::Url::parse(v).is_err() {
                out.push(format!("{key} is not a URL"));
            }
        }
    }
    anomaly(&config.anomaly, "anomaly", &mut out);
    for (name, job) in &config.jobs {
        self::job(config, name, job, &mut out);
        if let Some(rules) = &job.anomaly {
            anomaly(rules, &format!("jobs.{name}.anomaly"), &mut out);
        }
    }
    out
}

fn repository(config: &Config, out: &mut Vec<String>) {
    let r = &config.repository;
    match url::Url::parse(&r.url) {
        Ok(u) if u.scheme() == "file" => {
            if !u.path().starts_with('/') {
                out.push(format!(
                    "repository.url = {:?}: a file:// URL needs an absolute path",
                    r.url
                ));
            }
        }
        Ok(u)
            if matches!(
                u.scheme(),
                "s3" | "s3a"
                    | "gs"
                    | "az"
                    | "azure"
                    | "abfs"
                    | "abfss"
                    | "http"
                    | "https"
                    | "memory"
            ) => {}
        Ok(u) => out.push(format!(
            "repository.url: unsupported scheme `{}` (use file://, s3://, gs:// or az://)",
            u.scheme()
        )),
        Err(e) => out.push(format!("repository.url is not a URL: {e}")),
    }
    if r.recipients.is_empty() {
        out.push("repository.recipients is empty: give at least one age1… or ssh-ed25519 public key (bk keygen prints one)".into());
    }
    for (i, recipient) in r.recipients.iter().enumerate() {
        if let Err(e) = crate::keys::parse_recipient(recipient) {
            out.push(format!("repository.recipients[{i}]: {e}"));
        }
    }
    if r.part_size.bytes() < 5 << 20 || r.part_size.bytes() > 5 << 30 {
        out.push(format!(
            "repository.part_size = {} is outside 5 MiB..5 GiB (the S3 limits)",
            r.part_size
        ));
    }
    if r.upload_concurrency == 0 || r.upload_concurrency > 64 {
        out.push("repository.upload_concurrency must be between 1 and 64".into());
    }
}

/// `mysql` jobs: the database name goes on the dump tool's command line, the option
/// file is read on the source host.
fn mysql(job: &JobConfig, at: &str, out: &mut Vec<String>) {
    if let Some(db) = &job.database {
        if db.is_empty() || db.len() > 64 || db.starts_with('-') {
            out.push(format!(
                "{at}.database = {db:?}: a MariaDB/MySQL database name has 1 to 64 characters \
                 and (for bk) does not start with `-`"
            ));
        }
    }
    if let Some(f) = &job.defaults_file {
        if !f.starts_with('/') {
            out.push(format!(
                "{at}.defaults_file = {f:?} must be an absolute path on the source host"
            ));
        }
    }
}

fn job(config: &Config, name: &str, job: &JobConfig, out: &mut Vec<String>) {
    let at = format!("jobs.{name}");
    if !valid_job_name(name) {
        out.push(format!(
            "{at}: a job name may hold only letters, digits, `-`, `_` and `.` (at most 64, not starting with `.`)"
        ));
    }
    if job.host != "local" && !config.hosts.contains_key(&job.host) {
        out.push(format!(
            "{at}.host = {:?}: no [hosts.{}] entry (and it is not `local`)",
            job.host, job.host
        ));
    }
    let needs = |key: &str, present: bool, out: &mut Vec<String>| {
        if !present {
            out.push(format!(
                "{at}: kind = \"{}\" needs `{key}`",
                job.kind.as_str()
            ));
        }
    };
    let unused = |key: &str, present: bool, out: &mut Vec<String>| {
        if present {
            out.push(format!(
                "{at}.{key} has no meaning for kind = \"{}\"",
                job.kind.as_str()
            ));
        }
    };
    match job.kind {
        JobKind::Directory => {
            needs("path", job.path.is_some(), out);
            if let Some(p) = &job.path {
                if !p.starts_with('/') {
                    out.push(format!("{at}.path = {p:?} must be absolute"));
                }
            }
            unused("command", job.command.is_some(), out);
            unused("database", job.database.is_some(), out);
            unused("conninfo", job.conninfo.is_some(), out);
        }
        JobKind::Command => {
            needs(
                "command",
                job.command.as_deref().is_some_and(|c| !c.trim().is_empty()),
                out,
            );
            unused("path", job.path.is_some(), out);
            unused("database", job.database.is_some(), out);
            unused("conninfo", job.conninfo.is_some(), out);
            unused("exclude", !job.exclude.is_empty(), out);
        }
        JobKind::Postgres | JobKind::Mysql => {
            needs("database", job.database.is_some(), out);
            unused("path", job.path.is_some(), out);
            unused("command", job.command.is_some(), out);
            unused("exclude", !job.exclude.is_empty(), out);
        }
    }
    if !matches!(job.kind, JobKind::Postgres | JobKind::Mysql) {
        unused("allow_primary", job.allow_primary, out);
    }
    if job.kind == JobKind::Mysql {
        unused("conninfo", job.conninfo.is_some(), out);
        mysql(job, &at, out);
    } else {
        unused("defaults_file", job.defaults_file.is_some(), out);
    }
    if job.kind != JobKind::Postgres {
        unused("pause_replay", job.pause_replay, out);
        unused("abort_replay_lag", job.abort_replay_lag.is_some(), out);
    }
    if chrono_tz::Tz::from_str(&job.timezone).is_err() {
        out.push(format!(
            "{at}.timezone = {:?} is not an IANA time zone (e.g. \"Europe/Berlin\")",
            job.timezone
        ));
    }
    if let Some(s) = &job.schedule {
        if let Err(e) = crate::schedule::parse(s) {
            out.push(format!("{at}.schedule = {s:?}: {e}"));
        }
    }
    if let Some(r) = &job.retention {
        let all = [
            r.keep_last,
            r.keep_hourly,
            r.keep_daily,
            r.keep_weekly,
            r.keep_monthly,
            r.keep_yearly,
        ];
        if let Some(s) = &r.schedule {
            if let Err(e) = crate::schedule::parse(s) {
                out.push(format!("{at}.retention.schedule = {s:?}: {e}"));
            }
        }
        if all.iter().all(|k| k.unwrap_or(0) == 0) {
            out.push(format!(
                "{at}.retention keeps nothing: set at least one keep_* above 0, or remove it"
            ));
        }
    }
    if let Some(t) = &job.restore_test {
        if let Some(s) = &t.schedule {
            if let Err(e) = crate::schedule::parse(s) {
                out.push(format!("{at}.restore_test.schedule = {s:?}: {e}"));
            }
        }
        if let Some(tz) = &t.timezone {
            if chrono_tz::Tz::from_str(tz).is_err() {
                out.push(format!(
                    "{at}.restore_test.timezone = {tz:?} is not an IANA time zone"
                ));
            }
        }
        restore_test_target(job.kind, t, &at, out);
        if t.timeout.is_some_and(|d| d.is_zero()) {
            out.push(format!("{at}.restore_test.timeout must be longer than 0s"));
        }
    }
    if job.timeout.is_some_and(|t| t.is_zero()) {
        out.push(format!("{at}.timeout must be longer than 0s"));
    }
    if job.bandwidth_limit.is_some_and(|s| s.bytes() == 0) {
        out.push(format!(
            "{at}.bandwidth_limit must be more than 0 bytes per second (leave it out for no limit)"
        ));
    }
    if job.max_size.is_some_and(|s| s.bytes() == 0) {
        out.push(format!("{at}.max_size must be more than 0 bytes"));
    }
    if job.expect_within.is_some_and(|t| t.is_zero()) {
        out.push(format!("{at}.expect_within must be longer than 0s"));
    }
    if let Some(alerts) = &job.alerts {
        for (key, value) in [("webhook", &alerts.webhook), ("ping", &alerts.ping)] {
            if value
                .as_deref()
                .is_some_and(|v| url::Url::parse(v).is_err())
            {
                out.push(format!("{at}.alerts.{key} is not a URL"));
            }
        }
    }
}

/// Anomaly thresholds: fractions in (0, 1], a history at least `min_history` long.
fn anomaly(rules: &crate::config::AnomalyConfig, at: &str, out: &mut Vec<String>) {
    for (key, value) in [
        ("size_drop", rules.size_drop),
        ("files_drop", rules.files_drop),
        ("compression_drop", rules.compression_drop),
    ] {
        if !(value > 0.0 && value <= 1.0) {
            out.push(format!(
                "{at}.{key} = {value} must be a fraction above 0 and at most 1"
            ));
        }
    }
    if rules.min_history == 0 || rules.history < rules.min_history {
        out.push(format!(
            "{at}.history ({}) must be at least min_history ({}), and min_history at least 1",
            rules.history, rules.min_history
        ));
    }
    if rules.min_compression.is_nan() || rules.min_compression < 1.0 {
        out.push(format!(
            "{at}.min_compression = {} must be at least 1 (a ratio)",
            rules.min_compression
        ));
    }
}

/// The restore-test target must fit the job's kind.
fn restore_test_target(
    kind: JobKind,
    t: &crate::config::RestoreTestConfig,
    at: &str,
    out: &mut Vec<String>,
) {
    let key = format!("{at}.restore_test.target");
    match (kind, t.target.as_deref()) {
        (JobKind::Postgres, None) => out.push(format!(
            "{key} is missing: a PostgreSQL server URL where scratch databases may be created \
             (e.g. \"postgresql://bk@127.0.0.1/postgres\")"
        )),
        (JobKind::Postgres, Some(url))
            if !url.starts_with("postgresql://") && !url.starts_with("postgres://") =>
        {
            out.push(format!(
                "{key} must be a postgresql:// URL (e.g. \"postgresql://bk@127.0.0.1/postgres\")"
            ))
        }
        (JobKind::Mysql, None) => out.push(format!(
            "{key} is missing: a MariaDB/MySQL server URL where scratch databases may be created \
             (e.g. \"mysql://bk_restore@127.0.0.1:3306/\")"
        )),
        (JobKind::Mysql, Some(url))
            if !url.starts_with("mysql://") && !url.starts_with("mariadb://") =>
        {
            out.push(format!(
                "{key} must be a mysql:// URL (e.g. \"mysql://bk_restore@127.0.0.1:3306/\")"
            ))
        }
        (JobKind::Directory, Some(dir)) if !dir.starts_with('/') => {
            out.push(format!("{key} must be an absolute directory path"))
        }
        (JobKind::Command, Some(_)) => out.push(format!(
            "{key}: a `command` job's restore test has no target (it checks every hash); remove it"
        )),
        _ => {}
    }
    if !t.checks.is_empty() && !matches!(kind, JobKind::Postgres | JobKind::Mysql) {
        out.push(format!(
            "{at}.restore_test.checks are SQL queries: only database jobs can run them"
        ));
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::{Config, ConfigError};

    const RECIPIENT: &str = "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p";

    fn problems(text: &str) -> Vec<String> {
        match Config::parse(Path::new("/etc/bk/bk.toml"), text) {
            Err(ConfigError::Invalid { problems, .. }) => problems,
            Err(other) => vec![other.to_string()],
            Ok(_) => vec![],
        }
    }

    #[test]
    fn the_spec_example_loads() {
        let text = format!(
            r#"
[repository]
url = "file:///var/lib/bk/repo"
recipients = ["{RECIPIENT}"]
[catalog]
path = "/var/lib/bk/catalog.db"
[hosts.db1]
address = "10.0.0.5"
port = 22
user = "bk"
key = "/etc/bk/id_ed25519"
known_hosts = "/etc/bk/known_hosts"
[server]
listen = "127.0.0.1:9469"
[alerts]
webhook = "https://hooks.example/bk"
[jobs.app-db]
host = "db1"
kind = "postgres"
database = "app"
conninfo = "host=/var/run/postgresql port=5432 user=backup"
schedule = "0 2 * * *"
timezone = "Europe/Berlin"
[jobs.app-db.restore_test]
schedule = "0 6 * * 0"
identity = "/etc/bk/restore-test.key"
target = "postgresql://bk@127.0.0.1/postgres"
checks = ["SELECT count(*) > 0 FROM auth_user"]
[jobs.media]
host = "local"
kind = "directory"
path = "/srv/media"
schedule = "30 2 * * *"
retention = {{ keep_last = 3, keep_daily = 7, keep_weekly = 4, keep_monthly = 12 }}
[jobs.sessions]
host = "local"
kind = "command"
command = "redis-cli --rdb -"
schedule = "0 3 * * *"
"#
        );
        assert_eq!(problems(&text), Vec::<String>::new());
    }

    #[test]
    fn every_problem_is_reported_with_its_key() {
        let text = r#"
[repository]
url = "file://repo"
recipients = ["age1nope"]
[jobs.media]
kind = "directory"
host = "nas"
schedule = "61 * * * *"
timezone = "Mars/Olympus"
[jobs."bad name"]
kind = "command"
"#;
        let p = problems(text).join("\n");
        for needle in [
            "repository.recipients[0]",
            "jobs.media: kind = \"directory\" needs `path`",
            "jobs.media.host = \"nas\"",
            "jobs.media.schedule",
            "jobs.media.timezone",
            "jobs.bad name: a job name",
            "needs `command`",
        ] {
            assert!(p.contains(needle), "missing {needle:?} in:\n{p}");
        }
    }

    #[test]
    fn compression_job_size_is_bounded() {
        let with = |size: &str| {
            problems(&format!(
                "[repository]\nurl = \"file:///r\"\nrecipients = [\"{RECIPIENT}\"]\n\
                 [compression]\njob_size = \"{size}\"\n"
            ))
        };
        assert_eq!(with("64KiB"), Vec::<String>::new());
        assert_eq!(with("64MiB"), Vec::<String>::new());
        for bad in ["0", "1000", "65MiB", "1GiB"] {
            let p = with(bad).join("\n");
            assert!(p.contains("compression.job_size"), "{bad}: {p}");
        }
    }

    #[test]
    fn daemon_keys_are_checked() {
        let text = format!(
            "[repository]\nurl = \"file:///r\"\nrecipients = [\"{RECIPIENT}\"]\n\
             [jobs.m]\nkind = \"command\"\ncommand = \"true\"\nexpect_within = \"0s\"\n\
             retention = {{ keep_last = 1, schedule = \"0 25 * * *\" }}\nalerts = {{ webhook = \"not a url\" }}\n"
        );
        let p = problems(&text).join("\n");
        for needle in [
            "jobs.m.retention.schedule",
            "jobs.m.expect_within",
            "jobs.m.alerts.webhook",
        ] {
            assert!(p.contains(needle), "missing {needle:?} in:\n{p}");
        }
    }

    #[test]
    fn mysql_keys_are_checked() {
        let head = format!("[repository]\nurl = \"file:///r\"\nrecipients = [\"{RECIPIENT}\"]\n");
        let good = format!(
            "{head}[jobs.m]\nkind = \"mysql\"\ndatabase = \"app\"\n\
             defaults_file = \"/etc/bk/my.cnf\"\nallow_primary = true\nmax_replay_lag = \"1m\"\n"
        );
        assert_eq!(problems(&good), Vec::<String>::new());
        let bad = format!(
            "{head}[jobs.m]\nkind = \"mysql\"\ndatabase = \"--all-databases\"\n\
             defaults_file = \"my.cnf\"\nconninfo = \"host=x\"\npause_replay = true\n\
             [jobs.d]\nkind = \"directory\"\npath = \"/srv\"\ndefaults_file = \"/etc/my.cnf\"\n"
        );
        let p = problems(&bad).join("\n");
        for needle in [
            "jobs.m.database = \"--all-databases\"",
            "jobs.m.defaults_file = \"my.cnf\" must be an absolute path",
            "jobs.m.conninfo has no meaning",
            "jobs.m.pause_replay has no meaning",
            "jobs.d.defaults_file has no meaning",
        ] {
            assert!(p.contains(needle), "missing {needle:?} in:\n{p}");
        }
    }

    #[test]
    fn syntax_errors_name_file_line_and_key() {
        let text = format!("[repository]\nurl = \"file:///r\"\nrecipients = [\"{RECIPIENT}\"]\n[jobs.x]\nkind = \"directory\"\nschedul = \"0 2 * * *\"\n");
        let p = problems(&text).join("\n");
        assert!(p.contains("/etc/bk/bk.toml"), "{p}");
        assert!(p.contains("line 6"), "{p}");
        assert!(p.contains("unknown field `schedul`"), "{p}");
    }
}
