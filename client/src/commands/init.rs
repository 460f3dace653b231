//! `bk init [DIR]`: a starter configuration, a local repository and a key pair.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

use anyhow::Context;

use crate::Failure;

pub fn run(dir: &Path, source: &Path) -> Result<(), Failure> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    let dir = std::fs::canonicalize(dir)?;
    let config_path = dir.join("bk.toml");
    let identity_path = dir.join("identity.age");
    if config_path.exists() {
        return Err(Failure::Usage(anyhow::anyhow!(
            "{} already exists; bk init never overwrites",
            config_path.display()
        )));
    }
    let recipient = bk_core::keys::generate_identity_file(&identity_path)?;
    let text = format!(
        r#"# bk configuration, written by `bk init`. Reference: docs/configuration.md

[repository]
# Where backups go: file:///path, s3://bucket/prefix, gs://bucket/prefix, az://container/prefix
url = "file://{repo}"
# Every backup is encrypted to these public keys. The matching identity decrypts them.
recipients = ["{recipient}"]

[catalog]
path = "{catalog}"

[compression]
level = 3
workers = 2

# An example job: a directory on this machine. Add [hosts.NAME] entries to pull over SSH.
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
        source = source.display(),
    );
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&config_path)
        .with_context(|| format!("writing {}", config_path.display()))?;
    f.write_all(text.as_bytes())?;
    println!("wrote {}", config_path.display());
    println!(
        "wrote {} (the identity: move it OFFLINE; the backup server must not keep it)",
        identity_path.display()
    );
    println!("recipient: {recipient}");
    println!();
    println!("next steps:");
    println!("  bk --config {} run example", config_path.display());
    println!("  bk --config {} list", config_path.display());
    println!(
        "  bk --config {} restore example latest --identity {} --verify",
        config_path.display(),
        identity_path.display()
    );
    Ok(())
}
