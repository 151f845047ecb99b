//! MangaHub TCP gateway (contract §5): JSON lines over TCP (optionally TLS),
//! JWT auth, rate limits, subscriptions, and fan-out of the progress
//! service's change stream.
//!
//! Data flow: `server` (accept, limits, shutdown) → `connection` (framing,
//! rate limits, in-order requests) → `protocol` (messages) → `handlers`
//! (gRPC calls) → `fanout` (registry, per-connection queues, event stream).

pub mod auth;
pub mod backend;
pub mod config;
pub mod connection;
pub mod fanout;
pub mod handlers;
pub mod protocol;
pub mod server;
pub mod telemetry;
pub mod web;

pub use config::Config;
pub use server::{Gateway, Readiness, bind, run, shutdown_signal};
