//! `mangahub bench …`: load generators whose results tables go in the README.

mod grpc;
mod idle;
mod report;
mod stats;
mod tcp;
mod tcp_updates;

use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// UpdateProgress throughput and latency over gRPC with N concurrent callers.
    Grpc(grpc::GrpcArgs),
    /// progress_update throughput and latency through a running gateway, N connections.
    TcpUpdates(tcp_updates::TcpUpdatesArgs),
    /// A running gateway's memory per idle authenticated connection.
    Idle(idle::IdleArgs),
}

pub fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Grpc(args) => grpc::run(&args),
        BenchCommand::TcpUpdates(args) => tcp_updates::run(&args),
        BenchCommand::Idle(args) => idle::run(&args),
    }
}
