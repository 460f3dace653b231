//! The one shared harness for bk's end-to-end tests: builds and finds the real `bk`
//! binaries, makes throw-away workspaces (config, key pair, local repository), runs
//! commands and measures their peak memory, and checks that the external tools the
//! tests compare against (`age`, `zstd`, `tar`…) are installed. Services (sshd,
//! PostgreSQL, MariaDB, S3) live in their own modules beside this one and are started
//! once per test binary on free loopback ports.

pub mod azurite;
pub mod chromium;
pub mod daemon;
pub mod garage;
pub mod mariadb;
pub mod postgres;
pub mod s3;
pub mod sshd;
pub mod tamper;
pub mod tree;

use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// The directory holding the workspace's built binaries (built once per test binary).
pub fn bin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("workspace root")
            .to_path_buf();
        let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args([
                "build",
                "--quiet",
                "--bins",
                "-p",
                "bk-client",
                "-p",
                "bk-server",
            ])
            .current_dir(&root)
            .status()
            .expect("running cargo build");
        assert!(status.success(), "building the bk binaries failed");
        // target/debug/deps/<test> -> target/debug
        let exe = std::env::current_exe().expect("test executable path");
        exe.parent()
            .and_then(Path::parent)
            .expect("target dir")
            .to_path_buf()
    })
}

pub fn bk_path() -> PathBuf {
    bin_dir().join("bk")
}

/// Fails the test unless `tool` is on PATH: a missing tool is a broken setup, never a skip.
pub fn require_tool(tool: &str) {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        found,
        "`{tool}` is not installed; run scripts/test.sh, which installs what the tests need"
    );
}

/// What a finished command left behind.
#[derive(Debug)]
pub struct Outcome {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    /// Peak resident memory of the process itself, in KiB.
    pub max_rss_kib: u64,
}

impl Outcome {
    #[track_caller]
    pub fn ok(self) -> Self {
        assert_eq!(
            self.code, 0,
            "command failed\nstdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }

    #[track_caller]
    pub fn fails_with(self, code: i32) -> Self {
        assert_eq!(
            self.code, code,
            "unexpected exit status\nstdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}", self.stdout))
    }
}

/// Runs `cmd` to completion, reaping it with wait4 to read its own peak RSS.
pub fn run(cmd: &mut Command) -> Outcome {
    let stdout_file = tempfile::tempfile().expect("tempfile");
    let stderr_file = tempfile::tempfile().expect("tempfile");
    let child = cmd
        .stdin(Stdio::null())
        .stdout(stdout_file.try_clone().expect("clone"))
        .stderr(stderr_file.try_clone().expect("clone"))
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: plain FFI call on our own child's pid with valid out-pointers.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(rc, pid, "wait4 failed");
    std::mem::forget(child);
    let status = std::process::ExitStatus::from_raw(status);
    let read = |mut f: std::fs::File| {
        use std::io::{Read, Seek};
        let mut s = String::new();
        f.rewind().expect("rewind");
        f.read_to_string(&mut s).expect("read output");
        s
    };
    Outcome {
        code: status.code().unwrap_or(128 + status.signal().unwrap_or(0)),
        stdout: read(stdout_file),
        stderr: read(stderr_file),
        max_rss_kib: usage.ru_maxrss as u64,
    }
}

/// A throw-away bk setup: a directory with a config, a key pair and a local repository.
pub struct Workspace {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub identity: PathBuf,
    pub recipient: String,
    /// TOML appended after the generated `[repository]` and `[catalog]` sections.
    jobs: String,
    repository_extra: String,
    repository_url: Option<String>,
}

impl Workspace {
    pub fn new() -> Workspace {
        let dir = tempfile::Builder::new()
            .prefix("bk-e2e-")
            .tempdir()
            .expect("tempdir");
        let identity = dir.path().join("identity.age");
        let out = run(Command::new(bk_path())
            .arg("keygen")
            .arg("--output")
            .arg(&identity))
        .ok();
        let recipient = out.stdout.trim().to_string();
        let config = dir.path().join("bk.toml");
        let ws = Workspace {
            dir,
            config,
            identity,
            recipient,
            jobs: String::new(),
            repository_extra: String::new(),
            repository_url: None,
        };
        ws.write_config();
        ws
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn repo_dir(&self) -> PathBuf {
        self.path().join("repo")
    }

    pub fn catalog(&self) -> PathBuf {
        self.path().join("catalog.db")
    }

    /// Adds TOML (jobs, hosts…) to the configuration.
    pub fn add(&mut self, toml: &str) -> &mut Self {
        self.jobs.push_str(toml);
        self.jobs.push('\n');
        self.write_config();
        self
    }

    /// Adds keys to the `[repository]` table.
    pub fn repository_option(&mut self, toml: &str) -> &mut Self {
        self.repository_extra.push_str(toml);
        self.repository_extra.push('\n');
        self.write_config();
        self
    }

    /// Uses another repository URL; `extra` is TOML for the end of `[repository]`
    /// (it may open `[repository.options]`).
    pub fn set_repository(&mut self, url: &str, extra: &str) -> &mut Self {
        self.repository_url = Some(url.to_string());
        self.repository_extra = extra.to_string();
        self.write_config();
        self
    }

    fn write_config(&self) {
        let text = format!(
            "[repository]\nurl = \"{}\"\nrecipients = [\"{}\"]\n{}\n[catalog]\npath = \"{}\"\n\n{}",
            self.repository_url
                .clone()
                .unwrap_or_else(|| format!("file://{}", self.repo_dir().display())),
            self.recipient,
            self.repository_extra,
            self.catalog().display(),
            self.jobs
        );
        let mut f = std::fs::File::create(&self.config).expect("write config");
        f.write_all(text.as_bytes()).expect("write config");
    }

    /// `bk --config <ws> ARGS…`
    pub fn bk(&self, args: &[&str]) -> Outcome {
        run(Command::new(bk_path())
            .arg("--config")
            .arg(&self.config)
            .args(args))
    }

    /// The directory of the one committed backup of `job` with `id`.
    pub fn backup_dir(&self, job: &str, id: &str) -> PathBuf {
        self.repo_dir().join("backups").join(job).join(id)
    }

    /// IDs from `bk list JOB --json`, newest first.
    pub fn backup_ids(&self, job: &str) -> Vec<String> {
        let listed = self.bk(&["list", job, "--json"]).ok().json();
        listed
            .as_array()
            .expect("list --json is an array")
            .iter()
            .map(|b| b["backup_id"].as_str().expect("backup_id").to_string())
            .collect()
    }
}

impl Default for Workspace {
    fn default() -> Self {
        Self::new()
    }
}

/// Starts a test service that dies with the test process, however that ends (even
/// SIGKILL): PR_SET_PDEATHSIG fires when the spawning *thread* exits, so the spawn
/// happens on a thread that lives as long as the process.
pub fn spawn_service(mut cmd: Command) -> std::process::Child {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // SAFETY: prctl only sets a flag on the child between fork and exec.
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let _ = tx.send(cmd.spawn());
        loop {
            std::thread::park();
        }
    });
    rx.recv()
        .expect("service spawner thread")
        .unwrap_or_else(|e| panic!("cannot start a test service ({e}); run scripts/test-deps.sh"))
}

/// Waits until something accepts TCP connections on `port` of loopback.
#[track_caller]
pub fn wait_for_port(port: u16, what: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "{what} did not listen on port {port} within 30 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// A free TCP port on loopback (bound and released; good enough for test services).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// Runs a shell pipeline and returns its stdout, failing the test on a non-zero exit.
#[track_caller]
pub fn sh(script: &str) -> String {
    let out = run(Command::new("bash")
        .arg("-o")
        .arg("pipefail")
        .arg("-c")
        .arg(script));
    assert_eq!(out.code, 0, "`{script}` failed:\n{}", out.stderr);
    out.stdout
}
