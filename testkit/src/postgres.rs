//! Postgres for tests.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use sqlx::Connection;
use sqlx::postgres::{PgConnectOptions, PgConnection};
use tokio::sync::OnceCell;

use crate::{free_port, unique_name, wait_until};

/// Server used for fresh databases; `TEST_DATABASE_URL` overrides it.
const DEFAULT_ADMIN_URL: &str = "postgres://root@127.0.0.1:5432/postgres";

static FALLBACK: OnceCell<PrivatePostgres> = OnceCell::const_new();

/// Set once this process has swept the databases of finished test processes.
static SWEPT: OnceCell<()> = OnceCell::const_new();

/// What every fresh database's name starts with; the creating process's id,
/// the creation time (Unix seconds) and a random part follow.
const PREFIX: &str = "mangahub_test";

/// How long a finished process's database is kept before a sweep drops it.
const KEEP_FINISHED: Duration = Duration::from_secs(60 * 60);

/// Creates an empty database and returns its URL. Migrations are the app's job.
///
/// Tests do not drop their databases (a failed test's is worth a look); the
/// first call in each process drops those that are older than
/// `KEEP_FINISHED`, made by a process that has ended and without a session
/// open (`sweep_finished`), so a development server does not fill up with
/// them run after run.
pub async fn fresh_database() -> anyhow::Result<String> {
    let admin = admin_url().await?;
    SWEPT.get_or_init(|| sweep_finished(&admin)).await;
    let name = unique_name(&format!(
        "{PREFIX}_{}_{}",
        std::process::id(),
        unix_seconds()
    ));
    let mut conn = PgConnection::connect(&admin)
        .await
        .with_context(|| format!("connecting to test Postgres {admin}"))?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await?;
    let base = admin
        .rsplit_once('/')
        .map_or(admin.as_str(), |(base, _)| base);
    Ok(format!("{base}/{name}"))
}

/// Drops a database `fresh_database` made, cutting its remaining sessions: for
/// tools that run against a shared server and should leave nothing behind.
pub async fn drop_database(url: &str) -> anyhow::Result<()> {
    let name = url
        .rsplit_once('/')
        .map(|(_, name)| name)
        .filter(|name| {
            name.starts_with(&format!("{PREFIX}_"))
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        })
        .with_context(|| format!("{url} is not a database fresh_database made"))?;
    let admin = admin_url().await?;
    let mut conn = PgConnection::connect(&admin)
        .await
        .with_context(|| format!("connecting to test Postgres {admin}"))?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
    )))
    .execute(&mut conn)
    .await?;
    Ok(())
}

/// Drops the fresh databases on `admin`'s server that a process on this
/// machine made more than `KEEP_FINISHED` ago and that has ended. Only on a
/// server this machine reaches by loopback or a Unix socket: elsewhere the
/// process ids name other machines' processes. A database with a session
/// open is skipped (no `FORCE`): whoever holds it is not finished, e.g. a
/// process in another process-id namespace sharing this server. Names
/// without an id and a time (made before they were part of the name) are
/// left alone. Failures are reported and otherwise ignored: a sweep is
/// housekeeping, not part of any test.
async fn sweep_finished(admin: &str) {
    if !is_local(admin) || !Path::new("/proc/self").exists() {
        return;
    }
    if let Err(err) = drop_finished(admin, PREFIX, unix_seconds()).await {
        eprintln!("testkit: sweeping finished test databases on {admin}: {err:#}");
    }
}

/// The sweep of the databases named `<prefix>_<pid>_<time>_<random>`.
async fn drop_finished(admin: &str, prefix: &str, now: u64) -> anyhow::Result<()> {
    let mut conn = PgConnection::connect(admin).await?;
    let names: Vec<String> =
        sqlx::query_scalar("SELECT datname FROM pg_database WHERE starts_with(datname, $1)")
            .bind(format!("{prefix}_"))
            .fetch_all(&mut conn)
            .await?;
    for name in names {
        let Some((pid, created)) = creator(prefix, &name) else {
            continue;
        };
        if now.saturating_sub(created) < KEEP_FINISHED.as_secs()
            || Path::new(&format!("/proc/{pid}")).exists()
        {
            continue;
        }
        // Fails while a session is open, or when another process swept it first.
        let drop = format!("DROP DATABASE IF EXISTS {name}");
        if let Err(err) = sqlx::raw_sql(sqlx::AssertSqlSafe(drop))
            .execute(&mut conn)
            .await
        {
            eprintln!("testkit: not dropping {name}: {err}");
        }
    }
    Ok(())
}

/// The creating process's id and the creation time in a fresh database's
/// name (`<prefix>_<pid>_<unix seconds>_<16 hex digits>`).
fn creator(prefix: &str, name: &str) -> Option<(u32, u64)> {
    let mut parts = name.strip_prefix(prefix)?.strip_prefix('_')?.split('_');
    let (pid, created, random) = (parts.next()?, parts.next()?, parts.next()?);
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let hex = random.len() == 16 && random.bytes().all(|b| b.is_ascii_hexdigit());
    if parts.next().is_some() || !digits(pid) || !digits(created) || !hex {
        return None;
    }
    Some((pid.parse().ok()?, created.parse().ok()?))
}

/// Whether `url` reaches a server on this machine: loopback or a Unix socket
/// (the host sqlx would connect to, `?host=` included).
fn is_local(url: &str) -> bool {
    let Ok(options) = PgConnectOptions::from_str(url) else {
        return false;
    };
    let host = options.get_host();
    host.starts_with('/')
        || matches!(host, "localhost" | "::1" | "[::1]")
        || host
            .parse::<std::net::Ipv4Addr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn unix_seconds() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

/// The server fresh databases live on: `TEST_DATABASE_URL`, else the
/// machine's, else a private cluster started for this process.
async fn admin_url() -> anyhow::Result<String> {
    Ok(match std::env::var("TEST_DATABASE_URL") {
        Ok(url) => url,
        Err(_) if reachable(DEFAULT_ADMIN_URL).await => DEFAULT_ADMIN_URL.to_owned(),
        Err(_) => FALLBACK
            .get_or_try_init(PrivatePostgres::start)
            .await?
            .url("postgres"),
    })
}

async fn reachable(url: &str) -> bool {
    matches!(
        tokio::time::timeout(Duration::from_secs(2), PgConnection::connect(url)).await,
        Ok(Ok(_))
    )
}

/// A private cluster (`initdb` + `pg_ctl`, run as the `postgres` user when we
/// are root) on a free port, removed on drop.
pub struct PrivatePostgres {
    dir: tempfile::TempDir,
    port: u16,
    bin: PathBuf,
}

impl PrivatePostgres {
    pub async fn start() -> anyhow::Result<Self> {
        let bin = pg_bin_dir()?;
        let dir = tempfile::Builder::new().prefix("mangahub-pg").tempdir()?;
        let port = free_port()?;
        let pg = Self { dir, port, bin };
        pg.run_as_owner(
            Command::new("chown")
                .args(["-R", "postgres"])
                .arg(pg.dir.path()),
            false,
        )?;
        let data = pg.data_dir();
        pg.run_as_owner(
            Command::new(pg.bin.join("initdb"))
                .args(["-A", "trust", "-U", "root", "--no-sync", "-D"])
                .arg(&data),
            true,
        )?;
        pg.start_server().await?;
        Ok(pg)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self, database: &str) -> String {
        format!("postgres://root@127.0.0.1:{}/{database}", self.port)
    }

    /// A new empty database on this cluster.
    pub async fn fresh_database(&self) -> anyhow::Result<String> {
        let name = unique_name(PREFIX);
        let mut conn = PgConnection::connect(&self.url("postgres")).await?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await?;
        Ok(self.url(&name))
    }

    pub async fn start_server(&self) -> anyhow::Result<()> {
        let data = self.data_dir();
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200",
            self.port,
            self.dir.path().display()
        );
        self.run_as_owner(
            Command::new(self.bin.join("pg_ctl"))
                .arg("-D")
                .arg(&data)
                .args(["-o", &options, "-l"])
                .arg(self.dir.path().join("server.log"))
                .args(["-w", "start"]),
            true,
        )?;
        let url = self.url("postgres");
        wait_until(
            Duration::from_secs(30),
            "private Postgres to accept connections",
            || reachable(&url),
        )
        .await
    }

    /// Fast shutdown: connections are cut, the cluster stays on disk.
    pub fn stop_server(&self) -> anyhow::Result<()> {
        self.run_as_owner(
            Command::new(self.bin.join("pg_ctl"))
                .arg("-D")
                .arg(self.data_dir())
                .args(["-m", "fast", "-w", "stop"]),
            true,
        )
    }

    /// A crash: SIGKILL to the postmaster and every process it started. The
    /// data directory stays as the crash left it (`start_server` then runs
    /// crash recovery). Once every process is gone its lock files are
    /// removed: a killed process that is not reaped yet would still look
    /// alive to the next start.
    pub async fn kill_server(&self) -> anyhow::Result<()> {
        let pid_file = self.data_dir().join("postmaster.pid");
        let text = std::fs::read_to_string(&pid_file)
            .with_context(|| format!("reading {}", pid_file.display()))?;
        let postmaster: u32 = text
            .lines()
            .next()
            .and_then(|l| l.trim().parse().ok())
            .context("postmaster.pid holds no process id")?;
        let mut pids = children_of(postmaster);
        pids.push(postmaster);
        // Its exit status is not telling: a backend may exit by itself
        // between the scan and the kill. Whether they are all gone is.
        Command::new("kill")
            .arg("-KILL")
            .args(pids.iter().map(u32::to_string))
            .stderr(Stdio::null())
            .status()
            .context("running kill")?;
        wait_until(
            Duration::from_secs(10),
            &format!("the killed Postgres (postmaster {postmaster}) to exit"),
            || {
                let gone = pids.iter().all(|&pid| !alive(pid));
                async move { gone }
            },
        )
        .await?;
        for lock in [
            pid_file,
            self.dir.path().join(format!(".s.PGSQL.{}.lock", self.port)),
        ] {
            match std::fs::remove_file(&lock) {
                Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
                    return Err(err).with_context(|| format!("removing {}", lock.display()));
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn run_as_owner(&self, cmd: &mut Command, as_postgres: bool) -> anyhow::Result<()> {
        let mut cmd = if as_postgres && is_root() {
            let mut wrapped = Command::new("runuser");
            wrapped
                .args(["-u", "postgres", "--"])
                .arg(cmd.get_program())
                .args(cmd.get_args());
            wrapped
        } else {
            std::mem::replace(cmd, Command::new("true"))
        };
        let out = cmd
            .stdin(Stdio::null())
            .output()
            .context("running a Postgres tool")?;
        anyhow::ensure!(
            out.status.success(),
            "{:?} failed: {}",
            cmd,
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = self.stop_server();
    }
}

/// Running and not a zombie (`/proc/<pid>/stat` state other than `Z`).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let state = stat
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .next()?
                .to_owned();
            Some(state != "Z" && state != "X")
        })
        .unwrap_or(false)
}

/// Processes whose parent is `parent` (a scan of `/proc`).
fn children_of(parent: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| {
                    let ppid = stat
                        .rsplit_once(')')?
                        .1
                        .split_whitespace()
                        .nth(1)?
                        .parse::<u32>()
                        .ok()?;
                    Some(ppid == parent)
                })
                .unwrap_or(false)
        })
        .collect()
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0\n"))
        .unwrap_or(false)
}

fn pg_bin_dir() -> anyhow::Result<PathBuf> {
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output()
        && out.status.success()
    {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if dir.join("initdb").exists() {
            return Ok(dir);
        }
    }
    let mut candidates: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|p| Path::new(p).join("initdb").exists())
        .collect();
    candidates.sort();
    candidates
        .pop()
        .context("no PostgreSQL server binaries (initdb, pg_ctl) installed")
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn exists(name: &str) -> bool {
        let mut conn = PgConnection::connect(&admin_url().await.expect("admin url"))
            .await
            .expect("admin connection");
        sqlx::query_scalar::<_, bool>(
            "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)",
        )
        .bind(name)
        .fetch_one(&mut conn)
        .await
        .expect("pg_database")
    }

    #[tokio::test]
    async fn a_dropped_fresh_database_is_gone_even_with_a_session_open() {
        let url = fresh_database().await.expect("fresh database");
        let name = url.rsplit_once('/').expect("database name").1.to_owned();
        assert!(exists(&name).await, "{name} was not created");
        let _session = PgConnection::connect(&url).await.expect("session");
        drop_database(&url).await.expect("drop");
        assert!(!exists(&name).await, "{name} is still there");
    }

    #[tokio::test]
    async fn a_sweep_drops_only_old_databases_of_ended_processes_with_no_session() {
        let admin = admin_url().await.expect("admin url");
        let base = admin.rsplit_once('/').expect("base").0.to_owned();
        // Above the kernel's largest process id: no process can have it.
        let pid_max: u32 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
            .expect("pid_max")
            .trim()
            .parse()
            .expect("pid_max is a number");
        let ended = pid_max + 1;
        let now = unix_seconds();
        let old = now - KEEP_FINISHED.as_secs() - 1;
        // A prefix of this test's own: other processes' sweeps (of
        // `mangahub_test_…`) leave these alone, and this one touches no other.
        // (Short: Postgres cuts names at 63 bytes.)
        let prefix = unique_name("mh_sweep");
        let swept = unique_name(&format!("{prefix}_{ended}_{old}"));
        let recent = unique_name(&format!("{prefix}_{ended}_{now}"));
        let in_use = unique_name(&format!("{prefix}_{ended}_{old}"));
        let running = unique_name(&format!("{prefix}_{}_{old}", std::process::id()));
        let mut conn = PgConnection::connect(&admin).await.expect("admin");
        for name in [&swept, &recent, &in_use, &running] {
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                .execute(&mut conn)
                .await
                .expect("create");
            assert!(exists(name).await, "{name} was not created whole");
        }
        let session = PgConnection::connect(&format!("{base}/{in_use}"))
            .await
            .expect("a session on one of them");
        drop_finished(&admin, &prefix, now).await.expect("sweep");
        assert!(!exists(&swept).await, "{swept} was not swept");
        assert!(exists(&recent).await, "{recent} is younger than an hour");
        assert!(exists(&in_use).await, "{in_use} has a session open");
        assert!(
            exists(&running).await,
            "{running} (this process's) was swept"
        );
        session.close().await.expect("close");
        for name in [&recent, &in_use, &running] {
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP DATABASE {name}")))
                .execute(&mut conn)
                .await
                .expect("drop");
        }
    }

    #[test]
    fn the_creator_is_read_from_the_name_and_only_local_servers_are_swept() {
        let name = "mangahub_test_4242_1764950000_00ff00ff00ff00ff";
        assert_eq!(creator(PREFIX, name), Some((4242, 1_764_950_000)));
        for other in [
            "mangahub_test_00ff00ff00ff00ff",
            "mangahub_test_4242_00ff00ff00ff00ff",
            "mangahub_test_4242_1764950000_",
            "mangahub_test_+4242_1764950000_00ff00ff00ff00ff",
            "mangahub_test_4242_1764950000_00ff00ff00ff00ff_x",
            "mangahub_test_4242_1764950000_00ff00ff00ff00fg",
            "other_4242_1764950000_00ff00ff00ff00ff",
        ] {
            assert_eq!(creator(PREFIX, other), None, "{other}");
        }
        assert!(is_local("postgres://root@127.0.0.1:5432/postgres"));
        assert!(is_local("postgres://localhost/postgres"));
        assert!(is_local("postgres://u:p@[::1]:5432/postgres"));
        assert!(is_local("postgres:///postgres?host=/var/run/postgresql"));
        assert!(!is_local("postgres://root@db.example:5432/postgres"));
        assert!(!is_local("postgres://localhost/postgres?host=db.example"));
        assert!(!is_local("postgres://127.0.0.1.example/postgres"));
    }

    #[tokio::test]
    async fn only_fresh_databases_are_dropped() {
        let err = drop_database("postgres://root@127.0.0.1:5432/postgres")
            .await
            .expect_err("refused");
        assert!(
            err.to_string()
                .contains("is not a database fresh_database made"),
            "{err}"
        );
    }
}
