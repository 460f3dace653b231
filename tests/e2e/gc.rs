//! Leftovers of failed or crashed backups: `bk gc` and the daemon at start remove
//! uncommitted objects older than the grace period, never a committed backup and never
//! an upload that may still be running on another server (younger than the grace).

use std::fs;
use std::time::Duration;

use bk_e2e::daemon::{server_section, wait_for, Daemon};
use bk_e2e::{free_port, sh, Workspace};

const OLD_ID: &str = "20200101T000000.000Z-00000000000000aa";
const STAGED_ID: &str = "20200101T000000.000Z-00000000000000bb";
const RECENT_ID: &str = "20991231T000000.000Z-00000000000000cc";

/// One committed backup, plus an old uncommitted payload, an old staging file of an
/// interrupted local upload, and a fresh uncommitted payload.
fn repository_with_leftovers(ws: &mut Workspace) -> String {
    ws.add("[jobs.db]\nkind = \"command\"\ncommand = \"head -c 2000000 /dev/urandom\"\n");
    ws.bk(&["run", "db"]).ok();
    let committed = ws.backup_ids("db").remove(0);
    for (id, name) in [
        (OLD_ID, "payload.age"),
        (STAGED_ID, "payload.age#3"),
        (RECENT_ID, "payload.age"),
    ] {
        let dir = ws.backup_dir("db", id);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(name), b"half a payload").unwrap();
    }
    for id in [OLD_ID, STAGED_ID] {
        sh(&format!(
            "touch -d '3 days ago' {}/*",
            ws.backup_dir("db", id).display()
        ));
    }
    committed
}

fn exists(ws: &Workspace, id: &str, name: &str) -> bool {
    ws.backup_dir("db", id).join(name).exists()
}

#[test]
fn gc_removes_only_old_uncommitted_objects() {
    let mut ws = Workspace::new();
    let committed = repository_with_leftovers(&mut ws);

    let dry = ws.bk(&["gc", "--dry-run", "--json"]).ok().json();
    let removed: Vec<String> = dry["removed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap().to_string())
        .collect();
    assert!(removed.iter().any(|k| k.contains(OLD_ID)), "{removed:?}");
    assert!(removed.iter().any(|k| k.contains(STAGED_ID)), "{removed:?}");
    assert!(
        !removed
            .iter()
            .any(|k| k.contains(RECENT_ID) || k.contains(&committed)),
        "{removed:?}"
    );
    assert!(
        exists(&ws, OLD_ID, "payload.age"),
        "--dry-run removed something"
    );

    ws.bk(&["gc"]).ok();
    assert!(!exists(&ws, OLD_ID, "payload.age"));
    assert!(!exists(&ws, STAGED_ID, "payload.age#3"));
    assert!(
        exists(&ws, RECENT_ID, "payload.age"),
        "an upload younger than the grace period was removed"
    );
    assert_eq!(ws.backup_ids("db"), vec![committed.clone()]);
    ws.bk(&[
        "restore",
        "db",
        &committed,
        "--identity",
        ws.identity.to_str().unwrap(),
        "--verify",
    ])
    .ok();

    // With no grace at all, the fresh leftover goes too; the committed backup stays.
    ws.bk(&["gc", "--grace", "0s"]).ok();
    assert!(!exists(&ws, RECENT_ID, "payload.age"));
    ws.bk(&["verify"]).ok();
}

#[test]
fn the_daemon_sweeps_leftovers_at_start() {
    let mut ws = Workspace::new();
    let committed = repository_with_leftovers(&mut ws);
    let port = free_port();
    ws.add(&server_section(port, "5s"));
    let daemon = Daemon::start(&ws, port);
    daemon.wait_for_log("removed uncommitted leftovers", Duration::from_secs(30));
    wait_for(Duration::from_secs(10), "the old leftovers to go", || {
        (!exists(&ws, OLD_ID, "payload.age") && !exists(&ws, STAGED_ID, "payload.age#3"))
            .then_some(())
    });
    assert!(exists(&ws, RECENT_ID, "payload.age"));
    assert_eq!(ws.backup_ids("db"), vec![committed]);
}
