//! Child processes of the smoke test: services with their output in a log file
//! (shown when the test fails), killed on drop; and one-shot CLI runs.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

pub struct Service {
    name: &'static str,
    child: Child,
    log: tempfile::NamedTempFile,
}

impl Service {
    /// Starts `binary` with exactly `env` (nothing inherited, as in a container).
    pub fn start(name: &'static str, binary: &Path, env: &BTreeMap<String, String>) -> Self {
        let log = tempfile::NamedTempFile::new().expect("log file");
        let child = Command::new(binary)
            .env_clear()
            .envs(env)
            .stdin(Stdio::null())
            .stdout(log.reopen().expect("log"))
            .stderr(log.reopen().expect("log"))
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        Self { name, child, log }
    }

    pub fn terminate(&self) {
        let pid = self.child.id().expect("still running");
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("running kill");
        assert!(status.success(), "kill -TERM {pid} ({})", self.name);
    }

    /// SIGKILL: no shutdown path runs, as in a crash or an OOM kill.
    pub async fn kill(&mut self, timeout: Duration) {
        self.child
            .start_kill()
            .unwrap_or_else(|e| panic!("kill -9 {}: {e}", self.name));
        self.wait(timeout).await;
    }

    pub fn has_exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// Polls `ready` until it holds; fails at once if the service exits.
    pub async fn wait_ready<F, Fut>(&mut self, timeout: Duration, mut ready: F)
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = bool>,
    {
        let deadline = tokio::time::Instant::now() + timeout;
        while !ready().await {
            assert!(!self.has_exited(), "{} exited during startup", self.name);
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} not ready within {timeout:?}",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn wait(&mut self, timeout: Duration) -> ExitStatus {
        match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(status) => status.expect("waiting for a child"),
            Err(_) => panic!("{} did not exit within {timeout:?}", self.name),
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        if std::thread::panicking() {
            let text = std::fs::read_to_string(self.log.path()).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(40).collect();
            eprintln!("--- last lines of {} ---", self.name);
            for line in tail.into_iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

/// A `mangahub` run in the background whose stdout lines are collected.
pub struct Background {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    reader: tokio::task::JoinHandle<()>,
}

impl Background {
    pub fn start(binary: &Path, args: &[&str], env: &BTreeMap<String, String>) -> Self {
        let mut child = Command::new(binary)
            .args(args)
            .env_clear()
            .envs(env)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("starting mangahub");
        let stdout = child.stdout.take().expect("piped stdout");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        let reader = tokio::spawn(async move {
            let mut stdout = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = stdout.next_line().await {
                sink.lock().expect("lines").push(line);
            }
        });
        Self {
            child,
            lines,
            reader,
        }
    }

    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().expect("lines").clone()
    }

    /// Waits for the exit and returns the status and every line printed.
    pub async fn finish(mut self, timeout: Duration) -> (ExitStatus, Vec<String>) {
        let status = match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(status) => status.expect("waiting for mangahub"),
            Err(_) => panic!(
                "mangahub did not exit within {timeout:?}; it printed {:?}",
                self.lines()
            ),
        };
        (&mut self.reader).await.expect("reader task");
        (status, self.lines())
    }
}

/// Runs `mangahub args…` to completion; returns its stdout, panicking on failure.
pub async fn run(binary: &Path, args: &[&str], env: &BTreeMap<String, String>) -> String {
    let out = Command::new(binary)
        .args(args)
        .env_clear()
        .envs(env)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), out)
        .await
        .unwrap_or_else(|_| panic!("`mangahub {}` hung", args.join(" ")))
        .expect("running mangahub");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "`mangahub {}` failed ({}):\nstdout: {stdout}\nstderr: {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Whether `mangahub args…` exits 0 (for probes).
pub async fn succeeds(binary: &Path, args: &[String], env: &BTreeMap<String, String>) -> bool {
    let status = Command::new(binary)
        .args(args)
        .env_clear()
        .envs(env)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .status();
    matches!(
        tokio::time::timeout(Duration::from_secs(30), status).await,
        Ok(Ok(s)) if s.success()
    )
}
