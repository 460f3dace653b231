//! A real S3 server for the tests: moto's server mode (`pip install 'moto[server]'`),
//! which enforces create-only conditional writes exactly like AWS (TESTBED.md). Each test
//! starts its own (0.4–1.5 s), so pausing one never disturbs another; moto's log is
//! kept in the temp directory for diagnosis. Objects are inspected and tampered with
//! through the S3 API (boto3, which moto brings), never through moto's internals.

use std::process::{Child, Command};

pub const ACCESS_KEY: &str = "AKIABKTESTACCESSKEY1";
pub const SECRET_KEY: &str = "bk-test-secret-Zq9xW3vR7tY2uI8oP4aS6dF1";

pub struct S3Server {
    pub port: u16,
    child: Child,
}

impl S3Server {
    /// Starts a fresh moto server on a free loopback port and waits until it answers.
    pub fn start() -> S3Server {
        super::require_tool("python3");
        let port = super::free_port();
        let mut cmd = Command::new("python3");
        let log = std::env::temp_dir().join(format!("bk-e2e-moto-{port}.log"));
        let log = std::fs::File::create(&log).expect("moto log file");
        cmd.args([
            "-m",
            "moto.server",
            "-H",
            "127.0.0.1",
            "-p",
            &port.to_string(),
        ])
        .stdout(log.try_clone().expect("clone"))
        .stderr(log);
        let child = super::spawn_service(cmd);
        super::wait_for_port(port, "moto");
        S3Server { port, child }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Runs a Python snippet with `s3` bound to a boto3 client for this server.
    pub fn python(&self, body: &str) -> String {
        let script = format!(
            "import boto3, sys\ns3 = boto3.client('s3', endpoint_url='{}', aws_access_key_id='{ACCESS_KEY}', aws_secret_access_key='{SECRET_KEY}', region_name='us-east-1')\n{body}\n",
            self.endpoint()
        );
        let out = super::run(Command::new("python3").arg("-c").arg(script));
        assert_eq!(out.code, 0, "boto3 script failed:\n{}", out.stderr);
        out.stdout
    }

    pub fn create_bucket(&self, bucket: &str) {
        self.python(&format!("s3.create_bucket(Bucket='{bucket}')"));
    }

    /// Every key in the bucket under `prefix`, sorted.
    pub fn keys(&self, bucket: &str, prefix: &str) -> Vec<String> {
        let out = self.python(&format!(
            "p = s3.get_paginator('list_objects_v2')\nfor page in p.paginate(Bucket='{bucket}', Prefix='{prefix}'):\n    for o in page.get('Contents', []):\n        print(o['Key'])"
        ));
        let mut keys: Vec<String> = out.lines().map(String::from).collect();
        keys.sort();
        keys
    }

    /// Multipart uploads started and neither completed nor aborted.
    pub fn open_multipart_uploads(&self, bucket: &str) -> usize {
        let out = self.python(&format!(
            "print(len(s3.list_multipart_uploads(Bucket='{bucket}').get('Uploads', [])))"
        ));
        out.trim().parse().expect("a count")
    }

    /// Overwrites a few bytes in the middle of an object, through the S3 API.
    pub fn corrupt(&self, bucket: &str, key: &str) {
        self.python(&format!(
            "b = bytearray(s3.get_object(Bucket='{bucket}', Key='{key}')['Body'].read())\nm = len(b) // 2\nfor i in range(m, m + 4): b[i] ^= 0xff\ns3.put_object(Bucket='{bucket}', Key='{key}', Body=bytes(b))"
        ));
    }

    pub fn pid(&self) -> libc::pid_t {
        self.child.id() as libc::pid_t
    }

    pub fn pause(&self) {
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGSTOP) };
    }

    pub fn resume(&self) {
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGCONT) };
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.resume();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Points a workspace at `s3://bucket/prefix` on `server`, credentials in a 0600 file,
/// with short timeouts and few retries so failure tests finish quickly.
pub fn use_s3(ws: &mut super::Workspace, server: &S3Server, bucket: &str, prefix: &str) {
    use_s3_with_timeout(ws, server, bucket, prefix, "10s")
}

/// `use_s3` with another per-request timeout (moto assembles a completed multipart
/// upload in memory: for a large object on a busy machine that can take seconds).
pub fn use_s3_with_timeout(
    ws: &mut super::Workspace,
    server: &S3Server,
    bucket: &str,
    prefix: &str,
    timeout: &str,
) {
    use std::os::unix::fs::PermissionsExt;
    let creds = ws.path().join("s3.credentials");
    std::fs::write(
        &creds,
        format!("access_key_id = {ACCESS_KEY}\nsecret_access_key = {SECRET_KEY}\n"),
    )
    .expect("write");
    std::fs::set_permissions(&creds, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    ws.set_repository(
        &format!("s3://{bucket}/{prefix}"),
        &format!(
            "credentials_file = \"{}\"\nmax_retries = 2\nretry_timeout = \"15s\"\n[repository.options]\nendpoint = \"{}\"\nallow_http = \"true\"\nregion = \"us-east-1\"\ntimeout = \"{timeout}\"\n",
            creds.display(),
            server.endpoint()
        ),
    );
}
