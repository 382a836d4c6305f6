//! [`Host`]: the manager and the queue assembled in one call, for embedders.
//!
//! ```no_run
//! # async fn demo() -> cjm_host::Result<()> {
//! use cjm_host::Host;
//! use cjm_host::queue::JobSpec;
//!
//! let host = Host::builder()
//!     .data_dir(".cjm")
//!     .load("text-stats")
//!     .build()
//!     .await?;
//! let kwargs = serde_json::json!({"text": "Hello there."});
//! let id = host
//!     .queue()
//!     .submit(JobSpec::execute("text-stats", kwargs.as_object().cloned().unwrap_or_default())).await?;
//! let job = host.queue().wait(&id, None).await?;
//! println!("{:?}", job.result);
//! host.shutdown().await?;
//! # Ok(()) }
//! ```

use std::path::PathBuf;

use serde_json::Value;

use crate::config::{ConfigLoader, HostConfig, QueueConfig};
use crate::error::Result;
use crate::manager::CapabilityManager;
use crate::queue::{JobQueue, ResourceSource};

/// How long [`Host::shutdown`] lets running jobs finish.
pub const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// A capability host: one manager, one queue, over one data dir.
#[derive(Clone, Debug)]
pub struct Host {
    manager: CapabilityManager,
    queue: JobQueue,
}

impl Host {
    /// A builder: data dir (or a full [`HostConfig`]), queue settings, capabilities to load.
    pub fn builder() -> HostBuilder {
        HostBuilder::default()
    }

    /// The capability manager.
    pub fn manager(&self) -> &CapabilityManager {
        &self.manager
    }

    /// The job queue.
    pub fn queue(&self) -> &JobQueue {
        &self.queue
    }

    /// [`shutdown_within`](Self::shutdown_within) a grace of 5 s.
    pub async fn shutdown(&self) -> Result<()> {
        self.shutdown_within(SHUTDOWN_GRACE).await
    }

    /// Stops taking work (pending jobs are cancelled), lets running jobs finish for up to
    /// `grace`, waits for the journal to hold everything queued so far, then stops every
    /// instance (past one that fails to stop; the first failure is returned). A job still
    /// running when its worker is stopped is left to the host that reconciles this one.
    pub async fn shutdown_within(&self, grace: std::time::Duration) -> Result<()> {
        self.queue.close();
        self.queue.drain(grace).await;
        self.manager.shutdown().await
    }

    /// Stops as a service does: new work is refused and nothing more is admitted, waiting
    /// jobs stay journaled as submitted (the host that reconciles this one adopts them),
    /// running jobs get up to `grace` to finish, then every instance stops.
    pub async fn stop_leaving_pending(&self, grace: std::time::Duration) -> Result<()> {
        self.queue.stop_admitting();
        self.queue.drain(grace).await;
        self.manager.shutdown().await
    }
}

struct ToLoad {
    name: String,
    config: Option<Value>,
    instance_id: Option<String>,
}

/// Builds a [`Host`].
#[derive(Default)]
pub struct HostBuilder {
    data_dir: Option<PathBuf>,
    config: Option<HostConfig>,
    queue: Option<QueueConfig>,
    lanes: Option<u32>,
    resources: Option<Box<dyn ResourceSource>>,
    load: Vec<ToLoad>,
    manifest_dirs: Vec<PathBuf>,
    wasm_instance_slots: Option<u32>,
}

impl std::fmt::Debug for HostBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostBuilder")
            .field("data_dir", &self.data_dir)
            .finish_non_exhaustive()
    }
}

impl HostBuilder {
    /// The data dir (default: the layered config: `CJM_*` env, `cjm.yaml`, `./.cjm`).
    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.data_dir = Some(dir.into());
        self
    }

    /// A complete host configuration (replaces the layered lookup).
    pub fn config(mut self, config: HostConfig) -> Self {
        self.config = Some(config);
        self
    }

    /// Queue settings (default: the host configuration's `queue:`).
    pub fn queue(mut self, queue: QueueConfig) -> Self {
        self.queue = Some(queue);
        self
    }

    /// At most `lanes` jobs at once.
    pub fn lanes(mut self, lanes: u32) -> Self {
        self.lanes = Some(lanes);
        self
    }

    /// Also discovers manifests in `dirs`, searched in order before the data dir's
    /// `manifests/` (the first manifest of a name wins).
    pub fn manifest_dirs<I, P>(mut self, dirs: I) -> Self
    where
        I: IntoIterator<Item = P>,
        P: Into<PathBuf>,
    {
        self.manifest_dirs = dirs.into_iter().map(Into::into).collect();
        self
    }

    /// Sizes the wasm engine's instance pool: `slots` component instances alive at once,
    /// idle ones included (default: 32 per core, 128 to 1,024); 0 maps memory per instance
    /// instead. When the pool is full, a call fails with a retriable `resource` error and
    /// the manager unloads idle capabilities before trying again.
    pub fn wasm_instance_slots(mut self, slots: u32) -> Self {
        self.wasm_instance_slots = Some(slots);
        self
    }

    /// Live resource figures for admission (default: sysinfo + NVML).
    pub fn resources(mut self, source: Box<dyn ResourceSource>) -> Self {
        self.resources = Some(source);
        self
    }

    /// Loads capability `name` as instance `name` with its stored or default config.
    pub fn load(self, name: impl Into<String>) -> Self {
        let name = name.into();
        let id = name.clone();
        self.load_with(name, None, Some(id))
    }

    /// Loads capability `name` with a config and an instance id (generated when `None`).
    pub fn load_with(
        mut self,
        name: impl Into<String>,
        config: Option<Value>,
        instance_id: Option<String>,
    ) -> Self {
        self.load.push(ToLoad {
            name: name.into(),
            config,
            instance_id,
        });
        self
    }

    /// Opens the stores, discovers manifests, loads the capabilities asked for (all at once)
    /// and starts the queue. Must run inside a tokio runtime.
    pub async fn build(self) -> Result<Host> {
        let config = match (self.config, self.data_dir) {
            (Some(mut c), dir) => {
                if let Some(dir) = dir {
                    c.data_dir = dir;
                }
                c
            }
            (None, Some(dir)) => HostConfig::builder().data_dir(dir).build()?,
            (None, None) => ConfigLoader::new().load()?,
        };
        let mut config = config;
        config.extra_manifest_dirs.extend(self.manifest_dirs);
        if self.wasm_instance_slots.is_some() {
            config.wasm_instance_slots = self.wasm_instance_slots;
        }
        let mut queue = self.queue.unwrap_or_else(|| config.queue.clone());
        if let Some(lanes) = self.lanes {
            queue.max_concurrent_lanes = lanes;
        }
        // The manager reads the queue settings it shares with the queue (a native worker's
        // concurrency) from the same place.
        config.queue = queue.clone();
        let manager = CapabilityManager::open(config)?;
        let mut loads = tokio::task::JoinSet::new();
        for l in self.load {
            let manager = manager.clone();
            loads.spawn(async move {
                manager
                    .load(&l.name, l.config, l.instance_id.as_deref())
                    .await
                    .map(|_| ())
            });
        }
        let mut failure = None;
        while let Some(done) = loads.join_next().await {
            let outcome = done.unwrap_or_else(|e| {
                Err(crate::Error::job(cjm_guest::contract::JobError::fatal(
                    format!("loading a capability panicked: {e}"),
                )))
            });
            if let Err(e) = outcome {
                failure.get_or_insert(e);
            }
        }
        if let Some(err) = failure {
            let _ = manager.shutdown().await;
            return Err(err);
        }
        let queue = match self.resources {
            Some(source) => JobQueue::with_resources(manager.clone(), queue, source),
            None => JobQueue::with_config(manager.clone(), queue),
        };
        Ok(Host { manager, queue })
    }
}
