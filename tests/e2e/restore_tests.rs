//! Restore tests, restoring for real: a `postgres` backup of the harness's replica
//! restored into a scratch database on a real PostgreSQL server (row counts, SQL
//! checks, roles), a directory backup extracted into a scratch directory and checked
//! file by file; sabotaged backups that must fail with a clear reason; tests cut
//! short by kill -9 cleaned up at the next start; and the daemon running them on
//! schedule, with metrics and alerts. Scratch resources must never outlive a test.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use bk_e2e::daemon::{free_port, server_section, wait_for, Daemon, Receiver};
use bk_e2e::postgres::cluster;
use bk_e2e::{bk_path, sh, tamper, tree, Workspace};

/// Scratch databases bk left on the harness's primary for `job` (tests run in
/// parallel on one cluster, so each looks only at its own job's).
fn scratch_databases(job: &str) -> Vec<String> {
    let out = cluster().primary(
        "postgres",
        &format!(
            "SELECT datname FROM pg_database WHERE datname LIKE 'bk\\_restore\\_test\\_{job}\\_%'"
        ),
    );
    out.lines().map(str::to_string).collect()
}

fn scratch_dirs(parent: &Path) -> Vec<String> {
    std::fs::read_dir(parent)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("bk-restore-test-"))
                .collect()
        })
        .unwrap_or_default()
}

fn target_url() -> String {
    format!(
        "postgresql://postgres@127.0.0.1:{}/postgres",
        cluster().primary_port
    )
}

/// A postgres job on the local host dumping `db` from the replica, with a restore test.
fn pg_job(ws: &Workspace, name: &str, db: &str, extra_test: &str) -> String {
    format!(
        "[jobs.{name}]\nkind = \"postgres\"\ndatabase = \"{db}\"\nconninfo = \"{}\"\npause_replay = true\n\
         [jobs.{name}.restore_test]\nidentity = \"{}\"\ntarget = \"{}\"\n{extra_test}\n",
        cluster().conninfo(true),
        ws.identity.display(),
        target_url()
    )
}

fn only_backup(ws: &Workspace, job: &str) -> String {
    let ids = ws.backup_ids(job);
    assert_eq!(ids.len(), 1, "{ids:?}");
    ids[0].clone()
}

/// `bk restore-test JOB --json`, expected to fail: its reason.
fn failing_test(ws: &Workspace, job: &str) -> String {
    let out = ws.bk(&["restore-test", job, "--json"]).fails_with(1);
    let doc = out.json();
    assert_eq!(doc["status"], "failed", "{doc}");
    let reason = doc["reason"].as_str().expect("reason").to_string();
    assert!(
        out.stderr.contains("restore test of job"),
        "stderr names the failure: {}",
        out.stderr
    );
    reason
}

#[test]
fn a_postgres_restore_test_restores_counts_rows_runs_checks_and_drops_its_database() {
    let pg = cluster();
    pg.primary("postgres", "CREATE ROLE rt_owner");
    pg.create_database(
        "rt_app",
        "CREATE TABLE users (id int PRIMARY KEY, name text NOT NULL);
         INSERT INTO users SELECT g, 'user ' || g FROM generate_series(1, 200) g;
         CREATE TABLE orders (id int PRIMARY KEY, user_id int REFERENCES users, total numeric NOT NULL);
         INSERT INTO orders SELECT g, 1 + g % 200, g * 1.5 FROM generate_series(1, 1000) g;
         CREATE TABLE audit (id int);
         ALTER TABLE audit OWNER TO rt_owner;",
    );
    let mut ws = Workspace::new();
    ws.add(&pg_job(
        &ws,
        "app",
        "rt_app",
        "checks = [\"SELECT count(*) = 200 FROM users\", \"SELECT bool_and(total > 0) FROM orders\"]",
    ));
    ws.bk(&["run", "app"]).ok();
    let id = only_backup(&ws, "app");

    let report = ws.bk(&["restore-test", "app", "--json"]).ok().json();
    assert_eq!(report["status"], "passed", "{report}");
    assert_eq!(report["backup_id"], id.as_str());
    assert_eq!(report["tables_checked"], 3, "{report}");
    assert_eq!(report["rows_restored"], 1200, "{report}");
    assert_eq!(report["checks"].as_array().map(Vec::len), Some(2));
    assert!(report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .all(|c| c["passed"] == true));
    assert!(
        scratch_databases("app").is_empty(),
        "{:?}",
        scratch_databases("app")
    );
    let status = ws.bk(&["status", "--json"]).ok().json();
    let job = &status["jobs"][0];
    assert_eq!(job["last_restore_test"]["status"], "passed", "{job}");
    assert_eq!(job["last_restore_test"]["backup_id"], id.as_str());

    // A failing SQL check fails the test, names the check, and still drops the database.
    let mut ws_check = ws_sharing_repo(&ws);
    ws_check.add(&pg_job(
        &ws,
        "app",
        "rt_app",
        "checks = [\"SELECT count(*) = 200 FROM users\", \"SELECT count(*) > 5000 FROM orders\"]",
    ));
    let reason = failing_test(&ws_check, "app");
    assert!(
        reason.contains("SELECT count(*) > 5000 FROM orders") && reason.contains("`f`"),
        "{reason}"
    );
    assert!(
        scratch_databases("app").is_empty(),
        "{:?}",
        scratch_databases("app")
    );

    // A check that errors fails too, with PostgreSQL's message.
    let mut ws_error = ws_sharing_repo(&ws);
    ws_error.add(&pg_job(
        &ws,
        "app",
        "rt_app",
        "checks = [\"SELECT count(*) > 0 FROM no_such_table\"]",
    ));
    let reason = failing_test(&ws_error, "app");
    assert!(reason.contains("no_such_table"), "{reason}");

    // Operators restore into a named database with the same code.
    let restored = format!(
        "postgresql://postgres@127.0.0.1:{}/rt_app_restored",
        pg.primary_port
    );
    let identity = ws.identity.display().to_string();
    ws.bk(&[
        "restore",
        "app",
        "latest",
        "--identity",
        &identity,
        "--pg-target",
        &restored,
    ])
    .ok();
    assert_eq!(
        pg.row_counts(false, "rt_app_restored"),
        pg.row_counts(false, "rt_app")
    );
    assert_eq!(
        pg.primary(
            "rt_app_restored",
            "SELECT tableowner FROM pg_tables WHERE tablename = 'audit'"
        ),
        "rt_owner",
        "owners are restored when the roles exist"
    );
    // The database exists now: a second restore into it is refused, nothing changed.
    let again = ws
        .bk(&[
            "restore",
            "app",
            "latest",
            "--identity",
            &identity,
            "--pg-target",
            &restored,
        ])
        .fails_with(1);
    assert!(again.stderr.contains("already exists"), "{}", again.stderr);

    // A table whose row count differs from the manifest's (exact counts) fails.
    let keep = tamper::snapshot(&ws.backup_dir("app", &id));
    tamper::edit_manifest_header(&ws, "app", &id, |h| {
        h["details"]["row_counts"]["public.orders"] = serde_json::json!(999);
    });
    let reason = failing_test(&ws, "app");
    assert!(
        reason.contains("row counts differ")
            && reason.contains("public.orders: 1000 restored, 999 recorded"),
        "{reason}"
    );
    assert!(
        scratch_databases("app").is_empty(),
        "{:?}",
        scratch_databases("app")
    );
    tamper::restore_snapshot(&keep, &ws.backup_dir("app", &id));

    // The role that owns a table disappears from the target server: the test says so
    // and restores without owners, or fails when roles are required.
    pg.primary("postgres", "DROP DATABASE rt_app_restored");
    pg.primary("rt_app", "ALTER TABLE audit OWNER TO postgres");
    pg.primary("postgres", "DROP ROLE rt_owner");
    let report = ws.bk(&["restore-test", "app", "--json"]).ok().json();
    let notes = report["notes"].to_string();
    assert!(
        notes.contains("rt_owner") && notes.contains("without owners"),
        "{report}"
    );
    let mut ws_roles = ws_sharing_repo(&ws);
    ws_roles.add(&pg_job(&ws, "app", "rt_app", "require_roles = true"));
    let reason = failing_test(&ws_roles, "app");
    assert!(reason.contains("rt_owner"), "{reason}");
    assert!(
        scratch_databases("app").is_empty(),
        "{:?}",
        scratch_databases("app")
    );
}

/// A second workspace over the same repository and identity, with its own catalog
/// and config (to change a job's restore test without touching the first).
fn ws_sharing_repo(ws: &Workspace) -> Workspace {
    let mut other = Workspace::new();
    other.identity = ws.identity.clone();
    other.recipient = ws.recipient.clone();
    other.set_repository(&format!("file://{}", ws.repo_dir().display()), "");
    other
}

#[test]
fn a_directory_restore_test_passes_on_the_awkward_tree_and_sabotage_fails_it() {
    let mut ws = Workspace::new();
    let src = ws.path().join("src");
    tree::awkward(&src, 3 << 20);
    let scratch = ws.path().join("scratch");
    ws.add(&format!(
        "[jobs.media]\nkind = \"directory\"\npath = \"{}\"\n[jobs.media.restore_test]\nidentity = \"{}\"\ntarget = \"{}\"\n",
        src.display(),
        ws.identity.display(),
        scratch.display()
    ));
    ws.bk(&["run", "media"]).ok();
    let id = only_backup(&ws, "media");
    let report = ws.bk(&["restore-test", "media", "--json"]).ok().json();
    assert_eq!(report["status"], "passed", "{report}");
    let entries = report["entries_checked"].as_u64().unwrap_or(0);
    assert!(entries >= 15, "{report}");
    assert!(
        scratch_dirs(&scratch).is_empty(),
        "{:?}",
        scratch_dirs(&scratch)
    );

    let dir = ws.backup_dir("media", &id);
    let keep = tamper::snapshot(&dir);
    let payload = dir.join("payload.age");
    let payload_size = std::fs::metadata(&payload).unwrap().len();
    let key = format!("backups/media/{id}/payload.age");

    // A flipped byte in the payload.
    tamper::flip_byte(&payload, (payload_size / 2) as i64);
    let reason = failing_test(&ws, "media");
    assert!(
        reason.contains(&key) && reason.contains("damaged"),
        "{reason}"
    );
    assert!(
        scratch_dirs(&scratch).is_empty(),
        "{:?}",
        scratch_dirs(&scratch)
    );
    tamper::restore_snapshot(&keep, &dir);

    // A truncated payload.
    tamper::truncate(&payload, payload_size - 1000);
    let reason = failing_test(&ws, "media");
    assert!(reason.contains(&key), "{reason}");
    assert!(scratch_dirs(&scratch).is_empty());
    tamper::restore_snapshot(&keep, &dir);

    // A payload missing a file (re-encrypted consistently: only the content lies).
    tamper::reseal(&ws, "media", &id, "payload", |tar| {
        sh(&format!(
            "tar --delete -f {} './name with spaces.txt'",
            tar.display()
        ));
    });
    let reason = failing_test(&ws, "media");
    assert!(reason.contains("name with spaces.txt"), "{reason}");
    assert!(scratch_dirs(&scratch).is_empty());
    tamper::restore_snapshot(&keep, &dir);

    // The wrong restore identity: one whose recipient the backup was not encrypted to.
    let stranger = ws.path().join("stranger.age");
    ws.bk(&["keygen", "--output", &stranger.display().to_string()])
        .ok();
    let mut ws_wrong = ws_sharing_repo(&ws);
    ws_wrong.add(&format!(
        "[jobs.media]\nkind = \"directory\"\npath = \"{}\"\n[jobs.media.restore_test]\nidentity = \"{}\"\ntarget = \"{}\"\n",
        src.display(),
        stranger.display(),
        scratch.display()
    ));
    let reason = failing_test(&ws_wrong, "media");
    assert!(
        reason.contains("cannot decrypt") && reason.contains("repository.recipients"),
        "{reason}"
    );

    // The pristine backup passes again: nothing above damaged it for good.
    ws.bk(&["restore-test", "media"]).ok();
    let tests = ws.bk(&["status", "--json"]).ok().json();
    assert_eq!(
        tests["jobs"][0]["last_restore_test"]["status"], "passed",
        "{tests}"
    );
}

#[test]
fn a_restore_test_killed_mid_way_leaves_no_scratch_database_after_the_next_start() {
    let pg = cluster();
    pg.create_database(
        "rt_big",
        "CREATE TABLE big AS SELECT g AS id, md5(g::text) || md5((g + 1)::text) AS pad \
         FROM generate_series(1, 1500000) g;",
    );
    let mut ws = Workspace::new();
    ws.add(&pg_job(&ws, "big", "rt_big", ""));
    ws.bk(&["run", "big"]).ok();

    let mut child = Command::new(bk_path())
        .arg("--config")
        .arg(&ws.config)
        .args(["restore-test", "big"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start bk restore-test");
    let started = Instant::now();
    while scratch_databases("big").is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no scratch database appeared"
        );
        assert!(
            child.try_wait().expect("poll").is_none(),
            "the restore test ended before it could be killed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // pg_restore is loading the big table now: kill bk the hard way.
    std::thread::sleep(Duration::from_millis(300));
    child.kill().expect("kill -9");
    child.wait().expect("reap");
    // pg_restore dies of the closed pipe; its database stays behind until bk cleans up.
    let left = scratch_databases("big");
    assert_eq!(left.len(), 1, "{left:?}");

    // The next start of a restore test removes it and records the killed test.
    let report = ws.bk(&["restore-test", "big", "--json"]).ok().json();
    assert_eq!(report["status"], "passed");
    assert!(
        scratch_databases("big").is_empty(),
        "{:?}",
        scratch_databases("big")
    );
    let db = rusqlite::Connection::open(ws.catalog()).expect("catalog");
    let (status, reason): (String, String) = db
        .query_row(
            "SELECT status, reason FROM restore_tests ORDER BY id LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .expect("first test row");
    assert_eq!(status, "interrupted");
    assert!(
        reason.contains(&left[0]) && reason.contains("removed"),
        "{reason}"
    );
}

#[test]
fn the_daemon_runs_restore_tests_on_schedule_with_metrics_alerts_and_cleanup() {
    let pg = cluster();
    pg.create_database(
        "rt_sched",
        "CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t SELECT generate_series(1, 50);",
    );
    let hooks = Receiver::start();
    let port = free_port();
    let mut ws = Workspace::new();
    let src = ws.path().join("src");
    tree::awkward(&src, 0);
    let scratch = ws.path().join("scratch");
    ws.add(&server_section(port, "5s"));
    ws.add(&format!("[alerts]\nwebhook = \"{}/hook\"\n", hooks.url));
    ws.add(&pg_job(
        &ws,
        "nightly",
        "rt_sched",
        "schedule = \"0 6 * * 0\"\nchecks = [\"SELECT count(*) = 50 FROM t\"]",
    ));
    ws.add(&format!(
        "[jobs.media]\nkind = \"directory\"\npath = \"{}\"\n[jobs.media.restore_test]\nidentity = \"{}\"\ntarget = \"{}\"\nschedule = \"0 6 * * 0\"\n",
        src.display(),
        ws.identity.display(),
        scratch.display()
    ));
    ws.bk(&["run", "nightly"]).ok();
    ws.bk(&["run", "media"]).ok();
    let media_id = only_backup(&ws, "media");
    tamper::flip_byte(&ws.backup_dir("media", &media_id).join("payload.age"), -100);

    // Old tests make both due at start (catch-up); a test killed long ago left a
    // scratch directory that the start must remove.
    let leftover = scratch.join("bk-restore-test-media-1-0000beef");
    std::fs::create_dir_all(leftover.join("half/restored")).expect("leftover");
    {
        let db = rusqlite::Connection::open(ws.catalog()).expect("catalog");
        for job in ["nightly", "media"] {
            db.execute(
                "INSERT INTO restore_tests (job, started, finished, status, trigger, writer, pid)
                 VALUES (?1, '2020-01-01T00:00:00+00:00', '2020-01-01T00:05:00+00:00', 'passed', 'seed', 'test', 0)",
                [job],
            )
            .expect("seed test");
        }
        let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .expect("hostname")
            .trim()
            .to_string();
        db.execute(
            "INSERT INTO restore_tests (job, started, status, trigger, writer, pid, scratch)
             VALUES ('media', '2020-01-02T00:00:00+00:00', 'running', 'schedule', ?1, 999999999, ?2)",
            [
                hostname,
                serde_json::json!({"kind": "directory", "path": leftover}).to_string(),
            ],
        )
        .expect("seed interrupted test");
    }

    let d = Daemon::start(&ws, port);
    let alert = hooks.wait_for(Duration::from_secs(90), "the restore-test alert", |r| {
        r.path == "/hook" && r.body.contains("restore_test_failed")
    });
    let body: serde_json::Value = serde_json::from_str(&alert.body).expect("alert JSON");
    assert_eq!(body["job"], "media", "{body}");
    assert_eq!(body["backup"], media_id.as_str(), "{body}");
    assert!(
        body["error"].as_str().unwrap_or("").contains("damaged"),
        "{body}"
    );
    assert!(
        !leftover.exists(),
        "the interrupted test's scratch was removed"
    );

    let status = wait_for(Duration::from_secs(90), "both restore tests", || {
        let s = d.status();
        let done = s["jobs"].as_array()?.iter().all(|j| {
            j["last_restore_test"]["trigger"] == "schedule"
                && j["last_restore_test"]["status"] != "running"
        });
        done.then_some(s)
    });
    let by_job = |name: &str| {
        status["jobs"]
            .as_array()
            .and_then(|a| a.iter().find(|j| j["job"] == name))
            .cloned()
            .expect("job in status")
    };
    assert_eq!(by_job("nightly")["last_restore_test"]["status"], "passed");
    assert_eq!(by_job("media")["last_restore_test"]["status"], "failed");
    assert!(by_job("nightly")["next_restore_test"].is_string());

    let (code, text) = d.get("/metrics");
    assert_eq!(code, 200);
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
        .expect("Prometheus text");
    let value = |job: &str, status: &str| {
        scrape
            .samples
            .iter()
            .find(|s| {
                s.metric == "bk_restore_test_last_status"
                    && s.labels.get("job") == Some(job)
                    && s.labels.get("status") == Some(status)
            })
            .map(|s| match s.value {
                prometheus_parse::Value::Gauge(v) | prometheus_parse::Value::Untyped(v) => v,
                _ => f64::NAN,
            })
    };
    assert_eq!(value("nightly", "passed"), Some(1.0), "{text}");
    assert_eq!(value("media", "failed"), Some(1.0), "{text}");
    assert!(
        scratch_databases("nightly").is_empty(),
        "{:?}",
        scratch_databases("nightly")
    );
    assert!(
        scratch_dirs(&scratch).is_empty(),
        "{:?}",
        scratch_dirs(&scratch)
    );
    let db = rusqlite::Connection::open(ws.catalog()).expect("catalog");
    let interrupted: i64 = db
        .query_row(
            "SELECT count(*) FROM restore_tests WHERE status = 'interrupted' AND pid = 999999999",
            [],
            |r| r.get(0),
        )
        .expect("count");
    assert_eq!(interrupted, 1);
}

/// Row counts are counted in the dump's own data, so they are exact without pausing
/// replay, and they are each table's own rows: an inheritance parent without its
/// children, partitions and no partitioned parent, values with newlines and
/// backslashes counted once, no data for an unlogged table (which a standby cannot
/// dump). The restore test compares the restored database table by table.
#[test]
fn row_counts_come_from_the_dump_itself_and_hold_for_every_kind_of_table() {
    let pg = cluster();
    pg.create_database(
        "rt_shapes",
        "CREATE SCHEMA billing;
         CREATE TABLE billing.notes (id int, body text);
         INSERT INTO billing.notes SELECT g, CASE WHEN g % 3 = 0 THEN E'two\\nlines\\\\.' ELSE E'\\\\.' END
           FROM generate_series(1, 3000) g;
         CREATE TABLE parent (x int);
         CREATE TABLE child () INHERITS (parent);
         INSERT INTO parent VALUES (1), (2);
         INSERT INTO child VALUES (3), (4), (5);
         CREATE TABLE parted (x int) PARTITION BY RANGE (x);
         CREATE TABLE parted_low PARTITION OF parted FOR VALUES FROM (0) TO (100);
         CREATE TABLE parted_high PARTITION OF parted FOR VALUES FROM (100) TO (1000);
         INSERT INTO parted SELECT g FROM generate_series(0, 149) g;
         CREATE TABLE \"Empty Table\" (x int);
         CREATE UNLOGGED TABLE scratch (x int);
         INSERT INTO scratch VALUES (1);
         SELECT lo_from_bytea(0, convert_to(E'a\\nlarge\\nobject\\n', 'UTF8'));",
    );
    let mut ws = Workspace::new();
    ws.add(&format!(
        "[jobs.shapes]\nkind = \"postgres\"\ndatabase = \"rt_shapes\"\nconninfo = \"{}\"\n\
         [jobs.shapes.restore_test]\nidentity = \"{}\"\ntarget = \"{}\"\n",
        cluster().conninfo(true),
        ws.identity.display(),
        target_url()
    ));
    ws.bk(&["run", "shapes"]).ok();
    let id = only_backup(&ws, "shapes");
    let manifest = bk_e2e::tamper::decrypt(&ws, &ws.backup_dir("shapes", &id).join("manifest.age"));
    let text = std::fs::read_to_string(&manifest).expect("manifest");
    let header: serde_json::Value =
        serde_json::from_str(text.lines().next().expect("a header")).expect("json");
    let details = &header["details"];
    assert_eq!(
        details["row_counts"],
        serde_json::json!({
            "billing.notes": 3000,
            "public.Empty Table": 0,
            "public.child": 3,
            "public.parent": 2,
            "public.parted_high": 50,
            "public.parted_low": 100,
        }),
        "{details}"
    );
    assert_eq!(details["row_counts_exact"], true, "{details}");
    assert_eq!(details["row_counts_from"], "dump", "{details}");

    let report = ws.bk(&["restore-test", "shapes", "--json"]).ok().json();
    assert_eq!(report["status"], "passed", "{report}");
    // Six tables with data in the dump, and the unlogged one, restored empty.
    assert_eq!(report["tables_checked"], 7, "{report}");
    assert_eq!(report["rows_restored"], 3155, "{report}");

    // A changed count fails the test, naming the table, though replay was never paused.
    tamper::edit_manifest_header(&ws, "shapes", &id, |h| {
        h["details"]["row_counts"]["public.child"] = serde_json::json!(4);
    });
    let reason = failing_test(&ws, "shapes");
    assert!(
        reason.contains("public.child: 3 restored, 4 recorded"),
        "{reason}"
    );
    assert!(scratch_databases("shapes").is_empty());
}
