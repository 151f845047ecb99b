//! Human-readable lines for what the gateway says.

use serde::Deserialize;
use serde_json::value::RawValue;

use super::replies::{ListPage, SyncPage};
use super::session::Message;

/// A record as the gateway sends it, read for display.
#[derive(Debug, Deserialize)]
pub struct Record {
    #[serde(default)]
    user_id: Option<String>,
    manga_id: i64,
    #[serde(default)]
    chapter: Option<Box<RawValue>>,
    #[serde(default)]
    page: Option<i64>,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    version: Option<i64>,
    #[serde(default)]
    updated_at: Option<String>,
    #[serde(default)]
    device: Option<String>,
    #[serde(default)]
    username: Option<String>,
}

impl Record {
    fn line(&self) -> String {
        let mut out = format!("manga {}", self.manga_id);
        if let Some(chapter) = &self.chapter {
            out += &format!(
                ": chapter {}, page {}",
                chapter.get(),
                self.page.unwrap_or(0)
            );
        }
        if let Some(status) = &self.status {
            out += &format!(", {status}");
        }
        if let Some(version) = self.version {
            out += &format!(" (v{version}");
            if let Some(at) = &self.updated_at {
                out += &format!(", {at}");
            }
            if let Some(device) = &self.device {
                out += &format!(", from {device}");
            }
            out += ")";
        }
        out
    }
}

/// A `sync_result`'s page, its records read for display.
pub fn sync_page(msg: &Message) -> Option<SyncPage<Record>> {
    data(msg)
}

/// One line per change of `page`, oldest first.
pub fn change_lines(page: &SyncPage<Record>) -> Vec<String> {
    page.changes
        .iter()
        .map(|change| match (&change.data, change.manga_id) {
            (Some(record), _) => format!("{}: {}", change.op, record.line()),
            (None, Some(manga_id)) => format!("{}: manga {manga_id}", change.op),
            (None, None) => change.op.clone(),
        })
        .collect()
}

fn data<T: for<'de> Deserialize<'de>>(msg: &Message) -> Option<T> {
    msg.data
        .as_ref()
        .and_then(|d| serde_json::from_str(d.get()).ok())
}

/// One or more lines describing `msg` for a person; a change's cursor, when
/// the message carries one, ends its line.
pub fn human(msg: &Message) -> String {
    let text = describe(msg);
    match &msg.cursor {
        Some(cursor) => format!("{text} [cursor {cursor}]"),
        None => text,
    }
}

fn describe(msg: &Message) -> String {
    match msg.kind.as_str() {
        "progress_ack" => {
            let rec: Option<Record> = data(msg);
            let verdict = if msg.applied == Some(true) {
                "saved"
            } else {
                "not applied (stored progress is ahead or unchanged)"
            };
            format!("{verdict}: {}", rec.map(|r| r.line()).unwrap_or_default())
        }
        "progress" => data::<Record>(msg).map(|r| r.line()).unwrap_or_default(),
        "progress_list" => match data::<ListPage<Record>>(msg) {
            Some(list) => {
                let mut lines: Vec<String> = list.items.iter().map(Record::line).collect();
                if lines.is_empty() {
                    lines.push("no progress yet".into());
                }
                if let Some(cursor) = list.next_cursor {
                    lines.push(format!("more: --cursor {cursor}"));
                }
                lines.join("\n")
            }
            None => msg.raw.clone(),
        },
        "progress_broadcast" => {
            let channel = msg.channel.as_deref().unwrap_or("?");
            match data::<Record>(msg) {
                Some(r) => {
                    let who = r.username.clone().or(r.user_id.clone()).unwrap_or_default();
                    format!("[{channel}] {who} {}", r.line())
                }
                None => msg.raw.clone(),
            }
        }
        "sync_result" => match sync_page(msg) {
            Some(page) => {
                let mut lines = change_lines(&page);
                if lines.is_empty() {
                    lines.push("no changes".into());
                }
                lines.push(format!("cursor: {}", page.cursor));
                if page.more {
                    lines.push("more changes wait after this cursor: sync again from it".into());
                }
                lines.join("\n")
            }
            None => msg.raw.clone(),
        },
        "progress_deleted" => match data::<Record>(msg) {
            Some(r) => format!("deleted: manga {}", r.manga_id),
            None => msg.raw.clone(),
        },
        "subscribed" | "unsubscribed" => {
            #[derive(Deserialize)]
            struct Ch {
                channel: String,
            }
            let ch = data::<Ch>(msg).map(|c| c.channel).unwrap_or_default();
            format!("{} {ch}", msg.kind)
        }
        "pong" => "pong".into(),
        "system" => {
            #[derive(Deserialize)]
            struct Sys {
                code: String,
                message: String,
            }
            match data::<Sys>(msg) {
                Some(s) => format!("system {}: {}", s.code, s.message),
                None => msg.raw.clone(),
            }
        }
        "error" => format!(
            "error {}: {}",
            msg.code.as_deref().unwrap_or("?"),
            msg.message.as_deref().unwrap_or("")
        ),
        _ => msg.raw.clone(),
    }
}
