use std::process::Stdio;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::helpers::{WAIT, output, start_dev, stdout};

#[tokio::test]
async fn client_commands_print_the_documented_output() {
    let dev = start_dev().await;
    let run = |args: &'static [&'static str]| {
        let mut cmd = dev.client(args);
        async move { output(&mut cmd).await }
    };

    let saved = run(&[
        "update",
        "--manga",
        "7",
        "--chapter",
        "12.50",
        "--page",
        "3",
    ])
    .await;
    assert!(saved.status.success());
    let text = stdout(&saved);
    assert!(
        text.starts_with("saved: manga 7: chapter 12.5, page 3, reading (v1, "),
        "{text}"
    );

    let behind = run(&["update", "--manga", "7", "--chapter", "1"]).await;
    assert!(
        stdout(&behind).starts_with(
            "not applied (stored progress is ahead or unchanged): manga 7: chapter 12.5"
        )
    );

    let got = run(&["--json", "get", "--manga", "7"]).await;
    let got: Value = serde_json::from_str(stdout(&got).trim()).expect("JSON");
    assert_eq!(got["type"], "progress");
    assert_eq!(got["data"]["chapter"], serde_json::json!(12.5));
    assert_eq!(got["data"]["version"], 1);

    let listed = run(&["list"]).await;
    assert!(
        stdout(&listed).starts_with("manga 7: chapter 12.5, page 3, reading"),
        "{}",
        stdout(&listed)
    );

    let deleted = stdout(&run(&["delete", "--manga", "7"]).await);
    assert!(
        deleted.starts_with("deleted: manga 7 [cursor "),
        "the delete's cursor is shown: {deleted}"
    );
    let missing = run(&["get", "--manga", "7"]).await;
    assert!(!missing.status.success(), "a NOT_FOUND exits non-zero");
    assert!(
        stdout(&missing).starts_with("error NOT_FOUND:"),
        "{}",
        stdout(&missing)
    );

    let bad = run(&["update", "--manga", "7", "--chapter", "1e3"]).await;
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--chapter must be a decimal number"));
    assert!(dev.interrupt().await.success());
}

#[tokio::test]
async fn client_with_several_gateway_addresses_uses_the_first_that_accepts() {
    let dev = start_dev().await;
    // A port nobody listens on, then the real gateway.
    let dead = format!("127.0.0.1:{}", testkit::free_port().expect("a free port"));
    let addrs = format!("{dead},{}", dev.gateway);
    let mut cmd = crate::helpers::mangahub();
    cmd.args(["client", "--addr", &addrs, "--token", &dev.token])
        .args(["update", "--manga", "9", "--chapter", "2"]);
    let saved = output(&mut cmd).await;
    assert!(saved.status.success(), "{saved:?}");
    assert!(stdout(&saved).starts_with("saved: manga 9: chapter 2,"));

    // None reachable: a clear error naming each address.
    let mut cmd = crate::helpers::mangahub();
    cmd.args(["client", "--addr", &dead, "--token", &dev.token, "list"]);
    let failed = output(&mut cmd).await;
    assert!(!failed.status.success());
    let err = String::from_utf8_lossy(&failed.stderr);
    assert!(err.contains(&dead), "{err}");
}

#[tokio::test]
async fn client_over_websocket_updates_and_hears_a_tcp_device() {
    let dev = start_dev().await;
    let ws = dev.websocket_host().to_owned();
    let over_ws = |args: &[&str]| {
        let mut cmd = crate::helpers::mangahub();
        cmd.args(["client", "--ws", "--addr", &ws, "--token", &dev.token])
            .args(args);
        cmd
    };

    // A WebSocket device watching: its `subscribed` reply shows it authenticated.
    let mut watcher = over_ws(&["--json", "watch", "--manga", "42", "--count", "2"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("watcher starts");
    let mut lines = BufReader::new(watcher.stdout.take().expect("stdout")).lines();
    let mut next = async || -> Value {
        let line = tokio::time::timeout(WAIT, lines.next_line())
            .await
            .expect("the watcher prints in time")
            .expect("read")
            .expect("a line");
        serde_json::from_str(&line).expect("JSON line")
    };
    let subscribed = next().await;
    assert_eq!(subscribed["type"], "subscribed", "{subscribed}");

    // An update from another WebSocket device (given as a ws:// URL this time).
    let mut update = crate::helpers::mangahub();
    update
        .args(["client", "--addr", &dev.websocket, "--token", &dev.token])
        .args(["update", "--manga", "42", "--chapter", "3"]);
    let saved = output(&mut update).await;
    assert!(saved.status.success(), "{saved:?}");
    assert!(
        stdout(&saved).starts_with("saved: manga 42: chapter 3,"),
        "{}",
        stdout(&saved)
    );
    let event = next().await;
    assert_eq!(event["type"], "progress_broadcast", "{event}");
    assert_eq!(event["data"]["chapter"], 3);

    // And one from a TCP device of the same user.
    let saved = output(&mut dev.client(&["update", "--manga", "42", "--chapter", "4"])).await;
    assert!(saved.status.success(), "{saved:?}");
    let event = next().await;
    assert_eq!(event["type"], "progress_broadcast", "{event}");
    assert_eq!(event["channel"], "user");
    assert_eq!(event["data"]["chapter"], 4);
    assert_eq!(event["data"]["user_id"], "demo");
    assert!(watcher.wait().await.expect("watcher exits").success());
    assert!(dev.interrupt().await.success());
}
