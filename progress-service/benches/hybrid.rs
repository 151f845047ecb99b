//! Hybrid store benchmark; prints a Markdown table.
//!
//! 1. Batch writer statement: 1000-row batches into `user_progress` (fresh
//!    inserts, then upserts over existing rows, every other batch handed over
//!    in hash order as the writer collapses them) against a plain `COPY` of the
//!    same rows into a scratch table, and into a table with `user_progress`'s
//!    indexes (what any write into it must at least do), timed in turns.
//! 2. `UpdateProgress` over gRPC with 64 concurrent callers in hybrid mode
//!    (service and callers in this process), against `redis-benchmark`
//!    running the Redis side of an update (read pipeline + write script).
//!
//! `cargo bench -p progress-service --bench hybrid` (Postgres from
//! `TEST_DATABASE_URL` or the local server; a private `redis-server`);
//! `… --bench hybrid -- batch` runs part 1 only.
#![allow(clippy::print_stdout, clippy::unwrap_used)]

use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, Instant};

use chrono::DateTime;
use clap::Parser;
use futures::StreamExt;
use mangahub_proto::v1 as pb;
use mangahub_proto::v1::progress_service_client::ProgressServiceClient;
use progress_service::domain::{Chapter, Progress, ProgressKey, Status};
use progress_service::store::hybrid::pg::{Batch, write_batch};
use progress_service::{Application, Config};
use sqlx::postgres::PgPool;

const BATCH: usize = 1000;
const BATCHES: usize = 30;
const CALLERS: usize = 64;
const UPDATES: usize = 64 * 600;

fn main() -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let batch_only = std::env::args().any(|a| a == "batch");
    let database_url = testkit::fresh_database().await?;
    let pool = PgPool::connect(&database_url).await?;
    sqlx::migrate!("../migrations/postgres").run(&pool).await?;
    let rates = time_batches(&pool).await?;

    println!("| measurement | rows or ops/s | p50 | p99 |");
    println!("|---|---:|---:|---:|");
    println!(
        "| batch writer, 1000 new rows per statement | {:.0} | | |",
        rates.insert
    );
    println!(
        "| batch writer, 1000-row upsert over existing rows | {:.0} | | |",
        rates.upsert
    );
    println!(
        "| batch writer, 1000-row upsert, rows in hash order (as collapsed) | {:.0} | | |",
        rates.hash_order
    );
    println!(
        "| plain COPY of the same 1000 rows (scratch table) | {:.0} | | |",
        rates.copy
    );
    println!(
        "| COPY of the same new rows into a table with user_progress's indexes | {:.0} | | |",
        rates.copy_indexed
    );
    println!(
        "| batch writer / COPY: new rows / upserts (indexed COPY / COPY) | {:.2} / {:.2} ({:.2}) | | |",
        rates.insert / rates.copy,
        rates.upsert / rates.copy,
        rates.copy_indexed / rates.copy
    );
    if batch_only {
        return Ok(());
    }

    let redis = testkit::PrivateRedis::start(false).await?;
    let (updates_per_s, p50, p99) = time_updates(&database_url, &redis.url()).await?;
    let raw = redis_benchmark(redis.port())?;
    println!(
        "| UpdateProgress, hybrid, {CALLERS} callers | {updates_per_s:.0} | {:.2} ms | {:.2} ms |",
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3
    );
    for (name, rps, p99) in raw {
        println!("| redis-benchmark {name}, {CALLERS} clients | {rps:.0} | | {p99} ms |");
    }
    Ok(())
}

/// Median rows/s of each measurement.
struct BatchRates {
    insert: f64,
    upsert: f64,
    hash_order: f64,
    copy: f64,
    copy_indexed: f64,
}

fn batch(index: usize, version: i64) -> Batch {
    let upserts = (0..BATCH)
        .map(|i| {
            let n = (index * BATCH + i) as i64;
            let p = Progress {
                key: ProgressKey {
                    user_id: format!("bench-user-{}", n / 50),
                    manga_id: n % 50 + 1,
                },
                chapter: Chapter::from_hundredths(n % 100_000 + version).unwrap(),
                page: (n % 300) as i32,
                status: Status::Reading,
                version,
                updated_at: DateTime::from_timestamp_micros(1_700_000_000_000_000 + n).unwrap(),
                device: None,
            };
            (p, version * 1_000_000_000 + n)
        })
        .collect();
    Batch {
        upserts,
        deletes: Vec::new(),
    }
}

/// Each batch statement (transaction included) next to a `COPY` of the same
/// rows, in turns, so that a busy moment of the machine hits both.
async fn time_batches(pool: &PgPool) -> anyhow::Result<BatchRates> {
    sqlx::raw_sql(
        "CREATE TABLE copy_scratch (user_id TEXT, manga_id BIGINT, current_chapter NUMERIC(10,2),
           page INT, status TEXT, version BIGINT, updated_at TIMESTAMPTZ, change_seq BIGINT);
         CREATE TABLE copy_indexed (LIKE user_progress INCLUDING ALL)",
    )
    .execute(pool)
    .await?;
    let (mut insert, mut upsert, mut hash_order) = (Vec::new(), Vec::new(), Vec::new());
    let (mut copy, mut copy_indexed) = (Vec::new(), Vec::new());
    for index in 0..BATCHES {
        let b = batch(index, 1);
        insert.push(time_batch(pool, &b).await?);
        let text = copy_text(&b);
        copy.push(time_copy(pool, "copy_scratch", &text).await?);
        copy_indexed.push(time_copy(pool, "copy_indexed", &text).await?);
    }
    // Every other upsert batch in the order the writer's collapse hands over.
    for index in 0..BATCHES {
        let b = batch(index, 2);
        let text = copy_text(&b);
        if index % 2 == 0 {
            upsert.push(time_batch(pool, &b).await?);
        } else {
            hash_order.push(time_batch(pool, &in_hash_order(b)).await?);
        }
        copy.push(time_copy(pool, "copy_scratch", &text).await?);
    }
    Ok(BatchRates {
        insert: median(insert),
        upsert: median(upsert),
        hash_order: median(hash_order),
        copy: median(copy),
        copy_indexed: median(copy_indexed),
    })
}

async fn time_batch(pool: &PgPool, b: &Batch) -> anyhow::Result<f64> {
    let start = Instant::now();
    write_batch(pool, b).await?;
    Ok(b.len() as f64 / start.elapsed().as_secs_f64())
}

/// The batch's rows in the order a `HashMap` holds them, as the writer's
/// collapse hands them over.
fn in_hash_order(b: Batch) -> Batch {
    let rows: HashMap<ProgressKey, (Progress, i64)> = b
        .upserts
        .into_iter()
        .map(|(p, seq)| (p.key.clone(), (p, seq)))
        .collect();
    Batch {
        upserts: rows.into_values().collect(),
        deletes: Vec::new(),
    }
}

fn copy_text(b: &Batch) -> String {
    let mut text = String::with_capacity(BATCH * 96);
    for (p, seq) in &b.upserts {
        text.push_str(&format!(
            "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\n",
            p.key.user_id,
            p.key.manga_id,
            p.chapter,
            p.page,
            p.status.as_str(),
            p.version,
            p.updated_at.to_rfc3339(),
            seq
        ));
    }
    text
}

/// Rows/s of one `COPY` of `text` into `table` (connection and commit included).
async fn time_copy(pool: &PgPool, table: &str, text: &str) -> anyhow::Result<f64> {
    let statement = format!(
        "COPY {table} (user_id, manga_id, current_chapter, page, status, version, updated_at,
           change_seq) FROM STDIN"
    );
    let start = Instant::now();
    let mut conn = pool.acquire().await?;
    let mut copy = conn.copy_in_raw(&statement).await?;
    copy.send(text.as_bytes()).await?;
    let rows = copy.finish().await?;
    Ok(rows as f64 / start.elapsed().as_secs_f64())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

async fn time_updates(
    database_url: &str,
    redis_url: &str,
) -> anyhow::Result<(f64, Duration, Duration)> {
    let config = Config::try_parse_from([
        "progress-service",
        "--listen",
        "127.0.0.1:0",
        "--database-url",
        database_url,
        "--redis-url",
        redis_url,
    ])?;
    let app = Application::build(config).await?;
    let addr = app.local_addr();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until(async {
        let _ = stopped.await;
    }));
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))?
        .connect()
        .await?;
    let client = ProgressServiceClient::new(channel);
    let request = |i: usize| pb::UpdateProgressRequest {
        user_id: format!("bench-{}", i % 5000),
        manga_id: (i % 7) as i64 + 1,
        chapter: (i / 5000 + 1).to_string(),
        ..Default::default()
    };
    // Warm-up: creates the records, so the timed run updates cached ones.
    run_callers(&client, (0..5000).map(request).collect()).await?;
    let start = Instant::now();
    let mut latencies = run_callers(&client, (5000..5000 + UPDATES).map(request).collect()).await?;
    let took = start.elapsed();
    latencies.sort();
    let _ = stop.send(());
    server.await??;
    Ok((
        latencies.len() as f64 / took.as_secs_f64(),
        latencies[latencies.len() / 2],
        latencies[latencies.len() * 99 / 100],
    ))
}

async fn run_callers(
    client: &ProgressServiceClient<tonic::transport::Channel>,
    requests: Vec<pb::UpdateProgressRequest>,
) -> anyhow::Result<Vec<Duration>> {
    let results: Vec<Result<Duration, tonic::Status>> = futures::stream::iter(requests)
        .map(|req| {
            let mut client = client.clone();
            async move {
                let start = Instant::now();
                client.update_progress(req).await?;
                Ok(start.elapsed())
            }
        })
        .buffer_unordered(CALLERS)
        .collect()
        .await;
    Ok(results.into_iter().collect::<Result<_, _>>()?)
}

/// The Redis side of one update, raw: the read pipeline and a write script
/// of the same shape (HSET, SET, ZADD, XADD, PUBLISH).
fn redis_benchmark(port: u16) -> anyhow::Result<Vec<(&'static str, f64, String)>> {
    let script = "redis.call('HGET', KEYS[1], 'seq') redis.call('GET', KEYS[2]) \
        local t = redis.call('TIME') local s = t[1] .. t[2] redis.call('SET', KEYS[5], s) \
        redis.call('HSET', KEYS[1], 'seq', s, 'user_id', 'u', 'manga_id', '1', 'chapter', '76.5', \
        'page', '3', 'status', 'reading', 'version', '7', 'updated_at', '2024-01-01T00:00:00.000000Z') \
        redis.call('PERSIST', KEYS[1]) redis.call('DEL', KEYS[2]) redis.call('ZADD', KEYS[4], s, '1') \
        redis.call('XADD', KEYS[3], '*', 's', s, 'c', ARGV[1]) redis.call('PUBLISH', 'bench', ARGV[1]) return s";
    let payload = r#"{"op":"u","user_id":"bench-1","manga_id":1,"chapter_hundredths":7650,"page":3,"status":"reading","version":7,"updated_at_us":1700000000000000,"origin":"","private":false}"#;
    let runs: [(&str, Vec<&str>); 2] = [
        (
            "HGETALL, pipeline depth 3",
            vec!["-P", "3", "HGETALL", "progress:bench:__rand_int__"],
        ),
        (
            "EVAL write script",
            vec![
                "EVAL",
                script,
                "5",
                "progress:bench:__rand_int__",
                "mh:tomb:bench:__rand_int__",
                "mh:bench:stream",
                "mh:pending:bench",
                "mh:bench:seq",
                payload,
            ],
        ),
    ];
    let mut out = Vec::new();
    for (name, args) in runs {
        let output = Command::new("redis-benchmark")
            .args([
                "-p",
                &port.to_string(),
                "-c",
                "64",
                "-n",
                "100000",
                "-r",
                "100000",
            ])
            .args(["--csv"])
            .args(&args)
            .output()?;
        let text = String::from_utf8_lossy(&output.stdout);
        // CSV: "test","rps","avg","min","p50","p95","p99","max"
        let fields: Vec<String> = text
            .lines()
            .last()
            .unwrap_or_default()
            .split(',')
            .map(|f| f.trim_matches('"').to_owned())
            .collect();
        // The test name may contain commas: count from the end.
        let from_end = |n: usize| fields.len().checked_sub(n).and_then(|i| fields.get(i));
        let rps: f64 = from_end(7).and_then(|f| f.parse().ok()).unwrap_or(0.0);
        let p99 = from_end(2).cloned().unwrap_or_default();
        out.push((name, rps, p99));
    }
    Ok(out)
}
