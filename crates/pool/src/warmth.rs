//! Adaptive warmth: how long to keep a bundle's instances after its last call, and when to start
//! one again before the next expected call, learned from the bundle's own idle times. This is the
//! hybrid histogram policy of "Serverless in the Wild" (Shahrad et al., USENIX ATC 2020), scaled
//! by configuration (bin width and range) so that it works for minutes-scale traffic and for tests.
//!
//! Per bundle (`author/name`, not per version: the callers and their rhythm stay when the author
//! deploys, so a new version inherits the history instead of learning it again from cold starts)
//! the idle times — from the end of the bundle's last call to the arrival of the next one, 0 when
//! a call is still in flight — go into a histogram of `range / bin` bins. From it:
//!
//! - **pre-warm window** = the lower edge of the bin holding the 5th percentile, less the margin
//!   (10 % by default): when non-zero, the instances are unloaded as soon as the call ends and one
//!   is started again this long after it;
//! - **keep-alive window** = the upper edge of the bin holding the 99th percentile, plus the
//!   margin, minus the pre-warm window: how long an instance (the pre-warmed one, or the one that
//!   served the call when there is no pre-warm) is kept idle before it is unloaded.
//!
//! When the histogram says nothing useful the pool's fixed idle timeout applies (pre-warm 0,
//! keep-alive = `pool.idle_timeout_ms`): fewer than `min_samples` idle times, or bin counts too even
//! (coefficient of variation below [`MIN_CV`], as in the paper). When most idle times
//! ([`OUT_OF_RANGE_SHARE`]) fall beyond the range, the paper forecasts the next one with ARIMA;
//! here the forecast is the median of the last [`RECENT`] idle times (robust, no model to fit),
//! with the paper's 15 % margin on each side: pre-warm at 85 % of it, keep alive for 30 % of it
//! (a forecast under one bin means the fixed timeout).
//!
//! Counts are halved when a bundle's total reaches [`AGE_AT`], so old behaviour fades. Memory is
//! bounded: at most `max_bundles` bundles (the one seen least recently is forgotten to make room),
//! and bundles not seen for `forget_after` are forgotten.
//!
//! Owns: the histograms and the windows. Must not touch: instances (the pool asks and acts) or the
//! clock (callers pass `now`, so the trace replay runs the same code on a simulated clock).

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// Percentile of the idle times that sets the pre-warm window (the paper's "head").
pub const HEAD_PERCENTILE: u64 = 5;
/// Percentile of the idle times that sets the end of the keep-alive window (the "tail").
pub const TAIL_PERCENTILE: u64 = 99;
/// Below this coefficient of variation of the bin counts the histogram is too flat to predict.
pub const MIN_CV: f64 = 2.0;
/// From this share of idle times beyond the range on, the windows come from the forecast.
pub const OUT_OF_RANGE_SHARE: f64 = 0.5;
/// Margin on each side of the forecast idle time.
pub const FORECAST_MARGIN_PERCENT: u64 = 15;
/// Idle times the forecast looks at.
pub const RECENT: usize = 8;
/// Samples (in and out of range) at which every count is halved.
pub const AGE_AT: u32 = 10_000;

/// The policy's knobs (`[pool]` `warmth_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WarmthConfig {
    /// Width of one histogram bin.
    pub bin: Duration,
    /// Idle times up to this go into bins; longer ones count as out of range.
    pub range: Duration,
    /// Idle times needed before the histogram is used.
    pub min_samples: u32,
    /// Margin taken off the pre-warm window and added to the tail, in percent.
    pub margin_percent: u32,
    /// Most bundles with a history at once.
    pub max_bundles: usize,
    /// A bundle with no call for this long is forgotten.
    pub forget_after: Duration,
}

impl Default for WarmthConfig {
    fn default() -> Self {
        WarmthConfig {
            bin: Duration::from_secs(60),
            range: Duration::from_secs(4 * 3600),
            min_samples: 10,
            margin_percent: 10,
            max_bundles: 1024,
            forget_after: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

impl WarmthConfig {
    fn bins(&self) -> usize {
        let n = self.range.as_nanos() / self.bin.as_nanos().max(1);
        usize::try_from(n).unwrap_or(usize::MAX).max(1)
    }
}

/// Where a bundle's windows come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Basis {
    /// Fewer idle times than `min_samples`: the fixed idle timeout.
    FewSamples,
    /// Bin counts too even to predict anything: the fixed idle timeout.
    NotRepresentative,
    /// The histogram's head and tail.
    Histogram,
    /// Most idle times beyond the range: the forecast from the recent ones.
    OutOfRange,
}

impl Basis {
    /// True when the windows are learned, not the fixed timeout.
    pub fn is_adaptive(self) -> bool {
        matches!(self, Basis::Histogram | Basis::OutOfRange)
    }
}

/// A bundle's two windows, counted from the end of its last call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Windows {
    pub basis: Basis,
    /// From the end of the last call to the pre-warm start; zero: no unload after the call.
    pub prewarm: Duration,
    /// How long an idle instance is kept: from the pre-warm start, or from the end of the call
    /// when there is no pre-warm.
    pub keep_alive: Duration,
}

impl Windows {
    /// The fixed policy: keep each instance `timeout` after its last response.
    pub fn fixed(basis: Basis, timeout: Duration) -> Windows {
        Windows {
            basis,
            prewarm: Duration::ZERO,
            keep_alive: timeout,
        }
    }

    /// When to start an instance again, counted from the end of the last call (`None`: the
    /// instance is kept instead).
    pub fn prewarm_after(&self) -> Option<Duration> {
        (!self.prewarm.is_zero()).then_some(self.prewarm)
    }

    /// Whether an idle instance goes now: during the pre-warm window (the bundle idle since
    /// `app_idle_since`), or once it has been idle for the keep-alive window. `idle_since` is the
    /// end of the instance's own last response (or its start); with a pre-warm, the keep-alive
    /// counts from the pre-warm time at the earliest.
    pub fn unload(
        &self,
        idle_since: Instant,
        app_idle_since: Option<Instant>,
        now: Instant,
    ) -> Option<Unload> {
        let mut base = idle_since;
        if let (Some(p), Some(l)) = (self.prewarm_after(), app_idle_since) {
            if now < l + p {
                return Some(Unload::BeforePrewarm);
            }
            base = base.max(l + p);
        }
        (now >= base + self.keep_alive).then_some(Unload::KeepAliveOver)
    }
}

/// Why [`Windows::unload`] lets an instance go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unload {
    /// The call ended and the next is not expected before the pre-warm time.
    BeforePrewarm,
    /// Idle for the whole keep-alive window.
    KeepAliveOver,
}

/// A bundle's windows and history, for the admin view.
#[derive(Debug, Clone, serde::Serialize)]
pub struct WarmthInfo {
    /// `author/name`.
    pub bundle: String,
    pub basis: Basis,
    /// Idle times recorded (after halving).
    pub samples: u32,
    pub prewarm_ms: u64,
    pub keep_alive_ms: u64,
}

struct App<S> {
    bins: Vec<u32>,
    in_range: u32,
    out_of_range: u32,
    recent: VecDeque<Duration>,
    in_flight: u32,
    /// End of the last call, while nothing is in flight.
    idle_since: Option<Instant>,
    last_seen: Instant,
    /// The idle period (by its start) whose pre-warm has been handed out.
    prewarmed: Option<Instant>,
    /// Learned windows, recomputed after a new sample; `None` for the fixed basis.
    cached: Option<Result<Windows, Basis>>,
    /// How to start an instance of the version called last.
    start: S,
}

impl<S> App<S> {
    fn new(n: usize, now: Instant, start: S) -> Self {
        App {
            bins: vec![0; n],
            in_range: 0,
            out_of_range: 0,
            recent: VecDeque::with_capacity(RECENT),
            in_flight: 0,
            idle_since: None,
            last_seen: now,
            prewarmed: None,
            cached: None,
            start,
        }
    }

    fn record(&mut self, idle: Duration, cfg: &WarmthConfig) {
        let bin = idle.as_nanos() / cfg.bin.as_nanos().max(1);
        match usize::try_from(bin).ok().filter(|&b| b < self.bins.len()) {
            Some(b) => {
                self.bins[b] += 1;
                self.in_range += 1;
            }
            None => self.out_of_range += 1,
        }
        if self.recent.len() == RECENT {
            self.recent.pop_front();
        }
        self.recent.push_back(idle);
        if self.in_range + self.out_of_range >= AGE_AT {
            self.bins.iter_mut().for_each(|c| *c /= 2);
            self.in_range = self.bins.iter().sum();
            self.out_of_range /= 2;
        }
        self.cached = None;
    }

    /// The learned windows, or the basis that says to use the fixed timeout.
    fn learned(&mut self, cfg: &WarmthConfig) -> Result<Windows, Basis> {
        if let Some(c) = self.cached {
            return c;
        }
        let c = self.compute(cfg);
        self.cached = Some(c);
        c
    }

    fn compute(&self, cfg: &WarmthConfig) -> Result<Windows, Basis> {
        let total = self.in_range + self.out_of_range;
        if total < cfg.min_samples.max(1) {
            return Err(Basis::FewSamples);
        }
        if f64::from(self.out_of_range) >= OUT_OF_RANGE_SHARE * f64::from(total) {
            let mut r: Vec<Duration> = self.recent.iter().copied().collect();
            r.sort();
            let forecast = r[r.len() / 2];
            if forecast < cfg.bin {
                // Recent calls came close together after long gaps: no forecast to act on.
                return Err(Basis::NotRepresentative);
            }
            let m = FORECAST_MARGIN_PERCENT;
            return Ok(Windows {
                basis: Basis::OutOfRange,
                prewarm: forecast * (100 - m) as u32 / 100,
                keep_alive: forecast * (2 * m) as u32 / 100,
            });
        }
        if cv(&self.bins) < MIN_CV {
            return Err(Basis::NotRepresentative);
        }
        let head = percentile_bin(&self.bins, self.in_range, HEAD_PERCENTILE);
        let tail = percentile_bin(&self.bins, self.in_range, TAIL_PERCENTILE);
        let m = cfg.margin_percent.min(100);
        let prewarm = cfg.bin * head as u32 * (100 - m) / 100;
        let end = cfg.bin * (tail as u32 + 1) * (100 + m) / 100;
        Ok(Windows {
            basis: Basis::Histogram,
            prewarm,
            keep_alive: end.saturating_sub(prewarm),
        })
    }
}

/// The bin holding the `p`th percentile of `total` samples.
fn percentile_bin(bins: &[u32], total: u32, p: u64) -> usize {
    if total == 0 {
        return 0;
    }
    // The smallest bin whose cumulative count reaches p % of the total.
    let need = (u64::from(total) * p).div_ceil(100).max(1);
    let mut seen = 0u64;
    for (i, c) in bins.iter().enumerate() {
        seen += u64::from(*c);
        if seen >= need {
            return i;
        }
    }
    bins.len().saturating_sub(1)
}

/// Coefficient of variation of the bin counts (standard deviation over mean); 0 when empty.
fn cv(bins: &[u32]) -> f64 {
    let n = bins.len() as f64;
    let sum: f64 = bins.iter().map(|&c| f64::from(c)).sum();
    if sum == 0.0 || bins.len() < 2 {
        return 0.0;
    }
    let mean = sum / n;
    let var = bins
        .iter()
        .map(|&c| (f64::from(c) - mean).powi(2))
        .sum::<f64>()
        / (n - 1.0);
    var.sqrt() / mean
}

/// The histograms of all bundles. `S` is what the caller needs to start an instance of a
/// bundle without a request (the pool's key and spec factory; nothing in the replay).
pub struct Warmth<S> {
    cfg: WarmthConfig,
    apps: HashMap<String, App<S>>,
}

impl<S: Clone> Warmth<S> {
    pub fn new(cfg: WarmthConfig) -> Self {
        Warmth {
            cfg,
            apps: HashMap::new(),
        }
    }

    pub fn config(&self) -> &WarmthConfig {
        &self.cfg
    }

    /// A call for `app` arrived at `now`: records the idle time since its last call ended (0 if
    /// one is still in flight) and remembers `start` as the version to pre-warm.
    pub fn arrive(&mut self, app: &str, now: Instant, start: S) {
        if !self.apps.contains_key(app) {
            self.make_room(now);
            let n = self.cfg.bins();
            self.apps.insert(app.to_string(), App::new(n, now, start));
            return;
        }
        let cfg = self.cfg;
        let Some(a) = self.apps.get_mut(app) else {
            return;
        };
        a.last_seen = now;
        a.start = start;
        if a.in_flight > 0 {
            a.record(Duration::ZERO, &cfg);
        } else if let Some(l) = a.idle_since {
            a.record(now.saturating_duration_since(l), &cfg);
        }
    }

    /// A call of `app` took an instance slot.
    pub fn begin(&mut self, app: &str) {
        if let Some(a) = self.apps.get_mut(app) {
            a.in_flight += 1;
            a.idle_since = None;
        }
    }

    /// A call of `app` ended at `now` (its response body included).
    pub fn end(&mut self, app: &str, now: Instant) {
        if let Some(a) = self.apps.get_mut(app) {
            a.in_flight = a.in_flight.saturating_sub(1);
            if a.in_flight == 0 {
                a.idle_since = Some(now);
                a.prewarmed = None;
            }
        }
    }

    /// The windows of `app` now; `fixed` is the timeout used when nothing is learned.
    pub fn windows(&mut self, app: &str, fixed: Duration) -> Windows {
        let cfg = self.cfg;
        match self.apps.get_mut(app).map(|a| a.learned(&cfg)) {
            Some(Ok(w)) => w,
            Some(Err(basis)) => Windows::fixed(basis, fixed),
            None => Windows::fixed(Basis::FewSamples, fixed),
        }
    }

    /// Since when `app` has had nothing in flight (`None` while busy or unknown).
    pub fn idle_since(&self, app: &str) -> Option<Instant> {
        self.apps.get(app).and_then(|a| a.idle_since)
    }

    /// The bundles whose pre-warm time has come (and whose keep-alive has not passed), each
    /// handed out once per idle period, with what starts them.
    pub fn prewarm_due(&mut self, now: Instant) -> Vec<(String, S)> {
        let cfg = self.cfg;
        let mut due = Vec::new();
        for (name, a) in &mut self.apps {
            let Some(l) = a.idle_since else { continue };
            if a.prewarmed == Some(l) {
                continue;
            }
            let Ok(w) = a.learned(&cfg) else { continue };
            let Some(p) = w.prewarm_after() else { continue };
            if now >= l + p && now < l + p + w.keep_alive {
                a.prewarmed = Some(l);
                due.push((name.clone(), a.start.clone()));
            }
        }
        due
    }

    /// Forgets bundles not seen for `forget_after`, and while at the cap the one seen least
    /// recently (a bundle with a call in flight is kept).
    fn make_room(&mut self, now: Instant) {
        let forget = self.cfg.forget_after;
        self.apps
            .retain(|_, a| a.in_flight > 0 || now.saturating_duration_since(a.last_seen) < forget);
        while self.apps.len() >= self.cfg.max_bundles.max(1) {
            let oldest = self
                .apps
                .iter()
                .filter(|(_, a)| a.in_flight == 0)
                .min_by_key(|(_, a)| a.last_seen)
                .map(|(k, _)| k.clone());
            match oldest {
                Some(k) => {
                    self.apps.remove(&k);
                }
                None => break,
            }
        }
    }

    /// Every tracked bundle's windows, for the admin view.
    pub fn info(&mut self, fixed: Duration) -> Vec<WarmthInfo> {
        let cfg = self.cfg;
        let mut out: Vec<WarmthInfo> = self
            .apps
            .iter_mut()
            .map(|(name, a)| {
                let w = match a.learned(&cfg) {
                    Ok(w) => w,
                    Err(b) => Windows::fixed(b, fixed),
                };
                WarmthInfo {
                    bundle: name.clone(),
                    basis: w.basis,
                    samples: a.in_range + a.out_of_range,
                    prewarm_ms: w.prewarm.as_millis() as u64,
                    keep_alive_ms: w.keep_alive.as_millis() as u64,
                }
            })
            .collect();
        out.sort_by(|a, b| a.bundle.cmp(&b.bundle));
        out
    }

    /// Bundles tracked now.
    pub fn len(&self) -> usize {
        self.apps.len()
    }

    /// True when no bundle is tracked.
    pub fn is_empty(&self) -> bool {
        self.apps.is_empty()
    }

    /// Forgets everything (the pool's shutdown: the start closures hold the runner's state).
    pub fn clear(&mut self) {
        self.apps.clear();
    }
}

#[cfg(test)]
mod tests;
