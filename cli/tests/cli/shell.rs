//! `mangahub client shell`, from a pipe (scripts) and on a terminal (line
//! editing), against `mangahub dev`.

use std::process::Stdio;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, ChildStdin};
use tokio::sync::watch;

use crate::helpers::{Dev, WAIT, output, start_dev, stdout};

#[tokio::test]
async fn piped_commands_run_in_order_and_quit_waits_for_the_replies() {
    let dev = start_dev().await;
    let mut shell = dev
        .client(&["shell"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("shell starts");
    let script = "update 5 10.5 2\nfly away\nget 5\nsub global\nping\nquit\n";
    let mut stdin = shell.stdin.take().expect("stdin");
    stdin.write_all(script.as_bytes()).await.expect("write");
    let out = tokio::time::timeout(WAIT, shell.wait_with_output())
        .await
        .expect("the shell quits")
        .expect("exit status");
    assert!(out.status.success(), "{out:?}");
    let mut lines: Vec<String> = stdout(&out).lines().map(str::to_owned).collect();
    // A mistake is explained at once, locally, and nothing is sent for it.
    let refused = lines
        .iter()
        .position(|l| l == "unknown command \"fly\"; type `help`")
        .unwrap_or_else(|| panic!("the mistake is explained: {lines:?}"));
    lines.remove(refused);
    // The replies come in the order the commands were typed.
    assert_eq!(lines[0], "connected as demo; type `help`");
    assert!(
        lines[1].starts_with("saved: manga 5: chapter 10.5, page 2, reading (v1, "),
        "{lines:?}"
    );
    assert!(
        lines[2].starts_with("manga 5: chapter 10.5, page 2"),
        "{lines:?}"
    );
    assert_eq!(lines[3..], ["subscribed global", "pong"]);
    assert!(dev.interrupt().await.success());
}

/// The shell on a pseudo-terminal (util-linux `script` provides one): keys
/// edit the line, ↑ recalls history, and another device's update prints while
/// the prompt is waiting.
#[tokio::test]
async fn on_a_terminal_lines_are_edited_and_events_print_at_the_prompt() {
    let dev = start_dev().await;
    let mut term = Terminal::start(&dev);
    term.expect("connected as demo").await;
    term.expect("mangahub> ").await;

    term.keys("update 42 76\r").await;
    term.expect("saved: manga 42: chapter 76, page 0").await;

    // Another device of the same reader: its update arrives unasked.
    let other = output(&mut dev.client(&["update", "--manga", "42", "--chapter", "80"])).await;
    assert!(other.status.success(), "{other:?}");
    term.expect("[user] demo manga 42: chapter 80").await;

    // ↑ recalls `update 42 76`; two backspaces and "90" make it `update 42 90`.
    term.keys("\x1b[A\x7f\x7f90\r").await;
    term.expect("saved: manga 42: chapter 90").await;
    // ← moves, Ctrl-A goes home and Ctrl-K clears the line before the retype.
    term.keys("get 4\x1b[D\x1b[D\x1b[D\x1b[D\x01\x0bget 42\r")
        .await;
    term.expect("manga 42: chapter 90").await;

    term.keys("quit\r").await;
    let status = tokio::time::timeout(WAIT, term.child.wait())
        .await
        .expect("the shell quits")
        .expect("exit status");
    assert!(status.success(), "{status:?}\n{}", term.screen());
    assert!(dev.interrupt().await.success());
}

/// `mangahub client shell` under `script`, with everything it printed so far.
struct Terminal {
    child: Child,
    stdin: ChildStdin,
    output: watch::Receiver<String>,
    /// How much of the output earlier expectations consumed.
    seen: usize,
}

impl Terminal {
    fn start(dev: &Dev) -> Self {
        let command = format!(
            "{} client --addr {} --token {} shell",
            env!("CARGO_BIN_EXE_mangahub"),
            dev.gateway,
            dev.token
        );
        let mut child = tokio::process::Command::new("script")
            .args(["--quiet", "--flush", "--return", "--command", &command])
            .arg("/dev/null")
            .env("TERM", "xterm")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("util-linux script runs");
        let stdin = child.stdin.take().expect("stdin");
        let mut stdout = child.stdout.take().expect("stdout");
        let (tx, output) = watch::channel(String::new());
        tokio::spawn(async move {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = stdout.read(&mut buf).await {
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                tx.send_modify(|all| all.push_str(&text));
            }
        });
        Terminal {
            child,
            stdin,
            output,
            seen: 0,
        }
    }

    async fn keys(&mut self, keys: &str) {
        self.stdin.write_all(keys.as_bytes()).await.expect("type");
        self.stdin.flush().await.expect("flush");
    }

    /// Waits until `text` appears after what earlier expectations matched.
    async fn expect(&mut self, text: &str) {
        let seen = self.seen;
        let found = tokio::time::timeout(
            WAIT,
            self.output
                .wait_for(|all| all.get(seen..).is_some_and(|rest| rest.contains(text))),
        )
        .await
        .is_ok_and(|changed| changed.is_ok());
        let all = self.screen();
        match found {
            true => {
                self.seen = seen + all[seen..].find(text).expect("found") + text.len();
            }
            false => panic!("{text:?} never appeared; the terminal showed:\n{all}"),
        }
    }

    fn screen(&self) -> String {
        self.output.borrow().clone()
    }
}
