//! `mangahub`: the one command a developer or operator needs beside the two services.

#![allow(clippy::print_stdout)] // a command-line tool talks on stdout

mod bench;
mod client;
mod healthcheck;
mod token;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "mangahub",
    version,
    about = "MangaHub progress sync: dev runner, tokens, client, load generator"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Mint an HS256 token for the gateway (development and other services' tests).
    Token(token::TokenArgs),
    /// Exit 0 when the progress service's gRPC health check says SERVING (container probes).
    Healthcheck(healthcheck::HealthcheckArgs),
    /// Talk to a gateway: update, get, list, delete, watch, or an interactive shell.
    Client(client::ClientArgs),
    /// Load generators that print a results table.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    progress_service::telemetry::init(progress_service::config::LogFormat::Text);
    let runtime = tokio::runtime::Runtime::new()?;
    match cli.command {
        Command::Token(args) => token::run(&args),
        Command::Healthcheck(args) => runtime.block_on(healthcheck::run(&args)),
        Command::Client(args) => runtime.block_on(client::run(args)),
        Command::Bench(cmd) => bench::run(cmd),
    }
}
