//! The instance pool: one warm instance per bundle version (keyed by everything that changes what
//! runs), started on first use and reused by later requests, with concurrent first requests
//! sharing one start. Sits between the HTTP layer and a sandbox [`Executor`].
//!
//! Owns: which instances exist and when they are started, replaced and stopped. Must not touch:
//! how an instance is isolated or spoken to (the executor's job), or policy.
//!
//! This is the minimal pool of the core issue; idle reclaim, instance caps and pre-warming belong
//! to the pools issue and will grow here.

use std::collections::HashMap;
use std::sync::Arc;

use atrund_sandbox::{Executor, Instance, InstanceSpec, Invocation, SandboxError};
use tokio::sync::{Mutex, OwnedSemaphorePermit, Semaphore};

/// What makes two instances interchangeable: the author, the exact bundle record and the code
/// that runs. Permissions and limits are part of the record, so its CID covers them.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct InstanceKey {
    pub author: String,
    pub record_cid: String,
}

/// Why the pool could not hand out an instance.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// the sandbox failed
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    /// every slot of the bundle's instance is busy
    #[error("all {limit} concurrent request slots of this bundle are busy; retry shortly")]
    Busy { limit: usize },
    /// the runner is shutting down
    #[error("this runner is shutting down and takes no new requests")]
    Draining,
}

impl PoolError {
    /// Stable error name for the HTTP layer.
    pub fn code(&self) -> &'static str {
        match self {
            PoolError::Sandbox(e) => e.code(),
            PoolError::Busy { .. } => "Busy",
            PoolError::Draining => "Draining",
        }
    }
}

struct Slot {
    instance: Arc<dyn Instance>,
    permits: Arc<Semaphore>,
    limit: usize,
}

/// Warm instances by key.
pub struct Pool {
    executor: Arc<dyn Executor>,
    // One async mutex per key so concurrent cold requests share a single start.
    slots: std::sync::Mutex<HashMap<InstanceKey, Arc<Mutex<Option<Slot>>>>>,
    draining: std::sync::atomic::AtomicBool,
}

impl Pool {
    pub fn new(executor: Arc<dyn Executor>) -> Self {
        Self {
            executor,
            slots: std::sync::Mutex::default(),
            draining: false.into(),
        }
    }

    /// Name of the sandbox backend instances run in.
    pub fn backend(&self) -> &'static str {
        self.executor.name()
    }

    /// Runs one invocation on the warm instance for `key`, starting it from `spec` if needed.
    /// `concurrency` is the bundle's per-instance limit; a full instance answers [`PoolError::Busy`].
    pub async fn execute(
        &self,
        key: InstanceKey,
        concurrency: usize,
        spec: impl FnOnce() -> InstanceSpec,
        call: Invocation,
    ) -> Result<http::Response<axum::body::Body>, PoolError> {
        if self.draining.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(PoolError::Draining);
        }
        let (instance, permit) = self.acquire(&key, concurrency, spec).await?;
        let result = instance.execute(call).await;
        drop(permit);
        match result {
            Ok(resp) => Ok(resp),
            Err(e) => {
                if !instance.is_alive() {
                    // Timed out (killed) or crashed: forget it so the next request starts fresh.
                    self.forget(&key, &instance).await;
                }
                Err(e.into())
            }
        }
    }

    async fn acquire(
        &self,
        key: &InstanceKey,
        concurrency: usize,
        spec: impl FnOnce() -> InstanceSpec,
    ) -> Result<(Arc<dyn Instance>, OwnedSemaphorePermit), PoolError> {
        let cell = {
            let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            slots.entry(key.clone()).or_default().clone()
        };
        let mut slot = cell.lock().await;
        if let Some(s) = slot.as_ref() {
            if !s.instance.is_alive() {
                tracing::warn!(author = %key.author, record = %key.record_cid, "instance died; starting a new one");
                if let Some(old) = slot.take() {
                    old.instance.shutdown().await;
                }
            }
        }
        if slot.is_none() {
            let limit = concurrency.max(1);
            let instance = self.executor.warm(spec()).await?;
            *slot = Some(Slot {
                instance,
                permits: Arc::new(Semaphore::new(limit)),
                limit,
            });
        }
        let s = slot.as_ref().ok_or(PoolError::Draining)?;
        let permit = s
            .permits
            .clone()
            .try_acquire_owned()
            .map_err(|_| PoolError::Busy { limit: s.limit })?;
        Ok((s.instance.clone(), permit))
    }

    async fn forget(&self, key: &InstanceKey, dead: &Arc<dyn Instance>) {
        let cell = {
            let slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            slots.get(key).cloned()
        };
        if let Some(cell) = cell {
            let mut slot = cell.lock().await;
            if slot
                .as_ref()
                .is_some_and(|s| Arc::ptr_eq(&s.instance, dead))
            {
                if let Some(old) = slot.take() {
                    old.instance.shutdown().await;
                }
            }
        }
    }

    /// Stops and forgets the instance for `key`; local dev mode uses it when the code on disk
    /// changes.
    pub async fn retire(&self, key: &InstanceKey) {
        let cell = {
            let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            slots.remove(key)
        };
        if let Some(cell) = cell {
            if let Some(old) = cell.lock().await.take() {
                old.instance.shutdown().await;
            }
        }
    }

    /// Number of live instances.
    pub fn len(&self) -> usize {
        self.slots.lock().map(|s| s.len()).unwrap_or(0)
    }

    /// True when no instance exists.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Refuses new requests, lets in-flight ones finish, then stops every instance.
    pub async fn shutdown(&self) {
        self.draining
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let cells: Vec<_> = {
            let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            slots.drain().map(|(_, c)| c).collect()
        };
        for cell in cells {
            if let Some(s) = cell.lock().await.take() {
                s.instance.drain().await;
                s.instance.shutdown().await;
            }
        }
    }
}
