//! Garage, the persistent, distributed S3 store, for the tests: a cluster of one or
//! three nodes on free loopback ports, each node its own `garage server` process with
//! its own data, configured through Garage's own CLI (layout, key, bucket). Garage
//! accepts `If-None-Match: *` and overwrites anyway (TESTBED.md), which is exactly
//! what bk must detect and survive.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

pub struct Node {
    pub s3_port: u16,
    pub rpc_port: u16,
    config: PathBuf,
    child: Option<Child>,
}

pub struct Garage {
    pub nodes: Vec<Node>,
    pub key_id: String,
    pub secret: String,
    pub bucket: String,
    _dir: tempfile::TempDir,
}

fn garage(config: &Path, args: &[&str]) -> String {
    let out = super::run(Command::new("garage").arg("-c").arg(config).args(args));
    assert_eq!(
        out.code, 0,
        "garage {args:?} failed:\n{}\n{}",
        out.stdout, out.stderr
    );
    out.stdout
}

fn spawn_node(config: &Path, log: &Path) -> Child {
    let mut cmd = Command::new("garage");
    let log = std::fs::File::create(log).expect("garage log");
    cmd.arg("-c")
        .arg(config)
        .arg("server")
        .stdout(log.try_clone().expect("clone"))
        .stderr(log);
    super::spawn_service(cmd)
}

impl Garage {
    /// Starts `n` nodes (1 or 3) with replication factor `n`, a key and a bucket.
    pub fn start(n: usize) -> Garage {
        super::require_tool("garage");
        let dir = tempfile::Builder::new()
            .prefix("bk-garage-")
            .tempdir()
            .expect("tempdir");
        let secret: String = (0..32)
            .map(|_| format!("{:02x}", rand::random::<u8>()))
            .collect();
        let mut nodes = Vec::new();
        for i in 0..n {
            let (s3_port, rpc_port) = (super::free_port(), super::free_port());
            let root = dir.path().join(format!("node{i}"));
            std::fs::create_dir_all(&root).expect("node dir");
            let config = root.join("garage.toml");
            std::fs::write(
                &config,
                format!(
                    "metadata_dir = \"{root}/meta\"\ndata_dir = \"{root}/data\"\ndb_engine = \"sqlite\"\n\
                     replication_factor = {n}\nrpc_bind_addr = \"127.0.0.1:{rpc_port}\"\n\
                     rpc_public_addr = \"127.0.0.1:{rpc_port}\"\nrpc_secret = \"{secret}\"\n\n\
                     [s3_api]\ns3_region = \"garage\"\napi_bind_addr = \"127.0.0.1:{s3_port}\"\n",
                    root = root.display()
                ),
            )
            .expect("garage config");
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o600))
                .expect("chmod");
            let child = spawn_node(&config, &root.join("garage.log"));
            nodes.push(Node {
                s3_port,
                rpc_port,
                config,
                child: Some(child),
            });
        }
        for node in &nodes {
            super::wait_for_port(node.rpc_port, "garage RPC");
            super::wait_for_port(node.s3_port, "garage S3 API");
        }
        let first = nodes[0].config.clone();
        let ids: Vec<String> = nodes
            .iter()
            .map(|node| {
                garage(&node.config, &["node", "id", "-q"])
                    .trim()
                    .to_string()
            })
            .collect();
        for id in &ids[1..] {
            garage(&first, &["node", "connect", id]);
        }
        for id in &ids {
            let short = id.split('@').next().unwrap_or(id);
            garage(
                &first,
                &["layout", "assign", "-z", "dc1", "-c", "1G", short],
            );
        }
        garage(&first, &["layout", "apply", "--version", "1"]);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let out = super::run(Command::new("garage").arg("-c").arg(&first).args([
                "bucket",
                "create",
                "bk-backups",
            ]));
            if out.code == 0 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "garage never accepted a bucket:\n{}",
                out.stderr
            );
            std::thread::sleep(Duration::from_millis(500));
        }
        let key = garage(&first, &["key", "create", "bk-key"]);
        let field = |name: &str| {
            key.lines()
                .find_map(|l| l.trim().strip_prefix(name).map(|v| v.trim().to_string()))
                .unwrap_or_else(|| panic!("no `{name}` in garage key create output:\n{key}"))
        };
        let (key_id, secret_key) = (field("Key ID:"), field("Secret key:"));
        garage(
            &first,
            &[
                "bucket",
                "allow",
                "--read",
                "--write",
                "--owner",
                "bk-backups",
                "--key",
                "bk-key",
            ],
        );
        Garage {
            nodes,
            key_id,
            secret: secret_key,
            bucket: "bk-backups".into(),
            _dir: dir,
        }
    }

    /// Kills one node with SIGKILL (a crashed machine).
    pub fn kill_node(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Runs a Python snippet with `s3` bound to a boto3 client for node 0 (path-style,
    /// as bk addresses Garage).
    pub fn python(&self, body: &str) -> String {
        let script = format!(
            "import boto3, botocore.config\ns3 = boto3.client('s3', endpoint_url='http://127.0.0.1:{}', aws_access_key_id='{}', aws_secret_access_key='{}', region_name='garage', config=botocore.config.Config(s3={{'addressing_style': 'path'}}))\n{body}\n",
            self.nodes[0].s3_port, self.key_id, self.secret
        );
        let out = super::run(Command::new("python3").arg("-c").arg(script));
        assert_eq!(out.code, 0, "boto3 script failed:\n{}", out.stderr);
        out.stdout
    }

    /// Points a workspace at `s3://bk/prefix` on node `via`.
    pub fn use_in(&self, ws: &mut super::Workspace, via: usize, prefix: &str) {
        use std::os::unix::fs::PermissionsExt;
        let creds = ws.path().join("garage.credentials");
        std::fs::write(
            &creds,
            format!(
                "access_key_id = {}\nsecret_access_key = {}\n",
                self.key_id, self.secret
            ),
        )
        .expect("write");
        std::fs::set_permissions(&creds, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        ws.set_repository(
            &format!("s3://{}/{prefix}", self.bucket),
            &format!(
                "credentials_file = \"{}\"\nmax_retries = 5\nretry_timeout = \"60s\"\n[repository.options]\n\
                 endpoint = \"http://127.0.0.1:{}\"\nallow_http = \"true\"\nregion = \"garage\"\ntimeout = \"30s\"\n",
                creds.display(),
                self.nodes[via].s3_port
            ),
        );
    }
}

impl Drop for Garage {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill_node(i);
        }
    }
}
