//! Hardening a source host: the `authorized_keys` line `bk authorized-key HOST`
//! prints. The key is `restrict`ed (no pty, no forwarding) and bound to a forced
//! command, a small shell gate that runs `$SSH_ORIGINAL_COMMAND` only if it is
//! exactly one of the commands this host's jobs send, and otherwise refuses. The
//! one variable command, bk's `kill` of a stalled dump's process group, is rebuilt
//! by the gate from its validated PID rather than run as sent.

use super::shell::quote;
use super::{mysql, postgres, ssh, DumpPlan, SourceError};
use crate::config::{Config, JobKind};

/// Every command bk may send to `host` for the jobs configured on it.
pub fn remote_commands(config: &Config, host: &str) -> Vec<String> {
    let mut out = Vec::new();
    for job in config.jobs.values().filter(|j| j.host == host) {
        let Ok(plan) = DumpPlan::for_job(job) else {
            continue;
        };
        out.push(ssh::wrap(&plan.command));
        if let Some(v) = &plan.version_command {
            out.push(v.clone());
        }
        if job.kind == JobKind::Postgres {
            out.extend(postgres::commands(job));
        }
        if job.kind == JobKind::Mysql {
            out.extend(mysql::commands(job));
        }
    }
    out.sort();
    out.dedup();
    out
}

/// The gate: a one-line POSIX shell program for `command="…"`.
pub fn forced_command(commands: &[String]) -> String {
    let mut gate = String::from("c=$SSH_ORIGINAL_COMMAND; case $c in ");
    if !commands.is_empty() {
        let patterns: Vec<String> = commands.iter().map(|c| quote(c)).collect();
        gate.push_str(&patterns.join("|"));
        gate.push_str(") exec /bin/sh -c \"$c\";; ");
    }
    gate.push_str(
        "'kill -KILL -- -'*) p=${c#'kill -KILL -- -'}; p=${p%%' '*}; \
         case $p in ''|*[!0-9]*|0|1) ;; *) exec kill -KILL -- -$p;; esac;; esac; \
         echo \"bk: this key may not run: $c\" >&2; exit 126",
    );
    gate
}

/// `restrict,command="…" <public key> <comment>` for `host`.
pub fn authorized_keys_line(config: &Config, host: &str) -> Result<String, SourceError> {
    let entry = config
        .hosts
        .get(host)
        .ok_or_else(|| SourceError::UnknownHost(host.to_string()))?;
    let public = public_key(&entry.key).map_err(|reason| SourceError::Connect {
        host: host.to_string(),
        destination: format!("{}@{}:{}", entry.user, entry.address, entry.port),
        reason,
    })?;
    let gate = forced_command(&remote_commands(config, host));
    // Inside command="…", sshd unescapes only \" (auth-options.c, opt_dequote).
    let escaped = gate.replace('"', "\\\"");
    let mut fields = public.split_whitespace();
    let (kind, key) = match (fields.next(), fields.next()) {
        (Some(k), Some(b)) => (k, b),
        _ => {
            return Err(SourceError::Connect {
                host: host.to_string(),
                destination: entry.address.clone(),
                reason: format!("{} does not hold a public key", entry.key.display()),
            })
        }
    };
    Ok(format!(
        "restrict,command=\"{escaped}\" {kind} {key} bk@{}",
        crate::catalog::hostname()
    ))
}

/// The public half of a private key file: `KEY.pub` if present, else `ssh-keygen -y`.
fn public_key(key: &std::path::Path) -> Result<String, String> {
    let mut pub_path = key.as_os_str().to_owned();
    pub_path.push(".pub");
    if let Ok(text) = std::fs::read_to_string(&pub_path) {
        return Ok(text);
    }
    let out = std::process::Command::new("ssh-keygen")
        .arg("-y")
        .arg("-f")
        .arg(key)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("cannot run ssh-keygen: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "cannot read the public key of {}: {}",
            key.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate_allows(gate: &str, original: &str) -> (i32, String) {
        let out = std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(gate)
            .env("SSH_ORIGINAL_COMMAND", original)
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    }

    #[test]
    fn the_gate_runs_exactly_the_listed_commands() {
        let gate = forced_command(&["echo 'it''s ok'".into(), "tar --version".into()]);
        assert_eq!(
            gate_allows(&gate, "echo 'it''s ok'"),
            (0, "its ok\n".into())
        );
        let (code, text) = gate_allows(&gate, "echo 'it''s ok'; id");
        assert_eq!(code, 126, "{text}");
        let (code, _) = gate_allows(&gate, "tar --version --to-command=sh");
        assert_eq!(code, 126);
        // kill: only a numeric process group, rebuilt by the gate.
        let (code, text) = gate_allows(&gate, "kill -KILL -- -1;id 2>/dev/null");
        assert_eq!(code, 126, "{text}");
        assert!(!text.contains("uid="), "{text}");
    }

    #[test]
    fn a_mysql_job_gets_its_dump_version_check_replica_check_and_counts() {
        let text = "[repository]\nurl = \"file:///r\"\n\
            recipients = [\"age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p\"]\n\
            [hosts.db]\naddress = \"10.0.0.5\"\nuser = \"bk\"\nkey = \"/etc/bk/id\"\nknown_hosts = \"/etc/bk/kh\"\n\
            [jobs.shop]\nhost = \"db\"\nkind = \"mysql\"\ndatabase = \"shop\"\ndefaults_file = \"/home/bk/my.cnf\"\n";
        let config = Config::parse(std::path::Path::new("/etc/bk/bk.toml"), text).unwrap();
        let job = &config.jobs["shop"];
        let plan = DumpPlan::for_job(job).unwrap();
        let mut expected = mysql::commands(job);
        expected.push(ssh::wrap(&plan.command));
        expected.push(plan.version_command.clone().unwrap());
        expected.sort();
        assert_eq!(remote_commands(&config, "db"), expected);
        assert_eq!(expected.len(), 4);
    }
}
