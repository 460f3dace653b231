//! What the daemon's tasks share: the configuration in force (swapped whole on
//! reload, so a running job keeps the snapshot it started with), the planner, the
//! concurrency limits, the alert sender and the two stop signals.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, RwLock};

use bk_core::catalog::Catalog;
use bk_core::config::Config;
use bk_core::repo::Repository;
use bk_core::schedule::Planner;
use chrono::{DateTime, Utc};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::alerts::Alerter;
use crate::limits::Limits;
use crate::overdue::Watch;

/// One loaded configuration and what was opened from it.
pub struct Loaded {
    pub config: Config,
    pub repo: Repository,
    pub catalog: Catalog,
    pub limits: Limits,
    pub loaded_at: DateTime<Utc>,
}

pub struct Shared {
    loaded: RwLock<Arc<Loaded>>,
    pub planner: Mutex<Planner>,
    /// The same for `retention.schedule`: when each job is pruned on its own.
    pub prune_planner: Mutex<Planner>,
    /// The same for `restore_test.schedule`: when each job's backups are restore-tested.
    pub test_planner: Mutex<Planner>,
    /// Jobs with a run in progress. The planner forgets a job removed by a reload;
    /// this set does not, so a job re-added while its old run goes on cannot start twice.
    pub active: Mutex<BTreeSet<String>>,
    /// Per job: since when it is watched for being overdue, and whether it was alerted.
    pub watches: Mutex<BTreeMap<String, Watch>>,
    pub alerts: Alerter,
    /// Woken when the plan changed (reload) so the scheduler recomputes its sleep.
    pub replanned: Notify,
    /// Fires on SIGTERM: no new runs start.
    pub stopping: CancellationToken,
    /// Fires when the grace period is over: running jobs are interrupted.
    pub interrupt: CancellationToken,
    /// Every job task, so shutdown can wait for them.
    pub runs: TaskTracker,
}

impl Shared {
    pub fn new(loaded: Loaded, alerts: Alerter) -> Arc<Shared> {
        Arc::new(Shared {
            loaded: RwLock::new(Arc::new(loaded)),
            planner: Mutex::new(Planner::new()),
            prune_planner: Mutex::new(Planner::new()),
            test_planner: Mutex::new(Planner::new()),
            active: Mutex::new(BTreeSet::new()),
            watches: Mutex::new(BTreeMap::new()),
            alerts,
            replanned: Notify::new(),
            stopping: CancellationToken::new(),
            interrupt: CancellationToken::new(),
            runs: TaskTracker::new(),
        })
    }

    /// The configuration in force now.
    pub fn current(&self) -> Arc<Loaded> {
        self.loaded
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn replace(&self, loaded: Loaded) {
        *self.loaded.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(loaded);
    }

    pub fn planner(&self) -> std::sync::MutexGuard<'_, Planner> {
        self.planner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn prune_planner(&self) -> std::sync::MutexGuard<'_, Planner> {
        self.prune_planner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn test_planner(&self) -> std::sync::MutexGuard<'_, Planner> {
        self.test_planner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn active(&self) -> std::sync::MutexGuard<'_, BTreeSet<String>> {
        self.active.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn watches(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Watch>> {
        self.watches.lock().unwrap_or_else(|p| p.into_inner())
    }
}
