//! `mysql` jobs against a real MariaDB primary and GTID replica, pulled over a real
//! sshd as the unprivileged source user, with the least-privilege account that
//! docs/sources.md gives: a replica's dump restores with the stock `age`, `zstd` and
//! `mariadb` tools and its row counts match the primary's; a primary, a stopped
//! replica and a lagging one are refused; a failing dump commits nothing and reports
//! the remote stderr; the restricted `authorized_keys` line lets exactly these jobs run.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use bk_e2e::mariadb::{cluster, Cluster};
use bk_e2e::sshd::{self, Sshd};
use bk_e2e::{bk_path, require_tool, run, sh, Workspace};

/// The scenarios share one replica and stop it, delay it or count on it being idle
/// (for exact row counts): they take turns.
static TURN: Mutex<()> = Mutex::new(());

const BACKUP_USER: &str = "bk_backup";
const BACKUP_PASSWORD: &str = "s3cret-not-on-any-command-line";

/// A shop with what a dump must carry: foreign keys, binary data, 4-byte UTF-8, a view,
/// a trigger, a stored function and an event.
const SHOP: &str = "
CREATE TABLE customers (id INT PRIMARY KEY, name VARCHAR(100) NOT NULL);
INSERT INTO customers SELECT seq, CONCAT('customer ', seq, ' \u{2603}\u{1F600}') FROM seq_1_to_1500;
CREATE TABLE invoices (id BIGINT AUTO_INCREMENT PRIMARY KEY, customer INT NOT NULL,
  total DECIMAL(10,2), data BLOB, FOREIGN KEY (customer) REFERENCES customers (id));
INSERT INTO invoices (customer, total, data)
  SELECT 1 + seq % 1500, seq * 1.25, UNHEX(CONCAT(MD5(seq), '00ff0a0d5c27')) FROM seq_1_to_12000;
CREATE TABLE empty_table (x INT);
CREATE VIEW big_spenders AS SELECT customer, SUM(total) AS spent FROM invoices GROUP BY customer;
CREATE TRIGGER positive_total BEFORE INSERT ON invoices FOR EACH ROW SET NEW.total = ABS(NEW.total);
CREATE FUNCTION double_it(x INT) RETURNS INT DETERMINISTIC RETURN x * 2;
CREATE EVENT nightly ON SCHEDULE EVERY 1 DAY DO DELETE FROM empty_table;";

fn unique(prefix: &str) -> String {
    format!("{prefix}_{}", rand::random::<u32>())
}

/// The least-privilege backup account of docs/sources.md, for `db` (made on the
/// primary; it replicates).
fn grant_backup_account(c: &Cluster, db: &str, privileges: &str) {
    c.primary(
        None,
        &format!(
            "CREATE USER IF NOT EXISTS {BACKUP_USER}@'127.0.0.1' IDENTIFIED BY '{BACKUP_PASSWORD}';
             GRANT {privileges} ON `{db}`.* TO {BACKUP_USER}@'127.0.0.1';
             GRANT SELECT ON mysql.proc TO {BACKUP_USER}@'127.0.0.1';
             GRANT SLAVE MONITOR ON *.* TO {BACKUP_USER}@'127.0.0.1';"
        ),
    );
    c.wait_caught_up();
}

const DOCUMENTED_GRANTS: &str = "SELECT, SHOW VIEW, TRIGGER, EVENT";

/// An option file on the "source host", readable only by the source user.
fn option_file(ws: &Workspace, name: &str, port: u16) -> PathBuf {
    fs::set_permissions(ws.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let path = ws.path().join(format!("{name}.cnf"));
    fs::write(
        &path,
        format!(
            "[client]\nhost = 127.0.0.1\nport = {port}\nuser = {BACKUP_USER}\npassword = {BACKUP_PASSWORD}\n"
        ),
    )
    .unwrap();
    sh(&format!(
        "chown {}: {p} && chmod 600 {p}",
        sshd::SOURCE_USER,
        p = path.display()
    ));
    path
}

fn mysql_job(ws: &mut Workspace, name: &str, host: &str, db: &str, cnf: &Path, extra: &str) {
    ws.add(&format!(
        "[jobs.{name}]\nhost = \"{host}\"\nkind = \"mysql\"\ndatabase = \"{db}\"\n\
         defaults_file = \"{}\"\n{extra}\n",
        cnf.display()
    ));
}

/// A workspace with the shared sshd as host `db` and option files for both servers.
fn workspace() -> (Workspace, &'static Cluster, PathBuf, PathBuf) {
    require_tool("age");
    require_tool("zstd");
    let c = cluster();
    let mut ws = Workspace::new();
    ws.add(&Sshd::shared().host_toml("db"));
    let replica = option_file(&ws, "replica", c.replica_port);
    let primary = option_file(&ws, "primary", c.primary_port);
    (ws, c, replica, primary)
}

fn decrypted_header(ws: &Workspace, job: &str, id: &str) -> serde_json::Value {
    let text = sh(&format!(
        "age -d -i {} {}/manifest.age | zstd -d | head -1",
        ws.identity.display(),
        ws.backup_dir(job, id).display()
    ));
    serde_json::from_str(&text).unwrap()
}

#[test]
fn a_replica_dump_restores_with_the_stock_client_and_row_counts_match() {
    let _turn = TURN.lock().unwrap_or_else(|p| p.into_inner());
    let (mut ws, c, replica_cnf, _) = workspace();
    let db = unique("shop");
    c.create_database(&db, SHOP);
    grant_backup_account(c, &db, DOCUMENTED_GRANTS);
    mysql_job(&mut ws, "shop", "db", &db, &replica_cnf, "");
    let out = ws.bk(&["run", "shop"]).ok();
    assert!(!out.stderr.contains(BACKUP_PASSWORD), "{}", out.stderr);
    let check = ws.bk(&["config", "check"]).ok();
    assert!(
        check.stdout.contains("ok    job shop")
            && check
                .stdout
                .contains("a replica, replication running, 0s behind"),
        "{}",
        check.stdout
    );
    let id = ws.backup_ids("shop").remove(0);

    let header = decrypted_header(&ws, "shop", &id);
    let details = &header["details"];
    assert_eq!(details["mysql"]["replica"], true, "{details}");
    assert_eq!(details["mysql"]["seconds_behind"], 0, "{details}");
    assert_eq!(
        details["mysql"]["channels"][0]["io_running"], "Yes",
        "{details}"
    );
    assert!(
        details["mysql"]["server_version"]
            .as_str()
            .unwrap()
            .contains("MariaDB"),
        "{details}"
    );
    assert!(
        header["tool_versions"]["mysql"]
            .as_str()
            .unwrap()
            .starts_with("mariadb-dump"),
        "{header}"
    );
    assert!(!header.to_string().contains(BACKUP_PASSWORD), "{header}");
    let primary_counts = c.row_counts(false, &db);
    assert_eq!(primary_counts.len(), 3, "{primary_counts:?}");
    assert_eq!(
        details["row_counts"].as_object().unwrap().len(),
        3,
        "{details}"
    );
    for (table, n) in &primary_counts {
        assert_eq!(
            details["row_counts"][format!("{db}.{table}")].as_u64(),
            Some(*n),
            "{table} in {details}"
        );
    }
    // Nothing was written on the idle primary between the counts and the dump.
    assert_eq!(details["row_counts_exact"], true, "{details}");

    // The payload is a plain SQL dump: age, zstd and the stock client restore it into a
    // fresh database of another name.
    let restored = unique("restored");
    c.primary(None, &format!("CREATE DATABASE `{restored}`"));
    sh(&format!(
        "age -d -i {} {}/payload.age | zstd -d | mariadb --no-defaults -uroot -S {}/primary.sock {restored}",
        ws.identity.display(),
        ws.backup_dir("shop", &id).display(),
        c.dir().display()
    ));
    assert_eq!(c.row_counts(false, &restored), primary_counts);
    let fingerprint = "SELECT MD5(GROUP_CONCAT(HEX(data), total ORDER BY id)), \
        (SELECT MD5(GROUP_CONCAT(name ORDER BY id)) FROM customers), \
        (SELECT COUNT(*) FROM big_spenders), double_it(21) FROM invoices";
    assert_eq!(
        c.primary(Some(&restored), fingerprint),
        c.primary(Some(&db), fingerprint)
    );
    let objects = "SELECT (SELECT GROUP_CONCAT(TRIGGER_NAME) FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = DATABASE()), \
        (SELECT GROUP_CONCAT(EVENT_NAME) FROM information_schema.EVENTS WHERE EVENT_SCHEMA = DATABASE())";
    assert_eq!(
        c.primary(Some(&restored), objects),
        "positive_total\tnightly"
    );
    // The trigger works in the restored copy.
    c.primary(
        Some(&restored),
        "INSERT INTO invoices (customer, total) VALUES (1, -5)",
    );
    assert_eq!(
        c.primary(
            Some(&restored),
            "SELECT total FROM invoices ORDER BY id DESC LIMIT 1"
        ),
        "5.00"
    );

    assert_eq!(
        sshd::home_listing(&sshd::keys().home),
        vec!["./.ssh", "./.ssh/authorized_keys"]
    );
}

#[test]
fn a_primary_is_refused_unless_the_job_allows_it() {
    let _turn = TURN.lock().unwrap_or_else(|p| p.into_inner());
    let (mut ws, c, _, primary_cnf) = workspace();
    let db = unique("prim");
    c.create_database(
        &db,
        "CREATE TABLE t (x INT); INSERT INTO t VALUES (1), (2);",
    );
    grant_backup_account(c, &db, DOCUMENTED_GRANTS);
    mysql_job(&mut ws, "strict", "db", &db, &primary_cnf, "");
    mysql_job(
        &mut ws,
        "lenient",
        "db",
        &db,
        &primary_cnf,
        "allow_primary = true",
    );
    let out = ws.bk(&["run", "strict"]).fails_with(1);
    assert!(
        out.stderr.contains("is a primary") && out.stderr.contains("allow_primary = true"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("job `strict`"), "{}", out.stderr);
    assert!(ws.backup_ids("strict").is_empty());
    // `bk config check` says the same before any run would.
    let check = ws.bk(&["config", "check"]).fails_with(1);
    assert!(
        check.stdout.contains("is a primary")
            && check.stdout.contains("a primary (allow_primary = true)"),
        "{}",
        check.stdout
    );

    ws.bk(&["run", "lenient"]).ok();
    let id = ws.backup_ids("lenient").remove(0);
    let details = &decrypted_header(&ws, "lenient", &id)["details"];
    assert_eq!(details["mysql"]["replica"], false, "{details}");
    assert_eq!(details["row_counts"][format!("{db}.t")], 2, "{details}");
    // On a primary nothing proves that no write fell between the counts and the dump.
    assert_eq!(details["row_counts_exact"], false, "{details}");
}

#[test]
fn a_stopped_or_lagging_replica_is_refused() {
    let _turn = TURN.lock().unwrap_or_else(|p| p.into_inner());
    let (mut ws, c, replica_cnf, _) = workspace();
    let db = unique("stale");
    c.create_database(&db, "CREATE TABLE t (x INT); INSERT INTO t VALUES (1);");
    grant_backup_account(c, &db, DOCUMENTED_GRANTS);
    mysql_job(&mut ws, "stale", "db", &db, &replica_cnf, "");
    mysql_job(
        &mut ws,
        "impatient",
        "db",
        &db,
        &replica_cnf,
        "max_replay_lag = \"2s\"",
    );

    c.replica(None, "STOP SLAVE");
    let out = ws.bk(&["run", "stale"]);
    c.replica(None, "START SLAVE");
    let out = out.fails_with(1);
    assert!(
        out.stderr.contains("replication is not running")
            && out.stderr.contains("Slave_IO_Running: No")
            && out.stderr.contains("START REPLICA"),
        "{}",
        out.stderr
    );
    assert!(ws.backup_ids("stale").is_empty());
    c.wait_replica_status("Slave_SQL_Running", "Yes");

    // A replica that applies events 60 s late (MASTER_DELAY) falls behind a writing primary.
    c.replica(
        None,
        "STOP SLAVE; CHANGE MASTER TO MASTER_DELAY = 60; START SLAVE",
    );
    c.primary(Some(&db), "INSERT INTO t VALUES (2)");
    let start = std::time::Instant::now();
    while c
        .replica_status("Seconds_Behind_Master")
        .parse::<u64>()
        .unwrap_or(0)
        < 4
    {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(30),
            "the delayed replica never fell behind"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let out = ws.bk(&["run", "impatient"]);
    c.replica(
        None,
        "STOP SLAVE; CHANGE MASTER TO MASTER_DELAY = 0; START SLAVE",
    );
    let out = out.fails_with(1);
    assert!(
        out.stderr.contains("behind its primary") && out.stderr.contains("max_replay_lag = 2s"),
        "{}",
        out.stderr
    );
    assert!(ws.backup_ids("impatient").is_empty());
    c.wait_caught_up();
    ws.bk(&["run", "stale"]).ok();
}

#[test]
fn a_failing_dump_is_a_failed_run_with_the_remote_stderr_and_commits_nothing() {
    let _turn = TURN.lock().unwrap_or_else(|p| p.into_inner());
    let (mut ws, c, replica_cnf, _) = workspace();
    // An account without SHOW VIEW: the checks and counts pass, mariadb-dump itself
    // fails on the view after dumping the tables; the upload is aborted.
    let db = unique("noview");
    c.create_database(
        &db,
        "CREATE TABLE t (x INT); INSERT INTO t SELECT seq FROM seq_1_to_5000; \
         CREATE VIEW v AS SELECT x FROM t;",
    );
    grant_backup_account(c, &db, "SELECT, TRIGGER, EVENT");
    mysql_job(&mut ws, "noview", "db", &db, &replica_cnf, "");
    let out = ws.bk(&["run", "noview"]).fails_with(1);
    assert!(
        out.stderr.contains("exit status 2") && out.stderr.contains("SHOW VIEW"),
        "{}",
        out.stderr
    );
    assert!(ws.backup_ids("noview").is_empty());
    let leftovers = sh(&format!(
        "find {} -name payload.age | wc -l",
        ws.repo_dir().display()
    ));
    assert_eq!(leftovers.trim(), "0", "a failed dump left a payload behind");
    let status = ws.bk(&["status", "--json"]).ok().json();
    assert!(status.to_string().contains("SHOW VIEW"), "{status}");

    // A database that does not exist: the client says so, before any byte is dumped.
    mysql_job(&mut ws, "missing", "db", "no_such_db", &replica_cnf, "");
    let out = ws.bk(&["run", "missing"]).fails_with(1);
    assert!(
        out.stderr.contains("no_such_db") && out.stderr.contains("ERROR 1044"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("host `db`"), "{}", out.stderr);
    assert!(ws.backup_ids("missing").is_empty());
}

#[test]
fn mysql_jobs_work_through_the_restricted_authorized_key() {
    let _turn = TURN.lock().unwrap_or_else(|p| p.into_inner());
    let (mut ws, c, replica_cnf, _) = workspace();
    let db = unique("gated");
    c.create_database(&db, SHOP);
    grant_backup_account(c, &db, DOCUMENTED_GRANTS);
    mysql_job(&mut ws, "data", "db", &db, &replica_cnf, "");
    let probe = Sshd::shared();
    let line = ws.bk(&["authorized-key", "db"]).ok().stdout;
    assert!(line.starts_with("restrict,command=\""), "{line}");
    assert!(!line.contains(BACKUP_PASSWORD), "{line}");
    let gated = Sshd::start_with_authorized_keys(&line);
    let text = fs::read_to_string(&ws.config).unwrap();
    fs::write(
        &ws.config,
        text.replace(
            &format!("port = {}", probe.port),
            &format!("port = {}", gated.port),
        )
        .replace(
            &probe.known_hosts.display().to_string(),
            &gated.known_hosts.display().to_string(),
        ),
    )
    .unwrap();

    ws.bk(&["run", "data"]).ok();
    let id = ws.backup_ids("data").remove(0);
    let header = decrypted_header(&ws, "data", &id);
    assert_eq!(header["details"]["mysql"]["replica"], true, "{header}");
    assert_eq!(
        header["details"]["row_counts"][format!("{db}.invoices")],
        12000,
        "{header}"
    );
    assert!(
        header["tool_versions"]["mysql"].is_string(),
        "the version command was refused: {header}"
    );

    // The same job with another database is another command: refused by the gate.
    let text = fs::read_to_string(&ws.config).unwrap();
    fs::write(
        &ws.config,
        text.replace(&format!("database = \"{db}\""), "database = \"mysql\""),
    )
    .unwrap();
    let out = ws.bk(&["run", "data"]).fails_with(1);
    assert!(
        out.stderr.contains("may not run") && out.stderr.contains("exit status 126"),
        "{}",
        out.stderr
    );
    assert_eq!(ws.backup_ids("data").len(), 1);
}

/// On a host whose tools are only `mysqldump` and `mysql` (MySQL, MariaDB before 10.5),
/// those are used: here MariaDB's own tools under their old names, on `local`.
#[test]
fn mysqldump_and_mysql_are_used_where_the_mariadb_names_are_missing() {
    let _turn = TURN.lock().unwrap_or_else(|p| p.into_inner());
    let (mut ws, c, replica_cnf, _) = workspace();
    let db = unique("old");
    c.create_database(
        &db,
        "CREATE TABLE t (x INT); INSERT INTO t VALUES (1), (2), (3);",
    );
    grant_backup_account(c, &db, DOCUMENTED_GRANTS);
    let bin = ws.path().join("old-bin");
    fs::create_dir(&bin).unwrap();
    for (name, target) in [("mysqldump", "mariadb-dump"), ("mysql", "mariadb")] {
        let real = sh(&format!("command -v {target}"));
        std::os::unix::fs::symlink(real.trim(), bin.join(name)).unwrap();
    }
    mysql_job(&mut ws, "old", "local", &db, &replica_cnf, "");
    run(Command::new(bk_path())
        .args(["--config", ws.config.to_str().unwrap(), "run", "old"])
        .env("PATH", &bin))
    .ok();
    let id = ws.backup_ids("old").remove(0);
    let header = decrypted_header(&ws, "old", &id);
    assert!(
        header["tool_versions"]["mysql"]
            .as_str()
            .unwrap()
            .starts_with("mysqldump"),
        "{header}"
    );
    assert_eq!(header["details"]["row_counts"][format!("{db}.t")], 3);
    let dump = sh(&format!(
        "age -d -i {} {}/payload.age | zstd -d",
        ws.identity.display(),
        ws.backup_dir("old", &id).display()
    ));
    assert!(dump.contains("INSERT INTO `t` VALUES"), "{dump}");
}

/// A restore test of a mysql job: the backup loaded with the stock client into a
/// scratch database on a real server, row counts compared with the manifest's, SQL
/// checks run (a failing one fails the test with its text), the database dropped;
/// and the operator's `--mysql-target` restore with the same code.
#[test]
fn a_mysql_restore_test_loads_counts_checks_and_drops_its_database() {
    let _turn = TURN.lock().unwrap_or_else(|p| p.into_inner());
    let (mut ws, c, replica_cnf, _) = workspace();
    let db = unique("rt");
    c.create_database(&db, SHOP);
    grant_backup_account(c, &db, DOCUMENTED_GRANTS);
    let socket = c.socket("primary").display().to_string();
    let target = format!("mysql://root@localhost/?socket={socket}");
    let identity = ws.identity.display().to_string();
    for (job, checks) in [
        (
            "shop",
            r#"["SELECT COUNT(*) = 1500 FROM customers", "SELECT double_it(21) = 42"]"#,
        ),
        (
            "shop_strict",
            r#"["SELECT COUNT(*) > 99999 FROM customers"]"#,
        ),
    ] {
        mysql_job(
            &mut ws,
            job,
            "db",
            &db,
            &replica_cnf,
            &format!(
                "[jobs.{job}.restore_test]\nidentity = \"{identity}\"\ntarget = \"{target}\"\nchecks = {checks}\n"
            ),
        );
        ws.bk(&["run", job]).ok();
    }
    let scratch_left = || {
        c.primary(
            None,
            "SELECT COUNT(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME LIKE 'bk\\_restore\\_test\\_%'",
        )
    };

    let report = ws.bk(&["restore-test", "shop", "--json"]).ok().json();
    assert_eq!(report["status"], "passed", "{report}");
    assert_eq!(report["tables_checked"], 3, "{report}");
    assert_eq!(report["rows_restored"], 13_500, "{report}");
    assert!(
        report["checks"]
            .as_array()
            .is_some_and(|c| c.len() == 2 && c.iter().all(|c| c["passed"] == true)),
        "{report}"
    );
    assert_eq!(scratch_left(), "0");

    let failed = ws
        .bk(&["restore-test", "shop_strict", "--json"])
        .fails_with(1);
    let reason = failed.json()["reason"].as_str().unwrap_or("").to_string();
    assert!(
        reason.contains("SELECT COUNT(*) > 99999 FROM customers") && reason.contains("`0`"),
        "{reason}"
    );
    assert_eq!(scratch_left(), "0");

    let restored = format!("{db}_restored");
    let url = format!("mysql://root@localhost/{restored}?socket={socket}");
    ws.bk(&[
        "restore",
        "shop",
        "--identity",
        &identity,
        "--mysql-target",
        &url,
    ])
    .ok();
    assert_eq!(c.row_counts(false, &restored), c.row_counts(false, &db));
    let again = ws
        .bk(&[
            "restore",
            "shop",
            "--identity",
            &identity,
            "--mysql-target",
            &url,
        ])
        .fails_with(1);
    assert!(again.stderr.contains("already exists"), "{}", again.stderr);
}
