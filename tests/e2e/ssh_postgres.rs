//! Pulling over SSH from a real sshd (and, further down, from a real PostgreSQL
//! primary and hot-standby replica): remote directory and command jobs round trip
//! with the same manifest as local ones; host key, login and dropped-connection
//! failures are clear and commit nothing; the source user's home stays empty.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bk_e2e::sshd::{self, Sshd};
use bk_e2e::{bk_path, require_tool, sh, tree, Workspace};

/// A directory the source user can read (the workspace itself is root's, mode 0700).
fn source_dir(ws: &Workspace, name: &str) -> std::path::PathBuf {
    fs::set_permissions(ws.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let dir = ws.path().join(name);
    fs::create_dir_all(&dir).unwrap();
    dir
}

fn give_to_source_user(path: &Path) {
    sh(&format!(
        "chown -R {}: '{}'",
        sshd::SOURCE_USER,
        path.display()
    ));
}

fn decrypted_manifest(ws: &Workspace, job: &str, id: &str) -> Vec<serde_json::Value> {
    require_tool("age");
    require_tool("zstd");
    let text = sh(&format!(
        "age -d -i {} {}/manifest.age | zstd -d",
        ws.identity.display(),
        ws.backup_dir(job, id).display()
    ));
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn remote_directory_round_trips_with_the_same_manifest_as_a_local_one() {
    let sshd = Sshd::shared();
    let mut ws = Workspace::new();
    let src = source_dir(&ws, "media");
    tree::awkward(&src, 3 << 20);
    give_to_source_user(&src);
    ws.add(&sshd.host_toml("web1"));
    ws.add(&format!(
        "[jobs.remote]\nhost = \"web1\"\nkind = \"directory\"\npath = \"{p}\"\n\n\
         [jobs.here]\nkind = \"directory\"\npath = \"{p}\"\n",
        p = src.display()
    ));
    ws.bk(&["run", "remote"]).ok();
    ws.bk(&["run", "here"]).ok();
    let remote = ws.backup_ids("remote");
    assert_eq!(remote.len(), 1);
    let identity = ws.identity.to_str().unwrap();
    ws.bk(&[
        "restore",
        "remote",
        "latest",
        "--identity",
        identity,
        "--verify",
    ])
    .ok();
    let out = ws.path().join("restored");
    ws.bk(&[
        "restore",
        "remote",
        "--identity",
        identity,
        "--to",
        out.to_str().unwrap(),
    ])
    .ok();
    assert_eq!(tree::snapshot(&src), tree::snapshot(&out));

    let remote_manifest = decrypted_manifest(&ws, "remote", &remote[0]);
    let local_manifest = decrypted_manifest(&ws, "here", &ws.backup_ids("here")[0]);
    assert_eq!(remote_manifest[0]["host"], "web1");
    assert_eq!(
        remote_manifest[0]["source_blake3"],
        local_manifest[0]["source_blake3"]
    );
    assert_eq!(
        remote_manifest[1..],
        local_manifest[1..],
        "entries differ between SSH and local"
    );
    assert!(remote_manifest[0]["tool_versions"]["directory"]
        .as_str()
        .unwrap()
        .contains("tar"));

    // Nothing of bk's is left on the source: no keys, no credentials, no files.
    assert_eq!(
        sshd::home_listing(&sshd::keys().home),
        vec!["./.ssh", "./.ssh/authorized_keys"]
    );
}

#[test]
fn remote_command_failures_carry_exit_status_and_stderr() {
    let sshd = Sshd::shared();
    let mut ws = Workspace::new();
    ws.add(&sshd.host_toml("box"));
    ws.add(
        "[jobs.bad]\nhost = \"box\"\nkind = \"command\"\ncommand = \"echo partial; echo 'disk on fire' >&2; exit 3\"\n\n\
         [jobs.missing]\nhost = \"box\"\nkind = \"command\"\ncommand = \"no-such-dump-tool --all\"\n\n\
         [jobs.good]\nhost = \"box\"\nkind = \"command\"\ncommand = \"printf 'hello from %s' $(id -un)\"\n",
    );
    let out = ws.bk(&["run", "bad"]).fails_with(1);
    assert!(
        out.stderr.contains("exit status 3") && out.stderr.contains("disk on fire"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("`box`"), "{}", out.stderr);
    let out = ws.bk(&["run", "missing"]).fails_with(1);
    assert!(
        out.stderr.contains("exit status 127") && out.stderr.contains("not found"),
        "{}",
        out.stderr
    );
    assert!(ws.backup_ids("bad").is_empty() && ws.backup_ids("missing").is_empty());

    ws.bk(&["run", "good"]).ok();
    let restored = ws
        .bk(&[
            "restore",
            "good",
            "--identity",
            ws.identity.to_str().unwrap(),
            "--stdout",
        ])
        .ok();
    assert_eq!(restored.stdout, format!("hello from {}", sshd::SOURCE_USER));
}

#[test]
fn a_connection_killed_mid_stream_fails_the_run_and_commits_nothing() {
    let sshd = Sshd::start();
    let mut ws = Workspace::new();
    let marker_dir = source_dir(&ws, "flags");
    let quick = marker_dir.join("quick");
    ws.add(&sshd.host_toml("src"));
    // Streams ~1 MB every 0.2 s for a minute, unless the marker exists.
    ws.add(&format!(
        "[jobs.stream]\nhost = \"src\"\nkind = \"command\"\n\
         command = \"if test -e {q}; then head -c 100000 /dev/urandom; else for i in $(seq 300); do head -c 1000000 /dev/urandom; sleep 0.2; done; fi\"\n",
        q = quick.display()
    ));
    let mut child = Command::new(bk_path())
        .args(["--config", ws.config.to_str().unwrap(), "run", "stream"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the dump is flowing, then cut the server side of the connection.
    let started = Instant::now();
    while sshd.connection_pids().is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "bk never connected:\n{}",
            sshd.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(3));
    assert!(sshd.kill_connections() > 0);
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "bk did not notice the dropped connection"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("`src`") && stderr.contains("dropped"),
        "{stderr}"
    );
    assert!(
        ws.backup_ids("stream").is_empty(),
        "a cut stream was committed"
    );

    fs::write(&quick, "").unwrap();
    ws.bk(&["run", "stream"]).ok();
    assert_eq!(ws.backup_ids("stream").len(), 1);
}

#[test]
fn a_changed_or_unknown_host_key_is_refused_naming_the_host() {
    let sshd = Sshd::shared();
    let mut ws = Workspace::new();
    let real_fp = sh(&format!(
        "ssh-keygen -lf {}.pub",
        sshd::keys().host_key.display()
    ));
    let real_fp = real_fp.split_whitespace().nth(1).unwrap().to_string();
    // A known_hosts entry for this host:port with some other key.
    let other = ws.path().join("other_host_key");
    sh(&format!(
        "ssh-keygen -q -t ed25519 -N '' -f {}",
        other.display()
    ));
    let other_pub = fs::read_to_string(other.with_extension("pub")).unwrap();
    let mut parts = other_pub.split_whitespace();
    let changed = ws.path().join("changed_known_hosts");
    fs::write(
        &changed,
        format!(
            "[127.0.0.1]:{} {} {}\n",
            sshd.port,
            parts.next().unwrap(),
            parts.next().unwrap()
        ),
    )
    .unwrap();
    let empty = ws.path().join("empty_known_hosts");
    fs::write(&empty, "").unwrap();
    let host = |name: &str, known_hosts: &Path| {
        sshd.host_toml(name).replace(
            &format!("known_hosts = \"{}\"", sshd.known_hosts.display()),
            &format!("known_hosts = \"{}\"", known_hosts.display()),
        )
    };
    ws.add(&host("moved", &changed));
    ws.add(&host("stranger", &empty));
    ws.add("[jobs.a]\nhost = \"moved\"\nkind = \"command\"\ncommand = \"echo hi\"\n");
    ws.add("[jobs.b]\nhost = \"stranger\"\nkind = \"command\"\ncommand = \"echo hi\"\n");

    let out = ws.bk(&["run", "a"]).fails_with(1);
    assert!(
        out.stderr.contains("host `moved`") && out.stderr.contains("NOT the one"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains(&real_fp),
        "the fingerprint seen ({real_fp}) is not named:\n{}",
        out.stderr
    );
    let out = ws.bk(&["run", "b"]).fails_with(1);
    assert!(
        out.stderr.contains("host `stranger`") && out.stderr.contains("not in"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains(&real_fp),
        "the fingerprint seen ({real_fp}) is not named:\n{}",
        out.stderr
    );
    assert_eq!(
        fs::read_to_string(&empty).unwrap(),
        "",
        "an unknown key was trusted on first use"
    );
    assert!(ws.backup_ids("a").is_empty() && ws.backup_ids("b").is_empty());
}

#[test]
fn a_wrong_user_or_key_is_a_clear_login_error() {
    let sshd = Sshd::shared();
    let mut ws = Workspace::new();
    let stray = ws.path().join("stray_key");
    sh(&format!(
        "ssh-keygen -q -t ed25519 -N '' -f {}",
        stray.display()
    ));
    let base = sshd.host_toml("h");
    ws.add(&base.replace("[hosts.h]", "[hosts.wronguser]").replace(
        &format!("user = \"{}\"", sshd::SOURCE_USER),
        "user = \"nobody-like-this\"",
    ));
    ws.add(&base.replace("[hosts.h]", "[hosts.wrongkey]").replace(
        &format!("key = \"{}\"", sshd.client_key.display()),
        &format!("key = \"{}\"", stray.display()),
    ));
    ws.add("[jobs.u]\nhost = \"wronguser\"\nkind = \"command\"\ncommand = \"echo hi\"\n");
    ws.add("[jobs.k]\nhost = \"wrongkey\"\nkind = \"command\"\ncommand = \"echo hi\"\n");
    let out = ws.bk(&["run", "u"]).fails_with(1);
    assert!(
        out.stderr.contains("host `wronguser`") && out.stderr.contains("refused the login"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("nobody-like-this"), "{}", out.stderr);
    let out = ws.bk(&["run", "k"]).fails_with(1);
    assert!(
        out.stderr.contains("host `wrongkey`") && out.stderr.contains("refused the login"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("stray_key"), "{}", out.stderr);
}
