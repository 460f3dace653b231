//! Secrets hygiene. Known secrets are planted where operators put them: S3 keys in a
//! credentials file and in the environment, a password in a PostgreSQL conninfo, the
//! age identity file, the SSH private key bk logs in with. Then a representative run
//! of bk — good and failed backups over SSH and locally into S3, list, status,
//! verify, restores, prune, gc, catalog rebuild, config check, mistakes an operator
//! makes (a bare key in the credentials file, a secret key pasted as a recipient, a
//! damaged identity), and the daemon with its alerts, /metrics, /api/status and
//! status page — and everything it produced is searched for every secret: each
//! command's stdout and stderr, the daemon's log, the HTTP bodies, the alerts, the
//! catalog database, the decrypted manifests and the repository's plaintext objects.
//! Not one fragment may be found.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use bk_e2e::daemon::{seed_past_run, server_section, wait_for, Daemon, Receiver};
use bk_e2e::s3::S3Server;
use bk_e2e::sshd::{self, Sshd};
use bk_e2e::{bk_path, free_port, postgres, require_tool, run, sh, Outcome, Workspace};

/// Random text that cannot occur by chance in what is searched.
fn random_secret(prefix: &str) -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    let tail: String = (0..32)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect();
    format!("{prefix}{tail}")
}

/// The secret and pieces of it (8 characters every 4), so that a partial leak (a
/// truncated key in an error message) is found too.
fn fragments(secret: &str) -> Vec<String> {
    let chars: Vec<char> = secret.chars().collect();
    let mut out = vec![secret.to_string()];
    let mut at = 0;
    while at + 8 <= chars.len() {
        out.push(chars[at..at + 8].iter().collect());
        at += 4;
    }
    out
}

/// Everything bk produced, by where it came from.
#[derive(Default)]
struct Produced(BTreeMap<String, Vec<u8>>);

impl Produced {
    fn add(&mut self, what: impl Into<String>, bytes: impl Into<Vec<u8>>) {
        let what = what.into();
        let n = self.0.len();
        self.0.insert(format!("{n:03} {what}"), bytes.into());
    }

    fn command(&mut self, what: &str, out: &Outcome) {
        self.add(format!("{what}: stdout"), out.stdout.clone());
        self.add(format!("{what}: stderr"), out.stderr.clone());
    }

    fn leaks(&self, secrets: &[(&str, Vec<String>)]) -> Vec<String> {
        let mut found = Vec::new();
        for (name, pieces) in secrets {
            for (what, bytes) in &self.0 {
                if let Some(piece) = pieces
                    .iter()
                    .find(|p| bytes.windows(p.len()).any(|w| w == p.as_bytes()))
                {
                    found.push(format!("{name} (`{piece}`) in {what}"));
                }
            }
        }
        found
    }
}

/// Runs bk and keeps its output in `produced`.
fn bk(
    produced: &mut Produced,
    config: &Path,
    what: &str,
    env: &[(&str, &str)],
    args: &[&str],
) -> Outcome {
    let out = bk_with(config, env, args);
    produced.command(what, &out);
    out
}

fn bk_with(config: &Path, env: &[(&str, &str)], args: &[&str]) -> Outcome {
    run(Command::new(bk_path())
        .env("BK_LOG", "debug")
        .envs(env.iter().copied())
        .arg("--config")
        .arg(config)
        .args(args))
}

fn write_private(path: &Path, text: &str) {
    fs::write(path, text).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).unwrap();
}

#[test]
fn no_secret_appears_in_anything_bk_produces() {
    require_tool("age");
    require_tool("zstd");
    let s3_file_secret = random_secret("bkS3File");
    let s3_env_secret = random_secret("bkS3Env");
    let pg_password = random_secret("bkPgPw");
    let bare_key = random_secret("bkBareKey");

    let s3 = S3Server::start();
    s3.create_bucket("vault");
    let sshd = Sshd::shared();
    let pg = postgres::cluster();
    pg.create_database(
        "secretshop",
        "CREATE TABLE orders (id int); INSERT INTO orders SELECT generate_series(1, 50);",
    );
    let hooks = Receiver::start();
    let port = free_port();

    let mut ws = Workspace::new();
    fs::set_permissions(ws.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let creds = ws.path().join("s3.credentials");
    write_private(
        &creds,
        &format!("access_key_id = AKIABKSECRETSTEST01\nsecret_access_key = {s3_file_secret}\n"),
    );
    let options = format!(
        "max_retries = 1\nretry_timeout = \"5s\"\n[repository.options]\nendpoint = \"{}\"\nallow_http = \"true\"\nregion = \"us-east-1\"\n",
        s3.endpoint()
    );
    ws.set_repository(
        "s3://vault/bk",
        &format!("credentials_file = \"{}\"\n{options}", creds.display()),
    );
    let media = ws.path().join("media");
    fs::create_dir_all(media.join("sub")).unwrap();
    fs::write(media.join("sub/photo.jpg"), vec![7u8; 50_000]).unwrap();
    let conninfo = format!(
        "{} password = '{pg_password}' connect_timeout=10",
        pg.conninfo(true)
    );
    ws.add(&sshd.host_toml("db"));
    ws.add(&server_section(port, "5s"));
    ws.add(&format!(
        "[alerts]\nwebhook = \"{0}/hook\"\nping = \"{0}/ping\"\n",
        hooks.url
    ));
    ws.add(&format!(
        "[jobs.media]\nkind = \"directory\"\npath = \"{}\"\nretention = {{ keep_last = 5 }}\n\
         [jobs.media.restore_test]\nidentity = \"{}\"\n\n\
         [jobs.shop]\nhost = \"db\"\nkind = \"postgres\"\ndatabase = \"secretshop\"\nconninfo = \"{conninfo}\"\nschedule = \"0 2 * * *\"\n\n\
         [jobs.broken-shop]\nhost = \"db\"\nkind = \"postgres\"\ndatabase = \"no_such_shop\"\nconninfo = \"{conninfo}\"\nschedule = \"0 2 * * *\"\n",
        media.display(),
        ws.identity.display()
    ));
    let config = ws.config.clone();
    let identity = ws.identity.to_str().unwrap().to_string();
    let mut produced = Produced::default();

    // The CLI, the way an operator uses it.
    bk(
        &mut produced,
        &config,
        "config check",
        &[],
        &["config", "check"],
    );
    bk(&mut produced, &config, "run media", &[], &["run", "media"]).ok();
    bk(&mut produced, &config, "run shop", &[], &["run", "shop"]).ok();
    let failed = bk(
        &mut produced,
        &config,
        "run broken-shop",
        &[],
        &["run", "broken-shop"],
    )
    .fails_with(1);
    assert!(failed.stderr.contains("no_such_shop"), "{}", failed.stderr);
    bk(&mut produced, &config, "list", &[], &["list"]).ok();
    bk(
        &mut produced,
        &config,
        "list --json",
        &[],
        &["list", "--json"],
    )
    .ok();
    bk(&mut produced, &config, "status", &[], &["status"]).ok();
    bk(
        &mut produced,
        &config,
        "status --json",
        &[],
        &["status", "--json"],
    )
    .ok();
    bk(
        &mut produced,
        &config,
        "verify --json",
        &[],
        &["verify", "--json"],
    )
    .ok();
    for job in ["media", "shop"] {
        bk(
            &mut produced,
            &config,
            &format!("restore {job} --verify"),
            &[],
            &["restore", job, "--identity", &identity, "--verify"],
        )
        .ok();
    }
    let restored = ws.path().join("restored");
    bk(
        &mut produced,
        &config,
        "restore media --to",
        &[],
        &[
            "restore",
            "media",
            "--identity",
            &identity,
            "--to",
            restored.to_str().unwrap(),
        ],
    )
    .ok();
    // The dump itself goes to stdout: bytes, not text.
    let dump = Command::new(bk_path())
        .env("BK_LOG", "debug")
        .arg("--config")
        .arg(&config)
        .args(["restore", "shop", "--identity", &identity, "--stdout"])
        .output()
        .expect("bk restore --stdout");
    assert!(
        dump.status.success(),
        "{}",
        String::from_utf8_lossy(&dump.stderr)
    );
    assert!(dump.stdout.starts_with(b"PGDMP"), "not a pg_dump archive");
    produced.add("restore shop --stdout: stdout", dump.stdout);
    produced.add("restore shop --stdout: stderr", dump.stderr);
    bk(
        &mut produced,
        &config,
        "prune --dry-run",
        &[],
        &["prune", "--dry-run"],
    )
    .ok();
    bk(
        &mut produced,
        &config,
        "gc --dry-run",
        &[],
        &["gc", "--dry-run"],
    )
    .ok();
    bk(
        &mut produced,
        &config,
        "catalog rebuild",
        &[],
        &["catalog", "rebuild"],
    )
    .ok();

    // Credentials from the environment instead of a file.
    let env_config = ws.path().join("env.toml");
    let text = fs::read_to_string(&ws.config)
        .unwrap()
        .replace(&format!("credentials_file = \"{}\"\n", creds.display()), "");
    fs::write(&env_config, &text).unwrap();
    let aws_env = [
        ("AWS_ACCESS_KEY_ID", "AKIABKSECRETSTEST02"),
        ("AWS_SECRET_ACCESS_KEY", s3_env_secret.as_str()),
    ];
    bk(
        &mut produced,
        &env_config,
        "env: run media",
        &aws_env,
        &["run", "media"],
    )
    .ok();
    bk(&mut produced, &env_config, "env: list", &aws_env, &["list"]).ok();
    bk(
        &mut produced,
        &env_config,
        "env: status",
        &aws_env,
        &["status", "--json"],
    )
    .ok();
    // Storage that does not answer: the errors name the store, never the keys.
    let down = ws.path().join("down.toml");
    fs::write(
        &down,
        text.replace(&s3.endpoint(), &format!("http://127.0.0.1:{}", free_port())),
    )
    .unwrap();
    bk(
        &mut produced,
        &down,
        "env: list, storage down",
        &aws_env,
        &["list"],
    )
    .fails_with(1);
    bk(
        &mut produced,
        &down,
        "env: run, storage down",
        &aws_env,
        &["run", "media"],
    )
    .fails_with(1);

    // Operator mistakes whose error messages must not quote the secret.
    let mistake_config = ws.path().join("mistake.toml");
    let mut mistake = |what: &str, config_text: String, args: &[&str]| {
        fs::write(&mistake_config, config_text).unwrap();
        let out = bk(&mut produced, &mistake_config, what, &[], args);
        assert_ne!(out.code, 0, "{what} should fail:\n{}", out.stderr);
    };
    let bare = ws.path().join("bare.credentials");
    write_private(
        &bare,
        &format!("access_key_id = AKIABKSECRETSTEST01\n{bare_key}==\n"),
    );
    mistake(
        "a bare key in the credentials file",
        fs::read_to_string(&ws.config)
            .unwrap()
            .replace(&creds.display().to_string(), &bare.display().to_string()),
        &["list"],
    );
    let identity_text = fs::read_to_string(&ws.identity).unwrap();
    let secret_key = identity_text
        .lines()
        .find(|l| l.starts_with("AGE-SECRET-KEY-1"))
        .expect("an age secret key line")
        .to_string();
    mistake(
        "the secret key pasted as a recipient",
        fs::read_to_string(&ws.config)
            .unwrap()
            .replace(&ws.recipient, &secret_key),
        &["config", "check"],
    );
    let damaged = ws.path().join("damaged.age");
    let mut broken_key = secret_key.clone();
    broken_key.replace_range(30..31, if &secret_key[30..31] == "Q" { "P" } else { "Q" });
    write_private(&damaged, &format!("{broken_key}\n"));
    mistake(
        "a damaged identity file",
        fs::read_to_string(&ws.config).unwrap(),
        &[
            "restore",
            "media",
            "--identity",
            damaged.to_str().unwrap(),
            "--verify",
        ],
    );

    // The daemon: catch-up runs of both postgres jobs at start, alerts, HTTP.
    seed_past_run(&ws, "shop");
    seed_past_run(&ws, "broken-shop");
    let mut daemon = Daemon::start_with_env(&ws, port, &[("BK_LOG", Path::new("debug"))]);
    hooks.wait_for(Duration::from_secs(60), "the failure alert", |r| {
        r.path == "/hook"
    });
    wait_for(Duration::from_secs(60), "the daemon's run of shop", || {
        let status = daemon.status();
        let jobs = status["jobs"].as_array()?.clone();
        jobs.iter()
            .find(|j| j["job"] == "shop" && j["last_run"]["trigger"] == "schedule")
            .filter(|j| j["last_run"]["status"] == "success")
            .cloned()
    });
    for path in ["/healthz", "/metrics", "/api/status", "/"] {
        let (code, body) = daemon.get(path);
        assert_eq!(code, 200, "{path}: {body}");
        produced.add(format!("daemon GET {path}"), body);
    }
    daemon.signal(libc::SIGTERM);
    assert_eq!(daemon.wait_exit(Duration::from_secs(30)), 0);
    let log = daemon.log();
    assert!(log.contains("shop"), "the daemon log is empty:\n{log}");
    produced.add("daemon log", log);
    for r in hooks.received() {
        produced.add(format!("alert {}", r.path), r.body);
    }

    // What stays on disk and in the bucket.
    for file in ["catalog.db", "catalog.db-wal"] {
        if let Ok(bytes) = fs::read(ws.path().join(file)) {
            produced.add(file, bytes);
        }
    }
    let bucket = ws.path().join("bucket");
    s3.python(&format!(
        "import os\np = s3.get_paginator('list_objects_v2')\nfor page in p.paginate(Bucket='vault', Prefix='bk/'):\n    for o in page.get('Contents', []):\n        dst = os.path.join('{}', o['Key'])\n        os.makedirs(os.path.dirname(dst), exist_ok=True)\n        s3.download_file('vault', o['Key'], dst)",
        bucket.display()
    ));
    let objects = sh(&format!("cd {} && find . -type f | sort", bucket.display()));
    assert!(objects.contains("commit.json"), "{objects}");
    for key in objects.lines() {
        let local = bucket.join(key);
        if key.ends_with("manifest.age") {
            let plain = sh(&format!(
                "age -d -i {identity} {} | zstd -d",
                local.display()
            ));
            assert!(plain.contains("\"format\":\"bk-manifest\""), "{plain}");
            produced.add(format!("decrypted {key}"), plain);
        } else if !key.ends_with(".age") {
            produced.add(format!("object {key}"), fs::read(&local).unwrap());
        }
    }

    let ssh_key = fs::read_to_string(&sshd::keys().client_key).unwrap();
    let ssh_lines: Vec<String> = ssh_key
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .skip(1)
        .map(String::from)
        .collect();
    assert!(!ssh_lines.is_empty());
    let secrets = [
        (
            "the S3 secret key of the credentials file",
            fragments(&s3_file_secret),
        ),
        (
            "the S3 secret key of the environment",
            fragments(&s3_env_secret),
        ),
        ("the bare key in a credentials file", fragments(&bare_key)),
        ("the PostgreSQL password", fragments(&pg_password)),
        (
            "the age secret key",
            fragments(&secret_key["AGE-SECRET-KEY-1".len()..]),
        ),
        (
            "the damaged age secret key",
            fragments(&broken_key["AGE-SECRET-KEY-1".len()..]),
        ),
        ("the SSH private key", ssh_lines),
    ];
    assert!(produced.0.len() > 60, "too little was searched");
    let leaks = produced.leaks(&secrets);
    assert!(
        leaks.is_empty(),
        "secrets found in what bk produced:\n{}",
        leaks.join("\n")
    );
}

/// A stolen restore-test identity opens every backup encrypted to its recipient, and
/// no other: once its recipient is retired, new backups are closed to it.
#[test]
fn a_retired_restore_test_identity_opens_old_backups_and_no_new_one() {
    let mut ws = Workspace::new();
    let stolen = ws.path().join("restore-test.age");
    let out =
        run(Command::new(bk_path()).args(["keygen", "--output", stolen.to_str().unwrap()])).ok();
    let stolen_recipient = out.stdout.trim().to_string();
    let src = ws.path().join("media");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("a.txt"), "a\n").unwrap();
    ws.add(&format!(
        "[jobs.media]\nkind = \"directory\"\npath = \"{}\"\n",
        src.display()
    ));
    let both = fs::read_to_string(&ws.config).unwrap().replace(
        &format!("recipients = [\"{}\"]", ws.recipient),
        &format!(
            "recipients = [\"{}\", \"{stolen_recipient}\"]",
            ws.recipient
        ),
    );
    fs::write(&ws.config, both).unwrap();
    ws.bk(&["run", "media"]).ok();
    ws.add(""); // rewrites the configuration with the master recipient only
    ws.bk(&["run", "media"]).ok();
    let ids = ws.backup_ids("media");
    let (new, old) = (&ids[0], &ids[1]);
    let commit =
        |id: &str| fs::read_to_string(ws.backup_dir("media", id).join("commit.json")).unwrap();
    assert!(commit(old).contains(&stolen_recipient));
    assert!(!commit(new).contains(&stolen_recipient));

    let verify = |id: &str, identity: &Path| {
        ws.bk(&[
            "restore",
            "media",
            id,
            "--identity",
            identity.to_str().unwrap(),
            "--verify",
        ])
    };
    verify(old, &stolen).ok();
    let refused = verify(new, &stolen).fails_with(1);
    assert!(
        refused.stderr.contains("wrong identity"),
        "{}",
        refused.stderr
    );
    verify(new, &ws.identity).ok();
}
