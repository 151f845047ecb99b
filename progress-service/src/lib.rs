//! MangaHub progress service: owns reading-progress storage, serves the gRPC
//! API of contract §4 and streams every change to watchers (the gateways).

pub mod changelog;
pub mod config;
pub mod domain;
pub mod error;
pub mod events;
pub mod grpc;
pub mod startup;
pub mod store;
pub mod telemetry;

pub use config::Config;
pub use startup::{Application, Running, shutdown_signal};
