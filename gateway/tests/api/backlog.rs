//! `LISTEN_BACKLOG`: a reconnect storm is queued by the kernel, not dropped.
//! With Tokio's default backlog of 128, a burst overflows the accept queue
//! and the dropped SYNs wait about a second for a retransmit.

use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::helpers::{WAIT, spawn_app_with};

/// Both ends live in this process: 2 × 5,000 descriptors, well under the
/// 20,000 open-files limit.
const STORM: usize = 5_000;
const SLOWEST_ALLOWED: Duration = Duration::from_millis(200);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_back_to_back_connects_are_all_accepted_promptly() {
    // The auth deadline is how each client sees it was accepted: only a
    // connection the gateway took from the queue gets closed at it.
    let app = spawn_app_with(&["--auth-timeout", "2s", "--listen-backlog", "4096"]).await;
    let addr = app.addr;
    let started = Instant::now();
    let connects: Vec<_> = (0..STORM)
        .map(|_| {
            tokio::spawn(async move {
                let begun = Instant::now();
                let stream = TcpStream::connect(addr).await;
                (begun.elapsed(), stream)
            })
        })
        .collect();
    let mut streams = Vec::with_capacity(STORM);
    let mut slowest = Duration::ZERO;
    for task in connects {
        let (took, stream) = task.await.expect("connect task");
        streams.push(stream.expect("connect"));
        slowest = slowest.max(took);
    }
    let burst = started.elapsed();
    eprintln!("{STORM} connects in {burst:?}, slowest {slowest:?}");
    assert!(
        slowest < SLOWEST_ALLOWED,
        "slowest connect took {slowest:?} (burst {burst:?}): the accept queue overflowed"
    );

    let closes: Vec<_> = streams
        .into_iter()
        .map(|mut stream| {
            tokio::spawn(async move {
                let mut buf = [0u8; 256];
                loop {
                    match tokio::time::timeout(WAIT, stream.read(&mut buf)).await {
                        Ok(Ok(0) | Err(_)) => return true,
                        Ok(Ok(_)) => {}
                        Err(_) => return false,
                    }
                }
            })
        })
        .collect();
    let mut closed = 0;
    for task in closes {
        if task.await.expect("read task") {
            closed += 1;
        }
    }
    assert_eq!(
        closed, STORM,
        "every connection was accepted and closed at the auth deadline"
    );
}
