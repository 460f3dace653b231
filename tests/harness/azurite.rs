//! Azure Blob Storage for the tests: Azurite (`npm install -g azurite`), Microsoft's
//! emulator, on a free loopback port, one per test. Containers are created through the
//! Azure SDK for Python (`azure-storage-blob`), since object_store cannot create them.

use std::process::{Child, Command};

/// Azurite's well-known development account (public, documented by Microsoft).
pub const ACCOUNT: &str = "devstoreaccount1";
pub const KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

pub struct Azurite {
    pub port: u16,
    child: Child,
    _data: tempfile::TempDir,
}

impl Azurite {
    pub fn start() -> Azurite {
        super::require_tool("azurite-blob");
        let port = super::free_port();
        let data = tempfile::Builder::new()
            .prefix("bk-azurite-")
            .tempdir()
            .expect("tempdir");
        let mut cmd = Command::new("azurite-blob");
        cmd.args([
            "--blobHost",
            "127.0.0.1",
            "--blobPort",
            &port.to_string(),
            "--silent",
            "--skipApiVersionCheck",
            "--disableTelemetry",
            "--loose",
        ])
        .arg("--location")
        .arg(data.path());
        let child = super::spawn_service(cmd);
        super::wait_for_port(port, "Azurite");
        Azurite {
            port,
            child,
            _data: data,
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}/{ACCOUNT}", self.port)
    }

    pub fn create_container(&self, name: &str) {
        let script = format!(
            "from azure.storage.blob import BlobServiceClient\nc = BlobServiceClient.from_connection_string('DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={KEY};BlobEndpoint={}')\nc.create_container('{name}')\n",
            self.endpoint()
        );
        let out = super::run(Command::new("python3").arg("-c").arg(script));
        assert_eq!(
            out.code, 0,
            "creating the container failed:\n{}",
            out.stderr
        );
    }
}

impl Drop for Azurite {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Points a workspace at `az://container/prefix` on Azurite, the key in a 0600 file.
pub fn use_azure(ws: &mut super::Workspace, server: &Azurite, container: &str, prefix: &str) {
    use std::os::unix::fs::PermissionsExt;
    let creds = ws.path().join("azure.credentials");
    std::fs::write(
        &creds,
        format!("account_name = {ACCOUNT}\naccess_key = {KEY}\n"),
    )
    .expect("write");
    std::fs::set_permissions(&creds, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    ws.set_repository(
        &format!("az://{container}/{prefix}"),
        &format!(
            "credentials_file = \"{}\"\nmax_retries = 2\nretry_timeout = \"15s\"\n[repository.options]\nendpoint = \"{}\"\nallow_http = \"true\"\n",
            creds.display(),
            server.endpoint()
        ),
    );
}
