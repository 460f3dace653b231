//! The first hour with bk: `bk init` on a fresh directory, `bk config check`, `bk run`
//! and a verified restore work in that order with nothing edited; `config check`
//! reports each real problem (unknown host key, a restore-test identity whose
//! recipient is missing) with its fix and exit 1, an invalid file with exit 2; every
//! subcommand's `--help` has examples and completions are generated for the shells.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};

use bk_e2e::sshd::Sshd;
use bk_e2e::{bk_path, run, tree};

fn bk(args: &[&str]) -> bk_e2e::Outcome {
    run(Command::new(bk_path()).args(args))
}

#[test]
fn init_then_config_check_then_run_works_on_a_fresh_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("media");
    tree::awkward(&src, 1 << 20);
    let dir = tmp.path().join("etc-bk");
    let identity = tmp.path().join("offline/bk-identity.age");
    fs::create_dir_all(identity.parent().unwrap()).unwrap();

    // The identity may not land in the configuration directory.
    let inside = dir.join("identity.age");
    let out = bk(&[
        "init",
        dir.to_str().unwrap(),
        "--identity",
        inside.to_str().unwrap(),
    ])
    .fails_with(2);
    assert!(
        out.stderr
            .contains("must not be written into the configuration directory"),
        "{}",
        out.stderr
    );
    assert!(!inside.exists() && !dir.join("bk.toml").exists());

    let out = bk(&[
        "init",
        dir.to_str().unwrap(),
        "--source",
        src.to_str().unwrap(),
        "--identity",
        identity.to_str().unwrap(),
    ])
    .ok();
    let config = dir.join("bk.toml");
    let cfg = config.to_str().unwrap();
    assert!(out.stdout.contains("next steps:"), "{}", out.stdout);
    assert!(
        out.stdout
            .contains(&format!("bk --config {cfg} config check")),
        "{}",
        out.stdout
    );
    assert!(out.stderr.contains("OFFLINE"), "{}", out.stderr);
    let mode = |p: &std::path::Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&config), 0o600);
    assert_eq!(mode(&identity), 0o600);
    assert_eq!(mode(&dir), 0o700);
    let text = fs::read_to_string(&config).unwrap();
    let recipient = out
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("recipient: "))
        .expect("the recipient is printed");
    assert!(text.contains(recipient) && !text.contains("AGE-SECRET-KEY"));
    assert!(
        text.contains("# [hosts.db2]"),
        "the starter config shows an SSH host:\n{text}"
    );
    assert!(!fs::read_dir(&dir).unwrap().any(|e| {
        fs::read_to_string(e.unwrap().path()).is_ok_and(|t| t.contains("AGE-SECRET-KEY"))
    }));
    // Never overwrites.
    bk(&[
        "init",
        dir.to_str().unwrap(),
        "--identity",
        tmp.path().join("x.age").to_str().unwrap(),
    ])
    .fails_with(2);

    let out = bk(&["--config", cfg, "config", "check"]).ok();
    for needle in [
        "ok    recipients",
        "ok    repository ",
        "does not exist yet; the first backup creates it",
        "ok    job example",
        "is a readable directory",
        "tar (GNU tar)",
        "0 failed",
    ] {
        assert!(
            out.stdout.contains(needle),
            "missing {needle:?}:\n{}",
            out.stdout
        );
    }
    bk(&["--config", cfg, "run", "example"]).ok();
    // A reader that went away (`bk list | head`, `bk status | head -1`) is not an error,
    // in any command's output: the pipe's read end is closed before bk starts, so its
    // first write fails, and bk must neither panic nor report it as an error.
    let identity_arg = identity.to_str().unwrap();
    for args in [
        &["list"][..],
        &["list", "--json"],
        &["status"],
        &["status", "--json"],
        &["verify"],
        &["config", "check"],
        &[
            "restore",
            "example",
            "latest",
            "--identity",
            identity_arg,
            "--verify",
        ],
    ] {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = Command::new(bk_path())
            .args(["--config", cfg])
            .args(args)
            .stdout(writer)
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        // Only what bk says on stderr anyway (the restore warns of a dangling symlink).
        assert!(
            out.status.success() && stderr.lines().all(|l| l.starts_with("warning: ")),
            "bk {args:?} into a closed pipe: {}\n{stderr}",
            out.status
        );
    }
    bk(&[
        "--config",
        cfg,
        "restore",
        "example",
        "latest",
        "--identity",
        identity.to_str().unwrap(),
        "--verify",
    ])
    .ok();

    // Now the repository exists and has a marker.
    let out = bk(&["--config", cfg, "config", "check", "--json"]).ok();
    let doc = out.json();
    assert_eq!(doc["failed"], 0, "{doc}");
    let checks = doc["checks"].as_array().unwrap();
    assert!(
        checks.iter().any(|c| c["what"] == "repository"
            && c["detail"].as_str().unwrap().contains("format version 1")),
        "{doc}"
    );
    assert!(checks
        .iter()
        .any(|c| c["what"] == "repository listing" && c["ok"] == true));
}

#[test]
fn config_check_names_each_problem_with_its_fix() {
    let sshd = Sshd::shared();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cfg");
    let identity = tmp.path().join("id.age");
    bk(&[
        "init",
        dir.to_str().unwrap(),
        "--source",
        "/usr/share/doc",
        "--identity",
        identity.to_str().unwrap(),
    ])
    .ok();
    let config = dir.join("bk.toml");
    let cfg = config.to_str().unwrap();
    // A host whose key bk has never seen, and a restore-test identity nobody added.
    let empty_known_hosts = tmp.path().join("known_hosts");
    fs::write(&empty_known_hosts, "").unwrap();
    let stray = tmp.path().join("restore-test.age");
    let stray_recipient = bk(&["keygen", "--output", stray.to_str().unwrap()])
        .ok()
        .stdout
        .trim()
        .to_string();
    let host = sshd.host_toml("web1").replace(
        sshd.known_hosts.to_str().unwrap(),
        empty_known_hosts.to_str().unwrap(),
    );
    let mut text = fs::read_to_string(&config).unwrap();
    text.push_str(&format!(
        "\n{host}\n[jobs.remote]\nhost = \"web1\"\nkind = \"directory\"\npath = \"/srv\"\n\n\
         [jobs.example.restore_test]\nidentity = \"{}\"\n",
        stray.display()
    ));
    fs::write(&config, &text).unwrap();

    let out = bk(&["--config", cfg, "config", "check"]).fails_with(1);
    let lines = out.stdout.clone();
    assert!(lines.contains("FAIL  host web1"), "{lines}");
    assert!(lines.contains("its host key is not in"), "{lines}");
    assert!(
        lines.contains("fix: compare the fingerprint") && lines.contains("ssh-keyscan -p"),
        "{lines}"
    );
    assert!(
        lines.contains("FAIL  job remote") && lines.contains("host `web1` is unreachable"),
        "{lines}"
    );
    assert!(lines.contains("FAIL  restore test example"), "{lines}");
    assert!(
        lines.contains(&format!(
            "fix: add \"{stray_recipient}\" to repository.recipients"
        )),
        "{lines}"
    );
    assert!(lines.contains("ok    job example"), "{lines}");
    assert!(out.stderr.contains("3 check(s) failed"), "{}", out.stderr);
    // The check wrote nothing: the unknown key was not recorded, no repository made.
    assert_eq!(fs::read_to_string(&empty_known_hosts).unwrap(), "");
    assert!(!dir.join("repo").exists());

    // --offline only validates.
    bk(&["--config", cfg, "config", "check", "--offline"]).ok();
    // With the real host key the host passes and the job's tar is found over SSH.
    fs::write(
        &config,
        text.replace(
            empty_known_hosts.to_str().unwrap(),
            sshd.known_hosts.to_str().unwrap(),
        ),
    )
    .unwrap();
    let out = bk(&["--config", cfg, "config", "check"]).fails_with(1);
    assert!(
        out.stdout.contains("ok    host web1") && out.stdout.contains("host key matches"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("tar (GNU tar)") && out.stdout.contains("on host web1"),
        "{}",
        out.stdout
    );
    assert!(
        out.stderr
            .contains("1 check(s) failed: restore test example"),
        "{}",
        out.stderr
    );

    // An invalid file: exit 2, every problem named, nothing contacted.
    fs::write(
        &config,
        text.replace(
            "kind = \"directory\"\npath = \"/srv\"",
            "kind = \"directory\"",
        ),
    )
    .unwrap();
    let out = bk(&["--config", cfg, "config", "check"]).fails_with(2);
    assert!(out.stderr.contains("needs `path`"), "{}", out.stderr);
}

#[test]
fn every_subcommand_has_examples_and_completions_are_generated() {
    let help = bk(&["--help"]).ok().stdout;
    assert!(help.contains("Exit status: 0 success, 1"), "{help}");
    let subcommands: Vec<String> = help
        .split("Commands:")
        .nth(1)
        .unwrap()
        .lines()
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .filter(|c| c != "help")
        .collect();
    assert!(subcommands.len() >= 13, "{subcommands:?}");
    for sub in &subcommands {
        let mut args: Vec<&str> = vec![sub.as_str()];
        if sub == "catalog" || sub == "config" {
            args.push(if sub == "catalog" { "rebuild" } else { "check" });
        }
        args.push("--help");
        let out = bk(&args).ok().stdout;
        assert!(
            out.contains("Example"),
            "`bk {}` has no example:\n{out}",
            args.join(" ")
        );
    }
    for (shell, needle) in [
        ("bash", "_bk()"),
        ("zsh", "#compdef bk"),
        ("fish", "complete -c bk"),
    ] {
        let out = bk(&["completions", shell]).ok().stdout;
        assert!(out.contains(needle), "{shell}:\n{out}");
        assert!(
            out.contains("restore") && out.contains("identity"),
            "{shell}"
        );
    }
    let script = tempfile::NamedTempFile::new().unwrap();
    fs::write(script.path(), bk(&["completions", "bash"]).stdout).unwrap();
    // The bash script loads and completes subcommands.
    let out = run(Command::new("bash").arg("-c").arg(format!(
        "source {} && COMP_WORDS=(bk rest) COMP_CWORD=1 COMP_LINE='bk rest' COMP_POINT=7 && _bk bk rest bk && printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        script.path().display()
    )))
    .ok();
    assert!(out.stdout.lines().any(|l| l == "restore"), "{}", out.stdout);
    bk(&["completions", "tcsh"]).fails_with(2);
}

#[test]
fn restore_and_verify_show_a_progress_bar_only_on_a_terminal() {
    bk_e2e::require_tool("script");
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("data");
    tree::awkward(&src, 48 << 20);
    let dir = tmp.path().join("cfg");
    let identity = tmp.path().join("id.age");
    bk(&[
        "init",
        dir.to_str().unwrap(),
        "--source",
        src.to_str().unwrap(),
        "--identity",
        identity.to_str().unwrap(),
    ])
    .ok();
    let cfg = dir.join("bk.toml");
    let cfg = cfg.to_str().unwrap();
    bk(&["--config", cfg, "run", "example"]).ok();
    let id = identity.to_str().unwrap();
    for args in [
        vec![
            "--config",
            cfg,
            "restore",
            "example",
            "latest",
            "--identity",
            id,
            "--verify",
        ],
        vec!["--config", cfg, "verify"],
    ] {
        // Not a terminal (a pipe, a log, a script): no bar, the output as before.
        let plain = bk(&args).ok();
        assert!(!plain.stderr.contains("verifying ["), "{}", plain.stderr);
        // A terminal (script(1) gives the command a pty): a bar on stderr, then the result.
        let line = std::iter::once(bk_path().display().to_string())
            .chain(args.iter().map(|a| format!("'{a}'")))
            .collect::<Vec<_>>()
            .join(" ");
        let tty = run(Command::new("script").args(["-q", "-e", "-c", &line, "/dev/null"])).ok();
        assert!(
            tty.stdout.contains("verifying [") && tty.stdout.contains("MiB/"),
            "no progress bar on a terminal:\n{}",
            tty.stdout
        );
        assert!(tty.stdout.contains("every hash matches") || tty.stdout.contains("0 damaged"));
    }
}
