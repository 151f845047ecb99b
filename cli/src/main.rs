//! `mangahub`: the one command a developer or operator needs beside the two services.

#![allow(clippy::print_stdout)] // a command-line tool talks on stdout

mod bench;
mod client;
mod dev;
mod healthcheck;
mod token;

use clap::{Parser, Subcommand};

// `dev` and the benches run the services in this process: on the same
// allocator as their own binaries.
#[global_allocator]
static ALLOCATOR: mangahub_ops::Allocator = mangahub_ops::ALLOCATOR;

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
    /// Run the whole system locally: progress service (SQLite) + gateway, one process.
    Dev(dev::DevArgs),
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

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // Logs go to stderr: stdout carries the command's output (tokens, JSON lines).
    let default_level = if matches!(cli.command, Command::Dev(_)) {
        "info"
    } else {
        "warn"
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level)),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Runtime::new()?;
    match cli.command {
        Command::Dev(args) => runtime.block_on(dev::run(args)),
        Command::Token(args) => token::run(&args),
        Command::Healthcheck(args) => runtime.block_on(healthcheck::run(&args)),
        Command::Client(args) => runtime.block_on(client::run(args)),
        Command::Bench(cmd) => bench::run(cmd),
    }
}
