//! Command-line syntax (the user-facing contract in SPEC.md; names never change).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "bk",
    version,
    about = "Encrypted, pull-based backups that are proven to restore"
)]
#[command(
    after_help = "Exit status: 0 success, 1 the operation failed, 2 bad usage or configuration."
)]
pub struct Cli {
    /// Configuration file [default: $BK_CONFIG, else ./bk.toml, else /etc/bk/bk.toml]
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// More log output on stderr (-v info, -vv debug)
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Create a new age identity (mode 0600) and print its recipient
    #[command(after_help = "Example:\n  bk keygen --output /secure/offline/bk-identity.age")]
    Keygen {
        /// Where to write the identity; never overwritten
        #[arg(long, short)]
        output: PathBuf,
    },
    /// Run one backup job now
    #[command(after_help = "Example:\n  bk run media")]
    Run {
        job: String,
        /// Print the result as one JSON document
        #[arg(long)]
        json: bool,
    },
    /// List committed backups, newest first (reads the repository, not the catalog)
    #[command(after_help = "Examples:\n  bk list\n  bk list media --json")]
    List {
        job: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Restore a backup, or verify it end to end with --verify
    #[command(
        after_help = "Examples:\n  bk restore media latest --identity key.age --to /srv/media.restored\n  bk restore app-db --identity key.age --stdout > app.dump\n  bk restore app-db --identity key.age --pg-target postgresql://postgres@localhost/app_restored\n  bk restore shop-db --identity key.age --mysql-target mysql://root@localhost/shop_restored\n  bk restore media --identity key.age --verify"
    )]
    Restore(RestoreArgs),
    /// Restore a backup for real into a scratch target and check it (the job's [restore_test])
    #[command(
        after_help = "Restores the newest backup (or a random retained one: restore_test.pick) with the\nrestore-test identity: into a scratch database for postgres jobs (row counts and SQL\nchecks), a scratch directory for directory jobs (every file against the manifest);\nthe scratch is removed afterwards. The result goes to the catalog and `bk status`.\n\nExample:\n  bk restore-test app-db"
    )]
    RestoreTest {
        job: String,
        /// Print the result as one JSON document
        #[arg(long)]
        json: bool,
    },
    /// Key-less integrity scrub: re-read every stored object and check it against its commit record
    #[command(after_help = "Examples:\n  bk verify\n  bk verify media --json")]
    Verify {
        job: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Remove uncommitted leftovers of failed or crashed backups (after a grace period)
    #[command(after_help = "Examples:\n  bk gc --dry-run\n  bk gc --grace 48h")]
    Gc {
        /// Show what would be removed, remove nothing
        #[arg(long)]
        dry_run: bool,
        /// Leave uncommitted objects younger than this [default: repository.gc_grace, 24h]
        #[arg(long, value_parser = humantime::parse_duration)]
        grace: Option<std::time::Duration>,
        #[arg(long)]
        json: bool,
    },
    /// The catalog (the backup server's run history and backup cache)
    #[command(after_help = "Example:\n  bk catalog rebuild")]
    Catalog {
        #[command(subcommand)]
        command: CatalogCommand,
    },
    /// Apply each job's retention: remove the backups no keep_* rule keeps
    #[command(after_help = "Examples:\n  bk prune --dry-run\n  bk prune media")]
    Prune {
        /// Only this job [default: every job with a `retention`]
        job: Option<String>,
        /// Show what would be removed and why each survivor stays; remove nothing
        #[arg(long)]
        dry_run: bool,
        /// Print the result as one JSON document
        #[arg(long)]
        json: bool,
    },
    /// Every job's last run, last good backup and next run (from the catalog)
    #[command(
        after_help = "Examples:\n  bk status\n  bk status --json | jq '.jobs[] | select(.overdue)'"
    )]
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Write a commented starter configuration into DIR and a new key pair
    #[command(
        after_help = "The identity (private key) is written outside DIR, to --identity: move it offline.\n\nExamples:\n  bk init /etc/bk --identity /media/usb/bk-identity.age\n  bk init ./demo --source /srv/media --identity ./demo-identity.age"
    )]
    Init {
        #[arg(default_value = ".")]
        dir: PathBuf,
        /// Directory the example job backs up
        #[arg(long, default_value = "/usr/share/doc")]
        source: PathBuf,
        /// Where to write the new identity; never inside DIR [default: ~/bk-identity.age]
        #[arg(long, value_name = "FILE")]
        identity: Option<PathBuf>,
    },
    /// Print a shell completion script
    #[command(
        after_help = "Examples:\n  bk completions bash > /etc/bash_completion.d/bk\n  bk completions zsh > \"${fpath[1]}/_bk\"\n  bk completions fish > ~/.config/fish/completions/bk.fish"
    )]
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the authorized_keys line for HOST's source user, restricted to what its jobs run
    #[command(
        after_help = "Example:\n  bk authorized-key db1 | ssh root@db1 'cat >> ~bk/.ssh/authorized_keys'"
    )]
    AuthorizedKey { host: String },
    /// Configuration commands
    #[command(after_help = "Examples:\n  bk config check\n  bk config check --offline")]
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
}

#[derive(Subcommand)]
pub enum CatalogCommand {
    /// Rebuild the backup cache from the repository alone
    #[command(after_help = "Example:\n  bk catalog rebuild")]
    Rebuild,
}

#[derive(Subcommand)]
pub enum ConfigCommand {
    /// Validate the configuration, then check every host and the storage (read-only)
    #[command(
        after_help = "Reports every problem with its fix. Exit status: 0 all good, 1 a check failed,\n2 the configuration is invalid.\n\nExamples:\n  bk config check\n  bk --config /etc/bk/bk.toml config check --offline\n  bk config check --json"
    )]
    Check {
        /// Only validate the file; contact no host and no storage
        #[arg(long)]
        offline: bool,
        /// Print the result as one JSON document
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
pub struct RestoreArgs {
    pub job: String,
    /// A backup ID from `bk list`, or `latest`
    #[arg(default_value = "latest")]
    pub backup: String,
    /// age identity file (or unencrypted SSH private key); repeatable
    #[arg(long, short, required = true)]
    pub identity: Vec<PathBuf>,
    /// Restore a directory backup into this new or empty directory
    #[arg(long, conflicts_with = "stdout", value_name = "DIR")]
    pub to: Option<PathBuf>,
    /// Write the payload (tar, dump…) to standard output
    #[arg(long)]
    pub stdout: bool,
    /// Restore a postgres backup into the new database this URL names
    /// (postgresql://user@host/NEWDB), created first; dropped again if the restore fails
    #[arg(long, value_name = "URL", conflicts_with_all = ["to", "stdout", "verify"])]
    pub pg_target: Option<String>,
    /// With --pg-target: restore without owners and privileges (when the dump's roles
    /// do not exist on the target server)
    #[arg(long, requires = "pg_target")]
    pub no_owner: bool,
    /// Restore a mysql backup into the new database this URL names
    /// (mysql://user@host:3306/NEWDB), created first; dropped again if the restore fails
    #[arg(long, value_name = "URL", conflicts_with_all = ["to", "stdout", "verify", "pg_target"])]
    pub mysql_target: Option<String>,
    /// Download, decrypt, decompress and check every hash and entry; write nothing
    #[arg(long)]
    pub verify: bool,
    /// Keep setuid, setgid and sticky bits on restored files (dropped by default)
    #[arg(long)]
    pub keep_special_bits: bool,
    /// Print the result as one JSON document
    #[arg(long)]
    pub json: bool,
}
