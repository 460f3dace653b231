//! Object storage for real: bk against an S3 server (moto) on loopback. Uploads that
//! cannot lie (a paused store fails the run, nothing half-written is committed, no
//! multipart upload is left open once `bk gc` ran), key-less scrubs naming the damaged
//! key, catalog rebuilt from the bucket alone, and memory bounded while the store stalls.

use std::process::Command;
use std::time::Duration;

use bk_e2e::s3::{self, S3Server};
use bk_e2e::{bk_path, Workspace};

fn command_job(ws: &mut Workspace, name: &str, bytes: u64) {
    ws.add(&format!(
        "[jobs.{name}]\nkind = \"command\"\ncommand = \"head -c {half} /dev/urandom; yes 'row,42,some text' | head -c {half}\"\n",
        half = bytes / 2
    ));
}

#[test]
fn backup_to_s3_restores_and_scrubs_clean() {
    let server = &S3Server::start();
    server.create_bucket("roundtrip");
    let mut ws = Workspace::new();
    s3::use_s3(&mut ws, server, "roundtrip", "team/bk");
    command_job(&mut ws, "db", 300 << 20);
    let report = ws.bk(&["run", "db", "--json"]).ok().json();
    assert_eq!(report["source_size"].as_u64(), Some(300 << 20));
    let id = report["backup_id"].as_str().unwrap().to_string();

    let keys = server.keys("roundtrip", "");
    assert!(
        keys.contains(&format!("team/bk/backups/db/{id}/commit.json")),
        "{keys:?}"
    );
    assert!(
        keys.contains(&"team/bk/bk-repository.json".to_string()),
        "{keys:?}"
    );
    assert_eq!(server.open_multipart_uploads("roundtrip"), 0);

    assert_eq!(ws.backup_ids("db"), vec![id.clone()]);
    ws.bk(&[
        "restore",
        "db",
        &id,
        "--identity",
        ws.identity.to_str().unwrap(),
        "--verify",
    ])
    .ok();
    let scrub = ws.bk(&["verify", "--json"]).ok().json();
    assert_eq!(scrub["checked"], 1);
    assert_eq!(scrub["damaged"], 0);
    // moto enforces If-None-Match like AWS, and bk status says so.
    let status = ws.bk(&["status", "--json"]).ok().json();
    assert_eq!(status["repository"]["create_only"], "enforced", "{status}");
    // The credentials never show up in what bk prints.
    for out in [
        ws.bk(&["run", "db"]).ok(),
        ws.bk(&["status", "--json"]).ok(),
    ] {
        assert!(!out.stdout.contains(s3::SECRET_KEY) && !out.stderr.contains(s3::SECRET_KEY));
    }
}

#[test]
fn a_corrupted_object_is_named_by_verify_and_fails_restore() {
    let server = &S3Server::start();
    server.create_bucket("tamper");
    let mut ws = Workspace::new();
    s3::use_s3(&mut ws, server, "tamper", "");
    command_job(&mut ws, "db", 4 << 20);
    ws.bk(&["run", "db"]).ok();
    ws.bk(&["run", "db"]).ok();
    let ids = ws.backup_ids("db");
    let (newest, older) = (&ids[0], &ids[1]);
    let key = format!("backups/db/{newest}/payload.age");
    server.corrupt("tamper", &key);

    let out = ws.bk(&["verify", "--json"]).fails_with(1);
    let scrub = out.json();
    assert_eq!(scrub["checked"], 2);
    assert_eq!(scrub["damaged"], 1);
    let damaged: Vec<_> = scrub["backups"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["ok"] == false)
        .collect();
    assert_eq!(damaged[0]["backup_id"], newest.as_str());
    assert_eq!(damaged[0]["damage"][0]["key"], key.as_str());
    let human = ws.bk(&["verify"]).fails_with(1);
    assert!(
        human.stdout.contains(&key) && human.stderr.contains(newest.as_str()),
        "{human:?}"
    );

    let out = ws
        .bk(&[
            "restore",
            "db",
            newest,
            "--identity",
            ws.identity.to_str().unwrap(),
            "--verify",
        ])
        .fails_with(1);
    assert!(
        out.stderr.contains(&key) && out.stderr.contains("damaged"),
        "{}",
        out.stderr
    );
    // The older backup is untouched.
    ws.bk(&[
        "restore",
        "db",
        older,
        "--identity",
        ws.identity.to_str().unwrap(),
        "--verify",
    ])
    .ok();
}

#[test]
fn the_catalog_rebuilds_from_the_bucket_alone() {
    let server = &S3Server::start();
    server.create_bucket("rebuild");
    let mut ws = Workspace::new();
    s3::use_s3(&mut ws, server, "rebuild", "x");
    command_job(&mut ws, "a", 1 << 20);
    command_job(&mut ws, "b", 1 << 20);
    for job in ["a", "b", "a"] {
        ws.bk(&["run", job]).ok();
    }
    let status_before = ws.bk(&["status", "--json"]).ok().json();
    let list_before = ws.bk(&["list", "--json"]).ok().stdout;
    std::fs::remove_file(ws.catalog()).unwrap();
    let _ = std::fs::remove_file(ws.catalog().with_extension("db-wal"));
    let _ = std::fs::remove_file(ws.catalog().with_extension("db-shm"));
    ws.bk(&["catalog", "rebuild"]).ok();
    let status_after = ws.bk(&["status", "--json"]).ok().json();
    for i in 0..2 {
        assert_eq!(
            status_before["jobs"][i]["last_good_backup"],
            status_after["jobs"][i]["last_good_backup"],
            "job {i} after rebuild"
        );
    }
    assert_eq!(list_before, ws.bk(&["list", "--json"]).ok().stdout);
}

#[test]
fn a_store_that_stops_answering_fails_the_run_and_commits_nothing() {
    let server = S3Server::start();
    server.create_bucket("outage");
    let mut ws = Workspace::new();
    s3::use_s3(&mut ws, &server, "outage", "");
    command_job(&mut ws, "db", 2 << 20);
    ws.bk(&["run", "db"]).ok();
    let good = ws.backup_ids("db");
    command_job(&mut ws, "big", 400 << 20);

    let child = Command::new(bk_path())
        .args(["--config", ws.config.to_str().unwrap(), "run", "big"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The store stops answering in the middle of the upload.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while server.open_multipart_uploads("outage") == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the upload never started"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_millis(500));
    server.pause();
    let out = child.wait_with_output().unwrap();
    server.resume();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("job `big`") && stderr.contains("backups/big/"),
        "{stderr}"
    );

    assert!(ws.backup_ids("big").is_empty());
    assert_eq!(ws.backup_ids("db"), good);
    let status = ws.bk(&["status", "--json"]).ok().json();
    let big = status["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["job"] == "big")
        .unwrap()
        .clone();
    assert_eq!(big["last_run"]["status"], "failed");

    // Back up again once the store answers; then gc leaves no uncommitted object and no
    // unfinished upload (the failed run's abort could not reach the paused store).
    ws.bk(&["run", "big"]).ok();
    ws.bk(&["gc", "--grace", "0s"]).ok();
    for key in server.keys("outage", "backups/") {
        let dir = key.rsplit_once('/').unwrap().0;
        let commit = format!("{dir}/commit.json");
        assert!(
            server.keys("outage", &commit).contains(&commit),
            "uncommitted object left: {key}"
        );
    }
    assert_eq!(
        server.open_multipart_uploads("outage"),
        0,
        "a multipart upload was left open"
    );
    ws.bk(&["verify"]).ok();
}

#[test]
fn memory_stays_bounded_while_the_store_stalls() {
    let server = S3Server::start();
    server.create_bucket("slow");
    let mut ws = Workspace::new();
    // A request timeout well above the stalls: what is tested is memory while the
    // store does not answer, not a timeout (the outage test covers that).
    s3::use_s3_with_timeout(&mut ws, &server, "slow", "", "120s");
    command_job(&mut ws, "big", 1 << 30);
    let stalls = std::thread::spawn({
        let pid = server.pid();
        move || {
            for _ in 0..4 {
                std::thread::sleep(Duration::from_millis(2500));
                unsafe { libc::kill(pid, libc::SIGSTOP) };
                std::thread::sleep(Duration::from_millis(2000));
                unsafe { libc::kill(pid, libc::SIGCONT) };
            }
        }
    });
    let out = ws.bk(&["run", "big", "--json"]).ok();
    stalls.join().unwrap();
    let rss = out.max_rss_kib / 1024;
    eprintln!("peak RSS of a 1 GiB backup to a stalling S3 server: {rss} MiB");
    assert!(rss < 200, "peak RSS {rss} MiB");
}

#[test]
fn gc_aborts_unfinished_uploads_once_older_than_the_grace() {
    let server = S3Server::start();
    server.create_bucket("leftovers");
    let mut ws = Workspace::new();
    s3::use_s3(&mut ws, &server, "leftovers", "team/bk");
    command_job(&mut ws, "db", 1 << 20);
    ws.bk(&["run", "db"]).ok();
    let good = ws.backup_ids("db");
    // What failed runs leave (one with a part), and beside them uploads bk must not
    // touch: elsewhere in the repository and outside its prefix.
    server.python(
        "for i in range(3):\n    s3.create_multipart_upload(Bucket='leftovers', Key=f'team/bk/backups/db/20261130T0000{i:04d}Z-0/payload.age')\n\
         u = s3.create_multipart_upload(Bucket='leftovers', Key='team/bk/backups/db/20261130T0100Z-0/manifest.age')\n\
         s3.upload_part(Bucket='leftovers', Key='team/bk/backups/db/20261130T0100Z-0/manifest.age', UploadId=u['UploadId'], PartNumber=1, Body=b'x' * 1024)\n\
         for key in ['team/bk/elsewhere/x', 'other/backups/db/1/payload.age']:\n    s3.create_multipart_upload(Bucket='leftovers', Key=key)",
    );
    assert_eq!(server.open_multipart_uploads("leftovers"), 6);

    // Younger than the grace: left alone, and said so. (moto reports every upload as
    // started on 2010-11-10, so the grace that keeps them is counted in years.)
    let kept = ws.bk(&["gc", "--grace", "30years", "--json"]).ok().json();
    assert_eq!(kept["aborted_uploads"].as_array().map(Vec::len), Some(0));
    let recent = kept["kept_recent"].as_array().expect("kept_recent");
    assert_eq!(recent.len(), 4, "{kept}");
    assert!(recent.contains(&serde_json::json!(
        "backups/db/20261130T0100Z-0/manifest.age (unfinished upload)"
    )));
    assert_eq!(server.open_multipart_uploads("leftovers"), 6);

    let dry = ws
        .bk(&["gc", "--grace", "0s", "--dry-run", "--json"])
        .ok()
        .json();
    assert_eq!(dry["aborted_uploads"].as_array().map(Vec::len), Some(4));
    let report = ws.bk(&["gc", "--grace", "0s"]).ok();
    assert!(
        report.stdout.contains("aborted 4 unfinished upload(s)")
            && report.stdout.contains(
                "aborted the unfinished upload of backups/db/20261130T0100Z-0/manifest.age"
            ),
        "{}",
        report.stdout
    );
    let left = server.python(
        "for u in s3.list_multipart_uploads(Bucket='leftovers').get('Uploads', []):\n    print(u['Key'])",
    );
    let mut left: Vec<&str> = left.lines().collect();
    left.sort();
    assert_eq!(
        left,
        ["other/backups/db/1/payload.age", "team/bk/elsewhere/x"]
    );
    assert_eq!(ws.backup_ids("db"), good);
    ws.bk(&["verify"]).ok();
    // Nothing left to abort: a second gc finds nothing.
    let again = ws.bk(&["gc", "--grace", "0s", "--json"]).ok().json();
    assert_eq!(again["aborted_uploads"].as_array().map(Vec::len), Some(0));
}
