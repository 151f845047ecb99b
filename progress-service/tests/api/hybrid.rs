//! Hybrid mode only: what Redis and Postgres hold, read-your-writes before
//! the flush, cache warming races, deletes against older queued updates,
//! Redis outages and replicas sharing one Redis and one Postgres.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use mangahub_proto::v1 as pb;
use progress_service::domain::{Chapter, Progress, ProgressKey, Status};
use progress_service::store::hybrid::cache::{Cache, State, Warm};
use redis::AsyncCommands;
use tonic::Code;

use crate::helpers::{Backend, TestApp, spawn_app, spawn_app_with, spawn_replica, update_req};

const WAIT: Duration = Duration::from_secs(30);

async fn hash(app: &TestApp, user: &str, manga: i64) -> HashMap<String, String> {
    let mut conn = app.redis_conn().await;
    conn.hgetall(format!("progress:{user}:{manga}"))
        .await
        .expect("HGETALL")
}

/// `(chapter, version)` of the Postgres row, if any.
async fn row(pool: &sqlx::PgPool, user: &str, manga: i64) -> Option<(String, i64)> {
    sqlx::query_as(
        "SELECT current_chapter::text, version FROM user_progress
          WHERE user_id = $1 AND manga_id = $2",
    )
    .bind(user)
    .bind(manga)
    .fetch_optional(pool)
    .await
    .expect("query user_progress")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_hash_and_postgres_row_are_compatible() {
    let app = spawn_app(Backend::Hybrid).await;
    let acked = app
        .send(pb::UpdateProgressRequest {
            page: 3,
            status: Some("on_hold".into()),
            ..update_req("compat", 42, "76.50")
        })
        .await
        .expect("ok")
        .progress
        .expect("record");
    let fields = hash(&app, "compat", 42).await;
    for (field, value) in [
        ("user_id", "compat"),
        ("manga_id", "42"),
        ("chapter", "76.5"),
        ("page", "3"),
        ("status", "on_hold"),
        ("version", "1"),
    ] {
        assert_eq!(
            fields.get(field).map(String::as_str),
            Some(value),
            "{field}"
        );
    }
    let updated_at = fields.get("updated_at").expect("updated_at");
    let parsed = chrono::DateTime::parse_from_rfc3339(updated_at).expect("RFC 3339");
    let t = acked.updated_at.expect("time");
    assert_eq!(parsed.timestamp(), t.seconds);
    assert_eq!(parsed.timestamp_subsec_nanos(), t.nanos as u32);

    app.wait_flushed().await;
    let pool = app.pg_pool().await;
    assert_eq!(
        row(&pool, "compat", 42).await,
        Some(("76.50".to_owned(), 1))
    );
    let (page, status): (i32, String) =
        sqlx::query_as("SELECT page, status FROM user_progress WHERE user_id = 'compat'")
            .fetch_one(&pool)
            .await
            .expect("row");
    assert_eq!((page, status.as_str()), (3, "on_hold"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_see_acknowledged_writes_before_the_flush() {
    // The writer holds everything for an hour: Postgres stays empty.
    let app = spawn_app_with(Backend::Hybrid, &["--batch-interval", "1h"]).await;
    let pool = app.pg_pool().await;
    for manga in 1..=5 {
        app.update("ryw", manga, "1").await;
    }
    app.update("ryw", 2, "7.5").await;
    app.delete("ryw", 4).await.expect("deleted");
    assert_eq!(row(&pool, "ryw", 2).await, None, "nothing flushed yet");

    let got = app.get("ryw", 2).await.expect("found");
    assert_eq!((got.chapter.as_str(), got.version), ("7.5", 2));
    assert_eq!(
        app.get("ryw", 4).await.expect_err("deleted").code(),
        Code::NotFound
    );
    let listed = app
        .list(pb::ListProgressRequest {
            user_id: "ryw".into(),
            page_size: 2,
            ..Default::default()
        })
        .await
        .expect("page");
    let mut ids: Vec<i64> = listed.items.iter().map(|p| p.manga_id).collect();
    let more = app
        .list(pb::ListProgressRequest {
            user_id: "ryw".into(),
            page_size: 2,
            page_token: listed.next_page_token.clone(),
            ..Default::default()
        })
        .await
        .expect("page");
    ids.extend(more.items.iter().map(|p| p.manga_id));
    assert_eq!(ids, vec![1, 3, 5, 2], "deleted one gone, updated one last");
    assert!(more.next_page_token.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_continue_after_the_redis_copy_is_evicted() {
    let app = spawn_app(Backend::Hybrid).await;
    app.update("evict", 1, "1").await;
    app.update("evict", 1, "2").await;
    app.wait_flushed().await;
    let mut conn = app.redis_conn().await;
    let _: () = conn.del("progress:evict:1").await.expect("DEL");

    let got = app.get("evict", 1).await.expect("from Postgres");
    assert_eq!((got.chapter.as_str(), got.version), ("2", 2));
    assert_eq!(hash(&app, "evict", 1).await["version"], "2", "warmed");

    let _: () = conn.del("progress:evict:1").await.expect("DEL");
    let out = app.update("evict", 1, "3").await;
    assert_eq!(out.progress.map(|p| p.version), Some(3), "old + 1");
    app.wait_flushed().await;
    assert_eq!(
        row(&app.pg_pool().await, "evict", 1).await,
        Some(("3.00".to_owned(), 3))
    );
}

/// A reader misses, reads Postgres, and only then warms; in between a writer
/// stores a newer version (or deletes). The late warm must not win.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_warm_never_overwrites_a_newer_value() {
    let app = spawn_app(Backend::Hybrid).await;
    let redis_url = app.redis.as_ref().expect("redis").url();
    let manager =
        redis::aio::ConnectionManager::new(redis::Client::open(redis_url).expect("redis url"))
            .await
            .expect("connect");
    let cache = Cache::new(
        manager,
        Duration::from_secs(3600),
        Duration::from_secs(3600),
    );
    let pool = app.pg_pool().await;
    let key = ProgressKey::new("warm", 1).expect("key");

    for (chapter, delete_instead) in [("1", false), ("3", true)] {
        let acked = app.update("warm", 1, chapter).await.progress.expect("v");
        app.wait_flushed().await;
        let mut conn = app.redis_conn().await;
        let _: () = conn.del("progress:warm:1").await.expect("evict");

        // 1. The reader misses and reads the (then current) Postgres row.
        let snap = cache.read(&key).await.expect("read");
        assert_eq!(snap.state, State::Absent);
        let (seq,): (i64,) = sqlx::query_as(
            "SELECT change_seq FROM user_progress WHERE user_id = 'warm' AND manga_id = 1",
        )
        .fetch_one(&pool)
        .await
        .expect("row");
        let stale = Progress {
            key: key.clone(),
            chapter: chapter.parse::<Chapter>().expect("chapter"),
            page: 0,
            status: Status::Reading,
            version: acked.version,
            updated_at: chrono::DateTime::from_timestamp(
                acked.updated_at.expect("t").seconds,
                acked.updated_at.expect("t").nanos as u32,
            )
            .expect("time"),
            device: None,
        };
        // 2. A writer moves on before the reader warms.
        if delete_instead {
            app.delete("warm", 1).await.expect("deleted");
        } else {
            app.update("warm", 1, "2").await;
        }
        // 3. The late warm loses.
        let warmed = cache.warm(&snap, &stale, seq).await.expect("warm");
        if delete_instead {
            assert_eq!(warmed, Warm::Deleted);
            assert_eq!(
                app.get("warm", 1).await.expect_err("gone").code(),
                Code::NotFound
            );
            app.wait_flushed().await;
            // Even after the delete is flushed, the old read cannot be cached.
            assert_ne!(
                cache.warm(&snap, &stale, seq).await.expect("warm"),
                Warm::Row
            );
            assert_eq!(
                app.get("warm", 1).await.expect_err("still gone").code(),
                Code::NotFound
            );
        } else {
            match warmed {
                Warm::Newer(p) => assert_eq!((p.chapter.to_string(), p.version), ("2".into(), 2)),
                other => panic!("stale warm was not refused: {other:?}"),
            }
            let got = app.get("warm", 1).await.expect("found");
            assert_eq!((got.chapter.as_str(), got.version), ("2", 2));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_is_not_undone_by_an_older_queued_update() {
    let app = spawn_app_with(Backend::Hybrid, &["--batch-interval", "1h"]).await;
    app.update("tomb", 1, "1").await;
    app.update("tomb", 1, "2").await;
    app.delete("tomb", 1).await.expect("deleted");
    app.update("tomb", 2, "1").await;
    app.delete("tomb", 2).await.expect("deleted");
    let again = app
        .update("tomb", 2, "9")
        .await
        .progress
        .expect("recreated");
    assert_eq!(again.version, 1, "a recreated record starts over");
    let mut app = app;
    app.restart().await; // the graceful stop flushes everything queued
    app.wait_flushed().await;
    let pool = app.pg_pool().await;
    assert_eq!(row(&pool, "tomb", 1).await, None);
    assert_eq!(row(&pool, "tomb", 2).await, Some(("9.00".to_owned(), 1)));
    let mut conn = app.redis_conn().await;
    let _: () = conn
        .del(&["progress:tomb:1", "progress:tomb:2"])
        .await
        .expect("evict");
    assert_eq!(
        app.get("tomb", 1).await.expect_err("gone").code(),
        Code::NotFound
    );
    assert_eq!(app.get("tomb", 2).await.expect("there").chapter, "9");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_fails_writes_fast_and_serves_reads_from_postgres() {
    let mut app = spawn_app(Backend::Hybrid).await;
    app.update("outage", 1, "5").await;
    app.wait_flushed().await;
    let redis = app
        .redis
        .as_mut()
        .and_then(Arc::get_mut)
        .expect("own Redis");
    redis.kill();

    let failed = tokio::time::timeout(WAIT, app.send(update_req("outage", 1, "6")))
        .await
        .expect("fails fast")
        .expect_err("no write without the queue");
    assert_eq!(failed.code(), Code::Unavailable);
    let got = app.get("outage", 1).await.expect("read from Postgres");
    assert_eq!((got.chapter.as_str(), got.version), ("5", 1));
    let listed = app
        .list(pb::ListProgressRequest {
            user_id: "outage".into(),
            ..Default::default()
        })
        .await
        .expect("list from Postgres");
    assert_eq!(listed.items.len(), 1);

    // Back without its data: Postgres is the truth, nothing stale is served.
    let redis = app
        .redis
        .as_mut()
        .and_then(Arc::get_mut)
        .expect("own Redis");
    redis.restart().await.expect("Redis restarts");
    let deadline = tokio::time::Instant::now() + WAIT;
    let resumed = loop {
        match app.send(update_req("outage", 1, "6")).await {
            Ok(out) => break out,
            Err(status) if tokio::time::Instant::now() < deadline => {
                assert_eq!(status.code(), Code::Unavailable);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(status) => panic!("writes did not resume: {status}"),
        }
    };
    let p = resumed.progress.expect("record");
    assert_eq!(
        (p.chapter.as_str(), p.version),
        ("6", 2),
        "versions continue"
    );
    app.wait_flushed().await;
    assert_eq!(
        row(&app.pg_pool().await, "outage", 1).await,
        Some(("6.00".to_owned(), 2)),
        "the queue drains into Postgres again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_redis_postgres_events_and_batch_work() {
    let a = spawn_app(Backend::Hybrid).await;
    let b = spawn_replica(&a, &[]).await;
    let watch = |app: &TestApp| {
        let mut client = app.client.clone();
        async move {
            client
                .watch_progress(pb::WatchProgressRequest {
                    user_ids: vec!["shared".into()],
                    manga_ids: vec![],
                    ..Default::default()
                })
                .await
                .expect("watch")
                .into_inner()
        }
    };
    let mut on_a = watch(&a).await;
    let mut on_b = watch(&b).await;

    b.update("shared", 1, "1").await;
    a.update("shared", 1, "2").await;
    for stream in [&mut on_a, &mut on_b] {
        for chapter in ["1", "2"] {
            let ev = tokio::time::timeout(WAIT, stream.message())
                .await
                .expect("event in time")
                .expect("healthy")
                .expect("open");
            assert_eq!(ev.progress.map(|p| p.chapter), Some(chapter.to_owned()));
        }
    }

    // Many writes through both replicas; both writers drain the one queue.
    let results: Vec<pb::UpdateProgressResponse> = futures::stream::iter(0..400)
        .map(|i| {
            let app = if i % 2 == 0 { &a } else { &b };
            async move {
                let manga = 100 + i % 40;
                app.update("shared", manga, &format!("{}", i / 40 + 1))
                    .await
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    a.wait_flushed().await;
    let pool = a.pg_pool().await;
    let applied = results.iter().filter(|r| r.applied).count();
    let records: Vec<&pb::Progress> = results.iter().filter_map(|r| r.progress.as_ref()).collect();
    for manga in 100..140 {
        let latest = records
            .iter()
            .filter(|p| p.manga_id == manga)
            .max_by_key(|p| p.version)
            .expect("written");
        let in_redis = a.get("shared", manga).await.expect("found");
        assert_eq!(in_redis.version, latest.version);
        assert_eq!(
            row(&pool, "shared", manga).await.map(|(_, v)| v),
            Some(latest.version),
            "Postgres holds the final version of manga {manga}"
        );
    }
    // Each watcher saw every applied change once, whichever replica took it.
    a.update("shared", 1, "3").await;
    for stream in [&mut on_a, &mut on_b] {
        let mut seen = Vec::new();
        loop {
            let ev = tokio::time::timeout(WAIT, stream.message())
                .await
                .expect("event in time")
                .expect("healthy")
                .expect("open");
            let p = ev.progress.expect("record");
            if p.manga_id == 1 {
                assert_eq!(p.chapter, "3");
                break;
            }
            seen.push((p.manga_id, p.version));
        }
        let distinct: std::collections::HashSet<_> = seen.iter().collect();
        assert_eq!(distinct.len(), seen.len(), "no event delivered twice");
        assert_eq!(seen.len(), applied);
    }
}

/// Two live processes may not share a REPLICA_ID (they would flush the same
/// pending entries side by side): the second refuses to start, naming the
/// setting; once the first stopped (releasing its lease) the id is free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_live_process_with_the_same_replica_id_is_refused() {
    use clap::Parser;
    let mut app = spawn_app_with(Backend::Hybrid, &["--replica-id", "twin"]).await;
    let redis_url = app.redis.as_ref().expect("hybrid").url();
    let database_url = app.database_url.clone();
    let config = || {
        progress_service::Config::try_parse_from([
            "progress-service",
            "--listen",
            "127.0.0.1:0",
            "--database-url",
            &database_url,
            "--redis-url",
            &redis_url,
            "--replica-id",
            "twin",
        ])
        .expect("config")
    };
    let started = std::time::Instant::now();
    let Err(err) = progress_service::Application::build(config()).await else {
        panic!("a second process with the same REPLICA_ID started");
    };
    let message = format!("{err:#}");
    assert!(
        message.contains("REPLICA_ID \"twin\" is in use"),
        "{message}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "refused promptly"
    );
    // The first one still works and, stopped, hands the id on at once.
    app.update("twin-user", 1, "1").await;
    app.stop().await.expect("clean exit");
    let started = std::time::Instant::now();
    let again = progress_service::Application::build(config())
        .await
        .expect("the id is free after a clean stop");
    assert!(started.elapsed() < Duration::from_secs(2), "no lease wait");
    drop(again);
}

/// A replica plans an update of a record it wrote last on its memory of that
/// write (no read); when another replica wrote since, the compare-and-set
/// fails, and the update is planned again on what Redis holds. A refused
/// update is never answered from that memory.
#[tokio::test]
async fn a_replica_never_acts_on_its_memory_of_an_overwritten_record() {
    let a = spawn_app(Backend::Hybrid).await;
    let b = spawn_replica(&a, &[]).await;
    a.update("memo", 1, "10").await;
    b.update("memo", 1, "20").await;

    // Refused by the memory too (5 < 10): answered from Redis, not from it.
    let refused = a.update("memo", 1, "5").await;
    assert!(!refused.applied);
    let stored = refused.progress.expect("the stored record");
    assert_eq!(
        (stored.chapter.as_str(), stored.version),
        ("20", 2),
        "not the remembered 10"
    );
    // Applied by the memory (15 > 10): the compare-and-set fails, then refused.
    let refused = a.update("memo", 1, "15").await;
    assert!(!refused.applied);
    assert_eq!(refused.progress.map(|p| p.version), Some(2));

    let applied = a.update("memo", 1, "25").await;
    assert!(applied.applied);
    let record = applied.progress.expect("record");
    assert_eq!(
        (record.chapter.as_str(), record.version),
        ("25", 3),
        "planned on v2, not v1"
    );

    // Remembered, and still right: the next update on `a` continues from it.
    let next = a.update("memo", 1, "26").await;
    assert_eq!(next.progress.map(|p| p.version), Some(4));
    assert_eq!(hash(&a, "memo", 1).await["version"], "4");
}

/// A batch bigger than one acknowledgement call (128 queue entries, 128
/// records per call) is acknowledged in full: nothing left queued or
/// pending, every flushed hash and delete marker given its TTL, every row
/// and marker in Postgres.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_many_records_is_acknowledged_in_full() {
    // Exactly one flush, when the 400th entry is read.
    let app = spawn_app_with(
        Backend::Hybrid,
        &["--batch-max-size", "400", "--batch-interval", "1h"],
    )
    .await;
    let user = "ackall";
    // 300 records created, 80 of them updated again, 20 others deleted:
    // 400 queue entries, 280 upserts and 20 deletes once collapsed.
    let creates = (1..=300).map(|m| update_req(user, m, "1")).collect();
    let again = (1..=80).map(|m| update_req(user, m, "2")).collect();
    for updates in [creates, again] {
        for result in app.send_batch(updates).await {
            assert!(
                matches!(
                    result.result,
                    Some(pb::update_progress_result::Result::Ok(_))
                ),
                "{result:?}"
            );
        }
    }
    for manga in 281..=300 {
        app.delete(user, manga).await.expect("deleted");
    }
    app.wait_flushed().await;

    let mut conn = app.redis_conn().await;
    let (pending, members): (redis::Value, u64) = redis::pipe()
        .cmd("XPENDING")
        .arg(progress_service::store::hybrid::STREAM)
        .arg(progress_service::store::hybrid::GROUP)
        .zcard(format!("mh:pending:{user}"))
        .query_async(&mut conn)
        .await
        .expect("XPENDING, ZCARD");
    let redis::Value::Array(summary) = pending else {
        panic!("XPENDING answered {pending:?}");
    };
    assert_eq!(
        summary.first(),
        Some(&redis::Value::Int(0)),
        "entries left pending"
    );
    assert_eq!(members, 0, "records left in the pending set");
    let mut ttls = redis::pipe();
    for manga in 1..=280 {
        ttls.pttl(format!("progress:{user}:{manga}"));
    }
    for manga in 281..=300 {
        ttls.pttl(format!("mh:tomb:{user}:{manga}"));
    }
    let ttls: Vec<i64> = ttls.query_async(&mut conn).await.expect("PTTL");
    let without: Vec<usize> = (1..=300)
        .zip(&ttls)
        .filter(|(_, ttl)| **ttl <= 0)
        .map(|(manga, _)| manga)
        .collect();
    assert!(
        without.is_empty(),
        "flushed but kept without a TTL: {without:?}"
    );

    let pool = app.pg_pool().await;
    let (rows, twice): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE version = 2)
           FROM user_progress WHERE user_id = $1",
    )
    .bind(user)
    .fetch_one(&pool)
    .await
    .expect("rows");
    let (markers,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM progress_tombstones WHERE user_id = $1")
            .bind(user)
            .fetch_one(&pool)
            .await
            .expect("markers");
    assert_eq!((rows, twice, markers), (280, 80, 20));
}
