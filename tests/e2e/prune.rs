//! Retention as an operator uses it: `bk prune --dry-run` says what would go and why
//! each survivor stays, `bk prune` removes exactly that (commit record and objects),
//! and the daemon prunes after a good backup.

use std::time::Duration;

use bk_e2e::daemon::{commit_records, free_port, seed_past_run, server_section, wait_for, Daemon};
use bk_e2e::Workspace;

#[test]
fn prune_dry_run_explains_and_prune_removes_the_rest() {
    let mut ws = Workspace::new();
    ws.add("[jobs.notes]\nkind = \"command\"\ncommand = \"date +%s%N\"\nretention = { keep_last = 2 }\n");
    for _ in 0..4 {
        ws.bk(&["run", "notes"]).ok();
    }
    let all = ws.backup_ids("notes");
    assert_eq!(all.len(), 4);

    let dry = ws
        .bk(&["prune", "notes", "--dry-run", "--json"])
        .ok()
        .json();
    let decisions = dry[0]["decisions"].as_array().expect("decisions").clone();
    assert_eq!(decisions.len(), 4);
    let kept: Vec<&str> = decisions
        .iter()
        .filter(|d| d["keep"] == true)
        .map(|d| d["id"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(kept, vec![all[0].as_str(), all[1].as_str()]);
    assert!(
        decisions[0]["reasons"].to_string().contains("newest"),
        "{}",
        decisions[0]
    );
    assert!(
        decisions[1]["reasons"].to_string().contains("last"),
        "{}",
        decisions[1]
    );
    assert_eq!(ws.backup_ids("notes").len(), 4, "a dry run removes nothing");
    let text = ws.bk(&["prune", "notes", "--dry-run"]).ok().stdout;
    assert!(text.contains("would remove 2"), "{text}");

    ws.bk(&["prune", "notes"]).ok();
    assert_eq!(ws.backup_ids("notes"), all[..2].to_vec());
    assert_eq!(commit_records(&ws, "notes").len(), 2);
    for gone in &all[2..] {
        assert!(!ws.backup_dir("notes", gone).join("payload.age").exists());
    }
    // Survivors still restore.
    ws.bk(&[
        "restore",
        "notes",
        &all[1],
        "--identity",
        ws.identity.to_str().unwrap_or(""),
        "--verify",
    ])
    .ok();
    // A job without retention is a usage error.
    ws.add("[jobs.plain]\nkind = \"command\"\ncommand = \"echo x\"\n");
    ws.bk(&["prune", "plain"]).fails_with(2);
}

#[test]
fn the_daemon_prunes_after_a_good_backup() {
    let port = free_port();
    let mut ws = Workspace::new();
    ws.add(&server_section(port, "5s"));
    ws.add("[jobs.notes]\nkind = \"command\"\ncommand = \"date +%s%N\"\nschedule = \"0 2 * * *\"\nretention = { keep_last = 1 }\n");
    ws.bk(&["run", "notes"]).ok();
    ws.bk(&["run", "notes"]).ok();
    seed_past_run(&ws, "notes"); // the newest run is now long ago: catch-up runs at start
    let d = Daemon::start(&ws, port);
    wait_for(
        Duration::from_secs(30),
        "the daemon's run of `notes`",
        || {
            let status = d.status();
            let job = status["jobs"]
                .as_array()?
                .iter()
                .find(|j| j["job"] == "notes")?
                .clone();
            (job["last_run"]["trigger"] == "schedule" && job["last_run"]["status"] == "success")
                .then_some(())
        },
    );
    d.wait_for_log("pruned by retention", Duration::from_secs(10));
    let ids = ws.backup_ids("notes");
    assert_eq!(ids.len(), 1, "{ids:?}");
    assert_eq!(commit_records(&ws, "notes").len(), 1);
}
