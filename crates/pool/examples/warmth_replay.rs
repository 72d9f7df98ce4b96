//! Replays a synthetic invocation trace through the pool's warmth policy (`atrund_pool::warmth`,
//! the code the pool runs) on a simulated clock, and prints, per policy, the cold-start rate
//! (all invocations, and the 75th-percentile app's, as "Serverless in the Wild" plots it) and the
//! wasted memory time (instance time loaded but idle), normalised to the 10-minute fixed policy.
//!
//! ```sh
//! cargo run --release -p atrund-pool --example warmth_replay -- [--apps 1000] [--days 7] [--seed 14]
//! ```
//!
//! The trace has the shapes the paper reports for Azure Functions: most apps are invoked
//! rarely (45 % at most once an hour, 81 % at most once a minute, the rest up to every 2 s), about
//! a third are timers (a fixed period from the usual cron steps), a third Poisson arrivals, a
//! third bursty (bursts of a geometric number of calls, 8 on average, seconds apart, separated by
//! log-normal gaps), so idle times span seconds to days; execution times are log-normal (median
//! 0.6 s). One instance per app, as in the paper's simulation: a call that arrives while one runs
//! is warm. Pre-warm starts and unloads take no time here (in the pool they happen within one
//! reaper tick, ≤ 1 s, and a start takes Deno's start time).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

use atrund_pool::warmth::{Basis, Warmth, WarmthConfig, Windows};

/// SplitMix64: small, seeded, good enough for a trace.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn exp(&mut self, mean: f64) -> f64 {
        -mean * (1.0 - self.unit()).ln()
    }
    fn normal(&mut self) -> f64 {
        let (u, v) = (1.0 - self.unit(), self.unit());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
    fn log_uniform(&mut self, lo: f64, hi: f64) -> f64 {
        (lo.ln() + self.unit() * (hi.ln() - lo.ln())).exp()
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Shape {
    Timer,
    Poisson,
    Bursty,
}

const SHAPES: [(Shape, &str); 3] = [
    (Shape::Timer, "timer"),
    (Shape::Poisson, "Poisson"),
    (Shape::Bursty, "bursty"),
];

struct App {
    shape: Shape,
    /// (arrival, execution time) in seconds, sorted by arrival.
    calls: Vec<(f64, f64)>,
}

const MIN: f64 = 60.0;
const HOUR: f64 = 3600.0;
const DAY: f64 = 86_400.0;

fn generate(apps: usize, horizon: f64, rng: &mut Rng) -> Vec<App> {
    (0..apps)
        .map(|_| {
            // Rate band (the paper's invocation frequencies): 19 % more than once a minute, 36 % between once a
            // minute and once an hour, 45 % less than once an hour.
            let band = rng.unit();
            let shape = match rng.unit() {
                x if x < 0.35 => Shape::Timer,
                x if x < 0.70 => Shape::Poisson,
                _ => Shape::Bursty,
            };
            let mean = if band < 0.19 {
                rng.log_uniform(2.0, MIN)
            } else if band < 0.55 {
                rng.log_uniform(MIN, HOUR)
            } else {
                rng.log_uniform(HOUR, 3.0 * DAY)
            };
            let mut calls = Vec::new();
            let mut t = rng.unit() * mean.min(DAY);
            match shape {
                Shape::Timer => {
                    // The cron step nearest below the drawn mean; a little jitter.
                    let steps = [
                        10.0,
                        15.0,
                        30.0,
                        MIN,
                        2.0 * MIN,
                        5.0 * MIN,
                        10.0 * MIN,
                        15.0 * MIN,
                        30.0 * MIN,
                        HOUR,
                        2.0 * HOUR,
                        6.0 * HOUR,
                        12.0 * HOUR,
                        DAY,
                    ];
                    let period = steps
                        .iter()
                        .copied()
                        .rev()
                        .find(|s| *s <= mean)
                        .unwrap_or(steps[0]);
                    while t < horizon {
                        calls.push(t + rng.unit() * 0.01 * period.min(MIN));
                        t += period;
                    }
                }
                Shape::Poisson => {
                    while t < horizon {
                        calls.push(t);
                        t += rng.exp(mean);
                    }
                }
                Shape::Bursty => {
                    // Bursts of 8 calls on average, 5 s apart on average; the gaps between bursts
                    // log-normal (sigma 1) with the mean that keeps the app's rate.
                    let burst = 8.0;
                    let gap = mean * burst;
                    while t < horizon {
                        let n = 1 + rng.exp(burst - 1.0).round() as usize;
                        for _ in 0..n {
                            calls.push(t);
                            t += rng.exp(5.0);
                        }
                        t += gap * (rng.normal() - 0.5).exp();
                    }
                }
            }
            calls.retain(|c| *c < horizon);
            let calls = calls
                .into_iter()
                .map(|c| (c, (0.6f64.ln() + 1.2 * rng.normal()).exp().min(300.0)))
                .collect();
            App { shape, calls }
        })
        .collect()
}

#[derive(Clone, Copy)]
enum Policy {
    Fixed(Duration),
    /// The learned windows, `fallback` while a bundle knows too little.
    Hybrid {
        cfg: WarmthConfig,
        fallback: Duration,
    },
}

#[derive(Default)]
struct Outcome {
    calls: u64,
    cold: u64,
    /// Instance-seconds loaded and idle.
    wasted: f64,
    app_cold_rates: Vec<f64>,
    /// Per shape: calls, cold starts, wasted instance-seconds.
    by_shape: [(u64, u64, f64); 3],
    /// Apps whose windows are learned (not the fallback) at the end of the trace.
    learned: u64,
}

/// Whether a call arriving at `t` after an idle period that began at `l` finds the instance,
/// and how long the instance sat idle in that period: what the pool's reaper does with
/// [`Windows::unload`] and the pre-warm, evaluated at the arrival.
fn idle_period(win: &Windows, l: Instant, t: Instant) -> (bool, Duration) {
    match win.prewarm_after() {
        None => (
            win.unload(l, Some(l), t).is_none(),
            (t - l).min(win.keep_alive),
        ),
        Some(p) if t < l + p => (false, Duration::ZERO),
        Some(p) => (
            win.unload(l + p, Some(l), t).is_none(),
            (t - l - p).min(win.keep_alive),
        ),
    }
}

fn replay(apps: &[App], horizon: f64, policy: Policy) -> Outcome {
    let epoch = Instant::now();
    let at = |s: f64| epoch + Duration::from_secs_f64(s);
    let mut warmth: Option<Warmth<()>> = match policy {
        Policy::Hybrid { cfg, .. } => Some(Warmth::new(cfg)),
        Policy::Fixed(_) => None,
    };
    let mut out = Outcome::default();
    for (i, app) in apps.iter().enumerate() {
        let name = format!("app{i}");
        let windows = |w: &mut Option<Warmth<()>>| match (policy, w) {
            (Policy::Fixed(t), _) => Windows::fixed(Basis::FewSamples, t),
            (Policy::Hybrid { fallback, .. }, Some(w)) => w.windows(&name, fallback),
            (Policy::Hybrid { fallback, .. }, None) => Windows::fixed(Basis::FewSamples, fallback),
        };
        // Ends of the calls in flight (µs), and when the app last became idle.
        let mut ends: BinaryHeap<Reverse<u64>> = BinaryHeap::new();
        let wasted_before = out.wasted;
        let mut idle_since: Option<Instant> = None;
        let (mut cold, mut seen) = (0u64, false);
        let end_calls = |upto: f64,
                         ends: &mut BinaryHeap<Reverse<u64>>,
                         idle: &mut Option<Instant>,
                         w: &mut Option<Warmth<()>>| {
            while let Some(Reverse(e)) = ends.peek().copied() {
                let e = e as f64 / 1e6;
                if e > upto {
                    break;
                }
                ends.pop();
                if let Some(w) = w {
                    w.end(&name, at(e));
                }
                if ends.is_empty() {
                    *idle = Some(at(e));
                }
            }
        };
        for &(t, d) in &app.calls {
            end_calls(t, &mut ends, &mut idle_since, &mut warmth);
            let warm = match (ends.is_empty(), idle_since) {
                (false, _) => true,
                (true, Some(l)) => {
                    let win = windows(&mut warmth);
                    let (warm, wasted) = idle_period(&win, l, at(t));
                    out.wasted += wasted.as_secs_f64();
                    warm
                }
                (true, None) => false,
            };
            debug_assert!(seen || !warm);
            seen = true;
            cold += u64::from(!warm);
            if let Some(w) = &mut warmth {
                w.arrive(&name, at(t), ());
                w.begin(&name);
            }
            idle_since = None;
            ends.push(Reverse(((t + d) * 1e6) as u64));
        }
        end_calls(f64::MAX, &mut ends, &mut idle_since, &mut warmth);
        // The last idle period, up to the end of the trace.
        let win = windows(&mut warmth);
        out.learned += u64::from(win.basis.is_adaptive());
        if let Some(l) = idle_since.filter(|l| *l < at(horizon)) {
            out.wasted += idle_period(&win, l, at(horizon)).1.as_secs_f64();
        }
        let n = app.calls.len() as u64;
        if n > 0 {
            out.calls += n;
            out.cold += cold;
            out.app_cold_rates.push(cold as f64 / n as f64);
            let s = SHAPES
                .iter()
                .position(|(s, _)| *s == app.shape)
                .unwrap_or(0);
            out.by_shape[s].0 += n;
            out.by_shape[s].1 += cold;
            out.by_shape[s].2 += out.wasted - wasted_before;
        }
    }
    out.app_cold_rates.sort_by(f64::total_cmp);
    out
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let (apps, days, seed) = (arg("--apps", 1000), arg("--days", 7), arg("--seed", 14));
    let horizon = days as f64 * DAY;
    let started = Instant::now();
    let trace = generate(apps as usize, horizon, &mut Rng(seed));
    let calls: usize = trace.iter().map(|a| a.calls.len()).sum();
    println!(
        "trace: {apps} apps, {days} days, seed {seed}: {calls} invocations; apps by shape: {}",
        SHAPES
            .iter()
            .map(|(s, n)| format!("{n} {}", trace.iter().filter(|a| a.shape == *s).count()))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let hybrid = |min_samples: u32, fallback_min: u64| Policy::Hybrid {
        cfg: WarmthConfig {
            min_samples,
            max_bundles: usize::MAX,
            forget_after: Duration::from_secs(365 * 24 * 3600),
            ..WarmthConfig::default()
        },
        fallback: Duration::from_secs(fallback_min * 60),
    };
    let fixed = |m: u64| Policy::Fixed(Duration::from_secs(m * 60));
    let policies: Vec<(String, Policy)> = vec![
        ("fixed 1 min".into(), fixed(1)),
        ("fixed 5 min (at-rund's default)".into(), fixed(5)),
        ("fixed 10 min (baseline)".into(), fixed(10)),
        ("fixed 20 min".into(), fixed(20)),
        ("fixed 60 min".into(), fixed(60)),
        (
            "adaptive, fallback 5 min, 10 samples (at-rund's defaults)".into(),
            hybrid(10, 5),
        ),
        (
            "adaptive, fallback 10 min, 10 samples".into(),
            hybrid(10, 10),
        ),
        ("adaptive, fallback 5 min, 3 samples".into(), hybrid(3, 5)),
        (
            "adaptive, fallback 4 h (the paper's: the histogram's range)".into(),
            hybrid(10, 240),
        ),
    ];
    let results: Vec<(String, Outcome)> = policies
        .into_iter()
        .map(|(n, p)| (n, replay(&trace, horizon, p)))
        .collect();
    let base = results
        .iter()
        .find(|(n, _)| n.starts_with("fixed 10 min"))
        .map_or(1.0, |(_, o)| o.wasted.max(1.0));
    println!();
    println!("| policy | cold starts, all calls | cold starts, 75th-percentile app | wasted memory time (instance-hours) | vs fixed 10 min | timer / Poisson / bursty: cold starts (wasted instance-hours) | apps on learned windows at the end |");
    println!("|---|---|---|---|---|---|---|");
    for (name, o) in &results {
        let shape = |i: usize| {
            let (n, c, w) = o.by_shape[i];
            format!(
                "{:.1} % ({:.0} h)",
                100.0 * c as f64 / n.max(1) as f64,
                w / 3600.0
            )
        };
        let learned = 100.0 * o.learned as f64 / o.app_cold_rates.len().max(1) as f64;
        println!(
            "| {name} | {:.2} % | {:.1} % | {:.0} | {:.2} | {} / {} / {} | {learned:.0} % |",
            100.0 * o.cold as f64 / o.calls.max(1) as f64,
            100.0 * percentile(&o.app_cold_rates, 0.75),
            o.wasted / 3600.0,
            o.wasted / base,
            shape(0),
            shape(1),
            shape(2),
        );
    }
    println!();
    println!("replayed in {:.1} s", started.elapsed().as_secs_f64());
}
