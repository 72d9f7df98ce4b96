//! Both backends of the queue, SQLite in a temp dir and Redis in a real `redis-server`, through
//! the `Queue` the runner uses: each scenario runs on both, so they keep the same promises.
//! Time is passed in, so leases and back-off are exact.

use atrund_jobs::{Backoff, Job, JobError, NewJob, Queue, RedisQueue, State};

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

fn free(_: &Job) -> bool {
    false
}

/// What keeps a backend alive while its queue is used.
#[allow(dead_code)]
enum Guard {
    Dir(tempfile::TempDir),
    Redis(atrund_testnet::RedisServer),
}

/// The queue on each backend; `None` when redis-server is missing and tests may skip.
async fn backends(prefix: &str) -> Option<Vec<(Queue, Guard)>> {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = Queue::Sqlite(std::sync::Arc::new(
        atrund_jobs::JobStore::open(&dir.path().join("jobs.sqlite")).unwrap(),
    ));
    let server = atrund_testnet::RedisServer::start()?;
    let conn = atrund_jobs::connect_redis(&server.url()).await.unwrap();
    let redis = RedisQueue::new(conn, prefix);
    Some(vec![
        (sqlite, Guard::Dir(dir)),
        (Queue::Redis(redis), Guard::Redis(server)),
    ])
}

#[tokio::test]
async fn both_backends_keep_the_queues_promises() {
    let Some(queues) = backends("t1:").await else {
        return;
    };
    for (q, _guard) in queues {
        eprintln!("backend: {}", q.backend());
        both_backends_keep_the_queues_promises_on(q).await;
    }
}

async fn both_backends_keep_the_queues_promises_on(q: Queue) {
    // Enqueue, claim, complete; a result is kept.
    let e = q.enqueue(new_job("did:a", None), 1_000).await.unwrap();
    assert!(e.created);
    assert_eq!((e.job.state, e.job.attempts), (State::Queued, 0));
    let j = q.claim(1_000, 500, free).await.unwrap().unwrap();
    assert_eq!((j.id, j.state, j.attempts), (e.job.id, State::Running, 1));
    assert_eq!(j.lease_until_ms, Some(1_500));
    assert!(q.claim(1_000, 500, free).await.unwrap().is_none(), "taken");
    assert!(q.extend(j.id, 1, 1_200, 500).await.unwrap());
    assert!(q
        .complete(j.id, 1, Some(r#"{"ok":true}"#.into()), 1_300)
        .await
        .unwrap());
    let done = q.get("did:a".into(), j.id).await.unwrap().unwrap();
    assert_eq!(done.state, State::Succeeded);
    assert_eq!(done.result.as_deref(), Some(r#"{"ok":true}"#));
    assert_eq!(done.finished_at_ms, Some(1_300));
    assert!(!q.complete(j.id, 1, None, 1_400).await.unwrap(), "once");

    // Delays and order: due first, then enqueue order (ids past 9 too).
    let mut late = new_job("did:a", None);
    late.delay_ms = 5_000;
    let late = q.enqueue(late, 0).await.unwrap().job;
    let mut ids = Vec::new();
    for _ in 0..11 {
        ids.push(q.enqueue(new_job("did:a", None), 100).await.unwrap().job.id);
    }
    for want in &ids {
        let got = q.claim(200, 10_000, free).await.unwrap().unwrap();
        assert_eq!(got.id, *want);
        q.complete(got.id, 1, None, 200).await.unwrap();
    }
    assert!(
        q.claim(4_999, 1_000, free).await.unwrap().is_none(),
        "not due yet"
    );
    let got = q.claim(5_000, 1_000, free).await.unwrap().unwrap();
    assert_eq!(got.id, late.id);
    q.complete(got.id, 1, None, 5_000).await.unwrap();

    // Idempotency keys: per author, bundle and task; still one job once finished.
    let a = q.enqueue(new_job("did:a", Some("k")), 0).await.unwrap();
    let again = q.enqueue(new_job("did:a", Some("k")), 10).await.unwrap();
    assert!(a.created && !again.created);
    assert_eq!(again.job.id, a.job.id);
    let mut other_task = new_job("did:a", Some("k"));
    other_task.task = "u".into();
    assert!(q.enqueue(other_task, 0).await.unwrap().created);
    assert!(
        q.enqueue(new_job("did:b", Some("k")), 0)
            .await
            .unwrap()
            .created
    );

    // Tasks at capacity are passed over, not blocking others.
    while let Some(j) = q.claim(10_000, 1_000, free).await.unwrap() {
        q.complete(j.id, j.attempts, None, 10_000).await.unwrap();
    }
    let busy = q.enqueue(new_job("did:a", None), 20_000).await.unwrap().job;
    let mut other = new_job("did:a", None);
    other.task = "other".into();
    let other = q.enqueue(other, 20_001).await.unwrap().job;
    let got = q
        .claim(30_000, 1_000, |j: &Job| j.task == "t")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.id, other.id);
    let got = q.claim(30_000, 1_000, free).await.unwrap().unwrap();
    assert_eq!(got.id, busy.id);

    // Failures back off, then die with the last error.
    let f = q.enqueue(new_job("did:f", None), 40_000).await.unwrap().job;
    let mut now = 40_000;
    for attempt in 1..=3u32 {
        let j = loop {
            if let Some(j) = q
                .claim(now, 1_000, |j: &Job| j.author != "did:f")
                .await
                .unwrap()
            {
                break j;
            }
            now += 500;
        };
        assert_eq!((j.id, j.attempts), (f.id, attempt));
        let state = q
            .fail(j.id, attempt, format!("E{attempt}"), now, BACKOFF)
            .await
            .unwrap();
        if attempt < 3 {
            assert_eq!(state, Some(State::Queued));
            let back = q.get("did:f".into(), f.id).await.unwrap().unwrap();
            assert_eq!(back.run_at_ms, now + BACKOFF.delay_ms(attempt));
        } else {
            assert_eq!(state, Some(State::Dead));
        }
    }
    let dead = q.get("did:f".into(), f.id).await.unwrap().unwrap();
    assert_eq!(dead.last_error.as_deref(), Some("E3"));
    // A retry starts it over; cancel says why not.
    assert_eq!(
        q.cancel("did:f".into(), f.id, now).await.unwrap(),
        Some(State::Dead)
    );
    assert_eq!(
        q.retry("did:other".into(), f.id, now, 1_000).await.unwrap(),
        None,
        "another author's job is no job"
    );
    assert_eq!(
        q.retry("did:f".into(), f.id, now, 1_000).await.unwrap(),
        Some(State::Queued)
    );
    assert_eq!(
        q.cancel("did:f".into(), f.id, now).await.unwrap(),
        Some(State::Cancelled)
    );
    assert!(q.get("did:other".into(), f.id).await.unwrap().is_none());
}

#[tokio::test]
async fn a_lost_lease_runs_again_and_a_lost_last_attempt_is_dead() {
    let Some(queues) = backends("t2:").await else {
        return;
    };
    for (q, _guard) in queues {
        eprintln!("backend: {}", q.backend());
        a_lost_lease_runs_again_and_a_lost_last_attempt_is_dead_on(q).await;
    }
}

async fn a_lost_lease_runs_again_and_a_lost_last_attempt_is_dead_on(q: Queue) {
    let mut one = new_job("did:a", Some("cron:t:1"));
    one.max_attempts = 2;
    let id = q.enqueue(one, 0).await.unwrap().job.id;
    let open = || q.unfinished("did:a".into(), "b".into(), "t".into(), "cron:t:".into());
    assert!(open().await.unwrap());
    let first = q.claim(0, 1_000, free).await.unwrap().unwrap();
    // The runner holding it dies: its lease runs out, another claims it as attempt 2.
    assert!(q.claim(999, 1_000, free).await.unwrap().is_none());
    let second = q.claim(1_000, 1_000, free).await.unwrap().unwrap();
    assert_eq!((second.id, second.attempts), (id, 2));
    assert!(
        !q.complete(first.id, 1, None, 1_001).await.unwrap(),
        "the lost attempt records nothing"
    );
    // The second is lost too: that was the last attempt.
    assert!(q.claim(2_000, 1_000, free).await.unwrap().is_none());
    let dead = q.get("did:a".into(), id).await.unwrap().unwrap();
    assert_eq!(dead.state, State::Dead);
    assert!(dead.last_error.unwrap().contains("lease ran out"));
    assert!(!open().await.unwrap());
    let counts = q.counts().await.unwrap();
    assert!(
        counts.contains(&(State::Dead, 1)) && counts.contains(&(State::Running, 0)),
        "{counts:?}"
    );
}

#[tokio::test]
async fn quota_list_purge_and_concurrent_claims() {
    let Some(queues) = backends("t3:").await else {
        return;
    };
    for (q, _guard) in queues {
        eprintln!("backend: {}", q.backend());
        quota_list_purge_and_concurrent_claims_on(q).await;
    }
}

async fn quota_list_purge_and_concurrent_claims_on(q: Queue) {
    let mut j = new_job("did:a", None);
    j.author_quota = 2;
    q.enqueue(j.clone(), 0).await.unwrap();
    q.enqueue(j.clone(), 0).await.unwrap();
    let e = q.enqueue(j.clone(), 0).await.unwrap_err();
    assert!(matches!(e, JobError::QuotaExceeded { limit: 2, .. }), "{e}");
    let run = q.claim(0, 1_000, free).await.unwrap().unwrap();
    assert!(q.enqueue(j.clone(), 0).await.is_err(), "running counts");
    q.complete(run.id, 1, None, 5).await.unwrap();
    assert!(q.enqueue(j.clone(), 0).await.unwrap().created);
    // A retry counts too: the author is at 2 again, so bringing back a finished job is refused.
    let dead = q.enqueue(new_job("did:a", None), 0).await;
    assert!(dead.is_ok(), "quota 1000 for this one");
    let dead = dead.unwrap().job.id;
    q.cancel("did:a".into(), dead, 1).await.unwrap();
    let e = q.retry("did:a".into(), dead, 2, 2).await.unwrap_err();
    assert!(matches!(e, JobError::QuotaExceeded { limit: 2, .. }), "{e}");
    assert_eq!(
        q.retry("did:a".into(), dead, 2, 3).await.unwrap(),
        Some(State::Queued)
    );
    q.cancel("did:a".into(), dead, 3).await.unwrap();

    // List: newest first, filtered, paged.
    let all = q.list("did:a".into(), None, None, None, 10).await.unwrap();
    assert_eq!(all.len(), 4);
    assert!(all.windows(2).all(|w| w[0].id > w[1].id));
    let done = q
        .list(
            "did:a".into(),
            Some("b".into()),
            Some(State::Succeeded),
            None,
            10,
        )
        .await
        .unwrap();
    assert_eq!(done.iter().map(|j| j.id).collect::<Vec<_>>(), vec![run.id]);
    let page = q
        .list("did:a".into(), None, None, Some(all[0].id), 1)
        .await
        .unwrap();
    assert_eq!(page[0].id, all[1].id);
    // Purge deletes finished jobs only (the succeeded and the cancelled one).
    assert_eq!(q.purge(6).await.unwrap(), 2);
    assert!(q.get("did:a".into(), run.id).await.unwrap().is_none());
    assert_eq!(
        q.list("did:a".into(), None, None, None, 10)
            .await
            .unwrap()
            .len(),
        2
    );

    // Many claimers at once (as several runners would): no job handed out twice.
    for _ in 0..40 {
        q.enqueue(new_job("did:c", None), 0).await.unwrap();
    }
    let claimers: Vec<_> = (0..8)
        .map(|_| {
            let q = q.clone();
            tokio::spawn(async move {
                let mut got = Vec::new();
                while let Some(j) = q.claim(10, 60_000, free).await.unwrap() {
                    got.push(j.id);
                }
                got
            })
        })
        .collect();
    let mut seen: Vec<i64> = Vec::new();
    for c in claimers {
        seen.extend(c.await.unwrap());
    }
    let n = seen.len();
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), n, "a job was claimed twice");
    assert_eq!(n, 42, "every queued job claimed once");
}
