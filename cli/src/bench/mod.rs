//! `mangahub bench …`: load generators whose results tables go in the README.

mod grpc;
mod stats;

use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// UpdateProgress throughput and latency over gRPC with N concurrent callers.
    Grpc(grpc::GrpcArgs),
}

pub fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Grpc(args) => grpc::run(&args),
    }
}
