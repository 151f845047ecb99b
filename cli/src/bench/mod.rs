//! `mangahub bench …`: load generators whose results tables go in the README.

mod catch_up;
mod chaos;
mod conns;
mod deliveries;
mod fanout;
mod fanout_sweep;
mod floor;
mod grpc;
mod idle;
mod processes;
mod procfs;
mod publish;
mod redis_pubsub;
mod report;
mod stack;
mod stats;
mod tcp_updates;

use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// UpdateProgress throughput and latency over gRPC with N concurrent callers.
    Grpc(grpc::GrpcArgs),
    /// progress_update throughput and latency through a running gateway, N connections.
    TcpUpdates(tcp_updates::TcpUpdatesArgs),
    /// A gateway's memory per idle authenticated connection, per transport.
    Idle(idle::IdleArgs),
    /// Events delivered per second to N subscribers of one manga through a
    /// running gateway, per transport (TCP, WebSocket, or both in one run);
    /// with --sweep, curves against subscriber count beside Redis Pub/Sub
    /// and/or the floor (--against redis,floor): a server of nothing but one
    /// bare write(2) per subscriber per message, with 1 and 2 writer threads.
    Fanout(fanout::FanoutArgs),
    /// Devices catching up: a progress-service restart under N gateway clients
    /// (events again, RESYNCs) and `sync` after missed changes, each beside a
    /// same-run reference; starts the real binaries.
    CatchUp(catch_up::CatchUpArgs),
    /// A bounded chaos run: real Postgres, Redis, two hybrid replicas and two
    /// gateways under writing and listening devices while a seeded schedule
    /// kills and restarts them; checks that no acknowledged update is lost,
    /// every device heard its other devices (or got RESYNC) and converged, and
    /// that no process grew beyond a memory bound. Exits non-zero on a failure.
    Chaos(chaos::ChaosArgs),
    /// The fan-out floor's server (`bench fanout --against floor` starts it):
    /// each line a publisher sends, written to every subscriber.
    #[command(hide = true)]
    FloorServer(floor::FloorServerArgs),
}

pub fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Grpc(args) => grpc::run(&args),
        BenchCommand::TcpUpdates(args) => tcp_updates::run(&args),
        BenchCommand::Idle(args) => idle::run(&args),
        BenchCommand::Fanout(args) => fanout::run(&args),
        BenchCommand::CatchUp(args) => catch_up::run(&args),
        BenchCommand::Chaos(args) => chaos::run(&args),
        BenchCommand::FloorServer(args) => floor::run(&args),
    }
}
