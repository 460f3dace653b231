//! Driving the real `bk-server` in end-to-end tests: start it on a free loopback port
//! with a workspace's config, speak plain HTTP to it, send it signals, read its log,
//! and receive its webhook alerts on a tiny in-test HTTP server. Everything is torn
//! down on drop (the daemon is killed if a test did not stop it).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::Workspace;

pub use crate::free_port;

/// Polls `check` every 50 ms until it returns `Some`, or panics after `timeout` saying `what`.
#[track_caller]
pub fn wait_for<T>(timeout: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A running `bk-server`.
pub struct Daemon {
    child: Option<Child>,
    pub port: u16,
    log: PathBuf,
}

impl Daemon {
    /// Starts `bk-server --config <ws>` and waits until `/healthz` answers. The
    /// workspace's config must listen on `port` (see [`server_section`]).
    pub fn start(ws: &Workspace, port: u16) -> Daemon {
        Daemon::start_with_env(ws, port, &[])
    }

    /// [`Daemon::start`] with extra environment variables (e.g. `NOTIFY_SOCKET`).
    pub fn start_with_env(ws: &Workspace, port: u16, env: &[(&str, &Path)]) -> Daemon {
        static STARTS: AtomicUsize = AtomicUsize::new(0);
        let log = ws.path().join(format!(
            "bk-server-{}.log",
            STARTS.fetch_add(1, Ordering::Relaxed)
        ));
        let stderr = std::fs::File::create(&log).expect("log file");
        let child = Command::new(crate::bin_dir().join("bk-server"))
            .arg("--config")
            .arg(&ws.config)
            .env("BK_LOG", "info")
            .envs(env.iter().map(|(k, v)| (*k, *v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("starting bk-server");
        let mut d = Daemon {
            child: Some(child),
            port,
            log,
        };
        wait_for(
            Duration::from_secs(30),
            "bk-server to answer /healthz",
            || {
                if let Some(code) = d.exited() {
                    panic!(
                        "bk-server exited with {code} before it was ready; log:\n{}",
                        d.log()
                    );
                }
                d.try_get("/healthz").filter(|(s, _)| *s == 200)
            },
        );
        d
    }

    pub fn pid(&self) -> i32 {
        self.child
            .as_ref()
            .map(|c| c.id() as i32)
            .expect("daemon is running")
    }

    /// Everything the daemon has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log holds `needle`; returns the log.
    #[track_caller]
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> String {
        wait_for(timeout, &format!("`{needle}` in the bk-server log"), || {
            let log = self.log();
            log.contains(needle).then_some(log)
        })
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: sending a signal to our own child process.
        let rc = unsafe { libc::kill(self.pid(), sig) };
        assert_eq!(rc, 0, "kill({sig}) failed");
    }

    fn exited(&mut self) -> Option<i32> {
        let child = self.child.as_mut()?;
        child.try_wait().ok().flatten().map(|s| {
            use std::os::unix::process::ExitStatusExt;
            s.code().unwrap_or(128 + s.signal().unwrap_or(0))
        })
    }

    /// Waits for the daemon to exit; returns its exit code (128+N for signal N).
    #[track_caller]
    pub fn wait_exit(&mut self, timeout: Duration) -> i32 {
        let code = wait_for(timeout, "bk-server to exit", || self.exited());
        self.child = None;
        code
    }

    /// SIGKILL, as a crash or the OOM killer would.
    pub fn kill9(&mut self) {
        self.signal(libc::SIGKILL);
        self.wait_exit(Duration::from_secs(10));
    }

    /// `GET path` → (status, body); panics if the daemon does not answer.
    #[track_caller]
    pub fn get(&self, path: &str) -> (u16, String) {
        self.try_get(path)
            .unwrap_or_else(|| panic!("GET {path} got no answer; log:\n{}", self.log()))
    }

    pub fn try_get(&self, path: &str) -> Option<(u16, String)> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        )
        .ok()?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).ok()?;
        let text = String::from_utf8_lossy(&raw).into_owned();
        let (head, body) = text.split_once("\r\n\r\n")?;
        let status = head.split_whitespace().nth(1)?.parse().ok()?;
        Some((status, body.to_string()))
    }

    /// `/api/status` as JSON.
    pub fn status(&self) -> serde_json::Value {
        let (code, body) = self.get("/api/status");
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).expect("/api/status is JSON")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The `[server]` table for a daemon on `port`, with a short shutdown grace.
pub fn server_section(port: u16, grace: &str) -> String {
    format!("[server]\nlisten = \"127.0.0.1:{port}\"\nshutdown_grace = \"{grace}\"\n")
}

/// Records a run of `job` that started long ago, so that a scheduled job with
/// `catch_up` is due the moment the daemon starts (no test waits for a cron minute).
pub fn seed_past_run(ws: &Workspace, job: &str) {
    ws.bk(&["status"]).ok(); // creates and migrates the catalog
    let db = rusqlite::Connection::open(ws.catalog()).expect("open catalog");
    db.execute(
        "INSERT INTO runs (job, started, finished, status, trigger, writer, pid)
         VALUES (?1, '2020-01-01T00:00:00+00:00', '2020-01-01T00:01:00+00:00', 'success', 'seed', 'test', 0)",
        [job],
    )
    .expect("insert run");
}

/// The newest run of `job` straight from the catalog file: (status, error), without
/// going through `bk` (which would itself repair orphaned runs).
pub fn last_run_row(catalog: &Path, job: &str) -> Option<(String, Option<String>)> {
    let db = rusqlite::Connection::open(catalog).expect("open catalog");
    db.query_row(
        "SELECT status, error FROM runs WHERE job = ?1 ORDER BY id DESC LIMIT 1",
        [job],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .ok()
}

/// Commit records of `job` in the workspace's repository.
pub fn commit_records(ws: &Workspace, job: &str) -> Vec<PathBuf> {
    let dir = ws.repo_dir().join("backups").join(job);
    let Ok(entries) = std::fs::read_dir(dir) else {
        return vec![];
    };
    entries
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("commit.json"))
        .filter(|p| p.exists())
        .collect()
}

/// One HTTP request the receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    pub body: String,
}

/// A tiny HTTP server that answers 200 to everything and keeps what it received.
pub struct Receiver {
    pub url: String,
    got: Arc<Mutex<Vec<Received>>>,
}

impl Receiver {
    pub fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind receiver");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let got = Arc::new(Mutex::new(Vec::new()));
        let sink = got.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let sink = sink.clone();
                std::thread::spawn(move || serve(stream, &sink));
            }
        });
        Receiver { url, got }
    }

    pub fn received(&self) -> Vec<Received> {
        self.got.lock().expect("lock").clone()
    }

    /// Waits for a request whose path and body satisfy `pred`.
    #[track_caller]
    pub fn wait_for(
        &self,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&Received) -> bool,
    ) -> Received {
        wait_for(timeout, what, || {
            self.received().into_iter().find(|r| pred(r))
        })
    }
}

fn serve(stream: TcpStream, sink: &Mutex<Vec<Received>>) {
    let mut reader = BufReader::new(stream);
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let path = request_line
            .split_whitespace()
            .nth(1)
            .unwrap_or("")
            .to_string();
        let mut length = 0usize;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    length = v.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        sink.lock().expect("lock").push(Received {
            path,
            body: String::from_utf8_lossy(&body).into_owned(),
        });
        let stream = reader.get_mut();
        if stream
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
            .is_err()
        {
            return;
        }
    }
}
