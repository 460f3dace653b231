//! docs/disaster-recovery.md, run exactly as written. A directory job and a postgres
//! job (a real replica over SSH) are backed up; then the backup server is "lost": its
//! configuration and catalog are deleted, and the database is dropped. Each `sh` block
//! of the page is run in order, as `bash -e -o pipefail`, from an empty directory, with
//! only what the page says an operator has: the identity, the saved `[repository]`
//! section, the repository, and `PG*` pointing at a PostgreSQL server. The procedure
//! without bk runs with a PATH holding nothing but the stock tools it names.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use bk_e2e::postgres::cluster;
use bk_e2e::sshd::Sshd;
use bk_e2e::{bin_dir, require_tool, run, tree, Workspace};

const DOC: &str = include_str!("../../docs/disaster-recovery.md");

const APP: &str = "CREATE TABLE customers (id int PRIMARY KEY, name text NOT NULL);
INSERT INTO customers SELECT g, 'customer ' || g FROM generate_series(1, 1500) g;
CREATE SCHEMA billing;
CREATE TABLE billing.invoices (id bigserial PRIMARY KEY, customer int REFERENCES customers, total numeric(10,2));
INSERT INTO billing.invoices (customer, total) SELECT 1 + g % 1500, g * 1.25 FROM generate_series(1, 8000) g;";

/// The `sh` blocks under the `## ` heading that starts with `heading`.
fn blocks(heading: &str) -> Vec<String> {
    let (_, rest) = DOC
        .split_once(&format!("\n## {heading}"))
        .unwrap_or_else(|| panic!("no section `## {heading}` in docs/disaster-recovery.md"));
    let section = rest.split("\n## ").next().unwrap_or(rest);
    let mut out = Vec::new();
    let mut parts = section.split("\n```");
    parts.next();
    while let Some(block) = parts.next() {
        if let Some(code) = block.strip_prefix("sh\n") {
            out.push(code.to_string());
        }
        parts.next(); // the prose after the closing fence
    }
    assert!(!out.is_empty(), "no sh blocks under `## {heading}`");
    out
}

/// Runs every block in `dir`, in order, each as `bash -e -o pipefail`.
fn run_steps(steps: &[String], dir: &Path, env: &BTreeMap<&str, String>) {
    for (i, step) in steps.iter().enumerate() {
        let out = run(Command::new("/bin/bash")
            .args(["-e", "-o", "pipefail", "-c", step])
            .current_dir(dir)
            .env_clear()
            .envs(env));
        assert_eq!(
            out.code,
            0,
            "step {} failed (exit {}):\n{step}\nstdout:\n{}\nstderr:\n{}",
            i + 1,
            out.code,
            out.stdout,
            out.stderr
        );
    }
}

/// A directory of symlinks to exactly `tools`: a PATH with nothing else on it.
fn only_tools(dir: &Path, tools: &[&str]) -> PathBuf {
    let bin = dir.join("bin");
    fs::create_dir_all(&bin).unwrap();
    for tool in tools {
        require_tool(tool);
        let found = run(Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {tool}")))
        .ok()
        .stdout;
        std::os::unix::fs::symlink(found.trim(), bin.join(tool)).unwrap();
    }
    bin
}

#[test]
fn both_recovery_procedures_restore_everything_exactly_as_documented() {
    for tool in ["age", "zstd", "tar", "pg_restore", "jq"] {
        require_tool(tool);
    }
    let pg = cluster();
    let sshd = Sshd::shared();
    let mut ws = Workspace::new();
    let uploads = ws.path().join("uploads");
    tree::awkward(&uploads, 2 << 20);
    pg.create_database("app", APP);
    // The least-privilege role README.md and docs/sources.md give pg_dump.
    pg.primary(
        "postgres",
        "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'bk_backup') \
         THEN CREATE ROLE bk_backup LOGIN; END IF; END $$; GRANT pg_read_all_data TO bk_backup;",
    );
    pg.wait_caught_up();
    let counts = pg.row_counts(false, "app");
    assert_eq!(counts.len(), 2);
    ws.add(&sshd.host_toml("db"));
    ws.add(&format!(
        "[jobs.uploads]\nkind = \"directory\"\npath = \"{}\"\n\n\
         [jobs.app-db]\nhost = \"db\"\nkind = \"postgres\"\ndatabase = \"app\"\nconninfo = \"{}\"\n",
        uploads.display(),
        pg.conninfo(true).replace("user=postgres", "user=bk_backup")
    ));
    ws.bk(&["run", "uploads"]).ok();
    ws.bk(&["run", "app-db"]).ok();

    // What the operator kept offline: the identity and the [repository] section.
    let offline = tempfile::tempdir().unwrap();
    let identity = offline.path().join("bk-identity.age");
    fs::copy(&ws.identity, &identity).unwrap();
    let config = fs::read_to_string(&ws.config).unwrap();
    let section = config.split("\n[catalog]").next().unwrap().to_string();
    assert!(section.starts_with("[repository]") && !section.contains("[jobs"));
    let section_file = offline.path().join("bk-repository.toml");
    fs::write(&section_file, &section).unwrap();
    // The disaster: the server's configuration and catalog are gone, and so is the database.
    for f in [
        "bk.toml",
        "catalog.db",
        "catalog.db-wal",
        "catalog.db-shm",
        "identity.age",
    ] {
        let _ = fs::remove_file(ws.path().join(f));
    }
    pg.primary("postgres", "DROP DATABASE app");

    let mut env: BTreeMap<&str, String> = BTreeMap::from([
        ("HOME", offline.path().display().to_string()),
        ("BK_IDENTITY", identity.display().to_string()),
        ("PGHOST", "127.0.0.1".to_string()),
        ("PGPORT", pg.primary_port.to_string()),
        ("PGUSER", "postgres".to_string()),
    ]);

    // 1. With bk, from nothing but the saved section and the identity.
    let with_bk = tempfile::tempdir().unwrap();
    let mut steps = blocks("What you need");
    steps.extend(blocks("With bk"));
    env.insert(
        "PATH",
        format!("{}:/usr/local/bin:/usr/bin:/bin", bin_dir().display()),
    );
    env.insert("BK_REPOSITORY_SECTION", section_file.display().to_string());
    run_steps(&steps, with_bk.path(), &env);
    assert_eq!(
        tree::snapshot(&uploads),
        tree::snapshot(&with_bk.path().join("uploads"))
    );
    assert_eq!(pg.row_counts(false, "app"), counts);
    let catalog = rusqlite::Connection::open(with_bk.path().join("catalog.db")).unwrap();
    let rebuilt: i64 = catalog
        .query_row("SELECT count(*) FROM backups", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rebuilt, 2, "catalog rebuild found both backups");

    // 2. Without bk: a PATH with only the stock tools the page names (and ls, cat, jq).
    pg.primary("postgres", "DROP DATABASE app");
    let stock = tempfile::tempdir().unwrap();
    let bin = only_tools(
        stock.path(),
        &[
            "age",
            "zstd",
            "tar",
            "pg_restore",
            "jq",
            "ls",
            "cat",
            "dirname",
            "tail",
            "mkdir",
        ],
    );
    let work = stock.path().join("work");
    fs::create_dir(&work).unwrap();
    env.insert("PATH", bin.display().to_string());
    env.remove("BK_REPOSITORY_SECTION");
    env.insert("BK_REPO", ws.repo_dir().display().to_string());
    let mut steps = blocks("What you need");
    steps.extend(blocks("Without bk"));
    assert!(
        steps.iter().all(|s| !s.contains("bk ")),
        "the stock procedure uses bk"
    );
    run_steps(&steps, &work, &env);
    assert_eq!(
        tree::snapshot(&uploads),
        tree::snapshot(&work.join("uploads"))
    );
    assert_eq!(pg.row_counts(false, "app"), counts);
    let globals = fs::read_to_string(work.join("globals.sql")).unwrap();
    assert!(globals.contains("CREATE ROLE postgres"), "{globals}");
}

#[test]
fn config_check_sees_the_replica_and_refuses_a_primary() {
    let pg = cluster();
    let mut ws = Workspace::new();
    ws.add(&Sshd::shared().host_toml("db"));
    ws.add(&format!(
        "[jobs.replica]\nhost = \"db\"\nkind = \"postgres\"\ndatabase = \"postgres\"\nconninfo = \"{}\"\n\n\
         [jobs.primary]\nhost = \"db\"\nkind = \"postgres\"\ndatabase = \"postgres\"\nconninfo = \"{}\"\n",
        pg.conninfo(true),
        pg.conninfo(false)
    ));
    let out = ws.bk(&["config", "check"]).fails_with(1);
    let text = &out.stdout;
    assert!(text.contains("ok    host db"), "{text}");
    assert!(text.contains("pg_dump (PostgreSQL)"), "{text}");
    assert!(
        text.contains("a replica (pg_is_in_recovery() = true)"),
        "{text}"
    );
    assert!(
        text.contains("FAIL  job primary") && text.contains("pg_is_in_recovery() is false"),
        "{text}"
    );
    assert!(
        text.contains(
            "fix: point conninfo at the hot-standby replica, or set allow_primary = true"
        ),
        "{text}"
    );
    assert!(
        out.stderr.contains("1 check(s) failed: job primary"),
        "{}",
        out.stderr
    );
}
