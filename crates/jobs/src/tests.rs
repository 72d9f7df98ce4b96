//! The queue against a real SQLite file; time is passed in, so back-off and leases are exact.

use super::*;

const BACKOFF: Backoff = Backoff {
    base_ms: 1_000,
    max_ms: 60_000,
};

fn new_job(author: &str, key: Option<&str>) -> NewJob {
    NewJob {
        author: author.into(),
        bundle: "b".into(),
        version: "bafyv1".into(),
        task: "t".into(),
        payload: r#"{"n":1}"#.into(),
        idempotency_key: key.map(str::to_string),
        delay_ms: 0,
        max_attempts: 3,
        author_quota: 1_000,
    }
}

fn store() -> (tempfile::TempDir, JobStore) {
    let dir = tempfile::tempdir().unwrap();
    let s = JobStore::open(&dir.path().join("jobs.sqlite")).unwrap();
    (dir, s)
}

fn free(_: &Job) -> bool {
    false
}

#[test]
fn enqueue_claim_complete() {
    let (_d, s) = store();
    let e = s.enqueue(&new_job("did:a", None), 1_000).unwrap();
    assert!(e.created);
    assert_eq!(
        (e.job.state, e.job.attempts, e.job.run_at_ms),
        (State::Queued, 0, 1_000)
    );
    let j = s.claim(1_000, 30_000, free).unwrap().expect("due");
    assert_eq!(
        (j.id, j.state, j.attempts, j.lease_until_ms),
        (e.job.id, State::Running, 1, Some(31_000))
    );
    assert!(
        s.claim(1_000, 30_000, free).unwrap().is_none(),
        "claimed once"
    );
    assert!(s.complete(j.id, 1, Some("42"), 2_000).unwrap());
    let done = s.get("did:a", j.id).unwrap().unwrap();
    assert_eq!(
        (done.state, done.result.as_deref(), done.finished_at_ms),
        (State::Succeeded, Some("42"), Some(2_000))
    );
    assert!(!s.complete(j.id, 1, None, 2_001).unwrap(), "finished once");
}

#[test]
fn delays_and_order() {
    let (_d, s) = store();
    let mut late = new_job("did:a", None);
    late.delay_ms = 5_000;
    let late = s.enqueue(&late, 0).unwrap().job;
    let early = s.enqueue(&new_job("did:a", None), 100).unwrap().job;
    assert_eq!(s.claim(4_999, 1_000, free).unwrap().unwrap().id, early.id);
    assert!(
        s.claim(4_999, 1_000, free).unwrap().is_none(),
        "not due yet"
    );
    assert_eq!(s.claim(5_000, 1_000, free).unwrap().unwrap().id, late.id);
}

#[test]
fn idempotency_keys_deduplicate_per_bundle_and_task() {
    let (_d, s) = store();
    let a = s.enqueue(&new_job("did:a", Some("k")), 0).unwrap();
    let again = s.enqueue(&new_job("did:a", Some("k")), 10).unwrap();
    assert!(a.created && !again.created);
    assert_eq!(again.job, a.job);
    let mut other_task = new_job("did:a", Some("k"));
    other_task.task = "u".into();
    assert!(s.enqueue(&other_task, 0).unwrap().created);
    assert!(
        s.enqueue(&new_job("did:b", Some("k")), 0).unwrap().created,
        "keys are per author"
    );
    // Still one job after it ran.
    let j = s.claim(0, 1_000, free).unwrap().unwrap();
    s.complete(j.id, 1, None, 5).unwrap();
    assert!(!s.enqueue(&new_job("did:a", Some("k")), 10).unwrap().created);
}

#[test]
fn an_author_past_their_quota_is_refused_until_jobs_finish() {
    let (_d, s) = store();
    let mut j = new_job("did:a", None);
    j.author_quota = 2;
    s.enqueue(&j, 0).unwrap();
    let mut keyed = j.clone();
    keyed.idempotency_key = Some("k".into());
    s.enqueue(&keyed, 0).unwrap();
    let e = s.enqueue(&j, 0).unwrap_err();
    assert!(
        matches!(e, JobError::QuotaExceeded { ref author, limit: 2 } if author == "did:a"),
        "{e}"
    );
    assert!(
        !s.enqueue(&keyed, 0).unwrap().created,
        "a known key answers its job even at the quota"
    );
    let mut other = new_job("did:b", None);
    other.author_quota = 2;
    assert!(
        s.enqueue(&other, 0).unwrap().created,
        "quotas are per author"
    );
    // A running job still counts; a finished one frees its place.
    let run = s.claim(0, 1_000, free).unwrap().unwrap();
    assert!(s.enqueue(&j, 0).is_err());
    s.complete(run.id, 1, None, 5).unwrap();
    assert!(s.enqueue(&j, 0).unwrap().created);
}

#[test]
fn failures_back_off_then_die_with_the_last_error() {
    let (_d, s) = store();
    let id = s.enqueue(&new_job("did:a", None), 0).unwrap().job.id;
    let mut now = 0;
    for (attempt, wait) in [(1, 1_000), (2, 2_000)] {
        let j = s.claim(now, 10_000, free).unwrap().expect("due");
        assert_eq!(j.attempts, attempt);
        assert_eq!(
            s.fail(id, attempt, &format!("boom {attempt}"), now, BACKOFF)
                .unwrap(),
            Some(State::Queued)
        );
        assert!(
            s.claim(now + wait - 1, 10_000, free).unwrap().is_none(),
            "backing off"
        );
        now += wait;
    }
    let j = s.claim(now, 10_000, free).unwrap().unwrap();
    assert_eq!(
        s.fail(id, j.attempts, "boom 3", now, BACKOFF).unwrap(),
        Some(State::Dead)
    );
    let dead = s.get("did:a", id).unwrap().unwrap();
    assert_eq!(
        (dead.state, dead.attempts, dead.last_error.as_deref()),
        (State::Dead, 3, Some("boom 3"))
    );
    assert!(s.claim(u64::MAX / 2, 10_000, free).unwrap().is_none());
    // The author retries it: a fresh set of attempts.
    assert_eq!(
        s.retry("did:a", id, now, 1_000).unwrap(),
        Some(State::Queued)
    );
    let j = s.claim(now, 10_000, free).unwrap().unwrap();
    assert_eq!(j.attempts, 1);
}

#[test]
fn backoff_doubles_up_to_its_cap() {
    let b = Backoff {
        base_ms: 500,
        max_ms: 3_000,
    };
    assert_eq!(
        [1, 2, 3, 4, 5, 100].map(|a| b.delay_ms(a)),
        [500, 1_000, 2_000, 3_000, 3_000, 3_000]
    );
}

#[test]
fn a_job_whose_runner_was_killed_runs_again_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jobs.sqlite");
    let id = {
        let s = JobStore::open(&path).unwrap();
        let id = s.enqueue(&new_job("did:a", None), 0).unwrap().job.id;
        let j = s.claim(0, 30_000, free).unwrap().unwrap();
        assert_eq!(j.attempts, 1);
        id
        // Dropped mid-attempt: the process is gone, the lease stays in the file.
    };
    let s = JobStore::open(&path).unwrap();
    assert!(
        s.claim(29_999, 30_000, free).unwrap().is_none(),
        "the lease still holds"
    );
    let again = s.claim(30_000, 30_000, free).unwrap().expect("reclaimed");
    assert_eq!((again.id, again.attempts), (id, 2));
    // The first attempt's late answer is not recorded over the second's.
    assert!(!s.complete(id, 1, Some("late"), 30_001).unwrap());
    assert!(!s.extend(id, 1, 30_001, 1_000).unwrap());
    assert!(s.extend(id, 2, 30_001, 1_000).unwrap());
    assert!(s.complete(id, 2, Some("ok"), 30_002).unwrap());
}

#[test]
fn a_lost_last_attempt_is_dead_not_run_again() {
    let (_d, s) = store();
    let mut one = new_job("did:a", None);
    one.max_attempts = 1;
    let id = s.enqueue(&one, 0).unwrap().job.id;
    s.claim(0, 1_000, free).unwrap().unwrap();
    assert!(s.claim(1_000, 1_000, free).unwrap().is_none());
    let dead = s.get("did:a", id).unwrap().unwrap();
    assert_eq!(dead.state, State::Dead);
    assert!(dead.last_error.unwrap().contains("lease ran out"));
}

#[test]
fn tasks_at_capacity_are_passed_over_not_blocking_others() {
    let (_d, s) = store();
    let busy = s.enqueue(&new_job("did:a", None), 0).unwrap().job;
    let mut other = new_job("did:a", None);
    other.task = "other".into();
    let other = s.enqueue(&other, 1).unwrap().job;
    let j = s.claim(10, 1_000, |j| j.task == "t").unwrap().unwrap();
    assert_eq!(j.id, other.id);
    assert_eq!(
        s.get("did:a", busy.id).unwrap().unwrap().state,
        State::Queued
    );
}

#[test]
fn authors_see_and_control_only_their_own_jobs() {
    let (_d, s) = store();
    let id = s.enqueue(&new_job("did:a", None), 0).unwrap().job.id;
    assert!(s.get("did:b", id).unwrap().is_none());
    assert_eq!(s.cancel("did:b", id, 1).unwrap(), None);
    assert_eq!(s.retry("did:b", id, 1, 1_000).unwrap(), None);
    assert!(s.list("did:b", None, None, None, 10).unwrap().is_empty());
    assert_eq!(s.get("did:a", id).unwrap().unwrap().state, State::Queued);
    assert_eq!(s.cancel("did:a", id, 1).unwrap(), Some(State::Cancelled));
    assert!(
        s.claim(10, 1_000, free).unwrap().is_none(),
        "a cancelled job does not run"
    );
}

#[test]
fn cancel_and_retry_say_why_not() {
    let (_d, s) = store();
    let id = s.enqueue(&new_job("did:a", None), 0).unwrap().job.id;
    assert_eq!(
        s.retry("did:a", id, 0, 1_000).unwrap(),
        Some(State::Queued),
        "queued: nothing to retry"
    );
    s.claim(0, 1_000, free).unwrap().unwrap();
    assert_eq!(s.cancel("did:a", id, 1).unwrap(), Some(State::Running));
    s.complete(id, 1, None, 2).unwrap();
    assert_eq!(s.cancel("did:a", id, 3).unwrap(), Some(State::Succeeded));
    assert_eq!(
        s.retry("did:a", id, 3, 1_000).unwrap(),
        Some(State::Succeeded)
    );
}

#[test]
fn list_pages_filters_and_purge() {
    let (_d, s) = store();
    let ids: Vec<i64> = (0..5)
        .map(|i| s.enqueue(&new_job("did:a", None), i).unwrap().job.id)
        .collect();
    let mut other = new_job("did:a", None);
    other.bundle = "c".into();
    s.enqueue(&other, 9).unwrap();
    let page = s.list("did:a", Some("b"), None, None, 2).unwrap();
    assert_eq!(
        page.iter().map(|j| j.id).collect::<Vec<_>>(),
        vec![ids[4], ids[3]]
    );
    let next = s.list("did:a", Some("b"), None, Some(ids[3]), 10).unwrap();
    assert_eq!(next.len(), 3);
    let j = s.claim(100, 1_000, free).unwrap().unwrap();
    s.complete(j.id, 1, None, 200).unwrap();
    assert_eq!(
        s.list("did:a", None, Some(State::Succeeded), None, 10)
            .unwrap()
            .len(),
        1
    );
    let counts = s.counts().unwrap();
    assert!(
        counts.contains(&(State::Queued, 5)) && counts.contains(&(State::Succeeded, 1)),
        "{counts:?}"
    );
    assert_eq!(s.purge(200).unwrap(), 0, "finished at 200, not before");
    assert_eq!(s.purge(201).unwrap(), 1);
    assert!(s.get("did:a", j.id).unwrap().is_none());
}

#[test]
fn unfinished_finds_a_running_cron_job() {
    let (_d, s) = store();
    let unfinished = |s: &JobStore| s.unfinished("did:a", "b", "t", "cron:t:").unwrap();
    assert!(!unfinished(&s));
    let id = s
        .enqueue(&new_job("did:a", Some("cron:t:100")), 0)
        .unwrap()
        .job
        .id;
    assert!(unfinished(&s));
    assert!(!s.unfinished("did:a", "b", "t", "cron:u:").unwrap());
    s.claim(0, 1_000, free).unwrap().unwrap();
    assert!(unfinished(&s), "running");
    s.complete(id, 1, None, 1).unwrap();
    assert!(!unfinished(&s));
}

#[test]
fn a_database_from_a_newer_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jobs.sqlite");
    drop(JobStore::open(&path).unwrap());
    let c = Connection::open(&path).unwrap();
    c.pragma_update(None, "user_version", 99).unwrap();
    drop(c);
    let err = JobStore::open(&path).expect_err("refused");
    assert!(
        err.to_string().contains("newer at-rund (schema 99"),
        "{err}"
    );
}

#[test]
fn concurrent_claims_never_hand_out_one_job_twice() {
    let (_d, s) = store();
    for i in 0..200 {
        s.enqueue(&new_job("did:a", None), i).unwrap();
    }
    let s = std::sync::Arc::new(s);
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let s = s.clone();
            std::thread::spawn(move || {
                let mut got = Vec::new();
                while let Some(j) = s.claim(1_000, 60_000, free).unwrap() {
                    got.push(j.id);
                }
                got
            })
        })
        .collect();
    let mut all: Vec<i64> = workers
        .into_iter()
        .flat_map(|w| w.join().unwrap())
        .collect();
    all.sort();
    let n = all.len();
    all.dedup();
    assert_eq!((n, all.len()), (200, 200));
}
