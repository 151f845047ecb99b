//! The admin port: counters move under traffic, and readiness follows the
//! event stream to the progress service.

use std::time::Duration;

use testkit::{http_get, wait_until};

use crate::helpers::{Progress, WAIT, spawn_app};

fn metric(body: &str, name: &str) -> f64 {
    body.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_and_readyz_follows_the_progress_service() {
    let mut app = spawn_app().await;
    assert_eq!(
        http_get(app.admin, "/healthz").await.expect("healthz").0,
        200
    );
    assert_eq!(http_get(app.admin, "/readyz").await.expect("readyz").0, 200);

    let before = http_get(app.admin, "/metrics").await.expect("metrics").1;
    let mut reader = app.authed("metered").await;
    reader.update(1, 1.0).await;
    reader.update(1, 2.0).await;
    let (status, after) = http_get(app.admin, "/metrics").await.expect("metrics");
    assert_eq!(status, 200);
    for name in [
        "gateway_messages_in_total",
        "gateway_grpc_request_duration_seconds_count",
    ] {
        assert!(
            metric(&after, name) >= metric(&before, name) + 2.0,
            "{name} did not move:\n{after}"
        );
    }
    // Latencies are Prometheus histograms, so replicas can be aggregated.
    assert!(
        after.contains("# TYPE gateway_grpc_request_duration_seconds histogram")
            && after.contains("gateway_grpc_request_duration_seconds_bucket{"),
        "{after}"
    );

    let progress = app.progress.take().expect("progress service");
    let addr = progress.addr;
    progress.stop().await;
    wait_until(WAIT, "readyz to report the stream down", || async {
        matches!(http_get(app.admin, "/readyz").await, Ok((503, _)))
    })
    .await
    .expect("unready while the progress service is down");
    assert_eq!(
        http_get(app.admin, "/healthz").await.expect("healthz").0,
        200,
        "still alive"
    );

    app.progress = Some(Progress::start(addr, &app.db).await);
    wait_until(
        WAIT + Duration::from_secs(5),
        "readyz to recover",
        || async { matches!(http_get(app.admin, "/readyz").await, Ok((200, _))) },
    )
    .await
    .expect("ready again");
}
