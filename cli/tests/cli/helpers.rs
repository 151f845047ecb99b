//! Runs `mangahub dev` as a child process and `mangahub …` commands against it.

use std::process::{Output, Stdio};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

pub const SECRET: &str = "cli-test-secret";
pub const WAIT: Duration = Duration::from_secs(60);

pub fn mangahub() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mangahub"));
    cmd.env_remove("JWT_SECRET")
        .env_remove("MANGAHUB_TOKEN")
        .env_remove("MANGAHUB_ADDR")
        .env_remove("MANGAHUB_CA_CERT")
        .kill_on_drop(true);
    cmd
}

pub struct Dev {
    pub child: Child,
    pub gateway: String,
    /// The WebSocket URL (`ws://host:port/ws`).
    pub websocket: String,
    pub token: String,
    /// Its banner, every line as printed.
    pub banner: Vec<String>,
    _dir: tempfile::TempDir,
}

/// `mangahub dev --free-ports` with a known secret, once it printed its
/// banner (whose last line is the command over WebSocket).
pub async fn start_dev() -> Dev {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut child = mangahub()
        .args(["dev", "--free-ports", "--jwt-secret", SECRET, "--data-dir"])
        .arg(dir.path().join("data"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("mangahub dev starts");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let read = async {
        let mut banner = Vec::new();
        while let Some(line) = lines.next_line().await.expect("read stdout") {
            let last = line.contains(" client --addr ws://");
            banner.push(line);
            if last {
                return banner;
            }
        }
        panic!("dev exited before printing its banner: {banner:?}");
    };
    let banner = tokio::time::timeout(WAIT, read)
        .await
        .expect("dev prints where to connect");
    let field = |prefix: &str| {
        banner
            .iter()
            .find_map(|line| line.trim().strip_prefix(prefix))
            .map(|v| v.trim().to_owned())
            .unwrap_or_else(|| panic!("no {prefix} in the banner: {banner:?}"))
    };
    let (gateway, websocket, token) =
        (field("gateway:"), field("websocket:"), field("demo token:"));
    // Keep reading, as a terminal would.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Dev {
        child,
        gateway,
        websocket,
        token,
        banner,
        _dir: dir,
    }
}

impl Dev {
    /// `mangahub client --addr … --token … ARGS`.
    pub fn client(&self, args: &[&str]) -> Command {
        let mut cmd = mangahub();
        cmd.args(["client", "--addr", &self.gateway, "--token", &self.token])
            .args(args);
        cmd
    }

    /// The WebSocket port's `host:port`.
    pub fn websocket_host(&self) -> &str {
        self.websocket
            .strip_prefix("ws://")
            .and_then(|rest| rest.strip_suffix("/ws"))
            .unwrap_or_else(|| panic!("not a ws://host:port/ws URL: {}", self.websocket))
    }

    /// Ctrl-C, then the exit status.
    pub async fn interrupt(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().expect("running").to_string();
        let sent = Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .await
            .expect("kill runs");
        assert!(sent.success());
        tokio::time::timeout(WAIT, self.child.wait())
            .await
            .expect("dev stops after Ctrl-C")
            .expect("exit status")
    }
}

pub async fn output(cmd: &mut Command) -> Output {
    tokio::time::timeout(WAIT, cmd.stdin(Stdio::null()).output())
        .await
        .expect("command finishes")
        .expect("command runs")
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}
