//! Anomalies: an uploads folder encrypted by "ransomware" (every file replaced by
//! random bytes of the same size) and an uploads folder that lost most of its files.
//! Both backups are committed — never dropped — and flagged: in `bk run`, in
//! `bk status`, in /metrics and in an `anomaly` webhook with the figures.

use std::fs;
use std::path::Path;
use std::time::Duration;

use bk_e2e::daemon::{free_port, seed_past_run, server_section, Daemon, Receiver};
use bk_e2e::Workspace;

/// An uploads folder of compressible text documents.
fn uploads(root: &Path) {
    for dir in 0..4 {
        let d = root.join(format!("2026/{dir:02}"));
        fs::create_dir_all(&d).unwrap();
        for i in 0..25 {
            let text: String = (0..400)
                .map(|l| format!("invoice {dir}-{i} line {l}: 3 widgets at 4.20 EUR, shipped\n"))
                .collect();
            fs::write(d.join(format!("doc-{i}.txt")), text).unwrap();
        }
    }
}

/// Every file rewritten with random bytes of the same size, as ransomware does.
fn encrypt_in_place(root: &Path) {
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let len = fs::metadata(&p).unwrap().len() as usize;
                let noise: Vec<u8> = (0..len).map(|_| rand::random::<u8>()).collect();
                fs::write(&p, noise).unwrap();
            }
        }
    }
}

fn job(ws: &mut Workspace, src: &Path) {
    ws.add(&format!(
        "[jobs.uploads]\nkind = \"directory\"\npath = \"{}\"\nschedule = \"0 2 * * *\"\n",
        src.display()
    ));
}

#[test]
fn ransomware_encrypted_uploads_are_committed_but_raise_the_anomaly_alert() {
    let hooks = Receiver::start();
    let port = free_port();
    let mut ws = Workspace::new();
    let src = ws.path().join("uploads");
    uploads(&src);
    ws.add(&server_section(port, "5s"));
    ws.add(&format!("[alerts]\nwebhook = \"{}/hook\"\n", hooks.url));
    job(&mut ws, &src);
    for _ in 0..3 {
        let out = ws.bk(&["run", "uploads", "--json"]).ok().json();
        assert_eq!(out["anomalies"], serde_json::json!([]), "{out}");
    }

    encrypt_in_place(&src);
    seed_past_run(&ws, "uploads"); // due at start: the daemon runs it now
    let d = Daemon::start(&ws, port);
    let hook = hooks.wait_for(Duration::from_secs(60), "the anomaly webhook", |r| {
        r.path == "/hook" && r.body.contains("\"anomaly\"")
    });
    let alert: serde_json::Value = serde_json::from_str(&hook.body).expect("JSON");
    assert_eq!(alert["job"], "uploads", "{alert}");
    let found = alert["anomalies"].as_array().expect("anomalies");
    let compression = found
        .iter()
        .find(|a| a["kind"] == "compression")
        .unwrap_or_else(|| panic!("no compression anomaly: {alert}"));
    assert!(compression["ratio"].as_f64().unwrap() < 1.1, "{alert}");
    assert!(compression["median"].as_f64().unwrap() > 3.0, "{alert}");
    assert!(
        alert["error"].as_str().unwrap_or("").contains("ransomware"),
        "{alert}"
    );
    // Same size, same files: only the compression changed.
    assert_eq!(found.len(), 1, "{alert}");

    // Committed all the same, and visible to an operator and to Prometheus.
    assert_eq!(ws.backup_ids("uploads").len(), 4);
    assert_eq!(alert["backup"], ws.backup_ids("uploads")[0].as_str());
    let (_, metrics) = d.get("/metrics");
    let scrape = prometheus_parse::Scrape::parse(metrics.lines().map(|l| Ok(l.to_string())))
        .expect("Prometheus text");
    let anomalous = scrape
        .samples
        .iter()
        .find(|s| {
            s.metric == "bk_job_last_backup_anomalous" && s.labels.get("job") == Some("uploads")
        })
        .map(|s| s.value.clone());
    assert!(
        matches!(anomalous, Some(prometheus_parse::Value::Gauge(v)) if v == 1.0),
        "{metrics}"
    );
    drop(d);
    let status = ws.bk(&["status"]).ok();
    assert!(
        status.stdout.contains("ANOMALY") && status.stdout.contains("compresses"),
        "{}",
        status.stdout
    );
    let json = ws.bk(&["status", "--json"]).ok().json();
    assert_eq!(
        json["jobs"][0]["last_run"]["anomalies"][0]["kind"], "compression",
        "{json}"
    );
}

#[test]
fn an_uploads_folder_that_lost_most_files_is_flagged_by_bk_run() {
    let mut ws = Workspace::new();
    let src = ws.path().join("uploads");
    uploads(&src);
    job(&mut ws, &src);
    for _ in 0..3 {
        ws.bk(&["run", "uploads"]).ok();
    }
    for dir in ["2026/01", "2026/02", "2026/03"] {
        fs::remove_dir_all(src.join(dir)).unwrap();
    }
    let out = ws.bk(&["run", "uploads"]).ok();
    assert!(
        out.stdout.contains("ANOMALY") && out.stdout.contains("% of the recent median"),
        "{}",
        out.stdout
    );
    let json = ws.bk(&["status", "--json"]).ok().json();
    let kinds: Vec<&str> = json["jobs"][0]["last_run"]["anomalies"]
        .as_array()
        .expect("anomalies")
        .iter()
        .filter_map(|a| a["kind"].as_str())
        .collect();
    assert_eq!(kinds, ["size", "files"], "{json}");
    assert_eq!(ws.backup_ids("uploads").len(), 4, "committed all the same");
}
