//! Sync: D devices, each its own user, take their cursor and go offline;
//! M changes per user land on R records meanwhile (through gRPC
//! `UpdateProgressBatch`). Then every device comes back and catches up
//! through the gateway over TCP, C at a time: `sync` from its cursor,
//! following `more`, checked to hold exactly the R records at their latest
//! chapter. The same-run reference: the same devices re-reading their whole
//! list with `list_progress` (limit 1000), the way a device catches up
//! without a change log.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use mangahub_proto::v1 as pb;
use mangahub_proto::v1::progress_service_client::ProgressServiceClient;
use serde::Deserialize;
use serde_json::value::RawValue;
use tonic::transport::Channel;

use super::{CatchUpArgs, Table};
use crate::bench::conns::{self, Conn, GatewayArgs};
use crate::bench::processes::Binaries;
use crate::bench::stack::{Stack, StackOptions};
use crate::bench::stats::Samples;
use crate::client::replies::{ListPage, SyncPage};

const SPARE_FDS: u64 = 64;
/// Most updates per `UpdateProgressBatch` (the service's limit).
const BATCH: usize = 1000;
/// gRPC connections the writers share.
const WRITE_CHANNELS: usize = 2;
const LIST_LIMIT: u32 = 1000;
/// Longest wait for the gateway's event stream to pass the last write.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(600);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Method {
    Sync,
    List,
}

/// A reply line: its type, and the data to read by type.
#[derive(Deserialize)]
struct Line<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    #[serde(default)]
    code: Option<&'a str>,
    #[serde(default)]
    message: Option<String>,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct RecordLite {
    manga_id: i64,
    chapter: serde_json::Number,
}

/// One phase's results over every device.
#[derive(Default)]
struct Tally {
    samples: Samples,
    requests: usize,
    records: usize,
    /// Devices whose result was not exactly the expected records.
    wrong: usize,
    errors: usize,
    /// Pushed events read between replies (none expected: the gateway's
    /// stream passed the last write before the devices connected).
    pushes: usize,
    first_problem: Option<String>,
}

impl Tally {
    fn merge(&mut self, other: Tally) {
        self.samples.merge(other.samples);
        self.requests += other.requests;
        self.records += other.records;
        self.wrong += other.wrong;
        self.errors += other.errors;
        self.pushes += other.pushes;
        if self.first_problem.is_none() {
            self.first_problem = other.first_problem;
        }
    }
}

/// What every device must end up with: manga id → chapter.
struct Expected {
    chapters: HashMap<i64, u64>,
}

impl Expected {
    /// Change j of a user moves manga `j % records + 1` to chapter `j / records + 1`.
    fn new(missed: usize, records: usize) -> Self {
        let mut chapters = HashMap::new();
        for j in 0..missed {
            chapters.insert((j % records) as i64 + 1, (j / records) as u64 + 1);
        }
        Self { chapters }
    }

    fn matches(&self, got: &HashMap<i64, u64>) -> bool {
        got == &self.chapters
    }
}

pub async fn run(args: &CatchUpArgs, binaries: &Binaries) -> anyhow::Result<Table> {
    if args.records == 0 {
        bail!("--records must be at least 1");
    }
    let needed = args.devices as u64 + SPARE_FDS;
    if let Some(limit) = conns::open_files_limit()
        && needed > limit
    {
        bail!(
            "{} devices need about {needed} open files; this process may open {limit} (ulimit -n)",
            args.devices
        );
    }
    eprintln!("sync: starting progress-service and gateway…");
    let stack = Stack::start(binaries, &StackOptions::default()).await?;
    let result = measure(args, &stack).await;
    stack.stop().await;
    result
}

async fn measure(args: &CatchUpArgs, stack: &Stack) -> anyhow::Result<Table> {
    let run = conns::run_id();
    let users: Vec<String> = (0..args.devices)
        .map(|i| format!("bench-catchup-{run}-dev-{i}"))
        .collect();
    let gateway_args = GatewayArgs {
        addr: stack.gateway.to_string(),
        jwt_secret: stack.jwt_secret.clone(),
        connect_concurrency: args.connect_concurrency,
        // The stack started here serves no TLS.
        ca_cert: None,
    };
    // A device that stays connected: when its own event arrives after the
    // last write, the gateway has delivered every event before it.
    let marker_user = format!("bench-catchup-{run}-marker");
    let marker_token = crate::token::mint(
        &stack.jwt_secret,
        &marker_user,
        None,
        Duration::from_secs(3600),
    )?;
    let mut marker = Conn::open(&gateway_args.addr, &marker_token, None).await?;

    let mut channels = Vec::new();
    for _ in 0..WRITE_CHANNELS {
        channels.push(stack.channel().await?);
    }
    eprintln!("sync: taking {} cursors…", users.len());
    let cursors = take_cursors(&channels, &users, args.write_concurrency.max(1) * 4).await?;

    let total = args.devices * args.missed;
    eprintln!(
        "sync: writing {} missed changes ({} per device over {} records)…",
        total, args.missed, args.records
    );
    let started = Instant::now();
    write_missed(&channels, &users, args).await?;
    let write = started.elapsed();
    eprintln!(
        "sync: written in {write:.1?} ({:.0} changes/s)",
        total as f64 / write.as_secs_f64()
    );
    ProgressServiceClient::new(channels[0].clone())
        .update_progress(pb::UpdateProgressRequest {
            user_id: marker_user.clone(),
            manga_id: 1,
            chapter: "1".into(),
            ..Default::default()
        })
        .await?;
    let marker_wait = Instant::now();
    loop {
        let left = CATCH_UP_TIMEOUT.saturating_sub(marker_wait.elapsed());
        let Some(line) = marker.read_line(left).await? else {
            bail!(
                "the gateway's event stream did not pass the last write within {CATCH_UP_TIMEOUT:?}"
            );
        };
        if line.contains("\"progress_broadcast\"") {
            break;
        }
    }
    let fanout_lag = marker_wait.elapsed();

    eprintln!("sync: {} devices back online…", users.len());
    let conns = conns::open_many(
        &gateway_args,
        &format!("bench-catchup-{run}-dev"),
        args.devices,
    )
    .await?;
    let expected = Arc::new(Expected::new(args.missed, args.records));
    let cursors = Arc::new(cursors);
    let mut conns = conns;
    let mut results = Vec::new();
    for round in 1..=args.rounds.max(1) {
        for method in [Method::Sync, Method::List] {
            let (back, tally, elapsed) = phase(conns, method, args, &cursors, &expected).await?;
            conns = back;
            results.push((round, method, tally, elapsed));
        }
    }
    drop(conns);

    let mut table = Table::new(
        "sync",
        format!(
            "catch-up through the gateway over TCP: {} devices (each its own user), {} missed changes each over {} records, {} devices at a time, SQLite (synchronous=normal), {} cores",
            args.devices,
            args.missed,
            args.records,
            args.concurrency,
            super::cores()
        ),
        &[
            "method",
            "round",
            "catch-ups/s",
            "missed changes/s",
            "records received/s",
            "p50 ms",
            "p99 ms",
            "max ms",
            "requests",
            "wrong",
            "errors",
        ],
    );
    let name = |method: Method| match method {
        Method::Sync => format!("sync from the device's cursor (limit {})", args.limit),
        Method::List => format!("reference: list_progress of the whole list (limit {LIST_LIMIT})"),
    };
    for (round, method, tally, elapsed) in &mut results {
        let secs = elapsed.as_secs_f64();
        let done = tally.samples.len();
        table.row(vec![
            name(*method),
            round.to_string(),
            format!("{:.0}", done as f64 / secs),
            format!("{:.0}", (done * args.missed) as f64 / secs),
            format!("{:.0}", tally.records as f64 / secs),
            format!("{:.2}", tally.samples.quantile_ms(0.5)),
            format!("{:.2}", tally.samples.quantile_ms(0.99)),
            format!("{:.2}", tally.samples.quantile_ms(1.0)),
            tally.requests.to_string(),
            tally.wrong.to_string(),
            tally.errors.to_string(),
        ]);
    }
    table.note(format!(
        "setup: {total} changes written through UpdateProgressBatch in {:.1} s ({:.0}/s); the gateway's event stream passed the last one {:.1} s after it; devices connected before the timed phases (timing covers the requests only); the phases alternate, sync first, on the same connections and cursors",
        write.as_secs_f64(),
        total as f64 / write.as_secs_f64(),
        fanout_lag.as_secs_f64()
    ));
    table.note(format!(
        "a catch-up counts as right when it holds exactly the {} records at their latest chapter (wrong = not so); changes/s = missed changes covered per second",
        expected.chapters.len()
    ));
    for (round, method, tally, _) in &results {
        let name = format!("{method:?} round {round}").to_lowercase();
        if tally.pushes > 0 {
            table.note(format!(
                "{name}: {} pushed events were read between replies",
                tally.pushes
            ));
        }
        if let Some(problem) = &tally.first_problem {
            table.note(format!("{name}: first problem: {problem}"));
        }
    }
    Ok(table)
}

/// Each user's cursor before any of its changes: `SyncProgress` without one.
async fn take_cursors(
    channels: &[Channel],
    users: &[String],
    concurrency: usize,
) -> anyhow::Result<Vec<String>> {
    let next = Arc::new(AtomicUsize::new(0));
    let users = Arc::new(users.to_vec());
    let cursors = Arc::new(Mutex::new(vec![String::new(); users.len()]));
    let tasks: Vec<_> = (0..concurrency)
        .map(|w| {
            let mut client = ProgressServiceClient::new(channels[w % channels.len()].clone());
            let (next, users, cursors) = (next.clone(), users.clone(), cursors.clone());
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(user) = users.get(i) else {
                        return anyhow::Ok(());
                    };
                    let response = client
                        .sync_progress(pb::SyncProgressRequest {
                            user_id: user.clone(),
                            after: String::new(),
                            limit: 1,
                        })
                        .await?
                        .into_inner();
                    if response.cursor.is_empty() {
                        bail!("SyncProgress gave no cursor for {user}");
                    }
                    cursors.lock().map_err(|_| anyhow::anyhow!("poisoned"))?[i] = response.cursor;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await??;
    }
    let cursors = cursors.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
    Ok(cursors.clone())
}

/// Every user's `missed` changes, in order per user (one user's batches one
/// after another, so each update moves its record forward), users
/// `write_concurrency` at a time.
async fn write_missed(
    channels: &[Channel],
    users: &[String],
    args: &CatchUpArgs,
) -> anyhow::Result<()> {
    let next = Arc::new(AtomicUsize::new(0));
    let users = Arc::new(users.to_vec());
    let (missed, records) = (args.missed, args.records);
    let tasks: Vec<_> = (0..args.write_concurrency.max(1))
        .map(|w| {
            let mut client = ProgressServiceClient::new(channels[w % channels.len()].clone());
            let (next, users) = (next.clone(), users.clone());
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(user) = users.get(i) else {
                        return anyhow::Ok(());
                    };
                    let mut from = 0;
                    while from < missed {
                        let to = (from + BATCH).min(missed);
                        let updates = (from..to)
                            .map(|j| pb::UpdateProgressRequest {
                                user_id: user.clone(),
                                manga_id: (j % records) as i64 + 1,
                                chapter: (j / records + 1).to_string(),
                                ..Default::default()
                            })
                            .collect();
                        let response = client
                            .update_progress_batch(pb::UpdateProgressBatchRequest { updates })
                            .await?
                            .into_inner();
                        for result in response.results {
                            match result.result {
                                Some(pb::update_progress_result::Result::Ok(r)) if r.applied => {}
                                Some(pb::update_progress_result::Result::Error(e)) => {
                                    bail!("a missed change failed: {} ({})", e.message, e.code)
                                }
                                _ => bail!("a forward update was not applied for {user}"),
                            }
                        }
                        from = to;
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await??;
    }
    Ok(())
}

/// Every device catches up once, `concurrency` at a time; returns the
/// connections (in device order), the tally and the wall time.
async fn phase(
    conns: Vec<Conn>,
    method: Method,
    args: &CatchUpArgs,
    cursors: &Arc<Vec<String>>,
    expected: &Arc<Expected>,
) -> anyhow::Result<(Vec<Conn>, Tally, Duration)> {
    let count = conns.len();
    let queue: Arc<Mutex<Vec<(usize, Conn)>>> =
        Arc::new(Mutex::new(conns.into_iter().enumerate().rev().collect()));
    let done: Arc<Mutex<Vec<(usize, Conn)>>> = Arc::new(Mutex::new(Vec::with_capacity(count)));
    let limit = args.limit;
    let started = Instant::now();
    let workers: Vec<_> = (0..args.concurrency.max(1))
        .map(|_| {
            let (queue, done) = (queue.clone(), done.clone());
            let (cursors, expected) = (cursors.clone(), expected.clone());
            tokio::spawn(async move {
                let mut tally = Tally::default();
                loop {
                    let next = queue.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.pop();
                    let Some((i, mut conn)) = next else {
                        return anyhow::Ok(tally);
                    };
                    let began = Instant::now();
                    let result = match method {
                        Method::Sync => sync_device(&mut conn, &cursors[i], limit, &mut tally).await,
                        Method::List => list_device(&mut conn, &mut tally).await,
                    };
                    let elapsed = began.elapsed();
                    match result {
                        Ok(got) => {
                            tally.samples.record(elapsed);
                            tally.records += got.len();
                            if !expected.matches(&got) {
                                tally.wrong += 1;
                                tally.first_problem.get_or_insert_with(|| {
                                    format!(
                                        "device {i} got {} records, expected {} at their latest chapter",
                                        got.len(),
                                        expected.chapters.len()
                                    )
                                });
                            }
                        }
                        Err(err) => {
                            tally.errors += 1;
                            tally
                                .first_problem
                                .get_or_insert_with(|| format!("device {i}: {err:#}"));
                        }
                    }
                    done.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.push((i, conn));
                }
            })
        })
        .collect();
    let mut tally = Tally::default();
    for worker in workers {
        tally.merge(worker.await??);
    }
    let elapsed = started.elapsed();
    let mut conns = std::mem::take(&mut *done.lock().map_err(|_| anyhow::anyhow!("poisoned"))?);
    conns.sort_by_key(|(i, _)| *i);
    Ok((conns.into_iter().map(|(_, c)| c).collect(), tally, elapsed))
}

/// Sends a request and reads lines until its reply (pushed events between
/// are counted and skipped); returns the reply's data.
async fn exchange<'c>(
    conn: &'c mut Conn,
    request: &str,
    expect: &str,
    tally: &mut Tally,
) -> anyhow::Result<&'c str> {
    tally.requests += 1;
    conn.send(request).await?;
    loop {
        let line = conn
            .read_line(Duration::from_secs(30))
            .await?
            .context("no reply within 30 s")?;
        let parsed: Line<'_> =
            serde_json::from_str(line).with_context(|| format!("not a message: {line}"))?;
        match parsed.kind {
            k if k == expect => break,
            "progress_broadcast" | "progress_deleted" | "system" => tally.pushes += 1,
            "error" => bail!(
                "{}: {}",
                parsed.code.unwrap_or("?"),
                parsed.message.unwrap_or_default()
            ),
            other => bail!("unexpected {other} reply"),
        }
    }
    // Re-borrow: the loop above ended on the reply line.
    let parsed: Line<'_> = serde_json::from_str(conn.last_line())?;
    Ok(parsed.data.context("a reply without data")?.get())
}

fn chapter(record: &RecordLite) -> anyhow::Result<u64> {
    record
        .chapter
        .as_u64()
        .with_context(|| format!("chapter {} is not a whole number", record.chapter))
}

/// `sync` from the device's cursor, following `more`.
async fn sync_device(
    conn: &mut Conn,
    cursor: &str,
    limit: u32,
    tally: &mut Tally,
) -> anyhow::Result<HashMap<i64, u64>> {
    let mut got = HashMap::new();
    let mut cursor = cursor.to_owned();
    for id in 1.. {
        let request = serde_json::json!({
            "type": "sync",
            "id": id,
            "data": {"cursor": cursor, "limit": limit},
        })
        .to_string();
        let data = exchange(conn, &request, "sync_result", tally).await?;
        let page: SyncPage<RecordLite> = serde_json::from_str(data)?;
        for change in page.changes {
            match (change.op.as_str(), change.data, change.manga_id) {
                ("updated", Some(record), _) => {
                    got.insert(record.manga_id, chapter(&record)?);
                }
                ("deleted", _, Some(manga_id)) => {
                    got.remove(&manga_id);
                }
                (op, _, _) => bail!("a malformed {op:?} change"),
            }
        }
        cursor = page.cursor;
        if !page.more {
            break;
        }
    }
    Ok(got)
}

/// `list_progress` of the whole list, page after page.
async fn list_device(conn: &mut Conn, tally: &mut Tally) -> anyhow::Result<HashMap<i64, u64>> {
    let mut got = HashMap::new();
    let mut cursor: Option<String> = None;
    for id in 1.. {
        let mut data = serde_json::json!({"limit": LIST_LIMIT});
        if let Some(c) = &cursor {
            data["cursor"] = c.clone().into();
        }
        let request =
            serde_json::json!({"type": "list_progress", "id": id, "data": data}).to_string();
        let reply = exchange(conn, &request, "progress_list", tally).await?;
        let page: ListPage<RecordLite> = serde_json::from_str(reply)?;
        for record in &page.items {
            got.insert(record.manga_id, chapter(record)?);
        }
        cursor = page.next_cursor;
        if cursor.is_none() {
            break;
        }
    }
    Ok(got)
}
