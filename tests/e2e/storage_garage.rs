//! Garage, for real: a store that accepts `If-None-Match: *` and overwrites anyway. bk
//! must notice (and say so in `bk status`), still never lose or overwrite a committed
//! backup, and keep backing up when one node of a three-node cluster dies mid-upload.
//! `bk gc` finds and aborts unfinished multipart uploads (Garage checks signatures and
//! reports real start times, which moto does not).

use std::process::{Command, Stdio};
use std::time::Duration;

use bk_e2e::garage::Garage;
use bk_e2e::{bk_path, Workspace};

fn command_job(ws: &mut Workspace, name: &str, bytes: u64) {
    ws.add(&format!(
        "[jobs.{name}]\nkind = \"command\"\ncommand = \"head -c {half} /dev/urandom; yes 'row,42,text' | head -c {half}\"\n",
        half = bytes / 2
    ));
}

#[test]
fn unenforced_create_only_writes_are_detected_and_no_backup_is_lost() {
    let garage = Garage::start(1);
    let mut ws = Workspace::new();
    garage.use_in(&mut ws, 0, "prod");
    command_job(&mut ws, "db", 8 << 20);
    let first = ws.bk(&["run", "db"]).ok();
    assert!(
        first.stderr.contains("ignores create-only writes"),
        "no warning:\n{}",
        first.stderr
    );
    // Two backup servers (own config, catalog and key) backing up the same job into
    // the same repository at once: both backups survive, distinct and intact.
    let mut other = Workspace::new();
    garage.use_in(&mut other, 0, "prod");
    command_job(&mut other, "db", 8 << 20);
    let spawn = |w: &Workspace| {
        Command::new(bk_path())
            .args([
                "--config",
                w.config.to_str().unwrap(),
                "run",
                "db",
                "--json",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn(&ws), spawn(&other));
    let mut ran = Vec::new();
    for (w, child) in [(&ws, a), (&other, b)] {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        ran.push((w, report["backup_id"].as_str().unwrap().to_string()));
    }
    let ids = ws.backup_ids("db");
    assert_eq!(ids.len(), 3, "{ids:?}");
    for (w, id) in &ran {
        assert!(ids.contains(id));
        w.bk(&[
            "restore",
            "db",
            id,
            "--identity",
            w.identity.to_str().unwrap(),
            "--verify",
        ])
        .ok();
    }
    ws.bk(&[
        "restore",
        "db",
        &ids[2],
        "--identity",
        ws.identity.to_str().unwrap(),
        "--verify",
    ])
    .ok();
    let status = ws.bk(&["status", "--json"]).ok().json();
    assert_eq!(
        status["repository"]["create_only"], "not_enforced",
        "{status}"
    );
    ws.bk(&["verify"]).ok();
}

#[test]
fn a_backup_completes_when_one_of_three_nodes_dies_mid_upload() {
    let mut garage = Garage::start(3);
    let mut ws = Workspace::new();
    garage.use_in(&mut ws, 0, "");
    command_job(&mut ws, "big", 300 << 20);
    let child = Command::new(bk_path())
        .args(["--config", ws.config.to_str().unwrap(), "run", "big"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    garage.kill_node(2);
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ids = ws.backup_ids("big");
    assert_eq!(ids.len(), 1);
    ws.bk(&[
        "restore",
        "big",
        &ids[0],
        "--identity",
        ws.identity.to_str().unwrap(),
        "--verify",
    ])
    .ok();
}

#[test]
fn gc_aborts_an_unfinished_upload_once_older_than_the_grace() {
    let garage = Garage::start(1);
    let mut ws = Workspace::new();
    garage.use_in(&mut ws, 0, "prod");
    command_job(&mut ws, "db", 1 << 20);
    ws.bk(&["run", "db"]).ok();
    let bucket = &garage.bucket;
    let key = "prod/backups/db/20261130T010000.000Z-0000000000000000/payload.age";
    garage.python(&format!(
        "u = s3.create_multipart_upload(Bucket='{bucket}', Key='{key}')\n\
         s3.upload_part(Bucket='{bucket}', Key='{key}', UploadId=u['UploadId'], PartNumber=1, Body=b'x' * 1024)\n\
         s3.create_multipart_upload(Bucket='{bucket}', Key='elsewhere/backups/db/1/payload.age')"
    ));
    let open = || {
        let out = garage.python(&format!(
            "for u in s3.list_multipart_uploads(Bucket='{bucket}').get('Uploads', []):\n    print(u['Key'])"
        ));
        let mut keys: Vec<String> = out.lines().map(String::from).collect();
        keys.sort();
        keys
    };
    assert_eq!(open().len(), 2);
    // Started a moment ago: younger than the default grace (24h), left alone.
    let kept = ws.bk(&["gc", "--json"]).ok().json();
    assert_eq!(kept["aborted_uploads"].as_array().map(Vec::len), Some(0));
    assert_eq!(
        kept["kept_recent"],
        serde_json::json!([
            "backups/db/20261130T010000.000Z-0000000000000000/payload.age (unfinished upload)"
        ])
    );
    let report = ws.bk(&["gc", "--grace", "0s", "--json"]).ok().json();
    let aborted = report["aborted_uploads"]
        .as_array()
        .expect("aborted_uploads");
    assert_eq!(aborted.len(), 1, "{report}");
    assert_eq!(
        aborted[0]["key"],
        "backups/db/20261130T010000.000Z-0000000000000000/payload.age"
    );
    assert_eq!(open(), ["elsewhere/backups/db/1/payload.age"]);
    ws.bk(&["verify"]).ok();
}
