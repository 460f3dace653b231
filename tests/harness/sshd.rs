//! A real OpenSSH server (Debian's `/usr/sbin/sshd`) on a free loopback port, with a
//! dedicated unprivileged source user that logs in by key only.
//!
//! Keys live under /var/lib/bk-e2e (created once per machine, under a lock, so that
//! parallel test processes agree): the host key, the client key bk logs in with, and
//! the source user's home whose only content is `.ssh/authorized_keys`. Each server
//! gets its own config, log and known_hosts file (`[127.0.0.1]:PORT ssh-ed25519 …`).
//! `Sshd::shared()` starts one server per test binary (stopped at exit);
//! `Sshd::start()` gives a test its own, stopped on drop, for tests that kill
//! connections.

use std::fs;
use std::io::Read;
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::{free_port, require_tool, sh};

/// The unprivileged user bk logs in as on the "source host".
pub const SOURCE_USER: &str = "bk-src";
/// Machine-wide fixtures shared by every test process.
pub const FIXTURES: &str = "/var/lib/bk-e2e";

/// Paths of the machine-wide keys and home.
pub struct Keys {
    pub dir: PathBuf,
    pub host_key: PathBuf,
    pub client_key: PathBuf,
    pub home: PathBuf,
}

/// Creates (once per machine) the source user, its home, the host and client keys.
pub fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        require_tool("/usr/sbin/sshd");
        require_tool("ssh-keygen");
        require_tool("flock");
        let dir = PathBuf::from(FIXTURES).join("ssh");
        let home = PathBuf::from(FIXTURES).join("home");
        fs::create_dir_all(&dir).expect("create fixtures dir");
        fs::set_permissions(FIXTURES, fs::Permissions::from_mode(0o755)).expect("chmod fixtures");
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).expect("chmod ssh fixtures");
        // A locked password (`!`) blocks even key logins with UsePAM no: set `*`.
        sh(&format!(
            r#"exec 9>{FIXTURES}/.lock; flock 9
            id -u {u} >/dev/null 2>&1 || useradd --no-create-home --home-dir {home} --shell /bin/sh {u}
            usermod -p '*' {u}
            mkdir -p /run/sshd && chmod 755 /run/sshd
            test -f {dir}/host_ed25519 || ssh-keygen -q -t ed25519 -N '' -C bk-e2e-host -f {dir}/host_ed25519
            test -f {dir}/client_ed25519 || ssh-keygen -q -t ed25519 -N '' -C bk-e2e-client -f {dir}/client_ed25519
            mkdir -p {home}/.ssh
            cp {dir}/client_ed25519.pub {home}/.ssh/authorized_keys.new
            mv {home}/.ssh/authorized_keys.new {home}/.ssh/authorized_keys
            chown -R {u}: {home} && chmod 700 {home} {home}/.ssh && chmod 600 {home}/.ssh/authorized_keys"#,
            u = SOURCE_USER,
            home = home.display(),
            dir = dir.display(),
        ));
        Keys {
            host_key: dir.join("host_ed25519"),
            client_key: dir.join("client_ed25519"),
            dir,
            home,
        }
    })
}

/// Replaces the source user's authorized_keys content (e.g. with a `restrict,command=` line).
/// Serialised with the fixture lock; callers restore the plain key afterwards.
pub fn set_authorized_keys(content: &str) {
    let k = keys();
    let path = k.home.join(".ssh/authorized_keys");
    fs::write(path.with_extension("new"), content).expect("write authorized_keys");
    sh(&format!(
        "chown {u}: {p}.new && chmod 600 {p}.new && mv {p}.new {p}",
        u = SOURCE_USER,
        p = path.display()
    ));
}

/// One running sshd.
pub struct Sshd {
    pub port: u16,
    pub dir: tempfile::TempDir,
    /// A known_hosts file holding this server's real host key.
    pub known_hosts: PathBuf,
    pub client_key: PathBuf,
    child: Mutex<Option<Child>>,
    pid: u32,
}

impl Sshd {
    /// The server shared by the tests of this binary (started on first use, stopped at exit).
    pub fn shared() -> &'static Sshd {
        static SHARED: OnceLock<Sshd> = OnceLock::new();
        SHARED.get_or_init(|| {
            let s = Sshd::start();
            register_exit_kill(s.pid);
            register_exit_command(format!("rm -rf {}", s.dir.path().display()));
            s
        })
    }

    /// A server of the test's own, stopped when dropped.
    pub fn start() -> Sshd {
        Sshd::start_with(None)
    }

    /// A server of the test's own whose only authorized_keys content is `lines`
    /// (e.g. the `restrict,command=` line `bk authorized-key` prints).
    pub fn start_with_authorized_keys(lines: &str) -> Sshd {
        Sshd::start_with(Some(lines))
    }

    fn start_with(authorized_keys: Option<&str>) -> Sshd {
        let keys = keys();
        let dir = tempfile::Builder::new()
            .prefix("bk-sshd-")
            .tempdir()
            .expect("tempdir");
        let port = free_port();
        let config = dir.path().join("sshd_config");
        let authorized_keys_file = match authorized_keys {
            Some(lines) => {
                // sshd reads the file as the user: make it readable, not writable, by them.
                fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
                let path = dir.path().join("authorized_keys");
                fs::write(&path, lines).expect("authorized_keys");
                fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).expect("chmod");
                path.display().to_string()
            }
            None => ".ssh/authorized_keys".to_string(),
        };
        fs::write(
            &config,
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {host_key}\nPidFile none\nUsePAM no\n\
                 StrictModes no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
                 PubkeyAuthentication yes\nAuthorizedKeysFile {authorized_keys_file}\nAllowUsers {user}\n\
                 PermitRootLogin no\nMaxSessions 32\nMaxStartups 64\nLogLevel VERBOSE\n",
                host_key = keys.host_key.display(),
                user = SOURCE_USER
            ),
        )
        .expect("write sshd_config");
        let log = fs::File::create(dir.path().join("sshd.log")).expect("sshd log");
        let child = Command::new("/usr/sbin/sshd")
            .arg("-D")
            .arg("-e")
            .arg("-f")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log"))
            .stderr(log)
            .spawn()
            .expect("start sshd");
        let pid = child.id();
        let host_pub = fs::read_to_string(keys.host_key.with_extension("pub")).expect("host key");
        let mut fields = host_pub.split_whitespace();
        let (kind, key) = (
            fields.next().expect("key type"),
            fields.next().expect("key"),
        );
        let known_hosts = dir.path().join("known_hosts");
        fs::write(&known_hosts, format!("[127.0.0.1]:{port} {kind} {key}\n")).expect("known_hosts");
        let sshd = Sshd {
            port,
            known_hosts,
            client_key: keys.client_key.clone(),
            dir,
            child: Mutex::new(Some(child)),
            pid,
        };
        sshd.wait_ready();
        sshd
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) {
                let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                let mut banner = [0u8; 4];
                if s.read_exact(&mut banner).is_ok() && &banner == b"SSH-" {
                    return;
                }
            }
            if let Some(child) = self.child.lock().unwrap().as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!("sshd exited ({status}):\n{}", self.log());
                }
            }
            assert!(
                Instant::now() < deadline,
                "sshd did not come up:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The server's own log (sshd -e).
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("sshd.log")).unwrap_or_default()
    }

    /// The listener's PID.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// `[hosts.NAME]` TOML for this server, logging in as the source user.
    pub fn host_toml(&self, name: &str) -> String {
        format!(
            "[hosts.{name}]\naddress = \"127.0.0.1\"\nport = {}\nuser = \"{}\"\nkey = \"{}\"\nknown_hosts = \"{}\"\n",
            self.port,
            SOURCE_USER,
            self.client_key.display(),
            self.known_hosts.display()
        )
    }

    /// PIDs of the per-connection processes sshd forked (one `[priv]` per connection).
    pub fn connection_pids(&self) -> Vec<u32> {
        children_of(self.pid)
    }

    /// Kills (SIGKILL) every connection's server side, as a crash or a cut cable would:
    /// the privileged monitor and the unprivileged process that holds the socket (the
    /// commands those sessions started are left alone, as on a real network cut).
    pub fn kill_connections(&self) -> usize {
        let mut pids = Vec::new();
        for monitor in self.connection_pids() {
            pids.push(monitor);
            pids.extend(
                children_of(monitor)
                    .into_iter()
                    .filter(|p| comm(*p) == "sshd"),
            );
        }
        for pid in &pids {
            // SAFETY: sending a signal to a process we found under our own sshd.
            unsafe {
                libc::kill(*pid as libc::pid_t, libc::SIGKILL);
            }
        }
        pids.len()
    }
}

/// A process's command name, from /proc.
pub fn comm(pid: u32) -> String {
    fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        .to_string()
}

impl Drop for Sshd {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.lock().unwrap().take() {
            self.kill_connections();
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Direct children of `parent`, from /proc.
pub fn children_of(parent: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(entries) = fs::read_dir("/proc") else {
        return out;
    };
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid …; comm may hold spaces, so split after the last ')'.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        let ppid = rest
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(parent) {
            out.push(pid);
        }
    }
    out
}

static EXIT_KILLS: Mutex<Vec<u32>> = Mutex::new(Vec::new());
static EXIT_COMMANDS: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Runs a shell command when the test binary exits (e.g. `pg_ctl stop` for a shared
/// PostgreSQL): statics are never dropped.
pub fn register_exit_command(command: String) {
    EXIT_COMMANDS.lock().unwrap().push(command);
    register_exit_kill(0);
}

/// Kills `pid` (and its process group's stragglers) when the test binary exits:
/// statics are never dropped, and a leaked server would outlive the test run.
pub fn register_exit_kill(pid: u32) {
    static REGISTERED: OnceLock<()> = OnceLock::new();
    if pid != 0 {
        EXIT_KILLS.lock().unwrap().push(pid);
    }
    REGISTERED.get_or_init(|| {
        extern "C" fn at_exit() {
            if let Ok(commands) = EXIT_COMMANDS.lock() {
                for c in commands.iter() {
                    let _ = Command::new("sh")
                        .arg("-c")
                        .arg(c)
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .status();
                }
            }
            if let Ok(pids) = EXIT_KILLS.lock() {
                for pid in pids.iter().filter(|p| **p != 0) {
                    for child in children_of(*pid) {
                        for grandchild in children_of(child) {
                            // SAFETY: signals to processes this test binary started.
                            unsafe {
                                libc::kill(grandchild as libc::pid_t, libc::SIGKILL);
                            }
                        }
                        // SAFETY: as above.
                        unsafe {
                            libc::kill(child as libc::pid_t, libc::SIGKILL);
                        }
                    }
                    // SAFETY: as above.
                    unsafe {
                        libc::kill(*pid as libc::pid_t, libc::SIGTERM);
                    }
                }
            }
        }
        // SAFETY: registering a plain extern "C" function with no captured state.
        unsafe {
            libc::atexit(at_exit);
        }
    });
}

/// Where a path sits relative to the source user's home, for listings in assertions.
pub fn home_listing(home: &Path) -> Vec<String> {
    let out = sh(&format!(
        "cd {} && find . -mindepth 1 | sort",
        home.display()
    ));
    out.lines().map(String::from).collect()
}
