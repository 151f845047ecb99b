//! The gateway's live page in a real browser: Debian's Chromium, driven by
//! playwright-core (`browser-tests/live_page.mjs`, one command per line),
//! opens `GET /` of the gateway's WebSocket port. The progress service
//! (embedded SQLite) and the gateway run in this process; a TCP device of the
//! same user and the page must see each other's changes live.
//!
//! Needs Chromium (`apt-get install chromium`) and the pinned playwright-core
//! (`npm ci --prefix browser-tests`); without them this test fails, it does
//! not skip. `MANGAHUB_SCREENSHOT=docs/live-page.png` keeps the screenshot
//! (a path relative to the repository root); otherwise it goes to a temp dir.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use testkit::LineClient;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::task::JoinHandle;

use crate::compose::repo_root;
use crate::in_process::{Gateway, progress_service};

const SECRET: &str = "live-page-test-secret";
/// Chromium's first start on a loaded 2-core machine.
const STARTUP: Duration = Duration::from_secs(90);
/// One browser command (the live ones bound themselves to 1 s).
const STEP: Duration = Duration::from_secs(30);

fn chromium() -> PathBuf {
    std::env::var_os("CHROMIUM_PATH").map_or_else(|| "/usr/bin/chromium".into(), PathBuf::from)
}

/// The driver script; panics (never skips) with how to install what is missing.
fn prerequisites() -> PathBuf {
    let root = repo_root();
    let chromium = chromium();
    assert!(
        chromium.exists(),
        "no Chromium at {}: install it with `apt-get install -y --no-install-recommends chromium` \
         (or point CHROMIUM_PATH at one)",
        chromium.display()
    );
    let installed = root.join("browser-tests/node_modules/playwright-core/package.json");
    if !installed.exists() {
        // The pinned driver from the lock file; never a browser download.
        let status = std::process::Command::new("npm")
            .args(["ci", "--prefix", "browser-tests", "--no-audit", "--no-fund"])
            .env("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
            .current_dir(&root)
            .status();
        assert!(
            status.is_ok_and(|s| s.success()) && installed.exists(),
            "playwright-core is not installed and `npm ci --prefix browser-tests` failed \
             (it needs Node.js 20+ and the npm registry)"
        );
    }
    root.join("browser-tests/live_page.mjs")
}

fn screenshot_path(tmp: &Path) -> PathBuf {
    match std::env::var_os("MANGAHUB_SCREENSHOT") {
        Some(path) => repo_root().join(path),
        None => tmp.join("live-page.png"),
    }
}

/// `node live_page.mjs URL SCREENSHOT`: commands on its stdin, one answer
/// line each on its stdout; its stderr (and the page's console) is kept for
/// the failure message.
struct Browser {
    child: Child,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
    stderr: Arc<Mutex<String>>,
    stderr_reader: JoinHandle<()>,
}

impl Browser {
    fn start(script: &Path, url: &str, screenshot: &Path) -> Browser {
        let mut child = Command::new("node")
            .arg(script)
            .arg(url)
            .arg(screenshot)
            .env("CHROMIUM_PATH", chromium())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("running node ({e}): install it with `apt-get install nodejs npm`")
            });
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = stderr.clone();
        let mut errors = BufReader::new(child.stderr.take().expect("piped stderr")).lines();
        let stderr_reader = tokio::spawn(async move {
            while let Ok(Some(line)) = errors.next_line().await {
                let mut text = sink.lock().expect("stderr");
                text.push_str(&line);
                text.push('\n');
            }
        });
        Browser {
            child,
            stdin,
            stdout,
            stderr,
            stderr_reader,
        }
    }

    fn stderr(&self) -> String {
        self.stderr.lock().expect("stderr").clone()
    }

    async fn send(&mut self, command: &str) {
        let line = format!("{command}\n");
        if let Err(e) = self.stdin.write_all(line.as_bytes()).await {
            panic!("live_page.mjs stopped reading ({e}):\n{}", self.stderr());
        }
    }

    /// The next answer, which must start with `word`.
    async fn answer(&mut self, word: &str, wait: Duration) -> String {
        let line = match tokio::time::timeout(wait, self.stdout.next_line()).await {
            Ok(Ok(Some(line))) => line,
            Ok(_) => {
                let status = match tokio::time::timeout(STEP, self.child.wait()).await {
                    Ok(Ok(status)) => status.to_string(),
                    Ok(Err(e)) => e.to_string(),
                    Err(_) => "its stdout closed".to_owned(),
                };
                // Its last words, up to the end of its stderr.
                let _ = tokio::time::timeout(STEP, &mut self.stderr_reader).await;
                panic!(
                    "live_page.mjs ended ({status}) while {word} was expected:\n{}",
                    self.stderr()
                );
            }
            Err(_) => panic!(
                "no {word} from live_page.mjs within {wait:?}:\n{}",
                self.stderr()
            ),
        };
        match line.strip_prefix(word) {
            Some(rest) => rest.trim().to_owned(),
            None => panic!(
                "expected {word}, live_page.mjs said {line:?}:\n{}",
                self.stderr()
            ),
        }
    }

    async fn command(&mut self, command: &str, answer: &str) -> String {
        self.send(command).await;
        self.answer(answer, STEP).await
    }

    async fn rows(&mut self) -> Vec<Value> {
        let rows = self.command("ROWS", "ROWS").await;
        serde_json::from_str(&rows).unwrap_or_else(|e| panic!("ROWS is not JSON ({e}): {rows}"))
    }

    async fn quit(mut self) {
        self.send("QUIT").await;
        let status = tokio::time::timeout(STEP, self.child.wait())
            .await
            .expect("live_page.mjs exits after QUIT")
            .expect("exit status");
        assert!(
            status.success(),
            "live_page.mjs: {status}\n{}",
            self.stderr()
        );
    }
}

async fn authenticate(client: &mut LineClient, token: &str, device: &str) {
    let reply = client
        .request(json!({"type": "auth", "data": {"token": token, "device": device}}))
        .await;
    assert_eq!(reply["success"], true, "{reply}");
}

fn row(rows: &[Value], manga: i64) -> &Value {
    rows.iter()
        .find(|r| r["manga_id"] == manga)
        .unwrap_or_else(|| panic!("no row for manga {manga}: {rows:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_page_in_chromium_syncs_with_a_tcp_device() {
    let script = prerequisites();
    let tmp = tempfile::tempdir().expect("temp dir");
    let progress = progress_service(tmp.path()).await;
    let any_port = SocketAddr::from(([127, 0, 0, 1], 0));
    let gateway = Gateway::start(progress.local_addr(), SECRET, any_port, &[]).await;

    let token = gateway::auth::mint_hs256(
        SECRET.as_bytes(),
        "alice",
        Some("alice"),
        Duration::from_secs(3600),
    )
    .expect("token");
    let mut phone = LineClient::connect(gateway.tcp).await;
    authenticate(&mut phone, &token, "phone").await;
    // Strictly reply after reply: connected after the gateway reported ready,
    // the phone has missed nothing and must get no RESYNC.
    for data in [
        json!({"manga_id": 7, "chapter": 12.25, "page": 4}),
        json!({"manga_id": 42, "chapter": 76.5}),
        json!({"manga_id": 108, "chapter": 3}),
        json!({"manga_id": 1001, "chapter": 0, "status": "plan_to_read"}),
    ] {
        let ack = phone
            .request(json!({"type": "progress_update", "data": data}))
            .await;
        assert_eq!(
            (&ack["type"], &ack["applied"]),
            (&json!("progress_ack"), &json!(true)),
            "{ack}"
        );
    }

    let shot = screenshot_path(tmp.path());
    let url = format!("http://{}/#token={token}", gateway.ws);
    let mut page = Browser::start(&script, &url, &shot);
    page.answer("READY", STARTUP).await;

    // The list as the page rendered it, read through the DOM.
    let rows = page.rows().await;
    assert_eq!(rows.len(), 4, "{rows:?}");
    let seven = row(&rows, 7);
    assert_eq!(
        (
            &seven["chapter"],
            &seven["page"],
            &seven["status"],
            &seven["device"]
        ),
        (
            &json!("12.25"),
            &json!("4"),
            &json!("reading"),
            &json!("phone")
        ),
        "{rows:?}"
    );
    assert_eq!(row(&rows, 1001)["status"], "plan_to_read", "{rows:?}");

    // The page's form → the phone, as a user-channel broadcast.
    let sent = page.command("UPDATE 7 13 5 completed", "SENT").await;
    assert!(
        sent.contains("saved: manga 7, chapter 13, page 5"),
        "{sent}"
    );
    let event = phone.recv().await;
    assert_eq!(event["type"], "progress_broadcast", "{event}");
    assert_eq!(event["channel"], "user", "{event}");
    let record = &event["data"];
    assert_eq!(
        (&record["manga_id"], &record["chapter"], &record["page"]),
        (&json!(7), &json!(13), &json!(5)),
        "{event}"
    );
    assert_eq!(record["status"], "completed", "{event}");
    assert_eq!(record["device"], "web", "{event}");

    // The phone deletes → the row goes within 1 s.
    let deleted = phone
        .request(json!({"type": "delete_progress", "data": {"manga_id": 108}}))
        .await;
    assert_eq!(deleted["type"], "progress_deleted", "{deleted}");
    assert_eq!(deleted["data"]["manga_id"], 108, "{deleted}");
    page.command("GONE 108", "GONE").await;
    // Manga 7's highlight over, so that the picture shows one.
    page.command("CALM", "CALM").await;

    // The phone moves on → the page shows it, highlighted, within 1 s of the
    // update (the driver's clock starts when it reads EXPECT, sent right after).
    let sent_at = Instant::now();
    phone
        .send(
            json!({"type": "progress_update", "data": {"manga_id": 42, "chapter": 77, "page": 3}}),
        )
        .await;
    page.send("EXPECT 42 77").await;
    let seen = page.answer("SEEN", STEP).await;
    let end_to_end = sent_at.elapsed();
    let ms: u64 = seen.parse().expect("SEEN <ms>");
    assert!(ms <= 1000, "the page took {ms} ms");
    let ack = phone.recv().await;
    assert_eq!(ack["type"], "progress_ack", "{ack}");
    assert_eq!(ack["applied"], true, "{ack}");
    eprintln!("live page: phone update shown after {ms} ms ({end_to_end:?} end to end)");

    // While manga 42 is still highlighted.
    let saved = page.command("SCREENSHOT", "SAVED").await;
    let png = std::fs::read(&shot).unwrap_or_else(|e| panic!("{saved}: {e}"));
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n"),
        "{} is no PNG",
        shot.display()
    );

    // A gateway restart: the page shows the SHUTDOWN, reconnects by itself
    // and re-reads the list.
    let (progress_addr, ws) = (progress.local_addr(), gateway.ws);
    gateway.stop().await;
    let state = page.command("STATE disconnected", "STATE").await;
    assert!(state.contains("shut down"), "{state}");
    let gateway = Gateway::start(progress_addr, SECRET, ws, &[]).await;
    page.command("STATE connected", "STATE").await;
    let rows = page.rows().await;
    assert_eq!(rows.len(), 3, "{rows:?}");
    assert_eq!(row(&rows, 42)["chapter"], "77", "{rows:?}");
    assert_eq!(row(&rows, 7)["status"], "completed", "{rows:?}");

    page.quit().await;
    gateway.stop().await;
    progress.stop().await.expect("the progress service stops");
}
