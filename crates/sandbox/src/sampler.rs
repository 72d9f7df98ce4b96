//! One sampler per instance cgroup: reads its CPU usage and breach counters every
//! [`CPU_POLL`] while calls are in flight (and for [`LINGER`] after the last one ended), and
//! tells its owner when the oldest call in flight has used more CPU than the budget.
//!
//! Owns: the sampling task and the per-call CPU stamps. Calls start from the latest sample
//! (at most one poll old) instead of reading cgroup files themselves, so a warm call reads no
//! file; only the first call after an idle spell reads fresh values and starts the task.
//! Must not: kill anything itself (the owner decides), or outlive its owner.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use crate::cgroup::{Counters, InstanceCgroup};

/// How often the CPU budget of the calls in flight is checked.
pub(crate) const CPU_POLL: Duration = Duration::from_millis(10);
/// How long the task keeps sampling after the last call ended, so that back-to-back calls
/// neither read files nor restart it.
const LINGER: Duration = Duration::from_secs(1);

/// What the sampling task needs from the instance.
pub(crate) trait SamplerOwner: Send + Sync + 'static {
    /// False once the instance is gone or going: the task stops.
    fn alive(&self) -> bool;
    /// The oldest call in flight used more CPU than the budget since it began.
    fn over_budget(&self);
}

/// The start of one call, as the sampler saw it.
pub(crate) struct CallStart {
    /// Breach counters when the call began (at most one poll old).
    pub counters: Counters,
    /// To hand back to [`Sampler::end`].
    pub id: u64,
}

#[derive(Default)]
struct State {
    running: bool,
    /// Latest reading while running: CPU usage (if the cgroup accounts it) and counters.
    last: Option<(Option<Duration>, Counters)>,
    /// CPU usage at the start of each call in flight, by call number: the first is the oldest.
    calls: BTreeMap<u64, Option<Duration>>,
    next: u64,
    /// Polls since the last call ended.
    idle_polls: u32,
}

pub(crate) struct Sampler {
    cg: Arc<InstanceCgroup>,
    budget: Option<Duration>,
    st: Mutex<State>,
}

impl Sampler {
    pub(crate) fn new(cg: Arc<InstanceCgroup>, budget: Option<Duration>) -> Self {
        Self {
            cg,
            budget,
            st: Mutex::new(State::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A poisoned lock only means a panic elsewhere; the stamps are still usable.
        self.st.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn read(&self) -> (Option<Duration>, Counters) {
        (self.cg.cpu_usage(), self.cg.counters())
    }

    /// Registers a call in flight; starts the sampling task for `owner` if it is not running.
    pub(crate) fn begin<O: SamplerOwner>(self: &Arc<Self>, owner: &Arc<O>) -> CallStart {
        {
            let mut st = self.lock();
            if let (true, Some((cpu, counters))) = (st.running, st.last) {
                return register(&mut st, cpu, counters);
            }
        }
        // Not running: read now, outside the lock (cgroup files are small but still I/O).
        let (cpu, counters) = self.read();
        let mut st = self.lock();
        let start = register(&mut st, cpu, counters);
        if !st.running {
            st.running = true;
            st.last = Some((cpu, counters));
            let owner: Weak<dyn SamplerOwner> = {
                let o: Arc<dyn SamplerOwner> = owner.clone();
                Arc::downgrade(&o)
            };
            tokio::spawn(run(Arc::downgrade(self), owner));
        }
        start
    }

    /// The call ended (its response body too).
    pub(crate) fn end(&self, id: u64) {
        self.lock().calls.remove(&id);
    }

    /// One poll of the task: false when the task should stop.
    fn poll(&self, owner: &dyn SamplerOwner) -> bool {
        let (cpu, counters) = self.read();
        let over = {
            let mut st = self.lock();
            if st.calls.is_empty() {
                st.idle_polls += 1;
                if u128::from(st.idle_polls) * CPU_POLL.as_millis() >= LINGER.as_millis() {
                    st.running = false;
                    st.last = None;
                    return false;
                }
            } else {
                st.idle_polls = 0;
            }
            st.last = Some((cpu, counters));
            let oldest = st.calls.values().flatten().next().copied();
            match (self.budget, cpu, oldest) {
                (Some(budget), Some(now), Some(at_start)) => now.saturating_sub(at_start) > budget,
                _ => false,
            }
        };
        if over {
            self.stop();
            owner.over_budget();
            return false;
        }
        true
    }

    fn stop(&self) {
        let mut st = self.lock();
        st.running = false;
        st.last = None;
    }
}

fn register(st: &mut State, cpu: Option<Duration>, counters: Counters) -> CallStart {
    let id = st.next;
    st.next += 1;
    st.calls.insert(id, cpu);
    st.idle_polls = 0;
    CallStart { counters, id }
}

async fn run(sampler: Weak<Sampler>, owner: Weak<dyn SamplerOwner>) {
    let mut tick = tokio::time::interval(CPU_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is immediate; the caller has just read.
    tick.tick().await;
    loop {
        tick.tick().await;
        let (Some(sampler), Some(owner)) = (sampler.upgrade(), owner.upgrade()) else {
            return;
        };
        if !owner.alive() {
            sampler.stop();
            return;
        }
        if !sampler.poll(&*owner) {
            return;
        }
    }
}
