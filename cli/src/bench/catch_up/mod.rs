//! `mangahub bench catch-up`: what the change log buys when devices must
//! catch up, each scenario beside a reference measured in the same run, on
//! the real `progress-service` and `gateway` binaries started here:
//!
//! - **restart**: the progress service restarts under N connected clients;
//!   how soon the gateway delivers events again, and whether any client was
//!   told to `RESYNC` (re-read its whole list). Reference: a `WatchProgress`
//!   opened directly on the new process.
//! - **sync**: D offline devices with M missed changes each catch up with
//!   `sync` from their cursor. Reference: the same devices re-reading their
//!   whole list with `list_progress`.

mod restart;
mod sync;

use std::path::PathBuf;
use std::time::Duration;

use super::processes::{Binaries, Signal};
use super::report::{self, Table};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    Restart,
    Sync,
}

#[derive(Debug, clap::Args)]
pub struct CatchUpArgs {
    /// Scenarios to run, in turn.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "restart,sync"
    )]
    pub scenario: Vec<Scenario>,
    /// Restart: idle authenticated clients on the gateway, each its own user.
    #[arg(long, default_value_t = 10_000)]
    pub clients: usize,
    /// Restart: how the progress service is stopped before it starts again;
    /// a list runs each in turn (term,kill).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "term")]
    pub signal: Vec<Signal>,
    /// Restart: finally one more restart (SIGTERM) onto an empty database, a
    /// control: the gateway cannot resume there, so every client must get
    /// RESYNC; shows the counting sees them.
    #[arg(long)]
    pub control: bool,
    /// Restart: one update through gRPC this often, from SERVING until the probe sees one.
    #[arg(long, default_value = "5ms", value_parser = humantime::parse_duration)]
    pub update_interval: Duration,
    /// Restart: wait after the probe's first event before draining the clients.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub settle: Duration,
    /// Restart: the gateway's --watch-retry-max (its own default when not given).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub watch_retry_max: Option<Duration>,
    /// Sync: devices, each its own user.
    #[arg(long, default_value_t = 1000)]
    pub devices: usize,
    /// Sync: changes each device missed while offline.
    #[arg(long, default_value_t = 1000)]
    pub missed: usize,
    /// Sync: records each device's missed changes are spread over.
    #[arg(long, default_value_t = 100)]
    pub records: usize,
    /// Sync: devices catching up at the same time.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Sync: `limit` of each sync request.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub limit: u32,
    /// Sync: rounds of both methods, alternating (sync, reference, sync, …).
    #[arg(long, default_value_t = 2)]
    pub rounds: usize,
    /// Sync: UpdateProgressBatch calls in flight while the missed changes are written.
    #[arg(long, default_value_t = 4)]
    pub write_concurrency: usize,
    /// Connections opened at the same time.
    #[arg(long, default_value_t = 100)]
    pub connect_concurrency: usize,
    /// Directory of the progress-service and gateway binaries (default: beside this executable).
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
    /// Also write every table cell as CSV (scenario,row,column,value) here.
    #[arg(long)]
    pub csv: Option<PathBuf>,
}

pub fn run(args: &CatchUpArgs) -> anyhow::Result<()> {
    let binaries = Binaries::locate(args.bin_dir.as_deref())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mut tables = Vec::new();
    for scenario in &args.scenario {
        let table = match scenario {
            Scenario::Restart => runtime.block_on(restart::run(args, &binaries))?,
            Scenario::Sync => runtime.block_on(sync::run(args, &binaries))?,
        };
        // Printed as soon as measured: a later scenario may fail.
        table.print();
        tables.push(table);
    }
    if let Some(path) = &args.csv {
        let rows: Vec<Vec<String>> = tables.iter().flat_map(Table::csv_rows).collect();
        report::write_csv(path, &["scenario", "row", "column", "value"], &rows)?;
    }
    Ok(())
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(0, |n| n.get())
}
