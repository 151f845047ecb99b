use std::net::SocketAddr;

use clap::Parser;
use progress_service::{Application, Config};
use testkit::http_get;

use crate::helpers::{Backend, spawn_app_with};

#[tokio::test]
async fn metrics_move_and_probes_answer() {
    let port = testkit::free_port().expect("port");
    let listen = format!("127.0.0.1:{port}");
    let app = spawn_app_with(Backend::Sqlite, &["--metrics-listen", &listen]).await;
    let admin: SocketAddr = listen.parse().expect("addr");

    assert_eq!(http_get(admin, "/healthz").await.expect("healthz").0, 200);
    assert_eq!(http_get(admin, "/readyz").await.expect("readyz").0, 200);

    app.update("metered", 1, "1").await;
    app.update("metered", 1, "1").await;
    let (status, body) = http_get(admin, "/metrics").await.expect("metrics");
    assert_eq!(status, 200);
    let applied = body
        .lines()
        .find(|l| l.starts_with("progress_updates_total{applied=\"true\"}"))
        .unwrap_or_else(|| panic!("applied counter missing from:\n{body}"));
    let value: f64 = applied
        .rsplit(' ')
        .next()
        .and_then(|v| v.parse().ok())
        .expect("number");
    assert!(value >= 1.0, "{applied}");
    assert!(
        body.contains("progress_updates_total{applied=\"false\"}"),
        "{body}"
    );
}

#[tokio::test]
async fn readyz_turns_unhealthy_when_postgres_is_down() {
    let pg = testkit::PrivatePostgres::start()
        .await
        .expect("private Postgres");
    let url = pg.fresh_database().await.expect("database");
    let config = Config::try_parse_from([
        "progress-service",
        "--listen",
        "127.0.0.1:0",
        "--metrics-listen",
        "127.0.0.1:0",
        "--database-url",
        &url,
    ])
    .expect("config");
    let app = Application::build(config).await.expect("builds");
    let admin = app.admin_addr().expect("admin port");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until(async {
        let _ = stopped.await;
    }));

    assert_eq!(http_get(admin, "/readyz").await.expect("readyz").0, 200);
    pg.stop_server().expect("stop Postgres");
    let (status, body) = http_get(admin, "/readyz").await.expect("readyz");
    assert_eq!(status, 503, "{body}");
    assert_eq!(
        http_get(admin, "/healthz").await.expect("healthz").0,
        200,
        "still alive"
    );
    pg.start_server().await.expect("start Postgres");
    testkit::wait_until(
        std::time::Duration::from_secs(30),
        "ready again",
        || async { matches!(http_get(admin, "/readyz").await, Ok((200, _))) },
    )
    .await
    .expect("ready after Postgres returns");

    let _ = stop.send(());
    server.await.expect("joined").expect("clean exit");
}
