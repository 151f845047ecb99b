//! `LISTEN_BACKLOG`: a reconnect storm is queued by the kernel, not dropped.
//! With Tokio's default backlog of 128, a burst overflows the accept queue
//! and the dropped handshakes wait about a second for a retransmit.

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use crate::helpers::{WAIT, spawn_app_with};

/// Both ends live in this process: 2 × 5,000 descriptors, well under the
/// 20,000 open-files limit.
const STORM: usize = 5_000;
/// Client threads, each opening its share of connections back to back with
/// blocking `connect`s, timed one by one. A `connect` returns as soon as the
/// kernel has queued the connection (it never waits for the gateway's
/// `accept`), so the clients outrun the gateway and the accept queue grows to
/// a few thousand here (measured with `ss -lnt`); an overflow costs a SYN
/// retransmit, about 1 s. Threads rather than 5,000 tasks: a task's timing
/// would include its wait for the test runtime's workers, which serve the
/// gateway too. Only two, on this 2-core machine: more client threads than
/// the gateway's 2 workers starve its accept loop of CPU, a contest a real
/// gateway (clients on other hosts) never has. With `--listen-backlog 128`
/// this test fails (slowest ≈ 1–2 s).
const THREADS: usize = 2;
const SLOWEST_ALLOWED: Duration = Duration::from_millis(200);

struct Storm {
    slowest: Duration,
    /// Connects that took `SLOWEST_ALLOWED` or longer.
    slow: usize,
    took: Duration,
    closed: usize,
    failed: Vec<String>,
}

/// Opens `STORM` connections from `THREADS` threads released together, then
/// reads each until the gateway closes it (EOF, or a reset).
fn storm(addr: SocketAddr) -> Storm {
    let start = Barrier::new(THREADS);
    let connected = Barrier::new(THREADS);
    let per_thread = STORM / THREADS;
    assert_eq!(per_thread * THREADS, STORM);
    let began = Instant::now();
    let results: Vec<_> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..THREADS)
            .map(|_| {
                let (start, connected) = (&start, &connected);
                std::thread::Builder::new()
                    .stack_size(256 * 1024)
                    .spawn_scoped(scope, move || {
                        let mut streams = Vec::with_capacity(per_thread);
                        let mut slowest = Duration::ZERO;
                        let mut slow = 0;
                        let mut failed = Vec::new();
                        start.wait();
                        for _ in 0..per_thread {
                            let t = Instant::now();
                            match TcpStream::connect(addr) {
                                Ok(stream) => streams.push(stream),
                                Err(err) => failed.push(format!("connect: {err}")),
                            }
                            let took = t.elapsed();
                            slowest = slowest.max(took);
                            if took >= SLOWEST_ALLOWED {
                                slow += 1;
                            }
                        }
                        connected.wait();
                        let mut closed = 0;
                        for mut stream in streams {
                            stream.set_read_timeout(Some(WAIT)).expect("read timeout");
                            let mut buf = [0u8; 256];
                            loop {
                                match stream.read(&mut buf) {
                                    Ok(0) => {
                                        closed += 1;
                                        break;
                                    }
                                    Ok(_) => {}
                                    Err(err)
                                        if err.kind() == std::io::ErrorKind::ConnectionReset =>
                                    {
                                        closed += 1;
                                        break;
                                    }
                                    Err(err) => {
                                        failed.push(format!("read: {err}"));
                                        break;
                                    }
                                }
                            }
                        }
                        (slowest, slow, closed, failed)
                    })
                    .expect("spawn client thread")
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("client thread"))
            .collect()
    });
    let took = began.elapsed();
    let mut out = Storm {
        slowest: Duration::ZERO,
        slow: 0,
        took,
        closed: 0,
        failed: Vec::new(),
    };
    for (slowest, slow, closed, failed) in results {
        out.slowest = out.slowest.max(slowest);
        out.slow += slow;
        out.closed += closed;
        out.failed.extend(failed);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_back_to_back_connects_are_all_accepted_promptly() {
    // The auth deadline is how each client sees it was accepted: only a
    // connection the gateway took from the queue gets closed at it.
    let app = spawn_app_with(&["--auth-timeout", "1s"]).await;
    let addr = app.addr;
    let result = tokio::task::spawn_blocking(move || storm(addr))
        .await
        .expect("storm");
    eprintln!(
        "{STORM} connects: slowest {:?}; all closed after {:?}",
        result.slowest, result.took
    );
    assert!(
        result.failed.is_empty(),
        "{:?}",
        &result.failed[..result.failed.len().min(5)]
    );
    assert!(
        result.slowest < SLOWEST_ALLOWED,
        "slowest connect took {:?} ({} of {STORM} took {SLOWEST_ALLOWED:?} or more): \
         the accept queue overflowed",
        result.slowest,
        result.slow
    );
    assert_eq!(
        result.closed, STORM,
        "every connection was accepted and closed at the auth deadline"
    );
}
