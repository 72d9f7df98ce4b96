//! Freezing idle instances: an instance with no call in flight for the manager's
//! `freeze_after_idle` has its cgroup frozen, so timers a bundle left running after its response
//! do no work between calls; it is thawed before the next call is sent.
//!
//! Owns: when to freeze and thaw (one small task per instance, woken when the last call ends),
//! and killing a frozen instance in the order that lets it die (SIGKILL, then thaw). Must not:
//! freeze while a call is in flight or within the grace after one (back-to-back calls never
//! touch the freezer files), or write anything before the thaw (the caller sends the request
//! only after [`IdleFreezer::enter`] returned). The files themselves are `cgroup`'s.

use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::cgroup::InstanceCgroup;

/// How long a freeze may take to complete before it is logged as stuck (tasks in
/// uninterruptible sleep, e.g. on slow I/O, freeze only when they return to user space).
const FREEZE_PATIENCE: Duration = Duration::from_secs(2);

#[derive(Default)]
struct State {
    /// Calls in flight.
    busy: usize,
    /// When the instance last became idle, while it is idle and not frozen yet; `None` while
    /// busy, frozen, or after a freeze failed (until the next call ends).
    idle_since: Option<Instant>,
    /// The freezer file says FROZEN (asked for; the kernel may still be freezing).
    frozen: bool,
    /// Killed: never freeze again.
    dead: bool,
}

/// The idle freezer of one instance.
pub(crate) struct IdleFreezer {
    cg: Arc<InstanceCgroup>,
    after: Duration,
    st: Mutex<State>,
    /// Wakes the task: the instance became idle, was killed, or this freezer was dropped.
    wake: Arc<Notify>,
}

impl IdleFreezer {
    /// A freezer for `cg`, or `None` when the cgroup has no freezer or freezing is off.
    pub(crate) fn new(cg: &Arc<InstanceCgroup>) -> Option<Arc<Self>> {
        let after = cg.freeze_after_idle()?;
        Some(Arc::new(Self {
            cg: cg.clone(),
            after,
            st: Mutex::new(State::default()),
            wake: Arc::new(Notify::new()),
        }))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A poisoned lock only means a panic elsewhere; the state is still usable.
        self.st.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The instance is ready: from now on it is frozen whenever it is idle. A bundle's load-time
    /// timers are frozen too if no call comes within the grace.
    pub(crate) fn arm(self: &Arc<Self>) {
        {
            let mut st = self.lock();
            if st.busy == 0 && !st.dead {
                st.idle_since = Some(Instant::now());
            }
        }
        tokio::spawn(run(Arc::downgrade(self), self.wake.clone()));
        self.wake.notify_one();
    }

    /// A call begins: thaws the instance if it is frozen (or freezing). The request may be sent
    /// once this returns; on an error the instance is unusable (the caller kills it).
    pub(crate) fn enter(&self) -> Result<(), String> {
        let mut st = self.lock();
        if st.frozen {
            let t = Instant::now();
            self.cg
                .thaw()
                .map_err(|e| format!("could not thaw the instance's cgroup: {e}"))?;
            st.frozen = false;
            tracing::trace!(us = t.elapsed().as_micros() as u64, "instance thawed");
        }
        st.busy += 1;
        st.idle_since = None;
        Ok(())
    }

    /// A call that [`IdleFreezer::enter`] let in has ended (its response body too).
    pub(crate) fn leave(&self) {
        let idle = {
            let mut st = self.lock();
            st.busy = st.busy.saturating_sub(1);
            let idle = st.busy == 0;
            if idle {
                st.idle_since = Some(Instant::now());
            }
            idle
        };
        if idle {
            self.wake.notify_one();
        }
    }

    /// The instance is being killed: never freeze it again, and if it is frozen, SIGKILL and
    /// thaw it so that it dies (the reaper's wait would otherwise hang on a v1 frozen process).
    pub(crate) fn kill(&self) {
        {
            let mut st = self.lock();
            st.dead = true;
            st.idle_since = None;
            if st.frozen {
                self.cg.kill_frozen();
                st.frozen = false;
            }
        }
        self.wake.notify_one();
    }

    /// When to freeze, if the instance is idle and not frozen.
    fn due(&self) -> Result<Option<Instant>, ()> {
        let st = self.lock();
        if st.dead {
            return Err(());
        }
        Ok(match (st.busy, st.idle_since, st.frozen) {
            (0, Some(t), false) => Some(t + self.after),
            _ => None,
        })
    }

    /// Freezes now if the instance is still idle and its grace has run out; then waits for the
    /// kernel to finish (a call arriving meanwhile thaws it, and the wait ends).
    async fn freeze(&self) {
        let t = Instant::now();
        {
            let mut st = self.lock();
            let still_due = !st.dead
                && !st.frozen
                && st.busy == 0
                && st.idle_since.is_some_and(|s| s + self.after <= t);
            if !still_due {
                return;
            }
            st.idle_since = None;
            if let Err(e) = self.cg.freeze() {
                // The cgroup is gone (the process ended) or refuses: try again after a call.
                tracing::debug!(error = %e, "could not freeze an idle instance");
                return;
            }
            st.frozen = true;
        }
        let mut pause = Duration::from_micros(200);
        loop {
            if self.cg.frozen() == Some(true) {
                tracing::trace!(us = t.elapsed().as_micros() as u64, "instance frozen");
                return;
            }
            {
                let st = self.lock();
                if !st.frozen || st.dead {
                    return;
                }
            }
            if t.elapsed() > FREEZE_PATIENCE {
                tracing::warn!(
                    ms = t.elapsed().as_millis() as u64,
                    "an idle instance is still not frozen; its tasks may be in uninterruptible sleep"
                );
                return;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(20));
        }
    }
}

impl Drop for IdleFreezer {
    fn drop(&mut self) {
        // Ends the task.
        self.wake.notify_one();
    }
}

/// One per instance, holding only a weak reference between wake-ups: it ends with the freezer.
async fn run(freezer: Weak<IdleFreezer>, wake: Arc<Notify>) {
    loop {
        let due = match freezer.upgrade().map(|f| f.due()) {
            None | Some(Err(())) => return,
            Some(Ok(d)) => d,
        };
        match due {
            None => wake.notified().await,
            Some(at) => {
                let now = Instant::now();
                if at > now {
                    // A call that begins meanwhile leaves `idle_since` changed: re-read then.
                    tokio::time::sleep(at - now).await;
                    continue;
                }
                let Some(f) = freezer.upgrade() else { return };
                f.freeze().await;
            }
        }
    }
}
