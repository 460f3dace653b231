//! `bk init [DIR] [--identity FILE]`: a commented starter configuration in DIR (a local
//! repository and catalog beside it) and a new key pair. The identity is written
//! *outside* DIR — the backup server's configuration directory must never hold it —
//! with a reminder to move it offline; the configuration holds only its recipient.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context};

use crate::output::say;
use crate::Failure;

pub fn run(dir: &Path, source: &Path, identity: Option<&Path>) -> Result<(), Failure> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    let dir = std::fs::canonicalize(dir)?;
    let config_path = dir.join("bk.toml");
    if config_path.exists() {
        return Err(Failure::Usage(anyhow!(
            "{} already exists; bk init never overwrites",
            config_path.display()
        )));
    }
    let identity_path = identity_path(&dir, identity)?;
    let recipient = bk_core::keys::generate_identity_file(&identity_path).map_err(|e| match e {
        bk_core::keys::KeyError::Exists { .. } => Failure::Usage(e.into()),
        other => Failure::Failed(other.into()),
    })?;
    let text = format!(
        r#"# bk configuration, written by `bk init`. Every key, its type and default:
# docs/configuration.md. Check this file (and every host and the storage it names)
# with `bk config check`.

[repository]
# Where backups go. This starter uses a local directory. For S3 and compatibles:
#   url = "s3://my-bucket/bk"
#   credentials_file = "/etc/bk/s3.credentials"   # access_key_id = …, secret_access_key = … (0600)
#   [repository.options]
#   region = "eu-central-1"
url = "file://{repo}"
# Every backup is encrypted to these public keys (age recipients). Only the matching
# identity decrypts: the one bk init wrote to {identity}. Keep it OFFLINE, not here.
recipients = ["{recipient}"]

[catalog]
# Run history and backup cache; `bk catalog rebuild` rebuilds it from the repository.
path = "{catalog}"

# [server]                                  # bk-server's status page, /metrics, /healthz
# listen = "127.0.0.1:9469"

# [alerts]
# webhook = "https://hooks.example/bk"      # JSON POST on a failed backup or an overdue job
# ping = "https://hc-ping.com/UUID"         # healthchecks-style: /start, success, /fail

# A source host reached over SSH (docs/sources.md); `local` needs no entry.
# [hosts.db2]
# address = "10.0.0.6"
# user = "bk"
# key = "/etc/bk/id_ed25519"
# known_hosts = "/etc/bk/known_hosts"       # ssh-keyscan db2 >> it, after checking the fingerprint

# A PostgreSQL hot-standby replica, dumped with pg_dump (docs/sources.md#postgres).
# [jobs.app-db]
# host = "db2"
# kind = "postgres"
# database = "app"
# conninfo = "host=/var/run/postgresql user=bk_backup"
# schedule = "0 2 * * *"
# retention = {{ keep_last = 3, keep_daily = 7, keep_weekly = 4, keep_monthly = 12 }}

# The example job: a directory on this machine, every night at 02:30 UTC.
[jobs.example]
host = "local"
kind = "directory"
path = "{source}"
schedule = "30 2 * * *"
timezone = "UTC"
retention = {{ keep_last = 3, keep_daily = 7, keep_weekly = 4, keep_monthly = 12 }}
"#,
        repo = dir.join("repo").display(),
        catalog = dir.join("catalog.db").display(),
        identity = identity_path.display(),
        source = source.display(),
    );
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&config_path)
        .with_context(|| format!("writing {}", config_path.display()))?;
    f.write_all(text.as_bytes())?;
    let cfg = config_path.display();
    let id = identity_path.display();
    say!("wrote {cfg}")?;
    say!("wrote {id}: the identity, the only key that decrypts these backups")?;
    say!("recipient: {recipient}")?;
    eprintln!();
    eprintln!(
        "warning: move {id} OFFLINE (two copies, e.g. a USB key in a safe and a password \
         manager) and delete it here: the backup server must not be able to read old backups"
    );
    say!("")?;
    say!("next steps:")?;
    say!("  1. edit {cfg}: the repository, your hosts and jobs (docs/configuration.md)")?;
    say!("  2. bk --config {cfg} config check")?;
    say!("  3. bk --config {cfg} run example")?;
    say!("  4. bk --config {cfg} restore example latest --identity {id} --verify")?;
    say!("  5. move {id} offline; run bk-server under systemd (docs/operations.md)")?;
    Ok(())
}

/// `--identity`, else `~/bk-identity.age`; refused inside the configuration directory.
fn identity_path(dir: &Path, explicit: Option<&Path>) -> Result<PathBuf, Failure> {
    let path = match explicit {
        Some(p) => p.to_path_buf(),
        None => std::env::var_os("HOME")
            .filter(|h| !h.is_empty())
            .map(|h| PathBuf::from(h).join("bk-identity.age"))
            .ok_or_else(|| Failure::Usage(anyhow!("$HOME is not set: pass --identity FILE")))?,
    };
    let parent = match path.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(p) => p.to_path_buf(),
        None => PathBuf::from("."),
    };
    let parent = std::fs::canonicalize(&parent).map_err(|e| {
        Failure::Usage(anyhow!(
            "cannot write the identity to {}: {}: {e}",
            path.display(),
            parent.display()
        ))
    })?;
    if parent.starts_with(dir) {
        return Err(Failure::Usage(anyhow!(
            "the identity must not be written into the configuration directory {}: pass \
             --identity FILE outside it (and move that file offline)",
            dir.display()
        )));
    }
    let name = path
        .file_name()
        .ok_or_else(|| Failure::Usage(anyhow!("--identity needs a file name")))?;
    Ok(parent.join(name))
}
