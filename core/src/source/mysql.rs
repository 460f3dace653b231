//! `mysql` jobs (MariaDB and MySQL): `mariadb-dump --single-transaction` of one
//! database (or `mysqldump` where `mariadb-dump` is not installed), run on the source
//! host, normally against a replica.
//!
//! Before the dump, the client checks the server: one that is not a replica (`SHOW
//! REPLICA STATUS`, or `SHOW SLAVE STATUS` on older servers, returns nothing) is
//! refused unless the job sets `allow_primary`; a replica whose replication is not
//! running, or that is more than `max_replay_lag` behind, is refused. The manifest
//! records that state and per-table row counts.
//!
//! Connection settings (user, password, host or socket) come from an option file on
//! the source host (`defaults_file`, passed as `--defaults-extra-file`): a password
//! never appears on a command line, in the manifest or in an error.

use std::collections::BTreeMap;

use serde_json::json;

use super::shell::quote;
use super::{DumpPlan, ExitOutcome, SourceError, SourceHost};
use crate::config::{JobConfig, JobKind};

/// SQL that prints `db.table<TAB>rows` for every base table of the current database,
/// all counted (`COUNT(*)`, exact) in one consistent snapshot. Restore tests count a
/// restored database with the same text (the `db.` prefix is then the restored name).
pub const COUNT_ROWS_SQL: &str = "SET SESSION group_concat_max_len = 4294967295; \
     SELECT IFNULL(GROUP_CONCAT(CONCAT('SELECT ', QUOTE(CONCAT(TABLE_SCHEMA, '.', TABLE_NAME)), \
     ', COUNT(*) FROM `', REPLACE(TABLE_SCHEMA, '`', '``'), '`.`', REPLACE(TABLE_NAME, '`', '``'), '`') \
     ORDER BY TABLE_NAME SEPARATOR ' UNION ALL '), 'SELECT 1, 1 FROM DUAL WHERE FALSE') INTO @bk_counts \
     FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() \
     AND TABLE_TYPE IN ('BASE TABLE', 'SYSTEM VERSIONED'); \
     START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY; \
     PREPARE bk_counts FROM @bk_counts; EXECUTE bk_counts; COMMIT";

/// The server's version, then its replica status with column names (nothing on a
/// server that is not a replica). `SHOW REPLICA STATUS` exists since MariaDB 10.5 and
/// MySQL 8.0.22; `SHOW SLAVE STATUS` is the older spelling (gone in MySQL 8.4).
fn state_command(job: &JobConfig) -> String {
    format!(
        "{pick} \"$m\" {opts} --skip-column-names -e 'SELECT VERSION()' && \
         {{ \"$m\" {opts} -e 'SHOW REPLICA STATUS' 2>/dev/null || \"$m\" {opts} -e 'SHOW SLAVE STATUS'; }}",
        pick = PICK_CLIENT,
        opts = client_options(job),
    )
}

/// Chooses the command-line client on the source host.
const PICK_CLIENT: &str = "m=$(command -v mariadb || command -v mysql) || \
     { echo 'bk: neither the mariadb nor the mysql client is installed' >&2; exit 127; };";

/// Chooses the dump tool on the source host: `mariadb-dump`, else `mysqldump`; MySQL's
/// own mysqldump also gets `--set-gtid-purged=OFF` (a dump restored into another
/// server must not rewrite that server's GTID history).
const PICK_DUMP: &str = "if command -v mariadb-dump >/dev/null 2>&1; then d=mariadb-dump; \
     else d=mysqldump; fi; case $(\"$d\" --version 2>/dev/null) in *MariaDB*) g=;; \
     *) g=--set-gtid-purged=OFF;; esac;";

/// Options every client run starts with; `--defaults-extra-file` must come first.
fn client_options(job: &JobConfig) -> String {
    let mut opts = String::new();
    if let Some(f) = &job.defaults_file {
        opts.push_str(&quote(&format!("--defaults-extra-file={f}")));
        opts.push(' ');
    }
    opts.push_str("--batch --default-character-set=utf8mb4");
    opts
}

fn database(job: &JobConfig) -> String {
    quote(job.database.as_deref().unwrap_or_default())
}

pub fn plan(job: &JobConfig) -> DumpPlan {
    let mut describe = BTreeMap::from([(
        "database".to_string(),
        job.database.clone().unwrap_or_default(),
    )]);
    if let Some(f) = &job.defaults_file {
        describe.insert("defaults_file".into(), f.clone());
    }
    let defaults = job
        .defaults_file
        .as_ref()
        .map(|f| format!("{} ", quote(&format!("--defaults-extra-file={f}"))))
        .unwrap_or_default();
    DumpPlan {
        kind: JobKind::Mysql,
        command: format!(
            "{PICK_DUMP} exec \"$d\" {defaults}--single-transaction --routines --triggers --events \
             --hex-blob --default-character-set=utf8mb4 --no-tablespaces $g -- {}",
            database(job)
        ),
        describe,
        version_command: Some(
            "if command -v mariadb-dump >/dev/null 2>&1; then mariadb-dump --version; \
             else mysqldump --version; fi"
                .into(),
        ),
    }
}

fn count_rows_command(job: &JobConfig) -> String {
    format!(
        "{PICK_CLIENT} \"$m\" {} --skip-column-names -e {} -- {}",
        client_options(job),
        quote(COUNT_ROWS_SQL),
        database(job)
    )
}

/// Every command a mysql job sends to its host besides the dump and its version (for
/// the `authorized_keys` forced command, which allows exactly these).
pub fn commands(job: &JobConfig) -> Vec<String> {
    vec![state_command(job), count_rows_command(job)]
}

/// Parses the `db.table<TAB>rows` lines printed for `COUNT_ROWS_SQL`.
pub fn parse_row_counts(out: &str) -> BTreeMap<String, u64> {
    out.lines()
        .filter_map(|l| {
            let (table, n) = l.rsplit_once('\t')?;
            Some((unescape(table), n.trim().parse().ok()?))
        })
        .collect()
}

/// Undoes the client's `--batch` escaping of a value.
fn unescape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    let mut chars = v.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('t') => out.push('\t'),
            Some('n') => out.push('\n'),
            Some('0') => out.push('\0'),
            Some(other) => out.push(other),
            None => out.push('\\'),
        }
    }
    out
}

/// What `state_command` printed.
#[derive(Debug, Clone, PartialEq)]
struct ServerState {
    version: String,
    /// One map per replication channel (column → value); empty on a primary.
    channels: Vec<BTreeMap<String, String>>,
}

impl ServerState {
    fn parse(out: &str) -> Option<ServerState> {
        let mut lines = out.lines();
        let version = lines.next()?.trim().to_string();
        let mut channels = Vec::new();
        if let Some(header) = lines.next() {
            let names: Vec<&str> = header.split('\t').collect();
            for row in lines.filter(|l| !l.is_empty()) {
                channels.push(
                    names
                        .iter()
                        .zip(row.split('\t'))
                        .map(|(k, v)| (k.to_string(), unescape(v)))
                        .collect(),
                );
            }
        }
        Some(ServerState { version, channels })
    }

    fn is_replica(&self) -> bool {
        !self.channels.is_empty()
    }

    /// The largest `Seconds_Behind_Master` of the running channels (0 on a primary).
    fn seconds_behind(&self) -> Option<u64> {
        self.channels
            .iter()
            .map(|c| field(c, &["Seconds_Behind_Master", "Seconds_Behind_Source"]))
            .map(|v| v.and_then(|v| v.parse::<u64>().ok()))
            .try_fold(0, |max, s| s.map(|s| max.max(s)))
    }

    /// Why replication is not running, if it is not (per channel).
    fn not_running(&self) -> Option<String> {
        let stopped: Vec<String> = self
            .channels
            .iter()
            .filter(|c| !running(c))
            .map(|c| {
                let mut why = [
                    ["Slave_IO_Running", "Replica_IO_Running"],
                    ["Slave_SQL_Running", "Replica_SQL_Running"],
                ]
                .iter()
                .map(|names| {
                    let name = names
                        .iter()
                        .find(|n| c.contains_key(**n))
                        .unwrap_or(&names[0]);
                    format!("{name}: {}", field(c, names).unwrap_or("?"))
                })
                .collect::<Vec<_>>()
                .join(", ");
                for key in ["Last_IO_Error", "Last_SQL_Error"] {
                    if let Some(e) = field(c, &[key]).filter(|e| !e.is_empty()) {
                        why.push_str(&format!("; {key}: {e}"));
                    }
                }
                match field(c, &["Connection_name", "Channel_Name"]).filter(|n| !n.is_empty()) {
                    Some(name) => format!("channel `{name}`: {why}"),
                    None => why,
                }
            })
            .collect();
        (!stopped.is_empty()).then(|| stopped.join(" / "))
    }

    /// Where replication has got to, to tell whether anything was applied in between.
    fn position(&self) -> Vec<String> {
        self.channels
            .iter()
            .map(|c| {
                format!(
                    "{}:{}",
                    field(c, &["Relay_Master_Log_File", "Relay_Source_Log_File"]).unwrap_or(""),
                    field(c, &["Exec_Master_Log_Pos", "Exec_Source_Log_Pos"]).unwrap_or("")
                )
            })
            .collect()
    }

    fn to_json(&self) -> serde_json::Value {
        let channels: Vec<serde_json::Value> = self
            .channels
            .iter()
            .map(|c| {
                let get = |names: &[&str]| field(c, names).unwrap_or("").to_string();
                json!({
                    "source": format!("{}:{}", get(&["Master_Host", "Source_Host"]), get(&["Master_Port", "Source_Port"])),
                    "io_running": get(&["Slave_IO_Running", "Replica_IO_Running"]),
                    "sql_running": get(&["Slave_SQL_Running", "Replica_SQL_Running"]),
                    "seconds_behind": field(c, &["Seconds_Behind_Master", "Seconds_Behind_Source"])
                        .and_then(|s| s.parse::<u64>().ok()),
                    "gtid_io_pos": get(&["Gtid_IO_Pos", "Retrieved_Gtid_Set"]),
                    "exec_position": format!(
                        "{}:{}",
                        get(&["Relay_Master_Log_File", "Relay_Source_Log_File"]),
                        get(&["Exec_Master_Log_Pos", "Exec_Source_Log_Pos"])
                    ),
                })
            })
            .collect();
        json!({
            "server_version": self.version,
            "replica": self.is_replica(),
            "seconds_behind": self.seconds_behind(),
            "channels": channels,
        })
    }
}

/// The first of `names` present (MySQL 8.0.22+ renamed Master → Source, Slave → Replica).
fn field<'a>(channel: &'a BTreeMap<String, String>, names: &[&str]) -> Option<&'a str> {
    names
        .iter()
        .find_map(|n| channel.get(*n))
        .map(String::as_str)
}

fn running(channel: &BTreeMap<String, String>) -> bool {
    field(channel, &["Slave_IO_Running", "Replica_IO_Running"]) == Some("Yes")
        && field(channel, &["Slave_SQL_Running", "Replica_SQL_Running"]) == Some("Yes")
}

/// A mysql dump in progress: the server checked, the row counts taken.
pub struct MySqlSession {
    host: SourceHost,
    before: ServerState,
    /// Facts for the manifest's `details`.
    details: BTreeMap<String, serde_json::Value>,
}

impl MySqlSession {
    /// Checks the server (refusing a primary, a stopped or lagging replica) and takes
    /// per-table row counts.
    pub async fn begin(
        host: &SourceHost,
        job_name: &str,
        job: &JobConfig,
    ) -> Result<MySqlSession, SourceError> {
        let state = checked_state(host, job_name, job).await?;
        let mut details = BTreeMap::from([("mysql".to_string(), state.to_json())]);
        let (outcome, stdout, stderr) = host.output(&count_rows_command(job)).await?;
        if outcome != ExitOutcome::Code(0) {
            return Err(SourceError::Failed {
                host: host.name().to_string(),
                outcome,
                stderr: format!("counting rows: {}", stderr.trim()),
            });
        }
        details.insert("row_counts".into(), json!(parse_row_counts(&stdout)));
        Ok(MySqlSession {
            host: host.clone(),
            before: state,
            details,
        })
    }

    /// Checks the server again after the dump. The counts were taken in a snapshot of
    /// their own, just before the dump's: they are exact (`row_counts_exact`) when the
    /// replica applied nothing from before the counts to after the dump. Never fails
    /// the run (the dump's own snapshot is consistent); returns details and warnings.
    pub async fn finish(
        mut self,
        job: &JobConfig,
    ) -> (BTreeMap<String, serde_json::Value>, Vec<String>) {
        let mut warnings = Vec::new();
        let after = match state(&self.host, job).await {
            Ok(s) => Some(s),
            Err(e) => {
                warnings.push(format!("checking the server after the dump failed: {e}"));
                None
            }
        };
        let exact = self.before.is_replica()
            && after
                .as_ref()
                .is_some_and(|a| a.position() == self.before.position());
        self.details
            .insert("row_counts_exact".into(), serde_json::Value::Bool(exact));
        if let Some(after) = after.filter(|a| a.is_replica()) {
            let behind = after.seconds_behind();
            if let Some(serde_json::Value::Object(m)) = self.details.get_mut("mysql") {
                m.insert("seconds_behind_after_dump".into(), json!(behind));
            }
            if let Some(why) = after.not_running() {
                warnings.push(format!("replication stopped during the dump ({why})"));
            } else if behind.is_some_and(|b| b as f64 > job.max_replay_lag.as_secs_f64()) {
                warnings.push(format!(
                    "the replica was {}s behind its primary after the dump (max_replay_lag = {})",
                    behind.unwrap_or(0),
                    humantime::format_duration(job.max_replay_lag)
                ));
            }
        }
        (self.details, warnings)
    }
}

/// What `bk config check` reports: the server's state, refused as a run would refuse it.
pub async fn check_server(
    host: &SourceHost,
    job_name: &str,
    job: &JobConfig,
) -> Result<String, SourceError> {
    let state = checked_state(host, job_name, job).await?;
    let database = job.database.as_deref().unwrap_or("?");
    Ok(if state.is_replica() {
        format!(
            "{}, database {database}: a replica, replication running, {}s behind",
            state.version,
            state.seconds_behind().unwrap_or(0)
        )
    } else {
        format!(
            "{}, database {database}: a primary (allow_primary = true)",
            state.version
        )
    })
}

/// The server's state, or why a job must not dump it: a primary (unless the job allows
/// it), a replica whose replication is not running, or one too far behind.
async fn checked_state(
    host: &SourceHost,
    job_name: &str,
    job: &JobConfig,
) -> Result<ServerState, SourceError> {
    let refuse = |reason: String| SourceError::Refused {
        host: host.name().to_string(),
        job: job_name.to_string(),
        reason,
    };
    let state = state(host, job).await?;
    if !state.is_replica() && !job.allow_primary {
        return Err(refuse(
            "the server is a primary, not a replica (SHOW REPLICA STATUS returns no rows): \
             point the job at a replica, or set allow_primary = true"
                .into(),
        ));
    }
    if let Some(why) = state.not_running() {
        return Err(refuse(format!(
            "replication is not running on the replica ({why}), so its data is falling \
             behind: start it (START REPLICA) or point the job at a running replica"
        )));
    }
    let behind = state.seconds_behind().unwrap_or(0);
    if behind as f64 > job.max_replay_lag.as_secs_f64() {
        return Err(refuse(format!(
            "the replica is {behind}s behind its primary (Seconds_Behind_Master), above \
             max_replay_lag = {}",
            humantime::format_duration(job.max_replay_lag)
        )));
    }
    Ok(state)
}

async fn state(host: &SourceHost, job: &JobConfig) -> Result<ServerState, SourceError> {
    let (outcome, stdout, stderr) = host.output(&state_command(job)).await?;
    if outcome != ExitOutcome::Code(0) {
        return Err(SourceError::Failed {
            host: host.name().to_string(),
            outcome,
            stderr: format!("checking the server's replica status: {}", stderr.trim()),
        });
    }
    ServerState::parse(&stdout).ok_or_else(|| SourceError::Failed {
        host: host.name().to_string(),
        outcome: ExitOutcome::Code(0),
        stderr: "checking the server's replica status: the client printed nothing".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPLICA: &str = "10.11.19-MariaDB-log\n\
        Slave_IO_State\tMaster_Host\tMaster_Port\tRelay_Master_Log_File\tSlave_IO_Running\tSlave_SQL_Running\tLast_IO_Error\tExec_Master_Log_Pos\tSeconds_Behind_Master\tLast_SQL_Error\n\
        Waiting\t127.0.0.1\t3306\tbin.000001\tYes\tYes\t\t647\t0\t\n";

    #[test]
    fn a_running_replica_parses_with_its_lag_and_position() {
        let s = ServerState::parse(REPLICA).unwrap();
        assert!(s.is_replica());
        assert_eq!(s.version, "10.11.19-MariaDB-log");
        assert_eq!(s.seconds_behind(), Some(0));
        assert_eq!(s.not_running(), None);
        assert_eq!(s.position(), vec!["bin.000001:647"]);
        assert_eq!(s.to_json()["channels"][0]["source"], "127.0.0.1:3306");
    }

    #[test]
    fn a_primary_and_a_stopped_replica_are_told_apart() {
        let primary = ServerState::parse("8.0.36\n").unwrap();
        assert!(!primary.is_replica());
        assert_eq!(primary.seconds_behind(), Some(0));
        // MySQL 8.0.22+ column names, replication stopped after an error.
        let stopped = ServerState::parse(
            "8.0.36\nReplica_IO_Running\tReplica_SQL_Running\tSeconds_Behind_Source\tLast_SQL_Error\n\
             Yes\tNo\tNULL\tError 'Duplicate entry' on query\n",
        )
        .unwrap();
        assert_eq!(stopped.seconds_behind(), None);
        let why = stopped.not_running().unwrap();
        assert!(
            why.contains("Replica_SQL_Running: No") && why.contains("Duplicate entry"),
            "{why}"
        );
    }

    #[test]
    fn row_counts_undo_batch_escapes() {
        let counts = parse_row_counts("shop.customers\t1500\nshop.odd\\tname\t3\nnoise\n");
        assert_eq!(counts["shop.customers"], 1500);
        assert_eq!(counts["shop.odd\tname"], 3);
        assert_eq!(counts.len(), 2);
    }

    #[test]
    fn no_password_or_unquoted_value_reaches_the_command_line() {
        let job: JobConfig = toml::from_str(
            "kind = \"mysql\"\ndatabase = \"it's\"\ndefaults_file = \"/etc/bk/my cnf\"\n",
        )
        .unwrap();
        let plan = plan(&job);
        assert!(
            plan.command
                .contains("'--defaults-extra-file=/etc/bk/my cnf' --single-transaction"),
            "{}",
            plan.command
        );
        assert!(plan.command.ends_with(r"-- 'it'\''s'"), "{}", plan.command);
        for c in commands(&job) {
            assert!(
                c.contains("'--defaults-extra-file=/etc/bk/my cnf' --batch"),
                "{c}"
            );
        }
    }
}
