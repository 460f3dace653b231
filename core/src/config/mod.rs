//! The configuration file, typed once. These structs are the reference for every key
//! (docs/configuration.md is checked against them); defaults live in the `default_*`
//! functions below and nowhere else. Loading parses with toml (line and column in
//! every syntax or type error), then `validate` reports every problem at once, each
//! naming the key at fault, before anything runs.

#[cfg(test)]
mod reference;
mod size;
mod validate;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use size::ByteSize;

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where backups are stored and who can read them.
    pub repository: RepositoryConfig,
    /// The run history and backup cache on the backup server.
    #[serde(default)]
    pub catalog: CatalogConfig,
    /// How dumps are compressed.
    #[serde(default)]
    pub compression: CompressionConfig,
    /// Source hosts reached over SSH. `local` is built in and needs no entry.
    #[serde(default)]
    pub hosts: BTreeMap<String, HostConfig>,
    /// The daemon's HTTP listener and limits.
    #[serde(default)]
    pub server: ServerConfig,
    /// Where failures and overdue jobs are reported.
    #[serde(default)]
    pub alerts: AlertsConfig,
    /// How each new backup is compared with its job's recent history.
    #[serde(default)]
    pub anomaly: AnomalyConfig,
    /// Backup jobs, by name (the name becomes part of every object key).
    #[serde(default)]
    pub jobs: BTreeMap<String, JobConfig>,
    /// The file this configuration was read from (not a key).
    #[serde(skip)]
    pub source_file: PathBuf,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RepositoryConfig {
    /// `file:///var/lib/bk/repo`, `s3://bucket/prefix`, `gs://bucket/prefix`, `az://container/prefix`.
    pub url: String,
    /// age recipients every backup is encrypted to: `age1…` keys or `ssh-ed25519`/`ssh-rsa` public keys.
    pub recipients: Vec<String>,
    /// Backend options passed to object_store (endpoint, region, allow_http, timeout, …).
    /// Put secrets in `credentials_file` or the environment (AWS_*, GOOGLE_*, AZURE_*), not here.
    #[serde(default)]
    pub options: BTreeMap<String, String>,
    /// A file of `key = value` lines (same keys as `options`) holding storage credentials;
    /// keep it mode 0600. Read at start; its values never appear in logs or errors.
    #[serde(default)]
    pub credentials_file: Option<PathBuf>,
    /// Retries of a failed storage request (object_store's backoff: 100 ms doubling to 15 s).
    #[serde(default = "default_max_retries")]
    pub max_retries: usize,
    /// Give up retrying a request after this long.
    #[serde(default = "default_retry_timeout", with = "humantime_serde")]
    pub retry_timeout: Duration,
    /// Uncommitted objects and unfinished S3 multipart uploads younger than this are
    /// left alone by `bk gc` (they may be a backup still running on another server):
    /// keep it longer than the longest backup.
    #[serde(default = "default_gc_grace", with = "humantime_serde")]
    pub gc_grace: Duration,
    /// Multipart upload part size of an object's first 5,000 parts; later parts grow
    /// (S3 caps uploads at 10,000 parts; see pipeline::upload). Cloud stores only: a
    /// `file://` repository writes each 1 MiB chunk as it comes.
    #[serde(default = "default_part_size")]
    pub part_size: ByteSize,
    /// Parts uploaded concurrently per backup. Memory per upload to a cloud store ≈
    /// part_size × (concurrency + 1).
    #[serde(default = "default_upload_concurrency")]
    pub upload_concurrency: usize,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogConfig {
    /// SQLite catalog file. Default: `catalog.db` next to the configuration file.
    #[serde(default)]
    pub path: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CompressionConfig {
    /// zstd level, 1 (fastest) to 19 (smallest). 3 is zstd's own default.
    #[serde(default = "default_zstd_level")]
    pub level: i32,
    /// zstd worker threads; 0 compresses on the pipeline thread itself.
    #[serde(default = "default_zstd_workers")]
    pub workers: u32,
    /// Long-distance matching (window 128 MiB): about 15% smaller, slower, ~150 MiB more memory.
    #[serde(default)]
    pub long: bool,
    /// Input each zstd worker compresses at a time. zstd's own default (8 MiB at level 3)
    /// costs ~60 MiB per worker on incompressible data; smaller jobs bound memory.
    #[serde(default = "default_zstd_job_size")]
    pub job_size: ByteSize,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HostConfig {
    /// Address or DNS name of the source host.
    pub address: String,
    /// SSH port.
    #[serde(default = "default_ssh_port")]
    pub port: u16,
    /// Remote user the backup server logs in as.
    pub user: String,
    /// Private key file used to log in.
    pub key: PathBuf,
    /// known_hosts file holding this host's key; checked strictly.
    pub known_hosts: PathBuf,
    /// Accept and record an unknown host key on first contact (trust on first use).
    #[serde(default)]
    pub accept_new_host_key: bool,
    /// Jobs that may run on this host at the same time.
    #[serde(default = "default_host_jobs")]
    pub max_jobs: usize,
    /// How long to wait for the SSH connection and login (ssh's ConnectTimeout).
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Keepalive probe interval (ssh's ServerAliveInterval); three missed probes drop the connection.
    #[serde(default = "default_keepalive", with = "humantime_serde")]
    pub keepalive: Duration,
    /// Bytes per second one run may pull from this host (so a dump does not saturate
    /// the replica's link or disks). Unset: as fast as the pipeline goes.
    #[serde(default)]
    pub bandwidth_limit: Option<ByteSize>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// HTTP listener for /healthz, /metrics, /api/status and the status page.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Jobs that may run at the same time, across all hosts.
    #[serde(default = "default_max_jobs")]
    pub max_concurrent_jobs: usize,
    /// Log line format on stderr: `text` (default) or `json`. `bk-server --log-json` overrides it.
    #[serde(default)]
    pub log_format: LogFormat,
    /// On SIGTERM, how long running jobs may go on before they are stopped and recorded as interrupted.
    #[serde(default = "default_shutdown_grace", with = "humantime_serde")]
    pub shutdown_grace: Duration,
}

/// How the daemon writes its log lines.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AlertsConfig {
    /// URL that receives a JSON POST on a failure, an overdue job or an anomaly.
    #[serde(default)]
    pub webhook: Option<String>,
    /// healthchecks-style ping URL: `/start`, success, `/fail` are appended.
    #[serde(default)]
    pub ping: Option<String>,
}

/// What a job pulls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum JobKind {
    Postgres,
    Mysql,
    Directory,
    Command,
}

impl JobKind {
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Postgres => "postgres",
            JobKind::Mysql => "mysql",
            JobKind::Directory => "directory",
            JobKind::Command => "command",
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct JobConfig {
    /// The host to pull from: a `[hosts.NAME]` entry, or `local` for the backup server itself.
    #[serde(default = "default_host")]
    pub host: String,
    pub kind: JobKind,
    /// `postgres`/`mysql`: the database to dump.
    #[serde(default)]
    pub database: Option<String>,
    /// `postgres`: libpq connection keywords on the source host.
    #[serde(default)]
    pub conninfo: Option<String>,
    /// `mysql`: an option file *on the source host* holding the connection settings
    /// (`[client]` user, password, host/port or socket), passed to the client and the
    /// dump tool as `--defaults-extra-file`, so that no password is ever on a command
    /// line. Keep it mode 0600, owned by the source user. Unset: the tools read the
    /// source user's own option files (`~/.my.cnf`).
    #[serde(default)]
    pub defaults_file: Option<String>,
    /// `postgres`/`mysql`: dump a primary too (by default only a replica is dumped).
    #[serde(default)]
    pub allow_primary: bool,
    /// `postgres`/`mysql`: refuse to dump a replica whose replay lag (for `mysql`,
    /// `Seconds_Behind_Master`) is above this.
    #[serde(default = "default_max_replay_lag", with = "humantime_serde")]
    pub max_replay_lag: Duration,
    /// `postgres`: stop the dump (a failed run) when the replica's replay lag passes
    /// this while it runs; `max_replay_lag` only warns then. Unset: never stopped.
    #[serde(default, with = "humantime_serde")]
    pub abort_replay_lag: Option<Duration>,
    /// `postgres`: pause WAL replay on the replica for the dump (no recovery conflicts
    /// with long dumps); replay is always resumed, also when the run fails or bk dies.
    #[serde(default)]
    pub pause_replay: bool,
    /// `postgres`: retries after "canceling statement due to conflict with recovery"
    /// (waiting 5 s, 10 s, 20 s… between them).
    #[serde(default = "default_conflict_retries")]
    pub conflict_retries: u32,
    /// `directory`: the directory to archive.
    #[serde(default)]
    pub path: Option<String>,
    /// `directory`: patterns passed to tar's `--exclude`.
    #[serde(default)]
    pub exclude: Vec<String>,
    /// `command`: run by the host's shell; its stdout is the dump.
    #[serde(default)]
    pub command: Option<String>,
    /// Standard 5-field crontab expression. Without it the job runs only on `bk run`.
    #[serde(default)]
    pub schedule: Option<String>,
    /// IANA time zone the schedule is read in.
    #[serde(default = "default_timezone")]
    pub timezone: String,
    /// A run that was due while the daemon was down runs once at start-up.
    #[serde(default = "default_true")]
    pub catch_up: bool,
    /// A run that takes longer is stopped and recorded as failed.
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
    /// A source that sends no byte for this long fails the run ("0s" disables the check).
    #[serde(default = "default_stall_timeout", with = "humantime_serde")]
    pub stall_timeout: Duration,
    /// Stop the source and fail the run once it has sent more than this (the dump's
    /// plaintext, before compression); nothing is committed. A source that streams for
    /// ever, whether broken or compromised, cannot fill the storage. Unset: no limit.
    #[serde(default)]
    pub max_size: Option<ByteSize>,
    /// Bytes per second this job's runs may pull from their source; overrides the
    /// host's `bandwidth_limit`. Unset: the host's, or no limit.
    #[serde(default)]
    pub bandwidth_limit: Option<ByteSize>,
    /// Which backups to keep when pruning.
    #[serde(default)]
    pub retention: Option<Retention>,
    /// A scheduled restore test of this job's backups.
    #[serde(default)]
    pub restore_test: Option<RestoreTestConfig>,
    /// Raise an overdue alert when the job has no good backup this recent. Default for a
    /// scheduled job: its longest gap between two runs plus 2h (26h for a nightly job);
    /// a job without a schedule is never overdue unless this is set.
    #[serde(default, with = "humantime_serde")]
    pub expect_within: Option<Duration>,
    /// Alert destinations for this job, replacing the global `[alerts]` keys it sets.
    #[serde(default)]
    pub alerts: Option<AlertsConfig>,
    /// Anomaly thresholds for this job, replacing the global `[anomaly]` table.
    #[serde(default)]
    pub anomaly: Option<AnomalyConfig>,
}

/// When a committed backup is flagged as an anomaly: compared with the median of the
/// job's recent good backups, it is much smaller, has far fewer files, or compresses
/// far worse (content that turned random: ransomware?). Flagged backups stay committed.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AnomalyConfig {
    /// Compare each new backup with the job's history at all.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// How many recent good backups the median is taken over.
    #[serde(default = "default_anomaly_history")]
    pub history: usize,
    /// Below this many earlier good backups nothing is compared yet.
    #[serde(default = "default_anomaly_min_history")]
    pub min_history: usize,
    /// Flag a dump smaller than this fraction of the median size.
    #[serde(default = "default_size_drop")]
    pub size_drop: f64,
    /// Flag a directory backup with fewer entries than this fraction of the median.
    #[serde(default = "default_files_drop")]
    pub files_drop: f64,
    /// Flag a compression ratio below this fraction of the median ratio…
    #[serde(default = "default_compression_drop")]
    pub compression_drop: f64,
    /// …when the median ratio is at least this (content that never compressed, like
    /// photos, is not watched for it).
    #[serde(default = "default_min_compression")]
    pub min_compression: f64,
}

impl Default for AnomalyConfig {
    fn default() -> Self {
        AnomalyConfig {
            enabled: true,
            history: default_anomaly_history(),
            min_history: default_anomaly_min_history(),
            size_drop: default_size_drop(),
            files_drop: default_files_drop(),
            compression_drop: default_compression_drop(),
            min_compression: default_min_compression(),
        }
    }
}

fn default_anomaly_history() -> usize {
    10
}
fn default_anomaly_min_history() -> usize {
    3
}
fn default_size_drop() -> f64 {
    0.5
}
fn default_files_drop() -> f64 {
    0.5
}
fn default_compression_drop() -> f64 {
    0.6
}
fn default_min_compression() -> f64 {
    1.3
}

/// Keep-last plus calendar buckets, as restic `forget` and Borg `prune`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Retention {
    #[serde(default)]
    pub keep_last: Option<u32>,
    #[serde(default)]
    pub keep_hourly: Option<u32>,
    #[serde(default)]
    pub keep_daily: Option<u32>,
    #[serde(default)]
    pub keep_weekly: Option<u32>,
    #[serde(default)]
    pub keep_monthly: Option<u32>,
    #[serde(default)]
    pub keep_yearly: Option<u32>,
    /// Also prune on this 5-field crontab schedule (in the job's time zone); the daemon
    /// always prunes after each good backup of the job.
    #[serde(default)]
    pub schedule: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RestoreTestConfig {
    /// When to run the test (5-field crontab).
    #[serde(default)]
    pub schedule: Option<String>,
    /// IANA time zone of the schedule; the job's by default.
    #[serde(default)]
    pub timezone: Option<String>,
    /// The restore-test identity file (its recipient must be among the repository's recipients).
    pub identity: PathBuf,
    /// Where the backup is restored for real. `postgres` jobs: a PostgreSQL server URL
    /// (`postgresql://user@host:port/postgres`) on which scratch databases may be
    /// created and dropped. `directory` jobs: the directory under which a scratch
    /// directory is made (default: `restore-tests` next to the catalog). `command` jobs
    /// have no target: their test downloads, decrypts and checks every hash.
    #[serde(default)]
    pub target: Option<String>,
    /// SQL queries that must each return true on the restored database.
    #[serde(default)]
    pub checks: Vec<String>,
    /// Which backup to test: `latest` (the newest) or `random` (any retained one).
    #[serde(default)]
    pub pick: PickBackup,
    /// Refuse to restore a backup whose dump is larger than this (scratch space).
    #[serde(default)]
    pub max_size: Option<ByteSize>,
    /// `postgres`: fail when a role of the dump's globals does not exist on the target.
    /// By default such a dump is restored without owners and privileges, and the
    /// missing roles are named in the test's notes.
    #[serde(default)]
    pub require_roles: bool,
    /// Stop a restore test that takes longer (it then fails; its scratch is removed).
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
}

/// Which backup a restore test restores.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PickBackup {
    /// The newest committed backup.
    #[default]
    Latest,
    /// A random one among those retention keeps (all of them without `retention`).
    Random,
}

fn default_part_size() -> ByteSize {
    ByteSize::mib(16)
}
fn default_upload_concurrency() -> usize {
    2
}
fn default_zstd_level() -> i32 {
    3
}
fn default_zstd_workers() -> u32 {
    2
}
fn default_max_retries() -> usize {
    10
}
fn default_retry_timeout() -> Duration {
    Duration::from_secs(180)
}
fn default_gc_grace() -> Duration {
    Duration::from_secs(24 * 3600)
}
fn default_zstd_job_size() -> ByteSize {
    ByteSize::mib(1)
}
fn default_ssh_port() -> u16 {
    22
}
fn default_host_jobs() -> usize {
    2
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(15)
}
fn default_keepalive() -> Duration {
    Duration::from_secs(15)
}
fn default_max_replay_lag() -> Duration {
    Duration::from_secs(300)
}
fn default_conflict_retries() -> u32 {
    3
}
fn default_stall_timeout() -> Duration {
    Duration::from_secs(600)
}
fn default_listen() -> String {
    "127.0.0.1:9469".into()
}
fn default_max_jobs() -> usize {
    4
}
fn default_shutdown_grace() -> Duration {
    Duration::from_secs(30)
}
fn default_host() -> String {
    "local".into()
}
fn default_timezone() -> String {
    "UTC".into()
}
fn default_true() -> bool {
    true
}

impl Default for CompressionConfig {
    fn default() -> Self {
        CompressionConfig {
            level: default_zstd_level(),
            workers: default_zstd_workers(),
            long: false,
            job_size: default_zstd_job_size(),
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: default_listen(),
            max_concurrent_jobs: default_max_jobs(),
            log_format: LogFormat::default(),
            shutdown_grace: default_shutdown_grace(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the configuration file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path} has {} problem(s):\n{}", problems.len(), problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid {
        path: PathBuf,
        problems: Vec<String>,
    },
    #[error("no configuration file: {tried} (pass --config FILE or set BK_CONFIG)")]
    NotFound { tried: String },
}

impl Config {
    /// Reads, parses and validates a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// Parses and validates configuration text as if read from `path`.
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        })?;
        config.source_file = path.to_path_buf();
        config.resolve_relative_paths();
        let problems = validate::problems(&config);
        if !problems.is_empty() {
            return Err(ConfigError::Invalid {
                path: path.to_path_buf(),
                problems,
            });
        }
        Ok(config)
    }

    /// Finds the configuration: the explicit path, else `$BK_CONFIG`, else ./bk.toml, else /etc/bk/bk.toml.
    pub fn locate(explicit: Option<&Path>) -> Result<PathBuf, ConfigError> {
        if let Some(p) = explicit {
            return Ok(p.to_path_buf());
        }
        if let Some(p) = std::env::var_os("BK_CONFIG").filter(|p| !p.is_empty()) {
            return Ok(PathBuf::from(p));
        }
        for candidate in ["bk.toml", "/etc/bk/bk.toml"] {
            if Path::new(candidate).exists() {
                return Ok(PathBuf::from(candidate));
            }
        }
        Err(ConfigError::NotFound {
            tried: "$BK_CONFIG, ./bk.toml, /etc/bk/bk.toml".into(),
        })
    }

    /// The directory relative paths in the file are read from.
    pub fn base_dir(&self) -> PathBuf {
        self.source_file
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default()
    }

    pub fn catalog_path(&self) -> PathBuf {
        self.catalog
            .path
            .clone()
            .unwrap_or_else(|| self.base_dir().join("catalog.db"))
    }

    pub fn job(&self, name: &str) -> Option<&JobConfig> {
        self.jobs.get(name)
    }

    /// The anomaly thresholds in force for `job` (its own table, else `[anomaly]`).
    pub fn anomaly_rules(&self, job: &str) -> &AnomalyConfig {
        self.job(job)
            .and_then(|j| j.anomaly.as_ref())
            .unwrap_or(&self.anomaly)
    }

    fn resolve_relative_paths(&mut self) {
        let base = self.base_dir();
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        if let Some(p) = self.catalog.path.as_mut() {
            fix(p);
        }
        if let Some(p) = self.repository.credentials_file.as_mut() {
            fix(p);
        }
        for host in self.hosts.values_mut() {
            fix(&mut host.key);
            fix(&mut host.known_hosts);
        }
        for job in self.jobs.values_mut() {
            if let Some(t) = job.restore_test.as_mut() {
                fix(&mut t.identity);
            }
        }
        if let Some(rest) = self.repository.url.strip_prefix("file://") {
            if !rest.starts_with('/') {
                self.repository.url = format!("file://{}", base.join(rest).display());
            }
        }
    }
}
