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
