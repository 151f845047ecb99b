use std::process::Stdio;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::helpers::{WAIT, output, start_dev, stdout};

#[tokio::test]
async fn dev_runs_the_system_and_an_update_reaches_a_watcher() {
    let dev = start_dev().await;
    let mut watcher = dev
        .client(&["--json", "watch", "--count", "1"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("watcher starts");
    let mut lines = BufReader::new(watcher.stdout.take().expect("stdout")).lines();

    // The watcher is the demo user's other device: once it prints its
    // "watching" line… in --json mode it prints nothing before events, so
    // update until the event shows up.
    let event = tokio::time::timeout(WAIT, async {
        let mut chapter = 1;
        loop {
            let update = output(&mut dev.client(&[
                "--json",
                "update",
                "--manga",
                "42",
                "--chapter",
                &chapter.to_string(),
            ]))
            .await;
            assert!(update.status.success(), "{update:?}");
            tokio::select! {
                line = lines.next_line() => break line.expect("read").expect("an event line"),
                () = tokio::time::sleep(std::time::Duration::from_millis(200)) => chapter += 1,
            }
        }
    })
    .await
    .expect("the watcher receives the update");
    let event: Value = serde_json::from_str(&event).expect("JSON line");
    assert_eq!(event["type"], "progress_broadcast", "{event}");
    assert_eq!(event["channel"], "user");
    assert_eq!(event["data"]["manga_id"], 42);
    assert_eq!(event["data"]["user_id"], "demo");
    assert!(watcher.wait().await.expect("watcher exits").success());

    let listed = output(&mut dev.client(&["--json", "list"])).await;
    let listed: Value = serde_json::from_str(stdout(&listed).trim()).expect("JSON");
    assert_eq!(listed["data"]["items"][0]["manga_id"], 42);

    let status = dev.interrupt().await;
    assert!(status.success(), "Ctrl-C stops dev cleanly: {status:?}");
}

#[tokio::test]
async fn dev_prints_the_live_page_and_a_websocket_command_that_work() {
    let dev = start_dev().await;
    let host = dev.websocket_host();
    let link = format!("http://{host}/#token={}", dev.token);
    let page = dev
        .banner
        .iter()
        .find_map(|line| line.trim().strip_prefix("live page:"))
        .map(str::trim);
    assert_eq!(page, Some(link.as_str()), "{:#?}", dev.banner);
    let addr = host.parse().expect("host:port");
    let (status, body) = testkit::http_get(addr, "/").await.expect("GET /");
    assert_eq!(status, 200, "{body}");

    // The banner's last line, run as printed (after the program's name, up
    // to the comment), with the settings its `export` line sets.
    let command = dev.banner.last().expect("a banner");
    let (command, _comment) = command.split_once(" #").expect("a commented line");
    let args: Vec<&str> = command
        .split_whitespace()
        .skip_while(|word| *word != "client")
        .collect();
    let mut watcher = crate::helpers::mangahub()
        .args(&args)
        .env("MANGAHUB_ADDR", &dev.gateway)
        .env("MANGAHUB_TOKEN", &dev.token)
        .stdout(Stdio::piped())
        .spawn()
        .expect("the printed command starts");
    let mut lines = BufReader::new(watcher.stdout.take().expect("stdout")).lines();
    let first = tokio::time::timeout(WAIT, lines.next_line())
        .await
        .expect("it prints in time")
        .expect("read");
    assert_eq!(
        first.as_deref(),
        Some("watching as demo (Ctrl-C to stop)"),
        "{command}"
    );
    watcher.kill().await.expect("stop the watcher");
    assert!(dev.interrupt().await.success());
}
