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
        .kill_on_drop(true);
    cmd
}

pub struct Dev {
    pub child: Child,
    pub gateway: String,
    pub token: String,
    _dir: tempfile::TempDir,
}

/// `mangahub dev --free-ports` with a known secret, once it printed its token.
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
        let (mut gateway, mut token) = (None, None);
        while let Some(line) = lines.next_line().await.expect("read stdout") {
            let field = |prefix: &str| {
                line.trim()
                    .strip_prefix(prefix)
                    .map(|v| v.trim().to_owned())
            };
            gateway = gateway.or(field("gateway:"));
            token = token.or(field("demo token:"));
            if let (Some(gateway), Some(token)) = (&gateway, &token) {
                return (gateway.clone(), token.clone());
            }
        }
        panic!("dev exited before printing where to connect");
    };
    let (gateway, token) = tokio::time::timeout(WAIT, read)
        .await
        .expect("dev prints where to connect");
    // Keep reading, as a terminal would.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Dev {
        child,
        gateway,
        token,
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
