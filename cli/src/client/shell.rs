//! `mangahub client shell`: commands typed one per line, events printed as they
//! arrive.
//!
//! On a terminal the line is edited with `rustyline` (cursor keys, history,
//! Ctrl-A/E/W/U…) on its own thread, and gateway output goes through its
//! external printer so an event never lands in the middle of what is being
//! typed. From a pipe, lines are read as they come and printed plainly, so the
//! shell also runs scripts.

use std::io::IsTerminal;
use std::time::Duration;

use anyhow::{Context, bail};
use rustyline::ExternalPrinter;
use rustyline::error::ReadlineError;
use tokio::sync::mpsc;

use super::render;
use super::session::{Message, Session};
use super::update_data;

const PROMPT: &str = "mangahub> ";

const HELP: &str = "commands:
  update <manga> <chapter> [page] [status]   save progress
  get <manga> | delete <manga> | list
  sync [cursor]                                what changed after a cursor (none: everything)
  sub <manga>|global  /  unsub <manga>|global
  ping | help | quit
  {…}                                          any raw JSON line
keys: ←/→ Home/End move, ↑/↓ history, Ctrl-W/Ctrl-U delete, Ctrl-D or Ctrl-C quit";

/// How long `quit` waits for replies still owed.
const DRAIN: Duration = Duration::from_secs(10);

/// Runs the shell until `quit`, end of input, or the gateway hanging up.
pub async fn run(mut session: Session, json: bool) -> anyhow::Result<()> {
    let mut console = Console::open()?;
    let outcome = converse(&mut session, &mut console, json).await;
    console.close(outcome.is_err()).await;
    outcome
}

/// Sends each typed command and prints whatever the gateway says. At `quit`
/// or end of input it waits for the replies still owed.
async fn converse(session: &mut Session, console: &mut Console, json: bool) -> anyhow::Result<()> {
    console.print(format!("connected as {}; type `help`", session.user_id));
    let (mut sent, mut answered) = (0u64, 0u64);
    let mut input_open = true;
    loop {
        if !input_open && answered >= sent {
            return Ok(());
        }
        tokio::select! {
            line = console.lines.recv(), if input_open => {
                match line.map(|l| parse(l.trim())) {
                    None | Some(Ok(Action::Quit)) => input_open = false,
                    Some(Ok(Action::Help)) => console.print(HELP.to_owned()),
                    Some(Ok(Action::Send(raw))) => {
                        session.send_line(&raw).await?;
                        sent += 1;
                    }
                    Some(Ok(Action::Nothing)) => {}
                    Some(Err(err)) => console.print(format!("{err:#}")),
                }
            }
            msg = session.next() => match msg? {
                Some(msg) => {
                    if !msg.is_event() {
                        answered += 1;
                    }
                    console.print(show(&msg, json));
                }
                None => bail!("the gateway closed the connection"),
            },
            () = tokio::time::sleep(DRAIN), if !input_open => {
                bail!("no reply to {} request(s)", sent - answered);
            }
        }
    }
}

fn show(msg: &Message, json: bool) -> String {
    if json {
        msg.raw.clone()
    } else {
        render::human(msg)
    }
}

/// Where typed lines come from and where output goes.
struct Console {
    lines: mpsc::Receiver<String>,
    printer: Printer,
    /// The line editor's thread, on a terminal.
    editor: Option<std::thread::JoinHandle<()>>,
}

enum Printer {
    Plain,
    Editor(Box<dyn ExternalPrinter + Send>),
}

impl Console {
    fn open() -> anyhow::Result<Self> {
        let (tx, lines) = mpsc::channel(16);
        if !std::io::stdin().is_terminal() {
            // A plain thread, not tokio's stdin: a blocking read on a pipe
            // left open must not keep the runtime from shutting down.
            std::thread::Builder::new()
                .name("stdin".into())
                .spawn(move || {
                    for line in std::io::stdin().lines() {
                        let Ok(line) = line else { break };
                        if tx.blocking_send(line).is_err() {
                            break;
                        }
                    }
                })?;
            return Ok(Console {
                lines,
                printer: Printer::Plain,
                editor: None,
            });
        }
        let mut editor = rustyline::DefaultEditor::new().context("starting the line editor")?;
        let printer = editor
            .create_external_printer()
            .context("starting the line editor")?;
        let editor = std::thread::Builder::new()
            .name("line-editor".into())
            .spawn(move || edit_lines(editor, &tx))?;
        Ok(Console {
            lines,
            printer: Printer::Editor(Box::new(printer)),
            editor: Some(editor),
        })
    }

    #[allow(clippy::print_stdout)] // the shell's output is its stdout
    fn print(&mut self, text: String) {
        match &mut self.printer {
            Printer::Plain => println!("{text}"),
            Printer::Editor(printer) => {
                if let Err(err) = printer.print(text + "\n") {
                    tracing::warn!(%err, "printing above the prompt failed");
                }
            }
        }
    }

    /// Lets the line editor put the terminal back as it found it. When the
    /// session ended on its own the editor is still waiting for a line, so
    /// ask for one keypress rather than leave the terminal in raw mode.
    async fn close(mut self, ended_by_gateway: bool) {
        let Some(editor) = self.editor.take() else {
            return;
        };
        if ended_by_gateway && !editor.is_finished() {
            self.print("press Enter to exit".to_owned());
        }
        drop(self.lines);
        if let Err(err) = tokio::task::spawn_blocking(move || editor.join()).await {
            tracing::warn!(%err, "line editor thread failed");
        }
    }
}

/// The line editor's loop: one line at a time until `quit`, Ctrl-D, Ctrl-C,
/// or nobody listening.
fn edit_lines(mut editor: rustyline::DefaultEditor, tx: &mpsc::Sender<String>) {
    loop {
        match editor.readline(PROMPT) {
            Ok(line) => {
                if !line.trim().is_empty() {
                    // History is in memory only; a full history is harmless.
                    let _ = editor.add_history_entry(line.as_str());
                }
                let quit = matches!(parse(line.trim()), Ok(Action::Quit));
                if tx.blocking_send(line).is_err() || quit {
                    return;
                }
            }
            Err(ReadlineError::Eof | ReadlineError::Interrupted) => return,
            Err(err) => {
                tracing::warn!(%err, "reading the terminal failed");
                return;
            }
        }
    }
}

enum Action {
    Send(String),
    Help,
    Quit,
    Nothing,
}

fn parse(line: &str) -> anyhow::Result<Action> {
    if line.starts_with('{') {
        return Ok(Action::Send(line.to_owned()));
    }
    let words: Vec<&str> = line.split_whitespace().collect();
    let manga = |i: usize| -> anyhow::Result<i64> {
        words
            .get(i)
            .context("missing manga id")?
            .parse()
            .context("manga id must be a number")
    };
    let channel = |i: usize| -> anyhow::Result<String> {
        match words.get(i) {
            Some(&"global") => Ok(r#"{"channel":"global"}"#.to_owned()),
            _ => Ok(format!(r#"{{"manga_id":{}}}"#, manga(i)?)),
        }
    };
    let msg = |kind: &str, data: String| format!(r#"{{"type":"{kind}","data":{data}}}"#);
    Ok(match words.first().copied() {
        None => Action::Nothing,
        Some("quit" | "exit") => Action::Quit,
        Some("help") => Action::Help,
        Some("ping") => Action::Send(r#"{"type":"ping"}"#.into()),
        Some("list") => Action::Send(r#"{"type":"list_progress"}"#.into()),
        Some("sync") => Action::Send(match words.get(1) {
            Some(cursor) => msg("sync", serde_json::json!({ "cursor": cursor }).to_string()),
            None => r#"{"type":"sync"}"#.into(),
        }),
        Some("get") => Action::Send(msg(
            "get_progress",
            format!(r#"{{"manga_id":{}}}"#, manga(1)?),
        )),
        Some("delete") => Action::Send(msg(
            "delete_progress",
            format!(r#"{{"manga_id":{}}}"#, manga(1)?),
        )),
        Some("sub") => Action::Send(msg("subscribe", channel(1)?)),
        Some("unsub") => Action::Send(msg("unsubscribe", channel(1)?)),
        Some("update") => {
            let chapter = words.get(2).context("missing chapter")?;
            let page = words
                .get(3)
                .map(|p| p.parse())
                .transpose()
                .context("page must be a number")?;
            let data = update_data(
                manga(1)?,
                chapter,
                page,
                words.get(4).copied(),
                false,
                false,
            )?;
            Action::Send(msg("progress_update", data))
        }
        Some(other) => bail!("unknown command {other:?}; type `help`"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sent(line: &str) -> String {
        match parse(line) {
            Ok(Action::Send(raw)) => raw,
            _ => panic!("{line:?} should send a message"),
        }
    }

    #[test]
    fn commands_become_protocol_lines() {
        assert_eq!(
            sent("update 42 76.5 3 completed"),
            r#"{"type":"progress_update","data":{"manga_id":42,"chapter":76.5,"page":3,"status":"completed"}}"#
        );
        assert_eq!(
            sent("sub global"),
            r#"{"type":"subscribe","data":{"channel":"global"}}"#
        );
        assert_eq!(
            sent("unsub 7"),
            r#"{"type":"unsubscribe","data":{"manga_id":7}}"#
        );
        assert_eq!(sent("sync"), r#"{"type":"sync"}"#);
        assert_eq!(
            sent("sync c-1"),
            r#"{"type":"sync","data":{"cursor":"c-1"}}"#
        );
        assert_eq!(sent(r#"{"type":"ping"}"#), r#"{"type":"ping"}"#);
        assert!(matches!(parse("quit"), Ok(Action::Quit)));
        assert!(matches!(parse(""), Ok(Action::Nothing)));
    }

    #[test]
    fn mistakes_are_explained_not_sent() {
        let err = |line: &str| match parse(line) {
            Err(err) => format!("{err:#}"),
            Ok(_) => panic!("{line:?} should be refused"),
        };
        assert!(err("get x").contains("manga id must be a number"));
        assert!(err("update 1").contains("missing chapter"));
        assert!(err("update 1 1e3").contains("decimal number"));
        assert!(err("fly 1").contains("unknown command"));
    }
}
