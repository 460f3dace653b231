//! A real MariaDB primary and a GTID replica (`MASTER_USE_GTID=slave_pos`) on free
//! loopback ports, started once per test binary and gone at exit. One
//! `mariadb-install-db` makes the primary's data directory; the replica starts from a
//! copy of it (replication from an empty primary needs no seed). Both servers run as
//! the `mysql` user (MariaDB refuses root) and die with the test process. The harness
//! administers them as root over their unix sockets; tests reach them over TCP on
//! 127.0.0.1 with accounts of their own.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::{free_port, require_tool, sh, spawn_service, wait_for_port};

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub primary_port: u16,
    pub replica_port: u16,
}

/// The primary and replica shared by this test binary.
pub fn cluster() -> &'static Cluster {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    CLUSTER.get_or_init(Cluster::start)
}

/// Small and fast rather than durable: these servers hold throw-away data.
const SERVER_OPTIONS: &[&str] = &[
    "--no-defaults",
    "--bind-address=127.0.0.1",
    "--skip-name-resolve",
    "--innodb-buffer-pool-size=16M",
    "--innodb-log-file-size=8M",
    "--innodb-flush-log-at-trx-commit=0",
    "--innodb-doublewrite=0",
    "--performance-schema=OFF",
    "--max-connections=60",
];

impl Cluster {
    fn start() -> Cluster {
        for tool in [
            "/usr/sbin/mariadbd",
            "mariadb-install-db",
            "mariadb",
            "runuser",
        ] {
            require_tool(tool);
        }
        let dir = tempfile::Builder::new()
            .prefix("bk-mariadb-")
            .tempdir()
            .expect("tempdir");
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
        let d = dir.path().display().to_string();
        sh(&format!("chown mysql: {d}"));
        crate::sshd::register_exit_command(format!("rm -rf {d}"));
        sh(&format!(
            "cd / && runuser -u mysql -- mariadb-install-db {} --auth-root-authentication-method=normal \
             --skip-test-db --datadir={d}/primary >{d}/install.log 2>&1 && cp -a {d}/primary {d}/replica",
            SERVER_OPTIONS.join(" ")
        ));
        let c = Cluster {
            dir,
            primary_port: free_port(),
            replica_port: free_port(),
        };
        let primary = c.spawn_server(
            "primary",
            c.primary_port,
            &["--server-id=1", "--log-bin=bin", "--binlog-format=ROW"],
        );
        let replica = c.spawn_server(
            "replica",
            c.replica_port,
            &["--server-id=2", "--relay-log=relay", "--read-only"],
        );
        // The servers die with this process (PDEATHSIG); stop them before the files go.
        crate::sshd::register_exit_command(format!("kill -KILL {primary} {replica}"));
        wait_for_port(c.primary_port, "the MariaDB primary");
        wait_for_port(c.replica_port, "the MariaDB replica");
        c.primary(
            None,
            "CREATE USER repl@'127.0.0.1' IDENTIFIED BY 'repl';
             GRANT REPLICATION SLAVE ON *.* TO repl@'127.0.0.1';",
        );
        c.replica(
            None,
            &format!(
                "CHANGE MASTER TO MASTER_HOST='127.0.0.1', MASTER_PORT={}, MASTER_USER='repl',
                 MASTER_PASSWORD='repl', MASTER_USE_GTID=slave_pos; START SLAVE;",
                c.primary_port
            ),
        );
        c.wait_caught_up();
        c
    }

    /// Starts one server as the `mysql` user; returns its PID.
    fn spawn_server(&self, name: &str, port: u16, extra: &[&str]) -> u32 {
        let d = self.dir.path();
        let uid: u32 = sh("id -u mysql").trim().parse().expect("mysql uid");
        let gid: u32 = sh("id -g mysql").trim().parse().expect("mysql gid");
        let mut cmd = Command::new("/usr/sbin/mariadbd");
        cmd.args(SERVER_OPTIONS)
            .arg(format!("--datadir={}", d.join(name).display()))
            .arg(format!("--port={port}"))
            .arg(format!("--socket={}", self.socket(name).display()))
            .arg(format!(
                "--pid-file={}",
                d.join(format!("{name}.pid")).display()
            ))
            .arg(format!("--log-error={}", self.log_path(name).display()))
            .args(extra)
            .current_dir(d)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Started as `mysql` outright (not via --user): a set-uid inside mariadbd
            // would clear the parent-death signal that ties it to this process.
            .uid(uid)
            .gid(gid);
        spawn_service(cmd).id()
    }

    pub fn socket(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.sock"))
    }

    fn log_path(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.err"))
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn sql(&self, server: &str, db: Option<&str>, sql: &str) -> String {
        let file = tempfile::NamedTempFile::new().expect("sql file");
        fs::write(file.path(), sql).expect("write sql");
        sh(&format!(
            "mariadb --no-defaults --default-character-set=utf8mb4 -uroot -S {} --batch --skip-column-names {} < {}",
            self.socket(server).display(),
            db.map(|d| format!("-D '{d}'")).unwrap_or_default(),
            file.path().display()
        ))
        .trim()
        .to_string()
    }

    /// Runs SQL on the primary as root; returns its `--batch` output without headers.
    pub fn primary(&self, db: Option<&str>, sql: &str) -> String {
        self.sql("primary", db, sql)
    }

    /// Runs SQL on the replica as root; returns its `--batch` output without headers.
    pub fn replica(&self, db: Option<&str>, sql: &str) -> String {
        self.sql("replica", db, sql)
    }

    /// Waits until the replica has applied everything the primary has written.
    pub fn wait_caught_up(&self) {
        let pos = self.primary(None, "SELECT @@gtid_binlog_pos");
        let start = Instant::now();
        let waited = self.replica(None, &format!("SELECT MASTER_GTID_WAIT('{pos}', 60)"));
        assert_eq!(
            waited,
            "0",
            "the replica did not reach {pos} in {:?}; replica log:\n{}",
            start.elapsed(),
            fs::read_to_string(self.log_path("replica")).unwrap_or_default()
        );
    }

    /// A new database on the primary, filled by `sql`, replicated before this returns.
    pub fn create_database(&self, name: &str, sql: &str) {
        self.primary(
            None,
            &format!("CREATE DATABASE `{name}` CHARACTER SET utf8mb4"),
        );
        self.primary(Some(name), sql);
        self.wait_caught_up();
    }

    /// Exact per-table row counts of `db` (`table` → rows), counted one by one.
    pub fn row_counts(&self, replica: bool, db: &str) -> Vec<(String, u64)> {
        let run = |sql: &str| {
            if replica {
                self.replica(Some(db), sql)
            } else {
                self.primary(Some(db), sql)
            }
        };
        let tables = run(
            "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() \
             AND TABLE_TYPE = 'BASE TABLE' ORDER BY 1",
        );
        tables
            .lines()
            .map(|t| {
                let n = run(&format!("SELECT COUNT(*) FROM `{t}`"));
                (t.to_string(), n.parse().expect("a count"))
            })
            .collect()
    }

    /// `SHOW SLAVE STATUS` field `name` on the replica.
    pub fn replica_status(&self, name: &str) -> String {
        let out = sh(&format!(
            "mariadb --no-defaults -uroot -S {} -E -e 'SHOW SLAVE STATUS'",
            self.socket("replica").display()
        ));
        out.lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim() == name)
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_default()
    }

    /// Waits (up to 30 s) until `SHOW SLAVE STATUS` field `name` reads `want`.
    pub fn wait_replica_status(&self, name: &str, want: &str) {
        let start = Instant::now();
        loop {
            let got = self.replica_status(name);
            if got == want {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "replica {name} is `{got}`, expected `{want}`"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}
