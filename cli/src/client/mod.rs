//! `mangahub client …`: a real client of the gateway protocol, over TCP or
//! WebSocket, for people (readable lines) and scripts (`--json`: the
//! server's messages as received).
//! Lines that carry a change's cursor end with `[cursor …]`; pass it to
//! `client sync --cursor` to get what changed after it.

pub mod conn;
mod render;
pub mod replies;
pub mod session;
mod shell;

use std::time::Duration;

use anyhow::bail;
use clap::{Args, Subcommand};

use session::{Message, Session};

const DEFAULT_ADDR: &str = "127.0.0.1:8081";
const DEFAULT_WS_ADDR: &str = "127.0.0.1:8082";

#[derive(Debug, Args)]
pub struct ClientArgs {
    /// Gateway address: host:port (JSON lines over TCP) or
    /// ws://host:port/ws (WebSocket), tls://host:port or wss://host:port/ws
    /// for the same over TLS; several, comma-separated, are tried in
    /// order (the first that accepts the connection is used). Default
    /// 127.0.0.1:8081, with --ws 127.0.0.1:8082 (the WebSocket port).
    #[arg(long, env = "MANGAHUB_ADDR", global = true)]
    pub addr: Option<String>,
    /// For tls:// and wss:// addresses: the CA certificates (PEM) the
    /// gateway's certificate must chain to. Default: the system's bundle.
    #[arg(long, env = "MANGAHUB_CA_CERT", global = true)]
    pub ca_cert: Option<std::path::PathBuf>,
    /// Use WebSocket: host:port addresses mean ws://host:port/ws.
    #[arg(long, global = true)]
    pub ws: bool,
    /// JWT to authenticate with (see `mangahub token`).
    #[arg(long, env = "MANGAHUB_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// Or mint a token for this user with JWT_SECRET.
    #[arg(long, global = true)]
    pub user: Option<String>,
    #[arg(long, env = "JWT_SECRET", hide_env_values = true, global = true)]
    pub jwt_secret: Option<String>,
    /// Name this device (1..64 bytes); stored with the records it changes.
    #[arg(long, env = "MANGAHUB_DEVICE", global = true)]
    pub device: Option<String>,
    /// Print the server's JSON messages as received instead of readable text.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Option<ClientCommand>,
}

#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// Save reading progress.
    Update {
        #[arg(long)]
        manga: i64,
        /// Decimal chapter, e.g. 76.5
        #[arg(long)]
        chapter: String,
        #[arg(long)]
        page: Option<u32>,
        /// reading, completed, on_hold, dropped, plan_to_read
        #[arg(long)]
        status: Option<String>,
        /// Accept a position behind the stored one.
        #[arg(long)]
        force: bool,
        /// Only this user's devices hear about it.
        #[arg(long)]
        private: bool,
    },
    /// Show one record.
    Get {
        #[arg(long)]
        manga: i64,
    },
    /// List records, oldest change first.
    List {
        /// Only records changed after this RFC 3339 time.
        #[arg(long)]
        since: Option<String>,
        #[arg(long)]
        limit: Option<u32>,
        #[arg(long)]
        cursor: Option<String>,
    },
    /// Delete one record.
    Delete {
        #[arg(long)]
        manga: i64,
    },
    /// What changed after a cursor (deletes included), every page of it,
    /// then the cursor to pass next time. Without --cursor: everything stored.
    Sync {
        /// The last cursor this device saw (from an ack, event or sync).
        #[arg(long)]
        cursor: Option<String>,
        /// Changes per request (1..1000, default 500); further pages follow.
        #[arg(long)]
        limit: Option<u32>,
    },
    /// Print events as they arrive (each with its cursor): your other
    /// devices' updates, plus the channels named here.
    Watch {
        /// Subscribe to manga:<id> (repeatable).
        #[arg(long)]
        manga: Vec<i64>,
        /// Subscribe to every public update.
        #[arg(long)]
        global: bool,
        /// Stop after this many events.
        #[arg(long)]
        count: Option<usize>,
    },
    /// Interactive: type commands (`help` lists them); events print as they arrive.
    Shell,
}

pub async fn run(args: ClientArgs) -> anyhow::Result<()> {
    let token = match (&args.token, &args.user, &args.jwt_secret) {
        (Some(token), _, _) => token.clone(),
        (None, Some(user), Some(secret)) => {
            crate::token::mint(secret, user, None, Duration::from_secs(3600))?
        }
        _ => bail!("give --token (or MANGAHUB_TOKEN), or --user with JWT_SECRET"),
    };
    let addr = match (&args.addr, args.ws) {
        (Some(addr), false) => addr.clone(),
        (Some(addr), true) => conn::over_websocket(addr),
        (None, false) => DEFAULT_ADDR.to_owned(),
        (None, true) => conn::over_websocket(DEFAULT_WS_ADDR),
    };
    if let Some(ca_cert) = &args.ca_cert {
        conn::trust(ca_cert.clone());
    }
    let mut session = Session::connect(&addr, &token, args.device.as_deref()).await?;
    let json = args.json;
    let command = args.command.unwrap_or(ClientCommand::Shell);
    let reply = match command {
        ClientCommand::Update {
            manga,
            chapter,
            page,
            status,
            force,
            private,
        } => {
            let data = update_data(manga, &chapter, page, status.as_deref(), force, private)?;
            session.request("progress_update", Some(&data)).await?
        }
        ClientCommand::Get { manga } => {
            session
                .request("get_progress", Some(&format!(r#"{{"manga_id":{manga}}}"#)))
                .await?
        }
        ClientCommand::List {
            since,
            limit,
            cursor,
        } => {
            let data =
                serde_json::json!({"updated_since": since, "limit": limit, "cursor": cursor});
            let data = strip_nulls(data);
            session
                .request("list_progress", Some(&data.to_string()))
                .await?
        }
        ClientCommand::Delete { manga } => {
            session
                .request(
                    "delete_progress",
                    Some(&format!(r#"{{"manga_id":{manga}}}"#)),
                )
                .await?
        }
        ClientCommand::Sync { cursor, limit } => {
            return sync(&mut session, cursor, limit, json).await;
        }
        ClientCommand::Watch {
            manga,
            global,
            count,
        } => {
            return watch(&mut session, &manga, global, count, json).await;
        }
        ClientCommand::Shell => return shell::run(session, json).await,
    };
    print(&reply, json);
    if reply.kind == "error" {
        bail!("the gateway answered {}", reply.code.unwrap_or_default());
    }
    Ok(())
}

fn print(msg: &Message, json: bool) {
    if json {
        println!("{}", msg.raw);
    } else {
        println!("{}", render::human(msg));
    }
}

/// JSON `data` of a `progress_update`; the chapter is checked by the
/// record's own rule and goes out in its canonical form.
fn update_data(
    manga: i64,
    chapter: &str,
    page: Option<u32>,
    status: Option<&str>,
    force: bool,
    private: bool,
) -> anyhow::Result<String> {
    let chapter: mangahub_model::Chapter = chapter.parse().map_err(|err| {
        anyhow::anyhow!("--chapter must be a decimal number such as 76 or 76.5 ({err})")
    })?;
    let mut data = format!(r#"{{"manga_id":{manga},"chapter":{chapter}"#);
    if let Some(page) = page {
        data += &format!(r#","page":{page}"#);
    }
    if let Some(status) = status {
        data += &format!(r#","status":{}"#, serde_json::to_string(status)?);
    }
    if force {
        data += r#","force":true"#;
    }
    if private {
        data += r#","private":true"#;
    }
    data.push('}');
    Ok(data)
}

fn strip_nulls(value: serde_json::Value) -> serde_json::Value {
    match value {
        serde_json::Value::Object(map) => map.into_iter().filter(|(_, v)| !v.is_null()).collect(),
        other => other,
    }
}

/// Requests `sync` pages until `more` is false. People get one line per
/// change and then `cursor: …`; `--json` prints each `sync_result` as received.
async fn sync(
    session: &mut Session,
    mut cursor: Option<String>,
    limit: Option<u32>,
    json: bool,
) -> anyhow::Result<()> {
    let mut changes = 0;
    loop {
        let data = strip_nulls(serde_json::json!({"cursor": cursor, "limit": limit}));
        let reply = session.request("sync", Some(&data.to_string())).await?;
        let page = match render::sync_page(&reply) {
            Some(page) if reply.kind == "sync_result" => page,
            _ => {
                print(&reply, json);
                bail!("the gateway answered {}", reply.code.unwrap_or(reply.kind));
            }
        };
        if json {
            println!("{}", reply.raw);
        } else {
            for line in render::change_lines(&page) {
                println!("{line}");
                changes += 1;
            }
        }
        if !page.more {
            if !json {
                if changes == 0 {
                    println!("no changes");
                }
                println!("cursor: {}", page.cursor);
            }
            return Ok(());
        }
        cursor = Some(page.cursor);
    }
}

async fn watch(
    session: &mut Session,
    mangas: &[i64],
    global: bool,
    count: Option<usize>,
    json: bool,
) -> anyhow::Result<()> {
    for manga in mangas {
        let reply = session
            .request("subscribe", Some(&format!(r#"{{"manga_id":{manga}}}"#)))
            .await?;
        print(&reply, json);
    }
    if global {
        let reply = session
            .request("subscribe", Some(r#"{"channel":"global"}"#))
            .await?;
        print(&reply, json);
    }
    if !json {
        println!("watching as {} (Ctrl-C to stop)", session.user_id);
    }
    let mut seen = 0;
    while count.is_none_or(|n| seen < n) {
        let Some(msg) = session.next().await? else {
            bail!("the gateway closed the connection");
        };
        print(&msg, json);
        seen += 1;
    }
    Ok(())
}
