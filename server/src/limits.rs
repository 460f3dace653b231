//! Concurrency limits: `server.max_concurrent_jobs` across the daemon and
//! `hosts.NAME.max_jobs` per source host (the built-in `local` host shares the global
//! limit only). A run holds one permit of each for its whole duration. Limits come
//! with a loaded configuration: after a reload new runs count against the new limits,
//! while runs already going keep the permits they hold.

use std::collections::BTreeMap;
use std::sync::Arc;

use bk_core::config::Config;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub struct Limits {
    global: Arc<Semaphore>,
    hosts: BTreeMap<String, Arc<Semaphore>>,
}

/// Permits held by a running job; dropping them frees its slots.
pub struct Slots {
    _global: OwnedSemaphorePermit,
    _host: Option<OwnedSemaphorePermit>,
}

impl Limits {
    pub fn new(config: &Config) -> Limits {
        Limits {
            global: Arc::new(Semaphore::new(config.server.max_concurrent_jobs)),
            hosts: config
                .hosts
                .iter()
                .map(|(name, h)| (name.clone(), Arc::new(Semaphore::new(h.max_jobs))))
                .collect(),
        }
    }

    /// Waits for a slot on `host` and a global one (host first, so a busy host does not
    /// hold global slots that other hosts could use).
    pub async fn acquire(&self, host: &str) -> Slots {
        let host = match self.hosts.get(host) {
            Some(s) => s.clone().acquire_owned().await.ok(),
            None => None,
        };
        let global = match self.global.clone().acquire_owned().await {
            Ok(p) => p,
            Err(_) => unreachable!("the semaphores are never closed"),
        };
        Slots {
            _global: global,
            _host: host,
        }
    }

    /// Waits for a global slot only (restore tests read storage, not a source host).
    pub async fn acquire_global(&self) -> Slots {
        let global = match self.global.clone().acquire_owned().await {
            Ok(p) => p,
            Err(_) => unreachable!("the semaphores are never closed"),
        };
        Slots {
            _global: global,
            _host: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use std::time::Duration;

    fn config(text: &str) -> Config {
        let base = "[repository]\nurl = \"file:///tmp/r\"\nrecipients = [\"age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p\"]\n";
        Config::parse(Path::new("/tmp/bk.toml"), &format!("{base}{text}")).expect("config")
    }

    #[tokio::test]
    async fn global_and_host_limits_hold() {
        let limits = Limits::new(&config(
            "[server]\nmax_concurrent_jobs = 2\n[hosts.db]\naddress = \"x\"\nuser = \"u\"\nkey = \"/k\"\nknown_hosts = \"/h\"\nmax_jobs = 1\n",
        ));
        let a = limits.acquire("db").await;
        let waiting = tokio::time::timeout(Duration::from_millis(50), limits.acquire("db")).await;
        assert!(waiting.is_err(), "a second run on host db must wait");
        let b = limits.acquire("local").await;
        let waiting =
            tokio::time::timeout(Duration::from_millis(50), limits.acquire("local")).await;
        assert!(waiting.is_err(), "a third run overall must wait");
        drop(a);
        let _c = tokio::time::timeout(Duration::from_millis(50), limits.acquire("db"))
            .await
            .expect("the host slot is free again");
        drop(b);
    }
}
