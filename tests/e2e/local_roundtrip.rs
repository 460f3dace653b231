//! The foundation scenarios on the embedded defaults (local host, local repository):
//! round trips of awkward trees, interop with the stock age/zstd/tar tools, damage
//! and wrong keys detected, failed sources never committed, memory bounded.

use std::fs;
use std::path::Path;

use bk_e2e::{require_tool, sh, tree, Workspace};

fn directory_job(ws: &mut Workspace, name: &str, path: &Path) {
    ws.add(&format!(
        "[jobs.{name}]\nkind = \"directory\"\npath = \"{}\"\n",
        path.display()
    ));
}

fn only_backup(ws: &Workspace, job: &str) -> String {
    let ids = ws.backup_ids(job);
    assert_eq!(
        ids.len(),
        1,
        "expected exactly one backup of {job}: {ids:?}"
    );
    ids[0].clone()
}

#[test]
fn awkward_tree_round_trips_exactly() {
    let mut ws = Workspace::new();
    let src = ws.path().join("src");
    tree::awkward(&src, 101 << 20);
    directory_job(&mut ws, "media", &src);
    ws.bk(&["run", "media"]).ok();
    let id = only_backup(&ws, "media");

    let verified = ws
        .bk(&[
            "restore",
            "media",
            &id,
            "--identity",
            ws.identity.to_str().unwrap(),
            "--verify",
        ])
        .ok();
    assert!(
        verified
            .stdout
            .contains("entries checked against the manifest"),
        "{}",
        verified.stdout
    );

    let out = ws.path().join("restored");
    ws.bk(&[
        "restore",
        "media",
        "latest",
        "--identity",
        ws.identity.to_str().unwrap(),
        "--to",
        out.to_str().unwrap(),
    ])
    .ok();
    assert_eq!(tree::snapshot(&src), tree::snapshot(&out));

    // A restore never mixes with existing files.
    let again = ws.bk(&[
        "restore",
        "media",
        "--identity",
        ws.identity.to_str().unwrap(),
        "--to",
        out.to_str().unwrap(),
    ]);
    assert!(again.fails_with(1).stderr.contains("not empty"));
}

#[test]
fn payload_and_manifest_open_with_stock_tools() {
    require_tool("age");
    require_tool("zstd");
    let mut ws = Workspace::new();
    let src = ws.path().join("src");
    tree::awkward(&src, 0);
    directory_job(&mut ws, "media", &src);
    ws.bk(&["run", "media"]).ok();
    let id = only_backup(&ws, "media");
    let dir = ws.backup_dir("media", &id);
    let key = ws.identity.display();

    let listing = sh(&format!(
        "age -d -i {key} {}/payload.age | zstd -d | tar tvf -",
        dir.display()
    ));
    for name in [
        "./a/b/c/d/deep.txt",
        "./empty file",
        "./ünïcødé/日本語/ファイル.json",
        "./link to deep -> a/b/c/d/deep.txt",
    ] {
        assert!(listing.contains(name), "{name} missing from:\n{listing}");
    }
    let extracted = ws.path().join("by-hand");
    fs::create_dir(&extracted).unwrap();
    sh(&format!(
        "age -d -i {key} {}/payload.age | zstd -d | tar -x -p -C {} -f -",
        dir.display(),
        extracted.display()
    ));
    assert_eq!(tree::snapshot(&src), tree::snapshot(&extracted));

    let manifest = sh(&format!(
        "age -d -i {key} {}/manifest.age | zstd -d",
        dir.display()
    ));
    let header: serde_json::Value = serde_json::from_str(manifest.lines().next().unwrap()).unwrap();
    assert_eq!(header["backup_id"], id.as_str());
    assert_eq!(header["job"], "media");
    assert_eq!(
        header["entries"].as_u64().unwrap() as usize,
        manifest.lines().count() - 1
    );

    let commit: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(dir.join("commit.json")).unwrap()).unwrap();
    assert_eq!(
        commit["payload"]["size"].as_u64().unwrap(),
        fs::metadata(dir.join("payload.age")).unwrap().len()
    );
    let text = fs::read_to_string(dir.join("commit.json")).unwrap();
    assert!(
        !text.contains("deep.txt"),
        "the plaintext commit record leaks file names"
    );
}

#[test]
fn damage_and_wrong_keys_are_named() {
    let mut ws = Workspace::new();
    let src = ws.path().join("src");
    tree::awkward(&src, 3 << 20);
    directory_job(&mut ws, "media", &src);
    ws.bk(&["run", "media"]).ok();
    let id = only_backup(&ws, "media");
    let dir = ws.backup_dir("media", &id);
    let identity = ws.identity.to_str().unwrap().to_string();
    let verify =
        |ws: &Workspace| ws.bk(&["restore", "media", &id, "--identity", &identity, "--verify"]);
    verify(&ws).ok();

    // A flipped byte anywhere in the payload (header, middle, last chunk).
    let payload = dir.join("payload.age");
    let original = fs::read(&payload).unwrap();
    for at in [10, original.len() / 2, original.len() - 5] {
        let mut bytes = original.clone();
        bytes[at] ^= 0x01;
        fs::write(&payload, &bytes).unwrap();
        let out = verify(&ws).fails_with(1);
        assert!(
            out.stderr.contains("payload.age") && out.stderr.contains("damaged"),
            "flip at {at}: {}",
            out.stderr
        );
    }
    // Truncated.
    fs::write(&payload, &original[..original.len() - 1000]).unwrap();
    let out = verify(&ws).fails_with(1);
    assert!(
        out.stderr.contains("payload.age") && out.stderr.contains("truncated"),
        "{}",
        out.stderr
    );
    fs::write(&payload, &original).unwrap();
    verify(&ws).ok();

    // A flipped byte in the manifest.
    let manifest = dir.join("manifest.age");
    let original_manifest = fs::read(&manifest).unwrap();
    let mut bytes = original_manifest.clone();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x80;
    fs::write(&manifest, &bytes).unwrap();
    let out = verify(&ws).fails_with(1);
    assert!(
        out.stderr.contains("manifest.age") && out.stderr.contains("damaged"),
        "{}",
        out.stderr
    );
    fs::write(&manifest, &original_manifest).unwrap();

    // The wrong identity.
    let other = ws.path().join("other.age");
    bk_e2e::run(std::process::Command::new(bk_e2e::bk_path()).args([
        "keygen",
        "--output",
        other.to_str().unwrap(),
    ]))
    .ok();
    let out = ws
        .bk(&[
            "restore",
            "media",
            &id,
            "--identity",
            other.to_str().unwrap(),
            "--verify",
        ])
        .fails_with(1);
    assert!(out.stderr.contains("wrong identity"), "{}", out.stderr);

    // No commit record: not a backup, for list and restore alike.
    fs::remove_file(dir.join("commit.json")).unwrap();
    assert!(ws.backup_ids("media").is_empty());
    let out = verify(&ws).fails_with(1);
    assert!(
        out.stderr.contains(&id) && out.stderr.contains("no backup"),
        "{}",
        out.stderr
    );
}

#[test]
fn a_failing_source_commits_nothing_and_keeps_earlier_backups() {
    let mut ws = Workspace::new();
    let marker = ws.path().join("fail-now");
    ws.add(&format!(
        "[jobs.dump]\nkind = \"command\"\ncommand = \"head -c 3000000 /dev/urandom; if [ -e {} ]; then echo 'pg_dump: error: connection lost' >&2; exit 3; fi\"\n",
        marker.display()
    ));
    ws.bk(&["run", "dump"]).ok();
    let good = only_backup(&ws, "dump");
    let objects_before = sh(&format!("find {} -type f | sort", ws.repo_dir().display()));

    fs::write(&marker, "").unwrap();
    let out = ws.bk(&["run", "dump"]).fails_with(1);
    assert!(out.stderr.contains("exit status 3"), "{}", out.stderr);
    assert!(
        out.stderr.contains("pg_dump: error: connection lost"),
        "{}",
        out.stderr
    );

    assert_eq!(ws.backup_ids("dump"), vec![good.clone()]);
    let objects_after = sh(&format!("find {} -type f | sort", ws.repo_dir().display()));
    assert_eq!(
        objects_before, objects_after,
        "the failed run left objects behind"
    );
    ws.bk(&[
        "restore",
        "dump",
        &good,
        "--identity",
        ws.identity.to_str().unwrap(),
        "--verify",
    ])
    .ok();

    let status = ws.bk(&["status", "--json"]).ok().json();
    let job = status["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["job"] == "dump")
        .unwrap()
        .clone();
    assert_eq!(job["last_run"]["status"], "failed");
    assert!(job["last_run"]["error"]
        .as_str()
        .unwrap()
        .contains("connection lost"));
    assert_eq!(job["last_good_backup"]["backup_id"], good.as_str());
}

#[test]
fn tar_exit_one_is_a_warning_and_other_tar_errors_fail() {
    let mut ws = Workspace::new();
    // A log file that grows while tar reads it: GNU tar says "file changed as we read
    // it" and exits 1. The backup is good, the warning is recorded.
    let src = ws.path().join("live");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("app.log"), vec![b'x'; 64 << 20]).unwrap();
    let mut writer = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "while :; do echo more >> {}/app.log; done",
            src.display()
        ))
        .spawn()
        .unwrap();
    directory_job(&mut ws, "live", &src);
    let out = ws.bk(&["run", "live"]);
    writer.kill().unwrap();
    writer.wait().unwrap();
    let out = out.ok();
    assert!(
        out.stdout.contains("warning:") && out.stdout.contains("file changed as we read it"),
        "{}",
        out.stdout
    );
    let id = only_backup(&ws, "live");
    let manifest = sh(&format!(
        "age -d -i {} {}/manifest.age | zstd -d | head -n 1",
        ws.identity.display(),
        ws.backup_dir("live", &id).display()
    ));
    assert!(
        manifest.contains("file changed as we read it"),
        "{manifest}"
    );
    ws.bk(&[
        "restore",
        "live",
        &id,
        "--identity",
        ws.identity.to_str().unwrap(),
        "--verify",
    ])
    .ok();

    // A directory that does not exist: tar exits 2, a failed backup naming the path.
    ws.add("[jobs.missing]\nkind = \"directory\"\npath = \"/nonexistent/bk-test\"\n");
    let out = ws.bk(&["run", "missing"]).fails_with(1);
    assert!(
        out.stderr.contains("/nonexistent/bk-test"),
        "{}",
        out.stderr
    );
    assert!(ws.backup_ids("missing").is_empty());
}

#[test]
fn bad_configuration_exits_2_naming_the_key() {
    let ws = Workspace::new();
    fs::write(&ws.config, "[repository]\nurl = \"file:///tmp/x\"\nrecipients = []\n[jobs.x]\nkind = \"directory\"\nschedul = \"1\"\n").unwrap();
    let out = ws.bk(&["list"]).fails_with(2);
    assert!(
        out.stderr.contains("line 6") && out.stderr.contains("schedul"),
        "{}",
        out.stderr
    );
    fs::write(&ws.config, "[repository]\nurl = \"file:///tmp/x\"\nrecipients = [\"age1bogus\"]\n[jobs.x]\nkind = \"directory\"\n").unwrap();
    let out = ws.bk(&["config", "check"]).fails_with(2);
    assert!(
        out.stderr.contains("recipients[0]") && out.stderr.contains("needs `path`"),
        "{}",
        out.stderr
    );
}

#[test]
fn backup_of_a_2_gib_stream_stays_under_200_mib() {
    let mut ws = Workspace::new();
    // Half incompressible, half text-like: zstd works, age works, memory must not grow.
    ws.add("[jobs.big]\nkind = \"command\"\ncommand = \"head -c 1073741824 /dev/urandom; yes 'bk streams, it never buffers a dump' | head -c 1073741824\"\n");
    let out = ws.bk(&["run", "big", "--json"]).ok();
    let report = out.json();
    assert_eq!(report["source_size"].as_u64(), Some(2 << 30));
    let rss_mib = out.max_rss_kib / 1024;
    eprintln!("peak RSS of `bk run` over a 2 GiB stream: {rss_mib} MiB");
    assert!(rss_mib < 200, "peak RSS {rss_mib} MiB");
    let id = only_backup(&ws, "big");
    let out = ws
        .bk(&[
            "restore",
            "big",
            &id,
            "--identity",
            ws.identity.to_str().unwrap(),
            "--verify",
        ])
        .ok();
    let rss_mib = out.max_rss_kib / 1024;
    eprintln!("peak RSS of `bk restore --verify` over a 2 GiB stream: {rss_mib} MiB");
    assert!(rss_mib < 200, "peak RSS {rss_mib} MiB");
}
