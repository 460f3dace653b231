//! Azure Blob Storage for real, through Azurite: a backup of a few hundred MiB stored,
//! listed, restored and scrubbed; Azurite answers create-only conflicts with 409 where
//! S3 says 412, and bk must still see create-only writes as enforced.

use bk_e2e::azurite::{self, Azurite};
use bk_e2e::Workspace;

#[test]
fn backup_to_azure_restores_and_scrubs_clean() {
    let server = Azurite::start();
    server.create_container("backups");
    let mut ws = Workspace::new();
    azurite::use_azure(&mut ws, &server, "backups", "prod");
    ws.add("[jobs.db]\nkind = \"command\"\ncommand = \"head -c 104857600 /dev/urandom; yes 'row,42,text' | head -c 104857600\"\n");
    let report = ws.bk(&["run", "db", "--json"]).ok().json();
    assert_eq!(report["source_size"].as_u64(), Some(200 << 20));
    let id = report["backup_id"].as_str().unwrap().to_string();
    assert_eq!(ws.backup_ids("db"), vec![id.clone()]);
    ws.bk(&[
        "restore",
        "db",
        &id,
        "--identity",
        ws.identity.to_str().unwrap(),
        "--verify",
    ])
    .ok();
    let scrub = ws.bk(&["verify", "--json"]).ok().json();
    assert_eq!(scrub["damaged"], 0);
    let status = ws.bk(&["status", "--json"]).ok().json();
    assert_eq!(status["repository"]["create_only"], "enforced", "{status}");
    assert!(!status.to_string().contains(azurite::KEY));
}
