//! A private `redis-server` on a free port, in its own directory.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpStream;

use crate::{free_port, wait_until};

/// How a private Redis persists writes (its append-only file).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Persistence {
    /// No AOF: a restart starts empty.
    None,
    /// `appendfsync everysec`: a crash may lose about the last second.
    EverySec,
    /// `appendfsync always`: every write is fsynced before its reply.
    Always,
}

pub struct PrivateRedis {
    dir: tempfile::TempDir,
    port: u16,
    persistence: Persistence,
    child: Option<Child>,
}

impl PrivateRedis {
    /// Starts a server; with `aof` it persists every write (`appendfsync everysec`).
    pub async fn start(aof: bool) -> anyhow::Result<Self> {
        Self::start_with(if aof {
            Persistence::EverySec
        } else {
            Persistence::None
        })
        .await
    }

    pub async fn start_with(persistence: Persistence) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("mangahub-redis")
            .tempdir()?;
        let mut redis = Self {
            dir,
            port: free_port()?,
            persistence,
            child: None,
        };
        redis.restart().await?;
        Ok(redis)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The running server's process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts the server again on the same port and directory (AOF is replayed).
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .args(match self.persistence {
                Persistence::None => ["--appendonly", "no"],
                Persistence::EverySec | Persistence::Always => ["--appendonly", "yes"],
            })
            .args(match self.persistence {
                Persistence::Always => ["--appendfsync", "always"],
                Persistence::None | Persistence::EverySec => ["--appendfsync", "everysec"],
            })
            .args(["--maxclients", "10000"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting redis-server")?;
        self.child = Some(child);
        let addr = format!("127.0.0.1:{}", self.port);
        wait_until(Duration::from_secs(10), "private Redis to listen", || {
            let addr = addr.clone();
            async move { TcpStream::connect(addr).await.is_ok() }
        })
        .await
    }

    /// SIGKILL: what the server did not persist is gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
    }
}
