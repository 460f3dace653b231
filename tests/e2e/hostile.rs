//! A compromised source host and a compromised backup server, played for real.
//!
//! The source: a `directory` job runs `tar` on the source host, and a compromised host
//! can put any program there. Here bk runs with a PATH whose first entry holds such a
//! `tar`: whatever it is asked to archive, it sends one of the crafted archives of
//! tests/data/hostile/ (made by make.py there). The backup is committed (the server
//! does not judge content), and then `bk restore --verify` and `bk restore --to` must
//! refuse it, naming the entry, and write nothing outside the target directory.
//!
//! The server: it holds the recipients, so it can forge a whole backup (payload,
//! manifest, commit record) that decrypts fine; an absurd size in it is refused before
//! a byte is written. And a source that streams for ever, slowly for ever, or not at
//! all, is cut off by max_size, timeout and stall_timeout, with nothing committed.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use bk_e2e::{bk_path, require_tool, run, sh, Outcome, Workspace};

/// Archive, the entry a restore must name, and the words of its refusal.
const REFUSED: &[(&str, &str, &str)] = &[
    (
        "absolute_path",
        "/tmp/bk-hostile-absolute",
        "the path is absolute",
    ),
    ("dotdot_path", "./../bk-hostile-dotdot", "contains `..`"),
    (
        "symlink_absolute",
        "./evil/bk-hostile-symlink-absolute",
        "written through the symlink `evil`",
    ),
    (
        "symlink_climbs_out",
        "./dir/evil/bk-hostile-climbs-out",
        "written through the symlink `dir/evil`",
    ),
    (
        "symlink_chain",
        "./up/bk-hostile-chain",
        "written through the symlink `up`",
    ),
    (
        "symlink_write_through",
        "./alias/owned",
        "written through the symlink `alias`",
    ),
    ("hardlink_absolute", "./passwd", "the path is absolute"),
    ("hardlink_dotdot", "./outside", "contains `..`"),
    (
        "hardlink_through_symlink",
        "./h",
        "goes through the symlink `alias`",
    ),
    ("device_char", "./null", "device nodes are not restored"),
    ("device_block", "./sda", "device nodes are not restored"),
    ("fifo", "./pipe", "not restored"),
];

/// Symlinks of the archives above that point outside: restored as links (never
/// followed), each named in a warning.
const OUTWARD_LINKS: &[(&str, &str)] = &[
    ("symlink_absolute", "./evil"),
    ("symlink_climbs_out", "./dir/evil"),
    ("symlink_chain", "./up"),
];

fn archive(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("data/hostile")
        .join(format!("{name}.tar"))
}

/// A directory of the compromised source's programs: a `tar` that answers
/// `--version` like GNU tar and otherwise sends the file named by `--directory=`
/// (the job's `path`) as its archive.
fn compromised_bin(ws: &Workspace) -> PathBuf {
    let bin = ws.path().join("compromised-bin");
    fs::create_dir_all(&bin).unwrap();
    let tar = bin.join("tar");
    fs::write(
        &tar,
        "#!/bin/sh\nfor a in \"$@\"; do\n  case \"$a\" in\n    --version) echo 'tar (GNU tar) 1.34'; exit 0;;\n    --directory=*) exec cat \"${a#--directory=}\";;\n  esac\ndone\nexit 2\n",
    )
    .unwrap();
    fs::set_permissions(&tar, fs::Permissions::from_mode(0o755)).unwrap();
    bin
}

/// `bk run JOB` with the compromised programs first on PATH.
fn run_compromised(ws: &Workspace, bin: &Path, job: &str) -> Outcome {
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    run(Command::new(bk_path())
        .env("PATH", path)
        .arg("--config")
        .arg(&ws.config)
        .args(["run", job]))
}

fn restore(ws: &Workspace, job: &str, how: &[&str]) -> Outcome {
    let mut args = vec![
        "restore",
        job,
        "latest",
        "--identity",
        ws.identity.to_str().unwrap(),
    ];
    args.extend_from_slice(how);
    ws.bk(&args)
}

/// Every file and link under `dir`, except restore targets (`restored-*`).
fn listing(dir: &Path) -> String {
    sh(&format!(
        "cd {} && find . -path './restored-*' -prune -o -print | sort",
        dir.display()
    ))
}

fn committed_objects(ws: &Workspace) -> String {
    sh(&format!(
        "find {} -type f | sort",
        ws.repo_dir().join("backups").display()
    ))
}

#[test]
fn every_crafted_archive_is_refused_by_verify_and_restore_naming_the_entry() {
    let mut ws = Workspace::new();
    let bin = compromised_bin(&ws);
    for (name, _, _) in REFUSED {
        ws.add(&format!(
            "[jobs.{name}]\nkind = \"directory\"\npath = \"{}\"\n",
            archive(name).display()
        ));
    }
    for (name, entry, reason) in REFUSED {
        run_compromised(&ws, &bin, name).ok();
        assert_eq!(ws.backup_ids(name).len(), 1, "{name} was not committed");
        let before = listing(ws.path());

        let verify = restore(&ws, name, &["--verify"]).fails_with(1);
        let expected = format!("refusing entry `{entry}`");
        assert!(
            verify.stderr.contains("would not restore safely")
                && verify.stderr.contains(&expected)
                && verify.stderr.contains(reason),
            "{name}: --verify said:\n{}",
            verify.stderr
        );

        let target = ws.path().join(format!("restored-{name}"));
        let restored = restore(&ws, name, &["--to", target.to_str().unwrap()]).fails_with(1);
        assert!(
            restored.stderr.contains(&expected) && restored.stderr.contains(reason),
            "{name}: restore said:\n{}",
            restored.stderr
        );
        assert_eq!(
            listing(ws.path()),
            before,
            "{name}: the restore wrote outside its target"
        );
        for outside in [
            "/tmp/bk-hostile-absolute",
            "/tmp/bk-hostile-symlink-absolute",
        ] {
            assert!(
                fs::symlink_metadata(outside).is_err(),
                "{name}: {outside} exists"
            );
        }
    }
    for (name, link) in OUTWARD_LINKS {
        let target = ws.path().join(format!("restored-{name}"));
        let kept = fs::symlink_metadata(target.join(link.trim_start_matches("./")))
            .unwrap_or_else(|e| panic!("{name}: {link} was not restored: {e}"));
        assert!(kept.file_type().is_symlink(), "{name}: {link}");
    }
}

#[test]
fn outward_symlinks_and_special_bits_are_restored_with_warnings() {
    let mut ws = Workspace::new();
    let bin = compromised_bin(&ws);
    ws.add(&format!(
        "[jobs.bits]\nkind = \"directory\"\npath = \"{}\"\n",
        archive("special_bits").display()
    ));
    run_compromised(&ws, &bin, "bits").ok();
    let verify = restore(&ws, "bits", &["--verify"]).ok();
    for entry in [
        "./tool` has mode 4755",
        "./group-tool` has mode 2755",
        "./shared` has mode 1777",
    ] {
        assert!(verify.stderr.contains(entry), "{}", verify.stderr);
    }

    for (keep, modes) in [
        (false, [0o755, 0o755, 0o777]),
        (true, [0o4755, 0o2755, 0o1777]),
    ] {
        let target = ws.path().join(format!("restored-{keep}"));
        let mut how = vec!["--to", target.to_str().unwrap()];
        if keep {
            how.push("--keep-special-bits");
        }
        let out = restore(&ws, "bits", &how).ok();
        assert!(
            out.stderr.contains("./tool` has mode 4755"),
            "{}",
            out.stderr
        );
        for (file, mode) in ["tool", "group-tool", "shared"].iter().zip(modes) {
            let found = fs::metadata(target.join(file))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(found & 0o7777, mode, "{file} with keep = {keep}");
        }
    }

    // An outward symlink alone (no entry through it): restored, never followed, named.
    ws.add(&format!(
        "[jobs.links]\nkind = \"directory\"\npath = \"{}\"\n",
        ws.path().join("links.tar").display()
    ));
    sh(&format!(
        "cd {d} && mkdir links && ln -s /etc/passwd links/pw && ln -s ../../x links/up && tar -C links -cf links.tar .",
        d = ws.path().display()
    ));
    run_compromised(&ws, &bin, "links").ok();
    let target = ws.path().join("restored-links");
    let out = restore(&ws, "links", &["--to", target.to_str().unwrap()]).ok();
    assert!(
        out.stderr.contains("`./pw` is a symlink to `/etc/passwd`")
            && out.stderr.contains("`./up` is a symlink to `../../x`"),
        "{}",
        out.stderr
    );
    assert_eq!(
        fs::read_link(target.join("pw")).unwrap(),
        Path::new("/etc/passwd")
    );
}

#[test]
fn a_header_announcing_an_exbibyte_fails_the_backup_naming_the_entry() {
    let mut ws = Workspace::new();
    let bin = compromised_bin(&ws);
    ws.add(&format!(
        "[jobs.huge]\nkind = \"directory\"\npath = \"{}\"\n",
        archive("huge_size").display()
    ));
    let out = run_compromised(&ws, &bin, "huge").fails_with(1);
    assert!(
        out.stderr
            .contains("`./huge` announces 1152921504606846976 bytes but the stream ends"),
        "{}",
        out.stderr
    );
    assert!(ws.backup_ids("huge").is_empty());
    assert_eq!(committed_objects(&ws), "");
}

/// What a compromised backup server can do: it knows the recipients, so it writes a
/// backup of its own (payload, manifest, commit record) that decrypts fine.
/// `claimed_size` is the plaintext size its manifest claims.
fn forge_backup(ws: &Workspace, job: &str, tar: &Path, entry: &str, claimed_size: u64) -> String {
    require_tool("age");
    require_tool("zstd");
    let id = "20300101T000000.000Z-0123456789abcdef";
    let dir = ws.backup_dir(job, id);
    fs::create_dir_all(&dir).unwrap();
    let plain = fs::read(tar).unwrap();
    let manifest = dir.join("manifest.plain");
    let header = serde_json::json!({
        "format": "bk-manifest", "version": 1, "backup_id": id, "job": job,
        "kind": "directory", "host": "local", "source": {},
        "started": "2030-01-01T00:00:00Z", "finished": "2030-01-01T00:00:01Z",
        "source_size": claimed_size,
        "source_blake3": blake3::hash(&plain).to_hex().to_string(),
        "zstd_level": 3, "tool_versions": {}, "warnings": [], "entries": 2,
    });
    let root = serde_json::json!({"path": ".", "type": "dir", "size": 0, "mode": 0o755, "mtime": 1700000000u64});
    let file = serde_json::json!({"path": entry, "type": "file", "size": 1u64 << 60, "mode": 0o644, "mtime": 1700000000u64, "blake3": "00"});
    fs::write(&manifest, format!("{header}\n{root}\n{file}\n")).unwrap();
    let seal = |input: &Path, output: &str| {
        sh(&format!(
            "zstd -q -c {} | age -r {} > {}",
            input.display(),
            ws.recipient,
            dir.join(output).display()
        ));
        let bytes = fs::read(dir.join(output)).unwrap();
        serde_json::json!({
            "key": format!("backups/{job}/{id}/{output}"),
            "size": bytes.len(),
            "blake3": blake3::hash(&bytes).to_hex().to_string(),
        })
    };
    let payload = seal(tar, "payload.age");
    let manifest_object = seal(&manifest, "manifest.age");
    fs::remove_file(&manifest).unwrap();
    let commit = serde_json::json!({
        "format": "bk-commit", "version": 1, "backup_id": id, "job": job,
        "kind": "directory", "host": "local",
        "started": "2030-01-01T00:00:00Z", "finished": "2030-01-01T00:00:01Z",
        "writer": "compromised-server", "source_size": claimed_size,
        "payload": payload, "manifest": manifest_object, "recipients": [ws.recipient],
    });
    fs::write(dir.join("commit.json"), commit.to_string()).unwrap();
    id.to_string()
}

#[test]
fn a_forged_backup_with_an_absurd_size_is_refused_before_anything_is_written() {
    let mut ws = Workspace::new();
    let src = ws.path().join("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("real.txt"), "a real backup first\n").unwrap();
    ws.add(&format!(
        "[jobs.media]\nkind = \"directory\"\npath = \"{}\"\n",
        src.display()
    ));
    ws.bk(&["run", "media"]).ok();
    let tar = archive("huge_size");
    let stream = fs::metadata(&tar).unwrap().len();

    // The manifest tells the truth about the stream: the entry is larger than all of it.
    let id = forge_backup(&ws, "media", &tar, "./huge", stream);
    assert_eq!(
        ws.backup_ids("media")[0],
        id,
        "the forged backup is not listed"
    );
    let out = restore(&ws, "media", &["--verify"]).fails_with(1);
    assert!(
        out.stderr.contains("refusing entry `./huge`")
            && out
                .stderr
                .contains("announces 1152921504606846976 bytes, more than the whole backup stream"),
        "{}",
        out.stderr
    );
    let target = ws.path().join("restored-1");
    let out = restore(&ws, "media", &["--to", target.to_str().unwrap()]).fails_with(1);
    assert!(
        out.stderr.contains("refusing entry `./huge`"),
        "{}",
        out.stderr
    );
    assert!(!target.join("huge").exists());

    // The manifest lies too: the target filesystem's free space refuses it.
    fs::remove_dir_all(ws.backup_dir("media", &id)).unwrap();
    forge_backup(&ws, "media", &tar, "./huge", 1 << 62);
    let target = ws.path().join("restored-2");
    let out = restore(&ws, "media", &["--to", target.to_str().unwrap()]).fails_with(1);
    assert!(
        out.stderr.contains("refusing entry `./huge`: it announces 1152921504606846976 bytes but the target filesystem has"),
        "{}",
        out.stderr
    );
    assert!(!target.join("huge").exists());
    let out = restore(&ws, "media", &["--verify"]).fails_with(1);
    assert!(
        out.stderr
            .contains("`./huge` announces 1152921504606846976 bytes but the stream ends"),
        "{}",
        out.stderr
    );
}

/// The source's process ID, written by the source itself into `file`.
fn source_is_gone(file: &Path) -> bool {
    let pid: i32 = fs::read_to_string(file)
        .expect("the source wrote its pid")
        .trim()
        .parse()
        .expect("a pid");
    // SAFETY: signal 0 only checks whether the process exists.
    unsafe { libc::kill(pid, 0) != 0 }
}

#[test]
fn a_source_that_never_stops_is_cut_off_at_max_size() {
    let mut ws = Workspace::new();
    let pid = ws.path().join("source.pid");
    ws.add(&format!(
        "[jobs.forever]\nkind = \"command\"\ncommand = \"echo $$ > {}; exec cat /dev/urandom\"\nmax_size = \"24MiB\"\n",
        pid.display()
    ));
    let clock = Instant::now();
    let out = ws.bk(&["run", "forever"]).fails_with(1);
    assert!(
        out.stderr
            .contains("sent more than its max_size of 24.0 MiB")
            && out.stderr.contains("nothing was committed"),
        "{}",
        out.stderr
    );
    assert!(clock.elapsed() < Duration::from_secs(60));
    assert!(ws.backup_ids("forever").is_empty());
    assert_eq!(
        committed_objects(&ws),
        "",
        "the aborted upload left objects"
    );
    assert!(source_is_gone(&pid), "the source still runs");
    let status = ws.bk(&["status", "--json"]).ok().json();
    let error = status["jobs"][0]["last_run"]["error"]
        .as_str()
        .unwrap_or("");
    assert!(error.contains("max_size"), "{status}");

    // A compromised source's "tar" that announces one huge file and streams for ever.
    let bin = compromised_bin(&ws);
    let endless = ws.path().join("endless");
    sh(&format!(
        "mkfifo {e}; (head -c 1024 {t}; cat /dev/zero) > {e} &",
        e = endless.display(),
        t = archive("huge_size").display()
    ));
    ws.add(&format!(
        "[jobs.endless]\nkind = \"directory\"\npath = \"{}\"\nmax_size = \"16MiB\"\n",
        endless.display()
    ));
    let out = run_compromised(&ws, &bin, "endless").fails_with(1);
    assert!(
        out.stderr.contains("max_size of 16.0 MiB"),
        "{}",
        out.stderr
    );
    assert_eq!(committed_objects(&ws), "");
}

#[test]
fn a_source_that_trickles_for_ever_is_cut_off_by_its_timeout() {
    let mut ws = Workspace::new();
    let pid = ws.path().join("source.pid");
    ws.add(&format!(
        "[jobs.trickle]\nkind = \"command\"\ncommand = \"echo $$ > {}; while :; do echo tick; sleep 0.1; done\"\ntimeout = \"2s\"\nstall_timeout = \"1s\"\n",
        pid.display()
    ));
    let clock = Instant::now();
    let out = ws.bk(&["run", "trickle"]).fails_with(1);
    assert!(
        out.stderr
            .contains("did not finish within its timeout of 2s"),
        "{}",
        out.stderr
    );
    assert!(
        clock.elapsed() < Duration::from_secs(30),
        "{:?}",
        clock.elapsed()
    );
    assert!(ws.backup_ids("trickle").is_empty());
    assert_eq!(
        committed_objects(&ws),
        "",
        "the aborted upload left objects"
    );
    assert!(source_is_gone(&pid), "the source still runs");
}

#[test]
fn a_source_that_stalls_is_cut_off() {
    let mut ws = Workspace::new();
    let pid = ws.path().join("source.pid");
    ws.add(&format!(
        "[jobs.stalled]\nkind = \"command\"\ncommand = \"echo $$ > {}; echo start; exec sleep 600\"\nstall_timeout = \"1s\"\n",
        pid.display()
    ));
    let clock = Instant::now();
    let out = ws.bk(&["run", "stalled"]).fails_with(1);
    assert!(
        out.stderr.contains("sent nothing for 1s (stall_timeout)"),
        "{}",
        out.stderr
    );
    assert!(
        clock.elapsed() < Duration::from_secs(30),
        "{:?}",
        clock.elapsed()
    );
    assert!(ws.backup_ids("stalled").is_empty());
    assert_eq!(committed_objects(&ws), "");
    assert!(source_is_gone(&pid), "the source still runs");
}
