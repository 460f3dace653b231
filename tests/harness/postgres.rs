//! A real PostgreSQL 15 primary and a streaming hot-standby replica (made by
//! `pg_basebackup -R -X stream -C -S slot`) on free loopback ports, started once per
//! test binary as the `postgres` user (PostgreSQL refuses root) and stopped at exit.
//! Both trust TCP connections from 127.0.0.1, so the sshd source user reaches them
//! with `host=127.0.0.1 port=… user=postgres`.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::{free_port, require_tool, sh};

const BIN: &str = "/usr/lib/postgresql/15/bin";

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

impl Cluster {
    fn start() -> Cluster {
        require_tool("runuser");
        require_tool(&format!("{BIN}/initdb"));
        require_tool("psql");
        let dir = tempfile::Builder::new()
            .prefix("bk-pg-")
            .tempdir()
            .expect("tempdir");
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
        sh(&format!("chown postgres: {}", dir.path().display()));
        let primary_port = free_port();
        let replica_port = free_port();
        let d = dir.path().display().to_string();
        let pg = |cmd: &str| sh(&format!("cd / && runuser -u postgres -- {BIN}/{cmd}"));
        pg(&format!("initdb --no-sync -A trust -U postgres -E UTF8 --locale=C.UTF-8 -D {d}/primary >/dev/null"));
        fs::write(
            dir.path().join("primary/postgresql.auto.conf"),
            format!(
                "listen_addresses = '127.0.0.1'\nport = {primary_port}\nunix_socket_directories = '{d}'\n\
                 wal_level = replica\nmax_wal_senders = 5\nmax_replication_slots = 5\nhot_standby = on\n\
                 fsync = off\nfull_page_writes = off\nshared_buffers = 32MB\nmax_connections = 50\n"
            ),
        )
        .expect("primary config");
        fs::write(
            dir.path().join("primary/pg_hba.conf"),
            "local all all trust\nhost all all 127.0.0.1/32 trust\nhost replication all 127.0.0.1/32 trust\n",
        )
        .expect("pg_hba");
        pg(&format!(
            "pg_ctl -D {d}/primary -l {d}/primary.log -w -t 60 start >/dev/null"
        ));
        let c = Cluster {
            dir,
            primary_port,
            replica_port,
        };
        crate::sshd::register_exit_command(format!(
            "runuser -u postgres -- {BIN}/pg_ctl -D {d}/primary -m immediate stop"
        ));
        pg(&format!(
            "pg_basebackup -h 127.0.0.1 -p {primary_port} -U postgres -D {d}/replica -R -X stream -C -S bk_e2e_replica"
        ));
        let mut auto = fs::read_to_string(c.dir.path().join("replica/postgresql.auto.conf"))
            .expect("replica conf");
        auto.push_str(&format!(
            "port = {replica_port}\nmax_standby_streaming_delay = 30s\n"
        ));
        fs::write(c.dir.path().join("replica/postgresql.auto.conf"), auto).expect("replica conf");
        pg(&format!(
            "pg_ctl -D {d}/replica -l {d}/replica.log -w -t 60 start >/dev/null"
        ));
        crate::sshd::register_exit_command(format!(
            "runuser -u postgres -- {BIN}/pg_ctl -D {d}/replica -m immediate stop"
        ));
        // The static Cluster is never dropped: remove its data directories at exit too.
        crate::sshd::register_exit_command(format!("rm -rf {d}"));
        c.wait_until(Duration::from_secs(30), || {
            c.replica("postgres", "SELECT pg_is_in_recovery()") == "t"
        });
        c
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// libpq conninfo for the primary or the replica (TCP on loopback, user postgres).
    pub fn conninfo(&self, replica: bool) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres",
            if replica {
                self.replica_port
            } else {
                self.primary_port
            }
        )
    }

    fn psql(port: u16, db: &str, sql: &str) -> String {
        let file = tempfile::NamedTempFile::new().expect("sql file");
        fs::write(file.path(), sql).expect("write sql");
        sh(&format!(
            "psql -X -q -At -v ON_ERROR_STOP=1 -h 127.0.0.1 -p {port} -U postgres -d {db} -f {}",
            file.path().display()
        ))
        .trim()
        .to_string()
    }

    /// Runs SQL on the primary; returns its unaligned output.
    pub fn primary(&self, db: &str, sql: &str) -> String {
        Self::psql(self.primary_port, db, sql)
    }

    /// Runs SQL on the replica; returns its unaligned output.
    pub fn replica(&self, db: &str, sql: &str) -> String {
        Self::psql(self.replica_port, db, sql)
    }

    /// Waits until the replica has replayed everything the primary has written.
    pub fn wait_caught_up(&self) {
        let lsn = self.primary("postgres", "SELECT pg_current_wal_insert_lsn()");
        self.wait_until(Duration::from_secs(60), || {
            self.replica(
                "postgres",
                &format!("SELECT pg_last_wal_replay_lsn() >= '{lsn}'::pg_lsn"),
            ) == "t"
        });
    }

    /// The replica's replay pause state: `not paused`, `pause requested` or `paused`.
    pub fn pause_state(&self) -> String {
        self.replica("postgres", "SELECT pg_get_wal_replay_pause_state()")
    }

    fn wait_until(&self, limit: Duration, mut ok: impl FnMut() -> bool) {
        let start = Instant::now();
        while !ok() {
            assert!(
                start.elapsed() < limit,
                "PostgreSQL did not get there in {limit:?}; replica log:\n{}",
                fs::read_to_string(self.dir.path().join("replica.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A new database on the primary, filled by `sql`, replicated before this returns.
    pub fn create_database(&self, name: &str, sql: &str) {
        self.primary("postgres", &format!("CREATE DATABASE \"{name}\""));
        self.primary(name, sql);
        self.wait_caught_up();
    }

    /// Per-table row counts of `db` on the primary (`schema.table` → count).
    pub fn row_counts(&self, port_of_replica: bool, db: &str) -> Vec<(String, u64)> {
        let sql = "SELECT format('SELECT %L, count(*) FROM %s', n.nspname || '.' || c.relname, c.oid::regclass) \
                   FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind IN ('r','p') \
                   AND n.nspname NOT IN ('pg_catalog','information_schema') AND n.nspname NOT LIKE 'pg_toast%' ORDER BY 1 \\gexec";
        let port = if port_of_replica {
            self.replica_port
        } else {
            self.primary_port
        };
        Self::psql(port, db, sql)
            .lines()
            .filter_map(|l| {
                let (t, n) = l.rsplit_once('|')?;
                Some((t.to_string(), n.parse().ok()?))
            })
            .collect()
    }

    pub fn data_dir(&self, replica: bool) -> PathBuf {
        self.dir
            .path()
            .join(if replica { "replica" } else { "primary" })
    }
}
