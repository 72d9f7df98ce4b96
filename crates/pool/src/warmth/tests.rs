//! The policy on a made-up clock: windows from regular, frequent, flat and out-of-range idle
//! times, the fallbacks, the unload rule, pre-warm hand-out, and the memory bounds.

use std::time::{Duration, Instant};

use super::*;

const MIN: Duration = Duration::from_secs(60);

fn cfg() -> WarmthConfig {
    WarmthConfig {
        min_samples: 5,
        ..WarmthConfig::default()
    }
}

/// `n` calls of `app`, each lasting `call`, arriving `gap` after the previous one ended.
fn calls(w: &mut Warmth<()>, app: &str, t: &mut Instant, n: usize, gap: Duration) {
    for _ in 0..n {
        *t += gap;
        w.arrive(app, *t, ());
        w.begin(app);
        *t += Duration::from_millis(200);
        w.end(app, *t);
    }
}

#[test]
fn too_few_idle_times_fall_back_to_the_fixed_timeout() {
    let mut w = Warmth::new(cfg());
    let mut t = Instant::now();
    let fixed = Duration::from_secs(300);
    assert_eq!(
        w.windows("a/x", fixed),
        Windows::fixed(Basis::FewSamples, fixed)
    );
    // 5 calls make 4 idle times (the first call has no predecessor): one short.
    calls(&mut w, "a/x", &mut t, 5, 10 * MIN);
    let win = w.windows("a/x", fixed);
    assert_eq!(win, Windows::fixed(Basis::FewSamples, fixed));
    assert_eq!(win.prewarm_after(), None);
    calls(&mut w, "a/x", &mut t, 1, 10 * MIN);
    assert_eq!(w.windows("a/x", fixed).basis, Basis::Histogram);
}

#[test]
fn regular_arrivals_give_a_prewarm_before_and_a_keep_alive_around_the_next_call() {
    let mut w = Warmth::new(cfg());
    let mut t = Instant::now();
    calls(&mut w, "a/timer", &mut t, 20, 10 * MIN);
    let win = w.windows("a/timer", Duration::from_secs(300));
    // All idle times are 10 min (bin 10): pre-warm at the bin's lower edge less 10 %, keep alive
    // until its upper edge plus 10 %.
    assert_eq!(win.basis, Basis::Histogram);
    assert_eq!(win.prewarm, 9 * MIN);
    assert_eq!(win.prewarm + win.keep_alive, Duration::from_secs(11 * 66));
}

#[test]
fn frequent_arrivals_keep_the_instance_for_the_tail_without_unloading() {
    let mut w = Warmth::new(cfg());
    let mut t = Instant::now();
    calls(&mut w, "a/busy", &mut t, 50, Duration::from_secs(5));
    // One idle time of 3 min among 49 short ones: 1 in 50 is more than 1 %, so the tail is its bin.
    calls(&mut w, "a/busy", &mut t, 1, 3 * MIN);
    let win = w.windows("a/busy", Duration::from_secs(300));
    assert_eq!(win.basis, Basis::Histogram);
    assert_eq!(win.prewarm_after(), None, "the head is in the first bin");
    assert_eq!(win.keep_alive, Duration::from_secs(4 * 66));
}

#[test]
fn overlapping_calls_count_as_no_idle_time() {
    let mut w = Warmth::new(cfg());
    let t0 = Instant::now();
    w.arrive("a/x", t0, ());
    w.begin("a/x");
    for i in 1..=6 {
        // Each arrives 30 min later while the first is still running.
        w.arrive("a/x", t0 + 30 * MIN * i, ());
        w.begin("a/x");
        w.end("a/x", t0 + 30 * MIN * i + Duration::from_secs(1));
    }
    assert_eq!(
        w.idle_since("a/x"),
        None,
        "the first call is still in flight"
    );
    let win = w.windows("a/x", Duration::from_secs(300));
    assert_eq!(
        (win.prewarm, win.keep_alive),
        (Duration::ZERO, Duration::from_secs(66))
    );
    w.end("a/x", t0 + 4 * 60 * MIN);
    assert_eq!(w.idle_since("a/x"), Some(t0 + 4 * 60 * MIN));
}

#[test]
fn a_flat_histogram_is_not_representative() {
    let mut w = Warmth::new(WarmthConfig {
        range: 20 * MIN,
        ..cfg()
    });
    let mut t = Instant::now();
    // Idle times spread evenly over all 20 bins.
    for i in 0..40u32 {
        calls(
            &mut w,
            "a/x",
            &mut t,
            1,
            MIN * (i % 20) + Duration::from_secs(30),
        );
    }
    let fixed = Duration::from_secs(300);
    assert_eq!(
        w.windows("a/x", fixed),
        Windows::fixed(Basis::NotRepresentative, fixed)
    );
}

#[test]
fn idle_times_beyond_the_range_are_forecast_from_the_recent_ones() {
    let mut w = Warmth::new(cfg());
    let mut t = Instant::now();
    // Every 10 hours, beyond the 4-hour range; one early short gap does not move the median.
    calls(&mut w, "a/daily", &mut t, 2, 30 * MIN);
    calls(&mut w, "a/daily", &mut t, 7, 600 * MIN);
    let win = w.windows("a/daily", Duration::from_secs(300));
    assert_eq!(win.basis, Basis::OutOfRange);
    // The median of the last 8 idle times (one of 30 min, seven of 600) is 600 min: pre-warm at 85 %, keep 30 %.
    assert_eq!(win.prewarm, 510 * MIN);
    assert_eq!(win.keep_alive, 180 * MIN);
}

#[test]
fn a_forecast_under_one_bin_falls_back() {
    let mut w = Warmth::new(cfg());
    let mut t = Instant::now();
    // Long gaps first (out of range), then a run of quick calls fills the recent window.
    calls(&mut w, "a/x", &mut t, 12, 600 * MIN);
    calls(&mut w, "a/x", &mut t, 8, Duration::from_secs(1));
    let fixed = Duration::from_secs(300);
    assert_eq!(
        w.windows("a/x", fixed),
        Windows::fixed(Basis::NotRepresentative, fixed)
    );
}

#[test]
fn the_unload_rule_without_prewarm_is_the_idle_timeout() {
    let t0 = Instant::now();
    let w = Windows::fixed(Basis::FewSamples, Duration::from_secs(300));
    let idle = t0 + Duration::from_secs(10);
    assert_eq!(
        w.unload(idle, Some(idle), t0 + Duration::from_secs(309)),
        None
    );
    assert_eq!(
        w.unload(idle, Some(idle), t0 + Duration::from_secs(310)),
        Some(Unload::KeepAliveOver)
    );
}

#[test]
fn with_a_prewarm_instances_go_after_the_call_and_the_prewarmed_one_after_its_keep_alive() {
    let t0 = Instant::now();
    let w = Windows {
        basis: Basis::Histogram,
        prewarm: 9 * MIN,
        keep_alive: 2 * MIN,
    };
    // The instance that served the call: unloaded right away.
    assert_eq!(w.unload(t0, Some(t0), t0), Some(Unload::BeforePrewarm));
    assert_eq!(
        w.unload(t0, Some(t0), t0 + 8 * MIN),
        Some(Unload::BeforePrewarm)
    );
    // One that survived into the window is kept like the pre-warmed one, from the pre-warm time.
    assert_eq!(w.unload(t0, Some(t0), t0 + 10 * MIN), None);
    assert_eq!(
        w.unload(t0, Some(t0), t0 + 11 * MIN),
        Some(Unload::KeepAliveOver)
    );
    // The pre-warmed instance, ready 10 s after the pre-warm time.
    let ready = t0 + 9 * MIN + Duration::from_secs(10);
    assert_eq!(w.unload(ready, Some(t0), t0 + 11 * MIN), None);
    assert_eq!(
        w.unload(ready, Some(t0), ready + 2 * MIN),
        Some(Unload::KeepAliveOver)
    );
    // While the bundle is busy elsewhere, an idle instance is judged by its own idle time.
    assert_eq!(w.unload(t0, None, t0 + MIN), None);
    assert_eq!(
        w.unload(t0, None, t0 + 2 * MIN),
        Some(Unload::KeepAliveOver)
    );
}

#[test]
fn a_prewarm_is_handed_out_once_per_idle_period_inside_its_window() {
    let mut w: Warmth<u32> = Warmth::new(cfg());
    let mut t = Instant::now();
    for v in 0..10 {
        t += 10 * MIN;
        w.arrive("a/timer", t, v);
        w.begin("a/timer");
        w.end("a/timer", t);
    }
    let end = t;
    assert!(w.prewarm_due(end + 8 * MIN).is_empty(), "too early");
    assert_eq!(w.prewarm_due(end + 9 * MIN), [("a/timer".to_string(), 9)]);
    assert!(
        w.prewarm_due(end + 9 * MIN + Duration::from_secs(1))
            .is_empty(),
        "once"
    );
    // The next idle period gets its own.
    w.arrive("a/timer", end + 10 * MIN, 10);
    w.begin("a/timer");
    assert!(w.prewarm_due(end + 30 * MIN).is_empty(), "busy");
    let end2 = end + 10 * MIN;
    w.end("a/timer", end2);
    // Past the keep-alive window too: no pre-warm.
    assert!(w.prewarm_due(end2 + 60 * MIN).is_empty());
    assert_eq!(
        w.prewarm_due(end2 + 9 * MIN + Duration::from_secs(30))
            .len(),
        1
    );
}

#[test]
fn bundles_are_capped_and_forgotten() {
    let mut w = Warmth::new(WarmthConfig {
        max_bundles: 2,
        forget_after: 60 * MIN,
        ..cfg()
    });
    let t0 = Instant::now();
    w.arrive("a/1", t0, ());
    w.arrive("a/2", t0 + MIN, ());
    w.arrive("a/1", t0 + 2 * MIN, ());
    // At the cap: the one seen least recently (a/2) makes room.
    w.arrive("a/3", t0 + 3 * MIN, ());
    let names: Vec<_> = w.info(MIN).into_iter().map(|i| i.bundle).collect();
    assert_eq!(names, ["a/1", "a/3"]);
    // Long after: both are forgotten when a new one arrives.
    w.arrive("a/4", t0 + 3 * MIN + 60 * MIN, ());
    assert_eq!(w.len(), 1);
}

#[test]
fn a_bundle_with_a_call_in_flight_is_not_evicted() {
    let mut w = Warmth::new(WarmthConfig {
        max_bundles: 1,
        ..cfg()
    });
    let t0 = Instant::now();
    w.arrive("a/1", t0, ());
    w.begin("a/1");
    w.arrive("a/2", t0 + MIN, ());
    assert_eq!(
        w.len(),
        2,
        "over the cap rather than losing a bundle in flight"
    );
}

#[test]
fn counts_are_halved_as_they_age() {
    let mut a: App<()> = App::new(10, Instant::now(), ());
    let c = cfg();
    for _ in 0..AGE_AT - 1 {
        a.record(Duration::from_secs(1), &c);
    }
    assert_eq!(a.in_range, AGE_AT - 1);
    a.record(Duration::from_secs(1), &c);
    assert_eq!((a.in_range, a.bins[0]), (AGE_AT / 2, AGE_AT / 2));
}

#[test]
fn percentiles_and_cv_on_edges() {
    assert_eq!(percentile_bin(&[0, 0, 0], 0, 5), 0);
    assert_eq!(percentile_bin(&[0, 1, 0, 99], 100, 5), 3);
    assert_eq!(percentile_bin(&[0, 1, 0, 99], 100, 1), 1);
    assert_eq!(percentile_bin(&[5, 0, 0, 5], 10, 99), 3);
    assert_eq!(cv(&[0, 0, 0]), 0.0);
    assert_eq!(cv(&[3, 3, 3, 3]), 0.0);
    // One full bin of n: CV = sqrt(n).
    assert!((cv(&[7, 0, 0, 0, 0]) - 5f64.sqrt()).abs() < 1e-9);
}
